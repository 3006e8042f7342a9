/*
 * scaleout.c - several relay PROCESSES share one PostgreSQL outbox and
 * deliver a backlog to RabbitMQ; an independent consumer then checks that
 * every message arrived at least once, and that duplicates appear only where
 * a lease expired (--kill-one: a relay SIGKILLed mid-run, whose leased rows
 * the others take over once retry.timeout passes).
 *
 *   pg_scaleout --pg postgres://u@h:p/db (--amqp amqp://u:p@h:p |
 *               --kafka kafka://host:port | --loopback)
 *               [--messages N] [--relays R] [--payload BYTES] [--window W]
 *               [--lease MS] [--kill-one] [--quiet]
 *
 * --kafka relays to a Kafka cluster instead (brokers/kafka/tests/kafka-mock.sh:
 * librdkafka's mock cluster in a process of its own) and counts what arrived
 * with a librdkafka consumer of its own (built when the Kafka transport is).
 * --loopback replaces the broker by the in-process loopback broker (each relay
 * reports the indices it delivered): what the store costs, without a broker.
 * Prints one line "relays=R messages=N seconds=S msg_per_s=X delivered=D
 * duplicates=U missing=M ..." and exits 0 only if the checks hold.
 * docs/scaleout.md has the measured figures; scaleout.sh runs the bench.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <libpq-fe.h>

#include <ackbox/ackbox.h>

#include "ackbox_loopback.h"
#ifdef SCALEOUT_KAFKA
#include <librdkafka/rdkafka.h>
#endif

#define MAX_RELAYS 32

static struct {
	const char *pg, *amqp, *kafka;
	long messages;
	int relays, payload, window, kill_one, quiet, loopback;
	long lease_ms;
} opt = {NULL, NULL, NULL, 20000, 4, 64, 512, 0, 0, 0, 10000};

static char store_url[1024], queue[64], schema[64];
static pid_t children[MAX_RELAYS]; /* the parent's relays, killed if it gives up */
static int nchildren;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "pg_scaleout: ");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	for (int i = 0; i < nchildren; i++)
		if (children[i] > 0)
			kill(children[i], SIGKILL);
	exit(2);
}

static void set(ackbox_conf *c, const char *k, const char *v)
{
	char err[512];
	if (ackbox_conf_set(c, k, v, err, sizeof(err)) != 0)
		die("%s=%s: %s", k, v, err);
}

/* ------------------------------------------------------------------ */
/* The independent side: RabbitMQ and PostgreSQL without ackbox         */
/* ------------------------------------------------------------------ */

