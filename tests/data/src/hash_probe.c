/* A hash table over 64 MiB: insert pseudo-random keys, then update the values of random
 * keys, three updates per key (open addressing, 16-byte slots). Its lackey trace is the
 * two-stage experiment's workload: a real program whose accesses spread over 16384 pages,
 * TLB pressure the way a key-value store has it, and a long phase of writes to memory
 * already mapped (where dirty logging bites).
 * Usage: hash_probe [keys] (default 60000). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define SLOTS (1u << 22) /* 4 Mi slots x 16 bytes = 64 MiB */

struct slot { uint64_t key, value; };

static uint64_t mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}

int main(int argc, char **argv) {
    unsigned n = argc > 1 ? (unsigned)atoi(argv[1]) : 60000;
    struct slot *t = calloc(SLOTS, sizeof *t);
    if (!t) return 1;
    for (unsigned i = 1; i <= n; i++) {
        uint64_t k = mix(i), h = k & (SLOTS - 1);
        while (t[h].key) h = (h + 1) & (SLOTS - 1);
        t[h].key = k;
        t[h].value = i;
    }
    uint64_t sum = 0;
    for (unsigned i = 1; i <= 3 * n; i++) {
        uint64_t k = mix(mix(i) % n + 1), h = k & (SLOTS - 1);
        while (t[h].key && t[h].key != k) h = (h + 1) & (SLOTS - 1);
        t[h].value += i;
        sum += t[h].value;
    }
    printf("%llu\n", (unsigned long long)sum);
    return 0;
}
