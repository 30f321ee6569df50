/*
 * Unit tests for pgproto: message framing, startup-phase packets, and the
 * ErrorResponse / ReadyForQuery helpers, driven with hand-built bytes.
 *
 * Packets under test are kept in heap blocks of exactly their own size, so
 * that valgrind or AddressSanitizer flags any read past the end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pgproto.h"

/* ---- a small byte builder ---------------------------------------------- */

struct pkt {
    uint8_t *data;
    size_t len, cap;
};

static void put(struct pkt *p, const void *bytes, size_t n)
{
    if (p->len + n > p->cap) {
        size_t cap = p->cap ? p->cap : 64;
        while (cap < p->len + n)
            cap *= 2;
        p->data = realloc(p->data, cap);
        assert_non_null(p->data);
        p->cap = cap;
    }
    if (n)
        memcpy(p->data + p->len, bytes, n);
    p->len += n;
}

static void put_u8(struct pkt *p, uint8_t v)
{
    put(p, &v, 1);
}

static void put_u32(struct pkt *p, uint32_t v)
{
    uint8_t b[4];
    pg_put_u32(b, v);
    put(p, b, 4);
}

/* A C string with its terminating NUL. */
static void put_str(struct pkt *p, const char *s)
{
    put(p, s, strlen(s) + 1);
}

static void put_fill(struct pkt *p, uint8_t byte, size_t n)
{
    for (size_t i = 0; i < n; i++)
        put_u8(p, byte);
}

/* Shrinks the block to exactly len bytes: reads past it are then caught. */
static const uint8_t *exact(struct pkt *p)
{
    uint8_t *d = malloc(p->len ? p->len : 1);
    assert_non_null(d);
    if (p->len)
        memcpy(d, p->data, p->len);
    free(p->data);
    p->data = d;
    p->cap = p->len;
    return d;
}

static void pkt_free(struct pkt *p)
{
    free(p->data);
    memset(p, 0, sizeof(*p));
}

/* Regular message: type byte and a length patched in by msg_end(). */
static size_t msg_begin(struct pkt *p, char type)
{
    size_t start = p->len;
    put_u8(p, (uint8_t)type);
    put_u32(p, 0);
    return start;
}

static void msg_end(struct pkt *p, size_t start)
{
    pg_put_u32(p->data + start + 1, (uint32_t)(p->len - start - 1));
}

/* Startup-phase packet: length (patched by startup_end()) and a code. */
static void startup_begin(struct pkt *p, uint32_t code)
{
    put_u32(p, 0);
    put_u32(p, code);
}

static void startup_end(struct pkt *p)
{
    pg_put_u32(p->data, (uint32_t)p->len);
}

static void startup_param(struct pkt *p, const char *key, const char *value)
{
    put_str(p, key);
    put_str(p, value);
}

/* A CancelRequest carrying a key of key_len bytes. */
static void cancel_packet(struct pkt *p, uint32_t pid, size_t key_len)
{
    startup_begin(p, PG_CANCEL_REQUEST_CODE);
    put_u32(p, pid);
    for (size_t i = 0; i < key_len; i++)
        put_u8(p, (uint8_t)(i * 7 + 1));
    startup_end(p);
}

/* Parses p as a whole startup packet from an exact-size block. */
static enum pg_startup_kind parse_startup(struct pkt *p, struct pg_startup *st,
                                          const char **why)
{
    memset(st, 0, sizeof(*st));
    *why = NULL;
    return pg_startup_parse(exact(p), p->len, st, why);
}

static void assert_invalid(struct pkt *p)
{
    struct pg_startup st;
    const char *why;
    assert_int_equal(parse_startup(p, &st, &why), PG_STARTUP_INVALID);
    assert_non_null(why);
    assert_true(why[0] != '\0');
}

/* ---- pg_msg_head / pg_msg_next --------------------------------------- */

static void test_head_needs_five_bytes(void **state)
{
    (void)state;
    const uint8_t full[] = { 'Q', 0, 0, 0, 4 };
    /* Also when the partial length already looks bad. */
    const uint8_t bad[] = { 'Q', 0, 0, 0, 0 };
    for (size_t n = 0; n < PG_HEAD_LEN; n++) {
        struct pg_msg_head head;
        struct pg_msg msg;
        size_t used = 99;
        uint8_t *b = malloc(n ? n : 1);
        memcpy(b, full, n);
        assert_int_equal(pg_msg_head(b, n, &head), PG_NEXT_MORE);
        assert_int_equal(pg_msg_next(b, n, &msg, &used), PG_NEXT_MORE);
        assert_int_equal(used, 0);
        memcpy(b, bad, n);
        assert_int_equal(pg_msg_head(b, n, &head), PG_NEXT_MORE);
        free(b);
    }
}

static void test_head_len_below_four_is_bad(void **state)
{
    (void)state;
    for (uint32_t l = 0; l < 4; l++) {
        uint8_t b[16] = { 'Q' };
        struct pg_msg_head head;
        struct pg_msg msg;
        size_t used = 99;
        pg_put_u32(b + 1, l);
        assert_int_equal(pg_msg_head(b, sizeof(b), &head), PG_NEXT_BAD);
        assert_int_equal(pg_msg_head(b, PG_HEAD_LEN, &head), PG_NEXT_BAD);
        assert_int_equal(pg_msg_next(b, sizeof(b), &msg, &used), PG_NEXT_BAD);
        assert_int_equal(used, 0);
    }
}

static void test_head_len_four_is_empty_body(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    msg_end(&p, msg_begin(&p, 'S'));
    const uint8_t *b = exact(&p);
    struct pg_msg_head head;
    struct pg_msg msg;
    size_t used = 99;

    assert_int_equal(p.len, 5);
    assert_int_equal(pg_msg_head(b, p.len, &head), PG_NEXT_OK);
    assert_int_equal(head.type, 'S');
    assert_int_equal(head.len, 4);
    assert_int_equal(pg_msg_next(b, p.len, &msg, &used), PG_NEXT_OK);
    assert_int_equal(msg.type, 'S');
    assert_int_equal(msg.body_len, 0);
    assert_int_equal(used, 5);
    pkt_free(&p);
}

static void test_head_huge_length(void **state)
{
    (void)state;
    const uint32_t lens[] = { 0xFFFFFFFFu, 0x80000000u, 0x7FFFFFFFu, 0xFFFFFFFBu };
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        uint8_t b[64] = { 'd' };
        struct pg_msg_head head;
        struct pg_msg msg;
        size_t used = 99;
        pg_put_u32(b + 1, lens[i]);
        assert_int_equal(pg_msg_head(b, sizeof(b), &head), PG_NEXT_OK);
        assert_int_equal(head.type, 'd');
        assert_int_equal(head.len, lens[i]);
        assert_int_equal(pg_msg_next(b, sizeof(b), &msg, &used), PG_NEXT_MORE);
        assert_int_equal(used, 0);
        /* Head alone: the body length must not wrap around to something small. */
        assert_int_equal(pg_msg_next(b, PG_HEAD_LEN, &msg, &used), PG_NEXT_MORE);
    }
}

static void test_next_partial_body(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    size_t s = msg_begin(&p, 'Q');
    put_str(&p, "SELECT 1");
    msg_end(&p, s);
    exact(&p);

    for (size_t n = 0; n < p.len; n++) {
        uint8_t *b = malloc(n ? n : 1);
        struct pg_msg msg;
        size_t used = 99;
        memcpy(b, p.data, n);
        assert_int_equal(pg_msg_next(b, n, &msg, &used), PG_NEXT_MORE);
        assert_int_equal(used, 0);
        free(b);
    }

    struct pg_msg msg;
    size_t used = 0;
    assert_int_equal(pg_msg_next(p.data, p.len, &msg, &used), PG_NEXT_OK);
    assert_int_equal(used, p.len);
    assert_int_equal(msg.type, 'Q');
    assert_int_equal(msg.body_len, 9);
    assert_ptr_equal(msg.body, p.data + PG_HEAD_LEN);
    assert_memory_equal(msg.body, "SELECT 1", 9);
    pkt_free(&p);
}

static void test_next_two_messages(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    size_t s = msg_begin(&p, 'P');
    put_str(&p, "");
    put_str(&p, "INSERT INTO t VALUES ($1)");
    put_u8(&p, 0);
    put_u8(&p, 0);
    msg_end(&p, s);
    size_t first_len = p.len;
    msg_end(&p, msg_begin(&p, 'S'));
    const uint8_t *b = exact(&p);

    struct pg_msg msg;
    size_t used;
    assert_int_equal(pg_msg_next(b, p.len, &msg, &used), PG_NEXT_OK);
    assert_int_equal(msg.type, 'P');
    assert_int_equal(used, first_len);
    assert_int_equal(msg.body_len, first_len - PG_HEAD_LEN);
    assert_ptr_equal(msg.body, b + PG_HEAD_LEN);

    assert_int_equal(pg_msg_next(b + used, p.len - used, &msg, &used), PG_NEXT_OK);
    assert_int_equal(msg.type, 'S');
    assert_int_equal(msg.body_len, 0);
    assert_int_equal(used, 5);
    assert_int_equal(first_len + used, p.len);
    pkt_free(&p);
}

