/*
 * url.c - the one URL parser every plugin uses, so "amqp://u:p@h:5672/vh"
 * and "sqlite:///var/lib/app/outbox.db" mean the same thing everywhere.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int unhex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Percent-decodes [s, s+n) into a new string; NULL on a bad escape or %00. */
static char *pct_decode(const char *s, size_t n)
{
	char *out = malloc(n + 1), *o = out;
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] != '%') {
			*o++ = s[i];
			continue;
		}
		int hi = i + 1 < n ? unhex(s[i + 1]) : -1;
		int lo = i + 2 < n ? unhex(s[i + 2]) : -1;
		if (i + 2 >= n || hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
			free(out);
			return NULL;
		}
		*o++ = (char)(hi << 4 | lo);
		i += 2;
	}
	*o = '\0';
	return out;
}

static char *dupn(const char *s, size_t n)
{
	char *d = malloc(n + 1);
	if (d) {
		memcpy(d, s, n);
		d[n] = '\0';
	}
	return d;
}

void ackbox_url_fini(ackbox_url *u)
{
	if (!u)
		return;
	free(u->scheme);
	free(u->user);
	free(u->password);
	free(u->hosts);
	free(u->host);
	free(u->path);
	free(u->query);
	memset(u, 0, sizeof(*u));
}

#define BAD(...)                                                                                   \
	do {                                                                                       \
		ackbox_errstr_set(errstr, errstr_size, __VA_ARGS__);                               \
		ackbox_url_fini(u);                                                                \
		return ACKBOX_ERR_BAD_URL;                                                         \
	} while (0)

int ackbox_url_parse(const char *text, ackbox_url *u, char *errstr, size_t errstr_size)
{
	const char *p, *auth, *auth_end, *at, *hp, *path, *q;

	if (!u)
		return ACKBOX_ERR_INVALID;
	memset(u, 0, sizeof(*u));
	if (!text || !*text)
		BAD("empty URL");
	for (p = text; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == ' ')
			BAD("URL '%s' contains a space or control character", text);
	p = strstr(text, "://");
	if (!p || p == text)
		BAD("URL '%s' has no scheme (expected scheme://...)", text);
	for (const char *s = text; s < p; s++)
		if (!(isalnum((unsigned char)*s) || *s == '+' || *s == '-' || *s == '.') ||
		    (s == text && !isalpha((unsigned char)*s)))
			BAD("URL '%s' has an invalid scheme", text);
	u->scheme = dupn(text, (size_t)(p - text));
	for (char *s = u->scheme; s && *s; s++)
		*s = (char)tolower((unsigned char)*s);

	auth = p + 3;
	auth_end = auth + strcspn(auth, "/?");
	path = auth_end;
	q = strchr(path, '?');

	/* userinfo: the last '@' inside the authority, so passwords may hold '@' escaped or not */
	at = NULL;
	for (const char *s = auth; s < auth_end; s++)
		if (*s == '@')
			at = s;
	hp = auth;
	if (at) {
		const char *colon = memchr(auth, ':', (size_t)(at - auth));
		if (colon) {
			u->user = pct_decode(auth, (size_t)(colon - auth));
			u->password = pct_decode(colon + 1, (size_t)(at - colon - 1));
			if (!u->user || !u->password)
				BAD("URL '%s' has a bad %%-escape in user or password", text);
		} else {
			u->user = pct_decode(auth, (size_t)(at - auth));
			if (!u->user)
				BAD("URL '%s' has a bad %%-escape in the user", text);
		}
		hp = at + 1;
	}
	u->hosts = dupn(hp, (size_t)(auth_end - hp));

	/* first host[:port]; IPv6 literals in brackets */
	{
		const char *e = memchr(hp, ',', (size_t)(auth_end - hp));
		const char *end = e ? e : auth_end;
		const char *portp = NULL;
		if (hp < end && *hp == '[') {
			const char *rb = memchr(hp, ']', (size_t)(end - hp));
			if (!rb)
				BAD("URL '%s' has an unterminated IPv6 address", text);
			u->host = dupn(hp + 1, (size_t)(rb - hp - 1));
			if (rb + 1 < end) {
				if (rb[1] != ':')
					BAD("URL '%s' has junk after the IPv6 address", text);
				portp = rb + 2;
			}
		} else {
			const char *c = memchr(hp, ':', (size_t)(end - hp));
			u->host = dupn(hp, (size_t)((c ? c : end) - hp));
			if (c)
				portp = c + 1;
		}
		if (portp) {
			long port = 0;
			if (portp == end)
				BAD("URL '%s' has an empty port", text);
			for (const char *s = portp; s < end; s++) {
				if (!isdigit((unsigned char)*s))
					BAD("URL '%s' has a non-numeric port", text);
				port = port * 10 + (*s - '0');
				if (port > 65535)
					BAD("URL '%s' has a port above 65535", text);
			}
			if (port == 0)
				BAD("URL '%s' has port 0", text);
			u->port = (int)port;
		}
	}

	u->path = pct_decode(path, (size_t)((q ? q : path + strlen(path)) - path));
	if (!u->path)
		BAD("URL '%s' has a bad %%-escape in the path", text);
	u->query = strdup(q ? q + 1 : "");
	if (!u->scheme || !u->hosts || !u->host || !u->query) {
		ackbox_url_fini(u);
		return ACKBOX_ERR_NOMEM;
	}
	return 0;
}

int ackbox_url_query_get(const ackbox_url *url, const char *name, char *out, size_t out_size)
{
	const char *p;
	size_t nlen;
	if (!url || !url->query || !name)
		return 0;
	nlen = strlen(name);
	for (p = url->query; *p;) {
		const char *amp = strchr(p, '&');
		const char *end = amp ? amp : p + strlen(p);
		const char *eq = memchr(p, '=', (size_t)(end - p));
		const char *kend = eq ? eq : end;
		if ((size_t)(kend - p) == nlen && strncmp(p, name, nlen) == 0) {
			const char *v = eq ? eq + 1 : end;
			char *dec = pct_decode(v, (size_t)(end - v));
			if (!dec)
				return 0;
			if (out && out_size) {
				strncpy(out, dec, out_size - 1);
				out[out_size - 1] = '\0';
			}
			free(dec);
			return 1;
		}
		p = amp ? amp + 1 : end;
	}
	return 0;
}
