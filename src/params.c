#include "params.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pgproto.h"

#define MARK '\x01'
#define MASK_LEN 2

#define OID_UNSPECIFIED 0
#define OID_INT8 20
#define OID_INT4 23
#define OID_NUMERIC 1700

/* ---- where the constants are ------------------------------------------- */

enum place {
    PLACE_BEFORE, /* before the VALUES keyword */
    PLACE_ROWS,   /* after VALUES or a row's comma: a row opens next */
    PLACE_ROW,    /* inside a row */
    PLACE_AFTER,  /* after a row: a comma, or the rest */
    PLACE_REST,   /* after the VALUES lists */
};

enum item {
    ITEM_START, /* nothing of the item yet */
    ITEM_MINUS, /* a minus sign */
    ITEM_CONST, /* the constant, perhaps signed: only its end may follow */
    ITEM_OTHER, /* anything else: no constant may be in it */
};

struct walk {
    enum place place;
    enum item item;
    int depth; /* parentheses open */
};

static bool word_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '$' || c >= 0x80;
}

/* The end of the token at key[i]: a word (a name, keyword, number or $n),
 * a quoted name, a mask, or one character. */
static size_t token_end(const char *key, size_t len, size_t i)
{
    if (key[i] == MARK)
        return i + MASK_LEN <= len ? i + MASK_LEN : len;
    if (key[i] == '"') {
        for (size_t j = i + 1; j < len; j++) {
            if (key[j] != '"')
                continue;
            if (j + 1 < len && key[j + 1] == '"') {
                j++;
                continue;
            }
            return j + 1;
        }
        return len;
    }
    if (word_char((unsigned char)key[i])) {
        size_t j = i;
        while (j < len && word_char((unsigned char)key[j]))
            j++;
        return j;
    }
    return i + 1;
}

/* One token of the rows; false when a constant is not a whole item. */
static bool row_token(struct walk *w, const char *tok, size_t n)
{
    char c = tok[0];

    if (w->depth > 1) {
        if (c == MARK)
            return false;
        w->depth += c == '(' ? 1 : c == ')' ? -1 : 0;
        return true;
    }
    if (c == ',' || c == ')') {
        w->item = ITEM_START;
        if (c == ')') {
            w->depth = 0;
            w->place = PLACE_AFTER;
        }
        return true;
    }
    if (w->item == ITEM_CONST)
        return false; /* something follows the constant within its item */
    if (c == MARK) {
        /* A minus goes only with a number: -'5' would need an operator
         * the unknown type does not resolve. */
        if (w->item == ITEM_START || (w->item == ITEM_MINUS && n == MASK_LEN && tok[1] != 's')) {
            w->item = ITEM_CONST;
            return true;
        }
        return false;
    }
    if (c == '-' && w->item == ITEM_START) {
        w->item = ITEM_MINUS;
        return true;
    }
    if (c == '(')
        w->depth++;
    w->item = ITEM_OTHER;
    return true;
}

/* Whether every mask in key is a whole item of the VALUES lists. */
static bool masks_are_items(const char *key, size_t len)
{
    struct walk w = { PLACE_BEFORE, ITEM_START, 0 };

    for (size_t i = 0; i < len;) {
        if (rewrite_is_space(key[i])) {
            i++;
            continue;
        }
        size_t end = token_end(key, len, i);
        const char *tok = key + i;
        size_t n = end - i;
        i = end;
        /* The text's own $n would be taken for the proxy's: in a Query it
         * is an error the server must still report. */
        if (tok[0] == '$')
            return false;
        switch (w.place) {
        case PLACE_BEFORE:
            if (tok[0] == MARK)
                return false;
            if (tok[0] == '(')
                w.depth++;
            else if (tok[0] == ')')
                w.depth--;
            else if (w.depth == 0 && n == 6 && strncasecmp(tok, "values", 6) == 0)
                w.place = PLACE_ROWS;
            break;
        case PLACE_ROWS:
            if (tok[0] != '(')
                return false;
            w.place = PLACE_ROW;
            w.item = ITEM_START;
            w.depth = 1;
            break;
        case PLACE_ROW:
            if (!row_token(&w, tok, n))
                return false;
            break;
        case PLACE_AFTER:
            if (tok[0] == ',') {
                w.place = PLACE_ROWS;
                break;
            }
            w.place = PLACE_REST;
            /* fall through */
        case PLACE_REST:
            if (tok[0] == MARK)
                return false;
            break;
        }
    }
    return w.place == PLACE_AFTER || w.place == PLACE_REST;
}

/* ---- the statement and its values -------------------------------------- */

/* The buffer p (cap bytes) with room for need; NULL, and p freed, when
 * memory ran out. */
static void *grown(void *p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return p;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *q = realloc(p, n);
    if (!q)
        free(p);
    *cap = q ? n : 0;
    return q;
}

/* The length of "$n". */
static size_t dollar_len(size_t n)
{
    size_t len = 2;

    while (n >= 10) {
        n /= 10;
        len++;
    }
    return len;
}

/* Writes "$n" at out; returns its length. */
static size_t put_dollar(char *out, size_t n)
{
    size_t len = dollar_len(n);

    out[0] = '$';
    for (size_t i = len - 1; i > 0; i--, n /= 10)
        out[i] = (char)('0' + n % 10);
    return len;
}

