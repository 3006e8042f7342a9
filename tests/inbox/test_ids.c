/*
 * test_ids.c - the id helpers of the broker plugins (include/ackbox/amqp.h,
 * kafka.h, mqtt.h) on what each client library hands a consumer: the id
 * found, a message without one (NOT_FOUND), a malformed one (INVALID).
 */
#include "testutil.h"

#ifdef WITH_AMQP
#include <amqp.h>
#include <ackbox/amqp.h>
#endif
#ifdef WITH_KAFKA
#include <librdkafka/rdkafka.h>
#include <ackbox/kafka.h>
#endif
#ifdef WITH_MQTT
#include <MQTTProperties.h>
#include <ackbox/mqtt.h>
#endif

static const char *const ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

static int same(const ackbox_id *id)
{
	char text[ACKBOX_ID_STRLEN];
	ackbox_id_format(id, text);
	return strcmp(text, ID) == 0;
}

#ifdef WITH_AMQP
Test(ids, amqp_message_id_property)
{
	amqp_basic_properties_t p;
	ackbox_id id;
	memset(&p, 0, sizeof(p));
	cr_assert_eq(ackbox_amqp_message_id(&p, &id), ACKBOX_ERR_NOT_FOUND);
	p._flags = AMQP_BASIC_MESSAGE_ID_FLAG;
	p.message_id = amqp_cstring_bytes(ID);
	cr_assert_eq(ackbox_amqp_message_id(&p, &id), 0);
	cr_assert(same(&id));
	p.message_id = amqp_cstring_bytes("order-42"); /* another publisher's id */
	cr_assert_eq(ackbox_amqp_message_id(&p, &id), ACKBOX_ERR_INVALID);
	p._flags = 0; /* set but not flagged: not there */
	cr_assert_eq(ackbox_amqp_message_id(&p, &id), ACKBOX_ERR_NOT_FOUND);
	cr_assert_eq(ackbox_amqp_message_id(NULL, &id), ACKBOX_ERR_INVALID);
}
#endif

#ifdef WITH_KAFKA
Test(ids, kafka_ackbox_id_header)
{
	rd_kafka_headers_t *h = rd_kafka_headers_new(4);
	ackbox_id id;
	cr_assert_eq(ackbox_kafka_headers_id(h, &id), ACKBOX_ERR_NOT_FOUND);
	rd_kafka_header_add(h, "trace", -1, "x", 1);
	cr_assert_eq(ackbox_kafka_headers_id(h, &id), ACKBOX_ERR_NOT_FOUND);
	rd_kafka_header_add(h, "ackbox-id", -1, ID, -1);
	cr_assert_eq(ackbox_kafka_headers_id(h, &id), 0);
	cr_assert(same(&id));
	rd_kafka_header_add(h, "ackbox-id", -1, "not-a-uuid", -1); /* the last one counts */
	cr_assert_eq(ackbox_kafka_headers_id(h, &id), ACKBOX_ERR_INVALID);
	rd_kafka_headers_destroy(h);

	/* an error event from the consumer is not a message */
	rd_kafka_message_t m;
	memset(&m, 0, sizeof(m));
	m.err = RD_KAFKA_RESP_ERR__PARTITION_EOF;
	cr_assert_eq(ackbox_kafka_message_id(&m, &id), ACKBOX_ERR_INVALID);
	cr_assert_eq(ackbox_kafka_headers_id(NULL, &id), ACKBOX_ERR_INVALID);
}
#endif

#ifdef WITH_MQTT
static void add_user(MQTTProperties *props, const char *name, const char *value)
{
	MQTTProperty p;
	memset(&p, 0, sizeof(p));
	p.identifier = MQTTPROPERTY_CODE_USER_PROPERTY;
	p.value.data.data = (char *)name;
	p.value.data.len = (int)strlen(name);
	p.value.value.data = (char *)value;
	p.value.value.len = (int)strlen(value);
	cr_assert_eq(MQTTProperties_add(props, &p), 0);
}

Test(ids, mqtt5_user_property)
{
	MQTTProperties props = MQTTProperties_initializer;
	ackbox_id id;
	/* MQTT 3.1.1, or another publisher: no properties */
	cr_assert_eq(ackbox_mqtt_message_id(&props, &id), ACKBOX_ERR_NOT_FOUND);
	add_user(&props, "ackbox-key", "42");
	cr_assert_eq(ackbox_mqtt_message_id(&props, &id), ACKBOX_ERR_NOT_FOUND);
	add_user(&props, "ackbox-id", ID);
	cr_assert_eq(ackbox_mqtt_message_id(&props, &id), 0);
	cr_assert(same(&id));
	MQTTProperties_free(&props);
	MQTTProperties bad = MQTTProperties_initializer;
	add_user(&bad, "ackbox-id", "0190a1b2");
	cr_assert_eq(ackbox_mqtt_message_id(&bad, &id), ACKBOX_ERR_INVALID);
	MQTTProperties_free(&bad);
}

Test(ids, mqtt_payload_prefix)
{
	char payload[128];
	size_t off = 0;
	ackbox_id id;
	snprintf(payload, sizeof(payload), "ackbox-id:%s\n{\"order\":7}", ID);
	cr_assert_eq(ackbox_mqtt_payload_id(payload, strlen(payload), &id, &off), 0);
	cr_assert(same(&id));
	cr_assert_eq(off, ACKBOX_MQTT_ID_PREFIX_LEN);
	cr_assert_str_eq(payload + off, "{\"order\":7}");
	/* an empty application payload behind the prefix */
	cr_assert_eq(ackbox_mqtt_payload_id(payload, ACKBOX_MQTT_ID_PREFIX_LEN, &id, NULL), 0);
	/* another publisher's payload is its own, whole */
	cr_assert_eq(ackbox_mqtt_payload_id("{\"order\":7}", 11, &id, &off), ACKBOX_ERR_NOT_FOUND);
	cr_assert_eq(ackbox_mqtt_payload_id(NULL, 0, &id, &off), ACKBOX_ERR_NOT_FOUND);
	/* the prefix, cut short or without its newline */
	cr_assert_eq(ackbox_mqtt_payload_id(payload, 30, &id, &off), ACKBOX_ERR_INVALID);
	payload[ACKBOX_MQTT_ID_PREFIX_LEN - 1] = ' ';
	cr_assert_eq(ackbox_mqtt_payload_id(payload, strlen(payload), &id, &off), ACKBOX_ERR_INVALID);
}
#endif
