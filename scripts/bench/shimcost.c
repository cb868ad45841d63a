/* Per-call cost of the shim: runs one kind of call N times.
 *   shimcost OP N      OP: read8 | clock | getpid | getrandom | mix
 * The caller times the whole process from outside (in replay the program's
 * own clock readings are the recorded ones) and subtracts a run with N = 0. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: shimcost read8|clock|getpid|getrandom|mix N\n");
        return 2;
    }
    const char *op = argv[1];
    long n = atol(argv[2]);
    int fd = open("/dev/zero", O_RDONLY);
    char buf[8];
    struct timespec ts;
    unsigned long acc = 0;
    for (long i = 0; i < n; i++) {
        if (!strcmp(op, "read8")) {
            acc += read(fd, buf, 8);
        } else if (!strcmp(op, "clock")) {
            clock_gettime(CLOCK_MONOTONIC, &ts);
            acc += ts.tv_nsec;
        } else if (!strcmp(op, "getpid")) {
            acc += getpid();
        } else if (!strcmp(op, "getrandom")) {
            acc += getrandom(buf, 8, 0);
        } else {
            /* The syscall-heavy loop: a little work around every call. */
            acc += read(fd, buf, 8);
            clock_gettime(CLOCK_MONOTONIC, &ts);
            acc += ts.tv_nsec & 1;
            acc += getpid();
            for (int k = 0; k < 50; k++) acc = acc * 31 + (unsigned char)buf[k & 7];
        }
    }
    printf("%s %ld %lu\n", op, n, acc & 1);
    return 0;
}
