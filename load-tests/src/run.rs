//! `run`: orders through the public API (`POST /api/v1/orders`) the way customers send them —
//! real JWTs, unique idempotency keys, a share of orders meant to fail and a share sent twice —
//! closed loop (a fixed number in flight) or open loop (a fixed arrival rate, latency counted
//! from the scheduled send time so a slow server cannot hide its queue).
//!
//! Every answer is classified against what the order was meant to do; a duplicate answered with
//! another order than its original is an exactly-once violation and fails the run. A share of
//! orders can be refunded once confirmed (`--refund-share`): each refund (a Saga of five
//! branches) follows its order, is counted apart, and must end `refunded`.

use crate::costs::Costs;
use crate::error::{write_json, LoadError};
use crate::measure::{closed_loop, Latency};
use crate::target::{parse_duration, Target};
use hdrhistogram::Histogram;
use order_svc::api::OrderView;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: Target,
    /// Closed loop: this many orders in flight, each sender sending its next order when the
    /// previous one is answered. The default when `--rate` is not given.
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<u64>,
    /// Open loop: orders per second, each sent at its scheduled time whether or not earlier ones
    /// were answered; latency counts from the scheduled time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long to measure (after the warm-up).
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub duration: Duration,
    /// Stop after this many orders instead of after `--duration`.
    #[arg(long)]
    pub count: Option<u64>,
    /// Load sent first and not measured (connections, caches, SQLite pages).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// Buyers `load-0` … `load-N-1`, funded before the run (one hot account row would serialise
    /// every order). Each is held to order-svc's per-user limit (10 orders/s by default): for
    /// higher rates, more buyers.
    #[arg(long, default_value_t = 64)]
    pub users: u64,
    /// The account order-svc pays every order to (created if missing).
    #[arg(long, default_value = "merchant")]
    pub merchant: String,
    /// The SKU every order buys (restocked before the run).
    #[arg(long, default_value = "coffee")]
    pub sku: String,
    /// Share of orders meant to fail: half from buyers with no money (insufficient_funds), half
    /// for a SKU with no stock (out_of_stock).
    #[arg(long, default_value_t = 0.0)]
    pub fail_share: f64,
    /// Share of orders sent twice with the same key: half replayed after the answer, half as
    /// concurrent twins. Both answers must name the same order.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_share: f64,
    /// Share of orders refunded in full right after they are confirmed
    /// (`POST /api/v1/orders/{id}/refund`); every refund must end `refunded`.
    #[arg(long, default_value_t = 0.0)]
    pub refund_share: f64,
    /// Times an order is resent with the same key after a transport error, a 5xx, a 409, or a
    /// 429 (after its `Retry-After`), as a real client would; its latency then includes the
    /// retries. Without retries a 429 is counted as its own outcome, `http:429:rate_limited`.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// The run's tag: prefixes every Idempotency-Key and travels as `X-Run-Tag`, recorded on
    /// order-svc's request spans (`run.tag`), so the run's logs and traces can be found.
    #[arg(long)]
    pub tag: Option<String>,
    /// Open loop only: orders in flight beyond this are not sent and counted as `not_sent`.
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: u64,
    /// Write the report as JSON here too.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Profile the four services during the measured time (as long as it, at most 60 s) and
    /// write their flame graphs here, `<service>.svg` (each service's `/debug/pprof/profile`).
    #[arg(long, value_name = "DIR")]
    pub profile: Option<PathBuf>,
}

/// What an order is meant to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Normal,
    InsufficientFunds,
    OutOfStock,
    Replay,
    Twin,
    /// Placed, then refunded once confirmed.
    Refund,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::InsufficientFunds => "cancelled:insufficient_funds",
            Kind::OutOfStock => "cancelled:out_of_stock",
            _ => "confirmed",
        }
    }
}

const BROKE_BUYERS: u64 = 16;
const SOLD_OUT_SKU: &str = "load-sold-out";

