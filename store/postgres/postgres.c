/*
 * postgres.c - the PostgreSQL store (libpq): one outbox table that several
 * relay processes share. A claim leases rows with FOR UPDATE SKIP LOCKED and
 * bumps their fencing number; every change names the lease it was decided
 * under, so a relay whose lease ran out cannot undo the new owner's work.
 */
#define _GNU_SOURCE
#include <endian.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include <ackbox/postgres.h>
#include <ackbox/store.h>

#define SCHEMA_NAME "ackbox-outbox"
#define SCHEMA_VERSION 1
#define ADVISORY_CLASS "44208" /* 0xACB0: pg_advisory_xact_lock(class, hashtext(schema)) */

/* Type OIDs of the binary parameters (pg_type.h; stable across releases). */
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_INT4 23
#define OID_TEXT 25
#define OID_UUID 2950

/* One INSERT carries at most this much payload (an array value must stay
 * well under PostgreSQL's 1 GB limit); a larger batch takes several
 * statements inside the same transaction. */
#define INSERT_CHUNK_BYTES (64u << 20)
#define INSERT_CHUNK_ROWS 5000
#define LIST_PAGE 500

/*
 * The schema. `lease` is the fencing number: 0 for a row nobody claimed
 * (the inserting relay holds it in memory until due_ms), a fresh value of
 * ackbox_lease_seq per claim. A sequence rather than lease + 1 because
 * nextval() is never rolled back: even a claim whose statement failed after
 * some rows reached the relay hands out numbers nobody will get again.
 * lease_owner names the relay that leased the row or decided its state last
 * (relay_id; NULL for rows the transactional entry point wrote or an operator
 * requeued). payload_len is the payload's length when the row was written: a
 * claim fails a row whose payload is no longer that long (NULL in rows from
 * before the column, which an owner's next open adds). The partial index
 * holds only pending rows, so "what is due" stays
 * cheap however many FAILED rows pile up. Everything is created inside a
 * DO block, object by object, so that a role without CREATE privileges can
 * open a store an owner has set up.
 */
static const char install_sql[] =
    "SELECT pg_advisory_xact_lock(" ADVISORY_CLASS ", hashtext('@N'));"
    "DO $ackbox$ BEGIN "
    "IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '@N') THEN "
    " CREATE SCHEMA @S; "
    "END IF; "
    "IF to_regclass('@S.ackbox_meta') IS NULL THEN "
    " CREATE TABLE @S.ackbox_meta(key text PRIMARY KEY, value text NOT NULL); "
    " INSERT INTO @S.ackbox_meta VALUES ('schema', '" SCHEMA_NAME "'), ('version', '1'); "
    "END IF; "
    "IF to_regclass('@S.ackbox_outbox') IS NULL THEN "
    " CREATE TABLE @S.ackbox_outbox("
    "  id uuid PRIMARY KEY,"
    "  state smallint NOT NULL DEFAULT 0,"
    "  attempts integer NOT NULL DEFAULT 0,"
    "  created_ms bigint NOT NULL,"
    "  updated_ms bigint NOT NULL,"
    "  due_ms bigint NOT NULL,"
    "  topic text NOT NULL,"
    "  msg_key bytea,"
    "  content_type text,"
    "  headers bytea,"
    "  payload bytea NOT NULL,"
    "  last_error text,"
    "  last_code integer NOT NULL DEFAULT 0,"
    "  lease_owner text,"
    "  lease bigint NOT NULL DEFAULT 0,"
    "  payload_len bigint); "
    " CREATE INDEX ackbox_outbox_due ON @S.ackbox_outbox(due_ms) WHERE state < 2; "
    " CREATE INDEX ackbox_outbox_failed ON @S.ackbox_outbox(updated_ms) WHERE state = 2; "
    "END IF; "
    "IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = '@S.ackbox_outbox'::regclass"
    "  AND attname = 'payload_len' AND NOT attisdropped) THEN "
    " ALTER TABLE @S.ackbox_outbox ADD COLUMN payload_len bigint; "
    "END IF; "
    "IF to_regclass('@S.ackbox_lease_seq') IS NULL THEN "
    " CREATE SEQUENCE @S.ackbox_lease_seq; "
    "END IF; "
    "END $ackbox$;";

/*
 * Per-key order (delivery.order=key, docs/ordering.md), installed by the
 * first handle that opens the store with it. `head` marks the oldest row
 * (lowest id) of a key; the ordered claim takes heads and rows without a
 * key from a partial index that holds nothing else, so a key's backlog
 * costs nothing per claim, and SKIP LOCKED with the lease keeps a key on one
 * relay. Inserts set nothing (the application's transactional enqueue
 * included: no lock, no trigger in its transaction): a new keyed row is
 * `checked` false, and an ordered claim first checks such rows (head if no
 * older row of its key exists). When a head (or an unchecked row) is
 * deleted, its key goes into ackbox_key_free in the same transaction, before
 * the delete, and an ordered claim promotes the key's oldest row. Both only
 * ever set head, never clear it, so two relays racing cannot lose a key; a
 * promotion that finds the next row not yet committed is made up for by
 * that row's own check.
 */
static const char order_install_sql[] =
    "SELECT pg_advisory_xact_lock(" ADVISORY_CLASS ", hashtext('@N'));"
    "DO $ackbox$ BEGIN "
    "ALTER TABLE @S.ackbox_outbox ADD COLUMN IF NOT EXISTS head boolean NOT NULL DEFAULT false; "
    "ALTER TABLE @S.ackbox_outbox ADD COLUMN IF NOT EXISTS checked boolean NOT NULL"
    " DEFAULT false; "
    "CREATE INDEX IF NOT EXISTS ackbox_outbox_key ON @S.ackbox_outbox(msg_key, id)"
    " WHERE msg_key IS NOT NULL; "
    "CREATE INDEX IF NOT EXISTS ackbox_outbox_ready ON @S.ackbox_outbox(due_ms)"
    " WHERE state < 2 AND (msg_key IS NULL OR head); "
    "CREATE INDEX IF NOT EXISTS ackbox_outbox_unchecked ON @S.ackbox_outbox(id)"
    " WHERE NOT checked AND msg_key IS NOT NULL; "
    "CREATE TABLE IF NOT EXISTS @S.ackbox_key_free(msg_key bytea PRIMARY KEY); "
    "END $ackbox$;";

/* At every ordered open: every key gets its oldest row promoted, which
 * repairs whatever a handle without delivery.order left (it does not keep
 * heads when it deletes). */
static const char order_seed_sql[] =
    "INSERT INTO @S.ackbox_key_free(msg_key) SELECT DISTINCT msg_key FROM @S.ackbox_outbox"
    " WHERE msg_key IS NOT NULL ON CONFLICT DO NOTHING";

#define ROW_COLS                                                                                   \
	"t.id, t.state, t.attempts, t.created_ms, t.updated_ms, t.due_ms, t.topic, t.msg_key, "   \
	"t.content_type, t.headers, t.payload, t.last_error, t.last_code, t.lease, t.payload_len"

enum {
	ST_INSERT,
	ST_CLAIM,
	ST_DELETE,
	ST_RETRY,
	ST_FAIL,
	ST_RELEASE,
	ST_RECOVER,
	ST_HAS_PENDING,
	ST_COUNTS,
	ST_LIST,
	ST_GET,
	ST_REQUEUE_IDS,
	ST_REQUEUE_ALL,
	ST_PURGE,
	ST_FORCE_FAIL,
	ST_FORCE_DELETE,
	ST_DAMAGED,
	ST_USAGE,
	/* per-key order: prepared only once it is installed */
	ST_ORDER_FIRST,
	ST_CHECK = ST_ORDER_FIRST,
	ST_PROMOTE,
	ST_CLAIM_ORDERED,
	ST_KEYFREE_DELETE,
	ST_KEYFREE_PURGE,
	ST_KEYFREE_FORCE,
	ST_BLOCKED,
	ST_COUNT
};

