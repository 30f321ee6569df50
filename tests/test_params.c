/*
 * Unit tests for params: which texts of one INSERT become a statement with
 * parameters (every constant a whole VALUES item, nothing else), the
 * statement's text, and the types and values a Parse and a Bind carry.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "params.h"
#include "pgproto.h"

/* The statement with parameters of text's shape, or NULL, with text's
 * values bound in p; both must be freed. */
static struct params_stmt *form(const char *text, struct params *p)
{
    struct shape sh = { 0 };
    struct params_stmt *ps = NULL;

    if (shape_of(text, strlen(text), &sh) &&
        (ps = params_stmt_of(sh.key, sh.key_len, sh.nconsts)) &&
        !params_bind(ps, sh.consts, sh.nconsts, text, strlen(text), p)) {
        free(ps);
        ps = NULL;
    }
    shape_free(&sh);
    return ps;
}

static void assert_form(const char *text, const char *want)
{
    struct params p = { 0 };
    struct params_stmt *ps = form(text, &p);
    const char *got = ps ? ps->text : NULL;

    if (!want && got)
        fail_msg("%s: parameterised as %s", text, got);
    if (want && !got)
        fail_msg("%s: not parameterised", text);
    if (want)
        assert_string_equal(got, want);
    free(ps);
    params_free(&p);
}

static void test_values_items_become_parameters(void **state)
{
    (void)state;
    assert_form("INSERT INTO t (k, v) VALUES (42, 'retry')",
                "INSERT INTO t (k, v) VALUES ($1, $2)");
    assert_form("insert into t values (1,'a'),(2, 'b' ) ON CONFLICT (\"k\") DO NOTHING;",
                "insert into t values ($1,$2),($3, $4 ) ON CONFLICT (\"k\") DO NOTHING;");
    /* Other items stay as they are around the constants. */
    assert_form("INSERT INTO t VALUES (DEFAULT, now(), 7, NULL, true)",
                "INSERT INTO t VALUES (DEFAULT, now(), $1, NULL, true)");
    assert_form("INSERT INTO t VALUES (-5, - 1.5)", "INSERT INTO t VALUES (-$1, - $2)");
    /* Names, quoted or not, and a WITH without constants before. */
    assert_form("INSERT INTO \"Values\" (\"a,(b\") VALUES ('x')",
                "INSERT INTO \"Values\" (\"a,(b\") VALUES ($1)");
    assert_form("WITH w AS (SELECT 1 AS x) INSERT INTO t VALUES ('x')", NULL);
    assert_form("WITH w AS (SELECT x FROM y) INSERT INTO t VALUES ('x')",
                "WITH w AS (SELECT x FROM y) INSERT INTO t VALUES ($1)");
}

static void test_other_constants_keep_the_text(void **state)
{
    (void)state;
    /* A typed literal, a cast, an expression, a nested item. */
    assert_form("INSERT INTO t VALUES (DATE '2024-01-01')", NULL);
    assert_form("INSERT INTO t VALUES ('5'::int)", NULL);
    assert_form("INSERT INTO t VALUES (1 + 2)", NULL);
    assert_form("INSERT INTO t VALUES (x - 2)", NULL);
    assert_form("INSERT INTO t VALUES (+2)", NULL);
    assert_form("INSERT INTO t VALUES (-'5')", NULL);
    assert_form("INSERT INTO t VALUES ((1))", NULL);
    assert_form("INSERT INTO t VALUES (f(1))", NULL);
    assert_form("INSERT INTO t VALUES (ARRAY[1])", NULL);
    assert_form("INSERT INTO t VALUES ('a' 'b')", NULL);
    /* Constants outside the VALUES lists. */
    assert_form("INSERT INTO t SELECT 1", NULL);
    assert_form("INSERT INTO t VALUES (1) ON CONFLICT (k) WHERE k > 0 DO NOTHING", NULL);
    assert_form("INSERT INTO t VALUES (1) RETURNING 2", NULL);
    /* Not VALUES lists at all, or not whole. */
    assert_form("INSERT INTO t VALUES 1", NULL);
    assert_form("INSERT INTO t VALUES (1", NULL);
    /* A parameter of the text's own, anywhere. */
    assert_form("INSERT INTO t VALUES (1, $1)", NULL);
    assert_form("INSERT INTO t (a) SELECT $1 FROM x; ", NULL);
    /* No constants: nothing to gain. */
    assert_form("INSERT INTO t VALUES (DEFAULT)", NULL);
}

/* Whether a byte beyond ASCII is left in the statement's text (where a
 * session whose text the server converts cannot use it). */
static void test_ascii(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        bool ascii;
    } texts[] = {
        { "INSERT INTO t VALUES (1, 'caf\xc3\xa9')", true },
        { "INSERT INTO t (\"cl\xc3\xa9\") VALUES (1)", false },
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        struct params p = { 0 };
        struct params_stmt *ps = form(texts[i].text, &p);
        if (!ps)
            fail_msg("%s: not parameterised", texts[i].text);
        assert_int_equal(ps->ascii, texts[i].ascii);
        free(ps);
        params_free(&p);
    }
}

/* The i-th int32 after the int16 count in buf. */
static uint32_t type_at(const uint8_t *buf, size_t i)
{
    return pg_get_u32(buf + 2 + 4 * i);
}

