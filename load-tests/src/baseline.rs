//! `baseline`: what an order costs without distribution. The same business writes a confirmed
//! TCC order makes — record the idempotency key, debit the buyer, credit the merchant, take the
//! stock, insert the order — in ONE local transaction on one database of the same kind (SQLite
//! file with the same `synchronous`, or PostgreSQL), through the same `store` crate, at the same
//! concurrency and with the same hot rows (64 buyers, one merchant, one SKU). `run` ÷ `baseline`
//! is the price of distribution on this machine.

use crate::bench::Backend;
use crate::error::{write_json, LoadError};
use crate::measure::{closed_loop, Latency};
use crate::target::parse_duration;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use store::{Db, DbConfig, StoreError};

#[derive(Debug, Clone, clap::Args)]
pub struct BaselineArgs {
    /// A SQLite file in a temporary folder, or a fresh database on the PostgreSQL server of
    /// `--database-url` / DATABASE_URL (or a throwaway local cluster when both are unset).
    #[arg(long, value_enum, default_value = "sqlite")]
    pub backend: Backend,
    /// Use this database (its `baseline_*` tables are created and emptied) instead of a fresh one.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Transactions in flight at once (closed loop), as `run --concurrency`.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u64,
    /// How long the measured window lasts (`30s`, `2m`).
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub duration: Duration,
    /// Unmeasured time before it.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// Distinct buyers the transactions are spread over.
    #[arg(long, default_value_t = 64)]
    pub users: u64,
    /// SQLite `synchronous`: full (the platform's default) or normal.
    #[arg(long, default_value = "full")]
    pub synchronous: String,
    /// Pool size (the services' default is 16).
    #[arg(long, default_value_t = 16)]
    pub max_connections: u32,
    /// Write the report as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

const SCHEMA: [&str; 7] = [
    "DROP TABLE IF EXISTS baseline_requests",
    "DROP TABLE IF EXISTS baseline_orders",
    "DROP TABLE IF EXISTS baseline_accounts",
    "DROP TABLE IF EXISTS baseline_skus",
    "CREATE TABLE baseline_accounts (id TEXT PRIMARY KEY, available BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE baseline_skus (id TEXT PRIMARY KEY, available BIGINT NOT NULL, sold BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE baseline_orders (id BIGINT PRIMARY KEY, user_id TEXT NOT NULL, sku TEXT NOT NULL, \
     quantity BIGINT NOT NULL, amount BIGINT NOT NULL, status TEXT NOT NULL, created_at BIGINT NOT NULL)",
];
const REQUESTS: &str =
    "CREATE TABLE baseline_requests (user_id TEXT NOT NULL, idempotency_key TEXT NOT NULL, \
     order_id BIGINT NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (user_id, idempotency_key))";

const PRICE: i64 = 450;
const FUNDS: i64 = 1_000_000_000_000;

/// One order, monolith style: every write in one local transaction.
async fn place(db: &Db, id: i64, user: &str) -> Result<(), StoreError> {
    let now = store::now_ms();
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO baseline_requests (user_id, idempotency_key, order_id, created_at) VALUES ($1, $2, $3, $4)")
        .bind(user)
        .bind(format!("baseline-{id}"))
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let debited = sqlx::query(
        "UPDATE baseline_accounts SET available = available - $1, updated_at = $2 WHERE id = $3 AND available >= $1",
    )
    .bind(PRICE)
    .bind(now)
    .bind(user)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let taken = sqlx::query(
        "UPDATE baseline_skus SET available = available - 1, sold = sold + 1, updated_at = $1 WHERE id = 'coffee' AND available >= 1",
    )
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if debited != 1 || taken != 1 {
        return Err(StoreError::Conflict(format!(
            "order {id}: debited {debited}, taken {taken}"
        )));
    }
    sqlx::query("UPDATE baseline_accounts SET available = available + $1, updated_at = $2 WHERE id = 'merchant'")
        .bind(PRICE)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO baseline_orders (id, user_id, sku, quantity, amount, status, created_at) \
         VALUES ($1, $2, 'coffee', 1, $3, 'CONFIRMED', $4)",
    )
    .bind(id)
    .bind(user)
    .bind(PRICE)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Measures, prints and returns the report; the verdict is [`passed`].
pub async fn baseline(args: BaselineArgs) -> Result<BaselineReport, LoadError> {
    let _fresh;
    let url = match (&args.database_url, args.backend) {
        (Some(url), _) => url.clone(),
        (None, Backend::Sqlite) => {
            _fresh = testkit::TestDb::sqlite();
            _fresh.url().to_owned()
        }
        (None, Backend::Postgres) => {
            if std::env::var_os("DATABASE_URL").is_none() {
                eprintln!(
                    "baseline: no DATABASE_URL, so a throwaway local cluster with fsync=off: \
                     not comparable with a platform on a real server"
                );
            }
            _fresh = testkit::TestDb::postgres()
                .await
                .ok_or(LoadError::NoPostgres)?;
            _fresh.url().to_owned()
        }
    };
    let mut config = DbConfig::new(&url);
    config.max_connections = args.max_connections;
    config.synchronous = args
        .synchronous
        .parse()
        .map_err(|e| LoadError::Args(format!("--synchronous: {e}")))?;
    let db = Db::connect(&config).await?;
    let mut tx = db.begin().await?;
    for sql in SCHEMA.iter().chain([&REQUESTS]) {
        sqlx::query(sql).execute(&mut *tx).await?;
    }
    let users: Vec<String> = (0..args.users.max(1))
        .map(|k| format!("load-{k}"))
        .collect();
    for u in users.iter().map(String::as_str).chain(["merchant"]) {
        sqlx::query("INSERT INTO baseline_accounts (id, available, updated_at) VALUES ($1, $2, 0)")
            .bind(u)
            .bind(if u == "merchant" { 0 } else { FUNDS })
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO baseline_skus (id, available, sold, updated_at) VALUES ('coffee', $1, 0, 0)",
    )
    .bind(FUNDS)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;

    let next = AtomicU64::new(1);
    let failures = AtomicU64::new(0);
    let order = |_: u64| {
        let (db, users, next, failures) = (&db, &users, &next, &failures);
        async move {
            let id = next.fetch_add(1, Ordering::Relaxed);
            let user = &users[(id % users.len() as u64) as usize];
            if let Err(e) = place(db, id as i64, user).await {
                if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("order {id}: {e}");
                }
            }
        }
    };
    let deadline = |d: Duration| Some(Instant::now() + d);
    closed_loop(args.concurrency, 0..u64::MAX, deadline(args.warmup), order).await;
    let t0 = Instant::now();
    let h = closed_loop(
        args.concurrency,
        0..u64::MAX,
        deadline(args.duration),
        order,
    )
    .await;
    let seconds = t0.elapsed().as_secs_f64();

