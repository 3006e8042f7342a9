/*
 * test_pg_store.c - the PostgreSQL store as several relays share it: claims
 * by two relays are disjoint, a stale lease is fenced off, recovery never
 * steals a live lease; the transactional entry point commits and rolls back
 * with the application's transaction; unreachable servers, missing
 * privileges and foreign schemas fail clearly; a server restart or crash is
 * survived.
 */
#include "testutil.h"

#include <libpq-fe.h>
#include <pthread.h>
#include <stdarg.h>

#include <ackbox/postgres.h>
#include <ackbox/store.h>

#include "ackbox_loopback.h"

static char pg_url[512];   /* the fixture's server, no schema */
static char schema[64];    /* a schema of this test's own */
static char store_url[1200];

static void setup(void)
{
	static unsigned seq;
	snprintf(pg_url, sizeof(pg_url), "%s", tu_fixture("postgres", "PG_URL"));
	snprintf(schema, sizeof(schema), "t%d_%u_%llx", (int)getpid(), ++seq,
	         (unsigned long long)(ackbox_wall_ms() & 0xffffff));
	snprintf(store_url, sizeof(store_url), "%s?schema=%s", pg_url, schema);
}

static void teardown(void)
{
	ackbox_loopback_reset();
}

TestSuite(pg, .init = setup, .fini = teardown, .timeout = 120);

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

static PGconn *app_connect(const char *url)
{
	PGconn *c = PQconnectdb(url);
	cr_assert_eq(PQstatus(c), CONNECTION_OK, "connect %s: %s", url, PQerrorMessage(c));
	return c;
}

/* Runs SQL (printf-style) and fails the test unless it succeeds. */
__attribute__((format(printf, 2, 3))) static void sql(PGconn *c, const char *fmt, ...)
{
	char q[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(q, sizeof(q), fmt, ap);
	va_end(ap);
	PGresult *r = PQexec(c, q);
	ExecStatusType st = PQresultStatus(r);
	cr_assert(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", q,
	          PQresultErrorMessage(r));
	PQclear(r);
}

/* The ops table driven directly: one instance = one relay. With
 * open_as_sender set, the next open has a transport.url (a relay or a
 * publisher, which may upgrade the outbox), else it is an admin handle. */
static int open_as_sender;

typedef struct inst {
	const ackbox_store_ops *ops;
	void *ctx;
	ackbox_conf *conf;
} inst;

static int inst_open(inst *s, const char *url, const char *relay_id, char *err, size_t errsz)
{
	ackbox_url u;
	int rc;
	memset(s, 0, sizeof(*s));
	s->ops = ackbox_store_lookup("postgres");
	cr_assert(s->ops != NULL, "postgres store not built");
	s->conf = ackbox_conf_new();
	if (relay_id)
		TU_SET(s->conf, "postgres.relay_id", relay_id);
	TU_SET(s->conf, "postgres.connect_timeout", "2s");
	if (open_as_sender)
		TU_SET(s->conf, "transport.url", "loopback://pg");
	cr_assert_eq(ackbox_url_parse(url, &u, err, errsz), 0, "%s", err);
	s->ctx = calloc(1, s->ops->ctx_size);
	rc = s->ops->open(s->ctx, &u, s->conf, ACKBOX_SYNC_FULL, err, errsz);
	ackbox_url_fini(&u);
	if (rc) {
		free(s->ctx);
		ackbox_conf_destroy(s->conf);
		s->ctx = NULL;
	}
	return rc;
}

static void inst_open_ok(inst *s, const char *relay_id)
{
	char err[512] = "";
	int rc = inst_open(s, store_url, relay_id, err, sizeof(err));
	cr_assert_eq(rc, 0, "open %s: %s", store_url, err);
}

static void inst_close(inst *s)
{
	s->ops->close(s->ctx);
	free(s->ctx);
	ackbox_conf_destroy(s->conf);
}

/* Inserts n rows due at due_ms; ids_out (n) gets their ids. */
static void inst_insert(inst *s, int n, int64_t due_ms, ackbox_id *ids_out)
{
	ackbox_store_rec *recs = calloc((size_t)n, sizeof(*recs));
	char err[512] = "";
	int64_t now = ackbox_wall_ms();
	for (int i = 0; i < n; i++) {
		ackbox_id_new(&recs[i].id);
		recs[i].created_ms = now;
		recs[i].due_ms = due_ms;
		recs[i].topic = "orders";
		recs[i].payload = "p";
		recs[i].payload_len = 1;
		if (ids_out)
			ids_out[i] = recs[i].id;
	}
	cr_assert_eq(s->ops->insert(s->ctx, recs, (size_t)n, err, sizeof(err)), 0, "%s", err);
	free(recs);
}

typedef struct claimed {
	ackbox_id *ids;
	uint64_t *leases;
	size_t n, cap;
} claimed;

static int claim_cb(const ackbox_store_row *row, void *opaque)
{
	claimed *c = opaque;
	if (c->n == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 64;
		c->ids = realloc(c->ids, c->cap * sizeof(*c->ids));
		c->leases = realloc(c->leases, c->cap * sizeof(*c->leases));
	}
	c->ids[c->n] = row->id;
	c->leases[c->n] = row->lease;
	c->n++;
	return 0;
}

/* Claims as relay s; the rows go to out if not NULL. */
static int inst_claim(inst *s, int64_t now, int64_t until, size_t limit, claimed *out)
{
	char err[512] = "";
	claimed scratch = {0};
	int n = s->ops->claim(s->ctx, now, until, limit, claim_cb, out ? out : &scratch, err,
	                      sizeof(err));
	free(scratch.ids);
	free(scratch.leases);
	cr_assert_geq(n, 0, "claim: %s", err);
	return n;
}

static void inst_apply1(inst *s, ackbox_change_kind kind, const ackbox_id *id, uint64_t lease)
{
	ackbox_store_change ch = {0};
	char err[512] = "";
	ch.kind = kind;
	ch.id = *id;
	ch.lease = lease;
	ch.attempts = 1;
	ch.due_ms = ackbox_wall_ms();
	ch.last_error = "stale";
	cr_assert_eq(s->ops->apply(s->ctx, &ch, 1, err, sizeof(err)), 0, "apply: %s", err);
}

typedef struct got_row {
	int found;
	ackbox_state state;
	int attempts;
	uint64_t lease;
} got_row;

static int get_cb(const ackbox_store_row *row, void *opaque)
{
	got_row *g = opaque;
	g->found = 1;
	g->state = row->state;
	g->attempts = row->attempts;
	g->lease = row->lease;
	return 0;
}

static got_row inst_get(inst *s, const ackbox_id *id)
{
	got_row g = {0};
	char err[512] = "";
	int rc = s->ops->get(s->ctx, id, get_cb, &g, err, sizeof(err));
	cr_assert(rc == 0 || rc == ACKBOX_ERR_NOT_FOUND, "get: %s", err);
	return g;
}

static int id_cmp(const void *a, const void *b)
{
	return memcmp(a, b, sizeof(ackbox_id));
}

/* Store errors while a test takes the server down are expected: count them. */
static int log_errors;
static void count_log(ackbox_log_level level, const char *component, const char *msg, void *o)
{
	(void)component;
	(void)msg;
	(void)o;
	if (level <= ACKBOX_LOG_ERROR)
		__atomic_add_fetch(&log_errors, 1, __ATOMIC_RELAXED);
}

/* A handle on store_url; transport loopback://broker if broker is set. */
static int handle_open(ackbox **ab, const char *url, const char *broker, ackbox_report_cb cb,
                       void *opaque, char *err, size_t errsz)
{
	ackbox_conf *c = ackbox_conf_new();
	char lb[128];
	int rc;
	TU_SET(c, "store.url", url);
	TU_SET(c, "log.level", "error");
	TU_SET(c, "store.poll_interval", "20ms");
	TU_SET(c, "postgres.connect_timeout", "2s");
	ackbox_conf_set_log_cb(c, count_log, NULL);
	if (broker) {
		snprintf(lb, sizeof(lb), "loopback://%s", broker);
		TU_SET(c, "transport.url", lb);
	}
	if (cb)
		ackbox_conf_set_report_cb(c, cb, opaque);
	rc = ackbox_new(ab, c, err, errsz);
	if (rc)
		ackbox_conf_destroy(c);
	return rc;
}

static ackbox *handle_ok(const char *broker, ackbox_report_cb cb, void *opaque)
{
	ackbox *ab = NULL;
	char err[512] = "";
	int rc = handle_open(&ab, store_url, broker, cb, opaque, err, sizeof(err));
	cr_assert_eq(rc, 0, "ackbox_new(%s): %s", store_url, err);
	return ab;
}

typedef struct acks {
	int n;
	ackbox_id last;
} acks;

static void on_report(const ackbox_report *r, void *opaque)
{
	acks *a = opaque;
	if (r->state == ACKBOX_MSG_ACKED) {
		a->n++;
		a->last = r->id;
	}
}

static void publish_n(ackbox *ab, int n, const char *tag)
{
	ackbox_msg m = {0};
	char err[512], payload[64];
	m.topic = "orders";
	for (int i = 0; i < n; i++) {
		snprintf(payload, sizeof(payload), "%s-%d", tag, i);
		m.payload = payload;
		m.payload_len = strlen(payload);
		cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "publish %s-%d: %s",
		             tag, i, err);
	}
}

