/*
 * Unit tests for translate: when a unique violation answering a Query or an
 * Execute may be reported as "INSERT 0 0", when it must first be rolled back
 * to the proxy's savepoint, and when it must reach the client unchanged.
 *
 * The rules come from translate.h and the protocol notes: only a 23505, only
 * on the table the proxy's own parsed INSERT goes into, only with
 * translate_errors on, and only where nothing else the client believes
 * happened was rolled back or skipped with it: alone in its implicit
 * transaction ('I', one statement; extended: the next message must also be
 * Sync), or under the proxy's savepoint in a transaction block. Everywhere
 * else the error passes, and the reason says why, since it labels counters.
 *
 * A hand-written table pins the cases one by one, with the order in which
 * refusals are checked when several apply; a sweep over every combination
 * of the request's fields, the SQLSTATE and the error's table then checks
 * the same rules, and the safety properties behind them, everywhere.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "translate.h"

/* ---- names for messages ------------------------------------------------ */

static const char *verdict_name(enum translate_verdict v)
{
    switch (v) {
    case TRANSLATE_PASS: return "PASS";
    case TRANSLATE_COMPLETE: return "COMPLETE";
    case TRANSLATE_ROLLBACK: return "ROLLBACK";
    case TRANSLATE_AWAIT: return "AWAIT";
    }
    return "(out of range)";
}

static const char *why_name(enum translate_reason r)
{
    return (unsigned)r < TR_COUNT ? translate_reason_name(r) : "(out of range)";
}

/* Where the error's s and t fields point, relative to the request's table:
 * the same table, another registered one, or none the proxy knows (fields
 * absent, or a table not registered). */
enum err_where { ERR_SAME, ERR_OTHER, ERR_NONE };

static int error_table_for(int table, enum err_where where)
{
    switch (where) {
    case ERR_SAME: return table;
    case ERR_OTHER: return table >= 0 ? table + 1 : 2;
    case ERR_NONE: break;
    }
    return -1;
}

static const char *where_name(enum err_where where)
{
    return where == ERR_SAME ? "same" : where == ERR_OTHER ? "other" : "none";
}

static void describe(char *out, size_t cap, const struct translate_request *req,
                     const char *sqlstate, enum err_where where)
{
    snprintf(out, cap,
             "{%s table=%d enabled=%d statements=%zu txn='%c' guarded=%d} "
             "sqlstate=%s error_table=%s",
             req->extended ? "extended" : "simple", req->table, req->enabled, req->statements,
             req->txn_status ? req->txn_status : '0', req->guarded,
             sqlstate ? sqlstate : "NULL", where_name(where));
}

static int failures;

/* An error the statement itself raised (no context field). */
static enum translate_verdict decide(const struct translate_request *req, const char *sqlstate,
                                     int error_table, enum translate_reason *why)
{
    const struct translate_error err = { sqlstate, error_table, false };
    return translate_decide(req, &err, why);
}

/* A sentinel *why must not keep: every verdict says why. */
#define WHY_UNSET ((enum translate_reason)(TR_COUNT + 1))

/* Runs one decision and reports a mismatch without stopping. */
static void check_decide(const char *label, const struct translate_request *req,
                         const char *sqlstate, enum err_where where,
                         enum translate_verdict want, enum translate_reason want_why)
{
    enum translate_reason why = WHY_UNSET;
    enum translate_verdict got =
        decide(req, sqlstate, error_table_for(req->table, where), &why);

    if (got != want || why != want_why) {
        char desc[256];
        describe(desc, sizeof(desc), req, sqlstate, where);
        print_error("%s%s%s: expected %s/%s, got %s/%s\n", label ? label : "",
                    label ? ": " : "", desc, verdict_name(want), why_name(want_why),
                    verdict_name(got), why_name(why));
        failures++;
    }
}

/* ---- the table ----------------------------------------------------------- */

struct decide_case {
    const char *name;
    struct translate_request req;
    const char *sqlstate;
    enum err_where where;
    enum translate_verdict verdict;
    enum translate_reason why;
};

/* extended, table, enabled, statements, txn_status, guarded */
#define REQ(ext, tbl, on, n, txn, grd)                                         \
    { .extended = (ext), .table = (tbl), .enabled = (on), .statements = (n),    \
      .txn_status = (txn), .guarded = (grd) }
