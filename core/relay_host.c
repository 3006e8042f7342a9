/*
 * relay_host.c - the relay's edges: the transport host API (reports from
 * any thread, the wake fd, logging), the publishers' side (the inbox of
 * fresh messages and its memory bound), and starting and stopping the
 * relay thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "registry.h"
#include "relay_int.h"

void abx_relay_wake(abx_relay *r)
{
	if (!atomic_exchange(&r->wake_pending, 1)) {
		uint64_t one = 1;
		if (write(r->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
			abx_log(r->ab->conf, ACKBOX_LOG_ERROR, "relay", "eventfd write: %s",
			        strerror(errno));
	}
}

/* The relay this thread runs, if it is a relay thread. */
static _Thread_local abx_relay *tl_relay;

void abx_relay_thread_enter(abx_relay *r)
{
	tl_relay = r;
}

void abx_relay_first_connect(abx_relay *r, int rc, const char *err)
{
	pthread_mutex_lock(&r->in_mtx);
	r->first_result = rc == 0 ? 1 : -1;
	snprintf(r->first_error, sizeof(r->first_error), "%s", err ? err : "");
	pthread_cond_broadcast(&r->first_cond);
	pthread_mutex_unlock(&r->in_mtx);
}

void ackbox_tx_report(ackbox_tx_host *host, const ackbox_tx_event *ev)
{
	abx_relay *r;
	if (!host || !ev)
		return;
	if (host->tap)
		host->tap(host->tap_opaque, ev);
	r = host->relay;
	pthread_mutex_lock(&r->ev_mtx);
	if (r->nevs == r->cap_evs) {
		size_t ncap = r->cap_evs ? r->cap_evs * 2 : 1024;
		tx_ev *n = realloc(r->evs, ncap * sizeof(*n));
		if (!n) {
			pthread_mutex_unlock(&r->ev_mtx);
			/* dropping a report only delays: the timeout resends it */
			abx_log(r->ab->conf, ACKBOX_LOG_ERROR, "relay", "out of memory for a report");
			return;
		}
		r->evs = n;
		r->cap_evs = ncap;
	}
	tx_ev *e = &r->evs[r->nevs++];
	e->kind = ev->kind;
	e->token = ev->token;
	e->broker_code = ev->broker_code;
	e->retriable = ev->retriable;
	e->reason = ev->reason ? strdup(ev->reason) : NULL;
	bool now = ev->kind != ACKBOX_TX_ACK || r->nevs >= r->ack_wake;
	pthread_mutex_unlock(&r->ev_mtx);
	/* also from the relay thread itself: a transport's poll() that reported
	 * something and then waits on the wake fd must return at once */
	if (now || tl_relay == r)
		abx_relay_wake(r);
}

void ackbox_tx_set_tap(ackbox_tx_host *host, ackbox_tx_tap tap, void *opaque)
{
	if (!host)
		return;
	host->tap = tap;
	host->tap_opaque = opaque;
}

int ackbox_tx_wake_fd(ackbox_tx_host *host)
{
	return host ? host->relay->wake_fd : -1;
}

int ackbox_tx_stopping(ackbox_tx_host *host)
{
	return host ? atomic_load(&host->relay->stop) : 1;
}

void ackbox_tx_log(ackbox_tx_host *host, ackbox_log_level level, const char *fmt, ...)
{
	va_list ap;
	if (!host)
		return;
	va_start(ap, fmt);
	abx_logv(host->relay->ab->conf, level, host->relay->ops->schemes[0], fmt, ap);
	va_end(ap);
}

const ackbox_conf *ackbox_tx_conf(ackbox_tx_host *host)
{
	return host ? host->relay->ab->conf : NULL;
}

bool abx_relay_reserve(abx_relay *r, size_t n, size_t bytes)
{
	bool ok;
	struct ackbox *ab = r->ab;
	pthread_mutex_lock(&r->in_mtx);
	ok = r->reserved_msgs + n <= ab->fresh_max_msgs &&
	     r->reserved_bytes + bytes <= ab->fresh_max_bytes;
	if (ok) {
		r->reserved_msgs += n;
		r->reserved_bytes += bytes;
	}
	pthread_mutex_unlock(&r->in_mtx);
	return ok;
}

