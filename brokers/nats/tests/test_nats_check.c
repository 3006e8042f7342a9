/*
 * test_nats_check.c - the NATS publish rules case by case (subjects, header
 * names and values, the size against max_payload), without a server.
 */
#include "testutil.h"

#include "nats_check.h"

static ackbox_tx_msg msg(const char *topic)
{
	ackbox_tx_msg m = {0};
	m.topic = topic;
	m.id_str = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
	m.payload = "x";
	m.payload_len = 1;
	return m;
}

static void refused(const ackbox_tx_msg *m, int64_t max, int rc, const char *needle)
{
	char err[512] = "";
	int got = abx_nats_check(m, max, err, sizeof(err));
	cr_assert_eq(got, rc, "'%s': got %d (%s), want %d", m->topic, got, err, rc);
	cr_assert(strstr(err, needle), "'%s' not in: %s", needle, err);
}

static void accepted(const ackbox_tx_msg *m, int64_t max)
{
	char err[512] = "";
	cr_assert_eq(abx_nats_check(m, max, err, sizeof(err)), 0, "'%s': %s", m->topic, err);
}

Test(nats_check, subjects)
{
	static const char *const good[] = {"orders", "orders.eu.created", "a", "caf\xC3\xA9.x",
	                                   "a-b_c.D9", "$KV.bucket.key", NULL};
	for (int i = 0; good[i]; i++) {
		ackbox_tx_msg m = msg(good[i]);
		accepted(&m, 0);
	}
	ackbox_tx_msg m = msg("");
	refused(&m, 0, ACKBOX_ERR_INVALID, "subject is empty");
	m.topic = "orders.*";
	refused(&m, 0, ACKBOX_ERR_INVALID, "wildcard '*'");
	m.topic = "orders.>";
	refused(&m, 0, ACKBOX_ERR_INVALID, "wildcard '>'");
	m.topic = "a*b";
	refused(&m, 0, ACKBOX_ERR_INVALID, "wildcard '*' at byte 1");
	m.topic = "orders created";
	refused(&m, 0, ACKBOX_ERR_INVALID, "a space, 0x20 at byte 6");
	m.topic = "orders\tcreated";
	refused(&m, 0, ACKBOX_ERR_INVALID, "0x09 at byte 6");
	m.topic = "orders\x7f";
	refused(&m, 0, ACKBOX_ERR_INVALID, "0x7f");
	m.topic = ".orders";
	refused(&m, 0, ACKBOX_ERR_INVALID, "empty token at byte 0");
	m.topic = "orders.";
	refused(&m, 0, ACKBOX_ERR_INVALID, "empty token at byte 7");
	m.topic = "orders..eu";
	refused(&m, 0, ACKBOX_ERR_INVALID, "empty token at byte 7");
	char *big = malloc(ABX_NATS_MAX_SUBJECT + 2);
	memset(big, 'a', ABX_NATS_MAX_SUBJECT + 1);
	big[ABX_NATS_MAX_SUBJECT + 1] = '\0';
	m.topic = big;
	refused(&m, 0, ACKBOX_ERR_INVALID, "3901 bytes");
	big[ABX_NATS_MAX_SUBJECT] = '\0';
	accepted(&m, 0);
	free(big);
}

Test(nats_check, headers_key_and_content_type)
{
	ackbox_tx_msg m = msg("t");
	ackbox_header h = {"h", "v", 1};
	m.headers = &h;
	m.header_count = 1;
	accepted(&m, 0);
	h.name = "has:colon";
	refused(&m, 0, ACKBOX_ERR_INVALID, "header 0 name 'has:colon' has the byte 0x3a at offset 3");
	h.name = "has space";
	refused(&m, 0, ACKBOX_ERR_INVALID, "0x20 at offset 3");
	h.name = "caf\xC3\xA9";
	refused(&m, 0, ACKBOX_ERR_INVALID, "0xc3 at offset 3");
	h.name = "nats-msg-id";
	refused(&m, 0, ACKBOX_ERR_INVALID, "ackbox sets that header to the message id");
	h.name = "Nats-Expected-Last-Sequence"; /* JetStream's own: passed on */
	h.value = "7";
	accepted(&m, 0);
	h.name = "h";
	h.value = "a\r\nInjected: 1";
	h.value_len = strlen(h.value);
	refused(&m, 0, ACKBOX_ERR_INVALID, "header 0 ('h') value has the byte 0x0d at offset 1");
	h.value = "a\0b";
	h.value_len = 3;
	refused(&m, 0, ACKBOX_ERR_INVALID, "0x00 at offset 1");
	h.value = " padded";
	h.value_len = 7;
	refused(&m, 0, ACKBOX_ERR_INVALID, "begins or ends with a space or tab");
	h.value = "\xE2\x82\xAC 10";
	h.value_len = 6;
	accepted(&m, 0);
	m.key = "k\ny";
	m.key_len = 3;
	refused(&m, 0, ACKBOX_ERR_INVALID, "key (header 'ackbox-key') has the byte 0x0a");
	m.key = "k";
	m.key_len = 1;
	m.content_type = "text/plain\n";
	refused(&m, 0, ACKBOX_ERR_INVALID, "content_type (header 'Content-Type')");
	m.content_type = "text/plain";
	accepted(&m, 0);
}

/*
 * What nats.c sends for the headers: "NATS/1.0\r\n" (10), "Nats-Msg-Id: "
 * + 36 + "\r\n" (51), "Content-Type: text/plain\r\n" (26), "\r\n" (2): 89
 * bytes; a payload of max - 89 fits exactly.
 */
Test(nats_check, size_against_max_payload)
{
	ackbox_tx_msg m = msg("t");
	char err[512];
	m.content_type = "text/plain";
	cr_assert_eq(abx_nats_header_size(&m), 89u);
	m.payload_len = 1000 - 89;
	accepted(&m, 1000);
	m.payload_len++;
	cr_assert_eq(abx_nats_check(&m, 1000, err, sizeof(err)), ACKBOX_ERR_TOO_LARGE, "%s", err);
	cr_assert(strstr(err, "1001 bytes (payload 912, headers 89)"), "%s", err);
	cr_assert(strstr(err, "max_payload of 1000 bytes"), "%s", err);
	accepted(&m, 0); /* not known yet */
}
