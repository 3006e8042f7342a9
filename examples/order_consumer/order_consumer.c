/*
 * order_consumer.c - the other half of the order story: consumes "order
 * created" from RabbitMQ, Kafka or MQTT, and ships each order once. ackbox
 * delivers at least once, so the same message may arrive twice; the inbox
 * (include/ackbox/inbox.h) records its id in the SAME transaction as the
 * shipment, and a duplicate is skipped. The delivery is acknowledged only
 * after that transaction committed.
 *
 * usage: order_consumer --transport URL (--db FILE | --pg CONNINFO) [options]
 *   --topic T          queue (AMQP), topic (Kafka, MQTT); default "orders"
 *   --consumer NAME    inbox consumer name, Kafka group, MQTT client id part
 *   --pg-schema S      PostgreSQL schema for the inbox and shipments (public)
 *   --drain            stop when nothing is left: AMQP queue empty, Kafka at
 *                      the end of every partition, MQTT a {"event":"drain"}
 *                      message (MQTT has no "empty")
 *   --subscribe-only   MQTT: create the persistent session and its
 *                      subscription, then exit (before anything is published)
 *   --mqtt-version V   5 (default; the id is a user property) or 3.1.1 (the
 *                      publisher must set mqtt.id_in_payload=true)
 *   --cleanup          delete inbox records past the window (7 days) first
 *   --quiet            one summary line instead of a line per delivery
 *   --crash-after K    test hook: SIGKILL itself after the K-th delivery's
 *                      transaction committed, before acknowledging it
 *   --crash-before-commit K  ... after the K-th delivery's effect was
 *                      written, before its transaction committed
 * Prints "summary deliveries=.. first=.. duplicates=.. without_id=.." last.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include <ackbox/ackbox.h>
#include <ackbox/inbox.h>
#include <ackbox/plugin.h>
#include <ackbox/sqlite.h>

#ifdef WITH_PG
#include <libpq-fe.h>
#include <ackbox/postgres.h>
#endif
#ifdef WITH_AMQP
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <ackbox/amqp.h>
#endif
#ifdef WITH_KAFKA
#include <librdkafka/rdkafka.h>
#include <ackbox/kafka.h>
#endif
#ifdef WITH_MQTT
#include <MQTTAsync.h>
#include <ackbox/mqtt.h>
#endif

static struct {
	const char *transport, *db, *pg, *schema, *topic, *consumer, *mqtt_version;
	int drain, subscribe_only, cleanup, quiet, crash_after, crash_before_commit;
} opt = {.topic = "orders", .consumer = "order_consumer", .schema = "public",
         .mqtt_version = "5"};

/* counted by whichever thread runs handle(): MQTT's is paho's */
static atomic_long deliveries, firsts, duplicates, without_id;

static void die(const char *what, const char *why)
{
	fprintf(stderr, "order_consumer: %s: %s\n", what, why);
	exit(1);
}

/* ------------------------------------------------------------------ */
/* The consumer's database: the effect and the inbox record, together   */
/* ------------------------------------------------------------------ */

static sqlite3 *sq;
#ifdef WITH_PG
static PGconn *pg;

