/*
 * cli.h - what the files of the `ackbox` command share: exit codes, the
 * parsed command line, option handling (options.c), messages and output
 * formats (output.c), signals, and one entry point per command.
 * Only the public API is used; docs/cli.md and ackbox(1) are the user's guide.
 */
#ifndef ACKBOX_CLI_H
#define ACKBOX_CLI_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ackbox/ackbox.h>

/* Exit codes: part of the CLI's contract (--help, docs/cli.md, ackbox.1). */
enum {
	EXIT_ALL_GOOD = 0,
	EXIT_SOME_FAILED = 1, /* FAILED messages (this run, or left in the store) */
	EXIT_USAGE = 2,       /* bad option, value, URL, configuration key or input */
	EXIT_STORE = 3,       /* store missing, foreign, corrupt, locked, unwritable */
	EXIT_TRANSPORT = 4    /* broker unreachable, or messages still unconfirmed at the end */
};

#define CLI_PUBLISH_CHUNK 500              /* messages per ackbox_publish_batch (--batch) */
#define CLI_PUBLISH_CHUNK_BYTES (8u << 20) /* and at most this many payload bytes */
#define CLI_PROGRESS_MIN_MESSAGES 10000    /* smaller jobs show no progress line */
#define CLI_WAIT_SLICE_MS 200              /* how often waits look at signals */

typedef enum cli_cmd {
	CMD_PUBLISH,
	CMD_RELAY,
	CMD_STATUS,
	CMD_LIST,
	CMD_SHOW,
	CMD_REQUEUE,
	CMD_FAIL,
	CMD_PURGE,
	CMD_BENCH,
	CMD_COUNT
} cli_cmd;

typedef enum opt_id {
	OPT_STORE,
	OPT_TRANSPORT,
	OPT_TOPIC,
	OPT_COUNT,
	OPT_SIZE,
	OPT_KEY,
	OPT_PAYLOAD,
	OPT_PAYLOAD_FILE,
	OPT_LINES,
	OPT_LEDGER,
	OPT_BATCH,
	OPT_STALL_SECONDS,
	OPT_UNTIL_EMPTY,
	OPT_MAX_SECONDS,
	OPT_JSON,
	OPT_STATE,
	OPT_LIMIT,
	OPT_ALL_FAILED,
	OPT_OLDER_THAN,
	OPT_REASON,
	OPT_ID,
	OPT_YES,
	OPT_SET,
	OPT_HELP,
	OPT_OPENMETRICS,
	OPT_METRICS_LISTEN,
	OPT_N
} opt_id;

/* The parsed command line: option values as text, checked by each command. */
typedef struct cli_args {
	cli_cmd cmd;
	const char *val[OPT_N];
	bool given[OPT_N];
	const char **sets; /* every --set KEY=VALUE, in order */
	size_t nsets;
	const char **pos; /* positional arguments and --id values (ids) */
	size_t npos;
	int raw_argc;     /* bench: everything after the command, unparsed */
	char **raw_argv;
} cli_args;

typedef struct cli_command {
	const char *name;
	int (*run)(cli_args *a);
	int max_positional; /* -1: any number */
	bool raw;           /* arguments are passed on unparsed (bench) */
	const char *summary;
	const char *synopsis;
	const char *help;
} cli_command;

/* main.c */
extern const cli_command cli_commands[CMD_COUNT];

/* One file per command. */
int cli_publish(cli_args *a);
int cli_relay(cli_args *a);
int cli_status(cli_args *a);
int cli_list(cli_args *a);
int cli_show(cli_args *a);
int cli_requeue(cli_args *a);
int cli_fail(cli_args *a);
int cli_purge(cli_args *a);
int cli_bench(cli_args *a);

/* ---- options.c: the option table, parsing, configuration, opening ---- */

/* Parses argv[2..] for a->cmd. Returns -1 to go on, else an exit code. */
int cli_parse(int argc, char **argv, cli_args *a);
void cli_print_cmd_help(cli_cmd c);

/* How a command opens the store (store.create; docs/cli.md). */
typedef enum cli_store_use {
	CLI_STORE_ADMIN,   /* must exist; no schema is created or changed */
	CLI_STORE_RELAY,   /* must exist; a relay may upgrade an older schema */
	CLI_STORE_PUBLISH  /* created by the first message stored */
} cli_store_use;

