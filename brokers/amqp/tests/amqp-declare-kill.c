/*
 * amqp-declare-kill - does RabbitMQ keep what it confirmed in a queue declared
 * milliseconds before it is SIGKILLed? rabbitmq-c alone, no ackbox code: the
 * reproducer for the AMQP outage loss in docs/reliability.md.
 *
 *   amqp-declare-kill URL QUEUE N KILL_AFTER BROKER_PID [DELAY_MS]
 *
 * Declares QUEUE durable, then publishes N persistent 32-byte messages to it
 * (default exchange, mandatory, publisher confirms, up to 1024 unconfirmed,
 * as ackbox does), and SIGKILLs BROKER_PID as soon as KILL_AFTER of them are
 * confirmed (0: right after declare-ok, before any publish), or DELAY_MS
 * later (publishing nothing more meanwhile). The environment variable
 * QUEUE_TYPE=quorum declares a quorum queue (x-queue-type) instead of a
 * classic one. Prints
 *
 *   declared_ms=D confirmed=C returned=R nacked=K killed_ms=T
 *
 * with times since the declare was sent. C counts the publishes RabbitMQ
 * had confirmed when the kill was sent (basic.ack, multiple included): after
 * the broker restarts, the queue must hold at least C messages
 * (amqp-drain --count). Exit 0 once the kill is sent, 1 on an error first.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

#define CHANNEL 1
#define WINDOW 1024

static double ms_since(const struct timespec *t0)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) * 1e3 + (double)(t.tv_nsec - t0->tv_nsec) / 1e6;
}

static int fail(const char *what, int rc)
{
	fprintf(stderr, "amqp-declare-kill: %s: %s\n", what, amqp_error_string2(rc));
	return 1;
}

int main(int argc, char **argv)
{
	struct amqp_connection_info ci;
	amqp_connection_state_t conn;
	amqp_socket_t *sock;
	amqp_rpc_reply_t r;
	struct timeval tv = {30, 0};
	struct timespec t0;
	uint64_t n, kill_after, sent = 0, confirmed = 0, returned = 0, nacked = 0;
	double declared_ms;
	char body[32];
	pid_t broker;

	if (argc != 6 && argc != 7) {
		fprintf(stderr, "usage: amqp-declare-kill URL QUEUE N KILL_AFTER BROKER_PID [DELAY_MS]\n");
		return 2;
	}
	char *url = strdup(argv[1]);
	const char *queue = argv[2];
	n = strtoull(argv[3], NULL, 10);
	kill_after = strtoull(argv[4], NULL, 10);
	broker = (pid_t)atol(argv[5]);
	long delay_ms = argc == 7 ? atol(argv[6]) : 0;
	amqp_default_connection_info(&ci);
	unsigned char *acked = calloc(n + 1, 1);
	if (!url || !acked || amqp_parse_url(url, &ci) != AMQP_STATUS_OK || kill_after > n ||
	    broker <= 1) {
		fprintf(stderr, "amqp-declare-kill: bad arguments\n");
		return 2;
	}
	conn = amqp_new_connection();
	sock = amqp_tcp_socket_new(conn);
	if (!sock || amqp_socket_open_noblock(sock, ci.host, ci.port, &tv) != AMQP_STATUS_OK) {
		fprintf(stderr, "amqp-declare-kill: cannot connect to %s:%d\n", ci.host, ci.port);
		return 1;
	}
	r = amqp_login(conn, ci.vhost, 0, AMQP_DEFAULT_FRAME_SIZE, 0, AMQP_SASL_METHOD_PLAIN, ci.user,
	               ci.password);
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
		return fail("login", r.library_error);
	amqp_channel_open(conn, CHANNEL);
	r = amqp_get_rpc_reply(conn);
	if (r.reply_type == AMQP_RESPONSE_NORMAL) {
		amqp_confirm_select(conn, CHANNEL);
		r = amqp_get_rpc_reply(conn);
	}
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
		return fail("confirm channel", r.library_error);

	clock_gettime(CLOCK_MONOTONIC, &t0);
	amqp_table_entry_t qtype = {amqp_cstring_bytes("x-queue-type"),
	                            {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("quorum")}}};
	amqp_table_t args = amqp_empty_table;
	if (getenv("QUEUE_TYPE") && strcmp(getenv("QUEUE_TYPE"), "quorum") == 0)
		args = (amqp_table_t){1, &qtype};
	amqp_queue_declare(conn, CHANNEL, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
	r = amqp_get_rpc_reply(conn);
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
		return fail("queue.declare", r.library_error);
	declared_ms = ms_since(&t0);

	amqp_basic_properties_t p;
	memset(&p, 0, sizeof(p));
	p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
	p.delivery_mode = 2;
	while (confirmed < kill_after) {
		/* keep up to WINDOW publishes unconfirmed, then read answers */
		while (sent < n && sent - confirmed - returned - nacked < WINDOW) {
			int len = snprintf(body, sizeof(body), "%llu ", (unsigned long long)(sent + 1));
			memset(body + len, 'x', sizeof(body) - (size_t)len);
			amqp_bytes_t b = {sizeof(body), body};
			int rc = amqp_basic_publish(conn, CHANNEL, amqp_empty_bytes,
			                            amqp_cstring_bytes(queue), 1, 0, &p, b);
			if (rc != AMQP_STATUS_OK)
				return fail("basic.publish", rc);
			sent++;
		}
		amqp_frame_t f;
		int rc = amqp_simple_wait_frame(conn, &f);
		if (rc != AMQP_STATUS_OK)
			return fail("waiting for confirms", rc);
		if (f.frame_type != AMQP_FRAME_METHOD)
			continue;
		if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
			amqp_basic_ack_t *a = f.payload.method.decoded;
			/* tags are 1..sent; multiple covers every tag up to it */
			uint64_t lo = a->multiple ? 1 : a->delivery_tag;
			for (uint64_t t = lo; t <= a->delivery_tag && t <= sent; t++)
				if (!acked[t]) {
					acked[t] = 1;
					confirmed++;
				}
		} else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
			nacked++;
		} else if (f.payload.method.id == AMQP_BASIC_RETURN_METHOD) {
			amqp_message_t m;
			amqp_read_message(conn, CHANNEL, &m, 0);
			amqp_destroy_message(&m);
			returned++;
		} else if (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
		           f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
			fprintf(stderr, "amqp-declare-kill: the broker closed the channel\n");
			return 1;
		}
		amqp_maybe_release_buffers(conn);
	}
	if (delay_ms > 0) {
		struct timespec d = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
		nanosleep(&d, NULL); /* the delay is what the experiment varies */
	}
	kill(broker, SIGKILL);
	printf("declared_ms=%.1f confirmed=%llu returned=%llu nacked=%llu killed_ms=%.1f\n",
	       declared_ms, (unsigned long long)confirmed, (unsigned long long)returned,
	       (unsigned long long)nacked, ms_since(&t0));
	free(acked);
	free(url);
	return 0;
}
