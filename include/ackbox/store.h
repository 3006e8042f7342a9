/*
 * store.h - the store plugin ABI. A store keeps messages durably and answers
 * "what is due"; the core decides every state change and passes it down.
 * store/sqlite/ is the reference implementation.
 */
#ifndef ACKBOX_STORE_H
#define ACKBOX_STORE_H

#include <ackbox/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The store ABI this header describes. Minors (see plugin.h):
 *   1.0  abi_version .. has_pending
 *   1.1  sync
 *   1.2  force
 *   1.3  aliases
 *   1.4  usage
 *   1.5  blocked_keys (and with it, per-key order: see claim() and
 *        docs/ordering.md)
 *   1.6  apply_noted, force_noted, history (the attempt history)
 */
#define ACKBOX_STORE_ABI_VERSION ACKBOX_ABI_VERSION(1, 6)

/** Durability of insert(), from the store.sync key. */
typedef enum ackbox_sync {
	ACKBOX_SYNC_FULL = 0,   /* fsync before insert returns (default) */
	ACKBOX_SYNC_NORMAL = 1, /* survives a process crash, not a power loss */
	ACKBOX_SYNC_OFF = 2     /* no guarantee; for tests and benchmarks */
} ackbox_sync;

/** A new message for insert(). Pointers valid during the call only. */
typedef struct ackbox_store_rec {
	ackbox_id id;
	int64_t created_ms;  /* wall clock */
	int64_t due_ms;      /* when a relay may claim it (a lease for the inserter) */
	const char *topic;
	const void *key;
	size_t key_len;
	const char *content_type;   /* NULL if none */
	const void *headers;        /* encoded by ackbox_headers_encode, NULL if none */
	size_t headers_len;
	const void *payload;
	size_t payload_len;
} ackbox_store_rec;

/** A stored row handed back to the core. Valid during the callback only. */
typedef struct ackbox_store_row {
	ackbox_id id;
	ackbox_state state;   /* SENDING, RETRYING or FAILED */
	int attempts;
	int64_t created_ms, updated_ms, due_ms;
	const char *topic;
	const void *key;
	size_t key_len;
	const char *content_type;
	const void *headers;
	size_t headers_len;
	const void *payload;
	size_t payload_len;
	const char *last_error;
	int last_code;
	uint64_t lease;       /* store-defined fencing token, echoed in changes */
} ackbox_store_row;

/** Return non-zero to stop the iteration. */
typedef int (*ackbox_store_attempt_cb)(const ackbox_attempt *a, void *opaque);

/** Return non-zero to stop the iteration. */
typedef int (*ackbox_store_row_cb)(const ackbox_store_row *row, void *opaque);

/** A key whose oldest message is FAILED (ABI 1.5). Valid during the callback only. */
typedef struct ackbox_store_blocked {
	const void *key;
	size_t key_len;
	ackbox_id failed_id;  /* the FAILED message at the head of the key */
	uint64_t waiting;     /* pending messages of the key behind it */
} ackbox_store_blocked;

typedef int (*ackbox_store_blocked_cb)(const ackbox_store_blocked *b, void *opaque);

/** A state change decided by the core. */
typedef enum ackbox_change_kind {
	ACKBOX_CHANGE_DELETE = 1,  /* acked or dropped */
	ACKBOX_CHANGE_RETRY = 2,   /* state RETRYING, attempts, due_ms, last_error/code */
	ACKBOX_CHANGE_FAIL = 3,    /* state FAILED, attempts, last_error/code */
	ACKBOX_CHANGE_RELEASE = 4, /* due_ms only (a lease given back, state unchanged) */
	ACKBOX_CHANGE_NOTE = 5     /* ABI 1.6, apply_noted() only: the row is unchanged, its
	                              note is added to its history (an attempt lost in doubt) */
} ackbox_change_kind;

