//! Starting a service: bind both listeners (port 0 works, for tests), build the HTTP app with
//! tracing, metrics, problem+json errors and health routes around the service's own routes, serve
//! gRPC with trace propagation, and stop gracefully.

use crate::metrics::{track_requests, HttpMetrics, Metrics};
use crate::problem;
use crate::serve::{self, Shutdown};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
}

/// A service's own HTTP routes and app data.
pub type HttpRoutes = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// What a service hands to [`start`].
pub struct ServiceParts {
    pub name: &'static str,
    pub http_addr: String,
    pub grpc_addr: String,
    pub db: store::Db,
    pub metrics: Metrics,
    pub grpc: tonic::service::Routes,
    pub http: HttpRoutes,
    pub shutdown_grace: Duration,
    /// Largest JSON body accepted, in bytes.
    pub json_limit: usize,
    /// Mutual TLS for the gRPC server (`None`: plaintext, dev only), and the roles whose
    /// certificates it takes calls from.
    pub tls: Option<trust::Trust>,
    pub grpc_callers: &'static [&'static str],
    /// Work the handlers detach from their requests, waited for at shutdown (up to
    /// `shutdown_grace`).
    pub in_flight: serve::InFlight,
}

impl std::fmt::Debug for ServiceParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceParts")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A started service.
#[derive(Debug)]
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Asks the service to stop (as SIGTERM does).
    pub fn stop(&self) {
        self.shutdown.trigger();
    }

    /// Waits until the service has stopped.
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// Binds and starts the HTTP and gRPC servers; returns once both listen.
pub async fn start(parts: ServiceParts, shutdown: Shutdown) -> std::io::Result<Running> {
    let ServiceParts {
        name,
        http_addr,
        grpc_addr,
        db,
        metrics,
        grpc,
        http,
        shutdown_grace,
        json_limit,
        tls,
        grpc_callers,
        in_flight,
    } = parts;
    let http_metrics = web::Data::new(HttpMetrics::new(&metrics));
    let db_data = web::Data::new(db.clone());
    let in_flight_data = web::Data::new(in_flight.clone());
    let metrics_data = web::Data::new(metrics);
    let http_listener = std::net::TcpListener::bind(&http_addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("bind HTTP {http_addr}: {e}")))?;
    let http_bound = http_listener.local_addr()?;
    let stopping = web::Data::new(shutdown.clone());
    let server = HttpServer::new(move || {
        let http = http.clone();
        App::new()
            .wrap(from_fn(serve::hold_shutdown))
            .wrap(from_fn(serve::refuse_when_stopping))
            .wrap(from_fn(track_requests))
            .wrap(from_fn(telemetry::http::trace_requests))
            .app_data(http_metrics.clone())
            .app_data(stopping.clone())
            .app_data(in_flight_data.clone())
            .app_data(db_data.clone())
            .app_data(metrics_data.clone())
            .app_data(problem::json_config(json_limit))
            .app_data(problem::path_config())
            .app_data(problem::query_config())
            .configure(serve::health_routes)
            .configure(move |c| http(c))
            .default_service(web::to(problem::not_found))
    })
    .disable_signals()
    .shutdown_timeout(shutdown_grace.as_secs())
    .workers(2)
    .listen(http_listener)?
    .run();

    let grpc_listener = tokio::net::TcpListener::bind(&grpc_addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("bind gRPC {grpc_addr}: {e}")))?;
    let grpc_bound = grpc_listener.local_addr()?;
    // Pings find a peer that froze or was cut off with a connection open, so neither a call
    // nor a graceful stop waits on it forever.
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)));
    if let Some(t) = &tls {
        builder = builder
            .tls_config(t.server_config())
            .map_err(std::io::Error::other)?;
    }
    let callers = tls.as_ref().map(|_| trust::Callers {
        allowed: grpc_callers,
    });
    let grpc_server = builder
        .layer(telemetry::grpc::TraceLayer)
        .layer(tower::util::option_layer(callers))
        .add_routes(grpc)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            shutdown.clone().wait(),
        );
    tracing::info!(
        service = name,
        http = %http_bound,
        grpc = %grpc_bound,
        mutual_tls = tls.is_some(),
        "listening"
    );
    let task = tokio::spawn(serve::run(
        server,
        grpc_server,
        shutdown.clone(),
        in_flight,
        db,
        shutdown_grace,
    ));
    Ok(Running {
        http_addr: http_bound,
        grpc_addr: grpc_bound,
        shutdown,
        task,
    })
}

/// The whole `main` of a service binary: telemetry, signal handling, start, wait. Returns the
/// process exit code (0 after a clean shutdown, 1 when it could not start or failed).
pub async fn run_main<F, Fut, E>(service_name: &str, start: F) -> std::process::ExitCode
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<Running, E>>,
    E: std::fmt::Display,
{
    let _telemetry = match telemetry::init(&telemetry::TelemetryConfig::from_env(service_name)) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("{service_name}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = serve::shutdown_signal();
    let running = match start(shutdown).await {
        Ok(running) => running,
        Err(e) => {
            tracing::error!(error = %e, "could not start");
            eprintln!("{service_name}: could not start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match running.wait().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stopped with an error");
            std::process::ExitCode::FAILURE
        }
    }
}
