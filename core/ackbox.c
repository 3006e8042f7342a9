/*
 * ackbox.c - the handle: opening and closing it, the gate every call
 * passes, delivery reports served by poll/flush, and the administration
 * calls. Publishing (checks, group commit) is in commit.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "registry.h"

/* ------------------------------------------------------------------ */
/* Open and close                                                       */
/* ------------------------------------------------------------------ */

static int store_open(ackbox *ab, char *errstr, size_t errstr_size)
{
	const char *text = ackbox_conf_get(ab->conf, "store.url");
	const char *sync = ackbox_conf_get(ab->conf, "store.sync");
	ackbox_sync mode = ACKBOX_SYNC_FULL;
	ackbox_url url;
	int rc;

	if (!text) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "store.url is required (e.g. sqlite:///var/lib/app/outbox.db)");
		return ACKBOX_ERR_BAD_VALUE;
	}
	rc = ackbox_url_parse(text, &url, errstr, errstr_size);
	if (rc)
		return rc;
	ab->store_ops = abx_store_find(url.scheme);
	if (!ab->store_ops) {
		rc = abx_scheme_check(1, url.scheme, "store.url", errstr, errstr_size);
		ackbox_url_fini(&url);
		return rc;
	}
	if (sync && strcmp(sync, "normal") == 0)
		mode = ACKBOX_SYNC_NORMAL;
	else if (sync && strcmp(sync, "off") == 0)
		mode = ACKBOX_SYNC_OFF;
	ab->store_ctx = calloc(1, ab->store_ops->ctx_size ? ab->store_ops->ctx_size : 1);
	if (!ab->store_ctx) {
		ackbox_url_fini(&url);
		return ACKBOX_ERR_NOMEM;
	}
	rc = ab->store_ops->open(ab->store_ctx, &url, ab->conf, mode, errstr, errstr_size);
	ackbox_url_fini(&url);
	if (rc) {
		free(ab->store_ctx);
		ab->store_ctx = NULL;
		return rc;
	}
	return 0;
}

