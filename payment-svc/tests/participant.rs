//! payment-svc as the coordinator sees it: the real binary over gRPC, on a SQLite file and on
//! PostgreSQL. Idempotence, null compensation, anti-hanging, races for the last cent, bad input,
//! and SIGKILL in the middle of a stream of calls.
use futures::future::join_all;
use prost::Message;
use proto::pay::v1::PaymentBranch;
use proto::v1::{Op, Outcome};
use reqwest::Method;
use serde_json::json;
use std::sync::Arc;
use testkit::participant::ParticipantProcess;
use testkit::{both_backends, TestDb};

async fn payment(db: &TestDb, dir: &std::path::Path) -> ParticipantProcess {
    ParticipantProcess::start(
        "payment-svc",
        env!("CARGO_BIN_EXE_payment-svc").as_ref(),
        "PAYMENT_",
        db,
        dir,
    )
    .await
}

fn charge(account: &str, amount: i64) -> Vec<u8> {
    PaymentBranch {
        account_id: account.into(),
        amount,
        merchant_id: "merchant".into(),
        refund: None,
    }
    .encode_to_vec()
}

async fn seed(p: &ParticipantProcess, accounts: &[(&str, i64)]) {
    for (id, available) in accounts.iter().chain([("merchant", 0)].iter()) {
        p.admin(
            Method::PUT,
            &format!("/admin/accounts/{id}"),
            Some(json!({ "available": available })),
        )
        .await;
    }
}

async fn balance(p: &ParticipantProcess, id: &str) -> (i64, i64) {
    let a = p.admin_get(&format!("/admin/accounts/{id}")).await;
    (
        a["available"].as_i64().unwrap(),
        a["frozen"].as_i64().unwrap(),
    )
}

/// Sets an account's available balance straight in the database (a thousand top-ups otherwise),
/// recording `deposited` as the deposit that brought the difference in.
async fn set_available(ledger: &store::Db, account: &str, available: i64, deposited: i64) {
    let mut w = ledger.begin().await.unwrap();
    sqlx::query("UPDATE accounts SET available = $1 WHERE id = $2")
        .bind(available)
        .bind(account)
        .execute(&mut *w)
        .await
        .unwrap();
    sqlx::query("INSERT INTO deposits (id, account_id, amount, created_at) VALUES ($1, $2, $3, 0)")
        .bind(store::random_id())
        .bind(account)
        .bind(deposited)
        .execute(&mut *w)
        .await
        .unwrap();
    w.commit().await.unwrap();
}

async fn assert_consistent(p: &ParticipantProcess) -> serde_json::Value {
    let audit = p.admin_get("/admin/audit").await;
    assert_eq!(audit["consistent"], json!(true), "audit: {audit}");
    audit
}

fn outcome(r: &proto::v1::BranchResponse) -> (Outcome, &str) {
    (r.outcome(), r.code.as_str())
}

async fn duplicated_try_confirm_and_cancel_change_nothing_the_second_time(db: TestDb) {
    let dir = testkit::temp_dir("payment-");
    let p = payment(&db, dir.path()).await;
    seed(&p, &[("alice", 1_000)]).await;
    for _ in 0..2 {
        assert_eq!(
            p.call(1, "pay", Op::Try, &charge("alice", 300))
                .await
                .unwrap()
                .outcome(),
            Outcome::Success
        );
    }
    assert_eq!(balance(&p, "alice").await, (700, 300));
    for _ in 0..2 {
        assert_eq!(
            p.call(1, "pay", Op::Confirm, &charge("alice", 300))
                .await
                .unwrap()
                .outcome(),
            Outcome::Success
        );
    }
    assert_eq!(balance(&p, "alice").await, (700, 0));
    assert_eq!(balance(&p, "merchant").await, (300, 0));

    p.call(2, "pay", Op::Try, &charge("alice", 200))
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            p.call(2, "pay", Op::Cancel, &charge("alice", 200))
                .await
                .unwrap()
                .outcome(),
            Outcome::Success
        );
    }
    assert_eq!(balance(&p, "alice").await, (700, 0));
    let holds = p.admin_get(&format!("/admin/holds/{}", 2)).await;
    assert_eq!(holds["holds"][0]["status"], "released");
    assert_consistent(&p).await;
}

async fn a_cancel_before_its_try_leaves_a_marker_and_the_late_try_does_nothing(db: TestDb) {
    let dir = testkit::temp_dir("payment-");
    let p = payment(&db, dir.path()).await;
    seed(&p, &[("alice", 1_000)]).await;
    assert_eq!(
        p.call(5, "pay", Op::Cancel, &charge("alice", 400))
            .await
            .unwrap()
            .outcome(),
        Outcome::Success
    );
    let late = p
        .call(5, "pay", Op::Try, &charge("alice", 400))
        .await
        .unwrap();
    assert_eq!(outcome(&late), (Outcome::Failure, "cancelled"));
    assert_eq!(balance(&p, "alice").await, (1_000, 0));
    assert_eq!(p.admin_get("/admin/holds/5").await["holds"], json!([]));
    assert_consistent(&p).await;
}

