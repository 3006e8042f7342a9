/*
 * queues.c - the messages the relay holds in memory: an entry per message
 * (its data while it is queued or in flight), the ready queue, the suspect
 * queue, the list of entries going back to a queue, and the tokens of the
 * attempts in flight (a map and a send-order FIFO). Relay thread only.
 *
 * An entry lives while it is queued or in flight, or while a token still
 * points at it (refs): a superseded attempt keeps its token so that a late
 * confirm still acks the message.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay_int.h"

void abx_fresh_free(abx_fresh *f)
{
	free(f); /* one allocation holds the struct and every field */
}

/* Releases the message body; memory for fresh messages is handed back to
 * the publishers' reservation only here, which bounds RAM while the broker
 * is down. */
void abx_entry_drop_data(abx_relay *r, entry *e)
{
	if (!e->data)
		return;
	if (e->from_fresh) {
		abx_relay_unreserve(r, 1, e->data->payload_len);
		e->from_fresh = false;
	}
	abx_fresh_free(e->data);
	e->data = NULL;
}

static void entry_free(abx_relay *r, entry *e)
{
	assert(!e->key_held); /* released when it became WAITING or DONE */
	abx_map_del(&r->by_id, abx_id_key(&e->id));
	abx_entry_drop_data(r, e);
	if (e->pooled && r->nfree_entries < POOL_MAX) {
		e->next = r->free_entries;
		r->free_entries = e;
		r->nfree_entries++;
		return;
	}
	free(e); /* the topic lives in the same allocation */
}

/* Frees e once nothing refers to it and it is not queued or in flight. */
void abx_entry_maybe_free(abx_relay *r, entry *e)
{
	assert(e->refs >= 0);
	if (e->refs == 0 && (e->state == E_WAITING || e->state == E_DONE))
		entry_free(r, e);
}

entry *abx_entry_new(abx_relay *r, abx_fresh *data, int attempts, uint64_t lease)
{
	size_t tl = strlen(data->topic) + 1;
	bool pooled = tl <= ENTRY_TOPIC_MAX;
	entry *e;
	if (pooled && r->free_entries) {
		e = r->free_entries;
		r->free_entries = e->next;
		r->nfree_entries--;
	} else {
		/* not calloc: glibc's calloc skips the per-thread cache */
		e = malloc(sizeof(*e) + (pooled ? ENTRY_TOPIC_MAX : tl));
		if (!e)
			return NULL;
	}
	memset(e, 0, sizeof(*e));
	e->pooled = pooled;
	e->topic = memcpy(e + 1, data->topic, tl);
	if (abx_map_put(&r->by_id, abx_id_key(&data->id), e) != 0) {
		free(e);
		return NULL;
	}
	e->id = data->id;
	e->data = data;
	e->attempts = attempts;
	e->lease = lease;
	e->state = E_READY;
	return e;
}

void abx_ready_push_back(abx_relay *r, entry *e)
{
	e->next = NULL;
	e->state = E_READY;
	if (r->ready_tail)
		r->ready_tail->next = e;
	else
		r->ready_head = e;
	r->ready_tail = e;
	r->ready_len++;
}

void abx_ready_push_front(abx_relay *r, entry *e)
{
	e->state = E_READY;
	e->next = r->ready_head;
	r->ready_head = e;
	if (!r->ready_tail)
		r->ready_tail = e;
	r->ready_len++;
}

entry *abx_ready_pop(abx_relay *r)
{
	entry *e = r->ready_head;
	if (e) {
		r->ready_head = e->next;
		if (!r->ready_head)
			r->ready_tail = NULL;
		e->next = NULL;
		r->ready_len--;
	}
	return e;
}

void abx_susp_push_front(abx_relay *r, entry *e)
{
	e->state = E_READY;
	e->next = r->susp_head;
	r->susp_head = e;
	if (!r->susp_tail)
		r->susp_tail = e;
	r->susp_len++;
}

entry *abx_susp_pop(abx_relay *r)
{
	entry *e = r->susp_head;
	if (e) {
		r->susp_head = e->next;
		if (!r->susp_head)
			r->susp_tail = NULL;
		e->next = NULL;
		r->susp_len--;
	}
	return e;
}

/* Takes a READY entry out of whichever queue holds it. */
void abx_queue_unlink(abx_relay *r, entry *e)
{
	entry **head = e->suspect ? &r->susp_head : &r->ready_head;
	entry **tail = e->suspect ? &r->susp_tail : &r->ready_tail;
	size_t *len = e->suspect ? &r->susp_len : &r->ready_len;
	entry **pp = head, *prev = NULL;
	while (*pp && *pp != e) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	if (*pp) {
		*pp = e->next;
		if (*tail == e)
			*tail = prev;
		(*len)--;
	}
	e->next = NULL;
}

void abx_fifo_remove(abx_relay *r, tok *t)
{
	if (t->prev)
		t->prev->next = t->next;
	else
		r->fifo_head = t->next;
	if (t->next)
		t->next->prev = t->prev;
	else
		r->fifo_tail = t->prev;
	t->prev = t->next = NULL;
}

void abx_fifo_append(abx_relay *r, tok *t)
{
	t->next = NULL;
	t->prev = r->fifo_tail;
	if (r->fifo_tail)
		r->fifo_tail->next = t;
	else
		r->fifo_head = t;
	r->fifo_tail = t;
}

/* t stops counting as in flight: answered, lost, or timed out. */
void abx_tok_retire(abx_relay *r, tok *t)
{
	if (t->superseded)
		return; /* retired when it timed out */
	assert(r->live > 0);
	r->live--;
	if (t->probe) {
		assert(r->susp_live > 0);
		r->susp_live--;
	}
	if (t->isolated) {
		assert(r->isolated_live && r->live == 0); /* it went alone */
		r->isolated_live = false;
	}
}

