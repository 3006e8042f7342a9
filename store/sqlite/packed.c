/*
 * packed.c - packed batches for the SQLite store.
 *
 * A publish batch is written as ONE row of ackbox_batch holding every
 * message, instead of a row per message: one B-tree insert instead of
 * three per message, and no delete per ack. A relay takes a whole batch at
 * once: the publisher's own relay when it got the messages in memory (the
 * row is leased to it), any relay's claim when the row is due. The members
 * a relay holds are in an in-memory map (id -> batch); their acks are
 * counted there, and the row is deleted when its last member is final. A
 * member that needs a state of its own (retry, fail, release) moves out
 * into an ackbox_outbox row, noted in ackbox_batch_out so that it is never
 * handed out again.
 *
 * Like a row, a batch row carries a lease: every claim takes a new one and
 * a holder whose lease ran out (another relay has the batch now) neither
 * deletes the row nor moves members out. A batch whose holder died is
 * claimed again when its lease runs out; members acked only in the dead
 * holder's memory are sent again: duplicates, never a loss. Only the
 * holder's memory knows which members are acked, so another process's
 * counts see them as pending until the row goes.
 *
 * Damaged bytes (a blob that does not parse from some member on): a claim
 * fails the member where the damage starts, with what is left of it, and
 * notes it and every member after it out (see quarantine()); the other
 * walks stop there. The member format is in pack_codec.h.
 *
 * An operator's override (force: ackbox fail, ackbox purge --id) takes a
 * member out whoever holds the batch, noted in ackbox_batch_out like a
 * move: FAIL as a FAILED row whose lease is above the batch's, DELETE as
 * the note alone. A holder that later moves the member out finds the note
 * and writes nothing; its ack of it counts in its memory only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pack_codec.h"
#include "sqlite_int.h"

#define PACK_MIN 4                 /* fewer messages are written as rows */
#define PACK_MAX_BYTES (16u << 20) /* larger batches too: one blob stays modest */

struct sq_batch {
	sq_batch *prev, *next;
	int64_t bseq;
	int64_t lease;  /* the row's lease when this process took the batch */
	uint32_t n;     /* members */
	uint32_t live;  /* members not yet acked or moved out */
	uint32_t acked; /* members acked in memory (the row still counts them) */
	uint8_t gone[]; /* a bit per member: acked or moved out */
};

static const char *const pk_sql[PK_COUNT] = {
    [PK_INSERT] = "INSERT INTO ackbox_batch(due_ms, created_ms, n, data, lease)"
                  " VALUES(?1, ?2, ?3, ?4, ?5)",
    [PK_DELETE] = "DELETE FROM ackbox_batch WHERE bseq = ?1 AND lease = ?2",
    [PK_DELETE_OUT] = "DELETE FROM ackbox_batch_out WHERE bseq = ?1",
    [PK_DATA] = "SELECT data, due_ms FROM ackbox_batch WHERE bseq = ?1 AND lease = ?2",
    [PK_OUT_ADD] = "INSERT OR IGNORE INTO ackbox_batch_out(bseq, idx) VALUES(?1, ?2)",
    [PK_OUT_OF] = "SELECT idx FROM ackbox_batch_out WHERE bseq = ?1",
    /* OR IGNORE: a member that moved out before keeps its own row */
    [PK_ROW_ADD] = "INSERT OR IGNORE INTO ackbox_outbox(id, state, attempts, due_ms, created_ms,"
                   " updated_ms, topic, msg_key, content_type, headers, payload, last_error,"
                   " last_code, lease" SQ_PLEN_COL ")"
                   " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    /* not another registered relay's (sqlite_int.h) */
    [PK_DUE] = "SELECT bseq, n, due_ms, lease FROM ackbox_batch WHERE due_ms <= ?1"
               " AND " SQ_NOT_HELD " ORDER BY due_ms LIMIT ?2",
    [PK_TAKE] = "UPDATE ackbox_batch SET due_ms = ?1, lease = ?3 WHERE bseq = ?2",
    [PK_NEXT] = "SELECT bseq, n, data, due_ms, lease FROM ackbox_batch WHERE bseq > ?1"
                " ORDER BY bseq LIMIT 1",
    /* an operator's override: whatever the lease */
    [PK_DELETE_ANY] = "DELETE FROM ackbox_batch WHERE bseq = ?1",
    [PK_FENCE] = "UPDATE ackbox_outbox SET lease = ?1 WHERE id = ?2",
};

/* The id map is ackbox/idmap.h's: a member's id -> (its sq_batch, its index). */
#define map_find(c, id) ackbox_idmap_find(&(c)->map, (id))
#define map_reserve(c, more) ackbox_idmap_reserve(&(c)->map, (more))
#define map_put(c, id, b, idx) ackbox_idmap_put(&(c)->map, (id), (b), (idx))
#define map_del(c, s) ackbox_idmap_del(&(c)->map, (s))

/* ------------------------------------------------------------------ */
/* Batches in memory                                                    */
/* ------------------------------------------------------------------ */

static void set_bit(sq_batch *b, uint32_t i)
{
	b->gone[i / 8] |= (uint8_t)(1u << (i % 8));
}

static sq_batch *batch_find(sq_ctx *c, int64_t bseq)
{
	for (sq_batch *b = c->batches; b; b = b->next)
		if (b->bseq == bseq)
			return b;
	return NULL;
}

static void batch_unlink(sq_ctx *c, sq_batch *b)
{
	if (b->prev)
		b->prev->next = b->next;
	else
		c->batches = b->next;
	if (b->next)
		b->next->prev = b->prev;
	free(b);
}

/* Unlinks b after removing every map entry that still points at it (members
 * that went final elsewhere: moved out by another process, or forced). The
 * map holds only members that are not gone, so none once live is 0. */
