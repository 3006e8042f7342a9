/*
 * status.c - `ackbox status`: counts by state, the age of the oldest
 * pending message and the keys a FAILED message blocks (delivery.order=key);
 * exit 1 when anything is FAILED (a health check).
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include <ackbox/plugin.h> /* ackbox_wall_ms */

#include "cli.h"

#define BLOCKED_SHOWN 10

/* The keys a FAILED message blocks (docs/ordering.md): their count, and the
 * first BLOCKED_SHOWN of them kept for printing. */
typedef struct blocked {
	int64_t n;
	struct {
		char key[80]; /* printable, or hex */
		char id[ACKBOX_ID_STRLEN];
		uint64_t waiting;
	} shown[BLOCKED_SHOWN];
} blocked;

/* A key as text when it is printable ASCII, else in hex; "..." if cut. */
static void key_text(const unsigned char *k, size_t len, char *out, size_t size)
{
	bool printable = true;
	size_t o = 0, i = 0;
	for (size_t j = 0; j < len; j++)
		printable = printable && k[j] >= 0x20 && k[j] < 0x7f;
	/* room kept for "..." or " (hex)" and the NUL */
	for (; i < len && o + (printable ? 1 : 2) + 10 < size; i++)
		o += (size_t)snprintf(out + o, size - o, printable ? "%c" : "%02x", k[i]);
	snprintf(out + o, size - o, "%s%s", i < len ? "..." : "", printable ? "" : " (hex)");
}

static int on_blocked(const ackbox_blocked_key *b, void *opaque)
{
	blocked *bl = opaque;
	if (bl->n < BLOCKED_SHOWN) {
		key_text(b->key, b->key_len, bl->shown[bl->n].key, sizeof(bl->shown[bl->n].key));
		ackbox_id_format(&b->failed_id, bl->shown[bl->n].id);
		bl->shown[bl->n].waiting = b->waiting;
	}
	bl->n++;
	return 0;
}

int cli_status(cli_args *a)
{
	ackbox *ab;
	ackbox_counts c;
	char err[512], when[48], age[32];
	int64_t now;
	blocked bl;
	int brc, rc;
	if (a->given[OPT_OPENMETRICS] && a->given[OPT_JSON])
		return cli_usage_error("--openmetrics and --json: one output format at a time");
	rc = cli_open_admin(a, &ab);
	if (rc)
		return rc;
	if (a->given[OPT_OPENMETRICS]) {
		/* what relay --metrics-listen serves, once; counters are this
		 * handle's (zero), the store's counts are everyone's */
		char *text = NULL;
		size_t len = 0;
		rc = ackbox_metrics_text(ab, &text, &len, err, sizeof(err));
		ackbox_destroy(ab);
		if (rc) {
			free(text);
			cli_say("%s", err);
			return cli_exit_for(rc);
		}
		fwrite(text, 1, len, stdout);
		free(text);
		return EXIT_ALL_GOOD;
	}
	rc = ackbox_counts_get(ab, &c, err, sizeof(err));
	/* -1: a store that cannot keep per-key order (none to report) */
	bl.n = -1;
	if (rc == 0 && c.failed) {
		bl.n = 0;
		brc = ackbox_blocked_keys(ab, 0, on_blocked, &bl, err, sizeof(err));
		if (brc == ACKBOX_ERR_INVALID)
			bl.n = -1;
		else if (brc < 0)
			rc = brc;
	}
	ackbox_destroy(ab);
	if (rc) {
		cli_say("%s", err);
		return cli_exit_for(rc);
	}
	now = ackbox_wall_ms();
	if (a->given[OPT_JSON]) {
		printf("{\"sending\":%" PRIu64 ",\"retrying\":%" PRIu64 ",\"failed\":%" PRIu64
		       ",\"pending\":%" PRIu64 ",",
		       c.sending, c.retrying, c.failed, c.sending + c.retrying);
		cli_json_time_fields("oldest_pending", c.oldest_pending_ms);
		if (c.oldest_pending_ms > 0)
			printf(",\"oldest_pending_age_ms\":%" PRId64, now - c.oldest_pending_ms);
		else
			printf(",\"oldest_pending_age_ms\":null");
		printf(",\"blocked_keys\":%" PRId64 "}\n", bl.n > 0 ? bl.n : 0);
	} else {
		printf("sending         %" PRIu64 "\n", c.sending);
		printf("retrying        %" PRIu64 "\n", c.retrying);
		printf("failed          %" PRIu64 "\n", c.failed);
		if (c.oldest_pending_ms > 0) {
			cli_fmt_time(c.oldest_pending_ms, false, when, sizeof(when));
			cli_fmt_age(now - c.oldest_pending_ms, age, sizeof(age));
			printf("oldest pending  %s ago (created %s)\n", age, when);
		} else {
			printf("oldest pending  -\n");
		}
		if (bl.n > 0) {
			printf("blocked keys    %" PRId64 " (delivery.order=key: each waits for its FAILED "
			       "message to be requeued or purged)\n",
			       bl.n);
			for (int64_t i = 0; i < bl.n && i < BLOCKED_SHOWN; i++)
				printf("  key %s  held by %s, %" PRIu64 " waiting\n", bl.shown[i].key,
				       bl.shown[i].id, bl.shown[i].waiting);
			if (bl.n > BLOCKED_SHOWN)
				printf("  ... and %" PRId64 " more\n", bl.n - BLOCKED_SHOWN);
		}
	}
	return c.failed ? EXIT_SOME_FAILED : EXIT_ALL_GOOD;
}