/* ------------------------------------------------------------------ */
/* Several relays on one outbox                                         */
/* ------------------------------------------------------------------ */

typedef struct claimer {
	inst s;
	claimed got;
	int64_t now;
} claimer;

static void *claim_loop(void *arg)
{
	claimer *c = arg;
	int empty = 0;
	/* small batches so the two claimers interleave many times */
	while (empty < 3) {
		int n = inst_claim(&c->s, c->now, c->now + 600000, 37, &c->got);
		empty = n == 0 ? empty + 1 : 0;
	}
	return NULL;
}

Test(pg, two_relays_claim_disjoint_rows)
{
	enum { N = 3000 };
	claimer a = {0}, b = {0};
	pthread_t ta, tb;
	ackbox_id *all;
	int64_t now = ackbox_wall_ms();

	inst_open_ok(&a.s, NULL);
	inst_open_ok(&b.s, NULL);
	inst_insert(&a.s, N, now, NULL);
	a.now = b.now = now;
	pthread_create(&ta, NULL, claim_loop, &a);
	pthread_create(&tb, NULL, claim_loop, &b);
	pthread_join(ta, NULL);
	pthread_join(tb, NULL);

	cr_assert_eq(a.got.n + b.got.n, N, "every row claimed once: %zu + %zu", a.got.n, b.got.n);
	cr_assert(a.got.n > 0 && b.got.n > 0, "both relays got work: %zu and %zu", a.got.n,
	          b.got.n);
	all = malloc(N * sizeof(*all));
	memcpy(all, a.got.ids, a.got.n * sizeof(*all));
	memcpy(all + a.got.n, b.got.ids, b.got.n * sizeof(*all));
	qsort(all, N, sizeof(*all), id_cmp);
	for (int i = 1; i < N; i++)
		cr_assert_neq(id_cmp(&all[i - 1], &all[i]), 0, "row %d claimed twice", i);

	/* while the leases hold nobody gets them; once they run out, anybody does */
	cr_assert_eq(inst_claim(&a.s, now + 599999, now + 700000, 100000, NULL), 0);
	cr_assert_eq(inst_claim(&b.s, now + 599999, now + 700000, 100000, NULL), 0);
	claimed again = {0};
	uint64_t max_first = 0;
	for (size_t i = 0; i < a.got.n; i++)
		max_first = a.got.leases[i] > max_first ? a.got.leases[i] : max_first;
	for (size_t i = 0; i < b.got.n; i++)
		max_first = b.got.leases[i] > max_first ? b.got.leases[i] : max_first;
	cr_assert_eq(inst_claim(&b.s, now + 600000, now + 700000, 100000, &again), N);
	for (size_t i = 0; i < again.n; i++)
		cr_assert_gt(again.leases[i], max_first,
		             "a later claim hands out a higher fencing number, never a reused one");
	free(all);
	free(again.ids);
	free(again.leases);
	free(a.got.ids);
	free(a.got.leases);
	free(b.got.ids);
	free(b.got.leases);
	inst_close(&a.s);
	inst_close(&b.s);
}

