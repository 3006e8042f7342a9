/*
 * store_conformance.c - the contract every store keeps, checked through its
 * ops table and through the public API with the loopback transport. The
 * store comes from $ACKBOX_CONFORMANCE_URL, a template expanded per test so
 * that each test starts from an empty store (docs/stores/conformance.md).
 */
#include "testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include <ackbox/store.h>

#include "ackbox_loopback.h"

/* ------------------------------------------------------------------ */
/* The store under test: URL template, extra keys, sync mode            */
/* ------------------------------------------------------------------ */

static char *tmpdir;     /* what {dir} expands to; removed after the test */
static char url[4096];   /* the template expanded for this test */
static char scheme[64];  /* of url, for messages */

/* Appends s to out (bounded), failing the test if it does not fit. */
static void append(char *out, size_t outsz, size_t *len, const char *s, size_t n)
{
	cr_assert_lt(*len + n, outsz, "ACKBOX_CONFORMANCE_URL expands to more than %zu bytes",
	             outsz - 1);
	memcpy(out + *len, s, n);
	*len += n;
	out[*len] = '\0';
}

/*
 * Expands {dir} (a fresh empty directory), {unique} (a token no other test
 * uses: [a-z0-9_], starts with a letter, at most 30 characters),
 * {fixture:NAME:KEY} (KEY from the fixture's env file) and {env:NAME}.
 */
static void expand_template(const char *tmpl, char *out, size_t outsz)
{
	size_t len = 0;
	int isolated = 0;
	char unique[40];

	snprintf(unique, sizeof(unique), "ackc_%llx_%x", (unsigned long long)ackbox_wall_ms(),
	         (unsigned)getpid());
	out[0] = '\0';
	for (const char *p = tmpl; *p;) {
		const char *close;
		char name[256];
		size_t nl;
		if (*p != '{') {
			append(out, outsz, &len, p, 1);
			p++;
			continue;
		}
		close = strchr(p, '}');
		cr_assert(close != NULL, "ACKBOX_CONFORMANCE_URL: unterminated '{' in '%s'", tmpl);
		nl = (size_t)(close - p - 1);
		cr_assert_lt(nl, sizeof(name), "ACKBOX_CONFORMANCE_URL: placeholder too long");
		memcpy(name, p + 1, nl);
		name[nl] = '\0';
		if (strcmp(name, "dir") == 0) {
			if (!tmpdir)
				tmpdir = tu_tmpdir("conformance");
			append(out, outsz, &len, tmpdir, strlen(tmpdir));
			isolated = 1;
		} else if (strcmp(name, "unique") == 0) {
			append(out, outsz, &len, unique, strlen(unique));
			isolated = 1;
		} else if (strncmp(name, "fixture:", 8) == 0) {
			char *colon = strchr(name + 8, ':');
			const char *v;
			cr_assert(colon != NULL, "ACKBOX_CONFORMANCE_URL: write {fixture:NAME:KEY}");
			*colon = '\0';
			v = tu_fixture(name + 8, colon + 1);
			append(out, outsz, &len, v, strlen(v));
		} else if (strncmp(name, "env:", 4) == 0) {
			const char *v = getenv(name + 4);
			cr_assert(v != NULL, "ACKBOX_CONFORMANCE_URL: environment variable %s is not set",
			          name + 4);
			append(out, outsz, &len, v, strlen(v));
		} else {
			cr_assert_fail("ACKBOX_CONFORMANCE_URL: unknown placeholder {%s} (known: {dir}, "
			               "{unique}, {fixture:NAME:KEY}, {env:NAME})",
			               name);
		}
		p = close + 1;
	}
	cr_assert(isolated,
	          "ACKBOX_CONFORMANCE_URL '%s' has neither {dir} nor {unique}: every test needs a "
	          "store of its own",
	          tmpl);
}

/* Applies $ACKBOX_CONFORMANCE_CONF ("key=value key=value") to conf. */
static void apply_extra_conf(ackbox_conf *conf)
{
	const char *extra = getenv("ACKBOX_CONFORMANCE_CONF");
	char buf[2048], *save = NULL;
	if (!extra || !*extra)
		return;
	snprintf(buf, sizeof(buf), "%s", extra);
	for (char *kv = strtok_r(buf, " ", &save); kv; kv = strtok_r(NULL, " ", &save)) {
		char *eq = strchr(kv, '=');
		cr_assert(eq != NULL, "ACKBOX_CONFORMANCE_CONF: '%s' is not key=value", kv);
		*eq = '\0';
		TU_SET(conf, kv, eq + 1);
	}
}

static ackbox_sync sync_mode(const ackbox_conf *conf)
{
	const char *s = ackbox_conf_get(conf, "store.sync");
	if (s && strcmp(s, "normal") == 0)
		return ACKBOX_SYNC_NORMAL;
	if (s && strcmp(s, "off") == 0)
		return ACKBOX_SYNC_OFF;
	return ACKBOX_SYNC_FULL;
}

static void setup(void)
{
	const char *tmpl = getenv("ACKBOX_CONFORMANCE_URL");
	cr_assert(tmpl != NULL && *tmpl,
	          "ACKBOX_CONFORMANCE_URL is not set: run through ctest, or see "
	          "docs/stores/conformance.md");
	expand_template(tmpl, url, sizeof(url));
	snprintf(scheme, sizeof(scheme), "%.*s", (int)strcspn(url, ":"), url);
}

static void teardown(void)
{
	if (tmpdir) {
		tu_rmrf(tmpdir);
		free(tmpdir);
		tmpdir = NULL;
	}
	ackbox_loopback_reset();
}

/* ------------------------------------------------------------------ */
/* The ops table, driven directly                                       */
/* ------------------------------------------------------------------ */

typedef struct store {
	const ackbox_store_ops *ops;
	void *ctx;
	ackbox_conf *conf;
} store;

static store S;
static int open_ordered; /* st_open with delivery.order=key (the order suite) */

static void st_open(store *s)
{
	ackbox_url u;
	char err[512] = "";
	int rc;
	cr_assert_eq(ackbox_url_parse(url, &u, err, sizeof(err)), 0, "%s", err);
	s->ops = ackbox_store_lookup(u.scheme);
	cr_assert(s->ops != NULL, "no store serves scheme '%s' in this build", u.scheme);
	cr_assert_eq(ACKBOX_ABI_MAJOR(s->ops->abi_version), ACKBOX_ABI_MAJOR(ACKBOX_STORE_ABI_VERSION));
	cr_assert_leq(ACKBOX_ABI_MINOR(s->ops->abi_version), ACKBOX_ABI_MINOR(ACKBOX_STORE_ABI_VERSION));
	cr_assert_geq(s->ops->struct_size, offsetof(ackbox_store_ops, purge) + sizeof(void *),
	              "the store's table lacks required slots");
	s->conf = ackbox_conf_new();
	apply_extra_conf(s->conf);
	if (open_ordered)
		TU_SET(s->conf, "delivery.order", "key");
	s->ctx = calloc(1, s->ops->ctx_size ? s->ops->ctx_size : 1);
	rc = s->ops->open(s->ctx, &u, s->conf, sync_mode(s->conf), err, sizeof(err));
	ackbox_url_fini(&u);
	cr_assert_eq(rc, 0, "open %s: %s (%s)", url, err, ackbox_strerror(rc));
}

static void st_close(store *s)
{
	s->ops->close(s->ctx);
	free(s->ctx);
	ackbox_conf_destroy(s->conf);
	s->ctx = NULL;
	s->conf = NULL;
}

static int has_pending_slot(const store *s)
{
	return s->ops->struct_size >= offsetof(ackbox_store_ops, has_pending) + sizeof(void *) &&
	       s->ops->has_pending != NULL;
}

/* A deep copy of a row, so tests can look at it after the callback. */
typedef struct crow {
	ackbox_id id;
	ackbox_state state;
	int attempts;
	int64_t created_ms, updated_ms, due_ms;
	char *topic;
	uint8_t *key;
	size_t key_len;
	char *content_type;
	uint8_t *headers;
	size_t headers_len;
	uint8_t *payload;
	size_t payload_len;
	char *last_error;
	int last_code;
	uint64_t lease;
} crow;

typedef struct crows {
	crow *v;
	size_t n, cap;
	size_t stop_after; /* 0: never stop */
} crows;

static void *dupbytes(const void *p, size_t n)
{
	uint8_t *d = malloc(n + 1);
	cr_assert(d != NULL);
	if (n)
		memcpy(d, p, n);
	d[n] = 0;
	return d;
}

static int collect(const ackbox_store_row *r, void *opaque)
{
	crows *c = opaque;
	crow *w;
	if (c->n == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 16;
		c->v = realloc(c->v, c->cap * sizeof(*c->v));
		cr_assert(c->v != NULL);
	}
	w = &c->v[c->n++];
	memset(w, 0, sizeof(*w));
	w->id = r->id;
	w->state = r->state;
	w->attempts = r->attempts;
	w->created_ms = r->created_ms;
	w->updated_ms = r->updated_ms;
	w->due_ms = r->due_ms;
	cr_assert(r->topic != NULL, "a row without a topic");
	w->topic = strdup(r->topic);
	w->key = r->key_len ? dupbytes(r->key, r->key_len) : NULL;
	w->key_len = r->key_len;
	w->content_type = r->content_type ? strdup(r->content_type) : NULL;
	w->headers = r->headers_len ? dupbytes(r->headers, r->headers_len) : NULL;
	w->headers_len = r->headers_len;
	cr_assert(r->payload_len == 0 || r->payload != NULL);
	w->payload = dupbytes(r->payload, r->payload_len);
	w->payload_len = r->payload_len;
	w->last_error = r->last_error ? strdup(r->last_error) : NULL;
	w->last_code = r->last_code;
	w->lease = r->lease;
	return c->stop_after && c->n >= c->stop_after;
}

static void crows_free(crows *c)
{
	for (size_t i = 0; i < c->n; i++) {
		free(c->v[i].topic);
		free(c->v[i].key);
		free(c->v[i].content_type);
		free(c->v[i].headers);
		free(c->v[i].payload);
		free(c->v[i].last_error);
	}
	free(c->v);
	memset(c, 0, sizeof(*c));
}

static int id_eq(const ackbox_id *a, const ackbox_id *b)
{
	return memcmp(a, b, sizeof(*a)) == 0;
}

static const char *idstr(const ackbox_id *id)
{
	static char buf[4][ACKBOX_ID_STRLEN];
	static int k;
	k = (k + 1) % 4;
	ackbox_id_format(id, buf[k]);
	return buf[k];
}

/* Wrappers that fail the test with the store's errstr. */
static void s_insert(const ackbox_store_rec *recs, size_t n)
{
	char err[512] = "";
	int rc = S.ops->insert(S.ctx, recs, n, err, sizeof(err));
	cr_assert_eq(rc, 0, "insert of %zu: %s (%s)", n, err, ackbox_strerror(rc));
}

static int s_claim(int64_t now, int64_t until, size_t limit, crows *out)
{
	char err[512] = "";
	crows tmp = {0};
	size_t before = out ? out->n : 0;
	int rc = S.ops->claim(S.ctx, now, until, limit, collect, out ? out : &tmp, err, sizeof(err));
	cr_assert_geq(rc, 0, "claim: %s (%s)", err, ackbox_strerror(rc));
	cr_assert_eq((size_t)rc, out ? out->n - before : tmp.n,
	             "claim returns the number of rows handed over");
	cr_assert_leq((size_t)rc, limit, "claim respects the limit");
	crows_free(&tmp);
	return rc;
}

static void s_apply(const ackbox_store_change *ch, size_t n)
{
	char err[512] = "";
	int rc = S.ops->apply(S.ctx, ch, n, err, sizeof(err));
	cr_assert_eq(rc, 0, "apply of %zu change(s): %s (%s)", n, err, ackbox_strerror(rc));
}

static ackbox_counts s_counts(void)
{
	ackbox_counts c;
	char err[512] = "";
	int rc = S.ops->counts(S.ctx, &c, err, sizeof(err));
	cr_assert_eq(rc, 0, "counts: %s (%s)", err, ackbox_strerror(rc));
	return c;
}

static int s_list(int state, size_t limit, crows *out)
{
	char err[512] = "";
	int rc = S.ops->list(S.ctx, state, limit, collect, out, err, sizeof(err));
	cr_assert_geq(rc, 0, "list: %s (%s)", err, ackbox_strerror(rc));
	return rc;
}

/* The row id, or a failed test if it is absent. */
static crow s_get(const ackbox_id *id, crows *keep)
{
	char err[512] = "";
	int rc = S.ops->get(S.ctx, id, collect, keep, err, sizeof(err));
	cr_assert_eq(rc, 0, "get %s: %s (%s)", idstr(id), err, ackbox_strerror(rc));
	cr_assert_geq(keep->n, 1, "get called back no row");
	return keep->v[keep->n - 1];
}

static int s_exists(const ackbox_id *id)
{
	char err[512] = "";
	crows c = {0};
	int rc = S.ops->get(S.ctx, id, collect, &c, err, sizeof(err));
	crows_free(&c);
	cr_assert(rc == 0 || rc == ACKBOX_ERR_NOT_FOUND, "get %s: %s (%s)", idstr(id), err,
	          ackbox_strerror(rc));
	return rc == 0;
}

static int s_has_pending(void)
{
	char err[512] = "";
	int rc = S.ops->has_pending(S.ctx, err, sizeof(err));
	cr_assert_geq(rc, 0, "has_pending: %s (%s)", err, ackbox_strerror(rc));
	cr_assert(rc == 0 || rc == 1, "has_pending returns 0 or 1, not %d", rc);
	return rc;
}

/* A plain record: small payload naming its index. Strings are static per index. */
static ackbox_id ids[64];
static char payloads[64][32];

static ackbox_store_rec rec(int i, int64_t created, int64_t due)
{
	ackbox_store_rec r;
	memset(&r, 0, sizeof(r));
	ackbox_id_new(&ids[i]);
	snprintf(payloads[i], sizeof(payloads[i]), "payload-%d", i);
	r.id = ids[i];
	r.created_ms = created;
	r.due_ms = due;
	r.topic = "orders";
	r.payload = payloads[i];
	r.payload_len = strlen(payloads[i]);
	return r;
}

/* Inserts n plain rows in one transaction: ids[0..n-1], all due at `due`. */
static void insert_plain(int n, int64_t created, int64_t due)
{
	ackbox_store_rec recs[64];
	cr_assert_leq(n, 64);
	for (int i = 0; i < n; i++)
		recs[i] = rec(i, created + i, due);
	s_insert(recs, (size_t)n);
}

static ackbox_store_change change(ackbox_change_kind kind, const ackbox_id *id, uint64_t lease)
{
	ackbox_store_change c;
	memset(&c, 0, sizeof(c));
	c.kind = kind;
	c.id = *id;
	c.lease = lease;
	return c;
}

/* The lease a claim handed out for id, from the rows it returned. */
static uint64_t lease_of(const crows *c, const ackbox_id *id)
{
	for (size_t i = 0; i < c->n; i++)
		if (id_eq(&c->v[i].id, id))
			return c->v[i].lease;
	cr_assert_fail("claim did not return %s", idstr(id));
	return 0;
}

static void store_setup(void)
{
	ackbox_counts c;
	setup();
	st_open(&S);
	c = s_counts();
	cr_assert(c.sending == 0 && c.retrying == 0 && c.failed == 0,
	          "the store at %s is not empty at the start of the test: the URL template does "
	          "not isolate tests",
	          url);
}

static void store_teardown(void)
{
	if (S.ctx)
		st_close(&S);
	teardown();
}

TestSuite(store, .init = store_setup, .fini = store_teardown, .timeout = 120);

/* Criterion does not run .fini after a skip: clean up first (idempotent). */
#define SKIP(...)                                                                                  \
	do {                                                                                       \
		store_teardown();                                                                  \
		cr_skip_test(__VA_ARGS__);                                                         \
	} while (0)

Test(store, insert_batch_in_one_transaction_then_counts)
{
	enum { N = 250 };
	static ackbox_store_rec recs[N];
	static ackbox_id many[N];
	static char texts[N][24];
	int64_t base = ackbox_wall_ms();
	crows all = {0};

	for (int i = 0; i < N; i++) {
		memset(&recs[i], 0, sizeof(recs[i]));
		ackbox_id_new(&many[i]);
		snprintf(texts[i], sizeof(texts[i]), "m%d", i);
		recs[i].id = many[i];
		recs[i].created_ms = base - 1000 + i;
		recs[i].due_ms = base;
		recs[i].topic = "orders";
		recs[i].payload = texts[i];
		recs[i].payload_len = strlen(texts[i]);
	}
	s_insert(recs, N);
	ackbox_counts c = s_counts();
	cr_assert_eq(c.sending, N);
	cr_assert_eq(c.retrying, 0);
	cr_assert_eq(c.failed, 0);
	cr_assert_eq(c.oldest_pending_ms, base - 1000, "oldest_pending_ms is the oldest created_ms");
	if (has_pending_slot(&S))
		cr_assert_eq(s_has_pending(), 1);
	cr_assert_eq(s_list(-1, 0, &all), N);
	for (int i = 0; i < N; i++) {
		cr_assert(id_eq(&all.v[i].id, &many[i]), "row %d out of id order", i);
		cr_assert_eq(all.v[i].state, ACKBOX_MSG_SENDING);
		cr_assert_eq(all.v[i].attempts, 0);
		cr_assert_eq(all.v[i].created_ms, base - 1000 + i);
		cr_assert_eq(all.v[i].due_ms, base);
	}
	crows_free(&all);
}

Test(store, insert_is_all_or_nothing)
{
	char err[512] = "";
	ackbox_store_rec recs[2];
	int64_t now = ackbox_wall_ms();
	int rc;

	insert_plain(1, now, now);
	recs[0] = rec(1, now, now);
	recs[1] = rec(2, now, now);
	recs[1].id = ids[0]; /* already stored: this batch cannot commit */
	rc = S.ops->insert(S.ctx, recs, 2, err, sizeof(err));
	cr_assert_lt(rc, 0, "a batch holding a stored id must fail as a whole");
	cr_assert(err[0], "the failed insert says why");
	cr_assert_eq(s_counts().sending, 1);
	cr_assert_not(s_exists(&ids[1]), "nothing of the failed batch was stored");
}

Test(store, claim_returns_due_rows_oldest_due_first_up_to_limit)
{
	int64_t now = ackbox_wall_ms();
	const int64_t due[6] = {now + 5000, now - 100, now - 300, now, now - 200, now + 1};
	ackbox_store_rec recs[6];
	crows a = {0}, b = {0};

	for (int i = 0; i < 6; i++)
		recs[i] = rec(i, now - 1000, due[i]);
	s_insert(recs, 6);
	cr_assert_eq(s_claim(now, now + 60000, 2, &a), 2);
	cr_assert(id_eq(&a.v[0].id, &ids[2]) && id_eq(&a.v[1].id, &ids[4]),
	          "the two oldest-due rows come first: got %s, %s", idstr(&a.v[0].id),
	          idstr(&a.v[1].id));
	cr_assert_eq(a.v[0].state, ACKBOX_MSG_SENDING);
	cr_assert_eq(a.v[0].payload_len, strlen(payloads[2]));
	cr_assert_eq(memcmp(a.v[0].payload, payloads[2], a.v[0].payload_len), 0);
	cr_assert_str_eq(a.v[0].topic, "orders");
	cr_assert_eq(s_claim(now, now + 60000, 10, &b), 2, "rows due later than now stay");
	cr_assert(id_eq(&b.v[0].id, &ids[1]) && id_eq(&b.v[1].id, &ids[3]),
	          "then the next due, in due order");
	cr_assert_eq(s_claim(now, now + 60000, 10, NULL), 0, "everything due is leased now");
	crows_free(&a);
	crows_free(&b);
}

