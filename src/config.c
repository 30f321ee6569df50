#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <openssl/crypto.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Keys of [idemproxy], in the order of struct config. */
enum main_key {
    KEY_LISTEN_ADDR,
    KEY_LISTEN_PORT,
    KEY_SERVER_HOST,
    KEY_SERVER_PORT,
    KEY_MAX_CLIENT_CONN,
    KEY_LOG_LEVEL,
    KEY_LOG_FILE,
    KEY_MAX_HELD_MESSAGE,
    KEY_CLIENT_LOGIN_TIMEOUT,
    KEY_SERVER_CONNECT_TIMEOUT,
    KEY_TCP_KEEPALIVE,
    KEY_TCP_KEEPIDLE,
    KEY_TCP_KEEPINTVL,
    KEY_TCP_KEEPCNT,
    KEY_TCP_USER_TIMEOUT,
    KEY_SHUTDOWN_TIMEOUT,
    KEY_CLIENT_TLS_SSLMODE,
    KEY_CLIENT_TLS_CERT_FILE,
    KEY_CLIENT_TLS_KEY_FILE,
    KEY_CLIENT_TLS_CA_FILE,
    KEY_CLIENT_TLS_PROTOCOLS,
    KEY_CLIENT_TLS_CIPHERS,
    KEY_SERVER_TLS_SSLMODE,
    KEY_SERVER_TLS_CERT_FILE,
    KEY_SERVER_TLS_KEY_FILE,
    KEY_SERVER_TLS_CA_FILE,
    KEY_SERVER_TLS_PROTOCOLS,
    KEY_SERVER_TLS_CIPHERS,
    KEY_AUTH_TYPE,
    KEY_AUTH_FILE,
    KEY_AUTH_QUERY,
    KEY_AUTH_USER,
    KEY_WORKERS,
    KEY_SO_REUSEPORT,
    KEY_IO_URING,
    KEY_METRICS_ADDR,
    KEY_METRICS_PORT,
    KEY_LOG_STATS_INTERVAL,
    KEY_ADMIN_USERS,
    KEY_SERVER_REUSE,
    KEY_SERVER_IDLE_TIMEOUT,
    KEY_SERVER_LIFETIME,
    KEY_MAX_IDLE_SERVERS,
    KEY_MAX_CACHED_STATEMENTS,
    KEY_CATALOG_CHECK_INTERVAL,
    MAIN_KEY_COUNT,
};

static const char *const main_key_names[MAIN_KEY_COUNT] = {
    [KEY_LISTEN_ADDR] = "listen_addr",
    [KEY_LISTEN_PORT] = "listen_port",
    [KEY_SERVER_HOST] = "server_host",
    [KEY_SERVER_PORT] = "server_port",
    [KEY_MAX_CLIENT_CONN] = "max_client_conn",
    [KEY_LOG_LEVEL] = "log_level",
    [KEY_LOG_FILE] = "log_file",
    [KEY_MAX_HELD_MESSAGE] = "max_held_message",
    [KEY_CLIENT_LOGIN_TIMEOUT] = "client_login_timeout",
    [KEY_SERVER_CONNECT_TIMEOUT] = "server_connect_timeout",
    [KEY_TCP_KEEPALIVE] = "tcp_keepalive",
    [KEY_TCP_KEEPIDLE] = "tcp_keepidle",
    [KEY_TCP_KEEPINTVL] = "tcp_keepintvl",
    [KEY_TCP_KEEPCNT] = "tcp_keepcnt",
    [KEY_TCP_USER_TIMEOUT] = "tcp_user_timeout",
    [KEY_SHUTDOWN_TIMEOUT] = "shutdown_timeout",
    [KEY_CLIENT_TLS_SSLMODE] = "client_tls_sslmode",
    [KEY_CLIENT_TLS_CERT_FILE] = "client_tls_cert_file",
    [KEY_CLIENT_TLS_KEY_FILE] = "client_tls_key_file",
    [KEY_CLIENT_TLS_CA_FILE] = "client_tls_ca_file",
    [KEY_CLIENT_TLS_PROTOCOLS] = "client_tls_protocols",
    [KEY_CLIENT_TLS_CIPHERS] = "client_tls_ciphers",
    [KEY_SERVER_TLS_SSLMODE] = "server_tls_sslmode",
    [KEY_SERVER_TLS_CERT_FILE] = "server_tls_cert_file",
    [KEY_SERVER_TLS_KEY_FILE] = "server_tls_key_file",
    [KEY_SERVER_TLS_CA_FILE] = "server_tls_ca_file",
    [KEY_SERVER_TLS_PROTOCOLS] = "server_tls_protocols",
    [KEY_SERVER_TLS_CIPHERS] = "server_tls_ciphers",
    [KEY_AUTH_TYPE] = "auth_type",
    [KEY_AUTH_FILE] = "auth_file",
    [KEY_AUTH_QUERY] = "auth_query",
    [KEY_AUTH_USER] = "auth_user",
    [KEY_WORKERS] = "workers",
    [KEY_SO_REUSEPORT] = "so_reuseport",
    [KEY_IO_URING] = "io_uring",
    [KEY_METRICS_ADDR] = "metrics_addr",
    [KEY_METRICS_PORT] = "metrics_port",
    [KEY_LOG_STATS_INTERVAL] = "log_stats_interval",
    [KEY_ADMIN_USERS] = "admin_users",
    [KEY_SERVER_REUSE] = "server_reuse",
    [KEY_SERVER_IDLE_TIMEOUT] = "server_idle_timeout",
    [KEY_SERVER_LIFETIME] = "server_lifetime",
    [KEY_CATALOG_CHECK_INTERVAL] = "catalog_check_interval",
    [KEY_MAX_IDLE_SERVERS] = "max_idle_servers",
    [KEY_MAX_CACHED_STATEMENTS] = "max_cached_statements",
};

