/*
 * ordercheck.h - what a consumer checks under delivery.order=key: per key,
 * the first delivery of each message comes in publish order (a duplicate of
 * an earlier one may follow). Tests publish payloads "k<key>:<seq>" with key
 * "k<key>" and seq 0, 1, 2... per key, and feed what arrives, in arrival
 * order, to tu_order_see().
 */
#ifndef ACKBOX_ORDERCHECK_H
#define ACKBOX_ORDERCHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TU_ORDER_MAX_KEYS 1024

typedef struct tu_order {
	int nkeys;
	int next[TU_ORDER_MAX_KEYS]; /* the seq whose first delivery is due next, per key */
	long dups;                   /* deliveries of a message seen before */
	long violations;             /* first deliveries ahead of their turn */
	char first_violation[160];
} tu_order;

static inline void tu_order_init(tu_order *o, int nkeys)
{
	memset(o, 0, sizeof(*o));
	o->nkeys = nkeys;
}

/* The payload and key texts of message seq of key k. */
static inline void tu_order_texts(int k, int seq, char *key, size_t ksz, char *payload,
                                  size_t psz)
{
	snprintf(key, ksz, "k%d", k);
	snprintf(payload, psz, "k%d:%d", k, seq);
}

/* One delivery, in arrival order. Returns 0, or -1 for a payload that is
 * not "k<key>:<seq>" (counted as a violation). */
static inline int tu_order_see(tu_order *o, const void *payload, size_t len)
{
	char buf[64];
	int k, seq;
	if (len >= sizeof(buf))
		len = sizeof(buf) - 1;
	memcpy(buf, payload, len);
	buf[len] = '\0';
	if (sscanf(buf, "k%d:%d", &k, &seq) != 2 || k < 0 || k >= o->nkeys || seq < 0) {
		if (!o->violations++)
			snprintf(o->first_violation, sizeof(o->first_violation),
			         "unexpected payload '%s'", buf);
		return -1;
	}
	if (seq < o->next[k]) {
		o->dups++;
	} else if (seq == o->next[k]) {
		o->next[k]++;
	} else {
		if (!o->violations++)
			snprintf(o->first_violation, sizeof(o->first_violation),
			         "key k%d: first delivery of seq %d while seq %d had not arrived", k, seq,
			         o->next[k]);
		o->next[k] = seq + 1; /* go on from here, to count the rest */
	}
	return 0;
}

/* Messages whose first delivery was seen in order, over all keys. */
static inline long tu_order_in_order(const tu_order *o)
{
	long n = 0;
	for (int k = 0; k < o->nkeys; k++)
		n += o->next[k];
	return n;
}

#endif
