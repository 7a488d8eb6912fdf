/* bench/logs.py's printer: creates argv[3] and waits for argv[4] to exist (so the benchmark
 * can read the supervisor's CPU before the stream), writes its start time (CLOCK_REALTIME,
 * seconds) to argv[2], then argv[1] numbered 100-byte lines to stdout as fast as the pipe takes
 * them, then sleeps (so a supervisor does not restart it while the benchmark reads the files). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: lines N STARTFILE WAITINGFILE GOFILE\n");
        return 2;
    }
    long n = atol(argv[1]);
    FILE *w = fopen(argv[3], "w");
    if (!w) return 1;
    fclose(w);
    while (access(argv[4], F_OK) != 0) usleep(1000);
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    FILE *f = fopen(argv[2], "w");
    if (!f) return 1;
    fprintf(f, "%ld.%09ld\n", (long)t.tv_sec, t.tv_nsec);
    fclose(f);
    static char buf[1 << 16];
    setvbuf(stdout, buf, _IOFBF, sizeof buf);
    char pad[89];
    memset(pad, 'x', 88);
    pad[88] = 0;
    for (long i = 0; i < n; i++)
        printf("%010ld %s\n", i, pad); /* 10 + 1 + 88 + 1 = 100 bytes */
    fflush(stdout);
    for (;;) pause();
}
