/* Memory through a chain of incremental images: a full checkpoint, then
 * two incremental ones, each after the program changed its memory, and the
 * restore from the last must give the memory as it was then.
 *
 * Before the first checkpoint: a 64 MiB heap block, a 4 MiB mapping and a
 * 1 MiB mapping, each filled with its own pattern. Step 1 (stdin "1"):
 * every 100th page of the block rewritten, one page of it zeroed, the 1 MiB
 * mapping unmapped, a new 2 MiB mapping made and filled. Step 2 ("2"):
 * other pages of the block rewritten, and a mapping made again exactly
 * where the 1 MiB one was, with only its first page written (the rest must
 * read zero: the old content of that address, in the full image, must not
 * come back). Each step prints "stepped N". Then "go" checks it all. */
#define CKPT_KIND "incremental"
#include "ckpt.h"

#include <stdint.h>
#include <sys/mman.h>

#define PAGE 4096ul
#define BLOCK (64ul << 20)
#define SMALL (1ul << 20)

static unsigned char pat(unsigned seed, size_t i) {
    return (unsigned char)(i * 7u + seed * 131u + (i >> 12) * 3u + 1u);
}

static void fill(unsigned char *p, size_t len, unsigned seed) {
    for (size_t i = 0; i < len; i++)
        p[i] = pat(seed, i);
}

static void expect(const char *what, const unsigned char *p, size_t len, unsigned seed) {
    for (size_t i = 0; i < len; i++)
        CHECK(p[i] == pat(seed, i), "%s: byte %zu: expected 0x%02x, got 0x%02x", what, i,
              pat(seed, i), p[i]);
}

static void *map(void *at, size_t len, int flags) {
    void *p = mmap(at, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
    if (p == MAP_FAILED)
        fail("mmap %zu bytes: %s", len, strerror(errno));
    return p;
}

int main(int argc, char **argv) {
    /* With "native", the steps run without waiting (the test's native run). */
    int native = argc > 1 && strcmp(argv[1], "native") == 0;
    unsigned char *block = malloc(BLOCK);
    CHECK(block != NULL, "malloc of 64 MiB failed");
    unsigned char *four = map(NULL, 4ul << 20, 0);
    unsigned char *small = map(NULL, SMALL, 0);
    fill(block, BLOCK, 1);
    fill(four, 4ul << 20, 2);
    fill(small, SMALL, 3);
    printf("ready\n");
    fflush(stdout);

    if (!native)
        ckpt_wait_line("1");
    for (size_t pg = 0; pg < BLOCK / PAGE; pg += 100)
        fill(block + pg * PAGE, PAGE, 10);
    memset(block + 5 * PAGE, 0, PAGE);
    /* Made before the 1 MiB mapping goes, so that it cannot take its place. */
    unsigned char *two = map(NULL, 2ul << 20, 0);
    fill(two, 2ul << 20, 4);
    void *old_small = small;
    SYS(munmap(small, SMALL));
    printf("stepped 1\n");
    fflush(stdout);

    if (!native)
        ckpt_wait_line("2");
    for (size_t pg = 50; pg < BLOCK / PAGE; pg += 100)
        fill(block + pg * PAGE, PAGE, 11);
    unsigned char *again = map(old_small, SMALL, MAP_FIXED);
    fill(again, PAGE, 5);
    printf("stepped 2\n");
    fflush(stdout);

    if (!native)
        ckpt_wait_line("go");
    for (size_t pg = 0; pg < BLOCK / PAGE; pg++) {
        const unsigned char *p = block + pg * PAGE;
        char what[64];
        snprintf(what, sizeof what, "heap block page %zu", pg);
        if (pg == 5) {
            for (size_t i = 0; i < PAGE; i++)
                CHECK(p[i] == 0, "%s: byte %zu: expected 0, got 0x%02x", what, i, p[i]);
        } else if (pg % 100 == 0) {
            expect(what, p, PAGE, 10);
        } else if (pg % 100 == 50) {
            expect(what, p, PAGE, 11);
        } else {
            for (size_t i = 0; i < PAGE; i++)
                CHECK(p[i] == pat(1, pg * PAGE + i), "%s: byte %zu: expected 0x%02x, got 0x%02x",
                      what, i, pat(1, pg * PAGE + i), p[i]);
        }
    }
    expect("the 4 MiB mapping", four, 4ul << 20, 2);
    expect("the 2 MiB mapping made in step 1", two, 2ul << 20, 4);
    expect("the first page of the mapping made again in step 2", again, PAGE, 5);
    for (size_t i = PAGE; i < SMALL; i++)
        CHECK(again[i] == 0,
              "the mapping made again in step 2: byte %zu: expected 0 (never written), got 0x%02x",
              i, again[i]);
    /* The heap still works. */
    void *more = malloc(1 << 20);
    CHECK(more != NULL, "malloc after the restore failed");
    free(more);
    ckpt_ok();
}
