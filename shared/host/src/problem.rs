//! Errors as RFC 9457 `application/problem+json`, and actix extractor configs whose failures are
//! problems too (so a malformed body is a 400 with a reason, never a bare text or a 500).

use actix_web::http::StatusCode;
use actix_web::{error, web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use std::fmt;

/// An RFC 9457 problem document (boxed: errors travel in `Result`s and should be small).
#[derive(Debug, Clone)]
pub struct Problem(Box<ProblemBody>);

/// The fields of a [`Problem`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(
    as = Problem,
    example = json!({"type": "/problems/insufficient_funds", "title": "Unprocessable Entity",
        "status": 422, "detail": "account \"carol\" has less than 450 available",
        "code": "insufficient_funds"})
)]
pub struct ProblemBody {
    /// A relative reference to the page that explains the code (`/problems/{code}`).
    #[serde(rename = "type")]
    pub type_uri: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A machine-readable code (`insufficient_funds`, `not_found`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip)]
    pub www_authenticate: Option<String>,
    /// Seconds for `Retry-After` (a 429).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Problem(Box::new(ProblemBody {
            // A relative reference (RFC 9457 §3.1.1): it resolves against the request's own
            // URL, to the page every service serves at /problems/{code}.
            type_uri: format!("/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: Some(detail.into()),
            code: Some(code.to_owned()),
            www_authenticate: None,
            retry_after: None,
        }))
    }

    pub fn body(&self) -> &ProblemBody {
        &self.0
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn unauthorized(detail: impl Into<String>, challenge: impl Into<String>) -> Self {
        let mut p = Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail);
        p.0.www_authenticate = Some(challenge.into());
        p
    }

    pub fn conflict(code: &str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::CONFLICT, code, detail)
    }

    /// 422: well formed, refused for what it means (the code says what).
    pub fn unprocessable(code: &str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }

    /// 429 with `Retry-After: <secs>` (at least 1).
    pub fn too_many_requests(detail: impl Into<String>, retry_after_secs: u64) -> Self {
        let mut p = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail);
        p.0.retry_after = Some(retry_after_secs.max(1));
        p
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }
}

/// Every problem code the services answer with: its status and what it means for a client.
/// `GET /problems/{code}` on any service serves the entry (the `type` of its problems).
pub const CODES: &[(&str, u16, &str)] = &[
    ("bad_request", 400, "The request is malformed: a missing or invalid header, field, query parameter or path segment. The detail names it. Fix the request; retrying it unchanged gets the same answer."),
    ("unauthorized", 401, "No valid credentials: a missing, malformed, expired or foreign token (public API), or a missing or wrong admin token (admin and operator routes). Get a new token; a token signed before the service's data folder was reset, or with a key rotated out, is refused."),
    ("failpoints_refused", 403, "Failpoints (crashes on purpose, for tests and labs) are refused in production mode."),
    ("faults_refused", 403, "Faults (delayed, hung, failed or erroring calls on purpose, for labs) are refused in production mode."),
    ("fault_not_applicable", 422, "This op cannot take this fault: only try and action may answer FAILURE (confirm, cancel and compensate must succeed)."),
    ("not_found", 404, "Nothing at this address for you: an unknown route, an order that is not yours or does not exist, an unknown account, SKU, transaction or failpoint."),
    ("in_progress", 409, "Another request with the same Idempotency-Key is still being answered. Retry the same key a moment later: you will get its answer."),
    ("idempotency_key_reused", 422, "This Idempotency-Key was already used with a different request body (or, at the coordinator, a different transaction). Use a new key for a new request."),
    ("unknown_sku", 422, "The catalog has no product with this SKU. The answer is stored under the key: use a new key for a corrected request."),
    ("amount_too_large", 422, "The order's amount (price times quantity) is beyond what an account can hold. The answer is stored under the key."),
    ("too_many_items", 422, "A refund of more items than the order has. Ask for at most the order's quantity (or leave it out for all of them)."),
    ("refund_in_progress", 409, "A refund of this order is under way. Its answer (or GET /api/v1/orders/{id}) says how it ends."),
    ("already_refunded", 409, "This order was refunded; an order is refunded once."),
    ("not_refundable", 409, "Only a confirmed order can be refunded; this one was cancelled."),
    ("order_settling", 409, "The order was decided but its last step has not reached order-svc yet: retry the refund in a moment."),
    ("balance_too_large", 422, "A deposit or restock would take a balance or a stock beyond the largest one allowed."),
    ("blank_name", 422, "A catalog name of only spaces: give the product a name."),
    ("empty_range", 422, "A time range whose start is not before its end (from_ms >= to_ms): nothing can be in it. Give a start before the end, or leave either out."),
    ("insufficient_funds", 409, "The account has less available than the amount asked for (an admin payout)."),
    ("profile_running", 409, "A CPU profile of this process is being taken (one at a time): ask again once it ends, after the seconds it asked for."),
    ("method_not_allowed", 405, "This address does not take this method; the Allow header lists the ones it does."),
    ("payload_too_large", 413, "The body is larger than this route accepts."),
    ("unsupported_media_type", 415, "The body must be JSON, sent with Content-Type: application/json."),
    ("rate_limited", 429, "Too many new orders from this user: wait the Retry-After seconds, then retry the same request with the same Idempotency-Key (nothing was stored under it)."),
    ("unavailable", 503, "The service could not do it right now (a database or another service did not answer). Retry later; for an order, retry with the same Idempotency-Key: it answers what happened, and never places a second order."),
    ("internal", 500, "Something went wrong on our side; the service's log says what (the answer never does). Retrying with the same Idempotency-Key is safe."),
];

