/*
 * containers.h - the two small containers the relay is built on: a map
 * from 64-bit keys to pointers, and a min-heap of times. Relay thread only;
 * no locks. Internal; never installed.
 */
#ifndef ACKBOX_CONTAINERS_H
#define ACKBOX_CONTAINERS_H

#include <stddef.h>
#include <stdint.h>

#include <ackbox/ackbox.h>

/* Open addressing with linear probing; NULL values mean "empty", so NULL
 * cannot be stored. Deletion shifts back, so there are no tombstones. */
typedef struct abx_map {
	uint64_t *keys;
	void **vals;
	size_t cap; /* a power of two, or 0 */
	size_t len;
} abx_map;

void *abx_map_get(const abx_map *m, uint64_t k);
/* 0, or -1 out of memory (the map is unchanged). v must not be NULL. */
int abx_map_put(abx_map *m, uint64_t k, void *v);
void abx_map_del(abx_map *m, uint64_t k);
/* Frees the table, not the values. */
void abx_map_fini(abx_map *m);

/* 64 bits of an id: the 62 random bits folded with the timestamp. Two live
 * ids colliding there is ~2^-64 per pair; callers still compare the id. */
uint64_t abx_id_key(const ackbox_id *id);

/* A min-heap of int64 (times in ms). */
typedef struct abx_heap {
	int64_t *v;
	size_t n, cap;
} abx_heap;

/* Adds t; returns -1 (heap unchanged) if out of memory. */
int abx_heap_push(abx_heap *h, int64_t t);
/* Removes every value <= t. */
void abx_heap_pop_until(abx_heap *h, int64_t t);
/* The smallest value; only when h->n > 0. */
static inline int64_t abx_heap_top(const abx_heap *h)
{
	return h->v[0];
}
void abx_heap_fini(abx_heap *h);

#endif
