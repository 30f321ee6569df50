/*
 * rewrite: recognise INSERTs into registered tables and splice their ON
 * CONFLICT clause into the statement text.
 *
 * PostgreSQL's own grammar (libpg_query) decides what each statement is; its
 * scanner finds where the clause goes. The clause is spliced into the
 * client's text at one byte offset per statement, so everything else stays
 * byte for byte: comments, whitespace, $n parameters, quoting. Nothing is
 * deparsed.
 *
 * Pure: text in, decision out. No sockets, no globals, no catalog access;
 * what a table's rule allows arrives precomputed in struct rewrite_target.
 */
#ifndef IDEM_REWRITE_H
#define IDEM_REWRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* Why a statement (or a whole text) was or was not rewritten. The names
 * (rewrite_reason_name) label counters and log lines. */
enum rewrite_reason {
    RR_REWRITTEN,       /* the clause was spliced in */
    RR_SHADOW,          /* would have been rewritten; mode = shadow left it */
    RR_NOT_INSERT,      /* no INSERT into any registered table's name (pre-filter) */
    RR_OTHER_TABLE,     /* INSERTs, none into a registered table */
    RR_HAS_ON_CONFLICT, /* the statement already says what to do on conflict */
    RR_NESTED,          /* an INSERT inside a WITH or EXPLAIN of another statement */
    RR_ACTION_NONE,     /* action = none: left for error translation */
    RR_FORBIDDEN,       /* the table's indexes, rules or privileges forbid this form */
    RR_PARSE_ERROR,     /* libpg_query rejects it; the server will say why */
    RR_TOO_LARGE,       /* above max_held_message: streamed through unread */
    RR_SESSION,         /* client_encoding or standard_conforming_strings make the text
                           unsafe to scan, or the session's role or search_path are
                           not those the catalog check decided for */
    RR_UNVERIFIED,      /* the spliced text did not re-parse as intended: left alone */
    RR_COUNT,
};

const char *rewrite_reason_name(enum rewrite_reason reason);

/* Whether reason can be one INSERT's into a registered table (counted for
 * that table) rather than a whole text's that concerns none in particular
 * (RR_NOT_INSERT, RR_OTHER_TABLE, RR_PARSE_ERROR, RR_TOO_LARGE,
 * RR_SESSION). */
bool rewrite_reason_of_table(enum rewrite_reason reason);

/* One registered table as the rewriter sees it. */
struct rewrite_target {
    const char *schema; /* folded as PostgreSQL stores names */
    const char *name;
    /* An unqualified name (no schema) means this table: its schema comes
     * first on the rule's search_path among the schemas that have a
     * relation of this name. */
    bool unqualified_ok;
    bool shadow;        /* mode = shadow: count and report, change nothing */
    /* The clause for an INSERT without (plain) and with (returning) a
     * RETURNING list, beginning with a space: " ON CONFLICT ...". NULL when
     * the rule leaves that form alone; why_* then says why (RR_ACTION_NONE
     * or RR_FORBIDDEN). */
    const char *clause_plain;
    const char *clause_returning;
    enum rewrite_reason why_plain;
    enum rewrite_reason why_returning;
};

struct rewrite_rules {
    const struct rewrite_target *targets;
    size_t count;
};

/* One statement of the text that is an INSERT into a registered table. */
struct rewrite_stmt {
    size_t target;       /* index into rules->targets */
    size_t index;        /* which statement of the text (0-based) */
    enum rewrite_reason reason;
    bool returning;      /* it has a RETURNING list */
    size_t offset;       /* byte offset in the original text where the clause goes */
    size_t offset_chars; /* the same offset counted in UTF-8 characters */
    size_t inserted;     /* bytes spliced in there: 0 unless RR_REWRITTEN */
};

/* The decision for one text. */
struct rewrite_result {
    /* RR_REWRITTEN when any statement was rewritten; otherwise the reason
     * of the first registered-table statement, or of the whole text. */
    enum rewrite_reason reason;
    char *text;          /* the new text, NUL-terminated; NULL when unchanged */
    size_t text_len;
    size_t stmt_count;   /* statements in the text; 0 when it was not parsed */
    struct rewrite_stmt *stmts; /* the INSERTs into registered tables, in order */
    size_t nstmts;
};