/* "@S" is the quoted schema. Parameters are sent and results read in binary. */
static const char *const stmt_sql[ST_COUNT] = {
    [ST_INSERT] =
        "INSERT INTO @S.ackbox_outbox(id, state, attempts, created_ms, updated_ms, due_ms, topic,"
        " msg_key, content_type, headers, payload, lease_owner, lease, payload_len)"
        " SELECT u.id, 0, 0, u.cr, u.cr, u.due, u.topic, u.k, u.ct, u.h, u.p, $9::text, 0,"
        " length(u.p)"
        " FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::text[], $5::bytea[], $6::text[],"
        " $7::bytea[], $8::bytea[]) AS u(id, cr, due, topic, k, ct, h, p)",
    /* SKIP LOCKED: concurrent claimers take disjoint rows and never wait on
     * each other; a row another relay leased meanwhile fails the re-check of
     * due_ms and is skipped too. */
    [ST_CLAIM] = "UPDATE @S.ackbox_outbox t SET due_ms = $2::int8,"
                 " lease = nextval('@S.ackbox_lease_seq'),"
                 " lease_owner = $3::text"
                 " FROM (SELECT id FROM @S.ackbox_outbox WHERE state < 2 AND due_ms <= $1::int8"
                 " ORDER BY due_ms LIMIT $4::int8 FOR UPDATE SKIP LOCKED) d"
                 " WHERE t.id = d.id RETURNING " ROW_COLS,
    [ST_DELETE] = "DELETE FROM @S.ackbox_outbox t USING unnest($1::uuid[], $2::int8[]) AS c(id, lease)"
                  " WHERE t.id = c.id AND t.lease = c.lease",
    [ST_RETRY] = "UPDATE @S.ackbox_outbox t SET state = 1, attempts = c.attempts, due_ms = c.due,"
                 " last_error = c.err, last_code = c.code, updated_ms = $7::int8"
                 " FROM unnest($1::uuid[], $2::int8[], $3::int4[], $4::int8[], $5::text[],"
                 " $6::int4[]) AS c(id, lease, attempts, due, err, code)"
                 " WHERE t.id = c.id AND t.lease = c.lease AND t.state < 2",
    [ST_FAIL] = "UPDATE @S.ackbox_outbox t SET state = 2, attempts = c.attempts,"
                " last_error = c.err, last_code = c.code, updated_ms = $6::int8"
                " FROM unnest($1::uuid[], $2::int8[], $3::int4[], $4::text[], $5::int4[])"
                " AS c(id, lease, attempts, err, code)"
                " WHERE t.id = c.id AND t.lease = c.lease AND t.state < 2",
    [ST_RELEASE] = "UPDATE @S.ackbox_outbox t SET due_ms = c.due"
                   " FROM unnest($1::uuid[], $2::int8[], $3::int8[]) AS c(id, lease, due)"
                   " WHERE t.id = c.id AND t.lease = c.lease AND t.state < 2",
    /* only rows this relay (same relay_id) leased or decided last: never another's */
    [ST_RECOVER] = "UPDATE @S.ackbox_outbox SET due_ms = $1::int8"
                   " WHERE state < 2 AND due_ms > $1::int8 AND lease_owner = $2::text",
    [ST_HAS_PENDING] = "SELECT EXISTS (SELECT 1 FROM @S.ackbox_outbox WHERE state < 2)",
    [ST_COUNTS] = "SELECT count(*) FILTER (WHERE state < 2), count(*) FILTER (WHERE state = 1),"
                  " count(*) FILTER (WHERE state = 2),"
                  " coalesce(min(created_ms) FILTER (WHERE state < 2), 0)"
                  " FROM @S.ackbox_outbox",
    [ST_LIST] = "SELECT " ROW_COLS " FROM @S.ackbox_outbox t"
                " WHERE ($1::int4 < 0 OR t.state = $1::int4) AND t.id > $2::uuid"
                " ORDER BY t.id LIMIT $3::int8",
    [ST_GET] = "SELECT " ROW_COLS " FROM @S.ackbox_outbox t WHERE t.id = $1::uuid",
    [ST_REQUEUE_IDS] = "UPDATE @S.ackbox_outbox t SET state = 1, attempts = 0, due_ms = $2::int8,"
                       " updated_ms = $2::int8, lease_owner = NULL"
                       " FROM unnest($1::uuid[]) AS c(id) WHERE t.id = c.id AND t.state = 2",
    [ST_REQUEUE_ALL] = "UPDATE @S.ackbox_outbox SET state = 1, attempts = 0, due_ms = $1::int8,"
                       " updated_ms = $1::int8, lease_owner = NULL WHERE state = 2",
    [ST_PURGE] = "DELETE FROM @S.ackbox_outbox WHERE state = 2 AND updated_ms < $1::int8",
    /* an operator's override, whatever the state and lease: a fresh lease
     * fences off the relay that holds the row (its changes name the old one) */
    [ST_FORCE_FAIL] = "UPDATE @S.ackbox_outbox SET state = 2, last_error = $2::text,"
                      " last_code = $3::int4, updated_ms = $4::int8,"
                      " lease = nextval('@S.ackbox_lease_seq'), lease_owner = NULL"
                      " WHERE id = $1::uuid",
    [ST_FORCE_DELETE] = "DELETE FROM @S.ackbox_outbox WHERE id = $1::uuid",
    /* a claim's verdict on a row whose payload is damaged (see payload_len);
     * the lease is the one the claim just took */
    [ST_DAMAGED] = "UPDATE @S.ackbox_outbox SET state = 2, last_error = $2::text, last_code = 0,"
                   " updated_ms = $3::int8 WHERE id = $1::uuid AND lease = $4::int8",
    /* the backlog bound: a sequential scan; the core asks rarely */
    [ST_USAGE] = "SELECT count(*), coalesce(sum(octet_length(payload)), 0)::int8"
                 " FROM @S.ackbox_outbox",
    /* new keyed rows, oldest first: head if nothing older of the key exists
     * (only ever set: a promotion racing this is never undone) */
    [ST_CHECK] = "UPDATE @S.ackbox_outbox t SET checked = true, head = t.head OR NOT EXISTS"
                 " (SELECT 1 FROM @S.ackbox_outbox p WHERE p.msg_key = t.msg_key AND p.id < t.id)"
                 " FROM (SELECT id FROM @S.ackbox_outbox WHERE NOT checked AND msg_key IS NOT NULL"
                 " ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED) u WHERE t.id = u.id",
    /* keys whose head went: their oldest row becomes the head */
    [ST_PROMOTE] = "WITH f AS (DELETE FROM @S.ackbox_key_free k WHERE k.msg_key IN"
                   " (SELECT msg_key FROM @S.ackbox_key_free LIMIT 1000 FOR UPDATE SKIP LOCKED)"
                   " RETURNING k.msg_key)"
                   " UPDATE @S.ackbox_outbox t SET head = true FROM f CROSS JOIN LATERAL"
                   " (SELECT o.id FROM @S.ackbox_outbox o WHERE o.msg_key = f.msg_key"
                   " ORDER BY o.id LIMIT 1) n WHERE t.id = n.id AND NOT t.head",
    /* the WHERE repeats ackbox_outbox_ready's, so the planner uses it */
    [ST_CLAIM_ORDERED] = "UPDATE @S.ackbox_outbox t SET due_ms = $2::int8,"
                         " lease = nextval('@S.ackbox_lease_seq'),"
                         " lease_owner = $3::text"
                         " FROM (SELECT id FROM @S.ackbox_outbox WHERE state < 2 AND"
                         " (msg_key IS NULL OR head) AND due_ms <= $1::int8"
                         " ORDER BY due_ms LIMIT $4::int8 FOR UPDATE SKIP LOCKED) d"
                         " WHERE t.id = d.id RETURNING " ROW_COLS,
    /* before a delete, in its transaction: the keys it frees (ordered by
     * key, and locking their rows, so a promotion cannot consume one before
     * the delete commits) */
    [ST_KEYFREE_DELETE] = "INSERT INTO @S.ackbox_key_free(msg_key) SELECT DISTINCT t.msg_key"
                          " FROM @S.ackbox_outbox t JOIN unnest($1::uuid[], $2::int8[])"
                          " AS c(id, lease) ON t.id = c.id AND t.lease = c.lease"
                          " WHERE t.msg_key IS NOT NULL AND (t.head OR NOT t.checked) ORDER BY 1"
                          " ON CONFLICT (msg_key) DO UPDATE SET msg_key = EXCLUDED.msg_key",
    [ST_KEYFREE_PURGE] = "INSERT INTO @S.ackbox_key_free(msg_key) SELECT DISTINCT msg_key"
                         " FROM @S.ackbox_outbox WHERE state = 2 AND updated_ms < $1::int8"
                         " AND msg_key IS NOT NULL AND (head OR NOT checked) ORDER BY 1"
                         " ON CONFLICT (msg_key) DO UPDATE SET msg_key = EXCLUDED.msg_key",
    [ST_KEYFREE_FORCE] = "INSERT INTO @S.ackbox_key_free(msg_key) SELECT msg_key"
                         " FROM @S.ackbox_outbox WHERE id = $1::uuid"
                         " AND msg_key IS NOT NULL AND (head OR NOT checked)"
                         " ON CONFLICT (msg_key) DO UPDATE SET msg_key = EXCLUDED.msg_key",
    [ST_BLOCKED] = "SELECT f.msg_key, f.id, (SELECT count(*) FROM @S.ackbox_outbox p"
                   " WHERE p.msg_key = f.msg_key AND p.state < 2)"
                   " FROM @S.ackbox_outbox f WHERE f.state = 2 AND f.head"
                   " AND f.msg_key IS NOT NULL LIMIT $1::int8",
};

/* A one-dimensional array in PostgreSQL's binary format, built in place. */
typedef struct pg_arr {
	char *buf;
	size_t len, cap;
	uint32_t n;
	int hasnull;
	uint32_t oid;
	int failed; /* out of memory while building */
} pg_arr;

#define N_ARRAYS 8 /* the most array parameters a statement takes (insert) */

typedef struct pg_ctx {
	PGconn *conn;
	char *where;    /* "host:port/db", for messages */
	char *schema;   /* as given */
	char *relay_id; /* lease_owner of this instance */
	char *sql[ST_COUNT];
	char *setup_sql;
	const ackbox_conf *conf; /* the handle's, for ackbox_store_log */
	int durable;  /* store.sync=full: inserts wait for the WAL flush */
	int ready;    /* session set up and statements prepared on conn */
	int absent;   /* no outbox tables yet (store.create=insert): the first insert makes them */
	int ordered;  /* delivery.order=key: ordered claims */
	int order_installed; /* the store has the per-key order objects: keep them */
	pg_arr arr[N_ARRAYS];
} pg_ctx;

static const ackbox_prop pg_props[] = {
	{"connect_timeout", ACKBOX_PROP_DURATION, "5s", 1000, 600000, NULL,
	 "How long one connection attempt to PostgreSQL may take (whole seconds; libpq "
	 "connect_timeout)."},
	{"statement_timeout", ACKBOX_PROP_DURATION, "30s", 0, 86400000, NULL,
	 "Longest a single statement may run before PostgreSQL cancels it (0: no limit), so a hung "
	 "server does not stall the relay."},
	{"relay_id", ACKBOX_PROP_STRING, NULL, 0, 0, NULL,
	 "Names this relay in lease_owner (default host:pid:n, unique per handle). A relay restarted "
	 "with the same stable id takes its own unexpired leases back at once instead of waiting "
	 "for retry.timeout; two live relays must never share an id."},
	{NULL, 0, NULL, 0, 0, NULL, NULL}};

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */
/* ------------------------------------------------------------------ */

static void put_be32(char *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, 4);
}

static void put_be64(char *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, 8);
}

static int64_t get_be64(const char *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return (int64_t)be64toh(v);
}

static int32_t get_be32(const char *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return (int32_t)be32toh(v);
}

static int16_t get_be16(const char *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return (int16_t)be16toh(v);
}

static int arr_reserve(pg_arr *a, size_t more)
{
	if (a->len + more <= a->cap)
		return 0;
	size_t ncap = a->cap ? a->cap : 256;
	while (ncap < a->len + more)
		ncap *= 2;
	char *nb = realloc(a->buf, ncap);
	if (!nb) {
		a->failed = 1;
		return -1;
	}
	a->buf = nb;
	a->cap = ncap;
	return 0;
}

static void arr_begin(pg_arr *a, uint32_t oid)
{
	a->len = 0;
	a->n = 0;
	a->hasnull = 0;
	a->oid = oid;
	a->failed = 0;
	if (arr_reserve(a, 20) == 0)
		a->len = 20; /* header written by arr_end */
}

/* Appends one element; p == NULL is SQL NULL. */
static void arr_put(pg_arr *a, const void *p, size_t len)
{
	if (a->failed || arr_reserve(a, 4 + (p ? len : 0)) != 0)
		return;
	if (!p) {
		put_be32(a->buf + a->len, 0xffffffffu);
		a->len += 4;
		a->hasnull = 1;
	} else {
		put_be32(a->buf + a->len, (uint32_t)len);
		memcpy(a->buf + a->len + 4, p, len);
		a->len += 4 + len;
	}
	a->n++;
}

static void arr_put_i64(pg_arr *a, int64_t v)
{
	char b[8];
	put_be64(b, (uint64_t)v);
	arr_put(a, b, 8);
}

static void arr_put_i32(pg_arr *a, int32_t v)
{
	char b[4];
	put_be32(b, (uint32_t)v);
	arr_put(a, b, 4);
}

static void arr_put_str(pg_arr *a, const char *s)
{
	arr_put(a, s, s ? strlen(s) : 0);
}

/* Writes the header: ndim 1, null flag, element type, length, lower bound 1. */
static void arr_end(pg_arr *a)
{
	if (a->failed)
		return;
	put_be32(a->buf, 1);
	put_be32(a->buf + 4, (uint32_t)a->hasnull);
	put_be32(a->buf + 8, a->oid);
	put_be32(a->buf + 12, a->n);
	put_be32(a->buf + 16, 1);
}

/* Is [s, s+n) well-formed UTF-8 (what a PostgreSQL text value must be)? */
static int utf8_ok(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = s[i];
		size_t k;
		uint32_t cp;
		if (c < 0x80) {
			if (c == 0)
				return 0;
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			k = 1;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			k = 2;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			k = 3;
			cp = c & 0x07;
		} else {
			return 0;
		}
		if (i + k >= n)
			return 0;
		for (size_t j = 1; j <= k; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i + j] & 0x3f);
		}
		if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += k + 1;
	}
	return 1;
}

