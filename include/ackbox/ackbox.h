/*
 * ackbox.h - the public API of ackbox: store a message durably first, publish
 * it, delete it only when the broker confirms.
 *
 * Threading: every function here may be called from any thread unless its
 * comment says otherwise, concurrently with every other (but ackbox_destroy).
 * Callbacks run on the thread named in their comment and never while ackbox
 * holds an internal lock, so a callback may call ackbox_publish(),
 * ackbox_counts_get(), ackbox_list() and the other calls that do not wait
 * for the relay (not ackbox_flush, ackbox_close or ackbox_destroy). The one
 * exception is the iteration callback of ackbox_list()/ackbox_show(): it runs
 * under the store lock and must not call ackbox on the same handle.
 *
 * Errors: functions return 0 (ACKBOX_OK) or a negative ackbox_err; those that
 * can fail for a reason worth explaining take `char *errstr, size_t
 * errstr_size` and write one line there (errstr may be NULL).
 */
#ifndef ACKBOX_ACKBOX_H
#define ACKBOX_ACKBOX_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define ACKBOX_API
#else
#define ACKBOX_API __attribute__((visibility("default")))
#endif

#define ACKBOX_VERSION_MAJOR 0
#define ACKBOX_VERSION_MINOR 1
#define ACKBOX_VERSION_PATCH 0
#define ACKBOX_VERSION_STRING "0.1.0"

/** Error codes. 0 is success; every error is negative. */
typedef enum ackbox_err {
	ACKBOX_OK = 0,
	ACKBOX_ERR_INVALID = -1,        /* a NULL or out-of-range argument */
	ACKBOX_ERR_NOMEM = -2,          /* out of memory */
	ACKBOX_ERR_UNKNOWN_KEY = -3,    /* configuration key nobody knows */
	ACKBOX_ERR_BAD_VALUE = -4,      /* configuration value out of range */
	ACKBOX_ERR_BAD_URL = -5,        /* malformed URL */
	ACKBOX_ERR_UNKNOWN_SCHEME = -6, /* no plugin for this URL scheme */
	ACKBOX_ERR_NOT_BUILT = -7,      /* plugin known but not compiled in */
	ACKBOX_ERR_TOO_LARGE = -8,      /* message exceeds message.max_bytes */
	ACKBOX_ERR_TIMEOUT = -9,        /* flush/poll deadline passed */
	ACKBOX_ERR_CLOSED = -10,        /* handle is shutting down */
	ACKBOX_ERR_NOT_FOUND = -11,     /* no message with that id */
	ACKBOX_ERR_STORE = -20,         /* store I/O error */
	ACKBOX_ERR_STORE_CORRUPT = -21, /* store file is not a valid database */
	ACKBOX_ERR_STORE_LOCKED = -22,  /* another writer holds the store */
	ACKBOX_ERR_STORE_READONLY = -23,/* store cannot be written */
	ACKBOX_ERR_STORE_FULL = -24,    /* disk or quota full */
	ACKBOX_ERR_STORE_SCHEMA = -25,  /* foreign or newer schema */
	ACKBOX_ERR_TRANSPORT = -30,     /* broker unreachable or transport failure */
	ACKBOX_ERR_ABI = -40,           /* plugin ABI version/size mismatch */
	ACKBOX_ERR_INTERNAL = -50,
	ACKBOX_ERR_FULL = -12           /* the store holds store.max_messages or
	                                   store.max_bytes: publish stored nothing */
} ackbox_err;

/** A static English description of an ackbox_err. Never NULL. */
ACKBOX_API const char *ackbox_strerror(int err);

/** The runtime library version, "MAJOR.MINOR.PATCH". */
ACKBOX_API const char *ackbox_version(void);

/* ------------------------------------------------------------------ */
/* Message ids                                                          */
/* ------------------------------------------------------------------ */

/** A 128-bit, time-ordered (UUIDv7) message id. Travels to the broker. */
typedef struct ackbox_id {
	uint8_t b[16];
} ackbox_id;

/** Size of the canonical text form including the terminating NUL. */
#define ACKBOX_ID_STRLEN 37

/** Makes a new id (thread-safe). Ids from one process strictly increase. */
ACKBOX_API void ackbox_id_new(ackbox_id *out);

