/*
 * relay_int.h - the relay's insides, shared by the files that make it up;
 * never installed. One job per file:
 *
 *   relay.c       the scheduler: the relay thread's loop, connecting,
 *                 claiming due rows, sending, transport events, timeouts
 *   outcome.c     what an outcome does: store changes and delivery reports,
 *                 batched and applied in order (through machine.c's rules)
 *   poison.c      suspects, probing and blame for a dropped connection
 *   order.c       per-key order: one message per key held at a time
 *   queues.c      the messages held in memory: entries, their queues, the
 *                 tokens of their attempts
 *   relay_host.c  the transport host API, the publishers' side (inbox), and
 *                 starting and stopping the relay
 *   machine.c     the state machine as pure transitions (machine.h)
 *   containers.c  the map and the heap (containers.h)
 *
 * Threads: everything declared here runs on the relay thread, except the
 * inbox fields under in_mtx/ev_mtx (any thread) and what relay_host.c says.
 * Locks: store_mtx is taken only around a store call and released in the
 * same function; no user callback runs while any ackbox lock is held.
 */
#ifndef ACKBOX_RELAY_INT_H
#define ACKBOX_RELAY_INT_H

#include <assert.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "containers.h"
#include "internal.h"
#include "machine.h"

enum entry_state {
	E_READY,    /* in the ready queue (or the suspect queue if suspect), data present */
	E_INFLIGHT, /* current attempt outstanding, data present */
	E_WAITING,  /* back in the store until due; only superseded tokens hold it */
	E_DONE,     /* final outcome reached; only superseded tokens hold it */
	E_REQUEUE,  /* going back to a queue at the next send round (r->back), data present */
	E_HELD,     /* sent alone and lost with the connection: being judged (r->blame) */
	E_PARKED    /* claimed, waiting for another message of its key (order.c), data present */
};

/* One message the relay holds in memory. */
typedef struct entry {
	struct entry *next; /* ready queue */
	ackbox_id id;
	char *topic;
	abx_fresh *data; /* NULL unless READY or INFLIGHT */
	enum entry_state state;
	int attempts;       /* persisted count of attempts that reached the broker */
	int sends;          /* sends by this process */
	uint64_t cur_token; /* token of the current attempt, 0 if none */
	int refs;           /* tokens pointing here */
	uint64_t lease;
	bool from_fresh;    /* data counts against the publisher's reservation */
	bool suspect;       /* in flight when the connection died: resent by probing */
	bool isolate;       /* blamed for a drop before: sent only alone */
	/* for the report (ackbox_report.last_outcome and last_attempt_ms) */
	ackbox_outcome last_oc;
	int64_t last_at;
	bool key_held;      /* holds its key (delivery.order=key, order.c) */
	bool pooled;        /* ENTRY_TOPIC_MAX bytes for the topic: back to r->free_entries */
	uint64_t keyh;      /* hash of its key, 0 if none (order.c) */
} entry;

/* Entries with a topic of up to ENTRY_TOPIC_MAX bytes (its NUL included) and
 * tokens are kept for reuse on the relay thread, up to POOL_MAX of each: a
 * message costs one of each, and a window's worth freed and allocated again
 * in bursts missed glibc's per-thread cache (about 450 instructions of
 * malloc and free per message on the Kafka mock). */
#define ENTRY_TOPIC_MAX 64
#define POOL_MAX 4096

/* One attempt outstanding in the transport. */
typedef struct tok {
	struct tok *prev, *next; /* send-order FIFO: deadlines are non-decreasing */
	uint64_t token;
	entry *e;
	int64_t deadline;   /* mono ms: timeout, or zombie expiry once superseded */
	int64_t sent_at;    /* mono ms of the send */
	bool superseded;    /* timed out; kept so a late confirm still acks */
	bool probe;         /* a suspect's resend (counts in susp_live) */
	bool isolated;      /* sent with nothing else in flight */
} tok;

/* A message blamed for a dropped connection that is not final yet: when it
 * comes back from the store it is sent alone. */
