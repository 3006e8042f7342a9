/*
 * util.c - small shared pieces of the core: error strings, clocks, value
 * parsing, logging and the test-only crash points.
 */
#define _GNU_SOURCE
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

const char *ackbox_version(void)
{
	return ACKBOX_VERSION_STRING;
}

const char *ackbox_strerror(int err)
{
	switch (err) {
	case ACKBOX_OK: return "success";
	case ACKBOX_ERR_INVALID: return "invalid argument";
	case ACKBOX_ERR_NOMEM: return "out of memory";
	case ACKBOX_ERR_UNKNOWN_KEY: return "unknown configuration key";
	case ACKBOX_ERR_BAD_VALUE: return "bad configuration value";
	case ACKBOX_ERR_BAD_URL: return "malformed URL";
	case ACKBOX_ERR_UNKNOWN_SCHEME: return "unknown URL scheme";
	case ACKBOX_ERR_NOT_BUILT: return "plugin not built into this ackbox";
	case ACKBOX_ERR_TOO_LARGE: return "message too large";
	case ACKBOX_ERR_TIMEOUT: return "timed out";
	case ACKBOX_ERR_CLOSED: return "handle is closing";
	case ACKBOX_ERR_NOT_FOUND: return "no such message";
	case ACKBOX_ERR_FULL: return "the store is at its bound (store.max_messages/max_bytes)";
	case ACKBOX_ERR_STORE: return "store I/O error";
	case ACKBOX_ERR_STORE_CORRUPT: return "store is corrupt or not an ackbox store";
	case ACKBOX_ERR_STORE_LOCKED: return "store is locked by another writer";
	case ACKBOX_ERR_STORE_READONLY: return "store is read-only";
	case ACKBOX_ERR_STORE_FULL: return "store disk is full";
	case ACKBOX_ERR_STORE_SCHEMA: return "store has a foreign or newer schema";
	case ACKBOX_ERR_TRANSPORT: return "broker unreachable or transport failure";
	case ACKBOX_ERR_ABI: return "plugin ABI mismatch";
	case ACKBOX_ERR_INTERNAL: return "internal error";
	default: return "unknown error";
	}
}

const char *ackbox_state_name(ackbox_state s)
{
	switch (s) {
	case ACKBOX_MSG_SENDING: return "sending";
	case ACKBOX_MSG_RETRYING: return "retrying";
	case ACKBOX_MSG_FAILED: return "failed";
	case ACKBOX_MSG_ACKED: return "acked";
	case ACKBOX_MSG_DROPPED: return "dropped";
	}
	return "unknown";
}

const char *ackbox_outcome_name(ackbox_outcome oc)
{
	switch (oc) {
	case ACKBOX_OUTCOME_NONE: return "none";
	case ACKBOX_OUTCOME_NACK: return "nacked";
	case ACKBOX_OUTCOME_UNROUTABLE: return "unroutable";
	case ACKBOX_OUTCOME_TIMEOUT: return "timed-out";
	case ACKBOX_OUTCOME_ERROR: return "error";
	case ACKBOX_OUTCOME_IN_DOUBT: return "in-doubt";
	case ACKBOX_OUTCOME_DISCONNECT: return "disconnect-blamed";
	case ACKBOX_OUTCOME_INVALID: return "invalid";
	case ACKBOX_OUTCOME_OPERATOR: return "operator";
	case ACKBOX_OUTCOME_NOT_SENT: return "not-sent";
	}
	return "unknown";
}

void ackbox_errstr_set(char *errstr, size_t errstr_size, const char *fmt, ...)
{
	va_list ap;
	if (!errstr || errstr_size == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(errstr, errstr_size, fmt, ap);
	va_end(ap);
}

int64_t ackbox_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t abx_mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void abx_abs_deadline_us(struct timespec *ts, int64_t us)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += us / 1000000;
	ts->tv_nsec += (long)(us % 1000000) * 1000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

int64_t ackbox_wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ackbox_parse_duration_ms(const char *text, int64_t *out_ms)
{
	char *end;
	long long v;
	int64_t mul = 1;

	if (!text || !out_ms)
		return ACKBOX_ERR_INVALID;
	while (isspace((unsigned char)*text))
		text++;
	if (!isdigit((unsigned char)*text))
		return ACKBOX_ERR_BAD_VALUE;
	errno = 0;
	v = strtoll(text, &end, 10);
	if (errno)
		return ACKBOX_ERR_BAD_VALUE;
	if (strcmp(end, "") == 0 || strcmp(end, "ms") == 0)
		mul = 1;
	else if (strcmp(end, "s") == 0)
		mul = 1000;
	else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
		mul = 60000;
	else if (strcmp(end, "h") == 0)
		mul = 3600000;
	else if (strcmp(end, "d") == 0)
		mul = 86400000;
	else
		return ACKBOX_ERR_BAD_VALUE;
	if (v > INT64_MAX / mul)
		return ACKBOX_ERR_BAD_VALUE;
	*out_ms = v * mul;
	return 0;
}

int ackbox_parse_bool(const char *text, int *out)
{
	static const char *const yes[] = {"true", "1", "yes", "on"};
	static const char *const no[] = {"false", "0", "no", "off"};
	if (!text || !out)
		return ACKBOX_ERR_INVALID;
	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(text, yes[i]) == 0) {
			*out = 1;
			return 0;
		}
		if (strcasecmp(text, no[i]) == 0) {
			*out = 0;
			return 0;
		}
	}
	return ACKBOX_ERR_BAD_VALUE;
}

