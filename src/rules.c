#include "rules.h"

#include <stdlib.h>
#include <string.h>

#include "hashtable.h"
#include "shape.h"

/* The decision cache of one scope stays within these bounds; the least
 * recently used decisions go first. A text with constants is cached by its
 * shape (shape.h), so that an application that writes its values into the
 * text has its INSERTs decided once; a text that is to come again (a
 * Parse's) is also kept as it is, so that its repetitions skip masking it.
 * Keys longer than CACHE_MAX_TEXT are not cached: such texts (or shapes)
 * are nearly always one-off batches, and caching them would only cost
 * memory; a long text of few constants (a document in a string) has a
 * short shape and is cached by it. */
#define CACHE_MAX_ENTRIES 4096
#define CACHE_MAX_BYTES (8u << 20)
#define CACHE_MAX_TEXT (16u << 10)

/* A scope is put in doubt, and a failing catalog query tried again, at
 * most this often: an application that keeps causing an error a rewrite
 * could have caused costs the server one catalog query a second, not one
 * per error. */
#define SCOPE_RECHECK_MIN_NS 1000000000u

/* What the question about a session's identity answered right after a
 * login with this StartupMessage (see scope_login_identity). */
struct login_identity {
    UT_hash_handle hh;
    struct scope *scope; /* the answer's: the scope of the role the login runs as */
    bool fits;
    char *signature;
    size_t signature_len;
    uint64_t version;   /* that scope's, when it was answered */
    uint64_t answered;  /* when */
    uint8_t startup[];  /* the key */
};

/* Logins with different StartupMessages kept per scope; past it, all go. */
#define LOGIN_IDENTITY_MAX 64

struct cache_entry {
    UT_hash_handle hh;
    struct decision *decision; /* in the key's coordinates when general */
    bool general;              /* the key is a shape, not a text */
    size_t len;
    size_t bytes;              /* what it counts in cache_bytes */
    char text[]; /* the key */
};

struct scope {
    UT_hash_handle hh; /* in ruleset->scopes, keyed by "database\0user" */
    struct ruleset *rs;
    char *key;
    size_t key_len;
    enum scope_state state;

    size_t ntables;
    size_t *table_ids;     /* indexes into cfg->tables */
    struct table_verdict *verdicts;
    struct rewrite_target *targets;
    struct rewrite_rules rules;
    struct catalog partitions; /* only the partition map is kept */
    char *catalog_query;
    char *identity_query;
    struct login_identity *logins; /* uthash, at most LOGIN_IDENTITY_MAX */
    unsigned askers;           /* catalog queries out for this scope */
    uint64_t answered_ns;      /* when the last answer came (or failed); 0: never */
    uint64_t doubted_ns;       /* when scope_distrust last took effect; 0: never */
    uint64_t version;          /* when what it rewrites last changed; 0: never learnt */
    bool *changed;             /* per table: the last answer changed its problem */

    struct cache_entry *cache; /* uthash keeps it in least recently used order */
    size_t cache_bytes;
    struct shape shape; /* scope_decide's, its buffers kept between texts */
};

struct ruleset {
    unsigned refs;
    struct config *cfg;
    struct scope *scopes;
    size_t role_scopes;             /* made for a role switched to */
    struct counter *scope_gauge;    /* the caller's count of scopes; NULL: none */
    struct table_counters **counts; /* per table: the caller's, or own */
    struct table_counters *own;      /* when the caller gave none */
    struct counter *others;          /* RR_COUNT: the caller's, or own_others */
    struct counter own_others[RR_COUNT];
};

/* ---- rulesets ---------------------------------------------------------- */

struct ruleset *ruleset_new(struct config *cfg, const struct ruleset_counters *counters)
{
    struct ruleset *rs = calloc(1, sizeof(*rs));
    size_t n = cfg->table_count;
    struct table_counters *const *tables = counters ? counters->tables : NULL;

