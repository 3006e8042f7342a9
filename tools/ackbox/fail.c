/*
 * fail.c - `ackbox fail`: mark messages FAILED whatever their state, taking
 * them from any relay's lease, so that a stuck one can be handled.
 */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

int cli_fail(cli_args *a)
{
	ackbox *ab;
	ackbox_id *ids = NULL;
	ackbox_state *states = NULL;
	char err[512], idtext[ACKBOX_ID_STRLEN];
	int rc, code, failed = 0;

	if (a->npos == 0)
		return cli_usage_error("give the IDs of the messages to mark FAILED");
	rc = cli_parse_ids(a, &ids);
	if (rc)
		return rc;
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
	for (size_t i = 0; i < a->npos && code == EXIT_ALL_GOOD; i++) {
		rc = ackbox_fail(ab, &ids[i], a->val[OPT_REASON], err, sizeof(err));
		if (rc == ACKBOX_ERR_NOT_FOUND) {
			/* acked or purged since the check: nothing left to fail */
			ackbox_id_format(&ids[i], idtext);
			cli_say("message %s was acked or deleted meanwhile: not marked", idtext);
		} else if (rc < 0) {
			cli_say("%s", err);
			code = cli_exit_for(rc);
		} else {
			failed++;
		}
	}
	if (code == EXIT_ALL_GOOD || failed)
		printf("failed=%d\n", failed);
	ackbox_destroy(ab);
	free(states);
	free(ids);
	return code;
}
