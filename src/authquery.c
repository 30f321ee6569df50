#include "authquery.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

/* Connections kept per event loop: one per database is what a steady
 * stream of logins needs; a burst that opened more closes the rest. */
#define KEEP_MAX 8

/* What libpq is given to connect: copies, since a reload may free the
 * configuration while a lookup still needs them (to connect anew). */
enum conninfo_key {
    CI_HOST, CI_PORT, CI_DBNAME, CI_USER, CI_PASSWORD, CI_SSLMODE, CI_SSLROOTCERT,
    CI_SSLCERT, CI_SSLKEY, CI_GSSENCMODE, CI_APPLICATION_NAME, CI_CONNECT_TIMEOUT,
    CI_COUNT
};

static const char *const conninfo_keys[CI_COUNT + 1] = {
    "host", "port", "dbname", "user", "password", "sslmode", "sslrootcert", "sslcert",
    "sslkey", "gssencmode", "application_name", "connect_timeout", NULL
};

struct kept {
    struct kept *next;
    struct authquery_keep *keep;
    PGconn *pg;
    time_t born;         /* when it connected */
    char *database;
    struct event *io;    /* the server closing it, or saying anything */
    struct event *timer; /* server_idle_timeout, or the end of server_lifetime */
};

struct authquery_keep {
    struct event_base *base;
    struct kept *idle; /* newest first */
    unsigned count;
    struct counter *gauge;
    bool stopped;
};

struct authquery {
    struct authquery_keep *keep;
    PGconn *pg;
    struct event *io;      /* the socket libpq waits on now */
    struct event *timer;   /* the whole lookup's deadline */
    bool connected;
    bool sent;             /* the query went */
    bool reused;           /* pg was kept: if it fails before any answer, connect anew */
    time_t born;           /* when pg connected */
    int idle_timeout;      /* server_idle_timeout and server_lifetime, for keeping */
    int lifetime;          /* pg afterwards */
    char *conninfo[CI_COUNT];
    char *query, *user;
    authquery_done done;
    void *arg;
};

/* ---- the connections kept ---------------------------------------------- */

static void kept_free(struct kept *e)
{
    struct kept **at = &e->keep->idle;

    while (*at != e)
        at = &(*at)->next;
    *at = e->next;
    e->keep->count--;
    if (e->keep->gauge)
        counter_sub(e->keep->gauge, 1);
    if (e->io)
        event_free(e->io);
    if (e->timer)
        event_free(e->timer);
    if (e->pg)
        PQfinish(e->pg);
    free(e->database);
    free(e);
}

/* A kept connection has nothing to say: whatever comes (the server's
 * goodbye, a notice) is read, and a connection that broke goes. */
static void kept_readable(evutil_socket_t fd, short what, void *arg)
{
    struct kept *e = arg;
    PGnotify *n;
    (void)fd;
    (void)what;

    if (!PQconsumeInput(e->pg) || PQstatus(e->pg) != CONNECTION_OK || PQisBusy(e->pg)) {
        kept_free(e);
        return;
    }
    while ((n = PQnotifies(e->pg)))
        PQfreemem(n);
}

static void kept_expired(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    kept_free(arg);
}

/* Keeps pg (connected at born), idle after a lookup in database, for
 * idle_timeout seconds and not past lifetime seconds from born (as a
 * server kept for reuse); or closes it. */
static void keep_put(struct authquery_keep *k, PGconn *pg, time_t born, const char *database,
                     int idle_timeout, int lifetime)
{
    struct kept *e = NULL;
    time_t left = born + lifetime - time(NULL);
    struct timeval wait = { left < idle_timeout ? left : idle_timeout, 0 };

    if (k->stopped || left <= 0 || PQstatus(pg) != CONNECTION_OK ||
        PQtransactionStatus(pg) != PQTRANS_IDLE || !(e = calloc(1, sizeof(*e)))) {
        PQfinish(pg);
        return;
    }
    while (k->count >= KEEP_MAX) {
        struct kept *oldest = k->idle;
        while (oldest->next)
            oldest = oldest->next;
        kept_free(oldest);
    }
    e->keep = k;
    e->pg = pg;
    e->born = born;
    e->next = k->idle;
    k->idle = e;
    k->count++;
    if (k->gauge)
        counter_add(k->gauge, 1);
    e->database = strdup(database);
    e->io = event_new(k->base, PQsocket(pg), EV_READ | EV_PERSIST, kept_readable, e);
    e->timer = evtimer_new(k->base, kept_expired, e);
    if (!e->database || !e->io || !e->timer || event_add(e->io, NULL) != 0 ||
        evtimer_add(e->timer, &wait) != 0)
        kept_free(e);
}