static const char *const tls_mode_names[] = {
    [TLS_DISABLE] = "disable",
    [TLS_ALLOW] = "allow",
    [TLS_PREFER] = "prefer",
    [TLS_REQUIRE] = "require",
    [TLS_VERIFY_CA] = "verify-ca",
    [TLS_VERIFY_FULL] = "verify-full",
};

static const char *const auth_type_names[] = {
    [AUTH_PASSTHROUGH] = "passthrough",
    [AUTH_SCRAM] = "scram-sha-256",
};

#define DEFAULT_AUTH_QUERY "SELECT usename, passwd FROM pg_shadow WHERE usename = $1"

enum table_key {
    TKEY_CONFLICT,
    TKEY_ACTION,
    TKEY_UPDATE_COLUMNS,
    TKEY_DATABASE,
    TKEY_MODE,
    TKEY_SEARCH_PATH,
    TKEY_TRANSLATE_ERRORS,
    TABLE_KEY_COUNT,
};

static const char *const table_key_names[TABLE_KEY_COUNT] = {
    [TKEY_CONFLICT] = "conflict",
    [TKEY_ACTION] = "action",
    [TKEY_UPDATE_COLUMNS] = "update_columns",
    [TKEY_DATABASE] = "database",
    [TKEY_MODE] = "mode",
    [TKEY_SEARCH_PATH] = "search_path",
    [TKEY_TRANSLATE_ERRORS] = "translate_errors",
};

static const char *const action_names[] = {
    [TABLE_ACTION_AUTO] = "auto",
    [TABLE_ACTION_DO_NOTHING] = "do_nothing",
    [TABLE_ACTION_RETURN_EXISTING] = "return_existing",
    [TABLE_ACTION_DO_UPDATE] = "do_update",
    [TABLE_ACTION_NONE] = "none",
};

static const char *const mode_names[] = {
    [TABLE_MODE_ENFORCE] = "enforce",
    [TABLE_MODE_SHADOW] = "shadow",
};

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

enum section_kind { SECTION_NONE, SECTION_MAIN, SECTION_TABLE };

struct parser {
    const char *filename;
    const char *pos, *end; /* the text not yet handed to inih */
    int line;              /* the line inih is looking at */
    struct config *cfg;
    char *err;
    bool failed;
    int err_line;          /* line of the recorded error; 0: none in particular */
    enum section_kind section;
    bool saw_main;
    int main_seen[MAIN_KEY_COUNT];   /* line of each key, 0 when unset */
    int table_seen[TABLE_KEY_COUNT];
};

static void fail_at(struct parser *p, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Keeps the error on the earliest line: later ones are usually its
 * consequences. inih reports its syntax errors only at the end, so an
 * earlier line may still replace what was recorded. */
static void fail_at(struct parser *p, int line, const char *fmt, ...)
{
    if (p->failed && !(line > 0 && line < p->err_line))
        return;
    p->failed = true;
    p->err_line = line;
    int n = line > 0 ? snprintf(p->err, CONFIG_ERR_LEN, "%s:%d: ", p->filename, line)
                     : snprintf(p->err, CONFIG_ERR_LEN, "%s: ", p->filename);
    if (n < 0 || n >= CONFIG_ERR_LEN)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, CONFIG_ERR_LEN - (size_t)n, fmt, ap);
    va_end(ap);
}

static char *dup_str(struct parser *p, const char *s)
{
    char *d = strdup(s);
    if (!d)
        fail_at(p, p->line, "out of memory");
    return d;
}

bool name_list_add(struct name_list *l, char *name)
{
    char **names = name ? realloc(l->names, (l->count + 1) * sizeof(*names)) : NULL;

    if (!names) {
        free(name);
        return false;
    }
    l->names = names;
    l->names[l->count++] = name;
    return true;
}

void name_list_free(struct name_list *l)
{
    for (size_t i = 0; i < l->count; i++)
        free(l->names[i]);
    free(l->names);
    l->names = NULL;
    l->count = 0;
}

static void table_rule_free(struct table_rule *t)
{
    free(t->schema);
    free(t->name);
    free(t->database);
    name_list_free(&t->conflict);
    name_list_free(&t->update_columns);
    name_list_free(&t->search_path);
}

static void tls_config_free(struct tls_config *t)
{
    free(t->cert_file);
    free(t->key_file);
    free(t->ca_file);
    free(t->ciphers);
}

struct config *config_ref(struct config *cfg)
{
    atomic_fetch_add_explicit(&cfg->refs, 1, memory_order_relaxed);
    return cfg;
}

