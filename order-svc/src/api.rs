//! The public order API: `POST /api/v1/orders`, `GET /api/v1/orders/{id}`, `GET /api/v1/orders`.
//!
//! Placing an order prices it from the catalog, then asks the coordinator to run one TCC
//! transaction with three branches: the order itself (this service), the charge (payment-svc)
//! and the reservation (inventory-svc). It answers once the decision is durable, or `pending`
//! when the decision takes longer than the wait limit.
//!
//! Exactly once per `Idempotency-Key` (per user): the key, the request's hash and the final
//! response are stored; the same key again returns the stored response, the same key with
//! another body is a 422, and concurrent requests with one key wait for the first one's answer.
//! The coordinator call itself carries the key `order:<order id>`, so a retried call can never
//! start a second transaction; and the coordinator request is built once, stored with the key
//! before the first call, and resent byte for byte by a retry that takes the key over, so a
//! price or configuration changed in between can never turn the retry into "a different
//! request" (it would be refused forever while the first attempt's order stands).
//!
//! Order ids are Snowflake ids that resume above the largest order id stored (read at the first
//! order), so a restart with a clock that stepped back never repeats one; the storage refuses a
//! repeated order id loudly (a unique index).

use crate::auth::Caller;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use host::Problem;
use proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use store::{Db, StoreError};
use telemetry::grpc::TracePropagation;
use tokio::sync::OnceCell;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Settings of the public API (embedded in order-svc's config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiConfig {
    /// The coordinator's gRPC endpoint.
    pub coordinator_url: String,
    /// The participants' gRPC endpoints, as the coordinator reaches them.
    pub order_url: String,
    pub payment_url: String,
    pub inventory_url: String,
    /// The account that receives the money of every order.
    pub merchant_id: String,
    /// Snowflake node id for order ids (unique per order-svc instance).
    pub node_id: u16,
    /// How long `POST /api/v1/orders` waits for the decision before answering `pending`.
    pub wait_ms: u64,
    /// The global transaction's deadline.
    pub transaction_timeout_ms: u64,
    /// Largest quantity of one order line.
    pub max_quantity: i64,
    /// A node id lease not renewed for this long is free (see `store::node`).
    pub node_lease_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            coordinator_url: "http://127.0.0.1:50050".into(),
            order_url: "http://127.0.0.1:50051".into(),
            payment_url: "http://127.0.0.1:50052".into(),
            inventory_url: "http://127.0.0.1:50053".into(),
            merchant_id: "merchant".into(),
            node_id: 0,
            wait_ms: 5_000,
            transaction_timeout_ms: 10_000,
            max_quantity: 1_000,
            node_lease_ms: 3_000,
        }
    }
}

