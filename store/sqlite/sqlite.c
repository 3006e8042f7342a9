/*
 * sqlite.c - the default store: one SQLite file in WAL mode. Inserts are
 * durable per store.sync (FULL by default); claims and state changes commit
 * without fsync, since losing one only causes a resend.
 *
 * With store.sync=full an insert commits with synchronous=NORMAL (frames
 * written to the WAL, no fsync) and sync() then runs fdatasync() on the WAL
 * file through a descriptor of our own, without the core's lock: what
 * synchronous=FULL would do inside COMMIT, done while the relay goes on
 * deleting acked rows. Once fdatasync() returns, every frame written before
 * it is on disk; a checkpoint in between is harmless, since with NORMAL
 * SQLite syncs the WAL before a checkpoint and the database file after it,
 * before the WAL can be reused.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <libgen.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include <ackbox/rowmerge.h>
#include <ackbox/sqlite.h>
#include <ackbox/store.h>

#include "sqlite_int.h"

#define SCHEMA_NAME "ackbox-outbox"
#define SCHEMA_VERSION 1

/* The schema. seq keeps insertion order and makes rows cheap to address;
 * the partial index holds only pending rows, so "what is due" stays cheap
 * however many FAILED rows pile up, and it covers the status queries. */
static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS ackbox_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "INSERT OR IGNORE INTO ackbox_meta VALUES('schema','" SCHEMA_NAME "'),('version','1');"
    "CREATE TABLE IF NOT EXISTS ackbox_outbox("
    " seq INTEGER PRIMARY KEY,"
    " id BLOB NOT NULL UNIQUE,"
    " state INTEGER NOT NULL DEFAULT 0,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " due_ms INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " updated_ms INTEGER NOT NULL,"
    " topic TEXT NOT NULL,"
    " msg_key BLOB,"
    " content_type TEXT,"
    " headers BLOB,"
    " payload BLOB NOT NULL,"
    " last_error TEXT,"
    " last_code INTEGER NOT NULL DEFAULT 0,"
    " lease INTEGER NOT NULL DEFAULT 0,"
    " payload_len INTEGER);"
    "CREATE INDEX IF NOT EXISTS ackbox_outbox_due ON ackbox_outbox(due_ms, created_ms)"
    " WHERE state < 2;"
    "CREATE INDEX IF NOT EXISTS ackbox_outbox_troubled ON ackbox_outbox(state, seq)"
    " WHERE state > 0;"
    /* packed batches (packed.c): many messages in one row while in memory */
    "CREATE TABLE IF NOT EXISTS ackbox_batch("
    " bseq INTEGER PRIMARY KEY,"
    " due_ms INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " n INTEGER NOT NULL,"
    " data BLOB NOT NULL,"
    " lease INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX IF NOT EXISTS ackbox_batch_due ON ackbox_batch(due_ms);"
    "CREATE TABLE IF NOT EXISTS ackbox_batch_out(bseq INTEGER NOT NULL, idx INTEGER NOT NULL,"
    " PRIMARY KEY(bseq, idx)) WITHOUT ROWID;"
    /* the relays using the file (owner.c); a row's owner is its lease >> 32 */
    "CREATE TABLE IF NOT EXISTS ackbox_owner(owner INTEGER PRIMARY KEY AUTOINCREMENT,"
    " pid INTEGER NOT NULL, start INTEGER NOT NULL, boot TEXT NOT NULL, pidns TEXT NOT NULL,"
    " since_ms INTEGER NOT NULL);"
    /* the attempt history (history.c) */
    SQ_HIST_SCHEMA;

/*
 * Per-key order (delivery.order=key, docs/ordering.md). `head` is 1 on the
 * oldest row (lowest id) of each key, in any state; triggers keep it so for
 * every writer of the file, the application's transactional enqueue
 * included. The ordered claim takes only heads and rows without a key, from
 * a partial index that holds nothing else, so a deep backlog of one key
 * costs nothing per claim. Installed by the first handle that opens the
 * file with delivery.order=key (one transaction), kept afterwards.
 */
static const char order_sql[] =
    "CREATE INDEX IF NOT EXISTS ackbox_outbox_key ON ackbox_outbox(msg_key, id)"
    " WHERE msg_key IS NOT NULL;"
    "UPDATE ackbox_outbox SET head = 1 WHERE msg_key IS NOT NULL AND head = 0 AND NOT EXISTS"
    " (SELECT 1 FROM ackbox_outbox p WHERE p.msg_key = ackbox_outbox.msg_key"
    " AND p.id < ackbox_outbox.id);"
    "CREATE INDEX IF NOT EXISTS ackbox_outbox_ready ON ackbox_outbox(due_ms)"
    " WHERE state < 2 AND (msg_key IS NULL OR head = 1);"
    "CREATE TRIGGER IF NOT EXISTS ackbox_outbox_head_ins AFTER INSERT ON ackbox_outbox"
    " WHEN new.msg_key IS NOT NULL BEGIN"
    " UPDATE ackbox_outbox SET head = 1 WHERE seq = new.seq AND NOT EXISTS"
    " (SELECT 1 FROM ackbox_outbox p WHERE p.msg_key = new.msg_key AND p.id < new.id);"
    " END;"
    "CREATE TRIGGER IF NOT EXISTS ackbox_outbox_head_del AFTER DELETE ON ackbox_outbox"
    " WHEN old.head = 1 AND old.msg_key IS NOT NULL BEGIN"
    " UPDATE ackbox_outbox SET head = 1 WHERE seq = (SELECT seq FROM ackbox_outbox"
    " WHERE msg_key = old.msg_key ORDER BY id LIMIT 1);"
    " END;";

#define ROW_COLS                                                                                   \
	"seq, id, state, attempts, created_ms, updated_ms, due_ms, topic, msg_key, content_type, " \
	"headers, payload, last_error, last_code, lease"

/*
 * Rows record the length of their payload (payload_len) when written, so
 * that a claim can tell a damaged row: its payload no longer that long, or
 * an id that is not 16 bytes. Rows written before there was the column
 * have NULL there and are not checked. A handle that sends adds the column
 * to an older file; on one that does not, sq_stmt_sql() drops it from the
 * statements (SQ_PLEN: the column, last in a column list, and its value,
 * last in VALUES; a claim reads it as NULL).
 */
#define CLAIM_COLS ROW_COLS SQ_PLEN_COL
#define CLAIM_PLEN_COL 15
static const char add_payload_len_sql[] =
    "ALTER TABLE ackbox_outbox ADD COLUMN payload_len INTEGER";


/* Acks come in bursts: one DELETE statement for this many rows costs less
 * than as many single ones (fewer statement runs and index seeks). */
#define DELETE_MANY 64
#define Q8 "?,?,?,?,?,?,?,?"
#define Q64 Q8 "," Q8 "," Q8 "," Q8 "," Q8 "," Q8 "," Q8 "," Q8

static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_INSERT] = "INSERT INTO ackbox_outbox(id, state, attempts, due_ms, created_ms, updated_ms,"
                  " topic, msg_key, content_type, headers, payload, lease" SQ_PLEN_COL ")"
                  " VALUES(?1, 0, 0, ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    /* not another registered relay's: a live relay's rows are its own
     * (owner.c); sq_stmt_sql() drops this for a file without owners */
    [ST_CLAIM_SEL] = "SELECT " CLAIM_COLS " FROM ackbox_outbox WHERE state < 2 AND due_ms <= ?1"
                     " AND " SQ_NOT_HELD " ORDER BY due_ms LIMIT ?2",
    /* every claim takes a new lease (sq_lease_next); a change carrying an
     * older one is from an owner whose lease ran out: skipped */
    [ST_CLAIM_UPD] = "UPDATE ackbox_outbox SET due_ms = ?1,"
                     " lease = (?3 << 32) | (((lease & 4294967295) + 1) & 4294967295)"
                     " WHERE seq = ?2",
    [ST_DELETE] = "DELETE FROM ackbox_outbox WHERE id = ?1 AND lease = ?7",
    [ST_RETRY] = "UPDATE ackbox_outbox SET state = 1, attempts = ?2, due_ms = ?3, last_error = ?4,"
                 " last_code = ?5, updated_ms = ?6 WHERE id = ?1 AND state < 2 AND lease = ?7",
    [ST_FAIL] = "UPDATE ackbox_outbox SET state = 2, attempts = ?2, last_error = ?4,"
                " last_code = ?5, updated_ms = ?6 WHERE id = ?1 AND state < 2 AND lease = ?7",
    [ST_RELEASE] = "UPDATE ackbox_outbox SET due_ms = ?3 WHERE id = ?1 AND state < 2"
                   " AND lease = ?7",
    [ST_PENDING_ANY] = "SELECT 1 WHERE EXISTS(SELECT 1 FROM ackbox_outbox WHERE state < 2)"
                       " OR EXISTS(SELECT 1 FROM ackbox_batch)",
    [ST_DELETE_MANY] = "DELETE FROM ackbox_outbox WHERE lease = ?1 AND id IN (" Q64 ")",
    /* a NOTE change: the row is still this lease's (same parameters as the rest) */
    [ST_HELD] = "SELECT 1 FROM ackbox_outbox WHERE id = ?1 AND state < 2 AND lease = ?7",
    /* a claim's verdict on a row whose bytes are damaged (see SQ_PLEN_COL) */
    [ST_DAMAGED] = "UPDATE ackbox_outbox SET state = 2, last_error = ?1, last_code = 0,"
                   " updated_ms = ?2 WHERE seq = ?3",
};

static const ackbox_prop sq_props[] = {
	{"busy_timeout", ACKBOX_PROP_DURATION, "5s", 0, 3600000, NULL,
	 "How long to wait for another writer's lock before ACKBOX_ERR_STORE_LOCKED."},
	{"secure_delete", ACKBOX_PROP_ENUM, "fast", 0, 0, "on|fast|off",
	 "Whether deleted messages' bytes are overwritten (SQLite's PRAGMA secure_delete). "
	 "'on' (Debian's build default) writes every freed page again and halves the "
	 "throughput of acks; 'fast' zeroes them where that costs no extra I/O."},
	{NULL, 0, NULL, 0, 0, NULL, NULL}};

