-- FHIR Bulk Data export jobs (issue 5). Job state lives here so that any instance can answer a
-- status request, a worker resumes an interrupted job after a restart, and with several
-- instances on one database each job is run by exactly one of them (a lease: owner +
-- lease_until_us, taken atomically and renewed while the job runs).
CREATE TABLE export_jobs (
    id                    TEXT PRIMARY KEY,
    client_id             TEXT NOT NULL,
    org_id                TEXT NOT NULL,
    purpose               TEXT NOT NULL,
    -- the kick-off URL as the client sent it (the manifest's "request")
    request               TEXT NOT NULL,
    -- export::Params as JSON: level, group, types, _since, _typeFilter, patients, gzip
    params                TEXT NOT NULL,
    -- queued | running | completed | failed | cancelled | expired
    status                TEXT NOT NULL,
    -- the manifest's transactionTime: nothing modified after it is exported
    transaction_us        BIGINT NOT NULL,
    created_us            BIGINT NOT NULL,
    started_us            BIGINT,
    completed_us          BIGINT,
    expires_us            BIGINT,
    -- when the consent state was last evaluated for the whole output
    consent_evaluated_us  BIGINT,
    -- export::Checkpoint as JSON: where an interrupted job resumes, and its counters
    checkpoint            TEXT,
    -- what X-Progress says while it runs
    progress              TEXT,
    owner                 TEXT,
    lease_until_us        BIGINT,
    error                 TEXT,
    -- manifest extensions (withdrawn patients and resources) as JSON
    extension             TEXT
);
CREATE INDEX export_jobs_status ON export_jobs (status, created_us);
CREATE INDEX export_jobs_client ON export_jobs (client_id, status);

-- The finished files of a job. A file is recorded only once it is complete and synced, together
-- with the checkpoint after its last resource, so a resumed job never duplicates or loses lines.
CREATE TABLE export_files (
    job_id         TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    -- output | error
    kind           TEXT NOT NULL,
    resource_type  TEXT NOT NULL,
    name           TEXT NOT NULL,
    count          BIGINT NOT NULL,
    bytes          BIGINT NOT NULL,
    -- JSON array of the Patient ids whose data the file discloses (its AuditEvent lists them)
    patients       TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Consent changes since a time (a _since export re-sends or withdraws those students' data).
CREATE INDEX consent_directives_updated ON consent_directives (updated_us);
