/*
 * plugin.h - what transport and store plugins share: the ABI version word,
 * the declarative configuration property table, parsed URLs and logging.
 * Read docs/plugins.md first; brokers/loopback/ is the smallest example.
 */
#ifndef ACKBOX_PLUGIN_H
#define ACKBOX_PLUGIN_H

#include <ackbox/ackbox.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * ABI words carry a magic high half, so that a table of garbage is refused,
 * and a version low half: major << 8 | minor. An ops table only grows at its
 * end, one minor per group of slots appended (transport.h and store.h say
 * which slots came with which minor); a major changes only if a slot changes
 * meaning, which has not happened.
 *
 * Registration (ackbox_transport_register, ackbox_store_register):
 * - the same major and an older or equal minor is accepted: the core keeps a
 *   copy of the table in which every slot that minor does not have is NULL,
 *   so it never calls a slot the plugin was not built with; struct_size must
 *   cover at least that minor's table;
 * - a newer minor, or another major, is refused with ACKBOX_ERR_ABI and an
 *   errstr naming both versions (the plugin may rely on slots this core
 *   would never call).
 */
#define ACKBOX_ABI_MAGIC 0xACB0u
#define ACKBOX_ABI_WORD(v) ((ACKBOX_ABI_MAGIC << 16) | (uint32_t)(v))
/** The ABI word of version major.minor. */
#define ACKBOX_ABI_VERSION(major, minor)                                                           \
	ACKBOX_ABI_WORD(((uint32_t)(major) << 8) | (uint32_t)(minor))
/** The major and minor of an ABI word. */
#define ACKBOX_ABI_MAJOR(word) (((uint32_t)(word) >> 8) & 0xffu)
#define ACKBOX_ABI_MINOR(word) ((uint32_t)(word) & 0xffu)

/** Property types of the declarative configuration table. */
typedef enum ackbox_prop_type {
	ACKBOX_PROP_STRING = 0,
	ACKBOX_PROP_INT = 1,      /* decimal integer in [min, max] */
	ACKBOX_PROP_BOOL = 2,     /* true/false/1/0/yes/no/on/off */
	ACKBOX_PROP_ENUM = 3,     /* one of the '|'-separated words in `choices` */
	ACKBOX_PROP_DURATION = 4, /* "250ms", "10s", "5m", "1h" or plain ms, in [min, max] ms */
	ACKBOX_PROP_URL = 5       /* parsed with ackbox_url_parse */
} ackbox_prop_type;

/**
 * One configuration property. Plugins list theirs WITHOUT the "<scheme>."
 * prefix; the core adds it. A table ends with an entry whose name is NULL.
 */
typedef struct ackbox_prop {
	const char *name;
	ackbox_prop_type type;
	const char *def;     /* default as text, NULL for none */
	int64_t min, max;    /* INT and DURATION bounds */
	const char *choices; /* ENUM words, "a|b|c" */
	const char *doc;     /* one sentence for docs and --help */
} ackbox_prop;

/** Plugin capability: accept any "<scheme>.<name>" key (librdkafka passthrough). */
#define ACKBOX_PLUGIN_CAP_PASSTHROUGH_KEYS (1u << 0)

/**
 * A parsed URL: scheme://[user[:password]@]hosts[/path][?query].
 * Percent-escapes in user, password and path are decoded. `hosts` is kept
 * as written ("h1:1,h2:2"); host/port are the first entry (port 0 if none).
 * All strings are NUL-terminated and owned by the url.
 */
typedef struct ackbox_url {
	char *scheme;
	char *user;     /* NULL if absent */
	char *password; /* NULL if absent */
	char *hosts;    /* "" if absent */
	char *host;     /* "" if absent; IPv6 literal without brackets */
	int port;       /* 0 if absent */
	char *path;     /* decoded, includes the leading '/', "" if absent */
	char *query;    /* raw, without '?', "" if absent */
} ackbox_url;

/**
 * Parses text into url. Returns 0 or ACKBOX_ERR_BAD_URL with errstr saying
 * what is malformed. On success free with ackbox_url_fini().
 */
ACKBOX_API int ackbox_url_parse(const char *text, ackbox_url *url, char *errstr,
                                size_t errstr_size);
