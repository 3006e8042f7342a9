/*
 * test_nats.c - the NATS JetStream transport against a real nats-server
 * (ctest fixture "nats", JetStream with its file store in the fixture's
 * directory). The test reads streams back through nats.c by sequence
 * number: N published -> N distinct ids, headers as mapped; the server
 * killed (SIGKILL) and restarted mid-stream -> nothing lost, and no
 * duplicate in the stream (Nats-Msg-Id); each JetStream refusal -> FAILED
 * with JetStream's code; a PubAck that never comes -> in doubt, resent, no
 * attempt burnt; what NATS cannot carry -> refused at publish.
 */
#include "testutil.h"

#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>

static const char *url(void)
{
	return tu_fixture("nats", "NATS_URL");
}

static void fixture(const char *verb)
{
	char cmd[2048];
	snprintf(cmd, sizeof(cmd), "bash %s %s %s >/dev/null", NATS_FIXTURE_SCRIPT, verb,
	         tu_fixture("nats", "NATS_FIXTURE_DIR"));
	cr_assert_eq(system(cmd), 0, "%s", cmd);
}

/* ---- the test's own JetStream client ---- */

static natsConnection *tnc;
static jsCtx *tjs;

static void js_up(void)
{
	natsStatus s = natsConnection_ConnectTo(&tnc, url());
	cr_assert_eq(s, NATS_OK, "connect %s: %s", url(), natsStatus_GetText(s));
	cr_assert_eq(natsConnection_JetStream(&tjs, tnc, NULL), NATS_OK);
}

static void js_down(void)
{
	if (tjs)
		jsCtx_Destroy(tjs);
	if (tnc)
		natsConnection_Destroy(tnc);
	tjs = NULL;
	tnc = NULL;
}

/* A file stream NAME on SUBJECT; max_msgs > 0: that many, then refused. */
static void add_stream(const char *name, const char *subject, int64_t max_msgs)
{
	jsStreamConfig cfg;
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	const char *subjects[] = {subject};
	jsStreamConfig_Init(&cfg);
	cfg.Name = name;
	cfg.Subjects = subjects;
	cfg.SubjectsLen = 1;
	cfg.Storage = js_FileStorage;
	if (max_msgs > 0) {
		cfg.MaxMsgs = max_msgs;
		cfg.Discard = js_DiscardNew;
	}
	natsStatus s = js_AddStream(&si, tjs, &cfg, NULL, &jerr);
	cr_assert_eq(s, NATS_OK, "add stream %s: %s (%d)", name, natsStatus_GetText(s), (int)jerr);
	jsStreamInfo_Destroy(si);
}

typedef struct got {
	ackbox_id *ids;
	size_t n, bad_payload;
} got;

static int id_cmp(const void *a, const void *b)
{
	return memcmp(a, b, sizeof(ackbox_id));
}

/* Every message the stream holds, by sequence number, ids sorted. */
static void read_stream(const char *name, got *g)
{
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	cr_assert_eq(js_GetStreamInfo(&si, tjs, name, NULL, &jerr), NATS_OK, "stream %s: %d", name,
	             (int)jerr);
	uint64_t first = si->State.FirstSeq, last = si->State.LastSeq;
	g->n = 0;
	g->bad_payload = 0;
	g->ids = calloc(si->State.Msgs + 1, sizeof(*g->ids));
	jsStreamInfo_Destroy(si);
	for (uint64_t seq = first; seq && seq <= last; seq++) {
		natsMsg *m = NULL;
		const char *v = NULL;
		natsStatus s = js_GetMsg(&m, tjs, name, seq, NULL, &jerr);
		cr_assert_eq(s, NATS_OK, "get %s #%llu: %s", name, (unsigned long long)seq,
		             natsStatus_GetText(s));
		cr_assert_eq(natsMsgHeader_Get(m, "Nats-Msg-Id", &v), NATS_OK, "#%llu has no id",
		             (unsigned long long)seq);
		cr_assert_eq(ackbox_id_parse(v, &g->ids[g->n++]), 0, "id '%s'", v);
		if (natsMsg_GetDataLength(m) < 4 || memcmp(natsMsg_GetData(m), "seq:", 4) != 0)
			g->bad_payload++;
		natsMsg_Destroy(m);
	}
	qsort(g->ids, g->n, sizeof(*g->ids), id_cmp);
}

