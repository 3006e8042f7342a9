/*
 * test_amqp_tls.c - TLS and authentication against a real RabbitMQ (ctest
 * fixture "rabbitmq_tls": a TLS listener with a certificate from a CA made
 * at test time, and a user other than guest with a random password).
 * Delivered over TLS as that user; a wrong password, an unknown CA and a
 * wrong host name each fail ackbox_new with ACKBOX_ERR_TRANSPORT (the CLI's
 * exit 4) and an error naming the cause; what was published meanwhile is
 * kept and delivered once the configuration is right; the password appears
 * in no error and no log line, at debug level. With the CLI built: exit 4,
 * the password neither on stderr nor in --json, and the URL read from an
 * environment variable.
 */
#include "testutil.h"

#include <pthread.h>
#include <sys/wait.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

/* A fixture value; each key's copy lives for the test (tu_fixture reuses
 * one buffer, and the tests use several values at once). */
static const char *env(const char *key)
{
	static struct {
		char key[32];
		char *value;
	} cache[16];
	int i;
	for (i = 0; i < 16 && cache[i].value; i++)
		if (strcmp(cache[i].key, key) == 0)
			return cache[i].value;
	cr_assert_lt(i, 16);
	snprintf(cache[i].key, sizeof(cache[i].key), "%s", key);
	cache[i].value = strdup(tu_fixture("rabbitmq_tls", key));
	return cache[i].value;
}

/* ---- a plain consumer (guest on the plain listener) ---- */

static amqp_connection_state_t raw_connect(void)
{
	amqp_connection_state_t c = amqp_new_connection();
	amqp_socket_t *s = amqp_tcp_socket_new(c);
	cr_assert_eq(amqp_socket_open(s, "127.0.0.1", atoi(env("AMQP_PORT"))), AMQP_STATUS_OK);
	cr_assert_eq(amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest")
	                 .reply_type,
	             AMQP_RESPONSE_NORMAL);
	amqp_channel_open(c, 1);
	cr_assert_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
	return c;
}

static void raw_close(amqp_connection_state_t c)
{
	amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
	amqp_connection_close(c, AMQP_REPLY_SUCCESS);
	amqp_destroy_connection(c);
}

static void declare(const char *queue)
{
	amqp_connection_state_t c = raw_connect();
	amqp_queue_declare(c, 1, amqp_cstring_bytes(queue), 0, 1, 0, 0, amqp_empty_table);
	cr_assert_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
	amqp_queue_purge(c, 1, amqp_cstring_bytes(queue));
	cr_assert_eq(amqp_get_rpc_reply(c).reply_type, AMQP_RESPONSE_NORMAL);
	raw_close(c);
}

/* Drains queue; counts the messages whose message-id is one of ids[0..n). */
static size_t drain_matching(const char *queue, const ackbox_id *ids, size_t n, size_t *total)
{
	amqp_connection_state_t c = raw_connect();
	size_t matched = 0;
	*total = 0;
	for (;;) {
		amqp_rpc_reply_t r = amqp_basic_get(c, 1, amqp_cstring_bytes(queue), 1);
		cr_assert_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
		if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD)
			break;
		amqp_message_t m;
		cr_assert_eq(amqp_read_message(c, 1, &m, 0).reply_type, AMQP_RESPONSE_NORMAL);
		char text[ACKBOX_ID_STRLEN] = "";
		ackbox_id id;
		if (m.properties.message_id.len == 36) {
			memcpy(text, m.properties.message_id.bytes, 36);
			if (ackbox_id_parse(text, &id) == 0)
				for (size_t i = 0; i < n; i++)
					if (memcmp(&id, &ids[i], sizeof(id)) == 0)
						matched++;
		}
		(*total)++;
		amqp_destroy_message(&m);
	}
	raw_close(c);
	return matched;
}

/* ---- every log line, at debug level, to search for the password ---- */

static pthread_mutex_t log_mtx = PTHREAD_MUTEX_INITIALIZER;
static char *logged;
static size_t logged_len;

static void on_log(ackbox_log_level level, const char *component, const char *msg, void *o)
{
	(void)level;
	(void)o;
	pthread_mutex_lock(&log_mtx);
	size_t add = strlen(component) + strlen(msg) + 3;
	char *n = realloc(logged, logged_len + add + 1);
	if (n) {
		logged = n;
		logged_len += (size_t)snprintf(logged + logged_len, add + 1, "%s: %s\n", component, msg);
	}
	pthread_mutex_unlock(&log_mtx);
}

