/*
 * crshim.c - the runner behind crshim.h: runs every registered test (or
 * those matching --filter SUITE/NAME, '*' as a wildcard at the end) in a
 * forked child with its suite's .init and .fini and a timeout, and prints a
 * Criterion-like summary. Exit status 0 only if every test passed.
 */
#define _GNU_SOURCE
#include "crshim.h"

#include <fnmatch.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_TESTS 512
#define MAX_SUITES 64

static struct crshim_test *tests[MAX_TESTS];
static int ntests;
static struct crshim_suite *suites[MAX_SUITES];
static int nsuites;
static jmp_buf fail_jmp;
static bool in_test;

void crshim_register_test(struct crshim_test *t)
{
	if (ntests < MAX_TESTS)
		tests[ntests++] = t;
}

void crshim_register_suite(struct crshim_suite *s)
{
	if (nsuites < MAX_SUITES)
		suites[nsuites++] = s;
}

void crshim_fail(const char *file, int line, const char *what, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "[----] %s:%d: Assertion Failed: %s\n", file, line, what);
	if (fmt && strcmp(fmt, " ") != 0) {
		fprintf(stderr, "[----]  ");
		va_start(ap, fmt);
		vfprintf(stderr, fmt, ap);
		va_end(ap);
		fprintf(stderr, "\n");
	}
	fflush(stderr);
	if (in_test)
		longjmp(fail_jmp, 1);
	_exit(1);
}

void crshim_log(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "[----] ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
}

static struct crshim_suite *suite_of(const struct crshim_test *t)
{
	for (int i = 0; i < nsuites; i++)
		if (strcmp(suites[i]->name, t->suite) == 0)
			return suites[i];
	return NULL;
}

/* In the child: init, the test, fini; exit 0 only if the test got through. */
static void run_child(const struct crshim_test *t, const struct crshim_suite *s)
{
	void (*init)(void) = t->init ? t->init : s ? s->init : NULL;
	void (*fini)(void) = t->fini ? t->fini : s ? s->fini : NULL;
	volatile int failed = 0; /* set after the longjmp */
	in_test = true;
	if (setjmp(fail_jmp) == 0) {
		if (init)
			init();
		t->fn();
	} else {
		failed = 1;
	}
	in_test = false;
	if (fini)
		fini();
	fflush(NULL);
	_exit(failed);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int crshim_run(int argc, char **argv)
{
	const char *filter = NULL;
	int passed = 0, failed = 0;
	for (int i = 1; i < argc; i++) {
		if (strncmp(argv[i], "--filter=", 9) == 0)
			filter = argv[i] + 9;
		else if (strcmp(argv[i], "--filter") == 0 && i + 1 < argc)
			filter = argv[++i];
		/* --jobs=1, --verbose: this runner is serial and verbose */
	}
	fprintf(stderr, "[====] crshim: %d tests (the part of Criterion's API in crshim.h)\n", ntests);
	for (int i = 0; i < ntests; i++) {
		const struct crshim_test *t = tests[i];
		const struct crshim_suite *s = suite_of(t);
		char full[512];
		double timeout = t->timeout > 0 ? t->timeout : s && s->timeout > 0 ? s->timeout : 0;
		double t0 = now_s();
		int status = 0;
		pid_t pid;

		snprintf(full, sizeof(full), "%s/%s", t->suite, t->name);
		if (filter && fnmatch(filter, full, 0) != 0)
			continue;
		if (t->disabled || (s && s->disabled))
			continue;
		fprintf(stderr, "[RUN ] %s::%s\n", t->suite, t->name);
		fflush(NULL);
		pid = fork();
		if (pid < 0) {
			perror("fork");
			return 2;
		}
		if (pid == 0)
			run_child(t, s);
		for (;;) {
			pid_t w = waitpid(pid, &status, WNOHANG);
			if (w == pid)
				break;
			if (timeout > 0 && now_s() - t0 > timeout) {
				kill(pid, SIGKILL);
				waitpid(pid, &status, 0);
				fprintf(stderr, "[----] timed out after %.0f s\n", timeout);
				status = 1 << 8;
				break;
			}
			struct timespec ts = {0, 10 * 1000 * 1000};
			nanosleep(&ts, NULL);
		}
		if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
			passed++;
			fprintf(stderr, "[PASS] %s::%s: (%.2fs)\n", t->suite, t->name, now_s() - t0);
		} else {
			failed++;
			fprintf(stderr, "[FAIL] %s::%s: (%.2fs)%s\n", t->suite, t->name, now_s() - t0,
			        WIFSIGNALED(status) ? " (crashed)" : "");
		}
	}
	fprintf(stderr, "[====] Synthesis: Tested: %d | Passing: %d | Failing: %d\n", passed + failed,
	        passed, failed);
	return failed ? 1 : 0;
}

/* The transport conformance library calls crshim_run from its own entry
 * point (tests/transport_conformance/). */
#ifndef CRSHIM_NO_MAIN
int main(int argc, char **argv)
{
	return crshim_run(argc, argv);
}
#endif