type CoordinatorClient =
    pb::coordinator_client::CoordinatorClient<InterceptedService<Channel, TracePropagation>>;

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    config: ApiConfig,
    /// Resumed above the largest stored order id at the first order (see [`Api::ids`]).
    ids: std::sync::Arc<OnceCell<OrderIds>>,
    coordinator: CoordinatorClient,
    prices: moka::future::Cache<String, Option<(String, i64)>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Api {
    pub fn new(config: ApiConfig) -> Result<Api, host::ConfigError> {
        if config.node_id > ids::MAX_NODE {
            return Err(host::ConfigError(format!(
                "api.node_id must be 0..={}",
                ids::MAX_NODE
            )));
        }
        let channel = tonic::transport::Endpoint::from_shared(config.coordinator_url.clone())
            .map_err(|e| host::ConfigError(format!("coordinator_url: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_millis(config.wait_ms + 5_000))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Api {
            ids: std::sync::Arc::default(),
            coordinator: pb::coordinator_client::CoordinatorClient::with_interceptor(
                channel,
                TracePropagation,
            ),
            prices: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
            config,
        })
    }
}

/// The order id generator with its leased node id; dropping it stops the lease's heartbeat.
struct OrderIds {
    ids: ids::Snowflake,
    node: store::node::NodeLease,
    _heartbeat: tokio::sync::oneshot::Sender<()>,
}

/// How far the clock may be behind the largest stored order id: waited out below, refused above.
const MAX_CLOCK_BEHIND_MS: u64 = 10_000;

impl Api {
    /// The order id generator: its node id leased (no live order-svc on this database shares
    /// it), resumed above the largest order id stored (every order id is stored with its key
    /// before anyone sees it), after waiting for a clock that is behind it.
    async fn ids(&self, db: &Db) -> Result<&ids::Snowflake, Problem> {
        let order_ids = self
            .ids
            .get_or_try_init(|| async {
                let mut ids = ids::Snowflake::new(self.config.node_id)
                    .map_err(|e| Problem::unavailable(e.to_string()))?;
                let owner = format!("order-svc:{}", hex::encode(rand::random::<[u8; 4]>()));
                let node = store::node::NodeLease::acquire(
                    db,
                    self.config.node_id,
                    &owner,
                    Duration::from_millis(self.config.node_lease_ms.max(300)),
                )
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "no node id for order ids");
                    Problem::unavailable("order ids cannot be made right now: this instance's node id is taken")
                })?;
                // Renewed while the generator lives: for the life of the process once it is made,
                // and no longer if anything below fails (the lease is then given back).
                let (heartbeat, stop) = tokio::sync::oneshot::channel::<()>();
                node.spawn_heartbeat(async {
                    let _ = stop.await;
                });
                let high_water: Option<i64> =
                    sqlx::query_scalar("SELECT CAST(MAX(order_id) AS BIGINT) FROM order_requests")
                        .fetch_one(db.pool())
                        .await
                        .map_err(StoreError::from)?;
                if let Some(high_water) = high_water {
                    let gid = ids::Gid::from_i64(high_water)
                        .map_err(|e| Problem::internal(e.to_string()))?;
                    ids = ids.resume_after(gid);
                }
                let behind = ids.behind_ms(MAX_CLOCK_BEHIND_MS).map_err(|e| {
                    tracing::error!(error = %e, "order ids cannot be made safely");
                    Problem::unavailable("order ids cannot be made right now: the clock is far behind the last order")
                })?;
                if behind > 0 {
                    tracing::warn!(behind_ms = behind, "the clock is behind the largest order id; waiting");
                    tokio::time::sleep(Duration::from_millis(behind + 1)).await;
                }
                Ok::<_, Problem>(OrderIds {
                    ids,
                    node,
                    _heartbeat: heartbeat,
                })
            })
            .await?;
        if order_ids.node.is_lost() {
            return Err(Problem::unavailable(
                "order ids cannot be made right now: this instance lost its node id lease",
            ));
        }
        Ok(&order_ids.ids)
    }
}

/// Mounts the public routes and the catalog admin route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/orders", web::post().to(place_order))
        .route("/api/v1/orders", web::get().to(list_orders))
        .route("/api/v1/orders/{id}", web::get().to(get_order));
}

/// The catalog admin route (mounted in the admin scope).
pub fn admin_routes(scope: actix_web::Scope) -> actix_web::Scope {
    scope.route("/catalog/{sku}", web::put().to(put_catalog_item))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrderBody {
    sku: String,
    quantity: i64,
}

/// The order as the public API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct OrderView {
    pub order_id: String,
    pub gid: Option<String>,
    /// `confirmed`, `cancelled` or `pending`.
    pub status: String,
    /// Why it was cancelled: `insufficient_funds`, `out_of_stock`, `unknown_account`,
    /// `unavailable`, `timeout`, ….
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub sku: String,
    pub quantity: i64,
    pub amount: i64,
}

fn idempotency_key(req: &HttpRequest) -> Result<String, Problem> {
    let key = req
        .headers()
        .get("idempotency-key")
        .ok_or_else(|| Problem::bad_request("an Idempotency-Key header is required"))?
        .to_str()
        .map_err(|_| Problem::bad_request("the Idempotency-Key must be visible ASCII"))?
        .trim()
        .to_owned();
    if key.is_empty() || key.len() > 200 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::bad_request(
            "the Idempotency-Key must be 1 to 200 visible ASCII characters",
        ));
    }
    Ok(key)
}

