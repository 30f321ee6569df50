/* libFuzzer target: the INSERT rewriter on arbitrary SQL text. Beyond not
 * crashing or leaking, what it returns must hang together: the new text is
 * the old one with each clause spliced in at its offset and nothing else
 * changed, error positions map back inside the original, the prefilter
 * never turns away a text the rewriter would have acted on, a decision
 * carried through the text's shape (the decision cache's path) is the
 * decision itself, and a rewritten text run as its shape's statement with
 * parameters is that text again once its values are put back. And the
 * check for statements that redefine prepared ones misses none. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include "params.h"
#include "pgproto.h"
#include "rewrite.h"
#include "shape.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct rewrite_target targets[] = {
    { "public", "webhook_events", true, false,
      " ON CONFLICT (\"idempotency_key\") DO NOTHING",
      " ON CONFLICT (\"idempotency_key\") DO UPDATE SET \"idempotency_key\" = EXCLUDED.\"idempotency_key\"",
      RR_REWRITTEN, RR_REWRITTEN },
    { "billing", "Payments", false, false,
      " ON CONFLICT (\"payment_id\") DO UPDATE SET \"amount\" = EXCLUDED.\"amount\"",
      NULL, RR_REWRITTEN, RR_FORBIDDEN },
    { "public", "audit_log", true, true, " ON CONFLICT DO NOTHING", NULL, RR_REWRITTEN, RR_ACTION_NONE },
};

static const struct rewrite_rules rules = { targets, sizeof(targets) / sizeof(targets[0]) };

/* Positions beyond this many are sampled, not all tried. */
#define MAP_ALL_BELOW 4096

static void check(bool cond)
{
    if (!cond)
        abort();
}

static const char *clause_of(const struct rewrite_stmt *st)
{
    const struct rewrite_target *t = &targets[st->target];
    return st->returning ? t->clause_returning : t->clause_plain;
}

/* What rewrite_map_position must say when characters are bytes. */
static size_t expected_byte_position(const struct rewrite_result *r, size_t pos)
{
    size_t q = pos - 1, shift = 0;
    for (size_t i = 0; i < r->nstmts; i++) {
        const struct rewrite_stmt *st = &r->stmts[i];
        if (st->reason != RR_REWRITTEN)
            continue;
        size_t start = st->offset + shift;
        if (q < start)
            break;
        if (q < start + st->inserted)
            return st->offset + 1;
        shift += st->inserted;
    }
    return pos - shift;
}

