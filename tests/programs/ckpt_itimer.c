/* A periodic interval timer survives a restore: setitimer(ITIMER_REAL) every
 * 50 ms with a SIGALRM handler that counts. After the restore the interval is
 * still 50 ms, the handler is still installed and the count keeps growing. */
#define CKPT_KIND "itimer"
#include "ckpt.h"

#include <signal.h>
#include <sys/time.h>

#define INTERVAL_US 50000

static volatile sig_atomic_t alarms;

static void on_alarm(int sig) {
    (void)sig;
    alarms++;
}

/* Wait, at most `secs`, until the handler has run `n` more times. */
static void expect_alarms(const char *when, int n, double secs) {
    int start = alarms;
    double deadline = ckpt_now() + secs;
    while (alarms < start + n && ckpt_now() < deadline)
        ckpt_sleep_ms(10);
    CHECK(alarms >= start + n, "%s: expected %d more SIGALRM within %.0f s, got %d", when, n,
          secs, alarms - start);
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    SYS(sigaction(SIGALRM, &sa, NULL));
    struct itimerval it = {{0, INTERVAL_US}, {0, INTERVAL_US}};
    SYS(setitimer(ITIMER_REAL, &it, NULL));
    expect_alarms("before the checkpoint", 3, 10);

    ckpt_ready_then_wait_go();

    struct sigaction cur;
    SYS(sigaction(SIGALRM, NULL, &cur));
    CHECK(cur.sa_handler == on_alarm, "SIGALRM handler: expected %p, got %p", (void *)on_alarm,
          (void *)cur.sa_handler);
    struct itimerval now;
    SYS(getitimer(ITIMER_REAL, &now));
    CHECK(now.it_interval.tv_sec == 0 && now.it_interval.tv_usec == INTERVAL_US,
          "ITIMER_REAL interval: expected 0.%06d s, got %ld.%06ld s", INTERVAL_US,
          (long)now.it_interval.tv_sec, (long)now.it_interval.tv_usec);
    CHECK(now.it_value.tv_sec > 0 || now.it_value.tv_usec > 0,
          "ITIMER_REAL: expected armed, got a zero value");
    expect_alarms("after the restore", 5, 10);
    ckpt_ok();
}
