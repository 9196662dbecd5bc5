"""Named SQL for the PostgreSQL store: what `postgres.py` runs, in one place.

Tables are unqualified: every pooled connection has its search_path set to the configured schema.
Timestamps are always parameters (`%(now)s`), never the database's now(): one clock per decision,
so a test or a caller passing `now=` moves time for the whole statement (see `postgres.py`).
"""

from __future__ import annotations

__all__ = [
    "APPEND",
    "BLOCKING",
    "CLAIM",
    "COLUMNS",
    "COMPLETE",
    "DEAD_LETTER",
    "DROP",
    "EXTEND_LEASE",
    "GET",
    "GET_BY_DEDUP_KEY",
    "HEAD_CLEAR",
    "HEAD_SET",
    "HISTORY",
    "INSERT_AUDIT",
    "KV_GET",
    "KV_PUT",
    "LOCK_KEYS",
    "LOCK_KEY_OF",
    "PRUNE",
    "RELEASE",
    "RENAME_DEDUP_KEY",
    "REQUEUE",
    "RETRY_AT",
    "STATS_BY_SOURCE_KIND_STATE",
    "STATS_SCALARS",
    "STATS_SIZE",
    "XREF_BY_TARGET",
    "XREF_DELETE",
    "XREF_GET",
    "XREF_LIST",
    "XREF_LIST_PREFIX",
    "XREF_PUT",
]

COLUMNS = ("id, source, kind, ordering_key, dedup_key, payload, content_hash, received_at, state, "
           "attempts, not_before, lease_owner, lease_until, reason, meta, mapping_version, updated_at")

BLOCKING = "('queued', 'claimed', 'dead')"   # states that block later envelopes of their key

# Serialises changes to the heads of these ordering keys (appends, and transitions that move a
# head). Locks are taken in hash order, so two transactions never wait on each other in a cycle.
LOCK_KEYS = """
SELECT pg_advisory_xact_lock(h) FROM (
    SELECT DISTINCT hashtextextended(current_schema() || '|' || k, 0) AS h
    FROM unnest(%(keys)s::text[]) AS k ORDER BY h OFFSET 0
) AS sorted
"""
# The same lock, for the key of envelope %(id)s (a transition takes it before it changes the row).
LOCK_KEY_OF = """
SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || '|' || ordering_key, 0))
FROM envelopes WHERE id = %(id)s
"""
_KEY_OF = "(SELECT ordering_key FROM envelopes WHERE id = %(id)s)"
_HEAD_OF_KEY = f"SELECT min(id) FROM envelopes WHERE ordering_key = {_KEY_OF} AND state IN {BLOCKING}"
# Fix the head of envelope %(id)s's key, under its lock. Two statements, clear then set, because
# the one-head-per-key index is checked row by row.
HEAD_CLEAR = f"""
UPDATE envelopes SET head = NULL
WHERE ordering_key = {_KEY_OF} AND head AND id IS DISTINCT FROM ({_HEAD_OF_KEY})
"""
HEAD_SET = f"UPDATE envelopes SET head = true WHERE id = ({_HEAD_OF_KEY}) AND head IS NULL"

# Insert unless the dedup key exists (then nothing comes back and the caller looks at the first one).
# The audit row is written by the same statement: one round trip per envelope.
APPEND = f"""
WITH ins AS (
    INSERT INTO envelopes (source, kind, ordering_key, dedup_key, payload, content_hash, received_at,
                           state, reason, meta, updated_at, head)
    VALUES (%(source)s, %(kind)s, %(ordering_key)s, %(dedup_key)s, %(payload)s, %(content_hash)s,
            %(received_at)s, %(state)s, %(reason)s, %(meta)s, %(now)s,
            -- a queued envelope heads its key when nothing else blocks it (the key is locked)
            CASE WHEN %(state)s = 'queued' AND NOT EXISTS (
                SELECT 1 FROM envelopes b WHERE b.ordering_key = %(ordering_key)s AND b.state IN {BLOCKING})
            THEN true END)
    ON CONFLICT (dedup_key) DO NOTHING
    RETURNING {COLUMNS}
), aud AS (
    INSERT INTO audit (envelope_id, at, event, detail)
    SELECT id, %(now)s, %(event)s, %(detail)s FROM ins
)
SELECT {COLUMNS} FROM ins
"""

