//! The platform as containers, for the faults only separate hosts can show: a participant cut
//! off the network, frozen, or without its database.
//!
//! [`Cluster::start`] runs, on a user-defined network of its own, one PostgreSQL container per
//! service (testcontainers-modules' `Postgres` on our local `tcc-pay/postgres:15`, which honours
//! the official image's contract) and the four services as `GenericImage`s of
//! `tcc-pay/platform:test`, each on its own database, waited for on `/readyz`. The services are
//! reached from the test through their HTTP ports published on 127.0.0.1 only (the databases
//! are not published), and reach each other by container name. Every container, its volumes
//! and the network are removed when the cluster is dropped (a test's panic included); what a
//! killed test process left behind is swept by the next [`Cluster::start`]. Nothing is pulled:
//! [`ensure_images`] builds the images first (the base image offline when no registry answers),
//! and [`Cluster::start`] refuses to start when one is missing (testcontainers would pull it).
//!
//! Beyond the faults ([`Cluster::fault`]): a standby coordinator on the same database that
//! answers to the first one's name ([`Cluster::add_standby_coordinator`]), SQL in any service's
//! database ([`Cluster::sql`], to read the coordinator's log), and the services run under an
//! init so that one can SIGKILL itself at a failpoint (`host::failpoint`).
//!
//! Docker missing: [`docker_or_skip`] fails the test with the reason unless
//! `ALLOW_SKIP_DOCKER=1`, and never skips when `REQUIRE_DOCKER=1` (as in CI).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use testcontainers::core::{AccessMode, IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use testcontainers_modules::postgres::Postgres;