/* A copy of s with bytes that are not UTF-8 replaced by '?' (broker reasons). */
static char *utf8_clean(const char *s)
{
	size_t n = strlen(s);
	char *d = strdup(s);
	if (!d || utf8_ok((const unsigned char *)d, n))
		return d;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)d[i] >= 0x80)
			d[i] = '?';
	return d;
}

/* A schema name we can quote without surprises: [A-Za-z_][A-Za-z0-9_]{0,62}. */
static int schema_name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 63 || (s[0] >= '0' && s[0] <= '9'))
		return 0;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		if (!(ch == '_' || (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
		      (ch >= 'A' && ch <= 'Z')))
			return 0;
	}
	return 1;
}

/* Expands "@S" (quoted schema) and "@N" (bare name) in tmpl; NULL on OOM. */
static char *expand(const char *tmpl, const char *schema)
{
	size_t sl = strlen(schema), n = 0;
	for (const char *p = tmpl; *p; p++, n++)
		if (p[0] == '@' && (p[1] == 'S' || p[1] == 'N'))
			n += sl + 2;
	char *out = malloc(n + 1), *o = out;
	if (!out)
		return NULL;
	for (const char *p = tmpl; *p; p++) {
		if (p[0] == '@' && p[1] == 'S') {
			*o++ = '"';
			memcpy(o, schema, sl);
			o += sl;
			*o++ = '"';
			p++;
		} else if (p[0] == '@' && p[1] == 'N') {
			memcpy(o, schema, sl);
			o += sl;
			p++;
		} else {
			*o++ = *p;
		}
	}
	*o = '\0';
	return out;
}

/* The first line of libpq's message, without "ERROR:  " or a trailing newline. */
static void first_line(const char *msg, char *out, size_t out_size)
{
	if (!msg || !*msg)
		msg = "no message from libpq";
	if (strncmp(msg, "ERROR:  ", 8) == 0 || strncmp(msg, "FATAL:  ", 8) == 0)
		msg += 8;
	snprintf(out, out_size, "%s", msg);
	out[strcspn(out, "\n")] = '\0';
}

/* ------------------------------------------------------------------ */
/* Errors                                                               */
/* ------------------------------------------------------------------ */

/*
 * Maps a failed statement to an ackbox error and one line naming the server,
 * the database and what was being done. res may be NULL (libpq had no
 * result: out of memory or a dead connection).
 */
static int pg_error(PGconn *conn, const PGresult *res, const char *where, const char *schema,
                    const char *what, char *errstr, size_t errstr_size)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *user = conn ? PQuser(conn) : NULL;
	char msg[400], hint[900] = "";
	int code = ACKBOX_ERR_STORE;

	if (primary && *primary)
		first_line(primary, msg, sizeof(msg));
	else
		first_line(conn ? PQerrorMessage(conn) : NULL, msg, sizeof(msg));
	if (!user)
		user = "?";
	if (!conn || PQstatus(conn) == CONNECTION_BAD) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "postgres at %s: connection lost during %s: %s (it is reopened on the "
		                  "next call)",
		                  where, what, msg);
		return ACKBOX_ERR_STORE;
	}
	if (!state)
		state = "";
	if (strcmp(state, "42501") == 0) {
		code = ACKBOX_ERR_STORE_READONLY;
		snprintf(hint, sizeof(hint),
		         " (role '%s' lacks a privilege: the outbox needs USAGE on schema \"%s\", "
		         "SELECT, INSERT, UPDATE, DELETE on \"%s\".ackbox_outbox, USAGE on "
		         "\"%s\".ackbox_lease_seq and SELECT on \"%s\".ackbox_meta; creating them "
		         "needs CREATE on the database or schema, or an owner running "
		         "ackbox_pg_install_schema once)",
		         user, schema, schema, schema, schema);
	} else if (strcmp(state, "25006") == 0) {
		code = ACKBOX_ERR_STORE_READONLY;
		snprintf(hint, sizeof(hint),
		         " (a read-only server or transaction: a standby? add "
		         "target_session_attrs=read-write to store.url)");
	} else if (strcmp(state, "53100") == 0) {
		code = ACKBOX_ERR_STORE_FULL;
		snprintf(hint, sizeof(hint), " (the server's disk is full)");
	} else if (strcmp(state, "40P01") == 0 || strcmp(state, "40001") == 0 ||
	           strcmp(state, "55P03") == 0) {
		code = ACKBOX_ERR_STORE_LOCKED;
		snprintf(hint, sizeof(hint), " (lock conflict with another session)");
	} else if (strcmp(state, "57014") == 0) {
		code = ACKBOX_ERR_STORE_LOCKED;
		snprintf(hint, sizeof(hint),
		         " (cancelled: longer than postgres.statement_timeout, or waiting on a lock)");
	} else if (strncmp(state, "XX", 2) == 0) {
		code = ACKBOX_ERR_STORE_CORRUPT;
	} else if (strcmp(state, "42P01") == 0 || strcmp(state, "42703") == 0) {
		code = ACKBOX_ERR_STORE_SCHEMA;
		snprintf(hint, sizeof(hint),
		         " (the outbox tables in schema \"%s\" are missing or altered)", schema);
	} else if (strcmp(state, "22021") == 0 || strcmp(state, "22P05") == 0) {
		code = ACKBOX_ERR_INVALID;
		snprintf(hint, sizeof(hint),
		         " (text the database encoding cannot hold; use a UTF8 database)");
	} else if (strncmp(state, "53", 2) == 0 || strncmp(state, "57P", 3) == 0 ||
	           strncmp(state, "08", 2) == 0) {
		code = ACKBOX_ERR_STORE;
	}
	ackbox_errstr_set(errstr, errstr_size, "postgres at %s: %s failed: %s%s%s%s", where, what,
	                  msg, *state ? " [SQLSTATE " : "", state, *state ? "]" : "");
	if (hint[0] && errstr) {
		size_t l = strlen(errstr);
		if (l + 1 < errstr_size)
			snprintf(errstr + l, errstr_size - l, "%s", hint);
	}
	return code;
}

static int res_ok(const PGresult *r)
{
	ExecStatusType s = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
	return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
}

/* ------------------------------------------------------------------ */
/* The connection                                                       */
/* ------------------------------------------------------------------ */

/* Session settings and prepared statements; again after every reconnect. */
static int session_init(pg_ctx *c, char *errstr, size_t errstr_size)
{
	PGresult *r = PQexec(c->conn, c->setup_sql);
	int rc = 0;
	if (!res_ok(r)) {
		rc = pg_error(c->conn, r, c->where, c->schema, "session setup", errstr, errstr_size);
		PQclear(r);
		return rc;
	}
	PQclear(r);
	for (int i = 0; i < (c->order_installed ? ST_COUNT : ST_ORDER_FIRST); i++) {
		char name[32];
		snprintf(name, sizeof(name), "ackbox_%d", i);
		r = PQprepare(c->conn, name, c->sql[i], 0, NULL);
		if (!res_ok(r)) {
			rc = pg_error(c->conn, r, c->where, c->schema, "preparing statements", errstr,
			              errstr_size);
			PQclear(r);
			return rc;
		}
		PQclear(r);
	}
	c->ready = 1;
	return 0;
}

static int connect_error(pg_ctx *c, char *errstr, size_t errstr_size)
{
	char msg[400], *o = msg;
	const char *in = c->conn ? PQerrorMessage(c->conn) : "out of memory";
	/* libpq's message may span lines (a hint, one line per address tried):
	 * one line, "; " between them */
	for (; *in && o < msg + sizeof(msg) - 3; in++) {
		if (*in == '\n' || *in == '\t') {
			while (in[1] == '\n' || in[1] == '\t')
				in++;
			if (in[1] && o > msg) {
				*o++ = ';';
				*o++ = ' ';
			}
			continue;
		}
		*o++ = *in;
	}
	*o = '\0';
	ackbox_errstr_set(errstr, errstr_size, "cannot connect to postgres at %s: %s", c->where,
	                  msg);
	return ACKBOX_ERR_STORE;
}

/* Reopens a broken connection with the same parameters (one attempt, no wait). */
static int reconnect(pg_ctx *c, char *errstr, size_t errstr_size)
{
	c->ready = 0;
	PQreset(c->conn);
	if (PQstatus(c->conn) != CONNECTION_OK)
		return connect_error(c, errstr, errstr_size);
	return session_init(c, errstr, errstr_size);
}

static int ensure(pg_ctx *c, char *errstr, size_t errstr_size)
{
	if (c->absent) {
		/* no tables to prepare statements on (store.create=insert) */
		if (PQstatus(c->conn) != CONNECTION_OK)
			PQreset(c->conn);
		return PQstatus(c->conn) == CONNECTION_OK ? 0 : connect_error(c, errstr, errstr_size);
	}
	if (c->ready && PQstatus(c->conn) == CONNECTION_OK)
		return 0;
	return reconnect(c, errstr, errstr_size);
}

/*
 * Runs a prepared statement, all parameters and results binary. `first`:
 * nothing of this operation has reached the server yet, so if the
 * connection turns out dead (the server restarted since the last call) it
 * is reopened and the statement sent again, once. That is the reconnect a
 * connection pool does, not a retry of an operation that failed.
 */
