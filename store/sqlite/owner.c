/*
 * owner.c - which relay may send a row of the SQLite store. Every relay on
 * the file registers in ackbox_owner; the rows it inserts or claims carry
 * its number in the lease word (sqlite_int.h), and no other relay claims
 * them while its process lives. A process that is gone (killed, crashed)
 * is noticed by the next relay that opens the file, or by a running one
 * within about a second, and unregistered: its rows, whose owner nobody
 * registers any more (AUTOINCREMENT never reuses a number), are anyone's
 * and due at once. Crash recovery stays prompt, and two live publishers on
 * one file never take each other's messages. No row is rewritten to change
 * hands: a backlog of large packed batches costs nothing at a close.
 *
 * A process is named by its pid, its start time (field 22 of
 * /proc/PID/stat, so a reused pid is another process), the kernel's boot
 * id (a reboot ends every process) and its pid namespace. One in another
 * pid namespace (another container on a shared volume) cannot be checked
 * from here: its rows are taken only once their lease has run out, as
 * before owners existed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sqlite_int.h"

#define OWNER_CHECK_MS 1000 /* how often a running relay looks at the others */

typedef struct proc_name {
	int64_t pid, start;
	char boot[64], pidns[64];
} proc_name;

enum { OWNER_ALIVE, OWNER_GONE, OWNER_UNKNOWN };

/*
 * Owners of this process whose handle closed without unregistering (the
 * file was locked): this process still runs, so only it can tell they are
 * gone. Kept for the life of the process; a few bytes per failed close.
 */
typedef struct stale {
	struct stale *next;
	int64_t owner;
	char path[];
} stale;
static pthread_mutex_t stale_mtx = PTHREAD_MUTEX_INITIALIZER;
static stale *stale_list;

static int is_stale(const sq_ctx *c, int64_t owner)
{
	int found = 0;
	pthread_mutex_lock(&stale_mtx);
	for (const stale *st = stale_list; st && !found; st = st->next)
		found = st->owner == owner && strcmp(st->path, c->path) == 0;
	pthread_mutex_unlock(&stale_mtx);
	return found;
}

/* The first line of a small file, without its newline; "" if unreadable. */
static void read_first_line(const char *path, char *out, size_t n)
{
	FILE *f = fopen(path, "re");
	out[0] = '\0';
	if (!f)
		return;
	if (!fgets(out, (int)n, f))
		out[0] = '\0';
	out[strcspn(out, "\n")] = '\0';
	fclose(f);
}

/*
 * The start time of process pid (clock ticks after boot). Returns 0, or -1
 * if there is no such process or it is a zombie (it has ended; its parent
 * has not reaped it yet).
 */
static int proc_start(int64_t pid, int64_t *start)
{
	char path[64], buf[1024], *p;
	char state;
	unsigned long long v = 0;
	int field;
	snprintf(path, sizeof(path), "/proc/%lld/stat", (long long)pid);
	read_first_line(path, buf, sizeof(buf));
	/* "pid (comm) state ..." where comm may hold spaces and parentheses */
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 1, " %c", &state) != 1 || state == 'Z' || state == 'X')
		return -1;
	/* after ')': field 3 (state) ... field 22 (starttime) */
	p++;
	for (field = 3; field < 22 && p; field++)
		p = strchr(p + 1, ' ');
	if (!p || sscanf(p, " %llu", &v) != 1)
		return -1;
	*start = (int64_t)v;
	return 0;
}

static void self_name(proc_name *me)
{
	char ns[64];
	ssize_t n;
	memset(me, 0, sizeof(*me));
	me->pid = (int64_t)getpid();
	if (proc_start(me->pid, &me->start) != 0)
		me->start = -1;
	read_first_line("/proc/sys/kernel/random/boot_id", me->boot, sizeof(me->boot));
	n = readlink("/proc/self/ns/pid", ns, sizeof(ns) - 1);
	if (n > 0) {
		ns[n] = '\0';
		snprintf(me->pidns, sizeof(me->pidns), "%s", ns);
	}
}

