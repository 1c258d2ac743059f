//! The official FHIR R4 JSON Schema (`schemas/fhir/fhir.schema.json`, see its `ORIGIN.md`),
//! compiled for the validated resource types, plus a walker over its definitions so mapping files
//! can be checked for unknown target elements at load time.
//!
//! Validation has two paths. The verdict comes from one validator whose root is a `oneOf` over
//! `#/definitions/<resourceType>` of every type in [`VALIDATED_TYPES`]: the schema's definitions are
//! compiled once and shared by all types (less to compile, and less memory to walk per resource),
//! and the validator dispatches on the `resourceType` constant each definition pins, so only the
//! resource's own definition is checked. Because every validated definition requires its own
//! `resourceType` constant (checked at load), "valid against the `oneOf`" is exactly "valid against
//! the resource's own definition". Only for an invalid resource is a validator rooted at its own
//! definition compiled (once per type, on first use) to list every violation with its path.
//!
//! Messages are masked: they name the element and the rule, never the value (it may be PHI).

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

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
    "DocumentReference",
    "Consent",
    "Claim",
    "ClaimResponse",
    "PaymentReconciliation",
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
    /// Verdicts: `oneOf` over the definitions of [`VALIDATED_TYPES`].
    any_type: jsonschema::Validator,
    /// Violations: a validator rooted at each type's definition, compiled on first need.
    by_type: HashMap<&'static str, OnceLock<Result<jsonschema::Validator, String>>>,
    /// The schema document `any_type` was compiled from (the official one, with our `oneOf`).
    document: Value,
}

impl std::fmt::Debug for FhirSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut types: Vec<&&str> = self.by_type.keys().collect();
        types.sort();
        f.debug_struct("FhirSchema").field("types", &types).finish()
    }
}

