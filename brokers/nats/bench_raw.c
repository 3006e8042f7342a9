/*
 * bench_raw.c - ackbox-bench's part for NATS JetStream (examples/bench/bench.h):
 * a file stream made afresh before every round, and the raw publisher, nats.c's
 * asynchronous JetStream publishes alone with the same window and the same
 * Nats-Msg-Id header ackbox sends.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nats/nats.h>

#include "bench.h"

#define NATS_STREAM "ACKBOX_BENCH"

/* "nats://host:port" of --transport (ackbox's URL form is nats's own). */
static int nats_raw_connect(const char *url, natsConnection **nc, jsCtx **js, jsOptions *jo,
                            char *err, size_t errn)
{
	natsStatus s = natsConnection_ConnectTo(nc, url);
	if (s == NATS_OK)
		s = natsConnection_JetStream(js, *nc, jo);
	if (s != NATS_OK) {
		snprintf(err, errn, "connecting to %s: %s", url, natsStatus_GetText(s));
		if (*nc)
			natsConnection_Destroy(*nc);
		*nc = NULL;
		return -1;
	}
	return 0;
}

/*
 * Deletes and creates the file stream both modes publish to (subject
 * BENCH_TOPIC), so that every round starts from the same server state.
 */
static int nats_prepare_stream(const bench_opts *o, char *err, size_t errn)
{
	natsConnection *nc = NULL;
	jsCtx *js = NULL;
	jsStreamConfig cfg;
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	const char *subjects[] = {BENCH_TOPIC};
	if (nats_raw_connect(o->url, &nc, &js, NULL, err, errn))
		return -1;
	js_DeleteStream(js, NATS_STREAM, NULL, NULL); /* absent the first time */
	jsStreamConfig_Init(&cfg);
	cfg.Name = NATS_STREAM;
	cfg.Subjects = subjects;
	cfg.SubjectsLen = 1;
	cfg.Storage = js_FileStorage;
	natsStatus s = js_AddStream(&si, js, &cfg, NULL, &jerr);
	jsStreamInfo_Destroy(si);
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	if (s != NATS_OK) {
		snprintf(err, errn, "creating stream %s: %s (JetStream error %d)", NATS_STREAM,
		         natsStatus_GetText(s), (int)jerr);
		return -1;
	}
	return 0;
}

typedef struct nats_raw {
	pthread_mutex_t mtx;
	pthread_cond_t cond;
	int inflight;
	const bench_opts *o;
	bench_times *t;
	bench_result *r;
} nats_raw;

/* The PubAck: nats.c's reply thread. The id carries the sequence number. */
static void nats_raw_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
	nats_raw *n = closure;
	const char *id = NULL;
	size_t i = (size_t)-1;
	(void)js;
	(void)pae;
	if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) == NATS_OK)
		i = (size_t)strtoull(id, NULL, 16);
	/* outside n->mtx: it may write a file */
	bool ok = i < n->t->n && bench_answered(n->o, i, pa != NULL);
	int64_t now = bench_now_ns();
	pthread_mutex_lock(&n->mtx);
	if (ok) {
		n->t->ack[i] = now;
		n->r->acked++;
	} else {
		n->r->failed++;
	}
	n->inflight--;
	pthread_cond_signal(&n->cond);
	pthread_mutex_unlock(&n->mtx);
	natsMsg_Destroy(msg);
}

static void raw_nats(const bench_opts *o, bench_times *t, bench_result *r, int64_t deadline)
{
	char err[256];
	char *payload = bench_payload(o->size);
	natsConnection *nc = NULL;
	jsCtx *js = NULL;
	jsOptions jo;
	nats_raw n = {.o = o, .t = t, .r = r};
	int window = o->window ? o->window : 1000;

	pthread_mutex_init(&n.mtx, NULL);
	pthread_cond_init(&n.cond, NULL);
	jsOptions_Init(&jo);
	jo.PublishAsync.MaxPending = (int64_t)window * 2; /* our own window is the bound */
	jo.PublishAsync.AckHandler = nats_raw_ack;
	jo.PublishAsync.AckHandlerClosure = &n;
	if (!payload) {
		bench_fail(r, "out of memory");
		goto out;
	}
	/* the stream: made afresh by prepare (nats_prepare_stream) */
	if (nats_raw_connect(o->url, &nc, &js, &jo, err, sizeof(err))) {
		bench_fail(r, "raw nats: %s", err);
		goto out;
	}
	int64_t start = bench_now_ns();
	for (size_t i = 0; i < t->n; i++) {
		jsPubOptions po;
		natsMsg *m = NULL;
		char idtext[ACKBOX_ID_STRLEN];
		int64_t due = bench_pace(o, start, i);
		pthread_mutex_lock(&n.mtx);
		while (n.inflight >= window && bench_now_ns() < deadline)
			bench_cond_wait(&n.cond, &n.mtx);
		if (n.inflight >= window) {
			pthread_mutex_unlock(&n.mtx);
			bench_fail(r, "raw nats: round exceeded --max-seconds (%zu of %zu acked)",
			           r->acked, t->n);
			goto out;
		}
		n.inflight++;
		pthread_mutex_unlock(&n.mtx);
		/* what ackbox sends too: a 36-character Nats-Msg-Id (here it holds
		 * the sequence number, for the ack handler) */
		snprintf(idtext, sizeof(idtext), "%08x-0000-7000-8000-%012llx",
		         (unsigned)(i & 0xffffffffu), (unsigned long long)start & 0xffffffffffffULL);
		jsPubOptions_Init(&po);
		po.MsgId = idtext;
		/* what ackbox sets too: a PubAck wait below retry.timeout (nats.ack_wait,
		 * 3/4 of the default 10 s), so a lost PubAck is answered */
		po.MaxWait = 7500;
		t->pub[i] = o->rate ? due : bench_now_ns();
		if (bench_before(o, i) != 0) {
			pthread_mutex_lock(&n.mtx);
			n.inflight--;
			pthread_mutex_unlock(&n.mtx);
			goto out;
		}
		natsStatus s = natsMsg_Create(&m, BENCH_TOPIC, NULL, payload, (int)o->size);
		if (s == NATS_OK)
			s = js_PublishMsgAsync(js, &m, &po);
		natsMsg_Destroy(m); /* NULL once nats.c took it */
		if (s != NATS_OK) {
			pthread_mutex_lock(&n.mtx);
			n.inflight--;
			pthread_mutex_unlock(&n.mtx);
			bench_fail(r, "raw nats: publish: %s", natsStatus_GetText(s));
			goto out;
		}
	}
	pthread_mutex_lock(&n.mtx);
	while (n.inflight > 0 && bench_now_ns() < deadline)
		bench_cond_wait(&n.cond, &n.mtx);
	if (n.inflight > 0)
		bench_fail(r, "raw nats: round exceeded --max-seconds (%d unanswered)", n.inflight);
	pthread_mutex_unlock(&n.mtx);
out:
	if (js)
		jsCtx_Destroy(js);
	if (nc) {
		natsConnection_Close(nc);
		natsConnection_Destroy(nc);
	}
	/* no callback may run on n after this: wait for the ones still inside
	 * (nats.c does not join its threads, so the mutex is not destroyed) */
	pthread_mutex_lock(&n.mtx);
	pthread_mutex_unlock(&n.mtx);
	free(payload);
}

const bench_transport bench_transport_nats = {
	.scheme = "nats",
	.prepare = nats_prepare_stream,
	.run_raw = raw_nats,
};
