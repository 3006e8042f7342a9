/*
 * amqp-drain - the crash suite's AMQP consumer: rabbitmq-c alone, no ackbox
 * code. amqp-consume forks a command per message (26 s for 5000 here);
 * this reads a queue empty with basic.get in well under a second.
 *
 *   amqp-drain URL QUEUE           print every message body, one per line,
 *                                  until the queue is empty (acked as read)
 *   amqp-drain --count URL QUEUE   print the queue's message count, or
 *                                  "absent" if it does not exist (a passive
 *                                  declare), and read nothing
 *   amqp-drain --declare URL QUEUE...  declare each QUEUE durable, on one
 *                                  connection (the crash suite declares its
 *                                  queues ahead of the faults)
 *
 * URL is amqp://user:password@host:port[/vhost]. Exit 0, or 1 with a line on
 * stderr naming what failed.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

#define CHANNEL 1

static int die(const char *what, amqp_rpc_reply_t r)
{
	if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
		fprintf(stderr, "amqp-drain: %s: %s\n", what, amqp_error_string2(r.library_error));
	else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
	         r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
		amqp_channel_close_t *m = r.reply.decoded;
		fprintf(stderr, "amqp-drain: %s: %u %.*s\n", what, m->reply_code,
		        (int)m->reply_text.len, (char *)m->reply_text.bytes);
	} else
		fprintf(stderr, "amqp-drain: %s: failed (reply type %d)\n", what, r.reply_type);
	return 1;
}

int main(int argc, char **argv)
{
	int count_only = argc > 1 && strcmp(argv[1], "--count") == 0;
	int declare = argc > 1 && strcmp(argv[1], "--declare") == 0;
	struct amqp_connection_info ci;
	char *url;
	amqp_connection_state_t conn;
	amqp_socket_t *sock;
	amqp_rpc_reply_t r;
	struct timeval tv = {30, 0};

	int opt = count_only || declare;
	if (declare ? argc < 4 : argc != 3 + opt) {
		fprintf(stderr, "usage: amqp-drain [--count] URL QUEUE | --declare URL QUEUE...\n");
		return 2;
	}
	url = strdup(argv[1 + opt]);
	const char *queue = argv[2 + opt];
	amqp_default_connection_info(&ci);
	if (!url || amqp_parse_url(url, &ci) != AMQP_STATUS_OK) {
		fprintf(stderr, "amqp-drain: cannot parse %s\n", argv[1 + opt]);
		return 2;
	}
	conn = amqp_new_connection();
	sock = amqp_tcp_socket_new(conn);
	if (!sock || amqp_socket_open_noblock(sock, ci.host, ci.port, &tv) != AMQP_STATUS_OK) {
		fprintf(stderr, "amqp-drain: cannot connect to %s:%d\n", ci.host, ci.port);
		return 1;
	}
	amqp_set_rpc_timeout(conn, &tv);
	r = amqp_login(conn, ci.vhost, 0, AMQP_DEFAULT_FRAME_SIZE, 0, AMQP_SASL_METHOD_PLAIN, ci.user,
	               ci.password);
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
		return die("login", r);
	amqp_channel_open(conn, CHANNEL);
	r = amqp_get_rpc_reply(conn);
	if (r.reply_type != AMQP_RESPONSE_NORMAL)
		return die("channel.open", r);
	if (declare) {
		for (int i = 3; i < argc; i++) {
			amqp_queue_declare(conn, CHANNEL, amqp_cstring_bytes(argv[i]), 0, 1, 0, 0,
			                   amqp_empty_table);
			r = amqp_get_rpc_reply(conn);
			if (r.reply_type != AMQP_RESPONSE_NORMAL)
				return die(argv[i], r);
		}
		amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
		amqp_destroy_connection(conn);
		free(url);
		return 0;
	}
	if (count_only) {
		amqp_queue_declare_ok_t *ok = amqp_queue_declare(
		    conn, CHANNEL, amqp_cstring_bytes(queue), 1, 0, 0, 0, amqp_empty_table);
		r = amqp_get_rpc_reply(conn);
		if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
		    r.reply.id == AMQP_CHANNEL_CLOSE_METHOD &&
		    ((amqp_channel_close_t *)r.reply.decoded)->reply_code == AMQP_NOT_FOUND) {
			printf("absent\n");
			return 0;
		}
		if (!ok)
			return die("queue.declare (passive)", r);
		printf("%u\n", ok->message_count);
		return 0;
	}
	for (;;) {
		amqp_message_t msg;
		r = amqp_basic_get(conn, CHANNEL, amqp_cstring_bytes(queue), 1);
		if (r.reply_type != AMQP_RESPONSE_NORMAL)
			return die("basic.get", r);
		if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD)
			break;
		r = amqp_read_message(conn, CHANNEL, &msg, 0);
		if (r.reply_type != AMQP_RESPONSE_NORMAL)
			return die("reading a message", r);
		fwrite(msg.body.bytes, 1, msg.body.len, stdout);
		putchar('\n');
		amqp_destroy_message(&msg);
		amqp_maybe_release_buffers(conn);
	}
	amqp_channel_close(conn, CHANNEL, AMQP_REPLY_SUCCESS);
	amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(conn);
	free(url);
	return fflush(stdout) == 0 ? 0 : 1;
}
