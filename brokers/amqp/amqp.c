/*
 * amqp.c - the AMQP 0-9-1 transport (RabbitMQ) over rabbitmq-c: publisher
 * confirms on one channel, mandatory publishes, a bounded confirm window.
 * It reports what the broker says; the core resends and reconnects.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#include <ackbox/pemfile.h>
#include <ackbox/transport.h>

/* OpenTelemetry messaging.system for the metrics */
#define SYSTEM_NAME "rabbitmq"

#define CHANNEL 1

/* AMQP 0-9-1 short strings (routing key, exchange, content type, field-table
 * names) carry a one-byte length. */
#define SHORTSTR_MAX 255
/* rabbitmq-c writes the properties in one content-header frame no larger
 * than frame_max: 7 bytes of frame header, 12 of class id, weight and body
 * size, the properties, and 1 frame-end byte. */
#define HEADER_FRAME_OVERHEAD 20

/* One unconfirmed publish, found by (tag - base) in a ring. */
typedef struct slot {
	uint64_t token; /* 0: answered */
	ackbox_id id;
	size_t body_len; /* to find the publish a max_message_size refusal names */
} slot;

typedef struct amqp_ctx {
	ackbox_tx_host *host;
	/* settings */
	char *host_name, *user, *password, *vhost, *exchange, *conn_name, *cacert;
	int port, tls, verify_peer, heartbeat_s, window, mandatory, declare_queue;
	size_t max_message; /* amqp.max_message_size: set by open, read by validate */
	/* connection */
	amqp_connection_state_t conn;
	int connected;
	/* confirms: tags start at 1 per channel and grow by one per publish */
	slot *ring;
	size_t ring_cap;
	uint64_t base_tag; /* lowest tag not yet answered */
	uint64_t next_tag; /* tag of the next publish */
	size_t outstanding;
	/* queues declared on this connection (amqp.declare_queue) */
	char **declared;
	size_t ndeclared;
} amqp_ctx;

static const ackbox_prop amqp_props[] = {
	{"exchange", ACKBOX_PROP_STRING, "", 0, 0, NULL,
	 "Exchange to publish to; the topic is the routing key. \"\" is the default exchange, so "
	 "topic 'orders' lands in queue 'orders'."},
	{"window", ACKBOX_PROP_INT, "1024", 1, 65535, NULL,
	 "Unconfirmed publishes at once (measured: ~3k msg/s at 1, ~27k msg/s at 1024)."},
	{"heartbeat", ACKBOX_PROP_DURATION, "30s", 0, 3600000, NULL,
	 "AMQP heartbeat; 0 disables. The URL query ?heartbeat=SECONDS overrides it."},
	{"connection_name", ACKBOX_PROP_STRING, "ackbox", 0, 0, NULL,
	 "Client-provided connection name shown by the management UI (URL ?name=...)."},
	{"mandatory", ACKBOX_PROP_BOOL, "true", 0, 0, NULL,
	 "Publish with mandatory=true so unroutable messages come back (basic.return) instead of "
	 "being confirmed and dropped."},
	{"max_message_size", ACKBOX_PROP_INT, "134217728", 1, 536870912, NULL,
	 "The broker's max_message_size (RabbitMQ does not announce it; 3.10's default is 128 MiB): "
	 "larger bodies are refused at publish instead of costing the channel."},
	{"declare_queue", ACKBOX_PROP_BOOL, "false", 0, 0, NULL,
	 "Declare a durable queue named like the topic before its first publish (demos)."},
	{"cacert", ACKBOX_PROP_STRING, NULL, 0, 0, NULL, "amqps: CA certificate file (PEM)."},
	{"verify_peer", ACKBOX_PROP_BOOL, "true", 0, 0, NULL,
	 "amqps: verify the broker's certificate and host name."},
	{NULL, 0, NULL, 0, 0, NULL, NULL}};

static const char *conf(amqp_ctx *c, const char *key)
{
	return ackbox_conf_get(ackbox_tx_conf(c->host), key);
}

static int conf_bool(amqp_ctx *c, const char *key)
{
	int b = 0;
	const char *v = conf(c, key);
	if (v)
		ackbox_parse_bool(v, &b);
	return b;
}

static char *dup_or(const char *s, const char *def)
{
	return strdup(s && *s ? s : def);
}

static void free_settings(amqp_ctx *c)
{
	free(c->ring);
	free(c->declared);
	free(c->host_name);
	free(c->user);
	free(c->password);
	free(c->vhost);
	free(c->exchange);
	free(c->conn_name);
	free(c->cacert);
	memset(c, 0, sizeof(*c));
}

static int open_(amqp_ctx *c, const ackbox_url *url, ackbox_tx_host *host, ackbox_tx_info *info,
                 char *errstr, size_t errstr_size);

