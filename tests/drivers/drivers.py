"""What applications written with real Python drivers, and psql, see
through idemproxy.

psql runs scripts with its own savepoint around each statement
(ON_ERROR_ROLLBACK) and copies from them. psycopg2, what most older Python
code runs on, sends every statement as a Query with the values in its
text, and opens each block with a BEGIN of its own; psycopg 3 speaks
through libpq too (its pipeline mode, server-side prepared statements after
five executions, binary parameters); asyncpg has its own implementation of
the protocol (named statements for everything, binary formats, executemany
as one batch, its own cancel requests). Each check runs the same calls once
straight against PostgreSQL and once through the proxy: straight, a
duplicate into a registered table fails, which shows that the check can
fail; through the proxy it must give what the application would have got
had the row been skipped (or found), and everything else must be what
PostgreSQL itself gives.

Run by tests/integration.sh, which creates the tables (drivers.sql) and
starts a proxy registering them:

    /usr/bin/python3 drivers.py HOST DIRECT_PORT PROXY_PORT USER DBNAME PASSWORD SSLMODE

PASSWORD may be empty (trusted); SSLMODE is disable or require.

Prints one line per check, `ok NAME` or `FAILED NAME: why`, and exits 1 when
any failed.
"""

import asyncio
import io
import logging
import os
import subprocess
import sys
import uuid

import asyncpg
import psycopg
import psycopg2
import psycopg2.extras

HOST, DIRECT_PORT, PROXY_PORT, USER, DBNAME, PASSWORD, SSLMODE = sys.argv[1:8]
DIRECT_PORT, PROXY_PORT = int(DIRECT_PORT), int(PROXY_PORT)

INSERT_EVENT = "INSERT INTO webhook_events (idempotency_key, payload) VALUES (%s, %s)"
INSERT_EVENT_RETURNING = INSERT_EVENT + " RETURNING id"
INSERT_LEDGER = "INSERT INTO ledger (ref, amount) VALUES (%s, %s)"
INSERT_AUDIT = "INSERT INTO audit_log (k) VALUES (%s)"

failures = []

# Straight to PostgreSQL the duplicates abort pipelines on purpose; psycopg
# logs each such pipeline it closes.
logging.getLogger("psycopg").setLevel(logging.CRITICAL)


def check(name, cond, why):
    if cond:
        print(f"ok {name}")
    else:
        print(f"FAILED {name}: {why}")
        failures.append(name)


def fresh(prefix):
    """Keys no other check or run uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def conninfo(port):
    return psycopg.conninfo.make_conninfo(host=HOST, port=port, user=USER, dbname=DBNAME,
                                          password=PASSWORD or None, sslmode=SSLMODE)


def count(table, column, prefix):
    with psycopg.connect(conninfo(DIRECT_PORT), autocommit=True) as conn:
        return conn.execute(f"SELECT count(*) FROM {table} WHERE {column} LIKE %s",
                            (prefix + "%",)).fetchone()[0]


def sqlstate_of(fn):
    """Runs fn; the SQLSTATE of the error it raised, or None."""
    try:
        fn()
    except psycopg.Error as e:
        return e.sqlstate
    return None


# ---- psql --------------------------------------------------------------------

def psql_script(port):
    """psql running a script in one block with ON_ERROR_ROLLBACK (its own
    savepoint around each statement): a duplicate into a table only error
    translation covers, another row, two rows copied from the script,
    COMMIT. psql's exit status, the SQLSTATEs it reported, and the rows."""
    prefix = fresh("psql")
    script = "\n".join([
        f"INSERT INTO ledger (ref, amount) VALUES ('{prefix}-a', 1);",
        "BEGIN;",
        f"INSERT INTO ledger (ref, amount) VALUES ('{prefix}-a', 2);",
        f"INSERT INTO ledger (ref, amount) VALUES ('{prefix}-b', 3);",
        "\\copy ledger (ref, amount) from stdin",
        f"{prefix}-c\t4",
        f"{prefix}-d\t5",
        "\\.",
        "COMMIT;",
    ])
    env = dict(os.environ, PGPASSWORD=PASSWORD, PGSSLMODE=SSLMODE)
    done = subprocess.run(
        ["psql", "-X", "-q", "-h", HOST, "-p", str(port), "-U", USER, "-d", DBNAME,
         "-v", "ON_ERROR_ROLLBACK=on", "-v", "VERBOSITY=sqlstate", "-f", "-"],
        input=script, text=True, capture_output=True, env=env, timeout=60)
    errors = [line.split("ERROR:")[1].strip() for line in done.stderr.splitlines()
              if "ERROR:" in line]
    return done.returncode, errors, count("ledger", "ref", prefix)