static void pg_exec(const char *sql)
{
	PGresult *r = PQexec(pg, sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
		die(sql, PQerrorMessage(pg));
	PQclear(r);
}
#endif

static void sq_exec(const char *sql)
{
	char *msg = NULL;
	if (sqlite3_exec(sq, sql, NULL, NULL, &msg) != SQLITE_OK)
		die(sql, msg ? msg : sqlite3_errmsg(sq));
}

static void db_exec(const char *sql)
{
#ifdef WITH_PG
	if (pg) {
		pg_exec(sql);
		return;
	}
#endif
	sq_exec(sql);
}

static void db_open(void)
{
	char err[512];
#ifdef WITH_PG
	if (opt.pg) {
		char sql[512];
		pg = PQconnectdb(opt.pg);
		if (PQstatus(pg) != CONNECTION_OK)
			die(opt.pg, PQerrorMessage(pg));
		pg_exec("SET client_min_messages = warning");
		if (ackbox_pg_inbox_install_schema(pg, opt.schema, err, sizeof(err)) != 0)
			die("inbox", err);
		snprintf(sql, sizeof(sql),
		         "CREATE TABLE IF NOT EXISTS \"%s\".shipments(order_id integer NOT NULL,"
		         " msg_id uuid NOT NULL, shipped_at timestamptz NOT NULL DEFAULT now());"
		         "SET search_path = \"%s\"",
		         opt.schema, opt.schema);
		pg_exec(sql);
		return;
	}
#endif
	if (sqlite3_open(opt.db, &sq) != SQLITE_OK)
		die(opt.db, sqlite3_errmsg(sq));
	sqlite3_busy_timeout(sq, 10000);
	sq_exec("PRAGMA journal_mode=WAL");
	/* no unique key on order_id: a shipment made twice must show */
	sq_exec("CREATE TABLE IF NOT EXISTS shipments(order_id INTEGER NOT NULL,"
	        " msg_id TEXT NOT NULL, shipped_ms INTEGER NOT NULL)");
	(void)err;
}

static void db_cleanup(void)
{
	char err[512];
	int n, total = 0;
	do {
#ifdef WITH_PG
		if (pg)
			n = ackbox_pg_inbox_cleanup(pg, opt.consumer, 0, 0, opt.schema, err,
			                            sizeof(err));
		else
#endif
			n = ackbox_sqlite_inbox_cleanup(sq, opt.consumer, 0, 0, err, sizeof(err));
		if (n < 0)
			die("inbox cleanup", err);
		total += n;
	} while (n == ACKBOX_INBOX_BATCH_DEFAULT);
	if (!opt.quiet)
		printf("inbox cleanup: %d record(s) older than 7 days deleted\n", total);
}

static int db_record(const ackbox_id *id)
{
	char err[512];
	int v;
#ifdef WITH_PG
	if (pg)
		v = ackbox_pg_inbox_record(pg, opt.consumer, id, opt.schema, err, sizeof(err));
	else
#endif
		v = ackbox_sqlite_inbox_record(sq, opt.consumer, id, err, sizeof(err));
	if (v < 0)
		die("inbox", err);
	return v;
}

static void db_ship(int order, const char *idtext)
{
	char sql[256];
#ifdef WITH_PG
	if (pg) {
		snprintf(sql, sizeof(sql), "INSERT INTO shipments(order_id, msg_id) VALUES (%d, '%s')",
		         order, idtext);
		pg_exec(sql);
		return;
	}
#endif
	snprintf(sql, sizeof(sql), "INSERT INTO shipments VALUES (%d, '%s', %lld)", order, idtext,
	         (long long)ackbox_wall_ms());
	sq_exec(sql);
}

/* ------------------------------------------------------------------ */
/* One delivery                                                         */
/* ------------------------------------------------------------------ */

static int order_of(const char *p, size_t len)
{
	const char *k = memmem(p, len, "\"order\":", 8);
	return k ? atoi(k + 8) : -1;
}

/*
 * Applies one delivery: in one transaction, record its id in the inbox and,
 * the first time only, ship the order. Returns when that transaction has
 * committed; the caller acknowledges the delivery afterwards. id_rc is what
 * the id helper said (ACKBOX_ERR_NOT_FOUND: not an ackbox message).
 */
static void handle(const ackbox_id *id, int id_rc, const char *payload, size_t len)
{
	char idtext[ACKBOX_ID_STRLEN] = "";
	long n = atomic_fetch_add(&deliveries, 1) + 1;
	int order = order_of(payload, len), verdict;

	if (id_rc != 0) {
		/* published by something else: nothing to deduplicate by. This
		 * consumer skips it; another might dead-letter it. */
		atomic_fetch_add(&without_id, 1);
		if (!opt.quiet)
			printf("  delivery %ld: %s, skipped\n", n,
			       id_rc == ACKBOX_ERR_NOT_FOUND ? "no ackbox id"
			                                     : "a malformed ackbox id");
		return;
	}
	ackbox_id_format(id, idtext);
	/* SQLite: take the write lock now, not at the first write */
	db_exec(opt.pg ? "BEGIN" : "BEGIN IMMEDIATE");
	verdict = db_record(id);
	if (verdict == ACKBOX_INBOX_FIRST) {
		if (order > 0)
			db_ship(order, idtext);
		atomic_fetch_add(&firsts, 1);
	} else {
		atomic_fetch_add(&duplicates, 1);
	}
	if (opt.crash_before_commit && n == opt.crash_before_commit) {
		printf("  delivery %ld: killed before its transaction committed\n", n);
		fflush(stdout);
		raise(SIGKILL);
	}
	db_exec("COMMIT");
	if (!opt.quiet)
		printf("  delivery %ld: order %d, message %s: %s\n", n, order, idtext,
		       verdict == ACKBOX_INBOX_FIRST ? "FIRST, shipped"
		                                     : "DUPLICATE, already shipped: skipped");
	if (opt.crash_after && n == opt.crash_after) {
		printf("  delivery %ld: killed after its commit, before its acknowledgement\n", n);
		fflush(stdout);
		raise(SIGKILL);
	}
}

/* What the effect table holds: the proof that each order shipped once. */
static void db_report(void)
{
	long long rows = -1, orders = -1;
#ifdef WITH_PG
	if (pg) {
		PGresult *r = PQexec(pg, "SELECT count(*), count(DISTINCT order_id) FROM shipments");
		if (PQresultStatus(r) == PGRES_TUPLES_OK) {
			rows = atoll(PQgetvalue(r, 0, 0));
			orders = atoll(PQgetvalue(r, 0, 1));
		}
		PQclear(r);
	} else
#endif
	{
		sqlite3_stmt *s;
		if (sqlite3_prepare_v2(sq, "SELECT count(*), count(DISTINCT order_id) FROM shipments",
		                       -1, &s, NULL) == SQLITE_OK &&
		    sqlite3_step(s) == SQLITE_ROW) {
			rows = sqlite3_column_int64(s, 0);
			orders = sqlite3_column_int64(s, 1);
		}
		sqlite3_finalize(s);
	}
	printf("shipments holds %lld row(s) for %lld order(s): %s\n", rows, orders,
	       rows == orders ? "every order shipped exactly once" : "SOME ORDER SHIPPED TWICE");
}

static int is_drain_marker(const char *p, size_t len)
{
	return len >= 17 && memcmp(p, "{\"event\":\"drain\"}", 17) == 0;
}

/* ------------------------------------------------------------------ */
/* RabbitMQ: basic.get until the queue is empty, ack after the commit   */
/* ------------------------------------------------------------------ */

#ifdef WITH_AMQP
static void amqp_check(amqp_rpc_reply_t r, const char *what)
{
	if (r.reply_type == AMQP_RESPONSE_NORMAL)
		return;
	if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
		die(what, amqp_error_string2(r.library_error));
	die(what, "the broker closed the channel or connection");
}

static void consume_amqp(const ackbox_url *u)
{
	amqp_connection_state_t conn = amqp_new_connection();
	amqp_socket_t *sock = amqp_tcp_socket_new(conn);
	if (!sock || amqp_socket_open(sock, u->host[0] ? u->host : "127.0.0.1",
	                              u->port ? u->port : 5672) != AMQP_STATUS_OK)
		die(opt.transport, "cannot connect");
	amqp_check(amqp_login(conn, u->path[0] && u->path[1] ? u->path + 1 : "/", 0, 131072, 30,
	                      AMQP_SASL_METHOD_PLAIN, u->user ? u->user : "guest",
	                      u->password ? u->password : "guest"),
	           "login");
	amqp_channel_open(conn, 1);
	amqp_check(amqp_get_rpc_reply(conn), "channel.open");
	/* as ackbox's transport declares it (amqp.declare_queue) */
	amqp_queue_declare(conn, 1, amqp_cstring_bytes(opt.topic), 0, 1, 0, 0, amqp_empty_table);
	amqp_check(amqp_get_rpc_reply(conn), "queue.declare");
	for (;;) {
		amqp_rpc_reply_t r = amqp_basic_get(conn, 1, amqp_cstring_bytes(opt.topic), 0);
		amqp_check(r, "basic.get");
		if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD) {
			if (opt.drain)
				break;
			usleep(100 * 1000); /* an example: a real consumer uses basic.consume */
			continue;
		}
		uint64_t tag = ((amqp_basic_get_ok_t *)r.reply.decoded)->delivery_tag;
		amqp_message_t m;
		amqp_check(amqp_read_message(conn, 1, &m, 0), "reading a message");
		ackbox_id id;
		int rc = ackbox_amqp_message_id(&m.properties, &id);
		handle(&id, rc, m.body.bytes, m.body.len);
		amqp_destroy_message(&m);
		if (amqp_basic_ack(conn, 1, tag, 0) != 0)
			die("basic.ack", "failed");
		amqp_maybe_release_buffers(conn);
	}
	amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
	amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
}
#endif

