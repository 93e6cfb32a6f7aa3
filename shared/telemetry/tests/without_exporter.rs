//! Without an OTLP endpoint nothing is exported and spans record only the trace context; the
//! trace must still cross every hop: an HTTP call and then a gRPC call each continue the
//! caller's trace id, and a log line inside a span still carries it. (Its own test binary: the
//! subscriber is process-global, and `propagation.rs` installs one that exports.)
mod common;

use actix_web::{middleware::from_fn, web, App, HttpResponse, HttpServer};
use std::sync::OnceLock;
use telemetry::{LogFormat, TelemetryConfig, TelemetryGuard};
use tracing::Instrument;

fn init() {
    static SETUP: OnceLock<TelemetryGuard> = OnceLock::new();
    SETUP.get_or_init(|| {
        let config = TelemetryConfig {
            service_name: "no-exporter-test".into(),
            filter: "warn".into(),
            traces_filter: "info".into(),
            log_format: LogFormat::Json,
            otlp_endpoint: None,
        };
        telemetry::init(&config).unwrap()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_exporter_the_trace_id_still_crosses_an_http_hop_and_then_a_grpc_hop() {
    init();
    let grpc = common::EchoServer::start().await;
    let grpc_addr = grpc.addr;
    // An HTTP server whose handler calls the gRPC server, as order-svc calls the coordinator,
    // and answers "<its own trace id> <the gRPC server's>".
    let http_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = http_listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(telemetry::http::trace_requests))
            .route(
                "/orders",
                web::post().to(move || async move {
                    let own = telemetry::current_trace_id().unwrap_or_default();
                    let next = common::trace_id_seen_by(grpc_addr).await;
                    HttpResponse::Ok().body(format!("{own} {next}"))
                }),
            )
    })
    .workers(1)
    .listen(http_listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);

    let client_span = tracing::info_span!("client-call");
    let (caller, body) = async {
        let caller = telemetry::current_trace_id().expect("a trace id without an exporter");
        let mut headers = reqwest::header::HeaderMap::new();
        telemetry::inject_current_http(&mut headers);
        let traceparent = headers
            .get("traceparent")
            .expect("traceparent injected without an exporter")
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            traceparent.contains(&caller),
            "{traceparent} lacks {caller}"
        );
        let body = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/orders"))
            .headers(headers)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        (caller, body)
    }
    .instrument(client_span)
    .await;
    handle.stop(true).await;
    grpc.stop().await;

    assert_eq!(caller.len(), 32);
    assert_ne!(caller, "0".repeat(32));
    assert_eq!(body, format!("{caller} {caller}"), "the hops' trace ids");
}