/// How an order's kind is drawn: the share of each (failing, duplicated, refunded).
#[derive(Debug, Clone, Copy)]
struct Shares {
    fail: f64,
    duplicate: f64,
    refund: f64,
}

/// A deterministic spread of kinds over order numbers (a hash, so shares hold in any window).
fn kind_of(i: u64, shares: Shares) -> Kind {
    let Shares {
        fail: fail_share,
        duplicate: duplicate_share,
        refund: refund_share,
    } = shares;
    let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let r = (x >> 11) as f64 / (1u64 << 53) as f64;
    let half = x & 1 == 0;
    if r < fail_share {
        if half {
            Kind::InsufficientFunds
        } else {
            Kind::OutOfStock
        }
    } else if r < fail_share + duplicate_share {
        if half {
            Kind::Replay
        } else {
            Kind::Twin
        }
    } else if r < fail_share + duplicate_share + refund_share {
        Kind::Refund
    } else {
        Kind::Normal
    }
}

#[derive(Default)]
struct Stats {
    latency: Option<Histogram<u64>>,
    by_outcome: BTreeMap<String, Histogram<u64>>,
    outcomes: BTreeMap<String, u64>,
    unexpected: BTreeMap<String, u64>,
    /// A few idempotency keys per unexpected outcome, to find in the services' logs.
    unexpected_keys: BTreeMap<String, Vec<String>>,
    kinds: BTreeMap<&'static str, u64>,
    duplicates_sent: u64,
    duplicates_replayed: u64,
    duplicate_mismatches: u64,
    mismatch_examples: Vec<String>,
    not_sent: u64,
    /// Refunds: from the send to the answer, and their outcomes.
    refund_latency: Option<Histogram<u64>>,
    refunds: BTreeMap<String, u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

impl Stats {
    fn record(&mut self, kind: Kind, key: &str, outcome: &str, micros: u64) {
        self.latency
            .get_or_insert_with(histogram)
            .saturating_record(micros);
        self.by_outcome
            .entry(outcome.to_owned())
            .or_insert_with(histogram)
            .saturating_record(micros);
        *self.outcomes.entry(outcome.to_owned()).or_default() += 1;
        *self
            .kinds
            .entry(match kind {
                Kind::Normal => "normal",
                Kind::InsufficientFunds => "insufficient_funds",
                Kind::OutOfStock => "out_of_stock",
                Kind::Replay => "replayed",
                Kind::Twin => "twins",
                Kind::Refund => "refunded",
            })
            .or_default() += 1;
        if outcome != kind.expected() {
            let what = format!("{} → {outcome}", kind.expected());
            let keys = self.unexpected_keys.entry(what.clone()).or_default();
            if keys.len() < 3 {
                keys.push(key.to_owned());
            }
            *self.unexpected.entry(what).or_default() += 1;
        }
    }

    fn record_refund(&mut self, key: &str, outcome: &str, micros: u64) {
        self.refund_latency
            .get_or_insert_with(histogram)
            .saturating_record(micros);
        *self.refunds.entry(outcome.to_owned()).or_default() += 1;
        if outcome != "refunded" {
            let what = format!("refunded → {outcome}");
            let keys = self.unexpected_keys.entry(what.clone()).or_default();
            if keys.len() < 3 {
                keys.push(key.to_owned());
            }
            *self.unexpected.entry(what).or_default() += 1;
        }
    }