/* The newest connection kept for database, taken out of k (*born: when
 * it connected); NULL when none. */
static PGconn *keep_take(struct authquery_keep *k, const char *database, time_t *born)
{
    for (struct kept *e = k->idle; e; e = e->next) {
        if (strcmp(e->database, database) != 0)
            continue;
        PGconn *pg = e->pg;
        *born = e->born;
        e->pg = NULL;
        kept_free(e);
        return pg;
    }
    return NULL;
}

struct authquery_keep *authquery_keep_new(struct event_base *base, struct counter *gauge)
{
    struct authquery_keep *k = calloc(1, sizeof(*k));

    if (k) {
        k->base = base;
        k->gauge = gauge;
    }
    return k;
}

void authquery_keep_close_all(struct authquery_keep *k, bool for_good)
{
    if (!k)
        return;
    while (k->idle)
        kept_free(k->idle);
    k->stopped = k->stopped || for_good;
}

void authquery_keep_free(struct authquery_keep *k)
{
    authquery_keep_close_all(k, true);
    free(k);
}

/* ---- one lookup -------------------------------------------------------- */

static void step(evutil_socket_t fd, short what, void *arg);

static void finish(struct authquery *q, const char *secret, const char *error)
{
    authquery_done done = q->done;
    void *arg = q->arg;

    if (!error && q->pg) {
        keep_put(q->keep, q->pg, q->born, q->conninfo[CI_DBNAME], q->idle_timeout,
                 q->lifetime);
        q->pg = NULL;
    }
    q->done = NULL;
    done(arg, secret, error);
    authquery_cancel(q);
}

/* Waits until libpq's socket is ready for what it asked. False when out
 * of memory. */
static bool wait_for(struct authquery *q, short what)
{
    if (q->io)
        event_free(q->io);
    q->io = event_new(q->keep->base, PQsocket(q->pg), what, step, q);
    return q->io && event_add(q->io, NULL) == 0;
}

/* As wait_for, the lookup failing when it cannot. */
static void wait_or_finish(struct authquery *q, short what)
{
    if (!wait_for(q, what))
        finish(q, NULL, "out of memory");
}

/* Starts connecting; false when it cannot even start. */
static bool connect_new(struct authquery *q)
{
    if (q->io)
        event_free(q->io);
    q->io = NULL;
    if (q->pg)
        PQfinish(q->pg);
    q->connected = q->sent = q->reused = false;
    q->born = time(NULL);
    q->pg = PQconnectStartParams(conninfo_keys, (const char *const *)q->conninfo, 0);
    return q->pg && PQstatus(q->pg) != CONNECTION_BAD && wait_for(q, EV_WRITE);
}

/* A kept connection failed before any answer: the server may have ended
 * it while it waited. The lookup starts over on a new one. False when it
 * was not kept (the failure stands). */
static bool retry_fresh(struct authquery *q)
{
    if (!q->reused)
        return false;
    if (!connect_new(q))
        finish(q, NULL, "auth_query: cannot connect");
    return true;
}

