//! The whole platform in one command: `cargo run --release --bin platform`.
//!
//! Starts the coordinator, order-svc, payment-svc and inventory-svc as four separate processes
//! (this binary re-executed as `platform serve <service>`), each with its own SQLite file under
//! `./data`, talking over loopback exactly as in production. On first start it seeds demo
//! accounts, a merchant, stock and a catalog; it prints the ports and a ready-to-paste `curl`
//! with a fresh token. A service that dies (try `kill -9` on one) is restarted after a few
//! seconds, and the coordinator's recovery finishes what was in flight. Ctrl-C stops everything
//! cleanly; a restart keeps the data; `--reset` starts over.

mod trace_ui;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(
    about = "Run the tcc-pay platform locally",
    after_help = "Exit status: 0 stopped cleanly (Ctrl-C); 1 could not start or run (the reason \
                  and a hint are printed); 2 bad arguments."
)]
struct Cli {
    /// Folder for the databases, logs and dev secrets.
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Delete the data folder first (and, with `--postgres`, drop the four databases).
    #[arg(long)]
    reset: bool,
    /// Keep the four databases on this PostgreSQL server instead of SQLite files in the data
    /// folder: `tcc_coordinator`, `tcc_order`, `tcc_payment` and `tcc_inventory`, created when
    /// missing. E.g. `postgres://postgres@127.0.0.1:5432/postgres`.
    #[arg(long)]
    postgres: Option<String>,
    /// Added to every port (HTTP 8080-8082 and 8090, gRPC 50050-50053), to run a second
    /// platform beside the first (the tests do). At most 15482 (the highest port, 50053 plus
    /// the offset, must exist).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=15482))]
    port_offset: u16,
    /// Do not start the trace UI (http://127.0.0.1:16686, OTLP on 4317, plus --port-offset)
    /// nor export the services' spans to it.
    #[arg(long)]
    no_trace_ui: bool,
    /// The trace UI's HTTP port (default 16686 plus --port-offset; its OTLP receiver is on
    /// 4317 plus --port-offset).
    #[arg(long)]
    trace_ui_port: Option<u16>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one service in this process (configured by its environment variables): how the
    /// platform and the containers start each service, not a command for people.
    #[command(hide = true)]
    Serve {
        #[arg(value_enum)]
        service: Which,
    },
    /// Run the trace UI alone: the Jaeger UI with an in-memory OTLP receiver.
    TraceUi(trace_ui::TraceUi),
    /// Exit 0 if `url` answers 2xx within 2 s, 1 otherwise: a container's health check (the
    /// images carry no curl).
    Probe {
        /// The URL to ask (e.g. `http://127.0.0.1:8080/readyz`).
        url: String,
    },
    /// Print an access token for the public API, signed with order-svc's secret: the one in
    /// `ORDER_JWT__SECRET` or the file `ORDER_JWT__SECRET_FILE` names (as in the compose
    /// containers), else the dev secret in the
    /// data folder (`--data`).
    Token {
        /// The user the token is for (the demo users: alice, bob, carol).
        #[arg(long, default_value = "alice")]
        sub: String,
        /// Lifetime in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
    /// Issue a CA and a certificate for each role (coordinator, order, payment, inventory,
    /// operator) into DIR (kept: what is there already stays). With --split OUT, also give each
    /// service a folder of its own, OUT/<service>, holding the CA's certificate and its own
    /// certificate and key only: what it reads in production with `<PREFIX>TLS__DIR` (compose
    /// runs this once; the CA's key and the operator's stay in DIR).
    Certs {
        /// The CA's folder: its key and certificate, and every role's certificate and key
        /// (made when missing, kept when present).
        #[arg(long)]
        dir: PathBuf,
        /// Also copy, per service, what that service needs into OUT/<service>.
        #[arg(long)]
        split: Option<PathBuf>,
    },
    /// Switch faults on a participant of the running platform (dev mode only): the next N calls
    /// of an op are delayed, hang until released, fail, or error. E.g. `platform fault payment
    /// try delay --ms 4000`, `platform fault payment list`, `platform fault payment release`,
    /// `platform fault payment clear`. Uses the platform's admin token (`--data`) and ports
    /// (`--port-offset`).
    Fault(FaultArgs),
    /// Create the demo accounts, stock and catalog on running services (what the platform does
    /// on its first start), e.g. on the compose platform.
    Seed {
        /// The admin token the services share (default: `ADMIN_TOKEN`, else each service's own
        /// in `ORDER_ADMIN_TOKEN`, `PAYMENT_ADMIN_TOKEN` and `INVENTORY_ADMIN_TOKEN`, else
        /// `<data>/admin-token`).
        #[arg(long)]
        admin_token: Option<String>,
        /// order-svc's HTTP address (the catalog).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        order_url: String,
        /// payment-svc's HTTP address (the accounts).
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        payment_url: String,
        /// inventory-svc's HTTP address (the stock).
        #[arg(long, default_value = "http://127.0.0.1:8082")]
        inventory_url: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Coordinator,
    Order,
    Payment,
    Inventory,
}

impl Which {
    const ALL: [Which; 4] = [
        Which::Coordinator,
        Which::Payment,
        Which::Inventory,
        Which::Order,
    ];

    fn name(self) -> &'static str {
        match self {
            Which::Coordinator => "coordinator",
            Which::Order => "order",
            Which::Payment => "payment",
            Which::Inventory => "inventory",
        }
    }

    fn env_prefix(self) -> &'static str {
        match self {
            Which::Coordinator => "COORDINATOR_",
            Which::Order => "ORDER_",
            Which::Payment => "PAYMENT_",
            Which::Inventory => "INVENTORY_",
        }
    }

