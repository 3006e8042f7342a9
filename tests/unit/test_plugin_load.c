/*
 * test_plugin_load.c - plugins from shared objects (ackbox_plugin_load and
 * the plugin.load key): a good one serves its schemes and keys; a missing
 * file, a file that is not a shared object, one without the entry point,
 * one built for a newer ABI, one that fails half-way, one that ignores a
 * failed registration and one that registers nothing are refused with an
 * error naming the file and the reason, and leave nothing registered.
 * The objects are built from plugins/test_plugin.c (PLUGIN_<VARIANT>).
 */
#include "testutil.h"

#include <ackbox/plugin.h>
#include <ackbox/store.h>
#include <ackbox/transport.h>

static char err[512];

static int load(const char *path)
{
	err[0] = '\0';
	return ackbox_plugin_load(path, err, sizeof(err));
}

/* Is scheme served as a transport (is_store 0) or a store (1)? */
static int served(const char *scheme, int is_store)
{
	ackbox_conf *c = ackbox_conf_new();
	char url[128], e[256];
	int rc;
	snprintf(url, sizeof(url), "%s:///tmp/x.db", scheme);
	rc = ackbox_conf_set(c, is_store ? "store.url" : "transport.url", url, e, sizeof(e));
	ackbox_conf_destroy(c);
	return rc == 0;
}

static int acked;
static void on_report(const ackbox_report *r, void *opaque)
{
	(void)opaque;
	acked += r->state == ACKBOX_MSG_ACKED;
}

Test(plugin_load, good_plugin_serves_its_schemes_and_keys)
{
	char *dir = tu_tmpdir("load");
	char url[1200], e[256];
	ackbox *ab = NULL;
	ackbox_msg m = {.topic = "orders", .payload = "x", .payload_len = 1};
	cr_assert(!served("loadtest", 0) && !served("loadstore", 1));
	cr_assert_eq(load(PLUGIN_GOOD), 0, "%s", err);
	cr_assert(served("loadtest", 0) && served("loadstore", 1));
	cr_assert_eq(load(PLUGIN_GOOD), 0, "loading again: %s", err); /* once per process */

	ackbox_conf *c = ackbox_conf_new();
	snprintf(url, sizeof(url), "loadstore://%s/outbox.db", dir);
	TU_SET(c, "store.url", url);
	TU_SET(c, "transport.url", "loadtest://anywhere");
	TU_SET(c, "loadtest.window", "8"); /* its property table is known */
	cr_assert_eq(ackbox_conf_set(c, "loadtest.nope", "1", e, sizeof(e)), ACKBOX_ERR_UNKNOWN_KEY);
	ackbox_conf_set_report_cb(c, on_report, NULL);
	cr_assert_eq(ackbox_new(&ab, c, e, sizeof(e)), 0, "%s", e);
	for (int i = 0; i < 20; i++)
		cr_assert_eq(ackbox_publish(ab, &m, NULL, e, sizeof(e)), 0, "%s", e);
	cr_assert_eq(ackbox_flush(ab, 10000), 0);
	cr_assert_eq(acked, 20);
	ackbox_destroy(ab);
	tu_rmrf(dir);
	free(dir);
}

Test(plugin_load, the_key_loads_a_list_and_keeps_it)
{
	ackbox_conf *c = ackbox_conf_new();
	char e[512], want[1200];
	cr_assert_eq(ackbox_conf_set(c, "transport.url", "loadtest://x", e, sizeof(e)),
	             ACKBOX_ERR_UNKNOWN_SCHEME);
	cr_assert(strstr(e, "plugin.load"), "the error should say how to load it: %s", e);
	TU_SET(c, "plugin.load", PLUGIN_GOOD);
	TU_SET(c, "transport.url", "loadtest://x");
	/* a list, and setting the key again adds to it */
	TU_SET(c, "plugin.load", " " PLUGIN_GOOD " , " PLUGIN_GOOD);
	snprintf(want, sizeof(want), "%s, %s , %s", PLUGIN_GOOD, PLUGIN_GOOD, PLUGIN_GOOD);
	cr_assert_str_eq(ackbox_conf_get(c, "plugin.load"), want);
	/* a failing path: the key keeps its value */
	cr_assert_eq(ackbox_conf_set(c, "plugin.load", PLUGIN_NO_ENTRY, e, sizeof(e)),
	             ACKBOX_ERR_ABI);
	cr_assert(strstr(e, "plugin.load") && strstr(e, PLUGIN_NO_ENTRY), "%s", e);
	cr_assert_str_eq(ackbox_conf_get(c, "plugin.load"), want);
	ackbox_conf_destroy(c);
}

