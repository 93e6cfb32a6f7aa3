//! audit: docs/design.md §5 checked across the four services, from the outside.
//!
//! Each service audits its own tables (`/admin/audit`: money or stock conserved, nothing
//! negative), but no single service can tell whether the *parties agree*: that the order
//! confirmed is the order paid for and the stock sold, for every global transaction. This crate
//! reads everything through the admin APIs (the coordinator's log, every order, hold and
//! reservation, paged), waits a bounded time for in-flight transactions to become terminal, and
//! judges. Fetching ([`fetch`]) and judging ([`judge`]) are apart, so every check is unit-tested
//! against snapshots that break it. `load-tests audit` prints the report; the end-to-end tests
//! assert it.

use admin::{Admin, OrderAudit, PaymentAudit, StockAudit};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

pub use admin::{with_causes, AdminError as AuditError, Endpoints};

/// One global transaction as the coordinator's log has it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Transaction {
    pub gid: String,
    pub status: String,
    /// `tcc` or `saga` (empty from a coordinator too old to say: judged as TCC).
    #[serde(default)]
    pub mode: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub gid: String,
    pub user_id: String,
    pub sku: String,
    pub quantity: i64,
    pub amount: i64,
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hold {
    pub gid: String,
    pub branch_id: String,
    /// Who pays: the buyer for an order, the merchant for a refund.
    pub account_id: String,
    /// Who is paid.
    #[serde(default)]
    pub merchant_id: String,
    pub amount: i64,
    pub status: String,
}

/// A refund as order-svc has it (`/admin/refunds`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub gid: String,
    pub order_id: String,
    pub user_id: String,
    pub quantity: i64,
    pub amount: i64,
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reservation {
    pub gid: String,
    pub branch_id: String,
    pub sku: String,
    pub quantity: i64,
    pub status: String,
}

/// Everything the judgement reads, taken once the system was quiet (or the wait ran out).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub transactions: Vec<Transaction>,
    pub orders: Vec<Order>,
    pub holds: Vec<Hold>,
    pub reservations: Vec<Reservation>,
    #[serde(default)]
    pub refunds: Vec<Refund>,
    pub money: PaymentAudit,
    pub stock: StockAudit,
    pub order_books: OrderAudit,
    /// How long the fetch waited for in-flight transactions to finish.
    pub waited_ms: u64,
}

/// One invariant: whether it holds, the counts behind the verdict, and a few offenders.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    /// Where docs/design.md states it (`5.3a`).
    pub section: &'static str,
    pub ok: bool,
    pub counts: String,
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub transactions: BTreeMap<String, u64>,
    pub orders: usize,
    pub waited_ms: u64,
    pub checks: Vec<Check>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "audit of {} transactions {:?} and {} orders (waited {} ms for in-flight ones)",
            self.transactions.values().sum::<u64>(),
            self.transactions,
            self.orders,
            self.waited_ms
        )?;
        for c in &self.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            writeln!(f, "  {mark} §{:<4} {}: {}", c.section, c.name, c.counts)?;
            for e in &c.examples {
                writeln!(f, "         e.g. {e}")?;
            }
        }
        write!(
            f,
            "{}",
            if self.ok {
                "all invariants hold (docs/design.md §5)"
            } else {
                "INVARIANTS VIOLATED (each § is in docs/design.md)"
            }
        )
    }
}

const EXAMPLES: usize = 5;

fn terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "failed")
}

/// docs/design.md §5, judged from a snapshot: one function per invariant, each giving its checks.
pub fn judge(s: &Snapshot) -> Report {
    let mut by_status = BTreeMap::<String, u64>::new();
    for t in &s.transactions {
        *by_status.entry(t.status.clone()).or_default() += 1;
    }

    let mut checks = vec![
        every_transaction_is_terminal(s),
        money_is_conserved(s),
        no_money_is_left_frozen(s),
        stock_is_conserved(s),
        no_stock_is_left_reserved(s),
    ];
    checks.extend(parties_agree_per_transaction(s));
    checks.push(nothing_happened_outside_a_transaction(s));
    checks.extend(the_order_book_is_exactly_once(s));
    checks.extend(refunds_match_their_orders_and_end(s));
    Report {
        ok: checks.iter().all(|c| c.ok),
        transactions: by_status,
        orders: s.orders.len(),
        waited_ms: s.waited_ms,
        checks,
    }
}