static void batch_forget(sq_ctx *c, sq_batch *b)
{
	for (size_t i = 0; i < c->map.cap && b->live; i++)
		if (c->map.slots[i].owner == b)
			map_del(c, &c->map.slots[i--]);
	batch_unlink(c, b);
}

static int step_done(sq_ctx *c, sqlite3_stmt *s, const char *what, char *errstr,
                     size_t errstr_size)
{
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	if (rc != SQLITE_DONE)
		return sq_error(c->db, rc, c->path, what, errstr, errstr_size);
	return 0;
}

/* Deletes the batch row (and its moved-out notes) if it still has `lease`. */
static int batch_row_delete(sq_ctx *c, int64_t bseq, int64_t lease, char *errstr,
                            size_t errstr_size)
{
	int rc;
	sqlite3_bind_int64(c->pk[PK_DELETE], 1, bseq);
	sqlite3_bind_int64(c->pk[PK_DELETE], 2, lease);
	rc = step_done(c, c->pk[PK_DELETE], "deleting a packed batch", errstr, errstr_size);
	if (rc || sqlite3_changes(c->db) == 0)
		return rc; /* another relay holds it now: its notes stay */
	sqlite3_bind_int64(c->pk[PK_DELETE_OUT], 1, bseq);
	return step_done(c, c->pk[PK_DELETE_OUT], "deleting a packed batch", errstr, errstr_size);
}

int sq_pack_open(sq_ctx *c, char *errstr, size_t errstr_size)
{
	char buf[512];
	for (int i = 0; i < PK_COUNT; i++) {
		int rc = sqlite3_prepare_v3(c->db, sq_stmt_sql(c, pk_sql[i], buf, sizeof(buf)), -1,
		                            SQLITE_PREPARE_PERSISTENT, &c->pk[i], NULL);
		if (rc != SQLITE_OK)
			return sq_error(c->db, rc, c->path, "preparing statements", errstr, errstr_size);
	}
	return 0;
}


/* ------------------------------------------------------------------ */
/* Insert                                                               */
/* ------------------------------------------------------------------ */

int sq_pack_insert(sq_ctx *c, const ackbox_store_rec *recs, size_t n, int64_t now_ms,
                   char *errstr, size_t errstr_size)
{
	size_t bytes = 0;
	uint8_t *blob, *p;
	sq_batch *b = NULL;
	int held, rc;

	if (n < PACK_MIN || n > UINT32_MAX || c->ordered)
		return 0; /* an ordered claim must see every message as a row */
	for (size_t i = 0; i < n; i++) {
		if (recs[i].due_ms != recs[0].due_ms)
			return 0;
		bytes += sq_member_size(&recs[i]);
		if (bytes > PACK_MAX_BYTES)
			return 0;
	}
	/* leased to this process: its relay has the messages in memory */
	held = recs[0].due_ms > now_ms;
	/* everything that could fail after the commit is allocated now */
	if (held) {
		b = calloc(1, sizeof(*b) + (n + 7) / 8);
		if (!b || map_reserve(c, n) != 0) {
			free(b);
			return 0; /* rows need less memory at once */
		}
	}
	blob = malloc(bytes);
	if (!blob) {
		free(b);
		return 0;
	}
	p = blob;
	for (size_t i = 0; i < n; i++)
		p = sq_member_put(p, &recs[i]);
	sqlite3_bind_int64(c->pk[PK_INSERT], 1, recs[0].due_ms);
	sqlite3_bind_int64(c->pk[PK_INSERT], 2, recs[0].created_ms);
	sqlite3_bind_int64(c->pk[PK_INSERT], 3, (sqlite3_int64)n);
	sqlite3_bind_blob(c->pk[PK_INSERT], 4, blob, (int)bytes, SQLITE_STATIC);
	sqlite3_bind_int64(c->pk[PK_INSERT], 5, sq_lease_own(c));
	rc = step_done(c, c->pk[PK_INSERT], "insert", errstr, errstr_size);
	free(blob);
	if (rc) {
		free(b);
		return rc;
	}
	if (!held)
		return 1; /* a claim takes it */
	b->bseq = sqlite3_last_insert_rowid(c->db);
	b->lease = sq_lease_own(c);
	b->n = b->live = (uint32_t)n;
	/* its ids are in the map now; sq_pack_inserted() forgets them if the
	 * transaction rolls back */
	free(c->fresh);
	c->fresh = b;
	for (size_t i = 0; i < n; i++)
		map_put(c, &recs[i].id, b, (uint32_t)i);
	return 1;
}

void sq_pack_inserted(sq_ctx *c, int committed)
{
	sq_batch *b = c->fresh;
	if (!b)
		return;
	c->fresh = NULL;
	if (committed) {
		b->next = c->batches;
		if (c->batches)
			c->batches->prev = b;
		c->batches = b;
		return;
	}
	/* rolled back: forget its members */
	for (size_t i = 0; i < c->map.cap; i++)
		if (c->map.slots[i].owner == b)
			map_del(c, &c->map.slots[i--]);
	free(b);
}

/* ------------------------------------------------------------------ */
/* Changes                                                              */
/* ------------------------------------------------------------------ */

/* Reads batch bseq's blob into a buffer of the caller's. Returns 1 if the
 * row is gone or holds another lease than `lease`. */
static int batch_blob(sq_ctx *c, int64_t bseq, int64_t lease, uint8_t **out, size_t *len,
                      int64_t *due_ms, char *errstr, size_t errstr_size)
{
	sqlite3_stmt *s = c->pk[PK_DATA];
	int rc;
	*out = NULL;
	sqlite3_bind_int64(s, 1, bseq);
	sqlite3_bind_int64(s, 2, lease);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		*due_ms = sqlite3_column_int64(s, 1);
		*len = (size_t)sqlite3_column_bytes(s, 0);
		*out = malloc(*len ? *len : 1);
		if (*out && *len)
			memcpy(*out, sqlite3_column_blob(s, 0), *len);
	}
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	if (rc == SQLITE_DONE)
		return 1; /* gone, or another relay's lease: no longer ours */
	if (rc != SQLITE_ROW)
		return sq_error(c->db, rc, c->path, "reading a packed batch", errstr, errstr_size);
	return *out ? 0 : ACKBOX_ERR_NOMEM;
}

