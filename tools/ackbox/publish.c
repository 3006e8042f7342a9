/*
 * publish.c - `ackbox publish`: stores messages (generated, one fixed
 * payload, or the lines of an input), lets the relay publish them and waits
 * until each of its own is acked or FAILED, then prints one summary line.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ackbox/plugin.h> /* ackbox_mono_ms */

#include "cli.h"
#include "publish.h"

#define FAILURES_SHOWN 10 /* FAILED messages named on stderr */
#define TAIL_WAIT_MS 5000 /* reports still to come once the store holds nothing pending */

/* One publish: what it stored and what became of it. */
typedef struct run {
	cli_idset own;  /* stored by this run, not yet acked or FAILED */
	uint64_t published, acked, failed;
	uint64_t other;    /* messages of others finished by this relay (left by a process that died) */
	uint64_t elsewhere; /* ours, finished by another process (or an operator) */
	unsigned failures_shown;
	int64_t last_change_ms; /* when the last report came */
	int64_t stall_ms;
	int64_t start_ms;
	cli_progress pg;
	int ledger_fd;
} run;

/* The publish's settings, checked before anything is opened. */
typedef struct plan {
	uint64_t count, size, batch;
	bool generated, lines;
	char *fixed; /* --payload or --payload-file */
	size_t fixed_len;
	size_t limit; /* message.max_bytes */
} plan;

static void name_failure(run *u, const ackbox_id *idp, const char *topic, const char *what,
                         const char *reason)
{
	char id[ACKBOX_ID_STRLEN];
	if (u->failures_shown < FAILURES_SHOWN) {
		ackbox_id_format(idp, id);
		cli_say("message %s to '%s' %s: %s", id, topic, what, reason);
	} else if (u->failures_shown == FAILURES_SHOWN) {
		cli_say("more messages FAILED (not shown); see 'ackbox list --state failed'");
	}
	if (u->failures_shown <= FAILURES_SHOWN)
		u->failures_shown++;
}

/* Runs on the main thread, from ackbox_poll/ackbox_flush. */
static void on_report(const ackbox_report *r, void *opaque)
{
	run *u = opaque;
	u->last_change_ms = ackbox_mono_ms();
	if (!cli_idset_take(&u->own, &r->id)) {
		u->other++;
		return;
	}
	if (r->state == ACKBOX_MSG_ACKED) {
		u->acked++;
		return;
	}
	u->failed++;
	name_failure(u, &r->id, r->topic, r->state == ACKBOX_MSG_DROPPED ? "DROPPED" : "FAILED",
	             r->reason);
}

static void show_progress(run *u, uint64_t total)
{
	double el = (double)(ackbox_mono_ms() - u->start_ms) / 1000.0;
	if (total)
		cli_progress_show(&u->pg,
		                  "stored %" PRIu64 "/%" PRIu64 ", acked %" PRIu64 ", in flight %zu"
		                  ", %.0f msg/s",
		                  u->published, total, u->acked, u->own.n, cli_rate(u->acked, el));
	else
		cli_progress_show(&u->pg,
		                  "stored %" PRIu64 ", acked %" PRIu64 ", in flight %zu, %.0f msg/s",
		                  u->published, u->acked, u->own.n, cli_rate(u->acked, el));
}

/*
 * Serves reports for at most one slice. Returns false once no message
 * reached a final state for stall_ms: the broker does not confirm.
 */
static bool wait_slice(ackbox *ab, run *u)
{
	ackbox_poll(ab, CLI_WAIT_SLICE_MS);
	return ackbox_mono_ms() - u->last_change_ms < u->stall_ms;
}

/*
 * Stores n messages in one transaction and remembers their ids. Waits
 * first, while CLI_MAX_UNFINISHED of ours are unconfirmed. Returns an exit
 * code, or -1 if it gave up waiting (stalled) or a signal came.
 */
