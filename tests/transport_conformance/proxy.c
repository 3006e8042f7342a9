/*
 * proxy.c - the conformance suite's TCP proxy for adapters: 127.0.0.1 in
 * front of a broker's port, on a thread of its own, whose connections can
 * be cut (a dropped connection with the broker up) and whose door can be
 * held shut (new connections accepted and closed at once).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ackbox/conformance.h>

#define PAIRS 64

struct ackbox_tc_proxy {
	int lfd, target;
	int fds[PAIRS][2]; /* the proxy thread's own */
	int npairs;
	atomic_int cut, closed, stop; /* set by the test, read by the proxy thread */
	atomic_int cuts_done;
	pthread_t th;
};

static void drop_pair(ackbox_tc_proxy *p, int i)
{
	close(p->fds[i][0]);
	close(p->fds[i][1]);
	p->fds[i][0] = p->fds[p->npairs - 1][0];
	p->fds[i][1] = p->fds[p->npairs - 1][1];
	p->npairs--;
}

static void accept_one(ackbox_tc_proxy *p)
{
	int a = accept(p->lfd, NULL, NULL), b;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p->target)};
	if (a < 0)
		return;
	if (atomic_load(&p->closed) || p->npairs == PAIRS) {
		close(a);
		return;
	}
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	b = socket(AF_INET, SOCK_STREAM, 0);
	if (b >= 0 && connect(b, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
		p->fds[p->npairs][0] = a;
		p->fds[p->npairs][1] = b;
		p->npairs++;
		return;
	}
	close(a);
	if (b >= 0)
		close(b);
}

static void *proxy_main(void *arg)
{
	ackbox_tc_proxy *p = arg;
	char buf[65536];
	while (!atomic_load(&p->stop)) {
		struct pollfd pf[1 + 2 * PAIRS];
		int n = 0;
		if (atomic_load(&p->cut)) {
			while (p->npairs)
				drop_pair(p, 0);
			atomic_store(&p->cut, 0);
			atomic_fetch_add(&p->cuts_done, 1);
		}
		pf[n++] = (struct pollfd){p->lfd, POLLIN, 0};
		for (int i = 0; i < p->npairs; i++) {
			pf[n++] = (struct pollfd){p->fds[i][0], POLLIN, 0};
			pf[n++] = (struct pollfd){p->fds[i][1], POLLIN, 0};
		}
		if (poll(pf, (nfds_t)n, 10) <= 0)
			continue;
		if (pf[0].revents & POLLIN) {
			accept_one(p);
			continue;
		}
		for (int i = 0; i < p->npairs; i++) {
			for (int side = 0; side < 2; side++) {
				if (!(pf[1 + 2 * i + side].revents & (POLLIN | POLLHUP | POLLERR)))
					continue;
				ssize_t r = read(p->fds[i][side], buf, sizeof(buf));
				if (r <= 0 || write(p->fds[i][!side], buf, (size_t)r) != r) {
					drop_pair(p, i);
					goto next_round; /* the poll array no longer matches */
				}
			}
		}
	next_round:;
	}
	while (p->npairs)
		drop_pair(p, 0);
	return NULL;
}

ackbox_tc_proxy *ackbox_tc_proxy_start(int target_port, int *listen_port)
{
	ackbox_tc_proxy *p = calloc(1, sizeof(*p));
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sa);
	int one = 1;
	if (!p)
		return NULL;
	p->target = target_port;
	p->lfd = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(p->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (p->lfd < 0 || bind(p->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    listen(p->lfd, 64) != 0 || getsockname(p->lfd, (struct sockaddr *)&sa, &sl) != 0) {
		if (p->lfd >= 0)
			close(p->lfd);
		free(p);
		return NULL;
	}
	*listen_port = ntohs(sa.sin_port);
	if (pthread_create(&p->th, NULL, proxy_main, p) != 0) {
		close(p->lfd);
		free(p);
		return NULL;
	}
	return p;
}

void ackbox_tc_proxy_cut(ackbox_tc_proxy *p)
{
	int before = atomic_load(&p->cuts_done);
	atomic_store(&p->cut, 1);
	/* bounded: the proxy thread looks every 10 ms */
	for (int i = 0; i < 500 && atomic_load(&p->cuts_done) == before; i++)
		usleep(2000);
}

void ackbox_tc_proxy_set_closed(ackbox_tc_proxy *p, int closed)
{
	atomic_store(&p->closed, closed);
}

void ackbox_tc_proxy_stop(ackbox_tc_proxy *p)
{
	if (!p)
		return;
	atomic_store(&p->stop, 1);
	pthread_join(p->th, NULL);
	close(p->lfd);
	free(p);
}
