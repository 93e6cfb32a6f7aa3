//! What every service's OpenAPI 3.1 document shares, so that each service only annotates its own
//! handlers: the routes every service serves (`/healthz`, `/readyz`, `/metrics`,
//! `/problems/{code}`, `/openapi.json`, `/debug/pprof/profile`), the admin token's security scheme and the problems any
//! admin call can answer, the crash failpoints, the offline Markdown reference, and the check
//! that the copy kept in the repository (`docs/openapi/<service>.json`) is what the code makes.
//!
//! Why the common problems are added here rather than annotated on each handler: every admin
//! route sits behind the same token check and the same body, path and query extractors, so it
//! can answer the same 400/401/413/415/500/503 whatever it does. Written on each of thirty
//! handlers they would drift; added by [`finish`] they are documented exactly where they can
//! happen (413/415 only where there is a body, 400 only where there is input).

use crate::problem::ProblemBody;
use actix_web::{web, HttpResponse};
use serde_json::Value;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder};
use utoipa::OpenApi as _;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The security scheme's name of the admin token.
pub const ADMIN: &str = "admin";

/// The routes every service serves, whatever it is.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    paths(
        crate::serve::healthz,
        crate::serve::readyz,
        crate::serve::metrics,
        crate::problem::describe,
        document
    ),
    components(schemas(ProblemBody, Status)),
    tags((name = "operations", description = "Health, metrics, error pages and this document; no token"))
)]
struct Operations;

/// The CPU profile every service serves, behind the admin token.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    paths(crate::profile::profile),
    tags((name = "profiling", description = "Where the process spends its CPU: a pprof profile or a flame graph (admin token)"))
)]
struct Profiling;

/// `/healthz` and `/readyz`'s answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"status": "ready"}))]
pub struct Status {
    /// `ok` (the process answers) or `ready` (its database answers too).
    pub status: String,
}

/// A listing's query whose cursor is any id (`next_after` of the previous page).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct Listing {
    /// Page size (clamped to 1..=1000; default 100).
    limit: Option<i64>,
    /// `next_after` of the previous page.
    after: Option<String>,
}

/// A listing's query whose cursor is a numeric id, newest first.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct NumberListing {
    /// Page size (clamped to 1..=1000; default 100).
    limit: Option<i64>,
    /// `next_after` of the previous page: the listing goes on below it.
    #[param(pattern = "^([1-9][0-9]{0,18})?$")]
    after: Option<String>,
}

/// A listing's query whose cursor is `<gid>/<branch id>`, oldest transaction first.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct GidBranchListing {
    /// Page size (clamped to 1..=1000; default 100).
    limit: Option<i64>,
    /// `next_after` of the previous page: `<gid>/<branch id>`.
    #[param(pattern = "^([0-9]{1,19}/[\\s\\S]*)?$")]
    after: Option<String>,
}

/// An account's or a SKU's id in a path.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct IdPath {
    /// 1 to 64 letters, digits and `_-.@:`.
    #[param(pattern = "^[A-Za-z0-9_.@:-]{1,64}$", example = "alice")]
    id: String,
}

/// A global transaction's id in a path.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct GidPath {
    /// The global transaction's id (decimal).
    #[param(pattern = "^[1-9][0-9]{0,18}$", example = "7284019283746521")]
    gid: String,
}

/// A service's finished document, as `/openapi.json` serves it.
#[derive(Debug, Clone, Copy)]
pub struct Document(pub &'static Value);

/// Serves `doc` at `GET /openapi.json` (any other method: 405).
pub fn routes(cfg: &mut web::ServiceConfig, doc: &'static Value) {
    cfg.app_data(web::Data::new(Document(doc)))
        .service(crate::problem::only("/openapi.json", "GET").route(web::get().to(document)));
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The service's OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
async fn document(doc: web::Data<Document>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("cache-control", "no-cache"))
        .json(doc.0)
}

/// The finished document: `api` (the service's own operations) with the routes every service
/// serves, the admin token's scheme, and, on each operation behind that token, the problems
/// it can answer that its annotation leaves out.
pub fn finish(mut api: OpenApi) -> Value {
    api.merge(Operations::openapi());
    api.merge(Profiling::openapi());
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        ADMIN,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The service's admin token (`Authorization: Bearer …`): in the dev \
                     platform `data/admin-token`, in compose `compose/secrets/<service>-admin-token`",
                ))
                .build(),
        ),
    );
    for op in operations_mut(&mut api).filter(|op| behind_admin(op)) {
        add_admin_problems(op);
    }
    serde_json::to_value(api).unwrap_or_default()
}

