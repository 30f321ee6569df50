<?php
/*
 * What PHP applications on PDO see through idemproxy. PDO's pgsql driver
 * prepares every statement on the server under a name of its own
 * (pdo_stmt_00000001, ...) and drops it with an SQL DEALLOCATE when the
 * statement object goes; with ATTR_EMULATE_PREPARES it puts the values in
 * the text instead. Laravel and Symfony run on it.
 *
 * As drivers.py does, each check runs straight against PostgreSQL, where a
 * duplicate into a registered table fails (so the check can fail), and
 * through the proxy, where it must give what the application would have
 * got had the row been skipped or found.
 *
 *     php drivers.php HOST DIRECT_PORT PROXY_PORT USER DBNAME PASSWORD SSLMODE
 *
 * Prints one line per check, `ok NAME` or `FAILED NAME: why`, and exits 1
 * when any failed.
 */

[, $host, $direct_port, $proxy_port, $user, $dbname, $password, $sslmode] = $argv;

const INSERT_EVENT = 'INSERT INTO webhook_events (idempotency_key, payload) VALUES (?, ?)';
const INSERT_LEDGER = 'INSERT INTO ledger (ref, amount) VALUES (?, ?)';

$failures = 0;

function check(string $name, bool $ok, string $why): void
{
    global $failures;
    if ($ok) {
        echo "ok $name\n";
    } else {
        echo "FAILED $name: $why\n";
        $failures++;
    }
}

function fresh(string $prefix): string
{
    return $prefix . '-' . bin2hex(random_bytes(6));
}

function connect(int $port, bool $emulate = false): PDO
{
    global $host, $user, $dbname, $password, $sslmode;
    return new PDO("pgsql:host=$host;port=$port;dbname=$dbname;sslmode=$sslmode", $user,
                   $password === '' ? null : $password, [
                       PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
                       PDO::ATTR_EMULATE_PREPARES => $emulate,
                   ]);
}

function count_rows(string $table, string $column, string $prefix): int
{
    global $direct_port;
    $st = connect((int)$direct_port)->prepare("SELECT count(*) FROM $table WHERE $column LIKE ?");
    $st->execute([$prefix . '%']);
    return (int)$st->fetchColumn();
}

/* The row count of an INSERT, or the SQLSTATE of its error. */
function insert(PDO $db, string $sql, array $values)
{
    try {
        $st = $db->prepare($sql);
        $st->execute($values);
        return $st->rowCount();
    } catch (PDOException $e) {
        return $e->getCode();
    }
}

/* A retry, autocommitted, with server-side statements or emulated ones;
 * then, in a transaction, a duplicate into a table only error translation
 * covers and one more row. */
function retry(int $port, bool $emulate): array
{
    $prefix = fresh($emulate ? 'php-emulated' : 'php-retry');
    $db = connect($port, $emulate);
    $outcomes = [insert($db, INSERT_EVENT, [$prefix, 'first']),
                 insert($db, INSERT_EVENT, [$prefix, 'retry']),
                 insert($db, INSERT_LEDGER, [$prefix . '-a', 1])];
    $db->beginTransaction();
    $outcomes[] = insert($db, INSERT_LEDGER, [$prefix . '-a', 2]);
    $outcomes[] = insert($db, INSERT_LEDGER, [$prefix . '-b', 3]);
    try {
        $db->commit();
    } catch (PDOException $e) {
        $outcomes[] = $e->getCode();
    }
    $outcomes[] = count_rows('ledger', 'ref', $prefix);
    return $outcomes;
}

/* lastInsertId after an INSERT ... RETURNING id, retried: the same row. */
function returning(int $port): array
{
    $key = fresh('php-returning');
    $db = connect($port);
    $ids = [];
    for ($i = 0; $i < 2; $i++) {
        try {
            $st = $db->prepare(INSERT_EVENT . ' RETURNING id');
            $st->execute([$key, 'x']);
            $ids[] = (int)$st->fetchColumn();
        } catch (PDOException $e) {
            $ids[] = $e->getCode();
        }
    }
    return $ids;
}

/* One statement object executed over keys with duplicates, then dropped
 * (PDO sends DEALLOCATE), and the same text prepared again. */
function reused(int $port): array
{
    $prefix = fresh('php-reused');
    $db = connect($port);
    $outcomes = [];
    $st = $db->prepare(INSERT_EVENT);
    foreach ([1, 2, 1, 2] as $k) {
        try {
            $st->execute(["$prefix-$k", 'x']);
            $outcomes[] = $st->rowCount();
        } catch (PDOException $e) {
            $outcomes[] = $e->getCode();
        }
    }
    $st = null;
    $outcomes[] = insert($db, INSERT_EVENT, ["$prefix-1", 'y']);
    /* The SELECT is a statement of its own while it runs. */
    $outcomes[] = (int)$db->query("SELECT count(*) FROM pg_prepared_statements")->fetchColumn();
    $outcomes[] = count_rows('webhook_events', 'idempotency_key', $prefix);
    return $outcomes;
}

function compare(string $name, callable $fn, $direct_expected, $proxy_expected): void
{
    global $direct_port, $proxy_port;
    $direct = $fn((int)$direct_port);
    check("$name (direct)", $direct === $direct_expected,
          'PostgreSQL gave ' . json_encode($direct) . ', expected ' . json_encode($direct_expected));
    $proxied = $fn((int)$proxy_port);
    check("$name (proxy)", $proxied === $proxy_expected,
          'gave ' . json_encode($proxied) . ', expected ' . json_encode($proxy_expected));
}

compare('PDO: retries, server-side statements', fn($port) => retry($port, false),
        [1, '23505', 1, '23505', '25P02', 1], [1, 0, 1, 0, 1, 2]);
compare('PDO: retries, emulated prepares', fn($port) => retry($port, true),
        [1, '23505', 1, '23505', '25P02', 1], [1, 0, 1, 0, 1, 2]);
$direct = returning((int)$direct_port);
check('PDO: INSERT ... RETURNING retried (direct)', $direct[1] === '23505',
      'PostgreSQL gave ' . json_encode($direct));
$proxied = returning((int)$proxy_port);
check('PDO: INSERT ... RETURNING retried (proxy)',
      is_int($proxied[0]) && $proxied[0] === $proxied[1],
      'gave ' . json_encode($proxied) . ', expected one id twice');
compare('PDO: a statement reused, dropped and prepared again', 'reused',
        [1, 1, '23505', '23505', '23505', 1, 2], [1, 1, 0, 0, 0, 1, 2]);

echo $failures ? "$failures failed\n" : "all passed\n";
exit($failures ? 1 : 0);
