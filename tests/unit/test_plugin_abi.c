/*
 * test_plugin_abi.c - the append-only ABI promise of plugin.h: a table of
 * an older minor is accepted and the core never calls a slot that minor
 * lacks (each such slot here is a trap that counts its calls); a newer
 * minor, another major, a table too small for its minor, or garbage is
 * refused, naming both versions.
 */
#include "testutil.h"

#include <poll.h>
#include <stdatomic.h>

#include <ackbox/store.h>
#include <ackbox/transport.h>

#define END_OF(type, slot) (offsetof(type, slot) + sizeof(((type *)0)->slot))

static atomic_int trap_calls;

/* ---- a minimal transport that confirms every message at once ---- */

typedef struct mini_ctx {
	ackbox_tx_host *host;
} mini_ctx;

static int mini_open(void *ctx, const ackbox_url *url, ackbox_tx_host *host, ackbox_tx_info *info,
                     char *errstr, size_t errstr_size)
{
	(void)url;
	(void)errstr;
	(void)errstr_size;
	((mini_ctx *)ctx)->host = host;
	info->max_inflight = 64;
	return 0;
}

static int mini_connect(void *ctx, int timeout_ms, char *errstr, size_t errstr_size)
{
	(void)ctx;
	(void)timeout_ms;
	(void)errstr;
	(void)errstr_size;
	return 0;
}

static int mini_send(void *ctx, const ackbox_tx_msg *m)
{
	ackbox_tx_event ev = {ACKBOX_TX_ACK, m->token, 0, 0, NULL};
	ackbox_tx_report(((mini_ctx *)ctx)->host, &ev);
	return ACKBOX_TX_SENT;
}

static int mini_poll(void *ctx, int timeout_ms)
{
	struct pollfd p = {ackbox_tx_wake_fd(((mini_ctx *)ctx)->host), POLLIN, 0};
	poll(&p, 1, timeout_ms);
	return 0;
}

static void mini_close(void *ctx)
{
	(void)ctx;
}

/* The trap in the slot a 1.0 table does not have: it would refuse everything. */
static int trap_validate(void *ctx, const ackbox_tx_msg *m, char *errstr, size_t errstr_size)
{
	(void)ctx;
	(void)m;
	atomic_fetch_add(&trap_calls, 1);
	ackbox_errstr_set(errstr, errstr_size, "trap: validate is not part of transport ABI 1.0");
	return ACKBOX_ERR_INVALID;
}

static const char *const mini_schemes[] = {"abitest", NULL};

/* A transport table as a plugin built against a header of the given minor
 * would make it: struct_size ends where that minor ends. The memory after it
 * holds a trap, as a plugin's next static variable might. */
static ackbox_transport_ops mini_table(uint32_t minor)
{
	ackbox_transport_ops t = {
	    .abi_version = ACKBOX_ABI_VERSION(1, minor),
	    .struct_size = (uint32_t)(minor == 0 ? END_OF(ackbox_transport_ops, close)
	                                         : sizeof(ackbox_transport_ops)),
	    .schemes = mini_schemes,
	    .ctx_size = sizeof(mini_ctx),
	    .description = "ABI test transport",
	    .open = mini_open,
	    .connect = mini_connect,
	    .send = mini_send,
	    .poll = mini_poll,
	    .close = mini_close,
	    .validate = trap_validate,
	};
	return t;
}

/* ---- trapped store slots ---- */

static int trap_sync(void *ctx, char *errstr, size_t errstr_size)
{
	(void)ctx;
	atomic_fetch_add(&trap_calls, 1);
	ackbox_errstr_set(errstr, errstr_size, "trap: sync is not part of store ABI 1.0");
	return ACKBOX_ERR_STORE;
}

static int trap_force(void *ctx, const ackbox_store_change *c, int64_t now_ms, char *errstr,
                      size_t errstr_size)
{
	(void)ctx;
	(void)c;
	(void)now_ms;
	atomic_fetch_add(&trap_calls, 1);
	ackbox_errstr_set(errstr, errstr_size, "trap: force is not part of store ABI 1.0");
	return ACKBOX_ERR_STORE;
}

static const char *const trap_aliases[] = {"abitestalias", NULL};

static char *dir;

static void setup(void)
{
	dir = tu_tmpdir("abi");
	atomic_store(&trap_calls, 0);
}

static void teardown(void)
{
	tu_rmrf(dir);
	free(dir);
}

