/*
 * output.c - what the ackbox command says: one-line messages on stderr, the
 * progress line on a terminal, times and ages, JSON and human renderings of
 * a stored message; and the stop signals every long command watches.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ackbox/ackbox.h> /* ackbox_escape */
#include <ackbox/plugin.h> /* ackbox_mono_ms */

#include "cli.h"

#define PROGRESS_INTERVAL_MS 200 /* at most 5 updates a second */

const char *cli_name = "ackbox";
static char name_buf[32];

void cli_set_name(const char *cmd)
{
	snprintf(name_buf, sizeof(name_buf), "ackbox %s", cmd);
	cli_name = name_buf;
}

/* ------------------------------------------------------------------ */
/* Messages on stderr, and the progress line                            */
/* ------------------------------------------------------------------ */

/* stderr is shared by the main thread (progress) and ackbox's log callback. */
static pthread_mutex_t stderr_mtx = PTHREAD_MUTEX_INITIALIZER;
static bool progress_line_shown;

/* Locks: stderr_mtx. */
static void clear_progress_locked(void)
{
	if (progress_line_shown) {
		fputs("\r\033[K", stderr);
		progress_line_shown = false;
	}
}

const char *cli_esc(const char *s, char *buf, size_t size)
{
	if (!s)
		return "-";
	ackbox_escape(s, strlen(s), buf, size);
	return buf;
}

/* Every line is escaped whole: a topic, URL or broker text in it cannot
 * reach the terminal as a control sequence. */
void cli_say(const char *fmt, ...)
{
	char raw[2048], shown[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(raw, sizeof(raw), fmt, ap);
	va_end(ap);
	ackbox_escape(raw, strlen(raw), shown, sizeof(shown));
	pthread_mutex_lock(&stderr_mtx);
	clear_progress_locked();
	fprintf(stderr, "%s: %s\n", cli_name, shown);
	fflush(stderr);
	pthread_mutex_unlock(&stderr_mtx);
}

int cli_usage_error(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cli_say("%s (see '%s --help')", msg, cli_name);
	return EXIT_USAGE;
}

void cli_progress_init(cli_progress *p, uint64_t work)
{
	p->on = work >= CLI_PROGRESS_MIN_MESSAGES && isatty(STDERR_FILENO);
	p->last_ms = 0;
}

void cli_progress_show(cli_progress *p, const char *fmt, ...)
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

void cli_progress_end(cli_progress *p)
{
	if (!p->on)
		return;
	pthread_mutex_lock(&stderr_mtx);
	clear_progress_locked();
	fflush(stderr);
	pthread_mutex_unlock(&stderr_mtx);
}

/* Any ackbox thread, never under an ackbox lock. */
void cli_on_log(ackbox_log_level level, const char *component, const char *msg, void *opaque)
{
	(void)opaque;
	/* The report callback names every FAILED message with its id; the
	 * relay's own line for it would only repeat that. */
	if (strcmp(component, "relay") == 0 && strncmp(msg, "message to '", 12) == 0 &&
	    strstr(msg, "FAILED"))
		return;
	cli_say("%s%s: %s",
	        level <= ACKBOX_LOG_ERROR  ? "error: "
	        : level <= ACKBOX_LOG_WARN ? "warning: "
	                                   : "",
	        component, msg);
}

/* ------------------------------------------------------------------ */
/* Signals                                                              */
/* ------------------------------------------------------------------ */

volatile sig_atomic_t cli_stop_signal;

static void on_stop_signal(int sig)
{
	cli_stop_signal = sig;
}

void cli_catch_stop_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop_signal;
	sigemptyset(&sa.sa_mask);
	/* no SA_RESTART: a read of stdin returns EINTR at once; the next
	 * signal is not caught, so a stop that hangs can still be forced */
	sa.sa_flags = SA_RESETHAND;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

void cli_die_of_stop_signal(void)
{
	int sig = cli_stop_signal;
	if (!sig)
		return;
	signal(sig, SIG_DFL);
	raise(sig);
}

/* ------------------------------------------------------------------ */
/* Times                                                                */
/* ------------------------------------------------------------------ */

double cli_rate(uint64_t n, double seconds)
{
	return seconds > 0 ? (double)n / seconds : 0;
}

void cli_fmt_time(int64_t ms, bool with_ms, char *out, size_t n)
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

void cli_fmt_age(int64_t ms, char *out, size_t n)
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

/* ------------------------------------------------------------------ */
/* JSON                                                                 */
/* ------------------------------------------------------------------ */

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

void cli_json_time_fields(const char *name, int64_t ms)
{
	char t[48];
	if (ms <= 0) {
		printf("\"%s_ms\":null,\"%s\":null", name, name);
		return;
	}
	cli_fmt_time(ms, true, t, sizeof(t));
	printf("\"%s_ms\":%" PRId64 ",\"%s\":", name, ms, name);
	json_cstr(t);
}

void cli_json_message(const ackbox_stored *m, bool full)
{
	char id[ACKBOX_ID_STRLEN];
	ackbox_id_format(&m->id, id);
	printf("{\"id\":\"%s\",\"state\":\"%s\",\"topic\":", id, ackbox_state_name(m->state));
	json_cstr(m->topic);
	printf(",\"attempts\":%d,", m->attempts);
	cli_json_time_fields("created", m->created_ms);
	putchar(',');
	cli_json_time_fields("updated", m->updated_ms);
	putchar(',');
	/* a FAILED message is not due: it waits for a requeue */
	cli_json_time_fields("due", m->state == ACKBOX_MSG_FAILED ? 0 : m->due_ms);
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
		/* null when the store keeps no history, [] when there is none */
		printf(",\"attempts_history\":%s", m->history_kept ? "[" : "null");
		for (size_t i = 0; m->history_kept && i < m->history_count; i++) {
			const ackbox_attempt *a = &m->history[i];
			printf("%s{", i ? "," : "");
			cli_json_time_fields("at", a->at_ms);
			printf(",\"outcome\":\"%s\",\"code\":%d,\"text\":",
			       ackbox_outcome_name(a->outcome), a->code);
			json_cstr(a->text ? a->text : "");
			putchar('}');
		}
		if (m->history_kept)
			putchar(']');
	}
	putchar('}');
}

/* Valid UTF-8 without control characters other than newline, tab, CR. */
static bool bytes_are_text(const unsigned char *s, size_t len)
{
	if (!utf8_valid(s, len))
		return false;
	for (size_t i = 0; i < len; i++)
		if (s[i] < 0x20 && s[i] != '\n' && s[i] != '\t' && s[i] != '\r')
			return false;
	return true;
}

void cli_print_bytes_inline(const void *p, size_t len, size_t max)
{
	if (!bytes_are_text(p, len))
		printf("%zu bytes, not text:\n", len);
	cli_print_bytes_human(p, len, max);
}

void cli_print_bytes_human(const void *p, size_t len, size_t max)
{
	const unsigned char *s = p;
	bool text = bytes_are_text(s, len);
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