typedef struct poisoned {
	ackbox_id id;
	int blamed;
} poisoned;

typedef struct tx_ev {
	ackbox_tx_event_kind kind;
	uint64_t token;
	int broker_code;
	int retriable;
	char *reason;
} tx_ev;

/* Store changes (deletes after confirms) are applied once APPLY_BATCH are
 * queued or the oldest has waited APPLY_DELAY_MS, whichever comes first;
 * at once when nothing was applied for APPLY_DELAY_MS (a quiet relay). */
#define APPLY_BATCH 512
#define APPLY_DELAY_MS 2

/* Acks from a transport's own thread wake the relay once this many are
 * queued (a quarter of the window, at most 64), or at its next 1 ms tick
 * while messages are in flight: a wakeup per ack cost a context switch
 * per message. Anything but an ack wakes it at once. */
#define ACK_WAKE_MAX 64
#define ACK_TICK_MS 1

/* Claims that follow retries' due times run at least this far apart, so a
 * burst of retries (jittered over half their backoff) is claimed in
 * batches, each at most this late. */
#define RETRY_CLAIM_GAP_MS 5

/* A message sent alone whose token was lost (IN_DOUBT) is held this long
 * for the connection to be seen dropping; if it does not, it was not the
 * connection (a Kafka delivery timeout, say) and the message is resent. */
#define BLAME_WAIT_MS 1000

/* A connection that lived this long, or got any answer, was not a flap:
 * the next reconnect starts from the first backoff step again. */
#define STABLE_CONN_MS 10000

/* Disconnect lines: the first at once, then one per this many ms with a
 * count of the ones in between. */
#define DISCONNECT_LOG_MS 10000

/* The poisoned set forgets everything past this size (a message it forgets
 * is found again by probing, at the cost of one more round). */
#define POISONED_MAX 4096

struct ackbox_tx_host {
	abx_relay *relay;
	/* ackbox_tx_set_tap: set in the transport's open(), before any thread
	 * that reports exists; read by every reporter after that */
	ackbox_tx_tap tap;
	void *tap_opaque;
};

struct abx_relay {
	struct ackbox *ab;
	const ackbox_transport_ops *ops;
	void *tx_ctx;
	ackbox_tx_host host;
	ackbox_tx_info info;
	int window;
	pthread_t thread;
	bool thread_started; /* creator and destroyer only */

	/* transport.require_connect: ackbox_new waits for the relay thread's
	 * first connect (under in_mtx) */
	bool first_wanted;
	int first_result; /* 0 pending, 1 connected, -1 failed */
	char first_error[512]; /* a connect error with its hint (a wrong password...) */
	pthread_cond_t first_cond;
	size_t ack_wake; /* queued acks that wake the relay (see ACK_WAKE_MAX) */
	int wake_fd;
	atomic_int wake_pending;
	atomic_int stop;
	atomic_int connected;

	/* inbox: fresh messages from publishers */
	pthread_mutex_t in_mtx;
	abx_fresh *fresh_head, *fresh_tail;
	size_t reserved_msgs, reserved_bytes;
	bool store_poked;

	/* inbox: transport events, from any thread */
	pthread_mutex_t ev_mtx;
	tx_ev *evs, *evs_spare;
	size_t nevs, cap_evs, cap_spare;

	/* relay-thread only */
	abx_map by_id;  /* id_key -> entry */
	abx_map tokens; /* token -> tok */
	tok *fifo_head, *fifo_tail;
	entry *free_entries; /* reusable entries, linked through next */
	tok *free_toks;      /* reusable tokens, linked through next */
	size_t nfree_entries, nfree_toks;
	entry *ready_head, *ready_tail;
	size_t ready_len;
	size_t live; /* tokens in flight that are not superseded */