fn every_transaction_is_terminal(s: &Snapshot) -> Check {
    let open: Vec<String> = s
        .transactions
        .iter()
        .filter(|t| !terminal(&t.status))
        .map(|t| format!("gid {} is {}", t.gid, t.status))
        .collect();
    check(
        "every global transaction is terminal",
        format!("{} of {} open", open.len(), s.transactions.len()),
        open,
    )
}

fn money_is_conserved(s: &Snapshot) -> Check {
    let m = &s.money;
    let mut bad = Vec::new();
    if m.available + m.frozen != m.deposited {
        bad.push(format!(
            "available + frozen = {} but deposited = {}",
            m.available + m.frozen,
            m.deposited
        ));
    }
    if m.frozen != m.held {
        bad.push(format!(
            "frozen = {} but open holds hold {}",
            m.frozen, m.held
        ));
    }
    if m.incoming != m.reserved {
        bad.push(format!(
            "room reserved on merchants = {} but open holds reserved {}",
            m.incoming, m.reserved
        ));
    }
    if m.negative_accounts != 0 {
        bad.push(format!("{} accounts negative", m.negative_accounts));
    }
    check(
        "money is conserved and never negative",
        format!(
            "available {} + frozen {} = deposited {}",
            m.available, m.frozen, m.deposited
        ),
        bad,
    )
}

fn no_money_is_left_frozen(s: &Snapshot) -> Check {
    let m = &s.money;
    let frozen: Vec<String> = s
        .holds
        .iter()
        .filter(|h| matches!(h.status.as_str(), "frozen" | "held"))
        .map(|h| format!("gid {} hold {} still {}", h.gid, h.amount, h.status))
        .collect();
    check(
        "no money is left frozen",
        format!("frozen {}, open holds {}", m.frozen, frozen.len()),
        if m.frozen != 0 && frozen.is_empty() {
            vec![format!("frozen = {}", m.frozen)]
        } else {
            frozen
        },
    )
}

fn stock_is_conserved(s: &Snapshot) -> Check {
    let st = &s.stock;
    let mut bad = Vec::new();
    if st.available + st.reserved + st.sold != st.restocked {
        bad.push(format!(
            "available + reserved + sold = {} but restocked = {}",
            st.available + st.reserved + st.sold,
            st.restocked
        ));
    }
    if st.reserved != st.held {
        bad.push(format!(
            "reserved = {} but open reservations hold {}",
            st.reserved, st.held
        ));
    }
    if st.unbalanced_skus != 0 {
        bad.push(format!(
            "{} SKUs differ from their restocks",
            st.unbalanced_skus
        ));
    }
    if st.negative_skus != 0 {
        bad.push(format!("{} SKUs negative", st.negative_skus));
    }
    check(
        "stock is conserved per SKU and never negative",
        format!(
            "available {} + reserved {} + sold {} = restocked {}",
            st.available, st.reserved, st.sold, st.restocked
        ),
        bad,
    )
}

fn no_stock_is_left_reserved(s: &Snapshot) -> Check {
    let st = &s.stock;
    let reserved: Vec<String> = s
        .reservations
        .iter()
        .filter(|r| matches!(r.status.as_str(), "reserved" | "returning"))
        .map(|r| {
            format!(
                "gid {} reservation of {} still {}",
                r.gid, r.quantity, r.status
            )
        })
        .collect();
    check(
        "no stock is left reserved",
        format!(
            "reserved {}, open reservations {}",
            st.reserved,
            reserved.len()
        ),
        if st.reserved != 0 && reserved.is_empty() {
            vec![format!("reserved = {}", st.reserved)]
        } else {
            reserved
        },
    )
}

