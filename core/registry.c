/*
 * registry.c - finds the plugin for a URL scheme among the built-in tables
 * and those registered at run time, after checking their ABI word and size.
 */
#include <pthread.h>
#include <string.h>

#include "internal.h"
#include "registry.h"

#define MAX_EXTRA 16

static pthread_mutex_t reg_mtx = PTHREAD_MUTEX_INITIALIZER;
static const ackbox_transport_ops *extra_tx[MAX_EXTRA];
static const ackbox_store_ops *extra_st[MAX_EXTRA];

static int tx_has_scheme(const ackbox_transport_ops *t, const char *scheme)
{
	for (const char *const *s = t->schemes; s && *s; s++)
		if (strcmp(*s, scheme) == 0)
			return 1;
	return 0;
}

const ackbox_transport_ops *abx_transport_find(const char *scheme)
{
	const ackbox_transport_ops *found = NULL;
	if (!scheme)
		return NULL;
	for (size_t i = 0; ackbox__builtin_transports[i]; i++)
		if (tx_has_scheme(ackbox__builtin_transports[i], scheme))
			return ackbox__builtin_transports[i];
	pthread_mutex_lock(&reg_mtx);
	for (size_t i = 0; i < MAX_EXTRA && extra_tx[i] && !found; i++)
		if (tx_has_scheme(extra_tx[i], scheme))
			found = extra_tx[i];
	pthread_mutex_unlock(&reg_mtx);
	return found;
}

const ackbox_store_ops *abx_store_find(const char *scheme)
{
	const ackbox_store_ops *found = NULL;
	if (!scheme)
		return NULL;
	for (size_t i = 0; ackbox__builtin_stores[i]; i++)
		if (strcmp(ackbox__builtin_stores[i]->scheme, scheme) == 0)
			return ackbox__builtin_stores[i];
	/* "postgresql://" is the libpq spelling of "postgres://" */
	if (strcmp(scheme, "postgresql") == 0)
		return abx_store_find("postgres");
	pthread_mutex_lock(&reg_mtx);
	for (size_t i = 0; i < MAX_EXTRA && extra_st[i] && !found; i++)
		if (strcmp(extra_st[i]->scheme, scheme) == 0)
			found = extra_st[i];
	pthread_mutex_unlock(&reg_mtx);
	return found;
}

static int abi_check(uint32_t word, uint32_t want, uint32_t size, size_t min_size, char *errstr,
                     size_t errstr_size)
{
	if ((word >> 16) != ACKBOX_ABI_MAGIC) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "plugin table has no ackbox ABI magic (0x%08x): not an ops table?",
		                  word);
		return ACKBOX_ERR_ABI;
	}
	if ((word & 0xffff) > (want & 0xffff) || (word & 0xffff) == 0) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "plugin ABI version %u is newer than this ackbox (%u)", word & 0xffff,
		                  want & 0xffff);
		return ACKBOX_ERR_ABI;
	}
	if (size < min_size) {
		ackbox_errstr_set(errstr, errstr_size, "plugin table too small (%u < %zu bytes)",
		                  size, min_size);
		return ACKBOX_ERR_ABI;
	}
	return 0;
}

int ackbox_transport_register(const ackbox_transport_ops *ops, char *errstr, size_t errstr_size)
{
	int rc;
	if (!ops) {
		ackbox_errstr_set(errstr, errstr_size, "NULL ops table");
		return ACKBOX_ERR_INVALID;
	}
	rc = abi_check(ops->abi_version, ACKBOX_TRANSPORT_ABI_VERSION, ops->struct_size,
	               sizeof(ackbox_transport_ops), errstr, errstr_size);
	if (rc)
		return rc;
	if (!ops->schemes || !ops->schemes[0] || !ops->open || !ops->connect || !ops->send ||
	    !ops->close) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "transport table lacks schemes, open, connect, send or close");
		return ACKBOX_ERR_INVALID;
	}
	for (const char *const *s = ops->schemes; *s; s++) {
		if (abx_transport_find(*s)) {
			ackbox_errstr_set(errstr, errstr_size, "scheme '%s' is already registered", *s);
			return ACKBOX_ERR_INVALID;
		}
	}
	pthread_mutex_lock(&reg_mtx);
	for (size_t i = 0; i < MAX_EXTRA; i++) {
		if (!extra_tx[i]) {
			extra_tx[i] = ops;
			pthread_mutex_unlock(&reg_mtx);
			return 0;
		}
	}
	pthread_mutex_unlock(&reg_mtx);
	ackbox_errstr_set(errstr, errstr_size, "too many registered transports");
	return ACKBOX_ERR_INVALID;
}

