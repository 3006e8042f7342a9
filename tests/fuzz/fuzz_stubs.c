/*
 * fuzz_stubs.c - the fuzz targets link the core's parsers without the
 * plugins: an empty built-in table stands in for the generated one.
 */
#include <stddef.h>

#include "registry.h"

const ackbox_transport_ops *const ackbox__builtin_transports[] = {NULL};
const ackbox_store_ops *const ackbox__builtin_stores[] = {NULL};
