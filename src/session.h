/*
 * session: the prepared statements and portals a client created, as far as
 * translating errors needs them.
 *
 * An Execute names a portal, a Bind names the statement a portal runs, and
 * a Parse says what a statement is: to know whether an Execute runs a
 * recognised INSERT, the proxy follows those names. Only statements whose
 * text is one INSERT into a registered table are kept (with the table's
 * schema and name, so that a reload's new rules can look them up); every
 * other name is forgotten, so a stale name can only make the proxy
 * translate less, never more. The unnamed statement and portal are "".
 * A named statement's Parse is kept too when asked, so that the statement
 * can be prepared again once the rewrite its text got no longer applies.
 * A statement whose text may change where the session's names lead or as
 * whom it runs (REWRITE_CHANGES_IDENTITY) is kept too, so that each
 * execution of it can be noticed.
 *
 * Pure bookkeeping: no I/O.
 */
#ifndef IDEM_SESSION_H
#define IDEM_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct session_entry;

struct session {
    struct session_entry *statements;
    struct session_entry *portals;
    size_t detached; /* entries session_detach handed out, not yet back or freed */
    bool incomplete; /* it forgot statements the server may still hold */
};

void session_init(struct session *s);
void session_free(struct session *s);

/* Forgets every name: after SQL that drops every statement (DEALLOCATE
 * ALL, DISCARD ALL), or a message too large to read that may have. The
 * server may still hold them (it may skip that SQL): from now on, a
 * statement not known is not known to be harmless (session_effects). */
void session_clear(struct session *s);

/* The same for statement name alone (DEALLOCATE name). */
void session_forget(struct session *s, const char *name);

/* Whether the effects of statement name (as session_parse took them) are
 * known, into *effects: those of a statement it knows, none for one it
 * does not as long as it forgot none (it keeps only statements with an
 * effect or an INSERT). */
bool session_effects(const struct session *s, const char *name, unsigned *effects);

/* Nothing is known: no statement or portal kept, and none detached that
 * may yet come back (session_reattach). */
bool session_empty(const struct session *s);

/* Statement name now holds an INSERT into schema.table, or (schema NULL)
 * something else; effects are its text's effects on the session's
 * identity (REWRITE_CHANGES_IDENTITY, REWRITE_ENDS_LOCAL,
 * REWRITE_IDENTITY_LOCAL). parse, when not NULL, is the client's Parse
 * body (parse_len bytes) of an INSERT, kept for session_outdated with the
 * version of the rules that decided its text. False when out of memory
 * (the name is then forgotten). */
bool session_parse(struct session *s, const char *name, const char *schema, const char *table,
                   unsigned effects, const uint8_t *parse, size_t parse_len,
                   uint64_t version);

/* The server holds a text hashing to text_hash (nonzero) for statement
 * name, as the proxy sent it: session_holds can tell that preparing it
 * again with the same text would change nothing. */
void session_sent(struct session *s, const char *name, uint64_t text_hash);
bool session_holds(const struct session *s, const char *name, uint64_t text_hash);
/* What the server holds is unknown for every statement: a Parse of the
 * proxy's failed, which left one of them gone. */
void session_unsent_all(struct session *s);

/* A statement prepared under rules of another version than version may hold
 * a text those rules would not send now: its kept Parse body (*len bytes),
 * for the caller to prepare it again; from then on it counts as prepared
 * under version. NULL when name keeps no Parse or is up to date. */
const uint8_t *session_outdated(struct session *s, const char *name, uint64_t version,
                                size_t *len);

/* A Parse of name that the server may yet refuse (a named statement must
 * be closed before it is defined again) or skip (after an error earlier in
 * its batch) leaves what name held on the server: the entry for it, taken
 * out of s for the caller to keep until the Parse is answered, or NULL. */
struct session_entry *session_detach(struct session *s, const char *name);

/* The Parse was refused or skipped: its statement holds what it held
 * before, e (detached from s), which s takes back. */
void session_reattach(struct session *s, struct session_entry *e);

/* The Parse took place: what the name held before (e, detached from s) is
 * gone. */
void session_entry_free(struct session *s, struct session_entry *e);

/* As session_outdated, for any named statement that is: its name in
 * *name. NULL when none is. */
const uint8_t *session_next_outdated(struct session *s, uint64_t version, const char **name,
                                     size_t *len);

/* Whether statement name holds an INSERT into a registered table. */
bool session_inserts(const struct session *s, const char *name);

/* Portal name now runs statement. False when out of memory (forgotten). */
bool session_bind(struct session *s, const char *portal, const char *statement);

/* Close of a statement ('S') or portal ('P'). */
void session_close(struct session *s, char kind, const char *name);

/* An Execute of portal: the table it inserts into, as session_portal, and
 * *first_run true the first time since its Bind, when its statement runs (a
 * later Execute only fetches what it returned, or fails because it has
 * run). *effects are its statement's, as session_parse took them, whatever
 * it inserts into. */
bool session_execute(struct session *s, const char *portal, const char **schema,
                     const char **table, bool *first_run, unsigned *effects);

/* The table an Execute of portal inserts into; false when none is known. */
bool session_portal(const struct session *s, const char *portal, const char **schema,
                    const char **table);

#endif
