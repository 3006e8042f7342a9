/*
 * metrics_http.c - `ackbox relay --metrics-listen HOST:PORT`: serves
 * /metrics (ackbox_metrics_text, Prometheus text format) and /healthz
 * (ackbox_health: 200 "ok", or 503 and the reason) with libmicrohttpd, on
 * its own thread. Built only when libmicrohttpd is found.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

struct cli_metrics {
	struct MHD_Daemon *d;
	ackbox *ab;
	atomic_bool started; /* MHD's own log lines are ours to print from now on */
};

/* libmicrohttpd's error log: while it starts, its lines are left out (a port
 * in use printed "Failed to bind to port 0", the port it was given as 0 with
 * the address); the one line cli_metrics_start says names the address. Later
 * lines go to stderr like every other line of the CLI. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	struct cli_metrics *m = cls;
	char line[256];
	size_t n;
	if (!atomic_load(&m->started))
		return;
	vsnprintf(line, sizeof(line), fmt, ap);
	n = strlen(line);
	while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	cli_say("metrics server: %s", line);
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *type,
                             char *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
	enum MHD_Result rc;
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", type);
	rc = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return rc;
}

/* libmicrohttpd's thread; ackbox's calls are thread-safe. */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *data_size, void **state)
{
	struct cli_metrics *m = cls;
	char err[512] = "";
	(void)version;
	(void)data;
	(void)data_size;
	(void)state;
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", (char *)"GET only\n", 9,
		             MHD_RESPMEM_PERSISTENT);
	if (strcmp(url, "/metrics") == 0) {
		char *text = NULL;
		size_t len = 0;
		if (ackbox_metrics_text(m->ab, &text, &len, err, sizeof(err)) < 0 && !text) {
			size_t n = strlen(err);
			char *body = malloc(n + 2);
			if (!body)
				return MHD_NO;
			snprintf(body, n + 2, "%s\n", err);
			return reply(c, MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain", body, n + 1,
			             MHD_RESPMEM_MUST_FREE);
		}
		/* a store error still gives the counters (pending shows 0) */
		return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len,
		             MHD_RESPMEM_MUST_FREE);
	}
	if (strcmp(url, "/healthz") == 0) {
		int rc = ackbox_health(m->ab, err, sizeof(err));
		size_t n = rc ? strlen(err) + 1 : 3;
		char *body = malloc(n + 1);
		if (!body)
			return MHD_NO;
		snprintf(body, n + 1, "%s\n", rc ? err : "ok");
		return reply(c, rc ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK, "text/plain", body, n,
		             MHD_RESPMEM_MUST_FREE);
	}
	return reply(c, MHD_HTTP_NOT_FOUND, "text/plain", (char *)"/metrics or /healthz\n", 21,
	             MHD_RESPMEM_PERSISTENT);
}

int cli_metrics_start(const char *listen, ackbox *ab, cli_metrics **out)
{
	char host[64];
	const char *colon = strrchr(listen, ':');
	char *end;
	long port;
	struct sockaddr_in sa;
	struct cli_metrics *m;

	*out = NULL;
	if (!colon || colon == listen || (size_t)(colon - listen) >= sizeof(host))
		return cli_usage_error("--metrics-listen wants HOST:PORT (an IPv4 address), got '%s'",
		                       listen);
	memcpy(host, listen, (size_t)(colon - listen));
	host[colon - listen] = '\0';
	port = strtol(colon + 1, &end, 10);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	if (*end || port < 1 || port > 65535 || inet_pton(AF_INET, host, &sa.sin_addr) != 1)
		return cli_usage_error("--metrics-listen wants HOST:PORT (an IPv4 address), got '%s'",
		                       listen);
	sa.sin_port = htons((uint16_t)port);
	m = calloc(1, sizeof(*m));
	if (!m)
		return EXIT_STORE;
	m->ab = ab;
	m->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
	                        on_request, m, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
	                        MHD_OPTION_CONNECTION_LIMIT, (unsigned)16,
	                        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
	                        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, m, MHD_OPTION_END);
	if (!m->d) {
		free(m);
		cli_say("--metrics-listen %s: cannot listen there (in use, or not an address of "
		        "this host)",
		        listen);
		return EXIT_USAGE;
	}
	atomic_store(&m->started, true);
	*out = m;
	return EXIT_ALL_GOOD;
}

void cli_metrics_stop(cli_metrics *m)
{
	if (!m)
		return;
	MHD_stop_daemon(m->d); /* joins its thread: no request runs after this */
	free(m);
}
