//! Refunds: `POST /api/v1/orders/{id}/refund`, a Saga across the three services.
//!
//! A refund of a confirmed order (all of it, or `quantity` items of it) is one global
//! transaction in Saga mode, six branches whose dependencies the coordinator follows:
//!
//! ```text
//!                                        ┌─ payment   (merchant → buyer, held in the buyer's frozen) ─┐   ┌─ refunded (order → REFUNDED)
//! refund (order CONFIRMED → REFUNDING) ──┤                                                            ├─▶─┼─ restock  (held items on sale)
//!                                        └─ inventory (the items come back, held in reserved)      ─┘   └─ release  (held money spendable)
//!                                                                                          point of no return ┘ (retriable)
//! ```
//!
//! The money and the items move at once, and both are *held*: the buyer cannot spend the money,
//! nobody can buy the items. Those first three steps are the ones that can fail for a business
//! reason (the merchant's balance is short, the order changed); if one does, every step is
//! compensated in reverse, and none of those compensations can fail: held money goes back to
//! the merchant and held items are sold again, whatever anyone did in between. The order is
//! CONFIRMED again with the refund FAILED and its reason.
//!
//! Once both are held, the refund is past its point of no return: the coordinator makes that
//! durable (the transaction is `confirming`, and the API answers `refunded`), then runs the
//! last three steps, which are *retriable* (`BranchSpec.retriable`): retried until they
//! succeed, past the deadline, never compensated. So the buyer's money becomes spendable, and
//! the items go back on sale, only when nothing can undo the refund any more: no compensation
//! ever has to take back money a buyer spent or items someone bought. This is the Saga's price
//! for having no isolation, paid in design (compensatable steps, a pivot, retriable steps).
//!
//! Exactly once per key as for orders ([`crate::idempotency`]; the key's row holds the refund's
//! id and the order it refunds), the coordinator key `refund:<refund id>`, and at most one
//! refund under way or done per order, also in the database. The refund's deadline (an hour by
//! default) bounds only the steps before the point of no return: a refund waits out a short
//! outage of a participant rather than failing.

use crate::api::{answered, idempotency_key, patience, Api};
use crate::checkout::reason_code;
use crate::domain::{refund_amount, OrderStatus};
use crate::idempotency::{self, Answer, FirstRequest, KeyState, Replay};
use actix_web::{web, HttpRequest, HttpResponse};
use host::Problem;
use proto::pay::v1 as pay;
use proto::v1 as pb;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use store::Db;

/// The refund's branches, in the order the coordinator records them (and compensates them
/// backwards).
pub const START: &str = "refund";
pub const PAYMENT: &str = "payment";
pub const RETURN: &str = "inventory";
pub const RESTOCK: &str = "restock";
pub const FINISH: &str = "refunded";
pub const RELEASE: &str = "release";

/// `POST /api/v1/orders/{id}/refund`'s body; empty or `{}` refunds the whole order.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewRefund, example = json!({"quantity": 1}))]
pub(crate) struct RefundBody {
    /// How many to refund (1 to the order's quantity); left out, the whole order.
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "admin::whole::optional")]
    quantity: Option<i64>,
}

