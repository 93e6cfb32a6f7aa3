//! The coordinator's HTTP API, all behind the admin token: list transactions by status, show
//! one with its branch timeline, and the operator's retry. The reads are operator reads: a
//! transaction's payloads name accounts, amounts and stock, its timeline internal addresses.

use crate::engine::{Engine, EngineError};
use crate::log;
use crate::machine::Status;
use crate::view::transaction_page;
use actix_web::middleware::from_fn;
use actix_web::{web, HttpResponse};
use host::openapi::GidPath;
use host::problem::{only, ProblemBody};
use host::Problem;
use ids::Gid;
use proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use utoipa::OpenApi;

/// Mounts the routes (each a 405 for a method it does not take) and the OpenAPI document.
pub fn routes(cfg: &mut web::ServiceConfig) {
    host::openapi::routes(cfg, document());
    cfg.service(
        web::scope("/api/v1/transactions")
            .wrap(from_fn(host::require_admin))
            .service(only("", "GET").route(web::get().to(list)))
            .service(only("/{gid}", "GET").route(web::get().to(show))),
    )
    .service(
        host::Failpoints::<crate::engine::Crash>::routes(web::scope("/api/v1/admin"))
            .wrap(from_fn(host::require_admin))
            .service(only("/transactions/{gid}/retry", "POST").route(web::post().to(retry))),
    );
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tcc-pay coordinator operator API",
        version = "1",
        description = "The global transactions of the tcc-pay platform, for operators, tests \
            and labs: list and search them, read one with every attempt of every branch, retry \
            one now, and the crash failpoints. Every call needs the coordinator's admin token. \
            Errors are RFC 9457 problem documents (`application/problem+json`) whose `code` says \
            what went wrong. Transactions are begun and driven over gRPC \
            (`tcc.v1.Coordinator`); the web console (`/console`) reads the same log."
    ),
    paths(list, show, retry),
    components(schemas(TransactionList, log::Summary, Transaction, Branch, AttemptView, Rollback, TimelinePage, Retried)),
    tags((name = "transactions", description = "The transaction log, and the operator's retry"))
)]
struct CoordinatorApi;

/// The coordinator's OpenAPI document, made once.
pub fn document() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let api = CoordinatorApi::openapi().nest(
            "/api/v1/admin",
            host::Failpoints::<crate::engine::Crash>::openapi(),
        );
        let mut doc = host::openapi::finish(api);
        let first = "$response.body#/transactions/0/gid";
        for to in ["show_transaction", "retry_transaction"] {
            host::openapi::link(&mut doc, "GET /api/v1/transactions", to, "gid", first);
        }
        doc
    })
}

impl From<EngineError> for Problem {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(gid) => Problem::not_found(format!("no transaction {gid}")),
            EngineError::Invalid(m) => Problem::bad_request(m),
            EngineError::KeyReused(_) => {
                Problem::unprocessable("idempotency_key_reused", e.to_string())
            }
            EngineError::Store(s) => s.into(),
            EngineError::Id(_) | EngineError::Node(_) => {
                tracing::error!(error = %e, "no transaction id can be made");
                Problem::unavailable("no transaction id can be made right now; retry later")
            }
            EngineError::NodeLost => Problem::unavailable(e.to_string()),
        }
    }
}

/// A transaction id in a path or a cursor (`host::page::positive_id`'s form): `None` when it is
/// well formed but beyond every gid (the caller's "no such transaction").
pub(crate) fn parse_gid(raw: &str) -> Result<Option<Gid>, Problem> {
    Ok(host::page::positive_id("a transaction id", raw)?
        .and_then(|id| Gid::from_u64(id as u64).ok()))
}

/// A transaction id in a path: 404 when it is beyond every gid.
fn gid_in_path(raw: &str) -> Result<Gid, Problem> {
    parse_gid(raw)?.ok_or_else(|| Problem::not_found(format!("no transaction {raw}")))
}

