//! Payload checks every participant shares, answering with a [`Rejection`] that names the field.

use crate::Rejection;

/// The largest amount or quantity a branch may carry: far above any real order, far below
/// `i64::MAX`, so sums of many never overflow.
pub const MAX_UNITS: i64 = 1_000_000_000_000_000;

/// The largest balance or stock level: credits and restocks that would pass it are refused
/// (a thousand of the largest orders, still a ninth of `i64::MAX`).
pub const MAX_BALANCE: i64 = MAX_UNITS * 1_000;

/// An identifier (account, SKU, user): 1 to 64 characters of `A-Z a-z 0-9 _ - . @ :`.
pub fn id(field: &str, value: &str) -> Result<(), Rejection> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Rejection::invalid(format!(
            "{field} must be 1 to 64 characters of letters, digits and _-.@: (got {value:?})"
        )))
    }
}

/// A positive amount or quantity no larger than [`MAX_UNITS`].
pub fn units(field: &str, value: i64) -> Result<(), Rejection> {
    if (1..=MAX_UNITS).contains(&value) {
        Ok(())
    } else {
        Err(Rejection::invalid(format!(
            "{field} must be between 1 and {MAX_UNITS} (got {value})"
        )))
    }
}

/// Decodes a protobuf payload.
pub fn decode<M: prost::Message + Default>(what: &str, payload: &[u8]) -> Result<M, Rejection> {
    M::decode(payload)
        .map_err(|e| Rejection::invalid(format!("the payload is not a valid {what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_for_length_and_characters() {
        assert!(id("account_id", "alice").is_ok());
        assert!(id("sku", "SKU-001.blue").is_ok());
        for bad in ["", "a b", "x;drop table", "é", &"x".repeat(65)] {
            let err = id("account_id", bad).unwrap_err();
            assert_eq!(err.code, "invalid");
            assert!(err.message.contains("account_id"));
        }
    }

    #[test]
    fn units_must_be_positive_and_bounded() {
        assert!(units("amount", 1).is_ok());
        assert!(units("amount", MAX_UNITS).is_ok());
        for bad in [0, -1, MAX_UNITS + 1, i64::MIN, i64::MAX] {
            assert!(units("amount", bad).is_err(), "{bad}");
        }
    }
}
