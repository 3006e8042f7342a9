/*
 * bench_raw.c - ackbox-bench's part for MQTT (examples/bench/bench.h): the
 * raw publisher, paho's MQTTAsync alone at QoS 1 with the same window.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <MQTTAsync.h>

#include "bench.h"

typedef struct mqtt_raw {
	pthread_mutex_t mtx;
	pthread_cond_t cond;
	int inflight;
	int connect_state; /* 0 pending, 1 ok, -1 failed */
	const bench_opts *o;
	bench_times *t;
	bench_result *r;
} mqtt_raw;

static void mqtt_raw_conn_ok(void *ctx, MQTTAsync_successData5 *d)
{
	mqtt_raw *m = ctx;
	(void)d;
	pthread_mutex_lock(&m->mtx);
	m->connect_state = 1;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->mtx);
}

static void mqtt_raw_conn_fail(void *ctx, MQTTAsync_failureData5 *d)
{
	mqtt_raw *m = ctx;
	(void)d;
	pthread_mutex_lock(&m->mtx);
	m->connect_state = -1;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->mtx);
}

/* The context of a publish: the shared state and the message's sequence number. */
typedef struct mqtt_pub {
	mqtt_raw *m;
	size_t i;
} mqtt_pub;

static void mqtt_raw_done(mqtt_pub *p, bool ok)
{
	mqtt_raw *m = p->m;
	ok = bench_answered(m->o, p->i, ok); /* outside m->mtx: it may write a file */
	int64_t now = bench_now_ns();
	pthread_mutex_lock(&m->mtx);
	if (ok) {
		m->t->ack[p->i] = now;
		m->r->acked++;
	} else {
		m->r->failed++;
	}
	m->inflight--;
	pthread_cond_signal(&m->cond);
	pthread_mutex_unlock(&m->mtx);
}

static void mqtt_raw_pub_ok(void *ctx, MQTTAsync_successData5 *d)
{
	mqtt_raw_done(ctx, d->reasonCode < 0x80);
}

static void mqtt_raw_pub_fail(void *ctx, MQTTAsync_failureData5 *d)
{
	(void)d;
	mqtt_raw_done(ctx, false);
}