#define SIMPLE_ALONE REQ(false, 3, true, 1, 'I', false)
#define EXT_ALONE REQ(true, 3, true, 1, 'I', false)
#define GUARDED REQ(false, 3, true, 1, 'T', true)
#define PASS(reason) TRANSLATE_PASS, (reason)
#define YES(verdict) (verdict), TR_TRANSLATED

static const struct decide_case decide_cases[] = {
    /* The success paths. */
    { "simple, alone in 'I'", SIMPLE_ALONE, "23505", ERR_SAME, YES(TRANSLATE_COMPLETE) },
    { "table 0 is a table", REQ(false, 0, true, 1, 'I', false), "23505", ERR_SAME,
      YES(TRANSLATE_COMPLETE) },
    /* The server skips to Sync after an extended error: whatever the client
     * sent before it would be lost, so the next message decides. */
    { "extended, alone in 'I'", EXT_ALONE, "23505", ERR_SAME, YES(TRANSLATE_AWAIT) },
    { "guarded simple in 'T'", GUARDED, "23505", ERR_SAME, YES(TRANSLATE_ROLLBACK) },
    { "guarded extended, third Execute", REQ(true, 3, true, 3, 'T', true), "23505", ERR_SAME,
      YES(TRANSLATE_ROLLBACK) },
    /* The savepoint was placed knowing the block was open; what the caller
     * says of the status afterwards does not matter. */
    { "guarded wins over 'E'", REQ(false, 3, true, 1, 'E', true), "23505", ERR_SAME,
      YES(TRANSLATE_ROLLBACK) },
    { "guarded wins over 'I' and several", REQ(false, 3, true, 4, 'I', true), "23505", ERR_SAME,
      YES(TRANSLATE_ROLLBACK) },

    /* Only 23505, matched exactly: SQLSTATEs are five characters. */
    { "foreign key", SIMPLE_ALONE, "23503", ERR_SAME, PASS(TR_NOT_UNIQUE) },
    { "serialization failure", SIMPLE_ALONE, "40001", ERR_SAME, PASS(TR_NOT_UNIQUE) },
    { "exclusion violation", SIMPLE_ALONE, "23P01", ERR_SAME, PASS(TR_NOT_UNIQUE) },
    { "cardinality (same key twice)", SIMPLE_ALONE, "21000", ERR_SAME, PASS(TR_NOT_UNIQUE) },
    { "no code", SIMPLE_ALONE, NULL, ERR_SAME, PASS(TR_NOT_UNIQUE) },
    { "empty code", SIMPLE_ALONE, "", ERR_SAME, PASS(TR_NOT_UNIQUE) },
    { "prefix of 23505", SIMPLE_ALONE, "2350", ERR_SAME, PASS(TR_NOT_UNIQUE) },
    { "23505 with more", SIMPLE_ALONE, "235050", ERR_SAME, PASS(TR_NOT_UNIQUE) },
    { "23505 and a space", SIMPLE_ALONE, "23505 ", ERR_SAME, PASS(TR_NOT_UNIQUE) },
    { "class 23 only", SIMPLE_ALONE, "23000", ERR_SAME, PASS(TR_NOT_UNIQUE) },
    { "not unique, guarded", GUARDED, "40001", ERR_SAME, PASS(TR_NOT_UNIQUE) },
    { "not unique, extended", EXT_ALONE, NULL, ERR_SAME, PASS(TR_NOT_UNIQUE) },

    /* Only an INSERT the proxy recognised. Its -1 must not match an error
     * that names no registered table (-1 too). */
    { "unrecognised, error names none", REQ(false, -1, true, 1, 'I', false), "23505", ERR_NONE,
      PASS(TR_NOT_RECOGNISED) },
    { "unrecognised, error names one", REQ(false, -1, true, 1, 'I', false), "23505", ERR_OTHER,
      PASS(TR_NOT_RECOGNISED) },
    { "unrecognised Execute", REQ(true, -1, true, 1, 'I', false), "23505", ERR_OTHER,
      PASS(TR_NOT_RECOGNISED) },

    /* A trigger's or function's INSERT into another table. */
    { "other table", SIMPLE_ALONE, "23505", ERR_OTHER, PASS(TR_OTHER_TABLE) },
    { "no table in the error", SIMPLE_ALONE, "23505", ERR_NONE, PASS(TR_OTHER_TABLE) },
    { "other table, extended", EXT_ALONE, "23505", ERR_OTHER, PASS(TR_OTHER_TABLE) },
    { "other table, guarded", GUARDED, "23505", ERR_OTHER, PASS(TR_OTHER_TABLE) },
    { "table 0, error on 1", REQ(false, 0, true, 1, 'I', false), "23505", ERR_OTHER,
      PASS(TR_OTHER_TABLE) },

    { "disabled", REQ(false, 3, false, 1, 'I', false), "23505", ERR_SAME, PASS(TR_DISABLED) },
    { "disabled, extended", REQ(true, 3, false, 1, 'I', false), "23505", ERR_SAME,
      PASS(TR_DISABLED) },
    { "disabled, 'T'", REQ(false, 3, false, 1, 'T', false), "23505", ERR_SAME,
      PASS(TR_DISABLED) },

    /* An implicit transaction shared with other statements. */
    { "simple, two statements", REQ(false, 3, true, 2, 'I', false), "23505", ERR_SAME,
      PASS(TR_NOT_ALONE) },
    { "simple, many statements", REQ(false, 3, true, 100, 'I', false), "23505", ERR_SAME,
      PASS(TR_NOT_ALONE) },
    { "extended, second Execute", REQ(true, 3, true, 2, 'I', false), "23505", ERR_SAME,
      PASS(TR_NOT_ALONE) },
    /* Zero statements cannot describe a real request: refusing is safe. */
    { "zero statements", REQ(false, 3, true, 0, 'I', false), "23505", ERR_SAME,
      PASS(TR_NOT_ALONE) },
    { "zero Executes", REQ(true, 3, true, 0, 'I', false), "23505", ERR_SAME, PASS(TR_NOT_ALONE) },

    /* In a block without the savepoint, the block is now aborted: a success
     * with 'E' after it would be a lie. */
    { "'T' unguarded", REQ(false, 3, true, 1, 'T', false), "23505", ERR_SAME,
      PASS(TR_NOT_GUARDED) },
    { "'T' unguarded, extended", REQ(true, 3, true, 1, 'T', false), "23505", ERR_SAME,
      PASS(TR_NOT_GUARDED) },
    { "'T' unguarded, several", REQ(false, 3, true, 3, 'T', false), "23505", ERR_SAME,
      PASS(TR_NOT_GUARDED) },
    { "'E'", REQ(false, 3, true, 1, 'E', false), "23505", ERR_SAME, PASS(TR_FAILED_BLOCK) },
    { "'E', extended", REQ(true, 3, true, 1, 'E', false), "23505", ERR_SAME,
      PASS(TR_FAILED_BLOCK) },
    { "'E', several", REQ(false, 3, true, 2, 'E', false), "23505", ERR_SAME,
      PASS(TR_FAILED_BLOCK) },
    /* A status the proxy never saw (no ReadyForQuery yet, a corrupt one)
     * must not be taken for 'I'. */
    { "unknown status 0", REQ(false, 3, true, 1, 0, false), "23505", ERR_SAME,
      PASS(TR_FAILED_BLOCK) },
    { "unknown status 'i'", REQ(false, 3, true, 1, 'i', false), "23505", ERR_SAME,
      PASS(TR_FAILED_BLOCK) },

    /* The order when several refusals apply: SQLSTATE, then recognised,
     * then table, then translate_errors, then the savepoint, then the
     * transaction. Each pair below fails both of its conditions. */
    { "order: not unique before unrecognised", REQ(false, -1, true, 1, 'I', false), "23503",
      ERR_NONE, PASS(TR_NOT_UNIQUE) },
    { "order: not unique before disabled", REQ(false, 3, false, 1, 'I', false), NULL, ERR_SAME,
      PASS(TR_NOT_UNIQUE) },
    { "order: not unique before failed block", REQ(false, 3, true, 1, 'E', false), "40001",
      ERR_SAME, PASS(TR_NOT_UNIQUE) },
    { "order: unrecognised before disabled", REQ(false, -1, false, 1, 'I', false), "23505",
      ERR_OTHER, PASS(TR_NOT_RECOGNISED) },
    { "order: other table before disabled", REQ(false, 3, false, 1, 'I', false), "23505",
      ERR_OTHER, PASS(TR_OTHER_TABLE) },
    { "order: no table before disabled", REQ(false, 3, false, 1, 'I', false), "23505", ERR_NONE,
      PASS(TR_OTHER_TABLE) },
    { "order: other table before not alone", REQ(false, 3, true, 2, 'I', false), "23505",
      ERR_OTHER, PASS(TR_OTHER_TABLE) },
    { "order: other table before failed block", REQ(false, 3, true, 1, 'E', false), "23505",
      ERR_OTHER, PASS(TR_OTHER_TABLE) },
    { "order: disabled before guarded", REQ(false, 3, false, 1, 'T', true), "23505", ERR_SAME,
      PASS(TR_DISABLED) },
    { "order: disabled before not alone", REQ(false, 3, false, 2, 'I', false), "23505", ERR_SAME,
      PASS(TR_DISABLED) },
    { "order: disabled before not guarded", REQ(false, 3, false, 1, 'T', false), "23505",
      ERR_SAME, PASS(TR_DISABLED) },
    { "order: disabled before failed block", REQ(true, 3, false, 2, 'E', false), "23505",
      ERR_SAME, PASS(TR_DISABLED) },
    { "order: everything wrong", REQ(true, -1, false, 0, 'E', false), NULL, ERR_OTHER,
      PASS(TR_NOT_UNIQUE) },
};