Test(pg, a_large_insert_is_one_transaction)
{
	enum { N = 12001 }; /* more than two statements' worth of rows */
	inst s;
	ackbox_store_rec *recs = calloc(N, sizeof(*recs));
	char err[512] = "";
	ackbox_counts c;
	int64_t now = ackbox_wall_ms();

	inst_open_ok(&s, NULL);
	for (int i = 0; i < N; i++) {
		ackbox_id_new(&recs[i].id);
		recs[i].created_ms = now;
		recs[i].due_ms = now;
		recs[i].topic = "orders";
		recs[i].payload = "p";
		recs[i].payload_len = 1;
	}
	recs[N - 1].id = recs[0].id; /* the last statement fails: nothing may stay */
	int rc = s.ops->insert(s.ctx, recs, N, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "insert failed") && strstr(err, "23505"), "%s", err);
	cr_assert_eq(s.ops->counts(s.ctx, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.sending, 0, "all or nothing: %llu rows stayed",
	             (unsigned long long)c.sending);
	ackbox_id_new(&recs[N - 1].id);
	cr_assert_eq(s.ops->insert(s.ctx, recs, N, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(s.ops->counts(s.ctx, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.sending, N);
	free(recs);
	inst_close(&s);
}

static int open_create(ackbox **ab, const char *mode, const char *broker, char *err,
                       size_t errsz)
{
	ackbox_conf *c = ackbox_conf_new();
	char lb[128];
	int rc;
	TU_SET(c, "store.url", store_url);
	TU_SET(c, "store.create", mode);
	TU_SET(c, "log.level", "error");
	TU_SET(c, "postgres.connect_timeout", "2s");
	if (broker) {
		snprintf(lb, sizeof(lb), "loopback://%s", broker);
		TU_SET(c, "transport.url", lb);
	}
	rc = ackbox_new(ab, c, err, errsz);
	if (rc)
		ackbox_conf_destroy(c);
	return rc;
}

static int schema_exists(PGconn *app)
{
	char q[256];
	PGresult *r;
	int n;
	snprintf(q, sizeof(q), "SELECT 1 FROM pg_namespace WHERE nspname = '%s'", schema);
	r = PQexec(app, q);
	n = PQntuples(r);
	PQclear(r);
	return n;
}

/* store.create=never (admin tools): a mistyped schema is an error and
 * creates nothing; =insert creates the tables with the first message. */
Test(pg, create_never_and_insert_create_nothing_before_a_message)
{
	PGconn *app = app_connect(pg_url);
	ackbox *ab;
	ackbox_counts c;
	ackbox_msg m = {.topic = "t", .payload = "x", .payload_len = 1};
	char err[512] = "";
	int rc;

	rc = open_create(&ab, "never", NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE_SCHEMA, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "no ackbox outbox") && strstr(err, schema), "%s", err);
	cr_assert_eq(schema_exists(app), 0, "never created the schema");

	cr_assert_eq(open_create(&ab, "insert", "pg-insert", err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_counts_get(ab, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.sending + c.retrying + c.failed, 0);
	cr_assert_eq(ackbox_flush(ab, 1000), 0, "nothing pending");
	cr_assert_eq(schema_exists(app), 0, "opening, reading and relaying created nothing");
	cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(schema_exists(app), 1, "the first message created the outbox");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(ackbox_loopback_received(ackbox_loopback_get("pg-insert")), 1);
	ackbox_destroy(ab);
	cr_assert_eq(open_create(&ab, "never", NULL, err, sizeof(err)), 0, "%s", err);
	ackbox_destroy(ab);
	PQfinish(app);
}

Test(pg, two_handles_deliver_each_message_once)
{
	enum { N = 2000 };
	acks ra = {0}, rb = {0};
	ackbox *admin = handle_ok(NULL, NULL, NULL), *a, *b;
	ackbox_loopback *la = ackbox_loopback_get("relay-a"), *lbb = ackbox_loopback_get("relay-b");

	/* a backlog written by a handle without a relay: due now, in the store only */
	publish_n(admin, N, "backlog");
	ackbox_destroy(admin);
	/* relay a holds its first claim (a window and as much ready behind it)
	 * unconfirmed for 3 s, so that however long relay b takes to start on
	 * a loaded machine, rows are left for it to claim */
	ackbox_loopback_script(la, ACKBOX_LB_CONFIRM, 256, 3000);
	ackbox_loopback_set_default(la, ACKBOX_LB_CONFIRM, 1);
	ackbox_loopback_set_default(lbb, ACKBOX_LB_CONFIRM, 1);
	a = handle_ok("relay-a", on_report, &ra);
	b = handle_ok("relay-b", on_report, &rb);
	cr_assert_eq(ackbox_flush(a, 60000), 0);
	cr_assert_eq(ackbox_flush(b, 60000), 0);
	ackbox_destroy(a);
	ackbox_destroy(b);
	cr_assert_eq(ackbox_loopback_received(la) + ackbox_loopback_received(lbb), N,
	             "sent once in all: %zu + %zu", ackbox_loopback_received(la),
	             ackbox_loopback_received(lbb));
	cr_assert_eq(ackbox_loopback_distinct(la) + ackbox_loopback_distinct(lbb), N);
	cr_assert_eq(ra.n + rb.n, N, "one ACKED report per message: %d + %d", ra.n, rb.n);
	cr_assert(ra.n > 0 && rb.n > 0, "both relays delivered: %d and %d", ra.n, rb.n);
}

/*
 * A relay closed cleanly hands what it held over: its rows become due at
 * close, so the next relay sends them at once, not after retry.timeout
 * (30 s here; it took a whole 10 s default before).
 */
Test(pg, a_closed_relays_rows_go_to_the_next_relay_at_once)
{
	enum { N = 50 };
	acks rb = {0};
	ackbox *a, *b = NULL;
	char err[512] = "";
	ackbox_loopback *la = ackbox_loopback_get("close-a"), *lbb = ackbox_loopback_get("close-b");
	ackbox_conf *c;

	/* relay a's broker never confirms: a holds every message (leased, or in
	 * memory since it inserted them) when it closes */
	ackbox_loopback_set_default(la, ACKBOX_LB_DROP, 0);
	ackbox_loopback_set_default(lbb, ACKBOX_LB_CONFIRM, 0);
	c = ackbox_conf_new();
	TU_SET(c, "store.url", store_url);
	TU_SET(c, "transport.url", "loopback://close-a");
	TU_SET(c, "retry.timeout", "30s");
	TU_SET(c, "log.level", "error");
	cr_assert_eq(ackbox_new(&a, c, err, sizeof(err)), 0, "%s", err);
	publish_n(a, N, "held");
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_received(la) == N, 10000), "a sent them: %zu",
	          ackbox_loopback_received(la));
	ackbox_destroy(a);
	long long t0 = tu_mono_ms();
	cr_assert_eq(handle_open(&b, store_url, "close-b", on_report, &rb, err, sizeof(err)), 0, "%s",
	             err);
	cr_assert_eq(ackbox_flush(b, 10000), 0, "the next relay sends them at once");
	cr_log_info("%d rows a closed relay held, delivered by the next in %lld ms", rb.n,
	            tu_mono_ms() - t0);
	cr_assert_eq(rb.n, N);
	cr_assert_eq(ackbox_loopback_distinct(lbb), N);
	ackbox_destroy(b);
}

Test(pg, a_stale_lease_is_fenced_off)
{
	inst a, b;
	ackbox_id id[2];
	claimed ca = {0}, cb = {0};
	int64_t now = ackbox_wall_ms();
	got_row g;

	inst_open_ok(&a, "relay-a");
	inst_open_ok(&b, "relay-b");
	inst_insert(&a, 2, now, id);
	cr_assert_eq(inst_claim(&a, now, now + 100, 10, &ca), 2);
	/* A stalls past its lease; B claims the rows as due */
	cr_assert_eq(inst_claim(&b, now + 100, now + 600000, 10, &cb), 2);
	cr_assert_gt(cb.leases[0], ca.leases[0], "the new lease has a higher fencing number");
	for (size_t i = 0; i < 2; i++) {
		/* A's late decisions under its stale lease are skipped */
		inst_apply1(&a, ACKBOX_CHANGE_DELETE, &ca.ids[i], ca.leases[i]);
		inst_apply1(&a, ACKBOX_CHANGE_RETRY, &ca.ids[i], ca.leases[i]);
		inst_apply1(&a, ACKBOX_CHANGE_FAIL, &ca.ids[i], ca.leases[i]);
		inst_apply1(&a, ACKBOX_CHANGE_RELEASE, &ca.ids[i], ca.leases[i]);
		/* lease 0 ("never claimed": the inserter's in-memory copy) is stale too */
		inst_apply1(&a, ACKBOX_CHANGE_DELETE, &ca.ids[i], 0);
		g = inst_get(&b, &ca.ids[i]);
		cr_assert(g.found, "a stale delete did not remove the row");
		cr_assert_eq(g.state, ACKBOX_MSG_SENDING, "a stale retry/fail did not change it");
		cr_assert_eq(g.attempts, 0);
	}
	cr_assert_eq(inst_claim(&a, now + 200, now + 300, 10, NULL), 0,
	             "the stale release did not make the rows due");
	/* B's decisions under the live lease apply */
	inst_apply1(&b, ACKBOX_CHANGE_DELETE, &cb.ids[0], cb.leases[0]);
	inst_apply1(&b, ACKBOX_CHANGE_RETRY, &cb.ids[1], cb.leases[1]);
	cr_assert_not(inst_get(&a, &cb.ids[0]).found);
	g = inst_get(&a, &cb.ids[1]);
	cr_assert_eq(g.state, ACKBOX_MSG_RETRYING);
	cr_assert_eq(g.attempts, 1);
	free(ca.ids);
	free(ca.leases);
	free(cb.ids);
	free(cb.leases);
	inst_close(&a);
	inst_close(&b);
}

Test(pg, recovery_never_steals_a_live_lease)
{
	enum { N = 20 };
	inst a, b, a2, d1, d2;
	char err[512] = "";
	int64_t now = ackbox_wall_ms();

	inst_open_ok(&a, "relay-a");
	inst_insert(&a, N / 2, now + 600000, NULL); /* fresh rows, leased to their inserter */
	inst_insert(&a, N / 2, now, NULL);
	cr_assert_eq(inst_claim(&a, now, now + 600000, 100, NULL), N / 2);
	/* another relay starting up leaves A's leases alone */
	inst_open_ok(&b, "relay-b");
	cr_assert_eq(b.ops->recover(b.ctx, now, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(inst_claim(&b, now, now + 1000, 100, NULL), 0, "relay-b stole a live lease");
	/* two handles with default ids are two relays too */
	inst_open_ok(&d1, NULL);
	inst_open_ok(&d2, NULL);
	cr_assert_eq(d2.ops->recover(d2.ctx, now, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(inst_claim(&d2, now, now + 1000, 100, NULL), 0);
	inst_close(&d1);
	inst_close(&d2);
	/* relay-a restarted under its stable id takes its own leases back at once */
	inst_close(&a);
	inst_open_ok(&a2, "relay-a");
	cr_assert_eq(a2.ops->recover(a2.ctx, now, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(inst_claim(&a2, now, now + 1000, 100, NULL), N);
	inst_close(&a2);
	inst_close(&b);
}

/* ------------------------------------------------------------------ */
/* The transactional entry point                                        */
/* ------------------------------------------------------------------ */

Test(pg, transactional_enqueue_commits_and_rolls_back_with_the_app)
{
	PGconn *app = app_connect(pg_url);
	ackbox_msg m = {0};
	ackbox_header h = {"tenant", "acme", 4};
	ackbox_id rolled_back, committed, later;
	char err[512] = "";
	acks r = {0};

	sql(app, "CREATE TABLE public.orders_%s(id serial PRIMARY KEY, item text)", schema);
	m.topic = "orders";
	m.payload = "order created";
	m.payload_len = 13;
	m.headers = &h;
	m.header_count = 1;
	m.content_type = "text/plain";

	/* the first enqueue creates the outbox inside the transaction: it rolls back too */
	sql(app, "BEGIN; INSERT INTO public.orders_%s(item) VALUES('lost')", schema);
	cr_assert_eq(ackbox_pg_enqueue(app, &m, &rolled_back, schema, err, sizeof(err)), 0, "%s",
	             err);
	sql(app, "ROLLBACK");

	sql(app, "BEGIN; INSERT INTO public.orders_%s(item) VALUES('kept')", schema);
	cr_assert_eq(ackbox_pg_enqueue(app, &m, &committed, schema, err, sizeof(err)), 0, "%s", err);
	sql(app, "COMMIT");

	/* a relay on the same schema finds the committed row by itself */
	ackbox *ab = handle_ok("txn", on_report, &r);
	ackbox_loopback *lb = ackbox_loopback_get("txn");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(r.n, 1);
	cr_assert_eq(memcmp(&r.last, &committed, sizeof(committed)), 0);
	cr_assert_eq(ackbox_loopback_count_id(lb, &committed), 1);
	cr_assert_eq(ackbox_loopback_count_id(lb, &rolled_back), 0, "rolled back with the order");
	size_t nh = 0, plen = 64;
	char payload[64];
	cr_assert_eq(ackbox_loopback_message(lb, 0, NULL, NULL, 0, payload, &plen, &nh), 0);
	cr_assert_eq(plen, 13);
	cr_assert_eq(nh, 1, "headers travel with the message");

	/* while the relay runs, a new order's message is picked up too */
	sql(app, "BEGIN; INSERT INTO public.orders_%s(item) VALUES('later')", schema);
	cr_assert_eq(ackbox_pg_enqueue(app, &m, &later, schema, err, sizeof(err)), 0, "%s", err);
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_count_id(lb, &later) == 0, 100),
	          "not visible before COMMIT");
	sql(app, "COMMIT");
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_count_id(lb, &later) == 1, 5000));
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(r.n, 2);
	ackbox_destroy(ab);

	/* in an aborted transaction it refuses with a reason, leaving it to the app */
	sql(app, "BEGIN");
	PQclear(PQexec(app, "SELECT 1/0"));
	cr_assert_eq(ackbox_pg_enqueue(app, &m, NULL, schema, err, sizeof(err)),
	             ACKBOX_ERR_INVALID);
	cr_assert(strstr(err, "aborted"), "%s", err);
	sql(app, "ROLLBACK");
	m.topic = "bad\xff";
	cr_assert_eq(ackbox_pg_enqueue(app, &m, NULL, schema, err, sizeof(err)),
	             ACKBOX_ERR_INVALID);
	cr_assert(strstr(err, "UTF-8"), "%s", err);
	cr_assert_eq(ackbox_pg_enqueue(app, &m, NULL, "no-such;schema", err, sizeof(err)),
	             ACKBOX_ERR_INVALID);
	sql(app, "DROP TABLE public.orders_%s", schema);
	PQfinish(app);
}

/* ------------------------------------------------------------------ */
/* Errors                                                               */
/* ------------------------------------------------------------------ */

Test(pg, unreachable_server_is_a_clear_error)
{
	ackbox *ab = NULL;
	char err[512] = "";
	int rc = handle_open(&ab, "postgres://ackbox@127.0.0.1:1/db", NULL, NULL, NULL, err,
	                     sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE, "rc %d: %s", rc, err);
	cr_assert_null(ab);
	cr_assert(strstr(err, "cannot connect to postgres at 127.0.0.1:1/db"), "%s", err);
	cr_assert(strstr(err, "refused"), "the reason is kept: %s", err);

	rc = handle_open(&ab, "postgresql://ackbox@127.0.0.1:1/db", NULL, NULL, NULL, err,
	                 sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE, "postgresql:// is the same store: %s", err);

	char url[1200];
	snprintf(url, sizeof(url), "%s?schema=x&sslmdoe=require", pg_url);
	rc = handle_open(&ab, url, NULL, NULL, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_BAD_URL, "%s", err);
	cr_assert(strstr(err, "sslmdoe"), "%s", err);
	/* a value libpq refuses before connecting is a malformed URL too */
	snprintf(url, sizeof(url), "%s?connect_timeout=abc", pg_url);
	rc = handle_open(&ab, url, NULL, NULL, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_BAD_URL, "%s", err);
	cr_assert(strstr(err, "store.url: invalid integer value \"abc\""), "%s", err);
	cr_assert(strstr(err, "connect_timeout"), "%s", err);
	snprintf(url, sizeof(url), "%s?sslmode=maybe", pg_url);
	rc = handle_open(&ab, url, NULL, NULL, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_BAD_URL, "%s", err);
	cr_assert(strstr(err, "sslmode"), "%s", err);
	snprintf(url, sizeof(url), "%s?schema=drop%%20table", pg_url);
	rc = handle_open(&ab, url, NULL, NULL, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_BAD_URL, "%s", err);
	cr_assert(strstr(err, "schema"), "%s", err);
	/* a libpq parameter passes through: here the socket directory */
	char sockdir[300];
	snprintf(sockdir, sizeof(sockdir), "%s", tu_fixture("postgres", "PG_FIXTURE_DIR"));
	snprintf(url, sizeof(url), "postgres://ackbox@/ackbox?host=%s&port=%s&schema=%s", sockdir,
	         tu_fixture("postgres", "PG_PORT"), schema);
	rc = handle_open(&ab, url, NULL, NULL, NULL, err, sizeof(err));
	cr_assert_eq(rc, 0, "over the unix socket: %s", err);
	ackbox_destroy(ab);
}

Test(pg, missing_privileges_are_explained)
{
	PGconn *su = app_connect(pg_url);
	char role[80], url[800], err[1024] = "";
	ackbox *ab = NULL;
	int rc;

	snprintf(role, sizeof(role), "lim_%s", schema);
	sql(su, "CREATE ROLE %s LOGIN", role);
	/* store.url names the unprivileged role (the fixture trusts 127.0.0.1) */
	snprintf(url, sizeof(url), "%s?schema=%s", pg_url, schema);
	char *at = strstr(url, "ackbox@");
	cr_assert_not_null(at);
	char rest[800];
	snprintf(rest, sizeof(rest), "%s", at + 6);
	snprintf(at, sizeof(url) - (size_t)(at - url), "%s%s", role, rest);

	/* may not create the schema */
	rc = handle_open(&ab, url, NULL, NULL, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE_READONLY, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "permission denied") && strstr(err, role) &&
	              strstr(err, "creating the outbox tables") && strstr(err, "CREATE"),
	          "%s", err);

	/* an owner set it up; the role may use the schema but not the tables */
	ackbox_destroy(handle_ok(NULL, NULL, NULL));
	sql(su, "GRANT USAGE ON SCHEMA %s TO %s", schema, role);
	rc = handle_open(&ab, url, NULL, NULL, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE_READONLY, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "permission denied for table ackbox_meta") &&
	              strstr(err, "SELECT, INSERT, UPDATE, DELETE"),
	          "%s", err);

	/* with the documented grants it works, without CREATE anywhere (and
	 * without a grant on ackbox_attempt: then without a history) */
	sql(su, "GRANT SELECT ON %s.ackbox_meta TO %s", schema, role);
	sql(su, "GRANT SELECT, INSERT, UPDATE, DELETE ON %s.ackbox_outbox TO %s", schema, role);
	acks r = {0};
	ackbox_conf *c = ackbox_conf_new();
	TU_SET(c, "store.url", url);
	TU_SET(c, "transport.url", "loopback://lim");
	TU_SET(c, "log.level", "error");
	ackbox_conf_set_report_cb(c, on_report, &r);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	publish_n(ab, 5, "lim");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(r.n, 5);
	ackbox_destroy(ab);

	/* a read-only role publishing: a clear error at publish time */
	sql(su, "REVOKE INSERT ON %s.ackbox_outbox FROM %s", schema, role);
	cr_assert_eq(handle_open(&ab, url, NULL, NULL, NULL, err, sizeof(err)), 0, "%s", err);
	ackbox_msg m = {.topic = "orders", .payload = "x", .payload_len = 1};
	rc = ackbox_publish(ab, &m, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE_READONLY, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "permission denied for table ackbox_outbox"), "%s", err);
	ackbox_destroy(ab);
	sql(su, "DROP OWNED BY %s; DROP ROLE %s", role, role);
	PQfinish(su);
}

static int count_note(const ackbox_attempt *a, void *opaque)
{
	(void)a;
	++*(int *)opaque;
	return 0;
}

/* The notes of id through s; fails the test on an error. */
static int notes_of(inst *s, const ackbox_id *id)
{
	char err[512] = "";
	int n = 0, rc = s->ops->history(s->ctx, id, count_note, &n, err, sizeof(err));
	cr_assert_geq(rc, 0, "history: %s", err);
	cr_assert_eq(rc, n);
	return n;
}

static int has_attempt_table(PGconn *su)
{
	char q[200];
	snprintf(q, sizeof(q), "SELECT to_regclass('%s.ackbox_attempt') IS NOT NULL", schema);
	PGresult *r = PQexec(su, q);
	cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(r));
	int have = PQgetvalue(r, 0, 0)[0] == 't';
	PQclear(r);
	return have;
}

