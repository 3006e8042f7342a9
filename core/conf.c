/*
 * conf.c - string key/value configuration checked against a declarative
 * property table (the core's below, and every built plugin's), so a typo or
 * an out-of-range value is refused when it is set, naming the key.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "plugin_list.h" /* generated: every plugin folder's schemes */
#include "registry.h"

struct abx_kv {
	struct abx_kv *next;
	char *key;
	char *value;
};

#define MS_DAY (86400LL * 1000)

/* The core's properties. docs/configuration.md is generated from this table. */
static const ackbox_prop core_props[] = {
	{"store.url", ACKBOX_PROP_URL, NULL, 0, 0, NULL,
	 "Where messages are kept, e.g. sqlite:///var/lib/app/outbox.db (required). env:NAME "
	 "reads the URL from the environment variable NAME, file:PATH from the first line of "
	 "the file PATH, so a password stays off the command line."},
	{"store.sync", ACKBOX_PROP_ENUM, "full", 0, 0, "full|normal|off",
	 "full: publish returns after fsync; normal: survives a process crash but not a power "
	 "loss; off: no guarantee (tests only)."},
	{"store.create", ACKBOX_PROP_ENUM, "open", 0, 0, "open|insert|never",
	 "When a store that does not exist yet (SQLite file, Redis keys, PostgreSQL tables) is "
	 "created. open: by ackbox_new. insert: by the first message stored; until then the "
	 "handle reads an empty store and writes nothing. never: a missing store, or one "
	 "without ackbox's schema, fails ackbox_new with a store error, and a handle without "
	 "transport.url changes no schema (admin tools)."},
	{"store.max_messages", ACKBOX_PROP_INT, "0", 0, 1LL << 40, NULL,
	 "Most messages the store may hold, in every state (FAILED too); 0: no bound. A publish "
	 "that would pass it waits or is refused (store.full_policy) and stores nothing, so a "
	 "broker outage cannot fill the disk."},
	{"store.max_bytes", ACKBOX_PROP_INT, "0", 0, 1LL << 50, NULL,
	 "Most payload bytes the store may hold (indexes, headers, WAL and free pages come on "
	 "top); 0: no bound. Needs a store that measures its bytes (all three do)."},
	{"store.full_policy", ACKBOX_PROP_ENUM, "reject", 0, 0, "reject|block",
	 "When a bound would be passed: reject returns ACKBOX_ERR_FULL at once; block waits up to "
	 "store.full_timeout for acks to make room, then returns ACKBOX_ERR_FULL."},
	{"store.full_timeout", ACKBOX_PROP_DURATION, "10s", 0, MS_DAY, NULL,
	 "How long a publish waits for room with store.full_policy=block."},
	{"store.poll_interval", ACKBOX_PROP_DURATION, "200ms", 5, 60000, NULL,
	 "How often an idle relay looks for rows written by others (the transactional entry "
	 "point, other processes, requeue)."},
	{"transport.url", ACKBOX_PROP_URL, NULL, 0, 0, NULL,
	 "The broker, as scheme://...: the scheme picks the transport (docs/brokers/). Without "
	 "it the handle stores messages for another relay. env:NAME and file:PATH as for "
	 "store.url."},
	{"transport.connect_timeout", ACKBOX_PROP_DURATION, "5s", 100, 600000, NULL,
	 "How long one connection attempt may take."},
	{"transport.require_connect", ACKBOX_PROP_BOOL, "false", 0, 0, NULL,
	 "Fail ackbox_new() with ACKBOX_ERR_TRANSPORT when the first connection attempt fails "
	 "(default: store and wait for the broker)."},
	{"transport.window", ACKBOX_PROP_INT, "0", 0, 1000000, NULL,
	 "Most unconfirmed messages at once; 0 takes the transport's default."},
	{"retry.timeout", ACKBOX_PROP_DURATION, "10s", 50, MS_DAY, NULL,
	 "An attempt with no confirm after this long counts as failed and is resent."},
	{"retry.silence_limit", ACKBOX_PROP_DURATION, "120s", 0, MS_DAY, NULL,
	 "How long a connection may stay up yet answer nothing at all before an overdue confirm "
	 "on it counts as a failed attempt. Until then a message whose confirm is overdue "
	 "(retry.timeout) is resent after a backoff without counting an attempt: a blackholed or "
	 "stalled connection is not the message's fault. Keep it above the transport's own "
	 "detection of a dead connection (twice amqp.heartbeat, 1.5 times mqtt.keepalive, "
	 "kafka.socket.timeout.ms); 0 counts every overdue confirm."},
	{"retry.max_attempts", ACKBOX_PROP_INT, "3", 1, 1000000, NULL,
	 "Attempts that reached the broker before a message is marked FAILED."},
	{"retry.backoff.initial", ACKBOX_PROP_DURATION, "1s", 0, MS_DAY, NULL,
	 "Backoff before the first resend; doubles per attempt; each wait is between half and all "
	 "of it. Keeps a just-restarted broker (RabbitMQ recovering its queues, say) from failing "
	 "messages in a burst of quick attempts."},
	{"retry.backoff.max", ACKBOX_PROP_DURATION, "30s", 0, MS_DAY, NULL,
	 "Cap of the resend and reconnect backoff (a reconnect waits at least 50 ms, whatever "
	 "it says)."},
	{"delivery.order", ACKBOX_PROP_ENUM, "none", 0, 0, "none|key",
	 "key: messages that share a key (ackbox_msg.key, whatever the topic) reach the broker "
	 "first in publish order, one at a time per key; a FAILED message holds back its key until "
	 "an operator requeues or deletes it. Messages without a key stay unordered. Every relay "
	 "of one store must use the same value (docs/ordering.md)."},
	{"message.max_bytes", ACKBOX_PROP_INT, "1048576", 1, 512LL * 1024 * 1024, NULL,
	 "Largest payload publish accepts (headers and key not counted)."},
	{"queue.buffering.max_messages", ACKBOX_PROP_INT, "10000", 0, 10000000, NULL,
	 "Fresh messages handed to the relay in memory; past this they are read back from the "
	 "store, so memory stays bounded while the broker is down."},
	{"queue.buffering.max_bytes", ACKBOX_PROP_INT, "16777216", 0, 1LL << 40, NULL,
	 "The same bound in payload bytes."},
	{"log.level", ACKBOX_PROP_ENUM, "warn", 0, 0, "error|warn|info|debug",
	 "Least severe level passed to the log callback (default stderr)."},
	{"health.disconnected_max", ACKBOX_PROP_DURATION, "30s", 0, MS_DAY, NULL,
	 "ackbox_health() says unhealthy once the transport has been disconnected this long "
	 "(a reconnect after a broker restart takes a few seconds)."},
	{"plugin.load", ACKBOX_PROP_STRING, NULL, 0, 0, NULL,
	 "Plugins to load from shared objects (ackbox_plugin_load), comma-separated paths; "
	 "setting it again loads more. Each is loaded when the key is set, for the whole process, "
	 "so set it before the URLs and keys that name its schemes."},
	{NULL, 0, NULL, 0, 0, NULL, NULL}};

