#include "catalog.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgproto.h"

/* ---- the query --------------------------------------------------------- */

/* Writes s into a string literal's text (begun by the caller): quotes
 * and backslashes doubled, as put_literal does; in_ident also doubles
 * the double quotes of an identifier. */
static void put_literal_text(FILE *f, const char *s, bool in_ident)
{
    for (; *s; s++) {
        if (*s == '\'' || *s == '\\' || (in_ident && *s == '"'))
            fputc(*s, f);
        fputc(*s, f);
    }
}

/* A string literal as PostgreSQL reads it whatever standard_conforming_strings
 * says: quotes doubled, and E'' with doubled backslashes when there are any. */
static void put_literal(FILE *f, const char *s)
{
    fputs(strchr(s, '\\') ? "E'" : "'", f);
    put_literal_text(f, s, false);
    fputc('\'', f);
}

/* Rows, each of CATALOG_COLUMNS text columns, first the kind (indexes are
 * those of the registered tables and of all their partitions):
 *   r schema table relkind registered has_insert_update_rules row_security
 *   i schema table index unique immediate partial valid ready
 *   k schema table index position column (NULL: an expression)
 *   a schema table column updatable can_select can_update
 *   p schema partition '' root_schema root_table
 * Relations are those the rules name and, for resolving unqualified names,
 * every relation of the same name in a schema of some rule's search_path.
 * Privileges and row-level security are those of the role named in
 * who(role), as PostgreSQL's check_enable_rls decides them for a session
 * running as that role: whichever session asks, and as whichever role, the
 * answer is the same. */
static const char catalog_sql[] =
    "rels AS (\n"
    "  SELECT c.oid, n.nspname, c.relname, c.relkind, c.relhasrules,\n"
    "         c.relrowsecurity, c.relforcerowsecurity, c.relowner,\n"
    "         (n.nspname, c.relname) IN (SELECT nsp, rel FROM want) AS registered\n"
    "  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\n"
    "  WHERE c.relname IN (SELECT rel FROM want)\n"
    "    AND (n.nspname IN (SELECT nsp FROM path)\n"
    "         OR (n.nspname, c.relname) IN (SELECT nsp, rel FROM want))),\n"
    "reg AS (SELECT * FROM rels WHERE registered),\n"
    "tree(relid, root_nsp, root_rel) AS (\n"
    "  SELECT oid, nspname, relname FROM reg\n"
    "  UNION ALL\n"
    "  SELECT inh.inhrelid, tree.root_nsp, tree.root_rel\n"
    "  FROM pg_catalog.pg_inherits inh JOIN tree ON inh.inhparent = tree.relid\n"
    "  JOIN pg_catalog.pg_class pc ON pc.oid = inh.inhrelid AND pc.relispartition),\n"
    "idx AS (\n"
    "  SELECT t.relid, n.nspname, c.relname, ic.relname AS indname,\n"
    "         i.indisunique, i.indimmediate, i.indpred IS NOT NULL AS partial,\n"
    "         i.indisvalid, i.indisready, i.indkey, i.indnkeyatts\n"
    "  FROM tree t JOIN pg_catalog.pg_class c ON c.oid = t.relid\n"
    "  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\n"
    "  JOIN pg_catalog.pg_index i ON i.indrelid = t.relid\n"
    "  JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid\n"
    "  WHERE i.indisunique OR i.indisexclusion)\n"
    "SELECT 'r', nspname::text, relname::text, relkind::text, registered::text,\n"
    "       (relhasrules AND EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite w\n"
    "                                WHERE w.ev_class = rels.oid AND w.ev_type IN ('2', '3')))::text,\n"
    "       (registered AND relrowsecurity\n"
    "        AND (relforcerowsecurity\n"
    "             OR NOT pg_catalog.pg_has_role((SELECT role FROM who), relowner, 'USAGE'))\n"
    "        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r\n"
    "                        WHERE r.rolname = (SELECT role FROM who)\n"
    "                        AND (r.rolsuper OR r.rolbypassrls)))::text, NULL, NULL\n"
    "FROM rels\n"
    "UNION ALL\n"
    "SELECT 'i', nspname::text, relname::text, indname::text, indisunique::text,\n"
    "       indimmediate::text, partial::text, indisvalid::text, indisready::text\n"
    "FROM idx\n"
    "UNION ALL\n"
    "SELECT 'k', idx.nspname::text, idx.relname::text, idx.indname::text, k.ord::text,\n"
    "       a.attname::text, NULL, NULL, NULL\n"
    "FROM idx CROSS JOIN LATERAL unnest(idx.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, ord)\n"
    "LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = idx.relid AND a.attnum = k.attnum\n"
    "WHERE k.ord <= idx.indnkeyatts\n"
    "UNION ALL\n"
    "SELECT 'a', reg.nspname::text, reg.relname::text, a.attname::text,\n"
    "       (a.attidentity <> 'a' AND a.attgenerated = '')::text,\n"
    "       pg_catalog.has_column_privilege((SELECT role FROM who), reg.oid, a.attnum,\n"
    "                                       'SELECT')::text,\n"
    "       pg_catalog.has_column_privilege((SELECT role FROM who), reg.oid, a.attnum,\n"
    "                                       'UPDATE')::text,\n"
    "       NULL, NULL\n"
    "FROM reg JOIN pg_catalog.pg_attribute a ON a.attrelid = reg.oid\n"
    "WHERE a.attnum > 0 AND NOT a.attisdropped\n"
    "UNION ALL\n"
    "SELECT 'p', n.nspname::text, c.relname::text, '', tree.root_nsp::text, tree.root_rel::text,\n"
    "       NULL, NULL, NULL\n"
    "FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.relid\n"
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\n"
    "WHERE tree.relid NOT IN (SELECT oid FROM reg)";

