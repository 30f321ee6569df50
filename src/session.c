#include "session.h"

#include <stdlib.h>
#include <string.h>
#include <uthash.h>

struct session_entry {
    UT_hash_handle hh;
    const char *schema, *table; /* in names, after the key */
    char names[];               /* the name (the key), the schema, the table */
};

void session_init(struct session *s)
{
    s->statements = NULL;
    s->portals = NULL;
}

static void drop(struct session_entry **map, struct session_entry *e)
{
    HASH_DELETE(hh, *map, e);
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

/* Sets name to schema.table in map, or forgets it when schema is NULL. A
 * driver that does not prepare redefines the same unnamed statement and
 * portal with every execution: an entry that already says the same stays. */
static bool set(struct session_entry **map, const char *name, const char *schema,
                const char *table)
{
    struct session_entry *e = find(*map, name);

    if (e && schema && strcmp(e->schema, schema) == 0 && strcmp(e->table, table) == 0)
        return true;
    if (e)
        drop(map, e);
    if (!schema)
        return true;
    size_t name_len = strlen(name) + 1, schema_len = strlen(schema) + 1;
    size_t table_len = strlen(table) + 1;
    e = malloc(sizeof(*e) + name_len + schema_len + table_len);
    if (!e)
        return false;
    char *at = e->names;
    memcpy(at, name, name_len);
    e->schema = memcpy(at += name_len, schema, schema_len);
    e->table = memcpy(at += schema_len, table, table_len);
    HASH_ADD_KEYPTR(hh, *map, e->names, name_len - 1, e);
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
