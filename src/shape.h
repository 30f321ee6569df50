/*
 * shape: a statement text with the values of its constants masked, so that
 * texts that differ only in those values share one rewrite decision.
 *
 * An application that sends its INSERTs with the simple protocol puts the
 * values in the text (VALUES (42, 'retry')): every text is new, and each
 * would cost a parse, a scan and a verifying re-parse (some 400k
 * instructions, most of them libpg_query's protobuf). Masking the string
 * and number constants gives a key that is the same for all of them; the
 * decision taken on the first text of a shape is carried to the others by
 * moving its splice offsets across the constants' length differences.
 *
 * That is sound only when the masking reads the text exactly as
 * PostgreSQL's scanner does, so it reads only the plain cases: '...'
 * strings under standard_conforming_strings (the caller's session check)
 * and unsigned decimal numbers, with the token kind kept in the key (a
 * number that fits int4 is another token than one that does not). Texts
 * with comments, dollar quotes, E'', U&'', B'' or X'' strings, or a byte
 * 0x01 (the mask's marker) outside a string, a quoted name included, have
 * no shape: they are their own key, and every 0x01 in a key is a mask.
 * Everything but the constants' values stays byte for byte in the key, so
 * two texts of one shape are one token sequence.
 *
 * Pure: no globals, no I/O.
 */
#ifndef IDEM_SHAPE_H
#define IDEM_SHAPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rewrite.h"

/* One masked constant: where it is in the text, in bytes and in UTF-8
 * characters of its own. In the key it is two bytes, 0x01 and its kind. */
struct shape_const {
    size_t at, len, chars;
};

/* Zeroed before first use. Its buffers are kept from one shape_of to the
 * next, so that a caller who masks every statement does not allocate for
 * each. */
struct shape {
    char *key;          /* NUL-terminated */
    size_t key_len;
    struct shape_const *consts;
    size_t nconsts;
    size_t key_cap, consts_cap;
};

/* Masks the constants of text (len bytes) into sh. False when it has none,
 * has something the masking does not read as the scanner would, or memory
 * ran out: the text is then its own key. */
bool shape_of(const char *text, size_t len, struct shape *sh);

/* Whether the decimal digits d (n of them, digits only) are a value no
 * greater than max (at most INT64_MAX). */
bool shape_digits_within(const char *d, size_t n, uint64_t max);

/* Frees the buffers; sh is zeroed again. */
void shape_free(struct shape *sh);

/* The decision about a text of shape sh (decided) as the decision about
 * the shape: offsets in the key's coordinates, the clauses spliced into the
 * key. False when memory ran out or an offset lies inside a constant,
 * which a clause placed after a token never does. */
bool shape_generalise(const struct shape *sh, const struct rewrite_result *decided,
                      struct rewrite_result *out);

/* The decision about text (len bytes, of shape sh) from its shape's. False
 * when memory ran out or the decision does not fit the shape. */
bool shape_apply(const struct shape *sh, const struct rewrite_result *general, const char *text,
                 size_t len, struct rewrite_result *out);

#endif
