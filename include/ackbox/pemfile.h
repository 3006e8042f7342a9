/*
 * pemfile.h - for a transport's open(): checks that a CA file it was given
 * (amqp.cacert, mqtt.cafile) is a readable file holding a PEM certificate,
 * so that a wrong path, a directory or a file of something else is a
 * configuration error when the handle opens (ACKBOX_ERR_BAD_VALUE, CLI exit
 * 2), not a broker that cannot be reached at every connect.
 *
 * Header-only: static inline, nothing here is part of libackbox's ABI.
 * Threading: any thread. Ownership: reads path, keeps nothing.
 */
#ifndef ACKBOX_PEMFILE_H
#define ACKBOX_PEMFILE_H

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ackbox/plugin.h>

#ifdef __cplusplus
extern "C" {
#endif

/** 0, or ACKBOX_ERR_BAD_VALUE with errstr naming `key`, the file and why.
 *  Looks for "-----BEGIN CERTIFICATE-----" in the first 16 KiB. */
static inline int ackbox_pem_file_check(const char *key, const char *path, char *errstr,
                                        size_t errstr_size)
{
	static const char begin[] = "-----BEGIN CERTIFICATE-----";
	char shown[256], buf[16384];
	const char *why = NULL;
	struct stat st;
	ssize_t got = 0, r;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ackbox_escape(path, strlen(path), shown, sizeof(shown));
	if (fd < 0) {
		ackbox_errstr_set(errstr, errstr_size, "%s: cannot read '%s': %s", key, shown,
		                  strerror(errno));
		return ACKBOX_ERR_BAD_VALUE;
	}
	if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
		why = "it is a directory, not a file of PEM certificates";
	} else {
		while ((size_t)got < sizeof(buf) - 1 &&
		       (r = read(fd, buf + got, sizeof(buf) - 1 - (size_t)got)) > 0)
			got += r;
		buf[got] = '\0';
		/* a PEM file is text: a NUL ends the search, as it should */
		if (!strstr(buf, begin))
			why = "it holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" in its "
			      "first 16 KiB)";
	}
	close(fd);
	if (why) {
		ackbox_errstr_set(errstr, errstr_size, "%s: '%s': %s", key, shown, why);
		return ACKBOX_ERR_BAD_VALUE;
	}
	return 0;
}

#ifdef __cplusplus
}
#endif

#endif