static int acked;
static void on_report(const ackbox_report *r, void *opaque)
{
	(void)opaque;
	if (r->state == ACKBOX_MSG_ACKED)
		acked++;
}

static ackbox *open_handle(const char *store_scheme, const char *transport_url)
{
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab = NULL;
	char url[1200], err[512];
	snprintf(url, sizeof(url), "%s://%s/outbox.db", store_scheme, dir);
	TU_SET(c, "store.url", url);
	TU_SET(c, "transport.url", transport_url);
	TU_SET(c, "log.level", "error");
	ackbox_conf_set_report_cb(c, on_report, NULL);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "ackbox_new: %s", err);
	return ab;
}

/* Publishes n messages on topic and waits until every one is acked. */
static void publish_and_flush(ackbox *ab, const char *topic, int n)
{
	char err[256];
	ackbox_msg m = {.topic = topic, .payload = "x", .payload_len = 1};
	acked = 0;
	for (int i = 0; i < n; i++)
		cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "publish: %s", err);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(acked, n);
}

/* "1.2" for an ABI word. */
static const char *ver(uint32_t word, char *buf)
{
	sprintf(buf, "%u.%u", ACKBOX_ABI_MAJOR(word), ACKBOX_ABI_MINOR(word));
	return buf;
}

TestSuite(abi, .init = setup, .fini = teardown);

Test(abi, transport_1_0_is_accepted_and_validate_never_called)
{
	char err[256] = "";
	ackbox_transport_ops t = mini_table(0);
	cr_assert_eq(ackbox_transport_register(&t, err, sizeof(err)), 0, "%s", err);
	ackbox *ab = open_handle("sqlite", "abitest://nowhere");
	publish_and_flush(ab, "orders", 50);
	ackbox_destroy(ab);
	cr_assert_eq(atomic_load(&trap_calls), 0,
	             "the core called validate, a slot transport ABI 1.0 does not have");
}

Test(abi, transport_of_the_current_minor_has_validate_called)
{
	/* the counterpart: the same trap in a current table is called, so the
	 * test above would see a call if the core made one */
	char err[256] = "";
	ackbox_transport_ops t = mini_table(ACKBOX_ABI_MINOR(ACKBOX_TRANSPORT_ABI_VERSION));
	ackbox_msg m = {.topic = "orders", .payload = "x", .payload_len = 1};
	cr_assert_eq(ackbox_transport_register(&t, err, sizeof(err)), 0, "%s", err);
	ackbox *ab = open_handle("sqlite", "abitest://nowhere");
	cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), ACKBOX_ERR_INVALID);
	cr_assert(strstr(err, "trap"), "%s", err);
	cr_assert_gt(atomic_load(&trap_calls), 0);
	ackbox_destroy(ab);
}