char *catalog_query(const struct table_rule *const *rules, size_t n, const char *role)
{
    char *sql = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&sql, &len);

    if (!f)
        return NULL;
    fputs("/* idemproxy: the unique indexes of its registered tables */\n"
          "WITH RECURSIVE\nwant(nsp, rel) AS (VALUES ", f);
    for (size_t i = 0; i < n; i++) {
        fputs(i ? ", (" : "(", f);
        put_literal(f, rules[i]->schema);
        fputs("::name, ", f);
        put_literal(f, rules[i]->name);
        fputs("::name)", f);
    }
    fputs("),\npath(nsp) AS (VALUES ", f);
    bool first = true;
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < rules[i]->search_path.count; k++) {
            fputs(first ? "(" : ", (", f);
            put_literal(f, rules[i]->search_path.names[k]);
            fputs("::name)", f);
            first = false;
        }
    }
    if (first)
        fputs("(NULL::name)", f);
    fputs("),\nwho(role) AS (VALUES (", f);
    put_literal(f, role);
    fputs("::name)),\n", f);
    fputs(catalog_sql, f);
    if (fclose(f) != 0) {
        free(sql);
        return NULL;
    }
    return sql;
}

/* ---- the session's identity -------------------------------------------- */

/* A literal for to_regclass or to_regnamespace: schema.name as quoted
 * identifiers (schema NULL: name alone). */
static void put_regclass_literal(FILE *f, const char *schema, const char *name)
{
    bool backslash = strchr(name, '\\') || (schema && strchr(schema, '\\'));

    fputs(backslash ? "E'\"" : "'\"", f);
    if (schema) {
        put_literal_text(f, schema, true);
        fputs("\".\"", f);
    }
    put_literal_text(f, name, true);
    fputs("\"'", f);
}

