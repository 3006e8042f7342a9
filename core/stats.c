/*
 * stats.c - what a handle reports about itself: counters and latency
 * histograms kept with atomics (written on publishers' and the relay's
 * threads, read on any), the OpenMetrics text an operator scrapes, and the
 * health verdict a load balancer asks for.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* 0.25 ms doubling to 65.5 s, then rounded: wide enough for an fsync on a
 * quiet disk and for a broker outage. */
static const double bounds_ms[ACKBOX_HIST_BUCKETS] = {
	0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 4000, 8000, 15000, 30000, 60000,
	120000};

double ackbox_histogram_bound_ms(int i)
{
	return i >= 0 && i < ACKBOX_HIST_BUCKETS ? bounds_ms[i] : -1;
}

void abx_hist_add(abx_hist *h, int64_t us, uint64_t n)
{
	int i = 0;
	if (us < 0)
		us = 0;
	while (i < ACKBOX_HIST_BUCKETS && (double)us > bounds_ms[i] * 1000)
		i++;
	atomic_fetch_add_explicit(&h->buckets[i], n, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->count, n, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_us, (uint64_t)us * n, memory_order_relaxed);
}

void abx_stats_sent(abx_stats *s, const char *topic)
{
	int n = atomic_load_explicit(&s->ndests, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->sent, 1, memory_order_relaxed);
	for (int i = 0; i < n; i++) {
		if (strcmp(s->dests[i].name, topic) == 0) {
			atomic_fetch_add_explicit(&s->dests[i].sent, 1, memory_order_relaxed);
			return;
		}
	}
	if (n == ABX_MAX_DESTINATIONS || strlen(topic) >= sizeof(s->dests[0].name)) {
		/* topics can be many: past 64 (or a very long one) they are summed
		 * as one, so the metrics stay a bounded set of series */
		atomic_fetch_add_explicit(&s->other_dest_sent, 1, memory_order_relaxed);
		return;
	}
	snprintf(s->dests[n].name, sizeof(s->dests[n].name), "%s", topic);
	atomic_store_explicit(&s->dests[n].sent, 1, memory_order_relaxed);
	atomic_store_explicit(&s->ndests, n + 1, memory_order_release); /* name first */
}

static void hist_get(abx_hist *h, ackbox_histogram *out)
{
	out->count = atomic_load_explicit(&h->count, memory_order_relaxed);
	out->sum_us = atomic_load_explicit(&h->sum_us, memory_order_relaxed);
	for (int i = 0; i <= ACKBOX_HIST_BUCKETS; i++)
		out->buckets[i] = atomic_load_explicit(&h->buckets[i], memory_order_relaxed);
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

/* ackbox.c's gate is taken by the public wrappers; these run inside it. */
int abx_stats_get(ackbox *ab, ackbox_stats *out, size_t out_size, char *errstr,
                  size_t errstr_size)
{
	ackbox_stats s;
	abx_stats *st = &ab->stats;
	int rc;
	memset(&s, 0, sizeof(s));
	s.published = LOAD(st->published);
	s.acked = LOAD(st->acked);
	s.failed = LOAD(st->failed);
	s.dropped = LOAD(st->dropped);
	s.retried = LOAD(st->retried);
	s.resent_in_doubt = LOAD(st->in_doubt);
	s.sent = LOAD(st->sent);
	s.connects = LOAD(st->connects);
	s.disconnects = LOAD(st->disconnects);
	s.store_commits = LOAD(st->commits);
	s.connected = abx_relay_connected(ab->relay) ? 1 : 0;
	s.state_for_ms = ackbox_mono_ms() - LOAD(st->state_since_ms);
	hist_get(&st->durable, &s.publish_durable);
	hist_get(&st->ack, &s.publish_ack);
	abx_store_lock(ab);
	rc = ab->store_ops->counts(ab->store_ctx, &s.pending, errstr, errstr_size);
	abx_store_unlock(ab);
	if (rc >= 0 && s.pending.oldest_pending_ms > 0) {
		s.oldest_pending_age_ms = ackbox_wall_ms() - s.pending.oldest_pending_ms;
		if (s.oldest_pending_age_ms < 0)
			s.oldest_pending_age_ms = 0;
	}
	memcpy(out, &s, out_size < sizeof(s) ? out_size : sizeof(s));
	return rc < 0 ? rc : 0;
}

/* ---- the text ---- */

typedef struct buf {
	char *p;
	size_t len, cap;
	int oom;
} buf;

__attribute__((format(printf, 2, 3))) static void put(buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;
	if (b->oom)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->oom = 1;
			return;
		}
		if (b->p && b->len + (size_t)n < b->cap) {
			b->len += (size_t)n;
			return;
		}
		size_t ncap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
		char *np = realloc(b->p, ncap);
		if (!np) {
			b->oom = 1;
			return;
		}
		b->p = np;
		b->cap = ncap;
	}
}

