//! Admin and read API over HTTP (all under `/admin`, behind the admin token): create and top up
//! accounts, pay money out of them, read balances and holds, and the conservation audit.

use actix_web::middleware::from_fn;
use actix_web::{web, HttpResponse};
use admin::{Deposit, NewAccount, PaymentAudit};
use host::Problem;
use serde::Serialize;
use store::Db;

/// Mounts the routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .wrap(from_fn(host::require_admin))
            .route("/accounts", web::get().to(list_accounts))
            .route("/accounts/{id}", web::put().to(create_account))
            .route("/accounts/{id}", web::get().to(get_account))
            .route("/accounts/{id}/deposits", web::post().to(deposit))
            .route("/accounts/{id}/payouts", web::post().to(payout))
            .route("/holds", web::get().to(list_holds))
            .route("/holds/{gid}", web::get().to(holds_of))
            .route("/audit", web::get().to(audit)),
    );
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Account {
    pub id: String,
    pub available: i64,
    pub frozen: i64,
}

fn check_id(id: &str) -> Result<(), Problem> {
    tcc::check::id("account id", id).map_err(|r| Problem::bad_request(r.message))
}

async fn fetch(db: &Db, id: &str) -> Result<Option<Account>, Problem> {
    Ok(
        sqlx::query_as("SELECT id, available, frozen FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(db.pool())
            .await?,
    )
}

async fn record_deposit(
    tx: &mut sqlx::AnyConnection,
    id: &str,
    amount: i64,
) -> Result<(), store::StoreError> {
    sqlx::query(
        "INSERT INTO deposits (id, account_id, amount, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(store::random_id())
    .bind(id)
    .bind(amount)
    .bind(store::now_ms())
    .execute(tx)
    .await?;
    Ok(())
}

/// `PUT /admin/accounts/{id}` `{"available": n}`: creates the account with that opening
/// balance (201), or leaves an existing one as it is (200). Idempotent.
async fn create_account(
    db: web::Data<Db>,
    id: web::Path<String>,
    body: web::Json<NewAccount>,
) -> Result<HttpResponse, Problem> {
    check_id(&id)?;
    if !(0..=tcc::check::MAX_UNITS).contains(&body.available) {
        return Err(Problem::bad_request(format!(
            "available must be between 0 and {}",
            tcc::check::MAX_UNITS
        )));
    }
    let mut tx = db.begin().await?;
    let now = store::now_ms();
    let created = sqlx::query(
        "INSERT INTO accounts (id, available, frozen, created_at, updated_at) VALUES ($1, $2, 0, $3, $3) ON CONFLICT DO NOTHING",
    )
    .bind(id.as_str())
    .bind(body.available)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if created && body.available > 0 {
        record_deposit(&mut tx, &id, body.available).await?;
    }
    tx.commit().await?;
    let account = fetch(&db, &id)
        .await?
        .ok_or_else(|| Problem::internal("account vanished"))?;
    Ok(if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    }
    .json(account))
}

/// `POST /admin/accounts/{id}/deposits` `{"amount": n}`: adds money.
async fn deposit(
    db: web::Data<Db>,
    id: web::Path<String>,
    body: web::Json<Deposit>,
) -> Result<HttpResponse, Problem> {
    check_id(&id)?;
    tcc::check::units("amount", body.amount).map_err(|r| Problem::bad_request(r.message))?;
    let mut tx = db.begin().await?;
    let updated = sqlx::query(
        "UPDATE accounts SET available = available + $1, updated_at = $2 WHERE id = $3 \
         AND available + frozen + incoming + $1 <= $4",
    )
    .bind(body.amount)
    .bind(store::now_ms())
    .bind(id.as_str())
    .bind(tcc::check::MAX_BALANCE)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(match fetch(&db, &id).await? {
            None => Problem::not_found(format!("no account {:?}", id.as_str())),
            Some(_) => Problem::bad_request("the balance would exceed the largest allowed"),
        });
    }
    record_deposit(&mut tx, &id, body.amount).await?;
    tx.commit().await?;
    let account = fetch(&db, &id)
        .await?
        .ok_or_else(|| Problem::internal("account vanished"))?;
    Ok(HttpResponse::Ok().json(account))
}

/// `POST /admin/accounts/{id}/payouts` `{"amount": n}`: money leaves the system (a merchant's
/// payout to its bank), from `available` only, recorded as a negative deposit so that
/// `available + frozen = Σ deposits` still holds. A balance too low is a 409
/// `insufficient_funds`; what a refund then finds is a merchant that cannot pay.
async fn payout(
    db: web::Data<Db>,
    id: web::Path<String>,
    body: web::Json<Deposit>,
) -> Result<HttpResponse, Problem> {
    check_id(&id)?;
    tcc::check::units("amount", body.amount).map_err(|r| Problem::bad_request(r.message))?;
    let mut tx = db.begin().await?;
    let updated = sqlx::query(
        "UPDATE accounts SET available = available - $1, updated_at = $2 WHERE id = $3 AND available >= $1",
    )
    .bind(body.amount)
    .bind(store::now_ms())
    .bind(id.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(match fetch(&db, &id).await? {
            None => Problem::not_found(format!("no account {:?}", id.as_str())),
            Some(a) => Problem::conflict(
                "insufficient_funds",
                format!("{} available, {} asked", a.available, body.amount),
            ),
        });
    }
    record_deposit(&mut tx, &id, -body.amount).await?;
    tx.commit().await?;
    let account = fetch(&db, &id)
        .await?
        .ok_or_else(|| Problem::internal("account vanished"))?;
    Ok(HttpResponse::Ok().json(account))
}

