//! The payment branch handler: each op as conditional updates inside the barrier's transaction.

use crate::domain::{Charge, HoldStatus, Plan, Row, Step};
use futures::future::BoxFuture;
use sqlx::AnyConnection;
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

/// Takes the two accounts' row locks in id order, whatever the op touches first: an order's
/// ops touch the buyer then the merchant, a refund's (the merchant pays the buyer back) the
/// merchant then the buyer, and on PostgreSQL two such ops at once on the same pair would
/// deadlock (one aborted after a second, an order cancelled as `unavailable`). One statement
/// more, only when the first account's id is the larger.
async fn lock_in_order(conn: &mut AnyConnection, first: &str, second: &str) -> Result<(), OpError> {
    if first > second {
        sqlx::query("UPDATE accounts SET updated_at = updated_at WHERE id = $1")
            .bind(second)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
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
    lock_in_order(conn, &charge.account_id, &charge.merchant_id).await?;
    let moved = sqlx::query(
        "UPDATE accounts SET available = available - $1, frozen = frozen + $2, updated_at = $4 \
         WHERE id = $3 AND available >= $1",
    )
    .bind(charge.amount)
    .bind(if status == HoldStatus::Frozen {
        charge.amount
    } else {
        0
    })
    .bind(&charge.account_id)
    .bind(store::now_ms())
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !moved {
        return Err(if account_exists(conn, &charge.account_id).await? {
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
        }
        .into());
    }
    let credit = match status {
        HoldStatus::Frozen => Move::Incoming(charge.amount),
        HoldStatus::Held => Move::FrozenIn(charge.amount),
        _ => Move::Available(charge.amount),
    };
    if !apply_move(conn, &charge.merchant_id, credit).await? {
        return Err(if account_exists(conn, &charge.merchant_id).await? {
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
        }
        .into());
    }
    let now = store::now_ms();
    sqlx::query(
        "INSERT INTO holds (gid, branch_id, account_id, merchant_id, amount, status, reserved, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
    )
    .bind(branch.gid.as_i64())
    .bind(&branch.branch_id)
    .bind(&charge.account_id)
    .bind(&charge.merchant_id)
    .bind(charge.amount)
    .bind(status.as_str())
    .bind(i64::from(status == HoldStatus::Frozen))
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
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
    let step = charge.step;
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
    let reserved = reserved == 1;
    lock_in_order(conn, &account, &merchant).await?;
    let steps: &[(&str, Move)] = match (step, op) {
        (Step::Pay, Op::Confirm) => &[
            (&account, Move::Frozen(-amount)),
            (
                &merchant,
                if reserved {
                    Move::Arrive(amount)
                } else {
                    // A hold from before reservations: its credit was never checked.
                    Move::Return(amount)
                },
            ),
        ],
        (Step::Pay, Op::Cancel) => &[
            (&account, Move::Frozen(-amount)),
            (&account, Move::Return(amount)),
        ],
        (Step::Pay, Op::Compensate) => &[
            (&account, Move::Return(amount)),
            (&merchant, Move::Available(-amount)),
        ],
        // The held money goes back to the payer (`account_id`, the merchant of a refund);
        // the payer first, as `lock_in_order` expects.
        (Step::Hold, Op::Compensate) => &[
            (&account, Move::Return(amount)),
            (&merchant, Move::Frozen(-amount)),
        ],
        // Its room was checked when it was held.
        (Step::Release, Op::Action) => &[
            (&merchant, Move::Frozen(-amount)),
            (&merchant, Move::Return(amount)),
        ],
        (Step::Release, Op::Compensate) => &[
            (&merchant, Move::Available(-amount)),
            (&merchant, Move::Frozen(amount)),
        ],
        _ => unreachable!("plan() moves no hold for {step:?} {op}"),
    };
    for (who, m) in steps {
        if !apply_move(conn, who, *m).await? {
            return Err(Rejection::new(
                "ledger_inconsistent",
                format!("cannot apply {m:?} to {who:?} for {op}"),
            )
            .into());
        }
    }
    if (step, op) == (Step::Pay, Op::Cancel)
        && reserved
        && !apply_move(conn, &merchant, Move::Incoming(-amount)).await?
    {
        return Err(Rejection::new(
            "ledger_inconsistent",
            format!("no room reserved on {merchant:?} to give back for {op}"),
        )
        .into());
    }
    Ok(())
}
