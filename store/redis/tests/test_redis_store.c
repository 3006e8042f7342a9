/*
 * test_redis_store.c - what only the Redis store has to prove: it says when
 * the server's AOF policy can lose acknowledged publishes (and refuses with
 * redis.require_fsync), fails clearly when the server is unreachable, keeps
 * every row across a restart of redis-server, keeps its keys under its
 * prefix and leaves nothing behind once rows are acked; recovery at open
 * leaves a live relay's leases alone (another publisher on the prefix) and
 * takes those of a killed one at once.
 * The contract every store keeps is in tests/store_conformance/.
 */
#include "testutil.h"

#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include <hiredis/hiredis.h>

#include <ackbox/store.h>

#include "ackbox_loopback.h"

/* ------------------------------------------------------------------ */
/* Private redis-servers (the fixture script with its own DIR)          */
/* ------------------------------------------------------------------ */

typedef struct srv {
	char *dir;
	int port;
} srv;

static srv priv[2];

static void srv_run(const srv *s, const char *verb, const char *extra)
{
	char cmd[2048];
	snprintf(cmd, sizeof(cmd), "bash '%s' %s '%s' %s >/dev/null", ACKBOX_REDIS_FIXTURE, verb,
	         s->dir, extra ? extra : "");
	cr_assert_eq(system(cmd), 0, "%s failed", cmd);
}

