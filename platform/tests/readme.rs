//! The README's five-minute tour, run as written against a fresh one-command platform: the
//! README cannot promise an answer the platform does not give.
//!
//! The tour is the shell between `<!-- tour:begin -->` and `<!-- tour:end -->`. It runs in a
//! folder of its own holding what the README assumes of the repository's folder
//! (`./target/release/platform`, here this test's binary, and the platform's `data/`), with one
//! change: its first line's URLs get the ports of this platform, which runs beside others with
//! `--port-offset`. Needs `bash`, `curl` and `jq`, as the README says.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

const BEGIN: &str = "<!-- tour:begin -->";
const END: &str = "<!-- tour:end -->";

/// The tour's shell, and how many commands it runs (lines that are not comments, blank or the
/// continuation of a command).
fn tour() -> (String, usize) {
    let readme = include_str!("../../README.md");
    let start = readme.find(BEGIN).expect("the README marks its tour") + BEGIN.len();
    let end = readme[start..].find(END).expect("the tour ends") + start;
    let script: String = readme[start..end]
        .lines()
        .filter(|l| !l.starts_with("```"))
        .collect::<Vec<_>>()
        .join("\n");
    // A function's definition counts as one command, its body as none.
    let mut commands = 0;
    let mut continued = false;
    let mut in_function = false;
    for line in script.lines().map(str::trim) {
        if in_function {
            in_function = line != "}";
            continue;
        }
        if !continued && !line.is_empty() && !line.starts_with('#') {
            commands += 1;
            in_function = line.ends_with("() {");
        }
        continued = line.ends_with('\\') || line.ends_with('|') || line.ends_with("do");
    }
    (script, commands)
}

fn have(tool: &str) -> bool {
    testkit::which(tool).is_some()
}

#[test]
fn the_readme_tour_runs_as_written_and_gets_the_answers_the_readme_shows() {
    for tool in ["bash", "curl", "jq"] {
        assert!(
            have(tool),
            "the README's tour needs {tool}: install it (Debian: apt install {tool})"
        );
    }
    let (script, commands) = tour();
    let first = script
        .lines()
        .find(|l| l.starts_with("API="))
        .expect("the tour sets its URLs on one line");
    let dir = testkit::temp_dir("readme-tour-");
    std::fs::create_dir_all(dir.path().join("target/release")).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_platform"),
        dir.path().join("target/release/platform"),
    )
    .unwrap();
    let offset = common::free_offset(&[]);
    let url = |port: u16| format!("http://localhost:{}", port + offset);
    let script = script.replace(
        first,
        &format!(
            "API={} COORD={} PAYMENT={} INVENTORY={}",
            url(8080),
            url(8090),
            url(8081),
            url(8082)
        ),
    );

    // Terminal 1.
    let mut platform = common::start_platform(
        dir.path(),
        &["--no-trace-ui", "--port-offset", &offset.to_string()],
    );

    // Terminal 2.
    let ran = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(platform.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let stopped = wait(&mut platform, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&ran.stdout);
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(
        ran.status.success(),
        "the tour failed ({}):\n{stdout}\n{stderr}",
        ran.status
    );
    eprintln!("README tour: {commands} commands ran");
    // What the README says each step shows.
    let promised = [
        ("1. the order", "\"status\": \"confirmed\""),
        ("1. its amount in cents", "\"amount\": 900"),
        ("2. the replay", "idempotent-replayed: true"),
        ("3. the refusal", "\"reason\": \"insufficient_funds\""),
        ("3. the rollback", "\"status\": \"failed\""),
        ("3. the Cancels", "\"cancel: success\""),
        ("3. the refused Try", "\"try: failure\""),
        ("4. the broken order", "\"reason\": \"unavailable\""),
        ("4. the retried Cancel", "cancel: success"),
        ("5. the books", "\"consistent\": true"),
        ("5. nothing frozen", "\"frozen\": 0"),
        ("5. nothing reserved", "\"reserved\": 0"),
    ];
    for (step, shown) in promised {
        assert!(stdout.contains(shown), "{step}: no {shown} in\n{stdout}");
    }
    assert_eq!(
        stdout.matches("\"consistent\": true").count(),
        2,
        "both books: {stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.trim() == "1"),
        "2. alice has one order after the replay: {stdout}"
    );
    assert!(stopped, "the platform did not stop on Ctrl-C");
}

fn wait(child: &mut std::process::Child, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    false
}
