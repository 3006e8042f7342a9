/*
 * loopback.c - the in-process transport. It shows everything a transport
 * does and nothing more: parse the URL, connect, hand over a message, and
 * report what the "broker" said, keyed by token. It never retries or sleeps;
 * the core does that.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ackbox/transport.h>

#include "ackbox_loopback.h"

typedef struct rule {
	struct rule *next;
	ackbox_lb_action action;
	int count;
	int delay_ms;
} rule;

typedef struct rx {
	ackbox_id id;
	char *topic;
	void *payload;
	size_t payload_len;
	size_t header_count;
	ackbox_lb_action action; /* what the broker did with it */
} rx;

struct ackbox_loopback {
	struct ackbox_loopback *next;
	char *name;
	pthread_mutex_t mtx;
	rule *script_head, *script_tail;
	ackbox_lb_action def_action;
	int def_delay_ms;
	int up;
	unsigned generation; /* bumped on every down: live connections notice */
	int connects;
	rx *msgs;
	size_t nmsgs, cap;
	char *poison_topic;   /* sends to it close the connection */
	char *nack_topic;     /* sends to it are answered NACK */
	size_t poison_hits;
	int flap;             /* close every connection right after it opens */
	int quiet_drops;      /* report lost sends IN_DOUBT, not the connection */
	char drop_reason[160]; /* why the last connection was closed */
	int drop_code;
};

static pthread_mutex_t brokers_mtx = PTHREAD_MUTEX_INITIALIZER;
static ackbox_loopback *brokers;

ackbox_loopback *ackbox_loopback_get(const char *name)
{
	ackbox_loopback *lb;
	pthread_mutex_lock(&brokers_mtx);
	for (lb = brokers; lb; lb = lb->next)
		if (strcmp(lb->name, name) == 0)
			break;
	if (!lb && (lb = calloc(1, sizeof(*lb))) != NULL) {
		lb->name = strdup(name);
		pthread_mutex_init(&lb->mtx, NULL);
		lb->up = 1;
		lb->next = brokers;
		brokers = lb;
	}
	pthread_mutex_unlock(&brokers_mtx);
	return lb;
}

void ackbox_loopback_reset(void)
{
	pthread_mutex_lock(&brokers_mtx);
	while (brokers) {
		ackbox_loopback *lb = brokers;
		brokers = lb->next;
		while (lb->script_head) {
			rule *r = lb->script_head;
			lb->script_head = r->next;
			free(r);
		}
		for (size_t i = 0; i < lb->nmsgs; i++) {
			free(lb->msgs[i].topic);
			free(lb->msgs[i].payload);
		}
		free(lb->msgs);
		free(lb->poison_topic);
		free(lb->nack_topic);
		pthread_mutex_destroy(&lb->mtx);
		free(lb->name);
		free(lb);
	}
	pthread_mutex_unlock(&brokers_mtx);
}

void ackbox_loopback_set_default(ackbox_loopback *lb, ackbox_lb_action a, int delay_ms)
{
	pthread_mutex_lock(&lb->mtx);
	lb->def_action = a;
	lb->def_delay_ms = delay_ms;
	pthread_mutex_unlock(&lb->mtx);
}

void ackbox_loopback_script(ackbox_loopback *lb, ackbox_lb_action a, int count, int delay_ms)
{
	rule *r = calloc(1, sizeof(*r));
	if (!r)
		return;
	r->action = a;
	r->count = count;
	r->delay_ms = delay_ms;
	pthread_mutex_lock(&lb->mtx);
	if (lb->script_tail)
		lb->script_tail->next = r;
	else
		lb->script_head = r;
	lb->script_tail = r;
	pthread_mutex_unlock(&lb->mtx);
}

void ackbox_loopback_set_up(ackbox_loopback *lb, int up)
{
	pthread_mutex_lock(&lb->mtx);
	if (lb->up && !up) {
		lb->generation++;
		snprintf(lb->drop_reason, sizeof(lb->drop_reason), "loopback broker went down");
		lb->drop_code = 0;
	}
	lb->up = up;
	pthread_mutex_unlock(&lb->mtx);
}