static int store_batch(ackbox *ab, run *u, const ackbox_msg *msgs, size_t n, ackbox_id *ids,
                       uint64_t first_seq)
{
	char err[512];
	int rc;
	while (u->own.n + n > CLI_MAX_UNFINISHED && !cli_stop_signal)
		if (!wait_slice(ab, u))
			return -1;
	if (cli_stop_signal)
		return -1;
	rc = ackbox_publish_batch(ab, msgs, n, ids, err, sizeof(err));
	if (rc) {
		/* the library's text starts "publish: ", as does our prefix */
		cli_say("%s", strncmp(err, "publish: ", 9) == 0 ? err + 9 : err);
		return cli_exit_for(rc);
	}
	u->published += n;
	for (size_t i = 0; i < n; i++) {
		if (!cli_idset_add(&u->own, &ids[i])) {
			cli_say("out of memory tracking message ids (%" PRIu64 " published)",
			        u->published);
			return EXIT_STORE;
		}
	}
	if (u->ledger_fd >= 0) {
		/* written before anything else can happen to this range: a
		 * kill -9 after this line leaves it in the page cache */
		char line[64];
		int len = snprintf(line, sizeof(line), "%" PRIu64 " %" PRIu64 "\n", first_seq,
		                   first_seq + n - 1);
		if (write(u->ledger_fd, line, (size_t)len) != len) {
			cli_say("--ledger: write failed: %s", strerror(errno));
			return EXIT_STORE;
		}
	}
	ackbox_poll(ab, 0);
	return EXIT_ALL_GOOD;
}

/* --count messages, generated or all with the fixed payload. */
static int publish_count(ackbox *ab, run *u, const cli_args *a, const plan *pl)
{
	size_t chunk = pl->batch < 100000 ? (size_t)pl->batch : 100000;
	ackbox_msg *msgs;
	ackbox_id *ids;
	char *buf = NULL;
	uint64_t seq = 1;
	int rc = EXIT_ALL_GOOD;

	if (pl->generated && pl->size * chunk > CLI_PUBLISH_CHUNK_BYTES)
		chunk = pl->size >= CLI_PUBLISH_CHUNK_BYTES
		            ? 1
		            : (size_t)(CLI_PUBLISH_CHUNK_BYTES / pl->size);
	if (chunk > pl->count)
		chunk = (size_t)pl->count;
	msgs = calloc(chunk, sizeof(*msgs));
	ids = calloc(chunk, sizeof(*ids));
	if (pl->generated)
		buf = malloc(chunk * (size_t)pl->size + 1);
	if (!msgs || !ids || (pl->generated && !buf)) {
		cli_say("out of memory");
		rc = EXIT_STORE;
		goto done;
	}
	for (size_t i = 0; i < chunk; i++) {
		msgs[i].topic = a->val[OPT_TOPIC];
		msgs[i].key = a->val[OPT_KEY];
		msgs[i].key_len = a->val[OPT_KEY] ? strlen(a->val[OPT_KEY]) : 0;
		msgs[i].payload = pl->generated ? buf + i * (size_t)pl->size : pl->fixed;
		msgs[i].payload_len = pl->generated ? (size_t)pl->size : pl->fixed_len;
	}
	if (pl->generated)
		memset(buf, 'x', chunk * (size_t)pl->size);
	while (seq <= pl->count && !cli_stop_signal && rc == EXIT_ALL_GOOD) {
		size_t n = pl->count - seq + 1 < chunk ? (size_t)(pl->count - seq + 1) : chunk;
		for (size_t i = 0; pl->generated && i < n; i++) {
			char *p = buf + i * (size_t)pl->size;
			int len = sprintf(p, "%" PRIu64 " ", seq + i);
			memset(p + len, 'x', (size_t)pl->size - (size_t)len);
		}
		rc = store_batch(ab, u, msgs, n, ids, seq);
		seq += n;
		show_progress(u, pl->count);
	}
done:
	free(msgs);
	free(ids);
	free(buf);
	return rc;
}

/*
 * --lines: every line of the input is a message, stored in batches of up to
 * --batch lines and 8 MiB; what a read brings is stored before the next
 * read, so lines typed one by one are sent one by one. Returns an exit
 * code, EXIT_USAGE after a line that is too long (the ones before it are
 * stored), or -1 if it gave up waiting.
 */
