/* Register state survives a restore, in a thread that is not in a system
 * call when the checkpoint stops it. The thread loads distinctive values into
 * xmm0-15 (ymm0-15 when the CPU has AVX), r8-r15 and the x87 stack, then
 * spins on a flag, in one asm block, without system calls, for as long as the
 * checkpoint and restore take; it stores them back and compares. It runs
 * with its own MXCSR (round toward zero). The main thread runs with
 * FE_UPWARD, MXCSR flush-to-zero and denormals-are-zero, and x87 single
 * precision; all checked after the restore. x86-64 only. */
#define CKPT_KIND "fpu"
#include "ckpt.h"

#if !defined(__x86_64__)
#error "ckpt_fpu is x86-64 only"
#endif

#include <fenv.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define MXCSR_FTZ 0x8000u
#define MXCSR_DAZ 0x0040u
#define MXCSR_RC_ZERO 0x6000u
#define X87_PC_MASK 0x0300u
/* The sticky exception flags; arithmetic sets them, so they are not compared. */
#define MXCSR_FLAGS 0x003fu

/* Everything the asm blocks touch, at the offsets written in the asm text. */
struct held {
    uint8_t vin[16 * 32];
    uint8_t vout[16 * 32];
    uint64_t gin[8];
    uint64_t gout[8];
    long double x87_in;
    long double x87_out;
    volatile int loaded;
    volatile int release;
} __attribute__((aligned(32)));

_Static_assert(offsetof(struct held, vout) == 512 && offsetof(struct held, gin) == 1024 &&
                   offsetof(struct held, gout) == 1088 && offsetof(struct held, x87_in) == 1152 &&
                   offsetof(struct held, x87_out) == 1168 &&
                   offsetof(struct held, loaded) == 1184 && offsetof(struct held, release) == 1188,
               "the asm's offsets match struct held");

static struct held st;
static uint32_t thread_mxcsr_want, thread_mxcsr_got;
static int have_avx;

/* MXCSR's control bits: rounding, masks, FTZ, DAZ. */
static uint32_t get_mxcsr(void) {
    uint32_t v;
    __asm__ volatile("stmxcsr %0" : "=m"(v));
    return v & ~MXCSR_FLAGS;
}

static void set_mxcsr(uint32_t v) {
    __asm__ volatile("ldmxcsr %0" : : "m"(v));
}

static uint16_t get_x87_cw(void) {
    uint16_t v;
    __asm__ volatile("fnstcw %0" : "=m"(v));
    return v;
}

static void set_x87_cw(uint16_t v) {
    __asm__ volatile("fldcw %0" : : "m"(v));
}

static void hold_avx(void) {
    __asm__ volatile(
        "vmovdqa 0(%[s]), %%ymm0\n\tvmovdqa 32(%[s]), %%ymm1\n\t"
        "vmovdqa 64(%[s]), %%ymm2\n\tvmovdqa 96(%[s]), %%ymm3\n\t"
        "vmovdqa 128(%[s]), %%ymm4\n\tvmovdqa 160(%[s]), %%ymm5\n\t"
        "vmovdqa 192(%[s]), %%ymm6\n\tvmovdqa 224(%[s]), %%ymm7\n\t"
        "vmovdqa 256(%[s]), %%ymm8\n\tvmovdqa 288(%[s]), %%ymm9\n\t"
        "vmovdqa 320(%[s]), %%ymm10\n\tvmovdqa 352(%[s]), %%ymm11\n\t"
        "vmovdqa 384(%[s]), %%ymm12\n\tvmovdqa 416(%[s]), %%ymm13\n\t"
        "vmovdqa 448(%[s]), %%ymm14\n\tvmovdqa 480(%[s]), %%ymm15\n\t"
        "movq 1024(%[s]), %%r8\n\tmovq 1032(%[s]), %%r9\n\tmovq 1040(%[s]), %%r10\n\tmovq 1048(%[s]), %%r11\n\t"
        "movq 1056(%[s]), %%r12\n\tmovq 1064(%[s]), %%r13\n\tmovq 1072(%[s]), %%r14\n\tmovq 1080(%[s]), %%r15\n\t"
        "fldt 1152(%[s])\n\t"
        "movl $1, 1184(%[s])\n\t"
        "1: pause\n\tcmpl $0, 1188(%[s])\n\tje 1b\n\t"
        "fstpt 1168(%[s])\n\t"
        "movq %%r8, 1088(%[s])\n\tmovq %%r9, 1096(%[s])\n\tmovq %%r10, 1104(%[s])\n\tmovq %%r11, 1112(%[s])\n\t"
        "movq %%r12, 1120(%[s])\n\tmovq %%r13, 1128(%[s])\n\tmovq %%r14, 1136(%[s])\n\tmovq %%r15, 1144(%[s])\n\t"
        "vmovdqa %%ymm0, 512(%[s])\n\tvmovdqa %%ymm1, 544(%[s])\n\t"
        "vmovdqa %%ymm2, 576(%[s])\n\tvmovdqa %%ymm3, 608(%[s])\n\t"
        "vmovdqa %%ymm4, 640(%[s])\n\tvmovdqa %%ymm5, 672(%[s])\n\t"
        "vmovdqa %%ymm6, 704(%[s])\n\tvmovdqa %%ymm7, 736(%[s])\n\t"
        "vmovdqa %%ymm8, 768(%[s])\n\tvmovdqa %%ymm9, 800(%[s])\n\t"
        "vmovdqa %%ymm10, 832(%[s])\n\tvmovdqa %%ymm11, 864(%[s])\n\t"
        "vmovdqa %%ymm12, 896(%[s])\n\tvmovdqa %%ymm13, 928(%[s])\n\t"
        "vmovdqa %%ymm14, 960(%[s])\n\tvmovdqa %%ymm15, 992(%[s])\n\t"
        "vzeroupper\n\t"
        :
        : [s] "r"(&st)
        : "memory", "cc", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "xmm0", "xmm1",
          "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
          "xmm12", "xmm13", "xmm14", "xmm15");
}

