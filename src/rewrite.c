#include "rewrite.h"

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *const reason_names[RR_COUNT] = {
    [RR_REWRITTEN] = "rewritten",
    [RR_SHADOW] = "shadow",
    [RR_NOT_INSERT] = "not_insert",
    [RR_OTHER_TABLE] = "other_table",
    [RR_HAS_ON_CONFLICT] = "has_on_conflict",
    [RR_NESTED] = "nested",
    [RR_ACTION_NONE] = "action_none",
    [RR_FORBIDDEN] = "forbidden",
    [RR_PARSE_ERROR] = "parse_error",
    [RR_TOO_LARGE] = "too_large",
    [RR_SESSION] = "session_settings",
    [RR_UNVERIFIED] = "unverified",
};

const char *rewrite_reason_name(enum rewrite_reason reason)
{
    return reason < RR_COUNT ? reason_names[reason] : "unknown";
}

bool rewrite_reason_of_table(enum rewrite_reason reason)
{
    switch (reason) {
    case RR_REWRITTEN:
    case RR_SHADOW:
    case RR_HAS_ON_CONFLICT:
    case RR_NESTED:
    case RR_ACTION_NONE:
    case RR_FORBIDDEN:
    case RR_UNVERIFIED:
        return true;
    case RR_NOT_INSERT:
    case RR_OTHER_TABLE:
    case RR_PARSE_ERROR:
    case RR_TOO_LARGE:
    case RR_SESSION:
    case RR_COUNT:
        break;
    }
    return false;
}

/* ---- the pre-filter ---------------------------------------------------- */

static inline unsigned char fold(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c | 0x20) : c;
}

/* Case-insensitive (ASCII) search for the first n bytes of needle. Every
 * Query and Parse passes here several times, so the candidates are found
 * with memchr, each case of the first byte on its own: a case is searched
 * again only once the candidate it found has failed. */
static bool contains_folded(const char *text, size_t len, const char *needle, size_t n)
{
    if (n == 0)
        return true;
    if (n > len)
        return false;
    unsigned char lower = fold((unsigned char)needle[0]);
    unsigned char upper = lower >= 'a' && lower <= 'z' ? (unsigned char)(lower - 0x20) : lower;
    const char *end = text + len - n + 1; /* the last start + 1 */
    const char *lo = memchr(text, lower, (size_t)(end - text));
    const char *up = upper != lower ? memchr(text, upper, (size_t)(end - text)) : NULL;

    while (lo || up) {
        const char *at = !up || (lo && lo < up) ? lo : up;
        size_t k = 1;
        while (k < n && fold((unsigned char)at[k]) == fold((unsigned char)needle[k]))
            k++;
        if (k == n)
            return true;
        if (at == lo)
            lo = memchr(at + 1, lower, (size_t)(end - at - 1));
        else
            up = memchr(at + 1, upper, (size_t)(end - at - 1));
    }
    return false;
}

bool rewrite_prefilter(const struct rewrite_rules *rules, const char *text, size_t len)
{
    if (rules->count == 0 || !contains_folded(text, len, "insert", 6))
        return false;
    /* A name in U&"..." form may be spelt with escapes: only the parser can
     * tell, so let it. */
    if (contains_folded(text, len, "u&\"", 3))
        return true;
    for (size_t i = 0; i < rules->count; i++) {
        /* Folding both sides only widens the net for quoted mixed-case
         * names. A quote inside a name is written doubled, so only the part
         * before it is searched for as it stands. */
        const char *name = rules->targets[i].name;
        if (contains_folded(text, len, name, strcspn(name, "\"")))
            return true;
    }
    return false;
}

/* ---- recognising ------------------------------------------------------- */

/* What the walk over the parse tree found, before any text is touched. */
struct walk {
    const struct rewrite_rules *rules;
    struct rewrite_result *out;
    size_t cap;
    bool saw_insert;
    bool oom;
};

static int find_target(const struct rewrite_rules *rules, const PgQuery__RangeVar *rv)
{
    bool qualified = rv->schemaname && rv->schemaname[0];

    for (size_t i = 0; i < rules->count; i++) {
        const struct rewrite_target *t = &rules->targets[i];
        if (strcmp(t->name, rv->relname) != 0)
            continue;
        if (qualified ? strcmp(t->schema, rv->schemaname) == 0 : t->unqualified_ok)
            return (int)i;
    }
    return -1;
}

static struct rewrite_stmt *add_stmt(struct walk *w, size_t target, size_t index,
                                     enum rewrite_reason reason)
{
    struct rewrite_result *out = w->out;

    if (out->nstmts == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 4;
        struct rewrite_stmt *grown = realloc(out->stmts, cap * sizeof(*grown));
        if (!grown) {
            w->oom = true;
            return NULL;
        }
        out->stmts = grown;
        w->cap = cap;
    }
    struct rewrite_stmt *s = &out->stmts[out->nstmts++];
    memset(s, 0, sizeof(*s));
    s->target = target;
    s->index = index;
    s->reason = reason;
    return s;
}

/* An INSERT the statement does not run at its own top level: inside a WITH,
 * an EXPLAIN or a COPY. Rewriting those would need the clause spliced into
 * the middle of another statement; they are counted and left alone. */
static void note_nested_insert(struct walk *w, const PgQuery__Node *node, size_t index)
{
    if (!node || node->node_case != PG_QUERY__NODE__NODE_INSERT_STMT)
        return;
    w->saw_insert = true;
    int t = find_target(w->rules, node->insert_stmt->relation);
    if (t >= 0)
        add_stmt(w, (size_t)t, index, RR_NESTED);
}

