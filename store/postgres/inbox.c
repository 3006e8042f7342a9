/*
 * inbox.c - the consumer inbox on PostgreSQL (include/ackbox/inbox.h): one
 * row per (consumer, message id) written through the caller's connection in
 * its own transaction, so a message's effect and its record commit together.
 */
#define _GNU_SOURCE
#include <endian.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include <ackbox/inbox.h>
#include <ackbox/postgres.h>
#include <ackbox/store.h>

#define ADVISORY_CLASS "44208" /* as the outbox's install: 0xACB0 */

/* Created object by object inside a DO block, so that a role without
 * CREATE privileges can use tables an owner installed. */
static const char install_tmpl[] =
    "SELECT pg_advisory_xact_lock(" ADVISORY_CLASS ", hashtext('%s'));"
    "DO $ackbox$ BEGIN "
    "IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = '%s') THEN "
    " CREATE SCHEMA \"%s\"; "
    "END IF; "
    "IF to_regclass('\"%s\".ackbox_inbox') IS NULL THEN "
    " CREATE TABLE \"%s\".ackbox_inbox("
    "  consumer text NOT NULL,"
    "  id uuid NOT NULL,"
    "  seen_ms bigint NOT NULL,"
    "  PRIMARY KEY (consumer, id)); "
    " CREATE INDEX ackbox_inbox_seen ON \"%s\".ackbox_inbox(consumer, seen_ms); "
    "END IF; "
    "END $ackbox$;";

static const char record_tmpl[] =
    "INSERT INTO \"%s\".ackbox_inbox(consumer, id, seen_ms) VALUES($1::text, $2::uuid, $3::int8)"
    " ON CONFLICT (consumer, id) DO NOTHING";

/* SKIP LOCKED: two consumers cleaning at once share the work instead of
 * waiting for each other's batch. */
static const char cleanup_tmpl[] =
    "DELETE FROM \"%s\".ackbox_inbox WHERE (consumer, id) IN ("
    " SELECT consumer, id FROM \"%s\".ackbox_inbox WHERE consumer = $1::text"
    " AND seen_ms < $2::int8 ORDER BY seen_ms LIMIT $3::int8 FOR UPDATE SKIP LOCKED)";

static int schema_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 63 || (s[0] >= '0' && s[0] <= '9'))
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!(s[i] == '_' || (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z') ||
		      (s[i] >= 'A' && s[i] <= 'Z')))
			return 0;
	return 1;
}

/* Checks what every entry point needs; `want` is the transaction status
 * the call requires (PQTRANS_INTRANS, PQTRANS_IDLE, or -1 for either). */
static int conn_check(PGconn *conn, const char *schema, const char *consumer, int want,
                      const char *fn, char *errstr, size_t errstr_size)
{
	PGTransactionStatusType ts;
	if (!conn) {
		ackbox_errstr_set(errstr, errstr_size, "%s: NULL connection", fn);
		return ACKBOX_ERR_INVALID;
	}
	if (!schema_ok(schema)) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: schema '%s' is not a plain identifier (letters, digits, '_')", fn,
		                  schema);
		return ACKBOX_ERR_INVALID;
	}
	if (consumer && (!*consumer || strlen(consumer) > ACKBOX_INBOX_CONSUMER_MAX)) {
		ackbox_errstr_set(errstr, errstr_size, "%s: the consumer name must be 1 to %d bytes",
		                  fn, ACKBOX_INBOX_CONSUMER_MAX);
		return ACKBOX_ERR_INVALID;
	}
	if (PQstatus(conn) != CONNECTION_OK) {
		ackbox_errstr_set(errstr, errstr_size, "%s: the connection is not open", fn);
		return ACKBOX_ERR_INVALID;
	}
	ts = PQtransactionStatus(conn);
	if (ts == PQTRANS_INERROR) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: the connection's transaction is aborted (roll it back first)", fn);
		return ACKBOX_ERR_INVALID;
	}
	if (ts == PQTRANS_ACTIVE) {
		ackbox_errstr_set(errstr, errstr_size, "%s: the connection is busy with a query", fn);
		return ACKBOX_ERR_INVALID;
	}
	if (want == PQTRANS_INTRANS && ts != PQTRANS_INTRANS) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: no transaction is open on this connection; call it between "
		                  "your BEGIN and COMMIT, with the effect",
		                  fn);
		return ACKBOX_ERR_INVALID;
	}
	if (want == PQTRANS_IDLE && ts != PQTRANS_IDLE) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: a transaction is open on this connection; clean up outside it "
		                  "(each call commits one batch on its own)",
		                  fn);
		return ACKBOX_ERR_INVALID;
	}
	return 0;
}

/* Maps a failed statement to an ackbox error and one line. */
static int inbox_error(PGconn *conn, const PGresult *res, const char *schema, const char *what,
                       char *errstr, size_t errstr_size)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	const char *hint = "";
	int code = ACKBOX_ERR_STORE;
	char line[300];

	snprintf(line, sizeof(line), "%s", msg && *msg ? msg : PQerrorMessage(conn));
	line[strcspn(line, "\n")] = '\0';
	if (PQstatus(conn) == CONNECTION_BAD) {
		ackbox_errstr_set(errstr, errstr_size, "postgres inbox: connection lost during %s: %s",
		                  what, line);
		return ACKBOX_ERR_STORE;
	}
	if (!state)
		state = "";
	if (strcmp(state, "42P01") == 0 || strcmp(state, "3F000") == 0 ||
	    strcmp(state, "42703") == 0) {
		code = ACKBOX_ERR_STORE_SCHEMA;
		hint = " (no inbox table: call ackbox_pg_inbox_install_schema once, then roll back "
		       "this transaction and retry)";
	} else if (strcmp(state, "42501") == 0 || strcmp(state, "25006") == 0) {
		code = ACKBOX_ERR_STORE_READONLY;
		hint = " (the role needs SELECT, INSERT, DELETE on ackbox_inbox, or a read-write "
		       "server)";
	} else if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 ||
	           strcmp(state, "55P03") == 0 || strcmp(state, "57014") == 0) {
		code = ACKBOX_ERR_STORE_LOCKED;
		hint = " (lock conflict or serialization failure: roll back and retry the "
		       "transaction)";
	} else if (strcmp(state, "53100") == 0) {
		code = ACKBOX_ERR_STORE_FULL;
	} else if (strcmp(state, "22021") == 0) {
		code = ACKBOX_ERR_INVALID;
		hint = " (the consumer name is not valid in the database encoding)";
	}
	ackbox_errstr_set(errstr, errstr_size, "postgres inbox in schema \"%s\": %s failed: %s%s%s%s%s",
	                  schema, what, line, *state ? " [SQLSTATE " : "", state, *state ? "]" : "",
	                  hint);
	return code;
}