void config_unref(struct config *cfg)
{
    if (!cfg || atomic_fetch_sub_explicit(&cfg->refs, 1, memory_order_acq_rel) != 1)
        return;
    tls_config_free(&cfg->client_tls);
    tls_config_free(&cfg->server_tls);
    free(cfg->auth_file);
    free(cfg->auth_query);
    free(cfg->auth_user);
    free(cfg->path);
    free(cfg->listen_addr);
    free(cfg->metrics_addr);
    name_list_free(&cfg->admin_users);
    free(cfg->server_host);
    free(cfg->log_file);
    for (size_t i = 0; i < cfg->table_count; i++)
        table_rule_free(&cfg->tables[i]);
    free(cfg->tables);
    free(cfg);
}

const char *table_action_name(enum table_action action)
{
    return action_names[action];
}

const char *table_mode_name(enum table_mode mode)
{
    return mode_names[mode];
}

const char *tls_mode_name(enum tls_mode mode)
{
    return tls_mode_names[mode];
}

const char *ring_use_name(enum ring_use use)
{
    static const char *const names[] = { [RING_OFF] = "off", [RING_ON] = "on", [RING_AUTO] = "auto" };

    return names[use];
}

/* ---- values ------------------------------------------------------------ */

static bool parse_int(struct parser *p, const char *key, const char *value,
                      long min, long max, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end || v < min || v > max) {
        fail_at(p, p->line, "%s: expected an integer from %ld to %ld, got \"%s\"",
                key, min, max, value);
        return false;
    }
    *out = (int)v;
    return true;
}

/* Sizes as PostgreSQL writes them: a number with an optional B, kB, MB or GB. */
static bool parse_size(struct parser *p, const char *key, const char *value, size_t *out)
{
    static const struct { const char *unit; size_t mult; } units[] = {
        { "", 1 }, { "B", 1 }, { "kB", 1024 }, { "MB", 1024 * 1024 },
        { "GB", 1024 * 1024 * 1024 },
    };
    char *end;
    errno = 0;
    unsigned long long v = strtoull(value, &end, 10);
    if (!errno && end != value && isdigit((unsigned char)value[0])) {
        while (*end == ' ')
            end++;
        for (size_t i = 0; i < COUNT_OF(units); i++) {
            if (strcmp(end, units[i].unit) == 0 && v >= 1 && v <= SIZE_MAX / 2 / units[i].mult) {
                *out = (size_t)v * units[i].mult;
                return true;
            }
        }
    }
    fail_at(p, p->line, "%s: expected a size such as 65536, 64kB or 1MB, got \"%s\"", key, value);
    return false;
}

/* Whether value is one of the words for on or off, and which. */
static bool bool_word(const char *value, bool *out)
{
    static const char *const yes[] = { "on", "true", "yes", "1" };
    static const char *const no[] = { "off", "false", "no", "0" };
    for (size_t i = 0; i < COUNT_OF(yes); i++) {
        if (strcmp(value, yes[i]) == 0) { *out = true; return true; }
        if (strcmp(value, no[i]) == 0) { *out = false; return true; }
    }
    return false;
}

static bool parse_bool(struct parser *p, const char *key, const char *value, bool *out)
{
    if (bool_word(value, out))
        return true;
    fail_at(p, p->line, "%s: expected on or off, got \"%s\"", key, value);
    return false;
}

static bool parse_ring_use(struct parser *p, const char *key, const char *value,
                           enum ring_use *out)
{
    bool on;

    if (strcmp(value, "auto") == 0) {
        *out = RING_AUTO;
        return true;
    }
    if (bool_word(value, &on)) {
        *out = on ? RING_ON : RING_OFF;
        return true;
    }
    fail_at(p, p->line, "%s: expected auto, on or off, got \"%s\"", key, value);
    return false;
}

static bool parse_enum(struct parser *p, const char *key, const char *value,
                       const char *const *names, size_t count, int *out)
{
    for (size_t i = 0; i < count; i++) {
        if (strcmp(value, names[i]) == 0) {
            *out = (int)i;
            return true;
        }
    }
    char choices[256] = "";
    for (size_t i = 0; i < count; i++) {
        strncat(choices, names[i], sizeof(choices) - strlen(choices) - 1);
        if (i + 1 < count)
            strncat(choices, " | ", sizeof(choices) - strlen(choices) - 1);
    }
    fail_at(p, p->line, "%s: expected %s, got \"%s\"", key, choices, value);
    return false;
}

/* TLS versions as PgBouncer writes them: "secure" (1.2 and 1.3), "all", or
 * a comma-separated list of tlsv1.2 and tlsv1.3. Older versions are not
 * offered at all. */