static void test_decide_table(void **state)
{
    (void)state;
    failures = 0;
    for (size_t i = 0; i < sizeof(decide_cases) / sizeof(decide_cases[0]); i++) {
        const struct decide_case *c = &decide_cases[i];
        check_decide(c->name, &c->req, c->sqlstate, c->where, c->verdict, c->why);
    }
    if (failures)
        fail_msg("%d mismatches in %zu cases", failures,
                 sizeof(decide_cases) / sizeof(decide_cases[0]));
}

/* ---- the sweep ------------------------------------------------------------- */

/* The rules, written out once more as the expected answer. */
static enum translate_verdict expected(const struct translate_request *req, const char *sqlstate,
                                       enum err_where where, enum translate_reason *why)
{
    bool unique = sqlstate && strcmp(sqlstate, "23505") == 0;
    bool same_table = req->table >= 0 && where == ERR_SAME;

    *why = !unique                                   ? TR_NOT_UNIQUE
           : req->table < 0                          ? TR_NOT_RECOGNISED
           : !same_table                             ? TR_OTHER_TABLE
           : !req->enabled                           ? TR_DISABLED
           : req->guarded                            ? TR_TRANSLATED
           : req->txn_status == 'T'                  ? TR_NOT_GUARDED
           : req->txn_status != 'I'                  ? TR_FAILED_BLOCK
           : req->statements != 1                    ? TR_NOT_ALONE
                                                     : TR_TRANSLATED;
    if (*why != TR_TRANSLATED)
        return TRANSLATE_PASS;
    if (req->guarded)
        return TRANSLATE_ROLLBACK;
    return req->extended ? TRANSLATE_AWAIT : TRANSLATE_COMPLETE;
}

