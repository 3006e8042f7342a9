/*
 * kafka.c - the Kafka transport over librdkafka: an idempotent producer with
 * acks=all whose delivery reports are the confirms. librdkafka connects,
 * batches and retries by itself; this file maps its delivery reports onto
 * the core's events and nothing more.
 *
 * Delivery reports are served from librdkafka's main queue by poll() on the
 * relay thread. The queue signals a pipe when it becomes non-empty, so poll()
 * sleeps in poll(2) on that pipe and the core's wake fd together.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include <ackbox/kafka.h>
#include <ackbox/transport.h>

/* OpenTelemetry messaging.system for the metrics */
#define SYSTEM_NAME "kafka"

/*
 * What a record costs on the wire besides its key, value and headers, as
 * counted against message.max.bytes. librdkafka 2.0.2 refuses a message in
 * rd_kafka_producev when key + value + headers + RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD
 * (36: the record's length, attributes, timestamp and offset deltas, key and
 * value lengths and header count, each varint at its widest) exceeds its
 * message.max.bytes. A broker checks the whole record batch against its own
 * message.max.bytes (max.message.bytes of the topic), and the batch adds a
 * 61-byte header (RD_KAFKAP_MSGSET_V2_SIZE). Counting both means that a
 * message ackbox accepts also fits a broker whose limit is the producer's.
 */
#define RECORD_OVERHEAD 36
#define BATCH_HEADER 61
#define WIRE_OVERHEAD (RECORD_OVERHEAD + BATCH_HEADER)

#define CONTENT_TYPE_HEADER "content-type"

typedef struct kafka_ctx {
	ackbox_tx_host *host;
	rd_kafka_conf_t *conf; /* template; each producer gets a copy */
	char *bootstrap;
	rd_kafka_t *rk;
	rd_kafka_queue_t *mainq;
	int pipefd[2]; /* librdkafka writes a byte when its main queue fills */
	int window;
	size_t max_msg_bytes; /* librdkafka's message.max.bytes, set by open() */
	atomic_int fatal;
	char fatal_reason[512];
	/* librdkafka said every broker is down (ALL_BROKERS_DOWN): the
	 * connection is lost, as a closed socket is to the other transports.
	 * Set in on_error, on the relay thread (rd_kafka_poll); poll() drops
	 * the producer and reports DISCONNECTED */
	int all_down;
	char down_reason[400];
	/* the last error about the client as a whole (librdkafka's threads
	 * write it, connect reads it to say why nobody answered) */
	pthread_mutex_t err_mtx;
	char last_error[512];
	int auth_failed; /* an authentication or TLS error: waiting longer cannot help */
	/* timed out before reaching a broker: why is asked of the cluster in poll() */
	struct timed_out {
		uint64_t token;
		char *topic;
		char *reason;
	} *stale;
	size_t nstale, cap_stale;
} kafka_ctx;

/*
 * Keys ackbox documents or sets a default for. Every other kafka.<name> is
 * passed to librdkafka as <name> unchanged (ACKBOX_PLUGIN_CAP_PASSTHROUGH_KEYS).
 */
static const ackbox_prop kafka_props[] = {
	{"window", ACKBOX_PROP_INT, "10000", 1, 1000000, NULL,
	 "ackbox's own key, not librdkafka's: messages awaiting a delivery report at once."},
	{"acks", ACKBOX_PROP_STRING, "all", 0, 0, NULL,
	 "librdkafka acks: 'all' waits for every in-sync replica (what a confirm means)."},
	{"enable.idempotence", ACKBOX_PROP_STRING, "true", 0, 0, NULL,
	 "librdkafka idempotent producer: its own retries neither duplicate nor reorder."},
	{"message.timeout.ms", ACKBOX_PROP_STRING, NULL, 0, 0, NULL,
	 "librdkafka delivery timeout. Default: retry.timeout minus 2 s, so librdkafka always "
	 "reports before the core gives up on an attempt; it must stay below retry.timeout."},
	{"socket.nagle.disable", ACKBOX_PROP_STRING, "true", 0, 0, NULL,
	 "librdkafka TCP_NODELAY on the producer's sockets (linger.ms already batches)."},
	{NULL, 0, NULL, 0, 0, NULL, NULL}};

static const char *conf(kafka_ctx *c, const char *key)
{
	return ackbox_conf_get(ackbox_tx_conf(c->host), key);
}

/* ---- librdkafka callbacks ---- */

/* Keeps a timed-out message for check_stale(); 0 if out of memory. */
static int remember(kafka_ctx *c, const rd_kafka_message_t *m, const char *why)
{
	if (c->nstale == c->cap_stale) {
		size_t cap = c->cap_stale ? c->cap_stale * 2 : 64;
		void *p = realloc(c->stale, cap * sizeof(*c->stale));
		if (!p)
			return 0;
		c->stale = p;
		c->cap_stale = cap;
	}
	c->stale[c->nstale].token = (uint64_t)(uintptr_t)m->_private;
	c->stale[c->nstale].topic = strdup(rd_kafka_topic_name(m->rkt));
	c->stale[c->nstale].reason = strdup(why);
	if (!c->stale[c->nstale].topic || !c->stale[c->nstale].reason) {
		free(c->stale[c->nstale].topic);
		free(c->stale[c->nstale].reason);
		return 0;
	}
	c->nstale++;
	return 1;
}