static int publish_lines(ackbox *ab, run *u, const cli_args *a, const plan *pl)
{
	size_t chunk = pl->batch < 100000 ? (size_t)pl->batch : 100000, n = 0, bytes = 0;
	ackbox_msg *msgs = calloc(chunk, sizeof(*msgs));
	ackbox_id *ids = calloc(chunk, sizeof(*ids));
	const char *path = a->given[OPT_PAYLOAD_FILE] ? a->val[OPT_PAYLOAD_FILE] : "-";
	cli_lines in;
	int rc;

	if (!msgs || !ids) {
		free(msgs);
		free(ids);
		cli_say("out of memory");
		return EXIT_STORE;
	}
	rc = cli_lines_open(&in, path, pl->limit);
	while (rc == EXIT_ALL_GOOD && !cli_stop_signal) {
		const char *p;
		size_t len;
		int got = cli_lines_next(&in, &p, &len);
		if (got == 1) {
			msgs[n].topic = a->val[OPT_TOPIC];
			msgs[n].key = a->val[OPT_KEY];
			msgs[n].key_len = a->val[OPT_KEY] ? strlen(a->val[OPT_KEY]) : 0;
			msgs[n].payload = p;
			msgs[n].payload_len = len;
			bytes += len;
			if (++n < chunk && bytes < CLI_PUBLISH_CHUNK_BYTES)
				continue;
		}
		/* a full batch, the input needs reading, or it ended: store what is cut */
		if (n) {
			rc = store_batch(ab, u, msgs, n, ids, in.lineno - n + 1);
			n = bytes = 0;
			show_progress(u, 0);
			if (rc)
				break;
		}
		if (got == -1)
			break;
		if (got == -2) {
			cli_say("line %" PRIu64 " of %s is longer than %zu bytes, the limit "
			        "(message.max_bytes): stopped reading; the %" PRIu64
			        " line(s) before it are published",
			        in.lineno + 1, in.name, pl->limit, in.lineno);
			rc = EXIT_USAGE;
		} else if (got == 0 && cli_lines_fill(&in) != 0 && errno != EINTR) {
			cli_say("%s: read error: %s", in.name, strerror(errno));
			rc = EXIT_USAGE;
		}
	}
	cli_lines_close(&in);
	free(msgs);
	free(ids);
	return rc;
}

static void find_leftover(const ackbox_id *id, void *opaque)
{
	ackbox_id **next = opaque;
	*(*next)++ = *id;
}

static int state_of(const ackbox_stored *m, void *opaque)
{
	*(ackbox_state *)opaque = m->state;
	return 0;
}

/*
 * The store holds nothing pending, yet some of ours were never reported
 * here: another process finished them (an operator's fail or purge, or a
 * relay that took them once their lease ran out). The store says which
 * are FAILED; the others are gone.
 */
static void settle_leftovers(ackbox *ab, run *u)
{
	ackbox_id *ids = calloc(u->own.n ? u->own.n : 1, sizeof(*ids)), *next = ids;
	size_t n = u->own.n;
	char err[256];
	if (!ids)
		return;
	cli_idset_each(&u->own, find_leftover, &next);
	for (size_t i = 0; i < n; i++) {
		ackbox_state st = ACKBOX_MSG_SENDING;
		int rc = ackbox_show(ab, &ids[i], state_of, &st, err, sizeof(err));
		if (rc == 0 && st == ACKBOX_MSG_FAILED) {
			u->failed++;
			name_failure(u, &ids[i], "?", "FAILED", "failed by another process");
		} else if (rc == ACKBOX_ERR_NOT_FOUND) {
			u->elsewhere++;
		} else {
			continue;
		}
		cli_idset_take(&u->own, &ids[i]);
	}
	free(ids);
}

/*
 * Waits until every message of ours is acked or FAILED, as long as some
 * make progress. Returns true if it gave up (stalled).
 */
static bool wait_for_own(ackbox *ab, run *u, uint64_t total)
{
	while (u->own.n && !cli_stop_signal) {
		if (!wait_slice(ab, u))
			return true;
		show_progress(u, total);
		if (u->own.n && ackbox_flush(ab, 0) == 0) {
			/* nothing pending in the store: the last reports are
			 * released right after their change */
			int64_t until = ackbox_mono_ms() + TAIL_WAIT_MS;
			while (u->own.n && ackbox_mono_ms() < until && !cli_stop_signal)
				ackbox_poll(ab, 100);
			if (u->own.n)
				settle_leftovers(ab, u);
			return false;
		}
	}
	return false;
}

/*
 * How long publish waits without any message reaching a final state before
 * it gives up: every attempt of one message timing out after the longest
 * backoff, plus a reconnect.
 */
static int64_t stall_bound_ms(const ackbox_conf *conf)
{
	const char *v = ackbox_conf_get(conf, "retry.max_attempts");
	int64_t attempts = v ? strtoll(v, NULL, 10) : 3;
	int64_t per = cli_conf_duration(conf, "retry.timeout") +
	              cli_conf_duration(conf, "retry.backoff.max");
	if (attempts < 1)
		attempts = 1;
	if (attempts > 100)
		attempts = 100;
	return attempts * per + cli_conf_duration(conf, "transport.connect_timeout") + 5000;
}

