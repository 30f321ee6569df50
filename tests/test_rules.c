/*
 * Unit tests for rules: rulesets and their lifetime, scopes per database
 * and login role, the decision cache, and the counters.
 *
 * The catalog each scope learns is synthetic, fed in as the DataRows the
 * catalog query returns (see test_catalog.c for where their shape comes
 * from). Reference counts are checked by value where the API shows them
 * and otherwise left to AddressSanitizer: build with --enable-sanitizers to
 * have a use after the last unref, or a missing unref, fail the test.
 *
 * Statement texts are handed over in heap blocks of exactly len + 1 bytes,
 * as Query and Parse messages carry them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "catalog.h"
#include "config.h"
#include "pgproto.h"
#include "rewrite.h"
#include "rules.h"

/* Table 0 applies to another database only, so that in database "app" the
 * scope's table 0 is the configuration's table 1: the counters must follow
 * the configuration's numbering. */
#define CONFIG "[idemproxy]\n" CONFIG_TABLES
#define CONFIG_TABLES                                                            \
    "[table public.audit_log]\n"                                                 \
    "database = other\n"                                                         \
    "action = do_nothing\n"                                                      \
    "[table public.webhook_events]\n"                                            \
    "conflict = idempotency_key\n"                                               \
    "[table public.orders]\n"                                                    \
    "conflict = order_ref\n"                                                     \
    "mode = shadow\n"

enum { CFG_AUDIT, CFG_WE, CFG_ORDERS };
enum { APP_WE, APP_ORDERS };

/* What the catalog query answers for webhook_events and orders in "app";
 * events are partitioned by month. */
static const char *const app_rows[][CATALOG_COLUMNS] = {
    { "r", "public", "webhook_events", "p", "true", "false", "false" },
    { "r", "public", "orders", "r", "true", "false", "false" },
    { "i", "public", "webhook_events", "we_key", "true", "true", "false", "true", "true" },
    { "k", "public", "webhook_events", "we_key", "1", "idempotency_key" },
    { "i", "public", "orders", "orders_ref_key", "true", "true", "false", "true", "true" },
    { "k", "public", "orders", "orders_ref_key", "1", "order_ref" },
    { "a", "public", "webhook_events", "idempotency_key", "true", "true", "true" },
    { "a", "public", "webhook_events", "payload", "true", "true", "true" },
    { "a", "public", "orders", "order_ref", "true", "true", "true" },
    { "p", "public", "webhook_events_2024_01", "", "public", "webhook_events" },
    { "p", "archive", "webhook_events_2023", "", "public", "webhook_events" },
};

#define WE_P " ON CONFLICT (\"idempotency_key\") DO NOTHING"

/* The monotonic clock the scope is told, in nanoseconds. */
#define SEC 1000000000ull

static struct config *parse_config(const char *text)
{
    char err[CONFIG_ERR_LEN];
    struct config *cfg = config_parse(text, strlen(text), "test.ini", err);
    if (!cfg)
        fail_msg("config: %s", err);
    return cfg;
}

/* A DataRow body of the catalog query's shape. */
static size_t data_row(uint8_t *buf, size_t cap, const char *const col[CATALOG_COLUMNS])
{
    size_t at = 2;
    buf[0] = 0;
    buf[1] = CATALOG_COLUMNS;
    for (int i = 0; i < CATALOG_COLUMNS; i++) {
        size_t n = col[i] ? strlen(col[i]) : 0;
        assert_true(at + 4 + n <= cap);
        pg_put_u32(buf + at, col[i] ? (uint32_t)n : UINT32_MAX);
        at += 4;
        memcpy(buf + at, col[i] ? col[i] : "", n);
        at += n;
    }
    return at;
}

static void app_catalog(struct catalog *cat)
{
    uint8_t buf[512];
    catalog_init(cat);
    for (size_t i = 0; i < sizeof(app_rows) / sizeof(app_rows[0]); i++)
        assert_true(catalog_add_row(cat, buf, data_row(buf, sizeof(buf), app_rows[i])));
}

/* A ruleset and its READY scope for database "app", user "alice". */
static struct ruleset *ready_ruleset(struct scope **s)
{
    struct ruleset *rs = ruleset_new(parse_config(CONFIG), NULL);
    struct catalog cat;

    assert_non_null(rs);
    *s = ruleset_scope(rs, "app", "alice");
    assert_non_null(*s);
    assert_int_equal(scope_state(*s), SCOPE_UNKNOWN);
    app_catalog(&cat);
    assert_true(scope_learn(*s, &cat, SEC));
    /* The scope keeps what it needs: the catalog may go. */
    catalog_free(&cat);
    assert_int_equal(scope_state(*s), SCOPE_READY);
    return rs;
}

/* scope_decide on a heap copy of exactly len + 1 bytes. */
static struct decision *decide_as(struct scope *s, const char *text, bool repeats, bool *fresh)
{
    size_t len = strlen(text);
    char *copy = malloc(len + 1);
    assert_non_null(copy);
    memcpy(copy, text, len + 1);
    *fresh = true; /* scope_decide must clear it when it does not decide anew */
    struct decision *d = scope_decide(s, copy, len, repeats, fresh);
    free(copy);
    return d;
}

/* A Query's text. */
static struct decision *decide(struct scope *s, const char *text, bool *fresh)
{
    return decide_as(s, text, false, fresh);
}

/* ---- rulesets and scopes ----------------------------------------------- */

static void test_ruleset_owns_config(void **state)
{
    (void)state;
    struct config *cfg = parse_config(CONFIG);
    struct ruleset *rs = ruleset_new(cfg, NULL);

    assert_non_null(rs);
    assert_ptr_equal(ruleset_config(rs), cfg);
    assert_int_equal(ruleset_config(rs)->table_count, 3);
    ruleset_unref(rs);
    ruleset_unref(NULL);
}

