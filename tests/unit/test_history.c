/*
 * test_history.c - the attempt history (store ABI 1.6) through the loopback
 * transport and the SQLite store: what each attempt left, kept across a
 * reopen, an operator's fail, the report's view; and a store of ABI 1.5
 * that gets no history call.
 */
#include "testutil.h"

#include <stddef.h>

#include <ackbox/store.h>

#include "ackbox_loopback.h"

static char *dir;
static char db_url[1200];

static void setup(void)
{
	dir = tu_tmpdir("hist");
	snprintf(db_url, sizeof(db_url), "sqlite://%s/outbox.db", dir);
}

static void teardown(void)
{
	tu_rmrf(dir);
	free(dir);
	ackbox_loopback_reset();
}

typedef struct got {
	int failed;
	ackbox_report r;
} got;

static void on_report(const ackbox_report *r, void *opaque)
{
	got *g = opaque;
	if (r->state == ACKBOX_MSG_FAILED) {
		g->failed++;
		g->r = *r;
	}
}

static ackbox *open_at(const char *store, const char *broker, got *g)
{
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab = NULL;
	char url[128], err[512];
	TU_SET(c, "store.url", store);
	if (broker) {
		snprintf(url, sizeof(url), "loopback://%s", broker);
		TU_SET(c, "transport.url", url);
	}
	TU_SET(c, "retry.timeout", "300ms");
	TU_SET(c, "retry.backoff.initial", "10ms");
	TU_SET(c, "retry.backoff.max", "20ms");
	TU_SET(c, "log.level", "error");
	if (g)
		ackbox_conf_set_report_cb(c, on_report, g);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "ackbox_new: %s", err);
	return ab;
}

static ackbox_id publish_one(ackbox *ab)
{
	ackbox_msg m = {0};
	ackbox_id id;
	char err[256];
	m.topic = "orders";
	m.payload = "x";
	m.payload_len = 1;
	cr_assert_eq(ackbox_publish(ab, &m, &id, err, sizeof(err)), 0, "publish: %s", err);
	return id;
}

typedef struct shown {
	int calls, kept;
	size_t n;
	ackbox_attempt a[ACKBOX_HISTORY_MAX];
	char text[ACKBOX_HISTORY_MAX][256];
	ackbox_state state;
} shown;

static int on_show(const ackbox_stored *m, void *opaque)
{
	shown *s = opaque;
	s->calls++;
	s->kept = m->history_kept;
	s->n = m->history_count;
	s->state = m->state;
	for (size_t i = 0; i < m->history_count && i < ACKBOX_HISTORY_MAX; i++) {
		s->a[i] = m->history[i];
		snprintf(s->text[i], sizeof(s->text[i]), "%s", m->history[i].text);
	}
	return 0;
}

static shown show(ackbox *ab, const ackbox_id *id)
{
	shown s;
	char err[256];
	memset(&s, 0, sizeof(s));
	cr_assert_eq(ackbox_show(ab, id, on_show, &s, err, sizeof(err)), 0, "show: %s", err);
	cr_assert_eq(s.calls, 1);
	return s;
}

TestSuite(history, .init = setup, .fini = teardown);

/* Nacked twice, then a broker error with max_attempts 3: FAILED, and three
 * entries, oldest first, with the broker's codes and words. */
Test(history, nacked_twice_then_failed_has_three_entries)
{
	got g = {0};
	int64_t t0 = ackbox_wall_ms();
	ackbox *ab = open_at(db_url, "h3", &g);
	ackbox_loopback *lb = ackbox_loopback_get("h3");
	ackbox_loopback_script(lb, ACKBOX_LB_NACK, 2, 0);
	ackbox_loopback_set_default(lb, ACKBOX_LB_ERROR, 0);
	ackbox_id id = publish_one(ab);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(g.failed, 1);
	/* the report's view */
	cr_assert_eq(g.r.struct_size, sizeof(ackbox_report));
	cr_assert_eq(g.r.attempts, 3);
	cr_assert_eq(g.r.last_outcome, ACKBOX_OUTCOME_ERROR);
	cr_assert_geq(g.r.last_attempt_ms, t0);

	shown s = show(ab, &id);
	cr_assert_eq(s.kept, 1);
	cr_assert_eq(s.state, ACKBOX_MSG_FAILED);
	cr_assert_eq(s.n, 3, "three attempts, got %zu", s.n);
	cr_assert_eq(s.a[0].outcome, ACKBOX_OUTCOME_NACK);
	cr_assert_eq(s.a[1].outcome, ACKBOX_OUTCOME_NACK);
	cr_assert_eq(s.a[2].outcome, ACKBOX_OUTCOME_ERROR);
	cr_assert_eq(s.a[0].code, 406);
	cr_assert_eq(s.a[2].code, 500);
	cr_assert(strstr(s.text[0], "loopback"), "text: %s", s.text[0]);
	for (int i = 0; i < 3; i++) {
		cr_assert_geq(s.a[i].at_ms, t0);
		cr_assert(i == 0 || s.a[i].at_ms >= s.a[i - 1].at_ms, "oldest first");
	}
	ackbox_destroy(ab);

	/* kept across a reopen (an admin handle, no transport) */
	ab = open_at(db_url, NULL, NULL);
	s = show(ab, &id);
	cr_assert_eq(s.n, 3);
	cr_assert_eq(s.a[2].outcome, ACKBOX_OUTCOME_ERROR);

	/* an operator's fail adds an entry; a purge takes the history along */
	char err[256];
	cr_assert_eq(ackbox_fail(ab, &id, "stuck, see ticket 42", err, sizeof(err)), 1, "%s", err);
	s = show(ab, &id);
	cr_assert_eq(s.n, 4);
	cr_assert_eq(s.a[3].outcome, ACKBOX_OUTCOME_OPERATOR);
	cr_assert_str_eq(s.text[3], "stuck, see ticket 42");
	ackbox_destroy(ab);
}