static void send_query(struct authquery *q)
{
    const char *params[1] = { q->user };

    q->sent = true;
    if (PQsetnonblocking(q->pg, 1) != 0 ||
        !PQsendQueryParams(q->pg, q->query, 1, NULL, params, NULL, NULL, 0)) {
        if (!retry_fresh(q))
            finish(q, NULL, "auth_query: cannot send the query");
        return;
    }
    wait_or_finish(q, EV_WRITE);
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

/* The query's answer: one row, its second column the secret. The query
 * cycle is read to its end, so that the connection can be kept. */
static void take_result(struct authquery *q)
{
    PGresult *r = PQgetResult(q->pg);
    char error[256];

    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        snprintf(error, sizeof(error), "auth_query failed: %s", PQresultErrorMessage(r));
        error[strcspn(error, "\n")] = '\0';
        PQclear(r);
        /* On a kept connection, the server's goodbye may be the answer. */
        if (!retry_fresh(q))
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
    if (!PQisBusy(q->pg) && (r = PQgetResult(q->pg)) != NULL) {
        /* More than one result: not a connection to keep. */
        PQclear(r);
        PQfinish(q->pg);
        q->pg = NULL;
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
        case PGRES_POLLING_READING: wait_or_finish(q, EV_READ); return;
        case PGRES_POLLING_WRITING: wait_or_finish(q, EV_WRITE); return;
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
    }
    if (!q->sent) {
        send_query(q);
        return;
    }
    int flushed = PQflush(q->pg);
    if (flushed < 0 || !PQconsumeInput(q->pg)) {
        if (!retry_fresh(q))
            finish(q, NULL, "auth_query: the connection broke");
        return;
    }
    if (flushed == 1) {
        wait_or_finish(q, EV_WRITE);
        return;
    }
    if (PQisBusy(q->pg)) {
        wait_or_finish(q, EV_READ);
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

/* Copies what libpq connects with; false when out of memory. */
static bool set_conninfo(struct authquery *q, const struct config *cfg,
                         const char *auth_password, const char *database)
{
    const struct tls_config *t = &cfg->server_tls;
    char port[16], timeout[16];
    const char *values[CI_COUNT] = {
        [CI_HOST] = cfg->server_host,
        [CI_PORT] = port,
        [CI_DBNAME] = database,
        [CI_USER] = cfg->auth_user,
        [CI_PASSWORD] = auth_password,
        [CI_SSLMODE] = tls_mode_for_libpq(t->mode),
        [CI_SSLROOTCERT] = t->ca_file,
        [CI_SSLCERT] = t->cert_file,
        [CI_SSLKEY] = t->key_file,
        [CI_GSSENCMODE] = "disable",
        [CI_APPLICATION_NAME] = "idemproxy auth_query",
        [CI_CONNECT_TIMEOUT] = timeout,
    };

    snprintf(port, sizeof(port), "%d", cfg->server_port);
    snprintf(timeout, sizeof(timeout), "%d", cfg->server_connect_timeout);
    /* An unset value stays NULL: libpq skips it. */
    for (int i = 0; i < CI_COUNT; i++)
        if (values[i] && !(q->conninfo[i] = strdup(values[i])))
            return false;
    return true;
}

struct authquery *authquery_start(struct authquery_keep *k, const struct config *cfg,
                                  const char *auth_password, const char *database,
                                  const char *user, authquery_done done, void *arg)
{
    struct authquery *q = calloc(1, sizeof(*q));
    struct timeval deadline = { cfg->server_connect_timeout * 2, 0 };

    if (!q)
        return NULL;
    q->keep = k;
    q->done = done;
    q->arg = arg;
    q->idle_timeout = cfg->server_idle_timeout;
    q->lifetime = cfg->server_lifetime;
    q->query = strdup(cfg->auth_query);
    q->user = strdup(user);
    q->timer = evtimer_new(k->base, timed_out, q);
    if (!q->query || !q->user || !q->timer || !set_conninfo(q, cfg, auth_password, database) ||
        evtimer_add(q->timer, &deadline) != 0) {
        authquery_cancel(q);
        return NULL;
    }
    /* A kept connection is written to once its socket says it may: the
     * query goes from the event loop, never before the caller holds q. */
    q->pg = keep_take(k, database, &q->born);
    if (q->pg) {
        q->connected = q->reused = true;
        if (wait_for(q, EV_WRITE))
            return q;
    } else if (connect_new(q)) {
        return q;
    }
    authquery_cancel(q);
    return NULL;
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
    for (int i = 0; i < CI_COUNT; i++)
        free(q->conninfo[i]);
    free(q->query);
    free(q->user);
    free(q);
}
