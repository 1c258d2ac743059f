-- FHIR resources produced by the mapping (issue 3). Every version is kept in
-- fhir_resource_versions; fhir_resources points at the current one. Times are microseconds since
-- the Unix epoch (UTC) on both backends, so comparisons and keyset cursors are plain integers.
--
-- Each resource has a surrogate integer key `rid`, allocated in write order: the tables keyed by
-- it grow at their right edge instead of taking inserts at random places in UUID-keyed b-trees
-- (each of which dirties a page of its own), and their rows carry 8 bytes instead of a type and
-- a 36-character id. Only `(resource_type, id)` itself and the search values are random keys.
CREATE TABLE fhir_resources (
    rid              INTEGER PRIMARY KEY,
    resource_type    TEXT NOT NULL,
    id               TEXT NOT NULL,
    version_id       INTEGER NOT NULL,
    last_updated_us  INTEGER NOT NULL,
    -- SHA-256 of the resource without meta.versionId / meta.lastUpdated: unchanged content
    -- writes no new version.
    content_sha256   TEXT NOT NULL,
    deleted          INTEGER NOT NULL DEFAULT 0,
    UNIQUE (resource_type, id)
);
CREATE INDEX fhir_resources_updated ON fhir_resources (resource_type, last_updated_us, id);

CREATE TABLE fhir_resource_versions (
    rid              INTEGER NOT NULL,
    version_id       INTEGER NOT NULL,
    last_updated_us  INTEGER NOT NULL,
    deleted          INTEGER NOT NULL DEFAULT 0,
    -- the session version that wrote this resource version
    session_id       TEXT NOT NULL,
    session_version  INTEGER NOT NULL,
    content          TEXT NOT NULL,
    PRIMARY KEY (rid, version_id)
);

-- Which LEAs' sessions produced (or reference) a resource: a submitter reads only these.
CREATE TABLE fhir_resource_leas (
    rid     INTEGER NOT NULL,
    lea_id  TEXT NOT NULL,
    PRIMARY KEY (rid, lea_id)
) WITHOUT ROWID;

-- Resources a session's current version owns (Encounter, Condition, ...): those the next
-- version no longer produces are deleted (read answers 410, history keeps them).
CREATE TABLE fhir_session_resources (
    session_id  TEXT NOT NULL,
    rid         INTEGER NOT NULL,
    PRIMARY KEY (session_id, rid)
) WITHOUT ROWID;

-- Search index of current, non-deleted versions: one row per indexed value, keyed by resource
-- (the rows of one resource are replaced together). token: system + value; reference: value =
-- "Type/id"; string: value = normalised text; date: lo_us / hi_us = the value's range, no value
-- (so date rows stay out of the value index).
CREATE TABLE fhir_search (
    rid            INTEGER NOT NULL,
    param          TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    resource_type  TEXT NOT NULL,
    system         TEXT,
    value          TEXT,
    lo_us          INTEGER,
    hi_us          INTEGER,
    PRIMARY KEY (rid, param, seq)
) WITHOUT ROWID;
CREATE INDEX fhir_search_value ON fhir_search (resource_type, param, value, rid) WHERE value IS NOT NULL;
