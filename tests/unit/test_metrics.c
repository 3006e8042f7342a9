/*
 * test_metrics.c - ackbox_stats_get, ackbox_metrics_text and ackbox_health
 * through the loopback transport and the SQLite store: counters that match
 * what happened, exactly; the text that Prometheus' own validator accepts
 * (promtool check metrics, run by ctest on the file this test writes); a
 * health verdict that follows the broker.
 */
#include "testutil.h"

#include "ackbox_loopback.h"

static char *dir;
static char db_url[1200];

static void setup(void)
{
	dir = tu_tmpdir("metrics");
	snprintf(db_url, sizeof(db_url), "sqlite://%s/outbox.db", dir);
}

static void teardown(void)
{
	tu_rmrf(dir);
	free(dir);
	ackbox_loopback_reset();
}

TestSuite(metrics, .init = setup, .fini = teardown, .timeout = 60);

static ackbox *open_kv(const char *broker, const char *const *kv)
{
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab = NULL;
	char url[128], err[512];
	TU_SET(c, "store.url", db_url);
	if (broker) {
		snprintf(url, sizeof(url), "loopback://%s", broker);
		TU_SET(c, "transport.url", url);
	}
	TU_SET(c, "retry.timeout", "2s");
	TU_SET(c, "retry.backoff.initial", "10ms");
	TU_SET(c, "retry.backoff.max", "20ms");
	TU_SET(c, "log.level", "error");
	for (; kv && kv[0]; kv += 2)
		TU_SET(c, kv[0], kv[1]);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "ackbox_new: %s", err);
	return ab;
}

/*
 * n messages in ONE publish call: the relay gets them together and sends
 * them in one pass, so a scripted NACK of the first cannot be followed by
 * its resend before the others reach the broker (one publish call each
 * let a slow flush under load do that, and the resend took the second
 * scripted NACK: one message FAILED instead of two nacked once).
 */
static void publish_to(ackbox *ab, const char *topic, int n)
{
	char err[256];
	ackbox_msg m[64];
	cr_assert_leq(n, 64);
	for (int i = 0; i < n; i++)
		m[i] = (ackbox_msg){.topic = topic, .payload = "x", .payload_len = 1};
	cr_assert_eq(ackbox_publish_batch(ab, m, (size_t)n, NULL, err, sizeof(err)), 0, "%s", err);
}

static ackbox_stats stats(ackbox *ab)
{
	ackbox_stats s;
	char err[256];
	cr_assert_eq(ackbox_stats_get(ab, &s, sizeof(s), err, sizeof(err)), 0, "%s", err);
	return s;
}

