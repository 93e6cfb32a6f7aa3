//! Hosting for a service process.
//!
//! Every service binary does the same things around its own logic: read config from a file and
//! the environment with defaults that run locally, open its database, serve gRPC and HTTP, answer
//! `/healthz`, `/readyz` and `/metrics`, answer errors as `application/problem+json`, protect
//! admin endpoints with a token, and stop gracefully on SIGTERM or Ctrl-C. This crate does those
//! once, so a service's `main` is a dozen lines and its crate holds only its own logic.

pub mod app;
pub mod config;
pub mod failpoint;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod problem;
pub mod profile;
pub mod retention;
pub mod serve;

pub use app::StartError;
pub use config::{load_config, CommonConfig, ConfigError};
pub use failpoint::Failpoints;
pub use metrics::{HttpMetrics, Metrics};
pub use page::Page;
pub use problem::Problem;
pub use retention::Retention;
pub use serve::{require_admin, shutdown_signal, AdminToken};