/// The body, at most `limit` bytes: beyond it a 413 problem (actix's own limit answers plain
/// text, and would let a client send 256 KiB).
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, Problem> {
    use futures::StreamExt;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| Problem::bad_request(format!("the body could not be read: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(Problem::new(
                actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A refund as the public API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Refund)]
pub struct RefundView {
    #[schema(pattern = "^[0-9]+$")]
    pub refund_id: String,
    #[schema(pattern = "^[0-9]+$")]
    pub order_id: String,
    #[schema(pattern = "^[0-9]+$")]
    pub gid: Option<String>,
    /// `refunded`, `failed` or `pending` (still under way when the answer was due).
    #[schema(pattern = "^(refunded|failed|pending|refunding)$")]
    pub status: String,
    /// Why it failed: `merchant_insufficient_funds`, `buyer_account_full`, `timeout`, ….
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub quantity: i64,
    pub amount: i64,
}

/// One refund's global transaction, as built for its first attempt (and stored with its key).
pub(crate) struct RefundPlan {
    request: pb::ExecuteRequest,
    /// The first step's payload: the order and the refund, for the answer.
    start: pay::OrderBranch,
}

impl RefundPlan {
    fn build(api: &Api, order: &OrderToRefund, refund_id: i64, quantity: i64, amount: i64) -> Self {
        let step = |stage: pay::RefundStage| pay::OrderBranch {
            order_id: order.id as u64,
            user_id: order.user_id.clone(),
            sku: order.sku.clone(),
            quantity: order.quantity,
            amount: order.amount,
            refund: Some(pay::RefundStep {
                refund_id: refund_id as u64,
                quantity,
                amount,
                stage: stage as i32,
            }),
        };
        // The parties, SKU and amounts only in `refund`: a participant from before refunds
        // refuses the step as invalid instead of running it as an order's.
        let items = |step: pay::StockStep| {
            prost::Message::encode_to_vec(&pay::InventoryBranch {
                refund: Some(pay::RefundItems {
                    sku: order.sku.clone(),
                    quantity,
                    step: step as i32,
                }),
                ..Default::default()
            })
        };
        let c = &api.config;
        let money = |step: pay::MoneyStep| {
            prost::Message::encode_to_vec(&pay::PaymentBranch {
                refund: Some(pay::RefundMoney {
                    payer: c.merchant_id.clone(),
                    payee: order.user_id.clone(),
                    amount,
                    step: step as i32,
                }),
                ..Default::default()
            })
        };
        let branch = |id: &str, url: &str, payload: Vec<u8>, deps: &[&str]| pb::BranchSpec {
            branch_id: id.into(),
            participant: url.into(),
            payload,
            depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
            // The steps after the money and the items are back cannot fail for a business
            // reason: past the point of no return, retried until done, never compensated.
            retriable: [RESTOCK, FINISH, RELEASE].contains(&id),
        };
        let start = step(pay::RefundStage::Start);
        let request = pb::ExecuteRequest {
            mode: pb::Mode::Saga as i32,
            idempotency_key: format!("refund:{refund_id}"),
            branches: vec![
                branch(
                    START,
                    &c.order_url,
                    prost::Message::encode_to_vec(&start),
                    &[],
                ),
                branch(
                    PAYMENT,
                    &c.payment_url,
                    // The merchant pays, the other way round from an order, into a hold.
                    money(pay::MoneyStep::Hold),
                    &[START],
                ),
                branch(
                    RETURN,
                    &c.inventory_url,
                    items(pay::StockStep::Return),
                    &[START],
                ),
                branch(
                    RESTOCK,
                    &c.inventory_url,
                    items(pay::StockStep::Restock),
                    &[PAYMENT, RETURN],
                ),
                branch(
                    FINISH,
                    &c.order_url,
                    prost::Message::encode_to_vec(&step(pay::RefundStage::Finish)),
                    &[PAYMENT, RETURN],
                ),
                branch(
                    RELEASE,
                    &c.payment_url,
                    money(pay::MoneyStep::Release),
                    &[PAYMENT, RETURN],
                ),
            ],
            timeout_ms: c.refund_timeout_ms,
            branch_timeout_ms: 0,
            wait_ms: c.wait_ms,
            concurrent: false,
        };
        RefundPlan { request, start }
    }

    /// A stored request, as a retry resends it.
    fn decode(bytes: &[u8]) -> Result<RefundPlan, Problem> {
        let corrupt = || Problem::internal("the stored refund request cannot be read");
        let request: pb::ExecuteRequest = prost::Message::decode(bytes).map_err(|e| {
            tracing::error!(error = %e, "stored refund txn_request does not decode");
            corrupt()
        })?;
        let start: pay::OrderBranch = request
            .branches
            .iter()
            .find(|b| b.branch_id == START)
            .and_then(|b| prost::Message::decode(b.payload.as_slice()).ok())
            .filter(|o: &pay::OrderBranch| o.refund.is_some())
            .ok_or_else(corrupt)?;
        Ok(RefundPlan { request, start })
    }
}

/// The order a refund is asked for, as read before its first attempt.
#[derive(Debug, sqlx::FromRow)]
struct OrderToRefund {
    id: i64,
    user_id: String,
    sku: String,
    quantity: i64,
    amount: i64,
    status: String,
}

fn request_hash(order_id: i64, body: &RefundBody) -> String {
    let mut h = Sha256::new();
    h.update(b"refund\0");
    h.update(order_id.to_be_bytes());
    h.update(body.quantity.unwrap_or(0).to_be_bytes());
    hex::encode(h.finalize())
}

/// `POST /api/v1/orders/{id}/refund` `{"quantity": n}` (optional) with `Idempotency-Key`: the
/// caller's own confirmed order (anyone else's is a 404, as for reads).
#[utoipa::path(
    post,
    path = "/api/v1/orders/{id}/refund",
    tag = "orders",
    summary = "Refund one of your confirmed orders",
    description = "Runs the refund as a Saga (the order, then payment and inventory at once); \
        answers `refunded`, `failed` with its `reason` (the order stays confirmed), or `pending`. \
        An empty body or `{}` refunds the whole order.",
    params(("id" = String, Path, description = "The order id"), crate::api::IdempotencyKey),
    // Optional (no body: the whole order); `openapi.rs` marks it so.
    request_body(content = RefundBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The refund and its outcome", body = RefundView,
            headers(("Idempotent-Replayed" = String, description = "`true` on a replayed answer"))),
        (status = 400, description = "A malformed body or key", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such order of yours", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Not refundable now: cancelled, already refunded, a refund in progress, or this key in progress", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "More than the order holds, or a key reused for another body", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this user", body = host::problem::ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down; retry with the same key", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 500, description = "A bug (the log says what, the answer never does); retry with the same key", body = host::problem::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn refund_order(
    req: HttpRequest,
    caller: crate::auth::Caller,
    api: web::Data<Api>,
    db: web::Data<Db>,
    id: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, Problem> {
    let key = idempotency_key(&req)?;
    // No body or `{}`: the whole order. (A `null` is refused: on a route that moves money,
    // only what the document allows.)
    // The limit every JSON body of the service has (the refund's is read by hand: it may be
    // empty, which the JSON extractor refuses).
    let body = read_body(body, tcc::service::JSON_LIMIT).await?;
    let body: RefundBody = if body.iter().all(u8::is_ascii_whitespace) {
        RefundBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Problem::bad_request(format!("the body must be {{}} or {{\"quantity\": n}}: {e}"))
        })?
    };
    if let Some(q) = body.quantity {
        if !(1..=api.config.max_quantity).contains(&q) {
            return Err(Problem::bad_request(format!(
                "quantity must be between 1 and {}",
                api.config.max_quantity
            )));
        }
    }
    let Some(order_id) = id.parse::<i64>().ok().filter(|v| *v > 0) else {
        return Err(Problem::not_found(format!("no order {}", id.as_str())));
    };
    let hash = request_hash(order_id, &body);
    let user = caller.user_id.as_str();
    // As for orders: a stored answer is one read, never limited; what costs is limited.
    let first = match idempotency::key_state(&db, user, &key).await? {
        KeyState::Answered => None,
        KeyState::Unanswered => {
            api.limiter.check(user)?;
            None
        }
        KeyState::Absent => {
            api.limiter.check(user)?;
            Some(first_attempt(&api, &db, user, &key, &hash, order_id, &body).await?)
        }
    };
    let plan = match first {
        Some(Some(plan)) => plan,
        // Another request took the key first, or the key was seen before.
        Some(None) | None => {
            match idempotency::replay(&db, &api.waiters, user, &key, &hash, patience(&api)).await? {
                Replay::Answered(answer) => return Ok(answer.into_response(true)),
                Replay::Forgotten => {
                    api.limiter.check(user)?;
                    first_attempt(&api, &db, user, &key, &hash, order_id, &body)
                        .await?
                        .ok_or_else(|| {
                            Problem::conflict(
                                "in_progress",
                                "a request with this Idempotency-Key is still in progress",
                            )
                        })?
                }
                Replay::TakeOver {
                    txn_request: Some(bytes),
                    ..
                } => RefundPlan::decode(&bytes)?,
                // A refund's key always stores its request: this is an order's key from before
                // requests were stored, whose hash cannot match a refund's.
                Replay::TakeOver {
                    txn_request: None, ..
                } => {
                    return Err(Problem::unprocessable(
                        "idempotency_key_reused",
                        "this Idempotency-Key was used for another request",
                    ))
                }
            }
        }
    };
    let refund_id = plan.start.refund.unwrap_or_default().refund_id as i64;
    match execute(&api, &db, plan).await {
        Settled::Answered(answer) => Ok(answered(&api, &db, user, &key, answer).await?),
        Settled::Refused(answer) => {
            idempotency::forget(&db, user, &key, refund_id).await?;
            api.waiters.wake(user, &key);
            Ok(answer.into_response(false))
        }
    }
}

/// The key's first attempt: the order read and checked (a refusal is not stored: it is about
/// the order now, not about the key), a refund id made, and the refund's transaction built and
/// stored with the key before anything is sent. `None`: another request took the key first.
async fn first_attempt(
    api: &Api,
    db: &Db,
    user: &str,
    key: &str,
    hash: &str,
    order_id: i64,
    body: &RefundBody,
) -> Result<Option<RefundPlan>, Problem> {
    let order: Option<OrderToRefund> = sqlx::query_as(
        "SELECT id, user_id, sku, quantity, amount, status FROM orders WHERE id = $1 AND user_id = $2",
    )
    .bind(order_id)
    .bind(user)
    .fetch_optional(db.pool())
    .await?;
    let Some(order) = order else {
        return Err(Problem::not_found(format!("no order {order_id}")));
    };
    let status = OrderStatus::parse(&order.status)
        .ok_or_else(|| Problem::internal("an order has a status this service does not know"))?;
    if let Some((code, words)) = status.refusal() {
        return Err(Problem::conflict(code, words));
    }
    // CONFIRMED here is this branch's Confirm; the payment's and the inventory's may still be on
    // their way. A refund then would find the items not yet sold and be rolled back after the
    // money went out. Only an order whose whole transaction succeeded is refunded.
    // Read by replaying the order's own stored request (idempotent at the coordinator: the
    // same key answers with the transaction's status, starting nothing). An order whose key was
    // purged settled long ago.
    let stored: Option<Option<Vec<u8>>> = sqlx::query_scalar(
        "SELECT txn_request FROM order_requests WHERE order_id = $1 AND refund_of IS NULL",
    )
    .bind(order_id)
    .fetch_optional(db.pool())
    .await?;
    let settled = match stored.flatten() {
        None => true,
        Some(bytes) => {
            let mut request: pb::ExecuteRequest = prost::Message::decode(bytes.as_slice())
                .map_err(|_| Problem::internal("the stored order request cannot be read"))?;
            request.wait_ms = 0;
            api.coordinator
                .clone()
                .execute(request)
                .await
                .map_err(|status| {
                    tracing::warn!(order_id, error = %status, "the order's transaction could not be read");
                    Problem::unavailable(
                        "the refund cannot be checked right now; retry with the same Idempotency-Key",
                    )
                })?
                .into_inner()
                .status()
                == pb::Status::Succeeded
        }
    };
    if !settled {
        let (code, words) = OrderStatus::Pending
            .refusal()
            .unwrap_or(("order_settling", "retry in a moment"));
        return Err(Problem::conflict(code, words));
    }
    let quantity = body.quantity.unwrap_or(order.quantity);
    if quantity > order.quantity {
        return Err(Problem::unprocessable(
            "too_many_items",
            format!(
                "the order has {} items; a refund of {quantity} is more",
                order.quantity
            ),
        ));
    }
    let amount = refund_amount(order.amount, order.quantity, quantity)
        .ok_or_else(|| Problem::internal("the order's amount is not its price times its items"))?;
    let refund_id = api.next_id(db).await?;
    let plan = RefundPlan::build(api, &order, refund_id, quantity, amount);
    let fresh = idempotency::begin(
        db,
        FirstRequest {
            user,
            key,
            hash,
            order_id: refund_id,
            refund_of: Some(order_id),
            txn_request: Some(prost::Message::encode_to_vec(&plan.request)),
            answer: None,
        },
    )
    .await?;
    Ok(fresh.then_some(plan))
}

/// How a refund's attempt ends for its key.
enum Settled {
    /// The key's answer (a 5xx releases the key, see [`idempotency::save`]).
    Answered(Answer),
    /// Refused because another refund of the order was under way or done when its first step
    /// ran: nothing moved, and the key is forgotten, so asking again with it looks at the order
    /// afresh (a 409 says "retry"; a stored one would say it for ever).
    Refused(Answer),
}

/// Sends the refund's transaction and answers with its outcome; a failed refund's reason is
/// kept with it too (for `GET /api/v1/orders/{id}`).
async fn execute(api: &Api, db: &Db, plan: RefundPlan) -> Settled {
    let RefundPlan { mut request, start } = plan;
    let refund = start.refund.unwrap_or_default();
    request.wait_ms = api.config.wait_ms;
    let outcome = match api.coordinator.clone().execute(request).await {
        Ok(r) => r.into_inner(),
        Err(status) if !proto::is_transient(&status) => {
            tracing::error!(refund_id = refund.refund_id, error = %status, "the coordinator refused the refund");
            return Settled::Answered(Answer::problem(&Problem::internal(
                "the refund could not be made: the transaction was refused (see the service log)",
            )));
        }
        Err(status) => {
            tracing::warn!(refund_id = refund.refund_id, error = %status, "the coordinator did not answer");
            return Settled::Answered(Answer::problem(&Problem::unavailable(
                "the refund could not be made right now; retry with the same Idempotency-Key",
            )));
        }
    };
    let (status, reason) = match outcome.status() {
        pb::Status::Succeeded | pb::Status::Confirming => ("refunded", None),
        pb::Status::Cancelling | pb::Status::Failed => {
            ("failed", Some(refund_reason(outcome.rollback.as_ref())))
        }
        _ => ("pending", None),
    };
    if let Some(reason) = &reason {
        if let Err(e) = keep_reason(db, &start, outcome.gid, reason).await {
            // The answer carries it; only the order's later reads miss it.
            tracing::warn!(refund_id = refund.refund_id, error = %e, "the refund's reason was not kept");
        }
        // The order was no longer refundable when the first step ran (another refund won the
        // race): the same 409 as when that is seen before, and not the key's answer for good.
        if let Some(pb::rollback::Kind::Rejected(r)) =
            outcome.rollback.as_ref().and_then(|r| r.kind.as_ref())
        {
            if r.branch_id == START {
                if let Some(refusal) = OrderStatus::ALL
                    .into_iter()
                    .filter_map(OrderStatus::refusal)
                    .find(|(code, _)| *code == r.code)
                {
                    return Settled::Refused(Answer::problem(&Problem::conflict(
                        refusal.0, refusal.1,
                    )));
                }
            }
        }
    }
    let view = RefundView {
        refund_id: refund.refund_id.to_string(),
        order_id: start.order_id.to_string(),
        gid: Some(outcome.gid.to_string()),
        status: status.into(),
        reason,
        quantity: refund.quantity,
        amount: refund.amount,
    };
    Settled::Answered(Answer {
        status: 201,
        body: serde_json::to_value(view).unwrap_or_default(),
    })
}

/// Keeps a failed refund's reason with it. The answer may come before the refund's row exists:
/// a first step that never committed gets its row (FAILED) from its null compensation, which
/// runs after the decision. Then the row is written here, FAILED with the reason, and the null
/// compensation finds it there; a first step arriving after that cannot insert its own row, so
/// it fails and moves nothing (the barrier would refuse it anyway once compensated).
async fn keep_reason(
    db: &Db,
    start: &pay::OrderBranch,
    gid: u64,
    reason: &str,
) -> Result<(), store::StoreError> {
    let refund = start.refund.unwrap_or_default();
    let now = store::now_ms();
    let mut writer = db.begin().await?;
    sqlx::query(
        "INSERT INTO refunds (id, gid, order_id, user_id, quantity, amount, status, reason, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
         ON CONFLICT (id) DO UPDATE SET reason = excluded.reason WHERE refunds.reason IS NULL",
    )
    .bind(refund.refund_id as i64)
    .bind(gid as i64)
    .bind(start.order_id as i64)
    .bind(&start.user_id)
    .bind(refund.quantity)
    .bind(refund.amount)
    .bind(crate::domain::RefundStatus::Failed.as_str())
    .bind(reason)
    .bind(now)
    .execute(&mut *writer)
    .await?;
    writer.commit().await?;
    Ok(())
}

/// The order API's reason for a failed refund: as for orders, except that the account short of
/// money is the merchant's.
fn refund_reason(rollback: Option<&pb::Rollback>) -> String {
    match reason_code(rollback).as_str() {
        "insufficient_funds" => "merchant_insufficient_funds".into(),
        "merchant_account_full" => "buyer_account_full".into(),
        // The payment's `account_id` is the merchant's, its `merchant_id` the buyer's.
        "unknown_account" => "unknown_merchant".into(),
        "unknown_merchant" => "unknown_account".into(),
        other => other.into(),
    }
}

/// The latest refund of an order, as `GET /api/v1/orders/{id}` shows it.
pub(crate) async fn latest(db: &Db, order_id: i64) -> Result<Option<RefundView>, Problem> {
    let row: Option<(i64, i64, i64, i64, String, Option<String>)> = sqlx::query_as(
        "SELECT id, gid, quantity, amount, status, reason FROM refunds WHERE order_id = $1 \
         ORDER BY CASE WHEN status = 'FAILED' THEN 1 ELSE 0 END, id DESC LIMIT 1",
    )
    .bind(order_id)
    .fetch_optional(db.pool())
    .await?;
    Ok(
        row.map(|(id, gid, quantity, amount, status, reason)| RefundView {
            refund_id: id.to_string(),
            order_id: order_id.to_string(),
            gid: Some(gid.to_string()),
            status: status.to_lowercase(),
            reason,
            quantity,
            amount,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_merchant_is_the_refund_s_reason_and_other_reasons_pass_through() {
        use pb::rollback::Kind;
        let rejected = |code: &str| {
            refund_reason(Some(&pb::Rollback {
                kind: Some(Kind::Rejected(pb::Rejected {
                    branch_id: PAYMENT.into(),
                    code: code.into(),
                    message: String::new(),
                })),
            }))
        };
        assert_eq!(
            rejected("insufficient_funds"),
            "merchant_insufficient_funds"
        );
        assert_eq!(rejected("unknown_account"), "unknown_merchant");
        assert_eq!(rejected("injected_failure"), "injected_failure");
        assert_eq!(
            refund_reason(Some(&pb::Rollback {
                kind: Some(Kind::Deadline(pb::DeadlinePassed {}))
            })),
            "timeout"
        );
    }

    #[test]
    fn the_request_hash_tells_orders_and_quantities_apart() {
        let h = |id, q| request_hash(id, &RefundBody { quantity: q });
        assert_eq!(h(1, None), h(1, None));
        assert_ne!(h(1, None), h(2, None));
        assert_ne!(h(1, Some(1)), h(1, Some(2)));
    }
}
