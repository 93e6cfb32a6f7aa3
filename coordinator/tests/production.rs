//! Production mode refuses what only tests and labs may use: a start with a crash failpoint
//! exits non-zero and says why; a failpoint that does not exist is a configuration error naming
//! the key.

use std::process::Command;
use std::time::{Duration, Instant};

fn start_with(dir: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coordinator"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("COORDINATOR_DATA_DIR", dir)
        .env(
            "COORDINATOR_DATABASE_URL",
            format!("sqlite://{}/coordinator.db", dir.display()),
        )
        .env("COORDINATOR_HTTP_ADDR", "127.0.0.1:0")
        .env("COORDINATOR_GRPC_ADDR", "127.0.0.1:0")
        .env(
            "COORDINATOR_ADMIN_TOKEN",
            "a-production-admin-token-of-32-bytes",
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Every case here must fail at start; one that does not would serve until killed.
    let log = dir.join("out.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = cmd
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Some(s) => (s.success(), said),
        None => panic!("still running after 20 s (it started):\n{said}"),
    }
}

#[test]
fn a_production_start_with_a_crash_failpoint_exits_saying_failpoints_are_refused() {
    let dir = testkit::temp_dir("coord-prod-");
    let (ok, said) = start_with(
        dir.path(),
        &[
            ("PRODUCTION", "true"),
            ("COORDINATOR_FAILPOINT", "after_decision"),
        ],
    );
    assert!(!ok, "{said}");
    assert!(
        said.contains("failpoints are refused in production mode"),
        "{said}"
    );
}

#[test]
fn a_failpoint_that_does_not_exist_is_a_configuration_error_naming_the_key() {
    let dir = testkit::temp_dir("coord-fp-");
    let (ok, said) = start_with(dir.path(), &[("COORDINATOR_FAILPOINT", "after_lunch")]);
    assert!(!ok, "{said}");
    assert!(said.contains("COORDINATOR_FAILPOINT"), "{said}");
}