/** Writes the canonical 8-4-4-4-12 lower-case hex form into out[37]. */
ACKBOX_API void ackbox_id_format(const ackbox_id *id, char out[ACKBOX_ID_STRLEN]);

/** Parses the canonical form. Returns 0 or ACKBOX_ERR_INVALID. */
ACKBOX_API int ackbox_id_parse(const char *text, ackbox_id *out);

/** Milliseconds since the Unix epoch encoded in a UUIDv7 id. */
ACKBOX_API int64_t ackbox_id_time_ms(const ackbox_id *id);

/* ------------------------------------------------------------------ */
/* Messages                                                             */
/* ------------------------------------------------------------------ */

/** One application header (name and value are byte strings). */
typedef struct ackbox_header {
	const char *name;
	const void *value;
	size_t value_len;
} ackbox_header;

/**
 * A message as the application hands it over. ackbox copies everything it
 * needs before ackbox_publish() returns: the caller keeps ownership of every
 * pointer here, whatever the result.
 */
typedef struct ackbox_msg {
	const char *topic;          /* required: queue/routing key, Kafka or MQTT topic */
	const void *key;            /* optional partition/ordering key */
	size_t key_len;
	const void *payload;        /* may be NULL when payload_len is 0 */
	size_t payload_len;
	const char *content_type;   /* optional, e.g. "application/json" */
	const ackbox_header *headers; /* optional */
	size_t header_count;
} ackbox_msg;

/* ------------------------------------------------------------------ */
/* Delivery reports                                                     */
/* ------------------------------------------------------------------ */

/** Where a message is in the one state machine. */
typedef enum ackbox_state {
	ACKBOX_MSG_SENDING = 0,  /* stored, handed to the transport */
	ACKBOX_MSG_RETRYING = 1, /* an attempt failed; waiting to be resent */
	ACKBOX_MSG_FAILED = 2,   /* out of attempts; kept for an operator */
	ACKBOX_MSG_ACKED = 3,    /* confirmed by the broker; row deleted */
	ACKBOX_MSG_DROPPED = 4   /* removed by the nack policy */
} ackbox_state;

/** The name of a state ("sending", "retrying", ...). Never NULL. */
ACKBOX_API const char *ackbox_state_name(ackbox_state s);

/** What went wrong with the last attempt of a message. */
typedef enum ackbox_outcome {
	ACKBOX_OUTCOME_NONE = 0,
	ACKBOX_OUTCOME_NACK = 1,        /* broker refused it (basic.nack, PUBACK>=0x80, produce error) */
	ACKBOX_OUTCOME_UNROUTABLE = 2,  /* broker could not route it (basic.return) */
	ACKBOX_OUTCOME_TIMEOUT = 3,     /* no confirm within retry.timeout */
	ACKBOX_OUTCOME_ERROR = 4,       /* transport error for this message */
	ACKBOX_OUTCOME_IN_DOUBT = 5,    /* connection lost before the confirm */
	ACKBOX_OUTCOME_DISCONNECT = 6,  /* the connection died while this message was the only
	                                   one in flight, and the broker was back at once: the
	                                   message itself makes the broker (or the client
	                                   library) drop the connection (a poison message) */
	ACKBOX_OUTCOME_INVALID = 7,     /* the transport says it can never be sent (a topic the
	                                   protocol forbids); stored by a version that did not
	                                   check */
	ACKBOX_OUTCOME_OPERATOR = 8,    /* marked FAILED by an operator (ackbox_fail) */
	ACKBOX_OUTCOME_NOT_SENT = 9     /* never left the process (the transport said so); only
	                                   in the attempt history, the attempt is not burnt */
} ackbox_outcome;

/** A short name of an outcome ("nacked", "in-doubt", ...). Never NULL. */
ACKBOX_API const char *ackbox_outcome_name(ackbox_outcome oc);

/** The attempt history keeps the last this many attempts of a message. */
#define ACKBOX_HISTORY_MAX 16
/** ...and the first this many bytes of each attempt's text. */
#define ACKBOX_HISTORY_TEXT_MAX 200

/**
 * One attempt of a message in its history: every attempt that ended other
 * than with a confirm (those that reached the broker, and those lost in
 * doubt or never sent, which do not count in `attempts`), and an
 * operator's ackbox_fail.
 */
