//! The coordinator's HTTP API, all behind the admin token: list transactions by status, show
//! one with its branch timeline, and the operator's retry. The reads are operator reads: a
//! transaction's payloads name accounts, amounts and stock, its timeline internal addresses.

use crate::engine::{Engine, EngineError};
use crate::log;
use crate::machine::Status;
use crate::view::transaction_page;
use actix_web::middleware::from_fn;
use actix_web::{web, HttpResponse};
use host::Problem;
use ids::Gid;
use proto::v1 as pb;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1/transactions")
            .wrap(from_fn(host::require_admin))
            .route("", web::get().to(list))
            .route("/{gid}", web::get().to(show)),
    )
    .service(
        host::Failpoints::<crate::engine::Crash>::routes(web::scope("/api/v1/admin"))
            .wrap(from_fn(host::require_admin))
            .route("/transactions/{gid}/retry", web::post().to(retry)),
    );
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(gid) => Problem::not_found(format!("no transaction {gid}")),
            EngineError::Invalid(m) => Problem::bad_request(m),
            EngineError::KeyReused(_) => Problem::new(
                actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                e.to_string(),
            ),
            EngineError::Store(s) => s.into(),
            EngineError::Id(_) | EngineError::Node(_) => {
                tracing::error!(error = %e, "no transaction id can be made");
                Problem::unavailable("no transaction id can be made right now; retry later")
            }
            EngineError::NodeLost => Problem::unavailable(e.to_string()),
        }
    }
}

pub(crate) fn parse_gid(raw: &str) -> Result<Gid, Problem> {
    raw.parse::<Gid>()
        .ok()
        .filter(|g| g.as_u64() > 0)
        .ok_or_else(|| Problem::bad_request(format!("{raw:?} is not a transaction id")))
}

/// A listing's query string, shared by the API and the console.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    pub status: Option<String>,
    pub mode: Option<String>,
    /// Created at or after (Unix ms).
    pub from_ms: Option<i64>,
    /// Created before (Unix ms).
    pub to_ms: Option<i64>,
    /// A gid, an idempotency key, or an order or refund id.
    pub q: Option<String>,
    #[serde(default = "default_limit")]
    pub limit: i64,
    pub before: Option<String>,
}

fn default_limit() -> i64 {
    50
}

impl ListQuery {
    /// The filter it names; a 400 for a value that names nothing.
    pub(crate) fn filter(&self) -> Result<log::Filter, Problem> {
        let given = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
        let status = match given(&self.status) {
            None => None,
            Some(s) => Some(Status::parse(&s).ok_or_else(|| {
                Problem::bad_request(
                    "status must be prepared, confirming, cancelling, succeeded or failed",
                )
            })?),
        };
        let mode = match given(&self.mode) {
            None => None,
            Some(m) => Some(
                log::mode_named(&m)
                    .ok_or_else(|| Problem::bad_request("mode must be tcc or saga"))?,
            ),
        };
        let before = match given(&self.before) {
            None => None,
            Some(b) => Some(parse_gid(&b)?),
        };
        if let (Some(from), Some(to)) = (self.from_ms, self.to_ms) {
            if from >= to {
                return Err(Problem::bad_request("from_ms must be before to_ms"));
            }
        }
        let search = given(&self.q);
        if search.as_ref().is_some_and(|s| s.len() > 200) {
            return Err(Problem::bad_request("q must be at most 200 characters"));
        }
        Ok(log::Filter {
            status,
            mode,
            created_from: self.from_ms,
            created_to: self.to_ms,
            search,
            before,
            limit: self.limit.clamp(1, 500),
        })
    }
}

/// `GET /api/v1/transactions?status=cancelling&mode=saga&from_ms=…&to_ms=…&q=<gid, key or
/// order id>&limit=50&before=<gid>`: newest first.
async fn list(
    engine: web::Data<Arc<Engine>>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let filter = q.filter()?;
    let limit = filter.limit;
    let rows = log::list(engine.db(), &filter)
        .await
        .map_err(EngineError::from)?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.gid))
        .flatten();
    let counts: serde_json::Map<String, serde_json::Value> = log::counts(engine.db())
        .await
        .map_err(EngineError::from)?
        .into_iter()
        .map(|(s, n)| (s, json!(n)))
        .collect();
    Ok(HttpResponse::Ok()
        .json(json!({ "transactions": rows, "next_before": next, "counts": counts })))
}

