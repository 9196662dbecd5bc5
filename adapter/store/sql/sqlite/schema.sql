-- The SQLite store's final schema: what a fresh database is created from.
-- Every numbered migration applied in order must yield exactly this (tests/integration/test_store_sqlite.py).
-- Timestamps are UTC text 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (fixed width, so text order is time order).

CREATE TABLE schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL
);

CREATE TABLE envelopes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,      -- AUTOINCREMENT: an id is never reused, even after a purge
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    dedup_key TEXT NOT NULL UNIQUE,            -- one logical delivery, one row
    payload BLOB,                              -- NULL once purged by retention
    content_hash TEXT NOT NULL,
    received_at TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'claimed', 'done', 'dead', 'rejected', 'quarantined',
                                         'dropped')),
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    not_before TEXT,                           -- durable retry: not claimable before this time
    lease_owner TEXT,
    lease_until TEXT,
    reason TEXT,
    meta TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(meta)),
    mapping_version TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    -- 1 on the earliest envelope of its ordering key that is queued, claimed or dead: the only one
    -- a claim may look at. Kept by the store on every state change, so a claim reads one row per key.
    head INTEGER CHECK (head = 1),
    CHECK ((state = 'claimed') = (lease_owner IS NOT NULL AND lease_until IS NOT NULL)),
    CHECK (head IS NULL OR state IN ('queued', 'claimed', 'dead'))
);

-- At most one claimed envelope per ordering key: two workers can never apply one patient's changes at once.
CREATE UNIQUE INDEX envelopes_one_claimed_per_key ON envelopes (ordering_key) WHERE state = 'claimed';
-- At most one head per ordering key.
CREATE UNIQUE INDEX envelopes_one_head_per_key ON envelopes (ordering_key) WHERE head = 1;
-- Finding a key's next head: the earliest envelope still blocking the key.
CREATE INDEX envelopes_blocking ON envelopes (ordering_key, id) WHERE state IN ('queued', 'claimed', 'dead');
-- Claim: heads waiting in arrival order; expired leases by expiry.
CREATE INDEX envelopes_ready ON envelopes (id) WHERE head = 1 AND state = 'queued';
CREATE INDEX envelopes_leases ON envelopes (lease_until) WHERE state = 'claimed';
-- Stats and listings.
CREATE INDEX envelopes_source_kind_state ON envelopes (source, kind, state);
CREATE INDEX envelopes_state_received ON envelopes (state, received_at);
-- Retention: rows whose payload may be purged.
CREATE INDEX envelopes_purgeable ON envelopes (updated_at)
    WHERE payload IS NOT NULL AND state IN ('done', 'dropped', 'rejected');

CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    envelope_id INTEGER NOT NULL REFERENCES envelopes (id),
    at TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail))
);
CREATE INDEX audit_envelope ON audit (envelope_id, id);
-- The audit is append-only: the schema refuses to change or remove a row.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit table is append-only');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit table is append-only');
END;
-- A stored envelope audits itself (0002): its arrival is one INSERT on the ACK path.
CREATE TRIGGER envelopes_audit_stored AFTER INSERT ON envelopes
BEGIN
    INSERT INTO audit (envelope_id, at, event, detail)
    VALUES (NEW.id, NEW.created_at, CASE NEW.state WHEN 'queued' THEN 'stored' ELSE NEW.state END,
            CASE WHEN NEW.reason IS NULL OR NEW.reason = ''
                 THEN json_object('content_hash', NEW.content_hash)
                 ELSE json_object('content_hash', NEW.content_hash, 'reason', NEW.reason) END);
END;

CREATE TABLE crosswalk (
    namespace TEXT NOT NULL,
    source_id TEXT NOT NULL,
    target TEXT NOT NULL,
    written_at TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail)),
    PRIMARY KEY (namespace, source_id)
) WITHOUT ROWID;
CREATE INDEX crosswalk_target ON crosswalk (namespace, target);

CREATE TABLE kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
) WITHOUT ROWID;