/* close() is not called when open fails: free what was made here. */
static int amqp_open_(void *vctx, const ackbox_url *url, ackbox_tx_host *host, ackbox_tx_info *info,
                      char *errstr, size_t errstr_size)
{
	amqp_ctx *c = vctx;
	int rc = open_(c, url, host, info, errstr, errstr_size);
	if (rc)
		free_settings(c);
	return rc;
}

/* The URL's query parameters (ackbox_url_query_check: no others, each once, never empty). */
static const char *const amqp_query[] = {"heartbeat", "name", NULL};

static int open_(amqp_ctx *c, const ackbox_url *url, ackbox_tx_host *host, ackbox_tx_info *info,
                 char *errstr, size_t errstr_size)
{
	char q[256];
	int64_t hb_ms = 30000;
	int rc;

	c->host = host;
	rc = ackbox_url_query_check(url, "transport.url", amqp_query, errstr, errstr_size);
	if (rc)
		return rc;
	/* rabbitmq-c connects to one broker: a list would be cut to its first
	 * host without a word, so it is refused (a cluster goes behind one
	 * address: a load balancer, or DNS) */
	if (strchr(url->hosts, ',')) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "transport.url: amqp takes one broker (host:port), not a list; put "
		                  "a RabbitMQ cluster behind one address (a load balancer or a DNS "
		                  "name)");
		return ACKBOX_ERR_BAD_URL;
	}
	c->tls = strcmp(url->scheme, "amqps") == 0;
	c->host_name = dup_or(url->host, "127.0.0.1");
	c->port = url->port ? url->port : (c->tls ? 5671 : 5672);
	c->user = dup_or(url->user, "guest");
	c->password = dup_or(url->password, "guest");
	/* "/" and "" both mean the default vhost; "/%2F" is the explicit spelling */
	c->vhost = dup_or(url->path[0] == '/' ? url->path + 1 : url->path, "/");
	c->exchange = dup_or(conf(c, "amqp.exchange"), "");
	if (ackbox_url_query_get(url, "name", q, sizeof(q)))
		c->conn_name = strdup(q);
	else
		c->conn_name = dup_or(conf(c, "amqp.connection_name"), "ackbox");
	if (conf(c, "amqp.cacert")) {
		/* a CA file that cannot be read is a configuration error, found
		 * now (exit 2 from the CLI), not a broker that cannot be reached */
		const char *ca = conf(c, "amqp.cacert");
		int rc = ackbox_pem_file_check("amqp.cacert", ca, errstr, errstr_size);
		if (rc)
			return rc;
		c->cacert = strdup(ca);
	}
	c->verify_peer = conf_bool(c, "amqp.verify_peer");
	c->mandatory = conf_bool(c, "amqp.mandatory");
	c->declare_queue = conf_bool(c, "amqp.declare_queue");
	c->window = atoi(conf(c, "amqp.window"));
	ackbox_parse_duration_ms(conf(c, "amqp.heartbeat"), &hb_ms);
	c->heartbeat_s = (int)(hb_ms / 1000);
	if (ackbox_url_query_get(url, "heartbeat", q, sizeof(q))) {
		char *end;
		long v = strtol(q, &end, 10);
		if (*end || end == q || v < 0 || v > 65535) {
			char shown[64];
			ackbox_escape(q, strlen(q), shown, sizeof(shown));
			ackbox_errstr_set(errstr, errstr_size,
			                  "transport.url: heartbeat=%s is not a number of seconds "
			                  "(0 to 65535)",
			                  shown);
			return ACKBOX_ERR_BAD_URL;
		}
		c->heartbeat_s = (int)v;
	}
	if (!c->host_name || !c->user || !c->password || !c->vhost || !c->exchange || !c->conn_name)
		return ACKBOX_ERR_NOMEM;
	if (strlen(c->exchange) > SHORTSTR_MAX) {
		/* rabbitmq-c would refuse to encode every publish */
		ackbox_errstr_set(errstr, errstr_size,
		                  "amqp.exchange: %zu bytes; an AMQP exchange name is a short "
		                  "string of at most %d bytes",
		                  strlen(c->exchange), SHORTSTR_MAX);
		return ACKBOX_ERR_BAD_VALUE;
	}
	c->ring_cap = 1;
	while (c->ring_cap < (size_t)c->window)
		c->ring_cap *= 2;
	c->ring = calloc(c->ring_cap, sizeof(*c->ring));
	if (!c->ring)
		return ACKBOX_ERR_NOMEM;
	info->max_inflight = c->window;
	info->system_name = SYSTEM_NAME;
	c->max_message = (size_t)atoll(conf(c, "amqp.max_message_size"));
	/* what the operator says the broker's max_message_size is: RabbitMQ
	 * checks it too, but only after the publish, by closing the channel */
	info->max_message_size = c->max_message;
	return 0;
}

