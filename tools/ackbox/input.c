/*
 * input.c - what `ackbox publish` reads: one payload from --payload-file,
 * or the lines of stdin or of a file (--lines). Both read at most
 * message.max_bytes + 1 bytes of one message: a larger one is refused as
 * soon as it is that long, and the rest of the input is never read.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "publish.h"

#define READ_STEP (1u << 20) /* first buffer; it doubles up to what one message needs */

static int open_input(const char *path, const char *opt, int *fd)
{
	if (strcmp(path, "-") == 0) {
		*fd = STDIN_FILENO;
		return EXIT_ALL_GOOD;
	}
	*fd = open(path, O_RDONLY | O_CLOEXEC);
	if (*fd < 0) {
		cli_say("%s '%s': %s", opt, path, strerror(errno));
		return EXIT_USAGE;
	}
	return EXIT_ALL_GOOD;
}

int cli_read_payload(const char *path, size_t limit, char **out, size_t *len)
{
	char *buf = NULL;
	size_t n = 0, cap = 0;
	int fd, rc = open_input(path, "--payload-file", &fd);
	if (rc)
		return rc;
	for (;;) {
		ssize_t got;
		if (n == cap) {
			/* room for limit + 1 bytes at most: one more says "too large" */
			size_t ncap = cap ? cap * 2 : READ_STEP;
			char *nb;
			if (ncap > limit + 1)
				ncap = limit + 1;
			if (ncap == cap) {
				cli_say("--payload-file '%s': more than %zu bytes, the limit "
				        "(message.max_bytes); nothing was published",
				        path, limit);
				rc = EXIT_USAGE;
				break;
			}
			nb = realloc(buf, ncap);
			if (!nb) {
				cli_say("--payload-file '%s': out of memory", path);
				rc = EXIT_USAGE;
				break;
			}
			buf = nb;
			cap = ncap;
		}
		got = read(fd, buf + n, cap - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			cli_say("--payload-file '%s': %s", path, strerror(errno));
			rc = EXIT_USAGE;
			break;
		}
		if (got == 0)
			break;
		n += (size_t)got;
	}
	if (fd != STDIN_FILENO)
		close(fd);
	if (rc) {
		free(buf);
		return rc;
	}
	*out = buf;
	*len = n;
	return EXIT_ALL_GOOD;
}

int cli_lines_open(cli_lines *r, const char *path, size_t limit)
{
	int rc;
	memset(r, 0, sizeof(*r));
	r->fd = -1;
	rc = open_input(path, "--payload-file", &r->fd);
	if (rc)
		return rc;
	r->close_fd = r->fd != STDIN_FILENO;
	r->name = r->close_fd ? path : "stdin";
	r->limit = limit;
	r->max_cap = limit + 1 > READ_STEP ? limit + 1 : READ_STEP;
	return EXIT_ALL_GOOD;
}

int cli_lines_next(cli_lines *r, const char **p, size_t *len)
{
	char *nl;
	size_t have = r->end - r->pos;
	if (have == 0)
		return r->eof ? -1 : 0;
	nl = memchr(r->buf + r->pos, '\n', have);
	if (nl) {
		size_t l = (size_t)(nl - (r->buf + r->pos));
		if (l > r->limit)
			return -2;
		*p = r->buf + r->pos;
		*len = l;
		r->pos += l + 1;
		r->lineno++;
		return 1;
	}
	if (have > r->limit)
		return -2; /* no need to see its end */
	if (!r->eof)
		return 0;
	*p = r->buf + r->pos; /* the last line has no newline */
	*len = have;
	r->pos = r->end;
	r->lineno++;
	return 1;
}

int cli_lines_fill(cli_lines *r)
{
	ssize_t got;
	if (r->eof)
		return 0;
	/* what is left is the start of a line: to the front */
	if (r->pos) {
		memmove(r->buf, r->buf + r->pos, r->end - r->pos);
		r->end -= r->pos;
		r->pos = 0;
	}
	if (r->end == r->cap) {
		size_t ncap = r->cap ? r->cap * 2 : READ_STEP;
		char *nb;
		if (ncap > r->max_cap)
			ncap = r->max_cap;
		if (ncap == r->cap) {
			/* a full buffer of one line: cli_lines_next says it is too long */
			errno = ENOBUFS;
			return -1;
		}
		nb = realloc(r->buf, ncap);
		if (!nb) {
			errno = ENOMEM;
			return -1;
		}
		r->buf = nb;
		r->cap = ncap;
	}
	got = read(r->fd, r->buf + r->end, r->cap - r->end);
	if (got < 0)
		return -1;
	if (got == 0)
		r->eof = true;
	r->end += (size_t)got;
	return 0;
}

void cli_lines_close(cli_lines *r)
{
	if (r->close_fd && r->fd >= 0)
		close(r->fd);
	free(r->buf);
	memset(r, 0, sizeof(*r));
	r->fd = -1;
}
