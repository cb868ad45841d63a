/* A program of three processes that talk all the time: the parent sends
 * numbers to one worker through a pipe (two requests ahead, so the pipe
 * holds unread data most of the time) and to another through a socket
 * pair; each worker answers with the number mixed with its own random
 * bytes and the time, and notes its running sum in its slot of a page of
 * shared memory, which the parent reads after each answer. Everything is
 * printed at the end (the parent's lines from a buffer of its own), so that
 * a replay restored from an image taken at any record prints it all. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 60
#define AHEAD 2

static volatile uint64_t *shared;

static uint64_t mix(uint64_t n) {
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, 0) != sizeof r) {
        perror("getrandom");
        _exit(100);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (n * 1000003u) ^ r ^ (uint64_t)ts.tv_nsec;
}

static int read_all(int fd, void *buf, size_t len) {
    char *p = buf;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n <= 0) {
            perror("write");
            _exit(101);
        }
        p += n;
        len -= (size_t)n;
    }
}

/* Answer every number read from `in` on `out` until end of file. */
static void worker(int slot, int in, int out) {
    uint64_t n, sum = 0, answers = 0;
    while (read_all(in, &n, sizeof n) == 0) {
        uint64_t a = mix(n);
        sum += n;
        shared[slot] = sum;
        write_all(out, &a, sizeof a);
        answers++;
    }
    printf("worker%d pid %d parent %d: %llu answers, sum %llu\n", slot, (int)getpid(),
           (int)getppid(), (unsigned long long)answers, (unsigned long long)sum);
    fflush(stdout);
    _exit(slot);
}

int main(void) {
    shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    int req[2], ans[2], sp[2];
    if (pipe(req) || pipe(ans) || socketpair(AF_UNIX, SOCK_STREAM, 0, sp)) {
        perror("pipe");
        return 1;
    }
    fflush(stdout);
    pid_t w1 = fork();
    if (w1 == 0) {
        close(req[1]);
        close(ans[0]);
        close(sp[0]);
        close(sp[1]);
        worker(1, req[0], ans[1]);
    }
    pid_t w2 = fork();
    if (w2 == 0) {
        close(req[0]);
        close(req[1]);
        close(ans[0]);
        close(ans[1]);
        close(sp[0]);
        worker(2, sp[1], sp[1]);
    }
    close(req[0]);
    close(ans[1]);
    close(sp[1]);

    static char out[64 << 10];
    size_t used = 0;
    uint64_t sent = 0;
    for (; sent < AHEAD; sent++)
        write_all(req[1], &sent, sizeof sent);
    for (uint64_t i = 0; i < ROUNDS; i++) {
        if (sent < ROUNDS) {
            write_all(req[1], &sent, sizeof sent);
            sent++;
        }
        uint64_t a1, a2, n = i * 7;
        if (read_all(ans[0], &a1, sizeof a1)) {
            fprintf(stderr, "worker1 ended early\n");
            return 2;
        }
        write_all(sp[0], &n, sizeof n);
        if (read_all(sp[0], &a2, sizeof a2)) {
            fprintf(stderr, "worker2 ended early\n");
            return 2;
        }
        used += (size_t)snprintf(out + used, sizeof out - used,
                                 "round %llu: %016llx %016llx worker2 sum %llu, mine %llu\n",
                                 (unsigned long long)i, (unsigned long long)a1,
                                 (unsigned long long)a2, (unsigned long long)shared[2],
                                 (unsigned long long)mix(i));
    }
    close(req[1]);
    shutdown(sp[0], SHUT_WR);
    int s1 = 0, s2 = 0;
    pid_t g1 = waitpid(w1, &s1, 0), g2 = waitpid(w2, &s2, 0);
    fwrite(out, 1, used, stdout);
    printf("workers %d %d ended %d %d; worker1 sum %llu\n", (int)(g1 == w1), (int)(g2 == w2),
           WEXITSTATUS(s1), WEXITSTATUS(s2), (unsigned long long)shared[1]);
    return 0;
}
