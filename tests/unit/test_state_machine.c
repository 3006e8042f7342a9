/*
 * test_state_machine.c - the one state machine, driven through the loopback
 * transport and the SQLite store: ack, nack, lost confirm, max attempts,
 * late confirm and late nack, broker down, disconnect, crash recovery,
 * group commit.
 */
#include "testutil.h"

#include <pthread.h>

#include <ackbox/store.h>

#include "ackbox_loopback.h"

typedef struct seen {
	int acked, failed, dropped;
	ackbox_report last_failed;
	char last_reason[512];
	ackbox_id ids[8192];
	ackbox_state states[8192]; /* the state of the report ids[i] came with */
	int nids;
} seen;

static void on_report(const ackbox_report *r, void *opaque)
{
	seen *s = opaque;
	if (r->state == ACKBOX_MSG_ACKED)
		s->acked++;
	else if (r->state == ACKBOX_MSG_FAILED) {
		s->failed++;
		s->last_failed = *r;
		snprintf(s->last_reason, sizeof(s->last_reason), "%s", r->reason);
	} else if (r->state == ACKBOX_MSG_DROPPED)
		s->dropped++;
	if (s->nids < 8192) {
		s->states[s->nids] = r->state;
		s->ids[s->nids++] = r->id;
	}
}

/* How many reports in state st came for id. */
static int reports_for(const seen *s, const ackbox_id *id, ackbox_state st)
{
	int n = 0;
	for (int i = 0; i < s->nids; i++)
		if (s->states[i] == st && memcmp(&s->ids[i], id, sizeof(*id)) == 0)
			n++;
	return n;
}

static char *dir;
static char db_url[1200];

static void setup(void)
{
	dir = tu_tmpdir("sm");
	snprintf(db_url, sizeof(db_url), "sqlite://%s/outbox.db", dir);
}

static void teardown(void)
{
	tu_rmrf(dir);
	free(dir);
	ackbox_loopback_reset();
}

/* A handle on the loopback broker `broker`, with quick retries and the
 * extra keys kv (key, value, ..., NULL). */
static ackbox *open_handle_kv(const char *broker, seen *s, const char *const *kv)
{
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab = NULL;
	char url[128], err[512];
	snprintf(url, sizeof(url), "loopback://%s", broker);
	TU_SET(c, "store.url", db_url);
	TU_SET(c, "transport.url", url);
	TU_SET(c, "retry.timeout", "300ms");
	TU_SET(c, "retry.backoff.initial", "20ms");
	TU_SET(c, "retry.backoff.max", "100ms");
	TU_SET(c, "log.level", "error");
	for (; kv && kv[0]; kv += 2)
		TU_SET(c, kv[0], kv[1]);
	if (s)
		ackbox_conf_set_report_cb(c, on_report, s);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "ackbox_new: %s", err);
	return ab;
}

static ackbox *open_handle(const char *broker, seen *s, const char *k1, const char *v1)
{
	const char *kv[] = {k1, v1, NULL};
	return open_handle_kv(broker, s, kv);
}

/* Publishes n one-byte messages to "orders" in one ackbox_publish_batch. */
static void publish_tiny_batch(ackbox *ab, size_t n, ackbox_id *ids)
{
	ackbox_msg *m = calloc(n, sizeof(*m));
	char err[256];
	cr_assert(m);
	for (size_t i = 0; i < n; i++) {
		m[i].topic = "orders";
		m[i].payload = "x";
		m[i].payload_len = 1;
	}
	cr_assert_eq(ackbox_publish_batch(ab, m, n, ids, err, sizeof(err)), 0, "%s", err);
	free(m);
}

static ackbox_id publish_one(ackbox *ab, const char *payload)
{
	ackbox_msg m = {0};
	ackbox_id id;
	char err[256];
	m.topic = "orders";
	m.payload = payload;
	m.payload_len = strlen(payload);
	cr_assert_eq(ackbox_publish(ab, &m, &id, err, sizeof(err)), 0, "publish: %s", err);
	return id;
}

static ackbox_counts counts(ackbox *ab)
{
	ackbox_counts c;
	char err[256];
	cr_assert_eq(ackbox_counts_get(ab, &c, err, sizeof(err)), 0, "%s", err);
	return c;
}

TestSuite(sm, .init = setup, .fini = teardown);

