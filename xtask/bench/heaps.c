/* The heaps of `cargo xtask bench snapshot`, one shape per run, ~1 GiB of small chunks each.
 * argv[1]: the shape; argv[2]: the number of chunks (default 10,000,000). Builds the heap,
 * releases its own pointer arrays (so that the heaps are all that is left), prints "ready" and
 * waits until stdin closes. Shapes:
 *   scattered    every fourth chunk freed: tcache, a little of every fastbin, many bins
 *   mass-free    40 % freed in random order, then large mallocs until malloc_consolidate and
 *                the sorting of the unsorted bin (at most 10,000 chunks per malloc) have put
 *                every free chunk in a small or large bin: none in fastbins or unsorted
 *   unsorted     the same mass free, then idle: millions in the seven fastbins, the rest in the
 *                unsorted bin
 *   one-fastbin  every other chunk 32 bytes (the others 128 to 320), all the small ones freed in
 *                random order with tcache full: one fastbin list of millions
 *   arenas       8 threads, each its own arena (and heaps), each the scattered shape with its
 *                share of the chunks; the threads stay alive
 * With argv[3] = "stats" it prints mallinfo2's fastbin bytes and free chunk count to stderr. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define THREADS 8
/* A request no free chunk of these heaps can serve: it goes through the unsorted bin to top. */
#define LARGE_REQUEST (100 * 1024)
/* glibc's MAX_ITERS: _int_malloc sorts at most this many unsorted chunks per call. */
#define SORTED_PER_MALLOC 10000

static unsigned long random_state = 88172645463325252UL;

static unsigned long next_random(void) {
    random_state ^= random_state << 13;
    random_state ^= random_state >> 7;
    random_state ^= random_state << 17;
    return random_state;
}

static void **pointers(unsigned long count) {
    void **p = mmap(NULL, count * sizeof *p, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) exit(1);
    return p;
}

static void *allocate(size_t request) {
    void *q = malloc(request);
    if (!q) exit(2);
    memset(q, 1, 16);
    return q;
}

static void shuffle(void **p, unsigned long count) {
    for (unsigned long i = count; i > 1; i--) {
        unsigned long j = next_random() % i;
        void *t = p[i - 1];
        p[i - 1] = p[j];
        p[j] = t;
    }
}

/* 24..200 bytes requested: chunks of 32..208, ~110 on average. */
static size_t small_request(unsigned long i) { return 24 + (i * 2654435761UL) % 177; }

static void scattered(unsigned long count) {
    void **p = pointers(count);
    for (unsigned long i = 0; i < count; i++) p[i] = allocate(small_request(i));
    for (unsigned long i = 0; i < count; i += 4) free(p[i]);
    munmap(p, count * sizeof *p);
}

static void mass_free(unsigned long count, int consolidate) {
    void **p = pointers(count);
    for (unsigned long i = 0; i < count; i++) p[i] = allocate(small_request(i));
    shuffle(p, count);
    for (unsigned long i = 0; i < count / 5 * 2; i++) free(p[i]);
    munmap(p, count * sizeof *p);
    if (!consolidate) return;
    for (unsigned long i = 0; i < count / SORTED_PER_MALLOC + 2; i++) free(allocate(LARGE_REQUEST));
}

static void one_fastbin(unsigned long count) {
    void **p = pointers(count);
    for (unsigned long i = 0; i < count; i++)
        p[i] = allocate(i % 2 == 0 ? 24 : 120 + (i * 2654435761UL) % 190);
    void **small = p;
    for (unsigned long i = 0; i < count / 2; i++) small[i] = p[2 * i];
    shuffle(small, count / 2);
    for (unsigned long i = 0; i < count / 2; i++) free(small[i]);
    munmap(p, count * sizeof *p);
}

static pthread_barrier_t built;

static void *arena_thread(void *count) {
    scattered((unsigned long)count);
    pthread_barrier_wait(&built);
    for (;;) pause();
    return NULL;
}

static void arenas(unsigned long count) {
    pthread_barrier_init(&built, NULL, THREADS + 1);
    for (int t = 0; t < THREADS; t++) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, arena_thread, (void *)(count / THREADS)) != 0) exit(4);
    }
    pthread_barrier_wait(&built);
}

int main(int argc, char **argv) {
    if (argc < 2) return 5;
    const char *shape = argv[1];
    unsigned long count = argc > 2 ? strtoul(argv[2], NULL, 10) : 10000000UL;
    if (!strcmp(shape, "scattered")) scattered(count);
    else if (!strcmp(shape, "mass-free")) mass_free(count, 1);
    else if (!strcmp(shape, "unsorted")) mass_free(count, 0);
    else if (!strcmp(shape, "one-fastbin")) one_fastbin(count);
    else if (!strcmp(shape, "arenas")) arenas(count);
    else return 5;
    if (argc > 3 && !strcmp(argv[3], "stats")) {
        struct mallinfo2 m = mallinfo2();
        fprintf(stderr, "fastbin bytes %zu, free chunks %zu, free bytes %zu, heap %zu\n",
                m.fsmblks, m.ordblks, m.fordblks, m.arena);
    }
    if (write(1, "ready\n", 6) != 6) return 3;
    char c;
    while (read(0, &c, 1) > 0) {
    }
    return 0;
}