char *catalog_identity_query(const struct table_rule *const *rules, size_t n)
{
    char *sql = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&sql, &len);

    if (!f)
        return NULL;
    fputs("/* idemproxy: where this session's table names lead, and as whom it runs */\n"
          "SELECT current_user::pg_catalog.text,\n  ''", f);
    for (size_t i = 0; i < n; i++) {
        fputs("\n  OPERATOR(pg_catalog.||) CASE WHEN pg_catalog.to_regclass(", f);
        put_regclass_literal(f, NULL, rules[i]->name);
        /* to_regclass raises for a schema the role may not use, where a
         * name on its path cannot lead anyway: the question must not fail
         * (inside a transaction block it would take a rollback). */
        fputs(") OPERATOR(pg_catalog.=) CASE WHEN pg_catalog.has_schema_privilege("
              "pg_catalog.to_regnamespace(", f);
        put_regclass_literal(f, NULL, rules[i]->schema);
        fputs("), 'USAGE') THEN pg_catalog.to_regclass(", f);
        put_regclass_literal(f, rules[i]->schema, rules[i]->name);
        fputs(") END THEN 't' ELSE 'f' END", f);
    }
    fputs(",\n  current_user::pg_catalog.text OPERATOR(pg_catalog.||) ' ' "
          "OPERATOR(pg_catalog.||) pg_catalog.current_schemas(true)::pg_catalog.text", f);
    if (fclose(f) != 0) {
        free(sql);
        return NULL;
    }
    return sql;
}

/* The next column of a DataRow body at *at: *text (NULL for SQL NULL) and
 * its length. False when it runs past the end. */
static bool next_column(const uint8_t *body, size_t len, size_t *at, const char **text,
                        size_t *text_len)
{
    if (len - *at < 4)
        return false;
    uint32_t n = pg_get_u32(body + *at);
    *at += 4;
    *text = NULL;
    *text_len = 0;
    if (n == UINT32_MAX)
        return true;
    if (n > len - *at)
        return false;
    *text = (const char *)body + *at;
    *text_len = n;
    *at += n;
    return true;
}

/* As next_column, for a column that may not be NULL. */
static bool next_text(const uint8_t *body, size_t len, size_t *at, const char **text,
                      size_t *text_len)
{
    return next_column(body, len, at, text, text_len) && *text;
}

bool catalog_identity_answer(const uint8_t *body, size_t len, size_t n,
                             struct identity_row *out)
{
    size_t at = 2, flags_len;

    if (len < 2 || ((body[0] << 8) | body[1]) != 3 ||
        !next_text(body, len, &at, &out->role, &out->role_len) ||
        !next_text(body, len, &at, &out->flags, &flags_len) || flags_len != n ||
        !next_text(body, len, &at, &out->signature, &out->signature_len) || at != len)
        return false;
    for (size_t i = 0; i < n; i++)
        if (out->flags[i] != 't' && out->flags[i] != 'f')
            return false;
    return memchr(out->role, '\0', out->role_len) == NULL;
}

/* ---- the answer -------------------------------------------------------- */

void catalog_init(struct catalog *cat)
{
    memset(cat, 0, sizeof(*cat));
}

void catalog_free(struct catalog *cat)
{
    for (size_t i = 0; i < cat->nrels; i++) {
        free(cat->rels[i].schema);
        free(cat->rels[i].name);
    }
    for (size_t i = 0; i < cat->nindexes; i++) {
        free(cat->indexes[i].schema);
        free(cat->indexes[i].table);
        free(cat->indexes[i].name);
        name_list_free(&cat->indexes[i].columns);
    }
    for (size_t i = 0; i < cat->nattrs; i++) {
        free(cat->attrs[i].schema);
        free(cat->attrs[i].table);
        free(cat->attrs[i].name);
    }
    for (size_t i = 0; i < cat->nparts; i++) {
        free(cat->parts[i].schema);
        free(cat->parts[i].name);
        free(cat->parts[i].root_schema);
        free(cat->parts[i].root_name);
    }
    free(cat->rels);
    free(cat->indexes);
    free(cat->attrs);
    free(cat->parts);
    catalog_init(cat);
}

/* One DataRow, split into NUL-terminated copies of its columns. */
struct row {
    char *col[CATALOG_COLUMNS]; /* NULL for SQL NULL */
};