Test(store, claim_lease_hides_rows_until_it_runs_out)
{
	int64_t now = ackbox_wall_ms();
	crows a = {0};

	insert_plain(3, now - 10, now);
	cr_assert_eq(s_claim(now, now + 1000, 10, &a), 3);
	for (size_t i = 0; i < a.n; i++)
		cr_assert_neq(a.v[i].lease, 0, "a claimed row carries a non-zero lease");
	cr_assert_eq(s_claim(now, now + 1000, 10, NULL), 0, "leased: no second claimer");
	cr_assert_eq(s_claim(now + 999, now + 2000, 10, NULL), 0, "still leased 1 ms before");
	cr_assert_eq(s_claim(now + 1000, now + 2000, 10, NULL), 3, "due again when the lease ends");
	cr_assert_eq(s_claim(now + 1500, now + 3000, 10, NULL), 0, "and leased again");
	crows_free(&a);
}

Test(store, apply_delete_removes_the_row)
{
	int64_t now = ackbox_wall_ms();
	crows a = {0};
	ackbox_store_change ch;

	insert_plain(2, now, now);
	s_claim(now, now + 1000, 10, &a);
	ch = change(ACKBOX_CHANGE_DELETE, &ids[0], lease_of(&a, &ids[0]));
	s_apply(&ch, 1);
	cr_assert_not(s_exists(&ids[0]));
	cr_assert(s_exists(&ids[1]));
	cr_assert_eq(s_counts().sending, 1);
	crows_free(&a);
}

Test(store, apply_retry_sets_attempts_due_and_reason)
{
	int64_t now = ackbox_wall_ms();
	crows a = {0}, g = {0}, b = {0};
	ackbox_store_change ch;
	crow r;

	insert_plain(1, now - 5, now);
	s_claim(now, now + 1000, 10, &a);
	ch = change(ACKBOX_CHANGE_RETRY, &ids[0], lease_of(&a, &ids[0]));
	ch.attempts = 2;
	ch.due_ms = now + 500;
	ch.last_error = "nack: rejected by the broker";
	ch.last_code = 406;
	int64_t before = ackbox_wall_ms();
	s_apply(&ch, 1);
	r = s_get(&ids[0], &g);
	cr_assert_eq(r.state, ACKBOX_MSG_RETRYING);
	cr_assert_eq(r.attempts, 2);
	cr_assert_eq(r.due_ms, now + 500);
	cr_assert_str_eq(r.last_error ? r.last_error : "(null)", "nack: rejected by the broker");
	cr_assert_eq(r.last_code, 406);
	cr_assert_geq(r.updated_ms, before - 1000, "updated_ms is the time of the change");
	cr_assert_eq(r.created_ms, now - 5, "created_ms never changes");
	ackbox_counts c = s_counts();
	cr_assert_eq(c.retrying, 1);
	cr_assert_eq(c.sending, 0);
	cr_assert_eq(s_claim(now + 499, now + 2000, 10, NULL), 0, "not due before due_ms");
	cr_assert_eq(s_claim(now + 500, now + 2000, 10, &b), 1, "due at due_ms");
	cr_assert_eq(b.v[0].state, ACKBOX_MSG_RETRYING);
	cr_assert_eq(b.v[0].attempts, 2);
	crows_free(&a);
	crows_free(&b);
	crows_free(&g);
}

Test(store, apply_fail_is_final)
{
	int64_t now = ackbox_wall_ms();
	crows a = {0}, g = {0};
	ackbox_store_change ch;
	crow r;

	insert_plain(1, now, now);
	s_claim(now, now + 1000, 10, &a);
	ch = change(ACKBOX_CHANGE_FAIL, &ids[0], lease_of(&a, &ids[0]));
	ch.attempts = 3;
	ch.last_error = "max attempts reached: nack";
	ch.last_code = 406;
	s_apply(&ch, 1);
	r = s_get(&ids[0], &g);
	cr_assert_eq(r.state, ACKBOX_MSG_FAILED);
	cr_assert_eq(r.attempts, 3);
	cr_assert_str_eq(r.last_error ? r.last_error : "(null)", "max attempts reached: nack");
	cr_assert_eq(r.last_code, 406);
	ackbox_counts c = s_counts();
	cr_assert_eq(c.failed, 1);
	cr_assert_eq(c.sending + c.retrying, 0);
	cr_assert_eq(c.oldest_pending_ms, 0, "no pending row: oldest_pending_ms is 0");
	cr_assert_eq(s_claim(now + 86400000, now + 86500000, 10, NULL), 0, "a FAILED row is never due");
	if (has_pending_slot(&S))
		cr_assert_eq(s_has_pending(), 0);
	/* the core never retries or releases a FAILED row; a store ignores such a change */
	ackbox_store_change late[2] = {change(ACKBOX_CHANGE_RETRY, &ids[0], r.lease),
	                               change(ACKBOX_CHANGE_RELEASE, &ids[0], r.lease)};
	late[0].attempts = 4;
	late[0].due_ms = now;
	late[1].due_ms = now;
	s_apply(late, 2);
	crows_free(&g);
	r = s_get(&ids[0], &g);
	cr_assert_eq(r.state, ACKBOX_MSG_FAILED, "FAILED stays FAILED until an operator requeues");
	cr_assert_eq(r.attempts, 3);
	crows_free(&a);
	crows_free(&g);
}

Test(store, apply_release_gives_the_lease_back)
{
	int64_t now = ackbox_wall_ms();
	crows a = {0}, b = {0};
	ackbox_store_change ch;

	insert_plain(1, now, now);
	s_claim(now, now + 600000, 10, &a);
	cr_assert_eq(s_claim(now, now + 600000, 10, NULL), 0);
	ch = change(ACKBOX_CHANGE_RELEASE, &ids[0], lease_of(&a, &ids[0]));
	ch.due_ms = now;
	s_apply(&ch, 1);
	cr_assert_eq(s_claim(now, now + 1000, 10, &b), 1, "released: due again at once");
	cr_assert_eq(b.v[0].state, ACKBOX_MSG_SENDING, "a release keeps the state");
	cr_assert_eq(b.v[0].attempts, 0, "and the attempts");
	crows_free(&a);
	crows_free(&b);
}

Test(store, apply_skips_missing_rows_and_applies_the_rest)
{
	int64_t now = ackbox_wall_ms();
	crows a = {0}, g = {0};
	ackbox_id ghost;
	ackbox_store_change ch[4];

	insert_plain(2, now, now);
	s_claim(now, now + 1000, 10, &a);
	ackbox_id_new(&ghost);
	ch[0] = change(ACKBOX_CHANGE_DELETE, &ghost, 1);
	ch[1] = change(ACKBOX_CHANGE_RETRY, &ids[0], lease_of(&a, &ids[0]));
	ch[1].attempts = 1;
	ch[1].due_ms = now + 100;
	ch[1].last_error = "timeout";
	ch[2] = change(ACKBOX_CHANGE_FAIL, &ghost, 1);
	ch[2].attempts = 1;
	ch[3] = change(ACKBOX_CHANGE_DELETE, &ids[1], lease_of(&a, &ids[1]));
	s_apply(ch, 4);
	cr_assert_eq(s_get(&ids[0], &g).state, ACKBOX_MSG_RETRYING);
	cr_assert_not(s_exists(&ids[1]));
	cr_assert_not(s_exists(&ghost), "a change for a missing row creates nothing");
	ackbox_counts c = s_counts();
	cr_assert_eq(c.retrying + c.sending + c.failed, 1);
	crows_free(&a);
	crows_free(&g);
}

Test(store, unclaimed_rows_take_changes_with_lease_zero)
{
	/* A fresh message goes from publish to the relay in memory: its
	 * changes carry lease 0 and must apply while nobody claimed the row. */
	int64_t now = ackbox_wall_ms();
	crows g = {0};
	ackbox_store_change ch;

	insert_plain(2, now, now + 300000);
	ch = change(ACKBOX_CHANGE_RETRY, &ids[0], 0);
	ch.attempts = 1;
	ch.due_ms = now + 20;
	ch.last_error = "no confirm within retry.timeout";
	s_apply(&ch, 1);
	cr_assert_eq(s_get(&ids[0], &g).state, ACKBOX_MSG_RETRYING);
	ch = change(ACKBOX_CHANGE_DELETE, &ids[1], 0);
	s_apply(&ch, 1);
	cr_assert_not(s_exists(&ids[1]));
	crows_free(&g);
}

Test(store, a_stale_lease_is_fenced_off)
{
	int64_t now = ackbox_wall_ms();
	crows a = {0}, b = {0}, g = {0}, f = {0};
	uint64_t l1, l2;
	crow r;

	insert_plain(2, now, now);
	s_claim(now, now + 100, 10, &a);
	s_claim(now + 100, now + 200, 10, &b); /* the first lease ran out: a second owner */
	l1 = lease_of(&a, &ids[0]);
	l2 = lease_of(&b, &ids[0]);
	if (l1 == l2) {
		crows_free(&a);
		crows_free(&b);
		SKIP("store '%s' hands out the same lease on every claim (%llu): it does not fence "
		     "stale owners, which only a store shared by several relays needs",
		     scheme, (unsigned long long)l1);
	}
	ackbox_store_change stale[4] = {
	    change(ACKBOX_CHANGE_DELETE, &ids[0], l1), change(ACKBOX_CHANGE_RETRY, &ids[0], l1),
	    change(ACKBOX_CHANGE_FAIL, &ids[0], l1), change(ACKBOX_CHANGE_RELEASE, &ids[0], l1)};
	stale[1].attempts = 1;
	stale[1].due_ms = now;
	stale[2].attempts = 9;
	stale[3].due_ms = now;
	s_apply(stale, 4);
	r = s_get(&ids[0], &g);
	cr_assert_eq(r.state, ACKBOX_MSG_SENDING, "changes under a stale lease are skipped");
	cr_assert_eq(r.attempts, 0);
	cr_assert_eq(r.lease, l2);
	cr_assert_eq(s_claim(now + 150, now + 300, 10, NULL), 0, "the stale release was skipped");
	/* lease 0 means "never claimed": once a claim took the row it is stale too */
	ackbox_store_change zero = change(ACKBOX_CHANGE_DELETE, &ids[1], 0);
	s_apply(&zero, 1);
	cr_assert(s_exists(&ids[1]), "a lease-0 change after a claim is fenced off");
	/* the current owner's change applies */
	ackbox_store_change cur = change(ACKBOX_CHANGE_FAIL, &ids[0], l2);
	cur.attempts = 1;
	cur.last_error = "nack";
	s_apply(&cur, 1);
	r = s_get(&ids[0], &f);
	cr_assert_eq(r.state, ACKBOX_MSG_FAILED);
	crows_free(&a);
	crows_free(&b);
	crows_free(&g);
	crows_free(&f);
}

Test(store, recover_makes_sending_and_retrying_due)
{
	int64_t now = ackbox_wall_ms();
	crows a = {0}, b = {0};
	ackbox_store_change ch[2];
	char err[512] = "";

	/* 0: fresh, leased to its inserter; 1: retrying later; 2: failed; 3: due already */
	ackbox_store_rec recs[4] = {rec(0, now - 4, now + 600000), rec(1, now - 3, now - 3),
	                            rec(2, now - 2, now - 2), rec(3, now - 1, now - 5)};
	s_insert(recs, 4);
	s_claim(now, now + 600000, 2, &a); /* ids 3 and 1 (oldest due first) */
	ch[0] = change(ACKBOX_CHANGE_RETRY, &ids[1], lease_of(&a, &ids[1]));
	ch[0].attempts = 1;
	ch[0].due_ms = now + 600000;
	ch[0].last_error = "nack";
	s_claim(now, now + 600000, 1, &a); /* id 2 */
	ch[1] = change(ACKBOX_CHANGE_FAIL, &ids[2], lease_of(&a, &ids[2]));
	ch[1].attempts = 3;
	s_apply(ch, 2);
	cr_assert_eq(s_claim(now, now + 1000, 10, NULL), 0, "everything is leased or failed");
	cr_assert_eq(S.ops->recover(S.ctx, now, err, sizeof(err)), 0, "recover: %s", err);
	cr_assert_eq(s_claim(now, now + 1000, 10, &b), 3, "recovery makes SENDING and RETRYING due");
	for (size_t i = 0; i < b.n; i++) {
		cr_assert_not(id_eq(&b.v[i].id, &ids[2]), "a FAILED row stays put");
		if (id_eq(&b.v[i].id, &ids[1])) {
			cr_assert_eq(b.v[i].state, ACKBOX_MSG_RETRYING);
			cr_assert_eq(b.v[i].attempts, 1, "recovery keeps the attempts");
		}
	}
	crows_free(&a);
	crows_free(&b);
}

Test(store, counts_and_oldest_pending)
{
	int64_t now = ackbox_wall_ms();
	crows a = {0};
	ackbox_store_change ch;
	ackbox_store_rec recs[3] = {rec(0, now - 3000, now), rec(1, now - 2000, now),
	                            rec(2, now - 1000, now)};
	ackbox_counts c;

	s_insert(recs, 3);
	c = s_counts();
	cr_assert(c.sending == 3 && c.retrying == 0 && c.failed == 0);
	cr_assert_eq(c.oldest_pending_ms, now - 3000);
	s_claim(now, now + 1000, 10, &a);
	ch = change(ACKBOX_CHANGE_FAIL, &ids[0], lease_of(&a, &ids[0]));
	ch.attempts = 3;
	s_apply(&ch, 1);
	c = s_counts();
	cr_assert_eq(c.failed, 1);
	cr_assert_eq(c.sending, 2);
	cr_assert_eq(c.oldest_pending_ms, now - 2000, "a FAILED row is not pending");
	ch = change(ACKBOX_CHANGE_RETRY, &ids[1], lease_of(&a, &ids[1]));
	ch.attempts = 1;
	ch.due_ms = now + 100;
	s_apply(&ch, 1);
	c = s_counts();
	cr_assert(c.sending == 1 && c.retrying == 1 && c.failed == 1, "%llu/%llu/%llu",
	          (unsigned long long)c.sending, (unsigned long long)c.retrying,
	          (unsigned long long)c.failed);
	cr_assert_eq(c.oldest_pending_ms, now - 2000, "a RETRYING row is pending");
	ackbox_store_change del[2] = {change(ACKBOX_CHANGE_DELETE, &ids[1], lease_of(&a, &ids[1])),
	                              change(ACKBOX_CHANGE_DELETE, &ids[2], lease_of(&a, &ids[2]))};
	s_apply(del, 2);
	c = s_counts();
	cr_assert(c.sending == 0 && c.retrying == 0 && c.failed == 1);
	cr_assert_eq(c.oldest_pending_ms, 0);
	crows_free(&a);
}

Test(store, list_by_state_in_id_order_with_limit)
{
	int64_t now = ackbox_wall_ms();
	crows a = {0}, l = {0};
	ackbox_store_change ch[5];
	const int failed[3] = {1, 4, 7}, retrying[2] = {2, 5}, sending[5] = {0, 3, 6, 8, 9};
	char err[512] = "";

	insert_plain(10, now, now);
	s_claim(now, now + 1000, 10, &a);
	for (int i = 0; i < 3; i++) {
		ch[i] = change(ACKBOX_CHANGE_FAIL, &ids[failed[i]], lease_of(&a, &ids[failed[i]]));
		ch[i].attempts = 3;
	}
	for (int i = 0; i < 2; i++) {
		ch[3 + i] = change(ACKBOX_CHANGE_RETRY, &ids[retrying[i]],
		                   lease_of(&a, &ids[retrying[i]]));
		ch[3 + i].attempts = 1;
		ch[3 + i].due_ms = now + 1000;
	}
	s_apply(ch, 5);

	cr_assert_eq(s_list(-1, 0, &l), 10);
	for (int i = 0; i < 10; i++)
		cr_assert(id_eq(&l.v[i].id, &ids[i]), "list(all): row %d out of id order", i);
	crows_free(&l);
	cr_assert_eq(s_list(ACKBOX_MSG_SENDING, 0, &l), 5);
	for (int i = 0; i < 5; i++) {
		cr_assert(id_eq(&l.v[i].id, &ids[sending[i]]), "list(sending): row %d", i);
		cr_assert_eq(l.v[i].state, ACKBOX_MSG_SENDING);
	}
	crows_free(&l);
	cr_assert_eq(s_list(ACKBOX_MSG_SENDING, 2, &l), 2, "limit");
	cr_assert(id_eq(&l.v[0].id, &ids[0]) && id_eq(&l.v[1].id, &ids[3]), "the first two by id");
	crows_free(&l);
	cr_assert_eq(s_list(ACKBOX_MSG_FAILED, 0, &l), 3);
	for (int i = 0; i < 3; i++) {
		cr_assert(id_eq(&l.v[i].id, &ids[failed[i]]), "list(failed): row %d", i);
		cr_assert_eq(l.v[i].state, ACKBOX_MSG_FAILED);
		cr_assert_eq(l.v[i].attempts, 3);
	}
	crows_free(&l);
	cr_assert_eq(s_list(ACKBOX_MSG_RETRYING, 1, &l), 1);
	cr_assert(id_eq(&l.v[0].id, &ids[2]));
	crows_free(&l);
	cr_assert_eq(s_list(-1, 4, &l), 4);
	cr_assert(id_eq(&l.v[3].id, &ids[3]));
	crows_free(&l);
	/* a callback that says stop is not called again */
	l.stop_after = 1;
	int rc = S.ops->list(S.ctx, -1, 0, collect, &l, err, sizeof(err));
	cr_assert_geq(rc, 0, "list: %s", err);
	cr_assert_eq(l.n, 1, "the iteration stops when the callback returns non-zero");
	crows_free(&l);
	crows_free(&a);
}

Test(store, get_returns_the_row_or_not_found)
{
	int64_t now = ackbox_wall_ms();
	crows g = {0};
	ackbox_id ghost;
	char err[512] = "";
	crow r;

	insert_plain(3, now - 7, now + 42);
	r = s_get(&ids[1], &g);
	cr_assert_eq(g.n, 1, "get calls back exactly once");
	cr_assert(id_eq(&r.id, &ids[1]));
	cr_assert_eq(r.state, ACKBOX_MSG_SENDING);
	cr_assert_eq(r.attempts, 0);
	cr_assert_eq(r.created_ms, now - 7 + 1);
	cr_assert_eq(r.due_ms, now + 42);
	cr_assert_str_eq(r.topic, "orders");
	cr_assert_eq(r.payload_len, strlen(payloads[1]));
	cr_assert_eq(memcmp(r.payload, payloads[1], r.payload_len), 0);
	cr_assert_null(r.last_error, "a fresh row has no last_error");
	cr_assert_eq(r.last_code, 0);
	cr_assert_null(r.content_type, "no content type given: NULL");
	cr_assert_eq(r.key_len, 0);
	cr_assert_eq(r.headers_len, 0);
	crows_free(&g);
	ackbox_id_new(&ghost);
	int rc = S.ops->get(S.ctx, &ghost, collect, &g, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_NOT_FOUND, "missing id: rc %d (%s)", rc, err);
	cr_assert_eq(g.n, 0, "no callback for a missing row");
	cr_assert(err[0], "NOT_FOUND comes with an errstr");
}

/* Marks ids[0..n-1] FAILED (claimed first) with the given attempts. */
static void fail_rows(int from, int n, int64_t now)
{
	crows a = {0};
	ackbox_store_change ch[64];
	s_claim(now, now + 1000, 64, &a);
	for (int i = 0; i < n; i++) {
		ch[i] = change(ACKBOX_CHANGE_FAIL, &ids[from + i], lease_of(&a, &ids[from + i]));
		ch[i].attempts = 3;
		ch[i].last_error = "nack";
		ch[i].last_code = 406;
	}
	s_apply(ch, (size_t)n);
	crows_free(&a);
}

