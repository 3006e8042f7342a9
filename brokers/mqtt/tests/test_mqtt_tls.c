/*
 * test_mqtt_tls.c - TLS and authentication against a real mosquitto (ctest
 * fixture "mosquitto_tls": a TLS listener with a certificate from a CA made
 * at test time, a password file, an ACL). Delivered over TLS with a user
 * and password (read back by a subscriber of our own); a wrong password, an
 * unknown CA and a wrong host name each fail ackbox_new with
 * ACKBOX_ERR_TRANSPORT (the CLI's exit 4) naming the cause; what was
 * published meanwhile is kept and then delivered; a topic the ACL denies
 * fails; the password is in no error and no log line at debug level. Also
 * the URL rules: no query parameters, mqtt.cafile unreadable -> a
 * configuration error.
 */
#include "testutil.h"

#include <MQTTClient.h>
#include <pthread.h>

/* A fixture value; each key's copy lives for the test (tu_fixture reuses one buffer). */
static const char *env(const char *key)
{
	static struct {
		char key[32];
		char *value;
	} cache[16];
	int i;
	for (i = 0; i < 16 && cache[i].value; i++)
		if (strcmp(cache[i].key, key) == 0)
			return cache[i].value;
	cr_assert_lt(i, 16);
	snprintf(cache[i].key, sizeof(cache[i].key), "%s", key);
	cache[i].value = strdup(tu_fixture("mosquitto_tls", key));
	return cache[i].value;
}

/* ---- a subscriber of our own, on the plain listener, with the password ---- */

static MQTTClient sub_open(const char *topic)
{
	MQTTClient cl;
	MQTTClient_createOptions co = MQTTClient_createOptions_initializer;
	MQTTClient_connectOptions o = MQTTClient_connectOptions_initializer5;
	char uri[64];
	co.MQTTVersion = MQTTVERSION_5;
	snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%s", env("MQTT_PORT"));
	cr_assert_eq(MQTTClient_createWithOptions(&cl, uri, "ackbox-tls-sub", MQTTCLIENT_PERSISTENCE_NONE,
	                                          NULL, &co),
	             MQTTCLIENT_SUCCESS);
	o.cleanstart = 1;
	o.keepAliveInterval = 30;
	o.username = env("MQTT_USER");
	o.password = env("MQTT_PASSWORD");
	MQTTResponse r = MQTTClient_connect5(cl, &o, NULL, NULL);
	cr_assert_eq(r.reasonCode, MQTTREASONCODE_SUCCESS, "subscriber connect: %d", r.reasonCode);
	MQTTResponse_free(r);
	MQTTSubscribe_options so = MQTTSubscribe_options_initializer;
	r = MQTTClient_subscribe5(cl, topic, 1, &so, NULL);
	cr_assert_eq(r.reasonCode, MQTTREASONCODE_GRANTED_QOS_1, "subscribe: %d", r.reasonCode);
	MQTTResponse_free(r);
	return cl;
}

/* Reads until 2 s pass with nothing; counts the distinct ids of ids[] read. */
static size_t sub_collect(MQTTClient cl, const ackbox_id *ids, size_t n, size_t *total)
{
	size_t matched = 0;
	char *got = calloc(n ? n : 1, 1);
	*total = 0;
	for (;;) {
		char *topic = NULL;
		int tlen = 0;
		MQTTClient_message *m = NULL;
		int rc = MQTTClient_receive(cl, &topic, &tlen, &m, 2000);
		cr_assert(rc == MQTTCLIENT_SUCCESS || rc == MQTTCLIENT_TOPICNAME_TRUNCATED, "receive %d",
		          rc);
		if (!m)
			break;
		for (int i = 0; i < m->properties.count; i++) {
			MQTTProperty *q = &m->properties.array[i];
			char text[ACKBOX_ID_STRLEN] = "";
			ackbox_id id;
			if (q->identifier != MQTTPROPERTY_CODE_USER_PROPERTY || q->value.data.len != 9 ||
			    memcmp(q->value.data.data, "ackbox-id", 9) != 0 || q->value.value.len != 36)
				continue;
			memcpy(text, q->value.value.data, 36);
			if (ackbox_id_parse(text, &id) == 0)
				for (size_t k = 0; k < n; k++)
					if (memcmp(&id, &ids[k], sizeof(id)) == 0 && !got[k]) {
						got[k] = 1;
						matched++;
					}
		}
		(*total)++;
		MQTTClient_freeMessage(&m);
		MQTTClient_free(topic);
	}
	MQTTClient_disconnect5(cl, 1000, MQTTREASONCODE_SUCCESS, NULL);
	MQTTClient_destroy(&cl);
	free(got);
	return matched;
}

/* ---- every log line, at debug level, to search for the password ---- */

static pthread_mutex_t log_mtx = PTHREAD_MUTEX_INITIALIZER;
static char *logged;
static size_t logged_len;