impl FhirSchema {
    /// Loads `schemas/fhir/fhir.schema.json` from the schemas directory and compiles it.
    pub fn load(schemas_dir: &Path) -> anyhow::Result<Self> {
        let path = schemas_dir.join(FHIR_SCHEMA_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading FHIR schema {}", path.display()))?;
        Self::from_text(&text).with_context(|| format!("compiling FHIR schema {}", path.display()))
    }

    /// Compiles the schema text for the types in [`VALIDATED_TYPES`].
    pub fn from_text(text: &str) -> anyhow::Result<Self> {
        let document: Value = serde_json::from_str(text).context("FHIR schema is not valid JSON")?;
        let Value::Object(mut root) = document else { anyhow::bail!("FHIR schema is not a JSON object") };
        // The official root is a oneOf over every resource type; ours covers the validated ones.
        root.remove("oneOf");
        root.remove("discriminator");
        let Some(Value::Object(definitions)) = root.remove("definitions") else { anyhow::bail!("FHIR schema has no definitions") };
        for ty in VALIDATED_TYPES {
            let Some(definition) = definitions.get(*ty) else { anyhow::bail!("FHIR schema has no definition for {ty}") };
            // What makes the `oneOf` verdict equal to the verdict of the type's own definition.
            let pinned = definition.pointer("/properties/resourceType/const").and_then(Value::as_str) == Some(*ty);
            let required = definition.get("required").and_then(Value::as_array).is_some_and(|r| r.iter().any(|k| k == "resourceType"));
            anyhow::ensure!(pinned && required, "FHIR schema definition {ty} does not require resourceType \"{ty}\"");
        }
        root.insert("definitions".into(), Value::Object(definitions));
        let branches = VALIDATED_TYPES.iter().map(|ty| serde_json::json!({ "$ref": format!("#/definitions/{ty}") })).collect();
        root.insert("oneOf".into(), Value::Array(branches));
        let document = Value::Object(root);
        let any_type = jsonschema::draft6::options()
            .build(&document)
            .map_err(|e| anyhow::anyhow!("the validated definitions do not compile: {}", e.masked()))?;
        let by_type = VALIDATED_TYPES.iter().map(|ty| (*ty, OnceLock::new())).collect();
        Ok(Self { any_type, by_type, document })
    }

    fn definition(&self, name: &str) -> Option<&Value> {
        self.document.get("definitions")?.get(name)
    }

    /// The validator rooted at `#/definitions/<ty>`, compiled on first use.
    fn type_validator<'a>(
        &self,
        ty: &str,
        cell: &'a OnceLock<Result<jsonschema::Validator, String>>,
    ) -> Result<&'a jsonschema::Validator, String> {
        let compiled = cell.get_or_init(|| {
            let mut doc = self.document.clone();
            if let Some(root) = doc.as_object_mut() {
                root.remove("oneOf");
                root.insert("$ref".into(), Value::String(format!("#/definitions/{ty}")));
            }
            jsonschema::draft6::options().build(&doc).map_err(|e| format!("the definition of {ty} does not compile: {}", e.masked()))
        });
        compiled.as_ref().map_err(Clone::clone)
    }

    /// Validates a resource against `#/definitions/<resourceType>`.
    pub fn validate(&self, resource: &Value) -> Result<(), Vec<Violation>> {
        let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else {
            return Err(vec![Violation { pointer: "/resourceType".into(), message: "resourceType is missing or not a string".into() }]);
        };
        let Some(cell) = self.by_type.get(ty) else {
            return Err(vec![Violation { pointer: "/resourceType".into(), message: format!("resource type {ty} is not supported here") }]);
        };
        if self.any_type.is_valid(resource) {
            return Ok(());
        }
        let mut out: Vec<Violation> = match self.type_validator(ty, cell) {
            Ok(validator) => validator
                .iter_errors(resource)
                .map(|e| Violation { pointer: e.instance_path().as_str().to_string(), message: e.masked().to_string() })
                .collect(),
            Err(message) => vec![Violation { pointer: String::new(), message }],
        };
        out.dedup();
        if out.is_empty() {
            // Never report an invalid resource as valid, whatever the two validators say.
            out.push(Violation { pointer: String::new(), message: format!("does not match the R4 definition of {ty}") });
        }
        Err(out)
    }

    /// Whether the schema defines this resource type.
    pub fn has_type(&self, ty: &str) -> bool {
        self.definition(ty).and_then(|d| d.get("properties")).and_then(|p| p.get("resourceType")).is_some()
    }

    /// The type of element `name` inside definition `definition` (`Encounter`, `period`), or
    /// `None` when the schema has no such element.
    pub fn element(&self, definition: &str, name: &str) -> Option<ElementType> {
        let prop = self.definition(definition)?.get("properties")?.get(name)?;
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
        self.definition(definition).is_some_and(|d| d.get("properties").is_none())
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
    fn the_verdict_is_that_of_the_resources_own_definition() {
        // A valid Location labelled Organization: Organization has no `status`.
        assert_eq!(SCHEMA.validate(&json!({"resourceType": "Location", "status": "active"})), Ok(()));
        let errors = SCHEMA.validate(&json!({"resourceType": "Organization", "status": "active"})).unwrap_err();
        assert!(errors.iter().any(|v| v.pointer.is_empty() && v.message.contains("status")), "{errors:?}");
        let errors = SCHEMA.validate(&json!({"resourceType": "Basic", "code": {}})).unwrap_err();
        assert_eq!(errors[0].pointer, "/resourceType");
        let errors = SCHEMA.validate(&json!({"resourceType": ["Patient"]})).unwrap_err();
        assert_eq!(errors[0].pointer, "/resourceType");
        // Every validated type compiles its own validator for the violations.
        for ty in VALIDATED_TYPES {
            let errors = SCHEMA.validate(&json!({"resourceType": ty, "id": "not an id!"})).unwrap_err();
            assert!(errors.iter().any(|v| v.pointer == "/id"), "{ty}: {errors:?}");
        }
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
