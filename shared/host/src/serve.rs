//! Running the servers: health and metrics routes, the admin token, and graceful shutdown.

use crate::config::{CommonConfig, ConfigError};
use crate::metrics::Metrics;
use crate::problem::Problem;
use actix_web::{web, HttpRequest, HttpResponse};
use std::future::Future;
use tokio::sync::watch;

/// Fires once on SIGTERM or Ctrl-C (or when [`Shutdown::trigger`] is called).
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    tx: std::sync::Arc<watch::Sender<bool>>,
}

impl Shutdown {
    /// Resolves when shutdown has been asked for.
    pub async fn wait(mut self) {
        let _ = self.rx.wait_for(|stop| *stop).await;
    }

    /// Asks for shutdown from inside the process.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    /// Whether shutdown has been asked for.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Middleware (on every app) that answers 503 `unavailable`, with `Connection: close`, to any
/// request that arrives once shutdown has begun: the HTTP server is only paused while the gRPC
/// side drains (see [`run`]), and a client on a kept-alive connection must not start work
/// (an order whose own branch could no longer be called) on a stopping instance. Nothing is
/// stored for such a request: a retry with the same key goes to another instance, or to this
/// one restarted. Needs `web::Data<Shutdown>` in the app data.
pub async fn refuse_when_stopping(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let stopping = req
        .app_data::<web::Data<Shutdown>>()
        .is_some_and(|s| s.is_triggered());
    if stopping {
        let mut res = actix_web::ResponseError::error_response(&Problem::unavailable(
            "this instance is stopping; retry (with the same Idempotency-Key for an order)",
        ));
        res.head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
        return Ok(req.into_response(res));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// One piece of work counted by an [`InFlight`] until dropped.
#[derive(Debug)]
pub struct InFlightGuard(InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let (count, idle) = &*(self.0).0;
        if count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            idle.notify_waiters();
        }
    }
}

/// Middleware (on every app) that counts each HTTP request in the service's [`InFlight`]
/// while its handler runs, so a graceful stop lets it finish before it closes the database
/// pool (see [`run`]). Needs `web::Data<InFlight>` in the app data.
pub async fn hold_shutdown(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let _running = req.app_data::<web::Data<InFlight>>().map(|f| f.enter());
    next.call(req).await
}

/// A [`Shutdown`] wired to SIGTERM and SIGINT.
pub fn shutdown_signal() -> Shutdown {
    let (tx, rx) = watch::channel(false);
    let shutdown = Shutdown {
        rx,
        tx: std::sync::Arc::new(tx),
    };
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
            _ = term => tracing::info!("SIGTERM: shutting down"),
        }
        trigger.trigger();
    });
    shutdown
}

/// Work that runs detached from the request that started it (a participant's branch call runs
/// to its end even when its caller gives up): counted, so a graceful shutdown waits for it
/// instead of ending the process under a local transaction.
#[derive(Debug, Clone, Default)]
pub struct InFlight(std::sync::Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>);

impl InFlight {
    /// Spawns `work`, counted until it ends (or panics).
    pub fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let counted = self.enter();
        tokio::spawn(async move {
            let _counted = counted;
            work.await
        })
    }

    /// Counts the caller's own work as running until the guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0 .0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    /// How many are running.
    pub fn count(&self) -> usize {
        self.0 .0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once none is running.
    pub async fn idle(&self) {
        loop {
            let woken = self.0 .1.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            woken.await;
        }
    }
}

