/*
 * conformance_adapter.c - the NATS JetStream transport's adapter for the
 * transport conformance suite: a nats-server of each test's own (the
 * fixture script in this folder), reached through the suite's TCP proxy so
 * that a cut drops the publisher's connection; one file stream per topic,
 * read back by sequence number.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nats/nats.h>

#include <ackbox/conformance.h>

static char fixture_dir[1100];
static int max_payload;
static ackbox_tc_proxy *proxy;
static natsConnection *nc; /* the test's own, straight to the server */
static jsCtx *js;
static char server_url[128];

static int fixture(const char *verb, char *err, size_t n)
{
	return ackbox_tc_sh(err, n, "bash %s %s %s >/dev/null", NATS_FIXTURE_SCRIPT, verb,
	                    fixture_dir);
}

static int js_connect(char *err, size_t n)
{
	natsStatus s = natsConnection_ConnectTo(&nc, server_url);
	if (s == NATS_OK)
		s = natsConnection_JetStream(&js, nc, NULL);
	if (s != NATS_OK) {
		snprintf(err, n, "test client: %s: %s", server_url, natsStatus_GetText(s));
		return -1;
	}
	return 0;
}

static void js_close(void)
{
	if (js)
		jsCtx_Destroy(js);
	if (nc)
		natsConnection_Destroy(nc);
	js = NULL;
	nc = NULL;
}

static int n_start(void *o, const char *dir, char *url, size_t url_size, char *err, size_t n)
{
	char env[1200], port[32], max[32];
	int pport = 0;
	(void)o;
	snprintf(fixture_dir, sizeof(fixture_dir), "%s/nats", dir);
	if (fixture("start", err, n))
		return -1;
	snprintf(env, sizeof(env), "%s/env", fixture_dir);
	if (ackbox_tc_env(env, "NATS_PORT", port, sizeof(port)) ||
	    ackbox_tc_env(env, "NATS_MAX_PAYLOAD", max, sizeof(max))) {
		snprintf(err, n, "%s: no NATS_PORT or NATS_MAX_PAYLOAD", env);
		return -1;
	}
	max_payload = atoi(max);
	snprintf(server_url, sizeof(server_url), "nats://127.0.0.1:%s", port);
	if (!(proxy = ackbox_tc_proxy_start(atoi(port), &pport))) {
		snprintf(err, n, "cannot start the proxy");
		return -1;
	}
	snprintf(url, url_size, "nats://127.0.0.1:%d", pport);
	return js_connect(err, n);
}

static void n_stop(void *o)
{
	char err[256];
	(void)o;
	js_close();
	ackbox_tc_proxy_stop(proxy);
	proxy = NULL;
	fixture("stop", err, sizeof(err));
}

static int n_kill(void *o, char *err, size_t n)
{
	(void)o;
	js_close();
	return fixture("kill", err, n);
}

static int n_restart(void *o, char *err, size_t n)
{
	(void)o;
	if (fixture("restart", err, n))
		return -1;
	return js_connect(err, n);
}

static int n_cut(void *o, char *err, size_t n)
{
	(void)o;
	(void)err;
	(void)n;
	ackbox_tc_proxy_cut(proxy);
	return 0;
}

/* The stream of a topic: S_<topic> ('.' and '-' made '_'). */
static void stream_name(const char *topic, char *out, size_t size)
{
	snprintf(out, size, "S_%s", topic);
	for (char *p = out; *p; p++)
		if (*p == '.' || *p == '-')
			*p = '_';
}

static int n_prepare(void *o, const char *topic, char *err, size_t n)
{
	jsStreamConfig cfg;
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	char name[300];
	const char *subjects[] = {topic};
	(void)o;
	stream_name(topic, name, sizeof(name));
	jsStreamConfig_Init(&cfg);
	cfg.Name = name;
	cfg.Subjects = subjects;
	cfg.SubjectsLen = 1;
	cfg.Storage = js_FileStorage;
	natsStatus s = js_AddStream(&si, js, &cfg, NULL, &jerr);
	jsStreamInfo_Destroy(si);
	if (s != NATS_OK) {
		snprintf(err, n, "add stream %s: %s (JetStream error %d)", name, natsStatus_GetText(s),
		         (int)jerr);
		return -1;
	}
	return 0;
}

static int n_consume(void *o, const char *topic, size_t expect, ackbox_tc_found_cb found,
                     void *arg, char *err, size_t n)
{
	char name[300];
	jsErrCode jerr = 0;
	uint64_t first = 0, last = 0, msgs = 0;
	time_t deadline = time(NULL) + 60;
	(void)o;
	stream_name(topic, name, sizeof(name));
	for (;;) {
		jsStreamInfo *si = NULL;
		natsStatus s = js_GetStreamInfo(&si, js, name, NULL, &jerr);
		if (s != NATS_OK) {
			snprintf(err, n, "stream %s: %s (%d)", name, natsStatus_GetText(s), (int)jerr);
			return -1;
		}
		first = si->State.FirstSeq;
		last = si->State.LastSeq;
		msgs = si->State.Msgs;
		jsStreamInfo_Destroy(si);
		if (msgs >= expect || time(NULL) >= deadline)
			break;
		nats_Sleep(50);
	}
	for (uint64_t seq = first; msgs && seq <= last; seq++) {
		natsMsg *m = NULL;
		const char *v = NULL;
		ackbox_id id;
		natsStatus s = js_GetMsg(&m, js, name, seq, NULL, &jerr);
		if (s != NATS_OK) {
			snprintf(err, n, "stream %s #%llu: %s", name, (unsigned long long)seq,
			         natsStatus_GetText(s));
			return -1;
		}
		if (natsMsgHeader_Get(m, "Nats-Msg-Id", &v) != NATS_OK || ackbox_id_parse(v, &id)) {
			snprintf(err, n, "stream %s #%llu has no ackbox id in Nats-Msg-Id", name,
			         (unsigned long long)seq);
			natsMsg_Destroy(m);
			return -1;
		}
		found(arg, &id);
		natsMsg_Destroy(m);
	}
	return 0;
}

/* No stream captures the subject: the server answers "no responders". */
static int n_refusal(void *o, ackbox_tc_refusal *r, char *err, size_t n)
{
	(void)o;
	(void)err;
	(void)n;
	snprintf(r->topic, sizeof(r->topic), "tc_nostream");
	r->broker_code = 503;
	r->outcome = ACKBOX_OUTCOME_UNROUTABLE;
	return 0;
}

static ackbox_tc_adapter adapter = {
	.struct_size = sizeof(ackbox_tc_adapter),
	.name = "nats",
	.start = n_start,
	.stop = n_stop,
	.kill = n_kill,
	.restart = n_restart,
	.cut = n_cut,
	.prepare = n_prepare,
	.consume = n_consume,
	.refusal = n_refusal,
	.oversized = 1048577, /* the fixture's max_payload (1 MiB) and one byte */
};

int main(int argc, char **argv)
{
	return ackbox_tc_main(&adapter, argc, argv);
}