/* No tables at all: every scope passes through. */
static void test_ruleset_without_tables(void **state)
{
    (void)state;
    struct ruleset *rs = ruleset_new(parse_config("[idemproxy]\n"), NULL);
    assert_non_null(rs);
    struct scope *s = ruleset_scope(rs, "app", "alice");
    assert_non_null(s);
    assert_int_equal(scope_state(s), SCOPE_PASSTHROUGH);
    assert_int_equal(scope_table_count(s), 0);
    assert_null(scope_catalog_query(s));
    bool fresh = true;
    assert_null(
        scope_decide(s, "INSERT INTO t VALUES (1)", strlen("INSERT INTO t VALUES (1)"), false, &fresh));
    assert_false(fresh);
    ruleset_unref(rs);
}

static void test_scope_identity(void **state)
{
    (void)state;
    struct ruleset *rs = ruleset_new(parse_config(CONFIG), NULL);
    assert_non_null(rs);

    struct scope *a = ruleset_scope(rs, "app", "alice");
    assert_non_null(a);
    assert_ptr_equal(ruleset_scope(rs, "app", "alice"), a);
    struct scope *b = ruleset_scope(rs, "app", "bob");
    struct scope *c = ruleset_scope(rs, "other", "alice");
    assert_non_null(b);
    assert_non_null(c);
    assert_ptr_not_equal(b, a);
    assert_ptr_not_equal(c, a);
    assert_ptr_not_equal(c, b);
    /* The key keeps database and user apart. */
    struct scope *ab_c = ruleset_scope(rs, "ab", "c");
    struct scope *a_bc = ruleset_scope(rs, "a", "bc");
    assert_ptr_not_equal(ab_c, a_bc);
    assert_ptr_equal(ruleset_scope(rs, "ab", "c"), ab_c);
    assert_ptr_not_equal(ruleset_scope(rs, "", ""), ruleset_scope(rs, "", "x"));
    assert_ptr_equal(ruleset_scope(rs, "", ""), ruleset_scope(rs, "", ""));
    /* Learning in one scope leaves the others to learn their own. */
    struct catalog cat;
    app_catalog(&cat);
    assert_true(scope_learn(a, &cat, SEC));
    catalog_free(&cat);
    assert_int_equal(scope_state(a), SCOPE_READY);
    assert_int_equal(scope_state(b), SCOPE_UNKNOWN);
    ruleset_unref(rs);
}

/* An answer about a session's identity (its DataRow body): the role,
 * the flags, signature "sig". */
static size_t identity_row(uint8_t *buf, const char *role, const char *flags)
{
    size_t r = strlen(role), n = strlen(flags), at = 2;
    buf[0] = 0;
    buf[1] = 3;
    pg_put_u32(buf + at, (uint32_t)r);
    memcpy(buf + at + 4, role, r);
    at += 4 + r;
    pg_put_u32(buf + at, (uint32_t)n);
    memcpy(buf + at + 4, flags, n);
    at += 4 + n;
    pg_put_u32(buf + at, 3);
    memcpy(buf + at + 4, "sig", 3);
    return at + 7;
}

/* Whether the answer fits; *scope: the scope it names. */
static bool fits_as(struct scope *s, const char *role, const char *flags, struct scope **scope)
{
    uint8_t row[128];
    struct identity_answer a;

    assert_true(scope_identity_read(s, row, identity_row(row, role, flags), &a));
    assert_int_equal(a.signature_len, 3);
    assert_memory_equal(a.signature, "sig", 3);
    *scope = a.scope;
    return a.fits;
}

static bool fits(struct scope *s, const char *flags)
{
    struct scope *scope;
    bool yes = fits_as(s, "alice", flags, &scope);

    assert_ptr_equal(scope, s);
    return yes;
}

/* The scope's verdicts hold for a session whose unqualified names lead
 * where the scope's do; not before the catalog is known; a malformed
 * answer is none. */
static void test_scope_identity_fits(void **state)
{
    (void)state;
    struct ruleset *rs = ruleset_new(parse_config(CONFIG), NULL);
    struct scope *s = ruleset_scope(rs, "app", "alice");
    struct identity_answer a;
    struct catalog cat;
    uint8_t row[128];

    assert_false(fits(s, "tt"));
    const char *sql = scope_identity_query(s);
    assert_non_null(sql);
    assert_non_null(strstr(sql, "SELECT current_user::pg_catalog.text"));
    assert_null(strstr(sql, "alice"));
    assert_non_null(strstr(sql, "to_regclass('\"public\".\"webhook_events\"')"));
    assert_null(strstr(sql, "audit_log")); /* another database's table */
    assert_ptr_equal(scope_identity_query(s), sql);

    app_catalog(&cat);
    assert_true(scope_learn(s, &cat, SEC));
    catalog_free(&cat);
    assert_true(fits(s, "tt"));
    assert_false(fits(s, "ft"));
    assert_false(fits(s, "tf"));
    assert_false(scope_identity_read(s, row, identity_row(row, "alice", "t"), &a));
    assert_false(scope_identity_read(s, row, identity_row(row, "alice", "ttt"), &a));
    ruleset_unref(rs);
}

/* A session that runs as another role is decided in that role's scope of
 * the same database, made on first use, which learns its own catalog
 * (asked for that role by name); only so many of those are made. */