/// Runs the HTTP server and the gRPC server (already built with `shutdown.wait()` as its
/// shutdown future) until `shutdown` fires, then lets in-flight requests finish, and the
/// detached work of `in_flight` for up to `grace`.
pub async fn run(
    http: actix_web::dev::Server,
    grpc: impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
    shutdown: Shutdown,
    in_flight: InFlight,
    db: store::Db,
    grace: std::time::Duration,
) -> std::io::Result<()> {
    let http_handle = http.handle();
    let http_task = tokio::spawn(http);
    let grpc_task = tokio::spawn(grpc);
    shutdown.wait().await;
    // One budget for the whole stop: the gRPC drain and the detached work share `grace` (a
    // peer frozen on an open connection must not hold the process forever), then HTTP stops
    // within its own shutdown timeout.
    let deadline = tokio::time::Instant::now() + grace;
    // The HTTP server stops last. Its workers are runtimes of their own, and a pooled database
    // connection a worker opened lives on that worker's runtime: stopped first, it would take
    // those connections with it, and a gRPC call still running on one would fail, possibly
    // after its COMMIT was sent (a committed Try answered "unavailable"). So: accept no new
    // HTTP connections, let the gRPC calls and the detached work finish, then stop HTTP.
    // New requests on kept-alive connections meanwhile get 503 (`refuse_when_stopping`).
    http_handle.pause().await;
    let mut grpc_task = grpc_task;
    let grpc_result = match tokio::time::timeout_at(deadline, &mut grpc_task).await {
        Ok(joined) => joined.map_err(std::io::Error::other),
        Err(_) => {
            tracing::warn!("gRPC calls still open after the grace period; closing them");
            grpc_task.abort();
            Ok(Ok(()))
        }
    };
    if tokio::time::timeout_at(deadline, in_flight.idle())
        .await
        .is_err()
    {
        tracing::warn!(
            running = in_flight.count(),
            "detached work still running after the grace period; stopping anyway"
        );
    }
    // Then the pool closes while the HTTP workers still run: the last connections come back
    // (sqlx pings a connection it takes back, on the socket of the runtime that opened it) and
    // are closed cleanly, instead of being pinged on a worker runtime already gone.
    if tokio::time::timeout_at(deadline, db.close()).await.is_err() {
        tracing::warn!("database connections still in use after the grace period");
    }
    http_handle.stop(true).await;
    let http_result = http_task.await.map_err(std::io::Error::other)?;
    let grpc_result = grpc_result?;
    http_result?;
    grpc_result.map_err(std::io::Error::other)?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// `/healthz` (the process answers), `/readyz` (its database answers), `/metrics`, the
/// problem pages, and a CPU profile behind the admin token ([`crate::profile`]); each a 405
/// naming GET for any other method.
/// Needs `web::Data<store::Db>`, `web::Data<Metrics>` and `web::Data<AdminToken>` in the app
/// data.
pub fn health_routes(cfg: &mut web::ServiceConfig) {
    use crate::problem::only;
    cfg.service(only("/healthz", "GET").route(web::get().to(healthz)))
        .service(only("/readyz", "GET").route(web::get().to(readyz)))
        .service(only("/metrics", "GET").route(web::get().to(metrics)))
        .service(only("/problems/{code}", "GET").route(web::get().to(crate::problem::describe)))
        .configure(crate::profile::routes);
}

/// Liveness.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Whether the process answers",
    responses((status = 200, description = "It does", body = crate::openapi::Status))
)]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(crate::openapi::Status {
        status: "ok".into(),
    })
}

/// Readiness.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Whether the service can serve: its database answers",
    responses(
        (status = 200, description = "Ready", body = crate::openapi::Status),
        (status = 503, description = "The database does not answer", body = crate::problem::ProblemBody, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn readyz(db: web::Data<store::Db>) -> Result<HttpResponse, Problem> {
    db.ping().await.map_err(|e| {
        // Unauthenticated: the answer says what is wrong, the log says where.
        tracing::warn!(error = %e, "not ready: the database does not answer");
        Problem::unavailable("not ready: the database does not answer")
    })?;
    Ok(HttpResponse::Ok().json(crate::openapi::Status {
        status: "ready".into(),
    }))
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "The service's metrics (OpenMetrics text)",
    responses((status = 200, description = "Counters, gauges and histograms", content_type = "application/openmetrics-text", body = String))
)]
pub(crate) async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(metrics.render())
}

