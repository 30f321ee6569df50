/*
 * Unit tests for session: the prepared statements and portals a client
 * names, followed from Parse to Bind to Execute so that the proxy knows
 * when an Execute runs a recognised INSERT.
 *
 * What the server does decides what is right here. A portal runs the plan
 * it was bound with: re-defining or closing its statement afterwards does
 * not change it, so a portal keeps the table it was bound to. A Bind
 * replaces any earlier portal of the name, also when the proxy does not
 * know the statement. Statements and portals are separate name spaces, and
 * "" is the unnamed one of each. Whenever the proxy is unsure it must know
 * less, never more: a forgotten name only means an error is not translated.
 *
 * Every session is freed at the end of its test: under the ASan build,
 * LeakSanitizer reports anything session_free() leaves behind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rewrite.h"
#include "session.h"

/* ---- a checker that reports every mismatch ------------------------------ */

static int failures;

static const char *shown(const char *name)
{
    /* Long names are cut in messages; what differs is their tail. */
    static char buf[4][96];
    static int next;
    char *out = buf[next++ % 4];
    if (!name)
        return "(none)";
    size_t len = strlen(name);
    if (len < 64)
        snprintf(out, sizeof(buf[0]), "\"%s\"", name);
    else
        snprintf(out, sizeof(buf[0]), "\"%.16s...%s\" (%zu bytes)", name, name + len - 16, len);
    return out;
}

/* Portal reports schema.table, or nothing when schema is NULL. */
static void check_portal_at(const struct session *s, const char *portal, const char *schema,
                            const char *table, int line)
{
    const char *got_schema = NULL, *got_table = NULL;
    bool found = session_portal(s, portal, &got_schema, &got_table);

    if (!schema) {
        if (found) {
            print_error("line %d: portal %s: expected nothing, got %s.%s\n", line,
                        shown(portal), shown(got_schema), shown(got_table));
            failures++;
        }
        return;
    }
    if (!found) {
        print_error("line %d: portal %s: expected %s.%s, got nothing\n", line, shown(portal),
                    shown(schema), shown(table));
        failures++;
    } else if (!got_schema || !got_table || strcmp(got_schema, schema) != 0 ||
               strcmp(got_table, table) != 0) {
        print_error("line %d: portal %s: expected %s.%s, got %s.%s\n", line, shown(portal),
                    shown(schema), shown(table), shown(got_schema), shown(got_table));
        failures++;
    }
}

#define check_portal(s, portal, schema, table)                                 \
    check_portal_at((s), (portal), (schema), (table), __LINE__)
#define check_none(s, portal) check_portal_at((s), (portal), NULL, NULL, __LINE__)

/* Parse and Bind must succeed here: memory is plentiful. */
#define PARSE(s, name, schema, table)                                          \
    assert_true(session_parse((s), (name), (schema), (table), 0, NULL, 0, 0))
#define BIND(s, portal, statement) assert_true(session_bind((s), (portal), (statement)))

static void finish(void)
{
    if (failures)
        fail_msg("%d mismatches", failures);
}

static int setup(void **state)
{
    struct session *s = malloc(sizeof(*s));
    if (!s)
        return -1;
    session_init(s);
    *state = s;
    failures = 0;
    return 0;
}

static int teardown(void **state)
{
    struct session *s = *state;
    session_free(s);
    free(s);
    return 0;
}

/* ---- Parse, Bind, Execute ------------------------------------------------ */

static void test_bound_portal_reports(void **state)
{
    struct session *s = *state;

    PARSE(s, "ins", "public", "orders");
    BIND(s, "p", "ins");
    check_portal(s, "p", "public", "orders");
    /* Two portals on one statement. */
    BIND(s, "q", "ins");
    check_portal(s, "q", "public", "orders");
    check_portal(s, "p", "public", "orders");
    /* Names never bound, and the statement's name taken as a portal's:
     * the two are separate name spaces. */
    check_none(s, "r");
    check_none(s, "ins");
    check_none(s, "");
    /* Names are whole strings, not prefixes. */
    check_none(s, "pp");
    BIND(s, "p2", "ins2");
    check_none(s, "p2");
    BIND(s, "p3", "in");
    check_none(s, "p3");
    finish();
}

