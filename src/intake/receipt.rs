//! What a submitter gets back.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::fhir::OperationOutcome;
use crate::store::WriteStatus;

/// Status of one record of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RecordStatus {
    /// New session stored (version 1).
    Created,
    /// Changed record stored as a new version.
    Amended,
    /// Identical to the stored version; nothing changed.
    Duplicate,
    /// Refused; see `outcome`.
    Rejected,
    /// Valid, but not stored because an atomic batch had rejected records.
    NotStored,
}

impl From<WriteStatus> for RecordStatus {
    fn from(s: WriteStatus) -> Self {
        match s {
            WriteStatus::Created => RecordStatus::Created,
            WriteStatus::Amended => RecordStatus::Amended,
            WriteStatus::Duplicate => RecordStatus::Duplicate,
        }
    }
}

/// The result for one record.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecordResult {
    /// Zero-based position in the batch.
    pub index: usize,
    /// Line of an NDJSON body or CSV file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// The record's source_id, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// What happened.
    pub status: RecordStatus,
    /// Session id (stored records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Current version (stored records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// When the current version was received (stored records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_at: Option<DateTime<Utc>>,
    /// Why the record was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub outcome: Option<OperationOutcome>,
}

/// The answer to a `$batch` request or one chunk of a file import.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BatchReceipt {
    /// Id of this batch (stored with every version it wrote).
    pub batch_id: String,
    /// Whether the batch was all-or-nothing.
    pub atomic: bool,
    /// Whether anything was stored.
    pub committed: bool,
    /// Records received.
    pub received: usize,
    /// New sessions.
    pub created: usize,
    /// New versions of existing sessions.
    pub amended: usize,
    /// Identical re-submissions.
    pub duplicate: usize,
    /// Refused records.
    pub rejected: usize,
    /// One entry per record, in order.
    pub results: Vec<RecordResult>,
}

/// The answer to a single-session POST.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionReceipt {
    /// Session id (stable for the LEA's source_id).
    pub id: String,
    /// Submitting LEA.
    pub lea: String,
    /// The LEA's id for the session.
    pub source_id: String,
    /// Current version.
    pub version: i64,
    /// created, amended or duplicate.
    pub status: RecordStatus,
    /// When the current version was received.
    pub received_at: DateTime<Utc>,
}
