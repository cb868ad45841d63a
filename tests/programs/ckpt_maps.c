/* Memory: mappings of every protection and kind, their contents, and the
 * layout /proc/self/maps shows, survive a restore.
 *
 * Private and shared anonymous mappings (r, rw, rx, w-only, none), private and
 * shared mappings of a file the program creates (shared ones must still be
 * the file: a write after the restore reaches it, and two mappings of it
 * still share), a mapping split in three by mprotect, a PROT_NONE page that
 * holds data, MAP_GROWSDOWN, a 1 GiB MAP_NORESERVE mapping with three pages
 * touched (it must stay sparse), the heap (small and large malloc blocks;
 * free and malloc still work), the program break (sbrk grows further after
 * the restore) and data in 500 stack frames, the checkpoint taken at the
 * deepest. Runs in the current directory. */
#define CKPT_KIND "maps"
#include "ckpt.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>

#define PAGES 4
#define DEPTH 500
#define SMALL_BLOCKS 200
#define BIG_BLOCK (8u << 20)
#define SPARSE_SIZE (1ul << 30)

static size_t page;

/* The byte at offset `i` of the region with pattern `seed`. */
static unsigned char pat(unsigned seed, size_t i) {
    return (unsigned char)((i * 131u + seed * 29u + (i >> 12) * 7u) ^ (seed << 4));
}

static void fill(void *p, size_t len, unsigned seed) {
    unsigned char *b = p;
    for (size_t i = 0; i < len; i++)
        b[i] = pat(seed, i);
}

static void expect(const char *what, const void *p, size_t len, unsigned seed) {
    const unsigned char *b = p;
    for (size_t i = 0; i < len; i++)
        CHECK(b[i] == pat(seed, i), "%s: byte %zu: expected 0x%02x, got 0x%02x", what, i,
              pat(seed, i), b[i]);
}

static void *map(size_t len, int prot, int flags, int fd, off_t off) {
    void *p = mmap(NULL, len, prot, flags, fd, off);
    if (p == MAP_FAILED)
        fail("mmap %zu bytes (prot %d flags 0x%x): %s", len, prot, flags, strerror(errno));
    return p;
}

/* One line of /proc/self/maps. */
struct vma {
    uintptr_t start, end;
    char perms[5];
    unsigned long long offset;
    char path[256];
};

static int find_vma(uintptr_t addr, struct vma *out) {
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        fail("open /proc/self/maps: %s", strerror(errno));
    char line[512];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        struct vma v;
        int path_at = 0;
        memset(&v, 0, sizeof v);
        if (sscanf(line, "%lx-%lx %4s %llx %*s %*s %n", &v.start, &v.end, v.perms, &v.offset,
                   &path_at) < 4)
            continue;
        if (addr < v.start || addr >= v.end)
            continue;
        if (path_at > 0) {
            snprintf(v.path, sizeof v.path, "%s", line + path_at);
            v.path[strcspn(v.path, "\n")] = '\0';
        }
        *out = v;
        found = 1;
    }
    fclose(f);
    return found;
}

/* The mapping holding [p, p+len) has protections `perms`; when `exact`, it is
 * exactly that range. */
static void expect_vma(const char *what, const void *p, size_t len, const char *perms, int exact) {
    struct vma v;
    uintptr_t a = (uintptr_t)p;
    CHECK(find_vma(a, &v), "/proc/self/maps: expected a mapping for %s at %#lx, found none", what,
          (unsigned long)a);
    CHECK(strcmp(v.perms, perms) == 0, "/proc/self/maps: %s at %#lx: expected %s, got %s", what,
          (unsigned long)a, perms, v.perms);
    CHECK(v.start <= a && v.end >= a + len,
          "/proc/self/maps: %s: expected %#lx-%#lx inside one mapping, got %#lx-%#lx", what,
          (unsigned long)a, (unsigned long)(a + len), (unsigned long)v.start,
          (unsigned long)v.end);
    if (exact)
        CHECK(v.start == a && v.end == a + len,
              "/proc/self/maps: %s: expected exactly %#lx-%#lx, got %#lx-%#lx", what,
              (unsigned long)a, (unsigned long)(a + len), (unsigned long)v.start,
              (unsigned long)v.end);
}

static void expect_file_vma(const char *what, const void *p, const char *perms,
                            const char *path_end, unsigned long long offset) {
    struct vma v;
    expect_vma(what, p, page, perms, 0);
    find_vma((uintptr_t)p, &v);
    size_t pl = strlen(v.path), el = strlen(path_end);
    CHECK(pl >= el && strcmp(v.path + pl - el, path_end) == 0,
          "/proc/self/maps: %s: expected a path ending \"%s\", got \"%s\"", what, path_end,
          v.path);
    CHECK(v.offset == offset, "/proc/self/maps: %s: expected file offset %#llx, got %#llx", what,
          offset, v.offset);
}