static bool parse_protocols(struct parser *p, const char *key, const char *value,
                            unsigned *out)
{
    char buf[128];
    unsigned set = 0;

    snprintf(buf, sizeof(buf), "%s", value);
    for (char *save = NULL, *tok = strtok_r(buf, ", \t", &save); tok;
         tok = strtok_r(NULL, ", \t", &save)) {
        if (strcasecmp(tok, "secure") == 0 || strcasecmp(tok, "all") == 0)
            set |= TLS_PROTO_V1_2 | TLS_PROTO_V1_3;
        else if (strcasecmp(tok, "tlsv1.2") == 0)
            set |= TLS_PROTO_V1_2;
        else if (strcasecmp(tok, "tlsv1.3") == 0)
            set |= TLS_PROTO_V1_3;
        else {
            fail_at(p, p->line, "%s: expected secure, all, tlsv1.2 or tlsv1.3, got \"%s\"",
                    key, tok);
            return false;
        }
    }
    if (!set) {
        fail_at(p, p->line, "%s: must not be empty", key);
        return false;
    }
    *out = set;
    return true;
}

/* One SQL identifier, as PostgreSQL reads it: "quoted" keeps its case (""
 * is a quote), unquoted folds ASCII letters to lower case. Advances *s. */
static char *parse_ident(const char **s, const char **why)
{
    const char *c = *s;
    char *out = malloc(strlen(c) + 1), *o = out;

    if (!out) {
        *why = "out of memory";
        return NULL;
    }
    if (*c == '"') {
        for (c++;; c++) {
            if (*c == '\0') {
                *why = "unterminated quoted identifier";
                free(out);
                return NULL;
            }
            if (*c == '"') {
                if (c[1] != '"')
                    break;
                c++;
            }
            *o++ = *c;
        }
        c++;
        if (o == out) {
            *why = "zero-length quoted identifier";
            free(out);
            return NULL;
        }
    } else {
        if (!(isalpha((unsigned char)*c) || *c == '_' || (unsigned char)*c >= 0x80)) {
            *why = "expected an identifier";
            free(out);
            return NULL;
        }
        while (isalnum((unsigned char)*c) || *c == '_' || *c == '$' || (unsigned char)*c >= 0x80)
            *o++ = (char)tolower((unsigned char)*c++);
    }
    *o = '\0';
    *s = c;
    return out;
}

static const char *skip_spaces(const char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    return s;
}

/* A comma-separated list of identifiers. */
static bool parse_name_list(struct parser *p, const char *key, const char *value,
                            struct name_list *out)
{
    const char *s = skip_spaces(value), *why = NULL;

    for (;;) {
        char *name = parse_ident(&s, &why);
        if (!name)
            break;
        if (!name_list_add(out, name)) {
            why = "out of memory";
            break;
        }
        s = skip_spaces(s);
        if (*s == '\0')
            return true;
        if (*s != ',') {
            why = "expected a comma between names";
            break;
        }
        s = skip_spaces(s + 1);
    }
    fail_at(p, p->line, "%s: %s in \"%s\"", key, why, value);
    return false;
}

/* ---- sections ---------------------------------------------------------- */

static struct table_rule *current_table(struct parser *p)
{
    return &p->cfg->tables[p->cfg->table_count - 1];
}

/* Called for "[table schema.name]"; body is what follows "table". */
static void begin_table(struct parser *p, const char *body)
{
    struct config *cfg = p->cfg;
    struct table_rule *tables = realloc(cfg->tables, (cfg->table_count + 1) * sizeof(*tables));
    if (!tables) {
        fail_at(p, p->line, "out of memory");
        return;
    }
    cfg->tables = tables;
    struct table_rule *t = &tables[cfg->table_count++];
    memset(t, 0, sizeof(*t));
    t->line = p->line;
    t->translate_errors = true;

    const char *s = skip_spaces(body), *why = NULL;
    char *first = parse_ident(&s, &why), *second = NULL;
    if (first && *s == '.') {
        s++;
        second = parse_ident(&s, &why);
        if (!second) {
            free(first);
            first = NULL;
        }
    }
    if (first && *skip_spaces(s) != '\0') {
        why = "unexpected text after the table name";
        free(first);
        free(second);
        first = NULL;
    }
    if (!first) {
        fail_at(p, p->line, "[table %s]: %s; expected [table schema.name]", body, why);
        return;
    }
    if (second) {
        t->schema = first;
        t->name = second;
    } else {
        t->schema = dup_str(p, "public");
        t->name = first;
    }
}

/* Everything a table section needs that no single key can check. */
static void end_table(struct parser *p)
{
    struct table_rule *t = current_table(p);
    const char *action = action_names[t->action];

    switch (t->action) {
    case TABLE_ACTION_AUTO:
    case TABLE_ACTION_RETURN_EXISTING:
    case TABLE_ACTION_DO_UPDATE:
        if (t->conflict.count == 0)
            fail_at(p, t->line, "[table %s.%s]: action = %s needs conflict = <columns>",
                    t->schema, t->name, action);
        break;
    default:
        break;
    }
    if (t->action == TABLE_ACTION_DO_UPDATE && t->update_columns.count == 0)
        fail_at(p, t->line, "[table %s.%s]: action = do_update needs update_columns",
                t->schema, t->name);
    if (t->action != TABLE_ACTION_DO_UPDATE && t->update_columns.count > 0)
        fail_at(p, p->table_seen[TKEY_UPDATE_COLUMNS],
                "update_columns: only used with action = do_update, not %s", action);
    if (t->search_path.count == 0)
        parse_name_list(p, "search_path", "public", &t->search_path);

    for (size_t i = 0; i + 1 < p->cfg->table_count; i++) {
        const struct table_rule *o = &p->cfg->tables[i];
        bool same_db = (!o->database && !t->database) ||
                       (o->database && t->database && strcmp(o->database, t->database) == 0);
        if (same_db && strcmp(o->schema, t->schema) == 0 && strcmp(o->name, t->name) == 0)
            fail_at(p, t->line, "[table %s.%s] is already registered at line %d",
                    t->schema, t->name, o->line);
    }
}