/* A good message followed by a corrupt head: the first is still whole. */
static void test_next_good_then_bad(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    msg_end(&p, msg_begin(&p, 'H'));
    put_u8(&p, 'Q');
    put_u32(&p, 2);
    const uint8_t *b = exact(&p);
    struct pg_msg msg;
    size_t used;

    assert_int_equal(pg_msg_next(b, p.len, &msg, &used), PG_NEXT_OK);
    assert_int_equal(msg.type, 'H');
    assert_int_equal(used, 5);
    assert_int_equal(pg_msg_next(b + used, p.len - used, &msg, &used), PG_NEXT_BAD);
    assert_int_equal(used, 0);
    pkt_free(&p);
}

/* ---- startup-phase packets --------------------------------------------- */

static void test_startup_len_ok(void **state)
{
    (void)state;
    assert_false(pg_startup_len_ok(0));
    assert_false(pg_startup_len_ok(4));
    assert_false(pg_startup_len_ok(7));
    assert_true(pg_startup_len_ok(8));
    assert_true(pg_startup_len_ok(9));
    assert_true(pg_startup_len_ok(16));
    assert_true(pg_startup_len_ok(PG_STARTUP_MAX_LEN));
    assert_false(pg_startup_len_ok(PG_STARTUP_MAX_LEN + 1));
    assert_false(pg_startup_len_ok(0x7FFFFFFFu));
    assert_false(pg_startup_len_ok(0x80000000u));
    assert_false(pg_startup_len_ok(0xFFFFFFFFu));
}

static void test_startup_ssl_request(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    struct pg_startup st;
    const char *why;
    startup_begin(&p, PG_SSL_REQUEST_CODE);
    startup_end(&p);
    assert_int_equal(p.len, 8);
    assert_int_equal(pg_get_u32(p.data + 4), 80877103u);
    assert_int_equal(parse_startup(&p, &st, &why), PG_STARTUP_SSL_REQUEST);
    assert_int_equal(st.kind, PG_STARTUP_SSL_REQUEST);
    pkt_free(&p);
}

static void test_startup_gssenc_request(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    struct pg_startup st;
    const char *why;
    startup_begin(&p, PG_GSSENC_REQUEST_CODE);
    startup_end(&p);
    assert_int_equal(pg_get_u32(p.data + 4), 80877104u);
    assert_int_equal(parse_startup(&p, &st, &why), PG_STARTUP_GSSENC_REQUEST);
    assert_int_equal(st.kind, PG_STARTUP_GSSENC_REQUEST);
    pkt_free(&p);
}

static void test_startup_cancel_classic(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    struct pg_startup st;
    const char *why;
    cancel_packet(&p, 0x01020304u, 4);
    assert_int_equal(p.len, 16);
    assert_int_equal(pg_get_u32(p.data + 4), 80877102u);
    assert_int_equal(parse_startup(&p, &st, &why), PG_STARTUP_CANCEL);
    assert_int_equal(st.kind, PG_STARTUP_CANCEL);
    assert_int_equal(st.cancel_pid, 0x01020304u);
    assert_int_equal(st.cancel_key_len, 4);
    pkt_free(&p);
}

/* Protocol 3.2 lets the server hand out longer keys, up to 256 bytes. */
static void test_startup_cancel_long_keys(void **state)
{
    (void)state;
    const size_t lens[] = { 32, 100, PG_CANCEL_KEY_MAX };
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        struct pkt p = { 0 };
        struct pg_startup st;
        const char *why;
        cancel_packet(&p, 4242, lens[i]);
        assert_int_equal(p.len, 12 + lens[i]);
        assert_int_equal(parse_startup(&p, &st, &why), PG_STARTUP_CANCEL);
        assert_int_equal(st.cancel_pid, 4242);
        assert_int_equal(st.cancel_key_len, lens[i]);
        pkt_free(&p);
    }
}

static void test_startup_cancel_bad_keys(void **state)
{
    (void)state;
    const size_t lens[] = { 0, 3, PG_CANCEL_KEY_MAX + 1, 1000 };
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        struct pkt p = { 0 };
        cancel_packet(&p, 4242, lens[i]);
        assert_invalid(&p);
        pkt_free(&p);
    }
    /* Too short to even hold the process ID. */
    struct pkt p = { 0 };
    startup_begin(&p, PG_CANCEL_REQUEST_CODE);
    put_u8(&p, 1);
    put_u8(&p, 2);
    startup_end(&p);
    assert_int_equal(p.len, 10);
    assert_invalid(&p);
    pkt_free(&p);
}

static void test_startup_message_v30(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    struct pg_startup st;
    const char *why;
    startup_begin(&p, PG_PROTOCOL(3, 0));
    startup_param(&p, "user", "alice");
    startup_param(&p, "database", "shop");
    startup_param(&p, "application_name", "psql");
    startup_param(&p, "client_encoding", "UTF8");
    startup_param(&p, "options", "-c statement_timeout=5s");
    put_u8(&p, 0);
    startup_end(&p);

    assert_int_equal(parse_startup(&p, &st, &why), PG_STARTUP_MESSAGE);
    assert_int_equal(st.kind, PG_STARTUP_MESSAGE);
    assert_int_equal(st.protocol, PG_PROTOCOL(3, 0));
    assert_int_equal(st.protocol, 196608);
    assert_string_equal(st.user, "alice");
    assert_string_equal(st.database, "shop");
    assert_string_equal(st.application_name, "psql");
    assert_false(st.replication);
    /* The strings point into the packet. */
    assert_true((const uint8_t *)st.user > p.data && (const uint8_t *)st.user < p.data + p.len);
    assert_true((const uint8_t *)st.database > p.data &&
                (const uint8_t *)st.database < p.data + p.len);
    pkt_free(&p);
}

static void test_startup_message_replication(void **state)
{
    (void)state;
    const char *values[] = { "database", "true" };
    for (size_t i = 0; i < 2; i++) {
        struct pkt p = { 0 };
        struct pg_startup st;
        const char *why;
        startup_begin(&p, PG_PROTOCOL(3, 0));
        startup_param(&p, "user", "repl");
        startup_param(&p, "replication", values[i]);
        put_u8(&p, 0);
        startup_end(&p);
        assert_int_equal(parse_startup(&p, &st, &why), PG_STARTUP_MESSAGE);
        assert_true(st.replication);
        assert_string_equal(st.user, "repl");
        assert_null(st.database);
        assert_null(st.application_name);
        pkt_free(&p);
    }
}

static void test_startup_message_v32(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    struct pg_startup st;
    const char *why;
    startup_begin(&p, PG_PROTOCOL(3, 2));
    startup_param(&p, "user", "bob");
    startup_param(&p, "_pq_.some_extension", "on");
    put_u8(&p, 0);
    startup_end(&p);
    assert_int_equal(parse_startup(&p, &st, &why), PG_STARTUP_MESSAGE);
    assert_int_equal(st.protocol, PG_PROTOCOL(3, 2));
    assert_string_equal(st.user, "bob");
    pkt_free(&p);
}

/* A StartupMessage of version with the options (NULL-ended names) and a
 * user, in p; the caller frees it. */
static void startup_with(struct pkt *p, uint32_t version, const char *const *options)
{
    startup_begin(p, version);
    startup_param(p, "user", "bob");
    for (; *options; options++)
        startup_param(p, *options, "on");
    startup_param(p, "database", "_pq_.not_an_option");
    put_u8(p, 0);
    startup_end(p);
}

/* What an end speaking 3.0 to 3.2 owes: nothing for 3.0 or 3.2 without
 * options; the version it speaks for 3.3; every _pq_ option, in order. */
static void test_negotiation(void **state)
{
    (void)state;
    static const char *const none[] = { NULL };
    static const char *const two[] = { "_pq_.a", "_pq_.report_parameters", NULL };
    uint8_t buf[128];
    struct pkt p = { 0 };

    startup_with(&p, PG_PROTOCOL(3, 0), none);
    assert_int_equal(pg_build_negotiation(buf, sizeof(buf), p.data, 2), 0);
    pkt_free(&p);
    startup_with(&p, PG_PROTOCOL(3, 2), none);
    assert_int_equal(pg_build_negotiation(buf, sizeof(buf), p.data, 2), 0);
    /* An end that speaks only 3.0 owes 3.2 its answer. */
    size_t len = pg_build_negotiation(buf, sizeof(buf), p.data, 0);
    assert_int_equal(len, 5 + 8);
    assert_memory_equal(buf, "v\0\0\0\x0c\0\3\0\0\0\0\0\0", 13);
    pkt_free(&p);

    startup_with(&p, PG_PROTOCOL(3, 7), two);
    static const uint8_t want[] = "v\0\0\0\x2a\0\3\0\2\0\0\0\2_pq_.a\0_pq_.report_parameters";
    len = pg_build_negotiation(buf, sizeof(buf), p.data, 2);
    assert_int_equal(len, sizeof(want));
    assert_memory_equal(buf, want, sizeof(want));
    struct pg_msg m;
    size_t used;
    assert_int_equal(pg_msg_next(buf, len, &m, &used), PG_NEXT_OK);
    assert_int_equal(used, len);
    /* Too small a buffer: the size, nothing written. */
    memset(buf, 0xaa, sizeof(buf));
    assert_int_equal(pg_build_negotiation(buf, 10, p.data, 2), len);
    assert_int_equal(buf[0], 0xaa);
    pkt_free(&p);
}

