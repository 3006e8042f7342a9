/*
 * pack_codec.c - encoding and decoding of a packed batch's members (the
 * format is in pack_codec.h), and what can be saved of a damaged one.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "pack_codec.h"

static uint8_t *put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		*p++ = (uint8_t)(v >> (8 * i));
	return p;
}

static uint8_t *put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		*p++ = (uint8_t)(v >> (8 * i));
	return p;
}

uint32_t sq_get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint64_t sq_get64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

size_t sq_member_size(const ackbox_store_rec *r)
{
	return SQ_MEMBER_HDR + strlen(r->topic) + r->key_len +
	       (r->content_type ? strlen(r->content_type) : 0) + r->headers_len + r->payload_len;
}

uint8_t *sq_member_put(uint8_t *p, const ackbox_store_rec *r)
{
	size_t tl = strlen(r->topic), cl = r->content_type ? strlen(r->content_type) : 0;
	memcpy(p, r->id.b, 16);
	p = put64(p + 16, (uint64_t)r->created_ms);
	p = put32(p, (uint32_t)tl);
	p = put32(p, (uint32_t)r->key_len);
	p = put32(p, r->content_type ? (uint32_t)cl : SQ_NO_LEN);
	p = put32(p, (uint32_t)r->headers_len);
	p = put32(p, (uint32_t)r->payload_len);
	memcpy(p, r->topic, tl);
	p += tl;
	if (r->key_len)
		memcpy(p, r->key, r->key_len);
	p += r->key_len;
	if (cl)
		memcpy(p, r->content_type, cl);
	p += cl;
	if (r->headers_len)
		memcpy(p, r->headers, r->headers_len);
	p += r->headers_len;
	if (r->payload_len)
		memcpy(p, r->payload, r->payload_len);
	return p + r->payload_len;
}

/* The bytes a member's header says it takes (64 bits: five u32 cannot wrap). */
static uint64_t member_need(const uint8_t *p)
{
	uint32_t cl = sq_get32(p + 32);
	return (uint64_t)SQ_MEMBER_HDR + sq_get32(p + 24) + sq_get32(p + 28) +
	       (cl == SQ_NO_LEN ? 0 : cl) + sq_get32(p + 36) + sq_get32(p + 40);
}

int sq_member_get(const uint8_t *blob, size_t len, size_t *off, ackbox_store_row *row,
                  char *tbuf, size_t *tused)
{
	const uint8_t *p = blob + *off;
	size_t left = len - *off;
	uint32_t tl, kl, cl, hl, pl;
	uint64_t need;

	if (*off > len || left < SQ_MEMBER_HDR)
		return -1;
	need = member_need(p);
	if (need > left)
		return -1;
	memset(row, 0, sizeof(*row));
	memcpy(row->id.b, p, 16);
	row->created_ms = (int64_t)sq_get64(p + 16);
	tl = sq_get32(p + 24);
	kl = sq_get32(p + 28);
	cl = sq_get32(p + 32);
	hl = sq_get32(p + 36);
	pl = sq_get32(p + 40);
	p += SQ_MEMBER_HDR;
	memcpy(tbuf, p, tl);
	tbuf[tl] = '\0';
	row->topic = tbuf;
	p += tl;
	row->key = kl ? p : NULL;
	row->key_len = kl;
	p += kl;
	if (cl != SQ_NO_LEN) {
		memcpy(tbuf + tl + 1, p, cl);
		tbuf[tl + 1 + cl] = '\0';
		row->content_type = tbuf + tl + 1;
		p += cl;
	}
	row->headers = hl ? p : NULL;
	row->headers_len = hl;
	p += hl;
	row->payload = p;
	row->payload_len = pl;
	row->state = ACKBOX_MSG_SENDING;
	row->updated_ms = row->created_ms;
	*off += (size_t)need;
	*tused = tl + 1 + (cl == SQ_NO_LEN ? 0 : (size_t)cl + 1);
	return 0;
}

int sq_member_salvage(const uint8_t *blob, size_t len, size_t off, ackbox_store_row *row,
                      char *tbuf, uint32_t *declared_payload, char *why, size_t why_size)
{
	const uint8_t *p = blob + off;
	size_t left = off <= len ? len - off : 0;
	uint32_t tl, kl, cl, hl;
	uint64_t before_payload;

	memset(row, 0, sizeof(*row));
	*declared_payload = 0;
	row->topic = "";
	row->payload = "";
	row->state = ACKBOX_MSG_FAILED;
	if (left < SQ_MEMBER_HDR) {
		snprintf(why, why_size, "%zu bytes left, the member header needs %d", left,
		         SQ_MEMBER_HDR);
		if (left < 16)
			return 0;
		memcpy(row->id.b, p, 16);
		if (left >= 24)
			row->created_ms = (int64_t)sq_get64(p + 16);
		return 1;
	}
	snprintf(why, why_size, "needs %" PRIu64 " bytes, %zu left (truncated)", member_need(p),
	         left);
	memcpy(row->id.b, p, 16);
	row->created_ms = (int64_t)sq_get64(p + 16);
	row->updated_ms = row->created_ms;
	tl = sq_get32(p + 24);
	kl = sq_get32(p + 28);
	cl = sq_get32(p + 32);
	hl = sq_get32(p + 36);
	*declared_payload = sq_get32(p + 40);
	if ((uint64_t)SQ_MEMBER_HDR + tl <= left) {
		memcpy(tbuf, p + SQ_MEMBER_HDR, tl);
		tbuf[tl] = '\0';
		row->topic = tbuf;
	}
	/* the payload comes last: what is there of it is kept, for an operator */
	before_payload = (uint64_t)SQ_MEMBER_HDR + tl + kl + (cl == SQ_NO_LEN ? 0 : cl) + hl;
	if (before_payload <= left) {
		row->payload = p + before_payload;
		row->payload_len = left - (size_t)before_payload;
	}
	return 1;
}
