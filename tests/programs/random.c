/* Every common source of randomness, including raw syscalls that bypass libc. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void hex(const char *what, const unsigned char *b, size_t n, long ret) {
    printf("%s ret=%ld ", what, ret);
    for (size_t i = 0; i < n; i++)
        printf("%02x", b[i]);
    printf("\n");
}

#if defined(__x86_64__)
/* A getrandom done with a bare `syscall` instruction: no libc symbol to interpose. */
static long asm_getrandom(void *buf, size_t len, unsigned flags) {
    long ret;
    register long rdi __asm__("rdi") = (long)buf;
    register long rsi __asm__("rsi") = (long)len;
    register long rdx __asm__("rdx") = (long)flags;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "0"((long)SYS_getrandom), "r"(rdi), "r"(rsi), "r"(rdx)
                     : "rcx", "r11", "memory");
    return ret;
}
#else
#error "the raw-syscall case is written for x86_64"
#endif

int main(void) {
    unsigned char b[16];

    long r = getrandom(b, sizeof b, 0);
    hex("getrandom", b, sizeof b, r);

    r = getentropy(b, sizeof b);
    hex("getentropy", b, sizeof b, r);

    FILE *f = fopen("/dev/urandom", "rb");
    if (!f) {
        perror("fopen /dev/urandom");
        return 1;
    }
    r = (long)fread(b, 1, sizeof b, f);
    fclose(f);
    hex("urandom", b, sizeof b, r);

    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    int a = rand(), c = rand();
    printf("rand %d %d\n", a, c);

    r = syscall(SYS_getrandom, b, sizeof b, 0);
    hex("syscall", b, sizeof b, r);

    r = asm_getrandom(b, sizeof b, 0);
    hex("asm", b, sizeof b, r);

    printf("pid %d\n", (int)getpid());
    return 0;
}
