//! The payment branch handler: each op as conditional updates inside the barrier's transaction.

use crate::domain::{Charge, HoldStatus, Plan, Row, Step};
use futures::future::BoxFuture;
use sqlx::AnyConnection;
use tcc::barrier::Item;
use tcc::check::MAX_BALANCE;
use tcc::{BranchRef, Handler, Op, OpError, Rejection};

/// The `tcc::Handler` of payment-svc.
#[derive(Debug, Default)]
pub struct Payments;

impl Handler for Payments {
    type Payload = Charge;

    fn decode(&self, payload: &[u8]) -> Result<Charge, Rejection> {
        Charge::from_payload(payload)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        branch: &'a BranchRef,
        op: Op,
        charge: &'a Charge,
    ) -> BoxFuture<'a, Result<(), OpError>> {
        Box::pin(async move {
            match crate::domain::plan(charge.step, op)? {
                Plan::Create(status) => take(conn, branch, status, charge).await,
                Plan::Move { row, from, to } => {
                    settle(conn, branch, (charge, op), row, (from, to)).await
                }
            }
        })
    }

    /// A batch of one kind of op, together where one account takes the money of many items
    /// (the merchant's, under load): it changes once per batch instead of once per item
    /// ([`takes_together`], [`settles_together`]). Any other batch, item by item.
    fn apply_batch<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        items: &'a [Item<'a, Charge>],
    ) -> BoxFuture<'a, Result<(), (usize, OpError)>> {
        Box::pin(async move {
            if let Some((op, step)) = tcc::one_kind(items, |p| p.step) {
                match crate::domain::plan(step, op) {
                    Ok(Plan::Create(status)) => {
                        return takes_together(self, conn, items, status).await
                    }
                    Ok(Plan::Move {
                        row: Row::Own,
                        from,
                        to,
                    }) if step == Step::Pay && matches!(op, Op::Confirm | Op::Cancel) => {
                        return settles_together(conn, items, op, (from, to)).await
                    }
                    _ => {}
                }
            }
            tcc::apply_each(self, conn, items).await
        })
    }

    /// A batch's payers and payees, locked in id order before its first item (see
    /// [`apply_in_id_order`] for why the order matters).
    fn lock_batch<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        charges: &'a [&'a Charge],
    ) -> BoxFuture<'a, Result<(), OpError>> {
        Box::pin(async move {
            let ids = charges
                .iter()
                .flat_map(|c| [c.account_id.as_str(), c.merchant_id.as_str()]);
            Ok(tcc::barrier::lock_in_id_order(conn, "accounts", ids).await?)
        })
    }
}