static void test_scope_identity_role(void **state)
{
    (void)state;
    struct ruleset *rs = ruleset_new(parse_config(CONFIG), NULL);
    struct scope *alice = ruleset_scope(rs, "app", "alice"), *scope;
    struct catalog cat;

    app_catalog(&cat);
    assert_true(scope_learn(alice, &cat, SEC));
    assert_false(fits_as(alice, "bob", "tt", &scope));
    struct scope *bob = scope;
    assert_non_null(bob);
    assert_ptr_equal(ruleset_scope(rs, "app", "bob"), bob);
    assert_int_equal(scope_state(bob), SCOPE_UNKNOWN);
    size_t role_len;
    const char *role = scope_role(bob, &role_len);
    assert_int_equal(role_len, 3);
    assert_memory_equal(role, "bob", 3);
    assert_non_null(strstr(scope_catalog_query(bob), "who(role) AS (VALUES ('bob'::name))"));
    assert_non_null(strstr(scope_catalog_query(alice), "who(role) AS (VALUES ('alice'::name))"));
    assert_int_equal(scope_table_count(bob), scope_table_count(alice));

    /* Learnt, it decides; the session's names still count. */
    assert_true(scope_learn(bob, &cat, 2 * SEC));
    assert_true(fits_as(alice, "bob", "tt", &scope));
    assert_ptr_equal(scope, bob);
    assert_false(fits_as(alice, "bob", "ft", &scope));
    /* And back from bob's scope to the login role's. */
    assert_true(fits_as(bob, "alice", "tt", &scope));
    assert_ptr_equal(scope, alice);

    /* Past the bound, a role never met has none; those made stay. */
    char name[32];
    for (int i = 1; i < RULESET_ROLE_SCOPES_MAX; i++) {
        snprintf(name, sizeof(name), "tenant%d", i);
        assert_false(fits_as(alice, name, "tt", &scope));
        assert_non_null(scope);
    }
    assert_false(fits_as(alice, "one_too_many", "tt", &scope));
    assert_null(scope);
    assert_true(fits_as(alice, "bob", "tt", &scope));
    assert_ptr_equal(scope, bob);
    assert_false(fits_as(alice, "tenant1", "tt", &scope));
    assert_non_null(scope);
    /* Logins still get theirs. */
    assert_non_null(ruleset_scope(rs, "app", "carol"));
    catalog_free(&cat);
    ruleset_unref(rs);
}

/* What a question right after a login answered serves the next login
 * with the same StartupMessage, until the verdicts change or the catalog
 * is asked again; another StartupMessage asks for itself. */
static void test_scope_login_identity(void **state)
{
    (void)state;
    struct ruleset *rs = ruleset_new(parse_config(CONFIG), NULL);
    struct scope *s = ruleset_scope(rs, "app", "alice");
    static const uint8_t login[] = "user\0alice\0database\0app\0\0";
    static const uint8_t other[] = "user\0alice\0database\0app\0options\0-c x\0\0";
    const struct identity_answer yes = { s, true, "alice {public}", 14 };
    const struct identity_answer no = { s, false, "alice {x}", 9 };
    const struct identity_answer bob = { ruleset_scope(rs, "app", "bob"), true, "bob {x}", 7 };
    struct identity_answer got;
    struct catalog cat;
    uint64_t answered = 0;

    app_catalog(&cat);
    assert_true(scope_learn(s, &cat, SEC));
    assert_false(scope_login_identity(s, login, sizeof(login), &got, &answered));
    scope_keep_login_identity(s, login, sizeof(login), &yes, 2 * SEC);
    assert_true(scope_login_identity(s, login, sizeof(login), &got, &answered));
    assert_ptr_equal(got.scope, s);
    assert_true(got.fits);
    assert_int_equal(got.signature_len, 14);
    assert_string_equal(got.signature, "alice {public}");
    assert_int_equal(answered, 2 * SEC);
    assert_false(scope_login_identity(s, other, sizeof(other), &got, &answered));
    assert_false(scope_login_identity(s, login, sizeof(login) - 1, &got, &answered));
    scope_keep_login_identity(s, other, sizeof(other), &no, 2 * SEC);
    assert_true(scope_login_identity(s, other, sizeof(other), &got, &answered));
    assert_false(got.fits);
    assert_string_equal(got.signature, "alice {x}");
    /* A login that runs as another role at once is kept with that role's
     * scope, while that scope's verdicts hold. */
    static const uint8_t as_bob[] = "user\0alice\0database\0app\0options\0-c role=bob\0\0";
    assert_true(scope_learn(bob.scope, &cat, 2 * SEC));
    scope_keep_login_identity(s, as_bob, sizeof(as_bob), &bob, 2 * SEC);
    assert_true(scope_login_identity(s, as_bob, sizeof(as_bob), &got, &answered));
    assert_ptr_equal(got.scope, bob.scope);
    assert_true(got.fits);
    assert_true(scope_distrust(bob.scope, 3 * SEC));
    assert_false(scope_login_identity(s, as_bob, sizeof(as_bob), &got, &answered));

    /* The catalog asked again, same answer: not current any more. */
    assert_true(scope_learn(s, &cat, 3 * SEC));
    assert_false(scope_login_identity(s, login, sizeof(login), &got, &answered));
    scope_keep_login_identity(s, login, sizeof(login), &yes, 4 * SEC);
    assert_true(scope_login_identity(s, login, sizeof(login), &got, &answered));
    /* A doubt changes the verdicts' version. */
    assert_true(scope_distrust(s, 5 * SEC));
    assert_false(scope_login_identity(s, login, sizeof(login), &got, &answered));

    /* Many StartupMessages: the kept ones stay bounded, the latest is there. */
    assert_true(scope_learn(s, &cat, 6 * SEC));
    uint8_t many[32];
    for (int i = 0; i < 200; i++) {
        int n = snprintf((char *)many, sizeof(many), "application_name=%d", i);
        scope_keep_login_identity(s, many, (size_t)n, &yes, 7 * SEC);
    }
    assert_true(scope_login_identity(s, many, strlen((char *)many), &got, &answered));
    catalog_free(&cat);
    ruleset_unref(rs);
}

static void test_scope_tables_by_database(void **state)
{
    (void)state;
    struct ruleset *rs = ruleset_new(parse_config(CONFIG), NULL);
    assert_non_null(rs);

    struct scope *app = ruleset_scope(rs, "app", "alice");
    assert_int_equal(scope_table_count(app), 2);
    assert_string_equal(scope_table(app, APP_WE)->name, "webhook_events");
    assert_string_equal(scope_table(app, APP_ORDERS)->name, "orders");
    struct scope *other = ruleset_scope(rs, "other", "alice");
    assert_int_equal(scope_table_count(other), 3);
    assert_string_equal(scope_table(other, 0)->name, "audit_log");

    /* The catalog query names only the scope's own tables. */
    const char *q = scope_catalog_query(app);
    assert_non_null(q);
    assert_non_null(strstr(q, "'webhook_events'::name"));
    assert_null(strstr(q, "audit_log"));
    assert_ptr_equal(scope_catalog_query(app), q);
    assert_non_null(strstr(scope_catalog_query(other), "'audit_log'::name"));
    ruleset_unref(rs);

    /* A database with only another database's tables has nothing to do. */
    rs = ruleset_new(parse_config("[idemproxy]\n[table public.t]\ndatabase = other\n"
                                  "action = do_nothing\n"), NULL);
    assert_non_null(rs);
    struct scope *s = ruleset_scope(rs, "app", "alice");
    assert_int_equal(scope_state(s), SCOPE_PASSTHROUGH);
    assert_int_equal(scope_table_count(s), 0);
    assert_null(scope_catalog_query(s));
    assert_int_equal(scope_state(ruleset_scope(rs, "other", "alice")), SCOPE_UNKNOWN);
    ruleset_unref(rs);
}