Test(sm, ack_deletes_and_reports_once_per_message)
{
	seen s = {0};
	ackbox *ab = open_handle("ack", &s, NULL, NULL);
	ackbox_loopback *lb = ackbox_loopback_get("ack");
	ackbox_msg m = {0};
	ackbox_header h = {"trace", "t-1", 3};
	ackbox_id id;
	char err[256], buf[64];
	size_t len = sizeof(buf), nh = 0;

	m.topic = "orders";
	m.payload = "order-1";
	m.payload_len = 7;
	m.headers = &h;
	m.header_count = 1;
	m.content_type = "text/plain";
	cr_assert_eq(ackbox_publish(ab, &m, &id, err, sizeof(err)), 0, "%s", err);
	for (int i = 2; i <= 200; i++) {
		char p[32];
		snprintf(p, sizeof(p), "order-%d", i);
		publish_one(ab, p);
	}
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(s.acked, 200);
	cr_assert_eq(s.failed, 0);
	cr_assert_eq(ackbox_loopback_distinct(lb), 200);
	cr_assert_eq(ackbox_loopback_received(lb), 200, "no resend without a fault");
	ackbox_counts c = counts(ab);
	cr_assert_eq(c.sending + c.retrying + c.failed, 0, "acked rows are deleted");
	/* the first message arrived with its id, payload and header */
	ackbox_id got;
	cr_assert_eq(ackbox_loopback_message(lb, 0, &got, NULL, 0, buf, &len, &nh), 0);
	cr_assert_eq(memcmp(&got, &id, sizeof(id)), 0);
	cr_assert_eq(len, 7);
	cr_assert_eq(memcmp(buf, "order-1", 7), 0);
	cr_assert_eq(nh, 1);
	/* ids in reports are distinct */
	for (int i = 1; i < s.nids; i++)
		cr_assert_neq(memcmp(&s.ids[i], &s.ids[0], sizeof(ackbox_id)), 0);
	ackbox_destroy(ab);
}

Test(sm, nack_is_retried_then_acked)
{
	seen s = {0};
	ackbox *ab = open_handle("nack", &s, NULL, NULL);
	ackbox_loopback *lb = ackbox_loopback_get("nack");
	ackbox_loopback_script(lb, ACKBOX_LB_NACK, 1, 0);
	ackbox_id id = publish_one(ab, "x");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(s.acked, 1);
	cr_assert_eq(ackbox_loopback_count_id(lb, &id), 2, "sent twice: nacked, then acked");
	ackbox_destroy(ab);
}

/*
 * Many nacked messages are resent when their own backoff ends, not a
 * store.poll_interval later. Their jittered backoffs (10-20 ms here) end
 * at different moments: a relay that claimed only at the earliest of them
 * and then waited a whole poll interval (200 ms, the default, kept here)
 * would resend most of them ~200 ms late.
 */
Test(sm, nacked_messages_are_resent_when_their_backoff_ends)
{
	/* under a sanitizer everything is slower: the poll interval and the
	 * bound grow together, the bound staying well under one interval */
	enum { N = 50, BOUND_MS = 120 * TU_SLOW };
	char poll_ms[32];
	snprintf(poll_ms, sizeof(poll_ms), "%dms", 200 * TU_SLOW);
	seen s = {0};
	ackbox *ab = open_handle("nack-many", &s, "store.poll_interval", poll_ms);
	ackbox_loopback *lb = ackbox_loopback_get("nack-many");
	ackbox_id ids[N];

	ackbox_loopback_script(lb, ACKBOX_LB_NACK, N, 0);
	publish_tiny_batch(ab, N, ids);
	/* the nacks, and so the backoffs, start after the commit: about now */
	long long t0 = tu_mono_ms();
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	long long took = tu_mono_ms() - t0;
	cr_log_info("%d nacked messages acked %lld ms after the publish", N, took);
	for (int i = 0; i < N; i++) {
		cr_assert_eq(ackbox_loopback_count_id(lb, &ids[i]), 2, "message %d: nacked, then acked",
		             i);
		cr_assert_eq(reports_for(&s, &ids[i], ACKBOX_MSG_ACKED), 1, "message %d acked once", i);
	}
	cr_assert_eq(s.acked, N);
	cr_assert_eq(s.failed + s.dropped, 0);
	cr_assert_lt(took, BOUND_MS, "acked %lld ms after the publish, bound %d ms (backoff 10-20 ms)",
	             took, BOUND_MS);
	ackbox_destroy(ab);
}

Test(sm, lost_confirm_is_resent_after_retry_timeout)
{
	seen s = {0};
	ackbox *ab = open_handle("lost", &s, NULL, NULL);
	ackbox_loopback *lb = ackbox_loopback_get("lost");
	ackbox_loopback_script(lb, ACKBOX_LB_DROP, 1, 0);
	long long t0 = tu_mono_ms();
	ackbox_id id = publish_one(ab, "x");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_geq(tu_mono_ms() - t0, 300, "resent only after retry.timeout");
	cr_assert_eq(s.acked, 1);
	cr_assert_eq(ackbox_loopback_count_id(lb, &id), 2, "a duplicate with the same id");
	ackbox_destroy(ab);
}