static void on_log(ackbox_log_level level, const char *component, const char *msg, void *o)
{
	(void)level;
	(void)o;
	pthread_mutex_lock(&log_mtx);
	size_t add = strlen(component) + strlen(msg) + 3;
	char *n = realloc(logged, logged_len + add + 1);
	if (n) {
		logged = n;
		logged_len += (size_t)snprintf(logged + logged_len, add + 1, "%s: %s\n", component, msg);
	}
	pthread_mutex_unlock(&log_mtx);
}

static void no_password_logged(const char *wrong)
{
	pthread_mutex_lock(&log_mtx);
	cr_assert_null(logged ? strstr(logged, env("MQTT_PASSWORD")) : NULL,
	               "the password was logged:\n%s", logged);
	if (wrong && logged)
		cr_assert_null(strstr(logged, wrong), "the wrong password was logged:\n%s", logged);
	pthread_mutex_unlock(&log_mtx);
}

typedef struct seen {
	pthread_mutex_t mtx;
	int acked, failed;
	char reason[512];
} seen;

static void on_report(const ackbox_report *r, void *o)
{
	seen *s = o;
	pthread_mutex_lock(&s->mtx);
	if (r->state == ACKBOX_MSG_ACKED)
		s->acked++;
	else {
		s->failed++;
		snprintf(s->reason, sizeof(s->reason), "%s", r->reason);
	}
	pthread_mutex_unlock(&s->mtx);
}

static char *dir;
static void setup(void)
{
	dir = tu_tmpdir("mqtttls");
}
static void teardown(void)
{
	tu_rmrf(dir);
	free(dir);
	free(logged);
	logged = NULL;
	logged_len = 0;
}
TestSuite(mqtt_tls, .init = setup, .fini = teardown, .timeout = 240);

static ackbox_conf *conf_for(const char *url, const char *const *kv, seen *s)
{
	ackbox_conf *c = ackbox_conf_new();
	char db[1200];
	snprintf(db, sizeof(db), "sqlite://%s/outbox.db", dir);
	TU_SET(c, "store.url", db);
	TU_SET(c, "transport.url", url);
	TU_SET(c, "log.level", "debug");
	TU_SET(c, "transport.connect_timeout", "5s");
	TU_SET(c, "retry.timeout", "5s");
	TU_SET(c, "retry.max_attempts", "2");
	TU_SET(c, "retry.backoff.initial", "50ms");
	TU_SET(c, "retry.backoff.max", "200ms");
	for (; kv && kv[0]; kv += 2)
		TU_SET(c, kv[0], kv[1]);
	ackbox_conf_set_log_cb(c, on_log, NULL);
	if (s)
		ackbox_conf_set_report_cb(c, on_report, s);
	return c;
}

static ackbox_id publish(ackbox *ab, const char *topic)
{
	ackbox_msg m = {.topic = topic, .payload = "tls", .payload_len = 3};
	ackbox_id id;
	char err[512];
	cr_assert_eq(ackbox_publish(ab, &m, &id, err, sizeof(err)), 0, "%s", err);
	return id;
}

static void url_as(char *out, size_t n, const char *password, const char *host)
{
	snprintf(out, n, "mqtts://%s:%s@%s:%s", env("MQTT_USER"), password, host, env("MQTTS_PORT"));
}

Test(mqtt_tls, delivered_over_tls_with_a_password_and_the_acl_applies)
{
	const char *kv[] = {"mqtt.cafile", env("TLS_CA"), "transport.require_connect", "true", NULL};
	enum { N = 300 };
	static ackbox_id ids[N];
	seen s = {PTHREAD_MUTEX_INITIALIZER, 0, 0, ""};
	char err[512];
	size_t total;
	ackbox *ab;

	MQTTClient sub = sub_open("tls/orders");
	ackbox_conf *c = conf_for(env("MQTTS_URL"), kv, &s);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	for (int i = 0; i < N; i++)
		ids[i] = publish(ab, "tls/orders");
	cr_assert_eq(ackbox_flush(ab, 60000 * TU_SLOW), 0);
	/* the ACL: this user may not publish there; mosquitto answers 0x87 or
	 * drops the connection (as test_mqtt's ACL test says) */
	publish(ab, "denied/orders");
	cr_assert_eq(ackbox_flush(ab, 60000 * TU_SLOW), 0);
	ackbox_poll(ab, 0);
	pthread_mutex_lock(&s.mtx);
	cr_assert_eq(s.acked, N, "%d acked", s.acked);
	cr_assert_eq(s.failed, 1, "the denied topic fails");
	cr_assert(strstr(s.reason, "Not authorized") || strstr(s.reason, "only one in flight"), "%s",
	          s.reason);
	pthread_mutex_unlock(&s.mtx);
	ackbox_destroy(ab);
	cr_assert_eq(sub_collect(sub, ids, N, &total), N);
	cr_assert_geq(total, N);
	no_password_logged(NULL);
}

