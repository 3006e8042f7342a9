/*
 * test_sqlite_owner.c - relays in several processes on one SQLite file:
 * a live relay's messages are neither resent nor taken by another (the
 * cause of duplicates between concurrent publishers), a relay that is
 * killed or closes leaves them to the others at once; and store.create:
 * never and insert create nothing before their time.
 */
#include "testutil.h"

#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "ackbox_loopback.h"

#define CHILD_MSGS 10 /* a packed batch of 9 and one row */

static char *dir;
static char path[1100], db_url[1200];
static pid_t child_pid; /* killed by teardown if a test fails while it runs */

static void setup(void)
{
	dir = tu_tmpdir("sqown");
	snprintf(path, sizeof(path), "%s/outbox.db", dir);
	snprintf(db_url, sizeof(db_url), "sqlite://%s", path);
}

static void teardown(void)
{
	if (child_pid > 0) {
		kill(child_pid, SIGKILL);
		waitpid(child_pid, NULL, 0);
		child_pid = 0;
	}
	tu_rmrf(dir);
	free(dir);
	ackbox_loopback_reset();
}

TestSuite(owner, .init = setup, .fini = teardown);

static ackbox_conf *relay_conf(const char *broker, const char *timeout)
{
	ackbox_conf *c = ackbox_conf_new();
	char url[128];
	snprintf(url, sizeof(url), "loopback://%s", broker);
	TU_SET(c, "store.url", db_url);
	TU_SET(c, "transport.url", url);
	TU_SET(c, "retry.timeout", timeout);
	TU_SET(c, "store.poll_interval", "20ms");
	TU_SET(c, "store.sync", "off");
	TU_SET(c, "log.level", "error");
	return c;
}

/*
 * A relay in another process whose broker never confirms: its messages
 * stay in flight under a 60 s lease. It writes their ids to `out`, then
 * waits for a byte on `in`: 'c' closes the handle cleanly and exits 0;
 * otherwise it waits to be killed.
 */
static void child_relay(int out, int in)
{
	ackbox_loopback *lb = ackbox_loopback_get("child");
	ackbox_conf *conf;
	ackbox *ab;
	ackbox_msg m[CHILD_MSGS];
	ackbox_id ids[CHILD_MSGS];
	char err[512], cmd = 0;

	ackbox_loopback_set_default(lb, ACKBOX_LB_DROP, 0);
	conf = relay_conf("child", "60s");
	if (ackbox_new(&ab, conf, err, sizeof(err)) != 0)
		_exit(2);
	memset(m, 0, sizeof(m));
	for (int i = 0; i < CHILD_MSGS; i++) {
		m[i].topic = "child";
		m[i].payload = "c";
		m[i].payload_len = 1;
	}
	if (ackbox_publish_batch(ab, m, CHILD_MSGS - 1, ids, err, sizeof(err)) != 0 ||
	    ackbox_publish(ab, &m[0], &ids[CHILD_MSGS - 1], err, sizeof(err)) != 0)
		_exit(3);
	/* in flight: the broker has them all */
	while (ackbox_loopback_received(lb) < CHILD_MSGS)
		ackbox_poll(ab, 5);
	if (write(out, ids, sizeof(ids)) != (ssize_t)sizeof(ids))
		_exit(4);
	if (read(in, &cmd, 1) == 1 && cmd == 'c') {
		ackbox_destroy(ab);
		_exit(0);
	}
	for (;;)
		pause();
}

typedef struct child {
	pid_t pid;
	int to, from;
	ackbox_id ids[CHILD_MSGS];
} child;

static void child_start(child *ch)
{
	int up[2], down[2];
	struct pollfd p;
	cr_assert_eq(pipe(up), 0);
	cr_assert_eq(pipe(down), 0);
	ch->pid = fork();
	cr_assert(ch->pid >= 0, "fork: %s", strerror(errno));
	if (ch->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives the test */
		close(up[0]);
		close(down[1]);
		child_relay(up[1], down[0]);
	}
	child_pid = ch->pid;
	close(up[1]);
	close(down[0]);
	ch->from = up[0];
	ch->to = down[1];
	p.fd = ch->from;
	p.events = POLLIN;
	cr_assert_eq(poll(&p, 1, 20000), 1, "the child relay has its messages in flight");
	cr_assert_eq(read(ch->from, ch->ids, sizeof(ch->ids)), (ssize_t)sizeof(ch->ids),
	             "the child relay reports its ids");
}

