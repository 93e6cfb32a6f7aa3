//! The faults only separate hosts can show, on the platform as containers
//! (`testkit::containers`), each under load:
//! - a participant cut off the network while its Confirms are in flight;
//! - a participant frozen during its Tries (the hanging Try);
//! - a participant's database lost for a while, or frozen (nothing fails fast: only timeouts
//!   bound the wait);
//! - the coordinator cut from its database mid-decision;
//! - a coordinator killed while it holds leases, with a standby on the same database that must
//!   wait for them to expire;
//! - order-svc killed at a failpoint between the coordinator's answer and storing the client's
//!   response.
//!
//! Each ends with the full docs/design.md §5 audit across the four databases, and every client's final
//! answer is checked against where its order ended. The smoke test is the one users copy.
//!
//! The scenarios run one at a time (each cluster is eight containers on a 2-core machine).
//! Without a Docker engine they fail saying why, unless `ALLOW_SKIP_DOCKER=1`; `REQUIRE_DOCKER=1`
//! (as in CI) forbids skipping.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use testkit::containers::{Cluster, Node, Svc};

/// One cluster at a time, across the tests of this file.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn cluster(extra: &[(Svc, &str, &str)]) -> Cluster {
    testkit::containers::ensure_images(std::path::Path::new(env!("CARGO_BIN_EXE_platform")));
    let t = Instant::now();
    let c = Cluster::start(extra).await;
    eprintln!("cluster ready in {:.1} s", t.elapsed().as_secs_f64());
    let admin = admin::Admin::new(&c.endpoints());
    async {
        admin.payment.open_account("merchant", 0).await?;
        admin.payment.open_account("alice", 0).await?;
        admin.payment.deposit("alice", 1_000_000_000).await?;
        admin.payment.open_account("carol", 0).await?;
        admin.inventory.open_sku("coffee", 10_000_000).await?;
        admin.order.put_catalog_item("coffee", "coffee", 450).await
    }
    .await
    .unwrap_or_else(|e| panic!("seeding: {e}"));
    c
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `POST /api/v1/orders`: the status and body, or `error:<kind>` as the status text.
async fn order(http: &reqwest::Client, c: &Cluster, user: &str, key: &str) -> (String, Value) {
    let token = order_svc::auth::Authenticator::new(
        c.jwt_secret.as_bytes(),
        &order_svc::auth::JwtConfig::default(),
    )
    .mint(user, Duration::from_secs(600));
    let res = http
        .post(format!("{}/api/v1/orders", c.url(Svc::Order)))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&json!({"sku": "coffee", "quantity": 1}))
        .send()
        .await;
    match res {
        Ok(r) => {
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let outcome = match body["status"].as_str() {
                Some(s) if status == 201 || status == 200 => s.to_owned(),
                _ => format!("http:{status}"),
            };
            (outcome, body)
        }
        Err(e) if e.is_timeout() => ("error:timeout".into(), Value::Null),
        Err(_) => ("error:transport".into(), Value::Null),
    }
}

/// What a load saw: each order's final answer, and every attempt's start (from the load's
/// start), latency and answer.
#[derive(Debug, Default)]
struct Seen {
    outcomes: BTreeMap<String, u64>,
    attempts: Vec<(Duration, Duration, String)>,
    /// Each key's final answer, and the order id it named.
    answers: Vec<(String, String, Option<String>)>,
}

impl Seen {
    fn count(&self, outcome: &str) -> u64 {
        self.outcomes.get(outcome).copied().unwrap_or(0)
    }

    /// Answers of attempts started within `[from, to)`.
    fn between(&self, from: Duration, to: Duration) -> BTreeMap<&str, u64> {
        self.count_where(|at, _| at >= from && at < to)
    }

    /// Answers of attempts in flight at some time within `[from, to)`: started before `to`,
    /// answered after `from` (a fault can hold every client's request from before it began
    /// until after it ended, so that none starts during it).
    fn overlapping(&self, from: Duration, to: Duration) -> BTreeMap<&str, u64> {
        self.count_where(|at, took| at < to && at + took > from)
    }

