/* Open files survive a restore: their offsets, access modes and flags,
 * descriptor numbers, sharing between dup'ed descriptors, and an open file
 * whose name was unlinked. Runs in the current directory. */
#define CKPT_KIND "files"
#include "ckpt.h"

#include <fcntl.h>
#include <sys/stat.h>

#define SIZE 10000

static unsigned char pat(size_t i) {
    return (unsigned char)(i * 7 + 3 + (i >> 8));
}

static const char unlinked_text[] = "the content of a file that has no name any more\n";

static int ro, rw, wo, app, cloexec, plain, dup_a, dup_b, high, other, gone;

static void expect_offset(const char *what, int fd, off_t want) {
    off_t got = lseek(fd, 0, SEEK_CUR);
    CHECK(got == want, "%s (fd %d): offset: expected %lld, got %lld", what, fd, (long long)want,
          (long long)got);
}

/* The next `n` bytes read from `fd` are the file's bytes at `at`. */
static void expect_read(const char *what, int fd, off_t at, size_t n) {
    unsigned char buf[64];
    CHECK(n <= sizeof buf, "read too long");
    ssize_t got = read(fd, buf, n);
    CHECK(got == (ssize_t)n, "%s (fd %d): read %zu bytes: got %zd (%s)", what, fd, n, got,
          got < 0 ? strerror(errno) : "short");
    for (size_t i = 0; i < n; i++)
        CHECK(buf[i] == pat((size_t)at + i), "%s (fd %d): byte at offset %lld: expected 0x%02x, got 0x%02x",
              what, fd, (long long)at + (long long)i, pat((size_t)at + i), buf[i]);
}

static void expect_flags(const char *what, int fd, int accmode, int set, int clear) {
    int fl = (int)SYS(fcntl(fd, F_GETFL));
    CHECK((fl & O_ACCMODE) == accmode, "%s (fd %d): access mode: expected %d, got %d", what, fd,
          accmode, fl & O_ACCMODE);
    CHECK((fl & set) == set, "%s (fd %d): F_GETFL 0x%x lacks 0x%x", what, fd, fl, set);
    CHECK((fl & clear) == 0, "%s (fd %d): F_GETFL 0x%x has 0x%x", what, fd, fl, clear & fl);
}

static void expect_cloexec(const char *what, int fd, int want) {
    int fd_flags = (int)SYS(fcntl(fd, F_GETFD));
    CHECK(!!(fd_flags & FD_CLOEXEC) == want, "%s (fd %d): FD_CLOEXEC: expected %s, got %s", what,
          fd, want ? "set" : "clear", want ? "clear" : "set");
}

static void read_file(const char *name, char *buf, size_t cap) {
    int fd = (int)SYS(open(name, O_RDONLY | O_CLOEXEC));
    ssize_t n = read(fd, buf, cap - 1);
    CHECK(n >= 0, "read %s: %s", name, strerror(errno));
    buf[n] = '\0';
    close(fd);
}

