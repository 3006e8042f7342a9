/*
 * test_sqlite_store.c - the SQLite store: survives reopen, refuses corrupt,
 * foreign, newer, read-only and locked files with a clear error and without
 * losing what it holds; the transactional entry point commits and rolls
 * back with the application's own transaction.
 */
#include "testutil.h"

#include <sqlite3.h>
#include <sys/wait.h>

#include <ackbox/sqlite.h>

#include "ackbox_loopback.h"

static char *dir;
static char path[1100], db_url[1200];

static void setup(void)
{
	dir = tu_tmpdir("sq");
	snprintf(path, sizeof(path), "%s/outbox.db", dir);
	snprintf(db_url, sizeof(db_url), "sqlite://%s", path);
}

static void teardown(void)
{
	tu_rmrf(dir);
	free(dir);
	ackbox_loopback_reset();
}

TestSuite(sqlite, .init = setup, .fini = teardown);

static int open_store(ackbox **ab, const char *transport, char *err, size_t errsz)
{
	ackbox_conf *c = ackbox_conf_new();
	int rc;
	TU_SET(c, "store.url", db_url);
	TU_SET(c, "sqlite.busy_timeout", "200ms");
	TU_SET(c, "log.level", "error");
	if (transport)
		TU_SET(c, "transport.url", transport);
	rc = ackbox_new(ab, c, err, errsz);
	if (rc)
		ackbox_conf_destroy(c);
	return rc;
}

static void publish_n(ackbox *ab, int n)
{
	ackbox_msg m = {0};
	char err[256];
	m.topic = "orders";
	m.payload = "payload";
	m.payload_len = 7;
	for (int i = 0; i < n; i++)
		cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
}

static uint64_t pending(ackbox *ab)
{
	ackbox_counts c;
	char err[256];
	cr_assert_eq(ackbox_counts_get(ab, &c, err, sizeof(err)), 0, "%s", err);
	return c.sending + c.retrying;
}

