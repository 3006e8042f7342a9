/*
 * test_store_faults.c - the SQLite store under faults, through the public
 * API with the loopback transport: a full disk (a small tmpfs), the file
 * deleted while open, a read-only file, a corrupt file, a file locked by
 * another process. Each must give a clear error and no crash; what was acked
 * stays acked, what was accepted stays stored and is delivered later.
 * (tests/unit/test_sqlite_store.c covers the same faults at the store ABI.)
 *
 * The full-disk test mounts a tmpfs and so runs as root, as CI does; if the
 * mount fails the test fails, it is never skipped.
 */
#include "testutil.h"

#include <sqlite3.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "ackbox_loopback.h"

static char *dir;
static char db_url[1200], db_path[1100];

static void setup(void)
{
	dir = tu_tmpdir("faults");
	snprintf(db_path, sizeof(db_path), "%s/outbox.db", dir);
	snprintf(db_url, sizeof(db_url), "sqlite://%s", db_path);
}

static void teardown(void)
{
	umount2(dir, MNT_DETACH); /* only mounted by the full-disk test */
	tu_rmrf(dir);
	free(dir);
}

TestSuite(faults, .init = setup, .fini = teardown, .timeout = 120);

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

static int open_handle(const char *broker, seen *s, ackbox **ab, char *err, size_t errn)
{
	ackbox_conf *c = ackbox_conf_new();
	char url[128];
	snprintf(url, sizeof(url), "loopback://%s", broker);
	TU_SET(c, "store.url", db_url);
	TU_SET(c, "transport.url", url);
	TU_SET(c, "retry.timeout", "300ms");
	TU_SET(c, "retry.backoff.initial", "20ms");
	TU_SET(c, "retry.backoff.max", "100ms");
	TU_SET(c, "log.level", "error");
	if (s)
		ackbox_conf_set_report_cb(c, on_report, s);
	int rc = ackbox_new(ab, c, err, errn);
	if (rc)
		ackbox_conf_destroy(c); /* on failure the caller keeps conf */
	return rc;
}

static int publish(ackbox *ab, size_t size, char *err, size_t errn)
{
	static char payload[64 * 1024];
	ackbox_msg m = {.topic = "orders", .payload = payload, .payload_len = size};
	memset(payload, 'p', sizeof(payload));
	return ackbox_publish(ab, &m, NULL, err, errn);
}

static ackbox_counts counts(ackbox *ab)
{
	ackbox_counts k;
	char err[256];
	cr_assert_eq(ackbox_counts_get(ab, &k, err, sizeof(err)), 0, "%s", err);
	return k;
}

Test(faults, full_disk_is_a_clear_error_and_keeps_what_was_accepted)
{
	seen s = {0};
	ackbox *ab;
	char err[512], filler[1200];
	int ok = 0, rc = 0;
	cr_assert_eq(mount("ackbox-faults", dir, "tmpfs", 0, "size=4m"), 0,
	             "cannot mount a 4 MiB tmpfs at %s (%s): this test needs root", dir,
	             strerror(errno));
	ackbox_loopback *lb = ackbox_loopback_get("full");
	ackbox_loopback_set_up(lb, 0); /* nothing is acked while the disk fills */
	cr_assert_eq(open_handle("full", &s, &ab, err, sizeof(err)), 0, "%s", err);
	/* leave ~1 MiB free, then publish 16 KiB messages until the disk is full */
	snprintf(filler, sizeof(filler), "%s/filler", dir);
	FILE *f = fopen(filler, "w");
	cr_assert(f);
	static char block[64 * 1024];
	for (int i = 0; i < 40; i++)
		if (fwrite(block, 1, sizeof(block), f) != sizeof(block))
			break;
	fclose(f);
	for (int i = 0; i < 1000; i++) {
		rc = publish(ab, 16 * 1024, err, sizeof(err));
		if (rc)
			break;
		ok++;
	}
	cr_assert_eq(rc, ACKBOX_ERR_STORE_FULL, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "full"), "the error says the disk is full: %s", err);
	cr_assert(strstr(err, db_path), "the error names the file: %s", err);
	cr_assert_gt(ok, 0);
	cr_assert_eq(counts(ab).sending, (uint64_t)ok, "every accepted message is stored");
	/* space comes back: publishing works again and everything is delivered */
	cr_assert_eq(unlink(filler), 0);
	cr_assert_eq(publish(ab, 100, err, sizeof(err)), 0, "%s", err);
	ackbox_loopback_set_up(lb, 1);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.acked, ok + 1);
	cr_assert_eq(s.failed, 0);
	cr_assert_eq(ackbox_loopback_distinct(lb), (size_t)ok + 1);
	ackbox_destroy(ab);
}