static void check_result(const char *text, size_t len, const struct rewrite_result *r)
{
    check(r->reason < RR_COUNT);
    check(r->nstmts == 0 || r->stmts != NULL);
    if (r->reason == RR_PARSE_ERROR)
        check(r->stmt_count == 0 && r->nstmts == 0);
    check((r->text != NULL) == (r->reason == RR_REWRITTEN));
    /* The rules count a text by its statements, or with none by its own
     * reason, which is then no table's. */
    check(r->nstmts > 0 || !rewrite_reason_of_table(r->reason));

    size_t last_offset = 0, last_index = 0, rewritten = 0;
    bool placed = false;
    for (size_t i = 0; i < r->nstmts; i++) {
        const struct rewrite_stmt *st = &r->stmts[i];
        check(st->target < rules.count);
        check(st->reason < RR_COUNT);
        check(rewrite_reason_of_table(st->reason));
        check(st->index < r->stmt_count);
        check(st->index >= last_index);
        last_index = st->index;
        check(st->offset <= len);
        check(st->offset_chars <= st->offset);
        if (st->reason == RR_REWRITTEN) {
            const char *clause = clause_of(st);
            check(clause != NULL);
            check(st->inserted == strlen(clause));
            rewritten++;
        } else {
            check(st->inserted == 0);
        }
        /* Where a clause goes (or would go), one statement after the
         * other: strictly increasing. */
        if (st->reason == RR_REWRITTEN || st->reason == RR_SHADOW) {
            check(!placed || st->offset > last_offset);
            last_offset = st->offset;
            placed = true;
        }
    }
    check((rewritten > 0) == (r->reason == RR_REWRITTEN));

    if (r->text) {
        check(r->text_len == strlen(r->text));
        /* Take every clause out again: the input must come back. */
        size_t from = 0, at = 0, shift = 0;
        for (size_t i = 0; i < r->nstmts; i++) {
            const struct rewrite_stmt *st = &r->stmts[i];
            if (st->reason != RR_REWRITTEN)
                continue;
            size_t n = st->offset - from;
            check(at + n + st->inserted <= r->text_len);
            check(memcmp(r->text + at, text + from, n) == 0);
            at += n;
            check(memcmp(r->text + at, clause_of(st), st->inserted) == 0);
            at += st->inserted;
            from = st->offset;
            shift += st->inserted;
        }
        check(r->text_len - at == len - from);
        check(memcmp(r->text + at, text + from, len - from) == 0);
        check(r->text_len == len + shift);
    }

    /* Error positions, as the server reports them, land in the original. */
    size_t top = r->text ? r->text_len + 1 : len + 1;
    size_t step = top < MAP_ALL_BELOW ? 1 : top / 997 + 1;
    size_t prev_chars = 0, prev_bytes = 0;
    for (size_t pos = 1; pos <= top; pos += step) {
        size_t chars = rewrite_map_position(r, pos, true);
        size_t bytes = rewrite_map_position(r, pos, false);
        check(chars >= 1 && chars <= len + 1);
        check(bytes >= 1 && bytes <= len + 1);
        check(chars >= prev_chars && bytes >= prev_bytes);
        check(bytes == expected_byte_position(r, pos));
        prev_chars = chars;
        prev_bytes = bytes;
    }
}

static void check_same(const struct rewrite_result *a, const struct rewrite_result *b)
{
    check(a->reason == b->reason && a->stmt_count == b->stmt_count && a->nstmts == b->nstmts);
    check((a->text == NULL) == (b->text == NULL));
    check(!a->text || (a->text_len == b->text_len && memcmp(a->text, b->text, a->text_len) == 0));
    for (size_t i = 0; i < a->nstmts; i++) {
        const struct rewrite_stmt *x = &a->stmts[i], *y = &b->stmts[i];
        check(x->target == y->target && x->index == y->index && x->reason == y->reason &&
              x->returning == y->returning && x->offset == y->offset &&
              x->offset_chars == y->offset_chars && x->inserted == y->inserted);
    }
}

/* Generalised to its shape and applied back, the decision is unchanged. */
static void check_shape_round_trip(const char *text, size_t len, const struct rewrite_result *r)
{
    struct shape sh = { 0 };
    struct rewrite_result general, back;

    if (!shape_of(text, len, &sh)) {
        shape_free(&sh);
        return;
    }
    check(sh.key_len <= 2 * len && sh.key[sh.key_len] == '\0');
    if (shape_generalise(&sh, r, &general)) {
        if (shape_apply(&sh, &general, text, len, &back)) {
            check_same(&back, r);
            rewrite_result_free(&back);
        }
        rewrite_result_free(&general);
    }
    shape_free(&sh);
}

/* A Query's INSERT runs as its shape's statement with parameters. The
 * decision generalised to the shape must have the rewritten text's own
 * key (error positions are mapped through the rewritten text). Where that
 * key has a mask the statement has the next "$k", and the k-th value (a
 * string quoted again) is the constant's text in the client's text;
 * everywhere else the statement is the key. Every position maps inside
 * the rewritten text. */
