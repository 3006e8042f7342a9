/*
 * mqtt.c - the MQTT transport over paho.mqtt.c's MQTTAsync: QoS 1 (or 2)
 * publishes whose PUBACK (PUBCOMP) is the confirm. paho answers on its own
 * threads; this file turns those answers into reports and nothing more.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <MQTTAsync.h>

#include <ackbox/mqtt.h>
#include <ackbox/pemfile.h>
#include <ackbox/transport.h>

/* OpenTelemetry messaging.system for the metrics */
#define SYSTEM_NAME "mqtt"

#include "mqtt_check.h"
#include "tls_check.h"

/* paho's out-of-memory code (PAHO_MEMORY_ERROR in its private Heap.h) */
#define PAHO_MEMORY_ERROR_CODE (-99)

struct mqtt_ctx;

/* One in-flight publish; paho gets a pointer to it as the callback context. */
typedef struct pub {
	struct mqtt_ctx *c;
	uint64_t token; /* 0: free */
} pub;

typedef struct mqtt_ctx {
	ackbox_tx_host *host;
	/* set by open() and never changed: validate reads them on any thread */
	char *uri, *client_id, *user, *password, *cafile;
	char *tls_host; /* mqtts: the host the certificate must name, and its port */
	int tls_port;
	int qos, v5, keepalive_s, window, verify, id_in_payload;
	/* the broker's Maximum Packet Size from its last MQTT 5 CONNACK, 0 if it
	 * set none; written by paho's thread, read by validate and send */
	_Atomic uint32_t max_packet;
	MQTTAsync client;
	pthread_mutex_t mtx; /* guards what follows */
	pthread_cond_t cond;
	int connect_state; /* 0 pending, 1 ok, -1 failed */
	char connect_error[256];
	char tls_error[256]; /* what OpenSSL said during the last connect, via paho */
	/* 1 from the CONNACK until the first report that the connection went
	 * (or until drop_client): only that first report reaches the core */
	int connected;
	pub *pubs;
	int npubs;
} mqtt_ctx;

static const ackbox_prop mqtt_props[] = {
	{"client_id", ACKBOX_PROP_STRING, NULL, 0, 0, NULL,
	 "MQTT client id (default: ackbox-<pid>-<random>). Must be unique per broker."},
	{"qos", ACKBOX_PROP_INT, "1", 1, 2, NULL,
	 "1: PUBACK confirms (at least once); 2: PUBCOMP confirms (exactly once to the broker)."},
	{"version", ACKBOX_PROP_ENUM, "5", 0, 0, "5|3.1.1",
	 "MQTT protocol version. 3.1.1 loses the id, headers and content type on the wire and "
	 "reason codes (an ACL denial looks like success)."},
	{"keepalive", ACKBOX_PROP_DURATION, "30s", 1000, 3600000, NULL, "MQTT keepalive interval."},
	{"window", ACKBOX_PROP_INT, "100", 1, 65535, NULL,
	 "Unconfirmed publishes at once; paho's maxInflight is set to twice this (measured with "
	 "mosquitto on 2 cores: ~17k msg/s at 100, as fast as paho alone)."},
	{"cafile", ACKBOX_PROP_STRING, NULL, 0, 0, NULL, "mqtts: CA certificate file (PEM)."},
	{"verify", ACKBOX_PROP_BOOL, "true", 0, 0, NULL,
	 "mqtts: verify the broker's certificate."},
	{"id_in_payload", ACKBOX_PROP_BOOL, "false", 0, 0, NULL,
	 "Start every payload with a line 'ackbox-id:' + the message id (47 bytes with the "
	 "newline), so that consumers can deduplicate over MQTT 3.1.1, which has no properties "
	 "(docs/consumers.md)."},
	{NULL, 0, NULL, 0, 0, NULL, NULL}};

static const char *conf(mqtt_ctx *c, const char *key)
{
	return ackbox_conf_get(ackbox_tx_conf(c->host), key);
}

static const char *const no_query[] = {NULL};