typedef struct ackbox_attempt {
	int64_t at_ms;          /* wall clock, when the outcome was seen */
	ackbox_outcome outcome;
	int code;               /* the broker's own code, 0 if none */
	const char *text;       /* the broker's (or ackbox's) words, at most
	                           ACKBOX_HISTORY_TEXT_MAX bytes; "" if none */
} ackbox_attempt;

/**
 * A delivery report: the final word on one message, delivered exactly once
 * per message that reaches a final state while this handle is open.
 * Everything it points to is valid only during the callback.
 */
typedef struct ackbox_report {
	ackbox_id id;
	const char *topic;
	ackbox_state state;       /* ACKED, FAILED or DROPPED */
	int attempts;             /* attempts that reached the broker */
	ackbox_outcome outcome;   /* why the last failed attempt failed */
	int broker_code;          /* the broker's own code, 0 if none */
	int retriable;            /* would a requeue plausibly succeed? */
	const char *reason;       /* human text, "" when acked */

	/*
	 * Appended with the attempt history. A report is only ever read through
	 * the pointer a callback gets, so fields at the end are compatible both
	 * ways; an application built against this header that may run with an
	 * older library reads them only if struct_size covers them.
	 */
	size_t struct_size;          /* sizeof(ackbox_report) of the library that filled it */
	ackbox_outcome last_outcome; /* how the latest attempt that was not confirmed ended, in
	                                doubt or never sent included, since this process last
	                                took the message from the store (for FAILED and DROPPED
	                                the final attempt; for ACKED e.g. IN_DOUBT if the
	                                confirm came to a resend); NONE if none. The whole
	                                story is in the store's attempt history (ackbox_show) */
	int64_t last_attempt_ms;     /* when it ended (wall clock), 0 if none */
} ackbox_report;

/**
 * Delivery report callback. Runs on the thread that calls ackbox_poll() or
 * ackbox_flush(), never while ackbox holds a lock. It may call
 * ackbox_publish() but not ackbox_destroy().
 */
typedef void (*ackbox_report_cb)(const ackbox_report *r, void *opaque);

/** What the nack policy decides for a message whose attempt failed. */
typedef enum ackbox_policy {
	ACKBOX_POLICY_DEFAULT = 0, /* retry until retry.max_attempts, then fail */
	ACKBOX_POLICY_RETRY = 1,   /* retry (still bounded by retry.max_attempts) */
	ACKBOX_POLICY_FAIL = 2,    /* mark FAILED now */
	ACKBOX_POLICY_DROP = 3     /* delete it; report DROPPED */
} ackbox_policy;

/**
 * Nack policy hook. Called on ackbox's relay thread for every attempt that
 * reached the broker and failed (state in `r` is RETRYING; attempts already
 * counts this one). Must be quick and must not call ackbox functions that
 * wait (flush, destroy).
 */
typedef ackbox_policy (*ackbox_nack_policy_cb)(const ackbox_report *r, void *opaque);

/** Log levels, syslog-like. */
typedef enum ackbox_log_level {
	ACKBOX_LOG_ERROR = 3,
	ACKBOX_LOG_WARN = 4,
	ACKBOX_LOG_INFO = 6,
	ACKBOX_LOG_DEBUG = 7
} ackbox_log_level;

/** Log callback; may run on any ackbox thread, never under a lock. */
typedef void (*ackbox_log_cb)(ackbox_log_level level, const char *component,
                              const char *msg, void *opaque);

/* ------------------------------------------------------------------ */
/* Configuration                                                        */
/* ------------------------------------------------------------------ */

typedef struct ackbox_conf ackbox_conf;

/** A new configuration holding defaults. Owned by the caller. */
ACKBOX_API ackbox_conf *ackbox_conf_new(void);

/** Frees a configuration not handed to ackbox_new(). NULL is a no-op. */
ACKBOX_API void ackbox_conf_destroy(ackbox_conf *conf);

/**
 * Sets one key. The key is checked against the core's property table and
 * the tables of every built plugin (keys "<scheme>.<name>"); URLs are parsed
 * and their scheme checked here, so a typo in the scheme or the URL's shape
 * fails now. What only the plugin reads (its query parameters, a list of
 * hosts) is checked by ackbox_new(), also ACKBOX_ERR_BAD_URL.
 * Returns 0, ACKBOX_ERR_UNKNOWN_KEY, ACKBOX_ERR_BAD_VALUE, ACKBOX_ERR_BAD_URL,
 * ACKBOX_ERR_UNKNOWN_SCHEME or ACKBOX_ERR_NOT_BUILT, with errstr naming the
 * key and the reason. On error the configuration is unchanged.
 * Not thread-safe for the same conf.
 */