static char *sql_for(const char *tmpl, const char *schema)
{
	char *sql = NULL;
	/* every %s in a template is the schema name */
	if (asprintf(&sql, tmpl, schema, schema, schema, schema, schema, schema) < 0)
		return NULL;
	return sql;
}

int ackbox_pg_inbox_install_schema(PGconn *conn, const char *schema, char *errstr,
                                   size_t errstr_size)
{
	char *sql;
	PGresult *r;
	int rc;

	if (!schema)
		schema = "public";
	rc = conn_check(conn, schema, NULL, -1, "ackbox_pg_inbox_install_schema", errstr,
	                errstr_size);
	if (rc)
		return rc;
	if (!(sql = sql_for(install_tmpl, schema)))
		return ACKBOX_ERR_NOMEM;
	r = PQexec(conn, sql);
	free(sql);
	rc = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK
	         ? 0
	         : inbox_error(conn, r, schema, "creating the inbox table", errstr, errstr_size);
	PQclear(r);
	return rc;
}

int ackbox_pg_inbox_record(PGconn *conn, const char *consumer, const ackbox_id *id,
                           const char *schema, char *errstr, size_t errstr_size)
{
	const char *vals[3];
	int lens[3], fmts[3] = {0, 1, 1}, rc;
	uint64_t now_be;
	char *sql;
	PGresult *r;

	if (!schema)
		schema = "public";
	if (!consumer || !id) {
		ackbox_errstr_set(errstr, errstr_size, "ackbox_pg_inbox_record: NULL consumer or id");
		return ACKBOX_ERR_INVALID;
	}
	rc = conn_check(conn, schema, consumer, PQTRANS_INTRANS, "ackbox_pg_inbox_record", errstr,
	                errstr_size);
	if (rc)
		return rc;
	if (!(sql = sql_for(record_tmpl, schema)))
		return ACKBOX_ERR_NOMEM;
	now_be = htobe64((uint64_t)ackbox_wall_ms());
	vals[0] = consumer;
	lens[0] = 0;
	vals[1] = (const char *)id->b;
	lens[1] = 16;
	vals[2] = (const char *)&now_be;
	lens[2] = 8;
	r = PQexecParams(conn, sql, 3, NULL, vals, lens, fmts, 0);
	free(sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		rc = inbox_error(conn, r, schema, "inbox insert", errstr, errstr_size);
		PQclear(r);
		return rc;
	}
	rc = strcmp(PQcmdTuples(r), "1") == 0 ? ACKBOX_INBOX_FIRST : ACKBOX_INBOX_DUPLICATE;
	PQclear(r);
	return rc;
}

int ackbox_pg_inbox_cleanup(PGconn *conn, const char *consumer, int64_t window_ms,
                            size_t max_rows, const char *schema, char *errstr,
                            size_t errstr_size)
{
	const char *vals[3];
	int lens[3], fmts[3] = {0, 1, 1}, rc;
	uint64_t before_be, max_be;
	char *sql;
	PGresult *r;

	if (!schema)
		schema = "public";
	if (!consumer || window_ms < 0 || max_rows > (size_t)INT32_MAX) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "ackbox_pg_inbox_cleanup: NULL consumer, a negative window or more "
		                  "than 2^31 rows");
		return ACKBOX_ERR_INVALID;
	}
	rc = conn_check(conn, schema, consumer, PQTRANS_IDLE, "ackbox_pg_inbox_cleanup", errstr,
	                errstr_size);
	if (rc)
		return rc;
	if (window_ms == 0)
		window_ms = ACKBOX_INBOX_WINDOW_DEFAULT_MS;
	if (max_rows == 0)
		max_rows = ACKBOX_INBOX_BATCH_DEFAULT;
	if (!(sql = sql_for(cleanup_tmpl, schema)))
		return ACKBOX_ERR_NOMEM;
	before_be = htobe64((uint64_t)(ackbox_wall_ms() - window_ms));
	max_be = htobe64((uint64_t)max_rows);
	vals[0] = consumer;
	lens[0] = 0;
	vals[1] = (const char *)&before_be;
	lens[1] = 8;
	vals[2] = (const char *)&max_be;
	lens[2] = 8;
	r = PQexecParams(conn, sql, 3, NULL, vals, lens, fmts, 0);
	free(sql);
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
		/* no inbox table yet: nothing recorded, nothing to delete (the
		 * statement ran alone, so no transaction of the caller's aborted) */
		rc = state && strcmp(state, "42P01") == 0
		         ? 0
		         : inbox_error(conn, r, schema, "inbox cleanup", errstr, errstr_size);
		PQclear(r);
		return rc;
	}
	rc = atoi(PQcmdTuples(r));
	PQclear(r);
	return rc;
}