/* Maps an SQLite result to an ackbox error and a line naming the file. */
int sq_error(sqlite3 *db, int rc, const char *path, const char *what, char *errstr,
             size_t errstr_size)
{
	int ext = db ? sqlite3_extended_errcode(db) : rc;
	const char *msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
	int code;
	const char *hint = "";
	switch (rc & 0xff) {
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		code = ACKBOX_ERR_STORE_CORRUPT;
		hint = " (the file is damaged or is not an SQLite database)";
		break;
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		code = ACKBOX_ERR_STORE_LOCKED;
		hint = " (another process holds the write lock; see sqlite.busy_timeout)";
		break;
	case SQLITE_READONLY:
		code = ACKBOX_ERR_STORE_READONLY;
		hint = " (the file or its directory is not writable)";
		break;
	case SQLITE_FULL:
		code = ACKBOX_ERR_STORE_FULL;
		hint = " (disk full)";
		break;
	case SQLITE_IOERR:
		code = ext == SQLITE_IOERR_WRITE || ext == SQLITE_IOERR_FSYNC ? ACKBOX_ERR_STORE
		                                                               : ACKBOX_ERR_STORE;
		if (errno == ENOSPC) {
			code = ACKBOX_ERR_STORE_FULL;
			hint = " (disk full)";
		}
		break;
	case SQLITE_NOMEM:
		code = ACKBOX_ERR_NOMEM;
		break;
	default:
		code = ACKBOX_ERR_STORE;
	}
	ackbox_errstr_set(errstr, errstr_size, "sqlite store '%s': %s failed: %s%s", path, what, msg,
	                  hint);
	return code;
}

static int set_sync(sq_ctx *c, int relaxed)
{
	const char *sql;
	if (c->cur_sync == relaxed)
		return SQLITE_OK;
	if (relaxed)
		sql = c->sync == ACKBOX_SYNC_OFF ? "PRAGMA synchronous=OFF" : "PRAGMA synchronous=NORMAL";
	else
		sql = c->sync_full;
	c->cur_sync = relaxed;
	return sqlite3_exec(c->db, sql, NULL, NULL, NULL);
}

static int run(sq_ctx *c, int which)
{
	sqlite3_stmt *s = c->st[which];
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static int begin(sq_ctx *c, int relaxed)
{
	int rc = set_sync(c, relaxed);
	if (rc != SQLITE_OK)
		return rc;
	return run(c, ST_BEGIN);
}

static void rollback(sq_ctx *c)
{
	if (!sqlite3_get_autocommit(c->db))
		run(c, ST_ROLLBACK);
}

/* 0, or the ackbox error naming why the COMMIT failed (in errstr, read
 * before the transaction is rolled back: SQLite may have rolled it back
 * itself, SQLITE_FULL, and a ROLLBACK then fails with its own message). */
static int commit(sq_ctx *c, char *errstr, size_t errstr_size)
{
	int rc = run(c, ST_COMMIT);
	if (rc == SQLITE_OK)
		return 0;
	rc = sq_error(c->db, rc, c->path, "commit", errstr, errstr_size);
	rollback(c);
	return rc;
}

/*
 * At a clean close, in one transaction: partly acked batches keep only
 * their unacked members (packed.c), and this relay's rows become anyone's
 * (owner.c): another relay takes them when their lease runs out, the next
 * one to open at once. Best effort: nothing is lost if it fails.
 */
static void close_handover(sq_ctx *c)
{
	char err[256] = "";
	int partly = sq_pack_partly_acked(c), rc;
	if (!c->db || (!partly && !c->owner))
		return;
	rc = sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		snprintf(err, sizeof(err), "%s", sqlite3_errmsg(c->db));
	if (rc == SQLITE_OK && partly && sq_pack_write_out(c, err, sizeof(err)) != 0)
		rc = SQLITE_ERROR;
	if (rc == SQLITE_OK && (rc = sq_owner_unregister(c)) != SQLITE_OK)
		snprintf(err, sizeof(err), "%s", sqlite3_errmsg(c->db));
	if (rc == SQLITE_OK && (rc = sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL)) != SQLITE_OK)
		snprintf(err, sizeof(err), "%s", sqlite3_errmsg(c->db));
	if (rc == SQLITE_OK)
		return;
	if (!sqlite3_get_autocommit(c->db))
		sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
	sq_owner_stale(c);
	if (c->conf)
		ackbox_store_log(c->conf, ACKBOX_LOG_WARN, "sqlite",
		                 "store '%s': at close, could not hand this relay's messages over "
		                 "(%s)%s; nothing is lost: the next relay takes them when it finds "
		                 "this handle gone",
		                 c->path, err,
		                 partly ? ", so partly acked batches stay whole and their acked "
		                          "members will be sent again"
		                        : "");
}

static void sq_close(void *vctx)
{
	sq_ctx *c = vctx;
	for (int i = 0; i < ST_COUNT; i++)
		sqlite3_finalize(c->st[i]);
	sqlite3_finalize(c->hist_add);
	sqlite3_finalize(c->hist_trim);
	sqlite3_finalize(c->hist_del);
	sqlite3_finalize(c->hist_any);
	sqlite3_finalize(c->claim_ordered);
	close_handover(c);
	sq_pack_close(c);
	if (c->db)
		sqlite3_close_v2(c->db);
	if (c->wal_fd >= 0)
		close(c->wal_fd);
	free(c->path);
	free(c->seqs);
	free(c->damaged);
	memset(c, 0, sizeof(*c));
}

/* fsync()s the directory holding path, so a new file's name is durable. */
static int sync_dir(const char *path)
{
	char *copy = strdup(path);
	int fd, rc = -1;
	if (!copy)
		return -1;
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		rc = fsync(fd);
		close(fd);
	}
	free(copy);
	return rc;
}

/*
 * Makes sure wal_fd is a descriptor of the WAL file SQLite writes now (one
 * stat per insert). Returns 0 if sync() can be used, -1 to commit with
 * synchronous=FULL instead.
 */
static int wal_check(sq_ctx *c)
{
	char wal[4096];
	struct stat sb;
	if (snprintf(wal, sizeof(wal), "%s-wal", c->path) >= (int)sizeof(wal))
		return -1;
	if (stat(wal, &sb) != 0) {
		/* not created yet: this commit creates it, with FULL (and SQLite's
		 * own directory sync); the next insert finds it */
		return -1;
	}
	if (c->wal_fd >= 0 && sb.st_ino == c->wal_ino)
		return 0;
	if (c->wal_fd >= 0)
		close(c->wal_fd);
	c->wal_fd = open(wal, O_RDONLY | O_CLOEXEC);
	if (c->wal_fd < 0 || fstat(c->wal_fd, &sb) != 0 || sync_dir(wal) != 0) {
		if (c->wal_fd >= 0)
			close(c->wal_fd);
		c->wal_fd = -1;
		return -1;
	}
	c->wal_ino = sb.st_ino;
	return 0;
}

/* What the file holds of ackbox's schema. */
typedef struct sq_schema {
	int meta;   /* ackbox_meta, naming our schema and a version we understand */
	int batch;  /* the packed-batch tables */
	int owners; /* ackbox_owner */
	int tables; /* tables of any kind: none is an empty database */
	int plen;   /* ackbox_outbox has payload_len */
	int history; /* ackbox_attempt (store ABI 1.6) */
} sq_schema;

/* Reads the schema marker; refuses a foreign or newer schema. Reads only:
 * a file that is not an ackbox store is left as it is. */
static int check_schema(sq_ctx *c, sq_schema *have, char *errstr, size_t errstr_size)
{
	sqlite3_stmt *s = NULL;
	int rc;
	char name[64] = "", version[32] = "";

	memset(have, 0, sizeof(*have));
	rc = sqlite3_prepare_v2(c->db,
	                        "SELECT (SELECT count(*) FROM sqlite_master WHERE type='table' AND"
	                        " name='ackbox_meta'), (SELECT count(*) FROM sqlite_master WHERE"
	                        " type='table' AND name='ackbox_batch_out'), (SELECT count(*) FROM"
	                        " sqlite_master WHERE type='table' AND name='ackbox_owner'),"
	                        " (SELECT count(*) FROM sqlite_master WHERE type='table'),"
	                        " (SELECT count(*) FROM pragma_table_info('ackbox_outbox') WHERE"
	                        " name='payload_len'),"
	                        " (SELECT count(*) FROM sqlite_master WHERE type='table' AND"
	                        " name='ackbox_attempt')",
	                        -1, &s, NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "reading the schema", errstr, errstr_size);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		have->meta = sqlite3_column_int(s, 0);
		have->batch = sqlite3_column_int(s, 1);
		have->owners = sqlite3_column_int(s, 2);
		have->tables = sqlite3_column_int(s, 3);
		have->plen = sqlite3_column_int(s, 4);
		have->history = sqlite3_column_int(s, 5);
	}
	sqlite3_finalize(s);
	if (rc != SQLITE_ROW)
		return sq_error(c->db, rc, c->path, "reading the schema", errstr, errstr_size);
	if (!have->meta)
		return 0;
	rc = sqlite3_prepare_v2(c->db, "SELECT key, value FROM ackbox_meta", -1, &s, NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "reading ackbox_meta", errstr, errstr_size);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		const char *k = (const char *)sqlite3_column_text(s, 0);
		const char *v = (const char *)sqlite3_column_text(s, 1);
		if (k && v && strcmp(k, "schema") == 0)
			snprintf(name, sizeof(name), "%s", v);
		else if (k && v && strcmp(k, "version") == 0)
			snprintf(version, sizeof(version), "%s", v);
	}
	sqlite3_finalize(s);
	if (rc != SQLITE_DONE)
		return sq_error(c->db, rc, c->path, "reading ackbox_meta", errstr, errstr_size);
	if (strcmp(name, SCHEMA_NAME) != 0) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "sqlite store '%s': foreign schema '%s' in ackbox_meta (expected '%s')",
		                  c->path, name, SCHEMA_NAME);
		return ACKBOX_ERR_STORE_SCHEMA;
	}
	if (atoi(version) > SCHEMA_VERSION || atoi(version) < 1) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "sqlite store '%s': schema version %s is not supported by this "
		                  "ackbox (it understands version %d); upgrade ackbox",
		                  c->path, version, SCHEMA_VERSION);
		return ACKBOX_ERR_STORE_SCHEMA;
	}
	return 0;
}

