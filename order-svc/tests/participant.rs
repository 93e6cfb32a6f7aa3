//! order-svc as the coordinator sees it: the real binary over gRPC, on a SQLite file and on
//! PostgreSQL.
use prost::Message;
use proto::pay::v1::{OrderBranch, RefundStage, RefundStep};
use proto::v1::{Op, Outcome};
use testkit::participant::ParticipantProcess;
use testkit::{both_backends, TestDb};

async fn orders(db: &TestDb, dir: &std::path::Path) -> ParticipantProcess {
    ParticipantProcess::start(
        "order-svc",
        env!("CARGO_BIN_EXE_order-svc").as_ref(),
        "ORDER_",
        db,
        dir,
    )
    .await
}

fn order(order_id: u64) -> Vec<u8> {
    OrderBranch {
        order_id,
        user_id: "alice".into(),
        sku: "SKU-1".into(),
        quantity: 2,
        amount: 1998,
        refund: None,
    }
    .encode_to_vec()
}

fn refund_step(order_id: u64, refund_id: u64, quantity: i64, stage: RefundStage) -> Vec<u8> {
    OrderBranch {
        order_id,
        user_id: "alice".into(),
        sku: "SKU-1".into(),
        quantity: 2,
        amount: 1998,
        refund: Some(RefundStep {
            refund_id,
            quantity,
            amount: 999 * quantity,
            stage: stage as i32,
        }),
    }
    .encode_to_vec()
}

async fn status(p: &ParticipantProcess, order_id: u64) -> Option<String> {
    let (code, body) = p
        .admin_raw(
            reqwest::Method::GET,
            &format!("/admin/orders/{order_id}"),
            None,
        )
        .await;
    (code == 200).then(|| body["status"].as_str().unwrap().to_owned())
}

async fn ok(p: &ParticipantProcess, gid: u64, op: Op, payload: &[u8]) {
    let r = p.call(gid, "order", op, payload).await.unwrap();
    assert_eq!(
        r.outcome(),
        Outcome::Success,
        "gid {gid} {op:?}: {} {}",
        r.code,
        r.message
    );
}

async fn an_order_goes_pending_then_confirmed_or_cancelled_once_whatever_the_replays(db: TestDb) {
    let dir = testkit::temp_dir("order-");
    let p = orders(&db, dir.path()).await;
    ok(&p, 1, Op::Try, &order(11)).await;
    ok(&p, 1, Op::Try, &order(11)).await;
    assert_eq!(status(&p, 11).await.as_deref(), Some("PENDING"));
    ok(&p, 1, Op::Confirm, &order(11)).await;
    ok(&p, 1, Op::Confirm, &order(11)).await;
    assert_eq!(status(&p, 11).await.as_deref(), Some("CONFIRMED"));

    ok(&p, 2, Op::Try, &order(12)).await;
    ok(&p, 2, Op::Cancel, &order(12)).await;
    ok(&p, 2, Op::Cancel, &order(12)).await;
    assert_eq!(status(&p, 12).await.as_deref(), Some("CANCELLED"));
    let listed = p.admin_get("/admin/orders?user_id=alice").await;
    assert_eq!(listed["orders"].as_array().unwrap().len(), 2);
    assert_eq!(
        listed["orders"][0]["id"], "12",
        "newest first, ids as strings"
    );
    let audit = p.admin_get("/admin/audit").await;
    assert_eq!(
        (
            audit["confirmed"].as_i64(),
            audit["cancelled"].as_i64(),
            audit["pending"].as_i64()
        ),
        (Some(1), Some(1), Some(0))
    );
}