void ackbox_loopback_set_poison(ackbox_loopback *lb, const char *topic)
{
	char *t = topic ? strdup(topic) : NULL;
	pthread_mutex_lock(&lb->mtx);
	free(lb->poison_topic);
	lb->poison_topic = t;
	pthread_mutex_unlock(&lb->mtx);
}

void ackbox_loopback_set_nack_topic(ackbox_loopback *lb, const char *topic)
{
	char *t = topic ? strdup(topic) : NULL;
	pthread_mutex_lock(&lb->mtx);
	free(lb->nack_topic);
	lb->nack_topic = t;
	pthread_mutex_unlock(&lb->mtx);
}

size_t ackbox_loopback_poison_hits(ackbox_loopback *lb)
{
	size_t n;
	pthread_mutex_lock(&lb->mtx);
	n = lb->poison_hits;
	pthread_mutex_unlock(&lb->mtx);
	return n;
}

void ackbox_loopback_set_quiet_drops(ackbox_loopback *lb, int on)
{
	pthread_mutex_lock(&lb->mtx);
	lb->quiet_drops = on;
	pthread_mutex_unlock(&lb->mtx);
}

void ackbox_loopback_set_flap(ackbox_loopback *lb, int on)
{
	pthread_mutex_lock(&lb->mtx);
	lb->flap = on;
	pthread_mutex_unlock(&lb->mtx);
}

size_t ackbox_loopback_received(ackbox_loopback *lb)
{
	size_t n;
	pthread_mutex_lock(&lb->mtx);
	n = lb->nmsgs;
	pthread_mutex_unlock(&lb->mtx);
	return n;
}

static int id_cmp(const void *a, const void *b)
{
	return memcmp(a, b, sizeof(ackbox_id));
}

size_t ackbox_loopback_distinct(ackbox_loopback *lb)
{
	size_t n, d = 0;
	ackbox_id *ids;
	pthread_mutex_lock(&lb->mtx);
	n = lb->nmsgs;
	ids = malloc((n ? n : 1) * sizeof(*ids));
	for (size_t i = 0; ids && i < n; i++)
		ids[i] = lb->msgs[i].id;
	pthread_mutex_unlock(&lb->mtx);
	if (!ids)
		return 0;
	qsort(ids, n, sizeof(*ids), id_cmp);
	for (size_t i = 0; i < n; i++)
		if (i == 0 || memcmp(&ids[i], &ids[i - 1], sizeof(ackbox_id)) != 0)
			d++;
	free(ids);
	return d;
}

size_t ackbox_loopback_count_id(ackbox_loopback *lb, const ackbox_id *id)
{
	size_t c = 0;
	pthread_mutex_lock(&lb->mtx);
	for (size_t i = 0; i < lb->nmsgs; i++)
		if (memcmp(&lb->msgs[i].id, id, sizeof(*id)) == 0)
			c++;
	pthread_mutex_unlock(&lb->mtx);
	return c;
}

int ackbox_loopback_connects(ackbox_loopback *lb)
{
	int c;
	pthread_mutex_lock(&lb->mtx);
	c = lb->connects;
	pthread_mutex_unlock(&lb->mtx);
	return c;
}

int ackbox_loopback_message(ackbox_loopback *lb, size_t i, ackbox_id *id, char *topic,
                            size_t topic_size, void *payload, size_t *payload_len,
                            size_t *header_count)
{
	int rc = ACKBOX_ERR_NOT_FOUND;
	pthread_mutex_lock(&lb->mtx);
	if (i < lb->nmsgs) {
		rx *m = &lb->msgs[i];
		if (id)
			*id = m->id;
		if (topic && topic_size) {
			strncpy(topic, m->topic, topic_size - 1);
			topic[topic_size - 1] = '\0';
		}
		if (payload && payload_len) {
			size_t n = m->payload_len < *payload_len ? m->payload_len : *payload_len;
			memcpy(payload, m->payload, n);
			*payload_len = m->payload_len;
		}
		if (header_count)
			*header_count = m->header_count;
		rc = 0;
	}
	pthread_mutex_unlock(&lb->mtx);
	return rc;
}