/* Empties the timed-out list, reporting what is left as NOT_SENT if asked. */
static void forget_stale(kafka_ctx *c, int report)
{
	for (size_t i = 0; i < c->nstale; i++) {
		if (report && c->stale[i].topic) {
			ackbox_tx_event ev = {ACKBOX_TX_NOT_SENT, c->stale[i].token, 0, 1,
			                      c->stale[i].reason};
			ackbox_tx_report(c->host, &ev);
		}
		free(c->stale[i].topic);
		free(c->stale[i].reason);
	}
	c->nstale = 0;
}

/* Delivery report: runs on the relay thread, inside rd_kafka_poll(). */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	kafka_ctx *c = opaque;
	ackbox_tx_event ev = {ACKBOX_TX_ACK, (uint64_t)(uintptr_t)m->_private, 0, 1, NULL};
	char why[512];
	(void)rk;

	if (m->err) {
		rd_kafka_msg_status_t st = rd_kafka_message_status(m);
		/* not rd_kafka_message_errstr(): for a delivery report it may point
		 * into the payload, which is not NUL-terminated */
		snprintf(why, sizeof(why), "%s: %s", rd_kafka_err2name(m->err),
		         rd_kafka_err2str(m->err));
		ev.reason = why;
		ev.broker_code = m->err;
		if (m->err > 0) {
			/* the broker refused it and librdkafka will not retry it */
			ev.kind = ACKBOX_TX_ERROR;
		} else if (st == RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED) {
			ev.kind = ACKBOX_TX_IN_DOUBT;
		} else if (m->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
		           m->err == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION ||
		           m->err == RD_KAFKA_RESP_ERR__INVALID_ARG) {
			/* the cluster answered, and the answer is no */
			ev.kind = ACKBOX_TX_ERROR;
		} else if (m->err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT && remember(c, m, why)) {
			/* never sent: an outage, or a topic the cluster refuses?
			 * librdkafka 2.0 only says "timed out"; poll() asks */
			return;
		} else {
			/* purged, or timed out in the queue: it never reached a broker */
			ev.kind = ACKBOX_TX_NOT_SENT;
		}
	}
	ackbox_tx_report(c->host, &ev);
}

/*
 * Keeps the last connection error for connect() to name. An authentication
 * or TLS failure will not pass by waiting, so connect() stops at once.
 * Any librdkafka thread.
 */
static void note_error(kafka_ctx *c, const char *text, int auth)
{
	const char *t = strstr(text, "]: ");
	t = t ? t + 3 : text; /* without librdkafka's "[thrd:...]: " */
	auth = auth || strstr(t, "SASL") || strstr(t, "SSL") || strstr(t, "uthenticat");
	pthread_mutex_lock(&c->err_mtx);
	snprintf(c->last_error, sizeof(c->last_error), "%s", t);
	if (auth)
		c->auth_failed = 1;
	pthread_mutex_unlock(&c->err_mtx);
}

/* Errors about the client as a whole: any librdkafka thread. */
static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	kafka_ctx *c = opaque;
	if (err == RD_KAFKA_RESP_ERR__FATAL) {
		char buf[400];
		rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, buf, sizeof(buf));
		snprintf(c->fatal_reason, sizeof(c->fatal_reason), "fatal producer error %s: %s",
		         rd_kafka_err2name(orig), buf);
		atomic_store(&c->fatal, 1);
		ackbox_tx_log(c->host, ACKBOX_LOG_ERROR, "%s", c->fatal_reason);
		return;
	}
	note_error(c, reason, err == RD_KAFKA_RESP_ERR__AUTHENTICATION || err == RD_KAFKA_RESP_ERR__SSL);
	if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
		/* on_error runs inside rd_kafka_poll(): the relay thread */
		c->all_down = 1;
		snprintf(c->down_reason, sizeof(c->down_reason), "%s: %s",
		         rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
	}
	/* broker connections come and go; librdkafka reconnects by itself */
	ackbox_tx_log(c->host, err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN ? ACKBOX_LOG_WARN
	                                                                   : ACKBOX_LOG_INFO,
	              "%s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	kafka_ctx *c = rd_kafka_opaque(rk);
	/* librdkafka logs a refused connection as an error; to ackbox an
	 * unreachable broker is a warning: nothing is lost */
	ackbox_log_level l = level <= 4   ? ACKBOX_LOG_WARN
	                     : level <= 6 ? ACKBOX_LOG_INFO
	                                  : ACKBOX_LOG_DEBUG;
	/* connection failures are logged at once (the error callback waits
	 * for the next poll): connect() names the last one */
	if (level <= 4 && (strcmp(fac, "FAIL") == 0 || strcmp(fac, "ERROR") == 0))
		note_error(c, buf, 0);
	ackbox_tx_log(c->host, l, "librdkafka %s: %s", fac, buf);
}

