/*
 * fuzz_rows.c - libFuzzer target for the decoder of the SQLite store's
 * packed rows (store/sqlite/pack_codec.c): bytes read back from a file that
 * may be damaged must never crash the relay. Walks the input as the members
 * of a packed batch, as a claim does: each member that decodes must re-encode
 * to the same bytes and its headers go through ackbox_headers_decode; the
 * first that does not goes through the salvage a claim does before it fails
 * that member, which must stay inside the input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <ackbox/store.h>

#include "pack_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t off = 0;
	char *tbuf = malloc(size + 2);
	uint8_t *again = malloc(size ? size : 1);
	if (!tbuf || !again)
		abort();
	for (;;) {
		ackbox_store_row row;
		size_t tused, before = off;
		if (sq_member_get(data, size, &off, &row, tbuf, &tused) != 0) {
			uint32_t declared;
			char why[160];
			if (off != before)
				abort(); /* a refusal moves nothing */
			if (sq_member_salvage(data, size, off, &row, tbuf, &declared, why, sizeof(why)) &&
			    (const uint8_t *)row.payload >= data &&
			    (const uint8_t *)row.payload + row.payload_len > data + size)
				abort(); /* what is kept of a damaged member is inside the input */
			break;
		}
		if (off <= before || off > size)
			abort(); /* every member takes at least its header, within the input */
		ackbox_header *h = NULL;
		size_t nh = 0;
		if (ackbox_headers_decode(row.headers, row.headers_len, &h, &nh) == 0)
			free(h);
		/* a member re-encodes to its bytes (unless its topic or content type
		 * holds a NUL, which ackbox never writes: then it is shorter) */
		ackbox_store_rec rec = {row.id,         row.created_ms, 0,           row.topic,
		                        row.key,        row.key_len,    row.content_type,
		                        row.headers,    row.headers_len, row.payload, row.payload_len};
		size_t n = sq_member_size(&rec);
		if (n == off - before) {
			sq_member_put(again, &rec);
			if (memcmp(again, data + before, n) != 0)
				abort();
		} else if (n > off - before) {
			abort();
		}
	}
	free(again);
	free(tbuf);
	return 0;
}
