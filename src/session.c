#include "session.h"

#include <stdlib.h>
#include <string.h>
#include <uthash.h>

struct session_entry {
    UT_hash_handle hh;
    char *schema, *table;
    char name[]; /* the key */
};

void session_init(struct session *s)
{
    s->statements = NULL;
    s->portals = NULL;
}

static void drop(struct session_entry **map, struct session_entry *e)
{
    HASH_DELETE(hh, *map, e);
    free(e->schema);
    free(e->table);
    free(e);
}

static void drop_all(struct session_entry **map)
{
    struct session_entry *e, *tmp;

    HASH_ITER(hh, *map, e, tmp)
        drop(map, e);
}

void session_free(struct session *s)
{
    session_clear(s);
}

void session_clear(struct session *s)
{
    drop_all(&s->statements);
    drop_all(&s->portals);
}

static struct session_entry *find(struct session_entry *map, const char *name)
{
    struct session_entry *e;

    HASH_FIND_STR(map, name, e);
    return e;
}

static void forget(struct session_entry **map, const char *name)
{
    struct session_entry *e = find(*map, name);

    if (e)
        drop(map, e);
}

/* Sets name to schema.table in map, or forgets it when schema is NULL. */
static bool set(struct session_entry **map, const char *name, const char *schema,
                const char *table)
{
    forget(map, name);
    if (!schema)
        return true;
    size_t len = strlen(name) + 1;
    struct session_entry *e = malloc(sizeof(*e) + len);
    if (!e)
        return false;
    memcpy(e->name, name, len);
    e->schema = strdup(schema);
    e->table = strdup(table);
    if (!e->schema || !e->table) {
        free(e->schema);
        free(e->table);
        free(e);
        return false;
    }
    HASH_ADD_STR(*map, name, e);
    return true;
}

bool session_parse(struct session *s, const char *name, const char *schema, const char *table)
{
    return set(&s->statements, name, schema, table);
}

bool session_bind(struct session *s, const char *portal, const char *statement)
{
    const struct session_entry *stmt = find(s->statements, statement);

    return set(&s->portals, portal, stmt ? stmt->schema : NULL, stmt ? stmt->table : NULL);
}

void session_close(struct session *s, char kind, const char *name)
{
    forget(kind == 'S' ? &s->statements : &s->portals, name);
}

bool session_portal(const struct session *s, const char *portal, const char **schema,
                    const char **table)
{
    const struct session_entry *e = find(s->portals, portal);

    if (!e)
        return false;
    *schema = e->schema;
    *table = e->table;
    return true;
}