static amqp_connection_state_t amqp_open_conn(void)
{
	struct amqp_connection_info ci;
	char *u = strdup(opt.amqp);
	amqp_connection_state_t conn = amqp_new_connection();
	amqp_socket_t *sock = amqp_tcp_socket_new(conn);
	amqp_rpc_reply_t r;
	if (amqp_parse_url(u, &ci) != AMQP_STATUS_OK)
		die("bad AMQP URL %s", opt.amqp);
	if (amqp_socket_open(sock, ci.host, ci.port) != AMQP_STATUS_OK)
		die("cannot connect to %s", opt.amqp);
	r = amqp_login(conn, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
		die("AMQP login to %s failed", opt.amqp);
	amqp_channel_open(conn, 1);
	if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
		die("AMQP channel.open failed");
	free(u);
	return conn;
}

static void amqp_close_conn(amqp_connection_state_t conn)
{
	amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
	amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
}

/* Declares the queue (durable) and returns its message count. */
static uint32_t queue_declare(amqp_connection_state_t conn)
{
	amqp_queue_declare_ok_t *ok = amqp_queue_declare(conn, 1, amqp_cstring_bytes(queue), 0, 1, 0,
	                                                 0, amqp_empty_table);
	if (!ok)
		die("queue.declare %s failed", queue);
	return ok->message_count;
}

/*
 * Consumes everything in the queue (no-ack) and counts each message index.
 * Returns the number consumed; counts[i] is how often message i arrived.
 */
static long drain(amqp_connection_state_t conn, unsigned *counts, long *bad)
{
	long expect = queue_declare(conn), got = 0;
	amqp_basic_consume(conn, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 1, 0,
	                   amqp_empty_table);
	if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
		die("basic.consume failed");
	*bad = 0;
	while (got < expect) {
		amqp_envelope_t env;
		struct timeval tv = {10, 0};
		amqp_maybe_release_buffers(conn);
		amqp_rpc_reply_t r = amqp_consume_message(conn, &env, &tv, 0);
		if (r.reply_type != AMQP_RESPONSE_NORMAL)
			die("consuming: %ld of %ld messages, then nothing for 10 s", got, expect);
		char idx[16] = "";
		size_t l = env.message.body.len < 8 ? env.message.body.len : 8;
		memcpy(idx, env.message.body.bytes, l);
		long i = strtol(idx, NULL, 10);
		if (l == 8 && i >= 0 && i < opt.messages)
			counts[i]++;
		else
			(*bad)++;
		amqp_destroy_envelope(&env);
		got++;
	}
	return got;
}

#ifdef SCALEOUT_KAFKA
/*
 * Reads the topic from the beginning of every partition up to the high
 * watermarks it had once the relays were done, with a consumer of its own,
 * and counts each message index. Returns the number read.
 */
static long kafka_drain(unsigned *counts, long *bad)
{
	char err[512], bs[512];
	const rd_kafka_metadata_t *md = NULL;
	rd_kafka_conf_t *kc = rd_kafka_conf_new();
	long expect = 0, got = 0;
	double deadline;
	snprintf(bs, sizeof(bs), "%s", opt.kafka + strlen("kafka://"));
	bs[strcspn(bs, "/?")] = '\0';
	if (rd_kafka_conf_set(kc, "bootstrap.servers", bs, err, sizeof(err)) != RD_KAFKA_CONF_OK ||
	    rd_kafka_conf_set(kc, "group.id", "ackbox-scaleout-check", err, sizeof(err)) !=
	        RD_KAFKA_CONF_OK ||
	    rd_kafka_conf_set(kc, "enable.auto.commit", "false", err, sizeof(err)) != RD_KAFKA_CONF_OK)
		die("kafka consumer conf: %s", err);
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
	if (!rk)
		die("kafka consumer: %s", err);
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, queue, NULL);
	rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
	if (e || md->topic_cnt != 1 || md->topics[0].err)
		die("kafka metadata of %s: %s", queue,
		    rd_kafka_err2str(e ? e : md->topic_cnt ? md->topics[0].err : RD_KAFKA_RESP_ERR_UNKNOWN));
	int parts = md->topics[0].partition_cnt;
	rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(parts);
	for (int p = 0; p < parts; p++) {
		int64_t lo, hi;
		int32_t id = md->topics[0].partitions[p].id;
		if ((e = rd_kafka_query_watermark_offsets(rk, queue, id, &lo, &hi, 10000)) != 0)
			die("kafka watermarks of %s [%d]: %s", queue, (int)id, rd_kafka_err2str(e));
		/* the mock cluster keeps a few MB per partition and drops the
		 * oldest beyond that: what it dropped cannot be checked */
		if (lo > 0)
			die("kafka: %s [%d] starts at offset %lld: the cluster dropped its oldest "
			    "messages (the mock keeps a few MB per partition); use fewer or smaller "
			    "messages", queue, (int)id, (long long)lo);
		expect += hi;
		rd_kafka_topic_partition_list_add(list, queue, id)->offset = RD_KAFKA_OFFSET_BEGINNING;
	}
	rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
	if ((e = rd_kafka_assign(rk, list)) != 0)
		die("kafka assign: %s", rd_kafka_err2str(e));
	rd_kafka_topic_partition_list_destroy(list);
	*bad = 0;
	deadline = now_s() + 120;
	while (got < expect) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 1000);
		if (now_s() > deadline)
			die("consuming: %ld of %ld messages in 120 s", got, expect);
		if (!m)
			continue;
		if (m->err) {
			if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
				die("consuming: %s", rd_kafka_message_errstr(m));
			rd_kafka_message_destroy(m);
			continue;
		}
		char idx[16] = "";
		size_t l = m->len < 8 ? m->len : 8;
		memcpy(idx, m->payload, l);
		long i = strtol(idx, NULL, 10);
		if (l == 8 && i >= 0 && i < opt.messages)
			counts[i]++;
		else
			(*bad)++;
		rd_kafka_message_destroy(m);
		got++;
	}
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	return got;
}
#endif