void abx_relay_unreserve(abx_relay *r, size_t n, size_t bytes)
{
	pthread_mutex_lock(&r->in_mtx);
	r->reserved_msgs = r->reserved_msgs >= n ? r->reserved_msgs - n : 0;
	r->reserved_bytes = r->reserved_bytes >= bytes ? r->reserved_bytes - bytes : 0;
	pthread_mutex_unlock(&r->in_mtx);
}

void abx_relay_push_fresh(abx_relay *r, abx_fresh *head, abx_fresh *tail)
{
	pthread_mutex_lock(&r->in_mtx);
	if (r->fresh_tail)
		r->fresh_tail->next = head;
	else
		r->fresh_head = head;
	r->fresh_tail = tail;
	pthread_mutex_unlock(&r->in_mtx);
	abx_relay_wake(r);
}

void abx_relay_poke(abx_relay *r)
{
	pthread_mutex_lock(&r->in_mtx);
	r->store_poked = true;
	pthread_mutex_unlock(&r->in_mtx);
	abx_relay_wake(r);
}

bool abx_relay_connected(abx_relay *r)
{
	return r && atomic_load(&r->connected);
}

const char *abx_relay_system(abx_relay *r)
{
	if (!r)
		return NULL;
	return r->info.system_name ? r->info.system_name : r->ops->schemes[0];
}

size_t abx_relay_max_message(abx_relay *r)
{
	return r ? r->info.max_message_size : 0;
}

int abx_relay_validate(abx_relay *r, const ackbox_msg *m, char *errstr, size_t errstr_size)
{
	ackbox_tx_msg tm;
	if (!r || !ABX_HAS_SLOT(r->ops, ackbox_transport_ops, validate))
		return 0;
	memset(&tm, 0, sizeof(tm));
	tm.id_str = "00000000-0000-0000-0000-000000000000";
	tm.topic = m->topic;
	tm.key = m->key;
	tm.key_len = m->key_len;
	tm.payload = m->payload;
	tm.payload_len = m->payload_len;
	tm.content_type = m->content_type;
	tm.headers = m->headers;
	tm.header_count = m->header_count;
	return r->ops->validate(r->tx_ctx, &tm, errstr, errstr_size);
}

static void relay_free(abx_relay *r)
{
	abx_fresh *f, *next;
	tok *t, *tn;
	if (!r)
		return;
	for (t = r->fifo_head; t; t = tn) {
		tn = t->next;
		free(t);
	}
	/* entries: reachable through the id map */
	for (size_t i = 0; i < r->by_id.cap; i++) {
		entry *e = r->by_id.vals[i];
		if (e) {
			abx_fresh_free(e->data);
			free(e);
		}
	}
	abx_pools_free(r);
	abx_map_fini(&r->by_id);
	abx_map_fini(&r->tokens);
	abx_map_fini(&r->key_holder);
	abx_poisoned_clear(r);
	free(r->back);
	abx_heap_fini(&r->retry_at);
	for (f = r->fresh_head; f; f = next) {
		next = f->next;
		abx_fresh_free(f);
	}
	for (size_t i = 0; i < r->nevs; i++)
		free(r->evs[i].reason);
	free(r->evs);
	free(r->evs_spare);
	for (size_t i = 0; i < r->nchanges; i++) {
		free(r->change_texts[i]);
		free((char *)r->notes[i].text);
	}
	free(r->claimed);
	free(r->changes);
	free(r->change_texts);
	free(r->notes);
	for (abx_report_item *it = r->rep_head, *nx; it; it = nx) {
		nx = it->next;
		free(it);
	}
	for (abx_report_item *it = r->ack_head, *nx; it; it = nx) {
		nx = it->next;
		free(it);
	}
	if (r->wake_fd >= 0)
		close(r->wake_fd);
	pthread_mutex_destroy(&r->in_mtx);
	pthread_mutex_destroy(&r->ev_mtx);
	pthread_cond_destroy(&r->first_cond);
	free(r->tx_ctx);
	free(r);
}