fn request_hash(body: &NewOrderBody) -> String {
    let mut h = Sha256::new();
    h.update(body.sku.as_bytes());
    h.update([0]);
    h.update(body.quantity.to_be_bytes());
    hex::encode(h.finalize())
}

fn unprocessable(code: &str, detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
}

/// A stored or fresh response: status and JSON body.
struct Answer {
    status: u16,
    body: serde_json::Value,
}

impl Answer {
    fn problem(p: &Problem) -> Answer {
        Answer {
            status: p.body().status,
            body: serde_json::to_value(p.body()).unwrap_or_default(),
        }
    }

    fn into_response(self, replayed: bool) -> HttpResponse {
        let mut res = HttpResponse::build(
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        );
        if self.status >= 400 {
            res.content_type("application/problem+json");
        }
        if replayed {
            res.insert_header(("Idempotent-Replayed", "true"));
        }
        res.json(self.body)
    }
}

/// `POST /api/v1/orders` `{"sku": "...", "quantity": n}` with `Idempotency-Key`.
async fn place_order(
    req: HttpRequest,
    caller: Caller,
    api: web::Data<Api>,
    db: web::Data<Db>,
    body: web::Json<NewOrderBody>,
) -> Result<HttpResponse, Problem> {
    let key = idempotency_key(&req)?;
    let body = body.into_inner();
    tcc::check::id("sku", &body.sku).map_err(|r| Problem::bad_request(r.message))?;
    if !(1..=api.config.max_quantity).contains(&body.quantity) {
        return Err(Problem::bad_request(format!(
            "quantity must be between 1 and {}",
            api.config.max_quantity
        )));
    }
    let hash = request_hash(&body);
    let user = caller.user_id.as_str();
    // A key seen before is answered from what it stored: no new id, no pricing, so neither a
    // clock behind nor a catalog hiccup stands between a client and its answer.
    let first = if key_exists(&db, user, &key).await? {
        None
    } else {
        first_attempt(&api, &db, user, &key, &hash, &body).await?
    };
    let checkout = match first {
        Some(Ok(checkout)) => checkout,
        Some(Err(answer)) => return Ok(answer.into_response(false)),
        None => match replay(&api, &db, user, &key, &hash).await? {
            Replay::Answered(answer) => return Ok(answer.into_response(true)),
            // The first request with this key was interrupted: resend exactly what it sent
            // (the coordinator call is idempotent on its order id).
            Replay::TakeOver {
                txn_request: Some(bytes),
                ..
            } => Checkout::decode(&bytes)?,
            // A row from before requests were stored: build it again for its order id.
            Replay::TakeOver {
                order_id,
                txn_request: None,
            } => match checkout(&api, &db, user, order_id, &body).await? {
                Ok(c) => c,
                Err(answer) => return Ok(answer_key(&db, user, &key, answer).await?),
            },
        },
    };
    let answer = execute(&api, checkout).await;
    Ok(answer_key(&db, user, &key, answer).await?)
}

async fn key_exists(db: &Db, user: &str, key: &str) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM order_requests WHERE user_id = $1 AND idempotency_key = $2",
    )
    .bind(user)
    .bind(key)
    .fetch_optional(db.pool())
    .await?;
    Ok(found.is_some())
}

