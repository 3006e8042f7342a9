/*
 * history-cost.c - what the attempt history costs the SQLite relay: N
 * messages published in batches of 500 through the in-process loopback
 * broker and flushed, with the store's history slots (ABI 1.6) and with the
 * same store registered as ABI 1.5 (the core then writes no notes), rounds
 * alternating. "nack" makes the broker nack the first N sends, so every
 * message leaves one note and is sent twice; "acked-after-a-failure" first
 * fails one message (max_attempts 1), so that the history table is not
 * empty while the others are acked. Figures in docs/performance.md.
 *
 *   cc -O2 -Iinclude -Ibrokers/loopback docs/bench/history-cost.c \
 *      -L$BUILD -lackbox -Wl,-rpath,$BUILD -o /tmp/history-cost
 *   /tmp/history-cost [N] [rounds] [ack|nack|ackfailed] [extra key=value ...]
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <ackbox/ackbox.h>
#include <ackbox/store.h>

#include "ackbox_loopback.h"

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + t.tv_nsec / 1e9;
}

/* CPU seconds of this process so far, every thread. */
static double cpu_s(void)
{
	struct rusage u;
	getrusage(RUSAGE_SELF, &u);
	return (double)u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + (double)u.ru_stime.tv_sec +
	       u.ru_stime.tv_usec / 1e6;
}

/* One round: msgs/s from the first publish to the end of the flush, and
 * the CPU microseconds per message (steadier on a shared machine). */
static double round_once(const char *scheme, int n, int nack, int argc, char **argv,
                         double *cpu_us)
{
	char dir[] = "/tmp/histcostXXXXXX", url[256], err[512], cmd[300];
	static char payload[256];
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab;
	ackbox_loopback *lb;
	ackbox_msg m[500];
	double t0, t1, c0;

	if (!mkdtemp(dir))
		abort();
	snprintf(url, sizeof(url), "%s://%s/outbox.db", scheme, dir);
	ackbox_loopback_reset();
	lb = ackbox_loopback_get("cost");
	if (nack == 1)
		ackbox_loopback_script(lb, ACKBOX_LB_NACK, n, 0);
	if (nack == 2) {
		ackbox_loopback_script(lb, ACKBOX_LB_NACK, 1, 0);
		ackbox_conf_set(c, "retry.max_attempts", "1", err, sizeof(err));
	}
	ackbox_conf_set(c, "store.url", url, err, sizeof(err));
	ackbox_conf_set(c, "transport.url", "loopback://cost", err, sizeof(err));
	ackbox_conf_set(c, "retry.backoff.initial", "1ms", err, sizeof(err));
	ackbox_conf_set(c, "retry.backoff.max", "1ms", err, sizeof(err));
	ackbox_conf_set(c, "log.level", "error", err, sizeof(err));
	for (int i = 0; i < argc; i++) {
		char kv[256], *eq;
		snprintf(kv, sizeof(kv), "%s", argv[i]);
		if (!(eq = strchr(kv, '=')))
			continue;
		*eq = '\0';
		if (ackbox_conf_set(c, kv, eq + 1, err, sizeof(err)) != 0) {
			fprintf(stderr, "%s\n", err);
			exit(2);
		}
	}
	if (ackbox_new(&ab, c, err, sizeof(err)) != 0) {
		fprintf(stderr, "ackbox_new: %s\n", err);
		exit(1);
	}
	memset(m, 0, sizeof(m));
	for (int i = 0; i < 500; i++) {
		m[i].topic = "orders";
		m[i].payload = payload;
		m[i].payload_len = sizeof(payload);
	}
	if (nack == 2 && (ackbox_publish(ab, m, NULL, err, sizeof(err)) != 0 ||
	                  ackbox_flush(ab, 60000) != 0)) {
		fprintf(stderr, "the failed message: %s\n", err);
		exit(1);
	}
	t0 = now_s();
	c0 = cpu_s();
	for (int done = 0; done < n; done += 500) {
		size_t k = (size_t)(n - done < 500 ? n - done : 500);
		if (ackbox_publish_batch(ab, m, k, NULL, err, sizeof(err)) != 0) {
			fprintf(stderr, "publish: %s\n", err);
			exit(1);
		}
	}
	if (ackbox_flush(ab, 600000) != 0) {
		fprintf(stderr, "flush timed out\n");
		exit(1);
	}
	t1 = now_s();
	*cpu_us = (cpu_s() - c0) * 1e6 / n;
	if (ackbox_loopback_distinct(lb) != (size_t)n + (nack == 2)) {
		fprintf(stderr, "%zu of %d delivered\n", ackbox_loopback_distinct(lb), n);
		exit(1);
	}
	ackbox_destroy(ab);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd) != 0)
		perror("rm");
	return n / (t1 - t0);
}

int main(int argc, char **argv)
{
	static ackbox_store_ops old;
	static const char *const no_alias[] = {NULL};
	int n = argc > 1 ? atoi(argv[1]) : 100000;
	int rounds = argc > 2 ? atoi(argv[2]) : 3;
	int nack = argc > 3 && strcmp(argv[3], "nack") == 0     ? 1
	           : argc > 3 && strcmp(argv[3], "ackfailed") == 0 ? 2
	                                                            : 0;
	char err[256];
	const ackbox_store_ops *real = ackbox_store_lookup("sqlite");

	/* the same store as an ABI 1.5 table: no history slots */
	old = *real;
	old.abi_version = ACKBOX_ABI_VERSION(1, 5);
	old.struct_size =
	    (uint32_t)(offsetof(ackbox_store_ops, blocked_keys) + sizeof(old.blocked_keys));
	old.scheme = "sqlite15";
	old.aliases = no_alias;
	if (ackbox_store_register(&old, err, sizeof(err)) != 0) {
		fprintf(stderr, "register: %s\n", err);
		return 1;
	}
	printf("%d messages of 256 bytes, %s, %d rounds\n", n,
	       nack == 1 ? "each nacked once" : nack == 2 ? "acked after a failure" : "acked", rounds);
	for (int r = 0; r < rounds; r++) {
		int first = r % 2;
		for (int k = 0; k < 2; k++) {
			int hist = (k == 0) != first;
			double cpu, rate = round_once(hist ? "sqlite" : "sqlite15", n, nack,
			                              argc > 4 ? argc - 4 : 0, argv + (argc > 4 ? 4 : argc),
			                              &cpu);
			printf("round %d  %-12s %8.0f msg/s  %6.1f us CPU/msg\n", r + 1,
			       hist ? "history" : "no history", rate, cpu);
			fflush(stdout);
		}
	}
	return 0;
}