# ---- psycopg2 ---------------------------------------------------------------

def psycopg2_connect(port):
    return psycopg2.connect(host=HOST, port=port, user=USER, dbname=DBNAME,
                            password=PASSWORD or None, sslmode=SSLMODE)


def psycopg2_outcome(cur, sql, args):
    try:
        cur.execute(sql, args)
        return cur.rowcount
    except psycopg2.Error as e:
        return e.pgcode


def psycopg2_end_block(conn):
    """Commits, or rolls back the block an error failed."""
    if conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INERROR:
        conn.rollback()
    else:
        conn.commit()


def psycopg2_retry(port):
    """psycopg2's default, a block it opens before the first statement: a
    retry alone in its block; a duplicate into a table only error
    translation covers, then one more row, in one block. Then RETURNING id
    twice, autocommitted: the ids, or whether the second failed as the
    first."""
    prefix = fresh("pg2-retry")
    conn = psycopg2_connect(port)
    try:
        cur = conn.cursor()
        outcomes = [psycopg2_outcome(cur, INSERT_EVENT, (prefix, "first"))]
        conn.commit()
        outcomes.append(psycopg2_outcome(cur, INSERT_EVENT, (prefix, "retry")))
        psycopg2_end_block(conn)
        outcomes.append(psycopg2_outcome(cur, INSERT_LEDGER, (prefix + "-a", 1)))
        conn.commit()
        outcomes.append(psycopg2_outcome(cur, INSERT_LEDGER, (prefix + "-a", 2)))
        outcomes.append(psycopg2_outcome(cur, INSERT_LEDGER, (prefix + "-b", 3)))
        psycopg2_end_block(conn)
        conn.autocommit = True
        ids = []
        for _ in range(2):
            try:
                cur.execute(INSERT_EVENT_RETURNING, (prefix, "again"))
                ids.append(cur.fetchone()[0])
            except psycopg2.Error as e:
                ids.append(e.pgcode)
        outcomes.append("same id" if isinstance(ids[0], int) and ids[0] == ids[1] else ids)
    finally:
        conn.close()
    return outcomes, count("ledger", "ref", prefix)


def psycopg2_discard(port):
    """Retries with the values in the text, which the proxy runs as a
    statement it prepared; a DISCARD ALL between them (a pool's reset)
    drops that statement on the server."""
    prefix = fresh("pg2-discard")
    conn = psycopg2_connect(port)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        outcomes = []
        for reset in ("", "DISCARD ALL", "DEALLOCATE ALL", ""):
            if reset:
                cur.execute(reset)
            outcomes.append(psycopg2_outcome(cur, INSERT_EVENT, (prefix, "x")))
    finally:
        conn.close()
    return outcomes


def psycopg2_execute_values(port):
    """execute_values: one multi-row INSERT, duplicates within it and of a
    row already there."""
    prefix = fresh("pg2-values")
    conn = psycopg2_connect(port)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute(INSERT_EVENT, (f"{prefix}-1", "x"))
        try:
            psycopg2.extras.execute_values(
                cur, "INSERT INTO webhook_events (idempotency_key, payload) VALUES %s",
                [(f"{prefix}-{k}", "x") for k in (1, 2, 3, 2)])
            state = cur.rowcount
        except psycopg2.Error as e:
            state = e.pgcode
    finally:
        conn.close()
    return state, count("webhook_events", "idempotency_key", prefix)


# ---- psycopg 3 --------------------------------------------------------------

def psycopg_retry(port):
    """Autocommit INSERT sent twice: the second's rowcount, or its SQLSTATE."""
    key = fresh("pg-retry")
    with psycopg.connect(conninfo(port), autocommit=True) as conn:
        first = conn.execute(INSERT_EVENT, (key, "first")).rowcount
        try:
            second = conn.execute(INSERT_EVENT, (key, "retry")).rowcount
        except psycopg.Error as e:
            second = e.sqlstate
        payload = conn.execute("SELECT payload FROM webhook_events WHERE idempotency_key = %s",
                               (key,)).fetchone()[0]
    return first, second, payload