static void note_with_clause(struct walk *w, const PgQuery__WithClause *with, size_t index)
{
    if (!with)
        return;
    for (size_t i = 0; i < with->n_ctes; i++) {
        const PgQuery__Node *cte = with->ctes[i];
        if (cte->node_case == PG_QUERY__NODE__NODE_COMMON_TABLE_EXPR)
            note_nested_insert(w, cte->common_table_expr->ctequery, index);
    }
}

static const PgQuery__WithClause *with_clause_of(const PgQuery__Node *node)
{
    switch (node->node_case) {
    case PG_QUERY__NODE__NODE_SELECT_STMT: return node->select_stmt->with_clause;
    case PG_QUERY__NODE__NODE_INSERT_STMT: return node->insert_stmt->with_clause;
    case PG_QUERY__NODE__NODE_UPDATE_STMT: return node->update_stmt->with_clause;
    case PG_QUERY__NODE__NODE_DELETE_STMT: return node->delete_stmt->with_clause;
    default: return NULL;
    }
}

/* An INSERT that is the statement (or the body of a PREPARE): the kind the
 * clause can be spliced into. */
static void note_top_insert(struct walk *w, const PgQuery__InsertStmt *ins, size_t index)
{
    w->saw_insert = true;
    int t = find_target(w->rules, ins->relation);
    if (t < 0)
        return;

    const struct rewrite_target *target = &w->rules->targets[t];
    bool returning = ins->n_returning_list > 0;
    const char *clause = returning ? target->clause_returning : target->clause_plain;
    enum rewrite_reason reason;

    if (ins->on_conflict_clause)
        reason = RR_HAS_ON_CONFLICT;
    else if (!clause)
        reason = returning ? target->why_returning : target->why_plain;
    else if (ins->relation->alias && strcmp(ins->relation->alias->aliasname, "excluded") == 0 &&
             strstr(clause, "DO UPDATE"))
        /* EXCLUDED.col would be ambiguous. */
        reason = RR_FORBIDDEN;
    else
        reason = target->shadow ? RR_SHADOW : RR_REWRITTEN;

    struct rewrite_stmt *s = add_stmt(w, (size_t)t, index, reason);
    if (s)
        s->returning = returning;
}

static void walk_statement(struct walk *w, const PgQuery__Node *node, size_t index)
{
    note_with_clause(w, with_clause_of(node), index);
    switch (node->node_case) {
    case PG_QUERY__NODE__NODE_INSERT_STMT:
        note_top_insert(w, node->insert_stmt, index);
        break;
    case PG_QUERY__NODE__NODE_PREPARE_STMT: {
        const PgQuery__Node *query = node->prepare_stmt->query;
        if (query && query->node_case == PG_QUERY__NODE__NODE_INSERT_STMT) {
            note_with_clause(w, query->insert_stmt->with_clause, index);
            note_top_insert(w, query->insert_stmt, index);
        }
        break;
    }
    case PG_QUERY__NODE__NODE_EXPLAIN_STMT:
        if (node->explain_stmt->query) {
            note_with_clause(w, with_clause_of(node->explain_stmt->query), index);
            note_nested_insert(w, node->explain_stmt->query, index);
        }
        break;
    case PG_QUERY__NODE__NODE_COPY_STMT:
        if (node->copy_stmt->query) {
            note_with_clause(w, with_clause_of(node->copy_stmt->query), index);
            note_nested_insert(w, node->copy_stmt->query, index);
        }
        break;
    default:
        break;
    }
}

/* The InsertStmt a top-level statement splices into, or NULL. */
static const PgQuery__InsertStmt *spliceable_insert(const PgQuery__Node *node)
{
    if (node->node_case == PG_QUERY__NODE__NODE_INSERT_STMT)
        return node->insert_stmt;
    if (node->node_case == PG_QUERY__NODE__NODE_PREPARE_STMT && node->prepare_stmt->query &&
        node->prepare_stmt->query->node_case == PG_QUERY__NODE__NODE_INSERT_STMT)
        return node->prepare_stmt->query->insert_stmt;
    return NULL;
}

/* ---- where the clause goes --------------------------------------------- */

static bool is_comment(const PgQuery__ScanToken *tok)
{
    return tok->token == PG_QUERY__TOKEN__SQL_COMMENT || tok->token == PG_QUERY__TOKEN__C_COMMENT;
}

/* The end of the last real token that starts in [from, before): where the
 * clause goes, ahead of whatever comments and blanks follow. 0 if none. */
static size_t last_token_end(const PgQuery__ScanResult *scan, size_t from, size_t before)
{
    size_t end = 0;

    for (size_t i = 0; i < scan->n_tokens; i++) {
        const PgQuery__ScanToken *tok = scan->tokens[i];
        if ((size_t)tok->start >= before)
            break;
        if ((size_t)tok->start >= from && !is_comment(tok))
            end = (size_t)tok->end;
    }
    return end;
}

/* The start of the RETURNING keyword that introduces a list whose first
 * entry begins at first_target: the last real token before it. */
static bool returning_keyword_at(const PgQuery__ScanResult *scan, size_t from,
                                 size_t first_target, size_t *at)
{
    const PgQuery__ScanToken *last = NULL;

    for (size_t i = 0; i < scan->n_tokens; i++) {
        const PgQuery__ScanToken *tok = scan->tokens[i];
        if ((size_t)tok->start >= first_target)
            break;
        if ((size_t)tok->start >= from && !is_comment(tok))
            last = tok;
    }
    if (!last || last->token != PG_QUERY__TOKEN__RETURNING)
        return false;
    *at = (size_t)last->start;
    return true;
}

