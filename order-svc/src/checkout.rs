//! Checkout: an order priced from the catalog and turned into one TCC global transaction with
//! three branches (the order here, the charge at payment-svc, the reservation at
//! inventory-svc), built once, then sent to the coordinator and its outcome made the answer.

use crate::api::{Api, NewOrderBody, OrderView};
use crate::catalog::price_of;
use crate::idempotency::Answer;
use host::Problem;
use proto::v1 as pb;
use store::Db;

/// The order API's reason code for a rolled-back order: the participant's own code when one
/// refused (`insufficient_funds`, `out_of_stock`, …), `unavailable` when one did not answer,
/// `timeout` past the deadline.
pub(crate) fn reason_code(rollback: Option<&pb::Rollback>) -> String {
    use pb::rollback::Kind;
    match rollback.and_then(|r| r.kind.as_ref()) {
        Some(Kind::Rejected(r)) => r.code.clone(),
        Some(Kind::Errored(_)) => "unavailable".into(),
        Some(Kind::Deadline(_)) => "timeout".into(),
        Some(Kind::Described(_)) | None => "cancelled".into(),
    }
}

/// One order's global transaction, as built for its first attempt (and stored with its key).
pub(crate) struct Checkout {
    pub(crate) request: pb::ExecuteRequest,
    /// The order branch's payload: what the answer shows.
    pub(crate) order: proto::pay::v1::OrderBranch,
}

impl Checkout {
    /// A stored request, as a retry resends it.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Checkout, Problem> {
        let corrupt = || Problem::internal("the stored order request cannot be read");
        let request: pb::ExecuteRequest = prost::Message::decode(bytes).map_err(|e| {
            tracing::error!(error = %e, "stored txn_request does not decode");
            corrupt()
        })?;
        let order = request
            .branches
            .iter()
            .find(|b| b.branch_id == ORDER_BRANCH)
            .and_then(|b| prost::Message::decode(b.payload.as_slice()).ok())
            .ok_or_else(corrupt)?;
        Ok(Checkout { request, order })
    }
}

const ORDER_BRANCH: &str = "order";

/// Prices the order and builds its global transaction: `Ok(Err(answer))` for a client error
/// (the key's answer), `Err` when the catalog cannot be read now.
pub(crate) async fn checkout(
    api: &Api,
    db: &Db,
    user: &str,
    order_id: i64,
    body: &NewOrderBody,
) -> Result<Result<Checkout, Answer>, Problem> {
    let Some((_name, price)) = price_of(api, db, &body.sku).await? else {
        return Ok(Err(Answer::problem(&Problem::unprocessable(
            "unknown_sku",
            format!("no product {:?} in the catalog", body.sku),
        ))));
    };
    let Some(amount) = price
        .checked_mul(body.quantity)
        .filter(|a| *a <= tcc::check::MAX_UNITS)
    else {
        return Ok(Err(Answer::problem(&Problem::unprocessable(
            "amount_too_large",
            "the order's amount is too large",
        ))));
    };
    let order = proto::pay::v1::OrderBranch {
        order_id: order_id as u64,
        user_id: user.to_owned(),
        sku: body.sku.clone(),
        quantity: body.quantity,
        amount,
        refund: None,
    };
    let payment_payload = prost::Message::encode_to_vec(&proto::pay::v1::PaymentBranch {
        account_id: user.to_owned(),
        amount,
        merchant_id: api.config.merchant_id.clone(),
        refund: None,
    });
    let inventory_payload = prost::Message::encode_to_vec(&proto::pay::v1::InventoryBranch {
        sku: body.sku.clone(),
        quantity: body.quantity,
        refund: None,
    });
    let branch = |id: &str, url: &str, payload: Vec<u8>| pb::BranchSpec {
        branch_id: id.into(),
        participant: url.into(),
        payload,
        depends_on: vec![],
        retriable: false,
    };
    let request = pb::ExecuteRequest {
        mode: pb::Mode::Tcc as i32,
        idempotency_key: format!("order:{order_id}"),
        branches: vec![
            branch(
                ORDER_BRANCH,
                &api.config.order_url,
                prost::Message::encode_to_vec(&order),
            ),
            branch("payment", &api.config.payment_url, payment_payload),
            branch("inventory", &api.config.inventory_url, inventory_payload),
        ],
        timeout_ms: api.config.transaction_timeout_ms,
        branch_timeout_ms: 0,
        wait_ms: api.config.wait_ms,
        concurrent: false,
    };
    Ok(Ok(Checkout { request, order }))
}

/// Sends the order's global transaction (as built by [`checkout`]) and answers with its outcome.
pub(crate) async fn execute(api: &Api, checkout: Checkout) -> Answer {
    let Checkout { mut request, order } = checkout;
    let order_id = order.order_id;
    // How long to wait is this attempt's business, not part of the request's identity.
    request.wait_ms = api.config.wait_ms;
    let outcome = match api.coordinator.clone().execute(request).await {
        Ok(r) => r.into_inner(),
        Err(status) if !proto::is_transient(&status) => {
            // The coordinator refused a request this service built: a bug, not the client's.
            tracing::error!(order_id, error = %status, "the coordinator refused the transaction");
            return Answer::problem(&Problem::internal(
                "the order could not be placed: the transaction was refused (see the service log)",
            ));
        }
        Err(status) => {
            tracing::warn!(order_id, error = %status, "the coordinator did not answer");
            return Answer::problem(&Problem::unavailable(
                "the order could not be placed right now; retry with the same Idempotency-Key",
            ));
        }
    };
    let (status, reason) = match outcome.status() {
        pb::Status::Confirming | pb::Status::Succeeded => ("confirmed", None),
        pb::Status::Cancelling | pb::Status::Failed => {
            ("cancelled", Some(reason_code(outcome.rollback.as_ref())))
        }
        _ => ("pending", None),
    };
    let view = OrderView {
        order_id: order_id.to_string(),
        gid: Some(outcome.gid.to_string()),
        status: status.into(),
        reason,
        sku: order.sku,
        quantity: order.quantity,
        amount: order.amount,
        refund: None,
    };
    Answer {
        status: 201,
        body: serde_json::to_value(view).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_rollbacks_become_the_order_apis_reason_codes() {
        use pb::rollback::Kind;
        let of = |kind: Kind| reason_code(Some(&pb::Rollback { kind: Some(kind) }));
        assert_eq!(
            of(Kind::Rejected(pb::Rejected {
                branch_id: "payment".into(),
                code: "insufficient_funds".into(),
                message: "short".into(),
            })),
            "insufficient_funds"
        );
        assert_eq!(
            of(Kind::Errored(pb::Errored {
                branch_id: "payment".into(),
                error: "Unavailable".into(),
            })),
            "unavailable"
        );
        assert_eq!(of(Kind::Deadline(pb::DeadlinePassed {})), "timeout");
        assert_eq!(reason_code(None), "cancelled");
    }
}
