\set k random(1, 1000000000000)
INSERT INTO bench_events (idempotency_key, payload) VALUES (:k, 'retry') ON CONFLICT (idempotency_key) DO NOTHING;