async fn a_cancel_before_its_try_stores_the_order_cancelled_and_the_late_try_does_nothing(
    db: TestDb,
) {
    let dir = testkit::temp_dir("order-");
    let p = orders(&db, dir.path()).await;
    ok(&p, 3, Op::Cancel, &order(13)).await;
    assert_eq!(status(&p, 13).await.as_deref(), Some("CANCELLED"));
    let late = p.call(3, "order", Op::Try, &order(13)).await.unwrap();
    assert_eq!(
        (late.outcome(), late.code.as_str()),
        (Outcome::Failure, "cancelled")
    );
    assert_eq!(status(&p, 13).await.as_deref(), Some("CANCELLED"));
    // Saga: compensate before action, then the ordinary order.
    ok(&p, 4, Op::Compensate, &order(14)).await;
    assert_eq!(
        p.call(4, "order", Op::Action, &order(14))
            .await
            .unwrap()
            .outcome(),
        Outcome::Failure
    );
    assert_eq!(status(&p, 14).await.as_deref(), Some("CANCELLED"));
    ok(&p, 5, Op::Action, &order(15)).await;
    assert_eq!(status(&p, 15).await.as_deref(), Some("CONFIRMED"));
    ok(&p, 5, Op::Compensate, &order(15)).await;
    assert_eq!(status(&p, 15).await.as_deref(), Some("CANCELLED"));
}

async fn bad_input_and_a_reused_order_id_are_rejected(db: TestDb) {
    let dir = testkit::temp_dir("order-");
    let p = orders(&db, dir.path()).await;
    ok(&p, 6, Op::Try, &order(16)).await;
    let again = p.call(7, "order", Op::Try, &order(16)).await.unwrap();
    assert_eq!(
        (again.outcome(), again.code.as_str()),
        (Outcome::Failure, "order_exists")
    );
    let zero = p.call(8, "order", Op::Try, &order(0)).await.unwrap();
    assert_eq!(
        (zero.outcome(), zero.code.as_str()),
        (Outcome::Failure, "invalid")
    );
    assert_eq!(
        p.call(9, "order", Op::Confirm, &order(99))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );
    let (code, _) = p
        .admin_raw(reqwest::Method::GET, "/admin/orders/abc", None)
        .await;
    assert_eq!(code, 400);
    let (code, _) = p
        .admin_raw(reqwest::Method::GET, "/admin/orders?status=LOST", None)
        .await;
    assert_eq!(code, 400);
}

async fn a_sigkill_during_a_stream_of_tries_and_confirms_loses_and_doubles_nothing(db: TestDb) {
    let dir = testkit::temp_dir("order-");
    let mut p = orders(&db, dir.path()).await;
    let replayed = testkit::participant::stream_with_crashes(
        &mut p,
        120,
        "order",
        [Op::Try, Op::Confirm],
        |gid| order(1000 + gid),
        2,
    )
    .await;
    assert!(
        replayed > 0,
        "some calls must have gone unanswered and been replayed"
    );
    let audit = p.admin_get("/admin/audit").await;
    assert_eq!(
        (
            audit["confirmed"].as_i64(),
            audit["pending"].as_i64(),
            audit["cancelled"].as_i64()
        ),
        (Some(120), Some(0), Some(0))
    );
}

