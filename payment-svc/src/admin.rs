//! Admin and read API over HTTP (all under `/admin`, behind the admin token): create and top up
//! accounts, pay money out of them, read balances and holds, and the conservation audit. Each
//! route is annotated for the service's OpenAPI document ([`document`]).

use actix_web::middleware::from_fn;
use actix_web::{web, HttpResponse};
use admin::{Deposit, NewAccount, PaymentAudit};
use host::openapi::{GidBranchListing, GidPath, IdPath, Listing};
use host::problem::{only, ProblemBody};
use host::Problem;
use serde::Serialize;
use std::sync::OnceLock;
use store::Db;
use utoipa::OpenApi;

/// Mounts the routes (each a 405 for a method it does not take) and the OpenAPI document.
pub fn routes(cfg: &mut web::ServiceConfig) {
    host::openapi::routes(cfg, document());
    cfg.service(
        web::scope("/admin")
            .wrap(from_fn(host::require_admin))
            .service(only("/accounts", "GET").route(web::get().to(list_accounts)))
            .service(
                only("/accounts/{id}", "GET, PUT")
                    .route(web::put().to(create_account))
                    .route(web::get().to(get_account)),
            )
            .service(only("/accounts/{id}/deposits", "POST").route(web::post().to(deposit)))
            .service(only("/accounts/{id}/payouts", "POST").route(web::post().to(payout)))
            .service(only("/holds", "GET").route(web::get().to(list_holds)))
            .service(only("/holds/{gid}", "GET").route(web::get().to(holds_of)))
            .service(only("/audit", "GET").route(web::get().to(audit))),
    );
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tcc-pay payment-svc operator API",
        version = "1",
        description = "Accounts and money of the tcc-pay platform, for operators, tests and \
            labs: every call needs payment-svc's admin token. Amounts are whole cents. Errors are \
            RFC 9457 problem documents (`application/problem+json`) whose `code` says what went \
            wrong. Branch calls (Try, Confirm, Cancel) are gRPC, from the coordinator only."
    ),
    paths(
        list_accounts,
        create_account,
        get_account,
        deposit,
        payout,
        list_holds,
        holds_of,
        audit
    ),
    components(schemas(Account, AccountList, Hold, HoldsOf, GidHold, HoldList, NewAccount, Deposit, PaymentAudit)),
    tags((name = "payment", description = "Accounts, holds and the money audit"))
)]
struct PaymentApi;

/// payment-svc's OpenAPI document, made once.
pub fn document() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut api = PaymentApi::openapi();
        api.merge(tcc::service::FaultsApi::openapi());
        let mut doc = host::openapi::finish(api);
        let first = "$response.body#/accounts/0/id";
        for to in ["get_account", "deposit", "payout"] {
            host::openapi::link(&mut doc, "GET /admin/accounts", to, "id", first);
        }
        let first = "$response.body#/holds/0/gid";
        host::openapi::link(&mut doc, "GET /admin/holds", "holds_of", "gid", first);
        doc
    })
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(example = json!({"id": "alice", "available": 95000, "frozen": 5000}))]
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
#[utoipa::path(
    put,
    path = "/admin/accounts/{id}",
    tag = "payment",
    summary = "Create an account with an opening balance (idempotent)",
    params(IdPath),
    request_body = NewAccount,
    responses(
        (status = 201, description = "Created", body = Account),
        (status = 200, description = "It existed: left as it was", body = Account),
    ),
    security(("admin" = []))
)]
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
#[utoipa::path(
    post,
    path = "/admin/accounts/{id}/deposits",
    tag = "payment",
    summary = "Add money to an account",
    params(IdPath),
    request_body = Deposit,
    responses(
        (status = 200, description = "The account after the deposit", body = Account),
        (status = 404, description = "No such account", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The balance would exceed the largest allowed", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin" = []))
)]
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
            Some(_) => Problem::unprocessable(
                "balance_too_large",
                "the balance would exceed the largest allowed",
            ),
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
#[utoipa::path(
    post,
    path = "/admin/accounts/{id}/payouts",
    tag = "payment",
    summary = "Pay money out of an account (a merchant's payout)",
    params(IdPath),
    request_body = Deposit,
    responses(
        (status = 200, description = "The account after the payout", body = Account),
        (status = 404, description = "No such account", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "`insufficient_funds`: less available than asked", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin" = []))
)]
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

/// `GET /admin/accounts/{id}`.
#[utoipa::path(
    get,
    path = "/admin/accounts/{id}",
    tag = "payment",
    summary = "Read an account",
    params(IdPath),
    responses(
        (status = 200, description = "The account", body = Account),
        (status = 404, description = "No such account", body = ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin" = []))
)]
async fn get_account(db: web::Data<Db>, id: web::Path<String>) -> Result<HttpResponse, Problem> {
    check_id(&id)?;
    match fetch(&db, &id).await? {
        Some(a) => Ok(HttpResponse::Ok().json(a)),
        None => Err(Problem::not_found(format!("no account {:?}", id.as_str()))),
    }
}

