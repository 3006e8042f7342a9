/*
 * test_echo.c - what ackbox echoes is safe to echo: ackbox_escape() leaves
 * no control character, ackbox_url_redact() no password, a URL that fails
 * to parse is shown redacted; and one rule for URL query parameters and host
 * lists (unknown, duplicated or empty parameters, empty hosts, every port).
 */
#include "testutil.h"

#include <ackbox/plugin.h>

#include "plugin_list.h"

static const char *esc(const char *s, size_t n)
{
	static char out[512];
	size_t need = ackbox_escape(s, n, out, sizeof(out));
	cr_assert_eq(need, strlen(out), "the whole text fits: %zu vs '%s'", need, out);
	return out;
}

Test(echo, escape_leaves_no_control_character)
{
	cr_assert_str_eq(esc("orders/eu", 9), "orders/eu");
	cr_assert_str_eq(esc("a\nb\rc\td", 7), "a\\nb\\rc\\td");
	cr_assert_str_eq(esc("\x1b[2Jgone", 8), "\\x1b[2Jgone");
	cr_assert_str_eq(esc("nul\0byte", 8), "nul\\x00byte");
	cr_assert_str_eq(esc("back\\slash", 10), "back\\\\slash");
	cr_assert_str_eq(esc("\x7f", 1), "\\x7f");
	/* valid UTF-8 passes; C1 controls, bidi overrides and bad bytes do not */
	cr_assert_str_eq(esc("caf\xc3\xa9 \xe2\x82\xac", 9), "caf\xc3\xa9 \xe2\x82\xac");
	cr_assert_str_eq(esc("\xc2\x9b" "2J", 4), "\\xc2\\x9b2J");
	cr_assert_str_eq(esc("a\xe2\x80\xae" "b", 5), "a\\xe2\\x80\\xaeb");
	cr_assert_str_eq(esc("\xff\xc3", 2), "\\xff\\xc3");
	cr_assert_str_eq(esc("\xed\xa0\x80", 3), "\\xed\\xa0\\x80", "a UTF-16 surrogate is not UTF-8");
}

Test(echo, escape_never_cuts_an_escape_and_says_what_it_needs)
{
	char small[6];
	size_t need = ackbox_escape("ab\ncd", 5, small, sizeof(small));
	cr_assert_eq(need, 6, "'ab\\ncd' is 6 characters escaped");
	cr_assert_str_eq(small, "ab\\nc", "cut after a whole piece");
	char tiny[4];
	ackbox_escape("ab\x1b", 3, tiny, sizeof(tiny));
	cr_assert_str_eq(tiny, "ab", "\\x1b does not fit: nothing of it is written");
	cr_assert_eq(ackbox_escape("\x01\x02", 2, NULL, 0), 8);
}

static const char *red(const char *url)
{
	static char out[512];
	ackbox_url_redact(url, out, sizeof(out));
	return out;
}

Test(echo, redact_hides_passwords_and_secret_parameters)
{
	cr_assert_str_eq(red("amqp://guest:s3cret@127.0.0.1:70000"), "amqp://guest:***@127.0.0.1:70000");
	cr_assert_str_eq(red("amqps://u:p%40ss@h/vh?heartbeat=5"), "amqps://u:***@h/vh?heartbeat=5");
	cr_assert_str_eq(red("redis://:pw@h:6379/0?prefix=x"), "redis://:***@h:6379/0?prefix=x");
	cr_assert_str_eq(red("postgres://u@h/db?sslpassword=k&sslmode=require&password=x"),
	                 "postgres://u@h/db?sslpassword=***&sslmode=require&password=***");
	cr_assert_str_eq(red("kafka://user:p@ss@h1:9092,h2:9092"), "kafka://user:***@h1:9092,h2:9092",
	                 "the last '@' ends the user information");
	cr_assert_str_eq(red("sqlite:///var/lib/outbox.db"), "sqlite:///var/lib/outbox.db");
	cr_assert_str_eq(red("amqp://nobody@h"), "amqp://nobody@h");
	/* what does not parse is echoed too, and must not carry the password */
	cr_assert_str_eq(red("amqp:guest:s3cret@h"), "amqp:guest:***@h");
	/* slashes mistyped: the URL does not parse, the password is still hidden */
	cr_assert_str_eq(red("amqp:/u:SECRETPW1@localhost:1"), "amqp:/u:***@localhost:1");
	cr_assert_str_eq(red("amqp//u:SECRETPW1@localhost:1"), "amqp//u:***@localhost:1");
	cr_assert_str_eq(red("redis:/:SECRETPW1@localhost:1"), "redis:/:***@localhost:1");
	cr_assert_str_eq(red("postgresql//u:PW@h/db"), "postgresql//u:***@h/db");
	/* a '/' in the password (not percent-encoded) */
	cr_assert_eq(strstr(red("amqp://u:pa/ss@h"), "pa/ss"), NULL);
	cr_assert_str_eq(red("amqp://u:pw@h/\n\x1b[31m"), "amqp://u:***@h/\\n\\x1b[31m");
	cr_assert_eq(strstr(red("amqp://u:s3cret@h/a@b"), "s3cret"), NULL);
}

