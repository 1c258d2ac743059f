-- Claims (issue 6): one row per claim the gateway files for a billable session version.
-- No double billing: at most one *active* claim per session (the partial unique index below);
-- a corrected (frequency 7) or void (frequency 8) claim replaces the active one in the same
-- transaction that retires it.
CREATE TABLE claims (
    id                  TEXT PRIMARY KEY,
    -- CLM01, echoed in 835 CLP01 (at most 20 characters)
    pcn                 TEXT NOT NULL UNIQUE,
    session_id          TEXT NOT NULL,
    session_version     INTEGER NOT NULL,
    patient_id          TEXT,
    -- local date of service, YYYY-MM-DD
    service_date        TEXT NOT NULL,
    site_id             TEXT NOT NULL,
    lea_id              TEXT NOT NULL,
    program             TEXT NOT NULL,
    program_version     TEXT NOT NULL,
    -- the visit category it counts against (visits_per_day; the documented same-day exceptions)
    visit_category      TEXT NOT NULL,
    -- professional | institutional
    form                TEXT NOT NULL,
    biller              TEXT NOT NULL,
    payer               TEXT NOT NULL,
    rendering_npi       TEXT NOT NULL,
    -- 1 original, 7 replacement, 8 void
    frequency           TEXT NOT NULL,
    -- the claim this one replaces or voids
    replaces            TEXT,
    -- the payer's claim control number (835 CLP07), needed for frequency 7 / 8
    payer_claim_number  TEXT,
    -- ready | batched | submitted | accepted | rejected | adjudicated | closed
    -- | cancelled (replaced before it was sent) | replaced | voided
    status              TEXT NOT NULL,
    active              INTEGER NOT NULL,
    charge_cents        INTEGER NOT NULL,
    expected_cents      INTEGER NOT NULL,
    -- the billing decision's planned claim (JSON)
    plan                TEXT NOT NULL,
    -- the FHIR R4 Claim (JSON)
    resource            TEXT NOT NULL,
    batch_id            TEXT,
    created_us          INTEGER NOT NULL,
    updated_us          INTEGER NOT NULL
);
CREATE UNIQUE INDEX claims_one_active ON claims (session_id) WHERE active = 1;
CREATE INDEX claims_session ON claims (session_id, created_us);
CREATE INDEX claims_visit_day ON claims (patient_id, service_date) WHERE active = 1;
CREATE INDEX claims_provider_day ON claims (rendering_npi, service_date) WHERE active = 1;
CREATE INDEX claims_status ON claims (status, payer, biller);
CREATE INDEX claims_replaces ON claims (replaces);
CREATE INDEX claims_batch ON claims (batch_id);

-- Claim lines with their line item control numbers (837 REF*6R, returned in 835 REF*6R).
CREATE TABLE claim_lines (
    claim_id        TEXT NOT NULL,
    line_no         INTEGER NOT NULL,
    line_id         TEXT NOT NULL,
    revenue_code    TEXT,
    code            TEXT NOT NULL,
    -- modifiers joined with ':'
    modifiers       TEXT NOT NULL,
    units           INTEGER NOT NULL,
    charge_cents    INTEGER NOT NULL,
    expected_cents  INTEGER NOT NULL,
    informational   INTEGER NOT NULL,
    PRIMARY KEY (claim_id, line_no)
);
CREATE UNIQUE INDEX claim_lines_line_id ON claim_lines (line_id);
CREATE INDEX claim_lines_code ON claim_lines (code, claim_id);

-- Every lifecycle transition: who, when, why. Append-only.
CREATE TABLE claim_events (
    seq         INTEGER PRIMARY KEY,
    claim_id    TEXT NOT NULL,
    at_us       INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX claim_events_claim ON claim_events (claim_id, seq);

-- The session version billing last settled (claims created, replaced, voided or none): the
-- claim worker picks up sessions whose current version is newer.
ALTER TABLE sessions ADD COLUMN billed_version INTEGER NOT NULL DEFAULT 0;
-- After a failed settlement the worker leaves the session alone until then (others go first).
ALTER TABLE sessions ADD COLUMN billing_retry_us INTEGER;
CREATE INDEX sessions_unbilled ON sessions (updated_at) WHERE billed_version < current_version;

-- X12 batches: one interchange (ISA/GS/ST) per payer and billing provider.
CREATE TABLE claim_batches (
    id              TEXT PRIMARY KEY,
    payer           TEXT NOT NULL,
    biller          TEXT NOT NULL,
    -- 837P or 837I implementation guide
    implementation  TEXT NOT NULL,
    isa_control     INTEGER NOT NULL UNIQUE,
    gs_control      INTEGER NOT NULL UNIQUE,
    st_control      TEXT NOT NULL,
    claim_count     INTEGER NOT NULL,
    total_cents     INTEGER NOT NULL,
    x12             TEXT NOT NULL,
    -- built (no clearinghouse configured: downloaded by finance) | queued (the submission
    -- outbox) | submitted | failed (retries exhausted: visible to admins, re-drivable)
    status          TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_us      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_us INTEGER,
    -- when the current round of retries began (creation, or the last re-drive)
    queued_us       INTEGER,
    last_error      TEXT,
    submitted_us    INTEGER,
    lease_owner     TEXT,
    lease_until_us  INTEGER
);
CREATE INDEX claim_batches_due ON claim_batches (status, next_attempt_us);

-- Control-number counters (ISA13, GS06), persisted so numbers never repeat.
CREATE TABLE x12_counters (
    name   TEXT PRIMARY KEY,
    value  INTEGER NOT NULL
);
INSERT INTO x12_counters (name, value) VALUES ('isa', 0), ('gs', 0);
