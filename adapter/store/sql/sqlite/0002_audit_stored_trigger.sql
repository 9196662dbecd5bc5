-- 0002: a stored envelope audits itself. The append becomes one INSERT ... RETURNING (the MLLP ACK
-- path): the audit row of its arrival is written by this trigger in the same statement, not by a
-- second round trip from Python. Event 'stored' for a queued envelope, else its state ('rejected',
-- 'quarantined'); detail {"content_hash", "reason"} as the store wrote it before.

CREATE TRIGGER envelopes_audit_stored AFTER INSERT ON envelopes
BEGIN
    INSERT INTO audit (envelope_id, at, event, detail)
    VALUES (NEW.id, NEW.created_at, CASE NEW.state WHEN 'queued' THEN 'stored' ELSE NEW.state END,
            CASE WHEN NEW.reason IS NULL OR NEW.reason = ''
                 THEN json_object('content_hash', NEW.content_hash)
                 ELSE json_object('content_hash', NEW.content_hash, 'reason', NEW.reason) END);
END;
