/* Reads every clock the usual ways, with short sleeps in between. */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/time.h>
#include <time.h>

static void nap(long ns) {
    struct timespec d = {0, ns};
    nanosleep(&d, NULL);
}

int main(void) {
    for (int i = 0; i < 3; i++) {
        struct timespec rt, mono;
        struct timeval tv;
        clock_gettime(CLOCK_REALTIME, &rt);
        printf("realtime %d %lld.%09ld\n", i, (long long)rt.tv_sec, rt.tv_nsec);
        nap(1000000);
        clock_gettime(CLOCK_MONOTONIC, &mono);
        printf("monotonic %d %lld.%09ld\n", i, (long long)mono.tv_sec, mono.tv_nsec);
        nap(1000000);
        gettimeofday(&tv, NULL);
        printf("gettimeofday %d %lld.%06ld\n", i, (long long)tv.tv_sec, (long)tv.tv_usec);
        printf("time %d %lld\n", i, (long long)time(NULL));
        nap(2000000);
    }
    return 0;
}
