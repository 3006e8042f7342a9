/*
 * tsan_c11threads.c - linked into test programs of the ThreadSanitizer pass
 * only. librdkafka 2.0 (Debian 12) starts its threads with C11 thrd_create
 * and locks with mtx_lock/cnd_wait; GCC 12's libtsan intercepts none of
 * them, so a librdkafka thread has no TSan state and crashes at its first
 * malloc, and TSan would not see librdkafka's locking. These definitions,
 * exported from the test program (-rdynamic), come first in the lookup
 * scope and route the C11 calls to the pthread ones, which TSan intercepts.
 * glibc's C11 types are its pthread types (thrd_t is pthread_t; mtx_t and
 * cnd_t wrap pthread_mutex_t and pthread_cond_t), as glibc's own
 * implementation of these functions assumes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <threads.h>

/* exported from the test program although the project builds with hidden visibility */
#define EXPORTED __attribute__((visibility("default")))

struct start {
	thrd_start_t fn;
	void *arg;
};

static void *trampoline(void *p)
{
	struct start s = *(struct start *)p;
	free(p);
	return (void *)(intptr_t)s.fn(s.arg);
}

static int result(int rc)
{
	return rc == 0 ? thrd_success : rc == ENOMEM || rc == EAGAIN ? thrd_nomem
	                              : rc == ETIMEDOUT            ? thrd_timedout
	                              : rc == EBUSY                ? thrd_busy
	                                                           : thrd_error;
}

EXPORTED int thrd_create(thrd_t *thr, thrd_start_t fn, void *arg)
{
	struct start *s = malloc(sizeof(*s));
	int rc;
	if (!s)
		return thrd_nomem;
	s->fn = fn;
	s->arg = arg;
	rc = pthread_create((pthread_t *)thr, NULL, trampoline, s);
	if (rc)
		free(s);
	return result(rc);
}

EXPORTED int thrd_join(thrd_t thr, int *res)
{
	void *r = NULL;
	int rc = pthread_join((pthread_t)thr, &r);
	if (rc == 0 && res)
		*res = (int)(intptr_t)r;
	return result(rc);
}

EXPORTED int thrd_detach(thrd_t thr)
{
	return result(pthread_detach((pthread_t)thr));
}

EXPORTED int mtx_init(mtx_t *m, int type)
{
	pthread_mutexattr_t a;
	int rc;
	pthread_mutexattr_init(&a);
	if (type & mtx_recursive)
		pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
	rc = pthread_mutex_init((pthread_mutex_t *)m, &a);
	pthread_mutexattr_destroy(&a);
	return result(rc);
}

EXPORTED int mtx_lock(mtx_t *m)
{
	return result(pthread_mutex_lock((pthread_mutex_t *)m));
}

EXPORTED int mtx_trylock(mtx_t *m)
{
	return result(pthread_mutex_trylock((pthread_mutex_t *)m));
}

EXPORTED int mtx_timedlock(mtx_t *restrict m, const struct timespec *restrict ts)
{
	return result(pthread_mutex_timedlock((pthread_mutex_t *)m, ts));
}

EXPORTED int mtx_unlock(mtx_t *m)
{
	return result(pthread_mutex_unlock((pthread_mutex_t *)m));
}

EXPORTED void mtx_destroy(mtx_t *m)
{
	pthread_mutex_destroy((pthread_mutex_t *)m);
}

EXPORTED int cnd_init(cnd_t *c)
{
	return result(pthread_cond_init((pthread_cond_t *)c, NULL));
}

EXPORTED int cnd_signal(cnd_t *c)
{
	return result(pthread_cond_signal((pthread_cond_t *)c));
}

EXPORTED int cnd_broadcast(cnd_t *c)
{
	return result(pthread_cond_broadcast((pthread_cond_t *)c));
}

EXPORTED int cnd_wait(cnd_t *c, mtx_t *m)
{
	return result(pthread_cond_wait((pthread_cond_t *)c, (pthread_mutex_t *)m));
}

EXPORTED int cnd_timedwait(cnd_t *restrict c, mtx_t *restrict m, const struct timespec *restrict ts)
{
	return result(pthread_cond_timedwait((pthread_cond_t *)c, (pthread_mutex_t *)m, ts));
}

EXPORTED void cnd_destroy(cnd_t *c)
{
	pthread_cond_destroy((pthread_cond_t *)c);
}