static size_t distinct(const got *g)
{
	size_t d = 0;
	for (size_t i = 0; i < g->n; i++)
		if (i == 0 || memcmp(&g->ids[i], &g->ids[i - 1], sizeof(ackbox_id)))
			d++;
	return d;
}

static void assert_all_there(got *g, const ackbox_id *ids, int n)
{
	cr_assert_eq(distinct(g), (size_t)n, "%zu distinct of %d (read %zu)", distinct(g), n, g->n);
	for (int i = 0; i < n; i++)
		cr_assert(bsearch(&ids[i], g->ids, g->n, sizeof(ackbox_id), id_cmp), "id %d lost", i);
	cr_assert_eq(g->bad_payload, 0);
}

/* ---- the publisher side ---- */

typedef struct seen {
	atomic_int acked, failed;
	int code, retriable;
	ackbox_outcome outcome;
	char reason[512];
} seen;

static void on_report(const ackbox_report *r, void *o)
{
	seen *s = o;
	if (r->state == ACKBOX_MSG_ACKED) {
		s->acked++;
		return;
	}
	s->code = r->broker_code;
	s->retriable = r->retriable;
	s->outcome = r->outcome;
	snprintf(s->reason, sizeof(s->reason), "%s", r->reason);
	s->failed++;
}

static struct {
	pthread_mutex_t mtx;
	char text[32768];
	size_t len;
} logs = {.mtx = PTHREAD_MUTEX_INITIALIZER};

static void on_log(ackbox_log_level level, const char *component, const char *msg, void *o)
{
	(void)level;
	(void)o;
	pthread_mutex_lock(&logs.mtx);
	if (logs.len < sizeof(logs.text))
		logs.len += (size_t)snprintf(logs.text + logs.len, sizeof(logs.text) - logs.len,
		                             "%s: %s\n", component, msg);
	if (logs.len > sizeof(logs.text))
		logs.len = sizeof(logs.text);
	pthread_mutex_unlock(&logs.mtx);
}