static void test_names_and_tables_are_copied(void **state)
{
    struct session *s = *state;
    char name[16], schema[16], table[16], portal[16];

    /* The proxy parses from its read buffer, which is reused at once. */
    strcpy(name, "stmt");
    strcpy(schema, "app");
    strcpy(table, "events");
    PARSE(s, name, schema, table);
    memset(schema, 'x', sizeof(schema) - 1);
    memset(table, 'y', sizeof(table) - 1);
    strcpy(portal, "cur");
    BIND(s, portal, name);
    memset(name, 'z', sizeof(name) - 1);
    memset(portal, 'w', sizeof(portal) - 1);
    check_portal(s, "cur", "app", "events");
    BIND(s, "cur2", "stmt");
    check_portal(s, "cur2", "app", "events");
    finish();
}

static void test_unnamed(void **state)
{
    struct session *s = *state;

    PARSE(s, "", "public", "orders");
    BIND(s, "", "");
    check_portal(s, "", "public", "orders");
    /* A named portal on the unnamed statement. */
    BIND(s, "named", "");
    check_portal(s, "named", "public", "orders");
    /* The unnamed portal on a named statement. */
    PARSE(s, "s", "public", "items");
    BIND(s, "", "s");
    check_portal(s, "", "public", "items");
    /* Every Parse of "" replaces it (the server drops the old one first). */
    PARSE(s, "", NULL, NULL);
    BIND(s, "", "");
    check_none(s, "");
    check_portal(s, "named", "public", "orders");
    /* "" and " " are different names. */
    PARSE(s, " ", "public", "orders");
    BIND(s, "", "");
    check_none(s, "");
    BIND(s, " ", " ");
    check_portal(s, " ", "public", "orders");
    check_none(s, "");
    finish();
}

/* A portal runs the plan it was bound with. */
static void test_reparse(void **state)
{
    struct session *s = *state;

    PARSE(s, "s", "public", "orders");
    BIND(s, "before", "s");
    PARSE(s, "s", NULL, NULL);
    BIND(s, "after", "s");
    check_portal(s, "before", "public", "orders");
    check_none(s, "after");

    /* Re-defined as an INSERT into another table. */
    PARSE(s, "s", "sales", "items");
    BIND(s, "again", "s");
    check_portal(s, "before", "public", "orders");
    check_none(s, "after");
    check_portal(s, "again", "sales", "items");

    /* Re-defined as the same table: nothing changes. */
    PARSE(s, "s", "sales", "items");
    BIND(s, "same", "s");
    check_portal(s, "same", "sales", "items");
    check_portal(s, "again", "sales", "items");

    /* Forgetting a name never forgotten is harmless. */
    PARSE(s, "never", NULL, NULL);
    BIND(s, "pn", "never");
    check_none(s, "pn");
    finish();
}

static void test_close_statement(void **state)
{
    struct session *s = *state;

    PARSE(s, "s", "public", "orders");
    PARSE(s, "t", "public", "items");
    BIND(s, "p", "s");
    /* A portal of the statement's name, which Close 'S' must not touch. */
    BIND(s, "s", "s");
    session_close(s, 'S', "s");
    BIND(s, "after", "s");
    check_none(s, "after");
    check_portal(s, "p", "public", "orders");
    check_portal(s, "s", "public", "orders");
    /* The other statement stays. */
    BIND(s, "q", "t");
    check_portal(s, "q", "public", "items");
    /* Closing what is not there (again, or never named) is no error. */
    session_close(s, 'S', "s");
    session_close(s, 'S', "nothing");
    session_close(s, 'S', "");
    check_portal(s, "p", "public", "orders");
    BIND(s, "q2", "t");
    check_portal(s, "q2", "public", "items");
    finish();
}