	/* poison messages: see "Poison messages" in docs/architecture.md */
	entry *susp_head, *susp_tail; /* suspects waiting to be resent, in id order */
	size_t susp_len;
	size_t nsuspect;     /* suspects not final: queued, in flight, held or going back */
	size_t susp_live;    /* suspects in flight */
	bool isolated_live;  /* a message sent alone is in flight: nothing else goes */
	int probe_win;       /* suspects in flight at once; 1 = each alone */
	entry **back;        /* entries going back to a queue, in no order yet */
	size_t nback, cap_back;
	entry *blame;        /* sent alone, lost: blamed if the broker is back at once */
	bool blame_dropped;  /* the connection was seen going down since */
	int64_t blame_until; /* released if no drop is seen by then */
	int blame_code;
	char blame_reason[256];
	abx_map poisoned;     /* id_key -> poisoned */
	bool lost_alone;     /* a held message was released without a drop seen... */
	ackbox_id lost_alone_id; /* ...this one, at the head of the suspect queue */
	int lost_alone_code;
	char lost_alone_reason[256];
	int64_t next_blame_log_at;
	unsigned blame_unlogged;

	/* the connection's life, for the reconnect backoff and the log */
	int64_t connected_at;
	uint64_t answers;    /* outcomes received on this connection */
	int64_t last_answer_at; /* mono ms of the last outcome received (any connection) */
	int64_t unanswered_since; /* mono ms of the first send after it (0: none since) */
	bool conn_blamed;    /* its drop left a message to judge */
	int flaps;           /* short connections in a row that achieved nothing */
	int64_t next_disc_log_at;
	unsigned disc_unlogged;
	uint64_t next_token;
	bool ever_connected;
	int connect_failures; /* the reconnect backoff's step */
	int connect_errors;   /* connect() failures since the last success */
	int64_t next_connect_at;
	char last_claim_error[256];
	/* rows of the claim under way, taken only once it returned: a claim
	 * that fails rolled its leases back (the rows it handed out before the
	 * failure are claimable again), and sending them would repeat them at
	 * every claim (a disk full under the COMMIT) */
	struct abx_claimed {
		ackbox_id id;
		abx_fresh *data; /* NULL: the entry is already queued or in flight */
		int attempts;
		uint64_t lease;
	} *claimed;
	size_t nclaimed, cap_claimed;
	int64_t next_claim_log_at;
	int64_t next_claim_at;
	abx_heap retry_at; /* mono ms when each retry set here is claimable */
	bool store_dirty;
	uint64_t rng;
	ackbox_store_change *changes;
	size_t nchanges, cap_changes;
	char **change_texts; /* owned last_error strings, parallel to changes */
	ackbox_attempt *notes; /* attempt notes, parallel to changes (at_ms 0: none); their
	                          texts are owned. Used only if the store keeps history */
	bool history;          /* the store has the ABI 1.6 history slots */
	abx_report_item *rep_head, *rep_tail; /* released after their changes */
	abx_report_item *ack_head, *ack_tail; /* ACKED: released after each batch of events */
	size_t nreports;
	int64_t next_fail_log_at; /* FAILED lines are rate-limited with a report callback */
	unsigned failed_unlogged;
	int64_t apply_retry_at;
	int64_t first_change_at; /* when the oldest queued change was queued */
	int64_t last_apply_at;   /* when changes were last applied */
	bool apply_stuck;        /* the store refused the last apply */
	char last_connect_error[512];
	int64_t next_connect_log_at; /* mono ms: the same connect error is logged again then */

	/* delivery.order=key (order.c) */
	abx_map key_holder;  /* key hash -> the entry holding the key */
	entry *parked;       /* entries waiting for their key, linked by next */
	size_t nparked;
};