static int logged(const char *needle)
{
	int n = 0;
	pthread_mutex_lock(&logs.mtx);
	for (const char *p = logs.text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	pthread_mutex_unlock(&logs.mtx);
	return n;
}

static char *dir;
static void setup(void)
{
	dir = tu_tmpdir("nats");
	pthread_mutex_lock(&logs.mtx);
	logs.len = 0;
	logs.text[0] = '\0';
	pthread_mutex_unlock(&logs.mtx);
	js_up();
}
static void teardown(void)
{
	js_down();
	tu_rmrf(dir);
	free(dir);
}
TestSuite(nats, .init = setup, .fini = teardown, .timeout = 240);

static ackbox *open_kv(seen *s, const char *turl, const char *const *kv)
{
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab;
	char db[1200], err[512];
	snprintf(db, sizeof(db), "sqlite://%s/outbox.db", dir);
	TU_SET(c, "store.url", db);
	if (turl)
		TU_SET(c, "transport.url", turl);
	TU_SET(c, "retry.timeout", "5s");
	TU_SET(c, "retry.backoff.initial", "50ms");
	TU_SET(c, "retry.backoff.max", "500ms");
	TU_SET(c, "log.level", "info");
	for (; kv && kv[0]; kv += 2)
		TU_SET(c, kv[0], kv[1]);
	ackbox_conf_set_report_cb(c, on_report, s);
	ackbox_conf_set_log_cb(c, on_log, NULL);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	return ab;
}

static ackbox_counts counts(ackbox *ab)
{
	ackbox_counts n;
	char err[256];
	cr_assert_eq(ackbox_counts_get(ab, &n, err, sizeof(err)), 0, "%s", err);
	return n;
}

static ackbox_id publish_seq(ackbox *ab, const char *subject, int seq)
{
	char payload[64], err[256];
	ackbox_msg m = {0};
	ackbox_id id;
	snprintf(payload, sizeof(payload), "seq:%d", seq);
	m.topic = subject;
	m.payload = payload;
	m.payload_len = strlen(payload);
	cr_assert_eq(ackbox_publish(ab, &m, &id, err, sizeof(err)), 0, "%s", err);
	return id;
}

enum { N = 2000 };
static ackbox_id ids[N];

Test(nats, n_published_n_distinct_ids_in_the_stream_headers_mapped)
{
	seen s = {0};
	got g = {0};
	char err[256];
	add_stream("N", "t.n", 0);
	ackbox *ab = open_kv(&s, url(), NULL);
	for (int i = 0; i < N; i++)
		ids[i] = publish_seq(ab, "t.n", i + 1);
	cr_assert_eq(ackbox_flush(ab, 60000), 0);
	cr_assert_eq(s.acked, N);
	cr_assert_eq(s.failed, 0);

	/* one message with everything ackbox maps to NATS headers */
	ackbox_header hs[] = {{"Trace", "abc", 3}, {"Trace", "def", 3}, {"lang", "caf\xC3\xA9", 5}};
	ackbox_msg m = {.topic = "t.n", .payload = "seq:full", .payload_len = 8, .key = "k-1",
	                .key_len = 3, .content_type = "application/json", .headers = hs,
	                .header_count = 3};
	ackbox_id full;
	cr_assert_eq(ackbox_publish(ab, &m, &full, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.acked, N + 1);
	ackbox_destroy(ab);

	read_stream("N", &g);
	cr_assert_eq(g.n, (size_t)N + 1, "no resend without a fault: %zu", g.n);
	natsMsg *last = NULL;
	jsErrCode jerr = 0;
	cr_assert_eq(js_GetLastMsg(&last, tjs, "N", "t.n", NULL, &jerr), NATS_OK);
	const char *v = NULL, **vals = NULL;
	char idtext[ACKBOX_ID_STRLEN];
	int nv = 0;
	ackbox_id_format(&full, idtext);
	cr_assert_eq(natsMsgHeader_Get(last, "Nats-Msg-Id", &v), NATS_OK);
	cr_assert_str_eq(v, idtext);
	cr_assert_eq(natsMsgHeader_Get(last, "ackbox-key", &v), NATS_OK);
	cr_assert_str_eq(v, "k-1");
	cr_assert_eq(natsMsgHeader_Get(last, "Content-Type", &v), NATS_OK);
	cr_assert_str_eq(v, "application/json");
	cr_assert_eq(natsMsgHeader_Values(last, "Trace", &vals, &nv), NATS_OK);
	cr_assert_eq(nv, 2, "both values of a repeated header");
	cr_assert(strcmp(vals[0], "abc") == 0 && strcmp(vals[1], "def") == 0);
	free((void *)vals);
	cr_assert_eq(natsMsgHeader_Get(last, "lang", &v), NATS_OK);
	cr_assert_str_eq(v, "caf\xC3\xA9");
	natsMsg_Destroy(last);
	free(g.ids);
}

/*
 * SIGKILL of nats-server mid-stream: JetStream writes a message to its file
 * store (the page cache) before the PubAck, so a process crash keeps what it
 * acked. What was in flight is resent with the same Nats-Msg-Id, and the
 * stream drops every copy it already had: no duplicate, nothing lost.
 */
Test(nats, server_killed_and_restarted_mid_stream_loses_nothing_and_duplicates_nothing)
{
	seen s = {0};
	got g = {0};
	add_stream("K", "t.kill", 0);
	js_down();
	ackbox *ab = open_kv(&s, url(), NULL);
	for (int i = 0; i < N; i++) {
		ids[i] = publish_seq(ab, "t.kill", i + 1);
		if (i == N / 3)
			fixture("kill");
		if (i == 2 * N / 3)
			fixture("restart");
		ackbox_poll(ab, 0);
	}
	cr_assert_eq(ackbox_flush(ab, 120000), 0);
	cr_assert_eq(s.failed, 0, "an outage alone fails nothing: %s", s.reason);
	cr_assert_eq(s.acked, N);
	cr_assert(logged("transport disconnected"), "%s", logs.text);
	ackbox_destroy(ab);
	js_up();
	read_stream("K", &g);
	assert_all_there(&g, ids, N);
	cr_log_info("nats kill -9: %zu in the stream, %zu duplicates", g.n, g.n - distinct(&g));
	cr_assert_eq(g.n, (size_t)N, "Nats-Msg-Id: the stream holds each id once");
	free(g.ids);
}

/* No stream captures the subject: the server answers "no responders". */
Test(nats, subject_without_a_stream_fails_unroutable_503)
{
	seen s = {0};
	add_stream("OK1", "t.ok1", 0);
	ackbox *ab = open_kv(&s, url(), (const char *const[]){"retry.max_attempts", "2", NULL});
	publish_seq(ab, "t.nostream", 1);
	publish_seq(ab, "t.ok1", 2);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.acked, 1);
	cr_assert_eq(s.failed, 1);
	cr_assert_eq(s.outcome, ACKBOX_OUTCOME_UNROUTABLE);
	cr_assert_eq(s.code, 503);
	cr_assert(strstr(s.reason, "no stream captures subject 't.nostream'"), "%s", s.reason);
	cr_assert_eq(logged("transport disconnected"), 0, "%s", logs.text);
	ackbox_destroy(ab);
}

/* A stream at its MaxMsgs with discard new refuses more: JetStream 10077. */
Test(nats, full_stream_with_discard_new_nacks_10077)
{
	seen s = {0};
	add_stream("FULL", "t.full", 5);
	ackbox *ab = open_kv(&s, url(), (const char *const[]){"retry.max_attempts", "2", NULL});
	for (int i = 0; i < 5; i++)
		publish_seq(ab, "t.full", i);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.acked, 5);
	for (int i = 0; i < 3; i++)
		publish_seq(ab, "t.full", 10 + i);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.acked, 5);
	cr_assert_eq(s.failed, 3);
	cr_assert_eq(s.outcome, ACKBOX_OUTCOME_NACK);
	cr_assert_eq(s.code, 10077);
	cr_assert_eq(s.retriable, 1);
	cr_assert(strstr(s.reason, "JetStream error 10077 on 't.full': maximum messages exceeded"),
	          "%s", s.reason);
	ackbox_destroy(ab);
}

