//! What an order branch asks for, checked; and the life of an order and of its refund. No I/O
//! here.
//!
//! An order: PENDING (Try) → CONFIRMED (Confirm) or CANCELLED (Cancel); as a Saga, CONFIRMED
//! (Action) → CANCELLED (Compensate). A confirmed order can be refunded once, in full or in
//! part: CONFIRMED → REFUNDING (the refund's first step) → REFUNDED (its last), or back to
//! CONFIRMED when the refund is compensated (the refund then says FAILED, and another may be
//! asked for).

use proto::pay::v1::{OrderBranch, RefundStage};
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

/// What an order-svc branch is: an order to place, or a step of a refund of an existing one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderBranchKind {
    Place(NewOrder),
    Refund(RefundStep),
}

impl OrderBranchKind {
    /// Decodes and checks a `pay.v1.OrderBranch` (a refund step when `refund` is set).
    pub fn from_payload(payload: &[u8]) -> Result<OrderBranchKind, Rejection> {
        let order = NewOrder::from_payload(payload)?;
        let p: OrderBranch = check::decode("pay.v1.OrderBranch", payload)?;
        let Some(r) = p.refund else {
            return Ok(OrderBranchKind::Place(order));
        };
        let refund_id = i64::try_from(r.refund_id)
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| Rejection::invalid("refund_id must be between 1 and 2^63-1"))?;
        check::units("refund quantity", r.quantity)?;
        if r.quantity > order.quantity {
            return Err(Rejection::invalid(
                "a refund's quantity is at most the order's",
            ));
        }
        if refund_amount(order.amount, order.quantity, r.quantity) != Some(r.amount) {
            return Err(Rejection::invalid(
                "a refund's amount is the order's price per item times its quantity",
            ));
        }
        let stage = match RefundStage::try_from(r.stage) {
            Ok(RefundStage::Start) => Stage::Start,
            Ok(RefundStage::Finish) => Stage::Finish,
            _ => return Err(Rejection::invalid("a refund step needs a stage")),
        };
        Ok(OrderBranchKind::Refund(RefundStep {
            order,
            refund_id,
            quantity: r.quantity,
            amount: r.amount,
            stage,
        }))
    }
}

/// What `quantity` items of an order of `order_quantity` items for `order_amount` are worth: the
/// order's price per item (the amount is always price × quantity) times `quantity`.
pub fn refund_amount(order_amount: i64, order_quantity: i64, quantity: i64) -> Option<i64> {
    if order_quantity <= 0 || order_amount % order_quantity != 0 {
        return None;
    }
    (order_amount / order_quantity).checked_mul(quantity)
}

/// One step of a refund, on the order it refunds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundStep {
    /// The order as it was placed (id, buyer, SKU, quantity, amount).
    pub order: NewOrder,
    pub refund_id: i64,
    pub quantity: i64,
    pub amount: i64,
    pub stage: Stage,
}

/// Which end of the refund a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The first step: the order becomes REFUNDING and the refund is recorded.
    Start,
    /// The last step: once the money and the items are back, the order is REFUNDED.
    Finish,
}

/// The status of a refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStatus {
    Refunding,
    Refunded,
    /// Compensated (or its first step never ran): the order is CONFIRMED again.
    Failed,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Refunding => "REFUNDING",
            RefundStatus::Refunded => "REFUNDED",
            RefundStatus::Failed => "FAILED",
        }
    }
}

/// What a refund step does to the order and its refund: the order moves `order` (from, to), the
/// refund `refund` (from, to; `None` from: the refund row is created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundMove {
    pub order: (OrderStatus, OrderStatus),
    pub refund: (Option<RefundStatus>, RefundStatus),
}

impl RefundStep {
    /// Every (stage, op) of a refund there is, in one table; the rest are refused as `invalid`.
    pub fn plan(stage: Stage, op: Op) -> Result<RefundMove, Rejection> {
        use OrderStatus as O;
        use RefundStatus as R;
        let m = |order, refund| Ok(RefundMove { order, refund });
        match (stage, op) {
            (Stage::Start, Op::Action) => m((O::Confirmed, O::Refunding), (None, R::Refunding)),
            (Stage::Start, Op::Compensate) => m(
                (O::Refunding, O::Confirmed),
                (Some(R::Refunding), R::Failed),
            ),
            (Stage::Finish, Op::Action) => m(
                (O::Refunding, O::Refunded),
                (Some(R::Refunding), R::Refunded),
            ),
            (Stage::Finish, Op::Compensate) => m(
                (O::Refunded, O::Refunding),
                (Some(R::Refunded), R::Refunding),
            ),
            (_, Op::Try | Op::Confirm | Op::Cancel) => Err(Rejection::invalid(
                "a refund's steps are Saga actions, not TCC",
            )),
        }
    }
}

