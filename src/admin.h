/*
 * admin: the console behind the database "idemproxy".
 *
 * A client that logs in to that database — a user named in admin_users,
 * authenticated by the proxy itself (SCRAM against auth_file or
 * auth_query) — talks to the proxy, not to PostgreSQL, in the simple query
 * protocol: SHOW STATS | TABLES | CLIENTS | CONFIG | VERSION, RELOAD,
 * SHUTDOWN (case does not matter, semicolons may follow; one command per
 * Query). A Query of nothing but spaces and semicolons is answered as
 * PostgreSQL answers it, with EmptyQueryResponse.
 *
 * admin_parse() is pure. admin_run() writes the whole answer to one
 * command (RowDescription, DataRows and CommandComplete, or an
 * ErrorResponse; never the ReadyForQuery) and reads the rest of the
 * process only in ways that are safe from any worker thread.
 */
#ifndef IDEM_ADMIN_H
#define IDEM_ADMIN_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/buffer.h>

#include "config.h"

struct worker;

#define ADMIN_DATABASE "idemproxy"

enum admin_cmd {
    ADMIN_EMPTY,       /* nothing but spaces and semicolons */
    ADMIN_SHOW_STATS,
    ADMIN_SHOW_TABLES,
    ADMIN_SHOW_CLIENTS,
    ADMIN_SHOW_CONFIG,
    ADMIN_SHOW_VERSION,
    ADMIN_RELOAD,
    ADMIN_SHUTDOWN,
    ADMIN_UNKNOWN,
};

enum admin_cmd admin_parse(const char *text, size_t len);

/* Whether user is one of cfg's admin_users. */
bool admin_user_allowed(const struct config *cfg, const char *user);

/* Answers cmd, run by a client of worker w, into out. */
void admin_run(struct worker *w, enum admin_cmd cmd, struct evbuffer *out);

#endif
