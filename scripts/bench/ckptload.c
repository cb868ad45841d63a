/* The program scripts/bench-checkpoint checkpoints: a heap of SIZE MiB
 * whose every page holds non-zero data, and a small command loop on stdin.
 *
 *   ckptload memcpy SIZE      time memcpy of SIZE MiB (best of 5) and print
 *                             "memcpy GBPS"
 *   ckptload SIZE             fill the heap, print "ready", then per line:
 *     ping                    print "pong"
 *     dirty P                 write one byte in P% of the pages (evenly
 *                             spread), print "dirtied N"
 *     sum                     print "sum X", a checksum of the whole heap
 *     quit                    exit 0
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PAGE 4096ul

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x | 1;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "memcpy") == 0) {
        size_t len = strtoul(argv[2], NULL, 10) << 20;
        char *a = malloc(len), *b = malloc(len);
        if (!a || !b)
            return 2;
        memset(a, 7, len);
        memset(b, 1, len);
        double best = 1e9;
        for (int i = 0; i < 5; i++) {
            double t0 = now();
            memcpy(b, a, len);
            double t = now() - t0;
            if (t < best)
                best = t;
        }
        printf("memcpy %.2f\n", len / best / 1e9);
        return b[len / 2] == 7 ? 0 : 1;
    }
    if (argc != 2)
        return 2;
    size_t len = strtoul(argv[1], NULL, 10) << 20;
    uint64_t *heap = malloc(len);
    if (!heap)
        return 2;
    size_t words = len / 8;
    for (size_t i = 0; i < words; i++)
        heap[i] = mix(i);
    printf("ready\n");
    fflush(stdout);
    char line[64];
    uint64_t round = 0;
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "ping", 4) == 0) {
            printf("pong\n");
        } else if (strncmp(line, "dirty ", 6) == 0) {
            double p = atof(line + 6);
            size_t pages = len / PAGE, step = p > 0 ? (size_t)(100.0 / p) : pages + 1, n = 0;
            round++;
            for (size_t pg = round % step; pg < pages; pg += step, n++)
                heap[pg * (PAGE / 8)] = mix(pg + round * 1000003u);
            printf("dirtied %zu\n", n);
        } else if (strncmp(line, "sum", 3) == 0) {
            uint64_t s = 0;
            for (size_t i = 0; i < words; i++)
                s = s * 31 + heap[i];
            printf("sum %016llx\n", (unsigned long long)s);
        } else if (strncmp(line, "quit", 4) == 0) {
            return 0;
        }
        fflush(stdout);
    }
    return 0;
}