/* Absent parameters come back NULL, not as garbage from the caller. */
static void test_startup_message_absent_user(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    struct pg_startup st;
    const char *why = NULL;
    startup_begin(&p, PG_PROTOCOL(3, 0));
    startup_param(&p, "database", "shop");
    put_u8(&p, 0);
    startup_end(&p);
    memset(&st, 0xA5, sizeof(st));
    assert_int_equal(pg_startup_parse(exact(&p), p.len, &st, &why), PG_STARTUP_MESSAGE);
    assert_null(st.user);
    assert_null(st.application_name);
    assert_false(st.replication);
    assert_string_equal(st.database, "shop");
    pkt_free(&p);
}

static void test_startup_bad_versions(void **state)
{
    (void)state;
    const uint32_t codes[] = {
        PG_PROTOCOL(2, 0), PG_PROTOCOL(4, 0), PG_PROTOCOL(1, 0), PG_PROTOCOL(0, 0),
        PG_PROTOCOL(1234, 5681), 0xFFFFFFFFu,
    };
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        struct pkt p = { 0 };
        startup_begin(&p, codes[i]);
        startup_param(&p, "user", "alice");
        put_u8(&p, 0);
        startup_end(&p);
        assert_invalid(&p);
        pkt_free(&p);
    }
}

/* Parameter lists the server rejects as "invalid startup packet layout". */
static void test_startup_bad_layout(void **state)
{
    (void)state;
    struct pkt p = { 0 };

    /* No final terminator. */
    startup_begin(&p, PG_PROTOCOL(3, 0));
    startup_param(&p, "user", "alice");
    startup_end(&p);
    assert_invalid(&p);
    pkt_free(&p);

    /* Nothing at all after the version: not even the terminator. */
    startup_begin(&p, PG_PROTOCOL(3, 0));
    startup_end(&p);
    assert_int_equal(p.len, 8);
    assert_invalid(&p);
    pkt_free(&p);

    /* A key without a value, then the terminator. */
    startup_begin(&p, PG_PROTOCOL(3, 0));
    startup_param(&p, "user", "alice");
    put_str(&p, "database");
    put_u8(&p, 0);
    startup_end(&p);
    assert_invalid(&p);
    pkt_free(&p);

    /* A key without a value at the very end. */
    startup_begin(&p, PG_PROTOCOL(3, 0));
    startup_param(&p, "user", "alice");
    put_str(&p, "database");
    startup_end(&p);
    assert_invalid(&p);
    pkt_free(&p);

    /* A value cut off without its NUL: must not read past the packet. */
    startup_begin(&p, PG_PROTOCOL(3, 0));
    put_str(&p, "user");
    put(&p, "alice", 5);
    startup_end(&p);
    assert_invalid(&p);
    pkt_free(&p);

    /* A key cut off without its NUL. */
    startup_begin(&p, PG_PROTOCOL(3, 0));
    put(&p, "user", 4);
    startup_end(&p);
    assert_invalid(&p);
    pkt_free(&p);

    /* Bytes after the terminator. */
    startup_begin(&p, PG_PROTOCOL(3, 0));
    startup_param(&p, "user", "alice");
    put_u8(&p, 0);
    put_u8(&p, 'x');
    startup_end(&p);
    assert_invalid(&p);
    pkt_free(&p);
}

static void test_startup_bad_lengths(void **state)
{
    (void)state;
    struct pkt p = { 0 };

    /* Fewer than 8 bytes, each with an honest length field. */
    for (size_t n = 0; n < PG_STARTUP_MIN_LEN; n++) {
        uint8_t raw[8] = { 0 };
        uint8_t *b;
        struct pg_startup st;
        const char *why = NULL;
        if (n >= 4)
            pg_put_u32(raw, (uint32_t)n);
        b = malloc(n ? n : 1);
        memcpy(b, raw, n);
        assert_int_equal(pg_startup_parse(b, n, &st, &why), PG_STARTUP_INVALID);
        assert_non_null(why);
        free(b);
    }

    /* The length field claims one byte more than the buffer holds. */
    startup_begin(&p, PG_PROTOCOL(3, 0));
    startup_param(&p, "user", "alice");
    put_u8(&p, 0);
    startup_end(&p);
    pg_put_u32(p.data, (uint32_t)p.len + 1);
    assert_invalid(&p);
    pkt_free(&p);

    /* ... or one byte less. */
    startup_begin(&p, PG_PROTOCOL(3, 0));
    startup_param(&p, "user", "alice");
    put_u8(&p, 0);
    startup_end(&p);
    pg_put_u32(p.data, (uint32_t)p.len - 1);
    assert_invalid(&p);
    pkt_free(&p);

    /* An SSLRequest whose length field says 16. */
    startup_begin(&p, PG_SSL_REQUEST_CODE);
    startup_end(&p);
    pg_put_u32(p.data, 16);
    assert_invalid(&p);
    pkt_free(&p);

    /* A CancelRequest whose length field disagrees with its size. */
    cancel_packet(&p, 1, 4);
    pg_put_u32(p.data, 20);
    assert_invalid(&p);
    pkt_free(&p);
}

/* Exactly the server's limit is fine; one byte more is not. */
static void test_startup_max_length(void **state)
{
    (void)state;
    for (size_t extra = 0; extra < 2; extra++) {
        struct pkt p = { 0 };
        struct pg_startup st;
        const char *why;
        const size_t fixed = 8 + strlen("user") + 1 + strlen("alice") + 1 +
                             strlen("application_name") + 1 + 1 + 1;
        startup_begin(&p, PG_PROTOCOL(3, 0));
        startup_param(&p, "user", "alice");
        put_str(&p, "application_name");
        put_fill(&p, 'a', PG_STARTUP_MAX_LEN - fixed + extra);
        put_u8(&p, 0);
        put_u8(&p, 0);
        startup_end(&p);
        assert_int_equal(p.len, PG_STARTUP_MAX_LEN + extra);
        if (extra) {
            assert_false(pg_startup_len_ok((uint32_t)p.len));
            assert_invalid(&p);
        } else {
            assert_true(pg_startup_len_ok((uint32_t)p.len));
            assert_int_equal(parse_startup(&p, &st, &why), PG_STARTUP_MESSAGE);
            assert_int_equal(strlen(st.application_name), PG_STARTUP_MAX_LEN - fixed);
        }
        pkt_free(&p);
    }
}

/* ---- ErrorResponse / ReadyForQuery ------------------------------------- */

static void put_field(struct pkt *p, char type, const char *value)
{
    put_u8(p, (uint8_t)type);
    put_str(p, value);
}

/* The body of a unique violation as PostgreSQL 15 sends it, with a
 * localized S field to show that V is the one read. */
static void unique_violation_body(struct pkt *p)
{
    put_field(p, 'S', "FEHLER");
    put_field(p, 'V', "ERROR");
    put_field(p, 'C', "23505");
    put_field(p, 'M', "duplicate key value violates unique constraint \"orders_pkey\"");
    put_field(p, 'D', "Key (id)=(1) already exists.");
    put_field(p, 's', "public");
    put_field(p, 't', "orders");
    put_field(p, 'n', "orders_pkey");
    put_field(p, 'F', "nbtinsert.c");
    put_field(p, 'L', "666");
    put_field(p, 'R', "_bt_check_unique");
}

/* Fills every field with a dummy pointer so "absent means NULL" is tested. */
static void dirty_error(struct pg_error *e)
{
    static const char dummy[] = "dummy";
    e->severity = e->code = e->message = dummy;
    e->schema = e->table = e->constraint = e->position = dummy;
}

static void test_error_parse_full(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    struct pg_error e;
    unique_violation_body(&p);
    put_u8(&p, 0);
    const uint8_t *b = exact(&p);
    dirty_error(&e);
    assert_true(pg_error_parse(b, p.len, &e));
    assert_string_equal(e.severity, "ERROR");
    assert_string_equal(e.code, "23505");
    assert_string_equal(e.message, "duplicate key value violates unique constraint \"orders_pkey\"");
    assert_string_equal(e.schema, "public");
    assert_string_equal(e.table, "orders");
    assert_string_equal(e.constraint, "orders_pkey");
    assert_true((const uint8_t *)e.code > b && (const uint8_t *)e.code < b + p.len);
    pkt_free(&p);
}