static int open_(void *vctx, const ackbox_url *url, ackbox_tx_host *host, ackbox_tx_info *info,
                 char *errstr, size_t errstr_size)
{
	mqtt_ctx *c = vctx;
	int tls = strcmp(url->scheme, "mqtts") == 0;
	char buf[512];
	int64_t ka = 30000;
	int b = 1;

	c->host = host;
	pthread_mutex_init(&c->mtx, NULL);
	pthread_cond_init(&c->cond, NULL);
	/* no query parameters: the settings are mqtt.* keys */
	if (ackbox_url_query_check(url, "transport.url", no_query, errstr, errstr_size) != 0)
		return ACKBOX_ERR_BAD_URL;
	if (strchr(url->hosts, ',')) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "transport.url: mqtt takes one broker (host:port), not a list");
		return ACKBOX_ERR_BAD_URL;
	}
	snprintf(buf, sizeof(buf), "%s://%s%s%s:%d", tls ? "ssl" : "tcp",
	         strchr(url->host, ':') ? "[" : "", url->host[0] ? url->host : "127.0.0.1",
	         strchr(url->host, ':') ? "]" : "", url->port ? url->port : (tls ? 8883 : 1883));
	c->uri = strdup(buf);
	if (tls) {
		c->tls_host = strdup(url->host[0] ? url->host : "127.0.0.1");
		c->tls_port = url->port ? url->port : 8883;
		if (!c->tls_host)
			return ACKBOX_ERR_NOMEM;
	}
	if (conf(c, "mqtt.client_id")) {
		c->client_id = strdup(conf(c, "mqtt.client_id"));
	} else {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		snprintf(buf, sizeof(buf), "ackbox-%d-%lx", (int)getpid(),
		         (unsigned long)(ts.tv_nsec ^ ts.tv_sec));
		c->client_id = strdup(buf);
	}
	c->user = url->user ? strdup(url->user) : NULL;
	c->password = url->password ? strdup(url->password) : NULL;
	if (conf(c, "mqtt.cafile")) {
		/* unreadable: a configuration error now (CLI exit 2), not an
		 * unreachable broker at every connect */
		const char *ca = conf(c, "mqtt.cafile");
		int rc = ackbox_pem_file_check("mqtt.cafile", ca, errstr, errstr_size);
		if (rc)
			return rc;
		c->cafile = strdup(ca);
	}
	ackbox_parse_bool(conf(c, "mqtt.verify"), &b);
	c->verify = b;
	b = 0;
	ackbox_parse_bool(conf(c, "mqtt.id_in_payload"), &b);
	c->id_in_payload = b;
	c->qos = atoi(conf(c, "mqtt.qos"));
	c->v5 = strcmp(conf(c, "mqtt.version"), "5") == 0;
	ackbox_parse_duration_ms(conf(c, "mqtt.keepalive"), &ka);
	c->keepalive_s = (int)(ka / 1000);
	c->window = atoi(conf(c, "mqtt.window"));
	atomic_store(&c->max_packet, 0);
	c->npubs = c->window;
	c->pubs = calloc((size_t)c->npubs, sizeof(*c->pubs));
	if (!c->uri || !c->client_id || !c->pubs)
		return ACKBOX_ERR_NOMEM;
	for (int i = 0; i < c->npubs; i++)
		c->pubs[i].c = c;
	info->max_inflight = c->window;
	info->system_name = SYSTEM_NAME;
	info->max_message_size = ABX_MQTT_MAX_REMAINING;
	return 0;
}

static void mqtt_close(void *vctx);

/* close() is not called when open fails: free what was made here. */
static int mqtt_open(void *vctx, const ackbox_url *url, ackbox_tx_host *host, ackbox_tx_info *info,
                     char *errstr, size_t errstr_size)
{
	int rc = open_(vctx, url, host, info, errstr, errstr_size);
	if (rc) {
		mqtt_close(vctx);
		memset(vctx, 0, sizeof(mqtt_ctx));
	}
	return rc;
}

/* ---- paho callbacks: any paho thread; they only report ---- */

static const char *reason_name(int code)
{
	const char *n = MQTTReasonCode_toString((enum MQTTReasonCodes)code);
	return n ? n : "(unknown reason code)";
}