/* ------------------------------------------------------------------ */
/* Kafka: a consumer group, offsets committed after the transaction     */
/* ------------------------------------------------------------------ */

#ifdef WITH_KAFKA
static void consume_kafka(const ackbox_url *u)
{
	char err[512];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	if (rd_kafka_conf_set(conf, "bootstrap.servers", u->hosts, err, sizeof(err)) ||
	    rd_kafka_conf_set(conf, "group.id", opt.consumer, err, sizeof(err)) ||
	    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof(err)) ||
	    rd_kafka_conf_set(conf, "auto.offset.reset", "earliest", err, sizeof(err)) ||
	    rd_kafka_conf_set(conf, "enable.partition.eof", "true", err, sizeof(err)) ||
	    /* a consumer restarted after a crash rejoins the group only once its
	     * dead predecessor's session has expired (librdkafka's default: 45 s) */
	    rd_kafka_conf_set(conf, "session.timeout.ms", "6000", err, sizeof(err)) ||
	    rd_kafka_conf_set(conf, "heartbeat.interval.ms", "1000", err, sizeof(err)))
		die("kafka configuration", err);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
	if (!rk)
		die("kafka", err);
	rd_kafka_poll_set_consumer(rk);
	rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
	rd_kafka_topic_partition_list_add(topics, opt.topic, RD_KAFKA_PARTITION_UA);
	if (rd_kafka_subscribe(rk, topics))
		die("kafka", "subscribe failed");
	rd_kafka_topic_partition_list_destroy(topics);
	/* partitions at their end since their last message (drain) */
	int at_end[1024] = {0};
	for (;;) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
		if (!m)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			if (m->partition >= 0 && m->partition < 1024)
				at_end[m->partition] = 1;
			rd_kafka_message_destroy(m);
			if (opt.drain) {
				rd_kafka_topic_partition_list_t *a = NULL;
				int done = rd_kafka_assignment(rk, &a) == 0 && a->cnt > 0;
				for (int i = 0; done && i < a->cnt; i++)
					done = a->elems[i].partition < 1024 && at_end[a->elems[i].partition];
				if (a)
					rd_kafka_topic_partition_list_destroy(a);
				if (done)
					break;
			}
			continue;
		}
		if (m->err) {
			/* a topic not created yet, a broker restarting: librdkafka retries */
			if (!opt.quiet)
				fprintf(stderr, "order_consumer: kafka: %s\n", rd_kafka_message_errstr(m));
			rd_kafka_message_destroy(m);
			continue;
		}
		if (m->partition >= 0 && m->partition < 1024)
			at_end[m->partition] = 0;
		ackbox_id id;
		int rc = ackbox_kafka_message_id(m, &id);
		handle(&id, rc, m->payload, m->len);
		/* the offset after this message, once the transaction committed */
		rd_kafka_commit_message(rk, m, 1);
		rd_kafka_message_destroy(m);
	}
	rd_kafka_commit(rk, NULL, 0);
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
}
#endif

