/*
 * bench_raw.c - ackbox-bench's part for Kafka (examples/bench/bench.h): the
 * raw publisher, librdkafka alone with ackbox's producer settings and the
 * same window, and --transport kafka://mock, librdkafka's mock cluster in
 * the bench's own process.
 */
#define _GNU_SOURCE
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "bench.h"

typedef struct kafka_raw {
	const bench_opts *o;
	bench_times *t;
	bench_result *r;
	size_t inflight;
} kafka_raw;

static void kafka_raw_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	kafka_raw *k = opaque;
	size_t i = (size_t)(uintptr_t)m->_private;
	(void)rk;
	if (bench_answered(k->o, i, m->err == RD_KAFKA_RESP_ERR_NO_ERROR)) {
		k->t->ack[i] = bench_now_ns();
		k->r->acked++;
	} else {
		k->r->failed++;
	}
	k->inflight--;
}

/* The mock cluster of --transport kafka://mock: 3 brokers in this process. */
static rd_kafka_t *mock_rk;
static rd_kafka_mock_cluster_t *mock_mc;

static int kafka_mock_start(bench_opts *o)
{
	char err[256];
	if (strcmp(o->transport, "kafka://mock") != 0)
		return 0; /* a real cluster */
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_conf_set(conf, "log_level", "3", err, sizeof(err));
	mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
	if (!mock_rk) {
		fprintf(stderr, "ackbox-bench: %s\n", err);
		return -1;
	}
	mock_mc = rd_kafka_mock_cluster_new(mock_rk, 3);
	if (!mock_mc) {
		fprintf(stderr, "ackbox-bench: cannot start librdkafka's mock cluster\n");
		return -1;
	}
	if (rd_kafka_mock_topic_create(mock_mc, BENCH_TOPIC, 3, 3) != RD_KAFKA_RESP_ERR_NO_ERROR) {
		fprintf(stderr, "ackbox-bench: cannot create topic %s on the mock cluster\n",
		        BENCH_TOPIC);
		return -1;
	}
	snprintf(o->url, sizeof(o->url), "kafka://%s", rd_kafka_mock_cluster_bootstraps(mock_mc));
	return 0;
}

static void kafka_mock_stop(void)
{
	if (mock_mc)
		rd_kafka_mock_cluster_destroy(mock_mc);
	if (mock_rk)
		rd_kafka_destroy(mock_rk);
}

static void raw_kafka(const bench_opts *o, bench_times *t, bench_result *r, int64_t deadline)
{
	char err[512];
	kafka_raw k = {.o = o, .t = t, .r = r};
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk = NULL;
	char *payload = bench_payload(o->size);
	size_t window = o->window ? (size_t)o->window : 10000;
	/* what ackbox sets (docs/brokers/kafka.md), then the user's kafka.* keys */
	const char *defaults[][2] = {{"bootstrap.servers", strstr(o->url, "://") + 3},
	                             {"acks", "all"},
	                             {"enable.idempotence", "true"},
	                             {"message.timeout.ms", "8000"},
	                             {"socket.nagle.disable", "true"},
	                             {"log_level", "3"}};

	if (!payload) {
		bench_fail(r, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++) {
		if (rd_kafka_conf_set(conf, defaults[i][0], defaults[i][1], err, sizeof(err))) {
			bench_fail(r, "raw kafka: %s", err);
			goto out;
		}
	}
	for (int i = 0; i < o->nsets; i++) {
		char key[256];
		const char *eq = strchr(o->sets[i], '=');
		if (strncmp(o->sets[i], "kafka.", 6) != 0 || !eq)
			continue;
		snprintf(key, sizeof(key), "%.*s", (int)(eq - o->sets[i] - 6), o->sets[i] + 6);
		if (strcmp(key, "window") == 0)
			continue;
		if (rd_kafka_conf_set(conf, key, eq + 1, err, sizeof(err))) {
			bench_fail(r, "raw kafka: %s", err);
			goto out;
		}
	}
	rd_kafka_conf_set_dr_msg_cb(conf, kafka_raw_dr);
	rd_kafka_conf_set_opaque(conf, &k);
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
	if (!rk) {
		bench_fail(r, "raw kafka: %s", err);
		goto out;
	}
	conf = NULL; /* rk owns it */
	int64_t start = bench_now_ns();
	for (size_t i = 0; i < t->n;) {
		if (bench_now_ns() > deadline) {
			bench_fail(r, "raw kafka: round exceeded --max-seconds (%zu of %zu acked)",
			           r->acked, t->n);
			goto out;
		}
		if (k.inflight >= window) {
			rd_kafka_poll(rk, 1);
			continue;
		}
		if (o->rate) {
			/* serve delivery reports until the next message is due */
			int64_t d = bench_due_ns(o, start, i) - bench_now_ns();
			if (d > 0) {
				if (rd_kafka_poll(rk, (int)(d / 1000000)) == 0 && d < 1000000)
					bench_pace(o, start, i);
				continue;
			}
		}
		ackbox_id id;
		char idtext[ACKBOX_ID_STRLEN];
		rd_kafka_headers_t *hs = rd_kafka_headers_new(1);
		ackbox_id_new(&id);
		ackbox_id_format(&id, idtext);
		rd_kafka_header_add(hs, "ackbox-id", -1, idtext, ACKBOX_ID_STRLEN - 1);
		t->pub[i] = o->rate ? bench_due_ns(o, start, i) : bench_now_ns();
		if (bench_before(o, i) != 0) {
			rd_kafka_headers_destroy(hs);
			goto out;
		}
		rd_kafka_resp_err_t e = rd_kafka_producev(
		    rk, RD_KAFKA_V_TOPIC(BENCH_TOPIC), RD_KAFKA_V_VALUE(payload, o->size),
		    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(hs),
		    RD_KAFKA_V_OPAQUE((void *)(uintptr_t)i), RD_KAFKA_V_END);
		if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
			rd_kafka_headers_destroy(hs);
			rd_kafka_poll(rk, 1);
			continue;
		}
		if (e) {
			rd_kafka_headers_destroy(hs);
			bench_fail(r, "raw kafka: produce: %s", rd_kafka_err2str(e));
			goto out;
		}
		k.inflight++;
		i++;
		if (i % 1000 == 0)
			rd_kafka_poll(rk, 0);
	}
	while (k.inflight > 0 && bench_now_ns() < deadline)
		rd_kafka_poll(rk, 10);
	if (k.inflight > 0)
		bench_fail(r, "raw kafka: round exceeded --max-seconds (%zu unanswered)",
		           k.inflight);
out:
	if (rk) {
		rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
		rd_kafka_poll(rk, 0);
		rd_kafka_destroy(rk);
	}
	if (conf)
		rd_kafka_conf_destroy(conf);
	free(payload);
}

const bench_transport bench_transport_kafka = {
	.scheme = "kafka",
	.url_help = "kafka://mock        librdkafka's mock cluster, 3 brokers, in this process",
	.setup = kafka_mock_start,
	.teardown = kafka_mock_stop,
	.run_raw = raw_kafka,
};
