-- Organisations, sites and partnerships are seeded from configuration at start-up.
CREATE TABLE organizations (
    id        TEXT PRIMARY KEY,
    kind      TEXT NOT NULL CHECK (kind IN ('lea', 'fqhc')),
    name      TEXT NOT NULL,
    cds_code  TEXT,
    npi       TEXT,
    tin       TEXT
);

CREATE TABLE sites (
    id        TEXT PRIMARY KEY,
    lea_id    TEXT NOT NULL REFERENCES organizations (id),
    name      TEXT NOT NULL,
    cds_code  TEXT,
    nces_id   TEXT
);

CREATE TABLE partnerships (
    fqhc_id         TEXT NOT NULL REFERENCES organizations (id),
    site_id         TEXT NOT NULL REFERENCES sites (id),
    effective_from  TEXT,
    effective_to    TEXT,
    PRIMARY KEY (fqhc_id, site_id)
);

-- API clients. Only the SHA-256 of the secret is kept (secrets are 256-bit random tokens).
CREATE TABLE api_clients (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('submitter', 'partner', 'finance', 'admin')),
    org_id         TEXT REFERENCES organizations (id),
    secret_sha256  TEXT NOT NULL UNIQUE,
    created_at     TEXT NOT NULL,
    disabled_at    TEXT
);

-- One row per (LEA, source id); versions below are never overwritten.
CREATE TABLE sessions (
    id                      TEXT PRIMARY KEY,
    lea_id                  TEXT NOT NULL,
    source_id               TEXT NOT NULL,
    site_id                 TEXT NOT NULL,
    current_version         INTEGER NOT NULL,
    current_content_sha256  TEXT NOT NULL,
    service_start           TEXT NOT NULL,
    created_at              TEXT NOT NULL,
    updated_at              TEXT NOT NULL,
    UNIQUE (lea_id, source_id)
);
CREATE INDEX sessions_lea_updated ON sessions (lea_id, updated_at, id);
CREATE INDEX sessions_updated ON sessions (updated_at, id);

CREATE TABLE session_versions (
    session_id      TEXT NOT NULL REFERENCES sessions (id),
    version         INTEGER NOT NULL,
    content_sha256  TEXT NOT NULL,
    raw_sha256      TEXT NOT NULL,
    raw             BLOB NOT NULL,
    raw_format      TEXT NOT NULL,
    record          TEXT NOT NULL,
    received_at     TEXT NOT NULL,
    client_id       TEXT NOT NULL,
    request_id      TEXT,
    batch_id        TEXT,
    PRIMARY KEY (session_id, version)
);

-- The rejected lane: every record that was refused, with its issues.
CREATE TABLE intake_rejections (
    id            TEXT PRIMARY KEY,
    lea_id        TEXT,
    client_id     TEXT NOT NULL,
    batch_id      TEXT,
    request_id    TEXT,
    record_index  INTEGER NOT NULL,
    source_id     TEXT,
    raw_sha256    TEXT NOT NULL,
    raw           BLOB NOT NULL,
    issues        TEXT NOT NULL,
    received_at   TEXT NOT NULL
);
CREATE INDEX intake_rejections_lea ON intake_rejections (lea_id, received_at);
