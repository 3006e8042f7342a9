/*
 * nats-stream-dump.c - test helper: prints every message a JetStream stream
 * holds, one payload per line (the independent consumer of crash_adapter.sh
 * here, for tests/crash/harness.sh). Reads by sequence number, so nothing is acked or
 * consumed. Usage: nats-stream-dump NATS_URL STREAM [--ids]
 * With --ids, prints the Nats-Msg-Id of each message instead.
 */
#include <stdio.h>
#include <string.h>

#include <nats/nats.h>

int main(int argc, char **argv)
{
	natsConnection *nc = NULL;
	jsCtx *js = NULL;
	jsStreamInfo *si = NULL;
	jsErrCode jerr = 0;
	int ids = argc > 3 && strcmp(argv[3], "--ids") == 0;
	natsStatus s;

	if (argc < 3) {
		fprintf(stderr, "usage: nats-stream-dump NATS_URL STREAM [--ids]\n");
		return 2;
	}
	s = natsConnection_ConnectTo(&nc, argv[1]);
	if (s == NATS_OK)
		s = natsConnection_JetStream(&js, nc, NULL);
	if (s == NATS_OK)
		s = js_GetStreamInfo(&si, js, argv[2], NULL, &jerr);
	if (s != NATS_OK) {
		fprintf(stderr, "nats-stream-dump: %s %s: %s (JetStream error %d)\n", argv[1], argv[2],
		        natsStatus_GetText(s), (int)jerr);
		return 1;
	}
	for (uint64_t seq = si->State.FirstSeq; si->State.Msgs && seq <= si->State.LastSeq; seq++) {
		natsMsg *m = NULL;
		const char *v = NULL;
		s = js_GetMsg(&m, js, argv[2], seq, NULL, &jerr);
		if (s != NATS_OK) {
			fprintf(stderr, "nats-stream-dump: %s #%llu: %s\n", argv[2],
			        (unsigned long long)seq, natsStatus_GetText(s));
			return 1;
		}
		if (ids && natsMsgHeader_Get(m, "Nats-Msg-Id", &v) == NATS_OK)
			printf("%s\n", v);
		else if (!ids) {
			fwrite(natsMsg_GetData(m), 1, (size_t)natsMsg_GetDataLength(m), stdout);
			putchar('\n');
		}
		natsMsg_Destroy(m);
	}
	jsStreamInfo_Destroy(si);
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	return 0;
}
