#include "pgproto.h"

#include <string.h>

enum pg_next pg_msg_head(const uint8_t *buf, size_t len, struct pg_msg_head *head)
{
    if (len < PG_HEAD_LEN)
        return PG_NEXT_MORE;
    uint32_t msg_len = pg_get_u32(buf + 1);
    if (msg_len < 4)
        return PG_NEXT_BAD;
    head->type = (char)buf[0];
    head->len = msg_len;
    return PG_NEXT_OK;
}

enum pg_next pg_msg_next(const uint8_t *buf, size_t len, struct pg_msg *msg, size_t *used)
{
    struct pg_msg_head head;
    enum pg_next r = pg_msg_head(buf, len, &head);

    *used = 0;
    if (r != PG_NEXT_OK)
        return r;
    /* Compared this way round so that no length field can overflow. */
    if (len - 1 < head.len)
        return PG_NEXT_MORE;
    msg->type = head.type;
    msg->body = buf + PG_HEAD_LEN;
    msg->body_len = head.len - 4;
    *used = (size_t)head.len + 1;
    return PG_NEXT_OK;
}

bool pg_statement_text(char type, const uint8_t *body, size_t len, size_t *at, size_t *text_len)
{
    size_t start = 0;

    if (type == 'P') {
        const uint8_t *name_end = memchr(body, '\0', len);
        if (!name_end)
            return false;
        start = (size_t)(name_end - body) + 1;
    } else if (type != 'Q') {
        return false;
    }
    const uint8_t *text_end = memchr(body + start, '\0', len - start);
    if (!text_end)
        return false;
    size_t end = (size_t)(text_end - body);
    /* A Query is its text; a Parse goes on with the parameter types. */
    if (type == 'Q' && end + 1 != len)
        return false;
    if (type == 'P') {
        if (len - end - 1 < 2)
            return false;
        size_t nparams = ((size_t)body[end + 1] << 8) | body[end + 2];
        if (len - end - 3 != nparams * 4)
            return false;
    }
    *at = start;
    *text_len = end - start;
    return true;
}

bool pg_param_status(const uint8_t *body, size_t len, const char **name, const char **value)
{
    const uint8_t *name_end = memchr(body, '\0', len);

    if (!name_end)
        return false;
    const uint8_t *v = name_end + 1;
    const uint8_t *value_end = memchr(v, '\0', (size_t)(body + len - v));
    if (!value_end || value_end + 1 != body + len)
        return false;
    *name = (const char *)body;
    *value = (const char *)v;
    return true;
}

bool pg_startup_len_ok(uint32_t len)
{
    return len >= PG_STARTUP_MIN_LEN && len <= PG_STARTUP_MAX_LEN;
}

/* Walks the NUL-terminated name/value pairs of a StartupMessage. */
static bool parse_startup_params(const uint8_t *p, const uint8_t *end,
                                 struct pg_startup *out, const char **why)
{
    for (;;) {
        if (p >= end) {
            *why = "startup packet lacks its final terminator";
            return false;
        }
        if (*p == '\0')
            break;
        const uint8_t *name_end = memchr(p, '\0', (size_t)(end - p));
        if (!name_end || name_end + 1 >= end) {
            *why = "startup packet has a parameter name without a value";
            return false;
        }
        const uint8_t *value = name_end + 1;
        const uint8_t *value_end = memchr(value, '\0', (size_t)(end - value));
        if (!value_end) {
            *why = "startup packet has an unterminated parameter value";
            return false;
        }
        const char *name = (const char *)p;
        if (strcmp(name, "user") == 0)
            out->user = (const char *)value;
        else if (strcmp(name, "database") == 0)
            out->database = (const char *)value;
        else if (strcmp(name, "application_name") == 0)
            out->application_name = (const char *)value;
        else if (strcmp(name, "replication") == 0)
            out->replication = true;
        p = value_end + 1;
    }
    if (p + 1 != end) {
        *why = "startup packet has bytes after its final terminator";
        return false;
    }
    return true;
}

