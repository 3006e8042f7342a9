/*
 * nats.c - the NATS JetStream transport over nats.c (libnats): asynchronous
 * JetStream publishes whose PubAck is the confirm, with the ackbox id in
 * Nats-Msg-Id so that a stream drops a resend inside its duplicate window.
 * nats.c answers on its own threads; this file turns its answers into
 * reports. The core reconnects: nats.c's own reconnect is off (see
 * docs/brokers/nats.md, "Reconnects").
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nats/nats.h>

#include <ackbox/transport.h>

#include "nats_check.h"

/* OpenTelemetry messaging.system for the metrics */
#define SYSTEM_NAME "nats"

/* ------------------------------------------------------------------ */
/* Links: what nats.c's callbacks hold instead of the context           */
/* ------------------------------------------------------------------ */

/*
 * nats.c does not join its subscription and callback threads when a
 * connection is closed and destroyed: a PubAck handler or a closed callback
 * may still run afterwards. So a callback gets no pointer to the context
 * (the core frees it after close) but a slot number and a generation, in a
 * static table that is never freed. Dropping a connection bumps the slot's
 * generation and waits until no callback is inside; a late callback finds a
 * stale generation and returns without touching anything else.
 */
#define LINK_SLOTS 1024

typedef struct link_slot {
	void *ctx;    /* NULL: free */
	uint32_t gen; /* of the live connection */
	int busy;     /* callbacks inside */
} link_slot;

static pthread_mutex_t links_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t links_cond = PTHREAD_COND_INITIALIZER;
static link_slot links[LINK_SLOTS];

static int link_take(void *ctx)
{
	int slot = -1;
	pthread_mutex_lock(&links_mtx);
	for (int i = 0; i < LINK_SLOTS && slot < 0; i++) {
		if (!links[i].ctx) {
			links[i].ctx = ctx;
			links[i].gen++;
			slot = i;
		}
	}
	pthread_mutex_unlock(&links_mtx);
	return slot;
}

static void *link_closure(int slot)
{
	uint32_t gen;
	pthread_mutex_lock(&links_mtx);
	gen = links[slot].gen;
	pthread_mutex_unlock(&links_mtx);
	return (void *)(uintptr_t)(((uint64_t)gen << 16) | (uint64_t)slot);
}

/* The context a callback may use, or NULL if its connection is gone. */
static void *link_enter(void *closure)
{
	uintptr_t v = (uintptr_t)closure;
	int slot = (int)(v & 0xffff);
	uint32_t gen = (uint32_t)(v >> 16);
	void *ctx = NULL;
	pthread_mutex_lock(&links_mtx);
	if (slot < LINK_SLOTS && links[slot].ctx && links[slot].gen == gen) {
		links[slot].busy++;
		ctx = links[slot].ctx;
	}
	pthread_mutex_unlock(&links_mtx);
	return ctx;
}

static void link_leave(void *closure)
{
	int slot = (int)((uintptr_t)closure & 0xffff);
	pthread_mutex_lock(&links_mtx);
	if (--links[slot].busy == 0)
		pthread_cond_broadcast(&links_cond);
	pthread_mutex_unlock(&links_mtx);
}

/* Makes every closure given out so far stale; returns once none is inside. */
static void link_retire(int slot, int release)
{
	pthread_mutex_lock(&links_mtx);
	links[slot].gen++;
	while (links[slot].busy > 0)
		pthread_cond_wait(&links_cond, &links_mtx);
	if (release)
		links[slot].ctx = NULL;
	pthread_mutex_unlock(&links_mtx);
}

/* ------------------------------------------------------------------ */
/* The context                                                          */
/* ------------------------------------------------------------------ */

/* A publish nats.c holds: the message it will hand back, and our token. */
typedef struct pend {
	natsMsg *msg; /* NULL: empty */
	uint64_t token;
} pend;