static int child_end(child *ch, int sig)
{
	int status = 0;
	if (sig)
		kill(ch->pid, sig);
	else
		cr_assert_eq(write(ch->to, "c", 1), 1);
	cr_assert_eq(waitpid(ch->pid, &status, 0), ch->pid);
	child_pid = 0;
	close(ch->to);
	close(ch->from);
	return status;
}

static int count_due_after(const ackbox_stored *m, void *opaque)
{
	int64_t *v = opaque; /* v[0]: bound, v[1]: rows due after it */
	if (m->due_ms > v[0])
		v[1]++;
	return 0;
}

static uint64_t pending(ackbox *ab)
{
	ackbox_counts c;
	char err[256];
	cr_assert_eq(ackbox_counts_get(ab, &c, err, sizeof(err)), 0, "%s", err);
	return c.sending + c.retrying;
}

static int acked;
static void on_report(const ackbox_report *r, void *o)
{
	(void)o;
	if (r->state == ACKBOX_MSG_ACKED)
		acked++;
}

/* A second relay opened next to a live one: at open it recovers nothing of
 * the other's, and its claims never take the other's messages. Without
 * owners both happened, and each publisher resent and counted the other's. */
Test(owner, a_live_relays_messages_are_neither_resent_nor_taken)
{
	ackbox_loopback *lb = ackbox_loopback_get("parent");
	ackbox_conf *conf;
	ackbox *ab;
	ackbox_msg m = {.topic = "parent", .payload = "p", .payload_len = 1};
	int64_t due[2];
	char err[512] = "";
	child ch;

	child_start(&ch);
	conf = relay_conf("parent", "2s");
	ackbox_conf_set_report_cb(conf, on_report, NULL);
	cr_assert_eq(ackbox_new(&ab, conf, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert(TU_WAIT_UNTIL((ackbox_poll(ab, 0), acked == 1), 5000), "its own message is acked");
	/* an observation window over more than one check of the other owners */
	cr_assert_not(TU_WAIT_UNTIL(ackbox_loopback_received(lb) > 1, 2500),
	              "the live relay's messages were taken (%zu sent here)",
	              ackbox_loopback_received(lb));
	due[0] = tu_wall_ms() + 30000;
	due[1] = 0;
	cr_assert_eq(ackbox_list(ab, -1, 0, count_due_after, due, err, sizeof(err)), CHILD_MSGS,
	             "%s", err);
	cr_assert_eq(due[1], CHILD_MSGS, "its leases are intact (60 s, not this relay's 2 s)");

	/* killed: the running relay notices within about a second */
	cr_assert(WIFSIGNALED(child_end(&ch, SIGKILL)));
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_received(lb) == 1 + CHILD_MSGS, 10000),
	          "the dead relay's messages are sent at once, not after its 60 s lease (%zu)",
	          ackbox_loopback_received(lb));
	for (int i = 0; i < CHILD_MSGS; i++)
		cr_assert_eq(ackbox_loopback_count_id(lb, &ch.ids[i]), 1, "message %d once", i);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(pending(ab), 0);
	ackbox_destroy(ab);
}

/* kill -9, then a relay opens: crash recovery takes everything at once. */
Test(owner, a_killed_relays_messages_are_recovered_at_open)
{
	ackbox_loopback *lb = ackbox_loopback_get("parent");
	ackbox *ab;
	char err[512] = "";
	child ch;

	child_start(&ch);
	cr_assert(WIFSIGNALED(child_end(&ch, SIGKILL)));
	cr_assert_eq(ackbox_new(&ab, relay_conf("parent", "2s"), err, sizeof(err)), 0, "%s", err);
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_received(lb) == CHILD_MSGS, 5000), "sent: %zu",
	          ackbox_loopback_received(lb));
	for (int i = 0; i < CHILD_MSGS; i++)
		cr_assert_eq(ackbox_loopback_count_id(lb, &ch.ids[i]), 1, "message %d once", i);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	ackbox_destroy(ab);
}

/* A clean close hands the messages over: the next relay sends them at once. */
Test(owner, a_closed_relays_messages_go_to_the_next_relay_at_once)
{
	ackbox_loopback *lb = ackbox_loopback_get("parent");
	ackbox *ab;
	char err[512] = "";
	child ch;
	int status;

	child_start(&ch);
	status = child_end(&ch, 0);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child closed cleanly");
	cr_assert_eq(ackbox_new(&ab, relay_conf("parent", "2s"), err, sizeof(err)), 0, "%s", err);
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_received(lb) == CHILD_MSGS, 5000), "sent: %zu",
	          ackbox_loopback_received(lb));
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	ackbox_destroy(ab);
}