/* Text for a failed RPC reply. */
static void reply_text(amqp_rpc_reply_t r, char *buf, size_t n)
{
	switch (r.reply_type) {
	case AMQP_RESPONSE_NORMAL:
		snprintf(buf, n, "ok");
		break;
	case AMQP_RESPONSE_NONE:
		snprintf(buf, n, "missing RPC reply");
		break;
	case AMQP_RESPONSE_LIBRARY_EXCEPTION:
		snprintf(buf, n, "%s", amqp_error_string2(r.library_error));
		break;
	case AMQP_RESPONSE_SERVER_EXCEPTION:
		if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
			amqp_connection_close_t *m = r.reply.decoded;
			snprintf(buf, n, "connection closed by broker: %u %.*s", m->reply_code,
			         (int)m->reply_text.len, (char *)m->reply_text.bytes);
		} else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			amqp_channel_close_t *m = r.reply.decoded;
			snprintf(buf, n, "channel closed by broker: %u %.*s", m->reply_code,
			         (int)m->reply_text.len, (char *)m->reply_text.bytes);
		} else {
			snprintf(buf, n, "broker error (method 0x%08x)", r.reply.id);
		}
		break;
	}
}

/* The broker's reply code in a failed RPC reply, 0 if it did not answer. */
static int reply_code(amqp_rpc_reply_t r)
{
	if (r.reply_type != AMQP_RESPONSE_SERVER_EXCEPTION)
		return 0;
	if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
		return ((amqp_connection_close_t *)r.reply.decoded)->reply_code;
	if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
		return ((amqp_channel_close_t *)r.reply.decoded)->reply_code;
	return 0;
}

static void teardown(amqp_ctx *c)
{
	if (c->conn) {
		/* no graceful close: the peer may be gone and we must not block */
		amqp_destroy_connection(c->conn);
		c->conn = NULL;
	}
	c->connected = 0;
	memset(c->ring, 0, c->ring_cap * sizeof(*c->ring));
	c->outstanding = 0;
	c->base_tag = c->next_tag = 1;
	for (size_t i = 0; i < c->ndeclared; i++)
		free(c->declared[i]);
	c->ndeclared = 0;
}

/*
 * The connection is gone: every unconfirmed publish is in doubt. code is the
 * broker's reply code when the broker closed it (0 otherwise); it and why
 * become the reason the core gives a message that kills every connection.
 */
static int lost(amqp_ctx *c, int code, const char *why)
{
	ackbox_tx_event ev = {ACKBOX_TX_DISCONNECTED, 0, code, 1, why};
	ackbox_tx_log(c->host, ACKBOX_LOG_WARN, "connection to %s:%d lost: %s", c->host_name, c->port,
	              why);
	teardown(c);
	ackbox_tx_report(c->host, &ev);
	return ACKBOX_ERR_TRANSPORT;
}

/* What a TLS failure of rabbitmq-c means, for the error line. */
static const char *tls_hint(const amqp_ctx *c, int rc)
{
	switch (rc) {
	case AMQP_STATUS_SSL_PEER_VERIFY_FAILED:
		return c->cacert ? " (the broker's certificate is not signed by the CA in amqp.cacert)"
		                 : " (the broker's certificate is not signed by a CA this system "
		                   "trusts: set amqp.cacert)";
	case AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED:
		return " (the broker's certificate does not name the host of transport.url)";
	case AMQP_STATUS_SSL_CONNECTION_FAILED:
		return " (the TLS handshake failed: is the port a TLS listener?)";
	default:
		return "";
	}
}

