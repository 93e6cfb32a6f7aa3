//! The participant side of TCC and Saga.
//!
//! A participant is called by the coordinator with `(gid, branch_id, op, payload)` and must make
//! every op idempotent, tolerate a Cancel whose Try never ran (null compensation), and ignore a
//! Try that arrives after its Cancel (anti-hanging). Getting that right in each service is where
//! TCC systems usually go wrong, so it lives here once:
//!
//! - [`barrier`]: the sub-transaction barrier (DTM's `BranchBarrier.Call`): rows in the
//!   participant's own database, inserted in the same local transaction as the business change,
//!   decide whether the business change runs at all. Its table ships as [`MIGRATOR`].
//! - [`Handler`]: what a service implements — decode and validate its payload, and apply one op
//!   inside the barrier's transaction.
//! - [`grpc::ParticipantService`]: the `tcc.v1.Participant` gRPC server for any [`Handler`], with
//!   outcome and latency metrics.
//!   Its `Branches` call runs a batch of ops (Tries, Confirms, Cancels, …) in one local
//!   transaction ([`barrier::call_batch`], rows locked through [`Handler::lock_batch`]).
//! - [`barrier::purge`] and [`barrier::spawn_purger`]: old barrier rows are deleted after a
//!   retention period.
//! - [`fault`]: faults a student can switch on per op (delay, hang, fail, error), through the
//!   admin API; refused in production.

pub mod barrier;
pub mod check;
pub mod fault;
pub mod grpc;
pub mod service;

pub use barrier::PurgeConfig;

use futures::future::BoxFuture;
use ids::Gid;
use sqlx::AnyConnection;
use std::fmt;
use store::StoreError;

/// The barrier's table, to run with the service's own migrations
/// (`Db::migrate_all(&[&SERVICE_MIGRATOR, &tcc::MIGRATOR])`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A branch operation: the one `Op` of the project (the coordinator's state machine, its log,
/// the participants' barrier); `proto::v1::Op` is only its wire form ([`Op::to_wire`],
/// [`Op::from_wire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Try,
    Confirm,
    Cancel,
    Action,
    Compensate,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Try, Op::Confirm, Op::Cancel, Op::Action, Op::Compensate];

    /// The wire form.
    pub fn to_wire(self) -> proto::v1::Op {
        match self {
            Op::Try => proto::v1::Op::Try,
            Op::Confirm => proto::v1::Op::Confirm,
            Op::Cancel => proto::v1::Op::Cancel,
            Op::Action => proto::v1::Op::Action,
            Op::Compensate => proto::v1::Op::Compensate,
        }
    }

    /// From the wire (`None` for UNSPECIFIED or an unknown value).
    pub fn from_wire(op: i32) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.to_wire() as i32 == op)
    }

    /// Parses [`Op::as_str`] (the name in logs, metrics and database rows).
    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Try => "try",
            Op::Confirm => "confirm",
            Op::Cancel => "cancel",
            Op::Action => "action",
            Op::Compensate => "compensate",
        }
    }

    /// The op this one undoes: Cancel undoes Try, Compensate undoes Action.
    pub fn undoes(self) -> Option<Op> {
        match self {
            Op::Cancel => Some(Op::Try),
            Op::Compensate => Some(Op::Action),
            _ => None,
        }
    }

    /// Try and Action may be rejected (FAILURE); the other ops must eventually succeed.
    pub fn may_be_rejected(self) -> bool {
        matches!(self, Op::Try | Op::Action)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which branch a call is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BranchRef {
    pub gid: Gid,
    pub branch_id: String,
}

/// A business rejection: the op cannot succeed as asked, and asking again will not change that.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// Machine-readable: `insufficient_funds`, `out_of_stock`, `invalid`, `unknown_account`, ….
    pub code: String,
    pub message: String,
}

impl Rejection {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Rejection {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The payload is malformed or out of range.
    pub fn invalid(message: impl Into<String>) -> Self {
        Rejection::new("invalid", message)
    }
}

/// Why applying an op did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// A business rejection: the local transaction is rolled back and the caller told FAILURE.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The database failed: rolled back; the caller retries if it is transient.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for OpError {
    fn from(e: sqlx::Error) -> Self {
        OpError::Store(e.into())
    }
}

