/*
 * conformance_adapter.c - the MQTT transport's conformance adapter: a mosquitto of
 * each test's own (this folder's mosquitto.sh launches it, on a
 * configuration written here), reached through the suite's proxy, and a
 * persistent-session subscriber per topic (QoS 1) as the consumer.
 *
 * mosquitto acknowledges before it writes to disk, so the "kill" is a
 * SIGTERM (docs/brokers/mqtt.md); and mosquitto 2.0.11 queues nothing for a
 * restored offline session until its client has reconnected, so restart()
 * re-attaches every subscriber before the proxy lets the publisher back in.
 * max_packet_size 70000 is announced in the CONNACK (the oversized check);
 * message_size_limit 4000 makes mosquitto answer a 5000-byte publish with
 * PUBACK 0x95 Packet too large (the refusal).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <MQTTClient.h>

#include <ackbox/conformance.h>

static char fixture_dir[1100];
static int port;
static ackbox_tc_proxy *proxy;
static char topics[16][128]; /* prepared: their sessions are re-attached */
static int ntopics;

static int fixture(const char *verb, char *err, size_t n)
{
	return ackbox_tc_sh(err, n, "bash %s %s %s >/dev/null", MOSQUITTO_FIXTURE_SCRIPT, verb,
	                    fixture_dir);
}

static int free_port(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0), p = -1;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
		p = ntohs(sa.sin_port);
	if (fd >= 0)
		close(fd);
	return p;
}

static int m_start(void *o, const char *dir, char *url, size_t url_size, char *err, size_t n)
{
	char path[1200];
	FILE *f;
	int pport = 0;
	(void)o;
	ntopics = 0;
	snprintf(fixture_dir, sizeof(fixture_dir), "%s/mosquitto", dir);
	port = free_port();
	if (ackbox_tc_sh(err, n, "mkdir -p %s/data", fixture_dir))
		return -1;
	snprintf(path, sizeof(path), "%s/env", fixture_dir);
	if (!(f = fopen(path, "w")))
		return snprintf(err, n, "cannot write %s", path), -1;
	fprintf(f, "MQTT_PORT=%d\n", port);
	fclose(f);
	snprintf(path, sizeof(path), "%s/mosquitto.conf", fixture_dir);
	if (!(f = fopen(path, "w")))
		return snprintf(err, n, "cannot write %s", path), -1;
	fprintf(f,
	        "listener %d 127.0.0.1\nallow_anonymous true\npersistence true\n"
	        "persistence_location %s/data/\nautosave_interval 1\nmax_queued_messages 0\n"
	        "max_inflight_messages 0\nmax_packet_size 70000\nmessage_size_limit 4000\n"
	        "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n",
	        port, fixture_dir);
	/* as root mosquitto would switch to 'mosquitto', who cannot write DIR */
	fprintf(f, "user %s\n", getenv("USER") ? getenv("USER") : "root");
	fclose(f);
	if (fixture("restart", err, n)) /* "restart": launch on the config above */
		return -1;
	if (!(proxy = ackbox_tc_proxy_start(port, &pport)))
		return snprintf(err, n, "cannot start the proxy"), -1;
	snprintf(url, url_size, "mqtt://127.0.0.1:%d", pport);
	return 0;
}

static void m_stop(void *o)
{
	char err[256];
	(void)o;
	ackbox_tc_proxy_stop(proxy);
	proxy = NULL;
	fixture("stop", err, sizeof(err));
}

static MQTTClient sub_connect(const char *topic, char *err, size_t n)
{
	MQTTClient cl;
	MQTTClient_createOptions co = MQTTClient_createOptions_initializer;
	MQTTClient_connectOptions o = MQTTClient_connectOptions_initializer5;
	MQTTProperties props = MQTTProperties_initializer;
	MQTTProperty expiry = {.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL,
	                       .value.integer4 = 3600};
	char uri[64], id[160];
	co.MQTTVersion = MQTTVERSION_5;
	snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%d", port);
	snprintf(id, sizeof(id), "c-%s", topic);
	if (MQTTClient_createWithOptions(&cl, uri, id, MQTTCLIENT_PERSISTENCE_NONE, NULL, &co)) {
		snprintf(err, n, "subscriber %s: cannot create", id);
		return NULL;
	}
	MQTTProperties_add(&props, &expiry);
	o.cleanstart = 0; /* the broker queues QoS 1 for us while we are away */
	o.keepAliveInterval = 30;
	MQTTResponse r = MQTTClient_connect5(cl, &o, &props, NULL);
	MQTTProperties_free(&props);
	if (r.reasonCode != MQTTREASONCODE_SUCCESS) {
		snprintf(err, n, "subscriber %s: connect: %d", id, r.reasonCode);
		MQTTResponse_free(r);
		MQTTClient_destroy(&cl);
		return NULL;
	}
	MQTTResponse_free(r);
	return cl;
}

