/* An eventfd and an epoll set survive a restore. The eventfd holds 5 and is
 * in the epoll set with a magic data.u64; an empty pipe is in the set too,
 * with another. After the restore epoll_wait reports exactly the eventfd with
 * its magic, a read gives 5, and the pipe is reported once written to. A
 * semaphore-mode eventfd holding 3 gives three reads of 1. */
#define CKPT_KIND "eventfd_epoll"
#include "ckpt.h"

#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#define EVENT_MAGIC 0xf00dfacecafe1234ull
#define PIPE_MAGIC 0x0123456789abcdefull

static int wait_events(int ep, struct epoll_event *evs, int max, int timeout_ms) {
    int n;
    do
        n = epoll_wait(ep, evs, max, timeout_ms);
    while (n == -1 && errno == EINTR);
    if (n == -1)
        fail("epoll_wait: %s", strerror(errno));
    return n;
}

int main(void) {
    int efd = (int)SYS(eventfd(0, EFD_NONBLOCK));
    uint64_t v = 2;
    CHECK(write(efd, &v, sizeof v) == sizeof v, "write eventfd");
    v = 3;
    CHECK(write(efd, &v, sizeof v) == sizeof v, "write eventfd");

    int sem = (int)SYS(eventfd(3, EFD_NONBLOCK | EFD_SEMAPHORE));

    int pfd[2];
    SYS(pipe(pfd));

    int ep = (int)SYS(epoll_create1(EPOLL_CLOEXEC));
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = EVENT_MAGIC};
    SYS(epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev));
    ev.data.u64 = PIPE_MAGIC;
    SYS(epoll_ctl(ep, EPOLL_CTL_ADD, pfd[0], &ev));

    ckpt_ready_then_wait_go();

    struct epoll_event evs[8];
    int n = wait_events(ep, evs, 8, 5000);
    CHECK(n == 1, "epoll_wait: expected 1 ready descriptor (the eventfd), got %d", n);
    CHECK(evs[0].data.u64 == EVENT_MAGIC, "epoll_wait: expected data.u64 %#llx, got %#llx",
          EVENT_MAGIC, (unsigned long long)evs[0].data.u64);
    CHECK(evs[0].events == EPOLLIN, "epoll_wait: expected events EPOLLIN, got %#x", evs[0].events);

    CHECK(read(efd, &v, sizeof v) == sizeof v, "read eventfd: %s", strerror(errno));
    CHECK(v == 5, "eventfd counter: expected 5, got %llu", (unsigned long long)v);
    CHECK(read(efd, &v, sizeof v) == -1 && errno == EAGAIN,
          "eventfd after reading its counter: expected EAGAIN");
    n = wait_events(ep, evs, 8, 0);
    CHECK(n == 0, "epoll_wait with nothing ready: expected 0, got %d", n);

    CHECK(write(pfd[1], "x", 1) == 1, "write pipe");
    n = wait_events(ep, evs, 8, 5000);
    CHECK(n == 1 && evs[0].data.u64 == PIPE_MAGIC,
          "epoll_wait after writing the pipe: expected 1 event with %#llx, got %d (first %#llx)",
          PIPE_MAGIC, n, n > 0 ? (unsigned long long)evs[0].data.u64 : 0ull);

    for (int i = 0; i < 3; i++) {
        CHECK(read(sem, &v, sizeof v) == sizeof v, "read semaphore eventfd (%d of 3): %s", i + 1,
              strerror(errno));
        CHECK(v == 1, "semaphore eventfd: expected 1, got %llu", (unsigned long long)v);
    }
    CHECK(read(sem, &v, sizeof v) == -1 && errno == EAGAIN,
          "semaphore eventfd after three reads: expected EAGAIN");
    ckpt_ok();
}
