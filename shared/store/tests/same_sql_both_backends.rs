//! The storage rules of docs/design.md §4, checked on a real SQLite file and a real PostgreSQL database:
//! the same migrations and the same SQL text give the same results on both.
use futures::future::join_all;
use sqlx::Row;
use store::{Backend, Db, DbConfig, StoreError};
use testkit::{both_backends, TestDb};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("tests/migrations");

async fn open(db: &TestDb) -> Db {
    let db = Db::connect(&DbConfig::new(db.url())).await.unwrap();
    db.migrate(&MIGRATOR).await.unwrap();
    db
}

async fn seed_account(db: &Db, id: i64, owner: &str, available: i64) {
    sqlx::query("INSERT INTO accounts (id, owner, available, frozen, updated_at) VALUES ($1, $2, $3, 0, $4)")
        .bind(id)
        .bind(owner)
        .bind(available)
        .bind(store::now_ms())
        .execute(db.pool())
        .await
        .unwrap();
}

/// Runs a fixed script of statements and records what each returned, as text.
async fn transcript(db: &Db) -> Vec<String> {
    let mut out = Vec::new();
    seed_account(db, 1, "alice", 1_000).await;
    seed_account(db, 2, "bob", 0).await;

    // ON CONFLICT DO NOTHING: first insert wins, the second changes nothing.
    for _ in 0..2 {
        let r = sqlx::query(
            "INSERT INTO barrier (gid, branch_id, op, created_at, payload) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(42_i64)
        .bind("b1")
        .bind("try")
        .bind(7_i64)
        .bind(vec![0u8, 1, 2, 255])
        .execute(db.pool())
        .await
        .unwrap();
        out.push(format!("insert-or-nothing affected {}", r.rows_affected()));
    }

    // RETURNING from an UPDATE, with placeholders used out of order.
    let row = sqlx::query(
        "UPDATE accounts SET available = available - $2, frozen = frozen + $2 WHERE id = $1 AND available >= $2 RETURNING available, frozen",
    )
    .bind(1_i64)
    .bind(300_i64)
    .fetch_one(db.pool())
    .await
    .unwrap();
    out.push(format!(
        "freeze -> available {} frozen {}",
        row.get::<i64, _>("available"),
        row.get::<i64, _>("frozen")
    ));

    // A conditional update that does not apply: no row.
    let none = sqlx::query("UPDATE accounts SET available = available - $1 WHERE id = $2 AND available >= $1 RETURNING id")
        .bind(5_000_i64)
        .bind(1_i64)
        .fetch_optional(db.pool())
        .await
        .unwrap();
    out.push(format!("overdraw returned a row: {}", none.is_some()));

    // INSERT … RETURNING.
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO ledger (id, account_id, delta) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(9_007_199_254_740_993_i64) // above 2^53: must not pass through a float
    .bind(1_i64)
    .bind(-300_i64)
    .fetch_one(db.pool())
    .await
    .unwrap();
    out.push(format!("ledger id {id}"));

    // Aggregates cast to BIGINT read the same on both.
    let (sum, count): (i64, i64) = sqlx::query_as(
        "SELECT CAST(SUM(available + frozen) AS BIGINT), CAST(COUNT(*) AS BIGINT) FROM accounts",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    out.push(format!("total {sum} over {count} accounts"));

    // SUM over no rows is NULL on both.
    let empty: Option<i64> =
        sqlx::query_scalar("SELECT CAST(SUM(delta) AS BIGINT) FROM ledger WHERE account_id = $1")
            .bind(99_i64)
            .fetch_one(db.pool())
            .await
            .unwrap();
    out.push(format!("empty sum {empty:?}"));

    // Blobs round-trip byte for byte, NULL blobs stay NULL.
    let payload: Option<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM barrier WHERE gid = $1")
        .bind(42_i64)
        .fetch_one(db.pool())
        .await
        .unwrap();
    out.push(format!("payload {payload:?}"));

    // Text with quotes and non-ASCII.
    sqlx::query("UPDATE accounts SET owner = $1 WHERE id = $2")
        .bind("Zoë 'the' \"merchant\"")
        .bind(2_i64)
        .execute(db.pool())
        .await
        .unwrap();
    let owner: String = sqlx::query_scalar("SELECT owner FROM accounts WHERE id = $1")
        .bind(2_i64)
        .fetch_one(db.pool())
        .await
        .unwrap();
    out.push(format!("owner {owner}"));

    // Extremes of i64.
    sqlx::query("INSERT INTO ledger (id, account_id, delta) VALUES ($1, $2, $3)")
        .bind(i64::MAX)
        .bind(2_i64)
        .bind(i64::MIN)
        .execute(db.pool())
        .await
        .unwrap();
    let min: i64 = sqlx::query_scalar("SELECT delta FROM ledger WHERE id = $1")
        .bind(i64::MAX)
        .fetch_one(db.pool())
        .await
        .unwrap();
    out.push(format!("i64 extremes {min}"));
    out
}

async fn the_same_script_gives_a_known_transcript(db: TestDb) {
    let db = open(&db).await;
    let got = transcript(&db).await;
    let extremes = format!("i64 extremes {}", i64::MIN);
    let expected = vec![
        "insert-or-nothing affected 1",
        "insert-or-nothing affected 0",
        "freeze -> available 700 frozen 300",
        "overdraw returned a row: false",
        "ledger id 9007199254740993",
        "total 1000 over 2 accounts",
        "empty sum None",
        "payload Some([0, 1, 2, 255])",
        "owner Zoë 'the' \"merchant\"",
        &extremes,
    ];
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_postgres_give_identical_transcripts_side_by_side() {
    let Some(pg) = TestDb::postgres().await else {
        return;
    };
    let lite = TestDb::sqlite();
    let a = transcript(&open(&lite).await).await;
    let b = transcript(&open(&pg).await).await;
    assert_eq!(a, b);
}

async fn migrations_run_once_and_a_second_run_changes_nothing(db: TestDb) {
    let first = open(&db).await;
    seed_account(&first, 1, "alice", 10).await;
    let again = open(&db).await; // runs the migrator again
    let applied: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM _sqlx_migrations")
        .fetch_one(again.pool())
        .await
        .unwrap();
    assert_eq!(applied, 2);
    let rows: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM accounts")
        .fetch_one(again.pool())
        .await
        .unwrap();
    assert_eq!(rows, 1, "data survived the second migration run");
}

async fn a_duplicate_key_is_reported_as_a_unique_violation(db: TestDb) {
    let db = open(&db).await;
    seed_account(&db, 1, "alice", 10).await;
    let err: StoreError = sqlx::query(
        "INSERT INTO accounts (id, owner, available, frozen, updated_at) VALUES ($1, $2, 0, 0, 0)",
    )
    .bind(1_i64)
    .bind("someone-else")
    .execute(db.pool())
    .await
    .unwrap_err()
    .into();
    assert!(matches!(err, StoreError::UniqueViolation { .. }), "{err:?}");
    assert!(!err.is_transient());

    // A secondary unique index too.
    let err: StoreError = sqlx::query(
        "INSERT INTO accounts (id, owner, available, frozen, updated_at) VALUES ($1, $2, 0, 0, 0)",
    )
    .bind(2_i64)
    .bind("alice")
    .execute(db.pool())
    .await
    .unwrap_err()
    .into();
    assert!(matches!(err, StoreError::UniqueViolation { .. }), "{err:?}");
}

async fn fifty_concurrent_conditional_updates_never_overdraw(db: TestDb) {
    let db = open(&db).await;
    // 30 units, 50 tasks each taking 1: exactly 30 succeed.
    seed_account(&db, 1, "alice", 30).await;
    let tasks = (0..50).map(|_| {
        let db = db.clone();
        tokio::spawn(async move {
            let r = sqlx::query(
                "UPDATE accounts SET available = available - $1, frozen = frozen + $1 WHERE id = $2 AND available >= $1",
            )
            .bind(1_i64)
            .bind(1_i64)
            .execute(db.pool())
            .await
            .map_err(StoreError::from)
            .unwrap();
            let available: i64 = sqlx::query_scalar("SELECT available FROM accounts WHERE id = $1")
                .bind(1_i64)
                .fetch_one(db.pool())
                .await
                .unwrap();
            assert!(available >= 0, "balance went negative: {available}");
            r.rows_affected()
        })
    });
    let applied: u64 = join_all(tasks).await.into_iter().map(|r| r.unwrap()).sum();
    assert_eq!(applied, 30);
    let (available, frozen): (i64, i64) =
        sqlx::query_as("SELECT available, frozen FROM accounts WHERE id = $1")
            .bind(1_i64)
            .fetch_one(db.pool())
            .await
            .unwrap();
    assert_eq!((available, frozen), (0, 30));
}

async fn fifty_concurrent_write_transactions_serialise_without_losing_a_write(db: TestDb) {
    let db = open(&db).await;
    seed_account(&db, 1, "alice", 0).await;
    // Read-then-write inside a transaction is the pattern that fails with SQLITE_BUSY under a
    // deferred BEGIN; Db::begin must queue writers instead. Each task inserts a ledger row and
    // bumps the balance in one transaction.
    let tasks = (0..50_i64).map(|i| {
        let db = db.clone();
        tokio::spawn(async move {
            let mut tx = db.begin().await.unwrap();
            let before: i64 = sqlx::query_scalar("SELECT available FROM accounts WHERE id = $1")
                .bind(1_i64)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            sqlx::query("INSERT INTO ledger (id, account_id, delta) VALUES ($1, $2, $3)")
                .bind(i)
                .bind(1_i64)
                .bind(1_i64)
                .execute(&mut *tx)
                .await
                .unwrap();
            let after: i64 = sqlx::query_scalar(
                "UPDATE accounts SET available = available + $1 WHERE id = $2 RETURNING available",
            )
            .bind(1_i64)
            .bind(1_i64)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            tx.commit().await.unwrap();
            (before, after)
        })
    });
    let results: Vec<(i64, i64)> = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let (available, ledger): (i64, i64) = sqlx::query_as(
        "SELECT a.available, CAST((SELECT COUNT(*) FROM ledger) AS BIGINT) FROM accounts a WHERE a.id = $1",
    )
    .bind(1_i64)
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!((available, ledger), (50, 50));
    if db.backend() == Backend::Sqlite {
        // SQLite serialises writers, so each saw the one before it.
        assert!(results.iter().all(|(b, a)| a - b == 1));
    }
}

async fn a_rolled_back_transaction_leaves_nothing_behind(db: TestDb) {
    let db = open(&db).await;
    seed_account(&db, 1, "alice", 100).await;
    {
        let mut tx = db.begin().await.unwrap();
        sqlx::query("UPDATE accounts SET available = 0 WHERE id = $1")
            .bind(1_i64)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    }
    {
        let mut tx = db.begin().await.unwrap();
        sqlx::query("UPDATE accounts SET available = 1 WHERE id = $1")
            .bind(1_i64)
            .execute(&mut *tx)
            .await
            .unwrap();
        // dropped without commit
    }
    let available: i64 = sqlx::query_scalar("SELECT available FROM accounts WHERE id = $1")
        .bind(1_i64)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(available, 100);
}

/// `insert_many` writes every row once, whatever the count (200 rows: statements of 128, 64
/// and 8), with the values bound to each row in order; a row that breaks a key fails the whole
/// call, and the caller's rollback leaves nothing of it.
async fn many_rows_go_in_few_statements_each_row_exactly_once(db: TestDb) {
    let db = open(&db).await;
    let head = "INSERT INTO accounts (id, owner, available, frozen, updated_at) VALUES";
    for count in [1_i64, 3, 13, 200] {
        let base = count * 1_000;
        let rows: Vec<(i64, String)> = (base..base + count)
            .map(|id| (id, format!("o{id}")))
            .collect();
        let mut tx = db.begin().await.unwrap();
        store::insert_many(&mut tx, head, 5, &rows, |query, (id, owner)| {
            query
                .bind(*id)
                .bind(owner)
                .bind(*id * 2)
                .bind(0_i64)
                .bind(7_i64)
        })
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let (n, sum, owners): (i64, i64, i64) = sqlx::query_as(
            "SELECT CAST(COUNT(*) AS BIGINT), CAST(SUM(available - 2 * id) AS BIGINT), \
             CAST(COUNT(DISTINCT owner) AS BIGINT) FROM accounts WHERE id >= $1 AND id < $2",
        )
        .bind(base)
        .bind(base + 1_000)
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!((n, sum, owners), (count, 0, count), "{count} rows");
    }
    // Ids 5_000..5_005, and 13_000 again: a unique violation, nothing of the call kept.
    let rows: Vec<(i64, String)> = (5_000..5_005)
        .chain([13_000])
        .map(|id| (id, format!("again{id}")))
        .collect();
    let mut tx = db.begin().await.unwrap();
    let err = store::insert_many(&mut tx, head, 5, &rows, |query, (id, owner)| {
        query
            .bind(*id)
            .bind(owner)
            .bind(0_i64)
            .bind(0_i64)
            .bind(0_i64)
    })
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::UniqueViolation { .. }), "{err:?}");
    drop(tx);
    let again: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM accounts WHERE owner LIKE 'again%'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(again, 0);
}

both_backends!(
    many_rows_go_in_few_statements_each_row_exactly_once,
    the_same_script_gives_a_known_transcript,
    migrations_run_once_and_a_second_run_changes_nothing,
    a_duplicate_key_is_reported_as_a_unique_violation,
    fifty_concurrent_conditional_updates_never_overdraw,
    fifty_concurrent_write_transactions_serialise_without_losing_a_write,
    a_rolled_back_transaction_leaves_nothing_behind,
);

#[tokio::test]
async fn a_sqlite_file_is_created_with_its_folders_in_wal_mode() {
    let dir = testkit::temp_dir("store-");
    let path = dir.path().join("a/b/c/service.db");
    let db = Db::connect(&DbConfig::new(DbConfig::sqlite_url(&path)))
        .await
        .unwrap();
    assert!(path.exists());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(sync, 2, "FULL by default");
}

#[tokio::test]
async fn synchronous_normal_is_applied_to_every_connection() {
    let dir = testkit::temp_dir("store-");
    let mut cfg = DbConfig::new(DbConfig::sqlite_url(&dir.path().join("x.db")));
    cfg.synchronous = store::Synchronous::Normal;
    cfg.max_connections = 4;
    let db = Db::connect(&cfg).await.unwrap();
    // Hold several connections at once so more than one is opened.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(db.pool().acquire().await.unwrap());
    }
    for conn in &mut conns {
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(sync, 1);
    }
}

