/*
 * test_mqtt_check.c - the rules mqtt_check.c applies before a PUBLISH,
 * without a broker: which byte strings MQTT (and mosquitto) accept, and the
 * packet size mqtt.c's PUBLISH has, byte for byte.
 */
#include "testutil.h"

#include "mqtt_check.h"

typedef struct utf8_case {
	const char *bytes;
	size_t len;
	const char *problem; /* NULL: accepted */
	size_t at;
} utf8_case;

#define OK(s) {s, sizeof(s) - 1, NULL, 0}
#define BAD(s, why, at) {s, sizeof(s) - 1, why, at}

static const utf8_case cases[] = {
	OK(""),
	OK("plain/ascii ~!"),
	OK("caf\xC3\xA9"),              /* U+00E9, two bytes */
	OK("\xE2\x82\xAC"),             /* U+20AC, three bytes */
	OK("\xF0\x9F\x98\x80"),         /* U+1F600, four bytes */
	OK("\xEF\xBF\xBD"),             /* U+FFFD, the highest BMP character allowed */
	OK("\xF4\x8F\xBF\xBD"),         /* U+10FFFD */
	OK("\xC2\xA0"),                 /* U+00A0, just after the C1 controls */
	BAD("a\x00" "b", "U+0000", 1),
	BAD("\xC0\x80", "an overlong encoding", 0),           /* U+0000 in two bytes */
	BAD("x\xC1\xBF", "an overlong encoding", 1),
	BAD("\xE0\x80\xAF", "an overlong encoding", 0),       /* '/' in three bytes */
	BAD("\xF0\x80\x80\xAF", "an overlong encoding", 0),   /* '/' in four bytes */
	BAD("\xED\xA0\x80", "a UTF-16 surrogate (U+D800..U+DFFF)", 0),
	BAD("ab\xED\xBF\xBF", "a UTF-16 surrogate (U+D800..U+DFFF)", 2),
	BAD("\xF4\x90\x80\x80", "a code point above U+10FFFF", 0),
	BAD("\xF5\x80\x80\x80", "a code point above U+10FFFF", 0),
	BAD("\xF8\x88\x80\x80\x80", "a byte that never occurs in UTF-8", 0),
	BAD("\xFF", "a byte that never occurs in UTF-8", 0),
	BAD("a\x80", "a continuation byte where a character should start", 1),
	BAD("\xE2\x82", "a sequence cut short", 0),
	BAD("\xE2\x82" "a", "a sequence cut short", 0),
	BAD("\xF0\x9F\x98", "a sequence cut short", 0),
	BAD("tab\there", "a control character (U+0001..U+001F, U+007F..U+009F)", 3),
	BAD("\x7F", "a control character (U+0001..U+001F, U+007F..U+009F)", 0),
	BAD("\xC2\x9F", "a control character (U+0001..U+001F, U+007F..U+009F)", 0),
	BAD("\xEF\xB7\x90", "a Unicode non-character", 0),    /* U+FDD0 */
	BAD("\xEF\xBF\xBE", "a Unicode non-character", 0),    /* U+FFFE */
	BAD("\xF0\x9F\xBF\xBF", "a Unicode non-character", 0),/* U+1FFFF */
};

Test(mqtt_check, utf8_as_mqtt_and_mosquitto_accept_it)
{
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t at = 99;
		const char *why = abx_mqtt_utf8_problem(cases[i].bytes, cases[i].len, &at);
		if (!cases[i].problem) {
			cr_assert_null(why, "case %zu: %s", i, why);
			continue;
		}
		cr_assert_not_null(why, "case %zu accepted", i);
		cr_assert_str_eq(why, cases[i].problem, "case %zu", i);
		cr_assert_eq(at, cases[i].at, "case %zu: at %zu", i, at);
	}
}

static const char id36[] = "00000000-0000-0000-0000-000000000000";

