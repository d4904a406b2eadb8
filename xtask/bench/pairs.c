/* The program of `cargo xtask bench overhead`: threads doing malloc(size) + free in a loop, so that
 * what a tracer adds to each pair can be read off their time.
 *
 *   pairs THREADS SIZE
 *
 * Starts THREADS worker threads (each does one pair first: its tcache exists before any tracer
 * attaches), prints "ready TID..." (the workers' thread ids, worker 0 first) and waits for lines
 * on stdin:
 *
 *   go PAIRS T    workers 0..T-1 each do PAIRS pairs, all released at once; then prints
 *                 "done T PAIRS ELAPSED_NS CPU_NS": wall time from the release to the last
 *                 worker's end, and the workers' CPU time (user + system) added up.
 *
 * and exits when stdin closes. Nothing allocates outside the loop (no stdio: read and write), so
 * a tracer sees the pairs and nothing else. Built with -fno-builtin-malloc -fno-builtin-free, and
 * each pointer is handed to an empty asm statement as well: the compiler cannot drop the pair. A
 * small SIZE stays in the thread's tcache: malloc's and free's hot path. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static size_t size;
static unsigned threads;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start = PTHREAD_COND_INITIALIZER;
static pthread_cond_t finished = PTHREAD_COND_INITIALIZER;
static unsigned long generation; /* one per "go" */
static unsigned active;          /* workers taking part in this generation */
static unsigned long pairs;      /* per worker */
static unsigned running;         /* workers not yet done */
static int64_t last_end;         /* ns, CLOCK_MONOTONIC */
static int64_t cpu_total;        /* ns, the workers' CPU time */
static int failed;
static pid_t *tids;

static int64_t now(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int pair_loop(unsigned long n) {
    for (unsigned long i = 0; i < n; i++) {
        void *p = malloc(size);
        if (!p) return -1;
        /* The pointer escapes: the pair must happen. */
        __asm__ volatile("" : : "r"(p) : "memory");
        free(p);
    }
    return 0;
}

static void *worker(void *arg) {
    unsigned id = (unsigned)(uintptr_t)arg;
    unsigned long seen = 0;
    tids[id] = gettid();
    for (;;) {
        pthread_mutex_lock(&lock);
        while (generation == seen) pthread_cond_wait(&start, &lock);
        seen = generation;
        int mine = id < active;
        unsigned long n = pairs;
        pthread_mutex_unlock(&lock);
        if (!mine) continue;
        int64_t cpu = now(CLOCK_THREAD_CPUTIME_ID);
        int bad = pair_loop(n);
        int64_t end = now(CLOCK_MONOTONIC);
        cpu = now(CLOCK_THREAD_CPUTIME_ID) - cpu;
        pthread_mutex_lock(&lock);
        if (end > last_end) last_end = end;
        cpu_total += cpu;
        failed |= bad;
        if (--running == 0) pthread_cond_signal(&finished);
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}

static void say(const char *text) {
    size_t len = strlen(text);
    if (write(1, text, len) != (ssize_t)len) exit(3);
}

/* One line from stdin, without stdio; 0 at the end of input. */
static int read_line(char *buf, size_t cap) {
    size_t len = 0;
    for (;;) {
        char c;
        ssize_t n = read(0, &c, 1);
        if (n <= 0) return len > 0;
        if (c == '\n') break;
        if (len + 1 < cap) buf[len++] = c;
    }
    buf[len] = 0;
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        say("usage: pairs THREADS SIZE\n");
        return 2;
    }
    threads = (unsigned)strtoul(argv[1], NULL, 10);
    size = strtoul(argv[2], NULL, 10);
    if (threads == 0 || size == 0) return 2;
    tids = calloc(threads, sizeof *tids);
    if (!tids) return 4;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    for (unsigned i = 0; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, worker, (void *)(uintptr_t)i) != 0) return 4;
    }
    /* Each worker's first pair (tcache set-up), before "ready". */
    pthread_mutex_lock(&lock);
    generation++;
    active = threads;
    pairs = 1;
    running = threads;
    pthread_cond_broadcast(&start);
    while (running > 0) pthread_cond_wait(&finished, &lock);
    pthread_mutex_unlock(&lock);
    char ready[64];
    say("ready");
    for (unsigned i = 0; i < threads; i++) {
        snprintf(ready, sizeof ready, " %d", (int)tids[i]);
        say(ready);
    }
    say("\n");

    char line[128];
    while (read_line(line, sizeof line)) {
        char *rest;
        if (strncmp(line, "go ", 3) != 0) {
            say("error: expected \"go PAIRS THREADS\"\n");
            continue;
        }
        unsigned long n = strtoul(line + 3, &rest, 10);
        unsigned t = (unsigned)strtoul(rest, NULL, 10);
        if (n == 0 || t == 0 || t > threads) {
            say("error: PAIRS must be > 0 and THREADS 1..the threads started\n");
            continue;
        }
        pthread_mutex_lock(&lock);
        active = t;
        pairs = n;
        running = t;
        last_end = 0;
        cpu_total = 0;
        failed = 0;
        int64_t begin = now(CLOCK_MONOTONIC);
        generation++;
        pthread_cond_broadcast(&start);
        while (running > 0) pthread_cond_wait(&finished, &lock);
        int64_t elapsed = last_end - begin;
        int64_t cpu = cpu_total;
        int bad = failed;
        pthread_mutex_unlock(&lock);
        if (bad) {
            say("error: malloc returned NULL\n");
            continue;
        }
        char out[128];
        snprintf(out, sizeof out, "done %u %lu %lld %lld\n", t, n, (long long)elapsed,
                 (long long)cpu);
        say(out);
    }
    return 0;
}
