/*
 * test_corrupt_rows.c - stored rows whose bytes were damaged after they were
 * written, in each store: a truncated payload, a header blob that does not
 * parse, and store-specific damage (SQLite and Redis: a packed batch cut
 * short or garbled; Redis: a state field that does not parse). Each damaged
 * message must end FAILED with a reason naming the damage, never be sent,
 * and the relay must deliver every other message. Through the public API with the loopback transport;
 * the damage is done with the store's own client (sqlite3, hiredis, libpq).
 *
 * Built once per store: CORRUPT_STORE is 1 (SQLite), 2 (Redis) or 3
 * (PostgreSQL, its fixture's database, a schema per test).
 */
/* tu_fixture() copies a line of up to 1200 bytes into its 1024-byte value
 * (testutil.h); inlined here, GCC sees that. Fixture values are short. */
#pragma GCC diagnostic ignored "-Wformat-truncation"
#include "testutil.h"

#include "ackbox_loopback.h"

#if CORRUPT_STORE == 1
#include <sqlite3.h>
#elif CORRUPT_STORE == 2
#include <hiredis/hiredis.h>
#elif CORRUPT_STORE == 3
#include <libpq-fe.h>
#endif

static char url[2048];
static char unique[64];
static char *dir;

static void setup(void)
{
	snprintf(unique, sizeof(unique), "corrupt_%llx_%x", (unsigned long long)tu_wall_ms(),
	         (unsigned)getpid());
#if CORRUPT_STORE == 1
	dir = tu_tmpdir("corrupt");
	snprintf(url, sizeof(url), "sqlite://%s/outbox.db", dir);
#elif CORRUPT_STORE == 2
	snprintf(url, sizeof(url), "%s/0?prefix=%s", tu_fixture("redis", "REDIS_URL"), unique);
#else
	snprintf(url, sizeof(url), "%s?schema=%s", tu_fixture("postgres", "PG_URL"), unique);
#endif
}

static void teardown(void)
{
	if (dir) {
		tu_rmrf(dir);
		free(dir);
		dir = NULL;
	}
	ackbox_loopback_reset();
}

TestSuite(corrupt, .init = setup, .fini = teardown, .timeout = 120);

/* ---- damaging a stored message with the store's own client ---- */

#if CORRUPT_STORE == 1
static void sql(const char *stmt, const ackbox_id *id)
{
	char path[1100];
	sqlite3 *db;
	sqlite3_stmt *s;
	snprintf(path, sizeof(path), "%s/outbox.db", dir);
	cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
	cr_assert_eq(sqlite3_prepare_v2(db, stmt, -1, &s, NULL), SQLITE_OK, "%s: %s", stmt,
	             sqlite3_errmsg(db));
	if (id)
		sqlite3_bind_blob(s, 1, id->b, 16, SQLITE_STATIC);
	cr_assert_eq(sqlite3_step(s), SQLITE_DONE, "%s: %s", stmt, sqlite3_errmsg(db));
	cr_assert_eq(sqlite3_changes(db), 1, "%s changed %d rows", stmt, sqlite3_changes(db));
	sqlite3_finalize(s);
	sqlite3_close(db);
}

static void cut_payload(const ackbox_id *id)
{
	sql("UPDATE ackbox_outbox SET payload = substr(payload, 1, 10) WHERE id = ?1", id);
}

static void garble_headers(const ackbox_id *id)
{
	sql("UPDATE ackbox_outbox SET headers = x'ff0102' WHERE id = ?1", id);
}
#elif CORRUPT_STORE == 2
static void redis_cmd(const char *fmt, const ackbox_id *id, const char *value, size_t len)
{
	char text[ACKBOX_ID_STRLEN];
	redisContext *r = redisConnect("127.0.0.1", atoi(tu_fixture("redis", "REDIS_PORT")));
	cr_assert(r && !r->err, "redis: %s", r ? r->errstr : "out of memory");
	ackbox_id_format(id, text);
	redisReply *rep = redisCommand(r, fmt, unique, text, value, len);
	cr_assert(rep && rep->type == REDIS_REPLY_INTEGER, "redis: %s",
	          rep && rep->type == REDIS_REPLY_ERROR ? rep->str : "no reply");
	freeReplyObject(rep);
	redisFree(r);
}

