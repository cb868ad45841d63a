/* Pipes survive a restore: unread data (every byte value, 40000 bytes) with
 * both ends held, data followed by end of file when the write end is closed,
 * O_NONBLOCK on one end only, a pipe's changed capacity. The checkpoint must
 * not consume the data: run without a restore after a checkpoint, the program
 * still reads it all. */
#define CKPT_KIND "pipes"
#include "ckpt.h"

#include <fcntl.h>

#define QUEUED 40000
#define BIG_PIPE (256 * 1024)

static const char closed_text[] = "written before the write end was closed";

static unsigned char pat(size_t i) {
    return (unsigned char)(i ^ (i >> 8) ^ (i >> 16));
}

static void set_nonblock(int fd) {
    int fl = (int)SYS(fcntl(fd, F_GETFL));
    SYS(fcntl(fd, F_SETFL, fl | O_NONBLOCK));
}

static void expect_nonblock(const char *what, int fd, int want) {
    int fl = (int)SYS(fcntl(fd, F_GETFL));
    CHECK(!!(fl & O_NONBLOCK) == want, "%s (fd %d): O_NONBLOCK: expected %s, got %s", what, fd,
          want ? "set" : "clear", want ? "clear" : "set");
}

static void expect_empty(const char *what, int fd) {
    char c;
    ssize_t n = read(fd, &c, 1);
    CHECK(n == -1 && errno == EAGAIN, "%s: expected no more data (EAGAIN), got %zd (%s)", what, n,
          n < 0 ? strerror(errno) : "data");
}

/* Read exactly `len` bytes from a descriptor set O_NONBLOCK. */
static void read_all(const char *what, int fd, unsigned char *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n == -1 && errno == EINTR)
            continue;
        CHECK(n > 0, "%s: after %zu of %zu bytes: read gave %zd (%s)", what, got, len, n,
              n < 0 ? strerror(errno) : "end of file");
        got += (size_t)n;
    }
}

int main(void) {
    static unsigned char data[QUEUED], buf[QUEUED];
    for (size_t i = 0; i < QUEUED; i++)
        data[i] = pat(i);

    int held[2];
    SYS(pipe(held));
    CHECK(write(held[1], data, QUEUED) == QUEUED, "write %d bytes into a pipe: %s", QUEUED,
          strerror(errno));
    set_nonblock(held[0]);

    int closed[2];
    SYS(pipe(closed));
    CHECK(write(closed[1], closed_text, sizeof closed_text) == sizeof closed_text, "write");
    SYS(close(closed[1]));

    int nb[2];
    SYS(pipe(nb));
    set_nonblock(nb[0]);

    int big[2];
    SYS(pipe(big));
    SYS(fcntl(big[1], F_SETPIPE_SZ, BIG_PIPE));
    int big_size = (int)SYS(fcntl(big[0], F_GETPIPE_SZ));
    CHECK(big_size >= BIG_PIPE, "F_GETPIPE_SZ: expected at least %d, got %d", BIG_PIPE, big_size);

    ckpt_ready_then_wait_go();

    expect_nonblock("pipe with unread data, read end", held[0], 1);
    expect_nonblock("pipe with unread data, write end", held[1], 0);
    read_all("pipe with unread data", held[0], buf, QUEUED);
    for (size_t i = 0; i < QUEUED; i++)
        CHECK(buf[i] == data[i], "pipe with unread data: byte %zu: expected 0x%02x, got 0x%02x", i,
              data[i], buf[i]);
    expect_empty("pipe with unread data, once read", held[0]);
    CHECK(write(held[1], "more", 4) == 4, "write into the pipe after the restore: %s",
          strerror(errno));
    char more[5] = {0};
    read_all("pipe, data written after the restore", held[0], (unsigned char *)more, 4);
    CHECK(strcmp(more, "more") == 0, "pipe after the restore: expected \"more\", got \"%s\"", more);

    char text[sizeof closed_text + 8];
    ssize_t n = read(closed[0], text, sizeof text);
    CHECK(n == sizeof closed_text && memcmp(text, closed_text, sizeof closed_text) == 0,
          "pipe with its write end closed: expected \"%s\", got %zd bytes", closed_text, n);
    n = read(closed[0], text, sizeof text);
    CHECK(n == 0, "pipe with its write end closed: expected end of file, got %zd (%s)", n,
          n < 0 ? strerror(errno) : "data");

    expect_nonblock("empty O_NONBLOCK pipe, read end", nb[0], 1);
    expect_nonblock("empty O_NONBLOCK pipe, write end", nb[1], 0);
    expect_empty("empty O_NONBLOCK pipe", nb[0]);

    int size = (int)SYS(fcntl(big[0], F_GETPIPE_SZ));
    CHECK(size == big_size, "pipe capacity (F_GETPIPE_SZ): expected %d, got %d", big_size, size);

    ckpt_ok();
}