Test(abi, store_1_0_is_accepted_without_sync_force_or_aliases)
{
	char err[256] = "";
	ackbox_id id;
	ackbox_msg m = {.topic = "orders", .payload = "x", .payload_len = 1};
	ackbox_store_ops old = *ackbox_store_lookup("sqlite");
	old.abi_version = ACKBOX_ABI_VERSION(1, 0);
	old.struct_size = (uint32_t)END_OF(ackbox_store_ops, has_pending);
	old.scheme = "abitestsqlite";
	old.sync = trap_sync; /* past the end of a 1.0 table */
	old.force = trap_force;
	old.aliases = trap_aliases;
	cr_assert_eq(ackbox_store_register(&old, err, sizeof(err)), 0, "%s", err);

	const ackbox_store_ops *seen = ackbox_store_lookup("abitestsqlite");
	cr_assert_not_null(seen);
	cr_assert_eq(seen->struct_size, END_OF(ackbox_store_ops, has_pending));
	cr_assert_null(seen->sync);
	cr_assert_null(seen->force);
	cr_assert_null(ackbox_store_lookup("abitestalias"), "an alias of a 1.0 table was honoured");

	ackbox *ab = open_handle("abitestsqlite", "loopback://abi");
	publish_and_flush(ab, "orders", 50); /* insert, claim, apply, has_pending */
	/* fail needs force: "not supported", never the trap */
	cr_assert_eq(ackbox_publish(ab, &m, &id, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(ackbox_fail(ab, &id, "operator", err, sizeof(err)), ACKBOX_ERR_INVALID);
	cr_assert(strstr(err, "cannot change"), "%s", err);
	ackbox_destroy(ab);
	cr_assert_eq(atomic_load(&trap_calls), 0,
	             "the core called sync or force, slots store ABI 1.0 does not have");
}

Test(abi, store_aliases_are_served_and_reserved)
{
	char err[256] = "";
	ackbox_store_ops s = *ackbox_store_lookup("sqlite");
	s.scheme = "abitestsqlite";
	s.aliases = trap_aliases;
	cr_assert_eq(ackbox_store_register(&s, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_store_lookup("abitestalias"), ackbox_store_lookup("abitestsqlite"));
	ackbox_store_ops other = *ackbox_store_lookup("sqlite");
	other.scheme = "abitestalias";
	other.aliases = NULL;
	cr_assert_eq(ackbox_store_register(&other, err, sizeof(err)), ACKBOX_ERR_INVALID);
	cr_assert(strstr(err, "abitestalias") && strstr(err, "already"), "%s", err);
}

Test(abi, newer_minor_is_refused_naming_both_versions)
{
	char err[256] = "", mine[16], theirs[16];
	ackbox_transport_ops t = mini_table(ACKBOX_ABI_MINOR(ACKBOX_TRANSPORT_ABI_VERSION));
	t.abi_version = ACKBOX_TRANSPORT_ABI_VERSION + 1;
	cr_assert_eq(ackbox_transport_register(&t, err, sizeof(err)), ACKBOX_ERR_ABI);
	cr_assert(strstr(err, ver(t.abi_version, theirs)) &&
	              strstr(err, ver(ACKBOX_TRANSPORT_ABI_VERSION, mine)) && strstr(err, "newer"),
	          "%s", err);

	ackbox_store_ops s = *ackbox_store_lookup("sqlite");
	s.scheme = "abitestsqlite";
	s.abi_version = ACKBOX_STORE_ABI_VERSION + 1;
	s.struct_size = sizeof(s) + sizeof(void *);
	cr_assert_eq(ackbox_store_register(&s, err, sizeof(err)), ACKBOX_ERR_ABI);
	cr_assert(strstr(err, ver(s.abi_version, theirs)) &&
	              strstr(err, ver(ACKBOX_STORE_ABI_VERSION, mine)) && strstr(err, "newer"),
	          "%s", err);
	cr_assert_null(ackbox_store_lookup("abitestsqlite"));
}

Test(abi, other_majors_are_refused)
{
	char err[256] = "";
	ackbox_transport_ops t = mini_table(0);
	t.abi_version = ACKBOX_ABI_VERSION(2, 0);
	cr_assert_eq(ackbox_transport_register(&t, err, sizeof(err)), ACKBOX_ERR_ABI);
	cr_assert(strstr(err, "2.0") && strstr(err, "newer"), "%s", err);
	/* ackbox 0.1.0's headers said ACKBOX_ABI_WORD(1): 0.1, before minors */
	t.abi_version = ACKBOX_ABI_WORD(1);
	cr_assert_eq(ackbox_transport_register(&t, err, sizeof(err)), ACKBOX_ERR_ABI);
	cr_assert(strstr(err, "0.1") && strstr(err, "rebuild"), "%s", err);
}

Test(abi, table_smaller_than_its_minor_is_refused)
{
	char err[256] = "";
	ackbox_transport_ops t = mini_table(1);
	t.struct_size = (uint32_t)END_OF(ackbox_transport_ops, close);
	cr_assert_eq(ackbox_transport_register(&t, err, sizeof(err)), ACKBOX_ERR_ABI);
	cr_assert(strstr(err, "too small") && strstr(err, "1.1"), "%s", err);
}

Test(abi, garbage_and_duplicates_are_refused)
{
	ackbox_store_ops bogus;
	char err[256] = "";
	memset(&bogus, 0x5a, sizeof(bogus));
	cr_assert_eq(ackbox_store_register(&bogus, err, sizeof(err)), ACKBOX_ERR_ABI);
	cr_assert(strstr(err, "magic"), "%s", err);
	ackbox_store_ops dup = *ackbox_store_lookup("sqlite");
	cr_assert_eq(ackbox_store_register(&dup, err, sizeof(err)), ACKBOX_ERR_INVALID);
	cr_assert(strstr(err, "already"), "%s", err);
	ackbox_transport_ops t = mini_table(1);
	t.send = NULL;
	cr_assert_eq(ackbox_transport_register(&t, err, sizeof(err)), ACKBOX_ERR_INVALID);
	cr_assert(strstr(err, "send"), "%s", err);
}

static int trap_blocked_keys(void *ctx, size_t limit, ackbox_store_blocked_cb cb, void *opaque,
                             char *errstr, size_t errstr_size)
{
	(void)ctx, (void)limit, (void)cb, (void)opaque, (void)errstr, (void)errstr_size;
	atomic_fetch_add(&trap_calls, 1);
	return 0;
}

static int no_blocked(const ackbox_blocked_key *b, void *opaque)
{
	(void)b, (void)opaque;
	return 0;
}

Test(abi, store_1_4_cannot_keep_per_key_order)
{
	/* blocked_keys (1.5) is what promises the ordered claim: a 1.4 table
	 * with a pointer past its end neither gets called nor opens with
	 * delivery.order=key */
	char err[512] = "", url[1200];
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab = NULL;
	ackbox_store_ops old = *ackbox_store_lookup("sqlite");
	old.abi_version = ACKBOX_ABI_VERSION(1, 4);
	old.struct_size = (uint32_t)END_OF(ackbox_store_ops, usage);
	old.scheme = "abitestsqlite14";
	old.aliases = NULL;
	old.blocked_keys = trap_blocked_keys;
	cr_assert_eq(ackbox_store_register(&old, err, sizeof(err)), 0, "%s", err);
	cr_assert_null(ackbox_store_lookup("abitestsqlite14")->blocked_keys);

	snprintf(url, sizeof(url), "abitestsqlite14://%s/outbox.db", dir);
	TU_SET(c, "store.url", url);
	TU_SET(c, "delivery.order", "key");
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), ACKBOX_ERR_BAD_VALUE);
	cr_assert(strstr(err, "delivery.order=key") && strstr(err, "1.5"), "%s", err);
	TU_SET(c, "delivery.order", "none");
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_blocked_keys(ab, 0, no_blocked, NULL, err, sizeof(err)),
	             ACKBOX_ERR_INVALID);
	cr_assert(strstr(err, "cannot keep per-key order"), "%s", err);
	ackbox_destroy(ab);
	cr_assert_eq(atomic_load(&trap_calls), 0, "the core called blocked_keys of a 1.4 table");
}