/*
 * Every scheme a plugin folder of this source tree declares, built or not,
 * with the CMake option and the Debian package that build it, so that "not
 * built" can say how to get it. Generated by CMake from the folders
 * (cmake/AckboxPlugins.cmake) into plugin_list.h: the core names no plugin.
 */
typedef struct known_scheme {
	const char *scheme, *option, *package;
	int is_store;
} known_scheme;

#define ABX_KNOWN_SCHEME(scheme, plugin, is_store, built, option, package)                          \
	{scheme, option, package, is_store},
static const known_scheme known_schemes[] = {
    ACKBOX_PLUGIN_SCHEMES(ABX_KNOWN_SCHEME){NULL, NULL, NULL, 0}};
#undef ABX_KNOWN_SCHEME

static const ackbox_prop *core_prop_find(const char *key)
{
	for (const ackbox_prop *p = core_props; p->name; p++)
		if (strcmp(p->name, key) == 0)
			return p;
	return NULL;
}

ackbox_conf *ackbox_conf_new(void)
{
	return calloc(1, sizeof(ackbox_conf));
}

void ackbox_conf_destroy(ackbox_conf *conf)
{
	struct abx_kv *kv, *next;
	if (!conf)
		return;
	for (kv = conf->kv; kv; kv = next) {
		next = kv->next;
		free(kv->key);
		free(kv->value);
		free(kv);
	}
	free(conf);
}