static const char *const sqlstates[] = { "23505", "23503", "40001", NULL };
static const enum err_where wheres[] = { ERR_SAME, ERR_OTHER, ERR_NONE };
static const int tables[] = { -1, 0, 4 };
static const size_t statement_counts[] = { 0, 1, 2, 100 };
static const char txn_statuses[] = { 'I', 'T', 'E' };

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* Calls fn for every request the sweep covers. */
static size_t for_each_request(void (*fn)(const struct translate_request *))
{
    size_t n = 0;
    for (int ext = 0; ext < 2; ext++)
        for (size_t t = 0; t < N(tables); t++)
            for (int on = 0; on < 2; on++)
                for (size_t s = 0; s < N(statement_counts); s++)
                    for (size_t x = 0; x < N(txn_statuses); x++)
                        for (int g = 0; g < 2; g++) {
                            struct translate_request req = {
                                .extended = ext,
                                .table = tables[t],
                                .enabled = on,
                                .statements = statement_counts[s],
                                .txn_status = txn_statuses[x],
                                .guarded = g,
                            };
                            fn(&req);
                            n++;
                        }
    return n;
}

/* Beyond the exact answer, what must hold whatever the order of checks:
 * a replaced error is always a 23505 on the INSERT's own, enabled table;
 * an immediate success only for a simple statement alone in 'I'; a wait
 * only for an Execute alone in 'I'; a rollback only under the savepoint. */