static int corrupt(sq_ctx *c, int64_t bseq, char *errstr, size_t errstr_size)
{
	ackbox_errstr_set(errstr, errstr_size,
	                  "sqlite store '%s': packed batch %lld does not parse (damaged file?)",
	                  c->path, (long long)bseq);
	return ACKBOX_ERR_STORE_CORRUPT;
}

/* Writes a member as an ackbox_outbox row with the given state and lease;
 * the row records the payload's length (payload_len, checked by claims) as
 * m's, or as `declared` for what is left of a damaged member (declared >= 0). */
static int row_add_len(sq_ctx *c, const ackbox_store_row *m, int state, int attempts,
                       int64_t due, int64_t now_ms, const char *err, int code, int64_t lease,
                       int64_t declared, char *errstr, size_t errstr_size)
{
	sqlite3_stmt *s = c->pk[PK_ROW_ADD];
	sqlite3_bind_blob(s, 1, m->id.b, 16, SQLITE_STATIC);
	sqlite3_bind_int(s, 2, state);
	sqlite3_bind_int(s, 3, attempts);
	sqlite3_bind_int64(s, 4, due);
	sqlite3_bind_int64(s, 5, m->created_ms);
	sqlite3_bind_int64(s, 6, now_ms);
	sqlite3_bind_text(s, 7, m->topic, -1, SQLITE_STATIC);
	if (m->key_len)
		sqlite3_bind_blob(s, 8, m->key, (int)m->key_len, SQLITE_STATIC);
	if (m->content_type)
		sqlite3_bind_text(s, 9, m->content_type, -1, SQLITE_STATIC);
	if (m->headers_len)
		sqlite3_bind_blob(s, 10, m->headers, (int)m->headers_len, SQLITE_STATIC);
	sqlite3_bind_blob(s, 11, m->payload_len ? m->payload : (const void *)"",
	                  (int)m->payload_len, SQLITE_STATIC);
	if (err)
		sqlite3_bind_text(s, 12, err, -1, SQLITE_STATIC);
	sqlite3_bind_int(s, 13, code);
	sqlite3_bind_int64(s, 14, lease);
	sqlite3_bind_int64(s, 15, declared >= 0 ? declared : (int64_t)m->payload_len);
	return step_done(c, s, "moving a packed message out", errstr, errstr_size);
}

/* Writes a member as an ackbox_outbox row with the given state and lease. */
static int row_add(sq_ctx *c, const ackbox_store_row *m, int state, int attempts, int64_t due,
                   int64_t now_ms, const char *err, int code, int64_t lease, char *errstr,
                   size_t errstr_size)
{
	return row_add_len(c, m, state, attempts, due, now_ms, err, code, lease, -1, errstr,
	                   errstr_size);
}

/* Notes member idx of batch bseq as out of the batch. Returns 1 if it was
 * not noted before, 0 if it was (moved out or forced by someone else), or
 * an error. */
static int note_out(sq_ctx *c, int64_t bseq, uint32_t idx, char *errstr, size_t errstr_size)
{
	int rc;
	sqlite3_bind_int64(c->pk[PK_OUT_ADD], 1, bseq);
	sqlite3_bind_int(c->pk[PK_OUT_ADD], 2, (int)idx);
	rc = step_done(c, c->pk[PK_OUT_ADD], "moving a packed message out", errstr, errstr_size);
	return rc ? rc : sqlite3_changes(c->db) > 0;
}

/* Moves member idx of b out into its own row, in the state ch asks for. */
static int move_out(sq_ctx *c, sq_batch *b, uint32_t idx, const ackbox_store_change *ch,
                    int64_t now_ms, char *errstr, size_t errstr_size)
{
	uint8_t *blob = NULL;
	size_t len = 0, off = 0;
	char *tbuf = NULL;
	ackbox_store_row m;
	size_t tused;
	int64_t due;
	int rc = batch_blob(c, b->bseq, b->lease, &blob, &len, &due, errstr, errstr_size);
	if (rc)
		return rc > 0 ? 0 : rc; /* not ours any more: the holder decides */
	/* Noted first: a member that is out already (an operator failed or
	 * deleted it from another process) keeps its row, or stays deleted. */
	rc = note_out(c, b->bseq, idx, errstr, errstr_size);
	if (rc <= 0) {
		free(blob);
		return rc;
	}
	tbuf = malloc(len + 2);
	if (!tbuf) {
		free(blob);
		return ACKBOX_ERR_NOMEM;
	}
	for (uint32_t i = 0; i <= idx; i++) {
		if (sq_member_get(blob, len, &off, &m, tbuf, &tused) != 0) {
			free(tbuf);
			free(blob);
			return corrupt(c, b->bseq, errstr, errstr_size);
		}
	}
	/* the row keeps the batch's lease, the one the core's later changes
	 * for the message carry, and with it this relay as its owner */
	switch (ch->kind) {
	case ACKBOX_CHANGE_RETRY:
		rc = row_add(c, &m, ACKBOX_MSG_RETRYING, ch->attempts, ch->due_ms, now_ms,
		             ch->last_error, ch->last_code, b->lease, errstr, errstr_size);
		break;
	case ACKBOX_CHANGE_FAIL:
		rc = row_add(c, &m, ACKBOX_MSG_FAILED, ch->attempts, now_ms, now_ms, ch->last_error,
		             ch->last_code, b->lease, errstr, errstr_size);
		break;
	default: /* RELEASE: still SENDING, due when the core says */
		rc = row_add(c, &m, ACKBOX_MSG_SENDING, 0, ch->due_ms, now_ms, NULL, 0, b->lease,
		             errstr, errstr_size);
	}
	free(tbuf);
	free(blob);
	return rc;
}