ACKBOX_API int ackbox_conf_set(ackbox_conf *conf, const char *key, const char *value,
                               char *errstr, size_t errstr_size);

/**
 * The value of a key: what was set, else the property's default, else NULL.
 * The string belongs to conf and lives until the key is set again or conf is
 * destroyed.
 */
ACKBOX_API const char *ackbox_conf_get(const ackbox_conf *conf, const char *key);

/** Calls cb for every key that was set and starts with prefix. */
ACKBOX_API void ackbox_conf_foreach(const ackbox_conf *conf, const char *prefix,
                                    void (*cb)(const char *key, const char *value, void *opaque),
                                    void *opaque);

/** Sets the delivery report callback (see ackbox_report_cb). */
ACKBOX_API void ackbox_conf_set_report_cb(ackbox_conf *conf, ackbox_report_cb cb, void *opaque);

/** Sets the nack policy hook (see ackbox_nack_policy_cb). */
ACKBOX_API void ackbox_conf_set_nack_policy(ackbox_conf *conf, ackbox_nack_policy_cb cb,
                                            void *opaque);

/** Sets the log callback. Default: WARN and worse to stderr. */
ACKBOX_API void ackbox_conf_set_log_cb(ackbox_conf *conf, ackbox_log_cb cb, void *opaque);

/**
 * Writes a Markdown table of every configuration property (core and built
 * plugins) to `out` (a FILE *). Used to generate docs/configuration.md.
 */
ACKBOX_API void ackbox_conf_dump_properties(void *out);

/* ------------------------------------------------------------------ */
/* The handle                                                           */
/* ------------------------------------------------------------------ */

typedef struct ackbox ackbox;

/**
 * Opens the store and, if transport.url is set, recovers what a previous
 * process left (every SENDING or RETRYING message this process may take
 * becomes due now: with a store shared by several relays, only rows whose
 * lease ran out) and starts the relay thread that sends due messages.
 * Without transport.url the handle can still publish (rows wait for a
 * relay) and administer the store, and it writes nothing at open: an
 * existing SQLite store is only read until a call changes something.
 *
 * An unreachable broker is not an error unless transport.require_connect is
 * true: messages are stored and sent when the broker comes back.
 *
 * Ownership: on success *out owns conf (do not destroy it); on failure the
 * caller keeps conf, *out is NULL and nothing was left open.
 */
ACKBOX_API int ackbox_new(ackbox **out, ackbox_conf *conf, char *errstr, size_t errstr_size);

/**
 * Closes the handle but keeps its memory: from now on every call on it
 * returns ACKBOX_ERR_CLOSED (ackbox_connected() 0). Waits for the calls
 * already under way (a publish finishes: its message is stored, or it
 * fails), wakes a waiting ackbox_poll()/ackbox_flush(), stops the relay
 * (the changes it has are applied) and closes the store. Never loses a
 * message: what is not acked stays in the store for the next process.
 *
 * So that threads still publishing when the application shuts down get an
 * error instead of a crash: close, join those threads, then destroy.
 * Idempotent; safe from any thread, concurrently with any call but
 * ackbox_destroy; must not be called from a callback.
 */
ACKBOX_API void ackbox_close(ackbox *ab);

/**
 * Closes the handle (ackbox_close) and frees it. Does not wait for
 * confirms; call ackbox_flush() first for that. Reports not yet polled are
 * discarded (their messages are already in their final state). NULL is a
 * no-op. After it returns the handle must not be used: no other call on it
 * may be under way or follow (use ackbox_close for that). Must not be
 * called from a callback.
 */
ACKBOX_API void ackbox_destroy(ackbox *ab);

/**
 * Stores one message durably (fsync'd at store.sync=full, the default) and
 * queues it for sending. Returns 0 only once the message is in the store;
 * *id_out (may be NULL) receives its id. Concurrent callers share one
 * commit (group commit). The caller keeps ownership of msg.
 * Errors: ACKBOX_ERR_INVALID, ACKBOX_ERR_TOO_LARGE, ACKBOX_ERR_STORE*,
 * ACKBOX_ERR_CLOSED, ACKBOX_ERR_FULL (the store holds store.max_messages
 * or store.max_bytes: at once with store.full_policy=reject, after up to
 * store.full_timeout with block); on error nothing was stored.
 */