static void check_safety(const struct translate_request *req, const char *sqlstate,
                         enum err_where where, enum translate_verdict got,
                         enum translate_reason why)
{
    char desc[256];
    const char *broken = NULL;

    if ((got == TRANSLATE_PASS) == (why == TR_TRANSLATED))
        broken = "PASS exactly when not TR_TRANSLATED";
    else if (got != TRANSLATE_PASS &&
             !(sqlstate && strcmp(sqlstate, "23505") == 0 && req->table >= 0 &&
               where == ERR_SAME && req->enabled))
        broken = "only a 23505 on the INSERT's own enabled table is replaced";
    else if (got == TRANSLATE_COMPLETE &&
             !(!req->extended && !req->guarded && req->txn_status == 'I' &&
               req->statements == 1))
        broken = "COMPLETE only for a simple statement alone in 'I'";
    else if (got == TRANSLATE_AWAIT &&
             !(req->extended && !req->guarded && req->txn_status == 'I' && req->statements == 1))
        broken = "AWAIT only for an Execute alone in 'I'";
    else if (got == TRANSLATE_ROLLBACK && !req->guarded)
        broken = "ROLLBACK only under the savepoint";
    else if (got != TRANSLATE_PASS && got != TRANSLATE_ROLLBACK && req->txn_status != 'I')
        broken = "no plain success outside 'I'";
    if (broken) {
        describe(desc, sizeof(desc), req, sqlstate, where);
        print_error("%s: %s (got %s/%s)\n", desc, broken, verdict_name(got), why_name(why));
        failures++;
    }
}

static void sweep_one(const struct translate_request *req)
{
    for (size_t c = 0; c < N(sqlstates); c++)
        for (size_t w = 0; w < N(wheres); w++) {
            enum translate_reason want_why, why = WHY_UNSET;
            enum translate_verdict want = expected(req, sqlstates[c], wheres[w], &want_why);
            check_decide(NULL, req, sqlstates[c], wheres[w], want, want_why);
            enum translate_verdict got =
                decide(req, sqlstates[c], error_table_for(req->table, wheres[w]), &why);
            check_safety(req, sqlstates[c], wheres[w], got, why);
        }
}

static void test_decide_sweep(void **state)
{
    (void)state;
    failures = 0;
    size_t n = for_each_request(sweep_one) * N(sqlstates) * N(wheres);
    assert_int_equal(n, 2 * N(tables) * 2 * N(statement_counts) * N(txn_statuses) * 2 *
                            N(sqlstates) * N(wheres));
    if (failures)
        fail_msg("%d mismatches in %zu combinations", failures, n);
}

/* ---- translate_await ------------------------------------------------------- */