int sq_pack_change(sq_ctx *c, const ackbox_store_change *ch, int64_t now_ms, char *errstr,
                   size_t errstr_size)
{
	ackbox_idmap_slot *s = map_find(c, &ch->id);
	sq_batch *b;
	uint32_t idx;
	int rc;

	if (!s)
		return 0;
	b = s->owner;
	idx = s->idx;
	if (ch->kind != ACKBOX_CHANGE_DELETE) {
		rc = move_out(c, b, idx, ch, now_ms, errstr, errstr_size);
		if (rc)
			return rc;
	} else {
		b->acked++;
	}
	/*
	 * Memory moves ahead of the transaction: if it rolls back, the core
	 * applies the change again and finds no member, and the batch row
	 * stays until its lease runs out and a claim unpacks it (a duplicate).
	 */
	set_bit(b, idx);
	map_del(c, s);
	if (--b->live == 0) {
		rc = batch_row_delete(c, b->bseq, b->lease, errstr, errstr_size);
		batch_unlink(c, b);
		if (rc)
			return rc;
	}
	return 1;
}

/* ------------------------------------------------------------------ */
/* Unpacking, counting, listing                                         */
/* ------------------------------------------------------------------ */

/* Marks in `out` (n/8 bytes, zeroed) the members of bseq that moved out. */
static int moved_out(sq_ctx *c, int64_t bseq, uint8_t *out, uint32_t n, char *errstr,
                     size_t errstr_size)
{
	sqlite3_stmt *s = c->pk[PK_OUT_OF];
	int rc;
	sqlite3_bind_int64(s, 1, bseq);
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		int64_t i = sqlite3_column_int64(s, 0);
		if (i >= 0 && i < n)
			out[i / 8] |= (uint8_t)(1u << (i % 8));
	}
	sqlite3_reset(s);
	if (rc != SQLITE_DONE)
		return sq_error(c->db, rc, c->path, "reading a packed batch", errstr, errstr_size);
	return 0;
}

typedef struct pk_raw {
	int64_t bseq, due_ms, lease;
	uint32_t n;
	uint8_t *blob;
	size_t len;
} pk_raw;

/* Copies the batch rows a statement returns (bseq, n, data, due_ms, lease). */
static int read_batches(sq_ctx *c, sqlite3_stmt *s, pk_raw **out, size_t *nout, char *errstr,
                        size_t errstr_size)
{
	pk_raw *v = NULL;
	size_t nv = 0, cap = 0;
	int rc;
	while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
		pk_raw *r;
		if (nv == cap) {
			size_t ncap = cap ? 2 * cap : 16;
			pk_raw *nvv = realloc(v, ncap * sizeof(*v));
			if (!nvv)
				break;
			v = nvv;
			cap = ncap;
		}
		r = &v[nv];
		r->bseq = sqlite3_column_int64(s, 0);
		r->n = (uint32_t)sqlite3_column_int64(s, 1);
		r->len = (size_t)sqlite3_column_bytes(s, 2);
		r->due_ms = sqlite3_column_int64(s, 3);
		r->lease = sqlite3_column_int64(s, 4);
		r->blob = malloc(r->len ? r->len : 1);
		if (!r->blob)
			break;
		if (r->len)
			memcpy(r->blob, sqlite3_column_blob(s, 2), r->len);
		nv++;
	}
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	if (rc != SQLITE_DONE) {
		for (size_t i = 0; i < nv; i++)
			free(v[i].blob);
		free(v);
		if (rc == SQLITE_ROW)
			return ACKBOX_ERR_NOMEM;
		return sq_error(c->db, rc, c->path, "reading packed batches", errstr, errstr_size);
	}
	*out = v;
	*nout = nv;
	return 0;
}

/* Which members of a stored batch are not final: not moved out, and not
 * acked by this process. skip gets a bit per member that is. */
static int final_members(sq_ctx *c, const pk_raw *r, uint8_t *skip, char *errstr,
                         size_t errstr_size)
{
	sq_batch *mine = batch_find(c, r->bseq);
	memset(skip, 0, (r->n + 7) / 8);
	if (mine && mine->n == r->n)
		memcpy(skip, mine->gone, (r->n + 7) / 8);
	return moved_out(c, r->bseq, skip, r->n, errstr, errstr_size);
}

/* Whether every member from k on is in skip. */
static int out_from(const uint8_t *skip, uint32_t k, uint32_t n)
{
	for (; k < n; k++)
		if (!(skip[k / 8] >> (k % 8) & 1))
			return 0;
	return 1;
}

/*
 * Member k of batch r does not parse at off, and nothing after it can (its
 * offset comes from the member before). Claim's answer, inside its
 * transaction: the member becomes a FAILED row if at least its id is there,
 * holding what is left of it and a reason that names the damage, and
 * recording the payload length its header gave (a requeue is refused the
 * same way); every member from k on is noted out, so no walk reaches the
 * damage again; one line is logged. The core never sees these members:
 * their bytes cannot be trusted. The members before k go on as usual.
 */
