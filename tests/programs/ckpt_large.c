/* A large heap: 512 MiB, every page holding its own pattern, so that a
 * full image takes a while to write (the checkpoint given up while it is
 * written, and the one after it). "go" checks every page. */
#define CKPT_KIND "large"
#include "ckpt.h"

#include <stdint.h>

#define LEN (512ul << 20)

static uint64_t word(size_t i) { return i * 0x9e3779b97f4a7c15ull + 1; }

int main(void) {
    uint64_t *heap = malloc(LEN);
    if (!heap)
        fail("malloc of %lu bytes", LEN);
    for (size_t i = 0; i < LEN / 8; i++)
        heap[i] = word(i);
    ckpt_ready_then_wait_go();
    for (size_t i = 0; i < LEN / 8; i++)
        if (heap[i] != word(i))
            fail("word %zu: expected %llu, got %llu", i, (unsigned long long)word(i),
                 (unsigned long long)heap[i]);
    ckpt_ok();
}
