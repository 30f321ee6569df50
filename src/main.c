/*
 * idemproxy: a PostgreSQL wire-protocol proxy that makes registered INSERTs
 * idempotent. This file is the command line; proxy.c is the process.
 */
#include "config.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

#include <event2/event.h>

#include "log.h"
#include "proxy.h"
#include "settings.h"

#define DEFAULT_CONFIG SYSCONFDIR "/idemproxy/idemproxy.ini"

static void usage(FILE *out)
{
    fprintf(out,
"Usage: idemproxy [-c FILE] [--check-config]\n"
"\n"
"A PostgreSQL wire-protocol proxy: clients connect to it as to PostgreSQL.\n"
"It runs in the foreground and logs to stderr unless log_file is set.\n"
"\n"
"Options:\n"
"  -c, --config FILE   configuration file (default " DEFAULT_CONFIG ")\n"
"      --check-config  validate the configuration, print any error as\n"
"                      FILE:LINE: why, and exit 0 (valid) or 1 (invalid)\n"
"  -V, --version       print the version and exit\n"
"  -h, --help          print this help and exit\n"
"\n"
"Signals: SIGTERM stops accepting, lets busy clients finish and closes each\n"
"client when idle (at most shutdown_timeout seconds); SIGINT exits at once;\n"
"SIGHUP re-reads the configuration file (an invalid one is rejected whole).\n"
"\n"
"Configuration, section [idemproxy] (defaults in brackets):\n"
"  listen_addr             addresses or host names to listen on, separated by\n"
"                          commas; * for every IPv4 and IPv6 address\n"
"                          [127.0.0.1]\n"
"  listen_port             port to listen on [6433]\n"
"  server_host             PostgreSQL host, address, or socket directory\n"
"                          (a path starting with /) [127.0.0.1]\n"
"  server_port             PostgreSQL port [5432]\n"
"  max_client_conn         clients served at once; more get SQLSTATE 53300 [1000]\n"
"  log_level               error | warning | info | debug [info]\n"
"  log_file                append log lines to this file instead of stderr\n"
"  max_held_message        largest message read whole (a Query, Parse, Bind,\n"
"                          an error...); larger ones stream through unread\n"
"                          (bytes, or B, kB, MB, GB) [1MB]\n"
"  client_login_timeout    seconds from connect to completed login [60]\n"
"  server_connect_timeout  seconds to wait for the server's TCP connect [10]\n"
"  shutdown_timeout        seconds SIGTERM waits for busy clients [30]\n"
"  tcp_keepalive           TCP keepalive on client and server sockets, so that\n"
"                          a peer gone without a word is noticed [on]\n"
"  tcp_keepidle            seconds idle before the first probe; 0: the\n"
"                          kernel's [0]\n"
"  tcp_keepintvl           seconds between probes; 0: the kernel's [0]\n"
"  tcp_keepcnt             unanswered probes before the peer counts as gone;\n"
"                          0: the kernel's [0]\n"
"  tcp_user_timeout        milliseconds sent data may go unacknowledged before\n"
"                          the connection is closed; 0: the kernel's [0]\n"
"  workers                 event-loop threads; 0: one per online core [0]\n"
"  so_reuseport            on: each worker its own SO_REUSEPORT socket, so a\n"
"                          second idemproxy can share the port [off]\n"
"  io_uring                auto | on | off: logged-in sessions read and write\n"
"                          through io_uring, where the kernel allows it;\n"
"                          auto: while each wake-up of a worker carries\n"
"                          several reads [auto]\n"
"  metrics_addr            address of the /metrics and /healthz endpoint\n"
"                          [127.0.0.1]\n"
"  metrics_port            its port; 0: no endpoint [0]\n"
"  log_stats_interval      seconds between summary log lines; 0: none [60]\n"
"  admin_users             roles that may use the admin console (database\n"
"                          idemproxy: SHOW STATS|TABLES|CLIENTS|CONFIG|VERSION,\n"
"                          RELOAD, SHUTDOWN); authenticated by SCRAM against\n"
"                          auth_file or auth_query\n"
"\n"
"TLS (keys as PgBouncer names them):\n"
"  client_tls_sslmode      disable | allow | prefer | require | verify-ca |\n"
"                          verify-full: TLS for clients; require refuses\n"
"                          plaintext, verify-* demand a client certificate\n"
"                          signed by client_tls_ca_file (verify-full: its CN\n"
"                          is the user name) [disable]\n"
"  client_tls_cert_file    the proxy's certificate (chain) for clients\n"
"  client_tls_key_file     its private key\n"
"  client_tls_ca_file      CA for client certificates\n"
"  client_tls_protocols    secure | all | tlsv1.2,tlsv1.3 [secure: 1.2 and 1.3]\n"
"  client_tls_ciphers      OpenSSL cipher list for TLS 1.2 [OpenSSL's]\n"
"  server_tls_sslmode      disable | prefer | require | verify-ca | verify-full:\n"
"                          TLS to PostgreSQL; verify-full also checks the\n"
"                          certificate names server_host [disable]\n"
"  server_tls_ca_file      CA for the server's certificate\n"
"  server_tls_cert_file    a client certificate for the server, with\n"
"  server_tls_key_file     its key\n"
"  server_tls_protocols, server_tls_ciphers   as for clients\n"
"\n"
"Authentication:\n"
"  auth_type               passthrough (the server authenticates) |\n"
"                          scram-sha-256 (idemproxy does, then logs in to the\n"
"                          server with the client's SCRAM key) [passthrough]\n"
"  auth_file               secrets, PgBouncer's userlist.txt format\n"
"  auth_user               role that runs auth_query for users not in auth_file\n"
"  auth_query              [SELECT usename, passwd FROM pg_shadow WHERE\n"
"                          usename = $1]\n"
"\n"
"Server connections and statements:\n"
"  server_reuse            on (needs scram-sha-256): a client that leaves an\n"
"                          idle session leaves its server, reset with DISCARD\n"
"                          ALL, to the next client with the same login [off]\n"
"  server_idle_timeout     seconds a kept server waits for that client [600]\n"
"  server_lifetime         seconds from a server's connect after which it is\n"
"                          not kept any more; 0: each serves one client [3600]\n"
"  max_idle_servers        servers kept at most, split between workers [100]\n"
"  max_cached_statements   per session: rewritten INSERTs sent as the unnamed\n"
"                          statement, or in a Query with their values in the\n"
"                          text, are prepared once on the server, as\n"
"                          idemproxy_s<n>, and reused; 0: never [100]\n"
"  catalog_check_interval  seconds after which the registered tables' indexes,\n"
"                          rules and privileges are checked again; 0: only\n"
"                          after a reload or an error a changed table causes\n"
"                          [60]\n"
"\n"
"Section [table schema.name] registers a table whose INSERTs are rewritten\n"
"to their ON CONFLICT form:\n"
"  conflict                arbiter columns, comma-separated: exactly the\n"
"                          columns of a unique index (optional for\n"
"                          do_nothing and none)\n"
"  action                  auto | do_nothing | return_existing | do_update |\n"
"                          none [auto: DO NOTHING, or for INSERT ... RETURNING\n"
"                          DO UPDATE SET <first conflict column> = itself]\n"
"  update_columns          do_update only: SET c = EXCLUDED.c for these\n"
"  database                only sessions on this database [all]\n"
"  mode                    enforce | shadow (count and log, change nothing)\n"
"                          [enforce]\n"
"  search_path             schemas in which a name without a schema is looked\n"
"                          up, in order [public]\n"
"  translate_errors        on | off [on]\n");
}

