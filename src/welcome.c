#include "welcome.h"

#include <stdlib.h>
#include <string.h>

#include "hashtable.h"
#include "pgproto.h"

struct welcome_param {
    UT_hash_handle hh;
    char *value;
    char name[]; /* the key */
};

void welcome_init(struct welcome *w)
{
    memset(w, 0, sizeof(*w));
}

void welcome_free(struct welcome *w)
{
    struct welcome_param *p, *tmp;

    HASH_ITER(hh, w->params, p, tmp) {
        HASH_DELETE(hh, w->params, p);
        free(p->value);
        free(p);
    }
    free(w->key);
    free(w->negotiation);
    free(w->notices);
    welcome_init(w);
}

static struct welcome_param *find(const struct welcome *w, const char *name)
{
    struct welcome_param *p;

    HASH_FIND_STR(w->params, name, p);
    return p;
}

/* A new entry for name (its value still NULL), or NULL when out of memory. */
static struct welcome_param *add(struct welcome *w, const char *name)
{
    size_t len = strlen(name) + 1;
    struct welcome_param *p = malloc(sizeof(*p) + len);

    if (!p)
        return NULL;
    memcpy(p->name, name, len);
    p->value = NULL;
    HASH_ADD(hh, w->params, name, len - 1, p);
    return p;
}

static void note_param(struct welcome *w, const uint8_t *body, size_t len)
{
    const char *name, *value;

    if (!pg_param_status(body, len, &name, &value)) {
        w->broken = true;
        return;
    }
    struct welcome_param *p = find(w, name);
    if (!p && !(p = add(w, name))) {
        w->broken = true;
        return;
    }
    char *copy = strdup(value);
    if (!copy) {
        w->broken = true;
        return;
    }
    free(p->value);
    p->value = copy;
}

/* Keeps a copy of body in *dst, replacing the one before. */
static void keep_body(struct welcome *w, const uint8_t *body, size_t len, uint8_t **dst,
                      size_t *dst_len)
{
    uint8_t *copy = malloc(len);

    if (!copy) {
        w->broken = true;
        return;
    }
    memcpy(copy, body, len);
    free(*dst);
    *dst = copy;
    *dst_len = len;
}

static void note_notice(struct welcome *w, const uint8_t *body, size_t len)
{
    size_t need = pg_put_msg(NULL, 0, 0, 'N', (const void *[]){ body }, (size_t[]){ len }, 1);
    uint8_t *grown = realloc(w->notices, w->notices_len + need);

    if (!grown) {
        w->broken = true;
        return;
    }
    w->notices = grown;
    w->notices_len = pg_put_msg(grown, w->notices_len + need, w->notices_len, 'N',
                                (const void *[]){ body }, (size_t[]){ len }, 1);
}

void welcome_note(struct welcome *w, char type, const uint8_t *body, size_t len)
{
    switch (type) {
    case 'S':
        note_param(w, body, len);
        break;
    case 'K':
        /* A process ID and a key of 4 to 256 bytes (protocol 3.2). */
        if (len < PG_BACKEND_KEY_MIN || len > PG_BACKEND_KEY_MAX)
            w->broken = true;
        else
            keep_body(w, body, len, &w->key, &w->key_len);
        break;
    case 'v':
        /* The newest minor version the server speaks and the count of the
         * options it did not know, then their names. */
        if (len < 8)
            w->broken = true;
        else
            keep_body(w, body, len, &w->negotiation, &w->negotiation_len);
        break;
    case 'N':
        note_notice(w, body, len);
        break;
    default:
        break;
    }
}

bool welcome_complete(const struct welcome *w)
{
    return w->key && !w->broken;
}

const char *welcome_value(const struct welcome *w, const char *name)
{
    const struct welcome_param *p = find(w, name);

    return p ? p->value : NULL;
}

static size_t build(const struct welcome *w, const uint8_t *key, uint8_t *buf, size_t cap)
{
    static const uint8_t auth_ok[4] = { 0, 0, 0, 0 };
    static const char idle = 'I';
    size_t at = 0;

    if (w->negotiation)
        at = pg_put_msg(buf, cap, at, 'v', (const void *[]){ w->negotiation },
                        (size_t[]){ w->negotiation_len }, 1);
    at = pg_put_msg(buf, cap, at, 'R', (const void *[]){ auth_ok }, (size_t[]){ 4 }, 1);
    if (w->notices && at + w->notices_len <= cap)
        memcpy(buf + at, w->notices, w->notices_len);
    at += w->notices_len;
    for (const struct welcome_param *p = w->params; p; p = p->hh.next) {
        at = pg_put_msg(buf, cap, at, 'S', (const void *[]){ p->name, p->value },
                        (size_t[]){ strlen(p->name) + 1, strlen(p->value) + 1 }, 2);
    }
    at = pg_put_msg(buf, cap, at, 'K', (const void *[]){ key ? key : w->key },
                    (size_t[]){ w->key_len }, 1);
    return pg_put_msg(buf, cap, at, 'Z', (const void *[]){ &idle }, (size_t[]){ 1 }, 1);
}

size_t welcome_build(const struct welcome *w, const uint8_t *key, uint8_t *buf, size_t cap)
{
    size_t need = build(w, key, NULL, 0);

    if (need <= cap)
        build(w, key, buf, cap);
    return need;
}
