//! W3C trace context in and out of header maps, through the global propagator that
//! [`crate::init`] installs.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Reads from an `http` 1.x header map (tonic, reqwest, hyper).
pub(crate) struct HttpHeaders<'a>(pub &'a ::http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes into an `http` 1.x header map.
pub(crate) struct HttpHeadersMut<'a>(pub &'a mut ::http::HeaderMap);

impl Injector for HttpHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            ::http::header::HeaderName::from_bytes(key.as_bytes()),
            ::http::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The trace context carried by `headers`, or an empty context.
pub fn extract_http(headers: &::http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HttpHeaders(headers)))
}

/// Writes the current span's trace context (`traceparent`, `tracestate`) into `headers`, for an
/// outgoing HTTP request (reqwest's `HeaderMap` is this type).
pub fn inject_current_http(headers: &mut ::http::HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HttpHeadersMut(headers))
    });
}

/// The trace id of the current span as 32 hex digits, when there is one.
pub fn current_trace_id() -> Option<String> {
    trace_id_of(&tracing::Span::current())
}

pub(crate) fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// Makes `span` a child of the remote context `parent` (when it carries one) and records the
/// resulting trace id in the span's `trace_id` field.
pub(crate) fn continue_trace(span: &tracing::Span, parent: opentelemetry::Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    if let Some(id) = trace_id_of(span) {
        span.record("trace_id", id.as_str());
    }
}
