/*
 * requeue.c - `ackbox requeue`: FAILED messages back to RETRYING with
 * attempts reset, by id (all checked first) or --all-failed.
 */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

int cli_requeue(cli_args *a)
{
	ackbox *ab;
	ackbox_id *ids = NULL;
	ackbox_state *states = NULL;
	char err[512], idtext[ACKBOX_ID_STRLEN];
	int rc, code;

	if (a->given[OPT_ALL_FAILED] == (a->npos > 0))
		return cli_usage_error("give message IDs or --all-failed (not both)");
	rc = cli_parse_ids(a, &ids);
	if (rc)
		return rc;
	states = calloc(a->npos ? a->npos : 1, sizeof(*states));
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
		if (states[i] != ACKBOX_MSG_FAILED) {
			ackbox_id_format(&ids[i], idtext);
			cli_say("message %s is %s, not failed: only FAILED messages can be requeued "
			        "(ackbox fail marks a stuck one FAILED)",
			        idtext, ackbox_state_name(states[i]));
			code = EXIT_USAGE;
		}
	}
	if (code == EXIT_ALL_GOOD) {
		rc = ackbox_requeue(ab, ids, a->npos, err, sizeof(err));
		if (rc < 0) {
			cli_say("%s", err);
			code = cli_exit_for(rc);
		} else {
			printf("requeued=%d\n", rc);
		}
	}
	ackbox_destroy(ab);
	free(states);
	free(ids);
	return code;
}