int ackbox_new(ackbox **out, ackbox_conf *conf, char *errstr, size_t errstr_size)
{
	ackbox *ab;
	int rc;

	if (!out || !conf) {
		ackbox_errstr_set(errstr, errstr_size, "ackbox_new: NULL argument");
		return ACKBOX_ERR_INVALID;
	}
	*out = NULL;
	ab = calloc(1, sizeof(*ab));
	if (!ab)
		return ACKBOX_ERR_NOMEM;
	ab->conf = conf;
	ab->opened_mono_ms = ackbox_mono_ms();
	atomic_store(&ab->stats.state_since_ms, ab->opened_mono_ms);
	pthread_mutex_init(&ab->gate_mtx, NULL);
	pthread_cond_init(&ab->gate_cond, NULL);
	pthread_mutex_init(&ab->store_mtx, NULL);
	pthread_mutex_init(&ab->gc_mtx, NULL);
	pthread_cond_init(&ab->gc_cond, NULL);
	{
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&ab->gc_arrive, &ca);
		pthread_condattr_destroy(&ca);
	}
	pthread_mutex_init(&ab->rep_mtx, NULL);
	{
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&ab->rep_cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	ab->retry_timeout_ms = abx_conf_int(conf, "retry.timeout");
	ab->silence_limit_ms = abx_conf_int(conf, "retry.silence_limit");
	ab->max_attempts = (int)abx_conf_int(conf, "retry.max_attempts");
	ab->backoff_initial_ms = abx_conf_int(conf, "retry.backoff.initial");
	ab->backoff_max_ms = abx_conf_int(conf, "retry.backoff.max");
	ab->max_message_bytes = (size_t)abx_conf_int(conf, "message.max_bytes");
	ab->store_poll_ms = abx_conf_int(conf, "store.poll_interval");
	ab->connect_timeout_ms = abx_conf_int(conf, "transport.connect_timeout");
	ab->fresh_max_msgs = (size_t)abx_conf_int(conf, "queue.buffering.max_messages");
	ab->fresh_max_bytes = (size_t)abx_conf_int(conf, "queue.buffering.max_bytes");

	{
		const char *order = ackbox_conf_get(conf, "delivery.order");
		ab->ordered = order && strcmp(order, "key") == 0;
	}

	rc = store_open(ab, errstr, errstr_size);
	if (rc)
		goto fail;
	if (ab->ordered && !ABX_HAS_SLOT(ab->store_ops, ackbox_store_ops, blocked_keys)) {
		/* the store would hand out a key's messages in any order */
		ackbox_errstr_set(errstr, errstr_size,
		                  "delivery.order=key: the %s store cannot keep per-key order (it "
		                  "needs store ABI 1.5, blocked_keys)",
		                  ab->store_ops->scheme);
		rc = ACKBOX_ERR_BAD_VALUE;
	} else {
		rc = abx_bound_init(ab, errstr, errstr_size);
	}
	if (rc) {
		ab->store_ops->close(ab->store_ctx);
		free(ab->store_ctx);
		ab->store_ctx = NULL;
		goto fail;
	}
	if (ackbox_conf_get(conf, "transport.url")) {
		char err[256] = "";
		/* Crash recovery: whatever a previous process left unconfirmed is
		 * due now. Only a handle that will send needs it; an admin handle
		 * (ackbox status) must not make a running relay's rows due. */
		rc = ab->store_ops->recover(ab->store_ctx, ackbox_wall_ms(), err, sizeof(err));
		if (rc < 0) {
			ackbox_errstr_set(errstr, errstr_size, "store.url: recovery failed: %s", err);
			ab->store_ops->close(ab->store_ctx);
			free(ab->store_ctx);
			ab->store_ctx = NULL;
			goto fail;
		}
	}
	if (ackbox_conf_get(conf, "transport.url")) {
		rc = abx_relay_start(ab, errstr, errstr_size);
		if (rc) {
			ab->store_ops->close(ab->store_ctx);
			free(ab->store_ctx);
			ab->store_ctx = NULL;
			goto fail;
		}
	}
	*out = ab;
	return 0;
fail:
	ab->conf = NULL; /* the caller keeps conf on failure */
	ackbox_destroy(ab);
	return rc;
}

/*
 * The gate. A call enters before it touches the store or the relay and
 * leaves when it is done; ackbox_close() sets `closing` and waits until
 * nobody is inside. Both sides use sequentially consistent atomics: a call
 * that read closing == 0 incremented `inside` before, so the closer, which
 * reads `inside` after setting closing, waits for it.
 */
static void gate_leave(ackbox *ab)
{
	if (atomic_fetch_sub(&ab->inside, 1) == 1 && atomic_load(&ab->closing)) {
		pthread_mutex_lock(&ab->gate_mtx);
		pthread_cond_broadcast(&ab->gate_cond);
		pthread_mutex_unlock(&ab->gate_mtx);
	}
}

static int gate_enter(ackbox *ab, char *errstr, size_t errstr_size)
{
	atomic_fetch_add(&ab->inside, 1);
	if (atomic_load(&ab->closing)) {
		gate_leave(ab);
		ackbox_errstr_set(errstr, errstr_size, "the handle is closed");
		return ACKBOX_ERR_CLOSED;
	}
	return 0;
}

