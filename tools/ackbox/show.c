/*
 * show.c - `ackbox show`: one stored message in full, headers and payload
 * included (text when it is UTF-8, a hex dump otherwise; JSON with --json).
 */
#include <stdio.h>

#include <ackbox/plugin.h> /* ackbox_wall_ms */

#include "cli.h"

/* Text from a broker on one line: control bytes, DEL and backslash as \xNN. */
static void print_escaped(const char *t)
{
	for (const unsigned char *p = (const unsigned char *)t; *p; p++) {
		if (*p < 0x20 || *p == 0x7f || *p == '\\')
			printf("\\x%02x", *p);
		else
			putchar(*p);
	}
}

/* One line per attempt, oldest first: time, outcome, code, text. */
static void print_history(const ackbox_stored *m)
{
	char t[48];
	if (!m->history_kept) {
		printf("history       not kept by this store (its store ABI predates it)\n");
		return;
	}
	if (!m->history_count) {
		printf("history       -\n");
		return;
	}
	printf("history       %zu attempt%s, oldest first (the last %d are kept)\n",
	       m->history_count, m->history_count == 1 ? "" : "s", ACKBOX_HISTORY_MAX);
	for (size_t i = 0; i < m->history_count; i++) {
		const ackbox_attempt *a = &m->history[i];
		cli_fmt_time(a->at_ms, true, t, sizeof(t));
		printf("  %s  %-17s code %-5d ", t, ackbox_outcome_name(a->outcome), a->code);
		print_escaped(a->text ? a->text : "");
		putchar('\n');
	}
}

static int show_one(const ackbox_stored *m, void *opaque)
{
	bool json = *(const bool *)opaque;
	char id[ACKBOX_ID_STRLEN], t[48], age[32], buf[4096];
	int64_t now = ackbox_wall_ms();
	if (json) {
		cli_json_message(m, true);
		putchar('\n');
		return 0;
	}
	ackbox_id_format(&m->id, id);
	printf("id            %s\n", id);
	printf("state         %s\n", ackbox_state_name(m->state));
	printf("topic         %s\n", cli_esc(m->topic, buf, sizeof(buf)));
	printf("attempts      %d\n", m->attempts);
	cli_fmt_time(m->created_ms, true, t, sizeof(t));
	cli_fmt_age(now - m->created_ms, age, sizeof(age));
	printf("created       %s (%s ago)\n", t, age);
	cli_fmt_time(m->updated_ms, true, t, sizeof(t));
	printf("updated       %s\n", t);
	cli_fmt_time(m->due_ms, true, t, sizeof(t));
	printf("due           %s\n", m->state == ACKBOX_MSG_FAILED ? "- (failed: waits for requeue)" : t);
	if (m->last_error)
		printf("last error    %s (code %d)\n", cli_esc(m->last_error, buf, sizeof(buf)), m->last_code);
	else
		printf("last error    -\n");
	print_history(m);
	if (m->key && m->key_len) {
		printf("key           ");
		cli_print_bytes_inline(m->key, m->key_len, 256);
	}
	if (m->content_type)
		printf("content type  %s\n", cli_esc(m->content_type, buf, sizeof(buf)));
	for (size_t i = 0; i < m->header_count; i++) {
		printf("header        %s: ", cli_esc(m->headers[i].name, buf, sizeof(buf)));
		cli_print_bytes_inline(m->headers[i].value, m->headers[i].value_len, 256);
	}
	printf("payload       %zu bytes\n", m->payload_len);
	if (m->payload_len)
		cli_print_bytes_human(m->payload, m->payload_len, 65536);
	return 0;
}

int cli_show(cli_args *a)
{
	ackbox *ab;
	ackbox_id id;
	bool json = a->given[OPT_JSON];
	char err[512];
	int rc;

	if (a->npos != 1)
		return cli_usage_error("show needs exactly one message ID");
	if (ackbox_id_parse(a->pos[0], &id) != 0)
		return cli_usage_error("'%s' is not a message id (expected 8-4-4-4-12 hex digits)",
		                       a->pos[0]);
	rc = cli_open_admin(a, &ab);
	if (rc)
		return rc;
	rc = ackbox_show(ab, &id, show_one, &json, err, sizeof(err));
	ackbox_destroy(ab);
	if (rc) {
		cli_say("%s", err);
		return cli_exit_for(rc);
	}
	return EXIT_ALL_GOOD;
}