/*
 * A relay whose claims fail (the disk filled after the messages were stored:
 * the claim's lease update cannot be written) sends nothing: the rows a
 * failed claim read are not leased, and sending them made every claim send
 * them again (1 300 stored messages became 50 000 publishes in 20 s). Health
 * says the store refuses the relay; once space returns each is delivered.
 */
Test(faults, a_relay_on_a_full_disk_sends_nothing_until_space_returns)
{
	enum { N = 300, BATCH = 100 };
	seen s = {0};
	ackbox *ab;
	char err[512], filler[1200];
	static char block[4096];
	cr_assert_eq(mount("ackbox-faults", dir, "tmpfs", 0, "size=4m"), 0,
	             "cannot mount a 4 MiB tmpfs at %s (%s): this test needs root", dir,
	             strerror(errno));
	ackbox_loopback *lb = ackbox_loopback_get("full-relay");
	ackbox_loopback_set_up(lb, 0); /* nothing is claimed while it is down */
	cr_assert_eq(open_handle("full-relay", NULL, &ab, err, sizeof(err)), 0, "%s", err);
	for (int b = 0; b < N / BATCH; b++) {
		ackbox_msg m[BATCH];
		for (int i = 0; i < BATCH; i++)
			m[i] = (ackbox_msg){.topic = "orders", .payload = "x", .payload_len = 1};
		cr_assert_eq(ackbox_publish_batch(ab, m, BATCH, NULL, err, sizeof(err)), 0, "%s", err);
	}
	ackbox_destroy(ab);
	/* a relay that holds none of them in memory: only a claim gives them */
	cr_assert_eq(open_handle("full-relay", &s, &ab, err, sizeof(err)), 0, "%s", err);
	/* fill the disk to the last byte */
	snprintf(filler, sizeof(filler), "%s/filler", dir);
	FILE *f = fopen(filler, "w");
	cr_assert(f);
	setvbuf(f, NULL, _IONBF, 0);
	while (fwrite(block, 1, sizeof(block), f) == sizeof(block)) {
	}
	while (fwrite(block, 1, 1, f) == 1) {
	}
	fclose(f);
	ackbox_loopback_set_up(lb, 1);
	cr_assert(TU_WAIT_UNTIL(ackbox_health(ab, err, sizeof(err)) == ACKBOX_ERR_STORE, 10000),
	          "health names the store while claims fail");
	cr_assert(strstr(err, "claim"), "health says why: %s", err);
	/* more failed claims (every poll interval): still nothing sent */
	cr_assert_eq(ackbox_poll(ab, 500), 0);
	cr_assert_eq(ackbox_loopback_received(lb), 0, "%zu sends of rows no claim leased",
	             ackbox_loopback_received(lb));
	cr_assert_eq(counts(ab).sending, (uint64_t)N, "all still stored");
	/* space comes back: each is delivered, once */
	cr_assert_eq(unlink(filler), 0);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.acked, N);
	cr_assert_eq(s.failed, 0);
	cr_assert_eq(ackbox_loopback_distinct(lb), (size_t)N);
	cr_assert_eq(ackbox_loopback_received(lb), (size_t)N, "no message sent twice");
	cr_assert_eq(ackbox_health(ab, err, sizeof(err)), 0, "healthy again: %s", err);
	ackbox_destroy(ab);
}

