/*
 * commit.c - publishing: each message checked and copied (prepare), then
 * stored by a group commit: concurrent publish calls share one store
 * transaction and one flush, led by the first of them (docs/architecture.md,
 * "Durability and batching"). The backlog bound's admission is in bound.c.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

/* A publisher waiting for its messages to be committed. */
struct abx_gc_req {
	struct abx_gc_req *next;
	abx_fresh **msgs; /* prepared copies */
	size_t n;
	size_t bytes;
	bool done;
	bool admitted; /* within the backlog bound: part of this commit */
	int rc;
	int full;      /* ABX_BOUND_* when rc is ACKBOX_ERR_FULL */
	char err[256];
};

static int is_lower_hex(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
			return 0;
	return 1;
}

static int all_zero(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != '0')
			return 0;
	return 1;
}

/*
 * A "traceparent" or "tracestate" header must be W3C Trace Context; other
 * headers pass. 0 or ACKBOX_ERR_INVALID with errstr. The two travel as
 * headers (each transport puts headers where its ecosystem reads them: the
 * AMQP headers table, Kafka headers, MQTT 5 user properties). A malformed
 * one is refused at publish rather than dropped: a trace that silently
 * breaks at the outbox is worse than an error the developer sees at once.
 */
static int trace_header_check(const ackbox_header *h, char *errstr, size_t errstr_size)
{
	const char *v = h->value;
	size_t n = h->value_len;
	if (strcmp(h->name, "traceparent") == 0) {
		/* version "-" trace-id "-" parent-id "-" flags; version 00 is 55
		 * bytes, a later version may append "-..." */
		if (n < 55 || !is_lower_hex(v, 2) || v[2] != '-' || !is_lower_hex(v + 3, 32) ||
		    v[35] != '-' || !is_lower_hex(v + 36, 16) || v[52] != '-' ||
		    !is_lower_hex(v + 53, 2) || memcmp(v, "ff", 2) == 0 ||
		    (memcmp(v, "00", 2) == 0 && n != 55) || (n > 55 && v[55] != '-')) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "publish: header traceparent is not W3C Trace Context "
			                  "(version-traceid-parentid-flags in lower-case hex, e.g. "
			                  "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01)");
			return ACKBOX_ERR_INVALID;
		}
		if (all_zero(v + 3, 32) || all_zero(v + 36, 16)) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "publish: header traceparent has an all-zero trace-id or "
			                  "parent-id, which W3C Trace Context forbids");
			return ACKBOX_ERR_INVALID;
		}
	} else if (strcmp(h->name, "tracestate") == 0) {
		size_t members = 1;
		if (n > 512) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "publish: header tracestate is %zu bytes; W3C Trace Context "
			                  "allows 512",
			                  n);
			return ACKBOX_ERR_INVALID;
		}
		for (size_t i = 0; i < n; i++) {
			unsigned char c = (unsigned char)v[i];
			if (c == ',')
				members++;
			else if (c < 0x20 || c > 0x7e) {
				ackbox_errstr_set(errstr, errstr_size,
				                  "publish: header tracestate has a byte 0x%02x that is not "
				                  "printable ASCII",
				                  c);
				return ACKBOX_ERR_INVALID;
			}
		}
		if (members > 32 || (n && !memchr(v, '=', n))) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "publish: header tracestate must be at most 32 key=value "
			                  "members separated by commas");
			return ACKBOX_ERR_INVALID;
		}
	}
	return 0;
}

