//! Starting a participant service: the part every participant's `start` has in common.

use crate::grpc::{BranchMetrics, ParticipantService};
use crate::{Handler, PurgeConfig};
use host::app::{Running, ServiceParts, StartError};
use host::serve::Shutdown;
use host::{AdminToken, CommonConfig, Metrics};
use std::sync::Arc;
use std::time::Duration;
use store::Db;

/// The largest JSON body a participant service reads (its admin API's, order-svc's public API's).
pub const JSON_LIMIT: usize = 16 * 1024;

/// The configuration of a participant service: the common settings and barrier purging.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ParticipantConfig {
    #[serde(flatten)]
    pub common: CommonConfig,
    #[serde(flatten)]
    pub barrier: PurgeConfig,
}

impl ParticipantConfig {
    /// Local defaults for service `name` (`sqlite://data/<name>.db`, the given ports).
    pub fn local(name: &str, http_port: u16, grpc_port: u16) -> Self {
        ParticipantConfig {
            common: CommonConfig::local(name, http_port, grpc_port),
            barrier: PurgeConfig::default(),
        }
    }

    /// `defaults`, then `CONFIG_FILE`, then `<env_prefix>*` variables.
    pub fn load(defaults: Self, env_prefix: &str) -> Result<Self, host::ConfigError> {
        host::load_config(defaults, env_prefix)
    }
}

/// What differs between participant services.
pub struct Participant<H> {
    /// `payment-svc`, …: logs and metrics.
    pub name: &'static str,
    /// `payment`, …: the admin token file name.
    pub short_name: &'static str,
    pub common: CommonConfig,
    pub purge: PurgeConfig,
    /// The service's own migrations (the barrier's are added).
    pub migrator: &'static sqlx::migrate::Migrator,
    pub handler: H,
    /// The service's own routes; `web::Data<AdminToken>` and `web::Data<Db>` are in the app
    /// data.
    pub routes: host::app::HttpRoutes,
    /// The service's own background work, started once the database is ready (order-svc's
    /// purge of answered idempotency keys); it should stop when the shutdown fires.
    pub background: Option<Background>,
}

/// Work a service starts beside its participant, given the database and the shutdown signal.
pub type Background = Box<dyn FnOnce(&Db, &Shutdown) + Send>;

impl<H> std::fmt::Debug for Participant<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Opens the database, runs the service's and the barrier's migrations, and serves the
/// participant over gRPC and the admin routes over HTTP until `shutdown`.
pub async fn start<H: Handler>(
    p: Participant<H>,
    shutdown: Shutdown,
) -> Result<Running, StartError> {
    p.purge
        .validate()
        .map_err(|e| host::ConfigError(e.to_string()))?;
    let db = Db::connect(&p.common.db_config()?).await?;
    db.migrate_all(&[p.migrator, &crate::MIGRATOR]).await?;
    let admin = actix_web::web::Data::new(AdminToken::resolve(&p.common, p.short_name)?);
    let tls = p
        .common
        .trust(p.short_name)
        .map_err(host::StartError::from)?;
    let metrics = Metrics::new();
    let in_flight = host::serve::InFlight::default();
    let faults = Arc::new(crate::fault::Faults::new(p.common.production));
    let participant = ParticipantService::new(
        db.clone(),
        Arc::new(p.handler),
        metrics.register(BranchMetrics::new),
    )
    .detached_on(in_flight.clone())
    .with_faults(faults.clone());
    // Calls still delayed or hung when the service stops are lost, not started late.
    tokio::spawn({
        let (faults, stop) = (faults.clone(), shutdown.clone());
        async move {
            stop.wait().await;
            faults.stop();
        }
    });
    let faults = actix_web::web::Data::from(faults);
    p.purge.spawn(db.clone(), shutdown.clone().wait());
    if let Some(background) = p.background {
        background(&db, &shutdown);
    }
    let routes = p.routes;
    host::app::start(
        ServiceParts {
            name: p.name,
            http_addr: p.common.http_addr.clone(),
            grpc_addr: p.common.grpc_addr.clone(),
            db,
            metrics,
            grpc: tonic::service::Routes::new(participant.into_server()),
            http: Arc::new(move |cfg| {
                cfg.app_data(admin.clone()).app_data(faults.clone());
                // Before the service's own `/admin` scope, which would take these paths.
                fault_routes(cfg);
                routes(cfg);
            }),
            shutdown_grace: Duration::from_secs(p.common.shutdown_grace_secs),
            json_limit: JSON_LIMIT,
            tls,
            // A participant's branches are the coordinator's to drive, no one else's.
            grpc_callers: &["coordinator"],
            in_flight,
        },
        shutdown,
    )
    .await
    .map_err(StartError::from)
}