def psycopg_returning(port):
    """INSERT ... RETURNING id twice, text and binary: the ids."""
    key = fresh("pg-returning")
    ids = []
    with psycopg.connect(conninfo(port), autocommit=True) as conn:
        for binary in (False, True, False):
            try:
                ids.append(conn.execute(INSERT_EVENT_RETURNING, (key, "x"),
                                        binary=binary).fetchone()[0])
            except psycopg.Error as e:
                ids.append(e.sqlstate)
    return ids


def psycopg_prepared(port):
    """The same INSERT nine times over three keys: from the fifth on psycopg
    runs its own prepared statement."""
    prefix = fresh("pg-prepared")
    with psycopg.connect(conninfo(port), autocommit=True) as conn:
        counts = []
        for i in range(9):
            try:
                counts.append(conn.execute(INSERT_EVENT, (f"{prefix}-{i % 3}", "x")).rowcount)
            except psycopg.Error as e:
                counts.append(e.sqlstate)
        prepared = conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE '_pg3_%%'").fetchone()[0]
    return counts, prepared, count("webhook_events", "idempotency_key", prefix)


def psycopg_executemany(port):
    """executemany in autocommit, which psycopg sends as one pipeline."""
    prefix = fresh("pg-many")
    rows = [(f"{prefix}-{k}", "x") for k in (1, 2, 1, 3, 2)]
    with psycopg.connect(conninfo(port), autocommit=True) as conn:
        state = sqlstate_of(lambda: conn.cursor().executemany(INSERT_EVENT, rows))
    return state, count("webhook_events", "idempotency_key", prefix)


def psycopg_pipeline(port):
    """An explicit pipeline: a duplicate, then a SELECT behind it."""
    prefix = fresh("pg-pipeline")
    with psycopg.connect(conninfo(port), autocommit=True) as conn:
        try:
            with conn.pipeline():
                conn.execute(INSERT_EVENT, (prefix, "a"))
                conn.execute(INSERT_EVENT, (prefix, "b"))
                cur = conn.execute("SELECT %s::text", ("behind",))
            after = cur.fetchone()[0]
        except psycopg.Error as e:
            after = e.sqlstate
    return after, count("webhook_events", "idempotency_key", prefix)


def psycopg_pipeline_in_block(port, dup_last):
    """A pipeline on a connection that is not autocommitted: psycopg syncs
    its BEGIN alone, then sends a duplicate into a table only error
    translation covers and another row in one batch; then commit. Last in
    the batch the duplicate is rolled back alone; first, it fails the
    batch, whose rest the server skipped, as it does directly."""
    prefix = fresh("pg-pipe-block")
    keys = ("-b", "-a") if dup_last else ("-a", "-b")
    with psycopg.connect(conninfo(port)) as conn:
        conn.execute(INSERT_LEDGER, (prefix + "-a", 1))
        conn.commit()
        try:
            with conn.pipeline():
                cursors = [conn.execute(INSERT_LEDGER, (prefix + k, 2)) for k in keys]
            outcome = [cur.rowcount for cur in cursors]
            conn.commit()
        except psycopg.Error as e:
            outcome = e.sqlstate
            conn.rollback()
    return outcome, count("ledger", "ref", prefix)


def psycopg_transaction(port):
    """A transaction block (psycopg's default): a duplicate into a table only
    error translation covers, then another row; both commit."""
    prefix = fresh("pg-txn")
    with psycopg.connect(conninfo(port)) as conn:
        conn.execute(INSERT_LEDGER, (prefix + "-a", 1))
        conn.commit()
        try:
            with conn.transaction():
                dup = conn.execute(INSERT_LEDGER, (prefix + "-a", 2)).rowcount
                conn.execute(INSERT_LEDGER, (prefix + "-b", 3))
        except psycopg.Error as e:
            dup = e.sqlstate
            conn.rollback()
    return dup, count("ledger", "ref", prefix)


