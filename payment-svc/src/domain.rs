//! What a payment branch asks for, checked; and the life of a hold. No I/O here.

use proto::pay::v1::PaymentBranch;
use tcc::{check, Op, Rejection};

/// A validated payment branch payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub account_id: String,
    pub merchant_id: String,
    pub amount: i64,
}

impl Charge {
    /// Decodes and checks a `pay.v1.PaymentBranch`.
    pub fn from_payload(payload: &[u8]) -> Result<Charge, Rejection> {
        let p: PaymentBranch = check::decode("pay.v1.PaymentBranch", payload)?;
        check::id("account_id", &p.account_id)?;
        check::id("merchant_id", &p.merchant_id)?;
        check::units("amount", p.amount)?;
        if p.account_id == p.merchant_id {
            return Err(Rejection::invalid("account_id and merchant_id must differ"));
        }
        Ok(Charge {
            account_id: p.account_id,
            merchant_id: p.merchant_id,
            amount: p.amount,
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
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Frozen => "frozen",
            HoldStatus::Captured => "captured",
            HoldStatus::Released => "released",
            HoldStatus::Debited => "debited",
            HoldStatus::Refunded => "refunded",
        }
    }

    /// The status a hold is created in by `op`, if `op` creates one.
    pub fn created_by(op: Op) -> Option<HoldStatus> {
        match op {
            Op::Try => Some(HoldStatus::Frozen),
            Op::Action => Some(HoldStatus::Debited),
            _ => None,
        }
    }

    /// The (from, to) transition `op` makes on an existing hold, if it makes one.
    pub fn transition(op: Op) -> Option<(HoldStatus, HoldStatus)> {
        match op {
            Op::Confirm => Some((HoldStatus::Frozen, HoldStatus::Captured)),
            Op::Cancel => Some((HoldStatus::Frozen, HoldStatus::Released)),
            Op::Compensate => Some((HoldStatus::Debited, HoldStatus::Refunded)),
            Op::Try | Op::Action => None,
        }
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

    #[test]
    fn every_undo_and_confirm_starts_from_the_status_its_do_created() {
        assert_eq!(
            HoldStatus::transition(Op::Confirm).unwrap().0,
            HoldStatus::created_by(Op::Try).unwrap()
        );
        assert_eq!(
            HoldStatus::transition(Op::Cancel).unwrap().0,
            HoldStatus::created_by(Op::Try).unwrap()
        );
        assert_eq!(
            HoldStatus::transition(Op::Compensate).unwrap().0,
            HoldStatus::created_by(Op::Action).unwrap()
        );
    }
}