/* Starts a private redis-server with extra options; fills s. */
static void srv_start(srv *s, const char *extra)
{
	char path[1200], line[256];
	FILE *f;
	s->dir = tu_tmpdir("redis");
	srv_run(s, "start", extra);
	snprintf(path, sizeof(path), "%s/env", s->dir);
	f = fopen(path, "r");
	cr_assert(f != NULL, "%s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, "REDIS_PORT=", 11) == 0)
			s->port = atoi(line + 11);
	fclose(f);
	cr_assert_gt(s->port, 0);
}

static void srv_stop(srv *s)
{
	if (!s->dir)
		return;
	srv_run(s, "stop", NULL);
	free(s->dir);
	s->dir = NULL;
}

static char prefix[64];
static char url[512];

static void setup(void)
{
	snprintf(prefix, sizeof(prefix), "t%d_%lld", (int)getpid(), (long long)ackbox_wall_ms());
	snprintf(url, sizeof(url), "%s/0?prefix=%s", tu_fixture("redis", "REDIS_URL"), prefix);
}

static void teardown(void)
{
	for (int i = 0; i < 2; i++)
		srv_stop(&priv[i]);
	ackbox_loopback_reset();
}

TestSuite(redis, .init = setup, .fini = teardown, .timeout = 120);

/* ------------------------------------------------------------------ */
/* Helpers                                                              */
/* ------------------------------------------------------------------ */

typedef struct logs {
	pthread_mutex_t mtx;
	char text[16][1024];
	ackbox_log_level level[16];
	int n;
} logs;

static logs captured = {.mtx = PTHREAD_MUTEX_INITIALIZER};

static void on_log(ackbox_log_level level, const char *component, const char *msg, void *opaque)
{
	logs *l = opaque;
	pthread_mutex_lock(&l->mtx);
	if (l->n < 16) {
		snprintf(l->text[l->n], sizeof(l->text[0]), "%s: %s", component, msg);
		l->level[l->n++] = level;
	}
	pthread_mutex_unlock(&l->mtx);
}

/* The first captured WARN from the redis store, or NULL. */
static const char *redis_warning(void)
{
	for (int i = 0; i < captured.n; i++)
		if (captured.level[i] == ACKBOX_LOG_WARN && strncmp(captured.text[i], "redis:", 6) == 0)
			return captured.text[i];
	return NULL;
}

/* ackbox_new on store_url with optional key=value; returns rc, *ab on success. */
static int open_handle(ackbox **ab, const char *store_url, const char *k, const char *v,
                       char *err, size_t errsz)
{
	ackbox_conf *c = ackbox_conf_new();
	int rc;
	*ab = NULL;
	TU_SET(c, "store.url", store_url);
	TU_SET(c, "redis.connect_timeout", "2s");
	if (k)
		TU_SET(c, k, v);
	ackbox_conf_set_log_cb(c, on_log, &captured);
	rc = ackbox_new(ab, c, err, errsz);
	if (rc)
		ackbox_conf_destroy(c);
	return rc;
}

static redisContext *connect_to(int port)
{
	redisContext *r = redisConnect("127.0.0.1", port);
	cr_assert(r != NULL && !r->err, "connect to redis :%d: %s", port, r ? r->errstr : "nomem");
	return r;
}

static int fixture_port(void)
{
	return atoi(tu_fixture("redis", "REDIS_PORT"));
}

/* Runs a command and returns its reply (the caller frees). */
static redisReply *cmd(redisContext *r, const char *fmt, ...)
{
	va_list ap;
	redisReply *rep;
	va_start(ap, fmt);
	rep = redisvCommand(r, fmt, ap);
	va_end(ap);
	cr_assert(rep != NULL, "redis: %s", r->errstr);
	return rep;
}

/* The store's ops table opened on u: direct access for varied states. */
typedef struct store {
	const ackbox_store_ops *ops;
	void *ctx;
	ackbox_conf *conf;
} store;

static int st_open(store *s, const char *u, char *err, size_t errsz)
{
	ackbox_url pu;
	int rc;
	cr_assert_eq(ackbox_url_parse(u, &pu, err, errsz), 0, "%s", err);
	s->ops = ackbox_store_lookup("redis");
	cr_assert(s->ops != NULL, "the redis store is not built in");
	s->conf = ackbox_conf_new();
	TU_SET(s->conf, "redis.connect_timeout", "2s");
	TU_SET(s->conf, "log.level", "error");
	s->ctx = calloc(1, s->ops->ctx_size);
	rc = s->ops->open(s->ctx, &pu, s->conf, ACKBOX_SYNC_FULL, err, errsz);
	ackbox_url_fini(&pu);
	if (rc) {
		free(s->ctx);
		ackbox_conf_destroy(s->conf);
		s->ctx = NULL;
	}
	return rc;
}

static void st_close(store *s)
{
	if (!s->ctx)
		return;
	s->ops->close(s->ctx);
	free(s->ctx);
	ackbox_conf_destroy(s->conf);
	s->ctx = NULL;
}

/* A compact, comparable dump of every row: one line per row. */
typedef struct dump {
	char *text;
	size_t len, cap;
	int rows;
} dump;

static int dump_cb(const ackbox_store_row *r, void *opaque)
{
	dump *d = opaque;
	char id[ACKBOX_ID_STRLEN], line[512];
	uint32_t sum = 2166136261u;
	int n;
	for (size_t i = 0; i < r->payload_len; i++)
		sum = (sum ^ ((const uint8_t *)r->payload)[i]) * 16777619u;
	for (size_t i = 0; i < r->headers_len; i++)
		sum = (sum ^ ((const uint8_t *)r->headers)[i]) * 16777619u;
	ackbox_id_format(&r->id, id);
	n = snprintf(line, sizeof(line),
	             "%s s%d a%d c%lld u%lld d%lld t=%s k%zu ct=%s h%zu p%zu#%08x e=%s/%d\n", id, r->state, r->attempts, (long long)r->created_ms, (long long)r->updated_ms,
	             (long long)r->due_ms, r->topic, r->key_len,
	             r->content_type ? r->content_type : "-", r->headers_len, r->payload_len, sum,
	             r->last_error ? r->last_error : "-", r->last_code);
	if (d->len + (size_t)n + 1 > d->cap) {
		d->cap = (d->cap + (size_t)n + 1) * 2;
		d->text = realloc(d->text, d->cap);
		cr_assert(d->text != NULL);
	}
	memcpy(d->text + d->len, line, (size_t)n + 1);
	d->len += (size_t)n;
	d->rows++;
	return 0;
}

static dump take_dump(store *s)
{
	dump d = {0};
	char err[512] = "";
	int rc = s->ops->list(s->ctx, -1, 0, dump_cb, &d, err, sizeof(err));
	cr_assert_geq(rc, 0, "list: %s", err);
	if (!d.text)
		d.text = strdup("");
	return d;
}

/* What fill() claimed: ids and their leases, in claim order. */
typedef struct claimed {
	ackbox_id *ids;
	uint64_t *leases;
	int n;
} claimed;

static int claim_cb(const ackbox_store_row *row, void *opaque)
{
	claimed *cl = opaque;
	cl->ids[cl->n] = row->id;
	cl->leases[cl->n] = row->lease;
	cl->n++;
	return 0;
}

/* Fills s with n rows: a third each SENDING, RETRYING and FAILED; payloads
 * of varied size with every byte value, some keys, content types, headers. */
static void fill(store *s, int n, int64_t now)
{
	static uint8_t payload[70000];
	ackbox_store_rec *recs = calloc((size_t)n, sizeof(*recs));
	ackbox_store_change *ch = calloc((size_t)n, sizeof(*ch));
	claimed cl = {calloc((size_t)n, sizeof(ackbox_id)), calloc((size_t)n, sizeof(uint64_t)), 0};
	ackbox_header h = {"trace", "a\0b", 3};
	uint8_t hbuf[64];
	size_t hl = ackbox_headers_encoded_size(&h, 1);
	char err[512] = "";
	int rc, m = 0;

	cr_assert(recs && ch && cl.ids && cl.leases && hl <= sizeof(hbuf));
	ackbox_headers_encode(&h, 1, hbuf);
	for (size_t i = 0; i < sizeof(payload); i++)
		payload[i] = (uint8_t)(i * 7);
	for (int i = 0; i < n; i++) {
		ackbox_id_new(&recs[i].id);
		recs[i].created_ms = now - n + i;
		recs[i].due_ms = now;
		recs[i].topic = i % 2 ? "orders" : "billing";
		recs[i].key = i % 5 ? NULL : "key";
		recs[i].key_len = i % 5 ? 0 : 3;
		recs[i].content_type = i % 4 ? NULL : "application/json";
		recs[i].headers = i % 3 ? NULL : hbuf;
		recs[i].headers_len = i % 3 ? 0 : hl;
		recs[i].payload = payload;
		recs[i].payload_len = (size_t)(i * 211) % sizeof(payload);
	}
	rc = s->ops->insert(s->ctx, recs, (size_t)n, err, sizeof(err));
	cr_assert_eq(rc, 0, "insert: %s", err);
	while (cl.n < n) {
		rc = s->ops->claim(s->ctx, now, now + 3600000, 500, claim_cb, &cl, err, sizeof(err));
		cr_assert_gt(rc, 0, "claim: %s", err);
	}
	for (int i = 0; i < n; i++) {
		if (i % 3 == 0)
			continue;
		ch[m].kind = i % 3 == 1 ? ACKBOX_CHANGE_RETRY : ACKBOX_CHANGE_FAIL;
		ch[m].id = cl.ids[i];
		ch[m].lease = cl.leases[i];
		ch[m].attempts = i % 3;
		ch[m].due_ms = now + i;
		ch[m].last_error = i % 3 == 1 ? "nack: 406" : "max attempts";
		ch[m].last_code = 406;
		m++;
	}
	rc = s->ops->apply(s->ctx, ch, (size_t)m, err, sizeof(err));
	cr_assert_eq(rc, 0, "apply: %s", err);
	free(cl.ids);
	free(cl.leases);
	free(ch);
	free(recs);
}

/* ------------------------------------------------------------------ */
/* Durability check                                                     */
/* ------------------------------------------------------------------ */

Test(redis, durable_server_opens_without_warning)
{
	ackbox *ab;
	char err[512] = "";
	cr_assert_eq(open_handle(&ab, url, NULL, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_null(redis_warning(), "the fixture runs appendonly yes, appendfsync always: %s",
	               redis_warning());
	ackbox_destroy(ab);
	cr_assert_eq(open_handle(&ab, url, "redis.require_fsync", "true", err, sizeof(err)), 0, "%s",
	             err);
	ackbox_destroy(ab);
}

Test(redis, appendonly_no_warns_and_require_fsync_refuses)
{
	ackbox *ab;
	char err[1024] = "", u[256];
	redisContext *r;
	int rc;

	srv_start(&priv[0], "--appendonly no");
	snprintf(u, sizeof(u), "redis://127.0.0.1:%d?prefix=%s", priv[0].port, prefix);
	cr_assert_eq(open_handle(&ab, u, NULL, NULL, err, sizeof(err)), 0, "%s", err);
	const char *w = redis_warning();
	cr_assert(w != NULL, "no WARN about appendonly no");
	cr_assert(strstr(w, "appendonly no") && strstr(w, "lose") && strstr(w, "appendfsync always"),
	          "the warning names the setting, what it means and the fix: %s", w);
	ackbox_destroy(ab);

	rc = open_handle(&ab, u, "redis.require_fsync", "true", err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE, "rc %d: %s", rc, err);
	cr_assert_null(ab);
	cr_assert(strstr(err, "appendonly no") && strstr(err, "redis.require_fsync"), "%s", err);

	/* AOF on, but fsync'd once a second: still not durable for store.sync=full */
	r = connect_to(priv[0].port);
	freeReplyObject(cmd(r, "CONFIG SET appendonly yes"));
	freeReplyObject(cmd(r, "CONFIG SET appendfsync everysec"));
	redisFree(r);
	captured.n = 0;
	cr_assert_eq(open_handle(&ab, u, NULL, NULL, err, sizeof(err)), 0, "%s", err);
	w = redis_warning();
	cr_assert(w && strstr(w, "appendfsync everysec") && strstr(w, "second"), "%s",
	          w ? w : "no warning");
	ackbox_destroy(ab);
	/* store.sync=normal does not promise power-loss safety: everysec is enough */
	captured.n = 0;
	cr_assert_eq(open_handle(&ab, u, "store.sync", "normal", err, sizeof(err)), 0, "%s", err);
	cr_assert_null(redis_warning(), "%s", redis_warning());
	ackbox_destroy(ab);
	rc = open_handle(&ab, u, "redis.require_fsync", "yes", err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "appendfsync everysec"), "%s", err);
}

/* ------------------------------------------------------------------ */
/* Errors                                                               */
/* ------------------------------------------------------------------ */

Test(redis, unreachable_server_is_a_clear_error)
{
	ackbox *ab;
	char err[512] = "";
	long long t0 = tu_mono_ms();
	int rc = open_handle(&ab, "redis://127.0.0.1:1?prefix=x", NULL, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE, "rc %d: %s", rc, err);
	cr_assert_null(ab);
	cr_assert(strstr(err, "cannot connect to redis at 127.0.0.1:1: Connection refused"), "%s",
	          err);
	cr_assert_lt(tu_mono_ms() - t0, 3000, "no retry loop inside the store");
}

Test(redis, malformed_urls_are_refused)
{
	ackbox *ab;
	char err[512] = "", u[256];
	const char *bad[] = {"?prefix=a{b}", "?prefix=", "?db=1", "/x", "/1/2"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(u, sizeof(u), "%s%s", tu_fixture("redis", "REDIS_URL"), bad[i]);
		int rc = open_handle(&ab, u, NULL, NULL, err, sizeof(err));
		cr_assert_eq(rc, ACKBOX_ERR_BAD_URL, "%s: rc %d (%s)", u, rc, err);
		cr_assert(strstr(err, "store.url"), "%s", err);
	}
}

Test(redis, wrong_password_is_a_clear_error)
{
	ackbox *ab;
	char err[512] = "", u[256];
	int rc;
	srv_start(&priv[0], "--requirepass s3cret");
	snprintf(u, sizeof(u), "redis://:wrong@127.0.0.1:%d?prefix=p", priv[0].port);
	rc = open_handle(&ab, u, NULL, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "AUTH") && strstr(err, "127.0.0.1") && !strstr(err, "wrong"),
	          "names the server and the step, never the password: %s", err);
	snprintf(u, sizeof(u), "redis://127.0.0.1:%d?prefix=p", priv[0].port);
	rc = open_handle(&ab, u, NULL, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "NOAUTH") && strstr(err, "password"), "%s", err);
	snprintf(u, sizeof(u), "redis://:s3cret@127.0.0.1:%d/3?prefix=p", priv[0].port);
	cr_assert_eq(open_handle(&ab, u, NULL, NULL, err, sizeof(err)), 0, "%s", err);
	ackbox_destroy(ab);
}

