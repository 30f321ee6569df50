#include "shape.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MARK '\x01'
#define MASK_LEN 2

/* How PostgreSQL's scanner classes a byte, as far as shapes need it. */
enum { CH_DIGIT = 1, CH_IDENT_START = 2, CH_IDENT = 4 };
static const unsigned char char_class[256] = {
    ['0' ... '9'] = CH_DIGIT | CH_IDENT,
    ['a' ... 'z'] = CH_IDENT_START | CH_IDENT,
    ['A' ... 'Z'] = CH_IDENT_START | CH_IDENT,
    ['_'] = CH_IDENT_START | CH_IDENT,
    ['$'] = CH_IDENT,
    [0x80 ... 0xff] = CH_IDENT_START | CH_IDENT,
};

static bool is_digit(unsigned char c)
{
    return char_class[c] & CH_DIGIT;
}

/* What may begin an identifier or keyword. */
static bool ident_start(unsigned char c)
{
    return char_class[c] & CH_IDENT_START;
}

static bool ident_char(unsigned char c)
{
    return char_class[c] & CH_IDENT;
}

/* Just past the quote that closes the quoted run opening at text[i] (a
 * doubled quote is one quote inside); 0 when it does not close. */
static size_t quoted_end(const char *text, size_t len, size_t i)
{
    char q = text[i];

    for (size_t j = i + 1; j < len; j++) {
        if (text[j] != q)
            continue;
        if (j + 1 < len && text[j + 1] == q) {
            j++;
            continue;
        }
        return j + 1;
    }
    return 0;
}

bool shape_digits_within(const char *d, size_t n, uint64_t max)
{
    uint64_t v = 0;

    while (n > 0 && *d == '0') {
        d++;
        n--;
    }
    /* Twenty digits or more exceed any int64. */
    if (n > 19)
        return false;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (uint64_t)(d[i] - '0');
    return v <= max;
}

/* The end of the number at text[i] and its kind ('i' int4, 'n' numeric),
 * for the two forms read here: digits, and digits.digits. 0 for any other
 * (exponents, a trailing dot, junk after it): that stays in the key. */
static size_t number_end(const char *text, size_t len, size_t i, char *kind)
{
    size_t j = i;

    while (j < len && is_digit((unsigned char)text[j]))
        j++;
    if (j < len && text[j] == '.') {
        if (j + 1 >= len || !is_digit((unsigned char)text[j + 1]))
            return 0;
        size_t f = j + 1;
        while (f < len && is_digit((unsigned char)text[f]))
            f++;
        if (f < len && (ident_char((unsigned char)text[f]) || text[f] == '.'))
            return 0;
        *kind = 'n';
        return f;
    }
    if (j < len && ident_char((unsigned char)text[j]))
        return 0;
    /* The scanner makes a number int4 holds an integer constant and any
     * other one a numeric. */
    *kind = shape_digits_within(text + i, j - i, INT32_MAX) ? 'i' : 'n';
    return j;
}

/* Just past the bytes of a class that start at text[i]. */
static size_t run_end(const char *text, size_t len, size_t i, unsigned char class)
{
    while (i < len && (char_class[(unsigned char)text[i]] & class))
        i++;
    return i;
}

static bool add_const(struct shape *sh, const char *text, size_t at, size_t end)
{
    if (sh->nconsts == sh->consts_cap) {
        size_t n = sh->consts_cap ? sh->consts_cap * 2 : 8;
        struct shape_const *c = realloc(sh->consts, n * sizeof(*c));
        if (!c)
            return false;
        sh->consts = c;
        sh->consts_cap = n;
    }
    sh->consts[sh->nconsts++] =
        (struct shape_const){ at, end - at, rewrite_utf8_chars(text + at, end - at) };
    return true;
}

