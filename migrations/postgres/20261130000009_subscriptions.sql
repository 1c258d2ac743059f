-- FHIR Subscriptions (issue 5): rest-hook notifications to FQHC partners when an Encounter they
-- may see is created or changed.

-- The transactional outbox: every Encounter version written is recorded here in the same
-- transaction as the version itself, so no change is lost between the write and its
-- notification. The dispatcher fans rows out to matching subscriptions and deletes them.
CREATE TABLE fhir_changes (
    seq BIGSERIAL PRIMARY KEY,
    resource_type  TEXT NOT NULL,
    id             TEXT NOT NULL,
    version_id     BIGINT NOT NULL,
    changed_us     BIGINT NOT NULL
);

-- Subscriptions created by partner clients (rendered as FHIR R4 Subscription resources).
CREATE TABLE subscriptions (
    id                  TEXT PRIMARY KEY,
    client_id           TEXT NOT NULL,
    org_id              TEXT NOT NULL,
    purpose             TEXT NOT NULL,
    -- Encounter?param=value...
    criteria            TEXT NOT NULL,
    endpoint            TEXT NOT NULL,
    -- JSON array of "Name: value" headers sent with every notification
    headers             TEXT NOT NULL,
    -- id-only | empty
    payload             TEXT NOT NULL,
    -- requested | active | error | off
    status              TEXT NOT NULL,
    error               TEXT,
    reason              TEXT,
    -- the last event number assigned (events-since-subscription-start)
    events              BIGINT NOT NULL DEFAULT 0,
    created_us          BIGINT NOT NULL,
    updated_us          BIGINT NOT NULL,
    -- the deliverer currently sending this subscription's notifications (in order)
    lease_owner         TEXT,
    lease_until_us      BIGINT
);
CREATE INDEX subscriptions_client ON subscriptions (client_id);

-- One notification of one subscription. The event number is assigned when it is first sent
-- (after consent permits it), so the numbers a partner receives have no gaps.
CREATE TABLE subscription_deliveries (
    seq BIGSERIAL PRIMARY KEY,
    subscription_id  TEXT NOT NULL,
    resource_type    TEXT NOT NULL,
    resource_id      TEXT NOT NULL,
    version_id       BIGINT NOT NULL,
    -- pending | delivered | withheld | dead
    status           TEXT NOT NULL,
    event_number     BIGINT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_us  BIGINT NOT NULL,
    created_us       BIGINT NOT NULL,
    delivered_us     BIGINT,
    last_error       TEXT
);
CREATE INDEX subscription_deliveries_due ON subscription_deliveries (subscription_id, status, seq);
CREATE INDEX subscription_deliveries_status ON subscription_deliveries (status, next_attempt_us);
