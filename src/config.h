/*
 * config: the INI file, parsed into an immutable snapshot.
 *
 * config_parse() is pure: it takes the file's text and returns either a
 * complete snapshot or one "FILE:LINE: why" message, never half a config.
 * Reload builds a new snapshot and swaps it in; a snapshot is never changed
 * after it is returned.
 */
#ifndef IDEM_CONFIG_H
#define IDEM_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "log.h"

#define CONFIG_ERR_LEN 512
#define CONFIG_MAX_WORKERS 256
#define CONFIG_MAX_LISTEN 16   /* addresses listened on, all items together */
#define CONFIG_ADDR_LEN 256    /* the longest item of listen_addr, NUL included */

enum table_action {
    TABLE_ACTION_AUTO,
    TABLE_ACTION_DO_NOTHING,
    TABLE_ACTION_RETURN_EXISTING,
    TABLE_ACTION_DO_UPDATE,
    TABLE_ACTION_NONE,
};

enum table_mode {
    TABLE_MODE_ENFORCE,
    TABLE_MODE_SHADOW,
};

/* TLS on one leg, named as PgBouncer and libpq name them. The client leg
 * knows all six; the server leg has no "allow". */
enum tls_mode {
    TLS_DISABLE,
    TLS_ALLOW,
    TLS_PREFER,
    TLS_REQUIRE,
    TLS_VERIFY_CA,
    TLS_VERIFY_FULL,
};

/* TLS protocol versions, as a bit set. */
#define TLS_PROTO_V1_2 1u
#define TLS_PROTO_V1_3 2u

/* Whether logged-in sessions move their bytes through the worker's
 * io_uring (ring.h). */
enum ring_use {
    RING_OFF,  /* plain system calls always */
    RING_ON,   /* the ring always */
    RING_AUTO, /* the ring while the worker's wake-ups carry several reads */
};

enum auth_type {
    AUTH_PASSTHROUGH, /* the server authenticates; the proxy relays */
    AUTH_SCRAM,       /* the proxy authenticates clients with SCRAM-SHA-256 */
};

/* The settings of one TLS leg. */
struct tls_config {
    enum tls_mode mode;
    char *cert_file, *key_file, *ca_file; /* NULL when unset */
    unsigned protocols;                   /* TLS_PROTO_* */
    char *ciphers;                        /* NULL: OpenSSL's defaults */
};

/* A list of identifiers, already folded the way PostgreSQL folds them. */
struct name_list {
    char **names;
    size_t count;
};

/* Appends name, which l takes over; false when name is NULL or memory runs
 * out (name is then freed). */
bool name_list_add(struct name_list *l, char *name);
/* Frees every name and the list's array; l is empty afterwards. */
void name_list_free(struct name_list *l);

/* One [table schema.name] section. */
struct table_rule {
    char *schema; /* folded; "public" when the section name had no schema */
    char *name;   /* folded */
    int line;     /* where the section starts, for messages */
    struct name_list conflict;
    enum table_action action;
    struct name_list update_columns;
    char *database;           /* NULL: every database */
    enum table_mode mode;
    struct name_list search_path; /* for unqualified names; default: public */
    bool translate_errors;
};

struct config {
    atomic_uint refs; /* shared read-only by every worker thread */
    char *path; /* the file this snapshot came from */

    char *listen_addr; /* comma-separated items, each a host name, an address or "*" */
    int listen_port;
    char *server_host; /* a host name, an address, or a socket directory (starts with '/') */
    int server_port;
    int max_client_conn;
    enum log_level log_level;
    char *log_file; /* NULL: stderr */
    size_t max_held_message; /* bytes; bigger inspected messages stream through */
    int client_login_timeout; /* seconds from accept to the first ReadyForQuery */
    int server_connect_timeout; /* seconds */
    /* TCP keepalive and user timeout on client and server sockets, so that
     * a peer that vanished without a word (a crashed host, a dropped
     * route) is noticed: else its partner waits forever, a backend with
     * its transaction and locks included. 0: the kernel's setting. */
    bool tcp_keepalive;
    int tcp_keepidle;     /* seconds idle before the first probe */
    int tcp_keepintvl;    /* seconds between probes */
    int tcp_keepcnt;      /* probes unanswered before the peer is gone */
    int tcp_user_timeout; /* milliseconds sent data may go unacknowledged */
    int shutdown_timeout; /* seconds SIGTERM waits for busy clients */
    int workers;          /* event-loop threads; 0: one per online core */
    bool so_reuseport;    /* each worker its own SO_REUSEPORT listener */
    enum ring_use io_uring; /* logged-in sessions' I/O through io_uring */
    char *metrics_addr;   /* the HTTP endpoint of /metrics and /healthz */
    int metrics_port;     /* 0: no endpoint */
    int log_stats_interval; /* seconds between summary log lines; 0: none */
    struct name_list admin_users; /* who may use the admin console */

    struct tls_config client_tls; /* clients connecting to the proxy */
    struct tls_config server_tls; /* the proxy connecting to PostgreSQL */

    enum auth_type auth_type;
    char *auth_file;  /* PgBouncer's userlist format; NULL when unset */
    char *auth_query; /* run as auth_user to find a user's secret */
    char *auth_user;  /* NULL: auth_query is not used */

    bool server_reuse;       /* keep a server for the next client with the same login */
    int server_idle_timeout; /* seconds a kept server waits for that client */
    int server_lifetime;     /* seconds from a server's connect after which it is
                              * not kept any more; 0: each serves one client */
    int max_idle_servers;    /* kept servers in all, split between the workers */
    int max_cached_statements; /* per session, for rewritten unnamed Parses; 0: none */
    int catalog_check_interval; /* seconds after which a scope's catalog is asked
                                 * again; 0: only after reloads and errors */

    struct table_rule *tables;
    size_t table_count;
};

/* Parses text (len bytes, need not be NUL-terminated). filename only names
 * the source in messages. Returns the snapshot, or NULL with err filled as
 * "FILE:LINE: why" (or "FILE: why" when no line is to blame). */
struct config *config_parse(const char *text, size_t len, const char *filename,
                            char err[CONFIG_ERR_LEN]);

/* Reads a whole file into a malloc'ed buffer of *len bytes, or NULL with
 * err "FILE: why". With wipe, every copy left behind on the way is
 * cleansed: the text holds secrets. */
char *config_read_file(const char *path, size_t *len, bool wipe, char err[CONFIG_ERR_LEN]);

/* Reads and parses a file; errors as for config_parse(). */
struct config *config_load(const char *path, char err[CONFIG_ERR_LEN]);

/* A snapshot is shared by reference: config_ref() adds one, config_unref()
 * drops one and frees the snapshot with the last. Both are thread-safe;
 * nothing else ever changes a snapshot. */
struct config *config_ref(struct config *cfg);
void config_unref(struct config *cfg);

/* Writes "what changed that needs a restart" between two snapshots into buf
 * (comma-separated key names); returns false when nothing does. */
bool config_restart_needed(const struct config *old, const struct config *new_cfg,
                           char *buf, size_t buflen);

/* The items of a listen_addr that config_parse accepted, one at a time:
 * copies the next one, spaces trimmed, to item (CONFIG_ADDR_LEN bytes) and
 * moves *at past it; false at the end. */
bool config_listen_item(const char **at, char item[CONFIG_ADDR_LEN]);

const char *table_action_name(enum table_action action);
const char *tls_mode_name(enum tls_mode mode);
const char *ring_use_name(enum ring_use use);
const char *table_mode_name(enum table_mode mode);

#endif
