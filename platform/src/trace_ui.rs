//! `platform trace-ui`, and the trace UI the one-command platform starts beside its services:
//! the Jaeger trace UI without Jaeger.
//!
//! The services export their spans over OTLP (`OTEL_EXPORTER_OTLP_ENDPOINT`); something has to
//! receive them and show one order as one trace across the four services. Jaeger's own images
//! come from a registry the project's machines cannot reach, so this embeds the Jaeger UI and an
//! in-memory OTLP gRPC receiver (the `otlp-embedded` crate): the same pages and the same query
//! API (`/api/services`, `/api/traces?service=…`, `/api/traces/{id}`), in one small process.
//! Traces live in memory only (the newest `max_traces`, within `max_memory_mb`): a trace UI for
//! demos, labs and tests, not an archive. `GET /healthz` answers once both listeners are bound.

use otlp_embedded::{ui_app, Config, State, TraceServiceImpl, TraceServiceServer};
use std::net::SocketAddr;

/// Where the trace UI listens and how much it keeps.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceUi {
    /// The UI and its query API.
    #[arg(long, env = "TRACE_UI_HTTP_ADDR", default_value = "127.0.0.1:16686")]
    pub http: SocketAddr,
    /// The OTLP gRPC receiver.
    #[arg(long, env = "TRACE_UI_OTLP_ADDR", default_value = "127.0.0.1:4317")]
    pub otlp: SocketAddr,
    /// The newest traces kept.
    #[arg(long, env = "TRACE_UI_MAX_TRACES", default_value_t = 1000)]
    pub max_traces: u32,
    /// Memory the kept traces may use.
    #[arg(long, env = "TRACE_UI_MAX_MEMORY_MB", default_value_t = 256)]
    pub max_memory_mb: usize,
}

/// A listener of the trace UI could not be bound, or one stopped.
#[derive(Debug, thiserror::Error)]
pub enum TraceUiError {
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the trace UI stopped: {0}")]
    Stopped(String),
}

/// The two listeners, bound: `run` serves them.
pub struct Bound {
    http: tokio::net::TcpListener,
    otlp: tokio::net::TcpListener,
    config: TraceUi,
}

impl TraceUi {
    /// Binds both ports, so a caller knows at once whether the UI can run.
    pub async fn bind(self) -> Result<Bound, TraceUiError> {
        let bind = |what, addr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| TraceUiError::Bind { what, addr, source })
        };
        Ok(Bound {
            http: bind("the trace UI", self.http).await?,
            otlp: bind("the OTLP receiver", self.otlp).await?,
            config: self,
        })
    }
}

impl Bound {
    /// Serves the UI and the receiver until one fails.
    pub async fn run(self) -> Result<(), TraceUiError> {
        let state = State::new(Config {
            max_length: self.config.max_traces,
            max_memory_usage: self.config.max_memory_mb << 20,
        });
        let ui =
            ui_app(state.clone(), "/").route("/healthz", axum::routing::get(|| async { "ok" }));
        let ui = async {
            axum::serve(self.http, ui)
                .await
                .map_err(|e| TraceUiError::Stopped(format!("the UI: {e}")))
        };
        let collector = async {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(TraceServiceImpl::new(state)))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(self.otlp))
                .await
                .map_err(|e| TraceUiError::Stopped(format!("the OTLP receiver: {e}")))
        };
        tokio::select! {
            r = ui => r,
            r = collector => r,
        }
    }
}
