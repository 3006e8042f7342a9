/*
 * sqlite_int.h - what sqlite.c (rows, the store ops) and packed.c (packed
 * batches) share. Not installed.
 */
#ifndef ACKBOX_SQLITE_INT_H
#define ACKBOX_SQLITE_INT_H

#include <stdint.h>
#include <sys/types.h>

#include <sqlite3.h>

#include <ackbox/idmap.h>
#include <ackbox/store.h>

enum {
	ST_BEGIN,
	ST_COMMIT,
	ST_ROLLBACK,
	ST_INSERT,
	ST_CLAIM_SEL,
	ST_CLAIM_UPD,
	ST_DELETE,
	ST_RETRY,
	ST_FAIL,
	ST_RELEASE,
	ST_PENDING_ANY,
	ST_DELETE_MANY,
	ST_HELD,
	ST_DAMAGED,
	ST_COUNT
};

/* A row a claim found damaged: failed by the store before the claim ends. */
typedef struct sq_damaged {
	int64_t seq;
	char id[40];
	char why[160];
} sq_damaged;

/* packed.c's statements */
enum {
	PK_INSERT,
	PK_DELETE,
	PK_DELETE_OUT,
	PK_DATA,
	PK_OUT_ADD,
	PK_OUT_OF,
	PK_ROW_ADD,
	PK_DUE,
	PK_TAKE,
	PK_NEXT,
	PK_DELETE_ANY,
	PK_FENCE,
	PK_COUNT
};

typedef struct sq_batch sq_batch;

/* store.create: when a missing store (file, or ackbox's tables in it) is made */
typedef enum sq_create {
	SQ_CREATE_OPEN = 0,   /* at open (the default) */
	SQ_CREATE_INSERT = 1, /* at the first insert; until then the store reads as empty */
	SQ_CREATE_NEVER = 2   /* never: a missing or foreign store fails open */
} sq_create;

/*
 * A lease word is (owner << 32) | counter: the owner is the row of
 * ackbox_owner of the relay that inserted or last claimed the row, the
 * counter goes up with every claim. Changes carry the whole word, so
 * fencing compares both. A row whose owner is 0 or no longer registered is
 * anyone's when due; one of another registered relay is that relay's,
 * unless this connection cannot check it (temp.ackbox_foreign).
 */
#define SQ_LEASE_COUNTER 0xffffffffLL

/* A claim's filter: not held by another registered relay (?3 is this one),
 * unless this connection cannot check that relay. */
#define SQ_NOT_HELD                                                                                \
	"(lease >> 32) NOT IN (SELECT owner FROM ackbox_owner WHERE owner <> ?3"                   \
	" AND owner NOT IN (SELECT owner FROM temp.ackbox_foreign))"

/* The payload's length as written, last in an ackbox_outbox column list
 * (its value last in VALUES; in a SELECT, a column claims check): a file
 * from before the column has it dropped by sq_stmt_sql(). */
#define SQ_PLEN_COL ", payload_len"

typedef struct sq_ctx {
	sqlite3 *db;
	char *path;
	const ackbox_conf *conf; /* the handle's, for ackbox_store_log */
	sqlite3_stmt *st[ST_COUNT];
	const char *sync_full; /* PRAGMA for durable inserts */
	int cur_sync;          /* 0 = durable mode set, 1 = relaxed mode set */
	ackbox_sync sync;
	int64_t *seqs;
	size_t cap_seqs;
	int wal_fd;    /* our descriptor of <path>-wal for sync(), -1 if none */
	ino_t wal_ino;
	int need_sync; /* an insert committed without fsync since the last sync() */
	int have_payload_len; /* the file's ackbox_outbox has the column */
	sq_damaged *damaged;  /* rows the claim under way found damaged */
	size_t ndamaged, cap_damaged;

	/* packed batches this instance wrote and still has members of */
	sqlite3_stmt *pk[PK_COUNT];
	ackbox_idmap map; /* member id -> (its sq_batch, its index) */
	sq_batch *batches; /* doubly linked */
	sq_batch *fresh;   /* written by the open transaction, kept if it commits */

	/* store.create, and what open found (owner.c, sqlite.c) */
	sq_create create;
	int sender;     /* the handle has a transport: it may upgrade an older schema */
	int absent;     /* no ackbox store yet (store.create=insert): the first insert makes it */
	int has_owners; /* the ackbox_owner table exists */
	int has_history; /* the ackbox_attempt table is known to exist (history.c) */
	sqlite3_stmt *hist_add, *hist_trim, *hist_del, *hist_any; /* prepared at first use */
	int relay;      /* recover() was called: this handle claims and sends */

	/* this relay's ownership of rows (owner.c) */
	int64_t owner;            /* its ackbox_owner row, 0 until registered */
	int64_t owners_checked_ms; /* when the other owners were last looked at */

	/* delivery.order=key (docs/ordering.md) */
	int order_wanted;               /* conf says delivery.order=key */
	int ordered;                /* this handle claims in key order, writes no batches */
	int order_installed;        /* the file has the head column and its triggers */
	sqlite3_stmt *claim_ordered; /* prepared when ordered */
} sq_ctx;

