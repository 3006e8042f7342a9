/*
 * sqlite_int.h - what sqlite.c (rows, the store ops) and packed.c (packed
 * batches) share. Not installed.
 */
#ifndef ACKBOX_SQLITE_INT_H
#define ACKBOX_SQLITE_INT_H

#include <stdint.h>
#include <sys/types.h>

#include <sqlite3.h>

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
typedef struct sq_slot sq_slot;

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
	sq_slot *slots; /* open addressing: member id -> batch, index */
	size_t cap_slots, nslots;
	sq_batch *batches; /* doubly linked */
	sq_batch *fresh;   /* written by the open transaction, kept if it commits */
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

/* Prepares packed.c's statements (after the schema exists). */
int sq_pack_open(sq_ctx *c, char *errstr, size_t errstr_size);
/* Finalizes them and forgets the batches in memory (they stay on disk). */
void sq_pack_close(sq_ctx *c);

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