/* An outbox an ackbox before the attempt history made (no ackbox_attempt):
 * an admin handle reads "no history yet" and changes nothing; the first
 * relay adds the table, and the admin handle then sees its notes. */
Test(pg, an_outbox_without_the_history_table_is_upgraded_by_a_relay)
{
	PGconn *su = app_connect(pg_url);
	inst admin, relay;
	ackbox_id id;
	ackbox_store_change ch;
	ackbox_attempt note = {ackbox_wall_ms(), ACKBOX_OUTCOME_NACK, 406, "nacked"};
	char err[512] = "";

	inst_open_ok(&admin, NULL);
	inst_insert(&admin, 1, ackbox_wall_ms() + 600000, &id);
	inst_close(&admin);
	sql(su, "DROP TABLE %s.ackbox_attempt", schema);

	inst_open_ok(&admin, NULL);
	cr_assert_eq(notes_of(&admin, &id), 0, "no history yet");
	memset(&ch, 0, sizeof(ch));
	ch.kind = ACKBOX_CHANGE_RETRY;
	ch.id = id;
	ch.attempts = 1;
	ch.due_ms = ackbox_wall_ms() + 600000;
	cr_assert_eq(admin.ops->apply_noted(admin.ctx, &ch, &note, 1, err, sizeof(err)), 0, "%s",
	             err);
	cr_assert_eq(notes_of(&admin, &id), 0, "the note has nowhere to go");
	cr_assert_not(has_attempt_table(su), "an admin handle does not change the schema");

	open_as_sender = 1;
	inst_open_ok(&relay, "hist-relay");
	open_as_sender = 0;
	cr_assert(has_attempt_table(su), "the relay added ackbox_attempt");
	ch.kind = ACKBOX_CHANGE_NOTE;
	cr_assert_eq(relay.ops->apply_noted(relay.ctx, &ch, &note, 1, err, sizeof(err)), 0, "%s",
	             err);
	cr_assert_eq(notes_of(&relay, &id), 1);
	cr_assert_eq(notes_of(&admin, &id), 1, "the admin handle finds the new table");

	/* the admin handle's forced delete takes the history along */
	ch.kind = ACKBOX_CHANGE_DELETE;
	cr_assert_eq(admin.ops->force_noted(admin.ctx, &ch, NULL, ackbox_wall_ms(), err,
	                                    sizeof(err)),
	             1, "%s", err);
	cr_assert_eq(notes_of(&relay, &id), 0);
	inst_close(&relay);
	inst_close(&admin);
	PQfinish(su);
}