    fn answered(&self) -> u64 {
        self.latency.as_ref().map(|h| h.len()).unwrap_or(0)
    }
}

/// What one request got back.
struct Reply {
    outcome: String,
    order_id: Option<String>,
    replayed: bool,
    /// A 429's `Retry-After`.
    retry_after: Option<Duration>,
}

struct Shared {
    http: reqwest::Client,
    url: String,
    tag: String,
    sku: String,
    tokens: HashMap<String, String>,
    users: u64,
    shares: Shares,
    stats: Mutex<Stats>,
    answered: AtomicU64,
    in_flight: AtomicU64,
    errors: AtomicU64,
    retries: u32,
    retried: AtomicU64,
}

impl Shared {
    async fn send(&self, user: &str, key: &str, sku: &str) -> Reply {
        let res = self
            .http
            .post(format!("{}/api/v1/orders", self.url))
            .bearer_auth(&self.tokens[user])
            .header("Idempotency-Key", key)
            .header(telemetry::http::RUN_TAG, &self.tag)
            .json(&json!({ "sku": sku, "quantity": 1 }))
            .send()
            .await;
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let what = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "transport"
                };
                return Reply {
                    outcome: format!("error:{what}"),
                    order_id: None,
                    replayed: false,
                    retry_after: None,
                };
            }
        };
        let status = res.status();
        let replayed = res.headers().contains_key("idempotent-replayed");
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = res.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<OrderView>(&body) {
            Ok(o) if status.is_success() => Reply {
                outcome: match o.reason {
                    Some(r) if o.status == "cancelled" => format!("cancelled:{r}"),
                    _ => o.status,
                },
                order_id: Some(o.order_id),
                replayed,
                retry_after: None,
            },
            _ => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let problem: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let code = problem["type"]
                    .as_str()
                    .or(problem["title"].as_str())
                    .unwrap_or("")
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                Reply {
                    outcome: format!("http:{}:{code}", status.as_u16()),
                    order_id: None,
                    replayed,
                    retry_after,
                }
            }
        }
    }

    /// [`Shared::send`], resent with the same key after a transport error, a 5xx, or a 429
    /// (after its `Retry-After`, at most 10 s).
    async fn send_retrying(&self, user: &str, key: &str, sku: &str) -> Reply {
        let mut attempt = 0;
        loop {
            let reply = self.send(user, key, sku).await;
            // Transport errors and 5xx, 409 (the same key still in progress elsewhere), and
            // 429 (this user's rate limit).
            let retryable = reply.outcome.starts_with("error:")
                || reply.outcome.starts_with("http:5")
                || reply.outcome.starts_with("http:409")
                || reply.outcome.starts_with("http:429");
            if !retryable || attempt >= self.retries {
                return reply;
            }
            attempt += 1;
            self.retried.fetch_add(1, Ordering::Relaxed);
            let backoff = match reply.retry_after {
                Some(wait) => wait.min(Duration::from_secs(10)),
                None => Duration::from_millis(100 << attempt.min(5)),
            };
            tokio::time::sleep(backoff).await;
        }
    }

    /// Refunds order `order_id` in full with `key`: resent with the same key after a transport
    /// error, a 5xx, or a 409 `order_settling`/`in_progress` (the order's Confirm not there yet),
    /// at most 50 times. `refunded`, `failed:<reason>`, `pending`, or `http:<status>:<code>`.
    async fn refund(&self, user: &str, key: &str, order_id: &str) -> String {
        let mut attempt = 0_u32;
        loop {
            let res = self
                .http
                .post(format!("{}/api/v1/orders/{order_id}/refund", self.url))
                .bearer_auth(&self.tokens[user])
                .header("Idempotency-Key", key)
                .header(telemetry::http::RUN_TAG, &self.tag)
                .send()
                .await;
            let outcome = match res {
                Err(_) => "error:transport".to_owned(),
                Ok(res) => {
                    let status = res.status();
                    let body: serde_json::Value = res.json().await.unwrap_or_default();
                    if status.is_success() {
                        match (body["status"].as_str(), body["reason"].as_str()) {
                            (Some("failed"), Some(r)) => format!("failed:{r}"),
                            (Some(s), _) => s.to_owned(),
                            (None, _) => "http:2xx:unreadable".to_owned(),
                        }
                    } else {
                        format!(
                            "http:{}:{}",
                            status.as_u16(),
                            body["code"].as_str().unwrap_or("")
                        )
                    }
                }
            };
            let retryable = outcome.starts_with("error:")
                || outcome.starts_with("http:5")
                || outcome == "http:409:order_settling"
                || outcome == "http:409:in_progress"
                || outcome == "http:429:rate_limited";
            if !retryable || attempt >= 50 {
                return outcome;
            }
            attempt += 1;
            self.retried.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt.min(10)))).await;
        }
    }

    /// Places order `i` (with its duplicate, if it is meant to have one) and records it.
    async fn place(&self, key_prefix: &str, i: u64, scheduled: Instant) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.place_counted(key_prefix, i, scheduled).await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    async fn place_counted(&self, key_prefix: &str, i: u64, scheduled: Instant) {
        let kind = kind_of(i, self.shares);
        let user = match kind {
            Kind::InsufficientFunds => format!("load-broke-{}", i % BROKE_BUYERS),
            _ => format!("load-{}", i % self.users),
        };
        let sku = match kind {
            Kind::OutOfStock => SOLD_OUT_SKU,
            _ => self.sku.as_str(),
        };
        let key = format!("{}-{key_prefix}{i}", self.tag);
        let (first, second) = match kind {
            Kind::Twin => {
                let (a, b) = tokio::join!(
                    self.send_retrying(&user, &key, sku),
                    self.send_retrying(&user, &key, sku)
                );
                (a, Some(b))
            }
            Kind::Replay => {
                let a = self.send_retrying(&user, &key, sku).await;
                let b = self.send_retrying(&user, &key, sku).await;
                (a, Some(b))
            }
            _ => (self.send_retrying(&user, &key, sku).await, None),
        };
        let micros = scheduled.elapsed().as_micros() as u64;
        let refund = match (&first.order_id, kind) {
            (Some(order_id), Kind::Refund) if first.outcome == "confirmed" => {
                let started = Instant::now();
                let key = format!("{key}-refund");
                let outcome = self.refund(&user, &key, order_id).await;
                Some((key, outcome, started.elapsed().as_micros() as u64))
            }
            _ => None,
        };
        let mut stats = self.stats.lock().expect("stats lock");
        stats.record(kind, &key, &first.outcome, micros);
        if let Some((key, outcome, micros)) = refund {
            stats.record_refund(&key, &outcome, micros);
        }
        if let Some(second) = second {
            stats.duplicates_sent += 1;
            if second.replayed || first.replayed {
                stats.duplicates_replayed += 1;
            }
            let both_answered = first.order_id.is_some() && second.order_id.is_some();
            if both_answered && first.order_id != second.order_id {
                stats.duplicate_mismatches += 1;
                if stats.mismatch_examples.len() < 5 {
                    stats.mismatch_examples.push(format!(
                        "key {key}: orders {:?} and {:?}",
                        first.order_id, second.order_id
                    ));
                }
            }
            if both_answered && first.outcome != second.outcome {
                *stats
                    .unexpected
                    .entry(format!(
                        "duplicate answered {} then {}",
                        first.outcome, second.outcome
                    ))
                    .or_default() += 1;
            }
        }
        drop(stats);
        self.answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Buyers funded, stock restocked, the sold-out SKU priced and empty.
async fn set_up(args: &RunArgs, orders: u64) -> Result<(), LoadError> {
    let admin = args.target.admin()?;
    admin.payment.open_account(&args.merchant, 0).await?;
    for k in 0..args.users {
        let user = format!("load-{k}");
        admin.payment.open_account(&user, 0).await?;
        admin.payment.deposit(&user, 1_000_000_000_000).await?;
    }
    for k in 0..BROKE_BUYERS {
        admin
            .payment
            .open_account(&format!("load-broke-{k}"), 0)
            .await?;
    }
    admin.inventory.open_sku(&args.sku, 0).await?;
    admin.inventory.restock(&args.sku, orders as i64).await?;
    admin.inventory.open_sku(SOLD_OUT_SKU, 0).await?;
    admin
        .order
        .put_catalog_item(SOLD_OUT_SKU, "sold out (load-tests)", 100)
        .await?;
    Ok(())
}

/// How the load is offered.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Closed(u64),
    Open(f64),
}

