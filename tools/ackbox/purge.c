/*
 * purge.c - `ackbox purge`: delete FAILED messages (optionally only old
 * ones), or given messages whatever their state; asks on a terminal.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ackbox/plugin.h> /* ackbox_parse_duration_ms, ackbox_wall_ms */

#include "cli.h"

typedef struct purge_count {
	int64_t before_ms;
	uint64_t n;
} purge_count;

static int count_purgeable(const ackbox_stored *m, void *opaque)
{
	purge_count *pc = opaque;
	if (m->updated_ms < pc->before_ms)
		pc->n++;
	return 0;
}

/* Reads the answer to a question already on stderr: true for y or yes. */
static bool answered_yes(void)
{
	char answer[32];
	fflush(stderr);
	return fgets(answer, sizeof(answer), stdin) &&
	       (strcmp(answer, "y\n") == 0 || strcmp(answer, "yes\n") == 0 ||
	        strcmp(answer, "Y\n") == 0);
}

static int refuse_without_yes(void)
{
	return cli_usage_error("purge deletes messages for good: pass --yes to confirm (stdin is "
	                       "not a terminal)");
}

/* purge --id: the given messages, whatever their state. */
static int purge_ids(cli_args *a, bool interactive)
{
	ackbox *ab;
	ackbox_id *ids = NULL;
	ackbox_state *states = NULL;
	uint64_t per[3] = {0, 0, 0};
	char err[512];
	int rc, code;

	rc = cli_parse_ids(a, &ids);
	if (rc)
		return rc;
	if (interactive && !isatty(STDIN_FILENO)) {
		free(ids);
		return refuse_without_yes();
	}
	states = calloc(a->npos, sizeof(*states));
	if (!states) {
		free(ids);
		cli_say("out of memory");
		return EXIT_STORE;
	}
	rc = cli_open_admin(a, &ab);
	if (rc) {
		free(states);
		free(ids);
		return rc;
	}
	code = cli_stored_states(ab, ids, a->npos, states);
	if (code == EXIT_ALL_GOOD && interactive) {
		for (size_t i = 0; i < a->npos; i++)
			if (states[i] <= ACKBOX_MSG_FAILED)
				per[states[i]]++;
		fprintf(stderr,
		        "Delete %zu message(s) (%" PRIu64 " sending, %" PRIu64 " retrying, %" PRIu64
		        " failed) for good? [y/N] ",
		        a->npos, per[ACKBOX_MSG_SENDING], per[ACKBOX_MSG_RETRYING],
		        per[ACKBOX_MSG_FAILED]);
		if (!answered_yes()) {
			cli_say("nothing purged");
			goto done;
		}
	}
	if (code == EXIT_ALL_GOOD) {
		/* ids acked since the check are skipped: purged=N counts the others */
		rc = ackbox_purge_ids(ab, ids, a->npos, err, sizeof(err));
		if (rc < 0) {
			cli_say("%s", err);
			code = cli_exit_for(rc);
		} else {
			printf("purged=%d\n", rc);
		}
	}
done:
	ackbox_destroy(ab);
	free(states);
	free(ids);
	return code;
}

int cli_purge(cli_args *a)
{
	ackbox *ab;
	int64_t older_ms = 0;
	purge_count pc = {INT64_MAX, 0};
	char err[512];
	int rc, code = EXIT_ALL_GOOD;
	bool interactive = !a->given[OPT_YES];

	if (a->given[OPT_ID]) {
		if (a->given[OPT_STATE] || a->given[OPT_OLDER_THAN])
			return cli_usage_error("--id names the messages: it excludes --state and "
			                       "--older-than");
		return purge_ids(a, interactive);
	}
	if (a->npos)
		return cli_usage_error("unexpected argument '%s' (message IDs go after --id)",
		                       a->pos[0]);
	if (!a->given[OPT_STATE])
		return cli_usage_error("--state failed or --id ID... is required");
	if (cli_parse_state(a->val[OPT_STATE], true) < 0)
		return cli_usage_error("--state: only FAILED messages are purged by state (--state "
		                       "failed; --id deletes given ones in any state), got '%s'",
		                       a->val[OPT_STATE]);
	if (a->given[OPT_OLDER_THAN]) {
		const char *v = a->val[OPT_OLDER_THAN];
		size_t l = strlen(v);
		/* a bare number would be milliseconds: too easy to get wrong here */
		if (l == 0 || (v[l - 1] >= '0' && v[l - 1] <= '9') ||
		    ackbox_parse_duration_ms(v, &older_ms) != 0)
			return cli_usage_error("--older-than needs a duration with a unit (e.g. 30m, "
			                       "12h, 7d), got '%s'",
			                       v);
		pc.before_ms = ackbox_wall_ms() - older_ms;
	}
	if (interactive && !isatty(STDIN_FILENO))
		return refuse_without_yes();
	rc = cli_open_admin(a, &ab);
	if (rc)
		return rc;
	if (interactive) {
		rc = ackbox_list(ab, ACKBOX_MSG_FAILED, 0, count_purgeable, &pc, err, sizeof(err));
		if (rc < 0) {
			cli_say("%s", err);
			code = cli_exit_for(rc);
			goto done;
		}
		if (pc.n == 0) {
			printf("purged=0\n");
			goto done;
		}
		fprintf(stderr, "Delete %" PRIu64 " FAILED message(s)%s%s%s for good? [y/N] ", pc.n,
		        a->given[OPT_OLDER_THAN] ? " last updated more than " : "",
		        a->given[OPT_OLDER_THAN] ? a->val[OPT_OLDER_THAN] : "",
		        a->given[OPT_OLDER_THAN] ? " ago" : "");
		if (!answered_yes()) {
			cli_say("nothing purged");
			goto done;
		}
	}
	rc = ackbox_purge_failed(ab, pc.before_ms, err, sizeof(err));
	if (rc < 0) {
		cli_say("%s", err);
		code = cli_exit_for(rc);
		goto done;
	}
	printf("purged=%d\n", rc);
done:
	ackbox_destroy(ab);
	return code;
}
