//! The course labs in `docs/labs/`, run as written: each lab's shell (between
//! `<!-- lab:begin -->` and `<!-- lab:end -->`, in as many pieces as the page has) runs in bash
//! against a fresh one-command platform, and its checks (`check …` lines, which print `✓` or
//! fail the run) are the outcomes the page promises. A lab page cannot drift from what the
//! software does, and its Simplified Chinese twin (`*.zh.md`) must carry the very same commands.
//!
//! Each lab runs in a folder of its own holding what the labs assume of the repository's root:
//! `./target/release/{platform,load-tests}` (this build's binaries), `./scripts`, `./docs` and
//! the platform's `data/`. The only change to a script is its `OFFSET=0` line, set to this
//! platform's `--port-offset`. Needs `bash`, `curl`, `jq` and `git`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BEGIN: &str = "<!-- lab:begin -->";
const END: &str = "<!-- lab:end -->";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The shell of a lab page: every marked piece, fences dropped, in order.
fn script_of(page: &str) -> String {
    let mut script = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start + BEGIN.len()..];
        let end = after.find(END).expect("every lab:begin has its lab:end");
        script.extend(after[..end].lines().filter(|l| !l.starts_with("```")));
        rest = &after[end + END.len()..];
    }
    script.join("\n")
}

fn have(tool: &str) -> bool {
    testkit::which(tool).is_some()
}

/// Runs lab `name` (`docs/labs/<name>.md`) and returns its output.
fn run_lab(name: &str) -> String {
    for tool in ["bash", "curl", "jq", "git"] {
        assert!(
            have(tool),
            "the labs need {tool}: install it (Debian: apt install {tool})"
        );
    }
    let english = std::fs::read_to_string(repo().join(format!("docs/labs/{name}.md"))).unwrap();
    let chinese = std::fs::read_to_string(repo().join(format!("docs/labs/{name}.zh.md")))
        .unwrap_or_else(|e| panic!("docs/labs/{name}.zh.md: {e}"));
    let script = script_of(&english);
    assert!(!script.trim().is_empty(), "{name} has no lab:begin piece");
    assert_eq!(
        script_of(&chinese),
        script,
        "docs/labs/{name}.zh.md must run exactly the commands of {name}.md"
    );
    assert!(
        script
            .lines()
            .filter(|l| l.trim_start().starts_with("check "))
            .count()
            >= 3,
        "{name} promises fewer than three outcomes"
    );

    let dir = testkit::temp_dir("lab-");
    let root = dir.path();
    let bin = Path::new(env!("CARGO_BIN_EXE_platform"));
    std::fs::create_dir_all(root.join("target/release")).unwrap();
    for exe in ["platform", "load-tests"] {
        let built = bin.with_file_name(exe);
        assert!(built.exists(), "{} is not built", built.display());
        std::os::unix::fs::symlink(&built, root.join("target/release").join(exe)).unwrap();
    }
    for folder in ["scripts", "docs"] {
        std::os::unix::fs::symlink(repo().join(folder), root.join(folder)).unwrap();
    }
    let offset = common::free_offset(&[16686, 4317]);
    let script = script.replacen("OFFSET=0", &format!("OFFSET={offset}"), 1);

    let mut platform = common::start_platform(root, &["--port-offset", &offset.to_string()]);
    // ripsecrets where CI's secret scan installed it (scripts/scan-secrets looks on PATH first).
    let path = format!(
        "{}:{}",
        repo().join("target/tools/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = Instant::now();
    let ran = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(root)
        .env("PATH", path)
        .output()
        .unwrap();
    let took = started.elapsed();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(platform.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while platform.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = platform.kill();
    let stdout = String::from_utf8_lossy(&ran.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(
        ran.status.success(),
        "lab {name} failed ({}) after {took:?}:\n{stdout}\n{stderr}",
        ran.status
    );
    let checks = stdout.lines().filter(|l| l.starts_with('✓')).count();
    eprintln!(
        "lab {name}: {checks} checks passed in {:.1} s",
        took.as_secs_f64()
    );
    stdout
}

/// Every lab page in `docs/labs/` has its test below, and its Chinese twin.
#[test]
fn every_lab_page_is_tested_and_has_its_chinese_twin() {
    let tested = [
        "01-first-order",
        "02-compensation",
        "03-null-compensation-and-hanging",
        "04-crash-recovery",
        "05-idempotency",
        "06-refunds",
        "07-the-leak",
        "08-under-load",
    ];
    let mut pages: Vec<String> = std::fs::read_dir(repo().join("docs/labs"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            (name.ends_with(".md") && !name.ends_with(".zh.md") && name != "README.md")
                .then(|| name.trim_end_matches(".md").to_owned())
        })
        .collect();
    pages.sort();
    assert_eq!(
        pages, tested,
        "a lab page without its test, or a test without its page"
    );
    for page in tested {
        assert!(
            repo().join(format!("docs/labs/{page}.zh.md")).exists(),
            "{page} has no Chinese version"
        );
    }
}

#[test]
fn lab_01_first_order_runs_as_written() {
    let out = run_lab("01-first-order");
    assert!(out.contains("\"status\": \"confirmed\""), "{out}");
}

#[test]
fn lab_02_compensation_runs_as_written() {
    let out = run_lab("02-compensation");
    assert!(out.contains("\"reason\": \"insufficient_funds\""), "{out}");
}

#[test]
fn lab_03_null_compensation_and_hanging_runs_as_written() {
    let out = run_lab("03-null-compensation-and-hanging");
    assert!(out.contains("\"reason\": \"unavailable\""), "{out}");
}

#[test]
fn lab_04_crash_recovery_runs_as_written() {
    run_lab("04-crash-recovery");
}

#[test]
fn lab_05_idempotency_runs_as_written() {
    run_lab("05-idempotency");
}

#[test]
fn lab_06_refunds_runs_as_written() {
    let out = run_lab("06-refunds");
    assert!(out.contains("merchant_insufficient_funds"), "{out}");
}

#[test]
fn lab_07_the_leak_runs_as_written() {
    run_lab("07-the-leak");
}

#[test]
fn lab_08_under_load_runs_as_written() {
    let out = run_lab("08-under-load");
    assert!(out.contains("all invariants hold"), "{out}");
}
