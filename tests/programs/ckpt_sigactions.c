/* Signal dispositions and the signal mask survive a restore. Handlers with
 * their own sa_mask and flags (SA_RESTART, SA_SIGINFO, SA_NODEFER,
 * SA_RESETHAND, SA_NOCLDSTOP), an ignored signal, an explicit default and a
 * real-time signal; the main thread's blocked set. After the restore
 * sigaction(sig, NULL, &old) and sigprocmask report what they did before,
 * and the handlers run with their masks; SA_RESETHAND resets on delivery. */
#define CKPT_KIND "sigactions"
#include "ckpt.h"

#include <signal.h>

static volatile sig_atomic_t plain_runs, info_runs, plain_saw_mask, info_code;

static void plain(int sig) {
    sigset_t cur;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    if (sig == SIGUSR1)
        plain_saw_mask = sigismember(&cur, SIGUSR2) == 1 && sigismember(&cur, SIGTERM) == 1;
    plain_runs++;
}

static void with_info(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    info_code = si->si_code;
    info_runs++;
}

/* Wait, at most 5 s, until `*count` reaches `n`. */
static void await(volatile sig_atomic_t *count, int n) {
    double deadline = ckpt_now() + 5;
    while (*count < n && ckpt_now() < deadline)
        ckpt_sleep_ms(1);
}

struct disposition {
    int sig;
    const char *name;
    int flags;
    int mask[3];
};

static struct disposition table[] = {
    {SIGUSR1, "SIGUSR1", SA_RESTART, {SIGUSR2, SIGTERM, 0}},
    {SIGUSR2, "SIGUSR2", SA_SIGINFO | SA_NODEFER, {SIGINT, 0, 0}},
    {SIGTERM, "SIGTERM", SA_RESETHAND, {0, 0, 0}},
    {SIGCHLD, "SIGCHLD", SA_NOCLDSTOP | SA_RESTART, {SIGHUP, SIGALRM, 0}},
    {0, "SIGRTMIN+3", SA_SIGINFO | SA_RESTART, {SIGUSR1, 0, 0}},
};
#define NTABLE (sizeof table / sizeof *table)

static struct sigaction before[NTABLE], ign_before, dfl_before;
static sigset_t mask_before;

static void install(void) {
    table[NTABLE - 1].sig = SIGRTMIN + 3;
    for (size_t i = 0; i < NTABLE; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sigemptyset(&sa.sa_mask);
        for (int j = 0; j < 3 && table[i].mask[j]; j++)
            sigaddset(&sa.sa_mask, table[i].mask[j]);
        sa.sa_flags = table[i].flags;
        if (table[i].flags & SA_SIGINFO)
            sa.sa_sigaction = with_info;
        else
            sa.sa_handler = plain;
        SYS(sigaction(table[i].sig, &sa, NULL));
        SYS(sigaction(table[i].sig, NULL, &before[i]));
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    SYS(sigaction(SIGHUP, &sa, NULL));
    SYS(sigaction(SIGHUP, NULL, &ign_before));
    sa.sa_handler = SIG_DFL;
    SYS(sigaction(SIGINT, &sa, NULL));
    SYS(sigaction(SIGINT, NULL, &dfl_before));

    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGQUIT);
    sigaddset(&block, SIGPIPE);
    sigaddset(&block, SIGRTMIN + 5);
    SYS(sigprocmask(SIG_BLOCK, &block, NULL));
    SYS(sigprocmask(SIG_BLOCK, NULL, &mask_before));
}

static void expect_same_set(const char *what, const sigset_t *want, const sigset_t *got) {
    for (int s = 1; s < NSIG; s++) {
        if (s == 32 || s == 33)
            continue; /* glibc's own */
        CHECK(sigismember(want, s) == sigismember(got, s), "%s: signal %d: expected %s, got %s",
              what, s, sigismember(want, s) ? "in the set" : "not in the set",
              sigismember(got, s) ? "in the set" : "not in the set");
    }
}

static void expect_same(const char *name, const struct sigaction *want) {
    struct sigaction got;
    int sig = 0;
    for (size_t i = 0; i < NTABLE; i++)
        if (strcmp(table[i].name, name) == 0)
            sig = table[i].sig;
    if (strcmp(name, "SIGHUP") == 0)
        sig = SIGHUP;
    if (strcmp(name, "SIGINT") == 0)
        sig = SIGINT;
    SYS(sigaction(sig, NULL, &got));
    CHECK((void *)got.sa_handler == (void *)want->sa_handler, "%s: handler: expected %p, got %p",
          name, (void *)want->sa_handler, (void *)got.sa_handler);
    CHECK(got.sa_flags == want->sa_flags, "%s: sa_flags: expected %#x, got %#x", name,
          want->sa_flags, got.sa_flags);
    char what[64];
    snprintf(what, sizeof what, "%s: sa_mask", name);
    expect_same_set(what, &want->sa_mask, &got.sa_mask);
}

int main(void) {
    install();
    for (size_t i = 0; i < NTABLE; i++) {
        int want = table[i].flags;
        CHECK((before[i].sa_flags & want) == want, "%s: sa_flags %#x lacks %#x", table[i].name,
              before[i].sa_flags, want);
        for (int j = 0; j < 3 && table[i].mask[j]; j++)
            CHECK(sigismember(&before[i].sa_mask, table[i].mask[j]) == 1,
                  "%s: sa_mask lacks signal %d", table[i].name, table[i].mask[j]);
    }
    CHECK(ign_before.sa_handler == SIG_IGN, "SIGHUP: expected SIG_IGN");
    CHECK(sigismember(&mask_before, SIGQUIT) == 1 && sigismember(&mask_before, SIGPIPE) == 1 &&
              sigismember(&mask_before, SIGRTMIN + 5) == 1,
          "signal mask: expected SIGQUIT, SIGPIPE and SIGRTMIN+5 blocked");

    ckpt_ready_then_wait_go();

    for (size_t i = 0; i < NTABLE; i++)
        expect_same(table[i].name, &before[i]);
    expect_same("SIGHUP", &ign_before);
    expect_same("SIGINT", &dfl_before);
    sigset_t mask;
    SYS(sigprocmask(SIG_BLOCK, NULL, &mask));
    expect_same_set("the main thread's signal mask", &mask_before, &mask);

    SYS(raise(SIGUSR1));
    await(&plain_runs, 1);
    CHECK(plain_runs == 1, "SIGUSR1: expected its handler to run once, ran %d times", plain_runs);
    CHECK(plain_saw_mask, "SIGUSR1's handler: expected SIGUSR2 and SIGTERM blocked while it runs");
    SYS(raise(SIGUSR2));
    await(&info_runs, 1);
    CHECK(info_runs == 1, "SIGUSR2: expected its SA_SIGINFO handler to run once, ran %d times",
          info_runs);
    CHECK(info_code == SI_TKILL, "SIGUSR2 from raise(): expected si_code SI_TKILL (%d), got %d",
          SI_TKILL, info_code);
    SYS(raise(SIGHUP));
    SYS(raise(SIGTERM));
    await(&plain_runs, 2);
    CHECK(plain_runs == 2, "SIGTERM: expected its handler to run, ran %d times in all", plain_runs);
    struct sigaction term;
    SYS(sigaction(SIGTERM, NULL, &term));
    CHECK(term.sa_handler == SIG_DFL, "SIGTERM with SA_RESETHAND, once delivered: expected SIG_DFL");
    ckpt_ok();
}