Test(pg, foreign_and_newer_schemas_are_refused)
{
	PGconn *su = app_connect(pg_url);
	ackbox *ab = NULL;
	char err[512] = "";

	ackbox_destroy(handle_ok(NULL, NULL, NULL));
	sql(su, "UPDATE %s.ackbox_meta SET value = '99' WHERE key = 'version'", schema);
	cr_assert_eq(handle_open(&ab, store_url, NULL, NULL, NULL, err, sizeof(err)),
	             ACKBOX_ERR_STORE_SCHEMA);
	cr_assert(strstr(err, "99") && strstr(err, "upgrade"), "%s", err);
	sql(su, "UPDATE %s.ackbox_meta SET value = 'billing' WHERE key = 'schema'", schema);
	cr_assert_eq(handle_open(&ab, store_url, NULL, NULL, NULL, err, sizeof(err)),
	             ACKBOX_ERR_STORE_SCHEMA);
	cr_assert(strstr(err, "foreign"), "%s", err);
	/* somebody else's table called ackbox_outbox is not touched */
	sql(su, "CREATE SCHEMA %s_x; CREATE TABLE %s_x.ackbox_outbox(a int)", schema, schema);
	char url[700];
	snprintf(url, sizeof(url), "%s?schema=%s_x", pg_url, schema);
	cr_assert_eq(handle_open(&ab, url, NULL, NULL, NULL, err, sizeof(err)),
	             ACKBOX_ERR_STORE_SCHEMA);
	cr_assert(strstr(err, "not an ackbox outbox"), "%s", err);
	PQfinish(su);
}

