//! The public order API: `POST /api/v1/orders`, `GET /api/v1/orders/{id}`, `GET /api/v1/orders`.
//!
//! Placing an order: the key ([`crate::idempotency`]) — a key seen before is answered from what
//! it stored; a new one gets an order id, the order is priced and built into one TCC global
//! transaction ([`crate::checkout`]: the order here, the charge at payment-svc, the reservation
//! at inventory-svc), stored with the key, then sent. The answer comes once the decision is
//! durable, or `pending` when it takes longer than the wait limit. The coordinator call carries
//! the key `order:<order id>`, so a retried call can never start a second transaction, and a
//! retry resends the stored request byte for byte, whatever the catalog says by then.
//!
//! Order ids are Snowflake ids whose node id is leased (no live order-svc on this database
//! shares it) and which resume above the largest order id stored (read at the first order), so
//! a restart with a clock that stepped back never repeats one; the storage refuses a repeated
//! order id loudly (a unique index).

use crate::auth::Caller;
use crate::checkout::{checkout, execute, Checkout};
use crate::idempotency::{self, Answer, FirstRequest, KeyState, Replay};
use actix_web::{web, HttpRequest, HttpResponse};
use host::Problem;
use proto::v1 as pb;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
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
    /// A refund's deadline (default an hour): long, because past it a refund whose money went
    /// out is compensated, and the buyer may have spent it (see [`crate::refund`]).
    #[serde(default = "default_refund_timeout_ms")]
    pub refund_timeout_ms: u64,
    /// Largest quantity of one order line.
    pub max_quantity: i64,
    /// A node id lease not renewed for this long is free (see `store::node`).
    pub node_lease_ms: u64,
    /// Orders per user and second (`rate_limit.per_second = 0` turns it off).
    #[serde(default)]
    pub rate_limit: crate::limit::RateLimitConfig,
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
            refund_timeout_ms: default_refund_timeout_ms(),
            max_quantity: 1_000,
            node_lease_ms: 3_000,
            rate_limit: crate::limit::RateLimitConfig::default(),
        }
    }
}

fn default_refund_timeout_ms() -> u64 {
    3_600_000
}

type CoordinatorClient =
    pb::coordinator_client::CoordinatorClient<InterceptedService<Channel, TracePropagation>>;

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    pub(crate) config: ApiConfig,
    /// Resumed above the largest stored order id at the first order (see [`Api::ids`]).
    ids: std::sync::Arc<OnceCell<OrderIds>>,
    pub(crate) coordinator: CoordinatorClient,
    pub(crate) prices: moka::future::Cache<String, Option<(String, i64)>>,
    pub(crate) limiter: std::sync::Arc<crate::limit::OrderLimiter>,
    /// Requests waiting for another request with their key.
    pub(crate) waiters: std::sync::Arc<idempotency::Waiters>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// The API with its coordinator client, over mutual TLS with `tls` (order-svc's
    /// certificates; `None`: plaintext, dev only).
    pub fn new(config: ApiConfig, tls: Option<&trust::Trust>) -> Result<Api, host::ConfigError> {
        if config.node_id > ids::MAX_NODE {
            return Err(host::ConfigError(format!(
                "api.node_id must be 0..={}",
                ids::MAX_NODE
            )));
        }
        let channel = trust::endpoint(&config.coordinator_url, tls, Some("coordinator"))
            .map_err(|e| host::ConfigError(format!("coordinator_url: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_millis(config.wait_ms + 5_000))
            .tcp_nodelay(true)
            // A coordinator frozen or cut off holds its connection open without a word: pings
            // find it within 15 s and the channel reconnects (to a standby behind the name).
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Api {
            limiter: std::sync::Arc::new(crate::limit::OrderLimiter::new(config.rate_limit)?),
            waiters: Default::default(),
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
                let owner = format!("order-svc:{}", hex::encode(rand::random::<[u8; 4]>()));
                // Renewed while the generator lives: for the life of the process once it is made,
                // and no longer if making it fails (the lease is then given back).
                let (heartbeat, stop) = tokio::sync::oneshot::channel::<()>();
                let (ids, node) = store::node::snowflake(
                    db,
                    store::node::IdSource {
                        node: self.config.node_id,
                        owner: &owner,
                        stale: Duration::from_millis(self.config.node_lease_ms.max(300)),
                        high_water_sql: "SELECT CAST(MAX(order_id) AS BIGINT) FROM order_requests",
                        max_clock_behind: Duration::from_millis(MAX_CLOCK_BEHIND_MS),
                    },
                    async {
                        let _ = stop.await;
                    },
                )
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "order ids cannot be made");
                    Problem::unavailable(match e {
                        store::node::NodeError::Taken { .. } => {
                            "order ids cannot be made right now: this instance's node id is taken"
                        }
                        store::node::NodeError::Id(_) => {
                            "order ids cannot be made right now: the clock is far behind the last order"
                        }
                        store::node::NodeError::Store(_) => {
                            "order ids cannot be made right now: the database did not answer"
                        }
                    })
                })?;
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

    /// A new order (or refund) id.
    pub(crate) async fn next_id(&self, db: &Db) -> Result<i64, Problem> {
        Ok(self
            .ids(db)
            .await?
            .next_id()
            .map_err(|e| {
                tracing::error!(error = %e, "no order id can be made");
                Problem::unavailable("no order id can be made right now; retry later")
            })?
            .as_i64())
    }
}

/// Where order-svc can be made to crash, for the container tests and the labs (armed through
/// `/admin/failpoints`, refused in production; see [`host::failpoint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Crash {
    /// The coordinator has answered; the client's response is not stored yet. The client's
    /// retry with the same key must get the same order.
    AfterCoordinatorAnswer,
}