    fn count_where(&self, keep: impl Fn(Duration, Duration) -> bool) -> BTreeMap<&str, u64> {
        let mut m = BTreeMap::new();
        for (at, took, outcome) in &self.attempts {
            if keep(*at, *took) {
                *m.entry(outcome.as_str()).or_default() += 1;
            }
        }
        m
    }

    fn slowest(&self) -> Duration {
        self.attempts
            .iter()
            .map(|(_, l, _)| *l)
            .max()
            .unwrap_or_default()
    }
}

/// When a fault began and ended, from the load's start.
struct Fault {
    began: Duration,
    ended: Duration,
}

/// Four clients ordering while `fault` runs and 5 s after it ends, each resending an
/// unanswered or 5xx order with the same key (as a client told to would).
async fn load_during(
    c: &Cluster,
    tag: &str,
    fault: impl std::future::Future<Output = ()>,
) -> (Seen, Fault) {
    let http = http();
    let start = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let workers = (0..4).map(|w| {
        let (http, done) = (&http, &done);
        async move {
            let mut seen = Seen::default();
            let mut i = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("{tag}-{w}-{i}");
                // Told to retry (a 5xx, no answer), it does, with the same key, for up to a
                // minute: every key ends with an answer, which the audit checks.
                let first = Instant::now();
                let (answer, body) = loop {
                    let t = Instant::now();
                    let (answer, body) = order(http, c, "alice", &key).await;
                    seen.attempts.push((t - start, t.elapsed(), answer.clone()));
                    let retry = answer.starts_with("error:") || answer.starts_with("http:5");
                    if !retry || first.elapsed() > Duration::from_secs(60) {
                        break (answer, body);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                };
                let order_id = body["order_id"].as_str().map(str::to_owned);
                seen.answers.push((key, answer.clone(), order_id));
                *seen.outcomes.entry(answer).or_default() += 1;
                i += 1;
            }
            seen
        }
    });
    let faults = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let began = start.elapsed();
        fault.await;
        let ended = start.elapsed();
        tokio::time::sleep(Duration::from_secs(5)).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        Fault { began, ended }
    };
    let (all, fault) = tokio::join!(futures::future::join_all(workers), faults);
    let mut seen = Seen::default();
    for s in all {
        for (k, n) in s.outcomes {
            *seen.outcomes.entry(k).or_default() += n;
        }
        seen.attempts.extend(s.attempts);
        seen.answers.extend(s.answers);
    }
    (seen, fault)
}

/// What every fault scenario asserts of its load: the fault bit (some attempt in flight during it
/// was not confirmed), the platform recovered (orders placed after it confirm), and no request
/// hung (every attempt answered within 10 s: the order API answers `pending` after 3 s here).
fn assert_fault_bit_and_recovered(what: &str, seen: &Seen, f: &Fault) {
    let during = seen.overlapping(f.began, f.ended);
    let after = seen.between(f.ended + Duration::from_secs(2), Duration::MAX);
    eprintln!(
        "{what}: {} orders, finally {:?}; during the fault {during:?}; after it {after:?}; slowest attempt {:.2} s",
        seen.outcomes.values().sum::<u64>(),
        seen.outcomes,
        seen.slowest().as_secs_f64()
    );
    assert!(
        during.iter().any(|(k, _)| *k != "confirmed"),
        "{what}: nothing during the fault shows it: {during:?}"
    );
    assert!(
        after.get("confirmed").copied().unwrap_or(0) > 0,
        "{what}: no order confirmed after the fault ended: {after:?}"
    );
    assert!(
        seen.slowest() < Duration::from_secs(10),
        "{what}: an attempt took {:?}",
        seen.slowest()
    );
}

/// The full audit, waiting up to `settle` for every transaction to be terminal; returns how
/// long that took.
async fn audit(endpoints: &admin::Endpoints, settle: Duration) -> Duration {
    let report = audit::run(endpoints, settle)
        .await
        .unwrap_or_else(|e| panic!("audit: {e}"));
    assert!(report.ok, "{report}");
    Duration::from_millis(report.waited_ms)
}

