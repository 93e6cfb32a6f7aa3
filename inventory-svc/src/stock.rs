//! The inventory branch handler: each op of [`crate::domain::plan`] as conditional updates
//! inside the barrier's transaction.

use crate::domain::{Delta, Pick, Plan, ReservationStatus, Row, Step};
use futures::future::BoxFuture;
use sqlx::AnyConnection;
use tcc::barrier::Item;
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
                    insert_reservations(conn, status, &[(branch, pick)]).await
                }
                Plan::Move {
                    row,
                    from,
                    to,
                    delta,
                } => {
                    let (sku, qty) =
                        move_reservation(conn, branch, (pick, op), row, (from, to)).await?;
                    if !move_items(conn, &sku, qty, delta).await? {
                        return Err(inconsistent(&sku, qty, op));
                    }
                    Ok(())
                }
            }
        })
    }

    /// A batch of one kind of op, together where many items move one SKU: its counts change
    /// once per batch instead of once per item ([`creates_together`], [`moves_together`]).
    /// Any other batch, item by item.
    fn apply_batch<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        items: &'a [Item<'a, Pick>],
    ) -> BoxFuture<'a, Result<(), (usize, OpError)>> {
        Box::pin(async move {
            if let Some((op, step)) = tcc::one_kind(items, |p| p.step) {
                match crate::domain::plan(step, op) {
                    Ok(Plan::Create { status, delta }) => {
                        return creates_together(self, conn, items, status, delta).await
                    }
                    Ok(Plan::Move {
                        row: Row::Own,
                        from,
                        to,
                        delta,
                    }) => return moves_together(conn, items, op, (from, to), delta).await,
                    _ => {}
                }
            }
            tcc::apply_each(self, conn, items).await
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

/// The reservations first phases leave, in as few statements as their number allows.
async fn insert_reservations(
    conn: &mut AnyConnection,
    status: ReservationStatus,
    rows: &[(&BranchRef, &Pick)],
) -> Result<(), OpError> {
    let now = store::now_ms();
    let head = "INSERT INTO reservations (gid, branch_id, sku, quantity, status, created_at, updated_at) VALUES";
    store::insert_many(conn, head, 7, rows, |query, (branch, pick)| {
        query
            .bind(branch.gid.as_i64())
            .bind(&branch.branch_id)
            .bind(&pick.sku)
            .bind(pick.quantity)
            .bind(status.as_str())
            .bind(now)
            .bind(now)
    })
    .await?;
    Ok(())
}

/// Moves the branch's reservation (or a restock's, its transaction's return) from `from` to
/// `to`; its SKU and quantity.
async fn move_reservation(
    conn: &mut AnyConnection,
    branch: &BranchRef,
    (pick, op): (&Pick, Op),
    row: Row,
    (from, to): (ReservationStatus, ReservationStatus),
) -> Result<(String, i64), OpError> {
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
    moved.ok_or_else(|| {
        // The barrier lets a second-phase op through only when its first phase committed; a
        // restock runs only after its return succeeded. So this is a protocol violation, not
        // a business outcome.
        Rejection::new(
            "no_reservation",
            format!("no {} reservation for this branch to {op}", from.as_str()),
        )
        .into()
    })
}

/// First phases of one kind together: when they all take one SKU (a best seller, under load),
/// its items move once for their sum, then each reservation is made as alone. Every item moves
/// the SKU's counts the same way, so the sum fits exactly when each would in turn. For several
/// SKUs, or a sum that does not fit, nothing has changed yet and each runs as alone, where the
/// refused one is named.
async fn creates_together(
    handler: &Stock,
    conn: &mut AnyConnection,
    items: &[Item<'_, Pick>],
    status: ReservationStatus,
    delta: Delta,
) -> Result<(), (usize, OpError)> {
    let together = tcc::one_key_sum(items, |i| &i.payload.sku, |i| i.payload.quantity);
    let moved = match together {
        Some((sku, sum)) => move_items(conn, sku, sum, delta)
            .await
            .map_err(|e| (0, e))?,
        None => false,
    };
    if !moved {
        return tcc::apply_each(handler, conn, items).await;
    }
    let rows: Vec<_> = items.iter().map(|i| (i.branch, i.payload)).collect();
    insert_reservations(conn, status, &rows)
        .await
        .map_err(|e| (0, e))
}

/// Second phases (or compensations) of one kind together: each reservation moved as alone, and
/// each SKU's counts once for the sum of its reservations, which takes effect exactly when each
/// would in turn. A move refused is a protocol violation: the batch is rolled back and each
/// runs on its own.
async fn moves_together(
    conn: &mut AnyConnection,
    items: &[Item<'_, Pick>],
    op: Op,
    (from, to): (ReservationStatus, ReservationStatus),
    delta: Delta,
) -> Result<(), (usize, OpError)> {
    // SKU → (the sum, the first item that moves it).
    let mut skus: std::collections::BTreeMap<String, (i64, usize)> = Default::default();
    for (k, item) in items.iter().enumerate() {
        let (sku, qty) =
            move_reservation(conn, item.branch, (item.payload, op), Row::Own, (from, to))
                .await
                .map_err(|e| (k, e))?;
        let (sum, _) = skus.entry(sku).or_insert((0, k));
        // Quantities are bounded per item, a batch at most a few hundred.
        *sum = sum.saturating_add(qty);
    }
    for (sku, (qty, k)) in &skus {
        if !move_items(conn, sku, *qty, delta)
            .await
            .map_err(|e| (*k, e))?
        {
            return Err((*k, inconsistent(sku, *qty, op)));
        }
    }
    Ok(())
}

fn inconsistent(sku: &str, qty: i64, op: Op) -> OpError {
    Rejection::new(
        "stock_inconsistent",
        format!("cannot {op} {qty} of {sku:?}"),
    )
    .into()
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
