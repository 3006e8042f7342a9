/*
 * fuzz_headers.c - libFuzzer target for the decoder of header bytes read
 * back from a store (a damaged store must never crash the relay), and for
 * id parsing. Whatever decodes must re-encode to the same bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <ackbox/store.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	ackbox_header *h;
	size_t n;
	ackbox_id id;
	char text[64];
	if (ackbox_headers_decode(data, size, &h, &n) == 0 && n > 0) {
		size_t sz = ackbox_headers_encoded_size(h, n);
		uint8_t *again = malloc(sz);
		if (sz != size)
			abort();
		ackbox_headers_encode(h, n, again);
		if (memcmp(again, data, size) != 0)
			abort();
		free(again);
	}
	free(h);
	if (size >= 36) {
		memcpy(text, data, 36);
		text[36] = '\0';
		ackbox_id_parse(text, &id);
	}
	return 0;
}