typedef struct nats_ctx {
	ackbox_tx_host *host;
	int slot;
	/* set by open() and never changed: validate reads them on any thread */
	char **servers;
	int nservers;
	char *hosts, *user, *password, *name, *stream, *stream_subjects;
	int window;
	int64_t ack_wait_ms, ping_ms;
	/* the server's max_payload from its INFO, 0 before the first connect;
	 * read by validate on publisher threads */
	_Atomic int64_t max_payload;
	/* duplicates the stream dropped (a PubAck with "duplicate": true) */
	atomic_ullong duplicates;
	natsConnection *nc;
	jsCtx *js;
	pthread_mutex_t mtx; /* guards what follows */
	int connected;       /* 1 from connect() until the first report that it went */
	pend *tab;           /* open addressing on the message pointer */
	size_t mask, count;
} nats_ctx;

static const ackbox_prop nats_props[] = {
	{"window", ACKBOX_PROP_INT, "1000", 1, 100000, NULL,
	 "Unconfirmed publishes at once; nats.c's PublishAsync.MaxPending is set to twice this "
	 "(it counts a publish until after its PubAck handler returned)."},
	{"ack_wait", ACKBOX_PROP_DURATION, NULL, 10, 86400000, NULL,
	 "How long nats.c waits for a PubAck before the message is reported in doubt and resent. "
	 "Default: three quarters of retry.timeout; it must stay below retry.timeout."},
	{"name", ACKBOX_PROP_STRING, "ackbox", 0, 0, NULL,
	 "The connection name the server shows (connz, logs)."},
	{"ping_interval", ACKBOX_PROP_DURATION, "30s", 100, 3600000, NULL,
	 "Client PINGs; two unanswered ones close the connection (a silent peer)."},
	{"stream", ACKBOX_PROP_STRING, NULL, 0, 0, NULL,
	 "If set, connect creates a file-backed stream of this name capturing "
	 "nats.stream_subjects when there is none; an existing stream of that name is used as "
	 "it is, its subjects unchecked (demos and tests; operators usually create streams)."},
	{"stream_subjects", ACKBOX_PROP_STRING, NULL, 0, 0, NULL,
	 "Comma-separated subjects (wildcards allowed) of the stream nats.stream creates."},
	{NULL, 0, NULL, 0, 0, NULL, NULL}};