static void no_notice(void *arg, const char *msg)
{
	(void)arg;
	(void)msg;
}

static void pg_exec(const char *q)
{
	PGconn *c = PQconnectdb(opt.pg);
	if (PQstatus(c) != CONNECTION_OK)
		die("connect %s: %s", opt.pg, PQerrorMessage(c));
	PQsetNoticeProcessor(c, no_notice, NULL);
	PGresult *r = PQexec(c, q);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die("%s: %s", q, PQresultErrorMessage(r));
	PQclear(r);
	PQfinish(c);
}

/*
 * --kill-one: waits until relay 0 holds leases mid-run, SIGKILLs it, and
 * marks in `expired` the messages whose lease died with it (rows it leased
 * and had not deleted). Only those may arrive twice. Returns their number.
 */
static long kill_relay0(pid_t pid, unsigned char *expired)
{
	PGconn *c = PQconnectdb(opt.pg);
	char q[400];
	long held = 0, left, n = 0;
	double deadline = now_s() + 60;
	if (PQstatus(c) != CONNECTION_OK)
		die("connect %s: %s", opt.pg, PQerrorMessage(c));
	snprintf(q, sizeof(q),
	         "SELECT count(*) FILTER (WHERE lease_owner = 'scaleout-relay0'), count(*)"
	         " FROM %s.ackbox_outbox WHERE state < 2",
	         schema);
	for (;;) {
		PGresult *r = PQexec(c, q);
		if (PQresultStatus(r) != PGRES_TUPLES_OK)
			die("%s: %s", q, PQresultErrorMessage(r));
		held = atol(PQgetvalue(r, 0, 0));
		left = atol(PQgetvalue(r, 0, 1));
		PQclear(r);
		/* under way (a quarter delivered), relay 0 holding some leases */
		if (held > 0 && left < opt.messages * 3 / 4)
			break;
		if (now_s() > deadline || left == 0)
			die("relay 0 never held a lease mid-run (left %ld)", left);
		usleep(2000);
	}
	kill(pid, SIGKILL);
	snprintf(q, sizeof(q),
	         "SELECT convert_from(substring(payload from 1 for 8), 'UTF8') FROM %s.ackbox_outbox"
	         " WHERE state < 2 AND lease_owner = 'scaleout-relay0'",
	         schema);
	PGresult *r = PQexec(c, q);
	if (PQresultStatus(r) != PGRES_TUPLES_OK)
		die("%s: %s", q, PQresultErrorMessage(r));
	for (int i = 0; i < PQntuples(r); i++) {
		long k = atol(PQgetvalue(r, i, 0));
		if (k >= 0 && k < opt.messages && !expired[k]) {
			expired[k] = 1;
			n++;
		}
	}
	PQclear(r);
	PQfinish(c);
	return n;
}

/* ------------------------------------------------------------------ */
/* The ackbox side                                                      */
/* ------------------------------------------------------------------ */

