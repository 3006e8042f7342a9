/*
 * transport.h - the transport plugin ABI. A transport moves one message to a
 * broker and reports what the broker said; the core owns state, retries,
 * timing and reconnect backoff. docs/plugins.md walks through writing one.
 */
#ifndef ACKBOX_TRANSPORT_H
#define ACKBOX_TRANSPORT_H

#include <ackbox/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The transport ABI this header describes. Minors (see plugin.h):
 *   1.0  abi_version .. close
 *   1.1  validate
 *   1.2  ackbox_tx_info.system_name (the table itself did not grow: a plugin
 *        built with this header writes a field an older core does not have,
 *        so it must not load there)
 */
#define ACKBOX_TRANSPORT_ABI_VERSION ACKBOX_ABI_VERSION(1, 2)

/** The core's side of a transport instance. Opaque. */
typedef struct ackbox_tx_host ackbox_tx_host;

/** What a transport reports. */
typedef enum ackbox_tx_event_kind {
	/* Per-message outcomes, keyed by the token given to send(). */
	ACKBOX_TX_ACK = 1,        /* the broker took responsibility (confirm, PUBACK, DR ok) */
	ACKBOX_TX_NACK = 2,       /* the broker refused it; burns an attempt */
	ACKBOX_TX_UNROUTABLE = 3, /* returned as unroutable; burns an attempt */
	ACKBOX_TX_ERROR = 4,      /* other per-message error from the broker; burns an attempt */
	ACKBOX_TX_NOT_SENT = 5,   /* never left this process; does not burn an attempt */
	ACKBOX_TX_IN_DOUBT = 6,   /* sent, but the connection died before an answer;
	                             resent, does not burn an attempt by itself (see
	                             "poison messages" in docs/architecture.md) */
	/* Connection events (token 0). */
	ACKBOX_TX_CONNECTED = 10,
	ACKBOX_TX_DISCONNECTED = 11 /* every outstanding token is treated as IN_DOUBT; put
	                               the broker's own words in reason and its code in
	                               broker_code (MQTT 5 DISCONNECT reason, AMQP
	                               connection.close reply code): they become the
	                               reason a poison message is FAILED with */
} ackbox_tx_event_kind;

/** One report. The host copies `reason`; the event may live on the stack. */
typedef struct ackbox_tx_event {
	ackbox_tx_event_kind kind;
	uint64_t token;     /* the token of the attempt; 0 for connection events */
	int broker_code;    /* broker's own code (AMQP reply code, MQTT reason code, Kafka err) */
	int retriable;      /* 1 if a resend may succeed */
	const char *reason; /* human text, may be NULL */
} ackbox_tx_event;

/**
 * Reports an event. Thread-safe, never blocks for long and never calls back
 * into the transport, so it may be called from send(), poll() or the client
 * library's own threads. The first outcome reported for a token is final;
 * later ones for the same token are ignored (so an AMQP transport may report
 * UNROUTABLE on basic.return and let the following ack fall through).
 */
ACKBOX_API void ackbox_tx_report(ackbox_tx_host *host, const ackbox_tx_event *ev);

/**
 * A file descriptor that becomes readable when the core wants its relay
 * thread back (new messages, shutdown, a report from another thread).
 * A poll() that blocks must also wait on it and return when it is readable;
 * it must not read from it.
 */
ACKBOX_API int ackbox_tx_wake_fd(ackbox_tx_host *host);

/**
 * 1 once the handle is shutting down. A connect() that waits in slices (for
 * a client library that connects by itself) checks it between slices and
 * gives up, so that ackbox_destroy does not wait for a timeout. Thread-safe.
 */
ACKBOX_API int ackbox_tx_stopping(ackbox_tx_host *host);

/**
 * Sees every report made through host before the core takes it, on the
 * reporting thread (so it must be thread-safe and must not call into
 * ackbox). For test harnesses that wrap a transport, as the transport
 * conformance suite does (docs/plugins.md): the wrapper calls this in its
 * open(), before the transport it wraps can report. One tap per host.
 */
typedef void (*ackbox_tx_tap)(void *opaque, const ackbox_tx_event *ev);
ACKBOX_API void ackbox_tx_set_tap(ackbox_tx_host *host, ackbox_tx_tap tap, void *opaque);