def psycopg_rollback_kept(port):
    """A duplicate into a table the proxy was not told about, inside a block:
    the error and the rollback of everything before it are the server's."""
    prefix = fresh("pg-rollback")
    with psycopg.connect(conninfo(port)) as conn:
        conn.execute(INSERT_AUDIT, (prefix + "-a",))
        conn.commit()
        conn.execute(INSERT_EVENT, (prefix + "-event", "x"))
        state = sqlstate_of(lambda: conn.execute(INSERT_AUDIT, (prefix + "-a",)))
        status = conn.info.transaction_status.name
        conn.rollback()
    return state, status, count("webhook_events", "idempotency_key", prefix)


def psycopg_nested(port):
    """A transaction inside a transaction (a savepoint of psycopg's): a
    duplicate into a table only error translation covers, in the inner
    one, then a row in the outer one; the application catches the inner
    error, as it would directly."""
    prefix = fresh("pg-nested")
    with psycopg.connect(conninfo(port)) as conn:
        conn.execute(INSERT_LEDGER, (prefix + "-a", 1))
        conn.commit()
        with conn.transaction():
            try:
                with conn.transaction():
                    inner = conn.execute(INSERT_LEDGER, (prefix + "-a", 2)).rowcount
            except psycopg.Error as e:
                inner = e.sqlstate
            conn.execute(INSERT_LEDGER, (prefix + "-b", 3))
    return inner, count("ledger", "ref", prefix)


def psycopg_copy(port):
    """COPY passes through: rows in, and a duplicate in COPY fails (no
    statement to rewrite)."""
    prefix = fresh("pg-copy")
    with psycopg.connect(conninfo(port), autocommit=True) as conn:
        with conn.cursor().copy("COPY webhook_events (idempotency_key, payload) FROM STDIN") as cp:
            for i in range(100):
                cp.write_row((f"{prefix}-{i}", "copied"))

        def copy_dup():
            with conn.cursor().copy("COPY webhook_events (idempotency_key, payload) FROM STDIN") as cp:
                cp.write_row((f"{prefix}-7", "again"))
        state = sqlstate_of(copy_dup)
        alive = conn.execute("SELECT 1").fetchone()[0]
    return count("webhook_events", "idempotency_key", prefix), state, alive


def psycopg_executemany_in_block(port, keys):
    """executemany inside a block into a table only error translation
    covers, keys[0] already there: a duplicate last in the batch is rolled
    back alone, one in its middle fails the block as it does directly."""
    prefix = fresh("pg-many-block")
    with psycopg.connect(conninfo(port)) as conn:
        conn.execute(INSERT_LEDGER, (f"{prefix}-{keys[0]}", 0))
        conn.commit()
        rows = [(f"{prefix}-{k}", 1) for k in keys[1:]]
        state = sqlstate_of(lambda: conn.cursor().executemany(INSERT_LEDGER, rows))
        if state:
            conn.rollback()
        else:
            conn.commit()
    return state, count("ledger", "ref", prefix)


# ---- asyncpg ----------------------------------------------------------------

ASYNC_EVENT = "INSERT INTO webhook_events (idempotency_key, payload) VALUES ($1, $2)"
ASYNC_LEDGER = "INSERT INTO ledger (ref, amount) VALUES ($1, $2)"


def asyncpg_options(port):
    return dict(host=HOST, port=port, user=USER, database=DBNAME, password=PASSWORD or None,
                ssl="require" if SSLMODE == "require" else False)


async def connect(port):
    return await asyncpg.connect(**asyncpg_options(port))


async def attempt(coro):
    try:
        return await coro
    except asyncpg.PostgresError as e:
        return e.sqlstate


async def asyncpg_retry(port):
    """execute() twice: the command tags (asyncpg prepares every statement)."""
    key = fresh("apg-retry")
    conn = await connect(port)
    try:
        return [await attempt(conn.execute(ASYNC_EVENT, key, "x")) for _ in range(2)]
    finally:
        await conn.close()


async def asyncpg_returning(port):
    """fetchval(INSERT ... RETURNING id) twice, and once more from a statement
    prepared by hand: the ids."""
    key = fresh("apg-returning")
    conn = await connect(port)
    try:
        ids = [await attempt(conn.fetchval(ASYNC_EVENT + " RETURNING id", key, "x"))
               for _ in range(2)]
        stmt = await conn.prepare(ASYNC_EVENT + " RETURNING id")
        ids.append(await attempt(stmt.fetchval(key, "y")))
        return ids
    finally:
        await conn.close()


