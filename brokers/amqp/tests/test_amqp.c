/*
 * test_amqp.c - the AMQP transport against a real RabbitMQ (ctest fixture
 * "rabbitmq"): N published -> N distinct ids consumed with payloads intact;
 * unroutable -> FAILED saying so; reject-publish queue -> the nack path;
 * broker killed and restarted mid-stream -> nothing lost, nothing FAILED.
 */
#include "testutil.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>

static const char *url(void)
{
	return tu_fixture("rabbitmq", "AMQP_URL");
}

/* A plain rabbitmq-c connection for declaring and consuming. */
static amqp_connection_state_t raw_connect(void)
{
	amqp_connection_state_t c = amqp_new_connection();
	amqp_socket_t *s = amqp_tcp_socket_new(c);
	int port = atoi(tu_fixture("rabbitmq", "AMQP_PORT"));
	cr_assert_eq(amqp_socket_open(s, "127.0.0.1", port), AMQP_STATUS_OK, "consumer connect");
	amqp_rpc_reply_t r = amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest");
	cr_assert_eq(r.reply_type, AMQP_RESPONSE_NORMAL, "consumer login");
	amqp_channel_open(c, 1);
	cr_assert_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
	return c;
}

static void raw_close(amqp_connection_state_t c)
{
	amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
	amqp_connection_close(c, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(c);
}

static void declare(const char *queue, amqp_table_t args)
{
	amqp_connection_state_t c = raw_connect();
	amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
	cr_assert_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL, "declare %s", queue);
	raw_close(c);
}

typedef struct got {
	ackbox_id *ids;
	size_t n, cap;
	size_t bad_payload;
	size_t with_header;
} got;

/* Drains a queue with basic.get; checks each payload against "seq:<n>". */
static void drain(const char *queue, got *g)
{
	amqp_connection_state_t c = raw_connect();
	for (;;) {
		amqp_rpc_reply_t r = amqp_basic_get(c, 1, amqp_cstring_bytes(queue), 1);
		cr_assert_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
		if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD)
			break;
		amqp_message_t m;
		cr_assert_eq(amqp_read_message(c, 1, &m, 0).reply_type, AMQP_RESPONSE_NORMAL);
		char idtext[ACKBOX_ID_STRLEN] = "";
		cr_assert(m.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG, "message-id missing");
		cr_assert_eq(m.properties.message_id.len, 36);
		memcpy(idtext, m.properties.message_id.bytes, 36);
		cr_assert_eq(m.properties.delivery_mode, 2, "persistent");
		if (g->n == g->cap) {
			g->cap = g->cap ? g->cap * 2 : 1024;
			g->ids = realloc(g->ids, g->cap * sizeof(*g->ids));
		}
		cr_assert_eq(ackbox_id_parse(idtext, &g->ids[g->n]), 0, "bad id '%s'", idtext);
		g->n++;
		if (m.body.len < 4 || memcmp(m.body.bytes, "seq:", 4) != 0)
			g->bad_payload++;
		if (m.properties._flags & AMQP_BASIC_HEADERS_FLAG)
			for (int i = 0; i < m.properties.headers.num_entries; i++)
				if (m.properties.headers.entries[i].key.len == 5 &&
				    memcmp(m.properties.headers.entries[i].key.bytes, "trace", 5) == 0)
					g->with_header++;
		amqp_destroy_message(&m);
	}
	raw_close(c);
}

static int id_cmp(const void *a, const void *b)
{
	return memcmp(a, b, sizeof(ackbox_id));
}

static size_t distinct(got *g)
{
	size_t d = 0;
	qsort(g->ids, g->n, sizeof(*g->ids), id_cmp);
	for (size_t i = 0; i < g->n; i++)
		if (i == 0 || memcmp(&g->ids[i], &g->ids[i - 1], sizeof(ackbox_id)))
			d++;
	return d;
}

static int contains(got *g, const ackbox_id *id)
{
	return bsearch(id, g->ids, g->n, sizeof(*id), id_cmp) != NULL;
}