/// `/admin/faults`: arm, list, release and clear the participant's faults (see [`crate::fault`]),
/// behind the admin token; refused in production.
///
/// - `PUT /admin/faults/{op}` `{"kind": "delay", "ms": 5000, "times": 1}` (or `"hang"`,
///   `"fail"` with an optional `"code"`, `"error"`): the next `times` calls of `op`;
/// - `GET /admin/faults`: what is armed, and the calls faults took so far;
/// - `POST /admin/faults/release`: hung calls go on; `DELETE /admin/faults`: disarm everything
///   (and release).
fn fault_routes(cfg: &mut actix_web::web::ServiceConfig) {
    use actix_web::middleware::from_fn;
    use actix_web::web;
    cfg.service(
        web::scope("/admin/faults")
            .wrap(from_fn(host::require_admin))
            .route("", web::get().to(list_faults))
            .route("", web::delete().to(clear_faults))
            .route("/release", web::post().to(release_faults))
            .route("/{op}", web::put().to(arm_fault)),
    );
}

/// `PUT /admin/faults/{op}`'s body: every field known, none ignored (a misspelt `times` or an
/// `ms` on a hang would arm something else than asked).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ArmFault {
    kind: String,
    ms: Option<u64>,
    code: Option<String>,
    #[serde(default = "one")]
    times: u32,
}

fn one() -> u32 {
    1
}

impl ArmFault {
    fn fault(&self) -> Result<crate::fault::Fault, host::Problem> {
        use crate::fault::Fault;
        let extra = |what: &str| {
            host::Problem::bad_request(format!("{what} does not apply to a {} fault", self.kind))
        };
        match self.kind.as_str() {
            "delay" => {
                if self.code.is_some() {
                    return Err(extra("code"));
                }
                Ok(Fault::Delay {
                    ms: self
                        .ms
                        .ok_or_else(|| host::Problem::bad_request("a delay needs ms"))?,
                })
            }
            "fail" => {
                if self.ms.is_some() {
                    return Err(extra("ms"));
                }
                Ok(Fault::Fail {
                    code: self
                        .code
                        .clone()
                        .unwrap_or_else(|| "injected_failure".into()),
                })
            }
            "hang" | "error" => {
                if self.ms.is_some() {
                    return Err(extra("ms"));
                }
                if self.code.is_some() {
                    return Err(extra("code"));
                }
                Ok(if self.kind == "hang" {
                    Fault::Hang
                } else {
                    Fault::Error
                })
            }
            other => Err(host::Problem::bad_request(format!(
                "{other:?} is not a fault: delay, hang, fail or error"
            ))),
        }
    }
}

impl From<crate::fault::FaultError> for host::Problem {
    fn from(e: crate::fault::FaultError) -> Self {
        use actix_web::http::StatusCode;
        match e {
            crate::fault::FaultError::Production => {
                host::Problem::new(StatusCode::FORBIDDEN, "faults_refused", e.to_string())
            }
            _ => host::Problem::bad_request(e.to_string()),
        }
    }
}

fn faults_view(faults: &crate::fault::Faults) -> serde_json::Value {
    serde_json::json!({
        "armed": faults.list(),
        "injected": faults
            .injected()
            .into_iter()
            .map(|((op, kind), calls)| serde_json::json!({"op": op, "kind": kind, "calls": calls}))
            .collect::<Vec<_>>(),
    })
}

async fn arm_fault(
    faults: actix_web::web::Data<crate::fault::Faults>,
    op: actix_web::web::Path<String>,
    body: actix_web::web::Json<ArmFault>,
) -> Result<actix_web::HttpResponse, host::Problem> {
    let op = crate::Op::parse(&op).ok_or_else(|| {
        host::Problem::not_found(format!(
            "no op {:?}; ops: try, confirm, cancel, action, compensate",
            op.as_str()
        ))
    })?;
    let fault = body.fault()?;
    faults.arm(op, fault, body.times)?;
    Ok(actix_web::HttpResponse::Created().json(faults_view(&faults)))
}

async fn list_faults(
    faults: actix_web::web::Data<crate::fault::Faults>,
) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(faults_view(&faults))
}

async fn release_faults(
    faults: actix_web::web::Data<crate::fault::Faults>,
) -> actix_web::HttpResponse {
    faults.release();
    actix_web::HttpResponse::Ok().json(faults_view(&faults))
}

async fn clear_faults(
    faults: actix_web::web::Data<crate::fault::Faults>,
) -> actix_web::HttpResponse {
    faults.clear();
    actix_web::HttpResponse::Ok().json(faults_view(&faults))
}
