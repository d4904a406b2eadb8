/* Runs argv[1..] with its stdout on /dev/null and prints "SECONDS PEAK_RSS_KIB" of that run: its
 * wall time and its own ru_maxrss. A process started straight from the bench would not do: at
 * exec Linux keeps the peak RSS of the memory it was forked (or vforked) from, and the bench
 * holds a buffer as large as the heap. This launcher is small, so its child starts from nearly
 * nothing. Exits with the child's status. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 125;
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    pid_t pid = fork();
    if (pid < 0) return 126;
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null < 0 || dup2(null, 1) < 0) _exit(126);
        execv(argv[1], argv + 1);
        _exit(127);
    }
    int status;
    struct rusage usage;
    if (wait4(pid, &status, 0, &usage) != pid) return 126;
    clock_gettime(CLOCK_MONOTONIC, &end);
    printf("%.6f %ld\n", (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9,
           usage.ru_maxrss);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
