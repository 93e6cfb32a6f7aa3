//! Admin and read API over HTTP (all under `/admin`, behind the admin token): create and
//! restock SKUs, read stock and reservations, and the conservation audit. Each route is
//! annotated for the service's OpenAPI document ([`document`]).

use actix_web::middleware::from_fn;
use actix_web::{web, HttpResponse};
use admin::{NewSku, Restock, StockAudit};
use host::openapi::{GidBranchListing, GidPath, IdPath, Listing};
use host::problem::{only, ProblemBody};
use host::Problem;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use store::{Db, StoreError};
use utoipa::OpenApi;

/// Mounts the routes (each a 405 for a method it does not take) and the OpenAPI document.
pub fn routes(cfg: &mut web::ServiceConfig) {
    host::openapi::routes(cfg, document());
    cfg.service(
        web::scope("/admin")
            .wrap(from_fn(host::require_admin))
            .service(only("/skus", "GET").route(web::get().to(list_skus)))
            .service(
                only("/skus/{id}", "GET, PUT")
                    .route(web::put().to(create_sku))
                    .route(web::get().to(get_sku)),
            )
            .service(only("/skus/{id}/restocks", "POST").route(web::post().to(restock)))
            .service(only("/reservations", "GET").route(web::get().to(list_reservations)))
            .service(only("/reservations/{gid}", "GET").route(web::get().to(reservations_of)))
            .service(only("/audit", "GET").route(web::get().to(audit))),
    );
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tcc-pay inventory-svc operator API",
        version = "1",
        description = "Stock of the tcc-pay platform, for operators, tests and labs: every call \
            needs inventory-svc's admin token. Errors are RFC 9457 problem documents \
            (`application/problem+json`) whose `code` says what went wrong. Branch calls (Try, \
            Confirm, Cancel) are gRPC, from the coordinator only."
    ),
    paths(
        list_skus,
        create_sku,
        get_sku,
        restock,
        list_reservations,
        reservations_of,
        audit
    ),
    components(schemas(Sku, SkuList, Reservation, ReservationsOf, GidReservation, ReservationList, NewSku, Restock, StockAudit)),
    tags((name = "inventory", description = "SKUs, reservations and the stock audit"))
)]
struct InventoryApi;

/// inventory-svc's OpenAPI document, made once.
pub fn document() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut api = InventoryApi::openapi();
        api.merge(tcc::service::FaultsApi::openapi());
        let mut doc = host::openapi::finish(api);
        let first = "$response.body#/skus/0/id";
        for to in ["get_sku", "restock"] {
            host::openapi::link(&mut doc, "GET /admin/skus", to, "id", first);
        }
        let first = "$response.body#/reservations/0/gid";
        host::openapi::link(
            &mut doc,
            "GET /admin/reservations",
            "reservations_of",
            "gid",
            first,
        );
        doc
    })
}