static int quarantine(sq_ctx *c, const pk_raw *r, sq_batch *mine, const uint8_t *skip,
                      uint32_t k, size_t off, char *tbuf, int64_t now_ms, char *errstr,
                      size_t errstr_size)
{
	ackbox_store_row m;
	uint32_t declared;
	char why[128], reason[384], idtext[ACKBOX_ID_STRLEN] = "(id unreadable)";
	int have_id = sq_member_salvage(r->blob, r->len, off, &m, tbuf, &declared, why, sizeof(why));
	int rc = 0;

	snprintf(reason, sizeof(reason),
	         "stored bytes damaged: member %u of %u of packed batch %lld %s%s", k + 1, r->n,
	         (long long)r->bseq, why,
	         k + 1 < r->n ? "; the members after it in the batch are unreadable" : "");
	/* a member out already (moved out before the damage) keeps its row */
	if (have_id && !(skip[k / 8] >> (k % 8) & 1)) {
		ackbox_id_format(&m.id, idtext);
		/* the batch's lease, as any member moved out keeps it */
		rc = row_add_len(c, &m, ACKBOX_MSG_FAILED, 0, now_ms, now_ms, reason, 0, r->lease,
		                 declared, errstr, errstr_size);
	}
	for (uint32_t j = k; j < r->n && rc == 0; j++) {
		int noted = note_out(c, r->bseq, j, errstr, errstr_size);
		if (noted < 0)
			rc = noted;
		else if (!(mine->gone[j / 8] >> (j % 8) & 1)) {
			set_bit(mine, j);
			mine->live--;
		}
	}
	if (rc)
		return rc;
	if (c->conf)
		ackbox_store_log(c->conf, ACKBOX_LOG_ERROR, "sqlite",
		                 "store '%s': %s; message %s FAILED, %u member(s) of the batch out",
		                 c->path, reason, idtext, r->n - k);
	if (mine->live == 0) {
		rc = batch_row_delete(c, r->bseq, mine->lease, errstr, errstr_size);
		batch_unlink(c, mine);
	}
	return rc;
}

int sq_pack_claim(sq_ctx *c, int64_t now_ms, int64_t lease_until_ms, size_t budget,
                  ackbox_store_row_cb cb, void *opaque, int *stop, char *errstr,
                  size_t errstr_size)
{
	sqlite3_stmt *q = c->pk[PK_DUE];
	pk_raw heads[16];
	size_t nh = 0, handed = 0;
	int rc;

	/* the candidates first (no blobs: most claims take one or two) */
	sqlite3_bind_int64(q, 1, now_ms);
	sqlite3_bind_int64(q, 2, (sqlite3_int64)(sizeof(heads) / sizeof(heads[0])));
	sqlite3_bind_int64(q, 3, c->owner);
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		memset(&heads[nh], 0, sizeof(heads[nh]));
		heads[nh].bseq = sqlite3_column_int64(q, 0);
		heads[nh].n = (uint32_t)sqlite3_column_int64(q, 1);
		heads[nh].due_ms = sqlite3_column_int64(q, 2);
		heads[nh].lease = sqlite3_column_int64(q, 3);
		nh++;
	}
	sqlite3_reset(q);
	if (rc != SQLITE_DONE)
		return sq_error(c->db, rc, c->path, "claim", errstr, errstr_size);
	rc = 0;
	for (size_t i = 0; i < nh && rc == 0 && !*stop && handed < budget; i++) {
		pk_raw *r = &heads[i];
		size_t gbytes = (r->n + 7) / 8, off = 0;
		uint8_t *skip = calloc(1, gbytes + 1);
		char *tbuf = NULL;
		sq_batch *mine = batch_find(c, r->bseq);
		uint32_t live = 0;
		int64_t due;
		if (!skip) {
			rc = ACKBOX_ERR_NOMEM;
			break;
		}
		rc = final_members(c, r, skip, errstr, errstr_size);
		for (uint32_t k = 0; k < r->n; k++)
			live += !(skip[k / 8] >> (k % 8) & 1);
		if (rc == 0 && live == 0) {
			/* every member moved out: only the row is left */
			rc = batch_row_delete(c, r->bseq, r->lease, errstr, errstr_size);
			if (mine)
				batch_forget(c, mine);
			goto next;
		}
		/* one batch may overshoot the budget, or a large one never fits */
		if (rc || (handed && handed + live > budget))
			goto next;
		rc = batch_blob(c, r->bseq, r->lease, &r->blob, &r->len, &due, errstr, errstr_size);
		if (rc > 0) {
			rc = 0; /* changed under us: it is not due any more */
			goto next;
		}
		tbuf = rc ? NULL : malloc(r->len + 2);
		if (!tbuf || map_reserve(c, live) != 0) {
			rc = rc ? rc : ACKBOX_ERR_NOMEM;
			goto next;
		}
		if (!mine) {
			mine = calloc(1, sizeof(*mine) + gbytes);
			if (!mine) {
				rc = ACKBOX_ERR_NOMEM;
				goto next;
			}
			mine->bseq = r->bseq;
			mine->n = r->n;
			mine->live = live;
			memcpy(mine->gone, skip, gbytes);
			mine->next = c->batches;
			if (c->batches)
				c->batches->prev = mine;
			c->batches = mine;
		}
		/* held already if our own lease ran out: same members, new lease */
		mine->lease = sq_lease_next(r->lease, c->owner);
		sqlite3_bind_int64(c->pk[PK_TAKE], 1, lease_until_ms);
		sqlite3_bind_int64(c->pk[PK_TAKE], 2, r->bseq);
		sqlite3_bind_int64(c->pk[PK_TAKE], 3, mine->lease);
		rc = step_done(c, c->pk[PK_TAKE], "claim", errstr, errstr_size);
		for (uint32_t k = 0; k < r->n && rc == 0 && !*stop; k++) {
			ackbox_store_row m;
			size_t tused;
			if (sq_member_get(r->blob, r->len, &off, &m, tbuf, &tused) != 0) {
				/* damaged bytes: the rest of the batch is out now, or goes */
				if (!out_from(skip, k, r->n))
					rc = quarantine(c, r, mine, skip, k, off, tbuf, now_ms, errstr,
					                errstr_size);
				break;
			}
			if (skip[k / 8] >> (k % 8) & 1) {
				/* held already, but moved out or forced elsewhere meanwhile */
				if (!(mine->gone[k / 8] >> (k % 8) & 1)) {
					ackbox_idmap_slot *s = map_find(c, &m.id);
					if (s && s->owner == mine)
						map_del(c, s);
					set_bit(mine, k);
					mine->live--;
				}
				continue;
			}
			if (!map_find(c, &m.id))
				map_put(c, &m.id, mine, k);
			m.due_ms = lease_until_ms;
			m.lease = (uint64_t)mine->lease;
			handed++;
			*stop = cb(&m, opaque);
		}
	next:
		free(skip);
		free(tbuf);
		free(r->blob);
		r->blob = NULL;
	}
	return rc ? rc : (int)handed;
}

