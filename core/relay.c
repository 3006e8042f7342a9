/*
 * relay.c - the scheduler: the relay thread's loop. It connects with
 * backoff, takes what publishers and the transport handed over, claims due
 * rows, sends within the window, times out silent attempts, and turns
 * transport events into outcomes (outcome.c, poison.c).
 *
 * Crash safety: the store is the truth. Memory only caches what is being
 * sent; every row stays SENDING/RETRYING until the broker confirms, so a
 * process killed at any point leaves rows that the next open resends.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "relay_int.h"

static uint64_t rng_next(abx_relay *r)
{
	/* xorshift64*: jitter only, not security */
	r->rng ^= r->rng >> 12;
	r->rng ^= r->rng << 25;
	r->rng ^= r->rng >> 27;
	return r->rng * 2685821657736338717ULL;
}

/* The delay before resend or reconnect n (machine.c's abx_backoff). */
int64_t abx_backoff_ms(abx_relay *r, int n)
{
	return abx_backoff(r->ab->backoff_initial_ms, r->ab->backoff_max_ms, n, rng_next(r));
}

/* The wait before the n-th reconnect: the backoff, but never under
 * RECONNECT_MIN_MS (retry.backoff.max=0 made a loop of connects to a broker
 * that is down, a core's worth of CPU). */
#define RECONNECT_MIN_MS 50
#define CONNECT_LOG_EVERY_MS 60000 /* the same connect error is logged again after this */
static int64_t reconnect_wait_ms(abx_relay *r, int n)
{
	int64_t ms = abx_backoff_ms(r, n);
	return ms < RECONNECT_MIN_MS ? RECONNECT_MIN_MS : ms;
}

/* The connection is up (connect() returned 0, or CONNECTED was reported). */
void abx_on_connected(abx_relay *r, int64_t now)
{
	atomic_fetch_add_explicit(&r->ab->stats.connects, 1, memory_order_relaxed);
	atomic_store(&r->ab->stats.state_since_ms, now);
	if (r->blame) {
		if (r->blame_dropped)
			abx_blame_convict(r);
		else
			abx_blame_release(r);
	}
	r->connected_at = now;
	r->unanswered_since = 0;
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
 * without burning an attempt, as a suspect (see abx_on_lost); superseded tokens
 * die with the channel. The reconnect backoff restarts from its first step
 * only after a connection that achieved something: one that dropped at once
 * with nothing answered (a broker closing every connection) backs off
 * further each time instead of reconnecting about once a second.
 */
void abx_on_disconnected(abx_relay *r, const char *why, int code)
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
			abx_on_lost(r, t, why, code);
		else
			abx_tok_drop(r, t);
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
	atomic_fetch_add_explicit(&r->ab->stats.disconnects, 1, memory_order_relaxed);
	atomic_store(&r->ab->stats.state_since_ms, now);
	if (r->answers || r->conn_blamed || now - r->connected_at >= STABLE_CONN_MS)
		r->flaps = 0;
	else
		r->flaps++;
	r->connect_failures = r->flaps;
	r->next_connect_at = now + reconnect_wait_ms(r, ++r->connect_failures);
}