Test(store, requeue_by_ids_and_all_failed)
{
	int64_t now = ackbox_wall_ms();
	crows g = {0};
	char err[512] = "";
	ackbox_store_rec recs[5];
	crow r;
	int rc;

	for (int i = 0; i < 5; i++)
		recs[i] = rec(i, now, i < 4 ? now : now + 600000);
	s_insert(recs, 5);
	fail_rows(0, 4, now); /* 0..3 FAILED, 4 pending (not due) */
	ackbox_id pick[2] = {ids[0], ids[4]};
	rc = S.ops->requeue(S.ctx, pick, 2, now + 10, err, sizeof(err));
	cr_assert_eq(rc, 1, "only a FAILED row is requeued (rc %d: %s)", rc, err);
	r = s_get(&ids[0], &g);
	cr_assert_eq(r.state, ACKBOX_MSG_RETRYING);
	cr_assert_eq(r.attempts, 0, "requeue resets the attempts");
	cr_assert_eq(r.due_ms, now + 10, "and makes it due now");
	crows_free(&g);
	r = s_get(&ids[4], &g);
	cr_assert_eq(r.state, ACKBOX_MSG_SENDING, "a pending row is left alone");
	crows_free(&g);
	rc = S.ops->requeue(S.ctx, NULL, 0, now + 20, err, sizeof(err));
	cr_assert_eq(rc, 3, "ids NULL requeues every FAILED row (rc %d: %s)", rc, err);
	ackbox_counts c = s_counts();
	cr_assert_eq(c.failed, 0);
	cr_assert_eq(c.retrying, 4);
	cr_assert_eq(c.sending, 1);
	for (int i = 1; i < 4; i++) {
		r = s_get(&ids[i], &g);
		cr_assert_eq(r.state, ACKBOX_MSG_RETRYING);
		cr_assert_eq(r.attempts, 0);
		crows_free(&g);
	}
	cr_assert_eq(s_claim(now + 20, now + 1000, 10, NULL), 4, "requeued rows are due");
	rc = S.ops->requeue(S.ctx, NULL, 0, now + 30, err, sizeof(err));
	cr_assert_eq(rc, 0, "nothing left to requeue");
}

Test(store, purge_deletes_failed_rows_older_than)
{
	int64_t now = ackbox_wall_ms(), mid;
	char err[512] = "";
	struct timespec ts = {0, 30 * 1000 * 1000};
	int rc;

	insert_plain(3, now, now);
	fail_rows(0, 1, now);
	nanosleep(&ts, NULL);
	mid = ackbox_wall_ms();
	nanosleep(&ts, NULL);
	fail_rows(1, 1, now + 2000); /* row 1 was leased by the first claim */
	rc = S.ops->purge(S.ctx, now - 60000, err, sizeof(err));
	cr_assert_eq(rc, 0, "nothing that old (rc %d: %s)", rc, err);
	rc = S.ops->purge(S.ctx, mid, err, sizeof(err));
	cr_assert_eq(rc, 1, "only the row failed before `mid` (rc %d: %s)", rc, err);
	cr_assert_not(s_exists(&ids[0]));
	cr_assert(s_exists(&ids[1]));
	rc = S.ops->purge(S.ctx, INT64_MAX, err, sizeof(err));
	cr_assert_eq(rc, 1, "INT64_MAX purges every FAILED row (rc %d: %s)", rc, err);
	cr_assert(s_exists(&ids[2]), "a pending row is never purged");
	ackbox_counts c = s_counts();
	cr_assert_eq(c.failed, 0);
	cr_assert_eq(c.sending, 1);
}

Test(store, has_pending_follows_the_pending_rows)
{
	int64_t now = ackbox_wall_ms();
	crows a = {0};
	char err[512] = "";
	ackbox_store_change ch;

	if (!has_pending_slot(&S))
		SKIP("store '%s' has no has_pending (optional): the core uses counts", scheme);
	cr_assert_eq(s_has_pending(), 0, "empty store");
	insert_plain(1, now, now + 600000);
	cr_assert_eq(s_has_pending(), 1, "a leased row is pending too");
	s_claim(now + 600000, now + 700000, 10, &a);
	ch = change(ACKBOX_CHANGE_FAIL, &ids[0], lease_of(&a, &ids[0]));
	ch.attempts = 3;
	s_apply(&ch, 1);
	cr_assert_eq(s_has_pending(), 0, "FAILED is not pending");
	cr_assert_eq(S.ops->requeue(S.ctx, NULL, 0, now, err, sizeof(err)), 1, "%s", err);
	cr_assert_eq(s_has_pending(), 1, "requeued");
	crows_free(&a);
	s_claim(now, now + 1000, 10, &a);
	ch = change(ACKBOX_CHANGE_DELETE, &ids[0], lease_of(&a, &ids[0]));
	s_apply(&ch, 1);
	cr_assert_eq(s_has_pending(), 0, "deleted");
	crows_free(&a);
}

/* ------------------------------------------------------------------ */
/* force: an operator's override of one message                         */
/* ------------------------------------------------------------------ */

static void need_force(const store *s)
{
	cr_assert(s->ops->struct_size >= offsetof(ackbox_store_ops, force) + sizeof(void *) &&
	              s->ops->force != NULL,
	          "store '%s' has no force op: ackbox fail and ackbox purge --id cannot free a "
	          "stuck message",
	          scheme);
}

/* force through instance s: FAIL with reason/code, or DELETE (reason NULL). */
static int force_on(const store *s, ackbox_change_kind kind, const ackbox_id *id,
                    const char *reason, int code, char *err, size_t errsz)
{
	ackbox_store_change c;
	need_force(s);
	memset(&c, 0, sizeof(c));
	c.kind = kind;
	c.id = *id;
	c.last_error = reason;
	c.last_code = code;
	c.lease = 987654321; /* ignored: force takes the row whatever its lease */
	err[0] = '\0';
	return s->ops->force(s->ctx, &c, ackbox_wall_ms(), err, errsz);
}

static void s_force(ackbox_change_kind kind, const ackbox_id *id, const char *reason, int code)
{
	char err[512];
	int rc = force_on(&S, kind, id, reason, code, err, sizeof(err));
	cr_assert_eq(rc, 1, "force %s of %s: rc %d: %s (%s)",
	             kind == ACKBOX_CHANGE_FAIL ? "FAIL" : "DELETE", idstr(id), rc, err,
	             ackbox_strerror(rc));
}

/* The ids a claim handed out, as a bit per index of ids[0..n-1]. */
static unsigned claimed_mask(const crows *c, int n)
{
	unsigned m = 0;
	for (size_t i = 0; i < c->n; i++) {
		int k;
		for (k = 0; k < n && !id_eq(&c->v[i].id, &ids[k]); k++)
			;
		cr_assert_lt(k, n, "claim handed out %s, not one of this test's", idstr(&c->v[i].id));
		cr_assert_eq(m & (1u << k), 0, "claim handed out ids[%d] twice", k);
		m |= 1u << k;
	}
	return m;
}

static void check_counts(uint64_t sending, uint64_t retrying, uint64_t failed, const char *when)
{
	ackbox_counts c = s_counts();
	cr_assert(c.sending == sending && c.retrying == retrying && c.failed == failed,
	          "%s: counts sending/retrying/failed %llu/%llu/%llu, expected %llu/%llu/%llu", when,
	          (unsigned long long)c.sending, (unsigned long long)c.retrying,
	          (unsigned long long)c.failed, (unsigned long long)sending,
	          (unsigned long long)retrying, (unsigned long long)failed);
}

Test(store, force_fail_takes_a_claimed_row_from_its_relay)
{
	int64_t now = ackbox_wall_ms(), before;
	crows a = {0}, b = {0}, g = {0}, q = {0};
	ackbox_store_change ch;
	uint64_t l0, l1;
	char err[512] = "";
	crow r;

	insert_plain(2, now, now);
	s_claim(now, now + 600000, 10, &a);
	/* ids[1] had two failed attempts and is being sent again */
	ch = change(ACKBOX_CHANGE_RETRY, &ids[1], lease_of(&a, &ids[1]));
	ch.attempts = 2;
	ch.due_ms = now;
	ch.last_error = "nack";
	s_apply(&ch, 1);
	cr_assert_eq(s_claim(now, now + 600000, 10, &b), 1);
	l0 = lease_of(&a, &ids[0]); /* SENDING, held by a relay */
	l1 = lease_of(&b, &ids[1]); /* RETRYING, held by a relay */

	before = ackbox_wall_ms();
	s_force(ACKBOX_CHANGE_FAIL, &ids[0], "operator: topic has a wildcard", 0);
	s_force(ACKBOX_CHANGE_FAIL, &ids[1], "operator: poison", 7);
	r = s_get(&ids[0], &g);
	cr_assert_eq(r.state, ACKBOX_MSG_FAILED, "force FAIL of a SENDING row: FAILED");
	cr_assert_eq(r.attempts, 0, "the attempts are kept");
	cr_assert_str_eq(r.last_error ? r.last_error : "(null)", "operator: topic has a wildcard");
	cr_assert_geq(r.updated_ms, before - 1000, "updated_ms is the time of the override");
	cr_assert_eq(r.created_ms, now);
	crows_free(&g);
	r = s_get(&ids[1], &g);
	cr_assert_eq(r.state, ACKBOX_MSG_FAILED, "force FAIL of a RETRYING row: FAILED");
	cr_assert_eq(r.attempts, 2, "the attempts are kept");
	cr_assert_str_eq(r.last_error ? r.last_error : "(null)", "operator: poison");
	cr_assert_eq(r.last_code, 7);
	crows_free(&g);
	check_counts(0, 0, 2, "after force FAIL");
	if (has_pending_slot(&S))
		cr_assert_eq(s_has_pending(), 0, "a forced FAILED row is not pending");
	cr_assert_eq(s_claim(now + 86400000, now + 86500000, 10, NULL), 0,
	             "a forced FAILED row is never due");

	/* the relays that held them answer late, with the leases they had */
	ackbox_store_change late[6] = {
	    change(ACKBOX_CHANGE_DELETE, &ids[0], l0), change(ACKBOX_CHANGE_RETRY, &ids[0], l0),
	    change(ACKBOX_CHANGE_FAIL, &ids[0], l0),   change(ACKBOX_CHANGE_RELEASE, &ids[1], l1),
	    change(ACKBOX_CHANGE_RETRY, &ids[1], l1),  change(ACKBOX_CHANGE_DELETE, &ids[1], l1)};
	late[1].attempts = 1;
	late[1].due_ms = now;
	late[2].attempts = 1;
	late[2].last_error = "relay: max attempts";
	late[3].due_ms = now;
	late[4].attempts = 3;
	late[4].due_ms = now;
	s_apply(late, 6);
	for (int i = 0; i < 2; i++) {
		r = s_get(&ids[i], &g);
		cr_assert_eq(r.state, ACKBOX_MSG_FAILED,
		             "ids[%d]: a change under the relay's old lease is skipped", i);
		cr_assert_eq(r.attempts, i ? 2 : 0, "ids[%d]: attempts untouched by the old lease", i);
		cr_assert(r.last_error && strncmp(r.last_error, "operator: ", 10) == 0,
		          "ids[%d]: the operator's reason stays, got '%s'", i,
		          r.last_error ? r.last_error : "(null)");
		crows_free(&g);
	}

	/* requeue works on it, and the old lease stays fenced off afterwards */
	cr_assert_eq(S.ops->requeue(S.ctx, &ids[0], 1, now + 10, err, sizeof(err)), 1,
	             "requeue of a forced FAILED row: %s", err);
	ch = change(ACKBOX_CHANGE_DELETE, &ids[0], l0);
	s_apply(&ch, 1);
	cr_assert(s_exists(&ids[0]), "a delete under the lease from before the override is skipped");
	check_counts(0, 1, 1, "after requeue");
	cr_assert_eq(s_claim(now + 10, now + 1000, 10, &q), 1, "the requeued row is due");
	cr_assert(id_eq(&q.v[0].id, &ids[0]));
	cr_assert_eq(q.v[0].state, ACKBOX_MSG_RETRYING);
	cr_assert_eq(q.v[0].attempts, 0);
	ch = change(ACKBOX_CHANGE_DELETE, &ids[0], lease_of(&q, &ids[0]));
	s_apply(&ch, 1);
	cr_assert_not(s_exists(&ids[0]), "the new claim's lease applies");
	check_counts(0, 0, 1, "at the end");
	crows_free(&a);
	crows_free(&b);
	crows_free(&q);
}

Test(store, force_fail_a_message_its_publisher_holds)
{
	/* Fresh messages go to the publisher's relay in memory, leased to it:
	 * its changes carry lease 0 (six in one insert: a packed batch in SQLite,
	 * two more as rows). */
	int64_t now = ackbox_wall_ms();
	ackbox_store_rec recs[8];
	ackbox_store_change del[8];
	crows g = {0};
	crow r;

	for (int i = 0; i < 6; i++)
		recs[i] = rec(i, now + i, now + 600000);
	s_insert(recs, 6);
	recs[6] = rec(6, now + 6, now + 600000);
	recs[7] = rec(7, now + 7, now + 600000);
	s_insert(recs + 6, 2);
	s_force(ACKBOX_CHANGE_FAIL, &ids[1], "operator: stuck", 0);
	s_force(ACKBOX_CHANGE_FAIL, &ids[6], "operator: stuck", 0);
	check_counts(6, 0, 2, "after force FAIL");
	for (int i = 0; i < 8; i++)
		del[i] = change(ACKBOX_CHANGE_DELETE, &ids[i], 0);
	s_apply(del, 8); /* the broker confirms all eight */
	for (int i = 0; i < 8; i++) {
		if (i != 1 && i != 6) {
			cr_assert_not(s_exists(&ids[i]), "ids[%d] acked", i);
			continue;
		}
		r = s_get(&ids[i], &g);
		cr_assert_eq(r.state, ACKBOX_MSG_FAILED,
		             "ids[%d]: the publisher's lease-0 delete is skipped after the override", i);
		cr_assert_str_eq(r.last_error ? r.last_error : "(null)", "operator: stuck");
		crows_free(&g);
	}
	check_counts(0, 0, 2, "after the acks");
	if (has_pending_slot(&S))
		cr_assert_eq(s_has_pending(), 0, "nothing pending: the batch is gone");
}

Test(store, force_delete_in_any_state)
{
	int64_t now = ackbox_wall_ms();
	crows a = {0};
	ackbox_store_change ch[2];
	char err[512];

	insert_plain(3, now, now);
	s_claim(now, now + 600000, 10, &a); /* all three SENDING, held by a relay */
	ch[0] = change(ACKBOX_CHANGE_RETRY, &ids[1], lease_of(&a, &ids[1]));
	ch[0].attempts = 1;
	ch[0].due_ms = now + 600000;
	ch[1] = change(ACKBOX_CHANGE_FAIL, &ids[2], lease_of(&a, &ids[2]));
	ch[1].attempts = 3;
	s_apply(ch, 2);
	check_counts(1, 1, 1, "before");

	s_force(ACKBOX_CHANGE_DELETE, &ids[0], NULL, 0);
	cr_assert_not(s_exists(&ids[0]), "a SENDING row is deleted");
	check_counts(0, 1, 1, "after deleting the SENDING row");
	s_force(ACKBOX_CHANGE_DELETE, &ids[1], NULL, 0);
	cr_assert_not(s_exists(&ids[1]), "a RETRYING row is deleted");
	check_counts(0, 0, 1, "after deleting the RETRYING row");
	s_force(ACKBOX_CHANGE_DELETE, &ids[2], NULL, 0);
	cr_assert_not(s_exists(&ids[2]), "a FAILED row is deleted");
	check_counts(0, 0, 0, "after deleting the FAILED row");
	if (has_pending_slot(&S))
		cr_assert_eq(s_has_pending(), 0);
	/* the relay's late answers create nothing */
	ackbox_store_change late[2] = {change(ACKBOX_CHANGE_RETRY, &ids[0], lease_of(&a, &ids[0])),
	                               change(ACKBOX_CHANGE_RELEASE, &ids[1], lease_of(&a, &ids[1]))};
	late[0].attempts = 1;
	late[0].due_ms = now;
	late[1].due_ms = now;
	s_apply(late, 2);
	cr_assert_not(s_exists(&ids[0]));
	cr_assert_not(s_exists(&ids[1]));
	cr_assert_eq(s_claim(now + 86400000, now + 86500000, 10, NULL), 0, "nothing comes back");
	cr_assert_eq(force_on(&S, ACKBOX_CHANGE_DELETE, &ids[0], NULL, 0, err, sizeof(err)),
	             ACKBOX_ERR_NOT_FOUND, "a second delete finds nothing");
	crows_free(&a);
}

Test(store, force_unknown_id_is_not_found)
{
	int64_t now = ackbox_wall_ms();
	ackbox_id ghost;
	char err[512];
	int rc;

	insert_plain(1, now, now);
	insert_plain(5, now, now); /* ids[0..4] again: five more, packed in SQLite */
	ackbox_id_new(&ghost);
	rc = force_on(&S, ACKBOX_CHANGE_FAIL, &ghost, "operator", 0, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_NOT_FOUND, "FAIL of an unknown id: rc %d (%s)", rc, err);
	cr_assert(err[0], "NOT_FOUND comes with an errstr");
	rc = force_on(&S, ACKBOX_CHANGE_DELETE, &ghost, NULL, 0, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_NOT_FOUND, "DELETE of an unknown id: rc %d (%s)", rc, err);
	cr_assert(err[0], "NOT_FOUND comes with an errstr");
	cr_assert_not(s_exists(&ghost), "nothing is created");
	check_counts(6, 0, 0, "unchanged");
}

Test(store, force_fail_one_member_of_a_packed_batch)
{
	/* In SQLite, six messages of one insert are one packed row. */
	int64_t now = ackbox_wall_ms();
	crows a = {0}, l = {0}, b = {0}, g = {0};
	ackbox_store_change ch[4];
	char err[512] = "";
	unsigned m;
	crow r;

	insert_plain(6, now, now);
	cr_assert_eq(s_claim(now, now + 1000, 10, &a), 6, "the relay takes the whole batch");
	s_force(ACKBOX_CHANGE_FAIL, &ids[2], "operator: poison", 0);
	r = s_get(&ids[2], &g);
	cr_assert_eq(r.state, ACKBOX_MSG_FAILED);
	cr_assert_str_eq(r.last_error ? r.last_error : "(null)", "operator: poison");
	crows_free(&g);
	check_counts(5, 0, 1, "after force FAIL");
	cr_assert_eq(s_list(-1, 0, &l), 6, "list shows each message once");
	for (int i = 0; i < 6; i++) {
		cr_assert(id_eq(&l.v[i].id, &ids[i]), "list: row %d out of id order", i);
		cr_assert_eq(l.v[i].state, i == 2 ? ACKBOX_MSG_FAILED : ACKBOX_MSG_SENDING,
		             "list: ids[%d] state %d", i, l.v[i].state);
	}
	crows_free(&l);
	cr_assert_eq(s_list(ACKBOX_MSG_FAILED, 0, &l), 1);
	cr_assert(id_eq(&l.v[0].id, &ids[2]));
	crows_free(&l);

	/* the relay acks four of the others, and the forced one under its old lease */
	ch[0] = change(ACKBOX_CHANGE_DELETE, &ids[0], lease_of(&a, &ids[0]));
	ch[1] = change(ACKBOX_CHANGE_DELETE, &ids[1], lease_of(&a, &ids[1]));
	ch[2] = change(ACKBOX_CHANGE_DELETE, &ids[2], lease_of(&a, &ids[2]));
	ch[3] = change(ACKBOX_CHANGE_DELETE, &ids[3], lease_of(&a, &ids[3]));
	s_apply(ch, 4);
	ch[0] = change(ACKBOX_CHANGE_DELETE, &ids[4], lease_of(&a, &ids[4]));
	s_apply(ch, 1);
	cr_assert_eq(s_get(&ids[2], &g).state, ACKBOX_MSG_FAILED,
	             "the relay's delete under the batch's lease is skipped");
	crows_free(&g);
	check_counts(1, 0, 1, "after four acks");
	/* its lease runs out: only the member left is handed out again */
	cr_assert_eq(s_claim(now + 1000, now + 2000, 10, &b), 1);
	cr_assert(id_eq(&b.v[0].id, &ids[5]), "claimed %s, not ids[5]", idstr(&b.v[0].id));
	m = claimed_mask(&b, 6);
	cr_assert_eq(m, 1u << 5);
	ch[0] = change(ACKBOX_CHANGE_DELETE, &ids[5], lease_of(&b, &ids[5]));
	s_apply(ch, 1);
	check_counts(0, 0, 1, "after the last ack");
	if (has_pending_slot(&S))
		cr_assert_eq(s_has_pending(), 0, "the batch is gone once its other members are acked");
	cr_assert_eq(S.ops->requeue(S.ctx, &ids[2], 1, now + 2000, err, sizeof(err)), 1, "%s", err);
	crows_free(&b);
	cr_assert_eq(s_claim(now + 2000, now + 3000, 10, &b), 1, "only the requeued member is due");
	cr_assert(id_eq(&b.v[0].id, &ids[2]));
	cr_assert_eq(b.v[0].state, ACKBOX_MSG_RETRYING);
	ch[0] = change(ACKBOX_CHANGE_DELETE, &ids[2], lease_of(&b, &ids[2]));
	s_apply(ch, 1);
	check_counts(0, 0, 0, "at the end");
	crows_free(&a);
	crows_free(&b);
}

