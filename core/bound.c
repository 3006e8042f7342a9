/*
 * bound.c - the backlog bound: store.max_messages and store.max_bytes. The
 * group-commit leader asks before each commit whether a publisher's
 * messages fit; what does not fit is refused whole (store.full_policy=reject)
 * or waits for acks to make room (block), and is never stored.
 *
 * How much the store holds comes from the store (its usage op, else its
 * counts), not from a counter of this process, so the bound holds across
 * restarts and counts what other writers stored. Asking costs a query, so
 * the answer is kept and grown by what this handle commits: deletes only
 * shrink a store, so the kept figure stays an upper bound for a store this
 * handle alone writes. The store is asked again when a commit would not fit
 * by the kept figure, and at least every store.poll_interval, which bounds
 * what other writers can add unseen (docs/operations.md says by how much).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

int abx_bound_init(struct ackbox *ab, char *errstr, size_t errstr_size)
{
	abx_bound *b = &ab->bound;
	const char *policy = ackbox_conf_get(ab->conf, "store.full_policy");
	memset(b, 0, sizeof(*b));
	b->max_msgs = (uint64_t)abx_conf_int(ab->conf, "store.max_messages");
	b->max_bytes = (uint64_t)abx_conf_int(ab->conf, "store.max_bytes");
	b->block = policy && strcmp(policy, "block") == 0;
	b->timeout_ms = abx_conf_int(ab->conf, "store.full_timeout");
	b->refresh_ms = ab->store_poll_ms > 0 ? ab->store_poll_ms : 200;
	if (b->max_bytes && !ABX_HAS_SLOT(ab->store_ops, ackbox_store_ops, usage)) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "store.max_bytes: the %s store cannot measure the bytes it holds "
		                  "(its plugin has no usage op); use store.max_messages",
		                  ab->store_ops->scheme);
		return ACKBOX_ERR_BAD_VALUE;
	}
	return 0;
}

bool abx_bound_active(const struct ackbox *ab)
{
	return ab->bound.max_msgs || ab->bound.max_bytes;
}

/*
 * Asks the store what it holds; held_n/held_bytes were admitted to the commit
 * being prepared and are not in the store yet. Locks: the store lock held.
 */
static int ask_store(struct ackbox *ab, uint64_t held_n, uint64_t held_bytes, char *errstr,
                     size_t errstr_size)
{
	abx_bound *b = &ab->bound;
	uint64_t msgs = 0, bytes = 0;
	int rc;
	if (ABX_HAS_SLOT(ab->store_ops, ackbox_store_ops, usage)) {
		rc = ab->store_ops->usage(ab->store_ctx, &msgs, &bytes, errstr, errstr_size);
	} else {
		ackbox_counts c;
		rc = ab->store_ops->counts(ab->store_ctx, &c, errstr, errstr_size);
		msgs = c.sending + c.retrying + c.failed;
	}
	if (rc < 0)
		return rc;
	b->msgs = msgs + held_n;
	b->bytes = bytes + held_bytes;
	b->known_at_ms = ackbox_mono_ms();
	b->known = true;
	return 0;
}

static bool fits(const abx_bound *b, uint64_t n, uint64_t bytes)
{
	return (!b->max_msgs || b->msgs + n <= b->max_msgs) &&
	       (!b->max_bytes || b->bytes + bytes <= b->max_bytes);
}

int abx_bound_admit(struct ackbox *ab, uint64_t n, uint64_t bytes, uint64_t held_n,
                    uint64_t held_bytes, char *errstr, size_t errstr_size)
{
	abx_bound *b = &ab->bound;
	int rc;
	if (!abx_bound_active(ab))
		return ABX_BOUND_OK;
	if ((b->max_msgs && n > b->max_msgs) || (b->max_bytes && bytes > b->max_bytes)) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "publish: %" PRIu64 " message(s) of %" PRIu64 " payload bytes can "
		                  "never fit store.max_messages=%" PRIu64 " / store.max_bytes=%" PRIu64,
		                  n, bytes, b->max_msgs, b->max_bytes);
		return ABX_BOUND_NEVER;
	}
	if (!b->known || !fits(b, n, bytes) || ackbox_mono_ms() - b->known_at_ms >= b->refresh_ms) {
		rc = ask_store(ab, held_n, held_bytes, errstr, errstr_size);
		if (rc < 0)
			return rc;
	}
	if (!fits(b, n, bytes)) {
		if (b->max_msgs && b->msgs + n > b->max_msgs)
			ackbox_errstr_set(errstr, errstr_size,
			                  "publish: the store is full: it holds %" PRIu64 " message(s) and "
			                  "store.max_messages is %" PRIu64 "; nothing was stored (the "
			                  "broker is down or slow, or FAILED messages wait for an "
			                  "operator)",
			                  b->msgs, b->max_msgs);
		else
			ackbox_errstr_set(errstr, errstr_size,
			                  "publish: the store is full: it holds %" PRIu64 " payload bytes, "
			                  "%" PRIu64 " more would pass store.max_bytes=%" PRIu64
			                  "; nothing was stored",
			                  b->bytes, bytes, b->max_bytes);
		return ABX_BOUND_FULL;
	}
	b->msgs += n;
	b->bytes += bytes;
	return ABX_BOUND_OK;
}

void abx_bound_forget(struct ackbox *ab, uint64_t n, uint64_t bytes)
{
	/* a commit that failed may or may not have stored: ask next time */
	(void)n;
	(void)bytes;
	ab->bound.known = false;
}