/* The options alone; nothing is opened. */
static int check_options(const cli_args *a, plan *pl, double *stall_seconds)
{
	pl->count = 1;
	pl->size = 256;
	pl->batch = CLI_PUBLISH_CHUNK;
	pl->lines = a->given[OPT_LINES];
	pl->generated = !a->given[OPT_PAYLOAD] && !a->given[OPT_PAYLOAD_FILE] && !pl->lines;
	if (!a->val[OPT_TOPIC] || !*a->val[OPT_TOPIC])
		return cli_usage_error("--topic T is required");
	if (pl->lines && (a->given[OPT_COUNT] || a->given[OPT_SIZE] || a->given[OPT_PAYLOAD]))
		return cli_usage_error("--lines publishes each input line: it excludes --count, "
		                       "--size and --payload");
	if (a->given[OPT_COUNT] && (!cli_parse_u64(a->val[OPT_COUNT], &pl->count) || !pl->count))
		return cli_usage_error("--count must be a positive integer, got '%s'",
		                       a->val[OPT_COUNT]);
	if (a->given[OPT_PAYLOAD] && a->given[OPT_PAYLOAD_FILE])
		return cli_usage_error("--payload and --payload-file exclude each other");
	if (a->given[OPT_SIZE] && !pl->generated)
		return cli_usage_error("--size applies to generated payloads, not to "
		                       "--payload/--payload-file");
	if (a->given[OPT_BATCH] && (!cli_parse_u64(a->val[OPT_BATCH], &pl->batch) || !pl->batch))
		return cli_usage_error("--batch must be a positive integer, got '%s'",
		                       a->val[OPT_BATCH]);
	if (a->given[OPT_STALL_SECONDS] &&
	    !cli_parse_seconds(a->val[OPT_STALL_SECONDS], stall_seconds))
		return cli_usage_error("--stall-seconds must be a positive number, got '%s'",
		                       a->val[OPT_STALL_SECONDS]);
	if (a->given[OPT_SIZE] && !cli_parse_u64(a->val[OPT_SIZE], &pl->size))
		return cli_usage_error("--size must be a number of bytes, got '%s'", a->val[OPT_SIZE]);
	if (pl->generated) {
		/* every payload must hold its sequence number and a space */
		char digits[24];
		uint64_t need = (uint64_t)snprintf(digits, sizeof(digits), "%" PRIu64, pl->count) + 1;
		if (pl->size < need)
			return cli_usage_error("--size %" PRIu64 " is too small: sequence numbers up to "
			                       "%" PRIu64 " need %" PRIu64 " bytes",
			                       pl->size, pl->count, need);
		if (pl->size > 512ull << 20)
			return cli_usage_error("--size %" PRIu64 " is larger than 512 MiB", pl->size);
	}
	return EXIT_ALL_GOOD;
}

/* The payload limit, and a fixed payload read (and refused) before the
 * store is opened: a refused payload leaves no trace. */
static int load_payload(const cli_args *a, const ackbox_conf *conf, plan *pl)
{
	const char *v = ackbox_conf_get(conf, "message.max_bytes");
	pl->limit = v ? (size_t)strtoull(v, NULL, 10) : 1048576;
	if (pl->generated && pl->size > pl->limit)
		return cli_usage_error("--size %" PRIu64 " is larger than message.max_bytes (%zu)",
		                       pl->size, pl->limit);
	if (a->given[OPT_PAYLOAD]) {
		pl->fixed_len = strlen(a->val[OPT_PAYLOAD]);
		if (pl->fixed_len > pl->limit)
			return cli_usage_error("--payload of %zu bytes is larger than "
			                       "message.max_bytes (%zu)",
			                       pl->fixed_len, pl->limit);
		pl->fixed = strdup(a->val[OPT_PAYLOAD]);
		if (!pl->fixed)
			return EXIT_STORE;
	} else if (a->given[OPT_PAYLOAD_FILE] && !pl->lines) {
		return cli_read_payload(a->val[OPT_PAYLOAD_FILE], pl->limit, &pl->fixed,
		                        &pl->fixed_len);
	}
	return EXIT_ALL_GOOD;
}