Test(store, force_delete_one_member_of_a_packed_batch_for_good)
{
	int64_t now = ackbox_wall_ms();
	crows a = {0}, b = {0}, l = {0};
	ackbox_store_change ch[6];
	char err[512] = "";
	size_t k = 0;

	insert_plain(6, now, now);
	cr_assert_eq(s_claim(now, now + 600000, 10, &a), 6);
	s_force(ACKBOX_CHANGE_DELETE, &ids[3], NULL, 0);
	cr_assert_not(s_exists(&ids[3]), "the deleted member is gone from get");
	cr_assert_eq(s_list(-1, 0, &l), 5, "and from list");
	for (size_t i = 0; i < l.n; i++)
		cr_assert_not(id_eq(&l.v[i].id, &ids[3]));
	crows_free(&l);
	check_counts(5, 0, 0, "after force DELETE");
	/* the relay's answer for it, under the batch's lease, brings nothing back */
	ch[0] = change(ACKBOX_CHANGE_RETRY, &ids[3], lease_of(&a, &ids[3]));
	ch[0].attempts = 1;
	ch[0].due_ms = now;
	s_apply(ch, 1);
	cr_assert_not(s_exists(&ids[3]), "a retry of a deleted member creates nothing");

	/* recovery (a restart) and claims never hand it out again */
	cr_assert_eq(S.ops->recover(S.ctx, now, err, sizeof(err)), 0, "recover: %s", err);
	cr_assert_eq(s_claim(now, now + 1000, 10, &b), 5);
	cr_assert_eq(claimed_mask(&b, 6), 0x3fu & ~(1u << 3), "everything but ids[3]");
	crows_free(&b);
	st_close(&S);
	st_open(&S); /* a new process: nothing in memory */
	cr_assert_eq(S.ops->recover(S.ctx, now, err, sizeof(err)), 0, "recover: %s", err);
	/* (a store shared by relays recovers only its own leases: at the end of
	 * the lease the others' rows are due too) */
	cr_assert_eq(s_claim(now + 1000, now + 2000, 10, &b), 5);
	cr_assert_eq(claimed_mask(&b, 6), 0x3fu & ~(1u << 3), "after reopen: everything but ids[3]");
	for (int i = 0; i < 6; i++)
		if (i != 3)
			ch[k++] = change(ACKBOX_CHANGE_DELETE, &ids[i], lease_of(&b, &ids[i]));
	s_apply(ch, k);
	check_counts(0, 0, 0, "after the acks");
	if (has_pending_slot(&S))
		cr_assert_eq(s_has_pending(), 0);
	crows_free(&a);
	crows_free(&b);
}

Test(store, force_from_another_process_while_a_relay_holds_the_batch)
{
	/* S is a relay holding a claimed batch; T is `ackbox fail`/`purge --id`
	 * on the same store. */
	int64_t now = ackbox_wall_ms();
	store T = {0};
	crows a = {0}, b = {0}, g = {0};
	ackbox_store_change ch[3];
	char err[512] = "";
	size_t k = 0;
	int rc;

	insert_plain(6, now, now);
	cr_assert_eq(s_claim(now, now + 600000, 10, &a), 6);
	ch[0] = change(ACKBOX_CHANGE_DELETE, &ids[0], lease_of(&a, &ids[0]));
	s_apply(ch, 1); /* ids[0] acked */
	st_open(&T);
	rc = force_on(&T, ACKBOX_CHANGE_DELETE, &ids[3], NULL, 0, err, sizeof(err));
	cr_assert_eq(rc, 1, "force DELETE from another instance: %s", err);
	rc = force_on(&T, ACKBOX_CHANGE_DELETE, &ids[1], NULL, 0, err, sizeof(err));
	cr_assert_eq(rc, 1, "force DELETE from another instance: %s", err);
	rc = force_on(&T, ACKBOX_CHANGE_FAIL, &ids[4], "operator: stuck", 0, err, sizeof(err));
	cr_assert_eq(rc, 1, "force FAIL from another instance: %s", err);
	/* the relay answers for ids[3] and ids[4] under the batch's lease (ids[1]
	 * is still in flight when it stops) */
	ch[0] = change(ACKBOX_CHANGE_RETRY, &ids[3], lease_of(&a, &ids[3]));
	ch[0].attempts = 1;
	ch[0].due_ms = now;
	ch[0].last_error = "nack";
	ch[1] = change(ACKBOX_CHANGE_DELETE, &ids[4], lease_of(&a, &ids[4]));
	ch[2] = change(ACKBOX_CHANGE_RETRY, &ids[5], lease_of(&a, &ids[5]));
	ch[2].attempts = 1;
	ch[2].due_ms = now;
	ch[2].last_error = "nack";
	s_apply(ch, 3);
	st_close(&T);
	st_close(&S); /* a clean close of the relay */
	st_open(&S); /* the relay restarts */
	cr_assert_not(s_exists(&ids[3]), "the relay's retry did not bring the deleted one back");
	cr_assert_not(s_exists(&ids[1]), "the relay's clean close did not bring the other back");
	cr_assert_eq(s_get(&ids[4], &g).state, ACKBOX_MSG_FAILED,
	             "the relay's ack under its old lease did not delete the failed one");
	crows_free(&g);
	check_counts(1, 1, 1, "after reopen");
	cr_assert_eq(S.ops->recover(S.ctx, now, err, sizeof(err)), 0, "recover: %s", err);
	cr_assert_eq(s_claim(now + 600000, now + 601000, 10, &b), 2);
	cr_assert_eq(claimed_mask(&b, 6), (1u << 2) | (1u << 5),
	             "only ids[2] and ids[5] are sent again");
	for (size_t i = 0; i < b.n; i++)
		ch[k++] = change(ACKBOX_CHANGE_DELETE, &b.v[i].id, b.v[i].lease);
	s_apply(ch, k);
	check_counts(0, 0, 1, "at the end");
	if (has_pending_slot(&S))
		cr_assert_eq(s_has_pending(), 0);
	crows_free(&a);
	crows_free(&b);
}

Test(store, force_from_another_process_then_the_relay_claims_again)
{
	/* The relay's lease runs out after an operator took two members away:
	 * its next claim hands out only the others, and their acks finish the
	 * batch. */
	int64_t now = ackbox_wall_ms();
	store T = {0};
	crows a = {0}, b = {0};
	ackbox_store_change ch[6];
	char err[512] = "";
	size_t k = 0;

	insert_plain(6, now, now);
	cr_assert_eq(s_claim(now, now + 1000, 10, &a), 6);
	st_open(&T);
	cr_assert_eq(force_on(&T, ACKBOX_CHANGE_DELETE, &ids[2], NULL, 0, err, sizeof(err)), 1,
	             "%s", err);
	cr_assert_eq(force_on(&T, ACKBOX_CHANGE_FAIL, &ids[3], "operator", 0, err, sizeof(err)), 1,
	             "%s", err);
	st_close(&T);
	cr_assert_eq(s_claim(now + 1000, now + 2000, 10, &b), 4);
	cr_assert_eq(claimed_mask(&b, 6), 0x3fu & ~((1u << 2) | (1u << 3)),
	             "everything but the two the operator took");
	for (size_t i = 0; i < b.n; i++)
		ch[k++] = change(ACKBOX_CHANGE_DELETE, &b.v[i].id, b.v[i].lease);
	s_apply(ch, k);
	check_counts(0, 0, 1, "after the acks");
	if (has_pending_slot(&S))
		cr_assert_eq(s_has_pending(), 0, "the batch is gone once the others are acked");
	crows_free(&a);
	crows_free(&b);
}

/* ------------------------------------------------------------------ */
/* The attempt history (store ABI 1.6, optional)                        */
/* ------------------------------------------------------------------ */

static int has_history_slots(const store *s)
{
	return s->ops->struct_size >= offsetof(ackbox_store_ops, history) + sizeof(void *) &&
	       s->ops->apply_noted && s->ops->force_noted && s->ops->history;
}

/* What history() handed back, texts copied. */
typedef struct hist {
	int n;
	ackbox_attempt a[ACKBOX_HISTORY_MAX + 4];
	char text[ACKBOX_HISTORY_MAX + 4][ACKBOX_HISTORY_TEXT_MAX + 8];
} hist;

static int hist_cb(const ackbox_attempt *a, void *opaque)
{
	hist *h = opaque;
	cr_assert_lt(h->n, ACKBOX_HISTORY_MAX + 4, "history handed back more than %d notes",
	             ACKBOX_HISTORY_MAX + 4);
	cr_assert(a->text != NULL, "a note without text: \"\" is none");
	cr_assert_leq(strlen(a->text), ACKBOX_HISTORY_TEXT_MAX, "a note's text over %d bytes",
	              ACKBOX_HISTORY_TEXT_MAX);
	h->a[h->n] = *a;
	snprintf(h->text[h->n], sizeof(h->text[0]), "%s", a->text);
	h->a[h->n].text = h->text[h->n];
	h->n++;
	return 0;
}

static hist *s_history(const ackbox_id *id)
{
	static hist h;
	char err[512] = "";
	int rc;
	memset(&h, 0, sizeof(h));
	rc = S.ops->history(S.ctx, id, hist_cb, &h, err, sizeof(err));
	cr_assert_geq(rc, 0, "history of %s: %s (%s)", idstr(id), err, ackbox_strerror(rc));
	cr_assert_eq(rc, h.n, "history returns the number of notes handed back");
	return &h;
}

static void s_apply_noted(const ackbox_store_change *ch, const ackbox_attempt *notes, size_t n)
{
	char err[512] = "";
	int rc = S.ops->apply_noted(S.ctx, ch, notes, n, err, sizeof(err));
	cr_assert_eq(rc, 0, "apply_noted of %zu change(s): %s (%s)", n, err, ackbox_strerror(rc));
}

static ackbox_attempt note(int64_t at, ackbox_outcome oc, int code, const char *text)
{
	ackbox_attempt a;
	a.at_ms = at;
	a.outcome = oc;
	a.code = code;
	a.text = text;
	return a;
}

/* Notes come in the order written, only with changes that applied, at most
 * ACKBOX_HISTORY_MAX, texts cut on a UTF-8 boundary; they survive a reopen
 * and go with the message (ack, forced delete, purge). */
Test(store, history_is_kept_in_order_trimmed_and_dropped_with_the_message)
{
	int64_t now = ackbox_wall_ms();
	crows a = {0};
	ackbox_store_change ch[24];
	ackbox_attempt nt[24];
	ackbox_store_rec recs[6];
	char err[512] = "", long_text[3][400];
	hist *h;
	uint64_t l[4];

	if (!has_history_slots(&S))
		SKIP("store '%s' keeps no attempt history (the optional ABI 1.6 slots)", scheme);
	/* four rows, claimed (ids[3] is failed and purged at the end) */
	for (int i = 0; i < 4; i++) {
		recs[0] = rec(i, now + i, now);
		s_insert(recs, 1);
	}
	s_claim(now, now + 600000, 10, &a);
	for (int i = 0; i < 4; i++)
		l[i] = lease_of(&a, &ids[i]);
	cr_assert_eq(s_history(&ids[0])->n, 0, "a new message has no history");

	/* one batch: a nack and a note of an attempt lost in doubt for ids[0], a
	 * nack for ids[1], an ack of ids[2] (its note is ignored), a note under
	 * a stale lease (skipped), and a change without a note */
	ch[0] = change(ACKBOX_CHANGE_RETRY, &ids[0], l[0]);
	ch[0].attempts = 1;
	ch[0].due_ms = now + 600000;
	ch[0].last_error = "nacked";
	ch[0].last_code = 406;
	nt[0] = note(now + 1, ACKBOX_OUTCOME_NACK, 406, "PRECONDITION_FAILED - nack");
	ch[1] = change(ACKBOX_CHANGE_NOTE, &ids[0], l[0]);
	nt[1] = note(now + 2, ACKBOX_OUTCOME_IN_DOUBT, 0, "connection lost: in doubt");
	ch[2] = change(ACKBOX_CHANGE_RETRY, &ids[1], l[1]);
	ch[2].attempts = 1;
	ch[2].due_ms = now + 600000;
	nt[2] = note(now + 3, ACKBOX_OUTCOME_ERROR, 500, NULL);
	ch[3] = change(ACKBOX_CHANGE_DELETE, &ids[2], l[2]);
	nt[3] = note(now + 4, ACKBOX_OUTCOME_NACK, 1, "ignored");
	ch[4] = change(ACKBOX_CHANGE_NOTE, &ids[1], l[1] + 987654321);
	nt[4] = note(now + 5, ACKBOX_OUTCOME_NACK, 2, "stale lease: skipped");
	ch[5] = change(ACKBOX_CHANGE_RELEASE, &ids[3], l[3]);
	ch[5].due_ms = now + 600000;
	nt[5] = note(0, ACKBOX_OUTCOME_NONE, 0, NULL); /* at_ms 0: no note */
	s_apply_noted(ch, nt, 6);
	h = s_history(&ids[0]);
	cr_assert_eq(h->n, 2, "ids[0]: two notes, got %d", h->n);
	cr_assert(h->a[0].at_ms == now + 1 && h->a[0].outcome == ACKBOX_OUTCOME_NACK &&
	              h->a[0].code == 406,
	          "the first note, as written");
	cr_assert_str_eq(h->text[0], "PRECONDITION_FAILED - nack");
	cr_assert(h->a[1].at_ms == now + 2 && h->a[1].outcome == ACKBOX_OUTCOME_IN_DOUBT,
	          "the NOTE change's note second");
	h = s_history(&ids[1]);
	cr_assert_eq(h->n, 1, "ids[1]: one note (the stale one skipped), got %d", h->n);
	cr_assert(h->a[0].outcome == ACKBOX_OUTCOME_ERROR && h->a[0].code == 500);
	cr_assert_str_eq(h->text[0], "", "a NULL text reads back as \"\"");
	cr_assert_eq(s_history(&ids[2])->n, 0, "an acked message has no history");
	cr_assert_eq(s_history(&ids[3])->n, 0, "a change without a note leaves none");
	{
		crows g = {0};
		crow r = s_get(&ids[0], &g);
		cr_assert_eq(r.state, ACKBOX_MSG_RETRYING, "the RETRY applied with its note");
		cr_assert_eq(r.attempts, 1, "a NOTE change changes no row");
		crows_free(&g);
	}

	/* texts: cut at ACKBOX_HISTORY_TEXT_MAX bytes, never inside a UTF-8
	 * sequence (2, 3 and 4 bytes, the boundary falling mid-character) */
	snprintf(long_text[0], sizeof(long_text[0]), "a");
	for (int i = 0; i < 150; i++)
		strcat(long_text[0], "\xc3\xa9"); /* é */
	long_text[1][0] = '\0';
	for (int i = 0; i < 100; i++)
		strcat(long_text[1], "\xe2\x82\xac"); /* € */
	snprintf(long_text[2], sizeof(long_text[2]), "xy");
	for (int i = 0; i < 75; i++)
		strcat(long_text[2], "\xf0\x9f\x93\xa6"); /* 📦 */
	for (int i = 0; i < 3; i++) {
		ch[i] = change(ACKBOX_CHANGE_NOTE, &ids[1], l[1]);
		nt[i] = note(now + 10 + i, ACKBOX_OUTCOME_UNROUTABLE, 312, long_text[i]);
	}
	s_apply_noted(ch, nt, 3);
	h = s_history(&ids[1]);
	cr_assert_eq(h->n, 4);
	{
		static const size_t want[3] = {199, 198, 198};
		for (int i = 0; i < 3; i++) {
			size_t len = strlen(h->text[1 + i]);
			cr_assert_eq(len, want[i], "text %d cut to %zu bytes, want %zu", i, len, want[i]);
			cr_assert_eq(memcmp(h->text[1 + i], long_text[i], len), 0,
			             "text %d: the first bytes, unchanged", i);
			cr_assert_neq((unsigned char)long_text[i][len] & 0xC0, 0x80,
			              "text %d cut inside a UTF-8 sequence", i);
		}
	}

	/* more than ACKBOX_HISTORY_MAX: the oldest go, in one batch and one by one */
	for (int i = 0; i < 10; i++) {
		ch[i] = change(ACKBOX_CHANGE_NOTE, &ids[0], l[0]);
		nt[i] = note(now + 100 + i, ACKBOX_OUTCOME_NACK, 1000 + i, "batch");
	}
	s_apply_noted(ch, nt, 10);
	for (int i = 10; i < 20; i++) {
		ch[0] = change(i % 2 ? ACKBOX_CHANGE_RETRY : ACKBOX_CHANGE_NOTE, &ids[0], l[0]);
		ch[0].attempts = 2 + i;
		ch[0].due_ms = now + 600000;
		nt[0] = note(now + 100 + i, ACKBOX_OUTCOME_TIMEOUT, 1000 + i, "one");
		s_apply_noted(ch, nt, 1);
	}
	h = s_history(&ids[0]);
	cr_assert_eq(h->n, ACKBOX_HISTORY_MAX, "22 written, %d kept, got %d", ACKBOX_HISTORY_MAX,
	             h->n);
	for (int i = 0; i < ACKBOX_HISTORY_MAX; i++)
		cr_assert_eq(h->a[i].code, 1004 + i, "note %d: code %d, want %d (the newest, oldest "
		             "first)", i, h->a[i].code, 1004 + i);

	/* an operator's FAIL with a note; then a reopen keeps all of it */
	{
		ackbox_store_change f;
		ackbox_attempt op = note(now + 500, ACKBOX_OUTCOME_OPERATOR, 0, "see ticket 42");
		memset(&f, 0, sizeof(f));
		f.kind = ACKBOX_CHANGE_FAIL;
		f.id = ids[3];
		f.last_error = "marked failed by an operator: see ticket 42";
		cr_assert_eq(S.ops->force_noted(S.ctx, &f, &op, now + 500, err, sizeof(err)), 1,
		             "force_noted: %s", err);
		f.id = ids[2]; /* gone: not found, and no note for it */
		cr_assert_eq(S.ops->force_noted(S.ctx, &f, &op, now + 500, err, sizeof(err)),
		             ACKBOX_ERR_NOT_FOUND);
	}
	st_close(&S);
	st_open(&S);
	h = s_history(&ids[0]);
	cr_assert_eq(h->n, ACKBOX_HISTORY_MAX, "after reopen");
	cr_assert_eq(h->a[ACKBOX_HISTORY_MAX - 1].code, 1019);
	cr_assert_str_eq(h->text[ACKBOX_HISTORY_MAX - 1], "one");
	cr_assert_eq(s_history(&ids[1])->n, 4, "after reopen");
	h = s_history(&ids[3]);
	cr_assert_eq(h->n, 1, "after reopen: the operator's note");
	cr_assert(h->a[0].outcome == ACKBOX_OUTCOME_OPERATOR && h->a[0].at_ms == now + 500);
	cr_assert_str_eq(h->text[0], "see ticket 42");
	cr_assert_eq(s_history(&ids[2])->n, 0);

	/* the history goes with the message: ack, forced delete, purge */
	ch[0] = change(ACKBOX_CHANGE_DELETE, &ids[0], l[0]);
	s_apply(ch, 1);
	cr_assert_not(s_exists(&ids[0]));
	cr_assert_eq(s_history(&ids[0])->n, 0, "acked: its history went with it");
	s_force(ACKBOX_CHANGE_DELETE, &ids[1], NULL, 0);
	cr_assert_eq(s_history(&ids[1])->n, 0, "force-deleted: its history went with it");
	cr_assert_eq(S.ops->purge(S.ctx, ackbox_wall_ms() + 1000, err, sizeof(err)), 1,
	             "purge: %s", err);
	cr_assert_eq(s_history(&ids[3])->n, 0, "purged: its history went with it");
	check_counts(0, 0, 0, "at the end");
	crows_free(&a);

	/* messages their publisher holds (lease 0; six in one insert: a packed
	 * batch in SQLite) take notes too, and lose them with their ack */
	for (int i = 0; i < 6; i++)
		recs[i] = rec(i, now + i, now + 600000);
	s_insert(recs, 6);
	ch[0] = change(ACKBOX_CHANGE_RETRY, &ids[1], 0);
	ch[0].attempts = 1;
	ch[0].due_ms = now + 600000;
	nt[0] = note(now + 1, ACKBOX_OUTCOME_NACK, 7, "held: nack");
	ch[1] = change(ACKBOX_CHANGE_NOTE, &ids[4], 0);
	nt[1] = note(now + 2, ACKBOX_OUTCOME_NOT_SENT, 0, "held: never sent");
	s_apply_noted(ch, nt, 2);
	cr_assert_eq(s_history(&ids[1])->n, 1, "a held message's RETRY note");
	cr_assert_eq(s_history(&ids[4])->n, 1, "a held message's NOTE");
	cr_assert_eq(s_history(&ids[4])->a[0].outcome, ACKBOX_OUTCOME_NOT_SENT);
	for (int i = 0; i < 6; i++)
		ch[i] = change(ACKBOX_CHANGE_DELETE, &ids[i], 0);
	s_apply_noted(ch, NULL, 6);
	cr_assert_eq(s_history(&ids[1])->n, 0, "acked: no history left");
	cr_assert_eq(s_history(&ids[4])->n, 0, "acked: no history left");
	check_counts(0, 0, 0, "after the held messages' acks");
}

