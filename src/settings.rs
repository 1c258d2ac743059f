//! Typed settings: built-in defaults, then one TOML file (`config/default.toml`, or the file given
//! with `--config`), then environment variables `WG__SECTION__KEY`.
//!
//! Every struct denies unknown fields, so a typo is an error that names the key and the file it
//! came from (figment's metadata). After deserialising, [`Settings::check`] verifies the cross
//! references (a site's LEA exists, a partnership names an FQHC, TLS files exist, plain HTTP only
//! on loopback) and names the offending key.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The file used when no `--config` is given.
pub const DEFAULT_CONFIG_FILE: &str = "config/default.toml";

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file or an environment variable did not deserialise; figment names key and source.
    /// (The figment error is shown, not chained, so it appears once.)
    #[error("configuration error: {0}")]
    Load(Box<figment::Error>),
    /// A value is well-formed but wrong (a dangling reference, a missing TLS file...).
    #[error("configuration error in {source_name}: {key}: {message}")]
    Invalid {
        /// The file (or "environment") the value came from.
        source_name: String,
        /// Dotted key of the offending value.
        key: String,
        /// What is wrong, in one sentence.
        message: String,
    },
    /// The configuration file does not exist.
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
}

/// All settings of the gateway.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Settings {
    /// HTTP listener.
    pub server: ServerSettings,
    /// Storage.
    pub database: DatabaseSettings,
    /// Logging.
    pub log: LogSettings,
    /// Intake limits and semantic-check thresholds.
    pub intake: IntakeSettings,
    /// SMART Backend Services tokens for FQHC partners.
    pub auth: AuthSettings,
    /// FHIR Bulk Data export.
    pub export: ExportSettings,
    /// FHIR Subscriptions (rest-hook change notifications).
    pub subscriptions: SubscriptionSettings,
    /// Claims: the claim worker and the X12 interchange identity.
    pub billing: BillingSettings,
    /// Local educational agencies and FQHCs.
    pub organizations: Vec<Organization>,
    /// School sites.
    pub sites: Vec<Site>,
    /// Which FQHC serves which school sites.
    pub partnerships: Vec<Partnership>,
    /// Roster of clinicians per LEA (used by the demo and, later, by billing and reports).
    pub clinicians: Vec<Clinician>,
    /// Where the rule files live.
    pub rules: RulesSettings,
    /// Where the settings came from (not a key; filled in by the loader).
    #[serde(skip)]
    pub source_file: Option<PathBuf>,
}

/// HTTP listener settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to bind. Plain HTTP is refused on non-loopback addresses unless allowed below.
    pub host: String,
    /// Port to bind; 0 picks a free port (tests).
    pub port: u16,
    /// Worker threads; 0 = one per core.
    pub workers: usize,
    /// Allow plain HTTP on a non-loopback address (for a TLS-terminating proxy in front).
    pub allow_insecure_http: bool,
    /// Largest request body accepted, in bytes (a 10,000-record batch is about 10 MB).
    pub max_body_bytes: usize,
    /// How long a verified client secret is remembered in memory, in seconds (0 = look every
    /// request up). Disabling or removing a client takes effect after at most this long.
    pub auth_cache_seconds: u64,
    /// TLS with rustls.
    pub tls: TlsSettings,
}

/// SMART Backend Services: how partners' client assertions are checked and access tokens issued.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Key that signs access tokens (HS256), at least 32 bytes. Every instance sharing a database
    /// needs the same key. Unset: a random key per process (tokens die with a restart and are not
    /// accepted by another instance), with a warning. Set it through `WG__AUTH__TOKEN_SIGNING_KEY`.
    #[serde(serialize_with = "serialize_opt_secret")]
    pub token_signing_key: Option<SecretString>,
    /// Lifetime of an access token, in seconds (SMART recommends no more than 300).
    pub access_token_seconds: u64,
    /// Longest a client assertion may live (`exp` no further than this in the future), in seconds.
    pub assertion_max_seconds: u64,
    /// Clock skew tolerated on `exp`, in seconds.
    pub leeway_seconds: u64,
    /// How long a JWKS fetched from a client's `jwks_url` is cached, in seconds. An unknown `kid`
    /// refetches at most once per `jwks_refetch_seconds`.
    pub jwks_cache_seconds: u64,
    /// See `jwks_cache_seconds`.
    pub jwks_refetch_seconds: u64,
    /// Allow `http://` JWKS URLs (tests and local development only; partners must use https).
    pub allow_http_jwks: bool,
    /// The token endpoint URL partners put in `aud`, if it differs from what the request shows
    /// (behind a proxy): e.g. `https://gateway.example.org/auth/token`.
    pub token_url: Option<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            token_signing_key: None,
            access_token_seconds: 300,
            assertion_max_seconds: 300,
            leeway_seconds: 30,
            jwks_cache_seconds: 300,
            jwks_refetch_seconds: 10,
            allow_http_jwks: false,
            token_url: None,
        }
    }
}