/* One integer from a query without parameters; -1 on error. */
static int query_int(sq_ctx *c, const char *sql)
{
	sqlite3_stmt *s;
	int v = -1;
	if (sqlite3_prepare_v2(c->db, sql, -1, &s, NULL) != SQLITE_OK)
		return -1;
	if (sqlite3_step(s) == SQLITE_ROW)
		v = sqlite3_column_int(s, 0);
	sqlite3_finalize(s);
	return v;
}

/* Whether the file has the per-key order objects (head column, triggers). */
static int order_present(sq_ctx *c)
{
	return query_int(c, "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
	                    " AND name = 'ackbox_outbox_head_del'") == 1;
}

/*
 * delivery.order=key: installs the per-key order objects if the file lacks
 * them (one transaction, so every writer sees all or none) and prepares
 * the ordered claim.
 */
static const char claim_ordered_sql[] =
    "SELECT " ROW_COLS " FROM ackbox_outbox WHERE state < 2 AND"
    " (msg_key IS NULL OR head = 1) AND due_ms <= ?1"
    " AND " SQ_NOT_HELD " ORDER BY due_ms LIMIT ?2";

static int order_open(sq_ctx *c, char *errstr, size_t errstr_size)
{
	char buf[1024];
	int rc = SQLITE_OK;
	if (!order_present(c)) {
		rc = sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
		if (rc == SQLITE_OK && query_int(c, "SELECT count(*) FROM pragma_table_info("
		                                    "'ackbox_outbox') WHERE name = 'head'") == 0)
			rc = sqlite3_exec(c->db,
			                  "ALTER TABLE ackbox_outbox ADD COLUMN head INTEGER NOT NULL"
			                  " DEFAULT 0",
			                  NULL, NULL, NULL);
		if (rc == SQLITE_OK)
			rc = sqlite3_exec(c->db, order_sql, NULL, NULL, NULL);
		if (rc == SQLITE_OK)
			rc = sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL);
		if (rc != SQLITE_OK) {
			rc = sq_error(c->db, rc, c->path, "installing per-key order", errstr,
			              errstr_size);
			sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
			return rc;
		}
	}
	c->order_installed = 1;
	c->ordered = 1;
	/* The WHERE repeats the partial index's, so the planner uses it. A head
	 * another live relay holds is not taken (SQ_NOT_HELD, as ST_CLAIM_SEL),
	 * and the rows behind it are not heads: the key stays on that relay. */
	rc = sqlite3_prepare_v3(c->db,
	                        sq_stmt_sql(c, claim_ordered_sql, buf, sizeof(buf)), -1,
	                        SQLITE_PREPARE_PERSISTENT, &c->claim_ordered, NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "preparing statements", errstr, errstr_size);
	return 0;
}

/* After the statements: order_open() if this handle claims in key order,
 * else only whether the file has the order objects (blocked_keys). */
static int order_setup(sq_ctx *c, char *errstr, size_t errstr_size)
{
	if (c->order_wanted)
		return order_open(c, errstr, errstr_size);
	c->order_installed = order_present(c);
	return 0;
}

/* sqlite:///abs/path.db or sqlite://relative/path.db */
static char *url_to_path(const ackbox_url *url)
{
	size_t hl = strlen(url->hosts), pl = strlen(url->path);
	char *p = malloc(hl + pl + 1);
	if (!p)
		return NULL;
	memcpy(p, url->hosts, hl);
	memcpy(p + hl, url->path, pl + 1);
	return p;
}

/*
 * Messages are business data: a new store file is created readable by its
 * owner only (0600, whatever the umask), and SQLite gives its -wal and -shm
 * files the mode of the database file. An existing file keeps its mode
 * (sq_open warns once it knows the file is a store). sb: stat of the path,
 * or st_mode 0 if there was no file.
 */
static int create_private(sq_ctx *c, struct stat *sb, char *errstr, size_t errstr_size)
{
	if (stat(c->path, sb) == 0)
		return 0;
	sb->st_mode = 0;
	int fd = open(c->path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0 && errno != EEXIST) { /* EEXIST: another process made it just now */
		int e = errno;
		ackbox_errstr_set(errstr, errstr_size,
		                  "sqlite store '%s': open failed: cannot create the file: %s", c->path,
		                  strerror(e));
		return e == ENOSPC                  ? ACKBOX_ERR_STORE_FULL
		       : e == EACCES || e == EROFS ? ACKBOX_ERR_STORE_READONLY
		                                   : ACKBOX_ERR_STORE;
	}
	if (fd >= 0)
		close(fd);
	return 0;
}

static sq_create create_mode(const ackbox_conf *conf)
{
	const char *v = ackbox_conf_get(conf, "store.create");
	if (v && strcmp(v, "insert") == 0)
		return SQ_CREATE_INSERT;
	if (v && strcmp(v, "never") == 0)
		return SQ_CREATE_NEVER;
	return SQ_CREATE_OPEN;
}

/* Opens c->path (creating the file only if `create`); no schema work. */
static int open_db(sq_ctx *c, int create, int64_t busy_ms, char *errstr, size_t errstr_size)
{
	struct stat sb;
	int rc;
	/* A read-only file would otherwise open "successfully" read-only. */
	if (stat(c->path, &sb) == 0 && access(c->path, W_OK) != 0) {
		ackbox_errstr_set(errstr, errstr_size, "sqlite store '%s': file is read-only (%s)",
		                  c->path, strerror(errno));
		return ACKBOX_ERR_STORE_READONLY;
	}
	if (create && (rc = create_private(c, &sb, errstr, errstr_size)) != 0)
		return rc;
	rc = sqlite3_open_v2(c->path, &c->db,
	                     SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) |
	                         SQLITE_OPEN_NOMUTEX,
	                     NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "open", errstr, errstr_size);
	sqlite3_extended_result_codes(c->db, 0);
	sqlite3_busy_timeout(c->db, (int)busy_ms);
	if (sqlite3_db_readonly(c->db, "main") == 1) {
		ackbox_errstr_set(errstr, errstr_size, "sqlite store '%s': opened read-only",
		                  c->path);
		return ACKBOX_ERR_STORE_READONLY;
	}
	{
		const char *sd = ackbox_conf_get(c->conf, "sqlite.secure_delete");
		char sql[64];
		snprintf(sql, sizeof(sql), "PRAGMA secure_delete=%s", sd ? sd : "fast");
		sqlite3_exec(c->db, sql, NULL, NULL, NULL);
	}
	return 0;
}

/* Adds payload_len to an ackbox_outbox from before it (inside the caller's
 * transaction); nothing if it is there. */
static int add_payload_len(sqlite3 *db)
{
	sqlite3_stmt *s = NULL;
	int rc = sqlite3_prepare_v2(db,
	                            "SELECT count(*) FROM pragma_table_info('ackbox_outbox')"
	                            " WHERE name='payload_len'",
	                            -1, &s, NULL);
	int have = 0;
	if (rc != SQLITE_OK)
		return rc;
	if ((rc = sqlite3_step(s)) == SQLITE_ROW)
		have = sqlite3_column_int(s, 0);
	sqlite3_finalize(s);
	if (rc != SQLITE_ROW)
		return rc;
	return have ? SQLITE_OK : sqlite3_exec(db, add_payload_len_sql, NULL, NULL, NULL);
}

/* WAL mode, then every table and index that is missing, in one transaction. */
static int create_schema(sq_ctx *c, char *errstr, size_t errstr_size)
{
	int rc = sqlite3_exec(c->db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "enabling WAL", errstr, errstr_size);
	rc = sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(c->db, schema_sql, NULL, NULL, NULL);
	if (rc == SQLITE_OK)
		rc = add_payload_len(c->db);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL);
	if (rc != SQLITE_OK) {
		rc = sq_error(c->db, rc, c->path, "creating the schema", errstr, errstr_size);
		sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
		return rc;
	}
	c->has_owners = 1;
	c->have_payload_len = 1;
	return 0;
}

/* Removes the first `cut` at or after `from`; 1 if there was one. */
static int cut_out(char *from, const char *cut)
{
	char *at = strstr(from, cut);
	if (!at)
		return 0;
	memmove(at, at + strlen(cut), strlen(at + strlen(cut)) + 1);
	return 1;
}

const char *sq_stmt_sql(const sq_ctx *c, const char *sql, char *buf, size_t size)
{
	char *at;
	int changed = 0;
	if (strlen(sql) >= size)
		return sql; /* prepare then names what is wrong */
	snprintf(buf, size, "%s", sql);
	/* an older file nobody upgraded: nobody owns anything */
	if (!c->has_owners)
		changed |= cut_out(buf, " AND " SQ_NOT_HELD);
	/* nor records payload lengths (see SQ_PLEN_COL) */
	if (!c->have_payload_len && (at = strstr(buf, SQ_PLEN_COL)) != NULL) {
		char *values = strstr(buf, "VALUES(");
		changed = 1;
		if (strncmp(buf, "SELECT", 6) == 0) {
			/* read as NULL: same column count, "not checked" */
			memcpy(at, ", NULL       ", strlen(SQ_PLEN_COL));
		} else {
			char *close, *comma;
			cut_out(at, SQ_PLEN_COL);
			values = strstr(buf, "VALUES(");
			close = values ? strchr(values, ')') : NULL;
			/* the last value, ", ?N" before the closing parenthesis */
			for (comma = close; comma && comma > values && *comma != ','; comma--)
				;
			if (comma && comma > values)
				memmove(comma, close, strlen(close) + 1);
		}
	}
	return changed ? buf : sql;
}