int ackbox_loopback_accepted(ackbox_loopback *lb, size_t i)
{
	int rc = ACKBOX_ERR_NOT_FOUND;
	pthread_mutex_lock(&lb->mtx);
	if (i < lb->nmsgs) {
		ackbox_lb_action a = lb->msgs[i].action;
		rc = a == ACKBOX_LB_CONFIRM || a == ACKBOX_LB_DROP || a == ACKBOX_LB_IN_DOUBT;
	}
	pthread_mutex_unlock(&lb->mtx);
	return rc;
}

/* ------------------------------------------------------------------ */
/* The transport                                                        */
/* ------------------------------------------------------------------ */

typedef struct pending {
	struct pending *next;
	uint64_t token;
	ackbox_lb_action action;
	int64_t at; /* mono ms */
} pending;

typedef struct lb_ctx {
	ackbox_tx_host *host;
	ackbox_loopback *lb;
	int connected;
	unsigned generation;
	int flap_pending; /* this connection is closed at the next poll */
	pending *head;    /* sorted by `at` */
	size_t max_message; /* loopback.max_message; set by open, read by validate */
} lb_ctx;

static const ackbox_prop lb_props[] = {
	{"window", ACKBOX_PROP_INT, "256", 1, 1000000, NULL,
	 "Unconfirmed messages the loopback transport allows at once."},
	{"max_message", ACKBOX_PROP_INT, "0", 0, 1LL << 30, NULL,
	 "Largest payload the loopback broker takes (0: no limit); larger ones are refused at "
	 "publish, as a broker's announced limit is."},
	{NULL, 0, NULL, 0, 0, NULL, NULL}};

static int lb_open(void *vctx, const ackbox_url *url, ackbox_tx_host *host, ackbox_tx_info *info,
                   char *errstr, size_t errstr_size)
{
	static const char *const no_query[] = {NULL};
	lb_ctx *c = vctx;
	const char *w;
	if (ackbox_url_query_check(url, "transport.url", no_query, errstr, errstr_size) != 0)
		return ACKBOX_ERR_BAD_URL;
	if (!url->host[0]) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "transport.url: loopback needs a broker name (loopback://NAME)");
		return ACKBOX_ERR_BAD_URL;
	}
	c->host = host;
	c->lb = ackbox_loopback_get(url->host);
	if (!c->lb)
		return ACKBOX_ERR_NOMEM;
	w = ackbox_conf_get(ackbox_tx_conf(host), "loopback.window");
	info->max_inflight = w ? atoi(w) : 256;
	info->system_name = "loopback";
	w = ackbox_conf_get(ackbox_tx_conf(host), "loopback.max_message");
	c->max_message = w ? (size_t)atoll(w) : 0;
	info->max_message_size = c->max_message;
	return 0;
}

static void drop_pending(lb_ctx *c)
{
	while (c->head) {
		pending *p = c->head;
		c->head = p->next;
		free(p);
	}
}

static int lb_connect(void *vctx, int timeout_ms, char *errstr, size_t errstr_size)
{
	lb_ctx *c = vctx;
	(void)timeout_ms;
	pthread_mutex_lock(&c->lb->mtx);
	if (!c->lb->up) {
		pthread_mutex_unlock(&c->lb->mtx);
		ackbox_errstr_set(errstr, errstr_size, "loopback broker '%s' is down", c->lb->name);
		return ACKBOX_ERR_TRANSPORT;
	}
	c->lb->connects++;
	c->generation = c->lb->generation;
	c->flap_pending = c->lb->flap;
	pthread_mutex_unlock(&c->lb->mtx);
	drop_pending(c);
	c->connected = 1;
	return 0;
}

/* Called with lb->mtx held: is our connection still alive? */
static int alive_locked(lb_ctx *c)
{
	return c->connected && c->lb->up && c->generation == c->lb->generation;
}

