/*
 * kafka.h - for consumers using librdkafka: read the id ackbox put on a
 * message (the `ackbox-id` header) to record it in the inbox
 * (include/ackbox/inbox.h). Installed when the Kafka transport is built.
 */
#ifndef ACKBOX_KAFKA_H
#define ACKBOX_KAFKA_H

#include <ackbox/ackbox.h>

#ifdef __cplusplus
extern "C" {
#endif

/* librdkafka's rd_kafka_message_t and rd_kafka_headers_t (rdkafka.h). */
struct rd_kafka_message_s;
struct rd_kafka_headers_s;

/** The header ackbox's Kafka transport puts its id in. */
#define ACKBOX_KAFKA_ID_HEADER "ackbox-id"

/**
 * Reads ackbox's id from a consumed message: the last `ackbox-id` header,
 * in its 36-character UUID form.
 *
 * Returns 0 with *out set; ACKBOX_ERR_NOT_FOUND if the message has no such
 * header (produced by something other than ackbox: the consumer decides
 * what to do with it); ACKBOX_ERR_INVALID if an argument is NULL, the
 * message is an error event (msg->err set), or the header is not a UUID.
 *
 * Threading: the thread that polled msg (librdkafka parses headers on
 * first access). Ownership: the caller keeps msg.
 */
ACKBOX_API int ackbox_kafka_message_id(const struct rd_kafka_message_s *msg, ackbox_id *out);

/**
 * The same from headers already taken with rd_kafka_message_headers().
 * Threading: any thread; reads hdrs only. Ownership: the caller keeps hdrs.
 */
ACKBOX_API int ackbox_kafka_headers_id(const struct rd_kafka_headers_s *hdrs, ackbox_id *out);

#ifdef __cplusplus
}
#endif
#endif /* ACKBOX_KAFKA_H */