Test(echo, a_url_that_fails_to_parse_is_echoed_without_its_password)
{
	const char *bad[] = {"amqp://guest:s3cret@127.0.0.1:70000", "amqp://guest:s3cret@h:12a/",
	                     "amqp://guest:s3cret@h/%zz", "amqp://guest:s3cret@,,,:5",
	                     "amqp://guest:s3cret@h /x", NULL};
	for (const char **b = bad; *b; b++) {
		ackbox_conf *c = ackbox_conf_new();
		char err[512];
		int rc = ackbox_conf_set(c, "transport.url", *b, err, sizeof(err));
		cr_assert_eq(rc, ACKBOX_ERR_BAD_URL, "%s: %d", *b, rc);
		cr_assert_eq(strstr(err, "s3cret"), NULL, "the password is shown: %s", err);
		cr_assert_neq(strstr(err, "guest:***@"), NULL, "the URL is shown redacted: %s", err);
		cr_assert_neq(strstr(err, "transport.url"), NULL, "%s", err);
		ackbox_conf_destroy(c);
	}
	/* a control character in the URL is named, and not echoed raw */
	ackbox_conf *c = ackbox_conf_new();
	char err[512];
	cr_assert_eq(ackbox_conf_set(c, "store.url", "sqlite:///tmp/a\x1b[2J.db", err, sizeof(err)),
	             ACKBOX_ERR_BAD_URL);
	cr_assert_eq(strchr(err, '\x1b'), NULL, "%s", err);
	cr_assert_neq(strstr(err, "\\x1b"), NULL, "%s", err);
	/* decoded from a %-escape: refused as well */
	cr_assert_eq(ackbox_conf_set(c, "store.url", "sqlite:///tmp/a%0Ab.db", err, sizeof(err)),
	             ACKBOX_ERR_BAD_URL);
	cr_assert_neq(strstr(err, "control character in the path"), NULL, "%s", err);
	ackbox_conf_destroy(c);
}

static int parse(const char *text, ackbox_url *u, char *err, size_t n)
{
	return ackbox_url_parse(text, u, err, n);
}

