/* What Syscall User Dispatch costs by itself: a getppid() loop with
 * dispatch off, then on with a selector that never dispatches (ALLOW), so
 * no SIGSYS is ever raised. The difference is the kernel's slower syscall
 * entry for a thread with dispatch on, paid by every system call under the
 * shim.   gcc -O2 scripts/bench/sud-floor.c -o /tmp/sud-floor && /tmp/sud-floor */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static volatile char sel = 0; /* ALLOW: nothing is ever dispatched */
static double bench(void) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < 2000000; i++) syscall(SYS_getppid);
    clock_gettime(CLOCK_MONOTONIC, &b);
    return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 2e6;
}
int main(void) {
    double off1 = bench(), off2 = bench();
    prctl(59, 1, 0, 0, &sel);
    double on1 = bench(), on2 = bench();
    printf("getppid: dispatch off %.1f %.1f ns, on (selector ALLOW) %.1f %.1f ns\n", off1, off2, on1, on2);
    return 0;
}
