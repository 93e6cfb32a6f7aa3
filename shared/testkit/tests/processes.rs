//! The process helpers against a real binary.
use std::time::Duration;
use testkit::{free_port, temp_dir, Service, ServiceSpec};

fn spec(dir: &std::path::Path, port: u16, delay_ms: u64) -> ServiceSpec {
    ServiceSpec::new(
        "ready-server",
        env!("CARGO_BIN_EXE_testkit-ready-server"),
        dir,
    )
    .env("PORT", port.to_string())
    .env("READY_DELAY_MS", delay_ms.to_string())
    .ready_url(format!("http://127.0.0.1:{port}/readyz"))
}

async fn pid_over_http(port: u16) -> Option<u32> {
    reqwest::get(format!("http://127.0.0.1:{port}/pid"))
        .await
        .ok()?
        .text()
        .await
        .ok()?
        .parse()
        .ok()
}

#[tokio::test]
async fn start_waits_for_readyz_and_a_restart_after_sigkill_serves_again() {
    let dir = temp_dir("processes-");
    let port = free_port();
    let mut svc = Service::start(spec(dir.path(), port, 300)).await.unwrap();
    let first = pid_over_http(port).await.expect("ready means it answers");
    assert_eq!(Some(first), svc.pid());

    svc.kill();
    assert!(!svc.is_running());
    assert_eq!(
        pid_over_http(port).await,
        None,
        "a killed process answers nothing"
    );

    svc.restart().await.unwrap();
    let second = pid_over_http(port).await.expect("restarted and ready");
    assert_ne!(first, second);
    assert_eq!(svc.starts(), 2);
    assert!(svc.log_tail(10).contains("start #2"));
}

#[tokio::test]
async fn sigterm_lets_the_process_exit_cleanly() {
    let dir = temp_dir("processes-");
    let port = free_port();
    let mut svc = Service::start(spec(dir.path(), port, 0)).await.unwrap();
    let status = svc
        .terminate(Duration::from_secs(10))
        .expect("exits within the grace period");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn a_binary_that_exits_before_it_is_ready_fails_start_with_its_log() {
    let dir = temp_dir("processes-");
    let spec = ServiceSpec::new("broken", "/bin/sh", dir.path())
        .arg("-c")
        .arg("echo 'bad config: no port'; exit 3")
        .ready_url(format!("http://127.0.0.1:{}/readyz", free_port()));
    let err = Service::start(spec).await.unwrap_err();
    assert!(matches!(err, testkit::StartError::Exited { .. }), "{err}");
    let err = err.to_string();
    assert!(
        err.contains("bad config: no port"),
        "the log tail is in the error: {err}"
    );
}
