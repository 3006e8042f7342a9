/*
 * relay.c - the one state machine and retry scheduler, shared by every
 * transport and store: sends what is due, turns transport reports into
 * state changes, times out silent attempts, reconnects with backoff.
 *
 * Everything here runs on the relay thread except the small "inbox" of
 * fresh messages and transport events, which other threads fill under
 * their own mutexes and then wake the relay through an eventfd.
 *
 * Crash safety: the store is the truth. Memory only caches what is being
 * sent; every row stays SENDING/RETRYING until the broker confirms, so a
 * process killed at any point leaves rows that the next open resends.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"
#include "registry.h"

/* ------------------------------------------------------------------ */
/* A small open-addressing map from uint64 keys to pointers.            */
/* ------------------------------------------------------------------ */

typedef struct {
	uint64_t *keys;
	void **vals;
	size_t cap; /* power of two */
	size_t len;
} u64map;

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static int map_grow(u64map *m)
{
	size_t ncap = m->cap ? m->cap * 2 : 64;
	uint64_t *nk = calloc(ncap, sizeof(*nk));
	void **nv = calloc(ncap, sizeof(*nv));
	if (!nk || !nv) {
		free(nk);
		free(nv);
		return -1;
	}
	for (size_t i = 0; i < m->cap; i++) {
		if (!m->vals[i])
			continue;
		size_t j = mix64(m->keys[i]) & (ncap - 1);
		while (nv[j])
			j = (j + 1) & (ncap - 1);
		nk[j] = m->keys[i];
		nv[j] = m->vals[i];
	}
	free(m->keys);
	free(m->vals);
	m->keys = nk;
	m->vals = nv;
	m->cap = ncap;
	return 0;
}

static void *map_get(const u64map *m, uint64_t k)
{
	if (!m->cap)
		return NULL;
	for (size_t i = mix64(k) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		if (!m->vals[i])
			return NULL;
		if (m->keys[i] == k)
			return m->vals[i];
	}
}

static int map_put(u64map *m, uint64_t k, void *v)
{
	size_t i;
	if ((m->len + 1) * 2 > m->cap && map_grow(m) != 0)
		return -1;
	for (i = mix64(k) & (m->cap - 1); m->vals[i]; i = (i + 1) & (m->cap - 1))
		if (m->keys[i] == k)
			break;
	if (!m->vals[i])
		m->len++;
	m->keys[i] = k;
	m->vals[i] = v;
	return 0;
}

static void map_del(u64map *m, uint64_t k)
{
	size_t i, j;
	if (!m->cap)
		return;
	for (i = mix64(k) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		if (!m->vals[i])
			return;
		if (m->keys[i] == k)
			break;
	}
	m->vals[i] = NULL;
	m->len--;
	/* backward-shift deletion keeps probe chains intact without tombstones */
	for (j = (i + 1) & (m->cap - 1); m->vals[j]; j = (j + 1) & (m->cap - 1)) {
		size_t home = mix64(m->keys[j]) & (m->cap - 1);
		if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
			m->keys[i] = m->keys[j];
			m->vals[i] = m->vals[j];
			m->vals[j] = NULL;
			i = j;
		}
	}
}

static void map_fini(u64map *m)
{
	free(m->keys);
	free(m->vals);
	memset(m, 0, sizeof(*m));
}

/* The id map keys on 64 bits of the id: the 62 random bits folded with the
 * timestamp. Two live ids colliding there is ~2^-64 per pair. */
static uint64_t id_key(const ackbox_id *id)
{
	uint64_t a, b;
	memcpy(&a, id->b, 8);
	memcpy(&b, id->b + 8, 8);
	return a ^ b;
}

/* ------------------------------------------------------------------ */
/* The relay's state                                                    */
/* ------------------------------------------------------------------ */

enum entry_state {
	E_READY,    /* in the ready queue (or the suspect queue if suspect), data present */
	E_INFLIGHT, /* current attempt outstanding, data present */
	E_WAITING,  /* back in the store until due; only superseded tokens hold it */
	E_DONE,     /* final outcome reached; only superseded tokens hold it */
	E_REQUEUE,  /* going back to a queue at the next send round (r->back), data present */
	E_HELD      /* sent alone and lost with the connection: being judged (r->blame) */
};

/* One message the relay holds in memory. */
typedef struct entry {
	struct entry *next; /* ready queue */
	ackbox_id id;
	char *topic;
	abx_fresh *data; /* NULL unless READY or INFLIGHT */
	enum entry_state state;
	int attempts;       /* persisted count of attempts that reached the broker */
	int sends;          /* sends by this process */
	uint64_t cur_token; /* token of the current attempt, 0 if none */
	int refs;           /* tokens pointing here */
	uint64_t lease;
	bool from_fresh;    /* data counts against the publisher's reservation */
	bool suspect;       /* in flight when the connection died: resent by probing */
	bool isolate;       /* blamed for a drop before: sent only alone */
} entry;

/* One attempt outstanding in the transport. */
typedef struct tok {
	struct tok *prev, *next; /* send-order FIFO: deadlines are non-decreasing */
	uint64_t token;
	entry *e;
	int64_t deadline;   /* mono ms: timeout, or zombie expiry once superseded */
	bool superseded;    /* timed out; kept so a late confirm still acks */
	bool probe;         /* a suspect's resend (counts in susp_live) */
	bool isolated;      /* sent with nothing else in flight */
} tok;

/* A message blamed for a dropped connection that is not final yet: when it
 * comes back from the store it is sent alone. */
typedef struct poisoned {
	ackbox_id id;
	int blamed;
} poisoned;

typedef struct tx_ev {
	ackbox_tx_event_kind kind;
	uint64_t token;
	int broker_code;
	int retriable;
	char *reason;
} tx_ev;

/* Store changes (deletes after confirms) are applied once APPLY_BATCH are
 * queued or the oldest has waited APPLY_DELAY_MS, whichever comes first;
 * at once when nothing was applied for APPLY_DELAY_MS (a quiet relay). */
#define APPLY_BATCH 512
#define APPLY_DELAY_MS 2

/* Acks from a transport's own thread wake the relay once this many are
 * queued (a quarter of the window, at most 64), or at its next 1 ms tick
 * while messages are in flight: a wakeup per ack cost a context switch
 * per message. Anything but an ack wakes it at once. */
#define ACK_WAKE_MAX 64
#define ACK_TICK_MS 1

/* Claims that follow retries' due times run at least this far apart, so a
 * burst of retries (jittered over half their backoff) is claimed in
 * batches, each at most this late. */
#define RETRY_CLAIM_GAP_MS 5

/* A message sent alone whose token was lost (IN_DOUBT) is held this long
 * for the connection to be seen dropping; if it does not, it was not the
 * connection (a Kafka delivery timeout, say) and the message is resent. */
#define BLAME_WAIT_MS 1000

/* A connection that lived this long, or got any answer, was not a flap:
 * the next reconnect starts from the first backoff step again. */
#define STABLE_CONN_MS 10000

/* Disconnect lines: the first at once, then one per this many ms with a
 * count of the ones in between. */
#define DISCONNECT_LOG_MS 10000

/* The poisoned set forgets everything past this size (a message it forgets
 * is found again by probing, at the cost of one more round). */
#define POISONED_MAX 4096

struct ackbox_tx_host {
	abx_relay *relay;
};

struct abx_relay {
	struct ackbox *ab;
	const ackbox_transport_ops *ops;
	void *tx_ctx;
	ackbox_tx_host host;
	ackbox_tx_info info;
	int window;
	pthread_t thread;
	bool thread_started;
	size_t ack_wake; /* queued acks that wake the relay (see ACK_WAKE_MAX) */
	int wake_fd;
	atomic_int wake_pending;
	atomic_int stop;
	atomic_int connected;

	/* inbox: fresh messages from publishers */
	pthread_mutex_t in_mtx;
	abx_fresh *fresh_head, *fresh_tail;
	size_t reserved_msgs, reserved_bytes;
	bool store_poked;

	/* inbox: transport events, from any thread */
	pthread_mutex_t ev_mtx;
	tx_ev *evs, *evs_spare;
	size_t nevs, cap_evs, cap_spare;

	/* relay-thread only */
	u64map by_id;  /* id_key -> entry */
	u64map tokens; /* token -> tok */
	tok *fifo_head, *fifo_tail;
	entry *ready_head, *ready_tail;
	size_t ready_len;
	size_t live; /* tokens in flight that are not superseded */

