//! Admin and read API over HTTP (under `/admin`, behind the admin token): orders by id, by
//! transaction, by user, counts by status for the audit, the catalog, and the crash failpoints
//! (not in production). Each route is annotated for the service's OpenAPI document
//! ([`crate::openapi`]).

use actix_web::middleware::from_fn;
use actix_web::{web, HttpResponse};
use admin::OrderAudit;
use host::openapi::{GidPath, NumberListing};
use host::problem::{only, ProblemBody};
use host::Problem;
use serde::{Deserialize, Serialize};
use store::Db;

/// Mounts the routes (each a 405 for a method it does not take).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        host::Failpoints::<crate::api::Crash>::routes(crate::catalog::admin_routes(web::scope(
            "/admin",
        )))
        .wrap(from_fn(host::require_admin))
        .service(only("/orders", "GET").route(web::get().to(list_orders)))
        .service(only("/orders/{id}", "GET").route(web::get().to(get_order)))
        .service(only("/transactions/{gid}/orders", "GET").route(web::get().to(orders_of_gid)))
        .service(only("/refunds", "GET").route(web::get().to(list_refunds)))
        .service(only("/audit", "GET").route(web::get().to(audit))),
    );
}

/// The admin routes' OpenAPI paths.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list_orders,
        get_order,
        orders_of_gid,
        list_refunds,
        audit,
        crate::catalog::put_catalog_item
    ),
    components(schemas(Order, OrderList, OrdersOf, Refund, RefundList, OrderAudit, admin::CatalogItem)),
    tags((name = "admin", description = "Every order and refund, the catalog and the audit (admin token)"))
)]
pub(crate) struct AdminApi;

/// An order as the admin API shows it: any user's, with its transaction.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = AdminOrder)]
pub struct Order {
    #[serde(with = "host::page::id_string")]
    #[schema(value_type = String)]
    pub id: i64,
    #[serde(with = "host::page::id_string")]
    #[schema(value_type = String)]
    pub gid: i64,
    pub user_id: String,
    pub sku: String,
    pub quantity: i64,
    pub amount: i64,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A page of orders.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = AdminOrderList)]
struct OrderList {
    orders: Vec<Order>,
    /// The `after` of the next page; none on the last.
    next_after: Option<String>,
}

/// The orders of one global transaction.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct OrdersOf {
    gid: String,
    orders: Vec<Order>,
}

/// A page of refunds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = AdminRefundList)]
struct RefundList {
    refunds: Vec<Refund>,
    /// The `after` of the next page; none on the last.
    next_after: Option<String>,
}

const COLUMNS: &str = "id, gid, user_id, sku, quantity, amount, status, created_at, updated_at";

/// A listing's `after` (newest first): below it, or from the top when it is empty or beyond
/// every id.
fn below(after: &str) -> Result<i64, Problem> {
    if after.is_empty() {
        return Ok(i64::MAX);
    }
    Ok(host::page::positive_id("after", after)?.unwrap_or(i64::MAX))
}

#[utoipa::path(
    get,
    operation_id = "admin_get_order",
    path = "/admin/orders/{id}",
    tag = "admin",
    summary = "Read any order",
    params(("id" = String, Path, description = "The order's id", pattern = "^[1-9][0-9]{0,18}$")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 404, description = "No such order", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin" = []))
)]
async fn get_order(db: web::Data<Db>, id: web::Path<String>) -> Result<HttpResponse, Problem> {
    let Some(id) = host::page::positive_id("order id", &id)? else {
        return Err(Problem::not_found(format!("no order {}", id.as_str())));
    };
    let order: Option<Order> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1"))
            .bind(id)
            .fetch_optional(db.pool())
            .await?;
    order
        .map(|o| HttpResponse::Ok().json(o))
        .ok_or_else(|| Problem::not_found(format!("no order {id}")))
}

#[utoipa::path(
    get,
    path = "/admin/transactions/{gid}/orders",
    tag = "admin",
    summary = "The orders a global transaction made",
    params(GidPath),
    responses((status = 200, description = "Its orders (none: not an order's transaction)", body = OrdersOf)),
    security(("admin" = []))
)]
async fn orders_of_gid(db: web::Data<Db>, gid: web::Path<String>) -> Result<HttpResponse, Problem> {
    // Beyond every gid: a transaction with no orders.
    let orders: Vec<Order> = match host::page::positive_id("gid", &gid)? {
        None => Vec::new(),
        Some(id) => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM orders WHERE gid = $1 ORDER BY id"
            ))
            .bind(id)
            .fetch_all(db.pool())
            .await?
        }
    };
    Ok(HttpResponse::Ok().json(OrdersOf {
        gid: gid.into_inner(),
        orders,
    }))
}

#[derive(Debug, Deserialize)]
struct OrderQuery {
    user_id: Option<String>,
    status: Option<String>,
}

/// `GET /admin/orders?user_id=&status=&limit=&after=<order id>`: newest first.
#[utoipa::path(
    get,
    operation_id = "admin_list_orders",
    path = "/admin/orders",
    tag = "admin",
    summary = "Every order, newest first",
    params(
        NumberListing,
        ("user_id" = Option<String>, Query, description = "Only this user's"),
        ("status" = Option<String>, Query, description = "Only orders in this status",
            pattern = "^(PENDING|CONFIRMED|CANCELLED|REFUNDING|REFUNDED)$"),
    ),
    responses((status = 200, description = "A page of orders", body = OrderList)),
    security(("admin" = []))
)]
async fn list_orders(
    db: web::Data<Db>,
    page: web::Query<host::Page>,
    q: web::Query<OrderQuery>,
) -> Result<HttpResponse, Problem> {
    let before = below(&page.after)?;
    if let Some(status) = &q.status {
        if crate::domain::OrderStatus::parse(status).is_none() {
            return Err(Problem::bad_request(
                "status must be PENDING, CONFIRMED, CANCELLED, REFUNDING or REFUNDED",
            ));
        }
    }
    let orders: Vec<Order> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM orders WHERE id < $1 AND ($2 = '' OR user_id = $2) AND ($3 = '' OR status = $3) \
         ORDER BY id DESC LIMIT $4"
    ))
    .bind(before)
    .bind(q.user_id.clone().unwrap_or_default())
    .bind(q.status.clone().unwrap_or_default())
    .bind(page.limit())
    .fetch_all(db.pool())
    .await?;
    let next_after = page.next_after(&orders, |o| o.id.to_string());
    Ok(HttpResponse::Ok().json(OrderList { orders, next_after }))
}

