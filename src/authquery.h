/*
 * authquery: a user's secret, looked up with auth_query run on the server
 * as auth_user, for a user that auth_file does not name.
 *
 * One libpq connection per lookup, nonblocking and driven by the proxy's
 * event loop (libpq speaks to the server as any client would, TLS as
 * server_tls_* say). A lookup ends by calling back exactly once, unless it
 * is cancelled first.
 */
#ifndef IDEM_AUTHQUERY_H
#define IDEM_AUTHQUERY_H

#include <event2/event.h>

#include "config.h"

struct authquery;

/* secret: the user's rolpassword (NULL when there is no such user, or it
 * has no password); error: why the lookup failed (then secret is NULL). */
typedef void (*authquery_done)(void *arg, const char *secret, const char *error);

/* Starts looking user up in database. auth_password is auth_user's
 * password from auth_file, or NULL (the server then trusts auth_user).
 * NULL when it cannot even start (out of memory). */
struct authquery *authquery_start(struct event_base *base, const struct config *cfg,
                                  const char *auth_password, const char *database,
                                  const char *user, authquery_done done, void *arg);

/* Stops a lookup; done is not called. */
void authquery_cancel(struct authquery *q);

#endif