enum pg_startup_kind pg_startup_parse(const uint8_t *pkt, size_t len,
                                      struct pg_startup *out, const char **why)
{
    memset(out, 0, sizeof(*out));
    *why = NULL;
    if (len < PG_STARTUP_MIN_LEN || !pg_startup_len_ok((uint32_t)len) || pg_get_u32(pkt) != len) {
        *why = "invalid length of startup packet";
        return out->kind = PG_STARTUP_INVALID;
    }
    uint32_t code = pg_get_u32(pkt + 4);
    switch (code) {
    case PG_SSL_REQUEST_CODE:
    case PG_GSSENC_REQUEST_CODE:
        if (len != 8) {
            *why = "invalid length of encryption request";
            return out->kind = PG_STARTUP_INVALID;
        }
        return out->kind = code == PG_SSL_REQUEST_CODE ? PG_STARTUP_SSL_REQUEST
                                                        : PG_STARTUP_GSSENC_REQUEST;
    case PG_CANCEL_REQUEST_CODE: {
        size_t key_len = len - 12;
        if (len < 12 + 4 || key_len > PG_CANCEL_KEY_MAX) {
            *why = "invalid length of cancel request";
            return out->kind = PG_STARTUP_INVALID;
        }
        out->cancel_pid = pg_get_u32(pkt + 8);
        out->cancel_key_len = key_len;
        return out->kind = PG_STARTUP_CANCEL;
    }
    default:
        break;
    }
    if ((code >> 16) != 3) {
        *why = "unsupported frontend protocol: idemproxy speaks protocol 3";
        return out->kind = PG_STARTUP_INVALID;
    }
    out->protocol = code;
    if (!parse_startup_params(pkt + 8, pkt + len, out, why))
        return out->kind = PG_STARTUP_INVALID;
    return out->kind = PG_STARTUP_MESSAGE;
}

bool pg_error_parse(const uint8_t *body, size_t len, struct pg_error *out)
{
    const uint8_t *p = body, *end = body + len;

    memset(out, 0, sizeof(*out));
    while (p < end && *p != '\0') {
        char field = (char)*p++;
        const uint8_t *value_end = memchr(p, '\0', (size_t)(end - p));
        if (!value_end)
            return false;
        const char *value = (const char *)p;
        switch (field) {
        case 'V': out->severity = value; break;
        case 'S': if (!out->severity) out->severity = value; break;
        case 'C': out->code = value; break;
        case 'M': out->message = value; break;
        case 's': out->schema = value; break;
        case 't': out->table = value; break;
        case 'n': out->constraint = value; break;
        case 'd': out->datatype = value; break;
        case 'P': out->position = value; break;
        case 'W': out->where = value; break;
        default: break;
        }
        p = value_end + 1;
    }
    return p + 1 == end;
}

size_t pg_fields_splice(uint8_t *buf, size_t cap, char type, const uint8_t *body, size_t len,
                        char field, const char *types, const char *const values[], size_t n)
{
    const uint8_t *old = NULL, *p = body, *end = body + len;
    size_t old_len = 0, added = 0;

    while (p < end && *p != '\0') {
        const uint8_t *v = p + 1;
        const uint8_t *v_end = memchr(v, '\0', (size_t)(end - v));
        if (!v_end)
            return SIZE_MAX;
        if (*p == (uint8_t)field && !old) {
            old = p;
            old_len = (size_t)(v_end + 1 - p);
        }
        p = v_end + 1;
    }
    if (!old || p + 1 != end)
        return SIZE_MAX;
    for (size_t i = 0; i < n; i++)
        added += 1 + strlen(values[i]) + 1;
    size_t need = PG_HEAD_LEN + len - old_len + added;
    if (need > cap)
        return need;
    uint8_t *o = buf;
    *o++ = (uint8_t)type;
    pg_put_u32(o, (uint32_t)(need - 1));
    o += 4;
    size_t before = (size_t)(old - body);
    memcpy(o, body, before);
    o += before;
    for (size_t i = 0; i < n; i++) {
        size_t value_len = strlen(values[i]) + 1;
        *o++ = (uint8_t)types[i];
        memcpy(o, values[i], value_len);
        o += value_len;
    }
    memcpy(o, old + old_len, len - before - old_len);
    return need;
}

size_t pg_fields_replace(uint8_t *buf, size_t cap, char type, const uint8_t *body, size_t len,
                         char field, const char *value)
{
    return pg_fields_splice(buf, cap, type, body, len, field, &field, &value, 1);
}

size_t pg_context_param(const char *where, size_t *kept)
{
    const char *line = strrchr(where, '\n');
    const char *start = line ? line + 1 : where;
    size_t n = 0;

    *kept = line ? (size_t)(line - where) : 0;
    for (const char *p = strchr(start, '$'); p && n == 0; p = strchr(p + 1, '$')) {
        for (const char *d = p + 1; *d >= '0' && *d <= '9' && n <= PG_MAX_PARAMS; d++)
            n = n * 10 + (size_t)(*d - '0');
    }
    return n <= PG_MAX_PARAMS ? n : 0;
}

char pg_ready_status(const uint8_t *body, size_t len)
{
    if (len != 1)
        return 0;
    char s = (char)body[0];
    return (s == 'I' || s == 'T' || s == 'E') ? s : 0;
}