/* ------------------------------------------------------------------ */
/* MQTT: a persistent session; paho calls back on its own thread        */
/* ------------------------------------------------------------------ */

#ifdef WITH_MQTT
static pthread_mutex_t mq_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t mq_cond = PTHREAD_COND_INITIALIZER;
static int mq_state; /* 0 waiting, 1 connected/subscribed, -1 failed, 2 drained */

static void mq_set(int s)
{
	pthread_mutex_lock(&mq_mtx);
	/* a persistent session's queue flows from the CONNACK on: the drain
	 * marker may arrive before the SUBACK, which must not undo it */
	if (!(s == 1 && mq_state == 2))
		mq_state = s;
	pthread_cond_broadcast(&mq_cond);
	pthread_mutex_unlock(&mq_mtx);
}

static int mq_wait(int from)
{
	int s;
	pthread_mutex_lock(&mq_mtx);
	while (mq_state == from)
		pthread_cond_wait(&mq_cond, &mq_mtx);
	s = mq_state;
	pthread_mutex_unlock(&mq_mtx);
	return s;
}

/*
 * Runs on paho's thread. Note: paho.mqtt.c sends the PUBACK for a QoS 1
 * message before it calls this (eclipse-paho/paho.mqtt.c#522), so a consumer
 * killed while a message is in here loses that one message: the broker will
 * not send it again. The inbox cannot help there (docs/consumers.md).
 */