/* An MQTT 3.1.1 CONNACK return code (3.1.1 §3.2.2.3). */
static const char *connack311_name(int code)
{
	switch (code) {
	case 1: return "unacceptable protocol version";
	case 2: return "identifier rejected";
	case 3: return "server unavailable";
	case 4: return "bad user name or password";
	case 5: return "not authorized";
	default: return "unknown return code";
	}
}

static const char *paho_error(int code)
{
	const char *s = MQTTAsync_strerror(code);
	return s ? s : "unknown error";
}

/* Appends ": <text>" for a string property (reason string, server reference). */
static void append_prop(char *buf, size_t size, MQTTProperties *props, enum MQTTPropertyCodes id,
                        const char *label)
{
	MQTTProperty *p = props ? MQTTProperties_getProperty(props, id) : NULL;
	size_t n = strlen(buf);
	if (p && p->value.data.len > 0 && n < size)
		snprintf(buf + n, size - n, "%s%.*s", label, p->value.data.len, p->value.data.data);
}

/*
 * Reports the connection gone, once per connection: the first report after
 * a CONNACK carries the cause (the broker's DISCONNECT reason, which the
 * core gives a poison message as the reason it FAILED); the vaguer ones
 * paho makes afterwards for the same loss are dropped.
 */
static void report_down(mqtt_ctx *c, int code, const char *why)
{
	int was;
	pthread_mutex_lock(&c->mtx);
	was = c->connected;
	c->connected = 0;
	pthread_mutex_unlock(&c->mtx);
	if (!was)
		return;
	ackbox_tx_event ev = {ACKBOX_TX_DISCONNECTED, 0, code, 1, why};
	ackbox_tx_report(c->host, &ev);
}

/* What paho tells of a lost connection: nothing (it passes no cause). */
static const char *lost_reason(const mqtt_ctx *c)
{
	return c->v5 ? "connection lost without a DISCONNECT from the broker (the network, or a "
	               "broker closing it without a reason)"
	             : "connection lost (MQTT 3.1.1 has no reason codes: a broker refusing a "
	               "publish closes the connection as a network failure would)";
}

static void on_lost(void *context, char *cause)
{
	mqtt_ctx *c = context;
	report_down(c, 0, cause ? cause : lost_reason(c));
}

/* An MQTT 5 DISCONNECT from the broker; paho calls no connectionLost after it. */
static void on_disconnected5(void *context, MQTTProperties *props, enum MQTTReasonCodes code)
{
	char why[512];
	snprintf(why, sizeof(why), "broker sent DISCONNECT 0x%02x %s", (unsigned)code,
	         reason_name(code));
	append_prop(why, sizeof(why), props, MQTTPROPERTY_CODE_REASON_STRING, ": ");
	append_prop(why, sizeof(why), props, MQTTPROPERTY_CODE_SERVER_REFERENCE,
	            " (server reference: ");
	if (props && MQTTProperties_hasProperty(props, MQTTPROPERTY_CODE_SERVER_REFERENCE) &&
	    strlen(why) + 1 < sizeof(why))
		strcat(why, ")");
	report_down(context, (int)code, why);
}

static int on_message(void *context, char *topic, int len, MQTTAsync_message *m)
{
	(void)context;
	(void)len;
	MQTTAsync_freeMessage(&m);
	MQTTAsync_free(topic);
	return 1;
}

static void connect_done(mqtt_ctx *c, int ok, const char *why)
{
	pthread_mutex_lock(&c->mtx);
	c->connect_state = ok ? 1 : -1;
	if (ok)
		c->connected = 1;
	else
		snprintf(c->connect_error, sizeof(c->connect_error), "%s", why ? why : "refused");
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mtx);
}

static void on_connect_ok(void *context, MQTTAsync_successData *r)
{
	(void)r;
	connect_done(context, 1, NULL);
}

static void on_connect_ok5(void *context, MQTTAsync_successData5 *r)
{
	mqtt_ctx *c = context;
	MQTTProperty *p = NULL;
	if (r)
		p = MQTTProperties_getProperty(&r->properties, MQTTPROPERTY_CODE_MAXIMUM_PACKET_SIZE);
	/* before connect_done: the first send after connect() must see it */
	atomic_store(&c->max_packet, p ? (uint32_t)p->value.integer4 : 0);
	connect_done(c, 1, NULL);
}

