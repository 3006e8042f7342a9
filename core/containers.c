/*
 * containers.c - the map and the heap of containers.h.
 */
#include <stdlib.h>
#include <string.h>

#include "containers.h"

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static int map_grow(abx_map *m)
{
	size_t ncap = m->cap ? m->cap * 2 : 64;
	uint64_t *nk = calloc(ncap, sizeof(*nk));
	void **nv = calloc(ncap, sizeof(*nv));
	if (!nk || !nv) {
		free(nk);
		free(nv);
		return -1;
	}
	for (size_t i = 0; i < m->cap; i++) {
		if (!m->vals[i])
			continue;
		size_t j = mix64(m->keys[i]) & (ncap - 1);
		while (nv[j])
			j = (j + 1) & (ncap - 1);
		nk[j] = m->keys[i];
		nv[j] = m->vals[i];
	}
	free(m->keys);
	free(m->vals);
	m->keys = nk;
	m->vals = nv;
	m->cap = ncap;
	return 0;
}

void *abx_map_get(const abx_map *m, uint64_t k)
{
	if (!m->cap)
		return NULL;
	for (size_t i = mix64(k) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		if (!m->vals[i])
			return NULL;
		if (m->keys[i] == k)
			return m->vals[i];
	}
}

int abx_map_put(abx_map *m, uint64_t k, void *v)
{
	size_t i;
	if ((m->len + 1) * 2 > m->cap && map_grow(m) != 0)
		return -1;
	for (i = mix64(k) & (m->cap - 1); m->vals[i]; i = (i + 1) & (m->cap - 1))
		if (m->keys[i] == k)
			break;
	if (!m->vals[i])
		m->len++;
	m->keys[i] = k;
	m->vals[i] = v;
	return 0;
}

void abx_map_del(abx_map *m, uint64_t k)
{
	size_t i, j;
	if (!m->cap)
		return;
	for (i = mix64(k) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		if (!m->vals[i])
			return;
		if (m->keys[i] == k)
			break;
	}
	m->vals[i] = NULL;
	m->len--;
	/* backward-shift deletion keeps probe chains intact without tombstones */
	for (j = (i + 1) & (m->cap - 1); m->vals[j]; j = (j + 1) & (m->cap - 1)) {
		size_t home = mix64(m->keys[j]) & (m->cap - 1);
		if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
			m->keys[i] = m->keys[j];
			m->vals[i] = m->vals[j];
			m->vals[j] = NULL;
			i = j;
		}
	}
}

void abx_map_fini(abx_map *m)
{
	free(m->keys);
	free(m->vals);
	memset(m, 0, sizeof(*m));
}

uint64_t abx_id_key(const ackbox_id *id)
{
	uint64_t a, b;
	memcpy(&a, id->b, 8);
	memcpy(&b, id->b + 8, 8);
	return a ^ b;
}

int abx_heap_push(abx_heap *h, int64_t t)
{
	size_t i;
	if (h->n == h->cap) {
		size_t ncap = h->cap ? h->cap * 2 : 64;
		int64_t *n = realloc(h->v, ncap * sizeof(*n));
		if (!n)
			return -1;
		h->v = n;
		h->cap = ncap;
	}
	for (i = h->n++; i > 0 && h->v[(i - 1) / 2] > t; i = (i - 1) / 2)
		h->v[i] = h->v[(i - 1) / 2];
	h->v[i] = t;
	return 0;
}

void abx_heap_pop_until(abx_heap *h, int64_t t)
{
	while (h->n && h->v[0] <= t) {
		int64_t last = h->v[--h->n];
		size_t i = 0, c;
		while ((c = 2 * i + 1) < h->n) {
			if (c + 1 < h->n && h->v[c + 1] < h->v[c])
				c++;
			if (h->v[c] >= last)
				break;
			h->v[i] = h->v[c];
			i = c;
		}
		if (h->n)
			h->v[i] = last;
	}
}

void abx_heap_fini(abx_heap *h)
{
	free(h->v);
	memset(h, 0, sizeof(*h));
}