typedef struct ackbox_store_change {
	ackbox_change_kind kind;
	ackbox_id id;
	int attempts;
	int64_t due_ms;
	const char *last_error; /* may be NULL */
	int last_code;
	uint64_t lease;         /* from the claimed row, 0 if not claimed */
} ackbox_store_change;

/**
 * The store ops table. Append-only, one ABI minor per group of slots; the
 * core never calls a slot that the table's minor does not have (plugin.h).
 *
 * Threading: the core serialises every call on one instance (it holds the
 * instance's lock), but calls may come from different threads (publishers
 * doing a group commit, the relay thread, an admin call). Errors return a
 * negative ackbox_err (ACKBOX_ERR_STORE_* where one fits) with errstr set.
 */
typedef struct ackbox_store_ops {
	uint32_t abi_version;      /* ACKBOX_STORE_ABI_VERSION */
	uint32_t struct_size;      /* sizeof(ackbox_store_ops) */
	const char *scheme;        /* "sqlite" */
	uint32_t caps;             /* ACKBOX_PLUGIN_CAP_* */
	size_t ctx_size;           /* zeroed memory the core allocates per instance */
	const ackbox_prop *props;  /* keys "<scheme>.<name>" */
	const char *description;

	/** Opens or creates the store; checks the schema. close() is not called on failure. */
	int (*open)(void *ctx, const ackbox_url *url, const ackbox_conf *conf, ackbox_sync sync,
	            char *errstr, size_t errstr_size);
	void (*close)(void *ctx);

	/** Inserts n records in ONE transaction, durable per `sync` before returning. */
	int (*insert)(void *ctx, const ackbox_store_rec *recs, size_t n, char *errstr,
	              size_t errstr_size);

	/**
	 * Claims up to `limit` SENDING/RETRYING rows with due_ms <= now_ms, oldest
	 * due first, setting their due_ms to lease_until_ms so no other claim
	 * returns them until then. Calls cb per row; returns the count. Need not
	 * be durable: a lost lease only makes a row due earlier. On an error
	 * (negative) the core forgets every row cb was given in this call, so a
	 * claim may call cb before it writes its leases: rows whose lease was
	 * rolled back are not sent (they are due again at the next claim).
	 *
	 * Per-key order (a store with blocked_keys, opened with the key
	 * delivery.order=key in conf): a row with a key is returned only if it
	 * is the oldest row (lowest id) of that key in ANY state, so a leased or
	 * FAILED oldest row holds back every later row of its key, and the next
	 * one becomes claimable only once the oldest is deleted. Rows without a
	 * key are claimed as above. insert() must then keep every row visible to
	 * this rule (SQLite and Redis do not pack batches then).
	 */
	int (*claim)(void *ctx, int64_t now_ms, int64_t lease_until_ms, size_t limit,
	             ackbox_store_row_cb cb, void *opaque, char *errstr, size_t errstr_size);

	/**
	 * Applies n changes in one transaction. Need not be durable: a lost
	 * change makes a message be sent again, never lost. A change for a row
	 * that is gone (or whose lease no longer matches) is skipped.
	 */
	int (*apply)(void *ctx, const ackbox_store_change *changes, size_t n, char *errstr,
	             size_t errstr_size);

	/** Crash recovery at open: SENDING/RETRYING rows whose lease this process may take become due at now_ms. */
	int (*recover)(void *ctx, int64_t now_ms, char *errstr, size_t errstr_size);

	int (*counts)(void *ctx, ackbox_counts *out, char *errstr, size_t errstr_size);

	/** Rows in id order; state < 0 for all; limit 0 = no limit. Returns the count. */
	int (*list)(void *ctx, int state, size_t limit, ackbox_store_row_cb cb, void *opaque,
	            char *errstr, size_t errstr_size);

	/** One row; ACKBOX_ERR_NOT_FOUND if absent. */
	int (*get)(void *ctx, const ackbox_id *id, ackbox_store_row_cb cb, void *opaque,
	           char *errstr, size_t errstr_size);

	/** FAILED -> RETRYING, attempts 0, due now_ms; ids NULL = all FAILED. Returns the count. */
	int (*requeue)(void *ctx, const ackbox_id *ids, size_t n, int64_t now_ms, char *errstr,
	               size_t errstr_size);

	/** Deletes FAILED rows with updated_ms < older_than_ms. Returns the count. */
	int (*purge)(void *ctx, int64_t older_than_ms, char *errstr, size_t errstr_size);

	/**
	 * Optional (NULL: the core uses counts()): 1 if any row is SENDING or
	 * RETRYING, 0 if none. Should be O(1); flush() asks often.
	 */
	int (*has_pending)(void *ctx, char *errstr, size_t errstr_size);

	/* ---- ABI 1.1 ---- */

	/**
	 * Optional (NULL: insert() is durable by itself). With it, insert()
	 * need only commit, and sync() makes every insert that returned before
	 * it durable per `sync`; the core calls it after each insert and only
	 * then reports the messages stored. It is called WITHOUT the instance's
	 * lock, so the relay's claims and changes run while the disk flushes;
	 * it is never called concurrently with itself or with insert(). The
	 * relay gets the inserted messages before sync() is called, so apply()
	 * may change or delete a row whose insert sync() has not yet made
	 * durable: a crash before sync() returns may then keep the insert
	 * without the change (the message is sent again) or lose both (its
	 * publish never returned).
	 */
	int (*sync)(void *ctx, char *errstr, size_t errstr_size);

	/* ---- ABI 1.2 ---- */

	/**
	 * Optional (NULL: ackbox_fail/ackbox_purge_ids answer "not supported by
	 * this store"). An operator's override of one message in ANY state,
	 * lease or not: c->kind is ACKBOX_CHANGE_FAIL (state FAILED, attempts
	 * kept, last_error/last_code from c, updated_ms = now_ms) or
	 * ACKBOX_CHANGE_DELETE (the row is removed); c->lease is ignored. The
	 * row's lease must change so that a relay that holds it can no longer
	 * change it (its later apply() for the row is skipped). A message packed
	 * in a batch (SQLite) is moved out or removed from the batch. Durable
	 * before returning, like insert(). Returns 1, or ACKBOX_ERR_NOT_FOUND.
	 */
	int (*force)(void *ctx, const ackbox_store_change *c, int64_t now_ms, char *errstr,
	             size_t errstr_size);

	/* ---- ABI 1.3 ---- */

	/**
	 * Optional (NULL: none): other schemes this store also serves,
	 * NULL-terminated, e.g. {"postgresql", NULL} for libpq's spelling.
	 * Keys stay "<scheme>.<name>".
	 */
	const char *const *aliases;

	/* ---- ABI 1.4 ---- */

	/**
	 * Optional (NULL: store.max_bytes cannot be used with this store, and
	 * store.max_messages counts with counts()). What the store holds now:
	 * *messages in every state (FAILED too) and *bytes, the sum of their
	 * payload sizes. The core asks before a commit that store.max_messages
	 * or store.max_bytes could refuse, so it should be cheap; it may count
	 * high (SQLite counts a packed batch's bytes whole until its row goes),
	 * never low: the bound must not be exceeded because a store under-
	 * counted. Returns 0 or a negative ackbox_err with errstr.
	 */
	int (*usage)(void *ctx, uint64_t *messages, uint64_t *bytes, char *errstr,
	             size_t errstr_size);

	/* ---- ABI 1.5 ---- */

	/**
	 * Optional (NULL: the store cannot keep per-key order, and a handle
	 * with delivery.order=key refuses to open on it). Filling it promises
	 * claim()'s per-key rule when conf says delivery.order=key at open.
	 * Calls cb for each key whose oldest message is FAILED (it blocks the
	 * key until an operator requeues or deletes it), in no set order, at most
	 * `limit` (0 = no limit). A store never opened with delivery.order=key
	 * may report none. Read-only. Returns the count.
	 */
	int (*blocked_keys)(void *ctx, size_t limit, ackbox_store_blocked_cb cb, void *opaque,
	                    char *errstr, size_t errstr_size);

	/* ---- ABI 1.6: the attempt history ---- */

	/*
	 * A store of this minor keeps, per message, the last ACKBOX_HISTORY_MAX
	 * attempt notes (ackbox_attempt: when, outcome, code, the first
	 * ACKBOX_HISTORY_TEXT_MAX bytes of the text), oldest dropped first, and
	 * drops them with the message (ack, drop, purge, force DELETE). The
	 * three slots go together: set all or none.
	 */

	/**
	 * apply() with notes: notes[i] belongs to changes[i] (notes[i].at_ms
	 * 0: none) and is written in the SAME transaction as the change, only
	 * if the change was not skipped. A NOTE change only adds its note (lease
	 * checked as for RELEASE). With this slot set the core calls it instead
	 * of apply(), never both.
	 */
	int (*apply_noted)(void *ctx, const ackbox_store_change *changes,
	                   const ackbox_attempt *notes, size_t n, char *errstr, size_t errstr_size);

	/** force() with a note (may be NULL) added in the same transaction if it FAILs the row. */
	int (*force_noted)(void *ctx, const ackbox_store_change *c, const ackbox_attempt *note,
	                   int64_t now_ms, char *errstr, size_t errstr_size);

	/**
	 * Calls cb per note of the message `id`, oldest first; returns the
	 * count (0 for a message without notes, or one that is not stored).
	 */
	int (*history)(void *ctx, const ackbox_id *id, ackbox_store_attempt_cb cb, void *opaque,
	               char *errstr, size_t errstr_size);
} ackbox_store_ops;