/*
 * A connection that answers nothing at all (a blackhole the transport has
 * not noticed yet, a broker that stopped reading): overdue confirms are
 * resent without counting attempts, for up to retry.silence_limit. Twenty
 * messages each time out at least three times with max_attempts 2, then the
 * broker answers again: all acked, none FAILED.
 */
Test(sm, a_silent_connection_burns_no_attempt)
{
	enum { M = 20 };
	seen s = {0};
	ackbox *ab = open_handle("silent", &s, "retry.max_attempts", "2");
	ackbox_loopback *lb = ackbox_loopback_get("silent");
	ackbox_id ids[M];
	ackbox_loopback_set_default(lb, ACKBOX_LB_DROP, 0);
	for (int i = 0; i < M; i++)
		ids[i] = publish_one(ab, "x");
	TU_WAIT_UNTIL((ackbox_poll(ab, 10), ackbox_loopback_received(lb) >= 3 * M), 30000);
	cr_assert_eq(s.failed, 0, "a silent connection burnt attempts: %s", s.last_reason);
	ackbox_counts c = counts(ab);
	cr_assert_eq(c.failed, 0);
	ackbox_loopback_set_default(lb, ACKBOX_LB_CONFIRM, 0);
	cr_assert_eq(ackbox_flush(ab, 20000), 0);
	cr_assert_eq(s.acked, M);
	cr_assert_eq(s.failed, 0);
	for (int i = 0; i < M; i++)
		cr_assert_geq(ackbox_loopback_count_id(lb, &ids[i]), 3, "message %d resent", i);
	ackbox_destroy(ab);
}

/* Past retry.silence_limit, an overdue confirm counts again: a message the
 * broker never answers still ends FAILED, if later. */
Test(sm, silence_past_the_limit_counts_attempts_again)
{
	seen s = {0};
	const char *kv[] = {"retry.max_attempts", "2", "retry.silence_limit", "1s", NULL};
	ackbox *ab = open_handle_kv("silent_limit", &s, kv);
	ackbox_loopback_set_default(ackbox_loopback_get("silent_limit"), ACKBOX_LB_DROP, 0);
	long long t0 = tu_mono_ms();
	publish_one(ab, "x");
	cr_assert_eq(ackbox_flush(ab, 20000), 0, "FAILED in the end");
	cr_assert_eq(s.failed, 1);
	cr_assert_eq(s.last_failed.outcome, ACKBOX_OUTCOME_TIMEOUT);
	cr_assert_eq(s.last_failed.attempts, 2);
	cr_assert_geq(tu_mono_ms() - t0, 1000, "not before the silence limit");
	cr_assert(strstr(s.last_reason, "retry.timeout"), "reason: %s", s.last_reason);
	ackbox_destroy(ab);
}

/* Silence counts from the first unanswered send, not from the last answer:
 * after an idle spell longer than the limit, a connection gone silent is
 * still given retry.silence_limit before its overdue confirms count. */
Test(sm, an_idle_spell_is_not_silence)
{
	seen s = {0};
	const char *kv[] = {"retry.max_attempts", "1", "retry.silence_limit", "2s", NULL};
	ackbox *ab = open_handle_kv("idle_then_silent", &s, kv);
	ackbox_loopback *lb = ackbox_loopback_get("idle_then_silent");
	publish_one(ab, "answered");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(s.acked, 1);
	/* idle, connected, for longer than the limit (the condition under test) */
	long long idle_from = tu_mono_ms();
	while (tu_mono_ms() - idle_from < 2500)
		ackbox_poll(ab, 100);
	ackbox_loopback_set_default(lb, ACKBOX_LB_DROP, 0);
	long long t0 = tu_mono_ms();
	ackbox_id id = publish_one(ab, "unanswered");
	cr_assert_eq(ackbox_flush(ab, 20000), 0, "FAILED in the end");
	cr_assert_eq(s.failed, 1);
	cr_assert_geq(tu_mono_ms() - t0, 2000, "counted before the connection was silent for 2 s");
	cr_assert_geq(ackbox_loopback_count_id(lb, &id), 2, "resent, uncounted, meanwhile");
	ackbox_destroy(ab);
}

/* A confirm overdue while the connection answers the others is the
 * message's own: it counts at once (max_attempts 1: FAILED). */