/*
 * Per-key order (delivery.order=key) needs every pending message to be a
 * row the ordered claim can see. An ordered store writes no batches, but a
 * file may hold some from before: every due batch is written out as rows
 * (SENDING, attempts 0, due now) and deleted. Members acked in this
 * process's memory or moved out already are skipped. Returns the number of
 * rows written, or an error.
 */
int sq_pack_unpack_due(sq_ctx *c, int64_t now_ms, char *errstr, size_t errstr_size)
{
	sqlite3_stmt *q = c->pk[PK_DUE];
	int total = 0;
	for (;;) {
		pk_raw heads[16];
		size_t nh = 0;
		int rc;
		sqlite3_bind_int64(q, 1, now_ms);
		sqlite3_bind_int64(q, 2, (sqlite3_int64)(sizeof(heads) / sizeof(heads[0])));
		sqlite3_bind_int64(q, 3, c->owner); /* not another live relay's (SQ_NOT_HELD) */
		while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
			memset(&heads[nh], 0, sizeof(heads[nh]));
			heads[nh].bseq = sqlite3_column_int64(q, 0);
			heads[nh].n = (uint32_t)sqlite3_column_int64(q, 1);
			heads[nh].lease = sqlite3_column_int64(q, 3);
			nh++;
		}
		sqlite3_reset(q);
		if (rc != SQLITE_DONE)
			return sq_error(c->db, rc, c->path, "unpacking batches", errstr, errstr_size);
		if (nh == 0)
			return total;
		for (size_t i = 0; i < nh; i++) {
			pk_raw *r = &heads[i];
			uint8_t *skip = calloc(1, (r->n + 7) / 8 + 1);
			char *tbuf = NULL;
			sq_batch *mine = batch_find(c, r->bseq);
			size_t off = 0;
			int64_t due;
			if (!skip)
				return ACKBOX_ERR_NOMEM;
			rc = final_members(c, r, skip, errstr, errstr_size);
			if (rc == 0)
				rc = batch_blob(c, r->bseq, r->lease, &r->blob, &r->len, &due, errstr,
				                errstr_size);
			if (rc == 0 && !(tbuf = malloc(r->len + 2)))
				rc = ACKBOX_ERR_NOMEM;
			for (uint32_t k = 0; rc == 0 && k < r->n; k++) {
				ackbox_store_row m;
				size_t tused;
				if (sq_member_get(r->blob, r->len, &off, &m, tbuf, &tused) != 0) {
					rc = corrupt(c, r->bseq, errstr, errstr_size);
					break;
				}
				if (skip[k / 8] >> (k % 8) & 1)
					continue;
				/* the batch's lease: whoever owned it owns its rows */
				rc = row_add(c, &m, ACKBOX_MSG_SENDING, 0, now_ms, now_ms, NULL, 0, r->lease,
				             errstr, errstr_size);
				total++;
			}
			if (rc == 0)
				rc = batch_row_delete(c, r->bseq, r->lease, errstr, errstr_size);
			if (rc == 0 && mine)
				batch_forget(c, mine);
			free(skip);
			free(tbuf);
			free(r->blob);
			if (rc < 0)
				return rc;
			/* rc > 0: changed under us; the next round sees what is left */
		}
	}
}

/* ------------------------------------------------------------------ */
/* An operator's override                                               */
/* ------------------------------------------------------------------ */

typedef struct pk_found {
	pk_raw r;        /* the batch row, blob included */
	uint32_t idx;    /* the member's index in it */
	ackbox_store_row m; /* points into r.blob and tbuf */
	char *tbuf;
} pk_found;

static void found_fini(pk_found *f)
{
	free(f->r.blob);
	free(f->tbuf);
	memset(f, 0, sizeof(*f));
}

/* Looks for id among the members of the first batch after `after` that are
 * not final. Returns 1 if found (f filled), 0 if not (*bseq = the batch
 * looked at, 0 if there was none), or an error. */
static int find_in_next(sq_ctx *c, int64_t after, const ackbox_id *id, pk_found *f,
                        int64_t *bseq, char *errstr, size_t errstr_size)
{
	pk_raw *v = NULL;
	size_t nv = 0, off = 0, tused;
	uint8_t *skip = NULL;
	int rc, found = 0;

	*bseq = 0;
	sqlite3_bind_int64(c->pk[PK_NEXT], 1, after);
	rc = read_batches(c, c->pk[PK_NEXT], &v, &nv, errstr, errstr_size);
	if (rc || nv == 0) {
		free(v);
		return rc;
	}
	f->r = v[0];
	free(v);
	*bseq = f->r.bseq;
	skip = calloc(1, (f->r.n + 7) / 8 + 1);
	f->tbuf = malloc(f->r.len + 2);
	if (!skip || !f->tbuf)
		rc = ACKBOX_ERR_NOMEM;
	if (rc == 0)
		rc = final_members(c, &f->r, skip, errstr, errstr_size);
	for (uint32_t k = 0; k < f->r.n && rc == 0 && !found; k++) {
		/* nothing past damaged bytes can be found (a claim fails them) */
		if (sq_member_get(f->r.blob, f->r.len, &off, &f->m, f->tbuf, &tused) != 0)
			break;
		else if (!(skip[k / 8] >> (k % 8) & 1) && memcmp(f->m.id.b, id->b, 16) == 0) {
			f->idx = k;
			found = 1;
		}
	}
	free(skip);
	if (rc || !found)
		found_fini(f);
	return rc ? rc : found;
}

