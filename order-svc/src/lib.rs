//! order-svc: orders, as a TCC and Saga participant.
//!
//! A Try inserts the order PENDING; its Confirm makes it CONFIRMED, its Cancel CANCELLED. A
//! Cancel whose Try never arrived (null compensation) stores the order CANCELLED, so every
//! rolled-back transaction leaves an order that says so. Saga: the Action inserts it CONFIRMED,
//! the Compensate cancels it. Every op runs behind the `tcc` barrier.
//!
//! - [`branch`]: the participant (`tcc::Handler`) — orders as branches of global transactions.
//! - [`api`]: the public order API (JWT in [`auth`]): thin handlers over `idempotency` (exactly
//!   once per key), `checkout` (pricing and the global transaction) and `catalog`.
//! - [`refund`]: `POST /api/v1/orders/{id}/refund`, a refund as a Saga across the three
//!   services.
//! - [`admin`]: the admin API (orders by id, by transaction, the audit's counts).

pub mod admin;
pub mod api;
pub mod auth;
pub mod branch;
mod catalog;
mod checkout;
pub mod domain;
mod idempotency;
pub mod limit;
pub mod openapi;
pub mod refund;

pub use idempotency::purge_answered as purge_answered_keys;

use host::app::Running;
use host::serve::Shutdown;
use host::ConfigError;
use serde::{Deserialize, Serialize};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// order-svc's configuration (env prefix `ORDER_`; JWT settings under `ORDER_JWT__*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub participant: tcc::service::ParticipantConfig,
    pub jwt: auth::JwtConfig,
    pub api: api::ApiConfig,
    /// How long an answered `Idempotency-Key` is remembered (`ORDER_IDEMPOTENCY_RETENTION__HOURS`,
    /// default 7 days; at least a day): a retry within it gets the first answer, a request after
    /// it with the same key is a new order.
    #[serde(default = "default_idempotency_retention")]
    pub idempotency_retention: host::Retention,
}

fn default_idempotency_retention() -> host::Retention {
    host::Retention::days(7)
}

/// Local defaults: `sqlite://data/order.db`, HTTP on 8080, gRPC on 50051, a dev JWT secret.
pub fn default_config() -> Config {
    Config {
        participant: tcc::service::ParticipantConfig::local("order", 8080, 50051),
        jwt: auth::JwtConfig::default(),
        api: api::ApiConfig::default(),
        idempotency_retention: default_idempotency_retention(),
    }
}

/// Defaults, then `CONFIG_FILE`, then `ORDER_*` variables.
pub fn load_config() -> Result<Config, ConfigError> {
    host::load_config(default_config(), "ORDER_")
}

/// An access token for the public API, for `sub`, valid for `ttl`, signed with the secret
/// `config` names (its configured secret, or the dev secret in its data folder).
pub fn mint_token(
    config: &Config,
    sub: &str,
    ttl: std::time::Duration,
) -> Result<String, ConfigError> {
    tcc::check::id("sub", sub).map_err(|r| ConfigError(r.message))?;
    if ttl.as_secs() > config.jwt.max_lifetime_secs {
        return Err(ConfigError(format!(
            "a token may live at most {} h here (jwt.max_lifetime_secs); a longer one would be refused",
            config.jwt.max_lifetime_secs / 3600
        )));
    }
    let auth = auth::Authenticator::from_config(&config.jwt, &config.participant.common)?;
    Ok(auth.mint(sub, ttl))
}

/// Opens the database, runs migrations, and starts the gRPC and HTTP servers.
pub async fn start(config: Config, shutdown: Shutdown) -> Result<Running, host::StartError> {
    let retention = config.idempotency_retention;
    retention.validate("idempotency_retention")?;
    let authenticator = actix_web::web::Data::new(auth::Authenticator::from_config(
        &config.jwt,
        &config.participant.common,
    )?);
    // The same certificates serve its participant role and call the coordinator.
    let tls = config.participant.common.trust("order")?;
    let api = actix_web::web::Data::new(api::Api::new(config.api.clone(), tls.as_ref())?);
    let crash = actix_web::web::Data::new(host::Failpoints::<api::Crash>::new(
        config.participant.common.production,
    ));
    tcc::service::start(
        tcc::service::Participant {
            name: "order-svc",
            short_name: "order",
            common: config.participant.common,
            purge: config.participant.barrier,
            migrator: &MIGRATOR,
            handler: branch::Orders,
            routes: std::sync::Arc::new(move |cfg| {
                cfg.app_data(authenticator.clone())
                    .app_data(actix_web::web::Data::new(retention))
                    .app_data(api.clone())
                    .app_data(crash.clone());
                admin::routes(cfg);
                api::routes(cfg);
                openapi::routes(cfg);
            }),
            background: Some(Box::new(move |db, shutdown| {
                let db = db.clone();
                retention.spawn(
                    "answered idempotency keys",
                    move |before| {
                        let db = db.clone();
                        async move { purge_answered_keys(&db, before, 1000).await }
                    },
                    shutdown.clone().wait(),
                );
            })),
        },
        shutdown,
    )
    .await
}