size_t rewrite_utf8_chars(const char *text, size_t len)
{
    size_t n = 0;

    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)text[i] & 0xC0) != 0x80;
    return n;
}

/* Sets offset (and offset_chars) of every statement to be rewritten or
 * shadowed. False when a position cannot be found, which the grammar rules
 * out; such statements are marked unverified. */
static bool place_clauses(struct rewrite_result *out, const PgQuery__ParseResult *tree,
                          const char *text, size_t len)
{
    PgQueryScanResult raw = pg_query_scan(text);
    PgQuery__ScanResult *scan = NULL;
    bool ok = !raw.error;

    if (ok) {
        scan = pg_query__scan_result__unpack(NULL, raw.pbuf.len, (const uint8_t *)raw.pbuf.data);
        ok = scan != NULL;
    }
    for (size_t i = 0; ok && i < out->nstmts; i++) {
        struct rewrite_stmt *s = &out->stmts[i];
        if (s->reason != RR_REWRITTEN && s->reason != RR_SHADOW)
            continue;
        const PgQuery__RawStmt *rs = tree->stmts[s->index];
        const PgQuery__InsertStmt *ins = spliceable_insert(rs->stmt);
        size_t from = (size_t)rs->stmt_location;
        size_t end = rs->stmt_len ? from + (size_t)rs->stmt_len : len;
        if (ins->n_returning_list > 0) {
            const PgQuery__Node *first = ins->returning_list[0];
            if (first->node_case != PG_QUERY__NODE__NODE_RES_TARGET ||
                !returning_keyword_at(scan, from, (size_t)first->res_target->location, &end)) {
                s->reason = RR_UNVERIFIED;
                continue;
            }
        }
        size_t at = last_token_end(scan, from, end);
        if (at == 0) {
            s->reason = RR_UNVERIFIED;
            continue;
        }
        s->offset = at;
        s->offset_chars = rewrite_utf8_chars(text, at);
    }
    if (scan)
        pg_query__scan_result__free_unpacked(scan, NULL);
    pg_query_free_scan_result(raw);
    return ok;
}

/* ---- splicing and verifying -------------------------------------------- */

static const char *clause_for(const struct rewrite_rules *rules, const struct rewrite_stmt *s)
{
    const struct rewrite_target *t = &rules->targets[s->target];
    return s->returning ? t->clause_returning : t->clause_plain;
}

static bool splices(enum rewrite_reason reason, bool with_shadow)
{
    return reason == RR_REWRITTEN || (with_shadow && reason == RR_SHADOW);
}

/* The text with the clauses of rewritten (and, with_shadow, shadowed)
 * statements spliced in; NULL when out of memory. */
static char *splice(const struct rewrite_rules *rules, const struct rewrite_result *out,
                    const char *text, size_t len, bool with_shadow, size_t *new_len)
{
    size_t total = len;

    for (size_t i = 0; i < out->nstmts; i++)
        if (splices(out->stmts[i].reason, with_shadow))
            total += strlen(clause_for(rules, &out->stmts[i]));
    char *buf = malloc(total + 1), *p = buf;
    if (!buf)
        return NULL;
    size_t copied = 0;
    for (size_t i = 0; i < out->nstmts; i++) {
        const struct rewrite_stmt *s = &out->stmts[i];
        if (!splices(s->reason, with_shadow))
            continue;
        const char *clause = clause_for(rules, s);
        size_t n = strlen(clause);
        memcpy(p, text + copied, s->offset - copied);
        p += s->offset - copied;
        memcpy(p, clause, n);
        p += n;
        copied = s->offset;
    }
    memcpy(p, text + copied, len - copied);
    p += len - copied;
    *p = '\0';
    *new_len = total;
    return buf;
}

/* Parses the spliced text again: every spliced statement must now carry an
 * ON CONFLICT clause exactly where it was put, and nothing else may have
 * moved. Cheap insurance against a grammar corner the splice did not
 * foresee; it runs once per distinct text, since decisions are cached. */
static bool verify(const struct rewrite_rules *rules, const struct rewrite_result *out,
                   const PgQuery__ParseResult *before, const char *spliced, bool with_shadow)
{
    PgQueryProtobufParseResult raw = pg_query_parse_protobuf(spliced);
    PgQuery__ParseResult *after = NULL;
    bool ok = !raw.error;

    if (ok) {
        after = pg_query__parse_result__unpack(NULL, raw.parse_tree.len,
                                               (const uint8_t *)raw.parse_tree.data);
        ok = after && after->n_stmts == before->n_stmts;
    }
    size_t shift = 0;
    for (size_t i = 0; ok && i < out->nstmts; i++) {
        const struct rewrite_stmt *s = &out->stmts[i];
        if (!splices(s->reason, with_shadow))
            continue;
        const PgQuery__InsertStmt *ins = spliceable_insert(after->stmts[s->index]->stmt);
        ok = ins && ins->on_conflict_clause &&
             (size_t)ins->on_conflict_clause->location == s->offset + shift + 1;
        shift += strlen(clause_for(rules, s));
    }
    if (after)
        pg_query__parse_result__free_unpacked(after, NULL);
    pg_query_free_protobuf_parse_result(raw);
    return ok;
}