/* Walks the packed members that are not final, batch by batch (in the
 * order batches were written), each batch's members in id order. */
typedef struct sq_pack_iter {
	sq_ctx *c;
	int64_t after; /* the last batch loaded */
	ackbox_store_row *rows;
	size_t n, pos;
	void *blob, *tbuf; /* what rows point into */
	int done;
} sq_pack_iter;

int sq_error(sqlite3 *db, int rc, const char *path, const char *what, char *errstr,
             size_t errstr_size);

/* sql as prepared on this file: without the owner filter (SQ_NOT_HELD) when
 * the file has no ackbox_owner table, and without payload_len (SQ_PLEN_COL;
 * a SELECT reads NULL) when its ackbox_outbox lacks the column: an older
 * file a handle must not upgrade. */
const char *sq_stmt_sql(const sq_ctx *c, const char *sql, char *buf, size_t size);

/* The lease a claim by `owner` gives a row that had `old`. */
static inline int64_t sq_lease_next(int64_t old, int64_t owner)
{
	return (int64_t)((uint64_t)owner << 32) | (((old & SQ_LEASE_COUNTER) + 1) & SQ_LEASE_COUNTER);
}

/* The lease a row this relay inserts gets (and the one a change of a fresh,
 * never claimed message means by lease 0). */
static inline int64_t sq_lease_own(const sq_ctx *c)
{
	return (int64_t)((uint64_t)c->owner << 32);
}

/*
 * owner.c. Registers this relay in ackbox_owner (pid, process start time,
 * boot id, pid namespace) unless it is already; inside a transaction.
 */
int sq_owner_register(sq_ctx *c, int64_t now_ms, char *errstr, size_t errstr_size);

/*
 * Inside a transaction: looks at the other registered owners. One whose
 * process is gone is unregistered, and its SENDING/RETRYING rows and
 * batches leased into the future become due now; one this process cannot
 * check (another pid namespace) keeps its rows until their lease runs out.
 * at_open also makes due what nobody and this relay hold (crash recovery).
 * Returns 0 or an error.
 */
int sq_owner_check(sq_ctx *c, int64_t now_ms, int at_open, char *errstr, size_t errstr_size);

/* Whether a running relay should look at the other owners again (about once a second). */
int sq_owner_due_check(sq_ctx *c, int64_t now_ms);

/*
 * At close, inside the caller's transaction: this relay's registration
 * goes, and with it its hold on its rows and batches (due as they are:
 * another relay takes them when their lease runs out, the next one to open
 * at once). Returns SQLITE_OK or an SQLite error.
 */
int sq_owner_unregister(sq_ctx *c);

/*
 * When unregistering failed: this process forgets owner c->owner, and its
 * own later checks of the file treat it as gone (other processes do so once
 * this one has ended).
 */
void sq_owner_stale(sq_ctx *c);

/* Prepares packed.c's statements (after the schema exists). */
int sq_pack_open(sq_ctx *c, char *errstr, size_t errstr_size);
/* Finalizes them and forgets the batches in memory (they stay on disk). */
void sq_pack_close(sq_ctx *c);

/* Whether a batch this instance holds has members acked in memory only. */
int sq_pack_partly_acked(const sq_ctx *c);

/*
 * At close, inside the caller's transaction: each batch with members acked
 * in memory is replaced by rows of its other members (under the batch's
 * lease), so the next relay does not send the acked ones again.
 * Returns 0, or an error with err set.
 */
int sq_pack_write_out(sq_ctx *c, char *err, size_t err_size);