/* Decides about text (len bytes; text[len] must be '\0', as in Query and
 * Parse messages). Returns false only when memory ran out (*out is then
 * empty and the text should pass unchanged). */
bool rewrite_insert(const struct rewrite_rules *rules, const char *text, size_t len,
                    struct rewrite_result *out);

void rewrite_result_free(struct rewrite_result *r);

/* True when text may contain an INSERT into one of the targets: the cheap
 * test that keeps every other statement away from the parser. False
 * positives are fine, false negatives are not. */
bool rewrite_prefilter(const struct rewrite_rules *rules, const char *text, size_t len);

/* What a text may do to the session beyond its own statements. */
enum rewrite_effect {
    /* It may drop prepared statements: a statement begins with DEALLOCATE
     * or DISCARD (rewrite_dropped_statements says which it drops). A
     * PREPARE drops nothing: it fails on a name in use. */
    REWRITE_DROPS_STATEMENTS = 1,
    /* It may change which table a name without a schema means, or as whom
     * the session runs: a statement that begins with SET or RESET of
     * search_path (or SCHEMA), ROLE or SESSION AUTHORIZATION, RESET ALL, or
     * with DISCARD, CREATE, DROP or ALTER (a temporary table shadows a
     * name), DO, CALL, EXECUTE or IMPORT (they run what cannot be read
     * here); or a call of set_config anywhere, unless its first argument
     * is a literal custom setting (one with a dot: app.tenant_id). A false
     * positive costs the proxy one question to the server; what a function
     * changes when it is called from a statement the proxy cannot see into
     * goes unseen. */
    REWRITE_CHANGES_IDENTITY = 2,
    /* It may end the transaction or roll back to a savepoint, which undoes
     * what SET LOCAL and set_config(..., true) did inside it: a statement
     * that begins with COMMIT, END, ROLLBACK, ABORT or PREPARE
     * TRANSACTION. */
    REWRITE_ENDS_LOCAL = 4,
    /* With REWRITE_CHANGES_IDENTITY: every change it may make lasts only
     * to the end of its transaction. Each statement that changes it is a
     * SET LOCAL of one of those settings, and each set_config call that may
     * is a plain call whose third argument is true, read to the end of the
     * call (no comment, backslash or dollar quote in it). Anything else
     * counts as a change for the session. */
    REWRITE_IDENTITY_LOCAL = 8,
    /* It opens a transaction block: its opening statement begins with
     * BEGIN or START TRANSACTION (only the opening: a ';' may be in a
     * string). Once a Parse's text has run (a Parse holds one statement),
     * what comes after it in its extended batch runs in a block (one
     * already open stays so). */
    REWRITE_BEGINS_BLOCK = 16,
};

/* The effects (enum rewrite_effect) of text, len bytes with text[len] a
 * NUL, found where its statements begin, in one pass. */
unsigned rewrite_effects(const char *text, size_t len);

/* The effects a Parse's text may have, known only by its first len bytes
 * (prefix: the message is too large to read): a Parse holds one
 * statement, so its opening keyword says what rewrite_effects would find
 * there, and a set_config may hide in the rest (REWRITE_CHANGES_IDENTITY,
 * for the session). Every effect when the opening keyword is not whole
 * among those bytes. */
unsigned rewrite_unread_effects(const char *prefix, size_t len);

/* Whether text (len bytes) is, as PostgreSQL's grammar reads it, BEGIN or
 * START TRANSACTION with its modes, perhaps followed by more of them or by
 * SET TRANSACTION with its modes (Npgsql's "BEGIN; SET TRANSACTION
 * ISOLATION LEVEL READ COMMITTED;"), and nothing else: a Query of it runs
 * its BEGIN, since the server parses a Query whole before it runs any of
 * it, and leaves the session in a block (a failed one, should what
 * follows the BEGIN fail). */