/* ---- configuration librdkafka refuses only as a whole ---- */

static void quiet_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	(void)rk;
	(void)level;
	(void)fac;
	(void)buf;
}

/*
 * rd_kafka_new refused the configuration (why): settings that conflict,
 * such as acks=1 with enable.idempotence=true, which rd_kafka_conf_set
 * cannot see one key at a time. A configuration error, not an unreachable
 * cluster. librdkafka names the properties in backquotes; they are named
 * back as the kafka.* keys that set them.
 */
static int conf_refused(const rd_kafka_conf_t *rc, const char *why, char *errstr,
                        size_t errstr_size)
{
	char keys[256] = "", name[128];
	size_t kl = 0;
	for (const char *p = strchr(why, '`'), *e; p && (e = strchr(p + 1, '`'));
	     p = strchr(e + 1, '`')) {
		size_t n = (size_t)(e - p - 1), vl = 0;
		int w;
		if (n == 0 || n >= sizeof(name))
			continue;
		memcpy(name, p + 1, n);
		name[n] = '\0';
		/* values are quoted too (`all`): name only what is a property */
		if (rd_kafka_conf_get(rc, name, NULL, &vl) != RD_KAFKA_CONF_OK)
			continue;
		w = snprintf(keys + kl, sizeof(keys) - kl, "%skafka.%s", kl ? ", " : "", name);
		if (w < 0 || (size_t)w >= sizeof(keys) - kl)
			break;
		kl += (size_t)w;
	}
	ackbox_errstr_set(errstr, errstr_size, "%s: librdkafka refuses these settings together: %s",
	                  kl ? keys : "kafka.*", why);
	return ACKBOX_ERR_BAD_VALUE;
}

/*
 * Makes and destroys a producer of the configuration, so that settings
 * librdkafka refuses only in rd_kafka_new are refused by ackbox_new (CLI
 * exit 2), instead of every connect failing as if no broker answered. It
 * has no bootstrap.servers (connect() adds them), so it opens no socket, and
 * it logs nothing: the real producer logs librdkafka's warnings once.
 */
static int conf_check(kafka_ctx *c, char *errstr, size_t errstr_size)
{
	char why[512];
	rd_kafka_conf_t *rc = rd_kafka_conf_dup(c->conf);
	rd_kafka_t *rk;
	int rc_err;
	if (!rc)
		return ACKBOX_ERR_NOMEM;
	rd_kafka_conf_set_log_cb(rc, quiet_log);
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, rc, why, sizeof(why));
	if (!rk) {
		rc_err = conf_refused(rc, why, errstr, errstr_size);
		rd_kafka_conf_destroy(rc); /* rd_kafka_new keeps it only on success */
		return rc_err;
	}
	rd_kafka_destroy(rk);
	return 0;
}

/* ---- the ops ---- */

struct set_ctx {
	rd_kafka_conf_t *rc;
	int rc_err;
	char *errstr;
	size_t errstr_size;
};

/* Passes one kafka.<name> key to librdkafka. */
static void pass_key(const char *key, const char *value, void *opaque)
{
	struct set_ctx *s = opaque;
	const char *name = key + strlen("kafka.");
	char why[256];
	rd_kafka_conf_res_t res;

	if (s->rc_err || strcmp(name, "window") == 0)
		return;
	if (strcmp(name, "bootstrap.servers") == 0 || strcmp(name, "metadata.broker.list") == 0) {
		ackbox_errstr_set(s->errstr, s->errstr_size,
		                  "%s: put the brokers in transport.url (kafka://host:port,host:port)",
		                  key);
		s->rc_err = ACKBOX_ERR_BAD_VALUE;
		return;
	}
	if (strcmp(name, "transactional.id") == 0) {
		/* librdkafka would take it, and then refuse every message sent
		 * outside a transaction (_STATE: Erroneous state) */
		ackbox_errstr_set(s->errstr, s->errstr_size,
		                  "%s: ackbox does not use Kafka transactions, and a transactional "
		                  "producer refuses every message sent outside one; leave it unset "
		                  "(enable.idempotence already keeps librdkafka's retries free of "
		                  "duplicates)",
		                  key);
		s->rc_err = ACKBOX_ERR_BAD_VALUE;
		return;
	}
	res = rd_kafka_conf_set(s->rc, name, value, why, sizeof(why));
	if (res == RD_KAFKA_CONF_UNKNOWN) {
		ackbox_errstr_set(s->errstr, s->errstr_size, "%s: librdkafka has no property '%s'",
		                  key, name);
		s->rc_err = ACKBOX_ERR_UNKNOWN_KEY;
	} else if (res != RD_KAFKA_CONF_OK) {
		ackbox_errstr_set(s->errstr, s->errstr_size, "%s: %s", key, why);
		s->rc_err = ACKBOX_ERR_BAD_VALUE;
	}
}

