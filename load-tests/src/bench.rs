//! Micro-benchmarks of one binary at a time: a participant service (try+confirm pairs over
//! gRPC) and the coordinator (TCC transactions with three no-op participants). They isolate what
//! a `run` through the public API mixes together.

use crate::error::LoadError;
use crate::measure::{closed_loop, Latency};
use clap::ValueEnum;
use prost::Message;
use proto::v1::{Op, Outcome};
use std::path::PathBuf;
use std::time::Instant;
use testkit::participant::ParticipantProcess;

/// The admin token of the coordinator under test (its reads need it).
const ADMIN_TOKEN: &str = "load-tests-admin-token";
use testkit::TestDb;

#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// The coordinator's database: a SQLite file, or PostgreSQL (DATABASE_URL's server, or a
    /// throwaway local cluster).
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: Backend,
    /// Transactions in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u64,
    /// Transactions to measure (after 10% more as warm-up).
    #[arg(long, default_value_t = 3_000)]
    txns: u64,
    /// SQLite `synchronous`: full or normal.
    #[arg(long, default_value = "full")]
    synchronous: String,
    /// Folder with the `coordinator` binary (default: beside this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Which {
    Payment,
    Inventory,
    Order,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, clap::Args)]
pub struct ParticipantArgs {
    /// The participant binary to measure (payment-svc, inventory-svc or order-svc).
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

fn payload(which: Which, gid: u64) -> Vec<u8> {
    match which {
        Which::Payment => proto::pay::v1::PaymentBranch {
            account_id: "bench".into(),
            amount: 1,
            merchant_id: "merchant".into(),
            refund: None,
        }
        .encode_to_vec(),
        Which::Inventory => proto::pay::v1::InventoryBranch {
            sku: "BENCH".into(),
            quantity: 1,
            refund: None,
        }
        .encode_to_vec(),
        Which::Order => proto::pay::v1::OrderBranch {
            order_id: gid,
            user_id: "bench".into(),
            sku: "BENCH".into(),
            quantity: 1,
            amount: 1,
            refund: None,
        }
        .encode_to_vec(),
    }
}

/// `name` in `--bin-dir` (default: beside this binary), or a clear error saying how to build it.
fn binary(bin_dir: &Option<PathBuf>, name: &str) -> Result<PathBuf, LoadError> {
    let dir = match bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(std::path::Path::to_path_buf))
            .unwrap_or_default(),
    };
    let path = dir.join(name);
    if !path.is_file() {
        return Err(LoadError::Args(format!(
            "{} does not exist: build it with the others (`cargo build --release` at the \
             repository's root), or pass --bin-dir",
            path.display()
        )));
    }
    Ok(path)
}

async fn database(backend: Backend) -> Result<TestDb, LoadError> {
    match backend {
        Backend::Sqlite => Ok(TestDb::sqlite()),
        Backend::Postgres => TestDb::postgres().await.ok_or(LoadError::NoPostgres),
    }
}

pub async fn participant(args: ParticipantArgs) -> Result<(), LoadError> {
    let (name, prefix) = match args.service {
        Which::Payment => ("payment-svc", "PAYMENT_"),
        Which::Inventory => ("inventory-svc", "INVENTORY_"),
        Which::Order => ("order-svc", "ORDER_"),
    };
    let db = database(args.backend).await?;
    let dir = testkit::temp_dir("load-tests-");
    std::env::set_var(format!("{prefix}DB__SYNCHRONOUS"), &args.synchronous);
    std::env::set_var(format!("{prefix}DB__MAX_CONNECTIONS"), "32");
    let p = ParticipantProcess::start(name, &binary(&args.bin_dir, name)?, prefix, &db, dir.path())
        .await;
    let total = args.pairs + args.pairs / 10;
    let api = admin::Api::new(name, p.http_url.clone(), testkit::participant::ADMIN_TOKEN);
    let seeded = match args.service {
        Which::Payment => {
            let payment = admin::Payment(api.clone());
            match payment.open_account("bench", total as i64).await {
                Ok(_) => payment.open_account("merchant", 0).await.map(drop),
                Err(e) => Err(e),
            }
        }
        Which::Inventory => admin::Inventory(api.clone())
            .open_sku("BENCH", total as i64)
            .await
            .map(drop),
        Which::Order => Ok(()),
    };
    seeded.unwrap_or_else(|e| panic!("seeding {name}: {e}"));

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
    closed_loop(args.concurrency, 1..warmup + 1, None, pair).await;
    let t0 = Instant::now();
    let h = closed_loop(args.concurrency, warmup + 1..total + 1, None, pair).await;
    let elapsed = t0.elapsed();
    let measured = h.len();
    let audit: serde_json::Value = api
        .get("/admin/audit")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
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
        "pair_latency_ms": Latency::of(&h),
        "audit": audit,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    if audit.get("consistent").is_some_and(|c| c != true) {
        eprintln!("AUDIT FAILED");
        std::process::exit(1);
    }
    Ok(())
}

