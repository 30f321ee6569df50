/*
 * Unit tests for rewrite: which INSERTs get an ON CONFLICT clause, where in
 * the client's text it is spliced, and what the reasons, offsets and mapped
 * error positions say.
 *
 * The heart is a table of SQL texts, each with the exact text expected back
 * (NULL: unchanged), the reason for the whole text, the statement count and
 * the registered-table statements. Every expected rewritten text was run
 * against PostgreSQL 15 (on tables of the same shape) to make sure that what
 * we ask for is SQL the server accepts and that a second run of it does not
 * hit the unique index.
 *
 * The table checker does not stop at the first wrong case: it reports every
 * mismatch, so that one run lists all of them.
 *
 * Every text is handed over in a heap block of exactly len + 1 bytes (the
 * NUL that Query and Parse messages carry), so that valgrind or
 * AddressSanitizer flags a read past it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "rewrite.h"

/* ---- the registered tables ---------------------------------------------- */

/* The clauses as idemproxy builds them for each table's rule. */
#define WE_P " ON CONFLICT (\"idempotency_key\") DO NOTHING"
#define WE_R " ON CONFLICT (\"idempotency_key\") DO UPDATE SET \"idempotency_key\" = EXCLUDED.\"idempotency_key\""
#define PAY_U " ON CONFLICT (\"payment_id\") DO UPDATE SET \"amount\" = EXCLUDED.\"amount\""
#define AUD_P " ON CONFLICT DO NOTHING"
#define AUD_R " ON CONFLICT (\"request_id\") DO UPDATE SET \"request_id\" = EXCLUDED.\"request_id\""
#define ORD_P " ON CONFLICT (\"order_ref\") DO NOTHING"
#define DON_P " ON CONFLICT DO NOTHING"
#define DON_R " ON CONFLICT (\"cle\") DO UPDATE SET \"valeur\" = EXCLUDED.\"valeur\""
#define SAL " ON CONFLICT (\"k\") DO NOTHING"

enum { WE, PAY, AUDIT, LEDGER, ORDERS, DONNEES, SALES, ARCHIVE, NTARGETS };

static const struct rewrite_target targets[NTARGETS] = {
    /* The usual case: do_nothing, with DO UPDATE of the key itself so that
     * RETURNING still yields the existing row. */
    [WE] = { "public", "webhook_events", true, false, WE_P, WE_R, RR_REWRITTEN, RR_REWRITTEN },
    /* A quoted mixed-case name that only a qualified reference reaches;
     * do_update, so even the plain clause says DO UPDATE. */
    [PAY] = { "billing", "Payments", false, false, PAY_U, PAY_U, RR_REWRITTEN, RR_REWRITTEN },
    /* mode = shadow: counted, never changed. */
    [AUDIT] = { "public", "audit_log", true, true, AUD_P, AUD_R, RR_REWRITTEN, RR_REWRITTEN },
    /* action = none: left for error translation. */
    [LEDGER] = { "public", "ledger", true, false, NULL, NULL, RR_ACTION_NONE, RR_ACTION_NONE },
    /* The RETURNING form is forbidden (e.g. no UPDATE privilege). */
    [ORDERS] = { "public", "orders", true, false, ORD_P, NULL, RR_REWRITTEN, RR_FORBIDDEN },
    /* A non-ASCII name; the clauses stay ASCII. */
    [DONNEES] = { "public", "données", true, false, DON_P, DON_R, RR_REWRITTEN, RR_REWRITTEN },
    /* Both parts need quoting: a space, a dot, a semicolon, capitals. */
    [SALES] = { "Sales Data", "Q1.orders;x", false, false, SAL, SAL, RR_REWRITTEN, RR_REWRITTEN },
    /* Same name as WE in another schema: only archive.webhook_events. */
    [ARCHIVE] = { "archive", "webhook_events", false, false, WE_P, WE_R, RR_REWRITTEN, RR_REWRITTEN },
};

static const struct rewrite_rules rules = { targets, NTARGETS };

/* ---- helpers ------------------------------------------------------------ */

/* Runs rewrite_insert on a heap copy of exactly strlen(text) + 1 bytes. */
static void run(const struct rewrite_rules *rs, const char *text, struct rewrite_result *r)
{
    size_t len = strlen(text);
    char *copy = malloc(len + 1);
    assert_non_null(copy);
    memcpy(copy, text, len + 1);
    memset(r, 0x5a, sizeof(*r));
    assert_true(rewrite_insert(rs, copy, len, r));
    free(copy);
}

static bool prefilter(const struct rewrite_rules *rs, const char *text)
{
    size_t len = strlen(text);
    char *copy = malloc(len + 1);
    assert_non_null(copy);
    memcpy(copy, text, len + 1);
    bool yes = rewrite_prefilter(rs, copy, len);
    free(copy);
    return yes;
}

/* UTF-8 characters in the first n bytes of s. */
static size_t utf8_chars(const char *s, size_t n)
{
    size_t chars = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            chars++;
    return chars;
}

static const char *clause_of(const struct rewrite_rules *rs, const struct rewrite_stmt *st)
{
    const struct rewrite_target *t = &rs->targets[st->target];
    return st->returning ? t->clause_returning : t->clause_plain;
}

/* Prints s with C escapes, so that a tab or CRLF in a mismatch shows. */
static void show(const char *label, const char *s)
{
    if (!s) {
        print_error("    %s: NULL\n", label);
        return;
    }
    size_t len = strlen(s);
    char *out = malloc(len * 4 + 1), *o = out;
    assert_non_null(out);
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '\n') { *o++ = '\\'; *o++ = 'n'; }
        else if (c == '\r') { *o++ = '\\'; *o++ = 'r'; }
        else if (c == '\t') { *o++ = '\\'; *o++ = 't'; }
        else if (c < 0x20) { o += sprintf(o, "\\x%02x", c); }
        else *o++ = (char)c;
    }
    *o = '\0';
    print_error("    %s: \"%s\"\n", label, out);
    free(out);
}

static const char *why(enum rewrite_reason reason)
{
    if ((unsigned)reason >= RR_COUNT)
        return "(out of range)";
    const char *name = rewrite_reason_name(reason);
    return name ? name : "(null)";
}

/* ---- the table ---------------------------------------------------------- */

struct want_stmt {
    size_t target;
    size_t index;
    enum rewrite_reason reason;
};

struct rw_case {
    const char *name;
    const char *in;
    const char *out;          /* NULL: the text stays as it is */
    enum rewrite_reason reason;
    size_t stmt_count;
    size_t nstmts;
    struct want_stmt st[3];
};

/* Registered-table statements of a case. */
#define NONE 0, { { 0, 0, RR_REWRITTEN } }
#define S1(t, r) 1, { { t, 0, r } }
#define S1AT(t, i, r) 1, { { t, i, r } }
#define S2(t0, i0, r0, t1, i1, r1) 2, { { t0, i0, r0 }, { t1, i1, r1 } }
/* The usual outcomes of a one-statement text. */
#define REW(t) RR_REWRITTEN, 1, S1(t, RR_REWRITTEN)
#define KEPT(t, r) r, 1, S1(t, r)
#define OTHER RR_OTHER_TABLE, 1, NONE
/* Parsed: statements, none of them an INSERT. */
#define NOT_INSERT(n) RR_NOT_INSERT, n, NONE
/* Not parsed: the prefilter saw no INSERT into a target's name. */
#define FILTERED RR_NOT_INSERT, 0, NONE
#define PARSE_ERROR RR_PARSE_ERROR, 0, NONE