static int open_(kafka_ctx *c, const ackbox_url *url, ackbox_tx_host *host, ackbox_tx_info *info,
                 char *errstr, size_t errstr_size);

static const char *const no_query[] = {NULL};

/*
 * kafka://user:password@host: the user and password become sasl.username
 * and sasl.password (never dropped: a URL with credentials that connected
 * without them would look authenticated and not be). Refused when the
 * security protocol set with kafka.security.protocol does not use SASL, or
 * when kafka.sasl.username/password are set as well.
 */
static int sasl_from_url(kafka_ctx *c, const ackbox_url *url, char *errstr, size_t errstr_size)
{
	char buf[64];
	size_t bl = sizeof(buf);
	const ackbox_conf *cf = ackbox_tx_conf(c->host);
	if (ackbox_conf_get(cf, "kafka.sasl.username") || ackbox_conf_get(cf, "kafka.sasl.password")) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "transport.url: has a user and password, and kafka.sasl.username "
		                  "or kafka.sasl.password is set too: give them once");
		return ACKBOX_ERR_BAD_VALUE;
	}
	if (rd_kafka_conf_get(c->conf, "security.protocol", buf, &bl) != RD_KAFKA_CONF_OK ||
	    strncasecmp(buf, "sasl_", 5) != 0) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "transport.url: has a user and password, which Kafka checks only "
		                  "with SASL, but kafka.security.protocol is '%s' (use sasl_plaintext "
		                  "or sasl_ssl)",
		                  buf);
		return ACKBOX_ERR_BAD_VALUE;
	}
	if (rd_kafka_conf_set(c->conf, "sasl.username", url->user, NULL, 0) != RD_KAFKA_CONF_OK ||
	    rd_kafka_conf_set(c->conf, "sasl.password", url->password, NULL, 0) !=
	        RD_KAFKA_CONF_OK) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "transport.url: librdkafka refuses SASL credentials (built without "
		                  "SASL?)");
		return ACKBOX_ERR_BAD_VALUE;
	}
	return 0;
}

/*
 * Certificate and key files librdkafka would read only when it connects: one
 * that cannot be read is a configuration error now (CLI exit 2), not a
 * cluster that never answers.
 */
static int files_readable(kafka_ctx *c, char *errstr, size_t errstr_size)
{
	static const char *const keys[] = {"ssl.ca.location", "ssl.certificate.location",
	                                   "ssl.key.location", NULL};
	for (const char *const *k = keys; *k; k++) {
		char path[1024], shown[256];
		size_t pl = sizeof(path);
		if (rd_kafka_conf_get(c->conf, *k, path, &pl) != RD_KAFKA_CONF_OK || !path[0] ||
		    strcmp(path, "probe") == 0)
			continue;
		if (access(path, R_OK) != 0) {
			ackbox_escape(path, strlen(path), shown, sizeof(shown));
			ackbox_errstr_set(errstr, errstr_size, "kafka.%s: cannot read '%s': %s", *k, shown,
			                  strerror(errno));
			return ACKBOX_ERR_BAD_VALUE;
		}
	}
	return 0;
}

/* close() is not called when open fails: free what was made here. */
static int kafka_open(void *vctx, const ackbox_url *url, ackbox_tx_host *host, ackbox_tx_info *info,
                      char *errstr, size_t errstr_size)
{
	kafka_ctx *c = vctx;
	int rc;
	pthread_mutex_init(&c->err_mtx, NULL);
	rc = open_(c, url, host, info, errstr, errstr_size);
	if (rc) {
		if (c->conf)
			rd_kafka_conf_destroy(c->conf);
		free(c->bootstrap);
		c->conf = NULL;
		c->bootstrap = NULL;
		pthread_mutex_destroy(&c->err_mtx);
	}
	return rc;
}