/* Checks value against prop; errstr names key. */
static int prop_check(const ackbox_prop *p, const char *key, const char *value, char *errstr,
                      size_t errstr_size)
{
	switch (p->type) {
	case ACKBOX_PROP_STRING:
		return 0;
	case ACKBOX_PROP_INT: {
		char *end;
		long long v;
		errno = 0;
		v = strtoll(value, &end, 10);
		if (errno || end == value || *end) {
			ackbox_errstr_set(errstr, errstr_size, "%s: '%s' is not an integer", key, value);
			return ACKBOX_ERR_BAD_VALUE;
		}
		if (v < p->min || v > p->max) {
			ackbox_errstr_set(errstr, errstr_size, "%s: %lld is out of range [%lld, %lld]",
			                  key, v, (long long)p->min, (long long)p->max);
			return ACKBOX_ERR_BAD_VALUE;
		}
		return 0;
	}
	case ACKBOX_PROP_DURATION: {
		int64_t ms;
		if (ackbox_parse_duration_ms(value, &ms) != 0) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "%s: '%s' is not a duration (e.g. 250ms, 10s, 5m, 1h)", key,
			                  value);
			return ACKBOX_ERR_BAD_VALUE;
		}
		if (ms < p->min || ms > p->max) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "%s: %lld ms is out of range [%lld ms, %lld ms]", key,
			                  (long long)ms, (long long)p->min, (long long)p->max);
			return ACKBOX_ERR_BAD_VALUE;
		}
		return 0;
	}
	case ACKBOX_PROP_BOOL: {
		int b;
		if (ackbox_parse_bool(value, &b) != 0) {
			ackbox_errstr_set(errstr, errstr_size, "%s: '%s' is not true or false", key,
			                  value);
			return ACKBOX_ERR_BAD_VALUE;
		}
		return 0;
	}
	case ACKBOX_PROP_ENUM: {
		size_t vl = strlen(value);
		for (const char *c = p->choices; c && *c;) {
			const char *bar = strchr(c, '|');
			size_t cl = bar ? (size_t)(bar - c) : strlen(c);
			if (cl == vl && strncmp(c, value, vl) == 0)
				return 0;
			c = bar ? bar + 1 : c + cl;
		}
		ackbox_errstr_set(errstr, errstr_size, "%s: '%s' is not one of %s", key, value,
		                  p->choices);
		return ACKBOX_ERR_BAD_VALUE;
	}
	case ACKBOX_PROP_URL: {
		ackbox_url u;
		char why[256];
		int rc = ackbox_url_parse(value, &u, why, sizeof(why));
		if (rc) {
			ackbox_errstr_set(errstr, errstr_size, "%s: %s", key, why);
			return rc;
		}
		rc = abx_scheme_check(strcmp(key, "store.url") == 0, u.scheme, key, errstr,
		                      errstr_size);
		ackbox_url_fini(&u);
		return rc;
	}
	}
	return 0;
}

/* The declared scheme s of a store (is_store 1), a transport (0) or either (-1). */
static const known_scheme *known(int is_store, const char *s)
{
	for (const known_scheme *k = known_schemes; k->scheme; k++)
		if ((is_store < 0 || k->is_store == is_store) && strcmp(k->scheme, s) == 0)
			return k;
	return NULL;
}

int abx_scheme_check(int is_store, const char *scheme, const char *key, char *errstr,
                     size_t errstr_size)
{
	if (is_store ? abx_store_find(scheme) != NULL : abx_transport_find(scheme) != NULL)
		return 0;
	const known_scheme *k = known(is_store, scheme);
	if (k) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "%s: scheme '%s' is not built into this ackbox (%s%s%srebuild with "
		                  "-D%s=ON)",
		                  key, scheme, k->package[0] ? "install " : "", k->package,
		                  k->package[0] ? " and " : "", k->option);
		return ACKBOX_ERR_NOT_BUILT;
	}
	if (known(!is_store, scheme) ||
	    (is_store ? abx_transport_find(scheme) != NULL : abx_store_find(scheme) != NULL)) {
		ackbox_errstr_set(errstr, errstr_size, "%s: '%s' is a %s, not a %s", key, scheme,
		                  is_store ? "transport" : "store", is_store ? "store" : "transport");
		return ACKBOX_ERR_UNKNOWN_SCHEME;
	}
	ackbox_errstr_set(errstr, errstr_size,
	                  "%s: unknown scheme '%s' (no %s built in or loaded serves it; a plugin "
	                  "loaded with plugin.load must be loaded before this key is set)",
	                  key, scheme, is_store ? "store" : "transport");
	return ACKBOX_ERR_UNKNOWN_SCHEME;
}

