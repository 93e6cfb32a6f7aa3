//! The project began with a course whose credentials leaked through a committed config file:
//! `scripts/scan-secrets` (run by CI, and here) finds secrets in the tree and anywhere in the
//! history, and these tests prove it finds a planted one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scan(dir: &Path) -> Output {
    Command::new(repo().join("scripts/scan-secrets"))
        .arg(dir)
        .output()
        .expect("scripts/scan-secrets runs")
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

#[test]
fn the_repository_and_its_whole_history_hold_no_secret() {
    let out = scan(&repo());
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_secret_committed_and_then_deleted_fails_the_scan_which_names_the_commit_but_not_the_secret() {
    let dir = testkit::temp_dir("planted-");
    let d = dir.path();
    git(d, &["init", "-q"]);
    std::fs::write(d.join("README"), "nothing to see\n").unwrap();
    git(d, &["add", "."]);
    git(d, &["commit", "-qm", "clean"]);
    // A clean repository passes.
    assert!(scan(d).status.success(), "{:?}", scan(d));

    // A config file with an admin token, committed, then deleted in the next commit.
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    std::fs::write(
        d.join("settings.conf"),
        format!("admin_token = \"{token}\"\n"),
    )
    .unwrap();
    git(d, &["add", "-f", "settings.conf"]);
    git(d, &["commit", "-qm", "oops"]);
    let planted = Command::new("git")
        .current_dir(d)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .unwrap();
    let planted = String::from_utf8_lossy(&planted.stdout).trim().to_owned();
    let in_tree = scan(d);
    let said = String::from_utf8_lossy(&in_tree.stderr).into_owned();
    assert!(!in_tree.status.success(), "{said}");
    assert!(said.contains("a secret in settings.conf:1"), "{said}");

    git(d, &["rm", "-q", "settings.conf"]);
    git(d, &["commit", "-qm", "remove it"]);
    let in_history = scan(d);
    let said = String::from_utf8_lossy(&in_history.stderr).into_owned()
        + &String::from_utf8_lossy(&in_history.stdout);
    assert!(
        !in_history.status.success(),
        "deleting is not enough: {said}"
    );
    assert!(
        said.contains(&format!("a secret added in commit {planted}")),
        "{said}"
    );
    assert!(
        !said.contains(&token),
        "the scan must not print the secret: {said}"
    );
}
