//! A server span becomes the child of the client span across a real HTTP call (actix-web +
//! reqwest) and a real gRPC call (tonic), both over loopback sockets.
mod common;

use actix_web::{middleware::from_fn, web, App, HttpResponse, HttpServer};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use std::sync::OnceLock;
use telemetry::{LogFormat, TelemetryConfig, TelemetryGuard};
use tracing::Instrument;

/// The tracing subscriber is process-global: one exporter for every test in this file.
fn exporter() -> &'static InMemorySpanExporter {
    static SETUP: OnceLock<(InMemorySpanExporter, TelemetryGuard)> = OnceLock::new();
    &SETUP
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let config = TelemetryConfig {
                service_name: "propagation-test".into(),
                filter: "warn,telemetry=info,propagation=info".into(),
                traces_filter: "info".into(),
                log_format: LogFormat::Json,
                otlp_endpoint: None,
            };
            let guard = telemetry::init_with_exporter(&config, exporter.clone()).unwrap();
            (exporter, guard)
        })
        .0
}

fn finished(name: &str) -> Vec<SpanData> {
    exporter()
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.name == name)
        .collect()
}

fn assert_child(server: &SpanData, client: &SpanData) {
    assert_eq!(
        server.span_context.trace_id(),
        client.span_context.trace_id()
    );
    assert_eq!(server.parent_span_id, client.span_context.span_id());
    assert_ne!(client.span_context.trace_id(), TraceId::INVALID);
    assert_eq!(server.span_kind, SpanKind::Server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_server_span_is_the_child_of_the_calling_client_span() {
    exporter();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(|| {
        App::new()
            .wrap(from_fn(telemetry::http::trace_requests))
            .route(
                "/orders/{id}",
                web::get().to(|| async {
                    // The handler sees the server span as current, with the caller's trace id.
                    HttpResponse::Ok().body(telemetry::current_trace_id().unwrap_or_default())
                }),
            )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);

    let client_span = tracing::info_span!("http-client-call");
    let body = async {
        let mut headers = reqwest::header::HeaderMap::new();
        telemetry::inject_current_http(&mut headers);
        assert!(headers.contains_key("traceparent"));
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/orders/42"))
            .headers(headers)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
    .instrument(client_span.clone())
    .await;
    drop(client_span);
    handle.stop(true).await;

    let client = finished("http-client-call")
        .pop()
        .expect("client span exported");
    let server = finished("GET /orders/{id}")
        .pop()
        .expect("server span exported, named by route");
    assert_child(&server, &client);
    assert_eq!(body, client.span_context.trace_id().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_request_without_traceparent_starts_a_new_trace_tagged_with_its_run() {
    exporter();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(|| {
        App::new()
            .wrap(from_fn(telemetry::http::trace_requests))
            .route(
                "/fresh",
                web::get().to(|| async { HttpResponse::NoContent().finish() }),
            )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/fresh"))
        .header(telemetry::http::RUN_TAG, "lt-42")
        .send()
        .await
        .unwrap();
    handle.stop(true).await;
    let server = finished("GET /fresh").pop().expect("server span exported");
    assert_eq!(server.parent_span_id, SpanId::INVALID);
    assert_ne!(server.span_context.trace_id(), TraceId::INVALID);
    let tag = server
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "run.tag")
        .map(|kv| kv.value.to_string());
    assert_eq!(tag.as_deref(), Some("lt-42"), "{:?}", server.attributes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_server_span_is_the_child_of_the_calling_client_span() {
    exporter();
    let server = common::EchoServer::start().await;
    let addr = server.addr;

    let client_span = tracing::info_span!("grpc-client-call");
    let reply = common::trace_id_seen_by(addr)
        .instrument(client_span.clone())
        .await;
    drop(client_span);
    server.stop().await;

    let client = finished("grpc-client-call")
        .pop()
        .expect("client span exported");
    let server = finished("tcc.v1.Participant/Branch")
        .pop()
        .expect("server span exported");
    assert_child(&server, &client);
    assert_eq!(reply, client.span_context.trace_id().to_string());
}
