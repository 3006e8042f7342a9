/*
 * nats_check.h - what a JetStream publish can carry: the subject rules, the
 * header rules of the NATS protocol, and the size of the whole message
 * against the server's max_payload. Pure functions, no client library.
 */
#ifndef ACKBOX_NATS_CHECK_H
#define ACKBOX_NATS_CHECK_H

#include <stdint.h>

#include <ackbox/transport.h>

/* The headers ackbox itself puts on every message. */
#define ABX_NATS_HDR_ID "Nats-Msg-Id"
#define ABX_NATS_HDR_KEY "ackbox-key"
#define ABX_NATS_HDR_CONTENT_TYPE "Content-Type"

/* The longest subject accepted: the HPUB line that carries it (with the
 * reply inbox and two sizes) must fit the server's max_control_line, 4096
 * bytes by default. */
#define ABX_NATS_MAX_SUBJECT 3900

/* 0 if subject may be published to; else ACKBOX_ERR_INVALID and why. */
int abx_nats_check_subject(const char *subject, char *errstr, size_t errstr_size);

/* Bytes of the header block nats.c sends for m ("NATS/1.0\r\n", one
 * "name: value\r\n" per header, "\r\n"). */
size_t abx_nats_header_size(const ackbox_tx_msg *m);

/*
 * 0 if m can be published: subject, header names and values, key and
 * content type as header values, and, when max_payload > 0, headers plus
 * payload within it (ACKBOX_ERR_TOO_LARGE). Else ACKBOX_ERR_INVALID or
 * ACKBOX_ERR_TOO_LARGE with errstr naming the field and the rule.
 */
int abx_nats_check(const ackbox_tx_msg *m, int64_t max_payload, char *errstr, size_t errstr_size);

#endif
