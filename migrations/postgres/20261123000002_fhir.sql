-- FHIR resources produced by the mapping (issue 3). Every version is kept in
-- fhir_resource_versions; fhir_resources points at the current one. Times are microseconds since
-- the Unix epoch (UTC) on both backends, so comparisons and keyset cursors are plain integers.
CREATE TABLE fhir_resources (
    resource_type    TEXT COLLATE "C" NOT NULL,
    id               TEXT COLLATE "C" NOT NULL,
    version_id       BIGINT NOT NULL,
    last_updated_us  BIGINT NOT NULL,
    -- SHA-256 of the resource without meta.versionId / meta.lastUpdated: unchanged content
    -- writes no new version.
    content_sha256   TEXT NOT NULL,
    deleted          BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (resource_type, id)
);
CREATE INDEX fhir_resources_updated ON fhir_resources (resource_type, last_updated_us, id);

CREATE TABLE fhir_resource_versions (
    resource_type    TEXT COLLATE "C" NOT NULL,
    id               TEXT COLLATE "C" NOT NULL,
    version_id       BIGINT NOT NULL,
    last_updated_us  BIGINT NOT NULL,
    deleted          BOOLEAN NOT NULL DEFAULT FALSE,
    -- the session version that wrote this resource version
    session_id       TEXT NOT NULL,
    session_version  BIGINT NOT NULL,
    content          TEXT NOT NULL,
    PRIMARY KEY (resource_type, id, version_id)
);

-- Which LEAs' sessions produced (or reference) a resource: a submitter reads only these.
CREATE TABLE fhir_resource_leas (
    resource_type  TEXT COLLATE "C" NOT NULL,
    id             TEXT COLLATE "C" NOT NULL,
    lea_id         TEXT NOT NULL,
    PRIMARY KEY (resource_type, id, lea_id)
);

-- Resources a session's current version owns (Encounter, Condition, ...): those the next
-- version no longer produces are deleted (read answers 410, history keeps them).
CREATE TABLE fhir_session_resources (
    session_id     TEXT NOT NULL,
    resource_type  TEXT COLLATE "C" NOT NULL,
    id             TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (session_id, resource_type, id)
);

-- Search index of current, non-deleted versions: one row per indexed value, keyed by resource
-- (the rows of one resource are replaced together). token: system + value; reference: value =
-- "Type/id"; string: value = normalised text; date: lo_us / hi_us = the value's range.
CREATE TABLE fhir_search (
    resource_type  TEXT COLLATE "C" NOT NULL,
    id             TEXT COLLATE "C" NOT NULL,
    param          TEXT COLLATE "C" NOT NULL,
    seq            BIGINT NOT NULL,
    system         TEXT,
    value          TEXT COLLATE "C",
    lo_us          BIGINT,
    hi_us          BIGINT,
    PRIMARY KEY (resource_type, id, param, seq)
);
CREATE INDEX fhir_search_value ON fhir_search (resource_type, param, value, id);