static void check_params(const char *text, size_t len, const struct rewrite_result *r)
{
    struct shape sh = { 0 }, own = { 0 };
    struct rewrite_result general;
    struct params p = { 0 };

    if (!shape_of(text, len, &sh) || !shape_generalise(&sh, r, &general)) {
        shape_free(&sh);
        return;
    }
    check(shape_of(r->text, r->text_len, &own) && own.nconsts == sh.nconsts &&
          own.key_len == general.text_len && memcmp(own.key, general.text, own.key_len) == 0);
    const char *key = general.text;
    size_t key_len = general.text_len;
    struct params_stmt *ps = params_stmt_of(key, key_len, sh.nconsts);
    check(!ps || !params_bind(ps, sh.consts, sh.nconsts + 1, text, len, &p));
    if (ps && params_bind(ps, sh.consts, sh.nconsts, text, len, &p)) {
        check(ps->text[ps->text_len] == '\0' &&
              (size_t)(p.types[0] << 8 | p.types[1]) == sh.nconsts);
        const uint8_t *value = p.values + 2;
        size_t s = 0, k = 0;
        for (size_t i = 0; i < key_len;) {
            if (key[i] != '\x01') {
                check(s < ps->text_len && ps->text[s++] == key[i++]);
                continue;
            }
            check(ps->text[s++] == '$');
            size_t number = 0;
            while (s < ps->text_len && ps->text[s] >= '0' && ps->text[s] <= '9')
                number = number * 10 + (size_t)(ps->text[s++] - '0');
            check(number == ++k && ps->kinds[k - 1] == key[i + 1]);
            const struct shape_const *c = &sh.consts[k - 1];
            uint32_t n = pg_get_u32(value);
            const char *v = (const char *)value + 4, *orig = text + c->at;
            if (key[i + 1] == 's') {
                size_t at = 1;
                for (uint32_t j = 0; j < n; j++) {
                    check(orig[at++] == v[j]);
                    if (v[j] == '\'')
                        check(orig[at++] == '\'');
                }
                check(at + 1 == c->len && orig[at] == '\'');
            } else {
                check(n == c->len && memcmp(v, orig, n) == 0);
            }
            value += 4 + n;
            i += 2;
        }
        check(s == ps->text_len && k == sh.nconsts && value == p.values + p.values_len);
        for (size_t pos = 1; pos <= ps->text_len + 1 && pos < MAP_ALL_BELOW; pos++) {
            size_t back = params_position(r->text, r->text_len, pos, true);
            check(back >= 1 && back <= r->text_len + 1);
        }
    }
    free(ps);
    params_free(&p);
    rewrite_result_free(&general);
    shape_free(&own);
    shape_free(&sh);
}

/* libpg_query's reading of a text: tree is NULL when it cannot parse it. */
struct tree {
    PgQueryProtobufParseResult raw;
    PgQuery__ParseResult *tree;
};

static struct tree tree_of(const char *text)
{
    struct tree t = { .raw = pg_query_parse_protobuf(text) };

    if (!t.raw.error)
        t.tree = pg_query__parse_result__unpack(NULL, t.raw.parse_tree.len,
                                                (const uint8_t *)t.raw.parse_tree.data);
    return t;
}

static void tree_free(struct tree *t)
{
    if (t->tree)
        pg_query__parse_result__free_unpacked(t->tree, NULL);
    pg_query_free_protobuf_parse_result(t->raw);
}

/* What only looks where statements begin misses no statement the parser
 * reads as DEALLOCATE or DISCARD, and what is said to be dropped covers
 * every name the parser finds a DEALLOCATE of. */
