/*
 * sqlite.h - the transactional entry point of the SQLite store: write a
 * message row with the application's own connection, inside its own
 * transaction, so the business row and its message commit or roll back
 * together. Any relay on the same file then sends it.
 */
#ifndef ACKBOX_SQLITE_H
#define ACKBOX_SQLITE_H

#include <ackbox/ackbox.h>

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

#ifdef __cplusplus
}
#endif
#endif
