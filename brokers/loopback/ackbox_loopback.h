/*
 * ackbox_loopback.h - an in-process broker for tests: transport.url
 * loopback://NAME connects to the broker NAME, which records what it
 * receives and answers each send as scripted (confirm, nack, return, drop
 * the confirm, delay, error) and can be taken down and up.
 * Not for production: nothing leaves the process.
 */
#ifndef ACKBOX_LOOPBACK_H
#define ACKBOX_LOOPBACK_H

#include <ackbox/ackbox.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ackbox_lb_action {
	ACKBOX_LB_CONFIRM = 0, /* ack after delay_ms */
	ACKBOX_LB_NACK = 1,    /* nack (code 406-like, "rejected by loopback") */
	ACKBOX_LB_RETURN = 2,  /* returned as unroutable (code 312) */
	ACKBOX_LB_DROP = 3,    /* received, but the confirm never comes */
	ACKBOX_LB_ERROR = 4,   /* per-message error (code 500) */
	ACKBOX_LB_NOT_SENT = 5, /* reported as never sent */
	ACKBOX_LB_IN_DOUBT = 6  /* reported in doubt while the connection stays up (as
	                           librdkafka reports a possibly persisted message) */
} ackbox_lb_action;

typedef struct ackbox_loopback ackbox_loopback;

/** The broker NAME, created on first use. Lives until ackbox_loopback_reset(). Thread-safe. */
ACKBOX_API ackbox_loopback *ackbox_loopback_get(const char *name);

/** Forgets every broker. Only when no handle uses one. */
ACKBOX_API void ackbox_loopback_reset(void);

/** What every send gets once the script is used up (default CONFIRM after 0 ms). */
ACKBOX_API void ackbox_loopback_set_default(ackbox_loopback *lb, ackbox_lb_action a, int delay_ms);

/** Appends a rule: the next `count` sends get action a (after delay_ms). */
ACKBOX_API void ackbox_loopback_script(ackbox_loopback *lb, ackbox_lb_action a, int count,
                                       int delay_ms);

/** Takes the broker down (connections drop, connects fail) or up. */
ACKBOX_API void ackbox_loopback_set_up(ackbox_loopback *lb, int up);

/** Messages received, duplicates included. */
ACKBOX_API size_t ackbox_loopback_received(ackbox_loopback *lb);

/** Distinct message ids received. */
ACKBOX_API size_t ackbox_loopback_distinct(ackbox_loopback *lb);

/** How many times id was received. */
ACKBOX_API size_t ackbox_loopback_count_id(ackbox_loopback *lb, const ackbox_id *id);

/** Successful connects so far. */
ACKBOX_API int ackbox_loopback_connects(ackbox_loopback *lb);

/**
 * Makes every send to `topic` a poison message: the broker closes the
 * connection on receiving it, as mosquitto does with a malformed packet
 * (the message is not recorded; its attempt is lost with the connection,
 * and so are the confirms of everything sent before it on that connection).
 * The DISCONNECTED report says "... (0x81 Malformed Packet)" with code 0x81.
 * NULL stops it. Thread-safe.
 */
ACKBOX_API void ackbox_loopback_set_poison(ackbox_loopback *lb, const char *topic);

/**
 * With on != 0, a dropped connection is told the way paho tells some
 * closes: each unanswered send (the poison message included) is reported
 * IN_DOUBT, the connection itself is not reported, and later sends find it
 * not connected.
 */
ACKBOX_API void ackbox_loopback_set_quiet_drops(ackbox_loopback *lb, int on);

/**
 * Makes every send to `topic` answered NACK (406 "rejected by loopback
 * broker"), as a broker refuses what it will not store. NULL stops it.
 * Thread-safe.
 */
ACKBOX_API void ackbox_loopback_set_nack_topic(ackbox_loopback *lb, const char *topic);

/** Sends to the poison topic so far. */
ACKBOX_API size_t ackbox_loopback_poison_hits(ackbox_loopback *lb);

/**
 * With on != 0, the broker closes every connection just after accepting it
 * (at the transport's next poll), whatever is sent: a broker that flaps.
 */
ACKBOX_API void ackbox_loopback_set_flap(ackbox_loopback *lb, int on);

/*
 * The loopback transport's validate op refuses any topic that starts with
 * "invalid/" (as a real transport refuses an MQTT wildcard), so the core's
 * checks before storing and before sending can be tested.
 */
#define ACKBOX_LOOPBACK_INVALID_PREFIX "invalid/"

/**
 * Copies the i-th received message's id, topic and payload (truncated to
 * the buffers). Returns 0, or ACKBOX_ERR_NOT_FOUND past the end.
 */
ACKBOX_API int ackbox_loopback_message(ackbox_loopback *lb, size_t i, ackbox_id *id, char *topic,
                                       size_t topic_size, void *payload, size_t *payload_len,
                                       size_t *header_count);

/**
 * Whether the broker kept the i-th received message (confirmed it, or kept
 * it and lost the confirm: CONFIRM, DROP, IN_DOUBT), as a consumer would
 * see it; 0 if it refused it (NACK, RETURN, ERROR). ACKBOX_ERR_NOT_FOUND
 * past the end.
 */
ACKBOX_API int ackbox_loopback_accepted(ackbox_loopback *lb, size_t i);

#ifdef __cplusplus
}
#endif
#endif