/* Whether an Execute of portal runs its statement (session_execute). */
static bool first_run(struct session *s, const char *portal)
{
    const char *schema, *table;
    bool first = false;
    unsigned effects;

    session_execute(s, portal, &schema, &table, &first, &effects);
    return first;
}

/* A portal's statement runs at its first Execute after each Bind; the
 * same Bind again (a driver that does not prepare) starts it over. */
static void test_first_run(void **state)
{
    struct session *s = *state;

    PARSE(s, "", "public", "orders");
    BIND(s, "", "");
    assert_true(first_run(s, ""));
    assert_false(first_run(s, ""));
    BIND(s, "", "");
    assert_true(first_run(s, ""));
    BIND(s, "p", "");
    assert_true(first_run(s, "p"));
    assert_false(first_run(s, ""));
    /* Portals of statements the session does not keep are not known. */
    BIND(s, "q", "unknown");
    assert_false(first_run(s, "q"));
    assert_false(first_run(s, "never bound"));
}

static void test_close_portal(void **state)
{
    struct session *s = *state;

    PARSE(s, "s", "public", "orders");
    BIND(s, "p", "s");
    BIND(s, "q", "s");
    PARSE(s, "p", "public", "items"); /* a statement of the portal's name */
    session_close(s, 'P', "p");
    check_none(s, "p");
    check_portal(s, "q", "public", "orders");
    /* The statements stay: a new portal can be bound again. */
    BIND(s, "p", "s");
    check_portal(s, "p", "public", "orders");
    BIND(s, "r", "p");
    check_portal(s, "r", "public", "items");
    session_close(s, 'P', "nothing");
    session_close(s, 'P', "");
    check_portal(s, "q", "public", "orders");
    /* The unnamed portal closes like any other. */
    BIND(s, "", "s");
    session_close(s, 'P', "");
    check_none(s, "");
    check_portal(s, "q", "public", "orders");
    finish();
}

/* Close with a subtype other than 'S' or 'P' makes the server fail; it
 * closes nothing, so no statement may be forgotten... and whatever the
 * proxy does with portals, it must not start reporting one. */
static void test_close_bad_kind(void **state)
{
    struct session *s = *state;

    PARSE(s, "x", "public", "orders");
    session_close(s, 'X', "x");
    session_close(s, 's', "x");
    session_close(s, 0, "x");
    BIND(s, "p", "x");
    check_portal(s, "p", "public", "orders");
    session_close(s, 'X', "nothing");
    check_none(s, "nothing");
    finish();
}

/* The server replaces a portal on Bind (the unnamed one always; a named
 * one after it was closed): the proxy must not keep the old one's table
 * when it does not know the new statement. */
static void test_bind_unknown_statement(void **state)
{
    struct session *s = *state;

    PARSE(s, "s", "public", "orders");
    BIND(s, "p", "s");
    BIND(s, "", "s");
    check_portal(s, "p", "public", "orders");
    BIND(s, "p", "unknown");
    check_none(s, "p");
    BIND(s, "", "unknown");
    check_none(s, "");
    /* A never-seen portal bound to an unknown statement. */
    BIND(s, "fresh", "unknown");
    check_none(s, "fresh");
    /* Bind to a known statement replaces an unknown one's portal. */
    BIND(s, "p", "s");
    check_portal(s, "p", "public", "orders");
    /* Re-Bind to another known statement. */
    PARSE(s, "t", "other", "table");
    BIND(s, "p", "t");
    check_portal(s, "p", "other", "table");
    finish();
}

