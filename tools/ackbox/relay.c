/*
 * relay.c - `ackbox relay`: delivers what a store holds, as a service until
 * SIGTERM/SIGINT (or --max-seconds), or until the store is empty. At the
 * end it says what it leaves in the store, and its exit code says whether
 * anything is left (docs/cli.md).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <ackbox/plugin.h> /* ackbox_mono_ms */

#include "cli.h"

/* FAILED/DROPPED messages named on stderr: at most FAILURES_SHOWN in each
 * FAILURES_WINDOW_MS (a relay runs for days: a broker that refuses a whole
 * backlog must not flood the log with a line per message). */
#define FAILURES_SHOWN 10
#define FAILURES_WINDOW_MS 60000

typedef struct tally {
	uint64_t acked, failed;
	int64_t window_start;
	unsigned shown, hidden; /* in the current window */
} tally;

/* Says how many were left out of the window now ending, if any. */
static void failures_window_end(tally *t)
{
	if (t->hidden)
		cli_say("%u more message(s) FAILED or DROPPED (not shown: at most %d are named "
		        "in %d s); see 'ackbox list --state failed'",
		        t->hidden, FAILURES_SHOWN, FAILURES_WINDOW_MS / 1000);
	t->shown = t->hidden = 0;
}

/* Runs on the main thread, from ackbox_poll/ackbox_flush. */
static void on_report(const ackbox_report *r, void *opaque)
{
	tally *t = opaque;
	char id[ACKBOX_ID_STRLEN];
	if (r->state == ACKBOX_MSG_ACKED) {
		t->acked++;
		return;
	}
	t->failed++;
	int64_t now = ackbox_mono_ms();
	if (now - t->window_start >= FAILURES_WINDOW_MS) {
		failures_window_end(t);
		t->window_start = now;
	}
	if (t->shown == FAILURES_SHOWN) {
		t->hidden++;
		return;
	}
	t->shown++;
	ackbox_id_format(&r->id, id);
	cli_say("message %s to '%s' %s: %s", id, r->topic,
	        r->state == ACKBOX_MSG_DROPPED ? "DROPPED" : "FAILED", r->reason);
}

typedef struct waiting {
	uint64_t msgs, keys;
} waiting;

static int on_blocked(const ackbox_blocked_key *b, void *opaque)
{
	waiting *w = opaque;
	w->msgs += b->waiting;
	w->keys++;
	return 0;
}

/* Is everything still pending waiting behind FAILED messages that block
 * their keys (delivery.order=key)? Then no relay can send it until an
 * operator requeues or purges those: --until-empty has nothing left to wait
 * for. Fills *w. */
static bool all_pending_blocked(ackbox *ab, waiting *w)
{
	ackbox_counts c;
	char err[512];
	uint64_t pending;
	memset(w, 0, sizeof(*w));
	if (ackbox_counts_get(ab, &c, err, sizeof(err)) != 0 || c.failed == 0)
		return false;
	pending = c.sending + c.retrying;
	if (pending == 0 || ackbox_blocked_keys(ab, 0, on_blocked, w, err, sizeof(err)) < 0)
		return false;
	return w->msgs >= pending;
}

/* Relays until a signal, the deadline, or (until_empty) an empty store, or
 * one whose pending messages all wait behind FAILED ones (*blocked filled).
 * Returns an exit code; *empty says the store was found empty. */
static int run_until(ackbox *ab, tally *t, bool until_empty, int64_t deadline,
                     cli_progress *pg, int64_t start, bool *empty, waiting *blocked)
{
	ackbox_counts c;
	char err[512];
	int rc;
	int64_t next_blocked_check = 0;
	for (;;) {
		int64_t now = ackbox_mono_ms();
		int slice = CLI_WAIT_SLICE_MS;
		if (cli_stop_signal || now >= deadline)
			return EXIT_ALL_GOOD;
		if (deadline - now < slice)
			slice = (int)(deadline - now);
		if (until_empty) {
			rc = ackbox_flush(ab, slice);
			if (rc == 0) {
				*empty = true;
				return EXIT_ALL_GOOD;
			}
			/* at most once a second: it reads the store */
			if (rc == ACKBOX_ERR_TIMEOUT && ackbox_mono_ms() >= next_blocked_check) {
				next_blocked_check = ackbox_mono_ms() + 1000;
				if (all_pending_blocked(ab, blocked))
					return EXIT_ALL_GOOD;
			}
		} else {
			rc = ackbox_poll(ab, slice);
			if (rc > 0)
				rc = 0;
		}
		if (rc < 0 && rc != ACKBOX_ERR_TIMEOUT) {
			cli_say("relaying: %s", ackbox_strerror(rc));
			return cli_exit_for(rc);
		}
		if (pg->on && ackbox_counts_get(ab, &c, err, sizeof(err)) == 0) {
			double el = (double)(ackbox_mono_ms() - start) / 1000.0;
			cli_progress_show(pg,
			                  "acked %" PRIu64 ", failed %" PRIu64 ", pending %" PRIu64
			                  ", %.0f msg/s",
			                  t->acked, t->failed, c.sending + c.retrying,
			                  cli_rate(t->acked, el));
		}
	}
}

