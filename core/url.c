/*
 * url.c - the one URL parser every plugin uses, so "amqp://u:p@h:5672/vh"
 * and "sqlite:///var/lib/app/outbox.db" mean the same thing everywhere.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
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

/* Every message below shows the URL as `shown`: its password hidden and
 * control characters escaped (ackbox_url_redact), never as typed. */
#define BAD(...)                                                                                   \
	do {                                                                                       \
		ackbox_errstr_set(errstr, errstr_size, __VA_ARGS__);                               \
		ackbox_url_fini(u);                                                                \
		return ACKBOX_ERR_BAD_URL;                                                         \
	} while (0)

/* Any byte below 0x20 or DEL in s (a %-escape decoded into one). */
static int has_control(const char *s)
{
	for (; s && *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return 1;
	return 0;
}

/*
 * Checks one entry of the host list [b, e): a host (or [IPv6]) and an
 * optional port in 1..65535. Returns NULL, or what is wrong with it.
 */
static const char *host_entry_error(const char *b, const char *e, int *port_out)
{
	const char *portp = NULL;
	long port = 0;
	*port_out = 0;
	if (b == e)
		return "an empty host";
	if (*b == '[') {
		const char *rb = memchr(b, ']', (size_t)(e - b));
		if (!rb)
			return "an unterminated IPv6 address";
		if (rb == b + 1)
			return "an empty IPv6 address";
		if (rb + 1 < e) {
			if (rb[1] != ':')
				return "junk after an IPv6 address";
			portp = rb + 2;
		}
	} else {
		const char *c = memchr(b, ':', (size_t)(e - b));
		if (c == b)
			return "a port without a host";
		if (c)
			portp = c + 1;
	}
	if (!portp)
		return NULL;
	if (portp == e)
		return "an empty port";
	for (const char *s = portp; s < e; s++) {
		if (!isdigit((unsigned char)*s))
			return "a non-numeric port";
		port = port * 10 + (*s - '0');
		if (port > 65535)
			return "a port above 65535";
	}
	if (port == 0)
		return "port 0";
	*port_out = (int)port;
	return NULL;
}

int ackbox_url_parse(const char *text, ackbox_url *u, char *errstr, size_t errstr_size)
{
	const char *p, *auth, *auth_end, *at, *hp, *path, *q;
	char shown[256];

	if (!u)
		return ACKBOX_ERR_INVALID;
	memset(u, 0, sizeof(*u));
	if (!text || !*text)
		BAD("empty URL");
	ackbox_url_redact(text, shown, sizeof(shown));
	for (p = text; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == ' ' || *p == 0x7f)
			BAD("URL '%s' contains a space or control character", shown);
	p = strstr(text, "://");
	if (!p || p == text)
		BAD("URL '%s' has no scheme (expected scheme://...)", shown);
	for (const char *s = text; s < p; s++)
		if (!(isalnum((unsigned char)*s) || *s == '+' || *s == '-' || *s == '.') ||
		    (s == text && !isalpha((unsigned char)*s)))
			BAD("URL '%s' has an invalid scheme", shown);
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
				BAD("URL '%s' has a bad %%-escape in user or password", shown);
		} else {
			u->user = pct_decode(auth, (size_t)(at - auth));
			if (!u->user)
				BAD("URL '%s' has a bad %%-escape in the user", shown);
		}
		if (has_control(u->user))
			BAD("URL '%s' has a control character in the user", shown);
		hp = at + 1;
	}
	u->hosts = dupn(hp, (size_t)(auth_end - hp));

	/*
	 * The host list: every entry is checked, not only the first, so that
	 * "h1,,h2" or "h:1,:99999" is refused rather than cut to its first
	 * host. host/port are the first entry. One entry may be empty
	 * ("sqlite:///path", "amqp://" for the plugin's default host); in a
	 * list none may.
	 */
	if (hp < auth_end) {
		int nentries = 0;
		for (const char *b = hp; b <= auth_end;) {
			const char *e = memchr(b, ',', (size_t)(auth_end - b));
			const char *why;
			int port;
			if (!e)
				e = auth_end;
			why = host_entry_error(b, e, &port);
			if (why)
				BAD("URL '%s' has %s in its host list (entry %d)", shown, why, nentries + 1);
			if (nentries == 0) {
				const char *hend;
				if (*b == '[') {
					hend = memchr(b, ']', (size_t)(e - b));
					u->host = dupn(b + 1, (size_t)(hend - b - 1));
				} else {
					hend = memchr(b, ':', (size_t)(e - b));
					u->host = dupn(b, (size_t)((hend ? hend : e) - b));
				}
				u->port = port;
			}
			nentries++;
			if (e == auth_end)
				break;
			b = e + 1;
		}
	} else {
		u->host = dupn("", 0);
	}

	u->path = pct_decode(path, (size_t)((q ? q : path + strlen(path)) - path));
	if (!u->path)
		BAD("URL '%s' has a bad %%-escape in the path", shown);
	if (has_control(u->path))
		BAD("URL '%s' has a control character in the path", shown);
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

int ackbox_url_query_check(const ackbox_url *url, const char *key, const char *const *known,
                           char *errstr, size_t errstr_size)
{
	const char *p;
	if (!url || !url->query)
		return ACKBOX_ERR_INVALID;
	if (!key)
		key = "URL";
	for (p = url->query; *p;) {
		const char *amp = strchr(p, '&');
		const char *end = amp ? amp : p + strlen(p);
		const char *eq = memchr(p, '=', (size_t)(end - p));
		size_t nl = (size_t)((eq ? eq : end) - p);
		char name[64];
		int ok = known == NULL;

		if (nl == 0) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "%s: a query parameter without a name (write ?name=value&...)",
			                  key);
			return ACKBOX_ERR_BAD_URL;
		}
		ackbox_escape(p, nl, name, sizeof(name));
		for (const char *const *k = known; k && *k && !ok; k++)
			ok = strlen(*k) == nl && strncmp(*k, p, nl) == 0;
		if (!ok) {
			char list[256] = "";
			size_t ll = 0;
			for (const char *const *k = known; k && *k; k++)
				ll += (size_t)snprintf(list + ll, ll < sizeof(list) ? sizeof(list) - ll : 0,
				                       "%s%s", ll ? ", " : "", *k);
			ackbox_errstr_set(errstr, errstr_size,
			                  "%s: unknown parameter '%s' (%s%s)", key, name,
			                  known && *known ? "known: " : "this scheme takes none",
			                  list);
			return ACKBOX_ERR_BAD_URL;
		}
		if (!eq || eq + 1 == end) {
			ackbox_errstr_set(errstr, errstr_size,
			                  "%s: parameter '%s' has no value (an empty value is refused, "
			                  "not taken as a default)",
			                  key, name);
			return ACKBOX_ERR_BAD_URL;
		}
		for (const char *r = end; *r;) {
			const char *ramp = strchr(r + 1, '&');
			const char *rb = r + 1, *re = ramp ? ramp : rb + strlen(rb);
			size_t rl = strcspn(rb, "=&");
			if (rl > (size_t)(re - rb))
				rl = (size_t)(re - rb);
			if (rl == nl && strncmp(rb, p, nl) == 0) {
				ackbox_errstr_set(errstr, errstr_size,
				                  "%s: parameter '%s' is given twice", key, name);
				return ACKBOX_ERR_BAD_URL;
			}
			r = re;
		}
		p = amp ? amp + 1 : end;
	}
	return 0;
}
