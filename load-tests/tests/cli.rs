//! The `load-tests` binary against a real platform (the four services as processes, on SQLite
//! and on PostgreSQL): `run` then `audit` pass on a healthy platform and `audit` fails on a broken
//! one; `chaos` kills and restarts every service under load and still audits clean.
use prost::Message;
use proto::v1::participant_client::ParticipantClient;
use proto::v1::{BranchRequest, Op};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Output;
use testkit::platform::{Platform, PlatformOptions};
use testkit::{both_backends, TestDb};

const ADMIN: &str = "cli-test-admin-token-0123456789";
const JWT: &str = "cli-test-jwt-secret-0123456789-0123456789";

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_load-tests"))
        .parent()
        .unwrap()
        .to_owned()
}

async fn load_tests(args: &[&str]) -> Output {
    load_tests_with(args, None).await
}

/// With `database_url`: the server `chaos --backend postgres` creates its databases on.
async fn load_tests_with(args: &[&str], database_url: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_load-tests"));
    command.args(args);
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    command.output().await.expect("load-tests runs")
}

fn target_args(p: &Platform) -> Vec<String> {
    vec![
        "--order-url".into(),
        p.urls["order"].clone(),
        "--payment-url".into(),
        p.urls["payment"].clone(),
        "--inventory-url".into(),
        p.urls["inventory"].clone(),
        "--coordinator-url".into(),
        p.urls["coordinator"].clone(),
        "--admin-token".into(),
        ADMIN.into(),
        "--jwt-secret".into(),
        JWT.into(),
    ]
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn run_then_audit_pass_and_a_hold_outside_any_transaction_fails_the_audit(db: TestDb) {
    // The server the platform's databases are on, for compare's baseline.
    let server = (!db.url().starts_with("sqlite")).then(|| db.url().to_owned());
    let p = Platform::start(
        &bin_dir().join("platform"),
        db,
        &PlatformOptions::new(ADMIN, JWT),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let priced = http
        .put(format!("{}/admin/catalog/coffee", p.urls["order"]))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "coffee", "price": 450}))
        .send()
        .await
        .unwrap();
    assert!(priced.status().is_success());
    let out = p.dir.path().join("run.json");
    let mut args: Vec<String> = [
        "run",
        "--count",
        "200",
        "--concurrency",
        "4",
        "--warmup",
        "0s",
        "--users",
        "8",
        "--fail-share",
        "0.2",
        "--duplicate-share",
        "0.2",
        "--refund-share",
        "0.2",
        "--quiet",
        "--out",
    ]
    .map(String::from)
    .to_vec();
    args.push(out.display().to_string());
    args.extend(target_args(&p));
    let run = load_tests(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(run.status.success(), "{}", text(&run));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["orders"], 200, "{report}");
    assert_eq!(report["unexpected"], json!({}), "{report}");
    // Every refund went through (any other outcome would be in `unexpected`).
    assert!(
        report["refunds"]["refunded"].as_u64().unwrap_or(0) >= 20,
        "{report}"
    );
    let outcomes = &report["outcomes"];
    let count = |k: &str| outcomes[k].as_u64().unwrap_or(0);
    assert_eq!(
        count("confirmed")
            + count("cancelled:insufficient_funds")
            + count("cancelled:out_of_stock"),
        200,
        "{report}"
    );
    assert!(count("cancelled:insufficient_funds") > 0 && count("cancelled:out_of_stock") > 0);
    assert!(
        report["duplicates"]["sent"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["duplicates"]["answered_with_another_order"], 0);
    assert!(report["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    // Each of the four services spent some CPU on the run's orders and held some memory.
    for side in ["cpu_ms_per_order", "peak_rss_mb"] {
        let by_service = report["costs"][side].as_object().expect("costs by service");
        let mut services: Vec<&str> = by_service.keys().map(String::as_str).collect();
        services.sort_unstable();
        assert_eq!(
            services,
            ["coordinator", "inventory-svc", "order-svc", "payment-svc"],
            "{report}"
        );
        assert!(
            by_service.values().all(|v| v.as_f64().unwrap() > 0.0),
            "{report}"
        );
    }

    let mut audit_args = vec!["audit", "--settle", "10s"];
    let target = target_args(&p);
    audit_args.extend(target.iter().map(String::as_str));
    let audit = load_tests(&audit_args).await;
    assert!(audit.status.success(), "{}", text(&audit));
    assert!(
        String::from_utf8_lossy(&audit.stdout).contains("all invariants hold"),
        "{}",
        text(&audit)
    );

    // compare: baseline and run side by side (one short round), both consistent.
    let mut compare_args = vec![
        "compare",
        "--rounds",
        "1",
        "--duration",
        "2s",
        "--concurrency",
        "2",
        "--backend",
        if server.is_none() {
            "sqlite"
        } else {
            "postgres"
        },
    ];
    compare_args.extend(target.iter().map(String::as_str));
    let compare = load_tests_with(&compare_args, server.as_deref()).await;
    assert!(compare.status.success(), "{}", text(&compare));
    let said = String::from_utf8_lossy(&compare.stdout);
    assert!(
        said.contains("concurrency   2: TCC")
            && said.contains("(medians of 1 rounds)")
            && said.contains("best medians: TCC"),
        "{}",
        text(&compare)
    );

    // Money frozen by a Try no coordinator ever started (sent with the coordinator's own
    // certificate, as an insider who stole it could): the audit must say so and exit 1.
    let stolen = trust::dev::issue(&p.dir.path().join("tls"), "coordinator").unwrap();
    let stolen = trust::Trust::from_files(&stolen.ca, &stolen.cert, &stolen.key).unwrap();
    let mut payment = ParticipantClient::new(
        trust::endpoint(&p.grpc_urls["payment"], Some(&stolen), Some("payment"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let answer = payment
        .branch(BranchRequest {
            gid: 42,
            branch_id: "rogue".into(),
            op: Op::Try as i32,
            payload: proto::pay::v1::PaymentBranch {
                account_id: "load-0".into(),
                amount: 100,
                merchant_id: "merchant".into(),
                refund: None,
            }
            .encode_to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outcome(), proto::v1::Outcome::Success, "{answer:?}");
    let mut audit_args = vec!["audit", "--settle", "1s"];
    audit_args.extend(target.iter().map(String::as_str));
    let audit = load_tests(&audit_args).await;
    assert_eq!(audit.status.code(), Some(1), "{}", text(&audit));
    let stdout = String::from_utf8_lossy(&audit.stdout);
    // Each failed check with its section of docs/design.md.
    assert!(
        stdout.contains("FAIL §5.1b no money is left frozen"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL §5.3d nothing happened outside a global transaction"),
        "{stdout}"
    );
    assert!(stdout.contains("INVARIANTS VIOLATED"), "{stdout}");
}

/// One buyer faster than order-svc's per-user limit: without retries its 429s are their own
/// outcome; with retries the run waits each `Retry-After` out and every order is placed.
async fn a_run_past_the_rate_limit_counts_429s_or_waits_them_out(db: TestDb) {
    let mut options = PlatformOptions::new(ADMIN, JWT);
    options.env = vec![
        ("ORDER_API__RATE_LIMIT__PER_SECOND".into(), "2".into()),
        ("ORDER_API__RATE_LIMIT__BURST".into(), "2".into()),
    ];
    let p = Platform::start(&bin_dir().join("platform"), db, &options)
        .await
        .unwrap();
    let reqwest = reqwest::Client::new();
    let priced = reqwest
        .put(format!("{}/admin/catalog/coffee", p.urls["order"]))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "coffee", "price": 450}))
        .send()
        .await
        .unwrap();
    assert!(priced.status().is_success());
    let run = |retries: &'static str, tag: &'static str| {
        let out = p.dir.path().join(format!("{tag}.json"));
        let mut args: Vec<String> = [
            "run",
            "--count",
            "12",
            "--concurrency",
            "4",
            "--warmup",
            "0s",
            "--users",
            "1",
            "--retries",
            retries,
            "--tag",
            tag,
            "--quiet",
            "--out",
        ]
        .map(String::from)
        .to_vec();
        args.push(out.display().to_string());
        args.extend(target_args(&p));
        async move {
            let o = load_tests(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
            let report: Value =
                serde_json::from_str(&std::fs::read_to_string(&out).unwrap_or_default())
                    .unwrap_or_else(|_| panic!("{}", text(&o)));
            report
        }
    };
    let impatient = run("0", "impatient").await;
    let limited = impatient["outcomes"]["http:429:rate_limited"]
        .as_u64()
        .unwrap_or(0);
    assert!(limited > 0, "{impatient}");
    let patient = run("20", "patient").await;
    assert_eq!(patient["outcomes"], json!({"confirmed": 12}), "{patient}");
    assert!(patient["retried"].as_u64().unwrap() > 0, "{patient}");
}

async fn chaos_kills_every_service_under_load_and_the_audit_still_holds(db: TestDb) {
    let backend = if db.url().starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    };
    let bin = bin_dir();
    let out = std::env::temp_dir().join(format!("chaos-{}-{backend}.json", std::process::id()));
    let chaos = load_tests_with(
        &[
            "chaos",
            "--backend",
            backend,
            "--duration",
            "12s",
            "--interval",
            "1500ms",
            "--down",
            "300ms",
            "--concurrency",
            "4",
            "--bin-dir",
            bin.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        (backend == "postgres").then(|| db.url()),
    )
    .await;
    assert!(chaos.status.success(), "{}", text(&chaos));
    let stderr = String::from_utf8_lossy(&chaos.stderr);
    for service in ["payment", "coordinator", "inventory", "order"] {
        assert!(
            stderr.contains(&format!("SIGKILL {service}")),
            "{service} was not killed: {}",
            text(&chaos)
        );
    }
    assert!(
        String::from_utf8_lossy(&chaos.stdout).contains("all invariants hold"),
        "{}",
        text(&chaos)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let _ = std::fs::remove_file(&out);
    assert!(
        report["outcomes"]["confirmed"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    // Refunds (10% by default) ran under the same kills, and the audit judged them too.
    assert!(
        report["refunds"]["refunded"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    assert_eq!(report["duplicates"]["answered_with_another_order"], 0);
}

both_backends!(
    run_then_audit_pass_and_a_hold_outside_any_transaction_fails_the_audit,
    chaos_kills_every_service_under_load_and_the_audit_still_holds,
    a_run_past_the_rate_limit_counts_429s_or_waits_them_out,
);

/// Ports for a one-command platform beside everything else: HTTP below the test ports
/// (20000-), gRPC above the kernel's ephemeral range (-60999).
fn port_offset(variant: u16) -> u16 {
    10_950 + (std::process::id() % 95) as u16 * 10 + variant
}

/// The README's run command (`platform`, here on its own ports and folder, on SQLite files or
/// `--postgres`), then `run` and `audit` with their defaults reading its data folder; a service
/// SIGKILLed is restarted by the platform, and SIGTERM stops everything cleanly.
async fn the_one_command_platform_takes_a_run_and_an_audit_and_restarts_a_killed_service(
    db: TestDb,
) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let postgres = !db.url().starts_with("sqlite");
    let offset = port_offset(if postgres { 5 } else { 0 });
    let dir = testkit::temp_dir("one-command-");
    let data = dir.path().join("data");
    let mut command = tokio::process::Command::new(bin_dir().join("platform"));
    command
        .arg("--data")
        .arg(&data)
        .arg("--port-offset")
        .arg(offset.to_string())
        // The trace UI below the test ports too (its default, 16686 + offset, is not).
        .arg("--trace-ui-port")
        .arg((8070 + offset).to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    if postgres {
        command.arg("--postgres").arg(db.url());
    }
    let mut platform = command.spawn().expect("platform starts");
    let mut lines = BufReader::new(platform.stdout.take().unwrap()).lines();
    let mut banner = Vec::new();
    let started = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            banner.push(line.clone());
            if line.starts_with("Ctrl-C stops everything") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(started, Ok(true), "platform banner: {banner:#?}");
    let url = |port: u16| format!("http://127.0.0.1:{}", port + offset);
    let targets = [
        "--order-url".to_owned(),
        url(8080),
        "--payment-url".into(),
        url(8081),
        "--inventory-url".into(),
        url(8082),
        "--coordinator-url".into(),
        url(8090),
        "--data".into(),
        data.display().to_string(),
    ];
    let with_targets = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(targets.iter().cloned());
        all
    };
    let out = dir.path().join("run.json");
    let run_args = with_targets(&[
        "run",
        "--count",
        "150",
        "--concurrency",
        "4",
        "--warmup",
        "0s",
        "--users",
        "8",
        "--fail-share",
        "0.2",
        "--duplicate-share",
        "0.2",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let run = load_tests(&run_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(run.status.success(), "{}", text(&run));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["orders"], 150, "{report}");
    assert_eq!(report["unexpected"], json!({}), "{report}");

    // The platform's own trace UI received the services' spans: an order is one trace across
    // the four of them (the exporter sends in batches, every few seconds).
    assert!(
        banner.iter().any(|l| l.contains("traces:")),
        "no trace UI in the banner: {banner:#?}"
    );
    let traces_url = format!(
        "http://127.0.0.1:{}/api/traces?service=order-svc&limit=200",
        8070 + offset
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let traces: Value = match reqwest::get(&traces_url).await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let four = traces["data"].as_array().into_iter().flatten().any(|t| {
            let services: std::collections::BTreeSet<&str> = t["processes"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(_, p)| p["serviceName"].as_str())
                .collect();
            services.len() == 4
        });
        if four {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no trace across the four services in the platform's trace UI: {traces}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    // SIGKILL payment-svc (pid from the banner's table, and the same in its pid file); the
    // platform brings it back.
    let pid: i32 = banner
        .iter()
        .find(|l| {
            l.trim_start().starts_with("payment ")
                && l.contains("http://")
                && !l.contains("ready on")
        })
        .and_then(|l| l.split_whitespace().last())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no payment pid in {banner:#?}"));
    let pid_file = std::fs::read_to_string(data.join("run/payment.pid")).unwrap();
    assert_eq!(pid_file.trim(), pid.to_string(), "data/run/payment.pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let restarted = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("payment restarted") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(restarted, Ok(true), "payment-svc was not restarted");
    // "restarted" is said at spawn; wait until it answers.
    let ready = format!("{}/readyz", url(8081));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !reqwest::get(&ready)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "payment-svc not ready 30 s after its restart"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let audit_args = with_targets(&["audit", "--settle", "30s"]);
    let audit = load_tests(&audit_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(audit.status.success(), "{}", text(&audit));
    assert!(
        String::from_utf8_lossy(&audit.stdout).contains("all invariants hold"),
        "{}",
        text(&audit)
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(platform.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), platform.wait())
        .await
        .expect("the platform stops within 60 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut rest = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        rest.push(line);
    }
    // It says what it stopped, each service cleanly, and where the data stays.
    for service in ["order", "payment", "inventory", "coordinator"] {
        assert!(
            rest.iter()
                .any(|l| l.trim_start().starts_with(service)
                    && l.contains("stopped (exit status: 0)")),
            "{service}: {rest:#?}"
        );
    }
    assert!(
        rest.iter()
            .any(|l| l.starts_with("stopped; the data stays in")),
        "{rest:#?}"
    );
}

both_backends!(the_one_command_platform_takes_a_run_and_an_audit_and_restarts_a_killed_service);

/// `chaos --containers`: the platform as containers, and every kind of fault (partition,
/// pause, kill) on services and databases in turn under load; the audit holds.
#[tokio::test]
async fn chaos_in_containers_partitions_pauses_and_kills_under_load_and_the_audit_still_holds() {
    if !testkit::containers::docker_or_skip() {
        return;
    }
    let bin = bin_dir();
    let chaos = load_tests(&[
        "chaos",
        "--containers",
        // Long enough for the 24 faults of one round of each kind even on a loaded machine
        // (about 3 s a fault at worst here).
        "--duration",
        "90s",
        "--interval",
        "300ms",
        "--down",
        "500ms",
        "--concurrency",
        "4",
        "--fail-share",
        "0.2",
        "--bin-dir",
        bin.to_str().unwrap(),
    ])
    .await;
    assert!(chaos.status.success(), "{}", text(&chaos));
    let stderr = String::from_utf8_lossy(&chaos.stderr);
    for fault in ["partition", "pause", "kill"] {
        for node in ["coordinator", "payment", "inventory", "order"] {
            assert!(
                stderr.contains(&format!("{fault} {node}")),
                "no {fault} of {node} (or its database): {}",
                text(&chaos)
            );
        }
    }
    assert!(
        String::from_utf8_lossy(&chaos.stdout).contains("all invariants hold"),
        "{}",
        text(&chaos)
    );
}