async fn a_compensate_before_its_action_leaves_a_marker_and_the_late_action_does_nothing(
    db: TestDb,
) {
    let dir = testkit::temp_dir("payment-");
    let p = payment(&db, dir.path()).await;
    seed(&p, &[("alice", 1_000)]).await;
    assert_eq!(
        p.call(6, "pay", Op::Compensate, &charge("alice", 400))
            .await
            .unwrap()
            .outcome(),
        Outcome::Success
    );
    assert_eq!(
        outcome(
            &p.call(6, "pay", Op::Action, &charge("alice", 400))
                .await
                .unwrap()
        ),
        (Outcome::Failure, "cancelled")
    );
    assert_eq!(balance(&p, "alice").await, (1_000, 0));
    // Saga debit and refund, each once however often they are sent.
    for _ in 0..2 {
        assert_eq!(
            p.call(7, "pay", Op::Action, &charge("alice", 250))
                .await
                .unwrap()
                .outcome(),
            Outcome::Success
        );
    }
    assert_eq!(
        (balance(&p, "alice").await, balance(&p, "merchant").await),
        ((750, 0), (250, 0))
    );
    for _ in 0..2 {
        assert_eq!(
            p.call(7, "pay", Op::Compensate, &charge("alice", 250))
                .await
                .unwrap()
                .outcome(),
            Outcome::Success
        );
    }
    assert_eq!(
        (balance(&p, "alice").await, balance(&p, "merchant").await),
        ((1_000, 0), (0, 0))
    );
    assert_consistent(&p).await;
}

async fn two_hundred_concurrent_tries_against_money_for_fifty_give_exactly_fifty_successes(
    db: TestDb,
) {
    let dir = testkit::temp_dir("payment-");
    let p = Arc::new(payment(&db, dir.path()).await);
    seed(&p, &[("alice", 50 * 7)]).await;
    let calls = (1..=200u64).map(|gid| {
        let p = p.clone();
        tokio::spawn(async move {
            p.call(gid, "pay", Op::Try, &charge("alice", 7))
                .await
                .unwrap()
        })
    });
    let answers: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let ok = answers
        .iter()
        .filter(|r| r.outcome() == Outcome::Success)
        .count();
    let short = answers
        .iter()
        .filter(|r| outcome(r) == (Outcome::Failure, "insufficient_funds"))
        .count();
    assert_eq!((ok, short), (50, 150));
    assert_eq!(balance(&p, "alice").await, (0, 350));
    let audit = assert_consistent(&p).await;
    assert_eq!(audit["held"], json!(350));
}

async fn bad_input_is_a_failure_on_try_and_invalid_argument_on_second_phase_ops(db: TestDb) {
    let dir = testkit::temp_dir("payment-");
    let p = payment(&db, dir.path()).await;
    seed(&p, &[("alice", 100)]).await;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (charge("alice", 0), "invalid"),
        (charge("alice", -10), "invalid"),
        (charge("alice", i64::MAX), "invalid"),
        (charge("nobody", 10), "unknown_account"),
        (charge("merchant", 10), "invalid"),
        (
            PaymentBranch {
                account_id: "alice".into(),
                amount: 10,
                merchant_id: "shop-x".into(),
                refund: None,
            }
            .encode_to_vec(),
            "unknown_merchant",
        ),
        (vec![0xff, 0x00, 0x13], "invalid"),
    ];
    for (gid, (payload, code)) in (100u64..).zip(cases) {
        let r = p.call(gid, "pay", Op::Try, &payload).await.unwrap();
        assert_eq!(
            outcome(&r),
            (Outcome::Failure, code),
            "gid {gid}: {}",
            r.message
        );
        let r = p.call(gid, "pay", Op::Action, &payload).await.unwrap();
        assert_eq!(
            outcome(&r),
            (Outcome::Failure, code),
            "gid {gid}: {}",
            r.message
        );
    }
    // A Confirm with a malformed payload, or with no Try before it, is a broken request.
    let s = p.call(200, "pay", Op::Confirm, &[0xff]).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    let s = p
        .call(201, "pay", Op::Confirm, &charge("alice", 5))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s}");
    assert_eq!(balance(&p, "alice").await, (100, 0));
    assert_consistent(&p).await;
}

