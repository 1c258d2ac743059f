//! Command line: parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wellness_gateway::auth::{self, Role};
use wellness_gateway::fhir::OperationOutcome;
use wellness_gateway::intake::file::{self, FileFormat, ImportOptions};
use wellness_gateway::intake::{canonical_json, sha256_hex};
use wellness_gateway::mapping::{Mapper, SessionVersion};
use wellness_gateway::pipeline::Pipeline;
use wellness_gateway::settings::Settings;
use wellness_gateway::startup::{self, Application};
use wellness_gateway::validate::Validator;
use wellness_gateway::{demo, telemetry};

/// mimalloc instead of the system allocator: intake and the FHIR write path allocate many small
/// strings and JSON values across threads, where glibc malloc spent ~15% of server CPU in
/// `malloc_consolidate` / `unlink_chunk` (measured with perf under `benches/fhir.sh`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "wellness-gateway", version, about = "School counselling sessions -> FHIR records and Medi-Cal claims")]
struct Cli {
    /// Configuration file (default: config/default.toml); WG__SECTION__KEY variables override it.
    #[arg(long, global = true, env = "WG_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the HTTP(S) server.
    Serve {
        /// Seed demo clients (fixed, public tokens) and synthetic sessions; loopback only.
        #[arg(long)]
        demo: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Load configuration and compile schemas without serving; exit non-zero on any error.
    Check,
    /// Print the FHIR transaction Bundle a session file maps to (offline; nothing is stored).
    Map {
        /// A session record (JSON), as it would be submitted.
        file: PathBuf,
        /// Use the shipped defaults plus this organisation's overrides (instead of the layering
        /// of the session's own site).
        #[arg(long)]
        org: Option<String>,
    },
    /// The audit trail of partner disclosures.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Manage API clients.
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Submit a CSV or NDJSON file of sessions through the intake pipeline.
    Import {
        /// The file (.csv, .ndjson or .jsonl).
        file: PathBuf,
        /// Override the format guessed from the extension.
        #[arg(long, value_enum)]
        format: Option<FileFormat>,
        /// Refuse rows of any other LEA.
        #[arg(long)]
        lea: Option<String>,
        /// Records per transaction.
        #[arg(long, default_value_t = 1000)]
        chunk_size: usize,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Post X12 835 remittance files (each checked first; the same payment twice changes nothing).
    Remit {
        /// The 835 files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Print the answer as JSON (the same as `POST /api/v1/remittances`).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of every AuditEvent; exits non-zero at the first broken event.
    Verify,
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Register a client. A secret client's secret is printed once, alone on the last line; a
    /// partner (`--jwks`) has no secret and its client_id is printed alone on the last line.
    Add {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Role.
        #[arg(long, value_enum)]
        role: Role,
        /// Organisation: the LEA of a submitter, the FQHC of a partner.
        #[arg(long)]
        org: Option<String>,
        /// Partners: the client's JWKS (public keys), as a file (stored) or an https URL
        /// (fetched and cached), for SMART Backend Services.
        #[arg(long, value_name = "FILE_OR_URL")]
        jwks: Option<String>,
        /// Partners: the scopes it may be granted, space-separated (default `system/*.read`).
        #[arg(long)]
        scope: Option<String>,
    },
    /// Disable a client: its secret is refused from then on (a running server notices within
    /// `server.auth_cache_seconds`).
    Disable {
        /// The client id printed by `clients add`.
        #[arg(long)]
        id: String,
    },
}

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in `mimalloc.h`; the Rust bindings
/// leave it unnamed).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps memory freed before giving it back to the system, in milliseconds
/// (its default is 1,000). A bulk export frees each page of resources soon after writing it; with
/// a second's delay several pages' worth stayed resident. A 100,000-session export
/// (`benches/export.sh`, 2026-12-07, interleaved runs on a quiet machine): 1,000 ms 179-182 MB at
/// 19,800-20,200 resources/s, 100 ms 167-170 MB at 18,500-18,700/s, 10 ms 152-155 MB at
/// 15,300-17,200/s (freed pages are returned and faulted in again): memory first, at ~15% of the
/// export's speed. On a loaded machine 0 ms gave 148-159 MB, ~17% slower than 1,000 ms.
const PURGE_DELAY_MS: std::ffi::c_long = 10;

/// Sets [`PURGE_DELAY_MS`], unless `MIMALLOC_PURGE_DELAY` in the environment says otherwise.
fn return_freed_memory_sooner() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` only stores the value of a known option (an index below
        // `_mi_option_last`) for mimalloc to read when it next purges; it has no other
        // precondition and is safe to call at any time from any thread.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

#[actix_web::main]
async fn main() -> ExitCode {
    return_freed_memory_sooner();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(&settings.log);
    match cli.command {
        Command::Serve { demo } => {
            let settings = Arc::new(settings);
            // Refuses to start on a broken schema or mapping file.
            let pipeline = Pipeline::from_settings(settings.clone())?;
            let store = startup::open_store(&settings).await?;
            if demo {
                for line in demo::seed(&settings, &store, &pipeline).await? {
                    println!("{line}");
                }
            }
            let app = Application::build_with(settings.clone(), store, pipeline).await?;
            let scheme = if settings.server.tls.enabled { "https" } else { "http" };
            println!("wellness-gateway listening on {scheme}://{}:{}", settings.server.host, app.port());
            app.run_until_stopped().await?;
        }
        Command::Migrate => {
            let store = wellness_gateway::store::Store::connect(&settings.database).await?;
            store.migrate().await?;
            println!("migrations applied ({})", store.backend());
        }
        Command::Map { file, org } => {
            let settings = Arc::new(settings);
            let validator = Validator::new(&settings.rules.schemas_dir, settings.clone())?;
            let mapper = Mapper::from_settings(&settings, &validator)?;
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let record: serde_json::Value = serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", file.display()))?;
            let valid = match validator.validate(&record, chrono::Utc::now()) {
                Ok(v) => v,
                Err(issues) => {
                    eprintln!("{}", serde_json::to_string_pretty(&OperationOutcome::new(issues))?);
                    anyhow::bail!("{} is not a valid session", file.display());
                }
            };
            let set = match &org {
                Some(org) => {
                    anyhow::ensure!(settings.organization(org).is_some(), "--org {org}: not a configured organisation");
                    Arc::new(mapper.for_org(org)?)
                }
                None => mapper.for_site(&valid.raw.site),
            };
            let content_sha256 = sha256_hex(&canonical_json(&record));
            let version = SessionVersion {
                valid: &valid,
                record: &record,
                version: 1,
                content_sha256: &content_sha256,
                raw_sha256: &sha256_hex(&bytes),
                received_at: chrono::Utc::now(),
            };
            let mapped = mapper.map_session(&settings, &set, &version)?;
            println!("{}", serde_json::to_string_pretty(&mapped.transaction_bundle())?);
        }
        Command::Check => {
            let settings = Arc::new(settings);
            let pipeline = Pipeline::from_settings(settings.clone())?;
            println!(
                "configuration OK: {} organisations, {} sites, {} partnerships; schemas and mappings compiled; billing: {} programs ({}), {} payers",
                settings.organizations.len(),
                settings.sites.len(),
                settings.partnerships.len(),
                pipeline.billing.programs.len(),
                pipeline.billing.programs.iter().map(|p| format!("{} v{}", p.id, p.versions.len())).collect::<Vec<_>>().join(", "),
                pipeline.billing.payers.len()
            );
        }
        Command::Clients { command: ClientsCommand::Add { name, role, org, jwks, scope } } => {
            let store = startup::open_store(&settings).await?;
            let creds = auth::Credentials { jwks, scope };
            let registered = auth::register(&store, &settings, &name, role, org.as_deref(), creds).await?;
            println!("role: {}{}", role.as_str(), org.map(|o| format!(" ({o})")).unwrap_or_default());
            match registered {
                auth::Registered::Secret(client) => {
                    println!("client_id: {}", client.client_id);
                    println!("The secret below is shown once; store it now. Use it as 'Authorization: Bearer <secret>'.");
                    println!("{}", client.secret);
                }
                auth::Registered::Jwks { client_id, scopes } => {
                    println!("scopes: {scopes}");
                    println!("Authenticates with SMART Backend Services at /auth/token (RS384 or ES384 assertion, iss = sub = client_id).");
                    println!("client_id:");
                    println!("{client_id}");
                }
            }
        }
        Command::Audit { command: AuditCommand::Verify } => {
            let store = startup::open_store(&settings).await?;
            let report = wellness_gateway::audit::verify(&store).await?;
            match report.broken {
                None => println!("audit chain intact: {} events verified", report.events),
                Some((seq, why)) => {
                    anyhow::bail!("audit chain broken at event {seq} ({} events before it verified): {why}", report.events)
                }
            }
        }
        Command::Clients { command: ClientsCommand::Disable { id } } => {
            let store = startup::open_store(&settings).await?;
            if !store.disable_client(&id, chrono::Utc::now()).await? {
                anyhow::bail!("no enabled client has the id {id}");
            }
            println!("client {id} disabled");
        }
        Command::Import { file: path, format, lea, chunk_size, quiet, json } => {
            let settings = Arc::new(settings);
            let pipeline = Pipeline::from_settings(settings.clone())?;
            let store = startup::open_store(&settings).await?;
            let options = ImportOptions { format, chunk_size, lea, progress: !quiet };
            let summary =
                file::import_file(&pipeline, &store, &path, &options).await.with_context(|| format!("importing {}", path.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "{} records: {} created, {} amended, {} duplicate, {} rejected (report: {})",
                    summary.received,
                    summary.created,
                    summary.amended,
                    summary.duplicate,
                    summary.rejected,
                    summary.report.display()
                );
            }
            store.close().await;
        }
        Command::Remit { files, quiet, json } => {
            // Only the 835 code tables: posting needs no schemas or FHIR mappings.
            let codes = wellness_gateway::remit::RemitCodes::load(&settings.rules.mappings_dir)?;
            let store = startup::open_store(&settings).await?;
            let mut failed = false;
            for path in &files {
                let result = wellness_gateway::remit::post_file(&store, &codes, path, "cli:remit", !quiet).await;
                match result {
                    Ok(report) if json => {
                        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "file": path, "report": report }))?)
                    }
                    Ok(report) => {
                        for t in &report.transactions {
                            println!(
                                "{}: payment {} {} TRN {}: {} claims, charge {}, paid {} ({} matched, {} unmatched, {} exceptions){}{}",
                                path.display(),
                                t.status,
                                t.payer_name,
                                t.trace_number,
                                t.claim_count,
                                wellness_gateway::domain::Cents(t.charge_cents),
                                wellness_gateway::domain::Cents(t.paid_cents),
                                t.matched,
                                t.unmatched,
                                t.exceptions,
                                if t.balanced { "" } else { "; OUT OF BALANCE" },
                                if t.errors.is_empty() { String::new() } else { format!("; {}", t.errors.join("; ")) }
                            );
                        }
                    }
                    Err(wellness_gateway::remit::RemitError::Invalid(problems)) => {
                        failed = true;
                        if json {
                            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "file": path, "refused": list }))?);
                        } else {
                            eprintln!("{}: refused, nothing posted:", path.display());
                            for p in &problems {
                                eprintln!("  {p}");
                            }
                        }
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context(format!("posting {}", path.display()))),
                }
            }
            store.close().await;
            if failed {
                anyhow::bail!("one or more files were refused");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_index_names_mimallocs_purge_delay() {
        // mimalloc 3 (what the `mimalloc` crate builds without its `v2` feature) sets no other
        // option to 1000 by default: reading 1000 at our index shows the index is `purge_delay`.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: `mi_option_get` reads a known option's value; no preconditions.
            let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
            assert_eq!(delay, 1000, "option {} is not purge_delay", super::MI_OPTION_PURGE_DELAY);
        }
    }
}
