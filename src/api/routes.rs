//! The one table of every route. Guards: health is open; everything else extracts a
//! [`crate::auth::Principal`] (401 without a valid token) and checks its role/organisation.

use actix_web::web;

use super::{audit, auth, billing, claims, consents, export, extractors, fhir, health, intake, openapi, remit, subscriptions};
use crate::error::ApiError;

/// Registers every route, the query/path error renderers and the 404/405 fallbacks.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(extractors::query_error))
        .app_data(web::PathConfig::default().error_handler(extractors::path_error))
        .service(health::live) // open
        .service(health::ready) // open
        .service(openapi::openapi_json) // open: describes the API, holds no data
        .service(auth::token) // open: authenticates the client by its signed assertion
        .service(auth::smart_config) // open: discovery, holds no data
        .service(auth::smart_config_fhir) // open: discovery, holds no data
        .service(intake::post_batch) // submitter (own LEA), admin
        .service(intake::post_session) // submitter (own LEA), admin
        .service(intake::list_sessions) // submitter (own LEA), admin
        .service(intake::get_session_raw) // submitter (own LEA), admin
        .service(intake::get_session_version) // submitter (own LEA), admin
        .service(billing::session_billing) // submitter (own LEA), finance, admin (before /api/v1/sessions/{id})
        .service(billing::evaluate) // submitter (own LEA), finance, admin
        .service(intake::get_session) // submitter (own LEA), admin
        .service(claims::build_batches) // finance, admin
        .service(claims::list_batches) // finance, admin (before /api/v1/claims/{id})
        .service(claims::resubmit) // finance, admin
        .service(claims::read_batch) // finance, admin
        .service(claims::batch_x12) // finance, admin
        .service(claims::list) // finance, admin
        .service(claims::read) // finance, admin
        .service(claims::requeue) // finance, admin
        .service(claims::post_acks) // finance, admin
        .service(remit::post_remittance) // finance, admin
        .service(remit::list_remittances) // finance, admin
        .service(remit::list_exceptions) // finance, admin (before /api/v1/remittances/{id})
        .service(remit::resolve_exception) // finance, admin
        .service(remit::read_remittance) // finance, admin
        .service(remit::report_reconciliation) // finance, admin
        .service(remit::report_aging) // finance, admin
        .service(remit::report_denials) // finance, admin
        .service(remit::report_pps_gap) // finance, admin
        .service(remit::report_sustainability) // finance, admin
        .service(remit::dashboard) // open: static page, holds no data (signs in with a finance token)
        .service(remit::dashboard_js) // open: static
        .service(remit::dashboard_css) // open: static
        .service(remit::dashboard_chart) // open: static
        .service(remit::fhir_claim_response) // finance, admin (before the generic /fhir/{type}/{id})
        .service(remit::fhir_search_claim_responses) // finance, admin (before the generic /fhir/{type})
        .service(remit::fhir_payment_reconciliation) // finance, admin (before the generic /fhir/{type}/{id})
        .service(remit::fhir_search_payment_reconciliations) // finance, admin (before the generic /fhir/{type})
        .service(claims::fhir_read) // finance, admin (before the generic /fhir/{type}/{id})
        .service(claims::fhir_search) // finance, admin (before the generic /fhir/{type})
        .service(consents::post_consent) // submitter (own LEA), admin
        .service(consents::revoke_consent) // submitter (own LEA), admin
        .service(consents::get_consent) // submitter (own LEA), admin
        .service(consents::fhir_post_consent) // submitter (own LEA), admin
        .service(consents::fhir_put_consent) // submitter (own LEA), admin
        .service(audit::disclosures) // submitter (own LEA), admin
        .service(audit::explain) // admin
        .service(audit::read_event) // admin (before the generic /fhir/{type}/{id})
        .service(audit::search_events) // admin (before the generic /fhir/{type})
        .service(export::export_system) // partner (before the generic /fhir/{type})
        .service(export::export_patients) // partner (before the generic /fhir/{type}/{id})
        .service(export::export_group) // partner
        .service(export::export_status) // partner (its own jobs)
        .service(export::export_cancel) // partner (its own jobs)
        .service(export::export_file) // partner (its own jobs)
        .service(export::read_group) // partner (its sites), admin
        .service(export::search_groups) // partner (its sites), admin
        .service(subscriptions::create) // partner
        .service(subscriptions::read) // partner (its own), admin (before the generic /fhir/{type}/{id})
        .service(subscriptions::search) // partner (its own), admin (before the generic /fhir/{type})
        .service(subscriptions::remove) // partner (its own), admin
        .service(subscriptions::dead_letters) // admin
        .service(subscriptions::redrive) // admin
        .service(fhir::metadata) // open: describes the API, holds no data
        .service(fhir::history) // submitter (own LEA), admin
        .service(fhir::vread) // submitter (own LEA), admin
        .service(fhir::read) // submitter (own LEA), admin
        .service(fhir::search) // submitter (own LEA), admin
        .default_service(web::to(not_found));
}

async fn not_found(req: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(if req.match_pattern().is_some() {
        ApiError::MethodNotAllowed
    } else {
        ApiError::NotFound(format!("no endpoint at {}", req.path()))
    })
}