/* Writes the backlog with a handle that has no relay: rows due now. */
static double load(void)
{
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab;
	char err[512], *bodies;
	ackbox_msg *m;
	enum { BATCH = 500 };
	double t0;

	set(c, "store.url", store_url);
	set(c, "postgres.relay_id", "scaleout-loader");
	if (ackbox_new(&ab, c, err, sizeof(err)) != 0)
		die("ackbox_new(%s): %s", store_url, err);
	bodies = malloc((size_t)BATCH * (size_t)opt.payload);
	m = calloc(BATCH, sizeof(*m));
	t0 = now_s();
	for (long i = 0; i < opt.messages; i += BATCH) {
		long n = opt.messages - i < BATCH ? opt.messages - i : BATCH;
		for (long k = 0; k < n; k++) {
			char *b = bodies + k * opt.payload;
			memset(b, 'x', (size_t)opt.payload);
			char idx[24];
			snprintf(idx, sizeof(idx), "%08ld", (i + k) % 100000000);
			memcpy(b, idx, 8);
			m[k].topic = queue;
			m[k].payload = b;
			m[k].payload_len = (size_t)opt.payload;
		}
		if (ackbox_publish_batch(ab, m, (size_t)n, NULL, err, sizeof(err)) != 0)
			die("publish_batch: %s", err);
	}
	t0 = now_s() - t0;
	ackbox_destroy(ab);
	free(bodies);
	free(m);
	return t0;
}

typedef struct child_state {
	long acked;
} child_state;

static void on_report(const ackbox_report *r, void *opaque)
{
	child_state *s = opaque;
	if (r->state == ACKBOX_MSG_ACKED)
		s->acked++;
}

static void quiet_log(ackbox_log_level level, const char *component, const char *msg, void *o)
{
	(void)o;
	if (level <= ACKBOX_LOG_ERROR)
		fprintf(stderr, "relay %d: %s: %s\n", (int)getpid(), component, msg);
}

/* One relay process: waits for the gate, relays until the outbox is empty. */
static void relay_main(int idx, int gate_fd, int result_fd)
{
	ackbox_conf *c = ackbox_conf_new();
	child_state st = {0};
	ackbox *ab;
	char err[512], buf[64];

	set(c, "store.url", store_url);
	snprintf(buf, sizeof(buf), "scaleout-relay%d", idx);
	set(c, "postgres.relay_id", buf); /* so the parent can see relay 0's leases */
	if (opt.loopback) {
		snprintf(buf, sizeof(buf), "loopback://relay%d", idx);
		set(c, "transport.url", buf);
	} else {
		set(c, "transport.url", opt.kafka ? opt.kafka : opt.amqp);
	}
	snprintf(buf, sizeof(buf), "%ldms", opt.lease_ms);
	set(c, "retry.timeout", buf);
	snprintf(buf, sizeof(buf), "%d", opt.window);
	set(c, "transport.window", buf);
	set(c, "store.poll_interval", "50ms");
	ackbox_conf_set_report_cb(c, on_report, &st);
	ackbox_conf_set_log_cb(c, quiet_log, NULL);
	if (read(gate_fd, buf, 1) < 0) /* returns 0 when the parent opens the gate */
		_exit(3);
	if (ackbox_new(&ab, c, err, sizeof(err)) != 0) {
		fprintf(stderr, "relay %d: %s\n", idx, err);
		_exit(4);
	}
	/* the outbox is shared: flush returns once every relay emptied it */
	int rc = ackbox_flush(ab, 600000);
	ackbox_destroy(ab);
	snprintf(buf, sizeof(buf), "%ld %d\n", st.acked, rc);
	if (write(result_fd, buf, strlen(buf)) < 0)
		_exit(5);
	if (opt.loopback) {
		/* what this relay's broker received: one index per line */
		snprintf(buf, sizeof(buf), "relay%d", idx);
		ackbox_loopback *lb = ackbox_loopback_get(buf);
		FILE *f = fdopen(result_fd, "w");
		char body[16];
		for (size_t i = 0;; i++) {
			size_t len = 8;
			if (ackbox_loopback_message(lb, i, NULL, NULL, 0, body, &len, NULL) != 0)
				break;
			fprintf(f, "%.8s\n", body);
		}
		fclose(f);
	}
	_exit(rc == 0 ? 0 : 6);
}

