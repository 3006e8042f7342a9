/*
 * pack_codec.h - the byte format of a packed batch's members (packed.c),
 * alone: no SQLite, so that tests/fuzz can drive the decoder directly.
 * Not installed.
 */
#ifndef ACKBOX_PACK_CODEC_H
#define ACKBOX_PACK_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include <ackbox/store.h>

/* Per member: id (16), created_ms (8), five little-endian u32 lengths (topic,
 * key, content_type or SQ_NO_LEN, headers, payload), then those bytes. */
#define SQ_MEMBER_HDR 44
#define SQ_NO_LEN 0xffffffffu /* content_type NULL */

uint32_t sq_get32(const uint8_t *p);
uint64_t sq_get64(const uint8_t *p);

/* Bytes member_put() writes for r. */
size_t sq_member_size(const ackbox_store_rec *r);

/* Writes r at p; returns the byte after it. */
uint8_t *sq_member_put(uint8_t *p, const ackbox_store_rec *r);

/*
 * Decodes the member at *off of a blob of len bytes into row (pointing into
 * the blob; topic and content_type are copied, NUL-terminated, into tbuf,
 * which must hold len - *off + 2 bytes; *tused says how many it took) and
 * moves *off past it. Returns 0, or -1 if the bytes do not parse; then
 * nothing is changed.
 */
int sq_member_get(const uint8_t *blob, size_t len, size_t *off, ackbox_store_row *row,
                  char *tbuf, size_t *tused);

/*
 * For a member at off that sq_member_get() refused: what is left of it.
 * Writes into why (one line) what is wrong: "N bytes left, the member
 * header needs 44" or "needs N bytes, M left (truncated)". If at least its
 * id is there, fills row with it and whatever else is whole (created_ms;
 * the topic if its bytes are there, else ""; the payload bytes that are
 * there), sets *declared_payload to the payload length its header gives
 * (0 if that is cut off too) and returns 1; returns 0 if not even the id
 * is there. tbuf as for sq_member_get().
 */
int sq_member_salvage(const uint8_t *blob, size_t len, size_t off, ackbox_store_row *row,
                      char *tbuf, uint32_t *declared_payload, char *why, size_t why_size);

#endif
