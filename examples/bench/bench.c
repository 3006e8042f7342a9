/*
 * bench.c - ackbox-bench: what reliability costs. In one run and in
 * rounds that rotate their order it publishes the same messages (a) RAW,
 * through the same client library with confirms and the same in-flight window
 * but no store, (b) RELIABLE, through ackbox with a SQLite store at full
 * durability, and (c) HANDWRITTEN, what an application writes instead: per
 * message a row inserted, the raw publisher at window 1, the row deleted at
 * the confirm, and prints throughput, latency, CPU time and peak RSS for each.
 *
 * Every loop is bounded in count and in time (--max-seconds per round).
 * Brokers must be on loopback unless --allow-remote is given.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <ackbox/ackbox.h>
#include <sqlite3.h>

#include "bench.h"

/* ------------------------------------------------------------------ */
/* What the transports' parts use (bench.h)                             */
/* ------------------------------------------------------------------ */

int64_t bench_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void bench_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mtx)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += 100000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_cond_timedwait(cond, mtx, &ts);
}

int64_t bench_due_ns(const bench_opts *o, int64_t start, size_t i)
{
	return start + (int64_t)((double)i * 1e9 / (double)o->rate);
}

int64_t bench_pace(const bench_opts *o, int64_t start, size_t i)
{
	int64_t now = bench_now_ns(), due;
	if (!o->rate)
		return now;
	due = bench_due_ns(o, start, i);
	if (due > now) {
		struct timespec ts = {due / 1000000000, due % 1000000000};
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
			;
	}
	return due;
}

void bench_fail(bench_result *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	if (r->ok || !r->err[0])
		vsnprintf(r->err, sizeof(r->err), fmt, ap);
	va_end(ap);
	r->ok = false;
}

char *bench_payload(size_t size)
{
	char *p = malloc(size ? size : 1);
	if (p)
		for (size_t i = 0; i < size; i++)
			p[i] = (char)('a' + i % 26);
	return p;
}


/* The part that knows o->scheme, or NULL if no transport folder brought one. */
static const bench_transport *transport_of(const bench_opts *o)
{
	for (size_t i = 0; bench_transports[i]; i++)
		if (strcmp(bench_transports[i]->scheme, o->scheme) == 0)
			return bench_transports[i];
	return NULL;
}

static int times_init(bench_times *t, size_t n)
{
	t->n = n;
	t->pub = calloc(n, sizeof(int64_t));
	t->dur = calloc(n, sizeof(int64_t));
	t->ack = calloc(n, sizeof(int64_t));
	return t->pub && t->dur && t->ack ? 0 : -1;
}

