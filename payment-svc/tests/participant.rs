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

both_backends!(
    duplicated_try_confirm_and_cancel_change_nothing_the_second_time,
    a_cancel_before_its_try_leaves_a_marker_and_the_late_try_does_nothing,
    a_compensate_before_its_action_leaves_a_marker_and_the_late_action_does_nothing,
    two_hundred_concurrent_tries_against_money_for_fifty_give_exactly_fifty_successes,
    bad_input_is_a_failure_on_try_and_invalid_argument_on_second_phase_ops,
    the_admin_api_needs_the_token_and_answers_problems,
    a_sigkill_during_a_stream_of_tries_and_confirms_loses_and_doubles_nothing,
);

async fn sigterm_lets_calls_in_flight_finish_and_exits_0(db: TestDb) {
    let dir = testkit::temp_dir("payment-");
    let mut p = payment(&db, dir.path()).await;
    seed(&p, &[("alice", 1_000_000)]).await;
    let api = p.api.clone();
    let calls: Vec<_> = (1..=100u64)
        .map(|gid| {
            let api = api.clone();
            tokio::spawn(async move { api.call(gid, "pay", Op::Try, &charge("alice", 10)).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let status = p
        .service
        .terminate(std::time::Duration::from_secs(20))
        .expect("exits within the grace period");
    assert!(status.success(), "exit status {status}");
    let answered = join_all(calls)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(Ok(resp)) if resp.outcome() == Outcome::Success))
        .count() as i64;
    // Every call is either answered SUCCESS and committed, or refused before it started: after a
    // restart the frozen money is exactly what the answered calls froze.
    p.service.restart().await.unwrap();
    let (_, frozen) = balance(&p, "alice").await;
    assert!(
        frozen >= answered * 10,
        "answered calls were committed ({answered} answered, {frozen} frozen)"
    );
    let audit = assert_consistent(&p).await;
    assert_eq!(audit["held"], json!(frozen));
}

both_backends!(sigterm_lets_calls_in_flight_finish_and_exits_0);