ACKBOX_API int ackbox_publish(ackbox *ab, const ackbox_msg *msg, ackbox_id *id_out,
                              char *errstr, size_t errstr_size);

/**
 * Stores n messages in one transaction: all or none. ids_out (may be NULL)
 * must have room for n ids. The fast path for a single producing thread.
 */
ACKBOX_API int ackbox_publish_batch(ackbox *ab, const ackbox_msg *msgs, size_t n,
                                    ackbox_id *ids_out, char *errstr, size_t errstr_size);

/**
 * Serves queued delivery reports on the calling thread, waiting up to
 * timeout_ms (0: do not wait, -1: forever) for the first. Returns the number
 * served (>= 0) or a negative ackbox_err.
 */
ACKBOX_API int ackbox_poll(ackbox *ab, int timeout_ms);

/**
 * Waits until nothing in the store is SENDING or RETRYING (every message is
 * acked or failed), serving delivery reports meanwhile. Returns 0, or
 * ACKBOX_ERR_TIMEOUT after timeout_ms (-1: no limit). A store error is
 * retried until the deadline (a database may be restarting) and returned
 * if it is still there then.
 */
ACKBOX_API int ackbox_flush(ackbox *ab, int timeout_ms);

/** 1 if the transport is currently connected, 0 otherwise. */
ACKBOX_API int ackbox_connected(ackbox *ab);

/* ------------------------------------------------------------------ */
/* Administration (the CLI uses these)                                  */
/* ------------------------------------------------------------------ */

/** Counts of stored messages by state. */
typedef struct ackbox_counts {
	uint64_t sending;
	uint64_t retrying;
	uint64_t failed;
	int64_t oldest_pending_ms; /* created_at of the oldest SENDING/RETRYING, 0 if none */
} ackbox_counts;

ACKBOX_API int ackbox_counts_get(ackbox *ab, ackbox_counts *out, char *errstr, size_t errstr_size);

/** A stored message as the store holds it. Valid only during a callback. */
typedef struct ackbox_stored {
	ackbox_id id;
	ackbox_state state;
	int attempts;
	int64_t created_ms;
	int64_t updated_ms;
	int64_t due_ms;
	const char *topic;
	const void *key;
	size_t key_len;
	const char *content_type; /* NULL if none */
	const ackbox_header *headers;
	size_t header_count;
	const void *payload;
	size_t payload_len;
	const char *last_error; /* NULL if none */
	int last_code;

	/* Appended with the attempt history (the library fills, the application
	 * reads through the callback's pointer: compatible both ways). */
	int history_kept;         /* 1 if the store keeps an attempt history, 0 if it is an
	                             older store that does not */
	size_t history_count;     /* ackbox_show only: the entries in history (at most
	                             ACKBOX_HISTORY_MAX); 0 from ackbox_list */
	const ackbox_attempt *history; /* oldest first; NULL if none */
} ackbox_stored;

/** Return non-zero from an iteration callback to stop early. */
typedef int (*ackbox_stored_cb)(const ackbox_stored *m, void *opaque);

/**
 * Lists stored messages in id (time) order, without their attempt history
 * (ackbox_show reads it: one more store query per message). state < 0 lists every state;
 * limit 0 means no limit. Returns the number listed or a negative error.
 * cb runs on the calling thread under the store lock (the rows are read as
 * it goes): it must not call ackbox on the same handle.
 */
ACKBOX_API int ackbox_list(ackbox *ab, int state, size_t limit, ackbox_stored_cb cb,
                           void *opaque, char *errstr, size_t errstr_size);

/**
 * Calls cb once with the message `id`, its attempt history included (if
 * the store keeps one). ACKBOX_ERR_NOT_FOUND if absent.
 */
ACKBOX_API int ackbox_show(ackbox *ab, const ackbox_id *id, ackbox_stored_cb cb, void *opaque,
                           char *errstr, size_t errstr_size);

/**
 * Moves FAILED messages back to RETRYING with attempts reset and due now.
 * ids may be NULL with n == 0 to requeue every FAILED message. Returns the
 * number requeued or a negative error.
 */
