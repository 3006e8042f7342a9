/*
 * order.c - per-key order in the relay (delivery.order=key; see
 * docs/ordering.md). The store decides what may be sent: its ordered claim
 * hands out only the oldest message of a key. This file is the relay's own
 * guard on top: at most one message per key is queued, in flight or being
 * judged here at a time; another message of a key that is held is parked
 * until the holder is resolved (acked, failed, dropped, or back in the store
 * for a retry). It matters when the store's rule alone does not cover the
 * relay's memory: a message an operator deleted while it was in flight here.
 * Relay thread only.
 */
#define _GNU_SOURCE
#include <string.h>

#include "relay_int.h"

/* FNV-1a over the key bytes; never 0 (0 means "no key"). A collision only
 * makes two keys wait for each other here. */
static uint64_t key_hash(const void *key, size_t len)
{
	const unsigned char *p = key;
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h ? h : 1;
}

bool abx_order_admit(abx_relay *r, entry *e)
{
	entry *holder;
	if (!r->ab->ordered || !e->data || !e->data->key_len)
		return true;
	e->keyh = key_hash(e->data->key, e->data->key_len);
	holder = abx_map_get(&r->key_holder, e->keyh);
	if (holder == e)
		return true;
	if (!holder) {
		if (abx_map_put(&r->key_holder, e->keyh, e) != 0) {
			/* out of memory: hold the message back rather than risk the
			 * order; it is admitted when the next holder of any key goes */
			holder = NULL;
		} else {
			e->key_held = true;
			return true;
		}
	}
	e->state = E_PARKED;
	e->next = r->parked;
	r->parked = e;
	r->nparked++;
	return false;
}

/* Takes e out of the parked list (it reached an outcome through a late
 * confirm of an earlier attempt). */
void abx_order_unpark(abx_relay *r, entry *e)
{
	for (entry **pp = &r->parked; *pp; pp = &(*pp)->next) {
		if (*pp == e) {
			*pp = e->next;
			e->next = NULL;
			r->nparked--;
			return;
		}
	}
}

/* The oldest parked entry of keyh (any key if keyh is 0), taken out. */
static entry *unpark_oldest(abx_relay *r, uint64_t keyh)
{
	entry **best = NULL;
	for (entry **pp = &r->parked; *pp; pp = &(*pp)->next)
		if ((!keyh || (*pp)->keyh == keyh) &&
		    (!best || memcmp(&(*pp)->id, &(*best)->id, sizeof((*pp)->id)) < 0))
			best = pp;
	if (!best)
		return NULL;
	entry *e = *best;
	*best = e->next;
	e->next = NULL;
	r->nparked--;
	return e;
}

void abx_order_release(abx_relay *r, entry *e)
{
	entry *next;
	if (!e->key_held)
		return;
	e->key_held = false;
	abx_map_del(&r->key_holder, e->keyh);
	next = unpark_oldest(r, e->keyh);
	if (!next && r->nparked && !abx_map_get(&r->key_holder, r->parked->keyh))
		next = unpark_oldest(r, r->parked->keyh); /* one parked for want of memory */
	if (next && abx_order_admit(r, next))
		abx_enqueue_claimed(r, next);
}
