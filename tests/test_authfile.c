/*
 * Unit tests for authfile: PgBouncer's userlist.txt format, its quoting,
 * the classification of secrets, the "FILE:LINE: why" messages, lookups,
 * and authfile_load().
 *
 * Every text is handed over in a heap block of exactly its length with no
 * NUL after it (authfile_parse() must not need one), so AddressSanitizer
 * catches a read past the end; every snapshot is freed, so that a leak on
 * an error path shows.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "authfile.h"

#define FILENAME "userlist.txt"

/* What PostgreSQL 15 stored for PASSWORD 'pw' (SCRAM-SHA-256, 4096). */
#define PG15_SECRET                                                                             \
    "SCRAM-SHA-256$4096:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=" \
    ":Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs="
/* md5("1234" + "admin"), PgBouncer's documented example. */
#define MD5_SECRET "md545f2603610af569b6155c45067268c6b"

static struct auth_file *parse_len(const char *text, size_t len, char err[CONFIG_ERR_LEN])
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, text, len);
    memset(err, 'x', CONFIG_ERR_LEN);
    struct auth_file *f = authfile_parse(copy, len, FILENAME, err);
    free(copy);
    assert_non_null(memchr(err, '\0', CONFIG_ERR_LEN));
    return f;
}

static struct auth_file *parse_ok_len(const char *text, size_t len)
{
    char err[CONFIG_ERR_LEN];
    struct auth_file *f = parse_len(text, len, err);
    if (!f)
        fail_msg("unexpected error: %s\n--- text ---\n%s", err, text);
    return f;
}

static struct auth_file *parse_ok(const char *text)
{
    return parse_ok_len(text, strlen(text));
}

/* Parses text that must fail at line, with needle in the message. */
static void parse_fails_len(const char *text, size_t len, int line, const char *needle)
{
    char err[CONFIG_ERR_LEN], prefix[64];
    struct auth_file *f = parse_len(text, len, err);
    if (f) {
        authfile_unref(f);
        fail_msg("parsed, expected an error at line %d\n--- text ---\n%s", line, text);
    }
    snprintf(prefix, sizeof(prefix), "%s:%d: ", FILENAME, line);
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fail_msg("expected \"%s...\", got \"%s\"\n--- text ---\n%s", prefix, err, text);
    if (!strstr(err, needle))
        fail_msg("expected \"%s\" in \"%s\"", needle, err);
}

static void parse_fails(const char *text, int line, const char *needle)
{
    parse_fails_len(text, strlen(text), line, needle);
}

/* user's secret must be secret, of kind. */
static void expect_secret(const struct auth_file *f, const char *user, const char *secret,
                          enum auth_secret_kind kind)
{
    enum auth_secret_kind got = (enum auth_secret_kind)-1;
    const char *s = authfile_secret(f, user, &got);
    if (!s)
        fail_msg("no secret for \"%s\"", user);
    assert_string_equal(s, secret);
    assert_int_equal(got, kind);
}

static void expect_missing(const struct auth_file *f, const char *user)
{
    enum auth_secret_kind kind;
    assert_null(authfile_secret(f, user, &kind));
}

/* ---- good files --------------------------------------------------------- */

static void test_good_file(void **state)
{
    (void)state;
    struct auth_file *f = parse_ok("\"alice\" \"" PG15_SECRET "\"\n"
                                   "\"admin\" \"" MD5_SECRET "\"\n"
                                   "\"bob\" \"plain password\"\n");

    assert_int_equal(authfile_count(f), 3);
    expect_secret(f, "alice", PG15_SECRET, AUTH_SECRET_SCRAM);
    expect_secret(f, "admin", MD5_SECRET, AUTH_SECRET_MD5);
    expect_secret(f, "bob", "plain password", AUTH_SECRET_PLAIN);
    /* Names match exactly, as PostgreSQL's role names do. */
    expect_missing(f, "Alice");
    expect_missing(f, "alice ");
    expect_missing(f, "carol");
    expect_missing(f, "");
    authfile_unref(f);
}

static void test_empty(void **state)
{
    (void)state;
    static const char *const texts[] = {"", "\n", "\n\n  \t\n", "; only a comment\n",
                                        "\xEF\xBB\xBF", "\r\n", ";"};

    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct auth_file *f = parse_ok(texts[i]);
        assert_int_equal(authfile_count(f), 0);
        expect_missing(f, "alice");
        authfile_unref(f);
    }
}

