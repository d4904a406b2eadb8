/* The built-in demo workload of `cargo xtask demo`: a visible mix of what pagealloc shows.
 * Main thread: ~20,000 chunks of mixed sizes with every third one freed (tcache, fastbins, bins),
 * four mmapped chunks of 1 MiB; three threads with their own arenas doing the same at smaller
 * scale; a 4 MiB MADV_HUGEPAGE region. Prints "ready" and waits until stdin closes. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define THREADS 3

static pthread_barrier_t allocated, finish;

static void churn(unsigned count, unsigned seed) {
    void **chunks = malloc(count * sizeof *chunks);
    for (unsigned i = 0; i < count; i++) {
        size_t size = 16 + ((i * 2654435761u + seed) % 97) * ((i % 50 == 0) ? 120 : 8);
        chunks[i] = malloc(size);
        memset(chunks[i], 0xab, size);
    }
    for (unsigned i = 0; i < count; i += 3) free(chunks[i]);
}

static void *worker(void *arg) {
    churn(4000, (unsigned)(uintptr_t)arg);
    pthread_barrier_wait(&allocated);
    pthread_barrier_wait(&finish);
    return NULL;
}

int main(void) {
    pthread_barrier_init(&allocated, NULL, THREADS + 1);
    pthread_barrier_init(&finish, NULL, THREADS + 1);
    pthread_t threads[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, worker, (void *)i);
    churn(20000, 7);
    for (int i = 0; i < 4; i++) memset(malloc(1 << 20), 1, 1 << 20);
    size_t huge_size = 4 << 20;
    char *huge = mmap(NULL, huge_size * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *aligned = (char *)(((uintptr_t)huge + (2 << 20) - 1) & ~(uintptr_t)((2 << 20) - 1));
    madvise(aligned, huge_size, MADV_HUGEPAGE);
    memset(aligned, 0x11, huge_size);
    pthread_barrier_wait(&allocated);
    if (write(1, "ready\n", 6) != 6) return 1;
    char c;
    while (read(0, &c, 1) > 0) {
    }
    pthread_barrier_wait(&finish);
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    return 0;
}
