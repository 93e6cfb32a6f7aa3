//! Logs and traces, set up the same way in every binary.
//!
//! One order crosses four processes; to follow it you need every log line to carry the trace id
//! and every span to know its parent across HTTP and gRPC hops. This crate does the whole set-up
//! once so no service does it differently:
//!
//! - [`init`]: an env filter (`RUST_LOG`, default `info`), JSON logs (or human ones on a
//!   terminal, or as `LOG_FORMAT` says), and OpenTelemetry spans. Spans are exported over OTLP
//!   gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (Jaeger ingests OTLP); when it is not, trace
//!   ids are still made and propagated, nothing is exported and nothing complains, and spans
//!   keep only what propagation needs: no log events copied into them, no busy/idle timings
//!   taken at every poll, no code locations or thread names (all of it was built for every span
//!   of every order, and dropped at its end).
//! - [`http`]: actix-web middleware that continues the caller's W3C `traceparent` in a server
//!   span, and a helper to inject it into outgoing HTTP requests.
//! - [`grpc`]: a tonic client interceptor that injects `traceparent` into gRPC metadata, and a
//!   tower layer for tonic servers that continues it.
//!
//! Every server span records a `trace_id` field, so JSON log lines carry it in their span list.

pub mod grpc;
pub mod http;
mod propagation;

pub use propagation::{current_trace_id, extract_http, inject_current_http};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use opentelemetry_sdk::Resource;
use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, with the fields of the current span and its parents.
    Json,
    /// Coloured, human-readable lines.
    Pretty,
}

/// What [`init`] sets up.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` of exported spans, and a field of every log line.
    pub service_name: String,
    /// An `EnvFilter` directive string for log lines, e.g. `info,sqlx=warn`.
    pub filter: String,
    /// An `EnvFilter` directive string for exported spans, separate so that quiet logs do not
    /// silence tracing (`OTEL_TRACES_FILTER`, default `info`).
    pub traces_filter: String,
    pub log_format: LogFormat,
    /// OTLP gRPC endpoint, e.g. `http://localhost:4317`; `None`: export nothing.
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    /// From the environment: `RUST_LOG` (default `info`), `LOG_FORMAT` (`json` or `pretty`;
    /// default: pretty on a terminal, JSON otherwise), `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn from_env(service_name: impl Into<String>) -> Self {
        let log_format = match std::env::var("LOG_FORMAT").ok().as_deref() {
            Some("json") => LogFormat::Json,
            Some("pretty") | Some("text") => LogFormat::Pretty,
            _ if std::io::stdout().is_terminal() => LogFormat::Pretty,
            _ => LogFormat::Json,
        };
        TelemetryConfig {
            service_name: service_name.into(),
            filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            traces_filter: std::env::var("OTEL_TRACES_FILTER").unwrap_or_else(|_| "info".into()),
            log_format,
            otlp_endpoint: std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .ok()
                .filter(|s| !s.trim().is_empty()),
        }
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {0:?}: {1}")]
    Filter(String, String),
    #[error("cannot build the OTLP exporter for {0}: {1}")]
    Exporter(String, String),
    #[error("a global tracing subscriber is already set: {0}")]
    AlreadySet(String),
}

/// Flushes and shuts down span export when dropped: keep it alive until `main` returns.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Exports every finished span now.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }

    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }
}

/// `service.instance.id`: unique per process across hosts. The pid alone is not: every
/// container's main process is pid 1, and a trace UI that keys processes by instance then
/// shows a trace across four containers as one service's.
fn instance_id(service: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{service}@{host}:{}", std::process::id())
}

/// Sets up logging and tracing for this process. With an OTLP endpoint, call it from inside a
/// tokio runtime (the gRPC exporter's connection lives there).
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let mut builder = SdkTracerProvider::builder();
    if let Some(endpoint) = &config.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| TelemetryError::Exporter(endpoint.clone(), e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    install(config, builder, config.otlp_endpoint.is_some())
}

/// Like [`init`], but exports every span synchronously to `exporter` as it ends (for tests and
/// tools that want to see spans without a collector).
pub fn init_with_exporter<E: SpanExporter + 'static>(
    config: &TelemetryConfig,
    exporter: E,
) -> Result<TelemetryGuard, TelemetryError> {
    install(
        config,
        SdkTracerProvider::builder().with_simple_exporter(exporter),
        true,
    )
}

/// `exporting`: whether finished spans go anywhere; when not, the span layer records nothing
/// but the trace context.
fn install(
    config: &TelemetryConfig,
    builder: opentelemetry_sdk::trace::TracerProviderBuilder,
    exporting: bool,
) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_new(&config.filter)
        .map_err(|e| TelemetryError::Filter(config.filter.clone(), e.to_string()))?;
    let traces_filter = EnvFilter::try_new(&config.traces_filter)
        .map_err(|e| TelemetryError::Filter(config.traces_filter.clone(), e.to_string()))?;
    let provider = builder
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .with_attribute(KeyValue::new(
                    "service.instance.id",
                    instance_id(&config.service_name),
                ))
                .build(),
        )
        .build();
    let tracer = provider.tracer(config.service_name.clone());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());

    let fmt = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .with_target(true)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_target(true).boxed(),
    };
    let spans = tracing_opentelemetry::layer().with_tracer(tracer);
    let spans = if exporting {
        spans.with_filter(traces_filter).boxed()
    } else {
        use tracing_subscriber::filter::{filter_fn, FilterExt};
        spans
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_filter(traces_filter.and(filter_fn(|meta| meta.is_span())))
            .boxed()
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(spans)
        .try_init()
        .map_err(|e| TelemetryError::AlreadySet(e.to_string()))?;
    Ok(TelemetryGuard { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_a_typed_error_not_a_panic() {
        let config = TelemetryConfig {
            service_name: "x".into(),
            filter: "info,=[".into(),
            traces_filter: "info".into(),
            log_format: LogFormat::Json,
            otlp_endpoint: None,
        };
        assert!(matches!(init(&config), Err(TelemetryError::Filter(..))));
    }
}