/* What is md5 and what only looks like it: lowercase hex, exactly 32. */
static void test_classify(void **state)
{
    (void)state;
    struct auth_file *f = parse_ok(
        "\"a\" \"md545f2603610af569b6155c45067268c6b\"\n"
        "\"b\" \"md545F2603610AF569B6155C45067268C6B\"\n"
        "\"c\" \"md545f2603610af569b6155c45067268c6\"\n"
        "\"d\" \"md545f2603610af569b6155c45067268c6bb\"\n"
        "\"e\" \"md545f2603610af569b6155c45067268c6g\"\n"
        "\"f\" \"MD545f2603610af569b6155c45067268c6b\"\n"
        "\"g\" \"scram-sha-256 is my password\"\n"
        "\"h\" \"SCRAM-SHA-256\"\n"
        "\"i\" \"\"\n");

    expect_secret(f, "a", "md545f2603610af569b6155c45067268c6b", AUTH_SECRET_MD5);
    expect_secret(f, "b", "md545F2603610AF569B6155C45067268C6B", AUTH_SECRET_PLAIN);
    expect_secret(f, "c", "md545f2603610af569b6155c45067268c6", AUTH_SECRET_PLAIN);
    expect_secret(f, "d", "md545f2603610af569b6155c45067268c6bb", AUTH_SECRET_PLAIN);
    expect_secret(f, "e", "md545f2603610af569b6155c45067268c6g", AUTH_SECRET_PLAIN);
    expect_secret(f, "f", "MD545f2603610af569b6155c45067268c6b", AUTH_SECRET_PLAIN);
    expect_secret(f, "g", "scram-sha-256 is my password", AUTH_SECRET_PLAIN);
    expect_secret(f, "h", "SCRAM-SHA-256", AUTH_SECRET_PLAIN);
    /* An empty secret is PgBouncer's too; what it allows is the caller's. */
    expect_secret(f, "i", "", AUTH_SECRET_PLAIN);
    assert_int_equal(authfile_count(f), 9);
    authfile_unref(f);
}

/* A doubled quote inside quotes is a quote, in either field. */
static void test_quotes(void **state)
{
    (void)state;
    struct auth_file *f = parse_ok("\"we\"\"ird\" \"pa\"\"ss\"\n"
                                   "\"\"\"\" \"\"\"\"\"\"\n"
                                   "\"sp ace\" \"a;b \\\"c\"\n");

    expect_secret(f, "we\"ird", "pa\"ss", AUTH_SECRET_PLAIN);
    expect_secret(f, "\"", "\"\"", AUTH_SECRET_PLAIN);
    /* Backslashes are nothing special. */
    expect_secret(f, "sp ace", "a;b \\", AUTH_SECRET_PLAIN);
    assert_int_equal(authfile_count(f), 3);
    authfile_unref(f);

    /* Fields next to each other with no blank between: "x""pw" is one
     * field, x"pw, with no secret after it. */
    parse_fails("\"x\"\"pw\"\n", 1, "expected the secret");
}

/* Comments, blanks, indentation and what follows the secret. */
static void test_layout(void **state)
{
    (void)state;
    struct auth_file *f = parse_ok("; PgBouncer's userlist\n"
                                   "\n"
                                   "   ; an indented comment\n"
                                   "\t\"alice\"\t\t\"pw1\"\n"
                                   "  \"bob\"   \"pw2\" anything after the secret is ignored\n"
                                   "\"carol\" \"pw3\" \"a third field\"\n"
                                   "\"dave\" \"pw4\"");

    assert_int_equal(authfile_count(f), 4);
    expect_secret(f, "alice", "pw1", AUTH_SECRET_PLAIN);
    expect_secret(f, "bob", "pw2", AUTH_SECRET_PLAIN);
    expect_secret(f, "carol", "pw3", AUTH_SECRET_PLAIN);
    expect_secret(f, "dave", "pw4", AUTH_SECRET_PLAIN);
    expect_missing(f, "; an indented comment");
    authfile_unref(f);
}

static void test_crlf_and_bom(void **state)
{
    (void)state;
    struct auth_file *f = parse_ok("\xEF\xBB\xBF\"alice\" \"" PG15_SECRET "\"\r\n"
                                   "; comment\r\n"
                                   "\r\n"
                                   "\"bob\" \"pw\"\r\n");

    assert_int_equal(authfile_count(f), 2);
    expect_secret(f, "alice", PG15_SECRET, AUTH_SECRET_SCRAM);
    expect_secret(f, "bob", "pw", AUTH_SECRET_PLAIN);
    authfile_unref(f);

    /* A BOM anywhere but at the start is no blank. */
    parse_fails("\"bob\" \"pw\"\n\xEF\xBB\xBF\"alice\" \"pw\"\n", 2, "double quotes");
    /* Line numbers count CRLF lines too. */
    parse_fails("\"a\" \"1\"\r\n\r\n\"a\" \"2\"\r\n", 3, "first at line 1");
}

/* ---- bad files ---------------------------------------------------------- */