int ackbox_store_register(const ackbox_store_ops *ops, char *errstr, size_t errstr_size)
{
	int rc;
	if (!ops) {
		ackbox_errstr_set(errstr, errstr_size, "NULL ops table");
		return ACKBOX_ERR_INVALID;
	}
	rc = abi_check(ops->abi_version, ACKBOX_STORE_ABI_VERSION, ops->struct_size,
	               sizeof(ackbox_store_ops), errstr, errstr_size);
	if (rc)
		return rc;
	if (!ops->scheme || !ops->open || !ops->close || !ops->insert || !ops->claim ||
	    !ops->apply || !ops->recover || !ops->counts || !ops->list || !ops->get ||
	    !ops->requeue || !ops->purge) {
		ackbox_errstr_set(errstr, errstr_size, "store table lacks a required function");
		return ACKBOX_ERR_INVALID;
	}
	if (abx_store_find(ops->scheme)) {
		ackbox_errstr_set(errstr, errstr_size, "scheme '%s' is already registered",
		                  ops->scheme);
		return ACKBOX_ERR_INVALID;
	}
	pthread_mutex_lock(&reg_mtx);
	for (size_t i = 0; i < MAX_EXTRA; i++) {
		if (!extra_st[i]) {
			extra_st[i] = ops;
			pthread_mutex_unlock(&reg_mtx);
			return 0;
		}
	}
	pthread_mutex_unlock(&reg_mtx);
	ackbox_errstr_set(errstr, errstr_size, "too many registered stores");
	return ACKBOX_ERR_INVALID;
}

/* Visits every plugin: (scheme, props, caps). */
static int visit(int (*fn)(const char *scheme, const ackbox_prop *props, uint32_t caps, void *o),
                 void *o)
{
	const ackbox_transport_ops *tx[64];
	const ackbox_store_ops *st[64];
	size_t ntx = 0, nst = 0;
	for (size_t i = 0; ackbox__builtin_transports[i] && ntx < 64; i++)
		tx[ntx++] = ackbox__builtin_transports[i];
	for (size_t i = 0; ackbox__builtin_stores[i] && nst < 64; i++)
		st[nst++] = ackbox__builtin_stores[i];
	pthread_mutex_lock(&reg_mtx);
	for (size_t i = 0; i < MAX_EXTRA && extra_tx[i]; i++)
		tx[ntx++] = extra_tx[i];
	for (size_t i = 0; i < MAX_EXTRA && extra_st[i]; i++)
		st[nst++] = extra_st[i];
	pthread_mutex_unlock(&reg_mtx);
	for (size_t i = 0; i < ntx; i++)
		if (fn(tx[i]->schemes[0], tx[i]->props, tx[i]->caps, o))
			return 1;
	for (size_t i = 0; i < nst; i++)
		if (fn(st[i]->scheme, st[i]->props, st[i]->caps, o))
			return 1;
	return 0;
}

struct find_ctx {
	const char *key;
	const ackbox_prop *prop;
	const char *owner;
	int result;
};

static int find_fn(const char *scheme, const ackbox_prop *props, uint32_t caps, void *o)
{
	struct find_ctx *f = o;
	size_t sl = strlen(scheme);
	if (strncmp(f->key, scheme, sl) != 0 || f->key[sl] != '.')
		return 0;
	f->owner = scheme;
	for (const ackbox_prop *p = props; p && p->name; p++) {
		if (strcmp(p->name, f->key + sl + 1) == 0) {
			f->prop = p;
			f->result = 1;
			return 1;
		}
	}
	f->result = (caps & ACKBOX_PLUGIN_CAP_PASSTHROUGH_KEYS) && f->key[sl + 1] ? 1 : -1;
	return 1;
}

int abx_plugin_prop_find(const char *key, const ackbox_prop **prop, const char **owner)
{
	struct find_ctx f = {key, NULL, NULL, 0};
	visit(find_fn, &f);
	*prop = f.prop;
	*owner = f.owner;
	return f.result;
}

struct each_ctx {
	void (*cb)(const char *scheme, const ackbox_prop *p, void *opaque);
	void *opaque;
};

static int each_fn(const char *scheme, const ackbox_prop *props, uint32_t caps, void *o)
{
	struct each_ctx *e = o;
	ABX_UNUSED(caps);
	for (const ackbox_prop *p = props; p && p->name; p++)
		e->cb(scheme, p, e->opaque);
	return 0;
}

void abx_plugin_props_foreach(void (*cb)(const char *scheme, const ackbox_prop *p, void *opaque),
                              void *opaque)
{
	struct each_ctx e = {cb, opaque};
	visit(each_fn, &e);
}

const ackbox_store_ops *ackbox_store_lookup(const char *scheme)
{
	return abx_store_find(scheme);
}

const ackbox_transport_ops *ackbox_transport_lookup(const char *scheme)
{
	return abx_transport_find(scheme);
}