static char *metrics(ackbox *ab)
{
	char *text = NULL, err[256];
	size_t len = 0;
	cr_assert_eq(ackbox_metrics_text(ab, &text, &len, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(strlen(text), len);
	return text;
}

/* The sample line that starts with `prefix`, or fail. */
static double sample(const char *text, const char *prefix)
{
	const char *p = text;
	size_t n = strlen(prefix);
	for (;;) {
		p = strstr(p, prefix);
		cr_assert(p != NULL, "no sample %s in:\n%s", prefix, text);
		if ((p == text || p[-1] == '\n') && p[n] == ' ')
			return strtod(p + n + 1, NULL);
		p += n;
	}
}

/*
 * 30 to "orders" (2 of them nacked once), 10 to "payments" (one nacked to
 * FAILED with retry.max_attempts 2): every counter is exact, per
 * destination too, and the histograms saw every acked message.
 */
Test(metrics, counters_match_what_happened)
{
	const char *kv[] = {"retry.max_attempts", "2", NULL};
	ackbox *ab = open_kv("m1", kv);
	ackbox_loopback *lb = ackbox_loopback_get("m1");
	ackbox_loopback_script(lb, ACKBOX_LB_NACK, 2, 0);
	publish_to(ab, "orders", 30);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	ackbox_loopback_script(lb, ACKBOX_LB_NACK, 2, 0); /* both attempts of the next one */
	publish_to(ab, "payments", 1);                  /* alone: it gets both */
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	publish_to(ab, "payments", 9);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);

	ackbox_stats s = stats(ab);
	cr_assert_eq(s.published, 40);
	cr_assert_eq(s.acked, 39, "acked %llu failed %llu retried %llu sent %llu",
	             (unsigned long long)s.acked, (unsigned long long)s.failed,
	             (unsigned long long)s.retried, (unsigned long long)s.sent);
	cr_assert_eq(s.failed, 1);
	cr_assert_eq(s.retried, 3, "2 first nacks + the payment's first");
	cr_assert_eq(s.sent, 43, "40 + 3 resends");
	cr_assert_eq(s.dropped, 0);
	cr_assert_eq(s.connected, 1);
	cr_assert_eq(s.connects, 1);
	cr_assert_eq(s.pending.failed, 1);
	cr_assert_eq(s.pending.sending + s.pending.retrying, 0);
	cr_assert_eq(s.oldest_pending_age_ms, 0);
	cr_assert_eq(s.publish_durable.count, 40);
	cr_assert_eq(s.store_commits, 3, "one thread, three publish calls: a commit each");
	cr_assert_eq(s.publish_ack.count, 39);
	uint64_t in_buckets = 0;
	for (int i = 0; i <= ACKBOX_HIST_BUCKETS; i++)
		in_buckets += s.publish_ack.buckets[i];
	cr_assert_eq(in_buckets, 39);

	char *t = metrics(ab);
	cr_assert_eq(sample(t, "messaging_client_sent_messages_total{messaging_system=\"loopback\","
	                       "messaging_destination_name=\"orders\"}"),
	             32);
	cr_assert_eq(sample(t, "messaging_client_sent_messages_total{messaging_system=\"loopback\","
	                       "messaging_destination_name=\"payments\"}"),
	             11);
	cr_assert_eq(sample(t, "ackbox_pending_messages{state=\"failed\"}"), 1);
	cr_assert_eq(sample(t, "ackbox_acked_messages_total{messaging_system=\"loopback\"}"), 39);
	cr_assert_eq(sample(t, "ackbox_failed_messages_total{messaging_system=\"loopback\"}"), 1);
	cr_assert_eq(sample(t, "ackbox_published_messages_total"), 40);
	cr_assert_eq(sample(t, "ackbox_store_commits_total"), 3);
	cr_assert_eq(sample(t, "messaging_client_operation_duration_seconds_count{messaging_system="
	                       "\"loopback\",messaging_operation_name=\"publish\"}"),
	             39);
	cr_assert_eq(sample(t, "ackbox_publish_durable_seconds_bucket{le=\"+Inf\"}"), 40);
	cr_assert(strstr(t, "# TYPE ackbox_acked_messages_total counter\n"), "%s", t);
	/* for promtool (ctest runs `promtool check metrics` on it next) */
	const char *out = getenv("ACKBOX_METRICS_OUT");
	if (out) {
		FILE *f = fopen(out, "w");
		cr_assert(f != NULL, "%s", out);
		fputs(t, f);
		fclose(f);
	}
	free(t);
	ackbox_destroy(ab);
}

/* Pending messages and the oldest one's age while the broker is down. */
Test(metrics, pending_and_oldest_age_rise_during_an_outage)
{
	ackbox *ab = open_kv("m2", NULL);
	ackbox_loopback *lb = ackbox_loopback_get("m2");
	ackbox_loopback_set_up(lb, 0);
	publish_to(ab, "orders", 5);
	long long t0 = tu_mono_ms();
	cr_assert(TU_WAIT_UNTIL(tu_mono_ms() - t0 > 50, 1000));
	ackbox_stats s = stats(ab);
	cr_assert_eq(s.pending.sending + s.pending.retrying, 5);
	cr_assert_geq(s.oldest_pending_age_ms, 50);
	cr_assert_eq(s.connected, 0);
	char *t = metrics(ab);
	cr_assert_eq(sample(t, "ackbox_pending_messages{state=\"sending\"}") +
	                 sample(t, "ackbox_pending_messages{state=\"retrying\"}"),
	             5);
	cr_assert_geq(sample(t, "ackbox_oldest_pending_age_seconds"), 0.05);
	cr_assert_eq(sample(t, "ackbox_transport_connected{messaging_system=\"loopback\"}"), 0);
	free(t);
	ackbox_loopback_set_up(lb, 1);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	s = stats(ab);
	cr_assert_eq(s.pending.sending + s.pending.retrying, 0);
	cr_assert_eq(s.oldest_pending_age_ms, 0);
	ackbox_destroy(ab);
}

/* Healthy while connected or briefly down; unhealthy past the bound, naming why. */
Test(metrics, health_follows_the_broker)
{
	const char *kv[] = {"health.disconnected_max", "300ms", NULL};
	ackbox *ab = open_kv("m3", kv);
	ackbox_loopback *lb = ackbox_loopback_get("m3");
	char err[256] = "";
	cr_assert(TU_WAIT_UNTIL(ackbox_connected(ab), 5000));
	cr_assert_eq(ackbox_health(ab, err, sizeof(err)), 0, "%s", err);
	ackbox_loopback_set_up(lb, 0);
	publish_to(ab, "orders", 1); /* the relay notices the broker is gone */
	cr_assert(TU_WAIT_UNTIL(!ackbox_connected(ab), 5000));
	cr_assert_eq(ackbox_health(ab, err, sizeof(err)), 0, "just down: still healthy (%s)", err);
	cr_assert(TU_WAIT_UNTIL(ackbox_health(ab, err, sizeof(err)) == ACKBOX_ERR_TRANSPORT, 5000),
	          "unhealthy past health.disconnected_max");
	cr_assert(strstr(err, "not connected") && strstr(err, "health.disconnected_max"), "%s", err);
	ackbox_loopback_set_up(lb, 1);
	cr_assert(TU_WAIT_UNTIL(ackbox_health(ab, err, sizeof(err)) == 0, 10000), "%s", err);
	ackbox_destroy(ab);

	ab = open_kv(NULL, NULL); /* no transport: the store alone decides */
	cr_assert_eq(ackbox_health(ab, err, sizeof(err)), 0, "%s", err);
	ackbox_close(ab);
	cr_assert_eq(ackbox_health(ab, err, sizeof(err)), ACKBOX_ERR_CLOSED);
	ackbox_destroy(ab);
}

/* W3C trace context: well-formed headers pass, malformed ones are refused
 * at publish with the reason, and nothing is stored. */
Test(metrics, malformed_trace_context_is_refused_at_publish)
{
	static const struct {
		const char *name, *value;
		int ok;
	} cases[] = {
	    {"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", 1},
	    {"traceparent", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future", 1},
	    {"traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", 0},
	    {"traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", 0},
	    {"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", 0},
	    {"traceparent", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", 0},
	    {"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", 0},
	    {"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", 0},
	    {"tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", 1},
	    {"tracestate", "no equals sign", 0},
	    {"tracestate", "a=1\n", 0},
	    {"x-other", "anything at all", 1},
	};
	ackbox *ab = open_kv(NULL, NULL);
	int stored = 0;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		ackbox_header h = {cases[i].name, cases[i].value, strlen(cases[i].value)};
		ackbox_msg m = {.topic = "orders", .payload = "x", .payload_len = 1, .headers = &h,
		                .header_count = 1};
		char err[512] = "";
		int rc = ackbox_publish(ab, &m, NULL, err, sizeof(err));
		if (cases[i].ok) {
			cr_assert_eq(rc, 0, "case %zu (%s: %s): %s", i, cases[i].name, cases[i].value, err);
			stored++;
		} else {
			cr_assert_eq(rc, ACKBOX_ERR_INVALID, "case %zu (%s: %s) accepted", i,
			             cases[i].name, cases[i].value);
			cr_assert(strstr(err, cases[i].name), "case %zu: %s", i, err);
		}
	}
	cr_assert_eq(stats(ab).pending.sending, (uint64_t)stored, "refused ones were not stored");
	ackbox_destroy(ab);
}
