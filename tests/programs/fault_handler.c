/* A SIGSEGV handler installed with every signal in its mask (as the JVM
 * does) makes raw system calls while it runs, then recovers with
 * siglongjmp. Prints a random number before and after. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

static sigjmp_buf env;

static void on_segv(int sig, siginfo_t *si, void *uc) {
    (void)si;
    (void)uc;
    unsigned int r = 0;
    syscall(SYS_getrandom, &r, sizeof r, 0);
    char line[64];
    int n = snprintf(line, sizeof line, "handler %d random %u\n", sig, r);
    syscall(SYS_write, 1, line, n);
    siglongjmp(env, 1);
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigfillset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    unsigned int r;
    if (getrandom(&r, sizeof r, 0) != sizeof r) return 1;
    printf("before %u\n", r);
    fflush(stdout);
    for (int i = 0; i < 3; i++) {
        if (sigsetjmp(env, 1) == 0) {
            *(volatile int *)0 = i;
        }
        printf("recovered %d\n", i);
        fflush(stdout);
    }
    return 0;
}