/* Sets key to a copy of value, replacing an earlier value. */
static int kv_put(ackbox_conf *conf, const char *key, const char *value)
{
	struct abx_kv *kv;
	for (kv = conf->kv; kv; kv = kv->next) {
		if (strcmp(kv->key, key) == 0) {
			char *v = strdup(value);
			if (!v)
				return ACKBOX_ERR_NOMEM;
			free(kv->value);
			kv->value = v;
			return 0;
		}
	}
	kv = calloc(1, sizeof(*kv));
	if (!kv || !(kv->key = strdup(key)) || !(kv->value = strdup(value))) {
		if (kv)
			free(kv->key);
		free(kv);
		return ACKBOX_ERR_NOMEM;
	}
	kv->next = conf->kv;
	conf->kv = kv;
	return 0;
}

/*
 * plugin.load: loads every comma-separated path of value now, and sets
 * *joined to what the key then holds (the earlier value, a comma, value),
 * to be freed by the caller.
 */
static int plugin_load_set(const ackbox_conf *conf, const char *value, char **joined,
                           char *errstr, size_t errstr_size)
{
	const char *old = ackbox_conf_get(conf, "plugin.load");
	char why[512];
	size_t n;
	for (const char *s = value; *s;) {
		char path[4096];
		size_t len = strcspn(s, ",");
		const char *b = s, *e = s + len;
		while (b < e && isspace((unsigned char)*b))
			b++;
		while (e > b && isspace((unsigned char)e[-1]))
			e--;
		if (e > b) {
			int rc;
			if ((size_t)(e - b) >= sizeof(path)) {
				ackbox_errstr_set(errstr, errstr_size, "plugin.load: path too long");
				return ACKBOX_ERR_BAD_VALUE;
			}
			memcpy(path, b, (size_t)(e - b));
			path[e - b] = '\0';
			rc = ackbox_plugin_load(path, why, sizeof(why));
			if (rc) {
				ackbox_errstr_set(errstr, errstr_size, "plugin.load: %s", why);
				return rc;
			}
		}
		s += len + (s[len] == ',');
	}
	n = (old ? strlen(old) + 1 : 0) + strlen(value) + 1;
	if (!(*joined = malloc(n)))
		return ACKBOX_ERR_NOMEM;
	snprintf(*joined, n, "%s%s%s", old ? old : "", old ? "," : "", value);
	return 0;
}

static int set_checked(ackbox_conf *conf, const char *key, const char *value, char *errstr,
                       size_t errstr_size);

int ackbox_conf_set(ackbox_conf *conf, const char *key, const char *value, char *errstr,
                    size_t errstr_size)
{
	const ackbox_prop *p;
	char *secret = NULL;
	int rc;

	if (!conf || !key || !value) {
		ackbox_errstr_set(errstr, errstr_size, "ackbox_conf_set: NULL argument");
		return ACKBOX_ERR_INVALID;
	}
	/* a URL may come from the environment or a file (secret.c) */
	p = core_prop_find(key);
	if (p && p->type == ACKBOX_PROP_URL) {
		rc = abx_secret_resolve(key, value, &secret, errstr, errstr_size);
		if (rc)
			return rc;
	}
	rc = set_checked(conf, key, secret ? secret : value, errstr, errstr_size);
	abx_secret_free(secret);
	return rc;
}

static int set_checked(ackbox_conf *conf, const char *key, const char *value, char *errstr,
                       size_t errstr_size)
{
	const ackbox_prop *p;
	char *joined = NULL;
	int rc;

	p = core_prop_find(key);
	if (p) {
		rc = prop_check(p, key, value, errstr, errstr_size);
		if (rc)
			return rc;
		if (strcmp(key, "plugin.load") == 0) {
			rc = plugin_load_set(conf, value, &joined, errstr, errstr_size);
			if (rc)
				return rc;
			value = joined;
		}
	} else {
		const char *owner = NULL;
		int found = abx_plugin_prop_find(key, &p, &owner);
		if (found == 0) {
			char prefix[64];
			const char *dot = strchr(key, '.');
			size_t pl = dot ? (size_t)(dot - key) : 0;
			if (pl > 0 && pl < sizeof(prefix)) {
				memcpy(prefix, key, pl);
				prefix[pl] = '\0';
				const known_scheme *k = known(-1, prefix);
				if (k) {
					ackbox_errstr_set(errstr, errstr_size,
					                  "%s: plugin '%s' is not built into this ackbox "
					                  "(rebuild with -D%s=ON)",
					                  key, prefix, k->option);
					return ACKBOX_ERR_NOT_BUILT;
				}
			}
			ackbox_errstr_set(errstr, errstr_size, "unknown configuration key '%s'", key);
			return ACKBOX_ERR_UNKNOWN_KEY;
		}
		if (found < 0) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "unknown configuration key '%s' (plugin '%s' has no such "
			                  "property)",
			                  key, owner);
			return ACKBOX_ERR_UNKNOWN_KEY;
		}
		if (p) {
			rc = prop_check(p, key, value, errstr, errstr_size);
			if (rc)
				return rc;
		}
	}
	rc = kv_put(conf, key, value);
	free(joined);
	return rc;
}