/* Checks one message and copies it into one allocation. */
static int prepare(ackbox *ab, const ackbox_msg *m, abx_fresh **out, char *errstr,
                   size_t errstr_size)
{
	size_t tl, cl, hl, limit = ab->max_message_bytes, tlimit;
	abx_fresh *f;
	char *p;

	if (!m || !m->topic || !*m->topic) {
		ackbox_errstr_set(errstr, errstr_size, "publish: message has no topic");
		return ACKBOX_ERR_INVALID;
	}
	if (!m->payload && m->payload_len) {
		ackbox_errstr_set(errstr, errstr_size, "publish: payload is NULL but payload_len is %zu",
		                  m->payload_len);
		return ACKBOX_ERR_INVALID;
	}
	if ((!m->key && m->key_len) || (!m->headers && m->header_count)) {
		ackbox_errstr_set(errstr, errstr_size, "publish: NULL key or headers with a length");
		return ACKBOX_ERR_INVALID;
	}
	tlimit = abx_relay_max_message(ab->relay);
	if (tlimit && tlimit < limit)
		limit = tlimit;
	if (m->payload_len > limit) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "publish: payload of %zu bytes exceeds the limit of %zu bytes "
		                  "(message.max_bytes%s)",
		                  m->payload_len, limit, limit == tlimit ? " or the transport's" : "");
		return ACKBOX_ERR_TOO_LARGE;
	}
	for (size_t i = 0; i < m->header_count; i++) {
		if (!m->headers[i].name || !*m->headers[i].name ||
		    (!m->headers[i].value && m->headers[i].value_len)) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "publish: header %zu has no name or a NULL value", i);
			return ACKBOX_ERR_INVALID;
		}
		if (trace_header_check(&m->headers[i], errstr, errstr_size) != 0)
			return ACKBOX_ERR_INVALID;
	}
	/* What the transport could never send is refused now, not stored to
	 * loop or fail later (a wildcard MQTT topic, a 256-byte routing key). */
	if (ab->relay) {
		int vrc = abx_relay_validate(ab->relay, m, errstr, errstr_size);
		if (vrc)
			return vrc;
	}
	tl = strlen(m->topic) + 1;
	cl = m->content_type ? strlen(m->content_type) + 1 : 0;
	hl = ackbox_headers_encoded_size(m->headers, m->header_count);
	f = malloc(sizeof(*f) + tl + cl + m->key_len + hl + m->payload_len + 1);
	if (!f)
		return ACKBOX_ERR_NOMEM;
	memset(f, 0, sizeof(*f));
	p = (char *)(f + 1);
	ackbox_id_new(&f->id);
	f->created_ms = ackbox_id_time_ms(&f->id);
	f->topic = memcpy(p, m->topic, tl);
	p += tl;
	if (cl) {
		f->content_type = memcpy(p, m->content_type, cl);
		p += cl;
	}
	if (m->key_len) {
		f->key = memcpy(p, m->key, m->key_len);
		f->key_len = m->key_len;
		p += m->key_len;
	}
	if (hl) {
		ackbox_headers_encode(m->headers, m->header_count, (uint8_t *)p);
		f->headers = p;
		f->headers_len = hl;
		p += hl;
	}
	f->payload = p;
	if (m->payload_len)
		memcpy(p, m->payload, m->payload_len);
	f->payload_len = m->payload_len;
	*out = f;
	return 0;
}

/*
 * The backlog bound: which requests of a batch fit (store.max_messages,
 * store.max_bytes), in the order they came; each is taken or refused whole.
 * Sets q->admitted, or q->rc = ACKBOX_ERR_FULL (or a store error) with its
 * reason. Returns the number of messages admitted.
 */
static size_t admit(ackbox *ab, struct abx_gc_req *batch)
{
	size_t n = 0, bytes = 0;
	if (!abx_bound_active(ab)) {
		for (struct abx_gc_req *q = batch; q; q = q->next) {
			q->admitted = true;
			n += q->n;
		}
		return n;
	}
	abx_store_lock(ab);
	for (struct abx_gc_req *q = batch; q; q = q->next) {
		int rc = abx_bound_admit(ab, q->n, q->bytes, n, bytes, q->err, sizeof(q->err));
		q->admitted = rc == ABX_BOUND_OK;
		if (q->admitted) {
			n += q->n;
			bytes += q->bytes;
		} else if (rc > 0) {
			q->rc = ACKBOX_ERR_FULL;
			q->full = rc;
		} else {
			char why[256];
			snprintf(why, sizeof(why), "%s", q->err);
			snprintf(q->err, sizeof(q->err), "publish: %.240s", why);
			q->rc = rc;
		}
	}
	abx_store_unlock(ab);
	return n;
}

/* Every admitted request of a commit that failed gets rc and the reason. */
static void commit_failed(struct abx_gc_req *batch, int rc, const char *err)
{
	for (struct abx_gc_req *q = batch; q; q = q->next) {
		if (!q->admitted)
			continue;
		q->rc = rc;
		snprintf(q->err, sizeof(q->err), "publish: %.240s", err);
	}
}