static const char *conf(nats_ctx *c, const char *key)
{
	return ackbox_conf_get(ackbox_tx_conf(c->host), key);
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

/* ------------------------------------------------------------------ */
/* Publishes in flight: natsMsg pointer -> token                        */
/* ------------------------------------------------------------------ */

static size_t ptr_hash(const void *p)
{
	uint64_t x = (uint64_t)(uintptr_t)p;
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return (size_t)x;
}

/* Locks: c->mtx. 0, or -1 when window publishes are in flight already. */
static int pend_put(nats_ctx *c, natsMsg *msg, uint64_t token)
{
	size_t i;
	if (c->count >= (size_t)c->window)
		return -1;
	for (i = ptr_hash(msg) & c->mask; c->tab[i].msg; i = (i + 1) & c->mask)
		;
	c->tab[i].msg = msg;
	c->tab[i].token = token;
	c->count++;
	return 0;
}

/* Locks: c->mtx. The token of msg, removed; 0 if it is not there. */
static uint64_t pend_take(nats_ctx *c, const natsMsg *msg)
{
	size_t i = ptr_hash(msg) & c->mask, j;
	uint64_t token;
	while (c->tab[i].msg != msg) {
		if (!c->tab[i].msg)
			return 0;
		i = (i + 1) & c->mask;
	}
	token = c->tab[i].token;
	/* backward-shift deletion keeps every probe chain unbroken */
	for (j = i;;) {
		size_t k;
		j = (j + 1) & c->mask;
		if (!c->tab[j].msg)
			break;
		k = ptr_hash(c->tab[j].msg) & c->mask;
		if ((j > i && (k <= i || k > j)) || (j < i && k <= i && k > j)) {
			c->tab[i] = c->tab[j];
			i = j;
		}
	}
	c->tab[i].msg = NULL;
	c->count--;
	return token;
}

/* ------------------------------------------------------------------ */
/* open                                                                 */
/* ------------------------------------------------------------------ */

/* "h1:p1,h2:p2" -> nats://h1:p1, nats://h2:p2 (port 4222 by default). */
static int parse_servers(nats_ctx *c, const char *hosts, char *errstr, size_t errstr_size)
{
	char *list = strdup(hosts[0] ? hosts : "127.0.0.1"), *save = NULL;
	int n = 1;
	if (!list)
		return ACKBOX_ERR_NOMEM;
	for (const char *p = list; *p; p++)
		n += *p == ',';
	c->servers = calloc((size_t)n, sizeof(*c->servers));
	if (!c->servers) {
		free(list);
		return ACKBOX_ERR_NOMEM;
	}
	for (char *h = strtok_r(list, ",", &save); h; h = strtok_r(NULL, ",", &save)) {
		char buf[512];
		/* host, host:port, [v6], [v6]:port */
		const char *close = h[0] == '[' ? strchr(h, ']') : NULL;
		const char *colon = close ? strchr(close, ':') : strchr(h, ':');
		if (!*h || (h[0] == '[' && !close)) {
			ackbox_errstr_set(errstr, errstr_size, "transport.url: bad NATS server '%s'", h);
			free(list);
			return ACKBOX_ERR_BAD_URL;
		}
		snprintf(buf, sizeof(buf), "nats://%s%s", h, colon ? "" : ":4222");
		if (!(c->servers[c->nservers++] = strdup(buf))) {
			free(list);
			return ACKBOX_ERR_NOMEM;
		}
	}
	free(list);
	return 0;
}

static int open_(nats_ctx *c, const ackbox_url *url, ackbox_tx_info *info, char *errstr,
                 size_t errstr_size)
{
	int64_t retry_ms = 10000;
	size_t cap = 4;
	int rc;
	static const char *const no_query[] = {NULL}; /* the settings are nats.* keys */

	if (ackbox_url_query_check(url, "transport.url", no_query, errstr, errstr_size) != 0)
		return ACKBOX_ERR_BAD_URL;
	if ((rc = parse_servers(c, url->hosts, errstr, errstr_size)) != 0)
		return rc;
	c->hosts = strdup(url->hosts[0] ? url->hosts : "127.0.0.1:4222");
	c->user = dup_or_null(url->user);
	c->password = dup_or_null(url->password);
	c->name = strdup(conf(c, "nats.name"));
	c->stream = dup_or_null(conf(c, "nats.stream"));
	c->stream_subjects = dup_or_null(conf(c, "nats.stream_subjects"));
	if (!c->hosts || !c->name)
		return ACKBOX_ERR_NOMEM;
	if (c->stream && !c->stream_subjects) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "nats.stream: set nats.stream_subjects too (the subjects the stream "
		                  "'%s' captures)",
		                  c->stream);
		return ACKBOX_ERR_BAD_VALUE;
	}
	/* the core's window, when set, is the one the core keeps to */
	c->window = atoi(conf(c, "transport.window"));
	if (c->window <= 0)
		c->window = atoi(conf(c, "nats.window"));
	ackbox_parse_duration_ms(conf(c, "retry.timeout"), &retry_ms);
	c->ack_wait_ms = retry_ms * 3 / 4;
	if (conf(c, "nats.ack_wait"))
		ackbox_parse_duration_ms(conf(c, "nats.ack_wait"), &c->ack_wait_ms);
	if (c->ack_wait_ms >= retry_ms || c->ack_wait_ms < 10) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "nats.ack_wait: %" PRId64 " ms must be at least 10 ms and below "
		                  "retry.timeout (%" PRId64 " ms), or the core would give up on a "
		                  "message nats.c still waits for",
		                  c->ack_wait_ms, retry_ms);
		return ACKBOX_ERR_BAD_VALUE;
	}
	ackbox_parse_duration_ms(conf(c, "nats.ping_interval"), &c->ping_ms);
	while (cap < (size_t)c->window * 2)
		cap *= 2;
	c->tab = calloc(cap, sizeof(*c->tab));
	if (!c->tab)
		return ACKBOX_ERR_NOMEM;
	c->mask = cap - 1;
	if ((c->slot = link_take(c)) < 0) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "nats: more than %d NATS transports open in this process",
		                  LINK_SLOTS);
		return ACKBOX_ERR_INTERNAL;
	}
	info->max_inflight = c->window;
	info->system_name = SYSTEM_NAME;
	/* the server's max_payload is learned at connect (validate checks it) */
	info->max_message_size = 0;
	return 0;
}

