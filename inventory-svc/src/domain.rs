//! What an inventory branch asks for, checked; and the life of a reservation. No I/O here.

use proto::pay::v1::InventoryBranch;
use tcc::{check, Op, Rejection};

/// A validated inventory branch payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    pub sku: String,
    pub quantity: i64,
}

impl Pick {
    /// Decodes and checks a `pay.v1.InventoryBranch`.
    pub fn from_payload(payload: &[u8]) -> Result<Pick, Rejection> {
        let p: InventoryBranch = check::decode("pay.v1.InventoryBranch", payload)?;
        check::id("sku", &p.sku)?;
        check::units("quantity", p.quantity)?;
        Ok(Pick {
            sku: p.sku,
            quantity: p.quantity,
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
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Reserved => "reserved",
            ReservationStatus::Sold => "sold",
            ReservationStatus::Released => "released",
            ReservationStatus::Taken => "taken",
            ReservationStatus::Returned => "returned",
        }
    }

    /// The status a reservation is created in by `op`, if `op` creates one.
    pub fn created_by(op: Op) -> Option<ReservationStatus> {
        match op {
            Op::Try => Some(ReservationStatus::Reserved),
            Op::Action => Some(ReservationStatus::Taken),
            _ => None,
        }
    }

    /// The (from, to) transition `op` makes on an existing reservation.
    pub fn transition(op: Op) -> Option<(ReservationStatus, ReservationStatus)> {
        match op {
            Op::Confirm => Some((ReservationStatus::Reserved, ReservationStatus::Sold)),
            Op::Cancel => Some((ReservationStatus::Reserved, ReservationStatus::Released)),
            Op::Compensate => Some((ReservationStatus::Taken, ReservationStatus::Returned)),
            Op::Try | Op::Action => None,
        }
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
        }
        .encode_to_vec()
    }

    #[test]
    fn a_well_formed_pick_is_accepted_and_bad_ones_are_invalid() {
        assert_eq!(
            Pick::from_payload(&payload("SKU-1", 3)).unwrap().quantity,
            3
        );
        for bad in [
            payload("SKU-1", 0),
            payload("SKU-1", -1),
            payload("", 1),
            payload("a b", 1),
            vec![0x0a, 0xff],
        ] {
            assert_eq!(Pick::from_payload(&bad).unwrap_err().code, "invalid");
        }
    }

    #[test]
    fn every_undo_and_confirm_starts_from_the_status_its_do_created() {
        for (undo, origin) in [
            (Op::Confirm, Op::Try),
            (Op::Cancel, Op::Try),
            (Op::Compensate, Op::Action),
        ] {
            assert_eq!(
                ReservationStatus::transition(undo).unwrap().0,
                ReservationStatus::created_by(origin).unwrap()
            );
        }
    }
}
