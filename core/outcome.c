/*
 * outcome.c - what an outcome does to a message: the state machine's
 * verdict (machine.c) carried out as a store change and a delivery report.
 * Changes are gathered and applied in one store transaction; a report is
 * released only after its change is applied. Relay thread only.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay_int.h"

/* Queues a store change; text (may be NULL) is copied. */
void abx_change_add(abx_relay *r, ackbox_change_kind kind, const entry *e, int64_t due_ms,
                       const char *text, int code)
{
	if (r->nchanges == r->cap_changes) {
		size_t ncap = r->cap_changes ? r->cap_changes * 2 : 256;
		ackbox_store_change *nc = realloc(r->changes, ncap * sizeof(*nc));
		char **nt = nc ? realloc(r->change_texts, ncap * sizeof(*nt)) : NULL;
		ackbox_attempt *nn = nt ? realloc(r->notes, ncap * sizeof(*nn)) : NULL;
		if (nc)
			r->changes = nc;
		if (nt)
			r->change_texts = nt;
		if (!nc || !nt || !nn) {
			/* Out of memory: drop the change. The row stays pending in the
			 * store and is resent later: a duplicate, never a loss. */
			abx_log(r->ab->conf, ACKBOX_LOG_ERROR, "relay", "out of memory queueing a change");
			return;
		}
		r->notes = nn;
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
	memset(&r->notes[r->nchanges], 0, sizeof(r->notes[0]));
	r->nchanges++;
}

/* The first ACKBOX_HISTORY_TEXT_MAX bytes of text, not cutting a UTF-8
 * sequence in two. */
static char *note_text(const char *text)
{
	size_t n = text ? strlen(text) : 0;
	char *out;
	if (n > ACKBOX_HISTORY_TEXT_MAX) {
		n = ACKBOX_HISTORY_TEXT_MAX;
		while (n > 0 && ((unsigned char)text[n] & 0xC0) == 0x80)
			n--;
	}
	out = malloc(n + 1);
	if (out) {
		if (n)
			memcpy(out, text, n);
		out[n] = '\0';
	}
	return out;
}

void abx_attempt_note(abx_relay *r, entry *e, ackbox_outcome oc, int code, const char *text,
                      bool own_change)
{
	ackbox_attempt *a;
	e->last_oc = oc;
	e->last_at = ackbox_wall_ms();
	if (!r->history)
		return;
	if (own_change)
		abx_change_add(r, ACKBOX_CHANGE_NOTE, e, 0, NULL, 0);
	/* the change just queued is e's (abx_change_add may have failed: then none) */
	if (r->nchanges == 0 || memcmp(&r->changes[r->nchanges - 1].id, &e->id, sizeof(e->id)) != 0 ||
	    r->changes[r->nchanges - 1].kind == ACKBOX_CHANGE_DELETE)
		return;
	a = &r->notes[r->nchanges - 1];
	a->at_ms = e->last_at;
	a->outcome = oc;
	a->code = code;
	a->text = note_text(text); /* NULL if out of memory: the store writes "" */
}

/* Frees the queued changes' texts and forgets the changes. */
static void changes_clear(abx_relay *r)
{
	for (size_t i = 0; i < r->nchanges; i++) {
		free(r->change_texts[i]);
		free((char *)r->notes[i].text);
	}
	r->nchanges = 0;
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
	rep.struct_size = sizeof(rep);
	rep.last_outcome = e->last_oc;
	rep.last_attempt_ms = e->last_at;
	return rep;
}

/* Queues a final report, delivered after the matching change is applied. */
void abx_report_add(abx_relay *r, const entry *e, ackbox_state st, ackbox_outcome oc,
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
	/*
	 * An ACKED report does not wait for its delete to be applied: the
	 * broker has the message, and a crash before the delete only sends it
	 * again (a duplicate, reported again by the next process). It leaves
	 * with the batch of events that brought it (abx_release_acks), so the
	 * application hears of a confirm without the delete batching's delay.
	 * FAILED and DROPPED reports still follow their change: whoever reads
	 * the store after such a report finds the state it says.
	 */
	if (st == ACKBOX_MSG_ACKED) {
		if (r->ack_tail)
			r->ack_tail->next = it;
		else
			r->ack_head = it;
		r->ack_tail = it;
		return;
	}
	if (r->rep_tail)
		r->rep_tail->next = it;
	else
		r->rep_head = it;
	r->rep_tail = it;
	r->nreports++;
}

void abx_release_acks(abx_relay *r)
{
	if (!r->ack_head)
		return;
	abx_report_push_list(r->ab, r->ack_head, r->ack_tail);
	r->ack_head = r->ack_tail = NULL;
	abx_progress(r->ab);
}

/* The broker confirmed e (through any of its attempts): delete, report once. */
void abx_on_acked(abx_relay *r, entry *e)
{
	if (e->state == E_DONE)
		return; /* a second confirm for a message already acked */
	ABX_CRASH_POINT("after_confirm");
	atomic_fetch_add_explicit(&r->ab->stats.acked, 1, memory_order_relaxed);
	/* from the id's time (when publish made it) to now, wall clock */
	abx_hist_add(&r->ab->stats.ack, (ackbox_wall_ms() - ackbox_id_time_ms(&e->id)) * 1000, 1);
	abx_change_add(r, ACKBOX_CHANGE_DELETE, e, 0, NULL, 0);
	abx_report_add(r, e, ACKBOX_MSG_ACKED, ACKBOX_OUTCOME_NONE, 0, 0, "");
	if (e->state == E_READY) {
		/* queued for a resend: take it out */
		abx_queue_unlink(r, e);
	} else if (e->state == E_PARKED) {
		abx_order_unpark(r, e);
	} else if (e->state == E_HELD) {
		/* an earlier attempt's confirm clears the suspect being judged */
		r->blame = NULL;
		e->refs--;
	}
	/* E_REQUEUE: abx_back_flush() lets it go */
	abx_suspect_resolved(r, e, true);
	abx_poisoned_forget(r, e);
	abx_entry_drop_data(r, e);
	e->state = E_DONE;
	if (r->ab->ordered) {
		/* the key's next message becomes claimable once the delete is
		 * applied: claim again soon, not at the next poll interval */
		r->store_dirty = true;
		abx_order_release(r, e);
	}
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
 * An attempt that reached the broker failed. Asks the nack policy, then
 * carries out the state machine's verdict: RETRYING (back to the store
 * with a backoff), FAILED, or dropped. With fail_now (a message that can
 * never be sent) the verdict is FAILED whatever the count, unless the
 * policy drops it.
 */
/*
 * e waits delay ms, then a claim takes it again: a RETRY change (the row's
 * due time, reason and code) and the attempt's note. The row's due time is
 * wall clock, claims are scheduled on the monotonic one, both truncated to
 * ms. Reading wall before mono here, mono before wall in the claim, and
 * claiming 1 ms later makes a claim at `at` or after always find the row due.
 */
static void retry_later(abx_relay *r, entry *e, int64_t delay, ackbox_outcome oc, int code,
                        const char *reason, const char *why)
{
	int64_t due = ackbox_wall_ms() + delay;
	int64_t at = ackbox_mono_ms() + delay + 1;
	abx_change_add(r, ACKBOX_CHANGE_RETRY, e, due, reason, code);
	abx_attempt_note(r, e, oc, code, why, false);
	e->state = E_WAITING;
	if (abx_heap_push(&r->retry_at, at) != 0)
		abx_log(r->ab->conf, ACKBOX_LOG_ERROR, "relay",
		        "out of memory for a retry time: claimed at the next poll");
	if (r->next_claim_at > at)
		r->next_claim_at = at;
}

void abx_on_attempt_failed_ex(abx_relay *r, entry *e, ackbox_outcome oc, int code, int retriable,
                              const char *why, bool fail_now)
{
	struct ackbox *ab = r->ab;
	char reason[768];
	ackbox_policy pol = ACKBOX_POLICY_DEFAULT;
	abx_verdict v;

	assert(e->state == E_INFLIGHT || e->state == E_READY);
	abx_suspect_resolved(r, e, false);
	snprintf(reason, sizeof(reason), "%s%s%s", abx_outcome_text(oc), why && *why ? ": " : "",
	         why ? why : "");
	if (ab->conf->nack_cb) {
		ackbox_report rep = report_of(e, ACKBOX_MSG_RETRYING, oc, code, retriable, reason);
		rep.attempts = e->attempts + 1; /* counts this one */
		pol = ab->conf->nack_cb(&rep, ab->conf->nack_opaque);
	}
	v = abx_machine_step(ACKBOX_MSG_SENDING, e->attempts,
	                     fail_now ? ABX_EV_NEVER_SENDABLE : ABX_EV_ATTEMPT_FAILED, pol,
	                     ab->max_attempts);
	e->attempts = v.attempts;
	abx_entry_drop_data(r, e);
	if (v.action == ABX_DO_DELETE) {
		atomic_fetch_add_explicit(&ab->stats.dropped, 1, memory_order_relaxed);
		abx_poisoned_forget(r, e);
		abx_change_add(r, ACKBOX_CHANGE_DELETE, e, 0, NULL, 0);
		abx_attempt_note(r, e, oc, code, why, false); /* a DELETE: counters only */
		abx_report_add(r, e, ACKBOX_MSG_DROPPED, oc, code, retriable, reason);
		e->state = E_DONE;
	} else if (v.action == ABX_DO_FAIL) {
		char full[800];
		atomic_fetch_add_explicit(&ab->stats.failed, 1, memory_order_relaxed);
		abx_poisoned_forget(r, e);
		snprintf(full, sizeof(full), "%s (after %d attempt%s)", reason, e->attempts,
		         e->attempts == 1 ? "" : "s");
		abx_change_add(r, ACKBOX_CHANGE_FAIL, e, 0, full, code);
		abx_attempt_note(r, e, oc, code, why, false);
		abx_report_add(r, e, ACKBOX_MSG_FAILED, oc, code, retriable, full);
		log_failed(r, e, full);
		e->state = E_DONE;
	} else {
		assert(v.action == ABX_DO_RETRY);
		atomic_fetch_add_explicit(&ab->stats.retried, 1, memory_order_relaxed);
		retry_later(r, e, abx_backoff_ms(r, e->attempts), oc, code, reason, why);
	}
	if (r->ab->ordered) {
		r->store_dirty |= v.action == ABX_DO_DELETE; /* a dropped one frees its key */
		abx_order_release(r, e);
	}
}

void abx_on_attempt_failed(abx_relay *r, entry *e, ackbox_outcome oc, int code, int retriable,
                              const char *why)
{
	abx_on_attempt_failed_ex(r, e, oc, code, retriable, why, false);
}

/*
 * As a retry (a RETRY change with a backoff, the row RETRYING), but the
 * attempt is not counted: the machine's LOST event, the message in doubt.
 * Not a suspect either: the connection, not the message, said nothing.
 */
void abx_on_silent_timeout(abx_relay *r, entry *e, const char *why)
{
	struct ackbox *ab = r->ab;
	char reason[768];
	abx_verdict v = abx_machine_step(ACKBOX_MSG_SENDING, e->attempts, ABX_EV_LOST,
	                                 ACKBOX_POLICY_DEFAULT, ab->max_attempts);

	assert(e->state == E_INFLIGHT && v.action == ABX_DO_RESEND && v.attempts == e->attempts);
	(void)v;
	abx_suspect_resolved(r, e, false);
	snprintf(reason, sizeof(reason), "%s: %s", abx_outcome_text(ACKBOX_OUTCOME_TIMEOUT), why);
	atomic_fetch_add_explicit(&ab->stats.in_doubt, 1, memory_order_relaxed);
	abx_entry_drop_data(r, e);
	retry_later(r, e, abx_backoff_ms(r, e->attempts + 1), ACKBOX_OUTCOME_TIMEOUT, 0, reason, why);
	if (ab->ordered)
		abx_order_release(r, e);
}

/* When queued changes are applied without more joining them: APPLY_DELAY_MS
 * after the oldest was queued, or after the last apply, whichever is first
 * (so after a quiet spell at once: waiting would only delay the reports,
 * 2 ms of a 4 ms publish -> ack at 200 msg/s). */
int64_t abx_apply_due_at(const abx_relay *r)
{
	int64_t since = r->first_change_at < r->last_apply_at ? r->first_change_at : r->last_apply_at;
	return since + APPLY_DELAY_MS;
}

/*
 * Applies queued changes in one transaction, then releases their reports.
 * Reports are queued before the store lock is released: whoever sees a
 * change in the store (ackbox_flush) finds its report already queued.
 * Lock order: store_mtx, then rep_mtx.
 */
void abx_apply_changes(abx_relay *r, int64_t now, bool force)
{
	struct ackbox *ab = r->ab;
	char err[256] = "";
	bool applied = false;
	int rc;

	if (r->nchanges) {
		if (now < r->apply_retry_at)
			return;
		/* Confirms trickle in one by one with a small window: gather them
		 * for a moment, so that one store transaction deletes many rows and
		 * the relay spends its time sending (reports wait with them). */
		if (!force && r->nchanges < APPLY_BATCH && now < abx_apply_due_at(r))
			return;
		abx_store_lock(ab);
		/* the notes go in the same transaction as their changes */
		if (r->history)
			rc = ab->store_ops->apply_noted(ab->store_ctx, r->changes, r->notes, r->nchanges,
			                                err, sizeof(err));
		else
			rc = ab->store_ops->apply(ab->store_ctx, r->changes, r->nchanges, err,
			                          sizeof(err));
		if (rc >= 0 && r->rep_head)
			abx_report_push_list(ab, r->rep_head, r->rep_tail);
		abx_store_unlock(ab);
		r->apply_stuck = rc < 0;
		atomic_store(&ab->stats.store_stuck, rc < 0);
		if (rc < 0) {
			/* keep them and try again: a report must not precede its change */
			abx_log(ab->conf, ACKBOX_LOG_ERROR, "relay",
			        "store rejected %zu state change(s), retrying: %s", r->nchanges, err);
			r->apply_retry_at = now + 200;
			return;
		}
		applied = true;
		r->last_apply_at = now;
		changes_clear(r);
	} else if (r->rep_head) {
		abx_report_push_list(ab, r->rep_head, r->rep_tail);
	}
	r->rep_head = r->rep_tail = NULL;
	/* wake ackbox_poll/ackbox_flush only when there is something to see */
	if (r->nreports || applied)
		abx_progress(ab);
	r->nreports = 0;
}