/**
 * Logs through the application's log callback (component = the store's
 * scheme), honouring log.level. conf is the one open() received. Thread-safe.
 */
ACKBOX_API void ackbox_store_log(const ackbox_conf *conf, ackbox_log_level level,
                                 const char *component, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/**
 * The ops table serving scheme ("sqlite", or one of a store's aliases), or
 * NULL. Lets a test or a fault-injecting wrapper delegate to a real store, as
 * SQLite's test VFS does. For a registered store this is the core's copy
 * (see ackbox_transport_register), whose slots past its ABI minor are NULL.
 */
ACKBOX_API const ackbox_store_ops *ackbox_store_lookup(const char *scheme);

/**
 * Registers a third-party store; same rules as ackbox_transport_register()
 * (scheme and aliases must be free).
 */
ACKBOX_API int ackbox_store_register(const ackbox_store_ops *ops, char *errstr,
                                     size_t errstr_size);

/*
 * The header wire format stores use for ackbox_store_rec.headers:
 * u32 count, then per header u32 name_len, name, u32 value_len, value
 * (little-endian). Names may not contain NUL.
 */

/** Encoded size of headers, or 0 if there are none. */
ACKBOX_API size_t ackbox_headers_encoded_size(const ackbox_header *h, size_t n);

/** Encodes into out (of ackbox_headers_encoded_size bytes). */
ACKBOX_API void ackbox_headers_encode(const ackbox_header *h, size_t n, uint8_t *out);

/**
 * Decodes bytes read back from a store. On success *out is one allocation
 * (free() it) holding the array and copies of every name and value, and
 * *n_out the count. Returns 0 or ACKBOX_ERR_STORE_CORRUPT for bytes that do
 * not parse. A NULL/empty input gives *out = NULL, *n_out = 0.
 */
ACKBOX_API int ackbox_headers_decode(const void *buf, size_t len, ackbox_header **out,
                                     size_t *n_out);

#ifdef __cplusplus
}
#endif
#endif /* ACKBOX_STORE_H */
