#!/bin/bash
# Integration tests: a scratch PostgreSQL 15 cluster, the cmocka binaries
# (tests/test_integration: the proxy core; tests/test_idempotent: rewriting)
# against it through idemproxy, then a pgbench smoke test and the checks of
# real drivers (tests/drivers) through proxies started here.
#
# Run by `make check`, which sets:
#   IDEMPROXY       the proxy binary
#   IDEM_TEST_BINS  the compiled cmocka binaries, space-separated
#   PG_BINDIR       directory with initdb, pg_ctl, postgres (PostgreSQL 15)
# Optional: IDEM_TEST_FILTER (a cmocka test name pattern), IDEM_TEST_TIMEOUT_S
# (seconds before a test counts as hung; 180).
#
# Everything lives in one mktemp -d directory; the EXIT trap stops PostgreSQL
# (pg_ctl -m immediate), kills every process started here and removes it.
set -euo pipefail

: "${IDEMPROXY:?IDEMPROXY must name the proxy binary}"
: "${IDEM_TEST_BINS:?IDEM_TEST_BINS must name the test binaries}"
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}

for prog in initdb pg_ctl postgres psql; do
    if [ ! -x "$PG_BINDIR/$prog" ]; then
        echo "integration.sh: $PG_BINDIR/$prog not found (apt-get install postgresql-15," \
             "or set PG_BINDIR)" >&2
        exit 1
    fi
done
PGBENCH=$PG_BINDIR/pgbench
[ -x "$PGBENCH" ] || PGBENCH=$(command -v pgbench || true)
read -r -a TEST_BINS <<<"$IDEM_TEST_BINS"
for f in "$IDEMPROXY" "${TEST_BINS[@]}"; do
    [ -x "$f" ] || { echo "integration.sh: $f is not an executable" >&2; exit 1; }
done

# libpq must not pick up settings from the caller's environment.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE \
      PGSERVICEFILE PGOPTIONS PGAPPNAME PGSSLMODE PGREQUIRESSL PGGSSENCMODE \
      PGCONNECT_TIMEOUT PGTARGETSESSIONATTRS PGCLIENTENCODING PGTZ PGDATESTYLE || true

TMP=$(mktemp -d "${TMPDIR:-/tmp}/idemproxy-itest.XXXXXX")
PGDATA=$TMP/data
PGLOG=$TMP/postgres.log
WORK=$TMP/work
PROXY_PID=
PROXY_PORT=
PROXY_LOG=
TEST_PID=
failed=0

if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root: the cluster belongs to `postgres`.
    AS="runuser -u postgres --"
    PGSUPER=postgres
    chown postgres: "$TMP"
else
    AS=
    PGSUPER=$(id -un)
fi
mkdir -p "$WORK"

# pid: SIGTERM (SIGINT would do nothing: bash starts background jobs with
# SIGINT ignored), up to 10 s, then SIGKILL.
kill_wait() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    echo "integration.sh: pid $pid ignored SIGTERM for 10 s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [ -n "$TEST_PID" ] && kill -KILL "$TEST_PID" 2>/dev/null && wait "$TEST_PID" 2>/dev/null
    [ -n "$PROXY_PID" ] && kill_wait "$PROXY_PID"
    if [ -f "$PGDATA/postmaster.pid" ]; then
        $AS "$PG_BINDIR/pg_ctl" stop -D "$PGDATA" -m immediate -w -t 30 >/dev/null 2>&1
        # If pg_ctl could not stop it, the postmaster's PID is line 1.
        local pm
        pm=$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null)
        [ -n "$pm" ] && kill -KILL "$pm" 2>/dev/null
    fi
    if [ "$rc" != 0 ] && [ -f "$PGLOG" ]; then
        echo "--- last lines of the PostgreSQL log:"
        tail -n 30 "$PGLOG"
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "${TEST_BINS[0]}" --free-port
}

