/* Process attributes survive a restore: resource limits (RLIMIT_NOFILE soft
 * limit lowered to 123, RLIMIT_CORE changed), the umask (027, and a file
 * created with mode 0666 gets 0640), the working directory (a directory the
 * program made inside the one it started in; relative paths still resolve
 * there) and the nice value. */
#define CKPT_KIND "rlimit_umask_cwd"
#include "ckpt.h"

#include <fcntl.h>
#include <limits.h>
#include <sys/resource.h>
#include <sys/stat.h>

static void expect_limit(const char *what, int resource, struct rlimit want) {
    struct rlimit got;
    SYS(getrlimit(resource, &got));
    CHECK(got.rlim_cur == want.rlim_cur && got.rlim_max == want.rlim_max,
          "%s: expected soft %llu hard %llu, got soft %llu hard %llu", what,
          (unsigned long long)want.rlim_cur, (unsigned long long)want.rlim_max,
          (unsigned long long)got.rlim_cur, (unsigned long long)got.rlim_max);
}

int main(void) {
    struct rlimit nofile;
    SYS(getrlimit(RLIMIT_NOFILE, &nofile));
    nofile.rlim_cur = 123;
    SYS(setrlimit(RLIMIT_NOFILE, &nofile));

    struct rlimit core;
    SYS(getrlimit(RLIMIT_CORE, &core));
    core.rlim_cur = core.rlim_max == RLIM_INFINITY ? 12345 * 1024 : core.rlim_max / 2;
    SYS(setrlimit(RLIMIT_CORE, &core));

    umask(027);

    char dir[] = "ckpt-cwd-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno));
    char sub[PATH_MAX];
    snprintf(sub, sizeof sub, "%s/inner", dir);
    SYS(mkdir(sub, 0755));
    SYS(chdir(sub));
    char cwd[PATH_MAX];
    CHECK(getcwd(cwd, sizeof cwd) != NULL, "getcwd: %s", strerror(errno));
    int fd = (int)SYS(open("marker", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    close(fd);

    errno = 0;
    int nice_before = nice(3);
    CHECK(nice_before != -1 || errno == 0, "nice(3): %s", strerror(errno));

    ckpt_ready_then_wait_go();

    expect_limit("RLIMIT_NOFILE", RLIMIT_NOFILE, nofile);
    expect_limit("RLIMIT_CORE", RLIMIT_CORE, core);

    mode_t mask = umask(027);
    CHECK(mask == 027, "umask: expected 027, got %03o", (unsigned)mask);
    fd = (int)SYS(open("created-after", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666));
    struct stat st;
    SYS(fstat(fd, &st));
    close(fd);
    CHECK((st.st_mode & 0777) == 0640,
          "a file created with mode 0666 under umask 027: expected 0640, got %03o",
          (unsigned)(st.st_mode & 0777));

    char now[PATH_MAX];
    CHECK(getcwd(now, sizeof now) != NULL, "getcwd: %s", strerror(errno));
    CHECK(strcmp(now, cwd) == 0, "getcwd: expected \"%s\", got \"%s\"", cwd, now);
    CHECK(access("marker", F_OK) == 0, "relative path \"marker\" in the working directory: %s",
          strerror(errno));
    char link[PATH_MAX];
    ssize_t ll = readlink("/proc/self/cwd", link, sizeof link - 1);
    CHECK(ll > 0, "readlink /proc/self/cwd: %s", strerror(errno));
    link[ll] = '\0';
    CHECK(strcmp(link, cwd) == 0, "/proc/self/cwd: expected \"%s\", got \"%s\"", cwd, link);

    errno = 0;
    int nice_now = getpriority(PRIO_PROCESS, 0);
    CHECK(errno == 0, "getpriority: %s", strerror(errno));
    CHECK(nice_now == nice_before, "nice value: expected %d, got %d", nice_before, nice_now);
    ckpt_ok();
}
