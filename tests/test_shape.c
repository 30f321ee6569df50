/*
 * Unit tests for shape: which constants are masked and which texts have no
 * shape, and the property the decision cache rests on: for two texts of one
 * shape, the decision carried from the first (generalised, then applied to
 * the second) is exactly what the rewriter decides about the second.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "shape.h"

#define WE_P " ON CONFLICT (\"idempotency_key\") DO NOTHING"
#define WE_R " ON CONFLICT (\"idempotency_key\") DO UPDATE SET \"idempotency_key\" = EXCLUDED.\"idempotency_key\""

static const struct rewrite_target targets[] = {
    { "public", "webhook_events", true, false, WE_P, WE_R, RR_REWRITTEN, RR_REWRITTEN },
    { "public", "audit_log", true, true, " ON CONFLICT DO NOTHING", NULL, RR_REWRITTEN,
      RR_ACTION_NONE },
    { "public", "orders", true, false, " ON CONFLICT (\"ref\") DO NOTHING", NULL, RR_REWRITTEN,
      RR_FORBIDDEN },
};

static const struct rewrite_rules rules = { targets, sizeof(targets) / sizeof(targets[0]) };

/* The key of text, with the marker shown as '#'. */
static char *key_of(const char *text)
{
    struct shape sh = { 0 };

    if (!shape_of(text, strlen(text), &sh)) {
        shape_free(&sh);
        return NULL;
    }
    char *key = strdup(sh.key);
    assert_non_null(key);
    for (char *p = key; *p; p++)
        if (*p == '\x01')
            *p = '#';
    shape_free(&sh);
    return key;
}

static void expect_key(const char *text, const char *key)
{
    char *got = key_of(text);
    assert_non_null(got);
    assert_string_equal(got, key);
    free(got);
}

static void test_masks_strings_and_numbers(void **state)
{
    (void)state;
    expect_key("INSERT INTO t (a, b) VALUES (42, 'x')", "INSERT INTO t (a, b) VALUES (#i, #s)");
    expect_key("VALUES ('it''s', '', 'ünï', 'a\\b')", "VALUES (#s, #s, #s, #s)");
    /* The scanner's token kinds: int4, or numeric past it. */
    expect_key("VALUES (2147483647, 2147483648, 007, 1.5, 0.25)", "VALUES (#i, #n, #i, #n, #n)");
    expect_key("VALUES (-1, +2)", "VALUES (-#i, +#i)");
    expect_key("SELECT 'a'::text, x[1]", "SELECT #s::text, x[#i]");
}

static void test_keeps_names_and_other_tokens(void **state)
{
    (void)state;
    /* Digits in names, parameters, quoted names with quotes in them. */
    expect_key("INSERT INTO t1 (c2) VALUES ($1, 'v')", "INSERT INTO t1 (c2) VALUES ($1, #s)");
    expect_key("INSERT INTO \"it's 1\" VALUES (1)", "INSERT INTO \"it's 1\" VALUES (#i)");
    expect_key("INSERT INTO a$b VALUES (1)", "INSERT INTO a$b VALUES (#i)");
    /* Number forms the masking does not read stay as they are. */
    expect_key("VALUES (1e5, .5, 1., 2)", "VALUES (1e5, .5, 1., #i)");
    expect_key("VALUES (0x1F, 3)", "VALUES (0x1F, #i)");
}

static void test_no_shape(void **state)
{
    (void)state;
    static const char *const none[] = {
        "INSERT INTO t VALUES ($1, $2)",           /* no constants */
        "INSERT INTO t VALUES (1) -- 'note'",      /* comments */
        "INSERT INTO t /* 'x' */ VALUES (1)",
        "INSERT INTO t VALUES ($$a'b$$)",          /* dollar quotes */
        "INSERT INTO t VALUES ($q$x$q$)",
        "INSERT INTO t VALUES (E'\\'', 1)",        /* prefixed strings */
        "INSERT INTO t VALUES (U&'\\0061', 1)",
        "INSERT INTO t VALUES (B'101', 1)",
        "INSERT INTO t VALUES (X'1F', 1)",
        "INSERT INTO t VALUES (N'x', 1)",
        "INSERT INTO t VALUES ('open",             /* unterminated */
        "INSERT INTO \"open VALUES (1)",
        "INSERT INTO t VALUES (1) \x01",           /* the marker itself */
        "INSERT INTO \"a\x01i\" VALUES (1)",        /* ... in a name */
    };
    for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++) {
        char *key = key_of(none[i]);
        if (key)
            fail_msg("%s has the shape %s", none[i], key);
    }
}

static void test_positions(void **state)
{
    (void)state;
    const char *text = "VALUES ('ü', 10)";
    struct shape sh = { 0 };

    assert_true(shape_of(text, strlen(text), &sh));
    assert_int_equal(sh.nconsts, 2);
    assert_int_equal(sh.consts[0].at, 8);
    assert_int_equal(sh.consts[0].len, 4); /* two quotes and two bytes of ü */
    assert_int_equal(sh.consts[0].chars, 3);
    assert_int_equal(sh.consts[1].at, 14);
    assert_int_equal(sh.consts[1].len, 2);
    assert_int_equal(sh.key_len, strlen("VALUES (##, ##)"));
    shape_free(&sh);
}

