/* An alternate signal stack survives a restore: sigaltstack() reports the
 * same stack, and a signal whose handler was installed with SA_ONSTACK runs
 * on it (a local of the handler lies inside it, and the handler sees
 * SS_ONSTACK). */
#define CKPT_KIND "sigaltstack"
#include "ckpt.h"

#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>

#define ALT_SIZE (64 * 1024)

static volatile sig_atomic_t ran;
static volatile uintptr_t handler_local;
static volatile int handler_flags;

static void on_usr1(int sig) {
    volatile char local = (char)sig;
    stack_t cur;
    handler_local = (uintptr_t)&local;
    handler_flags = sigaltstack(NULL, &cur) == 0 ? cur.ss_flags : -1;
    ran++;
}

static void expect_on_alt_stack(const char *when, void *sp) {
    int before = ran;
    SYS(raise(SIGUSR1));
    double deadline = ckpt_now() + 5;
    while (ran == before && ckpt_now() < deadline)
        ckpt_sleep_ms(1);
    CHECK(ran == before + 1, "%s: SIGUSR1 handler: expected to run once, ran %d times", when,
          ran - before);
    uintptr_t lo = (uintptr_t)sp, hi = lo + ALT_SIZE;
    CHECK(handler_local >= lo && handler_local < hi,
          "%s: the SA_ONSTACK handler's local at %#lx: expected inside the alternate stack "
          "%#lx-%#lx",
          when, (unsigned long)handler_local, (unsigned long)lo, (unsigned long)hi);
    CHECK(handler_flags == SS_ONSTACK,
          "%s: sigaltstack() inside the handler: expected ss_flags SS_ONSTACK (%d), got %d", when,
          SS_ONSTACK, handler_flags);
}

int main(void) {
    void *sp = mmap(NULL, ALT_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(sp != MAP_FAILED, "mmap the alternate stack: %s", strerror(errno));
    stack_t ss = {.ss_sp = sp, .ss_size = ALT_SIZE, .ss_flags = 0};
    SYS(sigaltstack(&ss, NULL));

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_ONSTACK | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    SYS(sigaction(SIGUSR1, &sa, NULL));
    expect_on_alt_stack("before the checkpoint", sp);

    ckpt_ready_then_wait_go();

    stack_t cur;
    SYS(sigaltstack(NULL, &cur));
    CHECK(cur.ss_sp == sp && cur.ss_size == ALT_SIZE,
          "sigaltstack(): expected %p size %d, got %p size %zu", sp, ALT_SIZE, cur.ss_sp,
          cur.ss_size);
    CHECK(cur.ss_flags == 0, "sigaltstack(): expected ss_flags 0 (enabled, not on it), got %d",
          cur.ss_flags);
    struct sigaction now;
    SYS(sigaction(SIGUSR1, NULL, &now));
    CHECK(now.sa_flags & SA_ONSTACK, "SIGUSR1: expected SA_ONSTACK, sa_flags %#x", now.sa_flags);
    expect_on_alt_stack("after the restore", sp);
    ckpt_ok();
}