static void check_drops(const char *text, size_t len)
{
    if (!strcasestr(text, "deallocate") && !strcasestr(text, "discard"))
        return;
    struct tree t = tree_of(text);
    struct rewrite_drops drops = { 0 };
    bool flagged = rewrite_effects(text, len) & REWRITE_DROPS_STATEMENTS;
    if (flagged)
        check(rewrite_dropped_statements(text, &drops));
    for (size_t i = 0; t.tree && i < t.tree->n_stmts; i++) {
        const PgQuery__Node *stmt = t.tree->stmts[i]->stmt;
        if (stmt->node_case != PG_QUERY__NODE__NODE_DEALLOCATE_STMT &&
            stmt->node_case != PG_QUERY__NODE__NODE_DISCARD_STMT)
            continue;
        check(flagged);
        const char *name = stmt->node_case == PG_QUERY__NODE__NODE_DEALLOCATE_STMT
                               ? stmt->deallocate_stmt->name
                               : NULL;
        bool covered = drops.all || !name || !name[0];
        for (size_t k = 0; !covered && k < drops.names.count; k++)
            covered = strcmp(drops.names.names[k], name) == 0;
        check(covered);
    }
    rewrite_drops_free(&drops);
    tree_free(&t);
}

/* What may change where a session's names lead or as whom it runs, as the
 * parser reads it, is never missed by the look at statement starts. */
static bool changes_identity_per_parser(const PgQuery__Node *stmt)
{
    switch (stmt->node_case) {
    case PG_QUERY__NODE__NODE_VARIABLE_SET_STMT: {
        const PgQuery__VariableSetStmt *set = stmt->variable_set_stmt;
        const char *name = set->name ? set->name : "";
        return set->kind == PG_QUERY__VARIABLE_SET_KIND__VAR_RESET_ALL ||
               strcmp(name, "search_path") == 0 || strcmp(name, "role") == 0 ||
               strcmp(name, "session_authorization") == 0;
    }
    case PG_QUERY__NODE__NODE_DISCARD_STMT:
    case PG_QUERY__NODE__NODE_CREATE_STMT:
    case PG_QUERY__NODE__NODE_DROP_STMT:
    case PG_QUERY__NODE__NODE_DO_STMT:
    case PG_QUERY__NODE__NODE_CALL_STMT:
    case PG_QUERY__NODE__NODE_EXECUTE_STMT:
    case PG_QUERY__NODE__NODE_IMPORT_FOREIGN_SCHEMA_STMT:
        return true;
    default:
        return false;
    }
}

/* The tokens of the set_config call whose name is token i: its third
 * argument, at the top level of its parentheses, is the keyword true
 * alone. */
static bool set_config_true_per_scanner(const PgQuery__ScanResult *scan, size_t i)
{
    size_t depth = 0, commas = 0, in_third = 0;
    bool only_true = false;

    for (i++; i < scan->n_tokens; i++) {
        const PgQuery__ScanToken *tok = scan->tokens[i];
        if (tok->token == PG_QUERY__TOKEN__SQL_COMMENT || tok->token == PG_QUERY__TOKEN__C_COMMENT)
            continue;
        if (depth == 0 && tok->token != PG_QUERY__TOKEN__ASCII_40)
            return false;
        if (tok->token == PG_QUERY__TOKEN__ASCII_40) {
            depth++;
        } else if (tok->token == PG_QUERY__TOKEN__ASCII_41 && --depth == 0) {
            return commas == 2 && only_true && in_third == 1;
        } else if (tok->token == PG_QUERY__TOKEN__ASCII_44 && depth == 1) {
            commas++;
            continue;
        }
        if (commas == 2 && depth >= 1) {
            in_third++;
            only_true = tok->token == PG_QUERY__TOKEN__TRUE_P;
        }
    }
    return false;
}

/* The next token after i that is not a comment, or NULL. */
static const PgQuery__ScanToken *next_token(const PgQuery__ScanResult *scan, size_t *i)
{
    for ((*i)++; *i < scan->n_tokens; (*i)++)
        if (scan->tokens[*i]->token != PG_QUERY__TOKEN__SQL_COMMENT &&
            scan->tokens[*i]->token != PG_QUERY__TOKEN__C_COMMENT)
            return scan->tokens[*i];
    return NULL;
}

/* The set_config call whose name is token i sets a custom setting: its
 * first argument is a string constant alone whose text has a dot, which
 * neither search_path nor role has. */
