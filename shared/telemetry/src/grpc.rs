//! Trace propagation for tonic clients and servers.
//!
//! ```ignore
//! // client
//! let client = ParticipantClient::with_interceptor(channel, telemetry::grpc::TracePropagation);
//! // server
//! Server::builder().layer(telemetry::grpc::TraceLayer).add_service(...)
//! ```

use crate::propagation::{continue_trace, HttpHeaders};
use opentelemetry::propagation::Injector;
use std::task::{Context, Poll};
use tracing::field::Empty;
use tracing::instrument::Instrumented;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// A tonic client interceptor that puts the current span's trace context into the request's
/// metadata (`traceparent`), so the server's span becomes a child of the caller's.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracePropagation;

impl tonic::service::Interceptor for TracePropagation {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let cx = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut Metadata(request.metadata_mut()))
        });
        Ok(request)
    }
}

/// A tower layer for tonic servers: each call runs in a server span named after the gRPC method
/// that continues the caller's `traceparent`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> tower::Layer<S> for TraceLayer {
    type Service = TraceService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceService { inner }
    }
}

/// The service [`TraceLayer`] wraps around a tonic server.
#[derive(Debug, Clone)]
pub struct TraceService<S> {
    inner: S,
}

impl<S, B> tower::Service<::http::Request<B>> for TraceService<S>
where
    S: tower::Service<::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ::http::Request<B>) -> Self::Future {
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HttpHeaders(request.headers()))
        });
        // "/tcc.v1.Participant/Branch" → service "tcc.v1.Participant", method "Branch".
        let path = request.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("unknown", path));
        let span = tracing::info_span!(
            "grpc.request",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            trace_id = Empty,
        );
        continue_trace(&span, parent);
        self.inner.call(request).instrument(span)
    }
}
