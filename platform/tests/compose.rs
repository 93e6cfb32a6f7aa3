//! The Docker way, end to end, on a real engine: `compose/docker-compose.yml` with our images
//! (PostgreSQL, the four services in production mode, the trace UI, Prometheus), started the
//! way `compose/up` starts it, under a project name and ports of its own.
//!
//! One scenario, because bringing the stack up is the expensive part: orders confirm and cancel
//! through the public API, one order's trace holds spans of all four services in the trace UI,
//! Prometheus scrapes every service, and a participant stopped with `docker kill` and another
//! crashed (SIGKILL of its process, restarted by its restart policy) under load leave the four
//! databases consistent (the full docs/design.md §5 audit). The project is removed with its volumes
//! however the test ends.
//!
//! Needs a Docker engine. Without one the test fails, saying why, unless
//! `ALLOW_SKIP_DOCKER=1` (and never when `REQUIRE_DOCKER=1`, as in CI). The images are built
//! here: the base image offline if no registry answers (`compose/base-image`), PostgreSQL and
//! Prometheus from their Dockerfiles (cached after the first run), and the platform image from
//! this test's own `platform` binary.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

use testkit::containers::{docker_or_skip, run};

/// A compose project of this test: its variables, its secrets (made by compose/up's own
/// `ensure_secrets`), and `down -v` when dropped.
struct Project {
    name: String,
    secrets: tempfile::TempDir,
    vars: Vec<(&'static str, String)>,
    ports: std::collections::HashMap<&'static str, u16>,
}

const PORTS: [&str; 7] = [
    "ORDER_PORT",
    "PAYMENT_PORT",
    "INVENTORY_PORT",
    "COORDINATOR_PORT",
    "TRACE_UI_PORT",
    "PROMETHEUS_PORT",
    "POSTGRES_PORT",
];

impl Project {
    /// Secrets of its own; ports come later ([`Project::take_ports`]), just before `up`, so
    /// they are still free when the containers bind them.
    fn new() -> Project {
        let secrets = testkit::temp_dir("compose-secrets-");
        let made = run(Command::new("bash")
            .arg("-c")
            .arg(format!(
                ". {}/compose/lib.sh && ensure_secrets",
                repo().display()
            ))
            .current_dir(secrets.path())
            .env("SECRETS_DIR", secrets.path().join("secrets")));
        assert!(made.status.success(), "ensure_secrets failed");
        Project {
            name: format!("tcc-pay-test-{}", std::process::id()),
            vars: vec![
                (
                    "SECRETS_DIR",
                    secrets.path().join("secrets").display().to_string(),
                ),
                ("TCC_PAY_TAG", "test".to_owned()),
            ],
            secrets,
            ports: std::collections::HashMap::new(),
        }
    }

    /// One of the generated secrets (`jwt-secret`, `order-admin-token`, …).
    fn secret(&self, name: &str) -> String {
        let path = self.secrets.path().join("secrets").join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    fn take_ports(&mut self) {
        self.ports = PORTS
            .into_iter()
            .map(|k| (k, testkit::free_port()))
            .collect();
        self.vars
            .extend(self.ports.iter().map(|(k, p)| (*k, p.to_string())));
    }

    fn url(&self, port: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[port])
    }

    /// `docker compose` (v2) where it exists, else docker-compose 1.29, on our file and project.
    fn compose(&self, args: &[&str]) -> Command {
        let v2 = Command::new("docker")
            .args(["compose", "version"])
            .output()
            .is_ok_and(|o| o.status.success());
        let mut cmd = if v2 {
            let mut c = Command::new("docker");
            c.arg("compose");
            c
        } else {
            Command::new("docker-compose")
        };
        cmd.arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(repo().join("compose/docker-compose.yml"))
            .args(args)
            .envs(self.vars.iter().map(|(k, v)| (*k, v.as_str())));
        cmd
    }