static int run(pg_ctx *c, int st, int nparams, const char *const *vals, const int *lens,
               int first, PGresult **out, const char *what, char *errstr, size_t errstr_size)
{
	static const int binary[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
	char name[32];
	PGresult *r;
	int rc = ensure(c, errstr, errstr_size);
	if (rc)
		return rc;
	if (c->absent) {
		/* what a statement finds in tables that do not exist yet: nothing */
		if (out && !(*out = PQmakeEmptyPGresult(c->conn, PGRES_TUPLES_OK)))
			return ACKBOX_ERR_NOMEM;
		return 0;
	}
	snprintf(name, sizeof(name), "ackbox_%d", st);
	r = PQexecPrepared(c->conn, name, nparams, vals, lens, binary, 1);
	if (!res_ok(r) && first && PQstatus(c->conn) == CONNECTION_BAD) {
		PQclear(r);
		if ((rc = reconnect(c, errstr, errstr_size)) != 0)
			return rc;
		r = PQexecPrepared(c->conn, name, nparams, vals, lens, binary, 1);
	}
	if (!res_ok(r)) {
		rc = pg_error(c->conn, r, c->where, c->schema, what, errstr, errstr_size);
		PQclear(r);
		return rc;
	}
	if (out)
		*out = r;
	else
		PQclear(r);
	return 0;
}

/*
 * Like run(), but streams the result one row at a time (libpq single-row
 * mode) to fn, so a claim of many large messages is never held twice in
 * memory. fn returns non-zero to stop; the remaining rows are read and
 * dropped. Returns the number of rows handed to fn, or an error. Rows
 * handed over before an error stay handed over: for a claim that is safe,
 * since their fencing numbers come from a sequence and are never reused.
 */
static int run_rows(pg_ctx *c, int st, int nparams, const char *const *vals, const int *lens,
                    int (*fn)(const PGresult *r, void *arg), void *arg, const char *what,
                    char *errstr, size_t errstr_size)
{
	static const int binary[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
	char name[32];
	int rc = ensure(c, errstr, errstr_size);
	if (rc)
		return rc;
	if (c->absent)
		return 0;
	snprintf(name, sizeof(name), "ackbox_%d", st);
	for (int attempt = 0;; attempt++) {
		PGresult *r, *failed = NULL;
		int handed = 0, stopped = 0;
		if (PQsendQueryPrepared(c->conn, name, nparams, vals, lens, binary, 1) &&
		    PQsetSingleRowMode(c->conn)) {
			while ((r = PQgetResult(c->conn)) != NULL) {
				ExecStatusType s = PQresultStatus(r);
				if (s == PGRES_SINGLE_TUPLE && !stopped) {
					handed++;
					stopped = fn(r, arg);
				} else if (s != PGRES_SINGLE_TUPLE && s != PGRES_TUPLES_OK && !failed) {
					failed = r;
					continue;
				}
				PQclear(r);
			}
			if (!failed)
				return handed;
		}
		/* the connection was found dead before anything happened: reopen once */
		if (attempt == 0 && handed == 0 && PQstatus(c->conn) == CONNECTION_BAD) {
			PQclear(failed);
			if ((rc = reconnect(c, errstr, errstr_size)) != 0)
				return rc;
			continue;
		}
		rc = pg_error(c->conn, failed, c->where, c->schema, what, errstr, errstr_size);
		PQclear(failed);
		/* a send that failed may leave a result pending: drain it */
		while ((r = PQgetResult(c->conn)) != NULL)
			PQclear(r);
		return rc;
	}
}

/* A plain command (BEGIN, COMMIT); same `first` rule as run(). */
static int run_simple(pg_ctx *c, const char *sql, int first, const char *what, char *errstr,
                      size_t errstr_size)
{
	PGresult *r;
	int rc = ensure(c, errstr, errstr_size);
	if (rc)
		return rc;
	r = PQexec(c->conn, sql);
	if (!res_ok(r) && first && PQstatus(c->conn) == CONNECTION_BAD) {
		PQclear(r);
		if ((rc = reconnect(c, errstr, errstr_size)) != 0)
			return rc;
		r = PQexec(c->conn, sql);
	}
	if (!res_ok(r)) {
		rc = pg_error(c->conn, r, c->where, c->schema, what, errstr, errstr_size);
		PQclear(r);
		return rc;
	}
	PQclear(r);
	return 0;
}

/* BEGIN; durable: this transaction's COMMIT waits for the WAL flush. */
static int tx_begin(pg_ctx *c, int durable, char *errstr, size_t errstr_size)
{
	return run_simple(c, durable ? "BEGIN; SET LOCAL synchronous_commit TO on" : "BEGIN", 1,
	                  "begin", errstr, errstr_size);
}

static void tx_abort(pg_ctx *c)
{
	PGTransactionStatusType ts = PQtransactionStatus(c->conn);
	if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
		PQclear(PQexec(c->conn, "ROLLBACK"));
}

static int tx_commit(pg_ctx *c, const char *what, char *errstr, size_t errstr_size)
{
	PGresult *r = PQexec(c->conn, "COMMIT");
	int rc = 0;
	if (!res_ok(r)) {
		char w[96];
		snprintf(w, sizeof(w), "commit of %s (outcome unknown if the connection died)", what);
		rc = pg_error(c->conn, r, c->where, c->schema, w, errstr, errstr_size);
		tx_abort(c);
	} else if (strcmp(PQcmdStatus(r), "COMMIT") != 0) {
		ackbox_errstr_set(errstr, errstr_size, "postgres at %s: %s was rolled back", c->where,
		                  what);
		rc = ACKBOX_ERR_STORE;
	}
	PQclear(r);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Open, schema, close                                                  */
/* ------------------------------------------------------------------ */

static void pg_close(void *vctx)
{
	pg_ctx *c = vctx;
	if (c->conn)
		PQfinish(c->conn);
	for (int i = 0; i < ST_COUNT; i++)
		free(c->sql[i]);
	for (int i = 0; i < N_ARRAYS; i++)
		free(c->arr[i].buf);
	free(c->setup_sql);
	free(c->where);
	free(c->schema);
	free(c->relay_id);
	memset(c, 0, sizeof(*c));
}

/* Reads ackbox_meta if present; refuses a foreign or newer schema. *have is
 * 1 when both tables exist. */
static int check_schema(PGconn *conn, const char *schema, const char *where, int *have,
                        char *errstr, size_t errstr_size)
{
	char meta[160], outbox[160], seq[160], name[64] = "", version[32] = "";
	const char *params[3];
	PGresult *r;
	int rc;

	*have = 0;
	snprintf(meta, sizeof(meta), "\"%s\".ackbox_meta", schema);
	snprintf(outbox, sizeof(outbox), "\"%s\".ackbox_outbox", schema);
	snprintf(seq, sizeof(seq), "\"%s\".ackbox_lease_seq", schema);
	params[0] = meta;
	params[1] = outbox;
	params[2] = seq;
	r = PQexecParams(conn,
	                 "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL,"
	                 " to_regclass($3) IS NOT NULL, EXISTS (SELECT 1 FROM pg_attribute WHERE"
	                 " attrelid = to_regclass($2) AND attname = 'payload_len' AND NOT"
	                 " attisdropped)",
	                 3, NULL, params, NULL, NULL, 0);
	if (!res_ok(r) || PQntuples(r) != 1) {
		rc = pg_error(conn, r, where, schema, "reading the schema", errstr, errstr_size);
		PQclear(r);
		return rc;
	}
	int have_meta = PQgetvalue(r, 0, 0)[0] == 't';
	int have_outbox = PQgetvalue(r, 0, 1)[0] == 't';
	int have_seq = PQgetvalue(r, 0, 2)[0] == 't';
	int have_payload_len = PQgetvalue(r, 0, 3)[0] == 't';
	PQclear(r);
	if (!have_meta) {
		if (have_outbox) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "postgres at %s: schema \"%s\" has an ackbox_outbox table but no "
			                  "ackbox_meta: not an ackbox outbox, refusing to touch it",
			                  where, schema);
			return ACKBOX_ERR_STORE_SCHEMA;
		}
		return 0;
	}
	char sql[200];
	snprintf(sql, sizeof(sql), "SELECT key, value FROM \"%s\".ackbox_meta", schema);
	r = PQexec(conn, sql);
	if (!res_ok(r)) {
		rc = pg_error(conn, r, where, schema, "reading ackbox_meta", errstr, errstr_size);
		PQclear(r);
		return rc;
	}
	for (int i = 0; i < PQntuples(r); i++) {
		const char *k = PQgetvalue(r, i, 0), *v = PQgetvalue(r, i, 1);
		if (strcmp(k, "schema") == 0)
			snprintf(name, sizeof(name), "%s", v);
		else if (strcmp(k, "version") == 0)
			snprintf(version, sizeof(version), "%s", v);
	}
	PQclear(r);
	if (strcmp(name, SCHEMA_NAME) != 0) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "postgres at %s: foreign schema '%s' in \"%s\".ackbox_meta (expected "
		                  "'%s')",
		                  where, name, schema, SCHEMA_NAME);
		return ACKBOX_ERR_STORE_SCHEMA;
	}
	if (atoi(version) > SCHEMA_VERSION || atoi(version) < 1) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "postgres at %s: outbox schema version %s in \"%s\" is not supported "
		                  "by this ackbox (it understands version %d); upgrade ackbox",
		                  where, version, schema, SCHEMA_VERSION);
		return ACKBOX_ERR_STORE_SCHEMA;
	}
	*have = have_outbox && have_seq && have_payload_len;
	return 0;
}

static int install(PGconn *conn, const char *schema, const char *where, char *errstr,
                   size_t errstr_size)
{
	char *sql = expand(install_sql, schema);
	PGresult *r;
	int rc = 0;
	if (!sql)
		return ACKBOX_ERR_NOMEM;
	r = PQexec(conn, sql);
	free(sql);
	if (!res_ok(r)) {
		char what[160];
		snprintf(what, sizeof(what), "creating the outbox tables in schema \"%s\"", schema);
		rc = pg_error(conn, r, where, schema, what, errstr, errstr_size);
	}
	PQclear(r);
	return rc;
}

/* Runs one of the order SQL texts (schema expanded) as one transaction. */
static int order_exec(pg_ctx *c, const char *tmpl, const char *what, char *errstr,
                      size_t errstr_size)
{
	char *sql = expand(tmpl, c->schema);
	PGresult *r;
	int rc = 0;
	if (!sql)
		return ACKBOX_ERR_NOMEM;
	r = PQexec(c->conn, sql);
	free(sql);
	if (!res_ok(r))
		rc = pg_error(c->conn, r, c->where, c->schema, what, errstr, errstr_size);
	PQclear(r);
	return rc;
}

/*
 * Finds whether the per-key order objects are there; a handle with
 * delivery.order=key installs them if not, and seeds ackbox_key_free.
 */
static int order_open(pg_ctx *c, char *errstr, size_t errstr_size)
{
	char name[160];
	const char *params[1] = {name};
	PGresult *r;
	int rc;
	snprintf(name, sizeof(name), "\"%s\".ackbox_key_free", c->schema);
	r = PQexecParams(c->conn, "SELECT to_regclass($1) IS NOT NULL", 1, NULL, params, NULL, NULL,
	                 0);
	if (!res_ok(r) || PQntuples(r) != 1) {
		rc = pg_error(c->conn, r, c->where, c->schema, "reading the schema", errstr,
		              errstr_size);
		PQclear(r);
		return rc;
	}
	c->order_installed = PQgetvalue(r, 0, 0)[0] == 't';
	PQclear(r);
	if (!c->ordered)
		return 0;
	if (!c->order_installed) {
		rc = order_exec(c, order_install_sql, "installing per-key order", errstr, errstr_size);
		if (rc)
			return rc;
		c->order_installed = 1;
	}
	return order_exec(c, order_seed_sql, "seeding per-key order", errstr, errstr_size);
}

static void ignore_notice(void *arg, const char *msg)
{
	(void)arg;
	(void)msg;
}

/* Splits "h1:1,[::1]:2,h3" into libpq's parallel host and port lists. */
static int split_hosts(const char *hosts, char **host_out, char **port_out)
{
	size_t n = strlen(hosts) + 1;
	char *h = calloc(1, n), *p = calloc(1, n + 16), *copy = strdup(hosts), *save = NULL;
	if (!h || !p || !copy) {
		free(h);
		free(p);
		free(copy);
		return -1;
	}
	int first = 1, any_port = 0;
	for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *port = NULL;
		if (tok[0] == '[') {
			char *rb = strchr(tok, ']');
			if (rb) {
				*rb = '\0';
				if (rb[1] == ':')
					port = rb + 2;
				tok++;
			}
		} else {
			char *colon = strrchr(tok, ':');
			if (colon) {
				*colon = '\0';
				port = colon + 1;
			}
		}
		if (!first) {
			strcat(h, ",");
			strcat(p, ",");
		}
		strcat(h, tok);
		if (port && *port) {
			strcat(p, port);
			any_port = 1;
		}
		first = 0;
	}
	free(copy);
	if (!any_port) {
		free(p);
		p = NULL;
	}
	*host_out = h;
	*port_out = p;
	return 0;
}