fn parties_agree_per_transaction(s: &Snapshot) -> [Check; 2] {
    // Per transaction: what each party did.
    let mut orders: HashMap<&str, Vec<&Order>> = HashMap::new();
    for o in &s.orders {
        orders.entry(o.gid.as_str()).or_default().push(o);
    }
    let mut holds: HashMap<&str, Vec<&Hold>> = HashMap::new();
    for h in &s.holds {
        holds.entry(h.gid.as_str()).or_default().push(h);
    }
    let mut reservations: HashMap<&str, Vec<&Reservation>> = HashMap::new();
    for r in &s.reservations {
        reservations.entry(r.gid.as_str()).or_default().push(r);
    }
    let refund_gids: std::collections::HashSet<&str> =
        s.refunds.iter().map(|r| r.gid.as_str()).collect();
    let mut disagree = Vec::new();
    let mut mismatched = Vec::new();
    let (mut captured, mut paid_orders) = (0_i64, 0_i64);
    // A refund's transaction is judged by §5.5 (below), against the order it refunds.
    for t in s
        .transactions
        .iter()
        .filter(|t| terminal(&t.status) && !refund_gids.contains(t.gid.as_str()))
    {
        let gid = t.gid.as_str();
        let os = orders.get(gid).cloned().unwrap_or_default();
        let hs = holds.get(gid).cloned().unwrap_or_default();
        let rs = reservations.get(gid).cloned().unwrap_or_default();
        let statuses = || {
            format!(
                "gid {gid} {}: orders {:?}, holds {:?}, reservations {:?}",
                t.status,
                os.iter().map(|o| &o.status).collect::<Vec<_>>(),
                hs.iter().map(|h| &h.status).collect::<Vec<_>>(),
                rs.iter().map(|r| &r.status).collect::<Vec<_>>()
            )
        };
        // What each branch ends as, by the transaction's mode: TCC's Confirm captures and sells
        // what its Try froze and reserved, its Cancel releases; a Saga's Action debits and takes
        // at once, its Compensate refunds and returns. A branch in the other mode's status is a
        // bug the audit must see.
        let saga = t.mode == "saga";
        let (paid, sold, unpaid, unsold) = if saga {
            ("debited", "taken", "refunded", "returned")
        } else {
            ("captured", "sold", "released", "released")
        };
        let agrees = if t.status == "succeeded" {
            // A paid order may have been refunded since (§5.5 judges the refund).
            os.len() == 1
                && order_paid(&os[0].status)
                && !hs.is_empty()
                && hs.iter().all(|h| h.status == paid)
                && !rs.is_empty()
                && rs.iter().all(|r| r.status == sold)
        } else {
            // docs/design.md §5.3: a rolled-back order says so (a Cancel whose Try never arrived stores
            // the order CANCELLED), so there is exactly one order row here too.
            os.len() == 1
                && os[0].status == "CANCELLED"
                && hs.iter().all(|h| h.status == unpaid)
                && rs.iter().all(|r| r.status == unsold)
        };
        if !agrees {
            disagree.push(statuses());
        }
        captured += hs
            .iter()
            .filter(|h| matches!(h.status.as_str(), "captured" | "debited"))
            .map(|h| h.amount)
            .sum::<i64>();
        if let [o] = os.as_slice() {
            if order_paid(&o.status) {
                paid_orders += o.amount;
            }
            let hold_ok = hs
                .iter()
                .all(|h| h.account_id == o.user_id && h.amount == o.amount);
            let res_ok = rs
                .iter()
                .all(|r| r.sku == o.sku && r.quantity == o.quantity);
            if !hold_ok || !res_ok {
                mismatched.push(format!(
                    "gid {gid}: order {} {}×{} for {} by {}, holds {:?}, reservations {:?}",
                    o.id,
                    o.quantity,
                    o.sku,
                    o.amount,
                    o.user_id,
                    hs.iter()
                        .map(|h| (&h.account_id, h.amount))
                        .collect::<Vec<_>>(),
                    rs.iter().map(|r| (&r.sku, r.quantity)).collect::<Vec<_>>()
                ));
            }
        }
    }
    let terminal_count = s
        .transactions
        .iter()
        .filter(|t| terminal(&t.status))
        .count();
    let agree = check(
        "order, payment and stock agree with the coordinator on every transaction",
        format!(
            "{} terminal transactions, {} disagree",
            terminal_count,
            disagree.len()
        ),
        disagree,
    );
    let matched = check(
        "each transaction's hold and reservation match its order (buyer, amount, SKU, quantity)",
        format!(
            "captured {captured} = confirmed orders' amounts {paid_orders}; {} mismatched",
            mismatched.len()
        ),
        if captured != paid_orders && mismatched.is_empty() {
            vec![format!("captured {captured} ≠ confirmed {paid_orders}")]
        } else {
            mismatched
        },
    );
    [agree, matched]
}

/// An order whose money was taken: confirmed, and possibly refunded since.
fn order_paid(status: &str) -> bool {
    matches!(status, "CONFIRMED" | "REFUNDING" | "REFUNDED")
}