static void test_error_parse_absent_fields(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    struct pg_error e;
    put_field(&p, 'S', "ERROR");
    put_field(&p, 'V', "ERROR");
    put_field(&p, 'C', "42601");
    put_field(&p, 'M', "syntax error at or near \"SELEC\"");
    put_field(&p, 'P', "1");
    put_u8(&p, 0);
    dirty_error(&e);
    assert_true(pg_error_parse(exact(&p), p.len, &e));
    assert_string_equal(e.code, "42601");
    assert_null(e.schema);
    assert_null(e.table);
    assert_null(e.constraint);
    pkt_free(&p);

    /* Just the terminator: well-formed, and nothing is set. */
    put_u8(&p, 0);
    dirty_error(&e);
    assert_true(pg_error_parse(exact(&p), p.len, &e));
    assert_null(e.severity);
    assert_null(e.code);
    assert_null(e.message);
    assert_null(e.schema);
    assert_null(e.table);
    assert_null(e.constraint);
    pkt_free(&p);
}

static void test_error_parse_malformed(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    struct pg_error e;

    /* Empty body. */
    assert_false(pg_error_parse(exact(&p), 0, &e));
    pkt_free(&p);

    /* Every field, but no final terminator. */
    unique_violation_body(&p);
    assert_false(pg_error_parse(exact(&p), p.len, &e));
    pkt_free(&p);

    /* The last field's string is cut off. */
    put_field(&p, 'V', "ERROR");
    put_u8(&p, 'C');
    put(&p, "235", 3);
    assert_false(pg_error_parse(exact(&p), p.len, &e));
    pkt_free(&p);

    /* A field type with nothing after it. */
    put_field(&p, 'V', "ERROR");
    put_u8(&p, 'M');
    assert_false(pg_error_parse(exact(&p), p.len, &e));
    pkt_free(&p);
}

static void test_ready_status(void **state)
{
    (void)state;
    const uint8_t i = 'I', t = 'T', e = 'E', x = 'X', two[2] = { 'I', 'I' };
    assert_int_equal(pg_ready_status(&i, 1), 'I');
    assert_int_equal(pg_ready_status(&t, 1), 'T');
    assert_int_equal(pg_ready_status(&e, 1), 'E');
    assert_int_equal(pg_ready_status(&i, 0), 0);
    assert_int_equal(pg_ready_status(two, 2), 0);
    assert_int_equal(pg_ready_status(&x, 1), 0);
}

/* Finds a field's value in an ErrorResponse body, or NULL. */
static const char *find_field(const uint8_t *body, size_t len, char type)
{
    size_t i = 0;
    while (i < len && body[i] != 0) {
        char t = (char)body[i++];
        const char *v = (const char *)body + i;
        const uint8_t *nul = memchr(body + i, 0, len - i);
        if (!nul)
            return NULL;
        if (t == type)
            return v;
        i = (size_t)(nul - body) + 1;
    }
    return NULL;
}

#define CANARY 0xCC

static void assert_untouched(const uint8_t *buf, size_t from, size_t to)
{
    for (size_t i = from; i < to; i++)
        assert_int_equal(buf[i], CANARY);
}

static void test_error_build_round_trip(void **state)
{
    (void)state;
    const char *sev = "FATAL", *code = "08P01", *text = "invalid startup packet layout";
    uint8_t buf[512];
    const size_t expect = PG_HEAD_LEN + 2 * (1 + strlen(sev) + 1) + (1 + strlen(code) + 1) +
                          (1 + strlen(text) + 1) + 1;

    memset(buf, CANARY, sizeof(buf));
    size_t need = pg_error_build(buf, sizeof(buf), sev, code, text);
    assert_int_equal(need, expect);
    assert_untouched(buf, need, sizeof(buf));

    struct pg_msg msg;
    size_t used;
    assert_int_equal(pg_msg_next(buf, need, &msg, &used), PG_NEXT_OK);
    assert_int_equal(used, need);
    assert_int_equal(msg.type, 'E');

    struct pg_error e;
    assert_true(pg_error_parse(msg.body, msg.body_len, &e));
    assert_string_equal(e.severity, "FATAL");
    assert_string_equal(e.code, "08P01");
    assert_string_equal(e.message, text);
    assert_null(e.table);
    const char *s = find_field(msg.body, msg.body_len, 'S');
    assert_non_null(s);
    assert_string_equal(s, "FATAL");
}

static void test_error_build_empty_message(void **state)
{
    (void)state;
    uint8_t buf[128];
    size_t need = pg_error_build(buf, sizeof(buf), "ERROR", "XX000", "");
    struct pg_msg msg;
    struct pg_error e;
    size_t used;
    assert_true(need <= sizeof(buf));
    assert_int_equal(pg_msg_next(buf, need, &msg, &used), PG_NEXT_OK);
    assert_int_equal(used, need);
    assert_true(pg_error_parse(msg.body, msg.body_len, &e));
    assert_string_equal(e.message, "");
    assert_string_equal(e.code, "XX000");
}

static void test_error_build_small_buffer(void **state)
{
    (void)state;
    const char *text = "too many connections for role \"alice\"";
    uint8_t buf[256];

    memset(buf, CANARY, sizeof(buf));
    size_t need = pg_error_build(buf, 0, "FATAL", "53300", text);
    assert_true(need > PG_HEAD_LEN + strlen(text));
    assert_true(need < sizeof(buf));
    assert_untouched(buf, 0, sizeof(buf));

    const size_t caps[] = { 1, PG_HEAD_LEN, need / 2, need - 1 };
    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        assert_int_equal(pg_error_build(buf, caps[i], "FATAL", "53300", text), need);
        assert_untouched(buf, 0, sizeof(buf));
    }

    /* Exactly enough: written in full, and not a byte more. */
    assert_int_equal(pg_error_build(buf, need, "FATAL", "53300", text), need);
    assert_int_equal(buf[0], 'E');
    assert_int_equal(pg_get_u32(buf + 1), need - 1);
    assert_int_equal(buf[need - 1], 0);
    assert_untouched(buf, need, sizeof(buf));
}


/* ---- statement texts and ParameterStatus ------------------------------- */

/* A Query body: the text and its NUL. */
static void query_body(struct pkt *p, const char *text)
{
    put_str(p, text);
}

/* A Parse body: statement name, text, and the parameter type OIDs. */
static void parse_body(struct pkt *p, const char *name, const char *text, uint16_t nparams,
                       const uint32_t *oids)
{
    put_str(p, name);
    put_str(p, text);
    put_u8(p, (uint8_t)(nparams >> 8));
    put_u8(p, (uint8_t)nparams);
    for (uint16_t i = 0; i < nparams; i++)
        put_u32(p, oids[i]);
}

/* Runs pg_statement_text on an exact copy; on success checks that the text
 * is where it says, followed by its NUL. */
static bool statement_text(char type, struct pkt *p, const char *want)
{
    size_t at = 12345, len = 67890;
    const uint8_t *b = exact(p);
    bool ok = pg_statement_text(type, b, p->len, &at, &len);
    if (ok) {
        assert_non_null(want);
        assert_true(at + len < p->len);
        assert_int_equal(len, strlen(want));
        assert_memory_equal(b + at, want, len);
        assert_int_equal(b[at + len], 0);
    }
    pkt_free(p);
    return ok;
}

static void test_statement_text_query(void **state)
{
    (void)state;
    struct pkt p = { 0 };

    query_body(&p, "INSERT INTO t VALUES (1)");
    assert_true(statement_text('Q', &p, "INSERT INTO t VALUES (1)"));
    query_body(&p, "");
    assert_true(statement_text('Q', &p, ""));
    /* Several statements and non-ASCII bytes are still one text. */
    query_body(&p, "SELECT 'é'; SELECT 2;");
    assert_true(statement_text('Q', &p, "SELECT 'é'; SELECT 2;"));
}

static void test_statement_text_parse(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    const uint32_t oids[] = { 25, 23, 0 };

    parse_body(&p, "", "SELECT 1", 0, NULL);
    assert_true(statement_text('P', &p, "SELECT 1"));
    parse_body(&p, "s1", "INSERT INTO t VALUES ($1, $2, $3)", 3, oids);
    assert_true(statement_text('P', &p, "INSERT INTO t VALUES ($1, $2, $3)"));
    /* The text's offset follows the name; OIDs may hold NUL bytes. */
    size_t at = 0, len = 0;
    parse_body(&p, "stmt_42", "INSERT INTO t VALUES ($1)", 1, oids + 2);
    const uint8_t *b = exact(&p);
    assert_true(pg_statement_text('P', b, p.len, &at, &len));
    assert_int_equal(at, strlen("stmt_42") + 1);
    assert_int_equal(len, strlen("INSERT INTO t VALUES ($1)"));
    pkt_free(&p);
    parse_body(&p, "", "", 0, NULL);
    assert_true(statement_text('P', &p, ""));
}

