//! The operator's console at `/console`: the transactions with filters, counts and live
//! numbers; one transaction's attempts on a shared time axis, its decision, retry schedule,
//! decoded payloads and trace; and the operator's retry.
//!
//! Why server-rendered: the project's machines have no npm and the console must work offline,
//! so the pages are HTML made here (`maud`), one small stylesheet and one small script embedded
//! in the binary (the script only re-fetches the page for auto-refresh; every page works
//! without it). Nothing is loaded from anywhere else, and the Content-Security-Policy says so.
//!
//! Why a cookie: a browser cannot send the admin token as a bearer header on a link, so signing
//! in with the token sets a session cookie holding a value *derived* from the token and an
//! expiry (never the token itself): `HttpOnly`, `SameSite=Strict`, scoped to `/console`, valid
//! for [`SESSION_SECS`], and void once the token changes. The two writes (retry, sign out) are
//! POSTs that a cross-site page cannot make with the cookie (`SameSite=Strict`), and an
//! `Origin` that is not this host is refused besides.

mod clock;
mod faults;
mod gantt;
mod page;
mod payload;

use crate::engine::{Engine, EngineError};
use crate::http::ListQuery;
use crate::log;
use crate::view;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use host::AdminToken;
use maud::Markup;
use serde::Deserialize;
use std::sync::Arc;

/// The console's settings.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The trace UI's page of one trace, `{trace_id}` standing for the id.
    pub trace_link: Option<String>,
    /// The participants' admin APIs (name → base URL) for the fault switches.
    pub participant_admin: std::collections::BTreeMap<String, String>,
    pub production: bool,
    pub http: reqwest::Client,
    /// The counts and live numbers, read at most every [`LIVE_EVERY`] whatever the number of
    /// open pages refreshing themselves (they read the whole log's counts).
    pub live: Arc<std::sync::Mutex<Option<(std::time::Instant, Live)>>>,
}

/// What every list page shows besides its rows.
type Live = (Vec<(String, i64)>, log::Recent);

/// How long the counts and live numbers are reused.
const LIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

impl Settings {
    async fn live(&self, db: &store::Db) -> Result<Live, store::StoreError> {
        let cached = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(at, _)| at.elapsed() < LIVE_EVERY)
            .map(|(_, live)| live.clone());
        if let Some(live) = cached {
            return Ok(live);
        }
        let live = (
            log::counts(db).await?,
            log::recent(db, LIVE_WINDOW_MS).await?,
        );
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((std::time::Instant::now(), live.clone()));
        Ok(live)
    }
}

/// How long a console session lasts.
pub const SESSION_SECS: i64 = 12 * 3600;
const COOKIE: &str = "tcc_console";
/// The window of the live numbers.
const LIVE_WINDOW_MS: i64 = 60_000;
/// Attempts one transaction page shows (the newest).
const TIMELINE_LIMIT: i64 = 1000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/console")
            .route("", web::get().to(list))
            .route("/", web::get().to(list))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/transactions/{gid}", web::get().to(show))
            .route("/transactions/{gid}/retry", web::post().to(retry))
            .route("/faults", web::get().to(faults_page))
            .route("/faults/{name}/{action}", web::post().to(fault_action))
            .route(
                "/failpoints/{point}/{action}",
                web::post().to(failpoint_action),
            )
            .route("/assets/console.css", web::get().to(css))
            .route("/assets/console.js", web::get().to(js)),
    );
}

/// Every console response: no caching, nothing from elsewhere, never framed.
fn respond(status: StatusCode, body: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        // `same-origin`, not `no-referrer`: under `no-referrer` a browser sends `Origin: null`
        // on the console's own form posts, which the origin check must refuse.
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .body(body.into_string())
}

fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

fn now_secs() -> i64 {
    store::now_ms() / 1000
}

fn purpose(expires: i64) -> String {
    format!("console-session:{expires}")
}

