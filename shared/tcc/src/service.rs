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
    use host::problem::only;
    cfg.service(
        web::scope("/admin/faults")
            .wrap(from_fn(host::require_admin))
            .service(
                only("", "GET, DELETE")
                    .route(web::get().to(list_faults))
                    .route(web::delete().to(clear_faults)),
            )
            .service(only("/release", "POST").route(web::post().to(release_faults)))
            .service(only("/{op}", "PUT").route(web::put().to(arm_fault))),
    );
}

/// The fault routes' OpenAPI paths, for a participant's document.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    paths(list_faults, clear_faults, release_faults, arm_fault),
    components(schemas(ArmFault, FaultsView, ArmedFault, Injected)),
    modifiers(&ClosedFaultBody),
    tags((name = "faults", description = "Delayed, hung, failed or erroring branch calls on purpose, for labs and tests (refused in production)"))
)]
pub struct FaultsApi;

/// Says in the document what `deny_unknown_fields` does (utoipa leaves it out on an enum's
/// variants): each kind of [`ArmFault`] takes its own fields and nothing else, so a client or a
/// fuzzer knows an extra field is refused.
struct ClosedFaultBody;

impl utoipa::Modify for ClosedFaultBody {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{AdditionalProperties, Schema};
        use utoipa::openapi::RefOr;
        let Some(RefOr::T(Schema::OneOf(kinds))) = openapi
            .components
            .as_mut()
            .and_then(|c| c.schemas.get_mut("ArmFault"))
        else {
            return;
        };
        for kind in &mut kinds.items {
            if let RefOr::T(Schema::Object(object)) = kind {
                object.additional_properties =
                    Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }
}

/// `PUT /admin/faults/{op}`'s body: every field known, none ignored (a misspelt `times` or an
/// `ms` on a hang would arm something else than asked), and each kind with only its own fields.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
#[schema(example = json!({"kind": "delay", "ms": 5000, "times": 1}))]
enum ArmFault {
    /// The call arrives `ms` milliseconds late, then runs normally.
    Delay {
        #[serde(deserialize_with = "admin::whole::number")]
        #[schema(minimum = 1, maximum = 600_000)]
        ms: u64,
        #[serde(default = "one", deserialize_with = "admin::whole::number")]
        #[schema(minimum = 1, maximum = 10_000)]
        times: u32,
    },
    /// The call waits for `POST /admin/faults/release` (at most 10 minutes), then runs.
    Hang {
        #[serde(default = "one", deserialize_with = "admin::whole::number")]
        #[schema(minimum = 1, maximum = 10_000)]
        times: u32,
    },
    /// The call answers FAILURE with `code` (default `injected_failure`), doing nothing: try
    /// and action only.
    Fail {
        #[schema(pattern = "^[a-z0-9_]{1,64}$")]
        code: Option<String>,
        #[serde(default = "one", deserialize_with = "admin::whole::number")]
        #[schema(minimum = 1, maximum = 10_000)]
        times: u32,
    },
    /// The call answers UNAVAILABLE, doing nothing.
    Error {
        #[serde(default = "one", deserialize_with = "admin::whole::number")]
        #[schema(minimum = 1, maximum = 10_000)]
        times: u32,
    },
}

fn one() -> u32 {
    1
}

impl ArmFault {
    /// The fault, and how many calls it takes.
    fn fault(self) -> (crate::fault::Fault, u32) {
        use crate::fault::Fault;
        match self {
            ArmFault::Delay { ms, times } => (Fault::Delay { ms }, times),
            ArmFault::Hang { times } => (Fault::Hang, times),
            ArmFault::Fail { code, times } => (
                Fault::Fail {
                    code: code.unwrap_or_else(|| "injected_failure".into()),
                },
                times,
            ),
            ArmFault::Error { times } => (Fault::Error, times),
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
            // Well-formed, but not a thing this op can do.
            crate::fault::FaultError::CannotFail(_) => {
                host::Problem::unprocessable("fault_not_applicable", e.to_string())
            }
            _ => host::Problem::bad_request(e.to_string()),
        }
    }
}

/// The faults of a participant, as each fault route answers them.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct FaultsView {
    /// What is armed, in the order it will be taken.
    armed: Vec<ArmedFault>,
    /// Calls taken by a fault so far, by op and kind.
    injected: Vec<Injected>,
}

/// A fault armed for the next `remaining` calls of `op`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct ArmedFault {
    #[schema(example = "confirm")]
    op: &'static str,
    /// `delay`, `hang`, `fail` or `error`.
    kind: &'static str,
    /// A delay's milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    ms: Option<u64>,
    /// A failure's code.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    remaining: u32,
}