    if (rs && n > 0) {
        rs->counts = calloc(n, sizeof(*rs->counts));
        if (rs->counts && !tables)
            rs->own = calloc(n, sizeof(*rs->own));
    }
    if (!rs || (n > 0 && (!rs->counts || (!tables && !rs->own)))) {
        if (rs) {
            free(rs->counts);
            free(rs->own);
        }
        free(rs);
        config_unref(cfg);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        rs->counts[i] = tables ? tables[i] : &rs->own[i];
    rs->others = counters && counters->others ? counters->others : rs->own_others;
    rs->scope_gauge = counters ? counters->scopes : NULL;
    rs->refs = 1;
    rs->cfg = cfg;
    return rs;
}

struct ruleset *ruleset_ref(struct ruleset *rs)
{
    rs->refs++;
    return rs;
}

static void cache_remove(struct scope *s, struct cache_entry *e)
{
    HASH_DELETE(hh, s->cache, e);
    s->cache_bytes -= e->bytes;
    decision_unref(e->decision);
    free(e);
}

static void drop_cache(struct scope *s)
{
    struct cache_entry *e, *tmp;

    HASH_ITER(hh, s->cache, e, tmp)
        cache_remove(s, e);
}

static void drop_logins(struct scope *s)
{
    struct login_identity *e, *tmp;

    HASH_ITER(hh, s->logins, e, tmp) {
        HASH_DELETE(hh, s->logins, e);
        free(e->signature);
        free(e);
    }
}

static void scope_free(struct scope *s)
{
    drop_cache(s);
    drop_logins(s);
    for (size_t i = 0; i < s->ntables && s->verdicts; i++)
        table_verdict_free(&s->verdicts[i]);
    catalog_free(&s->partitions);
    free(s->verdicts);
    free(s->targets);
    free(s->changed);
    free(s->table_ids);
    free(s->catalog_query);
    free(s->identity_query);
    shape_free(&s->shape);
    free(s->key);
    free(s);
}

void ruleset_unref(struct ruleset *rs)
{
    struct scope *s, *tmp;

    if (!rs || --rs->refs > 0)
        return;
    if (rs->scope_gauge)
        counter_sub(rs->scope_gauge, HASH_COUNT(rs->scopes));
    HASH_ITER(hh, rs->scopes, s, tmp) {
        HASH_DELETE(hh, rs->scopes, s);
        scope_free(s);
    }
    free(rs->counts);
    free(rs->own);
    config_unref(rs->cfg);
    free(rs);
}

const struct config *ruleset_config(const struct ruleset *rs)
{
    return rs->cfg;
}

uint64_t ruleset_table_count(const struct ruleset *rs, size_t table, enum rewrite_reason reason)
{
    return table < rs->cfg->table_count ? counter_get(&rs->counts[table]->rewrite[reason]) : 0;
}

uint64_t ruleset_other_count(const struct ruleset *rs, enum rewrite_reason reason)
{
    return counter_get(&rs->others[reason]);
}

/* ---- scopes ------------------------------------------------------------ */

static bool applies(const struct table_rule *t, const char *database)
{
    return !t->database || strcmp(t->database, database) == 0;
}

static struct scope *scope_new(struct ruleset *rs, const char *key, size_t key_len,
                               const char *database)
{
    struct scope *s = calloc(1, sizeof(*s));

    if (!s || !(s->key = malloc(key_len)))
        goto oom;
    memcpy(s->key, key, key_len);
    s->key_len = key_len;
    s->rs = rs;
    catalog_init(&s->partitions);
    for (size_t i = 0; i < rs->cfg->table_count; i++)
        s->ntables += applies(&rs->cfg->tables[i], database);
    s->state = s->ntables ? SCOPE_UNKNOWN : SCOPE_PASSTHROUGH;
    if (s->ntables == 0)
        return s;
    s->table_ids = calloc(s->ntables, sizeof(*s->table_ids));
    s->verdicts = calloc(s->ntables, sizeof(*s->verdicts));
    s->targets = calloc(s->ntables, sizeof(*s->targets));
    s->changed = calloc(s->ntables, sizeof(*s->changed));
    if (!s->table_ids || !s->verdicts || !s->targets || !s->changed)
        goto oom;
    for (size_t i = 0, n = 0; i < rs->cfg->table_count; i++)
        if (applies(&rs->cfg->tables[i], database))
            s->table_ids[n++] = i;
    return s;
oom:
    if (s)
        scope_free(s);
    return NULL;
}

/* The scope keyed database\0user; made when absent and make says so
 * (*made then says it was). NULL when absent or out of memory. */
static struct scope *find_scope(struct ruleset *rs, const char *database, const char *user,
                                size_t user_len, bool make, bool *made)
{
    size_t dlen = strlen(database);
    char *key = malloc(dlen + 1 + user_len);
    struct scope *s = NULL;

    if (!key)
        return NULL;
    memcpy(key, database, dlen + 1);
    memcpy(key + dlen + 1, user, user_len);
    *made = false;
    HASH_FIND(hh, rs->scopes, key, dlen + 1 + user_len, s);
    if (!s && make) {
        s = scope_new(rs, key, dlen + 1 + user_len, database);
        if (s) {
            HASH_ADD_KEYPTR(hh, rs->scopes, s->key, s->key_len, s);
            *made = true;
            if (rs->scope_gauge)
                counter_add(rs->scope_gauge, 1);
        }
    }
    free(key);
    return s;
}

struct scope *ruleset_scope(struct ruleset *rs, const char *database, const char *user)
{
    bool made;

