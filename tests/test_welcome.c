/*
 * Unit tests for welcome: what a kept server's next client hears in place
 * of a login. It must be what a fresh login on that server would say now:
 * every reported setting with its latest value (a SET during the session,
 * then the reset's report of the old value), the server's real
 * BackendKeyData (cancel requests go to the server with it), the server's
 * NegotiateProtocolVersion when it sent one, the warnings of the login,
 * and ReadyForQuery idle. Anything noted wrongly makes it unusable, never
 * half right.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "pgproto.h"
#include "welcome.h"

/* A ParameterStatus body: name NUL value NUL. */
static size_t param_body(uint8_t *buf, const char *name, const char *value)
{
    size_t n = strlen(name) + 1, v = strlen(value) + 1;
    memcpy(buf, name, n);
    memcpy(buf + n, value, v);
    return n + v;
}

static void note_param(struct welcome *w, const char *name, const char *value)
{
    uint8_t body[256];
    welcome_note(w, 'S', body, param_body(body, name, value));
}

static const uint8_t key_body[8] = { 0, 0, 0x30, 0x39, 0xde, 0xad, 0xbe, 0xef };

/* Reads the messages of buf in order, checking each type against types. */
static void expect_types(const uint8_t *buf, size_t len, const char *types,
                         struct pg_msg *msgs)
{
    size_t at = 0, used, i = 0;
    struct pg_msg m;

    while (at < len) {
        assert_int_equal(pg_msg_next(buf + at, len - at, &m, &used), PG_NEXT_OK);
        assert_true(i < strlen(types));
        assert_int_equal(m.type, types[i]);
        msgs[i++] = m;
        at += used;
    }
    assert_int_equal(i, strlen(types));
}

static void test_replays_latest_values(void **state)
{
    (void)state;
    struct welcome w;
    welcome_init(&w);
    note_param(&w, "application_name", "pgbench");
    note_param(&w, "client_encoding", "UTF8");
    welcome_note(&w, 'K', key_body, sizeof(key_body));
    /* Messages it does not keep are ignored. */
    welcome_note(&w, 'A', (const uint8_t *)"x", 1);
    assert_true(welcome_complete(&w));
    /* A SET, then the reset reporting the login's value back. */
    note_param(&w, "application_name", "changed");
    note_param(&w, "TimeZone", "UTC");
    note_param(&w, "application_name", "pgbench");
    assert_string_equal(welcome_value(&w, "application_name"), "pgbench");
    assert_string_equal(welcome_value(&w, "TimeZone"), "UTC");
    assert_null(welcome_value(&w, "DateStyle"));

    uint8_t buf[512];
    size_t len = welcome_build(&w, NULL, buf, sizeof(buf));
    assert_true(len <= sizeof(buf));
    struct pg_msg m[6];
    expect_types(buf, len, "RSSSKZ", m);
    assert_int_equal(m[0].body_len, 4);
    assert_int_equal(pg_get_u32(m[0].body), PG_AUTH_OK);
    const char *name, *value;
    assert_true(pg_param_status(m[1].body, m[1].body_len, &name, &value));
    assert_string_equal(name, "application_name");
    assert_string_equal(value, "pgbench");
    assert_true(pg_param_status(m[2].body, m[2].body_len, &name, &value));
    assert_string_equal(name, "client_encoding");
    assert_true(pg_param_status(m[3].body, m[3].body_len, &name, &value));
    assert_string_equal(name, "TimeZone");
    assert_string_equal(value, "UTC");
    assert_int_equal(m[4].body_len, sizeof(key_body));
    assert_memory_equal(m[4].body, key_body, sizeof(key_body));
    assert_int_equal(pg_ready_status(m[5].body, m[5].body_len), 'I');

    /* Too small a buffer: the size it needs, nothing written. */
    uint8_t small[16];
    memset(small, 0xaa, sizeof(small));
    assert_int_equal(welcome_build(&w, NULL, small, sizeof(small)), len);
    assert_int_equal(small[0], 0xaa);
    welcome_free(&w);
}

