/*
 * test_inbox_sqlite.c - the consumer inbox on SQLite (include/ackbox/sqlite.h):
 * FIRST then DUPLICATE, the record rolls back with the caller's transaction,
 * cleanup in batches past the window, and the cost of a record per message.
 */
#include "testutil.h"

#include <sqlite3.h>

#include <ackbox/sqlite.h>

static char *dir;

static sqlite3 *open_db(const char *name)
{
	char path[1200];
	sqlite3 *db;
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	cr_assert_eq(sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL), SQLITE_OK);
	cr_assert_eq(sqlite3_exec(db,
	                          "CREATE TABLE IF NOT EXISTS shipments(order_id INTEGER NOT NULL,"
	                          " msg_id BLOB NOT NULL)",
	                          NULL, NULL, NULL),
	             SQLITE_OK);
	return db;
}

static void exec(sqlite3 *db, const char *sql)
{
	char *msg = NULL;
	int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
	cr_assert_eq(rc, SQLITE_OK, "%s: %s", sql, msg ? msg : "");
}

static long long count(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *s;
	long long n;
	cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &s, NULL), SQLITE_OK, "%s: %s", sql,
	             sqlite3_errmsg(db));
	cr_assert_eq(sqlite3_step(s), SQLITE_ROW);
	n = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	return n;
}

static int record(sqlite3 *db, const char *consumer, const ackbox_id *id)
{
	char err[512] = "";
	int rc = ackbox_sqlite_inbox_record(db, consumer, id, err, sizeof(err));
	cr_assert(rc == ACKBOX_INBOX_FIRST || rc == ACKBOX_INBOX_DUPLICATE, "record: %d %s", rc,
	          err);
	return rc;
}

static void setup(void)
{
	dir = tu_tmpdir("inbox-sqlite");
}

static void teardown(void)
{
	tu_rmrf(dir);
	free(dir);
}

TestSuite(inbox_sqlite, .init = setup, .fini = teardown, .timeout = 120);

Test(inbox_sqlite, first_then_duplicate)
{
	sqlite3 *db = open_db("a.db");
	ackbox_id id, other;
	ackbox_id_new(&id);
	ackbox_id_new(&other);

	exec(db, "BEGIN IMMEDIATE");
	cr_assert_eq(record(db, "shipping", &id), ACKBOX_INBOX_FIRST);
	/* the same transaction sees its own record */
	cr_assert_eq(record(db, "shipping", &id), ACKBOX_INBOX_DUPLICATE);
	exec(db, "COMMIT");

	exec(db, "BEGIN");
	cr_assert_eq(record(db, "shipping", &id), ACKBOX_INBOX_DUPLICATE);
	/* consumers are independent; another id is another message */
	cr_assert_eq(record(db, "billing", &id), ACKBOX_INBOX_FIRST);
	cr_assert_eq(record(db, "shipping", &other), ACKBOX_INBOX_FIRST);
	exec(db, "COMMIT");

	/* a second connection on the file sees the committed records */
	sqlite3 *db2 = open_db("a.db");
	exec(db2, "BEGIN IMMEDIATE");
	cr_assert_eq(record(db2, "shipping", &id), ACKBOX_INBOX_DUPLICATE);
	cr_assert_eq(record(db2, "billing", &other), ACKBOX_INBOX_FIRST);
	exec(db2, "ROLLBACK");
	cr_assert_eq(count(db, "SELECT count(*) FROM ackbox_inbox"), 3);
	sqlite3_close(db2);
	sqlite3_close(db);
}