static int prepare_all(sq_ctx *c, char *errstr, size_t errstr_size)
{
	char buf[1024];
	/* per connection, not in the file: owners it cannot check (owner.c) */
	int rc = sqlite3_exec(c->db,
	                      "CREATE TEMP TABLE IF NOT EXISTS ackbox_foreign(owner INTEGER PRIMARY KEY)",
	                      NULL, NULL, NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "preparing statements", errstr, errstr_size);
	for (int i = 0; i < ST_COUNT; i++) {
		rc = sqlite3_prepare_v3(c->db, sq_stmt_sql(c, stmt_sql[i], buf, sizeof(buf)), -1,
		                        SQLITE_PREPARE_PERSISTENT, &c->st[i], NULL);
		if (rc != SQLITE_OK)
			return sq_error(c->db, rc, c->path, "preparing statements", errstr, errstr_size);
	}
	return sq_pack_open(c, errstr, errstr_size);
}

/*
 * The store a store.create=insert handle did not find, made by its first
 * insert: the file (if it was missing), the schema, the statements.
 */
static int materialize(sq_ctx *c, char *errstr, size_t errstr_size)
{
	int64_t busy_ms = 5000;
	const char *bt = ackbox_conf_get(c->conf, "sqlite.busy_timeout");
	int rc;
	if (bt)
		ackbox_parse_duration_ms(bt, &busy_ms);
	if (!c->db && (rc = open_db(c, 1, busy_ms, errstr, errstr_size)) != 0)
		return rc;
	rc = create_schema(c, errstr, errstr_size);
	if (rc == 0)
		rc = prepare_all(c, errstr, errstr_size);
	if (rc == 0)
		rc = order_setup(c, errstr, errstr_size);
	if (rc)
		return rc; /* close() finalizes what was prepared */
	c->absent = 0;
	return 0;
}

/*
 * The rest of an open, on a database that holds ackbox's schema (or that
 * mode open may create it in): upgrade or create what is missing, WAL,
 * statements. Only a new file is written at open, and an older schema
 * upgraded by a handle that sends: `ackbox status` on a store a service is
 * using must not wait for, or block, its writes, nor change the file.
 */
static int finish_open(sq_ctx *c, const sq_schema *have, char *errstr, size_t errstr_size)
{
	int rc;
	if (have->meta && !have->batch && c->create == SQ_CREATE_NEVER && !c->sender) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "sqlite store '%s': written by an older ackbox; a relay or a publish "
		                  "on it upgrades it (this handle changes no schema)",
		                  c->path);
		return ACKBOX_ERR_STORE_SCHEMA;
	}
	c->has_owners = have->owners;
	c->has_history = have->history;
	c->have_payload_len = have->plen;
	/* a relay or a publisher adds what an older ackbox did not make */
	if (!have->meta || !have->batch ||
	    (!(have->owners && have->plen && have->history) && c->sender))
		rc = create_schema(c, errstr, errstr_size);
	else if ((rc = sqlite3_exec(c->db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL)) != SQLITE_OK)
		rc = sq_error(c->db, rc, c->path, "enabling WAL", errstr, errstr_size);
	if (rc == 0)
		rc = prepare_all(c, errstr, errstr_size);
	return rc ? rc : order_setup(c, errstr, errstr_size);
}

static int sq_recover_now(sq_ctx *c, int64_t now_ms, char *errstr, size_t errstr_size);

/*
 * A store.create=never handle that found an empty database looks again at
 * its relay's claims: once another process has created the store in it, it
 * is opened for real and recovered as at open. Returns 1 if it is open now,
 * 0 if still empty, or an error.
 */
static int take_up(sq_ctx *c, int64_t now_ms, char *errstr, size_t errstr_size)
{
	sq_schema have;
	int rc;
	if (!c->db || c->create != SQ_CREATE_NEVER)
		return 0;
	rc = check_schema(c, &have, errstr, errstr_size);
	if (rc || !have.meta)
		return rc;
	rc = finish_open(c, &have, errstr, errstr_size);
	if (rc)
		return rc;
	c->absent = 0;
	if (c->relay && (rc = sq_recover_now(c, now_ms, errstr, errstr_size)) != 0)
		return rc;
	return 1;
}

static int sq_open(void *vctx, const ackbox_url *url, const ackbox_conf *conf, ackbox_sync sync,
                   char *errstr, size_t errstr_size)
{
	sq_ctx *c = vctx;
	int rc;
	int64_t busy_ms = 5000;
	const char *bt = ackbox_conf_get(conf, "sqlite.busy_timeout");
	struct stat sb;
	sq_schema have;

	static const char *const no_query[] = {NULL};

	c->wal_fd = -1;
	c->conf = conf;
	if (ackbox_url_query_check(url, "store.url", no_query, errstr, errstr_size) != 0)
		return ACKBOX_ERR_BAD_URL;
	c->create = create_mode(conf);
	c->sender = ackbox_conf_get(conf, "transport.url") != NULL;
	{
		const char *order = ackbox_conf_get(conf, "delivery.order");
		c->order_wanted = order && strcmp(order, "key") == 0;
	}
	c->path = url_to_path(url);
	if (!c->path)
		return ACKBOX_ERR_NOMEM;
	if (!c->path[0]) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "store.url: no file name (use sqlite:///absolute/path.db or "
		                  "sqlite://relative.db)");
		sq_close(c);
		return ACKBOX_ERR_BAD_URL;
	}
	if (bt)
		ackbox_parse_duration_ms(bt, &busy_ms);
	c->sync = sync;
	c->sync_full = sync == ACKBOX_SYNC_FULL     ? "PRAGMA synchronous=FULL"
	               : sync == ACKBOX_SYNC_NORMAL ? "PRAGMA synchronous=NORMAL"
	                                            : "PRAGMA synchronous=OFF";
	c->cur_sync = -1;

	if (c->create != SQ_CREATE_OPEN && stat(c->path, &sb) != 0 && errno == ENOENT) {
		if (c->create == SQ_CREATE_INSERT) {
			c->absent = 1; /* nothing on disk until the first insert */
			return 0;
		}
		ackbox_errstr_set(errstr, errstr_size,
		                  "sqlite store '%s': file does not exist (store.create=never: it is "
		                  "not created here)",
		                  c->path);
		sq_close(c);
		return ACKBOX_ERR_STORE;
	}
	rc = open_db(c, c->create == SQ_CREATE_OPEN, busy_ms, errstr, errstr_size);
	/* The first real read: a corrupt file fails here, before anything is written. */
	if (rc == 0)
		rc = check_schema(c, &have, errstr, errstr_size);
	if (rc) {
		sq_close(c);
		return rc;
	}
	c->has_owners = have.owners;
	c->have_payload_len = have.plen;
	if (!have.meta && (c->create == SQ_CREATE_INSERT || !have.tables)) {
		/*
		 * Ours is added by the first insert to another application's
		 * database (insert), or an empty database (what a process killed
		 * while it created the store leaves) reads as an empty store and
		 * is taken up once its schema appears (never).
		 */
		if (c->create != SQ_CREATE_OPEN) {
			c->absent = 1;
			return 0;
		}
	} else if (!have.meta && c->create == SQ_CREATE_NEVER) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "sqlite store '%s': not an ackbox store (no ackbox_meta table); "
		                  "store.create=never: nothing is created in it",
		                  c->path);
		sq_close(c);
		return ACKBOX_ERR_STORE_SCHEMA;
	}
	rc = finish_open(c, &have, errstr, errstr_size);
	if (rc) {
		sq_close(c);
		return rc;
	}
	if (stat(c->path, &sb) == 0 && (sb.st_mode & 077))
		ackbox_store_log(conf, ACKBOX_LOG_WARN, "sqlite",
		                 "store file %s has mode %04o: others may read the messages in it "
		                 "(chmod 600 it; new stores are created 0600)",
		                 c->path, (unsigned)(sb.st_mode & 07777));
	return 0;
}

static int sq_insert(void *vctx, const ackbox_store_rec *recs, size_t n, char *errstr,
                     size_t errstr_size)
{
	sq_ctx *c = vctx;
	sqlite3_stmt *s;
	int moved = 0, split, packed, rc;
	if (c->absent && (rc = materialize(c, errstr, errstr_size)) != 0)
		return rc;
	s = c->st[ST_INSERT];
	/* A file deleted or renamed under us would take every later write with
	 * it when this process ends: refuse instead (one stat per commit). */
	if (sqlite3_file_control(c->db, "main", SQLITE_FCNTL_HAS_MOVED, &moved) == SQLITE_OK &&
	    moved) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "store %s: the file was deleted or moved while open; nothing "
		                  "more is written to it (restore it or restart with a new store)",
		                  c->path);
		return ACKBOX_ERR_STORE;
	}
	/* FULL: commit without fsync, sync() flushes the WAL (see the top) */
	split = c->sync == ACKBOX_SYNC_FULL && wal_check(c) == 0;
	rc = begin(c, split);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "begin", errstr, errstr_size);
	/* a relay that found no store at open registers with its first rows */
	if (c->relay && (rc = sq_owner_register(c, ackbox_wall_ms(), errstr, errstr_size)) != 0) {
		rollback(c);
		return rc;
	}
	packed = sq_pack_insert(c, recs, n, ackbox_wall_ms(), errstr, errstr_size);
	if (packed < 0) {
		sq_pack_inserted(c, 0);
		rollback(c);
		return packed;
	}
	for (size_t i = 0; i < n && !packed; i++) {
		const ackbox_store_rec *r = &recs[i];
		sqlite3_bind_blob(s, 1, r->id.b, 16, SQLITE_STATIC);
		sqlite3_bind_int64(s, 2, r->due_ms);
		sqlite3_bind_int64(s, 3, r->created_ms);
		sqlite3_bind_text(s, 4, r->topic, -1, SQLITE_STATIC);
		if (r->key_len)
			sqlite3_bind_blob(s, 5, r->key, (int)r->key_len, SQLITE_STATIC);
		else
			sqlite3_bind_null(s, 5);
		if (r->content_type)
			sqlite3_bind_text(s, 6, r->content_type, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(s, 6);
		if (r->headers_len)
			sqlite3_bind_blob(s, 7, r->headers, (int)r->headers_len, SQLITE_STATIC);
		else
			sqlite3_bind_null(s, 7);
		sqlite3_bind_blob(s, 8, r->payload_len ? r->payload : "", (int)r->payload_len,
		                  SQLITE_STATIC);
		sqlite3_bind_int64(s, 9, sq_lease_own(c));
		sqlite3_bind_int64(s, 10, (sqlite3_int64)r->payload_len);
		rc = sqlite3_step(s);
		sqlite3_reset(s);
		if (rc != SQLITE_DONE) {
			rc = sq_error(c->db, rc, c->path, "insert", errstr, errstr_size);
			rollback(c);
			return rc;
		}
	}
	rc = commit(c, errstr, errstr_size);
	sq_pack_inserted(c, rc == 0);
	if (rc)
		return rc;
	if (split)
		c->need_sync = 1;
	return 0;
}

