/*
 * What applications written with pgjdbc see through idemproxy: its
 * autocommit statements, the server-side statements it prepares from the
 * fifth execution on (S_1, S_2, ...), batches (every Bind and Execute, then
 * one Sync), transactions whose BEGIN goes in the batch of their first
 * statement, getGeneratedKeys (RETURNING *) and COPY through CopyManager.
 *
 * As drivers.py does for Python, each check runs straight against
 * PostgreSQL, where a duplicate into a registered table fails (so the
 * check can fail), and through the proxy, where it must give what the
 * application would have got had the row been skipped or found.
 *
 *     java -cp /usr/share/java/postgresql.jar Drivers.java HOST DIRECT_PORT PROXY_PORT USER DBNAME PASSWORD SSLMODE
 *
 * PASSWORD may be empty (trusted); SSLMODE is disable or require.
 *
 * Prints one line per check, `ok NAME` or `FAILED NAME: why`, and exits 1
 * when any failed.
 */
import java.io.StringReader;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;
import java.util.UUID;

import org.postgresql.PGConnection;

public class Drivers {
    static final String INSERT_EVENT =
        "INSERT INTO webhook_events (idempotency_key, payload) VALUES (?, ?)";
    static final String INSERT_LEDGER = "INSERT INTO ledger (ref, amount) VALUES (?, ?)";
    static final String INSERT_AUDIT = "INSERT INTO audit_log (k) VALUES (?)";

    static String host, user, dbname, password, sslmode;
    static int directPort, proxyPort;
    static final List<String> failures = new ArrayList<>();

    interface Check {
        Object run(int port) throws Exception;
    }

    static void check(String name, boolean ok, String why) {
        if (ok) {
            System.out.println("ok " + name);
        } else {
            System.out.println("FAILED " + name + ": " + why);
            failures.add(name);
        }
    }

    static String fresh(String prefix) {
        return prefix + "-" + UUID.randomUUID().toString().substring(0, 12);
    }

    static Connection connect(int port) throws SQLException {
        return connect(port, "");
    }

    /* options: more of pgjdbc's URL parameters, each starting with '&'. */
    static Connection connect(int port, String options) throws SQLException {
        String url = "jdbc:postgresql://" + host + ":" + port + "/" + dbname
            + "?sslmode=" + sslmode + "&user=" + user
            + (password.isEmpty() ? "" : "&password=" + password) + options;
        return DriverManager.getConnection(url);
    }