/// Sends orders `key_prefix0…` until `until` or `count`; returns the seconds it took.
async fn drive(
    shared: &Arc<Shared>,
    mode: Mode,
    key_prefix: &'static str,
    until: Duration,
    count: Option<u64>,
    max_in_flight: u64,
) -> f64 {
    let start = Instant::now();
    let limit = count.unwrap_or(u64::MAX);
    match mode {
        Mode::Closed(n) => {
            let deadline = count.is_none().then(|| start + until);
            closed_loop(n, 0..limit, deadline, |i| {
                shared.place(key_prefix, i, Instant::now())
            })
            .await;
        }
        Mode::Open(rate) => {
            let mut tasks = tokio::task::JoinSet::new();
            let mut i = 0_u64;
            loop {
                let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
                if i >= limit || (count.is_none() && scheduled - start >= until) {
                    break;
                }
                tokio::time::sleep_until(scheduled.into()).await;
                while tasks.try_join_next().is_some() {}
                if shared.in_flight.load(Ordering::Relaxed) >= max_in_flight {
                    shared.stats.lock().expect("stats lock").not_sent += 1;
                } else {
                    let shared = shared.clone();
                    tasks.spawn(async move { shared.place(key_prefix, i, scheduled).await });
                }
                i += 1;
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    start.elapsed().as_secs_f64()
}

/// A progress line on stderr each second (a bar on a terminal, a line every 5 s otherwise).
fn progress(
    shared: Arc<Shared>,
    total: Option<u64>,
    duration: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let start = Instant::now();
        let mut last = (0_u64, Instant::now());
        let mut tick = 0_u64;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            tick += 1;
            let done = shared.answered.load(Ordering::Relaxed);
            let now_rate = (done - last.0) as f64 / last.1.elapsed().as_secs_f64();
            last = (done, Instant::now());
            let fraction = match total {
                Some(t) => done as f64 / t.max(1) as f64,
                None => start.elapsed().as_secs_f64() / duration.as_secs_f64().max(0.001),
            }
            .min(1.0);
            let width = 24;
            let filled = (fraction * width as f64) as usize;
            let line = format!(
                "[{}{}] {:>5.1}s {:>8} orders {:>7.0}/s now, {} in flight, {} errors",
                "#".repeat(filled),
                "-".repeat(width - filled),
                start.elapsed().as_secs_f64(),
                done,
                now_rate,
                shared.in_flight.load(Ordering::Relaxed),
                shared.errors.load(Ordering::Relaxed),
            );
            if tty {
                eprint!("\r{line}");
                let _ = std::io::stderr().flush();
            } else if tick.is_multiple_of(5) {
                eprintln!("{line}");
            }
        }
    })
}

