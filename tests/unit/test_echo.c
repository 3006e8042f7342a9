/*
 * test_echo.c - what ackbox echoes is safe to echo: ackbox_escape() leaves
 * no control character, ackbox_url_redact() no password, a URL that fails
 * to parse is shown redacted; and one rule for URL query parameters and host
 * lists (unknown, duplicated or empty parameters, empty hosts, every port).
 */
#include "testutil.h"

#include <ackbox/plugin.h>

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