/// §5.5: each refund's transaction against its order, and no refund or order left half way.
fn refunds_match_their_orders_and_end(s: &Snapshot) -> [Check; 2] {
    let orders: HashMap<&str, &Order> = s.orders.iter().map(|o| (o.id.as_str(), o)).collect();
    let txns: HashMap<&str, &Transaction> =
        s.transactions.iter().map(|t| (t.gid.as_str(), t)).collect();
    let mut holds: HashMap<&str, Vec<&Hold>> = HashMap::new();
    for h in &s.holds {
        holds.entry(h.gid.as_str()).or_default().push(h);
    }
    let mut reservations: HashMap<&str, Vec<&Reservation>> = HashMap::new();
    for r in &s.reservations {
        reservations.entry(r.gid.as_str()).or_default().push(r);
    }
    let mut refunded_of: HashMap<&str, usize> = HashMap::new();
    let mut mismatched = Vec::new();
    let mut half = Vec::new();
    let (mut paid_back, mut refunded) = (0_i64, 0_i64);
    for f in &s.refunds {
        let gid = f.gid.as_str();
        let hs = holds.get(gid).cloned().unwrap_or_default();
        let rs = reservations.get(gid).cloned().unwrap_or_default();
        let describe = || {
            format!(
                "refund {} ({}) of order {}: transaction {}, holds {:?}, reservations {:?}",
                f.id,
                f.status,
                f.order_id,
                txns.get(gid).map_or("missing", |t| t.status.as_str()),
                hs.iter().map(|h| &h.status).collect::<Vec<_>>(),
                rs.iter().map(|r| &r.status).collect::<Vec<_>>()
            )
        };
        let Some(o) = orders.get(f.order_id.as_str()) else {
            mismatched.push(format!("{}: no such order", describe()));
            continue;
        };
        // What the refund gives back: the buyer's money from the merchant, the order's items
        // at the order's price.
        let price_ok = o.quantity > 0
            && o.amount % o.quantity == 0
            && f.quantity <= o.quantity
            && f.amount == o.amount / o.quantity * f.quantity;
        // The payer is the merchant the order paid.
        let merchant_ok = |payer: &str| {
            holds
                .get(o.gid.as_str())
                .is_some_and(|paid| paid.iter().all(|p| p.merchant_id == payer))
        };
        let hold_ok = hs.iter().all(|h| {
            h.merchant_id == o.user_id
                && h.account_id != o.user_id
                && merchant_ok(&h.account_id)
                && h.amount == f.amount
        });
        let res_ok = rs
            .iter()
            .all(|r| r.sku == o.sku && r.quantity == f.quantity);
        if f.user_id != o.user_id || !price_ok || !hold_ok || !res_ok {
            mismatched.push(format!(
                "{}: order {}×{} for {} by {}, refund {}×{} for {} by {}",
                describe(),
                o.quantity,
                o.sku,
                o.amount,
                o.user_id,
                f.quantity,
                o.sku,
                f.amount,
                f.user_id
            ));
        }
        // A refund's money is held on the buyer, then released ("paid"); refunds from before
        // the hold paid at once ("debited").
        paid_back += hs
            .iter()
            .filter(|h| matches!(h.status.as_str(), "paid" | "debited"))
            .map(|h| h.amount)
            .sum::<i64>();
        // Done means every part done; undone means every part undone (or never started).
        let agrees = match (txns.get(gid).map(|t| t.status.as_str()), f.status.as_str()) {
            (Some("succeeded"), "REFUNDED") => {
                refunded += f.amount;
                *refunded_of.entry(f.order_id.as_str()).or_default() += 1;
                hs.len() == 1
                    && matches!(hs[0].status.as_str(), "paid" | "debited")
                    && rs.len() == 1
                    && rs[0].status == "restocked"
            }
            (Some("failed"), "FAILED") => {
                hs.iter()
                    .all(|h| matches!(h.status.as_str(), "kept" | "refunded"))
                    && rs.iter().all(|r| r.status == "kept")
            }
            _ => false,
        };
        if !agrees {
            half.push(describe());
        }
    }
    for o in &s.orders {
        let done = refunded_of.get(o.id.as_str()).copied().unwrap_or(0);
        let ok = match o.status.as_str() {
            "REFUNDED" => done == 1,
            "REFUNDING" => false,
            _ => done == 0,
        };
        if !ok {
            half.push(format!(
                "order {} is {} with {done} refunds done",
                o.id, o.status
            ));
        }
    }
    [
        check(
            "each refund matches its order (buyer, amount, SKU, quantity)",
            format!(
                "{} refunds; paid back {paid_back} = refunded amounts {refunded}; {} mismatched",
                s.refunds.len(),
                mismatched.len()
            ),
            if paid_back != refunded && mismatched.is_empty() {
                vec![format!("paid back {paid_back} ≠ refunded {refunded}")]
            } else {
                mismatched
            },
        ),
        check(
            "no order or refund is left half refunded",
            format!(
                "{} refunded, {} failed, {} half way",
                s.refunds.iter().filter(|f| f.status == "REFUNDED").count(),
                s.refunds.iter().filter(|f| f.status == "FAILED").count(),
                half.len()
            ),
            half,
        ),
    ]
}