static void row_free(struct row *r)
{
    for (int i = 0; i < CATALOG_COLUMNS; i++)
        free(r->col[i]);
}

static bool row_parse(const uint8_t *body, size_t len, struct row *r)
{
    memset(r, 0, sizeof(*r));
    if (len < 2 || ((body[0] << 8) | body[1]) != CATALOG_COLUMNS)
        return false;
    size_t at = 2, n;
    const char *text;
    for (int i = 0; i < CATALOG_COLUMNS; i++) {
        if (!next_column(body, len, &at, &text, &n))
            goto bad;
        if (text && !(r->col[i] = strndup(text, n)))
            goto bad;
    }
    if (at == len)
        return true;
bad:
    row_free(r);
    return false;
}

/* Moves column i out of the row (the row no longer owns it). */
static char *take(struct row *r, int i)
{
    char *s = r->col[i];
    r->col[i] = NULL;
    return s;
}

static bool is_true(const char *s)
{
    return s && strcmp(s, "true") == 0;
}

#define GROW(arr, count)                                                        \
    do {                                                                       \
        void *grown_ = realloc((arr), ((count) + 1) * sizeof(*(arr)));         \
        if (!grown_)                                                           \
            goto oom;                                                          \
        (arr) = grown_;                                                        \
    } while (0)

static struct catalog_index *find_index(struct catalog *cat, const char *schema,
                                        const char *table, const char *name)
{
    for (size_t i = 0; i < cat->nindexes; i++) {
        struct catalog_index *x = &cat->indexes[i];
        if (strcmp(x->name, name) == 0 && strcmp(x->schema, schema) == 0 &&
            strcmp(x->table, table) == 0)
            return x;
    }
    return NULL;
}

/* A key column at a 1-based position; rows may arrive in any order. */
static bool add_key_column(struct catalog_index *x, const char *position, char *column)
{
    long pos = strtol(position, NULL, 10);

    if (!column) {
        x->has_expression = true;
        return true;
    }
    if (pos < 1 || pos > 32)
        return false;
    if ((size_t)pos > x->columns.count) {
        char **grown = realloc(x->columns.names, (size_t)pos * sizeof(*grown));
        if (!grown)
            return false;
        for (size_t i = x->columns.count; i < (size_t)pos; i++)
            grown[i] = NULL;
        x->columns.names = grown;
        x->columns.count = (size_t)pos;
    }
    free(x->columns.names[pos - 1]);
    x->columns.names[pos - 1] = column;
    return true;
}

bool catalog_add_row(struct catalog *cat, const uint8_t *body, size_t len)
{
    struct row r;

    if (!row_parse(body, len, &r))
        return false;
    const char *kind = r.col[0];
    bool ok = kind && kind[0] && !kind[1] && r.col[1] && r.col[2];
    if (!ok)
        goto done;
    switch (kind[0]) {
    case 'r': {
        GROW(cat->rels, cat->nrels);
        struct catalog_rel *x = &cat->rels[cat->nrels++];
        x->relkind = r.col[3] ? r.col[3][0] : '?';
        x->registered = is_true(r.col[4]);
        x->has_rules = is_true(r.col[5]);
        x->row_security = is_true(r.col[6]);
        x->schema = take(&r, 1);
        x->name = take(&r, 2);
        break;
    }
    case 'i': {
        if (!r.col[3]) {
            ok = false;
            break;
        }
        GROW(cat->indexes, cat->nindexes);
        struct catalog_index *x = &cat->indexes[cat->nindexes++];
        memset(x, 0, sizeof(*x));
        x->unique = is_true(r.col[4]);
        x->immediate = is_true(r.col[5]);
        x->partial = is_true(r.col[6]);
        x->valid = is_true(r.col[7]);
        x->ready = is_true(r.col[8]);
        x->schema = take(&r, 1);
        x->table = take(&r, 2);
        x->name = take(&r, 3);
        break;
    }
    case 'k': {
        struct catalog_index *x = r.col[3] && r.col[4]
                                      ? find_index(cat, r.col[1], r.col[2], r.col[3])
                                      : NULL;
        ok = x && add_key_column(x, r.col[4], r.col[5]);
        if (ok)
            r.col[5] = NULL;
        break;
    }
    case 'a': {
        if (!r.col[3]) {
            ok = false;
            break;
        }
        GROW(cat->attrs, cat->nattrs);
        struct catalog_attr *x = &cat->attrs[cat->nattrs++];
        x->updatable = is_true(r.col[4]);
        x->can_select = is_true(r.col[5]);
        x->can_update = is_true(r.col[6]);
        x->schema = take(&r, 1);
        x->table = take(&r, 2);
        x->name = take(&r, 3);
        break;
    }
    case 'p': {
        if (!r.col[4] || !r.col[5]) {
            ok = false;
            break;
        }
        GROW(cat->parts, cat->nparts);
        struct catalog_partition *x = &cat->parts[cat->nparts++];
        x->schema = take(&r, 1);
        x->name = take(&r, 2);
        x->root_schema = take(&r, 4);
        x->root_name = take(&r, 5);
        break;
    }
    default:
        ok = false;
        break;
    }
done:
    row_free(&r);
    return ok;
oom:
    row_free(&r);
    return false;
}

