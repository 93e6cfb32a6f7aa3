//! End to end: the four services as real processes (`platform serve <service>`), each with its
//! own database (SQLite files, or PostgreSQL databases), orders through the public API, and
//! docs/design.md §5's invariants checked across the four databases at the end of every test.
use futures::future::join_all;
use order_svc::auth::{Authenticator, JwtConfig};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use testkit::{both_backends, TestDb};

const ADMIN: &str = "e2e-admin-token-0123456789";
const JWT_SECRET: &str = "e2e-jwt-secret-0123456789-0123456789";

/// The test platform (four services, their databases and folder), with a client and the seed.
struct Platform {
    services: testkit::platform::Platform,
    http: reqwest::Client,
    admin: admin::Admin,
}

impl std::ops::Deref for Platform {
    type Target = testkit::platform::Platform;
    fn deref(&self) -> &Self::Target {
        &self.services
    }
}

impl std::ops::DerefMut for Platform {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.services
    }
}

impl Platform {
    async fn start(first: TestDb) -> Platform {
        Platform::start_with(first, None).await
    }

    /// `otlp`: an OTLP endpoint every service exports its spans to.
    async fn start_with(first: TestDb, otlp: Option<&str>) -> Platform {
        let mut options = testkit::platform::PlatformOptions::new(ADMIN, JWT_SECRET);
        options.otlp = otlp.map(str::to_owned);
        let services = testkit::platform::Platform::start(
            std::path::Path::new(env!("CARGO_BIN_EXE_platform")),
            first,
            &options,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let platform = Platform {
            admin: admin::Admin::new(&services.endpoints()),
            services,
            http: reqwest::Client::new(),
        };
        platform.seed().await;
        platform
    }

    fn url(&self, service: &str, path: &str) -> String {
        format!("{}{path}", self.urls[service])
    }

    async fn admin(
        &self,
        method: Method,
        service: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, self.url(service, path))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn seed(&self) {
        let seeded = async {
            for (id, cents) in [("alice", 10_000), ("bob", 1_000), ("merchant", 0)] {
                self.admin.payment.open_account(id, cents).await?;
            }
            for (sku, price, stock) in [("coffee", 450, 100), ("vinyl", 9_900, 1)] {
                self.admin.inventory.open_sku(sku, stock).await?;
                self.admin.order.put_catalog_item(sku, sku, price).await?;
            }
            Ok::<_, admin::AdminError>(())
        };
        seeded.await.unwrap_or_else(|e| panic!("seeding: {e}"));
    }

    fn token(user: &str) -> String {
        let config = JwtConfig::default();
        Authenticator::new(JWT_SECRET.as_bytes(), &config).mint(user, Duration::from_secs(600))
    }

    async fn order(&self, user: &str, key: impl Into<String>, body: Value) -> (StatusCode, Value) {
        let key: String = key.into();
        let res = self
            .http
            .post(self.url("order", "/api/v1/orders"))
            .bearer_auth(Self::token(user))
            .header("Idempotency-Key", key.as_str())
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// `POST /api/v1/orders/{id}/refund`; `body` `None` sends no body (a full refund).
    async fn refund(
        &self,
        user: &str,
        key: &str,
        id: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, bool) {
        let mut req = self
            .http
            .post(self.url("order", &format!("/api/v1/orders/{id}/refund")))
            .bearer_auth(Self::token(user))
            .header("Idempotency-Key", key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let replayed = res.headers().contains_key("idempotent-replayed");
        (status, res.json().await.unwrap_or(Value::Null), replayed)
    }

    /// (available, reserved, sold) of `sku`.
    async fn stock(&self, sku: &str) -> (i64, i64, i64) {
        let (_, s) = self
            .admin(
                Method::GET,
                "inventory",
                &format!("/admin/skus/{sku}"),
                None,
            )
            .await;
        (
            s["available"].as_i64().unwrap(),
            s["reserved"].as_i64().unwrap(),
            s["sold"].as_i64().unwrap(),
        )
    }

    async fn get_order(&self, user: &str, id: &str) -> (StatusCode, Value) {
        let res = self
            .http
            .get(self.url("order", &format!("/api/v1/orders/{id}")))
            .bearer_auth(Self::token(user))
            .send()
            .await
            .unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn balance(&self, user: &str) -> i64 {
        let account = self.admin.payment.account(user).await;
        account.unwrap_or_else(|e| panic!("{e}")).available
    }

    /// Waits (up to 30 s) until no transaction is open and no order pending or refunding: an
    /// answer comes once the decision is durable, its second phase may still be running.
    async fn settle(&self) {
        audit::fetch(&self.endpoints(), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("audit: {e}"));
    }

    /// docs/design.md §5, once the system is quiet (waiting up to 30 s): the `audit` crate's checks
    /// across the four services, the same ones `load-tests audit` prints.
    async fn assert_invariants(&self) {
        let report = audit::run(&self.endpoints(), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("audit: {e}"));
        assert!(report.ok, "{report}");
    }
}

async fn an_order_is_confirmed_and_reads_back_for_its_owner_only(db: TestDb) {
    let p = Platform::start(db).await;
    let (status, body) = p
        .order("alice", "k1", json!({"sku": "coffee", "quantity": 2}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "confirmed");
    assert_eq!(body["amount"], 900);
    let id = body["order_id"].as_str().unwrap().to_owned();
    p.assert_invariants().await;
    let (status, read) = p.get_order("alice", &id).await;
    assert_eq!(
        (status.as_u16(), read["status"].as_str()),
        (200, Some("confirmed")),
        "{read}"
    );
    let (status, _) = p.get_order("bob", &id).await;
    assert_eq!(status, 404, "bob cannot see alice's order");
    assert_eq!(p.balance("alice").await, 10_000 - 900);
    assert_eq!(p.balance("merchant").await, 900);
}

/// A refund of part of an order: the buyer is paid back at the order's price, the items go back
/// on sale, the order says REFUNDED; the key answers the same for ever, and no second refund
/// happens, whether asked for again later or ten times at once.
async fn a_refund_pays_the_buyer_back_puts_the_items_on_sale_and_happens_once(db: TestDb) {
    let p = Platform::start(db).await;
    let (_, order) = p
        .order("alice", "o1", json!({"sku": "coffee", "quantity": 3}))
        .await;
    assert_eq!(order["status"], "confirmed", "{order}");
    let id = order["order_id"].as_str().unwrap().to_owned();
    p.settle().await;
    assert_eq!(p.stock("coffee").await, (97, 0, 3));

    // Someone else's order is not found; more items than ordered, and a bad body, are refused.
    let (status, body, _) = p.refund("bob", "r0", &id, None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body, _) = p
        .refund("alice", "r0", &id, Some(json!({"quantity": 4})))
        .await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (422, Some("too_many_items"))
    );
    let (status, body, _) = p.refund("alice", "r0", &id, Some(json!({"qty": 1}))).await;
    assert_eq!(status, 400, "{body}");

    let (status, refund, replayed) = p
        .refund("alice", "r1", &id, Some(json!({"quantity": 1})))
        .await;
    assert_eq!(status, 201, "{refund}");
    assert!(!replayed);
    assert_eq!(
        (
            refund["status"].as_str(),
            refund["amount"].as_i64(),
            refund["quantity"].as_i64()
        ),
        (Some("refunded"), Some(450), Some(1)),
        "{refund}"
    );
    // The key answers the same; the same key for another refund is refused.
    let (status, again, replayed) = p
        .refund("alice", "r1", &id, Some(json!({"quantity": 1})))
        .await;
    assert_eq!((status.as_u16(), replayed), (201, true));
    assert_eq!(again, refund);
    let (status, body, _) = p
        .refund("alice", "r1", &id, Some(json!({"quantity": 2})))
        .await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    // "refunded" is the decision (as "confirmed" is an order's): the steps after the point of
    // no return may still be under way (a second refund asked meanwhile is `refund_in_progress`).
    p.settle().await;
    // A second refund of the order is a conflict, however it is asked for.
    let (status, body, _) = p.refund("alice", "r2", &id, None).await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (409, Some("already_refunded"))
    );
    // A JSON `null` body is refused (schemathesis sent one when the document allowed it; it
    // no longer does): on a route that moves money, only what the document allows.
    let (status, body, _) = p.refund("alice", "r2-null", &id, Some(Value::Null)).await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (400, Some("bad_request"))
    );
    // A body beyond the limit is a 413 problem, not actix's plain text.
    let big = p
        .http
        .post(p.url("order", &format!("/api/v1/orders/{id}/refund")))
        .bearer_auth(Platform::token("alice"))
        .header("Idempotency-Key", "r2-big")
        .header("content-type", "application/json")
        .body(" ".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert_eq!(big.headers()["content-type"], "application/problem+json");
    let (_, read) = p.get_order("alice", &id).await;
    assert_eq!(read["status"], "refunded", "{read}");
    assert_eq!(read["refund"]["status"], "refunded", "{read}");
    assert_eq!(p.balance("alice").await, 10_000 - 1_350 + 450);
    assert_eq!(p.balance("merchant").await, 900);
    assert_eq!(p.stock("coffee").await, (98, 0, 2));

    // The refund is a Saga of six branches: payment and inventory after the order's first step,
    // the last three after both, past the point of no return (retriable).
    let gid = refund["gid"].as_str().unwrap();
    let (_, txn) = p
        .admin(
            Method::GET,
            "coordinator",
            &format!("/api/v1/transactions/{gid}"),
            None,
        )
        .await;
    assert_eq!(
        (txn["mode"].as_str(), txn["status"].as_str()),
        (Some("saga"), Some("succeeded"))
    );
    let deps: Vec<(String, Vec<String>, bool)> = txn["branches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["branch_id"].as_str().unwrap().to_owned(),
                serde_json::from_value(b["depends_on"].clone()).unwrap(),
                b["retriable"].as_bool().unwrap(),
            )
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        deps,
        vec![
            ("refund".into(), s(&[]), false),
            ("payment".into(), s(&["refund"]), false),
            ("inventory".into(), s(&["refund"]), false),
            ("restock".into(), s(&["payment", "inventory"]), true),
            ("refunded".into(), s(&["payment", "inventory"]), true),
            ("release".into(), s(&["payment", "inventory"]), true),
        ]
    );

    // A cancelled order is not refundable.
    let (_, cancelled) = p
        .order("bob", "o2", json!({"sku": "coffee", "quantity": 3}))
        .await;
    assert_eq!(cancelled["status"], "cancelled");
    p.settle().await;
    let (status, body, _) = p
        .refund("bob", "r3", cancelled["order_id"].as_str().unwrap(), None)
        .await;
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (409, Some("not_refundable"))
    );

    // Ten refunds of one order at once, each with its own key: exactly one happens.
    let (_, second) = p
        .order("alice", "o3", json!({"sku": "coffee", "quantity": 2}))
        .await;
    let second = second["order_id"].as_str().unwrap().to_owned();
    p.settle().await;
    let answers = join_all((0..10).map(|i| {
        let (p, second) = (&p, &second);
        async move { p.refund("alice", &format!("race-{i}"), second, None).await }
    }))
    .await;
    let refunded = answers
        .iter()
        .filter(|(s, b, _)| *s == 201 && b["status"] == "refunded")
        .count();
    let conflicts = answers
        .iter()
        .filter(|(s, b, _)| {
            *s == 409
                && matches!(
                    b["code"].as_str(),
                    Some("refund_in_progress" | "already_refunded")
                )
        })
        .count();
    assert_eq!(
        (refunded, conflicts),
        (1, 9),
        "{:?}",
        answers.iter().map(|(s, b, _)| (s, b)).collect::<Vec<_>>()
    );
    p.settle().await;
    // Every refund the race refused is FAILED with its reason, also when its row came from the
    // null compensation of a first step that never committed.
    let (_, listed) = p.admin(Method::GET, "order", "/admin/refunds", None).await;
    let failed: Vec<&serde_json::Value> = listed["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["order_id"].as_str() == Some(second.as_str()) && r["status"] == "FAILED")
        .collect();
    for r in &failed {
        assert!(
            matches!(
                r["reason"].as_str(),
                Some("refund_in_progress" | "already_refunded")
            ),
            "{r}"
        );
    }
    // A refusal is about the order then, not the key's answer for good: each key asks afresh,
    // and now the order is refunded.
    for (i, (status, _, _)) in answers.iter().enumerate() {
        if *status != 409 {
            continue;
        }
        let (status, body, replayed) = p.refund("alice", &format!("race-{i}"), &second, None).await;
        assert_eq!(
            (status.as_u16(), body["code"].as_str(), replayed),
            (409, Some("already_refunded"), false),
            "race-{i}: {body}"
        );
    }
    assert_eq!(p.balance("alice").await, 10_000 - 1_350 + 450 - 900 + 900);
    assert_eq!(p.stock("coffee").await, (98, 0, 2));
    p.assert_invariants().await;
}

/// A merchant whose balance was paid out cannot pay a refund back: the refund fails with that
/// reason, every step is compensated (the items returned at the same time are sold again), the
/// order is CONFIRMED again, and once the merchant has the money, a new refund goes through.
async fn a_refund_the_merchant_cannot_pay_is_compensated_and_can_be_asked_again(db: TestDb) {
    let p = Platform::start(db).await;
    let (_, order) = p
        .order("alice", "o1", json!({"sku": "coffee", "quantity": 2}))
        .await;
    let id = order["order_id"].as_str().unwrap().to_owned();
    p.settle().await;
    p.admin.payment.payout("merchant", 800).await.unwrap();
    let (status, refund, _) = p.refund("alice", "r1", &id, None).await;
    assert_eq!(status, 201, "{refund}");
    assert_eq!(
        (refund["status"].as_str(), refund["reason"].as_str()),
        (Some("failed"), Some("merchant_insufficient_funds")),
        "{refund}"
    );
    p.settle().await;
    let (_, read) = p.get_order("alice", &id).await;
    assert_eq!(read["status"], "confirmed", "{read}");
    assert_eq!(
        (
            read["refund"]["status"].as_str(),
            read["refund"]["reason"].as_str()
        ),
        (Some("failed"), Some("merchant_insufficient_funds")),
        "{read}"
    );
    assert_eq!(p.balance("alice").await, 10_000 - 900);
    assert_eq!(p.balance("merchant").await, 100);
    assert_eq!(p.stock("coffee").await, (98, 0, 2), "nothing back on sale");
    // Compensated in reverse: every branch's undo ran, the order's first step last.
    let gid = refund["gid"].as_str().unwrap();
    let (_, txn) = p
        .admin(
            Method::GET,
            "coordinator",
            &format!("/api/v1/transactions/{gid}"),
            None,
        )
        .await;
    assert_eq!(txn["status"], "failed", "{txn}");
    assert_eq!(txn["rollback"]["branch_id"], "payment", "{txn}");
    let (_, reservations) = p
        .admin(
            Method::GET,
            "inventory",
            &format!("/admin/reservations/{gid}"),
            None,
        )
        .await;
    for r in reservations["reservations"].as_array().unwrap() {
        assert_eq!(r["status"], "kept", "{reservations}");
    }

    p.admin.payment.deposit("merchant", 1_000).await.unwrap();
    let (status, refund, _) = p.refund("alice", "r2", &id, None).await;
    assert_eq!(
        (status.as_u16(), refund["status"].as_str()),
        (201, Some("refunded")),
        "{refund}"
    );
    p.settle().await;
    assert_eq!(p.balance("alice").await, 10_000);
    assert_eq!(p.balance("merchant").await, 200);
    assert_eq!(p.stock("coffee").await, (100, 0, 0));
    p.assert_invariants().await;
}

async fn insufficient_funds_cancels_and_leaves_balances_unchanged(db: TestDb) {
    let p = Platform::start(db).await;
    let (status, body) = p
        .order("bob", "k1", json!({"sku": "coffee", "quantity": 3}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["reason"].as_str()),
        (Some("cancelled"), Some("insufficient_funds")),
        "{body}"
    );
    p.assert_invariants().await;
    assert_eq!(p.balance("bob").await, 1_000);
    assert_eq!(p.balance("merchant").await, 0);
}

/// Orders at once: their Tries reach payment-svc in batches (one local transaction each), a
/// third of them refused (bob cannot pay for three). Each refusal stays its own order's: the
/// refused orders cancel with `insufficient_funds`, every other one is confirmed, and the
/// books balance.
async fn orders_at_once_have_their_tries_batched_and_each_refusal_stays_its_own(db: TestDb) {
    let p = Platform::start(db).await;
    let placed = join_all((0..18).map(|i| {
        let (user, quantity) = if i % 3 == 0 { ("bob", 3) } else { ("alice", 1) };
        p.order(
            user,
            format!("at-once-{i}"),
            json!({"sku": "coffee", "quantity": quantity}),
        )
    }))
    .await;
    for (i, (status, body)) in placed.iter().enumerate() {
        let expected = if i % 3 == 0 {
            (Some("cancelled"), Some("insufficient_funds"))
        } else {
            (Some("confirmed"), None)
        };
        assert_eq!(status.as_u16(), 201, "{body}");
        assert_eq!(
            (body["status"].as_str(), body["reason"].as_str()),
            expected,
            "order {i}: {body}"
        );
    }
    let first = ["participant=\"payment\"", "phase=\"first\""];
    let tries = metric(&p, "coordinator", "coordinator_batch_branches_sum", &first).await;
    let sends = metric(
        &p,
        "coordinator",
        "coordinator_batch_branches_count",
        &first,
    )
    .await;
    assert_eq!(
        tries, 18.0,
        "every Try went through payment's first-phase queue"
    );
    assert!(
        sends < tries,
        "some of payment's Tries went together: {tries} Tries in {sends} sends"
    );
    p.assert_invariants().await;
    assert_eq!(p.balance("alice").await, 10_000 - 12 * 450);
    assert_eq!(p.balance("bob").await, 1_000);
    assert_eq!(p.balance("merchant").await, 12 * 450);
}

async fn out_of_stock_cancels(db: TestDb) {
    let p = Platform::start(db).await;
    let (_, first) = p
        .order("alice", "k1", json!({"sku": "vinyl", "quantity": 1}))
        .await;
    assert_eq!(first["status"], "confirmed", "{first}");
    // Enough money for a second one: only the stock is short.
    let (s, b) = p
        .admin(
            Method::POST,
            "payment",
            "/admin/accounts/alice/deposits",
            Some(json!({"amount": 20_000})),
        )
        .await;
    assert!(s.is_success(), "{b}");
    let (_, second) = p
        .order("alice", "k2", json!({"sku": "vinyl", "quantity": 1}))
        .await;
    assert_eq!(
        (second["status"].as_str(), second["reason"].as_str()),
        (Some("cancelled"), Some("out_of_stock")),
        "{second}"
    );
    p.assert_invariants().await;
    assert_eq!(p.balance("alice").await, 30_000 - 9_900);
}

/// A 503 ("the coordinator did not answer") is not the key's answer: once the coordinator is
/// back, a retry with the same key places the order (same order id), instead of replaying 503.
async fn a_retry_after_a_503_with_the_same_key_places_the_order(db: TestDb) {
    let mut p = Platform::start(db).await;
    p.coordinator.kill();
    let body = json!({"sku": "coffee", "quantity": 1});
    let (status, first) = p.order("alice", "retry-me", body.clone()).await;
    assert_eq!(status, 503, "{first}");
    assert_eq!(
        first["type"].as_str().map(|t| t.ends_with("unavailable")),
        Some(true),
        "{first}"
    );
    // What to do, and nothing about where the coordinator is or how the call failed.
    assert_eq!(
        first["detail"],
        "the order could not be placed right now; retry with the same Idempotency-Key",
        "{first}"
    );
    p.coordinator.restart().await.unwrap();
    let (status, second) = p.order("alice", "retry-me", body.clone()).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(second["status"], "confirmed", "{second}");
    // And from now on that is the key's answer.
    let (status, third) = p.order("alice", "retry-me", body).await;
    assert_eq!((status.as_u16(), &third), (201, &second));
    assert_eq!(p.balance("alice").await, 10_000 - 450);
    p.assert_invariants().await;
}

/// The coordinator dies right after deciding an order; meanwhile the price changes. The retry
/// with the same key must resend exactly what the first attempt sent (the coordinator would
/// refuse a rebuilt request as "a different request" forever) and answer with the order that
/// was really placed, at the price the buyer was charged.
async fn a_retry_after_the_price_changed_answers_with_the_order_as_first_placed(db: TestDb) {
    let mut p = Platform::start(db).await;
    let normal = p.coordinator.spec().clone();
    p.coordinator.kill();
    let dying = testkit::ServiceSpec {
        env: normal
            .env
            .iter()
            .cloned()
            .chain([("COORDINATOR_FAILPOINT".into(), "after_decision".into())])
            .collect(),
        log_path: p.dir.path().join("coordinator-failpoint.log"),
        ..normal.clone()
    };
    p.coordinator = testkit::Service::start(dying).await.unwrap();
    let body = json!({"sku": "coffee", "quantity": 1});
    let (status, first) = p.order("alice", "price-change", body.clone()).await;
    assert_eq!(
        status, 503,
        "the coordinator died after its decision: {first}"
    );
    let (s, b) = p
        .admin(
            Method::PUT,
            "order",
            "/admin/catalog/coffee",
            Some(json!({"name": "coffee", "price": 500})),
        )
        .await;
    assert!(s.is_success(), "{b}");
    p.coordinator = testkit::Service::start(normal).await.unwrap();
    let (status, second) = p.order("alice", "price-change", body.clone()).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(
        (second["status"].as_str(), second["amount"].as_i64()),
        (Some("confirmed"), Some(450)),
        "{second}"
    );
    let (status, third) = p.order("alice", "price-change", body).await;
    assert_eq!(
        (status.as_u16(), &third),
        (201, &second),
        "the key's answer"
    );
    p.assert_invariants().await;
    assert_eq!(p.balance("alice").await, 10_000 - 450, "charged once");
}

/// order-svc dies by its own SIGKILL (a failpoint) after the coordinator answered and before it
/// stored the client's answer: the client sees the connection drop. Its retry with the same key
/// must get the order that was placed, not a second one, and the money moves once.
async fn order_svc_killed_between_the_coordinators_answer_and_storing_it_gives_the_retry_the_same_order(
    db: TestDb,
) {
    let mut p = Platform::start(db).await;
    // Bad arming is a 4xx problem and arms nothing.
    for (path, body, status) in [
        ("/admin/failpoints/nowhere", json!({}), 404),
        (
            "/admin/failpoints/after_coordinator_answer",
            json!({"after": -1}),
            400,
        ),
        (
            "/admin/failpoints/after_coordinator_answer",
            json!({"times": 1}),
            400,
        ),
        (
            "/admin/failpoints/after_coordinator_answer",
            json!({"after": 2_000_000}),
            400,
        ),
    ] {
        let (s, b) = p.admin(Method::PUT, "order", path, Some(body)).await;
        assert_eq!(s.as_u16(), status, "{path}: {b}");
        assert!(b["detail"].is_string(), "a problem: {b}");
    }
    let (_, listed) = p
        .admin(Method::GET, "order", "/admin/failpoints", None)
        .await;
    assert_eq!(listed["armed"], json!([]), "{listed}");
    // One order first (the platform warmed up), then the crash at the next.
    let (status, warm) = p
        .order("bob", "warm-up", json!({"sku": "coffee", "quantity": 1}))
        .await;
    assert_eq!(status, 201, "{warm}");
    let (s, armed) = p
        .admin(
            Method::PUT,
            "order",
            "/admin/failpoints/after_coordinator_answer",
            Some(json!({"after": 0})),
        )
        .await;
    assert!(s.is_success(), "{armed}");
    let sent = p
        .http
        .post(p.url("order", "/api/v1/orders"))
        .bearer_auth(Platform::token("alice"))
        .header("Idempotency-Key", "crash-after-answer")
        .json(&json!({"sku": "coffee", "quantity": 1}))
        .send()
        .await;
    assert!(sent.is_err(), "order-svc answered: {sent:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p.order.is_running() {
        assert!(std::time::Instant::now() < deadline, "order-svc still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The coordinator had decided: the money is taken (frozen or captured) already.
    assert_eq!(p.balance("alice").await, 10_000 - 450);
    p.order.restart().await.unwrap();
    let body = json!({"sku": "coffee", "quantity": 1});
    let (status, retry) = p.order("alice", "crash-after-answer", body.clone()).await;
    assert_eq!(status, 201, "{retry}");
    assert_eq!(retry["status"], "confirmed", "{retry}");
    let (_, again) = p.order("alice", "crash-after-answer", body).await;
    assert_eq!(again, retry, "the key's answer");
    let (s, listed) = p
        .admin(Method::GET, "order", "/admin/orders?user_id=alice", None)
        .await;
    assert!(s.is_success(), "{listed}");
    // The restarted process came up with nothing armed.
    let (_, failpoints) = p
        .admin(Method::GET, "order", "/admin/failpoints", None)
        .await;
    assert_eq!(failpoints["armed"], json!([]), "{failpoints}");
    let ids: Vec<&str> = listed["orders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [retry["order_id"].as_str().unwrap()],
        "one order: {listed}"
    );
    p.assert_invariants().await;
    assert_eq!(p.balance("alice").await, 10_000 - 450, "charged once");
}

/// Retention of idempotency keys (`order_svc::purge_answered_keys`, what order-svc runs every
/// hour with its 7-day default): after eight days, the keys of settled orders and of client
/// errors go; a key without an answer stays however old (a retry must take it over, never place
/// the order again), and so does the key of the largest order id. Every order still answers,
/// and the audit still holds.
async fn answered_keys_are_forgotten_after_the_retention_and_every_order_still_answers(db: TestDb) {
    let p = Platform::start(db).await;
    let order_db = store::Db::connect(&store::DbConfig::new(p.dbs[1].url()))
        .await
        .unwrap();
    let coffee = json!({"sku": "coffee", "quantity": 1});
    let (_, confirmed) = p.order("alice", "k-confirmed", coffee.clone()).await;
    let (_, cancelled) = p
        .order(
            "bob",
            "k-cancelled",
            json!({"sku": "coffee", "quantity": 3}),
        )
        .await;
    let (bad, _) = p
        .order(
            "alice",
            "k-bad",
            json!({"sku": "no-such-sku", "quantity": 1}),
        )
        .await;
    assert!(bad.is_client_error(), "{bad}");
    let (_, last) = p.order("alice", "k-last", coffee.clone()).await;
    assert_eq!(
        (
            confirmed["status"].as_str(),
            cancelled["status"].as_str(),
            last["status"].as_str()
        ),
        (Some("confirmed"), Some("cancelled"), Some("confirmed"))
    );
    // The orders' Confirms and Cancels follow the answers: let them land before the clock is
    // turned back, or one would stamp its order "just now" (or leave it pending).
    p.settle().await;
    let sql = |q: &'static str| {
        let order_db = order_db.clone();
        async move {
            let mut w = order_db.begin().await.unwrap();
            sqlx::query(q).execute(&mut *w).await.unwrap();
            w.commit().await.unwrap();
        }
    };
    // A request interrupted long ago (no answer), with an order id below the others.
    sql("INSERT INTO order_requests (user_id, idempotency_key, request_hash, order_id, response_status, \
         response_body, created_at, updated_at) VALUES ('carol', 'k-interrupted', 'h', 1, NULL, NULL, 1, 1)")
        .await;
    // Eight days pass.
    sql("UPDATE order_requests SET updated_at = updated_at - 691200000, created_at = created_at - 691200000 \
         WHERE idempotency_key <> 'k-interrupted'")
        .await;
    sql("UPDATE orders SET updated_at = updated_at - 691200000, created_at = created_at - 691200000")
        .await;
    let retention = order_svc::default_config().idempotency_retention;
    let mut removed = 0;
    loop {
        let n = order_svc::purge_answered_keys(&order_db, retention.cutoff_ms(), 2)
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        removed += n;
    }
    assert_eq!(
        removed, 3,
        "the confirmed, the cancelled and the refused request's keys"
    );
    let kept: Vec<String> =
        sqlx::query_scalar("SELECT idempotency_key FROM order_requests ORDER BY idempotency_key")
            .fetch_all(order_db.pool())
            .await
            .unwrap();
    assert_eq!(kept, ["k-interrupted", "k-last"]);
    // Every order still answers its owner, from the order itself.
    for (user, placed) in [("alice", &confirmed), ("bob", &cancelled), ("alice", &last)] {
        let id = placed["order_id"].as_str().unwrap();
        let (status, read) = p.get_order(user, id).await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["status"], placed["status"], "{read}");
    }
    // An order whose key is gone can still be refunded, and the audit does not take it (changed
    // just now, settled long ago) for an order placed without a key.
    let old = confirmed["order_id"].as_str().unwrap();
    let (status, refund, _) = p.refund("alice", "k-refund-old", old, None).await;
    assert_eq!(
        (status.as_u16(), refund["status"].as_str()),
        (201, Some("refunded")),
        "{refund}"
    );
    p.settle().await;
    sql("DELETE FROM order_requests WHERE idempotency_key = 'k-interrupted'").await;
    p.assert_invariants().await;
    // A forgotten key is a new request: a new order (what "remembered for 7 days" means).
    let (status, again) = p.order("alice", "k-confirmed", coffee).await;
    assert_eq!(status, 201, "{again}");
    assert_ne!(again["order_id"], confirmed["order_id"], "{again}");
    assert!(again.get("replayed").is_none() || again["replayed"] == json!(false));
    p.assert_invariants().await;
}

/// Order ids resume above the largest one stored: a restart whose clock is behind it waits
/// (or, far behind, refuses) instead of handing out an order id again.
async fn order_ids_never_repeat_after_a_restart_with_the_clock_behind(db: TestDb) {
    let mut p = Platform::start(db).await;
    let order_db = store::Db::connect(&store::DbConfig::new(p.dbs[1].url()))
        .await
        .unwrap();
    // A predecessor's order id from `ahead_ms` in this clock's future (its clock was ahead).
    let plant = |ahead_ms: i64| {
        let order_db = order_db.clone();
        async move {
            let ms = (store::now_ms() + ahead_ms) as u64 - ids::EPOCH_MS;
            let id = (ms << (ids::NODE_BITS + ids::SEQUENCE_BITS)) as i64;
            let mut w = order_db.begin().await.unwrap();
            sqlx::query("DELETE FROM order_requests WHERE user_id = 'predecessor'")
                .execute(&mut *w)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO order_requests (user_id, idempotency_key, request_hash, order_id, response_status, \
                 response_body, created_at, updated_at) VALUES ('predecessor', 'k', 'h', $1, 422, '{}', 0, 0)",
            )
            .bind(id)
            .execute(&mut *w)
            .await
            .unwrap();
            w.commit().await.unwrap();
            id
        }
    };
    // An hour behind: refused, clearly, and nothing stored.
    plant(3_600_000).await;
    p.order.restart().await.unwrap();
    let (status, refused) = p
        .order("alice", "clock-1", json!({"sku": "coffee", "quantity": 1}))
        .await;
    assert_eq!(status, 503, "{refused}");
    assert!(
        refused["detail"].as_str().unwrap().contains("clock"),
        "{refused}"
    );
    // Three seconds behind: waited out, and the new id is above the predecessor's. No restart:
    // the refused first attempt gave its node id back, so this one takes it at once.
    let high_water = plant(3_000).await;
    let (status, placed) = p
        .order("alice", "clock-2", json!({"sku": "coffee", "quantity": 1}))
        .await;
    assert_eq!(status, 201, "{placed}");
    assert_eq!(placed["status"], "confirmed", "{placed}");
    let id: i64 = placed["order_id"].as_str().unwrap().parse().unwrap();
    assert!(id > high_water, "order id {id} is not above {high_water}");
    let mut w = order_db.begin().await.unwrap();
    sqlx::query("DELETE FROM order_requests WHERE user_id = 'predecessor'")
        .execute(&mut *w)
        .await
        .unwrap();
    w.commit().await.unwrap();
    p.assert_invariants().await;
}

async fn payment_down_during_the_try_cancels_and_recovers_when_it_returns(db: TestDb) {
    let mut p = Platform::start(db).await;
    p.payment.kill();
    let (status, body) = p
        .order("alice", "k1", json!({"sku": "coffee", "quantity": 1}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["reason"].as_str()),
        (Some("cancelled"), Some("unavailable")),
        "{body}"
    );
    // The Cancel to payment-svc waits for it; once it is back, everything settles.
    p.payment.restart().await.unwrap();
    p.assert_invariants().await;
    assert_eq!(p.balance("alice").await, 10_000);
}

async fn payment_killed_with_orders_in_flight_and_restarted_ends_consistent(db: TestDb) {
    let mut p = Platform::start(db).await;
    let answers = join_all((0..12).map(|i| {
        p.order(
            "alice",
            format!("k{i}"),
            json!({"sku": "coffee", "quantity": 1}),
        )
    }))
    .await;
    // Kill payment-svc right after the decisions: Confirms still on their way must be retried.
    p.payment.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.payment.restart().await.unwrap();
    p.assert_invariants().await;
    let confirmed = answers
        .iter()
        .filter(|(_, b)| b["status"] == "confirmed")
        .count() as i64;
    assert!(confirmed > 0);
    assert_eq!(p.balance("merchant").await, confirmed * 450);
    for (_, b) in &answers {
        if b["status"] == "confirmed" {
            let (_, read) = p.get_order("alice", b["order_id"].as_str().unwrap()).await;
            assert_eq!(read["status"], "confirmed", "{read}");
        }
    }
}

/// PostgreSQL only (a lock is how Confirms are held in flight deterministically): every Confirm
/// to payment-svc waits on a lock another session holds (a trigger on the holds it settles);
/// payment-svc is killed with them in flight, the lock released, the service restarted. Each
/// interrupted Confirm must be retried to success, the money arriving exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_killed_during_its_confirms_has_each_interrupted_confirm_retried() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let mut p = Platform::start(db).await;
    // This test holds a lock in a transaction that stays silent on purpose, longer than the
    // server's default patience with frozen sessions.
    let mut lock_holder = store::DbConfig::new(p.dbs[2].url());
    lock_holder.idle_in_transaction_timeout = Duration::ZERO;
    let payment_db = store::Db::connect(&lock_holder).await.unwrap();
    // Settling a hold (Confirm, Cancel) first takes advisory lock 42; Tries only insert holds.
    for ddl in [
        "CREATE FUNCTION wait_for_the_test() RETURNS trigger AS $$ \
         BEGIN PERFORM pg_advisory_xact_lock(42); RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER settling_waits BEFORE UPDATE ON holds \
         FOR EACH ROW EXECUTE FUNCTION wait_for_the_test()",
    ] {
        sqlx::query(ddl).execute(payment_db.pool()).await.unwrap();
    }
    let mut lock = payment_db.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(42)")
        .execute(&mut *lock)
        .await
        .unwrap();
    const N: usize = 6;
    let answers = join_all((0..N).map(|i| {
        p.order(
            "alice",
            format!("held-{i}"),
            json!({"sku": "coffee", "quantity": 1}),
        )
    }))
    .await;
    // Tries do not wait: every order is decided and answered.
    for (status, body) in &answers {
        assert_eq!(
            (status.as_u16(), body["status"].as_str()),
            (201, Some("confirmed")),
            "{body}"
        );
    }
    // Wait until every Confirm is sent and blocked on the lock (the coordinator batches them:
    // one waiting session per send, lone or batch), then kill payment-svc under them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let payment = ["participant=\"payment\"", "phase=\"second\""];
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(payment_db.pool())
        .await
        .unwrap();
        let sent = metric(
            &p,
            "coordinator",
            "coordinator_batch_branches_sum",
            &payment,
        )
        .await;
        let sends = metric(
            &p,
            "coordinator",
            "coordinator_batch_branches_count",
            &payment,
        )
        .await;
        if sent as usize >= N && waiting == sends as i64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sent} Confirms sent in {sends} sends, {waiting} waiting"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.payment.kill();
    lock.rollback().await.unwrap();
    sqlx::query("DROP TRIGGER settling_waits ON holds")
        .execute(payment_db.pool())
        .await
        .unwrap();
    p.payment.restart().await.unwrap();
    p.assert_invariants().await;
    assert_eq!(
        p.balance("merchant").await,
        N as i64 * 450,
        "paid exactly once"
    );
    for (_, body) in &answers {
        let gid = body["gid"].as_str().unwrap();
        let (_, t) = p
            .admin(
                Method::GET,
                "coordinator",
                &format!("/api/v1/transactions/{gid}"),
                None,
            )
            .await;
        assert_eq!(t["status"], "succeeded", "{t}");
        let payment = t["branches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["branch_id"] == "payment")
            .unwrap();
        let confirms: Vec<&str> = payment["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["op"] == "confirm")
            .map(|a| a["outcome"].as_str().unwrap())
            .collect();
        assert!(
            confirms.len() >= 2
                && confirms[0] != "success"
                && *confirms.last().unwrap() == "success",
            "an interrupted Confirm, then a retry that succeeded: {confirms:?} in {t}"
        );
    }
}

async fn coordinator_killed_with_orders_in_flight_and_restarted_leaves_every_order_terminal(
    db: TestDb,
) {
    let mut p = Platform::start(db).await;
    let first = join_all((0..8).map(|i| {
        p.order(
            "alice",
            format!("k{i}"),
            json!({"sku": "coffee", "quantity": 1}),
        )
    }))
    .await;
    assert!(first.iter().all(|(s, _)| *s == 201));
    // Orders keep coming while the coordinator dies.
    let pid = p.coordinator.pid().unwrap() as i32;
    let more = join_all((16..24).map(|i| {
        p.order(
            "alice",
            format!("k{i}"),
            json!({"sku": "coffee", "quantity": 1}),
        )
    }));
    let killer = async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    let (late, _) = tokio::join!(more, killer);
    p.coordinator.restart().await.unwrap();
    // Requests that got no answer are retried with their keys, as a client would, until each
    // has its answer (the audit fails on a key left unanswered).
    for (i, (status, _)) in (16..24).zip(late) {
        let mut status = status;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while status != 201 {
            assert!(
                std::time::Instant::now() < deadline,
                "k{i} never got its answer"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (again, body) = p
                .order(
                    "alice",
                    format!("k{i}"),
                    json!({"sku": "coffee", "quantity": 1}),
                )
                .await;
            assert!(
                again == 201 || again == 409 || again == 503,
                "{again} {body}"
            );
            status = again;
        }
    }
    p.assert_invariants().await;
    let (_, o) = p.admin(Method::GET, "order", "/admin/audit", None).await;
    let merchant = p.balance("merchant").await;
    assert_eq!(
        merchant,
        o["confirmed"].as_i64().unwrap() * 450,
        "money follows the confirmed orders"
    );
}

async fn one_key_sent_twenty_times_at_once_creates_one_order(db: TestDb) {
    let p = Platform::start(db).await;
    let answers = join_all(
        (0..20).map(|_| p.order("alice", "same", json!({"sku": "coffee", "quantity": 1}))),
    )
    .await;
    let ids: std::collections::HashSet<String> = answers
        .iter()
        .map(|(s, b)| {
            assert_eq!(*s, 201, "{b}");
            b["order_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    // Twenty at once is alice's whole burst (the per-user rate limit): the 21st waits for a
    // token.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (status, body) = p
        .order("alice", "same", json!({"sku": "coffee", "quantity": 2}))
        .await;
    assert_eq!(status, 422, "{body}");
    p.assert_invariants().await;
    let (_, o) = p.admin(Method::GET, "order", "/admin/audit", None).await;
    assert_eq!(o["confirmed"], 1);
    assert_eq!(p.balance("alice").await, 10_000 - 450);
}

/// One user sending faster than the per-user limit (10/s, bursts of 20) gets 429s with
/// `Retry-After`, no 5xx; another user at the same moment is served; a refused request stored
/// nothing, so after the wait the same key places its order.
async fn thirty_orders_in_one_second_from_one_user_get_429s_with_retry_after_and_no_5xx(
    db: TestDb,
) {
    let p = Platform::start(db).await;
    // Money for every order that could get through, so each 201 is a confirmed order.
    p.admin.payment.deposit("alice", 100_000).await.unwrap();
    let coffee = json!({"sku": "coffee", "quantity": 1});
    let (answers, carols) = tokio::join!(
        join_all((0..30).map(|i| {
            let http = p.http.clone();
            let url = p.url("order", "/api/v1/orders");
            let body = coffee.clone();
            async move {
                let res = http
                    .post(url)
                    .bearer_auth(Platform::token("alice"))
                    .header("Idempotency-Key", format!("burst-{i}"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let retry_after = res
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
                let ct = res.headers().get("content-type").cloned();
                (i, res.status().as_u16(), retry_after, ct)
            }
        })),
        p.order("carol", "carol-1", coffee.clone())
    );
    let placed = answers.iter().filter(|a| a.1 == 201).count();
    let limited: Vec<_> = answers.iter().filter(|a| a.1 == 429).collect();
    assert_eq!(placed + limited.len(), 30, "only 201 and 429: {answers:?}");
    assert!(placed >= 20, "the burst is served: {answers:?}");
    assert!(!limited.is_empty(), "past the burst, 429s: {answers:?}");
    for (_, _, retry_after, ct) in &limited {
        assert!(matches!(retry_after, Some(1..=2)), "{answers:?}");
        assert_eq!(ct.as_ref().unwrap(), "application/problem+json");
    }
    assert_eq!(carols.0, 201, "another user is not slowed: {}", carols.1);
    // With the bucket still empty, retries of keys whose answer is stored get that answer,
    // never a 429: a client that lost a response must learn what happened.
    let answered = answers.iter().find(|a| a.1 == 201).unwrap().0;
    for _ in 0..10 {
        let (status, body) = p
            .order("alice", format!("burst-{answered}"), coffee.clone())
            .await;
        assert_eq!(
            (status.as_u16(), body["status"].as_str()),
            (201, Some("confirmed")),
            "{body}"
        );
    }
    // After the wait, a refused key places its order (nothing was stored under it).
    let (i, _, retry_after, _) = limited[0];
    tokio::time::sleep(Duration::from_secs(retry_after.unwrap())).await;
    let (status, body) = p.order("alice", format!("burst-{i}"), coffee).await;
    assert_eq!(
        (status.as_u16(), body["status"].as_str()),
        (201, Some("confirmed")),
        "{body}"
    );
    p.assert_invariants().await;
    assert_eq!(
        p.balance("alice").await,
        110_000 - 450 * (placed as i64 + 1),
        "charged for each order placed, and only those"
    );
}

/// Behind the public API, every gRPC hop is mutual TLS with an allow-list of callers: a
/// participant's Try from someone without a certificate, with a certificate another CA signed,
/// or with one of ours that is not the coordinator's, is refused, and no money moves; the
/// coordinator refuses a participant's certificate too. (With the coordinator's own
/// certificate it would go through: `load-tests`' audit test sends such a Try.)
async fn a_participant_call_without_the_coordinators_certificate_is_refused_and_moves_nothing(
    db: TestDb,
) {
    use proto::v1::participant_client::ParticipantClient;
    let p = Platform::start(db).await;
    let rogue_try = || proto::v1::BranchRequest {
        gid: 42,
        branch_id: "rogue".into(),
        op: proto::v1::Op::Try as i32,
        payload: prost::Message::encode_to_vec(&proto::pay::v1::PaymentBranch {
            account_id: "alice".into(),
            amount: 100,
            merchant_id: "merchant".into(),
            refund: None,
        }),
    };
    let payment = p.grpc_urls["payment"].clone();
    // No certificate, plaintext: not even a gRPC answer.
    let plain = tonic::transport::Endpoint::from_shared(payment.clone())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let refused = ParticipantClient::new(channel).branch(rogue_try()).await;
        assert!(refused.is_err(), "plaintext answered: {refused:?}");
    }
    let ours = |role: &str| {
        let f = trust::dev::issue(&p.dir.path().join("tls"), role).unwrap();
        trust::Trust::from_files(&f.ca, &f.cert, &f.key).unwrap()
    };
    // TLS, but a certificate another CA signed (the test process's own).
    let stranger = trust::endpoint(&payment, Some(&testkit::trust("coordinator")), None)
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = stranger {
        let refused = ParticipantClient::new(channel).branch(rogue_try()).await;
        assert!(
            refused.is_err(),
            "another CA's certificate answered: {refused:?}"
        );
    }
    // Our CA's certificate, but order-svc's: not a caller payment takes.
    for role in ["order", "inventory", "operator"] {
        let channel = trust::endpoint(&payment, Some(&ours(role)), Some("payment"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let refused = ParticipantClient::new(channel)
            .branch(rogue_try())
            .await
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::PermissionDenied,
            "{role}: {refused}"
        );
        assert!(refused.message().contains("coordinator only"), "{refused}");
    }
    // Nor does the coordinator take transactions from a participant's certificate.
    let channel = trust::endpoint(
        &p.grpc_urls["coordinator"],
        Some(&ours("payment")),
        Some("coordinator"),
    )
    .unwrap()
    .connect()
    .await
    .unwrap();
    let refused = proto::v1::coordinator_client::CoordinatorClient::new(channel)
        .list(proto::v1::ListRequest {
            status: 0,
            limit: 1,
            before_gid: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert_eq!(p.balance("alice").await, 10_000, "no money moved");
    p.assert_invariants().await;
}

async fn bad_requests_get_4xx_problems_and_change_nothing(db: TestDb) {
    let p = Platform::start(db).await;
    let post = |headers: Vec<(&'static str, String)>, body: String| {
        let mut req = p
            .http
            .post(p.url("order", "/api/v1/orders"))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status();
            let ct = res
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let challenge = res
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, ct, challenge)
        }
    };
    let auth = (
        "authorization",
        format!("Bearer {}", Platform::token("alice")),
    );
    let key = ("idempotency-key", "k".to_owned());
    let good = json!({"sku": "coffee", "quantity": 1}).to_string();
    type Case = (&'static str, Vec<(&'static str, String)>, String, u16);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            vec![auth.clone(), key.clone()],
            "{\"sku\": ".into(),
            400,
        ),
        (
            "unknown field",
            vec![auth.clone(), key.clone()],
            json!({"sku": "coffee", "quantity": 1, "x": 1}).to_string(),
            400,
        ),
        (
            "oversize body",
            vec![auth.clone(), key.clone()],
            format!("{{\"sku\": \"{}\", \"quantity\": 1}}", "a".repeat(40_000)),
            413,
        ),
        ("no idempotency key", vec![auth.clone()], good.clone(), 400),
        (
            "zero quantity",
            vec![auth.clone(), ("idempotency-key", "k0".into())],
            json!({"sku": "coffee", "quantity": 0}).to_string(),
            400,
        ),
        (
            "unknown sku",
            vec![auth.clone(), ("idempotency-key", "k1".into())],
            json!({"sku": "tea", "quantity": 1}).to_string(),
            422,
        ),
        ("no token", vec![key.clone()], good.clone(), 401),
    ];
    for (what, headers, body, want) in cases {
        let (status, ct, _) = post(headers, body).await;
        assert_eq!(status.as_u16(), want, "{what}");
        assert_eq!(ct.as_deref(), Some("application/problem+json"), "{what}");
    }
    // Every kind of bad token: 401 with a challenge.
    let secret = JWT_SECRET.as_bytes();
    let now = jsonwebtoken_now();
    let claims = |exp: u64, iss: &str| json!({"sub": "alice", "iss": iss, "aud": "tcc-pay-orders", "exp": exp, "nbf": now - 5, "iat": now - 5});
    let sign = |alg, c: Value, s: &[u8]| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            &c,
            &jsonwebtoken::EncodingKey::from_secret(s),
        )
        .unwrap()
    };
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let tokens = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(&claims(now + 600, "tcc-pay-dev").to_string())
            ),
        ),
        (
            "HS512",
            sign(
                jsonwebtoken::Algorithm::HS512,
                claims(now + 600, "tcc-pay-dev"),
                secret,
            ),
        ),
        (
            "bad signature",
            sign(
                jsonwebtoken::Algorithm::HS256,
                claims(now + 600, "tcc-pay-dev"),
                b"not-the-secret-not-the-secret-xx",
            ),
        ),
        (
            "expired",
            sign(
                jsonwebtoken::Algorithm::HS256,
                claims(now - 3600, "tcc-pay-dev"),
                secret,
            ),
        ),
        (
            "wrong issuer",
            sign(
                jsonwebtoken::Algorithm::HS256,
                claims(now + 600, "someone"),
                secret,
            ),
        ),
    ];
    for (what, token) in tokens {
        let (status, ct, challenge) = post(
            vec![("authorization", format!("Bearer {token}")), key.clone()],
            good.clone(),
        )
        .await;
        assert_eq!(status, 401, "{what}");
        assert_eq!(ct.as_deref(), Some("application/problem+json"), "{what}");
        assert!(challenge.is_some_and(|c| c.starts_with("Bearer")), "{what}");
    }
    p.assert_invariants().await;
    assert_eq!(p.balance("alice").await, 10_000);
}

