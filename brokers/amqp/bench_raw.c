/*
 * bench_raw.c - ackbox-bench's part for AMQP (examples/bench/bench.h): the
 * raw publisher, rabbitmq-c alone with publisher confirms and the same
 * window, and the durable queue both kinds of round publish to, declared and
 * emptied before each round.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

#include "bench.h"

static const char *amqp_reply_err(amqp_rpc_reply_t r)
{
	static char buf[160];
	if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
		return amqp_error_string2(r.library_error);
	if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION) {
		snprintf(buf, sizeof(buf), "server exception (method 0x%08x)", r.reply.id);
		return buf;
	}
	return r.reply_type == AMQP_RESPONSE_NORMAL ? "ok" : "no reply";
}

/* Connects, opens channel 1 and (optionally) puts it in confirm mode. */
static amqp_connection_state_t amqp_raw_connect(const char *url, bool confirms, char *err,
                                                size_t errn)
{
	struct amqp_connection_info ci;
	char *u = strdup(url);
	amqp_connection_state_t conn = NULL;
	amqp_socket_t *sock;
	amqp_rpc_reply_t r;
	struct timeval tv = {10, 0};
	int rc;

	if (!u || amqp_parse_url(u, &ci) != AMQP_STATUS_OK) {
		snprintf(err, errn, "cannot parse %s", url);
		goto fail;
	}
	conn = amqp_new_connection();
	sock = amqp_tcp_socket_new(conn);
	if (!sock) {
		snprintf(err, errn, "amqp_tcp_socket_new failed");
		goto fail;
	}
	rc = amqp_socket_open_noblock(sock, ci.host, ci.port, &tv);
	if (rc != AMQP_STATUS_OK) {
		snprintf(err, errn, "connecting to %s:%d: %s", ci.host, ci.port, amqp_error_string2(rc));
		goto fail;
	}
	amqp_set_rpc_timeout(conn, &tv);
	r = amqp_login(conn, ci.vhost && *ci.vhost ? ci.vhost : "/", 0, AMQP_DEFAULT_FRAME_SIZE, 0,
	               AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		snprintf(err, errn, "login: %s", amqp_reply_err(r));
		goto fail;
	}
	amqp_channel_open(conn, 1);
	r = amqp_get_rpc_reply(conn);
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		snprintf(err, errn, "channel.open: %s", amqp_reply_err(r));
		goto fail;
	}
	if (confirms) {
		amqp_confirm_select(conn, 1);
		r = amqp_get_rpc_reply(conn);
		if (r.reply_type != AMQP_RESPONSE_NORMAL) {
			snprintf(err, errn, "confirm.select: %s", amqp_reply_err(r));
			goto fail;
		}
	}
	free(u);
	return conn;
fail:
	if (conn)
		amqp_destroy_connection(conn);
	free(u);
	return NULL;
}

static void amqp_raw_close(amqp_connection_state_t conn)
{
	amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
	amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
}

/*
 * Declares the durable queue both modes publish to (the default exchange
 * routes topic "ackbox-bench" to it) and empties it, so every round starts
 * from the same broker state.
 */
static int amqp_prepare_queue(const bench_opts *o, char *err, size_t errn)
{
	amqp_connection_state_t conn = amqp_raw_connect(o->url, false, err, errn);
	amqp_rpc_reply_t r;
	if (!conn)
		return -1;
	amqp_queue_declare(conn, 1, amqp_cstring_bytes(BENCH_TOPIC), 0, 1, 0, 0, amqp_empty_table);
	r = amqp_get_rpc_reply(conn);
	if (r.reply_type == AMQP_RESPONSE_NORMAL) {
		amqp_queue_purge(conn, 1, amqp_cstring_bytes(BENCH_TOPIC));
		r = amqp_get_rpc_reply(conn);
	}
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		snprintf(err, errn, "declaring/purging queue %s: %s", BENCH_TOPIC,
		         amqp_reply_err(r));
		amqp_destroy_connection(conn);
		return -1;
	}
	amqp_raw_close(conn);
	return 0;
}

/* Marks tags [from, to] answered (1-based tags = sequence + 1). */
static void amqp_raw_answer(const bench_opts *o, bench_times *t, uint8_t *done, uint64_t from,
                            uint64_t to, bool ack, bench_result *r, int64_t now)
{
	for (uint64_t tag = from; tag <= to && tag <= t->n; tag++) {
		size_t i = (size_t)(tag - 1);
		if (done[i])
			continue;
		bool ok = ack;
		done[i] = 1;
		if (o->each) {
			ok = bench_answered(o, i, ack);
			now = bench_now_ns(); /* after the application's DELETE */
		}
		if (ok) {
			t->ack[i] = now;
			r->acked++;
		} else {
			r->failed++;
		}
	}
}