Test(faults, file_deleted_while_open_refuses_further_publishes)
{
	seen s = {0};
	ackbox *ab;
	char err[512], side[1200];
	ackbox_loopback *lb = ackbox_loopback_get("deleted");
	ackbox_loopback_set_up(lb, 0);
	cr_assert_eq(open_handle("deleted", &s, &ab, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(publish(ab, 100, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(unlink(db_path), 0);
	snprintf(side, sizeof(side), "%s-wal", db_path);
	unlink(side);
	int rc = publish(ab, 100, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE, "a publish into a deleted file must fail: rc %d", rc);
	cr_assert(strstr(err, "deleted or moved") && strstr(err, db_path), "%s", err);
	ackbox_destroy(ab); /* no crash */
}

Test(faults, read_only_and_corrupt_files_are_refused_and_left_alone)
{
	ackbox *ab = NULL;
	char err[512];
	struct stat st;
	/* a store with one message, then made read-only */
	ackbox_loopback_set_up(ackbox_loopback_get("ro"), 0);
	cr_assert_eq(open_handle("ro", NULL, &ab, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(publish(ab, 100, err, sizeof(err)), 0, "%s", err);
	ackbox_destroy(ab);
	cr_assert_eq(chmod(db_path, 0444), 0);
	cr_assert_eq(chmod(dir, 0755), 0); /* traversable for the unprivileged child */
	if (geteuid() == 0) {
		/* root ignores file modes: drop the privilege in a child */
		pid_t pid = fork();
		if (pid == 0) {
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (setgid(65534) || setuid(65534))
				_exit(10);
			int rc = open_handle("ro", NULL, &ab, err, sizeof(err));
			_exit(rc == ACKBOX_ERR_STORE_READONLY && strstr(err, db_path) ? 0 : 11);
		}
		int status = 0;
		waitpid(pid, &status, 0);
		cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		          "read-only store not refused clearly (child %d)", WEXITSTATUS(status));
	} else {
		cr_assert_eq(open_handle("ro", NULL, &ab, err, sizeof(err)), ACKBOX_ERR_STORE_READONLY);
	}
	cr_assert_eq(chmod(db_path, 0644), 0);
	/* still holds its message */
	cr_assert_eq(open_handle("ro", NULL, &ab, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(counts(ab).sending, 1u);
	ackbox_destroy(ab);

	/* garbage bytes: refused, and the file is not touched */
	FILE *f = fopen(db_path, "w");
	cr_assert(f);
	fputs("this is not a database, this is a text file of some length......", f);
	fclose(f);
	cr_assert_eq(stat(db_path, &st), 0);
	off_t before = st.st_size;
	int rc = open_handle("ro", NULL, &ab, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE_CORRUPT, "rc %d: %s", rc, err);
	cr_assert(strstr(err, db_path), "%s", err);
	cr_assert_eq(stat(db_path, &st), 0);
	cr_assert_eq(st.st_size, before, "a corrupt store is left as it was");
}

Test(faults, locked_by_another_process_fails_clearly_then_recovers)
{
	seen s = {0};
	ackbox *ab;
	char err[512];
	int go[2], done[2];
	ackbox_loopback *lb = ackbox_loopback_get("locked");
	ackbox_loopback_set_up(lb, 0);
	cr_assert_eq(open_handle("locked", &s, &ab, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(publish(ab, 100, err, sizeof(err)), 0, "%s", err);
	/* no SQLite connection may cross a fork(): close ours first */
	ackbox_destroy(ab);
	cr_assert_eq(pipe(go), 0);
	cr_assert_eq(pipe(done), 0);
	pid_t pid = fork();
	if (pid == 0) {
		/* another process holds the write lock until told to let go */
		sqlite3 *db;
		char b;
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (sqlite3_open(db_path, &db) != SQLITE_OK ||
		    sqlite3_exec(db, "BEGIN IMMEDIATE", 0, 0, 0) != SQLITE_OK)
			_exit(1);
		if (write(go[1], "x", 1) != 1 || read(done[0], &b, 1) != 1)
			_exit(2);
		sqlite3_exec(db, "ROLLBACK", 0, 0, 0);
		sqlite3_close(db);
		_exit(0);
	}
	char b;
	cr_assert_eq(read(go[0], &b, 1), 1, "the locking process did not start");
	/* with a short busy timeout the publish gives up and says why */
	{
		ackbox_conf *c = ackbox_conf_new();
		TU_SET(c, "store.url", db_url);
		TU_SET(c, "transport.url", "loopback://locked");
		TU_SET(c, "sqlite.busy_timeout", "200ms");
		TU_SET(c, "log.level", "error");
		int rc = ackbox_new(&ab, c, err, sizeof(err));
		if (rc == 0) {
			rc = publish(ab, 100, err, sizeof(err));
			cr_assert_eq(rc, ACKBOX_ERR_STORE_LOCKED, "rc %d: %s", rc, err);
			ackbox_destroy(ab);
		} else {
			ackbox_conf_destroy(c);
			cr_assert_eq(rc, ACKBOX_ERR_STORE_LOCKED, "rc %d: %s", rc, err);
		}
		cr_assert(strstr(err, "locked") || strstr(err, "busy"), "%s", err);
	}
	cr_assert_eq(write(done[1], "x", 1), 1);
	int status;
	waitpid(pid, &status, 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	/* lock released: the earlier message is there and is delivered */
	ackbox_loopback_set_up(lb, 1);
	cr_assert_eq(open_handle("locked", &s, &ab, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(s.acked, 1);
	ackbox_destroy(ab);
}