Test(redis, foreign_keys_and_newer_schemas_are_refused)
{
	redisContext *r = connect_to(fixture_port());
	ackbox *ab;
	char err[512] = "", u[512];
	int rc;

	/* a key of another type under the prefix */
	freeReplyObject(cmd(r, "SET {%s_a}:due not-a-zset", prefix));
	snprintf(u, sizeof(u), "%s?prefix=%s_a", tu_fixture("redis", "REDIS_URL"), prefix);
	rc = open_handle(&ab, u, NULL, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE_SCHEMA, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "due") && strstr(err, "prefix"), "%s", err);

	/* a newer layout, then a foreign one */
	cr_assert_eq(open_handle(&ab, url, NULL, NULL, err, sizeof(err)), 0, "%s", err);
	ackbox_destroy(ab);
	freeReplyObject(cmd(r, "HSET {%s}:meta version 99", prefix));
	rc = open_handle(&ab, url, NULL, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE_SCHEMA, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "99") && strstr(err, "upgrade"), "%s", err);
	freeReplyObject(cmd(r, "HSET {%s}:meta schema billing version 1", prefix));
	rc = open_handle(&ab, url, NULL, NULL, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE_SCHEMA, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "foreign") && strstr(err, "billing"), "%s", err);
	redisFree(r);
}