static ackbox_log_level log_threshold(const ackbox_conf *conf)
{
	const char *l = conf ? ackbox_conf_get(conf, "log.level") : NULL;
	if (!l)
		return ACKBOX_LOG_WARN;
	if (strcmp(l, "error") == 0)
		return ACKBOX_LOG_ERROR;
	if (strcmp(l, "info") == 0)
		return ACKBOX_LOG_INFO;
	if (strcmp(l, "debug") == 0)
		return ACKBOX_LOG_DEBUG;
	return ACKBOX_LOG_WARN;
}

static void emit(const ackbox_conf *conf, ackbox_log_level lvl, const char *component,
                 const char *text)
{
	if (conf && conf->log_cb) {
		conf->log_cb(lvl, component, text, conf->log_opaque);
		return;
	}
	fprintf(stderr, "ackbox %s %s: %s\n",
	        lvl <= ACKBOX_LOG_ERROR ? "error" : lvl <= ACKBOX_LOG_WARN ? "warning"
	                                        : lvl <= ACKBOX_LOG_INFO  ? "info"
	                                                                  : "debug",
	        component, text);
}

/*
 * Lines logged while this thread holds an ackbox lock (a store logs a
 * damaged row inside a claim the relay makes under the store lock) wait
 * here and reach the log callback once the lock is released: a callback
 * that calls back into ackbox must not find the lock taken.
 */
typedef struct held_line {
	struct held_line *next;
	const ackbox_conf *conf;
	ackbox_log_level lvl;
	char component[32];
	char text[];
} held_line;

static _Thread_local int tl_hold;
static _Thread_local held_line *tl_head, *tl_tail;

void abx_log_hold(void)
{
	tl_hold++;
}

void abx_log_release(void)
{
	assert(tl_hold > 0);
	if (--tl_hold > 0)
		return;
	while (tl_head) {
		held_line *l = tl_head;
		tl_head = l->next;
		if (!tl_head)
			tl_tail = NULL;
		emit(l->conf, l->lvl, l->component, l->text);
		free(l);
	}
}

void abx_logv(const ackbox_conf *conf, ackbox_log_level lvl, const char *component,
              const char *fmt, va_list ap)
{
	char buf[1024];
	if (lvl > log_threshold(conf))
		return;
	vsnprintf(buf, sizeof(buf), fmt, ap);
	if (tl_hold) {
		size_t n = strlen(buf) + 1;
		held_line *l = malloc(sizeof(*l) + n);
		if (l) {
			l->next = NULL;
			l->conf = conf;
			l->lvl = lvl;
			snprintf(l->component, sizeof(l->component), "%s", component);
			memcpy(l->text, buf, n);
			if (tl_tail)
				tl_tail->next = l;
			else
				tl_head = l;
			tl_tail = l;
		}
		return; /* out of memory: the line is lost, never logged under a lock */
	}
	emit(conf, lvl, component, buf);
}

void abx_log(const ackbox_conf *conf, ackbox_log_level lvl, const char *component, const char *fmt,
             ...)
{
	va_list ap;
	va_start(ap, fmt);
	abx_logv(conf, lvl, component, fmt, ap);
	va_end(ap);
}

void ackbox_store_log(const ackbox_conf *conf, ackbox_log_level level, const char *component,
                      const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	abx_logv(conf, level, component, fmt, ap);
	va_end(ap);
}

#ifdef ACKBOX_CRASH_POINTS
/*
 * Test-only: when ACKBOX_CRASH_AT names this point, die here as kill -9
 * would (no atexit handlers, no flushing of stdio).
 */
void abx_crash_point(const char *name)
{
	const char *at = getenv("ACKBOX_CRASH_AT");
	if (at && strcmp(at, name) == 0) {
		static const char msg[] = "ackbox: crash point reached\n";
		if (write(2, msg, sizeof(msg) - 1) < 0) {
			/* nothing to do: we are about to die anyway */
		}
		_exit(137);
	}
}
#endif
