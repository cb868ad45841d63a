/* A TCP server on 127.0.0.1, port chosen by the kernel. Serves exactly N
 * clients (argv[1]) one after another: reads one line from each, answers
 * "hello <line> <random> <clock>", prints what it received and sent. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
    perror(what);
    exit(1);
}

int main(int argc, char **argv) {
    int clients = argc > 1 ? atoi(argv[1]) : 1;

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ls < 0)
        die("socket");
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("bind");
    if (listen(ls, 16) < 0)
        die("listen");
    socklen_t alen = sizeof addr;
    if (getsockname(ls, (struct sockaddr *)&addr, &alen) < 0)
        die("getsockname");
    printf("listening %d\n", ntohs(addr.sin_port));
    fflush(stdout);

    for (int i = 0; i < clients; i++) {
        struct pollfd p = {.fd = ls, .events = POLLIN};
        int n = poll(&p, 1, 30000);
        if (n != 1)
            die("poll: no client within 30 s");

        struct sockaddr_in peer;
        socklen_t plen = sizeof peer;
        int c = accept4(ls, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
        if (c < 0)
            die("accept4");

        char line[256];
        size_t len = 0;
        while (len < sizeof line - 1) {
            ssize_t r = recv(c, line + len, 1, 0);
            if (r <= 0 || line[len] == '\n')
                break;
            len++;
        }
        line[len] = 0;

        unsigned int rnd = 0;
        if (getrandom(&rnd, sizeof rnd, 0) != sizeof rnd)
            die("getrandom");
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);

        char answer[512];
        int alen2 = snprintf(answer, sizeof answer, "hello %s %u %lld.%09ld\n", line, rnd,
                             (long long)now.tv_sec, now.tv_nsec);
        size_t off = 0;
        while (off < (size_t)alen2) {
            ssize_t w = send(c, answer + off, (size_t)alen2 - off, MSG_NOSIGNAL);
            if (w <= 0)
                die("send");
            off += (size_t)w;
        }
        close(c);

        printf("client %d received %s\n", i, line);
        printf("client %d sent %s", i, answer);
        fflush(stdout);
    }
    close(ls);
    printf("served %d\n", clients);
    return 0;
}