static int open_(kafka_ctx *c, const ackbox_url *url, ackbox_tx_host *host, ackbox_tx_info *info,
                 char *errstr, size_t errstr_size)
{
	struct set_ctx s = {NULL, 0, errstr, errstr_size};
	int64_t retry_ms = 10000, msg_timeout_ms;
	char buf[64];
	size_t bl = sizeof(buf);

	c->host = host;
	c->pipefd[0] = c->pipefd[1] = -1;
	if (ackbox_url_query_check(url, "transport.url", no_query, errstr, errstr_size) != 0)
		return ACKBOX_ERR_BAD_URL;
	if ((url->user || url->password) && (!url->user || !url->user[0] || !url->password)) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "transport.url: kafka://user:password@host authenticates with SASL "
		                  "and needs both a user and a password");
		return ACKBOX_ERR_BAD_URL;
	}
	if (!url->hosts[0]) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "transport.url: kafka:// needs at least one broker (host:port)");
		return ACKBOX_ERR_BAD_URL;
	}
	c->bootstrap = strdup(url->hosts);
	c->conf = rd_kafka_conf_new();
	if (!c->bootstrap || !c->conf)
		return ACKBOX_ERR_NOMEM;
	s.rc = c->conf;
	c->window = atoi(conf(c, "kafka.window"));

	/* ackbox's defaults first, then whatever the application set. The
	 * template has no bootstrap.servers: connect() adds them to each
	 * producer's copy, so that conf_check's producer connects nowhere */
	if (url->user) {
		/* credentials in the URL mean SASL: PLAIN over plain TCP unless
		 * kafka.security.protocol / kafka.sasl.mechanisms say otherwise */
		rd_kafka_conf_set(c->conf, "security.protocol", "sasl_plaintext", NULL, 0);
		rd_kafka_conf_set(c->conf, "sasl.mechanisms", "PLAIN", NULL, 0);
	}
	for (const ackbox_prop *p = kafka_props; p->name; p++) {
		char key[128];
		snprintf(key, sizeof(key), "kafka.%s", p->name);
		if (p->def && strcmp(p->name, "window") != 0)
			pass_key(key, conf(c, key), &s);
	}
	ackbox_parse_duration_ms(conf(c, "retry.timeout"), &retry_ms);
	msg_timeout_ms = retry_ms - 2000;
	if (msg_timeout_ms < 1000 && !conf(c, "kafka.message.timeout.ms")) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "retry.timeout: kafka needs at least 3s (librdkafka's "
		                  "message.timeout.ms = retry.timeout - 2s must be >= 1s)");
		return ACKBOX_ERR_BAD_VALUE;
	}
	snprintf(buf, sizeof(buf), "%" PRId64, msg_timeout_ms);
	pass_key("kafka.message.timeout.ms", buf, &s);
	ackbox_conf_foreach(ackbox_tx_conf(host), "kafka.", pass_key, &s);
	if (s.rc_err)
		return s.rc_err;
	if (url->user) {
		int rc = sasl_from_url(c, url, errstr, errstr_size);
		if (rc)
			return rc;
	}
	{
		int rc = files_readable(c, errstr, errstr_size);
		if (rc)
			return rc;
	}
	if (rd_kafka_conf_get(c->conf, "message.timeout.ms", buf, &bl) == RD_KAFKA_CONF_OK &&
	    atoll(buf) + 1000 > retry_ms) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "kafka.message.timeout.ms: %s must stay at least 1s below "
		                  "retry.timeout (%" PRId64 " ms), or both would resend",
		                  buf, retry_ms);
		return ACKBOX_ERR_BAD_VALUE;
	}
	{
		int rc = conf_check(c, errstr, errstr_size);
		if (rc)
			return rc;
	}
	bl = sizeof(buf);
	if (rd_kafka_conf_get(c->conf, "message.max.bytes", buf, &bl) == RD_KAFKA_CONF_OK)
		c->max_msg_bytes = (size_t)atoll(buf);
	/* the payload alone may not exceed it; validate() counts the rest */
	info->max_message_size = c->max_msg_bytes;
	rd_kafka_conf_set_dr_msg_cb(c->conf, on_delivery);
	rd_kafka_conf_set_error_cb(c->conf, on_error);
	rd_kafka_conf_set_log_cb(c->conf, on_log);
	rd_kafka_conf_set_opaque(c->conf, c);
	info->max_inflight = c->window;
	info->system_name = SYSTEM_NAME;
	return 0;
}

/* Serves queued delivery reports. */
static void serve(kafka_ctx *c)
{
	char b[64];
	while (read(c->pipefd[0], b, sizeof(b)) > 0)
		;
	rd_kafka_poll(c->rk, 0);
}

/*
 * Drops the producer: what it still holds is purged and reported (NOT_SENT,
 * or IN_DOUBT if it may have reached a broker), so nothing waits on it.
 */
