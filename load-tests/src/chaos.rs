//! `chaos`: the course lab's experiment as one command. A platform of its own (the four
//! services as `platform serve …` processes on fresh databases), orders through the public API
//! with failing and duplicate shares and client retries, and meanwhile one service after another
//! SIGKILLed, left down a moment and restarted. Then the audit: every transaction terminal,
//! money and stock conserved, all parties agreeing, one order per key.

use crate::bench::Backend;
use crate::error::LoadError;
use crate::run::{self, RunArgs};
use crate::target::{parse_duration, Target};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use testkit::platform::{Platform, PlatformOptions, SERVICES};

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// SQLite files, or fresh databases on the PostgreSQL server of DATABASE_URL (or a throwaway
    /// local cluster when it is unset).
    #[arg(long, value_enum, default_value = "sqlite")]
    pub backend: Backend,
    /// Services to kill, in turn (coordinator, order, payment, inventory).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "payment,coordinator,inventory,order"
    )]
    pub kill: Vec<String>,
    /// Time between kills.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub interval: Duration,
    /// How long a killed service stays down before it is restarted.
    #[arg(long, value_parser = parse_duration, default_value = "500ms")]
    pub down: Duration,
    /// How long the load runs.
    #[arg(long, value_parser = parse_duration, default_value = "20s")]
    pub duration: Duration,
    /// Orders in flight at once (closed loop).
    #[arg(long, default_value_t = 8)]
    pub concurrency: u64,
    /// Share of orders meant to be refused (no money or no stock), 0 to 1.
    #[arg(long, default_value_t = 0.1)]
    pub fail_share: f64,
    /// Share of orders sent twice with the same key (replayed, or as concurrent twins), 0 to 1.
    #[arg(long, default_value_t = 0.1)]
    pub duplicate_share: f64,
    /// Share of orders refunded once confirmed (a Saga each, under the same faults).
    #[arg(long, default_value_t = 0.1)]
    pub refund_share: f64,
    /// Times a client resends an order (same key) after a transport error or a 5xx.
    #[arg(long, default_value_t = 8)]
    pub retries: u32,
    /// How long the audit waits for in-flight transactions to finish.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub settle: Duration,
    /// Folder with the `platform` binary (default: beside this binary).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Keep the platform's folder (service logs, SQLite files) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Write the run's report as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The platform as containers (one PostgreSQL container per service, Docker needed; the
    /// images are built from the `platform` binary, nothing is pulled), and besides SIGKILLs,
    /// network partitions and frozen processes, of the services and of their databases, in
    /// turn: every `--interval`, the next of (partition, pause, kill) on the next of the eight
    /// containers, held for `--down`.
    #[arg(long)]
    pub containers: bool,
}

/// A throwaway secret for this platform only.
fn token() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

