/*
 * test_plugin.c - shared objects for test_plugin_load.c, one per variant
 * (compiled with -DVARIANT_<NAME>): a good plugin (transport "loadtest",
 * which confirms every message at once, and store "loadstore", SQLite's
 * table under another name), one built for a newer ABI, one without the
 * entry point, one that fails half-way, one that ignores a failed
 * registration, one that registers nothing.
 */
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include <ackbox/store.h>
#include <ackbox/transport.h>

typedef struct lt_ctx {
	ackbox_tx_host *host;
} lt_ctx;

static const ackbox_prop lt_props[] = {
    {"window", ACKBOX_PROP_INT, "32", 1, 1000, NULL, "Unconfirmed messages at once."},
    {NULL, 0, NULL, 0, 0, NULL, NULL}};

static int lt_open(void *ctx, const ackbox_url *url, ackbox_tx_host *host, ackbox_tx_info *info,
                   char *errstr, size_t errstr_size)
{
	(void)url;
	(void)errstr;
	(void)errstr_size;
	((lt_ctx *)ctx)->host = host;
	info->max_inflight = (int)strtol(ackbox_conf_get(ackbox_tx_conf(host), "loadtest.window"),
	                                 NULL, 10);
	return 0;
}

static int lt_connect(void *ctx, int timeout_ms, char *errstr, size_t errstr_size)
{
	(void)ctx;
	(void)timeout_ms;
	(void)errstr;
	(void)errstr_size;
	return 0;
}

static int lt_send(void *ctx, const ackbox_tx_msg *m)
{
	ackbox_tx_event ev = {ACKBOX_TX_ACK, m->token, 0, 0, NULL};
	ackbox_tx_report(((lt_ctx *)ctx)->host, &ev);
	return ACKBOX_TX_SENT;
}

static int lt_poll(void *ctx, int timeout_ms)
{
	struct pollfd p = {ackbox_tx_wake_fd(((lt_ctx *)ctx)->host), POLLIN, 0};
	poll(&p, 1, timeout_ms);
	return 0;
}

static void lt_close(void *ctx)
{
	(void)ctx;
}

static const char *const lt_schemes[] = {"loadtest", NULL};

__attribute__((unused)) static ackbox_transport_ops lt_transport = {
    .abi_version = ACKBOX_TRANSPORT_ABI_VERSION,
    .struct_size = sizeof(ackbox_transport_ops),
    .schemes = lt_schemes,
    .ctx_size = sizeof(lt_ctx),
    .props = lt_props,
    .description = "test transport loaded from a shared object",
    .open = lt_open,
    .connect = lt_connect,
    .send = lt_send,
    .poll = lt_poll,
    .close = lt_close,
};

/* A store: SQLite's table (built in) under the scheme "loadstore". */
static ackbox_store_ops lt_store;

__attribute__((unused)) static int register_store(char *errstr, size_t errstr_size)
{
	const ackbox_store_ops *sqlite = ackbox_store_lookup("sqlite");
	if (!sqlite) {
		ackbox_errstr_set(errstr, errstr_size, "no sqlite store to wrap");
		return ACKBOX_ERR_INVALID;
	}
	lt_store = *sqlite;
	lt_store.scheme = "loadstore";
	lt_store.aliases = NULL;
	return ackbox_store_register(&lt_store, errstr, errstr_size);
}

#if defined(VARIANT_GOOD)
ACKBOX_PLUGIN_EXPORT int ackbox_plugin_entry(char *errstr, size_t errstr_size)
{
	int rc = ackbox_transport_register(&lt_transport, errstr, errstr_size);
	return rc ? rc : register_store(errstr, errstr_size);
}
#elif defined(VARIANT_NEWER)
/* built against a future header: one minor more than this ackbox serves */
ACKBOX_PLUGIN_EXPORT int ackbox_plugin_entry(char *errstr, size_t errstr_size)
{
	lt_transport.abi_version = ACKBOX_TRANSPORT_ABI_VERSION + 1;
	lt_transport.struct_size = sizeof(ackbox_transport_ops) + sizeof(void *);
	return ackbox_transport_register(&lt_transport, errstr, errstr_size);
}
#elif defined(VARIANT_NO_ENTRY)
ACKBOX_PLUGIN_EXPORT int ackbox_plugin_init(char *errstr, size_t errstr_size);
ACKBOX_PLUGIN_EXPORT int ackbox_plugin_init(char *errstr, size_t errstr_size)
{
	return ackbox_transport_register(&lt_transport, errstr, errstr_size);
}
#elif defined(VARIANT_HALF)
/* the transport registers, the store does not: neither may stay */
ACKBOX_PLUGIN_EXPORT int ackbox_plugin_entry(char *errstr, size_t errstr_size)
{
	int rc = ackbox_transport_register(&lt_transport, errstr, errstr_size);
	if (rc)
		return rc;
	lt_store = *ackbox_store_lookup("sqlite");
	lt_store.scheme = "loadstore";
	lt_store.abi_version = ACKBOX_ABI_VERSION(9, 0);
	return ackbox_store_register(&lt_store, errstr, errstr_size);
}
#elif defined(VARIANT_IGNORES)
/* a registration fails and the entry point says 0 anyway */
ACKBOX_PLUGIN_EXPORT int ackbox_plugin_entry(char *errstr, size_t errstr_size)
{
	ackbox_transport_register(&lt_transport, errstr, errstr_size);
	lt_transport.abi_version = ACKBOX_TRANSPORT_ABI_VERSION + 1;
	ackbox_transport_register(&lt_transport, errstr, errstr_size);
	return 0;
}
#elif defined(VARIANT_EMPTY)
ACKBOX_PLUGIN_EXPORT int ackbox_plugin_entry(char *errstr, size_t errstr_size)
{
	(void)errstr;
	(void)errstr_size;
	return 0;
}
#else
#error "define a VARIANT_*"
#endif