/// Every operation of `api`, to change in place.
fn operations_mut(api: &mut OpenApi) -> impl Iterator<Item = &mut Operation> {
    api.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
    })
}

fn behind_admin(op: &Operation) -> bool {
    op.security.iter().flatten().any(|s| {
        serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_object().map(|o| o.contains_key(ADMIN)))
            .unwrap_or(false)
    })
}

fn add_admin_problems(op: &mut Operation) {
    let has_input =
        op.request_body.is_some() || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let has_body = op.request_body.is_some();
    let common = [
        (
            400,
            "Malformed input (a path, query or body that does not parse)",
            has_input,
        ),
        (401, "No admin token, or a wrong one", true),
        (413, "The body is too large", has_body),
        (415, "The body is not JSON", has_body),
        (
            500,
            "A bug (the log says what, the answer never does)",
            true,
        ),
        (503, "The database does not answer; retry", true),
    ];
    for (status, description, applies) in common {
        let key = status.to_string();
        if applies && !op.responses.responses.contains_key(&key) {
            op.responses
                .responses
                .insert(key, problem_response(description).into());
        }
    }
}

/// A response whose body is a problem.
pub fn problem_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// Links `from`'s 200 answer (`"GET /admin/accounts"`) to the operation whose id is `to`, its
/// parameter `param` taken from the answer (`$response.body#/accounts/0/id`): how a client, and
/// the fuzzer's stateful phase, reach real resources (list, then read or act on one) instead of
/// guessing ids that are all 404s. On the finished document (utoipa 5 writes a link's fields in
/// snake case, which no OpenAPI tool reads). Panics on a link that cannot work: no such answer,
/// no operation `to` with a parameter `param`, a pointer the answer's schema does not have, or
/// the same link twice. A typo here is a bug of the document, caught by each service's test.
pub fn link(doc: &mut Value, from: &str, to: &str, param: &str, expression: &str) {
    let (method, path) = from.split_once(' ').expect("\"<METHOD> <path>\"");
    let target_has_param = doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(_, item)| item.as_object().into_iter().flatten())
        .filter(|(_, op)| op["operationId"] == to)
        .flat_map(|(_, op)| op["parameters"].as_array().into_iter().flatten())
        .any(|p| p["name"] == param);
    assert!(
        target_has_param,
        "{from}: no operation {to} with a parameter {param}"
    );
    let pointer = expression
        .strip_prefix("$response.body#")
        .unwrap_or_else(|| panic!("{from}: {expression} is not a $response.body# pointer"));
    let schema = &doc["paths"][path][method.to_lowercase()]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    assert!(
        has_pointer(doc, schema, pointer),
        "{from}: its answer's schema has no {pointer}"
    );
    let answer = doc["paths"][path][method.to_lowercase()]["responses"]["200"]
        .as_object_mut()
        .unwrap_or_else(|| panic!("{from} has no 200 answer"));
    let links = answer
        .entry("links")
        .or_insert_with(|| Value::Object(Default::default()));
    assert!(links.get(to).is_none(), "{from}: a second link to {to}");
    links[to] = serde_json::json!({
        "operationId": to,
        "parameters": { param: expression },
    });
}

/// Whether a JSON pointer into a value of `schema` (`/accounts/0/id`) names something the schema
/// describes: each name a property, each number an item, through `$ref`s to the components.
fn has_pointer(doc: &Value, schema: &Value, pointer: &str) -> bool {
    let mut at = schema;
    for segment in pointer.split('/').skip(1) {
        while let Some(name) = at["$ref"].as_str() {
            at = &doc["components"]["schemas"][name.rsplit('/').next().unwrap_or(name)];
        }
        at = if segment.bytes().all(|b| b.is_ascii_digit()) {
            &at["items"]
        } else {
            &at["properties"][segment]
        };
        if at.is_null() {
            return false;
        }
    }
    true
}