int cli_relay(cli_args *a)
{
	double max_seconds = 0;
	ackbox_conf *conf;
	ackbox *ab;
	ackbox_counts c0, c1 = {0};
	tally t = {0};
	cli_progress pg;
	char err[512];
	int64_t start, deadline = INT64_MAX;
	int rc, code;
	bool until_empty = a->given[OPT_UNTIL_EMPTY], empty = false, counted = false;
	cli_metrics *metrics = NULL;
	uint64_t pending = 0;
	waiting blocked = {0, 0};

	/* from the start: a service manager may stop it while it opens */
	cli_catch_stop_signals();
	if (a->given[OPT_MAX_SECONDS] && !cli_parse_seconds(a->val[OPT_MAX_SECONDS], &max_seconds))
		return cli_usage_error("--max-seconds must be a positive number, got '%s'",
		                       a->val[OPT_MAX_SECONDS]);
	rc = cli_make_conf(a, true, CLI_STORE_RELAY, &conf);
	if (rc)
		return rc;
	ackbox_conf_set_report_cb(conf, on_report, &t);
	rc = cli_open(conf, &ab);
	if (rc)
		return rc;
	if (ackbox_counts_get(ab, &c0, err, sizeof(err)) != 0) {
		cli_say("%s", err);
		ackbox_destroy(ab);
		return EXIT_STORE;
	}
	if (a->given[OPT_METRICS_LISTEN]) {
		rc = cli_metrics_start(a->val[OPT_METRICS_LISTEN], ab, &metrics);
		if (rc) {
			ackbox_destroy(ab);
			return rc;
		}
	}

	cli_progress_init(&pg, c0.sending + c0.retrying);
	start = ackbox_mono_ms();
	if (max_seconds > 0)
		deadline = start + (int64_t)(max_seconds * 1000.0);
	code = run_until(ab, &t, until_empty, deadline, &pg, start, &empty, &blocked);
	/* Reports are released just after their state change: collect the tail. */
	while (ackbox_poll(ab, empty ? 100 : 0) > 0) {
	}
	cli_progress_end(&pg);
	failures_window_end(&t);
	if (ackbox_counts_get(ab, &c1, err, sizeof(err)) == 0) {
		counted = true;
		pending = c1.sending + c1.retrying;
	} else if (code == EXIT_ALL_GOOD) {
		cli_say("%s", err);
		code = EXIT_STORE;
	}
	{
		double el = (double)(ackbox_mono_ms() - start) / 1000.0;
		printf("acked=%" PRIu64 " failed=%" PRIu64 " pending=%" PRIu64
		       " failed_in_store=%" PRIu64 " elapsed=%.3f rate=%.0f\n",
		       t.acked, t.failed, pending, counted ? c1.failed : 0, el,
		       cli_rate(t.acked, el));
		fflush(stdout);
	}
	/* messages left because the store refuses the relay (a disk full, a
	 * damaged file) are a store error, not a broker's */
	if (code == EXIT_ALL_GOOD && pending &&
	    ackbox_health(ab, err, sizeof(err)) == ACKBOX_ERR_STORE) {
		cli_say("%s", err);
		code = EXIT_STORE;
	}
	if (code == EXIT_ALL_GOOD && cli_stop_signal) {
		const char *sig = cli_stop_signal == SIGINT ? "SIGINT" : "SIGTERM";
		if (pending)
			cli_say("stopped by %s: %" PRIu64 " message(s) left in the store for the next "
			        "relay (%" PRIu64 " sending, %" PRIu64 " retrying); %" PRIu64 " FAILED",
			        sig, pending, c1.sending, c1.retrying, c1.failed);
		else
			cli_say("stopped by %s: nothing pending left in the store; %" PRIu64 " FAILED",
			        sig, c1.failed);
	} else if (code == EXIT_ALL_GOOD && pending && blocked.keys && blocked.msgs >= pending) {
		cli_say("%" PRIu64 " message(s) wait behind FAILED messages that block %" PRIu64
		        " key(s) (delivery.order=key): nothing else is left to send; requeue or purge "
		        "those ('ackbox status' names them)",
		        pending, blocked.keys);
		code = EXIT_SOME_FAILED;
	} else if (code == EXIT_ALL_GOOD && pending && until_empty) {
		cli_say("%" PRIu64 " message(s) still pending after %.3g s (broker %s); they stay in "
		        "the store",
		        pending, max_seconds, ackbox_connected(ab) ? "connected" : "not connected");
	} else if (code == EXIT_ALL_GOOD && pending) {
		cli_say("stopped after %.3g s: %" PRIu64 " message(s) left in the store for the next "
		        "relay",
		        max_seconds, pending);
	}
	if (code == EXIT_ALL_GOOD && pending)
		code = EXIT_TRANSPORT;
	else if (code == EXIT_ALL_GOOD && c1.failed)
		code = EXIT_SOME_FAILED;
	/* what it holds in flight stays stored, and is due for the next relay */
	cli_metrics_stop(metrics); /* no request may use ab past this */
	ackbox_destroy(ab);
	return code;
}