/* Runs without the core's lock: touches only wal_fd and need_sync, which
 * only insert() changes, and the core never runs the two at once. */
static int sq_sync(void *vctx, char *errstr, size_t errstr_size)
{
	sq_ctx *c = vctx;
	if (!c->need_sync)
		return 0;
	if (fdatasync(c->wal_fd) != 0) {
		ackbox_errstr_set(errstr, errstr_size, "sqlite store '%s': fdatasync of the WAL: %s",
		                  c->path, strerror(errno));
		return ACKBOX_ERR_STORE;
	}
	c->need_sync = 0;
	return 0;
}

/* Whether the current row of a CLAIM_COLS statement is damaged, with why. */
static int row_damaged(sqlite3_stmt *s, char *why, size_t why_size)
{
	int idl = sqlite3_column_bytes(s, 1);
	if (idl != 16) {
		snprintf(why, why_size, "stored bytes damaged: the id is %d bytes, not 16", idl);
		return 1;
	}
	if (sqlite3_column_type(s, CLAIM_PLEN_COL) != SQLITE_NULL) {
		int64_t want = sqlite3_column_int64(s, CLAIM_PLEN_COL),
		        have = sqlite3_column_bytes(s, 11);
		if (want != have) {
			snprintf(why, why_size,
			         "stored bytes damaged: the payload is %lld bytes, %lld were stored (%s)",
			         (long long)have, (long long)want,
			         have < want ? "truncated" : "longer than written");
			return 1;
		}
	}
	return 0;
}

/*
 * Fails the damaged rows a claim found (inside its transaction), each with
 * its reason, and logs each once: they are FAILED now, never claimed again.
 * The store does this itself, as the core can only be handed rows it can
 * trust, and it has no outcome for "the store's bytes are bad".
 */
static int fail_damaged(sq_ctx *c, const sq_damaged *d, size_t n, char *errstr,
                        size_t errstr_size)
{
	sqlite3_stmt *u = c->st[ST_DAMAGED];
	int64_t now = ackbox_wall_ms();
	for (size_t i = 0; i < n; i++) {
		int rc;
		sqlite3_bind_text(u, 1, d[i].why, -1, SQLITE_STATIC);
		sqlite3_bind_int64(u, 2, now);
		sqlite3_bind_int64(u, 3, d[i].seq);
		rc = sqlite3_step(u);
		sqlite3_reset(u);
		sqlite3_clear_bindings(u);
		if (rc != SQLITE_DONE)
			return sq_error(c->db, rc, c->path, "failing a damaged row", errstr, errstr_size);
		if (c->conf)
			ackbox_store_log(c->conf, ACKBOX_LOG_ERROR, "sqlite",
			                 "store '%s': message %s (row %lld) FAILED: %s", c->path, d[i].id,
			                 (long long)d[i].seq, d[i].why);
	}
	return 0;
}

/* Notes the current row of a claim as damaged (why), for fail_damaged(). */
static int damaged_add(sq_ctx *c, sqlite3_stmt *s, const char *why)
{
	sq_damaged *d;
	if (c->ndamaged == c->cap_damaged) {
		size_t cap = c->cap_damaged ? 2 * c->cap_damaged : 8;
		d = realloc(c->damaged, cap * sizeof(*d));
		if (!d)
			return -1;
		c->damaged = d;
		c->cap_damaged = cap;
	}
	d = &c->damaged[c->ndamaged++];
	d->seq = sqlite3_column_int64(s, 0);
	snprintf(d->why, sizeof(d->why), "%s", why);
	if (sqlite3_column_bytes(s, 1) == 16) {
		ackbox_id id;
		memcpy(id.b, sqlite3_column_blob(s, 1), 16);
		ackbox_id_format(&id, d->id);
	} else {
		snprintf(d->id, sizeof(d->id), "(id unreadable)");
	}
	return 0;
}

/* Fills a row from the current result of a ROW_COLS statement. */
static void read_row(sqlite3_stmt *s, ackbox_store_row *row)
{
	memset(row, 0, sizeof(*row));
	if (sqlite3_column_bytes(s, 1) == 16)
		memcpy(row->id.b, sqlite3_column_blob(s, 1), 16);
	row->state = (ackbox_state)sqlite3_column_int(s, 2);
	row->attempts = sqlite3_column_int(s, 3);
	row->created_ms = sqlite3_column_int64(s, 4);
	row->updated_ms = sqlite3_column_int64(s, 5);
	row->due_ms = sqlite3_column_int64(s, 6);
	row->topic = (const char *)sqlite3_column_text(s, 7);
	if (!row->topic)
		row->topic = "";
	row->key = sqlite3_column_blob(s, 8);
	row->key_len = (size_t)sqlite3_column_bytes(s, 8);
	row->content_type = (const char *)sqlite3_column_text(s, 9);
	row->headers = sqlite3_column_blob(s, 10);
	row->headers_len = (size_t)sqlite3_column_bytes(s, 10);
	row->payload = sqlite3_column_blob(s, 11);
	row->payload_len = (size_t)sqlite3_column_bytes(s, 11);
	row->last_error = (const char *)sqlite3_column_text(s, 12);
	row->last_code = sqlite3_column_int(s, 13);
	row->lease = (uint64_t)sqlite3_column_int64(s, 14);
}

static int sq_claim(void *vctx, int64_t now_ms, int64_t lease_until_ms, size_t limit,
                    ackbox_store_row_cb cb, void *opaque, char *errstr, size_t errstr_size)
{
	sq_ctx *c = vctx;
	sqlite3_stmt *s = c->st[ST_CLAIM_SEL], *u = c->st[ST_CLAIM_UPD];
	size_t n = 0, nb, rows;
	int rc, stop = 0;

	if (c->absent && (rc = take_up(c, now_ms, errstr, errstr_size)) <= 0)
		return rc;
	if (limit > c->cap_seqs) {
		int64_t *ns = realloc(c->seqs, limit * sizeof(*ns));
		if (!ns)
			return ACKBOX_ERR_NOMEM;
		c->seqs = ns;
		c->cap_seqs = limit;
	}
	rc = begin(c, 1);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "begin", errstr, errstr_size);
	/* about once a second: a relay that is gone leaves its rows to us */
	rc = sq_owner_register(c, now_ms, errstr, errstr_size);
	if (rc == 0 && sq_owner_due_check(c, now_ms))
		rc = sq_owner_check(c, now_ms, 0, errstr, errstr_size);
	if (rc) {
		rollback(c);
		return rc;
	}
	if (c->ordered) {
		/* every message a row, then only the oldest of each key (order_sql) */
		rc = sq_pack_unpack_due(c, now_ms, errstr, errstr_size);
		if (rc < 0) {
			rollback(c);
			return rc;
		}
		s = c->claim_ordered;
		nb = 0;
		goto rows;
	}
	/* Packed batches get half the room first, rows what is left, then
	 * batches the rest: neither waits behind a backlog of the other. */
	rc = sq_pack_claim(c, now_ms, lease_until_ms, limit / 2 ? limit / 2 : 1, cb, opaque, &stop,
	                   errstr, errstr_size);
	if (rc < 0) {
		rollback(c);
		return rc;
	}
	nb = (size_t)rc;
rows:
	sqlite3_bind_int64(s, 1, now_ms);
	sqlite3_bind_int64(s, 2, nb < limit ? (sqlite3_int64)(limit - nb) : 0);
	sqlite3_bind_int64(s, 3, c->owner);
	/* Collect first, update after: moving a row in the index being scanned
	 * could make the scan meet it again. */
	while (!stop && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		ackbox_store_row row;
		char why[sizeof(((sq_damaged *)0)->why)];
		if (row_damaged(s, why, sizeof(why))) {
			if (damaged_add(c, s, why) != 0) {
				rc = SQLITE_NOMEM;
				break;
			}
			continue;
		}
		read_row(s, &row);
		/* the lease this claim takes (the UPDATE below) */
		row.lease = (uint64_t)sq_lease_next((int64_t)row.lease, c->owner);
		c->seqs[n++] = sqlite3_column_int64(s, 0);
		stop = cb(&row, opaque);
	}
	sqlite3_reset(s);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		rc = sq_error(c->db, rc, c->path, "claim", errstr, errstr_size);
		c->ndamaged = 0;
		rollback(c);
		return rc;
	}
	rc = fail_damaged(c, c->damaged, c->ndamaged, errstr, errstr_size);
	c->ndamaged = 0;
	if (rc) {
		rollback(c);
		return rc;
	}
	for (size_t i = 0; i < n; i++) {
		sqlite3_bind_int64(u, 1, lease_until_ms);
		sqlite3_bind_int64(u, 2, c->seqs[i]);
		sqlite3_bind_int64(u, 3, c->owner);
		rc = sqlite3_step(u);
		sqlite3_reset(u);
		if (rc != SQLITE_DONE) {
			rc = sq_error(c->db, rc, c->path, "claim update", errstr, errstr_size);
			rollback(c);
			return rc;
		}
	}
	rows = n;
	if (!stop && nb + rows < limit && !c->ordered) {
		rc = sq_pack_claim(c, now_ms, lease_until_ms, limit - nb - rows, cb, opaque, &stop,
		                   errstr, errstr_size);
		if (rc < 0) {
			rollback(c);
			return rc;
		}
		nb += (size_t)rc;
	}
	rc = commit(c, errstr, errstr_size);
	if (rc)
		return rc;
	return (int)(nb + rows);
}