/// A SKU's stock.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(example = json!({"id": "vinyl", "available": 98, "reserved": 0, "sold": 2}))]
pub struct Sku {
    pub id: String,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

fn check_id(id: &str) -> Result<(), Problem> {
    tcc::check::id("sku", id).map_err(|r| Problem::bad_request(r.message))
}

async fn fetch(db: &Db, id: &str) -> Result<Option<Sku>, Problem> {
    Ok(
        sqlx::query_as("SELECT id, available, reserved, sold FROM skus WHERE id = $1")
            .bind(id)
            .fetch_optional(db.pool())
            .await?,
    )
}

async fn record_restock(
    conn: &mut sqlx::AnyConnection,
    sku: &str,
    quantity: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO restocks (id, sku, quantity, created_at) VALUES ($1, $2, $3, $4)")
        .bind(store::random_id())
        .bind(sku)
        .bind(quantity)
        .bind(store::now_ms())
        .execute(conn)
        .await?;
    Ok(())
}

/// `PUT /admin/skus/{id}` `{"available": n}`: creates the SKU with that opening stock (201), or
/// leaves an existing one as it is (200). Idempotent.
#[utoipa::path(
    put,
    path = "/admin/skus/{id}",
    tag = "inventory",
    summary = "Create a SKU with an opening stock (idempotent)",
    params(IdPath),
    request_body = NewSku,
    responses(
        (status = 201, description = "Created", body = Sku),
        (status = 200, description = "It existed: left as it was", body = Sku),
    ),
    security(("admin" = []))
)]
async fn create_sku(
    db: web::Data<Db>,
    id: web::Path<String>,
    body: web::Json<NewSku>,
) -> Result<HttpResponse, Problem> {
    check_id(&id)?;
    if !(0..=tcc::check::MAX_UNITS).contains(&body.available) {
        return Err(Problem::bad_request(format!(
            "available must be between 0 and {}",
            tcc::check::MAX_UNITS
        )));
    }
    let mut tx = db.begin().await?;
    let created = sqlx::query(
        "INSERT INTO skus (id, available, reserved, sold, created_at, updated_at) VALUES ($1, $2, 0, 0, $3, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(id.as_str())
    .bind(body.available)
    .bind(store::now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if created && body.available > 0 {
        record_restock(&mut tx, &id, body.available).await?;
    }
    tx.commit().await?;
    let sku = fetch(&db, &id)
        .await?
        .ok_or_else(|| Problem::internal("SKU vanished"))?;
    Ok(if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    }
    .json(sku))
}

/// `POST /admin/skus/{id}/restocks` `{"quantity": n}`: adds stock.
#[utoipa::path(
    post,
    path = "/admin/skus/{id}/restocks",
    tag = "inventory",
    summary = "Add stock",
    params(IdPath),
    request_body = Restock,
    responses(
        (status = 200, description = "The SKU after the restock", body = Sku),
        (status = 404, description = "No such SKU", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The stock would exceed the largest allowed", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin" = []))
)]
async fn restock(
    db: web::Data<Db>,
    id: web::Path<String>,
    body: web::Json<Restock>,
) -> Result<HttpResponse, Problem> {
    check_id(&id)?;
    tcc::check::units("quantity", body.quantity).map_err(|r| Problem::bad_request(r.message))?;
    let mut tx = db.begin().await?;
    // Stock only ever grows here (every other move keeps available + reserved + sold), so one
    // cap on this sum keeps every column far from overflowing.
    let updated = sqlx::query(
        "UPDATE skus SET available = available + $1, updated_at = $2 WHERE id = $3 \
         AND available + reserved + sold + $1 <= $4",
    )
    .bind(body.quantity)
    .bind(store::now_ms())
    .bind(id.as_str())
    .bind(tcc::check::MAX_BALANCE)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(match fetch(&db, &id).await? {
            None => Problem::not_found(format!("no SKU {:?}", id.as_str())),
            Some(_) => Problem::unprocessable(
                "balance_too_large",
                "the stock would exceed the largest allowed",
            ),
        });
    }
    record_restock(&mut tx, &id, body.quantity).await?;
    tx.commit().await?;
    let sku = fetch(&db, &id)
        .await?
        .ok_or_else(|| Problem::internal("SKU vanished"))?;
    Ok(HttpResponse::Ok().json(sku))
}

#[utoipa::path(
    get,
    path = "/admin/skus/{id}",
    tag = "inventory",
    summary = "Read a SKU's stock",
    params(IdPath),
    responses(
        (status = 200, description = "The SKU", body = Sku),
        (status = 404, description = "No such SKU", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin" = []))
)]
async fn get_sku(db: web::Data<Db>, id: web::Path<String>) -> Result<HttpResponse, Problem> {
    check_id(&id)?;
    match fetch(&db, &id).await? {
        Some(s) => Ok(HttpResponse::Ok().json(s)),
        None => Err(Problem::not_found(format!("no SKU {:?}", id.as_str()))),
    }
}

/// `GET /admin/skus?limit=100&after=<id>`.
#[utoipa::path(
    get,
    path = "/admin/skus",
    tag = "inventory",
    summary = "Every SKU, in id order",
    params(Listing),
    responses((status = 200, description = "A page of SKUs", body = SkuList)),
    security(("admin" = []))
)]
async fn list_skus(
    db: web::Data<Db>,
    page: web::Query<host::Page>,
) -> Result<HttpResponse, Problem> {
    let skus: Vec<Sku> = sqlx::query_as(
        "SELECT id, available, reserved, sold FROM skus WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(&page.after)
    .bind(page.limit())
    .fetch_all(db.pool())
    .await?;
    let next_after = page.next_after(&skus, |s| s.id.clone());
    Ok(HttpResponse::Ok().json(SkuList { skus, next_after }))
}

/// A page of SKUs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SkuList {
    skus: Vec<Sku>,
    /// The `after` of the next page; none on the last.
    next_after: Option<String>,
}

/// What one branch reserved or sold here.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
struct Reservation {
    branch_id: String,
    sku: String,
    quantity: i64,
    status: String,
}

/// `GET /admin/reservations/{gid}`.
#[utoipa::path(
    get,
    path = "/admin/reservations/{gid}",
    tag = "inventory",
    summary = "What each branch of a global transaction did here",
    params(GidPath),
    responses((status = 200, description = "Its reservations (none: no branch reached this service)", body = ReservationsOf)),
    security(("admin" = []))
)]
async fn reservations_of(
    db: web::Data<Db>,
    gid: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    // Beyond every gid: a transaction with none.
    let Some(id) = host::page::positive_id("gid", &gid)? else {
        return Ok(HttpResponse::Ok().json(ReservationsOf {
            gid: gid.into_inner(),
            reservations: Vec::new(),
        }));
    };
    let rows: Vec<Reservation> = sqlx::query_as(
        "SELECT branch_id, sku, quantity, status FROM reservations WHERE gid = $1 ORDER BY branch_id",
    )
    .bind(id)
    .fetch_all(db.pool())
    .await?;
    Ok(HttpResponse::Ok().json(ReservationsOf {
        gid: gid.into_inner(),
        reservations: rows,
    }))
}