ACKBOX_API int ackbox_requeue(ackbox *ab, const ackbox_id *ids, size_t n, char *errstr,
                              size_t errstr_size);

/**
 * Deletes FAILED messages last updated before older_than_ms (wall clock, ms
 * since epoch; INT64_MAX for all). Returns the number deleted.
 */
ACKBOX_API int ackbox_purge_failed(ackbox *ab, int64_t older_than_ms, char *errstr,
                                   size_t errstr_size);

/**
 * Marks the message `id` FAILED whatever its state (SENDING and RETRYING
 * included), with `reason` (may be NULL) as its last error, so that it can
 * be inspected, requeued or purged. Meant for a message that is stuck.
 * Safe while a relay (in this or another process) holds the message: the
 * store takes it away from that relay's lease, so the relay can no longer
 * change it. A send already under way may still reach the broker once.
 * Returns 1, ACKBOX_ERR_NOT_FOUND, or another negative error (the store
 * does not support it: errstr says so).
 */
ACKBOX_API int ackbox_fail(ackbox *ab, const ackbox_id *id, const char *reason, char *errstr,
                           size_t errstr_size);

/**
 * Deletes the messages `ids` whatever their state, for good. The same lease
 * rule as ackbox_fail. Returns the number deleted (ids not found are
 * skipped), or a negative error.
 */
ACKBOX_API int ackbox_purge_ids(ackbox *ab, const ackbox_id *ids, size_t n, char *errstr,
                                size_t errstr_size);

/**
 * A key held back under delivery.order=key: its oldest message is FAILED,
 * and no later message of the key is sent until an operator requeues
 * (ackbox_requeue) or deletes (ackbox_purge_failed, ackbox_purge_ids) it.
 * Valid during the callback only.
 */
typedef struct ackbox_blocked_key {
	const void *key;
	size_t key_len;
	ackbox_id failed_id; /* the FAILED message that holds the key */
	uint64_t waiting;    /* messages of the key waiting behind it */
} ackbox_blocked_key;

typedef int (*ackbox_blocked_cb)(const ackbox_blocked_key *b, void *opaque);

/**
 * Calls cb for each blocked key (see ackbox_blocked_key), at most `limit`
 * (0 = no limit), in no set order. Works on any handle, with or without a
 * transport or delivery.order: a store never used with delivery.order=key
 * has none. cb runs under the store lock and must not call ackbox on the
 * same handle. Returns the number of keys reported, or a negative error
 * (ACKBOX_ERR_INVALID if the store cannot keep per-key order).
 */
ACKBOX_API int ackbox_blocked_keys(ackbox *ab, size_t limit, ackbox_blocked_cb cb, void *opaque,
                                   char *errstr, size_t errstr_size);

/* ------------------------------------------------------------------ */
/* Metrics and health                                                   */
/* ------------------------------------------------------------------ */

/** Latency buckets: ackbox_histogram_bound_ms(i) for i < ACKBOX_HIST_BUCKETS. */
#define ACKBOX_HIST_BUCKETS 20

/**
 * A latency histogram. buckets[i] counts observations <= the i-th bound
 * and > the one before (not cumulative); buckets[ACKBOX_HIST_BUCKETS]
 * those above the last bound.
 */
typedef struct ackbox_histogram {
	uint64_t count;
	uint64_t sum_us; /* sum of the observations, microseconds */
	uint64_t buckets[ACKBOX_HIST_BUCKETS + 1];
} ackbox_histogram;

/** The upper bound of bucket i in ms (0.25 ms ... 60 s); -1 out of range. */
ACKBOX_API double ackbox_histogram_bound_ms(int i);

/**
 * What a handle has done since ackbox_new (counters), and the store now.
 * Fields may be added at the end; ackbox_stats_get fills out_size bytes.
 */