/* A change of a message the core got in memory at publish (never claimed)
 * carries lease 0: the row's lease is the one this relay inserted it with. */
static sqlite3_int64 change_lease(const sq_ctx *c, const ackbox_store_change *ch)
{
	return ch->lease ? (sqlite3_int64)ch->lease : sq_lease_own(c);
}

/* The note for change i, NULL if none. */
static const ackbox_attempt *note_of(const ackbox_attempt *notes, size_t i)
{
	return notes && notes[i].at_ms ? &notes[i] : NULL;
}

static int sq_apply_noted(void *vctx, const ackbox_store_change *ch, const ackbox_attempt *notes,
                          size_t n, char *errstr, size_t errstr_size)
{
	sq_ctx *c = vctx;
	int64_t now = ackbox_wall_ms();
	uint8_t *done = NULL;
	int rc;
	if (c->absent)
		return 0; /* nothing was inserted or claimed */
	rc = begin(c, 1);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "begin", errstr, errstr_size);
	/* Changes for packed members first, in order; a member that moves out
	 * (a retry) is a row by the time a later change for it comes below. */
	if (c->map.n) {
		done = calloc(n, 1);
		if (!done) {
			rollback(c);
			return ACKBOX_ERR_NOMEM;
		}
		for (size_t i = 0; i < n; i++) {
			if (ch[i].kind == ACKBOX_CHANGE_NOTE) /* the member stays packed */
				rc = sq_pack_holds(c, &ch[i].id);
			else
				rc = sq_pack_change(c, &ch[i], now, errstr, errstr_size);
			if (rc > 0 && note_of(notes, i) && ch[i].kind != ACKBOX_CHANGE_DELETE &&
			    (rc = sq_hist_add(c, &ch[i].id, &notes[i], errstr, errstr_size)) == 0)
				rc = 1;
			if (rc < 0) {
				free(done);
				rollback(c);
				return rc;
			}
			done[i] = (uint8_t)rc;
		}
	}
	for (size_t i = 0; i < n; i++) {
		sqlite3_stmt *s;
		size_t run = 0;
		int applied;
		if (done && done[i])
			continue;
		/* DELETE_MANY deletes of one lease in a row go in one statement */
		while (i + run < n && run < DELETE_MANY && ch[i + run].kind == ACKBOX_CHANGE_DELETE &&
		       ch[i + run].lease == ch[i].lease && !(done && done[i + run]))
			run++;
		if (run == DELETE_MANY) {
			s = c->st[ST_DELETE_MANY];
			sqlite3_bind_int64(s, 1, change_lease(c, &ch[i]));
			for (size_t k = 0; k < run; k++)
				sqlite3_bind_blob(s, (int)k + 2, ch[i + k].id.b, 16, SQLITE_STATIC);
			rc = sqlite3_step(s);
			sqlite3_reset(s);
			if (rc != SQLITE_DONE) {
				rc = sq_error(c->db, rc, c->path, "state change", errstr, errstr_size);
				free(done);
				rollback(c);
				return rc;
			}
			i += run - 1;
			continue;
		}
		switch (ch[i].kind) {
		case ACKBOX_CHANGE_DELETE: s = c->st[ST_DELETE]; break;
		case ACKBOX_CHANGE_RETRY: s = c->st[ST_RETRY]; break;
		case ACKBOX_CHANGE_FAIL: s = c->st[ST_FAIL]; break;
		case ACKBOX_CHANGE_RELEASE: s = c->st[ST_RELEASE]; break;
		case ACKBOX_CHANGE_NOTE: s = c->st[ST_HELD]; break;
		default: continue;
		}
		sqlite3_bind_blob(s, 1, ch[i].id.b, 16, SQLITE_STATIC);
		sqlite3_bind_int64(s, 7, change_lease(c, &ch[i]));
		if (ch[i].kind == ACKBOX_CHANGE_RETRY || ch[i].kind == ACKBOX_CHANGE_FAIL) {
			sqlite3_bind_int(s, 2, ch[i].attempts);
			sqlite3_bind_text(s, 4, ch[i].last_error, -1, SQLITE_STATIC);
			sqlite3_bind_int(s, 5, ch[i].last_code);
			sqlite3_bind_int64(s, 6, now);
		}
		if (ch[i].kind == ACKBOX_CHANGE_RETRY || ch[i].kind == ACKBOX_CHANGE_RELEASE)
			sqlite3_bind_int64(s, 3, ch[i].due_ms);
		rc = sqlite3_step(s);
		/* skipped (row gone, lease moved on): no note either */
		applied = s == c->st[ST_HELD] ? rc == SQLITE_ROW : sqlite3_changes(c->db) > 0;
		if (rc == SQLITE_ROW)
			rc = SQLITE_DONE;
		sqlite3_reset(s);
		sqlite3_clear_bindings(s);
		if (rc == SQLITE_DONE && applied && note_of(notes, i) &&
		    ch[i].kind != ACKBOX_CHANGE_DELETE &&
		    (rc = sq_hist_add(c, &ch[i].id, &notes[i], errstr, errstr_size)) == 0)
			rc = SQLITE_DONE;
		if (rc != SQLITE_DONE) {
			if (rc > 0)
				rc = sq_error(c->db, rc, c->path, "state change", errstr, errstr_size);
			free(done);
			rollback(c);
			return rc;
		}
	}
	free(done);
	/* a message that goes takes its history with it */
	rc = sq_hist_drop(c, ch, n, errstr, errstr_size);
	if (rc < 0) {
		rollback(c);
		return rc;
	}
	rc = commit(c, errstr, errstr_size);
	if (rc)
		return rc;
	return 0;
}

static int sq_apply(void *vctx, const ackbox_store_change *ch, size_t n, char *errstr,
                    size_t errstr_size)
{
	return sq_apply_noted(vctx, ch, NULL, n, errstr, errstr_size);
}

/* Runs one UPDATE/DELETE with int64 parameters; returns changes or error. */
static int exec_changes(sq_ctx *c, const char *sql, const int64_t *args, int nargs,
                        const char *what, char *errstr, size_t errstr_size)
{
	sqlite3_stmt *s;
	int rc = set_sync(c, 0);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v2(c->db, sql, -1, &s, NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, what, errstr, errstr_size);
	for (int i = 0; i < nargs; i++)
		sqlite3_bind_int64(s, i + 1, args[i]);
	rc = sqlite3_step(s);
	sqlite3_finalize(s);
	if (rc != SQLITE_DONE)
		return sq_error(c->db, rc, c->path, what, errstr, errstr_size);
	return sqlite3_changes(c->db);
}

/*
 * Crash recovery at open, for a handle that sends: it registers as an
 * owner, and what no live relay owns becomes due now (owner.c). The rows a
 * live relay holds stay its own, so a second publisher on the file neither
 * resends nor counts them. The first claim unpacks recovered batches.
 */
static int sq_recover_now(sq_ctx *c, int64_t now_ms, char *errstr, size_t errstr_size)
{
	int rc = begin(c, 1);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "begin", errstr, errstr_size);
	rc = sq_owner_register(c, now_ms, errstr, errstr_size);
	if (rc == 0)
		rc = sq_owner_check(c, now_ms, 1, errstr, errstr_size);
	if (rc) {
		rollback(c);
		return rc;
	}
	rc = commit(c, errstr, errstr_size);
	if (rc)
		return rc;
	return 0;
}

static int sq_recover(void *vctx, int64_t now_ms, char *errstr, size_t errstr_size)
{
	sq_ctx *c = vctx;
	c->relay = 1;
	if (c->absent)
		return 0; /* nothing to recover; the first insert or claim registers */
	return sq_recover_now(c, now_ms, errstr, errstr_size);
}

static int sq_counts(void *vctx, ackbox_counts *out, char *errstr, size_t errstr_size)
{
	sq_ctx *c = vctx;
	sqlite3_stmt *s;
	int rc;
	memset(out, 0, sizeof(*out));
	if (c->absent)
		return 0;
	rc = sqlite3_prepare_v2(c->db,
	                        "SELECT (SELECT count(*) FROM ackbox_outbox WHERE state < 2),"
	                        " (SELECT count(*) FROM ackbox_outbox WHERE state = 1),"
	                        " (SELECT count(*) FROM ackbox_outbox WHERE state = 2),"
	                        " (SELECT min(created_ms) FROM ackbox_outbox WHERE state < 2)",
	                        -1, &s, NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "counting", errstr, errstr_size);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		uint64_t pending = (uint64_t)sqlite3_column_int64(s, 0);
		out->retrying = (uint64_t)sqlite3_column_int64(s, 1);
		out->sending = pending >= out->retrying ? pending - out->retrying : 0;
		out->failed = (uint64_t)sqlite3_column_int64(s, 2);
		out->oldest_pending_ms = sqlite3_column_int64(s, 3);
	}
	sqlite3_finalize(s);
	if (rc != SQLITE_ROW)
		return sq_error(c->db, rc, c->path, "counting", errstr, errstr_size);
	{
		uint64_t packed = 0;
		int64_t oldest = 0;
		rc = sq_pack_counts(c, &packed, &oldest, errstr, errstr_size);
		if (rc)
			return rc;
		out->sending += packed;
		if (packed && oldest && (!out->oldest_pending_ms || oldest < out->oldest_pending_ms))
			out->oldest_pending_ms = oldest;
	}
	return 0;
}