static void end_section(struct parser *p)
{
    if (p->section == SECTION_TABLE && !p->failed)
        end_table(p);
    p->section = SECTION_NONE;
}

/* Section headers are seen here rather than through inih, which reports a
 * section only when a key follows it: an empty [table x] is still a rule. */
static void begin_section(struct parser *p, const char *name, size_t len)
{
    char buf[256];

    end_section(p);
    if (len >= sizeof(buf)) {
        fail_at(p, p->line, "section name too long");
        return;
    }
    memcpy(buf, name, len);
    buf[len] = '\0';
    memset(p->table_seen, 0, sizeof(p->table_seen));
    if (strcmp(buf, "idemproxy") == 0) {
        p->section = SECTION_MAIN;
        p->saw_main = true;
    } else if (strncmp(buf, "table", 5) == 0 && (buf[5] == ' ' || buf[5] == '\t')) {
        p->section = SECTION_TABLE;
        begin_table(p, buf + 6);
    } else {
        fail_at(p, p->line, "unknown section [%s]; expected [idemproxy] or [table schema.name]", buf);
    }
}

/* ---- keys -------------------------------------------------------------- */

static int find_key(const char *const *names, size_t count, const char *key)
{
    for (size_t i = 0; i < count; i++)
        if (strcmp(names[i], key) == 0)
            return (int)i;
    return -1;
}

static bool first_setting(struct parser *p, int *seen, const char *key)
{
    if (*seen) {
        fail_at(p, p->line, "%s is set twice (first at line %d)", key, *seen);
        return false;
    }
    *seen = p->line;
    return true;
}

static void set_string(struct parser *p, char **field, const char *key, const char *value)
{
    if (*value == '\0') {
        fail_at(p, p->line, "%s: must not be empty", key);
        return;
    }
    free(*field);
    *field = dup_str(p, value);
}

/* The length of the item of list at, spaces trimmed; *start is where it
 * begins and *next where the one after it does (NULL at the end). */
static size_t list_item(const char *at, const char **start, const char **next)
{
    const char *comma = strchr(at, ',');
    const char *end = comma ? comma : at + strlen(at);

    while (at < end && isspace((unsigned char)*at))
        at++;
    while (end > at && isspace((unsigned char)end[-1]))
        end--;
    *start = at;
    *next = comma ? comma + 1 : NULL;
    return (size_t)(end - at);
}

bool config_listen_item(const char **at, char item[CONFIG_ADDR_LEN])
{
    const char *start;

    if (!*at)
        return false;
    size_t len = list_item(*at, &start, at);
    snprintf(item, CONFIG_ADDR_LEN, "%.*s", (int)len, start);
    return true;
}

/* Addresses as PgBouncer lists them: "*" alone, or host names and
 * addresses separated by commas. */
static void parse_listen_addr(struct parser *p, const char *key, const char *value, char **out)
{
    const char *at = value, *start;
    int items = 0;
    bool wildcard = false;

    while (at) {
        size_t len = list_item(at, &start, &at);
        if (len == 0 || len >= CONFIG_ADDR_LEN) {
            fail_at(p, p->line, "%s: expected \"*\" or addresses and host names separated by "
                    "commas, got \"%s\"", key, value);
            return;
        }
        wildcard |= len == 1 && *start == '*';
        items++;
    }
    if (wildcard && items > 1) {
        fail_at(p, p->line, "%s: \"*\" is every address already; it takes no others", key);
        return;
    }
    if (items > CONFIG_MAX_LISTEN) {
        fail_at(p, p->line, "%s: at most %d addresses", key, CONFIG_MAX_LISTEN);
        return;
    }
    set_string(p, out, key, value);
}