typedef struct seen {
	int acked, failed;
	char reason[512];
	int code;
} seen;

static void on_report(const ackbox_report *r, void *o)
{
	seen *s = o;
	if (r->state == ACKBOX_MSG_ACKED)
		s->acked++;
	else {
		s->failed++;
		snprintf(s->reason, sizeof(s->reason), "%s", r->reason);
		s->code = r->broker_code;
	}
}

static char *dir;
static void setup(void) { dir = tu_tmpdir("amqp"); }
static void teardown(void) { tu_rmrf(dir); free(dir); }
TestSuite(amqp, .init = setup, .fini = teardown, .timeout = 240);

static ackbox *open_ab(seen *s, const char *k, const char *v)
{
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab;
	char db[1200], err[512];
	snprintf(db, sizeof(db), "sqlite://%s/outbox.db", dir);
	TU_SET(c, "store.url", db);
	TU_SET(c, "transport.url", url());
	TU_SET(c, "retry.timeout", "5s");
	TU_SET(c, "retry.backoff.initial", "50ms");
	TU_SET(c, "retry.backoff.max", "500ms");
	TU_SET(c, "log.level", "error");
	if (k && strcmp(k, "retry.backoff.max") == 0)
		TU_SET(c, "retry.backoff.initial", "1s");
	if (k)
		TU_SET(c, k, v);
	ackbox_conf_set_report_cb(c, on_report, s);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	return ab;
}

static ackbox_id publish_seq(ackbox *ab, const char *topic, int seq)
{
	char payload[64], err[256];
	ackbox_header h = {"trace", "abc", 3};
	ackbox_msg m = {0};
	ackbox_id id;
	snprintf(payload, sizeof(payload), "seq:%d", seq);
	m.topic = topic;
	m.payload = payload;
	m.payload_len = strlen(payload);
	m.content_type = "text/plain";
	m.headers = &h;
	m.header_count = 1;
	cr_assert_eq(ackbox_publish(ab, &m, &id, err, sizeof(err)), 0, "%s", err);
	return id;
}

Test(amqp, n_published_n_distinct_ids_consumed)
{
	enum { N = 3000 };
	seen s = {0};
	got g = {0};
	static ackbox_id ids[N];
	declare("t_n", amqp_empty_table);
	ackbox *ab = open_ab(&s, NULL, NULL);
	for (int i = 0; i < N; i++)
		ids[i] = publish_seq(ab, "t_n", i + 1);
	cr_assert_eq(ackbox_flush(ab, 60000), 0);
	cr_assert_eq(s.acked, N);
	cr_assert_eq(s.failed, 0);
	ackbox_destroy(ab);
	drain("t_n", &g);
	cr_assert_eq(g.n, N, "exactly N in the queue (no resend without a fault)");
	cr_assert_eq(distinct(&g), N);
	for (int i = 0; i < N; i++)
		cr_assert(contains(&g, &ids[i]), "id %d missing", i);
	cr_assert_eq(g.bad_payload, 0);
	cr_assert_eq(g.with_header, N, "application header passed through");
	free(g.ids);
}

Test(amqp, unroutable_fails_after_max_attempts_saying_so)
{
	seen s = {0};
	ackbox *ab = open_ab(&s, "retry.max_attempts", "3");
	publish_seq(ab, "no-queue-has-this-name", 1);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.failed, 1);
	cr_assert_eq(s.acked, 0, "the ack RabbitMQ sends after basic.return is not a delivery");
	cr_assert(strstr(s.reason, "unroutable") && strstr(s.reason, "NO_ROUTE"), "%s", s.reason);
	cr_assert(strstr(s.reason, "after 3 attempts"), "%s", s.reason);
	cr_assert_eq(s.code, 312);
	ackbox_counts k;
	char err[256];
	cr_assert_eq(ackbox_counts_get(ab, &k, err, sizeof(err)), 0);
	cr_assert_eq(k.failed, 1);
	ackbox_destroy(ab);
}

