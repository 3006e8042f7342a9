/*
 * secret.c - a URL that holds a password need not be typed where `ps` or a
 * shell history shows it: store.url and transport.url also take
 * "env:NAME" (the URL is in the environment variable NAME) and "file:PATH"
 * (the URL is the first line of the file PATH). The reference is resolved
 * when the key is set; errors name the variable or file, never the URL.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define SECRET_MAX 8192 /* longer is not a URL */

/* Copies the first line of s (without trailing white space) into a new string. */
static char *first_line(const char *s, size_t n)
{
	size_t len = 0;
	char *out;
	while (len < n && s[len] != '\n' && s[len] != '\r' && s[len] != '\0')
		len++;
	while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
		len--;
	out = malloc(len + 1);
	if (out) {
		memcpy(out, s, len);
		out[len] = '\0';
	}
	return out;
}

static int from_env(const char *key, const char *name, char **out, char *errstr,
                    size_t errstr_size)
{
	char shown[128];
	const char *v = getenv(name);
	ackbox_escape(name, strlen(name), shown, sizeof(shown));
	if (!*name) {
		ackbox_errstr_set(errstr, errstr_size, "%s: env: needs a variable name (env:NAME)", key);
		return ACKBOX_ERR_BAD_VALUE;
	}
	if (!v || !*v) {
		ackbox_errstr_set(errstr, errstr_size, "%s: environment variable %s is %s", key, shown,
		                  v ? "empty" : "not set");
		return ACKBOX_ERR_BAD_VALUE;
	}
	*out = first_line(v, strnlen(v, SECRET_MAX));
	return *out ? 0 : ACKBOX_ERR_NOMEM;
}

static int from_file(const char *key, const char *path, char **out, char *errstr,
                     size_t errstr_size)
{
	char shown[512], buf[SECRET_MAX];
	struct stat sb;
	ssize_t n;
	int fd;
	ackbox_escape(path, strlen(path), shown, sizeof(shown));
	if (!*path) {
		ackbox_errstr_set(errstr, errstr_size, "%s: file: needs a path (file:/run/secrets/url)",
		                  key);
		return ACKBOX_ERR_BAD_VALUE;
	}
	/* non-blocking: a FIFO must not hang the configuration */
	fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		ackbox_errstr_set(errstr, errstr_size, "%s: cannot read '%s': %s", key, shown,
		                  strerror(errno));
		return ACKBOX_ERR_BAD_VALUE;
	}
	if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
		close(fd);
		ackbox_errstr_set(errstr, errstr_size, "%s: '%s' is not a regular file", key, shown);
		return ACKBOX_ERR_BAD_VALUE;
	}
	n = read(fd, buf, sizeof(buf));
	close(fd);
	if (n <= 0) {
		ackbox_errstr_set(errstr, errstr_size, "%s: '%s' is empty", key, shown);
		return ACKBOX_ERR_BAD_VALUE;
	}
	*out = first_line(buf, (size_t)n);
	explicit_bzero(buf, sizeof(buf));
	return *out ? 0 : ACKBOX_ERR_NOMEM;
}

int abx_secret_resolve(const char *key, const char *value, char **out, char *errstr,
                       size_t errstr_size)
{
	*out = NULL;
	if (strstr(value, "://"))
		return 0; /* a URL as it is */
	if (strncmp(value, "env:", 4) == 0)
		return from_env(key, value + 4, out, errstr, errstr_size);
	if (strncmp(value, "file:", 5) == 0)
		return from_file(key, value + 5, out, errstr, errstr_size);
	return 0;
}

void abx_secret_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}
