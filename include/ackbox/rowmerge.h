/*
 * rowmerge.h - for a store's list(): merges the rows a query returns in id
 * order with rows the store keeps elsewhere and reads one at a time (the
 * SQLite and Redis stores' packed batches), by id, up to a limit.
 *
 * Use: ackbox_rowmerge_init, then ackbox_rowmerge_start (left out, the merge
 * has no rows of src: a state packed rows are never in); pass
 * ackbox_rowmerge_cb and the merge as the query's row callback; then
 * ackbox_rowmerge_before(m, NULL) for what is left. `emitted` is list()'s
 * result unless `rc` is non-zero.
 *
 * Header-only: every function is static inline, nothing here is part of
 * libackbox's ABI. Ownership: the merge owns nothing; `src` is the
 * caller's. Threading: none; one thread at a time.
 */
#ifndef ACKBOX_ROWMERGE_H
#define ACKBOX_ROWMERGE_H

#include <string.h>

#include <ackbox/store.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The next row of src (valid until the next call), or NULL at the end or
 * on an error (*rc set, errstr filled). */
typedef const ackbox_store_row *(*ackbox_rowmerge_next_fn)(void *src, int *rc, char *errstr,
                                                           size_t errstr_size);

typedef struct ackbox_rowmerge {
	ackbox_rowmerge_next_fn next_fn;
	void *src;
	size_t limit;                 /* 0: no limit */
	ackbox_store_row_cb cb;       /* list()'s callback and its opaque */
	void *opaque;
	char *errstr;
	size_t errstr_size;
	/* kept by the functions below */
	const ackbox_store_row *next; /* src's next row, NULL when it has none left */
	size_t emitted;
	int stop, rc;
} ackbox_rowmerge;

/** Fills m: src read through next_fn, rows handed to list()'s cb and opaque
 *  up to limit (0: no limit), errors written to errstr. */
static inline void ackbox_rowmerge_init(ackbox_rowmerge *m, ackbox_rowmerge_next_fn next_fn,
                                        void *src, size_t limit, ackbox_store_row_cb cb,
                                        void *opaque, char *errstr, size_t errstr_size)
{
	memset(m, 0, sizeof(*m));
	m->next_fn = next_fn;
	m->src = src;
	m->limit = limit;
	m->cb = cb;
	m->opaque = opaque;
	m->errstr = errstr;
	m->errstr_size = errstr_size;
}

/** Reads src's first row. 0, or src's error (also in m->rc). */
static inline int ackbox_rowmerge_start(ackbox_rowmerge *m)
{
	m->emitted = 0;
	m->stop = m->rc = 0;
	m->next = m->next_fn(m->src, &m->rc, m->errstr, m->errstr_size);
	return m->rc;
}

/** Emits src's rows whose id sorts before `before` (all of them if NULL). */
static inline void ackbox_rowmerge_before(ackbox_rowmerge *m, const ackbox_id *before)
{
	while (!m->stop && m->next && (!m->limit || m->emitted < m->limit) &&
	       (!before || memcmp(m->next->id.b, before->b, sizeof(before->b)) < 0)) {
		m->emitted++;
		m->stop = m->cb(m->next, m->opaque);
		m->next = m->next_fn(m->src, &m->rc, m->errstr, m->errstr_size);
		if (m->rc)
			m->stop = 1;
	}
}

/** The query's row callback (opaque: the merge): src's rows before it,
 *  then the row. Non-zero once the limit is reached or cb said stop. */
static inline int ackbox_rowmerge_cb(const ackbox_store_row *row, void *opaque)
{
	ackbox_rowmerge *m = (ackbox_rowmerge *)opaque;
	ackbox_rowmerge_before(m, &row->id);
	if (m->stop || (m->limit && m->emitted >= m->limit))
		return 1;
	m->emitted++;
	m->stop = m->cb(row, m->opaque);
	return m->stop || (m->limit && m->emitted >= m->limit);
}

#ifdef __cplusplus
}
#endif

#endif