static void set_result_reason(struct rewrite_result *out, bool saw_insert)
{
    for (size_t i = 0; i < out->nstmts; i++) {
        if (out->stmts[i].reason == RR_REWRITTEN) {
            out->reason = RR_REWRITTEN;
            return;
        }
    }
    if (out->nstmts > 0)
        out->reason = out->stmts[0].reason;
    else
        out->reason = saw_insert ? RR_OTHER_TABLE : RR_NOT_INSERT;
}

static void mark_spliced(struct rewrite_result *out, enum rewrite_reason reason)
{
    for (size_t i = 0; i < out->nstmts; i++)
        if (splices(out->stmts[i].reason, true))
            out->stmts[i].reason = reason;
}

/* Builds out->text once the positions are known. False on out of memory. */
static bool apply(const struct rewrite_rules *rules, struct rewrite_result *out,
                  const PgQuery__ParseResult *tree, const char *text, size_t len)
{
    bool any_rewrite = false, any_shadow = false;

    for (size_t i = 0; i < out->nstmts; i++) {
        any_rewrite |= out->stmts[i].reason == RR_REWRITTEN;
        any_shadow |= out->stmts[i].reason == RR_SHADOW;
    }
    if (!any_rewrite && !any_shadow)
        return true;

    /* Shadowed statements are verified too, so that shadow mode reports
     * exactly what enforce mode would do. */
    size_t checked_len;
    char *checked = splice(rules, out, text, len, true, &checked_len);
    if (!checked)
        return false;
    if (!verify(rules, out, tree, checked, true)) {
        free(checked);
        mark_spliced(out, RR_UNVERIFIED);
        return true;
    }
    if (!any_rewrite) {
        free(checked);
        return true;
    }
    if (!any_shadow) {
        out->text = checked;
        out->text_len = checked_len;
    } else {
        free(checked);
        out->text = splice(rules, out, text, len, false, &out->text_len);
        if (!out->text)
            return false;
    }
    for (size_t i = 0; i < out->nstmts; i++)
        if (out->stmts[i].reason == RR_REWRITTEN)
            out->stmts[i].inserted = strlen(clause_for(rules, &out->stmts[i]));
    return true;
}

bool rewrite_insert(const struct rewrite_rules *rules, const char *text, size_t len,
                    struct rewrite_result *out)
{
    memset(out, 0, sizeof(*out));
    if (!rewrite_prefilter(rules, text, len)) {
        out->reason = RR_NOT_INSERT;
        return true;
    }

    PgQueryProtobufParseResult raw = pg_query_parse_protobuf(text);
    if (raw.error) {
        pg_query_free_protobuf_parse_result(raw);
        out->reason = RR_PARSE_ERROR;
        return true;
    }
    PgQuery__ParseResult *tree = pg_query__parse_result__unpack(
        NULL, raw.parse_tree.len, (const uint8_t *)raw.parse_tree.data);
    pg_query_free_protobuf_parse_result(raw);
    if (!tree)
        return false;

    struct walk w = { .rules = rules, .out = out };
    out->stmt_count = tree->n_stmts;
    for (size_t i = 0; i < tree->n_stmts && !w.oom; i++)
        walk_statement(&w, tree->stmts[i]->stmt, i);

    bool ok = !w.oom;
    if (ok) {
        bool placed = place_clauses(out, tree, text, len);
        if (!placed)
            mark_spliced(out, RR_UNVERIFIED);
        ok = apply(rules, out, tree, text, len);
    }
    pg_query__parse_result__free_unpacked(tree, NULL);
    if (!ok) {
        rewrite_result_free(out);
        return false;
    }
    set_result_reason(out, w.saw_insert);
    return true;
}

void rewrite_result_free(struct rewrite_result *r)
{
    free(r->text);
    free(r->stmts);
    memset(r, 0, sizeof(*r));
}

size_t rewrite_map_position(const struct rewrite_result *r, size_t pos, bool utf8)
{
    size_t shift = 0;

    if (!r->text || pos == 0)
        return pos;
    for (size_t i = 0; i < r->nstmts; i++) {
        const struct rewrite_stmt *s = &r->stmts[i];
        if (s->inserted == 0)
            continue;
        size_t origin = utf8 ? s->offset_chars : s->offset;
        size_t at = origin + shift; /* 0-based, in the rewritten text */
        if (pos - 1 < at)
            break;
        if (pos - 1 < at + s->inserted)
            return origin + 1;
        shift += s->inserted;
    }
    return pos - shift;
}

/* Skips the whitespace and comments from text[i]. Block comments nest, as
 * in PostgreSQL; one that does not end takes the rest of the text. */
static size_t skip_blank(const char *text, size_t len, size_t i)
{
    for (;;) {
        while (i < len && rewrite_is_space(text[i]))
            i++;
        if (i + 1 >= len)
            return i;
        if (text[i] == '-' && text[i + 1] == '-') {
            while (i < len && text[i] != '\n' && text[i] != '\r')
                i++;
            continue;
        }
        if (text[i] != '/' || text[i + 1] != '*')
            return i;
        size_t depth = 0;
        do {
            if (i + 1 < len && text[i] == '/' && text[i + 1] == '*') {
                depth++;
                i += 2;
            } else if (i + 1 < len && text[i] == '*' && text[i + 1] == '/') {
                depth--;
                i += 2;
            } else {
                i++;
            }
        } while (depth > 0 && i < len);
    }
}

static bool word_at(const char *text, size_t len, size_t i, const char *word)
{
    size_t n = strlen(word);

    if (len - i < n)
        return false;
    for (size_t k = 0; k < n; k++)
        if (fold((unsigned char)text[i + k]) != (unsigned char)word[k])
            return false;
    return true;
}

