/*
 * mqtt_id.c - reading ackbox's id on the consumer side (include/ackbox/mqtt.h):
 * the MQTT 5 user property mqtt.c sends, or the payload prefix it writes
 * with mqtt.id_in_payload=true.
 */
#include <string.h>

#include <MQTTProperties.h>

#include <ackbox/mqtt.h>

static int parse(const void *p, size_t len, ackbox_id *out)
{
	char text[ACKBOX_ID_STRLEN];
	if (!p || len != ACKBOX_ID_STRLEN - 1)
		return ACKBOX_ERR_INVALID;
	memcpy(text, p, ACKBOX_ID_STRLEN - 1);
	text[ACKBOX_ID_STRLEN - 1] = '\0';
	return ackbox_id_parse(text, out);
}

int ackbox_mqtt_message_id(const struct MQTTProperties *props, ackbox_id *out)
{
	static const size_t nl = sizeof(ACKBOX_MQTT_ID_PROPERTY) - 1;
	if (!props || !out)
		return ACKBOX_ERR_INVALID;
	for (int i = 0; i < props->count && props->array; i++) {
		const MQTTProperty *p = &props->array[i];
		if (p->identifier != MQTTPROPERTY_CODE_USER_PROPERTY || p->value.data.len < 0 ||
		    (size_t)p->value.data.len != nl ||
		    memcmp(p->value.data.data, ACKBOX_MQTT_ID_PROPERTY, nl) != 0)
			continue;
		return parse(p->value.value.data,
		             p->value.value.len < 0 ? 0 : (size_t)p->value.value.len, out);
	}
	return ACKBOX_ERR_NOT_FOUND;
}

int ackbox_mqtt_payload_id(const void *payload, size_t len, ackbox_id *out, size_t *body_offset)
{
	static const size_t pl = sizeof(ACKBOX_MQTT_ID_PREFIX) - 1;
	const char *p = payload;
	int rc;
	if (!out || (!payload && len))
		return ACKBOX_ERR_INVALID;
	if (len < pl || memcmp(p, ACKBOX_MQTT_ID_PREFIX, pl) != 0)
		return ACKBOX_ERR_NOT_FOUND;
	if (len < ACKBOX_MQTT_ID_PREFIX_LEN || p[ACKBOX_MQTT_ID_PREFIX_LEN - 1] != '\n')
		return ACKBOX_ERR_INVALID;
	rc = parse(p + pl, ACKBOX_ID_STRLEN - 1, out);
	if (rc == 0 && body_offset)
		*body_offset = ACKBOX_MQTT_ID_PREFIX_LEN;
	return rc;
}