static void test_clear(void **state)
{
    struct session *s = *state;

    assert_true(session_empty(s));
    PARSE(s, "", "public", "orders");
    assert_false(session_empty(s));
    PARSE(s, "s", "public", "orders");
    PARSE(s, "t", "public", "items");
    BIND(s, "", "");
    BIND(s, "p", "s");
    BIND(s, "q", "t");
    session_clear(s);
    assert_true(session_empty(s));
    check_none(s, "");
    check_none(s, "p");
    check_none(s, "q");
    /* The statements went too. */
    BIND(s, "p", "s");
    BIND(s, "", "");
    BIND(s, "q", "t");
    check_none(s, "p");
    check_none(s, "");
    check_none(s, "q");
    /* Clearing twice, and using the session afterwards. */
    session_clear(s);
    session_clear(s);
    PARSE(s, "s", "public", "orders");
    BIND(s, "p", "s");
    check_portal(s, "p", "public", "orders");
    finish();
}

/* A named statement's kept Parse comes back once per change of version,
 * and goes with the name. */
static void test_outdated(void **state)
{
    struct session *s = *state;
    static const uint8_t body[] = "s\0INSERT INTO orders VALUES ($1)\0\0\0";
    size_t len = 0;

    assert_true(session_parse(s, "s", "public", "orders", 0, body, sizeof(body), 7));
    assert_null(session_outdated(s, "s", 7, &len));
    const uint8_t *kept = session_outdated(s, "s", 9, &len);
    assert_non_null(kept);
    assert_int_equal(len, sizeof(body));
    assert_memory_equal(kept, body, sizeof(body));
    /* Prepared again by the caller: up to date under 9. */
    assert_null(session_outdated(s, "s", 9, &len));
    assert_non_null(session_outdated(s, "s", 7, &len));
    /* The translation bookkeeping is unchanged by it. */
    BIND(s, "p", "s");
    check_portal(s, "p", "public", "orders");
    /* Without a kept Parse, or an unknown name: nothing. */
    PARSE(s, "t", "public", "orders");
    assert_null(session_outdated(s, "t", 1, &len));
    assert_null(session_outdated(s, "nope", 1, &len));
    /* Closed, or redefined as something else: the Parse goes too. */
    session_close(s, 'S', "s");
    assert_null(session_outdated(s, "s", 11, &len));
    assert_true(session_parse(s, "s", "public", "orders", 0, body, sizeof(body), 7));
    PARSE(s, "s", NULL, NULL);
    assert_null(session_outdated(s, "s", 11, &len));
    /* A kept Parse replaces an entry that said the same without one. */
    PARSE(s, "u", "public", "orders");
    assert_true(session_parse(s, "u", "public", "orders", 0, body, sizeof(body), 7));
    assert_non_null(session_outdated(s, "u", 8, &len));
    finish();
}

/* The effects on the session's identity of what an Execute of portal
 * runs. */
static unsigned executes_effects(struct session *s, const char *portal)
{
    const char *schema, *table;
    bool first;
    unsigned effects = ~0u;

    session_execute(s, portal, &schema, &table, &first, &effects);
    return effects;
}

/* A statement with effects on the session's identity (one that may change
 * it, one that ends what SET LOCAL did) is kept although it inserts into
 * no registered table, and each Execute of a portal bound to it says so;
 * it never reads as an INSERT. Redefined, closed or unknown, it says
 * nothing. */