void ackbox_close(ackbox *ab)
{
	if (!ab)
		return;
	pthread_mutex_lock(&ab->gate_mtx);
	if (ab->close_state) {
		/* closed, or another thread is closing it: wait for that */
		while (ab->close_state != 2)
			pthread_cond_wait(&ab->gate_cond, &ab->gate_mtx);
		pthread_mutex_unlock(&ab->gate_mtx);
		return;
	}
	ab->close_state = 1;
	atomic_store(&ab->closing, 1);
	pthread_mutex_unlock(&ab->gate_mtx);

	/* a poll or flush waiting for reports returns now */
	pthread_mutex_lock(&ab->rep_mtx);
	pthread_cond_broadcast(&ab->rep_cond);
	pthread_mutex_unlock(&ab->rep_mtx);

	pthread_mutex_lock(&ab->gate_mtx);
	while (atomic_load(&ab->inside) > 0)
		pthread_cond_wait(&ab->gate_cond, &ab->gate_mtx);
	pthread_mutex_unlock(&ab->gate_mtx);

	/* nobody is inside and nobody can enter: stop the relay (the last
	 * changes are applied), then close the store */
	abx_relay_stop(ab);
	if (ab->store_ctx) {
		ab->store_ops->close(ab->store_ctx);
		free(ab->store_ctx);
		ab->store_ctx = NULL;
	}
	pthread_mutex_lock(&ab->gate_mtx);
	ab->close_state = 2;
	pthread_cond_broadcast(&ab->gate_cond);
	pthread_mutex_unlock(&ab->gate_mtx);
}

void ackbox_destroy(ackbox *ab)
{
	abx_report_item *it, *next;
	if (!ab)
		return;
	ackbox_close(ab);
	for (it = ab->rep_head; it; it = next) {
		next = it->next;
		free(it);
	}
	pthread_mutex_destroy(&ab->store_mtx);
	pthread_mutex_destroy(&ab->gc_mtx);
	pthread_cond_destroy(&ab->gc_cond);
	pthread_cond_destroy(&ab->gc_arrive);
	pthread_mutex_destroy(&ab->rep_mtx);
	pthread_cond_destroy(&ab->rep_cond);
	pthread_mutex_destroy(&ab->gate_mtx);
	pthread_cond_destroy(&ab->gate_cond);
	ackbox_conf_destroy(ab->conf);
	free(ab);
}

/* ------------------------------------------------------------------ */
/* Publish                                                              */
/* ------------------------------------------------------------------ */

int ackbox_publish(ackbox *ab, const ackbox_msg *msg, ackbox_id *id_out, char *errstr,
                   size_t errstr_size)
{
	if (!msg) {
		ackbox_errstr_set(errstr, errstr_size, "publish: NULL message");
		return ACKBOX_ERR_INVALID;
	}
	return ackbox_publish_batch(ab, msg, 1, id_out, errstr, errstr_size);
}

/* ------------------------------------------------------------------ */
/* Delivery reports                                                     */
/* ------------------------------------------------------------------ */

abx_report_item *abx_report_new(const ackbox_report *r)
{
	size_t tl = strlen(r->topic) + 1, rl = strlen(r->reason) + 1;
	abx_report_item *it = malloc(sizeof(*it) + tl + rl);
	if (!it)
		return NULL;
	it->next = NULL;
	it->r = *r;
	memcpy(it->text, r->topic, tl);
	memcpy(it->text + tl, r->reason, rl);
	it->r.topic = it->text;
	it->r.reason = it->text + tl;
	return it;
}

void abx_report_push_list(ackbox *ab, abx_report_item *head, abx_report_item *tail)
{
	pthread_mutex_lock(&ab->rep_mtx);
	if (ab->rep_tail)
		ab->rep_tail->next = head;
	else
		ab->rep_head = head;
	ab->rep_tail = tail;
	pthread_mutex_unlock(&ab->rep_mtx);
}

void abx_progress(ackbox *ab)
{
	pthread_mutex_lock(&ab->rep_mtx);
	ab->progress++;
	pthread_cond_broadcast(&ab->rep_cond);
	pthread_mutex_unlock(&ab->rep_mtx);
}