static void assert_same_result(const struct rewrite_result *a, const struct rewrite_result *b)
{
    assert_int_equal(a->reason, b->reason);
    assert_int_equal(a->stmt_count, b->stmt_count);
    assert_int_equal(a->nstmts, b->nstmts);
    if (a->text || b->text) {
        assert_non_null(a->text);
        assert_non_null(b->text);
        assert_int_equal(a->text_len, b->text_len);
        assert_memory_equal(a->text, b->text, a->text_len);
        assert_int_equal(a->text[a->text_len], '\0');
    }
    for (size_t i = 0; i < a->nstmts; i++) {
        assert_int_equal(a->stmts[i].target, b->stmts[i].target);
        assert_int_equal(a->stmts[i].index, b->stmts[i].index);
        assert_int_equal(a->stmts[i].reason, b->stmts[i].reason);
        assert_int_equal(a->stmts[i].returning, b->stmts[i].returning);
        assert_int_equal(a->stmts[i].offset, b->stmts[i].offset);
        assert_int_equal(a->stmts[i].offset_chars, b->stmts[i].offset_chars);
        assert_int_equal(a->stmts[i].inserted, b->stmts[i].inserted);
    }
}

/* Decides first, carries the decision to second, and compares that with
 * deciding second outright. */
static void check_carried(const char *first, const char *second)
{
    struct shape a = { 0 }, b = { 0 };
    struct rewrite_result decided, general, carried, direct;

    assert_true(shape_of(first, strlen(first), &a));
    assert_true(shape_of(second, strlen(second), &b));
    assert_int_equal(a.key_len, b.key_len);
    assert_memory_equal(a.key, b.key, a.key_len);

    assert_true(rewrite_insert(&rules, first, strlen(first), &decided));
    assert_true(shape_generalise(&a, &decided, &general));
    assert_true(shape_apply(&b, &general, second, strlen(second), &carried));
    assert_true(rewrite_insert(&rules, second, strlen(second), &direct));
    assert_same_result(&carried, &direct);
    /* And back onto the first text: what was decided about it. */
    rewrite_result_free(&carried);
    assert_true(shape_apply(&a, &general, first, strlen(first), &carried));
    assert_same_result(&carried, &decided);

    rewrite_result_free(&decided);
    rewrite_result_free(&general);
    rewrite_result_free(&carried);
    rewrite_result_free(&direct);
    shape_free(&a);
    shape_free(&b);
}

static void test_carried_decision_is_the_rewriters(void **state)
{
    (void)state;
    static const char *const pairs[][2] = {
        /* rewritten; the constants before the clause grow and shrink */
        { "INSERT INTO webhook_events (idempotency_key, body) VALUES (1, 'a')",
          "INSERT INTO webhook_events (idempotency_key, body) VALUES (123456789, 'a longer ''body''')" },
        { "INSERT INTO webhook_events (idempotency_key, body) VALUES (99999, 'long text here')",
          "INSERT INTO webhook_events (idempotency_key, body) VALUES (7, '')" },
        /* multibyte constants move the character offsets apart from the bytes */
        { "INSERT INTO webhook_events VALUES (1, 'ascii')",
          "INSERT INTO webhook_events VALUES (2, 'ünïcödé ✓')" },
        /* RETURNING: the clause goes before it, constants after it */
        { "INSERT INTO webhook_events VALUES (1, 'x') RETURNING id, 'tag'",
          "INSERT INTO webhook_events VALUES (22, 'yy') RETURNING id, 'other tag'" },
        /* the clause right after a constant */
        { "INSERT INTO webhook_events SELECT 1, 'a'",
          "INSERT INTO webhook_events SELECT 10, 'abc'" },
        /* several statements, two rewritten */
        { "INSERT INTO webhook_events VALUES (1, 'a'); SELECT 2; INSERT INTO orders VALUES ('r1')",
          "INSERT INTO webhook_events VALUES (31, 'abc'); SELECT 42; INSERT INTO orders VALUES ('r-000002')" },
        /* decided otherwise: shadow, forbidden RETURNING, ON CONFLICT given, other tables */
        { "INSERT INTO audit_log VALUES (1, 'a')", "INSERT INTO audit_log VALUES (12, 'bc')" },
        { "INSERT INTO orders VALUES ('a') RETURNING id", "INSERT INTO orders VALUES ('abc') RETURNING id" },
        { "INSERT INTO webhook_events VALUES (1) ON CONFLICT DO NOTHING",
          "INSERT INTO webhook_events VALUES (100) ON CONFLICT DO NOTHING" },
        { "INSERT INTO elsewhere VALUES (1, 'a')", "INSERT INTO elsewhere VALUES (2, 'bcd')" },
        /* a parse error stays one */
        { "INSERT INTO webhook_events VALUES (1, 'a'", "INSERT INTO webhook_events VALUES (22, 'ab'" },
    };
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        check_carried(pairs[i][0], pairs[i][1]);
        check_carried(pairs[i][1], pairs[i][0]);
    }
}

static void test_offset_inside_a_constant_is_refused(void **state)
{
    (void)state;
    const char *text = "VALUES ('abc')";
    struct shape sh = { 0 };
    struct rewrite_stmt st = { .reason = RR_SHADOW, .offset = 10, .offset_chars = 10 };
    struct rewrite_result r = { .reason = RR_SHADOW, .stmt_count = 1, .stmts = &st, .nstmts = 1 };
    struct rewrite_result out;

    assert_true(shape_of(text, strlen(text), &sh));
    assert_false(shape_generalise(&sh, &r, &out));
    assert_null(out.stmts);
    shape_free(&sh);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_masks_strings_and_numbers),
        cmocka_unit_test(test_keeps_names_and_other_tokens),
        cmocka_unit_test(test_no_shape),
        cmocka_unit_test(test_positions),
        cmocka_unit_test(test_carried_decision_is_the_rewriters),
        cmocka_unit_test(test_offset_inside_a_constant_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