/* The password, and the wrong one the tests use, appear nowhere logged. */
static void no_password_logged(const char *wrong)
{
	pthread_mutex_lock(&log_mtx);
	cr_assert(logged_len > 0, "nothing was logged at debug level");
	cr_assert_null(strstr(logged, env("TLS_PASSWORD")), "the password was logged:\n%s", logged);
	if (wrong)
		cr_assert_null(strstr(logged, wrong), "the wrong password was logged:\n%s", logged);
	pthread_mutex_unlock(&log_mtx);
}

static char *dir;
static void setup(void)
{
	dir = tu_tmpdir("amqptls");
}
static void teardown(void)
{
	tu_rmrf(dir);
	free(dir);
	free(logged);
	logged = NULL;
	logged_len = 0;
}
TestSuite(amqp_tls, .init = setup, .fini = teardown, .timeout = 240);

/* A configuration for url with the test's store; key/value pairs follow. */
static ackbox_conf *conf_for(const char *url, const char *const *kv)
{
	ackbox_conf *c = ackbox_conf_new();
	char db[1200];
	snprintf(db, sizeof(db), "sqlite://%s/outbox.db", dir);
	TU_SET(c, "store.url", db);
	TU_SET(c, "transport.url", url);
	TU_SET(c, "log.level", "debug");
	TU_SET(c, "transport.connect_timeout", "5s");
	TU_SET(c, "retry.backoff.initial", "50ms");
	TU_SET(c, "retry.backoff.max", "200ms");
	for (; kv && kv[0]; kv += 2)
		TU_SET(c, kv[0], kv[1]);
	ackbox_conf_set_log_cb(c, on_log, NULL);
	return c;
}

static ackbox_id publish(ackbox *ab, const char *topic)
{
	ackbox_msg m = {.topic = topic, .payload = "tls", .payload_len = 3};
	ackbox_id id;
	char err[512];
	cr_assert_eq(ackbox_publish(ab, &m, &id, err, sizeof(err)), 0, "%s", err);
	return id;
}

/* The URL with another user information and host. */
static void url_as(char *out, size_t n, const char *user, const char *password, const char *host)
{
	snprintf(out, n, "amqps://%s:%s@%s:%s", user, password, host, env("AMQPS_PORT"));
}

Test(amqp_tls, delivered_over_tls_as_a_user_with_a_password)
{
	const char *kv[] = {"amqp.cacert", env("TLS_CA"), "transport.require_connect", "true", NULL};
	enum { N = 300 };
	static ackbox_id ids[N];
	char err[512];
	size_t total;
	ackbox *ab;

	declare("tls_orders");
	ackbox_conf *c = conf_for(env("AMQPS_URL"), kv);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	for (int i = 0; i < N; i++)
		ids[i] = publish(ab, "tls_orders");
	cr_assert_eq(ackbox_flush(ab, 60000 * TU_SLOW), 0, "every message confirmed over TLS");
	ackbox_destroy(ab);
	cr_assert_eq(drain_matching("tls_orders", ids, N, &total), N);
	cr_assert_eq(total, N);
	no_password_logged(NULL);
}

/*
 * Refused: ackbox_new with transport.require_connect says ACKBOX_ERR_TRANSPORT
 * naming the cause (`says`), never the password; without it, a publish is
 * stored and waits: nothing is lost, and a handle with the right settings
 * delivers it.
 */
