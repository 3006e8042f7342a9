/*
 * fuzz_stubs.c - the fuzz targets link the core's parsers without the
 * plugins: an empty built-in table stands in for the generated one, and
 * plugin.load loads nothing (a fuzzer must not dlopen what it makes up).
 */
#include <stddef.h>

#include "registry.h"

int ackbox_plugin_load(const char *path, char *errstr, size_t errstr_size)
{
	(void)path;
	ackbox_errstr_set(errstr, errstr_size, "plugin.load: not in the fuzz build");
	return ACKBOX_ERR_BAD_VALUE;
}

const ackbox_transport_ops *const ackbox__builtin_transports[] = {NULL};
const ackbox_store_ops *const ackbox__builtin_stores[] = {NULL};