static uint32_t type_of(char kind, const char *value, size_t n)
{
    switch (kind) {
    case 'i':
        return OID_INT4;
    case 'n':
        /* A number is digits, or digits.digits (shape.h). */
        return !memchr(value, '.', n) && shape_digits_within(value, n, INT64_MAX) ? OID_INT8
                                                                                   : OID_NUMERIC;
    default:
        return OID_UNSPECIFIED;
    }
}

/* Appends the value of the constant at text[at], len bytes: a string's
 * content with its doubled quotes single, a number as written. */
static void put_value(struct params *p, char kind, const char *text, size_t len)
{
    uint8_t *out = p->values + p->values_len + 4;
    size_t n = 0;

    if (kind == 's') {
        for (size_t i = 1; i + 1 < len; i++) {
            out[n++] = (uint8_t)text[i];
            if (text[i] == '\'')
                i++;
        }
    } else {
        memcpy(out, text, len);
        n = len;
    }
    pg_put_u32(p->values + p->values_len, (uint32_t)n);
    p->values_len += 4 + n;
}

struct params_stmt *params_stmt_of(const char *key, size_t key_len, size_t nconsts)
{
    if (nconsts == 0 || nconsts > PARAMS_MAX || !masks_are_items(key, key_len))
        return NULL;
    /* "$256" is four bytes where a mask is two. */
    struct params_stmt *ps = malloc(sizeof(*ps) + nconsts + key_len + 2 * nconsts + 1);
    if (!ps)
        return NULL;
    ps->text = ps->kinds + nconsts;
    ps->text_len = 0;
    ps->nconsts = 0;
    ps->ascii = true;
    for (size_t i = 0; i < key_len; i++)
        ps->ascii &= (unsigned char)key[i] <= 0x7f;
    for (size_t i = 0; i < key_len;) {
        /* The key's markers are its masks and nothing else (shape.h). */
        const char *mark = memchr(key + i, MARK, key_len - i);
        size_t run = (mark ? (size_t)(mark - key) : key_len) - i;
        memcpy(ps->text + ps->text_len, key + i, run);
        ps->text_len += run;
        i += run;
        if (!mark)
            break;
        if (ps->nconsts == nconsts || i + 1 >= key_len) {
            free(ps);
            return NULL;
        }
        ps->kinds[ps->nconsts++] = key[i + 1];
        ps->text_len += put_dollar(ps->text + ps->text_len, ps->nconsts);
        i += MASK_LEN;
    }
    ps->text[ps->text_len] = '\0';
    if (ps->nconsts != nconsts) {
        free(ps);
        return NULL;
    }
    return ps;
}

bool params_bind(const struct params_stmt *ps, const struct shape_const *consts, size_t nconsts,
                 const char *text, size_t len, struct params *out)
{
    size_t consts_len = 0;

    if (nconsts != ps->nconsts)
        return false;
    for (size_t i = 0; i < nconsts; i++) {
        if (consts[i].at > len || consts[i].len > len - consts[i].at)
            return false;
        consts_len += consts[i].len;
    }
    if (!(out->types = grown(out->types, &out->types_cap, 2 + 4 * nconsts)) ||
        !(out->values = grown(out->values, &out->values_cap, 2 + 4 * nconsts + consts_len)))
        return false;
    pg_put_u16(out->types, (uint16_t)nconsts);
    pg_put_u16(out->values, (uint16_t)nconsts);
    out->types_len = 2;
    out->values_len = 2;
    for (size_t i = 0; i < nconsts; i++) {
        const char *value = text + consts[i].at;
        pg_put_u32(out->types + out->types_len, type_of(ps->kinds[i], value, consts[i].len));
        out->types_len += 4;
        put_value(out, ps->kinds[i], value, consts[i].len);
    }
    return true;
}

size_t params_position(const char *text, size_t len, size_t pos, bool utf8)
{
    struct shape sh = { 0 };
    ptrdiff_t shift = 0; /* how much further on the statement is, so far */

    if (pos == 0 || !shape_of(text, len, &sh)) {
        shape_free(&sh);
        return pos;
    }
    for (size_t i = 0; i < sh.nconsts; i++) {
        const struct shape_const *k = &sh.consts[i];
        size_t at = utf8 ? rewrite_utf8_chars(text, k->at) : k->at;
        size_t width = utf8 ? k->chars : k->len;
        size_t param_len = dollar_len(i + 1);
        size_t stmt_at = (size_t)((ptrdiff_t)at + shift);
        if (pos - 1 < stmt_at)
            break;
        if (pos - 1 < stmt_at + param_len) {
            shape_free(&sh);
            return at + 1;
        }
        shift += (ptrdiff_t)param_len - (ptrdiff_t)width;
    }
    shape_free(&sh);
    return (size_t)((ptrdiff_t)pos - shift);
}

size_t params_const_position(const char *text, size_t len, size_t n, bool utf8)
{
    struct shape sh = { 0 };
    size_t pos = 0;

    if (n > 0 && shape_of(text, len, &sh) && n <= sh.nconsts) {
        size_t at = sh.consts[n - 1].at;
        pos = (utf8 ? rewrite_utf8_chars(text, at) : at) + 1;
    }
    shape_free(&sh);
    return pos;
}

void params_free(struct params *p)
{
    free(p->types);
    free(p->values);
    memset(p, 0, sizeof(*p));
}