static int lb_send(void *vctx, const ackbox_tx_msg *m)
{
	lb_ctx *c = vctx;
	ackbox_lb_action a;
	int delay;
	rx *slot;
	pending *p, **pp;

	pthread_mutex_lock(&c->lb->mtx);
	if (!alive_locked(c)) {
		pthread_mutex_unlock(&c->lb->mtx);
		return ACKBOX_TX_NOT_CONNECTED;
	}
	if (c->lb->poison_topic && strcmp(m->topic, c->lb->poison_topic) == 0) {
		/* the broker cannot parse it and closes the connection: the
		 * client wrote it, so send() succeeded; nothing is answered */
		c->lb->poison_hits++;
		c->lb->generation++;
		snprintf(c->lb->drop_reason, sizeof(c->lb->drop_reason),
		         "loopback broker closed the connection on a message to '%.60s' "
		         "(0x81 Malformed Packet)",
		         m->topic);
		c->lb->drop_code = 0x81;
		a = c->lb->quiet_drops ? ACKBOX_LB_IN_DOUBT : ACKBOX_LB_DROP;
		pthread_mutex_unlock(&c->lb->mtx);
		if (a == ACKBOX_LB_DROP)
			return ACKBOX_TX_SENT;
		delay = 0;
		goto answer; /* quiet: its loss is reported IN_DOUBT */
	}
	if (c->lb->nack_topic && strcmp(m->topic, c->lb->nack_topic) == 0) {
		a = ACKBOX_LB_NACK;
		delay = 0;
	} else if (c->lb->script_head) {
		rule *r = c->lb->script_head;
		a = r->action;
		delay = r->delay_ms;
		if (--r->count <= 0) {
			c->lb->script_head = r->next;
			if (!r->next)
				c->lb->script_tail = NULL;
			free(r);
		}
	} else {
		a = c->lb->def_action;
		delay = c->lb->def_delay_ms;
	}
	if (a != ACKBOX_LB_NOT_SENT) {
		if (c->lb->nmsgs == c->lb->cap) {
			size_t ncap = c->lb->cap ? c->lb->cap * 2 : 1024;
			rx *n = realloc(c->lb->msgs, ncap * sizeof(*n));
			if (!n) {
				pthread_mutex_unlock(&c->lb->mtx);
				return ACKBOX_TX_BUSY;
			}
			c->lb->msgs = n;
			c->lb->cap = ncap;
		}
		slot = &c->lb->msgs[c->lb->nmsgs++];
		slot->id = m->id;
		slot->topic = strdup(m->topic);
		slot->payload = malloc(m->payload_len ? m->payload_len : 1);
		if (slot->payload && m->payload_len)
			memcpy(slot->payload, m->payload, m->payload_len);
		slot->payload_len = m->payload_len;
		slot->header_count = m->header_count;
		slot->action = a;
	}
	pthread_mutex_unlock(&c->lb->mtx);

	if (a == ACKBOX_LB_DROP)
		return ACKBOX_TX_SENT; /* the broker has it; its confirm is lost */
answer:
	p = calloc(1, sizeof(*p));
	if (!p)
		return ACKBOX_TX_SENT; /* as if the confirm were lost: the core times it out */
	p->token = m->token;
	p->action = a;
	p->at = ackbox_mono_ms() + delay;
	for (pp = &c->head; *pp && (*pp)->at <= p->at; pp = &(*pp)->next) {
	}
	p->next = *pp;
	*pp = p;
	return ACKBOX_TX_SENT;
}

static void report(lb_ctx *c, const pending *p)
{
	ackbox_tx_event ev = {0};
	ev.token = p->token;
	switch (p->action) {
	case ACKBOX_LB_CONFIRM:
		ev.kind = ACKBOX_TX_ACK;
		break;
	case ACKBOX_LB_NACK:
		ev.kind = ACKBOX_TX_NACK;
		ev.broker_code = 406;
		ev.retriable = 1;
		ev.reason = "rejected by loopback broker";
		break;
	case ACKBOX_LB_RETURN:
		ev.kind = ACKBOX_TX_UNROUTABLE;
		ev.broker_code = 312;
		ev.reason = "NO_ROUTE";
		break;
	case ACKBOX_LB_ERROR:
		ev.kind = ACKBOX_TX_ERROR;
		ev.broker_code = 500;
		ev.reason = "loopback broker error";
		break;
	case ACKBOX_LB_NOT_SENT:
		ev.kind = ACKBOX_TX_NOT_SENT;
		ev.reason = "loopback: not sent";
		break;
	case ACKBOX_LB_IN_DOUBT:
		ev.kind = ACKBOX_TX_IN_DOUBT;
		ev.retriable = 1;
		ev.reason = "loopback: in doubt";
		break;
	case ACKBOX_LB_DROP:
		return;
	}
	ackbox_tx_report(c->host, &ev);
}

