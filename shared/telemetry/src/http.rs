//! Trace propagation for actix-web servers.
//!
//! ```ignore
//! App::new().wrap(actix_web::middleware::from_fn(telemetry::http::trace_requests))
//! ```

use crate::propagation::continue_trace;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use opentelemetry::propagation::Extractor;
use tracing::field::Empty;
use tracing::Instrument;

/// Paths probed every few seconds by orchestrators and scrapers: not worth a span each.
const UNTRACED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

struct ActixHeaders<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for ActixHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// A request header naming the load-test run (or any experiment) a request belongs to; recorded
/// as the span attribute `run.tag`, so a run's logs and traces can be searched for.
pub const RUN_TAG: &str = "x-run-tag";

/// Middleware (for `actix_web::middleware::from_fn`) that runs each request in a server span
/// continuing the caller's `traceparent`, named `METHOD /route/{pattern}`, with the status code
/// and the `X-Run-Tag` header (if any) recorded.
pub async fn trace_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if UNTRACED.contains(&req.path()) {
        return next.call(req).await;
    }
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&ActixHeaders(req.headers())));
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = %route,
        url.path = %req.path(),
        http.response.status_code = Empty,
        trace_id = Empty,
        run.tag = Empty,
    );
    if let Some(tag) = req.headers().get(RUN_TAG).and_then(|v| v.to_str().ok()) {
        span.record("run.tag", tag);
    }
    continue_trace(&span, parent);
    let response = next.call(req).instrument(span.clone()).await;
    match &response {
        Ok(res) => {
            let status = res.status().as_u16();
            span.record("http.response.status_code", status);
            if status >= 500 {
                span.record("otel.status_code", "ERROR");
            }
        }
        Err(e) => {
            span.record(
                "http.response.status_code",
                e.as_response_error().status_code().as_u16(),
            );
            span.record("otel.status_code", "ERROR");
        }
    }
    response
}
