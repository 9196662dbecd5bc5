-- The PostgreSQL store schema, as the migrations leave it (reference for DBAs and for the test
-- that checks migrations/ and this file agree). Tables are created unqualified: the store sets
-- search_path to its configured schema. Invariants live here, not in Python:
--   * dedup_key UNIQUE                    : one envelope per logical delivery
--   * envelopes_one_claim_per_key         : at most one CLAIMED envelope per ordering key
--   * audit is append-only (trigger)      : history cannot be rewritten
-- schema_migrations (the list of applied migrations) is created by the migration runner.

CREATE TABLE envelopes (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- arrival order
    source          text        NOT NULL,
    kind            text        NOT NULL,
    ordering_key    text        NOT NULL,
    dedup_key       text        NOT NULL,
    payload         bytea,                                             -- NULL once pruned
    content_hash    text        NOT NULL,
    received_at     timestamptz NOT NULL,
    state           text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    not_before      timestamptz,
    lease_owner     text,
    lease_until     timestamptz,
    reason          text,
    meta            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    mapping_version text,
    updated_at      timestamptz NOT NULL,
    -- true on the earliest queued/claimed/dead envelope of its ordering key, the only one a claim
    -- looks at; kept under a per-key advisory lock by every change that can move it (postgres.py).
    head            boolean,
    CONSTRAINT envelopes_dedup_key_key UNIQUE (dedup_key),
    CONSTRAINT envelopes_state_check CHECK (state IN
        ('queued', 'claimed', 'done', 'dead', 'rejected', 'quarantined', 'dropped')),
    CONSTRAINT envelopes_attempts_check CHECK (attempts >= 0),
    CONSTRAINT envelopes_lease_check CHECK (
        (state = 'claimed') = (lease_owner IS NOT NULL AND lease_until IS NOT NULL)),
    CONSTRAINT envelopes_head_check CHECK (head IS NULL OR (head AND state IN ('queued', 'claimed', 'dead')))
);

-- The last line of defence for per-key order across nodes.
CREATE UNIQUE INDEX envelopes_one_claim_per_key ON envelopes (ordering_key) WHERE state = 'claimed';
-- At most one head per ordering key.
CREATE UNIQUE INDEX envelopes_one_head_per_key ON envelopes (ordering_key) WHERE head;
-- claim(): waiting heads in arrival order, and expired leases; neither walks a blocked backlog.
CREATE INDEX envelopes_ready ON envelopes (id) WHERE head AND state = 'queued';
CREATE INDEX envelopes_leases ON envelopes (lease_until) WHERE state = 'claimed';
-- Finding a key's next head: its earliest envelope still blocking it.
CREATE INDEX envelopes_blocking_by_key ON envelopes (ordering_key, id)
    WHERE state IN ('queued', 'claimed', 'dead');
-- list() by state, prune() by age.
CREATE INDEX envelopes_state_updated ON envelopes (state, updated_at);

CREATE TABLE audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    envelope_id bigint      NOT NULL REFERENCES envelopes (id),
    at          timestamptz NOT NULL,
    event       text        NOT NULL,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_envelope ON audit (envelope_id, id);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit table is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

CREATE TABLE crosswalk (
    namespace  text        NOT NULL,
    source_id  text        NOT NULL,
    target     text        NOT NULL,
    written_at timestamptz NOT NULL,
    detail     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (namespace, source_id)
);
CREATE INDEX crosswalk_target ON crosswalk (namespace, target);

CREATE TABLE kv (
    key        text        PRIMARY KEY,
    value      text        NOT NULL,
    updated_at timestamptz NOT NULL
);