impl host::failpoint::Point for Crash {
    const ALL: &'static [Crash] = &[Crash::AfterCoordinatorAnswer];

    fn name(self) -> &'static str {
        match self {
            Crash::AfterCoordinatorAnswer => "after_coordinator_answer",
        }
    }
}

/// Mounts the public routes and the catalog admin route.
pub fn routes(cfg: &mut web::ServiceConfig) {
    use host::problem::only;
    cfg.service(
        only("/api/v1/orders", "GET, POST")
            .route(web::post().to(place_order))
            .route(web::get().to(list_orders)),
    )
    .service(only("/api/v1/orders/{id}", "GET").route(web::get().to(get_order)))
    .service(
        only("/api/v1/orders/{id}/refund", "POST")
            .route(web::post().to(crate::refund::refund_order)),
    );
}

/// `POST /api/v1/orders`'s body: one line of one product.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewOrder, example = json!({"sku": "coffee", "quantity": 2}))]
pub(crate) struct NewOrderBody {
    /// The product (1 to 64 characters of letters, digits and `_-.@:`).
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.@:-]+$")]
    pub(crate) sku: String,
    /// How many (1 to the configured `max_quantity`, 1000 by default).
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(deserialize_with = "admin::whole::number")]
    pub(crate) quantity: i64,
}

/// The order as the public API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(
    as = Order,
    example = json!({"order_id": "121441931732451328", "gid": "121441931786977280",
        "status": "confirmed", "sku": "coffee", "quantity": 2, "amount": 900})
)]
pub struct OrderView {
    /// The order's id (a decimal Snowflake id: compare as text, it does not fit a double).
    #[schema(pattern = "^[0-9]+$")]
    pub order_id: String,
    /// The global transaction's id (null when the coordinator has not recorded it yet).
    #[schema(pattern = "^[0-9]+$")]
    pub gid: Option<String>,
    /// `confirmed`, `cancelled` or `pending`; once refunded, `refunding` then `refunded`.
    #[schema(pattern = "^(confirmed|cancelled|pending|refunding|refunded)$")]
    pub status: String,
    /// Why it was cancelled: `insufficient_funds`, `out_of_stock`, `unknown_account`,
    /// `unavailable`, `timeout`, ….
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub sku: String,
    pub quantity: i64,
    /// What the line costs (price times quantity), in cents.
    pub amount: i64,
    /// The order's latest refund, if one was asked for (`GET /api/v1/orders/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub refund: Option<crate::refund::RefundView>,
}

/// The `Idempotency-Key` header, as the API documents it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct IdempotencyKey {
    /// The client's key for this request (1 to 200 visible ASCII characters): a retry with the
    /// same key gets the same answer.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 200,
        pattern = "^[!-~]+$"
    )]
    idempotency_key: String,
}

