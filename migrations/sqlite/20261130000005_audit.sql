-- The audit trail (issue 4): every partner disclosure and refusal, append-only and hash-chained.
-- `event` is the FHIR AuditEvent as stored (it names prev_hash in an extension); hash is the
-- SHA-256 of `event`. Rows are never updated or deleted by the gateway.
CREATE TABLE audit_events (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    recorded_us  INTEGER NOT NULL,
    client_id    TEXT NOT NULL,
    event        TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
);

-- Which students an event is about, and whether it disclosed something of theirs (the
-- accounting of disclosures reads this).
CREATE TABLE audit_event_patients (
    patient_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    disclosed   BOOLEAN NOT NULL,
    PRIMARY KEY (patient_id, seq)
);