static int gated_poll(ackbox *ab, int timeout_ms)
{
	abx_report_item *list, *next;
	int n = 0;
	if (!ab)
		return ACKBOX_ERR_INVALID;
	pthread_mutex_lock(&ab->rep_mtx);
	if (!ab->rep_head && timeout_ms != 0) {
		struct timespec dl;
		abx_abs_deadline_us(&dl, (int64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000);
		while (!ab->rep_head && !atomic_load(&ab->closing)) {
			if (timeout_ms < 0)
				pthread_cond_wait(&ab->rep_cond, &ab->rep_mtx);
			else if (pthread_cond_timedwait(&ab->rep_cond, &ab->rep_mtx, &dl) == ETIMEDOUT)
				break;
		}
	}
	list = ab->rep_head;
	ab->rep_head = ab->rep_tail = NULL;
	pthread_mutex_unlock(&ab->rep_mtx);
	/* callbacks run with no lock held */
	for (; list; list = next) {
		next = list->next;
		if (ab->conf->report_cb)
			ab->conf->report_cb(&list->r, ab->conf->report_opaque);
		free(list);
		n++;
	}
	return n;
}

static int gated_flush(ackbox *ab, int timeout_ms)
{
	int64_t deadline = timeout_ms < 0 ? INT64_MAX : ackbox_mono_ms() + timeout_ms;
	if (!ab)
		return ACKBOX_ERR_INVALID;
	for (;;) {
		ackbox_counts c;
		if (atomic_load(&ab->closing))
			return ACKBOX_ERR_CLOSED;
		char err[256];
		uint64_t seen;
		int rc;

		pthread_mutex_lock(&ab->rep_mtx);
		seen = ab->progress;
		pthread_mutex_unlock(&ab->rep_mtx);
		ackbox_poll(ab, 0);
		abx_store_lock(ab);
		if (ABX_HAS_SLOT(ab->store_ops, ackbox_store_ops, has_pending)) {
			rc = ab->store_ops->has_pending(ab->store_ctx, err, sizeof(err));
			c.sending = rc > 0;
			c.retrying = 0;
		} else {
			rc = ab->store_ops->counts(ab->store_ctx, &c, err, sizeof(err));
		}
		abx_store_unlock(ab);
		/* a store error may pass (a database restarting): keep asking until
		 * the deadline, then say what the store said */
		if (rc < 0 && ackbox_mono_ms() >= deadline)
			return rc;
		if (rc >= 0 && c.sending + c.retrying == 0) {
			ackbox_poll(ab, 0);
			return 0;
		}
		int64_t now = ackbox_mono_ms();
		if (now >= deadline)
			return ACKBOX_ERR_TIMEOUT;
		/* sleep until the relay makes progress (or 50 ms, for rows others change) */
		int64_t wait = deadline - now < 50 ? deadline - now : 50;
		struct timespec dl;
		abx_abs_deadline_us(&dl, (int64_t)wait * 1000);
		pthread_mutex_lock(&ab->rep_mtx);
		while (ab->progress == seen && !ab->rep_head &&
		       pthread_cond_timedwait(&ab->rep_cond, &ab->rep_mtx, &dl) != ETIMEDOUT) {
		}
		pthread_mutex_unlock(&ab->rep_mtx);
	}
}

int ackbox_connected(ackbox *ab)
{
	int up;
	if (!ab || gate_enter(ab, NULL, 0) != 0)
		return 0;
	up = abx_relay_connected(ab->relay) ? 1 : 0;
	gate_leave(ab);
	return up;
}

/* ------------------------------------------------------------------ */
/* Administration                                                       */
/* ------------------------------------------------------------------ */

static int gated_counts_get(ackbox *ab, ackbox_counts *out, char *errstr, size_t errstr_size)
{
	int rc;
	if (!ab || !out)
		return ACKBOX_ERR_INVALID;
	abx_store_lock(ab);
	rc = ab->store_ops->counts(ab->store_ctx, out, errstr, errstr_size);
	abx_store_unlock(ab);
	return rc;
}

struct stored_ctx {
	ackbox_stored_cb cb;
	void *opaque;
	int rc;
	int kept;                  /* the store keeps history */
	size_t nhist;              /* notes read for ackbox_show */
	ackbox_attempt hist[ACKBOX_HISTORY_MAX];
	char text[ACKBOX_HISTORY_MAX][ACKBOX_HISTORY_TEXT_MAX + 1];
};

/* Keeps the last ACKBOX_HISTORY_MAX notes a store hands back, texts copied. */
static int history_cb(const ackbox_attempt *a, void *opaque)
{
	struct stored_ctx *c = opaque;
	size_t i;
	if (c->nhist == ACKBOX_HISTORY_MAX) {
		/* a store that keeps more than it should: keep the newest */
		memmove(&c->hist[0], &c->hist[1], (ACKBOX_HISTORY_MAX - 1) * sizeof(c->hist[0]));
		memmove(c->text[0], c->text[1], (ACKBOX_HISTORY_MAX - 1) * sizeof(c->text[0]));
		c->nhist--;
	}
	i = c->nhist++;
	c->hist[i] = *a;
	snprintf(c->text[i], sizeof(c->text[i]), "%s", a->text ? a->text : "");
	return 0;
}

/* Turns a store row into the public view, decoding its headers. */
static int stored_cb(const ackbox_store_row *row, void *opaque)
{
	struct stored_ctx *c = opaque;
	ackbox_stored s;
	ackbox_header *hs = NULL;
	size_t nh = 0;
	int stop;
	memset(&s, 0, sizeof(s));
	if (ackbox_headers_decode(row->headers, row->headers_len, &hs, &nh) != 0) {
		hs = NULL; /* shown without headers; the relay fails such a row */
		nh = 0;
	}
	s.id = row->id;
	s.state = row->state;
	s.attempts = row->attempts;
	s.created_ms = row->created_ms;
	s.updated_ms = row->updated_ms;
	s.due_ms = row->due_ms;
	s.topic = row->topic;
	s.key = row->key;
	s.key_len = row->key_len;
	s.content_type = row->content_type;
	s.headers = hs;
	s.header_count = nh;
	s.payload = row->payload;
	s.payload_len = row->payload_len;
	s.last_error = row->last_error;
	s.last_code = row->last_code;
	s.history_kept = c->kept;
	s.history_count = c->nhist;
	for (size_t i = 0; i < c->nhist; i++)
		c->hist[i].text = c->text[i];
	s.history = c->nhist ? c->hist : NULL;
	stop = c->cb(&s, c->opaque);
	free(hs);
	return stop;
}

static int gated_list(ackbox *ab, int state, size_t limit, ackbox_stored_cb cb, void *opaque,
                char *errstr, size_t errstr_size)
{
	struct stored_ctx c;
	int rc;
	if (!ab || !cb)
		return ACKBOX_ERR_INVALID;
	memset(&c, 0, offsetof(struct stored_ctx, hist));
	c.cb = cb;
	c.opaque = opaque;
	c.kept = abx_store_keeps_history(ab);
	abx_store_lock(ab);
	rc = ab->store_ops->list(ab->store_ctx, state, limit, stored_cb, &c, errstr, errstr_size);
	abx_store_unlock(ab);
	return rc;
}

static int gated_show(ackbox *ab, const ackbox_id *id, ackbox_stored_cb cb, void *opaque, char *errstr,
                size_t errstr_size)
{
	struct stored_ctx *c;
	int rc = 0;
	if (!ab || !id || !cb)
		return ACKBOX_ERR_INVALID;
	c = calloc(1, sizeof(*c)); /* 3 kB of texts: not on the caller's stack */
	if (!c)
		return ACKBOX_ERR_NOMEM;
	c->cb = cb;
	c->opaque = opaque;
	c->kept = abx_store_keeps_history(ab);
	abx_store_lock(ab);
	/* the history first, then the row: both under one hold of the lock */
	if (c->kept)
		rc = ab->store_ops->history(ab->store_ctx, id, history_cb, c, errstr, errstr_size);
	if (rc >= 0)
		rc = ab->store_ops->get(ab->store_ctx, id, stored_cb, c, errstr, errstr_size);
	abx_store_unlock(ab);
	free(c);
	return rc;
}

static int gated_requeue(ackbox *ab, const ackbox_id *ids, size_t n, char *errstr, size_t errstr_size)
{
	int rc;
	if (!ab || (!ids && n))
		return ACKBOX_ERR_INVALID;
	abx_store_lock(ab);
	rc = ab->store_ops->requeue(ab->store_ctx, n ? ids : NULL, n, ackbox_wall_ms(), errstr,
	                            errstr_size);
	abx_store_unlock(ab);
	if (rc > 0 && ab->relay)
		abx_relay_poke(ab->relay);
	return rc;
}

static int gated_purge_failed(ackbox *ab, int64_t older_than_ms, char *errstr, size_t errstr_size)
{
	int rc;
	if (!ab)
		return ACKBOX_ERR_INVALID;
	abx_store_lock(ab);
	rc = ab->store_ops->purge(ab->store_ctx, older_than_ms, errstr, errstr_size);
	abx_store_unlock(ab);
	if (rc > 0 && ab->relay && ab->ordered)
		abx_relay_poke(ab->relay); /* keys they held back may go on */
	return rc;
}

/* An operator's override of one row, whatever its state and lease. */
static int force_one(ackbox *ab, ackbox_change_kind kind, const ackbox_id *id, const char *reason,
                     const ackbox_attempt *note, char *errstr, size_t errstr_size)
{
	ackbox_store_change c;
	int64_t now = ackbox_wall_ms();
	int rc;
	memset(&c, 0, sizeof(c));
	c.kind = kind;
	c.id = *id;
	c.last_error = reason;
	abx_store_lock(ab);
	if (abx_store_keeps_history(ab))
		rc = ab->store_ops->force_noted(ab->store_ctx, &c, note, now, errstr, errstr_size);
	else
		rc = ab->store_ops->force(ab->store_ctx, &c, now, errstr, errstr_size);
	abx_store_unlock(ab);
	return rc;
}

static int force_supported(ackbox *ab, const char *what, char *errstr, size_t errstr_size)
{
	if (ABX_HAS_SLOT(ab->store_ops, ackbox_store_ops, force))
		return 0;
	ackbox_errstr_set(errstr, errstr_size, "%s: the %s store cannot change a message in any state",
	                  what, ab->store_ops->scheme);
	return ACKBOX_ERR_INVALID;
}

static int gated_fail(ackbox *ab, const ackbox_id *id, const char *reason, char *errstr,
                size_t errstr_size)
{
	char text[512];
	int rc;
	if (!ab || !id)
		return ACKBOX_ERR_INVALID;
	rc = force_supported(ab, "fail", errstr, errstr_size);
	if (rc)
		return rc;
	ackbox_attempt note;
	char short_reason[ACKBOX_HISTORY_TEXT_MAX + 1];
	snprintf(text, sizeof(text), "marked failed by an operator%s%s",
	         reason && *reason ? ": " : "", reason ? reason : "");
	snprintf(short_reason, sizeof(short_reason), "%s", reason ? reason : "");
	memset(&note, 0, sizeof(note));
	note.at_ms = ackbox_wall_ms();
	note.outcome = ACKBOX_OUTCOME_OPERATOR;
	note.text = short_reason;
	return force_one(ab, ACKBOX_CHANGE_FAIL, id, text, &note, errstr, errstr_size);
}

static int gated_purge_ids(ackbox *ab, const ackbox_id *ids, size_t n, char *errstr, size_t errstr_size)
{
	int rc, done = 0;
	if (!ab || (!ids && n))
		return ACKBOX_ERR_INVALID;
	rc = force_supported(ab, "purge", errstr, errstr_size);
	if (rc)
		return rc;
	for (size_t i = 0; i < n; i++) {
		rc = force_one(ab, ACKBOX_CHANGE_DELETE, &ids[i], NULL, NULL, errstr, errstr_size);
		if (rc == ACKBOX_ERR_NOT_FOUND)
			continue;
		if (rc < 0)
			return rc;
		done++;
	}
	if (done > 0 && ab->relay && ab->ordered)
		abx_relay_poke(ab->relay);
	return done;
}

int ackbox_publish_batch(ackbox *ab, const ackbox_msg *msgs, size_t n, ackbox_id *ids_out, char *errstr, size_t errstr_size)
{
	int rc;
	if (!ab)
		return ACKBOX_ERR_INVALID;
	rc = gate_enter(ab, errstr, errstr_size);
	if (rc)
		return rc;
	rc = abx_publish_batch(ab, msgs, n, ids_out, errstr, errstr_size);
	gate_leave(ab);
	return rc;
}

int ackbox_poll(ackbox *ab, int timeout_ms)
{
	int rc;
	if (!ab)
		return ACKBOX_ERR_INVALID;
	rc = gate_enter(ab, NULL, 0);
	if (rc)
		return rc;
	rc = gated_poll(ab, timeout_ms);
	gate_leave(ab);
	return rc;
}

int ackbox_flush(ackbox *ab, int timeout_ms)
{
	int rc;
	if (!ab)
		return ACKBOX_ERR_INVALID;
	rc = gate_enter(ab, NULL, 0);
	if (rc)
		return rc;
	rc = gated_flush(ab, timeout_ms);
	gate_leave(ab);
	return rc;
}

int ackbox_counts_get(ackbox *ab, ackbox_counts *out, char *errstr, size_t errstr_size)
{
	int rc;
	if (!ab)
		return ACKBOX_ERR_INVALID;
	rc = gate_enter(ab, errstr, errstr_size);
	if (rc)
		return rc;
	rc = gated_counts_get(ab, out, errstr, errstr_size);
	gate_leave(ab);
	return rc;
}

int ackbox_list(ackbox *ab, int state, size_t limit, ackbox_stored_cb cb, void *opaque, char *errstr, size_t errstr_size)
{
	int rc;
	if (!ab)
		return ACKBOX_ERR_INVALID;
	rc = gate_enter(ab, errstr, errstr_size);
	if (rc)
		return rc;
	rc = gated_list(ab, state, limit, cb, opaque, errstr, errstr_size);
	gate_leave(ab);
	return rc;
}

int ackbox_show(ackbox *ab, const ackbox_id *id, ackbox_stored_cb cb, void *opaque, char *errstr, size_t errstr_size)
{
	int rc;
	if (!ab)
		return ACKBOX_ERR_INVALID;
	rc = gate_enter(ab, errstr, errstr_size);
	if (rc)
		return rc;
	rc = gated_show(ab, id, cb, opaque, errstr, errstr_size);
	gate_leave(ab);
	return rc;
}

int ackbox_requeue(ackbox *ab, const ackbox_id *ids, size_t n, char *errstr, size_t errstr_size)
{
	int rc;
	if (!ab)
		return ACKBOX_ERR_INVALID;
	rc = gate_enter(ab, errstr, errstr_size);
	if (rc)
		return rc;
	rc = gated_requeue(ab, ids, n, errstr, errstr_size);
	gate_leave(ab);
	return rc;
}

int ackbox_purge_failed(ackbox *ab, int64_t older_than_ms, char *errstr, size_t errstr_size)
{
	int rc;
	if (!ab)
		return ACKBOX_ERR_INVALID;
	rc = gate_enter(ab, errstr, errstr_size);
	if (rc)
		return rc;
	rc = gated_purge_failed(ab, older_than_ms, errstr, errstr_size);
	gate_leave(ab);
	return rc;
}

int ackbox_fail(ackbox *ab, const ackbox_id *id, const char *reason, char *errstr, size_t errstr_size)
{
	int rc;
	if (!ab)
		return ACKBOX_ERR_INVALID;
	rc = gate_enter(ab, errstr, errstr_size);
	if (rc)
		return rc;
	rc = gated_fail(ab, id, reason, errstr, errstr_size);
	gate_leave(ab);
	return rc;
}

int ackbox_purge_ids(ackbox *ab, const ackbox_id *ids, size_t n, char *errstr, size_t errstr_size)
{
	int rc;
	if (!ab)
		return ACKBOX_ERR_INVALID;
	rc = gate_enter(ab, errstr, errstr_size);
	if (rc)
		return rc;
	rc = gated_purge_ids(ab, ids, n, errstr, errstr_size);
	gate_leave(ab);
	return rc;
}

struct blocked_ctx {
	ackbox_blocked_cb cb;
	void *opaque;
};

static int blocked_cb(const ackbox_store_blocked *b, void *opaque)
{
	struct blocked_ctx *c = opaque;
	ackbox_blocked_key k;
	memset(&k, 0, sizeof(k));
	k.key = b->key;
	k.key_len = b->key_len;
	k.failed_id = b->failed_id;
	k.waiting = b->waiting;
	return c->cb(&k, c->opaque);
}

static int gated_blocked_keys(ackbox *ab, size_t limit, ackbox_blocked_cb cb, void *opaque,
                              char *errstr, size_t errstr_size)
{
	struct blocked_ctx c = {cb, opaque};
	int rc;
	if (!cb)
		return ACKBOX_ERR_INVALID;
	if (!ABX_HAS_SLOT(ab->store_ops, ackbox_store_ops, blocked_keys)) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "blocked keys: the %s store cannot keep per-key order",
		                  ab->store_ops->scheme);
		return ACKBOX_ERR_INVALID;
	}
	abx_store_lock(ab);
	rc = ab->store_ops->blocked_keys(ab->store_ctx, limit, blocked_cb, &c, errstr, errstr_size);
	abx_store_unlock(ab);
	return rc;
}