static void test_duplicates(void **state)
{
    (void)state;
    parse_fails("\"alice\" \"pw1\"\n"
                "\"bob\" \"pw2\"\n"
                "; alice again\n"
                "\"alice\" \"pw3\"\n",
                4, "user \"alice\" is listed twice (first at line 1)");
    /* The same name however it was quoted. */
    parse_fails("\"a\"\"b\" \"1\"\n\"a\"\"b\" \"2\"\n", 2, "first at line 1");
    /* Different case: different users. */
    struct auth_file *f = parse_ok("\"alice\" \"1\"\n\"Alice\" \"2\"\n");
    assert_int_equal(authfile_count(f), 2);
    authfile_unref(f);
}

static void test_malformed(void **state)
{
    (void)state;
    parse_fails("\"alice\" \"pw\"\n\"bob\n", 2, "unterminated quote in the user name");
    parse_fails("\"alice\n\" \"pw\"\n", 1, "unterminated quote in the user name");
    parse_fails("\"alice\" \"pw\n\"\n", 1, "user \"alice\": unterminated quote in the secret");
    parse_fails("\"alice\" \"pw\"\"\n", 1, "unterminated quote in the secret");
    parse_fails("\"alice\" \"pw", 1, "unterminated quote in the secret");
    parse_fails("\"alice\"", 1, "expected the secret");
    parse_fails("\"alice\"\n\"pw\"\n", 1, "expected the secret");
    parse_fails("\"alice\" pw\n", 1, "expected the secret");
    parse_fails("alice pw\n", 1, "expected \"user\" \"secret\"");
    parse_fails("\n\n'alice' 'pw'\n", 3, "expected \"user\" \"secret\"");
    parse_fails("# not a comment here\n", 1, "expected \"user\" \"secret\"");
    parse_fails("\"\" \"pw\"\n", 1, "empty user name");
    parse_fails_len("\"alice\" \"p\0w\"\n", 13, 1, "NUL");
}

static void test_broken_scram(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "SCRAM-SHA-256$",
        "SCRAM-SHA-256$4096:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk=",
        "SCRAM-SHA-256$0:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk="
        ":Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbzs=",
        "SCRAM-SHA-256$4096:RvvSXw+f7+SMSxb0T9ZE+w==$OCD8Wf1RsOZ5sgHOlRWaN3R9RjMG/qUuENhSRqy9QHk="
        ":Vb/xEj1jOiEPSzmrbXJTXGEpyoa5i1ncnfT2OSbLbz=",
    };
    char text[512];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text), "\"alice\" \"pw\"\n\"bob\" \"%s\"\n", bad[i]);
        parse_fails(text, 2, "user \"bob\": malformed SCRAM secret");
        /* The message never repeats the secret. */
        char err[CONFIG_ERR_LEN];
        assert_null(parse_len(text, strlen(text), err));
        assert_null(strstr(err, "RvvSXw"));
    }
}

/* ---- authfile_load ------------------------------------------------------ */

static void test_load(void **state)
{
    (void)state;
    char path[] = "/tmp/idemproxy-authfile-XXXXXX";
    char err[CONFIG_ERR_LEN], prefix[64];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "\"alice\" \"" PG15_SECRET "\"\n\"bob\" \"pw\"\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);

    struct auth_file *f = authfile_load(path, err);
    assert_non_null(f);
    assert_int_equal(authfile_count(f), 2);
    expect_secret(f, "alice", PG15_SECRET, AUTH_SECRET_SCRAM);
    authfile_unref(f);

    /* A bigger file than one read takes. */
    FILE *out = fopen(path, "w");
    assert_non_null(out);
    for (int i = 0; i < 2000; i++)
        fprintf(out, "\"user%d\" \"password number %d\"\n", i, i);
    fclose(out);
    f = authfile_load(path, err);
    assert_non_null(f);
    assert_int_equal(authfile_count(f), 2000);
    expect_secret(f, "user1999", "password number 1999", AUTH_SECRET_PLAIN);
    authfile_unref(f);

    /* A bad file names itself and the line. */
    out = fopen(path, "w");
    assert_non_null(out);
    fputs("\"alice\" \"pw\"\n\"alice\" \"pw\"\n", out);
    fclose(out);
    assert_null(authfile_load(path, err));
    snprintf(prefix, sizeof(prefix), "%s:2: ", path);
    assert_int_equal(strncmp(err, prefix, strlen(prefix)), 0);

    unlink(path);
    assert_null(authfile_load(path, err));
    snprintf(prefix, sizeof(prefix), "%s: cannot open: ", path);
    assert_int_equal(strncmp(err, prefix, strlen(prefix)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_file),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_classify),
        cmocka_unit_test(test_quotes),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_crlf_and_bom),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_broken_scram),
        cmocka_unit_test(test_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
