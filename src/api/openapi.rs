//! `GET /api/v1/openapi.json`: generated from the handlers' `#[utoipa::path]` annotations and
//! the session JSON Schema file, so neither can drift from the code.

use actix_web::{HttpResponse, get, web};
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::startup::AppState;

/// The generated document (before the session schema is added).
#[derive(OpenApi)]
#[openapi(
    info(title = "wellness-gateway", description = "Submit school counselling sessions; read them back, and read the FHIR R4 resources they map to under /fhir. Every error is a FHIR R4 OperationOutcome."),
    paths(
        super::health::live,
        super::health::ready,
        super::auth::token,
        super::auth::smart_config,
        super::intake::post_session,
        super::intake::post_batch,
        super::intake::get_session,
        super::intake::get_session_version,
        super::intake::get_session_raw,
        super::intake::list_sessions,
        super::billing::session_billing,
        super::billing::evaluate,
        super::claims::list,
        super::claims::read,
        super::claims::build_batches,
        super::claims::list_batches,
        super::claims::resubmit,
        super::claims::post_acks,
        super::remit::post_remittance,
        super::remit::list_remittances,
        super::remit::read_remittance,
        super::remit::list_exceptions,
        super::remit::resolve_exception,
        super::remit::report_reconciliation,
        super::remit::report_aging,
        super::remit::report_denials,
        super::remit::report_pps_gap,
        super::remit::report_sustainability,
        super::claims::requeue,
        super::claims::read_batch,
        super::claims::batch_x12,
        super::consents::post_consent,
        super::consents::get_consent,
        super::consents::revoke_consent,
        super::consents::fhir_post_consent,
        super::consents::fhir_put_consent,
        super::audit::disclosures,
        super::audit::explain,
        super::fhir::metadata,
        super::fhir::search,
        super::fhir::read,
        super::fhir::vread,
        super::fhir::history,
        super::export::export_system,
        super::export::export_patients,
        super::export::export_group,
        super::export::export_status,
        super::export::export_cancel,
        super::export::export_file,
        super::export::read_group,
        super::export::search_groups,
        super::subscriptions::create,
        super::subscriptions::read,
        super::subscriptions::search,
        super::subscriptions::remove,
        super::subscriptions::dead_letters,
        super::subscriptions::redrive,
        openapi_json,
    ),
    components(schemas(crate::fhir::OperationOutcome, crate::intake::receipt::BatchReceipt, crate::intake::receipt::SessionReceipt, super::consents::ConsentReceipt, super::claims::ClaimView, crate::claims::batch::Built, crate::claims::batch::BatchSummary, crate::remit::RemitReport, crate::remit::PaymentSummary, crate::store::ExceptionRow, super::remit::Resolve, crate::remit::reports::Reconciliation, crate::remit::reports::ReconRow, crate::remit::reports::Aging, crate::remit::reports::AgingRow, crate::remit::reports::Denials, crate::remit::reports::DenialRow, crate::remit::reports::Remark, crate::remit::reports::PpsGap, crate::remit::reports::PpsRow, crate::remit::reports::Sustainability, crate::remit::reports::SustainabilityRow, crate::remit::reports::ReasonCount)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

/// Rewrites `#/$defs/x` references of the embedded schema to `#/components/schemas/Session_x`.
fn rebase_refs(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/$defs/")
            {
                *r = format!("#/components/schemas/Session_{name}");
            }
            map.values_mut().for_each(rebase_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rebase_refs),
        _ => {}
    }
}

/// The full document: utoipa's output plus `components.schemas.Session` from the schema file.
pub fn document(session_schema: &Value) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let mut schema = session_schema.clone();
    let defs = schema.as_object_mut().and_then(|m| m.remove("$defs"));
    if let Some(m) = schema.as_object_mut() {
        m.remove("$schema");
        m.remove("$id");
    }
    rebase_refs(&mut schema);
    let schemas = &mut doc["components"]["schemas"];
    schemas["Session"] = schema;
    if let Some(Value::Object(defs)) = defs {
        for (name, mut def) in defs {
            rebase_refs(&mut def);
            schemas[format!("Session_{name}")] = def;
        }
    }
    let session_ref = json!({ "$ref": "#/components/schemas/Session" });
    doc["paths"]["/api/v1/sessions"]["post"]["requestBody"]["content"]["application/json"]["schema"] = session_ref.clone();
    let batch = &mut doc["paths"]["/api/v1/sessions/$batch"]["post"]["requestBody"]["content"];
    batch["application/json"]["schema"] = json!({ "type": "array", "maxItems": 10000, "items": session_ref });
    batch["application/x-ndjson"]["schema"] = json!({ "type": "string", "description": "one session record (JSON) per line" });
    doc
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", responses((status = 200, description = "OpenAPI 3.1 document")))]
#[get("/api/v1/openapi.json")]
pub async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.openapi.as_ref())
}
