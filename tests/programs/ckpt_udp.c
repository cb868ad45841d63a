/* A UDP socket bound to 127.0.0.1 on a port the kernel chose survives a
 * restore: getsockname gives the same address and port, its options are
 * kept, and a datagram sent to it from a new socket arrives, from that
 * socket's address. */
#define CKPT_KIND "udp"
#include "ckpt.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

static struct sockaddr_in bound_addr(int fd) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    SYS(getsockname(fd, (struct sockaddr *)&a, &len));
    return a;
}

int main(void) {
    int fd = (int)SYS(socket(AF_INET, SOCK_DGRAM, 0));
    int one = 1, rcvbuf = 123456;
    SYS(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    SYS(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    SYS(bind(fd, (struct sockaddr *)&a, sizeof a));
    struct sockaddr_in before = bound_addr(fd);
    int got_rcvbuf;
    socklen_t ol = sizeof got_rcvbuf;
    SYS(getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &got_rcvbuf, &ol));

    ckpt_ready_then_wait_go();

    struct sockaddr_in after = bound_addr(fd);
    CHECK(after.sin_addr.s_addr == before.sin_addr.s_addr && after.sin_port == before.sin_port,
          "getsockname: expected 127.0.0.1:%d, got %s:%d", ntohs(before.sin_port),
          inet_ntoa(after.sin_addr), ntohs(after.sin_port));
    int v;
    ol = sizeof v;
    SYS(getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &v, &ol));
    CHECK(v == 1, "SO_REUSEADDR: expected 1, got %d", v);
    SYS(getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, &ol));
    CHECK(v == got_rcvbuf, "SO_RCVBUF: expected %d, got %d", got_rcvbuf, v);

    int sender = (int)SYS(socket(AF_INET, SOCK_DGRAM, 0));
    static const char msg[] = "a datagram sent after the restore";
    CHECK(sendto(sender, msg, sizeof msg, 0, (struct sockaddr *)&before, sizeof before) ==
              sizeof msg,
          "sendto 127.0.0.1:%d: %s", ntohs(before.sin_port), strerror(errno));
    struct sockaddr_in sender_addr = bound_addr(sender);

    struct pollfd p = {.fd = fd, .events = POLLIN};
    int ready;
    do
        ready = poll(&p, 1, 5000);
    while (ready == -1 && errno == EINTR);
    CHECK(ready == 1, "poll: expected the datagram within 5 s, got %d (%s)", ready,
          ready < 0 ? strerror(errno) : "timeout");
    char buf[128];
    struct sockaddr_in from;
    socklen_t fl = sizeof from;
    ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
    CHECK(n == sizeof msg && memcmp(buf, msg, sizeof msg) == 0,
          "recvfrom: expected \"%s\", got %zd bytes", msg, n);
    CHECK(from.sin_port == sender_addr.sin_port,
          "recvfrom: expected the sender's port %d, got %d", ntohs(sender_addr.sin_port),
          ntohs(from.sin_port));
    ckpt_ok();
}
