-- The generation of the consent decision's facts (issue 4): every change to a session's decision
-- facts or to a consent directive bumps it, in the transaction that makes the change. A partner's
-- read brings the generation along with the resource (same statement, same snapshot), so the
-- facts the gateway keeps in memory (store::memo) are used only while nothing they were read
-- from has changed, whichever process or connection changed it. SQLite only: PostgreSQL, where
-- one hot row would serialise every intake transaction, reads the facts with each request.
CREATE TABLE facts_generation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
INSERT INTO facts_generation (id, generation) VALUES (1, 0);

CREATE TRIGGER sessions_facts_insert AFTER INSERT ON sessions
BEGIN UPDATE facts_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER sessions_facts_update
AFTER UPDATE OF id, lea_id, site_id, service_start, current_version, patient_id, security, service_date, adult_from ON sessions
BEGIN UPDATE facts_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER sessions_facts_delete AFTER DELETE ON sessions
BEGIN UPDATE facts_generation SET generation = generation + 1 WHERE id = 1; END;

CREATE TRIGGER consent_directives_insert AFTER INSERT ON consent_directives
BEGIN UPDATE facts_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER consent_directives_update AFTER UPDATE ON consent_directives
BEGIN UPDATE facts_generation SET generation = generation + 1 WHERE id = 1; END;
CREATE TRIGGER consent_directives_delete AFTER DELETE ON consent_directives
BEGIN UPDATE facts_generation SET generation = generation + 1 WHERE id = 1; END;
