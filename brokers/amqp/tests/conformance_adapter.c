/*
 * conformance_adapter.c - the AMQP transport's conformance adapter: a RabbitMQ of
 * each test's own (rabbitmq.sh in this folder; SIGKILL for a kill: RabbitMQ
 * confirms a persistent message to a durable queue after writing it),
 * reached through the suite's proxy; a durable queue per topic on the
 * default exchange, read back with basic.get. The refusal is a topic no
 * queue is bound to (basic.return 312 NO_ROUTE). The broker's
 * max_message_size is set to 64 KiB and told to ackbox (amqp.max_message_size).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

#include <ackbox/conformance.h>

#define MAX_MESSAGE 65536

static char fixture_dir[1100];
static int port;
static ackbox_tc_proxy *proxy;
/* the queues prepare() declared (each test runs in a child of its own) */
static char prepared[16][128];
static size_t nprepared;

static int fixture(const char *verb, char *err, size_t n)
{
	return ackbox_tc_sh(err, n, "bash %s %s %s >/dev/null", RABBITMQ_FIXTURE_SCRIPT, verb,
	                    fixture_dir);
}

/* The broker's max_message_size, a run-time setting (set again after a restart). */
static int set_max_message(char *err, size_t n)
{
	return ackbox_tc_sh(err, n,
	                    "bash %s eval %s 'application:set_env(rabbit, max_message_size, %d).' "
	                    ">/dev/null",
	                    RABBITMQ_FIXTURE_SCRIPT, fixture_dir, MAX_MESSAGE);
}

static int a_start(void *o, const char *dir, char *url, size_t url_size, char *err, size_t n)
{
	char env[1200], p[32];
	int pport = 0;
	(void)o;
	snprintf(fixture_dir, sizeof(fixture_dir), "%s/rabbit", dir);
	if (fixture("start", err, n))
		return -1;
	snprintf(env, sizeof(env), "%s/env", fixture_dir);
	if (ackbox_tc_env(env, "AMQP_PORT", p, sizeof(p))) {
		snprintf(err, n, "%s: no AMQP_PORT", env);
		return -1;
	}
	port = atoi(p);
	if (set_max_message(err, n))
		return -1;
	if (!(proxy = ackbox_tc_proxy_start(port, &pport))) {
		snprintf(err, n, "cannot start the proxy");
		return -1;
	}
	snprintf(url, url_size, "amqp://guest:guest@127.0.0.1:%d", pport);
	return 0;
}

static void a_stop(void *o)
{
	char err[256];
	(void)o;
	ackbox_tc_proxy_stop(proxy);
	proxy = NULL;
	fixture("stop", err, sizeof(err));
}

/*
 * SIGKILL. RabbitMQ forgets a queue SIGKILLed within about a second of its
 * declaration (docs/reliability.md, "Limits of the brokers"), so the queues'
 * declarations are dumped into mnesia's tables first (the topology, not the
 * message store): the suite measures the transport, not that limit.
 */
static int a_kill(void *o, char *err, size_t n)
{
	(void)o;
	if (ackbox_tc_sh(err, n, "bash %s eval %s 'mnesia:dump_log().' >/dev/null",
	                 RABBITMQ_FIXTURE_SCRIPT, fixture_dir))
		return -1;
	return fixture("kill", err, n);
}

static int a_cut(void *o, char *err, size_t n)
{
	(void)o;
	(void)err;
	(void)n;
	ackbox_tc_proxy_cut(proxy);
	return 0;
}

/* A connection straight to the broker, channel 1 open. */
static amqp_connection_state_t connect_direct(char *err, size_t n)
{
	amqp_connection_state_t c = amqp_new_connection();
	amqp_socket_t *s = amqp_tcp_socket_new(c);
	amqp_rpc_reply_t r;
	if (!s || amqp_socket_open(s, "127.0.0.1", port) != AMQP_STATUS_OK) {
		snprintf(err, n, "cannot reach RabbitMQ on port %d", port);
		amqp_destroy_connection(c);
		return NULL;
	}
	r = amqp_login(c, "/", 0, AMQP_DEFAULT_FRAME_SIZE, 0, AMQP_SASL_METHOD_PLAIN, "guest",
	               "guest");
	if (r.reply_type == AMQP_RESPONSE_NORMAL) {
		amqp_channel_open(c, 1);
		r = amqp_get_rpc_reply(c);
	}
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		snprintf(err, n, "login/channel.open refused");
		amqp_destroy_connection(c);
		return NULL;
	}
	return c;
}