/* An attempt lost in doubt changes no row but is in the history, and the
 * history keeps the last ACKBOX_HISTORY_MAX only. */
Test(history, in_doubt_is_noted_and_the_history_is_trimmed)
{
	got g = {0};
	ackbox_conf *c;
	ackbox *ab;
	char err[256];
	ackbox_loopback *lb = ackbox_loopback_get("hd");
	ackbox_loopback_script(lb, ACKBOX_LB_IN_DOUBT, 1, 0);
	ackbox_loopback_set_default(lb, ACKBOX_LB_NACK, 0);
	c = ackbox_conf_new();
	TU_SET(c, "store.url", db_url);
	TU_SET(c, "transport.url", "loopback://hd");
	TU_SET(c, "retry.max_attempts", "20");
	TU_SET(c, "retry.backoff.initial", "2ms");
	TU_SET(c, "retry.backoff.max", "4ms");
	TU_SET(c, "log.level", "error");
	ackbox_conf_set_report_cb(c, on_report, &g);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	ackbox_id id = publish_one(ab);
	/* first the in-doubt attempt, then 20 nacks: 21 entries, 16 kept */
	cr_assert_eq(ackbox_flush(ab, 20000), 0);
	cr_assert_eq(g.failed, 1);
	cr_assert_eq(g.r.attempts, 20);
	shown s = show(ab, &id);
	cr_assert_eq(s.n, ACKBOX_HISTORY_MAX);
	for (size_t i = 0; i < s.n; i++)
		cr_assert_eq(s.a[i].outcome, ACKBOX_OUTCOME_NACK, "the in-doubt entry was trimmed");
	ackbox_destroy(ab);

	/* a message in doubt once and then acked leaves no history behind */
	ackbox_loopback_reset();
	lb = ackbox_loopback_get("hd2");
	ackbox_loopback_script(lb, ACKBOX_LB_IN_DOUBT, 1, 0);
	ab = open_at(db_url, "hd2", NULL);
	ackbox_id id2 = publish_one(ab);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(ackbox_loopback_count_id(lb, &id2), 2);
	s.calls = 0;
	cr_assert_eq(ackbox_show(ab, &id2, on_show, &s, err, sizeof(err)), ACKBOX_ERR_NOT_FOUND);
	ackbox_destroy(ab);
}

/* ---- a store of ABI 1.5: the SQLite store without the history slots ---- */

static const ackbox_store_ops *real;
static int trapped;

static int trap_apply_noted(void *ctx, const ackbox_store_change *ch, const ackbox_attempt *notes,
                            size_t n, char *errstr, size_t errstr_size)
{
	(void)ctx, (void)ch, (void)notes, (void)n, (void)errstr, (void)errstr_size;
	trapped++;
	return ACKBOX_ERR_INTERNAL;
}

static int trap_force_noted(void *ctx, const ackbox_store_change *c, const ackbox_attempt *note,
                            int64_t now_ms, char *errstr, size_t errstr_size)
{
	(void)ctx, (void)c, (void)note, (void)now_ms, (void)errstr, (void)errstr_size;
	trapped++;
	return ACKBOX_ERR_INTERNAL;
}

static int trap_history(void *ctx, const ackbox_id *id, ackbox_store_attempt_cb cb, void *opaque,
                        char *errstr, size_t errstr_size)
{
	(void)ctx, (void)id, (void)cb, (void)opaque, (void)errstr, (void)errstr_size;
	trapped++;
	return ACKBOX_ERR_INTERNAL;
}

Test(history, a_1_5_store_gets_no_history_call)
{
	static ackbox_store_ops old;
	static const char *const no_alias[] = {NULL};
	char err[512], url[1300];
	got g = {0};
	real = ackbox_store_lookup("sqlite");
	cr_assert(real);
	old = *real;
	old.abi_version = ACKBOX_ABI_VERSION(1, 5);
	/* the table as a 1.5 header made it; the traps lie past its end */
	old.struct_size =
	    (uint32_t)(offsetof(ackbox_store_ops, blocked_keys) + sizeof(old.blocked_keys));
	old.scheme = "sqlite15";
	old.aliases = no_alias;
	old.apply_noted = trap_apply_noted;
	old.force_noted = trap_force_noted;
	old.history = trap_history;
	cr_assert_eq(ackbox_store_register(&old, err, sizeof(err)), 0, "%s", err);
	snprintf(url, sizeof(url), "sqlite15://%s/old.db", dir);

	ackbox *ab = open_at(url, "old", &g);
	ackbox_loopback *lb = ackbox_loopback_get("old");
	ackbox_loopback_set_default(lb, ACKBOX_LB_NACK, 0);
	ackbox_id id = publish_one(ab);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(g.failed, 1);
	cr_assert_eq(g.r.last_outcome, ACKBOX_OUTCOME_NACK, "the report's view needs no store");
	shown s = show(ab, &id);
	cr_assert_eq(s.kept, 0, "history not kept by a 1.5 store");
	cr_assert_eq(s.n, 0);
	cr_assert_eq(ackbox_fail(ab, &id, "op", err, sizeof(err)), 1, "%s", err);
	cr_assert_eq(trapped, 0, "no slot past 1.5 was called");
	ackbox_destroy(ab);
}