static int on_message(void *ctx, char *topic, int topic_len, MQTTAsync_message *msg)
{
	ackbox_id id;
	const char *p = msg->payload;
	size_t len = (size_t)msg->payloadlen, off = 0;
	int rc;
	(void)ctx;
	(void)topic_len;
	if (is_drain_marker(p, len)) {
		MQTTAsync_freeMessage(&msg);
		MQTTAsync_free(topic);
		mq_set(2);
		return 1;
	}
	rc = ackbox_mqtt_message_id(&msg->properties, &id);
	if (rc == ACKBOX_ERR_NOT_FOUND) /* MQTT 3.1.1, mqtt.id_in_payload=true */
		rc = ackbox_mqtt_payload_id(p, len, &id, &off);
	handle(&id, rc, p + off, len - off);
	MQTTAsync_freeMessage(&msg);
	MQTTAsync_free(topic);
	return 1;
}

static void on_lost(void *ctx, char *cause)
{
	(void)ctx;
	fprintf(stderr, "order_consumer: mqtt connection lost: %s\n", cause ? cause : "");
	mq_set(-1);
}

static void on_sub_ok(void *ctx, MQTTAsync_successData5 *d)
{
	(void)ctx;
	(void)d;
	mq_set(1);
}

static void on_sub_ok3(void *ctx, MQTTAsync_successData *d)
{
	(void)ctx;
	(void)d;
	mq_set(1);
}

static void on_fail5(void *ctx, MQTTAsync_failureData5 *d)
{
	(void)ctx;
	fprintf(stderr, "order_consumer: mqtt: %s (reason 0x%02x)\n",
	        d && d->message ? d->message : "failed", d ? d->reasonCode : 0);
	mq_set(-1);
}

static void on_fail3(void *ctx, MQTTAsync_failureData *d)
{
	(void)ctx;
	fprintf(stderr, "order_consumer: mqtt: %s (%d)\n", d && d->message ? d->message : "failed",
	        d ? d->code : 0);
	mq_set(-1);
}

static MQTTAsync mq;

static void subscribe(void)
{
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	int v5 = strcmp(opt.mqtt_version, "5") == 0;
	if (v5) {
		ro.onSuccess5 = on_sub_ok;
		ro.onFailure5 = on_fail5;
	} else {
		ro.onSuccess = on_sub_ok3;
		ro.onFailure = on_fail3;
	}
	if (MQTTAsync_subscribe(mq, opt.topic, 1, &ro) != MQTTASYNC_SUCCESS)
		die("mqtt", "cannot subscribe");
}

static void on_connect5(void *ctx, MQTTAsync_successData5 *d)
{
	(void)ctx;
	(void)d;
	subscribe();
}

static void on_connect3(void *ctx, MQTTAsync_successData *d)
{
	(void)ctx;
	(void)d;
	subscribe();
}

static void consume_mqtt(const ackbox_url *u)
{
	char uri[512], cid[256];
	int v5 = strcmp(opt.mqtt_version, "5") == 0;
	MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
	MQTTAsync_connectOptions o = MQTTAsync_connectOptions_initializer5;
	MQTTProperties props = MQTTProperties_initializer;

	snprintf(uri, sizeof(uri), "tcp://%s:%d", u->host[0] ? u->host : "127.0.0.1",
	         u->port ? u->port : 1883);
	snprintf(cid, sizeof(cid), "%s-%s", opt.consumer, opt.topic);
	if (!v5) {
		MQTTAsync_createOptions c3 = MQTTAsync_createOptions_initializer;
		MQTTAsync_connectOptions o3 = MQTTAsync_connectOptions_initializer;
		co = c3;
		o = o3;
		o.MQTTVersion = MQTTVERSION_3_1_1;
	}
	if (MQTTAsync_createWithOptions(&mq, uri, cid, MQTTCLIENT_PERSISTENCE_NONE, NULL, &co) !=
	    MQTTASYNC_SUCCESS)
		die("mqtt", "cannot create a client");
	MQTTAsync_setCallbacks(mq, NULL, on_lost, on_message, NULL);
	/* a persistent session: what arrives while the consumer is away waits
	 * for it, and an unacknowledged delivery comes again */
	if (v5) {
		MQTTProperty p = {.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL};
		p.value.integer4 = 86400;
		MQTTProperties_add(&props, &p);
		o.cleanstart = 0;
		o.connectProperties = &props;
		o.onSuccess5 = on_connect5;
		o.onFailure5 = on_fail5;
	} else {
		o.cleansession = 0;
		o.onSuccess = on_connect3;
		o.onFailure = on_fail3;
	}
	o.keepAliveInterval = 30;
	if (u->user) {
		o.username = u->user;
		o.password = u->password;
	}
	if (MQTTAsync_connect(mq, &o) != MQTTASYNC_SUCCESS)
		die("mqtt", "cannot start connecting");
	if (mq_wait(0) < 0)
		die(opt.transport, "cannot connect and subscribe");
	if (!opt.subscribe_only && mq_wait(1) < 0)
		die(opt.transport, "connection lost");
	MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
	d.timeout = 2000;
	MQTTAsync_disconnect(mq, &d);
	MQTTProperties_free(&props);
	/* paho's thread is gone after the disconnect: destroy waits for it */
	MQTTAsync_destroy(&mq);
}
#endif