/// Sets the values a path parameter may take (`enum`), on every operation of `doc` that has it:
/// names known only at run time (a service's failpoints), so that a client and a fuzzer see them.
pub fn enumerate_path_parameter(doc: &mut OpenApi, name: &str, values: &[&str]) {
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    use utoipa::openapi::RefOr;
    let schema: RefOr<Schema> = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .into();
    for op in operations_mut(doc) {
        for p in op.parameters.iter_mut().flatten() {
            if p.name == name {
                p.schema = Some(schema.clone());
            }
        }
    }
}

/// The document as a Markdown reference (`docs/api/<service>.md`): each operation with its
/// parameters, body and answers, then each schema's fields. Read offline, on GitHub or in an
/// editor; regenerated with the document.
pub fn reference(service: &str, doc: &Value) -> String {
    let mut out = String::new();
    let text = |v: &Value| v.as_str().unwrap_or("").replace('\n', " ");
    let cell = |s: String| s.replace('|', "\\|");
    let ref_name = |v: &Value| -> String {
        if let Some(items) = v.get("items").filter(|_| v["$ref"].is_null()) {
            return format!("array of {}", type_name(items));
        }
        type_name(v)
    };
    out += &format!(
        "# {} (OpenAPI {})\n\n",
        text(&doc["info"]["title"]),
        text(&doc["openapi"])
    );
    out += &format!(
        "Generated from `docs/openapi/{service}.json` (served by {service} at `/openapi.json`); \
         do not edit: `UPDATE_OPENAPI=1 cargo test --workspace --lib openapi` rewrites both.\n\n"
    );
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
                for scheme in op["security"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_object)
                    .flat_map(|o| o.keys())
                {
                    out += match scheme.as_str() {
                        ADMIN => "Needs the service's admin token.\n\n",
                        _ => "Needs a buyer's bearer token.\n\n",
                    };
                }
                if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
                    out += "| parameter | in | required | type | description |\n|---|---|---|---|---|\n";
                    for p in params {
                        let mut description = text(&p["description"]);
                        if let Some(values) = p["schema"]["enum"].as_array() {
                            let values: Vec<String> = values
                                .iter()
                                .filter_map(Value::as_str)
                                .map(|v| format!("`{v}`"))
                                .collect();
                            description =
                                sentence(description) + &format!(" One of {}.", values.join(", "));
                        }
                        if let Some(pattern) = p["schema"]["pattern"].as_str() {
                            description = sentence(description) + &format!(" Pattern `{pattern}`.");
                        }
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
                            cell(description.trim().to_owned())
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
                for (to, link) in op["responses"]["200"]["links"]
                    .as_object()
                    .into_iter()
                    .flatten()
                {
                    for (param, from) in link["parameters"].as_object().into_iter().flatten() {
                        out += &format!("Then: `{to}` with `{param}` = `{}`.\n", text(from));
                    }
                }
                if op["responses"]["200"]["links"].is_object() {
                    out += "\n";
                }
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
                    description = sentence(description) + &format!(" Pattern `{pattern}`.");
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

/// A description ending as a sentence does (a period), so that what the reference adds after it
/// reads as the next one; empty stays empty.
fn sentence(text: String) -> String {
    let text = text.trim_end().to_owned();
    if text.is_empty() || text.ends_with(['.', ':', '!', '?']) {
        text
    } else {
        text + "."
    }
}

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

/// Fails when `docs/openapi/<service>.json` or `docs/api/<service>.md` differs from what the
/// code generates: a change to the API then shows in review. With `UPDATE_OPENAPI=1` it first
/// rewrites both. For each service's unit test.
pub fn assert_checked_in(service: &str, doc: &Value) {
    let ids: Vec<&str> = doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(_, item)| item.as_object().into_iter().flatten())
        .filter_map(|(_, op)| op["operationId"].as_str())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        ids.len(),
        "{service}: an operationId is used twice (give one an operation_id): {ids:?}"
    );
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            for (name, link) in op["responses"]["200"]["links"]
                .as_object()
                .into_iter()
                .flatten()
            {
                let to = link["operationId"].as_str().unwrap_or_default();
                assert!(
                    ids.contains(&to),
                    "{service}: {method} {path}'s link {name} goes to no operation {to:?}"
                );
            }
        }
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let json = serde_json::to_string_pretty(doc).unwrap_or_default() + "\n";
    let md = reference(service, doc);
    let files = [
        (repo.join(format!("docs/openapi/{service}.json")), json),
        (repo.join(format!("docs/api/{service}.md")), md),
    ];
    if std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        for (path, text) in &files {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            }
            std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
    for (path, text) in &files {
        let stored = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            stored == *text,
            "{} differs from what the code generates: the API changed. Review the change, then \
             run UPDATE_OPENAPI=1 cargo test --workspace --lib openapi",
            path.display()
        );
    }
}