/*
 * Inside insert()'s transaction: writes recs as one packed row if they can
 * be (enough of them, all leased to this process). Returns 1 if packed, 0
 * if the caller should write rows, or an error. sq_pack_inserted() must
 * follow the transaction's end.
 */
int sq_pack_insert(sq_ctx *c, const ackbox_store_rec *recs, size_t n, int64_t now_ms,
                   char *errstr, size_t errstr_size);
void sq_pack_inserted(sq_ctx *c, int committed);

/*
 * Inside apply()'s transaction: applies ch if its message is a packed
 * member this instance holds. Returns 1 if done, 0 if the message is not
 * one (the caller applies it to ackbox_outbox), or an error.
 */
/* 1 if this process holds the packed member id (in its map), else 0. */
int sq_pack_holds(sq_ctx *c, const ackbox_id *id);

/* ---- history.c: the attempt history (store ABI 1.6) ---- */
/* 1 if ackbox_attempt exists (made first when create), 0 if not, or an error. */
int sq_hist_table(sq_ctx *c, int create, char *errstr, size_t errstr_size);
/* Adds a note for id and keeps the last ACKBOX_HISTORY_MAX. In a transaction. */
int sq_hist_add(sq_ctx *c, const ackbox_id *id, const ackbox_attempt *a, char *errstr,
                size_t errstr_size);
/* Drops the notes of the messages that the DELETE changes among ch[0..n) name.
 * In a transaction. */
int sq_hist_drop(sq_ctx *c, const ackbox_store_change *ch, size_t n, char *errstr,
                 size_t errstr_size);
int sq_history(void *vctx, const ackbox_id *id, ackbox_store_attempt_cb cb, void *opaque,
               char *errstr, size_t errstr_size);
/* The SQL that makes the table (in the schema of a new file too). */
#define SQ_HIST_SCHEMA                                                                             \
	"CREATE TABLE IF NOT EXISTS ackbox_attempt(id BLOB NOT NULL, n INTEGER NOT NULL,"         \
	" at_ms INTEGER NOT NULL, outcome INTEGER NOT NULL, code INTEGER NOT NULL,"                \
	" text TEXT NOT NULL, PRIMARY KEY(id, n)) WITHOUT ROWID;"

int sq_pack_change(sq_ctx *c, const ackbox_store_change *ch, int64_t now_ms, char *errstr,
                   size_t errstr_size);

/*
 * Inside claim()'s transaction: takes due batches (new ones, or ones whose
 * holder's lease ran out) with a new lease until about `budget` members
 * are handed to cb (one batch may overshoot it). Sets *stop if cb asked.
 * Returns the number handed, or an error.
 */
int sq_pack_claim(sq_ctx *c, int64_t now_ms, int64_t lease_until_ms, size_t budget,
                  ackbox_store_row_cb cb, void *opaque, int *stop, char *errstr,
                  size_t errstr_size);

/*
 * Inside force()'s transaction, for an id that is not a row: takes the
 * packed member out of its batch, whoever holds the batch. FAIL writes it
 * as a FAILED row with a lease above the batch's (a holder's later change
 * for it is skipped); DELETE only notes it out. A batch with nothing left
 * to send is deleted. Returns 1 if done, 0 if no member is that id (or it
 * is final already), or an error.
 */
int sq_pack_force(sq_ctx *c, const ackbox_store_change *ch, int64_t now_ms, char *errstr,
                  size_t errstr_size);

/* Inside claim()'s transaction, ordered mode: writes every due batch out
 * as rows. Returns the rows written, or an error. */
int sq_pack_unpack_due(sq_ctx *c, int64_t now_ms, char *errstr, size_t errstr_size);

/* Members not yet final, and the oldest one's created_ms (0 if none). */
int sq_pack_counts(sq_ctx *c, uint64_t *pending, int64_t *oldest_ms, char *errstr,
                   size_t errstr_size);

void sq_pack_iter_init(sq_ctx *c, sq_pack_iter *it);
/* The next member as a SENDING row, valid until the next call; NULL at the
 * end, or on an error (*rc < 0). One batch is in memory at a time. */
const ackbox_store_row *sq_pack_iter_next(sq_pack_iter *it, int *rc, char *errstr,
                                          size_t errstr_size);
void sq_pack_iter_fini(sq_pack_iter *it);

#endif