Test(inbox_sqlite, rollback_of_the_consumer_transaction_forgets_the_record)
{
	sqlite3 *db = open_db("b.db");
	ackbox_id id;
	ackbox_id_new(&id);

	/* the consumer applies its effect, then crashes or fails: rollback */
	exec(db, "BEGIN IMMEDIATE");
	cr_assert_eq(record(db, "shipping", &id), ACKBOX_INBOX_FIRST);
	exec(db, "INSERT INTO shipments VALUES(42, x'00')");
	exec(db, "ROLLBACK");
	cr_assert_eq(count(db, "SELECT count(*) FROM shipments"), 0);

	/* the redelivery is FIRST again, and this time it commits */
	exec(db, "BEGIN IMMEDIATE");
	cr_assert_eq(record(db, "shipping", &id), ACKBOX_INBOX_FIRST);
	exec(db, "INSERT INTO shipments VALUES(42, x'00')");
	exec(db, "COMMIT");
	exec(db, "BEGIN IMMEDIATE");
	cr_assert_eq(record(db, "shipping", &id), ACKBOX_INBOX_DUPLICATE);
	exec(db, "COMMIT");
	cr_assert_eq(count(db, "SELECT count(*) FROM shipments"), 1);

	/* the table made on first use inside a rolled-back transaction is gone
	 * with it, and made again on the next use */
	sqlite3 *fresh = open_db("c.db");
	exec(fresh, "BEGIN IMMEDIATE");
	cr_assert_eq(record(fresh, "shipping", &id), ACKBOX_INBOX_FIRST);
	exec(fresh, "ROLLBACK");
	cr_assert_eq(count(fresh, "SELECT count(*) FROM sqlite_master WHERE name = 'ackbox_inbox'"),
	             0);
	exec(fresh, "BEGIN IMMEDIATE");
	cr_assert_eq(record(fresh, "shipping", &id), ACKBOX_INBOX_FIRST);
	exec(fresh, "COMMIT");
	sqlite3_close(fresh);
	sqlite3_close(db);
}

