-- Consent (issue 4).
--
-- What the consent decision needs about a session, kept on the session row (written with every
-- version): the student's FHIR Patient id and the security labels its Encounter carries. Rows
-- written before this migration have neither and are never disclosed to partners until the
-- session is sent again.
ALTER TABLE sessions ADD COLUMN patient_id TEXT;
-- JSON array of "system|code" (the Encounter's meta.security).
ALTER TABLE sessions ADD COLUMN security TEXT;
CREATE INDEX sessions_patient ON sessions (patient_id);

-- Consent directives: the decision's view of every FHIR Consent (its current version), one row
-- per consent. The FHIR Consent itself, with its history, is in fhir_resources.
CREATE TABLE consent_directives (
    id          TEXT PRIMARY KEY,
    lea_id      TEXT NOT NULL,
    -- the LEA's own id of the signed form (idempotent re-submission)
    source_id   TEXT NOT NULL,
    patient_id  TEXT NOT NULL,
    version     BIGINT NOT NULL,
    status      TEXT NOT NULL,
    -- consent::model::Directive as JSON
    directive   TEXT NOT NULL,
    -- SHA-256 of the canonical submitted record: the same form sent again changes nothing
    content_sha256 TEXT NOT NULL,
    updated_us  BIGINT NOT NULL,
    UNIQUE (lea_id, source_id)
);
CREATE INDEX consent_directives_patient ON consent_directives (patient_id);
