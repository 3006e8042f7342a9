/*
 * machine.h - the one state machine of a stored message, as pure
 * transitions: no I/O, no locks, no memory. The relay asks it what an event
 * does to a message and carries the answer out (store change, report,
 * queue). docs/architecture.md's table of events is this file's contract;
 * tests/unit/test_machine.c checks every row of it.
 */
#ifndef ACKBOX_MACHINE_H
#define ACKBOX_MACHINE_H

#include <stdbool.h>
#include <stdint.h>

#include <ackbox/ackbox.h>
#include <ackbox/store.h>

/* What happened to a message (one attempt of it, or the message). */
typedef enum abx_event {
	ABX_EV_ACK = 1,         /* the broker confirmed it, through any attempt */
	ABX_EV_ATTEMPT_FAILED,  /* nack, unroutable, error, timeout, or a poison verdict */
	ABX_EV_NEVER_SENDABLE,  /* the transport's validate refused it, or its bytes are corrupt */
	ABX_EV_NOT_SENT,        /* never left the process */
	ABX_EV_LOST,            /* in doubt: the connection died before an answer */
	ABX_EV_OPERATOR_FAIL,   /* ackbox_fail() */
	ABX_EV_REQUEUE          /* ackbox_requeue() */
} abx_event;

/* What the relay does about it. */
typedef enum abx_action {
	ABX_DO_NOTHING = 0,  /* the event does not apply in this state */
	ABX_DO_DELETE,       /* delete the row (acked, or dropped by the policy) */
	ABX_DO_RETRY,        /* back to the store as RETRYING, due after a backoff */
	ABX_DO_FAIL,         /* the row becomes FAILED */
	ABX_DO_RESEND,       /* send it again now; the row does not change */
	ABX_DO_REQUEUE       /* FAILED -> RETRYING with attempts 0, due now */
} abx_action;

typedef struct abx_verdict {
	ackbox_state state; /* the message's state afterwards */
	int attempts;       /* its attempt count afterwards */
	abx_action action;
	bool report;        /* a final delivery report is due (ACKED, FAILED, DROPPED) */
} abx_verdict;

/*
 * The transition of a message in state `st` with `attempts` attempts that
 * reached the broker, on event `ev`. `policy` is what the nack policy said
 * (ABX_EV_ATTEMPT_FAILED only; ACKBOX_POLICY_DEFAULT otherwise).
 * ACKED, FAILED and DROPPED are final for every event but those an
 * operator makes (ABX_EV_REQUEUE on FAILED).
 */
abx_verdict abx_machine_step(ackbox_state st, int attempts, abx_event ev, ackbox_policy policy,
                             int max_attempts);

/*
 * The delay before resend (or reconnect) n >= 1: capped exponential backoff
 * with "equal jitter", a value in [b/2, b] with b = min(max, initial *
 * 2^(n-1)), picked by the random word rnd. The lower bound keeps a dead or
 * just-restarted broker from being hammered, and a message from failing in
 * a burst of quick attempts.
 */
int64_t abx_backoff(int64_t initial_ms, int64_t max_ms, int n, uint64_t rnd);

/* The words for an outcome in a FAILED reason ("nacked by the broker"). */
const char *abx_outcome_text(ackbox_outcome oc);

#endif