static void refused_then_delivered(const char *url, const char *cafile, const char *says,
                                   const char *wrong)
{
	const char *strict[] = {"mqtt.cafile", cafile, "transport.require_connect", "true", NULL};
	const char *lenient[] = {"mqtt.cafile", cafile, NULL};
	const char *right[] = {"mqtt.cafile", env("TLS_CA"), NULL};
	char err[512] = "";
	ackbox_counts n;
	ackbox *ab = NULL;
	size_t total;

	ackbox_conf *c = conf_for(url, strict, NULL);
	int rc = ackbox_new(&ab, c, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_TRANSPORT, "%s: %d %s", url, rc, err);
	cr_assert_neq(strstr(err, says), NULL, "the error does not say '%s': %s", says, err);
	cr_assert_null(strstr(err, env("MQTT_PASSWORD")), "the password is in the error: %s", err);
	if (wrong)
		cr_assert_null(strstr(err, wrong), "the password is in the error: %s", err);
	ackbox_conf_destroy(c);

	c = conf_for(url, lenient, NULL);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	ackbox_id id = publish(ab, "tls/kept");
	cr_assert_eq(ackbox_flush(ab, 1000), ACKBOX_ERR_TIMEOUT, "nothing can be delivered");
	cr_assert_eq(ackbox_counts_get(ab, &n, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(n.sending + n.retrying, 1, "the message waits");
	cr_assert_eq(n.failed, 0, "a refused connection burns no attempt");
	ackbox_destroy(ab);

	MQTTClient sub = sub_open("tls/kept");
	c = conf_for(env("MQTTS_URL"), right, NULL);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_flush(ab, 30000 * TU_SLOW), 0, "delivered once the settings are right");
	ackbox_destroy(ab);
	cr_assert_eq(sub_collect(sub, &id, 1, &total), 1);
	no_password_logged(wrong);
}

Test(mqtt_tls, wrong_password_is_refused_naming_the_cause)
{
	char url[512];
	url_as(url, sizeof(url), "Wr0ngPassw0rd", "localhost");
	refused_then_delivered(url, env("TLS_CA"), "Not authorized", "Wr0ngPassw0rd");
}

Test(mqtt_tls, unknown_ca_is_refused_naming_the_cause)
{
	refused_then_delivered(env("MQTTS_URL"), env("TLS_OTHER_CA"),
	                       "does not verify against the CA in mqtt.cafile", NULL);
}

Test(mqtt_tls, wrong_host_name_is_refused_naming_the_cause)
{
	char url[512];
	url_as(url, sizeof(url), env("MQTT_PASSWORD"), "127.0.0.1");
	refused_then_delivered(url, env("TLS_CA"), "does not name host '127.0.0.1'", NULL);
}

/* The URL rules: no query parameters; an unreadable mqtt.cafile is a
 * configuration error (CLI exit 2), found before anything connects. */
Test(mqtt_tls, url_is_strict_and_a_missing_cafile_is_a_configuration_error)
{
	const char *missing[] = {"mqtt.cafile", "/nonexistent/ca.pem", NULL};
	char url[512], err[512] = "";
	ackbox *ab = NULL;
	snprintf(url, sizeof(url), "%s?qos=1", env("MQTTS_URL"));
	ackbox_conf *c = conf_for(url, NULL, NULL);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), ACKBOX_ERR_BAD_URL, "%s", err);
	cr_assert_neq(strstr(err, "unknown parameter 'qos'"), NULL, "%s", err);
	ackbox_conf_destroy(c);
	c = conf_for(env("MQTTS_URL"), missing, NULL);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), ACKBOX_ERR_BAD_VALUE, "%s", err);
	cr_assert_neq(strstr(err, "mqtt.cafile: cannot read '/nonexistent/ca.pem'"), NULL, "%s", err);
	cr_assert_null(strstr(err, env("MQTT_PASSWORD")), "%s", err);
	ackbox_conf_destroy(c);
	/* a directory, or a file that is not PEM: found now too, not at every connect */
	const char *dir[] = {"mqtt.cafile", "/", NULL};
	c = conf_for(env("MQTTS_URL"), dir, NULL);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), ACKBOX_ERR_BAD_VALUE, "%s", err);
	cr_assert_neq(strstr(err, "mqtt.cafile: '/': it is a directory"), NULL, "%s", err);
	ackbox_conf_destroy(c);
	const char *notpem[] = {"mqtt.cafile", "/proc/self/cmdline", NULL};
	c = conf_for(env("MQTTS_URL"), notpem, NULL);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), ACKBOX_ERR_BAD_VALUE, "%s", err);
	cr_assert_neq(strstr(err, "it holds no PEM certificate"), NULL, "%s", err);
	ackbox_conf_destroy(c);
}
