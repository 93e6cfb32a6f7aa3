//! The payment branch handler: each op as conditional updates inside the barrier's transaction.

use crate::domain::{Charge, HoldStatus};
use futures::future::BoxFuture;
use sqlx::AnyConnection;
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
            match op {
                Op::Try | Op::Action => take(conn, branch, op, charge).await,
                Op::Confirm | Op::Cancel | Op::Compensate => settle(conn, branch, op).await,
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

/// Adds `delta` to one balance column of an account; `None` when the account is missing or the
/// result would be negative.
async fn adjust(
    conn: &mut AnyConnection,
    column: Column,
    account: &str,
    delta: i64,
) -> Result<bool, OpError> {
    let sql = match column {
        Column::Available => {
            "UPDATE accounts SET available = available + $1, updated_at = $3 WHERE id = $2 AND available + $1 >= 0"
        }
        Column::Frozen => "UPDATE accounts SET frozen = frozen + $1, updated_at = $3 WHERE id = $2 AND frozen + $1 >= 0",
    };
    let r = sqlx::query(sql)
        .bind(delta)
        .bind(account)
        .bind(store::now_ms())
        .execute(&mut *conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

#[derive(Debug, Clone, Copy)]
enum Column {
    Available,
    Frozen,
}

/// Try: available → frozen. Action: available → merchant. Both record a hold.
async fn take(
    conn: &mut AnyConnection,
    branch: &BranchRef,
    op: Op,
    charge: &Charge,
) -> Result<(), OpError> {
    if !account_exists(conn, &charge.merchant_id).await? {
        return Err(Rejection::new(
            "unknown_merchant",
            format!("no merchant account {:?}", charge.merchant_id),
        )
        .into());
    }
    let moved = sqlx::query(
        "UPDATE accounts SET available = available - $1, frozen = frozen + $2, updated_at = $4 \
         WHERE id = $3 AND available >= $1",
    )
    .bind(charge.amount)
    .bind(if op == Op::Try { charge.amount } else { 0 })
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
    if op == Op::Action
        && !adjust(conn, Column::Available, &charge.merchant_id, charge.amount).await?
    {
        return Err(Rejection::new("unknown_merchant", "the merchant account vanished").into());
    }
    let status = HoldStatus::created_by(op).expect("take is only called for try and action");
    let now = store::now_ms();
    sqlx::query(
        "INSERT INTO holds (gid, branch_id, account_id, merchant_id, amount, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
    )
    .bind(branch.gid.as_i64())
    .bind(&branch.branch_id)
    .bind(&charge.account_id)
    .bind(&charge.merchant_id)
    .bind(charge.amount)
    .bind(status.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Confirm, Cancel, Compensate: move the hold's status on, then its money. Amounts come from the
/// hold, not from the payload, so a replayed or altered payload cannot move other money.
async fn settle(conn: &mut AnyConnection, branch: &BranchRef, op: Op) -> Result<(), OpError> {
    let (from, to) =
        HoldStatus::transition(op).expect("settle is only called for second-phase ops");
    let hold: Option<(String, String, i64)> = sqlx::query_as(
        "UPDATE holds SET status = $1, updated_at = $2 WHERE gid = $3 AND branch_id = $4 AND status = $5 \
         RETURNING account_id, merchant_id, amount",
    )
    .bind(to.as_str())
    .bind(store::now_ms())
    .bind(branch.gid.as_i64())
    .bind(&branch.branch_id)
    .bind(from.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((account, merchant, amount)) = hold else {
        // The barrier lets a second-phase op through only when its first phase committed a hold,
        // so this is a protocol violation (a Confirm without a Try), not a business outcome.
        return Err(Rejection::new(
            "no_hold",
            format!("no {} hold for this branch to {op}", from.as_str()),
        )
        .into());
    };
    let steps: [(Column, &str, i64); 2] = match op {
        Op::Confirm => [
            (Column::Frozen, &account, -amount),
            (Column::Available, &merchant, amount),
        ],
        Op::Cancel => [
            (Column::Frozen, &account, -amount),
            (Column::Available, &account, amount),
        ],
        Op::Compensate => [
            (Column::Available, &merchant, -amount),
            (Column::Available, &account, amount),
        ],
        Op::Try | Op::Action => unreachable!("handled by take"),
    };
    for (column, who, delta) in steps {
        if !adjust(conn, column, who, delta).await? {
            return Err(Rejection::new(
                "ledger_inconsistent",
                format!("cannot apply {delta} to {column:?} of {who:?} for {op}"),
            )
            .into());
        }
    }
    Ok(())
}
