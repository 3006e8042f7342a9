/*
 * linefile.c - a transport built outside ackbox and loaded at run time
 * (plugin.load). linefile:///DIR treats the directory DIR as the broker:
 * each topic is a file DIR/<topic> that must already exist (a queue that
 * must be declared), each message one line "<id> <topic> <payload>" appended
 * to it, confirmed once fdatasync has made it durable. A small but complete
 * transport: window, BUSY, a refusal, connection loss, a size limit, a
 * validate op, its own configuration keys. docs/plugins.md walks through it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ackbox/transport.h>

/* Topic files open at once; when the table is full, the next poll's
 * confirm empties it (see lf_file_of). */
#define LF_FILES 32

typedef struct lf_file {
	char *topic; /* NULL: slot free */
	int fd;
	int dirty; /* written since the last fdatasync */
} lf_file;

typedef struct lf_ctx {
	ackbox_tx_host *host;
	char *path;         /* DIR */
	int dirfd;          /* -1 while not connected: the "connection" */
	dev_t dev;          /* what DIR named when we connected */
	ino_t ino;
	size_t window;      /* tokens written, not yet durable, at most */
	size_t max_bytes;   /* linefile.max_bytes */
	int fsync;          /* linefile.fsync */
	lf_file files[LF_FILES];
	uint64_t *pending; /* tokens written, not yet durable */
	size_t npending;
	char *line; /* one message's line, reused */
	size_t line_cap;
} lf_ctx;

static const ackbox_prop lf_props[] = {
    {"window", ACKBOX_PROP_INT, "256", 1, 100000, NULL,
     "Messages written but not yet made durable at once; one fdatasync per file confirms "
     "them all."},
    {"fsync", ACKBOX_PROP_BOOL, "true", 0, 0, NULL,
     "Confirm only after fdatasync (false: after the write; for tests)."},
    {"max_bytes", ACKBOX_PROP_INT, "1048576", 1, 1073741824, NULL,
     "The largest payload, in bytes: a larger one is refused before it is stored."},
    {NULL, 0, NULL, 0, 0, NULL, NULL}};

static int lf_open(void *vctx, const ackbox_url *url, ackbox_tx_host *host, ackbox_tx_info *info,
                   char *errstr, size_t errstr_size)
{
	lf_ctx *c = vctx;
	const ackbox_conf *conf = ackbox_tx_conf(host);
	int rc = ackbox_url_query_check(url, "transport.url", (const char *const[]){NULL}, errstr,
	                                errstr_size);
	if (rc)
		return rc;
	if (!url->path[0] || url->hosts[0]) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "transport.url: linefile wants linefile:///absolute/directory, got a %s",
		                  url->hosts[0] ? "host" : "URL without a path");
		return ACKBOX_ERR_BAD_URL;
	}
	c->host = host;
	c->dirfd = -1;
	/* the core checked every key against its table: they parse */
	c->window = (size_t)atoi(ackbox_conf_get(conf, "linefile.window"));
	c->max_bytes = (size_t)strtoull(ackbox_conf_get(conf, "linefile.max_bytes"), NULL, 10);
	ackbox_parse_bool(ackbox_conf_get(conf, "linefile.fsync"), &c->fsync);
	info->max_inflight = (int)c->window;
	info->max_message_size = c->max_bytes; /* the core refuses more at publish */
	/* transport.window, when set, overrides max_inflight: size for it */
	size_t tw = (size_t)atoi(ackbox_conf_get(conf, "transport.window"));
	if (tw > c->window)
		c->window = tw;
	c->path = strdup(url->path);
	c->pending = calloc(c->window, sizeof(*c->pending));
	if (!c->path || !c->pending) {
		free(c->path);
		free(c->pending);
		return ACKBOX_ERR_NOMEM; /* close() is not called after a failed open */
	}
	return 0;
}