Test(sm, an_unanswered_message_among_answered_ones_counts)
{
	seen s = {0};
	ackbox *ab = open_handle("one_unanswered", &s, "retry.max_attempts", "1");
	ackbox_loopback_script(ackbox_loopback_get("one_unanswered"), ACKBOX_LB_DROP, 1, 0);
	ackbox_id lost = publish_one(ab, "x");
	publish_one(ab, "y"); /* confirmed after the first was sent: the connection answers */
	cr_assert_eq(ackbox_flush(ab, 20000), 0);
	cr_assert_eq(s.acked, 1);
	cr_assert_eq(s.failed, 1);
	cr_assert_eq(memcmp(&s.last_failed.id, &lost, sizeof(lost)), 0);
	cr_assert_eq(s.last_failed.outcome, ACKBOX_OUTCOME_TIMEOUT);
	ackbox_destroy(ab);
}

Test(sm, max_attempts_marks_failed_with_reason)
{
	seen s = {0};
	ackbox *ab = open_handle("fail", &s, NULL, NULL);
	ackbox_loopback *lb = ackbox_loopback_get("fail");
	ackbox_loopback_set_default(lb, ACKBOX_LB_NACK, 0);
	ackbox_id id = publish_one(ab, "x");
	cr_assert_eq(ackbox_flush(ab, 10000), 0, "FAILED is final: nothing left in flight");
	cr_assert_eq(s.failed, 1);
	cr_assert_eq(s.acked, 0);
	cr_assert_eq(s.last_failed.attempts, 3);
	cr_assert_eq(s.last_failed.broker_code, 406);
	cr_assert(strstr(s.last_reason, "nack"), "reason: %s", s.last_reason);
	cr_assert_eq(ackbox_loopback_count_id(lb, &id), 3, "exactly max_attempts sends");
	ackbox_counts c = counts(ab);
	cr_assert_eq(c.failed, 1);
	cr_assert_eq(c.sending + c.retrying, 0);
	ackbox_destroy(ab);
}

Test(sm, unroutable_fails_saying_so)
{
	seen s = {0};
	ackbox *ab = open_handle("unroutable", &s, "retry.max_attempts", "2");
	ackbox_loopback_set_default(ackbox_loopback_get("unroutable"), ACKBOX_LB_RETURN, 0);
	publish_one(ab, "x");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(s.failed, 1);
	cr_assert_eq(s.last_failed.outcome, ACKBOX_OUTCOME_UNROUTABLE);
	cr_assert(strstr(s.last_reason, "unroutable"), "reason: %s", s.last_reason);
	cr_assert_eq(s.last_failed.attempts, 2);
	ackbox_destroy(ab);
}

Test(sm, late_confirm_of_an_earlier_attempt_acks_once)
{
	seen s = {0};
	ackbox *ab = open_handle("late", &s, "retry.max_attempts", "10");
	ackbox_loopback *lb = ackbox_loopback_get("late");
	/* attempt 1 is confirmed after 1200 ms (past retry.timeout = 300 ms,
	 * with room for a held-up relay thread to resend first); attempt 2's
	 * confirm is lost; so only the late confirm can ack */
	ackbox_loopback_script(lb, ACKBOX_LB_CONFIRM, 1, 1200);
	ackbox_loopback_set_default(lb, ACKBOX_LB_DROP, 0);
	ackbox_id id = publish_one(ab, "x");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(s.acked, 1);
	cr_assert_eq(s.failed, 0);
	cr_assert_geq(ackbox_loopback_count_id(lb, &id), 2, "it was resent before the late confirm");
	/* no second report, whatever comes later */
	cr_assert_eq(ackbox_poll(ab, 400), 0);
	cr_assert_eq(s.acked, 1);
	ackbox_destroy(ab);
}

/* ---- late answers after a resend: one report per message, whatever comes ---- */

/*
 * Timing of the tests below. The first answer comes LATE_MS after the
 * send, past retry.timeout, so the core gives up on that attempt and
 * resends (backoff 10-20 ms here) well before the late answer is due: 700
 * ms before, room for the relay thread to be held up that long (ThreadSanitizer
 * beside the other tests on two cores held it up more than 150 ms).
 * An answer scheduled AFTER_LATE_MS after a send made once an attempt has
 * timed out comes at least 100 ms after that attempt's late answer.
 */
#define LATE_TIMEOUT "300ms"
#define LATE_TIMEOUT_MS 300
#define LATE_MS 1000
#define AFTER_LATE_MS (LATE_MS - LATE_TIMEOUT_MS + 100)

/*
 * A handle for these tests. A timed-out row is resent by a claim once its
 * backoff has passed; the relay claims when each backoff it set ends
 * (nacked_messages_are_resent_when_their_backoff_ends), and a 10 ms poll
 * on top keeps every resend well ahead of the late answer on a busy
 * machine.
 */
