/*
 * conformance_adapter.c - the Kafka transport's conformance adapter, against
 * librdkafka's mock cluster (3 brokers inside the test process; there is no
 * Kafka broker package on Debian). "Kill" and "cut" set every mock broker
 * down (connections drop, new ones are refused), "restart" sets them up:
 * the mock keeps its log in memory, so this is not a process crash. The
 * refusal is a topic the cluster answers TOPIC_AUTHORIZATION_FAILED.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <ackbox/conformance.h>

#define BROKERS 3
#define PARTITIONS 3

static rd_kafka_t *mock_rk;
static rd_kafka_mock_cluster_t *mc;
static char bootstraps[512];

static int k_start(void *o, const char *dir, char *url, size_t url_size, char *err, size_t n)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	(void)o;
	(void)dir;
	rd_kafka_conf_set(conf, "log_level", "3", err, n);
	if (!(mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, n)))
		return -1;
	if (!(mc = rd_kafka_mock_cluster_new(mock_rk, BROKERS))) {
		snprintf(err, n, "cannot start librdkafka's mock cluster");
		return -1;
	}
	snprintf(bootstraps, sizeof(bootstraps), "%s", rd_kafka_mock_cluster_bootstraps(mc));
	snprintf(url, url_size, "kafka://%s", bootstraps);
	return 0;
}

static void k_stop(void *o)
{
	(void)o;
	if (mc)
		rd_kafka_mock_cluster_destroy(mc);
	if (mock_rk)
		rd_kafka_destroy(mock_rk);
	mc = NULL;
	mock_rk = NULL;
}

static void set_all(int up)
{
	for (int b = 1; b <= BROKERS; b++) {
		if (up)
			rd_kafka_mock_broker_set_up(mc, b);
		else
			rd_kafka_mock_broker_set_down(mc, b);
	}
}

static int k_kill(void *o, char *err, size_t n)
{
	(void)o;
	(void)err;
	(void)n;
	set_all(0);
	return 0;
}

static int k_restart(void *o, char *err, size_t n)
{
	(void)o;
	(void)err;
	(void)n;
	set_all(1);
	return 0;
}

static int k_cut(void *o, char *err, size_t n)
{
	(void)o;
	(void)err;
	(void)n;
	set_all(0);
	set_all(1);
	return 0;
}

static int k_prepare(void *o, const char *topic, char *err, size_t n)
{
	(void)o;
	rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, topic, PARTITIONS, BROKERS);
	if (e) {
		snprintf(err, n, "create topic %s: %s", topic, rd_kafka_err2str(e));
		return -1;
	}
	return 0;
}

/* Messages in topic: the sum of the partitions' high watermarks. */
static int64_t topic_size(rd_kafka_t *rk, const char *topic)
{
	int64_t total = 0;
	for (int p = 0; p < PARTITIONS; p++) {
		int64_t lo = 0, hi = 0;
		if (rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 5000))
			return -1;
		total += hi - lo;
	}
	return total;
}

static int k_consume(void *o, const char *topic, size_t expect, ackbox_tc_found_cb found,
                     void *arg, char *err, size_t n)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk;
	time_t deadline = time(NULL) + 60;
	int64_t want;
	size_t read = 0;
	(void)o;
	rd_kafka_conf_set(conf, "bootstrap.servers", bootstraps, err, n);
	rd_kafka_conf_set(conf, "group.id", "ackbox-conformance", err, n);
	rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, n);
	if (!(rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, n)))
		return -1;
	/* everything the cluster holds for the topic, once it holds expect */
	while ((want = topic_size(rk, topic)) < (int64_t)expect && time(NULL) < deadline) {
		struct timespec ts = {0, 50 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(PARTITIONS);
	for (int p = 0; p < PARTITIONS; p++)
		rd_kafka_topic_partition_list_add(parts, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
	rd_kafka_assign(rk, parts);
	rd_kafka_topic_partition_list_destroy(parts);
	while ((int64_t)read < want && time(NULL) < deadline) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
		rd_kafka_headers_t *hs = NULL;
		const void *v = NULL;
		size_t vl = 0;
		char text[ACKBOX_ID_STRLEN] = "";
		ackbox_id id;
		if (!m)
			continue;
		if (!m->err && rd_kafka_message_headers(m, &hs) == 0 &&
		    rd_kafka_header_get_last(hs, "ackbox-id", &v, &vl) == 0 && vl == 36) {
			memcpy(text, v, 36);
			if (ackbox_id_parse(text, &id) == 0)
				found(arg, &id);
		}
		if (!m->err)
			read++;
		rd_kafka_message_destroy(m);
	}
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	return 0;
}

static int k_refusal(void *o, ackbox_tc_refusal *r, char *err, size_t n)
{
	(void)o;
	(void)err;
	(void)n;
	snprintf(r->topic, sizeof(r->topic), "tc_refused");
	rd_kafka_mock_topic_set_error(mc, r->topic, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED);
	r->broker_code = RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED;
	r->outcome = ACKBOX_OUTCOME_ERROR;
	return 0;
}

static const ackbox_tc_adapter adapter = {
	.struct_size = sizeof(ackbox_tc_adapter),
	.name = "kafka (librdkafka mock cluster)",
	.start = k_start,
	.stop = k_stop,
	.kill = k_kill,
	.restart = k_restart,
	.cut = k_cut,
	.prepare = k_prepare,
	.consume = k_consume,
	.refusal = k_refusal,
	.oversized = 1000001, /* librdkafka's message.max.bytes and one byte */
};

int main(int argc, char **argv)
{
	return ackbox_tc_main(&adapter, argc, argv);
}
