//! payment-svc: accounts and money, as a TCC and Saga participant.
//!
//! Balances are split into `available` and `frozen`. A Try freezes the order's amount on the
//! payer (or rejects with `insufficient_funds`); its Confirm moves the frozen money to the
//! merchant, its Cancel unfreezes it. A Saga Action pays the merchant at once and its Compensate
//! refunds. Every op runs behind the `tcc` barrier in one local transaction with a `holds` row,
//! so replays, reorderings and crashes never move money twice; and money only enters through
//! recorded deposits, so `SUM(available + frozen) = SUM(deposits)` can be audited at any time.
//!
//! Served over gRPC (`tcc.v1.Participant`) and, for admin and reads, over HTTP.

pub mod domain;
pub mod http;
pub mod ledger;

use host::app::{Running, ServiceParts};
use host::serve::Shutdown;
use host::{AdminToken, CommonConfig, ConfigError, Metrics};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use store::Db;
use tcc::grpc::{BranchMetrics, ParticipantService};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// payment-svc's configuration (env prefix `PAYMENT_`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Barrier rows older than this are purged.
    pub barrier_retention_hours: u64,
    pub barrier_purge_interval_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            common: CommonConfig::local("payment", 8081, 50052),
            barrier_retention_hours: 24 * 7,
            barrier_purge_interval_secs: 3600,
        }
    }
}

impl Config {
    /// Defaults, then `CONFIG_FILE`, then `PAYMENT_*` variables.
    pub fn load() -> Result<Config, ConfigError> {
        host::load_config(Config::default(), "PAYMENT_")
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the database, runs migrations, and starts the gRPC and HTTP servers.
pub async fn start(config: Config, shutdown: Shutdown) -> Result<Running, StartError> {
    let db = Db::connect(&config.common.db_config()?).await?;
    db.migrate_all(&[&MIGRATOR, &tcc::MIGRATOR]).await?;
    let admin = AdminToken::resolve(&config.common, "payment")?;
    let metrics = Metrics::new();
    let branch_metrics = metrics.register(BranchMetrics::new);
    let participant =
        ParticipantService::new(db.clone(), Arc::new(ledger::Payments), branch_metrics);
    let purger = tcc::barrier::spawn_purger(
        db.clone(),
        Duration::from_secs(config.barrier_retention_hours * 3600),
        Duration::from_secs(config.barrier_purge_interval_secs.max(1)),
    );
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown.wait().await;
            purger.abort();
        }
    });
    let admin = actix_web::web::Data::new(admin);
    let running = host::app::start(
        ServiceParts {
            name: "payment-svc",
            http_addr: config.common.http_addr.clone(),
            grpc_addr: config.common.grpc_addr.clone(),
            db,
            metrics,
            grpc: tonic::service::Routes::new(participant.into_server()),
            http: Arc::new(move |cfg| {
                cfg.app_data(admin.clone());
                http::routes(cfg);
            }),
            shutdown_grace: Duration::from_secs(config.common.shutdown_grace_secs),
            json_limit: 16 * 1024,
        },
        shutdown,
    )
    .await?;
    Ok(running)
}
