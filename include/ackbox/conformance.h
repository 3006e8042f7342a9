/*
 * ackbox/conformance.h - the transport conformance suite: one set of tests
 * every transport must pass, run against a real broker that an adapter
 * (this struct of callbacks) starts, breaks and reads back. docs/plugins.md,
 * "Verifying a transport".
 *
 * A transport's conformance program is its adapter plus:
 *
 *     int main(int argc, char **argv) { return ackbox_tc_main(&my_adapter, argc, argv); }
 *
 * linked with libackbox-conformance and libackbox. Each test runs in a
 * forked child with a broker of its own: start() before, stop() after.
 * Options: --filter 'transport/NAME' (a trailing '*' matches any rest).
 */
#ifndef ACKBOX_CONFORMANCE_H
#define ACKBOX_CONFORMANCE_H

#include <stddef.h>
#include <stdint.h>

#include <ackbox/ackbox.h>

#ifdef __cplusplus
extern "C" {
#endif

/** What one message a consumer read carried. */
typedef void (*ackbox_tc_found_cb)(void *arg, const ackbox_id *id);

/** A broker refusal the adapter can provoke (see refusal below). */
typedef struct ackbox_tc_refusal {
	char topic[256];        /* publish here ... */
	size_t payload_len;     /* ... a payload of this many bytes (0: a few) */
	int broker_code;        /* the code the FAILED report must carry */
	ackbox_outcome outcome; /* and its outcome (NACK, UNROUTABLE, ERROR) */
	/* NULL, or why this broker closes the connection after such a refusal
	 * (a broker bug the transport cannot help). The suite then prints it as
	 * a known gap and accepts, per attempt, the broker's code or the core's
	 * DISCONNECT blame; everything else is still checked. */
	const char *broker_drops_connection;
} ackbox_tc_refusal;

/**
 * The broker side of the suite. Every callback returns 0, or -1 with err
 * saying why (the test then fails with it). Callbacks run on the test's
 * thread; none is called concurrently with another.
 */
typedef struct ackbox_tc_adapter {
	size_t struct_size; /* sizeof(ackbox_tc_adapter) */
	const char *name;   /* the transport, for messages: "nats" */
	void *opaque;       /* passed to every callback */

	/**
	 * Starts a broker of this test's own: data under dir (a fresh empty
	 * directory), on 127.0.0.1 and a free port. Writes the transport.url
	 * the suite publishes to. It must be accepting publishes on return.
	 */
	int (*start)(void *opaque, const char *dir, char *url, size_t url_size, char *err,
	             size_t err_size);
	/** Stops the broker and forgets it (after every test, also a failed one). */
	void (*stop)(void *opaque);
	/**
	 * The broker goes away the hardest way it survives without losing what
	 * it confirmed (SIGKILL for a broker that writes before it confirms;
	 * say which in your docs); restart() brings it back on the same address
	 * with its data, ready for the consumer.
	 */
	int (*kill)(void *opaque, char *err, size_t err_size);
	int (*restart)(void *opaque, char *err, size_t err_size);
	/**
	 * Drops the publisher's connections while the broker stays up (a proxy
	 * between them, or the client library's own fault injection); the next
	 * connect succeeds.
	 */
	int (*cut)(void *opaque, char *err, size_t err_size);
	/**
	 * Makes topic ready to be published to and read back: a durable queue,
	 * a stream, a persistent subscription. Called before the first publish
	 * to it.
	 */
	int (*prepare)(void *opaque, const char *topic, char *err, size_t err_size);
	/**
	 * Reads what arrived on topic (prepared), calling found once per
	 * message with the ackbox id it carried on the wire, duplicates
	 * included. Waits (bounded, about a minute) until at least expect
	 * arrived, then returns what is there.
	 */
	int (*consume)(void *opaque, const char *topic, size_t expect, ackbox_tc_found_cb found,
	               void *arg, char *err, size_t err_size);
	/** Fills r with a publish the broker refuses (and prepares what that needs). */
	int (*refusal)(void *opaque, ackbox_tc_refusal *r, char *err, size_t err_size);
	/**
	 * A payload size the transport can never send to this broker: the
	 * suite expects publish to refuse it (ACKBOX_ERR_TOO_LARGE or
	 * ACKBOX_ERR_INVALID) once connected, and a row of it stored without
	 * the check to end FAILED without being sent.
	 */
	size_t oversized;
	/**
	 * "key=value" settings for every handle, NULL-terminated (may be NULL).
	 * A "plugin.load=<path>" among them is also loaded before the first
	 * test: the way to test a transport built as a shared object.
	 */
	const char *const *conf;
} ackbox_tc_adapter;

/**
 * Runs the suite against adapter (argv: --filter, --jobs and --verbose
 * are accepted as with Criterion). Returns the exit status: 0 when every
 * test passed.
 */
int ackbox_tc_main(const ackbox_tc_adapter *adapter, int argc, char **argv);

/* ---- helpers for adapters ---- */

/**
 * A TCP proxy on 127.0.0.1 in front of target_port, on a thread of its
 * own: put its port in the URL you give the suite, and cut() can drop
 * every connection through it, closed() hold new ones off (accepted and
 * closed at once) while a broker restarts.
 */
typedef struct ackbox_tc_proxy ackbox_tc_proxy;
ackbox_tc_proxy *ackbox_tc_proxy_start(int target_port, int *listen_port);
void ackbox_tc_proxy_cut(ackbox_tc_proxy *p);
void ackbox_tc_proxy_set_closed(ackbox_tc_proxy *p, int closed);
void ackbox_tc_proxy_stop(ackbox_tc_proxy *p);

/** Runs a shell command; 0 if it exited 0, else -1 with err naming it. */
int ackbox_tc_sh(char *err, size_t err_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** KEY from a fixture script's env file (KEY=VALUE lines) into out; 0 or -1. */
int ackbox_tc_env(const char *env_file, const char *key, char *out, size_t out_size);

#ifdef __cplusplus
}
#endif
#endif