/* ------------------------------------------------------------------ */
/* Bytes in, the same bytes out                                         */
/* ------------------------------------------------------------------ */

#define BIG (1024 * 1024)

typedef struct sample {
	ackbox_store_rec rec;
	uint8_t *payload;
	uint8_t *headers;
} sample;

static ackbox_header hdrs[3];
static uint8_t hdr_bin[32];

/* Three records that cover the awkward cases: every byte value with NULs in
 * payload, key and header values; 1 MiB; and an empty payload with nothing else. */
static void make_samples(sample s[3], int64_t now)
{
	uint32_t x = 2463534242u;
	size_t hl;
	memset(s, 0, 3 * sizeof(*s));
	for (int i = 0; i < 32; i++)
		hdr_bin[i] = (uint8_t)i;
	hdrs[0] = (ackbox_header){"trace", "t\0-1", 4};
	hdrs[1] = (ackbox_header){"bin", hdr_bin, sizeof(hdr_bin)};
	hdrs[2] = (ackbox_header){"empty", "", 0};

	s[0].payload = malloc(512);
	for (int i = 0; i < 512; i++)
		s[0].payload[i] = (uint8_t)(i & 0xff);
	hl = ackbox_headers_encoded_size(hdrs, 3);
	s[0].headers = malloc(hl);
	ackbox_headers_encode(hdrs, 3, s[0].headers);
	ackbox_id_new(&s[0].rec.id);
	s[0].rec.created_ms = now - 3;
	s[0].rec.due_ms = now;
	s[0].rec.topic = "orders/\xc3\xa9t\xc3\xa9/\xe2\x82\xac";
	s[0].rec.key = "k\0e\0y\xff";
	s[0].rec.key_len = 6;
	s[0].rec.content_type = "application/octet-stream; charset=binary";
	s[0].rec.headers = s[0].headers;
	s[0].rec.headers_len = hl;
	s[0].rec.payload = s[0].payload;
	s[0].rec.payload_len = 512;

	s[1].payload = malloc(BIG);
	for (size_t i = 0; i < BIG; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		s[1].payload[i] = (uint8_t)x;
	}
	s[1].payload[0] = 0;
	s[1].payload[BIG - 1] = 0;
	ackbox_id_new(&s[1].rec.id);
	s[1].rec.created_ms = now - 2;
	s[1].rec.due_ms = now;
	s[1].rec.topic = "big";
	s[1].rec.payload = s[1].payload;
	s[1].rec.payload_len = BIG;

	ackbox_id_new(&s[2].rec.id);
	s[2].rec.created_ms = now - 1;
	s[2].rec.due_ms = now;
	s[2].rec.topic = "empty";
	s[2].rec.payload = NULL;
	s[2].rec.payload_len = 0;
}

static void free_samples(sample s[3])
{
	for (int i = 0; i < 3; i++) {
		free(s[i].payload);
		free(s[i].headers);
	}
}

/* The row holds exactly what the record said. */
static void check_row(const crow *r, const ackbox_store_rec *w, const char *via)
{
	cr_assert(id_eq(&r->id, &w->id), "%s: id", via);
	cr_assert_str_eq(r->topic, w->topic, "%s: topic", via);
	cr_assert_eq(r->created_ms, w->created_ms, "%s: created_ms", via);
	cr_assert_eq(r->key_len, w->key_len, "%s: key length %zu, not %zu", via, r->key_len,
	             w->key_len);
	if (w->key_len)
		cr_assert_eq(memcmp(r->key, w->key, w->key_len), 0, "%s: key bytes", via);
	if (w->content_type)
		cr_assert_str_eq(r->content_type ? r->content_type : "(null)", w->content_type,
		                 "%s: content type", via);
	else
		cr_assert_null(r->content_type, "%s: no content type given: NULL", via);
	cr_assert_eq(r->headers_len, w->headers_len, "%s: headers length", via);
	if (w->headers_len) {
		ackbox_header *h = NULL;
		size_t nh = 0;
		cr_assert_eq(memcmp(r->headers, w->headers, w->headers_len), 0, "%s: headers", via);
		cr_assert_eq(ackbox_headers_decode(r->headers, r->headers_len, &h, &nh), 0);
		cr_assert_eq(nh, 3);
		cr_assert_eq(h[0].value_len, 4);
		cr_assert_eq(memcmp(h[0].value, "t\0-1", 4), 0);
		cr_assert_eq(h[1].value_len, 32);
		cr_assert_eq(memcmp(h[1].value, hdr_bin, 32), 0);
		cr_assert_eq(h[2].value_len, 0);
		free(h);
	}
	cr_assert_eq(r->payload_len, w->payload_len, "%s: payload length %zu, not %zu", via,
	             r->payload_len, w->payload_len);
	if (w->payload_len)
		cr_assert_eq(memcmp(r->payload, w->payload, w->payload_len), 0, "%s: payload bytes",
		             via);
}

static const crow *find_row(const crows *c, const ackbox_id *id)
{
	for (size_t i = 0; i < c->n; i++)
		if (id_eq(&c->v[i].id, id))
			return &c->v[i];
	return NULL;
}

Test(store, bytes_round_trip_exactly)
{
	int64_t now = ackbox_wall_ms();
	sample s[3];
	ackbox_store_rec recs[3];
	crows g = {0}, l = {0}, c = {0};

	make_samples(s, now);
	for (int i = 0; i < 3; i++)
		recs[i] = s[i].rec;
	s_insert(recs, 3);
	for (int i = 0; i < 3; i++) {
		s_get(&recs[i].id, &g);
		check_row(&g.v[g.n - 1], &recs[i], "get");
	}
	cr_assert_eq(s_list(-1, 0, &l), 3);
	for (int i = 0; i < 3; i++)
		check_row(&l.v[i], &recs[i], "list");
	cr_assert_eq(s_claim(now, now + 1000, 10, &c), 3);
	for (int i = 0; i < 3; i++) {
		const crow *r = find_row(&c, &recs[i].id);
		cr_assert(r != NULL, "claim returned every row");
		check_row(r, &recs[i], "claim");
	}
	crows_free(&g);
	crows_free(&l);
	crows_free(&c);
	free_samples(s);
}

Test(store, reopen_keeps_everything)
{
	int64_t now = ackbox_wall_ms();
	sample s[3];
	ackbox_store_rec recs[6];
	crows a = {0}, before = {0}, after = {0};
	ackbox_store_change ch[2];
	ackbox_counts c0, c1;

	make_samples(s, now);
	for (int i = 0; i < 3; i++)
		recs[i] = s[i].rec;
	recs[3] = rec(3, now, now);
	recs[4] = rec(4, now, now);
	recs[5] = rec(5, now, now + 600000); /* leased to its inserter */
	s_insert(recs, 6);
	s_claim(now, now + 60000, 2, &a);
	s_claim(now, now + 60000, 10, &a);
	ch[0] = change(ACKBOX_CHANGE_RETRY, &ids[3], lease_of(&a, &ids[3]));
	ch[0].attempts = 2;
	ch[0].due_ms = now + 777;
	ch[0].last_error = "broker said: \"no\"";
	ch[0].last_code = 312;
	ch[1] = change(ACKBOX_CHANGE_FAIL, &ids[4], lease_of(&a, &ids[4]));
	ch[1].attempts = 5;
	ch[1].last_error = "max attempts";
	ch[1].last_code = 500;
	s_apply(ch, 2);
	c0 = s_counts();
	s_list(-1, 0, &before);
	st_close(&S);

	st_open(&S);
	c1 = s_counts();
	cr_assert_eq(c1.sending, c0.sending);
	cr_assert_eq(c1.retrying, c0.retrying);
	cr_assert_eq(c1.failed, c0.failed);
	cr_assert_eq(c1.oldest_pending_ms, c0.oldest_pending_ms);
	cr_assert_eq(s_list(-1, 0, &after), 6);
	cr_assert_eq(before.n, 6);
	for (int i = 0; i < 6; i++) {
		const crow *b = &before.v[i], *r = &after.v[i];
		cr_assert(id_eq(&b->id, &r->id), "row %d: id order kept", i);
		cr_assert_eq(r->state, b->state, "row %d: state", i);
		cr_assert_eq(r->attempts, b->attempts, "row %d: attempts", i);
		cr_assert_eq(r->created_ms, b->created_ms, "row %d: created_ms", i);
		cr_assert_eq(r->updated_ms, b->updated_ms, "row %d: updated_ms", i);
		cr_assert_eq(r->due_ms, b->due_ms, "row %d: due_ms", i);
		cr_assert_eq(r->last_code, b->last_code, "row %d: last_code", i);
		cr_assert_str_eq(r->last_error ? r->last_error : "(null)",
		                 b->last_error ? b->last_error : "(null)", "row %d: last_error", i);
	}
	for (int i = 0; i < 6; i++)
		check_row(find_row(&after, &recs[i].id), &recs[i], "after reopen");
	const crow *r3 = find_row(&after, &ids[3]), *r4 = find_row(&after, &ids[4]);
	cr_assert_eq(r3->state, ACKBOX_MSG_RETRYING);
	cr_assert_eq(r3->due_ms, now + 777);
	cr_assert_str_eq(r3->last_error, "broker said: \"no\"");
	cr_assert_eq(r3->last_code, 312);
	cr_assert_eq(r4->state, ACKBOX_MSG_FAILED);
	cr_assert_eq(r4->attempts, 5);
	crows_free(&a);
	crows_free(&before);
	crows_free(&after);
	free_samples(s);
}

/* ------------------------------------------------------------------ */
/* Through the public API, with the loopback transport                  */
/* ------------------------------------------------------------------ */

static int acked;

static void on_report(const ackbox_report *r, void *opaque)
{
	(void)opaque;
	if (r->state == ACKBOX_MSG_ACKED)
		__atomic_add_fetch(&acked, 1, __ATOMIC_RELAXED);
}

static ackbox *api_open(const char *broker)
{
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab = NULL;
	char lb[128], err[512] = "";
	int rc;
	TU_SET(c, "store.url", url);
	TU_SET(c, "log.level", "error");
	if (broker) {
		snprintf(lb, sizeof(lb), "loopback://%s", broker);
		TU_SET(c, "transport.url", lb);
		TU_SET(c, "retry.timeout", "2s");
		TU_SET(c, "retry.backoff.initial", "20ms");
		TU_SET(c, "retry.backoff.max", "100ms");
		TU_SET(c, "store.poll_interval", "50ms");
		ackbox_conf_set_report_cb(c, on_report, NULL);
	}
	apply_extra_conf(c);
	rc = ackbox_new(&ab, c, err, sizeof(err));
	if (rc)
		ackbox_conf_destroy(c);
	cr_assert_eq(rc, 0, "ackbox_new with store.url=%s: %s (%s)", url, err, ackbox_strerror(rc));
	return ab;
}

static ackbox_counts api_counts(ackbox *ab)
{
	ackbox_counts c;
	char err[512] = "";
	cr_assert_eq(ackbox_counts_get(ab, &c, err, sizeof(err)), 0, "%s", err);
	return c;
}

static int count_cb(const ackbox_stored *m, void *opaque)
{
	(void)m;
	(*(int *)opaque)++;
	return 0;
}

/* 1000 messages: 500 one by one, 500 in batches of 100; payload "msg-<i>". */
static void publish_1000(ackbox *ab)
{
	static char texts[1000][16];
	ackbox_msg m[100];
	ackbox_header h = {"seq", "x", 1};
	char err[512] = "";
	for (int i = 0; i < 1000; i++)
		snprintf(texts[i], sizeof(texts[i]), "msg-%d", i);
	for (int i = 0; i < 500; i++) {
		ackbox_msg one = {0};
		one.topic = "orders";
		one.payload = texts[i];
		one.payload_len = strlen(texts[i]);
		one.headers = &h;
		one.header_count = 1;
		cr_assert_eq(ackbox_publish(ab, &one, NULL, err, sizeof(err)), 0, "publish %d: %s",
		             i, err);
	}
	for (int b = 0; b < 5; b++) {
		for (int k = 0; k < 100; k++) {
			int i = 500 + b * 100 + k;
			memset(&m[k], 0, sizeof(m[k]));
			m[k].topic = "orders";
			m[k].key = "k";
			m[k].key_len = 1;
			m[k].payload = texts[i];
			m[k].payload_len = strlen(texts[i]);
		}
		cr_assert_eq(ackbox_publish_batch(ab, m, 100, NULL, err, sizeof(err)), 0,
		             "publish_batch: %s", err);
	}
}

TestSuite(api, .init = setup, .fini = teardown, .timeout = 240);

