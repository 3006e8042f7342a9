/*
 * status.c - `ackbox status`: counts by state and the age of the oldest
 * pending message; exit 1 when anything is FAILED (a health check).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include <ackbox/plugin.h> /* ackbox_wall_ms */

#include "cli.h"

int cli_status(cli_args *a)
{
	ackbox *ab;
	ackbox_counts c;
	char err[512], when[48], age[32];
	int64_t now;
	int rc = cli_open_admin(a, &ab);
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
			printf(",\"oldest_pending_age_ms\":%" PRId64 "}\n", now - c.oldest_pending_ms);
		else
			printf(",\"oldest_pending_age_ms\":null}\n");
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
	}
	return c.failed ? EXIT_SOME_FAILED : EXIT_ALL_GOOD;
}