static ackbox *open_late(const char *broker, seen *s, const char *max_attempts)
{
	const char *kv[] = {"retry.timeout", LATE_TIMEOUT, "store.poll_interval", "10ms",
	                    "retry.max_attempts", max_attempts, NULL};
	return open_handle_kv(broker, s, kv);
}

/*
 * Serves reports until the late answers are in, without sleeping: publishes
 * a sentinel whose confirm is scheduled AFTER_LATE_MS from now, so after the
 * late answer of every attempt that has timed out by now and after every
 * answer already scheduled with at most that delay (a resend of the
 * sentinel, should it time out, is never confirmed), and flushes until it
 * is acked. The loopback answers in time order and the relay handles
 * answers and releases reports in that order: once the sentinel's report is
 * served, every report an earlier answer caused has been served too.
 */
static void serve_until_answered(ackbox *ab, ackbox_loopback *lb, seen *s)
{
	ackbox_loopback_set_default(lb, ACKBOX_LB_DROP, 0);
	ackbox_loopback_script(lb, ACKBOX_LB_CONFIRM, 1, AFTER_LATE_MS);
	ackbox_id id = publish_one(ab, "sentinel");
	cr_assert_eq(ackbox_flush(ab, 10000), 0, "the sentinel is acked");
	cr_assert_eq(reports_for(s, &id, ACKBOX_MSG_ACKED), 1);
}

/*
 * One message whose first attempt gets `first` after retry.timeout; the
 * resend's confirm comes after `resend_ms` (-1: at once). Whichever answer
 * comes first acks it; the other must change nothing: sent twice, one
 * ACKED report, nothing else, an empty store.
 */
static void one_late_answer(const char *broker, const char *attempts, ackbox_lb_action first,
                            int resend_ms)
{
	seen s = {0};
	ackbox *ab = open_late(broker, &s, attempts);
	ackbox_loopback *lb = ackbox_loopback_get(broker);
	ackbox_loopback_script(lb, first, 1, LATE_MS);
	if (resend_ms >= 0)
		ackbox_loopback_script(lb, ACKBOX_LB_CONFIRM, 1, resend_ms);
	ackbox_loopback_set_default(lb, ACKBOX_LB_CONFIRM, 0);
	ackbox_id id = publish_one(ab, "x");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(ackbox_loopback_count_id(lb, &id), 2, "resent after retry.timeout");
	cr_assert_eq(reports_for(&s, &id, ACKBOX_MSG_ACKED), 1, "acked by the first answer");
	/* now the other answer comes in */
	serve_until_answered(ab, lb, &s);
	cr_assert_eq(reports_for(&s, &id, ACKBOX_MSG_ACKED), 1, "the other answer adds no report");
	cr_assert_eq(reports_for(&s, &id, ACKBOX_MSG_FAILED), 0, "and fails nothing");
	cr_assert_eq(s.failed + s.dropped, 0);
	cr_assert_eq(s.nids, 2, "one report for the message, one for the sentinel");
	cr_assert_eq(ackbox_loopback_count_id(lb, &id), 2, "no third send");
	ackbox_counts c = counts(ab);
	cr_assert_eq(c.sending + c.retrying + c.failed, 0, "the store is empty");
	ackbox_destroy(ab);
}

Test(sm, late_confirm_after_the_resend_was_acked_reports_once)
{
	/* attempt 1 is confirmed late; the resend is confirmed at once */
	one_late_answer("late-after", "3", ACKBOX_LB_CONFIRM, -1);
}

Test(sm, late_confirm_before_the_resend_is_acked_reports_once)
{
	/* attempt 1 is confirmed late, while the resend is still in flight:
	 * the resend's own confirm comes after the late one */
	one_late_answer("late-before", "3", ACKBOX_LB_CONFIRM, AFTER_LATE_MS);
}

Test(sm, late_nack_after_the_resend_was_acked_changes_nothing)
{
	/* two attempts: the timeout burns one, so a late nack taken for a
	 * current attempt would burn the last and fail the message */
	one_late_answer("late-nack", "2", ACKBOX_LB_NACK, -1);
}

