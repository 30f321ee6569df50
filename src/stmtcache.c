#include "stmtcache.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hashtable.h"

struct stmt_entry {
    UT_hash_handle hh;
    enum stmt_state state;
    uint64_t number;   /* of the name the server knows it by (0: never created) */
    char name[STMTCACHE_NAME_MAX]; /* that name, written once per number */
    uint8_t *types;    /* the Parse's parameter count and types, as sent */
    size_t types_len;
    size_t text_len;
    char text[];       /* the key, NUL-terminated */
};

void stmtcache_init(struct stmtcache *sc, size_t max)
{
    *sc = (struct stmtcache){ .max = max };
}

void stmtcache_free(struct stmtcache *sc)
{
    struct stmt_entry *e, *tmp;

    HASH_ITER(hh, sc->entries, e, tmp) {
        HASH_DELETE(hh, sc->entries, e);
        free(e->types);
        free(e);
    }
    sc->count = 0;
    sc->unnamed = NULL;
}

struct stmt_entry *stmtcache_get(struct stmtcache *sc, const char *text, size_t text_len,
                                 const uint8_t *types, size_t types_len)
{
    struct stmt_entry *e;

    HASH_FIND(hh, sc->entries, text, text_len, e);
    if (e)
        return e->types_len == types_len && memcmp(e->types, types, types_len) == 0 ? e
                                                                                  : NULL;
    if (sc->count >= sc->max)
        return NULL;
    e = malloc(sizeof(*e) + text_len + 1);
    if (!e)
        return NULL;
    e->types = malloc(types_len ? types_len : 1);
    if (!e->types) {
        free(e);
        return NULL;
    }
    memcpy(e->types, types, types_len);
    e->types_len = types_len;
    memcpy(e->text, text, text_len);
    e->text[text_len] = '\0';
    e->text_len = text_len;
    e->state = STMT_ABSENT;
    e->number = 0;
    HASH_ADD_KEYPTR(hh, sc->entries, e->text, text_len, e);
    sc->count++;
    return e;
}

uint64_t stmtcache_create(struct stmtcache *sc, struct stmt_entry *e)
{
    e->state = STMT_PENDING;
    e->number = ++sc->last_number;
    stmtcache_name_of(e->number, e->name);
    return e->number;
}

void stmtcache_name_of(uint64_t number, char name[STMTCACHE_NAME_MAX])
{
    snprintf(name, STMTCACHE_NAME_MAX, STMTCACHE_PREFIX "%" PRIu64, number);
}

void stmtcache_created(struct stmt_entry *e, uint64_t number, bool ok)
{
    if (e->state == STMT_PENDING && e->number == number)
        e->state = ok ? STMT_READY : STMT_ABSENT;
}

void stmtcache_forget_all(struct stmtcache *sc)
{
    struct stmt_entry *e, *tmp;

    HASH_ITER(hh, sc->entries, e, tmp)
        e->state = STMT_ABSENT;
    sc->forgotten_number = sc->last_number;
}

enum stmt_state stmtcache_state(const struct stmt_entry *e)
{
    return e->state;
}

const char *stmtcache_name(const struct stmt_entry *e)
{
    return e->name;
}

uint64_t stmtcache_number(const struct stmt_entry *e)
{
    return e->number;
}

const char *stmtcache_text(const struct stmt_entry *e, size_t *text_len)
{
    *text_len = e->text_len;
    return e->text;
}

const uint8_t *stmtcache_types(const struct stmt_entry *e, size_t *types_len)
{
    *types_len = e->types_len;
    return e->types;
}