static void hold_sse(void) {
    __asm__ volatile(
        "movdqa 0(%[s]), %%xmm0\n\tmovdqa 32(%[s]), %%xmm1\n\t"
        "movdqa 64(%[s]), %%xmm2\n\tmovdqa 96(%[s]), %%xmm3\n\t"
        "movdqa 128(%[s]), %%xmm4\n\tmovdqa 160(%[s]), %%xmm5\n\t"
        "movdqa 192(%[s]), %%xmm6\n\tmovdqa 224(%[s]), %%xmm7\n\t"
        "movdqa 256(%[s]), %%xmm8\n\tmovdqa 288(%[s]), %%xmm9\n\t"
        "movdqa 320(%[s]), %%xmm10\n\tmovdqa 352(%[s]), %%xmm11\n\t"
        "movdqa 384(%[s]), %%xmm12\n\tmovdqa 416(%[s]), %%xmm13\n\t"
        "movdqa 448(%[s]), %%xmm14\n\tmovdqa 480(%[s]), %%xmm15\n\t"
        "movq 1024(%[s]), %%r8\n\tmovq 1032(%[s]), %%r9\n\tmovq 1040(%[s]), %%r10\n\tmovq 1048(%[s]), %%r11\n\t"
        "movq 1056(%[s]), %%r12\n\tmovq 1064(%[s]), %%r13\n\tmovq 1072(%[s]), %%r14\n\tmovq 1080(%[s]), %%r15\n\t"
        "fldt 1152(%[s])\n\t"
        "movl $1, 1184(%[s])\n\t"
        "1: pause\n\tcmpl $0, 1188(%[s])\n\tje 1b\n\t"
        "fstpt 1168(%[s])\n\t"
        "movq %%r8, 1088(%[s])\n\tmovq %%r9, 1096(%[s])\n\tmovq %%r10, 1104(%[s])\n\tmovq %%r11, 1112(%[s])\n\t"
        "movq %%r12, 1120(%[s])\n\tmovq %%r13, 1128(%[s])\n\tmovq %%r14, 1136(%[s])\n\tmovq %%r15, 1144(%[s])\n\t"
        "movdqa %%xmm0, 512(%[s])\n\tmovdqa %%xmm1, 544(%[s])\n\t"
        "movdqa %%xmm2, 576(%[s])\n\tmovdqa %%xmm3, 608(%[s])\n\t"
        "movdqa %%xmm4, 640(%[s])\n\tmovdqa %%xmm5, 672(%[s])\n\t"
        "movdqa %%xmm6, 704(%[s])\n\tmovdqa %%xmm7, 736(%[s])\n\t"
        "movdqa %%xmm8, 768(%[s])\n\tmovdqa %%xmm9, 800(%[s])\n\t"
        "movdqa %%xmm10, 832(%[s])\n\tmovdqa %%xmm11, 864(%[s])\n\t"
        "movdqa %%xmm12, 896(%[s])\n\tmovdqa %%xmm13, 928(%[s])\n\t"
        "movdqa %%xmm14, 960(%[s])\n\tmovdqa %%xmm15, 992(%[s])\n\t"
        :
        : [s] "r"(&st)
        : "memory", "cc", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "xmm0", "xmm1",
          "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11",
          "xmm12", "xmm13", "xmm14", "xmm15");
}

