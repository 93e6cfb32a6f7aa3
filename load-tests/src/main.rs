//! load-tests: how fast the platform is, measured on the real binaries over loopback.
//!
//! `participant`: try+confirm pairs per second against one participant service binary over
//! gRPC, on a SQLite file or a PostgreSQL database, with pair latency percentiles; it ends with
//! the service's own audit, so a fast run that lost money is reported as a failure.

use clap::{Parser, Subcommand, ValueEnum};
use futures::future::join_all;
use hdrhistogram::Histogram;
use prost::Message;
use proto::v1::{Op, Outcome};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use testkit::participant::ParticipantProcess;
use testkit::TestDb;

#[derive(Debug, Parser)]
#[command(about = "Measure the tcc-pay services on this machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Try+confirm pairs per second against one participant binary.
    Participant(ParticipantArgs),
    /// TCC global transactions per second through the coordinator binary, with three no-op
    /// participants over loopback.
    Coordinator(CoordinatorArgs),
    /// Orders per second through the public API of a running platform.
    Orders(OrdersArgs),
}

#[derive(Debug, clap::Args)]
struct OrdersArgs {
    /// order-svc's HTTP address.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A bearer token for the buyer (the platform prints one); or give `--jwt-secret` to buy as
    /// `--users` different users (one hot account row serialises a single buyer's orders).
    #[arg(long)]
    token: Option<String>,
    /// The buyer (the token's subject), funded before the run.
    #[arg(long, default_value = "alice")]
    user: String,
    /// order-svc's JWT secret (the platform's is in data/order.jwt-secret): mint tokens for
    /// `--users` buyers `load-0`, `load-1`, ….
    #[arg(long)]
    jwt_secret: Option<String>,
    #[arg(long, default_value_t = 1)]
    users: u64,
    /// The admin token, to fund the buyer and restock before the run.
    #[arg(long)]
    admin_token: String,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    payment_url: String,
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    inventory_url: String,
    #[arg(long, default_value = "coffee")]
    sku: String,
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
    #[arg(long, default_value_t = 2_000)]
    count: u64,
}

#[derive(Debug, clap::Args)]
struct CoordinatorArgs {
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
    /// Transactions to measure (after 10% more as warm-up).
    #[arg(long, default_value_t = 3_000)]
    txns: u64,
    /// SQLite `synchronous`: full or normal.
    #[arg(long, default_value = "full")]
    synchronous: String,
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Which {
    Payment,
    Inventory,
    Order,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, clap::Args)]
struct ParticipantArgs {
    #[arg(long, value_enum)]
    service: Which,
    /// SQLite file in a temporary folder, or a fresh database on the PostgreSQL server of
    /// DATABASE_URL (or a throwaway local cluster when it is unset).
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
    /// Pairs to measure (after 10% more as warm-up).
    #[arg(long, default_value_t = 5_000)]
    pairs: u64,
    /// SQLite `synchronous`: full or normal.
    #[arg(long, default_value = "full")]
    synchronous: String,
    /// Folder with the service binaries (default: beside this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Participant(args) => participant(args).await,
        Command::Coordinator(args) => coordinator(args).await,
        Command::Orders(args) => orders(args).await,
    }
}

fn payload(which: Which, gid: u64) -> Vec<u8> {
    match which {
        Which::Payment => proto::pay::v1::PaymentBranch {
            account_id: "bench".into(),
            amount: 1,
            merchant_id: "merchant".into(),
        }
        .encode_to_vec(),
        Which::Inventory => proto::pay::v1::InventoryBranch {
            sku: "BENCH".into(),
            quantity: 1,
        }
        .encode_to_vec(),
        Which::Order => proto::pay::v1::OrderBranch {
            order_id: gid,
            user_id: "bench".into(),
            sku: "BENCH".into(),
            quantity: 1,
            amount: 1,
        }
        .encode_to_vec(),
    }
}