	/* poison messages: see "Poison messages" in docs/architecture.md */
	entry *susp_head, *susp_tail; /* suspects waiting to be resent, in id order */
	size_t susp_len;
	size_t nsuspect;     /* suspects not final: queued, in flight, held or going back */
	size_t susp_live;    /* suspects in flight */
	bool isolated_live;  /* a message sent alone is in flight: nothing else goes */
	int probe_win;       /* suspects in flight at once; 1 = each alone */
	entry **back;        /* entries going back to a queue, in no order yet */
	size_t nback, cap_back;
	entry *blame;        /* sent alone, lost: blamed if the broker is back at once */
	bool blame_dropped;  /* the connection was seen going down since */
	int64_t blame_until; /* released if no drop is seen by then */
	int blame_code;
	char blame_reason[256];
	u64map poisoned;     /* id_key -> poisoned */
	bool lost_alone;     /* a held message was released without a drop seen... */
	ackbox_id lost_alone_id; /* ...this one, at the head of the suspect queue */
	int lost_alone_code;
	char lost_alone_reason[256];
	int64_t next_blame_log_at;
	unsigned blame_unlogged;

	/* the connection's life, for the reconnect backoff and the log */
	int64_t connected_at;
	uint64_t answers;    /* outcomes received on this connection */
	bool conn_blamed;    /* its drop left a message to judge */
	int flaps;           /* short connections in a row that achieved nothing */
	int64_t next_disc_log_at;
	unsigned disc_unlogged;
	uint64_t next_token;
	bool ever_connected;
	int connect_failures; /* the reconnect backoff's step */
	int connect_errors;   /* connect() failures since the last success */
	int64_t next_connect_at;
	char last_claim_error[256];
	int64_t next_claim_log_at;
	int64_t next_claim_at;
	int64_t *retry_at; /* min-heap: mono ms when each retry set here is claimable */
	size_t nretry_at, cap_retry_at;
	bool store_dirty;
	uint64_t rng;
	ackbox_store_change *changes;
	size_t nchanges, cap_changes;
	char **change_texts; /* owned last_error strings, parallel to changes */
	abx_report_item *rep_head, *rep_tail; /* released after their changes */
	size_t nreports;
	int64_t next_fail_log_at; /* FAILED lines are rate-limited with a report callback */
	unsigned failed_unlogged;
	int64_t apply_retry_at;
	int64_t first_change_at; /* when the oldest queued change was queued */
	int64_t last_apply_at;   /* when changes were last applied */
	bool apply_stuck;        /* the store refused the last apply */
	char last_connect_error[256];
};

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

static uint64_t rng_next(abx_relay *r)
{
	/* xorshift64*: jitter only, not security */
	r->rng ^= r->rng >> 12;
	r->rng ^= r->rng << 25;
	r->rng ^= r->rng >> 27;
	return r->rng * 2685821657736338717ULL;
}

/* Capped exponential backoff with full jitter (Fluent Bit's scheduler). */
/* Capped exponential backoff with "equal jitter": between half and all of
 * the base, so a dead or just-restarted broker is not hammered and cannot
 * fail a message in a burst of quick attempts. */
static int64_t backoff_ms(abx_relay *r, int n)
{
	int64_t base = r->ab->backoff_initial_ms, cap = r->ab->backoff_max_ms;
	for (int i = 1; i < n && base < cap; i++)
		base *= 2;
	if (base > cap)
		base = cap;
	if (base <= 0)
		return 0;
	return base / 2 + (int64_t)(rng_next(r) % (uint64_t)(base / 2 + 1));
}

/*
 * Retries are claimed from the store once their backoff ends. The relay
 * keeps the times it set in a min-heap so that, after a claim, the next one
 * runs when the next retry is due rather than a whole store.poll_interval
 * later. A claim starting at `now` covers every time <= now; times of rows
 * acked late or taken by another relay only cost one spare claim.
 */
static void retry_at_push(abx_relay *r, int64_t at)
{
	size_t i;
	if (r->nretry_at == r->cap_retry_at) {
		size_t ncap = r->cap_retry_at ? r->cap_retry_at * 2 : 64;
		int64_t *n = realloc(r->retry_at, ncap * sizeof(*n));
		if (!n)
			return; /* the caller still brings the next claim forward to `at` */
		r->retry_at = n;
		r->cap_retry_at = ncap;
	}
	for (i = r->nretry_at++; i > 0 && r->retry_at[(i - 1) / 2] > at; i = (i - 1) / 2)
		r->retry_at[i] = r->retry_at[(i - 1) / 2];
	r->retry_at[i] = at;
}

/* Forgets the times a claim starting at `now` has covered. */
static void retry_at_pop_until(abx_relay *r, int64_t now)
{
	while (r->nretry_at && r->retry_at[0] <= now) {
		int64_t last = r->retry_at[--r->nretry_at];
		size_t i = 0, c;
		while ((c = 2 * i + 1) < r->nretry_at) {
			if (c + 1 < r->nretry_at && r->retry_at[c + 1] < r->retry_at[c])
				c++;
			if (r->retry_at[c] >= last)
				break;
			r->retry_at[i] = r->retry_at[c];
			i = c;
		}
		if (r->nretry_at)
			r->retry_at[i] = last;
	}
}

