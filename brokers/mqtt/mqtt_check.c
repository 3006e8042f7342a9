/*
 * mqtt_check.c - the rules a PUBLISH must follow before it leaves: a topic
 * name without wildcards, strings MQTT can carry, a packet within the
 * broker's Maximum Packet Size. Refusing here keeps out of the store a
 * message the broker would answer by closing the connection.
 */
#include "mqtt_check.h"

#include <stdio.h>
#include <string.h>

#define MQTT_MAX_STRING 65535u

const char *abx_mqtt_utf8_problem(const void *v, size_t len, size_t *at)
{
	const unsigned char *s = v;
	size_t i = 0;
	while (i < len) {
		unsigned c = s[i];
		size_t n;
		uint32_t cp;
		*at = i;
		if (c < 0x80) {
			n = 1;
			cp = c;
		} else if (c == 0xC0 || c == 0xC1) {
			return "an overlong encoding";
		} else if ((c & 0xE0) == 0xC0) {
			n = 2;
			cp = c & 0x1F;
		} else if ((c & 0xF0) == 0xE0) {
			n = 3;
			cp = c & 0x0F;
		} else if (c >= 0xF0 && c <= 0xF4) {
			n = 4;
			cp = c & 0x07;
		} else if (c >= 0xF5 && c <= 0xF7) {
			return "a code point above U+10FFFF";
		} else if (c < 0xC0) {
			return "a continuation byte where a character should start";
		} else {
			return "a byte that never occurs in UTF-8";
		}
		if (len - i < n)
			return "a sequence cut short";
		for (size_t j = 1; j < n; j++) {
			if ((s[i + j] & 0xC0) != 0x80)
				return "a sequence cut short";
			cp = (cp << 6) | (s[i + j] & 0x3F);
		}
		if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000))
			return "an overlong encoding";
		if (cp > 0x10FFFF)
			return "a code point above U+10FFFF";
		if (cp >= 0xD800 && cp <= 0xDFFF)
			return "a UTF-16 surrogate (U+D800..U+DFFF)";
		if (cp == 0)
			return "U+0000";
		if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F))
			return "a control character (U+0001..U+001F, U+007F..U+009F)";
		if ((cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE)
			return "a Unicode non-character";
		i += n;
	}
	return NULL;
}

/* One MQTT string: at most 65 535 bytes of UTF-8 MQTT accepts. */
static int check_string(const char *field, const void *s, size_t len, char *errstr,
                        size_t errstr_size)
{
	size_t at = 0;
	const char *why;
	if (len > MQTT_MAX_STRING) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "mqtt: %s is %zu bytes; an MQTT string holds at most 65535", field,
		                  len);
		return ACKBOX_ERR_INVALID;
	}
	why = abx_mqtt_utf8_problem(s, len, &at);
	if (why) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "mqtt: %s has %s at byte %zu; MQTT strings must be well-formed "
		                  "UTF-8 without U+0000, control characters or non-characters",
		                  field, why, at);
		return ACKBOX_ERR_INVALID;
	}
	return 0;
}

/* How many bytes of s (valid UTF-8) fit in max without cutting a character. */
static int shown(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n <= max)
		return (int)n;
	while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80)
		max--;
	return (int)max;
}

static int check_topic(const char *topic, char *errstr, size_t errstr_size)
{
	size_t len = topic ? strlen(topic) : 0;
	const char *wild;
	int rc;
	if (len == 0) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "mqtt: topic is empty; an MQTT message is published to a topic name");
		return ACKBOX_ERR_INVALID;
	}
	rc = check_string("topic", topic, len, errstr, errstr_size);
	if (rc)
		return rc;
	wild = strpbrk(topic, "#+");
	if (wild) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "mqtt: topic '%.*s%s' contains the wildcard '%c'; wildcards are for "
		                  "subscriptions, a topic name to publish to must not contain '#' or '+'",
		                  shown(topic, 64), topic, len > 64 ? "..." : "", *wild);
		return ACKBOX_ERR_INVALID;
	}
	return 0;
}

/* The MQTT 5 properties mqtt.c turns key, headers and content type into. */
static int check_properties(const ackbox_tx_msg *m, char *errstr, size_t errstr_size)
{
	char field[160];
	int rc;
	if (m->key_len) {
		rc = check_string("key (user property 'ackbox-key')", m->key, m->key_len, errstr,
		                  errstr_size);
		if (rc)
			return rc;
	}
	for (size_t i = 0; i < m->header_count; i++) {
		const ackbox_header *h = &m->headers[i];
		snprintf(field, sizeof(field), "header %zu name (a user property name)", i);
		rc = check_string(field, h->name, strlen(h->name), errstr, errstr_size);
		if (rc)
			return rc;
		snprintf(field, sizeof(field), "header %zu ('%.*s%s') value (a user property value)", i,
		         shown(h->name, 64), h->name, strlen(h->name) > 64 ? "..." : "");
		rc = check_string(field, h->value, h->value_len, errstr, errstr_size);
		if (rc)
			return rc;
	}
	if (m->content_type)
		return check_string("content_type (the Content Type property)", m->content_type,
		                    strlen(m->content_type), errstr, errstr_size);
	return 0;
}

static size_t varint_size(size_t n)
{
	return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4;
}

size_t abx_mqtt_publish_size(const ackbox_tx_msg *m, int v5, int qos, size_t *remaining)
{
	size_t rem = 2 + strlen(m->topic) + (qos > 0 ? 2 : 0) + m->payload_len;
	if (v5) {
		/* each user property: identifier, then two length-prefixed strings */
		size_t p = 1 + 2 + strlen("ackbox-id") + 2 + (m->id_str ? strlen(m->id_str) : 36);
		if (m->key_len)
			p += 1 + 2 + strlen("ackbox-key") + 2 + m->key_len;
		for (size_t i = 0; i < m->header_count; i++)
			p += 1 + 2 + strlen(m->headers[i].name) + 2 + m->headers[i].value_len;
		if (m->content_type)
			p += 1 + 2 + strlen(m->content_type);
		rem += varint_size(p) + p;
	}
	if (remaining)
		*remaining = rem;
	return 1 + varint_size(rem) + rem;
}

int abx_mqtt_check(const ackbox_tx_msg *m, int v5, int qos, uint32_t max_packet, char *errstr,
                   size_t errstr_size)
{
	size_t size, rem;
	int rc = check_topic(m->topic, errstr, errstr_size);
	if (rc)
		return rc;
	/* 3.1.1 sends neither key, headers nor content type: nothing to check */
	if (v5) {
		rc = check_properties(m, errstr, errstr_size);
		if (rc)
			return rc;
	}
	size = abx_mqtt_publish_size(m, v5, qos, &rem);
	if (rem > ABX_MQTT_MAX_REMAINING) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "mqtt: the PUBLISH packet would be %zu bytes; MQTT's limit is %u bytes "
		                  "after the fixed header",
		                  size, ABX_MQTT_MAX_REMAINING);
		return ACKBOX_ERR_TOO_LARGE;
	}
	if (max_packet && size > max_packet) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "mqtt: the PUBLISH packet would be %zu bytes (payload %zu), over the "
		                  "broker's Maximum Packet Size of %u bytes (from its CONNACK)",
		                  size, m->payload_len, (unsigned)max_packet);
		return ACKBOX_ERR_TOO_LARGE;
	}
	return 0;
}