static void test_await(void **state)
{
    (void)state;
    /* The messages a client may send after an Execute. Flush ('H') is not
     * Sync: after it the client may wait for the outcome before sending
     * more, so the error must go out as it is. */
    static const struct {
        char type;
        enum translate_verdict verdict;
        enum translate_reason why;
    } cases[] = {
        { 'S', YES(TRANSLATE_COMPLETE) },
        { 'H', PASS(TR_NOT_SYNC) },
        { 'P', PASS(TR_NOT_SYNC) },
        { 'B', PASS(TR_NOT_SYNC) },
        { 'E', PASS(TR_NOT_SYNC) },
        { 'D', PASS(TR_NOT_SYNC) },
        { 'C', PASS(TR_NOT_SYNC) },
        { 'Q', PASS(TR_NOT_SYNC) },
        { 'X', PASS(TR_NOT_SYNC) },
        { 'F', PASS(TR_NOT_SYNC) },
        { 'd', PASS(TR_NOT_SYNC) },
        { 'c', PASS(TR_NOT_SYNC) },
        { 'f', PASS(TR_NOT_SYNC) },
        { 's', PASS(TR_NOT_SYNC) }, /* PortalSuspended is the server's, and not Sync */
        { '?', PASS(TR_NOT_SYNC) }, /* what conn_server.c passes for "not a Sync" */
        { 0, PASS(TR_NOT_SYNC) },
    };

    failures = 0;
    for (size_t i = 0; i < N(cases); i++) {
        enum translate_reason why = WHY_UNSET;
        enum translate_verdict got = translate_await(cases[i].type, &why);
        if (got != cases[i].verdict || why != cases[i].why) {
            print_error("'%c' (%d): expected %s/%s, got %s/%s\n",
                        cases[i].type ? cases[i].type : '0', cases[i].type,
                        verdict_name(cases[i].verdict), why_name(cases[i].why),
                        verdict_name(got), why_name(why));
            failures++;
        }
    }
    /* And every other byte: only 'S' completes, and it never answers
     * AWAIT or ROLLBACK. */
    for (int b = -128; b < 128; b++) {
        enum translate_reason why = WHY_UNSET;
        enum translate_verdict got = translate_await((char)b, &why);
        bool sync = (char)b == 'S';
        if (got != (sync ? TRANSLATE_COMPLETE : TRANSLATE_PASS) ||
            why != (sync ? TR_TRANSLATED : TR_NOT_SYNC)) {
            print_error("byte %d: got %s/%s\n", b, verdict_name(got), why_name(why));
            failures++;
        }
    }
    if (failures)
        fail_msg("%d mismatches", failures);
}

/* ---- translate_guard ------------------------------------------------------- */

static void test_guard_table(void **state)
{
    (void)state;
    /* The base case takes the savepoint; each other row takes one
     * condition away (or shows one that does not matter). */
    static const struct {
        const char *name;
        struct translate_request req;
        bool certain, want;
    } cases[] = {
        { "simple, one statement, 'T'", REQ(false, 3, true, 1, 'T', false), true, true },
        { "table 0", REQ(false, 0, true, 1, 'T', false), true, true },
        { "extended, first Execute", REQ(true, 3, true, 1, 'T', false), true, true },
        /* Each Execute in a block gets its own savepoint. */
        { "extended, fifth Execute", REQ(true, 3, true, 5, 'T', false), true, true },
        { "not certain", REQ(false, 3, true, 1, 'T', false), false, false },
        { "not certain, extended", REQ(true, 3, true, 1, 'T', false), false, false },
        { "unrecognised", REQ(false, -1, true, 1, 'T', false), true, false },
        { "unrecognised, extended", REQ(true, -1, true, 1, 'T', false), true, false },
        { "disabled", REQ(false, 3, false, 1, 'T', false), true, false },
        { "disabled, extended", REQ(true, 3, false, 1, 'T', false), true, false },
        /* SAVEPOINT is refused outside a block (25P01). */
        { "'I'", REQ(false, 3, true, 1, 'I', false), true, false },
        { "'I', extended", REQ(true, 3, true, 1, 'I', false), true, false },
        { "'E'", REQ(false, 3, true, 1, 'E', false), true, false },
        { "'E', extended", REQ(true, 3, true, 1, 'E', false), true, false },
        { "unknown status", REQ(false, 3, true, 1, 0, false), true, false },
        /* A savepoint before a Query of several statements would cover
         * them all: rolling back to it would undo the others. */
        { "simple, two statements", REQ(false, 3, true, 2, 'T', false), true, false },
        { "simple, zero statements", REQ(false, 3, true, 0, 'T', false), true, false },
        { "already guarded", REQ(false, 3, true, 1, 'T', true), true, true },
    };

    failures = 0;
    for (size_t i = 0; i < N(cases); i++) {
        bool got = translate_guard(&cases[i].req, cases[i].certain);
        if (got != cases[i].want) {
            print_error("%s: expected %d, got %d\n", cases[i].name, cases[i].want, got);
            failures++;
        }
    }
    if (failures)
        fail_msg("%d mismatches in %zu cases", failures, N(cases));
}