/*
 * The configuration from --store, --transport (if with_transport) and every
 * --set, in that order, so --set can override anything but store.create for
 * commands that never create a store. A transport is opened with
 * transport.require_connect, so an unreachable broker fails the start.
 */
int cli_make_conf(const cli_args *a, bool with_transport, cli_store_use use,
                  ackbox_conf **out);
/* ackbox_new with the CLI's error line and exit code; conf is consumed. */
int cli_open(ackbox_conf *conf, ackbox **out);
/* For admin commands: configuration, then a handle without a relay on a
 * store that must exist. */
int cli_open_admin(cli_args *a, ackbox **out);
/* Which exit code an ackbox error stands for. */
int cli_exit_for(int err);
int64_t cli_conf_duration(const ackbox_conf *conf, const char *key);

bool cli_parse_u64(const char *text, uint64_t *out);
bool cli_parse_seconds(const char *text, double *out);
/* "failed" (and "sending", "retrying" unless failed_only) -> state, else -1 */
int cli_parse_state(const char *text, bool failed_only);
/* Parses the message ids among the arguments into *out (free() it). */
int cli_parse_ids(const cli_args *a, ackbox_id **out);
/* Reads the state of every id, so that a typo changes nothing: an unknown
 * id is a usage error naming it. */
int cli_stored_states(ackbox *ab, const ackbox_id *ids, size_t n, ackbox_state *states);

/* ---- output.c: stderr lines, progress, formats ---- */

extern const char *cli_name; /* "ackbox publish" once the command is known */
void cli_set_name(const char *cmd);

/* One line on stderr, "ackbox CMD: ...". Thread-safe. */
void cli_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A usage error: one line naming what is wrong, pointing at --help. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* ackbox's log callback: the library's warnings as "ackbox CMD: warning: ..." */
void cli_on_log(ackbox_log_level level, const char *component, const char *msg, void *opaque);

typedef struct cli_progress {
	bool on;
	int64_t last_ms;
} cli_progress;
/* Live progress only on a terminal and only for long work. */
void cli_progress_init(cli_progress *p, uint64_t work);
void cli_progress_show(cli_progress *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void cli_progress_end(cli_progress *p);

double cli_rate(uint64_t n, double seconds);
/* "2024-05-01T12:00:00.123Z" (UTC), or "-" for 0. */
void cli_fmt_time(int64_t ms, bool with_ms, char *out, size_t n);
/* A short age: "850ms", "42s", "3m12s", "2h05m", "4d03h". */
void cli_fmt_age(int64_t ms, char *out, size_t n);
/* One stored message as JSON (full: headers and payload too). */
void cli_json_message(const ackbox_stored *m, bool full);
void cli_json_time_fields(const char *name, int64_t ms);
/* Text if it is readable UTF-8, else a hex dump of the first bytes. */
void cli_print_bytes_human(const void *p, size_t len, size_t max);
/* As cli_print_bytes_human, after a label on the same line: bytes that are
 * not text say so there, and their dump starts on the next line. */
void cli_print_bytes_inline(const void *p, size_t len, size_t max);
/* s with control characters escaped (ackbox_escape) in buf, or "-" for NULL. */
const char *cli_esc(const char *s, char *buf, size_t size);

/* ---- signals (output.c) ---- */

extern volatile sig_atomic_t cli_stop_signal;
/* SIGINT and SIGTERM set cli_stop_signal; a second one acts as usual. */
void cli_catch_stop_signals(void);
/* Dies of the signal that stopped us, so a shell sees 130/143. */
void cli_die_of_stop_signal(void);

/* ---- metrics_http.c: relay --metrics-listen ---- */
typedef struct cli_metrics cli_metrics;
/* Serves /metrics and /healthz of ab on listen ("127.0.0.1:9187") until
 * cli_metrics_stop; an exit code (EXIT_USAGE for a bad or busy address). */
int cli_metrics_start(const char *listen, ackbox *ab, cli_metrics **out);
void cli_metrics_stop(cli_metrics *m);

#endif /* ACKBOX_CLI_H */