/* Whether c continues an unquoted name or keyword. */
static bool name_char(unsigned char c)
{
    return c >= 0x80 || c == '_' || c == '$' || (c >= '0' && c <= '9') ||
           (fold(c) >= 'a' && fold(c) <= 'z');
}

/* word (lower case) at text[i], case aside, and not the start of a longer
 * name. */
static bool keyword_at(const char *text, size_t len, size_t i, const char *word)
{
    size_t n = strlen(word);

    if (!word_at(text, len, i, word))
        return false;
    return i + n == len || !name_char((unsigned char)text[i + n]);
}

/* The word at text[i], whitespace and comments skipped first: a name,
 * double-quoted or not, folded into buf (cap bytes, NUL-terminated; a
 * name that does not fit comes out empty, and so matches no word this
 * file looks for). Dots are part of it, so that a custom setting such as
 * search_path.x is not taken for search_path. Returns where it ends. */
static size_t read_word(const char *text, size_t len, size_t i, char *buf, size_t cap)
{
    size_t n = 0;

    i = skip_blank(text, len, i);
    bool quoted = i < len && text[i] == '"';
    if (quoted)
        i++;
    for (; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (quoted ? c == '"'
                   : !(c >= 0x80 || c == '_' || c == '$' || c == '.' || (c >= '0' && c <= '9') ||
                       (fold(c) >= 'a' && fold(c) <= 'z')))
            break;
        if (n + 1 < cap)
            buf[n] = (char)fold(c);
        n++;
    }
    buf[n < cap ? n : 0] = '\0';
    return i < len ? i + quoted : len;
}

/* After SET or RESET (at text[i]): whether what it sets decides where a
 * name leads or as whom the session runs: search_path (SET SCHEMA is its
 * other spelling), ROLE, SESSION AUTHORIZATION, and RESET ALL, with the
 * scope word SESSION or LOCAL allowed first (LOCAL: only until the
 * transaction ends). */
static unsigned sets_identity(const char *text, size_t len, size_t i)
{
    static const char *const settings[] = { "search_path", "schema", "role", "session",
                                            "authorization", "all" };
    char word[16];
    unsigned local = 0;

    i = read_word(text, len, i, word, sizeof(word));
    if (strcmp(word, "local") == 0)
        local = REWRITE_IDENTITY_LOCAL;
    if (strcmp(word, "session") == 0 || local)
        read_word(text, len, i, word, sizeof(word));
    for (size_t k = 0; k < sizeof(settings) / sizeof(settings[0]); k++)
        if (strcmp(word, settings[k]) == 0)
            return REWRITE_CHANGES_IDENTITY | local;
    return 0;
}

/* What the statement beginning at text[i] may do (enum rewrite_effect),
 * told by its first letter first, since every Query and Parse of a
 * session with registered tables comes here. */
static unsigned statement_effects(const char *text, size_t len, size_t i)
{
    const unsigned identity = REWRITE_CHANGES_IDENTITY, ends = REWRITE_ENDS_LOCAL;
    char word[16];

    switch (fold((unsigned char)text[i])) {
    case 'a':
        if (keyword_at(text, len, i, "abort"))
            return ends;
        return keyword_at(text, len, i, "alter") ? identity : 0;
    case 'c':
        if (keyword_at(text, len, i, "commit"))
            return ends;
        return keyword_at(text, len, i, "create") || keyword_at(text, len, i, "call") ? identity
                                                                                      : 0;
    case 'p':
        if (!keyword_at(text, len, i, "prepare"))
            return 0;
        read_word(text, len, i + 7, word, sizeof(word));
        return strcmp(word, "transaction") == 0 ? ends : 0;
    case 'd':
        if (keyword_at(text, len, i, "deallocate"))
            return REWRITE_DROPS_STATEMENTS;
        if (keyword_at(text, len, i, "discard"))
            return REWRITE_DROPS_STATEMENTS | identity;
        return keyword_at(text, len, i, "drop") || keyword_at(text, len, i, "do") ? identity : 0;
    case 'e':
        if (keyword_at(text, len, i, "end"))
            return ends;
        return keyword_at(text, len, i, "execute") ? identity : 0;
    case 'i':
        return keyword_at(text, len, i, "import") ? identity : 0;
    case 'r':
        if (keyword_at(text, len, i, "rollback"))
            return ends;
        return keyword_at(text, len, i, "reset") ? sets_identity(text, len, i + 5) : 0;
    case 'b':
        return keyword_at(text, len, i, "begin") ? REWRITE_BEGINS_BLOCK : 0;
    case 's':
        if (keyword_at(text, len, i, "start")) {
            read_word(text, len, i + 5, word, sizeof(word));
            return strcmp(word, "transaction") == 0 ? REWRITE_BEGINS_BLOCK : 0;
        }
        return keyword_at(text, len, i, "set") ? sets_identity(text, len, i + 3) : 0;
    default:
        return 0;
    }
}

/* All a statement may do to the session that the proxy must follow: what
 * it is taken to do when that cannot be read. */
#define EVERY_EFFECT (REWRITE_DROPS_STATEMENTS | REWRITE_CHANGES_IDENTITY | REWRITE_ENDS_LOCAL)

/* Adds one statement's or call's effects to the text's: REWRITE_IDENTITY_LOCAL
 * stays only while every change of identity found is local. */
