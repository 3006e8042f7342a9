/*
 * kafka_id.c - ackbox_kafka_message_id (include/ackbox/kafka.h): the id
 * kafka.c sends as the `ackbox-id` header, read back by a consumer.
 */
#include <string.h>

#include <librdkafka/rdkafka.h>

#include <ackbox/kafka.h>

int ackbox_kafka_headers_id(const struct rd_kafka_headers_s *hdrs, ackbox_id *out)
{
	const void *val = NULL;
	size_t size = 0;
	char text[ACKBOX_ID_STRLEN];
	if (!hdrs || !out)
		return ACKBOX_ERR_INVALID;
	if (rd_kafka_header_get_last(hdrs, ACKBOX_KAFKA_ID_HEADER, &val, &size) !=
	        RD_KAFKA_RESP_ERR_NO_ERROR)
		return ACKBOX_ERR_NOT_FOUND;
	if (!val || size != ACKBOX_ID_STRLEN - 1)
		return ACKBOX_ERR_INVALID;
	memcpy(text, val, ACKBOX_ID_STRLEN - 1);
	text[ACKBOX_ID_STRLEN - 1] = '\0';
	return ackbox_id_parse(text, out);
}

int ackbox_kafka_message_id(const struct rd_kafka_message_s *msg, ackbox_id *out)
{
	rd_kafka_headers_t *hdrs = NULL;
	if (!msg || !out || msg->err)
		return ACKBOX_ERR_INVALID;
	if (rd_kafka_message_headers(msg, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR || !hdrs)
		return ACKBOX_ERR_NOT_FOUND; /* no headers at all */
	return ackbox_kafka_headers_id(hdrs, out);
}