int ackbox_blocked_keys(ackbox *ab, size_t limit, ackbox_blocked_cb cb, void *opaque,
                        char *errstr, size_t errstr_size)
{
	int rc;
	if (!ab)
		return ACKBOX_ERR_INVALID;
	rc = gate_enter(ab, errstr, errstr_size);
	if (rc)
		return rc;
	rc = gated_blocked_keys(ab, limit, cb, opaque, errstr, errstr_size);
	gate_leave(ab);
	return rc;
}

int ackbox_stats_get(ackbox *ab, ackbox_stats *out, size_t out_size, char *errstr,
                     size_t errstr_size)
{
	int rc;
	if (!ab || !out)
		return ACKBOX_ERR_INVALID;
	rc = gate_enter(ab, errstr, errstr_size);
	if (rc)
		return rc;
	rc = abx_stats_get(ab, out, out_size, errstr, errstr_size);
	gate_leave(ab);
	return rc;
}

int ackbox_metrics_text(ackbox *ab, char **out, size_t *out_len, char *errstr, size_t errstr_size)
{
	int rc;
	if (!ab || !out || !out_len)
		return ACKBOX_ERR_INVALID;
	rc = gate_enter(ab, errstr, errstr_size);
	if (rc)
		return rc;
	rc = abx_metrics_text(ab, out, out_len, errstr, errstr_size);
	gate_leave(ab);
	return rc;
}

int ackbox_health(ackbox *ab, char *errstr, size_t errstr_size)
{
	int rc;
	if (!ab)
		return ACKBOX_ERR_INVALID;
	rc = gate_enter(ab, errstr, errstr_size);
	if (rc)
		return rc;
	rc = abx_health(ab, errstr, errstr_size);
	gate_leave(ab);
	return rc;
}