/// `GET /admin/accounts?limit=100&after=<id>`: accounts in id order.
#[utoipa::path(
    get,
    path = "/admin/accounts",
    tag = "payment",
    summary = "Every account, in id order",
    params(Listing),
    responses((status = 200, description = "A page of accounts", body = AccountList)),
    security(("admin" = []))
)]
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
    let next_after = page.next_after(&accounts, |a| a.id.clone());
    Ok(HttpResponse::Ok().json(AccountList {
        accounts,
        next_after,
    }))
}

/// A page of accounts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AccountList {
    accounts: Vec<Account>,
    /// The `after` of the next page; none on the last.
    next_after: Option<String>,
}

/// What one branch froze or paid here.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
struct Hold {
    branch_id: String,
    account_id: String,
    merchant_id: String,
    amount: i64,
    status: String,
}

/// `GET /admin/holds/{gid}`: what each branch of a global transaction did here.
#[utoipa::path(
    get,
    path = "/admin/holds/{gid}",
    tag = "payment",
    summary = "What each branch of a global transaction did here",
    params(GidPath),
    responses((status = 200, description = "Its holds (none: no branch reached this service)", body = HoldsOf)),
    security(("admin" = []))
)]
async fn holds_of(db: web::Data<Db>, gid: web::Path<String>) -> Result<HttpResponse, Problem> {
    // Beyond every gid: a transaction with none.
    let Some(id) = host::page::positive_id("gid", &gid)? else {
        return Ok(HttpResponse::Ok().json(HoldsOf {
            gid: gid.into_inner(),
            holds: Vec::new(),
        }));
    };
    let holds: Vec<Hold> = sqlx::query_as(
        "SELECT branch_id, account_id, merchant_id, amount, status FROM holds WHERE gid = $1 ORDER BY branch_id",
    )
    .bind(id)
    .fetch_all(db.pool())
    .await?;
    Ok(HttpResponse::Ok().json(HoldsOf {
        gid: gid.into_inner(),
        holds,
    }))
}

/// The holds of one global transaction.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct HoldsOf {
    #[schema(example = "7284019283746521")]
    gid: String,
    holds: Vec<Hold>,
}

/// A page of holds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct HoldList {
    holds: Vec<GidHold>,
    /// The `after` of the next page; none on the last.
    next_after: Option<String>,
}

/// A hold with the global transaction it belongs to, as the full listing shows it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
struct GidHold {
    #[serde(with = "host::page::id_string")]
    #[schema(value_type = String)]
    gid: i64,
    branch_id: String,
    account_id: String,
    merchant_id: String,
    amount: i64,
    status: String,
}

/// `GET /admin/holds?after=<gid>/<branch>&limit=`: every hold, oldest transaction first; what a
/// cross-service audit reads to compare each transaction's parties.
#[utoipa::path(
    get,
    path = "/admin/holds",
    tag = "payment",
    summary = "Every hold, oldest transaction first",
    params(GidBranchListing),
    responses((status = 200, description = "A page of holds", body = HoldList)),
    security(("admin" = []))
)]
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
    let next_after = page.next_after(&holds, |h| format!("{}/{}", h.gid, h.branch_id));
    Ok(HttpResponse::Ok().json(HoldList { holds, next_after }))
}

/// `GET /admin/audit`: totals read in one transaction.
#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "payment",
    summary = "The money invariants, read in one transaction",
    responses((status = 200, description = "Totals, and whether they are consistent", body = PaymentAudit)),
    security(("admin" = []))
)]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `UPDATE_OPENAPI=1 cargo test --workspace --lib openapi` rewrites both files.
    #[test]
    fn the_checked_in_openapi_document_and_reference_are_what_the_code_generates() {
        host::openapi::assert_checked_in("payment-svc", document());
    }

    #[test]
    fn every_operator_operation_is_in_the_openapi_document_behind_the_admin_token() {
        let admin = host::openapi::secured_by(document(), host::openapi::ADMIN);
        assert_eq!(
            admin,
            [
                "delete /admin/faults",
                "get /admin/accounts",
                "get /admin/accounts/{id}",
                "get /admin/audit",
                "get /admin/faults",
                "get /admin/holds",
                "get /admin/holds/{gid}",
                "get /debug/pprof/profile",
                "post /admin/accounts/{id}/deposits",
                "post /admin/accounts/{id}/payouts",
                "post /admin/faults/release",
                "put /admin/accounts/{id}",
                "put /admin/faults/{op}",
            ]
        );
    }
}
