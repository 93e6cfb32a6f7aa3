//! What the platform-level tests share: a free port offset, and the one-command platform
//! started in a folder of its own and waited for until it says it is running ([`Running`]
//! wraps it for the tests that talk to it over HTTP). Each test file uses part of it.
#![allow(dead_code)]

use serde_json::json;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An offset under which the services' ports and `extra` ports are all free.
pub fn free_offset(extra: &[u16]) -> u16 {
    loop {
        let offset = 1_000 + rand::random::<u16>() % 14_000;
        let mut ports = vec![8080u16, 8081, 8082, 8090, 50050, 50051, 50052, 50053];
        ports.extend_from_slice(extra);
        if ports
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p + offset)).is_ok())
        {
            return offset;
        }
    }
}

/// `root/target/release/platform ARGS` run in `root`, once its banner says it is running
/// (within two minutes, or the test fails with what it printed).
pub fn start_platform(root: &Path, args: &[&str]) -> Child {
    start_platform_with(root, args, &[])
}

/// [`start_platform`] with environment variables (the services inherit them).
pub fn start_platform_with(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut platform = Command::new(root.join("target/release/platform"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = platform.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut banner = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let running = line.starts_with("tcc-pay is running");
                banner.push(line);
                if running {
                    return platform;
                }
            }
            Err(_) if Instant::now() > deadline => {
                let _ = platform.kill();
                panic!("the platform did not start: {banner:#?}");
            }
            Err(_) => assert!(
                platform.try_wait().unwrap().is_none(),
                "the platform exited: {banner:#?}"
            ),
        }
    }
}

/// The repository's root.
pub fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The one-command platform in a folder of its own, on free ports; stopped when dropped.
pub struct Running {
    child: std::process::Child,
    pub root: tempfile::TempDir,
    pub offset: u16,
}

impl Running {
    pub fn start(bin: &str) -> Running {
        Running::start_with(bin, &[])
    }

    /// With environment variables for the platform and its services
    /// (`ORDER_API__RATE_LIMIT__PER_SECOND=0`, say).
    pub fn start_with(bin: &str, env: &[(&str, &str)]) -> Running {
        let root = testkit::temp_dir("platform-");
        let bin = Path::new(bin);
        std::fs::create_dir_all(root.path().join("target/release")).unwrap();
        std::os::unix::fs::symlink(bin, root.path().join("target/release/platform")).unwrap();
        let offset = free_offset(&[16686, 4317]);
        let child = start_platform_with(root.path(), &["--port-offset", &offset.to_string()], env);
        Running {
            child,
            root,
            offset,
        }
    }

    pub fn url(&self, port: u16, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", port + self.offset)
    }

    pub fn console(&self, path: &str) -> String {
        self.url(8090, &format!("/console{path}"))
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.root.path().join("data/admin-token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn user_token(&self, user: &str) -> String {
        let out = Command::new(self.root.path().join("target/release/platform"))
            .args(["--data", "data", "token", "--sub", user])
            .current_dir(self.root.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Waits (up to 20 s) until the coordinator reports transaction `gid` in `status`. An
    /// order answers once its decision is durable; its Confirms or Cancels follow the answer.
    pub async fn wait_for_transaction(&self, gid: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t: serde_json::Value = reqwest::Client::new()
                .get(self.url(8090, &format!("/api/v1/transactions/{gid}")))
                .bearer_auth(self.admin_token())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if t["status"] == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "transaction {gid} never became {status}: {t}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Places an order; returns the order API's answer.
    pub async fn order(&self, user: &str, key: &str, sku: &str) -> serde_json::Value {
        let answer = reqwest::Client::new()
            .post(self.url(8080, "/api/v1/orders"))
            .bearer_auth(self.user_token(user))
            .header("Idempotency-Key", key)
            .json(&json!({"sku": sku, "quantity": 1}))
            .send()
            .await
            .unwrap();
        answer.json().await.unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
    }
}
