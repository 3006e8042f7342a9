/*
 * redact.c - text that is safe to echo: ackbox_escape() makes bytes
 * printable (no control characters reach a terminal or a log line) and
 * ackbox_url_redact() hides the secrets a URL may carry.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

/* Output that stops at the first piece that does not fit whole, so an
 * escape is never cut in half; len counts what the whole text needs. */
typedef struct sink {
	char *out;
	size_t size, len, used;
	int full;
} sink;

static void put(sink *k, const char *s, size_t n)
{
	if (k->out && !k->full) {
		if (k->used + n < k->size) {
			memcpy(k->out + k->used, s, n);
			k->used += n;
		} else {
			k->full = 1;
		}
	}
	k->len += n;
}

/* Length of a valid UTF-8 sequence at p (at most n bytes), 0 if none. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	size_t need;
	uint32_t cp;
	if (p[0] < 0xc2 || p[0] > 0xf4)
		return 0;
	need = p[0] < 0xe0 ? 2 : p[0] < 0xf0 ? 3 : 4;
	if (n < need)
		return 0;
	cp = p[0] & (0x7f >> need);
	for (size_t i = 1; i < need; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
	}
	if ((need == 3 && cp < 0x800) || (need == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	/* C1 controls (a terminal takes U+009B as CSI) and the bidirectional
	 * overrides that make a line read differently than it is */
	if ((cp >= 0x80 && cp <= 0x9f) || (cp >= 0x202a && cp <= 0x202e) ||
	    (cp >= 0x2066 && cp <= 0x2069))
		return 0;
	return need;
}

size_t ackbox_escape(const void *p, size_t len, char *out, size_t out_size)
{
	const unsigned char *s = p;
	sink k = {out_size ? out : NULL, out_size, 0, 0, 0};
	for (size_t i = 0; s && i < len;) {
		unsigned char ch = s[i];
		char buf[8];
		size_t u;
		if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
			put(&k, (const char *)&s[i], 1);
			i++;
			continue;
		}
		if (ch >= 0x80 && (u = utf8_len(s + i, len - i)) > 0) {
			put(&k, (const char *)&s[i], u);
			i += u;
			continue;
		}
		switch (ch) {
		case '\\': snprintf(buf, sizeof(buf), "\\\\"); break;
		case '\n': snprintf(buf, sizeof(buf), "\\n"); break;
		case '\r': snprintf(buf, sizeof(buf), "\\r"); break;
		case '\t': snprintf(buf, sizeof(buf), "\\t"); break;
		default: snprintf(buf, sizeof(buf), "\\x%02x", ch); break;
		}
		put(&k, buf, strlen(buf));
		i++;
	}
	if (k.out)
		k.out[k.used] = '\0';
	return k.len;
}

/* Is a query parameter of this name likely to hold a secret? */
static int secret_name(const char *name, size_t n)
{
	static const char *const words[] = {"pass", "pwd", "secret", "token", "credential",
	                                    "auth", NULL};
	char low[64];
	if (n >= sizeof(low))
		n = sizeof(low) - 1;
	for (size_t i = 0; i < n; i++)
		low[i] = (char)tolower((unsigned char)name[i]);
	low[n] = '\0';
	for (const char *const *w = words; *w; w++)
		if (strstr(low, *w))
			return 1;
	return 0;
}

#define HIDDEN "***"

size_t ackbox_url_redact(const char *url, char *out, size_t out_size)
{
	char buf[4096];
	size_t n = 0, len, keep;
	const char *auth, *lim, *at = NULL, *s, *end, *q = NULL;

	if (out && out_size)
		out[0] = '\0';
	if (!url)
		return 0;
	/* longer is not a URL anyone types; what is past this is not shown */
	len = strnlen(url, sizeof(buf) / 2);
	end = url + len;
	/* The user information is what comes before the last '@' ahead of any
	 * query or fragment. It starts after "scheme://", or, in a URL that did
	 * not parse but may still hold a password, after the first "//" or ":/"
	 * (slashes mistyped: "amqp:/u:pw@h", "amqp//u:pw@h") or after
	 * "scheme:" (no slashes). Its password is what follows its first ':'
	 * (a '/' in a password, or a port before an '@' in a path, hides more,
	 * never less). */
	lim = url + strcspn(url, "?#");
	if (lim > end)
		lim = end;
	for (s = url; s < lim; s++)
		if (*s == '@')
			at = s;
	s = url;
	if (at) {
		const char *colon;
		if ((auth = memmem(url, (size_t)(at - url), "://", 3)) != NULL)
			auth += 3;
		else if ((auth = memmem(url, (size_t)(at - url), "//", 2)) != NULL)
			auth += 2;
		else if ((auth = memmem(url, (size_t)(at - url), ":/", 2)) != NULL)
			auth += strspn(auth + 1, "/") + 1;
		else if ((auth = memchr(url, ':', (size_t)(at - url))) != NULL)
			auth += 1;
		else
			auth = url;
		colon = auth < at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
		if (colon) {
			keep = (size_t)(colon + 1 - url);
			memcpy(buf, url, keep);
			n = keep;
			memcpy(buf + n, HIDDEN, strlen(HIDDEN));
			n += strlen(HIDDEN);
			s = at;
		}
	}
	/* the rest, with the values of secret-looking query parameters hidden
	 * (buf holds twice what is copied, so the loop never overflows it) */
	for (; s < end; s++) {
		if (*s == '?' && !q) {
			q = s;
		} else if (q && (s[-1] == '?' || s[-1] == '&')) {
			size_t nl = strcspn(s, "=&#");
			if (s + nl < end && s[nl] == '=' && secret_name(s, nl)) {
				memcpy(buf + n, s, nl + 1);
				n += nl + 1;
				memcpy(buf + n, HIDDEN, strlen(HIDDEN));
				n += strlen(HIDDEN);
				s += nl + strcspn(s + nl, "&#"); /* onto the '&', '#' or the end */
				if (s >= end)
					break;
			}
		}
		buf[n++] = *s;
	}
	return ackbox_escape(buf, n, out, out_size);
}
