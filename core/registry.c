/*
 * registry.c - finds the plugin for a URL scheme among the built-in tables
 * and those registered at run time. A registered table is checked against
 * the ABI it claims and kept as a copy in which the slots of later minors
 * are NULL, so the core never calls a slot an older plugin does not have.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "registry.h"

#define MAX_EXTRA 16

/* The size of a table that ends with `slot`. */
#define END_OF(type, slot) (offsetof(type, slot) + sizeof(((type *)0)->slot))

/* The table size of each minor of the current major, oldest first: the
 * history in transport.h and store.h. Appending a slot adds a line here. */
static const size_t tx_minor_size[] = {
	END_OF(ackbox_transport_ops, close),    /* 1.0 */
	END_OF(ackbox_transport_ops, validate), /* 1.1 */
	END_OF(ackbox_transport_ops, validate), /* 1.2: ackbox_tx_info grew, not the table */
};
static const size_t st_minor_size[] = {
	END_OF(ackbox_store_ops, has_pending), /* 1.0 */
	END_OF(ackbox_store_ops, sync),        /* 1.1 */
	END_OF(ackbox_store_ops, force),       /* 1.2 */
	END_OF(ackbox_store_ops, aliases),     /* 1.3 */
	END_OF(ackbox_store_ops, usage),       /* 1.4 */
	END_OF(ackbox_store_ops, blocked_keys), /* 1.5 */
	END_OF(ackbox_store_ops, history),      /* 1.6 */
};
_Static_assert(sizeof(tx_minor_size) / sizeof(tx_minor_size[0]) ==
                   ACKBOX_ABI_MINOR(ACKBOX_TRANSPORT_ABI_VERSION) + 1,
               "every transport ABI minor needs its table size in tx_minor_size");
_Static_assert(sizeof(st_minor_size) / sizeof(st_minor_size[0]) ==
                   ACKBOX_ABI_MINOR(ACKBOX_STORE_ABI_VERSION) + 1,
               "every store ABI minor needs its table size in st_minor_size");
_Static_assert(END_OF(ackbox_transport_ops, validate) == sizeof(ackbox_transport_ops),
               "a transport slot was appended without a new ABI minor");
_Static_assert(END_OF(ackbox_store_ops, history) == sizeof(ackbox_store_ops),
               "a store slot was appended without a new ABI minor");

/*
 * Registered tables, normalised. An entry is written once, before the count
 * that publishes it grows under reg_mtx, and never moves: pointers to it stay
 * valid for the life of the process.
 */
static pthread_mutex_t reg_mtx = PTHREAD_MUTEX_INITIALIZER;
static ackbox_transport_ops extra_tx[MAX_EXTRA];
static ackbox_store_ops extra_st[MAX_EXTRA];
static size_t n_extra_tx, n_extra_st;

/*
 * A stage (plugin_load.c): while a plugin's entry point runs, what it
 * registers on this thread is held here and reaches the registry only if
 * all of it succeeded, so a plugin that fails half-way leaves nothing behind
 * and its shared object can be closed again.
 */
struct abx_reg_stage {
	ackbox_transport_ops tx[MAX_EXTRA];
	ackbox_store_ops st[MAX_EXTRA];
	size_t ntx, nst;
	int first_rc;       /* the first registration error, 0 if none */
	char first_err[256];
};
static _Thread_local abx_reg_stage *cur_stage;

static int tx_has_scheme(const ackbox_transport_ops *t, const char *scheme)
{
	for (const char *const *s = t->schemes; s && *s; s++)
		if (strcmp(*s, scheme) == 0)
			return 1;
	return 0;
}

static int st_has_scheme(const ackbox_store_ops *t, const char *scheme)
{
	if (strcmp(t->scheme, scheme) == 0)
		return 1;
	for (const char *const *s = t->aliases; s && *s; s++)
		if (strcmp(*s, scheme) == 0)
			return 1;
	return 0;
}

/* The transport serving scheme. Locks: reg_mtx held. */
static const ackbox_transport_ops *tx_find_locked(const char *scheme)
{
	for (size_t i = 0; ackbox__builtin_transports[i]; i++)
		if (tx_has_scheme(ackbox__builtin_transports[i], scheme))
			return ackbox__builtin_transports[i];
	for (size_t i = 0; i < n_extra_tx; i++)
		if (tx_has_scheme(&extra_tx[i], scheme))
			return &extra_tx[i];
	return NULL;
}