static void set_main_key(struct parser *p, const char *key, const char *value)
{
    struct config *c = p->cfg;
    int k = find_key(main_key_names, MAIN_KEY_COUNT, key);

    if (k < 0) {
        fail_at(p, p->line, "unknown key \"%s\" in [idemproxy]", key);
        return;
    }
    if (!first_setting(p, &p->main_seen[k], key))
        return;
    switch ((enum main_key)k) {
    case KEY_LISTEN_ADDR: parse_listen_addr(p, key, value, &c->listen_addr); break;
    case KEY_LISTEN_PORT: parse_int(p, key, value, 1, 65535, &c->listen_port); break;
    case KEY_SERVER_HOST: set_string(p, &c->server_host, key, value); break;
    case KEY_SERVER_PORT: parse_int(p, key, value, 1, 65535, &c->server_port); break;
    case KEY_MAX_CLIENT_CONN: parse_int(p, key, value, 1, 1000000, &c->max_client_conn); break;
    case KEY_LOG_LEVEL: {
        int level;
        if (parse_enum(p, key, value, (const char *const[]){ "error", "warning", "info", "debug" },
                       4, &level))
            c->log_level = (enum log_level)level;
        break;
    }
    case KEY_LOG_FILE: set_string(p, &c->log_file, key, value); break;
    case KEY_MAX_HELD_MESSAGE: parse_size(p, key, value, &c->max_held_message); break;
    case KEY_CLIENT_LOGIN_TIMEOUT: parse_int(p, key, value, 1, 86400, &c->client_login_timeout); break;
    case KEY_SERVER_CONNECT_TIMEOUT: parse_int(p, key, value, 1, 3600, &c->server_connect_timeout); break;
    case KEY_SHUTDOWN_TIMEOUT: parse_int(p, key, value, 0, 86400, &c->shutdown_timeout); break;
    case KEY_TCP_KEEPALIVE: parse_bool(p, key, value, &c->tcp_keepalive); break;
    /* Linux's own limits for the three keepalive options. */
    case KEY_TCP_KEEPIDLE: parse_int(p, key, value, 0, 32767, &c->tcp_keepidle); break;
    case KEY_TCP_KEEPINTVL: parse_int(p, key, value, 0, 32767, &c->tcp_keepintvl); break;
    case KEY_TCP_KEEPCNT: parse_int(p, key, value, 0, 127, &c->tcp_keepcnt); break;
    case KEY_TCP_USER_TIMEOUT: parse_int(p, key, value, 0, 86400000, &c->tcp_user_timeout); break;
    case KEY_WORKERS: parse_int(p, key, value, 0, CONFIG_MAX_WORKERS, &c->workers); break;
    case KEY_SO_REUSEPORT: parse_bool(p, key, value, &c->so_reuseport); break;
    case KEY_IO_URING: parse_ring_use(p, key, value, &c->io_uring); break;
    case KEY_METRICS_ADDR: set_string(p, &c->metrics_addr, key, value); break;
    case KEY_METRICS_PORT: parse_int(p, key, value, 0, 65535, &c->metrics_port); break;
    case KEY_LOG_STATS_INTERVAL: parse_int(p, key, value, 0, 86400, &c->log_stats_interval); break;
    case KEY_ADMIN_USERS: parse_name_list(p, key, value, &c->admin_users); break;
    case KEY_SERVER_REUSE: parse_bool(p, key, value, &c->server_reuse); break;
    case KEY_SERVER_IDLE_TIMEOUT: parse_int(p, key, value, 1, 86400, &c->server_idle_timeout); break;
    case KEY_SERVER_LIFETIME: parse_int(p, key, value, 0, 315360000, &c->server_lifetime); break;
    case KEY_CATALOG_CHECK_INTERVAL:
        parse_int(p, key, value, 0, 86400, &c->catalog_check_interval);
        break;
    case KEY_MAX_IDLE_SERVERS: parse_int(p, key, value, 0, 1000000, &c->max_idle_servers); break;
    case KEY_MAX_CACHED_STATEMENTS:
        parse_int(p, key, value, 0, 100000, &c->max_cached_statements);
        break;
    case KEY_CLIENT_TLS_SSLMODE:
    case KEY_SERVER_TLS_SSLMODE: {
        int mode;
        if (parse_enum(p, key, value, tls_mode_names, COUNT_OF(tls_mode_names), &mode)) {
            if (k == KEY_SERVER_TLS_SSLMODE && mode == TLS_ALLOW)
                fail_at(p, p->line, "%s: allow is for clients; expected disable, prefer, "
                        "require, verify-ca or verify-full", key);
            (k == KEY_CLIENT_TLS_SSLMODE ? &c->client_tls : &c->server_tls)->mode =
                (enum tls_mode)mode;
        }
        break;
    }
    case KEY_CLIENT_TLS_CERT_FILE: set_string(p, &c->client_tls.cert_file, key, value); break;
    case KEY_CLIENT_TLS_KEY_FILE: set_string(p, &c->client_tls.key_file, key, value); break;
    case KEY_CLIENT_TLS_CA_FILE: set_string(p, &c->client_tls.ca_file, key, value); break;
    case KEY_CLIENT_TLS_PROTOCOLS: parse_protocols(p, key, value, &c->client_tls.protocols); break;
    case KEY_CLIENT_TLS_CIPHERS: set_string(p, &c->client_tls.ciphers, key, value); break;
    case KEY_SERVER_TLS_CERT_FILE: set_string(p, &c->server_tls.cert_file, key, value); break;
    case KEY_SERVER_TLS_KEY_FILE: set_string(p, &c->server_tls.key_file, key, value); break;
    case KEY_SERVER_TLS_CA_FILE: set_string(p, &c->server_tls.ca_file, key, value); break;
    case KEY_SERVER_TLS_PROTOCOLS: parse_protocols(p, key, value, &c->server_tls.protocols); break;
    case KEY_SERVER_TLS_CIPHERS: set_string(p, &c->server_tls.ciphers, key, value); break;
    case KEY_AUTH_TYPE: {
        int type;
        if (parse_enum(p, key, value, auth_type_names, COUNT_OF(auth_type_names), &type))
            c->auth_type = (enum auth_type)type;
        break;
    }
    case KEY_AUTH_FILE: set_string(p, &c->auth_file, key, value); break;
    case KEY_AUTH_QUERY: set_string(p, &c->auth_query, key, value); break;
    case KEY_AUTH_USER: set_string(p, &c->auth_user, key, value); break;
    case MAIN_KEY_COUNT: break;
    }
}

