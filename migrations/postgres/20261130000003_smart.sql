-- SMART Backend Services clients (issue 4). A partner client authenticates with a JWT signed by
-- a key from its JWKS instead of a secret; its api_clients.secret_sha256 holds 'jwks:' + its id,
-- which no SHA-256 hex digest can equal, so no bearer secret ever matches it.
CREATE TABLE smart_clients (
    client_id  TEXT PRIMARY KEY REFERENCES api_clients (id),
    -- exactly one of: the JWKS itself (JSON) or the https URL it is fetched from
    jwks       TEXT,
    jwks_url   TEXT,
    -- registered scopes, space-separated (system/*.read, system/Encounter.rs, ...)
    scopes     TEXT NOT NULL,
    CHECK ((jwks IS NULL) <> (jwks_url IS NULL))
);

-- jti values of accepted client assertions, kept until the assertion expires: a reused jti is
-- refused (replay), on every instance sharing the database.
CREATE TABLE smart_jti (
    client_id   TEXT NOT NULL,
    jti         TEXT NOT NULL,
    expires_us  BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX smart_jti_expires ON smart_jti (expires_us);
