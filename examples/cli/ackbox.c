/*
 * ackbox.c - the operator CLI: publish test traffic, run a relay, and
 * inspect, requeue, fail or purge what a store holds. Only the public API is used;
 * docs/cli.md is the user's guide and lists the exit codes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ackbox/ackbox.h>
#include <ackbox/plugin.h> /* ackbox_url_parse, ackbox_parse_duration_ms, clocks */

/* Exit codes: part of the CLI's contract (--help, docs/cli.md). */
enum {
	EXIT_ALL_GOOD = 0,
	EXIT_SOME_FAILED = 1,  /* FAILED messages (this run, or left in the store) */
	EXIT_USAGE = 2,        /* bad option, value, URL or configuration key */
	EXIT_STORE = 3,        /* store missing, corrupt, locked, unwritable */
	EXIT_TRANSPORT = 4     /* broker unreachable, or it did not confirm in time */
};

#define PUBLISH_CHUNK 500               /* messages per ackbox_publish_batch (--batch) */
#define PUBLISH_CHUNK_BYTES (8u << 20)  /* and at most this many payload bytes */
#define PROGRESS_MIN_MESSAGES 10000     /* smaller jobs show no progress line */
#define PROGRESS_INTERVAL_MS 200        /* at most 5 updates a second */
#define WAIT_SLICE_MS 200               /* how often waits look at signals */
#define FAILURES_SHOWN 10               /* FAILED messages named on stderr */
#define LIST_DEFAULT_LIMIT 100

/* ------------------------------------------------------------------ */
/* Commands and options                                                 */
/* ------------------------------------------------------------------ */

typedef enum cli_cmd {
	CMD_PUBLISH,
	CMD_RELAY,
	CMD_STATUS,
	CMD_LIST,
	CMD_SHOW,
	CMD_REQUEUE,
	CMD_FAIL,
	CMD_PURGE,
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
	OPT_N
} opt_id;

#define FOR(c) (1u << (c))
#define ALL_CMDS ((1u << CMD_COUNT) - 1)

static const struct option_def {
	const char *name;
	opt_id id;
	bool takes_value;
	unsigned cmds; /* commands that accept it */
} option_defs[] = {
	{"store", OPT_STORE, true, ALL_CMDS},
	{"transport", OPT_TRANSPORT, true, FOR(CMD_PUBLISH) | FOR(CMD_RELAY)},
	{"topic", OPT_TOPIC, true, FOR(CMD_PUBLISH)},
	{"count", OPT_COUNT, true, FOR(CMD_PUBLISH)},
	{"size", OPT_SIZE, true, FOR(CMD_PUBLISH)},
	{"key", OPT_KEY, true, FOR(CMD_PUBLISH)},
	{"payload", OPT_PAYLOAD, true, FOR(CMD_PUBLISH)},
	{"payload-file", OPT_PAYLOAD_FILE, true, FOR(CMD_PUBLISH)},
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
};

/* The parsed command line: option values as text, checked by each command. */
typedef struct cli_args {
	cli_cmd cmd;
	const char *val[OPT_N];
	bool given[OPT_N];
	const char **sets; /* every --set KEY=VALUE, in order */
	size_t nsets;
	const char **pos; /* positional arguments and --id values (ids) */
	size_t npos;
} cli_args;

static int cmd_publish(cli_args *a);
static int cmd_relay(cli_args *a);
static int cmd_status(cli_args *a);
static int cmd_list(cli_args *a);
static int cmd_show(cli_args *a);
static int cmd_requeue(cli_args *a);
static int cmd_fail(cli_args *a);
static int cmd_purge(cli_args *a);