static void cut_payload(const ackbox_id *id)
{
	redis_cmd("HSET {%s}:m:%s payload %b", id, "0123456789", 10);
}

static void garble_headers(const ackbox_id *id)
{
	redis_cmd("HSET {%s}:m:%s headers %b", id, "\xff\x01\x02", 3);
}

static void garble_state(const ackbox_id *id)
{
	redis_cmd("HSET {%s}:m:%s state %b", id, "x", 1);
}
#else
static void sql(const char *stmt, const ackbox_id *id)
{
	char text[ACKBOX_ID_STRLEN], full[512];
	const char *vals[1] = {text};
	PGconn *c = PQconnectdb(tu_fixture("postgres", "PG_URL"));
	cr_assert_eq(PQstatus(c), CONNECTION_OK, "postgres: %s", PQerrorMessage(c));
	ackbox_id_format(id, text);
	snprintf(full, sizeof(full), stmt, unique);
	PGresult *r = PQexecParams(c, full, 1, NULL, vals, NULL, NULL, 0);
	cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s: %s", full, PQerrorMessage(c));
	cr_assert_str_eq(PQcmdTuples(r), "1", "%s changed %s rows", full, PQcmdTuples(r));
	PQclear(r);
	PQfinish(c);
}

static void cut_payload(const ackbox_id *id)
{
	sql("UPDATE \"%s\".ackbox_outbox SET payload = substring(payload from 1 for 10)"
	    " WHERE id = $1::uuid",
	    id);
}

static void garble_headers(const ackbox_id *id)
{
	sql("UPDATE \"%s\".ackbox_outbox SET headers = '\\xff0102'::bytea WHERE id = $1::uuid", id);
}
#endif

/* ---- the handle ---- */

typedef struct seen {
	int acked, failed;
} seen;

static void on_report(const ackbox_report *r, void *o)
{
	seen *s = o;
	if (r->state == ACKBOX_MSG_ACKED)
		s->acked++;
	else
		s->failed++;
}

/* A handle on the store through loopback broker `broker`; retry.timeout is
 * also the lease a claim takes (PostgreSQL: another relay waits it out). */
static ackbox *open_handle(const char *broker, seen *s, const char *retry_timeout)
{
	ackbox *ab;
	char err[512], lb[128];
	ackbox_conf *c = ackbox_conf_new();
	snprintf(lb, sizeof(lb), "loopback://%s", broker);
	TU_SET(c, "store.url", url);
	TU_SET(c, "transport.url", lb);
	TU_SET(c, "retry.timeout", retry_timeout);
	TU_SET(c, "log.level", "error");
	if (s)
		ackbox_conf_set_report_cb(c, on_report, s);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	return ab;
}

/*
 * Stores n messages in one transaction (n >= 4 in SQLite: a packed batch)
 * and leaves them unconfirmed in the store: the broker takes them and never
 * confirms, and the handle closes. Payloads are "i xxx..." (32 bytes); the
 * message at `with_header` (or none if < 0) carries a header.
 */
static void store_unsent(ackbox_id *ids, size_t n, int with_header)
{
	ackbox_loopback *lb = ackbox_loopback_get("silent");
	ackbox_loopback_set_default(lb, ACKBOX_LB_DROP, 0);
	/* the handle is gone well before 1 s: nothing times out meanwhile */
	ackbox *ab = open_handle("silent", NULL, "1s");
	ackbox_msg m[8];
	char pay[8][32], err[512];
	static const ackbox_header h = {"order-kind", "retail", 6};
	cr_assert_leq(n, 8);
	for (size_t i = 0; i < n; i++) {
		memset(pay[i], 'x', sizeof(pay[i]));
		pay[i][snprintf(pay[i], sizeof(pay[i]), "%zu ", i)] = 'x';
		m[i] = (ackbox_msg){.topic = "orders", .payload = pay[i], .payload_len = 32};
		if ((int)i == with_header) {
			m[i].headers = &h;
			m[i].header_count = 1;
		}
	}
	cr_assert_eq(ackbox_publish_batch(ab, m, n, ids, err, sizeof(err)), 0, "%s", err);
	TU_WAIT_UNTIL(ackbox_loopback_received(lb) >= n, 10000);
	ackbox_destroy(ab);
}