/// The tag of the platform image the container tests build from their own binary.
pub const PLATFORM_TAG: &str = "test";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// Whether a Docker engine answers; without one, fails the test saying why, unless
/// `ALLOW_SKIP_DOCKER=1` (then a loud skip), and always when `REQUIRE_DOCKER=1`.
pub fn docker_or_skip() -> bool {
    let answers = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    if answers {
        return true;
    }
    let required = std::env::var("REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let allowed = std::env::var("ALLOW_SKIP_DOCKER").is_ok_and(|v| v == "1");
    if required || !allowed {
        panic!(
            "no Docker engine answers `docker info`: this test needs one \
             (ALLOW_SKIP_DOCKER=1 skips it knowingly; REQUIRE_DOCKER=1 forbids skipping)"
        );
    }
    eprintln!("\n*** SKIPPED: no Docker engine (ALLOW_SKIP_DOCKER=1) ***\n");
    false
}

/// `docker pause`, which must succeed. The kernel's freezer can give up on a container whose
/// processes are busy in the kernel (`unable to freeze`, seen under the chaos run's load):
/// that is tried again, a few times, before it fails the test.
fn pause(id: &str) {
    const TRIES: u32 = 5;
    for attempt in 1..=TRIES {
        let out = Command::new("docker")
            .args(["pause", id])
            .output()
            .unwrap_or_else(|e| panic!("docker pause {id} did not start: {e}"));
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            attempt < TRIES && err.contains("unable to freeze"),
            "docker pause {id} failed with {} (attempt {attempt}):\n{err}",
            out.status
        );
        eprintln!("docker pause {id}: the freezer gave up (attempt {attempt}); again");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs a command that must succeed; its program and arguments (never its environment, which
/// may hold secrets) in the panic.
pub fn run(cmd: &mut Command) -> Output {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{shown} did not start: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed with {}:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The images the container tests use, built once per process: the base image (offline if
/// need be), `tcc-pay/postgres:15` and `tcc-pay/prometheus:dev` from `compose/`, and
/// `tcc-pay/platform:test` from `platform_bin` (the test's own build of the `platform` binary).
pub fn ensure_images(platform_bin: &Path) {
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if *built {
        return;
    }
    let compose = repo().join("compose");
    run(&mut Command::new(compose.join("base-image")));
    for (dir, tag) in [
        ("postgres", "tcc-pay/postgres:15"),
        ("prometheus", "tcc-pay/prometheus:dev"),
    ] {
        run(Command::new("docker")
            .args(["build", "-q", "-t", tag])
            .arg(compose.join(dir)));
    }
    let context = crate::temp_dir("platform-image-");
    std::fs::create_dir_all(context.path().join("bin")).unwrap();
    std::fs::copy(platform_bin, context.path().join("bin/platform")).unwrap();
    std::fs::copy(
        compose.join("platform/Dockerfile"),
        context.path().join("Dockerfile"),
    )
    .unwrap();
    run(Command::new("docker")
        .args(["build", "-q", "--label", "tcc-pay-test"])
        .arg("-t")
        .arg(format!("tcc-pay/platform:{PLATFORM_TAG}"))
        .arg(context.path()));
    // The previous run's platform image, untagged by this build.
    let _ = Command::new("docker")
        .args(["image", "prune", "-f", "--filter", "label=tcc-pay-test"])
        .output();
    *built = true;
}

/// The label on every container of a cluster: the pid of the test process that started it.
const KIT_LABEL: &str = "tcc-pay-test-kit";

/// Containers and networks of clusters whose test process is gone (killed by a timeout, a
/// Ctrl-C): a panic drops its cluster, a SIGKILL does not.
fn sweep_stale() {
    let alive = |pid: &str| Path::new("/proc").join(pid).exists();
    if let Ok(out) = Command::new("docker")
        .args(["ps", "-a", "--filter", &format!("label={KIT_LABEL}")])
        .args([
            "--format",
            &format!("{{{{.ID}}}} {{{{.Label \"{KIT_LABEL}\"}}}}"),
        ])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((id, pid)) = line.split_once(' ') {
                if !alive(pid) {
                    let _ = Command::new("docker").args(["rm", "-fv", id]).output();
                }
            }
        }
    }
    if let Ok(out) = Command::new("docker")
        .args(["network", "ls", "--format", "{{.Name}}"])
        .output()
    {
        for name in String::from_utf8_lossy(&out.stdout).lines() {
            // tcc-<pid>-<random>-net
            let pid = name.strip_prefix("tcc-").and_then(|r| r.split('-').next());
            if let Some(pid) = pid {
                if name.ends_with("-net") && !alive(pid) {
                    let _ = Command::new("docker")
                        .args(["network", "rm", name])
                        .output();
                }
            }
        }
    }
}

/// One of the four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Svc {
    Coordinator,
    Order,
    Payment,
    Inventory,
}

impl Svc {
    pub const ALL: [Svc; 4] = [Svc::Coordinator, Svc::Payment, Svc::Inventory, Svc::Order];

    pub fn name(self) -> &'static str {
        match self {
            Svc::Coordinator => "coordinator",
            Svc::Order => "order",
            Svc::Payment => "payment",
            Svc::Inventory => "inventory",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Svc::Coordinator => "COORDINATOR_",
            Svc::Order => "ORDER_",
            Svc::Payment => "PAYMENT_",
            Svc::Inventory => "INVENTORY_",
        }
    }

    /// (HTTP, gRPC) inside its container.
    fn ports(self) -> (u16, u16) {
        match self {
            Svc::Coordinator => (8090, 50050),
            Svc::Order => (8080, 50051),
            Svc::Payment => (8081, 50052),
            Svc::Inventory => (8082, 50053),
        }
    }
}

/// A container of the cluster: a service, or a service's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Service(Svc),
    Database(Svc),
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Service(s) => write!(f, "{}", s.name()),
            Node::Database(s) => write!(f, "{}'s PostgreSQL", s.name()),
        }
    }
}

/// What can happen to a container: cut off the network, frozen, or SIGKILLed (and started
/// again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Partition,
    Pause,
    Kill,
}

impl FaultKind {
    pub const ALL: [FaultKind; 3] = [FaultKind::Partition, FaultKind::Pause, FaultKind::Kill];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::Pause => "pause",
            FaultKind::Kill => "kill",
        }
    }
}