async def in_block(conn, body, **options):
    """Runs body(conn) inside conn.transaction(**options): what it returned,
    or the SQLSTATE that rolled the block back."""
    try:
        async with conn.transaction(**options):
            return await body(conn)
    except asyncpg.PostgresError as e:
        return e.sqlstate


async def asyncpg_uncached(port):
    """statement_cache_size=0, as asyncpg is set up behind PgBouncer: every
    statement unnamed, described and run in two batches."""
    key = fresh("apg-uncached")
    conn = await asyncpg.connect(**asyncpg_options(port), statement_cache_size=0)
    try:
        tags = [await attempt(conn.execute(ASYNC_EVENT, key, "x")) for _ in range(2)]
        tags.append(await attempt(conn.fetchval(ASYNC_EVENT + " RETURNING id", key, "x")))
        return tags[:2] + [isinstance(tags[2], int)]
    finally:
        await conn.close()


async def asyncpg_pool(port):
    """A pool of two connections, each released (RESET ALL, UNLISTEN *,
    CLOSE ALL ...) and acquired again between retries."""
    key = fresh("apg-pool")
    pool = await asyncpg.create_pool(**asyncpg_options(port), min_size=2, max_size=2)
    try:
        tags = []
        for _ in range(4):
            async with pool.acquire() as conn:
                tags.append(await attempt(conn.execute(ASYNC_EVENT, key, "x")))
        return tags
    finally:
        await pool.close()


async def asyncpg_executemany(port):
    """executemany: every Bind and Execute, then one Sync."""
    prefix = fresh("apg-many")
    conn = await connect(port)
    try:
        state = await attempt(conn.executemany(
            ASYNC_EVENT, [(f"{prefix}-{k}", "x") for k in (1, 2, 2, 3, 1)]))
    finally:
        await conn.close()
    return state, count("webhook_events", "idempotency_key", prefix)


async def asyncpg_executemany_in_block(port, keys):
    """executemany inside conn.transaction() into a table only error
    translation covers, keys[0] already there: as psycopg's above."""
    prefix = fresh("apg-many-block")
    conn = await connect(port)
    try:
        await conn.execute(ASYNC_LEDGER, f"{prefix}-{keys[0]}", 0)
        state = await in_block(conn, lambda conn: conn.executemany(
            ASYNC_LEDGER, [(f"{prefix}-{k}", 1) for k in keys[1:]]))
    finally:
        await conn.close()
    return state, count("ledger", "ref", prefix)


async def asyncpg_large_executemany(port):
    """executemany of 20000 rows over 5000 keys: one batch far larger than
    the socket buffers, so the proxy relays it while the server answers."""
    prefix = fresh("apg-large")
    conn = await connect(port)
    try:
        state = await attempt(conn.executemany(
            ASYNC_EVENT, [(f"{prefix}-{i * 7919 % 5000}", "x" * 100) for i in range(20000)]))
    finally:
        await conn.close()
    return state, count("webhook_events", "idempotency_key", prefix)


async def asyncpg_cursor(port):
    """A cursor inside a transaction: a portal fetched 50 rows per Execute."""
    conn = await connect(port)
    try:
        async with conn.transaction():
            total = rows = 0
            async for record in conn.cursor("SELECT g FROM generate_series(1, 1234) g",
                                            prefetch=50):
                rows += 1
                total += record["g"]
        return rows, total
    finally:
        await conn.close()


async def asyncpg_serializable(port):
    """A retry inside a SERIALIZABLE transaction: the rewritten INSERT
    skips the row committed before the transaction began."""
    key = fresh("apg-serializable")
    conn = await connect(port)
    try:
        await conn.execute(ASYNC_EVENT, key, "first")
        tag = await in_block(conn, lambda conn: conn.execute(ASYNC_EVENT, key, "retry"),
                             isolation="serializable")
        return tag, count("webhook_events", "idempotency_key", key)
    finally:
        await conn.close()