/*
 * A refused CONNECT reaches onFailure with message "CONNACK return code"
 * and the broker's code in `code`; paho leaves reasonCode at 0 and drops
 * the CONNACK's properties (MQTTAsyncUtils.c, nextOrClose).
 */
static int is_connack(const char *message)
{
	return message && strcmp(message, "CONNACK return code") == 0;
}

/* paho's words when the socket closes after CONNECT, before any CONNACK. */
static int is_closed_before_connack(const char *message)
{
	return message && strcmp(message, "TCP connect completion failure") == 0;
}

static void on_connect_fail(void *context, MQTTAsync_failureData *r)
{
	char why[200];
	const char *msg = r ? r->message : NULL;
	int code = r ? r->code : 0;
	if (is_connack(msg))
		snprintf(why, sizeof(why), "CONNACK return code %d, %s", code, connack311_name(code));
	else if (is_closed_before_connack(msg))
		snprintf(why, sizeof(why), "the broker closed the connection without a CONNACK");
	else
		snprintf(why, sizeof(why), "%s (paho %d: %s)", msg ? msg : "connect failed", code,
		         paho_error(code));
	connect_done(context, 0, why);
}

static void on_connect_fail5(void *context, MQTTAsync_failureData5 *r)
{
	char why[200];
	const char *msg = r ? r->message : NULL;
	int code = r ? r->code : 0;
	if (is_connack(msg) && code > 0 && code < 0x80)
		/* no MQTT 5 CONNACK code lies here: a 3.1.1 broker answered */
		snprintf(why, sizeof(why),
		         "CONNACK return code %d (%s) to an MQTT 5 CONNECT: the broker does not "
		         "support MQTT 5; set mqtt.version=3.1.1",
		         code, connack311_name(code));
	else if (is_connack(msg))
		snprintf(why, sizeof(why), "CONNACK 0x%02x %s", (unsigned)code, reason_name(code));
	else if (is_closed_before_connack(msg))
		snprintf(why, sizeof(why),
		         "the broker closed the connection after the MQTT 5 CONNECT without a "
		         "CONNACK: it may not support MQTT 5 (if so, set mqtt.version=3.1.1), or "
		         "this port may expect TLS (then use mqtts://)");
	else
		snprintf(why, sizeof(why), "%s (paho %d: %s)", msg ? msg : "connect failed", code,
		         paho_error(code));
	connect_done(context, 0, why);
}

/* Reports the answer for a publish once, and frees its slot. */
static void answer(pub *p, ackbox_tx_event_kind kind, int code, const char *why)
{
	mqtt_ctx *c = p->c;
	uint64_t token;
	pthread_mutex_lock(&c->mtx);
	token = p->token;
	p->token = 0;
	pthread_mutex_unlock(&c->mtx);
	if (!token)
		return;
	ackbox_tx_event ev = {kind, token, code, kind != ACKBOX_TX_ACK, why};
	ackbox_tx_report(c->host, &ev);
}

/*
 * paho fails a publish without a broker's answer only when the connection
 * goes (its session is cleaned, or a write failed). Say so first, so that
 * DISCONNECTED covers every publish in flight, as the core expects of a
 * dropped connection; the token's own report then falls through.
 */
static void publish_interrupted(pub *p)
{
	report_down(p->c, 0, lost_reason(p->c));
	answer(p, ACKBOX_TX_IN_DOUBT, 0, lost_reason(p->c));
}

static void on_pub_ok(void *context, MQTTAsync_successData *r)
{
	(void)r;
	answer(context, ACKBOX_TX_ACK, 0, NULL);
}

static void on_pub_ok5(void *context, MQTTAsync_successData5 *r)
{
	/* 0x10 "no matching subscribers" is still a delivery to the broker */
	(void)r;
	answer(context, ACKBOX_TX_ACK, 0, NULL);
}

static void on_pub_fail(void *context, MQTTAsync_failureData *r)
{
	/* MQTT 3.1.1 has no negative acknowledgement */
	(void)r;
	publish_interrupted(context);
}