size_t pg_error_build(uint8_t *buf, size_t cap, const char *severity,
                      const char *sqlstate, const char *message)
{
    const struct { char field; const char *value; } fields[] = {
        { 'S', severity }, { 'V', severity }, { 'C', sqlstate }, { 'M', message },
    };
    size_t need = PG_HEAD_LEN + 1;

    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        need += 1 + strlen(fields[i].value) + 1;
    if (need > cap)
        return need;

    uint8_t *p = buf;
    *p++ = 'E';
    pg_put_u32(p, (uint32_t)(need - 1));
    p += 4;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        size_t n = strlen(fields[i].value) + 1;
        *p++ = (uint8_t)fields[i].field;
        memcpy(p, fields[i].value, n);
        p += n;
    }
    *p = '\0';
    return need;
}

/* Appends one message of type with its body parts to buf (when it fits) and
 * returns the new length. */
const uint8_t PG_TERMINATE[5] = { 'X', 0, 0, 0, 4 };

size_t pg_put_msg(uint8_t *buf, size_t cap, size_t at, char type, const void *const parts[],
                  const size_t lens[], size_t n)
{
    size_t len = 4;

    for (size_t i = 0; i < n; i++)
        len += lens[i];
    if (at + 1 + len <= cap) {
        uint8_t *p = buf + at;
        *p++ = (uint8_t)type;
        pg_put_u32(p, (uint32_t)len);
        p += 4;
        for (size_t i = 0; i < n; i++) {
            memcpy(p, parts[i], lens[i]);
            p += lens[i];
        }
    }
    return at + 1 + len;
}

/* Writes buf only when the whole of it fits: the builders' contract. */
static size_t all_or_nothing(uint8_t *buf, size_t cap, size_t need,
                             size_t (*build)(uint8_t *, size_t, const void *), const void *arg)
{
    if (need <= cap)
        build(buf, cap, arg);
    return need;
}

static size_t build_query(uint8_t *buf, size_t cap, const void *sql)
{
    const void *parts[] = { sql };
    const size_t lens[] = { strlen(sql) + 1 };
    return pg_put_msg(buf, cap, 0, 'Q', parts, lens, 1);
}

size_t pg_build_query(uint8_t *buf, size_t cap, const char *sql)
{
    return all_or_nothing(buf, cap, build_query(NULL, 0, sql), build_query, sql);
}

static size_t build_command_complete(uint8_t *buf, size_t cap, const void *tag)
{
    const void *parts[] = { tag };
    const size_t lens[] = { strlen(tag) + 1 };
    return pg_put_msg(buf, cap, 0, 'C', parts, lens, 1);
}

size_t pg_build_command_complete(uint8_t *buf, size_t cap, const char *tag)
{
    return all_or_nothing(buf, cap, build_command_complete(NULL, 0, tag),
                          build_command_complete, tag);
}

struct extended_run {
    const char *name, *sql;
};

/* The extended run's messages, from at. */
static size_t put_extended_run(uint8_t *buf, size_t cap, size_t at, const struct extended_run *run)
{
    static const uint8_t no_params[2] = { 0, 0 }, all_rows[4] = { 0, 0, 0, 0 };
    size_t name_len = strlen(run->name) + 1;

    /* Parse: name, text, no parameter types. */
    at = pg_put_msg(buf, cap, at, 'P',
                 (const void *const[]){ run->name, run->sql, no_params },
                 (const size_t[]){ name_len, strlen(run->sql) + 1, 2 }, 3);
    /* Bind: portal, statement, no parameter formats, parameters or result
     * formats. */
    at = pg_put_msg(buf, cap, at, 'B',
                 (const void *const[]){ run->name, run->name, no_params, no_params, no_params },
                 (const size_t[]){ name_len, name_len, 2, 2, 2 }, 5);
    at = pg_put_msg(buf, cap, at, 'E', (const void *const[]){ run->name, all_rows },
                 (const size_t[]){ name_len, 4 }, 2);
    at = pg_put_msg(buf, cap, at, 'C', (const void *const[]){ "P", run->name },
                 (const size_t[]){ 1, name_len }, 2);
    return pg_put_msg(buf, cap, at, 'C', (const void *const[]){ "S", run->name },
                   (const size_t[]){ 1, name_len }, 2);
}

static size_t build_extended_run(uint8_t *buf, size_t cap, const void *arg)
{
    return put_extended_run(buf, cap, 0, arg);
}

size_t pg_build_extended_run(uint8_t *buf, size_t cap, const char *name, const char *sql)
{
    struct extended_run run = { name, sql };
    return all_or_nothing(buf, cap, build_extended_run(NULL, 0, &run), build_extended_run, &run);
}

struct standalone_run {
    const char *name;
    const char *const *sql;
    size_t n;
};

/* A Close of the statement an earlier run left when it failed before its
 * own Close (the server skipped it), a run per statement, a Sync. */