static void drop_producer(kafka_ctx *c)
{
	if (!c->rk)
		return;
	rd_kafka_purge(c->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
	serve(c);
	forget_stale(c, 1);
	rd_kafka_queue_destroy(c->mainq);
	rd_kafka_destroy(c->rk);
	c->rk = NULL;
	c->mainq = NULL;
	close(c->pipefd[0]);
	close(c->pipefd[1]);
	c->pipefd[0] = c->pipefd[1] = -1;
	atomic_store(&c->fatal, 0);
	c->all_down = 0;
}

static int kafka_connect(void *vctx, int timeout_ms, char *errstr, size_t errstr_size)
{
	kafka_ctx *c = vctx;
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err;
	char why[512];
	int waited;

	if (atomic_load(&c->fatal))
		drop_producer(c);
	if (!c->rk) {
		rd_kafka_conf_t *rc = rd_kafka_conf_dup(c->conf);
		rd_kafka_conf_set(rc, "bootstrap.servers", c->bootstrap, NULL, 0);
		if (pipe2(c->pipefd, O_NONBLOCK | O_CLOEXEC) != 0) {
			rd_kafka_conf_destroy(rc);
			ackbox_errstr_set(errstr, errstr_size, "kafka: pipe: %s", strerror(errno));
			return ACKBOX_ERR_TRANSPORT;
		}
		c->rk = rd_kafka_new(RD_KAFKA_PRODUCER, rc, why, sizeof(why));
		if (!c->rk) {
			rd_kafka_conf_destroy(rc);
			close(c->pipefd[0]);
			close(c->pipefd[1]);
			c->pipefd[0] = c->pipefd[1] = -1;
			/* open()'s conf_check made one of the same settings, so this
			 * is not expected; it is a configuration error all the same */
			return conf_refused(c->conf, why, errstr, errstr_size);
		}
		c->mainq = rd_kafka_queue_get_main(c->rk);
		rd_kafka_queue_io_event_enable(c->mainq, c->pipefd[1], "1", 1);
	}
	/*
	 * librdkafka connects by itself; this only asks whether anyone answers,
	 * in slices so that a shutting-down handle need not wait long. A
	 * metadata request is dropped when its slice ends, so the slices grow
	 * (250 ms, doubling, at most 2 s): with fixed 250 ms slices a cluster
	 * more than 250 ms of round trip away never answered in time
	 * (docs/reliability.md, the latency fault).
	 */
	waited = 0;
	for (int step = 250;; step = step < 1000 ? 2 * step : 2000) {
		int slice = timeout_ms - waited < step ? timeout_ms - waited : step;
		int auth_failed;
		err = rd_kafka_metadata(c->rk, 0, NULL, &md, slice > 0 ? slice : 1);
		waited += slice;
		pthread_mutex_lock(&c->err_mtx);
		auth_failed = c->auth_failed;
		pthread_mutex_unlock(&c->err_mtx);
		if (!err || waited >= timeout_ms || ackbox_tx_stopping(c->host) || auth_failed)
			break;
	}
	if (!err) {
		/* a broker answered: what librdkafka said while none did (queued
		 * on the main queue, ALL_BROKERS_DOWN among it) is history. Served
		 * now, or the next poll() would take the cluster for gone again */
		serve(c);
		c->all_down = 0;
	}
	if (err) {
		char last[512];
		pthread_mutex_lock(&c->err_mtx);
		snprintf(last, sizeof(last), "%s", c->last_error);
		c->last_error[0] = '\0';
		c->auth_failed = 0;
		pthread_mutex_unlock(&c->err_mtx);
		ackbox_errstr_set(errstr, errstr_size,
		                  "kafka: no broker of %s answered within %d ms: %s%s%s", c->bootstrap,
		                  waited < timeout_ms ? waited : timeout_ms, rd_kafka_err2str(err),
		                  last[0] ? "; last error: " : "", last);
		return ACKBOX_ERR_TRANSPORT;
	}
	rd_kafka_metadata_destroy(md);
	return 0;
}

/* Bytes of a length as a zigzag varint, the way librdkafka writes header lengths. */
static size_t varint_size(size_t len)
{
	uint64_t u = (uint64_t)len << 1;
	size_t n = 1;
	while (u >= 0x80) {
		u >>= 7;
		n++;
	}
	return n;
}

/* One record header serialised: the name's length, the name, the value's, the value. */
static size_t header_size(size_t name_len, size_t value_len)
{
	return varint_size(name_len) + name_len + varint_size(value_len) + value_len;
}

/* Every header kafka_send() puts on m, serialised: ackbox's own and the message's. */
static size_t headers_size(const ackbox_tx_msg *m)
{
	size_t n = header_size(strlen(ACKBOX_KAFKA_ID_HEADER), strlen(m->id_str));
	if (m->content_type)
		n += header_size(strlen(CONTENT_TYPE_HEADER), strlen(m->content_type));
	for (size_t i = 0; i < m->header_count; i++)
		n += header_size(strlen(m->headers[i].name), m->headers[i].value_len);
	return n;
}

/*
 * The message as kafka_send() would produce it against message.max.bytes,
 * counted as librdkafka and a broker count it (WIRE_OVERHEAD): what this
 * accepts, rd_kafka_producev takes and a broker with the same limit stores.
 */
static int check_size(const kafka_ctx *c, const ackbox_tx_msg *m, char *errstr,
                      size_t errstr_size)
{
	size_t hl = headers_size(m), rest = m->key_len + hl + WIRE_OVERHEAD;
	if (!c->max_msg_bytes || m->payload_len + rest <= c->max_msg_bytes)
		return 0;
	if (rest < c->max_msg_bytes)
		ackbox_errstr_set(errstr, errstr_size,
		                  "kafka: the message would take %zu bytes (payload %zu, key %zu, "
		                  "headers %zu with ackbox's own, record and batch overhead %d), over "
		                  "kafka.message.max.bytes = %zu; with this key and these headers a "
		                  "payload of at most %zu bytes fits",
		                  m->payload_len + rest, m->payload_len, m->key_len, hl, WIRE_OVERHEAD,
		                  c->max_msg_bytes, c->max_msg_bytes - rest);
	else
		ackbox_errstr_set(errstr, errstr_size,
		                  "kafka: the message would take %zu bytes (payload %zu, key %zu, "
		                  "headers %zu with ackbox's own, record and batch overhead %d), over "
		                  "kafka.message.max.bytes = %zu; the key and headers alone do not fit",
		                  m->payload_len + rest, m->payload_len, m->key_len, hl, WIRE_OVERHEAD,
		                  c->max_msg_bytes);
	return ACKBOX_ERR_TOO_LARGE;
}

static int legal_topic_char(unsigned char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
	       ch == '.' || ch == '_' || ch == '-';
}

/*
 * Kafka's rule for topic names (Topic.validate in Kafka's own code): 1 to
 * 249 characters of [a-zA-Z0-9._-], and not "." or "..". A broker refuses
 * any other name (INVALID_TOPIC_EXCEPTION) however often it is resent.
 * Then the size (check_size). Reads only what open() set: safe on any thread.
 */
static int kafka_validate(void *vctx, const ackbox_tx_msg *m, char *errstr, size_t errstr_size)
{
	const char *t = m->topic;
	size_t n = strlen(t);
	if (n == 0) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "topic: empty; a Kafka topic has 1 to 249 characters");
		return ACKBOX_ERR_INVALID;
	}
	if (n > 249) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "topic: %zu characters; a Kafka topic has at most 249", n);
		return ACKBOX_ERR_INVALID;
	}
	if (strcmp(t, ".") == 0 || strcmp(t, "..") == 0) {
		ackbox_errstr_set(errstr, errstr_size, "topic: '%s' is not a legal Kafka topic name",
		                  t);
		return ACKBOX_ERR_INVALID;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)t[i];
		if (!legal_topic_char(ch)) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "topic: byte 0x%02x at offset %zu; a Kafka topic may hold "
			                  "only ASCII letters, digits, '.', '_' and '-'",
			                  ch, i);
			return ACKBOX_ERR_INVALID;
		}
	}
	return check_size(vctx, m, errstr, errstr_size);
}

