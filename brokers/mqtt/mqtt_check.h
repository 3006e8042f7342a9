/*
 * mqtt_check.h - what an MQTT broker accepts in a PUBLISH: topic names,
 * UTF-8 strings, packet sizes. Pure functions (no paho, no state), so the
 * transport's validate op can run them on any thread.
 */
#ifndef ACKBOX_MQTT_CHECK_H
#define ACKBOX_MQTT_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include <ackbox/transport.h>

/* MQTT's Remaining Length field tops out here (a four-byte variable integer). */
#define ABX_MQTT_MAX_REMAINING 268435455u

/*
 * NULL if s[0..len) is a string MQTT lets a client send (MQTT 5 §1.5.4,
 * 3.1.1 §1.5.3): well-formed UTF-8 (no overlong form, no surrogate, nothing
 * above U+10FFFF), no U+0000, and none of the control characters or
 * non-characters the standard says SHOULD NOT appear, because mosquitto
 * treats those as a malformed packet and drops the connection. Otherwise a
 * phrase naming the problem, and *at its byte offset.
 */
const char *abx_mqtt_utf8_problem(const void *s, size_t len, size_t *at);

/*
 * Size in bytes of the PUBLISH packet mqtt.c sends for m (fixed header,
 * topic, packet id for QoS > 0, and with v5 the properties: ackbox-id,
 * ackbox-key, one user property per header, the content type). Sets
 * *remaining to the Remaining Length.
 */
size_t abx_mqtt_publish_size(const ackbox_tx_msg *m, int v5, int qos, size_t *remaining);

/*
 * Whether m can be published: 0, ACKBOX_ERR_INVALID (a topic or, with v5, a
 * key, header or content type MQTT cannot carry) or ACKBOX_ERR_TOO_LARGE
 * (over max_packet, the broker's Maximum Packet Size, when not 0; or over
 * MQTT's own limit), with errstr naming the field and the rule.
 */
int abx_mqtt_check(const ackbox_tx_msg *m, int v5, int qos, uint32_t max_packet, char *errstr,
                   size_t errstr_size);

#endif /* ACKBOX_MQTT_CHECK_H */