static bool sets_custom_per_scanner(const PgQuery__ScanResult *scan, const char *text, size_t i)
{
    const PgQuery__ScanToken *open = next_token(scan, &i);
    const PgQuery__ScanToken *first = open ? next_token(scan, &i) : NULL;
    const PgQuery__ScanToken *comma = first ? next_token(scan, &i) : NULL;

    return open && open->token == PG_QUERY__TOKEN__ASCII_40 && first &&
           first->token == PG_QUERY__TOKEN__SCONST &&
           memchr(text + first->start, '.', (size_t)(first->end - first->start)) && comma &&
           comma->token == PG_QUERY__TOKEN__ASCII_44;
}

/* A text said to change the identity only until its transaction ends
 * does so as the parser and the scanner read it: every statement that
 * changes it is a SET LOCAL, and every call of set_config has the keyword
 * true alone as its third argument. */
static void check_identity_local(const char *text, size_t len)
{
    unsigned effects = rewrite_effects(text, len);

    check(!(effects & REWRITE_IDENTITY_LOCAL) || (effects & REWRITE_CHANGES_IDENTITY));
    /* A vertical tab is whitespace to the servers from PostgreSQL 16 on,
     * which the proxy reads them as; this parser (15) sees a bad token,
     * and so would a server of 15, which then changes nothing. */
    if (!(effects & REWRITE_IDENTITY_LOCAL) || memchr(text, '\v', len))
        return;
    struct tree t = tree_of(text);
    for (size_t i = 0; t.tree && i < t.tree->n_stmts; i++) {
        const PgQuery__Node *stmt = t.tree->stmts[i]->stmt;
        if (changes_identity_per_parser(stmt))
            check(stmt->node_case == PG_QUERY__NODE__NODE_VARIABLE_SET_STMT &&
                  stmt->variable_set_stmt->is_local);
    }
    tree_free(&t);
    PgQueryScanResult raw = pg_query_scan(text);
    PgQuery__ScanResult *scan =
        raw.error ? NULL
                  : pg_query__scan_result__unpack(NULL, raw.pbuf.len,
                                                  (const uint8_t *)raw.pbuf.data);
    for (size_t i = 0; scan && i < scan->n_tokens; i++) {
        const PgQuery__ScanToken *tok = scan->tokens[i];
        if (tok->token == PG_QUERY__TOKEN__IDENT && tok->end - tok->start == 10 &&
            strncasecmp(text + tok->start, "set_config", 10) == 0 &&
            !sets_custom_per_scanner(scan, text, i))
            check(set_config_true_per_scanner(scan, i));
    }
    if (scan)
        pg_query__scan_result__free_unpacked(scan, NULL);
    pg_query_free_scan_result(raw);
}

static void check_identity(const char *text, size_t len)
{
    if (rewrite_effects(text, len) & REWRITE_CHANGES_IDENTITY)
        return;
    struct tree t = tree_of(text);
    for (size_t i = 0; t.tree && i < t.tree->n_stmts; i++)
        check(!changes_identity_per_parser(t.tree->stmts[i]->stmt));
    tree_free(&t);
}

/* A text said to open a block does so as the parser reads its first
 * statement: a BEGIN or START TRANSACTION. A guard's savepoint rests on
 * it: outside a block the server refuses the savepoint. */
static void check_begins(const char *text, size_t len)
{
    if (!(rewrite_effects(text, len) & REWRITE_BEGINS_BLOCK) || memchr(text, '\v', len))
        return;
    struct tree t = tree_of(text);
    if (t.tree && t.tree->n_stmts > 0) {
        const PgQuery__Node *stmt = t.tree->stmts[0]->stmt;
        check(stmt && stmt->node_case == PG_QUERY__NODE__NODE_TRANSACTION_STMT);
        PgQuery__TransactionStmtKind kind = stmt->transaction_stmt->kind;
        check(kind == PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_BEGIN ||
              kind == PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_START);
    }
    tree_free(&t);
}

