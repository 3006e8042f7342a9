/*
 * order_service.c - the whole ackbox scenario in one small program: an
 * order and its "order created" message commit in ONE SQLite transaction,
 * a relay delivers the message, orders keep being accepted while the broker
 * is down, and a failed message is inspected and requeued by an operator.
 *
 * usage: order_service --db FILE --transport URL [--broker-ctl CMD]
 * CMD is run as `CMD stop`, `CMD start` and `CMD fix TOPIC` to stop and
 * restart the broker and to fix an unroutable topic (scripts/demo.sh).
 *
 * usage: order_service --db FILE --transport URL --orders N [--topic T]
 *                      [--set KEY=VALUE ...] [--quiet]
 * places N more orders (N may be 0), then starts the relay and waits until
 * every stored message is confirmed: what scripts/demo.sh and the consumer
 * tests (tests/inbox) publish with. Linked with a library built with
 * ACKBOX_CRASH_POINTS and run with ACKBOX_CRASH_AT=after_confirm, it dies
 * at the first confirm, before any delete: the next run sends every
 * message again, and the broker holds duplicates.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include <ackbox/ackbox.h>
#include <ackbox/sqlite.h>

static int acked, failed;
static int quiet_logs = 1; /* the relay's own log lines matter only during the outage */
static int quiet;          /* --orders ... --quiet: the summary line only */

static void on_report(const ackbox_report *r, void *opaque)
{
	char id[ACKBOX_ID_STRLEN];
	(void)opaque;
	ackbox_id_format(&r->id, id);
	if (r->state == ACKBOX_MSG_ACKED) {
		acked++;
		if (!quiet)
			printf("    confirmed by the broker: message %s (%s)\n", id, r->topic);
	} else {
		failed++;
		printf("    FAILED: message %s (%s): %s\n", id, r->topic, r->reason);
	}
}

static void on_log(ackbox_log_level lvl, const char *component, const char *msg, void *opaque)
{
	(void)opaque;
	if (!quiet_logs || lvl <= ACKBOX_LOG_ERROR)
		printf("    [ackbox %s] %s\n", component, msg);
}

static void die(const char *what, const char *err)
{
	fprintf(stderr, "order_service: %s: %s\n", what, err);
	exit(1);
}

/* One order: the business row and its message in one transaction. */
static void place_order(sqlite3 *db, int n, const char *topic)
{
	char sql[256], payload[128], err[512];
	ackbox_msg m = {0};
	ackbox_id id;
	char idtext[ACKBOX_ID_STRLEN];

	if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
		die("begin", sqlite3_errmsg(db));
	snprintf(sql, sizeof(sql), "INSERT INTO orders(id, item, qty) VALUES(%d, 'widget', %d)", n,
	         n % 5 + 1);
	if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
		die("insert order", sqlite3_errmsg(db));
	snprintf(payload, sizeof(payload), "{\"event\":\"order created\",\"order\":%d}", n);
	m.topic = topic;
	m.payload = payload;
	m.payload_len = strlen(payload);
	m.content_type = "application/json";
	if (ackbox_sqlite_enqueue(db, &m, &id, err, sizeof(err)) != 0)
		die("enqueue", err);
	if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
		die("commit", sqlite3_errmsg(db));
	ackbox_id_format(&id, idtext);
	if (!quiet)
		printf("  order %d accepted; its message %s is stored with it\n", n, idtext);
}

static void show_counts(ackbox *ab, const char *when)
{
	ackbox_counts c;
	char err[256];
	if (ackbox_counts_get(ab, &c, err, sizeof(err)) != 0)
		die("status", err);
	printf("  outbox %s: %llu waiting to be sent, %llu retrying, %llu failed\n", when,
	       (unsigned long long)c.sending, (unsigned long long)c.retrying,
	       (unsigned long long)c.failed);
}

static void run_ctl(const char *ctl, const char *args)
{
	char cmd[2048];
	if (!ctl)
		return;
	snprintf(cmd, sizeof(cmd), "%s %s", ctl, args);
	if (system(cmd) != 0)
		die("broker control failed", cmd);
}