/** Logs through the application's log callback, component = scheme. */
ACKBOX_API void ackbox_tx_log(ackbox_tx_host *host, ackbox_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** The configuration the handle was created with (read-only). */
ACKBOX_API const ackbox_conf *ackbox_tx_conf(ackbox_tx_host *host);

/** One attempt to send a message. Valid only during send(): copy what you keep. */
typedef struct ackbox_tx_msg {
	uint64_t token;         /* echo in every report about this attempt */
	ackbox_id id;
	const char *id_str;     /* canonical text form of id, put it on the wire */
	const char *topic;
	const void *key;
	size_t key_len;
	const void *payload;
	size_t payload_len;
	const char *content_type; /* NULL if none */
	const ackbox_header *headers;
	size_t header_count;
	int attempt;            /* 1 for the first send of this message by this process */
} ackbox_tx_msg;

/** send() results that are not errors. */
#define ACKBOX_TX_SENT 0          /* handed over: exactly one outcome will be reported */
#define ACKBOX_TX_BUSY 1          /* client cannot take it now; core retries after poll() */
#define ACKBOX_TX_NOT_CONNECTED 2 /* no connection; core waits for connect/CONNECTED */

/** What a transport tells the core after open(). */
typedef struct ackbox_tx_info {
	int max_inflight;        /* the window: unconfirmed messages the core allows at once */
	size_t max_message_size; /* 0: no transport limit */
	/* ABI 1.2 (the core zeroes the struct, so an older plugin leaves it
	 * NULL): */
	const char *system_name; /* OpenTelemetry messaging.system ("rabbitmq", "kafka");
	                            NULL: the URL scheme. A static string. */
} ackbox_tx_info;

/** Capabilities. */
/* The client library reconnects by itself (librdkafka): connect() only checks
 * that the cluster answers, and is called again after a backoff while it
 * does not; the transport may also report CONNECTED/DISCONNECTED as it learns. */
#define ACKBOX_TX_CAP_SELF_CONNECTING (1u << 8)

/**
 * The transport ops table. Append-only: new slots go at the end, with a new
 * ABI minor; the core never calls a slot that the table's minor does not
 * have (plugin.h).
 *
 * Threading: connect, send and poll are called on the core's relay thread
 * only, never concurrently (with transport.require_connect, ackbox_new waits
 * for the relay thread's first connect); open and close on the thread
 * calling ackbox_new / ackbox_close, when the relay thread is not running;
 * validate on publishers' threads, concurrently with everything (see it).
 * Reports may come from any thread.
 */
typedef struct ackbox_transport_ops {
	uint32_t abi_version;       /* ACKBOX_TRANSPORT_ABI_VERSION */
	uint32_t struct_size;       /* sizeof(ackbox_transport_ops) */
	const char *const *schemes; /* NULL-terminated: {"amqp", "amqps", NULL} */
	uint32_t caps;              /* ACKBOX_TX_CAP_* | ACKBOX_PLUGIN_CAP_* */
	size_t ctx_size;            /* the core allocates this much zeroed memory per instance */
	const ackbox_prop *props;   /* keys "<schemes[0]>.<name>", NULL-terminated */
	const char *description;    /* one line for --help and docs */

	/**
	 * Parses url and configuration; no network I/O. On failure return a
	 * negative ackbox_err and explain in errstr; close() is not called.
	 */
	int (*open)(void *ctx, const ackbox_url *url, ackbox_tx_host *host, ackbox_tx_info *info,
	            char *errstr, size_t errstr_size);

	/**
	 * Connects, waiting at most timeout_ms. Returns 0 when ready to send, or
	 * ACKBOX_ERR_TRANSPORT with errstr naming the broker and the cause. The
	 * core calls it again after a backoff; the transport never sleeps.
	 */
	int (*connect)(void *ctx, int timeout_ms, char *errstr, size_t errstr_size);

	/**
	 * Hands one message to the client library. Returns ACKBOX_TX_SENT,
	 * ACKBOX_TX_BUSY or ACKBOX_TX_NOT_CONNECTED; the latter two mean the
	 * message did not leave and no report will follow. A message-level error
	 * (too large for the broker, say) is reported as an ERROR event.
	 */
	int (*send)(void *ctx, const ackbox_tx_msg *msg);

	/**
	 * Does I/O and reports what arrived, waiting up to timeout_ms for
	 * something to happen (return early when ackbox_tx_wake_fd is readable).
	 * Returns 0, or ACKBOX_ERR_TRANSPORT if the connection is gone (the same
	 * as reporting DISCONNECTED). May be NULL when every report comes from
	 * the client library's threads.
	 */
	int (*poll)(void *ctx, int timeout_ms);

	/** Drops the connection and frees everything but ctx itself. */
	void (*close)(void *ctx);

	/* ---- ABI 1.1 ---- */

	/**
	 * Optional (NULL: every message is accepted). Says whether msg could
	 * ever be sent with the configuration open() parsed: a topic the
	 * protocol forbids (an MQTT wildcard, an AMQP routing key over 255
	 * bytes, a Kafka topic with a character Kafka refuses), a key or header
	 * the client library cannot encode. Returns 0, or ACKBOX_ERR_INVALID
	 * (or ACKBOX_ERR_TOO_LARGE) with errstr naming the field and the rule.
	 * No I/O, no reports.
	 *
	 * The core calls it before a message is stored (ackbox_publish fails
	 * and nothing is stored) and again on the relay thread just before
	 * every send(), so send() need not repeat it: that catches a row stored
	 * without the check (an older version, another process without a
	 * transport) and a limit learned since (a server with a smaller
	 * max_payload). A row that fails it is marked FAILED at once.
	 *
	 * Threading: called on publisher threads, concurrently with every
	 * other op and with itself. It may read only what open() set, or
	 * state the transport keeps in atomics (a limit learned from the
	 * broker, say). msg->token is 0 and msg->attempt 0 here.
	 */
	int (*validate)(void *ctx, const ackbox_tx_msg *msg, char *errstr, size_t errstr_size);
} ackbox_transport_ops;

/**
 * Registers a third-party transport for every handle created afterwards.
 * Checks abi_version's magic and version against struct_size (plugin.h):
 * an older minor is accepted, a newer one refused. The core keeps a copy of
 * the table; what it points to (schemes, props, functions) must stay valid
 * for the life of the process. Returns 0, ACKBOX_ERR_ABI (errstr names both
 * versions) or ACKBOX_ERR_INVALID (a required slot is NULL, or a scheme is
 * already taken).
 */
ACKBOX_API int ackbox_transport_register(const ackbox_transport_ops *ops, char *errstr,
                                         size_t errstr_size);

/**
 * The transport serving scheme (built in or registered), or NULL: for a
 * harness that wraps it. Thread-safe.
 */
ACKBOX_API const ackbox_transport_ops *ackbox_transport_lookup(const char *scheme);

#ifdef __cplusplus
}
#endif
#endif /* ACKBOX_TRANSPORT_H */