Test(pg, invalid_utf8_topic_is_refused_clearly)
{
	ackbox *ab = handle_ok(NULL, NULL, NULL);
	ackbox_msg m = {.topic = "orders\xc3(", .payload = "x", .payload_len = 1};
	char err[512] = "";
	int rc = ackbox_publish(ab, &m, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_INVALID, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "UTF-8"), "%s", err);
	ackbox_destroy(ab);
}

/* ------------------------------------------------------------------ */
/* Outages: a server of this test's own, restarted and killed           */
/* ------------------------------------------------------------------ */

static void fixture(const char *verb, const char *dir)
{
	char cmd[2048];
	snprintf(cmd, sizeof(cmd), "bash '%s' %s '%s' >/dev/null", PG_FIXTURE_SCRIPT, verb, dir);
	cr_assert_eq(system(cmd), 0, "%s", cmd);
}

static void env_get(const char *dir, const char *key, char *out, size_t n)
{
	char path[1200], line[1200];
	size_t kl = strlen(key);
	snprintf(path, sizeof(path), "%s/env", dir);
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f, "%s", path);
	out[0] = '\0';
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, key, kl) == 0 && line[kl] == '=')
			snprintf(out, n, "%.*s", (int)strcspn(line + kl + 1, "\n"), line + kl + 1);
	fclose(f);
}