Test(sqlite, survives_reopen)
{
	ackbox *ab;
	char err[512];
	cr_assert_eq(open_store(&ab, NULL, err, sizeof(err)), 0, "%s", err);
	publish_n(ab, 100);
	ackbox_destroy(ab);
	cr_assert_eq(open_store(&ab, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(pending(ab), 100);
	ackbox_destroy(ab);
}

Test(sqlite, corrupt_file_is_refused_clearly)
{
	ackbox *ab = NULL;
	char err[512] = "";
	FILE *f = fopen(path, "w");
	for (int i = 0; i < 1000; i++)
		fputs("this is not a database ", f);
	fclose(f);
	int rc = open_store(&ab, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE_CORRUPT, "rc %d: %s", rc, err);
	cr_assert_null(ab);
	cr_assert(strstr(err, path) && strstr(err, "not an SQLite database"), "%s", err);
}

Test(sqlite, damaged_pages_do_not_lose_the_rest_silently)
{
	ackbox *ab;
	char err[512] = "";
	cr_assert_eq(open_store(&ab, NULL, err, sizeof(err)), 0, "%s", err);
	publish_n(ab, 50);
	ackbox_destroy(ab);
	/* overwrite the header's magic: SQLite no longer recognises the file */
	FILE *f = fopen(path, "r+b");
	fwrite("garbage-garbage!", 1, 16, f);
	fclose(f);
	cr_assert_eq(open_store(&ab, NULL, err, sizeof(err)), ACKBOX_ERR_STORE_CORRUPT, "%s", err);
}

Test(sqlite, foreign_and_newer_schemas_are_refused)
{
	sqlite3 *db;
	ackbox *ab;
	char err[512] = "";
	cr_assert_eq(open_store(&ab, NULL, err, sizeof(err)), 0, "%s", err);
	ackbox_destroy(ab);
	cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
	cr_assert_eq(sqlite3_exec(db, "UPDATE ackbox_meta SET value='99' WHERE key='version'", NULL,
	                          NULL, NULL),
	             SQLITE_OK);
	cr_assert_eq(open_store(&ab, NULL, err, sizeof(err)), ACKBOX_ERR_STORE_SCHEMA);
	cr_assert(strstr(err, "99") && strstr(err, "upgrade"), "%s", err);
	cr_assert_eq(sqlite3_exec(db, "UPDATE ackbox_meta SET value='billing' WHERE key='schema'",
	                          NULL, NULL, NULL),
	             SQLITE_OK);
	cr_assert_eq(open_store(&ab, NULL, err, sizeof(err)), ACKBOX_ERR_STORE_SCHEMA);
	cr_assert(strstr(err, "foreign"), "%s", err);
	sqlite3_close(db);
}

Test(sqlite, read_only_file_is_refused_and_kept)
{
	ackbox *ab;
	char err[512] = "";
	cr_assert_eq(open_store(&ab, NULL, err, sizeof(err)), 0, "%s", err);
	publish_n(ab, 10);
	ackbox_destroy(ab);
	chmod(dir, 0755);
	chmod(path, 0444);
	/* root may write anything: check as an unprivileged user in a child */
	pid_t pid = fork();
	if (pid == 0) {
		if (geteuid() == 0 && setuid(65534) != 0)
			_exit(90);
		int rc = open_store(&ab, NULL, err, sizeof(err));
		if (rc != ACKBOX_ERR_STORE_READONLY)
			_exit(91);
		if (!strstr(err, "read-only"))
			_exit(92);
		_exit(0);
	}
	int st;
	waitpid(pid, &st, 0);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child exit %d", WEXITSTATUS(st));
	chmod(path, 0644);
	cr_assert_eq(open_store(&ab, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(pending(ab), 10, "nothing lost");
	ackbox_destroy(ab);
}

Test(sqlite, locked_by_another_writer_fails_clearly_then_recovers)
{
	ackbox *ab;
	sqlite3 *other;
	ackbox_msg m = {0};
	char err[512] = "";
	cr_assert_eq(open_store(&ab, NULL, err, sizeof(err)), 0, "%s", err);
	publish_n(ab, 5);
	cr_assert_eq(sqlite3_open(path, &other), SQLITE_OK);
	cr_assert_eq(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	m.topic = "orders";
	m.payload = "x";
	m.payload_len = 1;
	int rc = ackbox_publish(ab, &m, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE_LOCKED, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "lock"), "%s", err);
	cr_assert_eq(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(other);
	cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(pending(ab), 6, "the 5 earlier messages are intact, plus the new one");
	ackbox_destroy(ab);
}

static int min_due(const ackbox_stored *m, void *opaque)
{
	int64_t *min = opaque;
	if (*min == 0 || m->due_ms < *min)
		*min = m->due_ms;
	return 0;
}

/* `ackbox status` next to a running service: the admin handle must not wait
 * for the service's write lock, nor make the rows it has in flight due. */
Test(sqlite, admin_handle_neither_writes_nor_waits_for_the_writer)
{
	ackbox *svc, *admin;
	ackbox_counts c;
	sqlite3 *other;
	int64_t due = 0;
	char err[512] = "";
	ackbox_conf *conf = ackbox_conf_new();
	ackbox_loopback *lb = ackbox_loopback_get("admin-ro");

	ackbox_loopback_script(lb, ACKBOX_LB_DROP, 5, 0); /* in flight until the lease runs out */
	TU_SET(conf, "store.url", db_url);
	TU_SET(conf, "transport.url", "loopback://admin-ro");
	TU_SET(conf, "retry.timeout", "60s");
	TU_SET(conf, "log.level", "error");
	cr_assert_eq(ackbox_new(&svc, conf, err, sizeof(err)), 0, "%s", err);
	publish_n(svc, 5);
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_received(lb) == 5, 5000), "5 sent");

	/* a writer holds the lock, as the service does inside a commit */
	cr_assert_eq(sqlite3_open(path, &other), SQLITE_OK);
	cr_assert_eq(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	cr_assert_eq(open_store(&admin, NULL, err, sizeof(err)), 0, "admin open: %s", err);
	cr_assert_eq(ackbox_counts_get(admin, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.sending, 5);
	cr_assert_eq(ackbox_list(admin, -1, 0, min_due, &due, err, sizeof(err)), 5, "%s", err);
	cr_assert_gt(due, tu_wall_ms() + 30000, "the in-flight leases are intact (due %lld)",
	             (long long)due);
	ackbox_destroy(admin);
	cr_assert_eq(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(other);
	ackbox_destroy(svc);
}

Test(sqlite, missing_directory_is_a_clear_error)
{
	ackbox *ab;
	char err[512] = "";
	snprintf(db_url, sizeof(db_url), "sqlite://%s/no/such/dir/outbox.db", dir);
	cr_assert_eq(open_store(&ab, NULL, err, sizeof(err)), ACKBOX_ERR_STORE);
	cr_assert(strstr(err, "no/such/dir") && strstr(err, "open"), "%s", err);
}

static int acked;
static ackbox_id acked_id;
static void on_report(const ackbox_report *r, void *o)
{
	(void)o;
	if (r->state == ACKBOX_MSG_ACKED) {
		acked++;
		acked_id = r->id;
	}
}

Test(sqlite, transactional_entry_commits_and_rolls_back_with_the_app)
{
	sqlite3 *app;
	ackbox_msg m = {0};
	ackbox_id rolled_back, committed;
	char err[512] = "";
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab;

	cr_assert_eq(sqlite3_open(path, &app), SQLITE_OK);
	cr_assert_eq(sqlite3_exec(app, "CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT)",
	                          NULL, NULL, NULL),
	             SQLITE_OK);
	m.topic = "orders";
	m.payload = "order created";
	m.payload_len = 13;

	cr_assert_eq(sqlite3_exec(app, "BEGIN; INSERT INTO orders(item) VALUES('lost')", NULL, NULL,
	                          NULL),
	             SQLITE_OK);
	cr_assert_eq(ackbox_sqlite_enqueue(app, &m, &rolled_back, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(sqlite3_exec(app, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);

	cr_assert_eq(sqlite3_exec(app, "BEGIN; INSERT INTO orders(item) VALUES('kept')", NULL, NULL,
	                          NULL),
	             SQLITE_OK);
	cr_assert_eq(ackbox_sqlite_enqueue(app, &m, &committed, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(sqlite3_exec(app, "COMMIT", NULL, NULL, NULL), SQLITE_OK);

	/* a relay on the same file finds the committed row by itself */
	TU_SET(c, "store.url", db_url);
	TU_SET(c, "transport.url", "loopback://txn");
	ackbox_conf_set_report_cb(c, on_report, NULL);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(acked, 1);
	cr_assert_eq(memcmp(&acked_id, &committed, sizeof(committed)), 0);
	ackbox_loopback *lb = ackbox_loopback_get("txn");
	cr_assert_eq(ackbox_loopback_count_id(lb, &committed), 1);
	cr_assert_eq(ackbox_loopback_count_id(lb, &rolled_back), 0, "rolled back with the order");

	/* while the relay runs, a new order's message is picked up too */
	cr_assert_eq(sqlite3_exec(app, "BEGIN; INSERT INTO orders(item) VALUES('later')", NULL,
	                          NULL, NULL),
	             SQLITE_OK);
	cr_assert_eq(ackbox_sqlite_enqueue(app, &m, &committed, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(sqlite3_exec(app, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_count_id(lb, &committed) == 1, 5000));
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(acked, 2);
	ackbox_destroy(ab);
	sqlite3_close(app);
}

/* ------------------------------------------------------------------ */
/* Packed batches: a publish batch the relay holds in memory is one row  */
/* ------------------------------------------------------------------ */

static int64_t table_rows(const char *table)
{
	sqlite3 *db;
	sqlite3_stmt *s;
	char sql[128];
	int64_t n = -1;
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", table);
	cr_assert_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	sqlite3_busy_timeout(db, 2000);
	if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
		n = sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	sqlite3_close(db);
	return n;
}

static char warned[512]; /* the last WARN line logged */
static void on_log(ackbox_log_level level, const char *component, const char *msg, void *o)
{
	(void)o;
	(void)component;
	if (level == ACKBOX_LOG_WARN)
		snprintf(warned, sizeof(warned), "%s", msg);
}

static ackbox *open_packed(const char *broker, const char *max_attempts)
{
	ackbox *ab;
	char err[512] = "", url[64];
	ackbox_conf *c = ackbox_conf_new();
	snprintf(url, sizeof(url), "loopback://%s", broker);
	TU_SET(c, "store.url", db_url);
	TU_SET(c, "transport.url", url);
	TU_SET(c, "retry.timeout", "60s");
	TU_SET(c, "retry.max_attempts", max_attempts);
	TU_SET(c, "sqlite.busy_timeout", "200ms");
	TU_SET(c, "log.level", "warn");
	ackbox_conf_set_log_cb(c, on_log, NULL);
	ackbox_conf_set_report_cb(c, on_report, NULL);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	return ab;
}

static void publish_batch_n(ackbox *ab, int n, ackbox_id *ids)
{
	ackbox_msg m[64];
	char err[256];
	cr_assert(n <= 64);
	memset(m, 0, sizeof(m));
	for (int i = 0; i < n; i++) {
		m[i].topic = "orders";
		m[i].content_type = i % 2 ? "text/plain" : NULL;
		m[i].payload = "packed payload";
		m[i].payload_len = 14;
	}
	cr_assert_eq(ackbox_publish_batch(ab, m, (size_t)n, ids, err, sizeof(err)), 0, "%s", err);
}

typedef struct listed {
	int n, sending, sorted;
	ackbox_id last;
	char payload[32];
} listed;

static int on_listed(const ackbox_stored *m, void *opaque)
{
	listed *l = opaque;
	if (l->n && memcmp(&l->last, &m->id, sizeof(m->id)) >= 0)
		l->sorted = 0;
	l->last = m->id;
	l->n++;
	l->sending += m->state == ACKBOX_MSG_SENDING;
	snprintf(l->payload, sizeof(l->payload), "%.*s", (int)m->payload_len,
	         (const char *)m->payload);
	return 0;
}

Test(sqlite, packed_batch_is_one_row_listed_member_by_member_and_goes_when_acked)
{
	ackbox_loopback *lb = ackbox_loopback_get("packed");
	ackbox_id ids[40];
	ackbox_counts c;
	listed l = {.sorted = 1};
	char err[512] = "";
	ackbox *ab;

	acked = 0;
	ackbox_loopback_script(lb, ACKBOX_LB_DROP, 40, 0); /* held in flight */
	ab = open_packed("packed", "3");
	publish_batch_n(ab, 40, ids);
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_received(lb) == 40, 5000));
	cr_assert_eq(table_rows("ackbox_batch"), 1, "one packed row");
	cr_assert_eq(table_rows("ackbox_outbox"), 0, "no row per message");
	cr_assert_eq(ackbox_counts_get(ab, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.sending, 40);
	cr_assert_eq(ackbox_list(ab, -1, 0, on_listed, &l, err, sizeof(err)), 40, "%s", err);
	cr_assert_eq(l.sending, 40);
	cr_assert(l.sorted, "listed in id order");
	cr_assert_str_eq(l.payload, "packed payload");
	memset(&l, 0, sizeof(l));
	cr_assert_eq(ackbox_show(ab, &ids[17], on_listed, &l, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(memcmp(&l.last, &ids[17], sizeof(ids[17])), 0);
	memset(&l, 0, sizeof(l));
	cr_assert_eq(ackbox_list(ab, -1, 7, on_listed, &l, err, sizeof(err)), 7, "limit holds");
	ackbox_destroy(ab);

	/* the next process finds all 40 (nothing was acked) and sends them */
	ackbox_loopback_set_default(lb, ACKBOX_LB_CONFIRM, 0);
	ab = open_packed("packed", "3");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(acked, 40, "every member acked once");
	for (int i = 0; i < 40; i++)
		cr_assert_eq(ackbox_loopback_count_id(lb, &ids[i]), 2, "member %d sent again", i);
	cr_assert_eq(table_rows("ackbox_batch"), 0, "the packed row is gone");
	cr_assert_eq(pending(ab), 0);
	ackbox_destroy(ab);
}

Test(sqlite, packed_member_that_fails_moves_out_and_the_rest_is_acked)
{
	ackbox_loopback *lb = ackbox_loopback_get("packed-fail");
	ackbox_id ids[10];
	ackbox_counts c;
	listed l = {.sorted = 1};
	char err[512] = "";
	ackbox *ab;

	acked = 0;
	ackbox_loopback_script(lb, ACKBOX_LB_CONFIRM, 3, 0);
	ackbox_loopback_script(lb, ACKBOX_LB_NACK, 1, 0); /* the 4th: FAILED at once */
	ackbox_loopback_set_default(lb, ACKBOX_LB_CONFIRM, 0);
	ab = open_packed("packed-fail", "1");
	publish_batch_n(ab, 10, ids);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(acked, 9);
	cr_assert_eq(ackbox_counts_get(ab, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.failed, 1);
	cr_assert_eq(c.sending + c.retrying, 0);
	cr_assert_eq(ackbox_list(ab, ACKBOX_MSG_FAILED, 0, on_listed, &l, err, sizeof(err)), 1,
	             "%s", err);
	cr_assert_eq(memcmp(&l.last, &ids[3], sizeof(ids[3])), 0, "the nacked member");
	cr_assert_str_eq(l.payload, "packed payload", "its bytes moved out with it");
	cr_assert_eq(table_rows("ackbox_batch"), 0);
	cr_assert_eq(table_rows("ackbox_batch_out"), 0);
	ackbox_destroy(ab);
}

Test(sqlite, packed_batch_partly_acked_at_close_leaves_only_the_rest)
{
	ackbox_loopback *lb = ackbox_loopback_get("packed-close");
	ackbox_id ids[30];
	ackbox *ab;

	acked = 0;
	ackbox_loopback_script(lb, ACKBOX_LB_CONFIRM, 12, 0);
	ackbox_loopback_script(lb, ACKBOX_LB_DROP, 18, 0);
	ab = open_packed("packed-close", "3");
	publish_batch_n(ab, 30, ids);
	cr_assert(TU_WAIT_UNTIL((ackbox_poll(ab, 0), acked == 12), 5000), "12 acked (%d)", acked);
	ackbox_destroy(ab);
	cr_assert_eq(table_rows("ackbox_batch"), 0, "written out at close");
	cr_assert_eq(table_rows("ackbox_outbox"), 18, "only the unacked members remain");

	ackbox_loopback_set_default(lb, ACKBOX_LB_CONFIRM, 0);
	ab = open_packed("packed-close", "3");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(acked, 30);
	for (int i = 0; i < 30; i++)
		cr_assert_eq(ackbox_loopback_count_id(lb, &ids[i]), i < 12 ? 1 : 2, "member %d", i);
	cr_assert_eq(pending(ab), 0);
	ackbox_destroy(ab);
}

Test(sqlite, packed_batch_that_cannot_be_written_out_at_close_is_sent_again_whole)
{
	ackbox_loopback *lb = ackbox_loopback_get("packed-locked");
	ackbox_id ids[30];
	sqlite3 *other;
	ackbox *ab;

	acked = 0;
	warned[0] = '\0';
	ackbox_loopback_script(lb, ACKBOX_LB_CONFIRM, 12, 0);
	ackbox_loopback_script(lb, ACKBOX_LB_DROP, 18, 0);
	ab = open_packed("packed-locked", "3");
	publish_batch_n(ab, 30, ids);
	cr_assert(TU_WAIT_UNTIL((ackbox_poll(ab, 0), acked == 12), 5000), "12 acked (%d)", acked);
	/* An ACKED report does not wait for its delete: wait until the store
	 * counted the 12 acks in the batch (seen once under TSan: the other
	 * writer below locked the file before them, the batch had no ack to
	 * lose and the close said nothing of sending again) */
	cr_assert(TU_WAIT_UNTIL(pending(ab) == 18, 5000), "18 pending (%llu)",
	          (unsigned long long)pending(ab));
	/* another writer holds the lock while the handle closes */
	cr_assert_eq(sqlite3_open(path, &other), SQLITE_OK);
	/* the relay may be writing (deletes, attempt notes of the drops): wait
	 * for its transaction, as any writer would */
	sqlite3_busy_timeout(other, 30000);
	cr_assert_eq(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	ackbox_destroy(ab);
	cr_assert(strstr(warned, "sent again"), "the close says what happens: '%s'", warned);
	cr_assert_eq(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(other);
	cr_assert_eq(table_rows("ackbox_batch"), 1, "the batch is still there, whole");

	ackbox_loopback_set_default(lb, ACKBOX_LB_CONFIRM, 0);
	ab = open_packed("packed-locked", "3");
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	for (int i = 0; i < 30; i++)
		cr_assert_eq(ackbox_loopback_count_id(lb, &ids[i]), 2, "member %d sent again", i);
	cr_assert_eq(pending(ab), 0, "nothing lost, nothing left");
	ackbox_destroy(ab);
}

static mode_t mode_of(const char *suffix)
{
	char p[1200];
	struct stat sb;
	snprintf(p, sizeof(p), "%s%s", path, suffix);
	cr_assert_eq(stat(p, &sb), 0, "%s: %s", p, strerror(errno));
	return sb.st_mode & 07777;
}

/*
 * A new store holds business data: it is created 0600 under the usual umask
 * 022, and so are the WAL and shared-memory files SQLite makes beside it. An
 * existing store readable by others is named in a warning.
 */
Test(sqlite, new_store_is_readable_by_its_owner_only)
{
	ackbox *ab;
	char err[512];
	mode_t old = umask(022);
	cr_assert_eq(open_store(&ab, NULL, err, sizeof(err)), 0, "%s", err);
	publish_n(ab, 3);
	cr_assert_eq(mode_of(""), 0600, "the store file is %04o", (unsigned)mode_of(""));
	cr_assert_eq(mode_of("-wal"), 0600, "the WAL is %04o", (unsigned)mode_of("-wal"));
	cr_assert_eq(mode_of("-shm"), 0600, "the shm file is %04o", (unsigned)mode_of("-shm"));
	ackbox_destroy(ab);

	/* a store made 0644 by an earlier version: opened, kept, and named */
	cr_assert_eq(chmod(path, 0644), 0);
	ackbox_conf *c = ackbox_conf_new();
	TU_SET(c, "store.url", db_url);
	warned[0] = '\0';
	ackbox_conf_set_log_cb(c, on_log, NULL);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(pending(ab), 3);
	ackbox_destroy(ab);
	cr_assert_neq(strstr(warned, "mode 0644"), NULL, "no warning about the mode: '%s'", warned);
	cr_assert_eq(mode_of(""), 0644, "an existing file's mode is the owner's choice");
	umask(old);
}

/* How many of the markers "ACKED-PAYLOAD-<n>" are still readable in file. */
static int markers_in(const char *file)
{
	FILE *f = fopen(file, "rb");
	char *buf;
	long len;
	int found = 0;
	if (!f)
		return 0;
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	rewind(f);
	buf = malloc((size_t)len + 1);
	cr_assert_not_null(buf);
	cr_assert_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
	fclose(f);
	char *seen = calloc(1000, 1);
	for (long i = 0; i + 20 <= len; i++)
		if (memcmp(buf + i, "ACKED-PAYLOAD-", 14) == 0) {
			int n = atoi(buf + i + 14);
			if (n >= 0 && n < 1000 && !seen[n]) {
				seen[n] = 1;
				found++;
			}
		}
	free(seen);
	free(buf);
	return found;
}

/* 1000 messages stored while the broker is down, then acked; the store closed. */
static int remnants_after_acks(const char *secure_delete)
{
	ackbox_loopback *lb = ackbox_loopback_get(secure_delete);
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab;
	char err[512], tx[64], payload[200];
	ackbox_msg m = {0};
	snprintf(tx, sizeof(tx), "loopback://%s", secure_delete);
	TU_SET(c, "store.url", db_url);
	TU_SET(c, "transport.url", tx);
	TU_SET(c, "sqlite.secure_delete", secure_delete);
	TU_SET(c, "retry.backoff.initial", "10ms");
	TU_SET(c, "retry.backoff.max", "20ms");
	TU_SET(c, "log.level", "error");
	ackbox_loopback_set_up(lb, 0);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	m.topic = "orders";
	m.payload = payload;
	m.payload_len = sizeof(payload);
	for (int i = 0; i < 1000; i++) {
		memset(payload, 'p', sizeof(payload));
		snprintf(payload, sizeof(payload), "ACKED-PAYLOAD-%04d-", i);
		cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	}
	ackbox_loopback_set_up(lb, 1);
	cr_assert_eq(ackbox_flush(ab, 60000 * TU_SLOW), 0);
	cr_assert_eq(pending(ab), 0);
	ackbox_destroy(ab);
	int n = markers_in(path);
	cr_log_info("secure_delete=%s: %d of 1000 acked payloads readable in the closed store", secure_delete, n);
	return n;
}

/*
 * What stays on disk after an ack (docs/operations.md): with
 * sqlite.secure_delete=on, nothing of an acked payload is left in the
 * store file once it is closed (the WAL is checkpointed and removed).
 */
Test(sqlite, secure_delete_on_leaves_no_acked_payload_in_the_closed_store)
{
	cr_assert_eq(remnants_after_acks("on"), 0);
	char wal[1200];
	snprintf(wal, sizeof(wal), "%s-wal", path);
	cr_assert_eq(access(wal, F_OK), -1, "the WAL is removed at a clean close");
}
