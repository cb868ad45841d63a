/* Timer descriptors survive a restore: a periodic CLOCK_MONOTONIC timerfd
 * every 30 ms gives expirations on every read after the restore, and an
 * O_NONBLOCK CLOCK_REALTIME timerfd armed an hour ahead is still armed (a
 * little less than before), still non-blocking, and has not expired. */
#define CKPT_KIND "timerfd"
#include "ckpt.h"

#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <sys/timerfd.h>

#define INTERVAL_NS 30000000L

static uint64_t read_expirations(const char *what, int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int ready;
    do
        ready = poll(&p, 1, 5000);
    while (ready == -1 && errno == EINTR);
    CHECK(ready == 1, "%s: expected an expiration within 5 s, poll gave %d (%s)", what, ready,
          ready < 0 ? strerror(errno) : "timeout");
    uint64_t n = 0;
    CHECK(read(fd, &n, sizeof n) == sizeof n, "%s: read: %s", what, strerror(errno));
    CHECK(n >= 1, "%s: expected at least 1 expiration, got %llu", what, (unsigned long long)n);
    return n;
}

int main(void) {
    int periodic = (int)SYS(timerfd_create(CLOCK_MONOTONIC, 0));
    struct itimerspec its = {{0, INTERVAL_NS}, {0, INTERVAL_NS}};
    SYS(timerfd_settime(periodic, 0, &its, NULL));
    read_expirations("periodic timerfd before the checkpoint", periodic);

    int later = (int)SYS(timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC));
    struct itimerspec hour = {{0, 0}, {3600, 0}};
    SYS(timerfd_settime(later, 0, &hour, NULL));
    struct itimerspec before;
    SYS(timerfd_gettime(later, &before));

    ckpt_ready_then_wait_go();

    struct itimerspec cur;
    SYS(timerfd_gettime(periodic, &cur));
    CHECK(cur.it_interval.tv_sec == 0 && cur.it_interval.tv_nsec == INTERVAL_NS,
          "periodic timerfd: interval: expected 0.%09ld s, got %ld.%09ld s", INTERVAL_NS,
          (long)cur.it_interval.tv_sec, cur.it_interval.tv_nsec);
    for (int i = 0; i < 3; i++)
        read_expirations("periodic timerfd after the restore", periodic);

    SYS(timerfd_gettime(later, &cur));
    CHECK(cur.it_value.tv_sec > 3000 && (cur.it_value.tv_sec < before.it_value.tv_sec ||
                                         (cur.it_value.tv_sec == before.it_value.tv_sec &&
                                          cur.it_value.tv_nsec < before.it_value.tv_nsec)),
          "timerfd armed an hour ahead: expected a little less than %ld s left, got %ld.%09ld s",
          (long)before.it_value.tv_sec, (long)cur.it_value.tv_sec, cur.it_value.tv_nsec);
    int fl = (int)SYS(fcntl(later, F_GETFL));
    CHECK(fl & O_NONBLOCK, "timerfd created TFD_NONBLOCK: expected O_NONBLOCK, F_GETFL 0x%x", fl);
    CHECK(SYS(fcntl(later, F_GETFD)) & FD_CLOEXEC, "timerfd created TFD_CLOEXEC: expected FD_CLOEXEC");
    uint64_t n;
    CHECK(read(later, &n, sizeof n) == -1 && errno == EAGAIN,
          "timerfd armed an hour ahead: expected no expiration (EAGAIN)");
    ckpt_ok();
}
