//! inventory-svc as the coordinator sees it: the real binary over gRPC, on a SQLite file and on
//! PostgreSQL.
use futures::future::join_all;
use prost::Message;
use proto::pay::v1::{InventoryBranch, StockStep};
use proto::v1::{Op, Outcome};
use reqwest::Method;
use serde_json::json;
use std::sync::Arc;
use testkit::participant::ParticipantProcess;
use testkit::{both_backends, TestDb};

async fn inventory(db: &TestDb, dir: &std::path::Path) -> ParticipantProcess {
    ParticipantProcess::start(
        "inventory-svc",
        env!("CARGO_BIN_EXE_inventory-svc").as_ref(),
        "INVENTORY_",
        db,
        dir,
    )
    .await
}

fn pick(sku: &str, quantity: i64) -> Vec<u8> {
    InventoryBranch {
        sku: sku.into(),
        quantity,
        refund: None,
    }
    .encode_to_vec()
}

/// A refund's step, as order-svc sends it.
fn step(sku: &str, quantity: i64, step: StockStep) -> Vec<u8> {
    InventoryBranch {
        refund: Some(proto::pay::v1::RefundItems {
            sku: sku.into(),
            quantity,
            step: step as i32,
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

async fn seed(p: &ParticipantProcess, sku: &str, available: i64) {
    p.admin(
        Method::PUT,
        &format!("/admin/skus/{sku}"),
        Some(json!({ "available": available })),
    )
    .await;
}

/// (available, reserved, sold)
async fn stock(p: &ParticipantProcess, sku: &str) -> (i64, i64, i64) {
    let s = p.admin_get(&format!("/admin/skus/{sku}")).await;
    (
        s["available"].as_i64().unwrap(),
        s["reserved"].as_i64().unwrap(),
        s["sold"].as_i64().unwrap(),
    )
}

async fn assert_consistent(p: &ParticipantProcess) -> serde_json::Value {
    let audit = p.admin_get("/admin/audit").await;
    assert_eq!(audit["consistent"], json!(true), "audit: {audit}");
    audit
}

async fn ok(p: &ParticipantProcess, gid: u64, op: Op, payload: &[u8]) {
    let r = p.call(gid, "stock", op, payload).await.unwrap();
    assert_eq!(
        r.outcome(),
        Outcome::Success,
        "gid {gid} {op:?}: {} {}",
        r.code,
        r.message
    );
}

async fn duplicated_try_confirm_and_cancel_change_nothing_the_second_time(db: TestDb) {
    let dir = testkit::temp_dir("inventory-");
    let p = inventory(&db, dir.path()).await;
    seed(&p, "SKU-1", 10).await;
    for op in [Op::Try, Op::Try, Op::Confirm, Op::Confirm] {
        ok(&p, 1, op, &pick("SKU-1", 3)).await;
    }
    assert_eq!(stock(&p, "SKU-1").await, (7, 0, 3));
    for op in [Op::Try, Op::Cancel, Op::Cancel, Op::Try] {
        ok(&p, 2, op, &pick("SKU-1", 4)).await;
    }
    assert_eq!(stock(&p, "SKU-1").await, (7, 0, 3));
    assert_eq!(
        p.admin_get("/admin/reservations/2").await["reservations"][0]["status"],
        "released"
    );
    assert_consistent(&p).await;
}

async fn a_cancel_before_its_try_and_a_compensate_before_its_action_make_the_late_ones_do_nothing(
    db: TestDb,
) {
    let dir = testkit::temp_dir("inventory-");
    let p = inventory(&db, dir.path()).await;
    seed(&p, "SKU-1", 10).await;
    ok(&p, 5, Op::Cancel, &pick("SKU-1", 4)).await;
    let late = p
        .call(5, "stock", Op::Try, &pick("SKU-1", 4))
        .await
        .unwrap();
    assert_eq!(
        (late.outcome(), late.code.as_str()),
        (Outcome::Failure, "cancelled")
    );
    ok(&p, 6, Op::Compensate, &pick("SKU-1", 4)).await;
    let late = p
        .call(6, "stock", Op::Action, &pick("SKU-1", 4))
        .await
        .unwrap();
    assert_eq!(
        (late.outcome(), late.code.as_str()),
        (Outcome::Failure, "cancelled")
    );
    assert_eq!(stock(&p, "SKU-1").await, (10, 0, 0));
    for op in [Op::Action, Op::Action] {
        ok(&p, 7, op, &pick("SKU-1", 2)).await;
    }
    assert_eq!(stock(&p, "SKU-1").await, (8, 0, 2));
    for op in [Op::Compensate, Op::Compensate] {
        ok(&p, 7, op, &pick("SKU-1", 2)).await;
    }
    assert_eq!(stock(&p, "SKU-1").await, (10, 0, 0));
    assert_consistent(&p).await;
}

async fn two_hundred_concurrent_tries_against_stock_for_fifty_give_exactly_fifty_successes(
    db: TestDb,
) {
    let dir = testkit::temp_dir("inventory-");
    let p = Arc::new(inventory(&db, dir.path()).await);
    seed(&p, "SKU-1", 50).await;
    let calls = (1..=200u64).map(|gid| {
        let p = p.clone();
        tokio::spawn(async move {
            p.call(gid, "stock", Op::Try, &pick("SKU-1", 1))
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
    let out = answers
        .iter()
        .filter(|r| r.outcome() == Outcome::Failure && r.code == "out_of_stock")
        .count();
    assert_eq!((ok, out), (50, 150));
    assert_eq!(stock(&p, "SKU-1").await, (0, 50, 0));
    assert_consistent(&p).await;
}

async fn bad_input_is_a_failure_on_try_and_invalid_argument_on_second_phase_ops(db: TestDb) {
    let dir = testkit::temp_dir("inventory-");
    let p = inventory(&db, dir.path()).await;
    seed(&p, "SKU-1", 5).await;
    let cases = [
        (pick("SKU-1", 0), "invalid"),
        (pick("SKU-1", -1), "invalid"),
        (pick("SKU-1", i64::MAX), "invalid"),
        (pick("SKU-1", 6), "out_of_stock"),
        (pick("NOPE", 1), "unknown_sku"),
        (pick("bad sku", 1), "invalid"),
        (vec![0x0a, 0xff], "invalid"),
    ];
    for (gid, (payload, code)) in (100u64..).zip(cases) {
        let r = p.call(gid, "stock", Op::Try, &payload).await.unwrap();
        assert_eq!(
            (r.outcome(), r.code.as_str()),
            (Outcome::Failure, code),
            "gid {gid}: {}",
            r.message
        );
    }
    assert_eq!(
        p.call(200, "stock", Op::Cancel, &[0xff])
            .await
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        p.call(201, "stock", Op::Confirm, &pick("SKU-1", 1))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );
    let (status, _) = p
        .admin_raw(
            Method::POST,
            "/admin/skus/SKU-1/restocks",
            Some(json!({"quantity": 0})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(stock(&p, "SKU-1").await, (5, 0, 0));
    assert_consistent(&p).await;
}

async fn a_sigkill_during_a_stream_of_tries_and_confirms_loses_and_doubles_nothing(db: TestDb) {
    let dir = testkit::temp_dir("inventory-");
    let mut p = inventory(&db, dir.path()).await;
    seed(&p, "SKU-1", 10_000).await;
    let replayed = testkit::participant::stream_with_crashes(
        &mut p,
        120,
        "stock",
        [Op::Try, Op::Confirm],
        |_| pick("SKU-1", 2),
        2,
    )
    .await;
    assert!(
        replayed > 0,
        "some calls must have gone unanswered and been replayed"
    );
    assert_eq!(stock(&p, "SKU-1").await, (10_000 - 240, 0, 240));
    assert_consistent(&p).await;
}

/// A refund's items come back held (`reserved`, out of sale) and go on sale only at its restock;
/// a compensated refund sells its held items again, even when the shelf was emptied meanwhile.
async fn a_refund_holds_returned_items_until_its_restock_and_its_compensation_never_lacks_stock(
    db: TestDb,
) {
    let dir = testkit::temp_dir("inventory-");
    let p = inventory(&db, dir.path()).await;
    seed(&p, "SKU-1", 10).await;
    ok(&p, 1, Op::Try, &pick("SKU-1", 4)).await;
    ok(&p, 1, Op::Confirm, &pick("SKU-1", 4)).await;
    assert_eq!(stock(&p, "SKU-1").await, (6, 0, 4));
    // Refund 3 of them: returned (twice: a replay), held, then restocked by its own branch.
    let (ret, restock) = (
        step("SKU-1", 3, StockStep::Return),
        step("SKU-1", 3, StockStep::Restock),
    );
    for _ in 0..2 {
        ok(&p, 2, Op::Action, &ret).await;
    }
    assert_eq!(stock(&p, "SKU-1").await, (6, 3, 1), "held, not on sale");
    let call = |branch: &'static str, op: Op, payload: Vec<u8>| {
        let p = &p;
        async move {
            let r = p.call(2, branch, op, &payload).await.unwrap();
            assert_eq!(
                r.outcome(),
                Outcome::Success,
                "{branch} {op:?}: {}",
                r.message
            );
        }
    };
    // A restock of another quantity than the return's moves nothing.
    let other = p
        .call(
            2,
            "restock",
            Op::Action,
            &step("SKU-1", 2, StockStep::Restock),
        )
        .await
        .unwrap();
    assert_eq!(
        (other.outcome(), other.code.as_str()),
        (Outcome::Failure, "no_reservation")
    );
    call("restock", Op::Action, restock.clone()).await;
    call("restock", Op::Action, restock.clone()).await;
    assert_eq!(stock(&p, "SKU-1").await, (9, 0, 1), "back on sale once");
    // An inventory-svc from before refunds reads a refund's step as an empty order (fields 1
    // and 2 are left empty): refused as invalid, never taken as an order's items.
    let before_refunds = InventoryBranch {
        sku: String::new(),
        quantity: 0,
        refund: None,
    };
    let seen = InventoryBranch::decode(ret.as_slice()).unwrap();
    assert_eq!((seen.sku.as_str(), seen.quantity), ("", 0));
    let r = p
        .call(5, "inventory", Op::Action, &before_refunds.encode_to_vec())
        .await
        .unwrap();
    assert_eq!(
        (r.outcome(), r.code.as_str()),
        (Outcome::Failure, "invalid")
    );
    assert_consistent(&p).await;

    // A refund that fails: its items were returned, then someone buys everything on the shelf.
    // The compensation sells the held items again: nothing is short, nothing goes negative.
    ok(&p, 3, Op::Action, &step("SKU-1", 1, StockStep::Return)).await;
    assert_eq!(stock(&p, "SKU-1").await, (9, 1, 0));
    ok(&p, 4, Op::Action, &pick("SKU-1", 9)).await;
    assert_eq!(stock(&p, "SKU-1").await, (0, 1, 9));
    let r = p
        .call(
            3,
            "restock",
            Op::Compensate,
            &step("SKU-1", 1, StockStep::Restock),
        )
        .await
        .unwrap();
    assert_eq!(
        r.outcome(),
        Outcome::Success,
        "a null compensation: {}",
        r.message
    );
    for _ in 0..2 {
        ok(&p, 3, Op::Compensate, &step("SKU-1", 1, StockStep::Return)).await;
    }
    assert_eq!(stock(&p, "SKU-1").await, (0, 0, 10));
    // The restock that arrives late does nothing (the barrier), and a TCC op on a refund step
    // is refused.
    let late = p
        .call(
            3,
            "restock",
            Op::Action,
            &step("SKU-1", 1, StockStep::Restock),
        )
        .await
        .unwrap();
    assert_eq!(late.outcome(), Outcome::Failure);
    assert_eq!(stock(&p, "SKU-1").await, (0, 0, 10));
    let tcc = p
        .call(5, "stock", Op::Try, &step("SKU-1", 1, StockStep::Return))
        .await
        .unwrap();
    assert_eq!(
        (tcc.outcome(), tcc.code.as_str()),
        (Outcome::Failure, "invalid")
    );
    let audit = assert_consistent(&p).await;
    assert_eq!(audit["held"], json!(0));
}

/// Tries of one SKU in one batch move its counts once for all of them, and Confirms and Cancels
/// (of one SKU or several) once per SKU: every answer is the one a lone call would get (the
/// first order the stock cannot cover is refused, a smaller one after it is not), and the
/// counts end where lone calls would have left them.
async fn a_batch_moves_each_sku_once_and_answers_each_item_as_alone(db: TestDb) {
    let dir = testkit::temp_dir("inventory-");
    let p = inventory(&db, dir.path()).await;
    seed(&p, "tea", 10).await;
    seed(&p, "mug", 5).await;
    let answers =
        |r: Vec<Result<proto::v1::BranchResponse, tonic::Status>>| -> Vec<(Outcome, String)> {
            r.into_iter()
                .map(|r| {
                    let r = r.unwrap();
                    (r.outcome(), r.code)
                })
                .collect()
        };
    let ok = || (Outcome::Success, String::new());
    let picks = [
        (1, pick("tea", 3)),
        (2, pick("tea", 4)),
        // 7 of 10 taken: 5 more do not fit, 2 more do.
        (3, pick("tea", 5)),
        (4, pick("tea", 2)),
        (5, pick("mug", 5)),
        (6, pick("mug", 1)),
    ];
    let batch = |gids: std::ops::RangeInclusive<u64>, op: Op| -> Vec<(u64, &str, Op, &[u8])> {
        picks
            .iter()
            .filter(|(gid, _)| gids.contains(gid))
            .map(|(gid, payload)| (*gid, "stock", op, payload.as_slice()))
            .collect()
    };
    // One SKU's Tries (together, then as alone once one is refused), then another's.
    assert_eq!(
        answers(p.api.batch(&batch(1..=4, Op::Try)).await.unwrap()),
        [ok(), ok(), (Outcome::Failure, "out_of_stock".into()), ok()]
    );
    assert_eq!(
        answers(p.api.batch(&batch(5..=6, Op::Try)).await.unwrap()),
        [ok(), (Outcome::Failure, "out_of_stock".into())]
    );
    assert_eq!(stock(&p, "tea").await, (1, 9, 0));
    assert_eq!(stock(&p, "mug").await, (0, 5, 0));
    assert_consistent(&p).await;
    // Confirms of two SKUs in one batch, a Cancel batch; each twice (duplicates the second time).
    let confirms: Vec<_> = batch(1..=5, Op::Confirm)
        .into_iter()
        .filter(|(gid, ..)| [1, 5].contains(gid))
        .collect();
    let cancels: Vec<_> = batch(2..=4, Op::Cancel)
        .into_iter()
        .filter(|(gid, ..)| [2, 4].contains(gid))
        .collect();
    for _ in 0..2 {
        assert_eq!(answers(p.api.batch(&confirms).await.unwrap()), [ok(), ok()]);
        assert_eq!(answers(p.api.batch(&cancels).await.unwrap()), [ok(), ok()]);
    }
    assert_eq!(stock(&p, "tea").await, (7, 0, 3));
    assert_eq!(stock(&p, "mug").await, (0, 0, 5));
    assert_consistent(&p).await;
}

both_backends!(
    a_batch_moves_each_sku_once_and_answers_each_item_as_alone,
    a_refund_holds_returned_items_until_its_restock_and_its_compensation_never_lacks_stock,
    duplicated_try_confirm_and_cancel_change_nothing_the_second_time,
    a_cancel_before_its_try_and_a_compensate_before_its_action_make_the_late_ones_do_nothing,
    two_hundred_concurrent_tries_against_stock_for_fifty_give_exactly_fifty_successes,
    bad_input_is_a_failure_on_try_and_invalid_argument_on_second_phase_ops,
    a_sigkill_during_a_stream_of_tries_and_confirms_loses_and_doubles_nothing,
);