/// Runs the load, prints (and writes) the report and returns it; `Err` for a set-up failure.
pub async fn run(args: RunArgs) -> Result<RunReport, LoadError> {
    let prepared = prepare(&args).await?;
    load(args, prepared).await
}

/// A run ready to send: arguments checked, buyers funded, stock in place, tokens signed.
pub struct Prepared {
    mode: Mode,
    tag: String,
    http: reqwest::Client,
    tokens: HashMap<String, String>,
}

/// Checks the arguments and sets the platform up for the run.
pub async fn prepare(args: &RunArgs) -> Result<Prepared, LoadError> {
    if !(0.0..=1.0).contains(&(args.fail_share + args.duplicate_share + args.refund_share))
        || args.fail_share < 0.0
        || args.duplicate_share < 0.0
        || args.refund_share < 0.0
    {
        return Err(LoadError::Args(
            "--fail-share, --duplicate-share and --refund-share must be ≥ 0 and sum to at most 1"
                .into(),
        ));
    }
    let mode = match (args.rate, args.concurrency) {
        (Some(r), _) if r > 0.0 && r.is_finite() => Mode::Open(r),
        (Some(_), _) => {
            return Err(LoadError::Args(
                "--rate must be a positive number of orders per second".into(),
            ))
        }
        (None, c) => Mode::Closed(c.unwrap_or(8)),
    };
    let tag = args.tag.clone().unwrap_or_else(|| {
        format!(
            "lt-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        )
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build()
        .map_err(|e| LoadError::Io {
            what: "an HTTP client".into(),
            source: std::io::Error::other(e),
        })?;
    // Enough stock that no order meant to succeed runs out: a generous bound on what the
    // platform can take in the run's time.
    let horizon = (args.duration + args.warmup).as_secs_f64() + 1.0;
    let planned = match (args.count, mode) {
        (Some(n), _) => n,
        (None, Mode::Open(r)) => (r * horizon) as u64,
        (None, Mode::Closed(_)) => (5_000.0 * horizon) as u64,
    };
    set_up(args, planned * 2 + 1_000).await?;

    let secret = args.target.jwt_secret()?;
    let auth = order_svc::auth::Authenticator::new(
        secret.as_bytes(),
        &order_svc::auth::JwtConfig::default(),
    );
    let ttl = Duration::from_secs(24 * 3600);
    let tokens: HashMap<String, String> = (0..args.users)
        .map(|k| format!("load-{k}"))
        .chain((0..BROKE_BUYERS).map(|k| format!("load-broke-{k}")))
        .map(|u| {
            let t = auth.mint(&u, ttl);
            (u, t)
        })
        .collect();
    Ok(Prepared {
        mode,
        tag,
        http,
        tokens,
    })
}

/// Sends the load of a prepared run, prints (and writes) the report and returns it.
pub async fn load(args: RunArgs, prepared: Prepared) -> Result<RunReport, LoadError> {
    let Prepared {
        mode,
        tag,
        http,
        tokens,
    } = prepared;
    let new_shared = || {
        Arc::new(Shared {
            http: http.clone(),
            url: args.target.order_url.clone(),
            tag: tag.clone(),
            sku: args.sku.clone(),
            tokens: tokens.clone(),
            users: args.users.max(1),
            shares: Shares {
                fail: args.fail_share,
                duplicate: args.duplicate_share,
                refund: args.refund_share,
            },
            stats: Mutex::new(Stats::default()),
            answered: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retries: args.retries,
            retried: AtomicU64::new(0),
        })
    };
    let describe = match mode {
        Mode::Closed(n) => format!("closed loop, {n} in flight"),
        Mode::Open(r) => format!("open loop, {r} orders/s"),
    };
    eprintln!(
        "run {tag}: {describe}, {}, against {} (warm-up {:?})",
        match args.count {
            Some(n) => format!("{n} orders"),
            None => format!("{:?}", args.duration),
        },
        args.target.order_url,
        args.warmup
    );
    if !args.warmup.is_zero() {
        let warm = new_shared();
        drive(&warm, mode, "w", args.warmup, None, args.max_in_flight).await;
    }
    let shared = new_shared();
    let before = crate::costs::read(&http, &args.target).await;
    let bar = (!args.quiet).then(|| progress(shared.clone(), args.count, args.duration));
    let profiling = match &args.profile {
        Some(dir) => Some((dir, args.target.admin()?)),
        None => None,
    };
    let profiles = async {
        match &profiling {
            Some((dir, admin)) => crate::profile::take(admin, dir, args.duration)
                .await
                .map(Some),
            None => Ok(None),
        }
    };
    let (seconds, profiles) = tokio::join!(
        drive(
            &shared,
            mode,
            "",
            args.duration,
            args.count,
            args.max_in_flight,
        ),
        profiles
    );
    let after = crate::costs::read(&http, &args.target).await;
    if let Some(files) = profiles? {
        for file in files {
            eprintln!("flame graph: {}", file.display());
        }
    }
    if let Some(bar) = bar {
        bar.abort();
        eprintln!();
    }
    let stats = shared.stats.lock().expect("stats lock");
    let answered = stats.answered();
    let report = RunReport {
        what: "POST /api/v1/orders through the public API".into(),
        tag,
        target: args.target.order_url.clone(),
        mode: match mode {
            Mode::Closed(_) => LoopKind::Closed,
            Mode::Open(_) => LoopKind::Open,
        },
        concurrency: match mode {
            Mode::Closed(n) => Some(n),
            Mode::Open(_) => None,
        },
        rate: match mode {
            Mode::Open(r) => Some(r),
            Mode::Closed(_) => None,
        },
        buyers: args.users,
        fail_share: args.fail_share,
        duplicate_share: args.duplicate_share,
        seconds,
        orders: answered,
        orders_per_second: answered as f64 / seconds,
        latency_ms: stats.latency.as_ref().map(Latency::of),
        latency_ms_by_outcome: stats
            .by_outcome
            .iter()
            .map(|(k, h)| (k.clone(), Latency::of(h)))
            .collect(),
        outcomes: stats.outcomes.clone(),
        kinds: stats
            .kinds
            .iter()
            .map(|(k, n)| ((*k).to_owned(), *n))
            .collect(),
        unexpected: stats.unexpected.clone(),
        unexpected_keys: stats.unexpected_keys.clone(),
        duplicates: Duplicates {
            sent: stats.duplicates_sent,
            replayed: stats.duplicates_replayed,
            answered_with_another_order: stats.duplicate_mismatches,
            examples: stats.mismatch_examples.clone(),
        },
        refund_share: args.refund_share,
        refunds: stats.refunds.clone(),
        refund_latency_ms: stats.refund_latency.as_ref().map(Latency::of),
        not_sent: stats.not_sent,
        errors: shared.errors.load(Ordering::Relaxed),
        retried: shared.retried.load(Ordering::Relaxed),
        costs: Costs::between(&before, &after, answered),
    };
    print!("{report}");
    if let Some(out) = &args.out {
        write_json(out, &report)?;
        eprintln!("report written to {}", out.display());
    }
    Ok(report)
}

/// Closed loop (a fixed number in flight) or open loop (a fixed arrival rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoopKind {
    Closed,
    Open,
}

/// What a run measured and what it saw; written by `--out` as JSON, printed as a summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub what: String,
    pub tag: String,
    /// order-svc's URL.
    pub target: String,
    pub mode: LoopKind,
    pub concurrency: Option<u64>,
    pub rate: Option<f64>,
    pub buyers: u64,
    pub fail_share: f64,
    pub duplicate_share: f64,
    pub seconds: f64,
    /// Orders answered in the measured time.
    pub orders: u64,
    pub orders_per_second: f64,
    /// From the scheduled send to the answer (open loop), or from the send (closed loop).
    pub latency_ms: Option<Latency>,
    pub latency_ms_by_outcome: BTreeMap<String, Latency>,
    /// `confirmed`, `cancelled:<reason>`, `http:<status>:<code>`, `error:<kind>`, counted.
    pub outcomes: BTreeMap<String, u64>,
    /// What the orders were meant to do, counted.
    pub kinds: BTreeMap<String, u64>,
    /// `<expected> → <got>`, counted.
    pub unexpected: BTreeMap<String, u64>,
    /// A few idempotency keys per unexpected outcome, to find in the services' logs.
    pub unexpected_keys: BTreeMap<String, Vec<String>>,
    pub duplicates: Duplicates,
    /// Share of orders refunded once confirmed (`--refund-share`).
    #[serde(default)]
    pub refund_share: f64,
    /// Refunds' outcomes (`refunded`, `failed:<reason>`, `http:<status>:<code>`), counted.
    #[serde(default)]
    pub refunds: BTreeMap<String, u64>,
    /// From a refund's send to its answer (after its order's answer).
    #[serde(default)]
    pub refund_latency_ms: Option<Latency>,
    /// Open loop: orders not sent because `--max-in-flight` were outstanding.
    pub not_sent: u64,
    /// Requests that failed (transport or a non-2xx answer).
    pub errors: u64,
    /// Requests resent with the same key (`--retries`).
    pub retried: u64,
    /// CPU per order and peak memory by service, from their `/metrics` (absent when none
    /// reported them).
    #[serde(default)]
    pub costs: Option<Costs>,
}

/// Orders sent twice with one key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Duplicates {
    pub sent: u64,
    /// Answered from the stored answer (`Idempotent-Replayed`).
    pub replayed: u64,
    /// Must be 0: docs/design.md §5.4 seen by clients.
    pub answered_with_another_order: u64,
    pub examples: Vec<String>,
}

