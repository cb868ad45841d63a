/* Unix socket pairs survive a restore with the data queued in both
 * directions: a SOCK_STREAM pair (bytes, in order), a SOCK_DGRAM pair (each
 * datagram whole, with its own size, in order), and a stream pair one side of
 * which shut down writing (data, then end of file). The checkpoint must not
 * consume the queues. */
#define CKPT_KIND "socketpair"
#include "ckpt.h"

#include <sys/socket.h>

static const char a_to_b[] = "stream: queued from the first socket to the second";
static const char b_to_a[] = "stream: queued the other way, and longer, to tell them apart";
static const char *const dgrams_ab[] = {"d1", "datagram two", "", "the fourth datagram, longest"};
static const char *const dgrams_ba[] = {"back one", "b2"};
static const char shut_text[] = "sent before shutdown(SHUT_WR)";

/* Receive what is queued on `fd` (one datagram, or up to `cap` stream bytes)
 * without waiting. */
static ssize_t take(int fd, char *buf, size_t cap) {
    ssize_t n;
    do
        n = recv(fd, buf, cap, MSG_DONTWAIT);
    while (n == -1 && errno == EINTR);
    return n;
}

static void expect_stream(const char *what, int fd, const char *want) {
    char buf[256];
    size_t len = strlen(want), got = 0;
    while (got < len) {
        ssize_t n = take(fd, buf + got, len - got);
        CHECK(n > 0, "%s: after %zu of %zu bytes: recv gave %zd (%s)", what, got, len, n,
              n < 0 ? strerror(errno) : "end of file");
        got += (size_t)n;
    }
    CHECK(memcmp(buf, want, len) == 0, "%s: expected \"%s\", got \"%.*s\"", what, want, (int)len,
          buf);
}

static void expect_nothing(const char *what, int fd) {
    char c;
    ssize_t n = take(fd, &c, 1);
    CHECK(n == -1 && errno == EAGAIN, "%s: expected nothing more queued (EAGAIN), got %zd (%s)",
          what, n, n < 0 ? strerror(errno) : "data");
}

static void expect_dgram(const char *what, int fd, const char *want) {
    char buf[256];
    ssize_t n = take(fd, buf, sizeof buf);
    CHECK(n >= 0, "%s: expected the datagram \"%s\", recv: %s", what, want, strerror(errno));
    CHECK((size_t)n == strlen(want) && memcmp(buf, want, (size_t)n) == 0,
          "%s: expected the datagram \"%s\" (%zu bytes), got \"%.*s\" (%zd bytes)", what, want,
          strlen(want), (int)n, buf, n);
}

static void send_all(int fd, const char *s) {
    size_t len = strlen(s);
    CHECK(send(fd, s, len, 0) == (ssize_t)len, "send \"%s\": %s", s, strerror(errno));
}

int main(void) {
    int st[2], dg[2], sh[2];
    SYS(socketpair(AF_UNIX, SOCK_STREAM, 0, st));
    SYS(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg));
    SYS(socketpair(AF_UNIX, SOCK_STREAM, 0, sh));

    send_all(st[0], a_to_b);
    send_all(st[1], b_to_a);
    for (size_t i = 0; i < sizeof dgrams_ab / sizeof *dgrams_ab; i++)
        send_all(dg[0], dgrams_ab[i]);
    for (size_t i = 0; i < sizeof dgrams_ba / sizeof *dgrams_ba; i++)
        send_all(dg[1], dgrams_ba[i]);
    send_all(sh[0], shut_text);
    SYS(shutdown(sh[0], SHUT_WR));

    ckpt_ready_then_wait_go();

    expect_stream("stream pair, first to second", st[1], a_to_b);
    expect_nothing("stream pair, second socket", st[1]);
    expect_stream("stream pair, second to first", st[0], b_to_a);
    expect_nothing("stream pair, first socket", st[0]);
    send_all(st[0], "new bytes");
    expect_stream("stream pair, sent after the restore", st[1], "new bytes");

    for (size_t i = 0; i < sizeof dgrams_ab / sizeof *dgrams_ab; i++)
        expect_dgram("datagram pair, first to second", dg[1], dgrams_ab[i]);
    expect_nothing("datagram pair, second socket", dg[1]);
    for (size_t i = 0; i < sizeof dgrams_ba / sizeof *dgrams_ba; i++)
        expect_dgram("datagram pair, second to first", dg[0], dgrams_ba[i]);
    expect_nothing("datagram pair, first socket", dg[0]);
    send_all(dg[1], "new datagram");
    expect_dgram("datagram pair, sent after the restore", dg[0], "new datagram");

    expect_stream("stream pair shut down for writing", sh[1], shut_text);
    char c;
    ssize_t n = take(sh[1], &c, 1);
    CHECK(n == 0, "stream pair shut down for writing: expected end of file, got %zd (%s)", n,
          n < 0 ? strerror(errno) : "data");
    CHECK(send(sh[0], "x", 1, MSG_NOSIGNAL) == -1 && errno == EPIPE,
          "stream pair shut down for writing: expected a send to fail with EPIPE");

    int type;
    socklen_t tl = sizeof type;
    SYS(getsockopt(dg[0], SOL_SOCKET, SO_TYPE, &type, &tl));
    CHECK(type == SOCK_DGRAM, "datagram pair: SO_TYPE: expected %d, got %d", SOCK_DGRAM, type);
    ckpt_ok();
}
