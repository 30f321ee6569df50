/*
 * Unit tests for config: config_parse() on in-memory INI text, the
 * "FILE:LINE: why" error messages, [table schema.name] rules, and
 * config_restart_needed().
 *
 * Every text is handed over in a heap block of exactly its length with no
 * NUL after it (config_parse() must not need one), so valgrind catches a
 * read past the end. Every snapshot is freed: run under valgrind to check
 * that nothing leaks, on success or on error.
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

#include "config.h"
#include "log.h"

#define FILENAME "test.ini"

static struct config *parse_as(const char *text, size_t len, const char *filename,
                               char err[CONFIG_ERR_LEN])
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, text, len);
    memset(err, 'x', CONFIG_ERR_LEN);
    struct config *cfg = config_parse(copy, len, filename, err);
    free(copy);
    assert_non_null(memchr(err, '\0', CONFIG_ERR_LEN));
    return cfg;
}

static struct config *parse(const char *text, char err[CONFIG_ERR_LEN])
{
    return parse_as(text, strlen(text), FILENAME, err);
}

/* Parses text that must be valid. */
static struct config *parse_ok(const char *text)
{
    char err[CONFIG_ERR_LEN];
    struct config *cfg = parse(text, err);
    if (!cfg)
        fail_msg("unexpected error: %s\n--- text ---\n%s", err, text);
    assert_string_equal(cfg->path, FILENAME);
    return cfg;
}

/* Parses text that must fail at line (0: no line), with needle (if not
 * NULL) somewhere in the message. */
static void parse_fails_len(const char *text, size_t len, int line, const char *needle)
{
    char err[CONFIG_ERR_LEN], prefix[64];
    struct config *cfg = parse_as(text, len, FILENAME, err);
    if (cfg) {
        config_unref(cfg);
        fail_msg("parsed, expected an error at line %d\n--- text ---\n%s", line, text);
    }
    if (line > 0)
        snprintf(prefix, sizeof(prefix), "%s:%d: ", FILENAME, line);
    else
        snprintf(prefix, sizeof(prefix), "%s: ", FILENAME);
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fail_msg("expected \"%s...\", got \"%s\"\n--- text ---\n%s", prefix, err, text);
    if (strlen(err) <= strlen(prefix) + 3)
        fail_msg("no reason given: \"%s\"", err);
    if (needle && !strstr(err, needle))
        fail_msg("expected \"%s\" in \"%s\"", needle, err);
}

static void parse_fails(const char *text, int line, const char *needle)
{
    parse_fails_len(text, strlen(text), line, needle);
}

static void assert_names(const struct name_list *l, size_t count, ...)
{
    va_list ap;
    assert_int_equal(l->count, count);
    va_start(ap, count);
    for (size_t i = 0; i < count; i++)
        assert_string_equal(l->names[i], va_arg(ap, const char *));
    va_end(ap);
}

/* ---- [idemproxy] --------------------------------------------------------- */

static void test_full_main_section(void **state)
{
    (void)state;
    struct config *cfg = parse_ok(
        "; idemproxy test configuration\n"
        "# both comment styles\n"
        "\n"
        "[idemproxy]\n"
        "listen_addr = 0.0.0.0\n"
        "listen_port = 6500\n"
        "server_host = /var/run/postgresql\n"
        "server_port = 5433\n"
        "max_client_conn = 250\n"
        "log_level = debug\n"
        "log_file = /var/log/idemproxy/idemproxy.log\n"
        "max_held_message = 64kB\n"
        "client_login_timeout = 15\n"
        "server_connect_timeout = 5 ; seconds\n"
        "shutdown_timeout = 120\n"
        "tcp_keepalive = on\n"
        "tcp_keepidle = 30\n"
        "tcp_keepintvl = 5\n"
        "tcp_keepcnt = 4\n"
        "tcp_user_timeout = 45000\n"
        "workers = 4\n"
        "so_reuseport = on\n"
        "io_uring = off\n"
        "metrics_addr = 0.0.0.0\n"
        "metrics_port = 9127\n"
        "log_stats_interval = 0\n");
    assert_string_equal(cfg->listen_addr, "0.0.0.0");
    assert_int_equal(cfg->listen_port, 6500);
    assert_string_equal(cfg->server_host, "/var/run/postgresql");
    assert_int_equal(cfg->server_port, 5433);
    assert_int_equal(cfg->max_client_conn, 250);
    assert_int_equal(cfg->log_level, LOG_DEBUG);
    assert_string_equal(cfg->log_file, "/var/log/idemproxy/idemproxy.log");
    assert_int_equal(cfg->max_held_message, 64 * 1024);
    assert_int_equal(cfg->client_login_timeout, 15);
    assert_int_equal(cfg->server_connect_timeout, 5);
    assert_int_equal(cfg->shutdown_timeout, 120);
    assert_true(cfg->tcp_keepalive);
    assert_int_equal(cfg->tcp_keepidle, 30);
    assert_int_equal(cfg->tcp_keepintvl, 5);
    assert_int_equal(cfg->tcp_keepcnt, 4);
    assert_int_equal(cfg->tcp_user_timeout, 45000);
    assert_int_equal(cfg->workers, 4);
    assert_true(cfg->so_reuseport);
    assert_int_equal(cfg->io_uring, RING_OFF);
    assert_string_equal(cfg->metrics_addr, "0.0.0.0");
    assert_int_equal(cfg->metrics_port, 9127);
    assert_int_equal(cfg->log_stats_interval, 0);
    assert_int_equal(cfg->table_count, 0);
    config_unref(cfg);
}