#[tokio::test]
async fn an_unreachable_postgres_is_reported_as_unavailable() {
    let port = testkit::free_port();
    let mut cfg = DbConfig::new(format!("postgres://nobody@127.0.0.1:{port}/none"));
    cfg.acquire_timeout = std::time::Duration::from_secs(2);
    let err = Db::connect(&cfg).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn an_unsupported_url_is_a_config_error() {
    let err = Db::connect(&DbConfig::new("mysql://x@y/z"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err:?}");
}

static MORE: sqlx::migrate::Migrator = sqlx::migrate!("tests/more_migrations");

async fn two_migration_sets_run_as_one_history(db: TestDb) {
    let db = Db::connect(&DbConfig::new(db.url())).await.unwrap();
    db.migrate_all(&[&MIGRATOR, &MORE]).await.unwrap();
    db.migrate_all(&[&MIGRATOR, &MORE]).await.unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2, 9_000_000_001]);
    sqlx::query("INSERT INTO extra (id) VALUES ($1)")
        .bind(1_i64)
        .execute(db.pool())
        .await
        .unwrap();
}

both_backends!(two_migration_sets_run_as_one_history);

#[test]
fn migration_sets_with_a_shared_version_are_refused() {
    let err = store::combine(&[&MIGRATOR, &MIGRATOR]).unwrap_err();
    assert!(
        matches!(err, StoreError::Config(ref m) if m.contains("two migrations have version 1")),
        "{err}"
    );
}

