/*
 * test_amqp.c - the AMQP transport against a real RabbitMQ (ctest fixture
 * "rabbitmq"): N published -> N distinct ids consumed with payloads intact;
 * unroutable -> FAILED saying so; reject-publish queue -> the nack path;
 * broker killed and restarted mid-stream -> nothing lost, nothing FAILED;
 * a message over max_message_size -> FAILED alone; a queue the broker
 * refuses to declare -> that message FAILED; a message RabbitMQ answers by
 * closing the connection -> the close reason reaches the core.
 */
#include "testutil.h"

#include <pthread.h>

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

/* Declares queue and empties it (a test run before may have left messages). */
static void declare(const char *queue, amqp_table_t args)
{
	amqp_connection_state_t c = raw_connect();
	amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
	cr_assert_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL, "declare %s", queue);
	amqp_queue_purge(c, 1, amqp_cstring_bytes(queue));
	cr_assert_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL, "purge %s", queue);
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
	int attempts;
	ackbox_outcome outcome;
	char topic[300];
	char all[2048];   /* every FAILED reason, one per line */
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
		s->attempts = r->attempts;
		s->outcome = r->outcome;
		snprintf(s->topic, sizeof(s->topic), "%s", r->topic);
		size_t l = strlen(s->all);
		snprintf(s->all + l, sizeof(s->all) - l, "%s\n", r->reason);
	}
}

/* Counts log lines containing `want`, from any ackbox thread. */
typedef struct logwatch {
	pthread_mutex_t mtx;
	const char *want;
	int hits;
	char line[512];
} logwatch;

static void on_log(ackbox_log_level level, const char *component, const char *msg, void *o)
{
	logwatch *w = o;
	(void)level;
	pthread_mutex_lock(&w->mtx);
	if (strstr(msg, w->want)) {
		w->hits++;
		snprintf(w->line, sizeof(w->line), "%s: %s", component, msg);
	}
	pthread_mutex_unlock(&w->mtx);
}

static int log_hits(logwatch *w)
{
	pthread_mutex_lock(&w->mtx);
	int n = w->hits;
	pthread_mutex_unlock(&w->mtx);
	return n;
}

static char *dir;
static void setup(void) { dir = tu_tmpdir("amqp"); }
static void teardown(void) { tu_rmrf(dir); free(dir); }
TestSuite(amqp, .init = setup, .fini = teardown, .timeout = 240);

/* The tests' settings: the store in this test's directory, the fixture's broker. */
static ackbox_conf *make_conf(seen *s)
{
	ackbox_conf *c = ackbox_conf_new();
	char db[1200];
	snprintf(db, sizeof(db), "sqlite://%s/outbox.db", dir);
	TU_SET(c, "store.url", db);
	TU_SET(c, "transport.url", url());
	TU_SET(c, "retry.timeout", "5s");
	TU_SET(c, "retry.backoff.initial", "50ms");
	TU_SET(c, "retry.backoff.max", "500ms");
	TU_SET(c, "log.level", "error");
	ackbox_conf_set_report_cb(c, on_report, s);
	return c;
}

static ackbox *open_conf(ackbox_conf *c)
{
	ackbox *ab;
	char err[512];
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	return ab;
}