/* The store serving scheme. Locks: reg_mtx held. */
static const ackbox_store_ops *st_find_locked(const char *scheme)
{
	for (size_t i = 0; ackbox__builtin_stores[i]; i++)
		if (st_has_scheme(ackbox__builtin_stores[i], scheme))
			return ackbox__builtin_stores[i];
	for (size_t i = 0; i < n_extra_st; i++)
		if (st_has_scheme(&extra_st[i], scheme))
			return &extra_st[i];
	return NULL;
}

const ackbox_transport_ops *abx_transport_find(const char *scheme)
{
	const ackbox_transport_ops *found;
	if (!scheme)
		return NULL;
	pthread_mutex_lock(&reg_mtx);
	found = tx_find_locked(scheme);
	pthread_mutex_unlock(&reg_mtx);
	return found;
}

const ackbox_store_ops *abx_store_find(const char *scheme)
{
	const ackbox_store_ops *found;
	if (!scheme)
		return NULL;
	pthread_mutex_lock(&reg_mtx);
	found = st_find_locked(scheme);
	pthread_mutex_unlock(&reg_mtx);
	return found;
}

/*
 * Checks an ABI word and struct_size against the current version `want`
 * and the table sizes of its minors. On success *table_size is the size of
 * the claimed minor's table: the bytes the core may read.
 */
static int abi_check(const char *what, uint32_t word, uint32_t want, uint32_t size,
                     const size_t *minor_size, size_t *table_size, char *errstr,
                     size_t errstr_size)
{
	uint32_t major = ACKBOX_ABI_MAJOR(word), minor = ACKBOX_ABI_MINOR(word);
	uint32_t want_major = ACKBOX_ABI_MAJOR(want), want_minor = ACKBOX_ABI_MINOR(want);

	if ((word >> 16) != ACKBOX_ABI_MAGIC) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s table has no ackbox ABI magic (0x%08x): not an ops table?", what,
		                  word);
		return ACKBOX_ERR_ABI;
	}
	if (major > want_major || (major == want_major && minor > want_minor)) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s ABI %u.%u of the plugin is newer than this ackbox's %s ABI %u.%u "
		                  "(ackbox %s): update ackbox, or build the plugin against this "
		                  "version's headers",
		                  what, major, minor, what, want_major, want_minor, ackbox_version());
		return ACKBOX_ERR_ABI;
	}
	if (major < want_major) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s ABI %u.%u of the plugin is older than this ackbox's %s ABI %u.%u "
		                  "and a different major: rebuild the plugin against this version's "
		                  "headers",
		                  what, major, minor, what, want_major, want_minor);
		return ACKBOX_ERR_ABI;
	}
	if (size < minor_size[minor]) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s table is %u bytes, too small for the %s ABI %u.%u it claims (%zu "
		                  "bytes)",
		                  what, size, what, major, minor, minor_size[minor]);
		return ACKBOX_ERR_ABI;
	}
	*table_size = minor_size[minor];
	return 0;
}

/* A transport table checked and copied into *out, later slots NULL. */
static int tx_normalise(const ackbox_transport_ops *ops, ackbox_transport_ops *out, char *errstr,
                        size_t errstr_size)
{
	size_t n;
	int rc;
	if (!ops) {
		ackbox_errstr_set(errstr, errstr_size, "NULL ops table");
		return ACKBOX_ERR_INVALID;
	}
	rc = abi_check("transport", ops->abi_version, ACKBOX_TRANSPORT_ABI_VERSION, ops->struct_size,
	               tx_minor_size, &n, errstr, errstr_size);
	if (rc)
		return rc;
	memset(out, 0, sizeof(*out));
	memcpy(out, ops, n);
	out->struct_size = (uint32_t)n;
	if (!out->schemes || !out->schemes[0] || !out->open || !out->connect || !out->send ||
	    !out->close) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "transport table lacks schemes, open, connect, send or close");
		return ACKBOX_ERR_INVALID;
	}
	return 0;
}

