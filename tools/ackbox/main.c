/*
 * main.c - the ackbox command: the table of commands with their help, and
 * the dispatch to the file that implements each (publish.c, relay.c, ...).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

const cli_command cli_commands[CMD_COUNT] = {
    [CMD_PUBLISH] =
        {"publish", cli_publish, 0, false, "store and publish messages, wait for their confirms",
         "ackbox publish --store URL --transport URL --topic T [--count N] [--size BYTES]\n"
         "               [--key K] [--payload TEXT | --payload-file FILE | --lines]\n"
         "               [--ledger FILE] [--batch N] [--stall-seconds S]",
         "Stores messages durably and publishes them; exits when every one is acked or\n"
         "FAILED and prints one line on stdout:\n"
         "  published=N acked=A failed=F elapsed=SECONDS rate=MSGS_PER_S\n"
         "A generated payload is BYTES long and starts with its sequence number 1..N\n"
         "and a space, so a consumer can check that every number arrived. The store is\n"
         "created when the first message is stored. Fails fast (exit 4) if the broker\n"
         "is unreachable at start.\n"
         "\n"
         "  --topic T            queue / routing key / topic (required)\n"
         "  --count N            messages to publish (default 1)\n"
         "  --size BYTES         generated payload size (default 256)\n"
         "  --key K              message key (partition / ordering key)\n"
         "  --payload TEXT       send TEXT as every payload instead\n"
         "  --payload-file FILE  send FILE's bytes as every payload (- for stdin); more\n"
         "                       than message.max_bytes is refused as soon as it is read\n"
         "  --lines              each line of stdin (or of --payload-file) is one\n"
         "                       message, without its newline; read as it comes, in\n"
         "                       bounded memory. A line longer than message.max_bytes\n"
         "                       stops the input (exit 2); the lines before it are sent\n"
         "  --ledger FILE        append \"FIRST LAST\" once each range of sequence (or\n"
         "                       line) numbers is stored (accepted), for crash tests\n"
         "  --batch N            messages per store transaction (default 500; at most\n"
         "                       8 MiB of payload per transaction)\n"
         "  --stall-seconds S    give up waiting (exit 4; the messages stay stored)\n"
         "                       after S seconds in which no message was acked or\n"
         "                       FAILED (default: retry.max_attempts x (retry.timeout\n"
         "                       + retry.backoff.max) + transport.connect_timeout + 5 s)\n"},
    [CMD_RELAY] =
        {"relay", cli_relay, 0, false, "deliver what the store holds (a service)",
         "ackbox relay --store URL --transport URL [--until-empty] [--max-seconds S]\n"
         "             [--metrics-listen HOST:PORT]",
         "Delivers every due message in the store (left by a process that died,\n"
         "written with the transactional entry point, or requeued). Runs until\n"
         "SIGTERM/SIGINT or --max-seconds, then prints one line on stdout:\n"
         "  acked=A failed=F pending=P failed_in_store=FS elapsed=SECONDS rate=MSGS_PER_S\n"
         "and, stopped by a signal, a line on stderr saying how many messages it leaves\n"
         "in the store. The store must exist. Fails fast (exit 4) if the broker is\n"
         "unreachable. Exit 0 when nothing is left pending or FAILED, 4 when messages\n"
         "are still pending (they stay stored for the next relay), 3 when they are\n"
         "pending because the store refuses the relay (a disk full, a damaged file),\n"
         "else 1 when FAILED messages are in the store.\n"
         "\n"
         "  --until-empty        exit once nothing is sending or retrying, or all of it\n"
         "                       waits behind FAILED messages that block their keys\n"
         "                       (delivery.order=key; exit 1)\n"
         "  --max-seconds S      stop after S seconds\n"
         "  --metrics-listen HOST:PORT\n"
         "                       serve GET /metrics (Prometheus text) and GET /healthz\n"
         "                       (200 ok, or 503 and why) on HOST:PORT, an IPv4 address\n"},
    [CMD_STATUS] = {"status", cli_status, 0, false, "counts by state, age of the oldest pending",
                    "ackbox status --store URL [--json | --openmetrics]",
                    "Counts stored messages by state and shows the age of the oldest pending\n"
                    "one, and the keys a FAILED message blocks (delivery.order=key). Exit 1 if\n"
                    "any message is FAILED. Never creates or changes a store.\n"
                    "\n"
                    "  --json               one JSON object instead of text\n"
                    "  --openmetrics        the metrics relay --metrics-listen serves, once\n"
                    "                       (Prometheus text; not with --json)\n"},
    [CMD_LIST] = {"list", cli_list, 0, false, "stored messages with attempts and last error",
                  "ackbox list --store URL [--state sending|retrying|failed] [--limit N] [--json]",
                  "Lists stored messages, oldest first: id, state, attempts, timestamps, topic\n"
                  "and the last error.\n"
                  "\n"
                  "  --state S            only messages in state S\n"
                  "  --limit N            at most N messages (default 100, 0 for all)\n"
                  "  --json               one JSON array instead of a table\n"},
    [CMD_SHOW] = {"show", cli_show, 1, false, "one stored message in full",
                  "ackbox show --store URL ID [--json]",
                  "Shows one stored message in full, headers and payload included.\n"
                  "\n"
                  "  --json               one JSON object instead of text\n"},
    [CMD_REQUEUE] = {"requeue", cli_requeue, -1, false, "move FAILED messages back to RETRYING",
                     "ackbox requeue --store URL (ID... | --all-failed)",
                     "Moves FAILED messages back to RETRYING with attempts reset; a running relay\n"
                     "(or the next `ackbox relay`) sends them. Prints requeued=N.\n"
                     "\n"
                     "  --all-failed         every FAILED message\n"},
    [CMD_FAIL] = {"fail", cli_fail, -1, false,
                  "mark messages FAILED whatever their state (a stuck message)",
                  "ackbox fail --store URL ID... [--reason TEXT]",
                  "Marks messages FAILED whatever their state, SENDING and RETRYING included,\n"
                  "so that a stuck one can be inspected, requeued or purged. Attempts are\n"
                  "kept. A relay sending one can no longer change it (a send already under\n"
                  "way may still reach the broker once). Every ID is checked first: an\n"
                  "unknown one changes nothing (exit 2). Prints failed=N.\n"
                  "\n"
                  "  --reason TEXT        why; the last error becomes\n"
                  "                       \"marked failed by an operator: TEXT\"\n"},
    [CMD_PURGE] = {"purge", cli_purge, -1, false,
                   "delete FAILED messages, or given ones whatever their state",
                   "ackbox purge --store URL (--state failed [--older-than DURATION] | --id ID...)\n"
                   "             [--yes]",
                   "Deletes messages for good: FAILED ones, or the given ones whatever their\n"
                   "state. Asks for confirmation on a terminal; elsewhere --yes is required.\n"
                   "Every ID is checked first: an unknown one deletes nothing (exit 2).\n"
                   "Prints purged=N.\n"
                   "\n"
                   "  --state failed       every FAILED message\n"
                   "  --older-than D       only those last updated more than D ago (30m, 12h, 7d)\n"
                   "  --id ID...           these messages, in any state (repeatable; IDs after\n"
                   "                       it count too). A relay sending one can no longer\n"
                   "                       change it; a send under way may still arrive once\n"
                   "  --yes                do not ask\n"},
    [CMD_BENCH] = {"bench", cli_bench, -1, true,
                   "the benchmark: raw client library against ackbox (ackbox-bench)",
                   "ackbox bench --transport URL [ackbox-bench options]",
                   "Runs the benchmark, ackbox-bench, installed (or built) next to ackbox, with\n"
                   "the arguments as given; its exit code is the benchmark's. `ackbox bench\n"
                   "--help` lists its options; docs/performance.md explains its figures. The\n"
                   "environment variable ACKBOX_BENCH names another binary. Exit 2 if it is\n"
                   "not found.\n"},
};

static void print_usage(FILE *f)
{
	fprintf(f, "usage:\n");
	for (int i = 0; i < CMD_COUNT; i++)
		fprintf(f, "  %s\n", cli_commands[i].synopsis);
	fprintf(f, "  ackbox --help | ackbox COMMAND --help | ackbox --version\n");
}

static void print_help(void)
{
	printf("ackbox %s - store a message durably, publish it, delete it on confirm.\n\n",
	       ackbox_version());
	print_usage(stdout);
	printf("\nCommands:\n");
	for (int i = 0; i < CMD_COUNT; i++)
		printf("  %-9s %s\n", cli_commands[i].name, cli_commands[i].summary);
	printf("\n"
	       "Options of every command but bench: --store URL, --set KEY=VALUE, --help.\n"
	       "  --store URL      sqlite:///abs/path.db, sqlite://rel.db, redis://..., postgres://...\n"
	       "  --transport URL  amqp[s]://user:pass@host:port/vhost, mqtt[s]://..., kafka://...,\n"
	       "                   nats://...\n"
	       "  Either URL may be env:NAME (read from the environment variable NAME) or\n"
	       "  file:PATH (the first line of a file): a password then stays out of ps.\n"
	       "  --set KEY=VALUE  any configuration key (docs/configuration.md), repeatable\n"
	       "\n"
	       "Exit codes: 0 all good, 1 some messages FAILED, 2 usage or configuration error,\n"
	       "3 store error (missing, not an ackbox store, corrupt, locked), 4 transport\n"
	       "unreachable, or messages still unconfirmed at the end (they stay stored).\n"
	       "\n"
	       "See ackbox(1), docs/cli.md and docs/operations.md.\n");
}

static int find_command(const char *name)
{
	for (int i = 0; i < CMD_COUNT; i++)
		if (strcmp(name, cli_commands[i].name) == 0)
			return i;
	return -1;
}

int main(int argc, char **argv)
{
	cli_args a;
	int rc, cmd;

	if (argc < 2) {
		print_usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		bool help_cmd = strcmp(argv[1], "help") == 0;
		if (argc > 3 || (argc > 2 && !help_cmd)) {
			fprintf(stderr, "ackbox: '%s' takes %s; '%s' is one too many (see 'ackbox --help')\n",
			        argv[1], help_cmd ? "one command name" : "nothing after it",
			        argv[help_cmd ? 3 : 2]);
			return EXIT_USAGE;
		}
		if (argc > 2) {
			cmd = find_command(argv[2]);
			if (cmd < 0) {
				fprintf(stderr, "ackbox: unknown command '%s' (see 'ackbox --help')\n",
				        argv[2]);
				return EXIT_USAGE;
			}
			cli_print_cmd_help((cli_cmd)cmd);
			return EXIT_ALL_GOOD;
		}
		print_help();
		return EXIT_ALL_GOOD;
	}
	if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
		if (argc > 2) {
			fprintf(stderr, "ackbox: '%s' takes nothing after it, got '%s'\n", argv[1],
			        argv[2]);
			return EXIT_USAGE;
		}
		printf("ackbox %s\n", ackbox_version());
		return EXIT_ALL_GOOD;
	}
	cmd = find_command(argv[1]);
	if (cmd < 0) {
		fprintf(stderr, "ackbox: unknown command '%s' (see 'ackbox --help')\n", argv[1]);
		return EXIT_USAGE;
	}
	memset(&a, 0, sizeof(a));
	a.cmd = (cli_cmd)cmd;
	cli_set_name(cli_commands[cmd].name);
	a.sets = calloc((size_t)argc, sizeof(*a.sets));
	a.pos = calloc((size_t)argc, sizeof(*a.pos));
	if (!a.sets || !a.pos) {
		fprintf(stderr, "ackbox: out of memory\n");
		free(a.sets);
		free(a.pos);
		return EXIT_STORE;
	}
	rc = cli_parse(argc, argv, &a);
	if (rc < 0)
		rc = cli_commands[cmd].run(&a);
	free(a.sets);
	free(a.pos);
	return rc;
}
