//! The barrier's guarantees, on a SQLite file and on PostgreSQL, with a small wallet handler:
//! idempotence, null compensation, anti-hanging, rollback of rejected tries, and races between a
//! Try and its Cancel.
use futures::future::{join_all, BoxFuture};
use ids::Gid;
use sqlx::AnyConnection;
use std::sync::Arc;
use store::{Db, DbConfig};
use tcc::barrier::{self, Verdict};
use tcc::{BranchRef, Handler, Op, OpError, Rejection};
use testkit::{both_backends, TestDb};

static WALLET: sqlx::migrate::Migrator = sqlx::migrate!("./tests/migrations");

/// Freezes on Try, spends on Confirm, unfreezes on Cancel; debits on Action, refunds on
/// Compensate. The payload is the amount as a decimal string.
struct Wallet;

impl Handler for Wallet {
    type Payload = i64;

    fn decode(&self, payload: &[u8]) -> Result<i64, Rejection> {
        let amount: i64 = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Rejection::invalid("amount is not a number"))?;
        if amount <= 0 {
            return Err(Rejection::invalid("amount must be positive"));
        }
        Ok(amount)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        _: &'a BranchRef,
        op: Op,
        amount: &'a i64,
    ) -> BoxFuture<'a, Result<(), OpError>> {
        Box::pin(async move {
            let (sql, may_fail) = match op {
                Op::Try => ("UPDATE wallet SET available = available - $1, frozen = frozen + $1 WHERE id = 1 AND available >= $1", true),
                Op::Confirm => ("UPDATE wallet SET frozen = frozen - $1, spent = spent + $1 WHERE id = 1 AND frozen >= $1", false),
                Op::Cancel => ("UPDATE wallet SET frozen = frozen - $1, available = available + $1 WHERE id = 1 AND frozen >= $1", false),
                Op::Action => ("UPDATE wallet SET available = available - $1, spent = spent + $1 WHERE id = 1 AND available >= $1", true),
                Op::Compensate => ("UPDATE wallet SET spent = spent - $1, available = available + $1 WHERE id = 1 AND spent >= $1", false),
            };
            if *amount == UNLUCKY && !op.may_be_rejected() {
                return Err(
                    store::StoreError::Unavailable("the wallet's unlucky amount".into()).into(),
                );
            }
            let r = sqlx::query(sql).bind(*amount).execute(&mut *conn).await?;
            if r.rows_affected() == 0 {
                if may_fail {
                    return Err(Rejection::new("insufficient_funds", "not enough available").into());
                }
                panic!("{op} found nothing to undo: the barrier let a bad call through");
            }
            Ok(())
        })
    }
}

/// An amount whose Confirm, Cancel or Compensate always fails on the database (after its
/// Try froze it): an item that makes a batch roll back.
const UNLUCKY: i64 = 666;

async fn wallet(db: &TestDb, available: i64) -> Db {
    let db = Db::connect(&DbConfig::new(db.url())).await.unwrap();
    db.migrate_all(&[&WALLET, &tcc::MIGRATOR]).await.unwrap();
    sqlx::query("INSERT INTO wallet (id, available, frozen, spent) VALUES (1, $1, 0, 0)")
        .bind(available)
        .execute(db.pool())
        .await
        .unwrap();
    db
}

