/*
 * internal.h - declarations shared by the core's files; never installed.
 * Internal non-static symbols use the abx_ prefix.
 */
#ifndef ACKBOX_INTERNAL_H
#define ACKBOX_INTERNAL_H

#include <ackbox/ackbox.h>
#include <ackbox/plugin.h>
#include <ackbox/store.h>
#include <ackbox/transport.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>

#define ABX_UNUSED(x) ((void)(x))

/* True if an ops table is large enough to hold `slot` and sets it: tables
 * only grow at the end, so an older plugin's table simply stops earlier. */
#define ABX_HAS_SLOT(ops, type, slot)                                                              \
	((ops)->struct_size >= offsetof(type, slot) + sizeof((ops)->slot) && (ops)->slot != NULL)

/* ---- ids ---- */


/* ---- configuration ---- */
struct ackbox_conf {
	struct abx_kv *kv; /* singly linked, newest first */
	ackbox_report_cb report_cb;
	void *report_opaque;
	ackbox_nack_policy_cb nack_cb;
	void *nack_opaque;
	ackbox_log_cb log_cb;
	void *log_opaque;
};
int64_t abx_conf_int(const ackbox_conf *conf, const char *key);
int abx_conf_bool(const ackbox_conf *conf, const char *key);

/* Monotonic microseconds (latency histograms). */
int64_t abx_mono_us(void);
/* *ts = CLOCK_MONOTONIC now + us, for pthread_cond_timedwait on a condition
 * variable made with that clock. */
void abx_abs_deadline_us(struct timespec *ts, int64_t us);

/* ---- logging ---- */
void abx_log(const ackbox_conf *conf, ackbox_log_level lvl, const char *component, const char *fmt,
             ...) __attribute__((format(printf, 4, 5)));
void abx_logv(const ackbox_conf *conf, ackbox_log_level lvl, const char *component,
              const char *fmt, va_list ap);

/* Log lines made between hold and release (nestable, per thread) are
 * handed to the log callback at the outermost release. */
void abx_log_hold(void);
void abx_log_release(void);

/* ---- crash points (test-only build switch ACKBOX_CRASH_POINTS) ---- */
#ifdef ACKBOX_CRASH_POINTS
void abx_crash_point(const char *name);
#define ABX_CRASH_POINT(name) abx_crash_point(name)
#else
#define ABX_CRASH_POINT(name) ((void)0)
#endif

/* ---- the relay (relay.c) ---- */
typedef struct abx_relay abx_relay;

/* A message the publisher hands to the relay after its commit. */
typedef struct abx_fresh {
	struct abx_fresh *next;
	ackbox_id id;
	int64_t created_ms;
	char *topic;
	void *key;
	size_t key_len;
	char *content_type;
	void *headers; /* encoded */
	size_t headers_len;
	void *payload;
	size_t payload_len;
} abx_fresh;

struct ackbox;
int abx_relay_start(struct ackbox *ab, char *errstr, size_t errstr_size);
void abx_relay_stop(struct ackbox *ab);
/* Tries to reserve room for n fresh messages of total bytes; 1 if reserved. */
bool abx_relay_reserve(abx_relay *r, size_t n, size_t bytes);
void abx_relay_unreserve(abx_relay *r, size_t n, size_t bytes);
/* Hands over a list of committed messages (reserved before). */
void abx_relay_push_fresh(abx_relay *r, abx_fresh *head, abx_fresh *tail);
/* Tells the relay the store may hold due rows it has not seen. */
void abx_relay_poke(abx_relay *r);
bool abx_relay_connected(abx_relay *r);
/* The transport's OpenTelemetry messaging.system (or scheme); NULL if no relay. */
const char *abx_relay_system(abx_relay *r);
/* The transport's message size limit, 0 if none (or no relay). */
size_t abx_relay_max_message(abx_relay *r);
/* Asks the transport whether m could ever be sent (its validate op); 0 if
 * so or if it has no such op. Any thread. */
int abx_relay_validate(abx_relay *r, const ackbox_msg *m, char *errstr, size_t errstr_size);
void abx_fresh_free(abx_fresh *f);

