/* POSIX timers survive a restore under the same ids: a periodic
 * CLOCK_MONOTONIC timer every 50 ms signalling SIGRTMIN with a value, and a
 * second, disarmed one. After the restore timer_gettime on each id gives what
 * it gave before, the signals keep coming with the timer's value, and the
 * second timer can be armed and fires. */
#define CKPT_KIND "posix_timer"
#include "ckpt.h"

#include <signal.h>

#define INTERVAL_NS 50000000L
#define MAGIC 0x5eed

static volatile sig_atomic_t fired, bad_value, fired_second;

static void on_timer(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    if (si->si_code != SI_TIMER)
        return;
    if (si->si_value.sival_int == MAGIC)
        fired++;
    else if (si->si_value.sival_int == MAGIC + 1)
        fired_second++;
    else
        bad_value = si->si_value.sival_int;
}

static void expect_count(const char *what, volatile sig_atomic_t *count, int n) {
    int start = *count;
    double deadline = ckpt_now() + 10;
    while (*count < start + n && ckpt_now() < deadline)
        ckpt_sleep_ms(10);
    CHECK(*count >= start + n, "%s: expected %d more timer signals within 10 s, got %d", what, n,
          *count - start);
    CHECK(bad_value == 0, "a timer signal carried %d, expected %d or %d", bad_value, MAGIC,
          MAGIC + 1);
}

static timer_t make_timer(int value) {
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGRTMIN;
    sev.sigev_value.sival_int = value;
    timer_t t;
    SYS(timer_create(CLOCK_MONOTONIC, &sev, &t));
    return t;
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_timer;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    SYS(sigaction(SIGRTMIN, &sa, NULL));

    timer_t periodic = make_timer(MAGIC);
    timer_t second = make_timer(MAGIC + 1);
    struct itimerspec its = {{0, INTERVAL_NS}, {0, INTERVAL_NS}};
    SYS(timer_settime(periodic, 0, &its, NULL));
    expect_count("before the checkpoint", &fired, 3);

    ckpt_ready_then_wait_go();

    struct itimerspec cur;
    SYS(timer_gettime(periodic, &cur));
    CHECK(cur.it_interval.tv_sec == 0 && cur.it_interval.tv_nsec == INTERVAL_NS,
          "timer_gettime on the periodic timer: interval: expected 0.%09ld s, got %ld.%09ld s",
          INTERVAL_NS, (long)cur.it_interval.tv_sec, cur.it_interval.tv_nsec);
    CHECK(cur.it_value.tv_sec > 0 || cur.it_value.tv_nsec > 0,
          "timer_gettime on the periodic timer: expected armed, got a zero value");
    SYS(timer_getoverrun(periodic));
    SYS(timer_gettime(second, &cur));
    CHECK(cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0 && cur.it_interval.tv_nsec == 0,
          "timer_gettime on the disarmed timer: expected zero, got %ld.%09ld s",
          (long)cur.it_value.tv_sec, cur.it_value.tv_nsec);
    expect_count("periodic timer after the restore", &fired, 5);

    struct itimerspec once = {{0, 0}, {0, 20000000L}};
    SYS(timer_settime(second, 0, &once, NULL));
    expect_count("second timer, armed after the restore", &fired_second, 1);
    SYS(timer_delete(second));
    SYS(timer_delete(periodic));
    ckpt_ok();
}
