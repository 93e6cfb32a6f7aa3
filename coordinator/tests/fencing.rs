//! The log's fence, on SQLite and PostgreSQL: a driver whose claim lapsed and was claimed again
//! (here by the same instance, the case an owner-only fence let through) can no longer write;
//! no status is replaced unless it is the one the writer last made durable; and recovery never
//! claims a transaction this process is still driving; and a read of a transaction never shows
//! a state without the attempts that led to it.
use coordinator::log::{self, Checkpoint, NewBranch, NewTxn};
use coordinator::machine::{Mode, Status, Txn};
use std::time::Duration;
use store::{Db, DbConfig};
use testkit::{both_backends, TestDb};

/// The one transaction these tests fence.
fn gid() -> ids::Gid {
    ids::Gid::from_u64(42).unwrap()
}

const OWNER: &str = "7:aaaa";

async fn log_with_one_transaction(db: &TestDb, lease_ms: i64) -> (Db, log::Stored) {
    let db = Db::connect(&DbConfig::new(db.url())).await.unwrap();
    db.migrate(&coordinator::MIGRATOR).await.unwrap();
    let stored = record(&db, gid(), lease_ms).await;
    (db, stored)
}

/// Records transaction `gid` (one branch), claimed by [`OWNER`] for `lease_ms`.
async fn record(db: &Db, gid: ids::Gid, lease_ms: i64) -> log::Stored {
    let new = NewTxn {
        gid,
        mode: Mode::Tcc,
        idempotency_key: Some(format!("fence-{gid}")),
        request_hash: "h".into(),
        concurrent: false,
        branch_timeout_ms: 10,
        deadline_at: store::now_ms() + 60_000,
        branches: vec![NewBranch {
            branch_id: "b0".into(),
            participant: "http://127.0.0.1:9".into(),
            payload: vec![],
            depends_on: vec![],
            retriable: false,
        }],
        trace_id: None,
    };
    let lease_until = log::insert(db, &new, OWNER, lease_ms).await.unwrap();
    log::Stored::recorded(&new, OWNER, lease_until)
}

fn decided(stored: &log::Stored, status: Status) -> Txn {
    Txn {
        status,
        ..stored.txn.clone()
    }
}

/// A member of a group commit for `s`, from Prepared, with no attempts: keeps its claim
/// (`release_until` `None`) or gives it up until then.
fn member<'a>(s: &'a log::Stored, txn: &'a Txn, release_until: Option<i64>) -> Checkpoint<'a> {
    Checkpoint {
        gid: s.gid,
        owner: OWNER,
        epoch: s.epoch,
        from: Status::Prepared,
        txn,
        branches: &s.branches,
        new_attempts: &[],
        release_until,
        lease_ms: 60_000,
    }
}

async fn write(db: &Db, stored: &log::Stored, epoch: i64, from: Status, txn: &Txn) -> bool {
    write_with(db, stored, epoch, from, txn, &[]).await
}

/// [`write`] with the attempts the checkpoint appends to the timeline.
async fn write_with(
    db: &Db,
    stored: &log::Stored,
    epoch: i64,
    from: Status,
    txn: &Txn,
    attempts: &[log::Attempt],
) -> bool {
    log::checkpoint(
        db,
        Checkpoint {
            gid: stored.gid,
            owner: OWNER,
            epoch,
            from,
            txn,
            branches: &stored.branches,
            new_attempts: attempts,
            release_until: None,
            lease_ms: 60_000,
        },
    )
    .await
    .unwrap()
    .is_some()
}

