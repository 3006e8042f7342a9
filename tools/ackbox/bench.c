/*
 * bench.c - `ackbox bench`: runs the benchmark (examples/bench, the
 * ackbox-bench binary) with the arguments as given. It is a program of its
 * own because it links the brokers' client libraries to measure them raw;
 * the build puts it next to ackbox and the install does too, so it is found
 * in the directory of the running ackbox (ACKBOX_BENCH names another).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

/* Where ackbox-bench is: $ACKBOX_BENCH, else next to this executable. */
static int bench_path(char *out, size_t n)
{
	const char *env = getenv("ACKBOX_BENCH");
	char self[PATH_MAX], *slash;
	ssize_t len;
	if (env && *env) {
		snprintf(out, n, "%s", env);
		return 0;
	}
	len = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (len <= 0) {
		cli_say("cannot tell where ackbox itself is (/proc/self/exe: %s); set ACKBOX_BENCH "
		        "to the ackbox-bench binary",
		        strerror(errno));
		return -1;
	}
	self[len] = '\0';
	slash = strrchr(self, '/');
	*slash = '\0';
	snprintf(out, n, "%s/ackbox-bench", self);
	return 0;
}

int cli_bench(cli_args *a)
{
	char path[PATH_MAX + 16];
	char **argv = calloc((size_t)a->raw_argc + 2, sizeof(*argv));
	if (!argv) {
		cli_say("out of memory");
		return EXIT_USAGE;
	}
	if (bench_path(path, sizeof(path)) != 0) {
		free(argv);
		return EXIT_USAGE;
	}
	argv[0] = "ackbox-bench";
	for (int i = 0; i < a->raw_argc; i++)
		argv[i + 1] = a->raw_argv[i];
	fflush(NULL);
	execv(path, argv);
	cli_say("cannot run the benchmark '%s': %s (ackbox-bench is built with "
	        "ACKBOX_BUILD_EXAMPLES=ON and installed next to ackbox; ACKBOX_BENCH names another)",
	        path, strerror(errno));
	free(argv);
	return EXIT_USAGE;
}