/* One message per transaction (rows, never packed). */
static void store_unsent_rows(ackbox_id *ids, size_t n, int with_header)
{
	for (size_t i = 0; i < n; i++)
		store_unsent(&ids[i], 1, (int)i == with_header ? 0 : -1);
}

typedef struct failed_row {
	ackbox_id id;
	char reason[512];
	int found;
} failed_row;

static int find_failed(const ackbox_stored *m, void *o)
{
	failed_row *f = o;
	if (memcmp(&m->id, &f->id, sizeof(m->id)) == 0) {
		f->found = 1;
		snprintf(f->reason, sizeof(f->reason), "%s", m->last_error ? m->last_error : "");
	}
	return 0;
}

/* Asserts that id is FAILED with a reason holding `words`. */
static void assert_failed(ackbox *ab, const ackbox_id *id, const char *words)
{
	failed_row f = {.id = *id};
	char err[512], text[ACKBOX_ID_STRLEN];
	ackbox_id_format(id, text);
	cr_assert_geq(ackbox_list(ab, ACKBOX_MSG_FAILED, 0, find_failed, &f, err, sizeof(err)), 0,
	              "%s", err);
	cr_assert(f.found, "message %s is not FAILED", text);
	cr_assert(strstr(f.reason, words), "message %s: reason '%s' does not say '%s'", text,
	          f.reason, words);
}

/* Relays what the store holds to a broker that confirms everything, until
 * nothing is pending; returns the handle (and the broker in *lbp). */
static ackbox *relay_all(seen *s, ackbox_loopback **lbp)
{
	ackbox_loopback *lb = ackbox_loopback_get("good");
	ackbox *ab = open_handle("good", s, "10s");
	cr_assert_eq(ackbox_flush(ab, 30000), 0, "the relay did not get through the store");
	*lbp = lb;
	return ab;
}