/* A Query taken to open a block parses, and holds BEGIN first and then
 * nothing but BEGINs and SET TRANSACTIONs. */
static void check_opens_block(const char *text, size_t len)
{
    if (!rewrite_opens_block(text, len))
        return;
    struct tree t = tree_of(text);
    check(t.tree && t.tree->n_stmts > 0);
    for (size_t i = 0; i < t.tree->n_stmts; i++) {
        const PgQuery__Node *stmt = t.tree->stmts[i]->stmt;
        bool begins = stmt->node_case == PG_QUERY__NODE__NODE_TRANSACTION_STMT &&
                      (stmt->transaction_stmt->kind ==
                           PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_BEGIN ||
                       stmt->transaction_stmt->kind ==
                           PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_START);
        bool sets = stmt->node_case == PG_QUERY__NODE__NODE_VARIABLE_SET_STMT &&
                    strcmp(stmt->variable_set_stmt->name, "TRANSACTION") == 0;
        check(begins || (i > 0 && sets));
    }
    tree_free(&t);
}

/* A Parse's text (one statement) known only by its first bytes: whatever
 * their number, what the whole text may drop is said to be dropped, and a
 * change of identity may come. */
static void check_unread(const char *text, size_t len)
{
    if (memchr(text, ';', len))
        return;
    bool drops = rewrite_effects(text, len) & REWRITE_DROPS_STATEMENTS;
    for (size_t k = 0; k <= len && k <= 256; k++) {
        unsigned part = rewrite_unread_effects(text, k);
        check(part & REWRITE_CHANGES_IDENTITY);
        check(!drops || (part & REWRITE_DROPS_STATEMENTS));
    }
}

/* rewrite_utf8_valid against a decoder by code points: each sequence's
 * value must need its length, lie below U+110000, off the surrogates, and
 * not be NUL. */
static void check_utf8(const uint8_t *data, size_t size)
{
    bool valid = true;

    for (size_t i = 0; i < size && valid;) {
        uint8_t b = data[i];
        size_t n = b < 0x80 ? 1 : (b & 0xe0) == 0xc0 ? 2 : (b & 0xf0) == 0xe0 ? 3 :
                   (b & 0xf8) == 0xf0 ? 4 : 0;
        static const uint32_t least[5] = { 0, 0, 0x80, 0x800, 0x10000 };
        uint32_t cp = n == 1 ? b : n == 2 ? b & 0x1fu : n == 3 ? b & 0x0fu : b & 0x07u;
        if (n == 0 || size - i < n) {
            valid = false;
            break;
        }
        for (size_t j = 1; j < n; j++) {
            if ((data[i + j] & 0xc0) != 0x80)
                valid = false;
            cp = cp << 6 | (data[i + j] & 0x3fu);
        }
        if (cp == 0 || cp < least[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            valid = false;
        i += n;
    }
    check(rewrite_utf8_valid(data, size) == valid);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_utf8(data, size);
    /* Query and Parse carry a NUL-terminated string: stop at the first NUL. */
    const uint8_t *nul = memchr(data, '\0', size);
    size_t len = nul ? (size_t)(nul - data) : size;
    char *text = malloc(len + 1);
    if (!text)
        return 0;
    memcpy(text, data, len);
    text[len] = '\0';

    struct rewrite_result r;
    if (rewrite_insert(&rules, text, len, &r)) {
        check_result(text, len, &r);
        /* No false negatives: what the prefilter turns away was nothing. */
        if (!rewrite_prefilter(&rules, text, len))
            check(r.reason == RR_NOT_INSERT && r.stmt_count == 0);
        check_shape_round_trip(text, len, &r);
        if (r.text)
            check_params(text, len, &r);
        rewrite_result_free(&r);
    }
    check_drops(text, len);
    check_identity(text, len);
    check_identity_local(text, len);
    check_unread(text, len);
    check_begins(text, len);
    check_opens_block(text, len);
    free(text);
    return 0;
}