static unsigned add_effects(unsigned effects, unsigned more)
{
    bool local = (!(effects & REWRITE_CHANGES_IDENTITY) || (effects & REWRITE_IDENTITY_LOCAL)) &&
                 (!(more & REWRITE_CHANGES_IDENTITY) || (more & REWRITE_IDENTITY_LOCAL));

    effects |= more;
    return local ? effects : effects & ~(unsigned)REWRITE_IDENTITY_LOCAL;
}

/* The effects of every place a statement of text may begin: the start of
 * the text, and after each ';', whitespace and comments skipped. A ';'
 * inside a string or a comment only adds a place to look; what follows it
 * may look like a comment that is none, so the next ';' is looked for
 * from the last, never from where the skipping ended. */
static unsigned statement_starts_effects(const char *text, size_t len)
{
    unsigned effects = 0;

    for (size_t start = 0; (effects & EVERY_EFFECT) != EVERY_EFFECT;) {
        size_t i = skip_blank(text, len, start);
        /* Only the text's opening is sure to begin a statement: a block
         * opened must not be a ';' in a string away. */
        unsigned found = i < len ? statement_effects(text, len, i) : 0;
        if (start > 0)
            found &= ~(unsigned)REWRITE_BEGINS_BLOCK;
        effects = add_effects(effects, found);
        const char *semi = start < len ? memchr(text + start, ';', len - start) : NULL;
        if (!semi)
            break;
        start = (size_t)(semi - text) + 1;
    }
    return effects;
}

/* Whether the set_config whose name ends at text[i] may set something
 * other than a custom setting. Custom settings (app.tenant_id,
 * request.jwt.claims: what row-level security policies read) always have
 * a dot in their name, and search_path, role and session_authorization
 * never do: a call whose first argument is a plain literal with a dot
 * changes no identity. Anything else may (a parameter, an expression, a
 * literal in another form or continued on the next line). */
static bool set_config_may_change_identity(const char *text, size_t len, size_t i)
{
    bool dot = false;

    i = skip_blank(text, len, i);
    if (i >= len || text[i] != '(')
        return true;
    i = skip_blank(text, len, i + 1);
    if (i >= len || text[i] != '\'')
        return true;
    for (i++; i < len; i++) {
        if (text[i] == '\\')
            return true;
        if (text[i] == '\'') {
            if (i + 1 < len && text[i + 1] == '\'') {
                i++;
                continue;
            }
            break;
        }
        dot = dot || text[i] == '.';
    }
    if (i >= len)
        return true;
    i = skip_blank(text, len, i + 1);
    return !dot || i >= len || text[i] != ',';
}

/* Whether the set_config call whose name ends at text[i] sets its value
 * for the transaction only: its third argument, at the top level of its
 * parentheses, is the word true. Read plainly: a comment, a backslash, a
 * dollar quote or a call not closed in text makes it a change for the
 * session. */
static bool set_config_is_local(const char *text, size_t len, size_t i)
{
    size_t depth = 0, commas = 0, third = 0;

    i = skip_blank(text, len, i);
    if (i >= len || text[i] != '(')
        return false;
    for (; i < len; i++) {
        char c = text[i];
        if (c == '\'' || c == '"') {
            const char *close = memchr(text + i + 1, c, len - i - 1);
            if (!close || memchr(text + i, '\\', (size_t)(close - text) - i))
                return false;
            i = (size_t)(close - text); /* a doubled quote reads as two strings */
        } else if (c == '\\' || (c == '$' && !(i + 1 < len && text[i + 1] >= '0' &&
                                                text[i + 1] <= '9')) ||
                   (c == '-' && i + 1 < len && text[i + 1] == '-') ||
                   (c == '/' && i + 1 < len && text[i + 1] == '*')) {
            return false;
        } else if (c == '(') {
            depth++;
        } else if (c == ')' && depth > 0 && --depth == 0) {
            break;
        } else if (c == ',' && depth == 1 && ++commas == 2) {
            third = i + 1;
        }
    }
    if (i >= len || commas != 2)
        return false;
    size_t at = skip_blank(text, len, third);
    return keyword_at(text, len, at, "true") && skip_blank(text, len, at + 4) == i;
}

/* The effects of the text's calls of set_config for a setting that may
 * change the session's identity: found by its '_', which has no case and
 * is rarer in SQL than an 's'. */
static unsigned set_config_effects(const char *text, size_t len)
{
    const char *end = text + len;
    unsigned effects = 0;

    if (len < 10)
        return 0;
    for (const char *p = text + 3; p < end && (p = memchr(p, '_', (size_t)(end - p))); p++) {
        size_t at = (size_t)(p - text) - 3;
        if (word_at(text, len, at, "set_config") &&
            set_config_may_change_identity(text, len, at + 10))
            effects = add_effects(effects, REWRITE_CHANGES_IDENTITY |
                                               (set_config_is_local(text, len, at + 10)
                                                    ? REWRITE_IDENTITY_LOCAL
                                                    : 0));
    }
    return effects;
}

unsigned rewrite_effects(const char *text, size_t len)
{
    return add_effects(statement_starts_effects(text, len), set_config_effects(text, len));
}

unsigned rewrite_unread_effects(const char *prefix, size_t len)
{
    size_t start = skip_blank(prefix, len, 0), end = start;

    while (end < len && name_char((unsigned char)prefix[end]))
        end++;
    if (end == start || end == len)
        return EVERY_EFFECT;
    return (statement_effects(prefix, len, start) | REWRITE_CHANGES_IDENTITY) &
           ~(unsigned)REWRITE_IDENTITY_LOCAL;
}

