/*
 * linefile.c - a transport built outside ackbox and loaded at run time
 * (plugin.load): linefile:///path/to/file appends one line per message,
 * "<id> <topic> <payload>", and confirms what it wrote once fdatasync has
 * made it durable. A small but complete transport: window, BUSY, connection
 * loss, a validate op, its own configuration keys. docs/plugins.md walks
 * through it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ackbox/transport.h>

typedef struct lf_ctx {
	ackbox_tx_host *host;
	char *path;
	int fd;            /* -1 while not connected */
	int window;        /* linefile.window */
	int fsync;         /* linefile.fsync */
	uint64_t *pending; /* tokens written, not yet durable (at most window) */
	size_t npending;
	char *line; /* one message's line, reused */
	size_t line_cap;
} lf_ctx;

static const ackbox_prop lf_props[] = {
    {"window", ACKBOX_PROP_INT, "256", 1, 100000, NULL,
     "Messages written but not yet made durable at once; one fdatasync confirms them all."},
    {"fsync", ACKBOX_PROP_BOOL, "true", 0, 0, NULL,
     "Confirm only after fdatasync (false: after the write; for tests)."},
    {NULL, 0, NULL, 0, 0, NULL, NULL}};

static int lf_open(void *vctx, const ackbox_url *url, ackbox_tx_host *host, ackbox_tx_info *info,
                   char *errstr, size_t errstr_size)
{
	lf_ctx *c = vctx;
	const ackbox_conf *conf = ackbox_tx_conf(host);
	if (!url->path[0] || url->hosts[0]) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "transport.url: linefile wants linefile:///absolute/path, got a %s",
		                  url->hosts[0] ? "host" : "URL without a path");
		return ACKBOX_ERR_BAD_URL;
	}
	c->host = host;
	c->fd = -1;
	/* the core checked both keys against lf_props: they parse */
	c->window = atoi(ackbox_conf_get(conf, "linefile.window"));
	ackbox_parse_bool(ackbox_conf_get(conf, "linefile.fsync"), &c->fsync);
	c->path = strdup(url->path);
	c->pending = calloc((size_t)c->window, sizeof(*c->pending));
	if (!c->path || !c->pending) {
		free(c->path);
		free(c->pending);
		return ACKBOX_ERR_NOMEM; /* close() is not called after a failed open */
	}
	info->max_inflight = c->window;
	info->max_message_size = 0;
	return 0;
}

static int lf_connect(void *vctx, int timeout_ms, char *errstr, size_t errstr_size)
{
	lf_ctx *c = vctx;
	(void)timeout_ms;
	c->fd = open(c->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (c->fd < 0) {
		ackbox_errstr_set(errstr, errstr_size, "linefile: cannot open %s: %s", c->path,
		                  strerror(errno));
		return ACKBOX_ERR_TRANSPORT;
	}
	return 0;
}

/* The file is gone for us: every pending token is in doubt (the core resends). */
static void lf_lost(lf_ctx *c, const char *what, int err)
{
	char reason[512];
	ackbox_tx_event ev = {ACKBOX_TX_DISCONNECTED, 0, err, 1, reason};
	snprintf(reason, sizeof(reason), "linefile: %s %s: %s", what, c->path, strerror(err));
	close(c->fd);
	c->fd = -1;
	c->npending = 0;
	ackbox_tx_report(c->host, &ev);
}

/* Appends s[0..n) to c->line with '\\' and '\n' escaped; returns the new length or 0. */
static size_t put(lf_ctx *c, size_t len, const char *s, size_t n)
{
	if (len + 2 * n + 2 > c->line_cap) {
		size_t cap = (len + 2 * n + 2) * 2;
		char *l = realloc(c->line, cap);
		if (!l)
			return 0;
		c->line = l;
		c->line_cap = cap;
	}
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\\' || s[i] == '\n')
			c->line[len++] = '\\';
		c->line[len++] = s[i] == '\n' ? 'n' : s[i];
	}
	return len;
}