static void times_fini(bench_times *t)
{
	free(t->pub);
	free(t->dur);
	free(t->ack);
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

/* p50 and p99 in ms of (to[i] - from[i]) over messages that have both. */
static void percentiles(const int64_t *from, const int64_t *to, size_t n, double *p50,
                        double *p99)
{
	int64_t *d = malloc((n ? n : 1) * sizeof(*d));
	size_t k = 0;
	*p50 = *p99 = -1;
	if (!d)
		return;
	for (size_t i = 0; i < n; i++)
		if (from[i] && to[i])
			d[k++] = to[i] - from[i];
	if (k) {
		qsort(d, k, sizeof(*d), cmp_i64);
		*p50 = (double)d[(k - 1) * 50 / 100] / 1e6;
		*p99 = (double)d[(k - 1) * 99 / 100] / 1e6;
	}
	free(d);
}

/* --latency-file: the latencies of one kind from every round, merged. */
typedef struct lat {
	int64_t *v; /* ns */
	size_t n, cap;
} lat;

static int lat_add(lat *l, const int64_t *from, const int64_t *to, size_t n)
{
	if (l->n + n > l->cap) {
		int64_t *v = realloc(l->v, (l->n + n) * sizeof(*v));
		if (!v)
			return -1;
		l->v = v;
		l->cap = l->n + n;
	}
	for (size_t i = 0; i < n; i++)
		if (from[i] && to[i])
			l->v[l->n++] = to[i] - from[i];
	return 0;
}

/* Writes percentiles of raw publish->ack, reliable publish->ack, reliable
 * publish->durable and handwritten publish->ack, in ms; "-" where a mode did
 * not run. */
static int lat_write(const bench_opts *o, lat *ls, int nls)
{
	static const double pcts[] = {0,  10, 20, 30, 40,   50,   60,    70,    80, 90,
	                              95, 97, 98, 99, 99.5, 99.9, 99.95, 99.99, 100};
	FILE *f = fopen(o->latency_file, "w");
	if (!f) {
		fprintf(stderr, "ackbox-bench: --latency-file %s: %s\n", o->latency_file,
		        strerror(errno));
		return -1;
	}
	for (int k = 0; k < nls; k++)
		qsort(ls[k].v, ls[k].n, sizeof(*ls[k].v), cmp_i64);
	fprintf(f,
	        "# ackbox-bench %s: %s, %zu msgs x %zu B, window %d, rate %zu msg/s (0: unpaced), "
	        "%d round(s) per mode merged\n# percentile raw_ack_ms reliable_ack_ms "
	        "reliable_durable_ms handwritten_ack_ms\n",
	        ackbox_version(), o->shown, o->count, o->size, o->window, o->rate, o->rounds);
	for (size_t i = 0; i < sizeof(pcts) / sizeof(pcts[0]); i++) {
		fprintf(f, "%g", pcts[i]);
		for (int k = 0; k < nls; k++) {
			if (!ls[k].n) {
				fputs(" -", f);
				continue;
			}
			size_t at = (size_t)((double)(ls[k].n - 1) * pcts[i] / 100.0 + 0.5);
			fprintf(f, " %.3f", (double)ls[k].v[at] / 1e6);
		}
		fputc('\n', f);
	}
	if (fclose(f) != 0) {
		fprintf(stderr, "ackbox-bench: --latency-file %s: %s\n", o->latency_file,
		        strerror(errno));
		return -1;
	}
	return 0;
}

/* CPU, peak RSS (reset per round through clear_refs) and the broker's CPU. */
typedef struct usage {
	struct rusage ru;
	double broker;
} usage;

static double broker_cpu_s(int pid)
{
	char path[64], buf[2048];
	FILE *f;
	unsigned long ut = 0, st = 0;
	if (pid <= 0)
		return -1;
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (!fgets(buf, sizeof(buf), f)) {
		fclose(f);
		return -1;
	}
	fclose(f);
	/* fields after the ")" that ends the command name: 3=state ... 14=utime 15=stime */
	char *p = strrchr(buf, ')');
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return -1;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* ------------------------------------------------------------------ */
/* --pin-broker: the bench on one CPU, the broker on another            */
/* ------------------------------------------------------------------ */

static int pinned_pid;
static cpu_set_t pinned_was; /* the broker's affinity before, restored at exit */

/* Sets the affinity of every thread of pid; 0 or -1 with errno. */
static int pin_threads(int pid, const cpu_set_t *set)
{
	char path[64];
	struct dirent *d;
	int n = 0;
	snprintf(path, sizeof(path), "/proc/%d/task", pid);
	DIR *dir = opendir(path);
	if (!dir)
		return -1;
	while ((d = readdir(dir)) != NULL) {
		int tid = atoi(d->d_name);
		if (tid > 0 && sched_setaffinity(tid, sizeof(*set), set) == 0)
			n++;
	}
	closedir(dir);
	return n ? 0 : -1;
}

static void unpin_broker(void)
{
	if (pinned_pid)
		pin_threads(pinned_pid, &pinned_was);
}

/*
 * Runs this process (every thread it starts from now on) on the first CPU
 * it may use and every thread of the broker on the second, as if the broker
 * had a host of its own: then what the client side costs cannot take CPU
 * time from the broker. The broker's threads get their affinity back at
 * exit (threads it starts meanwhile inherit from the thread that starts
 * them). Call before any thread starts.
 */
static int pin_broker(int broker_pid, char *shown, size_t shown_size)
{
	cpu_set_t mine, one;
	int cpus[2], k = 0;
	if (sched_getaffinity(0, sizeof(mine), &mine) != 0) {
		fprintf(stderr, "ackbox-bench: --pin-broker: sched_getaffinity: %s\n", strerror(errno));
		return -1;
	}
	for (int i = 0; i < CPU_SETSIZE && k < 2; i++)
		if (CPU_ISSET(i, &mine))
			cpus[k++] = i;
	if (k < 2) {
		fprintf(stderr, "ackbox-bench: --pin-broker needs two CPUs, this process may use %d\n", k);
		return -1;
	}
	if (sched_getaffinity(broker_pid, sizeof(pinned_was), &pinned_was) != 0) {
		fprintf(stderr, "ackbox-bench: --pin-broker: broker pid %d: %s\n", broker_pid,
		        strerror(errno));
		return -1;
	}
	CPU_ZERO(&one);
	CPU_SET(cpus[1], &one);
	if (pin_threads(broker_pid, &one) != 0) {
		fprintf(stderr, "ackbox-bench: --pin-broker: cannot move the threads of pid %d: %s\n",
		        broker_pid, strerror(errno));
		return -1;
	}
	pinned_pid = broker_pid;
	atexit(unpin_broker);
	CPU_ZERO(&one);
	CPU_SET(cpus[0], &one);
	if (sched_setaffinity(0, sizeof(one), &one) != 0) {
		fprintf(stderr, "ackbox-bench: --pin-broker: sched_setaffinity: %s\n", strerror(errno));
		return -1;
	}
	snprintf(shown, shown_size, "bench on CPU %d, broker pid %d on CPU %d", cpus[0], broker_pid,
	         cpus[1]);
	return 0;
}

static void usage_begin(usage *u, int broker_pid)
{
	FILE *f = fopen("/proc/self/clear_refs", "w");
	if (f) {
		fputs("5", f); /* 5: reset the peak RSS (VmHWM) to the current RSS */
		fclose(f);
	}
	getrusage(RUSAGE_SELF, &u->ru);
	u->broker = broker_cpu_s(broker_pid);
}

static long vm_hwm_kib(void)
{
	char line[256];
	long v = -1;
	FILE *f = fopen("/proc/self/status", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmHWM: %ld", &v) == 1)
			break;
	fclose(f);
	return v;
}

static double tv_s(struct timeval tv)
{
	return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void usage_end(const usage *u, int broker_pid, bench_result *r)
{
	struct rusage e;
	getrusage(RUSAGE_SELF, &e);
	r->cpu_user = tv_s(e.ru_utime) - tv_s(u->ru.ru_utime);
	r->cpu_sys = tv_s(e.ru_stime) - tv_s(u->ru.ru_stime);
	r->peak_rss_kib = vm_hwm_kib();
	double b = broker_cpu_s(broker_pid);
	r->broker_cpu = (b >= 0 && u->broker >= 0) ? b - u->broker : -1;
}

/* Rate, wall time and ack latency from the timestamps. */
static void finish_times(bench_result *r, const bench_times *t)
{
	int64_t first = 0, last_ack = 0, last_dur = 0;
	for (size_t i = 0; i < t->n; i++) {
		if (t->pub[i] && (!first || t->pub[i] < first))
			first = t->pub[i];
		if (t->ack[i] > last_ack)
			last_ack = t->ack[i];
		if (t->dur[i] > last_dur)
			last_dur = t->dur[i];
	}
	if (first && last_ack > first) {
		r->secs = (double)(last_ack - first) / 1e9;
		r->rate = (double)r->acked / r->secs;
	}
	if (first && last_dur > first) {
		r->publish_secs = (double)(last_dur - first) / 1e9;
		r->durable_rate = (double)t->n / r->publish_secs;
	}
	percentiles(t->pub, t->ack, t->n, &r->ack_p50, &r->ack_p99);
	percentiles(t->pub, t->dur, t->n, &r->dur_p50, &r->dur_p99);
}

/* ------------------------------------------------------------------ */
/* URLs                                                                 */
/* ------------------------------------------------------------------ */

/* Is every host of "scheme://[user[:pw]@]host[:port][,host:port...][/...]" loopback? */
static bool url_is_loopback(const char *url)
{
	const char *p = strstr(url, "://");
	if (!p)
		return false;
	p += 3;
	const char *at = strchr(p, '@'), *slash = strchr(p, '/');
	if (at && (!slash || at < slash))
		p = at + 1;
	for (;;) {
		char host[256];
		size_t n;
		if (*p == '[') {
			n = strcspn(p + 1, "]");
			snprintf(host, sizeof(host), "%.*s", (int)n, p + 1);
			p += n + 2;
		} else {
			n = strcspn(p, ":,/?");
			snprintf(host, sizeof(host), "%.*s", (int)n, p);
			p += n;
		}
		if (!(strncmp(host, "127.", 4) == 0 || strcmp(host, "localhost") == 0 ||
		      strcmp(host, "::1") == 0))
			return false;
		p += strcspn(p, ",/?");
		if (*p != ',')
			return true;
		p++;
	}
}

/* ------------------------------------------------------------------ */
/* RAW publishers: the client library alone, same window, no store      */
/* ------------------------------------------------------------------ */

/* The transport folder's raw publisher (its bench_raw.c), after its prepare. */
static void run_raw(const bench_opts *o, bench_times *t, bench_result *r, int64_t deadline)
{
	const bench_transport *bt = transport_of(o);
	char err[256];
	if (!bt || !bt->run_raw) {
		bench_fail(r, "no raw publisher for scheme '%s' in this build (%s/bench_raw.c)",
		           o->scheme, "its transport folder");
		return;
	}
	if (bt->prepare && bt->prepare(o, err, sizeof(err)) != 0) {
		bench_fail(r, "raw %s: %s", o->scheme, err);
		return;
	}
	bt->run_raw(o, t, r, deadline);
}

/* ------------------------------------------------------------------ */
/* HANDWRITTEN: the original design in application code                */
/* ------------------------------------------------------------------ */

/*
 * One table, one row per message while it is unconfirmed, on the settings of
 * ackbox's SQLite store (store/sqlite/sqlite.c): WAL, synchronous=FULL,
 * secure_delete=fast, a 5 s busy timeout. The row is keyed by the sequence
 * number (an application's own key; the raw publisher sends its 36-character
 * id as ackbox does). Each statement is its own transaction (autocommit), so
 * every INSERT and every DELETE is a commit with its fsync of the WAL: what
 * a straightforward hand-written outbox does. (ackbox's own store commits
 * its deletes at synchronous=NORMAL and packs batches; that is the point of
 * comparing.)
 */
static const char handwritten_schema[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=FULL;"
    "PRAGMA secure_delete=fast;"
    "CREATE TABLE IF NOT EXISTS outbox(id INTEGER PRIMARY KEY, topic TEXT NOT NULL,"
    " payload BLOB NOT NULL, state TEXT NOT NULL);";

typedef struct handwritten {
	const bench_opts *o;
	bench_times *t;
	bench_result *r;
	sqlite3 *db;
	sqlite3_stmt *ins, *del;
	const char *payload;
	size_t stored; /* rows inserted so far (messages 0 .. stored-1) */
	int64_t insert_ns; /* time spent in the INSERTs (each its own commit) */
} handwritten;

static int handwritten_before(void *ctx, size_t i)
{
	handwritten *h = ctx;
	if (i < h->stored)
		return 0; /* the publisher retries message i: its row is there */
	int64_t t0 = bench_now_ns();
	sqlite3_bind_int64(h->ins, 1, (sqlite3_int64)i);
	sqlite3_bind_text(h->ins, 2, BENCH_TOPIC, -1, SQLITE_STATIC);
	sqlite3_bind_blob(h->ins, 3, h->payload, (int)h->o->size, SQLITE_STATIC);
	int rc = sqlite3_step(h->ins);
	sqlite3_reset(h->ins);
	h->insert_ns += bench_now_ns() - t0;
	if (rc != SQLITE_DONE) {
		bench_fail(h->r, "handwritten: INSERT of message %zu: %s", i, sqlite3_errmsg(h->db));
		return -1;
	}
	h->stored = i + 1;
	h->t->dur[i] = bench_now_ns();
	return 0;
}

static bool handwritten_answered(void *ctx, size_t i, bool ok)
{
	handwritten *h = ctx;
	if (!ok)
		return false; /* the row stays 'sending', for the application to resend */
	sqlite3_bind_int64(h->del, 1, (sqlite3_int64)i);
	int rc = sqlite3_step(h->del);
	sqlite3_reset(h->del);
	if (rc != SQLITE_DONE) {
		bench_fail(h->r, "handwritten: DELETE of message %zu: %s", i, sqlite3_errmsg(h->db));
		return false;
	}
	return true;
}

int bench_before(const bench_opts *o, size_t i)
{
	return o->each ? o->each->before(o->each->ctx, i) : 0;
}

bool bench_answered(const bench_opts *o, size_t i, bool ok)
{
	return o->each ? o->each->answered(o->each->ctx, i, ok) : ok;
}

/* Removes dir/name and its WAL, shared-memory and journal files. */
static void db_remove(const char *dir, const char *name)
{
	const char *suffix[] = {"", "-wal", "-shm", "-journal"};
	char path[1200];
	for (size_t i = 0; i < 4; i++) {
		snprintf(path, sizeof(path), "%s/%s%s", dir, name, suffix[i]);
		unlink(path);
	}
}

/* Rows the round left in the table (every confirmed message's is deleted). */
static long handwritten_left(handwritten *h)
{
	sqlite3_stmt *s = NULL;
	long n = -1;
	if (sqlite3_prepare_v2(h->db, "SELECT count(*) FROM outbox", -1, &s, NULL) == SQLITE_OK &&
	    sqlite3_step(s) == SQLITE_ROW)
		n = (long)sqlite3_column_int64(s, 0);
	sqlite3_finalize(s);
	return n;
}

/* One HANDWRITTEN round: the transport's raw publisher at window 1 with the hook. */
static void run_handwritten(const bench_opts *o, const char *dir, bench_times *t,
                            bench_result *r, int64_t deadline)
{
	handwritten h = {.t = t, .r = r};
	bench_each each = {handwritten_before, handwritten_answered, &h};
	bench_opts ho = *o;
	char path[1200], *payload = bench_payload(o->size);
	ho.window = 1; /* one message at a time, by nature */
	ho.count = t->n;
	ho.each = &each;
	h.o = &ho;
	h.payload = payload;
	db_remove(dir, "handwritten.db");
	snprintf(path, sizeof(path), "%s/handwritten.db", dir);
	if (!payload) {
		bench_fail(r, "out of memory");
		goto out;
	}
	if (sqlite3_open(path, &h.db) != SQLITE_OK ||
	    sqlite3_busy_timeout(h.db, 5000) != SQLITE_OK ||
	    sqlite3_exec(h.db, handwritten_schema, NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(h.db,
	                       "INSERT INTO outbox(id, topic, payload, state)"
	                       " VALUES(?1, ?2, ?3, 'sending')",
	                       -1, &h.ins, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(h.db, "DELETE FROM outbox WHERE id = ?1", -1, &h.del, NULL) !=
	        SQLITE_OK) {
		bench_fail(r, "handwritten: %s: %s", path,
		           h.db ? sqlite3_errmsg(h.db) : "cannot open");
		goto out;
	}
	run_raw(&ho, t, r, deadline);
	if (h.stored && h.insert_ns > 0)
		r->commit_rate = (double)h.stored / ((double)h.insert_ns / 1e9);
	long left = handwritten_left(&h);
	if (left != (long)r->failed && r->ok)
		bench_fail(r, "handwritten: %ld row(s) left in the table, %zu message(s) failed", left,
		           r->failed);
out:
	sqlite3_finalize(h.ins);
	sqlite3_finalize(h.del);
	sqlite3_close(h.db);
	db_remove(dir, "handwritten.db");
	free(payload);
}

/* ------------------------------------------------------------------ */
/* RELIABLE publishing through ackbox                                   */
/* ------------------------------------------------------------------ */

/* One delivery report as the callback saw it; matched to its message later. */
typedef struct seen {
	ackbox_id id;
	int64_t t;
	int acked;
} seen;

typedef struct reliable {
	const bench_opts *o;
	ackbox *ab;
	bench_times *t;
	bench_result *r;
	int64_t deadline;
	int64_t start;  /* publishing began (--rate counts from it) */
	ackbox_id *ids; /* by sequence number */
	seen *reports;  /* written only by the poll thread */
	size_t nreports, cap, expect;
	_Atomic bool stop;
	_Atomic int publish_err;
	char publish_errstr[256];
	pthread_mutex_t err_mtx;
	pthread_mutex_t rep_mtx; /* --wait-ack: nreports under it, rep_cond on each */
	pthread_cond_t rep_cond;
} reliable;

static void on_report(const ackbox_report *rep, void *opaque)
{
	reliable *b = opaque;
	if (b->nreports >= b->cap)
		return; /* a report for a message of an earlier run (--store-dir reused) */
	seen *s = &b->reports[b->nreports];
	s->id = rep->id;
	s->t = bench_now_ns();
	s->acked = rep->state == ACKBOX_MSG_ACKED;
	if (b->o->wait_ack) {
		pthread_mutex_lock(&b->rep_mtx);
		b->nreports++;
		pthread_cond_broadcast(&b->rep_cond);
		pthread_mutex_unlock(&b->rep_mtx);
	} else {
		b->nreports++;
	}
}

/* --wait-ack: until n reports came (or the deadline passed). */
static void wait_reports(reliable *b, size_t n)
{
	pthread_mutex_lock(&b->rep_mtx);
	while (b->nreports < n && bench_now_ns() < b->deadline)
		bench_cond_wait(&b->rep_cond, &b->rep_mtx);
	pthread_mutex_unlock(&b->rep_mtx);
}

static void *poll_thread(void *arg)
{
	reliable *b = arg;
	while (!b->stop && b->nreports < b->expect && bench_now_ns() < b->deadline) {
		if (b->o->poll_sleep_us == 0) {
			ackbox_poll(b->ab, 50);
		} else if (ackbox_poll(b->ab, 0) == 0) {
			/* diagnostic: no condition-variable hand-off with the relay */
			usleep((useconds_t)b->o->poll_sleep_us);
		}
	}
	return NULL;
}

static void publish_error(reliable *b, int rc, const char *err)
{
	pthread_mutex_lock(&b->err_mtx);
	if (!b->publish_err) {
		b->publish_err = rc;
		snprintf(b->publish_errstr, sizeof(b->publish_errstr), "%s", err);
	}
	pthread_mutex_unlock(&b->err_mtx);
}

/* Single thread: ackbox_publish_batch in chunks of min(window, 500). */
static void publish_batches(reliable *b, const char *payload)
{
	size_t chunk = b->o->window > 0 && b->o->window < 500 ? (size_t)b->o->window : 500;
	ackbox_msg *msgs = calloc(chunk, sizeof(*msgs));
	char err[256];
	if (!msgs) {
		publish_error(b, ACKBOX_ERR_NOMEM, "out of memory");
		return;
	}
	char (*keys)[24] = calloc(chunk, sizeof(*keys));
	if (!keys) {
		free(msgs);
		publish_error(b, ACKBOX_ERR_NOMEM, "out of memory");
		return;
	}
	for (size_t k = 0; k < chunk; k++) {
		msgs[k].topic = BENCH_TOPIC;
		msgs[k].payload = payload;
		msgs[k].payload_len = b->o->size;
	}
	const bench_opts *o = b->o;
	size_t n;
	for (size_t i = 0; i < b->t->n && !b->publish_err; i += n) {
		n = b->t->n - i < chunk ? b->t->n - i : chunk;
		for (size_t k = 0; o->keys && k < n; k++) {
			snprintf(keys[k], sizeof(keys[k]), "k%zu", (i + k) % o->keys);
			msgs[k].key = keys[k];
			msgs[k].key_len = strlen(keys[k]);
		}
		if (bench_now_ns() > b->deadline) {
			publish_error(b, ACKBOX_ERR_TIMEOUT, "publishing exceeded --max-seconds");
			break;
		}
		if (o->rate) {
			/* wait for message i, then store every message due by now in one call */
			bench_pace(o, b->start, i);
			size_t due =
			    (size_t)((double)(bench_now_ns() - b->start) * (double)o->rate / 1e9) +
			    1;
			if (due > i && due - i < n)
				n = due - i;
		}
		int64_t t0 = bench_now_ns();
		int rc = ackbox_publish_batch(b->ab, msgs, n, &b->ids[i], err, sizeof(err));
		int64_t t1 = bench_now_ns();
		if (rc) {
			publish_error(b, rc, err);
			break;
		}
		for (size_t k = 0; k < n; k++) {
			b->t->pub[i + k] = o->rate ? bench_due_ns(o, b->start, i + k) : t0;
			b->t->dur[i + k] = t1;
		}
		if (o->wait_ack)
			wait_reports(b, i + n);
	}
	free(keys);
	free(msgs);
}

typedef struct worker {
	reliable *b;
	const char *payload;
	size_t from, step; /* messages from, from + step, from + 2 step, ... */
	pthread_t th;
} worker;

/* One of T threads: ackbox_publish per message, every T-th one. */
static void *publish_worker(void *arg)
{
	worker *w = arg;
	reliable *b = w->b;
	ackbox_msg m = {.topic = BENCH_TOPIC, .payload = w->payload, .payload_len = b->o->size};
	char err[256], key[24];
	for (size_t i = w->from; i < b->t->n && !b->publish_err; i += w->step) {
		if (b->o->keys) {
			snprintf(key, sizeof(key), "k%zu", i % b->o->keys);
			m.key = key;
			m.key_len = strlen(key);
		}
		int64_t due = bench_pace(b->o, b->start, i);
		int64_t t0 = bench_now_ns();
		if (t0 > b->deadline) {
			publish_error(b, ACKBOX_ERR_TIMEOUT, "publishing exceeded --max-seconds");
			break;
		}
		int rc = ackbox_publish(b->ab, &m, &b->ids[i], err, sizeof(err));
		if (rc) {
			publish_error(b, rc, err);
			break;
		}
		b->t->pub[i] = b->o->rate ? due : t0;
		b->t->dur[i] = bench_now_ns();
	}
	return NULL;
}

/* id -> sequence number, open addressing; ids are UUIDv7 with random low bytes. */
typedef struct idmap {
	uint32_t *slot; /* sequence + 1; 0: empty */
	size_t mask;
	const ackbox_id *ids;
} idmap;

static size_t id_hash(const ackbox_id *id)
{
	uint64_t h;
	memcpy(&h, id->b + 8, sizeof(h));
	return (size_t)(h * 0x9E3779B97F4A7C15ull >> 17);
}

static int idmap_build(idmap *m, const ackbox_id *ids, size_t n)
{
	size_t cap = 1;
	while (cap < 2 * n)
		cap *= 2;
	m->slot = calloc(cap, sizeof(uint32_t));
	m->mask = cap - 1;
	m->ids = ids;
	if (!m->slot)
		return -1;
	for (size_t i = 0; i < n; i++) {
		size_t h = id_hash(&ids[i]) & m->mask;
		while (m->slot[h])
			h = (h + 1) & m->mask;
		m->slot[h] = (uint32_t)(i + 1);
	}
	return 0;
}

static long idmap_find(const idmap *m, const ackbox_id *id)
{
	size_t h = id_hash(id) & m->mask;
	while (m->slot[h]) {
		size_t i = m->slot[h] - 1;
		if (memcmp(&m->ids[i], id, sizeof(*id)) == 0)
			return (long)i;
		h = (h + 1) & m->mask;
	}
	return -1;
}

/* The store.url of a --set, NULL if none (then the store is DIR/bench.db). */
static const char *store_url_set(const bench_opts *o)
{
	const char *url = NULL;
	for (int i = 0; i < o->nsets; i++)
		if (strncmp(o->sets[i], "store.url=", 10) == 0)
			url = o->sets[i] + 10;
	return url;
}

static ackbox *open_ackbox(const bench_opts *o, const char *dir, reliable *b, bench_result *r)
{
	char err[512], val[1200];
	ackbox_conf *conf = ackbox_conf_new();
	const bench_transport *bt;
	ackbox *ab = NULL;
	if (!conf) {
		bench_fail(r, "out of memory");
		return NULL;
	}
	snprintf(val, sizeof(val), "sqlite://%s/bench.db", dir);
	if (ackbox_conf_set(conf, "store.url", val, err, sizeof(err)) ||
	    ackbox_conf_set(conf, "transport.url", o->url, err, sizeof(err)))
		goto bad;
	if (o->window) {
		snprintf(val, sizeof(val), "%d", o->window);
		if (ackbox_conf_set(conf, "transport.window", val, err, sizeof(err)))
			goto bad;
	}
	/* what the transport's part wants (an AMQP queue declared, say) */
	bt = transport_of(o);
	for (const char *const *kv = bt ? bt->reliable_sets : NULL; kv && *kv; kv++) {
		char key[256];
		const char *eq = strchr(*kv, '=');
		snprintf(key, sizeof(key), "%.*s", (int)(eq - *kv), *kv);
		if (ackbox_conf_set(conf, key, eq + 1, err, sizeof(err)))
			goto bad;
	}
	for (int i = 0; i < o->nsets; i++) {
		char key[256];
		const char *eq = strchr(o->sets[i], '=');
		snprintf(key, sizeof(key), "%.*s", (int)(eq - o->sets[i]), o->sets[i]);
		if (ackbox_conf_set(conf, key, eq + 1, err, sizeof(err)))
			goto bad;
	}
	ackbox_conf_set_report_cb(conf, on_report, b);
	if (ackbox_new(&ab, conf, err, sizeof(err)) != 0)
		goto bad;
	return ab;
bad:
	bench_fail(r, "ackbox: %s", err);
	ackbox_conf_destroy(conf);
	return NULL;
}

/*
 * One reliable round. store_only: the broker is expected to be unreachable;
 * only the publish calls are timed and nothing waits for confirms.
 */
static void run_reliable(const bench_opts *o, const char *dir, bench_times *t, bench_result *r,
                         int64_t deadline, bool store_only)
{
	reliable b = {.o = o, .t = t, .r = r, .deadline = deadline, .cap = t->n, .expect = t->n};
	char *payload = bench_payload(o->size);
	pthread_t poller;
	bool polling = false;
	idmap map = {0};
	char err[256];

	pthread_mutex_init(&b.err_mtx, NULL);
	pthread_mutex_init(&b.rep_mtx, NULL);
	pthread_cond_init(&b.rep_cond, NULL);
	b.ids = calloc(t->n, sizeof(*b.ids));
	b.reports = calloc(t->n, sizeof(*b.reports));
	if (!payload || !b.ids || !b.reports) {
		bench_fail(r, "out of memory");
		goto out;
	}
	if (!o->store_dir || !o->drain)
		db_remove(dir, "bench.db");
	if (!store_only && transport_of(o) && transport_of(o)->prepare &&
	    transport_of(o)->prepare(o, err, sizeof(err)) != 0) {
		bench_fail(r, "%s: %s", o->scheme, err);
		goto out;
	}
	if (!(b.ab = open_ackbox(o, dir, &b, r)))
		goto out;
	if (!store_only) {
		/* start the clock connected, as the raw publisher does */
		while (!ackbox_connected(b.ab) && bench_now_ns() < deadline)
			usleep(1000);
		if (!ackbox_connected(b.ab)) {
			bench_fail(r, "ackbox did not connect to %s", o->shown);
			goto out;
		}
		if (pthread_create(&poller, NULL, poll_thread, &b) == 0)
			polling = true;
	}
	b.start = bench_now_ns();
	if (o->threads <= 1) {
		publish_batches(&b, payload);
	} else {
		worker *w = calloc((size_t)o->threads, sizeof(*w));
		int started = 0;
		if (!w) {
			bench_fail(r, "out of memory");
			goto out;
		}
		for (int k = 0; k < o->threads; k++) {
			w[k].b = &b;
			w[k].payload = payload;
			w[k].from = (size_t)k;
			w[k].step = (size_t)o->threads;
			if (pthread_create(&w[k].th, NULL, publish_worker, &w[k]) != 0)
				break;
			started++;
		}
		for (int k = 0; k < started; k++)
			pthread_join(w[k].th, NULL);
		free(w);
		if (started < o->threads)
			publish_error(&b, ACKBOX_ERR_INTERNAL, "cannot start publisher threads");
	}
	if (b.publish_err) {
		bench_fail(r, "publish: %s (%s)", ackbox_strerror(b.publish_err), b.publish_errstr);
		b.stop = true;
	}
	if (polling) {
		pthread_join(poller, NULL);
		polling = false;
	}
	if (store_only) {
		ackbox_counts c;
		if (ackbox_counts_get(b.ab, &c, err, sizeof(err)) != 0)
			bench_fail(r, "counts: %s", err);
		else if (c.sending + c.retrying < t->n)
			bench_fail(r, "only %" PRIu64 " of %zu messages are in the store",
			     c.sending + c.retrying, t->n);
		r->acked = b.nreports; /* should stay 0: the broker is unreachable */
	} else {
		if (idmap_build(&map, b.ids, t->n) != 0) {
			bench_fail(r, "out of memory");
			goto out;
		}
		for (size_t k = 0; k < b.nreports; k++) {
			long i = idmap_find(&map, &b.reports[k].id);
			if (i < 0)
				continue;
			if (b.reports[k].acked) {
				t->ack[i] = b.reports[k].t;
				r->acked++;
			} else {
				r->failed++;
			}
		}
		if (r->acked + r->failed < t->n && r->ok)
			bench_fail(r, "round exceeded --max-seconds (%zu of %zu reported)",
			     r->acked + r->failed, t->n);
	}
out:
	if (polling) {
		b.stop = true;
		pthread_join(poller, NULL);
	}
	if (b.ab) {
		ackbox_stats st;
		if (ackbox_stats_get(b.ab, &st, sizeof(st), err, sizeof(err)) == 0 &&
		    st.store_commits > 0)
			r->per_commit = (double)st.published / (double)st.store_commits;
		ackbox_destroy(b.ab);
	}
	free(map.slot);
	free(b.ids);
	free(b.reports);
	free(payload);
	pthread_mutex_destroy(&b.err_mtx);
	pthread_mutex_destroy(&b.rep_mtx);
	pthread_cond_destroy(&b.rep_cond);
}

/*
 * --drain: opens an existing store (left by --store-only) with a reachable
 * broker and times how long the backlog takes to be confirmed.
 */
static void run_drain(const bench_opts *o, const char *dir, bench_result *r, int64_t deadline)
{
	ackbox_counts c;
	char err[256];
	reliable b = {.o = o, .r = r, .deadline = deadline};
	int64_t t0, t_last = 0;
	if (!(b.ab = open_ackbox(o, dir, &b, r)))
		return;
	if (ackbox_counts_get(b.ab, &c, err, sizeof(err)) != 0) {
		bench_fail(r, "counts: %s", err);
		goto out;
	}
	r->count = c.sending + c.retrying;
	b.cap = b.expect = r->count;
	b.reports = calloc(r->count ? r->count : 1, sizeof(*b.reports));
	if (!b.reports) {
		bench_fail(r, "out of memory");
		goto out;
	}
	t0 = bench_now_ns();
	while (b.nreports < b.expect && bench_now_ns() < deadline)
		ackbox_poll(b.ab, 50);
	for (size_t k = 0; k < b.nreports; k++) {
		if (b.reports[k].acked)
			r->acked++;
		else
			r->failed++;
		if (b.reports[k].t > t_last)
			t_last = b.reports[k].t;
	}
	if (t_last > t0) {
		r->secs = (double)(t_last - t0) / 1e9;
		r->rate = (double)r->acked / r->secs;
	}
	if (r->acked + r->failed < r->count)
		bench_fail(r, "drain exceeded --max-seconds (%zu of %zu reported)",
		           r->acked + r->failed, r->count);
out:
	ackbox_destroy(b.ab);
	free(b.reports);
}

/* ------------------------------------------------------------------ */
/* Output                                                               */
/* ------------------------------------------------------------------ */

static void fmt_ms(char *buf, size_t n, double v)
{
	if (v < 0)
		snprintf(buf, n, "-");
	else
		snprintf(buf, n, "%.2f", v);
}

static void print_row(const bench_result *r)
{
	char a[32], b[32], c[32], d[32], dr[32], bc[32], pc[32];
	fmt_ms(a, sizeof(a), r->dur_p50);
	fmt_ms(b, sizeof(b), r->dur_p99);
	fmt_ms(c, sizeof(c), r->ack_p50);
	fmt_ms(d, sizeof(d), r->ack_p99);
	if (r->durable_rate > 0)
		snprintf(dr, sizeof(dr), "%.0f", r->durable_rate);
	else
		snprintf(dr, sizeof(dr), "-");
	if (r->broker_cpu >= 0)
		snprintf(bc, sizeof(bc), "%.2f", r->broker_cpu);
	else
		snprintf(bc, sizeof(bc), "-");
	if (r->per_commit > 0)
		snprintf(pc, sizeof(pc), "%.1f", r->per_commit);
	else
		snprintf(pc, sizeof(pc), "-");
	printf("%-5d %-11s %9.0f %10s %8s %8s %8s %8s %7zu %6zu %6.2f %6.2f %6s %8.1f %8s%s%s\n",
	       r->round, r->mode, r->rate, dr, a, b, c, d, r->acked, r->failed, r->cpu_user,
	       r->cpu_sys, bc, (double)r->peak_rss_kib / 1024.0, pc, r->ok ? "" : "  ERROR: ",
	       r->ok ? "" : r->err);
}

static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

static void json_num(const char *name, double v, bool comma)
{
	printf("\"%s\":", name);
	if (v < 0)
		printf("null");
	else
		printf("%.3f", v);
	if (comma)
		putchar(',');
}

static void print_json_result(const bench_result *r)
{
	printf("{\"round\":%d,\"mode\":", r->round);
	json_str(r->mode);
	printf(",\"ok\":%s,\"count\":%zu,\"acked\":%zu,\"failed\":%zu,", r->ok ? "true" : "false",
	       r->count, r->acked, r->failed);
	json_num("secs", r->secs, true);
	json_num("msgs_per_s", r->rate, true);
	json_num("publish_secs", r->publish_secs, true);
	json_num("durable_msgs_per_s", r->durable_rate, true);
	json_num("durable_p50_ms", r->dur_p50, true);
	json_num("durable_p99_ms", r->dur_p99, true);
	json_num("ack_p50_ms", r->ack_p50, true);
	json_num("ack_p99_ms", r->ack_p99, true);
	json_num("cpu_user_s", r->cpu_user, true);
	json_num("cpu_sys_s", r->cpu_sys, true);
	json_num("broker_cpu_s", r->broker_cpu, true);
	json_num("msgs_per_commit", r->per_commit, true);
	json_num("commit_rate", r->commit_rate, true);
	printf("\"peak_rss_kib\":%ld,\"error\":", r->peak_rss_kib);
	json_str(r->err);
	putchar('}');
}

static int cmp_dbl(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The median over the good rounds of one mode of the double at `off` in
 * bench_result; -1 if no round has it (a negative value means n/a). */
static double median_field(const bench_result *res, int n, const char *mode, size_t off)
{
	double v[256];
	int k = 0;
	for (int i = 0; i < n && k < 256; i++) {
		double x;
		memcpy(&x, (const char *)&res[i] + off, sizeof(x));
		if (strcmp(res[i].mode, mode) == 0 && res[i].ok && x >= 0)
			v[k++] = x;
	}
	if (!k)
		return -1;
	qsort(v, (size_t)k, sizeof(double), cmp_dbl);
	return k % 2 ? v[k / 2] : (v[k / 2 - 1] + v[k / 2]) / 2;
}
#define MEDIAN_OF(res, n, mode, field) median_field(res, n, mode, offsetof(bench_result, field))

/* ------------------------------------------------------------------ */
/* main                                                                 */
/* ------------------------------------------------------------------ */

static void usage_text(FILE *f)
{
	fprintf(f,
	        "usage: ackbox-bench --transport URL [options]\n"
	        "  --transport URL     the broker, e.g. amqp://127.0.0.1:5672 (any transport of\n"
	        "                      this build; raw rounds need its folder's bench_raw.c)\n"
	        "  --count N           messages per round (default 100000; --smoke 2000)\n"
	        "  --size BYTES        payload size (default 256)\n"
	        "  --keys K            reliable mode: message i gets key \"k<i mod K>\" (default 0:\n"
	        "                      no key); with --set delivery.order=key, the cost of order\n"
	        "  --window W          in-flight window of raw and reliable (default: the\n"
	        "                      transport's); the hand-written mode has window 1\n"
	        "  --threads T         reliable mode: T threads calling ackbox_publish (default 1:\n"
	        "                      one thread calling ackbox_publish_batch in chunks of\n"
	        "                      min(W, 500))\n"
	        "  --rounds R          rounds of every mode, order rotating (default 3; --smoke 1)\n"
	        "  --rate R            offer R msgs/s in every mode (open loop: latencies count\n"
	        "                      from when a message was due, not when it could be sent);\n"
	        "                      reliable stores what is due in one batch call (with\n"
	        "                      --threads T, thread k publishes messages k, k+T, ...)\n"
	        "  --latency-file F    write the latency distributions (percentiles, ms, all\n"
	        "                      rounds of a mode merged) to F, for plot.sh --latency\n"
	        "  --set KEY=VALUE     passed to ackbox_conf_set (repeatable); a raw publisher may\n"
	        "                      read its own scheme's keys too (kafka.*)\n"
	        "  --store-dir DIR     where the SQLite store lives (default: a temporary directory,\n"
	        "                      removed at exit); files in DIR are kept after the run\n"
	        "  --store-only        broker unreachable: time only the publish calls (durable\n"
	        "                      msg/s, p50/p99 publish->durable, RSS); no raw mode\n"
	        "  --drain             open --store-dir's store (or --set store.url's) and time\n"
	        "                      until its backlog is acked\n"
	        "  --handwritten-count N   messages per hand-written round (default min(count,\n"
	        "                      10000); --smoke min(count, 200))\n"
	        "  --raw-only, --reliable-only, --handwritten-only   run one mode\n"
	        "  --no-handwritten    run raw and reliable only\n"
	        "  --wait-ack          reliable mode, one thread: each publish call waits for its\n"
	        "                      messages' reports before the next (with --window 1: one\n"
	        "                      message at a time, as raw and hand-written do)\n"
	        "  --broker-pid PID    also report the broker process's CPU time per round\n"
	        "  --pin-broker        with --broker-pid: run the bench on one CPU and every\n"
	        "                      thread of the broker on another (as if the broker had a\n"
	        "                      host of its own; restored at exit)\n"
	        "  --poll-sleep-us N   diagnostic: the report thread calls ackbox_poll(ab, 0) and\n"
	        "                      sleeps N us when nothing came (default: ackbox_poll(ab, 50))\n"
	        "  --max-seconds S     abort a round that takes longer (default 120)\n"
	        "  --allow-remote      allow brokers that are not on loopback\n"
	        "  --json              one JSON object instead of the table\n"
	        "  --smoke             small run; exit 0 only if every figure is complete and sane\n");
	fprintf(f, "raw publishers in this build:");
	for (size_t i = 0; bench_transports[i]; i++)
		fprintf(f, " %s", bench_transports[i]->scheme);
	fputc('\n', f);
	for (size_t i = 0; bench_transports[i]; i++)
		if (bench_transports[i]->url_help)
			fprintf(f, "  %s\n", bench_transports[i]->url_help);
}

/* url with the password of its user:password@ part shown as ***, into out. */
static void redacted(const char *url, char *out, size_t n)
{
	const char *auth = strstr(url, "://") ? strstr(url, "://") + 3 : url;
	const char *at = strchr(auth, '@'), *colon = strchr(auth, ':');
	if (at && colon && colon < at && !memchr(auth, '/', (size_t)(at - auth)))
		snprintf(out, n, "%.*s***%s", (int)(colon + 1 - url), url, at);
	else
		snprintf(out, n, "%s", url);
}

/* o->shown: o->url without its password, for everything the bench prints. */
static void url_shown(bench_opts *o)
{
	redacted(o->url, o->shown, sizeof(o->shown));
}

static int parse_size(const char *s, size_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || end == s)
		return -1;
	*out = (size_t)v;
	return 0;
}

static bool in_range(size_t n, unsigned long long lo, unsigned long long hi)
{
	return (unsigned long long)n >= lo && (unsigned long long)n <= hi;
}

static int parse_args(int argc, char **argv, bench_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->count = 100000;
	o->size = 256;
	o->threads = 1;
	o->rounds = 3;
	o->max_seconds = 120;
	int only = 0; /* --raw-only, --reliable-only, --handwritten-only */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		size_t n;
#define NEED()                                                                                     \
	do {                                                                                       \
		if (!v) {                                                                          \
			fprintf(stderr, "ackbox-bench: %s needs a value\n", a);                     \
			return -1;                                                                 \
		}                                                                                  \
		i++;                                                                               \
	} while (0)
#define NUM(dst, lo, hi)                                                                           \
	do {                                                                                       \
		NEED();                                                                            \
		if (parse_size(v, &n) || !in_range(n, lo, hi)) {                                   \
			fprintf(stderr, "ackbox-bench: %s %s: expected %llu..%llu\n", a, v,          \
			        (unsigned long long)(lo), (unsigned long long)(hi));                 \
			return -1;                                                                 \
		}                                                                                  \
		dst = n;                                                                           \
	} while (0)
		if (strcmp(a, "--transport") == 0) {
			NEED();
			o->transport = v;
		} else if (strcmp(a, "--count") == 0) {
			NUM(o->count, 1, 100000000);
			o->count_given = true;
		} else if (strcmp(a, "--keys") == 0) {
			NUM(o->keys, 0, 100000000);
		} else if (strcmp(a, "--size") == 0) {
			NUM(o->size, 0, 1048576);
		} else if (strcmp(a, "--window") == 0) {
			NUM(o->window, 1, 1000000);
		} else if (strcmp(a, "--threads") == 0) {
			NUM(o->threads, 1, 256);
		} else if (strcmp(a, "--rounds") == 0) {
			NUM(o->rounds, 1, 100);
			o->rounds_given = true;
		} else if (strcmp(a, "--max-seconds") == 0) {
			NUM(o->max_seconds, 1, 86400);
		} else if (strcmp(a, "--broker-pid") == 0) {
			NUM(o->broker_pid, 1, 1 << 30);
		} else if (strcmp(a, "--pin-broker") == 0) {
			o->pin_broker = true;
		} else if (strcmp(a, "--rate") == 0) {
			NUM(o->rate, 1, 100000000);
		} else if (strcmp(a, "--latency-file") == 0) {
			NEED();
			o->latency_file = v;
		} else if (strcmp(a, "--poll-sleep-us") == 0) {
			NUM(o->poll_sleep_us, 0, 1000000);
		} else if (strcmp(a, "--set") == 0) {
			NEED();
			if (!strchr(v, '=') || o->nsets >= BENCH_MAX_SETS) {
				fprintf(stderr, "ackbox-bench: --set %s: expected KEY=VALUE\n", v);
				return -1;
			}
			o->sets[o->nsets++] = v;
		} else if (strcmp(a, "--store-dir") == 0) {
			NEED();
			o->store_dir = v;
		} else if (strcmp(a, "--json") == 0) {
			o->json = true;
		} else if (strcmp(a, "--smoke") == 0) {
			o->smoke = true;
		} else if (strcmp(a, "--store-only") == 0) {
			o->store_only = true;
		} else if (strcmp(a, "--drain") == 0) {
			o->drain = true;
		} else if (strcmp(a, "--raw-only") == 0) {
			o->no_reliable = o->no_handwritten = true;
			only++;
		} else if (strcmp(a, "--reliable-only") == 0) {
			o->no_raw = o->no_handwritten = true;
			only++;
		} else if (strcmp(a, "--handwritten-only") == 0) {
			o->no_raw = o->no_reliable = true;
			only++;
		} else if (strcmp(a, "--no-handwritten") == 0) {
			o->no_handwritten = true;
		} else if (strcmp(a, "--wait-ack") == 0) {
			o->wait_ack = true;
		} else if (strcmp(a, "--handwritten-count") == 0) {
			NUM(o->handwritten_count, 1, 100000000);
		} else if (strcmp(a, "--allow-remote") == 0) {
			o->allow_remote = true;
		} else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage_text(stdout);
			exit(0);
		} else {
			fprintf(stderr, "ackbox-bench: unknown option %s\n", a);
			usage_text(stderr);
			return -1;
		}
#undef NUM
#undef NEED
	}
	if (!o->transport) {
		usage_text(stderr);
		return -1;
	}
	if (o->pin_broker && (!o->broker_pid || o->broker_pid == (int)getpid())) {
		fprintf(stderr, "ackbox-bench: --pin-broker needs --broker-pid of another process\n");
		return -1;
	}
	if (o->drain && !o->store_dir && !store_url_set(o)) {
		fprintf(stderr, "ackbox-bench: --drain needs --store-dir (a SQLite store) or "
		                "--set store.url=URL\n");
		return -1;
	}
	if (o->drain) {
		/* the first round empties the store: there is nothing for a second */
		if (o->rounds_given && o->rounds > 1) {
			fprintf(stderr, "ackbox-bench: --drain runs one round (it empties the store)\n");
			return -1;
		}
		o->rounds = 1;
	}
	if (o->smoke) {
		if (!o->count_given)
			o->count = 2000;
		if (!o->rounds_given)
			o->rounds = 1;
		if (o->max_seconds > 25)
			o->max_seconds = 25;
	}
	/* the hand-written mode is far slower (window 1, two commits a message):
	 * fewer messages, unless told */
	if (!o->handwritten_count)
		o->handwritten_count = o->count < (o->smoke ? 200 : 10000) ? o->count
		                       : o->smoke                          ? 200
		                                                           : 10000;
	if (o->wait_ack && (o->threads > 1 || o->store_only || o->drain)) {
		fprintf(stderr, "ackbox-bench: --wait-ack is for the reliable mode with one thread and a "
		                "broker (not --threads, --store-only or --drain)\n");
		return -1;
	}
	if (o->store_only || o->drain) {
		if (o->no_reliable) {
			fprintf(stderr, "ackbox-bench: --store-only and --drain run the reliable mode "
			                "only\n");
			return -1;
		}
		o->no_raw = o->no_handwritten = true;
	}
	if (only > 1) {
		fprintf(stderr, "ackbox-bench: --raw-only, --reliable-only and --handwritten-only "
		                "exclude each other\n");
		return -1;
	}
	const char *sep = strstr(o->transport, "://");
	if (!sep || sep - o->transport >= (long)sizeof(o->scheme)) {
		fprintf(stderr, "ackbox-bench: --transport %s: expected scheme://...\n", o->transport);
		return -1;
	}
	snprintf(o->scheme, sizeof(o->scheme), "%.*s", (int)(sep - o->transport), o->transport);
	snprintf(o->url, sizeof(o->url), "%s", o->transport);
	return 0;
}

int main(int argc, char **argv)
{
	bench_opts o;
	const bench_transport *bt;
	char tmpl[] = "/tmp/ackbox-bench-XXXXXX";
	const char *dir;
	bench_result *res;
	int nres = 0, maxres;
	bool ok = true;
	lat lats[4] = {{0}}; /* raw ack, reliable ack, reliable durable, handwritten ack */

	if (parse_args(argc, argv, &o) != 0)
		return 2;
	if (o.pin_broker && pin_broker(o.broker_pid, o.pinned, sizeof(o.pinned)) != 0)
		return 1;
	bt = transport_of(&o);
	if (bt && bt->setup && bt->setup(&o) != 0)
		return 1;
	url_shown(&o); /* after setup (kafka://mock becomes the mock's bootstraps) */
	if (!o.allow_remote && !url_is_loopback(o.url)) {
		fprintf(stderr, "ackbox-bench: %s is not a loopback address (--allow-remote)\n",
		        o.shown);
		return 2;
	}
	if (o.store_dir) {
		mkdir(o.store_dir, 0755);
		dir = o.store_dir;
	} else if (!(dir = mkdtemp(tmpl))) {
		fprintf(stderr, "ackbox-bench: mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	maxres = o.rounds * 3;
	res = calloc((size_t)maxres, sizeof(*res));
	if (!res)
		return 1;

	if (!o.json && o.drain) {
		char store[1200];
		if (store_url_set(&o))
			redacted(store_url_set(&o), store, sizeof(store));
		else
			snprintf(store, sizeof(store), "%s/bench.db", dir);
		printf("ackbox-bench %s: %s, draining the backlog of %s\n", ackbox_version(), o.shown,
		       store);
	} else if (!o.json) {
		printf("ackbox-bench %s: %s, %zu msgs x %zu B, window %d%s, %d thread(s)%s, %d "
		       "round(s)",
		       ackbox_version(), o.shown, o.count, o.size, o.window,
		       o.window ? "" : " (transport default)", o.threads,
		       o.threads > 1 ? " (ackbox_publish)"
		       : o.wait_ack  ? " (ackbox_publish_batch, waiting for each call's acks)"
		                     : " (ackbox_publish_batch)",
		       o.rounds);
		if (o.keys)
			printf(", %zu key(s)", o.keys);
		if (o.pinned[0])
			printf("; pinned: %s", o.pinned);
		if (!o.no_handwritten)
			printf("; handwritten: %zu msgs, window 1", o.handwritten_count);
		putchar('\n');
	}
	if (!o.json) {
		printf("%-5s %-11s %9s %10s %8s %8s %8s %8s %7s %6s %6s %6s %6s %8s %8s\n", "round",
		       "mode", "msgs/s", "durable/s", "dur p50", "dur p99", "ack p50", "ack p99",
		       "acked", "failed", "usr s", "sys s", "brk s", "RSS MiB", "msg/sync");
		fflush(stdout);
	}
	for (int round = 1; round <= o.rounds; round++) {
		/* rotate the order (raw, reliable, handwritten; then reliable,
		 * handwritten, raw; ...) so no mode always runs on a warmer broker;
		 * with two modes they alternate */
		for (int k = 0; k < 3; k++) {
			int mode = (k + round - 1) % 3; /* 0 raw, 1 reliable, 2 handwritten */
			bool raw = mode == 0, hand = mode == 2;
			if ((raw && o.no_raw) || (mode == 1 && o.no_reliable) ||
			    (hand && o.no_handwritten))
				continue;
			bench_result *r = &res[nres++];
			bench_times t;
			usage u;
			int64_t deadline = bench_now_ns() + (int64_t)o.max_seconds * 1000000000;
			r->round = round;
			r->ok = true;
			r->count = hand ? o.handwritten_count : o.count;
			r->mode = raw    ? "raw"
			          : hand ? "handwritten"
			          : o.drain      ? "drain"
			          : o.store_only ? "store-only"
			                         : "reliable";
			r->dur_p50 = r->dur_p99 = r->ack_p50 = r->ack_p99 = -1;
			r->per_commit = r->commit_rate = -1;
			if (times_init(&t, r->count) != 0) {
				bench_fail(r, "out of memory");
				times_fini(&t);
				continue;
			}
			usage_begin(&u, o.broker_pid);
			if (raw)
				run_raw(&o, &t, r, deadline);
			else if (hand)
				run_handwritten(&o, dir, &t, r, deadline);
			else if (o.drain)
				run_drain(&o, dir, r, deadline);
			else
				run_reliable(&o, dir, &t, r, deadline, o.store_only);
			usage_end(&u, o.broker_pid, r);
			if (!o.drain)
				finish_times(r, &t);
			if (o.latency_file && !o.drain &&
			    (raw    ? lat_add(&lats[0], t.pub, t.ack, t.n)
			     : hand ? lat_add(&lats[3], t.pub, t.ack, t.n)
			            : lat_add(&lats[1], t.pub, t.ack, t.n) ||
			                  lat_add(&lats[2], t.pub, t.dur, t.n)))
				bench_fail(r, "out of memory for --latency-file");
			if (o.store_only) {
				r->secs = r->publish_secs;
				r->rate = r->durable_rate;
			}
			times_fini(&t);
			if (!o.json) {
				print_row(r);
				fflush(stdout);
			}
		}
	}

	/* summary and sanity */
	double raw = MEDIAN_OF(res, nres, "raw", rate);
	const char *rmode = o.drain ? "drain" : o.store_only ? "store-only" : "reliable";
	double rel = MEDIAN_OF(res, nres, rmode, rate);
	double durable = MEDIAN_OF(res, nres, rmode, durable_rate);
	double hand = MEDIAN_OF(res, nres, "handwritten", rate);
	double per_commit = MEDIAN_OF(res, nres, rmode, per_commit);
	double commit_rate = MEDIAN_OF(res, nres, "handwritten", commit_rate);
	/* Window 1 (a target of docs/performance.md): reliable against the lower
	 * of raw and the store's own one-message commit rate, both of this run. */
	double w1_base = raw > 0 && commit_rate > 0 ? (raw < commit_rate ? raw : commit_rate) : -1;
	double w1 = o.window == 1 && o.wait_ack && w1_base > 0 && rel > 0 ? rel / w1_base : -1;
	/* --rate (a target too): ackbox p50 <= raw p50 + durable p50 + 0.3 ms and
	 * p99 <= 1.5 x raw p99 + durable p99, with the medians of the rounds. */
	double raw50 = MEDIAN_OF(res, nres, "raw", ack_p50), raw99 = MEDIAN_OF(res, nres, "raw", ack_p99);
	double rel50 = MEDIAN_OF(res, nres, rmode, ack_p50), rel99 = MEDIAN_OF(res, nres, rmode, ack_p99);
	double dur50 = MEDIAN_OF(res, nres, rmode, dur_p50), dur99 = MEDIAN_OF(res, nres, rmode, dur_p99);
	bool lat_known = o.rate && raw50 >= 0 && rel50 >= 0 && dur50 >= 0 && raw99 >= 0 &&
	                 rel99 >= 0 && dur99 >= 0;
	double lim50 = raw50 + dur50 + 0.3, lim99 = 1.5 * raw99 + dur99;
	struct rusage ru;
	size_t lat_want[4] = {0, 0, 0, 0};
	getrusage(RUSAGE_SELF, &ru);
	for (int i = 0; i < nres; i++) {
		const bench_result *r = &res[i];
		bool sane = r->ok && r->rate > 0;
		if (strcmp(r->mode, "store-only") == 0)
			sane = sane && r->durable_rate > 0 && r->dur_p99 >= 0;
		else if (strcmp(r->mode, "drain") == 0)
			sane = sane && r->acked == r->count && r->failed == 0;
		else
			sane = sane && r->acked == r->count && r->failed == 0 && r->ack_p99 >= 0;
		if (strcmp(r->mode, "reliable") == 0 || strcmp(r->mode, "handwritten") == 0)
			sane = sane && r->durable_rate > 0 && r->dur_p99 >= 0;
		/* --rate paces: no mode may run faster than it was offered */
		if (o.rate && r->rate > 1.1 * (double)o.rate) {
			fprintf(stderr, "ackbox-bench: round %d %s ran at %.0f msg/s, above --rate %zu\n",
			        r->round, r->mode, r->rate, o.rate);
			sane = false;
		}
		if (!sane)
			ok = false;
		if (strcmp(r->mode, "raw") == 0) {
			lat_want[0] += r->acked;
		} else if (strcmp(r->mode, "handwritten") == 0) {
			lat_want[3] += r->acked;
		} else if (strcmp(r->mode, "drain") != 0) {
			lat_want[1] += r->acked;
			lat_want[2] += r->count;
		}
	}
	/* --latency-file: a sample for every message acked (and, reliable, stored) */
	static const char *const lat_names[4] = {"raw publish->confirm", "reliable publish->ack",
	                                         "reliable publish->durable",
	                                         "handwritten publish->confirm"};
	for (int k = 0; o.latency_file && k < 4; k++) {
		if (lats[k].n != lat_want[k]) {
			fprintf(stderr, "ackbox-bench: --latency-file: %zu %s samples, expected %zu\n",
			        lats[k].n, lat_names[k], lat_want[k]);
			ok = false;
		}
	}
	if (nres == 0)
		ok = false;
	/* the targets' figures must come out when their rounds ran */
	if (o.window == 1 && o.wait_ack && !o.no_raw && !o.no_handwritten && !o.no_reliable &&
	    w1 <= 0) {
		fprintf(stderr, "ackbox-bench: --window 1 --wait-ack gave no window-1 ratio\n");
		ok = false;
	}
	if (o.rate && !o.no_raw && !o.no_reliable && !o.store_only && !lat_known) {
		fprintf(stderr, "ackbox-bench: --rate gave no latency target figures\n");
		ok = false;
	}
	if (o.latency_file && lat_write(&o, lats, 4) != 0)
		ok = false;
	for (int k = 0; k < 4; k++)
		free(lats[k].v);
	if (o.json) {
		printf("{\"version\":");
		json_str(ackbox_version());
		printf(",\"transport\":");
		json_str(o.shown);
		printf(",\"scheme\":");
		json_str(o.scheme);
		printf(",\"pinned\":");
		json_str(o.pinned);
		printf(",\"count\":%zu,\"size\":%zu,\"window\":%d,\"threads\":%d,\"rounds\":%d,"
		       "\"keys\":%zu,\"handwritten_count\":%zu,\"results\":[",
		       o.count, o.size, o.window, o.threads, o.rounds, o.keys,
		       o.no_handwritten ? (size_t)0 : o.handwritten_count);
		for (int i = 0; i < nres; i++) {
			if (i)
				putchar(',');
			print_json_result(&res[i]);
		}
		printf("],\"median\":{");
		json_num("raw_msgs_per_s", raw, true);
		json_num("reliable_msgs_per_s", rel, true);
		json_num("reliable_durable_msgs_per_s", durable, true);
		json_num("ratio", raw > 0 && rel > 0 ? rel / raw : -1, true);
		json_num("handwritten_msgs_per_s", hand, true);
		json_num("reliable_vs_handwritten", hand > 0 && rel > 0 ? rel / hand : -1, true);
		json_num("msgs_per_commit", per_commit, true);
		json_num("store_commit_rate", commit_rate, true);
		json_num("window1_ratio", w1, true);
		json_num("latency_p50_ms", lat_known ? rel50 : -1, true);
		json_num("latency_p50_limit_ms", lat_known ? lim50 : -1, true);
		json_num("latency_p99_ms", lat_known ? rel99 : -1, true);
		json_num("latency_p99_limit_ms", lat_known ? lim99 : -1, false);
		printf("},\"max_rss_kib\":%ld,\"ok\":%s}\n", ru.ru_maxrss, ok ? "true" : "false");
	} else {
		printf("median: raw %.0f msg/s, %s %.0f msg/s (durable %.0f msg/s)", raw > 0 ? raw : 0,
		       rmode, rel > 0 ? rel : 0, durable > 0 ? durable : 0);
		if (raw > 0 && rel > 0)
			printf(", ratio %.2f", rel / raw);
		if (hand > 0)
			printf("; handwritten %.0f msg/s", hand);
		if (hand > 0 && rel > 0)
			printf(" (reliable %.1fx)", rel / hand);
		if (per_commit > 0)
			printf("; %.1f msgs per store commit (%.3f fsyncs per msg)", per_commit,
			       1 / per_commit);
		printf("; process peak RSS %.1f MiB; %s\n", (double)ru.ru_maxrss / 1024.0,
		       ok ? "ok" : "FAILED");
		if (commit_rate > 0)
			printf("store one-message commits (hand-written INSERTs): %.0f/s\n", commit_rate);
		if (w1 > 0)
			printf("window 1: reliable / min(raw, store one-message commits) = %.2f "
			       "(target 0.9: %s)\n",
			       w1, w1 >= 0.9 ? "met" : "not met");
		if (lat_known)
			printf("latency at %zu msg/s: ackbox p50 %.2f ms vs raw p50 %.2f + durable p50 "
			       "%.2f + 0.3 = %.2f (%s); p99 %.2f vs 1.5 x raw p99 %.2f + durable p99 "
			       "%.2f = %.2f (%s)\n",
			       o.rate, rel50, raw50, dur50, lim50, rel50 <= lim50 ? "met" : "not met",
			       rel99, raw99, dur99, lim99, rel99 <= lim99 ? "met" : "not met");
	}
	if (!o.store_dir) {
		db_remove(dir, "bench.db");
		rmdir(dir);
	}
	if (bt && bt->setup && bt->teardown)
		bt->teardown();
	free(res);
	if (o.smoke && !ok)
		fprintf(stderr, "ackbox-bench: smoke check failed\n");
	return ok ? 0 : 1;
}