async fn balances(db: &Db) -> (i64, i64, i64) {
    sqlx::query_as("SELECT available, frozen, spent FROM wallet WHERE id = 1")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

async fn barrier_rows(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM tcc_barrier")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

fn branch(gid: u64) -> BranchRef {
    BranchRef {
        gid: Gid::from_u64(gid).unwrap(),
        branch_id: "wallet".into(),
    }
}

async fn call(db: &Db, gid: u64, op: Op, amount: i64) -> Verdict {
    barrier::call(db, &Wallet, &branch(gid), op, &amount)
        .await
        .unwrap()
}

async fn duplicated_try_confirm_and_cancel_change_nothing_the_second_time(db: TestDb) {
    let db = wallet(&db, 100).await;
    assert_eq!(call(&db, 1, Op::Try, 30).await, Verdict::Applied);
    assert_eq!(call(&db, 1, Op::Try, 30).await, Verdict::Duplicate);
    assert_eq!(balances(&db).await, (70, 30, 0));
    assert_eq!(call(&db, 1, Op::Confirm, 30).await, Verdict::Applied);
    assert_eq!(call(&db, 1, Op::Confirm, 30).await, Verdict::Duplicate);
    assert_eq!(balances(&db).await, (70, 0, 30));

    assert_eq!(call(&db, 2, Op::Try, 20).await, Verdict::Applied);
    assert_eq!(call(&db, 2, Op::Cancel, 20).await, Verdict::Applied);
    assert_eq!(call(&db, 2, Op::Cancel, 20).await, Verdict::Duplicate);
    assert_eq!(
        call(&db, 2, Op::Try, 20).await,
        Verdict::Duplicate,
        "a replayed try after cancel is still the same try"
    );
    assert_eq!(balances(&db).await, (70, 0, 30));
}

async fn a_cancel_before_its_try_leaves_a_marker_and_the_late_try_does_nothing(db: TestDb) {
    let db = wallet(&db, 100).await;
    assert_eq!(
        call(&db, 7, Op::Cancel, 40).await,
        Verdict::NullCompensation
    );
    assert_eq!(
        barrier_rows(&db).await,
        2,
        "the try marker and the cancel row"
    );
    assert_eq!(call(&db, 7, Op::Try, 40).await, Verdict::Hanging);
    assert_eq!(call(&db, 7, Op::Cancel, 40).await, Verdict::Duplicate);
    assert_eq!(
        balances(&db).await,
        (100, 0, 0),
        "nothing frozen by the late try"
    );
}

async fn a_compensate_before_its_action_leaves_a_marker_and_the_late_action_does_nothing(
    db: TestDb,
) {
    let db = wallet(&db, 100).await;
    assert_eq!(
        call(&db, 8, Op::Compensate, 40).await,
        Verdict::NullCompensation
    );
    assert_eq!(call(&db, 8, Op::Action, 40).await, Verdict::Hanging);
    assert_eq!(balances(&db).await, (100, 0, 0));
    // And the ordinary order works, once.
    assert_eq!(call(&db, 9, Op::Action, 40).await, Verdict::Applied);
    assert_eq!(call(&db, 9, Op::Action, 40).await, Verdict::Duplicate);
    assert_eq!(balances(&db).await, (60, 0, 40));
    assert_eq!(call(&db, 9, Op::Compensate, 40).await, Verdict::Applied);
    assert_eq!(call(&db, 9, Op::Compensate, 40).await, Verdict::Duplicate);
    assert_eq!(balances(&db).await, (100, 0, 0));
}

async fn a_rejected_try_leaves_no_row_and_its_cancel_is_a_null_compensation(db: TestDb) {
    let db = wallet(&db, 10).await;
    let verdict = call(&db, 3, Op::Try, 50).await;
    assert_eq!(
        verdict,
        Verdict::Rejected(Rejection::new("insufficient_funds", "not enough available"))
    );
    assert_eq!(
        barrier_rows(&db).await,
        0,
        "the try row was rolled back with the business change"
    );
    assert_eq!(
        call(&db, 3, Op::Cancel, 50).await,
        Verdict::NullCompensation
    );
    assert_eq!(balances(&db).await, (10, 0, 0));
}

async fn a_try_racing_its_cancel_never_leaves_money_frozen(db: TestDb) {
    let db = wallet(&db, 1_000).await;
    // 40 branches: each one's Try and Cancel sent at the same moment, in both orders.
    let calls = (1..=40u64).flat_map(|gid| {
        let (a, b) = if gid % 2 == 0 {
            (Op::Try, Op::Cancel)
        } else {
            (Op::Cancel, Op::Try)
        };
        [(gid, a), (gid, b)]
    });
    let db2 = db.clone();
    let tasks = calls.map(|(gid, op)| {
        let db = db2.clone();
        tokio::spawn(async move {
            (
                gid,
                op,
                barrier::call(&db, &Wallet, &branch(gid), op, &5).await,
            )
        })
    });
    for r in join_all(tasks).await {
        let (gid, op, verdict) = r.unwrap();
        let verdict = verdict.unwrap_or_else(|e| panic!("gid {gid} {op}: {e}"));
        assert!(
            !matches!(verdict, Verdict::Rejected(_)),
            "{gid} {op} {verdict:?}"
        );
    }
    // Whatever the interleaving, every Try was either undone or never applied.
    assert_eq!(balances(&db).await, (1_000, 0, 0));
}

async fn purge_removes_only_branches_settled_before_the_cutoff(db: TestDb) {
    let db = wallet(&db, 100).await;
    // gid 1 settled (Try, Cancel) and gid 3 waiting for its second phase, both old; gid 2
    // settled after the cutoff.
    call(&db, 1, Op::Try, 1).await;
    call(&db, 1, Op::Cancel, 1).await;
    call(&db, 3, Op::Try, 1).await;
    sqlx::query("UPDATE tcc_barrier SET created_at = 1000")
        .execute(db.pool())
        .await
        .unwrap();
    call(&db, 2, Op::Try, 1).await;
    call(&db, 2, Op::Confirm, 1).await;
    assert_eq!(barrier_rows(&db).await, 5);
    assert_eq!(
        barrier::purge(&db, 2000).await.unwrap(),
        2,
        "gid 1's two rows"
    );
    assert_eq!(
        barrier_rows(&db).await,
        3,
        "gid 3's Try (its Cancel may still come) and gid 2's rows stay"
    );
}

async fn batch(db: &Db, items: &[(u64, Op, i64)]) -> Result<Vec<Verdict>, barrier::BatchStopped> {
    let branches: Vec<BranchRef> = items.iter().map(|(gid, _, _)| branch(*gid)).collect();
    let items: Vec<_> = items
        .iter()
        .zip(&branches)
        .map(|((_, op, amount), branch)| barrier::Item {
            branch,
            op: *op,
            payload: amount,
        })
        .collect();
    barrier::call_batch(db, &Wallet, &items).await
}

async fn a_batch_settles_each_branch_once_with_the_verdict_a_call_would_give(db: TestDb) {
    let db = wallet(&db, 1_000).await;
    for gid in 1..=4 {
        assert_eq!(
            call(&db, gid, Op::Try, 10 * gid as i64).await,
            Verdict::Applied
        );
    }
    assert_eq!(call(&db, 5, Op::Action, 50).await, Verdict::Applied);
    let items = [
        (3, Op::Confirm, 30),
        (1, Op::Confirm, 10),
        (2, Op::Cancel, 20),
        // Sent twice in one batch: the second finds the first's row.
        (1, Op::Confirm, 10),
        // A Cancel whose Try never ran, and a Compensate.
        (9, Op::Cancel, 90),
        (5, Op::Compensate, 50),
    ];
    let verdicts = batch(&db, &items).await.unwrap();
    assert_eq!(
        verdicts,
        [
            Verdict::Applied,
            Verdict::Applied,
            Verdict::Applied,
            Verdict::Duplicate,
            Verdict::NullCompensation,
            Verdict::Applied
        ]
    );
    // Try 4 (40) is still frozen; 10 and 30 are spent; 20 and 50 are back.
    assert_eq!(balances(&db).await, (1_000 - 80, 40, 40));
    // The same batch again: every item a duplicate, nothing moves.
    let again = batch(&db, &items).await.unwrap();
    assert!(again.iter().all(|v| *v == Verdict::Duplicate), "{again:?}");
    assert_eq!(balances(&db).await, (1_000 - 80, 40, 40));
    // The marker the batch left makes the late Try hang, as a lone Cancel's would.
    assert_eq!(call(&db, 9, Op::Try, 90).await, Verdict::Hanging);
    // Single calls after a batch: duplicates too.
    assert_eq!(call(&db, 3, Op::Confirm, 30).await, Verdict::Duplicate);
    assert_eq!(balances(&db).await, (1_000 - 80, 40, 40));
}

async fn a_batch_with_a_failing_item_commits_nothing_of_any_item(db: TestDb) {
    let db = wallet(&db, 1_000).await;
    assert_eq!(call(&db, 1, Op::Try, 10).await, Verdict::Applied);
    assert_eq!(call(&db, 2, Op::Try, UNLUCKY).await, Verdict::Applied);
    let rows = barrier_rows(&db).await;
    let stopped = batch(
        &db,
        &[
            (1, Op::Confirm, 10),
            (2, Op::Confirm, UNLUCKY),
            (3, Op::Cancel, 5),
        ],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(stopped, barrier::BatchStopped::Store(_)),
        "{stopped:?}"
    );
    assert_eq!(balances(&db).await, (1_000 - 10 - UNLUCKY, 10 + UNLUCKY, 0));
    assert_eq!(barrier_rows(&db).await, rows, "no row of the batch stayed");
    // A Try refused by the business rules stops the batch, named by its place in the items,
    // and nothing of the others stays either.
    let stopped = batch(
        &db,
        &[(4, Op::Try, 10), (5, Op::Try, 1_000_000), (6, Op::Try, 1)],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(stopped, barrier::BatchStopped::Rejected(1)),
        "{stopped:?}"
    );
    assert_eq!(barrier_rows(&db).await, rows);
    assert_eq!(balances(&db).await, (1_000 - 10 - UNLUCKY, 10 + UNLUCKY, 0));
    // Each on its own afterwards: the good one applies.
    assert_eq!(call(&db, 1, Op::Confirm, 10).await, Verdict::Applied);
    assert_eq!(balances(&db).await, (1_000 - 10 - UNLUCKY, UNLUCKY, 10));
}

/// Tries batched as the coordinator now sends them under load: each gets the verdict a lone
/// call would (applied, duplicate, hanging after its Cancel), and a Try with its Cancel in the
/// same batch runs as the two would one after the other, in the order they came.
async fn a_batch_of_tries_gives_each_the_verdict_a_lone_try_would_get(db: TestDb) {
    let db = wallet(&db, 1_000).await;
    let items = [
        (1, Op::Try, 10),
        (2, Op::Try, 20),
        // Sent twice: the second finds the first's row.
        (1, Op::Try, 10),
        // Its Cancel came first: a null compensation, then the Try hangs.
        (3, Op::Cancel, 30),
        (3, Op::Try, 30),
        // A Try abandoned at the deadline and its Cancel, in one batch: frozen, then back.
        (4, Op::Try, 40),
        (4, Op::Cancel, 40),
        (5, Op::Action, 50),
    ];
    let verdicts = batch(&db, &items).await.unwrap();
    assert_eq!(
        verdicts,
        [
            Verdict::Applied,
            Verdict::Applied,
            Verdict::Duplicate,
            Verdict::NullCompensation,
            Verdict::Hanging,
            Verdict::Applied,
            Verdict::Applied,
            Verdict::Applied,
        ]
    );
    assert_eq!(balances(&db).await, (1_000 - 30 - 50, 30, 50));
    // Lone calls afterwards see what the batch left, as after lone calls.
    assert_eq!(call(&db, 1, Op::Try, 10).await, Verdict::Duplicate);
    assert_eq!(call(&db, 3, Op::Try, 30).await, Verdict::Hanging);
    assert_eq!(call(&db, 4, Op::Cancel, 40).await, Verdict::Duplicate);
    assert_eq!(call(&db, 1, Op::Confirm, 10).await, Verdict::Applied);
    assert_eq!(call(&db, 2, Op::Cancel, 20).await, Verdict::Applied);
    assert_eq!(balances(&db).await, (1_000 - 10 - 50, 0, 60));
}

/// A batch of distinct branches writes all its barrier rows in one statement: whatever rows
/// each branch already had, each item gets the verdict a lone call would. And a batch with more
/// rows than one statement carries (each Cancel writes two) settles every item too.
async fn a_batch_of_distinct_branches_gives_each_the_verdict_a_lone_call_would(db: TestDb) {
    let db = wallet(&db, 100_000).await;
    // What lone calls left before the batch.
    for (gid, op, amount, verdict) in [
        (1, Op::Try, 10, Verdict::Applied),
        (2, Op::Try, 20, Verdict::Applied),
        (3, Op::Try, 30, Verdict::Applied),
        (3, Op::Confirm, 30, Verdict::Applied),
        (4, Op::Cancel, 40, Verdict::NullCompensation),
        (5, Op::Try, 50, Verdict::Applied),
        (6, Op::Action, 60, Verdict::Applied),
        (7, Op::Cancel, 70, Verdict::NullCompensation),
        (8, Op::Try, 80, Verdict::Applied),
        (8, Op::Cancel, 80, Verdict::Applied),
    ] {
        assert_eq!(call(&db, gid, op, amount).await, verdict, "{gid} {op}");
    }
    assert_eq!(balances(&db).await, (100_000 - 170, 80, 90));
    let items = [
        (9, Op::Try, 90),
        (1, Op::Confirm, 10),
        (2, Op::Cancel, 20),
        (3, Op::Confirm, 30),
        (4, Op::Try, 40),
        (5, Op::Try, 50),
        (6, Op::Compensate, 60),
        (7, Op::Cancel, 70),
        (8, Op::Cancel, 80),
        (10, Op::Cancel, 100),
        (11, Op::Action, 110),
        (12, Op::Compensate, 120),
    ];
    let verdicts = batch(&db, &items).await.unwrap();
    assert_eq!(
        verdicts,
        [
            Verdict::Applied,
            Verdict::Applied,
            Verdict::Applied,
            Verdict::Duplicate,
            Verdict::Hanging,
            Verdict::Duplicate,
            Verdict::Applied,
            Verdict::Duplicate,
            Verdict::Duplicate,
            Verdict::NullCompensation,
            Verdict::Applied,
            Verdict::NullCompensation,
        ]
    );
    // Frozen: 5's 50 and 9's 90. Spent: 3's 30, 1's 10, 11's 110 (6's 60 given back).
    assert_eq!(
        balances(&db).await,
        (100_000 - 140 - 150, 140, 150),
        "each item moved its money once"
    );
    // The markers the batch left make the late Try and Action hang, as a lone undo's would.
    assert_eq!(call(&db, 10, Op::Try, 100).await, Verdict::Hanging);
    assert_eq!(call(&db, 12, Op::Action, 120).await, Verdict::Hanging);
    assert_eq!(call(&db, 9, Op::Try, 90).await, Verdict::Duplicate);

    // 300 Cancels, 600 rows: more than one statement's worth. Every other one has its Try.
    let many: Vec<(u64, Op, i64)> = (1_000..1_300).map(|g| (g, Op::Cancel, 1)).collect();
    for &(gid, _, amount) in many.iter().step_by(2) {
        assert_eq!(call(&db, gid, Op::Try, amount).await, Verdict::Applied);
    }
    let before = balances(&db).await;
    let verdicts = batch(&db, &many).await.unwrap();
    for (k, verdict) in verdicts.iter().enumerate() {
        let expected = if k % 2 == 0 {
            Verdict::Applied
        } else {
            Verdict::NullCompensation
        };
        assert_eq!(*verdict, expected, "item {k}");
    }
    assert_eq!(
        balances(&db).await,
        (before.0 + 150, before.1 - 150, before.2)
    );
    assert_eq!(call(&db, 1_001, Op::Try, 1).await, Verdict::Hanging);
}

/// Batches carrying the same branches (given in different orders), and lone calls for them,
/// all at once, as a coordinator's retries and a second coordinator could send them: each
/// Confirm takes effect exactly once. A batch that lost a race (on PostgreSQL a lone call and a
/// batch can wait on each other's barrier row and wallet row: a deadlock, one side aborted) is
/// run item by item, as the participant does.
async fn batches_and_lone_calls_racing_for_the_same_branches_settle_each_once(db: TestDb) {
    let db = wallet(&db, 10_000).await;
    const N: u64 = 24;
    for gid in 1..=N {
        assert_eq!(call(&db, gid, Op::Try, 7).await, Verdict::Applied);
    }
    let forward: Vec<(u64, Op, i64)> = (1..=N).map(|g| (g, Op::Confirm, 7)).collect();
    let backward: Vec<(u64, Op, i64)> = forward.iter().rev().copied().collect();
    let mut tasks = Vec::new();
    for items in [forward.clone(), backward, forward] {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            match batch(&db, &items).await {
                Ok(verdicts) => verdicts,
                Err(_) => {
                    let mut verdicts = Vec::new();
                    for (gid, op, amount) in &items {
                        verdicts.push(retried(&db, *gid, *op, *amount).await);
                    }
                    verdicts
                }
            }
        }));
    }
    for gid in (1..=N).step_by(5) {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            vec![retried(&db, gid, Op::Confirm, 7).await]
        }));
    }
    let applied = join_all(tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .filter(|v| *v == Verdict::Applied)
        .count();
    assert_eq!(applied as u64, N, "one Applied per branch");
    assert_eq!(
        balances(&db).await,
        (10_000 - 7 * N as i64, 0, 7 * N as i64)
    );
}