/*
 * For the backlog bound: rows in every state, members of packed batches not
 * yet final (acks held in memory subtracted, as counts() does), and payload
 * bytes, where a packed batch counts with its whole blob until its row goes
 * (high, never low). Two index-free scans; the core asks rarely.
 */
static int sq_usage(void *vctx, uint64_t *messages, uint64_t *bytes, char *errstr,
                    size_t errstr_size)
{
	sq_ctx *c = vctx;
	sqlite3_stmt *s;
	uint64_t packed = 0;
	int64_t oldest = 0;
	int rc = sqlite3_prepare_v2(c->db,
	                            "SELECT (SELECT count(*) FROM ackbox_outbox),"
	                            " (SELECT coalesce(sum(length(payload)), 0) FROM ackbox_outbox),"
	                            " (SELECT coalesce(sum(length(data)), 0) FROM ackbox_batch)",
	                            -1, &s, NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "measuring", errstr, errstr_size);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*messages = (uint64_t)sqlite3_column_int64(s, 0);
		*bytes = (uint64_t)sqlite3_column_int64(s, 1) + (uint64_t)sqlite3_column_int64(s, 2);
	}
	sqlite3_finalize(s);
	if (rc != SQLITE_ROW)
		return sq_error(c->db, rc, c->path, "measuring", errstr, errstr_size);
	rc = sq_pack_counts(c, &packed, &oldest, errstr, errstr_size);
	if (rc)
		return rc;
	*messages += packed;
	return 0;
}

static int sq_has_pending(void *vctx, char *errstr, size_t errstr_size)
{
	sq_ctx *c = vctx;
	int rc;
	if (c->absent)
		return 0;
	rc = sqlite3_step(c->st[ST_PENDING_ANY]);
	sqlite3_reset(c->st[ST_PENDING_ANY]);
	if (rc == SQLITE_ROW)
		return 1;
	if (rc == SQLITE_DONE)
		return 0;
	return sq_error(c->db, rc, c->path, "checking for pending rows", errstr, errstr_size);
}

static int iterate(sq_ctx *c, sqlite3_stmt *s, ackbox_store_row_cb cb, void *opaque,
                   const char *what, char *errstr, size_t errstr_size)
{
	int rc, n = 0, stop = 0;
	while (!stop && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		ackbox_store_row row;
		read_row(s, &row);
		n++;
		stop = cb(&row, opaque);
	}
	sqlite3_finalize(s);
	if (!stop && rc != SQLITE_DONE)
		return sq_error(c->db, rc, c->path, what, errstr, errstr_size);
	return n;
}

static const ackbox_store_row *pack_iter_next_v(void *it, int *rc, char *errstr,
                                                size_t errstr_size)
{
	return sq_pack_iter_next(it, rc, errstr, errstr_size);
}

static int sq_list(void *vctx, int state, size_t limit, ackbox_store_row_cb cb, void *opaque,
                   char *errstr, size_t errstr_size)
{
	sq_ctx *c = vctx;
	sqlite3_stmt *s;
	sq_pack_iter it;
	ackbox_rowmerge m;
	int rc;

	if (c->absent)
		return 0;
	sq_pack_iter_init(c, &it);
	ackbox_rowmerge_init(&m, pack_iter_next_v, &it, limit, cb, opaque, errstr, errstr_size);
	/* packed members are SENDING; they are merged in by id, a batch at a time */
	if ((state < 0 || state == ACKBOX_MSG_SENDING) && ackbox_rowmerge_start(&m) != 0) {
		sq_pack_iter_fini(&it);
		return m.rc;
	}
	rc = sqlite3_prepare_v2(c->db,
	                        /* by id: a member moved out of a batch gets a later seq */
	                        state < 0 ? "SELECT " ROW_COLS " FROM ackbox_outbox ORDER BY id"
	                                    " LIMIT ?2"
	                                  : "SELECT " ROW_COLS " FROM ackbox_outbox WHERE "
	                                    "state = ?1 ORDER BY id LIMIT ?2",
	                        -1, &s, NULL);
	if (rc != SQLITE_OK) {
		sq_pack_iter_fini(&it);
		return sq_error(c->db, rc, c->path, "list", errstr, errstr_size);
	}
	sqlite3_bind_int(s, 1, state);
	sqlite3_bind_int64(s, 2, limit ? (sqlite3_int64)limit : -1);
	rc = iterate(c, s, ackbox_rowmerge_cb, &m, "list", errstr, errstr_size);
	if (rc >= 0)
		ackbox_rowmerge_before(&m, NULL);
	sq_pack_iter_fini(&it);
	if (m.rc)
		return m.rc;
	return rc < 0 ? rc : (int)m.emitted;
}

static int sq_get(void *vctx, const ackbox_id *id, ackbox_store_row_cb cb, void *opaque,
                  char *errstr, size_t errstr_size)
{
	sq_ctx *c = vctx;
	sqlite3_stmt *s;
	char idstr[ACKBOX_ID_STRLEN];
	int rc;
	if (c->absent) {
		ackbox_id_format(id, idstr);
		ackbox_errstr_set(errstr, errstr_size, "no message %s in '%s'", idstr, c->path);
		return ACKBOX_ERR_NOT_FOUND;
	}
	rc = sqlite3_prepare_v2(c->db, "SELECT " ROW_COLS " FROM ackbox_outbox WHERE id = ?1", -1,
	                        &s, NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "get", errstr, errstr_size);
	sqlite3_bind_blob(s, 1, id->b, 16, SQLITE_STATIC);
	rc = iterate(c, s, cb, opaque, "get", errstr, errstr_size);
	if (rc == 0) {
		/* a packed member: walk the batches, one in memory at a time */
		sq_pack_iter it;
		const ackbox_store_row *m;
		sq_pack_iter_init(c, &it);
		while ((m = sq_pack_iter_next(&it, &rc, errstr, errstr_size)) != NULL) {
			if (memcmp(m->id.b, id->b, 16) == 0) {
				cb(m, opaque);
				rc = 1;
				break;
			}
		}
		sq_pack_iter_fini(&it);
		if (rc < 0)
			return rc;
	}
	if (rc == 0) {
		ackbox_id_format(id, idstr);
		ackbox_errstr_set(errstr, errstr_size, "no message %s in '%s'", idstr, c->path);
		return ACKBOX_ERR_NOT_FOUND;
	}
	return rc < 0 ? rc : 0;
}

static int sq_requeue(void *vctx, const ackbox_id *ids, size_t n, int64_t now_ms, char *errstr,
                      size_t errstr_size)
{
	sq_ctx *c = vctx;
	sqlite3_stmt *s;
	int rc, total = 0;
	/* a requeued message is anyone's: its owner bits go, its counter moves on */
	if (c->absent)
		return 0;
	if (!ids) {
		int64_t a[1] = {now_ms};
		return exec_changes(c,
		                    "UPDATE ackbox_outbox SET state = 1, attempts = 0, due_ms = ?1,"
		                    " updated_ms = ?1, lease = ((lease & 4294967295) + 1) & 4294967295"
		                    " WHERE state = 2",
		                    a, 1, "requeue", errstr, errstr_size);
	}
	rc = begin(c, 0);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v2(c->db,
		                        "UPDATE ackbox_outbox SET state = 1, attempts = 0, due_ms = ?2,"
		                        " updated_ms = ?2,"
		                        " lease = ((lease & 4294967295) + 1) & 4294967295"
		                        " WHERE id = ?1 AND state = 2",
		                        -1, &s, NULL);
	if (rc != SQLITE_OK) {
		rc = sq_error(c->db, rc, c->path, "requeue", errstr, errstr_size);
		rollback(c);
		return rc;
	}
	for (size_t i = 0; i < n; i++) {
		sqlite3_bind_blob(s, 1, ids[i].b, 16, SQLITE_STATIC);
		sqlite3_bind_int64(s, 2, now_ms);
		rc = sqlite3_step(s);
		sqlite3_reset(s);
		if (rc != SQLITE_DONE) {
			rc = sq_error(c->db, rc, c->path, "requeue", errstr, errstr_size);
			sqlite3_finalize(s);
			rollback(c);
			return rc;
		}
		total += sqlite3_changes(c->db);
	}
	sqlite3_finalize(s);
	rc = commit(c, errstr, errstr_size);
	if (rc)
		return rc;
	return total;
}

static int sq_purge(void *vctx, int64_t older_than_ms, char *errstr, size_t errstr_size)
{
	sq_ctx *c = vctx;
	int64_t a[1] = {older_than_ms};
	int rc, hist;
	if (c->absent)
		return 0;
	rc = begin(c, 0);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "begin", errstr, errstr_size);
	/* the histories first, in the same transaction */
	hist = sq_hist_table(c, 0, errstr, errstr_size);
	rc = hist;
	if (hist > 0)
		rc = exec_changes(c,
		                  "DELETE FROM ackbox_attempt WHERE id IN (SELECT id FROM ackbox_outbox"
		                  " WHERE state = 2 AND updated_ms < ?1)",
		                  a, 1, "purge", errstr, errstr_size);
	if (rc >= 0)
		rc = exec_changes(c, "DELETE FROM ackbox_outbox WHERE state = 2 AND updated_ms < ?1",
		                  a, 1, "purge", errstr, errstr_size);
	if (rc < 0) {
		rollback(c);
		return rc;
	}
	if ((hist = commit(c, errstr, errstr_size)) != 0)
		return hist;
	return rc;
}

/*
 * An operator's override of one message, whatever its state and lease
 * (store.h). A row FAILs with a new lease (lease + 1: the holder's changes
 * carry the old one) or goes; a packed member is taken out of its batch.
 * Durable like an insert: an operator expects it to stick.
 */
