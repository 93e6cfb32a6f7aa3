//! Two coordinator instances on one PostgreSQL drive 1,000 transactions together. Every Confirm
//! fails once, so every transaction goes back to the log and is claimed again by whichever
//! instance's recovery gets there first. Every transaction must end terminal, every branch must
//! take effect exactly once, and no transaction may be driven by both instances at once.
mod common;

use common::*;
use futures::stream::{self, StreamExt};
use proto::v1::Op;
use std::collections::HashMap;
use std::time::Duration;
use testkit::scripted::Behavior;
use testkit::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_drive_a_thousand_transactions_without_ever_sharing_one() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    const N: usize = 1_000;
    let dir = testkit::temp_dir("coord2-");
    let one = coordinator(
        &db,
        dir.path(),
        "coordinator-1",
        &[("COORDINATOR_NODE_ID", "1")],
    )
    .await;
    let two = coordinator(
        &db,
        dir.path(),
        "coordinator-2",
        &[("COORDINATOR_NODE_ID", "2")],
    )
    .await;
    let (a, b, d) = three().await;
    b.on(Op::Confirm, [Behavior::UnavailableOncePerGid]);

    let gids: Vec<u64> = stream::iter(0..N)
        .map(|i| {
            let c = if i % 2 == 0 { &one } else { &two };
            let mut req = tcc(&format!("k-{i}"), &[&a, &b, &d]);
            req.wait_ms = 0;
            // What is under test is sharing, not timeouts: 32 transactions at once on two
            // cores can keep a Try past the usual 1 s (a rollback, correct, but not this
            // test's subject; it failed 2 of 3 runs beside stray browsers). The most the
            // 3 s lease allows: half of it.
            req.branch_timeout_ms = 1_500;
            async move { c.execute(req).await.unwrap().gid }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(gids.len(), N);

    // Wait until every transaction is terminal.
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM global_txns WHERE status NOT IN ('succeeded', 'failed')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} transactions still open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let succeeded: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM global_txns WHERE status = 'succeeded'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let failed: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT gid, reason FROM global_txns WHERE status <> 'succeeded'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        succeeded, N as i64,
        "not succeeded (gid, reason): {failed:?}"
    );
    for gid in &gids {
        for (p, branch) in [(&a, "b0"), (&b, "b1"), (&d, "b2")] {
            p.assert_settled(*gid, branch, true);
        }
    }

    // No transaction was driven by both at once: the calls of different owners never overlap.
    let rows: Vec<(i64, String, i64, i64)> = sqlx::query_as(
        "SELECT gid, owner, started_at * 1000, started_at * 1000 + duration_us FROM attempts",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut by_gid: HashMap<i64, Vec<(String, i64, i64)>> = HashMap::new();
    for (gid, owner, start, end) in rows {
        by_gid.entry(gid).or_default().push((owner, start, end));
    }
    let mut owners_seen = std::collections::HashSet::new();
    let mut handed_over = 0;
    for (gid, attempts) in &by_gid {
        for x in attempts {
            owners_seen.insert(x.0.clone());
            for y in attempts {
                if x.0 != y.0 {
                    // Millisecond start times: allow the 1 ms of rounding.
                    assert!(
                        x.2 <= y.1 + 1000 || y.2 <= x.1 + 1000,
                        "gid {gid}: {x:?} overlaps {y:?}"
                    );
                }
            }
        }
        if attempts.iter().any(|x| x.0 != attempts[0].0) {
            handed_over += 1;
        }
    }
    assert_eq!(
        owners_seen.len(),
        2,
        "both instances drove transactions: {owners_seen:?}"
    );
    assert!(
        handed_over > 0,
        "some transactions were claimed by the other instance after a retry"
    );
    println!("{handed_over} of {N} transactions changed hands between the instances");
}
