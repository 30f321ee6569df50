#include "session.h"

#include <stdlib.h>
#include <string.h>

#include "hashtable.h"

struct session_entry {
    UT_hash_handle hh;
    const char *schema, *table; /* in names, after the key; NULL when it
                                   is kept only for its effects */
    unsigned effects;           /* rewrite_effects' identity bits */
    const uint8_t *parse;       /* a named statement's Parse body, after the
                                   table; NULL when not kept */
    size_t parse_len;
    uint64_t version;           /* the rules' version it was prepared under */
    uint64_t sent;              /* the hash of the text the server holds for
                                   it (session_sent); 0: unknown */
    bool ran;                   /* a portal Executed since its Bind */
    char names[];               /* the name (the key), the schema, the table */
};

void session_init(struct session *s)
{
    s->statements = NULL;
    s->portals = NULL;
    s->detached = 0;
    s->incomplete = false;
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
    s->incomplete = true;
}

bool session_empty(const struct session *s)
{
    return !s->statements && !s->portals && !s->detached;
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

/* Sets name to schema.table in map (schema NULL: no INSERT), marked with
 * its effects on the session's identity, or forgets it when it has
 * neither. A driver that does not prepare redefines the same unnamed
 * statement and portal with every execution: an entry that already says
 * the same, and keeps no Parse, stays. */
static struct session_entry *set(struct session_entry **map, const char *name,
                                 const char *schema, const char *table, unsigned effects,
                                 size_t parse_len)
{
    struct session_entry *e = find(*map, name);

    if (e && !parse_len && !e->parse && e->effects == effects &&
        (schema ? e->schema && strcmp(e->schema, schema) == 0 && strcmp(e->table, table) == 0
                : !e->schema)) {
        e->sent = 0;
        return e;
    }
    if (e)
        drop(map, e);
    if (!schema && !effects)
        return NULL;
    size_t name_len = strlen(name) + 1;
    size_t schema_len = schema ? strlen(schema) + 1 : 0, table_len = schema ? strlen(table) + 1 : 0;
    e = malloc(sizeof(*e) + name_len + schema_len + table_len + parse_len);
    if (!e)
        return NULL;
    char *at = e->names;
    memcpy(at, name, name_len);
    e->schema = schema ? memcpy(at += name_len, schema, schema_len) : NULL;
    e->table = schema ? memcpy(at += schema_len, table, table_len) : NULL;
    e->effects = effects;
    e->parse = NULL;
    e->parse_len = 0;
    e->version = 0;
    e->sent = 0;
    HASH_ADD_KEYPTR(hh, *map, e->names, name_len - 1, e);
    return e;
}

bool session_parse(struct session *s, const char *name, const char *schema, const char *table,
                   unsigned effects, const uint8_t *parse, size_t parse_len,
                   uint64_t version)
{
    struct session_entry *e = set(&s->statements, name, schema, table, effects,
                                  parse ? parse_len : 0);

    if (e && parse) {
        e->parse = memcpy((uint8_t *)e->names + strlen(name) + 1 +
                              (schema ? strlen(schema) + 1 + strlen(table) + 1 : 0),
                          parse, parse_len);
        e->parse_len = parse_len;
        e->version = version;
    }
    return e || (!schema && !effects);
}

const uint8_t *session_outdated(struct session *s, const char *name, uint64_t version,
                                size_t *len)
{
    struct session_entry *e = find(s->statements, name);

    if (!e || !e->parse || e->version == version)
        return NULL;
    e->version = version;
    *len = e->parse_len;
    return e->parse;
}

const uint8_t *session_next_outdated(struct session *s, uint64_t version, const char **name,
                                     size_t *len)
{
    struct session_entry *e, *tmp;

    HASH_ITER(hh, s->statements, e, tmp) {
        if (e->parse && e->version != version) {
            *name = e->names;
            return session_outdated(s, e->names, version, len);
        }
    }
    return NULL;
}

void session_sent(struct session *s, const char *name, uint64_t text_hash)
{
    struct session_entry *e = find(s->statements, name);

    if (e)
        e->sent = text_hash;
}

void session_unsent_all(struct session *s)
{
    struct session_entry *e, *tmp;

    HASH_ITER(hh, s->statements, e, tmp)
        e->sent = 0;
}

bool session_holds(const struct session *s, const char *name, uint64_t text_hash)
{
    const struct session_entry *e = find(s->statements, name);

    return e && e->sent != 0 && e->sent == text_hash;
}

bool session_bind(struct session *s, const char *portal, const char *statement)
{
    const struct session_entry *stmt = find(s->statements, statement);
    struct session_entry *e = set(&s->portals, portal, stmt ? stmt->schema : NULL,
                                  stmt ? stmt->table : NULL, stmt ? stmt->effects : 0, 0);

    if (e)
        e->ran = false;
    return e || !stmt;
}

bool session_execute(struct session *s, const char *portal, const char **schema,
                     const char **table, bool *first_run, unsigned *effects)
{
    struct session_entry *e = find(s->portals, portal);

    *effects = e ? e->effects : 0;
    if (!e || !e->schema)
        return false;
    *schema = e->schema;
    *table = e->table;
    *first_run = !e->ran;
    e->ran = true;
    return true;
}

struct session_entry *session_detach(struct session *s, const char *name)
{
    struct session_entry *e = find(s->statements, name);

    if (e) {
        HASH_DELETE(hh, s->statements, e);
        s->detached++;
    }
    return e;
}

void session_reattach(struct session *s, struct session_entry *e)
{
    s->detached--;
    forget(&s->statements, e->names);
    HASH_ADD_KEYPTR(hh, s->statements, e->names, strlen(e->names), e);
}

void session_entry_free(struct session *s, struct session_entry *e)
{
    s->detached--;
    free(e);
}

void session_close(struct session *s, char kind, const char *name)
{
    forget(kind == 'S' ? &s->statements : &s->portals, name);
}

void session_forget(struct session *s, const char *name)
{
    forget(&s->statements, name);
    s->incomplete = true;
}

bool session_effects(const struct session *s, const char *name, unsigned *effects)
{
    const struct session_entry *e = find(s->statements, name);

    *effects = e ? e->effects : 0;
    return e || !s->incomplete;
}

bool session_portal(const struct session *s, const char *portal, const char **schema,
                    const char **table)
{
    const struct session_entry *e = find(s->portals, portal);

    if (!e || !e->schema)
        return false;
    *schema = e->schema;
    *table = e->table;
    return true;
}

bool session_inserts(const struct session *s, const char *name)
{
    const struct session_entry *e = find(s->statements, name);

    return e && e->schema;
}