static void test_identity_statements(void **state)
{
    struct session *s = *state;

    assert_true(session_parse(s, "set", NULL, NULL, REWRITE_CHANGES_IDENTITY, NULL, 0, 0));
    BIND(s, "p", "set");
    check_none(s, "p");
    assert_int_equal(executes_effects(s, "p"), REWRITE_CHANGES_IDENTITY);
    assert_int_equal(executes_effects(s, "p"), REWRITE_CHANGES_IDENTITY);
    assert_int_equal(executes_effects(s, "nope"), 0);
    assert_true(session_parse(s, "commit", NULL, NULL, REWRITE_ENDS_LOCAL, NULL, 0, 0));
    BIND(s, "c", "commit");
    assert_int_equal(executes_effects(s, "c"), REWRITE_ENDS_LOCAL);
    /* An INSERT that may change it too (a set_config in its VALUES). */
    assert_true(session_parse(s, "", "public", "orders", REWRITE_CHANGES_IDENTITY, NULL, 0, 0));
    BIND(s, "", "");
    check_portal(s, "", "public", "orders");
    assert_int_equal(executes_effects(s, ""), REWRITE_CHANGES_IDENTITY);
    /* The same name parsed again as something harmless. */
    PARSE(s, "set", NULL, NULL);
    BIND(s, "p", "set");
    assert_int_equal(executes_effects(s, "p"), 0);
    assert_true(session_parse(s, "set", NULL, NULL, REWRITE_CHANGES_IDENTITY, NULL, 0, 0));
    BIND(s, "q", "set");
    session_close(s, 'P', "q");
    assert_int_equal(executes_effects(s, "q"), 0);
    assert_false(session_empty(s));
    session_clear(s);
    assert_true(session_empty(s));
    finish();
}

/* What a statement may do is known for those it keeps and, until it
 * forgets some the server may still hold, for any other (it keeps only
 * those that may do something). */
static void test_effects_known(void **state)
{
    struct session *s = *state;
    unsigned effects = 99;

    assert_true(session_parse(s, "commit", NULL, NULL, REWRITE_ENDS_LOCAL, NULL, 0, 0));
    PARSE(s, "select", NULL, NULL);
    assert_true(session_effects(s, "commit", &effects));
    assert_int_equal(effects, REWRITE_ENDS_LOCAL);
    assert_true(session_effects(s, "select", &effects));
    assert_int_equal(effects, 0);
    assert_true(session_effects(s, "never_seen", &effects));
    /* DEALLOCATE name, which the server may skip. */
    session_forget(s, "commit");
    assert_false(session_effects(s, "commit", &effects));
    assert_false(session_effects(s, "select", &effects));
    assert_true(session_parse(s, "commit", NULL, NULL, REWRITE_ENDS_LOCAL, NULL, 0, 0));
    assert_true(session_effects(s, "commit", &effects));
    assert_int_equal(effects, REWRITE_ENDS_LOCAL);
    session_clear(s);
    assert_false(session_effects(s, "commit", &effects));
    finish();
}

/* An entry detached for a Parse that may yet be refused still counts as
 * known, even with nothing else kept (a DEALLOCATE that follows must be
 * read), until it comes back or is freed. */
static void test_detached_known(void **state)
{
    struct session *s = *state;

    PARSE(s, "s", "public", "orders");
    PARSE(s, "t", "public", "orders");
    struct session_entry *e = session_detach(s, "s");
    struct session_entry *f = session_detach(s, "t");
    assert_non_null(e);
    assert_non_null(f);
    assert_null(session_detach(s, "s"));
    assert_false(session_empty(s));
    session_reattach(s, e);
    BIND(s, "p", "s");
    check_portal(s, "p", "public", "orders");
    session_clear(s);
    assert_false(session_empty(s));
    session_entry_free(s, f);
    assert_true(session_empty(s));
    finish();
}

/* What the server holds for a statement is known once it is sent, only
 * for a name the session keeps, and forgotten by a Parse of the name, or
 * for every name at once. */
static void test_sent_text(void **state)
{
    struct session *s = *state;

    assert_false(session_holds(s, "s", 7));
    session_sent(s, "s", 7);
    assert_false(session_holds(s, "s", 7));
    PARSE(s, "s", "public", "orders");
    assert_false(session_holds(s, "s", 7));
    session_sent(s, "s", 7);
    assert_true(session_holds(s, "s", 7));
    assert_false(session_holds(s, "s", 8));
    assert_false(session_holds(s, "t", 7));
    PARSE(s, "s", "public", "orders");
    assert_false(session_holds(s, "s", 7));
    session_sent(s, "s", 9);
    PARSE(s, "u", "public", "orders");
    session_sent(s, "u", 9);
    session_unsent_all(s);
    assert_false(session_holds(s, "s", 9));
    assert_false(session_holds(s, "u", 9));
    finish();
}

