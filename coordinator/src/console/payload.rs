//! A branch's payload decoded for people: the product's three participants each take one
//! message type (`pay.v1`), so the participant's configured name says which to decode. A
//! payload that does not decode as that type (another product's participant, a name the
//! coordinator was not given) is shown by its size, never guessed at.

use prost::Message;
use proto::pay::v1 as pay;

/// `(field, value)` pairs, in the message's order.
pub type Fields = Vec<(&'static str, String)>;

/// The payload's fields as the participant `role` (`order`, `payment`, `inventory`) reads them.
pub fn describe(role: Option<&str>, bytes: &[u8]) -> Fields {
    let decoded = match role {
        Some("order") => pay::OrderBranch::decode(bytes).ok().map(order),
        Some("payment") => pay::PaymentBranch::decode(bytes).ok().map(payment),
        Some("inventory") => pay::InventoryBranch::decode(bytes).ok().map(inventory),
        _ => None,
    };
    decoded.unwrap_or_else(|| vec![("payload", format!("{} bytes", bytes.len()))])
}

fn cents(amount: i64) -> String {
    format!("{amount} cents")
}

fn order(b: pay::OrderBranch) -> Fields {
    let mut f = vec![
        ("order", b.order_id.to_string()),
        ("user", b.user_id),
        ("sku", b.sku),
        ("quantity", b.quantity.to_string()),
        ("amount", cents(b.amount)),
    ];
    if let Some(r) = b.refund {
        f.push(("refund", r.refund_id.to_string()));
        f.push(("refund stage", name(r.stage())));
        f.push(("refund quantity", r.quantity.to_string()));
        f.push(("refund amount", cents(r.amount)));
    }
    f
}

fn payment(b: pay::PaymentBranch) -> Fields {
    match b.refund {
        Some(r) => vec![
            ("step", name(r.step())),
            ("payer", r.payer.clone()),
            ("payee", r.payee.clone()),
            ("amount", cents(r.amount)),
        ],
        None => vec![
            ("account", b.account_id),
            ("merchant", b.merchant_id),
            ("amount", cents(b.amount)),
        ],
    }
}

fn inventory(b: pay::InventoryBranch) -> Fields {
    match b.refund {
        Some(r) => vec![
            ("step", name(r.step())),
            ("sku", r.sku.clone()),
            ("quantity", r.quantity.to_string()),
        ],
        None => vec![("sku", b.sku), ("quantity", b.quantity.to_string())],
    }
}

/// An enum value as a word: `MoneyStep::Hold` → `hold`.
fn name(v: impl std::fmt::Debug) -> String {
    format!("{v:?}").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payment_payload_reads_as_its_account_merchant_and_amount() {
        let bytes = pay::PaymentBranch {
            account_id: "alice".into(),
            amount: 900,
            merchant_id: "shop".into(),
            refund: None,
        }
        .encode_to_vec();
        assert_eq!(
            describe(Some("payment"), &bytes),
            vec![
                ("account", "alice".to_owned()),
                ("merchant", "shop".to_owned()),
                ("amount", "900 cents".to_owned())
            ]
        );
    }

    #[test]
    fn a_refund_step_names_its_step() {
        let bytes = pay::InventoryBranch {
            refund: Some(pay::RefundItems {
                sku: "mug".into(),
                quantity: 1,
                step: pay::StockStep::Restock as i32,
            }),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            describe(Some("inventory"), &bytes)[0],
            ("step", "restock".to_owned())
        );
    }

    #[test]
    fn an_unknown_participant_s_payload_is_shown_by_its_size_only() {
        assert_eq!(
            describe(None, b"\x0a\x03abc"),
            vec![("payload", "5 bytes".to_owned())]
        );
        assert_eq!(
            describe(Some("payment"), b"\xff\xff\xff"),
            vec![("payload", "3 bytes".to_owned())],
            "not a PaymentBranch"
        );
    }
}