# ---- certificates ---------------------------------------------------------
# A test CA, the server's certificate (for localhost only), the proxy's and
# a client's, for the TLS tests; PostgreSQL runs with TLS on.
CERTS=$TMP/certs
bash "$(dirname "$0")/tls/make-certs.sh" "$CERTS" "$PGSUPER" >"$TMP/certs.log" 2>&1 \
    || { cat "$TMP/certs.log"; exit 1; }
PGSSL=$TMP/pgssl
mkdir -p "$PGSSL"
cp "$CERTS/server.crt" "$CERTS/server.key" "$CERTS/ca.crt" "$PGSSL/"
[ -n "$AS" ] && chown -R postgres: "$PGSSL"
chmod 600 "$PGSSL/server.key"

# ---- the scratch cluster --------------------------------------------------
PGPORT=$(free_port)
echo "integration.sh: PostgreSQL on 127.0.0.1:$PGPORT in $PGDATA"
$AS "$PG_BINDIR/initdb" -D "$PGDATA" -U "$PGSUPER" --auth=trust --no-sync \
    --encoding=UTF8 --locale=C >"$TMP/initdb.log" 2>&1 \
    || { cat "$TMP/initdb.log"; exit 1; }
cat >>"$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$TMP'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
lc_messages = 'C'
ssl = on
ssl_cert_file = '$PGSSL/server.crt'
ssl_key_file = '$PGSSL/server.key'
ssl_ca_file = '$PGSSL/ca.crt'
EOF
cat >"$PGDATA/pg_hba.conf" <<EOF
local all all                trust
host  all md5_user   127.0.0.1/32 md5
host  all scram_user 127.0.0.1/32 scram-sha-256
host  all all        127.0.0.1/32 trust
EOF
$AS "$PG_BINDIR/pg_ctl" start -D "$PGDATA" -l "$PGLOG" -w -t 60 >/dev/null \
    || { cat "$PGLOG"; exit 1; }

psql_super() {
    "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U "$PGSUPER" \
        -d postgres "$@"
}
# md5_user's password is stored as an MD5 hash, so the server asks for md5.
psql_super <<'EOF'
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD 'md5_secret';
RESET password_encryption;
CREATE ROLE scram_user LOGIN PASSWORD 'scram_secret';
EOF
[ "$(psql_super -At -c "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = 'md5_user'")" = md5 ]

export IDEMPROXY
export IDEM_TEST_PGHOST=127.0.0.1
export IDEM_TEST_PGPORT=$PGPORT
export IDEM_TEST_PGDATA=$PGDATA
export IDEM_TEST_PGLOG=$PGLOG
export IDEM_TEST_PGBIN=$PG_BINDIR
export IDEM_TEST_PGUSER=$PGSUPER
export IDEM_TEST_AS=$AS
export IDEM_TEST_TMP=$WORK
export IDEM_TEST_CERTS=$CERTS

# ---- the C tests ------------------------------------------------------------
start=$(date +%s)
# run_test BIN [SETTINGS]: SETTINGS go into every proxy's [idemproxy].
run_test() {
    local t0 rc=0
    t0=$(date +%s)
    # In the background, so that the EXIT trap can kill it if we are
    # interrupted; its proxies die with it (PR_SET_PDEATHSIG).
    IDEM_TEST_PROXY_SETTINGS=${2:-} "$1" &
    TEST_PID=$!
    wait "$TEST_PID" || rc=$?
    TEST_PID=
    echo "integration.sh: ${1##*/}${2:+ with $2} exited $rc after $(( $(date +%s) - t0 )) s"
    [ "$rc" = 0 ] || failed=1
}
# Every session through the ring: with the default, io_uring = auto, the
# tests' few sessions taking turns would mostly use plain calls.
for bin in "${TEST_BINS[@]}"; do
    run_test "$bin" "io_uring = on"