static void test_scope_learn(void **state)
{
    (void)state;
    struct ruleset *rs = ruleset_new(parse_config(CONFIG), NULL);
    struct scope *s = ruleset_scope(rs, "app", "alice");
    struct catalog cat;
    bool fresh = false;

    /* Nothing is decided before the catalog is known. */
    assert_int_equal(scope_state(s), SCOPE_UNKNOWN);
    assert_null(decide(s, "INSERT INTO webhook_events VALUES ('a')", &fresh));
    assert_false(fresh);

    app_catalog(&cat);
    assert_true(scope_learn(s, &cat, SEC));
    catalog_free(&cat);
    assert_int_equal(scope_state(s), SCOPE_READY);
    assert_string_equal(scope_table_problem(s, APP_WE), "");
    /* A first answer without problems has nothing to log. */
    assert_false(scope_table_changed(s, APP_WE));
    struct decision *d = decide(s, "INSERT INTO webhook_events VALUES ('a')", &fresh);
    assert_non_null(d);
    assert_int_equal(d->result.reason, RR_REWRITTEN);

    /* The same answer again changes nothing, and the decision stays
     * cached. */
    app_catalog(&cat);
    assert_true(scope_learn(s, &cat, 2 * SEC));
    catalog_free(&cat);
    assert_false(scope_table_changed(s, APP_WE));
    struct decision *again = decide(s, "INSERT INTO webhook_events VALUES ('a')", &fresh);
    assert_false(fresh);
    decision_unref(again);

    /* A later answer replaces what the scope knew (the tables went): the
     * problem is news, and no cached decision rewrites any more. The one
     * handed out before stays whole for its request. */
    catalog_init(&cat);
    assert_true(scope_learn(s, &cat, 3 * SEC));
    assert_int_equal(scope_state(s), SCOPE_READY);
    assert_true(scope_table_changed(s, APP_WE));
    assert_non_null(strstr(scope_table_problem(s, APP_WE), "does not exist"));
    struct decision *after = decide(s, "INSERT INTO webhook_events VALUES ('a')", &fresh);
    assert_true(fresh);
    assert_null(after->result.text);
    assert_int_equal(after->result.reason, RR_OTHER_TABLE);
    decision_unref(after);
    assert_non_null(strstr(d->result.text, WE_P));
    decision_unref(d);

    /* A failed answer leaves the scope as it was. */
    assert_true(scope_learn(s, NULL, 4 * SEC));
    assert_int_equal(scope_state(s), SCOPE_READY);
    assert_false(scope_table_changed(s, APP_WE));
    assert_non_null(strstr(scope_table_problem(s, APP_WE), "does not exist"));

    /* And the tables come back: news again, with nothing to complain of. */
    app_catalog(&cat);
    assert_true(scope_learn(s, &cat, 5 * SEC));
    catalog_free(&cat);
    assert_true(scope_table_changed(s, APP_WE));
    assert_string_equal(scope_table_problem(s, APP_WE), "");
    d = decide(s, "INSERT INTO webhook_events VALUES ('a')", &fresh);
    assert_int_equal(d->result.reason, RR_REWRITTEN);
    decision_unref(d);
    ruleset_unref(rs);

    /* An empty first answer: the tables do not exist, and that is said. */
    rs = ruleset_new(parse_config(CONFIG), NULL);
    s = ruleset_scope(rs, "app", "alice");
    assert_true(scope_learn(s, &cat, SEC));
    catalog_free(&cat);
    assert_int_equal(scope_state(s), SCOPE_READY);
    assert_true(scope_table_changed(s, APP_WE));
    assert_non_null(strstr(scope_table_problem(s, APP_WE), "does not exist"));
    d = decide(s, "INSERT INTO webhook_events VALUES ('a')", &fresh);
    assert_non_null(d);
    assert_null(d->result.text);
    assert_int_equal(d->result.reason, RR_OTHER_TABLE);
    decision_unref(d);
    ruleset_unref(rs);
}

/* When a session asks the catalog again: catalog_check_interval after the
 * last answer, at once after a doubt, a second after a failed answer;
 * never while another is asking. Doubts count once a second at most. */
