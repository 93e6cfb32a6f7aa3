//! One SQL layer for SQLite and PostgreSQL.
//!
//! Every service owns one database: a SQLite file in the embedded default, a PostgreSQL database
//! in production. Services write one SQL text for both through sqlx's `Any` driver (docs/design.md §4),
//! so this crate is the one place that knows the two apart:
//!
//! - [`Db::connect`] opens a pool from a URL. For SQLite it creates the folders and the file,
//!   switches the file to WAL, and sets `synchronous` and the busy timeout on every connection.
//! - [`Db::begin`] starts a write transaction. On SQLite that is `BEGIN IMMEDIATE`: a deferred
//!   transaction that reads and then writes can fail at once with `SQLITE_BUSY` (the busy timeout
//!   does not apply to a lock upgrade), so writers take the write lock up front and queue instead.
//! - [`Db::single`] is a writer for one statement that is a whole transaction by itself: the
//!   database commits it alone (autocommit), without the BEGIN and COMMIT round trips a
//!   [`Db::begin`] costs; on SQLite it still waits its turn behind this process's other writers.
//! - [`Db::migrate`] runs migrations embedded in the binary (`sqlx::migrate!`).
//! - [`StoreError`] turns driver errors into what callers decide on: a unique violation (an
//!   idempotent insert that lost the race), a serialization failure or busy database (retry the
//!   transaction), a lost connection (retry), or anything else.

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Executor, Transaction};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub mod many;
pub mod node;

pub use many::insert_many;

pub use sqlx;

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend named by a URL's scheme.
    pub fn of_url(url: &str) -> Result<Backend, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            _ => Err(StoreError::Config(format!(
                "unsupported database URL {:?}: expected sqlite://… or postgres://…",
                redact(url)
            ))),
        }
    }
}

/// SQLite's `synchronous` setting: how often commits wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Every commit is on disk before it returns: survives power loss. The default.
    #[default]
    Full,
    /// In WAL mode, commits survive a process crash (SIGKILL) but the last ones may be lost on
    /// power loss. Much faster on slow disks.
    Normal,
    /// No syncs at all: only for throwaway data.
    Off,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
            Synchronous::Off => "OFF",
        }
    }
}

impl FromStr for Synchronous {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Synchronous::Full),
            "normal" => Ok(Synchronous::Normal),
            "off" => Ok(Synchronous::Off),
            other => Err(StoreError::Config(format!(
                "synchronous must be full, normal or off, not {other:?}"
            ))),
        }
    }
}

/// How to open a database.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// `sqlite://path/to/file.db` (relative or absolute; `sqlite::memory:` is refused because
    /// every pool connection would see its own empty database) or `postgres://user:pw@host/db`.
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// SQLite only.
    pub synchronous: Synchronous,
    /// SQLite only: how long a writer waits for the lock before `SQLITE_BUSY`.
    pub busy_timeout: Duration,
    /// PostgreSQL only: the server ends a session that sits this long inside a transaction
    /// without sending a statement (`idle_in_transaction_session_timeout`). A process frozen
    /// mid-transaction (SIGSTOP, a paused container, a stalled VM) would otherwise hold its row
    /// locks until it wakes, and every other instance that needs those rows (a coordinator's
    /// recovery claiming a transaction, a participant's next branch on the same account) would
    /// wait with it. Our transactions are a few statements long; seconds of silence inside one
    /// mean the holder is gone, and ending its session rolls its writes back, which is safe.
    /// Zero turns it off. The holder's next statement fails as unavailable (SQLSTATE 25P03).
    pub idle_in_transaction_timeout: Duration,
}

impl DbConfig {
    pub fn new(url: impl Into<String>) -> Self {
        DbConfig {
            url: url.into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            synchronous: Synchronous::default(),
            busy_timeout: Duration::from_secs(10),
            idle_in_transaction_timeout: Duration::from_secs(5),
        }
    }

    /// A `sqlite://` URL for a file path.
    pub fn sqlite_url(path: &Path) -> String {
        format!("sqlite://{}", path.display())
    }
}

