/* Threads survive a restore, blocked where they were. The main thread holds
 * a mutex three threads are waiting on; a fourth waits on a condition
 * variable. After the restore the main thread unlocks; each thread takes the
 * mutex in turn, finds gettid(), pthread_self() and the data on its stack as
 * they were, and the waiter is woken by a broadcast. All four are joined,
 * with a time limit. */
#define CKPT_KIND "mutex_threads"
#include "ckpt.h"

#include <pthread.h>
#include <stdatomic.h>

#define LOCKERS 3

struct worker {
    int index;
    pthread_t self;
    pid_t tid;
    int ok;
    char why[160];
};

static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t cv_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int released;
static atomic_int started;
static int passes;
static struct worker workers[LOCKERS + 1];

/* What a worker checks once it runs again. */
static void recheck(struct worker *w, const unsigned char *stack_data, size_t len) {
    w->ok = 1;
    if (gettid() != w->tid) {
        snprintf(w->why, sizeof w->why, "thread %d: gettid(): expected %d, got %d", w->index,
                 w->tid, gettid());
        w->ok = 0;
    } else if (!pthread_equal(pthread_self(), w->self)) {
        snprintf(w->why, sizeof w->why, "thread %d: pthread_self() changed", w->index);
        w->ok = 0;
    }
    for (size_t i = 0; w->ok && i < len; i++)
        if (stack_data[i] != (unsigned char)(w->index * 37 + i)) {
            snprintf(w->why, sizeof w->why, "thread %d: stack byte %zu: expected %d, got %d",
                     w->index, i, (unsigned char)(w->index * 37 + i), stack_data[i]);
            w->ok = 0;
        }
}

static void *locker(void *arg) {
    struct worker *w = arg;
    unsigned char stack_data[64];
    for (size_t i = 0; i < sizeof stack_data; i++)
        stack_data[i] = (unsigned char)(w->index * 37 + i);
    w->tid = gettid();
    w->self = pthread_self();
    atomic_fetch_add(&started, 1);
    pthread_mutex_lock(&held);
    passes++;
    recheck(w, stack_data, sizeof stack_data);
    pthread_mutex_unlock(&held);
    return NULL;
}

static void *waiter(void *arg) {
    struct worker *w = arg;
    unsigned char stack_data[64];
    for (size_t i = 0; i < sizeof stack_data; i++)
        stack_data[i] = (unsigned char)(w->index * 37 + i);
    w->tid = gettid();
    w->self = pthread_self();
    pthread_mutex_lock(&cv_lock);
    atomic_fetch_add(&started, 1);
    while (!released)
        pthread_cond_wait(&cv, &cv_lock);
    recheck(w, stack_data, sizeof stack_data);
    pthread_mutex_unlock(&cv_lock);
    return NULL;
}

int main(void) {
    pid_t pid = getpid();
    pthread_t main_self = pthread_self();
    PT(pthread_mutex_lock(&held));
    pthread_t threads[LOCKERS + 1];
    for (int i = 0; i <= LOCKERS; i++) {
        workers[i].index = i;
        PT(pthread_create(&threads[i], NULL, i < LOCKERS ? locker : waiter, &workers[i]));
    }
    double deadline = ckpt_now() + 10;
    while (atomic_load(&started) < LOCKERS + 1 && ckpt_now() < deadline)
        ckpt_sleep_ms(5);
    CHECK(atomic_load(&started) == LOCKERS + 1, "expected %d threads started within 10 s, got %d",
          LOCKERS + 1, atomic_load(&started));
    /* Give them time to reach pthread_mutex_lock and pthread_cond_wait. */
    ckpt_sleep_ms(200);
    for (int i = 0; i <= LOCKERS; i++)
        CHECK(workers[i].tid != pid && workers[i].tid > 0, "thread %d: gettid() gave %d", i,
              workers[i].tid);

    ckpt_ready_then_wait_go();

    CHECK(getpid() == pid && gettid() == pid, "main thread: expected pid and tid %d, got %d and %d",
          pid, getpid(), gettid());
    CHECK(pthread_equal(pthread_self(), main_self), "main thread: pthread_self() changed");
    CHECK(passes == 0, "expected no thread past the held mutex yet, %d are", passes);
    PT(pthread_mutex_unlock(&held));
    PT(pthread_mutex_lock(&cv_lock));
    released = 1;
    PT(pthread_cond_broadcast(&cv));
    PT(pthread_mutex_unlock(&cv_lock));

    for (int i = 0; i <= LOCKERS; i++) {
        struct timespec limit;
        SYS(clock_gettime(CLOCK_REALTIME, &limit));
        limit.tv_sec += 10;
        int rc = pthread_timedjoin_np(threads[i], NULL, &limit);
        CHECK(rc == 0, "thread %d (%s): not joined within 10 s: %s", i,
              i < LOCKERS ? "waiting on the mutex" : "waiting on the condition variable",
              strerror(rc));
        CHECK(workers[i].ok, "%s", workers[i].why);
    }
    PT(pthread_mutex_lock(&held));
    CHECK(passes == LOCKERS, "expected %d threads through the mutex, got %d", LOCKERS, passes);
    PT(pthread_mutex_unlock(&held));
    ckpt_ok();
}