/* Gives the admitted messages of a committed batch to the relay, in order. */
static void hand_to_relay(ackbox *ab, struct abx_gc_req *batch)
{
	abx_fresh *head = NULL, *tail = NULL;
	for (struct abx_gc_req *q = batch; q; q = q->next) {
		if (!q->admitted)
			continue;
		for (size_t k = 0; k < q->n; k++) {
			abx_fresh *f = q->msgs[k];
			f->next = NULL;
			if (tail)
				tail->next = f;
			else
				head = f;
			tail = f;
			q->msgs[k] = NULL; /* the relay owns it now */
		}
	}
	abx_relay_push_fresh(ab->relay, head, tail);
}

/*
 * The group-commit leader: writes every admitted request in ONE store
 * transaction (one fsync), then hands the messages to the relay.
 */
static void commit_batch(ackbox *ab, struct abx_gc_req *batch)
{
	size_t n = 0, bytes = 0, i = 0;
	ackbox_store_rec *recs;
	bool handed = false;
	int64_t now = ackbox_wall_ms(), due;
	char err[256] = "";
	int rc;

	n = admit(ab, batch);
	if (n == 0)
		return;
	for (struct abx_gc_req *q = batch; q; q = q->next)
		if (q->admitted)
			bytes += q->bytes;
	recs = malloc(n * sizeof(*recs));
	if (!recs) {
		for (struct abx_gc_req *q = batch; q; q = q->next) {
			if (!q->admitted)
				continue;
			q->rc = ACKBOX_ERR_NOMEM;
			snprintf(q->err, sizeof(q->err), "publish: out of memory");
		}
		if (abx_bound_active(ab)) {
			abx_store_lock(ab);
			abx_bound_forget(ab, n, bytes);
			abx_store_unlock(ab);
		}
		return;
	}
	/*
	 * A message the relay will get in memory is inserted with a lease (due
	 * after retry.timeout) so a store scan does not pick it up twice; one
	 * the relay has no room for is due now and is claimed from the store.
	 */
	/* In ordered mode every message goes through the store's ordered
	 * claim: handed over in memory, a message would skip its key's queue. */
	if (ab->relay && !ab->ordered && abx_relay_reserve(ab->relay, n, bytes))
		handed = true;
	due = handed ? now + ab->retry_timeout_ms : now;
	for (struct abx_gc_req *q = batch; q; q = q->next) {
		if (!q->admitted)
			continue;
		for (size_t k = 0; k < q->n; k++, i++) {
			abx_fresh *f = q->msgs[k];
			ackbox_store_rec *r = &recs[i];
			r->id = f->id;
			r->created_ms = f->created_ms;
			r->due_ms = due;
			r->topic = f->topic;
			r->key = f->key;
			r->key_len = f->key_len;
			r->content_type = f->content_type;
			r->headers = f->headers;
			r->headers_len = f->headers_len;
			r->payload = f->payload;
			r->payload_len = f->payload_len;
		}
	}
	abx_store_lock(ab);
	rc = ab->store_ops->insert(ab->store_ctx, recs, n, err, sizeof(err));
	if (rc < 0 && abx_bound_active(ab))
		abx_bound_forget(ab, n, bytes);
	abx_store_unlock(ab);
	free(recs);
	if (rc < 0) {
		if (handed)
			abx_relay_unreserve(ab->relay, n, bytes);
		commit_failed(batch, rc, err);
		return;
	}
	/*
	 * The rows are committed, not yet flushed: the relay may send them now,
	 * so that the broker's round trip overlaps the flush (a row claimed
	 * from the store could always be sent this early). Nothing is promised
	 * before the flush returns: a crash before it loses a message whose
	 * publish never returned (it may have reached the broker: a duplicate
	 * if the application publishes it again). A confirm that comes first
	 * deletes the row in a later transaction of the same log, which the
	 * flush covers or the crash takes with it. Without a sync op the insert
	 * was durable already.
	 */
	if (handed)
		hand_to_relay(ab, batch);
	/* The flush to disk runs without the lock, so the relay's deletes go
	 * on meanwhile. Only one leader runs at a time: never two syncs. If it
	 * fails, the rows may still be sent later (or were handed over above);
	 * a publish that returned an error may thus be delivered (a duplicate
	 * if retried), never lost. */
	if (ABX_HAS_SLOT(ab->store_ops, ackbox_store_ops, sync))
		rc = ab->store_ops->sync(ab->store_ctx, err, sizeof(err));
	if (rc < 0) {
		commit_failed(batch, rc, err);
		return;
	}
	atomic_fetch_add_explicit(&ab->stats.commits, 1, memory_order_relaxed);
	ABX_CRASH_POINT("after_persist");
	if (!handed && ab->relay)
		abx_relay_poke(ab->relay);
	for (struct abx_gc_req *q = batch; q; q = q->next)
		if (q->admitted)
			q->rc = 0;
}