Test(api, publish_1000_confirmed_leaves_no_row)
{
	ackbox *ab = api_open("confirming");
	ackbox_loopback *lb = ackbox_loopback_get("confirming");
	char err[512] = "";
	int listed = 0;

	publish_1000(ab);
	cr_assert_eq(ackbox_flush(ab, 60000), 0, "every message confirmed within 60 s");
	cr_assert_eq(acked, 1000, "one ACKED report per message");
	cr_assert_eq(ackbox_loopback_distinct(lb), 1000);
	ackbox_counts c = api_counts(ab);
	cr_assert(c.sending == 0 && c.retrying == 0 && c.failed == 0, "rows left: %llu/%llu/%llu",
	          (unsigned long long)c.sending, (unsigned long long)c.retrying,
	          (unsigned long long)c.failed);
	cr_assert_eq(ackbox_list(ab, -1, 0, count_cb, &listed, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(listed, 0, "an acked message leaves no row");
	ackbox_destroy(ab);
}

Test(api, broker_down_keeps_1000_for_the_next_handle)
{
	ackbox_loopback *lb = ackbox_loopback_get("down");
	ackbox *ab;
	char err[512] = "", payload[64];
	int listed = 0;
	size_t len;
	ackbox_id id;

	ackbox_loopback_set_up(lb, 0);
	ab = api_open("down");
	publish_1000(ab);
	cr_assert_eq(ackbox_loopback_received(lb), 0);
	ackbox_destroy(ab);

	/* an admin handle (no transport) sees all of them */
	ab = api_open(NULL);
	ackbox_counts c = api_counts(ab);
	cr_assert_eq(c.sending + c.retrying, 1000, "every unconfirmed message survives destroy");
	cr_assert_eq(c.failed, 0, "an outage burns no attempt");
	cr_assert_eq(ackbox_list(ab, -1, 0, count_cb, &listed, err, sizeof(err)), 1000, "%s", err);
	cr_assert_eq(listed, 1000);
	ackbox_destroy(ab);

	ackbox_loopback_set_up(lb, 1);
	ab = api_open("down");
	cr_assert_eq(ackbox_flush(ab, 60000), 0, "a new handle delivers them");
	cr_assert_eq(ackbox_loopback_distinct(lb), 1000);
	cr_assert_eq(acked, 1000);
	c = api_counts(ab);
	cr_assert_eq(c.sending + c.retrying + c.failed, 0);
	/* what arrived is what was published */
	len = sizeof(payload);
	cr_assert_eq(ackbox_loopback_message(lb, 0, &id, NULL, 0, payload, &len, NULL), 0);
	cr_assert(len >= 5 && memcmp(payload, "msg-", 4) == 0, "payload '%.*s'", (int)len, payload);
	ackbox_destroy(ab);
}

typedef struct stored_copy {
	ackbox_state state;
	int attempts;
	char last_error[512];
} stored_copy;

static int copy_stored(const ackbox_stored *m, void *opaque)
{
	stored_copy *c = opaque;
	c->state = m->state;
	c->attempts = m->attempts;
	snprintf(c->last_error, sizeof(c->last_error), "%s", m->last_error ? m->last_error : "");
	return 0;
}

Test(api, fail_and_purge_ids_take_messages_from_the_relay_sending_them)
{
	/* The broker never confirms the first sends: the relay holds all seven
	 * (six from one publish_batch, a packed batch in SQLite, and one alone)
	 * while an operator fails two and deletes one. */
	ackbox_loopback *lb = ackbox_loopback_get("silent");
	ackbox_msg m[6];
	ackbox_id batch[6], one, ghost, gone[2];
	char err[512] = "";
	stored_copy sc;
	ackbox *ab;
	int rc;

	ackbox_loopback_set_default(lb, ACKBOX_LB_DROP, 0);
	ab = api_open("silent");
	memset(m, 0, sizeof(m));
	for (int i = 0; i < 6; i++) {
		m[i].topic = "orders";
		m[i].payload = "x";
		m[i].payload_len = 1;
	}
	cr_assert_eq(ackbox_publish_batch(ab, m, 6, batch, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_publish(ab, &m[0], &one, err, sizeof(err)), 0, "%s", err);
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_received(lb) == 7, 10000),
	          "the relay sent %zu of 7", ackbox_loopback_received(lb));
	ackbox_loopback_set_default(lb, ACKBOX_LB_CONFIRM, 0); /* for the resends */

	rc = ackbox_fail(ab, &one, "poison", err, sizeof(err));
	cr_assert_eq(rc, 1, "ackbox_fail of a message in flight: rc %d: %s", rc, err);
	rc = ackbox_fail(ab, &batch[1], NULL, err, sizeof(err));
	cr_assert_eq(rc, 1, "ackbox_fail of a batch member in flight: rc %d: %s", rc, err);
	ackbox_id_new(&ghost);
	gone[0] = batch[2];
	gone[1] = ghost;
	rc = ackbox_purge_ids(ab, gone, 2, err, sizeof(err));
	cr_assert_eq(rc, 1, "purge_ids deletes the one that exists, skips the unknown: rc %d: %s", rc,
	             err);
	cr_assert_eq(ackbox_fail(ab, &ghost, NULL, err, sizeof(err)), ACKBOX_ERR_NOT_FOUND);
	ackbox_counts c = api_counts(ab);
	cr_assert(c.sending == 4 && c.retrying == 0 && c.failed == 2,
	          "at once: sending/retrying/failed %llu/%llu/%llu, expected 4/0/2",
	          (unsigned long long)c.sending, (unsigned long long)c.retrying,
	          (unsigned long long)c.failed);

	/* the relay times the seven out (retry.timeout 2 s) and sends again
	 * only the four it still may */
	cr_assert_eq(ackbox_flush(ab, 60000), 0, "the other four are delivered");
	cr_assert(TU_WAIT_UNTIL((ackbox_poll(ab, 10), __atomic_load_n(&acked, __ATOMIC_RELAXED) >= 4),
	                        10000),
	          "ACKED reports: %d", acked);
	cr_assert_eq(acked, 4, "exactly the four left are acked");
	cr_assert_eq(ackbox_loopback_count_id(lb, &one), 1, "a failed message is not sent again");
	cr_assert_eq(ackbox_loopback_count_id(lb, &batch[1]), 1, "nor a failed member");
	cr_assert_eq(ackbox_loopback_count_id(lb, &batch[2]), 1, "nor a deleted member");
	for (int i = 0; i < 6; i++)
		if (i != 1 && i != 2)
			cr_assert_eq(ackbox_loopback_count_id(lb, &batch[i]), 2,
			             "batch[%d]: sent, timed out, sent again", i);
	ackbox_destroy(ab);

	ab = api_open(NULL); /* what an operator sees afterwards */
	c = api_counts(ab);
	cr_assert(c.sending == 0 && c.retrying == 0 && c.failed == 2,
	          "sending/retrying/failed %llu/%llu/%llu, expected 0/0/2",
	          (unsigned long long)c.sending, (unsigned long long)c.retrying,
	          (unsigned long long)c.failed);
	cr_assert_eq(ackbox_show(ab, &one, copy_stored, &sc, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(sc.state, ACKBOX_MSG_FAILED);
	cr_assert_eq(sc.attempts, 0, "the relay's timeout did not count against it");
	cr_assert_str_eq(sc.last_error, "marked failed by an operator: poison");
	cr_assert_eq(ackbox_show(ab, &batch[1], copy_stored, &sc, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(sc.state, ACKBOX_MSG_FAILED);
	cr_assert_str_eq(sc.last_error, "marked failed by an operator");
	cr_assert_eq(ackbox_show(ab, &batch[2], copy_stored, &sc, err, sizeof(err)),
	             ACKBOX_ERR_NOT_FOUND, "the deleted member stays deleted");
	ackbox_destroy(ab);
}

/* ------------------------------------------------------------------ */
/* Threads: callbacks that call back, and close racing publishers       */
/* ------------------------------------------------------------------ */

/*
 * A store that logs inside every call, as a store logging a damaged row
 * inside a claim does: it wraps the store under test (SQLite's test VFS
 * idea). The core holds the store lock around each call; the log callback
 * must still run without it.
 */
typedef struct wrap_ctx {
	const ackbox_conf *conf;
	char real[]; /* the wrapped store's context */
} wrap_ctx;

static const ackbox_store_ops *wrapped;
static ackbox_store_ops wrap_ops;

#define WLOG(ctx, what)                                                                            \
	ackbox_store_log(((wrap_ctx *)(ctx))->conf, ACKBOX_LOG_WARN, "logwrap",                   \
	                 "inside %s, under the store lock", what)
#define REAL(ctx) ((void *)((wrap_ctx *)(ctx))->real)

static int w_open(void *ctx, const ackbox_url *u, const ackbox_conf *conf, ackbox_sync sync,
                  char *errstr, size_t errstr_size)
{
	ackbox_url real = *u;
	real.scheme = scheme; /* the wrapped store's own */
	((wrap_ctx *)ctx)->conf = conf;
	return wrapped->open(REAL(ctx), &real, conf, sync, errstr, errstr_size);
}
static void w_close(void *ctx)
{
	wrapped->close(REAL(ctx));
}
static int w_insert(void *ctx, const ackbox_store_rec *r, size_t n, char *e, size_t es)
{
	WLOG(ctx, "insert");
	return wrapped->insert(REAL(ctx), r, n, e, es);
}
static int w_claim(void *ctx, int64_t now, int64_t until, size_t limit, ackbox_store_row_cb cb,
                   void *opaque, char *e, size_t es)
{
	WLOG(ctx, "claim");
	return wrapped->claim(REAL(ctx), now, until, limit, cb, opaque, e, es);
}
static int w_apply(void *ctx, const ackbox_store_change *c, size_t n, char *e, size_t es)
{
	WLOG(ctx, "apply");
	return wrapped->apply(REAL(ctx), c, n, e, es);
}
static int w_recover(void *ctx, int64_t now, char *e, size_t es)
{
	WLOG(ctx, "recover");
	return wrapped->recover(REAL(ctx), now, e, es);
}
static int w_counts(void *ctx, ackbox_counts *out, char *e, size_t es)
{
	WLOG(ctx, "counts");
	return wrapped->counts(REAL(ctx), out, e, es);
}
static int w_list(void *ctx, int state, size_t limit, ackbox_store_row_cb cb, void *opaque,
                  char *e, size_t es)
{
	WLOG(ctx, "list");
	return wrapped->list(REAL(ctx), state, limit, cb, opaque, e, es);
}
static int w_get(void *ctx, const ackbox_id *id, ackbox_store_row_cb cb, void *opaque, char *e,
                 size_t es)
{
	WLOG(ctx, "get");
	return wrapped->get(REAL(ctx), id, cb, opaque, e, es);
}
static int w_requeue(void *ctx, const ackbox_id *ids, size_t n, int64_t now, char *e, size_t es)
{
	return wrapped->requeue(REAL(ctx), ids, n, now, e, es);
}
static int w_purge(void *ctx, int64_t older, char *e, size_t es)
{
	return wrapped->purge(REAL(ctx), older, e, es);
}

/* Registers "logwrap" around the store under test; its URL is url with
 * the scheme replaced. */
static void register_logwrap(char *wurl, size_t wurl_size)
{
	char err[256] = "";
	wrapped = ackbox_store_lookup(scheme);
	cr_assert(wrapped != NULL, "no store serves '%s'", scheme);
	memset(&wrap_ops, 0, sizeof(wrap_ops));
	wrap_ops.abi_version = ACKBOX_STORE_ABI_VERSION;
	wrap_ops.struct_size = sizeof(wrap_ops); /* optional slots left NULL */
	wrap_ops.scheme = "logwrap";
	wrap_ops.ctx_size = sizeof(wrap_ctx) + wrapped->ctx_size;
	wrap_ops.description = "logs inside every call (tests only)";
	wrap_ops.open = w_open;
	wrap_ops.close = w_close;
	wrap_ops.insert = w_insert;
	wrap_ops.claim = w_claim;
	wrap_ops.apply = w_apply;
	wrap_ops.recover = w_recover;
	wrap_ops.counts = w_counts;
	wrap_ops.list = w_list;
	wrap_ops.get = w_get;
	wrap_ops.requeue = w_requeue;
	wrap_ops.purge = w_purge;
	int rc = ackbox_store_register(&wrap_ops, err, sizeof(err));
	cr_assert(rc == 0 || rc == ACKBOX_ERR_INVALID, "register logwrap: %s", err);
	snprintf(wurl, wurl_size, "logwrap%s", url + strlen(scheme));
}

/* What the callbacks did, and the handle they call back into. */
static struct {
	_Atomic(ackbox *) ab; /* set by the test thread, read by callbacks on others */
	atomic_int log_calls, report_calls, policy_calls, failures, published;
	char failure[600];
} cb;

/* Calls into ackbox from a callback; records any failure. Each callback
 * publishes at most a few messages so the recursion (a publish logs, the
 * log publishes) stays bounded. */
static void call_back(const char *from, int publish)
{
	ackbox_counts c;
	char err[256] = "";
	int n = 0;
	ackbox *ab = atomic_load(&cb.ab);
	if (!ab)
		return;
	if (ackbox_counts_get(ab, &c, err, sizeof(err)) < 0 ||
	    ackbox_list(ab, -1, 5, count_cb, &n, err, sizeof(err)) < 0) {
		atomic_fetch_add(&cb.failures, 1);
		snprintf(cb.failure, sizeof(cb.failure), "%s: %s", from, err);
		return;
	}
	if (publish && atomic_fetch_add(&cb.published, 1) < 30) {
		ackbox_msg m = {.topic = "orders", .payload = from, .payload_len = strlen(from)};
		if (ackbox_publish(ab, &m, NULL, err, sizeof(err)) != 0) {
			atomic_fetch_add(&cb.failures, 1);
			snprintf(cb.failure, sizeof(cb.failure), "%s publish: %s", from, err);
		}
	}
}

static void cb_log(ackbox_log_level l, const char *component, const char *msg, void *o)
{
	static _Thread_local int depth; /* a publish from here logs again */
	(void)l;
	(void)msg;
	(void)o;
	if (strcmp(component, "logwrap") != 0 || depth)
		return;
	depth++;
	atomic_fetch_add(&cb.log_calls, 1);
	call_back("log callback", atomic_load(&cb.log_calls) % 50 == 1);
	depth--;
}

static void cb_report(const ackbox_report *r, void *o)
{
	(void)r;
	(void)o;
	atomic_fetch_add(&cb.report_calls, 1);
	call_back("report callback", 1);
}

static ackbox_policy cb_policy(const ackbox_report *r, void *o)
{
	(void)r;
	(void)o;
	atomic_fetch_add(&cb.policy_calls, 1);
	call_back("nack policy", 1);
	return ACKBOX_POLICY_DEFAULT;
}

TestSuite(threads, .init = setup, .fini = teardown, .timeout = 120);

/*
 * Log, report and nack-policy callbacks that call ackbox_counts_get,
 * ackbox_list and ackbox_publish all finish: no callback runs under an
 * ackbox lock (a deadlock would hold the flush past its bound). The store
 * logs inside every call, as on its damaged-row path.
 */
Test(threads, callbacks_may_call_back_into_ackbox)
{
	char wurl[4200], err[512] = "";
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab;
	register_logwrap(wurl, sizeof(wurl));
	TU_SET(c, "store.url", wurl);
	TU_SET(c, "transport.url", "loopback://cb");
	TU_SET(c, "log.level", "warn");
	TU_SET(c, "retry.timeout", "2s");
	TU_SET(c, "retry.backoff.initial", "10ms");
	TU_SET(c, "retry.backoff.max", "20ms");
	TU_SET(c, "store.poll_interval", "20ms");
	apply_extra_conf(c);
	ackbox_conf_set_log_cb(c, cb_log, NULL);
	ackbox_conf_set_report_cb(c, cb_report, NULL);
	ackbox_conf_set_nack_policy(c, cb_policy, NULL);
	ackbox_loopback_script(ackbox_loopback_get("cb"), ACKBOX_LB_NACK, 5, 0);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	atomic_store(&cb.ab, ab);
	for (int i = 0; i < 20; i++) {
		ackbox_msg m = {.topic = "orders", .payload = "x", .payload_len = 1};
		cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	}
	cr_assert_eq(ackbox_flush(ab, 30000), 0, "a callback blocked the relay or the store");
	/* the reports flush delivered last may have published more (30 in all):
	 * once they have, one more flush covers them */
	TU_WAIT_UNTIL((ackbox_poll(ab, 10), atomic_load(&cb.published) >= 30), 30000);
	atomic_store(&cb.ab, NULL);
	cr_assert_eq(ackbox_flush(ab, 30000), 0, "a callback blocked the relay or the store");
	cr_assert_eq(atomic_load(&cb.failures), 0, "%s", cb.failure);
	cr_assert_geq(atomic_load(&cb.log_calls), 5, "the store's log lines reached the callback");
	cr_assert_geq(atomic_load(&cb.policy_calls), 5, "the nack policy ran for the 5 nacks");
	cr_assert_geq(atomic_load(&cb.report_calls), 20);
	cr_assert_geq(atomic_load(&cb.published), 20, "callbacks published too");
	ackbox_counts k = api_counts(ab);
	cr_assert_eq(k.sending + k.retrying + k.failed, 0, "everything, callbacks' too, acked");
	ackbox_destroy(ab);
}

/* 8 threads publish until ackbox_close answers them CLOSED. */
enum { RACERS = 8, RACER_MAX = 4000 };
typedef struct racer {
	ackbox *ab;
	ackbox_id ok[RACER_MAX];
	int nok, other_rc;
	char other_err[256];
	pthread_t th;
} racer;

static atomic_int raced_total;

static void *racer_main(void *arg)
{
	racer *r = arg;
	char err[256] = "";
	while (r->nok < RACER_MAX) {
		ackbox_msg m = {.topic = "orders", .payload = "race", .payload_len = 4};
		int rc = ackbox_publish(r->ab, &m, &r->ok[r->nok], err, sizeof(err));
		if (rc == ACKBOX_ERR_CLOSED)
			return NULL;
		if (rc != 0) {
			r->other_rc = rc;
			snprintf(r->other_err, sizeof(r->other_err), "%s", err);
			return NULL;
		}
		r->nok++;
		atomic_fetch_add(&raced_total, 1);
	}
	return NULL;
}

/*
 * The destroy contract: publishers racing ackbox_close get success (the
 * message is stored, and the next process sends it) or ACKBOX_ERR_CLOSED,
 * never a crash and never a success that is then lost. With a transport,
 * a message that succeeded is in the store or reached the broker.
 */
static void close_races_publishers(const char *broker)
{
	static racer rs[RACERS];
	char err[512] = "";
	ackbox *ab = api_open(broker);
	ackbox_loopback *lb = broker ? ackbox_loopback_get(broker) : NULL;
	int total = 0;
	atomic_store(&raced_total, 0);
	for (int i = 0; i < RACERS; i++) {
		memset(&rs[i], 0, sizeof(rs[i]));
		rs[i].ab = ab;
		cr_assert_eq(pthread_create(&rs[i].th, NULL, racer_main, &rs[i]), 0);
	}
	cr_assert(TU_WAIT_UNTIL(atomic_load(&raced_total) >= 200, 30000), "publishers stalled");
	ackbox_close(ab);
	for (int i = 0; i < RACERS; i++) {
		pthread_join(rs[i].th, NULL);
		cr_assert_eq(rs[i].other_rc, 0, "racer %d got %s: %s", i,
		             ackbox_strerror(rs[i].other_rc), rs[i].other_err);
		total += rs[i].nok;
	}
	cr_assert_eq(ackbox_publish(ab, &(ackbox_msg){.topic = "t", .payload_len = 0}, NULL, err,
	                            sizeof(err)),
	             ACKBOX_ERR_CLOSED, "after close: CLOSED, the handle still valid");
	ackbox_destroy(ab);

	ab = api_open(NULL);
	for (int i = 0; i < RACERS; i++)
		for (int k = 0; k < rs[i].nok; k++) {
			int n = 0;
			int rc = ackbox_show(ab, &rs[i].ok[k], count_cb, &n, err, sizeof(err));
			if (rc == ACKBOX_ERR_NOT_FOUND && lb)
				cr_assert_geq(ackbox_loopback_count_id(lb, &rs[i].ok[k]), 1,
				              "racer %d message %d: neither stored nor delivered", i, k);
			else
				cr_assert_eq(rc, 0, "racer %d message %d: %s", i, k, err);
		}
	cr_log_info("%d publishes succeeded before close, every one kept (%s)", total,
	            broker ? "relay running" : "no relay");
	ackbox_destroy(ab);
}

Test(threads, close_racing_eight_publishers_loses_nothing)
{
	close_races_publishers(NULL);
}

Test(threads, close_racing_eight_publishers_and_a_relay_loses_nothing)
{
	close_races_publishers("race");
}

/* ------------------------------------------------------------------ */
/* Per-key order (delivery.order=key): the store's claim rule           */
/* ------------------------------------------------------------------ */

static void order_setup(void)
{
	open_ordered = 1;
	store_setup();
}

static void order_teardown(void)
{
	store_teardown();
	open_ordered = 0;
}

TestSuite(order, .init = order_setup, .fini = order_teardown, .timeout = 120);

/* Record i with key `key` (NULL: none). */
static ackbox_store_rec rec_key(int i, int64_t created, int64_t due, const char *key)
{
	ackbox_store_rec r = rec(i, created, due);
	if (key) {
		r.key = key;
		r.key_len = strlen(key);
	}
	return r;
}

/* Whether the claim returned id. */
static int claimed(const crows *c, const ackbox_id *id)
{
	for (size_t i = 0; i < c->n; i++)
		if (id_eq(&c->v[i].id, id))
			return 1;
	return 0;
}

static int blocked_cb(const ackbox_store_blocked *b, void *opaque)
{
	crows *c = opaque; /* reuses crow: key, failed id, waiting in attempts */
	ackbox_store_row r;
	memset(&r, 0, sizeof(r));
	r.id = b->failed_id;
	r.topic = "";
	r.key = b->key;
	r.key_len = b->key_len;
	r.attempts = (int)b->waiting;
	r.payload = "";
	return collect(&r, c);
}

static int s_blocked(crows *out)
{
	char err[512] = "";
	int rc;
	cr_assert(S.ops->struct_size >= offsetof(ackbox_store_ops, blocked_keys) + sizeof(void *) &&
	              S.ops->blocked_keys,
	          "the %s store has no blocked_keys: it cannot keep per-key order", scheme);
	rc = S.ops->blocked_keys(S.ctx, 0, blocked_cb, out, err, sizeof(err));
	cr_assert_geq(rc, 0, "blocked_keys: %s (%s)", err, ackbox_strerror(rc));
	return rc;
}

/* Rows 0..2 key "A", 3..4 key "B", 5..6 no key; all due at now. */
static void insert_keyed(int64_t now)
{
	ackbox_store_rec recs[7];
	for (int i = 0; i < 7; i++)
		recs[i] = rec_key(i, now + i, now, i < 3 ? "A" : i < 5 ? "B" : NULL);
	s_insert(recs, 7);
}

Test(order, claim_hands_out_only_the_oldest_of_each_key)
{
	int64_t now = ackbox_wall_ms();
	crows c = {0};
	insert_keyed(now);
	cr_assert_eq(s_claim(now, now + 60000, 100, &c), 4,
	             "the oldest of A, the oldest of B and both rows without a key");
	cr_assert(claimed(&c, &ids[0]) && claimed(&c, &ids[3]) && claimed(&c, &ids[5]) &&
	          claimed(&c, &ids[6]));
	uint64_t la = lease_of(&c, &ids[0]), lb = lease_of(&c, &ids[3]);
	crows_free(&c);
	cr_assert_eq(s_claim(now + 1, now + 60000, 100, NULL), 0,
	             "a leased oldest row holds back the rest of its key");
	ackbox_store_change d = change(ACKBOX_CHANGE_DELETE, &ids[0], la);
	s_apply(&d, 1);
	cr_assert_eq(s_claim(now + 2, now + 60000, 100, &c), 1, "A's next once the oldest is gone");
	cr_assert(claimed(&c, &ids[1]));
	crows_free(&c);
	d = change(ACKBOX_CHANGE_DELETE, &ids[3], lb);
	s_apply(&d, 1);
	cr_assert_eq(s_claim(now + 3, now + 60000, 100, &c), 1);
	cr_assert(claimed(&c, &ids[4]), "B's next");
	crows_free(&c);
}

Test(order, a_retry_keeps_its_key_until_it_is_due_again)
{
	int64_t now = ackbox_wall_ms();
	crows c = {0};
	insert_keyed(now);
	cr_assert_eq(s_claim(now, now + 60000, 100, &c), 4);
	ackbox_store_change r = change(ACKBOX_CHANGE_RETRY, &ids[0], lease_of(&c, &ids[0]));
	crows_free(&c);
	r.attempts = 1;
	r.due_ms = now + 5000;
	r.last_error = "nacked";
	s_apply(&r, 1);
	cr_assert_eq(s_claim(now + 100, now + 60000, 100, NULL), 0,
	             "A's later rows wait behind a RETRYING oldest row");
	cr_assert_eq(s_claim(now + 5000, now + 60000, 100, &c), 1);
	cr_assert(claimed(&c, &ids[0]), "the same row again, not a later one");
	crows_free(&c);
	cr_assert_eq(s_claim(now + 5001, now + 60000, 100, NULL), 0);
	/* a released lease: due at once, still the key's only candidate */
	ackbox_store_change rel = change(ACKBOX_CHANGE_RELEASE, &ids[0], 0);
	cr_assert_eq(s_claim(now + 70000, now + 130000, 100, &c), 4,
	             "leases ran out: A's oldest, B's oldest, both without a key");
	rel.lease = lease_of(&c, &ids[0]);
	crows_free(&c);
	rel.due_ms = now + 70001;
	s_apply(&rel, 1);
	cr_assert_eq(s_claim(now + 70001, now + 130000, 100, &c), 1);
	cr_assert(claimed(&c, &ids[0]));
	crows_free(&c);
}

Test(order, a_failed_oldest_row_blocks_only_its_key_until_requeue)
{
	int64_t now = ackbox_wall_ms();
	char err[512] = "";
	crows c = {0}, b = {0};
	insert_keyed(now);
	cr_assert_eq(s_blocked(&b), 0, "no key is blocked at first");
	crows_free(&b);
	cr_assert_eq(s_claim(now, now + 60000, 100, &c), 4);
	ackbox_store_change f = change(ACKBOX_CHANGE_FAIL, &ids[0], lease_of(&c, &ids[0]));
	ackbox_store_change d = change(ACKBOX_CHANGE_DELETE, &ids[3], lease_of(&c, &ids[3]));
	crows_free(&c);
	f.attempts = 3;
	f.last_error = "nacked";
	s_apply(&f, 1);
	s_apply(&d, 1);
	cr_assert_eq(s_claim(now + 1, now + 60000, 100, &c), 1, "B goes on, A is held");
	cr_assert(claimed(&c, &ids[4]));
	crows_free(&c);
	cr_assert_eq(s_blocked(&b), 1, "A is blocked");
	cr_assert(b.v[0].key_len == 1 && b.v[0].key[0] == 'A');
	cr_assert(id_eq(&b.v[0].id, &ids[0]), "by its FAILED oldest row");
	cr_assert_eq(b.v[0].attempts, 2, "with two messages waiting behind it");
	crows_free(&b);
	/* an operator requeues it: the oldest goes again first */
	cr_assert_eq(S.ops->requeue(S.ctx, &ids[0], 1, now + 2, err, sizeof(err)), 1, "%s", err);
	cr_assert_eq(s_blocked(&b), 0);
	crows_free(&b);
	cr_assert_eq(s_claim(now + 2, now + 60000, 100, &c), 1);
	cr_assert(claimed(&c, &ids[0]), "the requeued row, not a later one of its key");
	f.lease = lease_of(&c, &ids[0]);
	crows_free(&c);
	s_apply(&f, 1);
	/* purged: the key goes on with its next row */
	cr_assert_eq(S.ops->purge(S.ctx, INT64_MAX, err, sizeof(err)), 1, "%s", err);
	cr_assert_eq(s_blocked(&b), 0);
	crows_free(&b);
	cr_assert_eq(s_claim(now + 3, now + 60000, 100, &c), 1);
	cr_assert(claimed(&c, &ids[1]), "A's next row once the FAILED one is purged");
	crows_free(&c);
}

Test(order, an_operators_fail_or_delete_of_the_oldest_row_acts_on_its_key)
{
	int64_t now = ackbox_wall_ms();
	char err[512] = "";
	crows c = {0}, b = {0};
	need_force(&S);
	insert_keyed(now);
	cr_assert_eq(s_claim(now, now + 60000, 100, &c), 4);
	crows_free(&c);
	s_force(ACKBOX_CHANGE_FAIL, &ids[0], "stuck", 0);
	cr_assert_eq(s_blocked(&b), 1, "ackbox_fail of a key's oldest row blocks the key");
	crows_free(&b);
	cr_assert_eq(s_claim(now + 70000, now + 130000, 100, &c), 3, "B's, and the two keyless");
	cr_assert(!claimed(&c, &ids[1]));
	crows_free(&c);
	s_force(ACKBOX_CHANGE_DELETE, &ids[0], NULL, 0);
	cr_assert_eq(s_blocked(&b), 0);
	crows_free(&b);
	cr_assert_eq(s_claim(now + 70001, now + 130000, 100, &c), 1);
	cr_assert(claimed(&c, &ids[1]), "deleting the oldest row lets the next go");
	crows_free(&c);
	/* deleting a row that is not the oldest changes nothing for the key */
	s_force(ACKBOX_CHANGE_DELETE, &ids[2], NULL, 0);
	cr_assert_eq(s_claim(now + 70002, now + 130000, 100, NULL), 0);
	(void)err;
}

Test(order, a_key_is_its_bytes_whatever_the_topic)
{
	int64_t now = ackbox_wall_ms();
	ackbox_store_rec recs[4];
	crows c = {0};
	static const char k0[] = {'K', 0, 'x'};
	recs[0] = rec_key(0, now, now, "K");
	recs[0].topic = "orders.created";
	recs[1] = rec_key(1, now + 1, now, "K");
	recs[1].topic = "orders.cancelled";
	recs[2] = rec(2, now + 2, now);
	recs[2].key = k0;
	recs[2].key_len = sizeof(k0); /* "K\0x": another key */
	recs[3] = rec(3, now + 3, now);
	recs[3].key = k0;
	recs[3].key_len = sizeof(k0);
	s_insert(recs, 4);
	cr_assert_eq(s_claim(now, now + 60000, 100, &c), 2);
	cr_assert(claimed(&c, &ids[0]), "one key across topics");
	cr_assert(claimed(&c, &ids[2]), "a key with a NUL byte is its own key");
	crows_free(&c);
}

Test(order, many_keys_deep_backlog_one_claim_per_key_head)
{
	/* 60 rows over 3 keys inserted in 3 transactions (a relay's claims
	 * follow the heads, never the depth of a key's backlog) */
	int64_t now = ackbox_wall_ms();
	ackbox_store_rec recs[20];
	crows c = {0};
	for (int t = 0; t < 3; t++) {
		for (int i = 0; i < 20; i++) {
			int k = t * 20 + i;
			recs[i] = rec_key(k, now + k, now, (const char *[]){"a", "b", "c"}[k % 3]);
		}
		s_insert(recs, 20);
	}
	for (int round = 0; round < 20; round++) {
		cr_assert_eq(s_claim(now + round, now + 60000, 100, &c), 3, "round %d", round);
		for (int k = 0; k < 3; k++)
			cr_assert(claimed(&c, &ids[round * 3 + k]),
			          "round %d hands out row %d, the next of key %c", round, round * 3 + k,
			          'a' + k);
		ackbox_store_change d[3];
		for (int k = 0; k < 3; k++)
			d[k] = change(ACKBOX_CHANGE_DELETE, &ids[round * 3 + k],
			              lease_of(&c, &ids[round * 3 + k]));
		crows_free(&c);
		s_apply(d, 3);
	}
	cr_assert_eq(s_claim(now + 100, now + 60000, 100, NULL), 0);
}

Test(order, rows_written_unordered_are_claimed_in_key_order_after_reopen)
{
	/* A store used without delivery.order (SQLite packs the batch) is
	 * reopened with it: its backlog is sent in key order. */
	int64_t now = ackbox_wall_ms();
	ackbox_store_rec recs[8];
	crows c = {0};
	st_close(&S);
	open_ordered = 0;
	st_open(&S);
	for (int i = 0; i < 8; i++)
		recs[i] = rec_key(i, now + i, now, i % 2 ? "odd" : "even");
	s_insert(recs, 8);
	st_close(&S);
	open_ordered = 1;
	st_open(&S);
	cr_assert_eq(S.ops->recover(S.ctx, now, NULL, 0), 0);
	for (int round = 0; round < 4; round++) {
		cr_assert_eq(s_claim(now + round, now + 60000, 100, &c), 2, "round %d", round);
		cr_assert(claimed(&c, &ids[2 * round]) && claimed(&c, &ids[2 * round + 1]),
		          "round %d: rows %d and %d", round, 2 * round, 2 * round + 1);
		ackbox_store_change d[2] = {
		    change(ACKBOX_CHANGE_DELETE, &ids[2 * round], lease_of(&c, &ids[2 * round])),
		    change(ACKBOX_CHANGE_DELETE, &ids[2 * round + 1],
		           lease_of(&c, &ids[2 * round + 1]))};
		crows_free(&c);
		s_apply(d, 2);
	}
	ackbox_counts n = s_counts();
	cr_assert_eq(n.sending + n.retrying + n.failed, 0);
}

/* ------------------------------------------------------------------ */
/* Per-key order through the relay (loopback), on every store           */
/* ------------------------------------------------------------------ */

#include "ordercheck.h"

static ackbox *api_open_ordered_t(const char *broker, int max_attempts, const char *timeout);

static ackbox *api_open_ordered(const char *broker, int max_attempts)
{
	return api_open_ordered_t(broker, max_attempts, "1s");
}

static ackbox *api_open_ordered_t(const char *broker, int max_attempts, const char *timeout)
{
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab = NULL;
	char lb[128], err[512] = "", att[16];
	int rc;
	snprintf(lb, sizeof(lb), "loopback://%s", broker);
	snprintf(att, sizeof(att), "%d", max_attempts);
	TU_SET(c, "store.url", url);
	TU_SET(c, "log.level", "error");
	TU_SET(c, "transport.url", lb);
	TU_SET(c, "delivery.order", "key");
	TU_SET(c, "retry.timeout", timeout);
	TU_SET(c, "retry.max_attempts", att);
	TU_SET(c, "retry.backoff.initial", "20ms");
	TU_SET(c, "retry.backoff.max", "100ms");
	TU_SET(c, "store.poll_interval", "50ms");
	ackbox_conf_set_report_cb(c, on_report, NULL);
	apply_extra_conf(c);
	rc = ackbox_new(&ab, c, err, sizeof(err));
	if (rc)
		ackbox_conf_destroy(c);
	cr_assert_eq(rc, 0, "ackbox_new with store.url=%s: %s (%s)", url, err, ackbox_strerror(rc));
	return ab;
}

/* Publishes seq from..to-1 of each of nkeys keys, key by key interleaved
 * (k0:0, k1:0, ..., k0:1, ...), in batches of `batch`. Returns the ids in
 * publish order when ids is not NULL. */
static void publish_keyed(ackbox *ab, int nkeys, int from, int to, int batch, const char *topic)
{
	ackbox_msg m[64];
	static char keys[64][16], payloads[64][32];
	char err[512] = "";
	int n = 0;
	cr_assert_leq(batch, 64);
	for (int seq = from; seq < to; seq++) {
		for (int k = 0; k < nkeys; k++) {
			tu_order_texts(k, seq, keys[n], sizeof(keys[n]), payloads[n],
			               sizeof(payloads[n]));
			memset(&m[n], 0, sizeof(m[n]));
			m[n].topic = topic;
			m[n].key = keys[n];
			m[n].key_len = strlen(keys[n]);
			m[n].payload = payloads[n];
			m[n].payload_len = strlen(payloads[n]);
			if (++n == batch) {
				cr_assert_eq(ackbox_publish_batch(ab, m, (size_t)n, NULL, err, sizeof(err)),
				             0, "publish: %s", err);
				n = 0;
			}
		}
	}
	if (n)
		cr_assert_eq(ackbox_publish_batch(ab, m, (size_t)n, NULL, err, sizeof(err)), 0,
		             "publish: %s", err);
}

/* Feeds what the loopback broker kept, in arrival order, to the checker. */
static void loopback_order(ackbox_loopback *lb, tu_order *o)
{
	size_t n = ackbox_loopback_received(lb);
	for (size_t i = 0; i < n; i++) {
		char payload[64];
		size_t len = sizeof(payload);
		cr_assert_eq(ackbox_loopback_message(lb, i, NULL, NULL, 0, payload, &len, NULL), 0);
		if (ackbox_loopback_accepted(lb, i) == 1)
			tu_order_see(o, payload, len);
	}
}

static int blocked_count(const ackbox_blocked_key *b, void *opaque)
{
	ackbox_blocked_key *out = opaque;
	*out = *b;
	out->key = NULL; /* valid during the callback only */
	return 0;
}

TestSuite(order_api, .init = setup, .fini = teardown, .timeout = 240);

Test(order_api, nacks_timeouts_and_a_disconnect_keep_each_keys_first_deliveries_in_order)
{
	ackbox_loopback *lb = ackbox_loopback_get("ordmix");
	tu_order o;
	ackbox *ab;
	/* every sixth send nacked, every seventh kept without a confirm (a
	 * timeout), some in doubt; then a broker outage in the middle */
	for (int i = 0; i < 12; i++) {
		ackbox_loopback_script(lb, ACKBOX_LB_CONFIRM, 5, 0);
		ackbox_loopback_script(lb, ACKBOX_LB_NACK, 1, 0);
		ackbox_loopback_script(lb, ACKBOX_LB_CONFIRM, 3, 0);
		ackbox_loopback_script(lb, i % 3 ? ACKBOX_LB_IN_DOUBT : ACKBOX_LB_DROP, 1, 0);
	}
	ab = api_open_ordered("ordmix", 1000);
	publish_keyed(ab, 8, 0, 20, 16, "orders");
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_received(lb) >= 60, 30000), "received %zu",
	          ackbox_loopback_received(lb));
	ackbox_loopback_set_up(lb, 0);
	cr_assert(TU_WAIT_UNTIL(!ackbox_connected(ab), 10000), "the relay saw the outage");
	publish_keyed(ab, 8, 20, 30, 8, "orders");
	ackbox_loopback_set_up(lb, 1);
	publish_keyed(ab, 8, 30, 40, 1, "orders");
	cr_assert_eq(ackbox_flush(ab, 120000), 0, "every message confirmed");
	tu_order_init(&o, 8);
	loopback_order(lb, &o);
	cr_assert_eq(o.violations, 0, "%ld first deliveries out of key order; the first: %s",
	             o.violations, o.first_violation);
	cr_assert_eq(tu_order_in_order(&o), 8 * 40, "every message arrived");
	cr_assert_gt(ackbox_loopback_received(lb), 8 * 40, "the faults did cause resends");
	ackbox_destroy(ab);
}

Test(order_api, a_failed_message_holds_back_only_its_key_until_requeued)
{
	ackbox_loopback *lb = ackbox_loopback_get("ordfail");
	ackbox_blocked_key bk;
	char err[512] = "";
	tu_order o;
	ackbox_id first;
	ackbox *ab;
	ackbox_msg m = {0};

	ackbox_loopback_script(lb, ACKBOX_LB_NACK, 1, 0); /* k0:0, its only attempt */
	ab = api_open_ordered("ordfail", 1);
	m.topic = "orders";
	m.key = "k0";
	m.key_len = 2;
	m.payload = "k0:0";
	m.payload_len = 4;
	cr_assert_eq(ackbox_publish(ab, &m, &first, err, sizeof(err)), 0, "%s", err);
	cr_assert(TU_WAIT_UNTIL(api_counts(ab).failed == 1, 10000), "k0:0 FAILED");
	for (int k = 1; k < 3; k++) {
		char key[8], payload[16];
		tu_order_texts(k, 0, key, sizeof(key), payload, sizeof(payload));
		m.key = key;
		m.key_len = strlen(key);
		m.payload = payload;
		m.payload_len = strlen(payload);
		cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	}
	publish_keyed(ab, 3, 1, 6, 3, "orders"); /* k0..k2, seq 1..5 */
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_received(lb) >= 1 + 2 * 6, 30000),
	          "k1 and k2 flow: received %zu", ackbox_loopback_received(lb));
	cr_assert_eq(ackbox_flush(ab, 300), ACKBOX_ERR_TIMEOUT, "k0 is held back");
	cr_assert_eq(ackbox_loopback_received(lb), 1 + 2 * 6, "nothing of k0 after its FAILED one");
	ackbox_counts c = api_counts(ab);
	cr_assert_eq(c.failed, 1);
	cr_assert_eq(c.sending + c.retrying, 5, "k0:1..5 wait");
	memset(&bk, 0, sizeof(bk));
	cr_assert_eq(ackbox_blocked_keys(ab, 0, blocked_count, &bk, err, sizeof(err)), 1, "%s", err);
	cr_assert(memcmp(&bk.failed_id, &first, sizeof(first)) == 0, "blocked by k0:0");
	cr_assert_eq(bk.waiting, 5);
	cr_assert_eq(ackbox_requeue(ab, &first, 1, err, sizeof(err)), 1, "%s", err);
	cr_assert_eq(ackbox_flush(ab, 60000), 0, "k0 goes on after the requeue");
	cr_assert_eq(ackbox_blocked_keys(ab, 0, blocked_count, &bk, err, sizeof(err)), 0, "%s", err);
	tu_order_init(&o, 3);
	loopback_order(lb, &o);
	cr_assert_eq(o.violations, 0, "%s", o.first_violation);
	ackbox_destroy(ab);
}

static void publish_text(ackbox *ab, const char *topic, const char *key, const char *payload,
                         ackbox_id *id)
{
	ackbox_msg m = {0};
	char err[512] = "";
	m.topic = topic;
	m.key = key;
	m.key_len = strlen(key);
	m.payload = payload;
	m.payload_len = strlen(payload);
	cr_assert_eq(ackbox_publish(ab, &m, id, err, sizeof(err)), 0, "publish %s: %s", payload,
	             err);
}

Test(order_api, a_poison_message_blocks_its_key_while_the_others_flow)
{
	ackbox_loopback *lb = ackbox_loopback_get("ordpoison");
	ackbox_blocked_key bk;
	char err[512] = "";
	ackbox_id poison;
	tu_order o;
	ackbox *ab;

	ackbox_loopback_set_poison(lb, "poison");
	ab = api_open_ordered("ordpoison", 2);
	publish_keyed(ab, 4, 0, 1, 4, "orders");
	publish_text(ab, "poison", "k0", "poison", &poison); /* drops the connection */
	publish_keyed(ab, 4, 1, 10, 4, "orders");
	cr_assert(TU_WAIT_UNTIL(api_counts(ab).failed == 1, 60000), "the poison message FAILED");
	cr_assert_eq(ackbox_blocked_keys(ab, 0, blocked_count, &bk, err, sizeof(err)), 1, "%s", err);
	cr_assert(memcmp(&bk.failed_id, &poison, sizeof(poison)) == 0);
	cr_assert_eq(ackbox_purge_failed(ab, INT64_MAX, err, sizeof(err)), 1, "%s", err);
	cr_assert_eq(ackbox_flush(ab, 60000), 0, "k0 goes on once the poison message is purged");
	tu_order_init(&o, 4);
	loopback_order(lb, &o);
	cr_assert_eq(o.violations, 0, "%s", o.first_violation);
	ackbox_destroy(ab);
}

Test(order_api, a_message_deleted_in_flight_holds_its_key_until_its_attempt_ends)
{
	/* The store lets k0:1 go as soon as k0:0 is deleted; the relay still
	 * has k0:0's attempt outstanding and must not send k0:1 before it is
	 * answered or timed out (retry.timeout 3 s here). */
	ackbox_loopback *lb = ackbox_loopback_get("ordguard");
	char err[512] = "";
	ackbox_id first, second;
	ackbox *ab;

	ackbox_loopback_script(lb, ACKBOX_LB_DROP, 1, 0); /* kept, never confirmed */
	ab = api_open_ordered_t("ordguard", 5, "3s");
	publish_text(ab, "orders", "k0", "k0:0", &first);
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_received(lb) == 1, 10000));
	cr_assert_eq(ackbox_purge_ids(ab, &first, 1, err, sizeof(err)), 1, "%s", err);
	publish_text(ab, "orders", "k0", "k0:1", &second);
	cr_assert(!TU_WAIT_UNTIL(ackbox_loopback_received(lb) > 1, 500),
	          "k0:1 went while k0:0's attempt was still outstanding");
	cr_assert(TU_WAIT_UNTIL(ackbox_loopback_count_id(lb, &second) == 1, 15000),
	          "k0:1 goes once k0:0's attempt timed out");
	cr_assert_eq(ackbox_flush(ab, 30000), 0);
	ackbox_destroy(ab);
}

