/*
 * postgres.h - the transactional entry points of the PostgreSQL store, on
 * the application's own libpq connection and inside its own transaction:
 * the publisher's (a business row and its message commit or roll back
 * together; any relay on the same database and schema then sends it) and
 * the consumer's inbox (a message's effect and the record of having applied
 * it commit together).
 */
#ifndef ACKBOX_POSTGRES_H
#define ACKBOX_POSTGRES_H

#include <ackbox/ackbox.h>
#include <ackbox/inbox.h>

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

/* ------------------------------------------------------------------ */
/* The consumer inbox (include/ackbox/inbox.h, docs/consumers.md)       */
/* ------------------------------------------------------------------ */

/**
 * Creates the schema (NULL: "public") and its inbox table (ackbox_inbox) if
 * missing: idempotent, safe to run concurrently, in conn's transaction if
 * one is open. Call it once (at deployment, or when the consumer starts)
 * before ackbox_pg_inbox_record: record does not create the table itself,
 * since on PostgreSQL a missing table aborts the caller's transaction and a
 * check before every insert would cost a second round trip per message.
 * Threading: whatever conn allows (one thread at a time). Ownership: the
 * caller keeps conn.
 */
ACKBOX_API int ackbox_pg_inbox_install_schema(PGconn *conn, const char *schema, char *errstr,
                                              size_t errstr_size);

/**
 * Records that `consumer` has processed message `id`, through conn in the
 * transaction open on it (call it between your BEGIN and COMMIT, before or
 * after the effect). Returns ACKBOX_INBOX_FIRST (no committed record
 * existed: apply the effect in this transaction), ACKBOX_INBOX_DUPLICATE (a
 * committed record exists, or this transaction made one: skip the effect)
 * or a negative error. The record commits or rolls back with YOUR
 * transaction.
 *
 * One round trip: INSERT ... ON CONFLICT DO NOTHING on the primary key
 * (consumer, id). When another transaction has recorded the same id and is
 * still open, this call waits for it (a row lock on the key): FIRST if it
 * rolls back, DUPLICATE if it commits. Under REPEATABLE READ or
 * SERIALIZABLE that case can end in a serialization failure instead
 * (ACKBOX_ERR_STORE_LOCKED): roll back and retry, as for any statement.
 *
 * On error the statement failed inside your transaction, which PostgreSQL
 * has then aborted: roll it back. ACKBOX_ERR_STORE_SCHEMA if the table is
 * missing (ackbox_pg_inbox_install_schema first); ACKBOX_ERR_INVALID for a
 * NULL argument, a bad schema name, a consumer name that is empty or longer
 * than ACKBOX_INBOX_CONSUMER_MAX bytes, a connection that is busy or in an
 * aborted transaction, or no open transaction (recorded alone, a crash
 * before the effect would lose the effect).
 *
 * Threading: whatever conn allows (one thread at a time); ackbox keeps no
 * state here. Ownership: the caller keeps conn, consumer and id.
 */
ACKBOX_API int ackbox_pg_inbox_record(PGconn *conn, const char *consumer, const ackbox_id *id,
                                      const char *schema, char *errstr, size_t errstr_size);

/**
 * Deletes at most max_rows records of `consumer` older than window_ms
 * (recorded before now - window_ms), oldest first, in one statement that
 * commits on its own, and returns how many it deleted (>= 0) or a negative
 * error. Call it again while it returns max_rows. Rows another session has
 * locked are skipped (FOR UPDATE SKIP LOCKED), so concurrent cleaners never
 * wait for each other. window_ms 0 means ACKBOX_INBOX_WINDOW_DEFAULT_MS (7
 * days), max_rows 0 means ACKBOX_INBOX_BATCH_DEFAULT (1000). A duplicate
 * that arrives after its record was deleted is answered FIRST again
 * (docs/consumers.md).
 *
 * Must be called with no transaction open on conn (ACKBOX_ERR_INVALID
 * otherwise), so locks last one batch. Returns 0 if the table is missing.
 *
 * Threading: whatever conn allows. Ownership: the caller keeps conn and
 * consumer.
 */
ACKBOX_API int ackbox_pg_inbox_cleanup(PGconn *conn, const char *consumer, int64_t window_ms,
                                       size_t max_rows, const char *schema, char *errstr,
                                       size_t errstr_size);

#ifdef __cplusplus
}
#endif
#endif
