//! The public API's OpenAPI 3.1 document, generated from the handlers' annotations and the
//! types they read and write (`utoipa`), served at `GET /openapi.json` and kept in the
//! repository as `docs/openapi/order-svc.json` (a test fails when the two differ, so a change to
//! the API shows in review). `schemathesis` fuzzes the running API from it in CI.

use actix_web::{web, HttpResponse};
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "tcc-pay order API",
        version = "1",
        description = "Orders and refunds of the tcc-pay platform. Every call needs a buyer's \
            JWT (`Authorization: Bearer …`, HS256, audience `tcc-pay-orders`). Errors are RFC \
            9457 problem documents (`application/problem+json`) whose `code` says what went \
            wrong and whose `type` is a page explaining it. Writes take an `Idempotency-Key`: a \
            retry with the same key and body gets the same answer."
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

/// The document as JSON, made once.
pub fn document() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_value(PublicApi::openapi()).unwrap_or_default())
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(serve));
}

async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("cache-control", "no-cache"))
        .json(document())
}

/// The document as a Markdown reference (`docs/api/order-svc.md`): each operation with its
/// parameters, body and answers, then each schema's fields. Read offline, on GitHub or in an
/// editor; regenerated with the document.
pub fn reference(doc: &serde_json::Value) -> String {
    use serde_json::Value;
    let mut out = String::new();
    let text = |v: &Value| v.as_str().unwrap_or("").replace('\n', " ");
    let cell = |s: String| s.replace('|', "\\|");
    let ref_name = |v: &Value| -> String {
        if let Some(r) = v["$ref"].as_str() {
            let name = r.rsplit('/').next().unwrap_or(r);
            return format!("[{name}](#{})", name.to_lowercase());
        }
        if let Some(items) = v.get("items") {
            return format!("array of {}", type_name(items));
        }
        type_name(v)
    };
    fn type_name(v: &Value) -> String {
        if let Some(r) = v["$ref"].as_str() {
            let name = r.rsplit('/').next().unwrap_or(r);
            return format!("[{name}](#{})", name.to_lowercase());
        }
        if let Some(all) = v["oneOf"].as_array().or_else(|| v["anyOf"].as_array()) {
            return all.iter().map(type_name).collect::<Vec<_>>().join(" or ");
        }
        match &v["type"] {
            Value::String(t) if t == "array" => format!("array of {}", type_name(&v["items"])),
            Value::String(t) => t.clone(),
            Value::Array(ts) => ts
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" or "),
            _ => "any".into(),
        }
    }
    out += &format!(
        "# {} (OpenAPI {})\n\n",
        text(&doc["info"]["title"]),
        text(&doc["openapi"])
    );
    out +=
        "Generated from `docs/openapi/order-svc.json` (served by order-svc at `/openapi.json`); \
            do not edit: `UPDATE_OPENAPI=1 cargo test -p order-svc openapi` rewrites both.\n\n";
    out += &format!("{}\n\n", text(&doc["info"]["description"]));
    if let Some(paths) = doc["paths"].as_object() {
        for (path, ops) in paths {
            for (method, op) in ops.as_object().into_iter().flatten() {
                out += &format!(
                    "## {} `{path}`: {}\n\n",
                    method.to_uppercase(),
                    text(&op["summary"])
                );
                if op.get("description").is_some() {
                    out += &format!("{}\n\n", text(&op["description"]));
                }
                if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                    out += "Needs a buyer's bearer token.\n\n";
                }
                if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
                    out += "| parameter | in | required | type | description |\n|---|---|---|---|---|\n";
                    for p in params {
                        out += &format!(
                            "| `{}` | {} | {} | {} | {} |\n",
                            text(&p["name"]),
                            text(&p["in"]),
                            if p["required"].as_bool() == Some(true) {
                                "yes"
                            } else {
                                "no"
                            },
                            cell(type_name(&p["schema"])),
                            cell(text(&p["description"]))
                        );
                    }
                    out += "\n";
                }
                if let Some(body) = op["requestBody"]["content"].as_object() {
                    for (ct, media) in body {
                        out += &format!("Body (`{ct}`): {}\n\n", ref_name(&media["schema"]));
                    }
                }
                out += "| status | meaning | body |\n|---|---|---|\n";
                for (status, r) in op["responses"].as_object().into_iter().flatten() {
                    let body = r["content"]
                        .as_object()
                        .map(|c| {
                            c.iter()
                                .map(|(ct, m)| format!("{} (`{ct}`)", ref_name(&m["schema"])))
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    out += &format!(
                        "| {status} | {} | {} |\n",
                        cell(text(&r["description"])),
                        cell(body)
                    );
                }
                out += "\n";
            }
        }
    }
    out += "## Schemas\n\n";
    for (name, schema) in doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        out += &format!("### {name}\n\n");
        if schema.get("description").is_some() {
            out += &format!("{}\n\n", text(&schema["description"]));
        }
        if let Some(props) = schema["properties"].as_object() {
            let required: Vec<&str> = schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            out += "| field | type | required | description |\n|---|---|---|---|\n";
            for (field, p) in props {
                let mut description = text(&p["description"]);
                if let Some(pattern) = p["pattern"].as_str() {
                    description += &format!(" Pattern `{pattern}`.");
                }
                out += &format!(
                    "| `{field}` | {} | {} | {} |\n",
                    cell(type_name(p)),
                    if required.contains(&field.as_str()) {
                        "yes"
                    } else {
                        "no"
                    },
                    cell(description.trim().to_owned())
                );
            }
            out += "\n";
        } else {
            out += &format!("{}\n\n", type_name(schema));
        }
        if let Some(example) = schema.get("example") {
            out += &format!(
                "Example:\n\n```json\n{}\n```\n\n",
                serde_json::to_string_pretty(example).unwrap_or_default()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn in_repo(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(rel)
    }

    /// `UPDATE_OPENAPI=1 cargo test -p order-svc openapi` rewrites both files.
    #[test]
    fn the_checked_in_openapi_document_and_reference_are_what_the_code_generates() {
        let json = serde_json::to_string_pretty(document()).unwrap() + "\n";
        let md = reference(document());
        let (json_path, md_path) = (
            in_repo("docs/openapi/order-svc.json"),
            in_repo("docs/api/order-svc.md"),
        );
        if std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
            for (path, text) in [(&json_path, &json), (&md_path, &md)] {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, text).unwrap();
            }
        }
        for (path, text) in [(&json_path, &json), (&md_path, &md)] {
            let stored = std::fs::read_to_string(path).unwrap_or_default();
            assert!(
                stored == *text,
                "{} differs from what the code generates: the API changed. Review the change, \
                 then run UPDATE_OPENAPI=1 cargo test -p order-svc openapi",
                path.display()
            );
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_public_operation_and_its_security() {
        let doc = document();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1"),
            "{}",
            doc["openapi"]
        );
        let mut ops: Vec<String> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(p, o)| {
                o.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| format!("{m} {p}"))
            })
            .collect();
        ops.sort();
        assert_eq!(
            ops,
            [
                "get /api/v1/orders",
                "get /api/v1/orders/{id}",
                "post /api/v1/orders",
                "post /api/v1/orders/{id}/refund"
            ]
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for (path, o) in doc["paths"].as_object().unwrap() {
            for (method, op) in o.as_object().unwrap() {
                assert!(
                    !op["security"].as_array().unwrap().is_empty(),
                    "{method} {path}"
                );
                let problem = &op["responses"]["401"]["content"]["application/problem+json"];
                assert!(
                    problem.is_object(),
                    "{method} {path} documents its 401 problem"
                );
            }
        }
    }
}