done
# The core tests and the comparison with PostgreSQL once more with the
# default, whose sessions may move between the ring and plain calls
# mid-test, and with plain system calls only, the path taken where the
# kernel refuses io_uring.
for bin in "${TEST_BINS[@]}"; do
    if [ "${bin##*/}" = test_integration ] || [ "${bin##*/}" = test_differential ]; then
        run_test "$bin"
        run_test "$bin" "io_uring = off"
    fi
done

# ---- proxies started here ---------------------------------------------------
# start_proxy NAME [LINE...]: a proxy in front of the cluster on a free port
# (PROXY_PORT), logging to $TMP/NAME-proxy.log (PROXY_LOG), with each LINE
# added after [idemproxy]'s own settings; fails when it does not listen
# within 20 s.
start_proxy() {
    local name=$1 line
    shift
    PROXY_PORT=$(free_port)
    PROXY_LOG=$TMP/$name-proxy.log
    {
        printf '%s\n' "[idemproxy]" "listen_addr = 127.0.0.1" "listen_port = $PROXY_PORT" \
            "server_host = 127.0.0.1" "server_port = $PGPORT" "max_client_conn = 100" \
            "log_level = info"
        for line in "$@"; do printf '%s\n' "$line"; done
    } >"$WORK/$name.ini"
    "$IDEMPROXY" -c "$WORK/$name.ini" </dev/null >"$PROXY_LOG" 2>&1 &
    PROXY_PID=$!
    for _ in $(seq 200); do # 20 s
        kill -0 "$PROXY_PID" 2>/dev/null || break
        grep -qi ":$(printf '%04X' "$PROXY_PORT") [0-9A-F]*:[0-9A-F]* 0A" /proc/net/tcp && return 0
        sleep 0.1
    done
    echo "integration.sh: FAILED: the $name proxy did not start" >&2
    return 1
}

# stop_proxy NAME: stops the proxy start_proxy started; fails when it had
# died or its log holds a sanitizer report, and then shows the log.
stop_proxy() {
    local name=$1 rc=0
    if ! kill -0 "$PROXY_PID" 2>/dev/null; then
        echo "integration.sh: FAILED: the $name proxy died" >&2
        rc=1
    fi
    kill_wait "$PROXY_PID"
    PROXY_PID=
    if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$PROXY_LOG"; then
        echo "integration.sh: FAILED: sanitizer report in the $name proxy's log" >&2
        rc=1
    fi
    if [ "$rc" != 0 ] || [ "$failed" != 0 ]; then
        echo "--- $name proxy log ($PROXY_LOG):"
        tail -n 100 "$PROXY_LOG"
    fi
    return $rc
}

# ---- pgbench through a proxy ------------------------------------------------
bench() {
    echo "integration.sh: pgbench $*"
    if ! timeout -k 5 120 "$PGBENCH" -h 127.0.0.1 -p "$PROXY_PORT" -U "$PGSUPER" "$@" postgres \
        >"$WORK/pgbench.out" 2>&1; then
        cat "$WORK/pgbench.out"
        echo "integration.sh: FAILED: pgbench $*" >&2
        failed=1
        return 1
    fi
    grep -E '^(number of (transactions actually processed|failed)|tps)' "$WORK/pgbench.out" || true
}
if [ -n "${IDEM_TEST_FILTER:-}" ]; then
    echo "integration.sh: IDEM_TEST_FILTER set, skipping pgbench and the drivers"
elif [ -z "$PGBENCH" ]; then
    echo "integration.sh: pgbench not found" >&2
    failed=1
elif ! start_proxy pgbench; then
    failed=1
else
    if bench -i -s 1 -q; then
        bench -S -T 3 -c 4 -j 2 -M simple || true
        bench -S -T 3 -c 4 -j 2 -M extended || true
        bench -S -T 3 -c 4 -j 2 -M prepared || true
    fi
    stop_proxy pgbench || failed=1
fi

