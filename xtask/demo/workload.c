/* The built-in demo workload of `cargo xtask demo`: a heap that moves through phases, over and
 * over, so that `pagealloc watch` shows it change. The main thread and three threads (each with
 * an arena of its own) go together through
 *   growth         chunks of mixed sizes allocated steadily, a few of them large enough to be
 *                  mmapped;
 *   fragmentation  two of every three chunks freed, in a scattered order: holes everywhere,
 *                  tcache and fastbins filled, the bins long;
 *   trim           malloc_trim(0): the free pages given back, the holes kept;
 *   release        everything freed.
 * A 4 MiB MADV_HUGEPAGE region stays for the page map. Prints "ready" and runs until stdin
 * closes. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define THREADS 3
#define PHASE_MS 4000
#define STEP_MS 100
#define STEPS (PHASE_MS / STEP_MS)
#define PER_STEP 1500
#define SLOTS (STEPS * PER_STEP)

enum { GROWTH, FRAGMENTATION, TRIM, RELEASE, PHASES };

static atomic_int phase;
static atomic_int stop;

static void pause_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* One thread's part: the chunks it holds, through each phase as the main thread sets it. */
static void run(unsigned seed, int main_thread) {
    void **held = mmap(NULL, SLOTS * sizeof *held, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (held == MAP_FAILED) return;
    memset(held, 0, SLOTS * sizeof *held);
    unsigned count = 0;
    int done = -1;
    while (!atomic_load(&stop)) {
        int now = atomic_load(&phase);
        if (now == GROWTH && count < SLOTS) {
            for (unsigned i = 0; i < PER_STEP && count < SLOTS; i++, count++) {
                unsigned r = (count + seed) * 2654435761u;
                size_t size = (r % 97 == 0) ? 200000 + r % 100000 : 16 + (r >> 8) % 600;
                held[count] = malloc(size);
                if (held[count]) memset(held[count], 0xab, size);
            }
        } else if (now != done) {
            if (now == FRAGMENTATION)
                for (unsigned i = 0; i < count; i++)
                    if ((i * 7 + seed) % 3 != 0) {
                        free(held[i]);
                        held[i] = NULL;
                    }
            if (now == TRIM && main_thread) malloc_trim(0);
            if (now == RELEASE) {
                for (unsigned i = 0; i < count; i++) free(held[i]);
                memset(held, 0, count * sizeof *held);
                count = 0;
            }
            done = now;
        }
        if (now == GROWTH) done = -1;
        pause_ms(STEP_MS);
    }
}

static void *worker(void *arg) {
    run((unsigned)(uintptr_t)arg * 7919, 0);
    return NULL;
}

static void *conductor(void *arg) {
    (void)arg;
    for (int next = 1; !atomic_load(&stop); next = (next + 1) % PHASES) {
        for (int ms = 0; ms < PHASE_MS && !atomic_load(&stop); ms += STEP_MS) pause_ms(STEP_MS);
        atomic_store(&phase, next);
    }
    return NULL;
}

static void *stdin_watcher(void *arg) {
    (void)arg;
    char c;
    while (read(0, &c, 1) > 0) {
    }
    atomic_store(&stop, 1);
    return NULL;
}

int main(void) {
    size_t huge_size = 4 << 20;
    char *huge = mmap(NULL, huge_size * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    if (huge != MAP_FAILED) {
        char *aligned = (char *)(((uintptr_t)huge + (2 << 20) - 1) & ~(uintptr_t)((2 << 20) - 1));
        madvise(aligned, huge_size, MADV_HUGEPAGE);
        memset(aligned, 0x11, huge_size);
    }
    pthread_t threads[THREADS + 2];
    for (uintptr_t i = 0; i < THREADS; i++)
        pthread_create(&threads[i], NULL, worker, (void *)(i + 1));
    pthread_create(&threads[THREADS], NULL, conductor, NULL);
    pthread_create(&threads[THREADS + 1], NULL, stdin_watcher, NULL);
    if (write(1, "ready\n", 6) != 6) return 1;
    run(0, 1);
    for (int i = 0; i < THREADS + 2; i++) pthread_join(threads[i], NULL);
    return 0;
}