static void handle_event(abx_relay *r, const tx_ev *ev)
{
	tok *t;
	entry *e;

	if (ev->kind == ACKBOX_TX_DISCONNECTED) {
		abx_on_disconnected(r, ev->reason, ev->broker_code);
		return;
	}
	if (ev->kind == ACKBOX_TX_CONNECTED) {
		if (!atomic_load(&r->connected)) {
			abx_log(r->ab->conf, ACKBOX_LOG_INFO, "relay", "transport connected");
			abx_on_connected(r, ackbox_mono_ms());
		}
		atomic_store(&r->connected, 1);
		r->connect_failures = 0;
		r->ever_connected = true;
		return;
	}
	t = abx_map_get(&r->tokens, ev->token);
	if (!t)
		return; /* unknown, or already decided: the first report wins */
	e = t->e;
	if (ev->kind != ACKBOX_TX_IN_DOUBT && ev->kind != ACKBOX_TX_NOT_SENT) {
		r->answers++;
		r->last_answer_at = ackbox_mono_ms();
		r->unanswered_since = 0;
	}
	if (ev->kind == ACKBOX_TX_ACK) {
		e->refs++;
		abx_tok_drop(r, t);
		e->refs--;
		abx_on_acked(r, e);
		abx_entry_maybe_free(r, e);
		return;
	}
	if (t->superseded || e->state != E_INFLIGHT || e->cur_token != t->token) {
		/* the answer to an attempt we already gave up on: only an ack matters */
		abx_tok_drop(r, t);
		return;
	}
	if (ev->kind == ACKBOX_TX_IN_DOUBT) {
		abx_on_lost(r, t, ev->reason, ev->broker_code);
		return;
	}
	e->refs++;
	abx_tok_drop(r, t);
	e->refs--;
	switch (ev->kind) {
	case ACKBOX_TX_NACK:
		abx_on_attempt_failed(r, e, ACKBOX_OUTCOME_NACK, ev->broker_code, ev->retriable,
		                  ev->reason);
		break;
	case ACKBOX_TX_UNROUTABLE:
		abx_on_attempt_failed(r, e, ACKBOX_OUTCOME_UNROUTABLE, ev->broker_code, ev->retriable,
		                  ev->reason);
		break;
	case ACKBOX_TX_ERROR:
		abx_on_attempt_failed(r, e, ACKBOX_OUTCOME_ERROR, ev->broker_code, ev->retriable,
		                  ev->reason);
		break;
	case ACKBOX_TX_NOT_SENT:
	default:
		/* never left: resend (a suspect stays one), attempt not burnt */
		abx_attempt_note(r, e, ACKBOX_OUTCOME_NOT_SENT, ev->broker_code, ev->reason, true);
		abx_back_add(r, e);
		break;
	}
	abx_entry_maybe_free(r, e);
}

/*
 * Whether a confirm overdue for the token sent at sent_at is the
 * connection's fault rather than the message's: the connection has answered
 * nothing at all since (a blackhole, a broker that stopped reading, a
 * RabbitMQ blocking publishers), and has been silent for less than
 * retry.silence_limit, counted from the first send it left unanswered (an
 * idle connection is not a silent one). The transport's own check
 * (heartbeat, keepalive, socket timeout) is expected to notice a dead
 * connection within that limit; past it, a connection that says nothing
 * about one message is judged as if it answered the others.
 */
static bool connection_silent(const abx_relay *r, int64_t sent_at, int64_t now)
{
	return r->last_answer_at < sent_at && r->unanswered_since &&
	       now - r->unanswered_since < r->ab->silence_limit_ms;
}

/* Attempts whose confirm is overdue count as failed, unless the connection
 * was silent (above); superseded tokens that the transport never answered
 * are forgotten after a long grace. */
static void check_timeouts(abx_relay *r, int64_t now)
{
	while (r->fifo_head && r->fifo_head->deadline <= now) {
		tok *t = r->fifo_head;
		entry *e = t->e;
		if (t->superseded) {
			abx_tok_drop(r, t);
			continue;
		}
		/* keep the token (a late confirm still acks), move it to the back
		 * with a zombie deadline so the window is not held forever */
		abx_tok_retire(r, t);
		abx_fifo_remove(r, t);
		t->superseded = true;
		t->deadline = now + 10 * r->ab->retry_timeout_ms;
		abx_fifo_append(r, t);
		if (e->cur_token == t->token)
			e->cur_token = 0;
		if (e->state == E_INFLIGHT && connection_silent(r, t->sent_at, now)) {
			char why[160];
			snprintf(why, sizeof(why),
			         "%lld ms, and the connection has answered nothing for %lld ms: "
			         "not counted (retry.silence_limit %lld ms)",
			         (long long)r->ab->retry_timeout_ms,
			         (long long)(now - r->unanswered_since),
			         (long long)r->ab->silence_limit_ms);
			abx_on_silent_timeout(r, e, why);
		} else if (e->state == E_INFLIGHT) {
			char why[64];
			snprintf(why, sizeof(why), "%lld ms", (long long)r->ab->retry_timeout_ms);
			abx_on_attempt_failed(r, e, ACKBOX_OUTCOME_TIMEOUT, 0, 1, why);
		}
	}
}

