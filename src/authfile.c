#include "authfile.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "hashtable.h"
#include "scram.h"

#define SCRAM_PREFIX "SCRAM-SHA-256$"
#define MD5_LEN 35 /* "md5" and 32 hex digits */

struct auth_entry {
    UT_hash_handle hh; /* keyed by user */
    char *user;
    char *secret;
    enum auth_secret_kind kind;
    int line;
};

struct auth_file {
    atomic_uint refs;
    struct auth_entry *users;
};

struct parser {
    const char *filename;
    char *err;
    int line;
    struct auth_file *file;
};

static void entry_free(struct auth_entry *e)
{
    free(e->user);
    if (e->secret) {
        OPENSSL_cleanse(e->secret, strlen(e->secret));
        free(e->secret);
    }
    free(e);
}

struct auth_file *authfile_ref(struct auth_file *f)
{
    atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
    return f;
}

void authfile_unref(struct auth_file *f)
{
    struct auth_entry *e, *tmp;

    if (!f || atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) != 1)
        return;
    HASH_ITER(hh, f->users, e, tmp) {
        HASH_DEL(f->users, e);
        entry_free(e);
    }
    free(f);
}

static bool fail_at(struct parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Records "FILE:LINE: why"; returns false for the caller to return. */
static bool fail_at(struct parser *p, const char *fmt, ...)
{
    int n = snprintf(p->err, CONFIG_ERR_LEN, "%s:%d: ", p->filename, p->line);
    if (n < 0 || n >= CONFIG_ERR_LEN)
        return false;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, CONFIG_ERR_LEN - (size_t)n, fmt, ap);
    va_end(ap);
    return false;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* Reads the quoted field at *pos (just past its opening quote), a doubled
 * quote standing for one, into a fresh string; *pos ends past the closing
 * quote. NULL when the line ends first, or without memory (*oom). */
static char *take_quoted(const char **pos, const char *end, bool *oom)
{
    const char *p = *pos;
    size_t len = 0;

    for (;; p++) {
        if (p == end)
            return NULL;
        if (*p == '"') {
            if (p + 1 == end || p[1] != '"')
                break;
            p++;
        }
        len++;
    }
    char *out = malloc(len + 1);
    if (!out) {
        *oom = true;
        return NULL;
    }
    size_t i = 0;
    for (const char *q = *pos; q < p; q++) {
        out[i++] = *q;
        if (*q == '"')
            q++;
    }
    out[i] = '\0';
    *pos = p + 1;
    return out;
}

static bool is_md5(const char *secret)
{
    return strlen(secret) == MD5_LEN && strncmp(secret, "md5", 3) == 0 &&
           strspn(secret + 3, "0123456789abcdef") == MD5_LEN - 3;
}

/* Classifies e->secret; only a SCRAM secret can be wrong. */
static bool classify(struct parser *p, struct auth_entry *e)
{
    if (strncmp(e->secret, SCRAM_PREFIX, strlen(SCRAM_PREFIX)) == 0) {
        struct scram_secret parsed;
        bool ok = scram_secret_parse(e->secret, &parsed);
        OPENSSL_cleanse(&parsed, sizeof(parsed));
        if (!ok)
            return fail_at(p, "user \"%s\": malformed SCRAM secret; expected "
                              "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> "
                              "in base64, as pg_authid.rolpassword holds it",
                           e->user);
        e->kind = AUTH_SECRET_SCRAM;
    } else {
        e->kind = is_md5(e->secret) ? AUTH_SECRET_MD5 : AUTH_SECRET_PLAIN;
    }
    return true;
}

/* Reads "user" "secret" (pos is past the opening quote of the user) into
 * e. Whatever follows the secret is ignored, as PgBouncer ignores it. */
static bool read_fields(struct parser *p, const char *pos, const char *end,
                        struct auth_entry *e)
{
    bool oom = false;

    e->user = take_quoted(&pos, end, &oom);
    if (!e->user)
        return fail_at(p, oom ? "out of memory" : "unterminated quote in the user name");
    if (!*e->user)
        return fail_at(p, "empty user name");
    while (pos < end && is_blank(*pos))
        pos++;
    if (pos == end || *pos != '"')
        return fail_at(p, "user \"%s\": expected the secret in double quotes after the name",
                       e->user);
    pos++;
    e->secret = take_quoted(&pos, end, &oom);
    if (!e->secret)
        return oom ? fail_at(p, "out of memory")
                   : fail_at(p, "user \"%s\": unterminated quote in the secret", e->user);
    return true;
}

static bool check_new(struct parser *p, const struct auth_entry *e)
{
    struct auth_entry *seen;

    HASH_FIND_STR(p->file->users, e->user, seen);
    if (seen)
        return fail_at(p, "user \"%s\" is listed twice (first at line %d)", e->user,
                       seen->line);
    return true;
}

/* One line, without its '\n': blank, a ';' comment or an entry. */
static bool parse_line(struct parser *p, const char *pos, const char *end)
{
    if (memchr(pos, '\0', (size_t)(end - pos)))
        return fail_at(p, "line contains a NUL byte");
    while (pos < end && is_blank(*pos))
        pos++;
    if (pos == end || *pos == ';')
        return true;
    if (*pos != '"')
        return fail_at(p, "expected \"user\" \"secret\", each in double quotes");

    struct auth_entry *e = calloc(1, sizeof(*e));
    if (!e)
        return fail_at(p, "out of memory");
    e->line = p->line;
    if (!read_fields(p, pos + 1, end, e) || !check_new(p, e) || !classify(p, e)) {
        entry_free(e);
        return false;
    }
    HASH_ADD_KEYPTR(hh, p->file->users, e->user, strlen(e->user), e);
    return true;
}

struct auth_file *authfile_parse(const char *text, size_t len, const char *filename,
                                 char err[CONFIG_ERR_LEN])
{
    struct parser p = {.filename = filename, .err = err};
    const char *pos = text, *end = text + len;

    err[0] = '\0';
    p.file = calloc(1, sizeof(*p.file));
    if (!p.file) {
        snprintf(err, CONFIG_ERR_LEN, "%s: out of memory", filename);
        return NULL;
    }
    atomic_init(&p.file->refs, 1);
    /* A byte order mark, as editors on Windows write one. */
    if (len >= 3 && memcmp(pos, "\xEF\xBB\xBF", 3) == 0)
        pos += 3;
    while (pos < end) {
        const char *nl = memchr(pos, '\n', (size_t)(end - pos));
        const char *line_end = nl ? nl : end;
        p.line++;
        if (!parse_line(&p, pos, line_end)) {
            authfile_unref(p.file);
            return NULL;
        }
        pos = nl ? nl + 1 : end;
    }
    return p.file;
}

struct auth_file *authfile_load(const char *path, char err[CONFIG_ERR_LEN])
{
    size_t len;
    char *text = config_read_file(path, &len, true, err);

    if (!text)
        return NULL;
    struct auth_file *af = authfile_parse(text, len, path, err);
    OPENSSL_cleanse(text, len);
    free(text);
    return af;
}

const char *authfile_secret(const struct auth_file *f, const char *user,
                            enum auth_secret_kind *kind)
{
    struct auth_entry *e;

    HASH_FIND_STR(f->users, user, e);
    if (!e)
        return NULL;
    *kind = e->kind;
    return e->secret;
}

size_t authfile_count(const struct auth_file *f)
{
    return HASH_COUNT(f->users);
}