static void refused_then_delivered(const char *url, const char *cacert, const char *says,
                                   const char *wrong)
{
	const char *strict[] = {"amqp.cacert", cacert, "transport.require_connect", "true", NULL};
	const char *lenient[] = {"amqp.cacert", cacert, NULL};
	const char *right[] = {"amqp.cacert", env("TLS_CA"), NULL};
	char err[512] = "";
	ackbox_counts n;
	ackbox *ab = NULL;
	size_t total;

	ackbox_conf *c = conf_for(url, strict);
	int rc = ackbox_new(&ab, c, err, sizeof(err));
	cr_assert_eq(rc, ACKBOX_ERR_TRANSPORT, "%s: %d %s", url, rc, err);
	cr_assert_neq(strstr(err, says), NULL, "the error does not say '%s': %s", says, err);
	cr_assert_null(strstr(err, env("TLS_PASSWORD")), "the password is in the error: %s", err);
	if (wrong)
		cr_assert_null(strstr(err, wrong), "the password is in the error: %s", err);
	ackbox_conf_destroy(c);

	declare("tls_kept");
	c = conf_for(url, lenient);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	ackbox_id id = publish(ab, "tls_kept");
	cr_assert_eq(ackbox_flush(ab, 1000), ACKBOX_ERR_TIMEOUT, "nothing can be delivered");
	cr_assert_eq(ackbox_counts_get(ab, &n, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(n.sending + n.retrying, 1, "the message waits");
	cr_assert_eq(n.failed, 0, "a refused connection burns no attempt");
	ackbox_destroy(ab);

	c = conf_for(env("AMQPS_URL"), right);
	cr_assert_eq(ackbox_new(&ab, c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ackbox_flush(ab, 30000 * TU_SLOW), 0, "delivered once the settings are right");
	ackbox_destroy(ab);
	cr_assert_eq(drain_matching("tls_kept", &id, 1, &total), 1);
	no_password_logged(wrong);
}

Test(amqp_tls, wrong_password_is_refused_naming_the_cause)
{
	char url[512];
	url_as(url, sizeof(url), env("TLS_USER"), "Wr0ngPassw0rd", "localhost");
	refused_then_delivered(url, env("TLS_CA"), "403 ACCESS_REFUSED", "Wr0ngPassw0rd");
}

Test(amqp_tls, unknown_ca_is_refused_naming_the_cause)
{
	refused_then_delivered(env("AMQPS_URL"), env("TLS_OTHER_CA"),
	                       "not signed by the CA in amqp.cacert", NULL);
}

Test(amqp_tls, wrong_host_name_is_refused_naming_the_cause)
{
	char url[512];
	url_as(url, sizeof(url), env("TLS_USER"), env("TLS_PASSWORD"), "127.0.0.1");
	refused_then_delivered(url, env("TLS_CA"), "does not name the host", NULL);
}

#ifdef ACKBOX_CLI
/* Runs the CLI with args (a shell command line after the binary); its stdout
 * and stderr go to DIR/out and DIR/err. Returns its exit code. */
static int cli(const char *args)
{
	char cmd[4096];
	snprintf(cmd, sizeof(cmd), "'%s' %s >'%s/out' 2>'%s/err' </dev/null", ACKBOX_CLI, args, dir,
	         dir);
	int st = system(cmd);
	cr_assert(WIFEXITED(st), "%s", cmd);
	return WEXITSTATUS(st);
}

static char *slurp(const char *name)
{
	char path[1200];
	static char buf[65536];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "r");
	cr_assert_not_null(f, "%s", path);
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/*
 * The CLI: a refused login exits 4 with one line naming the cause and not
 * the password; `list --json` of what waits shows no password either; the
 * URL can come from an environment variable (not on the command line), and
 * then the message is delivered.
 */
Test(amqp_tls, cli_exits_4_without_printing_the_password)
{
	char args[3000], url[512];
	url_as(url, sizeof(url), env("TLS_USER"), "Wr0ngPassw0rd", "localhost");
	declare("tls_cli");
	snprintf(args, sizeof(args),
	         "publish --store 'sqlite://%s/cli.db' --transport '%s' --topic tls_cli --count 3 "
	         "--set amqp.cacert='%s' --set log.level=debug",
	         dir, url, env("TLS_CA"));
	cr_assert_eq(cli(args), 4, "stderr: %s", slurp("err"));
	char *err = slurp("err");
	cr_assert_neq(strstr(err, "ACCESS_REFUSED"), NULL, "%s", err);
	cr_assert_null(strstr(err, "Wr0ngPassw0rd"), "the password is printed: %s", err);

	/* the URL from the environment: neither `ps` nor the error shows it */
	setenv("ACKBOX_TEST_AMQPS_URL", env("AMQPS_URL"), 1);
	snprintf(args, sizeof(args),
	         "publish --store 'sqlite://%s/cli2.db' --transport env:ACKBOX_TEST_AMQPS_URL "
	         "--topic tls_cli --count 3 --set amqp.cacert='%s'",
	         dir, env("TLS_CA"));
	cr_assert_eq(cli(args), 0, "stderr: %s", slurp("err"));
	cr_assert_neq(strstr(slurp("out"), "acked=3"), NULL, "%s", slurp("out"));
	cr_assert_null(strstr(slurp("err"), env("TLS_PASSWORD")), "%s", slurp("err"));
	size_t total;
	drain_matching("tls_cli", NULL, 0, &total);
	cr_assert_eq(total, 3);

	/* a message kept by a relay the broker refuses: --json shows no password */
	const char *kv[] = {"amqp.cacert", env("TLS_CA"), NULL};
	ackbox_conf *c = conf_for(url, kv);
	ackbox *ab;
	char e[512];
	cr_assert_eq(ackbox_new(&ab, c, e, sizeof(e)), 0, "%s", e);
	publish(ab, "tls_cli");
	ackbox_destroy(ab);
	snprintf(args, sizeof(args), "list --store 'sqlite://%s/outbox.db' --json", dir);
	cr_assert_eq(cli(args), 0, "stderr: %s", slurp("err"));
	char *out = slurp("out");
	cr_assert_neq(strstr(out, "tls_cli"), NULL, "%s", out);
	cr_assert_null(strstr(out, "Wr0ngPassw0rd"), "%s", out);
	cr_assert_null(strstr(out, env("TLS_PASSWORD")), "%s", out);
}
#endif
