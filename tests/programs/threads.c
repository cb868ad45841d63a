/* Four threads contend on one mutex and two condition variables: two producers
 * fill a bounded queue, two consumers empty it. Every time a thread holds the
 * mutex it bumps a shared counter and appends its id to a trace, so the trace
 * is the interleaving the scheduler chose. Data-race-free. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>

#define ITEMS_PER_PRODUCER 400
#define QUEUE_CAP 4
#define TRACE_MAX 8192

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_full = PTHREAD_COND_INITIALIZER;
static pthread_cond_t not_empty = PTHREAD_COND_INITIALIZER;
static int queue[QUEUE_CAP];
static int q_head, q_len, producers_left = 2;
static long counter;
static char trace[TRACE_MAX];
static int trace_len;
static long consumed_sum;

/* Called with mu held. */
static void note(int id) {
    counter++;
    if (trace_len < TRACE_MAX)
        trace[trace_len++] = (char)('0' + id);
}

static void spin(int n) {
    volatile int x = 0;
    for (int i = 0; i < n; i++)
        x += i;
}

static void *producer(void *arg) {
    int id = (int)(intptr_t)arg;
    for (int i = 0; i < ITEMS_PER_PRODUCER; i++) {
        spin(200);
        pthread_mutex_lock(&mu);
        while (q_len == QUEUE_CAP)
            pthread_cond_wait(&not_full, &mu);
        queue[(q_head + q_len) % QUEUE_CAP] = id * 100000 + i;
        q_len++;
        note(id);
        pthread_cond_signal(&not_empty);
        pthread_mutex_unlock(&mu);
    }
    pthread_mutex_lock(&mu);
    producers_left--;
    note(id);
    pthread_cond_broadcast(&not_empty);
    pthread_mutex_unlock(&mu);
    return (void *)(intptr_t)(id * 1000 + ITEMS_PER_PRODUCER);
}

static void *consumer(void *arg) {
    int id = (int)(intptr_t)arg;
    long taken = 0;
    for (;;) {
        pthread_mutex_lock(&mu);
        while (q_len == 0 && producers_left > 0)
            pthread_cond_wait(&not_empty, &mu);
        if (q_len == 0) {
            note(id);
            pthread_mutex_unlock(&mu);
            break;
        }
        int v = queue[q_head];
        q_head = (q_head + 1) % QUEUE_CAP;
        q_len--;
        consumed_sum += v;
        note(id);
        pthread_cond_signal(&not_full);
        pthread_mutex_unlock(&mu);
        taken++;
        spin(300);
        if ((taken & 15) == 0)
            sched_yield();
    }
    return (void *)(intptr_t)(id * 1000 + taken);
}

int main(void) {
    pthread_t t[4];
    pthread_create(&t[0], NULL, producer, (void *)(intptr_t)0);
    pthread_create(&t[1], NULL, consumer, (void *)(intptr_t)1);
    pthread_create(&t[2], NULL, producer, (void *)(intptr_t)2);
    pthread_create(&t[3], NULL, consumer, (void *)(intptr_t)3);
    for (int i = 0; i < 4; i++) {
        void *ret = NULL;
        int rc = pthread_join(t[i], &ret);
        printf("join %d rc=%d ret=%ld\n", i, rc, (long)(intptr_t)ret);
    }
    printf("counter %ld\n", counter);
    printf("consumed_sum %ld\n", consumed_sum);
    printf("trace_len %d\n", trace_len);
    for (int i = 0; i < trace_len; i += 80)
        printf("trace %.*s\n", trace_len - i < 80 ? trace_len - i : 80, trace + i);
    return 0;
}
