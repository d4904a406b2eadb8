/* The heap of `cargo xtask bench snapshot`: ~10 million chunks in ~1 GiB of the main arena,
 * every fourth one freed (tcache, fastbins, bins). Prints "ready" and waits until stdin closes.
 * argv[1]: number of chunks (default 10,000,000). */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    unsigned long count = argc > 1 ? strtoul(argv[1], NULL, 10) : 10000000UL;
    void **p = mmap(NULL, count * sizeof *p, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    for (unsigned long i = 0; i < count; i++) {
        /* 24..200 bytes requested: chunks of 32..208, ~110 on average. */
        p[i] = malloc(24 + (i * 2654435761UL) % 177);
        if (!p[i]) return 2;
        memset(p[i], 1, 16);
    }
    for (unsigned long i = 0; i < count; i += 4) free(p[i]);
    if (write(1, "ready\n", 6) != 6) return 3;
    char c;
    while (read(0, &c, 1) > 0) {
    }
    return 0;
}
