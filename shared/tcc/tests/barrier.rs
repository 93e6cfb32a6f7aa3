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

both_backends!(
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
