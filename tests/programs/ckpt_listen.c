/* A listening TCP socket on 127.0.0.1, on a port the kernel chose, survives
 * a restore: the same address and port, still listening, and it accepts a
 * connection the program makes to itself; bytes go both ways. */
#define CKPT_KIND "listen"
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

static void wait_readable(const char *what, int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int ready;
    do
        ready = poll(&p, 1, 5000);
    while (ready == -1 && errno == EINTR);
    CHECK(ready == 1, "%s: expected to be readable within 5 s, poll gave %d (%s)", what, ready,
          ready < 0 ? strerror(errno) : "timeout");
}

static void exchange(const char *what, int from, int to, const char *msg) {
    size_t len = strlen(msg);
    CHECK(send(from, msg, len, MSG_NOSIGNAL) == (ssize_t)len, "%s: send: %s", what,
          strerror(errno));
    char buf[128];
    size_t got = 0;
    while (got < len) {
        wait_readable(what, to);
        ssize_t n = recv(to, buf + got, len - got, 0);
        CHECK(n > 0, "%s: recv gave %zd (%s)", what, n, n < 0 ? strerror(errno) : "end of file");
        got += (size_t)n;
    }
    CHECK(memcmp(buf, msg, len) == 0, "%s: expected \"%s\", got \"%.*s\"", what, msg, (int)len,
          buf);
}

int main(void) {
    int lfd = (int)SYS(socket(AF_INET, SOCK_STREAM, 0));
    int one = 1;
    SYS(setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    SYS(bind(lfd, (struct sockaddr *)&a, sizeof a));
    SYS(listen(lfd, 16));
    struct sockaddr_in before = bound_addr(lfd);

    ckpt_ready_then_wait_go();

    struct sockaddr_in after = bound_addr(lfd);
    CHECK(after.sin_addr.s_addr == before.sin_addr.s_addr && after.sin_port == before.sin_port,
          "getsockname: expected 127.0.0.1:%d, got %s:%d", ntohs(before.sin_port),
          inet_ntoa(after.sin_addr), ntohs(after.sin_port));
    int v;
    socklen_t ol = sizeof v;
    SYS(getsockopt(lfd, SOL_SOCKET, SO_ACCEPTCONN, &v, &ol));
    CHECK(v == 1, "SO_ACCEPTCONN: expected 1 (listening), got %d", v);
    SYS(getsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &v, &ol));
    CHECK(v == 1, "SO_REUSEADDR: expected 1, got %d", v);

    int client = (int)SYS(socket(AF_INET, SOCK_STREAM, 0));
    CHECK(connect(client, (struct sockaddr *)&before, sizeof before) == 0,
          "connect to 127.0.0.1:%d: %s", ntohs(before.sin_port), strerror(errno));
    wait_readable("the listening socket", lfd);
    struct sockaddr_in peer;
    socklen_t pl = sizeof peer;
    int conn = accept(lfd, (struct sockaddr *)&peer, &pl);
    CHECK(conn >= 0, "accept: %s", strerror(errno));
    struct sockaddr_in client_addr = bound_addr(client);
    CHECK(peer.sin_port == client_addr.sin_port, "accept: expected the peer port %d, got %d",
          ntohs(client_addr.sin_port), ntohs(peer.sin_port));
    exchange("client to server", client, conn, "hello from the client");
    exchange("server to client", conn, client, "hello back from the server");
    close(conn);
    close(client);
    ckpt_ok();
}
