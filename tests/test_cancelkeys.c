/*
 * Unit tests for cancelkeys: the keys given to clients of servers the proxy
 * may hand on. A given key must keep the backend's process ID, differ from
 * the real secret, translate to the real key while it is held and to
 * nothing once forgotten, and two clients of one backend (one after the
 * other) must never hold the same key.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "cancelkeys.h"

static const uint8_t real[8] = { 0, 0, 0x30, 0x39, 0xde, 0xad, 0xbe, 0xef };

/* A CancelRequest with key sent (len bytes) is translated (or not, found)
 * and reaches the server with key reaches. */
static void cancel_reaches(struct cancel_keys *m, const uint8_t *sent, size_t len, bool found,
                           const uint8_t *reaches)
{
    uint8_t request[PG_BACKEND_KEY_MAX];

    memcpy(request, sent, len);
    assert_int_equal(cancel_keys_translate(m, request, len), found);
    assert_memory_equal(request, reaches, len);
}

static void test_give_translate_forget(void **state)
{
    (void)state;
    struct cancel_keys *m = cancel_keys_new();
    uint8_t given[8], again[8];

    assert_non_null(m);
    assert_true(cancel_keys_add(m, real, sizeof(real), given));
    assert_memory_equal(given, real, 4);
    assert_memory_not_equal(given + 4, real + 4, 4);
    assert_int_equal(cancel_keys_count(m), 1);

    cancel_reaches(m, given, sizeof(given), true, real);
    /* The real key is no key the proxy gave: it passes unchanged. */
    cancel_reaches(m, real, sizeof(real), false, real);

    /* The next client of the same backend gets another key; the first
     * one's, once forgotten, translates to nothing. */
    cancel_keys_remove(m, given, sizeof(given));
    assert_true(cancel_keys_add(m, real, sizeof(real), again));
    assert_memory_not_equal(again, given, sizeof(given));
    cancel_reaches(m, given, sizeof(given), false, given);
    cancel_reaches(m, again, sizeof(again), true, real);
    /* Forgetting what is not there changes nothing. */
    cancel_keys_remove(m, given, sizeof(given));
    assert_int_equal(cancel_keys_count(m), 1);
    cancel_keys_free(m);
}

static void test_key_lengths(void **state)
{
    (void)state;
    struct cancel_keys *m = cancel_keys_new();
    uint8_t long_real[PG_BACKEND_KEY_MAX + 1], given[PG_BACKEND_KEY_MAX];

    memset(long_real, 0x5a, sizeof(long_real));
    /* Protocol 3.2's longest key is kept whole. */
    assert_true(cancel_keys_add(m, long_real, PG_BACKEND_KEY_MAX, given));
    cancel_reaches(m, given, sizeof(given), true, long_real);
    /* The same bytes at another length are another key. */
    cancel_reaches(m, given, 8, false, given);
    cancel_reaches(m, long_real, 8, false, long_real);
    /* Out of bounds: nothing is given. */
    assert_false(cancel_keys_add(m, real, 7, given));
    assert_false(cancel_keys_add(m, long_real, sizeof(long_real), given));
    assert_int_equal(cancel_keys_count(m), 1);
    cancel_keys_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_give_translate_forget),
        cmocka_unit_test(test_key_lengths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
