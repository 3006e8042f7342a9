/*
 * crshim.h - the part of Criterion's API the tests use, for the
 * ThreadSanitizer pass: Criterion 2.4 cannot start under TSan (its
 * inheritable arena cannot be mapped beside TSan's shadow memory;
 * Snaipe/Criterion issue #274, open). Each test runs in a forked child, as
 * under Criterion, with its suite's .init and .fini; an assertion prints
 * where and why, runs .fini and fails the test. A skip is a failure.
 */
#ifndef ACKBOX_CRSHIM_H
#define ACKBOX_CRSHIM_H

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

struct crshim_suite {
	const char *name;
	void (*init)(void);
	void (*fini)(void);
	double timeout;
	bool disabled;
};

struct crshim_test {
	const char *suite, *name;
	void (*fn)(void);
	void (*init)(void);
	void (*fini)(void);
	double timeout;
	bool disabled;
};

void crshim_register_test(struct crshim_test *t);
void crshim_register_suite(struct crshim_suite *s);
__attribute__((noreturn, format(printf, 4, 5))) void crshim_fail(const char *file, int line,
                                                                  const char *what,
                                                                  const char *fmt, ...);
__attribute__((format(printf, 1, 2))) void crshim_log(const char *fmt, ...);
/* Runs the registered tests (what main does); exit status. */
int crshim_run(int argc, char **argv);

#define TestSuite(s_, ...)                                                                         \
	static struct crshim_suite crshim_s_##s_ = {.name = #s_, __VA_ARGS__};                     \
	__attribute__((constructor)) static void crshim_rs_##s_(void)                              \
	{                                                                                          \
		crshim_register_suite(&crshim_s_##s_);                                             \
	}

#define Test(s_, n_, ...)                                                                          \
	static void crshim_f_##s_##_##n_(void);                                                    \
	static struct crshim_test crshim_t_##s_##_##n_ = {                                         \
		.suite = #s_, .name = #n_, .fn = crshim_f_##s_##_##n_, __VA_ARGS__};               \
	__attribute__((constructor)) static void crshim_r_##s_##_##n_(void)                        \
	{                                                                                          \
		crshim_register_test(&crshim_t_##s_##_##n_);                                       \
	}                                                                                          \
	static void crshim_f_##s_##_##n_(void)

#define CRSHIM_CHECK(cond, what, ...)                                                              \
	do {                                                                                       \
		if (!(cond))                                                                       \
			crshim_fail(__FILE__, __LINE__, what, " " __VA_ARGS__);                     \
	} while (0)

#define cr_assert(cond, ...) CRSHIM_CHECK(cond, #cond, __VA_ARGS__)
#define cr_assert_not(cond, ...) CRSHIM_CHECK(!(cond), "!(" #cond ")", __VA_ARGS__)
#define cr_assert_eq(a, b, ...) CRSHIM_CHECK((a) == (b), #a " == " #b, __VA_ARGS__)
#define cr_assert_neq(a, b, ...) CRSHIM_CHECK((a) != (b), #a " != " #b, __VA_ARGS__)
#define cr_assert_lt(a, b, ...) CRSHIM_CHECK((a) < (b), #a " < " #b, __VA_ARGS__)
#define cr_assert_leq(a, b, ...) CRSHIM_CHECK((a) <= (b), #a " <= " #b, __VA_ARGS__)
#define cr_assert_gt(a, b, ...) CRSHIM_CHECK((a) > (b), #a " > " #b, __VA_ARGS__)
#define cr_assert_geq(a, b, ...) CRSHIM_CHECK((a) >= (b), #a " >= " #b, __VA_ARGS__)
#define cr_assert_null(p, ...) CRSHIM_CHECK((p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_assert_not_null(p, ...) CRSHIM_CHECK((p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...)                                                                \
	CRSHIM_CHECK(strcmp((a), (b)) == 0, #a " equals " #b, __VA_ARGS__)
#define cr_assert_fail(...) crshim_fail(__FILE__, __LINE__, "cr_assert_fail", " " __VA_ARGS__)
#define cr_skip_test(...) crshim_fail(__FILE__, __LINE__, "skipped (a skip is a failure)", " " __VA_ARGS__)
#define cr_log_info(...) crshim_log(__VA_ARGS__)

#endif