ACKBOX_API void ackbox_url_fini(ackbox_url *url);

/**
 * Looks up `name` in a URL query ("a=1&b=2"); copies the decoded value into
 * out. Returns 1 if found, 0 if not.
 */
ACKBOX_API int ackbox_url_query_get(const ackbox_url *url, const char *name, char *out,
                                    size_t out_size);

/** Parses a duration ("250ms", "10s", "5m", "1h", "1500") into ms. */
ACKBOX_API int ackbox_parse_duration_ms(const char *text, int64_t *out_ms);

/** Parses a boolean as the configuration does. */
ACKBOX_API int ackbox_parse_bool(const char *text, int *out);

/** Monotonic milliseconds (CLOCK_MONOTONIC). */
ACKBOX_API int64_t ackbox_mono_ms(void);

/** Wall-clock milliseconds since the Unix epoch. */
ACKBOX_API int64_t ackbox_wall_ms(void);

/** Writes a formatted line into errstr (NULL-safe, always terminated). */
ACKBOX_API void ackbox_errstr_set(char *errstr, size_t errstr_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * ---- Plugins in shared objects ----
 *
 * A plugin built outside ackbox is a shared object that exports one entry
 * point, ackbox_plugin_entry, which registers its transports and stores with
 * ackbox_transport_register / ackbox_store_register:
 *
 *     ACKBOX_PLUGIN_EXPORT int ackbox_plugin_entry(char *errstr, size_t errstr_size)
 *     {
 *             return ackbox_transport_register(&my_transport, errstr, errstr_size);
 *     }
 *
 * It returns 0, or a negative ackbox_err with errstr set. What it registers
 * counts only if it returns 0 and every registration succeeded; otherwise
 * none of it is kept and the object is closed again. It runs once per
 * process and object, on the thread that loads it, and must not load
 * plugins itself (loads are serialised). examples/plugin_out_of_tree/
 * is a complete one; docs/plugins.md says how to build it against an
 * installed ackbox.
 */

/** The entry point's name and type. */
#define ACKBOX_PLUGIN_ENTRY_NAME "ackbox_plugin_entry"
typedef int ackbox_plugin_entry_fn(char *errstr, size_t errstr_size);

/** Exports a symbol from a plugin built with hidden visibility. */
#define ACKBOX_PLUGIN_EXPORT __attribute__((visibility("default")))

/** The entry point a plugin defines (declared here so that its type is checked). */
ACKBOX_PLUGIN_EXPORT int ackbox_plugin_entry(char *errstr, size_t errstr_size);

/**
 * Loads the plugin in the shared object at path (dlopen) and runs its entry
 * point, for the whole process: its schemes and keys are known to every
 * configuration and handle made afterwards. Loading the same object again
 * does nothing and returns 0. A loaded object is never unloaded.
 * The configuration key plugin.load calls it.
 *
 * Returns 0; ACKBOX_ERR_BAD_VALUE if path is not a file or cannot be loaded
 * (errstr has the loader's reason: a missing library, an undefined symbol);
 * ACKBOX_ERR_ABI if it exports no ackbox_plugin_entry, or a table it
 * registers has an ABI this ackbox does not serve (errstr names both
 * versions); or the entry point's own error. errstr always names path.
 * Thread-safe; loads are serialised.
 */
ACKBOX_API int ackbox_plugin_load(const char *path, char *errstr, size_t errstr_size);

/**
 * The one rule for URL query parameters, which every plugin applies in
 * open(): each parameter of url->query is named in `known` (NULL-terminated;
 * known == NULL accepts any name, for a plugin that checks names itself),
 * appears once, and has a non-empty value ("?heartbeat=" is refused, not
 * read as 0). Returns 0, or ACKBOX_ERR_BAD_URL with errstr naming `key`
 * (e.g. "transport.url") and the parameter: "unknown parameter 'x' (known:
 * heartbeat, name)", "parameter 'name' is given twice", "parameter
 * 'heartbeat' has no value". Parameter names are compared as written.
 */
ACKBOX_API int ackbox_url_query_check(const ackbox_url *url, const char *key,
                                      const char *const *known, char *errstr,
                                      size_t errstr_size);

#ifdef __cplusplus
}
#endif
#endif /* ACKBOX_PLUGIN_H */
