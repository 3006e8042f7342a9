/*
 * fuzz_config.c - libFuzzer target for everything that parses user text:
 * URLs, durations, booleans and ackbox_conf_set. Input: "key\nvalue".
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <ackbox/plugin.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1), *nl, err[256], v[64];
	ackbox_url u;
	int64_t ms;
	int b;
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	if (ackbox_url_parse(text, &u, err, sizeof(err)) == 0) {
		ackbox_url_query_get(&u, "a", v, sizeof(v));
		ackbox_url_fini(&u);
	}
	ackbox_parse_duration_ms(text, &ms);
	ackbox_parse_bool(text, &b);
	nl = strchr(text, '\n');
	if (nl) {
		ackbox_conf *c = ackbox_conf_new();
		*nl = '\0';
		ackbox_conf_set(c, text, nl + 1, err, sizeof(err));
		ackbox_conf_get(c, text);
		ackbox_conf_destroy(c);
	}
	free(text);
	return 0;
}
