/*
 * idset.c - the ids of the messages one publish stored and has not yet
 * seen acked or FAILED, so that its counts are its own: reports for other
 * messages (left by a process that died) are told apart. Open addressing
 * with linear probing and backward-shift deletion (no tombstones); ids are
 * UUIDv7, whose last 8 bytes are random enough to hash on.
 */
#include <stdlib.h>
#include <string.h>

#include "publish.h"

static const ackbox_id empty;

static size_t home(const cli_idset *s, const ackbox_id *id)
{
	uint64_t h;
	memcpy(&h, id->b + 8, sizeof(h));
	h ^= h >> 29;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 32;
	return (size_t)h & (s->cap - 1);
}

static bool is_empty(const ackbox_id *id)
{
	return memcmp(id, &empty, sizeof(*id)) == 0;
}

static void put(cli_idset *s, const ackbox_id *id)
{
	size_t i = home(s, id);
	while (!is_empty(&s->slot[i]))
		i = (i + 1) & (s->cap - 1);
	s->slot[i] = *id;
	s->n++;
}

/* Doubles the table (load kept under one half). */
static bool grow(cli_idset *s)
{
	cli_idset bigger = {NULL, s->cap ? s->cap * 2 : 1024, 0};
	bigger.slot = calloc(bigger.cap, sizeof(*bigger.slot));
	if (!bigger.slot)
		return false;
	for (size_t i = 0; i < s->cap; i++)
		if (!is_empty(&s->slot[i]))
			put(&bigger, &s->slot[i]);
	free(s->slot);
	*s = bigger;
	return true;
}

bool cli_idset_add(cli_idset *s, const ackbox_id *id)
{
	if ((s->n + 1) * 2 > s->cap && !grow(s))
		return false;
	put(s, id);
	return true;
}

bool cli_idset_take(cli_idset *s, const ackbox_id *id)
{
	size_t i, j;
	if (!s->cap)
		return false;
	for (i = home(s, id); !is_empty(&s->slot[i]); i = (i + 1) & (s->cap - 1))
		if (memcmp(&s->slot[i], id, sizeof(*id)) == 0)
			break;
	if (is_empty(&s->slot[i]))
		return false;
	/* backward shift: move later members of the run into the hole when
	 * their home does not lie (cyclically) between the hole and them */
	for (j = (i + 1) & (s->cap - 1); !is_empty(&s->slot[j]); j = (j + 1) & (s->cap - 1)) {
		size_t h = home(s, &s->slot[j]);
		bool stays = i <= j ? (i < h && h <= j) : (i < h || h <= j);
		if (!stays) {
			s->slot[i] = s->slot[j];
			i = j;
		}
	}
	s->slot[i] = empty;
	s->n--;
	return true;
}

void cli_idset_each(const cli_idset *s, void (*fn)(const ackbox_id *id, void *opaque),
                    void *opaque)
{
	for (size_t i = 0; i < s->cap; i++)
		if (!is_empty(&s->slot[i]))
			fn(&s->slot[i], opaque);
}

void cli_idset_free(cli_idset *s)
{
	free(s->slot);
	memset(s, 0, sizeof(*s));
}