static void set_table_key(struct parser *p, const char *key, const char *value)
{
    struct table_rule *t = current_table(p);
    int k = find_key(table_key_names, TABLE_KEY_COUNT, key);
    int choice;

    if (k < 0) {
        fail_at(p, p->line, "unknown key \"%s\" in [table %s.%s]", key, t->schema, t->name);
        return;
    }
    if (!first_setting(p, &p->table_seen[k], key))
        return;
    switch ((enum table_key)k) {
    case TKEY_CONFLICT: parse_name_list(p, key, value, &t->conflict); break;
    case TKEY_ACTION:
        if (parse_enum(p, key, value, action_names, COUNT_OF(action_names), &choice))
            t->action = (enum table_action)choice;
        break;
    case TKEY_UPDATE_COLUMNS: parse_name_list(p, key, value, &t->update_columns); break;
    case TKEY_DATABASE: set_string(p, &t->database, key, value); break;
    case TKEY_MODE:
        if (parse_enum(p, key, value, mode_names, COUNT_OF(mode_names), &choice))
            t->mode = (enum table_mode)choice;
        break;
    case TKEY_SEARCH_PATH: parse_name_list(p, key, value, &t->search_path); break;
    case TKEY_TRANSLATE_ERRORS: parse_bool(p, key, value, &t->translate_errors); break;
    case TABLE_KEY_COUNT: break;
    }
}

static int on_key(void *user, const char *section, const char *key, const char *value)
{
    struct parser *p = user;
    (void)section;

    if (p->failed)
        return 1;
    switch (p->section) {
    case SECTION_MAIN: set_main_key(p, key, value); break;
    case SECTION_TABLE: set_table_key(p, key, value); break;
    case SECTION_NONE:
        fail_at(p, p->line, "\"%s\" is outside any section; put it under [idemproxy]", key);
        break;
    }
    return 1;
}

/* inih's line source. Counting lines here gives every message its line
 * number; section headers are taken here too (see begin_section). */
static char *next_line(char *buf, int size, void *user)
{
    struct parser *p = user;

    if (p->pos >= p->end)
        return NULL;
    const char *from = p->pos;
    const char *nl = memchr(from, '\n', (size_t)(p->end - from));
    p->pos = nl ? nl + 1 : p->end;
    size_t len = (size_t)(p->pos - from);
    p->line++;

    /* Leading blanks go: inih would take an indented key for the
     * continuation of the previous value. A byte order mark goes too. */
    if (p->line == 1 && len >= 3 && memcmp(from, "\xEF\xBB\xBF", 3) == 0) {
        from += 3;
        len -= 3;
    }
    while (len > 0 && (*from == ' ' || *from == '\t')) {
        from++;
        len--;
    }
    if (memchr(from, '\0', len))
        fail_at(p, p->line, "line contains a NUL byte");
    if (len > (size_t)size - 1) {
        fail_at(p, p->line, "line is longer than %d characters", size - 2);
        len = (size_t)size - 1;
    }
    memcpy(buf, from, len);
    buf[len] = '\0';

    if (buf[0] == '[') {
        const char *close = strchr(buf, ']');
        if (close && !p->failed)
            begin_section(p, buf + 1, (size_t)(close - buf - 1));
    }
    return buf;
}

static struct config *config_defaults(void)
{
    struct config *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    atomic_init(&c->refs, 1);
    c->listen_addr = strdup("127.0.0.1");
    c->listen_port = 6433;
    c->server_host = strdup("127.0.0.1");
    c->server_port = 5432;
    c->max_client_conn = 1000;
    c->log_level = LOG_INFO;
    c->max_held_message = 1024 * 1024;
    c->client_login_timeout = 60;
    c->server_connect_timeout = 10;
    c->shutdown_timeout = 30;
    c->tcp_keepalive = true;
    c->log_stats_interval = 60;
    c->server_idle_timeout = 600;
    c->server_lifetime = 3600;
    c->catalog_check_interval = 60;
    c->max_idle_servers = 100;
    c->max_cached_statements = 100;
    c->io_uring = RING_AUTO;
    c->metrics_addr = strdup("127.0.0.1");
    c->client_tls.protocols = c->server_tls.protocols = TLS_PROTO_V1_2 | TLS_PROTO_V1_3;
    c->auth_query = strdup(DEFAULT_AUTH_QUERY);
    if (!c->listen_addr || !c->server_host || !c->auth_query || !c->metrics_addr) {
        config_unref(c);
        return NULL;
    }
    return c;
}

/* What [idemproxy] needs that no single key can check; errors name the line
 * of the key that asks for more. */