/* Whether the registered process o still runs, as far as this one can tell. */
static int owner_state(const proc_name *me, const proc_name *o)
{
	int64_t start;
	if (!me->boot[0] || !o->boot[0] || !me->pidns[0] || !o->pidns[0] || o->start < 0)
		return OWNER_UNKNOWN; /* no /proc here or there */
	if (strcmp(me->boot, o->boot) != 0)
		return OWNER_GONE; /* registered before the last reboot */
	if (strcmp(me->pidns, o->pidns) != 0)
		return OWNER_UNKNOWN;
	if (proc_start(o->pid, &start) != 0 || start != o->start)
		return OWNER_GONE;
	return OWNER_ALIVE;
}

/* Runs one statement with int64 parameters; returns SQLITE_OK or an error. */
static int exec_i64(sq_ctx *c, const char *sql, const int64_t *args, int nargs)
{
	sqlite3_stmt *s;
	int rc = sqlite3_prepare_v2(c->db, sql, -1, &s, NULL);
	if (rc != SQLITE_OK)
		return rc;
	for (int i = 0; i < nargs; i++)
		sqlite3_bind_int64(s, i + 1, args[i]);
	rc = sqlite3_step(s);
	sqlite3_finalize(s);
	return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

int sq_owner_register(sq_ctx *c, int64_t now_ms, char *errstr, size_t errstr_size)
{
	proc_name me;
	sqlite3_stmt *s;
	int rc;
	if (c->owner || !c->has_owners)
		return 0;
	self_name(&me);
	rc = sqlite3_prepare_v2(c->db,
	                        "INSERT INTO ackbox_owner(pid, start, boot, pidns, since_ms)"
	                        " VALUES(?1, ?2, ?3, ?4, ?5)",
	                        -1, &s, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_bind_int64(s, 1, me.pid);
		sqlite3_bind_int64(s, 2, me.start);
		sqlite3_bind_text(s, 3, me.boot, -1, SQLITE_STATIC);
		sqlite3_bind_text(s, 4, me.pidns, -1, SQLITE_STATIC);
		sqlite3_bind_int64(s, 5, now_ms);
		rc = sqlite3_step(s);
		sqlite3_finalize(s);
		rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
	}
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "registering this relay", errstr, errstr_size);
	c->owner = sqlite3_last_insert_rowid(c->db);
	return 0;
}

/*
 * Rows and batches whose owner is gone (not registered, or nobody's) are
 * anyone's already: claims take what no other registered owner holds.
 * This makes them due now where they were leased into the future: those of
 * the owners just found gone, and at open (crash recovery) those of nobody
 * and this relay's own too. Only leased rows are written, as recovery
 * always did: a large backlog of due rows and batches is not rewritten.
 */
static int adopt(sq_ctx *c, int64_t now_ms, int at_open)
{
	int64_t a[3] = {now_ms, at_open, c->owner};
	int rc = exec_i64(c,
	                  "UPDATE ackbox_outbox SET due_ms = ?1 WHERE state < 2 AND due_ms > ?1"
	                  " AND (lease >> 32) NOT IN (SELECT owner FROM ackbox_owner WHERE owner <> ?3)"
	                  " AND (?2 OR (lease >> 32) NOT IN (0, ?3))",
	                  a, 3);
	if (rc == SQLITE_OK)
		rc = exec_i64(c,
		              "UPDATE ackbox_batch SET due_ms = ?1 WHERE due_ms > ?1"
		              " AND (lease >> 32) NOT IN (SELECT owner FROM ackbox_owner WHERE owner <> ?3)"
		              " AND (?2 OR (lease >> 32) NOT IN (0, ?3))",
		              a, 3);
	return rc;
}

/* An owner this process cannot check: its rows are claimed once due (its
 * lease ran out), as before owners existed. Noted for this connection only. */
static int foreign(sq_ctx *c, int64_t owner)
{
	int64_t a[1] = {owner};
	return exec_i64(c, "INSERT OR IGNORE INTO temp.ackbox_foreign(owner) VALUES(?1)", a, 1);
}

