/*
 * kafka-mock-cluster - librdkafka's mock cluster (a real Kafka-protocol
 * broker inside librdkafka; there is no Kafka package on Debian) served on
 * loopback for other processes: the CLI tests, kcat, a demo.
 *
 *   kafka-mock-cluster [--brokers N] [--max-seconds S]
 *
 * Prints the bootstrap list ("127.0.0.1:port,...") on one line, then serves
 * until SIGINT/SIGTERM or S seconds (default 3600). SIGUSR1 sets every broker
 * down, SIGUSR2 sets them up again (outages for tests in other processes).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

int main(int argc, char **argv)
{
	int brokers = 3, max_s = 3600;
	char err[512];
	sigset_t set;
	struct timespec ts;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--brokers") == 0 && i + 1 < argc)
			brokers = atoi(argv[++i]);
		else if (strcmp(argv[i], "--max-seconds") == 0 && i + 1 < argc)
			max_s = atoi(argv[++i]);
		else {
			fprintf(stderr, "usage: kafka-mock-cluster [--brokers N] [--max-seconds S]\n");
			return 2;
		}
	}
	if (brokers < 1 || max_s < 1) {
		fprintf(stderr, "kafka-mock-cluster: --brokers and --max-seconds must be >= 1\n");
		return 2;
	}
	/* block the signals before librdkafka starts threads, then wait for them */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
	if (!rk) {
		fprintf(stderr, "kafka-mock-cluster: %s\n", err);
		return 1;
	}
	rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
	if (!mc) {
		fprintf(stderr, "kafka-mock-cluster: cannot create a mock cluster\n");
		rd_kafka_destroy(rk);
		return 1;
	}
	printf("%s\n", rd_kafka_mock_cluster_bootstraps(mc));
	fflush(stdout);

	ts.tv_sec = max_s;
	ts.tv_nsec = 0;
	for (;;) {
		int sig = sigtimedwait(&set, NULL, &ts);
		if (sig == SIGUSR1 || sig == SIGUSR2) {
			for (int b = 1; b <= brokers; b++) {
				if (sig == SIGUSR1)
					rd_kafka_mock_broker_set_down(mc, b);
				else
					rd_kafka_mock_broker_set_up(mc, b);
			}
			fprintf(stderr, "kafka-mock-cluster: brokers %s\n",
			        sig == SIGUSR1 ? "down" : "up");
			continue; /* the bound restarts: fine for a test helper */
		}
		break; /* SIGINT, SIGTERM or the time bound */
	}
	rd_kafka_mock_cluster_destroy(mc);
	rd_kafka_destroy(rk);
	return 0;
}
