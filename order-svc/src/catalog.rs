//! The catalog: what the public API sells and at what price (cached for 30 s, dropped from the
//! cache when an admin changes it).

use crate::api::Api;
use actix_web::{web, HttpResponse};
use host::Problem;
use serde_json::json;
use store::{Db, StoreError};

/// The catalog admin route (mounted in the admin scope).
pub fn admin_routes(scope: actix_web::Scope) -> actix_web::Scope {
    scope.route("/catalog/{sku}", web::put().to(put_catalog_item))
}

pub(crate) async fn price_of(
    api: &Api,
    db: &Db,
    sku: &str,
) -> Result<Option<(String, i64)>, StoreError> {
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

/// `PUT /admin/catalog/{sku}` `{"name": "...", "price": n}`.
async fn put_catalog_item(
    api: web::Data<Api>,
    db: web::Data<Db>,
    sku: web::Path<String>,
    body: web::Json<admin::CatalogItem>,
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
    .await?;
    writer.commit().await?;
    api.prices.invalidate(sku.as_str()).await;
    Ok(HttpResponse::Ok()
        .json(json!({ "sku": sku.as_str(), "name": body.name.trim(), "price": body.price })))
}