/// A lone call, retried as the participant's gRPC adapter retries a lost race.
async fn retried(db: &Db, gid: u64, op: Op, amount: i64) -> Verdict {
    for _ in 0..20 {
        match barrier::call(db, &Wallet, &branch(gid), op, &amount).await {
            Ok(v) => return v,
            Err(e) if e.is_transient() => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            Err(e) => panic!("gid {gid} {op}: {e}"),
        }
    }
    panic!("gid {gid} {op}: still conflicting after 20 attempts")
}

both_backends!(
    a_batch_settles_each_branch_once_with_the_verdict_a_call_would_give,
    a_batch_with_a_failing_item_commits_nothing_of_any_item,
    a_batch_of_tries_gives_each_the_verdict_a_lone_try_would_get,
    a_batch_of_distinct_branches_gives_each_the_verdict_a_lone_call_would,
    batches_and_lone_calls_racing_for_the_same_branches_settle_each_once,
    duplicated_try_confirm_and_cancel_change_nothing_the_second_time,
    a_cancel_before_its_try_leaves_a_marker_and_the_late_try_does_nothing,
    a_compensate_before_its_action_leaves_a_marker_and_the_late_action_does_nothing,
    a_rejected_try_leaves_no_row_and_its_cancel_is_a_null_compensation,
    a_try_racing_its_cancel_never_leaves_money_frozen,
    purge_removes_only_branches_settled_before_the_cutoff,
);

