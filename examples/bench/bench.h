/*
 * bench.h - what ackbox-bench (bench.c) shares with the parts that know a
 * transport. Each transport folder may bring one (bench_raw.c, declared with
 * ackbox_plugin(... BENCH_SOURCES ...)): its raw publisher, the client
 * library alone with the same window and no store, which the RELIABLE rounds
 * are measured against, and what else the bench must do for that broker.
 * The HANDWRITTEN rounds run the same raw publisher at window 1 with a
 * per-message hook (bench_each): what an application writes without ackbox.
 */
#ifndef ACKBOX_BENCH_H
#define ACKBOX_BENCH_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ackbox/ackbox.h>

/* Every round publishes to this topic (an AMQP queue, a Kafka topic...). */
#define BENCH_TOPIC "ackbox-bench"
#define BENCH_MAX_SETS 64

struct bench_each;

typedef struct bench_opts {
	const char *transport; /* as given (a transport's setup may put another URL in url) */
	char url[1024];        /* the URL actually used */
	char shown[1024];      /* url with its password replaced by *** (for output) */
	char scheme[16];
	size_t count, size;
	int window; /* 0: the transport's default */
	int threads, rounds, max_seconds;
	bool json, smoke, store_only, drain, allow_remote, no_raw, no_reliable, no_handwritten;
	bool wait_ack; /* reliable: wait for each call's reports before the next call */
	const char *store_dir;
	const char *sets[BENCH_MAX_SETS]; /* --set KEY=VALUE, as given */
	int nsets;
	int broker_pid;
	bool pin_broker;   /* --pin-broker: the bench on one CPU, the broker on another */
	char pinned[96];   /* what --pin-broker did, for the output */
	int poll_sleep_us; /* 0: the poll thread blocks in ackbox_poll(ab, 50) */
	size_t rate;       /* --rate: offered msgs/s, open loop; 0: as fast as the window allows */
	const char *latency_file; /* --latency-file: latency distributions written here */
	bool count_given, rounds_given;
	size_t keys; /* --keys: message i gets key "k<i mod keys>"; 0: no key */
	size_t handwritten_count; /* messages per HANDWRITTEN round */
	/* NULL, or the HANDWRITTEN round's hook: a raw publisher calls it
	 * through bench_before and bench_answered (below) */
	const struct bench_each *each;
} bench_opts;

typedef struct bench_result {
	const char *mode; /* "raw", "reliable", "handwritten", "store-only", "drain" */
	int round;
	bool ok;
	char err[256];
	size_t count, acked, failed;
	double secs;           /* first publish to last ack (or last durable in store-only) */
	double rate;           /* count / secs */
	double publish_secs;   /* first publish to last publish call returning */
	double durable_rate;   /* count / publish_secs (reliable, handwritten) */
	double dur_p50, dur_p99; /* ms, publish -> durable (reliable, handwritten; <0: n/a) */
	double ack_p50, ack_p99; /* ms, publish -> ack */
	double cpu_user, cpu_sys;
	double broker_cpu;     /* s, -1 when unknown */
	long peak_rss_kib;     /* VmHWM during the round */
	double per_commit;     /* reliable, store-only: messages per store commit (one
	                          fdatasync each on SQLite); <0: n/a */
	double commit_rate;    /* handwritten: one-row INSERT commits per second of
	                          INSERT time (the store's own one-message rate); <0: n/a */
} bench_result;

/* Per-message timestamps of one round, indexed by sequence number. */
typedef struct bench_times {
	size_t n;
	int64_t *pub; /* publish call started */
	int64_t *dur; /* publish call returned (reliable); row committed (handwritten) */
	int64_t *ack; /* confirm seen; 0: never */
} bench_times;

/*
 * What the bench knows about one transport. Generated table: every built
 * plugin's `const bench_transport bench_transport_<name>` (bench_raws.c).
 */
typedef struct bench_transport {
	const char *scheme;   /* the URL scheme it serves */
	const char *url_help; /* NULL, or a line for --help about a special URL */
	/* NULL, or "key=value" strings set on the reliable handle (before --set) */
	const char *const *reliable_sets;
	/* Optional: once, before any round; may put another URL in o->url (a mock
	 * broker in this process). 0, or -1 after a message on stderr. */
	int (*setup)(bench_opts *o);
	/* Optional: once, at exit, after setup. */
	void (*teardown)(void);
	/* Optional: before every round that sends (not --store-only or --drain),
	 * so that each starts from the same broker state. 0, or -1 and err. */
	int (*prepare)(const bench_opts *o, char *err, size_t errn);
	/* One RAW round: publishes t->n messages to BENCH_TOPIC, setting t->pub[i]
	 * and t->ack[i] and counting r->acked and r->failed; gives up at deadline
	 * (bench_now_ns) with bench_fail. With o->each (a HANDWRITTEN round, o->window
	 * 1) it calls bench_before and bench_answered around every message. */
	void (*run_raw)(const bench_opts *o, bench_times *t, bench_result *r, int64_t deadline);
} bench_transport;

/* NULL-terminated, from the build. */
extern const bench_transport *const bench_transports[];

/* Monotonic nanoseconds. */
int64_t bench_now_ns(void);

/* Waits on cond until signalled or 100 ms have passed, so that a caller
 * looping on its condition also sees its deadline. Locks: mtx held. */
void bench_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mtx);

/*
 * --rate: message i of a round is due at start + i / rate, whether or not
 * the sender kept up. Its latencies count from that moment, so a sender held
 * back by a full window or a slow call does not hide the wait
 * (coordinated omission). Without --rate a message is due when it is sent.
 */
int64_t bench_due_ns(const bench_opts *o, int64_t start, size_t i);

/* Sleeps until message i is due; returns when its latencies count from. */
int64_t bench_pace(const bench_opts *o, int64_t start, size_t i);

/* Marks the round failed; the first message is kept. */
void bench_fail(bench_result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * The HANDWRITTEN mode (bench.c): the original design written by hand around
 * a raw publisher, per message: INSERT a row in state 'sending', publish, wait
 * for the confirm, DELETE the row. A raw publisher calls:
 *
 * bench_before(o, i) once t->pub[i] is set, just before it publishes message
 * i (again if it retries i: the row is stored once). 0, or -1 after
 * bench_fail: the round stops. Nothing without o->each.
 *
 * bench_answered(o, i, ok) when message i's confirm (ok) or failure came,
 * before it stamps t->ack[i] and counts it; returns what to count (false also
 * when the application's own step, the DELETE, failed). Returns ok without
 * o->each.
 *
 * Either may run on the client library's thread; with window 1 they never
 * run at the same time.
 */
typedef struct bench_each {
	int (*before)(void *ctx, size_t i);
	bool (*answered)(void *ctx, size_t i, bool ok);
	void *ctx;
} bench_each;

int bench_before(const bench_opts *o, size_t i);
bool bench_answered(const bench_opts *o, size_t i, bool ok);

/* A payload of size bytes ('a'..'z'); free() it. */
char *bench_payload(size_t size);

#endif
