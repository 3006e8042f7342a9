/*
 * amqp.h - for consumers using rabbitmq-c: read the id ackbox put on a
 * message (the AMQP message-id property) to record it in the inbox
 * (include/ackbox/inbox.h). Installed when the AMQP transport is built.
 */
#ifndef ACKBOX_AMQP_H
#define ACKBOX_AMQP_H

#include <ackbox/ackbox.h>

#ifdef __cplusplus
extern "C" {
#endif

/* rabbitmq-c's amqp_basic_properties_t (amqp_framing.h); include rabbitmq-c
 * to pass one. */
struct amqp_basic_properties_t_;

/**
 * Reads ackbox's id from the properties of a delivered message
 * (envelope.message.properties after amqp_consume_message, or the
 * properties of amqp_read_message after basic.get): the message-id
 * property in its 36-character UUID form.
 *
 * Returns 0 with *out set; ACKBOX_ERR_NOT_FOUND if the message has no
 * message-id (published by something other than ackbox: the consumer
 * decides what to do with it, e.g. dead-letter it or deduplicate by a key
 * of its own); ACKBOX_ERR_INVALID if props or out is NULL or the
 * message-id is not a UUID (another publisher's own id scheme).
 *
 * Threading: any thread; reads props only. Ownership: the caller keeps props.
 */
ACKBOX_API int ackbox_amqp_message_id(const struct amqp_basic_properties_t_ *props,
                                      ackbox_id *out);

#ifdef __cplusplus
}
#endif
#endif /* ACKBOX_AMQP_H */