/* A reader of the few statements rewrite_opens_block accepts, word by
 * word: whitespace between them, nothing else (no comments, no quotes;
 * no vertical tab, which servers before PostgreSQL 16 refuse). */
struct txn_words {
    const char *text;
    size_t len, at;
};

static size_t txn_skip_space(const struct txn_words *w)
{
    size_t i = w->at;

    while (i < w->len && w->text[i] != '\v' && rewrite_is_space(w->text[i]))
        i++;
    return i;
}

/* Takes word (lower case) if it comes next, whole. */
static bool txn_take(struct txn_words *w, const char *word)
{
    size_t i = txn_skip_space(w);

    if (!keyword_at(w->text, w->len, i, word))
        return false;
    w->at = i + strlen(word);
    return true;
}

/* ISOLATION LEVEL ..., READ WRITE, READ ONLY, [NOT] DEFERRABLE. */
static bool txn_take_mode(struct txn_words *w)
{
    if (txn_take(w, "isolation")) {
        if (!txn_take(w, "level"))
            return false;
        if (txn_take(w, "serializable"))
            return true;
        if (txn_take(w, "repeatable"))
            return txn_take(w, "read");
        return txn_take(w, "read") && (txn_take(w, "committed") || txn_take(w, "uncommitted"));
    }
    if (txn_take(w, "read"))
        return txn_take(w, "write") || txn_take(w, "only");
    if (txn_take(w, "not"))
        return txn_take(w, "deferrable");
    return txn_take(w, "deferrable");
}

/* Transaction modes, separated by commas or not; at least one when
 * required. What is not one is left for the caller. */
static bool txn_take_modes(struct txn_words *w, bool required)
{
    for (bool taken = false;; taken = true) {
        size_t before = w->at, i = txn_skip_space(w);
        bool comma = taken && i < w->len && w->text[i] == ',';
        if (comma)
            w->at = i + 1;
        if (!txn_take_mode(w)) {
            w->at = before;
            return !comma && (taken || !required);
        }
    }
}

bool rewrite_opens_block(const char *text, size_t len)
{
    struct txn_words w = { text, len, 0 };
    bool first = true;

    for (;;) {
        if (txn_take(&w, "begin")) {
            if (!txn_take(&w, "work"))
                txn_take(&w, "transaction");
            if (!txn_take_modes(&w, false))
                return false;
        } else if (txn_take(&w, "start")) {
            if (!txn_take(&w, "transaction") || !txn_take_modes(&w, false))
                return false;
        } else if (!first && txn_take(&w, "set")) {
            if (!txn_take(&w, "transaction") || !txn_take_modes(&w, true))
                return false;
        } else {
            return false;
        }
        first = false;
        size_t i = txn_skip_space(&w);
        if (i == len)
            return true;
        if (text[i] != ';')
            return false;
        w.at = i + 1;
        if (txn_skip_space(&w) == len)
            return true;
    }
}

unsigned rewrite_call_effects(uint32_t function_oid)
{
    /* pg_proc.dat's oids, fixed since PostgreSQL 9.3 or earlier. */
    static const uint32_t large_object[] = {
        715,  /* lo_create */
        952,  /* lo_open */
        953,  /* lo_close */
        954,  /* loread */
        955,  /* lowrite */
        956,  /* lo_lseek */
        957,  /* lo_creat */
        958,  /* lo_tell */
        964,  /* lo_unlink */
        1004, /* lo_truncate */
        3170, /* lo_lseek64 */
        3171, /* lo_tell64 */
        3172, /* lo_truncate64 */
    };

    for (size_t i = 0; i < sizeof large_object / sizeof large_object[0]; i++)
        if (large_object[i] == function_oid)
            return 0;
    return REWRITE_CHANGES_IDENTITY;
}

bool rewrite_dropped_statements(const char *text, struct rewrite_drops *out)
{
    PgQueryProtobufParseResult raw = pg_query_parse_protobuf(text);
    PgQuery__ParseResult *tree = raw.error ? NULL
                                           : pg_query__parse_result__unpack(
                                                 NULL, raw.parse_tree.len,
                                                 (const uint8_t *)raw.parse_tree.data);
    bool ok = true;

    memset(out, 0, sizeof(*out));
    /* What the parser cannot read may still run on the server. */
    out->all = tree == NULL;
    for (size_t i = 0; tree && i < tree->n_stmts && !out->all; i++) {
        const PgQuery__Node *stmt = tree->stmts[i]->stmt;
        switch (stmt->node_case) {
        case PG_QUERY__NODE__NODE_DEALLOCATE_STMT:
            if (!stmt->deallocate_stmt->name || !stmt->deallocate_stmt->name[0])
                out->all = true;
            else if (!name_list_add(&out->names, strdup(stmt->deallocate_stmt->name)))
                ok = out->all = true;
            break;
        case PG_QUERY__NODE__NODE_DISCARD_STMT:
            out->all = stmt->discard_stmt->target == PG_QUERY__DISCARD_MODE__DISCARD_ALL;
            break;
        default:
            break;
        }
    }
    if (tree)
        pg_query__parse_result__free_unpacked(tree, NULL);
    pg_query_free_protobuf_parse_result(raw);
    return ok;
}

void rewrite_drops_free(struct rewrite_drops *d)
{
    name_list_free(&d->names);
    d->all = false;
}

/* ---- sessions ---------------------------------------------------------- */

