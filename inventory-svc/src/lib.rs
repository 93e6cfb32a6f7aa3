//! inventory-svc: stock, as a TCC and Saga participant.
//!
//! Stock per SKU is split into `available`, `reserved` and `sold`. A Try reserves the order's
//! quantity (or rejects with `out_of_stock`); its Confirm sells it, its Cancel releases it. A Saga
//! Action sells at once and its Compensate puts the items back. A refund brings sold items back,
//! held in `reserved` until its money is back, then on sale (see [`domain`]). Every op runs behind the `tcc`
//! barrier in one local transaction with a `reservations` row, and items only enter through
//! recorded restocks, so `available + reserved + sold = restocks` per SKU can be audited.

pub mod admin;
pub mod domain;
pub mod stock;

use host::app::Running;
use host::serve::Shutdown;
use host::ConfigError;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// inventory-svc's configuration (env prefix `INVENTORY_`).
pub type Config = tcc::service::ParticipantConfig;

/// Local defaults: `sqlite://data/inventory.db`, HTTP on 8082, gRPC on 50053.
pub fn default_config() -> Config {
    Config::local("inventory", 8082, 50053)
}

/// Defaults, then `CONFIG_FILE`, then `INVENTORY_*` variables.
pub fn load_config() -> Result<Config, ConfigError> {
    Config::load(default_config(), "INVENTORY_")
}

/// Opens the database, runs migrations, and starts the gRPC and HTTP servers.
pub async fn start(config: Config, shutdown: Shutdown) -> Result<Running, host::StartError> {
    tcc::service::start(
        tcc::service::Participant {
            name: "inventory-svc",
            short_name: "inventory",
            common: config.common,
            purge: config.barrier,
            migrator: &MIGRATOR,
            handler: stock::Stock,
            routes: std::sync::Arc::new(admin::routes),
            background: None,
        },
        shutdown,
    )
    .await
}
