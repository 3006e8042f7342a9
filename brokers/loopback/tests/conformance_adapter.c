/*
 * conformance_adapter.c - the conformance adapter of the in-process loopback
 * transport: the broker is an ackbox_loopback of the test's own, "killed"
 * and "cut" by taking it down (its connections drop), its consumer the
 * list of what it received.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <ackbox/conformance.h>
#include "ackbox_loopback.h"

static ackbox_loopback *lb;

static int lb_start(void *o, const char *dir, char *url, size_t url_size, char *err, size_t n)
{
	char name[64];
	(void)o;
	(void)dir;
	(void)err;
	(void)n;
	snprintf(name, sizeof(name), "tc-%d", (int)getpid());
	lb = ackbox_loopback_get(name);
	/* confirms take 2 ms, as on a broker next door */
	if (lb)
		ackbox_loopback_set_default(lb, ACKBOX_LB_CONFIRM, 2);
	snprintf(url, url_size, "loopback://%s", name);
	return lb ? 0 : -1;
}

static void lb_stop(void *o)
{
	(void)o;
}

static int lb_kill(void *o, char *err, size_t n)
{
	(void)o;
	(void)err;
	(void)n;
	ackbox_loopback_set_up(lb, 0);
	return 0;
}

static int lb_restart(void *o, char *err, size_t n)
{
	(void)o;
	(void)err;
	(void)n;
	ackbox_loopback_set_up(lb, 1);
	return 0;
}

/* Down and up at once: live connections drop, the next connect succeeds. */
static int lb_cut(void *o, char *err, size_t n)
{
	(void)o;
	(void)err;
	(void)n;
	ackbox_loopback_set_up(lb, 0);
	ackbox_loopback_set_up(lb, 1);
	return 0;
}

/* Every topic alike: confirms take 2 ms (set at start). The cut test cuts
 * from a thread of its own while publishes are in flight. */
static int lb_prepare(void *o, const char *topic, char *err, size_t n)
{
	(void)o;
	(void)topic;
	(void)err;
	(void)n;
	return 0;
}

static int lb_consume(void *o, const char *topic, size_t expect, ackbox_tc_found_cb found,
                      void *arg, char *err, size_t n)
{
	char t[256];
	ackbox_id id;
	(void)o;
	(void)expect; /* everything the loopback broker took is there already */
	(void)err;
	(void)n;
	for (size_t i = 0; ackbox_loopback_message(lb, i, &id, t, sizeof(t), NULL, NULL, NULL) == 0;
	     i++)
		if (strcmp(t, topic) == 0)
			found(arg, &id);
	return 0;
}

static int lb_refusal(void *o, ackbox_tc_refusal *r, char *err, size_t n)
{
	(void)o;
	(void)err;
	(void)n;
	snprintf(r->topic, sizeof(r->topic), "tc_refused");
	r->broker_code = 406;
	r->outcome = ACKBOX_OUTCOME_NACK;
	ackbox_loopback_set_nack_topic(lb, r->topic);
	return 0;
}

static const char *const lb_conf[] = {"loopback.max_message=65536", NULL};

static const ackbox_tc_adapter adapter = {
	.struct_size = sizeof(ackbox_tc_adapter),
	.name = "loopback",
	.start = lb_start,
	.stop = lb_stop,
	.kill = lb_kill,
	.restart = lb_restart,
	.cut = lb_cut,
	.prepare = lb_prepare,
	.consume = lb_consume,
	.refusal = lb_refusal,
	.oversized = 65537,
	.conf = lb_conf,
};

int main(int argc, char **argv)
{
	return ackbox_tc_main(&adapter, argc, argv);
}