async fn a_lapsed_claim_cannot_write_after_the_same_instance_claimed_again(db: TestDb) {
    let (db, first) = log_with_one_transaction(&db, 20).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The same instance (same owner name) claims it again once the lease has lapsed.
    let claims = log::claim_due(&db, OWNER, "7:", 60_000, 10, |_| false)
        .await
        .unwrap();
    assert_eq!(claims.len(), 1);
    let second_epoch = claims[0].epoch;
    assert!(second_epoch > first.epoch);
    // The second drive decides to cancel …
    assert!(
        write(
            &db,
            &first,
            second_epoch,
            Status::Prepared,
            &decided(&first, Status::Cancelling)
        )
        .await
    );
    // … and the first drive, still holding the old claim, must not turn that into confirming.
    assert!(
        !write(
            &db,
            &first,
            first.epoch,
            Status::Prepared,
            &decided(&first, Status::Confirming)
        )
        .await,
        "a lapsed claim wrote"
    );
    assert_eq!(
        log::status_of(&db, gid()).await.unwrap().unwrap().0,
        Status::Cancelling
    );
}

async fn a_status_is_replaced_only_from_the_status_the_writer_read(db: TestDb) {
    let (db, stored) = log_with_one_transaction(&db, 60_000).await;
    assert!(
        write(
            &db,
            &stored,
            stored.epoch,
            Status::Prepared,
            &decided(&stored, Status::Cancelling)
        )
        .await
    );
    // The same claim, writing as if it had never seen its own decision: refused.
    assert!(
        !write(
            &db,
            &stored,
            stored.epoch,
            Status::Prepared,
            &decided(&stored, Status::Confirming)
        )
        .await,
        "a status was replaced by a writer that had not read it"
    );
    assert!(
        write(
            &db,
            &stored,
            stored.epoch,
            Status::Cancelling,
            &decided(&stored, Status::Failed)
        )
        .await
    );
}

async fn recovery_never_claims_a_transaction_this_process_is_driving(db: TestDb) {
    let (db, _) = log_with_one_transaction(&db, 20).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let claims = log::claim_due(&db, OWNER, "7:", 60_000, 10, |g| g == gid())
        .await
        .unwrap();
    assert!(claims.is_empty(), "{claims:?}");
}

