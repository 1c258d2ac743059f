-- Remittances (issue 7): X12 835 payments posted to claims.
--
-- One row per 835 transaction set (one payment: BPR + TRN). Posting the same payment twice
-- changes nothing: (payer, trace_number) is unique and the whole transaction set is posted in
-- one database transaction.
CREATE TABLE remittances (
    id                          TEXT PRIMARY KEY,
    -- TRN03 (the payer's identifier in the trace), else N1*PR N104 / REF*2U, else the name
    payer                       TEXT NOT NULL,
    -- TRN02: check or EFT trace number (ties the payment to the bank deposit)
    trace_number                TEXT NOT NULL,
    payer_name                  TEXT NOT NULL,
    payee_id                    TEXT,
    -- ST02
    control_number              TEXT NOT NULL,
    -- BPR01 handling, BPR04 method, BPR03 credit/debit, BPR16 payment date (YYYY-MM-DD)
    handling                    TEXT NOT NULL,
    method                      TEXT NOT NULL,
    credit_debit                TEXT NOT NULL,
    payment_date                TEXT,
    -- BPR02, negative for a debit
    paid_cents                  INTEGER NOT NULL,
    -- Σ CLP04, Σ CLP03, Σ PLB amounts (positive reduces the payment)
    claims_paid_cents           INTEGER NOT NULL DEFAULT 0,
    charge_cents                INTEGER NOT NULL DEFAULT 0,
    provider_adjustments_cents  INTEGER NOT NULL DEFAULT 0,
    claim_count                 INTEGER NOT NULL DEFAULT 0,
    matched                     INTEGER NOT NULL DEFAULT 0,
    unmatched                   INTEGER NOT NULL DEFAULT 0,
    -- BPR02 = Σ CLP04 − Σ PLB, to the cent
    balanced                    INTEGER NOT NULL DEFAULT 1,
    -- the problems the reader and posting found (JSON list of strings)
    problems                    TEXT NOT NULL DEFAULT '[]',
    received_by                 TEXT NOT NULL,
    received_us                 INTEGER NOT NULL,
    UNIQUE (payer, trace_number)
);
CREATE INDEX remittances_received ON remittances (received_us);

-- Each CLP as the payer sent it (its FHIR ClaimResponse, and the payment's
-- PaymentReconciliation, are built from these rows when read). claim_id is NULL while it matches no claim (the exceptions
-- queue); resolving the exception fills it once.
CREATE TABLE claim_payments (
    id                            TEXT PRIMARY KEY,
    remittance_id                 TEXT NOT NULL,
    ordinal                       INTEGER NOT NULL,
    claim_id                      TEXT,
    -- CLP01 .. CLP09
    pcn                           TEXT NOT NULL,
    status                        TEXT NOT NULL,
    charge_cents                  INTEGER NOT NULL,
    paid_cents                    INTEGER NOT NULL,
    patient_responsibility_cents  INTEGER NOT NULL,
    payer_claim_number            TEXT,
    facility                      TEXT,
    frequency                     TEXT,
    -- RARC (MOA/MIA), joined with ':'
    remarks                       TEXT NOT NULL,
    segment                       INTEGER NOT NULL,
    posted_us                     INTEGER NOT NULL
);
CREATE INDEX claim_payments_claim ON claim_payments (claim_id, posted_us);
CREATE INDEX claim_payments_remittance ON claim_payments (remittance_id, ordinal);

-- Each SVC line, with the claim line it matched and how.
CREATE TABLE payment_lines (
    payment_id            TEXT NOT NULL,
    line_no               INTEGER NOT NULL,
    -- the claim line it matched (NULL: none, an exception)
    claim_line_no         INTEGER,
    -- line-id (REF*6R) | code-date-charge | none
    matched_by            TEXT NOT NULL,
    qualifier             TEXT NOT NULL,
    procedure_code        TEXT NOT NULL,
    modifiers             TEXT NOT NULL,
    revenue_code          TEXT,
    units                 TEXT,
    submitted_procedure   TEXT,
    service_date          TEXT,
    line_id               TEXT,
    charge_cents          INTEGER NOT NULL,
    paid_cents            INTEGER NOT NULL,
    allowed_cents         INTEGER,
    remarks               TEXT NOT NULL,
    segment               INTEGER NOT NULL,
    PRIMARY KEY (payment_id, line_no)
);

-- The claim ledger: append-only, integer cents. A claim's balance is its charge − Σ paid −
-- Σ adjustments. Reversals (CLP02 22) post their negative amounts as their own entries.
CREATE TABLE remit_ledger (
    seq            INTEGER PRIMARY KEY,
    remittance_id  TEXT NOT NULL,
    payment_id     TEXT NOT NULL,
    -- NULL while the payment is unmatched
    claim_id       TEXT,
    -- the payment line of a line-level adjustment
    line_no        INTEGER,
    -- paid | adjustment | write-off
    kind           TEXT NOT NULL,
    -- CAS01 group code (CO, PR, OA, PI) and CARC
    group_code     TEXT,
    reason         TEXT,
    quantity       TEXT,
    amount_cents   INTEGER NOT NULL,
    actor          TEXT NOT NULL,
    at_us          INTEGER NOT NULL
);
CREATE INDEX remit_ledger_claim ON remit_ledger (claim_id);
CREATE INDEX remit_ledger_payment ON remit_ledger (payment_id);

-- The provider ledger: PLB adjustments (interest, recoupments, forwarding balances), never
-- posted to a claim. Append-only.
CREATE TABLE provider_ledger (
    seq            INTEGER PRIMARY KEY,
    remittance_id  TEXT NOT NULL,
    provider       TEXT NOT NULL,
    fiscal_date    TEXT,
    reason         TEXT NOT NULL,
    reference      TEXT,
    -- positive reduces the payment (as in the 835)
    amount_cents   INTEGER NOT NULL,
    at_us          INTEGER NOT NULL
);
CREATE INDEX provider_ledger_remittance ON provider_ledger (remittance_id);

-- What finance must look at: unmatched claims and lines, denials, imbalances.
CREATE TABLE remit_exceptions (
    id             TEXT PRIMARY KEY,
    remittance_id  TEXT NOT NULL,
    payment_id     TEXT,
    claim_id       TEXT,
    line_no        INTEGER,
    -- unmatched-claim | unmatched-line | denial | claim-out-of-balance | line-out-of-balance
    -- | remittance-out-of-balance
    kind           TEXT NOT NULL,
    detail         TEXT NOT NULL,
    amount_cents   INTEGER NOT NULL,
    -- open | resolved
    status         TEXT NOT NULL,
    resolution     TEXT,
    resolved_by    TEXT,
    resolved_us    INTEGER,
    created_us     INTEGER NOT NULL
);
CREATE INDEX remit_exceptions_status ON remit_exceptions (status, created_us);
CREATE INDEX remit_exceptions_claim ON remit_exceptions (claim_id);

-- What billing decided for the session version it settled, for the sustainability report:
-- the reason codes that kept it from billing (comma-separated; '' when billable) and the
-- face-to-face minutes.
ALTER TABLE sessions ADD COLUMN billing_reasons TEXT;
ALTER TABLE sessions ADD COLUMN billing_minutes INTEGER;
CREATE INDEX sessions_site_date ON sessions (site_id, service_date);