static int trap_usage(void *ctx, uint64_t *messages, uint64_t *bytes, char *errstr,
                      size_t errstr_size)
{
	(void)ctx;
	*messages = *bytes = 0; /* "empty": a bound that believed it would never refuse */
	atomic_fetch_add(&trap_calls, 1);
	ackbox_errstr_set(errstr, errstr_size, "trap: usage is not part of store ABI 1.3");
	return 0;
}

/*
 * A store of ABI 1.3 has no usage op: store.max_messages counts with its
 * counts() (and holds), store.max_bytes is refused naming the store, and the
 * slot past its table is never called.
 */
Test(abi, store_1_3_bounds_messages_with_counts_and_refuses_max_bytes)
{
	char err[512] = "", url[1200];
	ackbox_store_ops old = *ackbox_store_lookup("sqlite");
	old.abi_version = ACKBOX_ABI_VERSION(1, 3);
	old.struct_size = (uint32_t)END_OF(ackbox_store_ops, aliases);
	old.scheme = "abitestsqlite13";
	old.aliases = NULL;
	old.usage = trap_usage;
	cr_assert_eq(ackbox_store_register(&old, err, sizeof(err)), 0, "%s", err);
	cr_assert_null(ackbox_store_lookup("abitestsqlite13")->usage);

	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab = NULL;
	snprintf(url, sizeof(url), "abitestsqlite13://%s/outbox.db", dir);
	TU_SET(c, "store.url", url);
	TU_SET(c, "store.max_bytes", "1000");
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), ACKBOX_ERR_BAD_VALUE);
	cr_assert(strstr(err, "store.max_bytes") && strstr(err, "abitestsqlite13"), "%s", err);
	ackbox_conf_destroy(c);

	c = ackbox_conf_new();
	TU_SET(c, "store.url", url);
	TU_SET(c, "store.max_messages", "3");
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	ackbox_msg m = {.topic = "orders", .payload = "x", .payload_len = 1};
	for (int i = 0; i < 3; i++)
		cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_publish(ab, &m, NULL, err, sizeof(err)), ACKBOX_ERR_FULL, "%s", err);
	ackbox_destroy(ab);
	cr_assert_eq(atomic_load(&trap_calls), 0, "the core called usage, a slot 1.3 lacks");
}