static void sub_leave(MQTTClient cl)
{
	MQTTClient_disconnect5(cl, 1000, MQTTREASONCODE_SUCCESS, NULL);
	MQTTClient_destroy(&cl);
}

static int m_kill(void *o, char *err, size_t n)
{
	(void)o;
	ackbox_tc_proxy_set_closed(proxy, 1);
	ackbox_tc_proxy_cut(proxy);
	return fixture("term", err, n);
}

static int m_restart(void *o, char *err, size_t n)
{
	(void)o;
	if (fixture("restart", err, n))
		return -1;
	for (int i = 0; i < ntopics; i++) {
		MQTTClient cl = sub_connect(topics[i], err, n);
		if (!cl)
			return -1;
		sub_leave(cl);
	}
	ackbox_tc_proxy_set_closed(proxy, 0);
	return 0;
}

static int m_cut(void *o, char *err, size_t n)
{
	(void)o;
	(void)err;
	(void)n;
	ackbox_tc_proxy_cut(proxy);
	return 0;
}

static int m_prepare(void *o, const char *topic, char *err, size_t n)
{
	MQTTClient cl = sub_connect(topic, err, n);
	MQTTSubscribe_options so = MQTTSubscribe_options_initializer;
	(void)o;
	if (!cl)
		return -1;
	MQTTResponse r = MQTTClient_subscribe5(cl, topic, 1, &so, NULL);
	int rc = r.reasonCode;
	MQTTResponse_free(r);
	sub_leave(cl);
	if (rc != MQTTREASONCODE_GRANTED_QOS_1)
		return snprintf(err, n, "subscribe %s: %d", topic, rc), -1;
	if (ntopics < 16)
		snprintf(topics[ntopics++], sizeof(topics[0]), "%s", topic);
	return 0;
}

static int m_consume(void *o, const char *topic, size_t expect, ackbox_tc_found_cb found,
                     void *arg, char *err, size_t n)
{
	MQTTClient cl = sub_connect(topic, err, n);
	time_t deadline = time(NULL) + 60;
	size_t got = 0;
	(void)o;
	if (!cl)
		return -1;
	while (time(NULL) < deadline) {
		char *t = NULL;
		int tlen = 0;
		MQTTClient_message *m = NULL;
		/* once expect arrived, one quiet second ends it (duplicates too) */
		int rc = MQTTClient_receive(cl, &t, &tlen, &m, got >= expect ? 1000 : 200);
		if (rc != MQTTCLIENT_SUCCESS && rc != MQTTCLIENT_TOPICNAME_TRUNCATED) {
			snprintf(err, n, "receive: %d", rc);
			sub_leave(cl);
			return -1;
		}
		if (!m) {
			if (got >= expect)
				break;
			continue;
		}
		for (int i = 0; i < m->properties.count; i++) {
			MQTTProperty *q = &m->properties.array[i];
			char text[ACKBOX_ID_STRLEN] = "";
			ackbox_id id;
			if (q->identifier == MQTTPROPERTY_CODE_USER_PROPERTY && q->value.data.len == 9 &&
			    memcmp(q->value.data.data, "ackbox-id", 9) == 0 && q->value.value.len == 36) {
				memcpy(text, q->value.value.data, 36);
				if (ackbox_id_parse(text, &id) == 0)
					found(arg, &id);
			}
		}
		got++;
		MQTTClient_freeMessage(&m);
		MQTTClient_free(t);
	}
	sub_leave(cl);
	return 0;
}

static int m_refusal(void *o, ackbox_tc_refusal *r, char *err, size_t n)
{
	(void)o;
	(void)err;
	(void)n;
	snprintf(r->topic, sizeof(r->topic), "tc/refused");
	r->payload_len = 5000; /* over message_size_limit 4000 */
	r->broker_code = 0x95;
	r->outcome = ACKBOX_OUTCOME_NACK;
	/* seen with mosquitto_pub one publish at a time: PUBACK 0x95 and the
	 * connection stays; with the next PUBLISH already on the wire behind
	 * the refused one, mosquitto logs "Bad socket read/write ... Unknown
	 * error" and closes (the same as after an ACL denial, test_mqtt.c) */
	r->broker_drops_connection = "mosquitto 2.0.11 closes the connection after a PUBACK >= 0x80 "
	                             "when more publishes are pipelined behind the refused one";
	return 0;
}

static const ackbox_tc_adapter adapter = {
	.struct_size = sizeof(ackbox_tc_adapter),
	.name = "mqtt",
	.start = m_start,
	.stop = m_stop,
	.kill = m_kill,
	.restart = m_restart,
	.cut = m_cut,
	.prepare = m_prepare,
	.consume = m_consume,
	.refusal = m_refusal,
	.oversized = 70001, /* over max_packet_size 70000, from the CONNACK */
};

int main(int argc, char **argv)
{
	return ackbox_tc_main(&adapter, argc, argv);
}
