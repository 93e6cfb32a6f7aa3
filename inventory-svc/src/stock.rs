//! The inventory branch handler: each op of [`crate::domain::plan`] as conditional updates
//! inside the barrier's transaction.

use crate::domain::{Pick, Plan, Row, Step};
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
            match crate::domain::plan(pick.step, op)? {
                Plan::Create { status, delta } => {
                    if !move_items(conn, &pick.sku, pick.quantity, delta).await? {
                        return Err(shortfall(conn, pick).await?.into());
                    }
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
                Plan::Move {
                    row,
                    from,
                    to,
                    delta,
                } => {
                    // Quantities come from the reservation, not from the payload, so a replayed
                    // or altered payload cannot move other items.
                    let moved: Option<(String, i64)> = match row {
                        Row::Own => sqlx::query_as(
                            "UPDATE reservations SET status = $1, updated_at = $2 \
                             WHERE gid = $3 AND branch_id = $4 AND status = $5 RETURNING sku, quantity",
                        )
                        .bind(to.as_str())
                        .bind(store::now_ms())
                        .bind(branch.gid.as_i64())
                        .bind(&branch.branch_id)
                        .bind(from.as_str()),
                        // The restock moves its transaction's return: exactly one row (a
                        // refund has one return step), and only one of the SKU and quantity the
                        // restock names.
                        Row::Returning => sqlx::query_as(
                            "UPDATE reservations SET status = $1, updated_at = $2 WHERE gid = $3 AND status = $5 AND branch_id = ( \
                               SELECT MIN(r.branch_id) FROM reservations r WHERE r.gid = $3 AND r.branch_id <> $4 \
                               AND r.status = $5 AND r.sku = $6 AND r.quantity = $7) \
                             RETURNING sku, quantity",
                        )
                        .bind(to.as_str())
                        .bind(store::now_ms())
                        .bind(branch.gid.as_i64())
                        .bind(&branch.branch_id)
                        .bind(from.as_str())
                        .bind(&pick.sku)
                        .bind(pick.quantity),
                    }
                    .fetch_optional(&mut *conn)
                    .await?;
                    let Some((sku, qty)) = moved else {
                        // The barrier lets a second-phase op through only when its first phase
                        // committed; a restock runs only after its return succeeded. So this is a
                        // protocol violation, not a business outcome.
                        return Err(Rejection::new(
                            "no_reservation",
                            format!("no {} reservation for this branch to {op}", from.as_str()),
                        )
                        .into());
                    };
                    if !move_items(conn, &sku, qty, delta).await? {
                        return Err(Rejection::new(
                            "stock_inconsistent",
                            format!("cannot {op} {qty} of {sku:?}"),
                        )
                        .into());
                    }
                    Ok(())
                }
            }
        })
    }

    /// A batch's SKUs, locked in id order before its first item: two batches settling the same
    /// SKUs in different orders would otherwise deadlock on PostgreSQL.
    fn lock_batch<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        picks: &'a [&'a Pick],
    ) -> BoxFuture<'a, Result<(), OpError>> {
        Box::pin(async move {
            let skus = picks.iter().map(|p| p.sku.as_str());
            Ok(tcc::barrier::lock_in_id_order(conn, "skus", skus).await?)
        })
    }
}

/// Moves `qty × delta` of (available, reserved, sold) on `sku`, none going below zero; false
/// when the SKU is missing or short.
async fn move_items(
    conn: &mut AnyConnection,
    sku: &str,
    qty: i64,
    (a, r, s): crate::domain::Delta,
) -> Result<bool, OpError> {
    let (a, r, s) = (a * qty, r * qty, s * qty);
    Ok(sqlx::query(
        "UPDATE skus SET available = available + $1, reserved = reserved + $2, sold = sold + $3, updated_at = $5 \
         WHERE id = $4 AND available + $1 >= 0 AND reserved + $2 >= 0 AND sold + $3 >= 0",
    )
    .bind(a)
    .bind(r)
    .bind(s)
    .bind(sku)
    .bind(store::now_ms())
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1)
}

/// Why a first phase could not move its items: no such SKU, too few available, or (a return)
/// fewer sold than it brings back.
async fn shortfall(conn: &mut AnyConnection, pick: &Pick) -> Result<Rejection, OpError> {
    let row: Option<(i64, i64)> = sqlx::query_as("SELECT available, sold FROM skus WHERE id = $1")
        .bind(&pick.sku)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match (row, pick.step) {
        (None, _) => Rejection::new("unknown_sku", format!("no SKU {:?}", pick.sku)),
        (Some((_, sold)), Step::Return | Step::Restock) => Rejection::new(
            "not_sold",
            format!(
                "{} of {:?} to bring back, {sold} sold",
                pick.quantity, pick.sku
            ),
        ),
        (Some((available, _)), Step::Take) => Rejection::new(
            "out_of_stock",
            format!(
                "{} of {:?} asked, {available} available",
                pick.quantity, pick.sku
            ),
        ),
    })
}