fn nothing_happened_outside_a_transaction(s: &Snapshot) -> Check {
    let known: std::collections::HashSet<&str> =
        s.transactions.iter().map(|t| t.gid.as_str()).collect();
    let mut orphans: Vec<String> = Vec::new();
    orphans.extend(
        s.orders
            .iter()
            .filter(|o| !known.contains(o.gid.as_str()))
            .map(|o| format!("order {} ({}) of unknown gid {}", o.id, o.status, o.gid)),
    );
    orphans.extend(
        s.holds
            .iter()
            .filter(|h| !known.contains(h.gid.as_str()))
            .map(|h| format!("hold ({}) of unknown gid {}", h.status, h.gid)),
    );
    orphans.extend(
        s.reservations
            .iter()
            .filter(|r| !known.contains(r.gid.as_str()))
            .map(|r| format!("reservation ({}) of unknown gid {}", r.status, r.gid)),
    );
    check(
        "nothing happened outside a global transaction the coordinator knows",
        format!(
            "{} orders, {} holds, {} reservations; {} orphans",
            s.orders.len(),
            s.holds.len(),
            s.reservations.len(),
            orphans.len()
        ),
        orphans,
    )
}

fn the_order_book_is_exactly_once(s: &Snapshot) -> [Check; 3] {
    let b = &s.order_books;
    let mut bad = Vec::new();
    if b.orders_with_several_requests != 0 {
        bad.push(format!(
            "{} orders are shared by several idempotency keys",
            b.orders_with_several_requests
        ));
    }
    if b.orders_without_request != 0 {
        bad.push(format!(
            "{} orders have no idempotency key",
            b.orders_without_request
        ));
    }
    if b.refunds_without_request != 0 {
        bad.push(format!(
            "{} refunds have no idempotency key",
            b.refunds_without_request
        ));
    }
    let one_order_per_key = check(
        "one idempotency key, one order",
        format!(
            "{} keys, {} orders ({} confirmed, {} cancelled), {} keys unanswered",
            b.requests,
            b.pending + b.confirmed + b.cancelled,
            b.confirmed,
            b.cancelled,
            b.unanswered_requests
        ),
        bad,
    );
    let every_key_answered = check(
        "every idempotency key got its answer",
        format!("{} keys unanswered", b.unanswered_requests),
        if b.unanswered_requests == 0 {
            vec![]
        } else {
            vec![format!(
                "{} keys never got an answer: their clients gave up after a 5xx and do not know \
                 whether they paid (a retry with the same key answers them)",
                b.unanswered_requests
            )]
        },
    );
    let nothing_pending = check(
        "no order is left pending",
        format!("{} pending", b.pending),
        if b.pending == 0 {
            vec![]
        } else {
            s.orders
                .iter()
                .filter(|o| o.status == "PENDING")
                .map(|o| format!("order {} of gid {}", o.id, o.gid))
                .chain(std::iter::once(format!("{} pending", b.pending)))
                .collect()
        },
    );
    [one_order_per_key, every_key_answered, nothing_pending]
}

/// Each check's section in docs/design.md §5, by the name it prints.
const SECTIONS: &[(&str, &str)] = &[
    ("every global transaction is terminal", "5.3a"),
    ("money is conserved and never negative", "5.1a"),
    ("no money is left frozen", "5.1b"),
    ("stock is conserved per SKU and never negative", "5.2a"),
    ("no stock is left reserved", "5.2b"),
    (
        "order, payment and stock agree with the coordinator on every transaction",
        "5.3b",
    ),
    (
        "each transaction's hold and reservation match its order (buyer, amount, SKU, quantity)",
        "5.3c",
    ),
    (
        "nothing happened outside a global transaction the coordinator knows",
        "5.3d",
    ),
    ("one idempotency key, one order", "5.4a"),
    ("every idempotency key got its answer", "5.4b"),
    ("no order is left pending", "5.3e"),
    (
        "each refund matches its order (buyer, amount, SKU, quantity)",
        "5.5a",
    ),
    ("no order or refund is left half refunded", "5.5b"),
];

fn check(name: &'static str, counts: String, offenders: Vec<String>) -> Check {
    Check {
        name,
        section: SECTIONS
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("5", |(_, s)| s),
        ok: offenders.is_empty(),
        counts,
        examples: offenders.into_iter().take(EXAMPLES).collect(),
    }
}

