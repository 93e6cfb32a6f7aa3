//! The coordinator: runs TCC and Saga global transactions so that every branch commits or
//! every branch is rolled back, through crashes, timeouts and retries.
//!
//! - [`machine`]: the state machine, pure: (state, event) → (state, effects).
//! - [`log`]: the durable log in the coordinator's own database (SQLite or PostgreSQL); every
//!   status change that authorises a side effect is committed before it, fenced by ownership.
//! - [`request`]: what a client asks for, validated before anything is stored, and the hash
//!   that tells an idempotent replay from another request.
//! - [`participants`]: one reused gRPC channel per participant, and one branch call with its
//!   timeout and its attempt for the timeline.
//! - `ready`: batching by what is ready, the loop behind group commit and participant
//!   batches.
//! - [`engine`]: executes the effects — branch calls over reused gRPC channels with per-call
//!   timeouts — persists decisions, retries with persisted backoff, and recovers due
//!   transactions by claiming them with a conditional update of owner and lease, so several
//!   instances on one PostgreSQL never drive one transaction at once.
//! - [`view`]: the read model both APIs show, a page of transactions in three queries.
//! - [`grpc`] and [`http`]: the APIs.

pub mod console;
pub mod engine;
pub mod grpc;
pub mod http;
pub mod log;
pub mod machine;
pub mod metrics;
pub mod participants;
mod ready;
pub mod request;
pub mod view;

use host::app::{Running, ServiceParts, StartError};
use host::serve::Shutdown;
use host::{AdminToken, CommonConfig, ConfigError, Metrics};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use store::Db;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The coordinator's configuration (env prefix `COORDINATOR_`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    /// Snowflake node id, unique per coordinator instance (0..=1023).
    pub node_id: u16,
    pub lease_ms: u64,
    pub default_timeout_ms: u64,
    pub default_branch_timeout_ms: u64,
    pub recovery_interval_ms: u64,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// A node id lease not renewed for this long is free; a restart waits this long at most.
    pub node_lease_ms: u64,
    /// The participants transactions may name, `name → gRPC URL`
    /// (`COORDINATOR_PARTICIPANTS__PAYMENT=http://…`): any other address is refused before
    /// anything is stored. Required in production; empty in dev accepts any address.
    #[serde(default)]
    pub participants: std::collections::BTreeMap<String, String>,
    /// Crash at this point the first time it is reached (crash tests; refused in production).
    #[serde(default)]
    pub failpoint: Option<engine::Crash>,
    /// How long an ended transaction keeps its branches and timeline
    /// (`COORDINATOR_RETENTION__HOURS`, default 30 days; at least a day). A keyed transaction
    /// keeps its status row for good: it answers a late replay of its key.
    #[serde(default = "default_retention")]
    pub retention: host::Retention,
    /// The trace UI's page of one trace, `{trace_id}` standing for the id
    /// (`http://127.0.0.1:16686/trace/{trace_id}`): the console links each transaction to the
    /// trace it was started in. Unset: the console shows the trace id only.
    #[serde(default)]
    pub trace_link: Option<String>,
    /// The participants' admin HTTP APIs, `name → URL`
    /// (`COORDINATOR_PARTICIPANT_ADMIN__PAYMENT=http://127.0.0.1:8081`), for the console's fault
    /// switches: called with the coordinator's admin token, so they work where the participants
    /// share it (the dev platform). Faults are refused in production whatever this holds.
    #[serde(default)]
    pub participant_admin: std::collections::BTreeMap<String, String>,
    /// Branch calls, or batches of them, in flight to one participant at once, per phase
    /// (`COORDINATOR_BRANCH_CALLS_IN_FLIGHT`, default 1; `COORDINATOR_SECOND_PHASE_IN_FLIGHT`
    /// until 2026-12, when Tries were batched too): the Tries, Confirms, Cancels and
    /// Compensates that are ready while they are go to that participant together, in one local
    /// transaction there. 0: every call on its own.
    #[serde(default = "default_branch_calls_in_flight")]
    pub branch_calls_in_flight: usize,
    /// Checkpoints, or groups of them, written to the log at once
    /// (`COORDINATOR_CHECKPOINTS_IN_FLIGHT`, default 1): the checkpoints of other transactions
    /// ready meanwhile are written together, one local transaction for all (group commit). 0:
    /// each in its own transaction.
    #[serde(default = "default_checkpoints_in_flight")]
    pub checkpoints_in_flight: usize,
}

fn default_checkpoints_in_flight() -> usize {
    engine::EngineConfig::default().checkpoints_in_flight
}

fn default_branch_calls_in_flight() -> usize {
    engine::EngineConfig::default().branch_calls_in_flight
}

fn default_retention() -> host::Retention {
    host::Retention::days(30)
}

impl Default for Config {
    fn default() -> Self {
        let e = engine::EngineConfig::default();
        Config {
            common: CommonConfig::local("coordinator", 8090, 50050),
            node_id: 0,
            lease_ms: e.lease.as_millis() as u64,
            default_timeout_ms: e.default_timeout.as_millis() as u64,
            default_branch_timeout_ms: e.default_branch_timeout.as_millis() as u64,
            recovery_interval_ms: e.recovery_interval.as_millis() as u64,
            retry_initial_ms: 100,
            retry_max_ms: 30_000,
            node_lease_ms: e.node_lease.as_millis() as u64,
            participants: Default::default(),
            failpoint: None,
            retention: default_retention(),
            trace_link: None,
            participant_admin: Default::default(),
            branch_calls_in_flight: default_branch_calls_in_flight(),
            checkpoints_in_flight: default_checkpoints_in_flight(),
        }
    }
}

