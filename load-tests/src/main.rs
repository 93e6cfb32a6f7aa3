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
    let t0 = Instant::now();
    run(total, true).await;
    let elapsed = t0.elapsed();
    let h = hist.lock().unwrap().clone();
    let measured = total - warmup;
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