/// The key's first attempt: a new order id, the order priced and its global transaction built,
/// all stored with the key before anything is sent. `Some(Ok)`: send it; `Some(Err)`: the
/// key's answer already (a client error); `None`: another request took the key first.
async fn first_attempt(
    api: &Api,
    db: &Db,
    user: &str,
    key: &str,
    hash: &str,
    body: &NewOrderBody,
) -> Result<Option<Result<Checkout, Answer>>, Problem> {
    let order_id = api
        .ids(db)
        .await?
        .next_id()
        .map_err(|e| Problem::unavailable(e.to_string()))?
        .as_i64();
    let planned = checkout(api, db, user, order_id, body).await?;
    let (txn_request, early_answer) = match &planned {
        Ok(c) => (Some(prost::Message::encode_to_vec(&c.request)), None),
        Err(answer) => (None, Some(answer)),
    };
    let now = store::now_ms();
    // Writes go through the database's writer queue (SQLite admits one writer at a time).
    let mut writer = db.begin().await?;
    // Only the key may conflict: a repeated order id is a unique violation, loudly.
    let fresh = sqlx::query(
        "INSERT INTO order_requests (user_id, idempotency_key, request_hash, order_id, response_status, response_body, \
         txn_request, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
         ON CONFLICT (user_id, idempotency_key) DO NOTHING",
    )
    .bind(user)
    .bind(key)
    .bind(hash)
    .bind(order_id)
    .bind(early_answer.map(|a| i64::from(a.status)))
    .bind(early_answer.map(|a| a.body.to_string()))
    .bind(txn_request)
    .bind(now)
    .execute(&mut *writer)
    .await
    .map_err(StoreError::from)?
    .rows_affected()
        == 1;
    writer.commit().await.map_err(StoreError::from)?;
    Ok(fresh.then_some(planned))
}

/// Stores `answer` as the key's response and returns it, or, for a 5xx ("we do not know yet":
/// the coordinator did not answer, a database hiccup), releases the key instead: the order may
/// still be placed, and a retry with the key takes over at once and learns the truth.
async fn answer_key(
    db: &Db,
    user: &str,
    key: &str,
    answer: Answer,
) -> Result<HttpResponse, StoreError> {
    let transient = answer.status >= 500;
    let mut writer = db.begin().await?;
    sqlx::query(
        "UPDATE order_requests SET response_status = $1, response_body = $2, updated_at = $3 \
         WHERE user_id = $4 AND idempotency_key = $5",
    )
    .bind((!transient).then_some(i64::from(answer.status)))
    .bind((!transient).then(|| answer.body.to_string()))
    .bind(if transient { RELEASED } else { store::now_ms() })
    .bind(user)
    .bind(key)
    .execute(&mut *writer)
    .await?;
    writer.commit().await?;
    Ok(answer.into_response(false))
}

/// `updated_at` of a request whose attempt ended without an answer: the next request with its
/// key takes over immediately instead of waiting for it to look abandoned.
const RELEASED: i64 = 0;

enum Replay {
    Answered(Answer),
    TakeOver {
        order_id: i64,
        txn_request: Option<Vec<u8>>,
    },
}

