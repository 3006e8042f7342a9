/*
 * machine.c - the state machine's transitions (see machine.h). Every rule
 * that decides a message's state is here and nowhere else.
 */
#include "machine.h"

static abx_verdict v(ackbox_state st, int attempts, abx_action a, bool report)
{
	abx_verdict r = {st, attempts, a, report};
	return r;
}

abx_verdict abx_machine_step(ackbox_state st, int attempts, abx_event ev, ackbox_policy policy,
                             int max_attempts)
{
	bool pending = st == ACKBOX_MSG_SENDING || st == ACKBOX_MSG_RETRYING;

	if (ev == ABX_EV_REQUEUE)
		return st == ACKBOX_MSG_FAILED ? v(ACKBOX_MSG_RETRYING, 0, ABX_DO_REQUEUE, false)
		                               : v(st, attempts, ABX_DO_NOTHING, false);
	if (!pending)
		return v(st, attempts, ABX_DO_NOTHING, false); /* final: a late answer changes nothing */

	switch (ev) {
	case ABX_EV_ACK:
		return v(ACKBOX_MSG_ACKED, attempts, ABX_DO_DELETE, true);
	case ABX_EV_NOT_SENT:
	case ABX_EV_LOST:
		/* attempts count only what reached the broker and was answered;
		 * a lost one is judged by the poison rules before it comes here
		 * as ABX_EV_ATTEMPT_FAILED */
		return v(st, attempts, ABX_DO_RESEND, false);
	case ABX_EV_OPERATOR_FAIL:
		return v(ACKBOX_MSG_FAILED, attempts, ABX_DO_FAIL, false);
	case ABX_EV_ATTEMPT_FAILED:
	case ABX_EV_NEVER_SENDABLE:
		attempts++;
		if (policy == ACKBOX_POLICY_DROP)
			return v(ACKBOX_MSG_DROPPED, attempts, ABX_DO_DELETE, true);
		if (ev == ABX_EV_NEVER_SENDABLE || policy == ACKBOX_POLICY_FAIL ||
		    attempts >= max_attempts)
			return v(ACKBOX_MSG_FAILED, attempts, ABX_DO_FAIL, true);
		return v(ACKBOX_MSG_RETRYING, attempts, ABX_DO_RETRY, false);
	case ABX_EV_REQUEUE:
		break;
	}
	return v(st, attempts, ABX_DO_NOTHING, false);
}

int64_t abx_backoff(int64_t initial_ms, int64_t max_ms, int n, uint64_t rnd)
{
	int64_t base = initial_ms;
	for (int i = 1; i < n && base < max_ms; i++)
		base *= 2;
	if (base > max_ms)
		base = max_ms;
	if (base <= 0)
		return 0;
	return base / 2 + (int64_t)(rnd % (uint64_t)(base / 2 + 1));
}

const char *abx_outcome_text(ackbox_outcome oc)
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
	case ACKBOX_OUTCOME_NOT_SENT: return "never left the process";
	case ACKBOX_OUTCOME_NONE: break;
	}
	return "";
}
