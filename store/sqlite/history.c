/*
 * history.c - the attempt history of the SQLite store (store ABI 1.6): a
 * table ackbox_attempt of (id, n) -> one note, the last ACKBOX_HISTORY_MAX
 * per message, written in the transaction of the change it comes with.
 * Kept apart from the rows, so a packed member needs no row to have one.
 */
#include <stdio.h>
#include <string.h>

#include "sqlite_int.h"

/* The first ACKBOX_HISTORY_TEXT_MAX bytes, not cutting a UTF-8 sequence. */
static int note_len(const char *t)
{
	size_t n = t ? strlen(t) : 0;
	if (n > ACKBOX_HISTORY_TEXT_MAX) {
		n = ACKBOX_HISTORY_TEXT_MAX;
		while (n > 0 && ((unsigned char)t[n] & 0xC0) == 0x80)
			n--;
	}
	return (int)n;
}

int sq_hist_table(sq_ctx *c, int create, char *errstr, size_t errstr_size)
{
	sqlite3_stmt *s;
	int rc;
	if (c->has_history)
		return 1;
	rc = sqlite3_prepare_v2(c->db,
	                        "SELECT count(*) FROM sqlite_master WHERE type='table' AND"
	                        " name='ackbox_attempt'",
	                        -1, &s, NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "reading the schema", errstr, errstr_size);
	rc = sqlite3_step(s);
	c->has_history = rc == SQLITE_ROW && sqlite3_column_int(s, 0) > 0;
	sqlite3_finalize(s);
	if (rc != SQLITE_ROW)
		return sq_error(c->db, rc, c->path, "reading the schema", errstr, errstr_size);
	if (!c->has_history && create) {
		rc = sqlite3_exec(c->db, SQ_HIST_SCHEMA, NULL, NULL, NULL);
		if (rc != SQLITE_OK)
			return sq_error(c->db, rc, c->path, "creating ackbox_attempt", errstr,
			                errstr_size);
		c->has_history = 1;
	}
	return c->has_history;
}

/* Runs a cached statement (prepared at first use) to its end. */
static int step(sq_ctx *c, sqlite3_stmt *s, const char *what, char *errstr, size_t errstr_size)
{
	int rc = sqlite3_step(s);
	sqlite3_reset(s);
	sqlite3_clear_bindings(s);
	if (rc != SQLITE_DONE)
		return sq_error(c->db, rc, c->path, what, errstr, errstr_size);
	return 0;
}

static int prep(sq_ctx *c, sqlite3_stmt **s, const char *sql, char *errstr, size_t errstr_size)
{
	int rc;
	if (*s)
		return 0;
	rc = sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, s, NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "preparing the history statements", errstr,
		                errstr_size);
	return 0;
}

int sq_hist_add(sq_ctx *c, const ackbox_id *id, const ackbox_attempt *a, char *errstr,
                size_t errstr_size)
{
	int rc = sq_hist_table(c, 1, errstr, errstr_size);
	if (rc < 0)
		return rc;
	if ((rc = prep(c, &c->hist_add,
	               "INSERT INTO ackbox_attempt(id, n, at_ms, outcome, code, text)"
	               " SELECT ?1, coalesce(max(n), 0) + 1, ?2, ?3, ?4, ?5 FROM ackbox_attempt"
	               " WHERE id = ?1",
	               errstr, errstr_size)) != 0 ||
	    (rc = prep(c, &c->hist_trim,
	               "DELETE FROM ackbox_attempt WHERE id = ?1 AND n <= (SELECT max(n) FROM"
	               " ackbox_attempt WHERE id = ?1) - ?2",
	               errstr, errstr_size)) != 0)
		return rc;
	sqlite3_bind_blob(c->hist_add, 1, id->b, 16, SQLITE_STATIC);
	sqlite3_bind_int64(c->hist_add, 2, a->at_ms);
	sqlite3_bind_int(c->hist_add, 3, (int)a->outcome);
	sqlite3_bind_int(c->hist_add, 4, a->code);
	sqlite3_bind_text(c->hist_add, 5, a->text ? a->text : "", note_len(a->text), SQLITE_STATIC);
	rc = step(c, c->hist_add, "adding to the attempt history", errstr, errstr_size);
	if (rc)
		return rc;
	sqlite3_bind_blob(c->hist_trim, 1, id->b, 16, SQLITE_STATIC);
	sqlite3_bind_int(c->hist_trim, 2, ACKBOX_HISTORY_MAX);
	return step(c, c->hist_trim, "trimming the attempt history", errstr, errstr_size);
}