static int count_keys(redisContext *r, const char *pattern, int *outside);

/* store.create=never (admin tools): a mistyped prefix is an error and
 * writes no key; =insert writes {P}:meta with the first message only. */
Test(redis, create_never_and_insert_write_no_key_before_a_message)
{
	redisContext *r = connect_to(fixture_port());
	ackbox *ab;
	ackbox_counts c;
	ackbox_msg m = {.topic = "t", .payload = "x", .payload_len = 1};
	redisReply *rep;
	char err[512] = "", pattern[128];
	int rc;

	snprintf(pattern, sizeof(pattern), "{%s}:*", prefix);
	rc = open_handle(&ab, url, "store.create", "never", err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE_SCHEMA, "rc %d: %s", rc, err);
	cr_assert(strstr(err, "no ackbox store") && strstr(err, prefix), "%s", err);
	cr_assert_eq(count_keys(r, pattern, NULL), 0, "never wrote a key");

	cr_assert_eq(open_handle(&ab, url, "store.create", "insert", err, sizeof(err)), 0, "%s",
	             err);
	cr_assert_eq(ackbox_counts_get(ab, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.sending + c.retrying + c.failed, 0);
	cr_assert_eq(count_keys(r, pattern, NULL), 0, "opening and reading wrote no key");
	cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	rep = cmd(r, "HGET {%s}:meta schema", prefix);
	cr_assert(rep->type == REDIS_REPLY_STRING && strcmp(rep->str, "ackbox-outbox") == 0,
	          "the first message wrote the meta hash");
	freeReplyObject(rep);
	ackbox_destroy(ab);
	cr_assert_eq(open_handle(&ab, url, "store.create", "never", err, sizeof(err)), 0, "%s",
	             err);
	cr_assert_eq(ackbox_counts_get(ab, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.sending, 1);
	ackbox_destroy(ab);
	redisFree(r);
}

Test(redis, a_damaged_row_is_failed_by_claim_and_reported_by_get)
{
	redisContext *r = connect_to(fixture_port());
	store s = {0};
	ackbox_store_rec recs[2];
	char err[512] = "", id[ACKBOX_ID_STRLEN];
	int64_t now = ackbox_wall_ms();
	dump d = {0};
	int rc;

	cr_assert_eq(st_open(&s, url, err, sizeof(err)), 0, "%s", err);
	memset(recs, 0, sizeof(recs));
	for (int i = 0; i < 2; i++) {
		ackbox_id_new(&recs[i].id);
		recs[i].created_ms = now;
		recs[i].due_ms = now - 10 + i; /* the damaged one is due first */
		recs[i].topic = "orders";
		recs[i].payload = "x";
		recs[i].payload_len = 1;
	}
	cr_assert_eq(s.ops->insert(s.ctx, recs, 2, err, sizeof(err)), 0, "%s", err);
	ackbox_id_format(&recs[0].id, id);
	freeReplyObject(cmd(r, "HSET {%s}:m:%s state x", prefix, id));
	rc = s.ops->claim(s.ctx, now, now + 1000, 10, dump_cb, &d, err, sizeof(err));
	cr_assert_eq(rc, 1, "the sound row is handed out, the damaged one is not (rc %d: %s)", rc,
	             err);
	cr_assert_eq(d.rows, 1);
	/* the claim failed it, with a reason naming the damage: a row again */
	rc = s.ops->get(s.ctx, &recs[0].id, dump_cb, &d, err, sizeof(err));
	cr_assert_eq(rc, 0, "rc %d: %s", rc, err);
	cr_assert_eq(d.rows, 2);
	cr_assert(strstr(d.text, " s2 ") && strstr(d.text, "the state does not parse"), "%s",
	          d.text);
	/* and no claim hands it out (the sound one is leased until now + 1000) */
	rc = s.ops->claim(s.ctx, now + 500, now + 6000, 10, dump_cb, &d, err, sizeof(err));
	cr_assert_eq(rc, 0, "rc %d: %s", rc, err);
	free(d.text);
	st_close(&s);
	redisFree(r);
}

/* ------------------------------------------------------------------ */
/* Layout                                                               */
/* ------------------------------------------------------------------ */

static int count_keys(redisContext *r, const char *pattern, int *outside)
{
	char cursor[32] = "0", pfx[96];
	int n = 0;
	snprintf(pfx, sizeof(pfx), "{%s}:", prefix);
	do {
		redisReply *rep = cmd(r, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
		cr_assert_eq(rep->type, REDIS_REPLY_ARRAY);
		snprintf(cursor, sizeof(cursor), "%s", rep->element[0]->str);
		for (size_t i = 0; i < rep->element[1]->elements; i++) {
			n++;
			if (outside && strncmp(rep->element[1]->element[i]->str, pfx, strlen(pfx)) != 0)
				(*outside)++;
		}
		freeReplyObject(rep);
	} while (strcmp(cursor, "0") != 0);
	return n;
}

/* ---- relays in two processes on one prefix ---- */

static ackbox_conf *relay_conf(const char *broker, const char *timeout)
{
	ackbox_conf *c = ackbox_conf_new();
	char lb[128];
	snprintf(lb, sizeof(lb), "loopback://%s", broker);
	TU_SET(c, "store.url", url);
	TU_SET(c, "transport.url", lb);
	TU_SET(c, "retry.timeout", timeout);
	TU_SET(c, "store.poll_interval", "20ms");
	TU_SET(c, "log.level", "error");
	return c;
}

static int due_after(const ackbox_stored *m, void *opaque)
{
	int64_t *v = opaque; /* v[0]: bound, v[1]: messages due after it */
	if (m->due_ms > v[0])
		v[1]++;
	return 0;
}

/* A relay in a child process whose broker never confirms: 6 messages in
 * flight under a 60 s lease (published one by one: rows; or in one call: a
 * packed batch); it reports, then waits to be killed. */
static pid_t child_relay(int packed)
{
	int up[2];
	char ready;
	pid_t pid;
	cr_assert_eq(pipe(up), 0);
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		ackbox_loopback *lb = ackbox_loopback_get("child");
		ackbox_msg m[6];
		char err[512];
		ackbox *ab;
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		ackbox_loopback_set_default(lb, ACKBOX_LB_DROP, 0);
		if (ackbox_new(&ab, relay_conf("child", "60s"), err, sizeof(err)) != 0)
			_exit(2);
		for (int i = 0; i < 6; i++)
			m[i] = (ackbox_msg){.topic = "child", .payload = "c", .payload_len = 1};
		if (packed && ackbox_publish_batch(ab, m, 6, NULL, err, sizeof(err)) != 0)
			_exit(3);
		for (int i = 0; !packed && i < 6; i++)
			if (ackbox_publish(ab, &m[i], NULL, err, sizeof(err)) != 0)
				_exit(3);
		while (ackbox_loopback_received(lb) < 6)
			ackbox_poll(ab, 5);
		if (write(up[1], "r", 1) != 1)
			_exit(4);
		for (;;)
			pause();
	}
	close(up[1]);
	cr_assert_eq(read(up[0], &ready, 1), 1, "the child relay has its messages in flight");
	close(up[0]);
	return pid;
}

static void live_and_killed_relay(int packed)
{
	ackbox_loopback *lb = ackbox_loopback_get("parent");
	ackbox *ab;
	int64_t v[2];
	char err[512] = "";
	pid_t pid = child_relay(packed);
	int status;
	redisContext *r = connect_to(fixture_port());
	redisReply *x = cmd(r, "EXISTS {%s}:b:1", prefix);

	cr_assert_eq(x->integer, packed, "the child's six are %s", packed ? "one batch" : "rows");
	freeReplyObject(x);
	redisFree(r);
	cr_assert_eq(ackbox_new(&ab, relay_conf("parent", "2s"), err, sizeof(err)), 0, "%s", err);
	/* opening recovered nothing of the live relay's: its batch is still one key */
	x = cmd(r = connect_to(fixture_port()), "EXISTS {%s}:b:1", prefix);
	cr_assert_eq(x->integer, packed);
	freeReplyObject(x);
	redisFree(r);
	v[0] = tu_wall_ms() + 30000;
	v[1] = 0;
	cr_assert_eq(ackbox_list(ab, -1, 0, due_after, v, err, sizeof(err)), 6, "%s", err);
	cr_assert_eq(v[1], 6, "recovery at open left the live relay's 60 s leases alone");
	x = cmd(r = connect_to(fixture_port()), "EXISTS {%s}:b:1", prefix);
	cr_assert_eq(x->integer, packed, "listing left the batch as it was");
	freeReplyObject(x);
	redisFree(r);
	cr_assert_eq(ackbox_loopback_received(lb), 0, "and sent none of its messages");
	ackbox_destroy(ab);

	kill(pid, SIGKILL);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert_eq(ackbox_new(&ab, relay_conf("parent", "2s"), err, sizeof(err)), 0, "%s", err);
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_received(lb) == 6, 5000),
	          "a killed relay's messages are recovered at once, not after its lease (%zu)",
	          ackbox_loopback_received(lb));
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	ackbox_destroy(ab);
}

