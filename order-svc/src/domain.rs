//! What an order branch asks for, checked; and the life of an order. No I/O here.

use proto::pay::v1::OrderBranch;
use serde::{Deserialize, Serialize};
use tcc::{check, Op, Rejection};

/// A validated order branch payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub order_id: i64,
    pub user_id: String,
    pub sku: String,
    pub quantity: i64,
    pub amount: i64,
}

impl NewOrder {
    /// Decodes and checks a `pay.v1.OrderBranch`.
    pub fn from_payload(payload: &[u8]) -> Result<NewOrder, Rejection> {
        let p: OrderBranch = check::decode("pay.v1.OrderBranch", payload)?;
        let order_id = i64::try_from(p.order_id)
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| Rejection::invalid("order_id must be between 1 and 2^63-1"))?;
        check::id("user_id", &p.user_id)?;
        check::id("sku", &p.sku)?;
        check::units("quantity", p.quantity)?;
        check::units("amount", p.amount)?;
        Ok(NewOrder {
            order_id,
            user_id: p.user_id,
            sku: p.sku,
            quantity: p.quantity,
            amount: p.amount,
        })
    }
}

/// The status of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        match s {
            "PENDING" => Some(OrderStatus::Pending),
            "CONFIRMED" => Some(OrderStatus::Confirmed),
            "CANCELLED" => Some(OrderStatus::Cancelled),
            _ => None,
        }
    }

    /// The status `op` creates an order in: Try → PENDING, Action → CONFIRMED, and a null
    /// Cancel/Compensate → CANCELLED.
    pub fn created_by(op: Op) -> OrderStatus {
        match op {
            Op::Try => OrderStatus::Pending,
            Op::Action => OrderStatus::Confirmed,
            Op::Confirm => OrderStatus::Confirmed,
            Op::Cancel | Op::Compensate => OrderStatus::Cancelled,
        }
    }

    /// The (from, to) transition `op` makes on an existing order.
    pub fn transition(op: Op) -> Option<(OrderStatus, OrderStatus)> {
        match op {
            Op::Confirm => Some((OrderStatus::Pending, OrderStatus::Confirmed)),
            Op::Cancel => Some((OrderStatus::Pending, OrderStatus::Cancelled)),
            Op::Compensate => Some((OrderStatus::Confirmed, OrderStatus::Cancelled)),
            Op::Try | Op::Action => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn payload(order_id: u64, quantity: i64, amount: i64) -> Vec<u8> {
        OrderBranch {
            order_id,
            user_id: "alice".into(),
            sku: "SKU-1".into(),
            quantity,
            amount,
        }
        .encode_to_vec()
    }

    #[test]
    fn a_well_formed_order_is_accepted_and_bad_ones_are_invalid() {
        assert_eq!(
            NewOrder::from_payload(&payload(5, 1, 100))
                .unwrap()
                .order_id,
            5
        );
        for bad in [
            payload(0, 1, 100),
            payload(u64::MAX, 1, 100),
            payload(5, 0, 100),
            payload(5, 1, -1),
        ] {
            assert_eq!(NewOrder::from_payload(&bad).unwrap_err().code, "invalid");
        }
    }

    #[test]
    fn statuses_round_trip_and_undo_ops_start_where_their_do_left_off() {
        for s in [
            OrderStatus::Pending,
            OrderStatus::Confirmed,
            OrderStatus::Cancelled,
        ] {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(
            OrderStatus::transition(Op::Cancel).unwrap().0,
            OrderStatus::created_by(Op::Try)
        );
        assert_eq!(
            OrderStatus::transition(Op::Compensate).unwrap().0,
            OrderStatus::created_by(Op::Action)
        );
    }
}