/* A label value, escaped as the exposition format wants (\\, \", \n). */
static void put_label(buf *b, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			put(b, "\\%c", *v);
		else if (*v == '\n')
			put(b, "\\n");
		else
			put(b, "%c", *v);
	}
}

static void put_counter(buf *b, const char *name, const char *help, const char *labels,
                        uint64_t v)
{
	put(b, "# HELP %s_total %s\n# TYPE %s_total counter\n%s_total%s %llu\n", name, help, name,
	    name, labels, (unsigned long long)v);
}

static void put_gauge(buf *b, const char *name, const char *help)
{
	put(b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
}

static void put_hist(buf *b, const char *name, const char *help, const char *labels,
                     const ackbox_histogram *h)
{
	uint64_t cum = 0;
	put(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (int i = 0; i < ACKBOX_HIST_BUCKETS; i++) {
		cum += h->buckets[i];
		put(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, *labels ? "," : "",
		    bounds_ms[i] / 1000, (unsigned long long)cum);
	}
	cum += h->buckets[ACKBOX_HIST_BUCKETS];
	put(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, *labels ? "," : "",
	    (unsigned long long)cum);
	put(b, "%s_count%s%s%s %llu\n", name, *labels ? "{" : "", labels, *labels ? "}" : "",
	    (unsigned long long)h->count);
	put(b, "%s_sum%s%s%s %.6f\n", name, *labels ? "{" : "", labels, *labels ? "}" : "",
	    (double)h->sum_us / 1e6);
}

int abx_metrics_text(ackbox *ab, char **out, size_t *out_len, char *errstr, size_t errstr_size)
{
	ackbox_stats s;
	buf b = {0};
	char sys[160], lbl[400];
	const char *system = abx_relay_system(ab->relay);
	int rc = abx_stats_get(ab, &s, sizeof(s), errstr, errstr_size);

	*out = NULL;
	*out_len = 0;
	snprintf(sys, sizeof(sys), "messaging_system=\"%s\"", system ? system : "none");
	snprintf(lbl, sizeof(lbl), "{%s}", sys);

	/* OpenTelemetry messaging conventions */
	put(&b, "# HELP messaging_client_sent_messages_total Messages handed to the broker "
	        "(resends included).\n# TYPE messaging_client_sent_messages_total counter\n");
	int n = atomic_load_explicit(&ab->stats.ndests, memory_order_acquire);
	for (int i = 0; i < n; i++) {
		put(&b, "messaging_client_sent_messages_total{%s,messaging_destination_name=\"", sys);
		put_label(&b, ab->stats.dests[i].name);
		put(&b, "\"} %llu\n", (unsigned long long)LOAD(ab->stats.dests[i].sent));
	}
	if (LOAD(ab->stats.other_dest_sent))
		put(&b,
		    "messaging_client_sent_messages_total{%s,messaging_destination_name=\"_other\"} "
		    "%llu\n",
		    sys, (unsigned long long)LOAD(ab->stats.other_dest_sent));
	{
		char hl[300];
		snprintf(hl, sizeof(hl), "%s,messaging_operation_name=\"publish\"", sys);
		put_hist(&b, "messaging_client_operation_duration_seconds",
		         "From ackbox_publish to the broker's confirm, per acked message.", hl,
		         &s.publish_ack);
	}

	/* the outbox */
	put_gauge(&b, "ackbox_pending_messages", "Messages in the store by state (every process).");
	put(&b, "ackbox_pending_messages{state=\"sending\"} %llu\n",
	    (unsigned long long)s.pending.sending);
	put(&b, "ackbox_pending_messages{state=\"retrying\"} %llu\n",
	    (unsigned long long)s.pending.retrying);
	put(&b, "ackbox_pending_messages{state=\"failed\"} %llu\n",
	    (unsigned long long)s.pending.failed);
	put_gauge(&b, "ackbox_oldest_pending_age_seconds",
	          "Age of the oldest SENDING or RETRYING message; 0 if none.");
	put(&b, "ackbox_oldest_pending_age_seconds %.3f\n", (double)s.oldest_pending_age_ms / 1000);
	put_counter(&b, "ackbox_published_messages", "Messages stored by this handle.", "",
	            s.published);
	put_counter(&b, "ackbox_store_commits",
	            "Group commits of published messages that reached the disk (one store "
	            "transaction and flush each).",
	            "", s.store_commits);
	put_counter(&b, "ackbox_acked_messages", "Messages the broker confirmed.", lbl, s.acked);
	put_counter(&b, "ackbox_failed_messages", "Messages marked FAILED.", lbl, s.failed);
	put_counter(&b, "ackbox_dropped_messages", "Messages the nack policy dropped.", lbl,
	            s.dropped);
	put_counter(&b, "ackbox_retried_attempts", "Failed attempts scheduled for a resend.", lbl,
	            s.retried);
	put_counter(&b, "ackbox_resent_in_doubt_attempts",
	            "Attempts lost with a connection, resent.", lbl, s.resent_in_doubt);
	put_gauge(&b, "ackbox_transport_connected", "1 if the transport is connected.");
	put(&b, "ackbox_transport_connected%s %d\n", lbl, s.connected);
	put_counter(&b, "ackbox_transport_connects", "Successful connects.", lbl, s.connects);
	put_counter(&b, "ackbox_transport_disconnects", "Connections lost.", lbl, s.disconnects);
	put_hist(&b, "ackbox_publish_durable_seconds",
	         "From the ackbox_publish call to the message durable in the store.", "",
	         &s.publish_durable);
	if (b.oom) {
		free(b.p);
		ackbox_errstr_set(errstr, errstr_size, "metrics: out of memory");
		return ACKBOX_ERR_NOMEM;
	}
	*out = b.p;
	*out_len = b.len;
	return rc;
}

int abx_health(ackbox *ab, char *errstr, size_t errstr_size)
{
	ackbox_counts c;
	char err[256] = "";
	int rc;
	abx_store_lock(ab);
	rc = ab->store_ops->counts(ab->store_ctx, &c, err, sizeof(err));
	abx_store_unlock(ab);
	if (rc < 0) {
		ackbox_errstr_set(errstr, errstr_size, "store: %s", err);
		return ACKBOX_ERR_STORE;
	}
	if (atomic_load(&ab->stats.store_stuck)) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "store: the relay's last state changes were refused (see the log)");
		return ACKBOX_ERR_STORE;
	}
	if (atomic_load(&ab->stats.claim_stuck)) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "store: the relay cannot claim due messages (see the log)");
		return ACKBOX_ERR_STORE;
	}
	if (ab->relay && !abx_relay_connected(ab->relay)) {
		int64_t down = ackbox_mono_ms() - LOAD(ab->stats.state_since_ms);
		int64_t max = abx_conf_int(ab->conf, "health.disconnected_max");
		if (down >= max) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "transport: not connected for %lld ms (health.disconnected_max "
			                  "%lld ms)",
			                  (long long)down, (long long)max);
			return ACKBOX_ERR_TRANSPORT;
		}
	}
	return 0;
}
