/*
 * postgres.h - the transactional entry point of the PostgreSQL store: write
 * a message row with the application's own libpq connection, inside its own
 * transaction, so the business row and its message commit or roll back
 * together. Any relay on the same database and schema then sends it.
 */
#ifndef ACKBOX_POSTGRES_H
#define ACKBOX_POSTGRES_H

#include <ackbox/ackbox.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pg_conn PGconn; /* as in libpq-fe.h */

/**
 * Inserts msg into the outbox table of `schema` (NULL: "public") through
 * conn, in whatever transaction conn has open (call it between your BEGIN
 * and COMMIT; outside a transaction the row commits at once). Creates the
 * outbox tables on first use, inside that transaction. The message is
 * durable when YOUR transaction commits (per your session's
 * synchronous_commit) and is gone if it rolls back. A relay (ackbox_new with
 * store.url=postgres://.../db?schema=<schema> and a transport.url, or
 * `ackbox relay`) picks it up within store.poll_interval. *id_out (may be
 * NULL) gets the message id.
 *
 * Costs two round trips (a table check and the insert). On error the
 * statement failed inside your transaction, which PostgreSQL has then
 * aborted: roll it back. ACKBOX_ERR_INVALID for a NULL argument, a bad
 * schema name, a topic or content type that is not valid UTF-8, or a
 * connection that is busy or in an aborted transaction.
 *
 * Threading: whatever conn allows (one thread at a time); ackbox keeps no
 * state here. Ownership: the caller keeps msg and conn. No size limit is
 * applied beyond PostgreSQL's own (1 GB per value); the relay fails a
 * message larger than the transport accepts.
 */
ACKBOX_API int ackbox_pg_enqueue(PGconn *conn, const ackbox_msg *msg, ackbox_id *id_out,
                                 const char *schema, char *errstr, size_t errstr_size);

/**
 * Creates the schema and the outbox tables in it if missing (idempotent,
 * safe to run concurrently), in conn's current transaction if one is open.
 * Lets an owner create the tables once for relays and applications that
 * only hold SELECT/INSERT/UPDATE/DELETE privileges.
 */
ACKBOX_API int ackbox_pg_install_schema(PGconn *conn, const char *schema, char *errstr,
                                        size_t errstr_size);

#ifdef __cplusplus
}
#endif
#endif
