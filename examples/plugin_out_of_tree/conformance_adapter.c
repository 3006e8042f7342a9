/*
 * conformance_adapter.c - the transport conformance suite's view of the
 * linefile "broker", built against an installed ackbox (libackbox-conformance)
 * and loading the transport at run time (plugin.load in conf). The broker is
 * a directory: killed by moving it aside, cut by swapping in a copy made of
 * hard links; no byte is ever destroyed, so nothing confirmed is lost.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ackbox/conformance.h>

#ifndef LINEFILE_PLUGIN
#error "define LINEFILE_PLUGIN as the path of libackbox-linefile.so (CMakeLists.txt does)"
#endif

static char broker[1100]; /* the directory in the URL */

static int fail(char *err, size_t n, const char *what, const char *path)
{
	snprintf(err, n, "%s %s: %s", what, path, strerror(errno));
	return -1;
}

static void sibling(char *out, size_t n, const char *suffix)
{
	snprintf(out, n, "%s%s", broker, suffix);
}

static int lf_start(void *o, const char *dir, char *url, size_t url_size, char *err, size_t n)
{
	(void)o;
	snprintf(broker, sizeof(broker), "%s/broker", dir);
	if (mkdir(broker, 0755) != 0)
		return fail(err, n, "mkdir", broker);
	snprintf(url, url_size, "linefile://%s", broker);
	return 0;
}

/* The suite removes the test's directory, the broker's data with it. */
static void lf_stop(void *o)
{
	(void)o;
	broker[0] = '\0';
}

/* The directory moves aside and a plain file takes its name: the transport
 * sees its directory gone, and connecting fails until restart. */
