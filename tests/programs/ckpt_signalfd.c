/* Signal descriptors and pending signals survive a restore. SIGUSR1 is
 * blocked and read through a signalfd: raised after the restore, it is read
 * from the same descriptor. SIGUSR2 is blocked and raised before the
 * checkpoint: after the restore it is still pending, and it is delivered to
 * its handler once, when unblocked. */
#define CKPT_KIND "signalfd"
#include "ckpt.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>

static volatile sig_atomic_t usr2_count;

static void on_usr2(int sig) {
    (void)sig;
    usr2_count++;
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr2;
    sigemptyset(&sa.sa_mask);
    SYS(sigaction(SIGUSR2, &sa, NULL));

    sigset_t blocked;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGUSR1);
    sigaddset(&blocked, SIGUSR2);
    SYS(sigprocmask(SIG_BLOCK, &blocked, NULL));

    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    int sfd = (int)SYS(signalfd(-1, &usr1, SFD_NONBLOCK | SFD_CLOEXEC));
    SYS(raise(SIGUSR2));

    ckpt_ready_then_wait_go();

    sigset_t pending;
    SYS(sigpending(&pending));
    CHECK(sigismember(&pending, SIGUSR2) == 1,
          "SIGUSR2, raised while blocked: expected pending, it is not");
    CHECK(sigismember(&pending, SIGUSR1) == 0, "SIGUSR1: expected not pending, it is");
    sigset_t mask;
    SYS(sigprocmask(SIG_BLOCK, NULL, &mask));
    CHECK(sigismember(&mask, SIGUSR1) == 1 && sigismember(&mask, SIGUSR2) == 1,
          "signal mask: expected SIGUSR1 and SIGUSR2 blocked");

    struct signalfd_siginfo si;
    CHECK(read(sfd, &si, sizeof si) == -1 && errno == EAGAIN,
          "signalfd with nothing pending: expected EAGAIN");
    int fl = (int)SYS(fcntl(sfd, F_GETFL));
    CHECK(fl & O_NONBLOCK, "signalfd created SFD_NONBLOCK: expected O_NONBLOCK, F_GETFL 0x%x", fl);

    SYS(raise(SIGUSR1));
    struct pollfd p = {.fd = sfd, .events = POLLIN};
    int ready;
    do
        ready = poll(&p, 1, 5000);
    while (ready == -1 && errno == EINTR);
    CHECK(ready == 1, "signalfd: expected SIGUSR1 within 5 s, poll gave %d", ready);
    ssize_t n = read(sfd, &si, sizeof si);
    CHECK(n == sizeof si, "signalfd: read: %s", n < 0 ? strerror(errno) : "short");
    CHECK(si.ssi_signo == SIGUSR1, "signalfd: expected signal %d, got %u", SIGUSR1, si.ssi_signo);
    CHECK(read(sfd, &si, sizeof si) == -1 && errno == EAGAIN,
          "signalfd after reading SIGUSR1: expected EAGAIN");
    SYS(sigpending(&pending));
    CHECK(sigismember(&pending, SIGUSR1) == 0, "SIGUSR1, read from the signalfd: still pending");

    CHECK(usr2_count == 0, "SIGUSR2 handler: expected not yet run, ran %d times", usr2_count);
    sigset_t usr2;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    SYS(sigprocmask(SIG_UNBLOCK, &usr2, NULL));
    double deadline = ckpt_now() + 5;
    while (usr2_count == 0 && ckpt_now() < deadline)
        ckpt_sleep_ms(5);
    CHECK(usr2_count == 1, "pending SIGUSR2, unblocked: expected its handler to run once, ran %d times",
          usr2_count);
    ckpt_ok();
}