/* ---- deciding ---------------------------------------------------------- */

static const struct catalog_rel *find_rel(const struct catalog *cat, const char *schema,
                                          const char *name)
{
    for (size_t i = 0; i < cat->nrels; i++)
        if (strcmp(cat->rels[i].schema, schema) == 0 && strcmp(cat->rels[i].name, name) == 0)
            return &cat->rels[i];
    return NULL;
}

static const struct catalog_attr *find_attr(const struct catalog *cat,
                                            const struct table_rule *rule, const char *column)
{
    for (size_t i = 0; i < cat->nattrs; i++) {
        const struct catalog_attr *a = &cat->attrs[i];
        if (strcmp(a->name, column) == 0 && strcmp(a->schema, rule->schema) == 0 &&
            strcmp(a->table, rule->name) == 0)
            return a;
    }
    return NULL;
}

static bool is_rule_table(const struct catalog_index *x, const struct table_rule *rule)
{
    return strcmp(x->schema, rule->schema) == 0 && strcmp(x->table, rule->name) == 0;
}

static bool in_list(const struct name_list *l, const char *name)
{
    for (size_t i = 0; i < l->count; i++)
        if (l->names[i] && strcmp(l->names[i], name) == 0)
            return true;
    return false;
}

/* Whether ON CONFLICT (columns) would infer this index as an arbiter:
 * unique, valid, not partial, no expressions, the same set of key columns. */
static bool infers(const struct catalog_index *x, const struct name_list *columns)
{
    if (!x->unique || !x->valid || x->partial || x->has_expression ||
        x->columns.count != columns->count)
        return false;
    for (size_t i = 0; i < x->columns.count; i++)
        if (!x->columns.names[i] || !in_list(columns, x->columns.names[i]))
            return false;
    return true;
}

enum form { FORM_DO_NOTHING, FORM_RETURN_EXISTING, FORM_DO_UPDATE };

static void format_columns(char *buf, size_t cap, const struct name_list *l)
{
    size_t at = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < l->count && at < cap; i++) {
        int n = snprintf(buf + at, cap - at, "%s%s", i ? ", " : "", l->names[i]);
        if (n < 0)
            break;
        at += (size_t)n;
    }
}

/* Every index ON CONFLICT (conflict) would use must exist, be immediate,
 * and its columns readable by the role. */