static int kafka_send(void *vctx, const ackbox_tx_msg *m)
{
	kafka_ctx *c = vctx;
	rd_kafka_headers_t *hs;
	rd_kafka_resp_err_t err;

	if (!c->rk || atomic_load(&c->fatal))
		return ACKBOX_TX_NOT_CONNECTED;
	hs = rd_kafka_headers_new(m->header_count + 2);
	/* headers_size() counts these: keep the two in step */
	rd_kafka_header_add(hs, ACKBOX_KAFKA_ID_HEADER, -1, m->id_str, (ssize_t)strlen(m->id_str));
	if (m->content_type)
		rd_kafka_header_add(hs, CONTENT_TYPE_HEADER, -1, m->content_type, -1);
	for (size_t i = 0; i < m->header_count; i++)
		rd_kafka_header_add(hs, m->headers[i].name, -1, m->headers[i].value,
		                    (ssize_t)m->headers[i].value_len);
	err = rd_kafka_producev(c->rk, RD_KAFKA_V_TOPIC(m->topic),
	                        RD_KAFKA_V_KEY((void *)m->key, m->key_len),
	                        RD_KAFKA_V_VALUE((void *)m->payload, m->payload_len),
	                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(hs),
	                        RD_KAFKA_V_OPAQUE((void *)(uintptr_t)m->token), RD_KAFKA_V_END);
	if (!err)
		return ACKBOX_TX_SENT; /* hs belongs to the message now */
	rd_kafka_headers_destroy(hs);
	if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
		return ACKBOX_TX_BUSY;
	if (err == RD_KAFKA_RESP_ERR__FATAL)
		return ACKBOX_TX_NOT_CONNECTED; /* poll() reports it; connect() starts afresh */
	{
		/* the message itself is unacceptable: an attempt that failed.
		 * Not for its size, which validate() checked just before */
		char why[512], topic[128];
		ackbox_escape(m->topic, strlen(m->topic), topic, sizeof(topic));
		snprintf(why, sizeof(why), "librdkafka refused the message for '%s': %s: %s", topic,
		         rd_kafka_err2name(err), rd_kafka_err2str(err));
		ackbox_tx_event ev = {ACKBOX_TX_ERROR, m->token, err, 0, why};
		ackbox_tx_report(c->host, &ev);
		return ACKBOX_TX_SENT;
	}
}

/*
 * Messages that timed out without reaching a broker: when the cluster says
 * their topic is in error (not authorized, unknown with auto-create off) the
 * attempt failed with that error; otherwise it was an outage and the message
 * was not sent. One bounded metadata request per topic.
 */
