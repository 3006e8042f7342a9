/*
 * mqtt.h - for consumers using paho.mqtt.c: read the id ackbox put on a
 * message to record it in the inbox (include/ackbox/inbox.h). MQTT 5
 * carries it as the user property `ackbox-id`; MQTT 3.1.1 has no
 * properties, so with mqtt.id_in_payload=true the publisher prefixes the
 * payload with it instead. Installed when the MQTT transport is built.
 */
#ifndef ACKBOX_MQTT_H
#define ACKBOX_MQTT_H

#include <ackbox/ackbox.h>

#ifdef __cplusplus
extern "C" {
#endif

/* paho's MQTTProperties (MQTTProperties.h), as in MQTTAsync_message. */
struct MQTTProperties;

/** The MQTT 5 user property ackbox's transport puts its id in. */
#define ACKBOX_MQTT_ID_PROPERTY "ackbox-id"

/**
 * With mqtt.id_in_payload=true every payload starts with this prefix, the
 * 36-character id and a newline ("ackbox-id:<uuid>\n", 47 bytes), whatever
 * mqtt.version says; the application's payload follows.
 */
#define ACKBOX_MQTT_ID_PREFIX "ackbox-id:"
#define ACKBOX_MQTT_ID_PREFIX_LEN 47

/**
 * Reads ackbox's id from an MQTT 5 message's properties (message->properties
 * in paho's messageArrived callback): the first user property named
 * `ackbox-id`, in its 36-character UUID form.
 *
 * Returns 0 with *out set; ACKBOX_ERR_NOT_FOUND if there is no such property
 * (published by something other than ackbox, or over MQTT 3.1.1, where the
 * properties are always empty: see ackbox_mqtt_payload_id);
 * ACKBOX_ERR_INVALID if an argument is NULL or the property is not a UUID.
 *
 * Threading: any thread; reads props only. Ownership: the caller keeps props.
 */
ACKBOX_API int ackbox_mqtt_message_id(const struct MQTTProperties *props, ackbox_id *out);

/**
 * Reads the id a publisher with mqtt.id_in_payload=true put in front of the
 * payload (any MQTT version). Returns 0 with *out set and *body_offset (may
 * be NULL) = ACKBOX_MQTT_ID_PREFIX_LEN, where the application's payload
 * starts; ACKBOX_ERR_NOT_FOUND if the payload does not start with
 * "ackbox-id:" (another publisher, or id_in_payload off: the payload is then
 * the application's own, whole); ACKBOX_ERR_INVALID if an argument is NULL
 * (payload may be NULL when len is 0) or the prefix is there but is not
 * followed by a UUID and a newline.
 *
 * Threading: any thread. Ownership: the caller keeps payload.
 */
ACKBOX_API int ackbox_mqtt_payload_id(const void *payload, size_t len, ackbox_id *out,
                                      size_t *body_offset);

#ifdef __cplusplus
}
#endif
#endif /* ACKBOX_MQTT_H */
