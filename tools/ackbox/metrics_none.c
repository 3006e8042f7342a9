/*
 * metrics_none.c - `ackbox relay --metrics-listen` in a build without
 * libmicrohttpd: says how to get it. (`ackbox status --openmetrics` prints
 * the same text without a server.)
 */
#include "cli.h"

int cli_metrics_start(const char *listen, ackbox *ab, cli_metrics **out)
{
	(void)ab;
	*out = NULL;
	cli_say("--metrics-listen %s: this ackbox was built without libmicrohttpd "
	        "(install libmicrohttpd-dev and rebuild); 'ackbox status --openmetrics' prints the "
	        "metrics once",
	        listen);
	return EXIT_USAGE;
}

void cli_metrics_stop(cli_metrics *m)
{
	(void)m;
}
