/*
 * sqlite.h - the transactional entry points of the SQLite store, on the
 * application's own connection and inside its own transaction: the
 * publisher's (a business row and its message commit or roll back together;
 * any relay on the same file then sends it) and the consumer's inbox (a
 * message's effect and the record of having applied it commit together).
 */
#ifndef ACKBOX_SQLITE_H
#define ACKBOX_SQLITE_H

#include <ackbox/ackbox.h>
#include <ackbox/inbox.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sqlite3 sqlite3;

/**
 * Inserts msg into the outbox table of db, in whatever transaction db has
 * open (call it between your BEGIN and COMMIT). Creates the outbox tables on
 * first use. The message is durable when YOUR transaction commits, and is
 * gone if it rolls back. A relay (ackbox_new with store.url naming the same
 * file and a transport.url, or `ackbox relay`) picks it up within
 * store.poll_interval. *id_out (may be NULL) gets the message id.
 *
 * Threading: whatever db allows; ackbox keeps no state here. Ownership:
 * the caller keeps msg and db. No size limit is applied beyond SQLite's own;
 * the relay fails a message larger than the transport accepts.
 */
ACKBOX_API int ackbox_sqlite_enqueue(sqlite3 *db, const ackbox_msg *msg, ackbox_id *id_out,
                                     char *errstr, size_t errstr_size);

/** Creates the outbox tables in db if missing (idempotent). */
ACKBOX_API int ackbox_sqlite_install_schema(sqlite3 *db, char *errstr, size_t errstr_size);

/* ------------------------------------------------------------------ */
/* The consumer inbox (include/ackbox/inbox.h, docs/consumers.md)       */
/* ------------------------------------------------------------------ */

/**
 * Records that `consumer` has processed message `id`, in the transaction
 * open on db (call it between your BEGIN and COMMIT, before or after the
 * effect). Returns ACKBOX_INBOX_FIRST (no committed record existed: apply
 * the effect in this transaction), ACKBOX_INBOX_DUPLICATE (a committed
 * record exists, or this transaction made one: skip the effect) or a
 * negative error. The record commits or rolls back with YOUR transaction.
 *
 * Creates the inbox table (ackbox_inbox) on first use, inside that
 * transaction. Costs one INSERT ... ON CONFLICT DO NOTHING on the primary
 * key (consumer, id). Since SQLite has one writer at a time, it takes the
 * write lock if your transaction does not hold it yet (BEGIN IMMEDIATE
 * avoids a late SQLITE_BUSY): ACKBOX_ERR_STORE_LOCKED after the
 * connection's busy timeout.
 *
 * ACKBOX_ERR_INVALID for a NULL db or id, a consumer name that is empty or
 * longer than ACKBOX_INBOX_CONSUMER_MAX bytes, or no open transaction
 * (recorded alone, a crash before the effect would lose the effect).
 *
 * Threading: whatever db allows; ackbox keeps no state here. Ownership:
 * the caller keeps db, consumer and id.
 */
ACKBOX_API int ackbox_sqlite_inbox_record(sqlite3 *db, const char *consumer, const ackbox_id *id,
                                          char *errstr, size_t errstr_size);

/**
 * Deletes at most max_rows records of `consumer` that are older than
 * window_ms (recorded before now - window_ms), oldest first, in one short
 * transaction of its own, and returns how many it deleted (>= 0) or a
 * negative error. Call it again while it returns max_rows; between calls
 * other writers get the lock. window_ms 0 means
 * ACKBOX_INBOX_WINDOW_DEFAULT_MS (7 days), max_rows 0 means
 * ACKBOX_INBOX_BATCH_DEFAULT (1000). A duplicate that arrives after its
 * record was deleted is answered FIRST again (docs/consumers.md).
 *
 * Must be called with no transaction open on db (ACKBOX_ERR_INVALID
 * otherwise): the lock is held for one batch only. Returns 0 when the
 * inbox table does not exist yet.
 *
 * Threading: whatever db allows. Ownership: the caller keeps db and consumer.
 */
ACKBOX_API int ackbox_sqlite_inbox_cleanup(sqlite3 *db, const char *consumer, int64_t window_ms,
                                           size_t max_rows, char *errstr, size_t errstr_size);

/**
 * Creates the inbox table in db if missing (idempotent), in db's open
 * transaction if there is one. Optional: record creates it on first use.
 * Threading: whatever db allows. Ownership: the caller keeps db.
 */
ACKBOX_API int ackbox_sqlite_inbox_install_schema(sqlite3 *db, char *errstr, size_t errstr_size);

#ifdef __cplusplus
}
#endif
#endif