static const struct command {
	const char *name;
	int (*run)(cli_args *a);
	int max_positional; /* -1: any number */
	const char *synopsis;
	const char *help;
} commands[CMD_COUNT] = {
    [CMD_PUBLISH] = {"publish", cmd_publish, 0,
                     "ackbox publish --store URL --transport URL --topic T [--count N] [--size BYTES]\n"
                     "               [--key K] [--payload TEXT | --payload-file FILE]\n"
                     "               [--ledger FILE] [--batch N] [--stall-seconds S]",
                     "Stores N messages durably and publishes them; exits when every one is\n"
                     "acked or FAILED and prints one line on stdout:\n"
                     "  published=N acked=A failed=F elapsed=SECONDS rate=MSGS_PER_S\n"
                     "A generated payload is BYTES long and starts with its sequence number\n"
                     "1..N and a space, so a consumer can check that every number arrived.\n"
                     "Fails fast (exit 4) if the broker is unreachable at start.\n"
                     "\n"
                     "  --topic T            queue / routing key / topic (required)\n"
                     "  --count N            messages to publish (default 1)\n"
                     "  --size BYTES         generated payload size (default 256)\n"
                     "  --key K              message key (partition / ordering key)\n"
                     "  --payload TEXT       send TEXT as every payload instead\n"
                     "  --payload-file FILE  send FILE's bytes as every payload (- for stdin)\n"
                     "  --ledger FILE        append \"FIRST LAST\" once each range of sequence\n"
                     "                       numbers is stored (accepted), for crash tests\n"
                     "  --batch N            messages per store transaction (default 500; at\n"
                     "                       most 8 MiB of generated payload per transaction)\n"
                     "  --stall-seconds S    give up waiting (exit 4; the messages stay stored)\n"
                     "                       after S seconds in which no message was acked\n"
                     "                       or FAILED (default: retry.max_attempts x\n"
                     "                       (retry.timeout + retry.backoff.max) +\n"
                     "                       transport.connect_timeout + 5 s)\n"},
    [CMD_RELAY] = {"relay", cmd_relay, 0,
                   "ackbox relay --store URL --transport URL [--until-empty] [--max-seconds S]",
                   "Delivers every due message in the store (left by a crashed process, written\n"
                   "with the transactional entry point, or requeued). Runs until SIGINT/SIGTERM\n"
                   "or --max-seconds, then prints one line on stdout:\n"
                   "  acked=A failed=F pending=P failed_in_store=FS elapsed=SECONDS rate=MSGS_PER_S\n"
                   "The store file must exist. Fails fast (exit 4) if the broker is unreachable.\n"
                   "\n"
                   "  --until-empty        exit once nothing is sending or retrying\n"
                   "  --max-seconds S      stop after S seconds (with --until-empty: exit 4 if\n"
                   "                       messages are still pending then)\n"},
    [CMD_STATUS] = {"status", cmd_status, 0, "ackbox status --store URL [--json]",
                    "Counts stored messages by state and shows the age of the oldest pending\n"
                    "one. Exit 1 if any message is FAILED.\n"
                    "\n"
                    "  --json               one JSON object instead of text\n"},
    [CMD_LIST] = {"list", cmd_list, 0,
                  "ackbox list --store URL [--state sending|retrying|failed] [--limit N] [--json]",
                  "Lists stored messages, oldest first: id, state, attempts, timestamps, topic\n"
                  "and the last error.\n"
                  "\n"
                  "  --state S            only messages in state S\n"
                  "  --limit N            at most N messages (default 100, 0 for all)\n"
                  "  --json               one JSON array instead of a table\n"},
    [CMD_SHOW] = {"show", cmd_show, 1, "ackbox show --store URL ID [--json]",
                  "Shows one stored message in full, headers and payload included.\n"
                  "\n"
                  "  --json               one JSON object instead of text\n"},
    [CMD_REQUEUE] = {"requeue", cmd_requeue, -1, "ackbox requeue --store URL (ID... | --all-failed)",
                     "Moves FAILED messages back to RETRYING with attempts reset; a running relay\n"
                     "(or the next `ackbox relay`) sends them. Prints requeued=N.\n"
                     "\n"
                     "  --all-failed         every FAILED message\n"},
    [CMD_FAIL] = {"fail", cmd_fail, -1, "ackbox fail --store URL ID... [--reason TEXT]",
                  "Marks messages FAILED whatever their state, SENDING and RETRYING included,\n"
                  "so that a stuck one can be inspected, requeued or purged. Attempts are\n"
                  "kept. A relay sending one can no longer change it (a send already under\n"
                  "way may still reach the broker once). Every ID is checked first: an\n"
                  "unknown one changes nothing (exit 2). Prints failed=N.\n"
                  "\n"
                  "  --reason TEXT        why; the last error becomes\n"
                  "                       \"marked failed by an operator: TEXT\"\n"},
    [CMD_PURGE] = {"purge", cmd_purge, -1,
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
    "3 store error, 4 transport unreachable (or it did not confirm in time).\n";

static const char *cmd_name = "ackbox"; /* "ackbox publish" once known, for messages */
static char cmd_name_buf[32];

/* ------------------------------------------------------------------ */
/* Messages on stderr, and the progress line                            */
/* ------------------------------------------------------------------ */

/* stderr is shared by the main thread (progress) and ackbox's log callback. */
static pthread_mutex_t stderr_mtx = PTHREAD_MUTEX_INITIALIZER;
static bool progress_line_shown;

static void clear_progress_locked(void)
{
	if (progress_line_shown) {
		fputs("\r\033[K", stderr);
		progress_line_shown = false;
	}
}

/* One line on stderr, "ackbox CMD: ...". */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;
	pthread_mutex_lock(&stderr_mtx);
	clear_progress_locked();
	fprintf(stderr, "%s: ", cmd_name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	fflush(stderr);
	pthread_mutex_unlock(&stderr_mtx);
}

/* A usage error: one line naming what is wrong, pointing at --help. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	say("%s (see '%s --help')", msg, cmd_name);
	return EXIT_USAGE;
}

typedef struct progress {
	bool on;
	int64_t last_ms;
} progress;

/* Live progress only on a terminal and only for long work. */
static void progress_init(progress *p, uint64_t work)
{
	p->on = work >= PROGRESS_MIN_MESSAGES && isatty(STDERR_FILENO);
	p->last_ms = 0;
}

static void progress_show(progress *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void progress_show(progress *p, const char *fmt, ...)
{
	va_list ap;
	int64_t now = ackbox_mono_ms();
	if (!p->on || now - p->last_ms < PROGRESS_INTERVAL_MS)
		return;
	p->last_ms = now;
	pthread_mutex_lock(&stderr_mtx);
	fputs("\r\033[K", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fflush(stderr);
	progress_line_shown = true;
	pthread_mutex_unlock(&stderr_mtx);
}

static void progress_end(progress *p)
{
	if (!p->on)
		return;
	pthread_mutex_lock(&stderr_mtx);
	clear_progress_locked();
	fflush(stderr);
	pthread_mutex_unlock(&stderr_mtx);
}

/* ackbox's log callback: any ackbox thread, never under an ackbox lock. */
static void on_log(ackbox_log_level level, const char *component, const char *msg, void *opaque)
{
	(void)opaque;
	/* The report callback names every FAILED message with its id; the
	 * relay's own line for it would only repeat that. */
	if (strcmp(component, "relay") == 0 && strncmp(msg, "message to '", 12) == 0 &&
	    strstr(msg, "FAILED"))
		return;
	say("%s%s: %s",
	    level <= ACKBOX_LOG_ERROR  ? "error: "
	    : level <= ACKBOX_LOG_WARN ? "warning: "
	                               : "",
	    component, msg);
}

/* ------------------------------------------------------------------ */
/* Signals                                                              */
/* ------------------------------------------------------------------ */

static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig)
{
	stop_signal = sig;
}

static void catch_stop_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

/* Dies of the signal that stopped us, so a shell sees 130/143. */
static void die_of_stop_signal(void)
{
	int sig = stop_signal;
	if (!sig)
		return;
	signal(sig, SIG_DFL);
	raise(sig);
}

/* ------------------------------------------------------------------ */
/* Small parsers and formatters                                         */
/* ------------------------------------------------------------------ */

static bool parse_u64(const char *text, uint64_t *out)
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

static bool parse_seconds(const char *text, double *out)
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

/* Which exit code an ackbox error stands for. */
static int exit_for(int err)
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

/* "2024-05-01T12:00:00.123Z" (UTC), or "-" for 0. */
static void fmt_time(int64_t ms, bool with_ms, char *out, size_t n)
{
	struct tm tm;
	time_t t = (time_t)(ms / 1000);
	char base[40];
	if (ms <= 0 || !gmtime_r(&t, &tm)) {
		snprintf(out, n, "-");
		return;
	}
	strftime(base, sizeof(base), with_ms ? "%Y-%m-%dT%H:%M:%S" : "%Y-%m-%d %H:%M:%S", &tm);
	if (with_ms)
		snprintf(out, n, "%s.%03dZ", base, (int)(ms % 1000));
	else
		snprintf(out, n, "%sZ", base);
}

/* A short age: "850ms", "42s", "3m12s", "2h05m", "4d03h". */
static void fmt_age(int64_t ms, char *out, size_t n)
{
	int64_t s = ms / 1000;
	if (ms < 0)
		ms = s = 0;
	if (ms < 1000)
		snprintf(out, n, "%" PRId64 "ms", ms);
	else if (s < 60)
		snprintf(out, n, "%" PRId64 "s", s);
	else if (s < 3600)
		snprintf(out, n, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
	else if (s < 86400)
		snprintf(out, n, "%" PRId64 "h%02" PRId64 "m", s / 3600, s % 3600 / 60);
	else
		snprintf(out, n, "%" PRId64 "d%02" PRId64 "h", s / 86400, s % 86400 / 3600);
}

/* Length of the valid UTF-8 sequence at s (1..4), 0 if invalid. */
static size_t utf8_seq(const unsigned char *s, size_t len)
{
	uint32_t cp;
	size_t need;
	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		need = 2, cp = s[0] & 0x1f;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		need = 3, cp = s[0] & 0x0f;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		need = 4, cp = s[0] & 0x07;
	else
		return 0;
	if (len < need)
		return 0;
	for (size_t i = 1; i < need; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((need == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
	    (need == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	return need;
}

static bool utf8_valid(const void *p, size_t len)
{
	const unsigned char *s = p;
	for (size_t i = 0; i < len;) {
		size_t k = utf8_seq(s + i, len - i);
		if (!k)
			return false;
		i += k;
	}
	return true;
}

/* A JSON string; invalid UTF-8 becomes U+FFFD so jq always reads it. */
static void json_str(const void *p, size_t len)
{
	const unsigned char *s = p;
	putchar('"');
	for (size_t i = 0; i < len;) {
		size_t k = utf8_seq(s + i, len - i);
		unsigned char c = s[i];
		if (!k) {
			fputs("\\ufffd", stdout);
			i++;
			continue;
		}
		if (k > 1) {
			fwrite(s + i, 1, k, stdout);
		} else if (c == '"' || c == '\\') {
			putchar('\\');
			putchar(c);
		} else if (c == '\n') {
			fputs("\\n", stdout);
		} else if (c == '\r') {
			fputs("\\r", stdout);
		} else if (c == '\t') {
			fputs("\\t", stdout);
		} else if (c < 0x20 || c == 0x7f) {
			printf("\\u%04x", c);
		} else {
			putchar(c);
		}
		i += k;
	}
	putchar('"');
}

static void json_cstr(const char *s)
{
	if (s)
		json_str(s, strlen(s));
	else
		fputs("null", stdout);
}

static void base64(const void *p, size_t len)
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *s = p;
	putchar('"');
	for (size_t i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < len ? (uint32_t)s[i + 1] << 8 : 0) |
		             (i + 2 < len ? s[i + 2] : 0);
		putchar(tab[v >> 18 & 63]);
		putchar(tab[v >> 12 & 63]);
		putchar(i + 1 < len ? tab[v >> 6 & 63] : '=');
		putchar(i + 2 < len ? tab[v & 63] : '=');
	}
	putchar('"');
}

/* "name":"text" if the bytes are UTF-8, else "name_base64":"..."; null if absent. */
static void json_bytes_field(const char *name, const void *p, size_t len, bool present)
{
	if (!present) {
		printf("\"%s\":null", name);
	} else if (utf8_valid(p, len)) {
		printf("\"%s\":", name);
		json_str(p, len);
	} else {
		printf("\"%s_base64\":", name);
		base64(p, len);
	}
}

static void json_time_fields(const char *name, int64_t ms)
{
	char t[48];
	if (ms <= 0) {
		printf("\"%s_ms\":null,\"%s\":null", name, name);
		return;
	}
	fmt_time(ms, true, t, sizeof(t));
	printf("\"%s_ms\":%" PRId64 ",\"%s\":", name, ms, name);
	json_cstr(t);
}

/* ------------------------------------------------------------------ */
/* Configuration and opening the store                                  */
/* ------------------------------------------------------------------ */

static bool conf_set(ackbox_conf *conf, const char *key, const char *value)
{
	char err[512];
	if (ackbox_conf_set(conf, key, value, err, sizeof(err)) != 0) {
		say("%s", err);
		return false;
	}
	return true;
}

/*
 * Builds the configuration from --store, --transport and every --set (in
 * that order, so --set can override anything). A transport is opened with
 * transport.require_connect, so an unreachable broker fails the start.
 */
static int make_conf(const cli_args *a, bool with_transport, ackbox_conf **out)
{
	ackbox_conf *conf = ackbox_conf_new();
	*out = NULL;
	if (!conf) {
		say("out of memory");
		return EXIT_STORE;
	}
	ackbox_conf_set_log_cb(conf, on_log, NULL);
	if ((a->val[OPT_STORE] && !conf_set(conf, "store.url", a->val[OPT_STORE])) ||
	    (with_transport && a->val[OPT_TRANSPORT] &&
	     (!conf_set(conf, "transport.url", a->val[OPT_TRANSPORT]) ||
	      !conf_set(conf, "transport.require_connect", "true"))))
		goto usage;
	for (size_t i = 0; i < a->nsets; i++) {
		const char *eq = strchr(a->sets[i], '=');
		char key[256];
		if (!eq || eq == a->sets[i] || (size_t)(eq - a->sets[i]) >= sizeof(key)) {
			usage_error("--set needs KEY=VALUE, got '%s'", a->sets[i]);
			ackbox_conf_destroy(conf);
			return EXIT_USAGE;
		}
		memcpy(key, a->sets[i], (size_t)(eq - a->sets[i]));
		key[eq - a->sets[i]] = '\0';
		if (!with_transport && strncmp(key, "transport.", 10) == 0) {
			usage_error("--set %s: '%s' does not connect to a broker", key,
			            commands[a->cmd].name);
			ackbox_conf_destroy(conf);
			return EXIT_USAGE;
		}
		if (!conf_set(conf, key, eq + 1))
			goto usage;
	}
	if (!ackbox_conf_get(conf, "store.url")) {
		ackbox_conf_destroy(conf);
		return usage_error("--store URL is required");
	}
	if (with_transport && !ackbox_conf_get(conf, "transport.url")) {
		ackbox_conf_destroy(conf);
		return usage_error("--transport URL is required");
	}
	*out = conf;
	return EXIT_ALL_GOOD;
usage:
	ackbox_conf_destroy(conf);
	return EXIT_USAGE;
}

/*
 * Commands that only read or repair a store must not create one: opening a
 * misspelt sqlite path would otherwise make a new, empty outbox there. The
 * path rule mirrors the SQLite store: sqlite:///abs.db or sqlite://rel.db.
 */
static int store_must_exist(const ackbox_conf *conf)
{
	ackbox_url url;
	char err[512], *path;
	struct stat sb;
	int rc = EXIT_ALL_GOOD;

	if (ackbox_url_parse(ackbox_conf_get(conf, "store.url"), &url, err, sizeof(err)) != 0) {
		say("store.url: %s", err);
		return EXIT_USAGE;
	}
	if (strcmp(url.scheme, "sqlite") != 0) {
		ackbox_url_fini(&url);
		return EXIT_ALL_GOOD;
	}
	if (asprintf(&path, "%s%s", url.hosts, url.path) < 0) {
		ackbox_url_fini(&url);
		say("out of memory");
		return EXIT_STORE;
	}
	if (path[0] && stat(path, &sb) != 0) {
		if (errno == ENOENT)
			say("store file '%s' does not exist", path);
		else
			say("store file '%s': %s", path, strerror(errno));
		rc = EXIT_STORE;
	}
	free(path);
	ackbox_url_fini(&url);
	return rc;
}

/* ackbox_new with the CLI's error line and exit code; conf is consumed. */
static int open_handle(ackbox_conf *conf, ackbox **out)
{
	char err[512];
	int rc = ackbox_new(out, conf, err, sizeof(err));
	if (rc == 0)
		return EXIT_ALL_GOOD;
	ackbox_conf_destroy(conf);
	if (rc == ACKBOX_ERR_TRANSPORT)
		say("broker unreachable: %s", err);
	else
		say("%s", err);
	return exit_for(rc);
}

/* For admin commands: configuration, existing store, handle without relay. */
static int open_admin(cli_args *a, ackbox **out)
{
	ackbox_conf *conf;
	int rc = make_conf(a, false, &conf);
	if (rc)
		return rc;
	rc = store_must_exist(conf);
	if (rc) {
		ackbox_conf_destroy(conf);
		return rc;
	}
	return open_handle(conf, out);
}

static int64_t conf_duration(const ackbox_conf *conf, const char *key)
{
	int64_t ms = 0;
	const char *v = ackbox_conf_get(conf, key);
	if (v)
		ackbox_parse_duration_ms(v, &ms);
	return ms;
}

/*
 * How long publish waits without any message reaching a final state before
 * it gives up: every attempt of one message timing out after the longest
 * backoff, plus a reconnect.
 */
static int64_t stall_bound_ms(const ackbox_conf *conf)
{
	const char *v = ackbox_conf_get(conf, "retry.max_attempts");
	int64_t attempts = v ? strtoll(v, NULL, 10) : 3;
	int64_t per = conf_duration(conf, "retry.timeout") + conf_duration(conf, "retry.backoff.max");
	if (attempts < 1)
		attempts = 1;
	if (attempts > 100)
		attempts = 100;
	return attempts * per + conf_duration(conf, "transport.connect_timeout") + 5000;
}

/* ------------------------------------------------------------------ */
/* Delivery reports                                                     */
/* ------------------------------------------------------------------ */

typedef struct run {
	/* publish: the ids it stored, ascending (ids of one process increase),
	 * so reports for messages left by earlier runs are told apart */
	bool own_only;
	ackbox_id *ids;
	size_t nids, cap;
	uint64_t acked, failed, other;
	unsigned failures_shown;
} run;

static int id_cmp(const void *a, const void *b)
{
	return memcmp(a, b, sizeof(ackbox_id));
}

static bool run_owns(const run *u, const ackbox_id *id)
{
	return u->nids && bsearch(id, u->ids, u->nids, sizeof(*id), id_cmp) != NULL;
}

/* Runs on the main thread, from ackbox_poll/ackbox_flush. */
static void on_report(const ackbox_report *r, void *opaque)
{
	run *u = opaque;
	char id[ACKBOX_ID_STRLEN];
	if (u->own_only && !run_owns(u, &r->id)) {
		u->other++;
		return;
	}
	if (r->state == ACKBOX_MSG_ACKED) {
		u->acked++;
		return;
	}
	u->failed++;
	if (u->failures_shown < FAILURES_SHOWN) {
		ackbox_id_format(&r->id, id);
		say("message %s to '%s' %s: %s", id, r->topic,
		    r->state == ACKBOX_MSG_DROPPED ? "DROPPED" : "FAILED", r->reason);
	} else if (u->failures_shown == FAILURES_SHOWN) {
		say("more messages FAILED (not shown); see 'ackbox list --state failed'");
	}
	if (u->failures_shown <= FAILURES_SHOWN)
		u->failures_shown++;
}

static double rate_of(uint64_t n, double seconds)
{
	return seconds > 0 ? (double)n / seconds : 0;
}

/* ------------------------------------------------------------------ */
/* publish                                                              */
/* ------------------------------------------------------------------ */

static int read_payload_file(const char *path, char **out, size_t *len)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
	char *buf = NULL;
	size_t n = 0, cap = 0;
	if (!f) {
		say("--payload-file '%s': %s", path, strerror(errno));
		return EXIT_USAGE;
	}
	for (;;) {
		if (n == cap) {
			char *nb = realloc(buf, cap ? cap * 2 : 65536);
			if (!nb) {
				free(buf);
				if (f != stdin)
					fclose(f);
				say("--payload-file '%s': out of memory", path);
				return EXIT_USAGE;
			}
			buf = nb;
			cap = cap ? cap * 2 : 65536;
		}
		size_t got = fread(buf + n, 1, cap - n, f);
		n += got;
		if (got == 0)
			break;
	}
	if (ferror(f)) {
		say("--payload-file '%s': read error", path);
		free(buf);
		if (f != stdin)
			fclose(f);
		return EXIT_USAGE;
	}
	if (f != stdin)
		fclose(f);
	*out = buf;
	*len = n;
	return EXIT_ALL_GOOD;
}

/* Appends n ids in order; keeps the array sorted for run_owns. */
static bool run_add_ids(run *u, const ackbox_id *ids, size_t n)
{
	bool sorted = u->nids == 0 || id_cmp(&u->ids[u->nids - 1], &ids[0]) < 0;
	if (u->nids + n > u->cap) {
		size_t cap = u->cap ? u->cap : 1024;
		while (cap < u->nids + n)
			cap *= 2;
		ackbox_id *ni = realloc(u->ids, cap * sizeof(*ni));
		if (!ni)
			return false;
		u->ids = ni;
		u->cap = cap;
	}
	memcpy(u->ids + u->nids, ids, n * sizeof(*ids));
	for (size_t i = 1; i < n && sorted; i++)
		sorted = id_cmp(&ids[i - 1], &ids[i]) < 0;
	u->nids += n;
	if (!sorted) /* never expected: ids of one process increase */
		qsort(u->ids, u->nids, sizeof(*u->ids), id_cmp);
	return true;
}

static int cmd_publish(cli_args *a)
{
	uint64_t count = 1, size = 256, published = 0, seq = 1, batch = PUBLISH_CHUNK;
	char *fixed = NULL, err[512];
	size_t fixed_len = 0, chunk;
	int ledger_fd = -1;
	bool generated = !a->given[OPT_PAYLOAD] && !a->given[OPT_PAYLOAD_FILE];
	ackbox_conf *conf;
	ackbox *ab;
	ackbox_msg *msgs = NULL;
	ackbox_id *batch_ids = NULL;
	char *buf = NULL;
	run u;
	progress pg;
	int64_t stall_ms, start, end;
	double stall_seconds = 0;
	int rc, code = EXIT_ALL_GOOD;
	bool flushed = false, stalled = false;

	if (!a->val[OPT_TOPIC] || !*a->val[OPT_TOPIC])
		return usage_error("--topic T is required");
	if (a->given[OPT_COUNT] && (!parse_u64(a->val[OPT_COUNT], &count) || count == 0))
		return usage_error("--count must be a positive integer, got '%s'", a->val[OPT_COUNT]);
	if (a->given[OPT_PAYLOAD] && a->given[OPT_PAYLOAD_FILE])
		return usage_error("--payload and --payload-file exclude each other");
	if (a->given[OPT_SIZE] && !generated)
		return usage_error("--size applies to generated payloads, not to --payload/--payload-file");
	if (a->given[OPT_BATCH] && (!parse_u64(a->val[OPT_BATCH], &batch) || batch == 0))
		return usage_error("--batch must be a positive integer, got '%s'", a->val[OPT_BATCH]);
	if (a->given[OPT_STALL_SECONDS] && !parse_seconds(a->val[OPT_STALL_SECONDS], &stall_seconds))
		return usage_error("--stall-seconds must be a positive number, got '%s'",
		                   a->val[OPT_STALL_SECONDS]);
	if (a->given[OPT_SIZE] && !parse_u64(a->val[OPT_SIZE], &size))
		return usage_error("--size must be a number of bytes, got '%s'", a->val[OPT_SIZE]);
	if (generated) {
		/* every payload must hold its sequence number and a space */
		char digits[24];
		uint64_t need = (uint64_t)snprintf(digits, sizeof(digits), "%" PRIu64, count) + 1;
		if (size < need)
			return usage_error("--size %" PRIu64 " is too small: sequence numbers up to %" PRIu64
			                   " need %" PRIu64 " bytes",
			                   size, count, need);
		if (size > 512ull << 20)
			return usage_error("--size %" PRIu64 " is larger than 512 MiB", size);
	} else if (a->given[OPT_PAYLOAD]) {
		fixed = strdup(a->val[OPT_PAYLOAD]);
		if (!fixed)
			return EXIT_STORE;
		fixed_len = strlen(fixed);
	} else {
		rc = read_payload_file(a->val[OPT_PAYLOAD_FILE], &fixed, &fixed_len);
		if (rc)
			return rc;
	}

	rc = make_conf(a, true, &conf);
	if (rc) {
		free(fixed);
		return rc;
	}
	stall_ms = stall_bound_ms(conf);
	if (a->given[OPT_STALL_SECONDS])
		stall_ms = (int64_t)(stall_seconds * 1000.0);
	memset(&u, 0, sizeof(u));
	u.own_only = true;
	ackbox_conf_set_report_cb(conf, on_report, &u);
	rc = open_handle(conf, &ab);
	if (rc) {
		free(fixed);
		return rc;
	}

	chunk = batch < 100000 ? (size_t)batch : 100000;
	if (generated && size * chunk > PUBLISH_CHUNK_BYTES)
		chunk = size >= PUBLISH_CHUNK_BYTES ? 1 : (size_t)(PUBLISH_CHUNK_BYTES / size);
	if (chunk > count)
		chunk = (size_t)count;
	msgs = calloc(chunk, sizeof(*msgs));
	batch_ids = calloc(chunk, sizeof(*batch_ids));
	if (generated)
		buf = malloc(chunk * (size_t)size + 1);
	if (!msgs || !batch_ids || (generated && !buf)) {
		say("out of memory");
		code = EXIT_STORE;
		goto done;
	}
	for (size_t i = 0; i < chunk; i++) {
		msgs[i].topic = a->val[OPT_TOPIC];
		msgs[i].key = a->val[OPT_KEY];
		msgs[i].key_len = a->val[OPT_KEY] ? strlen(a->val[OPT_KEY]) : 0;
		msgs[i].payload = generated ? buf + i * (size_t)size : fixed;
		msgs[i].payload_len = generated ? (size_t)size : fixed_len;
	}
	if (generated)
		memset(buf, 'x', chunk * (size_t)size);

	if (a->given[OPT_LEDGER]) {
		ledger_fd = open(a->val[OPT_LEDGER], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (ledger_fd < 0) {
			say("--ledger '%s': %s", a->val[OPT_LEDGER], strerror(errno));
			code = EXIT_USAGE;
			goto done;
		}
	}
	catch_stop_signals();
	progress_init(&pg, count);
	start = ackbox_mono_ms();
	while (seq <= count && !stop_signal) {
		size_t n = count - seq + 1 < chunk ? (size_t)(count - seq + 1) : chunk;
		if (generated) {
			for (size_t i = 0; i < n; i++) {
				char *p = buf + i * (size_t)size;
				int len = sprintf(p, "%" PRIu64 " ", seq + i);
				memset(p + len, 'x', (size_t)size - (size_t)len);
			}
		}
		rc = ackbox_publish_batch(ab, msgs, n, batch_ids, err, sizeof(err));
		if (rc) {
			/* the library's text starts "publish: ", as does our prefix */
			say("%s", strncmp(err, "publish: ", 9) == 0 ? err + 9 : err);
			code = exit_for(rc);
			break;
		}
		if (!run_add_ids(&u, batch_ids, n)) {
			say("out of memory tracking message ids (%" PRIu64 " published)", published + n);
			published += n;
			code = EXIT_STORE;
			break;
		}
		if (ledger_fd >= 0) {
			/* written before anything else can happen to this range: a
			 * kill -9 after this line leaves it in the page cache */
			char line[64];
			int len = snprintf(line, sizeof(line), "%" PRIu64 " %" PRIu64 "\n", seq,
			                   seq + n - 1);
			if (write(ledger_fd, line, (size_t)len) != len) {
				say("--ledger: write failed: %s", strerror(errno));
				code = EXIT_STORE;
				published += n;
				break;
			}
		}
		published += n;
		seq += n;
		ackbox_poll(ab, 0);
		{
			double el = (double)(ackbox_mono_ms() - start) / 1000.0;
			progress_show(&pg, "stored %" PRIu64 "/%" PRIu64 ", acked %" PRIu64 ", in flight %" PRIu64
			              ", %.0f msg/s",
			              published, count, u.acked, published - u.acked - u.failed,
			              rate_of(u.acked, el));
		}
	}

	/* Wait until every message is acked or FAILED, as long as some make progress. */
	if (code == EXIT_ALL_GOOD) {
		int64_t last_change = ackbox_mono_ms();
		uint64_t last_done = 0;
		while (!stop_signal) {
			rc = ackbox_flush(ab, WAIT_SLICE_MS);
			if (rc == 0) {
				flushed = true;
				break;
			}
			if (rc != ACKBOX_ERR_TIMEOUT) {
				say("waiting for confirms: %s", ackbox_strerror(rc));
				code = exit_for(rc);
				break;
			}
			int64_t now = ackbox_mono_ms();
			uint64_t done_now = u.acked + u.failed + u.other;
			if (done_now != last_done) {
				last_done = done_now;
				last_change = now;
			} else if (now - last_change >= stall_ms) {
				stalled = true;
				break;
			}
			double el = (double)(now - start) / 1000.0;
			progress_show(&pg, "acked %" PRIu64 "/%" PRIu64 ", in flight %" PRIu64 ", %.0f msg/s",
			              u.acked, published, published - u.acked - u.failed,
			              rate_of(u.acked, el));
		}
	}
	if (flushed) {
		/* The store holds nothing pending; the last reports are released
		 * right after their state change (bounded: another process may
		 * have finished some of our messages). */
		int64_t until = ackbox_mono_ms() + 5000;
		while (u.acked + u.failed < published && ackbox_mono_ms() < until && !stop_signal)
			ackbox_poll(ab, 100);
	}
	end = ackbox_mono_ms();
	progress_end(&pg);

	/* An error before anything was stored is the error line alone. */
	if (code == EXIT_ALL_GOOD || published > 0) {
		double el = (double)(end - start) / 1000.0;
		printf("published=%" PRIu64 " acked=%" PRIu64 " failed=%" PRIu64
		       " elapsed=%.3f rate=%.0f\n",
		       published, u.acked, u.failed, el, rate_of(u.acked, el));
		fflush(stdout);
	}
	if (u.other)
		say("also finished %" PRIu64 " message(s) left in the store by an earlier run", u.other);
	if (code == EXIT_ALL_GOOD && stop_signal) {
		say("interrupted: %" PRIu64 " unconfirmed message(s) stay in the store for 'ackbox relay'",
		    published - u.acked - u.failed);
	} else if (code == EXIT_ALL_GOOD && stalled) {
		say("%" PRIu64 " message(s) still unconfirmed after %" PRId64
		    " s without progress (broker %s); they stay in the store for 'ackbox relay'",
		    published - u.acked - u.failed, stall_ms / 1000,
		    ackbox_connected(ab) ? "connected" : "not connected");
		code = EXIT_TRANSPORT;
	} else if (code == EXIT_ALL_GOOD && u.failed) {
		code = EXIT_SOME_FAILED;
	}
done:
	if (ledger_fd >= 0)
		close(ledger_fd);
	ackbox_destroy(ab);
	free(msgs);
	free(batch_ids);
	free(buf);
	free(fixed);
	free(u.ids);
	die_of_stop_signal();
	return code;
}

/* ------------------------------------------------------------------ */
/* relay                                                                */
/* ------------------------------------------------------------------ */

static int cmd_relay(cli_args *a)
{
	double max_seconds = 0;
	ackbox_conf *conf;
	ackbox *ab;
	ackbox_counts c0, c1 = {0};
	run u;
	progress pg;
	char err[512];
	int64_t start, deadline = INT64_MAX, end;
	int rc, code = EXIT_ALL_GOOD;
	bool until_empty = a->given[OPT_UNTIL_EMPTY], empty = false, counted = false;

	if (a->given[OPT_MAX_SECONDS] && !parse_seconds(a->val[OPT_MAX_SECONDS], &max_seconds))
		return usage_error("--max-seconds must be a positive number, got '%s'",
		                   a->val[OPT_MAX_SECONDS]);
	rc = make_conf(a, true, &conf);
	if (rc)
		return rc;
	rc = store_must_exist(conf);
	if (rc) {
		ackbox_conf_destroy(conf);
		return rc;
	}
	memset(&u, 0, sizeof(u));
	ackbox_conf_set_report_cb(conf, on_report, &u);
	rc = open_handle(conf, &ab);
	if (rc)
		return rc;
	if (ackbox_counts_get(ab, &c0, err, sizeof(err)) != 0) {
		say("%s", err);
		ackbox_destroy(ab);
		return EXIT_STORE;
	}

	catch_stop_signals();
	progress_init(&pg, c0.sending + c0.retrying);
	start = ackbox_mono_ms();
	if (max_seconds > 0)
		deadline = start + (int64_t)(max_seconds * 1000.0);
	for (;;) {
		int64_t now = ackbox_mono_ms();
		int slice = WAIT_SLICE_MS;
		if (stop_signal || now >= deadline)
			break;
		if (deadline - now < slice)
			slice = (int)(deadline - now);
		if (until_empty) {
			rc = ackbox_flush(ab, slice);
			if (rc == 0) {
				empty = true;
				break;
			}
		} else {
			rc = ackbox_poll(ab, slice);
			if (rc > 0)
				rc = 0;
		}
		if (rc < 0 && rc != ACKBOX_ERR_TIMEOUT) {
			say("relaying: %s", ackbox_strerror(rc));
			code = exit_for(rc);
			break;
		}
		if (pg.on && ackbox_mono_ms() - pg.last_ms >= PROGRESS_INTERVAL_MS &&
		    ackbox_counts_get(ab, &c1, err, sizeof(err)) == 0) {
			double el = (double)(ackbox_mono_ms() - start) / 1000.0;
			progress_show(&pg, "acked %" PRIu64 ", failed %" PRIu64 ", pending %" PRIu64
			              ", %.0f msg/s",
			              u.acked, u.failed, c1.sending + c1.retrying, rate_of(u.acked, el));
		}
	}
	/* Reports are released just after their state change: collect the tail. */
	while (ackbox_poll(ab, empty ? 100 : 0) > 0) {
	}
	end = ackbox_mono_ms();
	progress_end(&pg);
	if (ackbox_counts_get(ab, &c1, err, sizeof(err)) == 0)
		counted = true;
	else if (code == EXIT_ALL_GOOD) {
		say("%s", err);
		code = EXIT_STORE;
	}
	{
		double el = (double)(end - start) / 1000.0;
		printf("acked=%" PRIu64 " failed=%" PRIu64 " pending=%" PRIu64
		       " failed_in_store=%" PRIu64 " elapsed=%.3f rate=%.0f\n",
		       u.acked, u.failed, counted ? c1.sending + c1.retrying : 0,
		       counted ? c1.failed : 0, el, rate_of(u.acked, el));
		fflush(stdout);
	}
	if (code == EXIT_ALL_GOOD && until_empty && !empty && !stop_signal) {
		say("%" PRIu64 " message(s) still pending after %.3g s (broker %s)",
		    c1.sending + c1.retrying, max_seconds,
		    ackbox_connected(ab) ? "connected" : "not connected");
		code = EXIT_TRANSPORT;
	} else if (code == EXIT_ALL_GOOD && c1.failed) {
		code = EXIT_SOME_FAILED;
	}
	ackbox_destroy(ab);
	return code;
}

/* ------------------------------------------------------------------ */
/* status                                                               */
/* ------------------------------------------------------------------ */

static int cmd_status(cli_args *a)
{
	ackbox *ab;
	ackbox_counts c;
	char err[512], when[48], age[32];
	int64_t now;
	int rc = open_admin(a, &ab);
	if (rc)
		return rc;
	rc = ackbox_counts_get(ab, &c, err, sizeof(err));
	ackbox_destroy(ab);
	if (rc) {
		say("%s", err);
		return exit_for(rc);
	}
	now = ackbox_wall_ms();
	if (a->given[OPT_JSON]) {
		printf("{\"sending\":%" PRIu64 ",\"retrying\":%" PRIu64 ",\"failed\":%" PRIu64
		       ",\"pending\":%" PRIu64 ",",
		       c.sending, c.retrying, c.failed, c.sending + c.retrying);
		json_time_fields("oldest_pending", c.oldest_pending_ms);
		if (c.oldest_pending_ms > 0)
			printf(",\"oldest_pending_age_ms\":%" PRId64 "}\n", now - c.oldest_pending_ms);
		else
			printf(",\"oldest_pending_age_ms\":null}\n");
	} else {
		printf("sending         %" PRIu64 "\n", c.sending);
		printf("retrying        %" PRIu64 "\n", c.retrying);
		printf("failed          %" PRIu64 "\n", c.failed);
		if (c.oldest_pending_ms > 0) {
			fmt_time(c.oldest_pending_ms, false, when, sizeof(when));
			fmt_age(now - c.oldest_pending_ms, age, sizeof(age));
			printf("oldest pending  %s ago (created %s)\n", age, when);
		} else {
			printf("oldest pending  -\n");
		}
	}
	return c.failed ? EXIT_SOME_FAILED : EXIT_ALL_GOOD;
}

/* ------------------------------------------------------------------ */
/* list and show                                                        */
/* ------------------------------------------------------------------ */

typedef struct print_ctx {
	bool json;
	size_t limit; /* 0: none */
	size_t printed;
	bool more; /* a row beyond the limit exists */
} print_ctx;

static void json_message(const ackbox_stored *m, bool full)
{
	char id[ACKBOX_ID_STRLEN];
	ackbox_id_format(&m->id, id);
	printf("{\"id\":\"%s\",\"state\":\"%s\",\"topic\":", id, ackbox_state_name(m->state));
	json_cstr(m->topic);
	printf(",\"attempts\":%d,", m->attempts);
	json_time_fields("created", m->created_ms);
	putchar(',');
	json_time_fields("updated", m->updated_ms);
	putchar(',');
	/* a FAILED message is not due: it waits for a requeue */
	json_time_fields("due", m->state == ACKBOX_MSG_FAILED ? 0 : m->due_ms);
	printf(",\"last_error\":");
	json_cstr(m->last_error);
	printf(",\"last_code\":%d,", m->last_code);
	json_bytes_field("key", m->key, m->key_len, m->key != NULL && m->key_len > 0);
	printf(",\"content_type\":");
	json_cstr(m->content_type);
	printf(",\"payload_bytes\":%zu", m->payload_len);
	if (full) {
		printf(",\"headers\":[");
		for (size_t i = 0; i < m->header_count; i++) {
			printf("%s{\"name\":", i ? "," : "");
			json_cstr(m->headers[i].name);
			putchar(',');
			json_bytes_field("value", m->headers[i].value, m->headers[i].value_len, true);
			putchar('}');
		}
		printf("],");
		json_bytes_field("payload", m->payload, m->payload_len, true);
	}
	putchar('}');
}

static int list_row(const ackbox_stored *m, void *opaque)
{
	print_ctx *p = opaque;
	char id[ACKBOX_ID_STRLEN], created[48], updated[48];
	if (p->limit && p->printed == p->limit) {
		p->more = true;
		return 1;
	}
	if (p->json) {
		fputs(p->printed ? ",\n" : "\n", stdout);
		json_message(m, false);
	} else {
		if (p->printed == 0)
			printf("%-36s  %-8s  %8s  %-20s  %-20s  %-16s  %s\n", "ID", "STATE", "ATTEMPTS",
			       "CREATED", "UPDATED", "TOPIC", "LAST ERROR");
		ackbox_id_format(&m->id, id);
		fmt_time(m->created_ms, false, created, sizeof(created));
		fmt_time(m->updated_ms, false, updated, sizeof(updated));
		printf("%-36s  %-8s  %8d  %-20s  %-20s  %-16s  %s\n", id, ackbox_state_name(m->state),
		       m->attempts, created, updated, m->topic, m->last_error ? m->last_error : "-");
	}
	p->printed++;
	return 0;
}

static int parse_state(const char *text, bool failed_only)
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

static int cmd_list(cli_args *a)
{
	ackbox *ab;
	print_ctx p = {a->given[OPT_JSON], LIST_DEFAULT_LIMIT, 0, false};
	uint64_t limit;
	char err[512];
	int state = -1, rc;

	if (a->given[OPT_STATE] && (state = parse_state(a->val[OPT_STATE], false)) < 0)
		return usage_error("--state must be sending, retrying or failed, got '%s'",
		                   a->val[OPT_STATE]);
	if (a->given[OPT_LIMIT]) {
		if (!parse_u64(a->val[OPT_LIMIT], &limit) || limit > SIZE_MAX - 1)
			return usage_error("--limit must be a number (0 for no limit), got '%s'",
			                   a->val[OPT_LIMIT]);
		p.limit = (size_t)limit;
	}
	rc = open_admin(a, &ab);
	if (rc)
		return rc;
	if (p.json)
		putchar('[');
	/* one row more than the limit tells whether there are more */
	rc = ackbox_list(ab, state, p.limit ? p.limit + 1 : 0, list_row, &p, err, sizeof(err));
	ackbox_destroy(ab);
	if (rc < 0) {
		if (p.json)
			puts("]");
		say("%s", err);
		return exit_for(rc);
	}
	if (p.json)
		puts(p.printed ? "\n]" : "]");
	else if (p.printed == 0)
		printf("no %s messages\n", state < 0 ? "stored" : a->val[OPT_STATE]);
	if (p.more)
		say("showing the first %zu; --limit N (0 for all) shows more", p.limit);
	return EXIT_ALL_GOOD;
}

/* Text if it is readable UTF-8, else a hex dump of the first bytes. */
static void print_bytes_human(const void *p, size_t len, size_t max)
{
	const unsigned char *s = p;
	bool text = utf8_valid(p, len);
	for (size_t i = 0; text && i < len; i++)
		if (s[i] < 0x20 && s[i] != '\n' && s[i] != '\t' && s[i] != '\r')
			text = false;
	if (text) {
		fwrite(s, 1, len < max ? len : max, stdout);
		if (len > max)
			printf("\n... (%zu more bytes; --json shows all)", len - max);
		putchar('\n');
		return;
	}
	for (size_t i = 0; i < len && i < 256; i += 16) {
		printf("  %04zx ", i);
		for (size_t k = i; k < i + 16; k++)
			if (k < len)
				printf(" %02x", s[k]);
			else
				fputs("   ", stdout);
		fputs("  ", stdout);
		for (size_t k = i; k < i + 16 && k < len; k++)
			putchar(s[k] >= 0x20 && s[k] < 0x7f ? s[k] : '.');
		putchar('\n');
	}
	if (len > 256)
		printf("  ... (%zu more bytes; --json shows all)\n", len - 256);
}

static int show_one(const ackbox_stored *m, void *opaque)
{
	print_ctx *p = opaque;
	char id[ACKBOX_ID_STRLEN], t[48], age[32];
	int64_t now = ackbox_wall_ms();
	p->printed++;
	if (p->json) {
		json_message(m, true);
		putchar('\n');
		return 0;
	}
	ackbox_id_format(&m->id, id);
	printf("id            %s\n", id);
	printf("state         %s\n", ackbox_state_name(m->state));
	printf("topic         %s\n", m->topic);
	printf("attempts      %d\n", m->attempts);
	fmt_time(m->created_ms, true, t, sizeof(t));
	fmt_age(now - m->created_ms, age, sizeof(age));
	printf("created       %s (%s ago)\n", t, age);
	fmt_time(m->updated_ms, true, t, sizeof(t));
	printf("updated       %s\n", t);
	fmt_time(m->due_ms, true, t, sizeof(t));
	printf("due           %s\n", m->state == ACKBOX_MSG_FAILED ? "- (failed: waits for requeue)" : t);
	if (m->last_error)
		printf("last error    %s (code %d)\n", m->last_error, m->last_code);
	else
		printf("last error    -\n");
	if (m->key && m->key_len) {
		printf("key           ");
		print_bytes_human(m->key, m->key_len, 256);
	}
	if (m->content_type)
		printf("content type  %s\n", m->content_type);
	for (size_t i = 0; i < m->header_count; i++) {
		printf("header        %s: ", m->headers[i].name);
		print_bytes_human(m->headers[i].value, m->headers[i].value_len, 256);
	}
	printf("payload       %zu bytes\n", m->payload_len);
	if (m->payload_len)
		print_bytes_human(m->payload, m->payload_len, 65536);
	return 0;
}

static int cmd_show(cli_args *a)
{
	ackbox *ab;
	ackbox_id id;
	print_ctx p = {a->given[OPT_JSON], 0, 0, false};
	char err[512];
	int rc;

	if (a->npos != 1)
		return usage_error("show needs exactly one message ID");
	if (ackbox_id_parse(a->pos[0], &id) != 0)
		return usage_error("'%s' is not a message id (expected 8-4-4-4-12 hex digits)",
		                   a->pos[0]);
	rc = open_admin(a, &ab);
	if (rc)
		return rc;
	rc = ackbox_show(ab, &id, show_one, &p, err, sizeof(err));
	ackbox_destroy(ab);
	if (rc) {
		say("%s", err);
		return exit_for(rc);
	}
	return EXIT_ALL_GOOD;
}

/* ------------------------------------------------------------------ */
/* requeue, fail and purge                                              */
/* ------------------------------------------------------------------ */

/* Parses the message IDs among the arguments into *out (free() it). */
static int parse_ids(const cli_args *a, ackbox_id **out)
{
	ackbox_id *ids = calloc(a->npos ? a->npos : 1, sizeof(*ids));
	*out = NULL;
	if (!ids) {
		say("out of memory");
		return EXIT_STORE;
	}
	for (size_t i = 0; i < a->npos; i++) {
		if (ackbox_id_parse(a->pos[i], &ids[i]) != 0) {
			free(ids);
			return usage_error("'%s' is not a message id (expected 8-4-4-4-12 hex digits)",
			                   a->pos[i]);
		}
	}
	*out = ids;
	return EXIT_ALL_GOOD;
}

static int state_of(const ackbox_stored *m, void *opaque)
{
	*(ackbox_state *)opaque = m->state;
	return 0;
}

/* Reads the state of every id into states[], so that a typo changes
 * nothing: an unknown id is a usage error naming it. */
static int stored_states(ackbox *ab, const ackbox_id *ids, size_t n, ackbox_state *states)
{
	char err[512], idtext[ACKBOX_ID_STRLEN];
	for (size_t i = 0; i < n; i++) {
		int rc = ackbox_show(ab, &ids[i], state_of, &states[i], err, sizeof(err));
		ackbox_id_format(&ids[i], idtext);
		if (rc == ACKBOX_ERR_NOT_FOUND) {
			say("no message %s in the store (acked messages are deleted)", idtext);
			return EXIT_USAGE;
		}
		if (rc) {
			say("%s", err);
			return exit_for(rc);
		}
	}
	return EXIT_ALL_GOOD;
}

static int cmd_requeue(cli_args *a)
{
	ackbox *ab;
	ackbox_id *ids = NULL;
	ackbox_state *states = NULL;
	char err[512], idtext[ACKBOX_ID_STRLEN];
	int rc, code;

	if (a->given[OPT_ALL_FAILED] == (a->npos > 0))
		return usage_error("give message IDs or --all-failed (not both)");
	rc = parse_ids(a, &ids);
	if (rc)
		return rc;
	states = calloc(a->npos ? a->npos : 1, sizeof(*states));
	if (!states) {
		free(ids);
		say("out of memory");
		return EXIT_STORE;
	}
	rc = open_admin(a, &ab);
	if (rc) {
		free(states);
		free(ids);
		return rc;
	}
	code = stored_states(ab, ids, a->npos, states);
	for (size_t i = 0; i < a->npos && code == EXIT_ALL_GOOD; i++) {
		if (states[i] != ACKBOX_MSG_FAILED) {
			ackbox_id_format(&ids[i], idtext);
			say("message %s is %s, not failed: only FAILED messages can be requeued (ackbox "
			    "fail marks a stuck one FAILED)",
			    idtext, ackbox_state_name(states[i]));
			code = EXIT_USAGE;
		}
	}
	if (code == EXIT_ALL_GOOD) {
		rc = ackbox_requeue(ab, ids, a->npos, err, sizeof(err));
		if (rc < 0) {
			say("%s", err);
			code = exit_for(rc);
		} else {
			printf("requeued=%d\n", rc);
		}
	}
	ackbox_destroy(ab);
	free(states);
	free(ids);
	return code;
}

static int cmd_fail(cli_args *a)
{
	ackbox *ab;
	ackbox_id *ids = NULL;
	ackbox_state *states = NULL;
	char err[512], idtext[ACKBOX_ID_STRLEN];
	int rc, code, failed = 0;

	if (a->npos == 0)
		return usage_error("give the IDs of the messages to mark FAILED");
	rc = parse_ids(a, &ids);
	if (rc)
		return rc;
	states = calloc(a->npos, sizeof(*states));
	if (!states) {
		free(ids);
		say("out of memory");
		return EXIT_STORE;
	}
	rc = open_admin(a, &ab);
	if (rc) {
		free(states);
		free(ids);
		return rc;
	}
	code = stored_states(ab, ids, a->npos, states);
	for (size_t i = 0; i < a->npos && code == EXIT_ALL_GOOD; i++) {
		rc = ackbox_fail(ab, &ids[i], a->val[OPT_REASON], err, sizeof(err));
		if (rc == ACKBOX_ERR_NOT_FOUND) {
			/* acked or purged since the check: nothing left to fail */
			ackbox_id_format(&ids[i], idtext);
			say("message %s was acked or deleted meanwhile: not marked", idtext);
		} else if (rc < 0) {
			say("%s", err);
			code = exit_for(rc);
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
	return usage_error("purge deletes messages for good: pass --yes to confirm (stdin is not a "
	                   "terminal)");
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

	rc = parse_ids(a, &ids);
	if (rc)
		return rc;
	if (interactive && !isatty(STDIN_FILENO)) {
		free(ids);
		return refuse_without_yes();
	}
	states = calloc(a->npos, sizeof(*states));
	if (!states) {
		free(ids);
		say("out of memory");
		return EXIT_STORE;
	}
	rc = open_admin(a, &ab);
	if (rc) {
		free(states);
		free(ids);
		return rc;
	}
	code = stored_states(ab, ids, a->npos, states);
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
			say("nothing purged");
			goto done;
		}
	}
	if (code == EXIT_ALL_GOOD) {
		/* ids acked since the check are skipped: purged=N counts the others */
		rc = ackbox_purge_ids(ab, ids, a->npos, err, sizeof(err));
		if (rc < 0) {
			say("%s", err);
			code = exit_for(rc);
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

static int cmd_purge(cli_args *a)
{
	ackbox *ab;
	int64_t older_ms = 0;
	purge_count pc = {INT64_MAX, 0};
	char err[512];
	int rc, code = EXIT_ALL_GOOD;
	bool interactive = !a->given[OPT_YES];

	if (a->given[OPT_ID]) {
		if (a->given[OPT_STATE] || a->given[OPT_OLDER_THAN])
			return usage_error("--id names the messages: it excludes --state and "
			                   "--older-than");
		return purge_ids(a, interactive);
	}
	if (a->npos)
		return usage_error("unexpected argument '%s' (message IDs go after --id)", a->pos[0]);
	if (!a->given[OPT_STATE])
		return usage_error("--state failed or --id ID... is required");
	if (parse_state(a->val[OPT_STATE], true) < 0)
		return usage_error("--state: only FAILED messages are purged by state (--state "
		                   "failed; --id deletes given ones in any state), got '%s'",
		                   a->val[OPT_STATE]);
	if (a->given[OPT_OLDER_THAN]) {
		const char *v = a->val[OPT_OLDER_THAN];
		size_t l = strlen(v);
		/* a bare number would be milliseconds: too easy to get wrong here */
		if (l == 0 || (v[l - 1] >= '0' && v[l - 1] <= '9') ||
		    ackbox_parse_duration_ms(v, &older_ms) != 0)
			return usage_error("--older-than needs a duration with a unit (e.g. 30m, 12h, "
			                   "7d), got '%s'",
			                   v);
		pc.before_ms = ackbox_wall_ms() - older_ms;
	}
	if (interactive && !isatty(STDIN_FILENO))
		return refuse_without_yes();
	rc = open_admin(a, &ab);
	if (rc)
		return rc;
	if (interactive) {
		rc = ackbox_list(ab, ACKBOX_MSG_FAILED, 0, count_purgeable, &pc, err, sizeof(err));
		if (rc < 0) {
			say("%s", err);
			code = exit_for(rc);
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
			say("nothing purged");
			goto done;
		}
	}
	rc = ackbox_purge_failed(ab, pc.before_ms, err, sizeof(err));
	if (rc < 0) {
		say("%s", err);
		code = exit_for(rc);
		goto done;
	}
	printf("purged=%d\n", rc);
done:
	ackbox_destroy(ab);
	return code;
}

/* ------------------------------------------------------------------ */
/* main                                                                 */
/* ------------------------------------------------------------------ */

static void print_usage(FILE *f)
{
	fprintf(f, "usage:\n");
	for (int i = 0; i < CMD_COUNT; i++)
		fprintf(f, "  %s\n", commands[i].synopsis);
	fprintf(f, "  ackbox --help | ackbox COMMAND --help | ackbox --version\n");
}

static void print_help(void)
{
	printf("ackbox %s - store a message durably, publish it, delete it on confirm.\n\n",
	       ackbox_version());
	print_usage(stdout);
	printf("\nCommands:\n"
	       "  publish   store and publish N messages, wait for their confirms\n"
	       "  relay     deliver what the store holds\n"
	       "  status    counts by state, age of the oldest pending message\n"
	       "  list      stored messages with attempts and last error\n"
	       "  show      one stored message in full\n"
	       "  requeue   move FAILED messages back to RETRYING\n"
	       "  fail      mark messages FAILED whatever their state (a stuck message)\n"
	       "  purge     delete FAILED messages, or given ones whatever their state\n");
	fputs(common_help, stdout);
	printf("\nSee docs/cli.md and docs/operations.md.\n");
}

static void print_cmd_help(cli_cmd c)
{
	printf("usage: %s\n\n%s", commands[c].synopsis, commands[c].help);
	fputs(common_help, stdout);
}

static const struct option_def *find_option(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof(option_defs) / sizeof(option_defs[0]); i++)
		if (strlen(option_defs[i].name) == len && strncmp(option_defs[i].name, name, len) == 0)
			return &option_defs[i];
	return NULL;
}

/* Parses argv[2..] for command a->cmd. Returns -1 to go on, else an exit code. */
static int parse_args(int argc, char **argv, cli_args *a)
{
	bool only_positional = false;
	for (int i = 2; i < argc; i++) {
		const char *arg = argv[i], *eq, *value = NULL;
		const struct option_def *o;
		size_t len;

		if (only_positional || arg[0] != '-' || arg[1] == '\0') {
			int max = commands[a->cmd].max_positional;
			if (max >= 0 && a->npos >= (size_t)max)
				return max ? usage_error("unexpected argument '%s'", arg)
				           : usage_error("unexpected argument '%s' (%s takes no arguments)",
				                         arg, commands[a->cmd].name);
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
			return usage_error("unknown option '%s'", arg);
		eq = strchr(arg + 2, '=');
		len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
		o = find_option(arg + 2, len);
		if (!o)
			return usage_error("unknown option '%.*s'", (int)len + 2, arg);
		if (!(o->cmds & FOR(a->cmd)))
			return usage_error("option '--%s' does not apply to %s", o->name,
			                   commands[a->cmd].name);
		if (o->takes_value) {
			if (eq)
				value = eq + 1;
			else if (i + 1 < argc)
				value = argv[++i];
			else
				return usage_error("option '--%s' needs a value", o->name);
		} else if (eq) {
			return usage_error("option '--%s' takes no value", o->name);
		}
		if (o->id == OPT_SET) {
			a->sets[a->nsets++] = value;
		} else if (o->id == OPT_ID) {
			a->pos[a->npos++] = value;
		} else if (a->given[o->id]) {
			return usage_error("option '--%s' given twice", o->name);
		}
		a->given[o->id] = true;
		a->val[o->id] = value;
	}
	if (a->given[OPT_HELP]) {
		print_cmd_help(a->cmd);
		return EXIT_ALL_GOOD;
	}
	return -1;
}

int main(int argc, char **argv)
{
	cli_args a;
	int rc;

	if (argc < 2) {
		print_usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
	    strcmp(argv[1], "help") == 0) {
		if (argc > 2 && strcmp(argv[1], "help") == 0) {
			for (int i = 0; i < CMD_COUNT; i++) {
				if (strcmp(argv[2], commands[i].name) == 0) {
					print_cmd_help((cli_cmd)i);
					return EXIT_ALL_GOOD;
				}
			}
		}
		print_help();
		return EXIT_ALL_GOOD;
	}
	if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
		printf("ackbox %s\n", ackbox_version());
		return EXIT_ALL_GOOD;
	}
	memset(&a, 0, sizeof(a));
	a.cmd = CMD_COUNT;
	for (int i = 0; i < CMD_COUNT; i++)
		if (strcmp(argv[1], commands[i].name) == 0)
			a.cmd = (cli_cmd)i;
	if (a.cmd == CMD_COUNT) {
		fprintf(stderr, "ackbox: unknown command '%s' (see 'ackbox --help')\n", argv[1]);
		return EXIT_USAGE;
	}
	snprintf(cmd_name_buf, sizeof(cmd_name_buf), "ackbox %s", commands[a.cmd].name);
	cmd_name = cmd_name_buf;
	a.sets = calloc((size_t)argc, sizeof(*a.sets));
	a.pos = calloc((size_t)argc, sizeof(*a.pos));
	if (!a.sets || !a.pos) {
		fprintf(stderr, "ackbox: out of memory\n");
		return EXIT_STORE;
	}
	rc = parse_args(argc, argv, &a);
	if (rc < 0)
		rc = commands[a.cmd].run(&a);
	free(a.sets);
	free(a.pos);
	return rc;
}
