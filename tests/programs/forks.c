/* Processes: two forked children that print and exit with distinct codes,
 * one more made through syscall(SYS_fork), a child that sends random bytes
 * to its parent through a pipe, and two programs started with posix_spawn. */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static unsigned int random_u32(void) {
    unsigned int v = 0;
    if (getrandom(&v, sizeof v, 0) != sizeof v) {
        perror("getrandom");
        _exit(100);
    }
    return v;
}

static void report(const char *what, pid_t pid, pid_t waited, int status) {
    printf("%s pid=%d waited=%d", what, (int)pid, (int)waited);
    if (WIFEXITED(status))
        printf(" exited %d\n", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        printf(" killed by %d\n", WTERMSIG(status));
    else
        printf(" status %#x\n", status);
}

static pid_t child(int n, int code) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(1);
    }
    if (pid == 0) {
        printf("child%d pid %d parent %d random %u\n", n, (int)getpid(), (int)getppid(),
               random_u32());
        fflush(stdout);
        _exit(code);
    }
    return pid;
}

static pid_t spawn(char *const argv[]) {
    fflush(stdout);
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], NULL, NULL, argv, environ);
    if (rc != 0) {
        printf("posix_spawn %s failed: %d\n", argv[0], rc);
        exit(1);
    }
    return pid;
}

int main(void) {
    printf("parent pid %d\n", (int)getpid());

    pid_t a = child(1, 3);
    pid_t b = child(2, 5);
    int status;
    pid_t w = waitpid(a, &status, 0);
    report("child1", a, w, status);
    w = waitpid(b, &status, 0);
    report("child2", b, w, status);

    /* syscall() itself: the child returns where the call was made. */
    fflush(stdout);
    pid_t f = (pid_t)syscall(SYS_fork);
    if (f < 0) {
        perror("syscall(SYS_fork)");
        return 1;
    }
    if (f == 0) {
        printf("raw child pid %d parent %d random %u\n", (int)getpid(), (int)getppid(),
               random_u32());
        fflush(stdout);
        _exit(9);
    }
    w = waitpid(f, &status, 0);
    report("raw child", f, w, status);

    int fds[2];
    if (pipe(fds) < 0) {
        perror("pipe");
        return 1;
    }
    fflush(stdout);
    pid_t c = fork();
    if (c < 0) {
        perror("fork");
        return 1;
    }
    if (c == 0) {
        close(fds[0]);
        unsigned char bytes[16];
        if (getrandom(bytes, sizeof bytes, 0) != sizeof bytes)
            _exit(101);
        ssize_t off = 0;
        while (off < (ssize_t)sizeof bytes) {
            ssize_t n = write(fds[1], bytes + off, sizeof bytes - (size_t)off);
            if (n <= 0)
                _exit(102);
            off += n;
        }
        _exit(7);
    }
    close(fds[1]);
    unsigned char got[64];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof got && (n = read(fds[0], got + len, sizeof got - len)) > 0)
        len += (size_t)n;
    close(fds[0]);
    printf("pipe %zu bytes ", len);
    for (size_t i = 0; i < len; i++)
        printf("%02x", got[i]);
    printf("\n");
    w = waitpid(c, &status, 0);
    report("pipe child", c, w, status);

    char *echo_argv[] = {"/bin/echo", "spawned", "echo", NULL};
    pid_t e = spawn(echo_argv);
    w = waitpid(e, &status, 0);
    report("echo", e, w, status);

    char *date_argv[] = {"/bin/date", "+%N", NULL};
    pid_t d = spawn(date_argv);
    w = waitpid(d, &status, 0);
    report("date", d, w, status);
    return 0;
}