/* Records a claimed row (taken by take_claimed once the claim succeeded). */
static int claim_cb(const ackbox_store_row *row, void *opaque)
{
	abx_relay *r = opaque;
	entry *e = abx_map_get(&r->by_id, abx_id_key(&row->id));
	struct abx_claimed *c;

	if (r->nclaimed == r->cap_claimed) {
		size_t ncap = r->cap_claimed ? 2 * r->cap_claimed : 256;
		struct abx_claimed *n = realloc(r->claimed, ncap * sizeof(*n));
		if (!n)
			return 1; /* stop here: the rest stay due */
		r->claimed = n;
		r->cap_claimed = ncap;
	}
	c = &r->claimed[r->nclaimed];
	c->id = row->id;
	c->attempts = row->attempts;
	c->lease = row->lease;
	c->data = NULL;
	if (!(e && memcmp(&e->id, &row->id, sizeof(row->id)) == 0 && e->state != E_WAITING)) {
		c->data = abx_fresh_from_row(row);
		if (!c->data)
			return 1;
	}
	r->nclaimed++;
	return 0;
}

/* The claim that recorded r->claimed succeeded: queue its rows. */
static void take_claimed(abx_relay *r)
{
	for (size_t i = 0; i < r->nclaimed; i++) {
		struct abx_claimed *c = &r->claimed[i];
		entry *e = abx_map_get(&r->by_id, abx_id_key(&c->id));
		if (e && memcmp(&e->id, &c->id, sizeof(c->id)) == 0) {
			/* the claim renewed our lease: later changes must carry the
			 * new one, or a fencing store skips them and the row is sent
			 * again */
			e->lease = c->lease;
			if (e->state != E_WAITING || !c->data) {
				abx_fresh_free(c->data); /* already queued or in flight here */
				continue;
			}
			e->data = c->data;
			e->attempts = c->attempts;
		} else {
			e = abx_entry_new(r, c->data, c->attempts, c->lease);
			if (!e) {
				/* out of memory: the row stays leased to us and comes
				 * back when the lease runs out (a duplicate at worst) */
				abx_fresh_free(c->data);
				continue;
			}
		}
		if (abx_order_admit(r, e))
			abx_enqueue_claimed(r, e);
	}
	r->nclaimed = 0;
}

/* The claim that recorded r->claimed failed: its rows stay in the store. */
static void drop_claimed(abx_relay *r)
{
	for (size_t i = 0; i < r->nclaimed; i++)
		abx_fresh_free(r->claimed[i].data);
	r->nclaimed = 0;
}

static void claim_due(abx_relay *r, int64_t now)
{
	struct ackbox *ab = r->ab;
	char err[256] = "";
	int n;
	size_t busy = r->tokens.len + r->ready_len + r->susp_len + r->nback + r->nparked;
	size_t room = busy < 2 * (size_t)r->window ? 2 * (size_t)r->window - busy : 0;
	if (room == 0)
		return;
	if (room > 1024)
		room = 1024;
	abx_store_lock(ab);
	n = ab->store_ops->claim(ab->store_ctx, ackbox_wall_ms(),
	                         ackbox_wall_ms() + ab->retry_timeout_ms, room, claim_cb, r, err,
	                         sizeof(err));
	abx_store_unlock(ab);
	if (n < 0)
		drop_claimed(r);
	else
		take_claimed(r);
	atomic_store(&ab->stats.claim_stuck, n < 0);
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
	 * abx_on_attempt_failed): every retry due by then was claimable */
	abx_heap_pop_until(&r->retry_at, now);
	r->next_claim_at = now + ab->store_poll_ms;
	if (r->retry_at.n && abx_heap_top(&r->retry_at) < r->next_claim_at) {
		r->next_claim_at = abx_heap_top(&r->retry_at);
		if (r->next_claim_at < now + RETRY_CLAIM_GAP_MS)
			r->next_claim_at = now + RETRY_CLAIM_GAP_MS;
	}
}