/* The defaults, as config.c sets them (and the documentation states). */
static void test_defaults(void **state)
{
    (void)state;
    struct config *cfg = parse_ok("[idemproxy]\n");
    assert_string_equal(cfg->listen_addr, "127.0.0.1");
    assert_int_equal(cfg->listen_port, 6433);
    assert_string_equal(cfg->server_host, "127.0.0.1");
    assert_int_equal(cfg->server_port, 5432);
    assert_int_equal(cfg->max_client_conn, 1000);
    assert_int_equal(cfg->log_level, LOG_INFO);
    assert_null(cfg->log_file);
    assert_int_equal(cfg->max_held_message, 1024 * 1024);
    assert_int_equal(cfg->client_login_timeout, 60);
    assert_int_equal(cfg->server_connect_timeout, 10);
    assert_int_equal(cfg->shutdown_timeout, 30);
    assert_true(cfg->tcp_keepalive);
    assert_int_equal(cfg->tcp_keepidle, 0);
    assert_int_equal(cfg->tcp_keepintvl, 0);
    assert_int_equal(cfg->tcp_keepcnt, 0);
    assert_int_equal(cfg->tcp_user_timeout, 0);
    assert_int_equal(cfg->server_lifetime, 3600);
    assert_int_equal(cfg->catalog_check_interval, 60);
    assert_int_equal(cfg->workers, 0);
    assert_false(cfg->so_reuseport);
    assert_int_equal(cfg->io_uring, RING_AUTO);
    assert_string_equal(cfg->metrics_addr, "127.0.0.1");
    assert_int_equal(cfg->metrics_port, 0);
    assert_int_equal(cfg->log_stats_interval, 60);
    assert_int_equal(cfg->table_count, 0);
    assert_null(cfg->tables);
    config_unref(cfg);
}

static void test_sizes(void **state)
{
    (void)state;
    static const struct { const char *text; size_t bytes; } good[] = {
        { "65536", 65536 },
        { "100B", 100 },
        { "64kB", 64 * 1024 },
        { "1MB", 1024 * 1024 },
        { "16MB", 16 * 1024 * 1024 },
        { "1GB", (size_t)1024 * 1024 * 1024 },
    };
    static const char *const bad[] = { "0", "-1", "abc", "64KB", "64 mb", "1.5MB", "10XB", "" };
    char text[128];

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        snprintf(text, sizeof(text), "[idemproxy]\nmax_held_message = %s\n", good[i].text);
        struct config *cfg = parse_ok(text);
        assert_int_equal(cfg->max_held_message, good[i].bytes);
        config_unref(cfg);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text), "[idemproxy]\nmax_held_message = %s\n", bad[i]);
        parse_fails(text, 2, "max_held_message");
    }
}

/* listen_addr: "*", one address or host name, or a list of them; its
 * items as the proxy reads them. */
static void test_listen_addr_items(void **state)
{
    (void)state;
    static const char *const want[] = { "127.0.0.1", "::1", "db.example.com" };
    char item[CONFIG_ADDR_LEN];
    struct config *cfg =
        parse_ok("[idemproxy]\nlisten_addr = 127.0.0.1 ,  ::1,db.example.com\n");
    const char *at = cfg->listen_addr;
    for (size_t i = 0; i < 3; i++) {
        assert_true(config_listen_item(&at, item));
        assert_string_equal(item, want[i]);
    }
    assert_false(config_listen_item(&at, item));
    config_unref(cfg);

    cfg = parse_ok("[idemproxy]\nlisten_addr = *\n");
    at = cfg->listen_addr;
    assert_true(config_listen_item(&at, item));
    assert_string_equal(item, "*");
    assert_false(config_listen_item(&at, item));
    config_unref(cfg);
}