/* ---- store.create ---- */

static int open_mode(ackbox **ab, const char *mode, const char *transport, char *err,
                     size_t errsz)
{
	ackbox_conf *c = ackbox_conf_new();
	int rc;
	TU_SET(c, "store.url", db_url);
	TU_SET(c, "store.create", mode);
	TU_SET(c, "log.level", "error");
	if (transport)
		TU_SET(c, "transport.url", transport);
	rc = ackbox_new(ab, c, err, errsz);
	if (rc)
		ackbox_conf_destroy(c);
	return rc;
}

static char *slurp(const char *p, size_t *len)
{
	FILE *f = fopen(p, "rb");
	char *buf;
	cr_assert(f, "%s: %s", p, strerror(errno));
	fseek(f, 0, SEEK_END);
	*len = (size_t)ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc(*len + 1);
	cr_assert(buf && fread(buf, 1, *len, f) == *len);
	fclose(f);
	return buf;
}

static int exists(const char *p)
{
	struct stat sb;
	return stat(p, &sb) == 0;
}

Test(owner, create_never_refuses_a_missing_file_and_creates_none)
{
	ackbox *ab;
	char err[512] = "";
	cr_assert_eq(open_mode(&ab, "never", NULL, err, sizeof(err)), ACKBOX_ERR_STORE);
	cr_assert(strstr(err, "does not exist") && strstr(err, path), "%s", err);
	cr_assert_not(exists(path), "no file was created");
	cr_assert_eq(open_mode(&ab, "never", "loopback://x", err, sizeof(err)), ACKBOX_ERR_STORE);
	cr_assert_not(exists(path), "a relay creates none either");
}

/* Another application's database: not an ackbox store, and left byte for
 * byte as it was (no tables, no WAL mode). */
Test(owner, create_never_leaves_a_foreign_database_untouched)
{
	ackbox *ab;
	sqlite3 *db;
	char err[512] = "", wal[1200], *before, *after;
	size_t lb, la;
	cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
	cr_assert_eq(sqlite3_exec(db, "CREATE TABLE orders(id INTEGER PRIMARY KEY, what TEXT);"
	                              "INSERT INTO orders(what) VALUES('42 apples')",
	                          NULL, NULL, NULL),
	             SQLITE_OK);
	sqlite3_close(db);
	before = slurp(path, &lb);
	cr_assert_eq(open_mode(&ab, "never", NULL, err, sizeof(err)), ACKBOX_ERR_STORE_SCHEMA);
	cr_assert(strstr(err, "not an ackbox store"), "%s", err);
	after = slurp(path, &la);
	cr_assert(lb == la && memcmp(before, after, lb) == 0, "the file is unchanged");
	snprintf(wal, sizeof(wal), "%s-wal", path);
	cr_assert_not(exists(wal), "not switched to WAL");
	free(before);
	free(after);
}

static int ignore_row(const ackbox_stored *m, void *opaque)
{
	(void)m;
	(void)opaque;
	return 0;
}

/* store.create=insert: nothing on disk until a message is stored; reads
 * see an empty store meanwhile. */
