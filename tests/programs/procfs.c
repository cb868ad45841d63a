/* Reads /proc files that change from run to run, through stdio and read(2). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void via_stdio(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("stdio %s: cannot open\n", path);
        return;
    }
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        printf("stdio %s: %s\n", path, line);
    }
    fclose(f);
}

static void via_read(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        printf("read %s: cannot open\n", path);
        return;
    }
    char buf[8192];
    size_t len = 0;
    ssize_t n;
    while (len < sizeof buf - 1 && (n = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
        len += (size_t)n;
    close(fd);
    buf[len] = 0;
    char *save = NULL;
    for (char *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
        printf("read %s: %s\n", path, l);
}

/* Field 22 of /proc/self/stat is the start time in clock ticks since boot. */
static void start_time(void) {
    FILE *f = fopen("/proc/self/stat", "r");
    char buf[1024];
    if (!f || !fgets(buf, sizeof buf, f)) {
        printf("starttime: cannot read\n");
        if (f)
            fclose(f);
        return;
    }
    fclose(f);
    char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    int field = 2;
    unsigned long long start = 0;
    for (char *t = strtok(p + 1, " "); t; t = strtok(NULL, " ")) {
        if (++field == 22) {
            sscanf(t, "%llu", &start);
            break;
        }
    }
    printf("starttime %llu\n", start);
}

int main(void) {
    const char *files[] = {"/proc/self/stat", "/proc/uptime", "/proc/loadavg", "/proc/self/status"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        via_stdio(files[i]);
        via_read(files[i]);
    }
    start_time();
    return 0;
}