static void *holder(void *arg) {
    (void)arg;
    set_mxcsr(thread_mxcsr_want);
    if (have_avx)
        hold_avx();
    else
        hold_sse();
    thread_mxcsr_got = get_mxcsr();
    return NULL;
}

int main(void) {
    have_avx = __builtin_cpu_supports("avx");
    /* Only the low 16 bytes of each 32-byte slot are used without AVX. */
    for (size_t i = 0; i < sizeof st.vin; i++)
        st.vin[i] = (uint8_t)(i * 151 + 17);
    for (int i = 0; i < 8; i++)
        st.gin[i] = 0x0123456789abcdefull * (uint64_t)(i + 3) ^ ((uint64_t)i << 60);
    st.x87_in = 1.0L / 3.0L;

    CHECK(fesetround(FE_UPWARD) == 0, "fesetround(FE_UPWARD) failed");
    uint32_t mxcsr_default = get_mxcsr();
    set_mxcsr(mxcsr_default | MXCSR_FTZ | MXCSR_DAZ);
    set_x87_cw((uint16_t)(get_x87_cw() & ~X87_PC_MASK));
    uint32_t main_mxcsr = get_mxcsr();
    uint16_t main_cw = get_x87_cw();
    thread_mxcsr_want = (mxcsr_default & ~0x6000u) | MXCSR_RC_ZERO;

    pthread_t t;
    PT(pthread_create(&t, NULL, holder, NULL));
    double deadline = ckpt_now() + 10;
    while (!st.loaded && ckpt_now() < deadline)
        ckpt_sleep_ms(1);
    CHECK(st.loaded, "the register-holding thread did not start within 10 s");

    ckpt_ready_then_wait_go();

    st.release = 1;
    struct timespec limit;
    SYS(clock_gettime(CLOCK_REALTIME, &limit));
    limit.tv_sec += 10;
    int rc = pthread_timedjoin_np(t, NULL, &limit);
    CHECK(rc == 0, "register-holding thread: not joined within 10 s: %s", strerror(rc));

    size_t width = have_avx ? 32 : 16;
    for (int r = 0; r < 16; r++)
        for (size_t b = 0; b < width; b++) {
            size_t i = (size_t)r * 32 + b;
            CHECK(st.vout[i] == st.vin[i], "%s%d byte %zu: expected 0x%02x, got 0x%02x",
                  have_avx ? "ymm" : "xmm", r, b, st.vin[i], st.vout[i]);
        }
    for (int i = 0; i < 8; i++)
        CHECK(st.gout[i] == st.gin[i], "r%d: expected %#llx, got %#llx", i + 8,
              (unsigned long long)st.gin[i], (unsigned long long)st.gout[i]);
    CHECK(memcmp(&st.x87_out, &st.x87_in, 10) == 0, "x87 st(0): expected %La, got %La", st.x87_in, st.x87_out);
    CHECK(thread_mxcsr_got == thread_mxcsr_want, "the thread's MXCSR: expected %#x, got %#x",
          thread_mxcsr_want, thread_mxcsr_got);

    CHECK(get_mxcsr() == main_mxcsr, "main thread's MXCSR: expected %#x, got %#x", main_mxcsr,
          get_mxcsr());
    CHECK(get_x87_cw() == main_cw, "main thread's x87 control word: expected %#x, got %#x",
          main_cw, get_x87_cw());
    CHECK(fegetround() == FE_UPWARD, "fegetround(): expected FE_UPWARD (%d), got %d", FE_UPWARD,
          fegetround());
    volatile double one = 1.0, three = 3.0;
    volatile double up = one / three;
    CHECK(up * three > 1.0, "1/3 rounded upward, times 3: expected above 1, got %a", up * three);
    ckpt_ok();
}