/* A session freed and initialised again is empty and usable; freeing an
 * empty one is fine. */
static void test_free_and_reuse(void **state)
{
    (void)state;
    struct session s;

    failures = 0;
    session_init(&s);
    session_free(&s);
    session_init(&s);
    PARSE(&s, "s", "public", "orders");
    BIND(&s, "p", "s");
    session_free(&s);
    session_init(&s);
    check_none(&s, "p");
    BIND(&s, "p", "s");
    check_none(&s, "p");
    PARSE(&s, "s", "public", "orders");
    BIND(&s, "p", "s");
    check_portal(&s, "p", "public", "orders");
    session_free(&s);
    finish();
}

/* ---- many names ----------------------------------------------------------- */

#define MANY 1000

static void name_of(char *out, size_t cap, const char *prefix, int i)
{
    snprintf(out, cap, "%s%d", prefix, i);
}

/* Statement i inserts into schema_<i % 7>.table_<i>; every third is not
 * an INSERT. Portal i is bound to statement (i * 7) % MANY. */
static int stmt_of_portal(int i)
{
    return (i * 7) % MANY;
}

static bool stmt_known(int i)
{
    return i % 3 != 0;
}

static void expect_bound(const struct session *s, int portal, int stmt, int line)
{
    char p[32], schema[32], table[32];

    name_of(p, sizeof(p), "p", portal);
    if (stmt < 0 || !stmt_known(stmt)) {
        check_portal_at(s, p, NULL, NULL, line);
        return;
    }
    name_of(schema, sizeof(schema), "schema_", stmt % 7);
    name_of(table, sizeof(table), "table_", stmt);
    check_portal_at(s, p, schema, table, line);
}

static void test_many_names(void **state)
{
    struct session *s = *state;
    char name[32], schema[32], table[32];

    for (int i = 0; i < MANY; i++) {
        name_of(name, sizeof(name), "s", i);
        name_of(schema, sizeof(schema), "schema_", i % 7);
        name_of(table, sizeof(table), "table_", i);
        PARSE(s, name, stmt_known(i) ? schema : NULL, stmt_known(i) ? table : NULL);
    }
    for (int i = 0; i < MANY; i++) {
        char p[32];
        name_of(p, sizeof(p), "p", i);
        name_of(name, sizeof(name), "s", stmt_of_portal(i));
        BIND(s, p, name);
    }
    for (int i = 0; i < MANY; i++)
        expect_bound(s, i, stmt_of_portal(i), __LINE__);
    /* p1, p10 and p100 are prefixes of one another and each reported its
     * own table above; one past the end was never bound. */
    check_none(s, "p1000");

    /* Close every odd statement: portals keep their tables; new portals
     * bound to those names report nothing. */
    for (int i = 1; i < MANY; i += 2) {
        name_of(name, sizeof(name), "s", i);
        session_close(s, 'S', name);
    }
    for (int i = 0; i < MANY; i++)
        expect_bound(s, i, stmt_of_portal(i), __LINE__);
    for (int i = 0; i < MANY; i++) {
        char p[32];
        name_of(p, sizeof(p), "n", i);
        name_of(name, sizeof(name), "s", i);
        BIND(s, p, name);
        if (i % 2 || !stmt_known(i)) {
            check_none(s, p);
        } else {
            name_of(schema, sizeof(schema), "schema_", i % 7);
            name_of(table, sizeof(table), "table_", i);
            check_portal(s, p, schema, table);
        }
    }

    /* Close every fifth portal; rebind every eleventh to an unknown name. */
    for (int i = 0; i < MANY; i += 5) {
        char p[32];
        name_of(p, sizeof(p), "p", i);
        session_close(s, 'P', p);
    }
    for (int i = 0; i < MANY; i += 11) {
        char p[32];
        name_of(p, sizeof(p), "p", i);
        BIND(s, p, "no such statement");
    }
    for (int i = 0; i < MANY; i++)
        expect_bound(s, i, i % 5 == 0 || i % 11 == 0 ? -1 : stmt_of_portal(i), __LINE__);
    finish();
}