Test(redis, recovery_leaves_a_live_relays_leases_and_takes_a_killed_ones)
{
	live_and_killed_relay(0);
}

/* The same with the six in one packed batch: listing reads it as it is (the
 * live relay's lease shows), recovery takes a dead owner's batch at once. */
Test(redis, recovery_leaves_a_live_relays_packed_batch_and_takes_a_killed_ones)
{
	live_and_killed_relay(1);
}

Test(redis, keys_stay_under_the_prefix_and_acked_rows_leave_nothing)
{
	redisContext *r = connect_to(fixture_port());
	ackbox *ab;
	ackbox_msg m = {0};
	char err[512] = "", pattern[128], lb[64];
	ackbox_conf *c = ackbox_conf_new();
	int outside = 0;

	snprintf(pattern, sizeof(pattern), "*%s*", prefix);
	snprintf(lb, sizeof(lb), "loopback://layout");
	TU_SET(c, "store.url", url);
	TU_SET(c, "log.level", "error");
	ackbox_loopback_set_up(ackbox_loopback_get("layout"), 0);
	TU_SET(c, "transport.url", lb);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	m.topic = "orders";
	m.payload = "x";
	m.payload_len = 1;
	for (int i = 0; i < 20; i++)
		cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	/* meta, bytes, due, created, s0, all, and one hash per message */
	cr_assert_eq(count_keys(r, pattern, &outside), 6 + 20);
	cr_assert_eq(outside, 0, "every key carries the {prefix}: hash tag");
	redisReply *t = cmd(r, "TYPE {%s}:due", prefix);
	cr_assert_str_eq(t->str, "zset");
	freeReplyObject(t);
	ackbox_loopback_set_up(ackbox_loopback_get("layout"), 1);
	cr_assert_eq(ackbox_flush(ab, 20000), 0);
	ackbox_destroy(ab);
	cr_assert_eq(count_keys(r, pattern, NULL), 2,
	             "only {prefix}:meta and {prefix}:bytes are left once all is acked");
	redisReply *bytes = cmd(r, "GET {%s}:bytes", prefix);
	cr_assert(bytes->type == REDIS_REPLY_STRING && strcmp(bytes->str, "0") == 0,
	          "{prefix}:bytes is 0 once all is acked");
	freeReplyObject(bytes);
	redisFree(r);
}