static void check_stale(kafka_ctx *c)
{
	for (size_t i = 0; i < c->nstale; i++) {
		struct timed_out *t = &c->stale[i];
		rd_kafka_resp_err_t terr = RD_KAFKA_RESP_ERR_NO_ERROR;
		char why[768];
		if (!t->topic)
			continue; /* answered with an earlier one of the same topic */
		rd_kafka_topic_t *rkt = rd_kafka_topic_new(c->rk, t->topic, NULL);
		const struct rd_kafka_metadata *md = NULL;
		if (rkt && rd_kafka_metadata(c->rk, 0, rkt, &md, 1000) == 0) {
			if (md->topic_cnt == 1)
				terr = md->topics[0].err;
			rd_kafka_metadata_destroy(md);
		}
		if (rkt)
			rd_kafka_topic_destroy(rkt);
		for (size_t j = i; j < c->nstale; j++) {
			struct timed_out *u = &c->stale[j];
			if (!u->topic || strcmp(u->topic, t->topic) != 0)
				continue;
			ackbox_tx_event ev = {ACKBOX_TX_NOT_SENT, u->token, 0, 1, u->reason};
			if (terr > 0) {
				char topic[128];
				ackbox_escape(u->topic, strlen(u->topic), topic, sizeof(topic));
				snprintf(why, sizeof(why), "%s: topic '%s': %s", rd_kafka_err2name(terr),
				         topic, rd_kafka_err2str(terr));
				ev = (ackbox_tx_event){ACKBOX_TX_ERROR, u->token, terr, 1, why};
			}
			ackbox_tx_report(c->host, &ev);
			if (j != i) {
				free(u->topic);
				u->topic = NULL;
			}
		}
	}
	forget_stale(c, 0);
}

static int kafka_poll(void *vctx, int timeout_ms)
{
	kafka_ctx *c = vctx;
	struct pollfd pf[2];

	if (!c->rk)
		return ACKBOX_ERR_TRANSPORT;
	serve(c);
	if (timeout_ms != 0 && !atomic_load(&c->fatal)) {
		pf[0] = (struct pollfd){ackbox_tx_wake_fd(c->host), POLLIN, 0};
		pf[1] = (struct pollfd){c->pipefd[0], POLLIN, 0};
		if (poll(pf, 2, timeout_ms) > 0 && (pf[1].revents & POLLIN))
			serve(c);
	}
	if (c->all_down) {
		/*
		 * Every broker is down: the connection is lost, as a closed
		 * socket is to the other transports. Reported first, so that
		 * everything outstanding is in doubt (resent, no attempt burnt)
		 * and the core waits out no retry.timeout on messages no broker
		 * can take. Then the producer goes with what it holds (its
		 * reports come too late to count), so nothing it queued is
		 * delivered behind the resends; connect() starts a new one once
		 * a broker answers.
		 */
		char why[512];
		snprintf(why, sizeof(why), "kafka: every broker of %s is unreachable (%s)",
		         c->bootstrap, c->down_reason);
		ackbox_tx_event ev = {ACKBOX_TX_DISCONNECTED, 0, RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, 1,
		                      why};
		ackbox_tx_report(c->host, &ev);
		drop_producer(c);
		return ACKBOX_ERR_TRANSPORT;
	}
	if (c->nstale)
		check_stale(c);
	if (atomic_load(&c->fatal)) {
		/* an idempotent producer that hit a fatal error cannot go on */
		ackbox_tx_event ev = {ACKBOX_TX_DISCONNECTED, 0, 0, 1, c->fatal_reason};
		ackbox_tx_report(c->host, &ev);
		return ACKBOX_ERR_TRANSPORT;
	}
	return 0;
}

static void kafka_close(void *vctx)
{
	kafka_ctx *c = vctx;
	/* what is unconfirmed stays in the store; the next relay resends it */
	drop_producer(c);
	free(c->stale);
	if (c->conf)
		rd_kafka_conf_destroy(c->conf);
	free(c->bootstrap);
	pthread_mutex_destroy(&c->err_mtx);
}

static const char *const kafka_schemes[] = {"kafka", NULL};

const ackbox_transport_ops ackbox_kafka_transport = {
	.abi_version = ACKBOX_TRANSPORT_ABI_VERSION,
	.struct_size = sizeof(ackbox_transport_ops),
	.schemes = kafka_schemes,
	.caps = ACKBOX_TX_CAP_SELF_CONNECTING | ACKBOX_PLUGIN_CAP_PASSTHROUGH_KEYS,
	.ctx_size = sizeof(kafka_ctx),
	.props = kafka_props,
	.description = "Apache Kafka: idempotent producer, acks=all delivery reports, via librdkafka",
	.open = kafka_open,
	.connect = kafka_connect,
	.send = kafka_send,
	.poll = kafka_poll,
	.close = kafka_close,
	.validate = kafka_validate,
};