static void test_scope_due(void **state)
{
    (void)state;
    struct ruleset *rs =
        ruleset_new(parse_config("[idemproxy]\ncatalog_check_interval = 10\n" CONFIG_TABLES), NULL);
    struct scope *s = ruleset_scope(rs, "app", "alice");
    struct catalog cat;

    /* Never asked: due, unless someone is asking already. */
    assert_true(scope_due(s, SEC));
    scope_asking(s);
    assert_false(scope_due(s, SEC));
    /* An UNKNOWN scope is not doubted: nothing rewrites yet. */
    assert_false(scope_distrust(s, SEC));
    assert_int_equal(scope_version(s), 0);
    app_catalog(&cat);
    assert_true(scope_learn(s, &cat, 100 * SEC));
    assert_int_equal(scope_state(s), SCOPE_READY);
    assert_int_equal(scope_version(s), 100 * SEC);
    assert_false(scope_due(s, 109 * SEC));
    assert_true(scope_due(s, 110 * SEC));
    /* The same answer again: what the scope rewrites is the same version. */
    scope_asking(s);
    assert_true(scope_learn(s, &cat, 100 * SEC + 500));
    assert_int_equal(scope_version(s), 100 * SEC);

    /* A doubt: rewriting stops, and the catalog is asked at once. */
    assert_true(scope_distrust(s, 101 * SEC));
    assert_int_equal(scope_state(s), SCOPE_UNKNOWN);
    assert_int_equal(scope_version(s), 101 * SEC);
    assert_true(scope_due(s, 101 * SEC));
    scope_asking(s);
    assert_false(scope_due(s, 101 * SEC));
    /* Rewriting again, as before the doubt: statements prepared while in
     * doubt hold unrewritten texts, so this is a version of its own. */
    assert_true(scope_learn(s, &cat, 101 * SEC + 1000));
    assert_int_equal(scope_state(s), SCOPE_READY);
    assert_int_equal(scope_version(s), 101 * SEC + 1000);
    /* Another doubt within the second is not one. */
    assert_false(scope_distrust(s, 101 * SEC + 5000));
    assert_int_equal(scope_state(s), SCOPE_READY);
    assert_true(scope_distrust(s, 102 * SEC));

    /* The answer fails: asked again a second later, not before. */
    scope_asking(s);
    assert_true(scope_learn(s, NULL, 103 * SEC));
    assert_int_equal(scope_state(s), SCOPE_UNKNOWN);
    assert_false(scope_due(s, 103 * SEC + 999999999u));
    assert_true(scope_due(s, 104 * SEC));
    catalog_free(&cat);
    ruleset_unref(rs);

    /* A scope that rewrites nothing (its table missing) has no doubts: no
     * error can be a rewrite's. */
    rs = ruleset_new(parse_config(CONFIG), NULL);
    s = ruleset_scope(rs, "app", "alice");
    catalog_init(&cat);
    assert_true(scope_learn(s, &cat, SEC));
    assert_false(scope_distrust(s, 10 * SEC));
    assert_int_equal(scope_state(s), SCOPE_READY);
    ruleset_unref(rs);

    /* catalog_check_interval = 0: only doubts. */
    rs = ruleset_new(parse_config("[idemproxy]\ncatalog_check_interval = 0\n" CONFIG_TABLES),
                     NULL);
    s = ruleset_scope(rs, "app", "alice");
    app_catalog(&cat);
    assert_true(scope_learn(s, &cat, SEC));
    catalog_free(&cat);
    assert_false(scope_due(s, 100000 * SEC));
    assert_true(scope_distrust(s, 100000 * SEC));
    assert_true(scope_due(s, 100000 * SEC));
    ruleset_unref(rs);

    /* Nothing to ask where no table applies. */
    rs = ruleset_new(parse_config("[idemproxy]\n[table public.t]\ndatabase = other\n"
                                  "action = do_nothing\n"), NULL);
    s = ruleset_scope(rs, "db", "u");
    assert_false(scope_due(s, SEC));
    assert_false(scope_distrust(s, SEC));
    ruleset_unref(rs);
}

/* ---- decisions and the cache ------------------------------------------- */

static void test_decide_prefilter(void **state)
{
    (void)state;
    struct scope *s;
    struct ruleset *rs = ready_ruleset(&s);
    bool fresh = true;

    assert_null(decide(s, "SELECT 1", &fresh));
    assert_false(fresh);
    assert_null(decide(s, "INSERT INTO other_table VALUES (1)", &fresh));
    assert_false(fresh);
    assert_null(decide(s, "SELECT * FROM webhook_events", &fresh));
    assert_false(fresh);
    assert_null(decide(s, "", &fresh));
    assert_false(fresh);
    ruleset_unref(rs);
}

static void test_decide_rewrites(void **state)
{
    (void)state;
    struct scope *s;
    struct ruleset *rs = ready_ruleset(&s);
    const char *text = "INSERT INTO webhook_events (idempotency_key) VALUES ($1)";
    bool fresh = false;

    struct decision *d = decide(s, text, &fresh);
    assert_non_null(d);
    assert_true(fresh);
    assert_int_equal(d->result.reason, RR_REWRITTEN);
    assert_string_equal(d->result.text,
                        "INSERT INTO webhook_events (idempotency_key) VALUES ($1)" WE_P);
    assert_int_equal(d->result.text_len, strlen(d->result.text));
    assert_int_equal(d->result.nstmts, 1);
    assert_int_equal(d->result.stmts[0].target, APP_WE);
    /* One reference for the caller, one for the cache. */
    assert_int_equal(d->refs, 2);

    /* The same text again: the same decision, from the cache. */
    struct decision *again = decide(s, text, &fresh);
    assert_ptr_equal(again, d);
    assert_false(fresh);
    assert_int_equal(d->refs, 3);
    decision_unref(again);
    assert_int_equal(d->refs, 2);
    decision_unref(d);
    assert_int_equal(d->refs, 1);

    /* A text that passes the pre-filter but is not an INSERT is decided
     * (and cached) all the same. */
    d = decide(s, "SELECT 'insert into webhook_events'", &fresh);
    assert_non_null(d);
    assert_true(fresh);
    assert_null(d->result.text);
    assert_int_equal(d->result.nstmts, 0);
    decision_unref(d);
    d = decide(s, "SELECT 'insert into webhook_events'", &fresh);
    assert_false(fresh);
    decision_unref(d);

    /* Texts differing in one byte are different keys. */
    d = decide(s, "INSERT INTO webhook_events (idempotency_key) VALUES ($2)", &fresh);
    assert_true(fresh);
    assert_string_equal(d->result.text,
                        "INSERT INTO webhook_events (idempotency_key) VALUES ($2)" WE_P);
    decision_unref(d);

    /* shadow mode: decided and counted, never changed. */
    d = decide(s, "INSERT INTO orders VALUES ('x')", &fresh);
    assert_non_null(d);
    assert_null(d->result.text);
    assert_int_equal(d->result.nstmts, 1);
    assert_int_equal(d->result.stmts[0].target, APP_ORDERS);
    assert_int_equal(d->result.stmts[0].reason, RR_SHADOW);
    decision_unref(d);
    ruleset_unref(rs);
}

/* Whether a rewritten text is UTF-8 is decided with it, for each text of
 * a shape apart: the server refuses one that is not, where it checks. */
