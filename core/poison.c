/*
 * poison.c - finding the message that makes the connection drop (see
 * "Poison messages" in docs/architecture.md): what was in flight at a drop
 * becomes a suspect and is resent by probing, one at a time at first; a
 * message lost alone is held until the next connect, which convicts it (the
 * broker is back at once: one attempt burnt) or releases it (an outage).
 * Relay thread only.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay_int.h"

/* e was in flight when the connection died: it is resent by probing. */
void abx_mark_suspect(abx_relay *r, entry *e)
{
	if (!e->suspect) {
		e->suspect = true;
		r->nsuspect++;
	}
	r->probe_win = 1;
}

/* e reached an outcome: it is no longer a suspect. An ack widens the probe
 * window by one (doubling it each round, as TCP's slow start does). */
void abx_suspect_resolved(abx_relay *r, entry *e, bool acked)
{
	if (!e->suspect)
		return;
	assert(r->nsuspect > 0);
	e->suspect = false;
	e->isolate = false;
	r->nsuspect--;
	if (acked && r->probe_win < r->window)
		r->probe_win++;
}

void abx_poisoned_forget(abx_relay *r, const entry *e)
{
	poisoned *p = abx_map_get(&r->poisoned, abx_id_key(&e->id));
	if (p) {
		abx_map_del(&r->poisoned, abx_id_key(&e->id));
		free(p);
	}
}

void abx_poisoned_clear(abx_relay *r)
{
	for (size_t i = 0; i < r->poisoned.cap; i++)
		free(r->poisoned.vals[i]);
	abx_map_fini(&r->poisoned);
}

/*
 * e was sent alone and its attempt was lost (the connection died, or the
 * transport says in doubt). It is held, and nothing else is sent, until we
 * know whether the broker is back at once (then e made it drop the
 * connection: blamed) or not (an outage: e is resent, nothing burnt).
 */
void abx_blame_hold(abx_relay *r, entry *e, const char *why, int code)
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
void abx_blame_release(abx_relay *r)
{
	entry *e = r->blame;
	r->blame = NULL;
	abx_mark_suspect(r, e);
	abx_back_add(r, e);
	e->refs--; /* the hold's; abx_back_add holds it now */
}

/*
 * No drop was seen within BLAME_WAIT_MS of losing e alone. Either the
 * connection stayed up (Kafka's possibly-persisted reports) or the
 * transport reported the attempt lost but not the connection (paho without
 * a DISCONNECTED callback for some closes). e is resent first; if that very
 * send finds the transport not connected, the earlier loss was a drop after
 * all, and e is judged as if it had been seen (see send_ready).
 */
void abx_blame_expire(abx_relay *r)
{
	entry *e = r->blame;
	r->blame = NULL;
	abx_mark_suspect(r, e);
	r->lost_alone = true;
	r->lost_alone_id = e->id;
	r->lost_alone_code = r->blame_code;
	snprintf(r->lost_alone_reason, sizeof(r->lost_alone_reason), "%s", r->blame_reason);
	abx_susp_push_front(r, e);
	e->refs--;
}

/* The broker took a new connection at once after the held message was
 * lost alone: the message made it drop the connection. Burns an attempt;
 * when it comes back from the store it is sent alone again. */
void abx_blame_convict(abx_relay *r)
{
	struct ackbox *ab = r->ab;
	entry *e = r->blame;
	int64_t now = ackbox_mono_ms();
	poisoned *p;
	char idstr[ACKBOX_ID_STRLEN];

	r->blame = NULL;
	e->refs--;
	p = abx_map_get(&r->poisoned, abx_id_key(&e->id));
	if (!p) {
		if (r->poisoned.len >= POISONED_MAX)
			abx_poisoned_clear(r);
		p = calloc(1, sizeof(*p));
		if (p && abx_map_put(&r->poisoned, abx_id_key(&e->id), p) != 0) {
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
	abx_on_attempt_failed(r, e, ACKBOX_OUTCOME_DISCONNECT, r->blame_code, 0, r->blame_reason);
	abx_entry_maybe_free(r, e);
}

/*
 * A live attempt was lost: the connection died before its answer. If the
 * message was sent alone it is held to be judged; otherwise it becomes a
 * suspect, resent by probing.
 */
void abx_on_lost(abx_relay *r, tok *t, const char *why, int code)
{
	entry *e = t->e;
	bool alone = t->isolated;
	e->refs++; /* keep e alive across abx_tok_drop */
	abx_tok_drop(r, t);
	e->refs--;
	atomic_fetch_add_explicit(&r->ab->stats.in_doubt, 1, memory_order_relaxed);
	/* a NOTE of its own: the row does not change (if this one is blamed
	 * later, its history shows both: lost, then judged) */
	abx_attempt_note(r, e, ACKBOX_OUTCOME_IN_DOUBT, code, why, true);
	if (alone && !r->blame) {
		abx_blame_hold(r, e, why, code);
		return;
	}
	abx_mark_suspect(r, e);
	abx_back_add(r, e);
}

/* A claimed row joins the ready queue; one blamed for a dropped connection
 * before goes to the suspect queue, to be sent alone. */
void abx_enqueue_claimed(abx_relay *r, entry *e)
{
	if (abx_map_get(&r->poisoned, abx_id_key(&e->id))) {
		abx_mark_suspect(r, e);
		e->isolate = true;
		abx_back_add(r, e);
		return;
	}
	abx_ready_push_back(r, e);
}

/*
 * The next entry to send, or NULL. While suspects are unresolved only they
 * go, oldest first: at most probe_win at once, and while probe_win is 1 (or
 * for a message blamed before) each alone, after everything else in flight
 * has been answered, so that a dropped connection points at one message.
 */
entry *abx_next_to_send(abx_relay *r, bool *alone)
{
	entry *e;
	*alone = false;
	if (r->blame || r->isolated_live)
		return NULL;
	if (!r->nsuspect)
		return abx_ready_pop(r);
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
	return abx_susp_pop(r);
}