static void usage(void)
{
	fprintf(stderr, "usage: pg_scaleout --pg URL (--amqp URL | --kafka URL | --loopback) "
	                "[--messages N] [--relays R] [--payload BYTES] [--window W] [--lease MS] "
	                "[--kill-one] [--quiet]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int gate[2], results[MAX_RELAYS][2];
	pid_t pids[MAX_RELAYS];
	long acked[MAX_RELAYS] = {0};
	int exit_ok[MAX_RELAYS] = {0};
	double load_s, t0, secs;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--pg") && v)
			opt.pg = argv[++i];
		else if (!strcmp(a, "--amqp") && v)
			opt.amqp = argv[++i];
		else if (!strcmp(a, "--kafka") && v)
			opt.kafka = argv[++i];
		else if (!strcmp(a, "--messages") && v)
			opt.messages = atol(argv[++i]);
		else if (!strcmp(a, "--relays") && v)
			opt.relays = atoi(argv[++i]);
		else if (!strcmp(a, "--payload") && v)
			opt.payload = atoi(argv[++i]);
		else if (!strcmp(a, "--window") && v)
			opt.window = atoi(argv[++i]);
		else if (!strcmp(a, "--lease") && v)
			opt.lease_ms = atol(argv[++i]);
		else if (!strcmp(a, "--kill-one"))
			opt.kill_one = 1;
		else if (!strcmp(a, "--quiet"))
			opt.quiet = 1;
		else if (!strcmp(a, "--loopback"))
			opt.loopback = 1;
		else
			usage();
	}
	if (!!opt.amqp + !!opt.kafka + !!opt.loopback != 1)
		usage();
#ifndef SCALEOUT_KAFKA
	if (opt.kafka)
		die("--kafka: this pg_scaleout was built without the Kafka transport");
#endif
	if (opt.kafka && strncmp(opt.kafka, "kafka://", 8) != 0)
		die("--kafka %s: expected kafka://host:port", opt.kafka);
	if (!opt.pg || opt.messages < 1 || opt.relays < 1 || opt.relays > MAX_RELAYS ||
	    opt.payload < 8 || opt.window < 1 || (opt.kill_one && (opt.relays < 2 || opt.loopback)))
		usage();
	snprintf(schema, sizeof(schema), "scaleout_%d", (int)getpid());
	snprintf(queue, sizeof(queue), "ackbox_scaleout_%d", (int)getpid());
	snprintf(store_url, sizeof(store_url), "%s?schema=%s", opt.pg, schema);

	amqp_connection_state_t conn;
	if (opt.amqp) {
		conn = amqp_open_conn();
		queue_declare(conn);
		amqp_queue_purge(conn, 1, amqp_cstring_bytes(queue));
		amqp_close_conn(conn);
	}

	load_s = load();
	if (!opt.quiet)
		fprintf(stderr, "loaded %ld messages in %.2f s (%.0f msg/s, one handle, batches of 500)\n",
		        opt.messages, load_s, opt.messages / load_s);

	if (pipe(gate) != 0)
		die("pipe: %s", strerror(errno));
	for (int i = 0; i < opt.relays; i++) {
		if (pipe(results[i]) != 0)
			die("pipe: %s", strerror(errno));
		pids[i] = fork();
		if (pids[i] < 0)
			die("fork: %s", strerror(errno));
		if (pids[i] == 0) {
			nchildren = 0; /* a relay never kills its siblings */
			close(gate[1]);
			close(results[i][0]);
			relay_main(i, gate[0], results[i][1]);
		}
		children[nchildren++] = pids[i];
		close(results[i][1]);
	}
	close(gate[0]);
	t0 = now_s();
	close(gate[1]); /* every relay starts now */
	unsigned *counts = calloc((size_t)opt.messages, sizeof(*counts));
	unsigned char *expired = calloc((size_t)opt.messages, 1);
	long bad = 0, delivered = 0, missing = 0, dups = 0, sum_acked = 0, n_expired = 0;
	long dups_outside = 0;
	if (opt.kill_one)
		n_expired = kill_relay0(pids[0], expired);
	FILE *res[MAX_RELAYS];
	/* a relay writes its first line once the outbox is empty, before anything else */
	for (int i = 0; i < opt.relays; i++) {
		char line[64];
		res[i] = fdopen(results[i][0], "r");
		if (res[i] && fgets(line, sizeof(line), res[i]))
			acked[i] = atol(line);
	}
	secs = now_s() - t0;
	for (int i = 0; i < opt.relays; i++) {
		int st;
		char line[64];
		while (res[i] && fgets(line, sizeof(line), res[i])) { /* --loopback: what arrived */
			long k = strtol(line, NULL, 10);
			delivered++;
			if (k >= 0 && k < opt.messages)
				counts[k]++;
			else
				bad++;
		}
		if (res[i])
			fclose(res[i]);
		waitpid(pids[i], &st, 0);
		children[i] = -1; /* reaped: the pid may be reused */
		exit_ok[i] = WIFEXITED(st) && WEXITSTATUS(st) == 0;
		if (opt.kill_one && i == 0) {
			if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL))
				die("relay 0 was to be killed but %s", WIFEXITED(st) ? "exited" : "died");
			acked[i] = -1; /* unknown: it died */
		} else if (!exit_ok[i]) {
			die("relay %d failed (status 0x%x)", i, st);
		}
	}

	/* what the broker holds, counted independently */