static int amqp_connect_(void *vctx, int timeout_ms, char *errstr, size_t errstr_size)
{
	amqp_ctx *c = vctx;
	amqp_socket_t *sock;
	struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
	amqp_table_entry_t props[1];
	amqp_table_t ptab = {1, props};
	amqp_rpc_reply_t r;
	char why[256];
	int rc;

	teardown(c);
	c->conn = amqp_new_connection();
	if (!c->conn)
		return ACKBOX_ERR_NOMEM;
	sock = c->tls ? amqp_ssl_socket_new(c->conn) : amqp_tcp_socket_new(c->conn);
	if (!sock) {
		ackbox_errstr_set(errstr, errstr_size, "amqp: cannot create a socket");
		teardown(c);
		return ACKBOX_ERR_TRANSPORT;
	}
	if (c->tls) {
		amqp_ssl_socket_set_verify_peer(sock, c->verify_peer);
		amqp_ssl_socket_set_verify_hostname(sock, c->verify_peer);
		if (c->cacert && amqp_ssl_socket_set_cacert(sock, c->cacert) != AMQP_STATUS_OK) {
			ackbox_errstr_set(errstr, errstr_size, "amqps: cannot read CA file %s",
			                  c->cacert);
			teardown(c);
			return ACKBOX_ERR_TRANSPORT;
		}
	}
	amqp_set_handshake_timeout(c->conn, &tv);
	amqp_set_rpc_timeout(c->conn, &tv);
	rc = amqp_socket_open_noblock(sock, c->host_name, c->port, &tv);
	if (rc != AMQP_STATUS_OK) {
		ackbox_errstr_set(errstr, errstr_size, "amqp: cannot connect to %s:%d: %s%s",
		                  c->host_name, c->port, amqp_error_string2(rc), tls_hint(c, rc));
		teardown(c);
		return ACKBOX_ERR_TRANSPORT;
	}
	props[0].key = amqp_cstring_bytes("connection_name");
	props[0].value.kind = AMQP_FIELD_KIND_UTF8;
	props[0].value.value.bytes = amqp_cstring_bytes(c->conn_name);
	r = amqp_login_with_properties(c->conn, c->vhost, 0, AMQP_DEFAULT_FRAME_SIZE, c->heartbeat_s,
	                               &ptab, AMQP_SASL_METHOD_PLAIN, c->user, c->password);
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		reply_text(r, why, sizeof(why));
		ackbox_errstr_set(errstr, errstr_size, "amqp: login to %s:%d vhost '%s' as '%s' failed: %s%s",
		                  c->host_name, c->port, c->vhost, c->user, why,
		                  reply_code(r) == AMQP_ACCESS_REFUSED
		                      ? " (a wrong user or password, or a user without access to "
		                        "this vhost)"
		                      : "");
		teardown(c);
		return ACKBOX_ERR_TRANSPORT;
	}
	amqp_channel_open(c->conn, CHANNEL);
	r = amqp_get_rpc_reply(c->conn);
	if (r.reply_type == AMQP_RESPONSE_NORMAL) {
		amqp_confirm_select(c->conn, CHANNEL);
		r = amqp_get_rpc_reply(c->conn);
	}
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		reply_text(r, why, sizeof(why));
		ackbox_errstr_set(errstr, errstr_size, "amqp: opening a confirm channel on %s:%d: %s",
		                  c->host_name, c->port, why);
		teardown(c);
		return ACKBOX_ERR_TRANSPORT;
	}
	c->connected = 1;
	return 0;
}

static slot *slot_of(amqp_ctx *c, uint64_t tag)
{
	return &c->ring[tag & (c->ring_cap - 1)];
}

static void answer(amqp_ctx *c, uint64_t tag, ackbox_tx_event_kind kind, int code,
                   const char *why)
{
	slot *s;
	if (tag < c->base_tag || tag >= c->next_tag)
		return;
	s = slot_of(c, tag);
	if (!s->token)
		return;
	ackbox_tx_event ev = {kind, s->token, code, kind == ACKBOX_TX_NACK, why};
	ackbox_tx_report(c->host, &ev);
	s->token = 0;
	c->outstanding--;
}

static void advance_base(amqp_ctx *c)
{
	while (c->base_tag < c->next_tag && slot_of(c, c->base_tag)->token == 0)
		c->base_tag++;
}

/* basic.ack / basic.nack, with multiple=true covering every tag up to it. */
static void confirm(amqp_ctx *c, uint64_t tag, int multiple, int ack)
{
	ackbox_tx_event_kind kind = ack ? ACKBOX_TX_ACK : ACKBOX_TX_NACK;
	const char *why = ack ? NULL : "basic.nack (the broker could not take it: queue full with "
	                               "x-overflow=reject-publish, or an internal error)";
	if (multiple) {
		size_t before = c->outstanding;
		for (uint64_t t = c->base_tag; t <= tag && t < c->next_tag; t++)
			answer(c, t, kind, 0, why);
		ackbox_tx_log(c->host, ACKBOX_LOG_DEBUG,
		              "basic.%s multiple up to tag %llu answered %zu publish(es)",
		              ack ? "ack" : "nack", (unsigned long long)tag, before - c->outstanding);
	} else {
		answer(c, tag, kind, 0, why);
	}
	advance_base(c);
}

/* basic.return precedes the basic.ack for the same publish: report it as
 * unroutable first, so the ack that follows falls through. */