fn jsonwebtoken_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Every page of a keyset-paged listing, `limit` at a time; asserts no row comes twice.
async fn every_page(
    p: &Platform,
    service: &str,
    path: &str,
    cursor: &str,
    items: &str,
    next: &str,
    key: impl Fn(&Value) -> String,
) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &after {
            Some(a) => format!("{path}{sep}{cursor}={a}"),
            None => path.to_owned(),
        };
        let (status, page) = p.admin(Method::GET, service, &url, None).await;
        assert_eq!(status, 200, "{url}: {page}");
        all.extend(page[items].as_array().unwrap().iter().cloned());
        match page[next]
            .as_str()
            .map(str::to_owned)
            .or(page[next].as_u64().map(|n| n.to_string()))
        {
            Some(n) if !n.is_empty() && n != "0" => after = Some(n),
            _ => break,
        }
    }
    let keys: std::collections::HashSet<String> = all.iter().map(&key).collect();
    assert_eq!(keys.len(), all.len(), "{service} {path}: a row came twice");
    all
}

async fn listings_page_past_the_first_page_and_show_each_user_only_their_own(db: TestDb) {
    let p = Platform::start(db).await;
    for i in 0..5 {
        let (s, b) = p
            .order(
                "alice",
                format!("a{i}"),
                json!({"sku": "coffee", "quantity": 1}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
    for i in 0..2 {
        let (s, b) = p
            .order(
                "bob",
                format!("b{i}"),
                json!({"sku": "coffee", "quantity": 1}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }
    // The public listing, two at a time, newest first.
    let mut seen: Vec<String> = Vec::new();
    let mut url = p.url("order", "/api/v1/orders?limit=2");
    loop {
        let page: Value = p
            .http
            .get(&url)
            .bearer_auth(Platform::token("alice"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.extend(
            page["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["order_id"].as_str().unwrap().to_owned()),
        );
        match page["next_after"].as_str() {
            Some(next) => url = p.url("order", &format!("/api/v1/orders?limit=2&after={next}")),
            None => break,
        }
    }
    assert_eq!(
        seen.len(),
        5,
        "alice's five orders, none of bob's: {seen:?}"
    );
    let ids: Vec<i64> = seen.iter().map(|s| s.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    // What schemathesis found (platform/tests/schemathesis.rs), kept: digits beyond any order
    // id page from the newest; anything else is a 400; a method the route does not take is a
    // 405 naming the ones it does.
    let alice = |url: String| p.http.get(url).bearer_auth(Platform::token("alice")).send();
    let beyond = alice(p.url(
        "order",
        "/api/v1/orders?limit=10&after=021978792202623696451092364",
    ))
    .await
    .unwrap();
    assert_eq!(beyond.status(), 200);
    let beyond: Value = beyond.json().await.unwrap();
    assert_eq!(beyond["orders"].as_array().unwrap().len(), 5, "{beyond}");
    let bad = alice(p.url("order", "/api/v1/orders?after=abc"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let trace = p
        .http
        .request(Method::TRACE, p.url("order", "/api/v1/orders"))
        .bearer_auth(Platform::token("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(trace.status(), 405);
    assert_eq!(trace.headers()["allow"], "GET, POST");
    assert_eq!(trace.headers()["content-type"], "application/problem+json");
    // The admin listings the audit pages through, two at a time.
    let orders = every_page(
        &p,
        "order",
        "/admin/orders?limit=2",
        "after",
        "orders",
        "next_after",
        |o| o["id"].to_string(),
    )
    .await;
    assert_eq!(orders.len(), 7);
    let holds = every_page(
        &p,
        "payment",
        "/admin/holds?limit=2",
        "after",
        "holds",
        "next_after",
        |h| format!("{}/{}", h["gid"], h["branch_id"]),
    )
    .await;
    assert_eq!(holds.len(), 7);
    let reservations = every_page(
        &p,
        "inventory",
        "/admin/reservations?limit=2",
        "after",
        "reservations",
        "next_after",
        |r| format!("{}/{}", r["gid"], r["branch_id"]),
    )
    .await;
    assert_eq!(reservations.len(), 7);
    let txns = every_page(
        &p,
        "coordinator",
        "/api/v1/transactions?limit=2",
        "before",
        "transactions",
        "next_before",
        |t| t["gid"].to_string(),
    )
    .await;
    assert_eq!(txns.len(), 7);
    p.assert_invariants().await;
}

async fn every_admin_api_wants_its_token_and_every_service_reports_its_metrics(db: TestDb) {
    let p = Platform::start(db).await;
    let (s, b) = p
        .order("alice", "m1", json!({"sku": "coffee", "quantity": 1}))
        .await;
    assert_eq!(s, 201, "{b}");
    p.assert_invariants().await;
    let gid = b["gid"].as_str().unwrap();
    let retry = format!("/api/v1/admin/transactions/{gid}/retry");
    for (service, method, path) in [
        ("payment", Method::GET, "/admin/accounts"),
        ("inventory", Method::GET, "/admin/skus"),
        ("order", Method::GET, "/admin/audit"),
        (
            "order",
            Method::PUT,
            "/admin/failpoints/after_coordinator_answer",
        ),
        ("coordinator", Method::POST, retry.as_str()),
    ] {
        for token in [None, Some("not-the-token")] {
            let mut req = p.http.request(method.clone(), p.url(service, path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 401, "{service} {path} with {token:?}");
            assert_eq!(res.headers()["content-type"], "application/problem+json");
        }
    }
    let metrics = |service: &'static str| {
        let url = p.url(service, "/metrics");
        let http = p.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let has = |text: &str, name: &str, labels: &[&str], value: &str| {
        text.lines().any(|l| {
            l.starts_with(name) && labels.iter().all(|lb| l.contains(lb)) && l.ends_with(value)
        })
    };
    let c = metrics("coordinator").await;
    assert!(
        has(
            &c,
            "coordinator_transactions_started_total",
            &[r#"mode="tcc""#],
            " 1"
        ),
        "{c}"
    );
    assert!(
        has(
            &c,
            "coordinator_transactions_finished_total",
            &[r#"outcome="succeeded""#],
            " 1"
        ),
        "{c}"
    );
    for service in ["order", "payment", "inventory"] {
        let m = metrics(service).await;
        for op in ["try", "confirm"] {
            let label = format!(r#"op="{op}""#);
            assert!(
                has(
                    &m,
                    "tcc_branch_calls_total",
                    &[&label, r#"outcome="applied""#],
                    " 1"
                ),
                "{service} {op}:\n{m}"
            );
        }
    }
    let o = metrics("order").await;
    assert!(
        has(
            &o,
            "http_requests_total",
            &[r#"route="/api/v1/orders""#, r#"status="201""#],
            " 1"
        ),
        "{o}"
    );
    // Each service's own process: the CPU time it used and the most memory it held (what
    // `load-tests run` divides by the orders it sent).
    for service in ["coordinator", "order", "payment", "inventory"] {
        for name in [
            "process_cpu_seconds_total ",
            "process_peak_resident_memory_bytes ",
        ] {
            let value = metric(&p, service, name, &[]).await;
            assert!(value > 0.0, "{service} {name}: {value}");
        }
    }
}

/// SIGTERM to order-svc and the coordinator while orders are in flight: every request gets an
/// answer or a clean refusal, a client retrying its key gets its order, and the books balance.
async fn sigterm_with_orders_and_drives_in_flight_loses_nothing(db: TestDb) {
    let mut p = Platform::start(db).await;
    let body = json!({"sku": "coffee", "quantity": 1});
    let (url, token) = (p.url("order", "/api/v1/orders"), Platform::token("alice"));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent: Vec<_> = (0..16)
        .map(|i| {
            let (http, url, token, body) =
                (p.http.clone(), url.clone(), token.clone(), body.clone());
            let answered = answered.clone();
            tokio::spawn(async move {
                let status = http
                    .post(url)
                    .bearer_auth(token)
                    .header("Idempotency-Key", format!("t{i}"))
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                status
            })
        })
        .collect();
    // SIGTERM once orders are being answered, with the rest still in flight.
    while answered.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let order = tokio::task::block_in_place(|| p.order.terminate(Duration::from_secs(20)));
    let coordinator =
        tokio::task::block_in_place(|| p.coordinator.terminate(Duration::from_secs(20)));
    assert!(order.is_some_and(|s| s.success()), "order-svc: {order:?}");
    assert!(
        coordinator.is_some_and(|s| s.success()),
        "coordinator: {coordinator:?}"
    );
    let mut first = Vec::new();
    for task in sent {
        first.push(task.await.unwrap());
    }
    p.coordinator.restart().await.unwrap();
    p.order.restart().await.unwrap();
    for (i, status) in first.into_iter().enumerate() {
        // Answered, or refused cleanly (no connection, 503 while shutting down).
        assert!(matches!(status, 201 | 503 | 0), "t{i}: {status}");
        let mut status = status;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while status != 201 {
            assert!(
                std::time::Instant::now() < deadline,
                "t{i} never got its answer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            status = p
                .order("alice", format!("t{i}"), body.clone())
                .await
                .0
                .as_u16();
        }
    }
    // A Try that met a participant shutting down cancels its order (and the client hears so);
    // whatever each order became, the books agree with it.
    p.assert_invariants().await;
    let (_, o) = p.admin(Method::GET, "order", "/admin/audit", None).await;
    assert_eq!(
        o["confirmed"].as_i64().unwrap() + o["cancelled"].as_i64().unwrap(),
        16,
        "{o}"
    );
    assert_eq!(
        p.balance("merchant").await,
        o["confirmed"].as_i64().unwrap() * 450
    );
}

both_backends!(
    a_refund_pays_the_buyer_back_puts_the_items_on_sale_and_happens_once,
    a_refund_the_merchant_cannot_pay_is_compensated_and_can_be_asked_again,
    an_order_is_confirmed_and_reads_back_for_its_owner_only,
    insufficient_funds_cancels_and_leaves_balances_unchanged,
    orders_at_once_have_their_tries_batched_and_each_refusal_stays_its_own,
    out_of_stock_cancels,
    payment_down_during_the_try_cancels_and_recovers_when_it_returns,
    a_retry_after_a_503_with_the_same_key_places_the_order,
    payment_killed_with_orders_in_flight_and_restarted_ends_consistent,
    coordinator_killed_with_orders_in_flight_and_restarted_leaves_every_order_terminal,
    one_key_sent_twenty_times_at_once_creates_one_order,
    thirty_orders_in_one_second_from_one_user_get_429s_with_retry_after_and_no_5xx,
    a_participant_call_without_the_coordinators_certificate_is_refused_and_moves_nothing,
    bad_requests_get_4xx_problems_and_change_nothing,
    a_retry_after_the_price_changed_answers_with_the_order_as_first_placed,
    order_svc_killed_between_the_coordinators_answer_and_storing_it_gives_the_retry_the_same_order,
    order_ids_never_repeat_after_a_restart_with_the_clock_behind,
    listings_page_past_the_first_page_and_show_each_user_only_their_own,
    every_admin_api_wants_its_token_and_every_service_reports_its_metrics,
    sigterm_with_orders_and_drives_in_flight_loses_nothing,
    answered_keys_are_forgotten_after_the_retention_and_every_order_still_answers,
    every_problem_s_type_is_a_page_the_answering_service_serves,
    faults_switched_on_through_the_admin_api_make_the_course_s_anomalies_happen_and_lose_nothing,
);

/// A participant's metric, summed over the lines that carry all of `labels`.
async fn metric(p: &Platform, service: &str, name: &str, labels: &[&str]) -> f64 {
    let text = p
        .http
        .get(p.url(service, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Issue 14's faults a student can switch on, on payment-svc through its admin API: a Try
/// delayed past the transaction's deadline is overtaken by its Cancel (a null compensation)
/// and refused by the barrier when it arrives (hanging); a Try made to fail cancels with its
/// code; Confirms made to error are retried until one gets through; a hung Cancel goes on once
/// released. Nothing stays frozen, and /metrics counts what the faults took.
async fn faults_switched_on_through_the_admin_api_make_the_course_s_anomalies_happen_and_lose_nothing(
    db: TestDb,
) {
    let p = Platform::start(db).await;
    let coffee = json!({"sku": "coffee", "quantity": 1});
    let arm = |op: &'static str, body: Value| {
        let p = &p;
        async move {
            let (status, armed) = p
                .admin(
                    Method::PUT,
                    "payment",
                    &format!("/admin/faults/{op}"),
                    Some(body),
                )
                .await;
            assert_eq!(status, 201, "{armed}");
        }
    };

    // 1. A Try 4 s late: the deadline (3 s) cancels the order first.
    arm("try", json!({"kind": "delay", "ms": 4000})).await;
    let (status, late) = p.order("alice", "f-1", coffee.clone()).await;
    assert_eq!(status, 201, "{late}");
    assert_eq!(late["status"], "cancelled", "{late}");
    // The Cancel came first (null compensation); the Try arrives after it and is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(
        &p,
        "payment",
        "tcc_branch_calls_total",
        &["op=\"try\"", "outcome=\"hanging\""],
    )
    .await
        < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the late Try never reached the barrier"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        metric(
            &p,
            "payment",
            "tcc_branch_calls_total",
            &["op=\"cancel\"", "outcome=\"null_compensation\""]
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(
            &p,
            "payment",
            "tcc_faults_injected_total",
            &["op=\"try\"", "kind=\"delay\""]
        )
        .await,
        1.0
    );
    let alice = p.admin.payment.account("alice").await.unwrap();
    assert_eq!(
        (alice.available, alice.frozen),
        (10_000, 0),
        "nothing moved, nothing frozen"
    );

    // 2. A Try made to fail: cancelled with the fault's code.
    arm("try", json!({"kind": "fail", "code": "lab_says_no"})).await;
    let (_, failed) = p.order("alice", "f-2", coffee.clone()).await;
    assert_eq!(
        (failed["status"].as_str(), failed["reason"].as_str()),
        (Some("cancelled"), Some("lab_says_no")),
        "{failed}"
    );

    // 3. Confirms made to error twice: retried until the third gets through.
    arm("confirm", json!({"kind": "error", "times": 2})).await;
    let (_, confirmed) = p.order("alice", "f-3", coffee.clone()).await;
    assert_eq!(confirmed["status"], "confirmed", "{confirmed}");
    let gid = confirmed["gid"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let confirms = loop {
        let (_, t) = p
            .admin(
                Method::GET,
                "coordinator",
                &format!("/api/v1/transactions/{gid}"),
                None,
            )
            .await;
        if t["status"] == "succeeded" {
            let payment = t["branches"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["branch_id"] == "payment")
                .unwrap()
                .clone();
            break payment["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["op"] == "confirm")
                .map(|a| a["outcome"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>();
        }
        assert!(std::time::Instant::now() < deadline, "{t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(confirms, ["error", "error", "success"]);

    // 4. A Cancel that hangs until released: the transaction waits for it, then ends.
    arm("cancel", json!({"kind": "hang"})).await;
    let (_, refused) = p
        .order("alice", "f-4", json!({"sku": "vinyl", "quantity": 2}))
        .await;
    assert_eq!(refused["status"], "cancelled", "{refused}");
    // The order answers once the decision is durable (DESIGN §2); the Cancels follow it, so
    // the hang is taken shortly after the answer, not necessarily before it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, listed) = p.admin(Method::GET, "payment", "/admin/faults", None).await;
        if listed["armed"] == json!([]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the hang was never taken: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let transaction = |gid: String| {
        let p = &p;
        async move {
            p.admin(
                Method::GET,
                "coordinator",
                &format!("/api/v1/transactions/{gid}"),
                None,
            )
            .await
            .1
        }
    };
    let gid = refused["gid"].as_str().unwrap().to_owned();
    let hung = transaction(gid.clone()).await;
    assert_eq!(
        hung["status"], "cancelling",
        "waits for the hung Cancel: {hung}"
    );
    let (status, _) = p
        .admin(Method::POST, "payment", "/admin/faults/release", None)
        .await;
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let t = transaction(gid.clone()).await;
        if t["status"] == "failed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the released Cancel never ended the transaction: {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Bad requests are 4xx problems; nothing stays armed after a clear.
    let (status, problem) = p
        .admin(
            Method::PUT,
            "payment",
            "/admin/faults/confirm",
            Some(json!({"kind": "fail"})),
        )
        .await;
    // Well-formed, but a Confirm must succeed: 422, not a malformed request.
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["code"], "fault_not_applicable", "{problem}");
    let (status, _) = p
        .admin(
            Method::PUT,
            "payment",
            "/admin/faults/sometimes",
            Some(json!({"kind": "error"})),
        )
        .await;
    assert_eq!(status, 404);
    // Nothing in a body is ignored: an ms on a hang, a misspelt field, a delay without ms.
    for bad in [
        json!({"kind": "hang", "ms": 5000}),
        json!({"kind": "delay", "ms": 100, "tims": 50}),
        json!({"kind": "delay"}),
    ] {
        let (status, problem) = p
            .admin(
                Method::PUT,
                "payment",
                "/admin/faults/try",
                Some(bad.clone()),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {problem}");
    }
    let (_, listed) = p.admin(Method::GET, "payment", "/admin/faults", None).await;
    assert_eq!(listed["armed"], json!([]), "{listed}");
    arm("try", json!({"kind": "error", "times": 5})).await;
    let (status, cleared) = p
        .admin(Method::DELETE, "payment", "/admin/faults", None)
        .await;
    assert_eq!((status.as_u16(), &cleared["armed"]), (200, &json!([])));
    let (status, _) = p
        .http
        .put(p.url("payment", "/admin/faults/try"))
        .json(&json!({"kind": "error"}))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, 401, "the admin token is needed");
    p.assert_invariants().await;
}

/// A problem's `type` resolves against the URL that answered it: each service serves the page
/// of each code it answers with (offline, no domain of ours needed).
async fn every_problem_s_type_is_a_page_the_answering_service_serves(db: TestDb) {
    let p = Platform::start(db).await;
    let orders = p.url("order", "/api/v1/orders");
    let token = Platform::token("alice");
    let answers = [
        p.http
            .post(&orders)
            .json(&json!({"sku": "coffee", "quantity": 1})),
        p.http
            .post(&orders)
            .bearer_auth(&token)
            .header("Idempotency-Key", "p-1")
            .json(&json!({"sku": "coffee", "quantity": 0})),
        p.http
            .post(&orders)
            .bearer_auth(&token)
            .header("Idempotency-Key", "p-2")
            .json(&json!({"sku": "no-such-thing", "quantity": 1})),
        p.http.get(format!("{orders}/12345")).bearer_auth(&token),
    ];
    let mut codes = Vec::new();
    for req in answers {
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let problem: Value = res.json().await.unwrap();
        let (code, type_uri) = (
            problem["code"].as_str().unwrap().to_owned(),
            problem["type"].as_str().unwrap().to_owned(),
        );
        assert_eq!(type_uri, format!("/problems/{code}"), "{problem}");
        let page = p.http.get(p.url("order", &type_uri)).send().await.unwrap();
        assert_eq!(page.status(), 200, "{type_uri}");
        assert!(page
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/html")));
        let html = page.text().await.unwrap();
        assert!(
            html.contains(&code) && html.contains(&format!("HTTP {status}")),
            "{html}"
        );
        codes.push(code);
    }
    assert_eq!(
        codes,
        ["unauthorized", "bad_request", "unknown_sku", "not_found"]
    );
    // The same pages on every service; an unknown code is a 404 problem.
    for service in ["payment", "inventory", "coordinator"] {
        let page = p
            .http
            .get(p.url(service, "/problems/unavailable"))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "{service}");
    }
    let none = p
        .http
        .get(p.url("order", "/problems/no_such_code"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);
}

mod trace_collector {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use std::sync::{Arc, Mutex};

    /// (trace id, service name, span name) of a received span.
    pub type Span = (Vec<u8>, String, String);

    /// Every span received.
    #[derive(Default, Clone)]
    pub struct Collector {
        pub spans: Arc<Mutex<Vec<Span>>>,
    }

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut spans = self.spans.lock().unwrap();
            for rs in request.into_inner().resource_spans {
                let service = rs
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                    .and_then(|a| a.value.as_ref())
                    .map(|v| format!("{:?}", v.value))
                    .unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        spans.push((s.trace_id, service.clone(), s.name));
                    }
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    pub async fn start() -> (Collector, String) {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (collector, format!("http://{addr}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_trace_across_the_four_services() {
    let (collector, endpoint) = trace_collector::start().await;
    let mut p = Platform::start_with(TestDb::sqlite(), Some(&endpoint)).await;
    let (status, body) = p
        .order("alice", "traced", json!({"sku": "coffee", "quantity": 1}))
        .await;
    assert_eq!(status, 201, "{body}");
    p.assert_invariants().await;
    // SIGTERM flushes every service's span exporter.
    for name in ["order", "coordinator", "payment", "inventory"] {
        let s = p.service(name).unwrap();
        let exit = s.terminate(Duration::from_secs(15)).expect("clean exit");
        assert!(exit.success());
    }
    let spans = collector.spans.lock().unwrap().clone();
    let order_span = spans
        .iter()
        .find(|(_, service, name)| service.contains("order-svc") && name == "POST /api/v1/orders")
        .unwrap_or_else(|| panic!("no order request span among {} spans", spans.len()));
    let trace = &order_span.0;
    let services: std::collections::BTreeSet<String> = spans
        .iter()
        .filter(|(t, _, _)| t == trace)
        .map(|(_, s, _)| s.clone())
        .collect();
    for want in ["order-svc", "coordinator", "payment-svc", "inventory-svc"] {
        assert!(
            services.iter().any(|s| s.contains(want)),
            "{want} missing from the order's trace: {services:?}"
        );
    }
}