static void close_direct(amqp_connection_state_t c)
{
	amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
	amqp_connection_close(c, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(c);
}

/*
 * Whether queue answers a passive queue.declare. A broker restarted after
 * SIGKILL opens its AMQP port while it may still be recovering its durable
 * queues: until then the default exchange returns publishes to them as
 * 312 NO_ROUTE, which is no outage for the transport to ride out.
 */
static int queue_back(const char *queue)
{
	char err[256];
	amqp_connection_state_t c = connect_direct(err, sizeof(err));
	if (!c)
		return 0;
	amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 1, 1, 0, 0, amqp_empty_table);
	int ok = amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL;
	if (ok) {
		close_direct(c);
	} else { /* a 404 closed the channel, not the connection */
		amqp_connection_close(c, AMQP_REPLY_SUCCESS);
		amqp_destroy_connection(c);
	}
	return ok;
}

/* Started again with its data: every queue the test declared is back. */
static int a_restart(void *o, char *err, size_t n)
{
	time_t deadline;
	(void)o;
	if (fixture("restart", err, n) || set_max_message(err, n))
		return -1;
	deadline = time(NULL) + 90;
	for (size_t i = 0; i < nprepared; i++) {
		while (!queue_back(prepared[i])) {
			if (time(NULL) >= deadline) {
				snprintf(err, n, "queue %s not back 90 s after the restart", prepared[i]);
				return -1;
			}
			struct timespec ts = {0, 200 * 1000 * 1000};
			nanosleep(&ts, NULL);
		}
	}
	return 0;
}

static int a_prepare(void *o, const char *topic, char *err, size_t n)
{
	amqp_connection_state_t c = connect_direct(err, n);
	(void)o;
	if (!c)
		return -1;
	amqp_queue_declare(c, 1, amqp_cstring_bytes(topic), 0, 1, 0, 0, amqp_empty_table);
	amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
	close_direct(c);
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		snprintf(err, n, "queue.declare %s refused", topic);
		return -1;
	}
	if (nprepared < sizeof(prepared) / sizeof(prepared[0]))
		snprintf(prepared[nprepared++], sizeof(prepared[0]), "%s", topic);
	return 0;
}

/* basic.get until the queue is empty and at least expect came (bounded). */
static int a_consume(void *o, const char *topic, size_t expect, ackbox_tc_found_cb found,
                     void *arg, char *err, size_t n)
{
	amqp_connection_state_t c = connect_direct(err, n);
	time_t deadline = time(NULL) + 60;
	size_t got = 0;
	(void)o;
	if (!c)
		return -1;
	while (time(NULL) < deadline) {
		amqp_rpc_reply_t r = amqp_basic_get(c, 1, amqp_cstring_bytes(topic), 1);
		if (r.reply_type != AMQP_RESPONSE_NORMAL) {
			snprintf(err, n, "basic.get %s failed", topic);
			close_direct(c);
			return -1;
		}
		if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD) {
			if (got >= expect)
				break;
			struct timespec ts = {0, 50 * 1000 * 1000};
			nanosleep(&ts, NULL);
			continue;
		}
		amqp_message_t m;
		r = amqp_read_message(c, 1, &m, 0);
		if (r.reply_type != AMQP_RESPONSE_NORMAL) {
			snprintf(err, n, "reading a message of %s failed", topic);
			close_direct(c);
			return -1;
		}
		if ((m.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) &&
		    m.properties.message_id.len == 36) {
			char text[ACKBOX_ID_STRLEN] = "";
			ackbox_id id;
			memcpy(text, m.properties.message_id.bytes, 36);
			if (ackbox_id_parse(text, &id) == 0)
				found(arg, &id);
		}
		got++;
		amqp_destroy_message(&m);
	}
	close_direct(c);
	return 0;
}

static int a_refusal(void *o, ackbox_tc_refusal *r, char *err, size_t n)
{
	(void)o;
	(void)err;
	(void)n;
	snprintf(r->topic, sizeof(r->topic), "tc_noqueue");
	r->broker_code = 312;
	r->outcome = ACKBOX_OUTCOME_UNROUTABLE;
	return 0;
}

static const char *const a_conf[] = {"amqp.max_message_size=65536", NULL};

static const ackbox_tc_adapter adapter = {
	.struct_size = sizeof(ackbox_tc_adapter),
	.name = "amqp",
	.start = a_start,
	.stop = a_stop,
	.kill = a_kill,
	.restart = a_restart,
	.cut = a_cut,
	.prepare = a_prepare,
	.consume = a_consume,
	.refusal = a_refusal,
	.oversized = MAX_MESSAGE + 1,
	.conf = a_conf,
};

int main(int argc, char **argv)
{
	return ackbox_tc_main(&adapter, argc, argv);
}