static int returned(amqp_ctx *c, amqp_basic_return_t *ret)
{
	amqp_message_t msg;
	amqp_rpc_reply_t r = amqp_read_message(c->conn, CHANNEL, &msg, 0);
	char why[512], ex[128], rk[300];
	ackbox_id id;
	char idtext[ACKBOX_ID_STRLEN];

	/* names echoed back by the broker are shown escaped: a routing key may
	 * hold any byte, and this text reaches logs and `ackbox list` */
	ackbox_escape(ret->exchange.bytes, ret->exchange.len, ex, sizeof(ex));
	ackbox_escape(ret->routing_key.bytes, ret->routing_key.len, rk, sizeof(rk));
	snprintf(why, sizeof(why), "%u %.*s (exchange '%s', routing key '%s')", ret->reply_code,
	         (int)ret->reply_text.len, (char *)ret->reply_text.bytes, ex, rk);
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		char text[256];
		reply_text(r, text, sizeof(text));
		snprintf(why, sizeof(why), "reading a returned message failed: %s", text);
		return lost(c, reply_code(r), why);
	}
	if ((msg.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) &&
	    msg.properties.message_id.len == ACKBOX_ID_STRLEN - 1) {
		memcpy(idtext, msg.properties.message_id.bytes, ACKBOX_ID_STRLEN - 1);
		idtext[ACKBOX_ID_STRLEN - 1] = '\0';
		if (ackbox_id_parse(idtext, &id) == 0) {
			for (uint64_t t = c->base_tag; t < c->next_tag; t++) {
				slot *s = slot_of(c, t);
				if (s->token && memcmp(&s->id, &id, sizeof(id)) == 0) {
					answer(c, t, ACKBOX_TX_UNROUTABLE, ret->reply_code, why);
					break;
				}
			}
		}
	}
	amqp_destroy_message(&msg);
	advance_base(c);
	return 0;
}

/*
 * A channel error is the answer to a publish (404 no such exchange, 403
 * access refused, 406 over max_message_size): the publishes it concerns
 * failed an attempt, so a message that always causes it ends FAILED instead
 * of cycling through reconnects. RabbitMQ names neither the publish nor its
 * tag, so every unconfirmed publish pays an attempt, unless the text names
 * a body size ("message size N is larger than configured max size M"):
 * then only the publishes of N bytes do, and the others are in doubt, as
 * after any lost connection (when nothing matches, all pay).
 */
static int channel_closed(amqp_ctx *c, amqp_channel_close_t *m)
{
	char text[256], why[300];
	unsigned long long size;
	size_t blamed = 0;
	snprintf(text, sizeof(text), "%.*s", (int)m->reply_text.len, (char *)m->reply_text.bytes);
	snprintf(why, sizeof(why), "channel closed by broker: %u %s", m->reply_code, text);
	if (m->reply_code == AMQP_PRECONDITION_FAILED &&
	    sscanf(text, "PRECONDITION_FAILED - message size %llu is larger", &size) == 1) {
		for (uint64_t t = c->base_tag; t < c->next_tag; t++) {
			slot *s = slot_of(c, t);
			if (s->token && s->body_len == size) {
				answer(c, t, ACKBOX_TX_ERROR, m->reply_code, why);
				blamed++;
			}
		}
	}
	if (!blamed)
		for (uint64_t t = c->base_tag; t < c->next_tag; t++)
			answer(c, t, ACKBOX_TX_ERROR, m->reply_code, why);
	return lost(c, m->reply_code, why);
}

