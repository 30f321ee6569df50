-- The tables of the driver checks (drivers.py, Drivers.java, drivers.php).

-- Registered: the rewrite covers its key.
CREATE TABLE webhook_events (
    id bigserial PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    payload text NOT NULL
);

-- Registered with action = none: only error translation covers it.
CREATE TABLE ledger (
    id bigserial PRIMARY KEY,
    ref text NOT NULL,
    amount int NOT NULL,
    CONSTRAINT ledger_ref_key UNIQUE (ref) DEFERRABLE INITIALLY IMMEDIATE
);

-- Not registered: its duplicates stay errors.
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    k text NOT NULL UNIQUE
);

-- A tenant's schema with its own table of the registered one's name: a
-- session whose search_path puts it first is left alone.
CREATE SCHEMA tenant;
CREATE TABLE tenant.webhook_events (
    id bigserial PRIMARY KEY,
    idempotency_key text NOT NULL,
    payload text NOT NULL
);