const char *ackbox_conf_get(const ackbox_conf *conf, const char *key)
{
	const ackbox_prop *p;
	const char *owner;
	if (!key)
		return NULL;
	if (conf)
		for (struct abx_kv *kv = conf->kv; kv; kv = kv->next)
			if (strcmp(kv->key, key) == 0)
				return kv->value;
	p = core_prop_find(key);
	if (p)
		return p->def;
	if (abx_plugin_prop_find(key, &p, &owner) > 0 && p)
		return p->def;
	return NULL;
}

void ackbox_conf_foreach(const ackbox_conf *conf, const char *prefix,
                         void (*cb)(const char *key, const char *value, void *opaque),
                         void *opaque)
{
	size_t pl = prefix ? strlen(prefix) : 0;
	if (!conf || !cb)
		return;
	for (struct abx_kv *kv = conf->kv; kv; kv = kv->next)
		if (!prefix || strncmp(kv->key, prefix, pl) == 0)
			cb(kv->key, kv->value, opaque);
}

int64_t abx_conf_int(const ackbox_conf *conf, const char *key)
{
	const char *v = ackbox_conf_get(conf, key);
	const ackbox_prop *p = core_prop_find(key);
	int64_t ms = 0;
	if (!v)
		return 0;
	if (p && p->type == ACKBOX_PROP_DURATION) {
		ackbox_parse_duration_ms(v, &ms);
		return ms;
	}
	return strtoll(v, NULL, 10);
}

int abx_conf_bool(const ackbox_conf *conf, const char *key)
{
	int b = 0;
	const char *v = ackbox_conf_get(conf, key);
	if (v)
		ackbox_parse_bool(v, &b);
	return b;
}

void ackbox_conf_set_report_cb(ackbox_conf *conf, ackbox_report_cb cb, void *opaque)
{
	if (conf) {
		conf->report_cb = cb;
		conf->report_opaque = opaque;
	}
}

void ackbox_conf_set_nack_policy(ackbox_conf *conf, ackbox_nack_policy_cb cb, void *opaque)
{
	if (conf) {
		conf->nack_cb = cb;
		conf->nack_opaque = opaque;
	}
}

void ackbox_conf_set_log_cb(ackbox_conf *conf, ackbox_log_cb cb, void *opaque)
{
	if (conf) {
		conf->log_cb = cb;
		conf->log_opaque = opaque;
	}
}

static const char *type_name(const ackbox_prop *p)
{
	switch (p->type) {
	case ACKBOX_PROP_STRING: return "string";
	case ACKBOX_PROP_INT: return "integer";
	case ACKBOX_PROP_BOOL: return "boolean";
	case ACKBOX_PROP_ENUM: return p->choices;
	case ACKBOX_PROP_DURATION: return "duration";
	case ACKBOX_PROP_URL: return "URL";
	}
	return "?";
}

static void dump_one(FILE *f, const char *prefix, const ackbox_prop *p)
{
	fprintf(f, "| `%s%s%s` | ", prefix ? prefix : "", prefix ? "." : "", p->name);
	for (const char *t = type_name(p); *t; t++) /* '|' would end a Markdown cell */
		fputs(*t == '|' ? "\\|" : (char[2]){*t, 0}, f);
	fprintf(f, " | %s | %s |\n", p->def && *p->def ? p->def : "", p->doc ? p->doc : "");
}

static void dump_plugin(const char *scheme, const ackbox_prop *p, void *opaque)
{
	dump_one(opaque, scheme, p);
}

void ackbox_conf_dump_properties(void *out)
{
	FILE *f = out ? out : stdout;
	fprintf(f, "| key | type | default | meaning |\n|---|---|---|---|\n");
	for (const ackbox_prop *p = core_props; p->name; p++)
		dump_one(f, NULL, p);
	abx_plugin_props_foreach(dump_plugin, f);
}