static int lf_send(void *vctx, const ackbox_tx_msg *m)
{
	lf_ctx *c = vctx;
	size_t len;
	if (c->fd < 0)
		return ACKBOX_TX_NOT_CONNECTED;
	if (c->npending == (size_t)c->window)
		return ACKBOX_TX_BUSY; /* the core calls poll(), which confirms, then retries */
	if (!(len = put(c, 0, m->id_str, strlen(m->id_str))) || !(len = put(c, len, " ", 1)) ||
	    !(len = put(c, len, m->topic, strlen(m->topic))) || !(len = put(c, len, " ", 1)) ||
	    (m->payload_len && !(len = put(c, len, m->payload, m->payload_len)))) {
		ackbox_tx_event ev = {ACKBOX_TX_NOT_SENT, m->token, 0, 1, "linefile: out of memory"};
		ackbox_tx_report(c->host, &ev);
		return ACKBOX_TX_SENT;
	}
	c->line[len++] = '\n';
	/* O_APPEND and one write per line: a line is never interleaved */
	for (size_t off = 0; off < len;) {
		ssize_t w = write(c->fd, c->line + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			/* a part of this line may be in the file: a consumer skips a
			 * line without its newline */
			lf_lost(c, "writing", w < 0 ? errno : EIO);
			return ACKBOX_TX_NOT_CONNECTED;
		}
		off += (size_t)w;
	}
	c->pending[c->npending++] = m->token;
	return ACKBOX_TX_SENT;
}

static int lf_poll(void *vctx, int timeout_ms)
{
	lf_ctx *c = vctx;
	if (c->fd < 0)
		return ACKBOX_ERR_TRANSPORT;
	if (c->npending == 0) {
		/* nothing to confirm: wait for the core to want its thread back */
		struct pollfd p = {ackbox_tx_wake_fd(c->host), POLLIN, 0};
		poll(&p, 1, timeout_ms);
		return 0;
	}
	if (c->fsync && fdatasync(c->fd) != 0) {
		lf_lost(c, "syncing", errno);
		return ACKBOX_ERR_TRANSPORT;
	}
	for (size_t i = 0; i < c->npending; i++) {
		ackbox_tx_event ev = {ACKBOX_TX_ACK, c->pending[i], 0, 0, NULL};
		ackbox_tx_report(c->host, &ev);
	}
	c->npending = 0;
	return 0;
}

static void lf_close(void *vctx)
{
	lf_ctx *c = vctx;
	if (c->fd >= 0)
		close(c->fd);
	free(c->path);
	free(c->pending);
	free(c->line);
}

/* A space in the topic would make the line ambiguous: refused before it is stored. */
static int lf_validate(void *vctx, const ackbox_tx_msg *m, char *errstr, size_t errstr_size)
{
	(void)vctx;
	if (m->topic[strcspn(m->topic, " \n")]) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "linefile: topic '%s' has a space or a newline, which a line cannot "
		                  "hold",
		                  m->topic);
		return ACKBOX_ERR_INVALID;
	}
	return 0;
}

static const char *const lf_schemes[] = {"linefile", NULL};

static const ackbox_transport_ops linefile_transport = {
    .abi_version = ACKBOX_TRANSPORT_ABI_VERSION,
    .struct_size = sizeof(ackbox_transport_ops),
    .schemes = lf_schemes,
    .caps = 0,
    .ctx_size = sizeof(lf_ctx),
    .props = lf_props,
    .description = "appends each message to a file; fdatasync is the confirm",
    .open = lf_open,
    .connect = lf_connect,
    .send = lf_send,
    .poll = lf_poll,
    .close = lf_close,
    .validate = lf_validate,
};

/* The one symbol ackbox looks for (plugin.load, ackbox_plugin_load). */
ACKBOX_PLUGIN_EXPORT int ackbox_plugin_entry(char *errstr, size_t errstr_size)
{
	return ackbox_transport_register(&linefile_transport, errstr, errstr_size);
}