/// FHIR Bulk Data export (`$export`): where files go, how they are split, how long they live.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSettings {
    /// Folder of the export files (one sub-folder per job). Instances sharing a PostgreSQL
    /// database must share this folder too (a network volume), since any of them may run a job
    /// and any may serve its files.
    pub dir: PathBuf,
    /// A file holds at most this many resources...
    pub max_file_resources: u64,
    /// ...and at most about this many bytes (uncompressed); the next resource starts a new file.
    pub max_file_bytes: u64,
    /// Store files gzip-compressed; served with `Content-Encoding: gzip` to clients that accept
    /// it and decompressed on the fly for those that do not.
    pub gzip: bool,
    /// How long the files of a completed job stay downloadable, in hours (counted from
    /// completion; a running job never expires).
    pub expire_hours: u64,
    /// Jobs a client may have queued or running at once; one more answers 429.
    pub max_jobs_per_client: u64,
    /// Jobs this instance runs at the same time (0: this instance accepts and serves exports but
    /// leaves running them to other instances sharing the database).
    pub workers: usize,
    /// How often an idle worker looks for queued or abandoned jobs, in seconds.
    pub poll_seconds: u64,
    /// A running job's lease; a job whose owner stopped renewing it for this long is taken over
    /// by another worker (after a crash or restart), in seconds.
    pub lease_seconds: u64,
    /// `Retry-After` of status answers while a job runs, in seconds.
    pub retry_after_seconds: u64,
    /// Resources read and judged per database round trip.
    pub batch_size: u32,
}

impl Default for ExportSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("data/exports"),
            max_file_resources: 100_000,
            max_file_bytes: 256 * 1024 * 1024,
            gzip: false,
            expire_hours: 168,
            max_jobs_per_client: 2,
            workers: 1,
            poll_seconds: 5,
            lease_seconds: 60,
            retry_after_seconds: 5,
            batch_size: 1000,
        }
    }
}

/// FHIR Subscriptions: how notifications are delivered and retried.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubscriptionSettings {
    /// Allow `http://` endpoints (local development and tests only; partners must use https).
    pub allow_http_endpoints: bool,
    /// Subscriptions a client may have that are not off.
    pub max_per_client: u64,
    /// A notification is retried for this long after it was queued, then dead-lettered, in hours.
    pub retry_hours: u64,
    /// First retry delay, in milliseconds; each further retry waits twice as long...
    pub backoff_initial_ms: u64,
    /// ...up to this, in seconds.
    pub backoff_max_seconds: u64,
    /// How often the change feed and the delivery queue are looked at, in milliseconds.
    pub poll_ms: u64,
    /// Timeout of one notification request, in seconds.
    pub timeout_seconds: u64,
    /// Deliverers this instance runs (0: leave delivering to other instances).
    pub workers: usize,
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        Self {
            allow_http_endpoints: false,
            max_per_client: 20,
            retry_hours: 24,
            backoff_initial_ms: 5_000,
            backoff_max_seconds: 3_600,
            poll_ms: 1_000,
            timeout_seconds: 10,
            workers: 1,
        }
    }
}

/// Locations of the rule files compiled at start-up.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesSettings {
    /// Folder of the JSON Schemas (`session.schema.json`).
    pub schemas_dir: PathBuf,
    /// Folder of the mapping files (`fhir/`, `tables/`, `security/`, `overrides/<org>/`).
    pub mappings_dir: PathBuf,
}

impl Default for RulesSettings {
    fn default() -> Self {
        Self { schemas_dir: PathBuf::from("schemas"), mappings_dir: PathBuf::from("mappings") }
    }
}