/* Finds the packed member id that is not final: in the batch the map names
 * if this process holds it, else by walking every batch, one at a time. */
static int find_member(sq_ctx *c, const ackbox_id *id, pk_found *f, char *errstr,
                       size_t errstr_size)
{
	ackbox_idmap_slot *s = map_find(c, id);
	int64_t after = 0, seen;
	int rc;
	if (s) {
		rc = find_in_next(c, ((sq_batch *)s->owner)->bseq - 1, id, f, &seen, errstr, errstr_size);
		if (rc)
			return rc;
	}
	do {
		rc = find_in_next(c, after, id, f, &seen, errstr, errstr_size);
		after = seen;
	} while (rc == 0 && seen);
	return rc;
}

/* Counts the members of bseq noted out. */
static int count_out(sq_ctx *c, int64_t bseq, uint32_t n, uint32_t *out, char *errstr,
                     size_t errstr_size)
{
	uint8_t *bits = calloc(1, (n + 7) / 8 + 1);
	int rc;
	*out = 0;
	if (!bits)
		return ACKBOX_ERR_NOMEM;
	rc = moved_out(c, bseq, bits, n, errstr, errstr_size);
	for (uint32_t k = 0; k < n && rc == 0; k++)
		*out += bits[k / 8] >> (k % 8) & 1;
	free(bits);
	return rc;
}

int sq_pack_force(sq_ctx *c, const ackbox_store_change *ch, int64_t now_ms, char *errstr,
                  size_t errstr_size)
{
	pk_found f;
	sq_batch *mine;
	uint32_t out = 0;
	int rc;

	memset(&f, 0, sizeof(f));
	rc = find_member(c, &ch->id, &f, errstr, errstr_size);
	if (rc <= 0)
		return rc;
	rc = 0;
	if (ch->kind == ACKBOX_CHANGE_FAIL) {
		/* its own FAILED row, with a lease above the batch's: a holder's
		 * later change for it (its lease is the batch's) is skipped */
		rc = row_add(c, &f.m, ACKBOX_MSG_FAILED, 0, now_ms, now_ms, ch->last_error,
		             ch->last_code, 0, errstr, errstr_size);
		if (rc == 0) {
			sqlite3_bind_int64(c->pk[PK_FENCE], 1, f.r.lease + 1);
			sqlite3_bind_blob(c->pk[PK_FENCE], 2, f.m.id.b, 16, SQLITE_STATIC);
			rc = step_done(c, c->pk[PK_FENCE], "failing a packed message", errstr,
			               errstr_size);
		}
	}
	/* DELETE: the note alone takes it out, with no row of its own */
	if (rc == 0)
		rc = note_out(c, f.r.bseq, f.idx, errstr, errstr_size);
	if (rc < 0) {
		found_fini(&f);
		return rc;
	}
	rc = count_out(c, f.r.bseq, f.r.n, &out, errstr, errstr_size);
	/*
	 * This process's memory moves with the transaction, as in
	 * sq_pack_change(): if the commit fails, the member stays in the batch
	 * on disk and is sent again when a claim unpacks it.
	 */
	mine = batch_find(c, f.r.bseq);
	if (rc == 0 && mine && mine->n == f.r.n && !(mine->gone[f.idx / 8] >> (f.idx % 8) & 1)) {
		ackbox_idmap_slot *s = map_find(c, &f.m.id);
		if (s && s->owner == mine)
			map_del(c, s);
		set_bit(mine, f.idx);
		mine->live--;
	}
	if (rc == 0 && out == f.r.n) {
		/* every member is out: only the row is left, whoever holds it */
		sqlite3_bind_int64(c->pk[PK_DELETE_ANY], 1, f.r.bseq);
		rc = step_done(c, c->pk[PK_DELETE_ANY], "deleting a packed batch", errstr,
		               errstr_size);
		if (rc == 0) {
			sqlite3_bind_int64(c->pk[PK_DELETE_OUT], 1, f.r.bseq);
			rc = step_done(c, c->pk[PK_DELETE_OUT], "deleting a packed batch", errstr,
			               errstr_size);
		}
		if (mine)
			batch_forget(c, mine);
	} else if (rc == 0 && mine && mine->live == 0) {
		/* the others were acked here: as when the last member is acked */
		rc = batch_row_delete(c, mine->bseq, mine->lease, errstr, errstr_size);
		batch_unlink(c, mine);
	}
	found_fini(&f);
	return rc ? rc : 1;
}

int sq_pack_counts(sq_ctx *c, uint64_t *pending, int64_t *oldest_ms, char *errstr,
                   size_t errstr_size)
{
	sqlite3_stmt *s;
	uint64_t acked = 0;
	int rc = sqlite3_prepare_v2(c->db,
	                            "SELECT (SELECT coalesce(sum(n), 0) FROM ackbox_batch),"
	                            " (SELECT count(*) FROM ackbox_batch_out),"
	                            " (SELECT min(created_ms) FROM ackbox_batch)",
	                            -1, &s, NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "counting", errstr, errstr_size);
	rc = sqlite3_step(s);
	if (rc == SQLITE_ROW) {
		uint64_t n = (uint64_t)sqlite3_column_int64(s, 0);
		uint64_t out = (uint64_t)sqlite3_column_int64(s, 1);
		for (sq_batch *b = c->batches; b; b = b->next)
			acked += b->acked;
		*pending = n >= out + acked ? n - out - acked : 0;
		*oldest_ms = sqlite3_column_int64(s, 2);
	}
	sqlite3_finalize(s);
	if (rc != SQLITE_ROW)
		return sq_error(c->db, rc, c->path, "counting", errstr, errstr_size);
	return 0;
}