bool shape_of(const char *text, size_t len, struct shape *sh)
{
    size_t k = 0, i = 0, copied = 0; /* text before copied is in the key */

    sh->key_len = 0;
    sh->nconsts = 0;
    /* A one-digit number becomes two bytes: twice the text is the most. */
    if (sh->key_cap < 2 * len + 1) {
        char *key = realloc(sh->key, 2 * len + 1);
        if (!key)
            return false;
        sh->key = key;
        sh->key_cap = 2 * len + 1;
    }
    while (i < len) {
        unsigned char c = (unsigned char)text[i];
        size_t end;
        bool masked = false;
        char kind = 's';

        if (c == MARK)
            goto none;
        if ((c == '-' || c == '/') && i + 1 < len && text[i + 1] == (c == '-' ? '-' : '*'))
            goto none; /* a comment: quotes in it are no strings */
        if (c == '\'') {
            /* E'', B'', X'', N'', U&'' and the like read otherwise. */
            if (i > 0 && (ident_char((unsigned char)text[i - 1]) || text[i - 1] == '&'))
                goto none;
            if (!(end = quoted_end(text, len, i)))
                goto none;
            masked = true;
        } else if (c == '"') {
            /* A name is copied into the key: the marker in it would pass
             * for a mask. */
            if (!(end = quoted_end(text, len, i)) || memchr(text + i, MARK, end - i))
                goto none;
        } else if (c == '$') {
            /* $n is a parameter; $tag$ would open a dollar quote. */
            if (i + 1 >= len || !is_digit((unsigned char)text[i + 1]))
                goto none;
            end = run_end(text, len, i + 1, CH_DIGIT);
        } else if (ident_start(c)) {
            end = run_end(text, len, i, CH_IDENT);
        } else if (is_digit(c)) {
            /* After a dot the digits are the tail of a number like .5. */
            end = i > 0 && text[i - 1] == '.' ? 0 : number_end(text, len, i, &kind);
            masked = end != 0;
            if (!masked)
                end = run_end(text, len, i, CH_DIGIT);
        } else {
            end = i + 1;
        }
        /* What is not masked goes into the key as it is, a run at a time. */
        if (masked) {
            if (!add_const(sh, text, i, end))
                goto none;
            memcpy(sh->key + k, text + copied, i - copied);
            k += i - copied;
            sh->key[k++] = MARK;
            sh->key[k++] = kind;
            copied = end;
        }
        i = end;
    }
    if (sh->nconsts == 0)
        goto none;
    memcpy(sh->key + k, text + copied, len - copied);
    k += len - copied;
    sh->key[k] = '\0';
    sh->key_len = k;
    return true;
none:
    sh->key_len = 0;
    sh->nconsts = 0;
    return false;
}

void shape_free(struct shape *sh)
{
    free(sh->key);
    free(sh->consts);
    memset(sh, 0, sizeof(*sh));
}

/* How much longer than their masks the constants before offset are, in
 * bytes and characters; offset counts in the text (to_key) or in the key.
 * False when offset falls inside a constant. */
static bool shift_before(const struct shape *sh, size_t offset, bool to_key, ptrdiff_t *bytes,
                         ptrdiff_t *chars)
{
    ptrdiff_t b = 0, c = 0;

    for (size_t i = 0; i < sh->nconsts; i++) {
        const struct shape_const *k = &sh->consts[i];
        size_t at = to_key ? k->at : (size_t)((ptrdiff_t)k->at - b);
        size_t width = to_key ? k->len : MASK_LEN;
        if (offset <= at)
            break;
        if (offset < at + width)
            return false;
        b += (ptrdiff_t)k->len - MASK_LEN;
        c += (ptrdiff_t)k->chars - MASK_LEN;
    }
    *bytes = b;
    *chars = c;
    return true;
}

/* Copies from's statements into out with their offsets moved from the
 * text's coordinates into the key's (to_key) or back, and splices the
 * clauses (taken from from->text) into base. */
static bool carry(const struct shape *sh, const struct rewrite_result *from, bool to_key,
                  const char *base, size_t base_len, struct rewrite_result *out)
{
    memset(out, 0, sizeof(*out));
    out->reason = from->reason;
    out->stmt_count = from->stmt_count;
    if (from->nstmts) {
        out->stmts = malloc(from->nstmts * sizeof(*out->stmts));
        if (!out->stmts)
            return false;
        out->nstmts = from->nstmts;
    }
    size_t added = 0;
    for (size_t i = 0; i < from->nstmts; i++) {
        struct rewrite_stmt *st = &out->stmts[i];
        ptrdiff_t b, c;
        *st = from->stmts[i];
        if (!shift_before(sh, st->offset, to_key, &b, &c))
            goto fail;
        int sign = to_key ? -1 : 1;
        st->offset = (size_t)((ptrdiff_t)st->offset + sign * b);
        st->offset_chars = (size_t)((ptrdiff_t)st->offset_chars + sign * c);
        if (st->offset > base_len)
            goto fail;
        added += st->inserted;
    }
    if (!from->text)
        return true;
    out->text = malloc(base_len + added + 1);
    if (!out->text)
        goto fail;
    size_t at = 0, n = 0, from_at = 0;
    for (size_t i = 0; i < out->nstmts; i++) {
        const struct rewrite_stmt *st = &out->stmts[i];
        if (!st->inserted)
            continue;
        if (st->offset < at || from->stmts[i].offset + from_at + st->inserted > from->text_len)
            goto fail;
        memcpy(out->text + n, base + at, st->offset - at);
        n += st->offset - at;
        memcpy(out->text + n, from->text + from->stmts[i].offset + from_at, st->inserted);
        n += st->inserted;
        from_at += st->inserted;
        at = st->offset;
    }
    memcpy(out->text + n, base + at, base_len - at);
    n += base_len - at;
    out->text[n] = '\0';
    out->text_len = n;
    return true;
fail:
    rewrite_result_free(out);
    return false;
}

bool shape_generalise(const struct shape *sh, const struct rewrite_result *decided,
                      struct rewrite_result *out)
{
    return carry(sh, decided, true, sh->key, sh->key_len, out);
}

bool shape_apply(const struct shape *sh, const struct rewrite_result *general, const char *text,
                 size_t len, struct rewrite_result *out)
{
    return carry(sh, general, false, text, len, out);
}