/// A listing's query string, shared by the API and the console (whose form sends an empty value
/// for a filter left open: empty means any).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only transactions in this status.
    #[param(pattern = "^(prepared|confirming|cancelling|succeeded|failed)?$")]
    pub status: Option<String>,
    /// Only TCC or only Saga transactions.
    #[param(pattern = "^(tcc|saga)?$")]
    pub mode: Option<String>,
    /// Created at or after (Unix ms).
    pub from_ms: Option<i64>,
    /// Created before (Unix ms); after `from_ms` when both are given.
    pub to_ms: Option<i64>,
    /// A gid, an idempotency key, or an order or refund id.
    #[param(max_length = 200)]
    pub q: Option<String>,
    /// Page size (clamped to 1..=500; default 50).
    #[serde(default = "default_limit")]
    #[param(default = 50)]
    pub limit: i64,
    /// `next_before` of the previous page: the listing goes on below it.
    #[param(pattern = "^([1-9][0-9]{0,18})?$")]
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
            // Beyond every gid: the listing from the newest.
            Some(b) => parse_gid(&b)?,
        };
        if let (Some(from), Some(to)) = (self.from_ms, self.to_ms) {
            if from >= to {
                // Well-formed, but a range with nothing in it.
                return Err(Problem::unprocessable(
                    "empty_range",
                    "from_ms must be before to_ms",
                ));
            }
        }
        let search = given(&self.q);
        if search.as_ref().is_some_and(|s| s.chars().count() > 200) {
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

/// A page of transactions, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct TransactionList {
    transactions: Vec<log::Summary>,
    /// The `before` of the next page; none on the last.
    #[schema(value_type = Option<String>)]
    next_before: Option<Gid>,
    /// How many transactions the whole log holds in each status.
    #[schema(example = json!({"succeeded": 1200, "failed": 31, "cancelling": 1}))]
    counts: BTreeMap<String, i64>,
}

/// `GET /api/v1/transactions?status=cancelling&mode=saga&from_ms=…&to_ms=…&q=<gid, key or
/// order id>&limit=50&before=<gid>`: newest first.
#[utoipa::path(
    get,
    operation_id = "list_transactions",
    path = "/api/v1/transactions",
    tag = "transactions",
    summary = "List and search transactions, newest first",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of transactions, and the counts by status", body = TransactionList),
        (status = 422, description = "`from_ms` is not before `to_ms` (`empty_range`)", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin" = []))
)]
async fn list(
    engine: web::Data<Arc<Engine>>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let filter = q.filter()?;
    let limit = filter.limit;
    let transactions = log::list(engine.db(), &filter)
        .await
        .map_err(EngineError::from)?;
    let next_before = (transactions.len() as i64 == limit)
        .then(|| transactions.last().map(|r| r.gid))
        .flatten();
    let counts = log::counts(engine.db())
        .await
        .map_err(EngineError::from)?
        .into_iter()
        .collect();
    Ok(HttpResponse::Ok().json(TransactionList {
        transactions,
        next_before,
        counts,
    }))
}

/// An op's name as the log and metrics spell it.
fn op_name(wire: i32) -> &'static str {
    crate::machine::Op::from_wire(wire).map_or("unspecified", crate::machine::Op::as_str)
}

fn name<T: std::fmt::Debug>(v: T) -> String {
    format!("{v:?}").to_lowercase()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ShowQuery {
    /// Attempts per page of the timeline, newest first (1..=1000; default 200).
    #[serde(default = "default_timeline_limit")]
    #[param(minimum = 1, maximum = 1000, default = 200)]
    timeline_limit: i64,
    /// The `timeline.next_before` of the previous page.
    #[param(pattern = "^([0-9]{1,19}\\.[0-9]{1,19})?$")]
    timeline_before: Option<String>,
}

fn default_timeline_limit() -> i64 {
    200
}

/// One transaction as the operator reads it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "gid": "7284019283746521",
    "mode": "tcc",
    "status": "failed",
    "reason": "branch payment rejected its first phase: insufficient_funds: available 300 < 900",
    "rollback": {"kind": "rejected", "branch_id": "payment", "code": "insufficient_funds", "message": "available 300 < 900"},
    "idempotency_key": "order:7284019283740001",
    "created_at_ms": 1764662400000_u64,
    "updated_at_ms": 1764662400042_u64,
    "deadline_ms": 1764662430000_u64,
    "next_attempt_at_ms": 0,
    "attempts": 1,
    "details_purged": false,
    "branches": [{
        "branch_id": "payment",
        "participant": "http://127.0.0.1:50052",
        "op": "cancel",
        "status": "done",
        "attempts": 2,
        "last_error": null,
        "depends_on": [],
        "retriable": false,
        "timeline": [
            {"op": "try", "started_at_ms": 1764662400003_u64, "duration_ms": 4, "outcome": "failure", "error": "insufficient_funds"},
            {"op": "cancel", "started_at_ms": 1764662400011_u64, "duration_ms": 3, "outcome": "success", "error": null}
        ]
    }],
    "timeline": {"shown": 2, "total": 2, "next_before": null}
}))]
struct Transaction {
    #[schema(example = "7284019283746521")]
    gid: String,
    /// `tcc` or `saga`.
    mode: String,
    /// `prepared`, `confirming`, `cancelling`, `succeeded` or `failed`.
    status: String,
    /// Why it was rolled back, in words.
    reason: Option<String>,
    /// Why it was rolled back, typed.
    rollback: Option<Rollback>,
    idempotency_key: Option<String>,
    created_at_ms: u64,
    updated_at_ms: u64,
    deadline_ms: u64,
    /// When the coordinator drives it next, if unfinished.
    next_attempt_at_ms: u64,
    attempts: u32,
    /// Ended longer ago than the retention: its branches and timeline were purged.
    details_purged: bool,
    branches: Vec<Branch>,
    timeline: TimelinePage,
}