/// Waits up to `settle` for every global transaction to be terminal and no order pending, then
/// reads everything. A system that does not settle is still read (and fails the judgement).
pub async fn fetch(e: &Endpoints, settle: Duration) -> Result<Snapshot, AuditError> {
    let admin = Admin::new(e);
    let start = Instant::now();
    loop {
        let counts: serde_json::Value = admin
            .coordinator
            .get("/api/v1/transactions?limit=1")
            .await?;
        let open: i64 = counts["counts"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(s, _)| !terminal(s))
                    .filter_map(|(_, n)| n.as_i64())
                    .sum()
            })
            .unwrap_or(0);
        let books = admin.order.audit().await?;
        let quiet = open == 0 && books.pending == 0 && books.refunding == 0;
        if quiet || start.elapsed() >= settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited_ms = start.elapsed().as_millis() as u64;
    Ok(Snapshot {
        transactions: admin
            .coordinator
            .pages(
                "/api/v1/transactions?limit=500",
                "before",
                "transactions",
                "next_before",
            )
            .await?,
        orders: admin
            .order
            .0
            .pages("/admin/orders?limit=1000", "after", "orders", "next_after")
            .await?,
        holds: admin
            .payment
            .0
            .pages("/admin/holds?limit=1000", "after", "holds", "next_after")
            .await?,
        reservations: admin
            .inventory
            .0
            .pages(
                "/admin/reservations?limit=1000",
                "after",
                "reservations",
                "next_after",
            )
            .await?,
        refunds: admin
            .order
            .0
            .pages(
                "/admin/refunds?limit=1000",
                "after",
                "refunds",
                "next_after",
            )
            .await?,
        money: admin.payment.audit().await?,
        stock: admin.inventory.audit().await?,
        order_books: admin.order.audit().await?,
        waited_ms,
    })
}

