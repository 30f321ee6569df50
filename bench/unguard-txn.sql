\set k1 random(1, 1000000000000)
\set k2 :k1 + 1
\set k3 :k1 + 2
BEGIN;
INSERT INTO bench_unguarded (k, payload) VALUES (:k1, 'a');
INSERT INTO bench_unguarded (k, payload) VALUES (:k2, 'b');
INSERT INTO bench_unguarded (k, payload) VALUES (:k3, 'c');
END;