static bool check_arbiter(const struct catalog *cat, const struct table_rule *rule,
                          char *problem, size_t cap)
{
    char cols[160];
    bool found = false;

    format_columns(cols, sizeof(cols), &rule->conflict);
    for (size_t i = 0; i < cat->nindexes; i++) {
        const struct catalog_index *x = &cat->indexes[i];
        if (!is_rule_table(x, rule) || !infers(x, &rule->conflict))
            continue;
        if (!x->immediate) {
            snprintf(problem, cap, "its unique index %s on (%s) is DEFERRABLE, which ON CONFLICT "
                     "cannot use", x->name, cols);
            return false;
        }
        found = true;
    }
    if (!found) {
        snprintf(problem, cap, "no valid, non-partial unique index has exactly the columns (%s)",
                 cols);
        return false;
    }
    for (size_t i = 0; i < rule->conflict.count; i++) {
        const struct catalog_attr *a = find_attr(cat, rule, rule->conflict.names[i]);
        if (!a || !a->can_select) {
            snprintf(problem, cap, "the role may not SELECT column %s, which ON CONFLICT "
                     "(%s) reads", rule->conflict.names[i], cols);
            return false;
        }
    }
    return true;
}

/* Whether the index belongs to the rule's table or one of its partitions. */
static bool on_rule_tree(const struct catalog *cat, const struct catalog_index *x,
                         const struct table_rule *rule)
{
    const char *root_schema, *root_name;

    if (is_rule_table(x, rule))
        return true;
    return catalog_partition_root(cat, x->schema, x->table, &root_schema, &root_name) &&
           strcmp(root_schema, rule->schema) == 0 && strcmp(root_name, rule->name) == 0;
}

/* Without a target, every unique and exclusion index is an arbiter, also
 * those a partition has of its own. */
static bool check_untargeted(const struct catalog *cat, const struct table_rule *rule,
                             char *problem, size_t cap)
{
    for (size_t i = 0; i < cat->nindexes; i++) {
        const struct catalog_index *x = &cat->indexes[i];
        if (on_rule_tree(cat, x, rule) && x->ready && !x->immediate) {
            snprintf(problem, cap, "its constraint index %s is DEFERRABLE, which ON CONFLICT "
                     "cannot use", x->name);
            return false;
        }
    }
    return true;
}

static bool check_updatable(const struct catalog *cat, const struct table_rule *rule,
                            const char *column, char *problem, size_t cap)
{
    const struct catalog_attr *a = find_attr(cat, rule, column);

    if (!a)
        snprintf(problem, cap, "it has no column %s", column);
    else if (!a->updatable)
        snprintf(problem, cap, "column %s is generated or GENERATED ALWAYS AS IDENTITY, so "
                 "DO UPDATE cannot set it", column);
    else if (!a->can_update)
        snprintf(problem, cap, "the role may not UPDATE column %s", column);
    else
        return true;
    return false;
}

/* The clause for one form, or NULL with *problem set. *oom on no memory. */
static char *decide_form(const struct catalog *cat, const struct table_rule *rule,
                         const struct catalog_rel *rel, enum form form, char *problem,
                         size_t cap, bool *oom)
{
    struct name_list none = { NULL, 0 }, set = none;
    char *first_updatable[1] = { NULL };

    if (rule->conflict.count == 0 ? !check_untargeted(cat, rule, problem, cap)
                                  : !check_arbiter(cat, rule, problem, cap))
        return NULL;
    if (form != FORM_DO_NOTHING && rel->row_security) {
        snprintf(problem, cap, "row-level security applies to the role, so DO UPDATE "
                 "could be refused");
        return NULL;
    }
    switch (form) {
    case FORM_DO_NOTHING:
        break;
    case FORM_RETURN_EXISTING:
        /* Setting a key column to itself returns the row; the first one that
         * may be set is as good as any. */
        for (size_t i = 0; i < rule->conflict.count && !first_updatable[0]; i++) {
            if (check_updatable(cat, rule, rule->conflict.names[i], problem, cap))
                first_updatable[0] = rule->conflict.names[i];
        }
        if (!first_updatable[0])
            return NULL;
        set.names = first_updatable;
        set.count = 1;
        break;
    case FORM_DO_UPDATE:
        for (size_t i = 0; i < rule->update_columns.count; i++)
            if (!check_updatable(cat, rule, rule->update_columns.names[i], problem, cap))
                return NULL;
        set = rule->update_columns;
        break;
    }
    size_t need = rewrite_build_clause(NULL, 0, &rule->conflict, &set);
    char *clause = malloc(need + 1);
    if (!clause) {
        *oom = true;
        return NULL;
    }
    rewrite_build_clause(clause, need, &rule->conflict, &set);
    clause[need] = '\0';
    problem[0] = '\0';
    return clause;
}