static void relay_wake(abx_relay *r)
{
	if (!atomic_exchange(&r->wake_pending, 1)) {
		uint64_t one = 1;
		if (write(r->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
			abx_log(r->ab->conf, ACKBOX_LOG_ERROR, "relay", "eventfd write: %s",
			        strerror(errno));
	}
}

void abx_fresh_free(abx_fresh *f)
{
	free(f); /* one allocation holds the struct and every field */
}

/* Releases the message body; memory for fresh messages is handed back to
 * the publishers' reservation only here, which bounds RAM while the broker
 * is down. */
static void entry_drop_data(abx_relay *r, entry *e)
{
	if (!e->data)
		return;
	if (e->from_fresh) {
		abx_relay_unreserve(r, 1, e->data->payload_len);
		e->from_fresh = false;
	}
	abx_fresh_free(e->data);
	e->data = NULL;
}

static void entry_free(abx_relay *r, entry *e)
{
	map_del(&r->by_id, id_key(&e->id));
	entry_drop_data(r, e);
	free(e); /* the topic lives in the same allocation */
}

/* Frees e once nothing refers to it and it is not queued or in flight. */
static void entry_maybe_free(abx_relay *r, entry *e)
{
	if (e->refs == 0 && (e->state == E_WAITING || e->state == E_DONE))
		entry_free(r, e);
}

static entry *entry_new(abx_relay *r, abx_fresh *data, int attempts, uint64_t lease)
{
	size_t tl = strlen(data->topic) + 1;
	entry *e = calloc(1, sizeof(*e) + tl);
	if (!e)
		return NULL;
	e->topic = memcpy(e + 1, data->topic, tl);
	if (map_put(&r->by_id, id_key(&data->id), e) != 0) {
		free(e);
		return NULL;
	}
	e->id = data->id;
	e->data = data;
	e->attempts = attempts;
	e->lease = lease;
	e->state = E_READY;
	return e;
}

static void ready_push_back(abx_relay *r, entry *e)
{
	e->next = NULL;
	e->state = E_READY;
	if (r->ready_tail)
		r->ready_tail->next = e;
	else
		r->ready_head = e;
	r->ready_tail = e;
	r->ready_len++;
}

static void ready_push_front(abx_relay *r, entry *e)
{
	e->state = E_READY;
	e->next = r->ready_head;
	r->ready_head = e;
	if (!r->ready_tail)
		r->ready_tail = e;
	r->ready_len++;
}

static void susp_push_front(abx_relay *r, entry *e)
{
	e->state = E_READY;
	e->next = r->susp_head;
	r->susp_head = e;
	if (!r->susp_tail)
		r->susp_tail = e;
	r->susp_len++;
}

static entry *susp_pop(abx_relay *r)
{
	entry *e = r->susp_head;
	if (e) {
		r->susp_head = e->next;
		if (!r->susp_head)
			r->susp_tail = NULL;
		e->next = NULL;
		r->susp_len--;
	}
	return e;
}

/* Takes a READY entry out of whichever queue holds it. */
static void queue_unlink(abx_relay *r, entry *e)
{
	entry **head = e->suspect ? &r->susp_head : &r->ready_head;
	entry **tail = e->suspect ? &r->susp_tail : &r->ready_tail;
	size_t *len = e->suspect ? &r->susp_len : &r->ready_len;
	entry **pp = head, *prev = NULL;
	while (*pp && *pp != e) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	if (*pp) {
		*pp = e->next;
		if (*tail == e)
			*tail = prev;
		(*len)--;
	}
	e->next = NULL;
}

static entry *ready_pop(abx_relay *r)
{
	entry *e = r->ready_head;
	if (e) {
		r->ready_head = e->next;
		if (!r->ready_head)
			r->ready_tail = NULL;
		e->next = NULL;
		r->ready_len--;
	}
	return e;
}

static void fifo_remove(abx_relay *r, tok *t)
{
	if (t->prev)
		t->prev->next = t->next;
	else
		r->fifo_head = t->next;
	if (t->next)
		t->next->prev = t->prev;
	else
		r->fifo_tail = t->prev;
	t->prev = t->next = NULL;
}

static void fifo_append(abx_relay *r, tok *t)
{
	t->next = NULL;
	t->prev = r->fifo_tail;
	if (r->fifo_tail)
		r->fifo_tail->next = t;
	else
		r->fifo_head = t;
	r->fifo_tail = t;
}

/* t stops counting as in flight: answered, lost, or timed out. */
static void tok_retire(abx_relay *r, tok *t)
{
	if (t->superseded)
		return; /* retired when it timed out */
	r->live--;
	if (t->probe)
		r->susp_live--;
	if (t->isolated)
		r->isolated_live = false;
}

/* Forgets a token; drops its reference on the entry. */
static void tok_drop(abx_relay *r, tok *t)
{
	entry *e = t->e;
	tok_retire(r, t);
	map_del(&r->tokens, t->token);
	fifo_remove(r, t);
	if (e->cur_token == t->token)
		e->cur_token = 0;
	e->refs--;
	free(t);
	entry_maybe_free(r, e);
}

/* ---- suspects and the messages going back to a queue ---- */

/* e was in flight when the connection died: it is resent by probing. */
static void mark_suspect(abx_relay *r, entry *e)
{
	if (!e->suspect) {
		e->suspect = true;
		r->nsuspect++;
	}
	r->probe_win = 1;
}

/* e reached an outcome: it is no longer a suspect. An ack widens the probe
 * window by one (doubling it each round, as TCP's slow start does). */
static void suspect_resolved(abx_relay *r, entry *e, bool acked)
{
	if (!e->suspect)
		return;
	e->suspect = false;
	e->isolate = false;
	r->nsuspect--;
	if (acked && r->probe_win < r->window)
		r->probe_win++;
}

static void poisoned_forget(abx_relay *r, const entry *e)
{
	poisoned *p = map_get(&r->poisoned, id_key(&e->id));
	if (p) {
		map_del(&r->poisoned, id_key(&e->id));
		free(p);
	}
}

static void poisoned_clear(abx_relay *r)
{
	for (size_t i = 0; i < r->poisoned.cap; i++)
		free(r->poisoned.vals[i]);
	map_fini(&r->poisoned);
}

/*
 * e goes back to its queue (the suspect queue if it is a suspect) at the
 * next send round. Lost and refused attempts are reported one by one, in
 * any order: gathering them first lets back_flush() put them back oldest
 * first, so a resend keeps the original order.
 */
static void back_add(abx_relay *r, entry *e)
{
	if (r->nback == r->cap_back) {
		size_t ncap = r->cap_back ? r->cap_back * 2 : 64;
		entry **n = realloc(r->back, ncap * sizeof(*n));
		if (!n) {
			/* out of memory: put it back at once, out of order */
			if (e->suspect)
				susp_push_front(r, e);
			else
				ready_push_front(r, e);
			return;
		}
		r->back = n;
		r->cap_back = ncap;
	}
	e->state = E_REQUEUE;
	e->refs++; /* the list holds it */
	r->back[r->nback++] = e;
}

static int entry_id_cmp(const void *a, const void *b)
{
	const entry *x = *(entry *const *)a, *y = *(entry *const *)b;
	return memcmp(&x->id, &y->id, sizeof(x->id));
}

/*
 * Puts the gathered entries back, oldest (lowest id) first: plain ones in
 * front of the ready queue, suspects merged into the suspect queue, which
 * stays in id order. Entries that reached an outcome meanwhile (a late
 * confirm from an earlier attempt) are only let go.
 */
static void back_flush(abx_relay *r)
{
	entry *sh = NULL, **st = &sh, *rh = NULL, **rt = &rh, *rlast = NULL;
	size_t nr = 0;
	if (!r->nback)
		return;
	qsort(r->back, r->nback, sizeof(*r->back), entry_id_cmp);
	for (size_t i = 0; i < r->nback; i++) {
		entry *e = r->back[i];
		e->refs--;
		if (e->state != E_REQUEUE) {
			entry_maybe_free(r, e);
			continue;
		}
		e->state = E_READY;
		e->next = NULL;
		if (e->suspect) {
			*st = e;
			st = &e->next;
			r->susp_len++;
		} else {
			*rt = e;
			rt = &e->next;
			rlast = e;
			nr++;
		}
	}
	r->nback = 0;
	if (rh) {
		rlast->next = r->ready_head;
		if (!r->ready_head)
			r->ready_tail = rlast;
		r->ready_head = rh;
		r->ready_len += nr;
	}
	if (sh) {
		/* merge two lists sorted by id */
		entry *a = sh, *b = r->susp_head, *head = NULL, **tail = &head, *last = NULL;
		while (a || b) {
			entry **from = !b || (a && memcmp(&a->id, &b->id, sizeof(a->id)) <= 0) ? &a : &b;
			last = *from;
			*from = last->next;
			*tail = last;
			tail = &last->next;
		}
		*tail = NULL;
		r->susp_head = head;
		r->susp_tail = last;
	}
}

/* Queues a store change; text (may be NULL) is copied. */
static void change_add(abx_relay *r, ackbox_change_kind kind, const entry *e, int64_t due_ms,
                       const char *text, int code)
{
	if (r->nchanges == r->cap_changes) {
		size_t ncap = r->cap_changes ? r->cap_changes * 2 : 256;
		ackbox_store_change *nc = realloc(r->changes, ncap * sizeof(*nc));
		char **nt = nc ? realloc(r->change_texts, ncap * sizeof(*nt)) : NULL;
		if (!nc || !nt) {
			/* Out of memory: drop the change. The row stays pending in the
			 * store and is resent later: a duplicate, never a loss. */
			if (nc)
				r->changes = nc;
			abx_log(r->ab->conf, ACKBOX_LOG_ERROR, "relay", "out of memory queueing a change");
			return;
		}
		r->changes = nc;
		r->change_texts = nt;
		r->cap_changes = ncap;
	}
	if (r->nchanges == 0)
		r->first_change_at = ackbox_mono_ms();
	ackbox_store_change *c = &r->changes[r->nchanges];
	memset(c, 0, sizeof(*c));
	c->kind = kind;
	c->id = e->id;
	c->attempts = e->attempts;
	c->due_ms = due_ms;
	c->last_code = code;
	c->lease = e->lease;
	r->change_texts[r->nchanges] = text ? strdup(text) : NULL;
	c->last_error = r->change_texts[r->nchanges];
	r->nchanges++;
}

/* A report about e; its texts point into e and reason. */
static ackbox_report report_of(const entry *e, ackbox_state st, ackbox_outcome oc, int code,
                               int retriable, const char *reason)
{
	ackbox_report rep;
	memset(&rep, 0, sizeof(rep));
	rep.id = e->id;
	rep.topic = e->topic;
	rep.state = st;
	rep.attempts = e->attempts;
	rep.outcome = oc;
	rep.broker_code = code;
	rep.retriable = retriable;
	rep.reason = reason ? reason : "";
	return rep;
}

/* Queues a final report, delivered after the matching change is applied. */
static void report_add(abx_relay *r, const entry *e, ackbox_state st, ackbox_outcome oc,
                       int code, int retriable, const char *reason)
{
	ackbox_report rep;
	abx_report_item *it;
	if (!r->ab->conf->report_cb)
		return;
	rep = report_of(e, st, oc, code, retriable, reason);
	it = abx_report_new(&rep);
	if (!it) {
		abx_log(r->ab->conf, ACKBOX_LOG_ERROR, "relay", "out of memory queueing a report");
		return;
	}
	if (r->rep_tail)
		r->rep_tail->next = it;
	else
		r->rep_head = it;
	r->rep_tail = it;
	r->nreports++;
}

/* ------------------------------------------------------------------ */
/* The state machine                                                    */
/* ------------------------------------------------------------------ */

static const char *outcome_name(ackbox_outcome oc)
{
	switch (oc) {
	case ACKBOX_OUTCOME_NACK: return "nacked by the broker";
	case ACKBOX_OUTCOME_UNROUTABLE: return "unroutable (returned by the broker)";
	case ACKBOX_OUTCOME_TIMEOUT: return "no confirm within retry.timeout";
	case ACKBOX_OUTCOME_ERROR: return "broker error";
	case ACKBOX_OUTCOME_IN_DOUBT: return "connection lost before the confirm";
	case ACKBOX_OUTCOME_DISCONNECT:
		return "the connection dropped while this message was the only one in flight, and "
		       "the broker took a new connection at once (a message the broker or the client "
		       "library cannot take)";
	case ACKBOX_OUTCOME_INVALID: return "the transport can never send it";
	case ACKBOX_OUTCOME_OPERATOR: return "failed by an operator";
	default: return "";
	}
}

/* The broker confirmed e (through any of its attempts): delete, report once. */
static void on_acked(abx_relay *r, entry *e)
{
	if (e->state == E_DONE)
		return; /* a second confirm for a message already acked */
	ABX_CRASH_POINT("after_confirm");
	change_add(r, ACKBOX_CHANGE_DELETE, e, 0, NULL, 0);
	report_add(r, e, ACKBOX_MSG_ACKED, ACKBOX_OUTCOME_NONE, 0, 0, "");
	if (e->state == E_READY) {
		/* queued for a resend: take it out */
		queue_unlink(r, e);
	} else if (e->state == E_HELD) {
		/* an earlier attempt's confirm clears the suspect being judged */
		r->blame = NULL;
		e->refs--;
	}
	/* E_REQUEUE: back_flush() lets it go */
	suspect_resolved(r, e, true);
	poisoned_forget(r, e);
	entry_drop_data(r, e);
	e->state = E_DONE;
}

/*
 * Without a report callback the log is the only place a FAILED message
 * shows, so each gets a line. With one, the application hears of every
 * message; the log gets at most one line per 10 s, counting the rest, so a
 * broker refusing a burst does not flood it.
 */
static void log_failed(abx_relay *r, const entry *e, const char *why)
{
	struct ackbox *ab = r->ab;
	int64_t now = ackbox_mono_ms();
	if (ab->conf->report_cb && now < r->next_fail_log_at) {
		r->failed_unlogged++;
		return;
	}
	if (r->failed_unlogged)
		abx_log(ab->conf, ACKBOX_LOG_WARN, "relay",
		        "message to '%s' FAILED: %s (and %u more since the last such line)", e->topic,
		        why, r->failed_unlogged);
	else
		abx_log(ab->conf, ACKBOX_LOG_WARN, "relay", "message to '%s' FAILED: %s", e->topic,
		        why);
	r->failed_unlogged = 0;
	r->next_fail_log_at = now + 10000;
}

/*
 * An attempt that reached the broker failed. Counts it, asks the nack
 * policy, and moves e to RETRYING (back to the store with a backoff) or
 * FAILED, or drops it. With fail_now (a message that can never be sent)
 * it goes FAILED whatever the count, unless the policy drops it.
 */
static void on_attempt_failed_ex(abx_relay *r, entry *e, ackbox_outcome oc, int code,
                                 int retriable, const char *why, bool fail_now)
{
	struct ackbox *ab = r->ab;
	char reason[768];
	ackbox_policy pol = ACKBOX_POLICY_DEFAULT;

	suspect_resolved(r, e, false);
	e->attempts++;
	snprintf(reason, sizeof(reason), "%s%s%s", outcome_name(oc), why && *why ? ": " : "",
	         why ? why : "");
	if (ab->conf->nack_cb) {
		ackbox_report rep = report_of(e, ACKBOX_MSG_RETRYING, oc, code, retriable, reason);
		pol = ab->conf->nack_cb(&rep, ab->conf->nack_opaque);
	}
	entry_drop_data(r, e);
	if (pol == ACKBOX_POLICY_DROP) {
		poisoned_forget(r, e);
		change_add(r, ACKBOX_CHANGE_DELETE, e, 0, NULL, 0);
		report_add(r, e, ACKBOX_MSG_DROPPED, oc, code, retriable, reason);
		e->state = E_DONE;
	} else if (pol == ACKBOX_POLICY_FAIL || fail_now || e->attempts >= ab->max_attempts) {
		char full[800];
		poisoned_forget(r, e);
		snprintf(full, sizeof(full), "%s (after %d attempt%s)", reason, e->attempts,
		         e->attempts == 1 ? "" : "s");
		change_add(r, ACKBOX_CHANGE_FAIL, e, 0, full, code);
		report_add(r, e, ACKBOX_MSG_FAILED, oc, code, retriable, full);
		log_failed(r, e, full);
		e->state = E_DONE;
	} else {
		int64_t delay = backoff_ms(r, e->attempts);
		/* The row's due time is wall clock, claims are scheduled on the
		 * monotonic one, both truncated to ms. Reading wall before mono
		 * here, mono before wall in the claim, and claiming 1 ms later
		 * makes a claim at `at` or after always find the row due. */
		int64_t due = ackbox_wall_ms() + delay;
		int64_t at = ackbox_mono_ms() + delay + 1;
		change_add(r, ACKBOX_CHANGE_RETRY, e, due, reason, code);
		e->state = E_WAITING;
		retry_at_push(r, at);
		if (r->next_claim_at > at)
			r->next_claim_at = at;
	}
}

static void on_attempt_failed(abx_relay *r, entry *e, ackbox_outcome oc, int code, int retriable,
                              const char *why)
{
	on_attempt_failed_ex(r, e, oc, code, retriable, why, false);
}

/* ---- poison messages ---- */

/*
 * e was sent alone and its attempt was lost (the connection died, or the
 * transport says in doubt). It is held, and nothing else is sent, until we
 * know whether the broker is back at once (then e made it drop the
 * connection: blamed) or not (an outage: e is resent, nothing burnt).
 */
static void blame_hold(abx_relay *r, entry *e, const char *why, int code)
{
	r->blame = e;
	e->state = E_HELD;
	e->refs++;
	r->blame_dropped = !atomic_load(&r->connected);
	r->blame_until = ackbox_mono_ms() + BLAME_WAIT_MS;
	r->blame_code = code;
	snprintf(r->blame_reason, sizeof(r->blame_reason), "%s", why && *why ? why : "no reason given");
	r->conn_blamed = true;
}

/* Not to blame (an outage, or no drop at all): resent as a suspect. */
static void blame_release(abx_relay *r)
{
	entry *e = r->blame;
	r->blame = NULL;
	mark_suspect(r, e);
	back_add(r, e);
	e->refs--; /* the hold's; back_add holds it now */
}

/*
 * No drop was seen within BLAME_WAIT_MS of losing e alone. Either the
 * connection stayed up (Kafka's possibly-persisted reports) or the
 * transport reported the attempt lost but not the connection (paho without
 * a DISCONNECTED callback for some closes). e is resent first; if that very
 * send finds the transport not connected, the earlier loss was a drop after
 * all, and e is judged as if it had been seen (see send_ready).
 */
static void blame_expire(abx_relay *r)
{
	entry *e = r->blame;
	r->blame = NULL;
	mark_suspect(r, e);
	r->lost_alone = true;
	r->lost_alone_id = e->id;
	r->lost_alone_code = r->blame_code;
	snprintf(r->lost_alone_reason, sizeof(r->lost_alone_reason), "%s", r->blame_reason);
	susp_push_front(r, e);
	e->refs--;
}

/* The broker took a new connection at once after the held message was
 * lost alone: the message made it drop the connection. Burns an attempt;
 * when it comes back from the store it is sent alone again. */
static void blame_convict(abx_relay *r)
{
	struct ackbox *ab = r->ab;
	entry *e = r->blame;
	int64_t now = ackbox_mono_ms();
	poisoned *p;
	char idstr[ACKBOX_ID_STRLEN];

	r->blame = NULL;
	e->refs--;
	p = map_get(&r->poisoned, id_key(&e->id));
	if (!p) {
		if (r->poisoned.len >= POISONED_MAX)
			poisoned_clear(r);
		p = calloc(1, sizeof(*p));
		if (p && map_put(&r->poisoned, id_key(&e->id), p) != 0) {
			free(p);
			p = NULL;
		}
		if (p)
			p->id = e->id;
	}
	if (p)
		p->blamed++;
	ackbox_id_format(&e->id, idstr);
	if (now >= r->next_blame_log_at) {
		abx_log(ab->conf, ACKBOX_LOG_WARN, "relay",
		        "message %s to '%s' was alone in flight when the connection dropped, and the "
		        "broker was back at once: attempt %d of %d burnt (%s)%s",
		        idstr, e->topic, e->attempts + 1, ab->max_attempts, r->blame_reason,
		        r->blame_unlogged ? "; more such lines suppressed" : "");
		r->blame_unlogged = 0;
		r->next_blame_log_at = now + DISCONNECT_LOG_MS;
	} else {
		r->blame_unlogged++;
	}
	e->state = E_INFLIGHT; /* the attempt that failed */
	on_attempt_failed(r, e, ACKBOX_OUTCOME_DISCONNECT, r->blame_code, 0, r->blame_reason);
	entry_maybe_free(r, e);
}

/*
 * A live attempt was lost: the connection died before its answer. If the
 * message was sent alone it is held to be judged; otherwise it becomes a
 * suspect, resent by probing.
 */
static void on_lost(abx_relay *r, tok *t, const char *why, int code)
{
	entry *e = t->e;
	bool alone = t->isolated;
	e->refs++; /* keep e alive across tok_drop */
	tok_drop(r, t);
	e->refs--;
	if (alone && !r->blame) {
		blame_hold(r, e, why, code);
		return;
	}
	mark_suspect(r, e);
	back_add(r, e);
}

/* The connection is up (connect() returned 0, or CONNECTED was reported). */
static void on_connected(abx_relay *r, int64_t now)
{
	if (r->blame) {
		if (r->blame_dropped)
			blame_convict(r);
		else
			blame_release(r);
	}
	r->connected_at = now;
	r->answers = 0;
	r->conn_blamed = false;
}

/*
 * A reconnect loop must show at the default log level without flooding it:
 * the first disconnect is logged at once, later ones at most once per
 * DISCONNECT_LOG_MS with the count of those in between.
 */
static void log_disconnect(abx_relay *r, const char *why, size_t inflight, int64_t now)
{
	if (now < r->next_disc_log_at) {
		r->disc_unlogged++;
		return;
	}
	if (r->disc_unlogged)
		abx_log(r->ab->conf, ACKBOX_LOG_WARN, "relay",
		        "transport disconnected (%s); %zu unconfirmed message(s) will be resent; "
		        "%u more disconnect(s) in the last %d s, reconnecting with backoff",
		        why, inflight, r->disc_unlogged, DISCONNECT_LOG_MS / 1000);
	else
		abx_log(r->ab->conf, ACKBOX_LOG_WARN, "relay",
		        "transport disconnected (%s); %zu unconfirmed message(s) will be resent", why,
		        inflight);
	r->disc_unlogged = 0;
	r->next_disc_log_at = now + DISCONNECT_LOG_MS;
}

/*
 * The connection is gone: every current attempt is in doubt and is resent
 * without burning an attempt, as a suspect (see on_lost); superseded tokens
 * die with the channel. The reconnect backoff restarts from its first step
 * only after a connection that achieved something: one that dropped at once
 * with nothing answered (a broker closing every connection) backs off
 * further each time instead of reconnecting about once a second.
 */
static void on_disconnected(abx_relay *r, const char *why, int code)
{
	int64_t now = ackbox_mono_ms();
	bool was_connected = atomic_load(&r->connected);
	bool told = why && *why; /* the transport's own words, not the core's guess */
	tok *t, *next;

	if (!told)
		why = "the transport lost its connection";
	if (was_connected || r->live)
		log_disconnect(r, why, r->live, now);
	atomic_store(&r->connected, 0);
	for (t = r->fifo_head; t; t = next) {
		entry *e = t->e;
		next = t->next;
		if (!t->superseded && e->state == E_INFLIGHT && e->cur_token == t->token)
			on_lost(r, t, why, code);
		else
			tok_drop(r, t);
	}
	if (r->blame && !r->blame_dropped) {
		/* the drop's own words (an MQTT 5 DISCONNECT reason, an AMQP
		 * connection.close) say more than a per-message "in doubt" */
		r->blame_dropped = true;
		if (told) {
			snprintf(r->blame_reason, sizeof(r->blame_reason), "%s", why);
			r->blame_code = code;
		}
	}
	if (!was_connected)
		return; /* a second report of the same drop */
	if (r->answers || r->conn_blamed || now - r->connected_at >= STABLE_CONN_MS)
		r->flaps = 0;
	else
		r->flaps++;
	r->connect_failures = r->flaps;
	r->next_connect_at = now + backoff_ms(r, ++r->connect_failures);
}

static void handle_event(abx_relay *r, const tx_ev *ev)
{
	tok *t;
	entry *e;

	if (ev->kind == ACKBOX_TX_DISCONNECTED) {
		on_disconnected(r, ev->reason, ev->broker_code);
		return;
	}
	if (ev->kind == ACKBOX_TX_CONNECTED) {
		if (!atomic_load(&r->connected)) {
			abx_log(r->ab->conf, ACKBOX_LOG_INFO, "relay", "transport connected");
			on_connected(r, ackbox_mono_ms());
		}
		atomic_store(&r->connected, 1);
		r->connect_failures = 0;
		r->ever_connected = true;
		return;
	}
	t = map_get(&r->tokens, ev->token);
	if (!t)
		return; /* unknown, or already decided: the first report wins */
	e = t->e;
	if (ev->kind != ACKBOX_TX_IN_DOUBT && ev->kind != ACKBOX_TX_NOT_SENT)
		r->answers++;
	if (ev->kind == ACKBOX_TX_ACK) {
		e->refs++;
		tok_drop(r, t);
		e->refs--;
		on_acked(r, e);
		entry_maybe_free(r, e);
		return;
	}
	if (t->superseded || e->state != E_INFLIGHT || e->cur_token != t->token) {
		/* the answer to an attempt we already gave up on: only an ack matters */
		tok_drop(r, t);
		return;
	}
	if (ev->kind == ACKBOX_TX_IN_DOUBT) {
		on_lost(r, t, ev->reason, ev->broker_code);
		return;
	}
	e->refs++;
	tok_drop(r, t);
	e->refs--;
	switch (ev->kind) {
	case ACKBOX_TX_NACK:
		on_attempt_failed(r, e, ACKBOX_OUTCOME_NACK, ev->broker_code, ev->retriable,
		                  ev->reason);
		break;
	case ACKBOX_TX_UNROUTABLE:
		on_attempt_failed(r, e, ACKBOX_OUTCOME_UNROUTABLE, ev->broker_code, ev->retriable,
		                  ev->reason);
		break;
	case ACKBOX_TX_ERROR:
		on_attempt_failed(r, e, ACKBOX_OUTCOME_ERROR, ev->broker_code, ev->retriable,
		                  ev->reason);
		break;
	case ACKBOX_TX_NOT_SENT:
	default:
		/* never left: resend (a suspect stays one), attempt not burnt */
		back_add(r, e);
		break;
	}
	entry_maybe_free(r, e);
}

/* Attempts whose confirm is overdue count as failed; superseded tokens
 * that the transport never answered are forgotten after a long grace. */
static void check_timeouts(abx_relay *r, int64_t now)
{
	while (r->fifo_head && r->fifo_head->deadline <= now) {
		tok *t = r->fifo_head;
		entry *e = t->e;
		if (t->superseded) {
			tok_drop(r, t);
			continue;
		}
		/* keep the token (a late confirm still acks), move it to the back
		 * with a zombie deadline so the window is not held forever */
		tok_retire(r, t);
		fifo_remove(r, t);
		t->superseded = true;
		t->deadline = now + 10 * r->ab->retry_timeout_ms;
		fifo_append(r, t);
		if (e->cur_token == t->token)
			e->cur_token = 0;
		if (e->state == E_INFLIGHT) {
			char why[64];
			snprintf(why, sizeof(why), "%lld ms", (long long)r->ab->retry_timeout_ms);
			on_attempt_failed(r, e, ACKBOX_OUTCOME_TIMEOUT, 0, 1, why);
		}
	}
}

/* Copies a claimed row into a fresh-style block. */
static abx_fresh *fresh_from_row(const ackbox_store_row *row)
{
	size_t tl = strlen(row->topic) + 1;
	size_t cl = row->content_type ? strlen(row->content_type) + 1 : 0;
	abx_fresh *f = malloc(sizeof(*f) + tl + cl + row->key_len + row->headers_len +
	                      row->payload_len + 1);
	char *p;
	if (!f)
		return NULL;
	memset(f, 0, sizeof(*f));
	p = (char *)(f + 1);
	f->id = row->id;
	f->created_ms = row->created_ms;
	f->topic = memcpy(p, row->topic, tl);
	p += tl;
	if (cl) {
		f->content_type = memcpy(p, row->content_type, cl);
		p += cl;
	}
	if (row->key_len) {
		f->key = memcpy(p, row->key, row->key_len);
		f->key_len = row->key_len;
		p += row->key_len;
	}
	if (row->headers_len) {
		f->headers = memcpy(p, row->headers, row->headers_len);
		f->headers_len = row->headers_len;
		p += row->headers_len;
	}
	f->payload = p;
	if (row->payload_len)
		memcpy(p, row->payload, row->payload_len);
	f->payload_len = row->payload_len;
	return f;
}

/* A claimed row joins the ready queue; one blamed for a dropped connection
 * before goes to the suspect queue, to be sent alone. */
static void enqueue_claimed(abx_relay *r, entry *e)
{
	if (map_get(&r->poisoned, id_key(&e->id))) {
		mark_suspect(r, e);
		e->isolate = true;
		back_add(r, e);
		return;
	}
	ready_push_back(r, e);
}

static int claim_cb(const ackbox_store_row *row, void *opaque)
{
	abx_relay *r = opaque;
	entry *e = map_get(&r->by_id, id_key(&row->id));
	abx_fresh *f;

	if (e && memcmp(&e->id, &row->id, sizeof(row->id)) == 0) {
		/* the claim renewed our lease: later changes must carry the new
		 * one, or a fencing store skips them and the row is sent again */
		e->lease = row->lease;
		if (e->state != E_WAITING)
			return 0; /* already queued or in flight here */
		f = fresh_from_row(row);
		if (!f)
			return 1;
		e->data = f;
		e->attempts = row->attempts;
		e->lease = row->lease;
		enqueue_claimed(r, e);
		return 0;
	}
	f = fresh_from_row(row);
	if (!f)
		return 1;
	e = entry_new(r, f, row->attempts, row->lease);
	if (!e) {
		abx_fresh_free(f);
		return 1;
	}
	enqueue_claimed(r, e);
	return 0;
}

static void claim_due(abx_relay *r, int64_t now)
{
	struct ackbox *ab = r->ab;
	char err[256] = "";
	int n;
	size_t busy = r->tokens.len + r->ready_len + r->susp_len + r->nback;
	size_t room = busy < 2 * (size_t)r->window ? 2 * (size_t)r->window - busy : 0;
	if (room == 0)
		return;
	if (room > 1024)
		room = 1024;
	pthread_mutex_lock(&ab->store_mtx);
	n = ab->store_ops->claim(ab->store_ctx, ackbox_wall_ms(),
	                         ackbox_wall_ms() + ab->retry_timeout_ms, room, claim_cb, r, err,
	                         sizeof(err));
	pthread_mutex_unlock(&ab->store_mtx);
	if (n < 0) {
		/* a store outage (a database restart) repeats every poll interval:
		 * log a new error at once, the same one at most every 10 s */
		if (strcmp(err, r->last_claim_error) != 0 || now >= r->next_claim_log_at) {
			abx_log(ab->conf, ACKBOX_LOG_ERROR, "relay", "claiming due messages: %s", err);
			snprintf(r->last_claim_error, sizeof(r->last_claim_error), "%s", err);
			r->next_claim_log_at = now + 10000;
		}
		r->next_claim_at = now + ab->store_poll_ms;
		return;
	}
	r->last_claim_error[0] = '\0';
	/* More may be due now: a store that hands out whole packed batches
	 * returns fewer (or more) than `room` with more waiting. At most one
	 * empty claim follows the last one that found something. */
	r->store_dirty = n > 0;
	/* `now` was read before the claim read the wall clock (see
	 * on_attempt_failed): every retry due by then was claimable */
	retry_at_pop_until(r, now);
	r->next_claim_at = now + ab->store_poll_ms;
	if (r->nretry_at && r->retry_at[0] < r->next_claim_at) {
		r->next_claim_at = r->retry_at[0];
		if (r->next_claim_at < now + RETRY_CLAIM_GAP_MS)
			r->next_claim_at = now + RETRY_CLAIM_GAP_MS;
	}
}

/*
 * The next entry to send, or NULL. While suspects are unresolved only they
 * go, oldest first: at most probe_win at once, and while probe_win is 1 (or
 * for a message blamed before) each alone, after everything else in flight
 * has been answered, so that a dropped connection points at one message.
 */
static entry *next_to_send(abx_relay *r, bool *alone)
{
	entry *e;
	*alone = false;
	if (r->blame || r->isolated_live)
		return NULL;
	if (!r->nsuspect)
		return ready_pop(r);
	e = r->susp_head;
	if (!e)
		return NULL; /* the rest are in flight (or held): wait for their answers */
	if (r->probe_win <= 1 || e->isolate) {
		if (r->live)
			return NULL;
		*alone = true;
	} else if (r->susp_live >= (size_t)r->probe_win) {
		return NULL;
	}
	return susp_pop(r);
}

/* Puts an entry that was not sent back at the head of its queue. */
static void unsend(abx_relay *r, entry *e)
{
	if (e->suspect)
		susp_push_front(r, e);
	else
		ready_push_front(r, e);
}

static void send_ready(abx_relay *r, int64_t now)
{
	entry *e;
	bool alone;
	back_flush(r);
	while (atomic_load(&r->connected) && (int)r->tokens.len < r->window &&
	       (e = next_to_send(r, &alone)) != NULL) {
		ackbox_tx_msg m;
		ackbox_header *hs = NULL;
		size_t nh = 0;
		char idstr[ACKBOX_ID_STRLEN], why[300];
		tok *t;
		int rc;

		if (ackbox_headers_decode(e->data->headers, e->data->headers_len, &hs, &nh) != 0) {
			/* bytes the store handed back do not parse: fail it for an operator */
			on_attempt_failed_ex(r, e, ACKBOX_OUTCOME_ERROR, 0, 0,
			                     "stored headers are corrupt", true);
			entry_maybe_free(r, e);
			continue;
		}
		ackbox_id_format(&e->id, idstr);
		memset(&m, 0, sizeof(m));
		m.id = e->id;
		m.id_str = idstr;
		m.topic = e->data->topic;
		m.key = e->data->key;
		m.key_len = e->data->key_len;
		m.payload = e->data->payload;
		m.payload_len = e->data->payload_len;
		m.content_type = e->data->content_type;
		m.headers = hs;
		m.header_count = nh;
		/* a row stored without the transport's check (an older version, a
		 * handle without a transport) that can never be sent: FAILED now,
		 * rather than sent to make the broker drop the connection */
		if (ABX_HAS_SLOT(r->ops, ackbox_transport_ops, validate) &&
		    r->ops->validate(r->tx_ctx, &m, why, sizeof(why)) != 0) {
			free(hs);
			on_attempt_failed_ex(r, e, ACKBOX_OUTCOME_INVALID, 0, 0, why, true);
			entry_maybe_free(r, e);
			continue;
		}
		t = calloc(1, sizeof(*t));
		if (!t) {
			free(hs);
			unsend(r, e);
			break;
		}
		m.token = ++r->next_token;
		m.attempt = e->sends + 1;
		t->token = m.token;
		t->e = e;
		t->deadline = now + r->ab->retry_timeout_ms;
		t->probe = e->suspect;
		t->isolated = alone;
		/* register before send(): a synchronous report must find the token */
		if (map_put(&r->tokens, t->token, t) != 0) {
			free(t);
			free(hs);
			unsend(r, e);
			break;
		}
		fifo_append(r, t);
		r->live++;
		if (t->probe)
			r->susp_live++;
		if (t->isolated)
			r->isolated_live = true;
		e->refs++;
		e->cur_token = t->token;
		e->state = E_INFLIGHT;
		rc = r->ops->send(r->tx_ctx, &m);
		free(hs);
		if (rc == ACKBOX_TX_SENT) {
			e->sends++;
			r->lost_alone = false;
			ABX_CRASH_POINT("after_send");
			continue;
		}
		/* did not leave: undo and wait */
		e->refs++;
		tok_drop(r, t);
		e->refs--;
		if (rc == ACKBOX_TX_NOT_CONNECTED && r->lost_alone &&
		    memcmp(&e->id, &r->lost_alone_id, sizeof(e->id)) == 0) {
			/* lost alone, and the connection did go with it: judge it */
			r->lost_alone = false;
			blame_hold(r, e, r->lost_alone_reason, r->lost_alone_code);
			r->blame_dropped = true;
			on_disconnected(r, NULL, 0);
			break;
		}
		unsend(r, e);
		if (rc == ACKBOX_TX_NOT_CONNECTED) {
			/* the connection is gone, and with it the answers to what
			 * was sent on it (the transport's report may follow) */
			on_disconnected(r, NULL, 0);
		}
		break;
	}
}

/* When queued changes are applied without more joining them: APPLY_DELAY_MS
 * after the oldest was queued, or after the last apply, whichever is first
 * (so after a quiet spell at once: waiting would only delay the reports,
 * 2 ms of a 4 ms publish -> ack at 200 msg/s). */
static int64_t apply_due_at(const abx_relay *r)
{
	int64_t since = r->first_change_at < r->last_apply_at ? r->first_change_at : r->last_apply_at;
	return since + APPLY_DELAY_MS;
}

/* Applies queued changes in one transaction, then releases their reports. */
static void apply_changes(abx_relay *r, int64_t now, bool force)
{
	struct ackbox *ab = r->ab;
	char err[256] = "";
	int rc = 0;

	if (r->nchanges) {
		if (now < r->apply_retry_at)
			return;
		/* Confirms trickle in one by one with a small window: gather them
		 * for a moment, so that one store transaction deletes many rows and
		 * the relay spends its time sending (reports wait with them). */
		if (!force && r->nchanges < APPLY_BATCH && now < apply_due_at(r))
			return;
		pthread_mutex_lock(&ab->store_mtx);
		rc = ab->store_ops->apply(ab->store_ctx, r->changes, r->nchanges, err, sizeof(err));
		if (rc < 0)
			pthread_mutex_unlock(&ab->store_mtx);
		r->apply_stuck = rc < 0;
		if (rc < 0) {
			/* keep them and try again: a report must not precede its change */
			abx_log(ab->conf, ACKBOX_LOG_ERROR, "relay",
			        "store rejected %zu state change(s), retrying: %s", r->nchanges, err);
			r->apply_retry_at = now + 200;
			return;
		}
	}
	/* Reports are queued before the store lock is released: whoever sees a
	 * change in the store (ackbox_flush) finds its report already queued.
	 * Lock order: store_mtx, then rep_mtx. */
	if (r->rep_head)
		abx_report_push_list(ab, r->rep_head, r->rep_tail);
	r->rep_head = r->rep_tail = NULL;
	bool applied = r->nchanges > 0;
	if (applied) {
		pthread_mutex_unlock(&ab->store_mtx);
		r->last_apply_at = now;
		for (size_t i = 0; i < r->nchanges; i++)
			free(r->change_texts[i]);
		r->nchanges = 0;
	}
	/* wake ackbox_poll/ackbox_flush only when there is something to see */
	if (r->nreports || applied)
		abx_progress(ab);
	r->nreports = 0;
}

static void take_inbox(abx_relay *r)
{
	abx_fresh *f, *next;
	tx_ev *evs;
	size_t nevs;

	pthread_mutex_lock(&r->in_mtx);
	f = r->fresh_head;
	r->fresh_head = r->fresh_tail = NULL;
	if (r->store_poked) {
		r->store_dirty = true;
		r->store_poked = false;
	}
	pthread_mutex_unlock(&r->in_mtx);
	for (; f; f = next) {
		entry *e;
		next = f->next;
		f->next = NULL;
		e = entry_new(r, f, 0, 0);
		if (!e) {
			/* stays in the store with a lease; claimed again when it expires */
			abx_relay_unreserve(r, 1, f->payload_len);
			abx_fresh_free(f);
			continue;
		}
		e->from_fresh = true;
		ready_push_back(r, e);
	}

	pthread_mutex_lock(&r->ev_mtx);
	evs = r->evs;
	nevs = r->nevs;
	r->evs = r->evs_spare;
	r->cap_evs ^= r->cap_spare;
	r->cap_spare ^= r->cap_evs;
	r->cap_evs ^= r->cap_spare;
	r->evs_spare = evs;
	r->nevs = 0;
	pthread_mutex_unlock(&r->ev_mtx);
	for (size_t i = 0; i < nevs; i++) {
		handle_event(r, &evs[i]);
		free(evs[i].reason);
	}
}

static void try_connect(abx_relay *r, int64_t now)
{
	char err[256] = "";
	int rc = r->ops->connect(r->tx_ctx, (int)r->ab->connect_timeout_ms, err, sizeof(err));
	if (rc == 0) {
		if (r->connect_errors)
			abx_log(r->ab->conf, ACKBOX_LOG_INFO, "relay",
			        "transport reconnected after %d failed attempt(s)", r->connect_errors);
		atomic_store(&r->connected, 1);
		r->connect_failures = 0;
		r->connect_errors = 0;
		r->ever_connected = true;
		r->store_dirty = true;
		on_connected(r, ackbox_mono_ms());
		return;
	}
	/* the broker is not back at once: an outage, not the held message */
	if (r->blame)
		blame_release(r);
	r->connect_failures++;
	r->connect_errors++;
	if (r->connect_errors == 1 || strcmp(err, r->last_connect_error) != 0)
		abx_log(r->ab->conf, ACKBOX_LOG_WARN, "relay",
		        "cannot connect (attempt %d), messages stay stored: %s", r->connect_errors,
		        err);
	snprintf(r->last_connect_error, sizeof(r->last_connect_error), "%s", err);
	r->next_connect_at = ackbox_mono_ms() + backoff_ms(r, r->connect_failures);
	ABX_UNUSED(now);
}

static void wait_for_work(abx_relay *r, int timeout_ms)
{
	if (r->ops->poll && atomic_load(&r->connected)) {
		if (r->ops->poll(r->tx_ctx, timeout_ms) < 0) {
			/* the transport's own DISCONNECTED report carries the reason */
			take_inbox(r);
			if (atomic_load(&r->connected))
				on_disconnected(r, NULL, 0);
		}
		return;
	}
	struct pollfd pfd = {r->wake_fd, POLLIN, 0};
	if (timeout_ms > 0 || timeout_ms < 0)
		poll(&pfd, 1, timeout_ms);
}

/*
 * Changes the store refuses pause new work (reports must follow their
 * changes); otherwise claims keep up to a window of claimed rows ready
 * behind the window in flight, so the broker always has work.
 */
static bool claim_could_run(const abx_relay *r)
{
	return atomic_load(&r->connected) && !r->apply_stuck && r->ready_len < (size_t)r->window &&
	       r->tokens.len + r->ready_len + r->susp_len + r->nback < 2 * (size_t)r->window;
}

static void *relay_main(void *arg)
{
	abx_relay *r = arg;
	struct ackbox *ab = r->ab;

	while (!atomic_load(&r->stop)) {
		int64_t now = ackbox_mono_ms(), wake_at;
		uint64_t drain;
		int timeout;

		atomic_store(&r->wake_pending, 0);
		if (read(r->wake_fd, &drain, sizeof(drain)) < 0 && errno != EAGAIN)
			abx_log(ab->conf, ACKBOX_LOG_ERROR, "relay", "eventfd read: %s", strerror(errno));
		take_inbox(r);
		check_timeouts(r, now);
		if (r->blame && !r->blame_dropped && now >= r->blame_until)
			blame_expire(r); /* lost alone, but no drop seen */
		if (!atomic_load(&r->connected) && now >= r->next_connect_at) {
			try_connect(r, now);
			now = ackbox_mono_ms();
		}
		if (claim_could_run(r) && (r->store_dirty || now >= r->next_claim_at)) {
			/* A claim must see every change made so far: a row acked here
			 * whose delete is still queued would otherwise come back (its
			 * lease may have run out) and be sent and reported again. */
			apply_changes(r, now, true);
			if (r->nchanges == 0)
				claim_due(r, now);
		}
		send_ready(r, now);
		apply_changes(r, now, false);

		/* How long may we sleep? A claim deadline counts only when a claim
		 * could run (an ack that frees room wakes us through the wake fd). */
		bool can_claim = claim_could_run(r);
		wake_at = now + 1000;
		if (can_claim && r->next_claim_at < wake_at)
			wake_at = r->next_claim_at;
		if (r->fifo_head && r->fifo_head->deadline < wake_at)
			wake_at = r->fifo_head->deadline;
		if (!atomic_load(&r->connected) && r->next_connect_at < wake_at)
			wake_at = r->next_connect_at;
		if (r->tokens.len && now + ACK_TICK_MS < wake_at)
			wake_at = now + ACK_TICK_MS; /* collect acks that did not wake us */
		if (r->blame && !r->blame_dropped && r->blame_until < wake_at)
			wake_at = r->blame_until;
		if (r->nchanges) {
			int64_t at = apply_due_at(r);
			if (r->apply_retry_at > at)
				at = r->apply_retry_at;
			if (at < wake_at)
				wake_at = at;
		}
		timeout = wake_at > now ? (int)(wake_at - now) : 0;
		/* More due rows are waiting and there is room: claim again at once.
		 * Messages left in the ready queue with room in the window were
		 * refused BUSY: wait for the transport's I/O, do not spin. */
		if (can_claim && r->store_dirty)
			timeout = 0;
		wait_for_work(r, timeout);
	}
	/* Last acks received still get applied; everything else stays stored. */
	take_inbox(r);
	apply_changes(r, ackbox_mono_ms() + 1000000, true);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* The host side of the transport ABI                                   */
/* ------------------------------------------------------------------ */

void ackbox_tx_report(ackbox_tx_host *host, const ackbox_tx_event *ev)
{
	abx_relay *r;
	if (!host || !ev)
		return;
	r = host->relay;
	pthread_mutex_lock(&r->ev_mtx);
	if (r->nevs == r->cap_evs) {
		size_t ncap = r->cap_evs ? r->cap_evs * 2 : 1024;
		tx_ev *n = realloc(r->evs, ncap * sizeof(*n));
		if (!n) {
			pthread_mutex_unlock(&r->ev_mtx);
			/* dropping a report only delays: the timeout resends it */
			abx_log(r->ab->conf, ACKBOX_LOG_ERROR, "relay", "out of memory for a report");
			return;
		}
		r->evs = n;
		r->cap_evs = ncap;
	}
	tx_ev *e = &r->evs[r->nevs++];
	e->kind = ev->kind;
	e->token = ev->token;
	e->broker_code = ev->broker_code;
	e->retriable = ev->retriable;
	e->reason = ev->reason ? strdup(ev->reason) : NULL;
	bool now = ev->kind != ACKBOX_TX_ACK || r->nevs >= r->ack_wake;
	pthread_mutex_unlock(&r->ev_mtx);
	/* also from the relay thread itself: a transport's poll() that reported
	 * something and then waits on the wake fd must return at once */
	if (now || (r->thread_started && pthread_equal(pthread_self(), r->thread)))
		relay_wake(r);
}

int ackbox_tx_wake_fd(ackbox_tx_host *host)
{
	return host ? host->relay->wake_fd : -1;
}

int ackbox_tx_stopping(ackbox_tx_host *host)
{
	return host ? atomic_load(&host->relay->stop) : 1;
}

void ackbox_tx_log(ackbox_tx_host *host, ackbox_log_level level, const char *fmt, ...)
{
	va_list ap;
	if (!host)
		return;
	va_start(ap, fmt);
	abx_logv(host->relay->ab->conf, level, host->relay->ops->schemes[0], fmt, ap);
	va_end(ap);
}

const ackbox_conf *ackbox_tx_conf(ackbox_tx_host *host)
{
	return host ? host->relay->ab->conf : NULL;
}

/* ------------------------------------------------------------------ */
/* Life cycle and the publisher's side                                  */
/* ------------------------------------------------------------------ */

bool abx_relay_reserve(abx_relay *r, size_t n, size_t bytes)
{
	bool ok;
	struct ackbox *ab = r->ab;
	pthread_mutex_lock(&r->in_mtx);
	ok = r->reserved_msgs + n <= ab->fresh_max_msgs &&
	     r->reserved_bytes + bytes <= ab->fresh_max_bytes;
	if (ok) {
		r->reserved_msgs += n;
		r->reserved_bytes += bytes;
	}
	pthread_mutex_unlock(&r->in_mtx);
	return ok;
}

void abx_relay_unreserve(abx_relay *r, size_t n, size_t bytes)
{
	pthread_mutex_lock(&r->in_mtx);
	r->reserved_msgs = r->reserved_msgs >= n ? r->reserved_msgs - n : 0;
	r->reserved_bytes = r->reserved_bytes >= bytes ? r->reserved_bytes - bytes : 0;
	pthread_mutex_unlock(&r->in_mtx);
}

void abx_relay_push_fresh(abx_relay *r, abx_fresh *head, abx_fresh *tail)
{
	pthread_mutex_lock(&r->in_mtx);
	if (r->fresh_tail)
		r->fresh_tail->next = head;
	else
		r->fresh_head = head;
	r->fresh_tail = tail;
	pthread_mutex_unlock(&r->in_mtx);
	relay_wake(r);
}

void abx_relay_poke(abx_relay *r)
{
	pthread_mutex_lock(&r->in_mtx);
	r->store_poked = true;
	pthread_mutex_unlock(&r->in_mtx);
	relay_wake(r);
}

bool abx_relay_connected(abx_relay *r)
{
	return r && atomic_load(&r->connected);
}

size_t abx_relay_max_message(abx_relay *r)
{
	return r ? r->info.max_message_size : 0;
}

int abx_relay_validate(abx_relay *r, const ackbox_msg *m, char *errstr, size_t errstr_size)
{
	ackbox_tx_msg tm;
	if (!r || !ABX_HAS_SLOT(r->ops, ackbox_transport_ops, validate))
		return 0;
	memset(&tm, 0, sizeof(tm));
	tm.id_str = "00000000-0000-0000-0000-000000000000";
	tm.topic = m->topic;
	tm.key = m->key;
	tm.key_len = m->key_len;
	tm.payload = m->payload;
	tm.payload_len = m->payload_len;
	tm.content_type = m->content_type;
	tm.headers = m->headers;
	tm.header_count = m->header_count;
	return r->ops->validate(r->tx_ctx, &tm, errstr, errstr_size);
}

static void relay_free(abx_relay *r)
{
	abx_fresh *f, *next;
	tok *t, *tn;
	if (!r)
		return;
	for (t = r->fifo_head; t; t = tn) {
		tn = t->next;
		free(t);
	}
	/* entries: reachable through the id map */
	for (size_t i = 0; i < r->by_id.cap; i++) {
		entry *e = r->by_id.vals[i];
		if (e) {
			abx_fresh_free(e->data);
			free(e);
		}
	}
	map_fini(&r->by_id);
	map_fini(&r->tokens);
	poisoned_clear(r);
	free(r->back);
	free(r->retry_at);
	for (f = r->fresh_head; f; f = next) {
		next = f->next;
		abx_fresh_free(f);
	}
	for (size_t i = 0; i < r->nevs; i++)
		free(r->evs[i].reason);
	free(r->evs);
	free(r->evs_spare);
	for (size_t i = 0; i < r->nchanges; i++)
		free(r->change_texts[i]);
	free(r->changes);
	free(r->change_texts);
	for (abx_report_item *it = r->rep_head, *nx; it; it = nx) {
		nx = it->next;
		free(it);
	}
	if (r->wake_fd >= 0)
		close(r->wake_fd);
	pthread_mutex_destroy(&r->in_mtx);
	pthread_mutex_destroy(&r->ev_mtx);
	free(r->tx_ctx);
	free(r);
}

int abx_relay_start(struct ackbox *ab, char *errstr, size_t errstr_size)
{
	const char *url_text = ackbox_conf_get(ab->conf, "transport.url");
	ackbox_url url;
	abx_relay *r;
	int rc;

	rc = ackbox_url_parse(url_text, &url, errstr, errstr_size);
	if (rc)
		return rc;
	r = calloc(1, sizeof(*r));
	if (!r) {
		ackbox_url_fini(&url);
		return ACKBOX_ERR_NOMEM;
	}
	r->ab = ab;
	r->wake_fd = -1;
	pthread_mutex_init(&r->in_mtx, NULL);
	pthread_mutex_init(&r->ev_mtx, NULL);
	r->host.relay = r;
	r->rng = (uint64_t)ackbox_mono_ms() * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)r;
	if (!r->rng)
		r->rng = 1;
	r->ops = abx_transport_find(url.scheme);
	if (!r->ops) {
		rc = abx_scheme_check(0, url.scheme, "transport.url", errstr, errstr_size);
		goto fail;
	}
	r->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (r->wake_fd < 0) {
		ackbox_errstr_set(errstr, errstr_size, "eventfd: %s", strerror(errno));
		rc = ACKBOX_ERR_INTERNAL;
		goto fail;
	}
	r->tx_ctx = calloc(1, r->ops->ctx_size ? r->ops->ctx_size : 1);
	if (!r->tx_ctx) {
		rc = ACKBOX_ERR_NOMEM;
		goto fail;
	}
	rc = r->ops->open(r->tx_ctx, &url, &r->host, &r->info, errstr, errstr_size);
	if (rc) {
		free(r->tx_ctx);
		r->tx_ctx = NULL;
		goto fail;
	}
	ackbox_url_fini(&url);
	r->window = (int)abx_conf_int(ab->conf, "transport.window");
	if (r->window <= 0)
		r->window = r->info.max_inflight > 0 ? r->info.max_inflight : 1000;
	r->ack_wake = (size_t)r->window / 4;
	if (r->ack_wake > ACK_WAKE_MAX)
		r->ack_wake = ACK_WAKE_MAX;
	if (r->ack_wake < 1)
		r->ack_wake = 1;
	r->store_dirty = true; /* recovered rows are due */
	ab->relay = r;

	/* With transport.require_connect the first connection attempt happens
	 * here, on the caller's thread, so that ackbox_new can refuse to start;
	 * otherwise the relay thread makes it at once and ackbox_new never waits
	 * for a broker. */
	if (abx_conf_bool(ab->conf, "transport.require_connect")) {
		char err[256] = "";
		rc = r->ops->connect(r->tx_ctx, (int)ab->connect_timeout_ms, err, sizeof(err));
		if (rc != 0) {
			ackbox_errstr_set(errstr, errstr_size, "transport.url: %s", err);
			r->ops->close(r->tx_ctx);
			ab->relay = NULL;
			relay_free(r);
			return ACKBOX_ERR_TRANSPORT;
		}
		atomic_store(&r->connected, 1);
		r->ever_connected = true;
	}
	if (pthread_create(&r->thread, NULL, relay_main, r) != 0) {
		ackbox_errstr_set(errstr, errstr_size, "cannot start the relay thread");
		r->ops->close(r->tx_ctx);
		ab->relay = NULL;
		relay_free(r);
		return ACKBOX_ERR_INTERNAL;
	}
	r->thread_started = true;
	return 0;

fail:
	ackbox_url_fini(&url);
	relay_free(r);
	return rc;
}

void abx_relay_stop(struct ackbox *ab)
{
	abx_relay *r = ab->relay;
	if (!r)
		return;
	atomic_store(&r->stop, 1);
	relay_wake(r);
	if (r->thread_started)
		pthread_join(r->thread, NULL);
	r->ops->close(r->tx_ctx);
	ab->relay = NULL;
	relay_free(r);
}