Test(echo, every_host_of_a_list_is_checked)
{
	ackbox_url u;
	char err[512];
	cr_assert_eq(parse("amqp://,,,:5", &u, err, sizeof(err)), ACKBOX_ERR_BAD_URL);
	cr_assert_neq(strstr(err, "empty host"), NULL, "%s", err);
	cr_assert_eq(parse("kafka://h1:9092,h2:99999", &u, err, sizeof(err)), ACKBOX_ERR_BAD_URL);
	cr_assert_neq(strstr(err, "above 65535"), NULL, "%s", err);
	cr_assert_neq(strstr(err, "entry 2"), NULL, "%s", err);
	cr_assert_eq(parse("kafka://h1:9092,", &u, err, sizeof(err)), ACKBOX_ERR_BAD_URL);
	cr_assert_eq(parse("amqp://:5672", &u, err, sizeof(err)), ACKBOX_ERR_BAD_URL);
	cr_assert_neq(strstr(err, "port without a host"), NULL, "%s", err);
	cr_assert_eq(parse("mqtt://[]:1883", &u, err, sizeof(err)), ACKBOX_ERR_BAD_URL);
	/* what stays valid */
	cr_assert_eq(parse("kafka://h1:9092,[::1]:9093,h3", &u, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(u.host, "h1");
	cr_assert_eq(u.port, 9092);
	cr_assert_str_eq(u.hosts, "h1:9092,[::1]:9093,h3");
	ackbox_url_fini(&u);
	cr_assert_eq(parse("amqp://", &u, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(u.host, "");
	ackbox_url_fini(&u);
	cr_assert_eq(parse("mqtt://[::1]", &u, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(u.host, "::1");
	ackbox_url_fini(&u);
}

static int qcheck(const char *text, const char *const *known, char *err, size_t n)
{
	ackbox_url u;
	int rc;
	cr_assert_eq(ackbox_url_parse(text, &u, err, n), 0, "%s", err);
	rc = ackbox_url_query_check(&u, "transport.url", known, err, n);
	ackbox_url_fini(&u);
	return rc;
}

Test(echo, one_rule_for_query_parameters)
{
	static const char *const amqp[] = {"heartbeat", "name", NULL};
	static const char *const none[] = {NULL};
	char err[512];
	cr_assert_eq(qcheck("amqp://h?heartbeat=5&name=svc", amqp, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(qcheck("amqp://h", amqp, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(qcheck("amqp://h?heartbeat=5&heartbeat=0", amqp, err, sizeof(err)),
	             ACKBOX_ERR_BAD_URL);
	cr_assert_neq(strstr(err, "'heartbeat' is given twice"), NULL, "%s", err);
	cr_assert_eq(qcheck("amqp://h?heartbeat=", amqp, err, sizeof(err)), ACKBOX_ERR_BAD_URL);
	cr_assert_neq(strstr(err, "'heartbeat' has no value"), NULL, "%s", err);
	cr_assert_eq(qcheck("amqp://h?heartbeat", amqp, err, sizeof(err)), ACKBOX_ERR_BAD_URL);
	cr_assert_eq(qcheck("amqp://h?hearbeat=5", amqp, err, sizeof(err)), ACKBOX_ERR_BAD_URL);
	cr_assert_neq(strstr(err, "unknown parameter 'hearbeat' (known: heartbeat, name)"), NULL,
	              "%s", err);
	cr_assert_neq(strstr(err, "transport.url"), NULL, "%s", err);
	cr_assert_eq(qcheck("amqp://h?a=1&&b=2", NULL, err, sizeof(err)), ACKBOX_ERR_BAD_URL);
	cr_assert_eq(qcheck("mqtt://h?x=1", none, err, sizeof(err)), ACKBOX_ERR_BAD_URL);
	cr_assert_neq(strstr(err, "takes none"), NULL, "%s", err);
	/* any name, still once and with a value */
	cr_assert_eq(qcheck("postgres://h/db?sslmode=require&schema=s", NULL, err, sizeof(err)), 0);
	cr_assert_eq(qcheck("postgres://h/db?schema=a&schema=b", NULL, err, sizeof(err)),
	             ACKBOX_ERR_BAD_URL);
	/* a name is escaped when echoed */
	cr_assert_eq(qcheck("amqp://h?%1b=1", amqp, err, sizeof(err)), ACKBOX_ERR_BAD_URL);
	cr_assert_neq(strstr(err, "'%1b'"), NULL, "names are compared and shown as written: %s", err);
}

/*
 * The rule holds for every plugin this build has, found from the plugin
 * folders (plugin_list.h): an unknown parameter, a duplicated one and an
 * empty one are refused by ackbox_new with ACKBOX_ERR_BAD_URL naming it,
 * before anything connects (the hosts are unreachable).
 */
typedef struct scheme_row {
	const char *scheme;
	int is_store, built;
} scheme_row;

#define ROW(scheme, plugin, is_store, built, option, package) {scheme, is_store, built},
static const scheme_row schemes[] = {ACKBOX_PLUGIN_SCHEMES(ROW){NULL, 0, 0}};
#undef ROW

static int open_with(const char *store_url, const char *tx_url, char *err, size_t n)
{
	ackbox_conf *c = ackbox_conf_new();
	ackbox *ab = NULL;
	int rc = ackbox_conf_set(c, "store.url", store_url, err, n);
	if (rc == 0 && tx_url)
		rc = ackbox_conf_set(c, "transport.url", tx_url, err, n);
	if (rc == 0)
		rc = ackbox_new(&ab, c, err, n);
	if (rc == 0)
		ackbox_destroy(ab);
	else
		ackbox_conf_destroy(c);
	return rc;
}

Test(echo, every_plugin_refuses_unknown_duplicated_and_empty_parameters)
{
	char dir_url[1200], url[512], err[512];
	char *dir = tu_tmpdir("echo");
	const char *bad[][2] = {{"?ackbox_no_such=1", "unknown parameter 'ackbox_no_such'"},
	                        {"?ackbox_no_such=", "'ackbox_no_such'"},
	                        {NULL, NULL}};
	int sqlite_built = 0, checked = 0;
	for (const scheme_row *r = schemes; r->scheme; r++)
		sqlite_built |= r->built && strcmp(r->scheme, "sqlite") == 0;
	cr_assert(sqlite_built, "this test opens transports over an SQLite store");
	snprintf(dir_url, sizeof(dir_url), "sqlite://%s/outbox.db", dir);
	for (const scheme_row *r = schemes; r->scheme; r++) {
		if (!r->built)
			continue;
		for (int i = 0; bad[i][0]; i++) {
			if (r->is_store && strcmp(r->scheme, "sqlite") == 0)
				snprintf(url, sizeof(url), "sqlite://%s/q.db%s", dir, bad[i][0]);
			else
				snprintf(url, sizeof(url), "%s://127.0.0.1:1/x%s", r->scheme, bad[i][0]);
			int rc = r->is_store ? open_with(url, NULL, err, sizeof(err))
			                     : open_with(dir_url, url, err, sizeof(err));
			cr_assert_eq(rc, ACKBOX_ERR_BAD_URL, "%s: %d %s", url, rc, err);
			cr_assert_neq(strstr(err, bad[i][1]), NULL, "%s: %s", url, err);
			cr_assert_neq(strstr(err, r->is_store ? "store.url" : "transport.url"), NULL,
			              "%s: %s", url, err);
		}
		checked++;
	}
	cr_assert_gt(checked, 1);
	tu_rmrf(dir);
	free(dir);
}

/*
 * Secrets off the command line: store.url and transport.url take env:NAME
 * and file:PATH; errors name the variable or the file, never the URL's
 * password; a URL that does not parse is echoed redacted.
 */
Test(echo, urls_come_from_the_environment_or_a_file)
{
	char dir_path[1100], file[1200], err[512];
	char *dir = tu_tmpdir("secret");
	ackbox_conf *c = ackbox_conf_new();
	FILE *f;

	setenv("ACKBOX_TEST_URL", "amqp://svc:s3cret@127.0.0.1:5672/prod", 1);
	cr_assert_eq(ackbox_conf_set(c, "transport.url", "env:ACKBOX_TEST_URL", err, sizeof(err)), 0,
	             "%s", err);
	cr_assert_str_eq(ackbox_conf_get(c, "transport.url"), "amqp://svc:s3cret@127.0.0.1:5672/prod");
	unsetenv("ACKBOX_NO_SUCH_VAR");
	cr_assert_eq(ackbox_conf_set(c, "transport.url", "env:ACKBOX_NO_SUCH_VAR", err, sizeof(err)),
	             ACKBOX_ERR_BAD_VALUE);
	cr_assert_neq(strstr(err, "ACKBOX_NO_SUCH_VAR is not set"), NULL, "%s", err);
	cr_assert_str_eq(ackbox_conf_get(c, "transport.url"), "amqp://svc:s3cret@127.0.0.1:5672/prod",
	                 "a failed set changes nothing");
	setenv("ACKBOX_TEST_URL", "amqp://svc:s3cret@127.0.0.1:99999/", 1);
	cr_assert_eq(ackbox_conf_set(c, "transport.url", "env:ACKBOX_TEST_URL", err, sizeof(err)),
	             ACKBOX_ERR_BAD_URL);
	cr_assert_eq(strstr(err, "s3cret"), NULL, "%s", err);

	snprintf(dir_path, sizeof(dir_path), "%s", dir);
	snprintf(file, sizeof(file), "%s/store-url", dir_path);
	f = fopen(file, "w");
	cr_assert_not_null(f);
	fprintf(f, "sqlite://%s/outbox.db\n# a comment line is not read\n", dir_path);
	fclose(f);
	char ref[1300], want[1300];
	snprintf(ref, sizeof(ref), "file:%s", file);
	snprintf(want, sizeof(want), "sqlite://%s/outbox.db", dir_path);
	cr_assert_eq(ackbox_conf_set(c, "store.url", ref, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(ackbox_conf_get(c, "store.url"), want, "the first line, without its newline");
	cr_assert_eq(ackbox_conf_set(c, "store.url", "file:/nonexistent/url", err, sizeof(err)),
	             ACKBOX_ERR_BAD_VALUE);
	cr_assert_neq(strstr(err, "cannot read '/nonexistent/url'"), NULL, "%s", err);
	cr_assert_eq(ackbox_conf_set(c, "store.url", "file:/dev/null", err, sizeof(err)),
	             ACKBOX_ERR_BAD_VALUE, "not a regular file: %s", err);
	ackbox_conf_destroy(c);
	/* a handle opens with what the file says */
	ackbox *ab = NULL;
	c = ackbox_conf_new();
	cr_assert_eq(ackbox_conf_set(c, "store.url", ref, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	ackbox_destroy(ab);
	unsetenv("ACKBOX_TEST_URL");
	tu_rmrf(dir);
	free(dir);
}