Test(sm, late_confirms_of_many_messages_report_each_once)
{
	enum { N = 200, LATE = 50 };
	seen s = {0};
	ackbox *ab = open_late("late-many", &s, "3");
	ackbox_loopback *lb = ackbox_loopback_get("late-many");
	ackbox_id ids[N];
	int twice = 0;

	/* the first LATE sends are confirmed late, everything else at once */
	ackbox_loopback_script(lb, ACKBOX_LB_CONFIRM, LATE, LATE_MS);
	ackbox_loopback_set_default(lb, ACKBOX_LB_CONFIRM, 0);
	publish_tiny_batch(ab, N, ids);
	cr_assert_eq(ackbox_flush(ab, 20000), 0);
	serve_until_answered(ab, lb, &s);
	for (int i = 0; i < N; i++) {
		size_t sent = ackbox_loopback_count_id(lb, &ids[i]);
		cr_assert(sent == 1 || sent == 2, "message %d sent %zu times", i, sent);
		twice += sent == 2;
		cr_assert_eq(reports_for(&s, &ids[i], ACKBOX_MSG_ACKED), 1,
		             "message %d (sent %zu times) reported acked once", i, sent);
	}
	cr_assert_eq(twice, LATE, "%d messages resent, not the %d confirmed late", twice, LATE);
	cr_assert_eq(s.acked, N + 1, "N messages and the sentinel");
	cr_assert_eq(s.failed + s.dropped, 0);
	cr_assert_eq(s.nids, N + 1, "no other report");
	cr_assert_eq(ackbox_loopback_distinct(lb), N + 1);
	ackbox_counts c = counts(ab);
	cr_assert_eq(c.sending + c.retrying + c.failed, 0, "the store is empty");
	ackbox_destroy(ab);
}

Test(sm, broker_down_burns_no_attempt_and_waits)
{
	seen s = {0};
	ackbox_loopback *lb = ackbox_loopback_get("down");
	ackbox_loopback_set_up(lb, 0);
	ackbox *ab = open_handle("down", &s, "retry.max_attempts", "1");
	for (int i = 0; i < 50; i++)
		publish_one(ab, "x");
	cr_assert_eq(ackbox_connected(ab), 0);
	/* several retry.timeouts pass while down: nothing may fail */
	cr_assert_eq(ackbox_flush(ab, 1000), ACKBOX_ERR_TIMEOUT);
	ackbox_counts c = counts(ab);
	cr_assert_eq(c.failed, 0);
	cr_assert_eq(c.sending, 50);
	cr_assert_eq(ackbox_loopback_received(lb), 0);
	ackbox_loopback_set_up(lb, 1);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(s.acked, 50);
	cr_assert_eq(s.failed, 0);
	cr_assert_eq(ackbox_loopback_distinct(lb), 50);
	ackbox_destroy(ab);
}

Test(sm, disconnect_mid_stream_resends_in_doubt_without_burning)
{
	seen s = {0};
	ackbox_loopback *lb = ackbox_loopback_get("cut");
	ackbox *ab = NULL;
	{
		/* a retry.timeout no busy machine reaches before the cut: the
		 * dropped confirms must end in doubt, not timed out */
		ackbox_conf *c = ackbox_conf_new();
		char err[512];
		TU_SET(c, "store.url", db_url);
		TU_SET(c, "transport.url", "loopback://cut");
		TU_SET(c, "retry.timeout", "30s");
		TU_SET(c, "retry.max_attempts", "1");
		TU_SET(c, "log.level", "error");
		ackbox_conf_set_report_cb(c, on_report, &s);
		cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	}
	ackbox_loopback_set_default(lb, ACKBOX_LB_DROP, 0); /* confirms never come... */
	for (int i = 0; i < 100; i++)
		publish_one(ab, "x");
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_received(lb) == 100, 5000));
	ackbox_loopback_set_default(lb, ACKBOX_LB_CONFIRM, 0);
	ackbox_loopback_set_up(lb, 0); /* ...the connection dies first */
	cr_assert(TU_WAIT_UNTIL(!ackbox_connected(ab), 5000));
	ackbox_loopback_set_up(lb, 1);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(s.acked, 100);
	cr_assert_eq(s.failed, 0, "in doubt does not burn the only attempt");
	cr_assert_eq(ackbox_loopback_distinct(lb), 100);
	cr_assert_geq(ackbox_loopback_connects(lb), 2);
	ackbox_destroy(ab);
}

Test(sm, reopen_recovers_and_resends_what_was_not_acked)
{
	seen s = {0};
	ackbox_loopback *lb = ackbox_loopback_get("crash");
	/* first life: the broker takes messages but never confirms, and the
	 * lease is long: only recovery at open can make them due again */
	ackbox_loopback_set_default(lb, ACKBOX_LB_DROP, 0);
	ackbox *ab = open_handle("crash", NULL, "retry.timeout", "1h");
	ackbox_id ids[20];
	for (int i = 0; i < 20; i++)
		ids[i] = publish_one(ab, "x");
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_received(lb) == 20, 5000));
	ackbox_destroy(ab);

	ackbox_loopback_set_default(lb, ACKBOX_LB_CONFIRM, 0);
	ab = open_handle("crash", &s, "retry.timeout", "1h");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(s.acked, 20);
	for (int i = 0; i < 20; i++)
		cr_assert_eq(ackbox_loopback_count_id(lb, &ids[i]), 2, "resent with the same id");
	ackbox_destroy(ab);
}