    static long count(String table, String column, String prefix) throws SQLException {
        try (Connection c = connect(directPort);
             PreparedStatement ps = c.prepareStatement(
                 "SELECT count(*) FROM " + table + " WHERE " + column + " LIKE ?")) {
            ps.setString(1, prefix + "%");
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                return rs.getLong(1);
            }
        }
    }

    /* The update count of an INSERT, or the SQLSTATE of its error. */
    static Object insert(Connection c, String sql, String key, Object value) {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            ps.setString(1, key);
            ps.setObject(2, value);
            return ps.executeUpdate();
        } catch (SQLException e) {
            return e.getSQLState();
        }
    }

    /* executeUpdate twice with one key, autocommitted; with
     * preferQueryMode=simple pgjdbc sends the values in the text. */
    static Object retry(int port, String options) throws SQLException {
        String key = fresh("jdbc-retry");
        try (Connection c = connect(port, options)) {
            return List.of(insert(c, INSERT_EVENT, key, "first"), insert(c, INSERT_EVENT, key, "retry"));
        }
    }

    /* One PreparedStatement run nine times over three keys: pgjdbc prepares
     * it on the server from the fifth execution on. */
    static Object serverPrepared(int port) throws SQLException {
        String prefix = fresh("jdbc-prepared");
        List<Object> counts = new ArrayList<>();
        try (Connection c = connect(port); PreparedStatement ps = c.prepareStatement(INSERT_EVENT)) {
            for (int i = 0; i < 9; i++) {
                ps.setString(1, prefix + "-" + (i % 3));
                ps.setString(2, "x");
                try {
                    counts.add(ps.executeUpdate());
                } catch (SQLException e) {
                    counts.add(e.getSQLState());
                }
            }
            boolean serverSide = ps.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare();
            return List.of(counts, serverSide, count("webhook_events", "idempotency_key", prefix));
        }
    }

    /* addBatch five times, two of them duplicates, autocommitted; with
     * reWriteBatchedInserts pgjdbc sends them as one INSERT of five rows. */
    static Object batch(int port, String options) throws SQLException {
        String prefix = fresh("jdbc-batch");
        try (Connection c = connect(port, options);
             PreparedStatement ps = c.prepareStatement(INSERT_EVENT)) {
            for (int k : new int[] { 1, 2, 1, 3, 2 }) {
                ps.setString(1, prefix + "-" + k);
                ps.setString(2, "x");
                ps.addBatch();
            }
            Object outcome;
            try {
                outcome = Arrays.toString(ps.executeBatch());
            } catch (BatchUpdateException e) {
                outcome = e.getSQLState();
            }
            return List.of(outcome, count("webhook_events", "idempotency_key", prefix));
        }
    }

    /* autoCommit off: a duplicate into a table only error translation
     * covers, another row, commit. With autosave=always pgjdbc puts each
     * statement under a savepoint of its own. */
    static Object transaction(int port, String options) throws SQLException {
        String prefix = fresh("jdbc-txn");
        try (Connection c = connect(port, options)) {
            insert(c, INSERT_LEDGER, prefix + "-a", 1);
            c.setAutoCommit(false);
            Object dup = insert(c, INSERT_LEDGER, prefix + "-a", 2);
            Object other = insert(c, INSERT_LEDGER, prefix + "-b", 3);
            try {
                c.commit();
            } catch (SQLException e) {
                other = e.getSQLState();
            }
            return List.of(dup, other, count("ledger", "ref", prefix));
        }
    }

    /* A batch inside a transaction into a table only error translation
     * covers, keys[0] already there: a duplicate last in the batch is
     * rolled back alone, one before its end fails it as it does directly. */
    static Object batchInBlock(int port, int... keys) throws SQLException {
        String prefix = fresh("jdbc-batch-block");
        try (Connection c = connect(port)) {
            insert(c, INSERT_LEDGER, prefix + "-" + keys[0], 0);
            c.setAutoCommit(false);
            Object outcome;
            try (PreparedStatement ps = c.prepareStatement(INSERT_LEDGER)) {
                for (int i = 1; i < keys.length; i++) {
                    ps.setString(1, prefix + "-" + keys[i]);
                    ps.setInt(2, 1);
                    ps.addBatch();
                }
                outcome = Arrays.toString(ps.executeBatch());
                c.commit();
            } catch (BatchUpdateException e) {
                outcome = e.getSQLState();
                c.rollback();
            }
            return List.of(outcome, count("ledger", "ref", prefix));
        }
    }

    /* A duplicate into a table the proxy was not told about, autoCommit off:
     * the error and the rollback of the block are the server's. */
    static Object rollbackKept(int port) throws SQLException {
        String prefix = fresh("jdbc-rollback");
        try (Connection c = connect(port)) {
            try (PreparedStatement ps = c.prepareStatement(INSERT_AUDIT)) {
                ps.setString(1, prefix + "-a");
                ps.executeUpdate();
            }
            c.setAutoCommit(false);
            insert(c, INSERT_EVENT, prefix + "-event", "x");
            Object dup;
            try (PreparedStatement ps = c.prepareStatement(INSERT_AUDIT)) {
                ps.setString(1, prefix + "-a");
                dup = ps.executeUpdate();
            } catch (SQLException e) {
                dup = e.getSQLState();
            }
            Object next;
            try (Statement st = c.createStatement()) {
                st.execute("SELECT 1");
                next = "ran";
            } catch (SQLException e) {
                next = e.getSQLState();
            }
            c.rollback();
            return List.of(dup, next, count("webhook_events", "idempotency_key", prefix));
        }
    }

    /* getGeneratedKeys, twice with one key: pgjdbc appends RETURNING *. */
    static Object generatedKeys(int port) throws SQLException {
        String key = fresh("jdbc-keys");
        List<Object> ids = new ArrayList<>();
        try (Connection c = connect(port)) {
            for (int i = 0; i < 2; i++) {
                try (PreparedStatement ps = c.prepareStatement(INSERT_EVENT, Statement.RETURN_GENERATED_KEYS)) {
                    ps.setString(1, key);
                    ps.setString(2, "x");
                    ps.executeUpdate();
                    try (ResultSet rs = ps.getGeneratedKeys()) {
                        ids.add(rs.next() ? (Object)rs.getLong("id") : "no row");
                    }
                } catch (SQLException e) {
                    ids.add(e.getSQLState());
                }
            }
        }
        return ids;
    }

    /* A savepoint of the application's around a duplicate into a table
     * only error translation covers, autoCommit off: rolled back to it on
     * an error, the block goes on and commits. */
    static Object ownSavepoint(int port) throws SQLException {
        String prefix = fresh("jdbc-savepoint");
        try (Connection c = connect(port)) {
            insert(c, INSERT_LEDGER, prefix + "-a", 1);
            c.setAutoCommit(false);
            insert(c, INSERT_LEDGER, prefix + "-b", 2);
            java.sql.Savepoint sp = c.setSavepoint("before_dup");
            Object dup = insert(c, INSERT_LEDGER, prefix + "-a", 3);
            if (!(dup instanceof Integer))
                c.rollback(sp);
            else
                c.releaseSavepoint(sp);
            Object after = insert(c, INSERT_LEDGER, prefix + "-c", 4);
            c.commit();
            return List.of(dup, after, count("ledger", "ref", prefix));
        }
    }

    /* executeBatch with getGeneratedKeys: every row's id, the duplicates'
     * the ids of the rows already there. */
    static Object batchKeys(int port) throws SQLException {
        String prefix = fresh("jdbc-batch-keys");
        try (Connection c = connect(port);
             PreparedStatement ps = c.prepareStatement(INSERT_EVENT, new String[] { "id" })) {
            for (int k : new int[] { 1, 2, 1 }) {
                ps.setString(1, prefix + "-" + k);
                ps.setString(2, "x");
                ps.addBatch();
            }
            try {
                ps.executeBatch();
            } catch (BatchUpdateException e) {
                return e.getSQLState();
            }
            List<Long> ids = new ArrayList<>();
            try (ResultSet rs = ps.getGeneratedKeys()) {
                while (rs.next())
                    ids.add(rs.getLong(1));
            }
            return ids.size() == 3 && ids.get(0).equals(ids.get(2)) && !ids.get(0).equals(ids.get(1))
                ? "first and third the same row" : ids.toString();
        }
    }

    /* setFetchSize with autoCommit off: pgjdbc runs the query as a portal
     * and fetches it 100 rows per Execute. */
    static Object fetchSize(int port) throws SQLException {
        try (Connection c = connect(port)) {
            c.setAutoCommit(false);
            long rows = 0, sum = 0;
            try (PreparedStatement ps = c.prepareStatement("SELECT g FROM generate_series(1, 2500) g")) {
                ps.setFetchSize(100);
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        rows++;
                        sum += rs.getLong(1);
                    }
                }
            }
            c.commit();
            return List.of(rows, sum);
        }
    }

    /* currentSchema: the session's search_path given at login, as pgjdbc
     * sends it. With the tenant's schema first the name leads to its
     * table, which the proxy leaves alone (its duplicates are rows); with
     * public first the registered table's retry is skipped. */
    static Object currentSchema(int port) throws SQLException {
        String key = fresh("jdbc-schema");
        List<Object> counts = new ArrayList<>();
        for (String path : new String[] { "tenant,public", "public,tenant" }) {
            try (Connection c = connect(port, "&currentSchema=" + path)) {
                counts.add(insert(c, INSERT_EVENT, key, "x"));
                counts.add(insert(c, INSERT_EVENT, key, "x"));
            }
        }
        try (Connection c = connect(directPort);
             PreparedStatement ps = c.prepareStatement(
                 "SELECT count(*) FROM tenant.webhook_events WHERE idempotency_key = ?")) {
            ps.setString(1, key);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                counts.add(rs.getLong(1));
            }
        }
        return counts;
    }

    /* LargeObjectManager, which speaks the protocol's FunctionCall: a
     * large object written and read back in a transaction. */
    static Object largeObject(int port) throws SQLException {
        byte[] data = new byte[300000];
        for (int i = 0; i < data.length; i++)
            data[i] = (byte)(i * 31);
        try (Connection c = connect(port)) {
            c.setAutoCommit(false);
            org.postgresql.largeobject.LargeObjectManager lom =
                c.unwrap(PGConnection.class).getLargeObjectAPI();
            long oid = lom.createLO();
            org.postgresql.largeobject.LargeObject lo =
                lom.open(oid, org.postgresql.largeobject.LargeObjectManager.WRITE);
            lo.write(data);
            lo.close();
            lo = lom.open(oid, org.postgresql.largeobject.LargeObjectManager.READ);
            byte[] back = lo.read(data.length + 10);
            lo.close();
            lom.delete(oid);
            c.commit();
            return Arrays.equals(data, back) ? "read back" : "differs: " + back.length + " bytes";
        }
    }

    /* CopyManager: text COPY of 1000 rows. */
    static Object copy(int port) throws Exception {
        String prefix = fresh("jdbc-copy");
        StringBuilder rows = new StringBuilder();
        for (int i = 0; i < 1000; i++)
            rows.append(prefix).append('-').append(i).append("\tcopied\n");
        try (Connection c = connect(port)) {
            long n = c.unwrap(PGConnection.class).getCopyAPI().copyIn(
                "COPY webhook_events (idempotency_key, payload) FROM STDIN",
                new StringReader(rows.toString()));
            return List.of(n, count("webhook_events", "idempotency_key", prefix));
        }
    }

    static void compare(String name, Check fn, Object directExpected, Object proxyExpected)
        throws Exception {
        Object direct = fn.run(directPort);
        check(name + " (direct)", Objects.equals(direct, directExpected),
              "PostgreSQL gave " + direct + ", expected " + directExpected);
        Object proxied = fn.run(proxyPort);
        check(name + " (proxy)", Objects.equals(proxied, proxyExpected),
              "gave " + proxied + ", expected " + proxyExpected);
    }

    public static void main(String[] args) throws Exception {
        host = args[0];
        directPort = Integer.parseInt(args[1]);
        proxyPort = Integer.parseInt(args[2]);
        user = args[3];
        dbname = args[4];
        password = args[5];
        sslmode = args[6];

        compare("pgjdbc: an autocommitted retry", port -> retry(port, ""),
                List.of(1, "23505"), List.of(1, 0));
        compare("pgjdbc: an autocommitted retry, preferQueryMode=simple",
                port -> retry(port, "&preferQueryMode=simple"), List.of(1, "23505"), List.of(1, 0));
        compare("pgjdbc: prepared on the server after five executions", Drivers::serverPrepared,
                List.of(List.of(1, 1, 1, "23505", "23505", "23505", "23505", "23505", "23505"), true, 3L),
                List.of(List.of(1, 1, 1, 0, 0, 0, 0, 0, 0), true, 3L));
        compare("pgjdbc: a batch with duplicates", port -> batch(port, ""),
                List.of("23505", 0L), List.of("[1, 1, 0, 1, 0]", 3L));
        compare("pgjdbc: a batch with duplicates, reWriteBatchedInserts",
                port -> batch(port, "&reWriteBatchedInserts=true"),
                List.of("23505", 0L), List.of("[-2, -2, -2, -2, 0]", 3L));
        compare("pgjdbc: a duplicate inside a transaction", port -> transaction(port, ""),
                List.of("23505", "25P02", 1L), List.of(0, 1, 2L));
        compare("pgjdbc: a duplicate inside a transaction, autosave=always",
                port -> transaction(port, "&autosave=always"),
                List.of("23505", 1, 2L), List.of(0, 1, 2L));
        compare("pgjdbc: a batch in a transaction, a duplicate last",
                port -> batchInBlock(port, 1, 2, 3, 1),
                List.of("23505", 1L), List.of("[1, 1, 0]", 3L));
        compare("pgjdbc: a batch in a transaction, a duplicate before its end",
                port -> batchInBlock(port, 1, 2, 1, 3),
                List.of("23505", 1L), List.of("23505", 1L));
        compare("pgjdbc: a duplicate into an unregistered table rolls the block back",
                Drivers::rollbackKept, List.of("23505", "25P02", 0L), List.of("23505", "25P02", 0L));

        Object direct = generatedKeys(directPort), proxied = generatedKeys(proxyPort);
        check("pgjdbc: getGeneratedKeys retried (direct)",
              direct instanceof List && ((List<?>)direct).get(1).equals("23505"),
              "PostgreSQL gave " + direct);
        check("pgjdbc: getGeneratedKeys retried (proxy)",
              proxied instanceof List && ((List<?>)proxied).get(0) instanceof Long
                  && ((List<?>)proxied).get(0).equals(((List<?>)proxied).get(1)),
              "gave " + proxied + ", expected one id twice");

        compare("pgjdbc: a savepoint of the application's around a duplicate",
                Drivers::ownSavepoint, List.of("23505", 1, 3L), List.of(0, 1, 3L));
        compare("pgjdbc: a batch with getGeneratedKeys", Drivers::batchKeys,
                "23505", "first and third the same row");
        compare("pgjdbc: setFetchSize", Drivers::fetchSize, List.of(2500L, 3126250L),
                List.of(2500L, 3126250L));
        compare("pgjdbc: currentSchema", Drivers::currentSchema,
                List.of(1, 1, 1, "23505", 2L), List.of(1, 1, 1, 0, 2L));
        compare("pgjdbc: a large object", Drivers::largeObject, "read back", "read back");
        compare("pgjdbc: CopyManager", Drivers::copy, List.of(1000L, 1000L), List.of(1000L, 1000L));

        System.out.println(failures.isEmpty() ? "all passed" : failures.size() + " failed");
        System.exit(failures.isEmpty() ? 0 : 1);
    }
}