async fn the_admin_api_needs_the_token_and_answers_problems(db: TestDb) {
    let dir = testkit::temp_dir("payment-");
    let p = payment(&db, dir.path()).await;
    let res = reqwest::Client::new()
        .put(format!("{}/admin/accounts/alice", p.http_url))
        .json(&json!({"available": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert!(res.headers().contains_key("www-authenticate"));

    let (status, _) = p
        .admin_raw(
            Method::PUT,
            "/admin/accounts/alice",
            Some(json!({"available": 5})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) = p
        .admin_raw(
            Method::PUT,
            "/admin/accounts/alice",
            Some(json!({"available": 999})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["available"].as_i64()),
        (200, Some(5)),
        "creating twice changes nothing"
    );
    let (status, body) = p
        .admin_raw(
            Method::POST,
            "/admin/accounts/alice/deposits",
            Some(json!({"amount": -3})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = p
        .admin_raw(
            Method::POST,
            "/admin/accounts/bob/deposits",
            Some(json!({"amount": 3})),
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = p
        .admin_raw(Method::PUT, "/admin/accounts/bad%20id", Some(json!({})))
        .await;
    assert_eq!(status, 400, "{body}");
    p.admin(
        Method::POST,
        "/admin/accounts/alice/deposits",
        Some(json!({"amount": 10})),
    )
    .await;
    let audit = assert_consistent(&p).await;
    assert_eq!(
        (audit["available"].as_i64(), audit["deposited"].as_i64()),
        (Some(15), Some(15))
    );
}

async fn a_sigkill_during_a_stream_of_tries_and_confirms_loses_and_doubles_nothing(db: TestDb) {
    let dir = testkit::temp_dir("payment-");
    let mut p = payment(&db, dir.path()).await;
    const PAIRS: u64 = 120;
    seed(&p, &[("alice", 1_000_000)]).await;
    let replayed = testkit::participant::stream_with_crashes(
        &mut p,
        PAIRS,
        "pay",
        [Op::Try, Op::Confirm],
        |_| charge("alice", 3),
        2,
    )
    .await;
    assert_eq!(p.service.starts(), 3);
    assert!(
        replayed > 0,
        "some calls must have gone unanswered and been replayed"
    );
    assert_eq!(
        balance(&p, "alice").await,
        (1_000_000 - 3 * PAIRS as i64, 0)
    );
    assert_eq!(balance(&p, "merchant").await, (3 * PAIRS as i64, 0));
    assert_consistent(&p).await;
}

async fn a_credit_that_would_pass_the_largest_balance_is_refused_at_its_try_and_never_overflows(
    db: TestDb,
) {
    let dir = testkit::temp_dir("payment-");
    let p = payment(&db, dir.path()).await;
    seed(&p, &[("alice", 1_000)]).await;
    // A merchant 15 below the largest balance (set directly: a thousand top-ups otherwise).
    let max = tcc::check::MAX_BALANCE;
    let ledger = store::Db::connect(&store::DbConfig::new(db.url()))
        .await
        .unwrap();
    // The merchant was seeded with nothing: the money it now has came in as a deposit.
    set_available(&ledger, "merchant", max - 15, max - 15).await;
    assert_consistent(&p).await;
    let ten = charge("alice", 10);
    let ok = p.call(1, "pay", Op::Try, &ten).await.unwrap();
    assert_eq!(ok.outcome(), Outcome::Success);
    // 5 of room left: the Try is refused up front, and alice keeps her money.
    let refused = p.call(2, "pay", Op::Try, &ten).await.unwrap();
    assert_eq!(
        outcome(&refused),
        (Outcome::Failure, "merchant_account_full")
    );
    assert_eq!(balance(&p, "alice").await, (990, 10));
    let confirmed = p
        .call(1, "pay", Op::Confirm, &charge("alice", 10))
        .await
        .unwrap();
    assert_eq!(confirmed.outcome(), Outcome::Success);
    assert_eq!(balance(&p, "merchant").await, (max - 5, 0));
    // Top-ups respect the same bound.
    let (status, body) = p
        .admin_raw(
            Method::POST,
            "/admin/accounts/merchant/deposits",
            Some(json!({"amount": 6})),
        )
        .await;
    // Well formed, but more than an account may hold: refused for what it means.
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "balance_too_large", "{body}");
    p.admin(
        Method::POST,
        "/admin/accounts/merchant/deposits",
        Some(json!({"amount": 5})),
    )
    .await;
    assert_eq!(balance(&p, "merchant").await, (max, 0));
    let audit = assert_consistent(&p).await;
    assert_eq!(
        (audit["incoming"].as_i64(), audit["reserved"].as_i64()),
        (Some(0), Some(0))
    );
}

async fn a_compensate_returns_the_money_even_when_the_buyer_topped_up_to_the_largest_balance(
    db: TestDb,
) {
    let dir = testkit::temp_dir("payment-");
    let p = payment(&db, dir.path()).await;
    seed(&p, &[("alice", 1_000)]).await;
    let debit = charge("alice", 10);
    let r = p.call(9, "pay", Op::Action, &debit).await.unwrap();
    assert_eq!(r.outcome(), Outcome::Success);
    // Meanwhile alice's account is filled to the bound.
    let max = tcc::check::MAX_BALANCE;
    let ledger = store::Db::connect(&store::DbConfig::new(db.url()))
        .await
        .unwrap();
    set_available(&ledger, "alice", max, max - 990).await;
    // The undo must not fail for ever: the money goes back, a little past the bound.
    let r = p.call(9, "pay", Op::Compensate, &debit).await.unwrap();
    assert_eq!(r.outcome(), Outcome::Success, "{r:?}");
    assert_eq!(balance(&p, "alice").await, (max + 10, 0));
    assert_eq!(balance(&p, "merchant").await, (0, 0));
    assert_consistent(&p).await;
}

async fn a_cancel_after_a_barrier_purge_still_finds_its_try_and_unfreezes_the_money(db: TestDb) {
    let dir = testkit::temp_dir("payment-");
    let p = payment(&db, dir.path()).await;
    seed(&p, &[("alice", 1_000)]).await;
    let ledger = store::Db::connect(&store::DbConfig::new(db.url()))
        .await
        .unwrap();
    let age_every_row = || async {
        let mut w = ledger.begin().await.unwrap();
        sqlx::query("UPDATE tcc_barrier SET created_at = 0")
            .execute(&mut *w)
            .await
            .unwrap();
        w.commit().await.unwrap();
    };
    let a_day_ago = store::now_ms() - 24 * 3_600_000;
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT CAST(COUNT(*) AS BIGINT) FROM tcc_barrier")
            .fetch_one(ledger.pool())
            .await
            .unwrap()
    };
    let pay = charge("alice", 300);
    assert_eq!(
        p.call(1, "pay", Op::Try, &pay).await.unwrap().outcome(),
        Outcome::Success
    );
    // A week passes while the coordinator keeps retrying the Cancel; the purger runs.
    age_every_row().await;
    assert_eq!(
        tcc::barrier::purge(&ledger, a_day_ago).await.unwrap(),
        0,
        "unsettled: kept"
    );
    assert_eq!(
        p.call(1, "pay", Op::Cancel, &pay).await.unwrap().outcome(),
        Outcome::Success
    );
    assert_eq!(
        balance(&p, "alice").await,
        (1_000, 0),
        "the late Cancel unfroze the money"
    );
    // Settled branches are purged, every row of them.
    assert_eq!(
        p.call(2, "pay", Op::Try, &pay).await.unwrap().outcome(),
        Outcome::Success
    );
    assert_eq!(
        p.call(2, "pay", Op::Confirm, &pay).await.unwrap().outcome(),
        Outcome::Success
    );
    assert_eq!(rows().await, 4);
    age_every_row().await;
    assert_eq!(tcc::barrier::purge(&ledger, a_day_ago).await.unwrap(), 4);
    assert_eq!(rows().await, 0);
    assert_consistent(&p).await;
}

both_backends!(
    duplicated_try_confirm_and_cancel_change_nothing_the_second_time,
    a_cancel_before_its_try_leaves_a_marker_and_the_late_try_does_nothing,
    a_compensate_before_its_action_leaves_a_marker_and_the_late_action_does_nothing,
    two_hundred_concurrent_tries_against_money_for_fifty_give_exactly_fifty_successes,
    bad_input_is_a_failure_on_try_and_invalid_argument_on_second_phase_ops,
    the_admin_api_needs_the_token_and_answers_problems,
    a_sigkill_during_a_stream_of_tries_and_confirms_loses_and_doubles_nothing,
    a_credit_that_would_pass_the_largest_balance_is_refused_at_its_try_and_never_overflows,
    a_cancel_after_a_barrier_purge_still_finds_its_try_and_unfreezes_the_money,
    a_compensate_returns_the_money_even_when_the_buyer_topped_up_to_the_largest_balance,
);

async fn sigterm_lets_calls_in_flight_finish_and_exits_0(db: TestDb) {
    let dir = testkit::temp_dir("payment-");
    let mut p = payment(&db, dir.path()).await;
    seed(&p, &[("alice", 1_000_000)]).await;
    // Fill the pool through the HTTP side: connections opened by the HTTP workers (runtimes of
    // their own) then carry the Tries too, as in a service whose admin API is in use. A
    // shutdown that stopped those workers first broke the calls running on them, a committed
    // Try among them answered "unavailable" (the one failure this test ever had).
    join_all((0..48).map(|_| balance(&p, "alice"))).await;
    // Calls the client itself would give up on (200 Tries on a loaded CI machine can take more
    // than the default 10 s) would be unknown outcomes of the test's own making: this claim is
    // about what the service answers.
    let api = p.api.with_timeout(std::time::Duration::from_secs(120));
    let answers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let calls: Vec<_> = (1..=200u64)
        .map(|gid| {
            let (api, answers) = (api.clone(), answers.clone());
            tokio::spawn(async move {
                let r = api.call(gid, "pay", Op::Try, &charge("alice", 10)).await;
                answers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (r, std::time::Instant::now())
            })
        })
        .collect();
    // SIGTERM once the service is answering, with the rest of the calls still under way.
    while answers.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let sigterm_at = std::time::Instant::now();
    let status = tokio::task::block_in_place(|| {
        p.service
            .terminate(std::time::Duration::from_secs(20))
            .expect("exits within the grace period")
    });
    assert!(status.success(), "exit status {status}");
    let results: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let succeeded = |(r, _): &&(Result<proto::v1::BranchResponse, tonic::Status>, _)| matches!(r, Ok(resp) if resp.outcome() == Outcome::Success);
    let answered = results.iter().filter(succeeded).count() as i64;
    let finished_during_shutdown = results
        .iter()
        .filter(succeeded)
        .filter(|(_, at)| *at > sigterm_at)
        .count();
    // What the other calls got, and when relative to the SIGTERM (a failure says which).
    let mut others = std::collections::BTreeMap::<String, (usize, i128, i128)>::new();
    for (r, at) in results.iter().filter(|r| !succeeded(r)) {
        let what = match r {
            Ok(resp) => format!("answer {:?}", resp.outcome()),
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
        };
        let ms = if *at > sigterm_at {
            at.duration_since(sigterm_at).as_millis() as i128
        } else {
            -(sigterm_at.duration_since(*at).as_millis() as i128)
        };
        let e = others.entry(what).or_insert((0, ms, ms));
        e.0 += 1;
        e.1 = e.1.min(ms);
        e.2 = e.2.max(ms);
    }
    let log = std::fs::read_to_string(&p.service.spec().log_path).unwrap_or_default();
    assert!(
        finished_during_shutdown > 0,
        "no call was in flight at SIGTERM ({answered} answered in all); the others (count, \
         first and last ms after SIGTERM): {others:?}\nthe service's log:\n{log}"
    );
    // Nothing in flight met a database torn down under it.
    let torn: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("being shutdown") || l.contains("branch call failed"))
        .collect();
    assert!(torn.is_empty(), "{torn:#?}\nthe service's log:\n{log}");
    // Every call is either answered SUCCESS and committed, or refused and without effect:
    // after a restart the frozen money is exactly what the answered calls froze.
    p.service.restart().await.unwrap();
    let (_, frozen) = balance(&p, "alice").await;
    assert_eq!(
        frozen,
        answered * 10,
        "{answered} answered ({finished_during_shutdown} during the shutdown); the others \
         (count, first and last ms after SIGTERM): {others:?}"
    );
    let audit = assert_consistent(&p).await;
    assert_eq!(audit["held"], json!(frozen));
}

both_backends!(sigterm_lets_calls_in_flight_finish_and_exits_0);

/// A refund's money step, as order-svc sends it: the merchant pays alice back.
fn refund_step(step: proto::pay::v1::MoneyStep, amount: i64) -> Vec<u8> {
    PaymentBranch {
        refund: Some(proto::pay::v1::RefundMoney {
            payer: "merchant".into(),
            payee: "alice".into(),
            amount,
            step: step as i32,
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// payment-svc with `buyer`'s account empty and the merchant holding 1 000 to pay back.
async fn merchant_to_pay_back(
    db: &TestDb,
    dir: &std::path::Path,
    buyer: &str,
) -> ParticipantProcess {
    let p = payment(db, dir).await;
    seed(&p, &[(buyer, 0)]).await;
    p.admin(
        Method::POST,
        "/admin/accounts/merchant/deposits",
        Some(json!({ "amount": 1_000 })),
    )
    .await;
    p
}

/// Asserts a call answered SUCCESS.
fn succeeded(r: Result<proto::v1::BranchResponse, tonic::Status>) {
    let r = r.unwrap();
    assert_eq!(outcome(&r), (Outcome::Success, ""), "{r:?}");
}

async fn a_refund_holds_the_money_on_the_buyer_until_its_release_and_every_undo_takes_back_only_what_is_held(
    db: TestDb,
) {
    use proto::pay::v1::MoneyStep;
    let dir = testkit::temp_dir("payment-");
    let p = merchant_to_pay_back(&db, dir.path(), "alice").await;
    let ok = succeeded;
    // A refund's steps are Saga actions only.
    let r = p
        .call(9, "payment", Op::Try, &refund_step(MoneyStep::Hold, 300))
        .await
        .unwrap();
    assert_eq!(outcome(&r), (Outcome::Failure, "invalid"));

    // The hold: the merchant's money leaves and waits on the buyer, who cannot spend it.
    ok(p.call(
        10,
        "payment",
        Op::Action,
        &refund_step(MoneyStep::Hold, 300),
    )
    .await);
    assert_eq!(balance(&p, "merchant").await, (700, 0));
    assert_eq!(balance(&p, "alice").await, (0, 300));
    let spend = p
        .call(11, "pay", Op::Try, &charge("alice", 300))
        .await
        .unwrap();
    assert_eq!(outcome(&spend), (Outcome::Failure, "insufficient_funds"));
    assert_eq!(assert_consistent(&p).await["held"], json!(300));

    // The release (twice: a duplicate changes nothing) makes it the buyer's to spend.
    for _ in 0..2 {
        ok(p.call(
            10,
            "release",
            Op::Action,
            &refund_step(MoneyStep::Release, 300),
        )
        .await);
    }
    assert_eq!(balance(&p, "alice").await, (300, 0));
    assert_eq!(assert_consistent(&p).await["held"], json!(0));

    // Undone in reverse (a failed refund): the release first, then the hold, and the merchant
    // has its money back.
    ok(p.call(
        10,
        "release",
        Op::Compensate,
        &refund_step(MoneyStep::Release, 300),
    )
    .await);
    assert_eq!(balance(&p, "alice").await, (0, 300));
    ok(p.call(
        10,
        "payment",
        Op::Compensate,
        &refund_step(MoneyStep::Hold, 300),
    )
    .await);
    assert_eq!(balance(&p, "alice").await, (0, 0));
    assert_eq!(balance(&p, "merchant").await, (1_000, 0));
    assert_consistent(&p).await;

    // A merchant short of money refuses the hold, and nothing moves.
    let short = p
        .call(
            12,
            "payment",
            Op::Action,
            &refund_step(MoneyStep::Hold, 5_000),
        )
        .await
        .unwrap();
    assert_eq!(outcome(&short), (Outcome::Failure, "insufficient_funds"));
    ok(p.call(
        12,
        "payment",
        Op::Compensate,
        &refund_step(MoneyStep::Hold, 5_000),
    )
    .await);
    assert_eq!(balance(&p, "merchant").await, (1_000, 0));

    // A released refund the buyer spent cannot be taken back: the undo refuses (the coordinator
    // keeps retrying, an operator sees it) rather than drive the buyer's balance negative.
    ok(p.call(
        13,
        "payment",
        Op::Action,
        &refund_step(MoneyStep::Hold, 200),
    )
    .await);
    ok(p.call(
        13,
        "release",
        Op::Action,
        &refund_step(MoneyStep::Release, 200),
    )
    .await);
    ok(p.call(14, "pay", Op::Action, &charge("alice", 200)).await);
    let undo = p
        .call(
            13,
            "release",
            Op::Compensate,
            &refund_step(MoneyStep::Release, 200),
        )
        .await;
    assert!(
        !matches!(&undo, Ok(r) if r.outcome() == Outcome::Success),
        "{undo:?}"
    );
    assert_eq!(balance(&p, "alice").await, (0, 0));
    assert_consistent(&p).await;
}

both_backends!(
    a_refund_holds_the_money_on_the_buyer_until_its_release_and_every_undo_takes_back_only_what_is_held
);

/// `pay.v1.PaymentBranch` as a payment-svc from before refunds knows it (fields 1–3).
#[derive(Clone, PartialEq, prost::Message)]
struct PaymentBranchBeforeRefunds {
    #[prost(string, tag = "1")]
    account_id: String,
    #[prost(int64, tag = "2")]
    amount: i64,
    #[prost(string, tag = "3")]
    merchant_id: String,
}

/// A refund's money steps reaching a payment-svc that predates them (order-svc upgraded first):
/// what that service would decode is an empty payment, refused as invalid, so the refund is
/// compensated instead of paid as an order, twice (the hold and the release look alike to it).
async fn a_refund_step_read_by_a_payment_svc_from_before_refunds_is_refused_not_paid(db: TestDb) {
    use proto::pay::v1::MoneyStep;
    let dir = testkit::temp_dir("payment-");
    let p = merchant_to_pay_back(&db, dir.path(), "alice").await;
    for (branch, step) in [
        ("payment", MoneyStep::Hold),
        ("release", MoneyStep::Release),
    ] {
        let old = PaymentBranchBeforeRefunds::decode(refund_step(step, 300).as_slice())
            .unwrap()
            .encode_to_vec();
        let r = p.call(20, branch, Op::Action, &old).await.unwrap();
        assert_eq!(outcome(&r), (Outcome::Failure, "invalid"), "{branch}");
    }
    assert_eq!(balance(&p, "alice").await, (0, 0));
    assert_eq!(balance(&p, "merchant").await, (1_000, 0));
    assert_consistent(&p).await;
}

/// A release names its refund's hold: with two holds in one transaction it moves the one that
/// matches, or none, never the status of one and the money of another.
async fn a_release_moves_exactly_the_money_of_the_hold_it_marks_paid(db: TestDb) {
    use proto::pay::v1::MoneyStep;
    let dir = testkit::temp_dir("payment-");
    let p = merchant_to_pay_back(&db, dir.path(), "alice").await;
    let ok = succeeded;
    ok(
        p.call(30, "hold-a", Op::Action, &refund_step(MoneyStep::Hold, 100))
            .await,
    );
    ok(
        p.call(30, "hold-b", Op::Action, &refund_step(MoneyStep::Hold, 200))
            .await,
    );
    assert_eq!(balance(&p, "alice").await, (0, 300));
    let paid = || async {
        let holds = p.admin_get("/admin/holds/30").await;
        holds["holds"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["status"] == "paid")
            .map(|h| h["amount"].as_i64().unwrap())
            .sum::<i64>()
    };
    // A release of an amount no hold has moves nothing.
    let none = p
        .call(
            30,
            "release",
            Op::Action,
            &refund_step(MoneyStep::Release, 300),
        )
        .await
        .unwrap();
    assert_eq!(outcome(&none), (Outcome::Failure, "no_hold"));
    assert_eq!((paid().await, balance(&p, "alice").await), (0, (0, 300)));
    // A release in another transaction finds none of these.
    let other = p
        .call(
            31,
            "release",
            Op::Action,
            &refund_step(MoneyStep::Release, 200),
        )
        .await
        .unwrap();
    assert_eq!(outcome(&other), (Outcome::Failure, "no_hold"));
    assert_eq!(balance(&p, "alice").await, (0, 300));
    // A release of one hold's amount moves that one.
    ok(p.call(
        30,
        "release-b",
        Op::Action,
        &refund_step(MoneyStep::Release, 200),
    )
    .await);
    assert_eq!(
        (paid().await, balance(&p, "alice").await),
        (200, (200, 100))
    );
    assert_consistent(&p).await;
}

/// A failed refund's undo takes the two accounts' row locks in id order, as every other op
/// does: out of order, it deadlocks on PostgreSQL with an order's Confirm on the same pair.
async fn a_failed_refunds_undo_locks_the_two_accounts_in_id_order(db: TestDb) {
    use proto::pay::v1::MoneyStep;
    if db.backend() != testkit::Backend::Postgres {
        // SQLite admits one writer at a time: there are no row locks to order.
        return;
    }
    let dir = testkit::temp_dir("payment-");
    // The buyer's id sorts after the merchant's.
    let p = merchant_to_pay_back(&db, dir.path(), "zoe").await;
    let back = PaymentBranch {
        refund: Some(proto::pay::v1::RefundMoney {
            payer: "merchant".into(),
            payee: "zoe".into(),
            amount: 300,
            step: MoneyStep::Hold as i32,
        }),
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(
        p.call(40, "payment", Op::Action, &back)
            .await
            .unwrap()
            .outcome(),
        Outcome::Success
    );
    let ledger = store::Db::connect(&store::DbConfig::new(db.url()))
        .await
        .unwrap();
    // Another op holds the merchant's row, as zoe's Confirm does (merchant first, then zoe).
    let mut other = ledger.begin().await.unwrap();
    sqlx::query("UPDATE accounts SET updated_at = updated_at WHERE id = 'merchant'")
        .execute(&mut *other)
        .await
        .unwrap();
    let api = p.api.with_timeout(std::time::Duration::from_secs(30));
    let undo = tokio::spawn({
        let back = back.clone();
        async move { api.call(40, "payment", Op::Compensate, &back).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // In id order the undo waits for "merchant" before it touches "zoe".
    let zoe = sqlx::query("SELECT id FROM accounts WHERE id = 'zoe' FOR UPDATE NOWAIT")
        .fetch_optional(&mut *other)
        .await
        .map(|row| row.is_some());
    let _ = other.rollback().await;
    let answered = undo.await.unwrap();
    assert!(
        zoe.is_ok(),
        "the undo locked zoe before merchant: {zoe:?}; undo {answered:?}"
    );
    assert_eq!(answered.unwrap().outcome(), Outcome::Success);
    assert_eq!(balance(&p, "zoe").await, (0, 0));
    assert_consistent(&p).await;
}

/// A batch of Confirms for alice's and bob's orders, while another op holds bob's row and then
/// wants the merchant's (as bob's next Try does, in id order): the batch must take its rows in
/// id order too, before its first item, or on PostgreSQL the two wait on each other (one
/// aborted after a second). Then the batch pays the merchant once per order.
async fn a_batch_of_confirms_locks_its_accounts_in_id_order_and_pays_each_once(db: TestDb) {
    let dir = testkit::temp_dir("payment-");
    let p = payment(&db, dir.path()).await;
    seed(&p, &[("alice", 1_000), ("bob", 1_000)]).await;
    for (gid, who) in [(61, "alice"), (62, "bob")] {
        let r = p
            .call(gid, "payment", Op::Try, &charge(who, 100))
            .await
            .unwrap();
        assert_eq!(outcome(&r), (Outcome::Success, ""));
    }
    let (alice, bob) = (charge("alice", 100), charge("bob", 100));
    let items: [(u64, &str, Op, &[u8]); 2] = [
        (61, "payment", Op::Confirm, &alice),
        (62, "payment", Op::Confirm, &bob),
    ];
    if db.backend() == testkit::Backend::Postgres {
        let ledger = store::Db::connect(&store::DbConfig::new(db.url()))
            .await
            .unwrap();
        let mut other = ledger.begin().await.unwrap();
        sqlx::query("UPDATE accounts SET updated_at = updated_at WHERE id = 'bob'")
            .execute(&mut *other)
            .await
            .unwrap();
        let api = p.api.with_timeout(std::time::Duration::from_secs(30));
        let batch = tokio::spawn({
            let (alice, bob) = (alice.clone(), bob.clone());
            async move {
                api.batch(&[
                    (61, "payment", Op::Confirm, &alice),
                    (62, "payment", Op::Confirm, &bob),
                ])
                .await
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        // In id order the batch waits for bob before it touches merchant: the other op gets it.
        let merchant =
            sqlx::query("SELECT id FROM accounts WHERE id = 'merchant' FOR UPDATE NOWAIT")
                .fetch_optional(&mut *other)
                .await
                .map(|row| row.is_some());
        let _ = other.rollback().await;
        let answered = batch.await.unwrap().unwrap();
        assert!(
            merchant.is_ok(),
            "the batch locked merchant before bob: {merchant:?}; batch {answered:?}"
        );
        for r in answered {
            assert_eq!(outcome(&r.unwrap()), (Outcome::Success, ""));
        }
    } else {
        for r in p.api.batch(&items).await.unwrap() {
            assert_eq!(outcome(&r.unwrap()), (Outcome::Success, ""));
        }
    }
    // Again: duplicates, nothing moves twice.
    for r in p.api.batch(&items).await.unwrap() {
        assert_eq!(outcome(&r.unwrap()), (Outcome::Success, ""));
    }
    assert_eq!(balance(&p, "merchant").await, (200, 0));
    assert_eq!(balance(&p, "alice").await, (900, 0));
    assert_eq!(balance(&p, "bob").await, (900, 0));
    assert_consistent(&p).await;
}

/// Tries of one merchant in one batch credit its room once for all of them, and Confirms and
/// Cancels give it back once: every answer is the one a lone call would get (a payer short of
/// money, a merchant that cannot take one more order), and the money ends where lone calls
/// would have left it.
async fn a_batch_moves_the_merchant_once_and_answers_each_item_as_alone(db: TestDb) {
    let dir = testkit::temp_dir("payment-");
    let p = payment(&db, dir.path()).await;
    seed(&p, &[("alice", 1_000), ("bob", 50), ("carol", 1_000)]).await;
    let answers =
        |r: Vec<Result<proto::v1::BranchResponse, tonic::Status>>| -> Vec<(Outcome, String)> {
            r.into_iter()
                .map(|r| {
                    let r = r.unwrap();
                    (r.outcome(), outcome(&r).1.to_owned())
                })
                .collect()
        };
    let ok = || (Outcome::Success, String::new());
    let tries = [
        (71, charge("alice", 100)),
        (72, charge("bob", 100)),
        (73, charge("carol", 200)),
        (74, charge("alice", 300)),
        (75, charge("carol", 50)),
    ];
    let items: Vec<(u64, &str, Op, &[u8])> = tries
        .iter()
        .map(|(gid, c)| (*gid, "payment", Op::Try, c.as_slice()))
        .collect();
    assert_eq!(
        answers(p.api.batch(&items).await.unwrap()),
        [
            ok(),
            (Outcome::Failure, "insufficient_funds".into()),
            ok(),
            ok(),
            ok()
        ]
    );
    assert_eq!(balance(&p, "alice").await, (600, 400));
    assert_eq!(balance(&p, "bob").await, (50, 0));
    assert_eq!(balance(&p, "carol").await, (750, 250));
    let audit = assert_consistent(&p).await;
    assert_eq!(audit["incoming"].as_i64(), Some(650), "{audit}");
    let second = |gids: &[u64], op: Op| -> Vec<(u64, &str, Op, &[u8])> {
        tries
            .iter()
            .filter(|(gid, _)| gids.contains(gid))
            .map(|(gid, c)| (*gid, "payment", op, c.as_slice()))
            .collect()
    };
    for _ in 0..2 {
        // The second time, duplicates: nothing moves again.
        let confirmed = p.api.batch(&second(&[71, 73], Op::Confirm)).await.unwrap();
        assert_eq!(answers(confirmed), [ok(), ok()]);
        let cancelled = p.api.batch(&second(&[74, 75], Op::Cancel)).await.unwrap();
        assert_eq!(answers(cancelled), [ok(), ok()]);
    }
    assert_eq!(balance(&p, "merchant").await, (300, 0));
    assert_eq!(balance(&p, "alice").await, (900, 0));
    assert_eq!(balance(&p, "carol").await, (800, 0));
    let audit = assert_consistent(&p).await;
    assert_eq!(audit["incoming"].as_i64(), Some(0), "{audit}");

    // A merchant with room for 350 more: the three Tries do not fit together; alone, the
    // second is the one that would not fit, and the others do.
    let max = tcc::check::MAX_BALANCE;
    let ledger = store::Db::connect(&store::DbConfig::new(db.url()))
        .await
        .unwrap();
    set_available(&ledger, "merchant", max - 350, max - 650).await;
    assert_consistent(&p).await;
    let near_full = [
        (81, charge("alice", 100)),
        (82, charge("carol", 300)),
        (83, charge("alice", 200)),
    ];
    let items: Vec<(u64, &str, Op, &[u8])> = near_full
        .iter()
        .map(|(gid, c)| (*gid, "payment", Op::Try, c.as_slice()))
        .collect();
    assert_eq!(
        answers(p.api.batch(&items).await.unwrap()),
        [
            ok(),
            (Outcome::Failure, "merchant_account_full".into()),
            ok()
        ]
    );
    assert_eq!(balance(&p, "alice").await, (600, 300));
    assert_eq!(balance(&p, "carol").await, (800, 0));
    let audit = assert_consistent(&p).await;
    assert_eq!(audit["incoming"].as_i64(), Some(300), "{audit}");
}

both_backends!(
    a_batch_moves_the_merchant_once_and_answers_each_item_as_alone,
    a_batch_of_confirms_locks_its_accounts_in_id_order_and_pays_each_once,
    a_refund_step_read_by_a_payment_svc_from_before_refunds_is_refused_not_paid,
    a_release_moves_exactly_the_money_of_the_hold_it_marks_paid,
    a_failed_refunds_undo_locks_the_two_accounts_in_id_order,
);