static ackbox_policy drop_policy(const ackbox_report *r, void *opaque)
{
	(void)opaque;
	return r->broker_code == 406 ? ACKBOX_POLICY_DROP : ACKBOX_POLICY_DEFAULT;
}

Test(sm, nack_policy_can_drop)
{
	seen s = {0};
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab;
	char err[256];
	TU_SET(c, "store.url", db_url);
	TU_SET(c, "transport.url", "loopback://policy");
	ackbox_conf_set_report_cb(c, on_report, &s);
	ackbox_conf_set_nack_policy(c, drop_policy, NULL);
	ackbox_loopback_set_default(ackbox_loopback_get("policy"), ACKBOX_LB_NACK, 0);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	publish_one(ab, "x");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(s.dropped, 1);
	cr_assert_eq(s.failed + s.acked, 0);
	ackbox_counts k = counts(ab);
	cr_assert_eq(k.sending + k.retrying + k.failed, 0);
	ackbox_destroy(ab);
}

/* What the policy saw and answers: FAIL on the first nack, or RETRY. */
typedef struct policy_log {
	ackbox_policy answer;
	int calls;
	int attempts_seen[16];
	ackbox_state state_seen;
} policy_log;

static ackbox_policy logging_policy(const ackbox_report *r, void *opaque)
{
	policy_log *p = opaque;
	if (p->calls < 16)
		p->attempts_seen[p->calls] = r->attempts;
	p->calls++;
	p->state_seen = r->state;
	return p->answer;
}

static ackbox *open_with_policy(const char *broker, seen *s, policy_log *p)
{
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab;
	char err[256], url[64];
	snprintf(url, sizeof(url), "loopback://%s", broker);
	TU_SET(c, "store.url", db_url);
	TU_SET(c, "transport.url", url);
	TU_SET(c, "retry.backoff.initial", "10ms");
	TU_SET(c, "retry.backoff.max", "20ms");
	ackbox_conf_set_report_cb(c, on_report, s);
	ackbox_conf_set_nack_policy(c, logging_policy, p);
	ackbox_loopback_set_default(ackbox_loopback_get(broker), ACKBOX_LB_NACK, 0);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	return ab;
}

/* FAIL: FAILED after the first nack, not after retry.max_attempts. */
Test(sm, nack_policy_can_fail_at_once)
{
	seen s = {0};
	policy_log p = {ACKBOX_POLICY_FAIL, 0, {0}, 0};
	ackbox *ab = open_with_policy("policy-fail", &s, &p);
	ackbox_id id = publish_one(ab, "x");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(s.failed, 1);
	cr_assert_eq(s.last_failed.attempts, 1, "failed after one attempt");
	cr_assert_eq(p.calls, 1);
	cr_assert_eq(p.attempts_seen[0], 1, "the policy sees the attempt that failed counted");
	cr_assert_eq(p.state_seen, ACKBOX_MSG_RETRYING);
	cr_assert_eq(ackbox_loopback_count_id(ackbox_loopback_get("policy-fail"), &id), 1);
	cr_assert_eq(counts(ab).failed, 1);
	ackbox_destroy(ab);
}

/* RETRY: resent, but still bounded by retry.max_attempts (3). */
Test(sm, nack_policy_retry_is_bounded_by_max_attempts)
{
	seen s = {0};
	policy_log p = {ACKBOX_POLICY_RETRY, 0, {0}, 0};
	ackbox *ab = open_with_policy("policy-retry", &s, &p);
	ackbox_id id = publish_one(ab, "x");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(s.failed, 1);
	cr_assert_eq(s.last_failed.attempts, 3);
	cr_assert_eq(p.calls, 3, "asked once per failed attempt");
	for (int i = 0; i < 3; i++)
		cr_assert_eq(p.attempts_seen[i], i + 1);
	cr_assert_eq(ackbox_loopback_count_id(ackbox_loopback_get("policy-retry"), &id), 3);
	ackbox_destroy(ab);
}

Test(sm, oversized_and_invalid_messages_are_refused)
{
	ackbox *ab = open_handle("big", NULL, "message.max_bytes", "1000");
	ackbox_msg m = {0};
	char err[256] = "", big[1001];
	memset(big, 'x', sizeof(big));
	m.topic = "t";
	m.payload = big;
	m.payload_len = sizeof(big);
	cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), ACKBOX_ERR_TOO_LARGE);
	cr_assert(strstr(err, "1001") && strstr(err, "1000"), "%s", err);
	m.topic = "";
	m.payload_len = 1;
	cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), ACKBOX_ERR_INVALID);
	cr_assert(strstr(err, "topic"), "%s", err);
	ackbox_counts c = counts(ab);
	cr_assert_eq(c.sending, 0, "nothing stored");
	ackbox_destroy(ab);
}