static void test_decide_utf8(void **state)
{
    (void)state;
    struct scope *s;
    struct ruleset *rs = ready_ruleset(&s);
    bool fresh;
    static const char *const texts[] = {
        "INSERT INTO webhook_events (idempotency_key) VALUES ('caf\xc3\xa9')",
        "INSERT INTO webhook_events (idempotency_key) VALUES ('caf\xe9')",
        "INSERT INTO webhook_events (idempotency_key) VALUES ('cafe')",
    };
    for (int repeats = 0; repeats < 2; repeats++) {
        for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
            struct decision *d = decide_as(s, texts[i], repeats, &fresh);
            assert_non_null(d);
            assert_non_null(d->result.text);
            assert_int_equal(d->not_utf8, i == 1);
            decision_unref(d);
        }
    }
    ruleset_unref(rs);
}

/* A text with constants is decided from its shape each time it comes in a
 * Query (the values differ from one to the next), but a Parse's text is
 * kept as it is: its repetitions get the cached decision itself. */
static void test_decide_parse_text_kept(void **state)
{
    (void)state;
    struct scope *s;
    struct ruleset *rs = ready_ruleset(&s);
    const char *text = "INSERT INTO webhook_events (idempotency_key, payload) VALUES ($1, 'x')";
    bool fresh = false;

    struct decision *q1 = decide(s, text, &fresh);
    assert_true(fresh);
    struct decision *q2 = decide(s, text, &fresh);
    assert_false(fresh);
    assert_ptr_not_equal(q2, q1);
    assert_int_equal(q2->refs, 1);
    assert_string_equal(q2->result.text, q1->result.text);

    /* From the shape the first time, then kept. */
    struct decision *p1 = decide_as(s, text, true, &fresh);
    assert_false(fresh);
    assert_string_equal(p1->result.text, q1->result.text);
    struct decision *p2 = decide_as(s, text, true, &fresh);
    assert_false(fresh);
    assert_ptr_equal(p2, p1);
    assert_int_equal(p1->refs, 3);
    /* A Query of the same text now finds it too. */
    struct decision *q3 = decide(s, text, &fresh);
    assert_ptr_equal(q3, p1);

    /* New to the proxy in a Parse: decided, then kept as it is. */
    const char *other = "INSERT INTO webhook_events (idempotency_key) VALUES (7)";
    struct decision *o1 = decide_as(s, other, true, &fresh);
    assert_true(fresh);
    struct decision *o2 = decide_as(s, other, true, &fresh);
    assert_false(fresh);
    assert_ptr_equal(o2, o1);

    decision_unref(q1);
    decision_unref(q2);
    decision_unref(q3);
    decision_unref(p1);
    decision_unref(p2);
    decision_unref(o1);
    decision_unref(o2);
    ruleset_unref(rs);
}

/* A Query's INSERT with its values in the text runs as its shape's
 * statement with parameters: built once for the shape, with each text's
 * decision saying where its own constants are. */
static void test_decide_statement_with_parameters(void **state)
{
    (void)state;
    struct scope *s;
    struct ruleset *rs = ready_ruleset(&s);
    const char *first = "INSERT INTO webhook_events (idempotency_key, payload) VALUES (42, 'a')";
    const char *second = "INSERT INTO webhook_events (idempotency_key, payload) VALUES (7, 'it''s')";
    bool fresh;

    struct decision *a = decide(s, first, &fresh);
    assert_true(fresh);
    const struct params_stmt *ps = decision_params(a);
    assert_non_null(ps);
    assert_string_equal(ps->text, "INSERT INTO webhook_events (idempotency_key, payload) "
                                  "VALUES ($1, $2)" WE_P);
    assert_int_equal(ps->nconsts, 2);
    assert_int_equal(a->nconsts, 2);
    assert_memory_equal(first + a->consts[0].at, "42", a->consts[0].len);
    assert_memory_equal(first + a->consts[1].at, "'a'", a->consts[1].len);

    struct decision *b = decide(s, second, &fresh);
    assert_false(fresh);
    assert_ptr_equal(decision_params(b), ps);
    assert_int_equal(b->nconsts, 2);
    assert_memory_equal(second + b->consts[0].at, "7", b->consts[0].len);
    assert_memory_equal(second + b->consts[1].at, "'it''s'", b->consts[1].len);
    decision_unref(a);
    decision_unref(b);

    /* Not for a text of several statements, a constant outside the VALUES
     * items, or a table the rules leave alone. */
    const char *none[] = {
        "INSERT INTO webhook_events (idempotency_key) VALUES (1); SELECT 1",
        "INSERT INTO webhook_events (idempotency_key) SELECT 1",
        "INSERT INTO orders VALUES ('x')",
    };
    for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++) {
        struct decision *d = decide(s, none[i], &fresh);
        assert_non_null(d);
        assert_null(decision_params(d));
        decision_unref(d);
    }
    ruleset_unref(rs);
}

/* A text over 16 kB whose constants are few has a short shape: it is
 * cached by it, and runs as the shape's statement. */
static void test_decide_long_text_short_shape(void **state)
{
    (void)state;
    struct scope *s;
    struct ruleset *rs = ready_ruleset(&s);
    const char *head = "INSERT INTO webhook_events (idempotency_key, payload) VALUES (1, '";
    size_t doc = 40u << 10;
    char *text = malloc(strlen(head) + doc + 3);
    assert_non_null(text);
    strcpy(text, head);
    memset(text + strlen(head), 'x', doc);
    strcpy(text + strlen(head) + doc, "')");
    bool fresh;

    struct decision *a = decide(s, text, &fresh);
    assert_true(fresh);
    assert_non_null(decision_params(a));
    text[strlen(head)] = 'y';
    struct decision *b = decide(s, text, &fresh);
    assert_false(fresh);
    assert_ptr_equal(decision_params(b), decision_params(a));
    assert_int_equal(b->consts[1].len, doc + 2);
    decision_unref(a);
    decision_unref(b);
    free(text);
    ruleset_unref(rs);
}

/* A decision outlives its ruleset and the cache as long as a request holds
 * it (under the sanitizer a use after free would show). */