int sq_owner_check(sq_ctx *c, int64_t now_ms, int at_open, char *errstr, size_t errstr_size)
{
	proc_name me, *others = NULL;
	int64_t *ids = NULL;
	size_t n = 0, cap = 0;
	sqlite3_stmt *s;
	int rc, gone = 0;

	c->owners_checked_ms = now_ms;
	if (!c->has_owners) {
		/* an older file nobody upgraded: every leased row, as before owners */
		int64_t a[1] = {now_ms};
		if (!at_open)
			return 0;
		rc = exec_i64(c, "UPDATE ackbox_outbox SET due_ms = ?1 WHERE state < 2 AND due_ms > ?1",
		              a, 1);
		if (rc == SQLITE_OK)
			rc = exec_i64(c, "UPDATE ackbox_batch SET due_ms = ?1 WHERE due_ms > ?1", a, 1);
		return rc == SQLITE_OK ? 0
		                       : sq_error(c->db, rc, c->path, "recovery", errstr, errstr_size);
	}
	self_name(&me);
	rc = sqlite3_prepare_v2(c->db,
	                        "SELECT owner, pid, start, boot, pidns FROM ackbox_owner"
	                        " WHERE owner <> ?1",
	                        -1, &s, NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "reading the relays", errstr, errstr_size);
	sqlite3_bind_int64(s, 1, c->owner);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 8;
			proc_name *no = realloc(others, ncap * sizeof(*no));
			int64_t *ni = no ? realloc(ids, ncap * sizeof(*ni)) : NULL;
			if (no)
				others = no;
			if (ni)
				ids = ni;
			if (!no || !ni) {
				rc = SQLITE_NOMEM;
				break;
			}
			cap = ncap;
		}
		ids[n] = sqlite3_column_int64(s, 0);
		others[n].pid = sqlite3_column_int64(s, 1);
		others[n].start = sqlite3_column_int64(s, 2);
		snprintf(others[n].boot, sizeof(others[n].boot), "%s",
		         (const char *)sqlite3_column_text(s, 3) ? (const char *)sqlite3_column_text(s, 3)
		                                                 : "");
		snprintf(others[n].pidns, sizeof(others[n].pidns), "%s",
		         (const char *)sqlite3_column_text(s, 4) ? (const char *)sqlite3_column_text(s, 4)
		                                                 : "");
		n++;
	}
	sqlite3_finalize(s);
	rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
	for (size_t i = 0; i < n && rc == SQLITE_OK; i++) {
		int st = is_stale(c, ids[i]) ? OWNER_GONE : owner_state(&me, &others[i]);
		if (st == OWNER_GONE) {
			int64_t a[1] = {ids[i]};
			rc = exec_i64(c, "DELETE FROM ackbox_owner WHERE owner = ?1", a, 1);
			gone++;
		} else if (st == OWNER_UNKNOWN) {
			rc = foreign(c, ids[i]);
		}
	}
	free(others);
	free(ids);
	if (rc == SQLITE_OK && (gone || at_open))
		rc = adopt(c, now_ms, at_open);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path,
		                at_open ? "recovery" : "taking the rows of a relay that is gone", errstr,
		                errstr_size);
	if (gone && c->conf)
		ackbox_store_log(c->conf, ACKBOX_LOG_INFO, "sqlite",
		                 "store '%s': %d relay process(es) that used it are gone; their "
		                 "messages are sent by the others now",
		                 c->path, gone);
	return 0;
}

int sq_owner_due_check(sq_ctx *c, int64_t now_ms)
{
	return c->has_owners && now_ms - c->owners_checked_ms >= OWNER_CHECK_MS;
}

int sq_owner_unregister(sq_ctx *c)
{
	int64_t a[1] = {c->owner};
	int rc;
	if (!c->owner)
		return SQLITE_OK;
	/* its rows keep their lease word: of an owner nobody registers any more
	 * (ids are never reused), they are anyone's, due as they are */
	rc = exec_i64(c, "DELETE FROM ackbox_owner WHERE owner = ?1", a, 1);
	if (rc == SQLITE_OK)
		c->owner = 0;
	return rc;
}

void sq_owner_stale(sq_ctx *c)
{
	stale *st;
	if (!c->owner)
		return;
	st = malloc(sizeof(*st) + strlen(c->path) + 1);
	if (st) {
		st->owner = c->owner;
		strcpy(st->path, c->path);
		pthread_mutex_lock(&stale_mtx);
		st->next = stale_list;
		stale_list = st;
		pthread_mutex_unlock(&stale_mtx);
	}
	c->owner = 0;
}