static int row_cmp(const void *a, const void *b)
{
	return memcmp(((const ackbox_store_row *)a)->id.b, ((const ackbox_store_row *)b)->id.b, 16);
}

void sq_pack_iter_init(sq_ctx *c, sq_pack_iter *it)
{
	memset(it, 0, sizeof(*it));
	it->c = c;
}

void sq_pack_iter_fini(sq_pack_iter *it)
{
	free(it->rows);
	free(it->blob);
	free(it->tbuf);
	memset(it, 0, sizeof(*it));
}

/* Loads the next batch's members that are not final, sorted by id. */
static int iter_load(sq_pack_iter *it, char *errstr, size_t errstr_size)
{
	sq_ctx *c = it->c;
	pk_raw *v = NULL;
	size_t nv = 0, off = 0, toff = 0;
	uint8_t *skip = NULL;
	int rc;

	free(it->rows);
	free(it->blob);
	free(it->tbuf);
	it->rows = NULL;
	it->blob = it->tbuf = NULL;
	it->n = it->pos = 0;
	sqlite3_bind_int64(c->pk[PK_NEXT], 1, it->after);
	rc = read_batches(c, c->pk[PK_NEXT], &v, &nv, errstr, errstr_size);
	if (rc)
		return rc;
	if (nv == 0) {
		it->done = 1;
		free(v);
		return 0;
	}
	it->after = v[0].bseq;
	it->blob = v[0].blob;
	skip = calloc(1, (v[0].n + 7) / 8 + 1);
	it->tbuf = malloc(v[0].len + 2 * (size_t)v[0].n + 2);
	it->rows = calloc(v[0].n ? v[0].n : 1, sizeof(*it->rows));
	if (!skip || !it->tbuf || !it->rows)
		rc = ACKBOX_ERR_NOMEM;
	if (rc == 0)
		rc = final_members(c, &v[0], skip, errstr, errstr_size);
	for (uint32_t k = 0; k < v[0].n && rc == 0; k++) {
		ackbox_store_row m;
		size_t tused;
		/* damaged bytes end the walk: a claim fails what they held */
		if (sq_member_get(it->blob, v[0].len, &off, &m, (char *)it->tbuf + toff, &tused) != 0)
			break;
		toff += tused;
		if (skip[k / 8] >> (k % 8) & 1)
			continue;
		m.due_ms = v[0].due_ms;
		it->rows[it->n++] = m;
	}
	free(skip);
	free(v); /* the blob is it->blob now */
	if (rc == 0 && it->n > 1)
		qsort(it->rows, it->n, sizeof(*it->rows), row_cmp);
	return rc;
}

const ackbox_store_row *sq_pack_iter_next(sq_pack_iter *it, int *rc, char *errstr,
                                          size_t errstr_size)
{
	*rc = 0;
	while (!it->done && it->pos == it->n) {
		*rc = iter_load(it, errstr, errstr_size);
		if (*rc)
			return NULL;
	}
	return it->done ? NULL : &it->rows[it->pos++];
}

/* ------------------------------------------------------------------ */
/* Close                                                                */
/* ------------------------------------------------------------------ */

int sq_pack_partly_acked(const sq_ctx *c)
{
	if (!c->pk[PK_COUNT - 1])
		return 0;
	for (const sq_batch *b = c->batches; b; b = b->next)
		if (b->acked)
			return 1;
	return 0;
}

/*
 * At a clean close, a batch with members acked in memory is turned into
 * rows of its other members, so the next process does not send the acked
 * ones again. Inside the caller's transaction; if it fails, they are
 * duplicates.
 */
int sq_pack_write_out(sq_ctx *c, char *err, size_t err_size)
{
	int rc = 0;
	for (sq_batch *b = c->batches; b && rc == 0; b = b->next) {
		uint8_t *blob = NULL, *skip = NULL;
		char *tbuf = NULL;
		size_t len = 0, off = 0, tused;
		int64_t due = 0;
		if (!b->acked)
			continue;
		rc = batch_blob(c, b->bseq, b->lease, &blob, &len, &due, err, err_size);
		if (rc > 0) {
			rc = 0;
			continue; /* another relay holds it */
		}
		tbuf = rc ? NULL : malloc(len + 2);
		skip = rc ? NULL : calloc(1, (b->n + 7) / 8 + 1);
		if (!rc && (!tbuf || !skip))
			rc = ACKBOX_ERR_NOMEM;
		/* members noted out elsewhere (an operator deleted one) stay out */
		if (rc == 0) {
			memcpy(skip, b->gone, (b->n + 7) / 8);
			rc = moved_out(c, b->bseq, skip, b->n, err, err_size);
		}
		for (uint32_t k = 0; k < b->n && rc == 0; k++) {
			ackbox_store_row m;
			if (sq_member_get(blob, len, &off, &m, tbuf, &tused) != 0)
				rc = corrupt(c, b->bseq, err, err_size);
			else if (!(skip[k / 8] >> (k % 8) & 1))
				/* this relay's, until it unregisters right after */
				rc = row_add(c, &m, ACKBOX_MSG_SENDING, 0, due, m.created_ms, NULL, 0,
				             b->lease, err, err_size);
		}
		if (rc == 0)
			rc = batch_row_delete(c, b->bseq, b->lease, err, err_size);
		if (rc == ACKBOX_ERR_NOMEM)
			snprintf(err, err_size, "out of memory");
		free(skip);
		free(tbuf);
		free(blob);
	}
	return rc;
}

void sq_pack_close(sq_ctx *c)
{
	for (int i = 0; i < PK_COUNT; i++)
		sqlite3_finalize(c->pk[i]);
	while (c->batches)
		batch_unlink(c, c->batches);
	free(c->fresh);
	ackbox_idmap_free(&c->map);
}

int sq_pack_holds(sq_ctx *c, const ackbox_id *id)
{
	return map_find(c, id) != NULL;
}