static ackbox *open_ab(seen *s, const char *k, const char *v)
{
	ackbox_conf *c = make_conf(s);
	if (k && strcmp(k, "retry.backoff.max") == 0)
		TU_SET(c, "retry.backoff.initial", "1s");
	if (k)
		TU_SET(c, k, v);
	return open_conf(c);
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

static void rabbitmq_eval(const char *expr)
{
	char cmd[2048];
	snprintf(cmd, sizeof(cmd), "bash %s eval %s '%s' >/dev/null", RABBITMQ_FIXTURE_SCRIPT,
	         tu_fixture("rabbitmq", "RABBITMQ_FIXTURE_DIR"), expr);
	cr_assert_eq(system(cmd), 0, "%s", cmd);
}

/*
 * RabbitMQ's max_message_size (set here at run time, for channels opened
 * afterwards) closes the channel with 406 naming the size. The transport
 * blames only the publishes of that size: with a single attempt allowed,
 * the big message ends FAILED with the broker's words and every other one
 * is acked (resent if it was in flight with it, as in doubt). Blaming every
 * unconfirmed publish, as for a 404, would fail those in flight with it.
 */
Test(amqp, message_over_max_message_size_fails_alone)
{
	enum { N = 40, BIG = 2000 };
	static ackbox_id ids[N];
	static char big[BIG];
	seen s = {0};
	got g = {0};
	ackbox_counts k;
	char err[256];
	int rc;
	memset(big, 'b', sizeof(big));
	memcpy(big, "seq:", 4);
	declare("t_max", amqp_empty_table);
	rabbitmq_eval("application:set_env(rabbit, max_message_size, 1024).");
	ackbox *ab = open_ab(&s, "retry.max_attempts", "1");
	for (int i = 0; i < N; i++) {
		ids[i] = publish_seq(ab, "t_max", i + 1);
		if (i == N / 4) {
			ackbox_msg m = {.topic = "t_max", .payload = big, .payload_len = BIG};
			cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
		}
	}
	rc = ackbox_flush(ab, 60000);
	/* RabbitMQ 3.10's default, before anything is asserted */
	rabbitmq_eval("application:set_env(rabbit, max_message_size, 134217728).");
	cr_assert_eq(rc, 0);
	cr_assert_eq(s.failed, 1, "%s", s.all);
	cr_assert_eq(s.acked, N);
	cr_assert_eq(s.code, 406, "code %d: %s", s.code, s.reason);
	cr_assert(strstr(s.reason, "message size 2000 is larger than configured max size 1024"),
	          "%s", s.reason);
	cr_assert_eq(s.attempts, 1);
	cr_assert_eq(ackbox_counts_get(ab, &k, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(k.failed, 1u);
	ackbox_destroy(ab);
	drain("t_max", &g);
	cr_assert_eq(distinct(&g), N, "%zu distinct of %zu read", distinct(&g), g.n);
	for (int i = 0; i < N; i++)
		cr_assert(contains(&g, &ids[i]), "id %d missing", i);
	cr_log_info("max_message_size: %zu read, %zu duplicates", g.n, g.n - distinct(&g));
	free(g.ids);
}

/*
 * amqp.declare_queue with a name RabbitMQ refuses to declare ("amq." is
 * reserved): the broker closes the channel with 403 in answer to the
 * declare, which is that message's error (FAILED after its attempts, not a
 * reconnect loop); a message to another queue is acked.
 */
Test(amqp, queue_the_broker_refuses_to_declare_fails_that_message)
{
	seen s = {0};
	ackbox *ab = open_ab(&s, "amqp.declare_queue", "true");
	publish_seq(ab, "amq.ackbox-refused", 1);
	publish_seq(ab, "t_decl", 2);
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	cr_assert_eq(s.failed, 1, "%s", s.all);
	cr_assert_eq(s.acked, 1);
	cr_assert_eq(s.code, 403, "code %d: %s", s.code, s.reason);
	cr_assert(strstr(s.reason, "declaring queue 'amq.ackbox-refused'") &&
	              strstr(s.reason, "ACCESS_REFUSED"),
	          "%s", s.reason);
	ackbox_destroy(ab);
}

/*
 * A message RabbitMQ 3.10 answers by closing the connection, not the
 * channel: a direct reply-to routing key whose suffix decodes (base64) to
 * something that is not a pid crashes the channel, and the broker closes
 * the connection with 541 INTERNAL_ERROR, each time the message is sent.
 * The DISCONNECTED report carries the broker's code and text, which the
 * core logs and gives a poison message as its reason.
 */
Test(amqp, connection_closed_by_broker_reports_its_code_and_text)
{
	seen s = {0};
	logwatch w = {PTHREAD_MUTEX_INITIALIZER,
	              "transport disconnected (connection closed by broker: 541 INTERNAL_ERROR)", 0,
	              ""};
	ackbox_conf *c = make_conf(&s);
	TU_SET(c, "retry.max_attempts", "3");
	TU_SET(c, "log.level", "warn");
	ackbox_conf_set_log_cb(c, on_log, &w);
	ackbox *ab = open_conf(c);
	publish_seq(ab, "amq.rabbitmq.reply-to.g2wAAAAA.abc", 1);
	/* twice: the resend after the reconnect closes it again */
	cr_assert(TU_WAIT_UNTIL(log_hits(&w) >= 2, 30000), "%d closes seen; last: %s", log_hits(&w),
	          w.line);
	cr_assert_eq(s.acked, 0);
	ackbox_destroy(ab);
}