impl RunReport {
    /// Whether every duplicate was answered with its original order (docs/design.md §5.4 seen by
    /// clients).
    pub fn exactly_once(&self) -> bool {
        self.duplicates.answered_with_another_order == 0
    }

    /// Orders confirmed in the measured time.
    pub fn confirmed(&self) -> u64 {
        self.outcomes.get("confirmed").copied().unwrap_or(0)
    }
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} orders in {:.1} s: {:.1} orders/s",
            self.orders, self.seconds, self.orders_per_second
        )?;
        match &self.latency_ms {
            Some(l) => writeln!(f, "; latency {l}")?,
            None => writeln!(f)?,
        }
        writeln!(f, "outcomes: {:?}", self.outcomes)?;
        if !self.unexpected.is_empty() {
            writeln!(f, "unexpected: {:?}", self.unexpected)?;
        }
        let d = &self.duplicates;
        writeln!(
            f,
            "duplicates: {} sent, {} replayed, {} answered with another order",
            d.sent, d.replayed, d.answered_with_another_order
        )?;
        if !self.refunds.is_empty() {
            write!(f, "refunds: {:?}", self.refunds)?;
            match &self.refund_latency_ms {
                Some(l) => writeln!(f, "; latency {l}")?,
                None => writeln!(f)?,
            }
        }
        if self.not_sent > 0 {
            writeln!(f, "not sent (over --max-in-flight): {}", self.not_sent)?;
        }
        if self.retried > 0 || self.errors > 0 {
            writeln!(
                f,
                "errors: {} requests failed, {} resent",
                self.errors, self.retried
            )?;
        }
        if let Some(costs) = &self.costs {
            write!(f, "{costs}")?;
        }
        writeln!(
            f,
            "tag: {} (Idempotency-Key prefix and X-Run-Tag)",
            self.tag
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_requested_shares() {
        let n = 100_000;
        let mut counts = HashMap::new();
        for i in 0..n {
            let shares = Shares {
                fail: 0.2,
                duplicate: 0.1,
                refund: 0.1,
            };
            *counts.entry(kind_of(i, shares)).or_insert(0_u64) += 1;
        }
        let share = |k: Kind| counts.get(&k).copied().unwrap_or(0) as f64 / n as f64;
        assert!((share(Kind::InsufficientFunds) - 0.10).abs() < 0.01);
        assert!((share(Kind::OutOfStock) - 0.10).abs() < 0.01);
        assert!((share(Kind::Replay) - 0.05).abs() < 0.01);
        assert!((share(Kind::Twin) - 0.05).abs() < 0.01);
        assert!((share(Kind::Refund) - 0.10).abs() < 0.01);
        assert!((share(Kind::Normal) - 0.60).abs() < 0.01);
        let none = Shares {
            fail: 0.0,
            duplicate: 0.0,
            refund: 0.0,
        };
        assert!((0..1000).all(|i| kind_of(i, none) == Kind::Normal));
    }
}