/* Puts an entry that was not sent back at the head of its queue. */
static void unsend(abx_relay *r, entry *e)
{
	if (e->suspect)
		abx_susp_push_front(r, e);
	else
		abx_ready_push_front(r, e);
}

static void send_ready(abx_relay *r, int64_t now)
{
	entry *e;
	bool alone;
	abx_back_flush(r);
	while (atomic_load(&r->connected) && (int)r->tokens.len < r->window &&
	       (e = abx_next_to_send(r, &alone)) != NULL) {
		ackbox_tx_msg m;
		ackbox_header *hs = NULL;
		size_t nh = 0;
		char idstr[ACKBOX_ID_STRLEN], why[300];
		tok *t;
		int rc;

		if (ackbox_headers_decode(e->data->headers, e->data->headers_len, &hs, &nh) != 0) {
			/* bytes the store handed back do not parse: fail it for an operator */
			abx_on_attempt_failed_ex(r, e, ACKBOX_OUTCOME_ERROR, 0, 0,
			                     "stored headers are corrupt", true);
			abx_entry_maybe_free(r, e);
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
			abx_on_attempt_failed_ex(r, e, ACKBOX_OUTCOME_INVALID, 0, 0, why, true);
			abx_entry_maybe_free(r, e);
			continue;
		}
		t = abx_tok_alloc(r);
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
		t->sent_at = now;
		if (!r->unanswered_since)
			r->unanswered_since = now;
		t->probe = e->suspect;
		t->isolated = alone;
		/* register before send(): a synchronous report must find the token */
		if (abx_map_put(&r->tokens, t->token, t) != 0) {
			free(t);
			free(hs);
			unsend(r, e);
			break;
		}
		abx_fifo_append(r, t);
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
			abx_stats_sent(&r->ab->stats, m.topic);
			r->lost_alone = false;
			ABX_CRASH_POINT("after_send");
			continue;
		}
		/* did not leave: undo and wait */
		e->refs++;
		abx_tok_drop(r, t);
		e->refs--;
		if (rc == ACKBOX_TX_NOT_CONNECTED && r->lost_alone &&
		    memcmp(&e->id, &r->lost_alone_id, sizeof(e->id)) == 0) {
			/* lost alone, and the connection did go with it: judge it */
			r->lost_alone = false;
			abx_blame_hold(r, e, r->lost_alone_reason, r->lost_alone_code);
			r->blame_dropped = true;
			abx_on_disconnected(r, NULL, 0);
			break;
		}
		unsend(r, e);
		if (rc == ACKBOX_TX_NOT_CONNECTED) {
			/* the connection is gone, and with it the answers to what
			 * was sent on it (the transport's report may follow) */
			abx_on_disconnected(r, NULL, 0);
		}
		break;
	}
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
		e = abx_entry_new(r, f, 0, 0);
		if (!e) {
			/* stays in the store with a lease; claimed again when it expires */
			abx_relay_unreserve(r, 1, f->payload_len);
			abx_fresh_free(f);
			continue;
		}
		e->from_fresh = true;
		abx_ready_push_back(r, e);
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
	abx_release_acks(r);
}