/// The decision to roll back, and what caused it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Rollback {
    /// A branch refused (a business rejection).
    Rejected {
        branch_id: String,
        code: String,
        message: String,
    },
    /// A branch errored where an answer was needed.
    Errored { branch_id: String, error: String },
    /// The transaction's deadline passed.
    Deadline,
    /// Said in words (an older log's reason).
    Described { text: String },
}

/// One branch and the page of its attempts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Branch {
    branch_id: String,
    participant: String,
    /// The op now being driven: `try`, `confirm`, `cancel`, `action` or `compensate`.
    op: &'static str,
    status: String,
    attempts: u32,
    last_error: Option<String>,
    /// Branches that must succeed before this one runs (Saga).
    depends_on: Vec<String>,
    retriable: bool,
    timeline: Vec<AttemptView>,
}

/// One call of a branch op.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Attempt)]
struct AttemptView {
    op: &'static str,
    started_at_ms: u64,
    duration_ms: u64,
    /// `success`, `failure`, `pending`, `error` or `abandoned` (the coordinator stopped
    /// waiting: crash or takeover).
    outcome: String,
    error: Option<String>,
}

/// Where the timeline's page stands.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct TimelinePage {
    /// Attempts on this page.
    shown: usize,
    /// Attempts of the transaction.
    total: i64,
    /// The `timeline_before` of the next (older) page; none on the last.
    next_before: Option<String>,
}

/// `GET /api/v1/transactions/{gid}?timeline_limit=200&timeline_before=<cursor>`: the
/// transaction, its branches, and a page of its attempts (the newest; `timeline.next_before`
/// pages back through older ones).
#[utoipa::path(
    get,
    operation_id = "show_transaction",
    path = "/api/v1/transactions/{gid}",
    tag = "transactions",
    summary = "One transaction: its decision, branches and every attempt",
    params(GidPath, ShowQuery),
    responses(
        (status = 200, description = "The transaction", body = Transaction),
        (status = 404, description = "No such transaction", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin" = []))
)]
async fn show(
    engine: web::Data<Arc<Engine>>,
    gid: web::Path<String>,
    q: web::Query<ShowQuery>,
) -> Result<HttpResponse, Problem> {
    let gid = gid_in_path(&gid)?;
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
    let text = |s: &String| (!s.is_empty()).then(|| s.clone());
    let branches = t
        .branches
        .iter()
        .map(|b| Branch {
            branch_id: b.branch_id.clone(),
            participant: b.participant.clone(),
            op: op_name(b.op),
            status: b.status.clone(),
            attempts: b.attempts,
            last_error: text(&b.last_error),
            depends_on: b.depends_on.clone(),
            retriable: b.retriable,
            timeline: b
                .timeline
                .iter()
                .map(|a| AttemptView {
                    op: op_name(a.op),
                    started_at_ms: a.started_at_ms,
                    duration_ms: a.duration_ms,
                    outcome: match a.outcome() {
                        _ if a.abandoned => "abandoned".to_owned(),
                        pb::Outcome::Unspecified => "error".to_owned(),
                        o => name(o),
                    },
                    error: text(&a.error),
                })
                .collect(),
        })
        .collect();
    let rollback = t.rollback.as_ref().and_then(|r| r.kind.as_ref()).map(|k| {
        use pb::rollback::Kind;
        match k {
            Kind::Rejected(r) => Rollback::Rejected {
                branch_id: r.branch_id.clone(),
                code: r.code.clone(),
                message: r.message.clone(),
            },
            Kind::Errored(e) => Rollback::Errored {
                branch_id: e.branch_id.clone(),
                error: e.error.clone(),
            },
            Kind::Deadline(_) => Rollback::Deadline,
            Kind::Described(text) => Rollback::Described { text: text.clone() },
        }
    });
    Ok(HttpResponse::Ok().json(Transaction {
        gid: t.gid.to_string(),
        mode: name(t.mode()),
        status: name(t.status()),
        reason: text(&t.reason),
        rollback,
        idempotency_key: text(&t.idempotency_key),
        created_at_ms: t.created_at_ms,
        updated_at_ms: t.updated_at_ms,
        deadline_ms: t.deadline_ms,
        next_attempt_at_ms: t.next_attempt_at_ms,
        attempts: t.attempts,
        // Ended longer ago than the retention: its branches and timeline were purged (every
        // transaction is recorded with at least one branch).
        details_purged: t.branches.is_empty(),
        branches,
        timeline: TimelinePage {
            shown,
            total,
            next_before: next.map(|c| c.to_string()),
        },
    }))
}

