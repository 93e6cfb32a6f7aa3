//! What a payment branch asks for, checked; and the life of a hold, as one table ([`plan`])
//! from (step, op) to what happens to the hold. No I/O here (the money moves of each entry are
//! in [`crate::ledger`]).
//!
//! An order's branch pays: a Try freezes the buyer's money, its Confirm moves it to the
//! merchant, its Cancel unfreezes it; a Saga Action pays at once, its Compensate pays back.
//!
//! A refund's two payment branches mirror inventory's return and restock, so that no
//! compensation depends on what the buyer did since. Its `hold` step takes the money from the
//! merchant and holds it in the buyer's `frozen`, where the buyer cannot spend it; were the
//! refund to fail, its Compensate gives it back to the merchant, which cannot fail for want of
//! money. Only once the rest of the refund is done does the `release` step make it the buyer's
//! to spend. So `frozen` means "held by a transaction still under way", for orders and refunds
//! alike, and the audit's "frozen equals what the holds hold" also sees a refund left half done.

use proto::pay::v1::{MoneyStep, PaymentBranch};
use tcc::{check, Op, Rejection};

/// What a branch does with its money (an order's payment, or a refund's `pay.v1.MoneyStep`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// An order's: freeze (Try) or pay at once (Action).
    Pay,
    /// A refund's: take the money from the payer and hold it on the payee.
    Hold,
    /// A refund's: the money its transaction holds becomes the payee's to spend.
    Release,
}

/// A validated payment branch payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub account_id: String,
    pub merchant_id: String,
    pub amount: i64,
    pub step: Step,
}

impl Charge {
    /// Decodes and checks a `pay.v1.PaymentBranch`: an order's payment, or a refund's step.
    pub fn from_payload(payload: &[u8]) -> Result<Charge, Rejection> {
        let p: PaymentBranch = check::decode("pay.v1.PaymentBranch", payload)?;
        let (account_id, merchant_id, amount, step) = match p.refund {
            None => (p.account_id, p.merchant_id, p.amount, Step::Pay),
            Some(r) => {
                if !p.account_id.is_empty() || !p.merchant_id.is_empty() || p.amount != 0 {
                    return Err(Rejection::invalid(
                        "a refund's step names its parties and amount in `refund` only",
                    ));
                }
                let step = match MoneyStep::try_from(r.step) {
                    Ok(MoneyStep::Hold) => Step::Hold,
                    Ok(MoneyStep::Release) => Step::Release,
                    Ok(MoneyStep::Unspecified) | Err(_) => {
                        return Err(Rejection::invalid(format!(
                            "unknown refund step {}",
                            r.step
                        )))
                    }
                };
                (r.payer, r.payee, r.amount, step)
            }
        };
        check::id("account_id", &account_id)?;
        check::id("merchant_id", &merchant_id)?;
        check::units("amount", amount)?;
        if account_id == merchant_id {
            return Err(Rejection::invalid("account_id and merchant_id must differ"));
        }
        Ok(Charge {
            account_id,
            merchant_id,
            amount,
            step,
        })
    }
}

/// Where the money of one branch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldStatus {
    /// Try: moved from available to frozen on the payer.
    Frozen,
    /// Confirm: moved from the payer's frozen to the merchant.
    Captured,
    /// Cancel: back from frozen to the payer's available.
    Released,
    /// Saga Action: moved from the payer's available to the merchant at once.
    Debited,
    /// Saga Compensate: back from the merchant to the payer.
    Refunded,
    /// A refund's hold: moved from the payer's available to the payee's frozen.
    Held,
    /// The refund's release: the held money is the payee's to spend.
    Paid,
    /// The refund failed: the held money went back to the payer.
    Kept,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Frozen => "frozen",
            HoldStatus::Captured => "captured",
            HoldStatus::Released => "released",
            HoldStatus::Debited => "debited",
            HoldStatus::Refunded => "refunded",
            HoldStatus::Held => "held",
            HoldStatus::Paid => "paid",
            HoldStatus::Kept => "kept",
        }
    }

    /// Whether the money of a hold in this status counts in `frozen` (held by a transaction
    /// under way): on the payer for a Try, on the payee for a refund's hold.
    pub fn holds_money(self) -> bool {
        matches!(self, HoldStatus::Frozen | HoldStatus::Held)
    }
}

/// Which hold row an op moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// The branch's own (created by its Try or Action).
    Own,
    /// The row of its transaction's `hold` step (a release moves another branch's money).
    Held,
}

/// What an op does to a branch's hold; the money moves of each are in [`crate::ledger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Take the money from the payer and record a hold in `status`.
    Create(HoldStatus),
    /// Move `row` from `from` to `to` (and its money with it).
    Move {
        row: Row,
        from: HoldStatus,
        to: HoldStatus,
    },
}