/// The cookie's value for a session that ends at `expires` (Unix seconds).
fn session_value(token: &AdminToken, expires: i64) -> String {
    format!("{expires}.{}", token.derived(&purpose(expires)))
}

/// Whether the request carries a live session made with the current token.
fn signed_in(req: &HttpRequest, token: &AdminToken) -> bool {
    let Some(cookie) = cookie_value(req) else {
        return false;
    };
    let Some((expires, proof)) = cookie.split_once('.') else {
        return false;
    };
    match expires.parse::<i64>() {
        Ok(e) if e > now_secs() && e <= now_secs() + SESSION_SECS => {
            token.accepts_derived(&purpose(e), proof)
        }
        _ => false,
    }
}

/// The session cookie's value, if the request carries one.
fn cookie_value(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// A `Set-Cookie` for the session (`value` empty: one that removes it).
fn set_cookie(value: &str, secure: bool) -> String {
    let max_age = if value.is_empty() { 0 } else { SESSION_SECS };
    format!(
        "{COOKIE}={value}; Path=/console; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// A write comes from this host's own pages: the browser's `Sec-Fetch-Site`, when it sends
/// one, says so; otherwise its `Origin`, when it sends one, is this host.
fn same_origin(req: &HttpRequest) -> bool {
    if let Some(site) = req.headers().get("sec-fetch-site") {
        return matches!(site.to_str(), Ok("same-origin" | "none"));
    }
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let host = req.connection_info().host().to_owned();
    origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .is_some_and(|(_, h)| h == host)
}

/// A write's checks: a live session, and a request from this host's own pages. `Some`: the
/// refusal to send.
fn refuse_write(req: &HttpRequest, token: &AdminToken) -> Option<HttpResponse> {
    if !signed_in(req, token) {
        return Some(unauthorized());
    }
    if !same_origin(req) {
        return Some(respond(
            StatusCode::FORBIDDEN,
            page::error("Refused", "cross-site request"),
        ));
    }
    None
}

fn unauthorized() -> HttpResponse {
    respond(StatusCode::UNAUTHORIZED, page::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    req: HttpRequest,
    token: web::Data<AdminToken>,
    form: web::Form<LoginForm>,
) -> HttpResponse {
    if !same_origin(&req) {
        return respond(
            StatusCode::FORBIDDEN,
            page::login(Some("cross-site sign-in refused")),
        );
    }
    if !token.accepts(form.token.trim()) {
        return respond(
            StatusCode::UNAUTHORIZED,
            page::login(Some("That is not the coordinator's admin token.")),
        );
    }
    let expires = now_secs() + SESSION_SECS;
    let secure = req.connection_info().scheme() == "https";
    let mut to = see_other("/console");
    if let Ok(v) =
        header::HeaderValue::from_str(&set_cookie(&session_value(&token, expires), secure))
    {
        to.headers_mut().append(header::SET_COOKIE, v);
    }
    to
}

async fn logout(req: HttpRequest) -> HttpResponse {
    if !same_origin(&req) {
        return respond(
            StatusCode::FORBIDDEN,
            page::error("Refused", "cross-site request"),
        );
    }
    let secure = req.connection_info().scheme() == "https";
    let mut to = see_other("/console");
    if let Ok(v) = header::HeaderValue::from_str(&set_cookie("", secure)) {
        to.headers_mut().append(header::SET_COOKIE, v);
    }
    to
}

/// The console's query: the API's filter plus the time range as UTC wall-clock inputs.
#[derive(Debug, Default, Deserialize)]
struct ConsoleQuery {
    status: Option<String>,
    mode: Option<String>,
    q: Option<String>,
    before: Option<String>,
    limit: Option<i64>,
    from: Option<String>,
    to: Option<String>,
}

/// A transaction id in a path, or the page saying what is wrong with it: a 400 for one that is
/// not an id, a 404 for one beyond every gid.
fn gid_in_path(raw: &str) -> Result<ids::Gid, Box<HttpResponse>> {
    match crate::http::parse_gid(raw) {
        Ok(Some(gid)) => Ok(gid),
        Ok(None) => Err(Box::new(respond(
            StatusCode::NOT_FOUND,
            page::error("Not found", &format!("There is no transaction {raw}.")),
        ))),
        Err(p) => Err(Box::new(bad_request(
            p.body().detail.clone().unwrap_or_default(),
        ))),
    }
}

fn bad_request(message: impl Into<String>) -> HttpResponse {
    respond(
        StatusCode::BAD_REQUEST,
        page::error("Bad request", &message.into()),
    )
}

fn unavailable(e: EngineError) -> HttpResponse {
    tracing::warn!(error = %e, "console read failed");
    respond(
        StatusCode::SERVICE_UNAVAILABLE,
        page::error(
            "Unavailable",
            "The coordinator's log cannot be read right now; try again shortly.",
        ),
    )
}

async fn list(
    req: HttpRequest,
    token: web::Data<AdminToken>,
    engine: web::Data<Arc<Engine>>,
    settings: web::Data<Settings>,
    q: web::Query<ConsoleQuery>,
) -> HttpResponse {
    if !signed_in(&req, &token) {
        return unauthorized();
    }
    let q = q.into_inner();
    let mut list = ListQuery {
        status: q.status,
        mode: q.mode,
        q: q.q,
        before: q.before,
        limit: q.limit.unwrap_or(50),
        from_ms: None,
        to_ms: None,
    };
    for (text, into, name) in [
        (&q.from, &mut list.from_ms, "from"),
        (&q.to, &mut list.to_ms, "to"),
    ] {
        if let Some(t) = text.as_deref().filter(|t| !t.is_empty()) {
            match clock::parse_utc(t) {
                Some(ms) => *into = Some(ms),
                None => {
                    return bad_request(format!(
                        "{name} must be a UTC date and time like 2026-12-02T03:04"
                    ))
                }
            }
        }
    }
    let filter = match list.filter() {
        Ok(f) => f,
        Err(p) => return bad_request(p.body().detail.clone().unwrap_or_default()),
    };
    let db = engine.db();
    let read = async {
        let rows = log::list(db, &filter).await?;
        let (counts, recent) = settings.live(db).await?;
        Ok::<_, store::StoreError>((rows, counts, recent))
    };
    let (rows, counts, recent) = match read.await {
        Ok(r) => r,
        Err(e) => return unavailable(e.into()),
    };
    let next_before = (rows.len() as i64 == filter.limit)
        .then(|| rows.last().map(|r| r.gid))
        .flatten();
    let names = recent
        .latency
        .iter()
        .map(|l| name_of(&engine, &l.participant))
        .collect();
    let from_text = list.from_ms.map(clock::input_value).unwrap_or_default();
    let to_text = list.to_ms.map(clock::input_value).unwrap_or_default();
    respond(
        StatusCode::OK,
        page::list(&page::List {
            query: &list,
            rows: &rows,
            counts: &counts,
            live: page::Live { recent, names },
            next_before,
            from_text: &from_text,
            to_text: &to_text,
        }),
    )
}

/// A participant's configured name, or its address.
fn name_of(engine: &Engine, addr: &str) -> String {
    engine
        .participants()
        .name_of(addr)
        .map_or_else(|| addr.to_owned(), str::to_owned)
}

#[derive(Deserialize)]
struct ShowQuery {
    retried: Option<String>,
}

async fn show(
    req: HttpRequest,
    token: web::Data<AdminToken>,
    engine: web::Data<Arc<Engine>>,
    settings: web::Data<Settings>,
    gid: web::Path<String>,
    q: web::Query<ShowQuery>,
) -> HttpResponse {
    if !signed_in(&req, &token) {
        return unauthorized();
    }
    let gid = match gid_in_path(&gid) {
        Ok(g) => g,
        Err(page) => return *page,
    };
    let db = engine.db();
    let (stored, timeline, total, _) = match view::stored_page(db, gid, None, TIMELINE_LIMIT).await
    {
        Ok(page) => page,
        Err(EngineError::NotFound(_)) => {
            return respond(
                StatusCode::NOT_FOUND,
                page::error("Not found", &format!("There is no transaction {gid}.")),
            )
        }
        Err(e) => return unavailable(e),
    };
    let trace_id = match log::trace_id(db, gid).await {
        Ok(t) => t,
        Err(e) => return unavailable(e.into()),
    };
    let shown = view::shown(stored.clone(), &[]);
    let branches = shown
        .branches
        .into_iter()
        .zip(&stored.branches)
        .map(|(state, b)| {
            let name = engine
                .participants()
                .name_of(&b.participant)
                .map(str::to_owned);
            page::BranchView {
                payload: payload::describe(name.as_deref(), &b.payload),
                name,
                state,
            }
        })
        .collect();
    let next_caps_ms = engine
        .backoff_caps(stored.attempts as u32 + 1, 3)
        .into_iter()
        .map(|d| d.as_millis() as i64)
        .collect();
    respond(
        StatusCode::OK,
        page::detail(&page::Detail {
            stored,
            branches,
            timeline,
            total_attempts: total,
            trace_id,
            trace_link: settings.trace_link.clone(),
            next_caps_ms,
            now_ms: store::now_ms(),
            flash: match q.retried.as_deref() {
                Some("due") => Some("Made due now: a recovery round drives it next."),
                Some("ended") => Some("Nothing to retry: it had already ended."),
                _ => None,
            },
        }),
    )
}

async fn retry(
    req: HttpRequest,
    token: web::Data<AdminToken>,
    engine: web::Data<Arc<Engine>>,
    gid: web::Path<String>,
) -> HttpResponse {
    if let Some(refused) = refuse_write(&req, &token) {
        return refused;
    }
    let gid = match gid_in_path(&gid) {
        Ok(g) => g,
        Err(page) => return *page,
    };
    match engine.retry_now(gid).await {
        Ok(status) if status.is_terminal() => {
            see_other(&format!("/console/transactions/{gid}?retried=ended"))
        }
        Ok(_) => {
            tracing::info!(gid = %gid, "operator retry from the console");
            see_other(&format!("/console/transactions/{gid}?retried=due"))
        }
        Err(EngineError::NotFound(_)) => respond(
            StatusCode::NOT_FOUND,
            page::error("Not found", &format!("There is no transaction {gid}.")),
        ),
        Err(e) => unavailable(e),
    }
}

type CoordinatorFailpoints = host::Failpoints<crate::engine::Crash>;

#[derive(Deserialize)]
struct DoneQuery {
    done: Option<String>,
}

/// The page of fault switches, with what the last action did (`flash`) or why it failed.
async fn render_faults(
    token: &AdminToken,
    settings: &Settings,
    failpoints: &CoordinatorFailpoints,
    status: StatusCode,
    flash: Option<&str>,
    error: Option<&str>,
) -> HttpResponse {
    let mut participants = Vec::new();
    for (name, url) in &settings.participant_admin {
        let listed = async {
            let answer = settings
                .http
                .get(format!("{url}/admin/faults"))
                .bearer_auth(token.expose())
                .timeout(std::time::Duration::from_secs(3))
                .send()
                .await
                .map_err(|_| "its admin API does not answer".to_owned())?;
            if !answer.status().is_success() {
                return Err(format!("its admin API answered {}", answer.status()));
            }
            answer
                .json::<faults::Listed>()
                .await
                .map_err(|_| "its admin API answered something else than a fault list".to_owned())
        }
        .await;
        participants.push(faults::Participant {
            name: name.clone(),
            listed,
        });
    }
    let armed = failpoints.armed();
    let points: faults::Failpoints = <crate::engine::Crash as host::failpoint::Point>::ALL
        .iter()
        .map(|p| {
            (
                host::failpoint::Point::name(*p),
                armed.iter().find(|(a, _)| a == p).map(|(_, n)| *n),
            )
        })
        .collect();
    respond(
        status,
        faults::page(&participants, &points, settings.production, flash, error),
    )
}

async fn faults_page(
    req: HttpRequest,
    token: web::Data<AdminToken>,
    settings: web::Data<Settings>,
    failpoints: web::Data<CoordinatorFailpoints>,
    q: web::Query<DoneQuery>,
) -> HttpResponse {
    if !signed_in(&req, &token) {
        return unauthorized();
    }
    let flash = match q.done.as_deref() {
        Some("armed") => Some("Armed."),
        Some("cleared") => Some("Cleared."),
        Some("released") => Some("Released."),
        Some("disarmed") => Some("Disarmed."),
        _ => None,
    };
    render_faults(&token, &settings, &failpoints, StatusCode::OK, flash, None).await
}

/// `POST /console/faults/{name}/{arm|clear|release}`: relayed to the participant's admin API.
async fn fault_action(
    req: HttpRequest,
    token: web::Data<AdminToken>,
    settings: web::Data<Settings>,
    failpoints: web::Data<CoordinatorFailpoints>,
    path: web::Path<(String, String)>,
    form: Option<web::Form<faults::ArmForm>>,
) -> HttpResponse {
    if let Some(refused) = refuse_write(&req, &token) {
        return refused;
    }
    let (name, action) = path.into_inner();
    let failed = |status: StatusCode, why: String| {
        let (token, settings, failpoints) = (&token, &settings, &failpoints);
        async move { render_faults(token, settings, failpoints, status, None, Some(&why)).await }
    };
    let Some(url) = settings.participant_admin.get(&name) else {
        return failed(
            StatusCode::NOT_FOUND,
            format!(
                "No participant {:?} has fault switches here.",
                name.chars().take(64).collect::<String>()
            ),
        )
        .await;
    };
    let http = &settings.http;
    let request = match action.as_str() {
        "arm" => {
            let Some(form) = form else {
                return failed(StatusCode::BAD_REQUEST, "The form is incomplete.".into()).await;
            };
            if !["try", "confirm", "cancel", "action", "compensate"].contains(&form.op.as_str()) {
                return failed(StatusCode::BAD_REQUEST, "No such op.".into()).await;
            }
            match form.body() {
                Ok(body) => http
                    .put(format!("{url}/admin/faults/{}", form.op))
                    .json(&body),
                Err(why) => return failed(StatusCode::BAD_REQUEST, why).await,
            }
        }
        "clear" => http.delete(format!("{url}/admin/faults")),
        "release" => http.post(format!("{url}/admin/faults/release")),
        _ => return failed(StatusCode::NOT_FOUND, "No such action.".into()).await,
    };
    let answer = match request
        .bearer_auth(token.expose())
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
    {
        Ok(a) => a,
        Err(_) => {
            return failed(
                StatusCode::BAD_GATEWAY,
                format!("{name}'s admin API does not answer."),
            )
            .await
        }
    };
    if answer.status().is_success() {
        let done = match action.as_str() {
            "arm" => "armed",
            "clear" => "cleared",
            _ => "released",
        };
        return see_other(&format!("/console/faults?done={done}"));
    }
    let status = answer.status();
    // The participant's own problem detail (what it refused and why), never more.
    let detail = answer
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|p| p["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{name} answered {status}"));
    let shown = if status.is_client_error() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::BAD_GATEWAY
    };
    failed(shown, format!("{name} refused: {detail}")).await
}

#[derive(Deserialize)]
struct AfterForm {
    #[serde(default)]
    after: String,
}

/// `POST /console/failpoints/{point}/{arm|disarm}`: the coordinator's own failpoints.
async fn failpoint_action(
    req: HttpRequest,
    token: web::Data<AdminToken>,
    settings: web::Data<Settings>,
    failpoints: web::Data<CoordinatorFailpoints>,
    path: web::Path<(String, String)>,
    form: Option<web::Form<AfterForm>>,
) -> HttpResponse {
    if let Some(refused) = refuse_write(&req, &token) {
        return refused;
    }
    let (name, action) = path.into_inner();
    let outcome = match (CoordinatorFailpoints::parse(&name), action.as_str()) {
        (Err(e), _) => Err((StatusCode::NOT_FOUND, e.to_string())),
        (Ok(point), "arm") => {
            let after = form.as_ref().map_or("", |f| f.after.trim());
            match if after.is_empty() {
                Ok(0)
            } else {
                after.parse::<u32>()
            } {
                Ok(after) => failpoints
                    .arm(point, after)
                    .map(|()| "armed")
                    .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string())),
                Err(_) => Err((
                    StatusCode::BAD_REQUEST,
                    "after must be a whole number".to_owned(),
                )),
            }
        }
        (Ok(point), "disarm") => {
            failpoints.disarm(point);
            Ok("disarmed")
        }
        (Ok(_), _) => Err((StatusCode::NOT_FOUND, "No such action.".to_owned())),
    };
    match outcome {
        Ok(done) => {
            tracing::warn!(failpoint = %name, %action, "coordinator failpoint switched from the console");
            see_other(&format!("/console/faults?done={done}"))
        }
        Err((status, why)) => {
            render_faults(&token, &settings, &failpoints, status, None, Some(&why)).await
        }
    }
}