static int handle_frame(amqp_ctx *c, amqp_frame_t *f)
{
	char why[256];
	if (f->frame_type != AMQP_FRAME_METHOD)
		return 0; /* heartbeats are handled inside rabbitmq-c */
	switch (f->payload.method.id) {
	case AMQP_BASIC_ACK_METHOD: {
		amqp_basic_ack_t *m = f->payload.method.decoded;
		confirm(c, m->delivery_tag, m->multiple, 1);
		return 0;
	}
	case AMQP_BASIC_NACK_METHOD: {
		amqp_basic_nack_t *m = f->payload.method.decoded;
		confirm(c, m->delivery_tag, m->multiple, 0);
		return 0;
	}
	case AMQP_BASIC_RETURN_METHOD:
		return returned(c, f->payload.method.decoded);
	case AMQP_CHANNEL_CLOSE_METHOD:
		return channel_closed(c, f->payload.method.decoded);
	case AMQP_CONNECTION_CLOSE_METHOD: {
		amqp_connection_close_t *m = f->payload.method.decoded;
		amqp_connection_close_ok_t ok = {0};
		snprintf(why, sizeof(why), "connection closed by broker: %u %.*s", m->reply_code,
		         (int)m->reply_text.len, (char *)m->reply_text.bytes);
		/* the broker waits for close-ok before it closes the socket; a few
		 * bytes into a socket it still reads, so this does not block */
		amqp_send_method(c->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
		return lost(c, m->reply_code, why);
	}
	default:
		return 0;
	}
}

/* Reads every frame available now without blocking. */
static int drain(amqp_ctx *c)
{
	struct timeval zero = {0, 0};
	for (;;) {
		amqp_frame_t f;
		int rc = amqp_simple_wait_frame_noblock(c->conn, &f, &zero);
		if (rc == AMQP_STATUS_TIMEOUT)
			break;
		if (rc != AMQP_STATUS_OK)
			return lost(c, 0, amqp_error_string2(rc));
		if (handle_frame(c, &f) != 0)
			return ACKBOX_ERR_TRANSPORT;
		if (!c->connected)
			return ACKBOX_ERR_TRANSPORT;
	}
	if (!amqp_frames_enqueued(c->conn) && !amqp_data_in_buffer(c->conn))
		amqp_maybe_release_buffers(c->conn);
	return 0;
}

/* The header that carries the message key (AMQP has no message key). */
#define KEY_HEADER "ackbox-key"

/* Adds n to *sum, saturating at SIZE_MAX. */
static void add_size(size_t *sum, size_t n)
{
	*sum = n > SIZE_MAX - *sum ? SIZE_MAX : *sum + n;
}

/*
 * The bytes of the basic properties send() writes, as rabbitmq-c 0.11
 * encodes them (amqp_encode_properties): the flag word, then content type
 * (shortstr), headers (a table: 4-byte size, then per entry a shortstr name,
 * a type byte and a 4-byte length before the bytes), delivery mode and
 * message id (shortstr).
 */
static size_t properties_size(const ackbox_tx_msg *m)
{
	size_t n = 2 + 1 + 1 + strlen(m->id_str);
	if (m->content_type)
		add_size(&n, 1 + strlen(m->content_type));
	if (m->header_count || m->key_len) {
		add_size(&n, 4);
		for (size_t i = 0; i < m->header_count; i++) {
			add_size(&n, 1 + strlen(m->headers[i].name) + 1 + 4);
			add_size(&n, m->headers[i].value_len);
		}
		if (m->key_len) {
			add_size(&n, 1 + strlen(KEY_HEADER) + 1 + 4);
			add_size(&n, m->key_len);
		}
	}
	return n;
}

/*
 * Whether m can go on the wire as send() would put it, with frames of
 * frame_max bytes. rabbitmq-c refuses a routing key or content type over
 * 255 bytes and properties larger than a frame; a header name over 255 bytes
 * it writes with its length cut to one byte, and RabbitMQ 3.10 answers the
 * garbled table by closing the connection (541 INTERNAL_ERROR). 0, or
 * ACKBOX_ERR_INVALID with errstr naming the field and the limit.
 */
static int check_msg(const ackbox_tx_msg *m, size_t frame_max, char *errstr, size_t errstr_size)
{
	size_t n;
	if ((n = strlen(m->topic)) > SHORTSTR_MAX) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "topic: %zu bytes; an AMQP routing key is a short string of at "
		                  "most %d bytes",
		                  n, SHORTSTR_MAX);
		return ACKBOX_ERR_INVALID;
	}
	if (m->content_type && (n = strlen(m->content_type)) > SHORTSTR_MAX) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "content_type: %zu bytes; the AMQP content-type property is a "
		                  "short string of at most %d bytes",
		                  n, SHORTSTR_MAX);
		return ACKBOX_ERR_INVALID;
	}
	for (size_t i = 0; i < m->header_count; i++) {
		const char *name = m->headers[i].name;
		if ((n = strlen(name)) > SHORTSTR_MAX) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "header '%.32s...': name of %zu bytes; AMQP header names "
			                  "(field-table keys) are short strings of at most %d "
			                  "bytes",
			                  name, n, SHORTSTR_MAX);
			return ACKBOX_ERR_INVALID;
		}
		if (strcmp(name, "CC") == 0 || strcmp(name, "BCC") == 0) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "header '%s': RabbitMQ reads CC and BCC as extra routing "
			                  "keys and needs an array; ackbox sends header values as "
			                  "byte strings, which RabbitMQ refuses (406 "
			                  "PRECONDITION_FAILED)",
			                  name);
			return ACKBOX_ERR_INVALID;
		}
	}
	if ((n = properties_size(m)) > frame_max - HEADER_FRAME_OVERHEAD) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "headers: the AMQP properties (headers, key, content type, id) "
		                  "take %zu bytes; rabbitmq-c sends them in one frame, which holds "
		                  "at most %zu with frame_max %zu",
		                  n, frame_max - HEADER_FRAME_OVERHEAD, frame_max);
		return ACKBOX_ERR_INVALID;
	}
	return 0;
}

/*
 * Before a message is stored. The frame size is the one ackbox asks for at
 * login (AMQP_DEFAULT_FRAME_SIZE, also RabbitMQ's default); a broker that
 * negotiates less is caught by send(), which checks again with the size
 * the connection got. Reads nothing of ctx: safe on any thread.
 */
static int amqp_validate_(void *vctx, const ackbox_tx_msg *m, char *errstr, size_t errstr_size)
{
	amqp_ctx *c = vctx;
	if (m->payload_len > c->max_message) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "amqp: body of %zu bytes is over amqp.max_message_size (%zu), the "
		                  "broker's limit",
		                  m->payload_len, c->max_message);
		return ACKBOX_ERR_TOO_LARGE;
	}
	return check_msg(m, AMQP_DEFAULT_FRAME_SIZE, errstr, errstr_size);
}

#define DECLARE_LOST (-1)
#define DECLARE_REFUSED (-2)

