/*
 * options.c - option handling for every ackbox command in one place: the
 * option table (which command takes which option), parsing argv, checking
 * values, building the configuration and opening the store.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ackbox/plugin.h> /* ackbox_parse_duration_ms */

#include "cli.h"

#define FOR(c) (1u << (c))
#define ALL_CMDS (((1u << CMD_COUNT) - 1) & ~FOR(CMD_BENCH))
#define SENDERS (FOR(CMD_PUBLISH) | FOR(CMD_RELAY))

static const struct option_def {
	const char *name;
	opt_id id;
	bool takes_value;
	unsigned cmds; /* commands that accept it */
} option_defs[] = {
	{"store", OPT_STORE, true, ALL_CMDS},
	{"transport", OPT_TRANSPORT, true, SENDERS},
	{"topic", OPT_TOPIC, true, FOR(CMD_PUBLISH)},
	{"count", OPT_COUNT, true, FOR(CMD_PUBLISH)},
	{"size", OPT_SIZE, true, FOR(CMD_PUBLISH)},
	{"key", OPT_KEY, true, FOR(CMD_PUBLISH)},
	{"payload", OPT_PAYLOAD, true, FOR(CMD_PUBLISH)},
	{"payload-file", OPT_PAYLOAD_FILE, true, FOR(CMD_PUBLISH)},
	{"lines", OPT_LINES, false, FOR(CMD_PUBLISH)},
	{"ledger", OPT_LEDGER, true, FOR(CMD_PUBLISH)},
	{"batch", OPT_BATCH, true, FOR(CMD_PUBLISH)},
	{"stall-seconds", OPT_STALL_SECONDS, true, FOR(CMD_PUBLISH)},
	{"until-empty", OPT_UNTIL_EMPTY, false, FOR(CMD_RELAY)},
	{"max-seconds", OPT_MAX_SECONDS, true, FOR(CMD_RELAY)},
	{"json", OPT_JSON, false, FOR(CMD_STATUS) | FOR(CMD_LIST) | FOR(CMD_SHOW)},
	{"state", OPT_STATE, true, FOR(CMD_LIST) | FOR(CMD_PURGE)},
	{"limit", OPT_LIMIT, true, FOR(CMD_LIST)},
	{"all-failed", OPT_ALL_FAILED, false, FOR(CMD_REQUEUE)},
	{"older-than", OPT_OLDER_THAN, true, FOR(CMD_PURGE)},
	{"reason", OPT_REASON, true, FOR(CMD_FAIL)},
	{"id", OPT_ID, true, FOR(CMD_PURGE)}, /* repeatable; the value joins the IDs */
	{"yes", OPT_YES, false, FOR(CMD_PURGE)},
	{"set", OPT_SET, true, ALL_CMDS}, /* repeatable */
	{"help", OPT_HELP, false, ALL_CMDS},
	{"openmetrics", OPT_OPENMETRICS, false, FOR(CMD_STATUS)},
	{"metrics-listen", OPT_METRICS_LISTEN, true, FOR(CMD_RELAY)},
};

static const char common_help[] =
    "\n"
    "Options of every command:\n"
    "  --store URL          the store, e.g. sqlite:///var/lib/app/outbox.db\n"
    "  --set KEY=VALUE      any configuration key (repeatable), e.g.\n"
    "                       --set retry.max_attempts=5 --set amqp.declare_queue=true\n"
    "  --help               this help\n"
    "\n"
    "Exit codes: 0 all good, 1 some messages FAILED, 2 usage or configuration error,\n"
    "3 store error (missing, not an ackbox store, corrupt, locked), 4 transport\n"
    "unreachable, or messages still unconfirmed at the end (they stay stored).\n"
    "See ackbox(1).\n";

void cli_print_cmd_help(cli_cmd c)
{
	printf("usage: %s\n\n%s", cli_commands[c].synopsis, cli_commands[c].help);
	if (!cli_commands[c].raw)
		fputs(common_help, stdout);
}

static const struct option_def *find_option(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof(option_defs) / sizeof(option_defs[0]); i++)
		if (strlen(option_defs[i].name) == len && strncmp(option_defs[i].name, name, len) == 0)
			return &option_defs[i];
	return NULL;
}