/* Nats-Expected-Last-Sequence passed as a header: a wrong one is 10071. */
Test(nats, wrong_expected_last_sequence_nacks_10071_not_retriable)
{
	seen s = {0};
	char err[256];
	add_stream("SEQ", "t.seq", 0);
	ackbox *ab = open_kv(&s, url(), (const char *const[]){"retry.max_attempts", "1", NULL});
	ackbox_header h = {"Nats-Expected-Last-Sequence", "0", 1};
	ackbox_msg m = {.topic = "t.seq", .payload = "seq:1", .payload_len = 5, .headers = &h,
	                .header_count = 1};
	cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.acked, 1, "the stream was empty: last sequence 0 holds");
	m.payload = "seq:2";
	cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.failed, 1);
	cr_assert_eq(s.code, 10071);
	cr_assert_eq(s.retriable, 0);
	cr_assert(strstr(s.reason, "wrong last sequence: 1"), "%s", s.reason);
	ackbox_destroy(ab);
}

static atomic_int silent_got;

static void on_silent(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
	(void)nc;
	(void)sub;
	(void)closure;
	silent_got++;
	natsMsg_Destroy(msg); /* and never answer */
}

/*
 * A plain subscriber on the subject that never answers: nats.c waits for a
 * PubAck, gives up after nats.ack_wait, and the message is in doubt: resent,
 * no attempt burnt, however often. Once a stream captures the subject (and
 * the subscriber is gone), the next resend is acked.
 */