typedef struct order_racer {
	ackbox *ab;
	int thread;
} order_racer;

static void *order_race_publish(void *arg)
{
	order_racer *r = arg;
	char err[512] = "", key[8], payload[32];
	for (int i = 0; i < 40; i++) {
		ackbox_msg m = {0};
		snprintf(key, sizeof(key), "k%d", i % 4);
		snprintf(payload, sizeof(payload), "t%d:%d", r->thread, i);
		m.topic = "orders";
		m.key = key;
		m.key_len = strlen(key);
		m.payload = payload;
		m.payload_len = strlen(payload);
		if (ackbox_publish(r->ab, &m, NULL, err, sizeof(err)) != 0)
			return (void *)1;
	}
	return NULL;
}

Test(order_api, racing_publishers_first_deliveries_follow_id_order_per_key)
{
	/* Four threads publish to the same four keys at once: per key, the
	 * first deliveries come in id order (the ids are made in commit order). */
	ackbox_loopback *lb = ackbox_loopback_get("ordrace");
	pthread_t th[4];
	order_racer rs[4];
	ackbox_id last[4];
	unsigned char seen_any[4] = {0};
	ackbox *ab;

	for (int i = 0; i < 10; i++) {
		ackbox_loopback_script(lb, ACKBOX_LB_CONFIRM, 7, 0);
		ackbox_loopback_script(lb, ACKBOX_LB_NACK, 1, 0);
	}
	ab = api_open_ordered("ordrace", 1000);
	for (int t = 0; t < 4; t++) {
		rs[t].ab = ab;
		rs[t].thread = t;
		cr_assert_eq(pthread_create(&th[t], NULL, order_race_publish, &rs[t]), 0);
	}
	for (int t = 0; t < 4; t++) {
		void *ret;
		pthread_join(th[t], &ret);
		cr_assert_null(ret, "a publisher failed");
	}
	cr_assert_eq(ackbox_flush(ab, 60000), 0);
	size_t n = ackbox_loopback_received(lb), firsts = 0;
	for (size_t i = 0; i < n; i++) {
		char payload[32];
		size_t len = sizeof(payload) - 1;
		ackbox_id id;
		int t, seq;
		cr_assert_eq(ackbox_loopback_message(lb, i, &id, NULL, 0, payload, &len, NULL), 0);
		payload[len < sizeof(payload) ? len : sizeof(payload) - 1] = '\0';
		if (ackbox_loopback_accepted(lb, i) != 1)
			continue;
		cr_assert_eq(sscanf(payload, "t%d:%d", &t, &seq), 2, "payload %s", payload);
		int k = seq % 4, cmp = seen_any[k] ? memcmp(&id, &last[k], sizeof(id)) : 1;
		if (cmp <= 0)
			continue; /* a duplicate of one seen before (or its nacked try) */
		last[k] = id;
		seen_any[k] = 1;
		firsts++;
	}
	cr_assert_eq(firsts, 160, "every message's first delivery came after the one before it "
	                          "in its key (in id order): %zu of 160", firsts);
	ackbox_destroy(ab);
}

