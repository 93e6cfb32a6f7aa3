//! The inventory branch handler: each op as conditional updates inside the barrier's
//! transaction.

use crate::domain::{Pick, ReservationStatus};
use futures::future::BoxFuture;
use sqlx::AnyConnection;
use tcc::{BranchRef, Handler, Op, OpError, Rejection};

/// The `tcc::Handler` of inventory-svc.
#[derive(Debug, Default)]
pub struct Stock;

impl Handler for Stock {
    type Payload = Pick;

    fn decode(&self, payload: &[u8]) -> Result<Pick, Rejection> {
        Pick::from_payload(payload)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        branch: &'a BranchRef,
        op: Op,
        pick: &'a Pick,
    ) -> BoxFuture<'a, Result<(), OpError>> {
        Box::pin(async move {
            match op {
                Op::Try | Op::Action => take(conn, branch, op, pick).await,
                Op::Confirm | Op::Cancel | Op::Compensate => settle(conn, branch, op).await,
            }
        })
    }
}

/// Try: available → reserved. Action: available → sold. Both record a reservation.
async fn take(
    conn: &mut AnyConnection,
    branch: &BranchRef,
    op: Op,
    pick: &Pick,
) -> Result<(), OpError> {
    let (reserved, sold) = if op == Op::Try {
        (pick.quantity, 0)
    } else {
        (0, pick.quantity)
    };
    let moved = sqlx::query(
        "UPDATE skus SET available = available - $1, reserved = reserved + $2, sold = sold + $3, updated_at = $5 \
         WHERE id = $4 AND available >= $1",
    )
    .bind(pick.quantity)
    .bind(reserved)
    .bind(sold)
    .bind(&pick.sku)
    .bind(store::now_ms())
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !moved {
        let exists: Option<i64> = sqlx::query_scalar("SELECT available FROM skus WHERE id = $1")
            .bind(&pick.sku)
            .fetch_optional(&mut *conn)
            .await?;
        return Err(match exists {
            Some(available) => Rejection::new(
                "out_of_stock",
                format!(
                    "{} of {:?} asked, {available} available",
                    pick.quantity, pick.sku
                ),
            ),
            None => Rejection::new("unknown_sku", format!("no SKU {:?}", pick.sku)),
        }
        .into());
    }
    let status = ReservationStatus::created_by(op).expect("take is only called for try and action");
    sqlx::query(
        "INSERT INTO reservations (gid, branch_id, sku, quantity, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(branch.gid.as_i64())
    .bind(&branch.branch_id)
    .bind(&pick.sku)
    .bind(pick.quantity)
    .bind(status.as_str())
    .bind(store::now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Confirm, Cancel, Compensate: move the reservation's status on, then its items. Quantities
/// come from the reservation, not from the payload.
async fn settle(conn: &mut AnyConnection, branch: &BranchRef, op: Op) -> Result<(), OpError> {
    let (from, to) =
        ReservationStatus::transition(op).expect("settle is only called for second-phase ops");
    let reservation: Option<(String, i64)> = sqlx::query_as(
        "UPDATE reservations SET status = $1, updated_at = $2 WHERE gid = $3 AND branch_id = $4 AND status = $5 \
         RETURNING sku, quantity",
    )
    .bind(to.as_str())
    .bind(store::now_ms())
    .bind(branch.gid.as_i64())
    .bind(&branch.branch_id)
    .bind(from.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((sku, qty)) = reservation else {
        return Err(Rejection::new(
            "no_reservation",
            format!("no {} reservation for this branch to {op}", from.as_str()),
        )
        .into());
    };
    // (available, reserved, sold) deltas.
    let (a, r, s) = match op {
        Op::Confirm => (0, -qty, qty),
        Op::Cancel => (qty, -qty, 0),
        Op::Compensate => (qty, 0, -qty),
        Op::Try | Op::Action => unreachable!("handled by take"),
    };
    let applied = sqlx::query(
        "UPDATE skus SET available = available + $1, reserved = reserved + $2, sold = sold + $3, updated_at = $5 \
         WHERE id = $4 AND reserved + $2 >= 0 AND sold + $3 >= 0",
    )
    .bind(a)
    .bind(r)
    .bind(s)
    .bind(&sku)
    .bind(store::now_ms())
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if !applied {
        return Err(Rejection::new(
            "stock_inconsistent",
            format!("cannot {op} {qty} of {sku:?}"),
        )
        .into());
    }
    Ok(())
}
