//! The coordinator binary against scripted participants, on a SQLite file and on PostgreSQL:
//! outcomes, timeouts, retries, Saga compensation order, idempotency, bad input, SIGKILL at
//! every step of the protocol, and two instances sharing one database.
mod common;

use common::*;
use futures::future::join_all;
use proto::v1::{self as pb, Op};
use std::time::Duration;
use testkit::scripted::{Behavior, Scripted};
use testkit::{both_backends, Service, ServiceSpec, TestDb};

async fn all_tries_succeeding_ends_succeeded_with_each_op_taking_effect_once(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    let c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let (a, b, d) = three().await;
    let r = c.execute(tcc("k1", &[&a, &b, &d])).await.unwrap();
    assert!(
        matches!(r.status(), pb::Status::Confirming | pb::Status::Succeeded),
        "{r:?}"
    );
    let t = c.wait_terminal(r.gid, Duration::from_secs(10)).await;
    assert_eq!(t.status(), pb::Status::Succeeded);
    for (p, branch) in [(&a, "b0"), (&b, "b1"), (&d, "b2")] {
        p.assert_settled(r.gid, branch, true);
        assert_eq!(p.calls_of(r.gid, Op::Try).len(), 1);
        assert_eq!(p.calls_of(r.gid, Op::Confirm).len(), 1);
    }
    // The drive counts the transaction finished just after its last checkpoint is stored, which
    // is what `wait_terminal` saw: the counter may lag it by a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = reqwest::get(format!("{}/metrics", c.http_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let missing: Vec<&str> = [
            r#"coordinator_transactions_started_total{mode="tcc"} 1"#,
            r#"coordinator_transactions_finished_total{mode="tcc",outcome="succeeded"} 1"#,
            r#"coordinator_branch_call_seconds_count{op="confirm",outcome="success"} 3"#,
        ]
        .into_iter()
        .filter(|line| !metrics.contains(line))
        .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing:?} missing from\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn one_rejected_try_cancels_every_branch_including_a_try_that_had_not_arrived(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    let c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let (a, b, d) = three().await;
    b.on(Op::Try, [Behavior::Reject("insufficient_funds")]);
    // d's Try reaches its business layer only after its Cancel has arrived.
    d.on(Op::Try, [Behavior::AfterUndo]);
    let r = c.execute(tcc("k2", &[&a, &b, &d])).await.unwrap();
    let t = c.wait_terminal(r.gid, Duration::from_secs(10)).await;
    assert_eq!(t.status(), pb::Status::Failed);
    assert!(t.reason.contains("insufficient_funds"), "{}", t.reason);
    match t.rollback.and_then(|r| r.kind) {
        Some(pb::rollback::Kind::Rejected(r)) => {
            assert_eq!(
                (r.branch_id.as_str(), r.code.as_str()),
                ("b1", "insufficient_funds")
            )
        }
        other => panic!("typed reason: {other:?}"),
    }
    for (p, branch) in [(&a, "b0"), (&b, "b1"), (&d, "b2")] {
        p.assert_settled(r.gid, branch, false);
        assert_eq!(
            p.calls_of(r.gid, Op::Cancel).len(),
            1,
            "every branch cancelled once"
        );
    }
    let cancel_of_d = &d.calls_of(r.gid, Op::Cancel)[0];
    assert_eq!(
        cancel_of_d.effect,
        Some(testkit::scripted::Effect::NullCompensation)
    );
    // d's Try was either never transmitted (abandoned at the decision) or is on its way; if it
    // arrived, it reaches the barrier after its Cancel and does nothing.
    if d.wait_for(Op::Try, 1, Duration::from_millis(500)).await {
        assert_eq!(
            d.wait_for_effect(r.gid, Op::Try, Duration::from_secs(10))
                .await,
            Some(testkit::scripted::Effect::Hanging)
        );
    }
    assert!(!d.applied(r.gid, "b2", Op::Try));
    // The timeline shows every call made, the abandoned Try included.
    let detail = c.detail(r.gid).await;
    let calls = |i: usize| -> Vec<(String, String)> {
        detail["branches"][i]["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["op"].as_str().unwrap().to_owned(),
                    a["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let pair = |op: &str, outcome: &str| (op.to_owned(), outcome.to_owned());
    // b0's Try answers at about the time b1's rejection does: either way it is in the timeline.
    let b0 = calls(0);
    assert!(
        b0 == [pair("try", "success"), pair("cancel", "success")]
            || b0 == [pair("try", "abandoned"), pair("cancel", "success")],
        "{detail}"
    );
    assert_eq!(
        calls(1),
        [pair("try", "failure"), pair("cancel", "success")],
        "{detail}"
    );
    assert_eq!(
        calls(2),
        [pair("try", "abandoned"), pair("cancel", "success")],
        "{detail}"
    );
}

async fn a_try_that_hangs_past_its_timeout_cancels_the_transaction(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    let c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let (a, b, d) = three().await;
    d.on(Op::Try, [Behavior::Hang]);
    let mut req = tcc("k3", &[&a, &b, &d]);
    req.branch_timeout_ms = 300;
    let started = std::time::Instant::now();
    let r = c.execute(req).await.unwrap();
    let t = c.wait_terminal(r.gid, Duration::from_secs(10)).await;
    assert_eq!(t.status(), pb::Status::Failed);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(t.reason.contains("no answer within 300 ms"), "{}", t.reason);
    match t.rollback.and_then(|r| r.kind) {
        Some(pb::rollback::Kind::Errored(e)) => assert_eq!(e.branch_id, "b2", "{e:?}"),
        other => panic!("typed reason: {other:?}"),
    }
    for (p, branch) in [(&a, "b0"), (&b, "b1"), (&d, "b2")] {
        p.assert_settled(r.gid, branch, false);
    }
}

async fn a_confirm_failing_transiently_n_times_succeeds_with_n_plus_one_attempts_in_the_timeline(
    db: TestDb,
) {
    let dir = testkit::temp_dir("coord-");
    let c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let (a, b, d) = three().await;
    const N: usize = 3;
    b.on(
        Op::Confirm,
        [
            Behavior::Unavailable,
            Behavior::Unavailable,
            Behavior::Unavailable,
            Behavior::Succeed,
        ],
    );
    let r = c.execute(tcc("k4", &[&a, &b, &d])).await.unwrap();
    let t = c.wait_terminal(r.gid, Duration::from_secs(10)).await;
    assert_eq!(t.status(), pb::Status::Succeeded);
    assert_eq!(b.calls_of(r.gid, Op::Confirm).len(), N + 1);
    // The same in the HTTP timeline.
    let detail = c.detail(r.gid).await;
    let timeline = detail["branches"][1]["timeline"].as_array().unwrap();
    let confirms: Vec<_> = timeline.iter().filter(|a| a["op"] == "confirm").collect();
    assert_eq!(confirms.len(), N + 1, "{detail}");
    assert_eq!(
        confirms.iter().filter(|a| a["outcome"] == "error").count(),
        N
    );
    assert_eq!(confirms.last().unwrap()["outcome"], "success");
    assert_eq!(detail["status"], "succeeded");
}

async fn a_saga_failure_compensates_in_reverse_order(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    let c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let p = Scripted::start().await;
    // One participant serving four branches: the call order is one list.
    let parts = [&p, &p, &p, &p];
    let mut req = tcc("k5", &parts);
    req.mode = pb::Mode::Saga as i32;
    // The third Action is rejected.
    p.on(
        Op::Action,
        [
            Behavior::Succeed,
            Behavior::Succeed,
            Behavior::Reject("out_of_stock"),
        ],
    );
    let r = c.execute(req).await.unwrap();
    let t = c.wait_terminal(r.gid, Duration::from_secs(10)).await;
    assert_eq!(t.status(), pb::Status::Failed);
    let order: Vec<(String, Op)> = p.calls().into_iter().map(|c| (c.branch_id, c.op)).collect();
    assert_eq!(
        order,
        vec![
            ("b0".into(), Op::Action),
            ("b1".into(), Op::Action),
            ("b2".into(), Op::Action),
            ("b3".into(), Op::Compensate),
            ("b2".into(), Op::Compensate),
            ("b1".into(), Op::Compensate),
            ("b0".into(), Op::Compensate),
        ]
    );
    assert!(
        !p.applied(r.gid, "b3", Op::Action),
        "the step after the failure never ran"
    );
    assert_eq!(
        p.calls_of(r.gid, Op::Compensate)[0].effect,
        Some(testkit::scripted::Effect::NullCompensation),
        "so its Compensate is a null compensation"
    );
}

async fn one_idempotency_key_sent_twenty_times_at_once_yields_one_gid(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    let c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let (a, b, d) = three().await;
    let req = tcc("same-key", &[&a, &b, &d]);
    let answers = join_all((0..20).map(|_| c.execute(req.clone()))).await;
    let gids: std::collections::HashSet<u64> =
        answers.iter().map(|r| r.as_ref().unwrap().gid).collect();
    assert_eq!(gids.len(), 1, "{answers:?}");
    assert_eq!(
        answers
            .iter()
            .filter(|r| !r.as_ref().unwrap().replayed)
            .count(),
        1
    );
    let gid = *gids.iter().next().unwrap();
    c.wait_terminal(gid, Duration::from_secs(10)).await;
    assert_eq!(a.calls_of(gid, Op::Try).len(), 1);
    assert_eq!(c.list_all().await.len(), 1);
    // The same key with another request is a conflict, not a second transaction.
    let mut other = req.clone();
    other.branches.pop();
    assert_eq!(
        c.execute(other).await.unwrap_err().code(),
        tonic::Code::AlreadyExists
    );
    assert_eq!(c.list_all().await.len(), 1);
}

async fn bad_requests_are_invalid_arguments_and_store_nothing(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    let c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let a = Scripted::start().await;
    let good = tcc("", &[&a]);
    let mut cases = Vec::new();
    let mut r = good.clone();
    r.branches.clear();
    cases.push(("no branches", r));
    let mut r = good.clone();
    r.mode = 0;
    cases.push(("no mode", r));
    let mut r = good.clone();
    r.mode = 9;
    cases.push(("unknown mode", r));
    let mut r = good.clone();
    r.branches[0].participant = "not a url".into();
    cases.push(("bad address", r));
    let mut r = good.clone();
    r.branches[0].participant = "ftp://x:1".into();
    cases.push(("bad scheme", r));
    let mut r = good.clone();
    r.branches[0].payload = vec![0; 64 * 1024 + 1];
    cases.push(("payload over the limit", r));
    let mut r = good.clone();
    r.branches.push(r.branches[0].clone());
    cases.push(("duplicate branch id", r));
    let mut r = good.clone();
    r.branches[0].depends_on = vec!["b9".into()];
    cases.push(("tcc with depends_on", r));
    let mut r = good.clone();
    r.branches[0].retriable = true;
    cases.push(("tcc with a retriable branch", r));
    // In a Saga run in order, a step after a retriable one would wait for ever.
    let mut r = saga("", &[&a, &a]);
    r.branches[0].retriable = true;
    cases.push(("saga with a step after a retriable one", r));
    let mut r = good.clone();
    r.branch_timeout_ms = 20_000;
    cases.push(("branch timeout above the deadline", r));
    let mut r = good.clone();
    r.branch_timeout_ms = 2_000; // the test coordinators hold claims for 3 s
    cases.push(("branch timeout above half the lease", r));
    for (what, req) in cases {
        let err = c.execute(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err}");
        assert!(!err.message().is_empty());
    }
    assert!(c.list_all().await.is_empty(), "nothing stored");
    assert!(a.calls().is_empty(), "nobody called");
    let http = reqwest::Client::new();
    let res = http
        .get(format!("{}/api/v1/transactions/notanumber", c.http_url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = http
        .get(format!("{}/api/v1/transactions/12345", c.http_url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

/// The coordinator's reads are operator reads (payloads name accounts and amounts, timelines
/// internal addresses): over HTTP and over gRPC, without the admin token they are refused, and
/// so is the gRPC retry. Execute needs no token.
async fn reads_and_retries_without_the_admin_token_are_refused_over_http_and_grpc(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    let c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let a = Scripted::start().await;
    let r = c.execute(tcc("k", &[&a])).await.unwrap();
    c.wait_terminal(r.gid, Duration::from_secs(10)).await;
    let http = reqwest::Client::new();
    for path in [
        "/api/v1/transactions".to_owned(),
        "/api/v1/transactions?status=succeeded".to_owned(),
        format!("/api/v1/transactions/{}", r.gid),
    ] {
        for token in [None, Some("not-the-token")] {
            let mut req = http.get(format!("{}{path}", c.http_url));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 401, "{path} with {token:?}");
            assert_eq!(res.headers()["content-type"], "application/problem+json");
            let body = res.text().await.unwrap();
            assert!(!body.contains(&r.gid.to_string()), "{path}: {body}");
        }
    }
    // An operator's certificate without the operator's token.
    let mut anonymous =
        proto::v1::coordinator_client::CoordinatorClient::new(channel_as(&c.grpc_url, "operator"));
    let denied = [
        anonymous.get(pb::GetRequest { gid: r.gid }).await.map(drop),
        anonymous
            .list(pb::ListRequest {
                status: 0,
                limit: 10,
                before_gid: 0,
            })
            .await
            .map(drop),
        anonymous
            .retry(pb::RetryRequest { gid: r.gid })
            .await
            .map(drop),
    ];
    for d in denied {
        let status = d.expect_err("refused without the token");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    }
    // With it, the same reads answer; not with order-svc's certificate, though, even with the
    // token; and an operator cannot start a transaction.
    assert_eq!(c.get(r.gid).await.gid, r.gid);
    let order_with_token = proto::v1::coordinator_client::CoordinatorClient::with_interceptor(
        channel_as(&c.grpc_url, "order"),
        Operator,
    );
    let refused = order_with_token
        .clone()
        .get(pb::GetRequest { gid: r.gid })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    let refused = c
        .operator
        .clone()
        .execute(tcc("k3", &[&a]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    let res = http
        .get(format!("{}/api/v1/transactions/{}", c.http_url, r.gid))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Execute is the order service's call, not an operator's: no token.
    assert!(c.execute(tcc("k2", &[&a])).await.is_ok());
}

/// SIGKILL at one point of the protocol, restart, and check the transaction ends as it must.
async fn crash_and_recover(db: &TestDb, failpoint: Option<&str>, slow_op: Option<Op>) {
    let dir = testkit::temp_dir("coord-");
    let extra: Vec<(&str, &str)> = failpoint
        .map(|f| vec![("COORDINATOR_FAILPOINT", f)])
        .unwrap_or_default();
    let mut c = coordinator(db, dir.path(), "coordinator", &extra).await;
    let (a, b, d) = three().await;
    if let Some(op) = slow_op {
        for p in [&a, &b, &d] {
            // Slower than the branch timeout once: the call in flight when the coordinator dies
            // still takes effect later, and the replay after the restart must be harmless.
            p.on(
                op,
                [
                    Behavior::Delay(Duration::from_millis(1500)),
                    Behavior::Succeed,
                ],
            );
        }
    }
    let req = tcc("crash-key", &[&a, &b, &d]);
    let call = tokio::spawn({
        let c2 = c.client.clone();
        let req = req.clone();
        async move { c2.clone().execute(req).await }
    });
    match slow_op {
        Some(op) => {
            for p in [&a, &b, &d] {
                assert!(
                    p.wait_for(op, 1, Duration::from_secs(10)).await,
                    "{op:?} never arrived"
                );
            }
            c.service.kill();
        }
        None => {
            // The failpoint kills the process itself.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while c.service.is_running() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the failpoint did not fire"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let _ = call.await;
    // Restart without the failpoint; the key finds the transaction the crash interrupted.
    c.service = {
        let dir2 = dir.path().to_owned();
        let spec = c.service.spec().clone();
        let spec = ServiceSpec {
            env: spec
                .env
                .into_iter()
                .filter(|(k, _)| k != "COORDINATOR_FAILPOINT")
                .collect(),
            log_path: dir2.join("restarted.log"),
            ..spec
        };
        Service::start(spec).await.unwrap_or_else(|e| panic!("{e}"))
    };
    let again = c.execute(req).await.unwrap();
    assert!(
        again.replayed,
        "the transaction was recorded before the crash"
    );
    let t = c.wait_terminal(again.gid, Duration::from_secs(20)).await;
    assert_eq!(t.status(), pb::Status::Succeeded, "{t:?}");
    for (p, branch) in [(&a, "b0"), (&b, "b1"), (&d, "b2")] {
        p.assert_settled(again.gid, branch, true);
    }
    assert_eq!(c.list_all().await.len(), 1);
}

async fn sigkill_after_recording_before_any_try_then_restart_succeeds(db: TestDb) {
    crash_and_recover(&db, Some("after_insert"), None).await;
}

async fn sigkill_during_the_tries_then_restart_succeeds(db: TestDb) {
    crash_and_recover(&db, None, Some(Op::Try)).await;
}

async fn sigkill_after_the_decision_before_any_confirm_then_restart_succeeds(db: TestDb) {
    crash_and_recover(&db, Some("after_decision"), None).await;
}

async fn sigkill_during_the_confirms_then_restart_succeeds(db: TestDb) {
    crash_and_recover(&db, None, Some(Op::Confirm)).await;
}

async fn an_operator_retry_makes_a_waiting_transaction_due_now(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    let c = coordinator(
        &db,
        dir.path(),
        "coordinator",
        // Delays are full jitter, drawn from [0, cap]: with a one-day cap the chance that the
        // automatic retry comes within the test's 500 ms is about 6 in a million (with the one
        // minute it had, 1 in 120: it failed CI once).
        &[
            ("COORDINATOR_RETRY_INITIAL_MS", "86400000"),
            ("COORDINATOR_RETRY_MAX_MS", "86400000"),
        ],
    )
    .await;
    let (a, b) = (Scripted::start().await, Scripted::start().await);
    b.on(Op::Confirm, [Behavior::Unavailable, Behavior::Succeed]);
    let r = c.execute(tcc("k-retry", &[&a, &b])).await.unwrap();
    // The first confirm round failed and was written back; the next one is (almost surely)
    // hours away.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.get(r.gid).await.attempts < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first round never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.get(r.gid).await.status(), pb::Status::Confirming);
    let res = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/admin/transactions/{}/retry",
            c.http_url, r.gid
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let t = c.wait_terminal(r.gid, Duration::from_secs(5)).await;
    assert_eq!(t.status(), pb::Status::Succeeded);
}

async fn a_key_replays_after_a_restart_with_other_default_timeouts(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    let mut c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let a = Scripted::start().await;
    let mut req = tcc("defaults", &[&a]);
    // Left to the instance's defaults: they are not part of what the caller sent.
    req.branch_timeout_ms = 0;
    req.timeout_ms = 0;
    let first = c.execute(req.clone()).await.unwrap();
    c.service.kill();
    let spec = c.service.spec().clone();
    c.service = Service::start(ServiceSpec {
        env: spec
            .env
            .into_iter()
            .chain([
                ("COORDINATOR_DEFAULT_BRANCH_TIMEOUT_MS".into(), "700".into()),
                ("COORDINATOR_DEFAULT_TIMEOUT_MS".into(), "5000".into()),
            ])
            .collect(),
        log_path: dir.path().join("restarted.log"),
        ..spec
    })
    .await
    .unwrap();
    let again = c.execute(req).await.unwrap();
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.gid, first.gid);
}

/// The request hash as the previous version stored it (copied from it): timeouts as the
/// instance resolved them (lease 3 s: branch timeout 1.5 s by default), branch dependencies as
/// indices.
fn previous_version_hash(
    req: &pb::ExecuteRequest,
    timeout_ms: u64,
    branch_timeout_ms: u64,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"tcc");
    h.update([u8::from(req.concurrent)]);
    h.update(timeout_ms.to_be_bytes());
    h.update(branch_timeout_ms.to_be_bytes());
    for b in &req.branches {
        for field in [b.branch_id.as_bytes(), b.participant.as_bytes(), &b.payload] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field);
        }
        h.update(0u64.to_be_bytes());
    }
    hex::encode(h.finalize())
}

async fn a_key_recorded_by_the_previous_version_still_replays(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    let mut c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let a = Scripted::start().await;
    let mut req = tcc("upgrade", &[&a]);
    req.branch_timeout_ms = 0;
    let first = c.execute(req.clone()).await.unwrap();
    c.service.kill();
    // As the previous version would have stored it.
    let log = store::Db::connect(&store::DbConfig::new(db.url()))
        .await
        .unwrap();
    let mut w = log.begin().await.unwrap();
    sqlx::query("UPDATE global_txns SET request_hash = $1")
        .bind(previous_version_hash(&req, 10_000, 1_500))
        .execute(&mut *w)
        .await
        .unwrap();
    w.commit().await.unwrap();
    c.service.restart().await.unwrap();
    let again = c.execute(req).await.unwrap();
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.gid, first.gid);
}

async fn a_coordinator_refuses_a_node_id_a_live_instance_holds_and_takes_a_dead_ones(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    let node = [
        ("COORDINATOR_NODE_ID", "7"),
        ("COORDINATOR_NODE_LEASE_MS", "1000"),
    ];
    let mut first = coordinator(&db, dir.path(), "first", &node).await;
    let (spec, ..) = coordinator_spec(&db, dir.path(), "second", &node);
    let refused = Service::start(spec.clone()).await.unwrap_err().to_string();
    assert!(
        refused.contains("node id 7 is in use by a live instance"),
        "{refused}"
    );
    // Its holder dies: the id is free once its lease runs out, and the successor works.
    first.service.kill();
    let second = Service::start(spec).await.unwrap_or_else(|e| panic!("{e}"));
    drop(second);
}

/// A coordinator frozen past its node id lease (SIGSTOP) while a successor takes the id over:
/// once it runs again it must not claim the successor's transactions back. PostgreSQL only:
/// several instances share a log there (a process frozen inside a SQLite write would block
/// every other writer of the file, by design of SQLite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_lost_its_node_id_lease_claims_nothing_when_it_wakes() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = testkit::temp_dir("coord-");
    let node = [("COORDINATOR_NODE_ID", "7")];
    let frozen = coordinator(&db, dir.path(), "frozen", &node).await;
    let b = Scripted::start().await;
    b.on(Op::Confirm, [Behavior::Unavailable]);
    let r = frozen.execute(tcc("wakes", &[&b])).await.unwrap();
    assert_eq!(r.status(), pb::Status::Confirming);
    let pid = Pid::from_raw(frozen.service.pid().unwrap() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    // Its lease (1 s in tests) runs out; a successor takes node id 7 and the transaction.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let successor = coordinator(&db, dir.path(), "successor", &node).await;
    assert!(b.wait_for(Op::Confirm, 3, Duration::from_secs(10)).await);
    kill(pid, Signal::SIGCONT).unwrap();
    let woke_at = store::now_ms();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    b.on(Op::Confirm, [Behavior::Succeed]);
    let t = successor
        .wait_terminal(r.gid, Duration::from_secs(10))
        .await;
    assert_eq!(t.status(), pb::Status::Succeeded);
    // Whose calls are in the log after the wake-up: the successor's only.
    let log = store::Db::connect(&store::DbConfig::new(db.url()))
        .await
        .unwrap();
    let owners: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT owner FROM attempts WHERE started_at > $1")
            .bind(woke_at + 200)
            .fetch_all(log.pool())
            .await
            .unwrap();
    let first_owner: String =
        sqlx::query_scalar("SELECT owner FROM attempts ORDER BY started_at LIMIT 1")
            .fetch_one(log.pool())
            .await
            .unwrap();
    assert!(
        !owners.contains(&first_owner),
        "the woken instance ({first_owner}) drove again: {owners:?}"
    );
    drop(frozen);
}

async fn a_listed_page_shows_every_transaction_with_its_own_branches_and_timeline(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    let c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let (a, b) = (Scripted::start().await, Scripted::start().await);
    b.on(
        Op::Try,
        [
            Behavior::Succeed,
            Behavior::Reject("out_of_stock"),
            Behavior::Succeed,
        ],
    );
    let mut gids = Vec::new();
    for i in 0..3 {
        let r = c.execute(tcc(&format!("l{i}"), &[&a, &b])).await.unwrap();
        c.wait_terminal(r.gid, Duration::from_secs(10)).await;
        gids.push(r.gid);
    }
    let listed = c.list_all().await;
    assert_eq!(
        listed.iter().map(|t| t.gid).collect::<Vec<_>>(),
        gids.iter().rev().copied().collect::<Vec<_>>(),
        "newest first"
    );
    for t in &listed {
        assert_eq!(t.branches.len(), 2, "{t:?}");
        let second = if t.gid == gids[1] {
            Op::Cancel
        } else {
            Op::Confirm
        };
        for branch in &t.branches {
            let ops: Vec<Op> = branch.timeline.iter().map(|a| a.op()).collect();
            assert_eq!(ops, [Op::Try, second], "gid {}: {branch:?}", t.gid);
        }
    }
}

fn saga(key: &str, parts: &[&Scripted]) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        mode: pb::Mode::Saga as i32,
        ..tcc(key, parts)
    }
}

/// The calls a participant received, in order, as (branch, op).
fn call_order(p: &Scripted) -> Vec<(String, Op)> {
    p.calls().into_iter().map(|c| (c.branch_id, c.op)).collect()
}

async fn a_saga_killed_mid_step_and_recovered_past_its_deadline_compensates_what_ran(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    let mut c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let p = Scripted::start().await;
    // Step 0's Action takes effect; step 1's never answers; the coordinator dies meanwhile.
    p.on(Op::Action, [Behavior::Succeed, Behavior::Hang]);
    let mut req = saga("saga-crash", &[&p, &p, &p]);
    req.timeout_ms = 1_500;
    req.branch_timeout_ms = 1_000;
    let call = tokio::spawn({
        let client = c.client.clone();
        async move { client.clone().execute(req).await }
    });
    assert!(p.wait_for(Op::Action, 2, Duration::from_secs(10)).await);
    c.service.kill();
    let _ = call.await;
    // Restarted past the deadline: recovery must roll back what may have run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.service.restart().await.unwrap();
    let gid = c.list_all().await[0].gid;
    let t = c.wait_terminal(gid, Duration::from_secs(10)).await;
    assert_eq!(t.status(), pb::Status::Failed, "{t:?}");
    assert_eq!(
        call_order(&p),
        vec![
            ("b0".into(), Op::Action),
            ("b1".into(), Op::Action),
            ("b2".into(), Op::Compensate),
            ("b1".into(), Op::Compensate),
            ("b0".into(), Op::Compensate),
        ],
        "every step is compensated, in reverse, once"
    );
    assert!(
        p.applied(gid, "b0", Op::Compensate),
        "step 0's effect undone"
    );
    for (undo, branch) in p.calls_of(gid, Op::Compensate).iter().zip(["b2", "b1"]) {
        assert_eq!(
            undo.effect,
            Some(testkit::scripted::Effect::NullCompensation),
            "{branch}'s Action never took effect: its Compensate is a null compensation"
        );
    }
    // Terminal means finished: nothing is claimed again.
    let attempts = c.get(gid).await.attempts;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.get(gid).await.attempts, attempts);
}

/// A Saga's retriable last step takes effect but its answer is lost, the coordinator dies, and
/// it comes back past the deadline: the step is sent again (the barrier answers the duplicate)
/// and the Saga succeeds. Nothing is compensated: a refund's money released to a buyer who may
/// have spent it is never taken back.
async fn a_saga_past_its_point_of_no_return_finishes_forward_after_a_crash_past_its_deadline(
    db: TestDb,
) {
    let dir = testkit::temp_dir("coord-");
    let mut c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let p = Scripted::start().await;
    // The retriable step's first Action arrives only after its call timed out.
    p.on(
        Op::Action,
        [
            Behavior::Succeed,
            Behavior::Succeed,
            Behavior::Delay(Duration::from_millis(1_200)),
            Behavior::Succeed,
        ],
    );
    let mut req = saga("saga-forward", &[&p, &p, &p]);
    req.branches[2].retriable = true;
    req.timeout_ms = 1_500;
    req.branch_timeout_ms = 1_000;
    let call = tokio::spawn({
        let client = c.client.clone();
        async move { client.clone().execute(req).await }
    });
    assert!(p.wait_for(Op::Action, 3, Duration::from_secs(10)).await);
    let gid = c.list_all().await[0].gid;
    assert_eq!(
        c.get(gid).await.status(),
        pb::Status::Confirming,
        "the point of no return is durable before the retriable step goes out"
    );
    c.service.kill();
    let _ = call.await;
    assert!(
        p.wait_for_effect(gid, Op::Action, Duration::from_secs(5))
            .await
            .is_some(),
        "the step took effect"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.service.restart().await.unwrap();
    let t = c.wait_terminal(gid, Duration::from_secs(10)).await;
    assert_eq!(t.status(), pb::Status::Succeeded, "{t:?}");
    assert!(
        p.calls_of(gid, Op::Compensate).is_empty(),
        "nothing compensated past the point of no return: {:?}",
        call_order(&p)
    );
    assert!(p.applied(gid, "b2", Op::Action));
    assert!(t.branches[2].retriable);
}

async fn a_saga_whose_steps_outlast_the_lease_is_driven_once_by_one_claim(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    // Claims hold 3 s; five steps of 0.9 s each take 4.5 s.
    let c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let p = Scripted::start().await;
    p.on(
        Op::Action,
        (0..5).map(|_| Behavior::Delay(Duration::from_millis(900))),
    );
    let mut req = saga("saga-long", &[&p, &p, &p, &p, &p]);
    req.timeout_ms = 30_000;
    req.wait_ms = 0;
    let r = c.execute(req).await.unwrap();
    let t = c.wait_terminal(r.gid, Duration::from_secs(20)).await;
    assert_eq!(t.status(), pb::Status::Succeeded, "{t:?}");
    let actions: Vec<String> = p
        .calls_of(r.gid, Op::Action)
        .into_iter()
        .map(|c| c.branch_id)
        .collect();
    assert_eq!(
        actions,
        ["b0", "b1", "b2", "b3", "b4"],
        "each step sent once: no second drive took over"
    );
    // One drive: the timeline's calls never overlap in time.
    let detail = c.detail(r.gid).await;
    let mut spans: Vec<(f64, f64)> = detail["branches"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["timeline"].as_array().unwrap().clone())
        .map(|a| {
            let start = a["started_at_ms"].as_f64().unwrap();
            (start, start + a["duration_ms"].as_f64().unwrap())
        })
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(spans.len(), 5, "{detail}");
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0 + 1.0, "overlapping calls: {spans:?}");
    }
}

/// With its participants configured, the coordinator calls no other address: a transaction
/// naming one is refused before anything is stored or called (no request forgery through it),
/// and the known ones still work.
async fn a_transaction_naming_a_participant_the_coordinator_does_not_know_is_refused_and_nothing_called(
    db: TestDb,
) {
    let dir = testkit::temp_dir("coord-");
    let (a, b, stranger) = three().await;
    let (url_a, url_b) = (a.url(), b.url());
    let c = coordinator(
        &db,
        dir.path(),
        "coordinator",
        &[
            ("COORDINATOR_PARTICIPANTS__A", url_a.as_str()),
            ("COORDINATOR_PARTICIPANTS__B", url_b.as_str()),
        ],
    )
    .await;
    for (what, parts) in [
        ("a stranger beside known ones", vec![&a, &stranger, &b]),
        ("only a stranger", vec![&stranger]),
    ] {
        let err = c.execute(tcc("", &parts)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err}");
        assert!(
            err.message()
                .contains("participant is not one this coordinator knows (it knows a, b)"),
            "{what}: {err}"
        );
    }
    let mut elsewhere = tcc("", &[&a]);
    elsewhere.branches[0].participant = "http://169.254.169.254:80".into();
    let err = c.execute(elsewhere).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(c.list_all().await.is_empty(), "nothing stored");
    assert!(
        a.calls().is_empty() && b.calls().is_empty() && stranger.calls().is_empty(),
        "nobody called"
    );
    // The known ones (a trailing slash is the same address).
    let mut known = tcc("", &[&a, &b]);
    known.branches[1].participant = format!("{url_b}/");
    let r = c.execute(known).await.unwrap();
    let t = c.wait_terminal(r.gid, Duration::from_secs(10)).await;
    assert_eq!(t.status(), pb::Status::Succeeded);
    assert_eq!(b.calls_of(r.gid, Op::Confirm).len(), 1);

    // b leaves the list (a restart with a new configuration): a retry of a transaction
    // recorded with b still gets its answer; a new one naming b is refused.
    let placed = c.execute(tcc("placed-with-b", &[&a, &b])).await.unwrap();
    c.wait_terminal(placed.gid, Duration::from_secs(10)).await;
    let Coord { mut service, .. } = c;
    service.kill();
    let c = coordinator(
        &db,
        dir.path(),
        "coordinator-without-b",
        &[("COORDINATOR_PARTICIPANTS__A", url_a.as_str())],
    )
    .await;
    let again = c
        .execute(tcc("placed-with-b", &[&a, &b]))
        .await
        .expect("a replay, not a refusal");
    assert_eq!((again.gid, again.replayed), (placed.gid, true));
    let err = c.execute(tcc("new-with-b", &[&a, &b])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
}

both_backends!(
    all_tries_succeeding_ends_succeeded_with_each_op_taking_effect_once,
    one_rejected_try_cancels_every_branch_including_a_try_that_had_not_arrived,
    a_try_that_hangs_past_its_timeout_cancels_the_transaction,
    a_confirm_failing_transiently_n_times_succeeds_with_n_plus_one_attempts_in_the_timeline,
    a_saga_failure_compensates_in_reverse_order,
    one_idempotency_key_sent_twenty_times_at_once_yields_one_gid,
    bad_requests_are_invalid_arguments_and_store_nothing,
    sigkill_after_recording_before_any_try_then_restart_succeeds,
    sigkill_during_the_tries_then_restart_succeeds,
    sigkill_after_the_decision_before_any_confirm_then_restart_succeeds,
    sigkill_during_the_confirms_then_restart_succeeds,
    an_operator_retry_makes_a_waiting_transaction_due_now,
    a_saga_killed_mid_step_and_recovered_past_its_deadline_compensates_what_ran,
    a_saga_whose_steps_outlast_the_lease_is_driven_once_by_one_claim,
    a_saga_past_its_point_of_no_return_finishes_forward_after_a_crash_past_its_deadline,
    a_key_replays_after_a_restart_with_other_default_timeouts,
    a_key_recorded_by_the_previous_version_still_replays,
    a_coordinator_refuses_a_node_id_a_live_instance_holds_and_takes_a_dead_ones,
    a_listed_page_shows_every_transaction_with_its_own_branches_and_timeline,
    a_transaction_naming_a_participant_the_coordinator_does_not_know_is_refused_and_nothing_called,
    reads_and_retries_without_the_admin_token_are_refused_over_http_and_grpc,
    the_purge_keeps_every_unended_transaction_and_every_answer_a_replay_needs,
    a_long_timeline_pages_back_through_every_attempt_once,
);

/// A transaction retried for days has thousands of attempts: its read shows a page, the
/// newest first, and the pages before it hold every older attempt exactly once (two branches
/// per round, often started in the same millisecond: the cursor breaks the tie by id).
async fn a_long_timeline_pages_back_through_every_attempt_once(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    let c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let (a, b, _) = three().await;
    a.on(Op::Confirm, [Behavior::Unavailable]);
    b.on(Op::Confirm, [Behavior::Unavailable]);
    let mut req = tcc("long", &[&a, &b]);
    req.concurrent = true;
    let r = c.execute(req).await.unwrap();
    assert!(a.wait_for(Op::Confirm, 6, Duration::from_secs(20)).await);
    let http = reqwest::Client::new();
    let read = |query: String| {
        let req = http
            .get(format!(
                "{}/api/v1/transactions/{}?{query}",
                c.http_url, r.gid
            ))
            .bearer_auth(ADMIN)
            .send();
        async move {
            let res = req.await.unwrap();
            (
                res.status().as_u16(),
                res.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, first) = read("timeline_limit=3".into()).await;
    assert_eq!(status, 200, "{first}");
    let total = first["timeline"]["total"].as_u64().unwrap();
    assert!(total >= 8, "{first}");
    let attempts_of = |page: &serde_json::Value| -> Vec<(u64, String, String)> {
        let mut v: Vec<_> = page["branches"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|br| {
                let id = br["branch_id"].as_str().unwrap().to_owned();
                br["timeline"].as_array().unwrap().iter().map(move |a| {
                    (
                        a["started_at_ms"].as_u64().unwrap(),
                        id.clone(),
                        a["op"].as_str().unwrap().to_owned(),
                    )
                })
            })
            .collect();
        v.sort();
        v
    };
    let mut seen = attempts_of(&first);
    assert_eq!(seen.len(), 3);
    assert_eq!(first["timeline"]["shown"], 3);
    let mut cursor = first["timeline"]["next_before"].as_str().map(str::to_owned);
    let mut pages = 1;
    while let Some(before) = cursor {
        let (status, page) = read(format!("timeline_limit=3&timeline_before={before}")).await;
        assert_eq!(status, 200, "{page}");
        let older = attempts_of(&page);
        assert!(!older.is_empty() && older.len() <= 3, "{page}");
        assert!(
            older.last().unwrap().0 <= seen.first().unwrap().0,
            "a page is not older than the one after it: {older:?} then {seen:?}"
        );
        seen.splice(0..0, older);
        cursor = page["timeline"]["next_before"].as_str().map(str::to_owned);
        pages += 1;
    }
    assert_eq!(seen.len() as u64, total, "{pages} pages: {seen:?}");
    assert_eq!(seen.iter().filter(|(_, _, op)| op == "try").count(), 2);
    // Bad paging input is a 400 that says what to send.
    for bad in [
        "timeline_limit=0",
        "timeline_limit=1001",
        "timeline_before=yesterday",
        "timeline_before=-1.5",
        "timeline_before=%2B1.5",
    ] {
        let (status, problem) = read(bad.into()).await;
        assert_eq!(status, 400, "{bad}: {problem}");
    }
}

/// Retention (`log::purge_ended`, what the coordinator runs every hour): ended transactions
/// lose their branches and timeline, and those without a key go entirely; a transaction still
/// being driven keeps everything, and a key replayed after the purge gets its first answer,
/// never a second run.
async fn the_purge_keeps_every_unended_transaction_and_every_answer_a_replay_needs(db: TestDb) {
    let dir = testkit::temp_dir("coord-");
    let c = coordinator(&db, dir.path(), "coordinator", &[]).await;
    let (ok, no, stuck) = three().await;
    no.on(Op::Try, [Behavior::Reject("insufficient_funds")]);
    stuck.on(Op::Confirm, [Behavior::Unavailable]);
    let unkeyed_first = c.execute(tcc("", &[&ok])).await.unwrap();
    let done = c.execute(tcc("done", &[&ok])).await.unwrap();
    let refused = c.execute(tcc("refused", &[&ok, &no])).await.unwrap();
    let mut pending = tcc("stuck", &[&stuck]);
    pending.wait_ms = 0;
    let pending = c.execute(pending).await.unwrap();
    let unkeyed_last = c.execute(tcc("", &[&ok])).await.unwrap();
    for gid in [unkeyed_first.gid, done.gid, refused.gid, unkeyed_last.gid] {
        c.wait_terminal(gid, Duration::from_secs(10)).await;
    }
    assert!(
        stuck
            .wait_for(Op::Confirm, 2, Duration::from_secs(10))
            .await
    );

    let log = store::Db::connect(&store::DbConfig::new(db.url()))
        .await
        .unwrap();
    let attempts = |gid: u64| {
        let log = log.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM attempts WHERE gid = $1",
            )
            .bind(gid as i64)
            .fetch_one(log.pool())
            .await
            .unwrap()
        }
    };
    let stuck_before = attempts(pending.gid).await;
    assert!(stuck_before >= 2);
    // Everything that ended before a minute from now may go; rounds until one finds nothing.
    let cutoff = store::now_ms() + 60_000;
    let mut purged = Vec::new();
    loop {
        let p = coordinator::log::purge_ended(&log, cutoff, 2)
            .await
            .unwrap();
        if p.transactions == 0 {
            break;
        }
        purged.push(p);
    }
    let total: u64 = purged.iter().map(|p| p.transactions).sum();
    let removed: u64 = purged.iter().map(|p| p.removed).sum();
    assert_eq!(
        (total, removed),
        (4, 1),
        "four ended, one removed entirely (the last unkeyed one stays: the id generator resumes above it): {purged:?}"
    );
    for gid in [unkeyed_first.gid, done.gid, refused.gid, unkeyed_last.gid] {
        assert_eq!(attempts(gid).await, 0, "gid {gid} kept its timeline");
    }
    // The transaction still being driven kept everything, and is still driven.
    let t = c.get(pending.gid).await;
    assert_eq!(t.status(), pb::Status::Confirming);
    assert_eq!(t.branches.len(), 1);
    assert!(
        stuck
            .wait_for(
                Op::Confirm,
                stuck_before as usize + 2,
                Duration::from_secs(10)
            )
            .await
    );
    assert!(attempts(pending.gid).await > stuck_before);

    // Replays of purged keys: the first answer, the same gid, nothing run again.
    let tries_before = ok.calls().len();
    let again = c.execute(tcc("done", &[&ok])).await.unwrap();
    assert!(again.replayed && again.gid == done.gid, "{again:?}");
    assert_eq!(again.status(), pb::Status::Succeeded);
    let again = c.execute(tcc("refused", &[&ok, &no])).await.unwrap();
    assert!(again.replayed && again.gid == refused.gid, "{again:?}");
    assert_eq!(again.status(), pb::Status::Failed);
    assert!(
        again.reason.contains("insufficient_funds"),
        "{}",
        again.reason
    );
    assert_eq!(
        ok.calls().len(),
        tries_before,
        "a replay called a participant"
    );
    // What an operator reads: the ended keyed one without its details, the unkeyed one gone.
    let shown = c.get(done.gid).await;
    assert_eq!(shown.status(), pb::Status::Succeeded);
    assert!(shown.branches.is_empty());
    let read = c.detail(done.gid).await;
    assert_eq!(read["details_purged"], true, "{read}");
    assert_eq!(read["status"], "succeeded", "{read}");
    let gone = c
        .operator
        .clone()
        .get(pb::GetRequest {
            gid: unkeyed_first.gid,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_that_cannot_work_is_refused_at_start_with_a_clear_message() {
    let dir = testkit::temp_dir("coord-config-");
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "lease_ms = [not toml").unwrap();
    let missing = dir.path().join("missing.toml");
    // Production wants provided certificates: these stand in for them.
    let pki = trust::dev::issue(testkit::pki_dir(), "coordinator").unwrap();
    let no_certs = dir.path().join("no-certs");
    let production = [
        ("PRODUCTION", "true".to_owned()),
        (
            "COORDINATOR_PARTICIPANTS__P",
            "http://127.0.0.1:1".to_owned(),
        ),
        (
            "COORDINATOR_ADMIN_TOKEN",
            "t".repeat(host::serve::MIN_PRODUCTION_TOKEN),
        ),
        ("COORDINATOR_TLS__CA_FILE", pki.ca.display().to_string()),
        ("COORDINATOR_TLS__CERT_FILE", pki.cert.display().to_string()),
        ("COORDINATOR_TLS__KEY_FILE", pki.key.display().to_string()),
    ];
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("CONFIG_FILE", missing.display().to_string())],
            "missing.toml",
        ),
        (
            vec![("CONFIG_FILE", bad_toml.display().to_string())],
            "bad.toml",
        ),
        (vec![("COORDINATOR_NODE_ID", "1024".into())], "node_id"),
        (
            vec![("COORDINATOR_FAILPOINT", "after_lunch".into())],
            "COORDINATOR_FAILPOINT",
        ),
        (
            vec![("COORDINATOR_PARTICIPANTS__P", "ftp://x".into())],
            "participants",
        ),
        (
            production
                .iter()
                .filter(|(k, _)| *k != "COORDINATOR_PARTICIPANTS__P")
                .cloned()
                .collect(),
            "participants must be configured in production mode",
        ),
        (
            production
                .iter()
                .cloned()
                .chain([(
                    "COORDINATOR_ADMIN_TOKEN",
                    "a-token-of-31-characters-------".into(),
                )])
                .collect(),
            "admin_token must be at least 32 characters in production mode",
        ),
        (
            production
                .iter()
                .cloned()
                .chain([("COORDINATOR_FAILPOINT", "after_decision".into())])
                .collect(),
            "failpoints are refused in production mode",
        ),
        (
            production
                .iter()
                .cloned()
                .chain([("COORDINATOR_DB__SYNCHRONOUS", "off".into())])
                .collect(),
            "synchronous = off is refused in production mode",
        ),
        (
            production
                .iter()
                .cloned()
                .chain([("COORDINATOR_LEASE_MSEC", "5000".into())])
                .collect(),
            "unknown configuration key lease_msec (env COORDINATOR_LEASE_MSEC)",
        ),
        (
            production
                .iter()
                .filter(|(k, _)| !k.starts_with("COORDINATOR_TLS__"))
                .cloned()
                .chain([("COORDINATOR_TLS__DIR", no_certs.display().to_string())])
                .collect(),
            "tls: production mode needs provided certificates",
        ),
        (
            // The issuing folder: it holds the CA's key.
            production
                .iter()
                .filter(|(k, _)| !k.starts_with("COORDINATOR_TLS__"))
                .cloned()
                .collect(),
            "tls: the CA's private key is in",
        ),
        (
            production
                .iter()
                .cloned()
                .chain([("COORDINATOR_TLS__MODE", "off".into())])
                .collect(),
            "tls: mode = off is refused in production mode",
        ),
        (
            production
                .iter()
                .filter(|(k, _)| *k != "COORDINATOR_TLS__KEY_FILE")
                .cloned()
                .collect(),
            "key_file is missing",
        ),
    ];
    for (i, (env, expected)) in cases.into_iter().enumerate() {
        let db = TestDb::sqlite();
        let name = format!("coordinator-{i}");
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (spec, ..) = coordinator_spec(&db, dir.path(), &name, &env);
        let refused = Service::start(spec).await.unwrap_err().to_string();
        assert!(refused.contains("exited with"), "{env:?}: {refused}");
        assert!(refused.contains(expected), "{env:?}: {refused}");
    }
}