# ---- real drivers through a proxy -------------------------------------------
# psql, psycopg2, psycopg 3 and asyncpg (tests/drivers/drivers.py), pgjdbc
# (Drivers.java) and PHP's PDO (drivers.php), each straight and through a proxy registering
# drivers.sql's tables: once in plaintext with the server's trust, once as
# scram_user on TLS to a proxy that checks the password itself and speaks
# TLS to the server, keeping server connections for the next client.
DRIVERS=$(dirname "$0")/drivers
DRIVER_TABLES=("[table public.webhook_events]" "conflict = idempotency_key"
    "[table public.ledger]" "conflict = ref" "action = none")
# run_drivers NAME USER PASSWORD SSLMODE: both scripts through the proxy
# start_proxy started.
run_drivers() {
    local name=$1 user=$2 password=$3 sslmode=$4 script t0 rc
    local -a command
    for script in drivers.py Drivers.java drivers.php; do
        case $script in
        drivers.py) command=(/usr/bin/python3 "$DRIVERS/drivers.py") ;;
        Drivers.java) command=(java -cp /usr/share/java/postgresql.jar "$DRIVERS/Drivers.java") ;;
        drivers.php) command=(php "$DRIVERS/drivers.php") ;;
        esac
        t0=$(date +%s)
        rc=0
        timeout -k 5 300 "${command[@]}" 127.0.0.1 "$PGPORT" "$PROXY_PORT" "$user" postgres \
            "$password" "$sslmode" >"$WORK/$name-$script.out" 2>&1 || rc=$?
        echo "integration.sh: $script through the $name proxy:" \
             "$(grep -c '^ok ' "$WORK/$name-$script.out") checks passed," \
             "exited $rc after $(( $(date +%s) - t0 )) s"
        if [ "$rc" != 0 ]; then
            grep -v '^ok ' "$WORK/$name-$script.out" | tail -n 40
            failed=1
        fi
    done
}
if [ -n "${IDEM_TEST_FILTER:-}" ]; then
    :
elif ! /usr/bin/python3 -c 'import asyncpg, psycopg, psycopg2' 2>/dev/null ||
    ! command -v java >/dev/null || [ ! -f /usr/share/java/postgresql.jar ] ||
    ! php -r 'exit(extension_loaded("pdo_pgsql") ? 0 : 1);' 2>/dev/null; then
    echo "integration.sh: FAILED: the driver checks need python3-asyncpg, python3-psycopg," \
         "python3-psycopg2, libpostgresql-jdbc-java, openjdk-17-jdk-headless, php-cli and" \
         "php-pgsql" >&2
    failed=1
elif ! psql_super -f "$DRIVERS/drivers.sql" ||
    ! psql_super -c "GRANT USAGE ON SCHEMA tenant TO scram_user;
                     GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public, tenant
                         TO scram_user;
                     GRANT USAGE ON ALL SEQUENCES IN SCHEMA public, tenant TO scram_user" ||
    ! psql_super -At -c "SELECT format('\"%s\" \"%s\"', rolname, rolpassword) FROM pg_authid
                         WHERE rolname = 'scram_user'" >"$WORK/drivers-users.txt"; then
    failed=1
else
    if start_proxy drivers "" "${DRIVER_TABLES[@]}"; then
        run_drivers plaintext "$PGSUPER" "" disable
        stop_proxy drivers || failed=1
    else
        failed=1
    fi
    if start_proxy drivers-tls "client_tls_sslmode = require" \
        "client_tls_cert_file = $CERTS/proxy.crt" "client_tls_key_file = $CERTS/proxy.key" \
        "server_tls_sslmode = require" "auth_type = scram-sha-256" \
        "auth_file = $WORK/drivers-users.txt" "server_reuse = on" "" "${DRIVER_TABLES[@]}"; then
        run_drivers TLS scram_user scram_secret require
        stop_proxy drivers-tls || failed=1
    else
        failed=1
    fi
fi

echo "integration.sh: total $(( $(date +%s) - start )) s"
if [ "$failed" != 0 ]; then
    echo "integration.sh: FAILED" >&2
    exit 1
fi
echo "integration.sh: all passed"