async fn css() -> HttpResponse {
    asset(
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    )
}

async fn js() -> HttpResponse {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn a_session_made_with_the_token_holds_until_it_expires_or_the_token_changes() {
        let token = AdminToken::new("a-token-of-the-right-sort");
        let live = session_value(&token, now_secs() + 60);
        let req = |v: &str| {
            TestRequest::default()
                .insert_header((header::COOKIE, format!("theme=dark; {COOKIE}={v}")))
                .to_http_request()
        };
        assert!(signed_in(&req(&live), &token));
        assert!(
            !live.contains("a-token-of-the-right-sort"),
            "never the token itself"
        );
        assert!(!signed_in(&req(&live), &AdminToken::new("another-token")));
        let expired = session_value(&token, now_secs() - 1);
        assert!(!signed_in(&req(&expired), &token));
        let (e, proof) = live.split_once('.').unwrap();
        let later = format!("{}.{proof}", e.parse::<i64>().unwrap() + 1);
        assert!(
            !signed_in(&req(&later), &token),
            "the expiry is part of the proof"
        );
        let too_long = session_value(&token, now_secs() + SESSION_SECS + 60);
        assert!(!signed_in(&req(&too_long), &token));
        assert!(!signed_in(&req("garbage"), &token));
        assert!(!signed_in(
            &TestRequest::default().to_http_request(),
            &token
        ));
    }

    #[test]
    fn a_write_from_another_origin_is_refused() {
        let req = |origin: Option<&str>| {
            let r = TestRequest::default().insert_header((header::HOST, "127.0.0.1:8090"));
            match origin {
                Some(o) => r.insert_header((header::ORIGIN, o)),
                None => r,
            }
            .to_http_request()
        };
        assert!(same_origin(&req(Some("http://127.0.0.1:8090"))));
        assert!(
            same_origin(&req(None)),
            "no Origin: not a browser's cross-site write"
        );
        assert!(!same_origin(&req(Some("http://evil.example"))));
        assert!(!same_origin(&req(Some("null"))));
        let fetched = |site: &str| {
            TestRequest::default()
                .insert_header((header::HOST, "127.0.0.1:8090"))
                .insert_header(("sec-fetch-site", site.to_owned()))
                .to_http_request()
        };
        assert!(same_origin(&fetched("same-origin")));
        assert!(!same_origin(&fetched("same-site")));
        assert!(!same_origin(&fetched("cross-site")));
    }
}
