//! The catalog: what the public API sells and at what price (cached for 30 s, dropped from the
//! cache when an admin changes it).

use crate::api::Api;
use actix_web::{web, HttpResponse};
use host::Problem;
use store::{Db, StoreError};

/// The catalog admin route (mounted in the admin scope).
pub fn admin_routes(scope: actix_web::Scope) -> actix_web::Scope {
    scope.service(
        host::problem::only("/catalog/{sku}", "PUT").route(web::put().to(put_catalog_item)),
    )
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
#[utoipa::path(
    put,
    path = "/admin/catalog/{sku}",
    tag = "admin",
    summary = "Sell a SKU, or change its name and price",
    params(("sku" = String, Path, description = "The SKU (as inventory-svc knows it)",
        pattern = "^[A-Za-z0-9_.@:-]{1,64}$")),
    request_body = admin::CatalogItem,
    responses(
        (status = 200, description = "The catalog entry now", body = admin::CatalogItem),
        (status = 422, description = "A name of only spaces", body = host::problem::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin" = []))
)]
pub(crate) async fn put_catalog_item(
    api: web::Data<Api>,
    db: web::Data<Db>,
    sku: web::Path<String>,
    body: web::Json<admin::CatalogItem>,
) -> Result<HttpResponse, Problem> {
    tcc::check::id("sku", &sku).map_err(|r| Problem::bad_request(r.message))?;
    tcc::check::units("price", body.price).map_err(|r| Problem::bad_request(r.message))?;
    // Length as the document counts it (characters); a name of only spaces is well-formed but
    // names nothing.
    if body.name.is_empty() || body.name.chars().count() > 200 {
        return Err(Problem::bad_request("name must be 1 to 200 characters"));
    }
    if body.name.trim().is_empty() {
        return Err(Problem::unprocessable(
            "blank_name",
            "name must not be only spaces",
        ));
    }
    let mut writer = db.single().await?;
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
    drop(writer);
    api.prices.invalidate(sku.as_str()).await;
    Ok(HttpResponse::Ok().json(admin::CatalogItem {
        name: body.name.trim().to_owned(),
        price: body.price,
    }))
}
