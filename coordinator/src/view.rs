//! The read model both APIs show: a transaction with its branches, their state and every
//! attempt, read in three queries for any number of transactions.

use crate::engine::EngineError;
use crate::log;
use crate::machine::{First, Mode, Op, Rollback, Second, Status};
use ids::Gid;
use proto::v1 as pb;
use store::Db;

pub fn status_to_pb(s: Status) -> pb::Status {
    match s {
        Status::Prepared => pb::Status::Prepared,
        Status::Confirming => pb::Status::Confirming,
        Status::Cancelling => pb::Status::Cancelling,
        Status::Succeeded => pb::Status::Succeeded,
        Status::Failed => pb::Status::Failed,
    }
}

/// A transaction with its branches and timeline, as the API shows it.
pub async fn transaction(db: &Db, gid: Gid) -> Result<pb::GlobalTransaction, EngineError> {
    transactions(db, &[gid])
        .await?
        .pop()
        .ok_or(EngineError::NotFound(gid))
}

/// A transaction with one page of its timeline (see [`log::timeline_page`]): the newest
/// attempts first, so a transaction retried for days shows its latest calls.
pub async fn transaction_page(
    db: &Db,
    gid: Gid,
    before: Option<log::TimelineCursor>,
    limit: i64,
) -> Result<(pb::GlobalTransaction, i64, Option<log::TimelineCursor>), EngineError> {
    let (stored, timeline, total, next) = stored_page(db, gid, before, limit).await?;
    Ok((shown(stored, &timeline), total, next))
}

/// The transaction as stored (payloads and participant addresses included) with one page of
/// its timeline, its attempt count and the next page's cursor.
pub async fn stored_page(
    db: &Db,
    gid: Gid,
    before: Option<log::TimelineCursor>,
    limit: i64,
) -> Result<StoredPage, EngineError> {
    // The state first, then the timeline: attempts are only ever appended, in the same commit
    // as the state they led to, so a timeline read after the state holds every attempt that
    // state counts (read the other way round, a transaction could show `succeeded` without the
    // call that succeeded).
    let stored = log::load(db, gid)
        .await?
        .ok_or(EngineError::NotFound(gid))?;
    let (timeline, total, next) = log::timeline_page(db, gid, before, limit).await?;
    Ok((stored, timeline, total, next))
}

/// What [`stored_page`] reads.
pub type StoredPage = (
    log::Stored,
    Vec<log::Attempt>,
    i64,
    Option<log::TimelineCursor>,
);

/// Transactions as the API shows them, in three queries whatever their number (in the order of
/// `gids`; those that do not exist are left out).
pub async fn transactions(
    db: &Db,
    gids: &[Gid],
) -> Result<Vec<pb::GlobalTransaction>, EngineError> {
    // The states before the timelines, as in [`transaction_page`].
    let stored = log::load_many(db, gids).await?;
    let mut timelines = log::timelines(db, gids).await?;
    Ok(stored
        .into_iter()
        .map(|stored| {
            let timeline = timelines.remove(&stored.gid).unwrap_or_default();
            shown(stored, &timeline)
        })
        .collect())
}

/// One transaction as the API shows it.
pub(crate) fn shown(stored: log::Stored, timeline: &[log::Attempt]) -> pb::GlobalTransaction {
    let gid = stored.gid;
    let mode = stored.txn.mode;
    let status = stored.txn.status;
    let branches = stored
        .branches
        .iter()
        .zip(&stored.txn.branches)
        .enumerate()
        .map(|(idx, (b, state))| {
            let current_op = match (mode, status, state.second) {
                (Mode::Tcc, _, Second::NotNeeded) => Op::Try,
                (Mode::Tcc, Status::Confirming | Status::Succeeded, _) => Op::Confirm,
                (Mode::Tcc, _, _) => Op::Cancel,
                (Mode::Saga, _, Second::NotNeeded) => Op::Action,
                (Mode::Saga, _, _) => Op::Compensate,
            };
            let branch_status = match (state.first, state.second) {
                (_, Second::Done) => "done",
                (_, Second::Pending) => "pending",
                (First::Succeeded, _) => "prepared",
                (f, _) => f.as_str(),
            };
            pb::BranchState {
                branch_id: b.branch_id.clone(),
                participant: b.participant.clone(),
                op: current_op.to_wire() as i32,
                status: branch_status.to_owned(),
                attempts: b.attempts as u32,
                last_error: b.last_error.clone().unwrap_or_default(),
                retriable: state.retriable,
                depends_on: state
                    .depends_on
                    .iter()
                    .filter_map(|d| stored.branches.get(*d).map(|o| o.branch_id.clone()))
                    .collect(),
                timeline: timeline
                    .iter()
                    .filter(|a| a.idx == idx as i64)
                    .map(|a| pb::Attempt {
                        op: a.op.to_wire() as i32,
                        started_at_ms: a.started_at as u64,
                        duration_ms: (a.duration_us / 1000) as u64,
                        outcome: match a.outcome {
                            log::Outcome::Success => pb::Outcome::Success,
                            log::Outcome::Failure => pb::Outcome::Failure,
                            log::Outcome::Error | log::Outcome::Abandoned => {
                                pb::Outcome::Unspecified
                            }
                        } as i32,
                        error: a.error.clone().unwrap_or_default(),
                        abandoned: a.outcome == log::Outcome::Abandoned,
                    })
                    .collect(),
            }
        })
        .collect();
    pb::GlobalTransaction {
        gid: gid.as_u64(),
        mode: match mode {
            Mode::Tcc => pb::Mode::Tcc,
            Mode::Saga => pb::Mode::Saga,
        } as i32,
        status: status_to_pb(status) as i32,
        idempotency_key: stored.idempotency_key.unwrap_or_default(),
        created_at_ms: stored.created_at as u64,
        updated_at_ms: stored.updated_at as u64,
        deadline_ms: stored.deadline_at as u64,
        next_attempt_at_ms: stored.next_attempt_at as u64,
        attempts: stored.attempts as u32,
        reason: stored
            .txn
            .reason
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        rollback: stored.txn.reason.map(|r| {
            let id = r
                .branch()
                .and_then(|i| stored.branches.get(i))
                .map(|b| b.branch_id.clone());
            rollback_to_pb(r, id)
        }),
        branches,
    }
}

/// The typed rollback reason as the API carries it (the branch by its id).
pub fn rollback_to_pb(r: Rollback, branch_id: Option<String>) -> pb::Rollback {
    use pb::rollback::Kind;
    let branch_id = branch_id.unwrap_or_default();
    pb::Rollback {
        kind: Some(match r {
            Rollback::Rejected { code, message, .. } => Kind::Rejected(pb::Rejected {
                branch_id,
                code,
                message,
            }),
            Rollback::Errored { error, .. } => Kind::Errored(pb::Errored { branch_id, error }),
            Rollback::Deadline => Kind::Deadline(pb::DeadlinePassed {}),
            Rollback::Described { text } => Kind::Described(text),
        }),
    }
}