static int print_failed(const ackbox_stored *s, void *opaque)
{
	char id[ACKBOX_ID_STRLEN];
	(void)opaque;
	ackbox_id_format(&s->id, id);
	printf("    %s  topic=%s  attempts=%d  last error: %s\n", id, s->topic, s->attempts,
	       s->last_error ? s->last_error : "");
	return 0;
}

static void wait_delivered(ackbox *ab, int seconds)
{
	if (ackbox_flush(ab, seconds * 1000) != 0)
		printf("  (still waiting after %d s)\n", seconds);
}

/*
 * --orders N: N more orders first, all stored before the relay starts (so a
 * crash at the first confirm leaves every one of them for the next run),
 * then the relay sends whatever the outbox holds.
 */
static int orders_mode(const char *dbpath, const char *transport, int count, const char *topic,
                       char **sets, int nsets)
{
	char url[1200], err[512];
	sqlite3 *db;
	sqlite3_stmt *s;
	ackbox_conf *conf;
	ackbox *ab;
	int next = 1, rc;

	if (sqlite3_open(dbpath, &db) != SQLITE_OK)
		die(dbpath, sqlite3_errmsg(db));
	sqlite3_busy_timeout(db, 5000);
	sqlite3_exec(db, "CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, item TEXT, qty INT)",
	             NULL, NULL, NULL);
	if (ackbox_sqlite_install_schema(db, err, sizeof(err)) != 0)
		die("schema", err);
	if (sqlite3_prepare_v2(db, "SELECT coalesce(max(id), 0) + 1 FROM orders", -1, &s, NULL) ==
	        SQLITE_OK &&
	    sqlite3_step(s) == SQLITE_ROW)
		next = sqlite3_column_int(s, 0);
	sqlite3_finalize(s);
	for (int i = 0; i < count; i++)
		place_order(db, next + i, topic);

	conf = ackbox_conf_new();
	snprintf(url, sizeof(url), "sqlite://%s", dbpath);
	if (ackbox_conf_set(conf, "store.url", url, err, sizeof(err)) ||
	    ackbox_conf_set(conf, "transport.url", transport, err, sizeof(err)) ||
	    ackbox_conf_set(conf, "store.poll_interval", "50ms", err, sizeof(err)))
		die("configuration", err);
	for (int i = 0; i < nsets; i++) {
		char *eq = strchr(sets[i], '=');
		if (!eq)
			die("--set", "wants KEY=VALUE");
		*eq = '\0';
		if (ackbox_conf_set(conf, sets[i], eq + 1, err, sizeof(err)))
			die("configuration", err);
	}
	ackbox_conf_set_report_cb(conf, on_report, NULL);
	ackbox_conf_set_log_cb(conf, on_log, NULL);
	if (ackbox_new(&ab, conf, err, sizeof(err)) != 0)
		die("ackbox", err);
	rc = ackbox_flush(ab, 120000);
	printf("%d order(s) placed; %d message(s) confirmed by the broker, %d failed%s\n", count,
	       acked, failed, rc ? " (still waiting after 120 s)" : "");
	ackbox_destroy(ab);
	sqlite3_close(db);
	return rc || failed ? 1 : 0;
}