static void assert_counts(ackbox *ab, uint64_t failed)
{
	ackbox_counts k;
	char err[512];
	cr_assert_eq(ackbox_counts_get(ab, &k, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(k.sending, 0, "%llu still sending", (unsigned long long)k.sending);
	cr_assert_eq(k.retrying, 0, "%llu still retrying", (unsigned long long)k.retrying);
	cr_assert_eq(k.failed, failed, "%llu FAILED, want %llu", (unsigned long long)k.failed,
	             (unsigned long long)failed);
}

Test(corrupt, truncated_payload_and_bad_headers_fail_alone_the_rest_is_delivered)
{
	ackbox_id ids[4];
	seen s = {0};
	ackbox_loopback *lb;
	store_unsent_rows(ids, 4, 1);
	cut_payload(&ids[0]);
	garble_headers(&ids[1]);
	ackbox *ab = relay_all(&s, &lb);
	/* the store fails the truncated row itself: the core never sees it */
	assert_failed(ab, &ids[0], "truncated");
	/* the core fails headers that do not parse */
	assert_failed(ab, &ids[1], "stored headers are corrupt");
	cr_assert_eq(ackbox_loopback_count_id(lb, &ids[0]), 0, "a damaged message was sent");
	cr_assert_eq(ackbox_loopback_count_id(lb, &ids[1]), 0, "a damaged message was sent");
	cr_assert_eq(ackbox_loopback_count_id(lb, &ids[2]), 1);
	cr_assert_eq(ackbox_loopback_count_id(lb, &ids[3]), 1);
	assert_counts(ab, 2);
	ackbox_destroy(ab);
}

Test(corrupt, a_requeued_damaged_row_fails_again)
{
	ackbox_id ids[2];
	seen s = {0};
	ackbox_loopback *lb;
	char err[512];
	store_unsent_rows(ids, 2, -1);
	cut_payload(&ids[0]);
	ackbox *ab = relay_all(&s, &lb);
	assert_failed(ab, &ids[0], "truncated");
	/* an operator requeues it: its bytes are still damaged */
	cr_assert_eq(ackbox_requeue(ab, &ids[0], 1, err, sizeof(err)), 1, "%s", err);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	assert_failed(ab, &ids[0], "truncated");
	cr_assert_eq(ackbox_loopback_count_id(lb, &ids[0]), 0);
	cr_assert_eq(ackbox_loopback_count_id(lb, &ids[1]), 1);
	ackbox_destroy(ab);
}

#if CORRUPT_STORE == 1
/* Cuts the one packed batch to its first `keep` bytes, or by `drop` bytes. */
static void cut_batch(int keep, int drop)
{
	char stmt[160];
	if (keep > 0)
		snprintf(stmt, sizeof(stmt), "UPDATE ackbox_batch SET data = substr(data, 1, %d)", keep);
	else
		snprintf(stmt, sizeof(stmt),
		         "UPDATE ackbox_batch SET data = substr(data, 1, length(data) - %d)", drop);
	sql(stmt, NULL);
}

/* A member: 44 bytes of header, the topic ("orders"), the 32-byte payload. */
#define MEMBER_BYTES (44 + 6 + 32)

Test(corrupt, packed_batch_cut_in_its_last_payload_fails_that_member)
{
	ackbox_id ids[6];
	seen s = {0};
	ackbox_loopback *lb;
	store_unsent(ids, 6, -1);
	cut_batch(0, 20);
	ackbox *ab = relay_all(&s, &lb);
	assert_failed(ab, &ids[5], "member 6 of 6 of packed batch");
	assert_failed(ab, &ids[5], "truncated");
	for (int i = 0; i < 5; i++)
		cr_assert_eq(ackbox_loopback_count_id(lb, &ids[i]), 1, "member %d", i + 1);
	cr_assert_eq(ackbox_loopback_count_id(lb, &ids[5]), 0);
	assert_counts(ab, 1);
	ackbox_destroy(ab);
}

Test(corrupt, packed_batch_cut_mid_member_fails_it_and_the_rest_is_unreadable)
{
	ackbox_id ids[6];
	seen s = {0};
	ackbox_loopback *lb;
	store_unsent(ids, 6, -1);
	/* member 3's header and topic are whole, its payload is cut; members 4-6
	 * are gone with the damage */
	cut_batch(2 * MEMBER_BYTES + 44 + 6 + 5, 0);
	ackbox *ab = relay_all(&s, &lb);
	assert_failed(ab, &ids[2], "member 3 of 6");
	assert_failed(ab, &ids[2], "the members after it in the batch are unreadable");
	cr_assert_eq(ackbox_loopback_count_id(lb, &ids[0]), 1);
	cr_assert_eq(ackbox_loopback_count_id(lb, &ids[1]), 1);
	for (int i = 2; i < 6; i++)
		cr_assert_eq(ackbox_loopback_count_id(lb, &ids[i]), 0, "member %d was sent", i + 1);
	/* nothing left pending: the batch row is gone */
	assert_counts(ab, 1);
	ackbox_destroy(ab);
}
#endif

#if CORRUPT_STORE == 2
/* Runs `lua` with KEYS[1] the test's one packed batch ({P}:b:1); it returns 1. */
static void batch_eval(const char *lua)
{
	redisContext *r = redisConnect("127.0.0.1", atoi(tu_fixture("redis", "REDIS_PORT")));
	char key[128];
	cr_assert(r && !r->err, "redis: %s", r ? r->errstr : "out of memory");
	snprintf(key, sizeof(key), "{%s}:b:1", unique);
	redisReply *rep = redisCommand(r, "EVAL %s 1 %s", lua, key);
	cr_assert(rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1, "redis: %s",
	          rep && rep->str ? rep->str : "no batch {P}:b:1 (was it packed?)");
	freeReplyObject(rep);
	redisFree(r);
}

Test(corrupt, packed_batch_cut_in_its_last_payload_fails_that_member)
{
	ackbox_id ids[6];
	seen s = {0};
	ackbox_loopback *lb;
	store_unsent(ids, 6, -1);
	batch_eval("local d = redis.call('HGET', KEYS[1], 'data')\n"
	           "if not d then return 0 end\n"
	           "redis.call('HSET', KEYS[1], 'data', string.sub(d, 1, #d - 20))\n"
	           "return 1");
	ackbox *ab = relay_all(&s, &lb);
	assert_failed(ab, &ids[5], "member 6 of 6 of packed batch 1 does not parse");
	for (int i = 0; i < 5; i++)
		cr_assert_eq(ackbox_loopback_count_id(lb, &ids[i]), 1, "member %d", i + 1);
	cr_assert_eq(ackbox_loopback_count_id(lb, &ids[5]), 0);
	assert_counts(ab, 1);
	ackbox_destroy(ab);
}

static int count_cb(const ackbox_stored *m, void *o)
{
	(void)m;
	(*(int *)o)++;
	return 0;
}

/* Listing and showing read a packed batch where it is: a damaged one is
 * listed up to the damage, and showing a member past it names the batch. */
Test(corrupt, a_damaged_packed_batch_is_listed_up_to_the_damage)
{
	ackbox_id ids[6];
	ackbox *ab;
	ackbox_conf *c = ackbox_conf_new();
	char err[512] = "";
	int n = 0, shown = 0;
	store_unsent(ids, 6, -1);
	batch_eval("local d = redis.call('HGET', KEYS[1], 'data')\n"
	           "if not d then return 0 end\n"
	           "redis.call('HSET', KEYS[1], 'data', string.sub(d, 1, #d - 20))\n"
	           "return 1");
	TU_SET(c, "store.url", url); /* no transport: an operator's handle */
	TU_SET(c, "log.level", "error");
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_list(ab, -1, 0, count_cb, &n, err, sizeof(err)), 5, "%s", err);
	cr_assert_eq(n, 5, "the five readable members are listed");
	cr_assert_eq(ackbox_show(ab, &ids[2], count_cb, &shown, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(shown, 1);
	cr_assert_eq(ackbox_show(ab, &ids[5], count_cb, &shown, err, sizeof(err)),
	             ACKBOX_ERR_STORE_CORRUPT);
	cr_assert(strstr(err, "packed batch 1 is damaged"), "%s", err);
	ackbox_destroy(ab);
	batch_eval("return redis.call('EXISTS', KEYS[1])"); /* still packed: nothing was written */
}

Test(corrupt, packed_batch_that_does_not_parse_fails_every_member_by_its_id)
{
	ackbox_id ids[6];
	seen s = {0};
	ackbox_loopback *lb;
	store_unsent(ids, 6, -1);
	batch_eval("if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
	           "redis.call('HSET', KEYS[1], 'data', 'not a batch')\n"
	           "return 1");
	ackbox *ab = relay_all(&s, &lb);
	assert_failed(ab, &ids[0], "member 1 of 6 of packed batch 1 does not parse");
	for (int i = 1; i < 6; i++)
		assert_failed(ab, &ids[i], "cannot be read past the damage at member 1");
	for (int i = 0; i < 6; i++)
		cr_assert_eq(ackbox_loopback_count_id(lb, &ids[i]), 0, "member %d was sent", i + 1);
	assert_counts(ab, 6);
	ackbox_destroy(ab);
}

Test(corrupt, packed_batch_with_damaged_ids_is_read_by_the_ids_in_its_members)
{
	ackbox_id ids[6];
	seen s = {0};
	ackbox_loopback *lb;
	store_unsent(ids, 6, -1);
	batch_eval("if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
	           "redis.call('HSET', KEYS[1], 'ids', 'cut')\n"
	           "return 1");
	ackbox *ab = relay_all(&s, &lb);
	for (int i = 0; i < 6; i++)
		cr_assert_eq(ackbox_loopback_count_id(lb, &ids[i]), 1, "member %d", i + 1);
	assert_counts(ab, 0);
	ackbox_destroy(ab);
}

Test(corrupt, a_state_that_does_not_parse_fails_the_message)
{
	ackbox_id ids[3];
	seen s = {0};
	ackbox_loopback *lb;
	store_unsent_rows(ids, 3, -1);
	garble_state(&ids[1]);
	ackbox *ab = relay_all(&s, &lb);
	assert_failed(ab, &ids[1], "the state does not parse");
	cr_assert_eq(ackbox_loopback_count_id(lb, &ids[1]), 0);
	cr_assert_eq(ackbox_loopback_count_id(lb, &ids[0]), 1);
	cr_assert_eq(ackbox_loopback_count_id(lb, &ids[2]), 1);
	assert_counts(ab, 1);
	ackbox_destroy(ab);
}
#endif