static void free_all(nats_ctx *c)
{
	for (int i = 0; i < c->nservers; i++)
		free(c->servers[i]);
	free(c->servers);
	free(c->hosts);
	free(c->user);
	free(c->password);
	free(c->name);
	free(c->stream);
	free(c->stream_subjects);
	free(c->tab);
	c->servers = NULL;
	c->tab = NULL;
}

/* close() is not called when open fails: free what was made here. */
static int nats_open(void *vctx, const ackbox_url *url, ackbox_tx_host *host,
                     ackbox_tx_info *info, char *errstr, size_t errstr_size)
{
	nats_ctx *c = vctx;
	int rc;
	c->host = host;
	c->slot = -1;
	pthread_mutex_init(&c->mtx, NULL);
	atomic_store(&c->max_payload, 0);
	rc = open_(c, url, info, errstr, errstr_size);
	if (rc) {
		if (c->slot >= 0)
			link_retire(c->slot, 1);
		free_all(c);
		pthread_mutex_destroy(&c->mtx);
	}
	return rc;
}

/* ------------------------------------------------------------------ */
/* nats.c callbacks: any nats.c thread; they only report                */
/* ------------------------------------------------------------------ */

/* Reports the connection gone, once per connection. */
static void report_down(nats_ctx *c, const char *why)
{
	int was;
	pthread_mutex_lock(&c->mtx);
	was = c->connected;
	c->connected = 0;
	pthread_mutex_unlock(&c->mtx);
	if (!was)
		return;
	ackbox_tx_event ev = {ACKBOX_TX_DISCONNECTED, 0, 0, 1, why};
	ackbox_tx_report(c->host, &ev);
}

/* The connection's last error, as the server or the socket gave it. */
static void lost_reason(natsConnection *nc, char *why, size_t size)
{
	const char *text = NULL;
	natsStatus s = natsConnection_GetLastError(nc, &text);
	if (s != NATS_OK && text && *text)
		snprintf(why, size, "connection lost: %s", text);
	else if (s != NATS_OK)
		snprintf(why, size, "connection lost: %s", natsStatus_GetText(s));
	else
		snprintf(why, size, "connection lost (the server closed it without an -ERR)");
}

static void on_disconnected(natsConnection *nc, void *closure)
{
	nats_ctx *c = link_enter(closure);
	char why[400];
	if (!c)
		return;
	lost_reason(nc, why, sizeof(why));
	report_down(c, why);
	link_leave(closure);
}

/* A connection that never was "disconnected" (its socket was not up) is
 * still closed: say so all the same. */
static void on_closed(natsConnection *nc, void *closure)
{
	on_disconnected(nc, closure);
}

static void on_async_error(natsConnection *nc, natsSubscription *sub, natsStatus err,
                           void *closure)
{
	nats_ctx *c = link_enter(closure);
	const char *text = NULL;
	(void)sub;
	if (!c)
		return;
	natsConnection_GetLastError(nc, &text);
	/* a publish the server refused this way (a permissions violation) gets
	 * no PubAck: its ack_wait runs out and it is reported in doubt */
	ackbox_tx_log(c->host, ACKBOX_LOG_WARN, "nats: %s%s%s", natsStatus_GetText(err),
	              text && *text ? ": " : "", text && *text ? text : "");
	link_leave(closure);
}