async def asyncpg_transaction(port):
    """A duplicate into a table only error translation covers, inside
    conn.transaction(), then another row: both commit."""
    prefix = fresh("apg-txn")
    conn = await connect(port)
    try:
        await conn.execute(ASYNC_LEDGER, prefix + "-a", 1)

        async def duplicate_then_more(conn):
            tag = await conn.execute(ASYNC_LEDGER, prefix + "-a", 2)
            await conn.execute(ASYNC_LEDGER, prefix + "-b", 3)
            return tag
        tag = await in_block(conn, duplicate_then_more)
    finally:
        await conn.close()
    return tag, count("ledger", "ref", prefix)


async def asyncpg_cancel(port):
    """A statement timeout on the client's side: asyncpg sends a cancel
    request on a connection of its own; the session lives on."""
    conn = await connect(port)
    try:
        try:
            await conn.execute("SELECT pg_sleep(10)", timeout=0.3)
            outcome = "not cancelled"
        except asyncio.TimeoutError:
            outcome = "timeout"
        return outcome, await conn.fetchval("SELECT 41 + 1")
    finally:
        await conn.close()


async def asyncpg_notify(port):
    """LISTEN through the proxy, NOTIFY from another session."""
    channel = "drivers_" + uuid.uuid4().hex[:8]
    got = asyncio.get_running_loop().create_future()
    listener = await connect(port)
    talker = await connect(port)
    try:
        await listener.add_listener(channel, lambda c, pid, ch, payload: got.done()
                                    or got.set_result(payload))
        await talker.execute(f"NOTIFY {channel}, 'hello'")
        return await asyncio.wait_for(got, 5)
    finally:
        await talker.close()
        await listener.close()


async def asyncpg_copy(port):
    """Binary COPY of records into a registered table, and out again."""
    prefix = fresh("apg-copy")
    conn = await connect(port)
    try:
        tag = await conn.copy_records_to_table(
            "webhook_events", columns=["idempotency_key", "payload"],
            records=[(f"{prefix}-{i}", "copied") for i in range(500)])
        out = io.BytesIO()
        await conn.copy_from_query(
            "SELECT idempotency_key FROM webhook_events WHERE idempotency_key LIKE $1",
            prefix + "%", output=out)
    finally:
        await conn.close()
    return tag, count("webhook_events", "idempotency_key", prefix), out.getvalue().count(b"\n")


def run(fn, port):
    result = fn(port)
    return asyncio.run(result) if asyncio.iscoroutine(result) else result


def compare(name, fn, direct_expected, proxy_expected):
    """fn straight and through the proxy against what each must give."""
    direct = run(fn, DIRECT_PORT)
    check(f"{name} (direct)", direct == direct_expected,
          f"PostgreSQL gave {direct!r}, expected {direct_expected!r}")
    proxied = run(fn, PROXY_PORT)
    check(f"{name} (proxy)", proxied == proxy_expected,
          f"gave {proxied!r}, expected {proxy_expected!r}")
    return direct, proxied


def same(name, fn):
    """fn must give through the proxy what it gives straight."""
    direct = run(fn, DIRECT_PORT)
    proxied = run(fn, PROXY_PORT)
    check(name, direct == proxied, f"PostgreSQL gave {direct!r}, the proxy {proxied!r}")
    return direct


def returning_retried(name, fn):
    """fn gives the ids of one key's INSERT ... RETURNING id, retried:
    straight the retries fail, through the proxy each gives the first
    row's id."""
    direct, proxied = run(fn, DIRECT_PORT), run(fn, PROXY_PORT)
    check(f"{name} (direct)", all(d == "23505" for d in direct[1:]),
          f"PostgreSQL gave {direct!r}")
    check(f"{name} (proxy)",
          isinstance(proxied[0], int) and proxied == [proxied[0]] * len(proxied),
          f"gave {proxied!r}, expected one id each time")