int cli_parse(int argc, char **argv, cli_args *a)
{
	bool only_positional = false;
	if (cli_commands[a->cmd].raw) {
		a->raw_argc = argc - 2;
		a->raw_argv = argv + 2;
		return -1;
	}
	for (int i = 2; i < argc; i++) {
		const char *arg = argv[i], *eq, *value = NULL;
		const struct option_def *o;
		size_t len;

		if (only_positional || arg[0] != '-' || arg[1] == '\0') {
			int max = cli_commands[a->cmd].max_positional;
			if (max >= 0 && a->npos >= (size_t)max)
				return max ? cli_usage_error("unexpected argument '%s'", arg)
				           : cli_usage_error("unexpected argument '%s' (%s takes no "
				                             "arguments)",
				                             arg, cli_commands[a->cmd].name);
			a->pos[a->npos++] = arg;
			continue;
		}
		if (strcmp(arg, "--") == 0) {
			only_positional = true;
			continue;
		}
		if (strcmp(arg, "-h") == 0)
			arg = "--help";
		if (arg[1] != '-')
			return cli_usage_error("unknown option '%s'", arg);
		eq = strchr(arg + 2, '=');
		len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
		o = find_option(arg + 2, len);
		if (!o)
			return cli_usage_error("unknown option '%.*s'", (int)len + 2, arg);
		if (!(o->cmds & FOR(a->cmd)))
			return cli_usage_error("option '--%s' does not apply to %s", o->name,
			                       cli_commands[a->cmd].name);
		if (o->takes_value) {
			if (eq)
				value = eq + 1;
			else if (i + 1 < argc)
				value = argv[++i];
			else
				return cli_usage_error("option '--%s' needs a value", o->name);
		} else if (eq) {
			return cli_usage_error("option '--%s' takes no value", o->name);
		}
		if (o->id == OPT_SET) {
			a->sets[a->nsets++] = value;
		} else if (o->id == OPT_ID) {
			a->pos[a->npos++] = value;
		} else if (a->given[o->id]) {
			return cli_usage_error("option '--%s' given twice", o->name);
		}
		a->given[o->id] = true;
		a->val[o->id] = value;
	}
	if (a->given[OPT_HELP]) {
		cli_print_cmd_help(a->cmd);
		return EXIT_ALL_GOOD;
	}
	return -1;
}

/* ------------------------------------------------------------------ */
/* Values                                                               */
/* ------------------------------------------------------------------ */

bool cli_parse_u64(const char *text, uint64_t *out)
{
	char *end;
	unsigned long long v;
	if (!text || *text < '0' || *text > '9')
		return false;
	errno = 0;
	v = strtoull(text, &end, 10);
	if (errno || *end)
		return false;
	*out = v;
	return true;
}

bool cli_parse_seconds(const char *text, double *out)
{
	char *end;
	double v;
	if (!text || !*text)
		return false;
	errno = 0;
	v = strtod(text, &end);
	if (errno || *end || !(v > 0) || v > 1e9)
		return false;
	*out = v;
	return true;
}

int cli_parse_state(const char *text, bool failed_only)
{
	if (strcmp(text, "failed") == 0)
		return ACKBOX_MSG_FAILED;
	if (failed_only)
		return -1;
	if (strcmp(text, "sending") == 0)
		return ACKBOX_MSG_SENDING;
	if (strcmp(text, "retrying") == 0)
		return ACKBOX_MSG_RETRYING;
	return -1;
}

int cli_parse_ids(const cli_args *a, ackbox_id **out)
{
	ackbox_id *ids = calloc(a->npos ? a->npos : 1, sizeof(*ids));
	*out = NULL;
	if (!ids) {
		cli_say("out of memory");
		return EXIT_STORE;
	}
	for (size_t i = 0; i < a->npos; i++) {
		if (ackbox_id_parse(a->pos[i], &ids[i]) != 0) {
			free(ids);
			return cli_usage_error("'%s' is not a message id (expected 8-4-4-4-12 hex "
			                       "digits)",
			                       a->pos[i]);
		}
	}
	*out = ids;
	return EXIT_ALL_GOOD;
}

int cli_exit_for(int err)
{
	switch (err) {
	case ACKBOX_ERR_TRANSPORT:
		return EXIT_TRANSPORT;
	case ACKBOX_ERR_INVALID:
	case ACKBOX_ERR_UNKNOWN_KEY:
	case ACKBOX_ERR_BAD_VALUE:
	case ACKBOX_ERR_BAD_URL:
	case ACKBOX_ERR_UNKNOWN_SCHEME:
	case ACKBOX_ERR_NOT_BUILT:
	case ACKBOX_ERR_TOO_LARGE:
	case ACKBOX_ERR_NOT_FOUND:
	case ACKBOX_ERR_ABI:
		return EXIT_USAGE;
	default:
		return EXIT_STORE;
	}
}

int64_t cli_conf_duration(const ackbox_conf *conf, const char *key)
{
	int64_t ms = 0;
	const char *v = ackbox_conf_get(conf, key);
	if (v)
		ackbox_parse_duration_ms(v, &ms);
	return ms;
}

/* ------------------------------------------------------------------ */
/* Configuration and opening the store                                  */
/* ------------------------------------------------------------------ */