static void test_statement_text_malformed(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    const uint32_t oids[] = { 25, 23 };

    /* Query: empty, no NUL, something after the NUL. */
    assert_false(statement_text('Q', &p, NULL));
    put(&p, "SELECT 1", 8);
    assert_false(statement_text('Q', &p, NULL));
    query_body(&p, "SELECT 1");
    put_u8(&p, 0);
    assert_false(statement_text('Q', &p, NULL));
    query_body(&p, "SEL");
    query_body(&p, "ECT 1");
    assert_false(statement_text('Q', &p, NULL));

    /* Parse: empty, name without NUL, text without NUL. */
    assert_false(statement_text('P', &p, NULL));
    put(&p, "s1", 2);
    assert_false(statement_text('P', &p, NULL));
    put_str(&p, "s1");
    put(&p, "SELECT 1", 8);
    assert_false(statement_text('P', &p, NULL));
    /* The parameter count missing, or cut in half. */
    put_str(&p, "s1");
    put_str(&p, "SELECT 1");
    assert_false(statement_text('P', &p, NULL));
    put_str(&p, "s1");
    put_str(&p, "SELECT 1");
    put_u8(&p, 0);
    assert_false(statement_text('P', &p, NULL));
    /* A count that does not match the OIDs that follow. */
    parse_body(&p, "s1", "SELECT $1, $2", 2, oids);
    p.data[p.len - 8 - 1] = 3;
    assert_false(statement_text('P', &p, NULL));
    parse_body(&p, "s1", "SELECT $1, $2", 2, oids);
    p.data[p.len - 8 - 1] = 1;
    assert_false(statement_text('P', &p, NULL));
    parse_body(&p, "s1", "SELECT $1, $2", 2, oids);
    p.len -= 1;
    assert_false(statement_text('P', &p, NULL));
    parse_body(&p, "s1", "SELECT $1, $2", 2, oids);
    put_u8(&p, 0);
    assert_false(statement_text('P', &p, NULL));
    /* 65535 parameters announced, none given. */
    parse_body(&p, "", "SELECT 1", 0, NULL);
    p.data[p.len - 2] = 0xff;
    p.data[p.len - 1] = 0xff;
    assert_false(statement_text('P', &p, NULL));

    /* Other message types carry no statement text. */
    query_body(&p, "SELECT 1");
    assert_false(statement_text('B', &p, NULL));
    query_body(&p, "SELECT 1");
    assert_false(statement_text('E', &p, NULL));
}

static void test_param_status(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    const char *name = NULL, *value = NULL;

    put_str(&p, "client_encoding");
    put_str(&p, "UTF8");
    const uint8_t *b = exact(&p);
    assert_true(pg_param_status(b, p.len, &name, &value));
    assert_string_equal(name, "client_encoding");
    assert_string_equal(value, "UTF8");
    assert_ptr_equal(name, (const char *)b);
    pkt_free(&p);

    put_str(&p, "application_name");
    put_str(&p, "");
    assert_true(pg_param_status(exact(&p), p.len, &name, &value));
    assert_string_equal(name, "application_name");
    assert_string_equal(value, "");
    pkt_free(&p);
}

static void test_param_status_malformed(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    const char *name = "unset", *value = "unset";

    assert_false(pg_param_status(exact(&p), 0, &name, &value));
    pkt_free(&p);
    put(&p, "client_encoding", 15);
    assert_false(pg_param_status(exact(&p), p.len, &name, &value));
    pkt_free(&p);
    put_str(&p, "client_encoding");
    assert_false(pg_param_status(exact(&p), p.len, &name, &value));
    pkt_free(&p);
    put_str(&p, "client_encoding");
    put(&p, "UTF8", 4);
    assert_false(pg_param_status(exact(&p), p.len, &name, &value));
    pkt_free(&p);
    put_str(&p, "client_encoding");
    put_str(&p, "UTF8");
    put_u8(&p, 'x');
    assert_false(pg_param_status(exact(&p), p.len, &name, &value));
    pkt_free(&p);
    put_str(&p, "client_encoding");
    put_str(&p, "UTF8");
    put_u8(&p, 0);
    assert_false(pg_param_status(exact(&p), p.len, &name, &value));
    pkt_free(&p);
    assert_string_equal(name, "unset");
    assert_string_equal(value, "unset");
}

/* ---- error positions ---------------------------------------------------- */

/* A syntax error as PostgreSQL 15 sends it, with position pos; where says
 * where P goes: 0 first, 1 in the middle, 2 last. */
static void syntax_error_body(struct pkt *p, const char *pos, int where)
{
    if (where == 0)
        put_field(p, 'P', pos);
    put_field(p, 'S', "ERROR");
    put_field(p, 'V', "ERROR");
    put_field(p, 'C', "42601");
    put_field(p, 'M', "syntax error at or near \"VALUS\"");
    if (where == 1)
        put_field(p, 'P', pos);
    put_field(p, 'F', "scan.l");
    put_field(p, 'L', "1188");
    put_field(p, 'R', "scanner_yyerror");
    if (where == 2)
        put_field(p, 'P', pos);
    put_u8(p, 0);
}

static void test_error_parse_position(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    struct pg_error e;

    syntax_error_body(&p, "42", 1);
    dirty_error(&e);
    assert_true(pg_error_parse(exact(&p), p.len, &e));
    assert_string_equal(e.position, "42");
    assert_string_equal(e.code, "42601");
    pkt_free(&p);

    /* 'p' is the position in an internal query, not in the client's. */
    put_field(&p, 'S', "ERROR");
    put_field(&p, 'C', "42601");
    put_field(&p, 'p', "7");
    put_field(&p, 'q', "SELECT foo(");
    put_u8(&p, 0);
    dirty_error(&e);
    assert_true(pg_error_parse(exact(&p), p.len, &e));
    assert_null(e.position);
    pkt_free(&p);

    unique_violation_body(&p);
    put_u8(&p, 0);
    dirty_error(&e);
    assert_true(pg_error_parse(exact(&p), p.len, &e));
    assert_null(e.position);
    pkt_free(&p);
}

/* Replaces P in a syntax error (P at where) by value and checks the result
 * byte for byte against the same error built with value in the first place,
 * and through pg_msg_next and pg_error_parse. */
static void check_replace(const char *old, const char *value, int where)
{
    struct pkt in = { 0 }, want = { 0 };
    uint8_t buf[512];

    syntax_error_body(&in, old, where);
    syntax_error_body(&want, value, where);
    const uint8_t *b = exact(&in);
    memset(buf, CANARY, sizeof(buf));
    size_t need = pg_fields_replace(buf, sizeof(buf), 'E', b, in.len, 'P', value);
    assert_int_equal(need, PG_HEAD_LEN + want.len);
    assert_int_equal(need, PG_HEAD_LEN + in.len - strlen(old) + strlen(value));
    assert_untouched(buf, need, sizeof(buf));
    assert_int_equal(buf[0], 'E');
    assert_int_equal(pg_get_u32(buf + 1), 4 + want.len);
    assert_memory_equal(buf + PG_HEAD_LEN, want.data, want.len);

    struct pg_msg msg;
    struct pg_error e;
    size_t used;
    assert_int_equal(pg_msg_next(buf, need, &msg, &used), PG_NEXT_OK);
    assert_int_equal(used, need);
    assert_true(pg_error_parse(msg.body, msg.body_len, &e));
    assert_string_equal(e.position, value);
    assert_string_equal(e.severity, "ERROR");
    assert_string_equal(e.code, "42601");
    assert_string_equal(e.message, "syntax error at or near \"VALUS\"");
    assert_string_equal(find_field(msg.body, msg.body_len, 'R'), "scanner_yyerror");
    pkt_free(&in);
    pkt_free(&want);
}

static void test_fields_replace(void **state)
{
    (void)state;
    for (int where = 0; where < 3; where++) {
        check_replace("42", "12345", where); /* longer */
        check_replace("12345", "7", where);  /* shorter */
        check_replace("42", "42", where);
        check_replace("42", "", where);
    }
}

/* Another type byte, and only the named field changes. */
static void test_fields_replace_notice(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    uint8_t buf[256];

    put_field(&p, 'S', "NOTICE");
    put_field(&p, 'M', "P");
    put_field(&p, 'P', "3");
    put_u8(&p, 0);
    const uint8_t *b = exact(&p);
    size_t need = pg_fields_replace(buf, sizeof(buf), 'N', b, p.len, 'P', "10");
    assert_int_equal(need, PG_HEAD_LEN + p.len + 1);
    assert_int_equal(buf[0], 'N');
    assert_memory_equal(buf + PG_HEAD_LEN, "SNOTICE\0MP\0P10\0\0", need - PG_HEAD_LEN);
    pkt_free(&p);
}