/// [`fetch`] then [`judge`].
pub async fn run(e: &Endpoints, settle: Duration) -> Result<Report, AuditError> {
    Ok(judge(&fetch(e, settle).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(gid: &str, status: &str) -> Order {
        Order {
            id: format!("o{gid}"),
            gid: gid.into(),
            user_id: "alice".into(),
            sku: "coffee".into(),
            quantity: 1,
            amount: 450,
            status: status.into(),
        }
    }
    fn hold(gid: &str, status: &str) -> Hold {
        Hold {
            gid: gid.into(),
            branch_id: "payment".into(),
            account_id: "alice".into(),
            merchant_id: "merchant".into(),
            amount: 450,
            status: status.into(),
        }
    }
    fn reservation(gid: &str, status: &str) -> Reservation {
        Reservation {
            gid: gid.into(),
            branch_id: "inventory".into(),
            sku: "coffee".into(),
            quantity: 1,
            status: status.into(),
        }
    }
    fn txn(gid: &str, status: &str) -> Transaction {
        Transaction {
            gid: gid.into(),
            status: status.into(),
            mode: "tcc".into(),
        }
    }

    /// One confirmed order and one cancelled one, everything in order.
    fn healthy() -> Snapshot {
        Snapshot {
            transactions: vec![txn("1", "succeeded"), txn("2", "failed")],
            orders: vec![order("1", "CONFIRMED"), order("2", "CANCELLED")],
            holds: vec![hold("1", "captured"), hold("2", "released")],
            reservations: vec![reservation("1", "sold")],
            refunds: vec![],
            money: PaymentAudit {
                available: 10_000,
                deposited: 10_000,
                ..PaymentAudit::default()
            },
            stock: StockAudit {
                available: 99,
                sold: 1,
                restocked: 100,
                ..StockAudit::default()
            },
            order_books: OrderAudit {
                confirmed: 1,
                cancelled: 1,
                requests: 2,
                ..OrderAudit::default()
            },
            waited_ms: 0,
        }
    }

    fn failed(s: &Snapshot) -> Vec<&'static str> {
        judge(s)
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn a_healthy_snapshot_passes_every_check() {
        let r = judge(&healthy());
        assert!(r.ok, "{r}");
        assert_eq!(r.checks.len(), 13);
    }

    /// Every check names its section of docs/design.md, and that section says what the check
    /// prints: the document and the audit cannot drift apart unnoticed.
    #[test]
    fn every_check_cites_the_section_of_the_design_document_that_states_it() {
        let design = include_str!("../../../docs/design.md");
        let flowing = design.split_whitespace().collect::<Vec<_>>().join(" ");
        for c in judge(&healthy()).checks {
            assert_ne!(c.section, "5", "{} has no section", c.name);
            let entry = format!("| {} | {} |", c.name, c.section);
            assert!(design.contains(&entry), "docs/design.md lacks {entry:?}");
            let statement = format!("**{} \"{}", c.section, c.name);
            assert!(
                flowing.contains(&statement),
                "docs/design.md does not state {} as {statement:?}",
                c.name
            );
        }
    }

    #[test]
    fn a_failed_transaction_without_its_cancelled_order_is_caught() {
        let mut s = healthy();
        s.orders.retain(|o| o.gid != "2");
        s.order_books.cancelled = 0;
        assert_eq!(
            failed(&s),
            ["order, payment and stock agree with the coordinator on every transaction"]
        );
    }

    #[test]
    fn an_open_transaction_fails_the_terminal_check() {
        let mut s = healthy();
        s.transactions.push(txn("3", "confirming"));
        assert_eq!(failed(&s), ["every global transaction is terminal"]);
    }

    #[test]
    fn money_created_from_nothing_is_caught() {
        let mut s = healthy();
        s.money.available += 1;
        assert_eq!(failed(&s), ["money is conserved and never negative"]);
    }

    #[test]
    fn a_frozen_hold_left_behind_is_caught() {
        let mut s = healthy();
        s.holds.push(hold("3", "frozen"));
        s.transactions.push(txn("3", "failed"));
        let f = failed(&s);
        assert!(f.contains(&"no money is left frozen"), "{f:?}");
        assert!(
            f.contains(&"order, payment and stock agree with the coordinator on every transaction"),
            "{f:?}"
        );
    }

    #[test]
    fn stock_lost_or_left_reserved_is_caught() {
        let mut s = healthy();
        s.stock.sold += 1;
        assert_eq!(
            failed(&s),
            ["stock is conserved per SKU and never negative"]
        );
        let mut s = healthy();
        s.stock.reserved = 1;
        s.stock.available -= 1;
        s.stock.held = 1;
        assert_eq!(failed(&s), ["no stock is left reserved"]);
    }

    #[test]
    fn a_succeeded_transaction_whose_stock_was_released_is_caught() {
        let mut s = healthy();
        s.reservations[0].status = "released".into();
        assert_eq!(
            failed(&s),
            ["order, payment and stock agree with the coordinator on every transaction"]
        );
    }

    /// A Saga's branches end in their own statuses (debited/taken when it succeeded,
    /// refunded/returned when it was compensated): agreement, not a disagreement.
    #[test]
    fn saga_statuses_agree_and_a_saga_left_half_done_is_caught() {
        let mut s = healthy();
        // A TCC transaction whose branch ended as a Saga step's is a bug.
        s.holds[0].status = "debited".into();
        assert!(failed(&s)
            .contains(&"order, payment and stock agree with the coordinator on every transaction"));
        for t in &mut s.transactions {
            t.mode = "saga".into();
        }
        s.reservations[0].status = "taken".into();
        s.holds[1].status = "refunded".into();
        s.reservations.push(reservation("2", "returned"));
        assert!(failed(&s).is_empty(), "{:?}", failed(&s));
        s.reservations[1].status = "taken".into();
        assert!(failed(&s)
            .contains(&"order, payment and stock agree with the coordinator on every transaction"));
    }

    #[test]
    fn a_failed_transaction_whose_money_was_captured_is_caught() {
        let mut s = healthy();
        s.holds[1].status = "captured".into();
        let f = failed(&s);
        assert!(
            f.contains(&"order, payment and stock agree with the coordinator on every transaction"),
            "{f:?}"
        );
        assert!(
            f.contains(
                &"each transaction's hold and reservation match its order (buyer, amount, SKU, quantity)"
            ),
            "{f:?}"
        );
    }

    #[test]
    fn a_hold_for_another_amount_than_its_order_is_caught() {
        let mut s = healthy();
        s.holds[0].amount = 449;
        assert_eq!(
            failed(&s),
            ["each transaction's hold and reservation match its order (buyer, amount, SKU, quantity)"]
        );
    }

    #[test]
    fn an_order_outside_any_transaction_is_caught() {
        let mut s = healthy();
        s.orders.push(order("9", "CANCELLED"));
        assert_eq!(
            failed(&s),
            ["nothing happened outside a global transaction the coordinator knows"]
        );
    }

    #[test]
    fn two_keys_sharing_an_order_or_an_order_without_key_are_caught() {
        let mut s = healthy();
        s.order_books.orders_with_several_requests = 1;
        assert_eq!(failed(&s), ["one idempotency key, one order"]);
        let mut s = healthy();
        s.order_books.orders_without_request = 1;
        assert_eq!(failed(&s), ["one idempotency key, one order"]);
        let mut s = healthy();
        s.order_books.refunds_without_request = 1;
        assert_eq!(failed(&s), ["one idempotency key, one order"]);
    }

    #[test]
    fn a_key_left_without_its_answer_is_caught() {
        let mut s = healthy();
        s.order_books.unanswered_requests = 1;
        assert_eq!(failed(&s), ["every idempotency key got its answer"]);
    }

    #[test]
    fn a_pending_order_is_caught() {
        let mut s = healthy();
        s.order_books.pending = 1;
        assert_eq!(failed(&s), ["no order is left pending"]);
    }

    /// The healthy snapshot plus order 1 refunded (gid 3) after a failed attempt (gid 4).
    fn refunded() -> Snapshot {
        let mut s = healthy();
        s.orders[0].status = "REFUNDED".into();
        s.transactions.push(Transaction {
            mode: "saga".into(),
            ..txn("3", "succeeded")
        });
        s.transactions.push(Transaction {
            mode: "saga".into(),
            ..txn("4", "failed")
        });
        let refund = |gid: &str, status: &str| Refund {
            id: format!("r{gid}"),
            gid: gid.into(),
            order_id: "o1".into(),
            user_id: "alice".into(),
            quantity: 1,
            amount: 450,
            status: status.into(),
        };
        s.refunds = vec![refund("3", "REFUNDED"), refund("4", "FAILED")];
        let back = |gid: &str, status: &str| Hold {
            account_id: "merchant".into(),
            merchant_id: "alice".into(),
            ..hold(gid, status)
        };
        s.holds.push(back("3", "paid"));
        s.holds.push(back("4", "kept"));
        s.reservations.push(reservation("3", "restocked"));
        s.reservations.push(reservation("4", "kept"));
        s
    }

    #[test]
    fn a_refund_done_and_one_undone_pass_every_check() {
        let r = judge(&refunded());
        assert!(r.ok, "{r}");
    }

    #[test]
    fn a_refund_left_half_way_or_an_order_refunded_without_one_is_caught() {
        let mut s = refunded();
        s.reservations[1].status = "returning".into();
        s.stock.reserved = 1;
        s.stock.held = 1;
        s.stock.sold = 0;
        assert_eq!(
            failed(&s),
            [
                "no stock is left reserved",
                "no order or refund is left half refunded"
            ]
        );
        let mut s = refunded();
        s.refunds[0].status = "FAILED".into();
        assert_eq!(
            failed(&s),
            [
                "each refund matches its order (buyer, amount, SKU, quantity)",
                "no order or refund is left half refunded"
            ]
        );
        let mut s = refunded();
        s.orders[0].status = "REFUNDING".into();
        assert_eq!(failed(&s), ["no order or refund is left half refunded"]);
        // A failed refund whose money stayed with the buyer.
        let mut s = refunded();
        s.holds[3].status = "paid".into();
        assert!(failed(&s).contains(&"no order or refund is left half refunded"));
        // A refund whose money is still held on the buyer, never released.
        let mut s = refunded();
        s.holds[2].status = "held".into();
        s.money.frozen = 450;
        s.money.held = 450;
        s.money.available -= 450;
        assert_eq!(
            failed(&s),
            [
                "no money is left frozen",
                "each refund matches its order (buyer, amount, SKU, quantity)",
                "no order or refund is left half refunded"
            ]
        );
    }

    #[test]
    fn a_refund_paying_another_amount_or_the_wrong_account_is_caught() {
        let mut s = refunded();
        s.holds[2].amount = 900;
        assert!(
            failed(&s).contains(&"each refund matches its order (buyer, amount, SKU, quantity)")
        );
        let mut s = refunded();
        s.holds[2].merchant_id = "mallory".into();
        assert!(
            failed(&s).contains(&"each refund matches its order (buyer, amount, SKU, quantity)")
        );
        // Paid back by someone other than the merchant the order paid.
        let mut s = refunded();
        s.holds[2].account_id = "bob".into();
        assert!(
            failed(&s).contains(&"each refund matches its order (buyer, amount, SKU, quantity)")
        );
        let mut s = refunded();
        s.refunds[0].quantity = 2;
        assert!(
            failed(&s).contains(&"each refund matches its order (buyer, amount, SKU, quantity)")
        );
    }
}
