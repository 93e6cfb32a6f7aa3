//! The order branch: the `tcc::Handler` that inserts, confirms and cancels orders behind the barrier.

use crate::domain::{NewOrder, OrderStatus};
use futures::future::BoxFuture;
use sqlx::AnyConnection;
use tcc::{BranchRef, Handler, Op, OpError, Rejection};

/// The `tcc::Handler` of order-svc.
#[derive(Debug, Default)]
pub struct Orders;

impl Handler for Orders {
    type Payload = NewOrder;

    fn decode(&self, payload: &[u8]) -> Result<NewOrder, Rejection> {
        NewOrder::from_payload(payload)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        branch: &'a BranchRef,
        op: Op,
        order: &'a NewOrder,
    ) -> BoxFuture<'a, Result<(), OpError>> {
        Box::pin(async move {
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
        })
    }

    /// The Try never arrived: store the order as CANCELLED so it can be looked up.
    fn null_compensation<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        branch: &'a BranchRef,
        _op: Op,
        order: &'a NewOrder,
    ) -> BoxFuture<'a, Result<(), OpError>> {
        Box::pin(insert(conn, branch, order, OrderStatus::Cancelled))
    }
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