/// TLS settings.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Serve HTTPS.
    pub enabled: bool,
    /// PEM certificate chain.
    pub cert_path: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: Option<PathBuf>,
}

/// Storage settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://path/to/file.db` (embedded default) or `postgres://user@host/db`.
    #[serde(serialize_with = "serialize_secret")]
    pub url: SecretString,
    /// Pool size.
    pub max_connections: u32,
    /// How long a SQLite writer waits for the lock, in milliseconds.
    pub sqlite_busy_timeout_ms: u64,
    /// Run migrations when the server starts.
    pub migrate_on_start: bool,
    /// SQLite: how often the audit journal is loaded into the database, in milliseconds (see
    /// `audit::journal`; readers of the trail load it first, so this only sets the batch size).
    pub audit_journal_load_ms: u64,
}

/// Logging settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `pretty` (development) or `json` (production).
    pub format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `wellness_gateway=debug,info`. `RUST_LOG` wins.
    pub level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, coloured on a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Intake limits and semantic thresholds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeSettings {
    /// Most records in one `$batch` request.
    pub max_batch_records: usize,
    /// Shortest plausible session, in minutes.
    pub min_session_minutes: i64,
    /// Longest plausible session, in minutes.
    pub max_session_minutes: i64,
    /// How far in the future a timestamp may lie (clock skew), in seconds.
    pub future_tolerance_secs: i64,
    /// Youngest plausible student age at the date of service, in years.
    pub min_student_age_years: i64,
    /// Oldest plausible student age at the date of service, in years (CYBHI serves students under 26).
    pub max_student_age_years: i64,
    /// Minimum age for a minor to consent to counselling themself (California Family Code 6924).
    pub minor_self_consent_min_age_years: i64,
    /// Default page size of session listings.
    pub page_size_default: u32,
    /// Largest page size of session listings.
    pub page_size_max: u32,
}

/// Kind of organisation.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum OrgKind {
    /// Local educational agency: county office of education or school district.
    Lea,
    /// Federally Qualified Health Center.
    Fqhc,
}

impl OrgKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrgKind::Lea => "lea",
            OrgKind::Fqhc => "fqhc",
        }
    }
}

/// An LEA or FQHC.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Organization {
    /// Stable id used in API records (`lea-demo`).
    pub id: String,
    /// `lea` or `fqhc`.
    pub kind: OrgKind,
    /// Display name.
    pub name: String,
    /// County-District-School code of an LEA (14 digits, school part zero).
    #[serde(default)]
    pub cds_code: Option<String>,
    /// Organisation NPI (FQHC billing provider).
    #[serde(default)]
    pub npi: Option<String>,
    /// Federal tax id.
    #[serde(default)]
    pub tin: Option<String>,
    /// NUCC taxonomy of the organisation as billing provider (837 PRV*BI).
    #[serde(default)]
    pub taxonomy: Option<String>,
    /// Street address (837 billing provider N3/N4; ZIP+4).
    #[serde(default)]
    pub address: Option<Address>,
}

/// A postal address (X12 N3/N4).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// Street line.
    pub line1: String,
    /// Second street line.
    #[serde(default)]
    pub line2: Option<String>,
    /// City.
    pub city: String,
    /// Two-letter state code.
    pub state: String,
    /// ZIP code (ZIP+4 as 9 digits where the 837 needs it).
    pub zip: String,
}

