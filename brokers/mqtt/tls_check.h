/*
 * tls_check.h - why a TLS connect failed, found with a handshake of our own
 * (tls_check.c), for a connect error that names the cause.
 */
#ifndef ACKBOX_MQTT_TLS_CHECK_H
#define ACKBOX_MQTT_TLS_CHECK_H

#include <stddef.h>

/*
 * Connects to host:port, shakes hands verifying against cafile (NULL: the
 * system's CAs) and checks that the certificate names host. Returns 1 with
 * the cause in out (an unverified certificate, a wrong host name, no TLS on
 * the port), or 0 if it found nothing wrong or could not connect. Blocks up
 * to about 2 x timeout_ms. Any thread.
 */
int abx_mqtt_tls_diagnose(const char *host, int port, const char *cafile, int timeout_ms,
                          char *out, size_t out_size);

#endif