static int sq_force_noted(void *vctx, const ackbox_store_change *ch, const ackbox_attempt *note,
                          int64_t now_ms, char *errstr, size_t errstr_size)
{
	sq_ctx *c = vctx;
	sqlite3_stmt *s = NULL;
	char idstr[ACKBOX_ID_STRLEN];
	int rc, done;

	if (ch->kind != ACKBOX_CHANGE_FAIL && ch->kind != ACKBOX_CHANGE_DELETE) {
		ackbox_errstr_set(errstr, errstr_size, "sqlite store '%s': force takes FAIL or DELETE",
		                  c->path);
		return ACKBOX_ERR_INVALID;
	}
	if (c->absent) {
		ackbox_id_format(&ch->id, idstr);
		ackbox_errstr_set(errstr, errstr_size, "no message %s in '%s'", idstr, c->path);
		return ACKBOX_ERR_NOT_FOUND;
	}
	rc = begin(c, 0);
	if (rc == SQLITE_OK)
		rc = sqlite3_prepare_v2(c->db,
		                        ch->kind == ACKBOX_CHANGE_DELETE
		                            ? "DELETE FROM ackbox_outbox WHERE id = ?1"
		                            : "UPDATE ackbox_outbox SET state = 2, last_error = ?2,"
		                              " last_code = ?3, updated_ms = ?4, lease = lease + 1"
		                              " WHERE id = ?1",
		                        -1, &s, NULL);
	if (rc != SQLITE_OK) {
		rc = sq_error(c->db, rc, c->path, "force", errstr, errstr_size);
		rollback(c);
		return rc;
	}
	sqlite3_bind_blob(s, 1, ch->id.b, 16, SQLITE_STATIC);
	if (ch->kind == ACKBOX_CHANGE_FAIL) {
		sqlite3_bind_text(s, 2, ch->last_error, -1, SQLITE_STATIC);
		sqlite3_bind_int(s, 3, ch->last_code);
		sqlite3_bind_int64(s, 4, now_ms);
	}
	rc = sqlite3_step(s);
	sqlite3_finalize(s);
	if (rc != SQLITE_DONE) {
		rc = sq_error(c->db, rc, c->path, "force", errstr, errstr_size);
		rollback(c);
		return rc;
	}
	done = sqlite3_changes(c->db);
	if (!done)
		done = sq_pack_force(c, ch, now_ms, errstr, errstr_size);
	if (done <= 0) {
		rollback(c);
		if (done < 0)
			return done;
		ackbox_id_format(&ch->id, idstr);
		ackbox_errstr_set(errstr, errstr_size, "no message %s in '%s'", idstr, c->path);
		return ACKBOX_ERR_NOT_FOUND;
	}
	if (ch->kind == ACKBOX_CHANGE_FAIL && note)
		done = sq_hist_add(c, &ch->id, note, errstr, errstr_size);
	else if (ch->kind == ACKBOX_CHANGE_DELETE)
		done = sq_hist_drop(c, ch, 1, errstr, errstr_size);
	if (done < 0) {
		rollback(c);
		return done;
	}
	rc = commit(c, errstr, errstr_size);
	if (rc)
		return rc;
	return 1;
}

static int sq_force(void *vctx, const ackbox_store_change *ch, int64_t now_ms, char *errstr,
                    size_t errstr_size)
{
	return sq_force_noted(vctx, ch, NULL, now_ms, errstr, errstr_size);
}

/*
 * Keys whose head (oldest row) is FAILED. Read-only; a file never opened
 * with delivery.order=key has no heads and so no blocked keys.
 */
static int sq_blocked_keys(void *vctx, size_t limit, ackbox_store_blocked_cb cb, void *opaque,
                           char *errstr, size_t errstr_size)
{
	sq_ctx *c = vctx;
	sqlite3_stmt *s;
	int rc, n = 0, stop = 0;
	if (c->absent) /* store.create=insert, nothing inserted yet */
		return 0;
	if (!c->order_installed && !(c->order_installed = order_present(c)))
		return 0;
	rc = sqlite3_prepare_v2(c->db,
	                        "SELECT f.msg_key, f.id, (SELECT count(*) FROM ackbox_outbox p"
	                        " WHERE p.msg_key = f.msg_key AND p.state < 2)"
	                        " FROM ackbox_outbox f WHERE f.state = 2 AND f.head = 1"
	                        " AND f.msg_key IS NOT NULL ORDER BY f.seq LIMIT ?1",
	                        -1, &s, NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "blocked keys", errstr, errstr_size);
	sqlite3_bind_int64(s, 1, limit ? (sqlite3_int64)limit : -1);
	while (!stop && (rc = sqlite3_step(s)) == SQLITE_ROW) {
		ackbox_store_blocked b;
		memset(&b, 0, sizeof(b));
		b.key = sqlite3_column_blob(s, 0);
		b.key_len = (size_t)sqlite3_column_bytes(s, 0);
		if (sqlite3_column_bytes(s, 1) == 16)
			memcpy(b.failed_id.b, sqlite3_column_blob(s, 1), 16);
		b.waiting = (uint64_t)sqlite3_column_int64(s, 2);
		n++;
		stop = cb(&b, opaque);
	}
	sqlite3_finalize(s);
	if (!stop && rc != SQLITE_DONE)
		return sq_error(c->db, rc, c->path, "blocked keys", errstr, errstr_size);
	return n;
}

const ackbox_store_ops ackbox_sqlite_store = {
	.abi_version = ACKBOX_STORE_ABI_VERSION,
	.struct_size = sizeof(ackbox_store_ops),
	.scheme = "sqlite",
	.caps = 0,
	.ctx_size = sizeof(sq_ctx),
	.props = sq_props,
	.description = "SQLite file in WAL mode (default store)",
	.open = sq_open,
	.close = sq_close,
	.insert = sq_insert,
	.claim = sq_claim,
	.apply = sq_apply,
	.recover = sq_recover,
	.counts = sq_counts,
	.list = sq_list,
	.get = sq_get,
	.requeue = sq_requeue,
	.purge = sq_purge,
	.has_pending = sq_has_pending,
	.sync = sq_sync,
	.force = sq_force,
	.usage = sq_usage,
	.blocked_keys = sq_blocked_keys,
	.apply_noted = sq_apply_noted,
	.force_noted = sq_force_noted,
	.history = sq_history,
};

/* ------------------------------------------------------------------ */
/* The transactional entry point                                        */
/* ------------------------------------------------------------------ */

int ackbox_sqlite_install_schema(sqlite3 *db, char *errstr, size_t errstr_size)
{
	int rc;
	if (!db)
		return ACKBOX_ERR_INVALID;
	rc = sqlite3_exec(db, schema_sql, NULL, NULL, NULL);
	if (rc == SQLITE_OK)
		rc = add_payload_len(db);
	if (rc != SQLITE_OK)
		return sq_error(db, rc, sqlite3_db_filename(db, "main"), "creating the schema", errstr,
		                errstr_size);
	return 0;
}

int ackbox_sqlite_enqueue(sqlite3 *db, const ackbox_msg *m, ackbox_id *id_out, char *errstr,
                          size_t errstr_size)
{
	static const char sql[] = "INSERT INTO ackbox_outbox(id, state, attempts, due_ms, created_ms,"
	                          " updated_ms, topic, msg_key, content_type, headers, payload,"
	                          " payload_len) VALUES(?1, 0, 0, ?2, ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
	const char *path;
	sqlite3_stmt *s = NULL;
	ackbox_id id;
	uint8_t *hbuf = NULL;
	size_t hl;
	int rc;

	if (!db || !m || !m->topic || !*m->topic || (!m->payload && m->payload_len) ||
	    (!m->key && m->key_len) || (!m->headers && m->header_count)) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "ackbox_sqlite_enqueue: NULL db, message or topic, or NULL data "
		                  "with a length");
		return ACKBOX_ERR_INVALID;
	}
	path = sqlite3_db_filename(db, "main");
	rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
	if (rc != SQLITE_OK) {
		/* first use on this database (or on a file from before payload_len):
		 * the outbox table is created inside the application's transaction,
		 * so it rolls back with it too */
		rc = ackbox_sqlite_install_schema(db, errstr, errstr_size);
		if (rc)
			return rc;
		rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
		if (rc != SQLITE_OK)
			return sq_error(db, rc, path, "preparing the outbox insert", errstr,
			                errstr_size);
	}
	hl = ackbox_headers_encoded_size(m->headers, m->header_count);
	if (hl) {
		hbuf = malloc(hl);
		if (!hbuf) {
			sqlite3_finalize(s);
			return ACKBOX_ERR_NOMEM;
		}
		ackbox_headers_encode(m->headers, m->header_count, hbuf);
	}
	ackbox_id_new(&id);
	sqlite3_bind_blob(s, 1, id.b, 16, SQLITE_STATIC);
	sqlite3_bind_int64(s, 2, ackbox_wall_ms());
	sqlite3_bind_text(s, 3, m->topic, -1, SQLITE_STATIC);
	if (m->key_len)
		sqlite3_bind_blob(s, 4, m->key, (int)m->key_len, SQLITE_STATIC);
	if (m->content_type)
		sqlite3_bind_text(s, 5, m->content_type, -1, SQLITE_STATIC);
	if (hl)
		sqlite3_bind_blob(s, 6, hbuf, (int)hl, SQLITE_STATIC);
	sqlite3_bind_blob(s, 7, m->payload_len ? m->payload : "", (int)m->payload_len, SQLITE_STATIC);
	sqlite3_bind_int64(s, 8, (sqlite3_int64)m->payload_len);
	rc = sqlite3_step(s);
	sqlite3_finalize(s);
	free(hbuf);
	if (rc != SQLITE_DONE)
		return sq_error(db, rc, path, "outbox insert", errstr, errstr_size);
	if (id_out)
		*id_out = id;
	return 0;
}