/// The four services and their four databases on a network of their own.
pub struct Cluster {
    pub network: String,
    /// Each service's own admin token (production: none shares another's).
    pub tokens: admin::Tokens,
    pub jwt_secret: String,
    /// HTTP base URL (on the loopback) per service; see [`Cluster::url`].
    urls: BTreeMap<Svc, String>,
    services: BTreeMap<Svc, ContainerAsync<GenericImage>>,
    databases: BTreeMap<Svc, ContainerAsync<Postgres>>,
    names: BTreeMap<Svc, String>,
    db_names: BTreeMap<Svc, String>,
    /// The test's own environment variables, per service.
    extra: Vec<(Svc, String, String)>,
    /// Containers started outside testcontainers (standby coordinators), removed on drop.
    standbys: Vec<String>,
    /// The cluster's CA and the services' certificates (production mode needs provided ones),
    /// mounted read-only at `/tls` in every service.
    pki: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for name in &self.standbys {
            let _ = Command::new("docker").args(["rm", "-fv", name]).output();
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("network", &self.network)
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

fn secret() -> String {
    (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl Cluster {
    /// Starts the databases, then the coordinator and the participants, then order-svc;
    /// returns once every service answers `/readyz`. `extra` adds environment variables to one
    /// service (timeouts a scenario needs).
    pub async fn start(extra: &[(Svc, &str, &str)]) -> Cluster {
        sweep_stale();
        for image in [
            "tcc-pay/postgres:15",
            &format!("tcc-pay/platform:{PLATFORM_TAG}"),
        ] {
            let present = Command::new("docker")
                .args(["image", "inspect", image])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                present,
                "{image} is missing: call ensure_images first (nothing is pulled)"
            );
        }
        let id = format!(
            "tcc-{}-{}",
            std::process::id(),
            secret().get(..6).unwrap_or("x")
        );
        let network = format!("{id}-net");
        let names: BTreeMap<Svc, String> = Svc::ALL
            .into_iter()
            .map(|s| (s, format!("{id}-{}", s.name())))
            .collect();
        let db_names: BTreeMap<Svc, String> = Svc::ALL
            .into_iter()
            .map(|s| (s, format!("{id}-pg-{}", s.name())))
            .collect();
        let starts = Svc::ALL.into_iter().map(|s| {
            let image = Postgres::default()
                .with_name("tcc-pay/postgres")
                .with_tag("15")
                .with_network(&network)
                .with_container_name(&db_names[&s])
                .with_label(KIT_LABEL, std::process::id().to_string())
                // Reached by name on the network only: no port on the host.
                .with_host_config_modifier(|hc| {
                    hc.publish_all_ports = Some(false);
                    hc.port_bindings = None;
                })
                .with_startup_timeout(Duration::from_secs(120));
            async move {
                let c = image
                    .start()
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL for {}: {e}", s.name()));
                (s, c)
            }
        });
        let databases: BTreeMap<Svc, ContainerAsync<Postgres>> = futures::future::join_all(starts)
            .await
            .into_iter()
            .collect();

        let tokens = admin::Tokens {
            coordinator: secret(),
            order: secret(),
            payment: secret(),
            inventory: secret(),
        };
        let jwt_secret = format!("{}{}", secret(), secret());
        let pki = cluster_pki();
        let mut cluster = Cluster {
            network,
            tokens,
            jwt_secret,
            urls: BTreeMap::new(),
            services: BTreeMap::new(),
            databases,
            names,
            db_names,
            extra: extra
                .iter()
                .map(|(s, k, v)| (*s, k.to_string(), v.to_string()))
                .collect(),
            standbys: Vec::new(),
            pki,
        };
        for s in Svc::ALL {
            let http = s.ports().0;
            // A fixed host port, so the service keeps its URL across a partition or a restart.
            let host_port = crate::free_port();
            let mut req = GenericImage::new("tcc-pay/platform", PLATFORM_TAG)
                .with_exposed_port(http.tcp())
                .with_wait_for(WaitFor::Nothing)
                .with_mount(
                    Mount::bind_mount(
                        cluster.pki.path().join(s.name()).display().to_string(),
                        "/tls",
                    )
                    .with_access_mode(AccessMode::ReadOnly),
                )
                .with_cmd(["platform", "serve", s.name()])
                .with_network(&cluster.network)
                .with_container_name(&cluster.names[&s])
                .with_label(KIT_LABEL, std::process::id().to_string())
                // Its HTTP port on the loopback only, on the port picked above; an init as
                // PID 1, so the service can SIGKILL itself at a failpoint (a namespace's PID 1
                // cannot) and a crash stops the container.
                .with_host_config_modifier(move |hc| {
                    use testcontainers::bollard::models::PortBinding;
                    hc.init = Some(true);
                    hc.publish_all_ports = Some(false);
                    hc.port_bindings = Some(
                        [(
                            format!("{http}/tcp"),
                            Some(vec![PortBinding {
                                host_ip: Some("127.0.0.1".into()),
                                host_port: Some(host_port.to_string()),
                            }]),
                        )]
                        .into_iter()
                        .collect(),
                    );
                });
            for (k, v) in cluster.env(s) {
                req = req.with_env_var(k, v);
            }
            let c = req
                .start()
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", s.name()));
            let url = format!("http://127.0.0.1:{host_port}");
            wait_ready(&cluster.names[&s], &url).await;
            cluster.urls.insert(s, url);
            cluster.services.insert(s, c);
        }
        cluster
    }

    /// The environment of `s`'s container: its addresses, database, token and timeouts, then
    /// the test's `extra` (which wins).
    fn env(&self, s: Svc) -> Vec<(String, String)> {
        let (http, grpc_port) = s.ports();
        let p = s.prefix();
        let grpc = |s: Svc| format!("http://{}:{}", self.names[&s], s.ports().1);
        let mut env: Vec<(String, String)> = vec![
            ("PRODUCTION".into(), "true".into()),
            ("RUST_LOG".into(), "warn".into()),
            (format!("{p}HTTP_ADDR"), format!("0.0.0.0:{http}")),
            (format!("{p}GRPC_ADDR"), format!("0.0.0.0:{grpc_port}")),
            (
                format!("{p}DATABASE_URL"),
                format!(
                    "postgres://postgres:postgres@{}:5432/postgres",
                    self.db_names[&s]
                ),
            ),
            (format!("{p}ADMIN_TOKEN"), self.token(s).to_owned()),
            (format!("{p}TLS__DIR"), "/tls".into()),
        ];
        let own: &[(&str, String)] = match s {
            Svc::Coordinator => &[
                ("COORDINATOR_PARTICIPANTS__ORDER", grpc(Svc::Order)),
                ("COORDINATOR_PARTICIPANTS__PAYMENT", grpc(Svc::Payment)),
                ("COORDINATOR_PARTICIPANTS__INVENTORY", grpc(Svc::Inventory)),
                ("COORDINATOR_LEASE_MS", "3000".into()),
                ("COORDINATOR_RECOVERY_INTERVAL_MS", "50".into()),
                ("COORDINATOR_RETRY_INITIAL_MS", "20".into()),
                ("COORDINATOR_RETRY_MAX_MS", "300".into()),
            ],
            Svc::Order => &[
                ("ORDER_JWT__SECRET", self.jwt_secret.clone()),
                ("ORDER_API__COORDINATOR_URL", grpc(Svc::Coordinator)),
                ("ORDER_API__ORDER_URL", grpc(Svc::Order)),
                ("ORDER_API__PAYMENT_URL", grpc(Svc::Payment)),
                ("ORDER_API__INVENTORY_URL", grpc(Svc::Inventory)),
                ("ORDER_API__WAIT_MS", "3000".into()),
                ("ORDER_API__TRANSACTION_TIMEOUT_MS", "3000".into()),
                // The scenarios' load is one buyer at about 30 orders/s: above the per-user
                // limit, which is not what they test.
                ("ORDER_API__RATE_LIMIT__PER_SECOND", "1000".into()),
                ("ORDER_API__RATE_LIMIT__BURST", "1000".into()),
            ],
            Svc::Payment | Svc::Inventory => &[],
        };
        env.extend(own.iter().map(|(k, v)| (k.to_string(), v.clone())));
        for (svc, k, v) in &self.extra {
            if *svc == s {
                env.retain(|(key, _)| key != k);
                env.push((k.clone(), v.clone()));
            }
        }
        env
    }

    /// Starts a second coordinator on the same database, answering to the first one's name as
    /// well (a network alias: two replicas behind one service name, as compose's `--scale`
    /// makes them). Clients connected to the first stay with it; once it is gone, the name
    /// leads to the standby alone. Returns the standby's HTTP URL on the loopback, once it
    /// answers `/readyz`. Removed with the cluster.
    pub async fn add_standby_coordinator(&mut self) -> String {
        let s = Svc::Coordinator;
        let name = format!("{}-standby-{}", self.names[&s], self.standbys.len() + 1);
        let host_port = crate::free_port();
        // The environment holds the admin token: a file, never the command line.
        let dir = crate::temp_dir("standby-env-");
        let env_file = dir.path().join("env");
        // A node id of its own: ids are unique per node, and a live holder's is refused.
        let node_id = self.standbys.len() + 1;
        let lines: String = self
            .env(s)
            .into_iter()
            .chain([("COORDINATOR_NODE_ID".into(), node_id.to_string())])
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        std::fs::write(&env_file, lines).unwrap();
        run(Command::new("docker")
            .args(["run", "-d", "--init", "--name", &name])
            .args(["--label", &format!("{KIT_LABEL}={}", std::process::id())])
            .args(["--network", &self.network])
            .args(["--network-alias", &self.names[&s]])
            .arg("-v")
            .arg(format!(
                "{}:/tls:ro",
                self.pki.path().join(s.name()).display()
            ))
            .args(["-p", &format!("127.0.0.1:{host_port}:{}", s.ports().0)])
            .arg("--env-file")
            .arg(&env_file)
            .arg(format!("tcc-pay/platform:{PLATFORM_TAG}"))
            .args(["platform", "serve", s.name()]));
        self.standbys.push(name.clone());
        let url = format!("http://127.0.0.1:{host_port}");
        wait_ready(&name, &url).await;
        url
    }

    /// Runs `query` with psql in the database container of `s`: its rows, one per line, the
    /// columns separated by `|`.
    pub fn sql(&self, s: Svc, query: &str) -> String {
        let out = run(Command::new("docker").args([
            "exec",
            &self.db_names[&s],
            "psql",
            "-U",
            "postgres",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            query,
        ]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// SIGKILLs a service or a database (its container stops; nothing restarts it).
    pub fn kill(&self, n: Node) {
        run(Command::new("docker").args(["kill", &self.container_of(n)]));
    }

    /// Starts a killed (or crashed) container again and waits until its service answers
    /// `/readyz`.
    pub async fn restart(&self, n: Node) {
        run(Command::new("docker").args(["start", &self.container_of(n)]));
        let (Node::Service(s) | Node::Database(s)) = n;
        self.wait_ready(s).await;
    }

    /// The exit code of the container of `n` (137: SIGKILLed).
    pub fn exit_code(&self, n: Node) -> i64 {
        let out = run(Command::new("docker").args([
            "inspect",
            "-f",
            "{{.State.ExitCode}}",
            &self.container_of(n),
        ]));
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("an exit code, not {text:?}"))
    }

    /// Whether the container of `n` is running.
    pub fn running(&self, n: Node) -> bool {
        let out = run(Command::new("docker").args([
            "inspect",
            "-f",
            "{{.State.Running}}",
            &self.container_of(n),
        ]));
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    }

    /// The HTTP base URL of `s` on the loopback (a fixed port: it survives partitions and
    /// restarts).
    pub fn url(&self, s: Svc) -> String {
        self.urls[&s].clone()
    }

    /// For [`admin::Admin`] and the audit.
    pub fn endpoints(&self) -> admin::Endpoints {
        admin::Endpoints {
            coordinator: self.url(Svc::Coordinator),
            order: self.url(Svc::Order),
            payment: self.url(Svc::Payment),
            inventory: self.url(Svc::Inventory),
            tokens: self.tokens.clone(),
        }
    }

    /// `s`'s admin token.
    pub fn token(&self, s: Svc) -> &str {
        match s {
            Svc::Coordinator => &self.tokens.coordinator,
            Svc::Order => &self.tokens.order,
            Svc::Payment => &self.tokens.payment,
            Svc::Inventory => &self.tokens.inventory,
        }
    }

    /// Cuts `s` off the network: nothing reaches it and it reaches nothing, its own database
    /// included (a host partitioned away). Docker drops its published port meanwhile, so the
    /// test does not reach it either until [`Cluster::heal`] (which restores the same port).
    pub fn partition(&self, s: Svc) {
        run(Command::new("docker").args(["network", "disconnect", &self.network, &self.names[&s]]));
    }

    /// Joins `s` to the network again, under the same name (and the same host port), and waits
    /// until it answers.
    pub async fn heal(&self, s: Svc) {
        run(Command::new("docker").args(["network", "connect", &self.network, &self.names[&s]]));
        self.wait_ready(s).await;
    }

    /// Freezes every process of `s` (the cgroup freezer): it holds its connections and answers
    /// nothing until [`Cluster::unpause`].
    /// As [`pause`], the freezer's `unable to freeze` is tried again a few times.
    pub async fn pause(&self, s: Svc) {
        const TRIES: u32 = 5;
        for attempt in 1..=TRIES {
            match self.services[&s].pause().await {
                Ok(()) => return,
                Err(e) if attempt < TRIES && format!("{e:?}").contains("unable to freeze") => {
                    eprintln!("pausing {s:?}: the freezer gave up (attempt {attempt}); again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("pausing {s:?} (attempt {attempt}): {e:?}"),
            }
        }
    }

    pub async fn unpause(&self, s: Svc) {
        self.services[&s].unpause().await.unwrap();
    }

    /// Stops the database of `s` (SIGINT, a clean shutdown of PostgreSQL) and keeps its data.
    /// [`Cluster::start_database`] returns before it accepts connections again: wait for the
    /// service's readiness ([`Cluster::wait_ready`]), which asks its database.
    pub async fn stop_database(&self, s: Svc) {
        self.databases[&s].stop().await.unwrap();
    }

    pub async fn start_database(&self, s: Svc) {
        self.databases[&s].start().await.unwrap();
    }

    /// Waits until `s` answers `/readyz` again (after a fault), up to 60 s.
    pub async fn wait_ready(&self, s: Svc) {
        wait_ready(&self.names[&s], &self.url(s)).await;
    }

    /// The container of a service or of a service's database.
    fn container_of(&self, n: Node) -> String {
        match n {
            Node::Service(s) => self.names[&s].clone(),
            Node::Database(s) => self.databases[&s].id().to_owned(),
        }
    }

    /// One fault on a service or a database, held for `down`, then undone; returns once the
    /// affected service answers `/readyz` again. What chaos runs in turn.
    pub async fn fault(&self, kind: FaultKind, n: Node, down: Duration) {
        let id = self.container_of(n);
        match kind {
            FaultKind::Partition => {
                run(Command::new("docker").args(["network", "disconnect", &self.network, &id]));
                tokio::time::sleep(down).await;
                run(Command::new("docker").args(["network", "connect", &self.network, &id]));
            }
            FaultKind::Pause => {
                pause(&id);
                tokio::time::sleep(down).await;
                run(Command::new("docker").args(["unpause", &id]));
            }
            FaultKind::Kill => {
                self.kill(n);
                tokio::time::sleep(down).await;
                run(Command::new("docker").args(["start", &id]));
            }
        }
        let (Node::Service(s) | Node::Database(s)) = n;
        self.wait_ready(s).await;
    }

    /// What `docker port` says of each of the cluster's eight containers, by name.
    pub fn published_ports(&self) -> BTreeMap<String, String> {
        let db_ids = self.databases.values().map(|d| d.id().to_owned());
        let service_names = self.names.values().cloned();
        service_names
            .chain(db_ids)
            .map(|c| {
                let out = run(Command::new("docker").args(["port", &c]));
                (c, String::from_utf8_lossy(&out.stdout).trim().to_owned())
            })
            .collect()
    }

    /// The last lines of a service's log, for a failing assertion.
    pub fn logs(&self, s: Svc, lines: usize) -> String {
        container_logs(&self.names[&s], lines)
    }
}

/// The cluster's CA (in `issued/`, never mounted) and, per service, a folder of its own
/// (`<service>/`: the CA's certificate, its certificate and key) mounted at `/tls`; readable by
/// the image's user (a test's throwaway keys).
fn cluster_pki() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = crate::temp_dir("cluster-pki-");
    for s in Svc::ALL {
        trust::dev::split(
            &dir.path().join("issued"),
            s.name(),
            &dir.path().join(s.name()),
        )
        .unwrap_or_else(|e| panic!("certificates for {}: {e}", s.name()));
    }
    for entry in walk(dir.path()) {
        let mode = if entry.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    dir
}

/// `dir` and everything below it.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_owned()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                all.extend(walk(&p));
            } else {
                all.push(p);
            }
        }
    }
    all
}

/// Waits until the service in container `name` answers `/readyz` at `url`, up to 60 s; then
/// fails with its log.
async fn wait_ready(name: &str, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    loop {
        if http
            .get(format!("{url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        let exited = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", name])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "false");
        if exited || Instant::now() > deadline {
            panic!(
                "{name} not ready at {url}/readyz ({}):\n{}",
                if exited { "it exited" } else { "60 s" },
                container_logs(name, 100)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last `lines` lines of a container's output.
fn container_logs(name: &str, lines: usize) -> String {
    match Command::new("docker")
        .args(["logs", "--tail", &lines.to_string(), name])
        .output()
    {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => e.to_string(),
    }
}