/// A pool on one service's database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// SQLite admits one writer at a time; writers of this process queue here, in order, instead
    /// of in SQLite's busy handler, whose sleeps grow to 100 ms and make a long latency tail.
    writer: Option<Arc<tokio::sync::Semaphore>>,
}

/// A write transaction (see [`Db::begin`]). Derefs to the connection, so queries take
/// `&mut *tx`; dropping it without [`WriteTx::commit`] rolls back.
#[derive(Debug)]
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    _turn: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

/// A connection for one write statement that commits by itself (see [`Db::single`]). Derefs
/// to the connection, so the statement takes `&mut *writer`.
#[derive(Debug)]
pub struct SingleWrite {
    conn: sqlx::pool::PoolConnection<Any>,
    _turn: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl std::ops::Deref for SingleWrite {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for SingleWrite {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl Db {
    /// Opens (and for SQLite creates) the database.
    pub async fn connect(config: &DbConfig) -> Result<Db, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(&config.url)?;
        let url = match backend {
            Backend::Sqlite => prepare_sqlite(config).await?,
            Backend::Postgres => config.url.clone(),
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| StoreError::Config(format!("bad database URL {:?}: {e}", redact(&url))))?
            .disable_statement_logging();
        let synchronous = config.synchronous;
        let busy_ms = config.busy_timeout.as_millis();
        // 0 turns the server's timeout off, as PostgreSQL reads it.
        let idle_ms = config.idle_in_transaction_timeout.as_millis();
        let pool = AnyPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    let settings = match backend {
                        Backend::Sqlite => format!(
                            "PRAGMA synchronous = {}; PRAGMA busy_timeout = {busy_ms}; PRAGMA foreign_keys = ON;",
                            synchronous.pragma()
                        ),
                        Backend::Postgres => {
                            format!("SET idle_in_transaction_session_timeout = {idle_ms}")
                        }
                    };
                    conn.execute(settings.as_str()).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let writer = (backend == Backend::Sqlite).then(|| Arc::new(tokio::sync::Semaphore::new(1)));
        Ok(Db {
            pool,
            backend,
            writer,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Runs the migrations that are not applied yet. Safe to call from several instances at
    /// once on PostgreSQL (sqlx takes an advisory lock).
    pub async fn migrate(&self, migrator: &Migrator) -> Result<(), StoreError> {
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// Runs several migration sets (a service's own and those shipped by shared crates, such as
    /// the TCC barrier) as one: merged and ordered by version, so they share one history table.
    /// Versions must not collide; shared crates use versions from 9_000_000_000 up.
    pub async fn migrate_all(&self, migrators: &[&Migrator]) -> Result<(), StoreError> {
        self.migrate(&combine(migrators)?).await
    }

    /// Starts a transaction that will write: `BEGIN IMMEDIATE` on SQLite, after this process's
    /// earlier writers (FIFO); `BEGIN` on PostgreSQL.
    pub async fn begin(&self) -> Result<WriteTx, StoreError> {
        let turn = self.turn().await?;
        let statement = match self.backend {
            Backend::Sqlite => Some("BEGIN IMMEDIATE".into()),
            Backend::Postgres => None,
        };
        let conn = self.idle_connection().await?;
        let tx = Transaction::begin(conn, statement).await?;
        Ok(WriteTx { tx, _turn: turn })
    }

    /// A writer for ONE statement that is the whole transaction (an INSERT … ON CONFLICT, a
    /// conditional UPDATE): the database commits it by itself, as atomically and durably as
    /// BEGIN; statement; COMMIT, two round trips fewer. On SQLite it waits its turn behind this
    /// process's other writers, as [`Db::begin`] does. A second statement on it would be a
    /// second transaction: use [`Db::begin`] for more than one.
    pub async fn single(&self) -> Result<SingleWrite, StoreError> {
        let turn = self.turn().await?;
        let conn = self.idle_connection().await?;
        Ok(SingleWrite { conn, _turn: turn })
    }

    /// This process's turn to write on SQLite (one writer at a time, FIFO); none on PostgreSQL.
    async fn turn(&self) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, StoreError> {
        match &self.writer {
            Some(writer) => {
                Ok(Some(writer.clone().acquire_owned().await.map_err(
                    |_| StoreError::Unavailable("the database is closing".into()),
                )?))
            }
            None => Ok(None),
        }
    }

    /// A pooled connection that is not inside a transaction.
    async fn idle_connection(&self) -> Result<sqlx::pool::PoolConnection<Any>, StoreError> {
        loop {
            let conn = self.pool.acquire().await?;
            if conn.is_in_transaction() {
                // A task cancelled in the middle of a transaction (a client that hung up) can
                // leave its connection in the pool with the rollback still pending; such a
                // connection refuses to begin, would run a single statement inside the
                // abandoned transaction and, on SQLite, may still hold the write lock. Close
                // it; the pool opens a fresh one.
                tracing::warn!("closing a pooled connection left inside a transaction");
                let _ = conn.close().await;
                continue;
            }
            return Ok(conn);
        }
    }

    /// Answers when the database answers a trivial query (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection, waiting for those in use to be returned and closed.
    ///
    /// sqlx's `close` can return while a connection released just before is still being
    /// pinged on its way back (seen: the ping ran after `close` returned and after the HTTP
    /// workers stopped, on a socket one of their runtimes had opened, and failed with "being
    /// shutdown"). So this also waits until the pool holds no connection at all.
    pub async fn close(&self) {
        self.pool.close().await;
        while self.pool.size() > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Merges migration sets into one, ordered by version; two migrations with one version are a
/// configuration error.
pub fn combine(migrators: &[&Migrator]) -> Result<Migrator, StoreError> {
    let mut all: Vec<sqlx::migrate::Migration> = migrators
        .iter()
        .flat_map(|m| m.migrations.iter().cloned())
        .collect();
    all.sort_by_key(|m| m.version);
    if let Some(w) = all.windows(2).find(|w| w[0].version == w[1].version) {
        return Err(StoreError::Config(format!(
            "two migrations have version {}: {:?} and {:?}",
            w[0].version, w[0].description, w[1].description
        )));
    }
    Ok(Migrator {
        migrations: std::borrow::Cow::Owned(all),
        ignore_missing: migrators.iter().all(|m| m.ignore_missing),
        locking: true,
        no_tx: false,
    })
}

/// Creates the folders of a SQLite file, makes sure the URL creates the file, and switches the
/// file to WAL once (the setting is stored in the file; doing it from every new pool connection
/// races for an exclusive lock).
async fn prepare_sqlite(config: &DbConfig) -> Result<String, StoreError> {
    let rest = config
        .url
        .strip_prefix("sqlite://")
        .or_else(|| config.url.strip_prefix("sqlite:"))
        .unwrap_or_default();
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() || path == ":memory:" || query.is_some_and(|q| q.contains("mode=memory")) {
        return Err(StoreError::Config(
            "an in-memory SQLite database is not supported: every pooled connection would see \
             a different database; use a file"
                .into(),
        ));
    }
    let path = PathBuf::from(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Config(format!("cannot create the folder {}: {e}", dir.display()))
        })?;
    }
    let url = match query {
        Some(q) if q.contains("mode=") => config.url.clone(),
        Some(_) => format!("{}&mode=rwc", config.url),
        None => format!("{}?mode=rwc", config.url),
    };
    let mut conn = sqlx::AnyConnection::connect(&url).await?;
    conn.execute(
        format!(
            "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL;",
            config.busy_timeout.as_millis()
        )
        .as_str(),
    )
    .await?;
    conn.close().await?;
    Ok(url)
}

/// Hides the password of a URL for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// What went wrong in the database, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An insert hit a unique key: for an idempotent insert, somebody else got there first.
    #[error("unique constraint violated{}", .constraint.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    UniqueViolation { constraint: Option<String> },
    /// The transaction lost a race (PostgreSQL serialization failure or deadlock, SQLite busy or
    /// locked): run it again.
    #[error("the transaction conflicted with another one; retry it: {0}")]
    Conflict(String),
    /// The database could not be reached or the connection broke: retry later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A query that must return a row returned none.
    #[error("row not found")]
    NotFound,
    /// A migration failed or the database has migrations this binary does not know.
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The configuration cannot work (bad URL, folder that cannot be created).
    #[error("database configuration: {0}")]
    Config(String),
    /// A stored row holds a value this binary cannot read (a broken or foreign database).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Anything else: a bug or a broken database.
    #[error("database error: {0}")]
    Other(sqlx::Error),
}

impl StoreError {
    /// Whether running the same transaction again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Conflict(_) | StoreError::Unavailable(_))
    }
}

/// PostgreSQL `serialization_failure` and `deadlock_detected`.
const PG_CONFLICT_CODES: [&str; 2] = ["40001", "40P01"];
/// PostgreSQL classes 08 (connection exception) and 57P (operator intervention: shutdown,
/// terminated backend).
const PG_UNAVAILABLE_PREFIXES: [&str; 4] = ["08", "57P", "53", "25P03"];
/// SQLite primary result codes SQLITE_BUSY (5) and SQLITE_LOCKED (6); extended codes carry the
/// primary code in their low byte.
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(ref db) => {
                if db.is_unique_violation() {
                    return StoreError::UniqueViolation {
                        constraint: db.constraint().map(str::to_owned),
                    };
                }
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                if PG_CONFLICT_CODES.contains(&code.as_str()) {
                    return StoreError::Conflict(db.message().to_owned());
                }
                if PG_UNAVAILABLE_PREFIXES.iter().any(|p| code.starts_with(p)) {
                    return StoreError::Unavailable(db.message().to_owned());
                }
                if let Ok(n) = code.parse::<i64>() {
                    if matches!(n & 0xff, SQLITE_BUSY | SQLITE_LOCKED) {
                        return StoreError::Conflict(db.message().to_owned());
                    }
                }
                StoreError::Other(error)
            }
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(error.to_string()),
            sqlx::Error::Migrate(e) => StoreError::Migration(*e),
            sqlx::Error::Configuration(e) => StoreError::Config(e.to_string()),
            other => StoreError::Other(other),
        }
    }
}

/// A random positive `BIGINT` key, for rows that need a unique id and no order (deposits).
pub fn random_id() -> i64 {
    (rand::random::<u64>() >> 1) as i64
}

/// Milliseconds since the Unix epoch: the one timestamp type every table uses (docs/design.md §4).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_backend_and_others_are_refused() {
        assert_eq!(
            Backend::of_url("sqlite://data/x.db").unwrap(),
            Backend::Sqlite
        );
        assert_eq!(
            Backend::of_url("postgres://u@h/db").unwrap(),
            Backend::Postgres
        );
        assert_eq!(
            Backend::of_url("postgresql://u@h/db").unwrap(),
            Backend::Postgres
        );
        assert!(matches!(
            Backend::of_url("mysql://u@h/db"),
            Err(StoreError::Config(_))
        ));
    }

    #[test]
    fn passwords_are_redacted_from_urls_in_messages() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/pay"),
            "postgres://app:***@db:5432/pay"
        );
        assert_eq!(redact("postgres://app@db/pay"), "postgres://app@db/pay");
        assert_eq!(redact("sqlite://data/a.db"), "sqlite://data/a.db");
    }

    #[test]
    fn synchronous_parses_case_insensitively_and_rejects_unknown_values() {
        assert_eq!(
            "NORMAL".parse::<Synchronous>().unwrap(),
            Synchronous::Normal
        );
        assert_eq!("full".parse::<Synchronous>().unwrap(), Synchronous::Full);
        assert!("fast".parse::<Synchronous>().is_err());
    }

    #[tokio::test]
    async fn an_in_memory_sqlite_url_is_refused_with_a_clear_error() {
        let err = Db::connect(&DbConfig::new("sqlite::memory:"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Config(ref m) if m.contains("in-memory")),
            "{err}"
        );
    }
}
