/*
 * authquery: a user's secret, looked up with auth_query run on the server
 * as auth_user, for a user that auth_file does not name.
 *
 * A libpq connection, nonblocking and driven by the proxy's event loop
 * (libpq speaks to the server as any client would, TLS as server_tls_*
 * say). A lookup ends by calling back exactly once, unless it is cancelled
 * first. A connection whose lookup succeeded is kept, idle, for the next
 * lookup in the same database, as PgBouncer keeps auth_user's: an
 * application that connects for every request then pays one query per
 * login, not a login of auth_user's too. A kept connection the server
 * ends meanwhile is noticed when it closes, or, at worst, when the next
 * lookup fails on it before any answer: that lookup then connects anew.
 */
#ifndef IDEM_AUTHQUERY_H
#define IDEM_AUTHQUERY_H

#include <stdbool.h>

#include <event2/event.h>

#include "config.h"
#include "counter.h"

struct authquery;

/* The idle connections of one event loop (a worker's), at most 8, each
 * kept as a server kept for reuse is: server_idle_timeout seconds idle at
 * most, and not past server_lifetime from its connect (0: none kept). */
struct authquery_keep;

/* Counts the connections kept in gauge (the caller's, NULL: none). NULL
 * when out of memory. */
struct authquery_keep *authquery_keep_new(struct event_base *base, struct counter *gauge);
/* Closes every kept connection and frees k (NULL: nothing). */
void authquery_keep_free(struct authquery_keep *k);
/* Closes every kept connection: after a reload (auth_user, its password or
 * the server may have changed). With for_good, none is kept from then on
 * (shutdown). */
void authquery_keep_close_all(struct authquery_keep *k, bool for_good);

/* secret: the user's rolpassword (NULL when there is no such user, or it
 * has no password); error: why the lookup failed (then secret is NULL). */
typedef void (*authquery_done)(void *arg, const char *secret, const char *error);

/* Starts looking user up in database, on a connection k keeps for it or a
 * new one (which k may keep afterwards). auth_password is auth_user's
 * password from auth_file, or NULL (the server then trusts auth_user).
 * NULL when it cannot even start (out of memory). */
struct authquery *authquery_start(struct authquery_keep *k, const struct config *cfg,
                                  const char *auth_password, const char *database,
                                  const char *user, authquery_done done, void *arg);

/* Stops a lookup; done is not called. */
void authquery_cancel(struct authquery *q);

#endif