/// `GET /problems/{code}`: the page a problem's `type` points at (plain HTML, offline).
#[utoipa::path(
    get,
    path = "/problems/{code}",
    tag = "operations",
    summary = "What a problem's code means (the page its `type` names)",
    params(("code" = String, Path, description = "A problem's `code`, e.g. `insufficient_funds`")),
    responses(
        (status = 200, description = "The code, its HTTP status and its meaning", content_type = "text/html", body = String),
        (status = 404, description = "No such code", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn describe(code: web::Path<String>) -> Result<HttpResponse, Problem> {
    let Some((code, status, meaning)) = CODES.iter().find(|(c, _, _)| *c == code.as_str()) else {
        return Err(Problem::not_found("no such problem type"));
    };
    let reason = StatusCode::from_u16(*status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code}</title></head>\
             <body><h1><code>{code}</code></h1><p>HTTP {status} {reason}</p><p>{meaning}</p>\
             <p>Problems are <code>application/problem+json</code> (RFC 9457): <code>type</code> \
             is this page, <code>code</code> its name, <code>detail</code> what happened.</p></body></html>"
        )))
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.0.status,
            self.0.detail.as_deref().unwrap_or(&self.0.title)
        )
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        res.content_type("application/problem+json");
        if let Some(challenge) = &self.0.www_authenticate {
            res.insert_header(("WWW-Authenticate", challenge.as_str()));
        }
        if let Some(secs) = self.0.retry_after {
            res.insert_header(("Retry-After", secs.to_string()));
        }
        res.json(&*self.0)
    }
}

impl From<store::StoreError> for Problem {
    fn from(e: store::StoreError) -> Self {
        // The error's text names hosts, tables and SQL: logged, never answered.
        if e.is_transient() {
            tracing::warn!(error = %e, "database unavailable");
            Problem::unavailable("the database did not answer; retry later")
        } else {
            tracing::error!(error = %e, "database error");
            Problem::internal("database error")
        }
    }
}

/// Handlers run their SQL with `?`: a sqlx error is a store error first (typed, transient or
/// not), then a problem.
impl From<sqlx::Error> for Problem {
    fn from(e: sqlx::Error) -> Self {
        store::StoreError::from(e).into()
    }
}

/// JSON bodies: at most `limit` bytes; errors as problems.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(|err, _req: &HttpRequest| {
            let p = match &err {
                error::JsonPayloadError::Overflow { .. }
                | error::JsonPayloadError::OverflowKnownLength { .. } => Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    err.to_string(),
                ),
                error::JsonPayloadError::ContentType => Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "expected Content-Type: application/json",
                ),
                _ => Problem::bad_request(err.to_string()),
            };
            p.into()
        })
}

/// Path parameters: errors as problems (a malformed id is a 400, or a 404 where the caller asks).
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err, _| Problem::bad_request(err.to_string()).into())
}

/// Query strings: errors as problems.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _| Problem::bad_request(err.to_string()).into())
}

/// The response for a method a resource does not serve: a 405 whose `Allow` lists the ones it
/// does (`"GET, POST"`).
pub fn method_not_allowed(req: &HttpRequest, allow: &'static str) -> HttpResponse {
    let mut res = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not take {}; it takes {allow}",
            req.path(),
            req.method()
        ),
    )
    .error_response();
    res.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static(allow),
    );
    res
}

/// A resource serving `allow` (`"GET, POST"`) only: any other method is a 405 naming them.
pub fn only(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move |req: HttpRequest| async move {
        method_not_allowed(&req, allow)
    }))
}

/// The response for a route that does not exist.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    Problem::not_found(format!("no route for {} {}", req.method(), req.path())).error_response()
}

#[cfg(test)]
mod codes_tests {
    use super::*;

    /// Every code a constructor here can answer with has its page, with its status.
    #[test]
    fn every_code_the_constructors_answer_with_is_documented_with_its_status() {
        let made = [
            Problem::bad_request(""),
            Problem::not_found(""),
            Problem::unauthorized("", ""),
            Problem::conflict("in_progress", ""),
            Problem::unprocessable("idempotency_key_reused", ""),
            Problem::too_many_requests("", 1),
            Problem::unavailable(""),
            Problem::internal(""),
        ];
        for p in made {
            let b = p.body();
            let code = b.code.as_deref().unwrap();
            assert_eq!(b.type_uri, format!("/problems/{code}"));
            let entry = CODES.iter().find(|(c, _, _)| *c == code);
            let (_, status, _) = entry.unwrap_or_else(|| panic!("{code} is not documented"));
            assert_eq!(*status, b.status, "{code}");
        }
    }
}