/* What a JetStream API error means for the message (docs/brokers/nats.md). */
static void map_api_error(const jsPubAckErr *pae, ackbox_tx_event *ev)
{
	ev->kind = ACKBOX_TX_NACK;
	ev->broker_code = (int)pae->ErrCode;
	switch ((int)pae->ErrCode) {
	case JSStreamWrongLastSequenceErr: /* Nats-Expected-Last-Sequence did not hold */
	case JSStreamWrongLastMsgIDErr:    /* Nats-Expected-Last-Msg-Id did not hold */
		ev->retriable = 0;
		break;
	case JSStreamMessageExceedsMaximumErr: /* the stream's max_msg_size */
		ev->kind = ACKBOX_TX_ERROR;
		ev->retriable = 0;
		break;
	default: /* JSStreamStoreFailedErr: a full stream with discard new, ... */
		ev->retriable = 1;
		break;
	}
}

/* The PubAck (or its failure) of one publish: nats.c's reply thread. */
static void on_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
	nats_ctx *c = link_enter(closure);
	ackbox_tx_event ev = {ACKBOX_TX_ACK, 0, 0, 0, NULL};
	char why[512];
	(void)js;
	if (c) {
		pthread_mutex_lock(&c->mtx);
		ev.token = pend_take(c, msg);
		pthread_mutex_unlock(&c->mtx);
		if (pa && pa->Duplicate)
			atomic_fetch_add(&c->duplicates, 1);
		if (!pa && pae) {
			const char *subj = natsMsg_GetSubject(msg);
			ev.retriable = 1;
			ev.reason = why;
			if (pae->Err == NATS_NO_RESPONDERS) {
				/* nobody answered the publish: no stream captures the subject */
				ev.kind = ACKBOX_TX_UNROUTABLE;
				ev.broker_code = 503;
				snprintf(why, sizeof(why),
				         "no stream captures subject '%.200s' (503 no responders)", subj);
			} else if (pae->Err == NATS_TIMEOUT) {
				/* the stream may have stored it: a resend carries the same
				 * Nats-Msg-Id, which the stream drops inside its window */
				ev.kind = ACKBOX_TX_IN_DOUBT;
				snprintf(why, sizeof(why),
				         "no PubAck within %" PRId64 " ms (nats.ack_wait) for '%.200s'",
				         c->ack_wait_ms, subj);
			} else if (pae->ErrCode) {
				map_api_error(pae, &ev);
				snprintf(why, sizeof(why), "JetStream error %d on '%.200s': %s",
				         (int)pae->ErrCode, subj, pae->ErrText ? pae->ErrText : "");
			} else {
				ev.kind = ACKBOX_TX_IN_DOUBT;
				snprintf(why, sizeof(why), "publish to '%.200s' failed: %s", subj,
				         pae->ErrText ? pae->ErrText : natsStatus_GetText(pae->Err));
			}
		}
		if (ev.token)
			ackbox_tx_report(c->host, &ev);
		link_leave(closure);
	}
	natsMsg_Destroy(msg);
}

/* ------------------------------------------------------------------ */
/* connect, send, close                                                 */
/* ------------------------------------------------------------------ */

/* Drops the connection; nothing it held is reported again. */
static void drop_conn(nats_ctx *c)
{
	pthread_mutex_lock(&c->mtx);
	c->connected = 0;
	pthread_mutex_unlock(&c->mtx);
	/* no callback of this connection gets past link_enter() from here on,
	 * including the closed callback our own close below causes */
	link_retire(c->slot, 0);
	if (c->js)
		jsCtx_Destroy(c->js);
	if (c->nc) {
		natsConnection_Close(c->nc);
		natsConnection_Destroy(c->nc);
	}
	c->js = NULL;
	c->nc = NULL;
	/* the messages nats.c still held are its own to free: what they were
	 * for is in doubt, and the core resends it */
	pthread_mutex_lock(&c->mtx);
	memset(c->tab, 0, (c->mask + 1) * sizeof(*c->tab));
	c->count = 0;
	pthread_mutex_unlock(&c->mtx);
}