/*
 * The URL query: schema=NAME is ours, every other name must be a libpq
 * connection parameter (sslmode, target_session_attrs, host=/socket/dir...),
 * copied into keys/vals (at most 32; the caller frees them, also on error).
 */
static int parse_query(const ackbox_url *url, char *schema, size_t schema_size, char **keys,
                       char **vals, size_t *n, char *errstr, size_t errstr_size)
{
	char *q, *save = NULL;
	PQconninfoOption *defs;
	int rc;

	/* each parameter once and with a value; the names are checked below */
	rc = ackbox_url_query_check(url, "store.url", NULL, errstr, errstr_size);
	if (rc)
		return rc;
	q = strdup(url->query);
	defs = PQconndefaults();
	if (!q || !defs) {
		free(q);
		PQconninfoFree(defs);
		return ACKBOX_ERR_NOMEM;
	}
	for (char *tok = strtok_r(q, "&", &save); tok && rc == 0; tok = strtok_r(NULL, "&", &save)) {
		char name[64], val[1024];
		size_t nl = strcspn(tok, "=");
		int known = 0;
		if (nl == 0)
			continue;
		snprintf(name, sizeof(name), "%.*s", (int)nl, tok);
		if (!ackbox_url_query_get(url, name, val, sizeof(val)))
			val[0] = '\0';
		if (strcmp(name, "schema") == 0) {
			snprintf(schema, schema_size, "%s", val);
			continue;
		}
		for (PQconninfoOption *o = defs; o->keyword; o++)
			if (strcmp(o->keyword, name) == 0)
				known = 1;
		if (!known) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "store.url: unknown parameter '%s' (schema=NAME or a libpq "
			                  "connection parameter such as sslmode)",
			                  name);
			rc = ACKBOX_ERR_BAD_URL;
		} else if (*n == 32) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "store.url: more than 32 connection parameters");
			rc = ACKBOX_ERR_BAD_URL;
		} else {
			keys[*n] = strdup(name);
			vals[*n] = strdup(val);
			(*n)++;
		}
	}
	free(q);
	PQconninfoFree(defs);
	return rc;
}

static int pg_open(void *vctx, const ackbox_url *url, const ackbox_conf *conf, ackbox_sync sync,
                   char *errstr, size_t errstr_size)
{
	static atomic_uint instance;
	pg_ctx *c = vctx;
	const char *kw[48], *vals[48];
	char *host = NULL, *port = NULL, *dbname, schema[128] = "public", ct[32];
	char *qkeys[32], *qvals[32];
	size_t nq = 0, nk = 0;
	int64_t connect_ms = 5000, stmt_ms = 30000;
	const char *v;
	int rc = 0, have;

	c->conf = conf;
	c->durable = sync == ACKBOX_SYNC_FULL;
	if ((v = ackbox_conf_get(conf, "postgres.connect_timeout")))
		ackbox_parse_duration_ms(v, &connect_ms);
	if ((v = ackbox_conf_get(conf, "postgres.statement_timeout")))
		ackbox_parse_duration_ms(v, &stmt_ms);
	if ((v = ackbox_conf_get(conf, "postgres.relay_id")) && *v) {
		c->relay_id = strdup(v);
	} else {
		char hn[128] = "localhost";
		gethostname(hn, sizeof(hn) - 1);
		hn[sizeof(hn) - 1] = '\0';
		if (asprintf(&c->relay_id, "%s:%d:%u", hn, (int)getpid(),
		             atomic_fetch_add(&instance, 1) + 1) < 0)
			c->relay_id = NULL;
	}
	dbname = url->path[0] == '/' ? url->path + 1 : url->path;

	rc = parse_query(url, schema, sizeof(schema), qkeys, qvals, &nq, errstr, errstr_size);
	if (rc == 0 && c->relay_id &&
	    (!*c->relay_id || !utf8_ok((const unsigned char *)c->relay_id, strlen(c->relay_id)))) {
		ackbox_errstr_set(errstr, errstr_size, "postgres.relay_id: not valid UTF-8 text");
		rc = ACKBOX_ERR_BAD_VALUE;
	}
	if (rc == 0 && !schema_name_ok(schema)) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "store.url: schema '%s' is not a plain identifier (letters, digits, "
		                  "'_', at most 63 characters, not starting with a digit)",
		                  schema);
		rc = ACKBOX_ERR_BAD_URL;
	}
	if (rc == 0 && url->hosts[0] && split_hosts(url->hosts, &host, &port) != 0)
		rc = ACKBOX_ERR_NOMEM;
	if (rc) {
		for (size_t i = 0; i < nq; i++) {
			free(qkeys[i]);
			free(qvals[i]);
		}
		free(host);
		free(port);
		pg_close(c);
		return rc;
	}
	if (asprintf(&c->where, "%s%s/%s", url->hosts[0] ? url->hosts : "local socket",
	             url->hosts[0] && !strchr(url->hosts, ',') && url->port == 0 ? ":5432" : "",
	             dbname[0] ? dbname : "(default database)") < 0)
		c->where = NULL;
	c->schema = strdup(schema);
	for (int i = 0; i < ST_COUNT; i++)
		c->sql[i] = expand(stmt_sql[i], schema);
	if (asprintf(&c->setup_sql,
	             "SET synchronous_commit TO off; SET statement_timeout TO %lld; "
	             "SET client_min_messages TO warning",
	             (long long)stmt_ms) < 0)
		c->setup_sql = NULL;

	snprintf(ct, sizeof(ct), "%lld", (long long)((connect_ms + 999) / 1000));
#define KV(k, v_)                                                                                  \
	do {                                                                                       \
		kw[nk] = (k);                                                                      \
		vals[nk] = (v_);                                                                   \
		nk++;                                                                              \
	} while (0)
	if (host)
		KV("host", host);
	if (port)
		KV("port", port);
	if (url->user)
		KV("user", url->user);
	if (url->password)
		KV("password", url->password);
	if (dbname[0])
		KV("dbname", dbname);
	KV("connect_timeout", ct);
	KV("application_name", "ackbox");
	KV("client_encoding", "UTF8");
	for (size_t i = 0; i < nq; i++)
		KV(qkeys[i], qvals[i]);
	kw[nk] = NULL;
	vals[nk] = NULL;
#undef KV

	int oom = !c->relay_id || !c->where || !c->schema || !c->setup_sql;
	for (int i = 0; i < ST_COUNT; i++)
		oom |= !c->sql[i];
	for (size_t i = 0; i < nq; i++)
		oom |= !qkeys[i] || !qvals[i];
	if (!oom)
		c->conn = PQconnectdbParams(kw, vals, 0);
	for (size_t i = 0; i < nq; i++) {
		free(qkeys[i]);
		free(qvals[i]);
	}
	free(host);
	free(port);
	if (oom || !c->conn) {
		pg_close(c);
		return ACKBOX_ERR_NOMEM;
	}
	if (PQstatus(c->conn) != CONNECTION_OK) {
		rc = connect_error(c, errstr, errstr_size);
		pg_close(c);
		return rc;
	}
	/* a store has no log channel; NOTICEs would go to stderr */
	PQsetNoticeProcessor(c->conn, ignore_notice, NULL);
	{
		const char *order = ackbox_conf_get(conf, "delivery.order");
		c->ordered = order && strcmp(order, "key") == 0;
	}
	rc = check_schema(c->conn, c->schema, c->where, &have, errstr, errstr_size);
	v = ackbox_conf_get(conf, "store.create");
	if (rc == 0 && !have && v && strcmp(v, "never") == 0) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "postgres at %s: no ackbox outbox in schema \"%s\" (store.create=never: "
		                  "it is not created)",
		                  c->where, c->schema);
		rc = ACKBOX_ERR_STORE_SCHEMA;
	} else if (rc == 0 && !have && v && strcmp(v, "insert") == 0) {
		c->absent = 1; /* the first insert installs it, and per-key order */
		return 0;
	}
	if (rc == 0 && !have) {
		rc = install(c->conn, c->schema, c->where, errstr, errstr_size);
		if (rc == 0)
			rc = check_schema(c->conn, c->schema, c->where, &have, errstr, errstr_size);
	}
	if (rc == 0)
		rc = order_open(c, errstr, errstr_size);
	if (rc == 0)
		rc = session_init(c, errstr, errstr_size);
	if (rc) {
		pg_close(c);
		return rc;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Insert, claim, apply                                                 */
/* ------------------------------------------------------------------ */

static int check_text(pg_ctx *c, const char *what, const char *s, char *errstr,
                      size_t errstr_size)
{
	if (!s || utf8_ok((const unsigned char *)s, strlen(s)))
		return 0;
	ackbox_errstr_set(errstr, errstr_size,
	                  "postgres at %s: the %s is not valid UTF-8 and cannot be stored as text",
	                  c->where, what);
	return ACKBOX_ERR_INVALID;
}

static int arrays_failed(pg_ctx *c, int n)
{
	for (int i = 0; i < n; i++)
		if (c->arr[i].failed)
			return 1;
	return 0;
}

/* The tables a store.create=insert handle did not find, made by its first insert. */
static int materialize(pg_ctx *c, char *errstr, size_t errstr_size)
{
	int have = 0, rc = ensure(c, errstr, errstr_size);
	if (rc == 0)
		rc = install(c->conn, c->schema, c->where, errstr, errstr_size);
	if (rc == 0)
		rc = check_schema(c->conn, c->schema, c->where, &have, errstr, errstr_size);
	if (rc == 0 && !have) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "postgres at %s: the outbox tables in schema \"%s\" are still missing "
		                  "after creating them",
		                  c->where, c->schema);
		rc = ACKBOX_ERR_STORE_SCHEMA;
	}
	if (rc == 0)
		rc = order_open(c, errstr, errstr_size);
	if (rc)
		return rc;
	c->absent = 0;
	return session_init(c, errstr, errstr_size);
}