/* Forgets a token; drops its reference on the entry. */
void abx_tok_drop(abx_relay *r, tok *t)
{
	entry *e = t->e;
	abx_tok_retire(r, t);
	abx_map_del(&r->tokens, t->token);
	abx_fifo_remove(r, t);
	if (e->cur_token == t->token)
		e->cur_token = 0;
	e->refs--;
	if (r->nfree_toks < POOL_MAX) {
		t->next = r->free_toks;
		r->free_toks = t;
		r->nfree_toks++;
	} else {
		free(t);
	}
	abx_entry_maybe_free(r, e);
}

/* A token from the pool or malloc, zeroed; NULL when out of memory. */
tok *abx_tok_alloc(abx_relay *r)
{
	tok *t = r->free_toks;
	if (t) {
		r->free_toks = t->next;
		r->nfree_toks--;
	} else if (!(t = malloc(sizeof(*t)))) {
		return NULL;
	}
	memset(t, 0, sizeof(*t));
	return t;
}

void abx_pools_free(abx_relay *r)
{
	entry *e, *en;
	tok *t, *tn;
	for (e = r->free_entries; e; e = en) {
		en = e->next;
		free(e);
	}
	for (t = r->free_toks; t; t = tn) {
		tn = t->next;
		free(t);
	}
	r->free_entries = NULL;
	r->free_toks = NULL;
	r->nfree_entries = r->nfree_toks = 0;
}

/*
 * e goes back to its queue (the suspect queue if it is a suspect) at the
 * next send round. Lost and refused attempts are reported one by one, in
 * any order: gathering them first lets abx_back_flush() put them back oldest
 * first, so a resend keeps the original order.
 */
void abx_back_add(abx_relay *r, entry *e)
{
	if (r->nback == r->cap_back) {
		size_t ncap = r->cap_back ? r->cap_back * 2 : 64;
		entry **n = realloc(r->back, ncap * sizeof(*n));
		if (!n) {
			/* out of memory: put it back at once, out of order */
			if (e->suspect)
				abx_susp_push_front(r, e);
			else
				abx_ready_push_front(r, e);
			return;
		}
		r->back = n;
		r->cap_back = ncap;
	}
	e->state = E_REQUEUE;
	e->refs++; /* the list holds it */
	r->back[r->nback++] = e;
}

static int entry_id_cmp(const void *a, const void *b)
{
	const entry *x = *(entry *const *)a, *y = *(entry *const *)b;
	return memcmp(&x->id, &y->id, sizeof(x->id));
}

/*
 * Puts the gathered entries back, oldest (lowest id) first: plain ones in
 * front of the ready queue, suspects merged into the suspect queue, which
 * stays in id order. Entries that reached an outcome meanwhile (a late
 * confirm from an earlier attempt) are only let go.
 */
void abx_back_flush(abx_relay *r)
{
	entry *sh = NULL, **st = &sh, *rh = NULL, **rt = &rh, *rlast = NULL;
	size_t nr = 0;
	if (!r->nback)
		return;
	qsort(r->back, r->nback, sizeof(*r->back), entry_id_cmp);
	for (size_t i = 0; i < r->nback; i++) {
		entry *e = r->back[i];
		e->refs--;
		if (e->state != E_REQUEUE) {
			abx_entry_maybe_free(r, e);
			continue;
		}
		e->state = E_READY;
		e->next = NULL;
		if (e->suspect) {
			*st = e;
			st = &e->next;
			r->susp_len++;
		} else {
			*rt = e;
			rt = &e->next;
			rlast = e;
			nr++;
		}
	}
	r->nback = 0;
	if (rh) {
		rlast->next = r->ready_head;
		if (!r->ready_head)
			r->ready_tail = rlast;
		r->ready_head = rh;
		r->ready_len += nr;
	}
	if (sh) {
		/* merge two lists sorted by id */
		entry *a = sh, *b = r->susp_head, *head = NULL, **tail = &head, *last = NULL;
		while (a || b) {
			entry **from = !b || (a && memcmp(&a->id, &b->id, sizeof(a->id)) <= 0) ? &a : &b;
			last = *from;
			*from = last->next;
			*tail = last;
			tail = &last->next;
		}
		*tail = NULL;
		r->susp_head = head;
		r->susp_tail = last;
	}
}

/* Copies a claimed row into a fresh-style block. */
abx_fresh *abx_fresh_from_row(const ackbox_store_row *row)
{
	size_t tl = strlen(row->topic) + 1;
	size_t cl = row->content_type ? strlen(row->content_type) + 1 : 0;
	abx_fresh *f = malloc(sizeof(*f) + tl + cl + row->key_len + row->headers_len +
	                      row->payload_len + 1);
	char *p;
	if (!f)
		return NULL;
	memset(f, 0, sizeof(*f));
	p = (char *)(f + 1);
	f->id = row->id;
	f->created_ms = row->created_ms;
	f->topic = memcpy(p, row->topic, tl);
	p += tl;
	if (cl) {
		f->content_type = memcpy(p, row->content_type, cl);
		p += cl;
	}
	if (row->key_len) {
		f->key = memcpy(p, row->key, row->key_len);
		f->key_len = row->key_len;
		p += row->key_len;
	}
	if (row->headers_len) {
		f->headers = memcpy(p, row->headers, row->headers_len);
		f->headers_len = row->headers_len;
		p += row->headers_len;
	}
	f->payload = p;
	if (row->payload_len)
		memcpy(p, row->payload, row->payload_len);
	f->payload_len = row->payload_len;
	return f;
}