static const char *last_error(natsStatus s)
{
	const char *t = nats_GetLastError(NULL);
	return t && *t ? t : natsStatus_GetText(s);
}

/* nats.stream: creates the stream, or finds it there. */
static int ensure_stream(nats_ctx *c, char *errstr, size_t errstr_size)
{
	jsStreamConfig cfg;
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	char *subjects[64], *list = strdup(c->stream_subjects), *save = NULL;
	int n = 0;
	natsStatus s;
	if (!list)
		return ACKBOX_ERR_NOMEM;
	for (char *t = strtok_r(list, ",", &save); t && n < 64; t = strtok_r(NULL, ",", &save))
		subjects[n++] = t;
	jsStreamConfig_Init(&cfg);
	cfg.Name = c->stream;
	cfg.Subjects = (const char **)subjects;
	cfg.SubjectsLen = n;
	cfg.Storage = js_FileStorage;
	s = js_AddStream(&si, c->js, &cfg, NULL, &jerr);
	free(list);
	jsStreamInfo_Destroy(si);
	if (s == NATS_OK || jerr == JSStreamNameExistErr)
		return 0;
	ackbox_errstr_set(errstr, errstr_size,
	                  "nats: cannot create stream '%s' for '%s' on %s: %s (JetStream error %d)",
	                  c->stream, c->stream_subjects, c->hosts, last_error(s), (int)jerr);
	return ACKBOX_ERR_TRANSPORT;
}

static int connect_(nats_ctx *c, int timeout_ms, char *errstr, size_t errstr_size)
{
	natsOptions *o = NULL;
	jsOptions jo;
	jsAccountInfo *ai = NULL;
	jsErrCode jerr = 0;
	void *closure = link_closure(c->slot);
	natsStatus s = natsOptions_Create(&o);

	if (s == NATS_OK)
		s = natsOptions_SetServers(o, (const char **)c->servers, c->nservers);
	if (s == NATS_OK && c->user && c->password)
		s = natsOptions_SetUserInfo(o, c->user, c->password);
	else if (s == NATS_OK && c->user)
		s = natsOptions_SetToken(o, c->user);
	if (s == NATS_OK)
		s = natsOptions_SetNoRandomize(o, true);
	if (s == NATS_OK)
		s = natsOptions_SetTimeout(o, timeout_ms > 0 ? timeout_ms : 1);
	if (s == NATS_OK)
		s = natsOptions_SetName(o, c->name);
	/* the core reconnects with its backoff, and resends what was in flight */
	if (s == NATS_OK)
		s = natsOptions_SetAllowReconnect(o, false);
	if (s == NATS_OK)
		s = natsOptions_SetPingInterval(o, c->ping_ms);
	if (s == NATS_OK)
		s = natsOptions_SetMaxPingsOut(o, 2);
	if (s == NATS_OK)
		s = natsOptions_SetDisconnectedCB(o, on_disconnected, closure);
	if (s == NATS_OK)
		s = natsOptions_SetClosedCB(o, on_closed, closure);
	if (s == NATS_OK)
		s = natsOptions_SetErrorHandler(o, on_async_error, closure);
	if (s == NATS_OK)
		s = natsConnection_Connect(&c->nc, o);
	natsOptions_Destroy(o);
	if (s != NATS_OK) {
		ackbox_errstr_set(errstr, errstr_size, "nats: cannot connect to %s: %s", c->hosts,
		                  last_error(s));
		c->nc = NULL;
		return ACKBOX_ERR_TRANSPORT;
	}
	jsOptions_Init(&jo);
	jo.Wait = timeout_ms > 0 ? timeout_ms : 1;
	jo.PublishAsync.MaxPending = (int64_t)c->window * 2;
	jo.PublishAsync.AckHandler = on_ack;
	jo.PublishAsync.AckHandlerClosure = closure;
	s = natsConnection_JetStream(&c->js, c->nc, &jo);
	if (s != NATS_OK) {
		ackbox_errstr_set(errstr, errstr_size, "nats: no JetStream context for %s: %s",
		                  c->hosts, last_error(s));
		return ACKBOX_ERR_TRANSPORT;
	}
	/* a server without JetStream would answer every publish "no responders" */
	s = js_GetAccountInfo(&ai, c->js, NULL, &jerr);
	jsAccountInfo_Destroy(ai);
	if (s != NATS_OK) {
		if (s == NATS_NO_RESPONDERS || jerr == JSNotEnabledErr ||
		    jerr == JSNotEnabledForAccountErr)
			ackbox_errstr_set(errstr, errstr_size,
			                  "nats: JetStream is not enabled on %s for this account (start "
			                  "nats-server with -js, or a jetstream block): %s",
			                  c->hosts, last_error(s));
		else
			ackbox_errstr_set(errstr, errstr_size,
			                  "nats: JetStream on %s did not answer: %s (JetStream error %d)",
			                  c->hosts, last_error(s), (int)jerr);
		return ACKBOX_ERR_TRANSPORT;
	}
	if (c->stream && ensure_stream(c, errstr, errstr_size) != 0)
		return ACKBOX_ERR_TRANSPORT;
	atomic_store(&c->max_payload, natsConnection_GetMaxPayload(c->nc));
	pthread_mutex_lock(&c->mtx);
	c->connected = 1;
	pthread_mutex_unlock(&c->mtx);
	/* a drop between Connect and here left connected at 1 with nobody to
	 * report it: look once more */
	if (natsConnection_Status(c->nc) != NATS_CONN_STATUS_CONNECTED) {
		ackbox_errstr_set(errstr, errstr_size, "nats: the connection to %s closed at once",
		                  c->hosts);
		return ACKBOX_ERR_TRANSPORT;
	}
	return 0;
}