/* Each client costs two descriptors (client and server): the usual soft
 * limit of 1024 would stop the proxy near 500 clients, far below
 * max_client_conn. Raise it as far as the hard limit allows. */
static void raise_fd_limit(const struct config *cfg)
{
    struct rlimit lim;
    rlim_t want = (rlim_t)cfg->max_client_conn * 2 + 64;

    if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur >= want)
        return;
    lim.rlim_cur = lim.rlim_max == RLIM_INFINITY || lim.rlim_max > want ? want : lim.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur < want)
        log_warning("open files limited to %llu: fewer than the %llu that max_client_conn = %d "
                    "needs", (unsigned long long)lim.rlim_cur,
                    (unsigned long long)want, cfg->max_client_conn);
}

int main(int argc, char **argv)
{
    static const struct option options[] = {
        { "config", required_argument, NULL, 'c' },
        { "check-config", no_argument, NULL, 'C' },
        { "version", no_argument, NULL, 'V' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *path = DEFAULT_CONFIG;
    bool check_only = false;
    int opt;

    while ((opt = getopt_long(argc, argv, "c:Vh", options, NULL)) != -1) {
        switch (opt) {
        case 'c': path = optarg; break;
        case 'C': check_only = true; break;
        case 'V': printf("idemproxy %s\n", PACKAGE_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    char err[CONFIG_ERR_LEN];
    struct config *cfg = config_load(path, err);
    if (!cfg) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (check_only) {
        /* What the proxy would load besides the file: certificates, keys,
         * the auth_file; each failure is logged on stderr. */
        struct settings *built = settings_build(cfg, NULL);
        if (!built)
            return 1;
        printf("%s: configuration is valid\n", path);
        settings_unref(built);
        return 0;
    }

    raise_fd_limit(cfg);
    /* A client that vanishes must not kill the process on the next write. */
    signal(SIGPIPE, SIG_IGN);

    struct proxy proxy;
    int rc = 1;
    if (proxy_init(&proxy, cfg))
        rc = proxy_run(&proxy);
    proxy_free(&proxy);
    libevent_global_shutdown();
    return rc;
}
