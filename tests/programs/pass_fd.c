/* A parent passes descriptors to its child over a unix socketpair
 * (SCM_RIGHTS): a pipe's read end, then reads through it. Prints what the
 * child received through the passed descriptor and some random bytes. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>

static void send_fd(int sock, int fd) {
    char byte = 'x';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    char ctl[CMSG_SPACE(sizeof(int))];
    memset(ctl, 0, sizeof ctl);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    if (sendmsg(sock, &m, 0) != 1) { perror("sendmsg"); exit(1); }
}

static int recv_fd(int sock) {
    char byte;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    char ctl[CMSG_SPACE(sizeof(int))];
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    if (recvmsg(sock, &m, 0) != 1) { perror("recvmsg"); exit(1); }
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof(int));
    return fd;
}

int main(void) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) { perror("socketpair"); return 1; }
    pid_t pid = fork();
    if (pid == 0) {
        close(sv[0]);
        int fd = recv_fd(sv[1]);
        /* A descriptor opened after the passed one gets the next number. */
        int devnull = open("/dev/null", O_WRONLY);
        char buf[64] = {0};
        ssize_t n = read(fd, buf, sizeof buf - 1);
        printf("child got fd %d (then %d), read %zd: %s\n", fd, devnull, n, buf);
        fflush(stdout);
        _exit(0);
    }
    close(sv[1]);
    int p[2];
    if (pipe(p)) { perror("pipe"); return 1; }
    unsigned char r[8];
    if (getrandom(r, sizeof r, 0) != sizeof r) return 1;
    char msg[64];
    int len = snprintf(msg, sizeof msg, "secret %02x%02x%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
    if (write(p[1], msg, len) != len) return 1;
    send_fd(sv[0], p[0]);
    int st;
    waitpid(pid, &st, 0);
    printf("parent sent %s, child exited %d\n", msg, WEXITSTATUS(st));
    return 0;
}
