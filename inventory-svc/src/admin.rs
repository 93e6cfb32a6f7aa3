//! Admin and read API over HTTP (all under `/admin`, behind the admin token): create and
//! restock SKUs, read stock and reservations, and the conservation audit.

use actix_web::middleware::from_fn;
use actix_web::{web, HttpResponse};
use admin::{NewSku, Restock, StockAudit};
use host::Problem;
use serde::{Deserialize, Serialize};
use store::{Db, StoreError};

/// Mounts the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .wrap(from_fn(host::require_admin))
            .route("/skus", web::get().to(list_skus))
            .route("/skus/{id}", web::put().to(create_sku))
            .route("/skus/{id}", web::get().to(get_sku))
            .route("/skus/{id}/restocks", web::post().to(restock))
            .route("/reservations", web::get().to(list_reservations))
            .route("/reservations/{gid}", web::get().to(reservations_of))
            .route("/audit", web::get().to(audit)),
    );
}

#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
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
            Some(_) => Problem::bad_request("the stock would exceed the largest allowed"),
        });
    }
    record_restock(&mut tx, &id, body.quantity).await?;
    tx.commit().await?;
    let sku = fetch(&db, &id)
        .await?
        .ok_or_else(|| Problem::internal("SKU vanished"))?;
    Ok(HttpResponse::Ok().json(sku))
}

async fn get_sku(db: web::Data<Db>, id: web::Path<String>) -> Result<HttpResponse, Problem> {
    check_id(&id)?;
    match fetch(&db, &id).await? {
        Some(s) => Ok(HttpResponse::Ok().json(s)),
        None => Err(Problem::not_found(format!("no SKU {:?}", id.as_str()))),
    }
}

/// `GET /admin/skus?limit=100&after=<id>`.
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
    let next = page.next_after(&skus, |s| s.id.clone());
    Ok(HttpResponse::Ok().json(serde_json::json!({ "skus": skus, "next_after": next })))
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct Reservation {
    branch_id: String,
    sku: String,
    quantity: i64,
    status: String,
}

/// `GET /admin/reservations/{gid}`.
async fn reservations_of(
    db: web::Data<Db>,
    gid: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let gid: ids::Gid = gid
        .parse()
        .map_err(|e: ids::IdError| Problem::bad_request(e.to_string()))?;
    let rows: Vec<Reservation> = sqlx::query_as(
        "SELECT branch_id, sku, quantity, status FROM reservations WHERE gid = $1 ORDER BY branch_id",
    )
    .bind(gid.as_i64())
    .fetch_all(db.pool())
    .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "gid": gid, "reservations": rows })))
}

/// A reservation with the global transaction it belongs to, as the full listing shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct GidReservation {
    #[serde(with = "host::page::id_string")]
    gid: i64,
    branch_id: String,
    sku: String,
    quantity: i64,
    status: String,
}

/// `GET /admin/reservations?after=<gid>/<branch>&limit=`: every reservation, oldest transaction
/// first; what a cross-service audit reads to compare each transaction's parties.
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
    let next = page.next_after(&rows, |r| format!("{}/{}", r.gid, r.branch_id));
    Ok(HttpResponse::Ok().json(serde_json::json!({ "reservations": rows, "next_after": next })))
}

/// `GET /admin/audit`.
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