/* MQTT control packet types that carry a publish's reason code. */
enum { PKT_PUBACK = 4, PKT_PUBREC = 5, PKT_PUBCOMP = 7 };

static void on_pub_fail5(void *context, MQTTAsync_failureData5 *r)
{
	/* reasonCode is the broker's only when an ack carried it: paho leaves it
	 * uninitialised when a write fails (MQTTAsync_writeComplete) */
	if (r && (r->packet_type == PKT_PUBACK || r->packet_type == PKT_PUBREC ||
	          r->packet_type == PKT_PUBCOMP) &&
	    r->reasonCode >= 0x80) {
		char why[400];
		snprintf(why, sizeof(why), "%s reason 0x%02x %s",
		         r->packet_type == PKT_PUBACK  ? "PUBACK"
		         : r->packet_type == PKT_PUBREC ? "PUBREC"
		                                        : "PUBCOMP",
		         (unsigned)r->reasonCode, reason_name(r->reasonCode));
		append_prop(why, sizeof(why), &r->properties, MQTTPROPERTY_CODE_REASON_STRING, ": ");
		answer(context, ACKBOX_TX_NACK, r->reasonCode, why);
		return;
	}
	publish_interrupted(context);
}

/* ---- the ops ---- */

static void drop_client(mqtt_ctx *c)
{
	/* the core already treats this connection as gone: what paho reports
	 * while it is destroyed must not say so again */
	pthread_mutex_lock(&c->mtx);
	c->connected = 0;
	pthread_mutex_unlock(&c->mtx);
	if (c->client) {
		/* destroy waits for paho's threads: no callback for this client
		 * runs afterwards, so every slot can be reused */
		MQTTAsync_destroy(&c->client);
		c->client = NULL;
	}
	pthread_mutex_lock(&c->mtx);
	c->connected = 0;
	for (int i = 0; i < c->npubs; i++)
		c->pubs[i].token = 0;
	pthread_mutex_unlock(&c->mtx);
}

/* OpenSSL's own words for a failed TLS connect (paho's thread): the first
 * line is kept, escaped, so the connect error can name the cause. */
static int on_tls_error(const char *str, size_t len, void *u)
{
	mqtt_ctx *c = u;
	pthread_mutex_lock(&c->mtx);
	if (!c->tls_error[0]) {
		/* "<thread>:error:<code>:<library>:<function>:<reason>:<file>:..." */
		const char *r = strstr(str, ":error:");
		size_t n;
		for (int k = 0; r && k < 4; k++)
			r = memchr(r + 1, ':', len - (size_t)(r + 1 - str));
		r = r ? r + 1 : str;
		n = strcspn(r, ":\n");
		if (r + n > str + len)
			n = (size_t)(str + len - r);
		ackbox_escape(r, n, c->tls_error, sizeof(c->tls_error));
	}
	pthread_mutex_unlock(&c->mtx);
	return 0;
}