/// Each scenario gets 5 minutes: a hang fails the test (and drops its cluster) instead of the
/// whole binary.
async fn within_5_minutes(scenario: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(300), scenario)
        .await
        .expect("the scenario did not finish within 5 minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_containers_an_order_confirms_and_one_without_money_is_cancelled() {
    if !testkit::containers::docker_or_skip() {
        return;
    }
    let _one = SERIAL.lock().await;
    within_5_minutes(async {
        let c = cluster(&[]).await;
        // Four HTTP ports on the loopback, and nothing else on the host.
        let published = c.published_ports();
        let on_loopback = published
            .values()
            .filter(|p| !p.is_empty() && p.lines().all(|l| l.contains("-> 127.0.0.1:")))
            .count();
        let unpublished = published.values().filter(|p| p.is_empty()).count();
        assert_eq!((on_loopback, unpublished), (4, 4), "{published:#?}");
        let http = http();
        let (outcome, first) = order(&http, &c, "alice", "smoke-1").await;
        assert_eq!(outcome, "confirmed", "{first}");
        assert!(first["order_id"].is_string(), "{first}");
        let (outcome, body) = order(&http, &c, "carol", "smoke-2").await;
        assert_eq!(
            (outcome.as_str(), body["reason"].as_str()),
            ("cancelled", Some("insufficient_funds")),
            "{body}"
        );
        // The same key again: the same order, the same answer.
        let (outcome, replay) = order(&http, &c, "alice", "smoke-1").await;
        assert_eq!(outcome, "confirmed", "{replay}");
        assert_eq!(
            (&replay["order_id"], &replay["gid"]),
            (&first["order_id"], &first["gid"]),
            "{replay}"
        );
        // Production mode: no way to crash a service over HTTP.
        let refused = admin::Admin::new(&c.endpoints())
            .order
            .0
            .put::<_, Value>(
                "/admin/failpoints/after_coordinator_answer",
                &json!({"after": 0}),
            )
            .await;
        assert!(
            matches!(refused, Err(admin::AdminError::Refused { status: 403, .. })),
            "{refused:?}"
        );
        audit(&c.endpoints(), Duration::from_secs(30)).await;
    })
    .await;
}

/// Every client's answer agrees with where its order ended: `confirmed` and `cancelled`
/// answers name orders CONFIRMED and CANCELLED in order-svc's database (a `pending` answer may
/// end either way, which the audit checks). Returns how many answers were compared.
fn assert_answers_match_orders(what: &str, c: &Cluster, seen: &Seen) -> usize {
    let stored: BTreeMap<String, String> = c
        .sql(Svc::Order, "SELECT id, status FROM orders")
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(id, status)| (id.to_owned(), status.to_owned()))
        .collect();
    let mut compared = 0;
    for (key, answer, order_id) in &seen.answers {
        let expected = match answer.as_str() {
            "confirmed" => "CONFIRMED",
            "cancelled" => "CANCELLED",
            _ => continue,
        };
        let id = order_id
            .as_deref()
            .unwrap_or_else(|| panic!("{what}: {key} answered {answer} without an order id"));
        assert_eq!(
            stored.get(id).map(String::as_str),
            Some(expected),
            "{what}: {key} was answered {answer}, its order {id} ended otherwise"
        );
        compared += 1;
    }
    compared
}

/// The load while `fault` runs on `c`, the checks of [`assert_fault_bit_and_recovered`], the
/// full audit through `endpoints` (every transaction terminal, money and stock conserved,
/// nothing frozen or reserved, all parties agreeing), and every answer checked against its
/// order. Returns what the load saw, for the scenario's own assertions.
async fn load_fault_and_audit(
    c: &Cluster,
    endpoints: &admin::Endpoints,
    tag: &str,
    fault: impl std::future::Future<Output = ()>,
) -> Seen {
    let (seen, f) = load_during(c, tag, fault).await;
    assert_fault_bit_and_recovered(tag, &seen, &f);
    let waited = audit(endpoints, Duration::from_secs(120)).await;
    let compared = assert_answers_match_orders(tag, c, &seen);
    eprintln!(
        "{tag}: audit waited {:.1} s for the last transactions; {compared} final answers match their orders",
        waited.as_secs_f64()
    );
    seen
}

