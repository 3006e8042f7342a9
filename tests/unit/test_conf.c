/*
 * test_conf.c - configuration, URL parsing, ids and the header codec: bad
 * input must give a clear error naming the key, and open nothing.
 */
#include "testutil.h"

#include <ackbox/plugin.h>
#include <ackbox/store.h>

#include "plugin_list.h"

static int set(ackbox_conf *c, const char *k, const char *v, char *err)
{
	return ackbox_conf_set(c, k, v, err, 256);
}

Test(conf, unknown_key_is_refused_and_named)
{
	ackbox_conf *c = ackbox_conf_new();
	char err[256] = "";
	cr_assert_eq(set(c, "retry.maxattempts", "3", err), ACKBOX_ERR_UNKNOWN_KEY);
	cr_assert(strstr(err, "retry.maxattempts"), "errstr: %s", err);
	cr_assert_eq(set(c, "loopback.nope", "1", err), ACKBOX_ERR_UNKNOWN_KEY);
	cr_assert(strstr(err, "loopback.nope") && strstr(err, "loopback"), "errstr: %s", err);
	cr_assert_null(ackbox_conf_get(c, "retry.maxattempts"));
	ackbox_conf_destroy(c);
}

Test(conf, bad_values_are_refused_with_the_reason)
{
	ackbox_conf *c = ackbox_conf_new();
	char err[256] = "";
	cr_assert_eq(set(c, "retry.max_attempts", "0", err), ACKBOX_ERR_BAD_VALUE);
	cr_assert(strstr(err, "retry.max_attempts") && strstr(err, "out of range"), "%s", err);
	cr_assert_eq(set(c, "retry.max_attempts", "three", err), ACKBOX_ERR_BAD_VALUE);
	cr_assert(strstr(err, "not an integer"), "%s", err);
	cr_assert_eq(set(c, "retry.timeout", "10 parsecs", err), ACKBOX_ERR_BAD_VALUE);
	cr_assert(strstr(err, "retry.timeout") && strstr(err, "duration"), "%s", err);
	cr_assert_eq(set(c, "store.sync", "sometimes", err), ACKBOX_ERR_BAD_VALUE);
	cr_assert(strstr(err, "full|normal|off"), "%s", err);
	cr_assert_eq(set(c, "transport.require_connect", "maybe", err), ACKBOX_ERR_BAD_VALUE);
	/* the good value is still the default */
	cr_assert_str_eq(ackbox_conf_get(c, "retry.max_attempts"), "3");
	cr_assert_eq(set(c, "retry.timeout", "250ms", err), 0);
	cr_assert_str_eq(ackbox_conf_get(c, "retry.timeout"), "250ms");
	ackbox_conf_destroy(c);
}

Test(conf, urls_and_schemes)
{
	ackbox_conf *c = ackbox_conf_new();
	char err[256] = "";
	cr_assert_eq(set(c, "store.url", "/var/lib/outbox.db", err), ACKBOX_ERR_BAD_URL);
	cr_assert(strstr(err, "store.url") && strstr(err, "no scheme"), "%s", err);
	cr_assert_eq(set(c, "transport.url", "amqp://h:99999/", err), ACKBOX_ERR_BAD_URL);
	cr_assert(strstr(err, "65535"), "%s", err);
	cr_assert_eq(set(c, "transport.url", "amqp://h:12a/", err), ACKBOX_ERR_BAD_URL);
	cr_assert_eq(set(c, "transport.url", "pigeon://localhost:4222", err),
	             ACKBOX_ERR_UNKNOWN_SCHEME);
	cr_assert(strstr(err, "pigeon"), "%s", err);
	cr_assert_eq(set(c, "store.url", "amqp://localhost/", err), ACKBOX_ERR_UNKNOWN_SCHEME);
	cr_assert(strstr(err, "not a store"), "%s", err);
	cr_assert_eq(set(c, "store.url", "sqlite:///tmp/x.db", err), 0);
	cr_assert_eq(set(c, "transport.url", "loopback://b1", err), 0);
	ackbox_conf_destroy(c);
}

/*
 * Every scheme a plugin folder declares (plugin_list.h, generated from the
 * folders): a built one is served, for the right kind of URL only; one that
 * is not built is refused with ACKBOX_ERR_NOT_BUILT naming the CMake option
 * and the Debian package that would build it.
 */
#define DECLARED(scheme, plugin, is_store, built, option, package)                                 \
	check_declared(scheme, plugin, is_store, built, option, package);

static void check_declared(const char *scheme, const char *plugin, int is_store, int built,
                           const char *option, const char *package)
{
	ackbox_conf *c = ackbox_conf_new();
	char url[128], err[256] = "";
	const char *key = is_store ? "store.url" : "transport.url";
	const char *other = is_store ? "transport.url" : "store.url";
	int rc;
	snprintf(url, sizeof(url), "%s://127.0.0.1/x", scheme);
	rc = set(c, key, url, err);
	if (built) {
		cr_assert_eq(rc, 0, "plugin %s declares scheme %s but does not serve it: %s", plugin,
		             scheme, err);
		cr_assert_eq(set(c, other, url, err), ACKBOX_ERR_UNKNOWN_SCHEME, "%s", url);
		cr_assert(strstr(err, is_store ? "is a store" : "is a transport"), "%s", err);
	} else {
		cr_assert_eq(rc, ACKBOX_ERR_NOT_BUILT, "%s: %s", url, err);
		cr_assert(strstr(err, scheme) && strstr(err, option) && strstr(err, package),
		          "not built, but the error does not say how to build it: %s", err);
		snprintf(url, sizeof(url), "%s.window", scheme); /* a key of the plugin */
		cr_assert_eq(set(c, url, "1", err), ACKBOX_ERR_NOT_BUILT, "%s: %s", url, err);
		cr_assert(strstr(err, option), "%s", err);
	}
	ackbox_conf_destroy(c);
}