static bool single_byte(const char *encoding)
{
    static const char *const names[] = {
        "SQL_ASCII", "LATIN1", "LATIN2", "LATIN3", "LATIN4", "LATIN5", "LATIN6", "LATIN7",
        "LATIN8", "LATIN9", "LATIN10", "ISO_8859_5", "ISO_8859_6", "ISO_8859_7", "ISO_8859_8",
        "WIN1250", "WIN1251", "WIN1252", "WIN1253", "WIN1254", "WIN1255", "WIN1256", "WIN1257",
        "WIN1258", "WIN866", "WIN874", "KOI8R", "KOI8U",
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(encoding, names[i]) == 0)
            return true;
    return false;
}

bool rewrite_charset(const char *client_encoding, const char *server_encoding, bool *utf8)
{
    if (strcmp(client_encoding, "UTF8") == 0) {
        *utf8 = true;
        return true;
    }
    if (strcmp(client_encoding, "SQL_ASCII") != 0) {
        /* Converted to the server encoding character for character. */
        *utf8 = false;
        return single_byte(client_encoding);
    }
    /* SQL_ASCII is not converted: the server counts the bytes its own way. */
    *utf8 = strcmp(server_encoding, "UTF8") == 0;
    return *utf8 || single_byte(server_encoding);
}

bool rewrite_text_neutral(const uint8_t *text, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (text[i] > 0x7f || text[i] == '\\')
            return false;
    return true;
}

bool rewrite_utf8_valid(const uint8_t *text, size_t len)
{
    static const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
    size_t i = 0;

    while (i < len) {
        /* Eight bytes at a time while none is NUL or beyond ASCII: a
         * byte that is sets its high bit in v or in v - ones. */
        uint64_t v;
        if (len - i >= sizeof(v)) {
            memcpy(&v, text + i, sizeof(v));
            if (((v | (v - ones)) & highs) == 0) {
                i += sizeof(v);
                continue;
            }
        } else if (len >= sizeof(v)) {
            /* The last eight, which hold the rest. */
            memcpy(&v, text + len - sizeof(v), sizeof(v));
            if (((v | (v - ones)) & highs) == 0)
                return true;
        }
        uint8_t b = text[i];
        if (b > 0 && b < 0x80) {
            i++;
            continue;
        }
        /* The lead byte gives the length and the range of the second byte
         * that keeps the form shortest and below U+10FFFF, off surrogates. */
        size_t n;
        uint8_t lo = 0x80, hi = 0xbf;
        if (b >= 0xc2 && b <= 0xdf) {
            n = 2;
        } else if (b >= 0xe0 && b <= 0xef) {
            n = 3;
            lo = b == 0xe0 ? 0xa0 : 0x80;
            hi = b == 0xed ? 0x9f : 0xbf;
        } else if (b >= 0xf0 && b <= 0xf4) {
            n = 4;
            lo = b == 0xf0 ? 0x90 : 0x80;
            hi = b == 0xf4 ? 0x8f : 0xbf;
        } else {
            return false;
        }
        if (len - i < n || text[i + 1] < lo || text[i + 1] > hi)
            return false;
        for (size_t j = 2; j < n; j++)
            if (text[i + j] < 0x80 || text[i + j] > 0xbf)
                return false;
        i += n;
    }
    return true;
}

/* ---- the clause -------------------------------------------------------- */

/* Appends s to buf (within cap) and returns the new length. */
static size_t put(char *buf, size_t cap, size_t at, const char *s)
{
    size_t n = strlen(s);

    if (at < cap)
        memcpy(buf + at, s, at + n <= cap ? n : cap - at);
    return at + n;
}

static size_t put_ident(char *buf, size_t cap, size_t at, const char *name)
{
    at = put(buf, cap, at, "\"");
    for (const char *p = name; *p; p++) {
        char one[2] = { *p, '\0' };
        at = put(buf, cap, at, *p == '"' ? "\"\"" : one);
    }
    return put(buf, cap, at, "\"");
}

/* Appends "a, b" or, with excluded, "a = EXCLUDED.a, b = EXCLUDED.b". */
static size_t put_columns(char *buf, size_t cap, size_t at, const struct name_list *l,
                          bool excluded)
{
    for (size_t i = 0; i < l->count; i++) {
        if (i)
            at = put(buf, cap, at, ", ");
        at = put_ident(buf, cap, at, l->names[i]);
        if (excluded) {
            at = put(buf, cap, at, " = EXCLUDED.");
            at = put_ident(buf, cap, at, l->names[i]);
        }
    }
    return at;
}

size_t rewrite_build_clause(char *buf, size_t cap, const struct name_list *target,
                            const struct name_list *set)
{
    size_t n = put(buf, cap, 0, " ON CONFLICT");

    if (target->count > 0) {
        n = put(buf, cap, n, " (");
        n = put_columns(buf, cap, n, target, false);
        n = put(buf, cap, n, ")");
    }
    if (set->count == 0)
        return put(buf, cap, n, " DO NOTHING");
    n = put(buf, cap, n, " DO UPDATE SET ");
    return put_columns(buf, cap, n, set, true);
}

bool rewrite_build_deallocate(char *buf, size_t cap, const char *name, bool ascii_only)
{
    size_t len = strlen(name);

    if (len == 0 || len >= 64)
        return false;
    for (size_t i = 0; ascii_only && i < len; i++)
        if ((unsigned char)name[i] > 0x7f)
            return false;
    size_t n = put_ident(buf, cap, put(buf, cap, 0, "DEALLOCATE "), name);
    if (n >= cap)
        return false;
    buf[n] = '\0';
    return true;
}