static void test_decision_outlives_ruleset(void **state)
{
    (void)state;
    struct scope *s;
    struct ruleset *rs = ready_ruleset(&s);
    bool fresh = false;

    struct decision *d = decide(s, "INSERT INTO webhook_events VALUES (1)", &fresh);
    assert_non_null(d);
    ruleset_unref(rs);
    assert_int_equal(d->refs, 1);
    assert_string_equal(d->result.text, "INSERT INTO webhook_events VALUES (1)" WE_P);
    decision_unref(d);
}

static char *insert_text(unsigned i, size_t pad)
{
    char head[96];
    int n = snprintf(head, sizeof(head), "INSERT INTO webhook_events VALUES ('%u') /*", i);
    assert_true(n > 0);
    char *t = malloc((size_t)n + pad + 3);
    assert_non_null(t);
    memcpy(t, head, (size_t)n);
    memset(t + n, ' ', pad);
    memcpy(t + (size_t)n + pad, "*/", 3);
    return t;
}

/* Decides text i and checks the decision is the right one. */
static bool decide_insert(struct scope *s, unsigned i, size_t pad)
{
    char *text = insert_text(i, pad);
    bool fresh;
    struct decision *d = decide(s, text, &fresh);
    assert_non_null(d);
    assert_int_equal(d->result.reason, RR_REWRITTEN);
    size_t len = strlen(text);
    /* The clause goes after the VALUES list, before the comment. */
    const char *comment = strstr(text, " /*");
    size_t at = (size_t)(comment - text);
    assert_int_equal(d->result.text_len, len + strlen(WE_P));
    assert_memory_equal(d->result.text, text, at);
    assert_memory_equal(d->result.text + at, WE_P, strlen(WE_P));
    assert_string_equal(d->result.text + at + strlen(WE_P), text + at);
    decision_unref(d);
    free(text);
    return fresh;
}

/* Past 4096 texts the least recently used go; what stays and what comes
 * back are still decided right. */
static void test_cache_eviction_by_count(void **state)
{
    (void)state;
    struct scope *s;
    struct ruleset *rs = ready_ruleset(&s);
    bool fresh = false;

    /* Text 0 is held by a request while the cache drops it. */
    char *t0 = insert_text(0, 0);
    struct decision *held = decide(s, t0, &fresh);
    assert_true(fresh);
    for (unsigned i = 1; i < 4096; i++)
        assert_true(decide_insert(s, i, 0));
    /* 4096 in the cache: all still there. Touching 1 makes it the newest. */
    assert_false(decide_insert(s, 0, 0));
    assert_false(decide_insert(s, 1, 0));
    /* One more pushes out the least recently used: 2, not 0 or 1. */
    assert_true(decide_insert(s, 4096, 0));
    assert_true(decide_insert(s, 2, 0));
    assert_false(decide_insert(s, 1, 0));
    assert_false(decide_insert(s, 0, 0));
    for (unsigned i = 5000; i < 10000; i++)
        assert_true(decide_insert(s, i, 0));
    assert_true(decide_insert(s, 0, 0));
    assert_int_equal(held->refs, 1);
    assert_string_equal(held->result.text, "INSERT INTO webhook_events VALUES ('0')" WE_P " /**/");
    decision_unref(held);
    free(t0);
    ruleset_unref(rs);
}

/* The cache also holds at most 8 MB of text: 600 texts of 15 KB do not all
 * stay, and those that go are decided again. */
static void test_cache_eviction_by_size(void **state)
{
    (void)state;
    struct scope *s;
    struct ruleset *rs = ready_ruleset(&s);
    const size_t pad = 15u << 10;

    for (unsigned i = 0; i < 600; i++)
        assert_true(decide_insert(s, i, pad));
    assert_false(decide_insert(s, 599, pad));
    assert_true(decide_insert(s, 0, pad));
    ruleset_unref(rs);
}

/* Texts over 16 KB are decided every time and never cached. */
static void test_cache_skips_large_texts(void **state)
{
    (void)state;
    struct scope *s;
    struct ruleset *rs = ready_ruleset(&s);
    const size_t base = strlen("INSERT INTO webhook_events VALUES ('7') /**/");
    bool fresh;

    /* Exactly 16 KB is cached; one byte more is not. */
    assert_true(decide_insert(s, 7, (16u << 10) - base));
    assert_false(decide_insert(s, 7, (16u << 10) - base));
    assert_true(decide_insert(s, 7, (16u << 10) - base + 1));
    assert_true(decide_insert(s, 7, (16u << 10) - base + 1));

    char *big = insert_text(8, 100000);
    struct decision *a = decide(s, big, &fresh);
    assert_true(fresh);
    struct decision *b = decide(s, big, &fresh);
    assert_true(fresh);
    assert_ptr_not_equal(a, b);
    /* Only the caller holds it. */
    assert_int_equal(a->refs, 1);
    decision_unref(a);
    decision_unref(b);
    free(big);
    assert_true(decide_insert(s, 8, 100000));
    ruleset_unref(rs);
}

/* ---- counters ---------------------------------------------------------- */

