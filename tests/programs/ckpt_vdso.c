/* The vDSO survives a restore, at the same address and live. The program
 * finds __vdso_clock_gettime and __vdso_gettimeofday itself, from
 * getauxval(AT_SYSINFO_EHDR) and the vDSO's ELF symbol table, and calls them
 * directly (bypassing libc) before and after the restore. After it: the vDSO
 * is still at that address, in /proc/self/maps as [vdso]; the saved function
 * pointers still work; their time moves forward, advances across a 20 ms
 * sleep and agrees with the clock_gettime system call (a stale copy of the
 * vDSO's data would not); libc's clock_gettime works too. */
#define CKPT_KIND "vdso"
#include "ckpt.h"

#include <elf.h>
#include <link.h>
#include <stdint.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/time.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);
typedef int (*gettimeofday_fn)(struct timeval *, void *);

/* The address of symbol `name` in the vDSO mapped at `base`. */
static void *vdso_symbol(uintptr_t base, const char *name) {
    const ElfW(Ehdr) *eh = (const ElfW(Ehdr) *)base;
    CHECK(memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0, "no ELF header at AT_SYSINFO_EHDR %#lx",
          (unsigned long)base);
    const ElfW(Phdr) *ph = (const ElfW(Phdr) *)(base + eh->e_phoff);
    intptr_t bias = 0;
    int have_load = 0;
    for (int i = 0; i < eh->e_phnum; i++)
        if (ph[i].p_type == PT_LOAD && !have_load) {
            bias = (intptr_t)base - (intptr_t)(ph[i].p_vaddr - ph[i].p_offset);
            have_load = 1;
        }
    CHECK(have_load, "the vDSO has no PT_LOAD segment");
    const ElfW(Shdr) *sh = (const ElfW(Shdr) *)(base + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type != SHT_DYNSYM)
            continue;
        const ElfW(Sym) *syms = (const ElfW(Sym) *)(base + sh[i].sh_offset);
        const char *strs = (const char *)(base + sh[sh[i].sh_link].sh_offset);
        size_t count = sh[i].sh_size / sizeof(ElfW(Sym));
        for (size_t j = 0; j < count; j++)
            if (syms[j].st_name != 0 && strcmp(strs + syms[j].st_name, name) == 0 &&
                syms[j].st_shndx != SHN_UNDEF)
                return (void *)(bias + (intptr_t)syms[j].st_value);
    }
    fail("the vDSO at %#lx has no symbol %s", (unsigned long)base, name);
}

static double secs(struct timespec t) {
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static struct timespec via(clock_gettime_fn fn, clockid_t clock, const char *what) {
    struct timespec t;
    int rc = fn(clock, &t);
    CHECK(rc == 0, "%s: returned %d", what, rc);
    return t;
}

static struct timespec via_syscall(clockid_t clock) {
    struct timespec t;
    SYS(syscall(SYS_clock_gettime, clock, &t));
    return t;
}

static uintptr_t vdso_in_maps(void) {
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        fail("open /proc/self/maps: %s", strerror(errno));
    char line[512];
    uintptr_t start = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        if (strstr(line, "[vdso]") && sscanf(line, "%lx-%lx", &s, &e) == 2)
            start = s;
    }
    fclose(f);
    return start;
}

int main(void) {
    uintptr_t base = getauxval(AT_SYSINFO_EHDR);
    CHECK(base != 0, "getauxval(AT_SYSINFO_EHDR): no vDSO");
    CHECK(vdso_in_maps() == base, "/proc/self/maps: expected [vdso] at %#lx, got %#lx",
          (unsigned long)base, (unsigned long)vdso_in_maps());
    clock_gettime_fn vgettime = (clock_gettime_fn)vdso_symbol(base, "__vdso_clock_gettime");
    gettimeofday_fn vgettimeofday = (gettimeofday_fn)vdso_symbol(base, "__vdso_gettimeofday");
    struct timespec mono_before = via(vgettime, CLOCK_MONOTONIC, "__vdso_clock_gettime");
    struct timespec real_before = via(vgettime, CLOCK_REALTIME, "__vdso_clock_gettime");

    ckpt_ready_then_wait_go();

    uintptr_t base_after = getauxval(AT_SYSINFO_EHDR);
    CHECK(base_after == base, "getauxval(AT_SYSINFO_EHDR): expected %#lx, got %#lx",
          (unsigned long)base, (unsigned long)base_after);
    CHECK(vdso_in_maps() == base, "/proc/self/maps: expected [vdso] at %#lx, got %#lx",
          (unsigned long)base, (unsigned long)vdso_in_maps());
    CHECK(vdso_symbol(base, "__vdso_clock_gettime") == (void *)vgettime,
          "__vdso_clock_gettime moved: expected %p, got %p", (void *)vgettime,
          vdso_symbol(base, "__vdso_clock_gettime"));

    struct timespec mono = via(vgettime, CLOCK_MONOTONIC, "__vdso_clock_gettime after the restore");
    struct timespec real = via(vgettime, CLOCK_REALTIME, "__vdso_clock_gettime after the restore");
    CHECK(secs(mono) >= secs(mono_before), "vDSO CLOCK_MONOTONIC went back: %.9f then %.9f",
          secs(mono_before), secs(mono));
    CHECK(secs(real) >= secs(real_before), "vDSO CLOCK_REALTIME went back: %.9f then %.9f",
          secs(real_before), secs(real));
    double sys_mono = secs(via_syscall(CLOCK_MONOTONIC));
    double vdso_mono = secs(via(vgettime, CLOCK_MONOTONIC, "__vdso_clock_gettime"));
    CHECK(vdso_mono - sys_mono < 1.0 && sys_mono - vdso_mono < 1.0,
          "vDSO CLOCK_MONOTONIC %.9f and the system call's %.9f differ by over 1 s", vdso_mono,
          sys_mono);
    double sys_real = secs(via_syscall(CLOCK_REALTIME));
    double vdso_real = secs(via(vgettime, CLOCK_REALTIME, "__vdso_clock_gettime"));
    CHECK(vdso_real - sys_real < 1.0 && sys_real - vdso_real < 1.0,
          "vDSO CLOCK_REALTIME %.9f and the system call's %.9f differ by over 1 s", vdso_real,
          sys_real);

    double t0 = secs(via(vgettime, CLOCK_MONOTONIC, "__vdso_clock_gettime"));
    ckpt_sleep_ms(20);
    double t1 = secs(via(vgettime, CLOCK_MONOTONIC, "__vdso_clock_gettime"));
    CHECK(t1 - t0 >= 0.019, "vDSO CLOCK_MONOTONIC across a 20 ms sleep: advanced %.6f s", t1 - t0);

    struct timeval tv;
    CHECK(vgettimeofday(&tv, NULL) == 0, "__vdso_gettimeofday failed");
    double tv_secs = (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
    CHECK(tv_secs - sys_real < 5.0 && sys_real - tv_secs < 5.0,
          "__vdso_gettimeofday %.6f and CLOCK_REALTIME %.6f differ by over 5 s", tv_secs,
          sys_real);

    struct timespec libc_mono;
    SYS(clock_gettime(CLOCK_MONOTONIC, &libc_mono));
    CHECK(secs(libc_mono) >= secs(mono_before), "libc CLOCK_MONOTONIC went back: %.9f then %.9f",
          secs(mono_before), secs(libc_mono));
    ckpt_ok();
}