static void test_port_ranges(void **state)
{
    (void)state;
    struct config *cfg = parse_ok("[idemproxy]\nlisten_port = 1\nserver_port = 65535\n");
    assert_int_equal(cfg->listen_port, 1);
    assert_int_equal(cfg->server_port, 65535);
    config_unref(cfg);

    static const char *const bad[] = {
        "abc", "70000", "65536", "-1", "0", "6432abc", "64 32", "99999999999999999999", "",
    };
    char text[128];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text), "[idemproxy]\n\nlisten_port = %s\n", bad[i]);
        parse_fails(text, 3, "listen_port");
        snprintf(text, sizeof(text), "[idemproxy]\nserver_port = %s\n", bad[i]);
        parse_fails(text, 2, "server_port");
    }
    parse_fails("[idemproxy]\nmax_client_conn = -1\n", 2, "max_client_conn");
    parse_fails("[idemproxy]\nclient_login_timeout = soon\n", 2, "client_login_timeout");
    parse_fails("[idemproxy]\nserver_connect_timeout = -5\n", 2, "server_connect_timeout");
    parse_fails("[idemproxy]\nshutdown_timeout = 1e3\n", 2, "shutdown_timeout");
    parse_fails("[idemproxy]\ntcp_keepalive = sometimes\n", 2, "tcp_keepalive");
    /* Beyond what Linux accepts: refused here, not at the first connection. */
    parse_fails("[idemproxy]\ntcp_keepidle = 32768\n", 2, "from 0 to 32767");
    parse_fails("[idemproxy]\ntcp_keepintvl = -1\n", 2, "tcp_keepintvl");
    parse_fails("[idemproxy]\ntcp_keepcnt = 128\n", 2, "from 0 to 127");
    parse_fails("[idemproxy]\ntcp_user_timeout = 5s\n", 2, "tcp_user_timeout");
    parse_fails("[idemproxy]\nserver_lifetime = -1\n", 2, "server_lifetime");
    parse_fails("[idemproxy]\ncatalog_check_interval = 86401\n", 2, "from 0 to 86400");
    parse_fails("[idemproxy]\nlisten_addr = 127.0.0.1,,::1\n", 2, "separated by commas");
    parse_fails("[idemproxy]\nlisten_addr = 127.0.0.1,\n", 2, "separated by commas");
    parse_fails("[idemproxy]\nlisten_addr = *, ::1\n", 2, "takes no others");
    parse_fails("[idemproxy]\nlisten_addr = a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q\n", 2,
                "at most 16");
    parse_fails("[idemproxy]\nworkers = -1\n", 2, "workers");
    parse_fails("[idemproxy]\nworkers = 257\n", 2, "workers");
    parse_fails("[idemproxy]\nso_reuseport = maybe\n", 2, "so_reuseport");
    parse_fails("[idemproxy]\n\nio_uring = 1.5\n", 3, "expected auto, on or off");
    parse_fails("[idemproxy]\nio_uring = automatic\n", 2, "io_uring");
    parse_fails("[idemproxy]\nmetrics_port = 65536\n", 2, "metrics_port");
    parse_fails("[idemproxy]\nlog_stats_interval = -1\n", 2, "log_stats_interval");
}

/* io_uring takes auto besides the words for on and off. */
static void test_io_uring_values(void **state)
{
    static const struct {
        const char *value;
        enum ring_use use;
    } cases[] = { { "auto", RING_AUTO }, { "on", RING_ON },   { "yes", RING_ON },
                  { "1", RING_ON },      { "off", RING_OFF }, { "false", RING_OFF } };
    char text[64];
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(text, sizeof(text), "[idemproxy]\nio_uring = %s\n", cases[i].value);
        struct config *cfg = parse_ok(text);
        assert_int_equal(cfg->io_uring, cases[i].use);
        assert_string_equal(ring_use_name(cfg->io_uring),
                            cases[i].use == RING_AUTO ? "auto" : cases[i].use == RING_ON ? "on" : "off");
        config_unref(cfg);
    }
}

static void test_log_levels(void **state)
{
    (void)state;
    static const struct { const char *name; enum log_level level; } levels[] = {
        { "error", LOG_ERROR }, { "warning", LOG_WARNING },
        { "info", LOG_INFO }, { "debug", LOG_DEBUG },
    };
    char text[128];
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
        snprintf(text, sizeof(text), "[idemproxy]\nlog_level = %s\n", levels[i].name);
        struct config *cfg = parse_ok(text);
        assert_int_equal(cfg->log_level, levels[i].level);
        config_unref(cfg);

        enum log_level parsed = LOG_ERROR;
        assert_true(log_level_parse(levels[i].name, &parsed));
        assert_int_equal(parsed, levels[i].level);
        assert_string_equal(log_level_name(levels[i].level), levels[i].name);
    }
    enum log_level parsed;
    assert_false(log_level_parse("verbose", &parsed));
    assert_false(log_level_parse("", &parsed));
    parse_fails("[idemproxy]\nlog_level = verbose\n", 2, "verbose");
    parse_fails("[idemproxy]\n\n\nlog_level = 3\n", 4, "log_level");
}

/* ---- errors name the file and the line ----------------------------------- */

static void test_error_lines(void **state)
{
    (void)state;
    parse_fails("[idemproxy]\nlisten_port = 6500\nfrobnicate = 1\n", 3, "frobnicate");
    parse_fails("# comment\n[idemproxy]\n\n[server]\nport = 1\n", 4, "server");
    parse_fails("[idemproxy]\nlisten_port = 6500\n; again\nlisten_port = 6501\n", 4, "listen_port");
    parse_fails("listen_port = 6500\n[idemproxy]\n", 1, "listen_port");
    parse_fails("; leading comment\n\nlisten_port = 6500\n[idemproxy]\n", 3, NULL);
    parse_fails("[idemproxy]\nlisten_port 6500\n", 2, NULL);
    parse_fails("[idemproxy]\nlisten_port = 6500\njust some words\nserver_port = 1\n", 3, NULL);
    parse_fails("[idemproxy]\nlog_file =\n", 2, "log_file");
}