/* The test's own server, stopped and removed even when an assertion fails. */
static char *own_tmp, own_dir[1100];

static void own_server_fini(void)
{
	if (own_tmp) {
		char cmd[2048];
		snprintf(cmd, sizeof(cmd), "bash '%s' stop '%s' >/dev/null 2>&1", PG_FIXTURE_SCRIPT,
		         own_dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not stop the server in %s\n", own_dir);
		tu_rmrf(own_tmp);
		free(own_tmp);
		own_tmp = NULL;
	}
	teardown();
}

Test(pg, survives_a_server_restart_and_a_crash, .timeout = 150, .fini = own_server_fini)
{
	char url[1200], err[512] = "";
	acks r = {0};
	ackbox *ab;
	ackbox_msg m = {.topic = "orders", .payload = "x", .payload_len = 1};
	int rc;

	own_tmp = tu_tmpdir("pgown");
	snprintf(own_dir, sizeof(own_dir), "%s/pg", own_tmp);
	const char *dir = own_dir;
	fixture("start", dir);
	env_get(dir, "PG_URL", url, sizeof(url));
	strcat(url, "?schema=restart");
	snprintf(store_url, sizeof(store_url), "%s", url);
	ab = handle_ok("restart", on_report, &r);
	publish_n(ab, 10, "before");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(r.n, 10);

	/* a clean restart: the first statement finds the connection dead and reopens it */
	fixture("restart", dir);
	publish_n(ab, 10, "after-restart");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(r.n, 20, "a clean shutdown keeps even asynchronous commits: no duplicate");

	/* a crash: while it is down publish fails clearly, nothing is lost */
	fixture("kill", dir);
	rc = ackbox_publish(ab, &m, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "postgres at 127.0.0.1:") &&
	              (strstr(err, "cannot connect") || strstr(err, "connection lost")),
	          "%s", err);
	fixture("restart", dir);
	publish_n(ab, 10, "after-crash");
	cr_assert_eq(ackbox_flush(ab, 15000), 0);
	/* Deletes commit asynchronously: the crash may lose the last ones, and
	 * those messages are sent again. A duplicate, never a loss. */
	ackbox_loopback *lb = ackbox_loopback_get("restart");
	cr_assert_eq(ackbox_loopback_distinct(lb), 30,
	             "every message published successfully is delivered: %zu distinct",
	             ackbox_loopback_distinct(lb));
	cr_assert_geq(r.n, 30);
	ackbox_destroy(ab);
}

