//! What an inventory branch asks for, checked; and the life of a reservation, as one table
//! ([`plan`]) from (step, op) to what happens to the items. No I/O here.
//!
//! An order's branch takes items: a Try reserves them (`available → reserved`), its Confirm sells
//! them, its Cancel releases them; a Saga Action sells at once, its Compensate puts them back.
//!
//! A refund's two inventory branches bring items back without ever making a compensation
//! depend on who bought what since. Its `return` step (running at the same time as the refund's
//! money) holds the items it brings back in `reserved`, out of sale; were the refund to fail,
//! its Compensate sells them again, which cannot fail for want of stock. Only once the money is
//! back does the `restock` step put them on sale. So `reserved` means "held by a transaction
//! still under way", for orders and refunds alike, and the audit's "nothing left reserved" also
//! sees a refund left half done.

use proto::pay::v1::{InventoryBranch, StockStep};
use tcc::{check, Op, Rejection};

/// What a branch does with its items (`pay.v1.StockStep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// An order's: reserve (Try) or take (Action).
    Take,
    /// A refund's: bring sold items back, held.
    Return,
    /// A refund's: put the items its transaction holds back on sale.
    Restock,
}

/// A validated inventory branch payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    pub sku: String,
    pub quantity: i64,
    pub step: Step,
}

impl Pick {
    /// Decodes and checks a `pay.v1.InventoryBranch`: an order's items, or a refund's step.
    pub fn from_payload(payload: &[u8]) -> Result<Pick, Rejection> {
        let p: InventoryBranch = check::decode("pay.v1.InventoryBranch", payload)?;
        let (sku, quantity, step) = match p.refund {
            None => (p.sku, p.quantity, Step::Take),
            Some(r) => {
                if !p.sku.is_empty() || p.quantity != 0 {
                    return Err(Rejection::invalid(
                        "a refund's step names its SKU and quantity in `refund` only",
                    ));
                }
                let step = match StockStep::try_from(r.step) {
                    Ok(StockStep::Return) => Step::Return,
                    Ok(StockStep::Restock) => Step::Restock,
                    Ok(StockStep::Unspecified) | Err(_) => {
                        return Err(Rejection::invalid(format!(
                            "unknown refund step {}",
                            r.step
                        )))
                    }
                };
                (r.sku, r.quantity, step)
            }
        };
        check::id("sku", &sku)?;
        check::units("quantity", quantity)?;
        Ok(Pick {
            sku,
            quantity,
            step,
        })
    }
}

/// Where the items of one branch are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    /// Try: moved from available to reserved.
    Reserved,
    /// Confirm: moved from reserved to sold.
    Sold,
    /// Cancel: back from reserved to available.
    Released,
    /// Saga Action: moved from available to sold at once.
    Taken,
    /// Saga Compensate: back from sold to available.
    Returned,
    /// A refund's return: moved from sold to reserved, held until the refund is done.
    Returning,
    /// The refund's restock: the held items are back on sale.
    Restocked,
    /// The refund failed: the held items are sold again.
    Kept,
}

impl ReservationStatus {
    pub const ALL: [ReservationStatus; 8] = [
        ReservationStatus::Reserved,
        ReservationStatus::Sold,
        ReservationStatus::Released,
        ReservationStatus::Taken,
        ReservationStatus::Returned,
        ReservationStatus::Returning,
        ReservationStatus::Restocked,
        ReservationStatus::Kept,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Reserved => "reserved",
            ReservationStatus::Sold => "sold",
            ReservationStatus::Released => "released",
            ReservationStatus::Taken => "taken",
            ReservationStatus::Returned => "returned",
            ReservationStatus::Returning => "returning",
            ReservationStatus::Restocked => "restocked",
            ReservationStatus::Kept => "kept",
        }
    }

    /// Whether items in this status count in `reserved` (held by a transaction under way).
    pub fn holds_items(self) -> bool {
        matches!(
            self,
            ReservationStatus::Reserved | ReservationStatus::Returning
        )
    }
}

/// Changes of (available, reserved, sold), per item.
pub type Delta = (i64, i64, i64);

/// Which reservation row an op moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// The branch's own (created by its Try or Action).
    Own,
    /// The row of its transaction's `return` step (a restock moves another branch's items).
    Returning,
}

/// What an op does to a branch's items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Move the items by `delta` and record a reservation in `status`.
    Create {
        status: ReservationStatus,
        delta: Delta,
    },
    /// Move `row` from `from` to `to`, and its items by `delta`.
    Move {
        row: Row,
        from: ReservationStatus,
        to: ReservationStatus,
        delta: Delta,
    },
}