static int mqtt_connect(void *vctx, int timeout_ms, char *errstr, size_t errstr_size)
{
	mqtt_ctx *c = vctx;
	MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
	MQTTAsync_connectOptions o = MQTTAsync_connectOptions_initializer;
	MQTTAsync_connectOptions o5 = MQTTAsync_connectOptions_initializer5;
	MQTTAsync_connectOptions *opts = c->v5 ? &o5 : &o;
	MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
	struct timespec dl;
	uint32_t max_packet;
	int rc;

	drop_client(c);
	/* ackbox's store is the persistence: paho keeps nothing on disk */
	co.MQTTVersion = c->v5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
	co.sendWhileDisconnected = 0;
	rc = MQTTAsync_createWithOptions(&c->client, c->uri, c->client_id, MQTTCLIENT_PERSISTENCE_NONE,
	                                 NULL, &co);
	if (rc != MQTTASYNC_SUCCESS) {
		ackbox_errstr_set(errstr, errstr_size, "mqtt: cannot create a client for %s (%d)",
		                  c->uri, rc);
		c->client = NULL;
		return ACKBOX_ERR_TRANSPORT;
	}
	MQTTAsync_setCallbacks(c->client, c, on_lost, on_message, NULL);
	if (c->v5)
		MQTTAsync_setDisconnected(c->client, c, on_disconnected5);
	opts->keepAliveInterval = c->keepalive_s;
	/* paho calls onSuccess before it takes the publish off its in-flight
	 * count: a publish sent from that moment would find paho "full" and wait
	 * in its queue for the send thread's next round. Our own window is the
	 * bound; paho's is set wider so it never queues what we hand it. */
	opts->maxInflight = c->window * 2 < 65535 ? c->window * 2 : 65535;
	opts->connectTimeout = timeout_ms / 1000 > 0 ? timeout_ms / 1000 : 1;
	opts->automaticReconnect = 0; /* the core reconnects, with its backoff */
	opts->context = c;
	opts->username = c->user;
	opts->password = c->password;
	if (c->v5) {
		/* a fresh session each time: what was in flight is resent by the core */
		o5.cleanstart = 1;
		o5.onSuccess5 = on_connect_ok5;
		o5.onFailure5 = on_connect_fail5;
	} else {
		/* the connect options' version is the one paho uses: left at its
		 * default, paho tries 3.1.1, then 3.1, and reports the second
		 * refusal instead of the broker's reason for the first */
		o.MQTTVersion = MQTTVERSION_3_1_1;
		o.cleansession = 1;
		o.onSuccess = on_connect_ok;
		o.onFailure = on_connect_fail;
	}
	if (strncmp(c->uri, "ssl://", 6) == 0) {
		ssl.trustStore = c->cafile;
		ssl.enableServerCertAuth = c->verify;
		ssl.verify = c->verify;
		ssl.ssl_error_cb = on_tls_error;
		ssl.ssl_error_context = c;
		opts->ssl = &ssl;
	}
	pthread_mutex_lock(&c->mtx);
	c->connect_state = 0;
	c->tls_error[0] = '\0';
	pthread_mutex_unlock(&c->mtx);
	rc = MQTTAsync_connect(c->client, opts);
	if (rc != MQTTASYNC_SUCCESS) {
		ackbox_errstr_set(errstr, errstr_size, "mqtt: cannot start connecting to %s (%d)",
		                  c->uri, rc);
		drop_client(c);
		return ACKBOX_ERR_TRANSPORT;
	}
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += timeout_ms / 1000 + 1;
	pthread_mutex_lock(&c->mtx);
	while (c->connect_state == 0)
		if (pthread_cond_timedwait(&c->cond, &c->mtx, &dl) != 0)
			break;
	rc = c->connect_state;
	pthread_mutex_unlock(&c->mtx);
	if (rc != 1) {
		char why[300] = "";
		pthread_mutex_lock(&c->mtx);
		snprintf(why, sizeof(why), "%s", c->tls_error);
		pthread_mutex_unlock(&c->mtx);
		drop_client(c);
		/* paho names no cause for a certificate that does not name the
		 * host, nor the reason behind OpenSSL's "verify failed" */
		if (c->tls_host && c->verify)
			abx_mqtt_tls_diagnose(c->tls_host, c->tls_port, c->cafile,
			                      timeout_ms < 2000 ? timeout_ms : 2000, why, sizeof(why));
		ackbox_errstr_set(errstr, errstr_size, "mqtt: cannot connect to %s as '%s': %s%s%s",
		                  c->uri, c->client_id, rc == 0 ? "timed out" : c->connect_error,
		                  why[0] ? ": " : "", why);
		return ACKBOX_ERR_TRANSPORT;
	}
	max_packet = atomic_load(&c->max_packet);
	if (max_packet)
		ackbox_tx_log(c->host, ACKBOX_LOG_INFO,
		              "%s: the broker's Maximum Packet Size is %u bytes; larger messages are "
		              "refused at publish",
		              c->uri, (unsigned)max_packet);
	return 0;
}

static int add_user_prop(MQTTProperties *props, const char *name, const void *value, size_t len)
{
	MQTTProperty p;
	memset(&p, 0, sizeof(p));
	p.identifier = MQTTPROPERTY_CODE_USER_PROPERTY;
	p.value.data.data = (char *)name;
	p.value.data.len = (int)strlen(name);
	p.value.value.data = (char *)value;
	p.value.value.len = (int)len;
	return MQTTProperties_add(props, &p);
}

