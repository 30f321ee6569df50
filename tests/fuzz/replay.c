/*
 * Runs a libFuzzer target without libFuzzer, so that `make check` exercises
 * every target with any compiler (and under the sanitizers): each seed file
 * of the target's corpus (FUZZ_CORPUS, or the directories given as
 * arguments) is fed as is and then in many deterministic mutations.
 * With clang, ./configure --enable-fuzzers builds the real fuzzers instead.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MUTATIONS_PER_SEED 20000
#define REPLAY_MAX_INPUT 65536

static uint32_t next_random(uint32_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    return *state;
}

/* Flips, overwrites, inserts or cuts a few bytes, the way fuzzers do. */
static size_t mutate(uint8_t *buf, size_t len, uint32_t *rng)
{
    int edits = 1 + (int)(next_random(rng) % 4);
    for (int e = 0; e < edits; e++) {
        uint32_t r = next_random(rng);
        size_t at = len ? r % len : 0;
        switch ((r >> 16) % 4) {
        case 0:
            if (len)
                buf[at] ^= (uint8_t)(1u << (r >> 8 & 7));
            break;
        case 1:
            if (len)
                buf[at] = (uint8_t)(r >> 24);
            break;
        case 2:
            if (len < REPLAY_MAX_INPUT) {
                memmove(buf + at + 1, buf + at, len - at);
                buf[at] = (uint8_t)(r >> 24);
                len++;
            }
            break;
        default:
            len = at;
            break;
        }
    }
    return len;
}

static long replay_seed(const char *path, uint32_t *rng)
{
    static uint8_t seed[REPLAY_MAX_INPUT], work[REPLAY_MAX_INPUT];
    FILE *f = fopen(path, "rb");

    if (!f) {
        perror(path);
        exit(1);
    }
    size_t len = fread(seed, 1, sizeof(seed), f);
    fclose(f);
    LLVMFuzzerTestOneInput(seed, len);
    for (int m = 0; m < MUTATIONS_PER_SEED; m++) {
        memcpy(work, seed, len);
        LLVMFuzzerTestOneInput(work, mutate(work, len, rng));
    }
    return MUTATIONS_PER_SEED + 1;
}

static long replay_dir(const char *dir, uint32_t *rng)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    long runs = 0;

    if (!d) {
        perror(dir);
        exit(1);
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        runs += replay_seed(path, rng);
    }
    closedir(d);
    return runs;
}

int main(int argc, char **argv)
{
    uint32_t rng = 2463534242u;
    long runs = 0;

    if (argc == 1)
        runs = replay_dir(FUZZ_CORPUS, &rng);
    for (int i = 1; i < argc; i++)
        runs += replay_dir(argv[i], &rng);
    if (runs == 0) {
        fprintf(stderr, "no seeds found\n");
        return 1;
    }
    printf("%ld inputs run without a crash\n", runs);
    return 0;
}
