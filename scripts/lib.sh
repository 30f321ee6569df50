# Shared by scripts/quickstart, scripts/check, scripts/soak, bench/run and the
# test harness: installing what is missing, building, running a scratch
# PostgreSQL, and reading idemproxy's metrics.
# Source it; every function reports its own errors.

IDEM_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

IDEM_PACKAGES=(build-essential autoconf automake libtool pkg-config
    libevent-dev libssl-dev libpq-dev libpg-query-dev libprotobuf-c-dev
    libcmocka-dev libinih-dev uthash-dev libxxhash-dev liburing-dev libsystemd-dev postgresql-15 postgresql-client-15
    clang libclang-rt-14-dev)
# What the test suite's driver checks (tests/drivers) run on.
IDEM_TEST_PACKAGES=(python3-asyncpg python3-psycopg python3-psycopg2 libpostgresql-jdbc-java
    openjdk-17-jdk-headless php-cli php-pgsql)

idem_say() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
idem_die() { idem_say "$*"; exit 1; }

# Installs the Debian packages that are missing (as root), or names them.
idem_need_packages() {
    local missing=() pkg
    for pkg in "${IDEM_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' ||
            missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        idem_die "missing packages; run: sudo apt-get update && sudo apt-get install -y ${missing[*]}"
    fi
    idem_say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || idem_die "apt-get update failed"
    apt-get install -y -qq "${missing[@]}" >/dev/null || idem_die "apt-get install ${missing[*]} failed"
}

# idem_build DIR [configure options...]: configures DIR (again only when the
# options changed) and builds it.
idem_build() {
    local dir=$1; shift
    (cd "$IDEM_TOP" &&
        { [ -x configure ] && [ configure -nt configure.ac ] && [ Makefile.in -nt Makefile.am ] ||
            autoreconf -fi >/dev/null 2>&1; }) || idem_die "autoreconf failed"
    mkdir -p "$dir"
    local want="$*"
    if [ ! -f "$dir/Makefile" ] || [ "$(cat "$dir/.configure-args" 2>/dev/null)" != "$want" ]; then
        (cd "$dir" && "$IDEM_TOP/configure" "$@" >configure.out 2>&1) ||
            { tail -20 "$dir/configure.out" >&2; idem_die "configure failed (see $dir/config.log)"; }
        printf '%s' "$want" >"$dir/.configure-args"
    fi
    make -C "$dir" -j"$(nproc)" >"$dir/make.out" 2>&1 ||
        { grep -E 'error|Error' "$dir/make.out" | head -30 >&2; idem_die "build failed (see $dir/make.out)"; }
}

idem_pg_bindir() {
    local d
    for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    idem_die "initdb not found: apt-get install postgresql-15"
}

# idem_free_port [TAKEN...]: a TCP port on 127.0.0.1 that nothing uses
# right now and that is none of TAKEN (ports drawn for a server not started
# yet), below the ephemeral range: a port that some client connection
# happens to hold locally would make a listener fail with "Address already
# in use".
idem_free_port() {
    local port tries=0 lo
    lo=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    [ "$lo" -gt 21000 ] || lo=61000
    while [ $tries -lt 200 ]; do
        port=$((20000 + RANDOM % (lo - 20000)))
        tries=$((tries + 1))
        [[ " $* " == *" $port "* ]] && continue
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && continue
        if command -v ss >/dev/null && [ -n "$(ss -Htan "( sport = :$port )" 2>/dev/null)" ]; then
            continue
        fi
        echo "$port"
        return 0
    done
    idem_die "no free port found"
}

# Runs a command as the cluster's owner: as root that is "postgres", since
# PostgreSQL refuses to run as root.
idem_as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# idem_pg_start DIR PORT [postgresql.conf lines...]: initdb in DIR/data and
# start a server on 127.0.0.1:PORT with its socket in DIR. Sets PG_SUPERUSER.
idem_pg_start() {
    local dir=$1 port=$2; shift 2
    local bindir; bindir=$(idem_pg_bindir)
    PG_SUPERUSER=$(id -un)
    if [ "$(id -u)" -eq 0 ]; then
        PG_SUPERUSER=postgres
        chown postgres "$dir"
    fi
    idem_as_owner "$bindir/initdb" -D "$dir/data" -U "$PG_SUPERUSER" -A trust -E UTF8 \
        --no-instructions >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; idem_die "initdb failed"; }
    {
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$dir'"
        echo "fsync = off"
        echo "synchronous_commit = off"
        echo "full_page_writes = off"
        local line
        for line in "$@"; do echo "$line"; done
    } | idem_as_owner tee -a "$dir/data/postgresql.conf" >/dev/null
    idem_as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null ||
        { tail -20 "$dir/postgres.log" >&2; idem_die "PostgreSQL did not start"; }
}

# idem_scram_auth_file PORT PASSWORD FILE: gives the superuser of the
# cluster on 127.0.0.1:PORT that password and writes its SCRAM secret to
# FILE as an auth_file line, for a proxy that checks logins itself.
idem_scram_auth_file() {
    local port=$1 password=$2 file=$3 secret
    local su=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$PG_SUPERUSER" -d postgres)
    "${su[@]}" -c "ALTER ROLE \"$PG_SUPERUSER\" PASSWORD '$password'" ||
        idem_die "cannot set the password of $PG_SUPERUSER"
    secret=$("${su[@]}" -At -c "SELECT rolpassword FROM pg_authid WHERE rolname = '$PG_SUPERUSER'")
    [[ $secret == SCRAM-SHA-256\$* ]] || idem_die "PostgreSQL stored no SCRAM secret for $PG_SUPERUSER"
    printf '"%s" "%s"\n' "$PG_SUPERUSER" "$secret" >"$file"
}

# idem_wait_ready NAME PORT PID LOG: until a query through the proxy NAME
# on 127.0.0.1:PORT works; dies with LOG's tail if PID exits first or 30 s
# pass.
idem_wait_ready() {
    local name=$1 port=$2 pid=$3 log=$4 _
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2 || true; idem_die "$name exited at start"; }
        if psql -X -q -h 127.0.0.1 -p "$port" -U "$PG_SUPERUSER" -d postgres \
            -c 'SELECT 1' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    tail -20 "$log" >&2 || true
    idem_die "$name did not answer on port $port"
}

# The transactions a pgbench run reports in its log file LOG (empty when
# it reports none).
idem_pgbench_txns() {
    awk -F': *' '/^number of transactions actually processed/ { split($2, a, "/"); print a[1]; exit }' "$1"
}

idem_pg_stop() {
    local dir=$1
    [ -f "$dir/data/postmaster.pid" ] || return 0
    idem_as_owner "$(idem_pg_bindir)/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
}

# idem_workers_on_ring PORT: how many of an idemproxy's workers have their
# sessions on io_uring now, from its /metrics on 127.0.0.1:PORT, read with
# bash's /dev/tcp so that no HTTP client is needed; nothing if it cannot be
# read.
idem_workers_on_ring() {
    local fd
    exec {fd}<>"/dev/tcp/127.0.0.1/$1" || return 0
    printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&"$fd"
    awk '$1 == "idemproxy_workers_on_ring" { print $2 }' <&"$fd"
    exec {fd}>&-
}
