/*
 * plugin_load.c - plugins from shared objects: dlopen, then the one entry
 * point ackbox_plugin_entry, whose registrations are staged (registry.c) and
 * kept only if all of them succeed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>

#include "internal.h"
#include "registry.h"

#define MAX_LOADED 32

static pthread_mutex_t load_mtx = PTHREAD_MUTEX_INITIALIZER;
static void *loaded[MAX_LOADED]; /* dlopen handles, never closed */
static size_t n_loaded;

/* Is handle already loaded? Locks: load_mtx held. */
static int is_loaded(void *handle)
{
	for (size_t i = 0; i < n_loaded; i++)
		if (loaded[i] == handle)
			return 1;
	return 0;
}

/* Runs the entry point with its registrations staged; 0 if all were kept. */
static int run_entry(ackbox_plugin_entry_fn *entry, const char *path, char *errstr,
                     size_t errstr_size)
{
	char why[256] = "", reg_why[256] = "";
	abx_reg_stage *st = abx_registry_stage_begin();
	int rc, reg_rc;
	if (!st) {
		ackbox_errstr_set(errstr, errstr_size, "plugin %s: out of memory", path);
		return ACKBOX_ERR_NOMEM;
	}
	rc = entry(why, sizeof(why));
	reg_rc = abx_registry_stage_end(st, rc == 0, reg_why, sizeof(reg_why));
	if (rc) {
		ackbox_errstr_set(errstr, errstr_size, "plugin %s: %s (%s)", path,
		                  why[0] ? why : "its entry point failed", ackbox_strerror(rc));
		return rc;
	}
	if (reg_rc)
		ackbox_errstr_set(errstr, errstr_size, "plugin %s: %s", path, reg_why);
	return reg_rc;
}

int ackbox_plugin_load(const char *path, char *errstr, size_t errstr_size)
{
	struct stat sb;
	void *handle, *sym;
	int rc;

	if (!path || !*path) {
		ackbox_errstr_set(errstr, errstr_size, "plugin: empty path");
		return ACKBOX_ERR_BAD_VALUE;
	}
	if (stat(path, &sb) != 0) {
		ackbox_errstr_set(errstr, errstr_size, "plugin %s: %s", path, strerror(errno));
		return ACKBOX_ERR_BAD_VALUE;
	}
	if (!S_ISREG(sb.st_mode)) {
		ackbox_errstr_set(errstr, errstr_size, "plugin %s: not a regular file", path);
		return ACKBOX_ERR_BAD_VALUE;
	}
	pthread_mutex_lock(&load_mtx);
	/* RTLD_LOCAL: plugins do not see each other's symbols; RTLD_NOW: an
	 * undefined symbol (a plugin built against a newer ackbox) fails here,
	 * not in the middle of a send */
	handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!handle) {
		const char *why = dlerror();
		pthread_mutex_unlock(&load_mtx);
		ackbox_errstr_set(errstr, errstr_size, "plugin %s: cannot load: %s", path,
		                  why ? why : "dlopen failed");
		return ACKBOX_ERR_BAD_VALUE;
	}
	if (is_loaded(handle)) {
		dlclose(handle); /* drops the reference this dlopen added */
		pthread_mutex_unlock(&load_mtx);
		return 0;
	}
	if (n_loaded == MAX_LOADED) {
		dlclose(handle);
		pthread_mutex_unlock(&load_mtx);
		ackbox_errstr_set(errstr, errstr_size, "plugin %s: too many plugins loaded (%d)", path,
		                  MAX_LOADED);
		return ACKBOX_ERR_INVALID;
	}
	sym = dlsym(handle, ACKBOX_PLUGIN_ENTRY_NAME);
	if (!sym) {
		dlclose(handle);
		pthread_mutex_unlock(&load_mtx);
		ackbox_errstr_set(errstr, errstr_size,
		                  "plugin %s: no " ACKBOX_PLUGIN_ENTRY_NAME "() in it: not an ackbox "
		                  "plugin, or built without exporting it (ACKBOX_PLUGIN_EXPORT)",
		                  path);
		return ACKBOX_ERR_ABI;
	}
	ackbox_plugin_entry_fn *entry;
	/* POSIX: a data pointer from dlsym may be converted to a function pointer */
	memcpy(&entry, &sym, sizeof(entry));
	rc = run_entry(entry, path, errstr, errstr_size);
	if (rc)
		dlclose(handle); /* nothing of it was kept */
	else
		loaded[n_loaded++] = handle;
	pthread_mutex_unlock(&load_mtx);
	return rc;
}