/// The regression behind a CI failure: the transaction view read the timeline, then the state,
/// so a transaction whose last checkpoint landed in between showed `succeeded` without the call
/// that succeeded. Here one writer appends an attempt per checkpoint (as a drive does) while a
/// reader keeps reading the view: every read must show at least the attempts its state counts.
async fn a_transaction_read_while_it_is_written_shows_every_attempt_its_state_counts(db: TestDb) {
    let (db, mut stored) = log_with_one_transaction(&db, 60_000).await;
    const WRITES: i64 = 300;
    let writer = {
        let db = db.clone();
        let mut txn = stored.txn.clone();
        tokio::spawn(async move {
            for n in 1..=WRITES {
                stored.branches[0].attempts = n;
                // Alternate between two statuses so each write replaces the one before.
                let from = txn.status;
                txn.status = if n % 2 == 1 {
                    Status::Confirming
                } else {
                    Status::Prepared
                };
                let attempt = log::Attempt {
                    idx: 0,
                    op: coordinator::machine::Op::Confirm,
                    started_at: store::now_ms(),
                    duration_us: 1,
                    outcome: log::Outcome::Error,
                    error: Some(format!("attempt {n}")),
                    owner: OWNER.into(),
                };
                let epoch = stored.epoch;
                let written = write_with(&db, &stored, epoch, from, &txn, &[attempt]).await;
                assert!(written, "write {n} was fenced off");
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() {
        let (page, _, _) = coordinator::view::transaction_page(&db, gid(), None, 1000)
            .await
            .unwrap();
        let listed = coordinator::view::transactions(&db, &[gid()])
            .await
            .unwrap();
        for t in std::iter::once(&page).chain(&listed) {
            let b = &t.branches[0];
            assert!(
                b.timeline.len() >= b.attempts as usize,
                "read {reads}: the state counts {} attempts, the timeline shows {}",
                b.attempts,
                b.timeline.len()
            );
        }
        reads += 1;
    }
    writer.await.unwrap();
    assert!(reads > 10, "only {reads} reads overlapped the writes");
}

/// Group commit: three transactions' checkpoints in one local transaction, the middle one's
/// fence broken (the status it read is no longer stored). That one writes nothing, neither
/// its status, nor its branch, nor its attempt; the two others write all of theirs.
async fn a_group_commit_writes_every_member_whose_fence_holds_and_nothing_of_one_whose_fence_broke(
    db: TestDb,
) {
    let (db, _) = log_with_one_transaction(&db, 60_000).await;
    let gids: Vec<ids::Gid> = [101, 102, 103]
        .iter()
        .map(|g| ids::Gid::from_u64(*g).unwrap())
        .collect();
    let mut stored = Vec::new();
    for gid in &gids {
        let mut s = record(&db, *gid, 60_000).await;
        s.branches[0].attempts = 1;
        s.branches[0].last_error = Some(format!("error of {gid}"));
        stored.push(s);
    }
    let attempt = |n: u64| log::Attempt {
        idx: 0,
        op: coordinator::machine::Op::Try,
        started_at: store::now_ms(),
        duration_us: 1,
        outcome: log::Outcome::Error,
        error: Some(format!("attempt of {n}")),
        owner: OWNER.into(),
    };
    let txns = [
        decided(&stored[0], Status::Cancelling),
        decided(&stored[1], Status::Cancelling),
        decided(&stored[2], Status::Confirming),
    ];
    let attempts = [[attempt(101)], [attempt(102)], [attempt(103)]];
    // Listed out of gid order, the fenced one first: the group writes in gid order, and
    // answers in the list's.
    let members = [1, 2, 0].map(|i| Checkpoint {
        gid: gids[i],
        owner: OWNER,
        epoch: stored[i].epoch,
        // 102 read Confirming, which it never was.
        from: if i == 1 {
            Status::Confirming
        } else {
            Status::Prepared
        },
        txn: &txns[i],
        branches: &stored[i].branches,
        new_attempts: &attempts[i],
        release_until: None,
        lease_ms: 60_000,
    });
    let written = log::checkpoint_group(&db, &members).await.unwrap();
    assert!(
        written[0].is_none() && written[1].is_some() && written[2].is_some(),
        "{written:?}"
    );
    for (i, want) in [
        (0, Status::Cancelling),
        (1, Status::Prepared),
        (2, Status::Confirming),
    ] {
        let gid = gids[i];
        assert_eq!(
            log::status_of(&db, gid).await.unwrap().unwrap().0,
            want,
            "{gid}"
        );
        let now = log::load(&db, gid).await.unwrap().unwrap();
        let fenced = i == 1;
        assert_eq!(
            now.branches[0].attempts,
            if fenced { 0 } else { 1 },
            "{gid}"
        );
        assert_eq!(now.branches[0].last_error.is_some(), !fenced, "{gid}");
        let (page, _, _) = coordinator::view::transaction_page(&db, gid, None, 1000)
            .await
            .unwrap();
        assert_eq!(
            page.branches[0].timeline.len(),
            if fenced { 0 } else { 1 },
            "{gid}"
        );
    }
}

/// One group, two ways to leave a claim: 201 is given up until a later round (a rollback
/// reason recorded, no owner, no lease, its round counted), 202 keeps its claim (a new lease,
/// no reason). Each member gets what it would alone. A group naming one transaction twice
/// writes nothing at all (the engine then writes each alone).
async fn a_group_commit_gives_up_one_member_s_claim_and_keeps_another_s_as_each_would_alone(
    db: TestDb,
) {
    let (db, _) = log_with_one_transaction(&db, 60_000).await;
    let gids: Vec<ids::Gid> = [201, 202]
        .iter()
        .map(|g| ids::Gid::from_u64(*g).unwrap())
        .collect();
    let mut stored = Vec::new();
    for gid in &gids {
        stored.push(record(&db, *gid, 60_000).await);
    }
    let cancelling = Txn {
        reason: Some(coordinator::machine::Rollback::Deadline),
        ..decided(&stored[0], Status::Cancelling)
    };
    let confirming = decided(&stored[1], Status::Confirming);
    let later = store::now_ms() + 30_000;
    let before = store::now_ms();
    let members = [
        member(&stored[0], &cancelling, Some(later)),
        member(&stored[1], &confirming, None),
    ];
    let written = log::checkpoint_group(&db, &members).await.unwrap();
    assert_eq!(written[0], Some(0), "a released claim holds until 0");
    let kept = written[1].expect("202's fence held");
    assert!(kept >= before + 60_000, "{kept} is not a fresh lease");

    let released = log::load(&db, gids[0]).await.unwrap().unwrap();
    assert_eq!(released.txn.status, Status::Cancelling);
    assert_eq!(
        released.txn.reason,
        Some(coordinator::machine::Rollback::Deadline)
    );
    assert_eq!(released.owner, None);
    assert_eq!(released.lease_until, 0);
    assert_eq!(released.next_attempt_at, later);
    assert_eq!(released.attempts, stored[0].attempts + 1);

    let driven = log::load(&db, gids[1]).await.unwrap().unwrap();
    assert_eq!(driven.txn.status, Status::Confirming);
    assert_eq!(driven.txn.reason, None);
    assert_eq!(driven.owner.as_deref(), Some(OWNER));
    assert_eq!(driven.lease_until, kept);
    assert_eq!(driven.attempts, stored[1].attempts);

    // 202 twice in one group: refused before anything is written.
    let cancel_202 = decided(&driven, Status::Cancelling);
    let twice = [(); 2].map(|()| Checkpoint {
        from: Status::Confirming,
        ..member(&driven, &cancel_202, None)
    });
    assert!(matches!(
        log::checkpoint_group(&db, &twice).await,
        Err(log::GroupFailed::RolledBack(_))
    ));
    let still = log::load(&db, gids[1]).await.unwrap().unwrap();
    assert_eq!(still.txn.status, Status::Confirming);
    assert_eq!(still.lease_until, kept);
}

/// A group that waits for a row another writer holds judges that row's fence on what the
/// other writer committed: X's claim is taken again (a new epoch) while the group waits for
/// it, so X writes nothing; Y, in the same statement, is written.
async fn a_group_commit_that_waited_for_a_row_judges_its_fence_on_what_was_committed_meanwhile(
    test_db: TestDb,
) {
    let (db, _) = log_with_one_transaction(&test_db, 60_000).await;
    let [x, y] = [301, 302].map(|g| ids::Gid::from_u64(g).unwrap());
    let (sx, sy) = (record(&db, x, 60_000).await, record(&db, y, 60_000).await);
    let (tx_x, tx_y) = (
        decided(&sx, Status::Confirming),
        decided(&sy, Status::Confirming),
    );
    let members = [member(&sx, &tx_x, None), member(&sy, &tx_y, None)];
    let other = Db::connect(&DbConfig::new(test_db.url())).await.unwrap();
    let mut claim_again = other.begin().await.unwrap();
    sqlx::query("UPDATE global_txns SET epoch = epoch + 1 WHERE gid = $1")
        .bind(x.as_i64())
        .execute(&mut *claim_again)
        .await
        .unwrap();
    const HELD: Duration = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let (written, ()) = tokio::join!(log::checkpoint_group(&db, &members), async {
        tokio::time::sleep(HELD).await;
        claim_again.commit().await.unwrap();
    });
    assert!(
        started.elapsed() >= HELD,
        "the group did not wait for the row held"
    );
    let written = written.unwrap();
    assert!(written[0].is_none() && written[1].is_some(), "{written:?}");
    let x_now = log::load(&db, x).await.unwrap().unwrap();
    assert_eq!(x_now.txn.status, Status::Prepared);
    assert_eq!(x_now.epoch, sx.epoch + 1);
    assert_eq!(
        log::status_of(&db, y).await.unwrap().unwrap().0,
        Status::Confirming
    );
}

/// The console's reads of the log: a call made now for a transaction created long ago is in
/// the live latency; a transaction whose gid was made a moment before its row was written is
/// in a listing from its `created_at` on; a search finds it by the id after its key's `:`.
async fn the_console_s_listing_and_live_numbers_find_what_the_time_bounds_name(db: TestDb) {
    let (db, stored) = log_with_one_transaction(&db, 60_000).await;
    let now = store::now_ms();
    let attempt = log::Attempt {
        idx: 0,
        op: coordinator::machine::Op::Cancel,
        started_at: now,
        duration_us: 5_000,
        outcome: log::Outcome::Error,
        error: None,
        owner: OWNER.into(),
    };
    let from = stored.txn.status;
    let written = write_with(&db, &stored, stored.epoch, from, &stored.txn, &[attempt]).await;
    assert!(written);
    let recent = log::recent(&db, 60_000).await.unwrap();
    assert_eq!(
        recent.latency.iter().map(|l| l.calls).sum::<usize>(),
        1,
        "the old transaction's call of now: {recent:?}"
    );

    // A gid made a second before its row.
    let gid = ids::Gid::from_u64(ids::Gid::first_at((now - 1_000) as u64).as_u64() + 7).unwrap();
    let new = NewTxn {
        gid,
        mode: Mode::Saga,
        idempotency_key: Some("refund:123456".into()),
        request_hash: "h".into(),
        concurrent: false,
        branch_timeout_ms: 10,
        deadline_at: now + 60_000,
        branches: vec![NewBranch {
            branch_id: "b0".into(),
            participant: "http://127.0.0.1:9".into(),
            payload: vec![],
            depends_on: vec![],
            retriable: false,
        }],
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
    };
    log::insert(&db, &new, OWNER, 60_000).await.unwrap();
    let created = log::load(&db, gid).await.unwrap().unwrap().created_at;
    let listed = |filter: log::Filter| {
        let db = db.clone();
        async move {
            log::list(&db, &filter)
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.gid)
                .collect::<Vec<_>>()
        }
    };
    let page = |f: log::Filter| log::Filter { limit: 10, ..f };
    assert_eq!(
        listed(page(log::Filter {
            created_from: Some(created),
            ..Default::default()
        }))
        .await,
        [gid]
    );
    // The far ends of time: everything since the beginning (the slack before `from` must not
    // wrap around to the end), and nothing from the end.
    assert!(listed(page(log::Filter {
        created_from: Some(i64::MIN),
        ..Default::default()
    }))
    .await
    .contains(&gid));
    assert_eq!(
        listed(page(log::Filter {
            created_from: Some(i64::MAX),
            ..Default::default()
        }))
        .await,
        Vec::<ids::Gid>::new()
    );
    assert_eq!(
        listed(page(log::Filter {
            search: Some("123456".into()),
            mode: Some(Mode::Saga),
            ..Default::default()
        }))
        .await,
        [gid]
    );
    assert_eq!(
        listed(page(log::Filter {
            search: Some("12345_".into()),
            ..Default::default()
        }))
        .await,
        Vec::<ids::Gid>::new(),
        "LIKE's wildcards are literal in a search"
    );
    assert_eq!(
        listed(page(log::Filter {
            search: Some(gid.to_string()),
            status: Some(Status::Prepared),
            created_to: Some(created + 1),
            ..Default::default()
        }))
        .await,
        [gid]
    );
    assert_eq!(
        log::trace_id(&db, gid).await.unwrap().as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c")
    );
}

/// A new transaction with `branches` branches and the idempotency key `key`.
fn new_txn(gid: u64, key: &str, branches: usize) -> NewTxn {
    NewTxn {
        gid: ids::Gid::from_u64(gid).unwrap(),
        mode: Mode::Tcc,
        idempotency_key: Some(key.into()),
        request_hash: format!("h-{gid}"),
        concurrent: false,
        branch_timeout_ms: 10,
        deadline_at: store::now_ms() + 60_000,
        branches: (0..branches)
            .map(|i| NewBranch {
                branch_id: format!("b{i}"),
                participant: "http://127.0.0.1:9".into(),
                payload: vec![i as u8; 3],
                depends_on: (0..i).collect(),
                retriable: i % 2 == 1,
            })
            .collect(),
        trace_id: Some(format!("{gid:032x}")),
    }
}

/// Group commit of new transactions: a member whose key is already taken (by a transaction
/// recorded before, or by an earlier member of the same group) records nothing, not a branch,
/// and is told so; every other member is recorded whole, as alone, listed in any order.
async fn a_group_of_new_transactions_records_each_whole_and_nothing_of_a_member_whose_key_is_taken(
    db: TestDb,
) {
    let (db, _) = log_with_one_transaction(&db, 60_000).await;
    let taken_before = format!("fence-{}", gid());
    let group = [
        new_txn(300, "k-c", 3),
        new_txn(100, &taken_before, 2),
        new_txn(200, "k-a", 1),
        new_txn(400, "k-a", 2),
        new_txn(500, "k-b", 0),
    ];
    let members: Vec<&NewTxn> = group.iter().collect();
    let recorded = log::insert_group(&db, &members, OWNER, 60_000)
        .await
        .unwrap();
    let taken: Vec<bool> = recorded
        .iter()
        .map(|r| matches!(r, Err(store::StoreError::UniqueViolation { .. })))
        .collect();
    // "k-a" goes to one of its two members (the group's order is the log's), never to both.
    assert!(taken[1], "{recorded:?}");
    assert!(!taken[0] && !taken[4], "{recorded:?}");
    assert!(taken[2] != taken[3], "{recorded:?}");
    for (new, taken) in group.iter().zip(&taken) {
        let stored = log::load(&db, new.gid).await.unwrap();
        if *taken {
            assert!(stored.is_none(), "{}", new.gid);
            continue;
        }
        let stored = stored.expect("recorded");
        assert_eq!(stored.txn.status, Status::Prepared);
        assert_eq!(stored.owner.as_deref(), Some(OWNER));
        assert_eq!(stored.epoch, log::FIRST_EPOCH);
        assert_eq!(stored.idempotency_key, new.idempotency_key);
        assert!(stored.lease_until > store::now_ms() + 50_000);
        let expected = log::Stored::recorded(new, OWNER, stored.lease_until);
        assert_eq!(stored.branches.len(), new.branches.len(), "{}", new.gid);
        for (got, want) in stored.branches.iter().zip(&expected.branches) {
            assert_eq!(got.branch_id, want.branch_id);
            assert_eq!(got.payload, want.payload);
        }
        assert_eq!(stored.txn, expected.txn, "{}", new.gid);
        assert_eq!(
            log::find_by_key(&db, new.idempotency_key.as_deref().unwrap())
                .await
                .unwrap(),
            Some((new.gid, new.request_hash.clone()))
        );
    }
    // The first transaction still owns its key.
    assert_eq!(
        log::find_by_key(&db, &taken_before)
            .await
            .unwrap()
            .map(|(g, _)| g),
        Some(gid())
    );
}

both_backends!(
    a_group_of_new_transactions_records_each_whole_and_nothing_of_a_member_whose_key_is_taken,
    a_group_commit_writes_every_member_whose_fence_holds_and_nothing_of_one_whose_fence_broke,
    a_group_commit_gives_up_one_member_s_claim_and_keeps_another_s_as_each_would_alone,
    a_group_commit_that_waited_for_a_row_judges_its_fence_on_what_was_committed_meanwhile,
    the_console_s_listing_and_live_numbers_find_what_the_time_bounds_name,
    a_transaction_read_while_it_is_written_shows_every_attempt_its_state_counts,
    a_lapsed_claim_cannot_write_after_the_same_instance_claimed_again,
    a_status_is_replaced_only_from_the_status_the_writer_read,
    recovery_never_claims_a_transaction_this_process_is_driving,
);
