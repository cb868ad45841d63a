/* The command line, the environment and the process id survive a restore.
 * Started as `ckpt_env first "two words" ""` with CKPT_ENV_VALUE set (see
 * checkpoint.rs); after the restore argv, getenv, /proc/self/cmdline and
 * /proc/self/environ must be what they were, and getpid() and gettid() must
 * return the ids the program saw before the checkpoint. */
#define CKPT_KIND "env"
#include "ckpt.h"

#include <fcntl.h>

static const char *const want_argv[] = {"first", "two words", ""};
static const char want_value[] = "a value = with spaces, and \"quotes\"";

/* Read a whole /proc file; returns its length. */
static size_t slurp(const char *path, char *buf, size_t cap) {
    int fd = (int)SYS(open(path, O_RDONLY | O_CLOEXEC));
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, cap - len);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1)
            fail("read %s: %s", path, strerror(errno));
        if (n == 0)
            break;
        len += (size_t)n;
        CHECK(len < cap, "%s is longer than %zu bytes", path, cap);
    }
    close(fd);
    return len;
}

static void check_command_line(int argc, char **argv) {
    CHECK(argc == 4, "argc: expected 4, got %d", argc);
    for (int i = 1; i < argc; i++)
        CHECK(strcmp(argv[i], want_argv[i - 1]) == 0, "argv[%d]: expected \"%s\", got \"%s\"", i,
              want_argv[i - 1], argv[i]);
    CHECK(argv[argc] == NULL, "argv[%d]: expected NULL", argc);

    /* What ps and /proc show: argv[0..] joined by NUL bytes. */
    static char cmdline[8192];
    char want[8192];
    size_t want_len = 0;
    for (int i = 0; i < argc; i++) {
        size_t l = strlen(argv[i]) + 1;
        CHECK(want_len + l < sizeof want, "command line too long");
        memcpy(want + want_len, argv[i], l);
        want_len += l;
    }
    size_t len = slurp("/proc/self/cmdline", cmdline, sizeof cmdline);
    CHECK(len == want_len && memcmp(cmdline, want, len) == 0,
          "/proc/self/cmdline: expected %zu bytes of argv, got %zu bytes starting \"%.*s\"",
          want_len, len, (int)(len < 64 ? len : 64), cmdline);
}

static void check_environment(void) {
    const char *v = getenv("CKPT_ENV_VALUE");
    CHECK(v != NULL, "getenv(CKPT_ENV_VALUE): expected \"%s\", got NULL", want_value);
    CHECK(strcmp(v, want_value) == 0, "getenv(CKPT_ENV_VALUE): expected \"%s\", got \"%s\"",
          want_value, v);

    static char environ_buf[1 << 16];
    char entry[256];
    snprintf(entry, sizeof entry, "CKPT_ENV_VALUE=%s", want_value);
    size_t len = slurp("/proc/self/environ", environ_buf, sizeof environ_buf);
    int found = 0;
    for (size_t i = 0; i < len; i += strlen(environ_buf + i) + 1)
        if (strcmp(environ_buf + i, entry) == 0)
            found = 1;
    CHECK(found, "/proc/self/environ: expected an entry \"%s\", found none in %zu bytes", entry,
          len);
}

int main(int argc, char **argv) {
    check_command_line(argc, argv);
    check_environment();
    pid_t pid = getpid();
    pid_t tid = gettid();
    CHECK(pid == tid, "gettid() of the main thread: expected %d, got %d", pid, tid);

    ckpt_ready_then_wait_go();

    check_command_line(argc, argv);
    check_environment();
    CHECK(getpid() == pid, "getpid(): expected %d, got %d", pid, getpid());
    CHECK(gettid() == tid, "gettid(): expected %d, got %d", tid, gettid());
    ckpt_ok();
}
