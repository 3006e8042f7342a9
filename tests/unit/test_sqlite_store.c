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