static void try_connect(abx_relay *r, int64_t now)
{
	char err[512] = "";
	int rc = r->ops->connect(r->tx_ctx, (int)r->ab->connect_timeout_ms, err, sizeof(err));
	bool first = r->first_wanted;
	if (first) {
		/* ackbox_new waits for this one (transport.require_connect) and
		 * reports a failure itself */
		r->first_wanted = false;
		abx_relay_first_connect(r, rc, err);
		if (rc != 0) {
			r->next_connect_at = INT64_MAX; /* ackbox_new stops the relay */
			return;
		}
	}
	if (rc == 0) {
		if (r->connect_errors)
			abx_log(r->ab->conf, ACKBOX_LOG_INFO, "relay",
			        "transport reconnected after %d failed attempt(s)", r->connect_errors);
		atomic_store(&r->connected, 1);
		r->connect_failures = 0;
		r->connect_errors = 0;
		r->ever_connected = true;
		r->store_dirty = true;
		abx_on_connected(r, ackbox_mono_ms());
		return;
	}
	/* the broker is not back at once: an outage, not the held message */
	if (r->blame)
		abx_blame_release(r);
	r->connect_failures++;
	r->connect_errors++;
	/* a new cause at once; the same one again every minute, so that a log
	 * read later still says why nothing goes out */
	if (r->connect_errors == 1 || strcmp(err, r->last_connect_error) != 0 ||
	    now >= r->next_connect_log_at) {
		abx_log(r->ab->conf, ACKBOX_LOG_WARN, "relay",
		        "cannot connect (attempt %d), messages stay stored: %s", r->connect_errors,
		        err);
		r->next_connect_log_at = now + CONNECT_LOG_EVERY_MS;
	}
	snprintf(r->last_connect_error, sizeof(r->last_connect_error), "%s", err);
	r->next_connect_at = ackbox_mono_ms() + reconnect_wait_ms(r, r->connect_failures);
}

static void wait_for_work(abx_relay *r, int timeout_ms)
{
	if (r->ops->poll && atomic_load(&r->connected)) {
		if (r->ops->poll(r->tx_ctx, timeout_ms) < 0) {
			/* the transport's own DISCONNECTED report carries the reason */
			take_inbox(r);
			if (atomic_load(&r->connected))
				abx_on_disconnected(r, NULL, 0);
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
	       r->tokens.len + r->ready_len + r->susp_len + r->nback + r->nparked <
	           2 * (size_t)r->window;
}

/* The relay's counters agree with each other (assert()s: debug builds). */
static void check_invariants(const abx_relay *r)
{
	assert(r->live <= r->tokens.len);
	assert(r->susp_live <= r->live);
	assert(!r->isolated_live || r->live == 1);
	assert(r->nsuspect >= r->susp_len + r->susp_live);
	assert(r->nsuspect == 0 || r->probe_win >= 1);
	assert(!r->blame || r->blame->state == E_HELD);
	(void)r;
}

void *abx_relay_main(void *arg)
{
	abx_relay *r = arg;
	struct ackbox *ab = r->ab;

	abx_relay_thread_enter(r);
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
			abx_blame_expire(r); /* lost alone, but no drop seen */
		if (!atomic_load(&r->connected) && now >= r->next_connect_at) {
			try_connect(r, now);
			now = ackbox_mono_ms();
		}
		if (claim_could_run(r) && (r->store_dirty || now >= r->next_claim_at)) {
			/* A claim must see every change made so far: a row acked here
			 * whose delete is still queued would otherwise come back (its
			 * lease may have run out) and be sent and reported again. */
			abx_apply_changes(r, now, true);
			if (r->nchanges == 0)
				claim_due(r, now);
		}
		send_ready(r, now);
		abx_apply_changes(r, now, false);

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
			int64_t at = abx_apply_due_at(r);
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
		check_invariants(r);
		wait_for_work(r, timeout);
	}
	/* Last acks received still get applied; everything else stays stored. */
	take_inbox(r);
	abx_apply_changes(r, ackbox_mono_ms() + 1000000, true);
	return NULL;
}