/* Opening the directory is the connection; a topic file is opened when first used. */
static int lf_connect(void *vctx, int timeout_ms, char *errstr, size_t errstr_size)
{
	lf_ctx *c = vctx;
	struct stat st;
	(void)timeout_ms;
	c->dirfd = open(c->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (c->dirfd < 0 || fstat(c->dirfd, &st) != 0) {
		ackbox_errstr_set(errstr, errstr_size, "linefile: cannot open directory %s: %s",
		                  c->path, strerror(errno));
		if (c->dirfd >= 0)
			close(c->dirfd);
		c->dirfd = -1;
		return ACKBOX_ERR_TRANSPORT;
	}
	c->dev = st.st_dev;
	c->ino = st.st_ino;
	return 0;
}

/* 0 while DIR still names the directory we opened; else why not (an errno). */
static int lf_gone(lf_ctx *c)
{
	struct stat st;
	if (stat(c->path, &st) != 0)
		return errno;
	return st.st_dev == c->dev && st.st_ino == c->ino ? 0 : ESTALE;
}

static void lf_drop_files(lf_ctx *c)
{
	for (int i = 0; i < LF_FILES; i++) {
		if (!c->files[i].topic)
			continue;
		close(c->files[i].fd);
		free(c->files[i].topic);
		c->files[i].topic = NULL;
	}
}

/* The "connection" is lost: every pending token is in doubt (the core
 * resends; a line may then be in its file twice, which consumers accept). */
static void lf_lost(lf_ctx *c, const char *what, int err)
{
	char reason[512];
	ackbox_tx_event ev = {ACKBOX_TX_DISCONNECTED, 0, err, 1, reason};
	snprintf(reason, sizeof(reason), "linefile: %s %s: %s", what, c->path,
	         err == ESTALE ? "moved or replaced" : strerror(err));
	lf_drop_files(c);
	close(c->dirfd);
	c->dirfd = -1;
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

/*
 * The open file of topic, opening it if needed (never creating it). Returns
 * the slot, or NULL with *err set: ENOENT when the file is not there, EBUSY
 * when the table is full of files with unconfirmed lines.
 */
static lf_file *lf_file_of(lf_ctx *c, const char *topic, int *err)
{
	lf_file *free_slot = NULL;
	for (int i = 0; i < LF_FILES; i++) {
		if (c->files[i].topic && strcmp(c->files[i].topic, topic) == 0)
			return &c->files[i];
		if (!c->files[i].topic && !free_slot)
			free_slot = &c->files[i];
	}
	if (!free_slot) {
		if (c->npending) {
			*err = EBUSY; /* poll syncs them all; then they can be closed */
			return NULL;
		}
		lf_drop_files(c); /* nothing unconfirmed: every file is clean */
		free_slot = &c->files[0];
	}
	int fd = openat(c->dirfd, topic, O_WRONLY | O_APPEND | O_CLOEXEC);
	if (fd < 0) {
		*err = errno;
		return NULL;
	}
	if (!(free_slot->topic = strdup(topic))) {
		close(fd);
		*err = ENOMEM;
		return NULL;
	}
	free_slot->fd = fd;
	free_slot->dirty = 0;
	return free_slot;
}

/* send() could not open the topic's file: a refusal, unless the directory went away. */
static int lf_refuse(lf_ctx *c, const ackbox_tx_msg *m, int err)
{
	char reason[512];
	ackbox_tx_event ev = {ACKBOX_TX_ERROR, m->token, err, 1, reason};
	int gone;
	if (err == EBUSY)
		return ACKBOX_TX_BUSY;
	if ((gone = lf_gone(c)) != 0) {
		/* openat in a directory that was removed says ENOENT too */
		lf_lost(c, "opening a topic in", gone);
		return ACKBOX_TX_NOT_CONNECTED;
	}
	if (err == ENOMEM || err == EMFILE || err == ENFILE) {
		ev.kind = ACKBOX_TX_NOT_SENT; /* our own trouble, not the broker's */
	} else if (err == ENOENT) {
		/* a topic nobody declared, as a broker returns an unroutable
		 * message: it burns an attempt, and creating the file helps */
		ev.kind = ACKBOX_TX_UNROUTABLE;
	}
	snprintf(reason, sizeof(reason), "linefile: %s/%s: %s%s", c->path, m->topic, strerror(err),
	         err == ENOENT ? " (create the file to declare the topic)" : "");
	ackbox_tx_report(c->host, &ev); /* a report may come before send returns */
	return ACKBOX_TX_SENT;
}

static int lf_send(void *vctx, const ackbox_tx_msg *m)
{
	lf_ctx *c = vctx;
	lf_file *f;
	size_t len;
	int err = 0;
	if (c->dirfd < 0)
		return ACKBOX_TX_NOT_CONNECTED;
	if (c->npending == c->window)
		return ACKBOX_TX_BUSY; /* the core calls poll(), which confirms, then retries */
	if (!(f = lf_file_of(c, m->topic, &err)))
		return lf_refuse(c, m, err);
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
		ssize_t w = write(f->fd, c->line + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			/* a part of this line may be in the file: a consumer skips a
			 * line without its newline */
			lf_lost(c, "writing to", w < 0 ? errno : EIO);
			return ACKBOX_TX_NOT_CONNECTED;
		}
		off += (size_t)w;
	}
	f->dirty = 1;
	c->pending[c->npending++] = m->token;
	return ACKBOX_TX_SENT;
}

static int lf_poll(void *vctx, int timeout_ms)
{
	lf_ctx *c = vctx;
	int gone;
	if (c->dirfd < 0)
		return ACKBOX_ERR_TRANSPORT;
	/* one stat: a broker that went away confirms nothing more */
	if ((gone = lf_gone(c)) != 0) {
		lf_lost(c, "lost", gone);
		return ACKBOX_ERR_TRANSPORT;
	}
	if (c->npending == 0) {
		/* nothing to confirm: wait for the core to want its thread back */
		struct pollfd p = {ackbox_tx_wake_fd(c->host), POLLIN, 0};
		poll(&p, 1, timeout_ms);
		return 0;
	}
	for (int i = 0; i < LF_FILES; i++) {
		lf_file *f = &c->files[i];
		if (!f->topic || !f->dirty)
			continue;
		if (c->fsync && fdatasync(f->fd) != 0) {
			lf_lost(c, "syncing a file of", errno);
			return ACKBOX_ERR_TRANSPORT;
		}
		f->dirty = 0;
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
	lf_drop_files(c);
	if (c->dirfd >= 0)
		close(c->dirfd);
	free(c->path);
	free(c->pending);
	free(c->line);
}

/*
 * What could never be sent, refused before it is stored: a topic is a file
 * name and a field of the line; a payload over linefile.max_bytes (the
 * core checks info->max_message_size at publish; this catches a row stored
 * without it).
 */
static int lf_validate(void *vctx, const ackbox_tx_msg *m, char *errstr, size_t errstr_size)
{
	const lf_ctx *c = vctx;
	if (m->topic[strcspn(m->topic, " \n/")] || strcmp(m->topic, ".") == 0 ||
	    strcmp(m->topic, "..") == 0) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "linefile: topic '%s' is not a file name a line can hold (no space, "
		                  "newline or '/', not '.' or '..')",
		                  m->topic);
		return ACKBOX_ERR_INVALID;
	}
	if (m->payload_len > c->max_bytes) {
		ackbox_errstr_set(errstr, errstr_size,
		                  "linefile: payload of %zu bytes is over linefile.max_bytes (%zu)",
		                  m->payload_len, c->max_bytes);
		return ACKBOX_ERR_TOO_LARGE;
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
    .description = "appends each message to its topic's file in a directory; fdatasync is the "
                   "confirm",
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