/// A refund's first step takes only a confirmed order, once; its compensation puts it back to
/// CONFIRMED (and a new refund may start); its last step makes it REFUNDED, after which no
/// refund starts again.
async fn a_refund_moves_a_confirmed_order_once_and_its_compensation_restores_it(db: TestDb) {
    let dir = testkit::temp_dir("order-");
    let p = orders(&db, dir.path()).await;
    ok(&p, 1, Op::Try, &order(21)).await;
    // Not confirmed yet: a refund's start is refused (retry once it settles).
    let early = p
        .call(
            2,
            "refund",
            Op::Action,
            &refund_step(21, 900, 1, RefundStage::Start),
        )
        .await
        .unwrap();
    assert_eq!(
        (early.outcome(), early.code.as_str()),
        (Outcome::Failure, "order_settling")
    );
    ok(&p, 1, Op::Confirm, &order(21)).await;
    let call = |gid: u64, branch: &'static str, op: Op, payload: Vec<u8>| {
        let p = &p;
        async move { p.call(gid, branch, op, &payload).await.unwrap() }
    };
    // Refund 900 (one item) starts, twice (a replay), then is compensated, twice.
    for _ in 0..2 {
        let r = call(
            3,
            "refund",
            Op::Action,
            refund_step(21, 900, 1, RefundStage::Start),
        )
        .await;
        assert_eq!(r.outcome(), Outcome::Success, "{}", r.message);
    }
    assert_eq!(status(&p, 21).await.as_deref(), Some("REFUNDING"));
    // A second refund while the first is under way is refused.
    let twin = call(
        4,
        "refund",
        Op::Action,
        refund_step(21, 901, 1, RefundStage::Start),
    )
    .await;
    assert_eq!(
        (twin.outcome(), twin.code.as_str()),
        (Outcome::Failure, "refund_in_progress")
    );
    for _ in 0..2 {
        let r = call(
            3,
            "refund",
            Op::Compensate,
            refund_step(21, 900, 1, RefundStage::Start),
        )
        .await;
        assert_eq!(r.outcome(), Outcome::Success, "{}", r.message);
    }
    assert_eq!(status(&p, 21).await.as_deref(), Some("CONFIRMED"));
    // Refund 902 of both items goes through.
    for stage in [RefundStage::Start, RefundStage::Finish] {
        let branch = if stage == RefundStage::Start {
            "refund"
        } else {
            "refunded"
        };
        let r = call(5, branch, Op::Action, refund_step(21, 902, 2, stage)).await;
        assert_eq!(r.outcome(), Outcome::Success, "{}", r.message);
    }
    assert_eq!(status(&p, 21).await.as_deref(), Some("REFUNDED"));
    let again = call(
        6,
        "refund",
        Op::Action,
        refund_step(21, 903, 1, RefundStage::Start),
    )
    .await;
    assert_eq!(
        (again.outcome(), again.code.as_str()),
        (Outcome::Failure, "already_refunded")
    );
    // More items than the order has, and a TCC op on a refund step, are invalid.
    let too_many = call(
        7,
        "refund",
        Op::Action,
        refund_step(21, 904, 3, RefundStage::Start),
    )
    .await;
    assert_eq!(too_many.code, "invalid");
    let tcc = call(
        8,
        "refund",
        Op::Try,
        refund_step(21, 905, 1, RefundStage::Start),
    )
    .await;
    assert_eq!(tcc.code, "invalid");
    // Every refund that was started or refused has a row saying how it ended; a refund whose
    // start never arrived is stored FAILED by its null compensation.
    let r = call(
        9,
        "refund",
        Op::Compensate,
        refund_step(21, 906, 1, RefundStage::Start),
    )
    .await;
    assert_eq!(r.outcome(), Outcome::Success, "{}", r.message);
    let refunds = p.admin_get("/admin/refunds").await;
    let by_id: std::collections::HashMap<String, String> = refunds["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(by_id["900"], "FAILED");
    assert_eq!(by_id["902"], "REFUNDED");
    assert_eq!(by_id["906"], "FAILED");
    assert!(!by_id.contains_key("901"), "a refused start leaves nothing");
    let audit = p.admin_get("/admin/audit").await;
    assert_eq!(
        (
            audit["refunded"].as_i64(),
            audit["refunds_done"].as_i64(),
            audit["refunds_failed"].as_i64()
        ),
        (Some(1), Some(1), Some(2))
    );
}

both_backends!(
    a_refund_moves_a_confirmed_order_once_and_its_compensation_restores_it,
    an_order_goes_pending_then_confirmed_or_cancelled_once_whatever_the_replays,
    a_cancel_before_its_try_stores_the_order_cancelled_and_the_late_try_does_nothing,
    bad_input_and_a_reused_order_id_are_rejected,
    a_sigkill_during_a_stream_of_tries_and_confirms_loses_and_doubles_nothing,
);