/*
 * Group commit: the first waiter becomes the leader and commits everything
 * queued meanwhile; the others sleep until it is done. Sets req->rc.
 */
#define GATHER_MAX_US 200

static void group_commit(ackbox *ab, struct abx_gc_req *req)
{
	bool led = false;
	pthread_mutex_lock(&ab->gc_mtx);
	if (ab->gc_queue_tail)
		ab->gc_queue_tail->next = req;
	else
		ab->gc_queue_head = req;
	ab->gc_queue_tail = req;
	ab->gc_queue_len++;
	if (ab->gc_gathering)
		pthread_cond_signal(&ab->gc_arrive);
	if (ab->ordered) {
		/* Ids made here, in queue order, follow commit order: leaders take
		 * the queue whole and one at a time. So a key's id order is the
		 * order its messages became claimable, even with publishers racing.
		 * A request queued again (store.full_policy=block) gets new ids. */
		for (size_t i = 0; i < req->n; i++) {
			ackbox_id_new(&req->msgs[i]->id);
			req->msgs[i]->created_ms = ackbox_id_time_ms(&req->msgs[i]->id);
		}
	}
	while (!req->done) {
		if (!ab->gc_leader_active) {
			struct abx_gc_req *batch;
			size_t group = 0;
			int64_t t0, t1;
			ab->gc_leader_active = true;
			/*
			 * Gathering. The publishers the last commit let go have
			 * not come back yet: they were woken, and on a busy
			 * machine that takes a while. Taking the queue at once
			 * splits T publishers into two groups that alternate
			 * (8 threads: 4.2 messages per commit). So a leader whose
			 * predecessor carried several requests waits until as
			 * many are queued as took part in the last round (that
			 * group plus those that queued while it committed), for
			 * at most half the last commit's time (GATHER_MAX_US at
			 * most): the wait costs less than the commit it fills.
			 * A lone publisher never waits (its last group was 1).
			 */
			if (ab->gc_last_group > 1 && ab->gc_last_commit_us > 1) {
				size_t want = ab->gc_last_group + ab->gc_last_waiting;
				int64_t us = ab->gc_last_commit_us / 2;
				struct timespec ts;
				if (us > GATHER_MAX_US)
					us = GATHER_MAX_US;
				abx_abs_deadline_us(&ts, us);
				ab->gc_gathering = true;
				while (ab->gc_queue_len < want &&
				       pthread_cond_timedwait(&ab->gc_arrive, &ab->gc_mtx, &ts) == 0)
					;
				ab->gc_gathering = false;
			}
			batch = ab->gc_queue_head;
			ab->gc_queue_head = ab->gc_queue_tail = NULL;
			ab->gc_queue_len = 0;
			pthread_mutex_unlock(&ab->gc_mtx);
			/* The leader holds the other publishers: a log callback that
			 * publishes must not run before it lets them go (it would wait
			 * for itself). Its lines wait until then. */
			abx_log_hold();
			led = true;
			t0 = abx_mono_us();
			commit_batch(ab, batch);
			t1 = abx_mono_us();
			pthread_mutex_lock(&ab->gc_mtx);
			ab->gc_last_commit_us = t1 - t0;
			for (struct abx_gc_req *q = batch, *nx; q; q = nx) {
				nx = q->next;
				q->next = NULL;
				q->done = true;
				group++;
			}
			ab->gc_last_group = group;
			ab->gc_last_waiting = ab->gc_queue_len;
			ab->gc_leader_active = false;
			pthread_cond_broadcast(&ab->gc_cond);
		} else {
			pthread_cond_wait(&ab->gc_cond, &ab->gc_mtx);
		}
	}
	pthread_mutex_unlock(&ab->gc_mtx);
	if (led)
		abx_log_release();
}

/*
 * store.full_policy=block: waits until the relay makes progress (acks make
 * room; their rows are deleted before the progress count moves) or ms pass,
 * or the handle closes. seen: the progress count before the refused commit,
 * so room made meanwhile is not waited for.
 */