impl Config {
    /// Defaults, then `CONFIG_FILE`, then `COORDINATOR_*` variables.
    pub fn load() -> Result<Config, ConfigError> {
        host::load_config(Config::default(), "COORDINATOR_")
    }

    fn engine(&self) -> Result<engine::EngineConfig, ConfigError> {
        let participants = participants::Known::new(&self.participants)
            .map_err(|e| ConfigError(format!("participants: {e}")))?;
        if self.common.production && participants.is_open() {
            return Err(ConfigError(
                "participants must be configured in production mode \
                 (COORDINATOR_PARTICIPANTS__<NAME>=<gRPC URL>, one per participant)"
                    .into(),
            ));
        }
        Ok(engine::EngineConfig {
            participants,
            node_id: self.node_id,
            lease: Duration::from_millis(self.lease_ms.max(100)),
            default_timeout: Duration::from_millis(self.default_timeout_ms.max(1)),
            default_branch_timeout: Duration::from_millis(self.default_branch_timeout_ms.max(1)),
            recovery_interval: Duration::from_millis(self.recovery_interval_ms.max(10)),
            node_lease: Duration::from_millis(self.node_lease_ms.max(300)),
            branch_calls_in_flight: self.branch_calls_in_flight,
            checkpoints_in_flight: self.checkpoints_in_flight,
            backoff: retry::Backoff::forever(
                Duration::from_millis(self.retry_initial_ms.max(1)),
                Duration::from_millis(self.retry_max_ms.max(1)),
            ),
            ..engine::EngineConfig::default()
        })
    }
}

/// Opens the log, runs migrations, starts recovery and the gRPC and HTTP APIs.
pub async fn start(config: Config, shutdown: Shutdown) -> Result<Running, StartError> {
    if config.node_id > ids::MAX_NODE {
        return Err(ConfigError(format!("node_id must be 0..={}", ids::MAX_NODE)).into());
    }
    config.retention.validate("retention")?;
    if let Some(link) = &config.trace_link {
        if !(link.starts_with("http://") || link.starts_with("https://"))
            || !link.contains("{trace_id}")
        {
            return Err(ConfigError(
                "trace_link must be an http(s) URL containing {trace_id}".into(),
            )
            .into());
        }
    }
    let mut engine_config = config.engine()?;
    let tls = config.common.trust("coordinator")?;
    engine_config.participants_tls = tls.clone();
    let db = Db::connect(&config.common.db_config()?).await?;
    db.migrate(&MIGRATOR).await?;
    let admin = actix_web::web::Data::new(AdminToken::resolve(&config.common, "coordinator")?);
    let metrics = Metrics::new();
    let coordinator_metrics = metrics.register(metrics::CoordinatorMetrics::new);
    let failpoints = Arc::new(host::Failpoints::new(config.common.production));
    if let Some(at) = config.failpoint {
        failpoints
            .arm(at, 0)
            .map_err(|e| ConfigError(format!("failpoint: {e}")))?;
    }
    let engine = engine::Engine::new(
        db.clone(),
        engine_config,
        coordinator_metrics,
        failpoints.clone(),
        shutdown.clone().wait(),
    )
    .await
    .map_err(|e| ConfigError(e.to_string()))?;
    engine.spawn_recovery(shutdown.clone().wait());
    let purge_db = db.clone();
    config.retention.spawn(
        "ended transactions",
        move |before| {
            let db = purge_db.clone();
            async move {
                log::purge_ended(&db, before, 500)
                    .await
                    .map(|p| p.transactions)
            }
        },
        shutdown.clone().wait(),
    );
    let grpc = grpc::CoordinatorService::new(engine.clone(), admin.get_ref().clone()).into_server();
    let engine_data = actix_web::web::Data::new(engine);
    let failpoint_data = actix_web::web::Data::from(failpoints);
    let console_data = actix_web::web::Data::new(console::Settings {
        trace_link: config.trace_link.clone(),
        participant_admin: config
            .participant_admin
            .iter()
            .map(|(name, url)| (name.clone(), url.trim_end_matches('/').to_owned()))
            .collect(),
        production: config.common.production,
        http: reqwest::Client::new(),
        live: Default::default(),
    });
    host::app::start(
        ServiceParts {
            name: "coordinator",
            http_addr: config.common.http_addr.clone(),
            grpc_addr: config.common.grpc_addr.clone(),
            db,
            metrics,
            grpc: tonic::service::Routes::new(grpc),
            http: Arc::new(move |cfg| {
                cfg.app_data(engine_data.clone())
                    .app_data(admin.clone())
                    .app_data(failpoint_data.clone())
                    .app_data(console_data.clone());
                http::routes(cfg);
                console::routes(cfg);
            }),
            shutdown_grace: Duration::from_secs(config.common.shutdown_grace_secs),
            json_limit: 64 * 1024,
            tls,
            // Transactions come from order-svc; reads and retries from operators.
            grpc_callers: &["order", "operator"],
            // Drives are not waited for: the log resumes them after a restart.
            in_flight: host::serve::InFlight::default(),
        },
        shutdown,
    )
    .await
    .map_err(StartError::from)
}
