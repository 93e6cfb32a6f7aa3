//! The public API's OpenAPI 3.1 document, generated from the handlers' annotations and the
//! types they read and write (`utoipa`), served at `GET /openapi.json` and kept in the
//! repository as `docs/openapi/order-svc.json` (a test fails when the two differ, so a change to
//! the API shows in review). `schemathesis` fuzzes the running API from it in CI.

use actix_web::web;
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "tcc-pay order API",
        version = "1",
        description = "Orders and refunds of the tcc-pay platform. A buyer's calls \
            (`/api/v1/…`) need a buyer's JWT (`Authorization: Bearer …`, HS256, audience \
            `tcc-pay-orders`); the operator's (`/admin/…`: every order, the catalog, the audit, \
            faults and failpoints for labs) need order-svc's admin token. Errors are RFC 9457 \
            problem documents (`application/problem+json`) whose `code` says what went wrong and \
            whose `type` is a page explaining it. Writes take an `Idempotency-Key`: a retry with \
            the same key and body gets the same answer."
    ),
    paths(
        crate::api::place_order,
        crate::api::list_orders,
        crate::api::get_order,
        crate::refund::refund_order
    ),
    components(schemas(host::problem::ProblemBody)),
    modifiers(&BearerJwt),
    tags((name = "orders", description = "A buyer's orders and refunds"))
)]
pub struct PublicApi;

/// The buyer's token.
#[derive(Debug)]
struct BearerJwt;

impl Modify for BearerJwt {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        // A refund's body is optional (none: the whole order); utoipa only says so for an
        // `Option<T>`, which it also lets be `null`, which the route refuses.
        if let Some(body) = openapi
            .paths
            .paths
            .get_mut("/api/v1/orders/{id}/refund")
            .and_then(|p| p.post.as_mut())
            .and_then(|op| op.request_body.as_mut())
        {
            body.required = Some(utoipa::openapi::Required::False);
        }
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A buyer's token (`platform token --sub alice` in the dev platform)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as JSON, made once: the public API, the operator API under `/admin` (orders,
/// refunds, catalog, audit, the participant's faults and the crash failpoints), and the routes
/// every service serves.
pub fn document() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut api = PublicApi::openapi();
        api.merge(crate::admin::AdminApi::openapi());
        api.merge(tcc::service::FaultsApi::openapi());
        let api = api.nest("/admin", host::Failpoints::<crate::api::Crash>::openapi());
        let mut doc = host::openapi::finish(api);
        let (list, first) = ("GET /admin/orders", "$response.body#/orders/0");
        host::openapi::link(
            &mut doc,
            list,
            "admin_get_order",
            "id",
            &format!("{first}/id"),
        );
        host::openapi::link(
            &mut doc,
            list,
            "orders_of_gid",
            "gid",
            &format!("{first}/gid"),
        );
        doc
    })
}

/// Serves [`document`] at `GET /openapi.json`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    host::openapi::routes(cfg, document());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `UPDATE_OPENAPI=1 cargo test --workspace --lib openapi` rewrites both files.
    #[test]
    fn the_checked_in_openapi_document_and_reference_are_what_the_code_generates() {
        host::openapi::assert_checked_in("order-svc", document());
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_operation_and_its_security() {
        let doc = document();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let ops = host::openapi::operations(doc);
        let on = |scheme: &str| host::openapi::secured_by(doc, scheme);
        assert_eq!(
            on("bearer"),
            [
                "get /api/v1/orders",
                "get /api/v1/orders/{id}",
                "post /api/v1/orders",
                "post /api/v1/orders/{id}/refund"
            ]
        );
        assert_eq!(
            on(host::openapi::ADMIN),
            [
                "delete /admin/failpoints/{point}",
                "delete /admin/faults",
                "get /admin/audit",
                "get /admin/failpoints",
                "get /admin/faults",
                "get /admin/orders",
                "get /admin/orders/{id}",
                "get /admin/refunds",
                "get /admin/transactions/{gid}/orders",
                "get /debug/pprof/profile",
                "post /admin/faults/release",
                "put /admin/catalog/{sku}",
                "put /admin/failpoints/{point}",
                "put /admin/faults/{op}",
            ]
        );
        // Everything else needs no token: health, metrics, problem pages, this document.
        let open: Vec<&str> = ops
            .iter()
            .filter(|(_, s)| s.is_empty())
            .map(|(op, _)| op.as_str())
            .collect();
        assert_eq!(
            open,
            [
                "get /healthz",
                "get /metrics",
                "get /openapi.json",
                "get /problems/{code}",
                "get /readyz"
            ]
        );
        // And nothing else: no operation behind two schemes, or another one, escapes the lists.
        assert_eq!(
            on("bearer").len() + on(host::openapi::ADMIN).len() + open.len(),
            ops.len()
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for (path, o) in doc["paths"].as_object().unwrap() {
            for (method, op) in o.as_object().unwrap() {
                if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                    let problem = &op["responses"]["401"]["content"][host::openapi::PROBLEM_JSON];
                    assert!(
                        problem.is_object(),
                        "{method} {path} documents its 401 problem"
                    );
                }
            }
        }
    }
}