/// The reservations of one global transaction.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ReservationsOf {
    #[schema(example = "7284019283746521")]
    gid: String,
    reservations: Vec<Reservation>,
}

/// A page of reservations.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ReservationList {
    reservations: Vec<GidReservation>,
    /// The `after` of the next page; none on the last.
    next_after: Option<String>,
}

/// A reservation with the global transaction it belongs to, as the full listing shows it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
struct GidReservation {
    #[serde(with = "host::page::id_string")]
    #[schema(value_type = String)]
    gid: i64,
    branch_id: String,
    sku: String,
    quantity: i64,
    status: String,
}

/// `GET /admin/reservations?after=<gid>/<branch>&limit=`: every reservation, oldest transaction
/// first; what a cross-service audit reads to compare each transaction's parties.
#[utoipa::path(
    get,
    path = "/admin/reservations",
    tag = "inventory",
    summary = "Every reservation, oldest transaction first",
    params(GidBranchListing),
    responses((status = 200, description = "A page of reservations", body = ReservationList)),
    security(("admin" = []))
)]
async fn list_reservations(
    db: web::Data<Db>,
    page: web::Query<host::Page>,
) -> Result<HttpResponse, Problem> {
    let (gid, branch) = page.gid_branch_after()?;
    let rows: Vec<GidReservation> = sqlx::query_as(
        "SELECT gid, branch_id, sku, quantity, status FROM reservations \
         WHERE gid > $1 OR (gid = $1 AND branch_id > $2) ORDER BY gid, branch_id LIMIT $3",
    )
    .bind(gid)
    .bind(branch)
    .bind(page.limit())
    .fetch_all(db.pool())
    .await?;
    let next_after = page.next_after(&rows, |r| format!("{}/{}", r.gid, r.branch_id));
    Ok(HttpResponse::Ok().json(ReservationList {
        reservations: rows,
        next_after,
    }))
}

/// `GET /admin/audit`.
#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "inventory",
    summary = "The stock invariants, read in one transaction",
    responses((status = 200, description = "Totals, and whether they are consistent", body = StockAudit)),
    security(("admin" = []))
)]
async fn audit(db: web::Data<Db>) -> Result<HttpResponse, Problem> {
    let mut tx = db.begin().await?;
    let (skus, available, reserved, sold, negative): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(available), 0) AS BIGINT), \
         CAST(COALESCE(SUM(reserved), 0) AS BIGINT), CAST(COALESCE(SUM(sold), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN available < 0 OR reserved < 0 OR sold < 0 THEN 1 ELSE 0 END), 0) AS BIGINT) \
         FROM skus",
    )
    .fetch_one(&mut *tx)
    .await?;
    let restocked: i64 =
        sqlx::query_scalar("SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM restocks")
            .fetch_one(&mut *tx)
            .await?;
    let held: i64 =
        sqlx::query_scalar("SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM reservations WHERE status IN ('reserved', 'returning')")
            .fetch_one(&mut *tx)
            .await?;
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM skus s WHERE s.available + s.reserved + s.sold <> \
         (SELECT CAST(COALESCE(SUM(r.quantity), 0) AS BIGINT) FROM restocks r WHERE r.sku = s.id)",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.rollback().await?;
    let consistent = available + reserved + sold == restocked
        && reserved == held
        && negative == 0
        && unbalanced == 0;
    Ok(HttpResponse::Ok().json(StockAudit {
        skus,
        available,
        reserved,
        sold,
        restocked,
        held,
        unbalanced_skus: unbalanced,
        negative_skus: negative,
        consistent,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `UPDATE_OPENAPI=1 cargo test --workspace --lib openapi` rewrites both files.
    #[test]
    fn the_checked_in_openapi_document_and_reference_are_what_the_code_generates() {
        host::openapi::assert_checked_in("inventory-svc", document());
    }

    #[test]
    fn every_operator_operation_is_in_the_openapi_document_behind_the_admin_token() {
        let admin = host::openapi::secured_by(document(), host::openapi::ADMIN);
        assert_eq!(
            admin,
            [
                "delete /admin/faults",
                "get /admin/audit",
                "get /admin/faults",
                "get /admin/reservations",
                "get /admin/reservations/{gid}",
                "get /admin/skus",
                "get /admin/skus/{id}",
                "get /debug/pprof/profile",
                "post /admin/faults/release",
                "post /admin/skus/{id}/restocks",
                "put /admin/faults/{op}",
                "put /admin/skus/{id}",
            ]
        );
    }
}