async fn get_account(db: web::Data<Db>, id: web::Path<String>) -> Result<HttpResponse, Problem> {
    check_id(&id)?;
    match fetch(&db, &id).await? {
        Some(a) => Ok(HttpResponse::Ok().json(a)),
        None => Err(Problem::not_found(format!("no account {:?}", id.as_str()))),
    }
}

/// `GET /admin/accounts?limit=100&after=<id>`: accounts in id order.
async fn list_accounts(
    db: web::Data<Db>,
    page: web::Query<host::Page>,
) -> Result<HttpResponse, Problem> {
    let accounts: Vec<Account> = sqlx::query_as(
        "SELECT id, available, frozen FROM accounts WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(&page.after)
    .bind(page.limit())
    .fetch_all(db.pool())
    .await?;
    let next = page.next_after(&accounts, |a| a.id.clone());
    Ok(HttpResponse::Ok().json(serde_json::json!({ "accounts": accounts, "next_after": next })))
}

#[derive(Debug, Serialize, sqlx::FromRow)]
struct Hold {
    branch_id: String,
    account_id: String,
    merchant_id: String,
    amount: i64,
    status: String,
}

/// `GET /admin/holds/{gid}`: what each branch of a global transaction did here.
async fn holds_of(db: web::Data<Db>, gid: web::Path<String>) -> Result<HttpResponse, Problem> {
    let gid: ids::Gid = gid
        .parse()
        .map_err(|e: ids::IdError| Problem::bad_request(e.to_string()))?;
    let holds: Vec<Hold> = sqlx::query_as(
        "SELECT branch_id, account_id, merchant_id, amount, status FROM holds WHERE gid = $1 ORDER BY branch_id",
    )
    .bind(gid.as_i64())
    .fetch_all(db.pool())
    .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "gid": gid, "holds": holds })))
}

/// A hold with the global transaction it belongs to, as the full listing shows it.
#[derive(Debug, Serialize, sqlx::FromRow)]
struct GidHold {
    #[serde(with = "host::page::id_string")]
    gid: i64,
    branch_id: String,
    account_id: String,
    merchant_id: String,
    amount: i64,
    status: String,
}

/// `GET /admin/holds?after=<gid>/<branch>&limit=`: every hold, oldest transaction first; what a
/// cross-service audit reads to compare each transaction's parties.
async fn list_holds(
    db: web::Data<Db>,
    page: web::Query<host::Page>,
) -> Result<HttpResponse, Problem> {
    let (gid, branch) = page.gid_branch_after()?;
    let holds: Vec<GidHold> = sqlx::query_as(
        "SELECT gid, branch_id, account_id, merchant_id, amount, status FROM holds \
         WHERE gid > $1 OR (gid = $1 AND branch_id > $2) ORDER BY gid, branch_id LIMIT $3",
    )
    .bind(gid)
    .bind(branch)
    .bind(page.limit())
    .fetch_all(db.pool())
    .await?;
    let next = page.next_after(&holds, |h| format!("{}/{}", h.gid, h.branch_id));
    Ok(HttpResponse::Ok().json(serde_json::json!({ "holds": holds, "next_after": next })))
}

/// `GET /admin/audit`: totals read in one transaction.
async fn audit(db: web::Data<Db>) -> Result<HttpResponse, Problem> {
    let mut tx = db.begin().await?;
    let (accounts, available, frozen, incoming, negative): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(available), 0) AS BIGINT), \
         CAST(COALESCE(SUM(frozen), 0) AS BIGINT), CAST(COALESCE(SUM(incoming), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN available < 0 OR frozen < 0 OR incoming < 0 THEN 1 ELSE 0 END), 0) AS BIGINT) \
         FROM accounts",
    )
    .fetch_one(&mut *tx)
    .await?;
    let deposited: i64 =
        sqlx::query_scalar("SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM deposits")
            .fetch_one(&mut *tx)
            .await?;
    let (held, reserved): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT), CAST(COALESCE(SUM(amount * reserved), 0) AS BIGINT) \
         FROM holds WHERE status IN ('frozen', 'held')",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.rollback().await?;
    let consistent =
        available + frozen == deposited && frozen == held && incoming == reserved && negative == 0;
    Ok(HttpResponse::Ok().json(PaymentAudit {
        accounts,
        available,
        frozen,
        deposited,
        held,
        incoming,
        reserved,
        negative_accounts: negative,
        consistent,
    }))
}
