//! The one-command platform as a newcomer meets it: `platform` itself, run as the README runs
//! it, when something stands in its way.

use std::process::Command;
use std::time::Duration;

/// A port another program holds: the platform stops, and says which service, why (the
/// service's own reason, not only "see its log") and what to do (`--port-offset`).
#[test]
fn a_taken_port_stops_the_platform_naming_the_cause_and_the_way_around_it() {
    // An offset whose coordinator port (8090 + offset) we can hold.
    let (holder, offset) = loop {
        let offset = 10_000 + rand::random::<u16>() % 5_000;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", 8090 + offset)) {
            break (l, offset);
        }
    };
    let dir = testkit::temp_dir("one-command-");
    let mut child = Command::new(env!("CARGO_BIN_EXE_platform"))
        .args([
            "--no-trace-ui",
            "--port-offset",
            &offset.to_string(),
            "--data",
        ])
        .arg(dir.path().join("data"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the platform did not stop with its port taken");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    drop(holder);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("coordinator exited")
            && stderr.contains("Address already in use")
            && stderr.contains("--port-offset"),
        "{stderr}"
    );
}

/// An offset that would put a port past 65535 is refused as bad input, not a panic.
#[test]
fn a_port_offset_past_the_last_port_is_refused_with_its_range() {
    let out = Command::new(env!("CARGO_BIN_EXE_platform"))
        .args(["--port-offset", "20000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("0..=15482"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