/* The MQTT 5 properties of m: id, key, headers, content type. 0 or paho's error. */
static int build_props(MQTTProperties *props, const ackbox_tx_msg *m)
{
	int rc = add_user_prop(props, "ackbox-id", m->id_str, strlen(m->id_str));
	if (!rc && m->key_len)
		rc = add_user_prop(props, "ackbox-key", m->key, m->key_len);
	for (size_t i = 0; !rc && i < m->header_count; i++)
		rc = add_user_prop(props, m->headers[i].name, m->headers[i].value,
		                   m->headers[i].value_len);
	if (!rc && m->content_type) {
		MQTTProperty ct;
		memset(&ct, 0, sizeof(ct));
		ct.identifier = MQTTPROPERTY_CODE_CONTENT_TYPE;
		ct.value.data.data = (char *)m->content_type;
		ct.value.data.len = (int)strlen(m->content_type);
		rc = MQTTProperties_add(props, &ct);
	}
	return rc;
}

/* A message that can never be sent as it is: one ERROR for its token, not
 * retriable; the connection is not touched. */
static int refuse(mqtt_ctx *c, const ackbox_tx_msg *m, const char *why)
{
	ackbox_tx_event ev = {ACKBOX_TX_ERROR, m->token, 0, 0, why};
	ackbox_tx_report(c->host, &ev);
	return ACKBOX_TX_SENT;
}

/* With mqtt.id_in_payload, m as it goes on the wire: the payload behind the
 * id prefix (include/ackbox/mqtt.h), in *buf, which the caller frees.
 * Returns m itself without the option, NULL when out of memory. */
static const ackbox_tx_msg *on_wire(mqtt_ctx *c, const ackbox_tx_msg *m, ackbox_tx_msg *copy,
                                    char **buf)
{
	*buf = NULL;
	if (!c->id_in_payload)
		return m;
	*buf = malloc(ACKBOX_MQTT_ID_PREFIX_LEN + 1 + m->payload_len);
	if (!*buf)
		return NULL;
	/* validate may run before the id is known: the size is what counts */
	snprintf(*buf, ACKBOX_MQTT_ID_PREFIX_LEN + 1, ACKBOX_MQTT_ID_PREFIX "%.36s\n",
	         m->id_str ? m->id_str : "00000000-0000-0000-0000-000000000000");
	if (m->payload_len)
		memcpy(*buf + ACKBOX_MQTT_ID_PREFIX_LEN, m->payload, m->payload_len);
	*copy = *m;
	copy->payload = *buf;
	copy->payload_len = ACKBOX_MQTT_ID_PREFIX_LEN + m->payload_len;
	return copy;
}

static int mqtt_send_wire(mqtt_ctx *c, const ackbox_tx_msg *m);

static int mqtt_send(void *vctx, const ackbox_tx_msg *m)
{
	mqtt_ctx *c = vctx;
	ackbox_tx_msg copy;
	char *buf;
	const ackbox_tx_msg *w = on_wire(c, m, &copy, &buf);
	int rc = w ? mqtt_send_wire(c, w) : ACKBOX_TX_BUSY;
	free(buf);
	return rc;
}