static int lf_kill(void *o, char *err, size_t n)
{
	char down[1200];
	int fd;
	(void)o;
	sibling(down, sizeof(down), ".down");
	if (rename(broker, down) != 0)
		return fail(err, n, "rename to .down", broker);
	if ((fd = open(broker, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0)
		return fail(err, n, "create a file at", broker);
	close(fd);
	return 0;
}

static int lf_restart(void *o, char *err, size_t n)
{
	char down[1200];
	(void)o;
	sibling(down, sizeof(down), ".down");
	if (unlink(broker) != 0)
		return fail(err, n, "unlink", broker);
	if (rename(down, broker) != 0)
		return fail(err, n, "rename back", down);
	return 0;
}

/* Calls fn(dirfd, name) for every entry of path but . and ..; 0 or -1 with err. */
static int each_entry(const char *path, int (*fn)(int dfd, const char *name, void *arg), void *arg,
                      char *err, size_t n)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int rc = 0;
	if (!d)
		return fail(err, n, "opendir", path);
	while (rc == 0 && (errno = 0, e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (fn(dirfd(d), e->d_name, arg) != 0) {
			snprintf(err, n, "%s/%s: %s", path, e->d_name, strerror(errno));
			rc = -1;
		}
	}
	if (rc == 0 && errno != 0)
		rc = fail(err, n, "readdir", path);
	closedir(d);
	return rc;
}

static int link_into(int dfd, const char *name, void *arg)
{
	return linkat(dfd, name, *(int *)arg, name, 0);
}

static int unlink_in(int dfd, const char *name, void *arg)
{
	(void)arg;
	return unlinkat(dfd, name, 0);
}

/*
 * The broker stays up, the connection drops: a new directory holding the
 * same files (hard links: the same inodes, so a line written through an
 * old descriptor is in it too) takes the name in one atomic exchange; the
 * transport sees its directory's inode change and reconnects.
 */
static int lf_cut(void *o, char *err, size_t n)
{
	char fresh[1200];
	int nfd;
	(void)o;
	sibling(fresh, sizeof(fresh), ".new");
	if (mkdir(fresh, 0755) != 0)
		return fail(err, n, "mkdir", fresh);
	if ((nfd = open(fresh, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		return fail(err, n, "open", fresh);
	int rc = each_entry(broker, link_into, &nfd, err, n);
	close(nfd);
	if (rc)
		return -1;
	if (renameat2(AT_FDCWD, fresh, AT_FDCWD, broker, RENAME_EXCHANGE) != 0)
		return fail(err, n, "renameat2 RENAME_EXCHANGE with", broker);
	/* fresh now names the old directory: only links to live files are in it */
	if (each_entry(fresh, unlink_in, NULL, err, n))
		return -1;
	if (rmdir(fresh) != 0)
		return fail(err, n, "rmdir", fresh);
	return 0;
}

/* Declaring a topic is creating its file. */
static int lf_prepare(void *o, const char *topic, char *err, size_t n)
{
	char path[1400];
	int fd;
	(void)o;
	snprintf(path, sizeof(path), "%s/%s", broker, topic);
	if ((fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644)) < 0)
		return fail(err, n, "create", path);
	close(fd);
	return 0;
}

/* The whole file at path, NUL-terminated, in *out (caller frees); 0 or -1. */
static int slurp(const char *path, char **out, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0, used = 0, r;
	if (!f)
		return -1;
	do {
		if (cap - used < 65536) {
			char *b = realloc(buf, cap = cap * 2 + 65536);
			if (!b) {
				free(buf);
				fclose(f);
				errno = ENOMEM;
				return -1;
			}
			buf = b;
		}
		r = fread(buf + used, 1, cap - used - 1, f);
		used += r;
	} while (r > 0);
	int bad = ferror(f);
	fclose(f);
	if (bad) {
		free(buf);
		errno = EIO;
		return -1;
	}
	buf[used] = '\0';
	*out = buf;
	*len = used;
	return 0;
}

/* Complete lines (a line without its newline is still being written). */
static size_t lines(const char *buf, size_t len)
{
	size_t k = 0;
	for (const char *p = buf; (p = memchr(p, '\n', len - (size_t)(p - buf))) != NULL; p++)
		k++;
	return k;
}

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* Reads DIR/<topic>, waiting (a minute at most) for expect complete lines;
 * each line's first field is the message's ackbox id. */
static int lf_consume(void *o, const char *topic, size_t expect, ackbox_tc_found_cb found,
                      void *arg, char *err, size_t n)
{
	char path[1400];
	char *buf = NULL;
	size_t len = 0;
	long long deadline = mono_ms() + 60000;
	(void)o;
	snprintf(path, sizeof(path), "%s/%s", broker, topic);
	for (;;) {
		if (slurp(path, &buf, &len) != 0)
			return fail(err, n, "read", path);
		if (lines(buf, len) >= expect || mono_ms() >= deadline)
			break;
		free(buf);
		nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL); /* re-read in 10 ms */
	}
	size_t lineno = 0;
	for (char *p = buf, *nl; (nl = memchr(p, '\n', len - (size_t)(p - buf))) != NULL;
	     p = nl + 1) {
		char text[ACKBOX_ID_STRLEN];
		size_t idlen = strcspn(p, " \n");
		ackbox_id id;
		lineno++;
		snprintf(text, sizeof(text), "%.*s", (int)idlen, p);
		if (idlen >= sizeof(text) || ackbox_id_parse(text, &id) != 0) {
			snprintf(err, n, "%s line %zu starts with no ackbox id", path, lineno);
			free(buf);
			return -1;
		}
		found(arg, &id);
	}
	free(buf);
	return 0;
}

/* A topic nobody declared: its file is not there. */
static int lf_refusal(void *o, ackbox_tc_refusal *r, char *err, size_t n)
{
	(void)o;
	(void)err;
	(void)n;
	snprintf(r->topic, sizeof(r->topic), "tc_undeclared");
	r->broker_code = ENOENT;
	r->outcome = ACKBOX_OUTCOME_UNROUTABLE;
	return 0;
}

static const ackbox_tc_adapter adapter = {
	.struct_size = sizeof(ackbox_tc_adapter),
	.name = "linefile",
	.start = lf_start,
	.stop = lf_stop,
	.kill = lf_kill,
	.restart = lf_restart,
	.cut = lf_cut,
	.prepare = lf_prepare,
	.consume = lf_consume,
	.refusal = lf_refusal,
	.oversized = 1048577, /* linefile.max_bytes (1 MiB by default) and one byte */
	/* the transport is a shared object, loaded as an application would */
	.conf = (const char *const[]){"plugin.load=" LINEFILE_PLUGIN, NULL},
};

int main(int argc, char **argv)
{
	return ackbox_tc_main(&adapter, argc, argv);
}