/// Every (step, op) there is, in one table; the rest are refused as `invalid`.
pub fn plan(step: Step, op: Op) -> Result<Plan, Rejection> {
    use ReservationStatus as S;
    let create = |status, delta| Ok(Plan::Create { status, delta });
    let own = |from, to, delta| {
        Ok(Plan::Move {
            row: Row::Own,
            from,
            to,
            delta,
        })
    };
    match (step, op) {
        (Step::Take, Op::Try) => create(S::Reserved, (-1, 1, 0)),
        (Step::Take, Op::Action) => create(S::Taken, (-1, 0, 1)),
        (Step::Take, Op::Confirm) => own(S::Reserved, S::Sold, (0, -1, 1)),
        (Step::Take, Op::Cancel) => own(S::Reserved, S::Released, (1, -1, 0)),
        (Step::Take, Op::Compensate) => own(S::Taken, S::Returned, (1, 0, -1)),
        (Step::Return, Op::Action) => create(S::Returning, (0, 1, -1)),
        (Step::Return, Op::Compensate) => own(S::Returning, S::Kept, (0, -1, 1)),
        (Step::Restock, Op::Action) => Ok(Plan::Move {
            row: Row::Returning,
            from: S::Returning,
            to: S::Restocked,
            delta: (1, -1, 0),
        }),
        (Step::Restock, Op::Compensate) => Ok(Plan::Move {
            row: Row::Returning,
            from: S::Restocked,
            to: S::Returning,
            delta: (-1, 1, 0),
        }),
        (Step::Return | Step::Restock, Op::Try | Op::Confirm | Op::Cancel) => Err(
            Rejection::invalid("a refund's inventory steps are Saga actions, not TCC"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn payload(sku: &str, quantity: i64) -> Vec<u8> {
        InventoryBranch {
            sku: sku.into(),
            quantity,
            refund: None,
        }
        .encode_to_vec()
    }

    #[test]
    fn a_well_formed_pick_is_accepted_and_bad_ones_are_invalid() {
        let pick = Pick::from_payload(&payload("SKU-1", 3)).unwrap();
        assert_eq!((pick.quantity, pick.step), (3, Step::Take));
        let refund = |step: i32, sku: &str| {
            InventoryBranch {
                sku: sku.into(),
                quantity: 0,
                refund: Some(proto::pay::v1::RefundItems {
                    sku: "SKU-1".into(),
                    quantity: 2,
                    step,
                }),
            }
            .encode_to_vec()
        };
        let back = Pick::from_payload(&refund(StockStep::Return as i32, "")).unwrap();
        assert_eq!(
            (back.sku.as_str(), back.quantity, back.step),
            ("SKU-1", 2, Step::Return)
        );
        let unknown_kind = refund(9, "");
        let unspecified = refund(0, "");
        let twice = refund(StockStep::Return as i32, "SKU-1");
        for bad in [
            payload("SKU-1", 0),
            payload("SKU-1", -1),
            payload("", 1),
            payload("a b", 1),
            vec![0x0a, 0xff],
            unknown_kind,
            unspecified,
            twice,
        ] {
            assert_eq!(Pick::from_payload(&bad).unwrap_err().code, "invalid");
        }
    }

    const OPS: [Op; 5] = [Op::Try, Op::Confirm, Op::Cancel, Op::Action, Op::Compensate];

    #[test]
    fn every_second_phase_op_starts_from_the_status_its_first_phase_left() {
        for step in [Step::Take, Step::Return] {
            for op in OPS {
                let Ok(Plan::Move { row, from, .. }) = plan(step, op) else {
                    continue;
                };
                assert_eq!(row, Row::Own);
                // Confirm follows a Try; Cancel and Compensate follow what they undo.
                let first = op.undoes().unwrap_or(Op::Try);
                let Ok(Plan::Create { status, .. }) = plan(step, first) else {
                    panic!("{step:?} {op} has no first phase");
                };
                assert_eq!(from, status, "{step:?} {op}");
            }
        }
    }

    #[test]
    fn every_op_moves_items_without_making_or_losing_any_and_every_undo_reverses_its_do() {
        let delta = |p: Plan| match p {
            Plan::Create { delta, .. } | Plan::Move { delta, .. } => delta,
        };
        for step in [Step::Take, Step::Return, Step::Restock] {
            for op in OPS {
                if let Ok(p) = plan(step, op) {
                    let (a, r, s) = delta(p);
                    assert_eq!(a + r + s, 0, "{step:?} {op} makes or loses items");
                }
            }
            let action = plan(step, Op::Action).unwrap();
            let compensate = plan(step, Op::Compensate).unwrap();
            let (a, r, s) = delta(action);
            assert_eq!(delta(compensate), (-a, -r, -s), "{step:?}");
        }
    }

    #[test]
    fn a_refund_holds_its_items_until_the_restock_and_its_steps_are_not_tcc() {
        assert!(ReservationStatus::Returning.holds_items());
        assert!(!ReservationStatus::Restocked.holds_items());
        for op in [Op::Try, Op::Confirm, Op::Cancel] {
            assert_eq!(plan(Step::Return, op).unwrap_err().code, "invalid");
            assert_eq!(plan(Step::Restock, op).unwrap_err().code, "invalid");
        }
    }
}