static void test_overlong_line(void **state)
{
    (void)state;
    char text[4096];
    char value[3000];
    memset(value, 'a', sizeof(value) - 1);
    value[sizeof(value) - 1] = '\0';
    snprintf(text, sizeof(text), "[idemproxy]\nlisten_port = 6500\nlog_file = /%s\nserver_port = 1\n",
             value);
    parse_fails(text, 3, NULL);

    /* The same on the last line, with no newline after it. */
    snprintf(text, sizeof(text), "[idemproxy]\nlog_file = /%s", value);
    parse_fails(text, 2, NULL);
}

/* When a file has several mistakes, the message points at the first. */
static void test_first_error_reported(void **state)
{
    (void)state;
    parse_fails("[idemproxy]\nlisten_port = x\nserver_port = y\n", 2, "listen_port");
    parse_fails("[idemproxy]\nnot a setting\n\nfrobnicate = 1\n", 2, NULL);
    /* An unclosed section header, then keys meant for that section. */
    parse_fails("[idemproxy\nlisten_port = 6500\n", 1, NULL);
    parse_fails("[idemproxy]\n[table orders\nconflict = id\n", 2, NULL);
}

/* Keys indented under their section header, a common INI style. */
static void test_indented_keys(void **state)
{
    (void)state;
    struct config *cfg = parse_ok(
        "[idemproxy]\n"
        "    listen_port = 7003\n"
        "    server_port = 5433\n"
        "[table orders]\n"
        "\tconflict = id\n"
        "\taction = do_nothing\n");
    assert_int_equal(cfg->listen_port, 7003);
    assert_int_equal(cfg->server_port, 5433);
    assert_int_equal(cfg->table_count, 1);
    assert_int_equal(cfg->tables[0].action, TABLE_ACTION_DO_NOTHING);
    assert_names(&cfg->tables[0].conflict, 1, "id");
    config_unref(cfg);
}

static void test_no_main_section(void **state)
{
    (void)state;
    parse_fails("", 0, NULL);
    parse_fails("; nothing here\n", 0, NULL);
}

static void test_nul_byte(void **state)
{
    (void)state;
    static const char text[] = "[idemproxy]\nlisten_port = 65\0000\n";
    parse_fails_len(text, sizeof(text) - 1, 2, NULL);
}

/* Line endings and file endings that editors produce. */
static void test_line_endings(void **state)
{
    (void)state;
    struct config *cfg = parse_ok("[idemproxy]\r\nlisten_port = 7000\r\nlog_level = debug\r\n");
    assert_int_equal(cfg->listen_port, 7000);
    assert_int_equal(cfg->log_level, LOG_DEBUG);
    config_unref(cfg);

    cfg = parse_ok("[idemproxy]\nlisten_port = 7001");
    assert_int_equal(cfg->listen_port, 7001);
    config_unref(cfg);

    parse_fails("[idemproxy]\r\n\r\nlisten_port = 0\r\n", 3, "listen_port");
}

/* A UTF-8 byte order mark, as some Windows editors write. */
static void test_byte_order_mark(void **state)
{
    (void)state;
    struct config *cfg = parse_ok("\xEF\xBB\xBF[idemproxy]\nlisten_port = 7002\n");
    assert_int_equal(cfg->listen_port, 7002);
    config_unref(cfg);
}