static int pg_insert(void *vctx, const ackbox_store_rec *recs, size_t n, char *errstr,
                     size_t errstr_size)
{
	pg_ctx *c = vctx;
	int rc;

	if (n == 0)
		return 0;
	for (size_t i = 0; i < n; i++) {
		if ((rc = check_text(c, "topic", recs[i].topic, errstr, errstr_size)) ||
		    (rc = check_text(c, "content type", recs[i].content_type, errstr, errstr_size)))
			return rc;
	}
	if (c->absent && (rc = materialize(c, errstr, errstr_size)) != 0)
		return rc;
	rc = tx_begin(c, c->durable, errstr, errstr_size);
	if (rc)
		return rc;
	for (size_t i = 0; i < n;) {
		size_t bytes = 0, j = i;
		pg_arr *a = c->arr;
		const char *vals[9];
		int lens[9];

		arr_begin(&a[0], OID_UUID);
		arr_begin(&a[1], OID_INT8);
		arr_begin(&a[2], OID_INT8);
		arr_begin(&a[3], OID_TEXT);
		arr_begin(&a[4], OID_BYTEA);
		arr_begin(&a[5], OID_TEXT);
		arr_begin(&a[6], OID_BYTEA);
		arr_begin(&a[7], OID_BYTEA);
		for (; j < n && (j == i || (bytes < INSERT_CHUNK_BYTES && j - i < INSERT_CHUNK_ROWS));
		     j++) {
			const ackbox_store_rec *r = &recs[j];
			arr_put(&a[0], r->id.b, 16);
			arr_put_i64(&a[1], r->created_ms);
			arr_put_i64(&a[2], r->due_ms);
			arr_put_str(&a[3], r->topic);
			arr_put(&a[4], r->key_len ? r->key : NULL, r->key_len);
			arr_put(&a[5], r->content_type, r->content_type ? strlen(r->content_type) : 0);
			arr_put(&a[6], r->headers_len ? r->headers : NULL, r->headers_len);
			arr_put(&a[7], r->payload_len ? r->payload : "", r->payload_len);
			bytes += r->payload_len + r->key_len + r->headers_len;
		}
		for (int k = 0; k < 8; k++) {
			arr_end(&a[k]);
			if (a[k].len > INT_MAX)
				a[k].failed = 1;
			vals[k] = a[k].buf;
			lens[k] = (int)a[k].len;
		}
		if (arrays_failed(c, 8)) {
			tx_abort(c);
			ackbox_errstr_set(errstr, errstr_size,
			                  "postgres at %s: out of memory building an insert of %zu rows",
			                  c->where, j - i);
			return ACKBOX_ERR_NOMEM;
		}
		vals[8] = c->relay_id;
		lens[8] = (int)strlen(c->relay_id);
		rc = run(c, ST_INSERT, 9, vals, lens, 0, NULL, "insert", errstr, errstr_size);
		if (rc) {
			tx_abort(c);
			return rc;
		}
		i = j;
	}
	return tx_commit(c, "the insert", errstr, errstr_size);
}

/* Fills row from row i of a ROW_COLS result (binary). 0, or -1 if malformed. */
static int read_row(const PGresult *r, int i, ackbox_store_row *row)
{
	memset(row, 0, sizeof(*row));
	if (PQgetlength(r, i, 0) != 16 || PQgetlength(r, i, 1) != 2 || PQgetlength(r, i, 2) != 4 ||
	    PQgetlength(r, i, 3) != 8 || PQgetlength(r, i, 4) != 8 || PQgetlength(r, i, 5) != 8 ||
	    PQgetlength(r, i, 12) != 4 || PQgetlength(r, i, 13) != 8)
		return -1;
	memcpy(row->id.b, PQgetvalue(r, i, 0), 16);
	row->state = (ackbox_state)get_be16(PQgetvalue(r, i, 1));
	row->attempts = get_be32(PQgetvalue(r, i, 2));
	row->created_ms = get_be64(PQgetvalue(r, i, 3));
	row->updated_ms = get_be64(PQgetvalue(r, i, 4));
	row->due_ms = get_be64(PQgetvalue(r, i, 5));
	row->topic = PQgetvalue(r, i, 6); /* libpq NUL-terminates binary values too */
	if (!PQgetisnull(r, i, 7)) {
		row->key = PQgetvalue(r, i, 7);
		row->key_len = (size_t)PQgetlength(r, i, 7);
	}
	if (!PQgetisnull(r, i, 8))
		row->content_type = PQgetvalue(r, i, 8);
	if (!PQgetisnull(r, i, 9)) {
		row->headers = PQgetvalue(r, i, 9);
		row->headers_len = (size_t)PQgetlength(r, i, 9);
	}
	row->payload = PQgetvalue(r, i, 10);
	row->payload_len = (size_t)PQgetlength(r, i, 10);
	if (!PQgetisnull(r, i, 11))
		row->last_error = PQgetvalue(r, i, 11);
	row->last_code = get_be32(PQgetvalue(r, i, 12));
	row->lease = (uint64_t)get_be64(PQgetvalue(r, i, 13));
	return 0;
}

/* Hands result rows to cb; returns how many were handed over. */
static int deliver_rows(const PGresult *r, ackbox_store_row_cb cb, void *opaque,
                        int *stopped)
{
	int n = 0;
	*stopped = 0;
	for (int i = 0; i < PQntuples(r); i++) {
		ackbox_store_row row;
		if (read_row(r, i, &row) != 0)
			continue; /* a column type changed under us: skip the row, never crash */
		n++;
		if (cb(&row, opaque)) {
			*stopped = 1;
			break;
		}
	}
	return n;
}

/* A row a claim found damaged, failed once the claim's result is read. */
typedef struct pg_damaged {
	ackbox_id id;
	uint64_t lease;
	char why[160];
} pg_damaged;

struct claim_arg {
	ackbox_store_row_cb cb;
	void *opaque;
	pg_damaged *damaged;
	size_t ndamaged, cap;
};

/* Whether row i's payload is no longer as long as when it was written. */
static int payload_damaged(const PGresult *r, int i, const ackbox_store_row *row, char *why,
                           size_t why_size)
{
	int64_t want;
	if (PQgetisnull(r, i, 14) || PQgetlength(r, i, 14) != 8)
		return 0; /* written before payload_len */
	want = get_be64(PQgetvalue(r, i, 14));
	if (want == (int64_t)row->payload_len)
		return 0;
	snprintf(why, why_size,
	         "stored bytes damaged: the payload is %zu bytes, %lld were stored (%s)",
	         row->payload_len, (long long)want,
	         (int64_t)row->payload_len < want ? "truncated" : "longer than written");
	return 1;
}

static int claim_row(const PGresult *r, void *arg)
{
	struct claim_arg *a = arg;
	ackbox_store_row row;
	char why[160];
	if (read_row(r, 0, &row) != 0)
		return 0; /* a column type changed under us: skip the row, never crash */
	if (payload_damaged(r, 0, &row, why, sizeof(why))) {
		if (a->ndamaged == a->cap) {
			size_t cap = a->cap ? 2 * a->cap : 8;
			pg_damaged *d = realloc(a->damaged, cap * sizeof(*d));
			if (!d)
				return 0; /* failed by a later claim, once its lease runs out */
			a->damaged = d;
			a->cap = cap;
		}
		a->damaged[a->ndamaged].id = row.id;
		a->damaged[a->ndamaged].lease = row.lease;
		snprintf(a->damaged[a->ndamaged].why, sizeof(a->damaged[0].why), "%s", why);
		a->ndamaged++;
		return 0;
	}
	return a->cb(&row, a->opaque);
}

/*
 * Fails the damaged rows a claim found, each with its reason, and logs each
 * once. The store does this itself, as the core can only be handed rows it
 * can trust, and it has no outcome for "the store's bytes are bad". A row
 * that could not be failed now keeps its lease and is found again.
 */
static void fail_damaged(pg_ctx *c, const pg_damaged *d, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char now_b[8], lease_b[8], idtext[ACKBOX_ID_STRLEN], err[256];
		const char *vals[4] = {(const char *)d[i].id.b, d[i].why, now_b, lease_b};
		int lens[4] = {16, (int)strlen(d[i].why), 8, 8};
		put_be64(now_b, (uint64_t)ackbox_wall_ms());
		put_be64(lease_b, d[i].lease);
		ackbox_id_format(&d[i].id, idtext);
		if (run(c, ST_DAMAGED, 4, vals, lens, 0, NULL, "failing a damaged row", err,
		        sizeof(err)) == 0)
			ackbox_store_log(c->conf, ACKBOX_LOG_ERROR, "postgres",
			                 "postgres at %s: message %s FAILED: %s", c->where, idtext,
			                 d[i].why);
		else
			ackbox_store_log(c->conf, ACKBOX_LOG_ERROR, "postgres",
			                 "postgres at %s: message %s is damaged (%s) and could not be "
			                 "failed: %s",
			                 c->where, idtext, d[i].why, err);
	}
}

static int pg_claim(void *vctx, int64_t now_ms, int64_t lease_until_ms, size_t limit,
                    ackbox_store_row_cb cb, void *opaque, char *errstr, size_t errstr_size)
{
	pg_ctx *c = vctx;
	char now_b[8], until_b[8], lim_b[8];
	const char *vals[4] = {now_b, until_b, c->relay_id, lim_b};
	int lens[4] = {8, 8, (int)strlen(c->relay_id), 8};
	struct claim_arg a = {cb, opaque, NULL, 0, 0};
	int rc;

	if (limit == 0)
		return 0;
	put_be64(now_b, (uint64_t)now_ms);
	put_be64(until_b, (uint64_t)lease_until_ms);
	put_be64(lim_b, (uint64_t)(limit > INT32_MAX ? INT32_MAX : limit));
	if (c->ordered) {
		/* heads first: new rows checked, freed keys promoted (autocommit
		 * each; see order_install_sql) */
		int rc = run(c, ST_CHECK, 0, NULL, NULL, 1, NULL, "claim (new keyed rows)", errstr,
		             errstr_size);
		if (rc == 0)
			rc = run(c, ST_PROMOTE, 0, NULL, NULL, 1, NULL, "claim (freed keys)", errstr,
			         errstr_size);
		if (rc)
			return rc;
		return run_rows(c, ST_CLAIM_ORDERED, 4, vals, lens, claim_row, &a, "claim", errstr,
		                errstr_size);
	}
	/* Autocommit, asynchronous commit: a lost lease only makes rows due
	 * early. Rows after a stop stay leased to us until the lease runs out. */
	rc = run_rows(c, ST_CLAIM, 4, vals, lens, claim_row, &a, "claim", errstr, errstr_size);
	fail_damaged(c, a.damaged, a.ndamaged);
	free(a.damaged);
	return rc;
}

/* Builds and runs the statement for one kind of change; *first is cleared
 * once something was sent. */