static const struct rw_case cases[] = {
    /* -- the forms of INSERT ---------------------------------------------- */
    { "values", "INSERT INTO webhook_events VALUES ('a')",
      "INSERT INTO webhook_events VALUES ('a')" WE_P, REW(WE) },
    { "semicolon", "INSERT INTO webhook_events VALUES ('a');",
      "INSERT INTO webhook_events VALUES ('a')" WE_P ";", REW(WE) },
    { "trailing semicolons", "INSERT INTO webhook_events VALUES ('a') ;;\n",
      "INSERT INTO webhook_events VALUES ('a')" WE_P " ;;\n", REW(WE) },
    { "trailing line comment", "insert into webhook_events values ($1) -- retry\n",
      "insert into webhook_events values ($1)" WE_P " -- retry\n", REW(WE) },
    { "comment without newline", "INSERT INTO webhook_events VALUES ('a')--done",
      "INSERT INTO webhook_events VALUES ('a')" WE_P "--done", REW(WE) },
    { "trailing blank lines", "INSERT INTO webhook_events\nVALUES ('a')\n\n",
      "INSERT INTO webhook_events\nVALUES ('a')" WE_P "\n\n", REW(WE) },
    { "column list", "INSERT INTO webhook_events (idempotency_key, payload) VALUES ($1, $2)",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ($1, $2)" WE_P, REW(WE) },
    { "casts", "INSERT INTO webhook_events (idempotency_key, payload) VALUES ($1::text, $2)",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ($1::text, $2)" WE_P, REW(WE) },
    { "multi-row", "INSERT INTO webhook_events (idempotency_key) VALUES ('a'), ('b'), ('c')",
      "INSERT INTO webhook_events (idempotency_key) VALUES ('a'), ('b'), ('c')" WE_P, REW(WE) },
    { "DEFAULT keyword", "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('a', DEFAULT)",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('a', DEFAULT)" WE_P, REW(WE) },
    { "default values", "INSERT INTO webhook_events DEFAULT VALUES",
      "INSERT INTO webhook_events DEFAULT VALUES" WE_P, REW(WE) },
    { "default values returning", "INSERT INTO webhook_events DEFAULT VALUES RETURNING id",
      "INSERT INTO webhook_events DEFAULT VALUES" WE_R " RETURNING id", REW(WE) },
    { "alias", "INSERT INTO webhook_events AS w (idempotency_key) VALUES ('a')",
      "INSERT INTO webhook_events AS w (idempotency_key) VALUES ('a')" WE_P, REW(WE) },
    { "select", "INSERT INTO webhook_events (idempotency_key, payload) SELECT k, v FROM src WHERE v IS NOT NULL",
      "INSERT INTO webhook_events (idempotency_key, payload) SELECT k, v FROM src WHERE v IS NOT NULL" WE_P,
      REW(WE) },
    /* ON CONFLICT right after a join's ON condition: PostgreSQL still
     * reads it as the INSERT's clause. */
    { "select join on", "INSERT INTO webhook_events (idempotency_key) SELECT s.k FROM src s JOIN other o ON o.k = s.k",
      "INSERT INTO webhook_events (idempotency_key) SELECT s.k FROM src s JOIN other o ON o.k = s.k" WE_P,
      REW(WE) },
    { "table", "INSERT INTO webhook_events (idempotency_key, payload) TABLE src",
      "INSERT INTO webhook_events (idempotency_key, payload) TABLE src" WE_P, REW(WE) },
    { "parenthesised select", "INSERT INTO webhook_events (idempotency_key) (SELECT k FROM src)",
      "INSERT INTO webhook_events (idempotency_key) (SELECT k FROM src)" WE_P, REW(WE) },
    { "union", "INSERT INTO webhook_events (idempotency_key) SELECT k FROM src UNION SELECT 'z'",
      "INSERT INTO webhook_events (idempotency_key) SELECT k FROM src UNION SELECT 'z'" WE_P, REW(WE) },
    { "order by limit", "INSERT INTO webhook_events (idempotency_key) SELECT k FROM src ORDER BY k LIMIT 1",
      "INSERT INTO webhook_events (idempotency_key) SELECT k FROM src ORDER BY k LIMIT 1" WE_P, REW(WE) },
    { "for update", "INSERT INTO webhook_events (idempotency_key) SELECT k FROM src FOR UPDATE",
      "INSERT INTO webhook_events (idempotency_key) SELECT k FROM src FOR UPDATE" WE_P, REW(WE) },
    { "param last", "INSERT INTO webhook_events SELECT $1",
      "INSERT INTO webhook_events SELECT $1" WE_P, REW(WE) },
    { "quoted identifier last", "INSERT INTO webhook_events (idempotency_key) SELECT \"k\" FROM \"src\"",
      "INSERT INTO webhook_events (idempotency_key) SELECT \"k\" FROM \"src\"" WE_P, REW(WE) },
    { "scalar subquery", "INSERT INTO webhook_events (idempotency_key) VALUES ((SELECT max(k) FROM src))",
      "INSERT INTO webhook_events (idempotency_key) VALUES ((SELECT max(k) FROM src))" WE_P, REW(WE) },
    { "with before insert", "WITH s AS (SELECT 'w' AS k) INSERT INTO webhook_events (idempotency_key) SELECT k FROM s",
      "WITH s AS (SELECT 'w' AS k) INSERT INTO webhook_events (idempotency_key) SELECT k FROM s" WE_P,
      REW(WE) },
    { "with inside insert", "INSERT INTO webhook_events (idempotency_key) WITH s AS (SELECT 'w' AS k) SELECT k FROM s",
      "INSERT INTO webhook_events (idempotency_key) WITH s AS (SELECT 'w' AS k) SELECT k FROM s" WE_P,
      REW(WE) },
    { "with recursive returning",
      "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) "
      "INSERT INTO webhook_events (idempotency_key) SELECT 'r' || i FROM n RETURNING id",
      "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) "
      "INSERT INTO webhook_events (idempotency_key) SELECT 'r' || i FROM n" WE_R " RETURNING id", REW(WE) },
    { "overriding system value",
      "INSERT INTO webhook_events (idempotency_key, id) OVERRIDING SYSTEM VALUE VALUES ('a', 7)",
      "INSERT INTO webhook_events (idempotency_key, id) OVERRIDING SYSTEM VALUE VALUES ('a', 7)" WE_P, REW(WE) },
    { "overriding user value", "INSERT INTO webhook_events OVERRIDING USER VALUE VALUES ('a', 7)",
      "INSERT INTO webhook_events OVERRIDING USER VALUE VALUES ('a', 7)" WE_P, REW(WE) },
    { "prepare", "PREPARE ins AS INSERT INTO webhook_events (idempotency_key) VALUES ($1)",
      "PREPARE ins AS INSERT INTO webhook_events (idempotency_key) VALUES ($1)" WE_P, REW(WE) },
    { "prepare typed returning",
      "PREPARE ins (text, text) AS INSERT INTO webhook_events (idempotency_key, payload) VALUES ($1, $2) RETURNING id;",
      "PREPARE ins (text, text) AS INSERT INTO webhook_events (idempotency_key, payload) VALUES ($1, $2)" WE_R
      " RETURNING id;", REW(WE) },

    /* -- RETURNING: the clause goes before the top-level one ------------- */
    { "returning", "INSERT INTO webhook_events VALUES ('a') RETURNING id",
      "INSERT INTO webhook_events VALUES ('a')" WE_R " RETURNING id", REW(WE) },
    { "returning star", "INSERT INTO webhook_events (idempotency_key) VALUES ('a') RETURNING *",
      "INSERT INTO webhook_events (idempotency_key) VALUES ('a')" WE_R " RETURNING *", REW(WE) },
    { "returning expressions",
      "INSERT INTO webhook_events AS w VALUES ('a') RETURNING w.id * 2 AS twice, 'returning' AS r, now()",
      "INSERT INTO webhook_events AS w VALUES ('a')" WE_R " RETURNING w.id * 2 AS twice, 'returning' AS r, now()",
      REW(WE) },
    { "returning on its own line", "insert into webhook_events values ('a')\nreturning id;",
      "insert into webhook_events values ('a')" WE_R "\nreturning id;", REW(WE) },
    { "mixed case keywords", "InSeRt InTo WebHook_Events VaLuEs ('a') ReTuRnInG Id",
      "InSeRt InTo WebHook_Events VaLuEs ('a')" WE_R " ReTuRnInG Id", REW(WE) },
    /* A comment between the body and RETURNING stays after the clause. */
    { "comment before returning", "INSERT INTO webhook_events VALUES (1) /* c */ RETURNING id",
      "INSERT INTO webhook_events VALUES (1)" WE_R " /* c */ RETURNING id", REW(WE) },
    { "returning and trailing comment", "INSERT INTO webhook_events VALUES ('a') RETURNING id;  -- done\n",
      "INSERT INTO webhook_events VALUES ('a')" WE_R " RETURNING id;  -- done\n", REW(WE) },
    { "returning in a line comment", "INSERT INTO webhook_events VALUES ('a') -- no RETURNING here\n",
      "INSERT INTO webhook_events VALUES ('a')" WE_P " -- no RETURNING here\n", REW(WE) },
    { "returning in a string",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('a', 'x RETURNING y')",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('a', 'x RETURNING y')" WE_P, REW(WE) },
    { "returning in dollar quotes",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('a', $$ RETURNING id; $$)",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('a', $$ RETURNING id; $$)" WE_P, REW(WE) },
    { "tagged dollar quotes",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('a', $body$ $$ ; RETURNING $x$ $body$) RETURNING id",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('a', $body$ $$ ; RETURNING $x$ $body$)" WE_R
      " RETURNING id", REW(WE) },
    { "escape string",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('a', E'it\\'s; RETURNING') RETURNING payload",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('a', E'it\\'s; RETURNING')" WE_R
      " RETURNING payload", REW(WE) },
    { "escape string ending in backslash", "INSERT INTO webhook_events (idempotency_key) VALUES (E'\\\\')",
      "INSERT INTO webhook_events (idempotency_key) VALUES (E'\\\\')" WE_P, REW(WE) },
    { "doubled quotes",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('it''s', 'x'' RETURNING ''y')",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('it''s', 'x'' RETURNING ''y')" WE_P,
      REW(WE) },
    { "quoted returning column",
      "INSERT INTO webhook_events (idempotency_key, \"returning\", \"a;b\") VALUES ('a', 'r', 'ab') RETURNING \"returning\", \"a;b\"",
      "INSERT INTO webhook_events (idempotency_key, \"returning\", \"a;b\") VALUES ('a', 'r', 'ab')" WE_R
      " RETURNING \"returning\", \"a;b\"", REW(WE) },
    { "quoted returning alias",
      "INSERT INTO webhook_events (idempotency_key) SELECT \"returning\" FROM (SELECT 'q' AS \"returning\") AS s",
      "INSERT INTO webhook_events (idempotency_key) SELECT \"returning\" FROM (SELECT 'q' AS \"returning\") AS s" WE_P,
      REW(WE) },
    { "returning in an identifier", "INSERT INTO webhook_events (idempotency_key) SELECT k FROM src returning_src RETURNING id",
      "INSERT INTO webhook_events (idempotency_key) SELECT k FROM src returning_src" WE_R " RETURNING id", REW(WE) },
    { "returning in a cte",
      "WITH o AS (INSERT INTO other (k) VALUES ('z') RETURNING k) INSERT INTO webhook_events (idempotency_key) SELECT k FROM o",
      "WITH o AS (INSERT INTO other (k) VALUES ('z') RETURNING k) INSERT INTO webhook_events (idempotency_key) SELECT k FROM o"
      WE_P, REW(WE) },
    { "returning in a cte and at top",
      "WITH o AS (INSERT INTO other (k) VALUES ('z') RETURNING k) INSERT INTO webhook_events (idempotency_key) SELECT k FROM o RETURNING id",
      "WITH o AS (INSERT INTO other (k) VALUES ('z') RETURNING k) INSERT INTO webhook_events (idempotency_key) SELECT k FROM o"
      WE_R " RETURNING id", REW(WE) },
    { "on conflict only in a string",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('a', 'ON CONFLICT DO NOTHING')",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('a', 'ON CONFLICT DO NOTHING')" WE_P, REW(WE) },
    { "on conflict only in a comment", "INSERT INTO webhook_events VALUES ('a') /* ON CONFLICT DO NOTHING */",
      "INSERT INTO webhook_events VALUES ('a')" WE_P " /* ON CONFLICT DO NOTHING */", REW(WE) },

    /* -- lexical corners ---------------------------------------------------- */
    { "nested comments", "INSERT INTO webhook_events VALUES ('a') /* outer /* inner; RETURNING */ still */",
      "INSERT INTO webhook_events VALUES ('a')" WE_P " /* outer /* inner; RETURNING */ still */", REW(WE) },
    { "comments inside", "INSERT /* RETURNING */ INTO webhook_events -- ; RETURNING\nVALUES ('a')",
      "INSERT /* RETURNING */ INTO webhook_events -- ; RETURNING\nVALUES ('a')" WE_P, REW(WE) },
    { "comment before semicolon", "INSERT INTO webhook_events VALUES ('a') /* c */;",
      "INSERT INTO webhook_events VALUES ('a')" WE_P " /* c */;", REW(WE) },
    { "leading comments", "-- header\n/* c */ INSERT INTO webhook_events VALUES ('a')",
      "-- header\n/* c */ INSERT INTO webhook_events VALUES ('a')" WE_P, REW(WE) },
    { "comment starters in a string",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('a', '/* not -- a comment')",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('a', '/* not -- a comment')" WE_P, REW(WE) },
    { "comment before the last token", "INSERT INTO webhook_events (idempotency_key, id) VALUES ('a', 3 --2\n)",
      "INSERT INTO webhook_events (idempotency_key, id) VALUES ('a', 3 --2\n)" WE_P, REW(WE) },
    { "crlf and tabs", "INSERT INTO webhook_events\r\n\tVALUES ('a')\r\n\tRETURNING id;\r\n",
      "INSERT INTO webhook_events\r\n\tVALUES ('a')" WE_R "\r\n\tRETURNING id;\r\n", REW(WE) },
    { "unicode escapes and bit strings",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES (U&'d\\0061t\\+000061', B'101'::text)",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES (U&'d\\0061t\\+000061', B'101'::text)" WE_P,
      REW(WE) },
    { "json operators",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('j', '{\"a\": [1, 2]}'::json ->> 'a')",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('j', '{\"a\": [1, 2]}'::json ->> 'a')" WE_P,
      REW(WE) },
    /* Adjacent literals separated by a newline are one string to
     * PostgreSQL: the clause goes after the second part. */
    { "string continuation", "INSERT INTO webhook_events (idempotency_key) SELECT 'con'\n'tinued'",
      "INSERT INTO webhook_events (idempotency_key) SELECT 'con'\n'tinued'" WE_P, REW(WE) },
    /* The server accepts a -- comment in that newline, libpg_query does not
     * (it keeps comments as tokens; pganalyze/libpg_query#365): left
     * alone, which is safe. */
    { "string continuation with a comment", "INSERT INTO webhook_events (idempotency_key) SELECT 'con' -- c\n'tinued'",
      NULL, PARSE_ERROR },
    { "string then comment", "INSERT INTO webhook_events (idempotency_key) SELECT 'a' -- c\n",
      "INSERT INTO webhook_events (idempotency_key) SELECT 'a'" WE_P " -- c\n", REW(WE) },
    { "uescape last", "INSERT INTO webhook_events (idempotency_key) SELECT U&'d!0061ta' UESCAPE '!'",
      "INSERT INTO webhook_events (idempotency_key) SELECT U&'d!0061ta' UESCAPE '!'" WE_P, REW(WE) },
    { "dollar quote last", "INSERT INTO webhook_events (idempotency_key) SELECT $q$it's -- not$q$ -- is\n",
      "INSERT INTO webhook_events (idempotency_key) SELECT $q$it's -- not$q$" WE_P " -- is\n", REW(WE) },
    { "comment after returning", "INSERT INTO webhook_events VALUES ('a') RETURNING /* c */ (id)",
      "INSERT INTO webhook_events VALUES ('a')" WE_R " RETURNING /* c */ (id)", REW(WE) },
    { "non-ascii string", "INSERT INTO webhook_events VALUES ('é€😀')",
      "INSERT INTO webhook_events VALUES ('é€😀')" WE_P, REW(WE) },
    { "non-ascii alias", "INSERT INTO webhook_events AS ŵ (idempotency_key) VALUES ('€') RETURNING ŵ.id",
      "INSERT INTO webhook_events AS ŵ (idempotency_key) VALUES ('€')" WE_R " RETURNING ŵ.id", REW(WE) },

    /* -- names, as PostgreSQL's parser folds them --------------------------- */
    { "unquoted capitals", "INSERT INTO WebHook_Events VALUES ('a')",
      "INSERT INTO WebHook_Events VALUES ('a')" WE_P, REW(WE) },
    { "quoted lowercase", "INSERT INTO \"webhook_events\" VALUES ('a')",
      "INSERT INTO \"webhook_events\" VALUES ('a')" WE_P, REW(WE) },
    { "qualified", "INSERT INTO public.webhook_events VALUES ('a')",
      "INSERT INTO public.webhook_events VALUES ('a')" WE_P, REW(WE) },
    { "qualified capitals", "INSERT INTO PUBLIC.WEBHOOK_EVENTS VALUES ('a')",
      "INSERT INTO PUBLIC.WEBHOOK_EVENTS VALUES ('a')" WE_P, REW(WE) },
    { "qualified quoted", "INSERT INTO \"public\".\"webhook_events\" VALUES ('a')",
      "INSERT INTO \"public\".\"webhook_events\" VALUES ('a')" WE_P, REW(WE) },
    { "spaces around the dot", "INSERT INTO public . webhook_events VALUES ('a')",
      "INSERT INTO public . webhook_events VALUES ('a')" WE_P, REW(WE) },
    /* U&"..." is webhook_events to the parser, so it is the table. */
    { "unicode escape identifier", "INSERT INTO U&\"webhook\\005fevents\" VALUES ('a')",
      "INSERT INTO U&\"webhook\\005fevents\" VALUES ('a')" WE_P, REW(WE) },
    { "quoted capitals", "INSERT INTO \"WebHook_Events\" VALUES ('a')", NULL, OTHER },
    { "other schema", "INSERT INTO x.webhook_events VALUES ('a')", NULL, OTHER },
    { "quoted capital schema", "INSERT INTO \"Public\".webhook_events VALUES ('a')", NULL, OTHER },
    { "longer name", "INSERT INTO webhook_events2 VALUES ('a')", NULL, OTHER },
    { "longer qualified name", "INSERT INTO public.webhook_events_archive VALUES ('a')", NULL, OTHER },
    { "same name, other target", "INSERT INTO archive.webhook_events (idempotency_key) VALUES ('a') RETURNING id",
      "INSERT INTO archive.webhook_events (idempotency_key) VALUES ('a')" WE_R " RETURNING id", REW(ARCHIVE) },
    { "quoted mixed-case table", "INSERT INTO billing.\"Payments\" (payment_id, amount) VALUES (1, 9.99)",
      "INSERT INTO billing.\"Payments\" (payment_id, amount) VALUES (1, 9.99)" PAY_U, REW(PAY) },
    { "capital schema folds", "INSERT INTO BILLING.\"Payments\" (payment_id, amount) VALUES (2, 1) RETURNING id",
      "INSERT INTO BILLING.\"Payments\" (payment_id, amount) VALUES (2, 1)" PAY_U " RETURNING id", REW(PAY) },
    { "quoted schema", "INSERT INTO \"billing\".\"Payments\" (payment_id) VALUES (3)",
      "INSERT INTO \"billing\".\"Payments\" (payment_id) VALUES (3)" PAY_U, REW(PAY) },
    { "unquoted folds away", "INSERT INTO billing.payments (payment_id) VALUES (1)", NULL, OTHER },
    { "wrong case quoted", "INSERT INTO billing.\"PAYMENTS\" (payment_id) VALUES (1)", NULL, OTHER },
    { "unqualified not allowed", "INSERT INTO \"Payments\" (payment_id) VALUES (1)", NULL, OTHER },
    { "space, dot and semicolon in names", "INSERT INTO \"Sales Data\".\"Q1.orders;x\" (k) VALUES (1)",
      "INSERT INTO \"Sales Data\".\"Q1.orders;x\" (k) VALUES (1)" SAL, REW(SALES) },
    { "semicolon alias, then a select",
      "INSERT INTO \"Sales Data\".\"Q1.orders;x\" AS \"a;b\" (k) VALUES (2) RETURNING \"a;b\".id; SELECT 1",
      "INSERT INTO \"Sales Data\".\"Q1.orders;x\" AS \"a;b\" (k) VALUES (2)" SAL " RETURNING \"a;b\".id; SELECT 1",
      RR_REWRITTEN, 2, S1(SALES, RR_REWRITTEN) },
    { "odd name unqualified", "INSERT INTO \"Q1.orders;x\" (k) VALUES (1)", NULL, OTHER },
    { "non-ascii table", "INSERT INTO données (cle) VALUES ('é')",
      "INSERT INTO données (cle) VALUES ('é')" DON_P, REW(DONNEES) },
    { "non-ascii table quoted", "INSERT INTO \"données\" (cle, valeur) VALUES ('ü', '€') RETURNING valeur",
      "INSERT INTO \"données\" (cle, valeur) VALUES ('ü', '€')" DON_R " RETURNING valeur", REW(DONNEES) },
    { "other table, target named", "INSERT INTO other (k) SELECT idempotency_key FROM webhook_events", NULL, OTHER },
    { "other table only", "INSERT INTO other (k) VALUES ('a')", NULL, FILTERED },

    /* -- left alone --------------------------------------------------------- */
    { "has on conflict", "INSERT INTO webhook_events VALUES ('a') ON CONFLICT DO NOTHING", NULL,
      KEPT(WE, RR_HAS_ON_CONFLICT) },
    { "has on conflict do update",
      "INSERT INTO webhook_events VALUES ('a') ON CONFLICT (idempotency_key) DO UPDATE SET payload = 'again' RETURNING id",
      NULL, KEPT(WE, RR_HAS_ON_CONFLICT) },
    { "nested under select",
      "WITH x AS (INSERT INTO webhook_events (idempotency_key) VALUES ('a') RETURNING id) SELECT * FROM x", NULL,
      KEPT(WE, RR_NESTED) },
    { "nested under insert into another table",
      "WITH x AS (INSERT INTO webhook_events (idempotency_key) VALUES ('a') RETURNING idempotency_key) "
      "INSERT INTO other (k) SELECT idempotency_key FROM x", NULL, KEPT(WE, RR_NESTED) },
    { "nested under update",
      "WITH x AS (INSERT INTO webhook_events (idempotency_key) VALUES ('a') RETURNING id) "
      "UPDATE other SET k = 'b' WHERE id IN (SELECT id FROM x)", NULL, KEPT(WE, RR_NESTED) },
    { "nested under delete",
      "WITH x AS (INSERT INTO webhook_events (idempotency_key) VALUES ('a') RETURNING id) "
      "DELETE FROM other WHERE id IN (SELECT id FROM x)", NULL, KEPT(WE, RR_NESTED) },
    { "explain analyze", "EXPLAIN ANALYZE INSERT INTO webhook_events VALUES ('a')", NULL, KEPT(WE, RR_NESTED) },
    { "explain options", "EXPLAIN (COSTS OFF) INSERT INTO webhook_events VALUES ('a') RETURNING id", NULL,
      KEPT(WE, RR_NESTED) },
    { "copy of an insert", "COPY (INSERT INTO webhook_events VALUES ('cp') RETURNING id) TO STDOUT", NULL,
      KEPT(WE, RR_NESTED) },
    /* With DO UPDATE, PostgreSQL would say: table reference "excluded" is
     * ambiguous. */
    { "alias excluded, do update",
      "INSERT INTO webhook_events AS excluded (idempotency_key) VALUES ('a') RETURNING excluded.id", NULL,
      KEPT(WE, RR_FORBIDDEN) },
    { "alias EXCLUDED folds", "INSERT INTO webhook_events AS EXCLUDED VALUES ('a') RETURNING id", NULL,
      KEPT(WE, RR_FORBIDDEN) },
    { "alias excluded, plain clause do update", "INSERT INTO billing.\"Payments\" AS excluded (payment_id) VALUES (3)",
      NULL, KEPT(PAY, RR_FORBIDDEN) },
    { "alias quoted excluded", "INSERT INTO webhook_events AS \"excluded\" VALUES ('a') RETURNING id", NULL,
      KEPT(WE, RR_FORBIDDEN) },
    { "alias excluded, do nothing", "INSERT INTO webhook_events AS excluded VALUES ('a')",
      "INSERT INTO webhook_events AS excluded VALUES ('a')" WE_P, REW(WE) },
    { "alias quoted EXCLUDED", "INSERT INTO webhook_events AS \"EXCLUDED\" VALUES ('a') RETURNING id",
      "INSERT INTO webhook_events AS \"EXCLUDED\" VALUES ('a')" WE_R " RETURNING id", REW(WE) },
    { "action none", "INSERT INTO ledger (entry_id) VALUES (1)", NULL, KEPT(LEDGER, RR_ACTION_NONE) },
    { "action none returning", "INSERT INTO ledger (entry_id) VALUES (1) RETURNING id", NULL,
      KEPT(LEDGER, RR_ACTION_NONE) },
    { "returning forbidden, plain", "INSERT INTO orders (order_ref) VALUES ('o-1')",
      "INSERT INTO orders (order_ref) VALUES ('o-1')" ORD_P, REW(ORDERS) },
    { "returning forbidden", "INSERT INTO orders (order_ref) VALUES ('o-1') RETURNING id", NULL,
      KEPT(ORDERS, RR_FORBIDDEN) },
    { "shadow", "INSERT INTO audit_log (request_id, what) VALUES ('r1', 'login')", NULL, KEPT(AUDIT, RR_SHADOW) },
    { "shadow returning", "INSERT INTO audit_log (request_id, what) VALUES ('r1', 'é') RETURNING id", NULL,
      KEPT(AUDIT, RR_SHADOW) },
    { "shadow with on conflict", "INSERT INTO audit_log (request_id) VALUES ('r1') ON CONFLICT DO NOTHING", NULL,
      KEPT(AUDIT, RR_HAS_ON_CONFLICT) },
    { "prepare other table", "PREPARE other_ins AS INSERT INTO other (k) SELECT idempotency_key FROM webhook_events",
      NULL, OTHER },

    /* -- no INSERT statement ------------------------------------------------ */
    { "names in a string", "SELECT 'insert into webhook_events'", NULL, NOT_INSERT(1) },
    { "names in a comment", "/* insert into webhook_events */ SELECT 1", NULL, NOT_INSERT(1) },
    { "update", "UPDATE webhook_events SET payload = 'insert'", NULL, NOT_INSERT(1) },
    { "grant insert", "GRANT INSERT ON webhook_events TO PUBLIC", NULL, NOT_INSERT(1) },
    { "trigger on insert", "CREATE TRIGGER t AFTER INSERT ON webhook_events FOR EACH ROW EXECUTE FUNCTION f()",
      NULL, NOT_INSERT(1) },
    { "rule on insert", "CREATE RULE r AS ON INSERT TO webhook_events DO INSTEAD NOTHING", NULL, NOT_INSERT(1) },
    { "function body",
      "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$INSERT INTO webhook_events VALUES ('a')$$", NULL,
      NOT_INSERT(1) },
    { "do block", "DO $$BEGIN INSERT INTO webhook_events VALUES ('a'); END$$", NULL, NOT_INSERT(1) },
    { "only a comment", "  -- insert into webhook_events\n", NULL, NOT_INSERT(0) },
    { "select", "SELECT 1", NULL, FILTERED },
    { "empty", "", NULL, FILTERED },
    { "garbage without names", "SELEC 1", NULL, FILTERED },

    /* -- syntax errors: the server will say why ----------------------------- */
    { "unclosed parenthesis", "INSERT INTO webhook_events VALUES ('a'", NULL, PARSE_ERROR },
    { "error in a later statement", "INSERT INTO webhook_events VALUES ('a'); SELEC 1", NULL, PARSE_ERROR },
    { "unterminated comment", "INSERT INTO webhook_events VALUES ('a') /* never closed", NULL, PARSE_ERROR },
    { "unterminated nested comment", "INSERT INTO webhook_events VALUES ('a') /* a /* b */", NULL, PARSE_ERROR },
    { "unterminated string", "INSERT INTO webhook_events VALUES ('a)", NULL, PARSE_ERROR },
    { "unterminated dollar quote", "INSERT INTO webhook_events VALUES ($$a)", NULL, PARSE_ERROR },
    { "alias without AS", "INSERT INTO webhook_events w VALUES ('a')", NULL, PARSE_ERROR },
    /* A check the grammar itself makes, not parse analysis. */
    { "with ties without order by", "INSERT INTO webhook_events SELECT k FROM src FETCH FIRST 1 ROW WITH TIES", NULL,
      PARSE_ERROR },
    /* standard_conforming_strings = on: the backslash does not escape. */
    { "backslash in a plain string", "INSERT INTO webhook_events VALUES ('it\\'s')", NULL, PARSE_ERROR },

    /* -- several statements ------------------------------------------------- */
    { "two inserts", "INSERT INTO webhook_events VALUES ('a'); INSERT INTO webhook_events VALUES ('b') RETURNING id",
      "INSERT INTO webhook_events VALUES ('a')" WE_P "; INSERT INTO webhook_events VALUES ('b')" WE_R " RETURNING id",
      RR_REWRITTEN, 2, S2(WE, 0, RR_REWRITTEN, WE, 1, RR_REWRITTEN) },
    { "other, then ours", "INSERT INTO other (k) VALUES ('a'); INSERT INTO webhook_events VALUES ('b')",
      "INSERT INTO other (k) VALUES ('a'); INSERT INTO webhook_events VALUES ('b')" WE_P,
      RR_REWRITTEN, 2, S1AT(WE, 1, RR_REWRITTEN) },
    /* Empty statements are no statements, for PostgreSQL as for us. */
    { "empty statements between",
      "INSERT INTO webhook_events VALUES ('a');;/* only a comment */;\nINSERT INTO billing.\"Payments\" (payment_id) VALUES (5);",
      "INSERT INTO webhook_events VALUES ('a')" WE_P ";;/* only a comment */;\nINSERT INTO billing.\"Payments\" (payment_id) VALUES (5)"
      PAY_U ";", RR_REWRITTEN, 2, S2(WE, 0, RR_REWRITTEN, PAY, 1, RR_REWRITTEN) },
    { "select, action none, rewrite",
      "SELECT 1; INSERT INTO ledger (entry_id) VALUES (2); INSERT INTO webhook_events VALUES ('c') -- tail\n",
      "SELECT 1; INSERT INTO ledger (entry_id) VALUES (2); INSERT INTO webhook_events VALUES ('c')" WE_P " -- tail\n",
      RR_REWRITTEN, 3, S2(LEDGER, 1, RR_ACTION_NONE, WE, 2, RR_REWRITTEN) },
    { "shadow, then rewrite", "INSERT INTO audit_log (request_id) VALUES ('r2'); INSERT INTO webhook_events VALUES ('d')",
      "INSERT INTO audit_log (request_id) VALUES ('r2'); INSERT INTO webhook_events VALUES ('d')" WE_P,
      RR_REWRITTEN, 2, S2(AUDIT, 0, RR_SHADOW, WE, 1, RR_REWRITTEN) },
    { "first statement's reason",
      "INSERT INTO webhook_events VALUES ('a') ON CONFLICT DO NOTHING; INSERT INTO audit_log (request_id) VALUES ('r3')",
      NULL, RR_HAS_ON_CONFLICT, 2, S2(WE, 0, RR_HAS_ON_CONFLICT, AUDIT, 1, RR_SHADOW) },
    { "shadow first, nothing rewritten",
      "INSERT INTO audit_log (request_id) VALUES ('r4'); INSERT INTO ledger (entry_id) VALUES (3)", NULL,
      RR_SHADOW, 2, S2(AUDIT, 0, RR_SHADOW, LEDGER, 1, RR_ACTION_NONE) },
    { "semicolons in identifiers and strings",
      "INSERT INTO webhook_events (\"a;b\", idempotency_key) VALUES (';', 'x;y'); SELECT ';'",
      "INSERT INTO webhook_events (\"a;b\", idempotency_key) VALUES (';', 'x;y')" WE_P "; SELECT ';'",
      RR_REWRITTEN, 2, S1(WE, RR_REWRITTEN) },
    { "statement in a dollar quote",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('m1', $f$ ; INSERT INTO webhook_events VALUES (1); $f$); "
      "INSERT INTO orders (order_ref) VALUES ('o2')",
      "INSERT INTO webhook_events (idempotency_key, payload) VALUES ('m1', $f$ ; INSERT INTO webhook_events VALUES (1); $f$)"
      WE_P "; INSERT INTO orders (order_ref) VALUES ('o2')" ORD_P,
      RR_REWRITTEN, 2, S2(WE, 0, RR_REWRITTEN, ORDERS, 1, RR_REWRITTEN) },
    { "nested, then top level",
      "WITH x AS (INSERT INTO webhook_events (idempotency_key) VALUES ('n1') RETURNING id) SELECT * FROM x; "
      "INSERT INTO webhook_events VALUES ('n2')",
      "WITH x AS (INSERT INTO webhook_events (idempotency_key) VALUES ('n1') RETURNING id) SELECT * FROM x; "
      "INSERT INTO webhook_events VALUES ('n2')" WE_P,
      RR_REWRITTEN, 2, S2(WE, 0, RR_NESTED, WE, 1, RR_REWRITTEN) },
    { "comments around both",
      "INSERT INTO webhook_events VALUES ('e1') /* one */;\n-- two\nINSERT INTO webhook_events VALUES ('e2') RETURNING id -- three\n;",
      "INSERT INTO webhook_events VALUES ('e1')" WE_P " /* one */;\n-- two\nINSERT INTO webhook_events VALUES ('e2')" WE_R
      " RETURNING id -- three\n;", RR_REWRITTEN, 2, S2(WE, 0, RR_REWRITTEN, WE, 1, RR_REWRITTEN) },
    { "non-ascii before the second", "SELECT 'é'; INSERT INTO webhook_events VALUES ('€') RETURNING id",
      "SELECT 'é'; INSERT INTO webhook_events VALUES ('€')" WE_R " RETURNING id",
      RR_REWRITTEN, 2, S1AT(WE, 1, RR_REWRITTEN) },
    { "other table only, named in a string", "INSERT INTO other (k) VALUES ('webhook_events'); SELECT 1", NULL,
      RR_OTHER_TABLE, 2, NONE },
    { "unicode everywhere",
      "/* ünïcödé */ INSERT INTO données AS d (cle, valeur) VALUES ('k€', 'ü') RETURNING d.valeur; SELECT '😀'",
      "/* ünïcödé */ INSERT INTO données AS d (cle, valeur) VALUES ('k€', 'ü')" DON_R " RETURNING d.valeur; SELECT '😀'",
      RR_REWRITTEN, 2, S1(DONNEES, RR_REWRITTEN) },
};

/* Reasons that only an INSERT into a registered table can give. */
static bool registered_reason(enum rewrite_reason reason)
{
    return reason == RR_REWRITTEN || reason == RR_SHADOW || reason == RR_HAS_ON_CONFLICT ||
           reason == RR_NESTED || reason == RR_ACTION_NONE || reason == RR_FORBIDDEN;
}

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            if (ok)                                                            \
                print_error("case \"%s\":\n", c->name);                        \
            print_error("  " __VA_ARGS__);                                     \
            print_error("\n");                                                 \
            ok = false;                                                        \
        }                                                                      \
    } while (0)

/* The same text with every shadow target turned into a live one: the
 * offsets reported in shadow mode must be where the clause would go. */
static void check_shadow_offsets(const struct rewrite_rules *rs, const struct rw_case *c,
                                 const struct rewrite_result *r, bool *okp)
{
    bool ok = *okp;
    struct rewrite_target live[16];
    assert_true(rs->count <= 16);
    memcpy(live, rs->targets, rs->count * sizeof(live[0]));
    for (size_t i = 0; i < rs->count; i++)
        live[i].shadow = false;
    struct rewrite_rules live_rules = { live, rs->count };
    struct rewrite_result lr;
    run(&live_rules, c->in, &lr);
    CHECK(lr.nstmts == r->nstmts, "without shadow: nstmts %zu, with: %zu", lr.nstmts, r->nstmts);
    for (size_t i = 0; i < r->nstmts && i < lr.nstmts; i++) {
        if (r->stmts[i].reason != RR_SHADOW)
            continue;
        CHECK(lr.stmts[i].reason == RR_REWRITTEN, "stmt %zu without shadow: %s", i, why(lr.stmts[i].reason));
        CHECK(lr.stmts[i].offset == r->stmts[i].offset, "stmt %zu: shadow offset %zu, live offset %zu", i,
              r->stmts[i].offset, lr.stmts[i].offset);
        CHECK(lr.stmts[i].offset_chars == r->stmts[i].offset_chars,
              "stmt %zu: shadow offset_chars %zu, live %zu", i, r->stmts[i].offset_chars, lr.stmts[i].offset_chars);
        CHECK(lr.stmts[i].returning == r->stmts[i].returning, "stmt %zu: returning differs", i);
    }
    rewrite_result_free(&lr);
    *okp = ok;
}

/* Checks one case; prints every mismatch and returns false if there was
 * one, so that the table test reports all bad cases in one run. */
static bool check_case(const struct rewrite_rules *rs, const struct rw_case *c)
{
    bool ok = true;
    size_t len = strlen(c->in);
    struct rewrite_result r;

    run(rs, c->in, &r);

    CHECK(r.reason == c->reason, "reason: expected %s, got %s", why(c->reason), why(r.reason));
    if (c->out) {
        if (!r.text || strcmp(r.text, c->out) != 0) {
            CHECK(false, "text differs");
            show("in      ", c->in);
            show("expected", c->out);
            show("got     ", r.text);
        } else {
            CHECK(r.text_len == strlen(r.text), "text_len %zu, strlen %zu", r.text_len, strlen(r.text));
        }
    } else if (r.text) {
        CHECK(false, "expected the text unchanged (NULL)");
        show("in ", c->in);
        show("got", r.text);
    }
    CHECK(r.stmt_count == c->stmt_count, "stmt_count: expected %zu, got %zu", c->stmt_count, r.stmt_count);
    CHECK(r.nstmts == c->nstmts, "nstmts: expected %zu, got %zu", c->nstmts, r.nstmts);
    for (size_t i = 0; i < r.nstmts && i < c->nstmts; i++) {
        const struct rewrite_stmt *st = &r.stmts[i];
        const struct want_stmt *w = &c->st[i];
        CHECK(st->target == w->target, "stmt %zu: target %zu, expected %zu", i, st->target, w->target);
        CHECK(st->index == w->index, "stmt %zu: index %zu, expected %zu", i, st->index, w->index);
        CHECK(st->reason == w->reason, "stmt %zu: reason %s, expected %s", i, why(st->reason), why(w->reason));
    }

    /* Offsets: the clause of each rewritten statement, spliced into the
     * input at its offset, must give exactly the output. */
    if (ok && r.nstmts > 0) {
        size_t cap = len + 1, outlen = 0, from = 0;
        for (size_t i = 0; i < r.nstmts; i++)
            if (r.stmts[i].reason == RR_REWRITTEN && clause_of(rs, &r.stmts[i]))
                cap += strlen(clause_of(rs, &r.stmts[i]));
        char *rebuilt = malloc(cap);
        assert_non_null(rebuilt);
        for (size_t i = 0; i < r.nstmts; i++) {
            const struct rewrite_stmt *st = &r.stmts[i];
            CHECK(st->offset <= len, "stmt %zu: offset %zu beyond the text (%zu)", i, st->offset, len);
            if (st->reason != RR_REWRITTEN && st->reason != RR_SHADOW) {
                CHECK(st->inserted == 0, "stmt %zu: inserted %zu but %s", i, st->inserted, why(st->reason));
                continue;
            }
            if (st->offset > len)
                continue;
            CHECK(st->offset_chars == utf8_chars(c->in, st->offset), "stmt %zu: offset_chars %zu, expected %zu",
                  i, st->offset_chars, utf8_chars(c->in, st->offset));
            if (st->reason == RR_SHADOW) {
                CHECK(st->inserted == 0, "stmt %zu: shadow, yet inserted %zu", i, st->inserted);
                continue;
            }
            const char *clause = clause_of(rs, st);
            CHECK(clause != NULL, "stmt %zu: rewritten with a NULL clause (returning=%d)", i, st->returning);
            if (!clause || st->offset < from)
                continue;
            CHECK(st->inserted == strlen(clause), "stmt %zu: inserted %zu, clause is %zu", i, st->inserted,
                  strlen(clause));
            memcpy(rebuilt + outlen, c->in + from, st->offset - from);
            outlen += st->offset - from;
            memcpy(rebuilt + outlen, clause, strlen(clause));
            outlen += strlen(clause);
            from = st->offset;
        }
        memcpy(rebuilt + outlen, c->in + from, len - from);
        outlen += len - from;
        rebuilt[outlen] = '\0';
        if (r.text && strcmp(rebuilt, r.text) != 0) {
            CHECK(false, "offsets and clauses do not rebuild the text");
            show("rebuilt", rebuilt);
            show("text   ", r.text);
        }
        free(rebuilt);
    }

    /* The prefilter may say yes too often, never too rarely. */
    bool pre = prefilter(rs, c->in);
    CHECK(pre || !registered_reason(c->reason), "prefilter false, yet %s", why(c->reason));
    CHECK(pre || (r.reason == RR_NOT_INSERT && r.stmt_count == 0),
          "prefilter false, yet parsed (%s, %zu statements)", why(r.reason), r.stmt_count);

    /* Rewriting the output again changes nothing: each spliced statement
     * now has its ON CONFLICT. */
    if (ok && r.text) {
        struct rewrite_result again;
        run(rs, r.text, &again);
        CHECK(again.text == NULL, "the rewritten text was rewritten again");
        CHECK(again.nstmts == r.nstmts, "rewritten again: nstmts %zu, first time %zu", again.nstmts, r.nstmts);
        for (size_t i = 0; i < again.nstmts && i < r.nstmts; i++)
            if (r.stmts[i].reason == RR_REWRITTEN)
                CHECK(again.stmts[i].reason == RR_HAS_ON_CONFLICT, "rewritten again: stmt %zu is %s", i,
                      why(again.stmts[i].reason));
        rewrite_result_free(&again);
    }

    for (size_t i = 0; ok && i < r.nstmts; i++)
        if (r.stmts[i].reason == RR_SHADOW) {
            check_shadow_offsets(rs, c, &r, &ok);
            break;
        }

    rewrite_result_free(&r);
    return ok;
}

static void check_cases(const struct rewrite_rules *rs, const struct rw_case *list, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (!check_case(rs, &list[i]))
            bad++;
    if (bad)
        fail_msg("%zu of %zu cases failed", bad, n);
}

static void test_table(void **state)
{
    (void)state;
    /* At least 90 texts, as promised at the top. */
    assert_true(sizeof(cases) / sizeof(cases[0]) >= 90);
    check_cases(&rules, cases, sizeof(cases) / sizeof(cases[0]));
}

/* A table name with a double quote in it appears doubled in SQL text. */
static void test_name_with_quote(void **state)
{
    (void)state;
    static const struct rewrite_target odd[] = {
        { "public", "we\"ird", true, false, AUD_P, AUD_P, RR_REWRITTEN, RR_REWRITTEN },
    };
    static const struct rewrite_rules odd_rules = { odd, 1 };
    static const struct rw_case odd_cases[] = {
        { "doubled quote", "INSERT INTO \"we\"\"ird\" VALUES (1)",
          "INSERT INTO \"we\"\"ird\" VALUES (1)" AUD_P, REW(0) },
        { "qualified doubled quote", "INSERT INTO public.\"we\"\"ird\" (k) VALUES (1) RETURNING k",
          "INSERT INTO public.\"we\"\"ird\" (k) VALUES (1)" AUD_P " RETURNING k", REW(0) },
    };
    check_cases(&odd_rules, odd_cases, sizeof(odd_cases) / sizeof(odd_cases[0]));
}

/* No targets: nothing is ever an INSERT into one. */
static void test_no_targets(void **state)
{
    (void)state;
    static const struct rewrite_rules empty = { NULL, 0 };
    static const struct rw_case none[] = {
        { "insert", "INSERT INTO webhook_events VALUES ('a')", NULL, FILTERED },
        { "empty", "", NULL, FILTERED },
    };
    check_cases(&empty, none, sizeof(none) / sizeof(none[0]));
    assert_false(prefilter(&empty, "INSERT INTO webhook_events VALUES ('a')"));
}

/* ---- offsets ------------------------------------------------------------ */

static void test_offsets(void **state)
{
    (void)state;
    struct rewrite_result r;

    /* 'é' and 'ü' are 2 bytes, '€' 3: 4 bytes more than characters
     * before the splice. */
    run(&rules, "SELECT 'é€'; INSERT INTO webhook_events VALUES ('ü') RETURNING id", &r);
    assert_int_equal(r.reason, RR_REWRITTEN);
    assert_int_equal(r.stmt_count, 2);
    assert_int_equal(r.nstmts, 1);
    assert_int_equal(r.stmts[0].index, 1);
    assert_true(r.stmts[0].returning);
    assert_int_equal(r.stmts[0].offset, 56);
    assert_int_equal(r.stmts[0].offset_chars, 52);
    assert_int_equal(r.stmts[0].inserted, strlen(WE_R));
    assert_int_equal(r.text_len, 69 + strlen(WE_R));
    rewrite_result_free(&r);

    /* Shadow: the offset is where the clause would have gone. */
    run(&rules, "INSERT INTO audit_log (request_id) VALUES ('é') RETURNING id", &r);
    assert_int_equal(r.reason, RR_SHADOW);
    assert_null(r.text);
    assert_int_equal(r.nstmts, 1);
    assert_int_equal(r.stmts[0].target, AUDIT);
    assert_true(r.stmts[0].returning);
    assert_int_equal(r.stmts[0].offset, 48);
    assert_int_equal(r.stmts[0].offset_chars, 47);
    assert_int_equal(r.stmts[0].inserted, 0);
    rewrite_result_free(&r);

    /* Without RETURNING: after the last token, before the comment. */
    run(&rules, "INSERT INTO audit_log VALUES ('x') /* c */ ;", &r);
    assert_int_equal(r.reason, RR_SHADOW);
    assert_false(r.stmts[0].returning);
    assert_int_equal(r.stmts[0].offset, 34);
    assert_int_equal(r.stmts[0].offset_chars, 34);
    rewrite_result_free(&r);
}

/* The returning flag follows the top-level RETURNING list only, also for
 * statements left alone. */
static void test_returning_flag(void **state)
{
    (void)state;
    static const struct { const char *text; bool returning; } texts[] = {
        { "INSERT INTO ledger (entry_id) VALUES (1)", false },
        { "INSERT INTO ledger (entry_id) VALUES (1) RETURNING id", true },
        { "INSERT INTO ledger (entry_id) VALUES (1) -- RETURNING id", false },
        { "INSERT INTO orders (order_ref) VALUES ('a') RETURNING *", true },
        { "INSERT INTO orders (order_ref) SELECT $$RETURNING$$", false },
        { "WITH o AS (INSERT INTO other (k) VALUES ('z') RETURNING k) INSERT INTO orders (order_ref) SELECT k FROM o",
          false },
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct rewrite_result r;
        run(&rules, texts[i].text, &r);
        assert_int_equal(r.nstmts, 1);
        if (r.stmts[0].returning != texts[i].returning)
            fail_msg("returning = %d for: %s", r.stmts[0].returning, texts[i].text);
        rewrite_result_free(&r);
    }
}

/* Many statements in one text: one splice each, in order. */
static void test_many_statements(void **state)
{
    (void)state;
    enum { N = 300 };
    static const char one[] = "INSERT INTO webhook_events VALUES ('k%03d');\n";
    char *in = malloc(N * sizeof(one)), *want = malloc(N * (sizeof(one) + sizeof(WE_P)));
    assert_non_null(in);
    assert_non_null(want);
    size_t il = 0, wl = 0;
    for (int i = 0; i < N; i++) {
        il += (size_t)sprintf(in + il, one, i);
        wl += (size_t)sprintf(want + wl, "INSERT INTO webhook_events VALUES ('k%03d')" WE_P ";\n", i);
    }
    struct rewrite_result r;
    run(&rules, in, &r);
    assert_int_equal(r.reason, RR_REWRITTEN);
    assert_int_equal(r.stmt_count, N);
    assert_int_equal(r.nstmts, N);
    assert_non_null(r.text);
    assert_int_equal(r.text_len, wl);
    assert_string_equal(r.text, want);
    for (size_t i = 0; i < N; i++) {
        assert_int_equal(r.stmts[i].index, i);
        assert_int_equal(r.stmts[i].offset, i * (il / N) + (il / N) - 2);
    }
    rewrite_result_free(&r);
    free(in);
    free(want);
}

/* ---- error positions ----------------------------------------------------- */

static void test_map_position(void **state)
{
    (void)state;
    struct rewrite_result r;
    const size_t lp = strlen(WE_P), lr = strlen(WE_R);

    /* 96 bytes, 93 characters; splices after byte 40 (character 39) and
     * byte 83 (character 80). */
    run(&rules, "INSERT INTO webhook_events VALUES ('é'); INSERT INTO webhook_events VALUES ('€') RETURNING id", &r);
    assert_int_equal(r.nstmts, 2);
    assert_int_equal(r.stmts[0].offset, 40);
    assert_int_equal(r.stmts[0].offset_chars, 39);
    assert_int_equal(r.stmts[1].offset, 83);
    assert_int_equal(r.stmts[1].offset_chars, 80);
    assert_int_equal(lp, 43);
    assert_int_equal(lr, 93);

    /* Characters. */
    assert_int_equal(rewrite_map_position(&r, 1, true), 1);
    assert_int_equal(rewrite_map_position(&r, 39, true), 39);  /* the ')' before the clause */
    assert_int_equal(rewrite_map_position(&r, 40, true), 40);  /* first character of the clause */
    assert_int_equal(rewrite_map_position(&r, 60, true), 40);
    assert_int_equal(rewrite_map_position(&r, 82, true), 40);  /* its last */
    assert_int_equal(rewrite_map_position(&r, 83, true), 40);  /* the ';' after it */
    assert_int_equal(rewrite_map_position(&r, 100, true), 57);
    assert_int_equal(rewrite_map_position(&r, 123, true), 80); /* the ')' before the second clause */
    assert_int_equal(rewrite_map_position(&r, 124, true), 81); /* in the second clause */
    assert_int_equal(rewrite_map_position(&r, 216, true), 81);
    assert_int_equal(rewrite_map_position(&r, 217, true), 81); /* the space before RETURNING */
    assert_int_equal(rewrite_map_position(&r, 229, true), 93); /* the last character */
    assert_int_equal(rewrite_map_position(&r, 230, true), 94); /* just past the end */

    /* Bytes. */
    assert_int_equal(rewrite_map_position(&r, 40, false), 40);
    assert_int_equal(rewrite_map_position(&r, 41, false), 41);
    assert_int_equal(rewrite_map_position(&r, 83, false), 41);
    assert_int_equal(rewrite_map_position(&r, 84, false), 41);
    assert_int_equal(rewrite_map_position(&r, 126, false), 83);
    assert_int_equal(rewrite_map_position(&r, 127, false), 84);
    assert_int_equal(rewrite_map_position(&r, 219, false), 84);
    assert_int_equal(rewrite_map_position(&r, 220, false), 84);
    assert_int_equal(rewrite_map_position(&r, 232, false), 96);
    assert_int_equal(rewrite_map_position(&r, 233, false), 97);
    rewrite_result_free(&r);

    /* A shadow statement before the rewritten one inserts nothing. */
    run(&rules, "INSERT INTO audit_log VALUES ('x'); INSERT INTO webhook_events VALUES ('y')", &r);
    assert_int_equal(r.nstmts, 2);
    assert_int_equal(r.stmts[1].offset, 75);
    assert_int_equal(rewrite_map_position(&r, 34, true), 34);
    assert_int_equal(rewrite_map_position(&r, 75, true), 75);
    assert_int_equal(rewrite_map_position(&r, 76, true), 76);
    assert_int_equal(rewrite_map_position(&r, 75 + lp, true), 76);
    assert_int_equal(rewrite_map_position(&r, 76 + lp, true), 76);
    rewrite_result_free(&r);

    /* Unchanged text: positions stay. */
    run(&rules, "INSERT INTO ledger VALUES (1)", &r);
    assert_null(r.text);
    assert_int_equal(rewrite_map_position(&r, 1, true), 1);
    assert_int_equal(rewrite_map_position(&r, 17, false), 17);
    assert_int_equal(rewrite_map_position(&r, 30, true), 30);
    rewrite_result_free(&r);
}

/* ---- the prefilter ------------------------------------------------------- */

static void test_prefilter(void **state)
{
    (void)state;
    static const char *const no[] = {
        "",
        "SELECT 1",
        "UPDATE webhook_events SET x = 1",
        "INSERT INTO other VALUES (1)",
        "DELETE FROM audit_log; SELECT * FROM ledger",
        "INSERT INTO webhook VALUES (1)",
        "COPY webhook_events FROM STDIN",
    };
    static const char *const yes[] = {
        "INSERT INTO webhook_events VALUES (1)",
        "insert into webhook_events values (1)",
        "iNsErT InTo WEBHOOK_EVENTS VALUES (1)",
        "INSERT INTO billing.\"Payments\" VALUES (1)",
        "INSERT INTO \"Sales Data\".\"Q1.orders;x\" VALUES (1)",
        "INSERT INTO données VALUES (1)",
        "SELECT 1; INSERT INTO ledger VALUES (1)",
        "WITH x AS (INSERT INTO webhook_events DEFAULT VALUES RETURNING id) SELECT * FROM x",
    };
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        if (prefilter(&rules, no[i]))
            fail_msg("prefilter true for: %s", no[i]);
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        if (!prefilter(&rules, yes[i]))
            fail_msg("prefilter false for: %s", yes[i]);
}

/* ---- clauses ------------------------------------------------------------- */

/* Builds a clause into a buffer of 'x's and checks that nothing past cap
 * was touched; returns what rewrite_build_clause returned. */
static size_t build(char *buf, size_t bufsize, size_t cap, const struct name_list *target,
                    const struct name_list *set)
{
    memset(buf, 'x', bufsize);
    size_t need = rewrite_build_clause(buf, cap, target, set);
    for (size_t i = cap; i < bufsize; i++)
        if (buf[i] != 'x')
            fail_msg("byte %zu written with cap %zu", i, cap);
    return need;
}

/* The clause is written like memcpy, without a NUL: the caller asks for
 * the length first (buf NULL, cap 0), then passes exactly that cap. */
static void assert_clause(const struct name_list *target, const struct name_list *set, const char *want)
{
    char buf[512];
    size_t len = strlen(want);

    assert_int_equal(rewrite_build_clause(NULL, 0, target, set), len);
    size_t need = build(buf, sizeof(buf), sizeof(buf) - 1, target, set);
    assert_int_equal(need, len);
    assert_memory_equal(buf, want, len);
    /* Exactly enough room. */
    need = build(buf, sizeof(buf), len, target, set);
    assert_int_equal(need, len);
    assert_memory_equal(buf, want, len);
    /* Too little room: the same length is asked for, nothing beyond cap. */
    for (size_t cap = 0; cap < len; cap++)
        assert_int_equal(build(buf, sizeof(buf), cap, target, set), len);
}

static void test_build_clause(void **state)
{
    (void)state;
    char *ab[] = { "a", "b" }, *k[] = { "k" }, *kv[] = { "k", "v" };
    char *weird[] = { "we\"ird" }, *odd[] = { "Mixed Case", "a;b" };
    struct name_list none = { NULL, 0 };
    struct name_list l_ab = { ab, 2 }, l_k = { k, 1 }, l_kv = { kv, 2 };
    struct name_list l_weird = { weird, 1 }, l_odd = { odd, 2 };

    assert_clause(&l_ab, &none, " ON CONFLICT (\"a\", \"b\") DO NOTHING");
    assert_clause(&none, &none, " ON CONFLICT DO NOTHING");
    assert_clause(&l_k, &none, " ON CONFLICT (\"k\") DO NOTHING");
    assert_clause(&l_k, &l_kv, " ON CONFLICT (\"k\") DO UPDATE SET \"k\" = EXCLUDED.\"k\", \"v\" = EXCLUDED.\"v\"");
    assert_clause(&l_weird, &l_weird,
                  " ON CONFLICT (\"we\"\"ird\") DO UPDATE SET \"we\"\"ird\" = EXCLUDED.\"we\"\"ird\"");
    assert_clause(&l_odd, &none, " ON CONFLICT (\"Mixed Case\", \"a;b\") DO NOTHING");

    /* The clauses of the table above are what it builds. */
    char *key[] = { "idempotency_key" };
    struct name_list l_key = { key, 1 };
    assert_clause(&l_key, &none, WE_P);
    assert_clause(&l_key, &l_key, WE_R);
}

/* DEALLOCATE spells a statement's name as the protocol does, or not at
 * all: the unnamed statement and names SQL would cut otherwise. */
static void test_build_deallocate(void **state)
{
    (void)state;
    char buf[160], long_name[65];

    assert_true(rewrite_build_deallocate(buf, sizeof(buf), "s1", true));
    assert_string_equal(buf, "DEALLOCATE \"s1\"");
    assert_true(rewrite_build_deallocate(buf, sizeof(buf), "we\"ird; DROP", true));
    assert_string_equal(buf, "DEALLOCATE \"we\"\"ird; DROP\"");
    assert_true(rewrite_build_deallocate(buf, sizeof(buf), "Mixed Case", false));
    assert_string_equal(buf, "DEALLOCATE \"Mixed Case\"");
    assert_false(rewrite_build_deallocate(buf, sizeof(buf), "", false));

    /* Bytes over 0x7f only where the session's encoding cannot hide a
     * quote in them. */
    assert_true(rewrite_build_deallocate(buf, sizeof(buf), "caf\xc3\xa9", false));
    assert_string_equal(buf, "DEALLOCATE \"caf\xc3\xa9\"");
    assert_false(rewrite_build_deallocate(buf, sizeof(buf), "caf\xc3\xa9", true));

    /* 63 bytes are spelled; 64 are cut by the protocol and by SQL apart. */
    memset(long_name, 'n', 63);
    long_name[63] = '\0';
    assert_true(rewrite_build_deallocate(buf, sizeof(buf), long_name, true));
    assert_int_equal(strlen(buf), strlen("DEALLOCATE \"\"") + 63);
    long_name[63] = 'n';
    long_name[64] = '\0';
    assert_false(rewrite_build_deallocate(buf, sizeof(buf), long_name, true));

    /* Room for all but the NUL is too little. */
    size_t need = strlen("DEALLOCATE \"s1\"") + 1;
    assert_false(rewrite_build_deallocate(buf, need - 1, "s1", true));
    assert_true(rewrite_build_deallocate(buf, need, "s1", true));
}

/* Text that means the same under any client_encoding and
 * standard_conforming_strings: ASCII without a backslash. */
static void test_text_neutral(void **state)
{
    (void)state;
    static const char plain[] = "s1\0INSERT INTO t (k, v) VALUES ($1, 'it''s')";
    static const char backslash[] = "INSERT INTO t (v) VALUES ('a\\nb')";
    static const char latin[] = "INSERT INTO t (v) VALUES ('caf\xc3\xa9')";

    assert_true(rewrite_text_neutral((const uint8_t *)plain, sizeof plain - 1));
    assert_true(rewrite_text_neutral((const uint8_t *)"", 0));
    assert_false(rewrite_text_neutral((const uint8_t *)backslash, sizeof backslash - 1));
    assert_false(rewrite_text_neutral((const uint8_t *)latin, sizeof latin - 1));
}

/* UTF-8 as PostgreSQL's pg_utf8_islegal takes it. */
static void test_utf8_valid(void **state)
{
    (void)state;
    static const struct {
        const char *bytes;
        bool valid;
    } texts[] = {
        { "", true },
        { "plain", true },
        { "caf\xc3\xa9", true },                 /* U+00E9 */
        { "\xe2\x82\xac", true },                /* U+20AC */
        { "\xf0\x9f\x98\x80", true },            /* U+1F600 */
        { "\xf4\x8f\xbf\xbf", true },            /* U+10FFFF */
        { "\xed\x9f\xbf", true },                /* U+D7FF */
        { "\xee\x80\x80", true },                /* U+E000 */
        { "caf\xe9", false },                    /* LATIN1 é */
        { "caf\xe9'", false },
        { "\x81", false },                       /* a lone continuation */
        { "\xc0\xaf", false },                   /* overlong '/' */
        { "\xc1\xbf", false },
        { "\xe0\x9f\xbf", false },               /* overlong U+07FF */
        { "\xf0\x8f\xbf\xbf", false },           /* overlong U+FFFF */
        { "\xed\xa0\x80", false },               /* surrogate U+D800 */
        { "\xf4\x90\x80\x80", false },           /* U+110000 */
        { "\xf5\x80\x80\x80", false },
        { "\xff", false },
        { "\xc3", false },                       /* cut short */
        { "\xe2\x82", false },
        { "\xe2\x28\xac", false },               /* a bad third byte */
        { "\xf0\x9f\x98\x28", false },
        /* Long enough to be read eight bytes at a time. */
        { "INSERT INTO t VALUES ('caf\xc3\xa9', '\xe2\x82\xac'), ('plain ascii')", true },
        { "INSERT INTO t VALUES ('plain ascii', 'caf\xe9')", false },
        { "INSERT INTO t VALUES ('plain ascii', 'caf\xc3')", false },
        { "INSERT INTO t VALUES ('plain ascii', 'sixteen bytes..\x7f')", true },
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        const char *b = texts[i].bytes;
        if (rewrite_utf8_valid((const uint8_t *)b, strlen(b)) != texts[i].valid)
            fail_msg("case %zu: expected %s", i, texts[i].valid ? "valid" : "invalid");
    }
    static const uint8_t nul[] = { 'a', 0, 'b' };
    assert_false(rewrite_utf8_valid(nul, sizeof nul));
    static const uint8_t late_nul[] = "sixteen bytes.. and a NUL";
    uint8_t buf[sizeof late_nul];
    memcpy(buf, late_nul, sizeof buf);
    buf[17] = 0;
    assert_true(rewrite_utf8_valid(buf, 17));
    assert_false(rewrite_utf8_valid(buf, sizeof buf - 1));
}

static void test_reason_names(void **state)
{
    (void)state;
    for (int a = 0; a < RR_COUNT; a++) {
        const char *name = rewrite_reason_name((enum rewrite_reason)a);
        if (!name || !*name)
            fail_msg("reason %d has no name", a);
        for (const char *p = name; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                fail_msg("reason %d: \"%s\" is not lowercase", a, name);
        for (int b = 0; b < a; b++)
            if (strcmp(name, rewrite_reason_name((enum rewrite_reason)b)) == 0)
                fail_msg("reasons %d and %d are both \"%s\"", b, a, name);
    }
}

/* What one INSERT into a table can be counted as, and what only a whole
 * text can. */
static void test_reasons_of_table(void **state)
{
    (void)state;
    static const enum rewrite_reason of_table[] = {
        RR_REWRITTEN, RR_SHADOW, RR_HAS_ON_CONFLICT, RR_NESTED, RR_ACTION_NONE, RR_FORBIDDEN,
        RR_UNVERIFIED,
    };
    static const enum rewrite_reason of_text[] = {
        RR_NOT_INSERT, RR_OTHER_TABLE, RR_PARSE_ERROR, RR_TOO_LARGE, RR_SESSION,
    };
    assert_int_equal(sizeof(of_table) / sizeof(of_table[0]) + sizeof(of_text) / sizeof(of_text[0]),
                     RR_COUNT);
    for (size_t i = 0; i < sizeof(of_table) / sizeof(of_table[0]); i++)
        assert_true(rewrite_reason_of_table(of_table[i]));
    for (size_t i = 0; i < sizeof(of_text) / sizeof(of_text[0]); i++)
        assert_false(rewrite_reason_of_table(of_text[i]));
    assert_false(rewrite_reason_of_table(RR_COUNT));
}

/* ---- session encodings -------------------------------------------------- */

/* Each of texts[0..n) has exactly want of the effects in mask. */
static void expect_effects(const char *const *texts, size_t n, unsigned mask, unsigned want)
{
    for (size_t i = 0; i < n; i++) {
        unsigned got = rewrite_effects(texts[i], strlen(texts[i])) & mask;
        if (got != want)
            fail_msg("effects %#x of %#x, expected %#x, in: %s", got, mask, want, texts[i]);
    }
}

/* Each text of yes has the effect, none of no has it. */
#define EXPECT_EFFECT(yes, no, effect)                                          \
    do {                                                                        \
        expect_effects((yes), sizeof(yes) / sizeof((yes)[0]), (effect), (effect)); \
        expect_effects((no), sizeof(no) / sizeof((no)[0]), (effect), 0);         \
    } while (0)

/* Statements that may drop prepared statements are found where they
 * begin, behind whitespace, comments and other statements; the words
 * elsewhere (names, comments) are not, and neither is PREPARE, which drops
 * nothing. (Behind a ';' in a string they are: that costs a parse, which
 * finds nothing dropped.) */
static void test_drops_statements(void **state)
{
    (void)state;
    const char *yes[] = {
        "DEALLOCATE ALL",
        "  deallocate prepare ps",
        "discard all;",
        "SELECT 1; DISCARD ALL",
        "SELECT ';'; DEALLOCATE ps",
        "-- a comment\n\tDISCARD PLANS",
        "/* outer /* inner */ still a comment */ DEALLOCATE ps",
        /* What follows a ';' in a string is no comment. */
        "SELECT 'a;/*'; DEALLOCATE ALL; SELECT '*/'",
        "DEALLOCATE",
    };
    const char *no[] = {
        "SELECT 1",
        "SELECT prepare FROM discard",
        "-- DEALLOCATE ALL",
        "/* DISCARD ALL */ SELECT 1",
        "/* /* */ DEALLOCATE ALL */ SELECT 1",
        "SELECT 'x;'",
        "PREPARE p AS SELECT 1",
        "EXECUTE p",
        "",
    };
    EXPECT_EFFECT(yes, no, REWRITE_DROPS_STATEMENTS);
}

/* What is dropped, as PostgreSQL reads it: each name DEALLOCATE gives,
 * folded or quoted as the server takes it; everything for ALL, DISCARD
 * ALL or a text the parser cannot read; nothing for the other DISCARDs
 * and for PREPARE. */
static void test_dropped_statements(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        bool all;
        const char *names; /* space-separated */
    } drops[] = {
        { "DEALLOCATE ps", false, "ps" },
        { "INSERT INTO prepared_orders VALUES ('deallocate; discard')", false, "" },
        { "deallocate prepare \"My Stmt\"", false, "My Stmt" },
        { "SELECT 1; DEALLOCATE A; /* b */ DEALLOCATE PREPARE b", false, "a b" },
        { "DEALLOCATE ALL", true, "" },
        { "DEALLOCATE PREPARE ALL", true, "" },
        { "DEALLOCATE \"all\"", false, "all" },
        { "DISCARD ALL", true, "" },
        { "DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES", false, "" },
        { "PREPARE p AS SELECT 1; DEALLOCATE q", false, "q" },
        { "DEALLOCATE", true, "" },
        { "DEALLOCATE ps; SELECT (", true, "" },
    };
    for (size_t i = 0; i < sizeof(drops) / sizeof(drops[0]); i++) {
        struct rewrite_drops d;
        char names[128] = "";
        assert_true(rewrite_dropped_statements(drops[i].text, &d));
        for (size_t k = 0; k < d.names.count; k++) {
            if (k)
                strcat(names, " ");
            strcat(names, d.names.names[k]);
        }
        if (d.all != drops[i].all || (!d.all && strcmp(names, drops[i].names) != 0))
            fail_msg("%s: all %d, names \"%s\"", drops[i].text, d.all, names);
        rewrite_drops_free(&d);
    }
}

/* What may change where names lead or as whom the session runs is found
 * where a statement begins, and set_config anywhere but of a custom
 * setting; SET and RESET of anything else are not. */
static void test_changes_identity(void **state)
{
    (void)state;
    const char *yes[] = {
        "SET search_path TO tenant_1",
        "set SEARCH_PATH = a, b",
        "SET LOCAL search_path TO x",
        "SET SESSION search_path TO x",
        "SET \"search_path\" TO x",
        "SET /* why */ search_path=x",
        "SET SCHEMA 'tenant'",
        "SET ROLE app_reader",
        "SET LOCAL ROLE app_reader",
        "SET SESSION AUTHORIZATION bob",
        "RESET search_path",
        "RESET ROLE",
        "RESET SESSION AUTHORIZATION",
        "RESET ALL",
        "DISCARD ALL",
        "discard temp",
        "CREATE TEMP TABLE orders (k int)",
        "DROP TABLE orders",
        "ALTER TABLE orders RENAME TO old_orders",
        "DO $$ BEGIN PERFORM 1; END $$",
        "CALL switch_tenant(3)",
        "EXECUTE set_path",
        "IMPORT FOREIGN SCHEMA s FROM SERVER f INTO public",
        "SELECT set_config('search_path', 'x', false)",
        "SELECT pg_catalog.SET_CONFIG('role', 'r', true)",
        "SELECT set_config($1, $2, false)",
        "SELECT set_config(name, 'x', false) FROM wanted",
        "SELECT set_config('app.x', 'y', true), set_config('role', 'r', true)",
        /* A first argument read otherwise than as a plain literal with a dot. */
        "SELECT set_config(E'app.x', 'y', true)",
        "SELECT set_config('app\\.x', 'y', true)",
        "SELECT set_config('search'\n'_path.x', 'y', true)",
        "SELECT set_config('app.x' || '', 'y', true)",
        "SELECT set_config('app.x", /* unterminated */
        "SELECT set_config",
        "INSERT INTO orders VALUES (1); SET search_path TO x",
        "SELECT ';'; RESET ROLE",
        "-- first\n  SET ROLE r",
    };
    const char *no[] = {
        "SELECT 1",
        "SET statement_timeout = 5000",
        "SET LOCAL lock_timeout TO '1s'",
        "SET TIME ZONE 'UTC'",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "SET search_path_x TO a",
        "SET search_path.custom TO a",
        "RESET statement_timeout",
        "INSERT INTO settings (name) VALUES ('SET search_path TO x')",
        "UPDATE roles SET role = 'x'",
        "SELECT created, dropped FROM t",
        /* Custom settings, such as row-level security policies read. */
        "SELECT set_config('app.tenant_id', '42', false)",
        "select pg_catalog.set_config ( /* c */ 'request.jwt.claims', $1, true)",
        "SELECT set_config('it''s.x', 'y', false), set_config('a.b', 'c', true)",
        "",
    };
    EXPECT_EFFECT(yes, no, REWRITE_CHANGES_IDENTITY);
}

/* A change of identity that lasts to the end of the transaction only is
 * told from one for the session: SET LOCAL, and set_config whose third
 * argument is true, read to the end of the call; every change in the
 * text must be one. */
static void test_identity_local(void **state)
{
    (void)state;
    const char *local[] = {
        "SET LOCAL ROLE app_user",
        "set local search_path to tenant_1, public",
        "SET LOCAL SESSION AUTHORIZATION bob",
        "SELECT set_config('role', 'app_user', true)",
        "select set_config('search_path', $1, TRUE), set_config('role', $2, true)",
        "select set_config(el->>0, el->>1, true) from json_array_elements($1::json) el",
        "SELECT set_config('role', 'a,b', true), set_config('request.jwt.claims', $1, true)",
        "SELECT set_config('role', lower(concat('a', 'b')), true)",
        "SELECT set_config('role', 'it''s', true)",
        "SET LOCAL ROLE a; SELECT set_config('search_path', 'x', true)",
    };
    const char *session[] = {
        "SET ROLE app_user",
        "SET SESSION ROLE app_user",
        "RESET ROLE",
        "SET LOCAL ROLE a; SET ROLE b",
        "SELECT set_config('role', 'app_user', false)",
        "SELECT set_config('role', 'app_user', $1)",
        "SELECT set_config('role', 'app_user', true OR false)",
        "SELECT set_config('role', 'app_user' /* x */, true)",
        "SELECT set_config('role', E'a\\b', true)",
        "SELECT set_config('role', $$a$$, true)",
        "SELECT set_config('role', 'a', true",
        "SELECT set_config('role', 'a')",
        "SELECT set_config('role', 'a', true), set_config('search_path', 'x', false)",
        "SELECT set_config('role', 'a', true); DISCARD ALL",
        "CREATE TEMP TABLE orders (k int)",
    };
    const unsigned both = REWRITE_CHANGES_IDENTITY | REWRITE_IDENTITY_LOCAL;
    expect_effects(local, sizeof(local) / sizeof(local[0]), both, both);
    expect_effects(session, sizeof(session) / sizeof(session[0]), both, REWRITE_CHANGES_IDENTITY);
}

/* What ends a transaction or rolls back to a savepoint undoes what SET
 * LOCAL did inside it; found where a statement begins, and nothing else
 * counts. */
static void test_ends_local(void **state)
{
    (void)state;
    const char *yes[] = {
        "COMMIT",
        "commit work",
        "COMMIT AND CHAIN",
        "END",
        "end transaction",
        "ROLLBACK",
        "ROLLBACK TO SAVEPOINT s",
        "rollback to s",
        "ABORT",
        "PREPARE TRANSACTION 'gid'",
        "prepare /* two-phase */ transaction 'gid'",
        "INSERT INTO orders VALUES (1); COMMIT",
        "SELECT ';'; ROLLBACK AND CHAIN",
    };
    const char *no[] = {
        "SELECT 1",
        "BEGIN",
        "START TRANSACTION",
        "SAVEPOINT s",
        "RELEASE SAVEPOINT s",
        "PREPARE ins AS INSERT INTO orders VALUES ($1)",
        "PREPARE transactions AS SELECT 1",
        "ENDPOINT",
        "committed",
        "SELECT 'COMMIT'",
        "INSERT INTO log (what) VALUES ('rollback')",
        "",
    };
    EXPECT_EFFECT(yes, no, REWRITE_ENDS_LOCAL);
    /* Neither changes the identity by itself. */
    assert_false(rewrite_effects("COMMIT", 6) & REWRITE_CHANGES_IDENTITY);
}

/* A block is opened by a text whose opening is BEGIN or START
 * TRANSACTION, and by no other: not by a BEGIN behind a ';', which may be
 * in a string. */
static void test_begins_block(void **state)
{
    (void)state;
    const char *yes[] = {
        "BEGIN",
        "begin isolation level serializable",
        "/* why */ BEGIN WORK",
        "START TRANSACTION READ ONLY",
        "BEGIN; INSERT INTO t VALUES (1)",
    };
    const char *no[] = {
        "SELECT 'x; BEGIN'",
        "SELECT 1; BEGIN",
        "START",
        "STARTS",
        "beginning",
        "COMMIT",
        "SAVEPOINT begin",
        "",
    };
    EXPECT_EFFECT(yes, no, REWRITE_BEGINS_BLOCK);
}

/* A Query that surely parses and runs its BEGIN: BEGIN or START
 * TRANSACTION with modes, perhaps SET TRANSACTION after it, nothing else. */
static void test_opens_block(void **state)
{
    (void)state;
    static const char *const yes[] = {
        "BEGIN",
        "begin;",
        "BEGIN WORK",
        "BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "BEGIN; SET TRANSACTION ISOLATION LEVEL READ COMMITTED;",
        "START TRANSACTION READ ONLY, NOT DEFERRABLE",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE READ WRITE DEFERRABLE",
        "  BEGIN ;\n SET TRANSACTION READ ONLY ; ",
        "BEGIN ISOLATION LEVEL READ UNCOMMITTED; BEGIN",
    };
    static const char *const no[] = {
        "",
        "SET TRANSACTION READ ONLY",
        "BEGIN; SELEC 1",
        "BEGIN; SELECT 1",
        "BEGIN ISOLATION LEVEL",
        "BEGIN ISOLATION LEVEL READ",
        "BEGIN READ",
        "BEGIN, READ ONLY",
        "BEGIN READ ONLY,",
        "BEGIN; SET TRANSACTION",
        "BEGIN; SET TRANSACTION SNAPSHOT '00000003-1'",
        "START",
        "START WORK",
        "BEGINNING",
        "/* c */ BEGIN",
        "BEGIN -- c",
        "BEGIN WORK TRANSACTION",
        "BEGIN;;",
        "BEGIN\vREAD ONLY",
    };

    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        if (!rewrite_opens_block(yes[i], strlen(yes[i])))
            fail_msg("not taken for a block: \"%s\"", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        if (rewrite_opens_block(no[i], strlen(no[i])))
            fail_msg("taken for a block: \"%s\"", no[i]);
}

/* A Parse's text known by its first bytes: its opening keyword, whole
 * among them, says what it may drop or end; a set_config may be in the
 * rest. */
static void test_unread_effects(void **state)
{
    (void)state;
    const unsigned all = REWRITE_DROPS_STATEMENTS | REWRITE_CHANGES_IDENTITY |
                         REWRITE_ENDS_LOCAL;
    static const struct {
        const char *prefix;
        unsigned effects;
    } openings[] = {
        { "INSERT INTO t VALUES ('", REWRITE_CHANGES_IDENTITY },
        { "  /* note */ select x", REWRITE_CHANGES_IDENTITY },
        { "-- why\nWITH a AS (", REWRITE_CHANGES_IDENTITY },
        { "SET LOCAL search_path TO a", REWRITE_CHANGES_IDENTITY },
        { "COMMIT ", REWRITE_CHANGES_IDENTITY | REWRITE_ENDS_LOCAL },
        { "deallocate x", REWRITE_DROPS_STATEMENTS | REWRITE_CHANGES_IDENTITY },
        { "DISCARD ALL", REWRITE_DROPS_STATEMENTS | REWRITE_CHANGES_IDENTITY },
        /* The opening cut, or not a keyword. */
        { "DEALLOC", all },
        { "INSERT", all },
        { "/* a comment that goes on", all },
        { "-- to the end", all },
        { "   ", all },
        { "(SELECT 1) UNION", all },
        { "", all },
    };

    for (size_t i = 0; i < sizeof openings / sizeof openings[0]; i++) {
        unsigned got = rewrite_unread_effects(openings[i].prefix, strlen(openings[i].prefix));
        if (got != openings[i].effects)
            fail_msg("\"%s\": effects %u, want %u", openings[i].prefix, got, openings[i].effects);
    }
}

/* A FunctionCall of a large-object function changes nothing; of any other
 * (set_config is 2078, int4pl 177, a user's function an oid over 16383)
 * it may change the identity. */
static void test_call_effects(void **state)
{
    (void)state;
    static const uint32_t large_object[] = { 715, 952, 953, 954, 955, 956, 957,
                                             958, 964, 1004, 3170, 3171, 3172 };
    static const uint32_t others[] = { 0, 177, 2078, 16384, 4000000000u };

    for (size_t i = 0; i < sizeof large_object / sizeof large_object[0]; i++)
        assert_int_equal(rewrite_call_effects(large_object[i]), 0);
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
        assert_int_equal(rewrite_call_effects(others[i]), REWRITE_CHANGES_IDENTITY);
}

static void test_charset(void **state)
{
    (void)state;
    static const struct {
        const char *client, *server;
        bool ok, utf8;
    } cases_cs[] = {
        { "UTF8", "UTF8", true, true },
        /* Converted to the server's encoding one character per byte. */
        { "LATIN1", "UTF8", true, false },
        { "WIN1252", "LATIN1", true, false },
        /* Not converted: the server counts the raw bytes in its encoding. */
        { "SQL_ASCII", "UTF8", true, true },
        { "SQL_ASCII", "SQL_ASCII", true, false },
        /* A second byte that looks like a quote or a backslash. */
        { "SJIS", "UTF8", false, false },
        { "BIG5", "UTF8", false, false },
        { "GBK", "UTF8", false, false },
        { "UHC", "UTF8", false, false },
        { "GB18030", "UTF8", false, false },
        { "JOHAB", "UTF8", false, false },
        /* Multibyte, not UTF-8: characters we do not count. */
        { "EUC_JP", "UTF8", false, false },
        { "SQL_ASCII", "EUC_JP", false, false },
    };
    for (size_t i = 0; i < sizeof(cases_cs) / sizeof(cases_cs[0]); i++) {
        bool utf8 = !cases_cs[i].utf8;
        bool ok = rewrite_charset(cases_cs[i].client, cases_cs[i].server, &utf8);
        if (ok != cases_cs[i].ok)
            fail_msg("client %s, server %s: %s", cases_cs[i].client, cases_cs[i].server,
                     ok ? "accepted" : "refused");
        if (ok && utf8 != cases_cs[i].utf8)
            fail_msg("client %s, server %s: utf8 = %d", cases_cs[i].client, cases_cs[i].server, utf8);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_name_with_quote),
        cmocka_unit_test(test_no_targets),
        cmocka_unit_test(test_offsets),
        cmocka_unit_test(test_returning_flag),
        cmocka_unit_test(test_many_statements),
        cmocka_unit_test(test_map_position),
        cmocka_unit_test(test_prefilter),
        cmocka_unit_test(test_build_clause),
        cmocka_unit_test(test_build_deallocate),
        cmocka_unit_test(test_text_neutral),
        cmocka_unit_test(test_utf8_valid),
        cmocka_unit_test(test_drops_statements),
        cmocka_unit_test(test_dropped_statements),
        cmocka_unit_test(test_changes_identity),
        cmocka_unit_test(test_ends_local),
        cmocka_unit_test(test_identity_local),
        cmocka_unit_test(test_begins_block),
        cmocka_unit_test(test_opens_block),
        cmocka_unit_test(test_unread_effects),
        cmocka_unit_test(test_call_effects),
        cmocka_unit_test(test_charset),
        cmocka_unit_test(test_reason_names),
        cmocka_unit_test(test_reasons_of_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
