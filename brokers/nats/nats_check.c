/*
 * nats_check.c - the publish rules of NATS and JetStream, checked before a
 * message is stored (validate) and again before it is sent: what the server
 * would refuse, drop the connection for, or deliver altered.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "nats_check.h"

int abx_nats_check_subject(const char *s, char *errstr, size_t errstr_size)
{
	size_t n = strlen(s), tok = 0;
	if (n == 0) {
		ackbox_errstr_set(errstr, errstr_size, "nats: subject is empty");
		return ACKBOX_ERR_INVALID;
	}
	if (n > ABX_NATS_MAX_SUBJECT) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "nats: subject is %zu bytes; at most %d fit the server's "
		                  "protocol line (max_control_line, 4096 by default)",
		                  n, ABX_NATS_MAX_SUBJECT);
		return ACKBOX_ERR_INVALID;
	}
	for (size_t i = 0; i <= n; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch == '.' || ch == '\0') {
			if (tok == 0) {
				ackbox_errstr_set(errstr, errstr_size,
				                  "nats: subject '%.64s' has an empty token at byte %zu; "
				                  "tokens between '.' must not be empty",
				                  s, i);
				return ACKBOX_ERR_INVALID;
			}
			tok = 0;
			continue;
		}
		tok++;
		if (ch == '*' || ch == '>') {
			ackbox_errstr_set(errstr, errstr_size,
			                  "nats: subject '%.64s' contains the wildcard '%c' at byte %zu; "
			                  "wildcards are for subscriptions, a publish subject must not "
			                  "contain them",
			                  s, ch, i);
			return ACKBOX_ERR_INVALID;
		}
		if (ch <= 0x20 || ch == 0x7f) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "nats: subject '%.64s' has %s 0x%02x at byte %zu; a subject "
			                  "must not contain spaces or control characters",
			                  s, ch == ' ' ? "a space," : "the byte", ch, i);
			return ACKBOX_ERR_INVALID;
		}
	}
	return 0;
}

/* A header name: printable ASCII without ':' (the protocol splits on it). */
static int check_name(const char *what, const char *name, char *errstr, size_t errstr_size)
{
	if (!*name) {
		ackbox_errstr_set(errstr, errstr_size, "nats: %s is empty", what);
		return ACKBOX_ERR_INVALID;
	}
	for (size_t i = 0; name[i]; i++) {
		unsigned char ch = (unsigned char)name[i];
		if (ch <= 0x20 || ch >= 0x7f || ch == ':') {
			ackbox_errstr_set(errstr, errstr_size,
			                  "nats: %s '%.64s' has the byte 0x%02x at offset %zu; a NATS "
			                  "header name is printable ASCII without spaces or ':'",
			                  what, name, ch, i);
			return ACKBOX_ERR_INVALID;
		}
	}
	return 0;
}

/* A header value: one text line that arrives as sent. */
static int check_value(const char *what, const void *v, size_t len, char *errstr,
                       size_t errstr_size)
{
	const unsigned char *p = v;
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0') {
			ackbox_errstr_set(errstr, errstr_size,
			                  "nats: %s has the byte 0x%02x at offset %zu; a NATS header "
			                  "value is one line without CR, LF or NUL",
			                  what, p[i], i);
			return ACKBOX_ERR_INVALID;
		}
	}
	if (len && (p[0] == ' ' || p[0] == '\t' || p[len - 1] == ' ' || p[len - 1] == '\t')) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "nats: %s begins or ends with a space or tab, which a NATS header "
		                  "value loses on the way",
		                  what);
		return ACKBOX_ERR_INVALID;
	}
	return 0;
}

static size_t line(size_t name_len, size_t value_len)
{
	return name_len + 2 + value_len + 2; /* "name: value\r\n" */
}

size_t abx_nats_header_size(const ackbox_tx_msg *m)
{
	size_t n = strlen("NATS/1.0\r\n") + 2;
	n += line(strlen(ABX_NATS_HDR_ID), strlen(m->id_str));
	if (m->key_len)
		n += line(strlen(ABX_NATS_HDR_KEY), m->key_len);
	if (m->content_type)
		n += line(strlen(ABX_NATS_HDR_CONTENT_TYPE), strlen(m->content_type));
	for (size_t i = 0; i < m->header_count; i++)
		n += line(strlen(m->headers[i].name), m->headers[i].value_len);
	return n;
}

int abx_nats_check(const ackbox_tx_msg *m, int64_t max_payload, char *errstr, size_t errstr_size)
{
	char what[160];
	int rc = abx_nats_check_subject(m->topic, errstr, errstr_size);
	if (rc)
		return rc;
	if (m->key_len &&
	    (rc = check_value("key (header '" ABX_NATS_HDR_KEY "')", m->key, m->key_len, errstr,
	                      errstr_size)))
		return rc;
	if (m->content_type &&
	    (rc = check_value("content_type (header '" ABX_NATS_HDR_CONTENT_TYPE "')",
	                      m->content_type, strlen(m->content_type), errstr, errstr_size)))
		return rc;
	for (size_t i = 0; i < m->header_count; i++) {
		const ackbox_header *h = &m->headers[i];
		snprintf(what, sizeof(what), "header %zu name", i);
		if ((rc = check_name(what, h->name, errstr, errstr_size)))
			return rc;
		if (strcasecmp(h->name, ABX_NATS_HDR_ID) == 0) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "nats: header %zu is named '%s'; ackbox sets that header to the "
			                  "message id (JetStream deduplicates on it)",
			                  i, h->name);
			return ACKBOX_ERR_INVALID;
		}
		snprintf(what, sizeof(what), "header %zu ('%.64s') value", i, h->name);
		if ((rc = check_value(what, h->value, h->value_len, errstr, errstr_size)))
			return rc;
	}
	if (max_payload > 0) {
		size_t hl = abx_nats_header_size(m);
		if (hl + m->payload_len > (uint64_t)max_payload) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "nats: the message would be %zu bytes (payload %zu, headers "
			                  "%zu), over the server's max_payload of %lld bytes",
			                  hl + m->payload_len, m->payload_len, hl,
			                  (long long)max_payload);
			return ACKBOX_ERR_TOO_LARGE;
		}
	}
	return 0;
}