int sq_hist_drop(sq_ctx *c, const ackbox_store_change *ch, size_t n, char *errstr,
                 size_t errstr_size)
{
	int rc = sq_hist_table(c, 0, errstr, errstr_size);
	if (rc <= 0)
		return rc;
	if ((rc = prep(c, &c->hist_any, "SELECT 1 FROM ackbox_attempt LIMIT 1", errstr,
	               errstr_size)) != 0 ||
	    (rc = prep(c, &c->hist_del, "DELETE FROM ackbox_attempt WHERE id = ?1", errstr,
	               errstr_size)) != 0)
		return rc;
	/* Acks are the common case and most messages have no history: one
	 * probe of an empty table spares a delete per ack. */
	rc = sqlite3_step(c->hist_any);
	sqlite3_reset(c->hist_any);
	if (rc == SQLITE_DONE)
		return 0;
	if (rc != SQLITE_ROW)
		return sq_error(c->db, rc, c->path, "reading the attempt history", errstr, errstr_size);
	for (size_t i = 0; i < n; i++) {
		if (ch[i].kind != ACKBOX_CHANGE_DELETE)
			continue;
		sqlite3_bind_blob(c->hist_del, 1, ch[i].id.b, 16, SQLITE_STATIC);
		rc = step(c, c->hist_del, "dropping an attempt history", errstr, errstr_size);
		if (rc)
			return rc;
	}
	return 0;
}

int sq_history(void *vctx, const ackbox_id *id, ackbox_store_attempt_cb cb, void *opaque,
               char *errstr, size_t errstr_size)
{
	sq_ctx *c = vctx;
	sqlite3_stmt *s;
	int rc, count = 0;
	if (c->absent || !c->db)
		return 0;
	rc = sq_hist_table(c, 0, errstr, errstr_size);
	if (rc <= 0)
		return rc; /* a file no 1.4 ackbox wrote to: no history yet */
	rc = sqlite3_prepare_v2(c->db,
	                        "SELECT at_ms, outcome, code, text FROM ackbox_attempt WHERE id = ?1"
	                        " ORDER BY n DESC LIMIT ?2",
	                        -1, &s, NULL);
	if (rc != SQLITE_OK)
		return sq_error(c->db, rc, c->path, "reading the attempt history", errstr, errstr_size);
	sqlite3_bind_blob(s, 1, id->b, 16, SQLITE_STATIC);
	sqlite3_bind_int(s, 2, ACKBOX_HISTORY_MAX);
	{
		/* newest first from the index, handed out oldest first */
		ackbox_attempt a[ACKBOX_HISTORY_MAX];
		char text[ACKBOX_HISTORY_MAX][ACKBOX_HISTORY_TEXT_MAX + 1];
		while ((rc = sqlite3_step(s)) == SQLITE_ROW && count < ACKBOX_HISTORY_MAX) {
			const char *t = (const char *)sqlite3_column_text(s, 3);
			a[count].at_ms = sqlite3_column_int64(s, 0);
			a[count].outcome = (ackbox_outcome)sqlite3_column_int(s, 1);
			a[count].code = sqlite3_column_int(s, 2);
			snprintf(text[count], sizeof(text[count]), "%.*s", note_len(t), t ? t : "");
			a[count].text = text[count];
			count++;
		}
		sqlite3_finalize(s);
		if (rc != SQLITE_DONE && rc != SQLITE_ROW)
			return sq_error(c->db, rc, c->path, "reading the attempt history", errstr,
			                errstr_size);
		for (int i = count - 1; i >= 0; i--)
			if (cb(&a[i], opaque))
				break;
	}
	return count;
}