async fn participant(args: ParticipantArgs) {
    let (name, prefix) = match args.service {
        Which::Payment => ("payment-svc", "PAYMENT_"),
        Which::Inventory => ("inventory-svc", "INVENTORY_"),
        Which::Order => ("order-svc", "ORDER_"),
    };
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf()
    });
    let db = match args.backend {
        Backend::Sqlite => TestDb::sqlite(),
        Backend::Postgres => TestDb::postgres()
            .await
            .expect("a PostgreSQL server (DATABASE_URL or initdb)"),
    };
    let dir = testkit::temp_dir("load-tests-");
    std::env::set_var(format!("{prefix}DB__SYNCHRONOUS"), &args.synchronous);
    std::env::set_var(format!("{prefix}DB__MAX_CONNECTIONS"), "32");
    let p = ParticipantProcess::start(name, &bin_dir.join(name), prefix, &db, dir.path()).await;
    let total = args.pairs + args.pairs / 10;
    match args.service {
        Which::Payment => {
            for (id, available) in [("bench", total as i64), ("merchant", 0)] {
                p.admin(
                    reqwest::Method::PUT,
                    &format!("/admin/accounts/{id}"),
                    Some(serde_json::json!({ "available": available })),
                )
                .await;
            }
        }
        Which::Inventory => {
            p.admin(
                reqwest::Method::PUT,
                "/admin/skus/BENCH",
                Some(serde_json::json!({ "available": total as i64 })),
            )
            .await;
        }
        Which::Order => {}
    }

    let warmup = args.pairs / 10;
    let pair = |gid: u64| {
        let (api, which) = (p.api.clone(), args.service);
        async move {
            let body = payload(which, gid);
            for op in [Op::Try, Op::Confirm] {
                let r = api
                    .call(gid, "bench", op, &body)
                    .await
                    .expect("call answered");
                assert_eq!(
                    r.outcome(),
                    Outcome::Success,
                    "{op:?} {gid}: {} {}",
                    r.code,
                    r.message
                );
            }
        }
    };
    closed_loop(args.concurrency, 1..warmup + 1, pair).await;
    let t0 = Instant::now();
    let h = closed_loop(args.concurrency, warmup + 1..total + 1, pair).await;
    let elapsed = t0.elapsed();
    let measured = h.len();
    let audit = p.admin_get("/admin/audit").await;
    let backend = match args.backend {
        Backend::Sqlite => format!("sqlite(synchronous={})", args.synchronous),
        Backend::Postgres => "postgres".into(),
    };
    let report = serde_json::json!({
        "service": name,
        "backend": backend,
        "concurrency": args.concurrency,
        "pairs": measured,
        "seconds": elapsed.as_secs_f64(),
        "pairs_per_second": measured as f64 / elapsed.as_secs_f64(),
        "pair_latency_ms": latency_ms(&h),
        "audit": audit,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    if audit.get("consistent").is_some_and(|c| c != true) {
        eprintln!("AUDIT FAILED");
        std::process::exit(1);
    }
}

async fn coordinator(args: CoordinatorArgs) {
    use proto::v1 as pb;
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf()
    });
    let db = match args.backend {
        Backend::Sqlite => TestDb::sqlite(),
        Backend::Postgres => TestDb::postgres()
            .await
            .expect("a PostgreSQL server (DATABASE_URL or initdb)"),
    };
    let dir = testkit::temp_dir("load-tests-");
    let parts = [
        testkit::scripted::Scripted::start().await,
        testkit::scripted::Scripted::start().await,
        testkit::scripted::Scripted::start().await,
    ];
    let (http, grpc) = (testkit::free_port(), testkit::free_port());
    let spec = testkit::ServiceSpec::new("coordinator", bin_dir.join("coordinator"), dir.path())
        .env("COORDINATOR_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("COORDINATOR_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("COORDINATOR_DATABASE_URL", db.url())
        .env("COORDINATOR_DATA_DIR", dir.path().join("data"))
        .env("COORDINATOR_ADMIN_TOKEN", "load-tests-admin-token")
        .env("COORDINATOR_DB__SYNCHRONOUS", &args.synchronous)
        .env("COORDINATOR_DB__MAX_CONNECTIONS", "32")
        .env("RUST_LOG", "warn")
        .env("LOG_FORMAT", "json")
        .ready_url(format!("http://127.0.0.1:{http}/readyz"));
    let _service = testkit::Service::start(spec)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .connect_lazy();
    let client = pb::coordinator_client::CoordinatorClient::new(channel);
    let request = |i: u64| pb::ExecuteRequest {
        mode: pb::Mode::Tcc as i32,
        idempotency_key: format!("bench-{i}"),
        branches: parts
            .iter()
            .enumerate()
            .map(|(j, p)| pb::BranchSpec {
                branch_id: format!("b{j}"),
                participant: p.url(),
                payload: vec![1, 2, 3],
                depends_on: vec![],
            })
            .collect(),
        timeout_ms: 30_000,
        branch_timeout_ms: 5_000,
        wait_ms: 30_000,
        concurrent: false,
    };
    let commits = |db_url: String| async move {
        match args.backend {
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&db_url).await.ok()?;
                sqlx::query_scalar::<_, i64>(
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
                )
                .fetch_one(&pool)
                .await
                .ok()
            }
            Backend::Sqlite => None,
        }
    };
    let warmup = args.txns / 10;
    let total = warmup + args.txns;
    let execute = |i: u64| {
        let (mut client, request) = (client.clone(), request(i));
        async move {
            let r = client.execute(request).await.expect("execute").into_inner();
            assert!(
                matches!(r.status(), pb::Status::Confirming | pb::Status::Succeeded),
                "transaction {i}: {r:?}"
            );
        }
    };
    closed_loop(args.concurrency, 0..warmup, execute).await;
    let commits_before = commits(db.url().to_owned()).await;
    let t0 = Instant::now();
    let h = closed_loop(args.concurrency, warmup..total, execute).await;
    let decided = t0.elapsed();
    let measured_count = h.len();
    // Wait until every transaction is terminal.
    let http_client = reqwest::Client::new();
    loop {
        let counts: serde_json::Value = http_client
            .get(format!(
                "http://127.0.0.1:{http}/api/v1/transactions?limit=1"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let done = counts["counts"]["succeeded"].as_i64().unwrap_or(0);
        if done as u64 >= total {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let finished = t0.elapsed();
    // PostgreSQL publishes its counters about once a second.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let commits_after = commits(db.url().to_owned()).await;
    let measured = measured_count as f64;
    let backend = match args.backend {
        Backend::Sqlite => format!("sqlite(synchronous={})", args.synchronous),
        Backend::Postgres => "postgres".into(),
    };
    let report = serde_json::json!({
        "what": "TCC global transactions, 3 no-op participants",
        "backend": backend,
        "concurrency": args.concurrency,
        "transactions": measured_count,
        "decided_per_second": measured / decided.as_secs_f64(),
        "completed_per_second": measured / finished.as_secs_f64(),
        "execute_latency_ms": latency_ms(&h),
        "database_transactions_per_global_transaction": match (commits_before, commits_after) {
            (Some(b), Some(a)) => serde_json::json!((a - b) as f64 / measured),
            _ => serde_json::Value::Null,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}

async fn orders(args: OrdersArgs) {
    let http = reqwest::Client::new();
    let run_tag = format!("run-{}", std::process::id());
    // The buyers and their tokens.
    let buyers: Vec<(String, String)> = match (&args.jwt_secret, &args.token) {
        (Some(secret), _) => (0..args.users.max(1))
            .map(|i| {
                let user = format!("load-{i}");
                let token = mint(secret, &user);
                (user, token)
            })
            .collect(),
        (None, Some(token)) => vec![(args.user.clone(), token.clone())],
        (None, None) => panic!("give --token or --jwt-secret"),
    };
    // Enough money and stock that every order can succeed.
    for (user, _) in &buyers {
        let created = http
            .put(format!("{}/admin/accounts/{user}", args.payment_url))
            .bearer_auth(&args.admin_token)
            .json(&serde_json::json!({ "available": 0 }))
            .send()
            .await
            .expect("payment-svc reachable");
        assert!(
            created.status().is_success(),
            "creating {user} failed: {}",
            created.status()
        );
        let funded = http
            .post(format!(
                "{}/admin/accounts/{user}/deposits",
                args.payment_url
            ))
            .bearer_auth(&args.admin_token)
            .json(&serde_json::json!({ "amount": 1_000_000_000_000_i64 }))
            .send()
            .await
            .expect("payment-svc reachable");
        assert!(
            funded.status().is_success(),
            "funding failed: {}",
            funded.status()
        );
    }

    let restocked = http
        .post(format!(
            "{}/admin/skus/{}/restocks",
            args.inventory_url, args.sku
        ))
        .bearer_auth(&args.admin_token)
        .json(&serde_json::json!({ "quantity": args.count as i64 + 100 }))
        .send()
        .await
        .expect("inventory-svc reachable");
    assert!(
        restocked.status().is_success(),
        "restocking failed: {}",
        restocked.status()
    );

    let outcomes = Mutex::new(std::collections::BTreeMap::<String, u64>::new());
    let place = |i: u64| {
        let (http, buyers, outcomes) = (&http, &buyers, &outcomes);
        let (url, sku, tag) = (&args.url, &args.sku, &run_tag);
        async move {
            let (_, token) = &buyers[(i % buyers.len() as u64) as usize];
            let res = http
                .post(format!("{url}/api/v1/orders"))
                .bearer_auth(token)
                .header("Idempotency-Key", format!("{tag}-{i}"))
                .json(&serde_json::json!({ "sku": sku, "quantity": 1 }))
                .send()
                .await;
            let outcome = match res {
                Ok(r) => {
                    let status = r.status();
                    let body: serde_json::Value = r.json().await.unwrap_or_default();
                    match body["status"].as_str() {
                        Some(s) => s.to_owned(),
                        None => format!("http {status}"),
                    }
                }
                Err(e) => format!("error: {e}"),
            };
            *outcomes.lock().unwrap().entry(outcome).or_default() += 1;
        }
    };
    let t0 = Instant::now();
    let h = closed_loop(args.concurrency, 0..args.count, place).await;
    let elapsed = t0.elapsed();
    let report = serde_json::json!({
        "what": "POST /api/v1/orders, one coffee each, unique Idempotency-Keys",
        "run_tag": run_tag,
        "concurrency": args.concurrency,
        "buyers": buyers.len(),
        "orders": args.count,
        "orders_per_second": args.count as f64 / elapsed.as_secs_f64(),
        "latency_ms": latency_ms(&h),
        "outcomes": *outcomes.lock().unwrap(),
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}

/// An HS256 token for `user` with order-svc's default issuer and audience.
fn mint(secret: &str, user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({
        "sub": user, "iss": "tcc-pay-dev", "aud": "tcc-pay-orders",
        "exp": now + 3600, "nbf": now, "iat": now,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing")
}

/// Calls `op(i)` for every `i` in `range` from `concurrency` workers, each sending its next call
/// when the previous one is answered (closed loop); returns the latencies in microseconds.
async fn closed_loop<F, Fut>(concurrency: u64, range: std::ops::Range<u64>, op: F) -> Histogram<u64>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let next = AtomicU64::new(range.start);
    let workers = (0..concurrency.max(1)).map(|_| async {
        let mut hist =
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= range.end {
                return hist;
            }
            let t = Instant::now();
            op(i).await;
            hist.saturating_record(t.elapsed().as_micros() as u64);
        }
    });
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    for h in join_all(workers).await {
        all.add(&h).expect("same bounds");
    }
    all
}

/// p50, p90, p99 and max of a histogram in microseconds, as milliseconds.
fn latency_ms(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |us: u64| us as f64 / 1000.0;
    serde_json::json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "max": ms(h.max()),
    })
}