static int apply_kind(pg_ctx *c, const ackbox_store_change *ch, size_t n, ackbox_change_kind kind,
                      int64_t now, int *first, char *errstr, size_t errstr_size)
{
	pg_arr *a = c->arr;
	const char *vals[8];
	int lens[8], na, np, st;
	char now_b[8];
	size_t count = 0;

	switch (kind) {
	case ACKBOX_CHANGE_DELETE: st = ST_DELETE; na = 2; break;
	case ACKBOX_CHANGE_RETRY: st = ST_RETRY; na = 6; break;
	case ACKBOX_CHANGE_FAIL: st = ST_FAIL; na = 5; break;
	case ACKBOX_CHANGE_RELEASE: st = ST_RELEASE; na = 3; break;
	default: return 0;
	}
	arr_begin(&a[0], OID_UUID);
	arr_begin(&a[1], OID_INT8);
	if (kind == ACKBOX_CHANGE_RETRY || kind == ACKBOX_CHANGE_FAIL) {
		arr_begin(&a[2], OID_INT4);
		arr_begin(&a[3], kind == ACKBOX_CHANGE_RETRY ? OID_INT8 : OID_TEXT);
		arr_begin(&a[4], kind == ACKBOX_CHANGE_RETRY ? OID_TEXT : OID_INT4);
		if (kind == ACKBOX_CHANGE_RETRY)
			arr_begin(&a[5], OID_INT4);
	} else if (kind == ACKBOX_CHANGE_RELEASE) {
		arr_begin(&a[2], OID_INT8);
	}
	for (size_t i = 0; i < n; i++) {
		const ackbox_store_change *x = &ch[i];
		char *err = NULL;
		if (x->kind != kind)
			continue;
		count++;
		arr_put(&a[0], x->id.b, 16);
		arr_put_i64(&a[1], (int64_t)x->lease);
		if (kind == ACKBOX_CHANGE_RELEASE)
			arr_put_i64(&a[2], x->due_ms);
		if (kind != ACKBOX_CHANGE_RETRY && kind != ACKBOX_CHANGE_FAIL)
			continue;
		if (x->last_error && !(err = utf8_clean(x->last_error))) {
			a[0].failed = 1;
			break;
		}
		arr_put_i32(&a[2], x->attempts);
		if (kind == ACKBOX_CHANGE_RETRY) {
			arr_put_i64(&a[3], x->due_ms);
			arr_put(&a[4], err, err ? strlen(err) : 0);
			arr_put_i32(&a[5], x->last_code);
		} else {
			arr_put(&a[3], err, err ? strlen(err) : 0);
			arr_put_i32(&a[4], x->last_code);
		}
		free(err);
	}
	if (count == 0)
		return 0;
	for (int k = 0; k < na; k++) {
		arr_end(&a[k]);
		if (a[k].len > INT_MAX)
			a[k].failed = 1;
		vals[k] = a[k].buf;
		lens[k] = (int)a[k].len;
	}
	if (arrays_failed(c, na)) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "postgres at %s: out of memory building %zu state changes", c->where,
		                  count);
		return ACKBOX_ERR_NOMEM;
	}
	if (kind == ACKBOX_CHANGE_DELETE && c->order_installed) {
		/* in the delete's transaction (pg_apply opens one), before it */
		int rc = run(c, ST_KEYFREE_DELETE, 2, vals, lens, *first, NULL, "state change",
		             errstr, errstr_size);
		*first = 0;
		if (rc)
			return rc;
	}
	np = na;
	if (kind == ACKBOX_CHANGE_RETRY || kind == ACKBOX_CHANGE_FAIL) {
		put_be64(now_b, (uint64_t)now);
		vals[np] = now_b;
		lens[np] = 8;
		np++;
	}
	int rc = run(c, st, np, vals, lens, *first, NULL, "state change", errstr, errstr_size);
	*first = 0;
	return rc;
}

static int pg_apply(void *vctx, const ackbox_store_change *ch, size_t n, char *errstr,
                    size_t errstr_size)
{
	/* A late confirm can follow a retry of the same message in one batch:
	 * deletes go last so the final word wins. */
	static const ackbox_change_kind order[] = {ACKBOX_CHANGE_RELEASE, ACKBOX_CHANGE_RETRY,
	                                           ACKBOX_CHANGE_FAIL, ACKBOX_CHANGE_DELETE};
	pg_ctx *c = vctx;
	int64_t now = ackbox_wall_ms();
	int kinds = 0, seen[5] = {0}, rc = 0, first = 1;

	for (size_t i = 0; i < n; i++) {
		if (ch[i].kind >= 1 && ch[i].kind <= 4 && !seen[ch[i].kind]) {
			seen[ch[i].kind] = 1;
			kinds++;
		}
	}
	if (kinds == 0)
		return 0;
	/* One kind: one autocommit statement. Several: one transaction. Either
	 * way asynchronous commit (the session default): a lost change only
	 * makes a message be sent again. */
	if (seen[ACKBOX_CHANGE_DELETE] && c->order_installed)
		kinds++; /* the freed keys and the delete: one transaction */
	if (kinds > 1) {
		rc = tx_begin(c, 0, errstr, errstr_size);
		if (rc)
			return rc;
		first = 0;
	}
	for (size_t k = 0; k < sizeof(order) / sizeof(order[0]) && rc == 0; k++)
		if (seen[order[k]])
			rc = apply_kind(c, ch, n, order[k], now, &first, errstr, errstr_size);
	if (kinds > 1) {
		if (rc) {
			tx_abort(c);
			return rc;
		}
		rc = tx_commit(c, "state changes", errstr, errstr_size);
	}
	return rc;
}

/* ------------------------------------------------------------------ */
/* Recovery and administration                                          */
/* ------------------------------------------------------------------ */

static int pg_recover(void *vctx, int64_t now_ms, char *errstr, size_t errstr_size)
{
	pg_ctx *c = vctx;
	char now_b[8];
	const char *vals[2] = {now_b, c->relay_id};
	int lens[2] = {8, (int)strlen(c->relay_id)};
	put_be64(now_b, (uint64_t)now_ms);
	/* Rows another relay leased stay its until due_ms: that lease may be
	 * live, and when it is not, the rows are simply due then. */
	return run(c, ST_RECOVER, 2, vals, lens, 1, NULL, "recovery", errstr, errstr_size);
}

static int pg_counts(void *vctx, ackbox_counts *out, char *errstr, size_t errstr_size)
{
	pg_ctx *c = vctx;
	PGresult *r;
	int rc;
	memset(out, 0, sizeof(*out));
	rc = run(c, ST_COUNTS, 0, NULL, NULL, 1, &r, "counting", errstr, errstr_size);
	if (rc)
		return rc;
	if (PQntuples(r) == 1 && PQgetlength(r, 0, 0) == 8 && PQgetlength(r, 0, 3) == 8) {
		uint64_t pending = (uint64_t)get_be64(PQgetvalue(r, 0, 0));
		out->retrying = (uint64_t)get_be64(PQgetvalue(r, 0, 1));
		out->sending = pending >= out->retrying ? pending - out->retrying : 0;
		out->failed = (uint64_t)get_be64(PQgetvalue(r, 0, 2));
		out->oldest_pending_ms = get_be64(PQgetvalue(r, 0, 3));
	}
	PQclear(r);
	return 0;
}

static int pg_usage(void *vctx, uint64_t *messages, uint64_t *bytes, char *errstr,
                    size_t errstr_size)
{
	pg_ctx *c = vctx;
	PGresult *r;
	int rc = run(c, ST_USAGE, 0, NULL, NULL, 1, &r, "measuring", errstr, errstr_size);
	if (rc)
		return rc;
	if (PQntuples(r) != 1 || PQgetlength(r, 0, 0) != 8 || PQgetlength(r, 0, 1) != 8) {
		PQclear(r);
		ackbox_errstr_set(errstr, errstr_size, "%s: unexpected reply measuring the outbox",
		                  c->where);
		return ACKBOX_ERR_STORE;
	}
	*messages = (uint64_t)get_be64(PQgetvalue(r, 0, 0));
	*bytes = (uint64_t)get_be64(PQgetvalue(r, 0, 1));
	PQclear(r);
	return 0;
}

static int pg_has_pending(void *vctx, char *errstr, size_t errstr_size)
{
	pg_ctx *c = vctx;
	PGresult *r;
	int rc = run(c, ST_HAS_PENDING, 0, NULL, NULL, 1, &r, "checking for pending rows", errstr,
	             errstr_size);
	if (rc)
		return rc;
	rc = PQntuples(r) == 1 && PQgetlength(r, 0, 0) == 1 && PQgetvalue(r, 0, 0)[0] != 0;
	PQclear(r);
	return rc;
}

static int pg_list(void *vctx, int state, size_t limit, ackbox_store_row_cb cb, void *opaque,
                   char *errstr, size_t errstr_size)
{
	pg_ctx *c = vctx;
	char st_b[4], after[16] = {0}, lim_b[8];
	const char *vals[3] = {st_b, after, lim_b};
	int lens[3] = {4, 16, 8};
	int total = 0;

	put_be32(st_b, (uint32_t)(state < 0 ? -1 : state));
	/* keyset pages in id order: bounded memory however large the table */
	for (;;) {
		size_t want = LIST_PAGE;
		PGresult *r;
		int rc, got, stopped;
		if (limit && limit - (size_t)total < want)
			want = limit - (size_t)total;
		put_be64(lim_b, want);
		rc = run(c, ST_LIST, 3, vals, lens, 1, &r, "list", errstr, errstr_size);
		if (rc)
			return rc;
		got = PQntuples(r);
		if (got > 0 && PQgetlength(r, got - 1, 0) == 16)
			memcpy(after, PQgetvalue(r, got - 1, 0), 16);
		total += deliver_rows(r, cb, opaque, &stopped);
		PQclear(r);
		if (stopped || (size_t)got < want || (limit && (size_t)total >= limit))
			return total;
	}
}

static int pg_get(void *vctx, const ackbox_id *id, ackbox_store_row_cb cb, void *opaque,
                  char *errstr, size_t errstr_size)
{
	pg_ctx *c = vctx;
	const char *vals[1] = {(const char *)id->b};
	int lens[1] = {16}, stopped, n;
	PGresult *r;
	int rc = run(c, ST_GET, 1, vals, lens, 1, &r, "get", errstr, errstr_size);
	if (rc)
		return rc;
	n = deliver_rows(r, cb, opaque, &stopped);
	PQclear(r);
	if (n == 0) {
		char idstr[ACKBOX_ID_STRLEN];
		ackbox_id_format(id, idstr);
		ackbox_errstr_set(errstr, errstr_size, "no message %s in postgres at %s (schema \"%s\")",
		                  idstr, c->where, c->schema);
		return ACKBOX_ERR_NOT_FOUND;
	}
	return 0;
}

/* Administrative changes commit durably: an operator expects them to stick. */
/* Runs st in a durable transaction; first `pre` (-1: none) with the same
 * parameters. Returns st's row count. */
static int admin_run_pre(pg_ctx *c, int pre, int st, int nparams, const char *const *vals,
                         const int *lens, const char *what, char *errstr, size_t errstr_size)
{
	PGresult *r;
	int rc = tx_begin(c, 1, errstr, errstr_size), n;
	if (rc)
		return rc;
	if (pre >= 0 && (rc = run(c, pre, nparams, vals, lens, 0, NULL, what, errstr, errstr_size))) {
		tx_abort(c);
		return rc;
	}
	rc = run(c, st, nparams, vals, lens, 0, &r, what, errstr, errstr_size);
	if (rc) {
		tx_abort(c);
		return rc;
	}
	n = atoi(PQcmdTuples(r));
	PQclear(r);
	rc = tx_commit(c, what, errstr, errstr_size);
	return rc ? rc : n;
}

static int admin_run(pg_ctx *c, int st, int nparams, const char *const *vals, const int *lens,
                     const char *what, char *errstr, size_t errstr_size)
{
	return admin_run_pre(c, -1, st, nparams, vals, lens, what, errstr, errstr_size);
}

static int pg_requeue(void *vctx, const ackbox_id *ids, size_t n, int64_t now_ms, char *errstr,
                      size_t errstr_size)
{
	pg_ctx *c = vctx;
	char now_b[8];
	put_be64(now_b, (uint64_t)now_ms);
	if (!ids) {
		const char *vals[1] = {now_b};
		int lens[1] = {8};
		return admin_run(c, ST_REQUEUE_ALL, 1, vals, lens, "requeue", errstr, errstr_size);
	}
	if (n == 0)
		return 0;
	arr_begin(&c->arr[0], OID_UUID);
	for (size_t i = 0; i < n; i++)
		arr_put(&c->arr[0], ids[i].b, 16);
	arr_end(&c->arr[0]);
	if (c->arr[0].failed || c->arr[0].len > INT_MAX)
		return ACKBOX_ERR_NOMEM;
	const char *vals[2] = {c->arr[0].buf, now_b};
	int lens[2] = {(int)c->arr[0].len, 8};
	return admin_run(c, ST_REQUEUE_IDS, 2, vals, lens, "requeue", errstr, errstr_size);
}

