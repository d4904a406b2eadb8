/* The program of `cargo xtask bench serve`: a process that holds a heap and stays quiet, one of
 * the processes `pagealloc serve` follows while it is scraped.
 *
 *   held NAME CHUNKS THREADS
 *
 * Names itself NAME (its comm, what `serve --comm` matches), then the main thread and THREADS
 * more threads (each with its own arena) each allocate CHUNKS chunks of mixed sizes (most
 * 16-256 bytes, some up to 4 KiB, a few up to 64 KiB) and free every third one, so that the
 * heap holds live chunks, tcache, fastbin and bin chunks. Then it prints "ready" and does
 * nothing (no allocation, no wake-up) until stdin closes, and exits. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

static unsigned long chunks;
static pthread_barrier_t built;

/* A chunk size from a small deterministic generator: the same heap shape every run. */
static size_t size_of(uint64_t *state) {
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    uint64_t r = *state >> 33;
    unsigned pick = r % 100;
    if (pick < 75) return 16 + r / 100 % 241;    /* 16-256 */
    if (pick < 98) return 257 + r / 100 % 3840;  /* 257-4096 */
    return 4097 + r / 100 % 61440;               /* 4 KiB-64 KiB */
}

static void build(unsigned id) {
    uint64_t state = 0x9e3779b97f4a7c15ULL * (id + 1);
    void **held = malloc(chunks * sizeof *held);
    if (!held) abort();
    for (unsigned long i = 0; i < chunks; i++) {
        size_t size = size_of(&state);
        held[i] = malloc(size);
        if (!held[i]) abort();
        memset(held[i], (int)i, size);
    }
    for (unsigned long i = 0; i < chunks; i += 3) {
        free(held[i]);
        held[i] = NULL;
    }
    /* The others stay held: `held` is never freed. */
}

static void *worker(void *arg) {
    build((unsigned)(uintptr_t)arg);
    pthread_barrier_wait(&built);
    for (;;) pause();
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: held NAME CHUNKS THREADS\n");
        return 2;
    }
    /* Before any thread starts: the threads inherit the name too. */
    if (prctl(PR_SET_NAME, argv[1], 0, 0, 0) != 0) {
        perror("prctl");
        return 1;
    }
    chunks = strtoul(argv[2], NULL, 10);
    unsigned threads = (unsigned)strtoul(argv[3], NULL, 10);
    pthread_barrier_init(&built, NULL, threads + 1);
    for (unsigned t = 0; t < threads; t++) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, worker, (void *)(uintptr_t)(t + 1)) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    build(0);
    pthread_barrier_wait(&built);
    printf("ready\n");
    fflush(stdout);
    char buffer[64];
    while (read(0, buffer, sizeof buffer) > 0) {
    }
    return 0;
}