/* ---- odd names ------------------------------------------------------------- */

static void test_odd_names(void **state)
{
    struct session *s = *state;
    /* Whatever bytes a driver puts in a name (all but NUL), and schema and
     * table names as the catalog spells them. */
    static const struct {
        const char *statement, *portal, *schema, *table;
    } names[] = {
        { " ", "  ", "public", "orders" },
        { "with space", "with  space", "My Schema", "My Table" },
        { "\t\r\n", "\n", "s", "t" },
        { "заказ", "курсор", "схема", "заказы" },
        { "注文", "カーソル", "スキーマ", "表" },
        { "\xf0\x9f\x98\x80", "\xf0\x9f\x98\x81", "emoji\xf0\x9f\x98\x80", "t" },
        { "\xff\xfe", "\x80", "public", "latin1\xe9" },
        { "\"quoted\"", "'q'", "a\"b", "c'd" },
        { "S_1", "s_1", "", "" }, /* case matters; empty strings are kept as such */
        { "%s%n", "%d", "back\\slash", "semi;colon" },
    };

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        PARSE(s, names[i].statement, names[i].schema, names[i].table);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        BIND(s, names[i].portal, names[i].statement);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        check_portal(s, names[i].portal, names[i].schema, names[i].table);
    check_none(s, "s_2");
    check_none(s, "S_1");
    check_none(s, "\xf0\x9f\x98");
    finish();
}

static void test_long_names(void **state)
{
    struct session *s = *state;
    const size_t len = 10 * 1024;
    char *a = malloc(len + 1), *b = malloc(len + 1), *shorter = malloc(len);
    char *schema = malloc(len + 1), *table = malloc(len + 1);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(shorter);
    assert_non_null(schema);
    assert_non_null(table);

    /* Two 10 kB names that differ only in their last byte, and a third
     * that is the first without it. */
    for (size_t i = 0; i < len; i++)
        a[i] = (char)('a' + i % 26);
    a[len] = '\0';
    memcpy(b, a, len + 1);
    b[len - 1] = '#';
    memcpy(shorter, a, len - 1);
    shorter[len - 1] = '\0';
    memset(schema, 'S', len);
    schema[len] = '\0';
    memset(table, 'T', len);
    table[len] = '\0';

    PARSE(s, a, schema, table);
    PARSE(s, b, "public", "b");
    PARSE(s, shorter, "public", "shorter");
    BIND(s, a, a);
    BIND(s, b, b);
    BIND(s, shorter, shorter);
    check_portal(s, a, schema, table);
    check_portal(s, b, "public", "b");
    check_portal(s, shorter, "public", "shorter");

    session_close(s, 'S', a);
    BIND(s, a, a);
    check_none(s, a);
    check_portal(s, b, "public", "b");
    session_close(s, 'P', b);
    check_none(s, b);
    check_portal(s, shorter, "public", "shorter");

    free(a);
    free(b);
    free(shorter);
    free(schema);
    free(table);
    finish();
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_bound_portal_reports),
        T(test_names_and_tables_are_copied),
        T(test_unnamed),
        T(test_reparse),
        T(test_close_statement),
        T(test_first_run),
        T(test_close_portal),
        T(test_close_bad_kind),
        T(test_bind_unknown_statement),
        T(test_clear),
        T(test_outdated),
        T(test_identity_statements),
        T(test_sent_text),
        T(test_detached_known),
        T(test_effects_known),
        cmocka_unit_test(test_free_and_reuse),
        T(test_many_names),
        T(test_odd_names),
        T(test_long_names),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