/// Claims: the claim worker and the identity the gateway uses in X12 interchanges.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingSettings {
    /// Run the claim worker in this instance (it turns billable session versions into claims,
    /// replacements and voids). Several instances may run it; each session is settled once.
    pub worker: bool,
    /// How often the worker looks for sessions to settle, in seconds.
    pub poll_seconds: u64,
    /// ISA05/ISA06 qualifier and id of the gateway as interchange sender (also GS02 and the
    /// 837 submitter id, loop 1000A).
    pub sender_qualifier: String,
    /// See `sender_qualifier`.
    pub sender_id: String,
    /// Submitter name (1000A NM103).
    pub submitter_name: String,
    /// Submitter contact name (1000A PER02).
    pub contact_name: String,
    /// Submitter contact phone, digits only (1000A PER04).
    pub contact_phone: String,
    /// ISA07/ISA08 qualifier and id of the receiver (clearinghouse); also GS03 and 1000B.
    pub receiver_qualifier: String,
    /// See `receiver_qualifier`.
    pub receiver_id: String,
    /// Receiver name (1000B NM103).
    pub receiver_name: String,
    /// `T` test or `P` production interchanges (ISA15).
    pub usage: String,
    /// Where each payer's 837 files are sent (a batch for a payer without one stays `built` for
    /// finance to download).
    pub clearinghouses: Vec<Clearinghouse>,
    /// Allow `http://` clearinghouse URLs (local development and tests only).
    pub allow_http_clearinghouse: bool,
    /// How long a batch is retried before it is marked failed (admins re-drive it), in seconds.
    pub submit_retry_seconds: u64,
    /// First retry delay in milliseconds; doubles each retry...
    pub backoff_initial_ms: u64,
    /// ...up to this many seconds.
    pub backoff_max_seconds: u64,
    /// Timeout of one submission request, in seconds.
    pub timeout_seconds: u64,
}

/// A payer's clearinghouse endpoint: batches are POSTed there as `application/edi-x12`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Clearinghouse {
    /// Payer id (`mappings/billing/payers.toml`).
    pub payer: String,
    /// HTTPS URL.
    pub url: String,
    /// Bearer token, if the clearinghouse wants one (set it through the environment).
    #[serde(default, serialize_with = "serialize_opt_secret")]
    pub token: Option<SecretString>,
}

impl Default for BillingSettings {
    fn default() -> Self {
        Self {
            worker: true,
            poll_seconds: 5,
            sender_qualifier: "ZZ".into(),
            sender_id: "WELLNESSGW".into(),
            submitter_name: "WELLNESS GATEWAY".into(),
            contact_name: "BILLING OFFICE".into(),
            contact_phone: "9165550100".into(),
            receiver_qualifier: "ZZ".into(),
            receiver_id: "CLEARINGHOUSE".into(),
            receiver_name: "CLEARINGHOUSE".into(),
            usage: "T".into(),
            clearinghouses: Vec::new(),
            allow_http_clearinghouse: false,
            submit_retry_seconds: 24 * 3600,
            backoff_initial_ms: 5_000,
            backoff_max_seconds: 3_600,
            timeout_seconds: 30,
        }
    }
}

/// A school site.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Stable id used in API records (`site-demo-hs`).
    pub id: String,
    /// The LEA the site belongs to.
    pub lea: String,
    /// Display name.
    pub name: String,
    /// 14-digit California CDS code.
    #[serde(default)]
    pub cds_code: Option<String>,
    /// 12-digit NCES school id.
    #[serde(default)]
    pub nces_id: Option<String>,
    /// Monthly clinician cost of the site in cents (sustainability reports).
    #[serde(default)]
    pub clinician_cost_cents_per_month: Option<i64>,
    /// Street address (837 service facility N3/N4).
    #[serde(default)]
    pub address: Option<Address>,
}

/// An FQHC that serves school sites as satellite sites.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Partnership {
    /// The FQHC organisation id.
    pub fqhc: String,
    /// Site ids in the FQHC's scope of project.
    pub sites: Vec<String>,
    /// First day of the partnership (YYYY-MM-DD).
    #[serde(default)]
    pub effective_from: Option<chrono::NaiveDate>,
    /// Last day of the partnership, if ended.
    #[serde(default)]
    pub effective_to: Option<chrono::NaiveDate>,
}

/// A clinician on an LEA's roster.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Clinician {
    /// 10-digit NPI.
    pub npi: String,
    /// The employing LEA.
    pub lea: String,
    /// Given name (synthetic in the demo).
    pub given_name: String,
    /// Family name.
    pub family_name: String,
    /// Credential as in the session schema.
    pub credential: String,
}

fn serialize_opt_secret<S: serde::Serializer>(s: &Option<SecretString>, ser: S) -> Result<S::Ok, S::Error> {
    match s {
        Some(s) => ser.serialize_some(s.expose_secret()),
        None => ser.serialize_none(),
    }
}