Test(nats, pub_ack_timeout_is_in_doubt_resent_never_burnt)
{
	seen s = {0};
	natsSubscription *sub = NULL;
	cr_assert_eq(natsConnection_Subscribe(&sub, tnc, "t.silent", on_silent, NULL), NATS_OK);
	cr_assert_eq(natsConnection_Flush(tnc), NATS_OK);
	ackbox *ab = open_kv(&s, url(),
	                     (const char *const[]){"retry.max_attempts", "1", "retry.timeout", "2s",
	                                           "nats.ack_wait", "200ms", NULL});
	publish_seq(ab, "t.silent", 1);
	cr_assert(TU_WAIT_UNTIL((ackbox_poll(ab, 10), silent_got >= 3), 30000), "got %d",
	          (int)silent_got);
	cr_assert_eq(s.failed, 0, "a timeout burns nothing: %s", s.reason);
	cr_assert_eq(counts(ab).failed, 0u);
	natsSubscription_Unsubscribe(sub);
	natsSubscription_Destroy(sub);
	add_stream("SILENT", "t.silent", 0);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.acked, 1);
	cr_assert_eq(s.failed, 0);
	ackbox_destroy(ab);
}

/* ---- what is refused at publish (the validate op) ---- */

static void refused(ackbox *ab, const ackbox_msg *m, int rc, const char *needle)
{
	char err[512] = "";
	int got = ackbox_publish(ab, m, NULL, err, sizeof(err));
	cr_assert_eq(got, rc, "subject '%.40s': got %d (%s), want %d", m->topic, got, err, rc);
	cr_assert(strstr(err, needle), "'%s' not in: %s", needle, err);
}

Test(nats, publish_refuses_what_nats_cannot_carry_and_stores_nothing)
{
	seen s = {0};
	char err[512];
	add_stream("V", "t.v.>", 0);
	ackbox *ab = open_kv(&s, url(), (const char *const[]){"transport.require_connect", "true",
	                                                      "message.max_bytes", "4194304", NULL});
	ackbox_msg m = {.topic = "t.v.ok", .payload = "x", .payload_len = 1};
	ackbox_header h = {"h", "v", 1};
	m.topic = "t.v.*";
	refused(ab, &m, ACKBOX_ERR_INVALID, "wildcard '*'");
	m.topic = "t.v.>";
	refused(ab, &m, ACKBOX_ERR_INVALID, "wildcard '>'");
	m.topic = "t.v. x";
	refused(ab, &m, ACKBOX_ERR_INVALID, "a space");
	m.topic = "t..v";
	refused(ab, &m, ACKBOX_ERR_INVALID, "empty token");
	m.topic = "t.v.ok";
	m.headers = &h;
	m.header_count = 1;
	h.name = "a:b";
	refused(ab, &m, ACKBOX_ERR_INVALID, "header 0 name");
	h.name = "Nats-Msg-Id";
	refused(ab, &m, ACKBOX_ERR_INVALID, "ackbox sets that header");
	h.name = "h";
	h.value = "a\nb";
	h.value_len = 3;
	refused(ab, &m, ACKBOX_ERR_INVALID, "without CR, LF or NUL");
	m.headers = NULL;
	m.header_count = 0;
	/* over the server's max_payload (1 MiB, learned at connect) */
	size_t big = 1048576;
	char *payload = calloc(1, big);
	m.payload = payload;
	m.payload_len = big;
	refused(ab, &m, ACKBOX_ERR_TOO_LARGE, "over the server's max_payload of 1048576 bytes");
	ackbox_counts n = counts(ab);
	cr_assert_eq(n.sending + n.retrying + n.failed, 0u, "nothing stored");
	m.payload_len = big - 200; /* headers and all fit */
	cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.acked, 1);
	cr_assert_eq(s.failed, 0);
	ackbox_destroy(ab);
	free(payload);
}

/*
 * Rows stored by a handle without a transport are not checked: an
 * oversized one and a wildcard one end FAILED before they are sent (the
 * server would close the connection on the first), the others are acked,
 * and the connection stays up.
 */
