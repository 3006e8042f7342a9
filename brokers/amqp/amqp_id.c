/*
 * amqp_id.c - ackbox_amqp_message_id (include/ackbox/amqp.h): the id
 * amqp.c sends as the message-id property, read back by a consumer.
 */
#include <string.h>

#include <amqp.h>

#include <ackbox/amqp.h>

int ackbox_amqp_message_id(const struct amqp_basic_properties_t_ *props, ackbox_id *out)
{
	char text[ACKBOX_ID_STRLEN];
	if (!props || !out)
		return ACKBOX_ERR_INVALID;
	if (!(props->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) || !props->message_id.bytes)
		return ACKBOX_ERR_NOT_FOUND;
	if (props->message_id.len != ACKBOX_ID_STRLEN - 1)
		return ACKBOX_ERR_INVALID;
	memcpy(text, props->message_id.bytes, ACKBOX_ID_STRLEN - 1);
	text[ACKBOX_ID_STRLEN - 1] = '\0';
	return ackbox_id_parse(text, out);
}