#ifdef SCALEOUT_KAFKA
	if (opt.kafka)
		delivered = kafka_drain(counts, &bad);
#endif
	if (opt.amqp) {
		conn = amqp_open_conn();
		delivered = drain(conn, counts, &bad);
		amqp_queue_delete(conn, 1, amqp_cstring_bytes(queue), 0, 0);
		amqp_close_conn(conn);
	}
	for (long i = 0; i < opt.messages; i++) {
		if (counts[i] == 0)
			missing++;
		else
			dups += counts[i] - 1;
		if (counts[i] > 1 && !expired[i])
			dups_outside++;
	}
	for (int i = 0; i < opt.relays; i++)
		if (acked[i] > 0)
			sum_acked += acked[i];
	free(counts);
	free(expired);

	char q[200];
	snprintf(q, sizeof(q), "DROP SCHEMA %s CASCADE", schema);
	pg_exec(q);

	printf("transport=%s relays=%d messages=%ld payload=%d seconds=%.2f msg_per_s=%.0f "
	       "delivered=%ld duplicates=%ld missing=%ld foreign=%ld acked_reports=%ld killed=%s "
	       "expired_leases=%ld dups_outside_expired=%ld per_relay=",
	       opt.loopback ? "loopback" : opt.kafka ? "kafka" : "amqp", opt.relays, opt.messages,
	       opt.payload, secs, opt.messages / secs, delivered, dups, missing, bad, sum_acked,
	       opt.kill_one ? "relay0" : "none", n_expired, dups_outside);
	for (int i = 0; i < opt.relays; i++)
		printf(i ? ",%ld" : "%ld", acked[i]);
	printf("\n");
	fflush(stdout);

	/* every message at least once; a duplicate only where a lease expired
	 * (none without --kill-one: then also one report per message) */
	int ok = missing == 0 && bad == 0 && dups_outside == 0 &&
	         (opt.kill_one || (dups == 0 && sum_acked == opt.messages));
	if (!ok)
		fprintf(stderr, "pg_scaleout: FAILED (missing=%ld duplicates=%ld of which %ld outside "
		                "expired leases, foreign=%ld acked_reports=%ld)\n",
		        missing, dups, dups_outside, bad, sum_acked);
	return ok ? 0 : 1;
}