/// A fault scenario on a cluster of its own: [`load_fault_and_audit`] with `fault`.
async fn fault_scenario(tag: &str, fault: impl AsyncFnOnce(&Cluster)) -> Seen {
    let _one = SERIAL.lock().await;
    let mut outcome = None;
    within_5_minutes(async {
        let c = cluster(&[]).await;
        outcome = Some(load_fault_and_audit(&c, &c.endpoints(), tag, fault(&c)).await);
    })
    .await;
    outcome.expect("the scenario ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_cut_off_the_network_for_10_s_under_load_gets_every_confirmed_orders_money_once() {
    if !testkit::containers::docker_or_skip() {
        return;
    }
    // Money captured equals the confirmed orders' amounts, nothing left frozen: the audit.
    let mut failed_confirms = 0;
    fault_scenario("partition", async |c: &Cluster| {
        // Catch the second phase in flight: freeze payment-svc until a decided transaction
        // waits on its Confirm there, then cut it off.
        let mut freezes = 0;
        let pending = loop {
            c.pause(Svc::Payment).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let pending = pending_confirms(c, Svc::Payment);
            if pending > 0 {
                c.partition(Svc::Payment);
                c.unpause(Svc::Payment).await;
                break pending;
            }
            c.unpause(Svc::Payment).await;
            freezes += 1;
            assert!(freezes < 30, "no Confirm to payment-svc was ever pending");
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        eprintln!("partition: cut with {pending} Confirms pending, after {freezes} misses");
        tokio::time::sleep(Duration::from_secs(10)).await;
        // The Confirms in flight at the cut failed; the coordinator logged them.
        failed_confirms = failed_calls(c, "confirm", Svc::Payment);
        c.heal(Svc::Payment).await;
    })
    .await;
    assert!(
        failed_confirms > 0,
        "no Confirm to payment-svc failed during the partition: the fault missed the second phase"
    );
}

/// Decided transactions whose Confirm to `to` has not been answered yet, from the coordinator's
/// log.
fn pending_confirms(c: &Cluster, to: Svc) -> u64 {
    let n = c.sql(
        Svc::Coordinator,
        &format!(
            "SELECT count(*) FROM global_txns g JOIN branches b ON g.gid = b.gid \
             WHERE g.status = 'confirming' AND b.phase2 = 'pending' AND b.participant LIKE '%-{}:%'",
            to.name()
        ),
    );
    n.parse().unwrap_or_else(|_| panic!("a count, not {n:?}"))
}

/// How many of the coordinator's calls of `op` to `to` did not succeed, from its log.
fn failed_calls(c: &Cluster, op: &str, to: Svc) -> u64 {
    let n = c.sql(
        Svc::Coordinator,
        &format!(
            "SELECT count(*) FROM attempts a JOIN branches b ON a.gid = b.gid AND a.idx = b.idx \
             WHERE a.op = '{op}' AND a.outcome <> 'success' AND b.participant LIKE '%-{}:%'",
            to.name()
        ),
    );
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("a count, not {n:?}"));
    eprintln!("failed {op} calls to {}: {n}", to.name());
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_frozen_during_its_tries_times_out_cancels_and_keeps_nothing_reserved() {
    if !testkit::containers::docker_or_skip() {
        return;
    }
    // The Tries that reach inventory after it thaws meet the barrier: nothing stays reserved
    // (the audit's check).
    let seen = fault_scenario("frozen", async |c: &Cluster| {
        c.pause(Svc::Inventory).await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        c.unpause(Svc::Inventory).await;
    })
    .await;
    assert!(
        seen.count("cancelled") > 0,
        "no order timed out while inventory was frozen: {:?}",
        seen.outcomes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_database_lost_for_20_s_under_load_answers_fast_and_finishes_everything() {
    if !testkit::containers::docker_or_skip() {
        return;
    }
    fault_scenario("lost-database", async |c: &Cluster| {
        c.stop_database(Svc::Payment).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        // Not ready, says why, and says nothing of where its database is.
        let res = http()
            .get(format!("{}/readyz", c.url(Svc::Payment)))
            .send()
            .await
            .expect("payment-svc answers");
        assert_eq!(res.status(), 503);
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body["detail"], "not ready: the database does not answer",
            "{body}"
        );
        tokio::time::sleep(Duration::from_secs(17)).await;
        c.start_database(Svc::Payment).await;
        c.wait_ready(Svc::Payment).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_cut_from_its_database_mid_decision_finishes_every_transaction_once_it_returns(
) {
    if !testkit::containers::docker_or_skip() {
        return;
    }
    fault_scenario("coordinator-database", async |c: &Cluster| {
        c.stop_database(Svc::Coordinator).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        c.start_database(Svc::Coordinator).await;
        c.wait_ready(Svc::Coordinator).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_database_frozen_for_10_s_under_load_answers_within_the_bound_and_finishes_everything(
) {
    if !testkit::containers::docker_or_skip() {
        return;
    }
    // The database holds its connections and answers nothing (a VM paused, a disk stalled):
    // nothing fails fast, so only the timeouts stand between a client and a hang.
    fault_scenario("frozen-database", async |c: &Cluster| {
        c.fault(
            testkit::containers::FaultKind::Pause,
            Node::Database(Svc::Payment),
            Duration::from_secs(10),
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_while_it_holds_leases_is_taken_over_by_the_standby_only_once_they_expire(
) {
    if !testkit::containers::docker_or_skip() {
        return;
    }
    let _one = SERIAL.lock().await;
    within_5_minutes(async {
        // A lease well above the time a snapshot takes (6 s; branch calls are capped at half).
        let mut c = cluster(&[(Svc::Coordinator, "COORDINATOR_LEASE_MS", "6000")]).await;
        let http = http();
        // order-svc connects to the first coordinator; its owner id is the one in the log.
        let (outcome, body) = order(&http, &c, "alice", "standby-warm").await;
        assert_eq!(outcome, "confirmed", "{body}");
        let first = c.sql(Svc::Coordinator, "SELECT DISTINCT owner FROM attempts");
        assert!(!first.is_empty() && !first.contains('\n'), "one owner: {first:?}");
        // The standby answers to the first one's name too: once the first is gone, order-svc
        // reconnects to it.
        let standby = c.add_standby_coordinator().await;
        let mut endpoints = c.endpoints();
        endpoints.coordinator = standby;

        let held = std::sync::Mutex::new(BTreeMap::<i64, i64>::new());
        let killed_at = std::sync::Mutex::new(0i64);
        let seen = load_fault_and_audit(&c, &endpoints, "standby", async {
            // payment-svc frozen: the first coordinator's calls to it hang, so it holds the
            // leases of the transactions in flight. Frozen itself, it writes nothing more: the
            // leases it holds are read, then it is killed.
            c.pause(Svc::Payment).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            c.pause(Svc::Coordinator).await;
            *killed_at.lock().unwrap() = now_ms();
            *held.lock().unwrap() = c
                .sql(
                    Svc::Coordinator,
                    &format!(
                        "SELECT gid, lease_until FROM global_txns WHERE owner = '{first}' \
                         AND status IN ('prepared', 'confirming', 'cancelling')"
                    ),
                )
                .lines()
                .map(|l| {
                    let (g, l) = l.split_once('|').expect("gid|lease_until");
                    (g.parse().unwrap(), l.parse().unwrap())
                })
                .collect();
            c.kill(Node::Service(Svc::Coordinator));
            c.unpause(Svc::Payment).await;
        })
        .await;
        assert!(
            !c.running(Node::Service(Svc::Coordinator)),
            "the first coordinator stayed dead"
        );
        let held = held.into_inner().unwrap();
        let killed_at = killed_at.into_inner().unwrap();
        assert!(
            !held.is_empty(),
            "the first coordinator held no lease when it froze (or the standby took them at once)"
        );

        // Every call of every owner, from the log.
        let mut calls: BTreeMap<i64, Vec<(String, i64, i64)>> = BTreeMap::new();
        for line in c
            .sql(
                Svc::Coordinator,
                "SELECT gid, owner, started_at, started_at + (duration_us + 999) / 1000 FROM attempts",
            )
            .lines()
        {
            let f: Vec<&str> = line.split('|').collect();
            calls.entry(f[0].parse().unwrap()).or_default().push((
                f[1].to_owned(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            ));
        }
        // No transaction was ever driven by both: the logged calls of different owners never
        // overlap. (The calls the first made after its last checkpoint are not in the log; they
        // were sent under its lease, which the standby waited out: the check below.)
        for (gid, cs) in &calls {
            for x in cs {
                for y in cs {
                    assert!(
                        x.0 == y.0 || x.2 <= y.1 + 1 || y.2 <= x.1 + 1,
                        "gid {gid}: {x:?} overlaps {y:?}"
                    );
                }
            }
        }
        // The standby drove every transaction the first held, and not one call before its
        // lease ran out.
        let mut lag = Vec::new();
        for (gid, lease_until) in &held {
            let theirs: Vec<i64> = calls
                .get(gid)
                .into_iter()
                .flatten()
                .filter(|(owner, _, _)| *owner != first)
                .map(|(_, start, _)| *start)
                .collect();
            let earliest = theirs.iter().min().copied().unwrap_or_else(|| {
                panic!("gid {gid}: held by the killed coordinator, never driven by the standby")
            });
            assert!(
                earliest >= *lease_until,
                "gid {gid}: the standby called at {earliest}, before the lease ran out at {lease_until}"
            );
            lag.push(earliest - killed_at);
        }
        eprintln!(
            "standby: the killed coordinator held {} leases; the standby's first calls came {:?} ms after the kill; {} orders, finally {:?}",
            held.len(),
            lag,
            seen.outcomes.values().sum::<u64>(),
            seen.outcomes
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_svc_killed_between_the_coordinators_answer_and_storing_it_gives_the_retry_the_same_order(
) {
    if !testkit::containers::docker_or_skip() {
        return;
    }
    let _one = SERIAL.lock().await;
    within_5_minutes(async {
        // Failpoints are refused in production: this order-svc runs without it.
        let c = cluster(&[(Svc::Order, "PRODUCTION", "false")]).await;
        let http = http();
        // One order first (the cluster warmed up), then the crash at the next.
        let (outcome, warm) = order(&http, &c, "alice", "warm-up").await;
        assert_eq!(outcome, "confirmed", "{warm}");
        let admin = admin::Admin::new(&c.endpoints());
        let armed: Value = admin
            .order
            .0
            .put(
                "/admin/failpoints/after_coordinator_answer",
                &json!({"after": 0}),
            )
            .await
            .unwrap_or_else(|e| panic!("arming: {e}"));
        assert_eq!(armed["armed"][0]["after"], 0, "{armed}");

        let (outcome, body) = order(&http, &c, "alice", "crash-1").await;
        assert_eq!(outcome, "error:transport", "{body}");
        // It died by its own SIGKILL at the failpoint: the coordinator has the transaction,
        // order-svc has the key without an answer.
        let order_node = Node::Service(Svc::Order);
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.running(order_node) {
            assert!(Instant::now() < deadline, "order-svc did not die");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(c.exit_code(order_node), 137, "{}", c.logs(Svc::Order, 20));
        let request = c.sql(
            Svc::Order,
            "SELECT order_id, coalesce(response_status, 0) FROM order_requests WHERE idempotency_key = 'crash-1'",
        );
        let (order_id, response) = request.split_once('|').expect("the key's row");
        assert_eq!(response, "0", "the answer was not stored: {request}");
        let txns = c.sql(
            Svc::Coordinator,
            &format!("SELECT gid, status FROM global_txns WHERE idempotency_key = 'order:{order_id}'"),
        );
        let (gid, status) = txns.split_once('|').expect("its transaction");
        assert!(
            ["confirming", "succeeded"].contains(&status),
            "decided to confirm: {txns}"
        );

        c.restart(order_node).await;
        let (outcome, retry) = order(&http, &c, "alice", "crash-1").await;
        assert_eq!(outcome, "confirmed", "{retry}");
        assert_eq!(
            (retry["order_id"].as_str(), retry["gid"].as_str()),
            (Some(order_id), Some(gid)),
            "the retry names the order and the transaction of the first request: {retry}"
        );
        let (_, again) = order(&http, &c, "alice", "crash-1").await;
        assert_eq!(again, retry, "a third time, the same answer");
        assert_eq!(
            c.sql(Svc::Order, "SELECT count(*) FROM orders"),
            "2",
            "one order for the key, beside the warm-up's"
        );
        // The restarted process came up with no failpoint armed.
        let listed: Value = admin.order.0.get("/admin/failpoints").await.unwrap();
        assert_eq!(listed["armed"], json!([]), "{listed}");
        audit(&c.endpoints(), Duration::from_secs(30)).await;
    })
    .await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