int abx_relay_start(struct ackbox *ab, char *errstr, size_t errstr_size)
{
	const char *url_text = ackbox_conf_get(ab->conf, "transport.url");
	ackbox_url url;
	abx_relay *r;
	int rc;

	rc = ackbox_url_parse(url_text, &url, errstr, errstr_size);
	if (rc)
		return rc;
	r = calloc(1, sizeof(*r));
	if (!r) {
		ackbox_url_fini(&url);
		return ACKBOX_ERR_NOMEM;
	}
	r->ab = ab;
	r->history = abx_store_keeps_history(ab);
	r->wake_fd = -1;
	pthread_mutex_init(&r->in_mtx, NULL);
	pthread_mutex_init(&r->ev_mtx, NULL);
	pthread_cond_init(&r->first_cond, NULL);
	r->host.relay = r;
	r->rng = (uint64_t)ackbox_mono_ms() * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)r;
	if (!r->rng)
		r->rng = 1;
	r->ops = abx_transport_find(url.scheme);
	if (!r->ops) {
		rc = abx_scheme_check(0, url.scheme, "transport.url", errstr, errstr_size);
		goto fail;
	}
	r->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (r->wake_fd < 0) {
		ackbox_errstr_set(errstr, errstr_size, "eventfd: %s", strerror(errno));
		rc = ACKBOX_ERR_INTERNAL;
		goto fail;
	}
	r->tx_ctx = calloc(1, r->ops->ctx_size ? r->ops->ctx_size : 1);
	if (!r->tx_ctx) {
		rc = ACKBOX_ERR_NOMEM;
		goto fail;
	}
	rc = r->ops->open(r->tx_ctx, &url, &r->host, &r->info, errstr, errstr_size);
	if (rc) {
		free(r->tx_ctx);
		r->tx_ctx = NULL;
		goto fail;
	}
	ackbox_url_fini(&url);
	r->window = (int)abx_conf_int(ab->conf, "transport.window");
	if (r->window <= 0)
		r->window = r->info.max_inflight > 0 ? r->info.max_inflight : 1000;
	r->ack_wake = (size_t)r->window / 4;
	if (r->ack_wake > ACK_WAKE_MAX)
		r->ack_wake = ACK_WAKE_MAX;
	if (r->ack_wake < 1)
		r->ack_wake = 1;
	r->store_dirty = true; /* recovered rows are due */
	ab->relay = r;

	/* The relay thread makes the first connection attempt at once. With
	 * transport.require_connect ackbox_new waits for it (every transport op
	 * but open and close runs on the relay thread), so that it can refuse
	 * to start; otherwise it never waits for a broker. */
	bool wait_first = abx_conf_bool(ab->conf, "transport.require_connect");
	r->first_wanted = wait_first; /* the relay thread's from here on */
	if (pthread_create(&r->thread, NULL, abx_relay_main, r) != 0) {
		ackbox_errstr_set(errstr, errstr_size, "cannot start the relay thread");
		r->ops->close(r->tx_ctx);
		ab->relay = NULL;
		relay_free(r);
		return ACKBOX_ERR_INTERNAL;
	}
	r->thread_started = true;
	if (wait_first) {
		char err[512];
		int result;
		pthread_mutex_lock(&r->in_mtx);
		while (r->first_result == 0)
			pthread_cond_wait(&r->first_cond, &r->in_mtx);
		result = r->first_result;
		snprintf(err, sizeof(err), "%s", r->first_error);
		pthread_mutex_unlock(&r->in_mtx);
		if (result < 0) {
			ackbox_errstr_set(errstr, errstr_size, "transport.url: %s", err);
			abx_relay_stop(ab);
			return ACKBOX_ERR_TRANSPORT;
		}
	}
	return 0;

fail:
	ackbox_url_fini(&url);
	relay_free(r);
	return rc;
}

void abx_relay_stop(struct ackbox *ab)
{
	abx_relay *r = ab->relay;
	if (!r)
		return;
	atomic_store(&r->stop, 1);
	abx_relay_wake(r);
	if (r->thread_started)
		pthread_join(r->thread, NULL);
	r->ops->close(r->tx_ctx);
	ab->relay = NULL;
	relay_free(r);
}
