//! One integration binary; modules in pipeline order.

mod helpers;

mod audit;
mod auth;
mod batch;
mod billing;
mod billing_property;
mod claims;
mod cli;
mod consent;
mod corpora;
mod export;
mod fhir;
mod intake;
mod mapping;
mod remittances;
mod server;
mod smart;
mod subscriptions;