    /// (HTTP, gRPC) ports: the services' own defaults.
    fn default_ports(self) -> (u16, u16) {
        match self {
            Which::Coordinator => (8090, 50050),
            Which::Order => (8080, 50051),
            Which::Payment => (8081, 50052),
            Which::Inventory => (8082, 50053),
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Serve { service }) => return serve(service).await,
        Some(Cmd::Probe { url }) => return probe(&url).await,
        Some(Cmd::TraceUi(ui)) => return report(serve_trace_ui(ui).await),
        Some(Cmd::Token { sub, hours }) => return report(print_token(&cli.data, &sub, hours)),
        Some(Cmd::Certs { dir, split }) => return report(issue_certs(&dir, split.as_deref())),
        Some(Cmd::Fault(fault)) => return report(fault.send(&cli.data, cli.port_offset).await),
        Some(Cmd::Seed {
            admin_token,
            order_url,
            payment_url,
            inventory_url,
        }) => {
            let seeded = async {
                let own = |s: &str| std::env::var(format!("{s}_ADMIN_TOKEN")).ok();
                let tokens = match admin_token.or_else(|| std::env::var("ADMIN_TOKEN").ok()) {
                    Some(t) => admin::Tokens::same(t),
                    None => match (own("ORDER"), own("PAYMENT"), own("INVENTORY")) {
                        (Some(order), Some(payment), Some(inventory)) => admin::Tokens {
                            coordinator: String::new(),
                            order,
                            payment,
                            inventory,
                        },
                        _ => admin::Tokens::same(
                            std::fs::read_to_string(cli.data.join("admin-token"))
                                .map(|t| t.trim().to_owned())
                                .map_err(io(&cli.data.join("admin-token")))?,
                        ),
                    },
                };
                let admin = admin::Admin::new(&admin::Endpoints {
                    coordinator: String::new(),
                    order: order_url,
                    payment: payment_url,
                    inventory: inventory_url,
                    tokens,
                });
                seed_demo(&admin).await?;
                println!("demo data seeded: alice ($100.00), bob ($25.00), carol ($0), merchant; coffee, mug, vinyl");
                Ok(())
            };
            return report(seeded.await);
        }
        None => {}
    }
    report(run(cli).await)
}