    return find_scope(rs, database, user, strlen(user), true, &made);
}

enum scope_state scope_state(const struct scope *s)
{
    return s->state;
}

static const struct table_rule *rule_of(const struct scope *s, size_t i)
{
    return &s->rs->cfg->tables[s->table_ids[i]];
}

const char *scope_role(const struct scope *s, size_t *len)
{
    size_t database_len = strlen(s->key) + 1;

    *len = s->key_len - database_len;
    return s->key + database_len;
}

/* The scope's rules in order, for building its queries; NULL when out of
 * memory. */
static const struct table_rule **rules_of(const struct scope *s)
{
    const struct table_rule **rules = calloc(s->ntables, sizeof(*rules));

    for (size_t i = 0; rules && i < s->ntables; i++)
        rules[i] = rule_of(s, i);
    return rules;
}

const char *scope_catalog_query(struct scope *s)
{
    if (!s->catalog_query && s->ntables > 0) {
        const struct table_rule **rules = rules_of(s);
        size_t role_len;
        const char *role = scope_role(s, &role_len);
        char *role_z = strndup(role, role_len);
        if (rules && role_z)
            s->catalog_query = catalog_query(rules, s->ntables, role_z);
        free(rules);
        free(role_z);
    }
    return s->catalog_query;
}

const char *scope_identity_query(struct scope *s)
{
    if (!s->identity_query && s->ntables > 0) {
        const struct table_rule **rules = rules_of(s);
        if (rules)
            s->identity_query = catalog_identity_query(rules, s->ntables);
        free(rules);
    }
    return s->identity_query;
}

/* The scope of s's database for role: s itself when it is s's role. Made
 * when absent, while the ruleset has made fewer than RULESET_ROLE_SCOPES_MAX. */
static struct scope *scope_for_role(struct scope *s, const char *role, size_t len)
{
    size_t own_len;
    const char *own = scope_role(s, &own_len);
    struct ruleset *rs = s->rs;

    if (len == own_len && memcmp(role, own, len) == 0)
        return s;
    bool may_make = rs->role_scopes < RULESET_ROLE_SCOPES_MAX, made;
    struct scope *other = find_scope(rs, s->key, role, len, may_make, &made);

    rs->role_scopes += made;
    return other;
}

bool scope_identity_read(struct scope *s, const uint8_t *row, size_t len,
                         struct identity_answer *out)
{
    struct identity_row r;