static void test_incomplete_or_broken(void **state)
{
    (void)state;
    struct welcome w;

    /* No BackendKeyData: no login was seen whole. */
    welcome_init(&w);
    note_param(&w, "server_version", "15.18");
    assert_false(welcome_complete(&w));
    welcome_free(&w);

    /* A malformed ParameterStatus: the values may be wrong. */
    welcome_init(&w);
    welcome_note(&w, 'K', key_body, sizeof(key_body));
    welcome_note(&w, 'S', (const uint8_t *)"no-terminator", 13);
    assert_false(welcome_complete(&w));
    welcome_free(&w);

    /* A key of protocol 3.2's sizes is kept whole; outside them, broken. */
    uint8_t long_key[4 + 32];
    memset(long_key, 7, sizeof(long_key));
    welcome_init(&w);
    welcome_note(&w, 'K', long_key, sizeof(long_key));
    assert_true(welcome_complete(&w));
    uint8_t buf[128];
    struct pg_msg m[3];
    size_t len = welcome_build(&w, NULL, buf, sizeof(buf));
    expect_types(buf, len, "RKZ", m);
    assert_int_equal(m[1].body_len, sizeof(long_key));
    /* Another key in its place, as the client's own. */
    uint8_t other[sizeof(long_key)];
    memset(other, 9, sizeof(other));
    assert_int_equal(welcome_build(&w, other, buf, sizeof(buf)), len);
    expect_types(buf, len, "RKZ", m);
    assert_memory_equal(m[1].body, other, sizeof(other));
    welcome_note(&w, 'K', long_key, 6);
    assert_false(welcome_complete(&w));
    welcome_free(&w);
}

/* A StartupMessage that asked for protocol 3.2 and an option the server
 * does not know: its answer comes first, as the server sent it. Warnings
 * of the login come after AuthenticationOk. */
static void test_replays_negotiation_and_notices(void **state)
{
    (void)state;
    static const uint8_t negotiation[] = { 0, 3, 0, 0, 0, 0, 0, 1, '_', 'p', 'q', '_', '.',
                                           'x', 0 };
    struct welcome w;
    welcome_init(&w);
    welcome_note(&w, 'v', negotiation, sizeof(negotiation));
    note_param(&w, "server_version", "15.18");
    welcome_note(&w, 'K', key_body, sizeof(key_body));
    assert_true(welcome_complete(&w));

    uint8_t buf[256];
    struct pg_msg m[5];
    size_t len = welcome_build(&w, NULL, buf, sizeof(buf));
    expect_types(buf, len, "vRSKZ", m);
    assert_int_equal(m[0].body_len, sizeof(negotiation));
    assert_memory_equal(m[0].body, negotiation, sizeof(negotiation));
    welcome_free(&w);

    /* The login's warnings, in their order, right after AuthenticationOk. */
    static const uint8_t first[] = "SWARNING\0C01000\0Mfirst\0";
    static const uint8_t second[] = "SWARNING\0C01000\0Msecond\0";
    welcome_init(&w);
    welcome_note(&w, 'N', first, sizeof(first));
    welcome_note(&w, 'N', second, sizeof(second));
    note_param(&w, "server_version", "15.18");
    welcome_note(&w, 'K', key_body, sizeof(key_body));
    struct pg_msg n[6];
    len = welcome_build(&w, NULL, buf, sizeof(buf));
    assert_true(len <= sizeof(buf));
    expect_types(buf, len, "RNNSKZ", n);
    assert_int_equal(n[1].body_len, sizeof(first));
    assert_memory_equal(n[1].body, first, sizeof(first));
    assert_memory_equal(n[2].body, second, sizeof(second));
    welcome_free(&w);

    /* Shorter than its two counts: the client would hear nonsense. */
    welcome_init(&w);
    welcome_note(&w, 'v', negotiation, 7);
    welcome_note(&w, 'K', key_body, sizeof(key_body));
    assert_false(welcome_complete(&w));
    welcome_free(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replays_latest_values),
        cmocka_unit_test(test_incomplete_or_broken),
        cmocka_unit_test(test_replays_negotiation_and_notices),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