/// Why the platform could not start or keep running; printed once, as `platform: …`.
#[derive(Debug, thiserror::Error)]
enum PlatformError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("--postgres {0:?} is not a postgres:// URL")]
    NotPostgresUrl(String),
    #[error("--postgres {0}")]
    Postgres(String),
    #[error("{service} exited with {status} while starting{cause}; its log: {}", log.display())]
    Exited {
        service: &'static str,
        status: std::process::ExitStatus,
        log: PathBuf,
        /// ": <the service's own reason>" and a hint, from its log, or empty.
        cause: String,
    },
    #[error("{0} was not ready within 60 s")]
    NotReady(&'static str),
    #[error("seeding the demo data: {0}")]
    Seed(#[from] admin::AdminError),
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
    #[error(transparent)]
    Config(#[from] host::config::ConfigError),
    #[error(transparent)]
    TraceUi(#[from] trace_ui::TraceUiError),
    #[error("fault: {0}")]
    Fault(String),
}

/// `platform trace-ui`: until SIGTERM or Ctrl-C.
async fn serve_trace_ui(ui: trace_ui::TraceUi) -> Result<(), PlatformError> {
    let (http, otlp) = (ui.http, ui.otlp);
    let bound = ui.bind().await?;
    println!("trace-ui: the Jaeger UI on http://{http}/, OTLP gRPC on {otlp}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| PlatformError::Io {
            what: "SIGTERM's handler".into(),
            source,
        })?;
    tokio::select! {
        r = bound.run() => Ok(r?),
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// An I/O error on `path`, for `map_err`.
fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> PlatformError + '_ {
    move |source| PlatformError::Io {
        what: path.display().to_string(),
        source,
    }
}

/// Set by the supervisor on the services it starts: its pid.
const PARENT_ENV: &str = "TCC_PLATFORM_PARENT";

/// A service started by the supervisor stops with it, however it ends: a `kill -9` of the
/// platform must not leave four orphans holding the ports (they are in their own process group,
/// so no terminal signal reaches them). Linux's parent-death signal does it, set from here
/// because the workspace forbids the `unsafe` a pre-exec hook needs.
fn follow_the_supervisor() {
    let Some(parent) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
        eprintln!("platform serve: cannot follow the supervisor ({e})");
    }
    // It may have died before the signal was armed.
    if nix::unistd::getppid().as_raw() != parent {
        std::process::exit(0);
    }
}

/// `platform probe <url>`: the images' health check.
async fn probe(url: &str) -> std::process::ExitCode {
    // No proxy: a health check asks this container's own loopback, whatever HTTP_PROXY says.
    let answer = match reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
    {
        Ok(client) => client.get(url).send().await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(r) if r.status().is_success() => std::process::ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("probe: {url} answered {}", r.status());
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("probe: {url}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `platform serve <service>`: exactly what the service's own binary does.
async fn serve(which: Which) -> std::process::ExitCode {
    follow_the_supervisor();
    let name = format!("{}-svc", which.name());
    match which {
        Which::Coordinator => {
            host::app::run_main("coordinator", |shutdown| async move {
                coordinator::start(coordinator::Config::load()?, shutdown).await
            })
            .await
        }
        Which::Payment => {
            host::app::run_main(&name, |shutdown| async move {
                payment_svc::start(payment_svc::load_config()?, shutdown).await
            })
            .await
        }
        Which::Inventory => {
            host::app::run_main(&name, |shutdown| async move {
                inventory_svc::start(inventory_svc::load_config()?, shutdown).await
            })
            .await
        }
        Which::Order => {
            host::app::run_main(&name, |shutdown| async move {
                order_svc::start(order_svc::load_config()?, shutdown).await
            })
            .await
        }
    }
}

struct Supervised {
    which: Which,
    child: Option<Child>,
    died_at: Option<Instant>,
}

/// Where each service keeps its data: a SQLite file in the data folder, or its own database on a
/// PostgreSQL server.
#[derive(Debug, Clone)]
enum Storage {
    Sqlite(PathBuf),
    Postgres(reqwest::Url),
}

impl Storage {
    fn url(&self, which: Which) -> String {
        match self {
            Storage::Sqlite(data) => format!(
                "sqlite://{}",
                data.join(format!("{}.db", which.name())).display()
            ),
            Storage::Postgres(server) => {
                let mut url = server.clone();
                url.set_path(&format!("tcc_{}", which.name()));
                url.to_string()
            }
        }
    }

    /// Creates the four PostgreSQL databases that are missing (dropping them first on reset).
    async fn prepare(&self, reset: bool) -> Result<(), PlatformError> {
        let Storage::Postgres(server) = self else {
            return Ok(());
        };
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(server.as_str())
            .await
            .map_err(|e| PlatformError::Postgres(format!("{server}: {e}")))?;
        for which in Which::ALL {
            let name = format!("tcc_{}", which.name());
            if reset {
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .map_err(|e| PlatformError::Postgres(format!("dropping {name}: {e}")))?;
            }
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(&name)
                    .fetch_one(&mut admin)
                    .await
                    .map_err(|e| PlatformError::Postgres(format!("looking for {name}: {e}")))?;
            if !exists {
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await
                    .map_err(|e| PlatformError::Postgres(format!("creating {name}: {e}")))?;
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        match self {
            Storage::Sqlite(data) => format!("SQLite files in {}", data.display()),
            Storage::Postgres(server) => format!(
                "PostgreSQL databases tcc_* on {}",
                server.host_str().unwrap_or("?")
            ),
        }
    }
}

/// What every service of this platform is started with.
struct Layout {
    data: PathBuf,
    storage: Storage,
    admin_token: String,
    port_offset: u16,
    /// Where the services export their spans, if anywhere.
    otlp: Option<String>,
    /// The trace UI's page of one trace (`{trace_id}` stands for the id), for the console.
    trace_link: Option<String>,
}

impl Layout {
    /// (HTTP, gRPC) ports of a service.
    fn ports(&self, which: Which) -> (u16, u16) {
        let (h, g) = which.default_ports();
        (h + self.port_offset, g + self.port_offset)
    }

    fn http(&self, which: Which) -> String {
        format!("http://127.0.0.1:{}", self.ports(which).0)
    }

    fn grpc(&self, which: Which) -> String {
        format!("http://127.0.0.1:{}", self.ports(which).1)
    }
}

fn spawn(which: Which, layout: &Layout) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    let (data, storage) = (&layout.data, &layout.storage);
    let exe = std::env::current_exe()?;
    let logs = data.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{}.log", which.name())))?;
    let p = which.env_prefix();
    let (http, grpc) = layout.ports(which);
    let mut command = Command::new(exe);
    if which == Which::Order {
        command
            .env(
                "ORDER_API__COORDINATOR_URL",
                layout.grpc(Which::Coordinator),
            )
            .env("ORDER_API__ORDER_URL", layout.grpc(Which::Order))
            .env("ORDER_API__PAYMENT_URL", layout.grpc(Which::Payment))
            .env("ORDER_API__INVENTORY_URL", layout.grpc(Which::Inventory));
    }
    if which == Which::Coordinator {
        if let Some(link) = &layout.trace_link {
            command.env("COORDINATOR_TRACE_LINK", link);
        }
        // The console's fault switches (the services share the platform's admin token).
        for participant in [Which::Order, Which::Payment, Which::Inventory] {
            command.env(
                format!(
                    "COORDINATOR_PARTICIPANT_ADMIN__{}",
                    participant.name().to_uppercase()
                ),
                layout.http(participant),
            );
        }
        // The only participants its transactions may name.
        command
            .env("COORDINATOR_PARTICIPANTS__ORDER", layout.grpc(Which::Order))
            .env(
                "COORDINATOR_PARTICIPANTS__PAYMENT",
                layout.grpc(Which::Payment),
            )
            .env(
                "COORDINATOR_PARTICIPANTS__INVENTORY",
                layout.grpc(Which::Inventory),
            );
    }
    command
        .args(["serve", which.name()])
        .env(format!("{p}HTTP_ADDR"), format!("127.0.0.1:{http}"))
        .env(format!("{p}GRPC_ADDR"), format!("127.0.0.1:{grpc}"))
        .env(format!("{p}DATA_DIR"), data)
        .env(format!("{p}DATABASE_URL"), storage.url(which))
        .env(format!("{p}ADMIN_TOKEN"), &layout.admin_token)
        .envs(
            layout
                .otlp
                .as_ref()
                .map(|endpoint| ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)),
        )
        .env(
            "LOG_FORMAT",
            std::env::var("LOG_FORMAT").unwrap_or_else(|_| "json".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .env(PARENT_ENV, std::process::id().to_string())
        // Ctrl-C reaches the platform only; it stops the services in order.
        .process_group(0)
        .spawn()
}

/// The reason a service gave for not starting (the last "could not start" line of its log),
/// with a hint for the usual one, so the cause is on the screen and not only in the log.
fn start_failure(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let Some(reason) = text
        .lines()
        .rev()
        .find_map(|l| l.split_once(": could not start: ").map(|(_, r)| r.trim()))
    else {
        return String::new();
    };
    let hint = if reason.contains("Address already in use") {
        "\n  hint: another program (another platform?) holds that port: stop it, or start this one \
         beside it with its own ports and data folder: --port-offset 100 --data data2"
    } else if reason.contains("signature") || reason.contains("secret") {
        "\n  hint: the data folder holds another platform's secrets; --reset starts over"
    } else {
        ""
    };
    format!(": {reason}{hint}")
}

/// `platform fault …`: one call to a participant's `/admin/faults` API.
#[derive(Debug, clap::Args)]
struct FaultArgs {
    /// The participant: order, payment or inventory.
    #[arg(value_enum)]
    service: Which,
    /// `list`, `release` (hung calls go on), `clear` (disarm all), or the op to arm: try,
    /// confirm, cancel, action, compensate.
    what: String,
    /// What to do to the op's next calls: delay, hang, fail or error.
    kind: Option<String>,
    /// Delay in milliseconds (`delay`; above the coordinator's 3 s branch timeout, the
    /// call arrives after its caller gave up).
    #[arg(long, default_value_t = 5000)]
    ms: u64,
    /// The FAILURE code (`fail`; try and action only).
    #[arg(long, default_value = "injected_failure")]
    code: String,
    /// How many of the op's next calls.
    #[arg(long, default_value_t = 1)]
    times: u32,
}

impl FaultArgs {
    async fn send(self, data: &std::path::Path, port_offset: u16) -> Result<(), PlatformError> {
        if self.service == Which::Coordinator {
            return Err(PlatformError::Fault(
                "the coordinator takes failpoints, not faults (PUT /api/v1/admin/failpoints/{point})"
                    .into(),
            ));
        }
        let token_path = data.join("admin-token");
        let token = std::fs::read_to_string(&token_path)
            .map_err(io(&token_path))?
            .trim()
            .to_owned();
        let base = format!(
            "http://127.0.0.1:{}/admin/faults",
            self.service.default_ports().0 + port_offset
        );
        let http = reqwest::Client::new();
        let req = match (self.what.as_str(), self.kind.as_deref()) {
            ("list", None) => http.get(&base),
            ("release", None) => http.post(format!("{base}/release")),
            ("clear", None) => http.delete(&base),
            (op, Some(kind)) => {
                let fault = match kind {
                    "delay" => serde_json::json!({"kind": "delay", "ms": self.ms}),
                    "hang" => serde_json::json!({"kind": "hang"}),
                    "fail" => serde_json::json!({"kind": "fail", "code": self.code}),
                    "error" => serde_json::json!({"kind": "error"}),
                    other => {
                        return Err(PlatformError::Fault(format!(
                            "{other:?} is not a fault: delay, hang, fail or error"
                        )))
                    }
                };
                let mut body = fault;
                body["times"] = self.times.into();
                http.put(format!("{base}/{op}")).json(&body)
            }
            (other, None) => {
                return Err(PlatformError::Fault(format!(
                    "{other:?}: give list, release, clear, or an op and a fault (e.g. `try delay --ms 4000`)"
                )))
            }
        };
        let res = req.bearer_auth(token).send().await.map_err(|e| {
            PlatformError::Fault(format!("{} did not answer: {e}", self.service.name()))
        })?;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(PlatformError::Fault(format!("{status}: {text}")));
        }
        println!("{text}");
        Ok(())
    }
}

/// `<data>/run/<service>.pid`: where a script (the README's tour) finds a service to kill.
fn pid_file(data: &std::path::Path, which: Which) -> PathBuf {
    data.join("run").join(format!("{}.pid", which.name()))
}

fn write_pid(data: &std::path::Path, which: Which, pid: u32) {
    let path = pid_file(data, which);
    let _ = std::fs::create_dir_all(data.join("run"));
    if let Err(e) = std::fs::write(&path, format!("{pid}\n")) {
        eprintln!("platform: cannot write {}: {e}", path.display());
    }
}

async fn wait_ready(which: Which, child: &mut Child, layout: &Layout) -> Result<(), PlatformError> {
    let (url, data) = (format!("{}/readyz", layout.http(which)), &layout.data);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| PlatformError::Io {
            what: "an HTTP client".into(),
            source: std::io::Error::other(e),
        })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = data.join("logs").join(format!("{}.log", which.name()));
            return Err(PlatformError::Exited {
                service: which.name(),
                status,
                cause: start_failure(&log),
                log,
            });
        }
        if client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(PlatformError::NotReady(which.name()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Demo data, on first start only.
async fn seed(layout: &Layout) -> Result<bool, PlatformError> {
    let marker = layout.data.join(match layout.storage {
        Storage::Sqlite(_) => ".seeded",
        Storage::Postgres(_) => ".seeded-postgres",
    });
    if marker.exists() {
        return Ok(false);
    }
    let admin = admin::Admin::new(&admin::Endpoints {
        coordinator: layout.http(Which::Coordinator),
        order: layout.http(Which::Order),
        payment: layout.http(Which::Payment),
        inventory: layout.http(Which::Inventory),
        tokens: admin::Tokens::same(&layout.admin_token),
    });
    seed_demo(&admin).await?;
    std::fs::write(&marker, "seeded\n").map_err(io(&marker))?;
    Ok(true)
}

/// The demo users, products and stock (an existing account or SKU is left as it is).
async fn seed_demo(admin: &admin::Admin) -> Result<(), PlatformError> {
    for (id, cents) in [
        ("alice", 10_000),
        ("bob", 2_500),
        ("carol", 0),
        ("merchant", 0),
    ] {
        admin.payment.open_account(id, cents).await?;
    }
    for (sku, name, price, stock) in [
        ("coffee", "Bag of coffee", 450, 100),
        ("mug", "Enamel mug", 1_200, 10),
        ("vinyl", "Rare vinyl record", 9_900, 1),
    ] {
        admin.inventory.open_sku(sku, stock).await?;
        admin.order.put_catalog_item(sku, name, price).await?;
    }
    Ok(())
}

/// `platform token`: order-svc's configuration from the environment, its data folder `data`
/// unless `ORDER_DATA_DIR` says otherwise.
fn print_token(data: &std::path::Path, sub: &str, hours: u64) -> Result<(), PlatformError> {
    let mut config = order_svc::load_config()?;
    if std::env::var_os("ORDER_DATA_DIR").is_none() {
        config.participant.common.data_dir = data.to_owned();
    }
    let token = order_svc::mint_token(&config, sub, Duration::from_secs(hours * 3600))?;
    println!("{token}");
    Ok(())
}

fn issue_certs(
    dir: &std::path::Path,
    split: Option<&std::path::Path>,
) -> Result<(), PlatformError> {
    for role in trust::ROLES {
        trust::dev::issue(dir, role)?;
    }
    println!(
        "certificates for {} under {} (CA: {})",
        trust::ROLES.join(", "),
        dir.display(),
        trust::dev::files_in(dir, "coordinator").ca.display()
    );
    if let Some(out) = split {
        for w in Which::ALL {
            trust::dev::split(dir, w.name(), &out.join(w.name()))?;
        }
        println!(
            "each service's own folder under {} (the CA's certificate, its certificate and key)",
            out.display()
        );
    }
    Ok(())
}

/// A subcommand's result as an exit code, its error on stderr.
fn report(result: Result<(), PlatformError>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("platform: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), PlatformError> {
    if cli.reset && cli.data.exists() {
        std::fs::remove_dir_all(&cli.data).map_err(io(&cli.data))?;
    }
    std::fs::create_dir_all(&cli.data).map_err(io(&cli.data))?;
    let data = std::fs::canonicalize(&cli.data).map_err(io(&cli.data))?;
    let storage = match &cli.postgres {
        None => Storage::Sqlite(data.clone()),
        Some(url) => Storage::Postgres(
            reqwest::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "postgres" | "postgresql"))
                .ok_or_else(|| PlatformError::NotPostgresUrl(url.clone()))?,
        ),
    };
    storage.prepare(cli.reset).await?;
    let admin_token = host::config::dev_secret(&data.join("admin-token"), "dev-admin")?;
    let layout = Layout {
        data: data.clone(),
        storage,
        admin_token,
        port_offset: cli.port_offset,
        otlp: std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok(),
        trace_link: None,
    };
    let mut layout = layout;
    // The trace UI in this process, unless asked not to or its ports are taken (then the
    // platform runs without it, and says so). An OTLP endpoint already configured wins.
    let trace_ui = if cli.no_trace_ui || layout.otlp.is_some() {
        None
    } else {
        let offset = cli.port_offset;
        let ui = trace_ui::TraceUi {
            http: std::net::SocketAddr::from((
                [127, 0, 0, 1],
                cli.trace_ui_port.unwrap_or(16686 + offset),
            )),
            otlp: std::net::SocketAddr::from(([127, 0, 0, 1], 4317 + offset)),
            max_traces: 1000,
            max_memory_mb: 256,
        };
        let http = ui.http;
        match ui.bind().await {
            Ok(bound) => {
                layout.otlp = Some(format!("http://127.0.0.1:{}", 4317 + offset));
                layout.trace_link = Some(format!("http://{http}/trace/{{trace_id}}"));
                tokio::spawn(async move {
                    if let Err(e) = bound.run().await {
                        eprintln!("platform: {e}");
                    }
                });
                Some(http)
            }
            Err(e) => {
                eprintln!("platform: no trace UI ({e}); the services run without exporting spans");
                None
            }
        }
    };

    let mut services: Vec<Supervised> = Vec::new();
    for which in Which::ALL {
        let mut child = spawn(which, &layout).map_err(|source| PlatformError::Io {
            what: format!("starting {}", which.name()),
            source,
        })?;
        if let Err(e) = wait_ready(which, &mut child, &layout).await {
            let _ = child.kill();
            for s in &mut services {
                if let Some(c) = s.child.as_mut() {
                    let _ = c.kill();
                }
            }
            return Err(e);
        }
        write_pid(&data, which, child.id());
        println!(
            "  {:<12} ready on {} (pid {})",
            which.name(),
            layout.http(which),
            child.id()
        );
        services.push(Supervised {
            which,
            child: Some(child),
            died_at: None,
        });
    }
    let seeded = seed(&layout).await?;

    let order_config = order_svc::default_config();
    let mut common = order_config.participant.common.clone();
    common.data_dir = data.clone();
    let auth = order_svc::auth::Authenticator::from_config(&order_config.jwt, &common)?;
    let alice = auth.mint("alice", Duration::from_secs(24 * 3600));
    println!(
        "tcc-pay is running ({}{}).",
        layout.storage.describe(),
        if seeded { ", demo data seeded" } else { "" }
    );
    println!();
    println!("  service       HTTP                    gRPC    pid");
    for s in &services {
        let (h, g) = layout.ports(s.which);
        println!(
            "  {:<12}  http://127.0.0.1:{h:<6}  {g:<6}  {}",
            s.which.name(),
            s.child.as_ref().map(Child::id).unwrap_or_default()
        );
    }
    println!();
    println!("  logs:        {}/logs/<service>.log", data.display());
    println!("  pids:        {}/run/<service>.pid", data.display());
    println!("  admin token: {}/admin-token", data.display());
    println!(
        "  console:     {}/console (sign in with the admin token)",
        layout.http(Which::Coordinator)
    );
    if let Some(ui) = trace_ui {
        println!("  traces:      http://{ui}/ (one order = one trace across the four services)");
    }
    println!("  demo users:  alice ($100.00), bob ($25.00), carol ($0); products: coffee $4.50, mug $12.00, vinyl $99.00 (1 in stock)");
    println!();
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("platform"));
    println!(
        "Place an order as alice (token valid 24 h; another user's: `{} --data {} token --sub bob`):",
        exe.display(),
        data.display()
    );
    println!();
    println!("  TOKEN={alice}");
    println!(
        "  curl -s -X POST {}/api/v1/orders -H \"Authorization: Bearer $TOKEN\" \\",
        layout.http(Which::Order)
    );
    println!("       -H 'Idempotency-Key: my-first-order' -H 'content-type: application/json' \\");
    println!("       -d '{{\"sku\": \"coffee\", \"quantity\": 2}}'");
    println!("  ADMIN=$(cat {}/admin-token)", data.display());
    println!(
        "  curl -s {}/api/v1/transactions -H \"Authorization: Bearer $ADMIN\"   # the coordinator's log",
        layout.http(Which::Coordinator)
    );
    println!();
    println!("Ctrl-C stops everything; the data stays (--reset starts over).");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| PlatformError::Io {
            what: "SIGTERM's handler".into(),
            source,
        })?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        for s in &mut services {
            if let Some(child) = s.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    println!("{} exited ({status}); restarting it in 3 s", s.which.name());
                    s.child = None;
                    s.died_at = Some(Instant::now());
                }
            } else if s
                .died_at
                .is_some_and(|t| t.elapsed() > Duration::from_secs(3))
            {
                match spawn(s.which, &layout) {
                    Ok(child) => {
                        println!("{} restarted (pid {})", s.which.name(), child.id());
                        write_pid(&data, s.which, child.id());
                        s.child = Some(child);
                        s.died_at = None;
                    }
                    Err(e) => println!("could not restart {}: {e}", s.which.name()),
                }
            }
        }
    }
    println!("stopping…");
    // The order API first, the coordinator last, so in-flight work can finish.
    for s in services.iter_mut().rev() {
        if let Some(mut child) = s.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(25);
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        println!("  {:<12} stopped ({status})", s.which.name());
                        break;
                    }
                    _ if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        println!("  {:<12} killed after 25 s", s.which.name());
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
        let _ = std::fs::remove_file(pid_file(&data, s.which));
    }
    println!("stopped; the data stays in {}", data.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag of every command a person runs says what it does (`--help` is the manual).
    #[test]
    fn every_flag_of_every_visible_command_has_a_help_text() {
        let missing = testkit::cli::arguments_without_help(super::Cli::command());
        assert!(missing.is_empty(), "without help: {missing:?}");
    }
}