/// An op's name as the log and metrics spell it.
fn op_name(wire: i32) -> &'static str {
    crate::machine::Op::from_wire(wire).map_or("unspecified", crate::machine::Op::as_str)
}

fn name<T: std::fmt::Debug>(v: T) -> String {
    format!("{v:?}").to_lowercase()
}

#[derive(Debug, Deserialize)]
struct ShowQuery {
    /// Attempts per page of the timeline, newest first (1..=1000).
    #[serde(default = "default_timeline_limit")]
    timeline_limit: i64,
    /// The `timeline.next_before` of the previous page.
    timeline_before: Option<String>,
}

fn default_timeline_limit() -> i64 {
    200
}

/// `GET /api/v1/transactions/{gid}?timeline_limit=200&timeline_before=<cursor>`: the
/// transaction, its branches, and a page of its attempts (the newest; `timeline.next_before`
/// pages back through older ones).
async fn show(
    engine: web::Data<Arc<Engine>>,
    gid: web::Path<String>,
    q: web::Query<ShowQuery>,
) -> Result<HttpResponse, Problem> {
    let gid = parse_gid(&gid)?;
    if !(1..=1000).contains(&q.timeline_limit) {
        return Err(Problem::bad_request(
            "timeline_limit must be between 1 and 1000",
        ));
    }
    let before = match q.timeline_before.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse::<log::TimelineCursor>().map_err(|()| {
            Problem::bad_request(format!(
                "{c:?} is not a timeline cursor (use timeline.next_before of the previous page)"
            ))
        })?),
    };
    let (t, total, next) = transaction_page(engine.db(), gid, before, q.timeline_limit).await?;
    let shown: usize = t.branches.iter().map(|b| b.timeline.len()).sum();
    let branches: Vec<_> = t
        .branches
        .iter()
        .map(|b| {
            json!({
                "branch_id": b.branch_id,
                "participant": b.participant,
                "op": op_name(b.op),
                "status": b.status,
                "attempts": b.attempts,
                "last_error": (!b.last_error.is_empty()).then_some(&b.last_error),
                "depends_on": b.depends_on,
                "retriable": b.retriable,
                "timeline": b.timeline.iter().map(|a| json!({
                    "op": op_name(a.op),
                    "started_at_ms": a.started_at_ms,
                    "duration_ms": a.duration_ms,
                    "outcome": match a.outcome() {
                        _ if a.abandoned => "abandoned".to_owned(),
                        pb::Outcome::Unspecified => "error".to_owned(),
                        o => name(o),
                    },
                    "error": (!a.error.is_empty()).then_some(&a.error),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "gid": t.gid.to_string(),
        "mode": name(t.mode()),
        "status": name(t.status()),
        "reason": (!t.reason.is_empty()).then_some(&t.reason),
        "rollback": t.rollback.as_ref().and_then(|r| r.kind.as_ref()).map(|k| {
            use pb::rollback::Kind;
            match k {
                Kind::Rejected(r) => json!({"kind": "rejected", "branch_id": r.branch_id, "code": r.code, "message": r.message}),
                Kind::Errored(e) => json!({"kind": "errored", "branch_id": e.branch_id, "error": e.error}),
                Kind::Deadline(_) => json!({"kind": "deadline"}),
                Kind::Described(text) => json!({"kind": "described", "text": text}),
            }
        }),
        "idempotency_key": (!t.idempotency_key.is_empty()).then_some(&t.idempotency_key),
        "created_at_ms": t.created_at_ms,
        "updated_at_ms": t.updated_at_ms,
        "deadline_ms": t.deadline_ms,
        "next_attempt_at_ms": t.next_attempt_at_ms,
        "attempts": t.attempts,
        // Ended longer ago than the retention: its branches and timeline were purged (every
        // transaction is recorded with at least one branch).
        "details_purged": t.branches.is_empty(),
        "branches": branches,
        "timeline": {
            "shown": shown,
            "total": total,
            "next_before": next.map(|c| c.to_string()),
        },
    })))
}

/// `POST /api/v1/admin/transactions/{gid}/retry`: drive an unfinished transaction now.
async fn retry(
    engine: web::Data<Arc<Engine>>,
    gid: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let gid = parse_gid(&gid)?;
    let status = engine.retry_now(gid).await?;
    Ok(HttpResponse::Accepted().json(json!({ "gid": gid.to_string(), "status": status.as_str() })))
}