/* ------------------------------------------------------------------ */
/* Per-key order with several relays                                    */
/* ------------------------------------------------------------------ */

#include "ordercheck.h"

static ackbox *ordered_relay(const char *broker)
{
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab = NULL;
	char lb[128], err[512] = "";
	int rc;
	TU_SET(c, "store.url", store_url);
	TU_SET(c, "log.level", "error");
	TU_SET(c, "delivery.order", "key");
	TU_SET(c, "store.poll_interval", "20ms");
	TU_SET(c, "retry.timeout", "1s");
	TU_SET(c, "retry.max_attempts", "1000");
	TU_SET(c, "retry.backoff.initial", "20ms");
	TU_SET(c, "retry.backoff.max", "100ms");
	ackbox_conf_set_log_cb(c, count_log, NULL);
	if (broker) {
		snprintf(lb, sizeof(lb), "loopback://%s", broker);
		TU_SET(c, "transport.url", lb);
	}
	rc = ackbox_new(&ab, c, err, sizeof(err));
	if (rc)
		ackbox_conf_destroy(c);
	cr_assert_eq(rc, 0, "ackbox_new(%s): %s", store_url, err);
	return ab;
}

Test(pg, three_relays_keep_each_keys_first_deliveries_in_order, .timeout = 240)
{
	/* Three relays share the outbox and one (loopback) broker, which nacks
	 * some sends and keeps others without a confirm; a fourth handle
	 * publishes 16 keys x 30 while they run, and one relay stops half-way.
	 * A key is on one relay at a time, so per key the first deliveries are
	 * in publish order whichever relays sent them. */
	enum { KEYS = 16, PER_KEY = 30 };
	ackbox_loopback *lb = ackbox_loopback_get("pgorder");
	ackbox *pub = ordered_relay(NULL), *r[3];
	ackbox_msg m[KEYS];
	char keys[KEYS][16], payloads[KEYS][32], err[512] = "";
	tu_order o;

	for (int i = 0; i < 30; i++) {
		ackbox_loopback_script(lb, ACKBOX_LB_CONFIRM, 9, 0);
		ackbox_loopback_script(lb, ACKBOX_LB_NACK, 1, 0);
		ackbox_loopback_script(lb, ACKBOX_LB_CONFIRM, 9, 0);
		ackbox_loopback_script(lb, i % 4 ? ACKBOX_LB_NACK : ACKBOX_LB_DROP, 1, 0);
	}
	for (int i = 0; i < 3; i++)
		r[i] = ordered_relay("pgorder");
	for (int seq = 0; seq < PER_KEY; seq++) {
		for (int k = 0; k < KEYS; k++) {
			tu_order_texts(k, seq, keys[k], sizeof(keys[k]), payloads[k], sizeof(payloads[k]));
			memset(&m[k], 0, sizeof(m[k]));
			m[k].topic = "orders";
			m[k].key = keys[k];
			m[k].key_len = strlen(keys[k]);
			m[k].payload = payloads[k];
			m[k].payload_len = strlen(payloads[k]);
		}
		cr_assert_eq(ackbox_publish_batch(pub, m, KEYS, NULL, err, sizeof(err)), 0, "%s", err);
		if (seq == PER_KEY / 2) {
			ackbox_destroy(r[1]); /* its leased rows go to the others when they run out */
			r[1] = NULL;
		}
	}
	cr_assert_eq(ackbox_flush(r[0], 120000), 0, "every message confirmed");
	cr_assert_eq(ackbox_flush(r[2], 10000), 0);
	tu_order_init(&o, KEYS);
	for (size_t i = 0, n = ackbox_loopback_received(lb); i < n; i++) {
		char payload[64];
		size_t len = sizeof(payload);
		cr_assert_eq(ackbox_loopback_message(lb, i, NULL, NULL, 0, payload, &len, NULL), 0);
		if (ackbox_loopback_accepted(lb, i) == 1)
			tu_order_see(&o, payload, len);
	}
	cr_assert_eq(o.violations, 0, "%ld first deliveries out of key order; the first: %s",
	             o.violations, o.first_violation);
	cr_assert_eq(tu_order_in_order(&o), KEYS * PER_KEY, "every message arrived");
	ackbox_destroy(r[0]);
	ackbox_destroy(r[2]);
	ackbox_destroy(pub);
}