static void wait_for_room(ackbox *ab, uint64_t seen, int64_t ms)
{
	struct timespec dl;
	abx_abs_deadline_us(&dl, ms * 1000);
	pthread_mutex_lock(&ab->rep_mtx);
	while (ab->progress == seen && !atomic_load(&ab->closing) &&
	       pthread_cond_timedwait(&ab->rep_cond, &ab->rep_mtx, &dl) != ETIMEDOUT) {
	}
	pthread_mutex_unlock(&ab->rep_mtx);
}

static uint64_t progress_now(ackbox *ab)
{
	uint64_t p;
	pthread_mutex_lock(&ab->rep_mtx);
	p = ab->progress;
	pthread_mutex_unlock(&ab->rep_mtx);
	return p;
}

int abx_publish_batch(ackbox *ab, const ackbox_msg *msgs, size_t n, ackbox_id *ids_out,
                      char *errstr, size_t errstr_size)
{
	struct abx_gc_req req;
	abx_fresh *one[1];
	int rc = 0;
	int64_t t0_us = abx_mono_us(), deadline;

	if (!ab || (!msgs && n)) {
		ackbox_errstr_set(errstr, errstr_size, "publish: NULL argument");
		return ACKBOX_ERR_INVALID;
	}
	if (n == 0)
		return 0;
	deadline = ackbox_mono_ms() + ab->bound.timeout_ms;
	memset(&req, 0, sizeof(req));
	req.msgs = n == 1 ? one : calloc(n, sizeof(*req.msgs));
	if (!req.msgs)
		return ACKBOX_ERR_NOMEM;
	req.n = n;
	for (size_t i = 0; i < n; i++) {
		rc = prepare(ab, &msgs[i], &req.msgs[i], errstr, errstr_size);
		if (rc) {
			for (size_t k = 0; k < i; k++)
				abx_fresh_free(req.msgs[k]);
			if (req.msgs != one)
				free(req.msgs);
			return rc;
		}
		req.bytes += msgs[i].payload_len;
		if (ids_out)
			ids_out[i] = req.msgs[i]->id;
	}

	/* Commit; with store.full_policy=block, a commit the backlog bound
	 * refused is tried again whenever acks make room, until the deadline. */
	for (bool waited = false;;) {
		uint64_t seen = progress_now(ab);
		int64_t left;
		group_commit(ab, &req);
		if (req.rc != ACKBOX_ERR_FULL || req.full != ABX_BOUND_FULL || !ab->bound.block ||
		    atomic_load(&ab->closing))
			break;
		left = deadline - ackbox_mono_ms();
		if (left <= 0) {
			char why[256];
			snprintf(why, sizeof(why), "%s", req.err);
			snprintf(req.err, sizeof(req.err), "%.200s (waited %lld ms: store.full_timeout)",
			         why, (long long)ab->bound.timeout_ms);
			break;
		}
		if (!waited) {
			abx_log(ab->conf, ACKBOX_LOG_INFO, "publish",
			        "waiting up to %lld ms for room (store.full_policy=block): %s",
			        (long long)left, req.err);
			waited = true;
		}
		/* the relay makes room as it is acked; others' deletes are seen
		 * when the store is asked again (store.poll_interval) */
		wait_for_room(ab, seen, left < ab->store_poll_ms ? left : ab->store_poll_ms);
		req.done = false;
		req.admitted = false;
		req.rc = 0;
		req.full = 0;
		req.err[0] = '\0';
	}

	/* In ordered mode group_commit made the ids. The relay never takes
	 * such messages at commit, so req.msgs still holds them. */
	for (size_t i = 0; ab->ordered && ids_out && i < n; i++)
		ids_out[i] = req.msgs[i]->id;
	rc = req.rc;
	if (rc) {
		ackbox_errstr_set(errstr, errstr_size, "%s", req.err);
	} else {
		atomic_fetch_add_explicit(&ab->stats.published, n, memory_order_relaxed);
		abx_hist_add(&ab->stats.durable, abx_mono_us() - t0_us, n);
	}
	for (size_t i = 0; i < n; i++)
		abx_fresh_free(req.msgs[i]); /* NULL where the relay took it */
	if (req.msgs != one)
		free(req.msgs);
	return rc;
}

