//! Crash failpoints armed at run time: the process SIGKILLs itself when it reaches a named point
//! (the next time, or after letting a given number of hits pass).
//!
//! Some crashes only matter at one exact step of a protocol — order-svc between the
//! coordinator's answer and storing the client's response, say — where a SIGKILL from outside
//! would have to be lucky. A failpoint puts the crash there. The container tests and the course
//! labs arm one through the admin API (`PUT /admin/failpoints/{point}` with `{"after": n}`: let
//! n hits pass, crash at the next), and the process that restarts comes up with none armed, so a
//! test can watch the recovery. Production mode refuses to arm any: a failpoint is a way to kill
//! the process over HTTP.
//!
//! A service names its points as an enum implementing [`Point`]; an unknown name is a 404 that
//! lists the known ones.

use crate::Problem;
use actix_web::{http::StatusCode, web, HttpResponse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// A service's crash points.
pub trait Point: Copy + Ord + std::fmt::Debug + Send + Sync + 'static {
    /// Every point, for listing and for parsing names.
    const ALL: &'static [Self];
    /// The point's name in the admin API and in the log.
    fn name(self) -> &'static str;
}

/// Why a failpoint could not be armed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FailpointError {
    #[error("failpoints are refused in production mode")]
    Production,
    #[error("no failpoint {name:?}; known: {known}")]
    Unknown { name: String, known: String },
    #[error("after must be at most {max}")]
    After { max: u32 },
}

impl From<FailpointError> for Problem {
    fn from(e: FailpointError) -> Problem {
        let (status, code) = match e {
            FailpointError::Production => (StatusCode::FORBIDDEN, "failpoints_refused"),
            FailpointError::Unknown { .. } => (StatusCode::NOT_FOUND, "not_found"),
            FailpointError::After { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
        };
        Problem::new(status, code, e.to_string())
    }
}

/// The most hits an armed point may let pass.
pub const MAX_AFTER: u32 = 1_000_000;

/// The armed points of one process, and how many hits each lets pass before it fires.
#[derive(Debug)]
pub struct Failpoints<P: Point> {
    production: bool,
    /// Whether any point is armed: the only thing a hit on the hot path reads.
    any: AtomicBool,
    armed: Mutex<BTreeMap<P, u32>>,
}

impl<P: Point> Failpoints<P> {
    /// None armed; arming is refused when `production`.
    pub fn new(production: bool) -> Self {
        Failpoints {
            production,
            any: AtomicBool::new(false),
            armed: Mutex::new(BTreeMap::new()),
        }
    }

