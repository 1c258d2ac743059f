//! SMART on FHIR system scopes, in the v1 form (`system/Encounter.read`) and the v2 form
//! (`system/Encounter.rs`), as the SMART App Launch 2.x "Scopes and Launch Context" page defines
//! them. The gateway only serves reads, so only the `r` (read, vread, instance history) and `s`
//! (search) permissions can be granted; `c`, `u`, `d` and v1 `write` are dropped from a request,
//! which the specification allows (a server may grant less than was asked).

use std::fmt;

/// What a request does with a resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// read, vread, instance history.
    Read,
    /// search (and `_include`d resources of a search).
    Search,
}

/// One granted scope.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scope {
    /// `None` = every type (`*`).
    resource: Option<String>,
    read: bool,
    search: bool,
    /// Written back in the form it was requested in (v1 `.read` or v2 letters).
    v1: bool,
}

impl Scope {
    fn parse(token: &str) -> Result<Option<Scope>, String> {
        let Some(rest) = token.strip_prefix("system/") else {
            // patient/, user/, openid, launch...: not for backend services; not granted.
            return Ok(None);
        };
        let (ty, perm) = rest.split_once('.').ok_or_else(|| format!("scope `{token}` has no permission after the resource type"))?;
        // v2 may add a query (`system/Observation.rs?category=...`); granular scopes are not supported.
        if perm.contains('?') {
            return Err(format!("scope `{token}`: granular scopes with a query are not supported"));
        }
        let resource = match ty {
            "*" => None,
            t if !t.is_empty()
                && t.len() <= 64
                && t.starts_with(|c: char| c.is_ascii_uppercase())
                && t.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                Some(t.to_string())
            }
            _ => return Err(format!("scope `{token}` names no resource type")),
        };
        let (read, search, v1) = match perm {
            "read" | "*" => (true, true, true),
            "write" => (false, false, true),
            p if is_v2_permissions(p) => (p.contains('r'), p.contains('s'), false),
            _ => return Err(format!("scope `{token}`: `{perm}` is neither read, write, * nor a v2 permission string like rs")),
        };
        Ok(Some(Scope { resource, read, search, v1 }))
    }

    /// What both `self` (requested) and `other` (registered) allow, in `self`'s form.
    fn intersect(&self, other: &Scope) -> Option<Scope> {
        let resource = match (&self.resource, &other.resource) {
            (None, r) => r.clone(),
            (Some(r), None) => Some(r.clone()),
            (Some(a), Some(b)) if a == b => Some(a.clone()),
            _ => return None,
        };
        let (read, search) = (self.read && other.read, self.search && other.search);
        (read || search).then_some(Scope { resource, read, search, v1: self.v1 && read && search })
    }
}

/// v2 permissions: a non-empty subsequence of `cruds`, in that order.
fn is_v2_permissions(p: &str) -> bool {
    let mut order = "cruds".chars();
    !p.is_empty() && p.chars().all(|c| order.by_ref().any(|o| o == c))
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ty = self.resource.as_deref().unwrap_or("*");
        if self.v1 {
            return write!(f, "system/{ty}.read");
        }
        write!(f, "system/{ty}.{}{}", if self.read { "r" } else { "" }, if self.search { "s" } else { "" })
    }
}

/// A set of system scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// Parses a space-separated scope string strictly (registration): every entry must be a
    /// `system/` scope that grants something.
    pub fn parse_registered(s: &str) -> Result<Scopes, String> {
        let mut out = Vec::new();
        for token in s.split_ascii_whitespace() {
            match Scope::parse(token)? {
                Some(sc) if sc.read || sc.search => out.push(sc),
                _ => return Err(format!("scope `{token}` grants no read or search access; register system/<Type|*>.read or .rs")),
            }
        }
        if out.is_empty() {
            return Err("no scope given".into());
        }
        Ok(Scopes(out))
    }

    /// The part of a token request's `scope` that the client's registered scopes allow, for
    /// the resource types this server serves (`served`). Errors when the request is malformed;
    /// an empty result means nothing could be granted.
    pub fn grant(requested: &str, registered: &Scopes, served: &[&str]) -> Result<Scopes, String> {
        let mut out: Vec<Scope> = Vec::new();
        for token in requested.split_ascii_whitespace() {
            let Some(want) = Scope::parse(token)? else { continue };
            if want.resource.as_deref().is_some_and(|r| !served.contains(&r)) {
                continue;
            }
            for have in &registered.0 {
                if let Some(s) = want.intersect(have)
                    && !out.contains(&s)
                {
                    out.push(s);
                }
            }
        }
        Ok(Scopes(out))
    }

    /// Whether these scopes allow `interaction` on `resource_type`.
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.0.iter().any(|s| {
            s.resource.as_deref().is_none_or(|r| r == resource_type)
                && match interaction {
                    Interaction::Read => s.read,
                    Interaction::Search => s.search,
                }
        })
    }

    /// No scope at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> Scopes {
        Scopes::parse_registered(s).unwrap()
    }

    const SERVED: &[&str] = &["Patient", "Encounter", "Condition"];

    fn grant(requested: &str, registered: &Scopes) -> Result<Scopes, String> {
        Scopes::grant(requested, registered, SERVED)
    }

    #[test]
    fn v1_and_v2_forms_are_read() {
        let s = grant("system/Encounter.read system/Patient.rs system/Condition.s", &reg("system/*.read")).unwrap();
        assert_eq!(s.to_string(), "system/Encounter.read system/Patient.rs system/Condition.s");
        assert!(s.allows("Encounter", Interaction::Read) && s.allows("Encounter", Interaction::Search));
        assert!(s.allows("Condition", Interaction::Search) && !s.allows("Condition", Interaction::Read));
        assert!(!s.allows("Coverage", Interaction::Read));
    }

    #[test]
    fn grant_is_the_intersection_with_the_registration() {
        let s = grant("system/*.read", &reg("system/Encounter.rs system/Patient.r")).unwrap();
        assert!(grant("system/Claim.read", &reg("system/*.read")).unwrap().is_empty(), "not a served type");
        assert_eq!(s.to_string(), "system/Encounter.read system/Patient.r");
        let none = grant("system/Claim.read", &reg("system/Encounter.read")).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn write_permissions_are_never_granted() {
        let s = grant("system/*.write system/Encounter.cruds", &reg("system/*.read")).unwrap();
        assert_eq!(s.to_string(), "system/Encounter.rs");
        assert!(Scopes::parse_registered("system/*.write").is_err());
    }

    #[test]
    fn other_scopes_are_ignored_and_nonsense_is_refused() {
        assert!(grant("openid launch patient/*.read", &reg("system/*.read")).unwrap().is_empty());
        for bad in ["system/Encounter", "system/encounter.read", "system/Encounter.sr", "system/Encounter.rs?x=1", "system/.read"] {
            assert!(grant(bad, &reg("system/*.read")).is_err(), "{bad}");
        }
    }
}