#[tokio::test]
async fn the_grpc_adapter_maps_verdicts_and_bad_input_to_the_wire() {
    use proto::v1::{BranchRequest, Op as P, Outcome};
    let tdb = TestDb::sqlite();
    let db = wallet(&tdb, 100).await;
    let mut registry = prometheus_client::registry::Registry::default();
    let svc = tcc::grpc::ParticipantService::new(
        db.clone(),
        Arc::new(Wallet),
        tcc::grpc::BranchMetrics::new(&mut registry),
    );
    let req = |op: P, payload: &str| BranchRequest {
        gid: 77,
        branch_id: "wallet".into(),
        op: op as i32,
        payload: payload.as_bytes().to_vec(),
    };
    // Malformed payload on a Try: FAILURE with a reason, not an error.
    let r = svc.handle(req(P::Try, "abc")).await.unwrap();
    assert_eq!(
        (r.outcome(), r.code.as_str()),
        (Outcome::Failure, "invalid")
    );
    // Malformed payload on a Confirm: InvalidArgument.
    let s = svc.handle(req(P::Confirm, "-5")).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    // Business rejection.
    let r = svc.handle(req(P::Try, "500")).await.unwrap();
    assert_eq!(
        (r.outcome(), r.code.as_str()),
        (Outcome::Failure, "insufficient_funds")
    );
    // Success, then a duplicate is still SUCCESS.
    assert_eq!(
        svc.handle(req(P::Try, "10")).await.unwrap().outcome(),
        Outcome::Success
    );
    assert_eq!(
        svc.handle(req(P::Try, "10")).await.unwrap().outcome(),
        Outcome::Success
    );
    // Unknown op and gid 0.
    let mut bad = req(P::Try, "10");
    bad.op = 42;
    assert_eq!(
        svc.handle(bad).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let mut bad = req(P::Try, "10");
    bad.gid = 0;
    assert_eq!(
        svc.handle(bad).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    assert_eq!(balances(&db).await, (90, 10, 0));

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"tcc_branch_calls_total{op="try",outcome="duplicate"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tcc_branch_calls_total{op="try",outcome="rejected"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn the_grpc_adapter_answers_each_item_of_a_batch_as_a_lone_call_would() {
    use proto::v1::{BranchBatchRequest, BranchRequest, Op as P, Outcome};
    let tdb = TestDb::sqlite();
    let db = wallet(&tdb, 1_000).await;
    let mut registry = prometheus_client::registry::Registry::default();
    let faults = Arc::new(tcc::fault::Faults::new(false));
    let svc = tcc::grpc::ParticipantService::new(
        db.clone(),
        Arc::new(Wallet),
        tcc::grpc::BranchMetrics::new(&mut registry),
    )
    .with_faults(faults.clone());
    let req = |gid: u64, op: P, payload: &str| BranchRequest {
        gid,
        branch_id: "wallet".into(),
        op: op as i32,
        payload: payload.as_bytes().to_vec(),
    };
    for (gid, amount) in [(1, "10"), (2, "20"), (3, "666")] {
        let r = svc.handle(req(gid, P::Try, amount)).await.unwrap();
        assert_eq!(r.outcome(), Outcome::Success);
    }
    let batch = |branches| BranchBatchRequest { branches };
    // Each item's outcome, or its error's code.
    let answered = |answer: proto::v1::BranchBatchResponse| -> Vec<Result<Outcome, tonic::Code>> {
        answer
            .results
            .into_iter()
            .map(|r| r.into_call().map(|a| a.outcome()).map_err(|s| s.code()))
            .collect()
    };

    // A malformed item gets its own INVALID_ARGUMENT; the others are confirmed together.
    let answer = svc
        .handle_batch(batch(vec![
            req(1, P::Confirm, "10"),
            req(2, P::Confirm, "-1"),
            req(0, P::Confirm, "20"),
        ]))
        .await
        .unwrap();
    assert_eq!(
        answered(answer),
        [
            Ok(Outcome::Success),
            Err(tonic::Code::InvalidArgument),
            Err(tonic::Code::InvalidArgument)
        ]
    );
    assert_eq!(balances(&db).await, (1_000 - 696, 686, 10));

    // An item the database fails: the batch rolls back, and each item runs on its own: the
    // good one is confirmed, the failing one answers UNAVAILABLE (the coordinator retries it).
    let answer = svc
        .handle_batch(batch(vec![
            req(2, P::Confirm, "20"),
            req(3, P::Confirm, "666"),
        ]))
        .await
        .unwrap();
    assert_eq!(
        answered(answer),
        [Ok(Outcome::Success), Err(tonic::Code::Unavailable)]
    );
    assert_eq!(balances(&db).await, (1_000 - 696, 666, 30));

    // Tries together: a refused one (no money) and an undecodable one get their FAILUREs, as
    // alone; the others commit together without them.
    let answer = svc
        .handle_batch(batch(vec![
            req(6, P::Try, "1"),
            req(7, P::Try, "1000000"),
            req(8, P::Try, "-5"),
            req(9, P::Try, "2"),
        ]))
        .await
        .unwrap();
    assert_eq!(
        answered(answer),
        [
            Ok(Outcome::Success),
            Ok(Outcome::Failure),
            Ok(Outcome::Failure),
            Ok(Outcome::Success)
        ]
    );
    assert_eq!(balances(&db).await, (1_000 - 696 - 3, 666 + 3, 30));
    for (gid, amount) in [(6, "1"), (9, "2")] {
        let r = svc.handle(req(gid, P::Cancel, amount)).await.unwrap();
        assert_eq!(r.outcome(), Outcome::Success);
    }
    assert_eq!(balances(&db).await, (1_000 - 696, 666, 30));

    // Refused whole, nothing done: too many items, an armed fault.
    let many = (1..=257).map(|g| req(1000 + g, P::Cancel, "1")).collect();
    let s = svc.handle_batch(batch(many)).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    faults.arm(Op::Cancel, tcc::fault::Fault::Error, 1).unwrap();
    let s = svc
        .handle_batch(batch(vec![
            req(2, P::Confirm, "20"),
            req(5, P::Cancel, "5"),
        ]))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
    assert_eq!(
        barrier_rows(&db).await,
        3 + 2 + 2 * 2,
        "three tries, two confirms, two tries cancelled"
    );
    assert_eq!(balances(&db).await, (1_000 - 696, 666, 30));

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        r#"tcc_branch_calls_total{op="confirm",outcome="applied"} 2"#,
        r#"tcc_branch_calls_total{op="confirm",outcome="invalid"} 2"#,
        r#"tcc_branch_calls_total{op="confirm",outcome="error"} 1"#,
        r#"tcc_branch_calls_total{op="try",outcome="applied"} 5"#,
        r#"tcc_branch_calls_total{op="try",outcome="rejected"} 1"#,
        r#"tcc_branch_calls_total{op="try",outcome="invalid"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}
