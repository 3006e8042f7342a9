/*
 * list.c - `ackbox list`: stored messages oldest first, as a table or a
 * JSON array, bounded by --limit.
 */
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

#define LIST_DEFAULT_LIMIT 100

typedef struct list_ctx {
	bool json;
	size_t limit; /* 0: none */
	size_t printed;
	bool more; /* a row beyond the limit exists */
} list_ctx;

static int list_row(const ackbox_stored *m, void *opaque)
{
	list_ctx *p = opaque;
	char id[ACKBOX_ID_STRLEN], created[48], updated[48], topic[1024], error[1024];
	if (p->limit && p->printed == p->limit) {
		p->more = true;
		return 1;
	}
	if (p->json) {
		fputs(p->printed ? ",\n" : "\n", stdout);
		cli_json_message(m, false);
	} else {
		if (p->printed == 0)
			printf("%-36s  %-8s  %8s  %-20s  %-20s  %-16s  %s\n", "ID", "STATE", "ATTEMPTS",
			       "CREATED", "UPDATED", "TOPIC", "LAST ERROR");
		ackbox_id_format(&m->id, id);
		cli_fmt_time(m->created_ms, false, created, sizeof(created));
		cli_fmt_time(m->updated_ms, false, updated, sizeof(updated));
		printf("%-36s  %-8s  %8d  %-20s  %-20s  %-16s  %s\n", id, ackbox_state_name(m->state),
		       m->attempts, created, updated, cli_esc(m->topic, topic, sizeof(topic)),
		       cli_esc(m->last_error, error, sizeof(error)));
	}
	p->printed++;
	return 0;
}

int cli_list(cli_args *a)
{
	ackbox *ab;
	list_ctx p = {a->given[OPT_JSON], LIST_DEFAULT_LIMIT, 0, false};
	uint64_t limit;
	char err[512];
	int state = -1, rc;

	if (a->given[OPT_STATE] && (state = cli_parse_state(a->val[OPT_STATE], false)) < 0)
		return cli_usage_error("--state must be sending, retrying or failed, got '%s'",
		                       a->val[OPT_STATE]);
	if (a->given[OPT_LIMIT]) {
		if (!cli_parse_u64(a->val[OPT_LIMIT], &limit) || limit > SIZE_MAX - 1)
			return cli_usage_error("--limit must be a number (0 for no limit), got '%s'",
			                       a->val[OPT_LIMIT]);
		p.limit = (size_t)limit;
	}
	rc = cli_open_admin(a, &ab);
	if (rc)
		return rc;
	if (p.json)
		putchar('[');
	/* one row more than the limit tells whether there are more */
	rc = ackbox_list(ab, state, p.limit ? p.limit + 1 : 0, list_row, &p, err, sizeof(err));
	ackbox_destroy(ab);
	if (rc < 0) {
		/* the array is left open: a pipeline (| jq) that ignores the exit
		 * code must fail too, not take the rows so far for the whole list */
		if (p.json)
			putchar('\n');
		cli_say("%s", err);
		return cli_exit_for(rc);
	}
	if (p.json)
		puts(p.printed ? "\n]" : "]");
	else if (p.printed == 0)
		printf("no %s messages\n", state < 0 ? "stored" : a->val[OPT_STATE]);
	if (p.more)
		cli_say("showing the first %zu; --limit N (0 for all) shows more", p.limit);
	return EXIT_ALL_GOOD;
}