/// The retry's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"gid": "7284019283746521", "status": "cancelling"}))]
struct Retried {
    gid: String,
    /// Its status now: unfinished ones are driven at once, finished ones stay as they are.
    status: &'static str,
}

/// `POST /api/v1/admin/transactions/{gid}/retry`: drive an unfinished transaction now.
#[utoipa::path(
    post,
    operation_id = "retry_transaction",
    path = "/api/v1/admin/transactions/{gid}/retry",
    tag = "transactions",
    summary = "Drive an unfinished transaction now (its backoff skipped)",
    params(GidPath),
    responses(
        (status = 202, description = "Due now (a finished one is left as it is); its status", body = Retried),
        (status = 404, description = "No such transaction", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin" = []))
)]
async fn retry(
    engine: web::Data<Arc<Engine>>,
    gid: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let gid = gid_in_path(&gid)?;
    let status = engine.retry_now(gid).await?;
    Ok(HttpResponse::Accepted().json(Retried {
        gid: gid.to_string(),
        status: status.as_str(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `UPDATE_OPENAPI=1 cargo test --workspace --lib openapi` rewrites both files.
    #[test]
    fn the_checked_in_openapi_document_and_reference_are_what_the_code_generates() {
        host::openapi::assert_checked_in("coordinator", document());
    }

    #[test]
    fn every_operator_operation_is_in_the_openapi_document_behind_the_admin_token() {
        let admin = host::openapi::secured_by(document(), host::openapi::ADMIN);
        assert_eq!(
            admin,
            [
                "delete /api/v1/admin/failpoints/{point}",
                "get /api/v1/admin/failpoints",
                "get /api/v1/transactions",
                "get /api/v1/transactions/{gid}",
                "get /debug/pprof/profile",
                "post /api/v1/admin/transactions/{gid}/retry",
                "put /api/v1/admin/failpoints/{point}",
            ]
        );
    }

    #[test]
    fn a_timeline_cursor_parses_exactly_what_it_prints() {
        let cursor = log::TimelineCursor {
            started_at: 1_764_000_000_000,
            id: 42,
        };
        assert_eq!(
            cursor.to_string().parse::<log::TimelineCursor>(),
            Ok(cursor)
        );
        let random_id = log::TimelineCursor {
            started_at: 1_796_209_113_850,
            id: 4_110_733_920_188_876_339,
        };
        assert_eq!(
            random_id.to_string().parse::<log::TimelineCursor>(),
            Ok(random_id)
        );
        assert_eq!(
            "9999999999999999999.1".parse::<log::TimelineCursor>(),
            Ok(log::TimelineCursor {
                started_at: i64::MAX,
                id: 1
            }),
            "beyond i64: every attempt is older"
        );
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "+1.2",
            "1.-2",
            " 1.2",
            "1.2.3",
            "12345678901234567890.1",
        ] {
            assert_eq!(bad.parse::<log::TimelineCursor>(), Err(()), "{bad:?}");
        }
    }
}