    /// The point called `name`.
    pub fn parse(name: &str) -> Result<P, FailpointError> {
        P::ALL
            .iter()
            .copied()
            .find(|p| p.name() == name)
            .ok_or_else(|| FailpointError::Unknown {
                name: name.chars().take(64).collect(),
                known: P::ALL
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Makes `point` let `after` hits pass, then kill the process at the next.
    pub fn arm(&self, point: P, after: u32) -> Result<(), FailpointError> {
        if self.production {
            return Err(FailpointError::Production);
        }
        if after > MAX_AFTER {
            return Err(FailpointError::After { max: MAX_AFTER });
        }
        let mut armed = self.lock();
        armed.insert(point, after);
        self.any.store(true, Ordering::SeqCst);
        Ok(())
    }

    pub fn disarm(&self, point: P) {
        let mut armed = self.lock();
        armed.remove(&point);
        self.any.store(!armed.is_empty(), Ordering::SeqCst);
    }

    /// The armed points and the hits each still lets pass.
    pub fn armed(&self) -> Vec<(P, u32)> {
        self.lock().iter().map(|(p, n)| (*p, *n)).collect()
    }

    /// Kills the process (SIGKILL: no destructor, no flush, as a power cut would) when `point`
    /// is armed; otherwise returns at once.
    pub fn hit(&self, point: P) {
        if !self.any.load(Ordering::Relaxed) {
            return;
        }
        let fire = {
            let mut armed = self.lock();
            let fire = match armed.get_mut(&point) {
                Some(0) => armed.remove(&point).is_some(),
                Some(pass) => {
                    *pass -= 1;
                    false
                }
                None => false,
            };
            self.any.store(!armed.is_empty(), Ordering::SeqCst);
            fire
        };
        if fire {
            tracing::warn!(failpoint = point.name(), "failpoint: killing this process");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            // Still here: PID 1 of a PID namespace (a container without an init) ignores its
            // own SIGKILL. Abort: no flushing, no unwinding, as close to a kill as it gets.
            std::process::abort();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<P, u32>> {
        self.armed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `GET /failpoints`, `PUT /failpoints/{point}` (`{"after": n}`) and
    /// `DELETE /failpoints/{point}` on `scope` (an admin scope: the caller puts the token in
    /// front). Each answers the armed points. Needs `web::Data<Failpoints<P>>`.
    pub fn routes(scope: actix_web::Scope) -> actix_web::Scope {
        use crate::problem::only;
        scope
            .service(only("/failpoints", "GET").route(web::get().to(list::<P>)))
            .service(
                only("/failpoints/{point}", "PUT, DELETE")
                    .route(web::put().to(arm::<P>))
                    .route(web::delete().to(disarm::<P>)),
            )
    }

    /// The routes' OpenAPI paths (`/failpoints…`, to nest under the admin scope's prefix), with
    /// `point` enumerating this service's points.
    pub fn openapi() -> utoipa::openapi::OpenApi {
        use utoipa::OpenApi as _;
        let mut doc = FailpointsApi::openapi();
        let names: Vec<&str> = P::ALL.iter().map(|p| p.name()).collect();
        crate::openapi::enumerate_path_parameter(&mut doc, "point", &names);
        doc
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, arm, disarm),
    components(schemas(Arm, Armed, FailpointList)),
    tags((name = "failpoints", description = "Crash points for tests and labs: the process SIGKILLs itself at the armed one (refused in production)"))
)]
struct FailpointsApi;

/// One armed point, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Armed {
    pub point: String,
    /// Hits it still lets pass before it fires.
    pub after: u32,
}

/// The admin API's answer: what is armed, and every point there is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailpointList {
    pub armed: Vec<Armed>,
    pub known: Vec<String>,
}

/// `PUT /admin/failpoints/{point}`'s body.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"after": 2}))]
pub struct Arm {
    /// Hits to let pass first (0, the default: fire at the next).
    #[serde(default, deserialize_with = "admin::whole::number")]
    #[schema(maximum = 1_000_000)]
    pub after: u32,
}

fn listing<P: Point>(f: &Failpoints<P>) -> HttpResponse {
    HttpResponse::Ok().json(FailpointList {
        armed: f
            .armed()
            .into_iter()
            .map(|(p, after)| Armed {
                point: p.name().into(),
                after,
            })
            .collect(),
        known: P::ALL.iter().map(|p| p.name().into()).collect(),
    })
}

#[utoipa::path(
    get,
    operation_id = "list_failpoints",
    path = "/failpoints",
    tag = "failpoints",
    summary = "The armed failpoints, and every point there is",
    responses((status = 200, description = "Armed and known points", body = FailpointList)),
    security(("admin" = []))
)]
async fn list<P: Point>(f: web::Data<Failpoints<P>>) -> HttpResponse {
    listing(&f)
}

#[utoipa::path(
    put,
    operation_id = "arm_failpoint",
    path = "/failpoints/{point}",
    tag = "failpoints",
    summary = "Arm a failpoint: let `after` hits pass, then SIGKILL the process at the next",
    params(("point" = String, Path, description = "The point's name.")),
    request_body = Arm,
    responses(
        (status = 200, description = "Armed; what is armed now", body = FailpointList),
        (status = 403, description = "Production mode refuses failpoints", body = crate::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such point", body = crate::problem::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin" = []))
)]
async fn arm<P: Point>(
    f: web::Data<Failpoints<P>>,
    point: web::Path<String>,
    body: web::Json<Arm>,
) -> Result<HttpResponse, Problem> {
    let point = Failpoints::<P>::parse(&point)?;
    f.arm(point, body.after)?;
    tracing::warn!(
        failpoint = point.name(),
        after = body.after,
        "failpoint armed"
    );
    Ok(listing(&f))
}

#[utoipa::path(
    delete,
    operation_id = "disarm_failpoint",
    path = "/failpoints/{point}",
    tag = "failpoints",
    summary = "Disarm a failpoint",
    params(("point" = String, Path, description = "The point's name.")),
    responses(
        (status = 200, description = "Disarmed (or was not armed); what is armed now", body = FailpointList),
        (status = 404, description = "No such point", body = crate::problem::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin" = []))
)]
async fn disarm<P: Point>(
    f: web::Data<Failpoints<P>>,
    point: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let point = Failpoints::<P>::parse(&point)?;
    f.disarm(point);
    Ok(listing(&f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Here {
        One,
        Two,
    }

    impl Point for Here {
        const ALL: &'static [Here] = &[Here::One, Here::Two];
        fn name(self) -> &'static str {
            match self {
                Here::One => "one",
                Here::Two => "two",
            }
        }
    }

    #[test]
    fn production_mode_refuses_to_arm_a_failpoint() {
        let f = Failpoints::<Here>::new(true);
        assert_eq!(f.arm(Here::One, 0), Err(FailpointError::Production));
        assert!(f.armed().is_empty());
        // Nothing armed: a hit returns.
        f.hit(Here::One);
    }

    #[test]
    fn a_point_is_parsed_by_name_and_an_unknown_one_lists_the_known() {
        assert_eq!(Failpoints::<Here>::parse("two"), Ok(Here::Two));
        let e = Failpoints::<Here>::parse("three").unwrap_err();
        assert_eq!(e.to_string(), r#"no failpoint "three"; known: one, two"#);
    }

    #[test]
    fn an_armed_point_lets_its_hits_pass_and_disarming_clears_it() {
        let f = Failpoints::<Here>::new(false);
        assert_eq!(
            f.arm(Here::One, MAX_AFTER + 1),
            Err(FailpointError::After { max: MAX_AFTER })
        );
        f.arm(Here::Two, 3).unwrap();
        // Another point's hit leaves it as it was; its own hits count down (none fires yet).
        f.hit(Here::One);
        assert_eq!(f.armed(), vec![(Here::Two, 3)]);
        f.hit(Here::Two);
        f.hit(Here::Two);
        assert_eq!(f.armed(), vec![(Here::Two, 1)]);
        f.disarm(Here::Two);
        assert!(f.armed().is_empty());
        assert!(!f.any.load(Ordering::SeqCst));
    }
}