def main():
    compare("psql: a script in one block with ON_ERROR_ROLLBACK", psql_script,
            (0, ["23505"], 4), (0, [], 4))
    compare("psycopg2: retries in blocks, and RETURNING autocommitted", psycopg2_retry,
            ([1, "23505", 1, "23505", "25P02", ["23505", "23505"]], 1),
            ([1, 0, 1, 0, 1, "same id"], 2))
    compare("psycopg2: retries around DISCARD ALL and DEALLOCATE ALL", psycopg2_discard,
            [1, "23505", "23505", "23505"], [1, 0, 0, 0])
    compare("psycopg2: execute_values with duplicates", psycopg2_execute_values,
            ("23505", 1), (2, 3))
    compare("psycopg: an autocommitted retry", psycopg_retry,
            (1, "23505", "first"), (1, 0, "first"))
    returning_retried("psycopg: INSERT ... RETURNING retried", psycopg_returning)
    compare("psycopg: prepared after five executions", psycopg_prepared,
            ([1, 1, 1] + ["23505"] * 6, 1, 3), ([1, 1, 1] + [0] * 6, 1, 3))
    compare("psycopg: executemany with duplicates", psycopg_executemany,
            ("23505", 0), (None, 3))
    compare("psycopg: a pipeline", psycopg_pipeline, ("23505", 0), ("behind", 1))
    compare("psycopg: a pipeline that opens a block, a duplicate last",
            lambda port: psycopg_pipeline_in_block(port, True), ("23505", 1), ([1, 0], 2))
    same("psycopg: a pipeline that opens a block, a duplicate first",
         lambda port: psycopg_pipeline_in_block(port, False))
    compare("psycopg: a duplicate inside a transaction block", psycopg_transaction,
            ("23505", 1), (0, 2))
    same("psycopg: a duplicate into an unregistered table rolls the block back",
         psycopg_rollback_kept)
    check("psycopg: ... with 23505 and a failed block",
          psycopg_rollback_kept(PROXY_PORT) == ("23505", "INERROR", 0), "see above")
    compare("psycopg: a duplicate in a nested transaction", psycopg_nested,
            ("23505", 2), (0, 2))
    same("psycopg: COPY in, and a duplicate in COPY", psycopg_copy)
    compare("psycopg: executemany in a block, a duplicate last",
            lambda port: psycopg_executemany_in_block(port, (1, 2, 3, 1)),
            ("23505", 1), (None, 3))
    same("psycopg: executemany in a block, a duplicate in the middle",
         lambda port: psycopg_executemany_in_block(port, (1, 2, 1, 3)))

    compare("asyncpg: an execute() retried", asyncpg_retry,
            ["INSERT 0 1", "23505"], ["INSERT 0 1", "INSERT 0 0"])
    returning_retried("asyncpg: INSERT ... RETURNING retried", asyncpg_returning)
    compare("asyncpg: statement_cache_size=0", asyncpg_uncached,
            ["INSERT 0 1", "23505", False], ["INSERT 0 1", "INSERT 0 0", True])
    compare("asyncpg: a pool, released and acquired between retries", asyncpg_pool,
            ["INSERT 0 1"] + ["23505"] * 3, ["INSERT 0 1"] + ["INSERT 0 0"] * 3)
    compare("asyncpg: executemany with duplicates", asyncpg_executemany,
            ("23505", 0), (None, 3))
    compare("asyncpg: executemany of 20000 rows over 5000 keys", asyncpg_large_executemany,
            ("23505", 0), (None, 5000))
    compare("asyncpg: executemany in a block, a duplicate last",
            lambda port: asyncpg_executemany_in_block(port, (1, 2, 3, 1)),
            ("23505", 1), (None, 3))
    same("asyncpg: executemany in a block, a duplicate in the middle",
         lambda port: asyncpg_executemany_in_block(port, (1, 2, 1, 3)))
    same("asyncpg: a cursor fetched 50 rows at a time", asyncpg_cursor)
    compare("asyncpg: a retry in a SERIALIZABLE transaction", asyncpg_serializable,
            ("23505", 1), ("INSERT 0 0", 1))
    compare("asyncpg: a duplicate inside a transaction block", asyncpg_transaction,
            ("23505", 1), ("INSERT 0 0", 2))
    compare("asyncpg: a cancelled statement", asyncpg_cancel,
            ("timeout", 42), ("timeout", 42))
    compare("asyncpg: LISTEN and NOTIFY", asyncpg_notify, "hello", "hello")
    compare("asyncpg: binary COPY in, and COPY out", asyncpg_copy, ("COPY 500", 500, 500),
            ("COPY 500", 500, 500))

    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