bool rewrite_opens_block(const char *text, size_t len);

/* The effects of a FunctionCall message of the function with this oid:
 * none for the large-object functions (libpq's lo_* and drivers' large
 * object APIs call them so, at every read and write), which cannot
 * change the identity; any other may be set_config, or run SQL:
 * REWRITE_CHANGES_IDENTITY. */
unsigned rewrite_call_effects(uint32_t function_oid);

/* The prepared statements a text's DEALLOCATE and DISCARD statements drop,
 * as PostgreSQL's parser reads them. */
struct rewrite_drops {
    /* Every named statement: DEALLOCATE ALL, DISCARD ALL, or a text the
     * parser cannot read (the server may read it otherwise). */
    bool all;
    struct name_list names; /* DEALLOCATE name, as the server folds it */
};

/* Fills *out for text (NUL-terminated): meant for the texts
 * REWRITE_DROPS_STATEMENTS marks, since it parses. False when out of
 * memory (*out then says all). rewrite_drops_free frees it. */
bool rewrite_dropped_statements(const char *text, struct rewrite_drops *out);
void rewrite_drops_free(struct rewrite_drops *d);

/* Whether c is whitespace between SQL tokens. */
static inline bool rewrite_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* The characters of UTF-8 text (len bytes): how PostgreSQL counts a
 * position in it. */
size_t rewrite_utf8_chars(const char *text, size_t len);

/* Maps a 1-based character position in the rewritten text (an
 * ErrorResponse's P field) back onto the original. A position inside a
 * spliced clause maps to the point where the clause was inserted. utf8
 * selects how characters are counted: UTF-8, or one byte each. */
size_t rewrite_map_position(const struct rewrite_result *r, size_t pos, bool utf8);

/* Whether text in a session with these encodings (PostgreSQL's names, as
 * ParameterStatus reports them) can be scanned as the parser assumes, and
 * how the server counts its characters in error positions: *utf8, or one
 * byte each. False for client encodings whose multibyte characters may hold
 * ASCII quote or backslash bytes (SJIS, BIG5, GBK, UHC, GB18030, JOHAB) and
 * for multibyte encodings other than UTF-8. */
bool rewrite_charset(const char *client_encoding, const char *server_encoding, bool *utf8);

/* Whether len bytes of SQL (NUL bytes between its parts allowed) mean the
 * same under every client_encoding and standard_conforming_strings: ASCII
 * without a backslash. A text that does not may change its meaning when
 * parsed again after the session changed either. */
bool rewrite_text_neutral(const uint8_t *text, size_t len);

/* Whether len bytes are UTF-8 as PostgreSQL accepts it: no overlong form,
 * surrogate, code point past U+10FFFF or NUL. A session whose text the
 * server checks so refuses any other (22021), naming the bytes from the
 * first bad one on, which a rewrite must not change. */
bool rewrite_utf8_valid(const uint8_t *text, size_t len);

/* Writes " ON CONFLICT ..." for a rule into buf: the clause spliced into
 * INSERTs. target lists the arbiter columns (may be empty for DO NOTHING);
 * set lists the columns assigned from EXCLUDED (empty: DO NOTHING).
 * Identifiers are always double-quoted. Writes at most cap bytes and no
 * terminating NUL; returns the length of the whole clause, which exceeds cap
 * when not all of it was written. */
size_t rewrite_build_clause(char *buf, size_t cap, const struct name_list *target,
                            const struct name_list *set);

/* Writes DEALLOCATE "name" into buf (cap bytes, NUL-terminated): SQL that
 * drops the prepared statement the protocol calls name, and fails as a
 * Bind of it would (26000) when there is none. False when SQL cannot name
 * it as the protocol does, or buf is too small: the unnamed statement; a
 * name of 64 bytes (NAMEDATALEN) or more, which the protocol cuts at 63
 * bytes and SQL at a character, with a notice; with ascii_only (a session
 * whose encoding may hide a quote byte in a character), a byte over 0x7f. */
bool rewrite_build_deallocate(char *buf, size_t cap, const char *name, bool ascii_only);

#endif