async fn a_transaction_abandoned_by_a_cancelled_task_does_not_poison_the_pool(db: TestDb) {
    // One connection, so the abandoned one is the one the next writer gets.
    let mut cfg = DbConfig::new(db.url());
    cfg.max_connections = 1;
    let db = Db::connect(&cfg).await.unwrap();
    db.migrate(&MIGRATOR).await.unwrap();
    seed_account(&db, 1, "alice", 0).await;
    for i in 0..20_i64 {
        let d = db.clone();
        // The task says when its UPDATE has run inside the open transaction, so the abort
        // always abandons a transaction with a write in it.
        let (updated, in_transaction) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tx = d.begin().await.unwrap();
            sqlx::query("UPDATE accounts SET available = available + 1000 WHERE id = $1")
                .bind(1_i64)
                .execute(&mut *tx)
                .await
                .unwrap();
            let _ = updated.send(());
            std::future::pending::<()>().await;
        });
        in_transaction
            .await
            .unwrap_or_else(|_| panic!("round {i}: the task died before its UPDATE"));
        task.abort();
        let _ = task.await;
        let mut tx = db
            .begin()
            .await
            .unwrap_or_else(|e| panic!("round {i}: {e}"));
        sqlx::query("UPDATE accounts SET available = available + 1 WHERE id = $1")
            .bind(1_i64)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let available: i64 = sqlx::query_scalar("SELECT available FROM accounts WHERE id = $1")
        .bind(1_i64)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(
        available, 20,
        "the abandoned updates were rolled back, the committed ones kept"
    );
}