/* paho copies the payload before MQTTAsync_sendMessage returns. */
static int mqtt_send_wire(mqtt_ctx *c, const ackbox_tx_msg *m)
{
	MQTTAsync_message msg = MQTTAsync_message_initializer;
	MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
	MQTTProperties props = MQTTProperties_initializer;
	char why[400];
	pub *p = NULL;
	int rc;

	/* validate ran at publish, but not on rows stored without it, and the
	 * broker's Maximum Packet Size may have been learned (or lowered) since:
	 * a broker answers an oversized or malformed PUBLISH by closing the
	 * connection, so it must not leave */
	if (abx_mqtt_check(m, c->v5, c->qos, atomic_load(&c->max_packet), why, sizeof(why)))
		return refuse(c, m, why);

	pthread_mutex_lock(&c->mtx);
	if (!c->connected) {
		pthread_mutex_unlock(&c->mtx);
		return ACKBOX_TX_NOT_CONNECTED;
	}
	for (int i = 0; i < c->npubs; i++) {
		if (!c->pubs[i].token) {
			p = &c->pubs[i];
			p->token = m->token;
			break;
		}
	}
	pthread_mutex_unlock(&c->mtx);
	if (!p)
		return ACKBOX_TX_BUSY; /* never queue past maxInflight inside paho */

	if (c->v5) {
		if (build_props(&props, m) != 0) {
			MQTTProperties_free(&props);
			rc = PAHO_MEMORY_ERROR_CODE;
			goto not_taken;
		}
		msg.properties = props;
		ro.onSuccess5 = on_pub_ok5;
		ro.onFailure5 = on_pub_fail5;
	} else {
		ro.onSuccess = on_pub_ok;
		ro.onFailure = on_pub_fail;
	}
	ro.context = p;
	msg.payload = (void *)m->payload;
	msg.payloadlen = (int)m->payload_len;
	msg.qos = c->qos;
	msg.retained = 0;
	rc = MQTTAsync_sendMessage(c->client, m->topic, &msg, &ro);
	MQTTProperties_free(&props);
	if (rc == MQTTASYNC_SUCCESS)
		return ACKBOX_TX_SENT;
not_taken:
	pthread_mutex_lock(&c->mtx);
	p->token = 0;
	pthread_mutex_unlock(&c->mtx);
	switch (rc) {
	case MQTTASYNC_DISCONNECTED:
	case MQTTASYNC_FAILURE: /* no client */
		return ACKBOX_TX_NOT_CONNECTED;
	case MQTTASYNC_MAX_MESSAGES_INFLIGHT:
	case MQTTASYNC_MAX_BUFFERED_MESSAGES:
	case MQTTASYNC_NO_MORE_MSGIDS:
	case PAHO_MEMORY_ERROR_CODE:
		return ACKBOX_TX_BUSY;
	default:
		/* the client library refuses this message (a topic or property it
		 * cannot encode): an error for this message alone */
		snprintf(why, sizeof(why), "paho refused the publish to '%.64s': %s (paho %d)",
		         m->topic, paho_error(rc), rc);
		return refuse(c, m, why);
	}
}

static int mqtt_validate(void *vctx, const ackbox_tx_msg *m, char *errstr, size_t errstr_size)
{
	mqtt_ctx *c = vctx;
	ackbox_tx_msg copy;
	char *buf;
	const ackbox_tx_msg *w = on_wire(c, m, &copy, &buf);
	int rc = w ? abx_mqtt_check(w, c->v5, c->qos, atomic_load(&c->max_packet), errstr,
	                            errstr_size)
	           : ACKBOX_ERR_NOMEM;
	free(buf);
	return rc;
}

static void mqtt_close(void *vctx)
{
	mqtt_ctx *c = vctx;
	if (c->client) {
		MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
		/* our own disconnect is no news for the core */
		pthread_mutex_lock(&c->mtx);
		c->connected = 0;
		pthread_mutex_unlock(&c->mtx);
		d.timeout = 1000;
		MQTTAsync_disconnect(c->client, &d);
	}
	if (c->pubs)
		drop_client(c);
	free(c->pubs);
	free(c->uri);
	free(c->client_id);
	free(c->user);
	free(c->password);
	free(c->cafile);
	free(c->tls_host);
	pthread_mutex_destroy(&c->mtx);
	pthread_cond_destroy(&c->cond);
}

static const char *const mqtt_schemes[] = {"mqtt", "mqtts", NULL};

const ackbox_transport_ops ackbox_mqtt_transport = {
	.abi_version = ACKBOX_TRANSPORT_ABI_VERSION,
	.struct_size = sizeof(ackbox_transport_ops),
	.schemes = mqtt_schemes,
	.caps = 0,
	.ctx_size = sizeof(mqtt_ctx),
	.props = mqtt_props,
	.description = "MQTT 5 / 3.1.1 with QoS 1 PUBACK confirms, via paho.mqtt.c (MQTTAsync)",
	.open = mqtt_open,
	.connect = mqtt_connect,
	.send = mqtt_send,
	.poll = NULL, /* paho reports from its own threads */
	.close = mqtt_close,
	.validate = mqtt_validate,
};