static int st_normalise(const ackbox_store_ops *ops, ackbox_store_ops *out, char *errstr,
                        size_t errstr_size)
{
	size_t n;
	int rc;
	if (!ops) {
		ackbox_errstr_set(errstr, errstr_size, "NULL ops table");
		return ACKBOX_ERR_INVALID;
	}
	rc = abi_check("store", ops->abi_version, ACKBOX_STORE_ABI_VERSION, ops->struct_size,
	               st_minor_size, &n, errstr, errstr_size);
	if (rc)
		return rc;
	memset(out, 0, sizeof(*out));
	memcpy(out, ops, n);
	out->struct_size = (uint32_t)n;
	if (!out->scheme || !out->open || !out->close || !out->insert || !out->claim ||
	    !out->apply || !out->recover || !out->counts || !out->list || !out->get ||
	    !out->requeue || !out->purge) {
		ackbox_errstr_set(errstr, errstr_size, "store table lacks a required function");
		return ACKBOX_ERR_INVALID;
	}
	if (!out->apply_noted != !out->history || !out->apply_noted != !out->force_noted) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "store table sets some of apply_noted, force_noted and history: the "
		                  "attempt history needs all three, or none");
		return ACKBOX_ERR_INVALID;
	}
	return 0;
}

/* Is scheme served by the transport in the stage st (NULL: none)? */
static int staged_tx(const abx_reg_stage *st, const char *scheme)
{
	for (size_t i = 0; st && i < st->ntx; i++)
		if (tx_has_scheme(&st->tx[i], scheme))
			return 1;
	return 0;
}

static int staged_st(const abx_reg_stage *st, const char *scheme)
{
	for (size_t i = 0; st && i < st->nst; i++)
		if (st_has_scheme(&st->st[i], scheme))
			return 1;
	return 0;
}

/* The first scheme of t that a transport already serves (or one staged in
 * st), or NULL. Locks: reg_mtx held. */
static const char *tx_taken_locked(const ackbox_transport_ops *t, const abx_reg_stage *st)
{
	for (const char *const *s = t->schemes; *s; s++)
		if (tx_find_locked(*s) || staged_tx(st, *s))
			return *s;
	return NULL;
}

/* The first of t's scheme and aliases that a store already serves (or one
 * staged in st). Locks: reg_mtx held. */
static const char *st_taken_locked(const ackbox_store_ops *t, const abx_reg_stage *st)
{
	if (st_find_locked(t->scheme) || staged_st(st, t->scheme))
		return t->scheme;
	for (const char *const *s = t->aliases; s && *s; s++)
		if (st_find_locked(*s) || staged_st(st, *s))
			return *s;
	return NULL;
}

/*
 * Appends a checked transport to the registry, or to the stage st if not
 * NULL (nothing is appended to the registry then); schemes must be free in
 * both. Locks: reg_mtx held.
 */
static int tx_add_locked(const ackbox_transport_ops *t, abx_reg_stage *st, char *errstr,
                         size_t errstr_size)
{
	const char *taken = tx_taken_locked(t, st);
	size_t *n = st ? &st->ntx : &n_extra_tx;
	if (taken) {
		ackbox_errstr_set(errstr, errstr_size, "transport scheme '%s' is already registered",
		                  taken);
		return ACKBOX_ERR_INVALID;
	}
	if (*n + (st ? n_extra_tx : 0) >= MAX_EXTRA) {
		ackbox_errstr_set(errstr, errstr_size, "too many registered transports (%d)",
		                  MAX_EXTRA);
		return ACKBOX_ERR_INVALID;
	}
	(st ? st->tx : extra_tx)[(*n)++] = *t;
	return 0;
}

/* The same for a store. Locks: reg_mtx held. */
static int st_add_locked(const ackbox_store_ops *t, abx_reg_stage *st, char *errstr,
                         size_t errstr_size)
{
	const char *taken = st_taken_locked(t, st);
	size_t *n = st ? &st->nst : &n_extra_st;
	if (taken) {
		ackbox_errstr_set(errstr, errstr_size, "store scheme '%s' is already registered",
		                  taken);
		return ACKBOX_ERR_INVALID;
	}
	if (*n + (st ? n_extra_st : 0) >= MAX_EXTRA) {
		ackbox_errstr_set(errstr, errstr_size, "too many registered stores (%d)", MAX_EXTRA);
		return ACKBOX_ERR_INVALID;
	}
	(st ? st->st : extra_st)[(*n)++] = *t;
	return 0;
}

/* Remembers the first failed registration of a stage: a plugin that
 * ignores the error still fails to load. */
static int stage_note(abx_reg_stage *st, int rc, const char *errstr)
{
	if (rc && st && !st->first_rc) {
		st->first_rc = rc;
		snprintf(st->first_err, sizeof(st->first_err), "%s", errstr ? errstr : "");
	}
	return rc;
}