fn serialize_secret<S: serde::Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose_secret())
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            workers: 0,
            allow_insecure_http: false,
            max_body_bytes: 16 * 1024 * 1024,
            auth_cache_seconds: 10,
            tls: TlsSettings::default(),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("sqlite://data/wellness-gateway.db"),
            max_connections: 8,
            sqlite_busy_timeout_ms: 5_000,
            migrate_on_start: true,
            audit_journal_load_ms: 1_000,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: LogFormat::Pretty, level: "info".into() }
    }
}

impl Default for IntakeSettings {
    fn default() -> Self {
        Self {
            max_batch_records: 10_000,
            min_session_minutes: 1,
            max_session_minutes: 240,
            future_tolerance_secs: 300,
            min_student_age_years: 2,
            max_student_age_years: 26,
            minor_self_consent_min_age_years: 12,
            page_size_default: 100,
            page_size_max: 1_000,
        }
    }
}

impl From<figment::Error> for SettingsError {
    fn from(e: figment::Error) -> Self {
        SettingsError::Load(Box::new(e))
    }
}

impl Settings {
    /// Loads defaults, then `file` (or [`DEFAULT_CONFIG_FILE`] when it exists), then `WG__*`
    /// environment variables, and checks the result.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        let chosen = match file {
            Some(path) if !path.exists() => return Err(SettingsError::MissingFile(path.into())),
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        if let Some(path) = &chosen {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment.merge(Env::prefixed("WG__").split("__"));
        Self::from_figment(figment, chosen)
    }

    /// Extracts and checks settings from an already-layered figment (used by tests).
    pub fn from_figment(figment: Figment, source: Option<PathBuf>) -> Result<Settings, SettingsError> {
        let mut settings: Settings = figment.extract()?;
        settings.source_file = source;
        settings.check()?;
        Ok(settings)
    }

    fn source_name(&self) -> String {
        self.source_file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults / environment".into())
    }

    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> SettingsError {
        SettingsError::Invalid { source_name: self.source_name(), key: key.into(), message: message.into() }
    }