GET = f"SELECT {COLUMNS} FROM envelopes WHERE id = %(id)s"
GET_BY_DEDUP_KEY = f"SELECT {COLUMNS} FROM envelopes WHERE dedup_key = %(dedup_key)s"

# A delivery outside the dedup window frees its key: the old row keeps a derived, unique key.
RENAME_DEDUP_KEY = "UPDATE envelopes SET dedup_key = %(new_key)s, updated_at = %(now)s WHERE id = %(id)s"

# Claimable: a head that is QUEUED and due, when no other envelope of its key is CLAIMED (an
# operator requeue can put a head before a claim), and any claim whose lease has expired (its
# worker died). Rows locked by a concurrent claim are skipped. The partial unique index (one
# CLAIMED per key) catches whatever a stale snapshot lets through (see postgres.py).
CLAIM = f"""
WITH ready AS (
    SELECT e.id, e.state AS old_state, e.lease_owner AS old_owner, e.lease_until AS old_until
    FROM envelopes e
    WHERE e.head AND e.state = 'queued' AND (e.not_before IS NULL OR e.not_before <= %(now)s)
      AND NOT EXISTS (SELECT 1 FROM envelopes c WHERE c.ordering_key = e.ordering_key AND c.state = 'claimed')
    ORDER BY e.id
    LIMIT %(limit)s
    FOR UPDATE OF e SKIP LOCKED
), expired AS (
    SELECT e.id, e.state AS old_state, e.lease_owner AS old_owner, e.lease_until AS old_until
    FROM envelopes e
    WHERE e.state = 'claimed' AND e.lease_until < %(now)s
    ORDER BY e.lease_until
    LIMIT %(limit)s
    FOR UPDATE OF e SKIP LOCKED
), picked AS (
    SELECT * FROM ready UNION ALL SELECT * FROM expired
    ORDER BY id
    LIMIT %(limit)s
), claimed AS (
    UPDATE envelopes e
    SET state = 'claimed', lease_owner = %(owner)s, lease_until = %(until)s, updated_at = %(now)s
    FROM picked WHERE e.id = picked.id
    RETURNING e.*, picked.old_state, picked.old_owner, picked.old_until
), aud AS (
    INSERT INTO audit (envelope_id, at, event, detail)
    SELECT c.id, %(now)s, v.event, v.detail
    FROM claimed c
    CROSS JOIN LATERAL (VALUES
        (1, 'lease_expired', jsonb_build_object('previous_owner', c.old_owner, 'lease_until', c.old_until)),
        (2, 'claimed', jsonb_build_object('owner', %(owner)s::text, 'lease_until', %(until)s::timestamptz))
    ) AS v(ord, event, detail)
    WHERE v.event = 'claimed' OR c.old_state = 'claimed'
    ORDER BY c.id, v.ord
)
SELECT {COLUMNS}, old_state, old_owner FROM claimed ORDER BY id
"""

_OWNED = "id = %(id)s AND state = 'claimed' AND lease_owner = %(owner)s"


def _audited(update: str) -> str:
    """An UPDATE and the audit row (%(event)s, %(detail)s) of the row it changed, in one statement."""
    return f"""
WITH moved AS ({update} RETURNING id), aud AS (
    INSERT INTO audit (envelope_id, at, event, detail) SELECT id, %(now)s, %(event)s, %(detail)s FROM moved
)
SELECT id FROM moved
"""


EXTEND_LEASE = f"UPDATE envelopes SET lease_until = %(until)s, updated_at = %(now)s WHERE {_OWNED}"

# COMPLETE, DROP and REQUEUE move their key's head: the caller fixes it (LOCK_KEY_OF, HEAD_*).
COMPLETE = _audited(f"""
UPDATE envelopes SET state = 'done', head = NULL, lease_owner = NULL, lease_until = NULL, not_before = NULL,
    reason = NULL, mapping_version = %(mapping_version)s, updated_at = %(now)s
WHERE {_OWNED}""")

RETRY_AT = f"""
WITH moved AS (
    UPDATE envelopes SET state = 'queued', lease_owner = NULL, lease_until = NULL, not_before = %(at)s,
        attempts = attempts + 1, reason = %(reason)s, updated_at = %(now)s
    WHERE {_OWNED}
    RETURNING id, attempts
)
INSERT INTO audit (envelope_id, at, event, detail)
SELECT id, %(now)s, 'retry_scheduled', jsonb_build_object('owner', %(owner)s::text, 'at', %(at)s::timestamptz,
                                                         'reason', %(reason)s::text, 'attempts', attempts)
FROM moved
"""

