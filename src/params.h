/*
 * params: a single INSERT that writes its values into the text, as a
 * statement with parameters and the values to bind to them.
 *
 * An application on the simple protocol sends VALUES (42, 'retry') in a
 * Query, and the server parses, analyses and plans every one of them. The
 * texts of one shape (shape.h) differ only in their constants, so one
 * prepared statement with $1, $2, ... in their place serves them all, and
 * each Query becomes a Bind of its values.
 *
 * That means what the text meant only where a parameter of the constant's
 * own type is read as the constant is. So every masked constant must be a
 * whole item of a VALUES list (a number may carry a minus sign), where
 * PostgreSQL assigns it to its column whatever it is: not DATE '...', not
 * '...'::type, not part of an expression, and no constant anywhere else.
 * The types are the parser's (make_const): a number that fits int4 is
 * int4, other digits that fit int8 are int8, any other number is numeric,
 * and a string is left for the server to infer, as an unknown literal is.
 *
 * Pure: no globals, no I/O.
 */
#ifndef IDEM_PARAMS_H
#define IDEM_PARAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shape.h"

/* At most this many constants become parameters; a longer multi-row
 * INSERT stays as it is (its parse is shared by its rows anyway). */
#define PARAMS_MAX 256

/* The statement of one shape: its key with $1, $2, ... for the masks.
 * Built once per shape (the decision cache keeps it with the shape's
 * decision); each text of the shape then only binds its values. */
struct params_stmt {
    char *text;     /* NUL-terminated */
    size_t text_len;
    size_t nconsts;
    bool ascii;     /* no byte of the text is beyond ASCII */
    char kinds[];   /* each mask's kind, as in the key */
};

/* What a Bind of one text carries. Zeroed before first use; the buffers
 * are kept from one call to the next. */
struct params {
    uint8_t *types;   /* as in a Parse: int16 count, int32 type OID each */
    size_t types_len;
    uint8_t *values;  /* as in a Bind: int16 count, int32 length and bytes each */
    size_t values_len;
    size_t types_cap, values_cap;
};

/* The statement for a shape's key (key_len bytes, nconsts masks; or the
 * key of a decision about it, shape_generalise's text, which keeps them).
 * NULL when a mask is not a whole VALUES item, there are none or more than
 * PARAMS_MAX, the key holds another number of masks, or memory ran out:
 * texts of that shape then run as they are. Freed with free(). */
struct params_stmt *params_stmt_of(const char *key, size_t key_len, size_t nconsts);

/* The types and values of text (len bytes) as ps: its constants, consts
 * (nconsts of them, shape_of's), bound to ps's parameters. False when
 * they are not ps->nconsts, one lies outside the text, or memory ran out.
 * The types follow the values (a number past int8 is numeric), so two
 * texts of one shape may run as two statements. */
bool params_bind(const struct params_stmt *ps, const struct shape_const *consts, size_t nconsts,
                 const char *text, size_t len, struct params *out);

/* The position (1-based, as in an ErrorResponse's P field) in text (len
 * bytes) that stands where pos stands in its parameterised statement: an
 * error the server reports in the statement, shown in the text the client
 * knows. A position on a parameter maps to its constant's start. utf8
 * says how the server counts: UTF-8 characters, or one byte each. */
size_t params_position(const char *text, size_t len, size_t pos, bool utf8);

/* The position (as params_position's) of text's n-th constant, counted
 * from 1: where PostgreSQL, running text itself, points at the value that
 * parameter $n binds. 0 when text has no n-th constant. */
size_t params_const_position(const char *text, size_t len, size_t n, bool utf8);

/* Frees the buffers; p is zeroed again. */
void params_free(struct params *p);

#endif