/// What a participant service implements: one handler per transaction type (DTM's "one
/// processor per type"). The barrier and the gRPC adapter do the rest.
pub trait Handler: Send + Sync + 'static {
    /// The decoded, validated payload.
    type Payload: Send + Sync + fmt::Debug;

    /// Decodes and validates the payload bytes. Pure: no I/O.
    fn decode(&self, payload: &[u8]) -> Result<Self::Payload, Rejection>;

    /// Applies `op` inside the barrier's local transaction (`conn` is that transaction). Only
    /// called when the barrier says the op must take effect. Business rules belong in
    /// conditional updates (`… WHERE available >= $1`), never read-then-write.
    fn apply<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        branch: &'a BranchRef,
        op: Op,
        payload: &'a Self::Payload,
    ) -> BoxFuture<'a, Result<(), OpError>>;

    /// Called once before the items of a batch run in one transaction
    /// ([`barrier::call_batch`]): locks the business rows they will change, all in one global
    /// order ([`barrier::lock_in_id_order`]). Without it, a batch locks the rows item after
    /// item, and on PostgreSQL a lone call that locks two of those rows (in id order) can wait
    /// on the batch while the batch waits on it: a deadlock, one of them aborted after a second.
    /// Default: nothing, for a handler whose ops each change rows of their branch only.
    fn lock_batch<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        payloads: &'a [&'a Self::Payload],
    ) -> BoxFuture<'a, Result<(), OpError>> {
        let _ = (conn, payloads);
        Box::pin(async { Ok(()) })
    }

    /// Applies the ops of a batch that the barrier let through ([`barrier::call_batch`]), in
    /// the batch's one transaction, after [`Handler::lock_batch`]. Default: [`Handler::apply`]
    /// for each, in the order given ([`apply_each`]). A handler may take them together (one
    /// update for a row that many items change: the merchant's account, a SKU), as long as
    /// every item's effect is the one `apply` would have had in that order. Any error rolls the
    /// batch back. A refused Try or Action must name the item whose `apply` would have been
    /// refused first: that one runs on its own and the rest as a batch again. For the other ops
    /// a refusal is a protocol violation, every item then runs on its own, and any item of the
    /// failing update may be named.
    fn apply_batch<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        items: &'a [barrier::Item<'a, Self::Payload>],
    ) -> BoxFuture<'a, Result<(), (usize, OpError)>> {
        Box::pin(apply_each(self, conn, items))
    }

    /// Called instead of [`Handler::apply`] when a Cancel/Compensate finds that its Try/Action
    /// never ran, in the same transaction as the barrier's marker. Nothing to undo; a service
    /// may leave a record (order-svc stores the order as CANCELLED). Default: nothing.
    fn null_compensation<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        branch: &'a BranchRef,
        op: Op,
        payload: &'a Self::Payload,
    ) -> BoxFuture<'a, Result<(), OpError>> {
        let _ = (conn, branch, op, payload);
        Box::pin(async { Ok(()) })
    }
}

/// [`Handler::apply`] for each item, in order; the first error names its item. What
/// [`Handler::apply_batch`] does unless a handler takes items together.
pub async fn apply_each<H: Handler + ?Sized>(
    handler: &H,
    conn: &mut AnyConnection,
    items: &[barrier::Item<'_, H::Payload>],
) -> Result<(), (usize, OpError)> {
    for (i, item) in items.iter().enumerate() {
        handler
            .apply(conn, item.branch, item.op, item.payload)
            .await
            .map_err(|e| (i, e))?;
    }
    Ok(())
}

/// The key all `items` share (the account they credit, the SKU they take) and the sum of their
/// amounts: what a handler's [`Handler::apply_batch`] moves in one update. `None` for no item,
/// several keys, or a sum that does not fit in an `i64`: the items then go one by one.
pub fn one_key_sum<'i, T>(
    items: &'i [T],
    key: impl Fn(&'i T) -> &'i str,
    amount: impl Fn(&'i T) -> i64,
) -> Option<(&'i str, i64)> {
    let first = key(items.first()?);
    let sum = items.iter().try_fold(0_i64, |sum, item| {
        (key(item) == first).then_some(())?;
        sum.checked_add(amount(item))
    })?;
    Some((first, sum))
}

/// The op and the kind (a payload's step) that every item of a batch shares, when it has two
/// items or more: a batch a handler may take together in [`Handler::apply_batch`]. `None` for
/// one item or a mix.
pub fn one_kind<P, K: PartialEq>(
    items: &[barrier::Item<'_, P>],
    kind: impl Fn(&P) -> K,
) -> Option<(Op, K)> {
    let (first, rest) = items.split_first()?;
    let (op, k) = (first.op, kind(first.payload));
    (!rest.is_empty() && rest.iter().all(|i| i.op == op && kind(i.payload) == k)).then_some((op, k))
}