int main(int argc, char **argv)
{
	char err[512];
	ackbox_url u;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--drain"))
			opt.drain = 1;
		else if (!strcmp(a, "--subscribe-only"))
			opt.subscribe_only = 1;
		else if (!strcmp(a, "--cleanup"))
			opt.cleanup = 1;
		else if (!strcmp(a, "--quiet"))
			opt.quiet = 1;
		else if (v && !strcmp(a, "--transport"))
			opt.transport = argv[++i];
		else if (v && !strcmp(a, "--db"))
			opt.db = argv[++i];
		else if (v && !strcmp(a, "--pg"))
			opt.pg = argv[++i];
		else if (v && !strcmp(a, "--pg-schema"))
			opt.schema = argv[++i];
		else if (v && !strcmp(a, "--topic"))
			opt.topic = argv[++i];
		else if (v && !strcmp(a, "--consumer"))
			opt.consumer = argv[++i];
		else if (v && !strcmp(a, "--mqtt-version"))
			opt.mqtt_version = argv[++i];
		else if (v && !strcmp(a, "--crash-after"))
			opt.crash_after = atoi(argv[++i]);
		else if (v && !strcmp(a, "--crash-before-commit"))
			opt.crash_before_commit = atoi(argv[++i]);
		else {
			fprintf(stderr, "order_consumer: unknown or incomplete option %s (see the "
			                "comment at the top of order_consumer.c)\n",
			        a);
			return 2;
		}
	}
	if (!opt.transport || (!opt.db == !opt.pg)) {
		fprintf(stderr, "usage: order_consumer --transport URL (--db FILE | --pg CONNINFO) "
		                "[--topic T] [--consumer NAME] [--drain] [--quiet]\n");
		return 2;
	}
#ifndef WITH_PG
	if (opt.pg)
		die("--pg", "this build has no PostgreSQL support");
#endif
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (ackbox_url_parse(opt.transport, &u, err, sizeof(err)) != 0)
		die("--transport", err);
	if (!opt.subscribe_only) {
		db_open();
		if (opt.cleanup)
			db_cleanup();
	}
	if (0) {
	}
#ifdef WITH_AMQP
	else if (!strcmp(u.scheme, "amqp"))
		consume_amqp(&u);
#endif
#ifdef WITH_KAFKA
	else if (!strcmp(u.scheme, "kafka"))
		consume_kafka(&u);
#endif
#ifdef WITH_MQTT
	else if (!strcmp(u.scheme, "mqtt"))
		consume_mqtt(&u);
#endif
	else
		die(opt.transport, "no consumer for this scheme in this build (amqp, kafka, mqtt)");
	ackbox_url_fini(&u);
	if (!opt.subscribe_only) {
		db_report();
		printf("summary deliveries=%ld first=%ld duplicates=%ld without_id=%ld\n",
		       atomic_load(&deliveries), atomic_load(&firsts), atomic_load(&duplicates),
		       atomic_load(&without_id));
	}
	if (sq)
		sqlite3_close(sq);
#ifdef WITH_PG
	if (pg)
		PQfinish(pg);
#endif
	return 0;
}
