/*
 * id.c - UUIDv7 message ids (RFC 9562): 48-bit Unix ms timestamp, then a
 * 12-bit counter that keeps ids from one process strictly increasing within
 * a millisecond, then 62 random bits.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "internal.h"

static pthread_mutex_t id_mtx = PTHREAD_MUTEX_INITIALIZER;
static int64_t id_last_ms;
static uint32_t id_counter;

/* Random bytes come from a pool refilled 4 KiB at a time: one getrandom()
 * per id cost a system call per message. A child of fork() must not reuse
 * its parent's pool (same ms, same counter, same bytes: the same id), so
 * the pool is emptied in the child. */
static uint8_t id_pool[4096];
static size_t id_pool_left;
static pthread_once_t id_once = PTHREAD_ONCE_INIT;

static void id_forget_pool(void)
{
	id_pool_left = 0;
}

static void id_init(void)
{
	pthread_atfork(NULL, NULL, id_forget_pool);
}

static void fill_random(uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t got = getrandom(p, n, 0);
		if (got <= 0)
			continue; /* EINTR; getrandom never fails otherwise once seeded */
		p += got;
		n -= (size_t)got;
	}
}

void ackbox_id_new(ackbox_id *out)
{
	uint8_t rnd[10];
	int64_t ms;
	uint32_t ctr;

	pthread_once(&id_once, id_init);
	pthread_mutex_lock(&id_mtx);
	if (id_pool_left < sizeof(rnd)) {
		fill_random(id_pool, sizeof(id_pool));
		id_pool_left = sizeof(id_pool);
	}
	memcpy(rnd, id_pool + sizeof(id_pool) - id_pool_left, sizeof(rnd));
	id_pool_left -= sizeof(rnd);
	ms = ackbox_wall_ms();
	if (ms <= id_last_ms) {
		/* Same millisecond (or the clock stepped back): count on from the
		 * last id so ordering holds; borrow the next ms when the 12-bit
		 * counter runs out. */
		ms = id_last_ms;
		if (++id_counter > 0xfff) {
			ms++;
			id_counter = rnd[0] & 0x3f; /* leave room to count */
		}
	} else {
		id_counter = rnd[0] & 0x3f;
	}
	id_last_ms = ms;
	ctr = id_counter;
	pthread_mutex_unlock(&id_mtx);

	out->b[0] = (uint8_t)(ms >> 40);
	out->b[1] = (uint8_t)(ms >> 32);
	out->b[2] = (uint8_t)(ms >> 24);
	out->b[3] = (uint8_t)(ms >> 16);
	out->b[4] = (uint8_t)(ms >> 8);
	out->b[5] = (uint8_t)ms;
	out->b[6] = (uint8_t)(0x70 | ((ctr >> 8) & 0x0f));
	out->b[7] = (uint8_t)ctr;
	out->b[8] = (uint8_t)(0x80 | (rnd[1] & 0x3f));
	memcpy(&out->b[9], &rnd[2], 7);
}

void ackbox_id_format(const ackbox_id *id, char out[ACKBOX_ID_STRLEN])
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;
	for (int i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[o++] = '-';
		out[o++] = hex[id->b[i] >> 4];
		out[o++] = hex[id->b[i] & 15];
	}
	out[o] = '\0';
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int ackbox_id_parse(const char *text, ackbox_id *out)
{
	int i = 0;
	if (!text || !out)
		return ACKBOX_ERR_INVALID;
	for (size_t p = 0; p < 36; p++) {
		if (p == 8 || p == 13 || p == 18 || p == 23) {
			if (text[p] != '-')
				return ACKBOX_ERR_INVALID;
			continue;
		}
		int hi = hexval(text[p]), lo;
		if (hi < 0)
			return ACKBOX_ERR_INVALID;
		p++;
		lo = hexval(text[p]);
		if (lo < 0)
			return ACKBOX_ERR_INVALID;
		out->b[i++] = (uint8_t)(hi << 4 | lo);
	}
	if (text[36] != '\0')
		return ACKBOX_ERR_INVALID;
	return 0;
}

int64_t ackbox_id_time_ms(const ackbox_id *id)
{
	int64_t ms = 0;
	for (int i = 0; i < 6; i++)
		ms = (ms << 8) | id->b[i];
	return ms;
}
