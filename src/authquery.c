#include "authquery.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

struct authquery {
    struct event_base *base;
    PGconn *pg;
    struct event *io;      /* the socket libpq waits on now */
    struct event *timer;   /* the whole lookup's deadline */
    bool connected;
    char *query, *user;
    authquery_done done;
    void *arg;
};

static void step(evutil_socket_t fd, short what, void *arg);

static void finish(struct authquery *q, const char *secret, const char *error)
{
    authquery_done done = q->done;
    void *arg = q->arg;

    q->done = NULL;
    done(arg, secret, error);
    authquery_cancel(q);
}

/* Waits until libpq's socket is ready for what it asked. */
static void wait_for(struct authquery *q, short what)
{
    if (q->io)
        event_free(q->io);
    q->io = event_new(q->base, PQsocket(q->pg), what, step, q);
    if (!q->io || event_add(q->io, NULL) != 0)
        finish(q, NULL, "out of memory");
}

static const char *tls_mode_for_libpq(enum tls_mode mode)
{
    switch (mode) {
    case TLS_DISABLE: return "disable";
    case TLS_REQUIRE: return "require";
    case TLS_VERIFY_CA: return "verify-ca";
    case TLS_VERIFY_FULL: return "verify-full";
    default: return "prefer";
    }
}

/* The query's answer: one row, its second column the secret. */
static void take_result(struct authquery *q)
{
    PGresult *r = PQgetResult(q->pg);
    char error[256];

    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        snprintf(error, sizeof(error), "auth_query failed: %s", PQresultErrorMessage(r));
        error[strcspn(error, "\n")] = '\0';
        PQclear(r);
        finish(q, NULL, error);
        return;
    }
    bool found = PQntuples(r) == 1 && PQnfields(r) >= 2 && !PQgetisnull(r, 0, 1);
    char *secret = found ? strdup(PQgetvalue(r, 0, 1)) : NULL;
    PQclear(r);
    if (found && !secret) {
        finish(q, NULL, "out of memory");
        return;
    }
    finish(q, secret, NULL);
    free(secret);
}

static void step(evutil_socket_t fd, short what, void *arg)
{
    struct authquery *q = arg;
    (void)fd;
    (void)what;

    if (!q->connected) {
        switch (PQconnectPoll(q->pg)) {
        case PGRES_POLLING_READING: wait_for(q, EV_READ); return;
        case PGRES_POLLING_WRITING: wait_for(q, EV_WRITE); return;
        case PGRES_POLLING_OK: break;
        default: {
            char error[256];
            snprintf(error, sizeof(error), "auth_query: cannot log in as auth_user: %s",
                     PQerrorMessage(q->pg));
            error[strcspn(error, "\n")] = '\0';
            finish(q, NULL, error);
            return;
        }
        }
        q->connected = true;
        const char *params[1] = { q->user };
        if (PQsetnonblocking(q->pg, 1) != 0 ||
            !PQsendQueryParams(q->pg, q->query, 1, NULL, params, NULL, NULL, 0)) {
            finish(q, NULL, "auth_query: cannot send the query");
            return;
        }
        wait_for(q, EV_WRITE);
        return;
    }
    int flushed = PQflush(q->pg);
    if (flushed < 0 || !PQconsumeInput(q->pg)) {
        finish(q, NULL, "auth_query: the connection broke");
        return;
    }
    if (flushed == 1) {
        wait_for(q, EV_WRITE);
        return;
    }
    if (PQisBusy(q->pg)) {
        wait_for(q, EV_READ);
        return;
    }
    take_result(q);
}

static void timed_out(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    finish(arg, NULL, "auth_query: no answer in time");
}

struct authquery *authquery_start(struct event_base *base, const struct config *cfg,
                                  const char *auth_password, const char *database,
                                  const char *user, authquery_done done, void *arg)
{
    struct authquery *q = calloc(1, sizeof(*q));
    char port[16], timeout[16];
    const struct tls_config *t = &cfg->server_tls;

    if (!q)
        return NULL;
    q->base = base;
    q->done = done;
    q->arg = arg;
    snprintf(port, sizeof(port), "%d", cfg->server_port);
    snprintf(timeout, sizeof(timeout), "%d", cfg->server_connect_timeout);
    const char *keys[] = { "host", "port", "dbname", "user", "password", "sslmode",
                           "sslrootcert", "sslcert", "sslkey", "gssencmode",
                           "application_name", "connect_timeout", NULL };
    const char *values[] = { cfg->server_host, port, database, cfg->auth_user, auth_password,
                             tls_mode_for_libpq(t->mode), t->ca_file, t->cert_file, t->key_file,
                             "disable", "idemproxy auth_query", timeout, NULL };
    q->query = strdup(cfg->auth_query);
    q->user = strdup(user);
    q->pg = PQconnectStartParams(keys, values, 0);
    q->timer = evtimer_new(base, timed_out, q);
    struct timeval deadline = { cfg->server_connect_timeout * 2, 0 };
    if (!q->query || !q->user || !q->pg || PQstatus(q->pg) == CONNECTION_BAD || !q->timer ||
        evtimer_add(q->timer, &deadline) != 0) {
        authquery_cancel(q);
        return NULL;
    }
    wait_for(q, EV_WRITE);
    return q;
}

void authquery_cancel(struct authquery *q)
{
    if (!q)
        return;
    if (q->io)
        event_free(q->io);
    if (q->timer)
        event_free(q->timer);
    if (q->pg)
        PQfinish(q->pg);
    free(q->query);
    free(q->user);
    free(q);
}