/// First phases of one kind together: when they all credit one account (the merchant's,
/// under load), that credit once for their sum, then each payer's debit and hold as [`take`]
/// makes them. Credits are positive, so the sum fits exactly when each would in turn; and the
/// credited account is no item's payer (an item's two accounts differ), so no debit touches it
/// in between. When they credit several accounts, or the sum does not fit, nothing has changed
/// yet and each runs as [`take`], which names the refused one.
async fn takes_together(
    handler: &Payments,
    conn: &mut AnyConnection,
    items: &[Item<'_, Charge>],
    status: HoldStatus,
) -> Result<(), (usize, OpError)> {
    let together = tcc::one_key_sum(items, |i| &i.payload.merchant_id, |i| i.payload.amount);
    let credited = match together {
        Some((payee, sum)) => apply_move(conn, payee, take_moves(status, sum).1)
            .await
            .map_err(|e| (0, e))?,
        None => false,
    };
    if !credited {
        return tcc::apply_each(handler, conn, items).await;
    }
    for (k, item) in items.iter().enumerate() {
        let charge = item.payload;
        let at = |e| (k, e);
        if !apply_move(
            conn,
            &charge.account_id,
            take_moves(status, charge.amount).0,
        )
        .await
        .map_err(at)?
        {
            return Err((k, payer_refusal(conn, charge).await.map_err(at)?.into()));
        }
    }
    let holds: Vec<_> = items.iter().map(|i| (i.branch, i.payload)).collect();
    insert_holds(conn, status, &holds).await.map_err(|e| (0, e))
}

/// An order's Confirms (or Cancels) together: each hold moved and each payer's money moved as
/// [`settle`] does, and the merchant's side of all of them (`Arrive`, or `Incoming` given
/// back) once per merchant. Those moves only lower `incoming`, which no payer's move touches,
/// so the sum takes effect exactly when each would in turn. Any move refused is a protocol
/// violation ([`settle`]): the batch is rolled back and each runs on its own.
async fn settles_together(
    conn: &mut AnyConnection,
    items: &[Item<'_, Charge>],
    op: Op,
    (from, to): (HoldStatus, HoldStatus),
) -> Result<(), (usize, OpError)> {
    // Merchant → (the sum, the first item that moves it).
    let mut merchants: std::collections::BTreeMap<String, (i64, usize)> = Default::default();
    for (k, item) in items.iter().enumerate() {
        let at = |e| (k, e);
        let hold = move_hold(conn, item.branch, (item.payload, op), Row::Own, (from, to))
            .await
            .map_err(at)?;
        for (who, what) in settle_moves(Step::Pay, op, &hold) {
            let lowered = match what {
                Move::Arrive(amount) => amount,
                Move::Incoming(delta) if delta < 0 => -delta,
                other => {
                    if !apply_move(conn, who, other).await.map_err(at)? {
                        return Err((k, inconsistent(who, other, op)));
                    }
                    continue;
                }
            };
            let (sum, _) = merchants.entry(who.to_owned()).or_insert((0, k));
            // Amounts are at most `MAX_UNITS` each, a batch at most a few hundred.
            *sum = sum.saturating_add(lowered);
        }
    }
    for (merchant, (sum, k)) in &merchants {
        let what = if op == Op::Confirm {
            Move::Arrive(*sum)
        } else {
            Move::Incoming(-*sum)
        };
        if !apply_move(conn, merchant, what)
            .await
            .map_err(|e| (*k, e))?
        {
            return Err((*k, inconsistent(merchant, what, op)));
        }
    }
    Ok(())
}

async fn account_exists(conn: &mut AnyConnection, id: &str) -> Result<bool, OpError> {
    let found: Option<i64> =
        sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(found.is_some())
}

/// One conditional change of an account's balances. Debits never go below zero; credits never
/// take `available + frozen + incoming` above [`MAX_BALANCE`] (reserved room excepted: it was
/// checked when it was reserved).
#[derive(Debug, Clone, Copy)]
enum Move {
    /// `available += delta` (a debit when negative).
    Available(i64),
    /// `frozen += delta`.
    Frozen(i64),
    /// `available -= amount, frozen += amount`, if `available` has it: a Try's hold.
    Freeze(i64),
    /// `frozen -= amount, available += amount`, if `frozen` has it: held money given back (no
    /// room check, as [`Move::Return`]).
    Unfreeze(i64),
    /// `frozen += amount`, checking the room: a refund's money held on the buyer.
    FrozenIn(i64),
    /// `incoming += delta`: room reserved (positive) or given back (negative).
    Incoming(i64),
    /// `incoming -= amount, available += amount`: a reserved credit arrives.
    Arrive(i64),
    /// `available += amount` without the room check: money going back where it came from (a
    /// Cancel, a Compensate), which was inside the bound when it left. An account can end above
    /// [`MAX_BALANCE`] by what it had out, still far from overflowing; refusing would leave the
    /// undo failing for ever.
    Return(i64),
}

/// Applies `m` to `account`; false when the account is missing or the move is not allowed.
async fn apply_move(conn: &mut AnyConnection, account: &str, m: Move) -> Result<bool, OpError> {
    // Credits check the room (`available + frozen + incoming + $1 <= $4`, the largest balance
    // bound as $4); debits check for zero. Static texts: no formatting on every branch call.
    let (sql, delta, checks_room): (&'static str, i64, bool) = match m {
        Move::Available(d) if d >= 0 => (
            "UPDATE accounts SET available = available + $1, updated_at = $3 WHERE id = $2 \
             AND available + frozen + incoming + $1 <= $4",
            d,
            true,
        ),
        Move::Available(d) => (
            "UPDATE accounts SET available = available + $1, updated_at = $3 WHERE id = $2 AND available + $1 >= 0",
            d,
            false,
        ),
        Move::Frozen(d) => (
            "UPDATE accounts SET frozen = frozen + $1, updated_at = $3 WHERE id = $2 AND frozen + $1 >= 0",
            d,
            false,
        ),
        Move::Freeze(a) => (
            "UPDATE accounts SET available = available - $1, frozen = frozen + $1, updated_at = $3 \
             WHERE id = $2 AND available >= $1",
            a,
            false,
        ),
        Move::Unfreeze(a) => (
            "UPDATE accounts SET frozen = frozen - $1, available = available + $1, updated_at = $3 \
             WHERE id = $2 AND frozen >= $1",
            a,
            false,
        ),
        Move::FrozenIn(a) => (
            "UPDATE accounts SET frozen = frozen + $1, updated_at = $3 WHERE id = $2 \
             AND available + frozen + incoming + $1 <= $4",
            a,
            true,
        ),
        Move::Incoming(d) if d >= 0 => (
            "UPDATE accounts SET incoming = incoming + $1, updated_at = $3 WHERE id = $2 \
             AND available + frozen + incoming + $1 <= $4",
            d,
            true,
        ),
        Move::Incoming(d) => (
            "UPDATE accounts SET incoming = incoming + $1, updated_at = $3 WHERE id = $2 AND incoming + $1 >= 0",
            d,
            false,
        ),
        Move::Return(a) => (
            "UPDATE accounts SET available = available + $1, updated_at = $3 WHERE id = $2",
            a,
            false,
        ),
        Move::Arrive(a) => (
            "UPDATE accounts SET available = available + $1, incoming = incoming - $1, updated_at = $3 \
             WHERE id = $2 AND incoming >= $1",
            a,
            false,
        ),
    };
    let mut query = sqlx::query(sql)
        .bind(delta)
        .bind(account)
        .bind(store::now_ms());
    if checks_room {
        query = query.bind(MAX_BALANCE);
    }
    let r = query.execute(&mut *conn).await?;
    Ok(r.rows_affected() == 1)
}

/// Applies every move, in the order of their accounts' ids (stable: one account's moves keep
/// their order), and says for each whether it took effect. A move that takes effect locks its
/// row until the commit, so every op that touches two accounts takes their locks in one global
/// order, whatever it moves first: an order's ops move the buyer's money and the merchant's, a
/// refund's the merchant's then the buyer's, and on PostgreSQL two such ops at once on the same
/// pair in opposite orders would deadlock (one aborted after a second, an order cancelled as
/// `unavailable`). Moves on different rows commute, and any refused one rolls the whole op
/// back, so the order changes nothing else. (It used to take a locking statement more, before
/// the moves, whenever the buyer's id sorted after the merchant's.)
async fn apply_in_id_order(
    conn: &mut AnyConnection,
    moves: &[(&str, Move)],
) -> Result<Vec<bool>, OpError> {
    let mut order: Vec<usize> = (0..moves.len()).collect();
    order.sort_by_key(|&i| moves[i].0);
    let mut applied = vec![false; moves.len()];
    for i in order {
        let (account, m) = moves[i];
        applied[i] = apply_move(conn, account, m).await?;
    }
    Ok(applied)
}

/// A first phase's two moves: the payer's debit and the receiving account's credit.
fn take_moves(status: HoldStatus, amount: i64) -> (Move, Move) {
    let debit = if status == HoldStatus::Frozen {
        Move::Freeze(amount)
    } else {
        Move::Available(-amount)
    };
    let credit = match status {
        HoldStatus::Frozen => Move::Incoming(amount),
        HoldStatus::Held => Move::FrozenIn(amount),
        _ => Move::Available(amount),
    };
    (debit, credit)
}

/// Try: available → frozen, and room reserved on the merchant. Action: available → merchant.
/// A refund's hold: the merchant's available → the buyer's frozen. Each records a hold. A
/// payment the receiving account could not take is refused here.
async fn take(
    conn: &mut AnyConnection,
    branch: &BranchRef,
    status: HoldStatus,
    charge: &Charge,
) -> Result<(), OpError> {
    let (debit, credit) = take_moves(status, charge.amount);
    // Both moves run even when the first refused (all is rolled back then), so that the
    // payer's refusal is the one reported when both refuse, whichever id is smaller.
    let applied = apply_in_id_order(
        conn,
        &[(&charge.account_id, debit), (&charge.merchant_id, credit)],
    )
    .await?;
    let (debited, credited) = (applied[0], applied[1]);
    if !debited {
        return Err(payer_refusal(conn, charge).await?.into());
    }
    if !credited {
        return Err(payee_refusal(conn, charge).await?.into());
    }
    insert_holds(conn, status, &[(branch, charge)]).await
}

/// Why the payer's debit did not take effect.
async fn payer_refusal(conn: &mut AnyConnection, charge: &Charge) -> Result<Rejection, OpError> {
    Ok(if account_exists(conn, &charge.account_id).await? {
        Rejection::new(
            "insufficient_funds",
            format!(
                "account {:?} has less than {} available",
                charge.account_id, charge.amount
            ),
        )
    } else {
        Rejection::new(
            "unknown_account",
            format!("no account {:?}", charge.account_id),
        )
    })
}

/// Why the receiving account's credit did not take effect.
async fn payee_refusal(conn: &mut AnyConnection, charge: &Charge) -> Result<Rejection, OpError> {
    Ok(if account_exists(conn, &charge.merchant_id).await? {
        Rejection::new(
            "merchant_account_full",
            format!(
                "merchant {:?} cannot take {} more",
                charge.merchant_id, charge.amount
            ),
        )
    } else {
        Rejection::new(
            "unknown_merchant",
            format!("no merchant account {:?}", charge.merchant_id),
        )
    })
}

/// The holds first phases leave, in as few statements as their number allows.
async fn insert_holds(
    conn: &mut AnyConnection,
    status: HoldStatus,
    holds: &[(&BranchRef, &Charge)],
) -> Result<(), OpError> {
    let now = store::now_ms();
    let head =
        "INSERT INTO holds (gid, branch_id, account_id, merchant_id, amount, status, reserved, \
                created_at, updated_at) VALUES";
    store::insert_many(conn, head, 9, holds, |query, (branch, charge)| {
        query
            .bind(branch.gid.as_i64())
            .bind(&branch.branch_id)
            .bind(&charge.account_id)
            .bind(&charge.merchant_id)
            .bind(charge.amount)
            .bind(status.as_str())
            .bind(i64::from(status == HoldStatus::Frozen))
            .bind(now)
            .bind(now)
    })
    .await?;
    Ok(())
}

/// A hold as a second phase found it.
struct Hold {
    account: String,
    merchant: String,
    amount: i64,
    /// Whether its Try reserved room on the merchant (holds from before reservations did not).
    reserved: bool,
}

/// Confirm, Cancel, Compensate, and a refund's release: move the hold's status on, then its
/// money. Amounts come from the hold, not from the payload, so a replayed or altered payload
/// cannot move other money.
async fn settle(
    conn: &mut AnyConnection,
    branch: &BranchRef,
    (charge, op): (&Charge, Op),
    row: Row,
    (from, to): (HoldStatus, HoldStatus),
) -> Result<(), OpError> {
    let hold = move_hold(conn, branch, (charge, op), row, (from, to)).await?;
    let moves = settle_moves(charge.step, op, &hold);
    let applied = apply_in_id_order(conn, &moves).await?;
    match moves.iter().zip(applied).find(|(_, took)| !took) {
        Some(((who, what), _)) => Err(inconsistent(who, *what, op)),
        None => Ok(()),
    }
}

/// A move of a second phase that did not take effect: its first phase's money is not where it
/// left it.
fn inconsistent(who: &str, what: Move, op: Op) -> OpError {
    Rejection::new(
        "ledger_inconsistent",
        format!("cannot apply {what:?} to {who:?} for {op}"),
    )
    .into()
}

/// Moves the branch's hold (or a refund's release, its transaction's hold) from `from` to `to`.
async fn move_hold(
    conn: &mut AnyConnection,
    branch: &BranchRef,
    (charge, op): (&Charge, Op),
    row: Row,
    (from, to): (HoldStatus, HoldStatus),
) -> Result<Hold, OpError> {
    let mut query = sqlx::query_as(match row {
        Row::Own => {
            "UPDATE holds SET status = $1, updated_at = $2 WHERE gid = $3 AND branch_id = $4 AND status = $5 \
             RETURNING account_id, merchant_id, amount, reserved"
        }
        // The release moves its transaction's hold: exactly one row (a refund has one hold
        // step), and only one for the parties and amount the release names.
        Row::Held => {
            "UPDATE holds SET status = $1, updated_at = $2 WHERE gid = $3 AND status = $5 AND branch_id = ( \
               SELECT MIN(h.branch_id) FROM holds h WHERE h.gid = $3 AND h.branch_id <> $4 AND h.status = $5 \
               AND h.account_id = $6 AND h.merchant_id = $7 AND h.amount = $8) \
             RETURNING account_id, merchant_id, amount, reserved"
        }
    })
    .bind(to.as_str())
    .bind(store::now_ms())
    .bind(branch.gid.as_i64())
    .bind(&branch.branch_id)
    .bind(from.as_str());
    if row == Row::Held {
        query = query
            .bind(&charge.account_id)
            .bind(&charge.merchant_id)
            .bind(charge.amount);
    }
    let hold: Option<(String, String, i64, i64)> = query.fetch_optional(&mut *conn).await?;
    let Some((account, merchant, amount, reserved)) = hold else {
        // The barrier lets a second-phase op through only when its first phase committed a hold,
        // and a release runs only after its hold succeeded, so this is a protocol violation (a
        // Confirm without a Try), not a business outcome.
        return Err(Rejection::new(
            "no_hold",
            format!("no {} hold for this branch to {op}", from.as_str()),
        )
        .into());
    };
    Ok(Hold {
        account,
        merchant,
        amount,
        reserved: reserved == 1,
    })
}

/// Each second phase's moves (one statement each); all must take effect.
fn settle_moves(step: Step, op: Op, hold: &Hold) -> Vec<(&str, Move)> {
    let (a, m, amount) = (hold.account.as_str(), hold.merchant.as_str(), hold.amount);
    match (step, op) {
        (Step::Pay, Op::Confirm) => vec![
            (a, Move::Frozen(-amount)),
            (
                m,
                if hold.reserved {
                    Move::Arrive(amount)
                } else {
                    // A hold from before reservations: its credit was never checked.
                    Move::Return(amount)
                },
            ),
        ],
        (Step::Pay, Op::Cancel) if hold.reserved => vec![
            (a, Move::Unfreeze(amount)),
            // The room reserved on the merchant is given back.
            (m, Move::Incoming(-amount)),
        ],
        (Step::Pay, Op::Cancel) => vec![(a, Move::Unfreeze(amount))],
        (Step::Pay, Op::Compensate) => {
            vec![(a, Move::Return(amount)), (m, Move::Available(-amount))]
        }
        // The held money goes back to the payer (`account_id`, the merchant of a refund).
        (Step::Hold, Op::Compensate) => vec![(a, Move::Return(amount)), (m, Move::Frozen(-amount))],
        // Its room was checked when it was held.
        (Step::Release, Op::Action) => vec![(m, Move::Unfreeze(amount))],
        (Step::Release, Op::Compensate) => vec![(m, Move::Freeze(amount))],
        _ => unreachable!("plan() moves no hold for {step:?} {op}"),
    }
}