Test(plugin_load, missing_file_is_named)
{
	cr_assert_eq(load("/nonexistent/libackbox-nope.so"), ACKBOX_ERR_BAD_VALUE);
	cr_assert(strstr(err, "/nonexistent/libackbox-nope.so") &&
	              strstr(err, "No such file or directory"),
	          "%s", err);
}

Test(plugin_load, a_file_that_is_no_shared_object_is_refused)
{
	char *dir = tu_tmpdir("load");
	char path[1200];
	snprintf(path, sizeof(path), "%s/not-a-plugin.so", dir);
	FILE *f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs("#!/bin/sh\n", f);
	fclose(f);
	cr_assert_eq(load(path), ACKBOX_ERR_BAD_VALUE);
	cr_assert(strstr(err, path) && strstr(err, "cannot load"), "%s", err);
	cr_assert_eq(load(dir), ACKBOX_ERR_BAD_VALUE);
	cr_assert(strstr(err, "not a regular file"), "%s", err);
	tu_rmrf(dir);
	free(dir);
}

Test(plugin_load, missing_entry_point_is_named)
{
	cr_assert_eq(load(PLUGIN_NO_ENTRY), ACKBOX_ERR_ABI);
	cr_assert(strstr(err, PLUGIN_NO_ENTRY) && strstr(err, ACKBOX_PLUGIN_ENTRY_NAME), "%s", err);
	cr_assert(!served("loadtest", 0));
}

Test(plugin_load, newer_abi_is_refused_naming_both_versions)
{
	char mine[16], theirs[16];
	uint32_t v = ACKBOX_TRANSPORT_ABI_VERSION;
	snprintf(mine, sizeof(mine), "%u.%u", ACKBOX_ABI_MAJOR(v), ACKBOX_ABI_MINOR(v));
	snprintf(theirs, sizeof(theirs), "%u.%u", ACKBOX_ABI_MAJOR(v), ACKBOX_ABI_MINOR(v) + 1);
	cr_assert_eq(load(PLUGIN_NEWER), ACKBOX_ERR_ABI);
	cr_assert(strstr(err, PLUGIN_NEWER) && strstr(err, mine) && strstr(err, theirs) &&
	              strstr(err, "newer"),
	          "%s", err);
	cr_assert(!served("loadtest", 0));
}

Test(plugin_load, half_registered_plugin_leaves_nothing)
{
	cr_assert_eq(load(PLUGIN_HALF), ACKBOX_ERR_ABI);
	cr_assert(strstr(err, PLUGIN_HALF) && strstr(err, "9.0"), "%s", err);
	cr_assert(!served("loadtest", 0), "the transport of a plugin that failed stayed");
	/* and a good plugin with the same schemes loads afterwards */
	cr_assert_eq(load(PLUGIN_GOOD), 0, "%s", err);
	cr_assert(served("loadtest", 0));
}

Test(plugin_load, failed_registration_fails_the_load_even_if_ignored)
{
	cr_assert_eq(load(PLUGIN_IGNORES), ACKBOX_ERR_ABI);
	cr_assert(strstr(err, PLUGIN_IGNORES) && strstr(err, "newer"), "%s", err);
	cr_assert(!served("loadtest", 0));
}

Test(plugin_load, plugin_that_registers_nothing_is_refused)
{
	cr_assert_eq(load(PLUGIN_EMPTY), ACKBOX_ERR_INVALID);
	cr_assert(strstr(err, PLUGIN_EMPTY) && strstr(err, "no transport"), "%s", err);
}