Test(inbox_sqlite, refuses_to_record_outside_a_transaction)
{
	sqlite3 *db = open_db("d.db");
	ackbox_id id;
	char err[512] = "";
	ackbox_id_new(&id);
	cr_assert_eq(ackbox_sqlite_inbox_install_schema(db, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_sqlite_inbox_record(db, "shipping", &id, err, sizeof(err)),
	             ACKBOX_ERR_INVALID);
	cr_assert(strstr(err, "no transaction is open") != NULL, "%s", err);
	cr_assert_eq(count(db, "SELECT count(*) FROM ackbox_inbox"), 0);
	exec(db, "BEGIN");
	cr_assert_eq(ackbox_sqlite_inbox_record(db, "", &id, err, sizeof(err)), ACKBOX_ERR_INVALID);
	cr_assert_eq(ackbox_sqlite_inbox_record(db, "shipping", NULL, err, sizeof(err)),
	             ACKBOX_ERR_INVALID);
	/* cleanup refuses the other way round: never inside a transaction */
	cr_assert_eq(ackbox_sqlite_inbox_cleanup(db, "shipping", 0, 0, err, sizeof(err)),
	             ACKBOX_ERR_INVALID);
	exec(db, "ROLLBACK");
	sqlite3_close(db);
}

Test(inbox_sqlite, cleanup_deletes_past_the_window_in_batches)
{
	sqlite3 *db = open_db("e.db");
	char err[512] = "";
	enum { N = 2500, OLD = 1500, BATCH = 400 };
	ackbox_id *ids = calloc(N, sizeof(*ids));
	int calls = 0, total = 0, rc;

	/* nothing to clean before the table exists */
	cr_assert_eq(ackbox_sqlite_inbox_cleanup(db, "shipping", 0, BATCH, err, sizeof(err)), 0,
	             "%s", err);
	exec(db, "BEGIN IMMEDIATE");
	for (int i = 0; i < N; i++) {
		ackbox_id_new(&ids[i]);
		cr_assert_eq(record(db, "shipping", &ids[i]), ACKBOX_INBOX_FIRST);
		cr_assert_eq(record(db, "billing", &ids[i]), ACKBOX_INBOX_FIRST);
	}
	exec(db, "COMMIT");
	/* the first OLD records of both consumers were made 8 days ago */
	sqlite3_stmt *s;
	cr_assert_eq(sqlite3_prepare_v2(db,
	                                "UPDATE ackbox_inbox SET seen_ms = seen_ms - 8 * 86400000"
	                                " WHERE id = ?1",
	                                -1, &s, NULL),
	             SQLITE_OK);
	exec(db, "BEGIN IMMEDIATE");
	for (int i = 0; i < OLD; i++) {
		sqlite3_bind_blob(s, 1, ids[i].b, 16, SQLITE_STATIC);
		cr_assert_eq(sqlite3_step(s), SQLITE_DONE);
		sqlite3_reset(s);
	}
	exec(db, "COMMIT");
	sqlite3_finalize(s);

	/* the default window (7 days) takes the old ones of this consumer, at
	 * most BATCH per call, each call its own transaction */
	while ((rc = ackbox_sqlite_inbox_cleanup(db, "shipping", 0, BATCH, err, sizeof(err))) > 0) {
		cr_assert_leq(rc, BATCH);
		cr_assert(sqlite3_get_autocommit(db), "cleanup left a transaction open");
		total += rc;
		calls++;
	}
	cr_assert_eq(rc, 0, "cleanup: %d %s", rc, err);
	cr_assert_eq(total, OLD);
	cr_assert_eq(calls, (OLD + BATCH - 1) / BATCH);
	cr_assert_eq(count(db, "SELECT count(*) FROM ackbox_inbox WHERE consumer = 'shipping'"),
	             N - OLD);
	/* the other consumer's records are its own business */
	cr_assert_eq(count(db, "SELECT count(*) FROM ackbox_inbox WHERE consumer = 'billing'"), N);

	/* past the window a duplicate is no longer recognised; within it, it is */
	exec(db, "BEGIN IMMEDIATE");
	cr_assert_eq(record(db, "shipping", &ids[0]), ACKBOX_INBOX_FIRST);
	cr_assert_eq(record(db, "shipping", &ids[N - 1]), ACKBOX_INBOX_DUPLICATE);
	exec(db, "ROLLBACK");

	/* a shorter window is the caller's choice: 1 day leaves nothing older
	 * than a day, and the recent ones stay */
	cr_assert_eq(ackbox_sqlite_inbox_cleanup(db, "billing", 86400000, 0, err, sizeof(err)),
	             ACKBOX_INBOX_BATCH_DEFAULT, "%s", err);
	cr_assert_eq(ackbox_sqlite_inbox_cleanup(db, "billing", 86400000, 0, err, sizeof(err)),
	             OLD - ACKBOX_INBOX_BATCH_DEFAULT, "%s", err);
	cr_assert_eq(count(db, "SELECT count(*) FROM ackbox_inbox WHERE consumer = 'billing'"),
	             N - OLD);
	free(ids);
	sqlite3_close(db);
}

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* Microseconds per message of n one-message transactions, with or without
 * the inbox record beside the effect; *rec_us gets the time inside the
 * record call alone, per message. */
static double run_transactions(sqlite3 *db, int n, int with_inbox, int base, double *rec_us)
{
	sqlite3_stmt *s;
	ackbox_id id;
	double t0, rec = 0;
	cr_assert_eq(sqlite3_prepare_v2(db, "INSERT INTO shipments VALUES(?1, ?2)", -1, &s, NULL),
	             SQLITE_OK);
	t0 = now_us();
	for (int i = 0; i < n; i++) {
		ackbox_id_new(&id);
		exec(db, "BEGIN IMMEDIATE");
		if (with_inbox) {
			double r0 = now_us();
			cr_assert_eq(record(db, "bench", &id), ACKBOX_INBOX_FIRST);
			rec += now_us() - r0;
		}
		sqlite3_bind_int(s, 1, base + i);
		sqlite3_bind_blob(s, 2, id.b, 16, SQLITE_STATIC);
		cr_assert_eq(sqlite3_step(s), SQLITE_DONE);
		sqlite3_reset(s);
		exec(db, "COMMIT");
	}
	sqlite3_finalize(s);
	if (rec_us)
		*rec_us = rec / n;
	return (now_us() - t0) / n;
}

/* The figure for docs/consumers.md: what the record adds to a consumer's
 * transaction (WAL; synchronous=NORMAL so the commit's fsync does not
 * drown it; with FULL each commit costs one fsync on top, inbox or not).
 * Rounds alternate and the best of each is kept: the machine is shared. */
Test(inbox_sqlite, cost_of_a_record_per_message)
{
	sqlite3 *db = open_db("f.db");
	enum { N = 500, ROUNDS = 5 };
	double best_with = 1e12, best_without = 1e12, best_rec = 1e12, rec;
	exec(db, "PRAGMA synchronous=NORMAL");
	run_transactions(db, 200, 1, 1000000, NULL); /* warm up; creates the table */
	for (int r = 0; r < ROUNDS; r++) {
		double without = run_transactions(db, N, 0, 0, NULL);
		double with = run_transactions(db, N, 1, (r + 1) * N, &rec);
		best_without = without < best_without ? without : best_without;
		best_with = with < best_with ? with : best_with;
		best_rec = rec < best_rec ? rec : best_rec;
	}
	cr_assert_eq(count(db, "SELECT count(*) FROM ackbox_inbox WHERE consumer = 'bench'"),
	             ROUNDS * N + 200);
	printf("inbox cost (sqlite, WAL, synchronous=NORMAL, one message per transaction, best of "
	       "%d x %d): the record call %.1f us; a transaction %.1f us with it, %.1f us without\n",
	       ROUNDS, N, best_rec, best_with, best_without);
	fflush(stdout);
	sqlite3_close(db);
}