/// The operations of `doc` behind `scheme` alone, as `"<method> <path>"`, sorted: what each
/// service's test compares with the routes it mounts.
pub fn secured_by(doc: &Value, scheme: &str) -> Vec<String> {
    operations(doc)
        .into_iter()
        .filter(|(_, schemes)| schemes.len() == 1 && schemes[0] == scheme)
        .map(|(op, _)| op)
        .collect()
}

/// The operations of `doc` as `"<method> <path>"`, sorted, and each one's security schemes: what
/// each service's test compares with the routes it mounts.
pub fn operations(doc: &Value) -> Vec<(String, Vec<String>)> {
    let mut ops: Vec<(String, Vec<String>)> = doc["paths"]
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flatten()
                .map(move |(method, op)| {
                    let schemes = op["security"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_object)
                        .flat_map(|o| o.keys().cloned())
                        .collect();
                    (format!("{method} {path}"), schemes)
                })
        })
        .collect();
    ops.sort();
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[utoipa::path(
        put,
        path = "/admin/things/{id}",
        params(("id" = String, Path)),
        request_body = Status,
        responses((status = 200, body = Status)),
        security(("admin" = []))
    )]
    #[allow(dead_code)]
    fn put_thing() {}

    #[utoipa::path(get, path = "/admin/things", responses((status = 200, body = Status)), security(("admin" = [])))]
    #[allow(dead_code)]
    fn list_things() {}

    #[derive(utoipa::OpenApi)]
    #[openapi(paths(put_thing, list_things))]
    struct Things;

    #[test]
    fn a_link_is_written_only_where_it_can_work() {
        let mut doc = finish(Things::openapi());
        link(
            &mut doc,
            "GET /admin/things",
            "put_thing",
            "id",
            "$response.body#/status",
        );
        assert_eq!(
            doc["paths"]["/admin/things"]["get"]["responses"]["200"]["links"]["put_thing"],
            serde_json::json!({"operationId": "put_thing", "parameters": {"id": "$response.body#/status"}})
        );
        let attempt = |to: &'static str, param: &'static str, pointer: &'static str| {
            let mut doc = doc.clone();
            std::panic::catch_unwind(move || {
                link(&mut doc, "GET /admin/things", to, param, pointer)
            })
            .is_err()
        };
        assert!(
            attempt("put_thing", "id", "$response.body#/status"),
            "twice"
        );
        assert!(
            attempt("get_thing", "id", "$response.body#/status"),
            "no such operation"
        );
        assert!(
            attempt("put_thing", "sku", "$response.body#/status"),
            "no such parameter"
        );
        assert!(
            attempt("put_thing", "id", "$response.body#/things/0/id"),
            "no such field"
        );
    }

    #[test]
    fn an_admin_operation_documents_the_problems_its_input_and_token_can_bring() {
        let doc = finish(Things::openapi());
        let codes = |path: &str, method: &str| -> Vec<String> {
            doc["paths"][path][method]["responses"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(
            codes("/admin/things/{id}", "put"),
            ["200", "400", "401", "413", "415", "500", "503"]
        );
        // No input: no 400; no body: no 413 or 415.
        assert_eq!(codes("/admin/things", "get"), ["200", "401", "500", "503"]);
        // The routes every service serves come with it, without a token.
        let ops = operations(&doc);
        assert!(ops.contains(&("get /readyz".into(), vec![])), "{ops:?}");
        assert!(
            ops.contains(&("get /openapi.json".into(), vec![])),
            "{ops:?}"
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["admin"]["scheme"],
            "bearer"
        );
        assert_eq!(
            doc["paths"]["/admin/things/{id}"]["put"]["responses"]["401"]["content"][PROBLEM_JSON]
                ["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
    }
}
