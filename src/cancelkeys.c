#include "cancelkeys.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "hashtable.h"

struct cancel_key {
    UT_hash_handle hh;
    size_t len;
    uint8_t real[PG_BACKEND_KEY_MAX];
    uint8_t given[]; /* the hash key */
};

struct cancel_keys {
    pthread_mutex_t lock;
    struct cancel_key *keys;
};

struct cancel_keys *cancel_keys_new(void)
{
    struct cancel_keys *m = calloc(1, sizeof(*m));

    if (m)
        pthread_mutex_init(&m->lock, NULL);
    return m;
}

void cancel_keys_free(struct cancel_keys *m)
{
    struct cancel_key *k, *tmp;

    if (!m)
        return;
    HASH_ITER(hh, m->keys, k, tmp) {
        HASH_DELETE(hh, m->keys, k);
        free(k);
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}

bool cancel_keys_add(struct cancel_keys *m, const uint8_t *real, size_t len, uint8_t *given)
{
    if (len < PG_BACKEND_KEY_MIN || len > PG_BACKEND_KEY_MAX)
        return false;
    struct cancel_key *k = malloc(sizeof(*k) + len);
    if (!k)
        return false;
    k->len = len;
    memcpy(k->real, real, len);
    memcpy(k->given, real, 4);
    pthread_mutex_lock(&m->lock);
    for (;;) {
        struct cancel_key *taken;
        /* A secret equal to the real one would let a stale request through. */
        if (RAND_bytes(k->given + 4, (int)(len - 4)) != 1) {
            pthread_mutex_unlock(&m->lock);
            free(k);
            return false;
        }
        HASH_FIND(hh, m->keys, k->given, len, taken);
        if (!taken && memcmp(k->given + 4, real + 4, len - 4) != 0)
            break;
    }
    HASH_ADD(hh, m->keys, given, len, k);
    pthread_mutex_unlock(&m->lock);
    memcpy(given, k->given, len);
    return true;
}

void cancel_keys_remove(struct cancel_keys *m, const uint8_t *given, size_t len)
{
    struct cancel_key *k;

    pthread_mutex_lock(&m->lock);
    HASH_FIND(hh, m->keys, given, len, k);
    if (k)
        HASH_DELETE(hh, m->keys, k);
    pthread_mutex_unlock(&m->lock);
    free(k);
}

bool cancel_keys_translate(struct cancel_keys *m, uint8_t *key, size_t len)
{
    struct cancel_key *k;

    pthread_mutex_lock(&m->lock);
    HASH_FIND(hh, m->keys, key, len, k);
    if (k)
        memcpy(key, k->real, len);
    pthread_mutex_unlock(&m->lock);
    return k != NULL;
}

size_t cancel_keys_count(struct cancel_keys *m)
{
    pthread_mutex_lock(&m->lock);
    size_t n = HASH_COUNT(m->keys);
    pthread_mutex_unlock(&m->lock);
    return n;
}