/// The status of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Cancelled,
    Refunding,
    Refunded,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Confirmed,
        OrderStatus::Cancelled,
        OrderStatus::Refunding,
        OrderStatus::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Cancelled => "CANCELLED",
            OrderStatus::Refunding => "REFUNDING",
            OrderStatus::Refunded => "REFUNDED",
        }
    }

    pub fn parse(s: &str) -> Option<OrderStatus> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Why an order in this status cannot be refunded now: the code and words of the 409.
    pub fn refusal(self) -> Option<(&'static str, &'static str)> {
        match self {
            OrderStatus::Confirmed => None,
            OrderStatus::Refunding => {
                Some(("refund_in_progress", "a refund of this order is under way"))
            }
            OrderStatus::Refunded => Some(("already_refunded", "this order was refunded")),
            // Decided by the coordinator, its Confirm (or Cancel) not here yet: a matter of
            // moments.
            OrderStatus::Pending => Some((
                "order_settling",
                "the order is still being confirmed or cancelled; retry in a moment",
            )),
            OrderStatus::Cancelled => {
                Some(("not_refundable", "only a confirmed order can be refunded"))
            }
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
            refund: None,
        }
        .encode_to_vec()
    }

    fn refund(quantity: i64, amount: i64, stage: RefundStage) -> Vec<u8> {
        OrderBranch {
            order_id: 5,
            user_id: "alice".into(),
            sku: "SKU-1".into(),
            quantity: 3,
            amount: 300,
            refund: Some(proto::pay::v1::RefundStep {
                refund_id: 9,
                quantity,
                amount,
                stage: stage as i32,
            }),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_refund_step_is_at_most_the_order_at_its_price_and_names_its_stage() {
        match OrderBranchKind::from_payload(&refund(2, 200, RefundStage::Start)).unwrap() {
            OrderBranchKind::Refund(r) => {
                assert_eq!((r.refund_id, r.quantity, r.amount), (9, 2, 200));
                assert_eq!((r.stage, r.order.order_id), (Stage::Start, 5));
            }
            other => panic!("a refund decoded as {other:?}"),
        }
        assert!(matches!(
            OrderBranchKind::from_payload(&payload(5, 1, 100)).unwrap(),
            OrderBranchKind::Place(_)
        ));
        for bad in [
            refund(4, 400, RefundStage::Start),
            refund(2, 199, RefundStage::Finish),
            refund(0, 0, RefundStage::Start),
            refund(1, 100, RefundStage::Unspecified),
        ] {
            assert_eq!(
                OrderBranchKind::from_payload(&bad).unwrap_err().code,
                "invalid"
            );
        }
        assert_eq!(refund_amount(300, 3, 2), Some(200));
        assert_eq!(refund_amount(301, 3, 2), None);
    }

    #[test]
    fn a_refund_s_compensations_undo_its_actions_and_it_is_no_tcc() {
        for stage in [Stage::Start, Stage::Finish] {
            let action = RefundStep::plan(stage, Op::Action).unwrap();
            let undo = RefundStep::plan(stage, Op::Compensate).unwrap();
            assert_eq!(undo.order, (action.order.1, action.order.0));
            assert_eq!(undo.refund.0, Some(action.refund.1));
            for op in [Op::Try, Op::Confirm, Op::Cancel] {
                assert_eq!(RefundStep::plan(stage, op).unwrap_err().code, "invalid");
            }
        }
        // The start leaves what the finish takes.
        let start = RefundStep::plan(Stage::Start, Op::Action).unwrap();
        let finish = RefundStep::plan(Stage::Finish, Op::Action).unwrap();
        assert_eq!(finish.order.0, start.order.1);
        assert_eq!(finish.refund.0, Some(start.refund.1));
        assert_eq!(OrderStatus::Confirmed.refusal(), None);
        assert!(OrderStatus::ALL
            .into_iter()
            .filter(|s| *s != OrderStatus::Confirmed)
            .all(|s| s.refusal().is_some()));
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
        for s in OrderStatus::ALL {
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