/// Every (step, op) there is, in one table; the rest are refused as `invalid`.
pub fn plan(step: Step, op: Op) -> Result<Plan, Rejection> {
    use HoldStatus as S;
    let own = |from, to| {
        Ok(Plan::Move {
            row: Row::Own,
            from,
            to,
        })
    };
    match (step, op) {
        (Step::Pay, Op::Try) => Ok(Plan::Create(S::Frozen)),
        (Step::Pay, Op::Action) => Ok(Plan::Create(S::Debited)),
        (Step::Pay, Op::Confirm) => own(S::Frozen, S::Captured),
        (Step::Pay, Op::Cancel) => own(S::Frozen, S::Released),
        (Step::Pay, Op::Compensate) => own(S::Debited, S::Refunded),
        (Step::Hold, Op::Action) => Ok(Plan::Create(S::Held)),
        (Step::Hold, Op::Compensate) => own(S::Held, S::Kept),
        (Step::Release, Op::Action) => Ok(Plan::Move {
            row: Row::Held,
            from: S::Held,
            to: S::Paid,
        }),
        (Step::Release, Op::Compensate) => Ok(Plan::Move {
            row: Row::Held,
            from: S::Paid,
            to: S::Held,
        }),
        (Step::Hold | Step::Release, Op::Try | Op::Confirm | Op::Cancel) => Err(
            Rejection::invalid("a refund's payment steps are Saga actions, not TCC"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn payload(account: &str, merchant: &str, amount: i64) -> Vec<u8> {
        PaymentBranch {
            account_id: account.into(),
            amount,
            merchant_id: merchant.into(),
            refund: None,
        }
        .encode_to_vec()
    }

    #[test]
    fn a_well_formed_charge_is_accepted() {
        let c = Charge::from_payload(&payload("alice", "merchant", 1999)).unwrap();
        assert_eq!(c.amount, 1999);
    }

    #[test]
    fn zero_negative_oversized_and_self_payments_are_rejected_as_invalid() {
        for bad in [
            payload("alice", "merchant", 0),
            payload("alice", "merchant", -5),
            payload("alice", "merchant", i64::MAX),
            payload("alice", "alice", 10),
            payload("", "merchant", 10),
            vec![0xff, 0xff, 0xff],
        ] {
            assert_eq!(Charge::from_payload(&bad).unwrap_err().code, "invalid");
        }
    }

    const OPS: [Op; 5] = [Op::Try, Op::Confirm, Op::Cancel, Op::Action, Op::Compensate];

    #[test]
    fn every_second_phase_op_starts_from_the_status_its_first_phase_left() {
        for step in [Step::Pay, Step::Hold] {
            for op in OPS {
                let Ok(Plan::Move { row, from, .. }) = plan(step, op) else {
                    continue;
                };
                assert_eq!(row, Row::Own);
                let first = op.undoes().unwrap_or(Op::Try);
                assert_eq!(plan(step, first), Ok(Plan::Create(from)), "{step:?} {op}");
            }
        }
    }

    #[test]
    fn a_release_moves_what_the_hold_left_and_its_undo_puts_it_back() {
        let Ok(Plan::Create(held)) = plan(Step::Hold, Op::Action) else {
            panic!("a hold creates its row");
        };
        let Ok(Plan::Move { row, from, to }) = plan(Step::Release, Op::Action) else {
            panic!("a release moves a row");
        };
        assert_eq!((row, from), (Row::Held, held));
        assert_eq!(
            plan(Step::Release, Op::Compensate),
            Ok(Plan::Move {
                row: Row::Held,
                from: to,
                to: from
            })
        );
        assert!(held.holds_money() && !to.holds_money());
    }

    #[test]
    fn a_refunds_payment_steps_are_not_tcc() {
        for op in [Op::Try, Op::Confirm, Op::Cancel] {
            assert_eq!(plan(Step::Hold, op).unwrap_err().code, "invalid");
            assert_eq!(plan(Step::Release, op).unwrap_err().code, "invalid");
        }
        let refund = |step: i32, account: &str| PaymentBranch {
            account_id: account.into(),
            refund: Some(proto::pay::v1::RefundMoney {
                payer: "merchant".into(),
                payee: "alice".into(),
                amount: 5,
                step,
            }),
            ..Default::default()
        };
        let hold = Charge::from_payload(&refund(MoneyStep::Hold as i32, "").encode_to_vec());
        assert_eq!(
            hold.map(|c| (c.step, c.account_id, c.merchant_id, c.amount)),
            Ok((Step::Hold, "merchant".into(), "alice".into(), 5))
        );
        // An unknown step, or parties given twice, are refused.
        for bad in [
            refund(9, ""),
            refund(0, ""),
            refund(MoneyStep::Hold as i32, "bob"),
        ] {
            assert_eq!(
                Charge::from_payload(&bad.encode_to_vec()).unwrap_err().code,
                "invalid"
            );
        }
        let unknown_kind = refund(9, "").encode_to_vec();
        assert_eq!(
            Charge::from_payload(&unknown_kind).unwrap_err().code,
            "invalid"
        );
    }
}