    if (!catalog_identity_answer(row, len, s->ntables, &r))
        return false;
    out->signature = r.signature;
    out->signature_len = r.signature_len;
    out->scope = scope_for_role(s, r.role, r.role_len);
    out->fits = out->scope && out->scope->state == SCOPE_READY;
    for (size_t i = 0; i < s->ntables && out->fits; i++)
        out->fits = !out->scope->targets[i].unqualified_ok || r.flags[i] == 't';
    return true;
}

bool scope_login_identity(struct scope *s, const uint8_t *startup, size_t len,
                          struct identity_answer *out, uint64_t *answered)
{
    struct login_identity *e;

    HASH_FIND(hh, s->logins, startup, len, e);
    if (!e || !scope_identity_current(e->scope, e->version, e->answered) ||
        e->answered < s->answered_ns)
        return false;
    out->scope = e->scope;
    out->fits = e->fits;
    out->signature = e->signature;
    out->signature_len = e->signature_len;
    *answered = e->answered;
    return true;
}

void scope_keep_login_identity(struct scope *s, const uint8_t *startup, size_t len,
                               const struct identity_answer *answer, uint64_t now_ns)
{
    struct login_identity *e;
    char *signature;

    if (!answer->scope || !(signature = malloc(answer->signature_len + 1)))
        return;
    memcpy(signature, answer->signature, answer->signature_len);
    signature[answer->signature_len] = '\0';
    HASH_FIND(hh, s->logins, startup, len, e);
    if (!e) {
        if (HASH_COUNT(s->logins) == LOGIN_IDENTITY_MAX)
            drop_logins(s);
        if (!(e = malloc(sizeof(*e) + len))) {
            free(signature);
            return;
        }
        e->signature = NULL;
        memcpy(e->startup, startup, len);
        HASH_ADD(hh, s->logins, startup, len, e);
    }
    free(e->signature);
    e->signature = signature;
    e->signature_len = answer->signature_len;
    e->scope = answer->scope;
    e->fits = answer->fits;
    e->version = answer->scope->version;
    e->answered = now_ns;
}

/* Keeps in mine only what translating errors on partitions will need. */
static bool keep_partitions(struct catalog *mine, const struct catalog *cat)
{
    if (cat->nparts == 0)
        return true;
    mine->parts = calloc(cat->nparts, sizeof(*mine->parts));
    if (!mine->parts)
        return false;
    for (size_t i = 0; i < cat->nparts; i++) {
        const struct catalog_partition *from = &cat->parts[i];
        struct catalog_partition *to = &mine->parts[mine->nparts++];
        to->schema = strdup(from->schema);
        to->name = strdup(from->name);
        to->root_schema = strdup(from->root_schema);
        to->root_name = strdup(from->root_name);
        if (!to->schema || !to->name || !to->root_schema || !to->root_name)
            return false;
    }
    return true;
}

static bool same_text(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static bool same_verdict(const struct table_verdict *a, const struct table_verdict *b)
{
    return a->exists == b->exists && a->unqualified_ok == b->unqualified_ok &&
           same_text(a->clause_plain, b->clause_plain) &&
           same_text(a->clause_returning, b->clause_returning) &&
           a->why_plain == b->why_plain && a->why_returning == b->why_returning &&
           strcmp(a->problem, b->problem) == 0;
}

void scope_asking(struct scope *s)
{
    s->askers++;
}

/* Decides every table from cat into verdicts and partitions, fresh ones
 * the caller swaps in. False when out of memory (they are then freed). */
static bool decide_all(struct scope *s, const struct catalog *cat,
                       struct table_verdict *verdicts, struct catalog *partitions)
{
    size_t i = 0;

    while (i < s->ntables && catalog_decide(cat, rule_of(s, i), &verdicts[i]))
        i++;
    if (i == s->ntables && keep_partitions(partitions, cat))
        return true;
    while (i-- > 0)
        table_verdict_free(&verdicts[i]);
    catalog_free(partitions);
    return false;
}

bool scope_learn(struct scope *s, const struct catalog *cat, uint64_t now_ns)
{
    bool first = s->answered_ns == 0, any_change = s->state == SCOPE_UNKNOWN;
    struct table_verdict *fresh;
    struct catalog partitions;

    if (s->askers > 0)
        s->askers--;
    s->answered_ns = now_ns;
    memset(s->changed, 0, s->ntables * sizeof(*s->changed));
    if (!cat)
        return true;
    catalog_init(&partitions);
    if (!(fresh = calloc(s->ntables, sizeof(*fresh))) || !decide_all(s, cat, fresh, &partitions)) {
        free(fresh);
        return false;
    }
    for (size_t i = 0; i < s->ntables; i++) {
        const struct table_rule *rule = rule_of(s, i);
        struct table_verdict *v = &s->verdicts[i];
        s->changed[i] = first ? fresh[i].problem[0] != '\0'
                              : strcmp(v->problem, fresh[i].problem) != 0;
        any_change |= !same_verdict(v, &fresh[i]);
        table_verdict_free(v);
        *v = fresh[i];
        s->targets[i] = (struct rewrite_target){
            .schema = rule->schema,
            .name = rule->name,
            .unqualified_ok = v->unqualified_ok,
            .shadow = rule->mode == TABLE_MODE_SHADOW,
            .clause_plain = v->clause_plain,
            .clause_returning = v->clause_returning,
            .why_plain = v->why_plain,
            .why_returning = v->why_returning,
        };
    }
    free(fresh);
    catalog_free(&s->partitions);
    s->partitions = partitions;
    /* Decisions made under other verdicts would rewrite what is now
     * refused; those already handed out belong to their requests. */
    if (any_change) {
        drop_cache(s);
        s->version = now_ns;
    }
    s->rules.targets = s->targets;
    s->rules.count = s->ntables;
    s->state = SCOPE_READY;
    return true;
}

bool scope_table_changed(const struct scope *s, size_t i)
{
    return s->changed[i];
}

bool scope_due(const struct scope *s, uint64_t now_ns)
{
    uint64_t since = now_ns - s->answered_ns;
    uint64_t interval = (uint64_t)s->rs->cfg->catalog_check_interval * 1000000000u;

    if (s->askers > 0 || s->state == SCOPE_PASSTHROUGH)
        return false;
    /* In doubt since the last answer, or that answer failed: a failing
     * query is tried again at most once a second. */
    if (s->state == SCOPE_UNKNOWN)
        return s->answered_ns == 0 || s->doubted_ns > s->answered_ns ||
               since >= SCOPE_RECHECK_MIN_NS;
    return interval > 0 && since >= interval;
}

/* Whether some INSERT of the scope's is rewritten: otherwise no error can
 * be the rewrite's doing. */
static bool rewrites_any(const struct scope *s)
{
    for (size_t i = 0; i < s->ntables; i++)
        if (!s->targets[i].shadow && (s->targets[i].clause_plain || s->targets[i].clause_returning))
            return true;
    return false;
}

bool scope_distrust(struct scope *s, uint64_t now_ns)
{
    if (s->state != SCOPE_READY || !rewrites_any(s) ||
        (s->doubted_ns && now_ns - s->doubted_ns < SCOPE_RECHECK_MIN_NS))
        return false;
    s->state = SCOPE_UNKNOWN;
    s->doubted_ns = s->version = now_ns;
    return true;
}

uint64_t scope_version(const struct scope *s)
{
    return s->version;
}

bool scope_identity_current(const struct scope *s, uint64_t version, uint64_t answered)
{
    return version == s->version && answered >= s->answered_ns;
}

size_t scope_table_count(const struct scope *s)
{
    return s->ntables;
}

const struct table_rule *scope_table(const struct scope *s, size_t i)
{
    return rule_of(s, i);
}

const char *scope_table_problem(const struct scope *s, size_t i)
{
    return s->verdicts[i].problem;
}

const char *ruleset_table_check(const struct ruleset *rs, size_t table)
{
    const char *verdict = NULL;
    const struct scope *s, *tmp;

    HASH_ITER(hh, rs->scopes, s, tmp) {
        if (s->state != SCOPE_READY)
            continue;
        for (size_t i = 0; i < s->ntables; i++) {
            if (s->table_ids[i] != table)
                continue;
            if (s->verdicts[i].problem[0])
                return s->verdicts[i].problem;
            verdict = "";
        }
    }
    return verdict;
}

int scope_find_table(const struct scope *s, const char *schema, const char *name)
{
    const char *root_schema, *root_name;

    if (catalog_partition_root(&s->partitions, schema, name, &root_schema, &root_name)) {
        schema = root_schema;
        name = root_name;
    }
    for (size_t i = 0; i < s->ntables; i++) {
        const struct table_rule *rule = rule_of(s, i);
        if (strcmp(rule->schema, schema) == 0 && strcmp(rule->name, name) == 0)
            return (int)i;
    }
    return -1;
}

/* ---- decisions --------------------------------------------------------- */

void decision_unref(struct decision *d)
{
    if (!d || --d->refs > 0)
        return;
    rewrite_result_free(&d->result);
    decision_unref(d->shape);
    free(d->params);
    free(d);
}

const struct params_stmt *decision_params(const struct decision *d)
{
    return d->shape ? d->shape->params : NULL;
}

static void cache_store(struct scope *s, const char *key, size_t len, bool general,
                        struct decision *d)
{
    if (len > CACHE_MAX_TEXT)
        return;
    struct cache_entry *e = malloc(sizeof(*e) + len);
    if (!e)
        return;
    memcpy(e->text, key, len);
    e->len = len;
    e->bytes = len + (d->params ? d->params->text_len : 0);
    e->general = general;
    e->decision = d;
    d->refs++;
    HASH_ADD_KEYPTR(hh, s->cache, e->text, e->len, e);
    s->cache_bytes += e->bytes;
    while (s->cache && (HASH_COUNT(s->cache) > CACHE_MAX_ENTRIES ||
                        s->cache_bytes > CACHE_MAX_BYTES))
        cache_remove(s, s->cache);
}

static struct cache_entry *cache_find(struct scope *s, const char *key, size_t len)
{
    struct cache_entry *e;

    HASH_FIND(hh, s->cache, key, len, e);
    /* Most recently used goes to the end of uthash's order; its hash is
     * known. One there already stays: taking out the only entry would free
     * the table and adding it back allocate a new one. */
    if (e && s->cache->hh.tbl->tail != &e->hh) {
        unsigned hashv = e->hh.hashv;
        HASH_DELETE(hh, s->cache, e);
        HASH_ADD_KEYPTR_BYHASHVALUE(hh, s->cache, e->text, e->len, hashv, e);
    }
    return e;
}

/* A decision about a text whose constants sh gives (NULL: none). More
 * than can be parameters are not kept. */
static struct decision *decision_new(const struct shape *sh)
{
    size_t n = sh && sh->nconsts <= PARAMS_MAX ? sh->nconsts : 0;
    struct decision *d = calloc(1, sizeof(*d) + n * sizeof(d->consts[0]));

    if (d) {
        d->refs = 1;
        d->nconsts = n;
        if (n)
            memcpy(d->consts, sh->consts, n * sizeof(d->consts[0]));
    }
    return d;
}

/* The decision about a text whose shape is cached. */
static struct decision *decide_from_shape(const struct shape *sh, struct decision *general,
                                          const char *text, size_t len)
{
    struct decision *d = decision_new(sh);

    if (d && !shape_apply(sh, &general->result, text, len, &d->result)) {
        free(d);
        return NULL;
    }
    if (d) {
        d->shape = general;
        general->refs++;
    }
    return d;
}

/* Caches the decision about a text as its shape's, and makes it the
 * text's shape decision. A single rewritten statement gets its statement
 * with parameters, built here once for all the texts of the shape. */
static void cache_shape(struct scope *s, const struct shape *sh, struct decision *d)
{
    struct decision *general = decision_new(NULL);

    if (!general || !shape_generalise(sh, &d->result, &general->result)) {
        free(general);
        return;
    }
    const struct rewrite_result *r = &general->result;
    if (r->text && r->stmt_count == 1)
        general->params = params_stmt_of(r->text, r->text_len, sh->nconsts);
    cache_store(s, sh->key, sh->key_len, true, general);
    d->shape = general;
}

/* Where the server checks texts as UTF-8, a rewritten one must be: d
 * says whether it is not, found once per text. */
static void note_utf8(struct decision *d, const char *text, size_t len)
{
    d->not_utf8 = d->result.text && !rewrite_utf8_valid((const uint8_t *)text, len);
}

static struct decision *decide_text(struct scope *s, const char *text, size_t len, bool repeats,
                                    bool *fresh)
{
    struct shape *sh = &s->shape;
    struct decision *d;

    /* A text without constants (parameters only), or a Parse's seen
     * before, is found as it is, without masking it first. */
    struct cache_entry *as_is = cache_find(s, text, len);
    if (as_is && !as_is->general) {
        as_is->decision->refs++;
        return as_is->decision;
    }
    /* A long text may have a short shape: an INSERT of a large document
     * in one string constant. */
    bool shaped = shape_of(text, len, sh) && sh->key_len <= CACHE_MAX_TEXT;
    struct cache_entry *by_shape = shaped ? cache_find(s, sh->key, sh->key_len) : NULL;
    if (by_shape && by_shape->general &&
        (d = decide_from_shape(sh, by_shape->decision, text, len))) {
        note_utf8(d, text, len);
        if (repeats && !as_is)
            cache_store(s, text, len, false, d);
        return d;
    }
    d = decision_new(shaped ? sh : NULL);
    if (d && !rewrite_insert(&s->rules, text, len, &d->result)) {
        free(d);
        d = NULL;
    }
    if (d) {
        *fresh = true;
        note_utf8(d, text, len);
        if (shaped && !by_shape)
            cache_shape(s, sh, d);
        if ((!shaped || repeats) && !as_is)
            cache_store(s, text, len, false, d);
    }
    return d;
}

bool scope_may_decide(const struct scope *s, const char *text, size_t len)
{
    return s->state == SCOPE_READY && rewrite_prefilter(&s->rules, text, len);
}

struct decision *scope_decide(struct scope *s, const char *text, size_t len, bool repeats,
                              bool *fresh)
{
    *fresh = false;
    if (!scope_may_decide(s, text, len))
        return NULL;
    struct decision *d = decide_text(s, text, len, repeats, fresh);
    /* The masking buffers grow to the longest text masked; one far longer
     * than any cached shape does not keep them for the next. */
    if (s->shape.key_cap > 4 * CACHE_MAX_TEXT)
        shape_free(&s->shape);
    return d;
}

void scope_count(struct scope *s, const struct decision *d)
{
    struct ruleset *rs = s->rs;

    if (!d) {
        counter_add(&rs->others[RR_NOT_INSERT], 1);
        return;
    }
    if (d->result.nstmts == 0) {
        counter_add(&rs->others[d->result.reason], 1);
        return;
    }
    for (size_t i = 0; i < d->result.nstmts; i++) {
        const struct rewrite_stmt *st = &d->result.stmts[i];
        counter_add(&rs->counts[s->table_ids[st->target]]->rewrite[st->reason], 1);
    }
}

void scope_count_reason(struct scope *s, enum rewrite_reason reason)
{
    counter_add(&s->rs->others[reason], 1);
}

void scope_count_translation(struct scope *s, size_t i, enum translate_reason reason)
{
    counter_add(&s->rs->counts[s->table_ids[i]]->translation[reason], 1);
}

uint64_t ruleset_translation_count(const struct ruleset *rs, size_t table,
                                   enum translate_reason reason)
{
    return table < rs->cfg->table_count ? counter_get(&rs->counts[table]->translation[reason])
                                        : 0;
}

bool scope_translates(const struct scope *s, size_t i)
{
    const struct table_rule *rule = rule_of(s, i);
    return rule->translate_errors && rule->mode == TABLE_MODE_ENFORCE;
}
