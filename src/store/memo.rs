//! Decision facts kept in memory between partner reads (SQLite only).
//!
//! A partner's read of an Encounter needs its session's decision facts and its student's
//! consents, compiled. Reading them with every request (a join over `sessions` and
//! `consent_directives`, then parsing and compiling each directive) cost about as much as the
//! read itself. On SQLite every write to those facts bumps `facts_generation` (triggers, see the
//! migration `facts_generation`), and the read brings the generation along in the same statement,
//! so the facts kept here are used only while they are still those of the database: the first
//! read after any change misses, reads the facts again and keeps them under the new generation.
//! That holds for writes from any process (an import run beside the server) and any connection.
//!
//! A miss reads the facts and the generation in one statement (one snapshot), so what is kept
//! under a generation is exactly the database's state at it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::consents::SessionFacts;
use crate::consent::Compiled;

/// Most sessions kept; the memo is emptied when it would hold more (each holds a few hundred bytes
/// and its student's compiled consents).
pub const MAX_SESSIONS: usize = 16_384;

/// The facts of one session as a read uses them: the session and its student's compiled consents.
pub type Remembered = (SessionFacts, Arc<[Compiled]>);

/// See the module doc.
#[derive(Debug, Default)]
pub struct FactsMemo {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The generation every kept fact is current at.
    generation: i64,
    sessions: HashMap<String, Arc<SessionFacts>>,
    /// By student: every consent of theirs, compiled.
    consents: HashMap<String, Arc<[Compiled]>>,
}

impl Inner {
    /// Moves to `generation` when it is newer (everything kept is then stale and dropped); false
    /// when `generation` is older than what is kept (a reader that began before a write).
    fn at(&mut self, generation: i64) -> bool {
        if generation > self.generation {
            self.generation = generation;
            self.sessions.clear();
            self.consents.clear();
        }
        generation == self.generation
    }
}

impl FactsMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves maps that are merely incomplete: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The facts of `session_id` kept at `generation`, if any.
    pub fn get(&self, generation: i64, session_id: &str) -> Option<Remembered> {
        let mut inner = self.lock();
        if !inner.at(generation) {
            return None;
        }
        let s = inner.sessions.get(session_id)?.clone();
        let consents = match &s.patient_id {
            Some(p) => inner.consents.get(p)?.clone(),
            None => Arc::from(Vec::new()),
        };
        Some(((*s).clone(), consents))
    }

    /// Keeps facts read at `generation` (or after it was read): `sessions` and, by student, every
    /// consent of each of their students (a student missing from `consents` has none).
    pub fn put(&self, generation: i64, sessions: &[SessionFacts], consents: &HashMap<String, Vec<Compiled>>) {
        let mut inner = self.lock();
        if !inner.at(generation) {
            return;
        }
        if inner.sessions.len() + sessions.len() > MAX_SESSIONS {
            inner.sessions.clear();
            inner.consents.clear();
        }
        for s in sessions {
            if let Some(p) = &s.patient_id {
                let list = consents.get(p).map_or_else(|| Arc::from(Vec::new()), |l| Arc::from(l.as_slice()));
                inner.consents.insert(p.clone(), list);
            }
            inner.sessions.insert(s.id.clone(), Arc::new(s.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, site: &str) -> SessionFacts {
        SessionFacts {
            id: id.into(),
            lea_id: "lea-demo".into(),
            site_id: site.into(),
            service_start: chrono::Utc::now(),
            patient_id: Some(format!("patient-of-{id}")),
            security: None,
            service_date: None,
            adult_from: None,
        }
    }

    #[test]
    fn kept_facts_are_used_only_at_their_generation() {
        let memo = FactsMemo::default();
        memo.put(3, &[session("s1", "a")], &HashMap::new());
        let (s, consents) = memo.get(3, "s1").expect("kept at generation 3");
        assert_eq!((s.site_id.as_str(), consents.len()), ("a", 0));
        assert!(memo.get(3, "s2").is_none(), "never kept");
        // A reader that began before a write (older generation) neither uses nor keeps facts.
        assert!(memo.get(2, "s1").is_none());
        memo.put(2, &[session("s2", "old")], &HashMap::new());
        assert!(memo.get(3, "s2").is_none());
        // A newer generation drops everything kept before it.
        assert!(memo.get(4, "s1").is_none());
        assert!(memo.get(3, "s1").is_none(), "generation 3 is gone for good");
        memo.put(4, &[session("s1", "b")], &HashMap::new());
        assert_eq!(memo.get(4, "s1").map(|(s, _)| s.site_id), Some("b".to_string()));
    }

    #[test]
    fn the_memo_is_emptied_rather_than_grown_past_its_bound() {
        let memo = FactsMemo::default();
        let many: Vec<SessionFacts> = (0..MAX_SESSIONS).map(|i| session(&format!("s{i}"), "a")).collect();
        memo.put(1, &many, &HashMap::new());
        assert!(memo.get(1, "s0").is_some());
        memo.put(1, &[session("extra", "a")], &HashMap::new());
        assert!(memo.get(1, "s0").is_none(), "emptied when full");
        assert!(memo.get(1, "extra").is_some());
        assert!(memo.lock().sessions.len() <= MAX_SESSIONS);
    }
}