/* A publish the broker answers by closing the channel (404: no such
 * exchange) fails its attempts instead of cycling through reconnects. */
Test(amqp, missing_exchange_fails_with_404_not_a_reconnect_loop)
{
	seen s = {0};
	ackbox *ab = open_ab(&s, "amqp.exchange", "no-such-exchange");
	publish_seq(ab, "t_x", 1);
	publish_seq(ab, "t_x", 2);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.acked, 0);
	cr_assert_eq(s.failed, 2);
	cr_assert_eq(s.code, 404, "code %d: %s", s.code, s.reason);
	cr_assert(strstr(s.reason, "NOT_FOUND") && strstr(s.reason, "no-such-exchange"), "%s",
	          s.reason);
	ackbox_destroy(ab);
}

Test(amqp, reject_publish_queue_takes_the_nack_path)
{
	seen s = {0};
	amqp_table_entry_t e[2];
	e[0].key = amqp_cstring_bytes("x-max-length");
	e[0].value.kind = AMQP_FIELD_KIND_I32;
	e[0].value.value.i32 = 1;
	e[1].key = amqp_cstring_bytes("x-overflow");
	e[1].value.kind = AMQP_FIELD_KIND_UTF8;
	e[1].value.value.bytes = amqp_cstring_bytes("reject-publish");
	amqp_table_t args = {2, e};
	declare("t_full", args);
	ackbox *ab = open_ab(&s, "retry.max_attempts", "2");
	for (int i = 0; i < 5; i++)
		publish_seq(ab, "t_full", i + 1);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.acked, 1, "the queue holds one");
	cr_assert_eq(s.failed, 4);
	cr_assert(strstr(s.reason, "nack"), "%s", s.reason);
	ackbox_destroy(ab);
	got g = {0};
	drain("t_full", &g);
	cr_assert_eq(g.n, 1);
	free(g.ids);
}

static void fixture(const char *verb)
{
	char cmd[2048];
	snprintf(cmd, sizeof(cmd), "bash %s %s %s >/dev/null", RABBITMQ_FIXTURE_SCRIPT, verb,
	         tu_fixture("rabbitmq", "RABBITMQ_FIXTURE_DIR"));
	cr_assert_eq(system(cmd), 0, "%s", cmd);
}

Test(amqp, broker_killed_and_restarted_mid_stream_loses_nothing)
{
	enum { N = 3000 };
	seen s = {0};
	got g = {0};
	static ackbox_id ids[N];
	declare("t_crash", amqp_empty_table);
	/* the default resend backoff (1 s, 2 s): a RabbitMQ restarted after a
	 * SIGKILL may route nothing for a moment while it recovers its queues */
	ackbox *ab = open_ab(&s, "retry.backoff.max", "30s");
	for (int i = 0; i < N; i++) {
		ids[i] = publish_seq(ab, "t_crash", i + 1);
		if (i == N / 3)
			fixture("kill"); /* SIGKILL: unconfirmed publishes are in doubt */
		if (i == 2 * N / 3) {
			cr_assert_eq(ackbox_connected(ab), 0, "the relay noticed the broker is gone");
			fixture("restart");
		}
		ackbox_poll(ab, 0);
	}
	cr_assert_eq(ackbox_flush(ab, 120000), 0);
	cr_assert_eq(s.failed, 0, "an outage alone fails nothing: %d failed, last: %s", s.failed,
	             s.reason);
	cr_assert_eq(s.acked, N);
	ackbox_destroy(ab);
	drain("t_crash", &g);
	size_t d = distinct(&g);
	cr_assert_eq(d, N, "all %d in the durable queue (%zu distinct of %zu read)", N, d, g.n);
	for (int i = 0; i < N; i++)
		cr_assert(contains(&g, &ids[i]), "id %d lost", i);
	cr_log_info("broker restart: %zu read, %zu duplicates", g.n, g.n - d);
	free(g.ids);
}
