/*
 * test_machine.c - the state machine on its own (core/machine.c): every row
 * of docs/architecture.md's table of events, the final states that no late
 * answer changes, the nack policy's answers, and the backoff's bounds.
 */
#include "testutil.h"

#include "machine.h"

enum { MAX = 3 };

static abx_verdict step(ackbox_state st, int attempts, abx_event ev, ackbox_policy pol)
{
	return abx_machine_step(st, attempts, ev, pol, MAX);
}

static void expect(abx_verdict v, ackbox_state st, int attempts, abx_action a, bool report,
                   const char *what)
{
	cr_assert_eq(v.state, st, "%s: state %d, want %d", what, v.state, st);
	cr_assert_eq(v.attempts, attempts, "%s: attempts %d, want %d", what, v.attempts, attempts);
	cr_assert_eq(v.action, a, "%s: action %d, want %d", what, v.action, a);
	cr_assert_eq(v.report, report, "%s: report %d, want %d", what, v.report, report);
}

static const ackbox_state pending[] = {ACKBOX_MSG_SENDING, ACKBOX_MSG_RETRYING};
static const ackbox_state final_states[] = {ACKBOX_MSG_FAILED, ACKBOX_MSG_ACKED,
                                            ACKBOX_MSG_DROPPED};

Test(machine, an_ack_deletes_and_reports_from_any_attempt)
{
	for (int i = 0; i < 2; i++)
		for (int a = 0; a < MAX; a++)
			expect(step(pending[i], a, ABX_EV_ACK, ACKBOX_POLICY_DEFAULT), ACKBOX_MSG_ACKED, a,
			       ABX_DO_DELETE, true, "ack");
}

Test(machine, a_failed_attempt_retries_until_max_attempts_then_fails)
{
	for (int i = 0; i < 2; i++) {
		expect(step(pending[i], 0, ABX_EV_ATTEMPT_FAILED, ACKBOX_POLICY_DEFAULT),
		       ACKBOX_MSG_RETRYING, 1, ABX_DO_RETRY, false, "first failure");
		expect(step(pending[i], MAX - 2, ABX_EV_ATTEMPT_FAILED, ACKBOX_POLICY_DEFAULT),
		       ACKBOX_MSG_RETRYING, MAX - 1, ABX_DO_RETRY, false, "before the last");
		expect(step(pending[i], MAX - 1, ABX_EV_ATTEMPT_FAILED, ACKBOX_POLICY_DEFAULT),
		       ACKBOX_MSG_FAILED, MAX, ABX_DO_FAIL, true, "the last");
	}
}

Test(machine, the_nack_policy_may_retry_fail_or_drop)
{
	/* RETRY is still bounded by max attempts */
	expect(step(ACKBOX_MSG_SENDING, 0, ABX_EV_ATTEMPT_FAILED, ACKBOX_POLICY_RETRY),
	       ACKBOX_MSG_RETRYING, 1, ABX_DO_RETRY, false, "RETRY");
	expect(step(ACKBOX_MSG_RETRYING, MAX - 1, ABX_EV_ATTEMPT_FAILED, ACKBOX_POLICY_RETRY),
	       ACKBOX_MSG_FAILED, MAX, ABX_DO_FAIL, true, "RETRY at the limit");
	expect(step(ACKBOX_MSG_SENDING, 0, ABX_EV_ATTEMPT_FAILED, ACKBOX_POLICY_FAIL),
	       ACKBOX_MSG_FAILED, 1, ABX_DO_FAIL, true, "FAIL");
	expect(step(ACKBOX_MSG_SENDING, 0, ABX_EV_ATTEMPT_FAILED, ACKBOX_POLICY_DROP),
	       ACKBOX_MSG_DROPPED, 1, ABX_DO_DELETE, true, "DROP");
	expect(step(ACKBOX_MSG_SENDING, 0, ABX_EV_NEVER_SENDABLE, ACKBOX_POLICY_DROP),
	       ACKBOX_MSG_DROPPED, 1, ABX_DO_DELETE, true, "DROP of one never sendable");
}

