//! `Application::build(settings)`: used by `serve` and by the tests alike. Connects and migrates
//! the store, compiles the schemas, binds the listener (HTTP on loopback or HTTPS with rustls) and
//! exposes the bound port.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::pipeline::Pipeline;
use crate::settings::Settings;
use crate::store::Store;

/// Shared, read-only application state handed to every handler.
pub struct AppState {
    /// Settings as loaded at start-up.
    pub settings: Arc<Settings>,
    /// Storage.
    pub store: Store,
    /// Compiled schemas, semantic rules, mappings and search definitions.
    pub pipeline: Pipeline,
    /// The OpenAPI document, built once.
    pub openapi: Arc<serde_json::Value>,
    /// Verified client secrets and access tokens (by SHA-256) for `server.auth_cache_seconds`.
    pub auth_cache: moka::sync::Cache<String, crate::auth::Principal>,
    /// SMART Backend Services: token issue and verification.
    pub smart: crate::auth::smart::SmartAuth,
    /// The audit trail writer.
    pub auditor: crate::audit::Auditor,
    /// The bulk export workers.
    pub exporter: crate::export::run::Exporter,
    /// Subscription notifications.
    pub notifier: crate::notify::Notifier,
    /// Parsed and obligated resource versions kept between partner reads.
    pub read_memo: crate::serve::ReadMemo,
}

/// A built, bound, not yet running server.
pub struct Application {
    port: u16,
    server: Server,
    store: Store,
    auditor: crate::audit::Auditor,
}

/// Connects the store, runs migrations when configured, and copies the organisation directory
/// from configuration into the database.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = Store::connect(&settings.database).await.context("connecting to the database")?;
    if settings.database.migrate_on_start {
        store.migrate().await.context("applying migrations")?;
    }
    store.sync_directory(settings).await.context("seeding organisations and sites from configuration")?;
    Ok(store)
}

fn tls_config(settings: &Settings) -> anyhow::Result<rustls::ServerConfig> {
    let tls = &settings.server.tls;
    let cert_path = tls.cert_path.as_ref().context("server.tls.cert_path is required")?;
    let key_path = tls.key_path.as_ref().context("server.tls.key_path is required")?;
    let certs = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("reading server.tls.cert_path {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(key_path).with_context(|| format!("reading the private key in {}", key_path.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match or are unsupported")
}

/// Forgets expired client-assertion jti values once a minute (a replay of an expired assertion
/// is refused by its `exp` already).
async fn purge_jti_loop(store: Store) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tick.tick().await;
        match store.purge_jti(crate::store::now_us()).await {
            Ok(n) if n > 0 => tracing::debug!(removed = n, "expired assertion jti values purged"),
            Ok(_) => {}
            Err(_) if store.is_closed() => break,
            Err(e) => tracing::warn!(error = %e, "purging expired assertion jti values failed"),
        }
    }
}

impl Application {
    /// Builds the application from settings.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let settings = Arc::new(settings);
        let pipeline = Pipeline::from_settings(settings.clone())?;
        let store = open_store(&settings).await?;
        Self::build_with(settings, store, pipeline).await
    }

    /// Builds from parts (used by `serve --demo` after seeding).
    pub async fn build_with(settings: Arc<Settings>, store: Store, pipeline: Pipeline) -> anyhow::Result<Application> {
        let openapi = Arc::new(crate::api::openapi::document(pipeline.validator.schemas().session_document()));
        let auth_cache = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(std::time::Duration::from_secs(settings.server.auth_cache_seconds))
            .build();
        let smart = crate::auth::smart::SmartAuth::new(&settings.auth)?;
        tokio::spawn(purge_jti_loop(store.clone()));
        let auditor =
            crate::audit::Auditor::start(store.clone(), std::time::Duration::from_millis(settings.database.audit_journal_load_ms.max(1)))
                .await?;
        let exporter = crate::export::run::Exporter::spawn(
            store.clone(),
            pipeline.consent.clone(),
            pipeline.search.clone(),
            settings.clone(),
            auditor.clone(),
        );
        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&address).with_context(|| format!("binding {address}"))?;
        let port = listener.local_addr()?.port();
        // Notifications name resources under the public base (auth.token_url's origin), else the
        // bound address.
        let base =
            settings.auth.token_url.as_deref().and_then(|u| u.strip_suffix("/auth/token")).map(|o| format!("{o}/fhir")).unwrap_or_else(
                || format!("{}://{}:{port}/fhir", if settings.server.tls.enabled { "https" } else { "http" }, settings.server.host),
            );
        let notifier = crate::notify::Notifier::spawn(
            store.clone(),
            pipeline.consent.clone(),
            pipeline.search.clone(),
            settings.clone(),
            auditor.clone(),
            Some(base),
        )?;
        if settings.billing.worker {
            tokio::spawn(crate::claims::Claimer::new(store.clone(), pipeline.clone()).run());
            let poll = std::time::Duration::from_millis(settings.billing.backoff_initial_ms.clamp(50, 1_000));
            tokio::spawn(crate::claims::submit::Submitter::new(store.clone(), settings.clone())?.run(poll));
        }
        let state = web::Data::new(AppState {
            settings: settings.clone(),
            store: store.clone(),
            pipeline,
            openapi,
            auth_cache,
            smart,
            auditor: auditor.clone(),
            exporter,
            notifier,
            // 16 MiB of obligated text: the current version of ~20,000 encounters.
            read_memo: crate::serve::ReadMemo::new(16 << 20),
        });
        let mut server = HttpServer::new(move || {
            App::new().wrap(from_fn(crate::telemetry::request_span)).app_data(state.clone()).configure(crate::api::configure)
        });
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        let server = if settings.server.tls.enabled {
            server.listen_rustls_0_23(listener, tls_config(&settings)?)?
        } else {
            server.listen(listener)?
        };
        tracing::info!(port, tls = settings.server.tls.enabled, database = store.backend(), "gateway listening");
        Ok(Application { port, server: server.run(), store, auditor })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle that can stop the server.
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Runs until stopped (Ctrl-C or [`actix_web::dev::ServerHandle::stop`]), then loads the audit
    /// journal and closes the pool.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.auditor.close().await;
        self.store.close().await;
        result
    }
}