/* A batch of 20 is one hash: no key per message, and nothing of it once acked. */
Test(redis, a_packed_batch_is_one_key_and_leaves_nothing_once_acked)
{
	redisContext *r = connect_to(fixture_port());
	ackbox *ab;
	ackbox_msg m[20];
	ackbox_counts k;
	char err[512] = "", pattern[128];
	ackbox_conf *c = ackbox_conf_new();
	int outside = 0;

	snprintf(pattern, sizeof(pattern), "*%s*", prefix);
	TU_SET(c, "store.url", url);
	TU_SET(c, "log.level", "error");
	ackbox_loopback_set_up(ackbox_loopback_get("packed"), 0);
	TU_SET(c, "transport.url", "loopback://packed");
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	for (int i = 0; i < 20; i++)
		m[i] = (ackbox_msg){.topic = "orders", .payload = "xyz", .payload_len = 3};
	cr_assert_eq(ackbox_publish_batch(ab, m, 20, NULL, err, sizeof(err)), 0, "%s", err);
	/* meta, bytes, bseq, bn, bdue, bcreated and the batch */
	cr_assert_eq(count_keys(r, pattern, &outside), 7);
	cr_assert_eq(outside, 0, "every key carries the {prefix}: hash tag");
	redisReply *t = cmd(r, "HGET {%s}:b:1 n", prefix);
	cr_assert(t->type == REDIS_REPLY_STRING && strcmp(t->str, "20") == 0, "{prefix}:b:1 holds 20");
	freeReplyObject(t);
	cr_assert_eq(ackbox_counts_get(ab, &k, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(k.sending, 20, "packed members count as SENDING");
	t = cmd(r, "GET {%s}:bytes", prefix);
	cr_assert(t->type == REDIS_REPLY_STRING && strcmp(t->str, "60") == 0, "bytes %s",
	          t->str ? t->str : "?");
	freeReplyObject(t);
	ackbox_loopback_set_up(ackbox_loopback_get("packed"), 1);
	cr_assert_eq(ackbox_flush(ab, 20000), 0);
	cr_assert_eq(ackbox_counts_get(ab, &k, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(k.sending + k.retrying + k.failed, 0);
	ackbox_destroy(ab);
	cr_assert_eq(count_keys(r, pattern, NULL), 4,
	             "meta, bytes, bn and bseq are left once all is acked");
	t = cmd(r, "MGET {%s}:bytes {%s}:bn", prefix, prefix);
	cr_assert(t->type == REDIS_REPLY_ARRAY && t->elements == 2 &&
	              strcmp(t->element[0]->str, "0") == 0 && strcmp(t->element[1]->str, "0") == 0,
	          "bytes and bn are 0 once all is acked");
	freeReplyObject(t);
	redisFree(r);
}

typedef struct seen {
	ackbox_id ids[64];
	char payload[64][8];
	int n, sending;
} seen;

static int seen_cb(const ackbox_stored *m, void *opaque)
{
	seen *s = opaque;
	if (s->n < 64) {
		s->ids[s->n] = m->id;
		snprintf(s->payload[s->n], sizeof(s->payload[0]), "%.*s", (int)m->payload_len,
		         (const char *)m->payload);
	}
	s->n++;
	s->sending += m->state == ACKBOX_MSG_SENDING;
	return 0;
}

/* list and show read packed batches where they are: both batches stay one
 * key each. A forced member (ackbox_fail) turns its own batch into rows,
 * and only that one. */
Test(redis, list_and_show_read_packed_batches_and_fail_unpacks_only_its_batch)
{
	redisContext *r = connect_to(fixture_port());
	ackbox *ab;
	ackbox_msg m[6], one = {.topic = "orders", .payload = "r0", .payload_len = 2};
	ackbox_id a[6], b[6], row;
	ackbox_counts k;
	seen all = {0}, some = {0}, shown = {0};
	char err[512] = "", pay[6][8];
	ackbox_conf *c = ackbox_conf_new();
	redisReply *x;

	TU_SET(c, "store.url", url);
	TU_SET(c, "log.level", "error");
	ackbox_loopback_set_up(ackbox_loopback_get("lister"), 0);
	TU_SET(c, "transport.url", "loopback://lister");
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	for (int i = 0; i < 6; i++) {
		snprintf(pay[i], sizeof(pay[i]), "a%d", i);
		m[i] = (ackbox_msg){.topic = "orders", .payload = pay[i], .payload_len = 2};
	}
	cr_assert_eq(ackbox_publish_batch(ab, m, 6, a, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_publish(ab, &one, &row, err, sizeof(err)), 0, "%s", err);
	for (int i = 0; i < 6; i++)
		pay[i][0] = 'b';
	cr_assert_eq(ackbox_publish_batch(ab, m, 6, b, err, sizeof(err)), 0, "%s", err);

	cr_assert_eq(ackbox_list(ab, -1, 0, seen_cb, &all, err, sizeof(err)), 13, "%s", err);
	cr_assert_eq(all.n, 13);
	cr_assert_eq(all.sending, 13);
	/* in id order: the first batch, the row, the second batch */
	for (int i = 0; i < 6; i++) {
		cr_assert(memcmp(&all.ids[i], &a[i], sizeof(a[i])) == 0, "member %d of the first", i);
		cr_assert(memcmp(&all.ids[7 + i], &b[i], sizeof(b[i])) == 0, "member %d of the second",
		          i);
		cr_assert_eq(all.payload[i][0], 'a');
		cr_assert_eq(all.payload[7 + i][0], 'b');
	}
	cr_assert(memcmp(&all.ids[6], &row, sizeof(row)) == 0, "the row between them");
	cr_assert_str_eq(all.payload[6], "r0");
	cr_assert_eq(ackbox_list(ab, ACKBOX_MSG_SENDING, 4, seen_cb, &some, err, sizeof(err)), 4,
	             "%s", err);
	cr_assert(memcmp(&some.ids[3], &a[3], sizeof(a[3])) == 0, "a limit counts members too");
	cr_assert_eq(ackbox_show(ab, &b[4], seen_cb, &shown, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(shown.n, 1);
	cr_assert_str_eq(shown.payload[0], "b4");
	x = cmd(r, "EXISTS {%s}:b:1 {%s}:b:2", prefix, prefix);
	cr_assert_eq(x->integer, 2, "listing and showing left both batches packed");
	freeReplyObject(x);
	x = cmd(r, "ZCARD {%s}:all", prefix);
	cr_assert_eq(x->integer, 1, "and wrote no row: the one row is the single publish");
	freeReplyObject(x);

	cr_assert_eq(ackbox_fail(ab, &b[2], "by hand", err, sizeof(err)), 1, "%s", err);
	x = cmd(r, "EXISTS {%s}:b:1 {%s}:b:2", prefix, prefix);
	cr_assert_eq(x->integer, 1, "failing b[2] unpacked its own batch only");
	freeReplyObject(x);
	x = cmd(r, "EXISTS {%s}:b:1", prefix);
	cr_assert_eq(x->integer, 1, "the first batch is still packed");
	freeReplyObject(x);
	cr_assert_eq(ackbox_counts_get(ab, &k, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(k.failed, 1);
	cr_assert_eq(k.sending, 12);
	ackbox_loopback_set_up(ackbox_loopback_get("lister"), 1);
	cr_assert_eq(ackbox_flush(ab, 20000), 0);
	/* the relay had all thirteen in memory: the failed one may go out once */
	cr_assert_geq(ackbox_loopback_received(ackbox_loopback_get("lister")), 12,
	              "the other twelve are delivered");
	cr_assert_eq(ackbox_counts_get(ab, &k, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(k.sending + k.retrying, 0, "nothing is left pending");
	cr_assert_eq(k.failed, 1, "the failed one stays FAILED");
	ackbox_destroy(ab);
	redisFree(r);
}

/* A prefix written by the layout before packed batches (version 1) opens,
 * keeps its rows and is raised to version 2, which an older ackbox refuses. */
Test(redis, a_version_1_prefix_is_raised_to_2_and_keeps_its_rows)
{
	redisContext *r = connect_to(fixture_port());
	ackbox *ab;
	ackbox_msg m = {.topic = "orders", .payload = "x", .payload_len = 1};
	ackbox_counts k;
	char err[512] = "";

	cr_assert_eq(open_handle(&ab, url, NULL, NULL, err, sizeof(err)), 0, "%s", err);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	ackbox_destroy(ab);
	freeReplyObject(cmd(r, "HSET {%s}:meta version 1", prefix));
	cr_assert_eq(open_handle(&ab, url, NULL, NULL, err, sizeof(err)), 0, "%s", err);
	redisReply *v = cmd(r, "HGET {%s}:meta version", prefix);
	cr_assert(v->type == REDIS_REPLY_STRING && strcmp(v->str, "2") == 0, "version %s",
	          v->str ? v->str : "?");
	freeReplyObject(v);
	cr_assert_eq(ackbox_counts_get(ab, &k, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(k.sending, 3, "the version 1 rows are kept");
	ackbox_destroy(ab);
	redisFree(r);
}

Test(redis, a_flushed_script_cache_is_reloaded)
{
	redisContext *r = connect_to(fixture_port());
	ackbox *ab;
	ackbox_msg m = {0};
	ackbox_counts c;
	char err[512] = "";

	cr_assert_eq(open_handle(&ab, url, NULL, NULL, err, sizeof(err)), 0, "%s", err);
	freeReplyObject(cmd(r, "SCRIPT FLUSH"));
	m.topic = "orders";
	m.payload = "x";
	m.payload_len = 1;
	cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_counts_get(ab, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(c.sending, 1);
	ackbox_destroy(ab);
	redisFree(r);
}

/* ------------------------------------------------------------------ */
/* Restarts                                                             */
/* ------------------------------------------------------------------ */

Test(redis, restart_of_redis_keeps_every_row, .timeout = 180)
{
	store s = {0}, s2 = {0};
	char err[512] = "", u[256];
	int64_t now = ackbox_wall_ms();
	ackbox_store_rec more[7];
	dump before, after;
	int rc;

	srv_start(&priv[0], NULL);
	snprintf(u, sizeof(u), "redis://127.0.0.1:%d/2?prefix=restart", priv[0].port);
	cr_assert_eq(st_open(&s, u, err, sizeof(err)), 0, "%s", err);
	fill(&s, 600, now);
	before = take_dump(&s);
	cr_assert_eq(before.rows, 600);

	/* SIGTERM: redis finishes its AOF and exits; the open store waits it out */
	srv_run(&priv[0], "term", NULL);
	ackbox_counts c;
	rc = s.ops->counts(s.ctx, &c, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_STORE, "server down: rc %d (%s)", rc, err);
	cr_assert(strstr(err, "cannot connect to redis at 127.0.0.1:"), "%s", err);
	srv_run(&priv[0], "restart", NULL);
	after = take_dump(&s); /* the same ctx reconnects by itself */
	cr_assert_eq(after.rows, 600);
	cr_assert_str_eq(after.text, before.text, "every row, state and byte as before");
	free(after.text);

	/* SIGKILL right after acknowledged inserts (a row, then a packed batch of
	 * six): appendfsync always kept them */
	memset(more, 0, sizeof(more));
	for (int i = 0; i < 7; i++) {
		ackbox_id_new(&more[i].id);
		more[i].created_ms = now;
		more[i].due_ms = now;
		more[i].topic = "last";
		more[i].payload = "acknowledged";
		more[i].payload_len = 12;
	}
	cr_assert_eq(s.ops->insert(s.ctx, &more[0], 1, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(s.ops->insert(s.ctx, &more[1], 6, err, sizeof(err)), 0, "%s", err);
	srv_run(&priv[0], "kill", NULL);
	srv_run(&priv[0], "restart", NULL);
	st_close(&s);
	cr_assert_eq(st_open(&s2, u, err, sizeof(err)), 0, "%s", err);
	after = take_dump(&s2);
	cr_assert_eq(after.rows, 607, "the last acknowledged inserts survived kill -9 (%d rows)",
	             after.rows);
	cr_assert_eq(strncmp(after.text, before.text, before.len), 0, "and so did the rest");
	st_close(&s2);
	free(after.text);
	free(before.text);
}

/* Publishes 300 messages around a restart of redis, `per_call` a call
 * (1: rows; 20: packed batches), then lets the broker confirm them all. */
static void ride_out_a_restart(const char *name, int per_call)
{
	ackbox *ab;
	ackbox_loopback *lb = ackbox_loopback_get(name);
	ackbox_conf *c = ackbox_conf_new();
	ackbox_msg m = {0}, mm[20];
	ackbox_counts n;
	char err[512] = "", u[256], t[64];
	int published = 0;

	srv_start(&priv[0], NULL);
	snprintf(u, sizeof(u), "redis://127.0.0.1:%d?prefix=%s", priv[0].port, name);
	snprintf(t, sizeof(t), "loopback://%s", name);
	TU_SET(c, "store.url", u);
	TU_SET(c, "transport.url", t);
	TU_SET(c, "log.level", "error");
	TU_SET(c, "store.poll_interval", "50ms");
	TU_SET(c, "retry.timeout", "1s");
	ackbox_loopback_set_up(lb, 0);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	m.topic = "orders";
	m.payload = "x";
	m.payload_len = 1;
	for (int i = 0; i < 20; i++)
		mm[i] = m;
	for (; published < 200; published += per_call)
		cr_assert_eq(ackbox_publish_batch(ab, mm, (size_t)per_call, NULL, err, sizeof(err)), 0,
		             "%s", err);
	srv_run(&priv[0], "term", NULL);
	cr_assert_eq(ackbox_publish_batch(ab, mm, (size_t)per_call, NULL, err, sizeof(err)),
	             ACKBOX_ERR_STORE, "a publish while redis is down fails, it is never acknowledged");
	srv_run(&priv[0], "restart", NULL);
	for (; published < 300; published += per_call)
		cr_assert_eq(ackbox_publish_batch(ab, mm, (size_t)per_call, NULL, err, sizeof(err)), 0,
		             "%s", err);
	ackbox_loopback_set_up(lb, 1);
	cr_assert_eq(ackbox_flush(ab, 30000), 0, "everything acked after the restart");
	cr_assert_eq(ackbox_loopback_distinct(lb), (size_t)published);
	cr_assert_eq(ackbox_counts_get(ab, &n, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(n.sending + n.retrying + n.failed, 0);
	ackbox_destroy(ab);
}

Test(redis, relay_rides_out_a_redis_restart, .timeout = 180)
{
	ride_out_a_restart("ride", 1);
}

Test(redis, relay_rides_out_a_redis_restart_with_packed_batches, .timeout = 180)
{
	ride_out_a_restart("ridepacked", 20);
}