/* The schemas of rule's search_path decide what an unqualified name means:
 * the first one holding a relation of that name. */
static bool unqualified_means_rule(const struct catalog *cat, const struct table_rule *rule)
{
    for (size_t i = 0; i < rule->search_path.count; i++) {
        if (find_rel(cat, rule->search_path.names[i], rule->name))
            return strcmp(rule->search_path.names[i], rule->schema) == 0;
    }
    return false;
}

static void refuse(struct table_verdict *v, enum rewrite_reason why)
{
    v->why_plain = v->why_returning = why;
}

bool catalog_decide(const struct catalog *cat, const struct table_rule *rule,
                    struct table_verdict *out)
{
    const struct catalog_rel *rel = find_rel(cat, rule->schema, rule->name);
    enum form plain = FORM_DO_NOTHING, returning = FORM_DO_NOTHING;
    char problem[sizeof(out->problem)] = "";
    bool oom = false;

    memset(out, 0, sizeof(*out));
    out->exists = rel != NULL;
    out->unqualified_ok = rel && unqualified_means_rule(cat, rule);
    switch (rule->action) {
    case TABLE_ACTION_NONE:
        refuse(out, RR_ACTION_NONE);
        return true;
    case TABLE_ACTION_AUTO:
        returning = FORM_RETURN_EXISTING;
        break;
    case TABLE_ACTION_DO_NOTHING:
        break;
    case TABLE_ACTION_RETURN_EXISTING:
        plain = returning = FORM_RETURN_EXISTING;
        break;
    case TABLE_ACTION_DO_UPDATE:
        plain = returning = FORM_DO_UPDATE;
        break;
    }

    refuse(out, RR_FORBIDDEN);
    if (!rel) {
        snprintf(out->problem, sizeof(out->problem), "it does not exist");
        return true;
    }
    if (rel->relkind != 'r' && rel->relkind != 'p') {
        snprintf(out->problem, sizeof(out->problem), "it is not a table (relkind '%c')",
                 rel->relkind);
        return true;
    }
    if (rel->has_rules) {
        snprintf(out->problem, sizeof(out->problem),
                 "it has INSERT or UPDATE rules, which ON CONFLICT does not support");
        return true;
    }
    out->clause_plain = decide_form(cat, rule, rel, plain, out->problem, sizeof(out->problem),
                                    &oom);
    if (out->clause_plain)
        out->why_plain = RR_REWRITTEN;
    out->clause_returning = decide_form(cat, rule, rel, returning, problem, sizeof(problem), &oom);
    if (out->clause_returning)
        out->why_returning = RR_REWRITTEN;
    if (!out->problem[0] && problem[0])
        snprintf(out->problem, sizeof(out->problem), "INSERT ... RETURNING: %s", problem);
    if (oom) {
        table_verdict_free(out);
        return false;
    }
    return true;
}

void table_verdict_free(struct table_verdict *v)
{
    free(v->clause_plain);
    free(v->clause_returning);
    v->clause_plain = v->clause_returning = NULL;
}

bool catalog_partition_root(const struct catalog *cat, const char *schema, const char *name,
                            const char **root_schema, const char **root_name)
{
    for (size_t i = 0; i < cat->nparts; i++) {
        const struct catalog_partition *p = &cat->parts[i];
        if (strcmp(p->schema, schema) == 0 && strcmp(p->name, name) == 0) {
            *root_schema = p->root_schema;
            *root_name = p->root_name;
            return true;
        }
    }
    return false;
}