static void raw_mqtt(const bench_opts *o, bench_times *t, bench_result *r, int64_t deadline)
{
	MQTTAsync client = NULL;
	MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
	MQTTAsync_connectOptions c = MQTTAsync_connectOptions_initializer5;
	mqtt_raw m = {.o = o, .t = t, .r = r};
	mqtt_pub *pubs = calloc(t->n, sizeof(*pubs));
	char *payload = bench_payload(o->size);
	char uri[1100], client_id[64];
	int window = o->window ? o->window : 100;
	int rc;

	pthread_mutex_init(&m.mtx, NULL);
	pthread_cond_init(&m.cond, NULL);
	if (!pubs || !payload) {
		bench_fail(r, "out of memory");
		goto out;
	}
	snprintf(uri, sizeof(uri), "tcp://%s", strstr(o->url, "://") + 3);
	snprintf(client_id, sizeof(client_id), "ackbox-bench-raw-%d", (int)getpid());
	co.MQTTVersion = MQTTVERSION_5;
	rc = MQTTAsync_createWithOptions(&client, uri, client_id, MQTTCLIENT_PERSISTENCE_NONE, NULL,
	                                 &co);
	if (rc != MQTTASYNC_SUCCESS) {
		client = NULL;
		bench_fail(r, "raw mqtt: cannot create a client for %s (%d)", uri, rc);
		goto out;
	}
	c.keepAliveInterval = 30;
	c.cleanstart = 1;
	c.maxInflight = window;
	c.connectTimeout = 10;
	c.onSuccess5 = mqtt_raw_conn_ok;
	c.onFailure5 = mqtt_raw_conn_fail;
	c.context = &m;
	if ((rc = MQTTAsync_connect(client, &c)) != MQTTASYNC_SUCCESS) {
		bench_fail(r, "raw mqtt: connect %s: %d", uri, rc);
		goto out;
	}
	pthread_mutex_lock(&m.mtx);
	while (m.connect_state == 0 && bench_now_ns() < deadline)
		bench_cond_wait(&m.cond, &m.mtx);
	pthread_mutex_unlock(&m.mtx);
	if (m.connect_state != 1) {
		bench_fail(r, "raw mqtt: cannot connect to %s", uri);
		goto out;
	}
	int64_t start = bench_now_ns();
	for (size_t i = 0; i < t->n; i++) {
		MQTTAsync_message msg = MQTTAsync_message_initializer;
		MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
		MQTTProperties props = MQTTProperties_initializer;
		MQTTProperty up;
		ackbox_id id;
		char idtext[ACKBOX_ID_STRLEN];
		int64_t due = bench_pace(o, start, i);

		/* the window: at most `window` publishes awaiting PUBACK */
		pthread_mutex_lock(&m.mtx);
		while (m.inflight >= window && bench_now_ns() < deadline)
			bench_cond_wait(&m.cond, &m.mtx);
		if (m.inflight >= window) {
			pthread_mutex_unlock(&m.mtx);
			bench_fail(r, "raw mqtt: round exceeded --max-seconds (%zu of %zu acked)",
			           r->acked, t->n);
			goto out;
		}
		m.inflight++;
		pthread_mutex_unlock(&m.mtx);

		/* what ackbox sends too: the id as a user property */
		ackbox_id_new(&id);
		ackbox_id_format(&id, idtext);
		memset(&up, 0, sizeof(up));
		up.identifier = MQTTPROPERTY_CODE_USER_PROPERTY;
		up.value.data.data = "ackbox-id";
		up.value.data.len = 9;
		up.value.value.data = idtext;
		up.value.value.len = ACKBOX_ID_STRLEN - 1;
		MQTTProperties_add(&props, &up);
		msg.properties = props;
		msg.payload = payload;
		msg.payloadlen = (int)o->size;
		msg.qos = 1;
		pubs[i].m = &m;
		pubs[i].i = i;
		ro.onSuccess5 = mqtt_raw_pub_ok;
		ro.onFailure5 = mqtt_raw_pub_fail;
		ro.context = &pubs[i];
		t->pub[i] = o->rate ? due : bench_now_ns();
		if (bench_before(o, i) != 0) {
			MQTTProperties_free(&props);
			pthread_mutex_lock(&m.mtx);
			m.inflight--;
			pthread_mutex_unlock(&m.mtx);
			goto out;
		}
		for (;;) {
			rc = MQTTAsync_sendMessage(client, BENCH_TOPIC, &msg, &ro);
			if (rc != MQTTASYNC_MAX_MESSAGES_INFLIGHT && rc != MQTTASYNC_MAX_BUFFERED_MESSAGES)
				break;
			if (bench_now_ns() > deadline)
				break;
			usleep(100); /* paho has not freed the slot of a PUBACK we counted yet */
		}
		MQTTProperties_free(&props);
		if (rc != MQTTASYNC_SUCCESS) {
			pthread_mutex_lock(&m.mtx);
			m.inflight--;
			pthread_mutex_unlock(&m.mtx);
			bench_fail(r, "raw mqtt: sendMessage: %d", rc);
			goto out;
		}
	}
	pthread_mutex_lock(&m.mtx);
	while (m.inflight > 0 && bench_now_ns() < deadline)
		bench_cond_wait(&m.cond, &m.mtx);
	if (m.inflight > 0)
		bench_fail(r, "raw mqtt: round exceeded --max-seconds (%d unanswered)", m.inflight);
	pthread_mutex_unlock(&m.mtx);
out:
	if (client) {
		MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer5;
		d.timeout = 1000;
		MQTTAsync_disconnect(client, &d);
		usleep(50000);
		MQTTAsync_destroy(&client); /* waits for paho's threads: no callback runs after */
	}
	pthread_cond_destroy(&m.cond);
	pthread_mutex_destroy(&m.mtx);
	free(pubs);
	free(payload);
}

const bench_transport bench_transport_mqtt = {
	.scheme = "mqtt",
	.run_raw = raw_mqtt,
};