int ackbox_transport_register(const ackbox_transport_ops *ops, char *errstr, size_t errstr_size)
{
	ackbox_transport_ops t;
	char why[256] = "";
	int rc = tx_normalise(ops, &t, why, sizeof(why));
	if (!rc) {
		pthread_mutex_lock(&reg_mtx);
		rc = tx_add_locked(&t, cur_stage, why, sizeof(why));
		pthread_mutex_unlock(&reg_mtx);
	}
	if (rc)
		ackbox_errstr_set(errstr, errstr_size, "%s", why);
	return stage_note(cur_stage, rc, why);
}

int ackbox_store_register(const ackbox_store_ops *ops, char *errstr, size_t errstr_size)
{
	ackbox_store_ops t;
	char why[256] = "";
	int rc = st_normalise(ops, &t, why, sizeof(why));
	if (!rc) {
		pthread_mutex_lock(&reg_mtx);
		rc = st_add_locked(&t, cur_stage, why, sizeof(why));
		pthread_mutex_unlock(&reg_mtx);
	}
	if (rc)
		ackbox_errstr_set(errstr, errstr_size, "%s", why);
	return stage_note(cur_stage, rc, why);
}

abx_reg_stage *abx_registry_stage_begin(void)
{
	abx_reg_stage *st = calloc(1, sizeof(*st));
	if (st)
		cur_stage = st;
	return st;
}

int abx_registry_stage_end(abx_reg_stage *st, int commit, char *errstr, size_t errstr_size)
{
	int rc = 0;
	cur_stage = NULL;
	if (!commit) {
		free(st);
		return 0;
	}
	if (st->first_rc) {
		ackbox_errstr_set(errstr, errstr_size, "%s", st->first_err);
		rc = st->first_rc;
	} else if (st->ntx + st->nst == 0) {
		ackbox_errstr_set(errstr, errstr_size, "it registered no transport and no store");
		rc = ACKBOX_ERR_INVALID;
	}
	/* another thread may have taken a scheme since: check again, then add
	 * all or nothing */
	pthread_mutex_lock(&reg_mtx);
	for (size_t i = 0; !rc && i < st->ntx; i++) {
		const char *taken = tx_taken_locked(&st->tx[i], NULL);
		if (taken) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "transport scheme '%s' is already registered", taken);
			rc = ACKBOX_ERR_INVALID;
		}
	}
	for (size_t i = 0; !rc && i < st->nst; i++) {
		const char *taken = st_taken_locked(&st->st[i], NULL);
		if (taken) {
			ackbox_errstr_set(errstr, errstr_size, "store scheme '%s' is already registered",
			                  taken);
			rc = ACKBOX_ERR_INVALID;
		}
	}
	if (!rc && (n_extra_tx + st->ntx > MAX_EXTRA || n_extra_st + st->nst > MAX_EXTRA)) {
		ackbox_errstr_set(errstr, errstr_size, "too many registered plugins (%d of a kind)",
		                  MAX_EXTRA);
		rc = ACKBOX_ERR_INVALID;
	}
	for (size_t i = 0; !rc && i < st->ntx; i++)
		extra_tx[n_extra_tx++] = st->tx[i];
	for (size_t i = 0; !rc && i < st->nst; i++)
		extra_st[n_extra_st++] = st->st[i];
	pthread_mutex_unlock(&reg_mtx);
	free(st);
	return rc;
}

/* Visits every plugin: (scheme, props, caps). */
static int visit(int (*fn)(const char *scheme, const ackbox_prop *props, uint32_t caps, void *o),
                 void *o)
{
	const ackbox_transport_ops *tx[64];
	const ackbox_store_ops *st[64];
	size_t ntx = 0, nst = 0;
	for (size_t i = 0; ackbox__builtin_transports[i] && ntx < 64 - MAX_EXTRA; i++)
		tx[ntx++] = ackbox__builtin_transports[i];
	for (size_t i = 0; ackbox__builtin_stores[i] && nst < 64 - MAX_EXTRA; i++)
		st[nst++] = ackbox__builtin_stores[i];
	pthread_mutex_lock(&reg_mtx);
	for (size_t i = 0; i < n_extra_tx; i++)
		tx[ntx++] = &extra_tx[i];
	for (size_t i = 0; i < n_extra_st; i++)
		st[nst++] = &extra_st[i];
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