pub(crate) fn idempotency_key(req: &HttpRequest) -> Result<String, Problem> {
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

/// An order placed but not decided yet, as `GET /api/v1/orders/{id}` shows it before its
/// answer is stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PendingOrder {
    #[schema(pattern = "^[0-9]+$")]
    order_id: String,
    /// Always `pending`.
    #[schema(pattern = "^pending$")]
    status: String,
}

/// What `GET /api/v1/orders/{id}` answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum OrderOrPending {
    Order(Box<OrderView>),
    Pending(PendingOrder),
}

/// A page of the caller's orders.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct OrderList {
    orders: Vec<OrderView>,
    /// The `after` of the next page; null on the last page.
    next_after: Option<String>,
}

/// `POST /api/v1/orders` `{"sku": "...", "quantity": n}` with `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/api/v1/orders",
    tag = "orders",
    summary = "Place an order",
    description = "Places an order as one TCC transaction across order-svc, payment-svc and \
        inventory-svc, and answers once the decision is durable (`confirmed` or `cancelled` with \
        its `reason`), or `pending` when that takes longer than the wait limit (follow \
        `GET /api/v1/orders/{id}`). A retry with the same `Idempotency-Key` and body gets the \
        same answer (`Idempotent-Replayed: true`), never a second order.",
    params(IdempotencyKey),
    request_body(content = NewOrderBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The order and its outcome", body = OrderView,
            headers(("Idempotent-Replayed" = String, description = "`true` on a replayed answer"))),
        (status = 400, description = "A malformed body or key", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "A request with this key is still in progress", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "The body is not JSON", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "An unknown product, or a key reused for another body", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many orders from this user", body = host::problem::ProblemBody, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "A dependency is down; retry with the same key", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 500, description = "A bug (the log says what, the answer never does); retry with the same key", body = host::problem::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn place_order(
    req: HttpRequest,
    caller: Caller,
    api: web::Data<Api>,
    db: web::Data<Db>,
    crash: web::Data<host::Failpoints<Crash>>,
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
    // The rate limit counts what costs: a new order, and a retry that waits for or takes over
    // a request in progress. A retry whose answer is stored is one read, never refused.
    let first = match idempotency::key_state(&db, user, &key).await? {
        KeyState::Answered => None,
        KeyState::Unanswered => {
            api.limiter.check(user)?;
            None
        }
        KeyState::Absent => {
            api.limiter.check(user)?;
            first_attempt(&api, &db, user, &key, &hash, &body).await?
        }
    };
    let checkout = match first {
        Some(Ok(checkout)) => checkout,
        Some(Err(answer)) => return Ok(answer.into_response(false)),
        None => {
            match idempotency::replay(&db, &api.waiters, user, &key, &hash, patience(&api)).await? {
                Replay::Answered(answer) => return Ok(answer.into_response(true)),
                Replay::Forgotten => {
                    // Purged since it was looked up: a new request, limited like one.
                    api.limiter.check(user)?;
                    match first_attempt(&api, &db, user, &key, &hash, &body).await? {
                        Some(Ok(checkout)) => checkout,
                        Some(Err(answer)) => return Ok(answer.into_response(false)),
                        None => {
                            return Err(Problem::conflict(
                                "in_progress",
                                "a request with this Idempotency-Key is still in progress",
                            ))
                        }
                    }
                }
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
                    Err(answer) => return Ok(answered(&api, &db, user, &key, answer).await?),
                },
            }
        }
    };
    let answer = execute(&api, checkout).await;
    crash.hit(Crash::AfterCoordinatorAnswer);
    Ok(answered(&api, &db, user, &key, answer).await?)
}

/// Saves (or, after a 5xx, releases) the key's answer, wakes the requests waiting for it, and
/// sends it.
pub(crate) async fn answered(
    api: &Api,
    db: &Db,
    user: &str,
    key: &str,
    answer: Answer,
) -> Result<HttpResponse, StoreError> {
    idempotency::save(db, user, key, &answer).await?;
    api.waiters.wake(user, key);
    Ok(answer.into_response(false))
}