static int pg_purge(void *vctx, int64_t older_than_ms, char *errstr, size_t errstr_size)
{
	pg_ctx *c = vctx;
	char b[8];
	const char *vals[1] = {b};
	int lens[1] = {8};
	put_be64(b, (uint64_t)older_than_ms);
	return admin_run_pre(c, c->order_installed ? ST_KEYFREE_PURGE : -1, ST_PURGE, 1, vals, lens,
	                     "purge", errstr, errstr_size);
}

static int pg_force(void *vctx, const ackbox_store_change *ch, int64_t now_ms, char *errstr,
                    size_t errstr_size)
{
	pg_ctx *c = vctx;
	char code_b[4], now_b[8], *err = NULL;
	const char *vals[4] = {(const char *)ch->id.b, NULL, code_b, now_b};
	int lens[4] = {16, 0, 4, 8}, rc;

	if (ch->kind != ACKBOX_CHANGE_FAIL && ch->kind != ACKBOX_CHANGE_DELETE) {
		ackbox_errstr_set(errstr, errstr_size, "postgres at %s: force takes FAIL or DELETE",
		                  c->where);
		return ACKBOX_ERR_INVALID;
	}
	if (ch->kind == ACKBOX_CHANGE_DELETE) {
		rc = admin_run_pre(c, c->order_installed ? ST_KEYFREE_FORCE : -1, ST_FORCE_DELETE, 1,
		                   vals, lens, "force", errstr, errstr_size);
	} else {
		if (ch->last_error && !(err = utf8_clean(ch->last_error)))
			return ACKBOX_ERR_NOMEM;
		vals[1] = err; /* NULL: SQL NULL */
		lens[1] = err ? (int)strlen(err) : 0;
		put_be32(code_b, (uint32_t)ch->last_code);
		put_be64(now_b, (uint64_t)now_ms);
		rc = admin_run(c, ST_FORCE_FAIL, 4, vals, lens, "force", errstr, errstr_size);
		free(err);
	}
	if (rc == 0) {
		char idstr[ACKBOX_ID_STRLEN];
		ackbox_id_format(&ch->id, idstr);
		ackbox_errstr_set(errstr, errstr_size, "no message %s in postgres at %s (schema \"%s\")",
		                  idstr, c->where, c->schema);
		return ACKBOX_ERR_NOT_FOUND;
	}
	return rc < 0 ? rc : 1;
}

/* Keys whose head (oldest row) is FAILED; none if per-key order was never installed. */
static int pg_blocked_keys(void *vctx, size_t limit, ackbox_store_blocked_cb cb, void *opaque,
                           char *errstr, size_t errstr_size)
{
	pg_ctx *c = vctx;
	char lim_b[8];
	const char *vals[1] = {lim_b};
	int lens[1] = {8}, n = 0, rc;
	PGresult *r;
	if (!c->order_installed)
		return 0;
	put_be64(lim_b, (uint64_t)(limit && limit < INT64_MAX ? limit : INT64_MAX));
	rc = run(c, ST_BLOCKED, 1, vals, lens, 1, &r, "blocked keys", errstr, errstr_size);
	if (rc)
		return rc;
	for (int i = 0; i < PQntuples(r); i++) {
		ackbox_store_blocked b;
		if (PQgetlength(r, i, 1) != 16 || PQgetlength(r, i, 2) != 8)
			continue;
		memset(&b, 0, sizeof(b));
		b.key = PQgetvalue(r, i, 0);
		b.key_len = (size_t)PQgetlength(r, i, 0);
		memcpy(b.failed_id.b, PQgetvalue(r, i, 1), 16);
		b.waiting = (uint64_t)get_be64(PQgetvalue(r, i, 2));
		n++;
		if (cb(&b, opaque))
			break;
	}
	PQclear(r);
	return n;
}

/* "postgresql://" is libpq's own spelling of a connection URL. */
static const char *const pg_aliases[] = {"postgresql", NULL};

const ackbox_store_ops ackbox_postgres_store = {
	.abi_version = ACKBOX_STORE_ABI_VERSION,
	.struct_size = sizeof(ackbox_store_ops),
	.scheme = "postgres",
	.caps = 0,
	.ctx_size = sizeof(pg_ctx),
	.props = pg_props,
	.description = "PostgreSQL table shared by several relays (leases with fencing)",
	.open = pg_open,
	.close = pg_close,
	.insert = pg_insert,
	.claim = pg_claim,
	.apply = pg_apply,
	.recover = pg_recover,
	.counts = pg_counts,
	.list = pg_list,
	.get = pg_get,
	.requeue = pg_requeue,
	.purge = pg_purge,
	.has_pending = pg_has_pending,
	.force = pg_force,
	.blocked_keys = pg_blocked_keys,
	.aliases = pg_aliases,
	.usage = pg_usage,
};

/* ------------------------------------------------------------------ */
/* The transactional entry point                                        */
/* ------------------------------------------------------------------ */

/* "host:port/db" of an application's connection, for messages. */
static void conn_where(PGconn *conn, char *out, size_t out_size)
{
	const char *h = PQhost(conn), *p = PQport(conn), *d = PQdb(conn);
	snprintf(out, out_size, "%s:%s/%s", h && *h ? h : "local socket", p && *p ? p : "5432",
	         d ? d : "");
}

static int app_conn_check(PGconn *conn, const char *schema, const char *fn, char *errstr,
                          size_t errstr_size)
{
	PGTransactionStatusType ts;
	if (!schema_name_ok(schema)) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: schema '%s' is not a plain identifier (letters, digits, '_')", fn,
		                  schema);
		return ACKBOX_ERR_INVALID;
	}
	if (PQstatus(conn) != CONNECTION_OK) {
		ackbox_errstr_set(errstr, errstr_size, "%s: the connection is not open", fn);
		return ACKBOX_ERR_INVALID;
	}
	ts = PQtransactionStatus(conn);
	if (ts == PQTRANS_INERROR) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: the connection's transaction is aborted (roll it back first)",
		                  fn);
		return ACKBOX_ERR_INVALID;
	}
	if (ts == PQTRANS_ACTIVE) {
		ackbox_errstr_set(errstr, errstr_size, "%s: the connection is busy with a query", fn);
		return ACKBOX_ERR_INVALID;
	}
	return 0;
}

int ackbox_pg_install_schema(PGconn *conn, const char *schema, char *errstr, size_t errstr_size)
{
	char where[300];
	int rc;
	if (!conn) {
		ackbox_errstr_set(errstr, errstr_size, "ackbox_pg_install_schema: NULL connection");
		return ACKBOX_ERR_INVALID;
	}
	if (!schema)
		schema = "public";
	rc = app_conn_check(conn, schema, "ackbox_pg_install_schema", errstr, errstr_size);
	if (rc)
		return rc;
	conn_where(conn, where, sizeof(where));
	return install(conn, schema, where, errstr, errstr_size);
}

int ackbox_pg_enqueue(PGconn *conn, const ackbox_msg *m, ackbox_id *id_out, const char *schema,
                      char *errstr, size_t errstr_size)
{
	char where[300], table[160], *sql = NULL, *hbuf = NULL, now_b[8];
	const char *vals[8];
	int lens[8], fmts[8] = {1, 1, 1, 1, 1, 1, 1, 1}, rc;
	ackbox_id id;
	size_t hl;
	PGresult *r;

	if (!conn || !m || !m->topic || !*m->topic || (!m->payload && m->payload_len) ||
	    (!m->key && m->key_len) || (!m->headers && m->header_count)) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "ackbox_pg_enqueue: NULL connection, message or topic, or NULL data "
		                  "with a length");
		return ACKBOX_ERR_INVALID;
	}
	if (!schema)
		schema = "public";
	rc = app_conn_check(conn, schema, "ackbox_pg_enqueue", errstr, errstr_size);
	if (rc)
		return rc;
	if (!utf8_ok((const unsigned char *)m->topic, strlen(m->topic)) ||
	    (m->content_type &&
	     !utf8_ok((const unsigned char *)m->content_type, strlen(m->content_type)))) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "ackbox_pg_enqueue: the topic or content type is not valid UTF-8");
		return ACKBOX_ERR_INVALID;
	}
	if (m->payload_len > INT_MAX || m->key_len > INT_MAX) {
		ackbox_errstr_set(errstr, errstr_size, "ackbox_pg_enqueue: message too large");
		return ACKBOX_ERR_TOO_LARGE;
	}
	conn_where(conn, where, sizeof(where));

	/* first use on this database (or on tables from before payload_len):
	 * the tables are created inside the application's transaction, so they
	 * roll back with it too */
	snprintf(table, sizeof(table), "\"%s\".ackbox_outbox", schema);
	vals[0] = table;
	r = PQexecParams(conn,
	                 "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid ="
	                 " to_regclass($1) AND attname = 'payload_len' AND NOT attisdropped)",
	                 1, NULL, vals, NULL, NULL, 0);
	if (!res_ok(r) || PQntuples(r) != 1) {
		rc = pg_error(conn, r, where, schema, "looking up the outbox table", errstr,
		              errstr_size);
		PQclear(r);
		return rc;
	}
	int have = PQgetvalue(r, 0, 0)[0] == 't';
	PQclear(r);
	if (!have && (rc = install(conn, schema, where, errstr, errstr_size)) != 0)
		return rc;

	hl = ackbox_headers_encoded_size(m->headers, m->header_count);
	if (hl) {
		hbuf = malloc(hl);
		if (!hbuf)
			return ACKBOX_ERR_NOMEM;
		ackbox_headers_encode(m->headers, m->header_count, (uint8_t *)hbuf);
	}
	sql = expand("INSERT INTO @S.ackbox_outbox(id, state, attempts, created_ms, updated_ms,"
	             " due_ms, topic, msg_key, content_type, headers, payload, lease, payload_len)"
	             " VALUES($1::uuid, 0, 0, $2::int8, $2::int8, $2::int8, $3::text, $4::bytea,"
	             " $5::text, $6::bytea, $7::bytea, 0, length($7::bytea))",
	             schema);
	if (!sql) {
		free(hbuf);
		return ACKBOX_ERR_NOMEM;
	}
	ackbox_id_new(&id);
	put_be64(now_b, (uint64_t)ackbox_wall_ms());
	vals[0] = (const char *)id.b;
	lens[0] = 16;
	vals[1] = now_b;
	lens[1] = 8;
	vals[2] = m->topic;
	lens[2] = (int)strlen(m->topic);
	vals[3] = m->key_len ? m->key : NULL;
	lens[3] = (int)m->key_len;
	vals[4] = m->content_type;
	lens[4] = m->content_type ? (int)strlen(m->content_type) : 0;
	vals[5] = hl ? hbuf : NULL;
	lens[5] = (int)hl;
	vals[6] = m->payload_len ? m->payload : "";
	lens[6] = (int)m->payload_len;
	r = PQexecParams(conn, sql, 7, NULL, vals, lens, fmts, 1);
	free(sql);
	free(hbuf);
	if (!res_ok(r)) {
		rc = pg_error(conn, r, where, schema, "outbox insert", errstr, errstr_size);
		PQclear(r);
		return rc;
	}
	PQclear(r);
	if (id_out)
		*id_out = id;
	return 0;
}