/// Calls of `op` a fault of `kind` took.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct Injected {
    op: &'static str,
    kind: &'static str,
    calls: u64,
}

fn faults_view(faults: &crate::fault::Faults) -> FaultsView {
    use crate::fault::Fault;
    FaultsView {
        armed: faults
            .list()
            .into_iter()
            .map(|a| ArmedFault {
                op: a.op,
                kind: a.fault.kind(),
                ms: match a.fault {
                    Fault::Delay { ms } => Some(ms),
                    _ => None,
                },
                code: match a.fault {
                    Fault::Fail { code } => Some(code),
                    _ => None,
                },
                remaining: a.remaining,
            })
            .collect(),
        injected: faults
            .injected()
            .into_iter()
            .map(|((op, kind), calls)| Injected { op, kind, calls })
            .collect(),
    }
}

#[utoipa::path(
    put,
    path = "/admin/faults/{op}",
    tag = "faults",
    summary = "Arm a fault on the next calls of an op",
    params(("op" = String, Path, description = "The branch op the fault takes",
        pattern = "^(try|confirm|cancel|action|compensate)$")),
    request_body = ArmFault,
    responses(
        (status = 201, description = "Armed; the faults now", body = FaultsView),
        (status = 403, description = "Production mode refuses faults", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such op", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "This op cannot take this fault (only try and action may fail)", body = host::problem::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin" = []))
)]
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
    let (fault, times) = body.into_inner().fault();
    faults.arm(op, fault, times)?;
    Ok(actix_web::HttpResponse::Created().json(faults_view(&faults)))
}

#[utoipa::path(
    get,
    path = "/admin/faults",
    tag = "faults",
    summary = "The armed faults, and the calls faults took so far",
    responses((status = 200, description = "The faults", body = FaultsView)),
    security(("admin" = []))
)]
async fn list_faults(
    faults: actix_web::web::Data<crate::fault::Faults>,
) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(faults_view(&faults))
}

#[utoipa::path(
    post,
    path = "/admin/faults/release",
    tag = "faults",
    summary = "Let every hung call go on",
    responses((status = 200, description = "Released; the faults now", body = FaultsView)),
    security(("admin" = []))
)]
async fn release_faults(
    faults: actix_web::web::Data<crate::fault::Faults>,
) -> actix_web::HttpResponse {
    faults.release();
    actix_web::HttpResponse::Ok().json(faults_view(&faults))
}

#[utoipa::path(
    delete,
    path = "/admin/faults",
    tag = "faults",
    summary = "Disarm every fault and release hung calls",
    responses((status = 200, description = "Cleared; the faults now (none armed)", body = FaultsView)),
    security(("admin" = []))
)]
async fn clear_faults(
    faults: actix_web::web::Data<crate::fault::Faults>,
) -> actix_web::HttpResponse {
    faults.clear();
    actix_web::HttpResponse::Ok().json(faults_view(&faults))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_body_with_an_unknown_or_foreign_field_is_refused() {
        let parse = |s: &str| serde_json::from_str::<ArmFault>(s);
        assert!(matches!(
            parse(r#"{"kind": "delay", "ms": 5, "times": 2}"#),
            Ok(ArmFault::Delay { ms: 5, times: 2 })
        ));
        assert!(matches!(
            parse(r#"{"kind": "delay", "ms": 5.0, "times": 2.0}"#),
            Ok(ArmFault::Delay { ms: 5, times: 2 })
        ));
        assert!(matches!(
            parse(r#"{"kind": "hang"}"#),
            Ok(ArmFault::Hang { times: 1 })
        ));
        for bad in [
            r#"{"kind": "delay", "ms": 5, "time": 2}"#,
            r#"{"kind": "hang", "ms": 5}"#,
            r#"{"kind": "error", "code": "x"}"#,
            r#"{"kind": "explode"}"#,
            r#"{"ms": 5}"#,
            r#"{"kind": "delay", "ms": 5.5}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad} was taken");
        }
    }

    #[test]
    fn the_documented_fault_body_allows_no_field_it_would_refuse() {
        use utoipa::OpenApi as _;
        let doc = serde_json::to_value(FaultsApi::openapi()).unwrap();
        let variants = doc["components"]["schemas"]["ArmFault"]["oneOf"]
            .as_array()
            .expect("ArmFault is one of its kinds");
        assert_eq!(variants.len(), 4);
        for v in variants {
            assert_eq!(v["additionalProperties"], false, "{v}");
            assert!(v["required"]
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("kind")));
        }
    }
}
