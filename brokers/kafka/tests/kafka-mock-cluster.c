/*
 * kafka-mock-cluster - librdkafka's mock cluster (a real Kafka-protocol
 * broker inside librdkafka; there is no Kafka package on Debian) served on
 * loopback for other processes: the CLI tests, kcat, a demo.
 *
 *   kafka-mock-cluster [--brokers N] [--max-seconds S] [--behind-proxy]
 *
 * Prints the bootstrap list ("127.0.0.1:port,...") on one line, then serves
 * until SIGINT/SIGTERM or S seconds (default 3600). SIGUSR1 sets every broker
 * down, SIGUSR2 sets them up again (outages for tests in other processes).
 *
 * --behind-proxy: each broker listens on 127.0.0.2 and advertises 127.0.0.1
 * at the same port, where a proxy (tests/tools/faultproxy.py, routes
 * 127.0.0.1:P=127.0.0.2:P) forwards to it. Kafka clients connect to the
 * addresses the cluster advertises in its metadata, not to the bootstrap
 * address they were given, so a proxy in front of a plain cluster would see
 * only the first request. The mock takes no listener address, so this file
 * wraps bind() and getsockname() for the cluster's listening sockets (the
 * only sockets this process binds; exported, since the build hides symbols
 * by default). The second line printed is then the
 * proxy's routes, space separated.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

/* ---- --behind-proxy: listen on LISTEN_ADDR, advertise ADVERTISED_ADDR ---- */

#define ADVERTISED_ADDR 0x7f000001u /* 127.0.0.1 */
#define LISTEN_ADDR 0x7f000002u     /* 127.0.0.2 */
#define MAX_LISTENERS 64

static int behind_proxy;
static int moved_fds[MAX_LISTENERS];
static int nmoved;

static int is_moved(int fd)
{
	for (int i = 0; i < nmoved; i++)
		if (moved_fds[i] == fd)
			return 1;
	return 0;
}

/* librdkafka binds each mock broker's listener to 127.0.0.1 (port 0 at
 * first, its own port again when set up after a down): move it to
 * 127.0.0.2, same port. */
__attribute__((visibility("default"))) int bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	static int (*real_bind)(int, const struct sockaddr *, socklen_t);
	if (!real_bind)
		real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
	if (behind_proxy && sa && sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in) &&
	    ((const struct sockaddr_in *)sa)->sin_addr.s_addr == htonl(ADVERTISED_ADDR)) {
		struct sockaddr_in moved = *(const struct sockaddr_in *)sa;
		moved.sin_addr.s_addr = htonl(LISTEN_ADDR);
		int rc = real_bind(fd, (struct sockaddr *)&moved, sizeof(moved));
		if (rc == 0 && !is_moved(fd) && nmoved < MAX_LISTENERS)
			moved_fds[nmoved++] = fd;
		return rc;
	}
	return real_bind(fd, sa, len);
}

/* ...and report it as bound to 127.0.0.1, which the cluster then advertises. */
__attribute__((visibility("default"))) int getsockname(int fd, struct sockaddr *sa,
                                                      socklen_t *len)
{
	static int (*real_getsockname)(int, struct sockaddr *, socklen_t *);
	if (!real_getsockname)
		real_getsockname =
		    (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "getsockname");
	int rc = real_getsockname(fd, sa, len);
	if (rc == 0 && behind_proxy && is_moved(fd) && sa->sa_family == AF_INET &&
	    ((struct sockaddr_in *)sa)->sin_addr.s_addr == htonl(LISTEN_ADDR))
		((struct sockaddr_in *)sa)->sin_addr.s_addr = htonl(ADVERTISED_ADDR);
	return rc;
}

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
		else if (strcmp(argv[i], "--behind-proxy") == 0)
			behind_proxy = 1;
		else {
			fprintf(stderr, "usage: kafka-mock-cluster [--brokers N] [--max-seconds S] "
			                "[--behind-proxy]\n");
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
	if (behind_proxy) {
		/* the routes: 127.0.0.1:port=127.0.0.2:port per broker */
		char *list = strdup(rd_kafka_mock_cluster_bootstraps(mc)), *save = NULL;
		for (char *hp = strtok_r(list, ",", &save); hp; hp = strtok_r(NULL, ",", &save)) {
			const char *port = strrchr(hp, ':');
			printf("%s%s=127.0.0.2%s", hp == list ? "" : " ", hp, port ? port : "");
		}
		printf("\n");
		free(list);
		if (nmoved != brokers) {
			fprintf(stderr, "kafka-mock-cluster: --behind-proxy moved %d of %d listeners "
			                "(this librdkafka binds them otherwise)\n",
			        nmoved, brokers);
			return 1;
		}
	}
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