static void check_main(struct parser *p)
{
    const struct config *c = p->cfg;
    const struct tls_config *ct = &c->client_tls, *st = &c->server_tls;

    if (ct->mode != TLS_DISABLE && (!ct->cert_file || !ct->key_file))
        fail_at(p, p->main_seen[KEY_CLIENT_TLS_SSLMODE],
                "client_tls_sslmode = %s needs client_tls_cert_file and client_tls_key_file",
                tls_mode_names[ct->mode]);
    if (ct->mode >= TLS_VERIFY_CA && !ct->ca_file)
        fail_at(p, p->main_seen[KEY_CLIENT_TLS_SSLMODE],
                "client_tls_sslmode = %s needs client_tls_ca_file to check client certificates",
                tls_mode_names[ct->mode]);
    if (st->mode >= TLS_VERIFY_CA && !st->ca_file)
        fail_at(p, p->main_seen[KEY_SERVER_TLS_SSLMODE],
                "server_tls_sslmode = %s needs server_tls_ca_file", tls_mode_names[st->mode]);
    if (!st->cert_file != !st->key_file)
        fail_at(p, p->main_seen[st->cert_file ? KEY_SERVER_TLS_CERT_FILE : KEY_SERVER_TLS_KEY_FILE],
                "server_tls_cert_file and server_tls_key_file go together");
    if (c->auth_type == AUTH_SCRAM && !c->auth_file && !c->auth_user)
        fail_at(p, p->main_seen[KEY_AUTH_TYPE],
                "auth_type = scram-sha-256 needs auth_file or auth_user (for auth_query)");
    if (c->server_reuse && c->auth_type != AUTH_SCRAM)
        fail_at(p, p->main_seen[KEY_SERVER_REUSE],
                "server_reuse = on needs auth_type = scram-sha-256: when the server checks "
                "each client's password, a server connection cannot serve another client");
}

struct config *config_parse(const char *text, size_t len, const char *filename,
                            char err[CONFIG_ERR_LEN])
{
    struct parser p = {
        .filename = filename,
        .pos = text,
        .end = text + len,
        .err = err,
    };

    err[0] = '\0';
    p.cfg = config_defaults();
    if (!p.cfg) {
        snprintf(err, CONFIG_ERR_LEN, "%s: out of memory", filename);
        return NULL;
    }
    int bad_line = ini_parse_stream(next_line, &p, on_key, &p);
    end_section(&p);
    if (bad_line > 0)
        fail_at(&p, bad_line, "expected \"key = value\" or a [section] header");
    else if (bad_line < 0)
        fail_at(&p, 0, "out of memory");
    if (!p.saw_main)
        fail_at(&p, 0, "no [idemproxy] section");
    check_main(&p);
    if (!p.failed)
        p.cfg->path = dup_str(&p, filename);
    if (p.failed) {
        config_unref(p.cfg);
        return NULL;
    }
    return p.cfg;
}

/* Grows buf to cap bytes; with wipe, the old copy is cleansed first. */
static char *grow(char *buf, size_t len, size_t cap, bool wipe)
{
    char *grown = malloc(cap);

    if (grown && len > 0)
        memcpy(grown, buf, len);
    if (buf && wipe)
        OPENSSL_cleanse(buf, len);
    free(buf);
    return grown;
}

char *config_read_file(const char *path, size_t *len, bool wipe, char err[CONFIG_ERR_LEN])
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, CONFIG_ERR_LEN, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *text = NULL;
    size_t cap = 0;
    *len = 0;
    for (;;) {
        if (cap - *len < 4096) {
            cap = cap ? cap * 2 : 8192;
            text = grow(text, *len, cap, wipe);
            if (!text) {
                fclose(f);
                snprintf(err, CONFIG_ERR_LEN, "%s: out of memory", path);
                return NULL;
            }
        }
        size_t n = fread(text + *len, 1, cap - *len, f);
        *len += n;
        if (n == 0)
            break;
    }
    bool read_failed = ferror(f);
    fclose(f);
    if (read_failed) {
        if (wipe)
            OPENSSL_cleanse(text, *len);
        free(text);
        snprintf(err, CONFIG_ERR_LEN, "%s: read error", path);
        return NULL;
    }
    return text;
}

struct config *config_load(const char *path, char err[CONFIG_ERR_LEN])
{
    size_t len;
    char *text = config_read_file(path, &len, false, err);

    if (!text)
        return NULL;
    struct config *cfg = config_parse(text, len, path, err);
    free(text);
    return cfg;
}

bool config_restart_needed(const struct config *old, const struct config *new_cfg,
                           char *buf, size_t buflen)
{
    const struct {
        const char *key;
        bool changed;
    } fixed[] = {
        { "listen_addr", strcmp(old->listen_addr, new_cfg->listen_addr) != 0 },
        { "listen_port", old->listen_port != new_cfg->listen_port },
        { "workers", old->workers != new_cfg->workers },
        { "so_reuseport", old->so_reuseport != new_cfg->so_reuseport },
        { "io_uring", old->io_uring != new_cfg->io_uring },
        { "metrics_addr", strcmp(old->metrics_addr, new_cfg->metrics_addr) != 0 },
        { "metrics_port", old->metrics_port != new_cfg->metrics_port },
    };

    buf[0] = '\0';
    for (size_t i = 0; i < COUNT_OF(fixed); i++) {
        if (!fixed[i].changed)
            continue;
        if (buf[0])
            strncat(buf, ", ", buflen - strlen(buf) - 1);
        strncat(buf, fixed[i].key, buflen - strlen(buf) - 1);
    }
    return buf[0] != '\0';
}