/* ------------------------------------------------------------------ */
/* The backlog bound: store.max_messages, store.max_bytes               */
/* ------------------------------------------------------------------ */

static int usage_slot(const store *s)
{
	return s->ops->struct_size >= offsetof(ackbox_store_ops, usage) + sizeof(void *) &&
	       s->ops->usage != NULL;
}

static void s_usage(uint64_t *msgs, uint64_t *bytes)
{
	char err[512] = "";
	*msgs = *bytes = UINT64_MAX;
	int rc = S.ops->usage(S.ctx, msgs, bytes, err, sizeof(err));
	cr_assert_eq(rc, 0, "usage: %s (%s)", err, ackbox_strerror(rc));
}

/*
 * usage: every state counts (FAILED too), and the payload bytes; a store may
 * count bytes high (SQLite: a packed batch whole until its row goes), never
 * low; acks, purge and an operator's delete give the room back.
 */
Test(store, usage_counts_every_state_and_the_payload_bytes)
{
	static char big[6][1000];
	ackbox_store_rec recs[6];
	int64_t now = ackbox_wall_ms();
	uint64_t m, b, b6 = 0, before;
	crows a = {0};

	cr_assert(usage_slot(&S), "the %s store has no usage op: store.max_bytes cannot be used "
	                          "with it and store.max_messages falls back to counts",
	          scheme);
	s_usage(&m, &b);
	cr_assert(m == 0 && b == 0, "an empty store: %llu messages, %llu bytes",
	          (unsigned long long)m, (unsigned long long)b);
	for (int i = 0; i < 6; i++) {
		recs[i] = rec(10 + i, now, now);
		memset(big[i], 'a' + i, sizeof(big[i]));
		recs[i].payload = big[i];
		recs[i].payload_len = sizeof(big[i]);
		b6 += sizeof(big[i]);
	}
	s_insert(recs, 6); /* one transaction: a packed batch in SQLite */
	insert_plain(3, now, now);
	uint64_t small = strlen(payloads[0]) + strlen(payloads[1]) + strlen(payloads[2]);
	s_usage(&m, &b);
	cr_assert_eq(m, 9, "9 messages stored, usage says %llu", (unsigned long long)m);
	cr_assert_geq(b, b6 + small, "bytes counted low: %llu < %llu", (unsigned long long)b,
	              (unsigned long long)(b6 + small));
	cr_assert_leq(b, b6 + small + 4096, "bytes far too high: %llu", (unsigned long long)b);

	/* FAILED and RETRYING still count */
	cr_assert_eq(s_claim(now, now + 600000, 20, &a), 9);
	ackbox_store_change ch[2] = {change(ACKBOX_CHANGE_FAIL, &ids[0], lease_of(&a, &ids[0])),
	                             change(ACKBOX_CHANGE_RETRY, &ids[1], lease_of(&a, &ids[1]))};
	ch[0].attempts = 3;
	ch[1].attempts = 1;
	ch[1].due_ms = now + 600000;
	s_apply(ch, 2);
	s_usage(&m, &before);
	cr_assert_eq(m, 9, "FAILED and RETRYING messages count: %llu", (unsigned long long)m);

	/* an ack of a row, a purge of a FAILED one, an operator's delete */
	ackbox_store_change del = change(ACKBOX_CHANGE_DELETE, &ids[2], lease_of(&a, &ids[2]));
	s_apply(&del, 1);
	s_usage(&m, &b);
	cr_assert_eq(m, 8);
	cr_assert_eq(b, before - strlen(payloads[2]), "an ack gives its bytes back");
	char err[512] = "";
	cr_assert_eq(S.ops->purge(S.ctx, now + 86400000, err, sizeof(err)), 1, "%s", err);
	s_usage(&m, &b);
	cr_assert_eq(m, 7);
	cr_assert_eq(b, before - strlen(payloads[2]) - strlen(payloads[0]), "purge gives them back");
	s_force(ACKBOX_CHANGE_DELETE, &ids[1], NULL, 0);
	s_usage(&m, &b);
	cr_assert_eq(m, 6);
	/* the six acked one by one: nothing is left */
	for (int i = 0; i < 6; i++) {
		del = change(ACKBOX_CHANGE_DELETE, &ids[10 + i], lease_of(&a, &ids[10 + i]));
		s_apply(&del, 1);
		s_usage(&m, &b);
		cr_assert_eq(m, (uint64_t)(5 - i), "after %d acks of the six: %llu", i + 1,
		             (unsigned long long)m);
	}
	cr_assert_eq(b, 0, "an empty store holds %llu bytes", (unsigned long long)b);
	crows_free(&a);
}

/* Log lines saying a publisher waits for room (store.full_policy=block). */
static atomic_int waits_logged;

static void on_bound_log(ackbox_log_level level, const char *component, const char *msg, void *o)
{
	(void)level;
	(void)component;
	(void)o;
	if (strstr(msg, "waiting up to"))
		atomic_fetch_add(&waits_logged, 1);
}

/* A public-API handle on the store with the loopback broker and more keys. */
static ackbox *api_open_kv(const char *broker, const char *const *kv)
{
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab = NULL;
	char lb[128], err[512] = "";
	int rc;
	TU_SET(c, "store.url", url);
	TU_SET(c, "log.level", "error");
	snprintf(lb, sizeof(lb), "loopback://%s", broker);
	TU_SET(c, "transport.url", lb);
	TU_SET(c, "retry.timeout", "2s");
	TU_SET(c, "retry.backoff.initial", "20ms");
	TU_SET(c, "retry.backoff.max", "100ms");
	TU_SET(c, "store.poll_interval", "50ms");
	ackbox_conf_set_report_cb(c, on_report, NULL);
	ackbox_conf_set_log_cb(c, on_bound_log, NULL);
	apply_extra_conf(c);
	for (; kv && kv[0]; kv += 2)
		TU_SET(c, kv[0], kv[1]);
	rc = ackbox_new(&ab, c, err, sizeof(err));
	if (rc)
		ackbox_conf_destroy(c);
	cr_assert_eq(rc, 0, "ackbox_new with store.url=%s: %s (%s)", url, err, ackbox_strerror(rc));
	return ab;
}

static int publish_one(ackbox *ab, size_t size, ackbox_id *id, char *err, size_t errsz)
{
	static const char zeros[4096];
	ackbox_msg m = {.topic = "orders", .payload = zeros, .payload_len = size};
	cr_assert_leq(size, sizeof(zeros));
	return ackbox_publish(ab, &m, id, err, errsz);
}

static uint64_t stored_total(ackbox *ab)
{
	ackbox_counts c = api_counts(ab);
	return c.sending + c.retrying + c.failed;
}

/*
 * store.full_policy=reject with the broker down: exactly store.max_messages
 * are accepted, the next publish (and a batch, all or nothing) gets
 * ACKBOX_ERR_FULL at once and stores nothing; the bound counts what the
 * store holds, so a new handle after a restart is still refused; when the
 * broker is back every accepted message arrives and there is room again.
 */
Test(api, bound_reject_holds_across_a_restart_and_loses_nothing)
{
	static const char *const kv[] = {"store.max_messages", "50", "store.full_policy", "reject",
	                                 NULL};
	ackbox_loopback *lb = ackbox_loopback_get("full");
	ackbox_id accepted[50], id;
	ackbox_msg five[5];
	char err[512] = "";
	ackbox *ab;

	ackbox_loopback_set_up(lb, 0);
	ab = api_open_kv("full", kv);
	for (int i = 0; i < 50; i++)
		cr_assert_eq(publish_one(ab, 10, &accepted[i], err, sizeof(err)), 0, "%d: %s", i, err);
	long long t0 = tu_mono_ms();
	cr_assert_eq(publish_one(ab, 10, &id, err, sizeof(err)), ACKBOX_ERR_FULL, "%s", err);
	cr_assert_lt(tu_mono_ms() - t0, 2000 * TU_SLOW, "reject does not wait");
	cr_assert_neq(strstr(err, "store.max_messages"), NULL, "%s", err);
	for (int i = 0; i < 5; i++)
		five[i] = (ackbox_msg){.topic = "orders", .payload = "x", .payload_len = 1};
	cr_assert_eq(ackbox_publish_batch(ab, five, 5, NULL, err, sizeof(err)), ACKBOX_ERR_FULL);
	cr_assert_eq(stored_total(ab), 50, "the store never grows past its bound");
	ackbox_destroy(ab);

	/* a restart: the bound is what the store holds, not what this process counted */
	ab = api_open_kv("full", kv);
	cr_assert_eq(publish_one(ab, 10, &id, err, sizeof(err)), ACKBOX_ERR_FULL,
	             "a new handle on a full store: %s", err);
	cr_assert_eq(stored_total(ab), 50);

	ackbox_loopback_set_up(lb, 1);
	cr_assert_eq(ackbox_flush(ab, 30000 * TU_SLOW), 0, "the backlog drains");
	cr_assert_eq(ackbox_loopback_distinct(lb), 50);
	for (int i = 0; i < 50; i++)
		cr_assert_eq(ackbox_loopback_count_id(lb, &accepted[i]), 1, "accepted message %d", i);
	cr_assert_eq(publish_one(ab, 10, &id, err, sizeof(err)), 0, "room again: %s", err);
	cr_assert_eq(ackbox_flush(ab, 30000 * TU_SLOW), 0);
	ackbox_destroy(ab);
}

typedef struct blocked {
	ackbox *ab;
	pthread_t th;
	atomic_int done;
	int rc;
	long long returned_ms;
	ackbox_id id;
	char err[512];
} blocked;

static void *blocked_main(void *o)
{
	blocked *b = o;
	b->rc = publish_one(b->ab, 10, &b->id, b->err, sizeof(b->err));
	b->returned_ms = tu_mono_ms();
	atomic_store(&b->done, 1);
	return NULL;
}

/*
 * store.full_policy=block: a publish into a full store waits; when the
 * broker comes back and acks make room it stores its message and returns
 * (after the broker came back, not before); with no room it gives up after
 * store.full_timeout with ACKBOX_ERR_FULL, storing nothing.
 */
Test(api, bound_block_waits_for_acks_then_stores)
{
	static const char *const kv[] = {"store.max_messages", "20", "store.full_policy", "block",
	                                 "store.full_timeout", "30s", "log.level", "info", NULL};
	static const char *const quick[] = {"store.max_messages", "20", "store.full_policy",
	                                    "block", "store.full_timeout", "300ms", NULL};
	ackbox_loopback *lb = ackbox_loopback_get("block");
	static blocked b;
	char err[512] = "";
	ackbox *ab;
	ackbox_id id;

	ackbox_loopback_set_up(lb, 0);
	ab = api_open_kv("block", quick);
	for (int i = 0; i < 20; i++)
		cr_assert_eq(publish_one(ab, 10, NULL, err, sizeof(err)), 0, "%s", err);
	long long t0 = tu_mono_ms();
	cr_assert_eq(publish_one(ab, 10, &id, err, sizeof(err)), ACKBOX_ERR_FULL, "%s", err);
	cr_assert_geq(tu_mono_ms() - t0, 300, "gave up before store.full_timeout");
	cr_assert_neq(strstr(err, "store.full_timeout"), NULL, "%s", err);
	cr_assert_eq(stored_total(ab), 20);
	ackbox_destroy(ab);

	ab = api_open_kv("block", kv);
	memset(&b, 0, sizeof(b));
	b.ab = ab;
	atomic_store(&waits_logged, 0);
	cr_assert_eq(pthread_create(&b.th, NULL, blocked_main, &b), 0);
	/* it was refused once and waits (it says so); nothing makes room while
	 * the broker is down */
	cr_assert(TU_WAIT_UNTIL(atomic_load(&waits_logged) > 0, 10000 * TU_SLOW),
	          "the publisher does not say it waits");
	cr_assert_eq(atomic_load(&b.done), 0, "it returned without room");
	cr_assert_eq(stored_total(ab), 20);
	long long up_at = tu_mono_ms();
	ackbox_loopback_set_up(lb, 1);
	cr_assert(TU_WAIT_UNTIL(atomic_load(&b.done), 30000 * TU_SLOW), "the publisher never returned");
	pthread_join(b.th, NULL);
	cr_assert_eq(b.rc, 0, "the blocked publish: %s", b.err);
	cr_assert_geq(b.returned_ms, up_at, "it returned before the broker came back");
	cr_assert_eq(ackbox_flush(ab, 30000 * TU_SLOW), 0);
	cr_assert_eq(ackbox_loopback_distinct(lb), 21);
	cr_assert_eq(ackbox_loopback_count_id(lb, &b.id), 1);
	ackbox_destroy(ab);
}

/*
 * store.max_bytes counts payload bytes; a publish that could never fit the
 * bound is refused at once, even with store.full_policy=block.
 */
Test(api, bound_bytes_and_a_message_larger_than_the_bound)
{
	static const char *const kv[] = {"store.max_bytes", "1000", "store.full_policy", "block",
	                                 "store.full_timeout", "30s", NULL};
	ackbox_loopback *lb = ackbox_loopback_get("bytes");
	char err[512] = "";
	ackbox *ab;

	ackbox_loopback_set_up(lb, 0);
	ab = api_open_kv("bytes", kv);
	long long t0 = tu_mono_ms();
	cr_assert_eq(publish_one(ab, 1001, NULL, err, sizeof(err)), ACKBOX_ERR_FULL, "%s", err);
	cr_assert_lt(tu_mono_ms() - t0, 2000 * TU_SLOW, "a message that can never fit does not wait");
	cr_assert_neq(strstr(err, "never fit"), NULL, "%s", err);
	for (int i = 0; i < 9; i++)
		cr_assert_eq(publish_one(ab, 100, NULL, err, sizeof(err)), 0, "%d: %s", i, err);
	ackbox_destroy(ab);

	static const char *const rej[] = {"store.max_bytes", "1000", NULL};
	ab = api_open_kv("bytes", rej);
	cr_assert_eq(publish_one(ab, 101, NULL, err, sizeof(err)), ACKBOX_ERR_FULL, "%s", err);
	cr_assert_neq(strstr(err, "store.max_bytes"), NULL, "%s", err);
	cr_assert_eq(publish_one(ab, 100, NULL, err, sizeof(err)), 0, "exactly at the bound: %s", err);
	cr_assert_eq(publish_one(ab, 1, NULL, err, sizeof(err)), ACKBOX_ERR_FULL, "%s", err);
	cr_assert_eq(stored_total(ab), 10);
	ackbox_loopback_set_up(lb, 1);
	cr_assert_eq(ackbox_flush(ab, 30000 * TU_SLOW), 0);
	cr_assert_eq(ackbox_loopback_distinct(lb), 10);
	ackbox_destroy(ab);
}

#define BOUND_RACERS 8
typedef struct bound_racer {
	ackbox *ab;
	pthread_t th;
	int nok, nfull, other_rc;
	ackbox_id ok[100];
	char other_err[512];
} bound_racer;

static void *bound_racer_main(void *o)
{
	bound_racer *r = o;
	char err[512];
	for (int i = 0; i < 50; i++) {
		ackbox_id id;
		int rc = publish_one(r->ab, 10, &id, err, sizeof(err));
		if (rc == 0)
			r->ok[r->nok++] = id;
		else if (rc == ACKBOX_ERR_FULL)
			r->nfull++;
		else if (!r->other_rc) {
			r->other_rc = rc;
			snprintf(r->other_err, sizeof(r->other_err), "%s", err);
		}
	}
	return NULL;
}

/*
 * A broker outage with eight publishers racing for a bound of 100: exactly
 * 100 publishes succeed, the others get ACKBOX_ERR_FULL, the store holds
 * 100, and every accepted message reaches the broker once it is back.
 */
Test(api, bound_holds_with_eight_publishers_racing_during_an_outage)
{
	static const char *const kv[] = {"store.max_messages", "100", NULL};
	static bound_racer rs[BOUND_RACERS];
	ackbox_loopback *lb = ackbox_loopback_get("racing");
	ackbox *ab;
	int ok = 0, full = 0;

	ackbox_loopback_set_up(lb, 0);
	ab = api_open_kv("racing", kv);
	for (int i = 0; i < BOUND_RACERS; i++) {
		memset(&rs[i], 0, sizeof(rs[i]));
		rs[i].ab = ab;
		cr_assert_eq(pthread_create(&rs[i].th, NULL, bound_racer_main, &rs[i]), 0);
	}
	for (int i = 0; i < BOUND_RACERS; i++) {
		pthread_join(rs[i].th, NULL);
		cr_assert_eq(rs[i].other_rc, 0, "racer %d: %s", i, rs[i].other_err);
		ok += rs[i].nok;
		full += rs[i].nfull;
	}
	cr_assert_eq(ok, 100, "%d publishes succeeded", ok);
	cr_assert_eq(full, BOUND_RACERS * 50 - 100);
	cr_assert_eq(stored_total(ab), 100);
	ackbox_loopback_set_up(lb, 1);
	cr_assert_eq(ackbox_flush(ab, 30000 * TU_SLOW), 0);
	for (int i = 0; i < BOUND_RACERS; i++)
		for (int k = 0; k < rs[i].nok; k++)
			cr_assert_eq(ackbox_loopback_count_id(lb, &rs[i].ok[k]), 1,
			             "racer %d message %d lost", i, k);
	cr_assert_eq(ackbox_loopback_distinct(lb), 100);
	ackbox_destroy(ab);
}