static int nats_connect(void *vctx, int timeout_ms, char *errstr, size_t errstr_size)
{
	nats_ctx *c = vctx;
	int rc;
	drop_conn(c);
	rc = connect_(c, timeout_ms, errstr, errstr_size);
	if (rc)
		drop_conn(c);
	return rc;
}

/* A message that can never be sent as it is: one ERROR for its token, not
 * retriable; the connection is not touched. */
static int refuse(nats_ctx *c, const ackbox_tx_msg *m, const char *why)
{
	ackbox_tx_event ev = {ACKBOX_TX_ERROR, m->token, 0, 0, why};
	ackbox_tx_report(c->host, &ev);
	return ACKBOX_TX_SENT;
}

/* Adds a header whose value is len bytes (checked: no NUL inside). */
static natsStatus add_header(natsMsg *msg, const char *name, const void *value, size_t len)
{
	char small[256], *v = len < sizeof(small) ? small : malloc(len + 1);
	natsStatus s;
	if (!v)
		return NATS_NO_MEMORY;
	memcpy(v, value, len);
	v[len] = '\0';
	s = natsMsgHeader_Add(msg, name, v);
	if (v != small)
		free(v);
	return s;
}

static natsStatus build(natsMsg **out, const ackbox_tx_msg *m)
{
	natsMsg *msg = NULL;
	natsStatus s = natsMsg_Create(&msg, m->topic, NULL, m->payload, (int)m->payload_len);
	if (s == NATS_OK && m->key_len)
		s = add_header(msg, ABX_NATS_HDR_KEY, m->key, m->key_len);
	if (s == NATS_OK && m->content_type)
		s = natsMsgHeader_Set(msg, ABX_NATS_HDR_CONTENT_TYPE, m->content_type);
	for (size_t i = 0; s == NATS_OK && i < m->header_count; i++)
		s = add_header(msg, m->headers[i].name, m->headers[i].value, m->headers[i].value_len);
	if (s != NATS_OK) {
		natsMsg_Destroy(msg);
		msg = NULL;
	}
	*out = msg;
	return s;
}