Test(nats, invalid_rows_stored_unchecked_fail_alone_without_a_disconnect)
{
	seen s = {0};
	char err[256];
	add_stream("U", "t.u.>", 0);
	ackbox *ab = open_kv(&s, NULL, (const char *const[]){"message.max_bytes", "4194304", NULL});
	char *payload = calloc(1, 2000000);
	ackbox_msg m = {.topic = "t.u.big", .payload = payload, .payload_len = 2000000};
	cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	m = (ackbox_msg){.topic = "t.u.*", .payload = "x", .payload_len = 1};
	cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	for (int i = 0; i < 5; i++)
		publish_seq(ab, "t.u.ok", i);
	ackbox_destroy(ab);
	free(payload);

	ab = open_kv(&s, url(), (const char *const[]){"message.max_bytes", "4194304", NULL});
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.acked, 5);
	cr_assert_eq(s.failed, 2);
	cr_assert_eq(counts(ab).failed, 2u);
	cr_assert_eq(logged("transport disconnected"), 0, "%s", logs.text);
	ackbox_destroy(ab);
}

/* nats.stream: the transport creates the stream at connect (demos). */
Test(nats, nats_stream_creates_the_stream_at_connect)
{
	seen s = {0};
	got g = {0};
	ackbox *ab = open_kv(&s, url(),
	                     (const char *const[]){"nats.stream", "AUTO", "nats.stream_subjects",
	                                           "t.auto.>,t.auto2", NULL});
	ids[0] = publish_seq(ab, "t.auto.a", 1);
	ids[1] = publish_seq(ab, "t.auto2", 2);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.acked, 2);
	ackbox_destroy(ab);
	/* a second connect finds it there */
	ab = open_kv(&s, url(), (const char *const[]){"nats.stream", "AUTO", "nats.stream_subjects",
	                                              "t.auto.>,t.auto2", NULL});
	ids[2] = publish_seq(ab, "t.auto.b", 3);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.acked, 3);
	ackbox_destroy(ab);
	read_stream("AUTO", &g);
	qsort(ids, 3, sizeof(ids[0]), id_cmp);
	assert_all_there(&g, ids, 3);
	free(g.ids);
}

Test(nats, unreachable_server_and_bad_keys_are_named)
{
	seen s = {0};
	ackbox *ab = NULL;
	char err[512];
	ackbox_conf *c = ackbox_conf_new();
	char db[1200];
	snprintf(db, sizeof(db), "sqlite://%s/outbox.db", dir);
	TU_SET(c, "store.url", db);
	TU_SET(c, "transport.url", "nats://127.0.0.1:1");
	TU_SET(c, "transport.require_connect", "true");
	TU_SET(c, "transport.connect_timeout", "1s");
	ackbox_conf_set_report_cb(c, on_report, &s);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), ACKBOX_ERR_TRANSPORT, "%s", err);
	cr_assert(strstr(err, "nats: cannot connect to 127.0.0.1:1"), "%s", err);
	TU_SET(c, "transport.url", url());
	TU_SET(c, "transport.require_connect", "false");
	TU_SET(c, "nats.ack_wait", "20s"); /* retry.timeout is 10s */
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), ACKBOX_ERR_BAD_VALUE, "%s", err);
	cr_assert(strstr(err, "nats.ack_wait"), "%s", err);
	TU_SET(c, "nats.ack_wait", "1s");
	TU_SET(c, "nats.stream", "X");
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), ACKBOX_ERR_BAD_VALUE, "%s", err);
	cr_assert(strstr(err, "nats.stream_subjects"), "%s", err);
	/* the URL rule every plugin follows: settings are nats.* keys */
	TU_SET(c, "nats.stream", "");
	char u[600];
	snprintf(u, sizeof(u), "%s?ack_wait=1s", url());
	TU_SET(c, "transport.url", u);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), ACKBOX_ERR_BAD_URL, "%s", err);
	cr_assert(strstr(err, "unknown parameter 'ack_wait'"), "%s", err);
	ackbox_conf_destroy(c);
}