/// The same key again: the stored answer, a conflict, or (after waiting for a request in
/// progress) a take-over of an interrupted one.
async fn replay(api: &Api, db: &Db, user: &str, key: &str, hash: &str) -> Result<Replay, Problem> {
    let patience = Duration::from_millis(api.config.wait_ms + 2_000);
    let started = Instant::now();
    loop {
        type Row = (
            String,
            i64,
            Option<i64>,
            Option<String>,
            i64,
            Option<Vec<u8>>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT request_hash, order_id, response_status, response_body, updated_at, txn_request FROM order_requests \
             WHERE user_id = $1 AND idempotency_key = $2",
        )
        .bind(user)
        .bind(key)
        .fetch_optional(db.pool())
        .await
        .map_err(StoreError::from)?;
        let Some((stored_hash, order_id, status, body, updated_at, txn_request)) = row else {
            return Err(Problem::internal("the idempotency record vanished"));
        };
        if stored_hash != hash {
            return Err(unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request body",
            ));
        }
        if let (Some(status), Some(body)) = (status, body) {
            return Ok(Replay::Answered(Answer {
                status: status as u16,
                body: serde_json::from_str(&body).unwrap_or_default(),
            }));
        }
        let idle = store::now_ms() - updated_at;
        if idle > patience.as_millis() as i64 {
            return Ok(Replay::TakeOver {
                order_id,
                txn_request,
            });
        }
        if started.elapsed() > patience {
            return Err(Problem::conflict(
                "in_progress",
                "a request with this Idempotency-Key is still in progress",
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn price_of(api: &Api, db: &Db, sku: &str) -> Result<Option<(String, i64)>, StoreError> {
    if let Some(hit) = api.prices.get(sku).await {
        return Ok(hit);
    }
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT name, price FROM catalog WHERE sku = $1")
            .bind(sku)
            .fetch_optional(db.pool())
            .await?;
    api.prices.insert(sku.to_owned(), row.clone()).await;
    Ok(row)
}

/// The order API's reason code for a rolled-back order: the participant's own code when one
/// refused (`insufficient_funds`, `out_of_stock`, …), `unavailable` when one did not answer,
/// `timeout` past the deadline.
fn reason_code(rollback: Option<&pb::Rollback>) -> String {
    use pb::rollback::Kind;
    match rollback.and_then(|r| r.kind.as_ref()) {
        Some(Kind::Rejected(r)) => r.code.clone(),
        Some(Kind::Errored(_)) => "unavailable".into(),
        Some(Kind::Deadline(_)) => "timeout".into(),
        Some(Kind::Described(_)) | None => "cancelled".into(),
    }
}

/// One order's global transaction, as built for its first attempt (and stored with its key).
struct Checkout {
    request: pb::ExecuteRequest,
    /// The order branch's payload: what the answer shows.
    order: proto::pay::v1::OrderBranch,
}

impl Checkout {
    /// A stored request, as a retry resends it.
    fn decode(bytes: &[u8]) -> Result<Checkout, Problem> {
        let corrupt = || Problem::internal("the stored order request cannot be read");
        let request: pb::ExecuteRequest = prost::Message::decode(bytes).map_err(|e| {
            tracing::error!(error = %e, "stored txn_request does not decode");
            corrupt()
        })?;
        let order = request
            .branches
            .iter()
            .find(|b| b.branch_id == ORDER_BRANCH)
            .and_then(|b| prost::Message::decode(b.payload.as_slice()).ok())
            .ok_or_else(corrupt)?;
        Ok(Checkout { request, order })
    }
}

const ORDER_BRANCH: &str = "order";

/// Prices the order and builds its global transaction: `Ok(Err(answer))` for a client error
/// (the key's answer), `Err` when the catalog cannot be read now.
async fn checkout(
    api: &Api,
    db: &Db,
    user: &str,
    order_id: i64,
    body: &NewOrderBody,
) -> Result<Result<Checkout, Answer>, Problem> {
    let Some((_name, price)) = price_of(api, db, &body.sku).await? else {
        return Ok(Err(Answer::problem(&unprocessable(
            "unknown_sku",
            format!("no product {:?} in the catalog", body.sku),
        ))));
    };
    let Some(amount) = price
        .checked_mul(body.quantity)
        .filter(|a| *a <= tcc::check::MAX_UNITS)
    else {
        return Ok(Err(Answer::problem(&unprocessable(
            "amount_too_large",
            "the order's amount is too large",
        ))));
    };
    let order = proto::pay::v1::OrderBranch {
        order_id: order_id as u64,
        user_id: user.to_owned(),
        sku: body.sku.clone(),
        quantity: body.quantity,
        amount,
    };
    let payment_payload = prost::Message::encode_to_vec(&proto::pay::v1::PaymentBranch {
        account_id: user.to_owned(),
        amount,
        merchant_id: api.config.merchant_id.clone(),
    });
    let inventory_payload = prost::Message::encode_to_vec(&proto::pay::v1::InventoryBranch {
        sku: body.sku.clone(),
        quantity: body.quantity,
    });
    let branch = |id: &str, url: &str, payload: Vec<u8>| pb::BranchSpec {
        branch_id: id.into(),
        participant: url.into(),
        payload,
        depends_on: vec![],
    };
    let request = pb::ExecuteRequest {
        mode: pb::Mode::Tcc as i32,
        idempotency_key: format!("order:{order_id}"),
        branches: vec![
            branch(
                ORDER_BRANCH,
                &api.config.order_url,
                prost::Message::encode_to_vec(&order),
            ),
            branch("payment", &api.config.payment_url, payment_payload),
            branch("inventory", &api.config.inventory_url, inventory_payload),
        ],
        timeout_ms: api.config.transaction_timeout_ms,
        branch_timeout_ms: 0,
        wait_ms: api.config.wait_ms,
        concurrent: false,
    };
    Ok(Ok(Checkout { request, order }))
}

/// Sends the order's global transaction (as built by [`checkout`]) and answers with its outcome.
async fn execute(api: &Api, checkout: Checkout) -> Answer {
    let Checkout { mut request, order } = checkout;
    let order_id = order.order_id;
    // How long to wait is this attempt's business, not part of the request's identity.
    request.wait_ms = api.config.wait_ms;
    let outcome = match api.coordinator.clone().execute(request).await {
        Ok(r) => r.into_inner(),
        Err(status) if !proto::is_transient(&status) => {
            // The coordinator refused a request this service built: a bug, not the client's.
            tracing::error!(order_id, error = %status, "the coordinator refused the transaction");
            return Answer::problem(&Problem::internal(format!(
                "the coordinator refused the order: {}",
                status.message()
            )));
        }
        Err(status) => {
            tracing::warn!(order_id, error = %status, "the coordinator did not answer");
            return Answer::problem(&Problem::unavailable(format!(
                "the order could not be placed right now ({}); retry with the same Idempotency-Key",
                status.message()
            )));
        }
    };
    let (status, reason) = match outcome.status() {
        pb::Status::Confirming | pb::Status::Succeeded => ("confirmed", None),
        pb::Status::Cancelling | pb::Status::Failed => {
            ("cancelled", Some(reason_code(outcome.rollback.as_ref())))
        }
        _ => ("pending", None),
    };
    let view = OrderView {
        order_id: order_id.to_string(),
        gid: Some(outcome.gid.to_string()),
        status: status.into(),
        reason,
        sku: order.sku,
        quantity: order.quantity,
        amount: order.amount,
    };
    Answer {
        status: 201,
        body: serde_json::to_value(view).unwrap_or_default(),
    }
}

#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    id: i64,
    gid: i64,
    sku: String,
    quantity: i64,
    amount: i64,
    status: String,
}

impl From<OrderRow> for OrderView {
    fn from(o: OrderRow) -> Self {
        OrderView {
            order_id: o.id.to_string(),
            gid: Some(o.gid.to_string()),
            status: o.status.to_lowercase(),
            reason: None,
            sku: o.sku,
            quantity: o.quantity,
            amount: o.amount,
        }
    }
}

/// `GET /api/v1/orders/{id}`: the caller's own order; anyone else's is a 404.
async fn get_order(
    caller: Caller,
    db: web::Data<Db>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let not_found = || Problem::not_found(format!("no order {}", id.as_str()));
    let Some(order_id) = id.parse::<i64>().ok().filter(|v| *v > 0) else {
        return Err(not_found());
    };
    let row: Option<OrderRow> = sqlx::query_as(
        "SELECT id, gid, sku, quantity, amount, status FROM orders WHERE id = $1 AND user_id = $2",
    )
    .bind(order_id)
    .bind(&caller.user_id)
    .fetch_optional(db.pool())
    .await
    .map_err(StoreError::from)?;
    if let Some(row) = row {
        return Ok(HttpResponse::Ok().json(OrderView::from(row)));
    }
    // Placed but not reached by its Try yet (or the coordinator was down): the stored answer
    // knows it.
    let stored: Option<Option<String>> = sqlx::query_scalar(
        "SELECT response_body FROM order_requests WHERE order_id = $1 AND user_id = $2",
    )
    .bind(order_id)
    .bind(&caller.user_id)
    .fetch_optional(db.pool())
    .await
    .map_err(StoreError::from)?;
    match stored {
        Some(Some(body)) => {
            let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if value.get("order_id").is_some() {
                return Ok(HttpResponse::Ok().json(value));
            }
            Err(not_found())
        }
        Some(None) => Ok(HttpResponse::Ok()
            .json(json!({ "order_id": order_id.to_string(), "status": "pending" }))),
        None => Err(not_found()),
    }
}

/// `GET /api/v1/orders?limit=20&after=<order id>`: the caller's orders, newest first.
async fn list_orders(
    caller: Caller,
    db: web::Data<Db>,
    page: web::Query<host::Page>,
) -> Result<HttpResponse, Problem> {
    let before = if page.after.is_empty() {
        i64::MAX
    } else {
        page.after
            .parse::<i64>()
            .map_err(|_| Problem::bad_request("after must be an order id"))?
    };
    let rows: Vec<OrderRow> = sqlx::query_as(
        "SELECT id, gid, sku, quantity, amount, status FROM orders WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(&caller.user_id)
    .bind(before)
    .bind(page.limit())
    .fetch_all(db.pool())
    .await
    .map_err(StoreError::from)?;
    let next = page.next_after(&rows, |o| o.id.to_string());
    let orders: Vec<OrderView> = rows.into_iter().map(OrderView::from).collect();
    Ok(HttpResponse::Ok().json(json!({ "orders": orders, "next_after": next })))
}

#[derive(Debug, Deserialize)]
struct CatalogItem {
    name: String,
    price: i64,
}

/// `PUT /admin/catalog/{sku}` `{"name": "...", "price": n}`.
async fn put_catalog_item(
    api: web::Data<Api>,
    db: web::Data<Db>,
    sku: web::Path<String>,
    body: web::Json<CatalogItem>,
) -> Result<HttpResponse, Problem> {
    tcc::check::id("sku", &sku).map_err(|r| Problem::bad_request(r.message))?;
    tcc::check::units("price", body.price).map_err(|r| Problem::bad_request(r.message))?;
    if body.name.trim().is_empty() || body.name.len() > 200 {
        return Err(Problem::bad_request("name must be 1 to 200 characters"));
    }
    let mut writer = db.begin().await?;
    sqlx::query(
        "INSERT INTO catalog (sku, name, price, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (sku) DO UPDATE SET name = excluded.name, price = excluded.price, updated_at = excluded.updated_at",
    )
    .bind(sku.as_str())
    .bind(body.name.trim())
    .bind(body.price)
    .bind(store::now_ms())
    .execute(&mut *writer)
    .await
    .map_err(StoreError::from)?;
    writer.commit().await.map_err(StoreError::from)?;
    api.prices.invalidate(sku.as_str()).await;
    Ok(HttpResponse::Ok()
        .json(json!({ "sku": sku.as_str(), "name": body.name.trim(), "price": body.price })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_rollbacks_become_the_order_apis_reason_codes() {
        use pb::rollback::Kind;
        let of = |kind: Kind| reason_code(Some(&pb::Rollback { kind: Some(kind) }));
        assert_eq!(
            of(Kind::Rejected(pb::Rejected {
                branch_id: "payment".into(),
                code: "insufficient_funds".into(),
                message: "short".into(),
            })),
            "insufficient_funds"
        );
        assert_eq!(
            of(Kind::Errored(pb::Errored {
                branch_id: "payment".into(),
                error: "Unavailable".into(),
            })),
            "unavailable"
        );
        assert_eq!(of(Kind::Deadline(pb::DeadlinePassed {})), "timeout");
        assert_eq!(reason_code(None), "cancelled");
    }

    #[test]
    fn the_request_hash_depends_on_sku_and_quantity() {
        let a = request_hash(&NewOrderBody {
            sku: "mug".into(),
            quantity: 1,
        });
        assert_eq!(
            a,
            request_hash(&NewOrderBody {
                sku: "mug".into(),
                quantity: 1
            })
        );
        assert_ne!(
            a,
            request_hash(&NewOrderBody {
                sku: "mug".into(),
                quantity: 2
            })
        );
        assert_ne!(
            a,
            request_hash(&NewOrderBody {
                sku: "mu".into(),
                quantity: 1
            })
        );
    }
}
