//! `GET /debug/pprof/profile?seconds=N`: where a running service spends its CPU, without
//! restarting it or installing anything (the course's chapter on pprof and flame graphs).
//!
//! The `pprof` crate samples every thread of the process 99 times a second (SIGPROF) for the
//! seconds asked, then answers either the pprof protobuf (`format=pb`, the default, which
//! `pprof -http=:0 profile.pb` or `go tool pprof` read) or a flame graph as an SVG to open in a
//! browser (`format=svg`). Behind the admin token: a profile shows the code's shape and costs a
//! little CPU while it runs, and memory for good: the crate's sample table and what the
//! symboliser leaves in the allocator stay with a process once it has profiled (measured: a
//! service of about 25 MB then holds about 250 MB, however many profiles follow). Profile a
//! service in production knowing that; a restart gives the memory back. One profile at
//! a time per process (the sampler is process-wide); a second asks again later (409). `load-tests run --profile DIR` takes one of each service
//! during its measured window.

use crate::Problem;
use actix_web::{web, HttpResponse};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The longest profile one request can ask for.
pub const MAX_SECONDS: u64 = 60;

/// Samples per second: not a divisor of common timer rates, so periodic work is not aliased.
const FREQUENCY: i32 = 99;

/// `GET /debug/pprof/profile`'s query.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProfileQuery {
    /// How long to sample, in seconds (1 to 60; default 10).
    #[param(minimum = 1, maximum = 60)]
    seconds: Option<u64>,
    /// `pb` (the pprof protobuf, the default) or `svg` (a flame graph).
    format: Option<Format>,
}

/// What a profile is answered as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The pprof protobuf (`perftools.profiles.Profile`), uncompressed.
    Pb,
    /// A flame graph (inferno), an SVG.
    Svg,
}

/// Whether a profile of this process is being taken.
static TAKING: AtomicBool = AtomicBool::new(false);

/// The one profile at a time: taken by [`Turn::take`], given back when dropped (also when the
/// request is dropped half-way, its client gone).
struct Turn;

impl Turn {
    fn take() -> Option<Turn> {
        TAKING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Turn)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        TAKING.store(false, Ordering::Release);
    }
}

/// Why a profile could not be made: the log says; the answer does not.
fn failed(what: &str, e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "profile: {what}");
    Problem::internal("the profile could not be made (see the service log)")
}

/// Samples this process for the seconds asked and answers the profile.
#[utoipa::path(
    get,
    path = "/debug/pprof/profile",
    tag = "profiling",
    summary = "A CPU profile of this process: the pprof protobuf or a flame graph",
    params(ProfileQuery),
    responses(
        (status = 200, description = "The profile of the next `seconds` (a pprof protobuf, or an SVG flame graph with `format=svg`)",
            content((String = "application/octet-stream"), (String = "image/svg+xml"))),
        (status = 409, description = "A profile of this process is being taken", body = crate::problem::ProblemBody, content_type = "application/problem+json"),
    ),
    security(("admin" = []))
)]
pub async fn profile(query: web::Query<ProfileQuery>) -> Result<HttpResponse, Problem> {
    let seconds = query.seconds.unwrap_or(10);
    if !(1..=MAX_SECONDS).contains(&seconds) {
        return Err(Problem::bad_request(format!(
            "seconds must be 1 to {MAX_SECONDS} (got {seconds})"
        )));
    }
    let format = query.format.unwrap_or(Format::Pb);
    let turn = Turn::take().ok_or_else(|| {
        Problem::conflict(
            "profile_running",
            "a profile of this process is being taken; ask again once it ends",
        )
    })?;
    // The whole profile on a thread of its own, which keeps the turn until the sampler has
    // stopped (also when this request is dropped, its client gone). One thread, and so one
    // malloc arena, for the sampler's table and the symboliser: what a profile leaves is
    // reused by the next one instead of being allocated again in another worker's arena
    // (measured with the framehop unwinder on an idle service: 117, 234, 254 MB after three
    // profiles from the workers, 131, 151, 151 MB from this thread; with the default unwinder
    // from this thread: 229, 248, 249 MB).
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("profile".into())
        .spawn(move || {
            let _turn = turn;
            let _ = tx.send(take(seconds, format));
        })
        .map_err(|e| failed("no thread to profile on", e))?;
    // Symbolising and drawing take seconds, never a minute: past that the sampler is stuck (a
    // signal handler that never returned), and the turn stays taken until a restart.
    let body = tokio::time::timeout(Duration::from_secs(seconds + 60), rx)
        .await
        .map_err(|_| failed("the profile did not end", "stuck after sampling"))?
        .map_err(|e| failed("the profiling thread stopped", e))??;
    Ok(HttpResponse::Ok()
        .content_type(match format {
            Format::Pb => "application/octet-stream",
            Format::Svg => "image/svg+xml",
        })
        .body(body))
}

/// Samples the process for `seconds`, then symbolises and renders the samples.
fn take(seconds: u64, format: Format) -> Result<Vec<u8>, Problem> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY)
        // Unwinding through these from a signal handler can deadlock (the crate's advice).
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| failed("the sampler did not start", e))?;
    std::thread::sleep(Duration::from_secs(seconds));
    let report = guard
        .report()
        .build()
        .map_err(|e| failed("the samples could not be read", e))?;
    drop(guard);
    let mut body = Vec::new();
    match format {
        // inferno draws nothing from no samples: an idle process gets a picture that says so.
        Format::Svg if report.data.is_empty() => body = idle_svg(seconds).into_bytes(),
        Format::Svg => report
            .flamegraph(&mut body)
            .map_err(|e| failed("the flame graph could not be drawn", e))?,
        Format::Pb => {
            use pprof::protos::Message as _;
            report
                .pprof()
                .map_err(|e| failed("the profile could not be encoded", e))?
                .encode(&mut body)
                .map_err(|e| failed("the profile could not be encoded", e))?;
        }
    }
    drop(report);
    // Symbolising parsed the binary's debug info into a cache nothing uses until the next
    // profile (it kept 130 MB of mapped file, and heap).
    backtrace::clear_symbol_cache();
    Ok(body)
}

/// The flame graph of a process that never ran on a CPU while it was sampled.
fn idle_svg(seconds: u64) -> String {
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg version=\"1.1\" width=\"600\" height=\"60\" \
         xmlns=\"http://www.w3.org/2000/svg\"><text x=\"10\" y=\"35\" font-family=\"monospace\">\
         No CPU samples in {seconds} s: the process was idle.</text></svg>\n"
    )
}

/// The profiling route, behind the admin token (mounted by [`crate::serve::health_routes`]).
pub fn routes(cfg: &mut web::ServiceConfig) {
    use actix_web::middleware::from_fn;
    cfg.service(
        web::scope("/debug/pprof")
            .wrap(from_fn(crate::require_admin))
            .service(crate::problem::only("/profile", "GET").route(web::get().to(profile))),
    );
}