static bool conf_set(ackbox_conf *conf, const char *key, const char *value)
{
	char err[512];
	if (ackbox_conf_set(conf, key, value, err, sizeof(err)) != 0) {
		cli_say("%s", err);
		return false;
	}
	return true;
}

int cli_make_conf(const cli_args *a, bool with_transport, cli_store_use use,
                  ackbox_conf **out)
{
	/* admin commands and relay never create a store; publish creates it
	 * when it stores its first message, not when it opens */
	static const char *const create[] = {[CLI_STORE_ADMIN] = "never",
	                                     [CLI_STORE_RELAY] = "never",
	                                     [CLI_STORE_PUBLISH] = "insert"};
	ackbox_conf *conf = ackbox_conf_new();
	*out = NULL;
	if (!conf) {
		cli_say("out of memory");
		return EXIT_STORE;
	}
	ackbox_conf_set_log_cb(conf, cli_on_log, NULL);
	/* plugins first: the URLs below may name their schemes */
	for (size_t i = 0; i < a->nsets; i++)
		if (strncmp(a->sets[i], "plugin.load=", 12) == 0 &&
		    !conf_set(conf, "plugin.load", a->sets[i] + 12))
			goto usage;
	if (!conf_set(conf, "store.create", create[use]) ||
	    (a->val[OPT_STORE] && !conf_set(conf, "store.url", a->val[OPT_STORE])) ||
	    (with_transport && a->val[OPT_TRANSPORT] &&
	     (!conf_set(conf, "transport.url", a->val[OPT_TRANSPORT]) ||
	      !conf_set(conf, "transport.require_connect", "true"))))
		goto usage;
	for (size_t i = 0; i < a->nsets; i++) {
		const char *eq = strchr(a->sets[i], '=');
		char key[256];
		if (!eq || eq == a->sets[i] || (size_t)(eq - a->sets[i]) >= sizeof(key)) {
			cli_usage_error("--set needs KEY=VALUE, got '%s'", a->sets[i]);
			goto usage;
		}
		memcpy(key, a->sets[i], (size_t)(eq - a->sets[i]));
		key[eq - a->sets[i]] = '\0';
		if (!with_transport && strncmp(key, "transport.", 10) == 0) {
			cli_usage_error("--set %s: '%s' does not connect to a broker", key,
			                cli_commands[a->cmd].name);
			goto usage;
		}
		if (use != CLI_STORE_PUBLISH && strcmp(key, "store.create") == 0) {
			cli_usage_error("--set %s: '%s' never creates a store", key,
			                cli_commands[a->cmd].name);
			goto usage;
		}
		if (strcmp(key, "plugin.load") == 0)
			continue; /* set first, above */
		if (!conf_set(conf, key, eq + 1))
			goto usage;
	}
	if (!a->val[OPT_STORE] && !ackbox_conf_get(conf, "store.url")) {
		ackbox_conf_destroy(conf);
		return cli_usage_error("--store URL is required");
	}
	if (with_transport && !ackbox_conf_get(conf, "transport.url")) {
		ackbox_conf_destroy(conf);
		return cli_usage_error("--transport URL is required");
	}
	*out = conf;
	return EXIT_ALL_GOOD;
usage:
	ackbox_conf_destroy(conf);
	return EXIT_USAGE;
}

int cli_open(ackbox_conf *conf, ackbox **out)
{
	char err[512];
	int rc = ackbox_new(out, conf, err, sizeof(err));
	if (rc == 0)
		return EXIT_ALL_GOOD;
	ackbox_conf_destroy(conf);
	if (rc == ACKBOX_ERR_TRANSPORT)
		cli_say("broker unreachable: %s", err);
	else
		cli_say("%s", err);
	return cli_exit_for(rc);
}

int cli_open_admin(cli_args *a, ackbox **out)
{
	ackbox_conf *conf;
	int rc = cli_make_conf(a, false, CLI_STORE_ADMIN, &conf);
	if (rc)
		return rc;
	return cli_open(conf, out);
}

static int state_of(const ackbox_stored *m, void *opaque)
{
	*(ackbox_state *)opaque = m->state;
	return 0;
}

int cli_stored_states(ackbox *ab, const ackbox_id *ids, size_t n, ackbox_state *states)
{
	char err[512], idtext[ACKBOX_ID_STRLEN];
	for (size_t i = 0; i < n; i++) {
		int rc = ackbox_show(ab, &ids[i], state_of, &states[i], err, sizeof(err));
		ackbox_id_format(&ids[i], idtext);
		if (rc == ACKBOX_ERR_NOT_FOUND) {
			cli_say("no message %s in the store (acked messages are deleted)", idtext);
			return EXIT_USAGE;
		}
		if (rc) {
			cli_say("%s", err);
			return cli_exit_for(rc);
		}
	}
	return EXIT_ALL_GOOD;
}
