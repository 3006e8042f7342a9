/*
 * testutil.h - small helpers shared by the Criterion tests: fixture
 * settings, temporary directories, and bounded waiting on a condition.
 * Header-only so every test binary stays one file plus this.
 */
#ifndef ACKBOX_TESTUTIL_H
#define ACKBOX_TESTUTIL_H

#define _GNU_SOURCE
#ifdef ACKBOX_CRITERION_SHIM
#include "crshim.h" /* the ThreadSanitizer pass: Criterion cannot run under TSan */
#else
#include <criterion/criterion.h>
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ackbox/ackbox.h>

static inline long long tu_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline long long tu_wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Reads KEY from the env file a broker fixture wrote
 * ($ACKBOX_FIXTURE_DIR/<fixture>/env). A missing fixture is a failed test,
 * never a skipped one. Returns a buffer of the calling thread, valid until
 * that thread's next call (tests call it from several threads).
 */
static inline const char *tu_fixture(const char *fixture, const char *key)
{
	static _Thread_local char value[1200]; /* a whole line fits: no truncation */
	const char *dir = getenv("ACKBOX_FIXTURE_DIR");
	char path[1024], line[1200];
	size_t klen = strlen(key);
	cr_assert(dir != NULL, "ACKBOX_FIXTURE_DIR is not set: run this test through ctest");
	snprintf(path, sizeof(path), "%s/%s/env", dir, fixture);
	FILE *f = fopen(path, "r");
	cr_assert(f != NULL, "broker fixture '%s' did not start: %s missing (%s)", fixture, path,
	          strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, key, klen) == 0 && line[klen] == '=') {
			snprintf(value, sizeof(value), "%s", line + klen + 1);
			value[strcspn(value, "\r\n")] = '\0';
			fclose(f);
			return value;
		}
	}
	fclose(f);
	cr_assert_fail("fixture '%s' env has no %s", fixture, key);
	return NULL;
}

/* A fresh directory under $ACKBOX_TEST_TMP (or /tmp); caller frees. */
static inline char *tu_tmpdir(const char *tag)
{
	const char *base = getenv("ACKBOX_TEST_TMP");
	char tmpl[1024];
	if (!base)
		base = "/tmp";
	mkdir(base, 0755); /* traversable: some tests drop privileges */
	snprintf(tmpl, sizeof(tmpl), "%s/%s-XXXXXX", base, tag);
	char *d = mkdtemp(tmpl);
	cr_assert(d != NULL, "mkdtemp %s: %s", tmpl, strerror(errno));
	return strdup(d);
}

static inline void tu_rmrf(const char *dir)
{
	char cmd[1200];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", dir);
}

/* Waits until expr is true, checking every 2 ms, for at most ms; yields the result. */
#define TU_WAIT_UNTIL(expr, ms)                                                                    \
	({                                                                                         \
		long long tu_deadline_ = tu_mono_ms() + (ms);                                      \
		int tu_ok_ = 0;                                                                    \
		while (!(tu_ok_ = !!(expr)) && tu_mono_ms() < tu_deadline_) {                      \
			struct timespec tu_ts_ = {0, 2 * 1000 * 1000};                             \
			nanosleep(&tu_ts_, NULL);                                                  \
		}                                                                                  \
		tu_ok_;                                                                            \
	})

/* How much slower a sanitizer build runs: bounds on time that must still
 * hold there are multiplied by it. */
#ifdef ACKBOX_TEST_SANITIZED
#define TU_SLOW 4
#else
#define TU_SLOW 1
#endif

/* Sets a key or fails the test with the errstr. */
#define TU_SET(conf, k, v)                                                                         \
	do {                                                                                       \
		char tu_err_[256];                                                                 \
		int tu_rc_ = ackbox_conf_set((conf), (k), (v), tu_err_, sizeof(tu_err_));          \
		cr_assert_eq(tu_rc_, 0, "conf %s=%s: %s", (k), (v), tu_err_);                      \
	} while (0)

#endif /* ACKBOX_TESTUTIL_H */