typedef struct ackbox_stats {
	uint64_t published;       /* messages stored by ackbox_publish* on this handle */
	uint64_t acked;           /* ACKED (reports) */
	uint64_t failed;          /* FAILED */
	uint64_t dropped;         /* DROPPED by the nack policy */
	uint64_t retried;         /* failed attempts scheduled for a resend */
	uint64_t resent_in_doubt; /* attempts lost with a connection, to be resent */
	uint64_t sent;            /* sends handed to the transport (resends included) */
	uint64_t connects;        /* successful connects */
	uint64_t disconnects;     /* connections lost */
	int connected;            /* 1 if the transport is connected now */
	int64_t state_for_ms;     /* how long it has been connected, or not */
	ackbox_counts pending;    /* the store's counts now (all processes) */
	int64_t oldest_pending_age_ms; /* 0 if nothing is pending */
	ackbox_histogram publish_durable; /* ackbox_publish: call -> durable in the store */
	ackbox_histogram publish_ack;     /* message id time -> confirm seen by the relay */
	/* Appended (a caller built with the struct before it passes a smaller
	 * out_size and does not get it): group commits of ackbox_publish* that
	 * reached the disk, each one store transaction and, on SQLite, one
	 * fdatasync. published / store_commits = messages per flush. */
	uint64_t store_commits;
} ackbox_stats;

/**
 * Fills *out (out_size = sizeof(ackbox_stats) of the caller's header).
 * Counters are read without a lock (each is exact; they are not a snapshot
 * of one instant); the store is asked for its counts. Any thread.
 * Returns 0 or a store error with errstr.
 */
ACKBOX_API int ackbox_stats_get(ackbox *ab, ackbox_stats *out, size_t out_size, char *errstr,
                                size_t errstr_size);

/**
 * The handle's metrics in the Prometheus text exposition format (0.0.4,
 * what `promtool check metrics` validates; serve it as "text/plain;
 * version=0.0.4"), named after the OpenTelemetry messaging conventions
 * where they apply
 * (messaging_client_sent_messages_total with messaging_system and
 * messaging_destination_name, messaging_client_operation_duration_seconds)
 * and ackbox's own for the outbox (ackbox_pending_messages{state},
 * ackbox_oldest_pending_age_seconds, ...); docs/operations.md lists them.
 * *out is one allocation the caller frees with free(); *out_len its length.
 * An application serves it from its own HTTP server. Any thread.
 */
ACKBOX_API int ackbox_metrics_text(ackbox *ab, char **out, size_t *out_len, char *errstr,
                                   size_t errstr_size);

/**
 * 0 if healthy: the store answers and takes changes (the relay's last
 * claim and last apply, if any, succeeded), and the transport (if any) is connected or was
 * disconnected less than health.disconnected_max ago. Otherwise
 * ACKBOX_ERR_STORE or ACKBOX_ERR_TRANSPORT with errstr saying why. Any thread.
 */
ACKBOX_API int ackbox_health(ackbox *ab, char *errstr, size_t errstr_size);

/* ------------------------------------------------------------------ */
/* Echoing safely                                                       */
/* ------------------------------------------------------------------ */

/**
 * Writes the len bytes at p into out as text that is safe to print on a
 * terminal or in a log line: printable ASCII and valid UTF-8 pass; a
 * backslash becomes "\\", newline, carriage return and tab "\n", "\r",
 * "\t"; every other control character (C0, DEL, C1), the Unicode
 * bidirectional overrides and each byte that is not valid UTF-8 become
 * "\xNN" (one per byte). out (out_size bytes) is always NUL-terminated when
 * out_size > 0; output that does not fit is cut before the first character
 * or escape that does not fit whole. Returns the length the whole escaped
 * text needs, without the NUL (as snprintf does): ackbox_escape(p, len,
 * NULL, 0) + 1 bytes always suffice. p may be NULL when len is 0. Any
 * thread; no allocation.
 */
ACKBOX_API size_t ackbox_escape(const void *p, size_t len, char *out, size_t out_size);

/**
 * Writes url into out with its secrets replaced by "***": the password of
 * the user information ("amqp://user:***@host/") and the value of every
 * query parameter whose name contains pass, pwd, secret, token,
 * credential or auth ("?sslpassword=***"). Works on text that is not a
 * valid URL too (what failed to parse is what gets echoed). The result is
 * escaped as by ackbox_escape(). Returns the length the whole result
 * needs, without the NUL. Use it wherever a URL is shown: error lines,
 * logs, status output, --json. Any thread; no allocation.
 */
ACKBOX_API size_t ackbox_url_redact(const char *url, char *out, size_t out_size);

#ifdef __cplusplus
}
#endif
#endif /* ACKBOX_ACKBOX_H */