/* ---- group commit: a store wrapper that counts commits ---- */

static const ackbox_store_ops *real_sqlite;
static int insert_calls, insert_rows;
static pthread_mutex_t count_mtx = PTHREAD_MUTEX_INITIALIZER;

static int counting_insert(void *ctx, const ackbox_store_rec *recs, size_t n, char *e, size_t es)
{
	pthread_mutex_lock(&count_mtx);
	insert_calls++;
	insert_rows += (int)n;
	pthread_mutex_unlock(&count_mtx);
	return real_sqlite->insert(ctx, recs, n, e, es);
}

static ackbox_store_ops counting_ops;
static const char *const counting_scheme = "countsqlite";

struct pub_arg {
	ackbox *ab;
	int n;
	int rc;
};

static void *publisher(void *p)
{
	struct pub_arg *a = p;
	ackbox_msg m = {0};
	char err[256];
	m.topic = "orders";
	m.payload = "0123456789012345678901234567890123456789";
	m.payload_len = 40;
	for (int i = 0; i < a->n; i++)
		if ((a->rc = ackbox_publish(a->ab, &m, NULL, err, sizeof(err))) != 0)
			break;
	return NULL;
}

Test(sm, group_commit_shares_fsyncs_between_threads)
{
	seen s = {0};
	char err[256];
	enum { THREADS = 8, PER = 250 };
	pthread_t th[THREADS];
	struct pub_arg args[THREADS];

	real_sqlite = ackbox_store_lookup("sqlite");
	counting_ops = *real_sqlite;
	counting_ops.scheme = counting_scheme;
	counting_ops.insert = counting_insert;
	cr_assert_eq(ackbox_store_register(&counting_ops, err, sizeof(err)), 0, "%s", err);
	snprintf(db_url, sizeof(db_url), "countsqlite://%s/outbox.db", dir);

	ackbox *ab = open_handle("gc", &s, NULL, NULL);
	for (int i = 0; i < THREADS; i++) {
		args[i] = (struct pub_arg){ab, PER, 0};
		pthread_create(&th[i], NULL, publisher, &args[i]);
	}
	for (int i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		cr_assert_eq(args[i].rc, 0);
	}
	cr_assert_eq(insert_rows, THREADS * PER);
	cr_assert_lt(insert_calls, THREADS * PER,
	             "%d commits for %d publishes: no commit was shared", insert_calls,
	             THREADS * PER);
	cr_assert_eq(ackbox_flush(ab, 20000), 0);
	cr_assert_eq(s.acked, THREADS * PER);
	cr_assert_eq(ackbox_loopback_distinct(ackbox_loopback_get("gc")), THREADS * PER);
	cr_log_info("group commit: %d publishes in %d commits", THREADS * PER, insert_calls);
	ackbox_destroy(ab);
}

Test(sm, batch_publish_is_all_or_nothing)
{
	seen s = {0};
	ackbox *ab = open_handle("batch", &s, "message.max_bytes", "10");
	ackbox_msg m[3] = {{0}};
	ackbox_id ids[3];
	char err[256];
	for (int i = 0; i < 3; i++) {
		m[i].topic = "t";
		m[i].payload = "12345";
		m[i].payload_len = 5;
	}
	m[2].payload = "123456789012";
	m[2].payload_len = 12;
	cr_assert_eq(ackbox_publish_batch(ab, m, 3, ids, err, sizeof(err)), ACKBOX_ERR_TOO_LARGE);
	cr_assert_eq(counts(ab).sending, 0, "none of the batch is stored");
	m[2].payload_len = 5;
	cr_assert_eq(ackbox_publish_batch(ab, m, 3, ids, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(s.acked, 3);
	ackbox_destroy(ab);
}

Test(sm, store_only_handle_leaves_rows_for_a_relay)
{
	seen s = {0};
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab;
	char err[256];
	TU_SET(c, "store.url", db_url);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	ackbox_id id = publish_one(ab, "x");
	cr_assert_eq(counts(ab).sending, 1);
	ackbox_destroy(ab);
	ab = open_handle("relay", &s, NULL, NULL);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(s.acked, 1);
	cr_assert_eq(ackbox_loopback_count_id(ackbox_loopback_get("relay"), &id), 1);
	ackbox_destroy(ab);
}