    // The monolith keeps its own invariants too: money and stock conserved, one order per key.
    let (money, orders, sold, requests): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT CAST(SUM(available) AS BIGINT) FROM baseline_accounts), \
         (SELECT CAST(COUNT(*) AS BIGINT) FROM baseline_orders), \
         (SELECT sold FROM baseline_skus WHERE id = 'coffee'), \
         (SELECT CAST(COUNT(*) AS BIGINT) FROM baseline_requests)",
    )
    .fetch_one(db.pool())
    .await?;
    let consistent = money == FUNDS * users.len() as i64 && orders == sold && orders == requests;
    let backend = match db.backend() {
        store::Backend::Sqlite => format!("sqlite(synchronous={})", args.synchronous),
        store::Backend::Postgres => "postgres".into(),
    };
    let report = BaselineReport {
        what: "one order as ONE local transaction: key, debit, credit merchant, take stock, insert order".into(),
        backend,
        concurrency: args.concurrency,
        seconds,
        transactions: h.len(),
        transactions_per_second: h.len() as f64 / seconds,
        latency_ms: Latency::of(&h),
        failures: failures.load(Ordering::Relaxed),
        consistent,
    };
    println!("{report}");
    if let Some(out) = &args.out {
        write_json(out, &report)?;
    }
    Ok(report)
}

/// What the one-database baseline measured, and whether it kept its own books.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BaselineReport {
    pub what: String,
    pub backend: String,
    pub concurrency: u64,
    pub seconds: f64,
    pub transactions: u64,
    pub transactions_per_second: f64,
    pub latency_ms: Latency,
    pub failures: u64,
    /// Money conserved, every order sold its item, one order per key.
    pub consistent: bool,
}

impl BaselineReport {
    /// Whether the monolith kept its own books and every order went through.
    pub fn passed(&self) -> bool {
        self.consistent && self.failures == 0
    }
}

impl std::fmt::Display for BaselineReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} transactions in {:.1} s: {:.1}/s on {}; latency p50 {} ms, p99 {} ms; {}",
            self.transactions,
            self.seconds,
            self.transactions_per_second,
            self.backend,
            self.latency_ms.p50,
            self.latency_ms.p99,
            if self.consistent {
                "money, stock and keys consistent"
            } else {
                "INCONSISTENT"
            }
        )
    }
}