static void test_long_filename(void **state)
{
    (void)state;
    char name[CONFIG_ERR_LEN * 2];
    char err[CONFIG_ERR_LEN];
    memset(name, 'f', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    const char *text = "[idemproxy]\nbogus = 1\n";
    assert_null(parse_as(text, strlen(text), name, err));
    assert_true(strlen(err) < CONFIG_ERR_LEN);
    assert_int_equal(strncmp(err, name, 10), 0);
}

/* ---- [table schema.name] --------------------------------------------------- */

static void test_table_full(void **state)
{
    (void)state;
    struct config *cfg = parse_ok(
        "[idemproxy]\n"
        "\n"
        "[table Sales.Orders]\n"
        "conflict = order_id, \"LineNo\"\n"
        "action = do_update\n"
        "update_columns = status,\"UpdatedAt\" , Note\n"
        "database = shop\n"
        "mode = shadow\n"
        "search_path = app, public\n"
        "translate_errors = off\n");
    assert_int_equal(cfg->table_count, 1);
    const struct table_rule *t = &cfg->tables[0];
    assert_string_equal(t->schema, "sales");
    assert_string_equal(t->name, "orders");
    assert_int_equal(t->line, 3);
    assert_names(&t->conflict, 2, "order_id", "LineNo");
    assert_int_equal(t->action, TABLE_ACTION_DO_UPDATE);
    assert_names(&t->update_columns, 3, "status", "UpdatedAt", "note");
    assert_string_equal(t->database, "shop");
    assert_int_equal(t->mode, TABLE_MODE_SHADOW);
    assert_names(&t->search_path, 2, "app", "public");
    assert_false(t->translate_errors);
    config_unref(cfg);
}

static void test_table_defaults(void **state)
{
    (void)state;
    struct config *cfg = parse_ok("[idemproxy]\n[table orders]\nconflict = id\n");
    assert_int_equal(cfg->table_count, 1);
    const struct table_rule *t = &cfg->tables[0];
    assert_string_equal(t->schema, "public");
    assert_string_equal(t->name, "orders");
    assert_int_equal(t->line, 2);
    assert_names(&t->conflict, 1, "id");
    assert_int_equal(t->action, TABLE_ACTION_AUTO);
    assert_int_equal(t->update_columns.count, 0);
    assert_null(t->database);
    assert_int_equal(t->mode, TABLE_MODE_ENFORCE);
    assert_names(&t->search_path, 1, "public");
    assert_true(t->translate_errors);
    config_unref(cfg);
}

/* Names fold as in PostgreSQL: unquoted to lower case, quoted kept as is. */
static void test_table_name_folding(void **state)
{
    (void)state;
    static const struct { const char *section, *schema, *name; } cases[] = {
        { "orders", "public", "orders" },
        { "ORDERS", "public", "orders" },
        { "\"Orders\"", "public", "Orders" },
        { "\"MySchema\".\"MyTable\"", "MySchema", "MyTable" },
        { "MySchema.\"MyTable\"", "myschema", "MyTable" },
        { "\"Sales\".Orders", "Sales", "orders" },
        { "\"my schema\".\"my.table\"", "my schema", "my.table" },
        { "\"we\"\"ird\"", "public", "we\"ird" },
        { "_t$1", "public", "_t$1" },
    };
    char text[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(text, sizeof(text), "[idemproxy]\n[table %s]\nconflict = \"Id\", EMAIL\n",
                 cases[i].section);
        struct config *cfg = parse_ok(text);
        assert_int_equal(cfg->table_count, 1);
        assert_string_equal(cfg->tables[0].schema, cases[i].schema);
        assert_string_equal(cfg->tables[0].name, cases[i].name);
        assert_names(&cfg->tables[0].conflict, 2, "Id", "email");
        config_unref(cfg);
    }
}

static void test_table_actions(void **state)
{
    (void)state;
    static const struct { const char *name; enum table_action action; const char *extra; } cases[] = {
        { "auto", TABLE_ACTION_AUTO, "" },
        { "do_nothing", TABLE_ACTION_DO_NOTHING, "" },
        { "return_existing", TABLE_ACTION_RETURN_EXISTING, "" },
        { "do_update", TABLE_ACTION_DO_UPDATE, "update_columns = total\n" },
        { "none", TABLE_ACTION_NONE, "" },
    };
    char text[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(text, sizeof(text), "[idemproxy]\n[table t]\nconflict = id\naction = %s\n%s",
                 cases[i].name, cases[i].extra);
        struct config *cfg = parse_ok(text);
        assert_int_equal(cfg->tables[0].action, cases[i].action);
        assert_string_equal(table_action_name(cases[i].action), cases[i].name);
        config_unref(cfg);
    }
    assert_string_equal(table_mode_name(TABLE_MODE_ENFORCE), "enforce");
    assert_string_equal(table_mode_name(TABLE_MODE_SHADOW), "shadow");
}

static void test_table_translate_errors(void **state)
{
    (void)state;
    static const struct { const char *text; bool value; } cases[] = {
        { "on", true }, { "off", false }, { "true", true }, { "false", false },
    };
    char text[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(text, sizeof(text), "[idemproxy]\n[table t]\nconflict = id\ntranslate_errors = %s\n",
                 cases[i].text);
        struct config *cfg = parse_ok(text);
        assert_int_equal(cfg->tables[0].translate_errors, cases[i].value);
        config_unref(cfg);
    }
    parse_fails("[idemproxy]\n[table t]\nconflict = id\ntranslate_errors = maybe\n", 4,
                "translate_errors");
}

static void test_several_tables(void **state)
{
    (void)state;
    struct config *cfg = parse_ok(
        "[idemproxy]\n"
        "[table a]\n"
        "conflict = id\n"
        "[table b]\n"
        "action = do_nothing\n"
        "[table app.a]\n"
        "conflict = k1, k2\n"
        "action = return_existing\n"
        "; the same table, but only in one database\n"
        "[table a]\n"
        "database = other\n"
        "conflict = id\n"
        "[idemproxy]\n"
        "log_level = warning\n");
    assert_int_equal(cfg->table_count, 4);
    assert_string_equal(cfg->tables[0].name, "a");
    assert_int_equal(cfg->tables[0].line, 2);
    assert_string_equal(cfg->tables[1].name, "b");
    assert_int_equal(cfg->tables[1].action, TABLE_ACTION_DO_NOTHING);
    assert_string_equal(cfg->tables[2].schema, "app");
    assert_names(&cfg->tables[2].conflict, 2, "k1", "k2");
    assert_int_equal(cfg->tables[3].line, 10);
    assert_string_equal(cfg->tables[3].database, "other");
    assert_int_equal(cfg->log_level, LOG_WARNING);
    config_unref(cfg);
}

/* conflict may be left out only where no clause names columns. */
static void test_table_conflict_required(void **state)
{
    (void)state;
    static const char *const needs[] = { "auto", "return_existing", "do_update" };
    char text[256];
    for (size_t i = 0; i < sizeof(needs) / sizeof(needs[0]); i++) {
        snprintf(text, sizeof(text), "[idemproxy]\n[table t]\naction = %s\n%s", needs[i],
                 strcmp(needs[i], "do_update") == 0 ? "update_columns = total\n" : "");
        parse_fails(text, 2, "needs conflict");
    }
    static const char *const free_of[] = { "do_nothing", "none" };
    for (size_t i = 0; i < sizeof(free_of) / sizeof(free_of[0]); i++) {
        snprintf(text, sizeof(text), "[idemproxy]\n[table t]\naction = %s\n", free_of[i]);
        struct config *cfg = parse_ok(text);
        assert_int_equal(cfg->tables[0].conflict.count, 0);
        config_unref(cfg);
    }
    /* update_columns belongs to do_update alone. */
    parse_fails("[idemproxy]\n[table t]\nconflict = id\naction = auto\nupdate_columns = total\n",
                5, "update_columns");
}

static void test_table_errors(void **state)
{
    (void)state;
    /* do_update without update_columns: the section or the action is to blame. */
    {
        char err[CONFIG_ERR_LEN];
        const char *text = "[idemproxy]\n[table t]\nconflict = id\naction = do_update\n";
        assert_null(parse(text, err));
        if (strncmp(err, FILENAME ":2: ", 11) != 0 && strncmp(err, FILENAME ":4: ", 11) != 0)
            fail_msg("expected line 2 or 4: %s", err);
        assert_non_null(strstr(err, "update_columns"));
    }
    parse_fails("[idemproxy]\n[table t]\nconflict = id\naction = upsert\n", 4, "upsert");
    parse_fails("[idemproxy]\n[table t]\nconflict = id\nmode = audit\n", 4, "mode");
    parse_fails("[idemproxy]\n[table t]\nconflict = id\ncolour = blue\n", 4, "colour");
    parse_fails("[idemproxy]\n[table t]\nconflict = id\nconflict = id2\n", 4, "conflict");
    parse_fails("[idemproxy]\n[table t]\nconflict = id\ndatabase =\n", 4, "database");
    parse_fails("[idemproxy]\n[table t]\nconflict = a,,b\n", 3, "conflict");
    parse_fails("[idemproxy]\n[table t]\nconflict = a b\n", 3, "conflict");
    parse_fails("[idemproxy]\n[table t]\nconflict = \"\"\n", 3, "conflict");
    parse_fails("[idemproxy]\n[table t]\nconflict = \"open\n", 3, "conflict");
    parse_fails("[idemproxy]\n[table t]\nconflict = id\nsearch_path = app,\n", 4, "search_path");
    /* A key of the other section. */
    parse_fails("[idemproxy]\n[table t]\nconflict = id\nlisten_port = 1\n", 4, "listen_port");
    parse_fails("[idemproxy]\nconflict = id\n", 2, "conflict");

    /* Malformed section names. */
    parse_fails("[idemproxy]\n\n[table ]\nconflict = id\n", 3, NULL);
    parse_fails("[idemproxy]\n[table a.b.c]\nconflict = id\n", 2, NULL);
    parse_fails("[idemproxy]\n[table \"open]\nconflict = id\n", 2, NULL);
    parse_fails("[idemproxy]\n[table 1abc]\nconflict = id\n", 2, NULL);
    parse_fails("[idemproxy]\n[table a.]\nconflict = id\n", 2, NULL);
    parse_fails("[idemproxy]\n[tables t]\nconflict = id\n", 2, NULL);
}

/* The same table twice, however it is spelled, in the same database. */
static void test_table_duplicates(void **state)
{
    (void)state;
    parse_fails("[idemproxy]\n[table orders]\nconflict = id\n\n[table public.ORDERS]\nconflict = id\n",
                5, "orders");
    parse_fails("[idemproxy]\n[table s.t]\nconflict = id\ndatabase = d\n"
                "[table S.T]\nconflict = id\ndatabase = d\n",
                5, NULL);
}

/* ---- TLS and authentication ------------------------------------------- */

static void test_tls_and_auth(void **state)
{
    (void)state;
    struct config *c = parse_ok("[idemproxy]\n"
                                "client_tls_sslmode = verify-full\n"
                                "client_tls_cert_file = /etc/p.crt\n"
                                "client_tls_key_file = /etc/p.key\n"
                                "client_tls_ca_file = /etc/ca.crt\n"
                                "client_tls_protocols = tlsv1.3\n"
                                "client_tls_ciphers = HIGH:!aNULL\n"
                                "server_tls_sslmode = prefer\n"
                                "server_tls_protocols = TLSv1.2, tlsv1.3\n"
                                "auth_type = scram-sha-256\n"
                                "auth_file = /etc/userlist.txt\n"
                                "auth_user = auth\n"
                                "auth_query = SELECT u, p FROM secrets WHERE u = $1\n"
                                "server_reuse = on\n"
                                "server_idle_timeout = 30\n"
                                "server_lifetime = 0\n"
                                "max_idle_servers = 0\n"
                                "max_cached_statements = 0\n"
                                "catalog_check_interval = 0\n");
    assert_true(c->server_reuse);
    assert_int_equal(c->max_cached_statements, 0);
    assert_int_equal(c->server_idle_timeout, 30);
    assert_int_equal(c->server_lifetime, 0);
    assert_int_equal(c->max_idle_servers, 0);
    assert_int_equal(c->catalog_check_interval, 0);
    assert_int_equal(c->client_tls.mode, TLS_VERIFY_FULL);
    assert_string_equal(c->client_tls.cert_file, "/etc/p.crt");
    assert_string_equal(c->client_tls.key_file, "/etc/p.key");
    assert_string_equal(c->client_tls.ca_file, "/etc/ca.crt");
    assert_int_equal(c->client_tls.protocols, TLS_PROTO_V1_3);
    assert_string_equal(c->client_tls.ciphers, "HIGH:!aNULL");
    assert_int_equal(c->server_tls.mode, TLS_PREFER);
    assert_int_equal(c->server_tls.protocols, TLS_PROTO_V1_2 | TLS_PROTO_V1_3);
    assert_int_equal(c->auth_type, AUTH_SCRAM);
    assert_string_equal(c->auth_file, "/etc/userlist.txt");
    assert_string_equal(c->auth_user, "auth");
    assert_string_equal(c->auth_query, "SELECT u, p FROM secrets WHERE u = $1");
    config_unref(c);

    /* The defaults: no TLS, passthrough, PgBouncer's query, TLS 1.2 and 1.3. */
    c = parse_ok("[idemproxy]\n");
    assert_int_equal(c->client_tls.mode, TLS_DISABLE);
    assert_int_equal(c->server_tls.mode, TLS_DISABLE);
    assert_int_equal(c->client_tls.protocols, TLS_PROTO_V1_2 | TLS_PROTO_V1_3);
    assert_int_equal(c->auth_type, AUTH_PASSTHROUGH);
    assert_string_equal(c->auth_query, "SELECT usename, passwd FROM pg_shadow WHERE usename = $1");
    assert_null(c->client_tls.cert_file);
    assert_false(c->server_reuse);
    assert_int_equal(c->server_idle_timeout, 600);
    assert_int_equal(c->max_idle_servers, 100);
    assert_int_equal(c->max_cached_statements, 100);
    config_unref(c);
    assert_string_equal(tls_mode_name(TLS_VERIFY_CA), "verify-ca");
}

static void test_tls_and_auth_errors(void **state)
{
    (void)state;
    /* What a mode needs is named on the mode's line. */
    parse_fails("[idemproxy]\nlisten_port = 1\nclient_tls_sslmode = require\n", 3,
                "client_tls_cert_file");
    parse_fails("[idemproxy]\nclient_tls_sslmode = verify-ca\nclient_tls_cert_file = a\n"
                "client_tls_key_file = b\n", 2, "client_tls_ca_file");
    parse_fails("[idemproxy]\nserver_tls_sslmode = verify-full\n", 2, "server_tls_ca_file");
    parse_fails("[idemproxy]\nserver_tls_cert_file = a\n", 2, "server_tls_key_file");
    parse_fails("[idemproxy]\nauth_type = scram-sha-256\n", 2, "auth_file");
    /* Reuse only where the proxy checks passwords itself. */
    parse_fails("[idemproxy]\nlog_level = info\nserver_reuse = on\n", 3, "auth_type = scram-sha-256");
    parse_fails("[idemproxy]\nauth_type = passthrough\nserver_reuse = yes\n", 3, "server_reuse");
    /* Bad values. */
    parse_fails("[idemproxy]\nserver_idle_timeout = 0\n", 2, "server_idle_timeout");
    parse_fails("[idemproxy]\nmax_idle_servers = -1\n", 2, "max_idle_servers");
    parse_fails("[idemproxy]\n\nmax_cached_statements = many\n", 3, "max_cached_statements");
    parse_fails("[idemproxy]\nmax_cached_statements = 100001\n", 2, "max_cached_statements");
    parse_fails("[idemproxy]\nserver_reuse = sometimes\n", 2, "server_reuse");
    parse_fails("[idemproxy]\nserver_tls_sslmode = allow\n", 2, "allow");
    parse_fails("[idemproxy]\nclient_tls_sslmode = always\n", 2, "always");
    parse_fails("[idemproxy]\nclient_tls_protocols = tlsv1.1\n", 2, "tlsv1.1");
    parse_fails("[idemproxy]\nclient_tls_protocols = ,\n", 2, "client_tls_protocols");
    parse_fails("[idemproxy]\nauth_type = md5\n", 2, "md5");
    parse_fails("[idemproxy]\nauth_file =\n", 2, "auth_file");
}

/* ---- config_load ------------------------------------------------------------ */

static void test_load(void **state)
{
    (void)state;
    char path[] = "/tmp/idemproxy-test-XXXXXX";
    char err[CONFIG_ERR_LEN];
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "[idemproxy]\nlisten_port = 7100\n[table t]\nconflict = id\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);

    struct config *cfg = config_load(path, err);
    assert_non_null(cfg);
    assert_string_equal(cfg->path, path);
    assert_int_equal(cfg->listen_port, 7100);
    assert_int_equal(cfg->table_count, 1);
    config_unref(cfg);

    /* A bad file names itself in the message. */
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("[idemproxy]\nlisten_port = none\n", f);
    fclose(f);
    assert_null(config_load(path, err));
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "%s:2: ", path);
    assert_int_equal(strncmp(err, prefix, strlen(prefix)), 0);

    unlink(path);
    assert_null(config_load(path, err));
    assert_int_equal(strncmp(err, path, strlen(path)), 0);
}