static size_t build_standalone_run(uint8_t *buf, size_t cap, const void *arg)
{
    const struct standalone_run *run = arg;
    size_t at = pg_put_msg(buf, cap, 0, 'C', (const void *const[]){ "S", run->name },
                           (const size_t[]){ 1, strlen(run->name) + 1 }, 2);
    for (size_t i = 0; i < run->n; i++)
        at = put_extended_run(buf, cap, at, &(struct extended_run){ run->name, run->sql[i] });
    return pg_put_msg(buf, cap, at, 'S', NULL, NULL, 0);
}

size_t pg_build_standalone_run(uint8_t *buf, size_t cap, const char *name,
                               const char *const sql[], size_t n)
{
    struct standalone_run run = { name, sql, n };
    return all_or_nothing(buf, cap, build_standalone_run(NULL, 0, &run), build_standalone_run,
                          &run);
}

size_t pg_build_auth(uint8_t *buf, size_t cap, uint32_t code, const void *data, size_t len)
{
    uint8_t code_be[4];

    pg_put_u32(code_be, code);
    const void *parts[] = { code_be, data };
    const size_t lens[] = { 4, len };
    size_t need = pg_put_msg(NULL, 0, 0, 'R', parts, lens, len ? 2 : 1);
    if (need <= cap)
        pg_put_msg(buf, cap, 0, 'R', parts, lens, len ? 2 : 1);
    return need;
}

/* The next parameter name of a StartupMessage that pg_startup_parse
 * accepted, from *at; NULL at the end. *at moves past the value. */
static const char *next_param(const char **at)
{
    const char *name = *at;

    if (*name == '\0')
        return NULL;
    *at = name + strlen(name) + 1;
    *at += strlen(*at) + 1;
    return name;
}

static bool is_protocol_option(const char *name)
{
    return strncmp(name, "_pq_.", 5) == 0;
}

size_t pg_build_negotiation(uint8_t *buf, size_t cap, const uint8_t *startup,
                            uint16_t newest_minor)
{
    const char *params = (const char *)startup + 8, *at = params, *name;
    uint16_t minor = (uint16_t)pg_get_u32(startup + 4);
    uint32_t options = 0;
    size_t need = PG_HEAD_LEN + 8;

    while ((name = next_param(&at)))
        if (is_protocol_option(name)) {
            options++;
            need += strlen(name) + 1;
        }
    if (minor <= newest_minor && options == 0)
        return 0;
    if (need > cap)
        return need;
    buf[0] = 'v';
    pg_put_u32(buf + 1, (uint32_t)(need - 1));
    pg_put_u32(buf + PG_HEAD_LEN, PG_PROTOCOL(3, minor < newest_minor ? minor : newest_minor));
    pg_put_u32(buf + PG_HEAD_LEN + 4, options);
    uint8_t *out = buf + PG_HEAD_LEN + 8;
    for (at = params; (name = next_param(&at));)
        if (is_protocol_option(name)) {
            memcpy(out, name, strlen(name) + 1);
            out += strlen(name) + 1;
        }
    return need;
}

size_t pg_build_sasl_initial(uint8_t *buf, size_t cap, const char *mechanism, const void *data,
                             size_t len)
{
    uint8_t len_be[4];

    pg_put_u32(len_be, (uint32_t)len);
    const void *parts[] = { mechanism, len_be, data };
    const size_t lens[] = { strlen(mechanism) + 1, 4, len };
    size_t need = pg_put_msg(NULL, 0, 0, 'p', parts, lens, 3);
    if (need <= cap)
        pg_put_msg(buf, cap, 0, 'p', parts, lens, 3);
    return need;
}

size_t pg_build_sasl_response(uint8_t *buf, size_t cap, const void *data, size_t len)
{
    const void *parts[] = { data };
    const size_t lens[] = { len };
    size_t need = pg_put_msg(NULL, 0, 0, 'p', parts, lens, 1);
    if (need <= cap)
        pg_put_msg(buf, cap, 0, 'p', parts, lens, 1);
    return need;
}

bool pg_auth_request(const uint8_t *body, size_t len, uint32_t *code, const uint8_t **data,
                     size_t *data_len)
{
    if (len < 4)
        return false;
    *code = pg_get_u32(body);
    *data = body + 4;
    *data_len = len - 4;
    return true;
}

bool pg_sasl_initial(const uint8_t *body, size_t len, const char **mechanism,
                     const uint8_t **data, size_t *data_len)
{
    const uint8_t *end = memchr(body, '\0', len);

    if (!end || (size_t)(body + len - end) < 5)
        return false;
    uint32_t n = pg_get_u32(end + 1);
    size_t rest = (size_t)(body + len - end) - 5;
    *mechanism = (const char *)body;
    if (n == UINT32_MAX) {
        *data = NULL;
        *data_len = 0;
        return rest == 0;
    }
    if (n != rest)
        return false;
    *data = end + 5;
    *data_len = n;
    return true;
}