both_backends!(a_transaction_abandoned_by_a_cancelled_task_does_not_poison_the_pool);

/// A holder that goes silent inside a transaction (a frozen process, a paused container) loses
/// its session after `idle_in_transaction_timeout`: its row lock is released and its write
/// rolled back, so the next writer proceeds instead of waiting for the holder to wake.
/// PostgreSQL only: a SQLite file has one writer at a time by design, and a frozen writer there
/// is a whole-file matter the busy timeout reports.
#[tokio::test]
async fn a_writer_silent_inside_a_transaction_loses_its_locks_to_the_next() {
    let Some(pg) = TestDb::postgres().await else {
        return;
    };
    let mut cfg = DbConfig::new(pg.url());
    cfg.idle_in_transaction_timeout = std::time::Duration::from_millis(500);
    let db = Db::connect(&cfg).await.unwrap();
    db.migrate(&MIGRATOR).await.unwrap();
    seed_account(&db, 1, "alice", 0).await;
    let mut frozen = db.begin().await.unwrap();
    sqlx::query("UPDATE accounts SET available = available + 1000 WHERE id = $1")
        .bind(1_i64)
        .execute(&mut *frozen)
        .await
        .unwrap();
    // The holder never speaks again; the next writer must get the row well before 10 s.
    let started = std::time::Instant::now();
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sqlx::query("UPDATE accounts SET available = available + 1 WHERE id = $1")
            .bind(1_i64)
            .execute(db.pool()),
    )
    .await
    .expect("the next writer still waits for the silent holder's lock");
    next.unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(400));
    // The holder's session is gone: its commit fails, as a transient error (the caller retries
    // or recovery takes over), and its write never lands.
    let gone = StoreError::from(frozen.commit().await.unwrap_err());
    assert!(gone.is_transient(), "{gone:?}");
    let available: i64 = sqlx::query_scalar("SELECT available FROM accounts WHERE id = $1")
        .bind(1_i64)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(available, 1, "only the next writer's update is kept");
}