/* A field ("Rss:", "VmFlags:") of the /proc/self/smaps entry holding `p`. */
static void smaps_field(const void *p, const char *field, char *out, size_t cap) {
    FILE *f = fopen("/proc/self/smaps", "re");
    if (!f)
        fail("open /proc/self/smaps: %s", strerror(errno));
    char line[512];
    int inside = 0;
    out[0] = '\0';
    while (fgets(line, sizeof line, f)) {
        unsigned long s, e;
        char perms[5];
        if (sscanf(line, "%lx-%lx %4s ", &s, &e, perms) == 3) {
            inside = (uintptr_t)p >= s && (uintptr_t)p < e;
            continue;
        }
        if (inside && strncmp(line, field, strlen(field)) == 0) {
            snprintf(out, cap, "%s", line + strlen(field));
            out[strcspn(out, "\n")] = '\0';
            break;
        }
    }
    fclose(f);
    CHECK(out[0] != '\0', "/proc/self/smaps: no %s line for %p", field, p);
}

static void expect_vmflag(const char *what, const void *p, const char *flag) {
    char flags[256], padded[260], want[8];
    smaps_field(p, "VmFlags:", flags, sizeof flags);
    snprintf(padded, sizeof padded, " %s ", flags);
    snprintf(want, sizeof want, " %s ", flag);
    CHECK(strstr(padded, want) != NULL, "/proc/self/smaps: %s: expected VmFlags with %s, got \"%s\"",
          what, flag, flags);
}

static void expect_file(const char *what, int fd, size_t len, unsigned seed) {
    static unsigned char buf[PAGES * 65536];
    CHECK(len <= sizeof buf, "file too big");
    CHECK(pread(fd, buf, len, 0) == (ssize_t)len, "pread %s: %s", what, strerror(errno));
    expect(what, buf, len, seed);
}

/* The state, set up by setup() and checked by check(). */
static size_t len;
static unsigned char *anon_r, *anon_rw, *anon_rx, *anon_none, *anon_w, *shared_anon;
static unsigned char *split, *hidden, *growsdown, *sparse;
static unsigned char *file_private, *file_shared, *file_shared_twin, *file_shared_ro;
static int private_fd, shared_fd;
static unsigned char *small_blocks[SMALL_BLOCKS];
static unsigned char *big_block;
static unsigned char *brk_start;
static size_t brk_len;

#if defined(__x86_64__)
/* mov eax, 42; ret */
static const unsigned char forty_two[] = {0xb8, 0x2a, 0x00, 0x00, 0x00, 0xc3};
#endif