Test(conf, declared_schemes_are_served_or_say_how_to_build_them)
{
	ACKBOX_PLUGIN_SCHEMES(DECLARED)
}

Test(conf, new_without_store_url_opens_nothing)
{
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab = (ackbox *)0x1;
	char err[256] = "";
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), ACKBOX_ERR_BAD_VALUE);
	cr_assert_null(ab);
	cr_assert(strstr(err, "store.url"), "%s", err);
	ackbox_conf_destroy(c); /* still ours after a failed ackbox_new */
}

Test(url, parses_every_part)
{
	ackbox_url u;
	char err[256], v[64];
	cr_assert_eq(ackbox_url_parse("amqps://us%40r:p%3Ass@rabbit.local:5671/my%2Fvhost?heartbeat=30&name=svc",
	                              &u, err, sizeof(err)),
	             0, "%s", err);
	cr_assert_str_eq(u.scheme, "amqps");
	cr_assert_str_eq(u.user, "us@r");
	cr_assert_str_eq(u.password, "p:ss");
	cr_assert_str_eq(u.host, "rabbit.local");
	cr_assert_eq(u.port, 5671);
	cr_assert_str_eq(u.path, "/my/vhost");
	cr_assert(ackbox_url_query_get(&u, "name", v, sizeof(v)));
	cr_assert_str_eq(v, "svc");
	cr_assert_not(ackbox_url_query_get(&u, "nope", v, sizeof(v)));
	ackbox_url_fini(&u);

	cr_assert_eq(ackbox_url_parse("kafka://127.0.0.1:9092,127.0.0.1:9093", &u, err, sizeof(err)), 0);
	cr_assert_str_eq(u.hosts, "127.0.0.1:9092,127.0.0.1:9093");
	cr_assert_str_eq(u.host, "127.0.0.1");
	cr_assert_eq(u.port, 9092);
	ackbox_url_fini(&u);

	cr_assert_eq(ackbox_url_parse("sqlite:///var/lib/app/outbox.db", &u, err, sizeof(err)), 0);
	cr_assert_str_eq(u.hosts, "");
	cr_assert_str_eq(u.path, "/var/lib/app/outbox.db");
	ackbox_url_fini(&u);

	cr_assert_eq(ackbox_url_parse("mqtt://[::1]:1883", &u, err, sizeof(err)), 0);
	cr_assert_str_eq(u.host, "::1");
	cr_assert_eq(u.port, 1883);
	ackbox_url_fini(&u);

	cr_assert_eq(ackbox_url_parse("mqtt://h/%zz", &u, err, sizeof(err)), ACKBOX_ERR_BAD_URL);
	cr_assert_eq(ackbox_url_parse("mqtt://h:/", &u, err, sizeof(err)), ACKBOX_ERR_BAD_URL);
	cr_assert_eq(ackbox_url_parse("://h", &u, err, sizeof(err)), ACKBOX_ERR_BAD_URL);
	cr_assert_eq(ackbox_url_parse("mq tt://h", &u, err, sizeof(err)), ACKBOX_ERR_BAD_URL);
}

Test(id, uuidv7_is_time_ordered_and_round_trips)
{
	ackbox_id a, b, p;
	char text[ACKBOX_ID_STRLEN];
	int64_t before = ackbox_wall_ms();
	ackbox_id_new(&a);
	for (int i = 0; i < 10000; i++) {
		ackbox_id_new(&b);
		cr_assert_lt(memcmp(&a, &b, sizeof(a)), 0, "ids must strictly increase");
		a = b;
	}
	cr_assert_eq(a.b[6] >> 4, 7, "version 7");
	cr_assert_eq(a.b[8] >> 6, 2, "RFC variant");
	cr_assert_geq(ackbox_id_time_ms(&a), before);
	cr_assert_leq(ackbox_id_time_ms(&a), ackbox_wall_ms() + 1000);
	ackbox_id_format(&a, text);
	cr_assert_eq(strlen(text), 36);
	cr_assert_eq(ackbox_id_parse(text, &p), 0);
	cr_assert_eq(memcmp(&a, &p, sizeof(a)), 0);
	cr_assert_eq(ackbox_id_parse("not-an-id", &p), ACKBOX_ERR_INVALID);
}

Test(headers, codec_round_trip_and_rejects_garbage)
{
	ackbox_header h[2] = {{"trace-id", "abc", 3}, {"bin", "\0\1\2", 3}};
	size_t sz = ackbox_headers_encoded_size(h, 2), n;
	uint8_t *buf = malloc(sz);
	ackbox_header *out;
	ackbox_headers_encode(h, 2, buf);
	cr_assert_eq(ackbox_headers_decode(buf, sz, &out, &n), 0);
	cr_assert_eq(n, 2);
	cr_assert_str_eq(out[0].name, "trace-id");
	cr_assert_eq(out[1].value_len, 3);
	cr_assert_eq(memcmp(out[1].value, "\0\1\2", 3), 0);
	free(out);
	for (size_t cut = 1; cut < sz; cut++)
		cr_assert_eq(ackbox_headers_decode(buf, cut, &out, &n), ACKBOX_ERR_STORE_CORRUPT,
		             "truncated at %zu", cut);
	buf[0] = 0xff; /* absurd count */
	cr_assert_eq(ackbox_headers_decode(buf, sz, &out, &n), ACKBOX_ERR_STORE_CORRUPT);
	free(buf);
}