Test(mqtt_check, publish_size_counts_every_byte_of_the_packet)
{
	ackbox_header h[2] = {{"h1", "v", 1}, {"hdr2", "value", 5}};
	ackbox_tx_msg m = {.id_str = id36, .topic = "t/big", .payload_len = 100};
	size_t rem;
	/* 3.1.1, QoS 1: topic 2+5, packet id 2, payload */
	cr_assert_eq(abx_mqtt_publish_size(&m, 0, 1, &rem), 1 + 1 + 109u);
	cr_assert_eq(rem, 109u);
	/* QoS 0 has no packet id */
	cr_assert_eq(abx_mqtt_publish_size(&m, 0, 0, &rem), 2 + 107u);
	/* MQTT 5: properties length 1 + ackbox-id (1 + 2+9 + 2+36 = 50) */
	cr_assert_eq(abx_mqtt_publish_size(&m, 1, 1, &rem), 1 + 2 + 160u);
	/* + ackbox-key (1 + 2+10 + 2+3), two headers (1+2+2+2+1, 1+2+4+2+5),
	 * content type (1 + 2+10): 50 + 18 + 8 + 14 + 13 = 103 */
	m.key = "key";
	m.key_len = 3;
	m.headers = h;
	m.header_count = 2;
	m.content_type = "text/plain";
	cr_assert_eq(abx_mqtt_publish_size(&m, 1, 1, &rem), 1 + 2 + (2 + 5 + 2 + 1 + 103 + 100u));
	/* remaining length 127 takes one byte, 128 two */
	ackbox_tx_msg s = {.id_str = id36, .topic = "t", .payload_len = 122};
	cr_assert_eq(abx_mqtt_publish_size(&s, 0, 1, &rem), 1 + 1 + 127u);
	s.payload_len = 123;
	cr_assert_eq(abx_mqtt_publish_size(&s, 0, 1, &rem), 1 + 2 + 128u);
}

Test(mqtt_check, check_names_the_field_and_the_rule)
{
	char err[300];
	ackbox_header h = {"x-trace", "a\tb", 3};
	ackbox_tx_msg m = {.id_str = id36, .topic = "", .payload = "p", .payload_len = 1};
	cr_assert_eq(abx_mqtt_check(&m, 1, 1, 0, err, sizeof(err)), ACKBOX_ERR_INVALID);
	cr_assert(strstr(err, "topic is empty"), "%s", err);
	m.topic = "a/+";
	cr_assert_eq(abx_mqtt_check(&m, 0, 1, 0, err, sizeof(err)), ACKBOX_ERR_INVALID);
	cr_assert(strstr(err, "topic 'a/+' contains the wildcard '+'"), "%s", err);
	m.topic = "a/b";
	m.headers = &h;
	m.header_count = 1;
	cr_assert_eq(abx_mqtt_check(&m, 0, 1, 0, err, sizeof(err)), 0, "3.1.1 sends no headers");
	cr_assert_eq(abx_mqtt_check(&m, 1, 1, 0, err, sizeof(err)), ACKBOX_ERR_INVALID);
	cr_assert(strstr(err, "header 0 ('x-trace') value (a user property value) has a control "
	                      "character"),
	          "%s", err);
	h.value = "ab";
	h.value_len = 2;
	/* 1 + 1 + (2+3 + 2 + 1 + 50 + 1+2+7+2+2 + 1) = 75 */
	cr_assert_eq(abx_mqtt_check(&m, 1, 1, 75, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(abx_mqtt_check(&m, 1, 1, 74, err, sizeof(err)), ACKBOX_ERR_TOO_LARGE);
	cr_assert(strstr(err, "would be 75 bytes (payload 1), over the broker's Maximum Packet Size "
	                      "of 74 bytes"),
	          "%s", err);
	/* MQTT's own ceiling, whatever the broker says */
	m.payload_len = ABX_MQTT_MAX_REMAINING;
	cr_assert_eq(abx_mqtt_check(&m, 0, 1, 0, err, sizeof(err)), ACKBOX_ERR_TOO_LARGE);
	cr_assert(strstr(err, "MQTT's limit is 268435455 bytes"), "%s", err);
}
