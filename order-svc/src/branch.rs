//! The order branch: the `tcc::Handler` that inserts, confirms and cancels orders, and moves a
//! refund's first and last steps, behind the barrier.

use crate::domain::{NewOrder, OrderBranchKind, OrderStatus, RefundStatus, RefundStep, Stage};
use futures::future::BoxFuture;
use sqlx::AnyConnection;
use tcc::{BranchRef, Handler, Op, OpError, Rejection};

/// The `tcc::Handler` of order-svc.
#[derive(Debug, Default)]
pub struct Orders;

impl Handler for Orders {
    type Payload = OrderBranchKind;

    fn decode(&self, payload: &[u8]) -> Result<OrderBranchKind, Rejection> {
        OrderBranchKind::from_payload(payload)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        branch: &'a BranchRef,
        op: Op,
        kind: &'a OrderBranchKind,
    ) -> BoxFuture<'a, Result<(), OpError>> {
        Box::pin(async move {
            match kind {
                OrderBranchKind::Place(order) => place(conn, branch, op, order).await,
                OrderBranchKind::Refund(step) => refund(conn, branch, op, step).await,
            }
        })
    }

    /// The Try never arrived: store the order as CANCELLED so it can be looked up. A refund's
    /// first step never arrived: store the refund as FAILED, so every refund the coordinator
    /// rolled back has a row that says so (the order was never touched).
    fn null_compensation<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        branch: &'a BranchRef,
        _op: Op,
        kind: &'a OrderBranchKind,
    ) -> BoxFuture<'a, Result<(), OpError>> {
        Box::pin(async move {
            match kind {
                OrderBranchKind::Place(order) => {
                    insert(conn, branch, order, OrderStatus::Cancelled).await
                }
                OrderBranchKind::Refund(step) if step.stage == Stage::Start => {
                    insert_refund(conn, branch, step, RefundStatus::Failed).await
                }
                OrderBranchKind::Refund(_) => Ok(()),
            }
        })
    }
}

/// An order's own branch: insert it (Try, Action, a null Cancel), or move it on.
async fn place(
    conn: &mut AnyConnection,
    branch: &BranchRef,
    op: Op,
    order: &NewOrder,
) -> Result<(), OpError> {
    match OrderStatus::transition(op) {
        None => insert(conn, branch, order, OrderStatus::created_by(op)).await,
        Some((from, to)) => {
            let moved = sqlx::query(
                        "UPDATE orders SET status = $1, updated_at = $2 WHERE gid = $3 AND branch_id = $4 AND id = $5 AND status = $6",
                    )
                    .bind(to.as_str())
                    .bind(store::now_ms())
                    .bind(branch.gid.as_i64())
                    .bind(&branch.branch_id)
                    .bind(order.order_id)
                    .bind(from.as_str())
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
            if moved == 1 {
                Ok(())
            } else {
                Err(Rejection::new(
                    "no_order",
                    format!(
                        "no {} order {} for this branch to {op}",
                        from.as_str(),
                        order.order_id
                    ),
                )
                .into())
            }
        }
    }
}

/// A refund's first or last step ([`RefundStep::plan`]): the order moves on (only the buyer's
/// order, and only if it has the items to refund), then the refund row is made or moved.
async fn refund(
    conn: &mut AnyConnection,
    branch: &BranchRef,
    op: Op,
    step: &RefundStep,
) -> Result<(), OpError> {
    let plan = RefundStep::plan(step.stage, op)?;
    let (from, to) = plan.order;
    let moved = sqlx::query(
        "UPDATE orders SET status = $1, updated_at = $2 \
         WHERE id = $3 AND user_id = $4 AND status = $5 AND quantity >= $6",
    )
    .bind(to.as_str())
    .bind(store::now_ms())
    .bind(step.order.order_id)
    .bind(&step.order.user_id)
    .bind(from.as_str())
    .bind(step.quantity)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if moved != 1 {
        let now: Option<String> =
            sqlx::query_scalar("SELECT status FROM orders WHERE id = $1 AND user_id = $2")
                .bind(step.order.order_id)
                .bind(&step.order.user_id)
                .fetch_optional(&mut *conn)
                .await?;
        let refusal = now
            .as_deref()
            .and_then(OrderStatus::parse)
            .filter(|_| op == Op::Action && step.stage == Stage::Start)
            .and_then(OrderStatus::refusal);
        return Err(match (refusal, now) {
            (Some((code, words)), _) => Rejection::new(code, words),
            (None, None) => Rejection::new(
                "no_order",
                format!("no order {} of this buyer", step.order.order_id),
            ),
            (None, Some(status)) => Rejection::new(
                "no_order",
                format!(
                    "order {} is {status}, not {} with {} items to {op}",
                    step.order.order_id,
                    from.as_str(),
                    step.quantity
                ),
            ),
        }
        .into());
    }
    match plan.refund {
        (None, status) => insert_refund(conn, branch, step, status).await,
        (Some(from), to) => {
            let moved = sqlx::query(
                "UPDATE refunds SET status = $1, updated_at = $2 WHERE gid = $3 AND id = $4 AND status = $5",
            )
            .bind(to.as_str())
            .bind(store::now_ms())
            .bind(branch.gid.as_i64())
            .bind(step.refund_id)
            .bind(from.as_str())
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if moved == 1 {
                Ok(())
            } else {
                Err(Rejection::new(
                    "no_refund",
                    format!(
                        "no {} refund {} for this transaction to {op}",
                        from.as_str(),
                        step.refund_id
                    ),
                )
                .into())
            }
        }
    }
}

async fn insert_refund(
    conn: &mut AnyConnection,
    branch: &BranchRef,
    step: &RefundStep,
    status: RefundStatus,
) -> Result<(), OpError> {
    // The first step's row must be new (the order's move above keeps a second one out); a null
    // compensation's may have been written by an earlier attempt of it.
    sqlx::query(if status == RefundStatus::Failed {
        "INSERT INTO refunds (id, gid, order_id, user_id, quantity, amount, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT DO NOTHING"
    } else {
        "INSERT INTO refunds (id, gid, order_id, user_id, quantity, amount, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
    })
    .bind(step.refund_id)
    .bind(branch.gid.as_i64())
    .bind(step.order.order_id)
    .bind(&step.order.user_id)
    .bind(step.quantity)
    .bind(step.amount)
    .bind(status.as_str())
    .bind(store::now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn insert(
    conn: &mut AnyConnection,
    branch: &BranchRef,
    order: &NewOrder,
    status: OrderStatus,
) -> Result<(), OpError> {
    let now = store::now_ms();
    let inserted = sqlx::query(
        "INSERT INTO orders (id, gid, branch_id, user_id, sku, quantity, amount, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) ON CONFLICT DO NOTHING",
    )
    .bind(order.order_id)
    .bind(branch.gid.as_i64())
    .bind(&branch.branch_id)
    .bind(&order.user_id)
    .bind(&order.sku)
    .bind(order.quantity)
    .bind(order.amount)
    .bind(status.as_str())
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        Ok(())
    } else {
        Err(Rejection::new(
            "order_exists",
            format!(
                "order {} already exists for another transaction",
                order.order_id
            ),
        )
        .into())
    }
}