/// A refund as the admin API lists it.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = AdminRefund)]
pub struct Refund {
    #[serde(with = "host::page::id_string")]
    #[schema(value_type = String)]
    pub id: i64,
    #[serde(with = "host::page::id_string")]
    #[schema(value_type = String)]
    pub gid: i64,
    #[serde(with = "host::page::id_string")]
    #[schema(value_type = String)]
    pub order_id: i64,
    pub user_id: String,
    pub quantity: i64,
    pub amount: i64,
    pub status: String,
    pub reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// `GET /admin/refunds?limit=&after=<refund id>`: every refund, newest first; what the audit
/// reads to judge refund transactions.
#[utoipa::path(
    get,
    path = "/admin/refunds",
    tag = "admin",
    summary = "Every refund, newest first",
    params(NumberListing),
    responses((status = 200, description = "A page of refunds", body = RefundList)),
    security(("admin" = []))
)]
async fn list_refunds(
    db: web::Data<Db>,
    page: web::Query<host::Page>,
) -> Result<HttpResponse, Problem> {
    let before = below(&page.after)?;
    let refunds: Vec<Refund> = sqlx::query_as(
        "SELECT id, gid, order_id, user_id, quantity, amount, status, reason, created_at, updated_at \
         FROM refunds WHERE id < $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(before)
    .bind(page.limit())
    .fetch_all(db.pool())
    .await?;
    let next_after = page.next_after(&refunds, |r| r.id.to_string());
    Ok(HttpResponse::Ok().json(RefundList {
        refunds,
        next_after,
    }))
}

/// `GET /admin/audit`: orders by status, and the exactly-once bookkeeping of the public API
/// (docs/design.md §5.4), in one read transaction. An order settled before the retention cutoff may
/// have lost its key to the purge: only orders created since (their key answered since, so never
/// purged) or not settled are checked for one. Not "changed since": a refund changes an order
/// whose key was purged long ago.
#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "admin",
    summary = "Orders by status and the exactly-once bookkeeping, read in one transaction",
    responses((status = 200, description = "Counts", body = OrderAudit)),
    security(("admin" = []))
)]
async fn audit(
    db: web::Data<Db>,
    retention: Option<web::Data<host::Retention>>,
) -> Result<HttpResponse, Problem> {
    let cutoff = retention.map_or(i64::MIN, |r| r.cutoff_ms());
    let mut tx = db.begin().await?;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, CAST(COUNT(*) AS BIGINT) FROM orders GROUP BY status")
            .fetch_all(&mut *tx)
            .await?;
    let count = |s: &str| {
        rows.iter()
            .find(|(k, _)| k == s)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    let (requests, unanswered): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COUNT(*) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN response_status IS NULL THEN 1 ELSE 0 END), 0) AS BIGINT) \
         FROM order_requests",
    )
    .fetch_one(&mut *tx)
    .await?;
    let without: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM orders o \
         WHERE NOT EXISTS (SELECT 1 FROM order_requests r WHERE r.order_id = o.id) \
         AND (o.created_at >= $1 OR o.status NOT IN ('CONFIRMED', 'CANCELLED', 'REFUNDED'))",
    )
    .bind(cutoff)
    .fetch_one(&mut *tx)
    .await?;
    let several: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM \
         (SELECT order_id FROM order_requests GROUP BY order_id HAVING COUNT(*) > 1) shared_orders",
    )
    .fetch_one(&mut *tx)
    .await?;
    let refunds: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, CAST(COUNT(*) AS BIGINT) FROM refunds GROUP BY status")
            .fetch_all(&mut *tx)
            .await?;
    let refunds_of = |s: &str| {
        refunds
            .iter()
            .find(|(k, _)| k == s)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    };
    // A refund refused because another one was under way is FAILED, moved nothing (§5.5b checks
    // that) and had its key forgotten, so that asking again with it is a new request.
    let refunds_without: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM refunds f \
         WHERE NOT EXISTS (SELECT 1 FROM order_requests r WHERE r.order_id = f.id AND r.refund_of = f.order_id) \
         AND (f.created_at >= $1 OR f.status = 'REFUNDING') AND f.status <> 'FAILED'",
    )
    .bind(cutoff)
    .fetch_one(&mut *tx)
    .await?;
    tx.rollback().await?;
    Ok(HttpResponse::Ok().json(OrderAudit {
        pending: count("PENDING"),
        confirmed: count("CONFIRMED"),
        cancelled: count("CANCELLED"),
        refunding: count("REFUNDING"),
        refunded: count("REFUNDED"),
        refunds_under_way: refunds_of("REFUNDING"),
        refunds_done: refunds_of("REFUNDED"),
        refunds_failed: refunds_of("FAILED"),
        refunds_without_request: refunds_without,
        requests,
        unanswered_requests: unanswered,
        orders_without_request: without,
        orders_with_several_requests: several,
    }))
}
