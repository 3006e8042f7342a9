/*
 * headers.c - the byte format application headers take in a store, and its
 * decoder, which must survive any bytes a damaged store hands back.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

size_t ackbox_headers_encoded_size(const ackbox_header *h, size_t n)
{
	size_t sz = 4;
	if (!h || n == 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		sz += 8 + strlen(h[i].name) + h[i].value_len;
	return sz;
}

void ackbox_headers_encode(const ackbox_header *h, size_t n, uint8_t *out)
{
	uint8_t *p = out;
	if (!h || n == 0)
		return;
	put32(p, (uint32_t)n);
	p += 4;
	for (size_t i = 0; i < n; i++) {
		size_t nl = strlen(h[i].name);
		put32(p, (uint32_t)nl);
		memcpy(p + 4, h[i].name, nl);
		p += 4 + nl;
		put32(p, (uint32_t)h[i].value_len);
		if (h[i].value_len)
			memcpy(p + 4, h[i].value, h[i].value_len);
		p += 4 + h[i].value_len;
	}
}

int ackbox_headers_decode(const void *buf, size_t len, ackbox_header **out, size_t *n_out)
{
	const uint8_t *p = buf, *end = p + len;
	uint32_t n;
	size_t strbytes = 0;
	ackbox_header *hs;
	char *text;

	if (!out || !n_out)
		return ACKBOX_ERR_INVALID;
	*out = NULL;
	*n_out = 0;
	if (!buf || len == 0)
		return 0;
	if (len < 4)
		return ACKBOX_ERR_STORE_CORRUPT;
	n = get32(p);
	p += 4;
	/* First pass: validate every length against the buffer before allocating,
	 * so a corrupt count cannot make us allocate or read wildly. */
	if (n == 0 || n > (len - 4) / 8)
		return ACKBOX_ERR_STORE_CORRUPT;
	for (uint32_t i = 0; i < n; i++) {
		for (int part = 0; part < 2; part++) {
			uint32_t l;
			if ((size_t)(end - p) < 4)
				return ACKBOX_ERR_STORE_CORRUPT;
			l = get32(p);
			p += 4;
			if ((size_t)(end - p) < l)
				return ACKBOX_ERR_STORE_CORRUPT;
			if (part == 0 && (l == 0 || memchr(p, '\0', l)))
				return ACKBOX_ERR_STORE_CORRUPT;
			p += l;
			strbytes += (size_t)l + 1;
		}
	}
	if (p != end)
		return ACKBOX_ERR_STORE_CORRUPT;

	hs = malloc(n * sizeof(*hs) + strbytes);
	if (!hs)
		return ACKBOX_ERR_NOMEM;
	text = (char *)(hs + n);
	p = (const uint8_t *)buf + 4;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t l = get32(p);
		memcpy(text, p + 4, l);
		text[l] = '\0';
		hs[i].name = text;
		text += l + 1;
		p += 4 + l;
		l = get32(p);
		memcpy(text, p + 4, l);
		text[l] = '\0';
		hs[i].value = text;
		hs[i].value_len = l;
		text += l + 1;
		p += 4 + l;
	}
	*out = hs;
	*n_out = n;
	return 0;
}
