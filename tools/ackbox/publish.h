/*
 * publish.h - what `ackbox publish` (publish.c) uses of its own: the set of
 * its messages not yet final (idset.c) and the input it reads (input.c).
 */
#ifndef ACKBOX_CLI_PUBLISH_H
#define ACKBOX_CLI_PUBLISH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ackbox/ackbox.h>

/*
 * Most messages one publish keeps stored but not yet acked or FAILED; past
 * that it waits for confirms before it stores (and reads) more. Bounds the
 * memory of the id set, whatever the size of the input.
 */
#define CLI_MAX_UNFINISHED (256u * 1024)

/* ---- idset.c: a set of message ids (open addressing, linear probing) ---- */

typedef struct cli_idset {
	ackbox_id *slot; /* an all-zero id is an empty slot (never generated) */
	size_t cap, n;
} cli_idset;

/* Adds id; false if out of memory. */
bool cli_idset_add(cli_idset *s, const ackbox_id *id);
/* Removes id; true if it was there. */
bool cli_idset_take(cli_idset *s, const ackbox_id *id);
/* Calls fn for every id (the set must not change meanwhile). */
void cli_idset_each(const cli_idset *s, void (*fn)(const ackbox_id *id, void *opaque),
                    void *opaque);
void cli_idset_free(cli_idset *s);

/* ---- input.c: --payload-file and --lines ---- */

/*
 * Reads path ("-": stdin) whole as one payload of at most limit bytes. More
 * is refused (exit 2) as soon as byte limit + 1 is read: the rest of the
 * input is not read. Returns an exit code; *out (free() it) on success.
 */
int cli_read_payload(const char *path, size_t limit, char **out, size_t *len);

/*
 * Cuts an input into lines as it is read, in a buffer of at most
 * max(limit + 1, 1 MiB) bytes. Lines handed out point into the buffer and
 * stay valid until cli_lines_fill().
 */
typedef struct cli_lines {
	int fd;
	bool close_fd;
	const char *name; /* for messages: "stdin" or the file name */
	size_t limit;     /* longest line, without its newline */
	char *buf;
	size_t cap, max_cap;
	size_t pos; /* where the next line starts */
	size_t end; /* bytes in buf */
	bool eof;
	uint64_t lineno; /* lines handed out so far */
} cli_lines;

/* Opens path ("-": stdin). Returns an exit code (2: cannot open). */
int cli_lines_open(cli_lines *r, const char *path, size_t limit);
/*
 * The next complete line (a last one without a newline at the end of the
 * input counts). Returns 1 with *p, *len set; 0 if more input is needed
 * (cli_lines_fill); -1 at the end; -2 if line number lineno + 1 is longer
 * than limit (found as soon as limit + 1 of its bytes are read).
 */
int cli_lines_next(cli_lines *r, const char **p, size_t *len);
/*
 * Reads more, once every line handed out is done with (they move). One
 * read(2): what a pipe holds now, so lines typed one by one go out one by
 * one. Returns 0, or -1 with errno set (EINTR when a signal came).
 */
int cli_lines_fill(cli_lines *r);
void cli_lines_close(cli_lines *r);

#endif /* ACKBOX_CLI_PUBLISH_H */