int main(int argc, char **argv)
{
	const char *dbpath = NULL, *transport = NULL, *ctl = NULL, *topic = "orders";
	char url[1200], err[512];
	char *sets[32];
	sqlite3 *db;
	ackbox_conf *conf;
	ackbox *ab;
	int n = 0, orders = -1, nsets = 0;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--quiet") == 0)
			quiet = 1;
		else if (i + 1 == argc)
			break;
		else if (strcmp(argv[i], "--db") == 0)
			dbpath = argv[++i];
		else if (strcmp(argv[i], "--transport") == 0)
			transport = argv[++i];
		else if (strcmp(argv[i], "--broker-ctl") == 0)
			ctl = argv[++i];
		else if (strcmp(argv[i], "--orders") == 0)
			orders = atoi(argv[++i]);
		else if (strcmp(argv[i], "--topic") == 0)
			topic = argv[++i];
		else if (strcmp(argv[i], "--set") == 0 && nsets < 32)
			sets[nsets++] = argv[++i];
	}
	if (!dbpath || !transport) {
		fprintf(stderr, "usage: order_service --db FILE --transport URL [--broker-ctl CMD]\n"
		                "       order_service --db FILE --transport URL --orders N [--topic T]"
		                " [--set KEY=VALUE ...] [--quiet]\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (orders >= 0)
		return orders_mode(dbpath, transport, orders, topic, sets, nsets);

	printf("1. The order service opens its database and starts ackbox's relay.\n");
	if (sqlite3_open(dbpath, &db) != SQLITE_OK)
		die(dbpath, sqlite3_errmsg(db));
	sqlite3_busy_timeout(db, 5000);
	sqlite3_exec(db, "CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, item TEXT, qty INT)",
	             NULL, NULL, NULL);
	sqlite3_exec(db, "DELETE FROM orders", NULL, NULL, NULL);
	if (ackbox_sqlite_install_schema(db, err, sizeof(err)) != 0)
		die("schema", err);

	conf = ackbox_conf_new();
	snprintf(url, sizeof(url), "sqlite://%s", dbpath);
	if (ackbox_conf_set(conf, "store.url", url, err, sizeof(err)) ||
	    ackbox_conf_set(conf, "transport.url", transport, err, sizeof(err)) ||
	    ackbox_conf_set(conf, "retry.timeout", "2s", err, sizeof(err)) ||
	    ackbox_conf_set(conf, "retry.backoff.initial", "200ms", err, sizeof(err)) ||
	    ackbox_conf_set(conf, "retry.backoff.max", "1s", err, sizeof(err)) ||
	    ackbox_conf_set(conf, "store.poll_interval", "50ms", err, sizeof(err)))
		die("configuration", err);
	ackbox_conf_set_report_cb(conf, on_report, NULL);
	ackbox_conf_set_log_cb(conf, on_log, NULL);
	if (ackbox_new(&ab, conf, err, sizeof(err)) != 0)
		die("ackbox", err);
	printf("  relay connected to the broker: %s\n\n", ackbox_connected(ab) ? "yes" : "not yet");

	printf("2. Orders come in. Each order row and its \"order created\" message commit in ONE\n"
	       "   transaction: both exist, or neither. The relay sends the message.\n");
	for (int i = 0; i < 3; i++)
		place_order(db, ++n, "orders");
	wait_delivered(ab, 30);
	show_counts(ab, "now");

	if (ctl) {
		printf("\n3. The broker goes down (killed, as in a crash).\n");
		quiet_logs = 0;
		run_ctl(ctl, "stop");
		printf("  broker stopped. Orders are still accepted: their messages wait in the outbox.\n");
		for (int i = 0; i < 5; i++)
			place_order(db, ++n, "orders");
		ackbox_poll(ab, 3000);
		show_counts(ab, "while the broker is down");
		printf("  nothing is marked failed because of an outage: attempts that never reached\n"
		       "  the broker do not count.\n");

		printf("\n4. The broker comes back; the relay reconnects and delivers the backlog.\n");
		run_ctl(ctl, "start");
		wait_delivered(ab, 60);
		quiet_logs = 1;
		show_counts(ab, "after the broker returned");

		printf("\n5. A message the broker cannot route (no queue bound to 'audit') fails after\n"
		       "   retry.max_attempts=3 attempts and waits for an operator.\n");
		place_order(db, ++n, "audit");
		wait_delivered(ab, 60);
		printf("  what `ackbox list --state failed` shows:\n");
		ackbox_list(ab, ACKBOX_MSG_FAILED, 10, print_failed, NULL, err, sizeof(err));
		printf("  the operator creates the missing queue and requeues (`ackbox requeue --all-failed`):\n");
		run_ctl(ctl, "fix audit");
		printf("  requeued %d message(s)\n", ackbox_requeue(ab, NULL, 0, err, sizeof(err)));
		wait_delivered(ab, 30);
		show_counts(ab, "at the end");
	}
	printf("\nDone: %d order(s), %d message(s) confirmed by the broker, %d failure report(s) "
	       "(the requeued one was delivered after it).\n",
	       n, acked, failed);
	ackbox_destroy(ab);
	sqlite3_close(db);
	return 0;
}