/* ---- queues.c ---- */
void abx_entry_drop_data(abx_relay *r, entry *e);
void abx_entry_maybe_free(abx_relay *r, entry *e);
entry *abx_entry_new(abx_relay *r, abx_fresh *data, int attempts, uint64_t lease);
void abx_ready_push_back(abx_relay *r, entry *e);
void abx_ready_push_front(abx_relay *r, entry *e);
entry *abx_ready_pop(abx_relay *r);
void abx_susp_push_front(abx_relay *r, entry *e);
entry *abx_susp_pop(abx_relay *r);
void abx_queue_unlink(abx_relay *r, entry *e);
void abx_fifo_remove(abx_relay *r, tok *t);
void abx_fifo_append(abx_relay *r, tok *t);
void abx_tok_retire(abx_relay *r, tok *t);
void abx_tok_drop(abx_relay *r, tok *t);
tok *abx_tok_alloc(abx_relay *r);
void abx_pools_free(abx_relay *r);
void abx_back_add(abx_relay *r, entry *e);
void abx_back_flush(abx_relay *r);
abx_fresh *abx_fresh_from_row(const ackbox_store_row *row);

/* ---- outcome.c ---- */
void abx_change_add(abx_relay *r, ackbox_change_kind kind, const entry *e, int64_t due_ms,
                    const char *text, int code);
/* Records an attempt of e that was not confirmed: the entry's counters, and
 * (if the store keeps history) a note with the last change queued for e,
 * or, with own_change, a NOTE change of its own. */
void abx_attempt_note(abx_relay *r, entry *e, ackbox_outcome oc, int code, const char *text,
                      bool own_change);
void abx_report_add(abx_relay *r, const entry *e, ackbox_state st, ackbox_outcome oc,
                    int code, int retriable, const char *reason);
void abx_on_acked(abx_relay *r, entry *e);
void abx_on_attempt_failed_ex(abx_relay *r, entry *e, ackbox_outcome oc, int code,
                    int retriable, const char *why, bool fail_now);
void abx_on_attempt_failed(abx_relay *r, entry *e, ackbox_outcome oc, int code, int retriable,
                    const char *why);
/* e's confirm is overdue on a connection that answered nothing since it was
 * sent: resent after a backoff, no attempt counted (relay.c check_timeouts). */
void abx_on_silent_timeout(abx_relay *r, entry *e, const char *why);
int64_t abx_apply_due_at(const abx_relay *r);
/* Hands the ACKED reports gathered so far to ackbox_poll. */
void abx_release_acks(abx_relay *r);
void abx_apply_changes(abx_relay *r, int64_t now, bool force);

/* ---- poison.c ---- */
void abx_mark_suspect(abx_relay *r, entry *e);
void abx_suspect_resolved(abx_relay *r, entry *e, bool acked);
void abx_poisoned_forget(abx_relay *r, const entry *e);
void abx_poisoned_clear(abx_relay *r);
void abx_blame_hold(abx_relay *r, entry *e, const char *why, int code);
void abx_blame_release(abx_relay *r);
void abx_blame_expire(abx_relay *r);
void abx_blame_convict(abx_relay *r);
void abx_on_lost(abx_relay *r, tok *t, const char *why, int code);
void abx_enqueue_claimed(abx_relay *r, entry *e);
entry *abx_next_to_send(abx_relay *r, bool *alone);

/* ---- order.c ---- */
/* With delivery.order=key: true if e may be queued now (it holds its key,
 * or has none); otherwise e is parked until the key's holder is resolved. */
bool abx_order_admit(abx_relay *r, entry *e);
/* e is resolved (done, or back in the store): its key goes to the oldest
 * entry parked for it, which is queued. */
void abx_order_release(abx_relay *r, entry *e);
void abx_order_unpark(abx_relay *r, entry *e);

/* ---- relay.c ---- */
int64_t abx_backoff_ms(abx_relay *r, int n);
void abx_on_connected(abx_relay *r, int64_t now);
void abx_on_disconnected(abx_relay *r, const char *why, int code);
void *abx_relay_main(void *arg);

/* ---- relay_host.c ---- */
void abx_relay_wake(abx_relay *r);
/* Called by the relay thread first: reports made on it wake it at once. */
void abx_relay_thread_enter(abx_relay *r);
/* The relay thread's first connect() returned rc (err if it failed). */
void abx_relay_first_connect(abx_relay *r, int rc, const char *err);

#endif
