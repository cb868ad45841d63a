/* Asynchronous signals: SIGALRM from alarm() and from an interval timer,
 * caught while the program waits in pause() and in a blocking read(), and
 * SIGCHLD from a child that exits. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t alarms;
static volatile sig_atomic_t chlds;

static void on_alarm(int sig) {
    (void)sig;
    alarms++;
}

static void on_chld(int sig) {
    (void)sig;
    chlds++;
}

static void stamp(const char *what, long n) {
    struct timespec m, r;
    clock_gettime(CLOCK_MONOTONIC, &m);
    clock_gettime(CLOCK_REALTIME, &r);
    printf("%s %ld mono %lld.%09ld real %lld.%09ld\n", what, n, (long long)m.tv_sec, m.tv_nsec,
           (long long)r.tv_sec, r.tv_nsec);
}

static void set_timer(long usec) {
    struct itimerval it;
    memset(&it, 0, sizeof it);
    it.it_value.tv_usec = usec;
    it.it_interval.tv_usec = usec;
    if (setitimer(ITIMER_REAL, &it, NULL) < 0) {
        perror("setitimer");
        _exit(1);
    }
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: a blocking read returns EINTR */
    sigaction(SIGALRM, &sa, NULL);
    sa.sa_handler = on_chld;
    sigaction(SIGCHLD, &sa, NULL);

    stamp("start", 0);

    /* alarm(): one SIGALRM after a second, caught in pause(). */
    alarm(1);
    while (alarms < 1)
        pause();
    stamp("alarm", alarms);

    /* An interval timer, caught in pause(). */
    set_timer(20000);
    while (alarms < 4) {
        pause();
        stamp("tick", alarms);
    }

    /* The same timer interrupting a blocking read of a pipe nobody writes. */
    int fds[2];
    if (pipe(fds) < 0) {
        perror("pipe");
        return 1;
    }
    for (int i = 0; i < 3; i++) {
        char c;
        ssize_t n = read(fds[0], &c, 1);
        int err = errno;
        printf("read ret=%zd %s\n", n, n < 0 ? strerror(err) : "data");
        stamp("read woke", alarms);
    }
    set_timer(0);
    close(fds[0]);
    close(fds[1]);

    /* SIGCHLD from a child that exits, waited for with sigsuspend. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGCHLD);
    sigprocmask(SIG_BLOCK, &block, &old);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        struct timespec d = {0, 10000000};
        nanosleep(&d, NULL);
        _exit(9);
    }
    while (chlds == 0)
        sigsuspend(&old);
    sigprocmask(SIG_SETMASK, &old, NULL);
    stamp("sigchld", chlds);
    int status = 0;
    pid_t w = waitpid(pid, &status, 0);
    printf("child waited=%d same=%d exited=%d code=%d\n", (int)w, w == pid, WIFEXITED(status),
           WEXITSTATUS(status));

    printf("alarms %d chlds %d\n", (int)alarms, (int)chlds);
    return 0;
}