static void test_fields_replace_absent_or_malformed(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    uint8_t buf[512];

    memset(buf, CANARY, sizeof(buf));
    /* No P field. */
    unique_violation_body(&p);
    put_u8(&p, 0);
    assert_int_equal(pg_fields_replace(buf, sizeof(buf), 'E', exact(&p), p.len, 'P', "1"), SIZE_MAX);
    pkt_free(&p);
    /* 'p' is not 'P'. */
    put_field(&p, 'p', "7");
    put_u8(&p, 0);
    assert_int_equal(pg_fields_replace(buf, sizeof(buf), 'E', exact(&p), p.len, 'P', "1"), SIZE_MAX);
    pkt_free(&p);
    /* Empty, and only the terminator. */
    assert_int_equal(pg_fields_replace(buf, sizeof(buf), 'E', exact(&p), 0, 'P', "1"), SIZE_MAX);
    pkt_free(&p);
    put_u8(&p, 0);
    assert_int_equal(pg_fields_replace(buf, sizeof(buf), 'E', exact(&p), p.len, 'P', "1"), SIZE_MAX);
    pkt_free(&p);
    /* A value cut off before its NUL, before and after P. */
    put_field(&p, 'S', "ERROR");
    put_u8(&p, 'M');
    put(&p, "syntax", 6);
    assert_int_equal(pg_fields_replace(buf, sizeof(buf), 'E', exact(&p), p.len, 'P', "1"), SIZE_MAX);
    pkt_free(&p);
    put_field(&p, 'P', "12");
    put_u8(&p, 'M');
    put(&p, "syntax", 6);
    assert_int_equal(pg_fields_replace(buf, sizeof(buf), 'E', exact(&p), p.len, 'P', "1"), SIZE_MAX);
    pkt_free(&p);
    put_field(&p, 'S', "ERROR");
    put_u8(&p, 'P');
    put(&p, "12", 2);
    assert_int_equal(pg_fields_replace(buf, sizeof(buf), 'E', exact(&p), p.len, 'P', "1"), SIZE_MAX);
    pkt_free(&p);
    assert_untouched(buf, 0, sizeof(buf));
}

/* A Bind's error about a value, made into the Query's: the context's
 * last line out, the position in before it; or the whole context out,
 * nothing in; the first field of the type only. */
static void test_fields_splice(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    uint8_t buf[256];

    put_field(&p, 'S', "ERROR");
    put_field(&p, 'M', "invalid input syntax for type json");
    put_field(&p, 'W', "JSON data, line 1: {bad\nunnamed portal parameter $2 = '...'");
    put_field(&p, 'F', "jsonfuncs.c");
    put_u8(&p, 0);
    const uint8_t *b = exact(&p);
    const char *values[] = { "46", "JSON data, line 1: {bad" };
    memset(buf, CANARY, sizeof(buf));
    size_t need = pg_fields_splice(buf, sizeof(buf), 'E', b, p.len, 'W', "PW", values, 2);
    static const char want[] = "SERROR\0Minvalid input syntax for type json\0P46\0"
                               "WJSON data, line 1: {bad\0Fjsonfuncs.c\0";
    assert_int_equal(need, PG_HEAD_LEN + sizeof(want));
    assert_int_equal(pg_get_u32(buf + 1), 4 + sizeof(want));
    assert_memory_equal(buf + PG_HEAD_LEN, want, sizeof(want));
    assert_untouched(buf, need, sizeof(buf));

    need = pg_fields_splice(buf, sizeof(buf), 'E', b, p.len, 'W', "", NULL, 0);
    static const char gone[] = "SERROR\0Minvalid input syntax for type json\0Fjsonfuncs.c\0";
    assert_int_equal(need, PG_HEAD_LEN + sizeof(gone));
    assert_memory_equal(buf + PG_HEAD_LEN, gone, sizeof(gone));
    assert_int_equal(pg_fields_splice(buf, sizeof(buf), 'E', b, p.len, 'P', "P", values, 1),
                     SIZE_MAX);
    pkt_free(&p);

    put_field(&p, 'W', "one");
    put_field(&p, 'W', "two");
    put_u8(&p, 0);
    need = pg_fields_splice(buf, sizeof(buf), 'N', exact(&p), p.len, 'W', "W", values, 1);
    assert_int_equal(buf[0], 'N');
    assert_memory_equal(buf + PG_HEAD_LEN, "W46\0Wtwo\0", need - PG_HEAD_LEN);
    pkt_free(&p);
}

/* The parameter named by a context's last line, and what comes before. */
static void test_context_param(void **state)
{
    (void)state;
    size_t kept = 99;

    assert_int_equal(pg_context_param("unnamed portal parameter $2 = '...'", &kept), 2);
    assert_int_equal(kept, 0);
    assert_int_equal(pg_context_param("JSON data, line 1: {bad\nunnamed portal parameter $12",
                                      &kept), 12);
    assert_int_equal(kept, strlen("JSON data, line 1: {bad"));
    /* In another language, and after a '$' that names nothing. */
    assert_int_equal(pg_context_param("Parameter $ des Portals $7 = '...'", &kept), 7);
    /* Only the last line counts. */
    assert_int_equal(pg_context_param("parameter $3\nPL/pgSQL function f() line 1", &kept), 0);
    assert_int_equal(pg_context_param("", &kept), 0);
    assert_int_equal(pg_context_param("no parameter $0 here", &kept), 0);
    assert_int_equal(pg_context_param("parameter $65535", &kept), 65535);
    assert_int_equal(pg_context_param("parameter $65536", &kept), 0);
    assert_int_equal(pg_context_param("parameter $99999999999999999999999", &kept), 0);
}

static void test_fields_replace_small_buffer(void **state)
{
    (void)state;
    struct pkt p = { 0 };
    uint8_t buf[256];

    syntax_error_body(&p, "42", 1);
    const uint8_t *b = exact(&p);
    memset(buf, CANARY, sizeof(buf));
    size_t need = pg_fields_replace(NULL, 0, 'E', b, p.len, 'P', "123456");
    assert_int_equal(need, PG_HEAD_LEN + p.len + 4);
    assert_true(need < sizeof(buf));
    const size_t caps[] = { 0, 1, PG_HEAD_LEN, need / 2, need - 1 };
    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        assert_int_equal(pg_fields_replace(buf, caps[i], 'E', b, p.len, 'P', "123456"), need);
        assert_untouched(buf, 0, sizeof(buf));
    }
    assert_int_equal(pg_fields_replace(buf, need, 'E', b, p.len, 'P', "123456"), need);
    assert_int_equal(buf[0], 'E');
    assert_int_equal(buf[need - 1], 0);
    assert_untouched(buf, need, sizeof(buf));
    pkt_free(&p);
}

/* ---- messages the proxy builds ------------------------------------------ */

/* These go to the server in the middle of the client's stream: a wrong
 * length or a missing NUL would desynchronise the whole connection, so the
 * bytes are compared exactly. Mismatches are counted and all reported. */

static int build_failures;

#define build_mismatch(...)                                                    \
    do {                                                                        \
        print_error(__VA_ARGS__);                                               \
        print_error("\n");                                                      \
        build_failures++;                                                       \
    } while (0)

/* Compares what a builder wrote with the bytes expected, byte by byte. */
static void expect_bytes(const char *what, const uint8_t *got, size_t got_len,
                         const uint8_t *want, size_t want_len)
{
    if (got_len != want_len)
        build_mismatch("%s: %zu bytes, expected %zu", what, got_len, want_len);
    size_t n = got_len < want_len ? got_len : want_len;
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i]) {
            build_mismatch("%s: byte %zu is 0x%02x, expected 0x%02x", what, i, got[i], want[i]);
            break;
        }
}

/* The builders behind one signature, for the checks below. */
typedef size_t (*builder)(uint8_t *buf, size_t cap, const void *arg);

static size_t build_query(uint8_t *buf, size_t cap, const void *arg)
{
    return pg_build_query(buf, cap, arg);
}

static size_t build_complete(uint8_t *buf, size_t cap, const void *arg)
{
    return pg_build_command_complete(buf, cap, arg);
}

struct run_args {
    const char *name, *sql;
};

static size_t build_run(uint8_t *buf, size_t cap, const void *arg)
{
    const struct run_args *run = arg;
    return pg_build_extended_run(buf, cap, run->name, run->sql);
}

struct standalone_args {
    const char *name;
    const char *const *sql;
    size_t n;
};

static size_t build_standalone(uint8_t *buf, size_t cap, const void *arg)
{
    const struct standalone_args *run = arg;
    return pg_build_standalone_run(buf, cap, run->name, run->sql, run->n);
}

/* For every cap below need (for long output, the first and last 256): the
 * builder returns need and writes nothing, not even the part that would
 * fit. One line per kind of problem, with the first cap that shows it. */
