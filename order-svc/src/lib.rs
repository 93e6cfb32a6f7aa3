//! order-svc: orders, as a TCC and Saga participant.
//!
//! A Try inserts the order PENDING; its Confirm makes it CONFIRMED, its Cancel CANCELLED. A
//! Cancel whose Try never arrived (null compensation) stores the order CANCELLED, so every
//! rolled-back transaction leaves an order that says so. Saga: the Action inserts it CONFIRMED,
//! the Compensate cancels it. Every op runs behind the `tcc` barrier.
//!
//! The public order API (JWT, idempotency keys, the coordinator call) joins this crate later.

pub mod book;
pub mod domain;
pub mod http;

use host::app::Running;
use host::serve::Shutdown;
use host::{CommonConfig, ConfigError};
use serde::{Deserialize, Serialize};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// order-svc's configuration (env prefix `ORDER_`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    #[serde(flatten)]
    pub barrier: tcc::PurgeConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            common: CommonConfig::local("order", 8080, 50051),
            barrier: tcc::PurgeConfig::default(),
        }
    }
}

impl Config {
    /// Defaults, then `CONFIG_FILE`, then `ORDER_*` variables.
    pub fn load() -> Result<Config, ConfigError> {
        host::load_config(Config::default(), "ORDER_")
    }
}

/// Opens the database, runs migrations, and starts the gRPC and HTTP servers.
pub async fn start(config: Config, shutdown: Shutdown) -> Result<Running, host::StartError> {
    tcc::service::start(
        tcc::service::Participant {
            name: "order-svc",
            short_name: "order",
            common: config.common,
            purge: config.barrier,
            migrator: &MIGRATOR,
            handler: book::Orders,
            routes: http::routes,
        },
        shutdown,
    )
    .await
}
