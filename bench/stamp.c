/* The benchmark worker for respawn latency: appends "PID SECONDS.NANOS" (CLOCK_REALTIME, taken
 * first thing after exec) to the file named by argv[1], then sleeps until signalled. The same
 * binary runs under every supervisor, so only the supervisor differs. */
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (argc < 2) return 2;
    char line[64];
    int n = snprintf(line, sizeof line, "%d %lld.%09ld\n", (int)getpid(), (long long)ts.tv_sec, ts.tv_nsec);
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0 || write(fd, line, n) != n) return 1;
    close(fd);
    for (;;) pause();
}