    /// Cross-field checks; every error names the key.
    pub fn check(&self) -> Result<(), SettingsError> {
        let mut org_ids = BTreeSet::new();
        for (i, org) in self.organizations.iter().enumerate() {
            if org.id.trim().is_empty() {
                return Err(self.invalid(format!("organizations[{i}].id"), "must not be empty"));
            }
            if !org_ids.insert(org.id.as_str()) {
                return Err(self.invalid(format!("organizations[{i}].id"), format!("duplicate organisation id {:?}", org.id)));
            }
        }
        let kind_of = |id: &str| self.organizations.iter().find(|o| o.id == id).map(|o| o.kind);
        let mut site_ids = BTreeSet::new();
        for (i, site) in self.sites.iter().enumerate() {
            if !site_ids.insert(site.id.as_str()) {
                return Err(self.invalid(format!("sites[{i}].id"), format!("duplicate site id {:?}", site.id)));
            }
            if kind_of(&site.lea) != Some(OrgKind::Lea) {
                return Err(self.invalid(
                    format!("sites[{i}].lea"),
                    format!("{:?} is not an organisation of kind \"lea\" in [[organizations]]", site.lea),
                ));
            }
        }
        for (i, p) in self.partnerships.iter().enumerate() {
            if kind_of(&p.fqhc) != Some(OrgKind::Fqhc) {
                return Err(self.invalid(
                    format!("partnerships[{i}].fqhc"),
                    format!("{:?} is not an organisation of kind \"fqhc\" in [[organizations]]", p.fqhc),
                ));
            }
            for (j, s) in p.sites.iter().enumerate() {
                if !site_ids.contains(s.as_str()) {
                    return Err(self.invalid(format!("partnerships[{i}].sites[{j}]"), format!("{s:?} is not a configured site")));
                }
            }
            if let (Some(from), Some(to)) = (p.effective_from, p.effective_to)
                && to < from
            {
                return Err(self.invalid(format!("partnerships[{i}].effective_to"), "is before effective_from"));
            }
        }
        for (i, c) in self.clinicians.iter().enumerate() {
            if kind_of(&c.lea) != Some(OrgKind::Lea) {
                return Err(self.invalid(format!("clinicians[{i}].lea"), format!("{:?} is not a configured LEA", c.lea)));
            }
            if crate::domain::Npi::parse(&c.npi).is_err() {
                return Err(self.invalid(format!("clinicians[{i}].npi"), "is not a valid NPI (10 digits with a Luhn check digit)"));
            }
        }
        let intake = &self.intake;
        let address_ok = |a: &Address| {
            !a.line1.trim().is_empty()
                && !a.city.trim().is_empty()
                && a.state.len() == 2
                && a.state.bytes().all(|b| b.is_ascii_uppercase())
                && matches!(a.zip.len(), 5 | 9)
                && a.zip.bytes().all(|b| b.is_ascii_digit())
        };
        for (i, org) in self.organizations.iter().enumerate() {
            if org.address.as_ref().is_some_and(|a| !address_ok(a)) {
                return Err(
                    self.invalid(format!("organizations[{i}].address"), "needs line1, city, a two-letter state and a 5- or 9-digit zip")
                );
            }
        }
        for (i, site) in self.sites.iter().enumerate() {
            if site.address.as_ref().is_some_and(|a| !address_ok(a)) {
                return Err(self.invalid(format!("sites[{i}].address"), "needs line1, city, a two-letter state and a 5- or 9-digit zip"));
            }
        }
        if !matches!(self.billing.usage.as_str(), "T" | "P") {
            return Err(self.invalid("billing.usage", "is T (test) or P (production)"));
        }
        for (key, v, max) in [("billing.sender_id", &self.billing.sender_id, 15), ("billing.receiver_id", &self.billing.receiver_id, 15)] {
            if v.is_empty() || v.len() > max || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ') {
                return Err(self.invalid(key, format!("is 1 to {max} letters, digits or spaces")));
            }
        }
        if self.billing.poll_seconds == 0 {
            return Err(self.invalid("billing.poll_seconds", "must be at least 1"));
        }
        for (i, c) in self.billing.clearinghouses.iter().enumerate() {
            let ok = c.url.starts_with("https://") || (self.billing.allow_http_clearinghouse && c.url.starts_with("http://"));
            if !ok || reqwest::Url::parse(&c.url).is_err() {
                return Err(self.invalid(
                    format!("billing.clearinghouses[{i}].url"),
                    "must be an https:// URL (http:// only with billing.allow_http_clearinghouse)",
                ));
            }
            if self.billing.clearinghouses[..i].iter().any(|o| o.payer == c.payer) {
                return Err(
                    self.invalid(format!("billing.clearinghouses[{i}].payer"), format!("{:?} has another clearinghouse already", c.payer))
                );
            }
        }
        if intake.min_session_minutes < 1 || intake.max_session_minutes < intake.min_session_minutes {
            return Err(self.invalid("intake.max_session_minutes", "must be >= intake.min_session_minutes >= 1"));
        }
        if intake.max_batch_records == 0 {
            return Err(self.invalid("intake.max_batch_records", "must be at least 1"));
        }
        if intake.page_size_default == 0 || intake.page_size_default > intake.page_size_max {
            return Err(self.invalid("intake.page_size_default", "must be between 1 and intake.page_size_max"));
        }
        if let Some(key) = &self.auth.token_signing_key
            && key.expose_secret().len() < 32
        {
            return Err(self.invalid("auth.token_signing_key", "must be at least 32 bytes"));
        }
        if self.auth.access_token_seconds == 0 || self.auth.access_token_seconds > 3600 {
            return Err(self.invalid("auth.access_token_seconds", "must be between 1 and 3600"));
        }
        if self.auth.assertion_max_seconds == 0 {
            return Err(self.invalid("auth.assertion_max_seconds", "must be at least 1"));
        }
        let export = &self.export;
        if export.max_file_resources == 0 || export.max_file_bytes < 1024 {
            return Err(
                self.invalid("export.max_file_resources", "files must hold at least 1 resource and 1024 bytes (export.max_file_bytes)")
            );
        }
        if export.expire_hours == 0 || export.max_jobs_per_client == 0 {
            return Err(self.invalid("export", "expire_hours and max_jobs_per_client must be at least 1"));
        }
        if export.lease_seconds < 5 || export.poll_seconds == 0 || export.batch_size == 0 {
            return Err(self.invalid("export.lease_seconds", "must be at least 5 (and poll_seconds, batch_size at least 1)"));
        }
        let subs = &self.subscriptions;
        if subs.retry_hours == 0 || subs.backoff_initial_ms == 0 || subs.poll_ms == 0 || subs.timeout_seconds == 0 {
            return Err(self.invalid("subscriptions", "retry_hours, backoff_initial_ms, poll_ms and timeout_seconds must be at least 1"));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(self.invalid("server.max_body_bytes", "must be at least 1024"));
        }
        let url = self.database.url.expose_secret();
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(self.invalid("database.url", "must start with sqlite: or postgres://"));
        }
        if self.server.tls.enabled {
            for (key, path) in [("server.tls.cert_path", &self.server.tls.cert_path), ("server.tls.key_path", &self.server.tls.key_path)] {
                match path {
                    None => return Err(self.invalid(key, "is required when server.tls.enabled = true")),
                    Some(p) if !p.exists() => return Err(self.invalid(key, format!("file {} does not exist", p.display()))),
                    Some(_) => {}
                }
            }
        } else {
            let ip: Option<IpAddr> = self.server.host.parse().ok();
            let loopback = self.server.host == "localhost" || ip.is_some_and(|ip| ip.is_loopback());
            if !loopback && !self.server.allow_insecure_http {
                return Err(self.invalid(
                    "server.host",
                    format!(
                        "plain HTTP on {} is refused: enable server.tls or set server.allow_insecure_http = true behind a TLS-terminating proxy",
                        self.server.host
                    ),
                ));
            }
        }
        let loopback = self.server.host == "localhost" || self.server.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback && self.auth.token_url.is_none() {
            return Err(self.invalid(
                "auth.token_url",
                "is required when serving off loopback: the audience partners sign for must not come from the request's Host header",
            ));
        }
        Ok(())
    }

    /// The organisation with this id.
    pub fn organization(&self, id: &str) -> Option<&Organization> {
        self.organizations.iter().find(|o| o.id == id)
    }

    /// The FQHC whose partnership covers this site.
    pub fn fqhc_for_site(&self, site: &str) -> Option<&Organization> {
        self.partnerships.iter().find(|p| p.sites.iter().any(|s| s == site)).and_then(|p| self.organization(&p.fqhc))
    }

    /// A site by id.
    pub fn site(&self, id: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.id == id)
    }

    /// `true` when the database URL selects PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.database.url.expose_secret().starts_with("postgres")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Settings, SettingsError> {
        let figment = Figment::from(Serialized::defaults(Settings::default())).merge(Toml::string(text));
        Settings::from_figment(figment, Some("test.toml".into()))
    }

    #[test]
    fn unknown_key_is_named() {
        let err = from_toml("[server]\nprot = 1\n").unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = from_toml("[server]\nport = \"eighty\"\n").unwrap_err().to_string();
        assert!(err.contains("server.port"), "{err}");
    }

    #[test]
    fn dangling_site_lea_is_named() {
        let err = from_toml("[[sites]]\nid = \"s\"\nlea = \"nope\"\nname = \"S\"\n").unwrap_err().to_string();
        assert!(err.contains("sites[0].lea") && err.contains("test.toml"), "{err}");
    }

    #[test]
    fn plain_http_refused_off_loopback() {
        let err = from_toml("[server]\nhost = \"0.0.0.0\"\n").unwrap_err().to_string();
        assert!(err.contains("server.host"), "{err}");
        let off_loopback = "[server]\nhost = \"0.0.0.0\"\nallow_insecure_http = true\n";
        assert!(from_toml(off_loopback).unwrap_err().to_string().contains("auth.token_url"));
        assert!(from_toml(&format!("{off_loopback}[auth]\ntoken_url = \"https://gw.example.org/auth/token\"\n")).is_ok());
    }

    #[test]
    fn shipped_default_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
        let figment = Figment::from(Serialized::defaults(Settings::default())).merge(Toml::file_exact(&path));
        let s = Settings::from_figment(figment, Some(path)).expect("config/default.toml is valid");
        assert!(s.site("site-demo-hs").is_some_and(|s| s.lea == "lea-demo"));
        assert!(s.site("site-other-es").is_some_and(|s| s.lea == "lea-other"));
        assert!(s.partnerships.iter().any(|p| p.fqhc == "fqhc-demo" && p.sites.contains(&"site-demo-ms".to_string())));
    }
}