/*
 * Declares queue once per connection (amqp.declare_queue). 0 when done;
 * otherwise the connection is gone. DECLARE_REFUSED: the broker refused the
 * declare itself (403 for an "amq." name, 406 for a queue that exists with
 * other arguments) and ERROR was reported for token, since resending the
 * message cannot help; DECLARE_LOST: the connection failed.
 */
static int declare(amqp_ctx *c, const char *queue, uint64_t token)
{
	char **n;
	amqp_rpc_reply_t r;
	for (size_t i = 0; i < c->ndeclared; i++)
		if (strcmp(c->declared[i], queue) == 0)
			return 0;
	/* the RPC reads frames; acks that arrive meanwhile are queued by
	 * rabbitmq-c and drained by the next poll */
	amqp_queue_declare(c->conn, CHANNEL, amqp_cstring_bytes(queue), 0, 1, 0, 0,
	                   amqp_empty_table);
	r = amqp_get_rpc_reply(c->conn);
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		char why[256], text[420];
		reply_text(r, why, sizeof(why));
		if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
		    r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
			char q[128];
			ackbox_escape(queue, strlen(queue), q, sizeof(q));
			snprintf(text, sizeof(text), "declaring queue '%s': %s", q, why);
			ackbox_tx_event ev = {ACKBOX_TX_ERROR, token, reply_code(r), 0, text};
			ackbox_tx_report(c->host, &ev);
			lost(c, reply_code(r), why);
			return DECLARE_REFUSED;
		}
		lost(c, reply_code(r), why);
		return DECLARE_LOST;
	}
	n = realloc(c->declared, (c->ndeclared + 1) * sizeof(*n));
	if (n) {
		c->declared = n;
		c->declared[c->ndeclared++] = strdup(queue);
	}
	return 0;
}

/* Codes rabbitmq-c 0.11 returns when it cannot encode a frame. */
static int encoding_error(int rc)
{
	return rc == AMQP_STATUS_BAD_AMQP_DATA || rc == AMQP_STATUS_TABLE_TOO_BIG ||
	       rc == AMQP_STATUS_INVALID_PARAMETER || rc == AMQP_STATUS_UNKNOWN_CLASS;
}

/*
 * amqp_basic_publish failed with rc. It writes the method frame (exchange,
 * routing key), then the content header (the properties), then the body,
 * encoding each frame just before writing it. A socket error means the
 * connection is gone: the message did not reach the broker whole, and it
 * was not sent. An encoding error can only be the content header, since
 * check_msg() and open() passed the method frame's fields: the method frame
 * is then on the wire without its content, the stream is broken and the
 * connection must go; the message itself is at fault, so its attempt
 * failed (ERROR, reported first) and it is not resent as in doubt.
 * (rabbitmq-c also returns BAD_AMQP_DATA for a garbled frame it reads
 * while checking heartbeats; that connection is lost either way.)
 */
static int publish_failed(amqp_ctx *c, const ackbox_tx_msg *m, int rc)
{
	char why[256];
	if (!encoding_error(rc)) {
		lost(c, 0, amqp_error_string2(rc));
		return ACKBOX_TX_NOT_CONNECTED;
	}
	snprintf(why, sizeof(why), "rabbitmq-c cannot encode the message's properties: %s",
	         amqp_error_string2(rc));
	ackbox_tx_event ev = {ACKBOX_TX_ERROR, m->token, 0, 0, why};
	ackbox_tx_report(c->host, &ev);
	lost(c, 0, "a publish was cut short by an encoding error");
	return ACKBOX_TX_SENT;
}

