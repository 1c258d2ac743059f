//! # wellness-gateway
//!
//! Schools get paid for the counselling they already do: county offices of education and
//! school districts submit counselling sessions; the gateway validates them, stores them exactly
//! once with the FHIR R4 resources they map to, serves those over a FHIR REST API, and shares them
//! with FQHC partners under consent, and bills them (reconciliation comes next).
//!
//! ## The path of a session
//!
//! ```text
//! county office ── POST /api/v1/sessions (or $batch, or `import FILE`)
//!   │
//!   ▼ api::intake        HTTP only: auth (auth::Principal), content type, body limit
//!   ▼ intake::batch      split the body into numbered RawRecords, exact bytes kept
//!   ▼ pipeline::prepare  validate::Validator: JSON Schema (schemas/) then semantic rules
//!   │                     -> ValidSession, or issues (JSON pointer + sentence)
//!   │                    mapping::Mapper: mappings/ -> FHIR resources, each checked against the
//!   │                     official R4 schema; fhir::search indexes them
//!   ▼ pipeline::commit   store::Store::write_intake: one transaction; identical = duplicate,
//!                        changed = new version with new versions of the changed resources;
//!                        rejected records go to the rejected lane
//!
//! FQHC / admin ── GET /fhir/... ── api::fhir -> store (read, vread, history, search)
//!
//! stored session version ── claims::Claimer (worker)
//!   ▼ billing::decide_subject  mappings/billing/: funding path, codes, units, amount or reasons
//!   ▼ store::settle_session    one active claim per session: original, replacement (7), void (8)
//! finance ── POST /api/v1/claims/batches ── claims::batch -> x12::claim837 (837P / 837I)
//!   ▼ claims::submit           outbox to the payer's clearinghouse (outbound::client)
//!   ▼ POST /api/v1/acks        claims::acks: 999 / 277CA -> accepted / rejected
//! ```
//!
//! Every rejection is a FHIR `OperationOutcome` ([`error::ApiError`]). SQL lives only in
//! [`store`]; rules live in `schemas/` and `config/`.

pub mod api;
pub mod audit;
pub mod auth;
pub mod billing;
pub mod claims;
pub mod consent;
pub mod demo;
pub mod domain;
pub mod error;
pub mod export;
pub mod fhir;
pub mod intake;
pub mod mapping;
pub mod notify;
pub mod outbound;
pub mod pipeline;
pub mod remit;
pub mod serve;
pub mod settings;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod validate;
pub mod x12;
