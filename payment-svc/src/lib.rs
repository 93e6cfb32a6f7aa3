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

pub mod admin;
pub mod domain;
pub mod ledger;

use host::app::Running;
use host::serve::Shutdown;
use host::ConfigError;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// payment-svc's configuration (env prefix `PAYMENT_`).
pub type Config = tcc::service::ParticipantConfig;

/// Local defaults: `sqlite://data/payment.db`, HTTP on 8081, gRPC on 50052.
pub fn default_config() -> Config {
    Config::local("payment", 8081, 50052)
}

/// Defaults, then `CONFIG_FILE`, then `PAYMENT_*` variables.
pub fn load_config() -> Result<Config, ConfigError> {
    Config::load(default_config(), "PAYMENT_")
}

/// Opens the database, runs migrations, and starts the gRPC and HTTP servers.
pub async fn start(config: Config, shutdown: Shutdown) -> Result<Running, host::StartError> {
    tcc::service::start(
        tcc::service::Participant {
            name: "payment-svc",
            short_name: "payment",
            common: config.common,
            purge: config.barrier,
            migrator: &MIGRATOR,
            handler: ledger::Payments,
            routes: std::sync::Arc::new(admin::routes),
            background: None,
        },
        shutdown,
    )
    .await
}