/* ---- metrics (stats.c): atomics, written anywhere, read by any thread ---- */
typedef struct abx_hist {
	atomic_uint_least64_t count, sum_us;
	atomic_uint_least64_t buckets[ACKBOX_HIST_BUCKETS + 1];
} abx_hist;

/* Sends per destination. The relay thread alone adds entries (publishing
 * n with release after filling one); readers look at the first n. */
#define ABX_MAX_DESTINATIONS 64
typedef struct abx_dest {
	char name[128];
	atomic_uint_least64_t sent;
} abx_dest;

typedef struct abx_stats {
	atomic_uint_least64_t published, acked, failed, dropped, retried, in_doubt, sent;
	atomic_uint_least64_t connects, disconnects;
	atomic_uint_least64_t commits; /* group commits that reached the disk */
	atomic_int_least64_t state_since_ms; /* mono ms of the last connect or disconnect */
	atomic_bool store_stuck;            /* the relay's last apply failed */
	atomic_bool claim_stuck;            /* the relay's last claim failed */
	abx_hist durable, ack;
	abx_dest dests[ABX_MAX_DESTINATIONS];
	atomic_int ndests;
	atomic_uint_least64_t other_dest_sent; /* past ABX_MAX_DESTINATIONS */
} abx_stats;

void abx_hist_add(abx_hist *h, int64_t us, uint64_t n);
struct ackbox;
/* The bodies of ackbox_stats_get, ackbox_metrics_text, ackbox_health. */
int abx_stats_get(struct ackbox *ab, ackbox_stats *out, size_t out_size, char *errstr,
                  size_t errstr_size);
int abx_metrics_text(struct ackbox *ab, char **out, size_t *out_len, char *errstr,
                     size_t errstr_size);
int abx_health(struct ackbox *ab, char *errstr, size_t errstr_size);
/* Counts a send to topic (relay thread only). */
void abx_stats_sent(abx_stats *s, const char *topic);

/* ---- secrets (secret.c) ---- */
/* For a URL key: "env:NAME" or "file:PATH" become *out, the URL they hold
 * (free with abx_secret_free); any other value leaves *out NULL. 0 or
 * ACKBOX_ERR_BAD_VALUE naming the variable or file. */
int abx_secret_resolve(const char *key, const char *value, char **out, char *errstr,
                       size_t errstr_size);
void abx_secret_free(char *s);

/* ---- the backlog bound (bound.c): store.max_messages, store.max_bytes ---- */
typedef struct abx_bound {
	uint64_t max_msgs, max_bytes; /* 0: no bound */
	bool block;                   /* store.full_policy=block */
	int64_t timeout_ms;           /* store.full_timeout */
	int64_t refresh_ms;           /* ask the store at least this often */
	/* what the store held when last asked, plus what this handle committed
	 * since; written by the group-commit leader with the store lock held */
	bool known;
	uint64_t msgs, bytes;
	int64_t known_at_ms;
} abx_bound;

#define ABX_BOUND_OK 0
#define ABX_BOUND_FULL 1  /* not now: acks may make room */
#define ABX_BOUND_NEVER 2 /* more than the bound itself */
struct ackbox;
/* Reads the keys; refuses store.max_bytes for a store that cannot measure bytes. */
int abx_bound_init(struct ackbox *ab, char *errstr, size_t errstr_size);
bool abx_bound_active(const struct ackbox *ab);
/* May n messages of `bytes` payload bytes be committed, besides held_n
 * (held_bytes) already admitted to the same commit? ABX_BOUND_* (errstr says
 * why not), or a negative store error. Counts them in when OK.
 * Locks: the store lock held, by the group-commit leader. */
int abx_bound_admit(struct ackbox *ab, uint64_t n, uint64_t bytes, uint64_t held_n,
                    uint64_t held_bytes, char *errstr, size_t errstr_size);
/* A commit that was admitted failed. Locks: as abx_bound_admit. */
void abx_bound_forget(struct ackbox *ab, uint64_t n, uint64_t bytes);