pub async fn chaos(args: ChaosArgs) -> Result<bool, LoadError> {
    if args.containers {
        return containers(args).await;
    }
    for name in &args.kill {
        if !SERVICES.contains(&name.as_str()) {
            return Err(LoadError::Args(format!(
                "--kill: {name:?} is not one of {}",
                SERVICES.join(", ")
            )));
        }
    }
    let bin = platform_binary(&args)?;
    let db = match args.backend {
        Backend::Sqlite => testkit::TestDb::sqlite(),
        Backend::Postgres => testkit::TestDb::postgres()
            .await
            .ok_or(LoadError::NoPostgres)?,
    };
    let options = PlatformOptions::new(&token(), &token());
    let mut platform = Platform::start(&bin, db, &options)
        .await
        .map_err(|e| LoadError::Platform(e.to_string()))?;
    eprintln!(
        "chaos: platform up ({:?}) in {}",
        args.backend,
        platform.dir.path().display()
    );
    let target = Target {
        order_url: platform.urls["order"].clone(),
        payment_url: platform.urls["payment"].clone(),
        inventory_url: platform.urls["inventory"].clone(),
        coordinator_url: platform.urls["coordinator"].clone(),
        data: platform.dir.path().to_owned(),
        admin_token: Some(options.admin_token.clone()),
        tokens: None,
        jwt_secret: Some(options.jwt_secret.clone()),
    };
    let load = start_load(&args, target.clone()).await?;
    let start = Instant::now();
    let mut kills = 0;
    while start.elapsed() + args.interval < args.duration && !load.is_finished() {
        tokio::time::sleep(args.interval).await;
        let name = &args.kill[kills % args.kill.len()];
        let service = platform.service(name).expect("checked above");
        service.kill();
        let killed_at = start.elapsed();
        tokio::time::sleep(args.down).await;
        let t = Instant::now();
        service
            .restart()
            .await
            .map_err(|e| LoadError::Platform(format!("restarting {name}: {e}")))?;
        kills += 1;
        eprintln!(
            "chaos: {:>5.1}s SIGKILL {name}, restarted after {:.0} ms down + {:.0} ms to ready",
            killed_at.as_secs_f64(),
            args.down.as_secs_f64() * 1000.0,
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    let report = load
        .await
        .map_err(|e| LoadError::Platform(format!("the load panicked: {e}")))??;
    let exactly_once = report.exactly_once();
    let confirmed = report.confirmed();
    if confirmed == 0 {
        eprintln!("chaos: no order was confirmed, so the experiment proves nothing");
    }
    eprintln!("chaos: {kills} kills; auditing");
    let audit = audit::run(&platform.endpoints(), args.settle).await?;
    println!("{audit}");
    if args.keep {
        // The services stop (dropped); their logs and databases stay.
        let Platform { dir, .. } = platform;
        eprintln!("chaos: kept {}", dir.keep().display());
    }
    Ok(exactly_once && confirmed > 0 && audit.ok)
}

/// The `platform` binary: `--bin-dir`, or beside this one.
fn platform_binary(args: &ChaosArgs) -> Result<PathBuf, LoadError> {
    let bin = match &args.bin_dir {
        Some(d) => d.join("platform"),
        None => std::env::current_exe()
            .map_err(|source| LoadError::Io {
                what: "this binary's path".into(),
                source,
            })?
            .with_file_name("platform"),
    };
    if !bin.exists() {
        return Err(LoadError::Args(format!(
            "{} is missing: build it with `cargo build --release`",
            bin.display()
        )));
    }
    Ok(bin)
}

/// `chaos --containers`: the same load and audit, on the platform as containers, with
/// partitions and pauses as well as kills, of the services and of their databases.
async fn containers(args: ChaosArgs) -> Result<bool, LoadError> {
    use testkit::containers::{Cluster, FaultKind, Node, Svc};
    let bin = platform_binary(&args)?;
    if std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        return Err(LoadError::Platform(
            "--containers needs a Docker engine, and `docker info` does not answer".into(),
        ));
    }
    testkit::containers::ensure_images(&bin);
    let cluster = Cluster::start(&[]).await;
    eprintln!(
        "chaos: the platform is up as containers on {}",
        cluster.network
    );
    let endpoints = cluster.endpoints();
    let target = Target {
        order_url: endpoints.order.clone(),
        payment_url: endpoints.payment.clone(),
        inventory_url: endpoints.inventory.clone(),
        coordinator_url: endpoints.coordinator.clone(),
        data: PathBuf::from("/nonexistent"),
        admin_token: None,
        tokens: Some(cluster.tokens.clone()),
        jwt_secret: Some(cluster.jwt_secret.clone()),
    };
    let load = start_load(&args, target).await?;
    // Every container in turn, one kind of fault per round of eight: partitions, then pauses,
    // then kills; each container meets each kind once in 24 faults.
    let nodes: Vec<Node> = Svc::ALL
        .into_iter()
        .flat_map(|s| [Node::Service(s), Node::Database(s)])
        .collect();
    let start = Instant::now();
    let mut faults = std::collections::BTreeMap::<String, u32>::new();
    let mut i = 0;
    while start.elapsed() + args.interval + args.down < args.duration && !load.is_finished() {
        tokio::time::sleep(args.interval).await;
        let (kind, node) = (
            FaultKind::ALL[(i / nodes.len()) % 3],
            nodes[i % nodes.len()],
        );
        let at = start.elapsed();
        let t = Instant::now();
        cluster.fault(kind, node, args.down).await;
        eprintln!(
            "chaos: {:>5.1}s {} {node}, back after {:.0} ms",
            at.as_secs_f64(),
            kind.name(),
            t.elapsed().as_secs_f64() * 1000.0
        );
        *faults.entry(node.to_string()).or_default() += 1;
        i += 1;
    }
    let report = load
        .await
        .map_err(|e| LoadError::Platform(format!("the load panicked: {e}")))??;
    eprintln!("chaos: {i} faults: {faults:?}; auditing");
    let audit = audit::run(&endpoints, args.settle).await?;
    println!("{audit}");
    let confirmed = report.confirmed();
    if confirmed == 0 {
        eprintln!("chaos: no order was confirmed, so the experiment proves nothing");
    }
    Ok(report.exactly_once() && confirmed > 0 && audit.ok)
}

/// The chaos load on `target`: a price for coffee (run creates the buyers, the merchant and
/// stock), set up before the first fault (chaos is for the orders, not for the set-up), then
/// sent in the background.
async fn start_load(
    args: &ChaosArgs,
    target: Target,
) -> Result<tokio::task::JoinHandle<Result<run::RunReport, LoadError>>, LoadError> {
    target
        .admin()?
        .order
        .put_catalog_item("coffee", "coffee", 450)
        .await?;
    let run_args = RunArgs {
        target,
        concurrency: Some(args.concurrency),
        rate: None,
        duration: args.duration,
        count: None,
        warmup: Duration::ZERO,
        users: 64,
        merchant: "merchant".into(),
        sku: "coffee".into(),
        fail_share: args.fail_share,
        duplicate_share: args.duplicate_share,
        refund_share: args.refund_share,
        retries: args.retries,
        tag: Some(format!("chaos-{}", std::process::id())),
        max_in_flight: 4096,
        out: args.out.clone(),
        quiet: true,
        profile: None,
    };
    let prepared = run::prepare(&run_args).await?;
    Ok(tokio::spawn(run::load(run_args, prepared)))
}