/* ---- config_restart_needed ---------------------------------------------- */

static void test_admin_users(void **state)
{
    (void)state;
    struct config *cfg = parse_ok("[idemproxy]\n");
    assert_int_equal(cfg->admin_users.count, 0);
    config_unref(cfg);
    cfg = parse_ok("[idemproxy]\nadmin_users = Ops, \"Night Shift\",root\n");
    assert_names(&cfg->admin_users, 3, "ops", "Night Shift", "root");
    config_unref(cfg);
    parse_fails("[idemproxy]\nadmin_users =\n", 2, "admin_users");
    parse_fails("[idemproxy]\nadmin_users = ops,,root\n", 2, "admin_users");
}

/* Strings that name something cannot be empty. */
static void test_empty_strings(void **state)
{
    (void)state;
    parse_fails("[idemproxy]\nserver_host =\n", 2, "server_host");
    parse_fails("[idemproxy]\nmetrics_addr =\n", 2, "metrics_addr");
    parse_fails("[idemproxy]\nlog_file =\n", 2, "log_file");
}

static void test_restart_needed(void **state)
{
    (void)state;
    struct config *base = parse_ok("[idemproxy]\nlisten_addr = 127.0.0.1\nlisten_port = 6433\n");
    struct config *same = parse_ok(
        "[idemproxy]\nlisten_addr = 127.0.0.1\nlisten_port = 6433\nlog_level = debug\n"
        "max_held_message = 4MB\n[table t]\nconflict = id\n");
    struct config *port = parse_ok("[idemproxy]\nlisten_addr = 127.0.0.1\nlisten_port = 6434\n");
    struct config *both = parse_ok("[idemproxy]\nlisten_addr = 0.0.0.0\nlisten_port = 6434\n");
    char buf[128];

    memset(buf, 'x', sizeof(buf));
    assert_false(config_restart_needed(base, base, buf, sizeof(buf)));
    assert_false(config_restart_needed(base, same, buf, sizeof(buf)));

    assert_true(config_restart_needed(base, port, buf, sizeof(buf)));
    assert_string_equal(buf, "listen_port");

    assert_true(config_restart_needed(base, both, buf, sizeof(buf)));
    assert_non_null(strstr(buf, "listen_addr"));
    assert_non_null(strstr(buf, "listen_port"));
    assert_non_null(strchr(buf, ','));

    struct config *threads = parse_ok("[idemproxy]\nlisten_addr = 127.0.0.1\n"
                                      "listen_port = 6433\nworkers = 3\nso_reuseport = on\n"
                                      "io_uring = off\n");
    assert_true(config_restart_needed(base, threads, buf, sizeof(buf)));
    assert_string_equal(buf, "workers, so_reuseport, io_uring");
    config_unref(threads);

    /* The HTTP endpoint is set up once, at start. */
    struct config *metrics = parse_ok("[idemproxy]\nlisten_addr = 127.0.0.1\n"
                                      "listen_port = 6433\nmetrics_addr = 0.0.0.0\n"
                                      "metrics_port = 9187\n");
    assert_true(config_restart_needed(base, metrics, buf, sizeof(buf)));
    assert_string_equal(buf, "metrics_addr, metrics_port");
    config_unref(metrics);

    /* A small buffer is filled, terminated, and not overrun. */
    memset(buf, 'x', sizeof(buf));
    assert_true(config_restart_needed(base, both, buf, 8));
    assert_true(strlen(buf) < 8);
    for (size_t i = 8; i < sizeof(buf); i++)
        assert_int_equal(buf[i], 'x');

    config_unref(base);
    config_unref(same);
    config_unref(port);
    config_unref(both);
    config_unref(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_main_section),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_listen_addr_items),
        cmocka_unit_test(test_port_ranges),
        cmocka_unit_test(test_io_uring_values),
        cmocka_unit_test(test_log_levels),
        cmocka_unit_test(test_error_lines),
        cmocka_unit_test(test_overlong_line),
        cmocka_unit_test(test_first_error_reported),
        cmocka_unit_test(test_indented_keys),
        cmocka_unit_test(test_no_main_section),
        cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_line_endings),
        cmocka_unit_test(test_byte_order_mark),
        cmocka_unit_test(test_long_filename),
        cmocka_unit_test(test_table_full),
        cmocka_unit_test(test_table_defaults),
        cmocka_unit_test(test_table_name_folding),
        cmocka_unit_test(test_table_actions),
        cmocka_unit_test(test_table_translate_errors),
        cmocka_unit_test(test_several_tables),
        cmocka_unit_test(test_table_conflict_required),
        cmocka_unit_test(test_table_errors),
        cmocka_unit_test(test_table_duplicates),
        cmocka_unit_test(test_tls_and_auth),
        cmocka_unit_test(test_tls_and_auth_errors),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_admin_users),
        cmocka_unit_test(test_empty_strings),
        cmocka_unit_test(test_restart_needed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
