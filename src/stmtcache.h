/*
 * stmtcache: server-side prepared statements for the rewritten INSERTs a
 * session's client parses as its unnamed statement.
 *
 * A driver that does not prepare (pgbench -M extended, libpq's
 * PQexecParams, most drivers' first executions) sends the same INSERT in a
 * Parse of the unnamed statement before every Bind, and the server parses,
 * analyses and plans it each time. For an INSERT the proxy rewrote, the
 * proxy already knows the text is the same: the first Parse creates a named
 * statement of the proxy's own (idemproxy_s<number>) instead, and later
 * ones reuse it; the client's unnamed statement then stands for that name,
 * and its Binds and Describes are sent with it.
 *
 * An entry is usable only once the server confirmed the Parse that created
 * it (ParseComplete): a Parse that failed or was skipped after an error
 * created nothing. When the client's SQL may have dropped the proxy's
 * statements (DEALLOCATE, DISCARD), every entry is forgotten; it is created
 * again under a new name, so a name the server may still hold is never
 * reused.
 *
 * Pure bookkeeping over statement texts: no I/O.
 */
#ifndef IDEM_STMTCACHE_H
#define IDEM_STMTCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The proxy's statements are named STMTCACHE_PREFIX and a number: room
 * for it and a 64-bit number. */
#define STMTCACHE_PREFIX "idemproxy_s"
#define STMTCACHE_NAME_MAX 32

enum stmt_state {
    STMT_ABSENT,  /* not on the server */
    STMT_PENDING, /* its Parse went; ParseComplete not yet seen */
    STMT_READY,   /* the server holds it */
};

struct stmt_entry;

struct stmtcache {
    struct stmt_entry *entries;
    size_t count, max;
    uint64_t last_number;
    uint64_t forgotten_number; /* last_number at the last stmtcache_forget_all */
    /* What the client's unnamed statement is on the server: this entry's
     * named statement, or (NULL) the server's own unnamed statement. */
    struct stmt_entry *unnamed;
};

/* max: entries kept at most; 0 keeps none. */
void stmtcache_init(struct stmtcache *sc, size_t max);
void stmtcache_free(struct stmtcache *sc);

/* The entry for text (text_len bytes) with the given parameter types (the
 * bytes after the text's NUL in a Parse), added as STMT_ABSENT when new.
 * NULL when the cache is full or out of memory, or when the text is cached
 * with other types: the Parse then goes to the server as it is. */
struct stmt_entry *stmtcache_get(struct stmtcache *sc, const char *text, size_t text_len,
                                 const uint8_t *types, size_t types_len);

/* The entry's Parse goes to the server under a new name: STMT_PENDING.
 * Returns the number that names it. */
uint64_t stmtcache_create(struct stmtcache *sc, struct stmt_entry *e);

/* The server's answer to the Parse that created number: ParseComplete
 * makes the entry STMT_READY; an error, or leaving the queue unanswered,
 * leaves it STMT_ABSENT. Answers about an older name change nothing. */
void stmtcache_created(struct stmt_entry *e, uint64_t number, bool ok);

/* The server may have dropped the proxy's statements: every entry is
 * STMT_ABSENT, to be created again under a new name. */
void stmtcache_forget_all(struct stmtcache *sc);

/* Some entry may be on the server: one was created since the last
 * stmtcache_forget_all (or its Parse failed since: the answer errs towards
 * yes). */
static inline bool stmtcache_holds_any(const struct stmtcache *sc)
{
    return sc->last_number != sc->forgotten_number;
}

enum stmt_state stmtcache_state(const struct stmt_entry *e);

/* The entry's server-side name, as of its last stmtcache_create. */
const char *stmtcache_name(const struct stmt_entry *e);

/* The number of the entry's last stmtcache_create (0: never created). */
uint64_t stmtcache_number(const struct stmt_entry *e);

/* The server-side name of the statement number created. */
void stmtcache_name_of(uint64_t number, char name[STMTCACHE_NAME_MAX]);

/* The rewritten text (NUL-terminated, text_len bytes before the NUL) and
 * the parameter types, for a Parse of the entry. */
const char *stmtcache_text(const struct stmt_entry *e, size_t *text_len);
const uint8_t *stmtcache_types(const struct stmt_entry *e, size_t *types_len);

#endif