static void print_summary(const run *u, int64_t end_ms)
{
	double el = (double)(end_ms - u->start_ms) / 1000.0;
	printf("published=%" PRIu64 " acked=%" PRIu64 " failed=%" PRIu64 " elapsed=%.3f rate=%.0f\n",
	       u->published, u->acked, u->failed, el, cli_rate(u->acked, el));
	fflush(stdout);
}

int cli_publish(cli_args *a)
{
	plan pl;
	run u;
	ackbox_conf *conf = NULL;
	ackbox *ab = NULL;
	double stall_seconds = 0;
	int code, rc;
	bool stalled = false, gave_up = false;

	memset(&pl, 0, sizeof(pl));
	memset(&u, 0, sizeof(u));
	u.ledger_fd = -1;
	code = check_options(a, &pl, &stall_seconds);
	if (code == EXIT_ALL_GOOD)
		code = cli_make_conf(a, true, CLI_STORE_PUBLISH, &conf);
	if (code == EXIT_ALL_GOOD)
		code = load_payload(a, conf, &pl);
	if (code == EXIT_ALL_GOOD && pl.lines && a->given[OPT_PAYLOAD_FILE] &&
	    strcmp(a->val[OPT_PAYLOAD_FILE], "-") != 0 && access(a->val[OPT_PAYLOAD_FILE], R_OK) != 0)
		code = cli_usage_error("--payload-file '%s': %s", a->val[OPT_PAYLOAD_FILE],
		                       strerror(errno));
	if (code == EXIT_ALL_GOOD && a->given[OPT_LEDGER]) {
		u.ledger_fd = open(a->val[OPT_LEDGER], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (u.ledger_fd < 0) {
			cli_say("--ledger '%s': %s", a->val[OPT_LEDGER], strerror(errno));
			code = EXIT_USAGE;
		}
	}
	if (code) {
		ackbox_conf_destroy(conf);
		goto done;
	}
	u.stall_ms = a->given[OPT_STALL_SECONDS] ? (int64_t)(stall_seconds * 1000.0)
	                                          : stall_bound_ms(conf);
	ackbox_conf_set_report_cb(conf, on_report, &u);
	code = cli_open(conf, &ab);
	if (code)
		goto done;

	cli_catch_stop_signals();
	cli_progress_init(&u.pg, pl.lines ? UINT64_MAX : pl.count);
	u.start_ms = u.last_change_ms = ackbox_mono_ms();
	rc = pl.lines ? publish_lines(ab, &u, a, &pl) : publish_count(ab, &u, a, &pl);
	gave_up = rc < 0 && !cli_stop_signal;
	code = rc < 0 ? EXIT_ALL_GOOD : rc;
	/* after a refused line the lines before it still get their confirms */
	if ((code == EXIT_ALL_GOOD && !gave_up) || (code == EXIT_USAGE && pl.lines))
		stalled = wait_for_own(ab, &u, pl.lines ? 0 : pl.count);
	stalled = stalled || gave_up;
	cli_progress_end(&u.pg);

	/* An error before anything was stored is the error line alone. */
	if (code == EXIT_ALL_GOOD || u.published > 0)
		print_summary(&u, ackbox_mono_ms());
	if (u.other)
		cli_say("also finished %" PRIu64 " message(s) left in the store by an earlier run",
		        u.other);
	if (u.elsewhere)
		cli_say("%" PRIu64 " message(s) of this run were finished by another process (acked "
		        "or deleted there; not counted here)",
		        u.elsewhere);
	if (code == EXIT_ALL_GOOD && cli_stop_signal) {
		cli_say("interrupted: %zu unconfirmed message(s) stay in the store for 'ackbox relay'",
		        u.own.n);
	} else if (code == EXIT_ALL_GOOD && stalled) {
		cli_say("%zu message(s) still unconfirmed after %" PRId64
		        " s without progress (broker %s); they stay in the store for 'ackbox relay'%s",
		        u.own.n, u.stall_ms / 1000, ackbox_connected(ab) ? "connected" : "not connected",
		        pl.lines ? "; the rest of the input was not read" : "");
		code = EXIT_TRANSPORT;
	} else if (code == EXIT_ALL_GOOD && u.failed) {
		code = EXIT_SOME_FAILED;
	}
done:
	if (u.ledger_fd >= 0)
		close(u.ledger_fd);
	ackbox_destroy(ab);
	free(pl.fixed);
	cli_idset_free(&u.own);
	cli_die_of_stop_signal();
	return code;
}