static void check_small_caps(const char *what, builder build, const void *arg, size_t need)
{
    const size_t slack = 64;
    uint8_t *buf = malloc(need + slack);
    size_t bad_return = 0, bad_write = 0, first_return = 0, first_write = 0, first_byte = 0;
    size_t first_got = 0;

    assert_non_null(buf);
    for (size_t cap = 0; cap < need; cap++) {
        if (cap == 256 && need > 512)
            cap = need - 256;
        memset(buf, CANARY, need + slack);
        size_t got = build(buf, cap, arg);
        if (got != need && !bad_return++) {
            first_return = cap;
            first_got = got;
        }
        for (size_t i = 0; i < need + slack; i++)
            if (buf[i] != CANARY) {
                if (!bad_write++) {
                    first_write = cap;
                    first_byte = i;
                }
                break;
            }
    }
    if (bad_return)
        build_mismatch("%s: %zu caps below %zu return another size (cap %zu: %zu)", what,
                       bad_return, need, first_return, first_got);
    if (bad_write)
        build_mismatch("%s: %zu caps below %zu write (cap %zu: byte %zu)", what, bad_write, need,
                       first_write, first_byte);
    free(buf);
}

/* Writes with a cap of exactly the size the builder asks for, and with room
 * to spare: the same bytes, and nothing after them. A size other than need
 * is reported, but the bytes are still returned (in a block of exactly
 * *len bytes, for the caller to free) so that the caller can show what is
 * in them. */
static uint8_t *build_exact(const char *what, builder build, const void *arg, size_t need,
                            size_t *len)
{
    const size_t slack = 64;
    size_t asked = build(NULL, 0, arg);

    if (asked != need)
        build_mismatch("%s: needs %zu, expected %zu", what, asked, need);
    assert_true(asked > 0 && asked < (1u << 24));
    uint8_t *buf = malloc(asked + slack), *first = malloc(asked);
    assert_non_null(buf);
    assert_non_null(first);
    for (int spare = 0; spare < 2; spare++) {
        memset(buf, CANARY, asked + slack);
        size_t got = build(buf, spare ? asked + slack : asked, arg);
        if (got != asked)
            build_mismatch("%s: returned %zu, then %zu", what, asked, got);
        for (size_t i = asked; i < asked + slack; i++)
            if (buf[i] != CANARY) {
                build_mismatch("%s: wrote byte %zu past its %zu", what, i, asked);
                break;
            }
        if (!spare)
            memcpy(first, buf, asked);
        else if (memcmp(first, buf, asked) != 0)
            build_mismatch("%s: other bytes with room to spare", what);
    }
    free(buf);
    *len = asked;
    return first;
}

/* A builder with one text: exactly type, length, text and NUL. */
static void check_one_text(const char *fn, builder build, char type, const char *text)
{
    char what[96];
    struct pkt want = { 0 };
    size_t start = msg_begin(&want, type);
    put_str(&want, text);
    msg_end(&want, start);

    snprintf(what, sizeof(what), "%s(\"%.40s\")", fn, text);
    check_small_caps(what, build, text, want.len);
    size_t len;
    uint8_t *got = build_exact(what, build, text, want.len, &len);
    expect_bytes(what, got, len, want.data, want.len);
    free(got);
    pkt_free(&want);
}

static void test_build_query(void **state)
{
    (void)state;
    uint8_t buf[64];

    /* Spelled out once: 'Q', length 4 + 9 = 13, the text, its NUL. */
    static const uint8_t select1[] = { 'Q', 0, 0, 0, 13, 'S', 'E', 'L',
                                       'E', 'C', 'T', ' ', '1', 0 };
    memset(buf, CANARY, sizeof(buf));
    assert_int_equal(pg_build_query(buf, sizeof(buf), "SELECT 1"), sizeof(select1));
    assert_memory_equal(buf, select1, sizeof(select1));
    assert_untouched(buf, sizeof(select1), sizeof(buf));

    /* The empty query is a Query too (the server answers EmptyQueryResponse). */
    static const uint8_t empty[] = { 'Q', 0, 0, 0, 5, 0 };
    memset(buf, CANARY, sizeof(buf));
    assert_int_equal(pg_build_query(buf, sizeof(buf), ""), sizeof(empty));
    assert_memory_equal(buf, empty, sizeof(empty));
    assert_untouched(buf, sizeof(empty), sizeof(buf));

    char *big = malloc(70000);
    assert_non_null(big);
    memset(big, 'x', 69999);
    big[69999] = '\0';

    build_failures = 0;
    check_one_text("pg_build_query", build_query, 'Q', "SELECT 1");
    check_one_text("pg_build_query", build_query, 'Q', "");
    check_one_text("pg_build_query", build_query, 'Q', "SAVEPOINT idemproxy_guard");
    check_one_text("pg_build_query", build_query, 'Q',
                   "ROLLBACK TO SAVEPOINT idemproxy_guard; RELEASE SAVEPOINT idemproxy_guard");
    check_one_text("pg_build_query", build_query, 'Q', "SELECT '\xc3\xa9t\xc3\xa9'");
    /* Longer than 65535: the length field's upper bytes count too. */
    check_one_text("pg_build_query", build_query, 'Q', big);
    free(big);
    if (build_failures)
        fail_msg("%d mismatches", build_failures);
}

static void test_build_command_complete(void **state)
{
    (void)state;
    uint8_t buf[64];

    /* What the client is told instead of a 23505: 'C', 4 + 11 = 15. */
    static const uint8_t insert00[] = { 'C', 0, 0, 0, 15, 'I', 'N', 'S', 'E', 'R', 'T',
                                        ' ', '0', ' ', '0', 0 };
    memset(buf, CANARY, sizeof(buf));
    assert_int_equal(pg_build_command_complete(buf, sizeof(buf), "INSERT 0 0"), sizeof(insert00));
    assert_memory_equal(buf, insert00, sizeof(insert00));
    assert_untouched(buf, sizeof(insert00), sizeof(buf));

    /* And it reads back as a message of its own. */
    struct pg_msg msg;
    size_t used;
    assert_int_equal(pg_msg_next(buf, sizeof(insert00), &msg, &used), PG_NEXT_OK);
    assert_int_equal(used, sizeof(insert00));
    assert_int_equal(msg.type, 'C');
    assert_int_equal(msg.body_len, strlen("INSERT 0 0") + 1);
    assert_string_equal((const char *)msg.body, "INSERT 0 0");

    build_failures = 0;
    check_one_text("pg_build_command_complete", build_complete, 'C', "INSERT 0 0");
    check_one_text("pg_build_command_complete", build_complete, 'C', "INSERT 0 1");
    check_one_text("pg_build_command_complete", build_complete, 'C', "");
    check_one_text("pg_build_command_complete", build_complete, 'C', "SAVEPOINT");
    if (build_failures)
        fail_msg("%d mismatches", build_failures);
}

/* Reads a message body field by field, reporting each mismatch. */
struct body_reader {
    const char *what;
    const uint8_t *body;
    size_t len, at;
};

static void read_str(struct body_reader *r, const char *field, const char *want)
{
    const uint8_t *nul = r->at < r->len ? memchr(r->body + r->at, 0, r->len - r->at) : NULL;
    if (!nul) {
        build_mismatch("%s: %s: no NUL-terminated string at %zu", r->what, field, r->at);
        r->at = r->len;
        return;
    }
    const char *got = (const char *)r->body + r->at;
    if (strcmp(got, want) != 0)
        build_mismatch("%s: %s is \"%s\", expected \"%s\"", r->what, field, got, want);
    r->at = (size_t)(nul - r->body) + 1;
}

static void read_int(struct body_reader *r, const char *field, size_t width, uint32_t want)
{
    if (r->len - r->at < width) {
        build_mismatch("%s: %s: %zu bytes left, expected %zu", r->what, field, r->len - r->at,
                       width);
        r->at = r->len;
        return;
    }
    uint32_t got = 0;
    for (size_t i = 0; i < width; i++)
        got = (got << 8) | r->body[r->at + i];
    if (got != want)
        build_mismatch("%s: %s is %u, expected %u", r->what, field, got, want);
    r->at += width;
}

static void read_end(struct body_reader *r)
{
    if (r->at != r->len)
        build_mismatch("%s: %zu bytes after the last field", r->what, r->len - r->at);
}

/* The reply the server sends to one message of the run (the statement run
 * being a utility statement: no RowDescription, no DataRow). */
static char reply_for(char type, const uint8_t *body, size_t len)
{
    switch (type) {
    case 'P': return '1'; /* ParseComplete */
    case 'B': return '2'; /* BindComplete */
    case 'E': return 'C'; /* CommandComplete */
    case 'C': return len > 0 && (body[0] == 'P' || body[0] == 'S') ? '3' : '?'; /* CloseComplete */
    }
    return '?';
}