static void test_counters(void **state)
{
    (void)state;
    struct scope *s;
    struct ruleset *rs = ready_ruleset(&s);
    bool fresh = false;

    for (int i = 0; i < 3; i++) {
        struct decision *d = decide(s, "INSERT INTO webhook_events VALUES ('a')", &fresh);
        scope_count(s, d);
        decision_unref(d);
    }
    /* Two statements, one per table. */
    struct decision *d = decide(s, "INSERT INTO webhook_events VALUES ('a'); "
                                   "INSERT INTO orders VALUES ('b')", &fresh);
    assert_int_equal(d->result.nstmts, 2);
    scope_count(s, d);
    decision_unref(d);
    /* Not an INSERT into a registered table, and not even a candidate. */
    d = decide(s, "SELECT 'insert into webhook_events'", &fresh);
    scope_count(s, d);
    decision_unref(d);
    d = decide(s, "SELECT 1", &fresh);
    assert_null(d);
    scope_count(s, d);
    scope_count(s, NULL);
    scope_count_reason(s, RR_SESSION);
    scope_count_reason(s, RR_TOO_LARGE);
    scope_count_reason(s, RR_TOO_LARGE);

    /* Per table by the configuration's numbering, not the scope's. */
    assert_int_equal(ruleset_table_count(rs, CFG_WE, RR_REWRITTEN), 4);
    assert_int_equal(ruleset_table_count(rs, CFG_ORDERS, RR_SHADOW), 1);
    assert_int_equal(ruleset_table_count(rs, CFG_ORDERS, RR_REWRITTEN), 0);
    for (int r = 0; r < RR_COUNT; r++)
        assert_int_equal(ruleset_table_count(rs, CFG_AUDIT, (enum rewrite_reason)r), 0);
    /* Out of range is 0, not a crash. */
    assert_int_equal(ruleset_table_count(rs, 3, RR_REWRITTEN), 0);

    /* The SELECT that passed the pre-filter is no INSERT either. */
    assert_int_equal(ruleset_other_count(rs, RR_NOT_INSERT), 3);
    assert_int_equal(ruleset_other_count(rs, RR_SESSION), 1);
    assert_int_equal(ruleset_other_count(rs, RR_TOO_LARGE), 2);
    assert_int_equal(ruleset_other_count(rs, RR_REWRITTEN), 0);
    uint64_t other = 0;
    for (int r = 0; r < RR_COUNT; r++)
        other += ruleset_other_count(rs, (enum rewrite_reason)r);
    assert_int_equal(other, 3 + 1 + 2);

    /* Every scope of a ruleset counts into the same counters. */
    struct scope *bob = ruleset_scope(rs, "app", "bob");
    scope_count_reason(bob, RR_SESSION);
    assert_int_equal(ruleset_other_count(rs, RR_SESSION), 2);

    ruleset_unref(rs);

    /* Or in the caller's, which outlive the ruleset: a gauge of its scopes
     * too, given back when it goes. */
    struct counter kept[RR_COUNT] = { 0 }, scopes = { 0 };
    const struct ruleset_counters mine = { NULL, kept, &scopes };
    rs = ruleset_new(parse_config(CONFIG), &mine);
    assert_non_null(rs);
    bob = ruleset_scope(rs, "app", "bob");
    s = ruleset_scope(rs, "app", "alice");
    assert_int_equal(counter_get(&scopes), 2);
    scope_count_reason(bob, RR_TOO_LARGE);
    scope_count(s, NULL);
    assert_int_equal(counter_get(&kept[RR_TOO_LARGE]), 1);
    assert_int_equal(counter_get(&kept[RR_NOT_INSERT]), 1);
    assert_int_equal(ruleset_other_count(rs, RR_TOO_LARGE), 1);
    ruleset_unref(rs);
    assert_int_equal(counter_get(&kept[RR_TOO_LARGE]), 1);
    assert_int_equal(counter_get(&scopes), 0);
}

/* ---- tables and partitions --------------------------------------------- */

static void test_find_table(void **state)
{
    (void)state;
    struct scope *s;
    struct ruleset *rs = ready_ruleset(&s);

    assert_int_equal(scope_find_table(s, "public", "webhook_events"), APP_WE);
    assert_int_equal(scope_find_table(s, "public", "orders"), APP_ORDERS);
    /* A partition, at any depth and in any schema, maps to its root. */
    assert_int_equal(scope_find_table(s, "public", "webhook_events_2024_01"), APP_WE);
    assert_int_equal(scope_find_table(s, "archive", "webhook_events_2023"), APP_WE);
    assert_int_equal(scope_find_table(s, "public", "webhook_events_2023"), -1);
    assert_int_equal(scope_find_table(s, "archive", "webhook_events"), -1);
    /* Another database's table is not this scope's. */
    assert_int_equal(scope_find_table(s, "public", "audit_log"), -1);
    assert_int_equal(scope_find_table(s, "public", "Orders"), -1);
    ruleset_unref(rs);
}

/* ---- lifetime ---------------------------------------------------------- */

/* The proxy drops the ruleset on reload while a connection still runs
 * under it: its scopes stay usable until the last unref. */
static void test_ruleset_refs(void **state)
{
    (void)state;
    struct scope *s;
    struct ruleset *rs = ready_ruleset(&s);
    bool fresh = false;

    assert_ptr_equal(ruleset_ref(rs), rs);
    ruleset_unref(rs); /* the proxy's */
    struct decision *d = decide(s, "INSERT INTO webhook_events VALUES ('late')", &fresh);
    assert_non_null(d);
    assert_true(fresh);
    scope_count(s, d);
    assert_int_equal(ruleset_table_count(rs, CFG_WE, RR_REWRITTEN), 1);
    assert_int_equal(scope_find_table(s, "public", "webhook_events_2024_01"), APP_WE);
    assert_ptr_equal(ruleset_scope(rs, "app", "alice"), s);
    decision_unref(d);
    ruleset_unref(rs); /* the connection's */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ruleset_owns_config),
        cmocka_unit_test(test_ruleset_without_tables),
        cmocka_unit_test(test_scope_identity),
        cmocka_unit_test(test_scope_identity_fits),
        cmocka_unit_test(test_scope_identity_role),
        cmocka_unit_test(test_scope_login_identity),
        cmocka_unit_test(test_scope_tables_by_database),
        cmocka_unit_test(test_scope_learn),
        cmocka_unit_test(test_scope_due),
        cmocka_unit_test(test_decide_prefilter),
        cmocka_unit_test(test_decide_rewrites),
        cmocka_unit_test(test_decide_utf8),
        cmocka_unit_test(test_decide_parse_text_kept),
        cmocka_unit_test(test_decide_statement_with_parameters),
        cmocka_unit_test(test_decide_long_text_short_shape),
        cmocka_unit_test(test_decision_outlives_ruleset),
        cmocka_unit_test(test_cache_eviction_by_count),
        cmocka_unit_test(test_cache_eviction_by_size),
        cmocka_unit_test(test_cache_skips_large_texts),
        cmocka_unit_test(test_counters),
        cmocka_unit_test(test_find_table),
        cmocka_unit_test(test_ruleset_refs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