static void test_types_and_values(void **state)
{
    (void)state;
    const char *text = "INSERT INTO t VALUES (7, 2147483648, 9223372036854775808, 1.50, "
                       "'it''s', '', 0002147483647)";
    struct params p = { 0 };

    struct params_stmt *ps = form(text, &p);
    assert_non_null(ps);
    assert_string_equal(ps->text, "INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7)");
    free(ps);
    assert_int_equal(p.types_len, 2 + 7 * 4);
    assert_int_equal(p.types[0] * 256 + p.types[1], 7);
    assert_int_equal(type_at(p.types, 0), 23);   /* int4 */
    assert_int_equal(type_at(p.types, 1), 20);   /* past int4: int8 */
    assert_int_equal(type_at(p.types, 2), 1700); /* past int8: numeric */
    assert_int_equal(type_at(p.types, 3), 1700); /* a fraction */
    assert_int_equal(type_at(p.types, 4), 0);    /* a string: the server infers */
    assert_int_equal(type_at(p.types, 5), 0);
    assert_int_equal(type_at(p.types, 6), 23);   /* leading zeros still int4 */

    static const char *const values[] = { "7",  "2147483648", "9223372036854775808", "1.50",
                                          "it's", "",          "0002147483647" };
    const uint8_t *v = p.values;
    assert_int_equal(v[0] * 256 + v[1], 7);
    v += 2;
    for (int i = 0; i < 7; i++) {
        uint32_t n = pg_get_u32(v);
        assert_int_equal(n, strlen(values[i]));
        assert_memory_equal(v + 4, values[i], n);
        v += 4 + n;
    }
    assert_int_equal((size_t)(v - p.values), p.values_len);

    /* The buffers are reused by the next text. */
    ps = form("INSERT INTO t VALUES ('x')", &p);
    assert_non_null(ps);
    assert_string_equal(ps->text, "INSERT INTO t VALUES ($1)");
    free(ps);
    assert_int_equal(p.values_len, 2 + 4 + 1);
    params_free(&p);
}

static void test_parameter_limit(void **state)
{
    (void)state;
    size_t cap = 16 + 3 * (PARAMS_MAX + 1) + 1;
    char *text = malloc(cap);
    assert_non_null(text);
    strcpy(text, "INSERT INTO t VALUES (1");
    for (int i = 1; i < PARAMS_MAX; i++)
        strcat(text, ",1");
    strcat(text, ")");

    struct params p = { 0 };
    struct params_stmt *ps = form(text, &p);
    assert_non_null(ps);
    assert_non_null(strstr(ps->text, "$256)"));
    free(ps);
    text[strlen(text) - 1] = '\0';
    strcat(text, ",1)");
    assert_null(form(text, &p));
    params_free(&p);
    free(text);
}

/* Positions in the statement map back onto the text: before, on and
 * after the parameters, in characters or bytes. */
static void test_positions(void **state)
{
    (void)state;
    /* "é" is one character in two bytes. */
    const char *text = "INSERT INTO t VALUES ('\xc3\xa9t\xc3\xa9', 12345, nosuch)";
    /* The statement: INSERT INTO t VALUES ($1, $2, nosuch) */
    size_t len = strlen(text);
    assert_int_equal(params_position(text, len, 1, true), 1);
    assert_int_equal(params_position(text, len, 22, true), 22); /* the '(' */
    assert_int_equal(params_position(text, len, 23, true), 23); /* "$1": the string */
    assert_int_equal(params_position(text, len, 24, true), 23);
    assert_int_equal(params_position(text, len, 25, true), 28); /* the ',' after it */
    assert_int_equal(params_position(text, len, 27, true), 30); /* "$2" */
    assert_int_equal(params_position(text, len, 31, true), 37); /* "nosuch" */
    assert_int_equal(params_position(text, len, 31, false), 39); /* in bytes */
    /* No shape: as it is. */
    assert_int_equal(params_position("SELECT x", 8, 8, true), 8);
}

/* Where the server, running the text, points at the value parameter $n
 * binds: its constant's first character (a string's quote). */
static void test_const_positions(void **state)
{
    (void)state;
    const char *text = "INSERT INTO t VALUES ('\xc3\xa9t\xc3\xa9', -12345, 'x')";
    size_t len = strlen(text);
    assert_int_equal(params_const_position(text, len, 1, true), 23);
    assert_int_equal(params_const_position(text, len, 2, true), 31); /* the digits */
    assert_int_equal(params_const_position(text, len, 2, false), 33); /* in bytes */
    assert_int_equal(params_const_position(text, len, 3, true), 38);
    assert_int_equal(params_const_position(text, len, 4, true), 0);
    assert_int_equal(params_const_position(text, len, 0, true), 0);
    assert_int_equal(params_const_position("SELECT x", 8, 1, true), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_values_items_become_parameters),
        cmocka_unit_test(test_other_constants_keep_the_text),
        cmocka_unit_test(test_ascii),
        cmocka_unit_test(test_types_and_values),
        cmocka_unit_test(test_parameter_limit),
        cmocka_unit_test(test_positions),
        cmocka_unit_test(test_const_positions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
