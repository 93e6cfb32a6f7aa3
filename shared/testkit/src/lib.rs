//! Test infrastructure for real-parts tests.
//!
//! The project's tests talk to real databases and real processes (no mocks where the real thing
//! can run). This crate makes that cheap to write:
//!
//! - [`TestDb::sqlite`]: a fresh SQLite file in a temporary folder.
//! - [`TestDb::postgres`]: a fresh PostgreSQL database, from the first source that works:
//!   1. `DATABASE_URL`: a uniquely named database is created on that server;
//!   2. a throwaway cluster for this test process: `initdb` (run as the `postgres` user when we
//!      are root, because `initdb` refuses root) into a temporary folder, started on a free port;
//!      a watchdog process stops it and removes the folder when the test process exits, however
//!      it exits;
//!   3. testcontainers, when a Docker daemon answers.
//!
//!   When none works the test **fails** with the reason and what to do. Skipping is an explicit
//!   opt-in: `ALLOW_SKIP_POSTGRES=1` turns the failure into a printed `SKIPPED (no PostgreSQL)`
//!   (never set in CI, so a green CI means the PostgreSQL tests ran).
//! - [`both_backends!`]: one test body, two tests (`…::on_sqlite`, `…::on_postgres`).
//! - [`free_port`] and [`Service`]: spawn a real binary, wait for its `/readyz`, SIGKILL it,
//!   restart it, read its log.

pub mod browser;
pub mod cli;
pub mod containers;
pub mod participant;
pub mod platform;
mod postgres;
mod process;
pub mod scripted;

pub use postgres::postgres_available;
pub use process::{free_port, Service, ServiceSpec, StartError};

use std::sync::atomic::{AtomicU64, Ordering};

/// Which database a [`TestDb`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database for one test.
#[derive(Debug)]
pub struct TestDb {
    url: String,
    backend: Backend,
    /// Keeps the SQLite folder alive for as long as the test holds the database.
    _dir: Option<tempfile::TempDir>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique to this process and call, for databases and folders.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}_{}_{n}_{nanos:x}", std::process::id())
}

impl TestDb {
    /// A new SQLite file in its own temporary folder (removed when the `TestDb` is dropped).
    pub fn sqlite() -> TestDb {
        let dir = tempfile::Builder::new()
            .prefix("testkit-sqlite-")
            .tempdir()
            .expect("create a temporary folder for SQLite");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        TestDb {
            url,
            backend: Backend::Sqlite,
            _dir: Some(dir),
        }
    }

    /// A new PostgreSQL database. When no PostgreSQL can be had this panics with the reason,
    /// unless `ALLOW_SKIP_POSTGRES=1` asks for `None` (the reason printed as `SKIPPED`).
    pub async fn postgres() -> Option<TestDb> {
        match postgres::create_database().await {
            Ok(url) => Some(TestDb {
                url,
                backend: Backend::Postgres,
                _dir: None,
            }),
            Err(reason) => {
                let allowed = std::env::var("ALLOW_SKIP_POSTGRES").is_ok_and(|v| v == "1");
                if !allowed || std::env::var("REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                    panic!(
                        "no PostgreSQL could be had: {reason}. Install the server (apt-get install \
                         postgresql), set DATABASE_URL or PG_BIN, or set ALLOW_SKIP_POSTGRES=1 to \
                         skip the PostgreSQL tests knowingly"
                    );
                }
                eprintln!("SKIPPED (no PostgreSQL, ALLOW_SKIP_POSTGRES=1): {reason}");
                None
            }
        }
    }

    /// The connection URL (`sqlite://…` or `postgres://…`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Another fresh database of the same backend (for tests that need one per service).
    pub async fn sibling(&self) -> TestDb {
        match self.backend {
            Backend::Sqlite => TestDb::sqlite(),
            Backend::Postgres => TestDb::postgres()
                .await
                .expect("PostgreSQL was available a moment ago"),
        }
    }
}

/// The test process's dev PKI: one CA for every service and test client this process starts
/// on its own (the coordinator tests' coordinators, scripted participants, participant
/// processes and their test clients), so they trust each other over mutual TLS. Services
/// started with `<PREFIX>TLS__DIR` set to it issue their certificates here.
pub fn pki_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| temp_dir("pki-")).path()
}

/// The certificates of `role` from [`pki_dir`] (issued on first use).
pub fn trust(role: &str) -> trust::Trust {
    let files = trust::dev::issue(pki_dir(), role)
        .unwrap_or_else(|e| panic!("test certificates for {role}: {e}"));
    trust::Trust::from_files(&files.ca, &files.cert, &files.key)
        .unwrap_or_else(|e| panic!("test certificates for {role}: {e}"))
}

/// A temporary folder for a test's files (logs, data folders of spawned services).
/// Where `tool` is on `PATH` (`command -v`), if it is.
pub fn which(tool: &str) -> Option<String> {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temporary folder")
}

/// Declares two tests that run one async test body on a fresh SQLite database and on a fresh
/// PostgreSQL database:
///
/// ```ignore
/// async fn balances_never_go_negative(db: testkit::TestDb) { /* … */ }
/// testkit::both_backends!(balances_never_go_negative);
/// // tests: balances_never_go_negative::on_sqlite, balances_never_go_negative::on_postgres
/// ```
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    super::$name($crate::TestDb::sqlite()).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    if let Some(db) = $crate::TestDb::postgres().await {
                        super::$name(db).await
                    }
                }
            }
        )+
    };
}