static int nats_send(void *vctx, const ackbox_tx_msg *m)
{
	nats_ctx *c = vctx;
	jsPubOptions po;
	natsMsg *msg = NULL;
	natsStatus s;
	char why[512];
	int full;

	/* No abx_nats_check() here: the relay calls validate() on this thread
	 * just before every send, with the max_payload of this connection (the
	 * server answers an oversized publish by closing the connection). */
	pthread_mutex_lock(&c->mtx);
	full = c->connected && c->count >= (size_t)c->window;
	s = c->connected ? NATS_OK : NATS_CONNECTION_CLOSED;
	pthread_mutex_unlock(&c->mtx);
	if (s != NATS_OK)
		return ACKBOX_TX_NOT_CONNECTED;
	if (full)
		return ACKBOX_TX_BUSY;
	if (build(&msg, m) != NATS_OK)
		return ACKBOX_TX_BUSY; /* out of memory: the core tries again later */
	/* known before nats.c can answer: the PubAck may come before the call returns */
	pthread_mutex_lock(&c->mtx);
	pend_put(c, msg, m->token);
	pthread_mutex_unlock(&c->mtx);
	jsPubOptions_Init(&po);
	po.MsgId = m->id_str; /* the Nats-Msg-Id header: JetStream's deduplication */
	po.MaxWait = c->ack_wait_ms;
	s = js_PublishMsgAsync(c->js, &msg, &po);
	if (s == NATS_OK)
		return ACKBOX_TX_SENT; /* nats.c owns msg now */
	pthread_mutex_lock(&c->mtx);
	pend_take(c, msg);
	pthread_mutex_unlock(&c->mtx);
	natsMsg_Destroy(msg);
	switch (s) {
	case NATS_CONNECTION_CLOSED:
	case NATS_CONNECTION_DISCONNECTED:
	case NATS_STALE_CONNECTION:
		snprintf(why, sizeof(why), "connection lost: %s", last_error(s));
		report_down(c, why);
		return ACKBOX_TX_NOT_CONNECTED;
	case NATS_TIMEOUT:   /* stalled at MaxPending */
	case NATS_NO_MEMORY: /* nothing left: the core tries again later */
		return ACKBOX_TX_BUSY;
	default:
		/* nats.c refuses this message (max payload, a subject it cannot
		 * send): an error for this message alone */
		snprintf(why, sizeof(why), "nats.c refused the publish to '%.200s': %s", m->topic,
		         last_error(s));
		return refuse(c, m, why);
	}
}

static int nats_validate(void *vctx, const ackbox_tx_msg *m, char *errstr, size_t errstr_size)
{
	nats_ctx *c = vctx;
	return abx_nats_check(m, atomic_load(&c->max_payload), errstr, errstr_size);
}

static void nats_close(void *vctx)
{
	nats_ctx *c = vctx;
	unsigned long long d = atomic_load(&c->duplicates);
	if (d)
		ackbox_tx_log(c->host, ACKBOX_LOG_INFO,
		              "nats: the stream recognised %llu resends as duplicates (Nats-Msg-Id)",
		              d);
	drop_conn(c);
	link_retire(c->slot, 1);
	free_all(c);
	pthread_mutex_destroy(&c->mtx);
}

static const char *const nats_schemes[] = {"nats", NULL};

const ackbox_transport_ops ackbox_nats_transport = {
	.abi_version = ACKBOX_TRANSPORT_ABI_VERSION,
	.struct_size = sizeof(ackbox_transport_ops),
	.schemes = nats_schemes,
	.caps = 0,
	.ctx_size = sizeof(nats_ctx),
	.props = nats_props,
	.description = "NATS JetStream: asynchronous publishes, the PubAck is the confirm, "
	               "Nats-Msg-Id deduplication, via nats.c",
	.open = nats_open,
	.connect = nats_connect,
	.send = nats_send,
	.poll = NULL, /* nats.c reports from its own threads */
	.close = nats_close,
	.validate = nats_validate,
};
