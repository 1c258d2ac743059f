//! HTTP only: extract -> call one domain function -> render. No SQL, no rules here.

pub mod audit;
pub mod auth;
pub mod billing;
pub mod claims;
pub mod consents;
pub mod export;
pub mod extractors;
pub mod fhir;
pub mod health;
pub mod intake;
pub mod openapi;
pub mod remit;
pub mod routes;
pub mod subscriptions;

pub use routes::configure;