DEAD_LETTER = _audited(f"""
UPDATE envelopes SET state = 'dead', lease_owner = NULL, lease_until = NULL, not_before = NULL,
    reason = %(reason)s, updated_at = %(now)s
WHERE {_OWNED}""")

RELEASE = _audited(f"""
UPDATE envelopes SET state = 'queued', lease_owner = NULL, lease_until = NULL, updated_at = %(now)s
WHERE {_OWNED}""")

REQUEUE = _audited("""
UPDATE envelopes SET state = 'queued', attempts = 0, not_before = NULL, reason = NULL, updated_at = %(now)s
WHERE id = %(id)s AND state IN ('dead', 'quarantined')""")

# An operator may drop anything waiting, dead or quarantined, and a claim whose lease has lapsed
# (its worker died). A live claim is being applied right now: dropping it would let the key's next
# envelope be claimed while this one is still being sent, so that drop is refused.
DROP = _audited("""
UPDATE envelopes SET state = 'dropped', head = NULL, lease_owner = NULL, lease_until = NULL,
    not_before = NULL, reason = %(reason)s, updated_at = %(now)s
WHERE id = %(id)s AND (state IN ('queued', 'dead', 'quarantined')
                       OR (state = 'claimed' AND lease_until < %(now)s))""")

INSERT_AUDIT = ("INSERT INTO audit (envelope_id, at, event, detail) "
                "VALUES (%(id)s, %(now)s, %(event)s, %(detail)s)")
HISTORY = "SELECT envelope_id, at, event, detail FROM audit WHERE envelope_id = %(id)s ORDER BY id"

_XREF = "namespace, source_id, target, written_at, detail"
XREF_GET = f"SELECT {_XREF} FROM crosswalk WHERE namespace = %(ns)s AND source_id = %(sid)s"
XREF_PUT = f"""
INSERT INTO crosswalk (namespace, source_id, target, written_at, detail)
VALUES (%(ns)s, %(sid)s, %(target)s, %(now)s, %(detail)s)
ON CONFLICT (namespace, source_id) DO UPDATE
SET target = EXCLUDED.target, written_at = EXCLUDED.written_at, detail = EXCLUDED.detail
RETURNING {_XREF}
"""
XREF_BY_TARGET = (f"SELECT {_XREF} FROM crosswalk WHERE namespace = %(ns)s AND target = %(target)s "
                  "ORDER BY source_id")
XREF_LIST = f"SELECT {_XREF} FROM crosswalk WHERE namespace = %(ns)s ORDER BY source_id"
XREF_LIST_PREFIX = (f"SELECT {_XREF} FROM crosswalk WHERE namespace = %(ns)s "
                    "AND starts_with(source_id, %(prefix)s) ORDER BY source_id")
XREF_DELETE = "DELETE FROM crosswalk WHERE namespace = %(ns)s AND source_id = %(sid)s"

KV_GET = "SELECT value FROM kv WHERE key = %(key)s"
KV_PUT = """
INSERT INTO kv (key, value, updated_at) VALUES (%(key)s, %(value)s, %(now)s)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at
"""

STATS_BY_SOURCE_KIND_STATE = "SELECT source, kind, state, count(*) FROM envelopes GROUP BY 1, 2, 3"
STATS_SCALARS = """
SELECT
    (SELECT min(received_at) FROM envelopes WHERE state = 'queued'),
    (SELECT count(*) FROM envelopes WHERE state = 'queued' AND attempts > 0),
    (SELECT count(*) FROM envelopes WHERE head AND state = 'dead')   -- keys behind a dead letter
"""
STATS_SIZE = """
SELECT COALESCE(sum(pg_total_relation_size(c.oid)), 0)::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind = 'r'
"""

PRUNE = """
WITH purged AS (
    UPDATE envelopes SET payload = NULL
    WHERE state IN ('done', 'dropped', 'rejected') AND updated_at < %(older_than)s AND payload IS NOT NULL
    RETURNING id
), aud AS (
    INSERT INTO audit (envelope_id, at, event, detail) SELECT id, %(now)s, 'purged', '{}' FROM purged
)
SELECT count(*) FROM purged
"""