/// The bearer token that guards admin endpoints.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl AdminToken {
    pub fn new(token: impl Into<String>) -> Self {
        AdminToken(token.into())
    }

    /// The configured token; in dev mode without one, the token stored in
    /// `<data_dir>/<service>.admin-token`, generated on first start. Production mode requires a
    /// configured token of at least [`MIN_PRODUCTION_TOKEN`] characters.
    pub fn resolve(common: &CommonConfig, service: &str) -> Result<AdminToken, ConfigError> {
        if let Some(token) = &common.admin_token {
            if common.production && token.len() < MIN_PRODUCTION_TOKEN {
                return Err(ConfigError(format!(
                    "admin_token must be at least {MIN_PRODUCTION_TOKEN} characters in production mode"
                )));
            }
            return Ok(AdminToken(token.clone()));
        }
        if common.production {
            return Err(ConfigError(
                "admin_token must be configured in production mode (generated dev tokens are refused)".into(),
            ));
        }
        let path = common.data_dir.join(format!("{service}.admin-token"));
        crate::config::dev_secret(&path, "dev").map(AdminToken)
    }

    /// Checks `Authorization: Bearer <token>` in constant time.
    pub fn check(&self, req: &HttpRequest) -> Result<(), Problem> {
        let presented = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Problem::unauthorized(
                    "admin endpoints need an Authorization: Bearer token",
                    "Bearer realm=\"admin\"",
                )
            })?;
        if self.matches(presented) {
            Ok(())
        } else {
            Err(Problem::unauthorized(
                "the admin token is wrong",
                "Bearer realm=\"admin\", error=\"invalid_token\"",
            ))
        }
    }

    /// Checks gRPC metadata `authorization: Bearer <token>` in constant time: UNAUTHENTICATED
    /// otherwise (operator calls over gRPC need the token the HTTP ones do).
    pub fn check_grpc(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), tonic::Status> {
        let presented = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                tonic::Status::unauthenticated(
                    "this call needs the admin token as `authorization: Bearer <token>` metadata",
                )
            })?;
        if self.matches(presented) {
            Ok(())
        } else {
            Err(tonic::Status::unauthenticated("the admin token is wrong"))
        }
    }

    /// The token itself, to call a peer that shares it (the console calls the participants'
    /// admin APIs with it where they share the coordinator's token, as in the dev platform).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the token (in constant time).
    pub fn accepts(&self, presented: &str) -> bool {
        self.matches(presented)
    }

    /// A value derived from the token for one `purpose` (a browser session's cookie, say):
    /// it proves the token was presented without holding the token itself, and changes with it.
    pub fn derived(&self, purpose: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(purpose.as_bytes());
        h.update([0]);
        h.update(self.0.as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `presented` is [`AdminToken::derived`] for `purpose` (in constant time).
    pub fn accepts_derived(&self, purpose: &str, presented: &str) -> bool {
        constant_time_eq(presented.as_bytes(), self.derived(purpose).as_bytes())
    }

    /// Compares in time that depends on the lengths only, never on where they differ.
    fn matches(&self, presented: &str) -> bool {
        constant_time_eq(presented.as_bytes(), self.0.as_bytes())
    }
}

/// Compares in time that depends on the lengths only, never on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// The shortest admin token production mode accepts (32 random bytes' worth of hex is 64).
pub const MIN_PRODUCTION_TOKEN: usize = 32;

/// Middleware (for `actix_web::middleware::from_fn`, on the admin scope) that answers 401 unless
/// the request carries the [`AdminToken`] found in the app data as `web::Data<AdminToken>`.
pub async fn require_admin(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let Some(token) = req.app_data::<web::Data<AdminToken>>().cloned() else {
        return Err(Problem::internal("no admin token configured").into());
    };
    if let Err(problem) = token.check(req.request()) {
        return Ok(req.error_response(problem));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    /// Once shutdown has begun, a request on a connection still open is refused before any
    /// handler runs (nothing started, nothing stored) and the connection is closed.
    #[actix_web::test]
    async fn a_request_that_arrives_while_stopping_gets_503_and_a_closed_connection() {
        let (tx, rx) = watch::channel(false);
        let shutdown = Shutdown {
            rx,
            tx: std::sync::Arc::new(tx),
        };
        let handled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = handled.clone();
        let app = actix_web::test::init_service(
            actix_web::App::new()
                .wrap(actix_web::middleware::from_fn(refuse_when_stopping))
                .app_data(web::Data::new(shutdown.clone()))
                .route(
                    "/work",
                    web::post().to(move || {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        async { HttpResponse::Created().finish() }
                    }),
                ),
        )
        .await;
        let before = actix_web::test::call_service(
            &app,
            actix_web::test::TestRequest::post()
                .uri("/work")
                .to_request(),
        )
        .await;
        assert_eq!(before.status(), 201);
        shutdown.trigger();
        let after = actix_web::test::call_service(
            &app,
            actix_web::test::TestRequest::post()
                .uri("/work")
                .to_request(),
        )
        .await;
        assert_eq!(after.status(), 503);
        assert_eq!(
            after.response().head().connection_type(),
            actix_web::http::ConnectionType::Close
        );
        assert_eq!(handled.load(std::sync::atomic::Ordering::SeqCst), 1);
        let body = actix_web::test::read_body(after).await;
        assert!(String::from_utf8_lossy(&body).contains("stopping"));
    }

    #[test]
    fn production_mode_refuses_a_generated_admin_token() {
        let mut common = CommonConfig::local("x", 1, 2);
        common.production = true;
        assert!(AdminToken::resolve(&common, "x").is_err());
        common.admin_token = Some("short".into());
        assert!(AdminToken::resolve(&common, "x").is_err());
        common.admin_token = Some("x".repeat(MIN_PRODUCTION_TOKEN - 1));
        assert!(AdminToken::resolve(&common, "x").is_err());
        common.admin_token = Some("x".repeat(MIN_PRODUCTION_TOKEN));
        assert!(AdminToken::resolve(&common, "x").is_ok());
    }

    #[test]
    fn a_dev_token_is_generated_once_and_kept_private() {
        let dir = testkit::temp_dir("host-");
        let mut common = CommonConfig::local("x", 1, 2);
        common.data_dir = dir.path().join("data");
        let a = AdminToken::resolve(&common, "payment").unwrap();
        let b = AdminToken::resolve(&common, "payment").unwrap();
        assert_eq!(a.0, b.0);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("data/payment.admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let token = AdminToken::new("secret-token");
        let ok = TestRequest::default()
            .insert_header(("authorization", "Bearer secret-token"))
            .to_http_request();
        assert!(token.check(&ok).is_ok());
        for bad in [
            "Bearer secret-toke",
            "Bearer secret-token2",
            "Basic secret-token",
            "",
        ] {
            let req = TestRequest::default()
                .insert_header(("authorization", bad))
                .to_http_request();
            assert!(token.check(&req).is_err(), "{bad:?} passed");
        }
        assert!(token
            .check(&TestRequest::default().to_http_request())
            .is_err());
    }
}
