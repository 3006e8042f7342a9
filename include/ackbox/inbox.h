/*
 * inbox.h - consumer-side deduplication. ackbox delivers at least once, so a
 * consumer may receive a message twice; the inbox records "consumer C has
 * processed message X" in the consumer's OWN database transaction, together
 * with the consumer's effect, and answers FIRST (apply the effect) or
 * DUPLICATE (skip it, acknowledge the delivery). docs/consumers.md states
 * the guarantees; the entry points are per database:
 *
 *   SQLite      ackbox_sqlite_inbox_record / _cleanup / _install_schema
 *               (include/ackbox/sqlite.h, the caller's sqlite3 *)
 *   PostgreSQL  ackbox_pg_inbox_record / _cleanup / _install_schema
 *               (include/ackbox/postgres.h, the caller's PGconn *)
 *
 * The id to record is the one ackbox put on the wire; the broker plugins'
 * headers read it from what each client library hands a consumer
 * (include/ackbox/amqp.h, kafka.h, mqtt.h), and ackbox_id_parse() reads
 * its text form.
 */
#ifndef ACKBOX_INBOX_H
#define ACKBOX_INBOX_H

#include <ackbox/ackbox.h>

#ifdef __cplusplus
extern "C" {
#endif

/** What a record call answers (a non-negative result; errors are negative). */
typedef enum ackbox_inbox_verdict {
	/* No committed record of (consumer, id) existed: one is now part of the
	 * caller's transaction. Apply the effect in the same transaction; if it
	 * rolls back, the record goes with it and a redelivery is FIRST again. */
	ACKBOX_INBOX_FIRST = 1,
	/* A committed record of (consumer, id) exists (or this transaction made
	 * one already): the effect was applied. Skip it, commit or roll back as
	 * you like, and acknowledge the delivery. */
	ACKBOX_INBOX_DUPLICATE = 2
} ackbox_inbox_verdict;

/** How long records are kept when cleanup is given a window of 0: 7 days. */
#define ACKBOX_INBOX_WINDOW_DEFAULT_MS (7LL * 24 * 60 * 60 * 1000)

/** Rows one cleanup call deletes at most when given 0. */
#define ACKBOX_INBOX_BATCH_DEFAULT 1000

/** Longest consumer name, in bytes. */
#define ACKBOX_INBOX_CONSUMER_MAX 200

#ifdef __cplusplus
}
#endif
#endif /* ACKBOX_INBOX_H */
