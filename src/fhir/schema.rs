//! The official FHIR R4 JSON Schema (`schemas/fhir/fhir.schema.json`, see its `ORIGIN.md`),
//! compiled once per resource type against `#/definitions/<resourceType>`, plus a walker over its
//! definitions so mapping files can be checked for unknown target elements at load time.
//!
//! Messages are masked: they name the element and the rule, never the value (it may be PHI).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// File name of the official schema under `schemas/fhir/`.
pub const FHIR_SCHEMA_FILE: &str = "fhir/fhir.schema.json";

/// Resource types the gateway validates (what it produces, stores and accepts).
pub const VALIDATED_TYPES: &[&str] = &[
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Encounter",
    "Condition",
    "Coverage",
    "Provenance",
    "RelatedPerson",
    "Consent",
    "Claim",
    "ClaimResponse",
    "ExplanationOfBenefit",
    "AuditEvent",
    "OperationOutcome",
    "Bundle",
];

/// One schema violation: where (JSON pointer into the resource) and what, without the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer into the resource (`/period/start`).
    pub pointer: String,
    /// The rule that failed, with the value masked.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.pointer.is_empty() { "/" } else { &self.pointer };
        write!(f, "{at}: {}", self.message)
    }
}

/// What a FHIR element is, as the schema defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementType {
    /// The definition name (`Coding`, `Reference`, `string`, `Encounter_Participant`), or `None`
    /// for an inline primitive (an enum of codes).
    pub definition: Option<String>,
    /// Whether the element repeats (a JSON array).
    pub array: bool,
}

/// The compiled FHIR R4 schema.
pub struct FhirSchema {
    validators: HashMap<&'static str, jsonschema::Validator>,
    definitions: serde_json::Map<String, Value>,
}

impl std::fmt::Debug for FhirSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirSchema").field("types", &self.validators.keys().collect::<Vec<_>>()).finish()
    }
}

impl FhirSchema {
    /// Loads `schemas/fhir/fhir.schema.json` from the schemas directory and compiles it.
    pub fn load(schemas_dir: &Path) -> anyhow::Result<Self> {
        let path = schemas_dir.join(FHIR_SCHEMA_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading FHIR schema {}", path.display()))?;
        Self::from_text(&text).with_context(|| format!("compiling FHIR schema {}", path.display()))
    }

    /// Compiles the schema text: one validator per type in [`VALIDATED_TYPES`].
    pub fn from_text(text: &str) -> anyhow::Result<Self> {
        let mut document: Value = serde_json::from_str(text).context("FHIR schema is not valid JSON")?;
        let root = document.as_object_mut().context("FHIR schema is not a JSON object")?;
        // The root is a oneOf over every resource type; each validator starts at one definition.
        root.remove("oneOf");
        root.remove("discriminator");
        let definitions = root.get("definitions").and_then(Value::as_object).cloned().context("FHIR schema has no definitions")?;
        let mut validators = HashMap::new();
        for ty in VALIDATED_TYPES {
            anyhow::ensure!(definitions.contains_key(*ty), "FHIR schema has no definition for {ty}");
            let mut doc = document.clone();
            if let Some(obj) = doc.as_object_mut() {
                obj.insert("$ref".into(), Value::String(format!("#/definitions/{ty}")));
            }
            let validator = jsonschema::draft6::options()
                .build(&doc)
                .map_err(|e| anyhow::anyhow!("definition {ty} does not compile: {}", e.masked()))?;
            validators.insert(*ty, validator);
        }
        Ok(Self { validators, definitions })
    }

    /// Validates a resource against `#/definitions/<resourceType>`.
    pub fn validate(&self, resource: &Value) -> Result<(), Vec<Violation>> {
        let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else {
            return Err(vec![Violation { pointer: "/resourceType".into(), message: "resourceType is missing or not a string".into() }]);
        };
        let Some(validator) = self.validators.get(ty) else {
            return Err(vec![Violation { pointer: "/resourceType".into(), message: format!("resource type {ty} is not supported here") }]);
        };
        if validator.is_valid(resource) {
            return Ok(());
        }
        let mut out: Vec<Violation> = validator
            .iter_errors(resource)
            .map(|e| Violation { pointer: e.instance_path().as_str().to_string(), message: e.masked().to_string() })
            .collect();
        out.dedup();
        Err(out)
    }

    /// Whether the schema defines this resource type.
    pub fn has_type(&self, ty: &str) -> bool {
        self.definitions.get(ty).and_then(|d| d.get("properties")).and_then(|p| p.get("resourceType")).is_some()
    }

    /// The type of element `name` inside definition `definition` (`Encounter`, `period`), or
    /// `None` when the schema has no such element.
    pub fn element(&self, definition: &str, name: &str) -> Option<ElementType> {
        let prop = self.definitions.get(definition)?.get("properties")?.get(name)?;
        let (array, target) = match prop.get("items") {
            Some(items) if prop.get("type").and_then(Value::as_str) == Some("array") => (true, items),
            _ => (false, prop),
        };
        let definition = target.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/definitions/")).map(str::to_string);
        Some(ElementType { definition, array })
    }

    /// Whether a definition is a FHIR primitive (`string`, `date`, `code`, ...), i.e. has no
    /// child elements.
    pub fn is_primitive(&self, definition: &str) -> bool {
        self.definitions.get(definition).is_some_and(|d| d.get("properties").is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::LazyLock;

    static SCHEMA: LazyLock<FhirSchema> =
        LazyLock::new(|| FhirSchema::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).expect("schema compiles"));

    #[test]
    fn accepts_a_minimal_encounter_and_names_bad_elements() {
        let ok = json!({"resourceType": "Encounter", "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}});
        assert_eq!(SCHEMA.validate(&ok), Ok(()));
        let bad = json!({"resourceType": "Encounter", "status": "done", "class": {"code": "AMB"}, "period": {"start": "2026-13-01"}, "colour": 1});
        let errors = SCHEMA.validate(&bad).unwrap_err();
        let pointers: Vec<&str> = errors.iter().map(|v| v.pointer.as_str()).collect();
        assert!(pointers.contains(&"/status"), "{errors:?}");
        assert!(pointers.contains(&"/period/start"), "{errors:?}");
        assert!(errors.iter().any(|v| v.message.contains("colour")), "{errors:?}");
        assert!(!errors.iter().any(|v| v.message.contains("2026-13-01")), "values are masked: {errors:?}");
    }

    #[test]
    fn walks_element_types() {
        assert_eq!(SCHEMA.element("Encounter", "class"), Some(ElementType { definition: Some("Coding".into()), array: false }));
        assert_eq!(
            SCHEMA.element("Encounter", "participant"),
            Some(ElementType { definition: Some("Encounter_Participant".into()), array: true })
        );
        assert_eq!(SCHEMA.element("Encounter", "colour"), None);
        assert!(SCHEMA.is_primitive("dateTime"));
        assert!(!SCHEMA.is_primitive("Period"));
        assert!(SCHEMA.has_type("Patient") && !SCHEMA.has_type("Period"));
    }
}
