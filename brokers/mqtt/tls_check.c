/*
 * tls_check.c - why a TLS connect to an MQTT broker failed, when paho does
 * not say: paho checks the broker's host name after the handshake and
 * reports only "TCP/TLS connect failure". One handshake of our own, with the
 * same CA, finds the cause: a certificate the CA did not sign, one that does
 * not name the host, or no TLS at all. Runs only after a failed connect.
 */
#define _GNU_SOURCE
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls_check.h"

static int tcp_connect(const char *host, int port, int timeout_ms)
{
	struct addrinfo hints, *res = NULL, *ai;
	char portstr[16];
	int fd = -1;
	struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	snprintf(portstr, sizeof(portstr), "%d", port);
	if (getaddrinfo(host, portstr, &hints, &res) != 0)
		return -1;
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	return fd;
}

int abx_mqtt_tls_diagnose(const char *host, int port, const char *cafile, int timeout_ms,
                          char *out, size_t out_size)
{
	SSL_CTX *ctx = NULL;
	SSL *ssl = NULL;
	X509 *cert = NULL;
	int fd, found = 0;
	long vr;

	fd = tcp_connect(host, port, timeout_ms);
	if (fd < 0)
		return 0; /* not a TLS problem: paho's words stand */
	ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx)
		goto done;
	if (cafile ? SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1
	           : SSL_CTX_set_default_verify_paths(ctx) != 1)
		goto done;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* look at the result, not fail on it */
	ssl = SSL_new(ctx);
	if (!ssl)
		goto done;
	SSL_set_fd(ssl, fd);
	SSL_set_tlsext_host_name(ssl, host);
	if (SSL_connect(ssl) != 1) {
		snprintf(out, out_size, "the TLS handshake failed (%s): is the port a TLS listener?",
		         ERR_reason_error_string(ERR_peek_last_error())
		             ? ERR_reason_error_string(ERR_peek_last_error())
		             : "no reason given");
		found = 1;
		goto done;
	}
	vr = SSL_get_verify_result(ssl);
	if (vr != X509_V_OK) {
		snprintf(out, out_size,
		         "the broker's certificate does not verify against %s: %s",
		         cafile ? "the CA in mqtt.cafile" : "the CAs this system trusts (set mqtt.cafile)",
		         X509_verify_cert_error_string(vr));
		found = 1;
		goto done;
	}
	cert = SSL_get1_peer_certificate(ssl);
	if (cert && X509_check_host(cert, host, 0, 0, NULL) != 1 &&
	    X509_check_ip_asc(cert, host, 0) != 1) {
		snprintf(out, out_size, "the broker's certificate does not name host '%s'", host);
		found = 1;
	}
done:
	X509_free(cert);
	if (ssl)
		SSL_free(ssl);
	if (ctx)
		SSL_CTX_free(ctx);
	ERR_clear_error();
	close(fd);
	return found;
}