static void raw_amqp(const bench_opts *o, bench_times *t, bench_result *r, int64_t deadline)
{
	char err[256];
	char *payload = bench_payload(o->size);
	uint8_t *done = calloc(t->n, 1);
	amqp_connection_state_t conn = NULL;
	amqp_basic_properties_t p;
	int window = o->window ? o->window : 1024;
	uint64_t base = 1; /* lowest tag not yet answered */
	size_t sent = 0;

	if (!payload || !done) {
		bench_fail(r, "out of memory");
		goto out;
	}
	if (!(conn = amqp_raw_connect(o->url, true, err, sizeof(err)))) {
		bench_fail(r, "raw amqp: %s", err);
		goto out;
	}
	memset(&p, 0, sizeof(p));
	/* what ackbox sends too: persistent, with a 36-character message id */
	p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
	p.delivery_mode = 2;
	int64_t start = bench_now_ns();
	while (base <= t->n) {
		int64_t now = bench_now_ns();
		if (now > deadline) {
			bench_fail(r, "raw amqp: round exceeded --max-seconds (%zu of %zu acked)",
			           r->acked, t->n);
			break;
		}
		/* fill the window */
		while (sent < t->n && sent + 1 - base < (uint64_t)window) {
			ackbox_id id;
			char idtext[ACKBOX_ID_STRLEN];
			if (o->rate && bench_due_ns(o, start, sent) > bench_now_ns())
				break; /* not due yet */
			ackbox_id_new(&id);
			ackbox_id_format(&id, idtext);
			p.message_id = amqp_cstring_bytes(idtext);
			t->pub[sent] = o->rate ? bench_due_ns(o, start, sent) : bench_now_ns();
			if (bench_before(o, sent) != 0)
				goto out;
			int rc = amqp_basic_publish(conn, 1, amqp_cstring_bytes(""),
			                            amqp_cstring_bytes(BENCH_TOPIC), 1, 0, &p,
			                            (amqp_bytes_t){o->size, payload});
			if (rc != AMQP_STATUS_OK) {
				bench_fail(r, "raw amqp: basic.publish: %s",
				           amqp_error_string2(rc));
				goto out;
			}
			sent++;
			if (sent % 64 == 0)
				break; /* read confirms now and then while filling */
		}
		/* read confirms: wait only when the window is full or all is sent */
		bool must_wait = sent == t->n || sent + 1 - base >= (uint64_t)window;
		struct timeval tv = {0, must_wait ? 100000 : 0};
		if (!must_wait && o->rate) {
			/* or until the next message is due */
			int64_t d = (bench_due_ns(o, start, sent) - bench_now_ns()) / 1000;
			tv.tv_usec = d <= 0 ? 0 : d < 100000 ? (suseconds_t)d : 100000;
		}
		for (;;) {
			amqp_frame_t f;
			int rc = amqp_simple_wait_frame_noblock(conn, &f, &tv);
			if (rc == AMQP_STATUS_TIMEOUT)
				break;
			if (rc != AMQP_STATUS_OK) {
				bench_fail(r, "raw amqp: reading confirms: %s",
				           amqp_error_string2(rc));
				goto out;
			}
			tv.tv_usec = 0; /* after the first frame, only what is there already */
			if (f.frame_type != AMQP_FRAME_METHOD)
				continue; /* the header/body of a basic.return */
			now = bench_now_ns();
			switch (f.payload.method.id) {
			case AMQP_BASIC_ACK_METHOD: {
				amqp_basic_ack_t *m = f.payload.method.decoded;
				amqp_raw_answer(o, t, done, m->multiple ? base : m->delivery_tag,
				                m->delivery_tag, true, r, now);
				break;
			}
			case AMQP_BASIC_NACK_METHOD: {
				amqp_basic_nack_t *m = f.payload.method.decoded;
				amqp_raw_answer(o, t, done, m->multiple ? base : m->delivery_tag,
				                m->delivery_tag, false, r, now);
				break;
			}
			case AMQP_BASIC_RETURN_METHOD:
				r->failed++; /* counted again by its ack: the queue must exist */
				break;
			case AMQP_CHANNEL_CLOSE_METHOD:
			case AMQP_CONNECTION_CLOSE_METHOD:
				bench_fail(r, "raw amqp: the broker closed the channel");
				goto out;
			default:
				break;
			}
			while (base <= t->n && done[base - 1])
				base++;
		}
	}
out:
	if (conn)
		amqp_raw_close(conn);
	free(payload);
	free(done);
}

/* the reliable rounds publish to the queue that prepare declared */
static const char *const amqp_reliable_sets[] = {"amqp.declare_queue=true", NULL};

const bench_transport bench_transport_amqp = {
	.scheme = "amqp",
	.reliable_sets = amqp_reliable_sets,
	.prepare = amqp_prepare_queue,
	.run_raw = raw_amqp,
};
