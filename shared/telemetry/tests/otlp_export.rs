//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, `init` exports spans over OTLP gRPC: checked against a
//! real gRPC collector endpoint on loopback that records what it receives.
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::sync::{Arc, Mutex};
use telemetry::{LogFormat, TelemetryConfig};

#[derive(Default, Clone)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.received.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_to_the_otlp_endpoint_with_the_service_name() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let config = TelemetryConfig {
        service_name: "payment-svc".into(),
        filter: "warn".into(),
        traces_filter: "info".into(),
        log_format: LogFormat::Json,
        otlp_endpoint: Some(format!("http://{addr}")),
    };
    let guard = telemetry::init(&config).unwrap();
    {
        let span = tracing::warn_span!("charge-card", gid = 42);
        let _entered = span.enter();
        tracing::warn!("inside");
    }
    // The batch exporter sends on its own thread; flush blocks until it has.
    tokio::task::spawn_blocking(move || {
        guard.flush();
        drop(guard);
    })
    .await
    .unwrap();

    let received = collector.received.lock().unwrap();
    let spans: Vec<_> = received
        .iter()
        .flat_map(|r| r.resource_spans.iter())
        .map(|rs| {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            let names: Vec<String> = rs
                .scope_spans
                .iter()
                .flat_map(|ss| ss.spans.iter().map(|s| s.name.clone()))
                .collect();
            (service, names)
        })
        .collect();
    assert!(
        spans
            .iter()
            .any(|(service, names)| service.contains("payment-svc")
                && names.contains(&"charge-card".to_string())),
        "collector received {spans:?}"
    );
}