    fn container(&self, service: &str) -> String {
        let out = run(&mut self.compose(&["ps", "-q", service]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Every container healthy (the certificates' one-shot job: exited with 0), within
    /// `within`.
    fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ids = String::from_utf8_lossy(&run(&mut self.compose(&["ps", "-q"])).stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>();
            let states: Vec<String> = ids
                .iter()
                .map(|id| {
                    let out = run(Command::new("docker").args([
                        "inspect",
                        "-f",
                        "{{.Name}}={{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}:{{.State.ExitCode}}{{end}}",
                        id,
                    ]));
                    String::from_utf8_lossy(&out.stdout).trim().to_owned()
                })
                .collect();
            if states.len() == 8
                && states
                    .iter()
                    .all(|s| s.ends_with("=healthy") || s.ends_with("_certs_1=exited:0"))
            {
                return;
            }
            if Instant::now() > deadline {
                let logs = self.compose(&["logs", "--tail", "30"]).output().unwrap();
                panic!(
                    "not healthy within {within:?}: {states:?}\n{}",
                    String::from_utf8_lossy(&logs.stdout)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self
            .compose(&["down", "-v", "--remove-orphans", "-t", "5"])
            .output();
    }
}

/// The images the compose file names, the platform image from this test's binary.
fn build_images() {
    sweep_stale_projects();
    testkit::containers::ensure_images(Path::new(env!("CARGO_BIN_EXE_platform")));
}

/// Projects of earlier runs of this test whose process is gone (killed by a timeout, say).
fn sweep_stale_projects() {
    let Ok(out) = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--format",
            "{{.Label \"com.docker.compose.project\"}}",
        ])
        .output()
    else {
        return;
    };
    let names: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|n| n.starts_with("tcc-pay-test-"))
        .map(str::to_owned)
        .collect();
    for name in names {
        let pid = name.trim_start_matches("tcc-pay-test-");
        if !Path::new("/proc").join(pid).exists() {
            let mut stale = Project::new();
            stale.name = name;
            drop(stale); // its Drop runs `down -v`
        }
    }
}

async fn order(
    http: &reqwest::Client,
    p: &Project,
    user: &str,
    key: &str,
    sku: &str,
) -> (u16, Value) {
    let token = order_svc::auth::Authenticator::new(
        p.secret("jwt-secret").as_bytes(),
        &order_svc::auth::JwtConfig::default(),
    )
    .mint(user, Duration::from_secs(600));
    let res = http
        .post(format!("{}/api/v1/orders", p.url("ORDER_PORT")))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&json!({"sku": sku, "quantity": 1}))
        .send()
        .await;
    match res {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// A JSON answer, or why there is none (for [`eventually`]).
async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let res = http.get(url).send().await.map_err(|e| e.to_string())?;
    res.json().await.map_err(|e| e.to_string())
}

/// Polls `attempt` every 500 ms until it succeeds, for up to `within`.
async fn eventually(
    within: Duration,
    what: &str,
    mut attempt: impl AsyncFnMut() -> Result<(), String>,
) {
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what} within {within:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_platform_confirms_cancels_traces_scrapes_and_survives_a_killed_participant() {
    if !docker_or_skip() {
        return;
    }
    let mut p = Project::new();
    let t = Instant::now();
    build_images();
    p.take_ports();
    eprintln!(
        "compose test: images ready in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    run(&mut p.compose(&["up", "-d"]));
    p.wait_healthy(Duration::from_secs(240));
    eprintln!(
        "compose test: all healthy {:.1} s after up",
        t.elapsed().as_secs_f64()
    );
    // Published on the loopback only.
    for service in [
        "order",
        "payment",
        "inventory",
        "coordinator",
        "trace-ui",
        "prometheus",
        "postgres",
    ] {
        let ports = run(Command::new("docker").args(["port", &p.container(service)]));
        let ports = String::from_utf8_lossy(&ports.stdout).into_owned();
        assert!(
            !ports.is_empty() && ports.lines().all(|l| l.contains("-> 127.0.0.1:")),
            "{service} publishes beyond the loopback: {ports}"
        );
    }

    // Secrets are mounted files: no container's environment or command line holds one.
    let all_secrets: Vec<String> = [
        "postgres-password",
        "jwt-secret",
        "coordinator-admin-token",
        "order-admin-token",
        "payment-admin-token",
        "inventory-admin-token",
    ]
    .into_iter()
    .map(|n| p.secret(n))
    .collect();
    for service in ["order", "payment", "inventory", "coordinator", "postgres"] {
        let seen = run(Command::new("docker").args([
            "inspect",
            "-f",
            "{{json .Config.Env}} {{json .Config.Cmd}} {{json .Args}}",
            &p.container(service),
        ]));
        let seen = String::from_utf8_lossy(&seen.stdout).into_owned();
        for (i, secret) in all_secrets.iter().enumerate() {
            assert!(
                !seen.contains(secret.as_str()),
                "secret #{i} is visible in docker inspect of {service}"
            );
        }
    }
    // Each service has its own admin token: another service's is refused.
    let http = reqwest::Client::new();
    for (base, own, other) in [
        ("PAYMENT_PORT", "payment-admin-token", "order-admin-token"),
        (
            "INVENTORY_PORT",
            "inventory-admin-token",
            "payment-admin-token",
        ),
        (
            "COORDINATOR_PORT",
            "coordinator-admin-token",
            "inventory-admin-token",
        ),
    ] {
        let path = if base == "COORDINATOR_PORT" {
            "/api/v1/transactions"
        } else {
            "/admin/audit"
        };
        let status = |token: String| {
            let req = http
                .get(format!("{}{path}", p.url(base)))
                .bearer_auth(token)
                .send();
            async move { req.await.map(|r| r.status().as_u16()).unwrap_or(0) }
        };
        assert_eq!(
            status(p.secret(own)).await,
            200,
            "{base} with its own token"
        );
        assert_eq!(status(p.secret(other)).await, 401, "{base} with {other}");
    }

    let endpoints = admin::Endpoints {
        coordinator: p.url("COORDINATOR_PORT"),
        order: p.url("ORDER_PORT"),
        payment: p.url("PAYMENT_PORT"),
        inventory: p.url("INVENTORY_PORT"),
        tokens: admin::Tokens {
            coordinator: p.secret("coordinator-admin-token"),
            order: p.secret("order-admin-token"),
            payment: p.secret("payment-admin-token"),
            inventory: p.secret("inventory-admin-token"),
        },
    };
    let admin = admin::Admin::new(&endpoints);
    async {
        admin.payment.open_account("merchant", 0).await?;
        admin.payment.open_account("alice", 0).await?;
        admin.payment.deposit("alice", 100_000_000).await?;
        admin.payment.open_account("carol", 0).await?;
        admin.inventory.open_sku("coffee", 1_000_000).await?;
        admin.order.put_catalog_item("coffee", "coffee", 450).await
    }
    .await
    .unwrap_or_else(|e| panic!("seeding: {e}"));
    // The compose platform runs in production mode: no failpoint can be armed.
    let refused = admin
        .order
        .0
        .put::<_, serde_json::Value>(
            "/admin/failpoints/after_coordinator_answer",
            &serde_json::json!({}),
        )
        .await;
    assert!(
        matches!(refused, Err(admin::AdminError::Refused { status: 403, .. })),
        "{refused:?}"
    );

    // Through the public API: one order confirms, one that cannot be paid is cancelled.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (status, confirmed) = order(&http, &p, "alice", "compose-1", "coffee").await;
    assert_eq!(
        (status, confirmed["status"].as_str()),
        (201, Some("confirmed")),
        "{confirmed}"
    );
    let (status, cancelled) = order(&http, &p, "carol", "compose-2", "coffee").await;
    assert_eq!(
        (
            status,
            cancelled["status"].as_str(),
            cancelled["reason"].as_str()
        ),
        (201, Some("cancelled"), Some("insufficient_funds")),
        "{cancelled}"
    );

    // The confirmed order is one trace in the trace UI, with spans of all four services.
    let ui = p.url("TRACE_UI_PORT");
    eventually(
        Duration::from_secs(40),
        "a trace with all four services",
        async || {
            let traces = get_json(
                &http,
                &format!("{ui}/api/traces?service=order-svc&limit=50"),
            )
            .await?;
            let services = |t: &Value| -> std::collections::BTreeSet<String> {
                t["processes"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(_, p)| p["serviceName"].as_str().map(str::to_owned))
                    .collect()
            };
            let all = ["coordinator", "order-svc", "payment-svc", "inventory-svc"];
            let seen: Vec<_> = traces["data"]
                .as_array()
                .into_iter()
                .flatten()
                .map(services)
                .collect();
            if seen.iter().any(|s| all.iter().all(|a| s.contains(*a))) {
                Ok(())
            } else {
                Err(format!("services per trace: {seen:?}"))
            }
        },
    )
    .await;

    // Prometheus scrapes the four services, every target up.
    let prometheus = p.url("PROMETHEUS_PORT");
    eventually(
        Duration::from_secs(40),
        "every Prometheus target up",
        async || {
            let targets = get_json(&http, &format!("{prometheus}/api/v1/targets")).await?;
            let active = targets["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up = active.iter().filter(|t| t["health"] == "up").count();
            if active.len() == 5 && up == 5 {
                Ok(())
            } else {
                let health: Vec<_> = active
                    .iter()
                    .map(|t| format!("{}={}", t["labels"]["instance"], t["health"]))
                    .collect();
                Err(format!("{health:?}"))
            }
        },
    )
    .await;

    // Load, and meanwhile: payment-svc stopped by `docker kill` and started again by compose;
    // inventory-svc crashed (its process SIGKILLed) and restarted by its restart policy.
    let load_for = Duration::from_secs(16);
    let start = Instant::now();
    let load = (0..4).map(|w| {
        let (http, p) = (&http, &p);
        async move {
            let mut answered = std::collections::BTreeMap::<String, u64>::new();
            let mut i = 0;
            while start.elapsed() < load_for {
                let (status, body) =
                    order(http, p, "alice", &format!("load-{w}-{i}"), "coffee").await;
                let outcome = match body["status"].as_str() {
                    Some(s) => s.to_owned(),
                    None => format!("http:{status}"),
                };
                *answered.entry(outcome).or_default() += 1;
                i += 1;
                if status == 429 {
                    // alice's per-user limit (10 orders/s): wait as a client is told to.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            answered
        }
    });
    let faults = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        run(Command::new("docker").args(["kill", &p.container("payment")]));
        tokio::time::sleep(Duration::from_secs(3)).await;
        run(&mut p.compose(&["start", "payment"]));
        tokio::time::sleep(Duration::from_secs(3)).await;
        // A crash: SIGKILL to every process of the container but its init (tini), which then
        // exits like the service did; the restart policy, not an operator, brings it back.
        run(Command::new("docker").args([
            "exec",
            &p.container("inventory"),
            "bash",
            "-c",
            "kill -9 -1",
        ]));
        let stats = Command::new("docker")
            .args([
                "stats",
                "--no-stream",
                "--format",
                "{{.Name}} {{.MemUsage}} {{.CPUPerc}}",
            ])
            .output()
            .unwrap();
        eprintln!(
            "compose test: under load\n{}",
            String::from_utf8_lossy(&stats.stdout)
        );
    };
    let (answers, ()) = tokio::join!(futures::future::join_all(load), faults);
    let mut outcomes = std::collections::BTreeMap::<String, u64>::new();
    for a in answers {
        for (k, n) in a {
            *outcomes.entry(k).or_default() += n;
        }
    }
    eprintln!("compose test: outcomes under faults {outcomes:?}");
    assert!(
        outcomes.get("confirmed").copied().unwrap_or(0) > 0,
        "no order confirmed under load: {outcomes:?}"
    );
    // The load is one buyer: its rate limit shows, and is answered, never a server error.
    assert!(
        outcomes.keys().all(|k| !k.starts_with("http:5")),
        "{outcomes:?}"
    );
    let restarts = String::from_utf8_lossy(
        &run(Command::new("docker").args([
            "inspect",
            "-f",
            "{{.RestartCount}}",
            &p.container("inventory"),
        ]))
        .stdout,
    )
    .trim()
    .to_owned();
    assert_eq!(
        restarts, "1",
        "the restart policy restarted the crashed inventory-svc"
    );
    p.wait_healthy(Duration::from_secs(120));

    // Every invariant across the four databases, once the in-flight transactions settle.
    let report = audit::run(&endpoints, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("audit: {e}"));
    assert!(report.ok, "{report}");
}