/// How long a request waits for another one with its key before it counts as interrupted.
pub(crate) fn patience(api: &Api) -> Duration {
    Duration::from_millis(api.config.wait_ms + 2_000)
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
    let order_id = api.next_id(db).await?;
    let planned = checkout(api, db, user, order_id, body).await?;
    let fresh = idempotency::begin(
        db,
        FirstRequest {
            user,
            key,
            hash,
            order_id,
            refund_of: None,
            txn_request: planned
                .as_ref()
                .ok()
                .map(|c| prost::Message::encode_to_vec(&c.request)),
            answer: planned.as_ref().err(),
        },
    )
    .await?;
    Ok(fresh.then_some(planned))
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
            refund: None,
        }
    }
}

/// `GET /api/v1/orders/{id}`: the caller's own order; anyone else's is a 404.
#[utoipa::path(
    get,
    path = "/api/v1/orders/{id}",
    tag = "orders",
    summary = "Read one of your orders",
    params(("id" = String, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order (with its latest refund), or `pending` before its answer is stored", body = OrderOrPending),
        (status = 401, description = "No valid bearer token", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such order of yours", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 500, description = "A bug (the log says what, the answer never does); retry with the same key", body = host::problem::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_order(
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
    .await?;
    if let Some(row) = row {
        let mut view = OrderView::from(row);
        view.refund = crate::refund::latest(&db, order_id).await?;
        return Ok(HttpResponse::Ok().json(view));
    }
    // Placed but not reached by its Try yet (or the coordinator was down): the stored answer
    // knows it.
    let stored: Option<Option<String>> = sqlx::query_scalar(
        "SELECT response_body FROM order_requests WHERE order_id = $1 AND user_id = $2 AND refund_of IS NULL",
    )
    .bind(order_id)
    .bind(&caller.user_id)
    .fetch_optional(db.pool())
    .await?;
    match stored {
        Some(Some(body)) => {
            let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if value.get("order_id").is_some() {
                return Ok(HttpResponse::Ok().json(value));
            }
            Err(not_found())
        }
        Some(None) => Ok(HttpResponse::Ok().json(PendingOrder {
            order_id: order_id.to_string(),
            status: "pending".into(),
        })),
        None => Err(not_found()),
    }
}

/// `GET /api/v1/orders?limit=20&after=<order id>`: the caller's orders, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/orders",
    tag = "orders",
    summary = "List your orders, newest first",
    params(
        ("limit" = Option<i64>, Query, description = "Orders per page (1 to 1000; default 100)"),
        ("after" = Option<String>, Query, description = "The `next_after` of the previous page (an order id)", pattern = "^[0-9]*$"),
    ),
    responses(
        (status = 200, description = "A page of orders", body = OrderList),
        (status = 400, description = "A malformed query", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = host::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 500, description = "A bug (the log says what, the answer never does); retry with the same key", body = host::problem::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_orders(
    caller: Caller,
    db: web::Data<Db>,
    page: web::Query<host::Page>,
) -> Result<HttpResponse, Problem> {
    let before = if page.after.is_empty() {
        i64::MAX
    } else if page.after.bytes().all(|b| b.is_ascii_digit()) {
        // Digits beyond any order id: every order is older.
        page.after.parse::<i64>().unwrap_or(i64::MAX)
    } else {
        return Err(Problem::bad_request("after must be an order id"));
    };
    let rows: Vec<OrderRow> = sqlx::query_as(
        "SELECT id, gid, sku, quantity, amount, status FROM orders WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(&caller.user_id)
    .bind(before)
    .bind(page.limit())
    .fetch_all(db.pool())
    .await?;
    let next = page.next_after(&rows, |o| o.id.to_string());
    Ok(HttpResponse::Ok().json(OrderList {
        orders: rows.into_iter().map(OrderView::from).collect(),
        next_after: next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantity_written_as_a_double_is_the_same_whole_number_and_a_fraction_is_refused() {
        let parse = |body: &str| serde_json::from_str::<NewOrderBody>(body).map(|b| b.quantity);
        assert_eq!(parse(r#"{"sku": "mug", "quantity": 2}"#).unwrap(), 2);
        assert_eq!(parse(r#"{"sku": "mug", "quantity": 276.0}"#).unwrap(), 276);
        assert!(parse(r#"{"sku": "mug", "quantity": 2.5}"#).is_err());
        assert!(parse(r#"{"sku": "mug", "quantity": 1e300}"#).is_err());
        assert!(parse(r#"{"sku": "mug", "quantity": "2"}"#).is_err());
        assert!(parse(r#"{"sku": "mug"}"#).is_err(), "quantity is required");
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