static void guard_one(const struct translate_request *req)
{
    for (int certain = 0; certain < 2; certain++) {
        bool want = certain && req->table >= 0 && req->enabled && req->txn_status == 'T' &&
                    (req->extended || req->statements == 1);
        bool got = translate_guard(req, certain);
        if (got != want) {
            char desc[256];
            describe(desc, sizeof(desc), req, "-", ERR_NONE);
            print_error("guard %s certain=%d: expected %d, got %d\n", desc, certain, want, got);
            failures++;
        }
    }
}

static void test_guard_sweep(void **state)
{
    (void)state;
    failures = 0;
    size_t n = for_each_request(guard_one);
    if (failures)
        fail_msg("%d mismatches in %zu requests", failures, n * 2);
}

/* A guarded request that fails is rolled back; one that the guard refused
 * is never answered ROLLBACK. The two functions agree. */
static void guard_then_decide(const struct translate_request *req)
{
    if (req->guarded)
        return;
    for (int certain = 0; certain < 2; certain++) {
        struct translate_request r = *req;
        r.guarded = translate_guard(req, certain);
        enum translate_reason why = WHY_UNSET;
        enum translate_verdict got = decide(&r, "23505", r.table, &why);
        bool want_rollback = r.guarded;
        if ((got == TRANSLATE_ROLLBACK) != want_rollback) {
            char desc[256];
            describe(desc, sizeof(desc), &r, "23505", ERR_SAME);
            print_error("%s certain=%d: got %s/%s\n", desc, certain, verdict_name(got),
                        why_name(why));
            failures++;
        }
        /* In a block, the only way to success is the savepoint. */
        if (r.txn_status == 'T' && !r.guarded && got != TRANSLATE_PASS) {
            print_error("unguarded 'T' not passed\n");
            failures++;
        }
    }
}

static void test_guard_agrees_with_decide(void **state)
{
    (void)state;
    failures = 0;
    for_each_request(guard_then_decide);
    if (failures)
        fail_msg("%d mismatches", failures);
}

/* ---- reason names ------------------------------------------------------------ */

static void test_reason_names(void **state)
{
    (void)state;
    /* They label counters and log lines ("name=count"), so they stay as
     * they are: lowercase words joined by '_'. */
    static const char *const want[TR_COUNT] = {
        [TR_TRANSLATED] = "translated",
        [TR_NOT_UNIQUE] = "not_unique_violation",
        [TR_NOT_RECOGNISED] = "not_recognised",
        [TR_IN_ROUTINE] = "in_function_or_trigger",
        [TR_OTHER_TABLE] = "other_table",
        [TR_DISABLED] = "disabled",
        [TR_RETURNING] = "returning",
        [TR_NOT_ALONE] = "not_alone",
        [TR_NOT_GUARDED] = "not_guarded",
        [TR_FAILED_BLOCK] = "failed_block",
        [TR_NOT_SYNC] = "not_followed_by_sync",
        [TR_ROLLBACK_FAILED] = "rollback_failed",
    };

    failures = 0;
    for (int r = 0; r < TR_COUNT; r++) {
        const char *name = translate_reason_name((enum translate_reason)r);
        if (!name || !*name) {
            print_error("reason %d: no name\n", r);
            failures++;
            continue;
        }
        if (strspn(name, "abcdefghijklmnopqrstuvwxyz_") != strlen(name) || name[0] == '_') {
            print_error("reason %d: \"%s\" is not lowercase words\n", r, name);
            failures++;
        }
        if (strcmp(name, "unknown") == 0) {
            print_error("reason %d: named like an out-of-range one\n", r);
            failures++;
        }
        if (want[r] && strcmp(name, want[r]) != 0) {
            print_error("reason %d: expected \"%s\", got \"%s\"\n", r, want[r], name);
            failures++;
        }
        for (int o = 0; o < r; o++) {
            const char *other = translate_reason_name((enum translate_reason)o);
            if (other && strcmp(name, other) == 0) {
                print_error("reasons %d and %d are both \"%s\"\n", o, r, name);
                failures++;
            }
        }
    }
    if (failures)
        fail_msg("%d problems", failures);
    assert_string_equal(translate_reason_name(TR_COUNT), "unknown");
    assert_string_equal(translate_reason_name((enum translate_reason)(TR_COUNT + 1)), "unknown");
    assert_string_equal(translate_reason_name((enum translate_reason)1000), "unknown");
}