Test(machine, never_sendable_fails_at_once)
{
	expect(step(ACKBOX_MSG_SENDING, 0, ABX_EV_NEVER_SENDABLE, ACKBOX_POLICY_DEFAULT),
	       ACKBOX_MSG_FAILED, 1, ABX_DO_FAIL, true, "invalid or corrupt");
	expect(step(ACKBOX_MSG_SENDING, 0, ABX_EV_NEVER_SENDABLE, ACKBOX_POLICY_RETRY),
	       ACKBOX_MSG_FAILED, 1, ABX_DO_FAIL, true, "RETRY cannot keep one never sendable");
}

Test(machine, not_sent_and_lost_resend_without_burning_an_attempt)
{
	for (int i = 0; i < 2; i++) {
		expect(step(pending[i], 1, ABX_EV_NOT_SENT, ACKBOX_POLICY_DEFAULT), pending[i], 1,
		       ABX_DO_RESEND, false, "not sent");
		expect(step(pending[i], MAX - 1, ABX_EV_LOST, ACKBOX_POLICY_DEFAULT), pending[i],
		       MAX - 1, ABX_DO_RESEND, false, "lost (in doubt)");
	}
}

Test(machine, an_operator_fails_any_pending_message_and_requeues_a_failed_one)
{
	for (int i = 0; i < 2; i++)
		expect(step(pending[i], 1, ABX_EV_OPERATOR_FAIL, ACKBOX_POLICY_DEFAULT),
		       ACKBOX_MSG_FAILED, 1, ABX_DO_FAIL, false, "operator fail");
	expect(step(ACKBOX_MSG_FAILED, MAX, ABX_EV_REQUEUE, ACKBOX_POLICY_DEFAULT),
	       ACKBOX_MSG_RETRYING, 0, ABX_DO_REQUEUE, false, "requeue");
	expect(step(ACKBOX_MSG_SENDING, 1, ABX_EV_REQUEUE, ACKBOX_POLICY_DEFAULT),
	       ACKBOX_MSG_SENDING, 1, ABX_DO_NOTHING, false, "requeue of one not FAILED");
}

Test(machine, final_states_ignore_every_late_event)
{
	const abx_event evs[] = {ABX_EV_ACK,     ABX_EV_ATTEMPT_FAILED, ABX_EV_NEVER_SENDABLE,
	                         ABX_EV_NOT_SENT, ABX_EV_LOST,          ABX_EV_OPERATOR_FAIL};
	for (size_t i = 0; i < sizeof(final_states) / sizeof(final_states[0]); i++)
		for (size_t j = 0; j < sizeof(evs) / sizeof(evs[0]); j++)
			expect(step(final_states[i], 2, evs[j], ACKBOX_POLICY_DEFAULT), final_states[i], 2,
			       ABX_DO_NOTHING, false, "late event on a final state");
}

/* [b/2, b] with b = min(max, initial * 2^(n-1)), for the extremes of the
 * random word and many values between. */
Test(machine, backoff_stays_within_its_jitter_bounds)
{
	const int64_t initial = 1000, max = 30000;
	uint64_t rnd = 0x9e3779b97f4a7c15ULL;
	for (int n = 1; n <= 40; n++) {
		int64_t b = initial;
		for (int i = 1; i < n && b < max; i++)
			b *= 2;
		if (b > max)
			b = max;
		int64_t lo = INT64_MAX, hi = 0;
		for (int k = 0; k < 2000; k++) {
			rnd ^= rnd << 13;
			rnd ^= rnd >> 7;
			rnd ^= rnd << 17;
			uint64_t r = k == 0 ? 0 : k == 1 ? UINT64_MAX : rnd;
			int64_t d = abx_backoff(initial, max, n, r);
			cr_assert_geq(d, b / 2, "n=%d: %lld below b/2 = %lld", n, (long long)d,
			              (long long)(b / 2));
			cr_assert_leq(d, b, "n=%d: %lld above b = %lld", n, (long long)d, (long long)b);
			lo = d < lo ? d : lo;
			hi = d > hi ? d : hi;
		}
		/* it does jitter: the draws spread over most of the range */
		cr_assert_leq(lo, b / 2 + b / 20, "n=%d: lowest draw %lld", n, (long long)lo);
		cr_assert_geq(hi, b - b / 20, "n=%d: highest draw %lld", n, (long long)hi);
	}
	cr_assert_eq(abx_backoff(0, 30000, 3, 12345), 0, "no backoff configured");
	cr_assert_eq(abx_backoff(1000, 30000, 1, 0), 500, "the first step's floor");
}