pub async fn coordinator(args: CoordinatorArgs) -> Result<(), LoadError> {
    use proto::v1 as pb;
    let db = database(args.backend).await?;
    let dir = testkit::temp_dir("load-tests-");
    let parts = [
        testkit::scripted::Scripted::start().await,
        testkit::scripted::Scripted::start().await,
        testkit::scripted::Scripted::start().await,
    ];
    let (http, grpc) = (testkit::free_port(), testkit::free_port());
    let spec = testkit::ServiceSpec::new(
        "coordinator",
        binary(&args.bin_dir, "coordinator")?,
        dir.path(),
    )
    .env("COORDINATOR_HTTP_ADDR", format!("127.0.0.1:{http}"))
    .env("COORDINATOR_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
    .env("COORDINATOR_DATABASE_URL", db.url())
    .env("COORDINATOR_DATA_DIR", dir.path().join("data"))
    .env("COORDINATOR_ADMIN_TOKEN", ADMIN_TOKEN)
    // One CA with the scripted participants and this client: mutual TLS as in production.
    .env("COORDINATOR_TLS__DIR", testkit::pki_dir())
    .env("COORDINATOR_DB__SYNCHRONOUS", &args.synchronous)
    .env("COORDINATOR_DB__MAX_CONNECTIONS", "32")
    .env("RUST_LOG", "warn")
    .env("LOG_FORMAT", "json")
    .ready_url(format!("http://127.0.0.1:{http}/readyz"));
    let _service = testkit::Service::start(spec)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let channel = trust::endpoint(
        &format!("http://127.0.0.1:{grpc}"),
        Some(&testkit::trust("order")),
        Some("coordinator"),
    )
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
                retriable: false,
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
    // Until `n` transactions in all have succeeded (the second phase follows the answers).
    let http_client = reqwest::Client::new();
    let succeeded = |n: u64| {
        let http_client = &http_client;
        async move {
            loop {
                let counts: serde_json::Value = http_client
                    .get(format!(
                        "http://127.0.0.1:{http}/api/v1/transactions?limit=1"
                    ))
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let done = counts["counts"]["succeeded"].as_i64().unwrap_or(0);
                if done as u64 >= n {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    // PostgreSQL publishes its commit counter about once a second.
    let published = || tokio::time::sleep(std::time::Duration::from_millis(1500));
    closed_loop(args.concurrency, 0..warmup, None, execute).await;
    // The warm-up's Confirms and last checkpoints are not the measured transactions' commits.
    succeeded(warmup).await;
    published().await;
    let commits_before = commits(db.url().to_owned()).await;
    let t0 = Instant::now();
    let h = closed_loop(args.concurrency, warmup..total, None, execute).await;
    let decided = t0.elapsed();
    let measured_count = h.len();
    succeeded(total).await;
    let finished = t0.elapsed();
    published().await;
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
        "execute_latency_ms": Latency::of(&h),
        "database_transactions_per_global_transaction": match (commits_before, commits_after) {
            (Some(b), Some(a)) => serde_json::json!((a - b) as f64 / measured),
            _ => serde_json::Value::Null,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    Ok(())
}
