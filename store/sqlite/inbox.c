/*
 * inbox.c - the consumer inbox on SQLite (include/ackbox/inbox.h): one row
 * per (consumer, message id) written in the caller's own transaction, so a
 * message's effect and the record of having applied it commit together.
 */
#define _GNU_SOURCE
#include <string.h>

#include <sqlite3.h>

#include <ackbox/inbox.h>
#include <ackbox/sqlite.h>
#include <ackbox/store.h>

#include "sqlite_int.h"

/* WITHOUT ROWID: the primary key is the table, one B-tree insert per
 * message. The second index serves the cleanup's "oldest first" scan. */
static const char inbox_schema_sql[] =
    "CREATE TABLE IF NOT EXISTS ackbox_inbox("
    " consumer TEXT NOT NULL,"
    " id BLOB NOT NULL,"
    " seen_ms INTEGER NOT NULL,"
    " PRIMARY KEY(consumer, id)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS ackbox_inbox_seen ON ackbox_inbox(consumer, seen_ms);";

static const char record_sql[] = "INSERT INTO ackbox_inbox(consumer, id, seen_ms) VALUES(?1, ?2, ?3)"
                                 " ON CONFLICT(consumer, id) DO NOTHING";

static const char cleanup_sql[] =
    "DELETE FROM ackbox_inbox WHERE consumer = ?1 AND id IN ("
    " SELECT id FROM ackbox_inbox WHERE consumer = ?1 AND seen_ms < ?2"
    " ORDER BY seen_ms LIMIT ?3)";

static const char *db_path(sqlite3 *db)
{
	const char *p = sqlite3_db_filename(db, "main");
	return p && *p ? p : ":memory:";
}

static int consumer_ok(const char *fn, const char *consumer, char *errstr, size_t errstr_size)
{
	if (!consumer || !*consumer || strlen(consumer) > ACKBOX_INBOX_CONSUMER_MAX) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: the consumer name must be 1 to %d bytes", fn,
		                  ACKBOX_INBOX_CONSUMER_MAX);
		return ACKBOX_ERR_INVALID;
	}
	return 0;
}

int ackbox_sqlite_inbox_install_schema(sqlite3 *db, char *errstr, size_t errstr_size)
{
	int rc;
	if (!db) {
		ackbox_errstr_set(errstr, errstr_size, "ackbox_sqlite_inbox_install_schema: NULL db");
		return ACKBOX_ERR_INVALID;
	}
	rc = sqlite3_exec(db, inbox_schema_sql, NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		return sq_error(db, rc, db_path(db), "creating the inbox table", errstr, errstr_size);
	return 0;
}

int ackbox_sqlite_inbox_record(sqlite3 *db, const char *consumer, const ackbox_id *id,
                               char *errstr, size_t errstr_size)
{
	static const char fn[] = "ackbox_sqlite_inbox_record";
	sqlite3_stmt *s = NULL;
	int rc;

	if (!db || !id) {
		ackbox_errstr_set(errstr, errstr_size, "%s: NULL db or id", fn);
		return ACKBOX_ERR_INVALID;
	}
	if ((rc = consumer_ok(fn, consumer, errstr, errstr_size)) != 0)
		return rc;
	/* Outside a transaction the record would commit on its own, before the
	 * effect: a crash in between would make the redelivery a DUPLICATE and
	 * the effect would never happen. */
	if (sqlite3_get_autocommit(db)) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: no transaction is open on this connection; call it between "
		                  "your BEGIN and COMMIT, with the effect",
		                  fn);
		return ACKBOX_ERR_INVALID;
	}
	rc = sqlite3_prepare_v2(db, record_sql, -1, &s, NULL);
	if (rc != SQLITE_OK) {
		/* first use on this database: the table is created inside the
		 * caller's transaction, so it rolls back with it too */
		rc = ackbox_sqlite_inbox_install_schema(db, errstr, errstr_size);
		if (rc)
			return rc;
		rc = sqlite3_prepare_v2(db, record_sql, -1, &s, NULL);
		if (rc != SQLITE_OK)
			return sq_error(db, rc, db_path(db), "preparing the inbox insert", errstr,
			                errstr_size);
	}
	sqlite3_bind_text(s, 1, consumer, -1, SQLITE_STATIC);
	sqlite3_bind_blob(s, 2, id->b, 16, SQLITE_STATIC);
	sqlite3_bind_int64(s, 3, ackbox_wall_ms());
	rc = sqlite3_step(s);
	sqlite3_finalize(s);
	if (rc != SQLITE_DONE)
		return sq_error(db, rc, db_path(db), "inbox insert", errstr, errstr_size);
	return sqlite3_changes(db) == 1 ? ACKBOX_INBOX_FIRST : ACKBOX_INBOX_DUPLICATE;
}

int ackbox_sqlite_inbox_cleanup(sqlite3 *db, const char *consumer, int64_t window_ms,
                                size_t max_rows, char *errstr, size_t errstr_size)
{
	static const char fn[] = "ackbox_sqlite_inbox_cleanup";
	sqlite3_stmt *s = NULL;
	int rc;

	if (!db || window_ms < 0 || max_rows > (size_t)INT32_MAX) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: NULL db, a negative window or more than 2^31 rows", fn);
		return ACKBOX_ERR_INVALID;
	}
	if ((rc = consumer_ok(fn, consumer, errstr, errstr_size)) != 0)
		return rc;
	/* each call is one short write transaction of its own: inside the
	 * caller's, the rows' lock would last as long as that transaction */
	if (!sqlite3_get_autocommit(db)) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: a transaction is open on this connection; clean up outside it "
		                  "(each call commits one batch on its own)",
		                  fn);
		return ACKBOX_ERR_INVALID;
	}
	if (window_ms == 0)
		window_ms = ACKBOX_INBOX_WINDOW_DEFAULT_MS;
	if (max_rows == 0)
		max_rows = ACKBOX_INBOX_BATCH_DEFAULT;
	rc = sqlite3_prepare_v2(db, cleanup_sql, -1, &s, NULL);
	if (rc != SQLITE_OK) {
		/* no inbox table yet: nothing recorded, nothing to delete */
		if (sqlite3_exec(db, "SELECT 1 FROM ackbox_inbox LIMIT 0", NULL, NULL, NULL) != SQLITE_OK)
			return 0;
		return sq_error(db, rc, db_path(db), "preparing the inbox cleanup", errstr,
		                errstr_size);
	}
	sqlite3_bind_text(s, 1, consumer, -1, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, ackbox_wall_ms() - window_ms);
	sqlite3_bind_int64(s, 3, (int64_t)max_rows);
	rc = sqlite3_step(s);
	sqlite3_finalize(s);
	if (rc != SQLITE_DONE)
		return sq_error(db, rc, db_path(db), "inbox cleanup", errstr, errstr_size);
	return sqlite3_changes(db);
}