Test(owner, create_insert_makes_the_file_with_the_first_message)
{
	ackbox *ab;
	ackbox_counts c;
	ackbox_id id;
	ackbox_msg m = {.topic = "t", .payload = "x", .payload_len = 1};
	char err[512] = "";

	cr_assert_eq(open_mode(&ab, "insert", "loopback://ins", err, sizeof(err)), 0, "%s", err);
	cr_assert_not(exists(path), "opening created nothing");
	cr_assert_eq(ackbox_counts_get(ab, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.sending + c.retrying + c.failed, 0);
	cr_assert_eq(ackbox_flush(ab, 1000), 0, "nothing pending");
	cr_assert_eq(ackbox_id_parse("01a21e86-237c-7037-8916-50a2d2b2d237", &id), 0);
	cr_assert_eq(ackbox_show(ab, &id, ignore_row, NULL, err, sizeof(err)), ACKBOX_ERR_NOT_FOUND);
	cr_assert_not(exists(path), "reading created nothing");
	cr_assert_eq(ackbox_publish(ab, &m, &id, err, sizeof(err)), 0, "%s", err);
	cr_assert(exists(path), "the first message made the store");
	cr_assert_eq(ackbox_flush(ab, 5000), 0);
	cr_assert_eq(ackbox_loopback_count_id(ackbox_loopback_get("ins"), &id), 1);
	ackbox_destroy(ab);
	/* and it is an ackbox store now: never opens it */
	cr_assert_eq(open_mode(&ab, "never", NULL, err, sizeof(err)), 0, "%s", err);
	ackbox_destroy(ab);
}

/* What a process killed while it created the store leaves: an empty file.
 * A relay and an admin handle (never) read it as an empty store, write
 * nothing, and the relay takes the store up once another process has made
 * it there. */
/*
 * store.create=insert with delivery.order=key: the first insert makes the
 * store with its per-key order objects, so the key's second message waits
 * for the first, which the broker nacks once (unordered, it would go first).
 */
Test(owner, create_insert_with_key_order_installs_it_with_the_first_message)
{
	ackbox_loopback *lb = ackbox_loopback_get("insord");
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab = NULL;
	ackbox_msg m[2];
	ackbox_id ids[2], got;
	char err[512] = "";
	sqlite3 *db;
	sqlite3_stmt *st;

	ackbox_loopback_script(lb, ACKBOX_LB_NACK, 1, 0);
	TU_SET(c, "store.url", db_url);
	TU_SET(c, "store.create", "insert");
	TU_SET(c, "log.level", "error");
	TU_SET(c, "transport.url", "loopback://insord");
	TU_SET(c, "delivery.order", "key");
	TU_SET(c, "retry.backoff.initial", "20ms");
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	cr_assert_not(exists(path), "opening created nothing");
	for (int i = 0; i < 2; i++)
		m[i] = (ackbox_msg){.topic = "t", .key = "k", .key_len = 1, .payload = "x",
		                    .payload_len = 1};
	cr_assert_eq(ackbox_publish_batch(ab, m, 2, ids, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	ackbox_destroy(ab);

	cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
	cr_assert_eq(sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
	                                    " AND name = 'ackbox_outbox_head_del'",
	                                -1, &st, NULL),
	             SQLITE_OK);
	cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
	cr_assert_eq(sqlite3_column_int(st, 0), 1, "per-key order installed with the store");
	sqlite3_finalize(st);
	sqlite3_close(db);

	/* accepted: the first message (after its nack), then the second */
	size_t n = ackbox_loopback_received(lb), k = 0;
	for (size_t i = 0; i < n; i++) {
		if (ackbox_loopback_accepted(lb, i) != 1)
			continue;
		cr_assert_eq(ackbox_loopback_message(lb, i, &got, NULL, 0, NULL, NULL, NULL), 0);
		cr_assert_lt(k, 2u);
		cr_assert(memcmp(&got, &ids[k], sizeof(got)) == 0, "accepted #%zu out of key order", k);
		k++;
	}
	cr_assert_eq(k, 2u);
}

Test(owner, an_empty_file_is_an_empty_store_until_the_store_appears)
{
	ackbox_loopback *lb = ackbox_loopback_get("empty");
	ackbox *relay, *admin, *producer;
	ackbox_counts c;
	ackbox_conf *conf;
	ackbox_msg m = {.topic = "t", .payload = "x", .payload_len = 1};
	struct stat sb;
	char err[512] = "";
	FILE *f = fopen(path, "w");
	cr_assert(f);
	fclose(f);

	cr_assert_eq(open_mode(&admin, "never", NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_counts_get(admin, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.sending + c.retrying + c.failed, 0);
	ackbox_destroy(admin);
	conf = relay_conf("empty", "2s");
	TU_SET(conf, "store.create", "never");
	cr_assert_eq(ackbox_new(&relay, conf, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_flush(relay, 1000), 0, "nothing pending");
	cr_assert_eq(stat(path, &sb), 0);
	cr_assert_eq(sb.st_size, 0, "nothing was written to the empty file");

	/* a producer without a relay makes the store and stores three */
	cr_assert_eq(open_mode(&producer, "open", NULL, err, sizeof(err)), 0, "%s", err);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(ackbox_publish(producer, &m, NULL, err, sizeof(err)), 0, "%s", err);
	ackbox_destroy(producer);
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_received(lb) == 3, 5000),
	          "the relay took the store up and sent them (%zu)", ackbox_loopback_received(lb));
	cr_assert_eq(ackbox_flush(relay, 5000), 0);
	ackbox_destroy(relay);
}
