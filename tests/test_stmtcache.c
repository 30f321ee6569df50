/*
 * Unit tests for stmtcache: the server-side statements the proxy prepares
 * for rewritten INSERTs parsed as the unnamed statement.
 *
 * What must hold: an entry is usable only after the server confirmed the
 * Parse that created it; a refused or skipped Parse, or an answer about an
 * older name, never makes it usable; a name is never used twice, so one
 * the server may still hold is never created again; the cache never grows
 * past its bound, and the same text with other parameter types is not the
 * same statement.
 *
 * Every cache is freed at the end of its test: under the ASan build,
 * LeakSanitizer reports anything stmtcache_free() leaves behind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "stmtcache.h"

static const char INSERT[] = "INSERT INTO t (k) VALUES ($1) ON CONFLICT (k) DO NOTHING";
/* A Parse's parameter part: one parameter, type 20 (bigint). */
static const uint8_t ONE_BIGINT[] = { 0, 1, 0, 0, 0, 20 };
static const uint8_t NO_TYPES[] = { 0, 0 };

static struct stmt_entry *get(struct stmtcache *sc, const char *text, const uint8_t *types,
                              size_t types_len)
{
    return stmtcache_get(sc, text, strlen(text), types, types_len);
}

static void test_created_then_ready(void **state)
{
    (void)state;
    struct stmtcache sc;
    size_t len;

    stmtcache_init(&sc, 10);
    struct stmt_entry *e = get(&sc, INSERT, ONE_BIGINT, sizeof(ONE_BIGINT));
    assert_non_null(e);
    assert_int_equal(stmtcache_state(e), STMT_ABSENT);
    assert_ptr_equal(get(&sc, INSERT, ONE_BIGINT, sizeof(ONE_BIGINT)), e);

    uint64_t n = stmtcache_create(&sc, e);
    assert_string_equal(stmtcache_name(e), "idemproxy_s1");
    assert_int_equal(stmtcache_state(e), STMT_PENDING);
    stmtcache_created(e, n, true);
    assert_int_equal(stmtcache_state(e), STMT_READY);
    /* The note of the answered Parse leaves the queue afterwards: that
     * changes nothing any more. */
    stmtcache_created(e, n, false);
    assert_int_equal(stmtcache_state(e), STMT_READY);

    assert_string_equal(stmtcache_text(e, &len), INSERT);
    assert_int_equal(len, strlen(INSERT));
    assert_memory_equal(stmtcache_types(e, &len), ONE_BIGINT, sizeof(ONE_BIGINT));
    assert_int_equal(len, sizeof(ONE_BIGINT));
    stmtcache_free(&sc);
}

static void test_refused_or_skipped_is_absent(void **state)
{
    (void)state;
    struct stmtcache sc;

    stmtcache_init(&sc, 10);
    struct stmt_entry *e = get(&sc, INSERT, NO_TYPES, sizeof(NO_TYPES));
    uint64_t n = stmtcache_create(&sc, e);
    stmtcache_created(e, n, false);
    assert_int_equal(stmtcache_state(e), STMT_ABSENT);

    /* Created again, under a new name. */
    uint64_t m = stmtcache_create(&sc, e);
    assert_true(m != n);
    assert_string_equal(stmtcache_name(e), "idemproxy_s2");
    /* A late answer about the first name does not confirm the second. */
    stmtcache_created(e, n, true);
    assert_int_equal(stmtcache_state(e), STMT_PENDING);
    stmtcache_created(e, m, true);
    assert_int_equal(stmtcache_state(e), STMT_READY);
    stmtcache_free(&sc);
}

static void test_forget_all_renames(void **state)
{
    (void)state;
    struct stmtcache sc;

    stmtcache_init(&sc, 10);
    struct stmt_entry *a = get(&sc, INSERT, NO_TYPES, sizeof(NO_TYPES));
    struct stmt_entry *b = get(&sc, "INSERT INTO u VALUES ($1) ON CONFLICT DO NOTHING", NO_TYPES,
                               sizeof(NO_TYPES));
    assert_false(stmtcache_holds_any(&sc));
    uint64_t pending = stmtcache_create(&sc, b);
    assert_true(stmtcache_holds_any(&sc));
    stmtcache_created(a, stmtcache_create(&sc, a), true);

    stmtcache_forget_all(&sc);
    assert_false(stmtcache_holds_any(&sc));
    assert_int_equal(stmtcache_state(a), STMT_ABSENT);
    assert_int_equal(stmtcache_state(b), STMT_ABSENT);
    /* ParseComplete of a Parse sent before the DEALLOCATE: the statement
     * is gone all the same. */
    stmtcache_created(b, pending, true);
    assert_int_equal(stmtcache_state(b), STMT_ABSENT);

    stmtcache_create(&sc, a);
    assert_string_equal(stmtcache_name(a), "idemproxy_s3");
    stmtcache_free(&sc);
}

static void test_bounds_and_types(void **state)
{
    (void)state;
    struct stmtcache sc;

    stmtcache_init(&sc, 2);
    assert_non_null(get(&sc, "INSERT 1", NO_TYPES, sizeof(NO_TYPES)));
    assert_non_null(get(&sc, "INSERT 2", NO_TYPES, sizeof(NO_TYPES)));
    assert_null(get(&sc, "INSERT 3", NO_TYPES, sizeof(NO_TYPES)));
    /* Those it has, it still finds. */
    assert_non_null(get(&sc, "INSERT 1", NO_TYPES, sizeof(NO_TYPES)));
    /* The same text with declared types is another statement. */
    assert_null(get(&sc, "INSERT 1", ONE_BIGINT, sizeof(ONE_BIGINT)));
    stmtcache_free(&sc);

    stmtcache_init(&sc, 0);
    assert_null(get(&sc, INSERT, NO_TYPES, sizeof(NO_TYPES)));
    stmtcache_free(&sc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_created_then_ready),
        cmocka_unit_test(test_refused_or_skipped_is_absent),
        cmocka_unit_test(test_forget_all_renames),
        cmocka_unit_test(test_bounds_and_types),
    };
    return cmocka_run_group_tests_name("stmtcache", tests, NULL, NULL);
}