static int amqp_send_(void *vctx, const ackbox_tx_msg *m)
{
	amqp_ctx *c = vctx;
	amqp_basic_properties_t p;
	amqp_table_entry_t *entries = NULL;
	size_t ne = m->header_count + (m->key_len ? 1 : 0);
	amqp_bytes_t body;
	slot *s;
	char why[512];
	int rc;

	if (!c->connected)
		return ACKBOX_TX_NOT_CONNECTED;
	if (c->next_tag - c->base_tag >= c->ring_cap)
		return ACKBOX_TX_BUSY; /* an old tag is still unanswered: the ring is full */
	if (check_msg(m, (size_t)amqp_get_frame_max(c->conn), why, sizeof(why)) != 0) {
		/* stored unchecked, or the broker gave a smaller frame_max: it
		 * can never go on the wire, and nothing was written */
		ackbox_tx_event ev = {ACKBOX_TX_ERROR, m->token, 0, 0, why};
		ackbox_tx_report(c->host, &ev);
		return ACKBOX_TX_SENT;
	}
	if (c->declare_queue && !c->exchange[0] && (rc = declare(c, m->topic, m->token)) != 0)
		return rc == DECLARE_REFUSED ? ACKBOX_TX_SENT : ACKBOX_TX_NOT_CONNECTED;
	memset(&p, 0, sizeof(p));
	p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
	p.delivery_mode = 2; /* persistent: the broker writes it to disk before confirming */
	p.message_id = amqp_cstring_bytes(m->id_str);
	if (m->content_type) {
		p._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
		p.content_type = amqp_cstring_bytes(m->content_type);
	}
	if (ne) {
		entries = calloc(ne, sizeof(*entries));
		if (!entries)
			return ACKBOX_TX_BUSY;
		for (size_t i = 0; i < m->header_count; i++) {
			const char *name = m->headers[i].name;
			entries[i].key = amqp_cstring_bytes(name);
			/* W3C trace context as a long string, which is what the
			 * OpenTelemetry RabbitMQ instrumentations read; other
			 * headers as the bytes they are. The encoded size is the
			 * same either way. */
			entries[i].value.kind =
			    strcmp(name, "traceparent") == 0 || strcmp(name, "tracestate") == 0
			        ? AMQP_FIELD_KIND_UTF8
			        : AMQP_FIELD_KIND_BYTES;
			entries[i].value.value.bytes.len = m->headers[i].value_len;
			entries[i].value.value.bytes.bytes = (void *)m->headers[i].value;
		}
		if (m->key_len) {
			/* AMQP has no message key; it travels as a header */
			entries[ne - 1].key = amqp_cstring_bytes(KEY_HEADER);
			entries[ne - 1].value.kind = AMQP_FIELD_KIND_BYTES;
			entries[ne - 1].value.value.bytes.len = m->key_len;
			entries[ne - 1].value.value.bytes.bytes = (void *)m->key;
		}
		p._flags |= AMQP_BASIC_HEADERS_FLAG;
		p.headers.num_entries = (int)ne;
		p.headers.entries = entries;
	}
	body.len = m->payload_len;
	body.bytes = (void *)m->payload;
	/* register the tag first: a return or ack may be read during publish */
	s = slot_of(c, c->next_tag);
	s->token = m->token;
	s->id = m->id;
	s->body_len = m->payload_len;
	c->next_tag++;
	c->outstanding++;
	rc = amqp_basic_publish(c->conn, CHANNEL, amqp_cstring_bytes(c->exchange),
	                        amqp_cstring_bytes(m->topic), c->mandatory, 0, &p, body);
	free(entries);
	if (rc != AMQP_STATUS_OK) {
		s->token = 0;
		c->next_tag--;
		c->outstanding--;
		return publish_failed(c, m, rc);
	}
	return ACKBOX_TX_SENT;
}

static int amqp_poll_(void *vctx, int timeout_ms)
{
	amqp_ctx *c = vctx;
	struct pollfd pfd[2];
	int rc;

	if (!c->connected)
		return ACKBOX_ERR_TRANSPORT;
	/* a publish or an RPC may already have buffered acks: serve them first */
	rc = drain(c);
	if (rc)
		return rc;
	pfd[0].fd = amqp_get_sockfd(c->conn);
	pfd[0].events = POLLIN;
	pfd[1].fd = ackbox_tx_wake_fd(c->host);
	pfd[1].events = POLLIN;
	/* wake at least twice per heartbeat so rabbitmq-c can send ours */
	if (c->heartbeat_s > 0 && (timeout_ms < 0 || timeout_ms > c->heartbeat_s * 500))
		timeout_ms = c->heartbeat_s * 500;
	rc = poll(pfd, 2, timeout_ms);
	if (rc < 0 && errno != EINTR)
		return lost(c, 0, strerror(errno));
	if (rc > 0 && (pfd[0].revents & (POLLIN | POLLERR | POLLHUP)))
		return drain(c);
	return 0;
}

static void amqp_close_(void *vctx)
{
	amqp_ctx *c = vctx;
	if (c->conn && c->connected) {
		/* polite close so the broker logs no error; bounded by the rpc timeout */
		amqp_channel_close(c->conn, CHANNEL, AMQP_REPLY_SUCCESS);
		amqp_connection_close(c->conn, AMQP_REPLY_SUCCESS);
	}
	if (c->ring)
		teardown(c);
	free_settings(c);
}

static const char *const amqp_schemes[] = {"amqp", "amqps", NULL};

const ackbox_transport_ops ackbox_amqp_transport = {
	.abi_version = ACKBOX_TRANSPORT_ABI_VERSION,
	.struct_size = sizeof(ackbox_transport_ops),
	.schemes = amqp_schemes,
	.caps = 0,
	.ctx_size = sizeof(amqp_ctx),
	.props = amqp_props,
	.description = "AMQP 0-9-1 (RabbitMQ) with publisher confirms, via rabbitmq-c",
	.open = amqp_open_,
	.connect = amqp_connect_,
	.send = amqp_send_,
	.poll = amqp_poll_,
	.close = amqp_close_,
	.validate = amqp_validate_,
};