static int make_file(const char *name, size_t size, unsigned seed) {
    int fd = (int)SYS(open(name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    static unsigned char buf[PAGES * 65536];
    CHECK(size <= sizeof buf, "file too big");
    fill(buf, size, seed);
    CHECK(write(fd, buf, size) == (ssize_t)size, "write %s: %s", name, strerror(errno));
    return fd;
}

static void setup(void) {
    page = (size_t)sysconf(_SC_PAGESIZE);
    len = PAGES * page;
    int anon = MAP_PRIVATE | MAP_ANONYMOUS;

    anon_r = map(len, PROT_READ | PROT_WRITE, anon, -1, 0);
    fill(anon_r, len, 1);
    SYS(mprotect(anon_r, len, PROT_READ));

    anon_rw = map(len, PROT_READ | PROT_WRITE, anon, -1, 0);
    fill(anon_rw, len, 2);

    anon_rx = map(len, PROT_READ | PROT_WRITE, anon, -1, 0);
    fill(anon_rx, len, 3);
#if defined(__x86_64__)
    memcpy(anon_rx + page, forty_two, sizeof forty_two);
#endif
    SYS(mprotect(anon_rx, len, PROT_READ | PROT_EXEC));

    anon_none = map(len, PROT_NONE, anon, -1, 0);

    anon_w = map(len, PROT_READ | PROT_WRITE, anon, -1, 0);
    fill(anon_w, len, 5);
    SYS(mprotect(anon_w, len, PROT_WRITE));

    shared_anon = map(len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    fill(shared_anon, len, 6);

    /* Eight pages, the middle three read-only: three mappings. */
    split = map(8 * page, PROT_READ | PROT_WRITE, anon, -1, 0);
    fill(split, 8 * page, 7);
    SYS(mprotect(split + 2 * page, 3 * page, PROT_READ));

    hidden = map(len, PROT_READ | PROT_WRITE, anon, -1, 0);
    fill(hidden, len, 8);
    SYS(mprotect(hidden, len, PROT_NONE));

    growsdown = map(len, PROT_READ | PROT_WRITE, anon | MAP_GROWSDOWN, -1, 0);
    fill(growsdown, len, 9);

    sparse = map(SPARSE_SIZE, PROT_READ | PROT_WRITE, anon | MAP_NORESERVE, -1, 0);
    fill(sparse, page, 10);
    fill(sparse + SPARSE_SIZE / 3 / page * page, page, 11);
    fill(sparse + SPARSE_SIZE - page, page, 12);

    /* A private mapping of a file, at file offset one page: pages 1 and 3
     * written (copied on write), 0 and 2 still the file's. */
    private_fd = make_file("maps-private.data", (PAGES + 1) * page, 13);
    file_private = map(len, PROT_READ | PROT_WRITE, MAP_PRIVATE, private_fd, (off_t)page);
    fill(file_private + page, page, 14);
    fill(file_private + 3 * page, page, 15);

    /* A shared mapping of a file, written through; a second shared mapping
     * of it, and a read-only one. */
    shared_fd = make_file("maps-shared.data", len, 16);
    file_shared = map(len, PROT_READ | PROT_WRITE, MAP_SHARED, shared_fd, 0);
    file_shared_twin = map(len, PROT_READ | PROT_WRITE, MAP_SHARED, shared_fd, 0);
    file_shared_ro = map(len, PROT_READ, MAP_SHARED, shared_fd, 0);
    fill(file_shared, len, 17);

    for (int i = 0; i < SMALL_BLOCKS; i++) {
        size_t n = 16 + (size_t)(i % 13) * 24;
        small_blocks[i] = malloc(n);
        CHECK(small_blocks[i] != NULL, "malloc(%zu) failed", n);
        fill(small_blocks[i], n, 100 + (unsigned)i);
    }
    big_block = malloc(BIG_BLOCK);
    CHECK(big_block != NULL, "malloc(%u) failed", BIG_BLOCK);
    fill(big_block, BIG_BLOCK, 18);

    brk_len = 3 * page;
    brk_start = sbrk((intptr_t)brk_len);
    CHECK(brk_start != (void *)-1, "sbrk(%zu): %s", brk_len, strerror(errno));
    fill(brk_start, brk_len, 19);
}

static void check(void) {
    expect("private anonymous r--", anon_r, len, 1);
    expect_vma("private anonymous r--", anon_r, len, "r--p", 0);

    expect("private anonymous rw-", anon_rw, len, 2);
    expect_vma("private anonymous rw-", anon_rw, len, "rw-p", 0);
    fill(anon_rw, len, 20);
    expect("private anonymous rw- written again", anon_rw, len, 20);

#if defined(__x86_64__)
    static unsigned char want_rx[PAGES * 65536];
    fill(want_rx, len, 3);
    memcpy(want_rx + page, forty_two, sizeof forty_two);
    CHECK(memcmp(anon_rx, want_rx, len) == 0, "private anonymous r-x: content differs");
    int (*fn)(void) = (int (*)(void))(void *)(anon_rx + page);
    CHECK(fn() == 42, "code in the r-x mapping: expected 42, got %d", fn());
#else
    expect("private anonymous r-x", anon_rx, len, 3);
#endif
    expect_vma("private anonymous r-x", anon_rx, len, "r-xp", 0);

    expect_vma("private anonymous ---", anon_none, len, "---p", 0);
    SYS(mprotect(anon_none, len, PROT_READ));
    for (size_t i = 0; i < len; i += 64)
        CHECK(anon_none[i] == 0, "never-written PROT_NONE page: byte %zu: expected 0, got %d", i,
              anon_none[i]);

    expect_vma("private anonymous -w-", anon_w, len, "-w-p", 0);
    SYS(mprotect(anon_w, len, PROT_READ | PROT_WRITE));
    expect("private anonymous -w-", anon_w, len, 5);

    expect("shared anonymous rw-", shared_anon, len, 6);
    expect_vma("shared anonymous rw-", shared_anon, len, "rw-s", 0);

    expect("mapping split by mprotect", split, 8 * page, 7);
    expect_vma("split mapping, pages 0-1", split, 2 * page, "rw-p", 0);
    expect_vma("split mapping, pages 2-4", split + 2 * page, 3 * page, "r--p", 1);
    expect_vma("split mapping, pages 5-7", split + 5 * page, 3 * page, "rw-p", 0);

    expect_vma("PROT_NONE mapping holding data", hidden, len, "---p", 0);
    SYS(mprotect(hidden, len, PROT_READ));
    expect("PROT_NONE mapping holding data", hidden, len, 8);

    expect("MAP_GROWSDOWN mapping", growsdown, len, 9);
    expect_vmflag("MAP_GROWSDOWN mapping", growsdown, "gd");

    expect("sparse mapping, first page", sparse, page, 10);
    expect("sparse mapping, a page in the middle", sparse + SPARSE_SIZE / 3 / page * page, page, 11);
    expect("sparse mapping, last page", sparse + SPARSE_SIZE - page, page, 12);
    for (size_t i = 0; i < page; i += 64)
        CHECK(sparse[SPARSE_SIZE / 2 + i] == 0,
              "sparse mapping, an untouched page: byte %zu: expected 0, got %d", i,
              sparse[SPARSE_SIZE / 2 + i]);
    expect_vmflag("MAP_NORESERVE mapping", sparse, "nr");
    char rss[64];
    smaps_field(sparse, "Rss:", rss, sizeof rss);
    long rss_kb = strtol(rss, NULL, 10);
    CHECK(rss_kb < 16 * 1024,
          "sparse 1 GiB mapping with 3 pages written: expected under 16 MiB resident, got %ld kB",
          rss_kb);

    unsigned char file_page[65536];
    CHECK(page <= sizeof file_page, "page too big");
    for (int i = 0; i < PAGES; i++) {
        char what[64];
        snprintf(what, sizeof what, "private file mapping, page %d", i);
        if (i == 1 || i == 3) {
            expect(what, file_private + (size_t)i * page, page, i == 1 ? 14 : 15);
        } else {
            CHECK(pread(private_fd, file_page, page, (off_t)((size_t)(i + 1) * page)) ==
                      (ssize_t)page,
                  "pread maps-private.data");
            CHECK(memcmp(file_page, file_private + (size_t)i * page, page) == 0,
                  "%s: expected the file's bytes at offset %zu", what, (size_t)(i + 1) * page);
        }
    }
    expect_file("maps-private.data (private writes must not reach it)", private_fd,
                (PAGES + 1) * page, 13);
    expect_file_vma("private file mapping", file_private, "rw-p", "/maps-private.data", page);

    expect("shared file mapping", file_shared, len, 17);
    expect("second shared mapping of the same file", file_shared_twin, len, 17);
    expect("read-only shared mapping of the file", file_shared_ro, len, 17);
    expect_file("maps-shared.data", shared_fd, len, 17);
    expect_file_vma("shared file mapping", file_shared, "rw-s", "/maps-shared.data", 0);
    expect_file_vma("read-only shared file mapping", file_shared_ro, "r--s", "/maps-shared.data", 0);
    /* Still the file, and still one page cache: a write through one mapping
     * is seen through the others and by read(2). */
    fill(file_shared, len, 21);
    expect("second shared mapping after a write through the first", file_shared_twin, len, 21);
    expect("read-only shared mapping after a write", file_shared_ro, len, 21);
    expect_file("maps-shared.data after a write through its mapping", shared_fd, len, 21);

    for (int i = 0; i < SMALL_BLOCKS; i++) {
        char what[64];
        snprintf(what, sizeof what, "malloc'ed block %d", i);
        expect(what, small_blocks[i], 16 + (size_t)(i % 13) * 24, 100 + (unsigned)i);
    }
    expect("large malloc'ed block", big_block, BIG_BLOCK, 18);
    for (int i = 0; i < SMALL_BLOCKS; i += 2)
        free(small_blocks[i]);
    free(big_block);
    unsigned char *fresh = malloc(1 << 20);
    CHECK(fresh != NULL, "malloc after the restore failed");
    fill(fresh, 1 << 20, 22);
    expect("block malloc'ed after the restore", fresh, 1 << 20, 22);
    free(fresh);

    expect("memory from sbrk", brk_start, brk_len, 19);
    unsigned char *more = sbrk((intptr_t)(2 * page));
    CHECK(more != (void *)-1, "sbrk(%zu) after the restore: %s", 2 * page, strerror(errno));
    fill(more, 2 * page, 23);
    expect("memory from sbrk after the restore", more, 2 * page, 23);
    expect("memory from sbrk, again", brk_start, brk_len, 19);
}

/* Each frame holds 48 bytes of its own; the checkpoint happens DEPTH frames
 * down, and every frame checks its bytes on the way back up. */
static int recurse(int depth) {
    volatile unsigned char local[48];
    for (size_t i = 0; i < sizeof local; i++)
        local[i] = pat(1000 + (unsigned)depth, i);
    int below;
    if (depth < DEPTH) {
        below = recurse(depth + 1);
    } else {
        ckpt_ready_then_wait_go();
        check();
        below = 0;
    }
    for (size_t i = 0; i < sizeof local; i++)
        CHECK(local[i] == pat(1000 + (unsigned)depth, i),
              "stack frame at depth %d: byte %zu: expected 0x%02x, got 0x%02x", depth, i,
              pat(1000 + (unsigned)depth, i), local[i]);
    return below + 1;
}

int main(void) {
    setup();
    int frames = recurse(0);
    CHECK(frames == DEPTH + 1, "recursion: expected %d frames, got %d", DEPTH + 1, frames);
    ckpt_ok();
}