int main(void) {
    static unsigned char data[SIZE];
    for (size_t i = 0; i < SIZE; i++)
        data[i] = pat(i);
    int w = (int)SYS(open("files.data", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    CHECK(write(w, data, SIZE) == SIZE, "write files.data");
    close(w);

    ro = (int)SYS(open("files.data", O_RDONLY));
    SYS(lseek(ro, 1234, SEEK_SET));
    expect_read("O_RDONLY file", ro, 1234, 10);

    rw = (int)SYS(open("files.data", O_RDWR));
    SYS(lseek(rw, 4097, SEEK_SET));

    wo = (int)SYS(open("files.data", O_WRONLY));
    SYS(lseek(wo, 777, SEEK_SET));

    w = (int)SYS(open("append.log", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    CHECK(write(w, "line 1\n", 7) == 7, "write append.log");
    close(w);
    app = (int)SYS(open("append.log", O_WRONLY | O_APPEND));
    SYS(lseek(app, 2, SEEK_SET));

    cloexec = (int)SYS(open("files.data", O_RDONLY | O_CLOEXEC));
    plain = (int)SYS(open("files.data", O_RDONLY));

    /* Two descriptors on one open file: one offset. A third, opened
     * separately, has its own. */
    dup_a = (int)SYS(open("files.data", O_RDONLY));
    dup_b = (int)SYS(dup(dup_a));
    high = (int)SYS(dup2(dup_a, 200));
    SYS(lseek(dup_a, 100, SEEK_SET));
    other = (int)SYS(open("files.data", O_RDONLY));
    SYS(lseek(other, 5000, SEEK_SET));

    w = (int)SYS(open("gone.data", O_RDWR | O_CREAT | O_TRUNC, 0600));
    CHECK(write(w, unlinked_text, sizeof unlinked_text - 1) == sizeof unlinked_text - 1,
          "write gone.data");
    SYS(unlink("gone.data"));
    gone = w;
    SYS(lseek(gone, 4, SEEK_SET));

    ckpt_ready_then_wait_go();

    expect_offset("O_RDONLY file", ro, 1244);
    expect_flags("O_RDONLY file", ro, O_RDONLY, 0, O_APPEND | O_NONBLOCK);
    expect_read("O_RDONLY file", ro, 1244, 10);

    expect_offset("O_RDWR file", rw, 4097);
    expect_flags("O_RDWR file", rw, O_RDWR, 0, O_APPEND);
    expect_read("O_RDWR file", rw, 4097, 3);
    CHECK(write(rw, "\x01\x02", 2) == 2, "write to the O_RDWR file: %s", strerror(errno));
    expect_offset("O_RDWR file after a write", rw, 4102);

    expect_offset("O_WRONLY file", wo, 777);
    expect_flags("O_WRONLY file", wo, O_WRONLY, 0, O_APPEND);

    expect_flags("O_APPEND file", app, O_WRONLY, O_APPEND, 0);
    CHECK(write(app, "line 2\n", 7) == 7, "write to the O_APPEND file: %s", strerror(errno));
    char text[64];
    read_file("append.log", text, sizeof text);
    CHECK(strcmp(text, "line 1\nline 2\n") == 0,
          "append.log after a write through the O_APPEND descriptor: expected \"line 1\\nline "
          "2\\n\", got \"%s\"",
          text);

    expect_cloexec("file opened O_CLOEXEC", cloexec, 1);
    expect_cloexec("file opened without O_CLOEXEC", plain, 0);
    expect_cloexec("dup'ed descriptor", dup_b, 0);

    expect_offset("descriptor", dup_a, 100);
    expect_offset("its dup", dup_b, 100);
    expect_offset("its dup2 at 200", high, 100);
    CHECK(high == 200, "dup2 target: expected 200, got %d", high);
    expect_read("descriptor", dup_a, 100, 5);
    expect_offset("its dup, after a read through the descriptor (shared offset)", dup_b, 105);
    expect_offset("its dup2 at 200, after a read through the descriptor", high, 105);
    expect_read("dup'ed descriptor", dup_b, 105, 5);
    expect_offset("descriptor, after a read through its dup", dup_a, 110);
    expect_offset("separately opened descriptor of the same file", other, 5000);
    expect_read("separately opened descriptor", other, 5000, 8);
    expect_offset("descriptor, after a read through another open file", dup_a, 110);

    struct stat st;
    SYS(fstat(gone, &st));
    CHECK(st.st_nlink == 0, "unlinked open file: link count: expected 0, got %lu",
          (unsigned long)st.st_nlink);
    CHECK(access("gone.data", F_OK) == -1 && errno == ENOENT,
          "unlinked open file: expected gone.data not to exist, it does");
    CHECK(st.st_size == sizeof unlinked_text - 1, "unlinked open file: size: expected %zu, got %lld",
          sizeof unlinked_text - 1, (long long)st.st_size);
    expect_offset("unlinked open file", gone, 4);
    char content[sizeof unlinked_text];
    CHECK(pread(gone, content, sizeof unlinked_text - 1, 0) == sizeof unlinked_text - 1,
          "pread the unlinked file: %s", strerror(errno));
    content[sizeof unlinked_text - 1] = '\0';
    CHECK(strcmp(content, unlinked_text) == 0, "unlinked open file: expected \"%s\", got \"%s\"",
          unlinked_text, content);
    char link[512], fdpath[64];
    snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", gone);
    ssize_t ll = readlink(fdpath, link, sizeof link - 1);
    CHECK(ll > 0, "readlink %s: %s", fdpath, strerror(errno));
    link[ll] = '\0';
    CHECK(strstr(link, "gone.data (deleted)") != NULL,
          "%s: expected a link ending \"gone.data (deleted)\", got \"%s\"", fdpath, link);

    ckpt_ok();
}
