/* The protocol every ckpt_*.c program follows with tests/tests/checkpoint.rs.
 *
 * 1. Set up the state the program is about (define CKPT_KIND, its name,
 *    before including this file).
 * 2. ckpt_ready_then_wait_go(): print exactly "ready\n" on stdout, flush,
 *    then block in read(2) on descriptor 0 until a whole line arrives; it
 *    must be "go". The test checkpoints the program while it blocks there,
 *    and the restored program's read continues on `ferry restore`'s stdin.
 * 3. Check every piece of the state; on the first difference print
 *    "FAIL <what>: expected <x>, got <y>" and exit 1 (fail() / CHECK()).
 * 4. ckpt_ok(): print "ok KIND" and exit 0.
 *
 * Run natively (no Ferry), the test writes "go" right after "ready": every
 * check must pass when nothing was checkpointed. */
#ifndef CKPT_H
#define CKPT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef CKPT_KIND
#error "define CKPT_KIND before including ckpt.h"
#endif

__attribute__((format(printf, 1, 2), noreturn)) static void fail(const char *fmt, ...) {
    va_list ap;
    printf("FAIL ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    exit(1);
}

/* Fail with the message unless COND holds. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fail(__VA_ARGS__);                                                                     \
    } while (0)

__attribute__((unused)) static long ckpt_sys(long rc, const char *what) {
    if (rc == -1)
        fail("%s: %s", what, strerror(errno));
    return rc;
}

/* Run a call that returns -1 with errno on failure; fail naming the call. */
#define SYS(call) ckpt_sys((long)(call), #call)

/* Fail naming the call unless a pthread-style call returned 0. */
#define PT(call)                                                                                   \
    do {                                                                                           \
        int ckpt_rc_ = (call);                                                                     \
        if (ckpt_rc_ != 0)                                                                         \
            fail("%s: %s", #call, strerror(ckpt_rc_));                                             \
    } while (0)

/* Seconds on the monotonic clock. */
__attribute__((unused)) static double ckpt_now(void) {
    struct timespec t;
    SYS(clock_gettime(CLOCK_MONOTONIC, &t));
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Sleep for `ms` milliseconds, through any signal. */
__attribute__((unused)) static void ckpt_sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) == -1) {
        if (errno != EINTR)
            fail("nanosleep: %s", strerror(errno));
    }
}

/* Block in read(2) on descriptor 0 until a whole line arrives; it must be
 * `want`. */
__attribute__((unused)) static void ckpt_wait_line(const char *want) {
    char line[32];
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t r = read(0, &c, 1);
        if (r == 1) {
            if (c == '\n')
                break;
            if (n < sizeof line - 1)
                line[n++] = c;
            continue;
        }
        if (r == -1 && errno == EINTR)
            continue;
        fail("reading \"%s\" from stdin: %s", want, r == 0 ? "end of file" : strerror(errno));
    }
    line[n] = '\0';
    CHECK(strcmp(line, want) == 0, "stdin: expected \"%s\", got \"%s\"", want, line);
}

static void ckpt_ready_then_wait_go(void) {
    printf("ready\n");
    if (fflush(stdout) != 0)
        exit(1);
    ckpt_wait_line("go");
}

__attribute__((noreturn)) static void ckpt_ok(void) {
    printf("ok %s\n", CKPT_KIND);
    fflush(stdout);
    exit(0);
}

#endif