/* A violation raised inside a function or trigger the statement ran is not
 * the statement's, even on its own table; and a simple-protocol INSERT ...
 * RETURNING cannot be answered without the server's RowDescription. */
static void test_routine_and_returning(void **state)
{
    (void)state;
    const struct translate_request simple = {
        .table = 0, .enabled = true, .statements = 1, .txn_status = 'I',
    };
    struct translate_request r;
    enum translate_reason why = WHY_UNSET;
    struct translate_error err = { "23505", 0, true };

    /* Inside a routine: passes, whatever else holds... */
    assert_int_equal(translate_decide(&simple, &err, &why), TRANSLATE_PASS);
    assert_int_equal(why, TR_IN_ROUTINE);
    r = simple;
    r.guarded = true;
    r.txn_status = 'T';
    assert_int_equal(translate_decide(&r, &err, &why), TRANSLATE_PASS);
    assert_int_equal(why, TR_IN_ROUTINE);
    /* ...but the earlier reasons still come first. */
    err.sqlstate = "23503";
    assert_int_equal(translate_decide(&simple, &err, &why), TRANSLATE_PASS);
    assert_int_equal(why, TR_NOT_UNIQUE);
    err.sqlstate = "23505";
    r = simple;
    r.table = -1;
    assert_int_equal(translate_decide(&r, &err, &why), TRANSLATE_PASS);
    assert_int_equal(why, TR_NOT_RECOGNISED);
    /* Outside one, the same error is translated. */
    err.in_routine = false;
    assert_int_equal(translate_decide(&simple, &err, &why), TRANSLATE_COMPLETE);
    assert_int_equal(why, TR_TRANSLATED);

    /* RETURNING: the simple protocol passes, the extended awaits its Sync. */
    r = simple;
    r.returning = true;
    assert_int_equal(translate_decide(&r, &err, &why), TRANSLATE_PASS);
    assert_int_equal(why, TR_RETURNING);
    r.extended = true;
    assert_int_equal(translate_decide(&r, &err, &why), TRANSLATE_AWAIT);
    assert_int_equal(why, TR_TRANSLATED);
    /* Disabled tables say so before RETURNING does. */
    r.extended = false;
    r.enabled = false;
    assert_int_equal(translate_decide(&r, &err, &why), TRANSLATE_PASS);
    assert_int_equal(why, TR_DISABLED);

    /* No savepoint for a simple INSERT ... RETURNING: it could not be
     * translated anyway. An Execute with RETURNING is guarded. */
    r = simple;
    r.returning = true;
    r.txn_status = 'T';
    assert_false(translate_guard(&r, true));
    r.extended = true;
    r.statements = 3;
    assert_true(translate_guard(&r, true));
}

/* The statements the proxy injects: their text is what the server sees,
 * and the rollback must release too (the savepoint does not outlive it). */
static void test_sql(void **state)
{
    (void)state;
    assert_string_equal(TRANSLATE_SQL_SAVEPOINT, "SAVEPOINT idemproxy_guard");
    assert_string_equal(TRANSLATE_SQL_RELEASE, "RELEASE SAVEPOINT idemproxy_guard");
    assert_string_equal(TRANSLATE_SQL_ROLLBACK,
                        "ROLLBACK TO SAVEPOINT idemproxy_guard; RELEASE SAVEPOINT idemproxy_guard");
    assert_string_equal(TRANSLATE_TAG, "INSERT 0 0");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decide_table),
        cmocka_unit_test(test_decide_sweep),
        cmocka_unit_test(test_await),
        cmocka_unit_test(test_guard_table),
        cmocka_unit_test(test_guard_sweep),
        cmocka_unit_test(test_guard_agrees_with_decide),
        cmocka_unit_test(test_routine_and_returning),
        cmocka_unit_test(test_reason_names),
        cmocka_unit_test(test_sql),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