/* ---- publishing (commit.c) ---- */
/* ackbox_publish_batch inside the gate: checks and copies the messages,
 * stores them by a group commit, hands them to the relay. Any thread. */
int abx_publish_batch(struct ackbox *ab, const ackbox_msg *msgs, size_t n, ackbox_id *ids_out,
                      char *errstr, size_t errstr_size);

/* ---- the handle (ackbox.c) ---- */
typedef struct abx_report_item {
	struct abx_report_item *next;
	ackbox_report r; /* topic and reason point into text[] */
	char text[];
} abx_report_item;

struct ackbox {
	ackbox_conf *conf;

	/* store: every call holds store_mtx */
	const ackbox_store_ops *store_ops;
	void *store_ctx;
	pthread_mutex_t store_mtx;

	/* group commit */
	pthread_mutex_t gc_mtx;
	pthread_cond_t gc_cond;
	struct abx_gc_req *gc_queue_head, *gc_queue_tail;
	bool gc_leader_active;
	size_t gc_last_group; /* requests the last group commit carried */
	size_t gc_queue_len;   /* requests queued */
	size_t gc_last_waiting; /* requests queued when the last group commit ended */
	int64_t gc_last_commit_us; /* how long the last group commit took */
	bool gc_gathering;     /* a leader waits for more: signal gc_arrive */
	pthread_cond_t gc_arrive;

	/* delivery reports, queued by the relay, served by poll */
	pthread_mutex_t rep_mtx;
	pthread_cond_t rep_cond;
	abx_report_item *rep_head, *rep_tail;
	uint64_t progress; /* bumped on every final outcome; flush waits on it */

	/* settings */
	int64_t retry_timeout_ms;
	int64_t silence_limit_ms; /* retry.silence_limit */
	int max_attempts;
	int64_t backoff_initial_ms, backoff_max_ms;
	size_t max_message_bytes;
	int64_t store_poll_ms;
	int64_t connect_timeout_ms;
	size_t fresh_max_msgs, fresh_max_bytes;
	bool ordered; /* delivery.order=key: see docs/ordering.md */

	abx_bound bound;  /* store.max_messages / max_bytes (bound.c) */
	abx_relay *relay; /* NULL without transport.url */
	abx_stats stats;
	int64_t opened_mono_ms;

	/* The gate (ackbox.c): every call that uses the store or the relay is
	 * inside it; ackbox_close shuts it and waits for them to leave. */
	atomic_int closing;
	atomic_int inside;
	pthread_mutex_t gate_mtx;
	pthread_cond_t gate_cond;
	int close_state; /* 0 open, 1 closing, 2 closed; under gate_mtx */
};

/* The store lock: every store call holds it, taken and released in the
 * same function. Log lines made meanwhile (by the store, or the core) reach
 * the log callback after it is released. */
static inline void abx_store_lock(struct ackbox *ab)
{
	pthread_mutex_lock(&ab->store_mtx);
	abx_log_hold();
}

static inline void abx_store_unlock(struct ackbox *ab)
{
	pthread_mutex_unlock(&ab->store_mtx);
	abx_log_release();
}

/* The store has the ABI 1.6 attempt-history slots (all three: registry.c
 * refuses a table with some of them). */
static inline bool abx_store_keeps_history(const struct ackbox *ab)
{
	return ABX_HAS_SLOT(ab->store_ops, ackbox_store_ops, apply_noted) &&
	       ABX_HAS_SLOT(ab->store_ops, ackbox_store_ops, force_noted) &&
	       ABX_HAS_SLOT(ab->store_ops, ackbox_store_ops, history);
}

/* A report item holding copies of r's texts; NULL if out of memory. */
abx_report_item *abx_report_new(const ackbox_report *r);
/* Queues final delivery reports, head..tail linked by next (relay thread). */
void abx_report_push_list(struct ackbox *ab, abx_report_item *head, abx_report_item *tail);
/* Wakes flush() waiters without a report (e.g. store poll progress). */
void abx_progress(struct ackbox *ab);

#endif