static int lb_poll(void *vctx, int timeout_ms)
{
	lb_ctx *c = vctx;
	int64_t now = ackbox_mono_ms();
	int alive;

	char why[160];
	int code, quiet;

	pthread_mutex_lock(&c->lb->mtx);
	if (c->flap_pending && alive_locked(c)) {
		c->lb->generation++;
		snprintf(c->lb->drop_reason, sizeof(c->lb->drop_reason),
		         "loopback broker closed the connection at once (flapping)");
		c->lb->drop_code = 0;
	}
	c->flap_pending = 0;
	alive = alive_locked(c);
	snprintf(why, sizeof(why), "%s", c->lb->drop_reason);
	code = c->lb->drop_code;
	quiet = c->lb->quiet_drops;
	pthread_mutex_unlock(&c->lb->mtx);
	if (!alive) {
		/* unanswered sends die with the connection; the core resends them.
		 * Like paho, each is reported in doubt first, in send order, then
		 * the connection: the core must put them back oldest first. */
		ackbox_tx_event ev = {ACKBOX_TX_DISCONNECTED, 0, code, 1, why};
		for (pending *p = c->head; p; p = p->next) {
			ackbox_tx_event lost = {ACKBOX_TX_IN_DOUBT, p->token, 0, 1,
			                        "loopback: connection lost before the answer"};
			if (p->action != ACKBOX_LB_NOT_SENT)
				ackbox_tx_report(c->host, &lost);
		}
		drop_pending(c);
		c->connected = 0;
		if (quiet)
			return 0; /* the next send finds out */
		ackbox_tx_report(c->host, &ev);
		return ACKBOX_ERR_TRANSPORT;
	}
	while (c->head && c->head->at <= now) {
		pending *p = c->head;
		c->head = p->next;
		report(c, p);
		free(p);
	}
	if (c->head && c->head->at - now < timeout_ms)
		timeout_ms = (int)(c->head->at - now);
	/* Broker state changes are not signalled: look again within 5 ms. */
	if (timeout_ms > 5 || timeout_ms < 0)
		timeout_ms = 5;
	if (timeout_ms > 0) {
		struct pollfd pfd = {ackbox_tx_wake_fd(c->host), POLLIN, 0};
		poll(&pfd, 1, timeout_ms);
	}
	return 0;
}

static void lb_close(void *vctx)
{
	drop_pending(vctx);
}

static int lb_validate(void *vctx, const ackbox_tx_msg *m, char *errstr, size_t errstr_size)
{
	lb_ctx *c = vctx;
	if (c->max_message && m->payload_len > c->max_message) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "loopback: payload of %zu bytes is over loopback.max_message (%zu)",
		                  m->payload_len, c->max_message);
		return ACKBOX_ERR_TOO_LARGE;
	}
	if (strncmp(m->topic, ACKBOX_LOOPBACK_INVALID_PREFIX,
	            strlen(ACKBOX_LOOPBACK_INVALID_PREFIX)) == 0) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "loopback: topic '%s' starts with '" ACKBOX_LOOPBACK_INVALID_PREFIX
		                  "', which this transport never sends",
		                  m->topic);
		return ACKBOX_ERR_INVALID;
	}
	return 0;
}

static const char *const lb_schemes[] = {"loopback", NULL};

const ackbox_transport_ops ackbox_loopback_transport = {
	.abi_version = ACKBOX_TRANSPORT_ABI_VERSION,
	.struct_size = sizeof(ackbox_transport_ops),
	.schemes = lb_schemes,
	.caps = 0,
	.ctx_size = sizeof(lb_ctx),
	.props = lb_props,
	.description = "in-process test broker with fault injection",
	.open = lb_open,
	.connect = lb_connect,
	.send = lb_send,
	.poll = lb_poll,
	.close = lb_close,
	.validate = lb_validate,
};