static void check_extended_run(const char *name, const char *sql)
{
    static const char types[] = PG_EXTENDED_RUN_MESSAGES;
    const size_t nmsgs = sizeof(types) - 1;
    const size_t name_len = strlen(name) + 1, sql_len = strlen(sql) + 1;
    /* Each message: type and length, then its body. */
    const size_t need = 5 * PG_HEAD_LEN + (name_len + sql_len + 2) + (2 * name_len + 6) +
                        (name_len + 4) + 2 * (1 + name_len);
    const struct run_args run = { name, sql };
    char what[96];

    snprintf(what, sizeof(what), "pg_build_extended_run(\"%s\", \"%.40s\")", name, sql);
    /* Too small by any amount, even with room for its first messages:
     * nothing at all, since half a sequence would leave the server waiting
     * for the rest of a message. */
    check_small_caps(what, build_run, &run, need);
    size_t len;
    uint8_t *buf = build_exact(what, build_run, &run, need, &len);

    if (strlen(PG_EXTENDED_RUN_REPLIES) != nmsgs)
        build_mismatch("PG_EXTENDED_RUN_REPLIES \"%s\" has %zu replies for %zu messages",
                       PG_EXTENDED_RUN_REPLIES, strlen(PG_EXTENDED_RUN_REPLIES), nmsgs);

    size_t at = 0, count = 0;
    while (at < len) {
        struct pg_msg msg;
        size_t used = 0;
        if (pg_msg_next(buf + at, len - at, &msg, &used) != PG_NEXT_OK) {
            build_mismatch("%s: no whole message at byte %zu", what, at);
            break;
        }
        char label[160];
        snprintf(label, sizeof(label), "%s: message %zu '%c'", what, count + 1, msg.type);
        struct body_reader r = { label, msg.body, msg.body_len, 0 };
        if (count >= nmsgs) {
            build_mismatch("%s: extra", label);
        } else if (msg.type != types[count]) {
            build_mismatch("%s: expected '%c'", label, types[count]);
        } else {
            switch (count) {
            case 0: /* Parse */
                read_str(&r, "statement name", name);
                read_str(&r, "query text", sql);
                read_int(&r, "parameter types", 2, 0);
                break;
            case 1: /* Bind */
                read_str(&r, "portal name", name);
                read_str(&r, "statement name", name);
                read_int(&r, "parameter formats", 2, 0);
                read_int(&r, "parameters", 2, 0);
                read_int(&r, "result formats", 2, 0);
                break;
            case 2: /* Execute: all rows */
                read_str(&r, "portal name", name);
                read_int(&r, "row limit", 4, 0);
                break;
            case 3: /* Close the portal */
                read_int(&r, "kind", 1, 'P');
                read_str(&r, "portal name", name);
                break;
            case 4: /* Close the statement */
                read_int(&r, "kind", 1, 'S');
                read_str(&r, "statement name", name);
                break;
            }
            read_end(&r);
            char reply = reply_for(msg.type, msg.body, msg.body_len);
            if (count < strlen(PG_EXTENDED_RUN_REPLIES) && PG_EXTENDED_RUN_REPLIES[count] != reply)
                build_mismatch("%s is answered by '%c', PG_EXTENDED_RUN_REPLIES expects '%c'",
                               label, reply, PG_EXTENDED_RUN_REPLIES[count]);
        }
        at += used;
        count++;
    }
    if (at != len)
        build_mismatch("%s: messages span %zu bytes of %zu", what, at, len);
    if (count != nmsgs)
        build_mismatch("%s: %zu messages, expected %zu", what, count, nmsgs);
    free(buf);
}

static void test_build_extended_run(void **state)
{
    (void)state;
    build_failures = 0;
    assert_string_equal(PG_EXTENDED_RUN_MESSAGES, "PBECC");
    assert_string_equal(PG_EXTENDED_RUN_REPLIES, "12C33");
    check_extended_run("idemproxy_guard", "SAVEPOINT idemproxy_guard");
    check_extended_run("idemproxy_guard", "RELEASE SAVEPOINT idemproxy_guard");
    /* The name is used for both the statement and the portal, whatever its
     * length. */
    check_extended_run("n", "SELECT 1");
    if (build_failures)
        fail_msg("%d mismatches", build_failures);
}

/* The standalone run is a Close of the statement, the extended run of
 * each statement as pg_build_extended_run builds it (checked above), and a
 * Sync. */
static void check_standalone_run(const char *name, const char *const sql[], size_t n)
{
    const struct standalone_args run = { name, sql, n };
    const size_t close_len = PG_HEAD_LEN + 1 + strlen(name) + 1;
    size_t need = close_len + PG_HEAD_LEN;
    char what[128];
    size_t len;

    for (size_t i = 0; i < n; i++)
        need += pg_build_extended_run(NULL, 0, name, sql[i]);
    snprintf(what, sizeof(what), "pg_build_standalone_run(\"%s\", %zu statements, \"%.40s\")",
             name, n, n ? sql[0] : "");
    check_small_caps(what, build_standalone, &run, need);
    uint8_t *buf = build_exact(what, build_standalone, &run, need, &len);
    uint8_t *want = malloc(need);
    assert_non_null(want);
    want[0] = PG_STANDALONE_RUN_FIRST;
    pg_put_u32(want + 1, (uint32_t)(close_len - 1));
    want[PG_HEAD_LEN] = 'S';
    memcpy(want + PG_HEAD_LEN + 1, name, strlen(name) + 1);
    size_t at = close_len;
    for (size_t i = 0; i < n; i++)
        at += pg_build_extended_run(want + at, need - at, name, sql[i]);
    want[at] = PG_STANDALONE_RUN_LAST;
    memcpy(want + at + 1, "\0\0\0\4", 4);
    expect_bytes(what, buf, len, want, need);
    free(want);
    free(buf);
}

static void test_build_standalone_run(void **state)
{
    static const char *const catalog[] = { "SELECT pg_catalog.set_config('a', 'b', true)",
                                           "SELECT relname FROM pg_class" };
    static const char *const empty[] = { "" };
    (void)state;
    build_failures = 0;
    assert_int_equal(PG_STANDALONE_RUN_FIRST, 'C');
    assert_int_equal(PG_STANDALONE_RUN_LAST, 'S');
    check_standalone_run("idemproxy_catalog", catalog, 2);
    check_standalone_run("idemproxy_catalog", catalog + 1, 1);
    check_standalone_run("n", empty, 1);
    check_standalone_run("n", NULL, 0);
    if (build_failures)
        fail_msg("%d mismatches", build_failures);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_head_needs_five_bytes),
        cmocka_unit_test(test_head_len_below_four_is_bad),
        cmocka_unit_test(test_head_len_four_is_empty_body),
        cmocka_unit_test(test_head_huge_length),
        cmocka_unit_test(test_next_partial_body),
        cmocka_unit_test(test_next_two_messages),
        cmocka_unit_test(test_next_good_then_bad),
        cmocka_unit_test(test_startup_len_ok),
        cmocka_unit_test(test_startup_ssl_request),
        cmocka_unit_test(test_startup_gssenc_request),
        cmocka_unit_test(test_startup_cancel_classic),
        cmocka_unit_test(test_startup_cancel_long_keys),
        cmocka_unit_test(test_startup_cancel_bad_keys),
        cmocka_unit_test(test_startup_message_v30),
        cmocka_unit_test(test_startup_message_replication),
        cmocka_unit_test(test_startup_message_v32),
        cmocka_unit_test(test_negotiation),
        cmocka_unit_test(test_startup_message_absent_user),
        cmocka_unit_test(test_startup_bad_versions),
        cmocka_unit_test(test_startup_bad_layout),
        cmocka_unit_test(test_startup_bad_lengths),
        cmocka_unit_test(test_startup_max_length),
        cmocka_unit_test(test_error_parse_full),
        cmocka_unit_test(test_error_parse_absent_fields),
        cmocka_unit_test(test_error_parse_malformed),
        cmocka_unit_test(test_ready_status),
        cmocka_unit_test(test_error_build_round_trip),
        cmocka_unit_test(test_error_build_empty_message),
        cmocka_unit_test(test_error_build_small_buffer),
        cmocka_unit_test(test_statement_text_query),
        cmocka_unit_test(test_statement_text_parse),
        cmocka_unit_test(test_statement_text_malformed),
        cmocka_unit_test(test_param_status),
        cmocka_unit_test(test_param_status_malformed),
        cmocka_unit_test(test_error_parse_position),
        cmocka_unit_test(test_fields_replace),
        cmocka_unit_test(test_fields_replace_notice),
        cmocka_unit_test(test_fields_replace_absent_or_malformed),
        cmocka_unit_test(test_fields_replace_small_buffer),
        cmocka_unit_test(test_fields_splice),
        cmocka_unit_test(test_context_param),
        cmocka_unit_test(test_build_query),
        cmocka_unit_test(test_build_command_complete),
        cmocka_unit_test(test_build_extended_run),
        cmocka_unit_test(test_build_standalone_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
