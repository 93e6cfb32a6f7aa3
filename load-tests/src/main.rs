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
use std::sync::{Arc, Mutex};
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

    let next = Arc::new(AtomicU64::new(1));
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));
    let warmup = args.pairs / 10;
    let run = |limit: u64, record: bool| {
        let tasks = (0..args.concurrency).map(|_| {
            let (api, next, hist, which) =
                (p.api.clone(), next.clone(), hist.clone(), args.service);
            tokio::spawn(async move {
                loop {
                    let gid = next.fetch_add(1, Ordering::Relaxed);
                    if gid > limit {
                        break;
                    }
                    let t = Instant::now();
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
                    if record {
                        hist.lock()
                            .unwrap()
                            .record(t.elapsed().as_micros() as u64)
                            .unwrap();
                    }
                }
            })
        });
        join_all(tasks)
    };
    run(warmup, false).await;
    // Workers leaving the warm-up each took one gid past it; start the measured run there.
    next.store(warmup + 1, Ordering::Relaxed);
    let t0 = Instant::now();
    run(total, true).await;
    let elapsed = t0.elapsed();
    let h = hist.lock().unwrap().clone();
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
        "pair_latency_ms": {
            "p50": h.value_at_quantile(0.50) as f64 / 1000.0,
            "p90": h.value_at_quantile(0.90) as f64 / 1000.0,
            "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
            "max": h.max() as f64 / 1000.0,
        },
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
    let next = Arc::new(AtomicU64::new(0));
    let executed = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));
    let run = |limit: u64, record: bool| {
        let tasks = (0..args.concurrency).map(|_| {
            let (client, next, hist, executed) =
                (client.clone(), next.clone(), hist.clone(), executed.clone());
            let request = &request;
            let mut client = client;
            async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= limit {
                        break;
                    }
                    let t = Instant::now();
                    let r = client
                        .execute(request(i))
                        .await
                        .expect("execute")
                        .into_inner();
                    assert!(
                        matches!(r.status(), pb::Status::Confirming | pb::Status::Succeeded),
                        "transaction {i}: {r:?}"
                    );
                    executed.fetch_add(1, Ordering::Relaxed);
                    if record {
                        hist.lock()
                            .unwrap()
                            .record(t.elapsed().as_micros() as u64)
                            .unwrap();
                    }
                }
            }
        });
        join_all(tasks)
    };
    run(warmup, false).await;
    let warm = executed.load(Ordering::Relaxed);
    // Workers leaving the warm-up each took one index past it; start the measured run there.
    next.store(warmup, Ordering::Relaxed);
    let commits_before = commits(db.url().to_owned()).await;
    let t0 = Instant::now();
    run(total, true).await;
    let decided = t0.elapsed();
    let all = executed.load(Ordering::Relaxed);
    let measured_count = all - warm;
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
        if done as u64 >= all {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let finished = t0.elapsed();
    // PostgreSQL publishes its counters about once a second.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let commits_after = commits(db.url().to_owned()).await;
    let h = hist.lock().unwrap().clone();
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
        "execute_latency_ms": {
            "p50": h.value_at_quantile(0.50) as f64 / 1000.0,
            "p90": h.value_at_quantile(0.90) as f64 / 1000.0,
            "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
            "max": h.max() as f64 / 1000.0,
        },
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
    let buyers = Arc::new(buyers);
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

    let next = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));
    let outcomes = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let t0 = Instant::now();
    let tasks = (0..args.concurrency).map(|_| {
        let (http, next, hist, outcomes, buyers) = (
            http.clone(),
            next.clone(),
            hist.clone(),
            outcomes.clone(),
            buyers.clone(),
        );
        let (url, sku, tag, count) = (
            args.url.clone(),
            args.sku.clone(),
            run_tag.clone(),
            args.count,
        );
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let t = Instant::now();
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
                hist.lock()
                    .unwrap()
                    .record(t.elapsed().as_micros() as u64)
                    .unwrap();
                *outcomes.lock().unwrap().entry(outcome).or_default() += 1;
            }
        }
    });
    join_all(tasks).await;
    let elapsed = t0.elapsed();
    let h = hist.lock().unwrap().clone();
    let report = serde_json::json!({
        "what": "POST /api/v1/orders, one coffee each, unique Idempotency-Keys",
        "run_tag": run_tag,
        "concurrency": args.concurrency,
        "buyers": buyers.len(),
        "orders": args.count,
        "orders_per_second": args.count as f64 / elapsed.as_secs_f64(),
        "latency_ms": {
            "p50": h.value_at_quantile(0.50) as f64 / 1000.0,
            "p90": h.value_at_quantile(0.90) as f64 / 1000.0,
            "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
            "max": h.max() as f64 / 1000.0,
        },
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
