/*
 * idmap.h - a map from message id to (owner, index), for plugins that keep
 * something per message in memory: the SQLite and Redis stores map each
 * member of a packed batch they hold to its batch and its place in it.
 *
 * Header-only: every function is static inline, so nothing here is part of
 * libackbox's ABI and a plugin built against one version keeps working with
 * another. Open addressing with linear probing and backward-shift deletion,
 * at a load of at most one half.
 *
 * Ownership: the map owns its slot array (ackbox_idmap_free releases it);
 * it never owns what `owner` points to. Threading: none; a map is used by
 * one thread at a time (a store serialises its calls).
 */
#ifndef ACKBOX_IDMAP_H
#define ACKBOX_IDMAP_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <ackbox/ackbox.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ackbox_idmap_slot {
	ackbox_id id;
	void *owner;  /* NULL: an empty slot */
	uint32_t idx; /* the caller's index within owner */
} ackbox_idmap_slot;

/** Zero-initialise (`ackbox_idmap m = {0};`) before use. */
typedef struct ackbox_idmap {
	ackbox_idmap_slot *slots; /* cap of them, cap a power of two (0 before the first reserve) */
	size_t cap, n;            /* n slots in use */
} ackbox_idmap;

static inline size_t ackbox_idmap_hash(const ackbox_id *id)
{
	uint64_t a, b, h;
	memcpy(&a, id->b, 8);
	memcpy(&b, id->b + 8, 8);
	h = a ^ b;
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return (size_t)h;
}

/** The slot holding id, or NULL. The pointer is valid until the next put,
 *  reserve or del. */
static inline ackbox_idmap_slot *ackbox_idmap_find(const ackbox_idmap *m, const ackbox_id *id)
{
	size_t mask = m->cap - 1;
	if (!m->n)
		return NULL;
	for (size_t i = ackbox_idmap_hash(id) & mask;; i = (i + 1) & mask) {
		ackbox_idmap_slot *s = &m->slots[i];
		if (!s->owner)
			return NULL;
		if (memcmp(s->id.b, id->b, sizeof(id->b)) == 0)
			return s;
	}
}

static inline void ackbox_idmap_place_(ackbox_idmap_slot *slots, size_t cap, const ackbox_id *id,
                                       void *owner, uint32_t idx)
{
	size_t mask = cap - 1, i = ackbox_idmap_hash(id) & mask;
	while (slots[i].owner)
		i = (i + 1) & mask;
	slots[i].id = *id;
	slots[i].owner = owner;
	slots[i].idx = idx;
}

/** Makes room for `more` puts. 0, or -1 when out of memory (the map is as
 *  it was). */
static inline int ackbox_idmap_reserve(ackbox_idmap *m, size_t more)
{
	size_t cap = m->cap ? m->cap : 64;
	ackbox_idmap_slot *ns;
	while ((m->n + more) > cap / 2)
		cap *= 2;
	if (cap == m->cap)
		return 0;
	ns = (ackbox_idmap_slot *)calloc(cap, sizeof(*ns));
	if (!ns)
		return -1;
	for (size_t i = 0; i < m->cap; i++)
		if (m->slots[i].owner)
			ackbox_idmap_place_(ns, cap, &m->slots[i].id, m->slots[i].owner,
			                    m->slots[i].idx);
	free(m->slots);
	m->slots = ns;
	m->cap = cap;
	return 0;
}

/** Adds id (not in the map; owner not NULL) after a reserve made room. */
static inline void ackbox_idmap_put(ackbox_idmap *m, const ackbox_id *id, void *owner,
                                    uint32_t idx)
{
	ackbox_idmap_place_(m->slots, m->cap, id, owner, idx);
	m->n++;
}

/** Removes slot s (from ackbox_idmap_find, or &m->slots[i] of a used slot).
 *  Entries after it may move into its place: a scan over m->slots that
 *  deletes as it goes looks at slot i again after deleting it. */
static inline void ackbox_idmap_del(ackbox_idmap *m, ackbox_idmap_slot *s)
{
	size_t mask = m->cap - 1, i = (size_t)(s - m->slots), j = i;
	m->slots[i].owner = NULL;
	m->n--;
	for (;;) {
		size_t home;
		j = (j + 1) & mask;
		if (!m->slots[j].owner)
			return;
		home = ackbox_idmap_hash(&m->slots[j].id) & mask;
		/* j's entry may move to the hole at i unless its home lies in (i, j] */
		if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
			m->slots[i] = m->slots[j];
			m->slots[j].owner = NULL;
			i = j;
		}
	}
}

/** Releases the slots; the map is empty and may be used again. */
static inline void ackbox_idmap_free(ackbox_idmap *m)
{
	free(m->slots);
	m->slots = NULL;
	m->cap = m->n = 0;
}

#ifdef __cplusplus
}
#endif

#endif
