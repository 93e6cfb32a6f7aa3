//! The sub-transaction barrier (docs/design.md §2, after DTM's `BranchBarrier.Call`).
//!
//! In one local transaction of the participant's database:
//! 1. For Cancel/Compensate, insert the row of the op it undoes (`try`/`action`) with reason
//!    `cancel`/`compensate`. If that insert took effect, the Try never ran: this is a null
//!    compensation — keep the marker, do nothing else.
//! 2. Insert the row of the op itself. If it did not take effect, the op already ran
//!    (duplicate), or — for a Try/Action whose row was put there by its Cancel/Compensate — it
//!    arrives after its undo (hanging): do nothing.
//! 3. Otherwise run the business change, and commit the rows with it; a rejection or an error
//!    rolls everything back, rows included (so a rejected Try leaves no row and its Cancel is a
//!    null compensation).
//!
//! Concurrent calls for one branch serialise on the unique key: on PostgreSQL the second insert
//! waits for the first transaction and then finds the row; on SQLite `BEGIN IMMEDIATE` takes the
//! write lock up front.

use crate::{BranchRef, Handler, Op, OpError, Rejection};
use sqlx::AnyConnection;
use std::time::Duration;
use store::{Db, StoreError, WriteTx};

/// The barrier id of the one barrier call each op makes.
pub const BARRIER_ID: &str = "01";

/// What the barrier decided, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The business change ran and committed.
    Applied,
    /// The op had already taken effect: nothing was done again.
    Duplicate,
    /// A Cancel/Compensate whose Try/Action never ran: nothing to undo, and a marker now makes a
    /// late Try/Action do nothing.
    NullCompensation,
    /// A Try/Action that arrived after its Cancel/Compensate: nothing was done.
    Hanging,
    /// The business change was rejected and rolled back.
    Rejected(Rejection),
}

impl Verdict {
    /// Whether the coordinator should hear SUCCESS.
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            Verdict::Applied | Verdict::Duplicate | Verdict::NullCompensation
        )
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Applied => "applied",
            Verdict::Duplicate => "duplicate",
            Verdict::NullCompensation => "null_compensation",
            Verdict::Hanging => "hanging",
            Verdict::Rejected(_) => "rejected",
        }
    }
}

/// Which of an op's barrier rows its insert wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Inserted {
    /// The row of the op it undoes, as a marker (a Cancel's or Compensate's step 1): the op it
    /// undoes never ran.
    marker: bool,
    /// Its own row (step 2): it had not run before.
    own: bool,
}

/// The most rows one insert statement carries; past it, [`insert_rows`] takes several.
const ROWS_PER_INSERT: usize = 512;

/// The text of a barrier insert of `rows` rows (a power of two up to [`ROWS_PER_INSERT`]),
/// made once per size: each connection prepares each of a handful of texts once.
fn insert_sql(rows: usize) -> &'static str {
    static TEXTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let texts = TEXTS.get_or_init(|| {
        (0..=ROWS_PER_INSERT.trailing_zeros())
            .map(|p| {
                let values: Vec<String> = (0..1usize << p)
                    .map(|r| {
                        let b = 3 + 4 * r;
                        format!("(${b}, ${}, ${}, $1, ${}, $2)", b + 1, b + 2, b + 3)
                    })
                    .collect();
                format!(
                    "INSERT INTO tcc_barrier (gid, branch_id, op, barrier_id, reason, created_at) VALUES {} \
                     ON CONFLICT DO NOTHING RETURNING gid, branch_id, op",
                    values.join(", ")
                )
            })
            .collect()
    });
    &texts[rows.trailing_zeros() as usize]
}

/// Steps 1 and 2's inserts for several ops of **distinct** branches in one statement: each
/// op's rows in the order [`pass`] writes them (the marker, then its own), the ops in the
/// order given; says for each op which of its rows were written. One statement instead of one
/// or two per op: a batch's barrier costs one round trip.
async fn insert_rows(
    conn: &mut AnyConnection,
    ops: &[(&BranchRef, Op)],
) -> Result<Vec<Inserted>, StoreError> {
    // (op index, the row's op, its reason)
    let rows: Vec<(usize, Op, Op)> = ops
        .iter()
        .enumerate()
        .flat_map(|(i, &(_, op))| {
            op.undoes()
                .map(|origin| (i, origin, op))
                .into_iter()
                .chain(std::iter::once((i, op, op)))
        })
        .collect();
    let mut written = std::collections::HashSet::new();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        // Padded to a power of two with the last row again: a repeated row is a conflict
        // like any other, written once at most.
        let size = chunk.len().next_power_of_two();
        let mut query = sqlx::query_as::<_, (i64, String, String)>(insert_sql(size))
            .bind(BARRIER_ID)
            .bind(store::now_ms());
        for k in 0..size {
            let (i, row_op, reason) = chunk[k.min(chunk.len() - 1)];
            let branch = ops[i].0;
            query = query
                .bind(branch.gid.as_i64())
                .bind(&branch.branch_id)
                .bind(row_op.as_str())
                .bind(reason.as_str());
        }
        written.extend(query.fetch_all(&mut *conn).await?);
    }
    let was_written = |branch: &BranchRef, op: Op| {
        // Owned keys: a lookup by borrowed parts would need a key type of its own.
        written.contains(&(
            branch.gid.as_i64(),
            branch.branch_id.clone(),
            op.as_str().to_owned(),
        ))
    };
    Ok(ops
        .iter()
        .map(|&(branch, op)| Inserted {
            marker: op
                .undoes()
                .is_some_and(|origin| was_written(branch, origin)),
            own: was_written(branch, op),
        })
        .collect())
}

async fn reason_of(
    conn: &mut AnyConnection,
    branch: &BranchRef,
    op: Op,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT reason FROM tcc_barrier WHERE gid = $1 AND branch_id = $2 AND op = $3 AND barrier_id = $4",
    )
    .bind(branch.gid.as_i64())
    .bind(&branch.branch_id)
    .bind(op.as_str())
    .bind(BARRIER_ID)
    .fetch_optional(conn)
    .await?)
}

/// Where the barrier let a call through to, or not.
#[derive(Debug)]
pub enum Gate {
    /// Nothing more to do (duplicate, hanging, or null compensation, already committed).
    Closed(Verdict),
    /// The op must take effect: apply it in this transaction, then [`finish`].
    Open(WriteTx),
    /// A null compensation: the marker is written in this transaction; the handler may record
    /// something of its own in it before it is committed.
    NullCompensation(WriteTx),
}

/// What steps 1 and 2 decided on a transaction.
enum Pass {
    /// Nothing to do, and nothing was written.
    Closed(Verdict),
    /// Nothing to do, but a row was written that must be rolled back.
    Wrote(Verdict),
    Open,
    NullCompensation,
}

/// Steps 1 and 2 on the transaction `conn`.
async fn pass(conn: &mut AnyConnection, branch: &BranchRef, op: Op) -> Result<Pass, StoreError> {
    let inserted = insert_rows(conn, &[(branch, op)]).await?;
    decide(conn, branch, op, inserted[0]).await
}

/// What steps 1 and 2 decide from the rows their inserts wrote.
async fn decide(
    conn: &mut AnyConnection,
    branch: &BranchRef,
    op: Op,
    Inserted { marker, own }: Inserted,
) -> Result<Pass, StoreError> {
    if !own {
        if marker {
            // An undo's row without the row of the op it undoes (the two are written together
            // and purged together): a duplicate, once the marker is rolled back.
            return Ok(Pass::Wrote(Verdict::Duplicate));
        }
        let verdict = if op.may_be_rejected()
            && reason_of(conn, branch, op).await?.as_deref() != Some(op.as_str())
        {
            Verdict::Hanging
        } else {
            Verdict::Duplicate
        };
        return Ok(Pass::Closed(verdict));
    }
    Ok(if marker {
        Pass::NullCompensation
    } else {
        Pass::Open
    })
}

/// Steps 1 and 2: inserts the barrier rows and decides whether the business change runs.
pub async fn enter(db: &Db, branch: &BranchRef, op: Op) -> Result<Gate, StoreError> {
    let mut tx = db.begin().await?;
    match pass(&mut tx, branch, op).await? {
        Pass::Closed(verdict) | Pass::Wrote(verdict) => {
            tx.rollback().await?;
            Ok(Gate::Closed(verdict))
        }
        Pass::NullCompensation => Ok(Gate::NullCompensation(tx)),
        Pass::Open => Ok(Gate::Open(tx)),
    }
}

/// Step 3: commits the business change with the barrier rows, or rolls both back.
pub async fn finish(tx: WriteTx, result: Result<(), OpError>) -> Result<Verdict, StoreError> {
    match result {
        Ok(()) => {
            tx.commit().await?;
            Ok(Verdict::Applied)
        }
        Err(OpError::Rejected(rejection)) => {
            tx.rollback().await?;
            Ok(Verdict::Rejected(rejection))
        }
        Err(OpError::Store(e)) => {
            // Dropping the transaction rolls it back.
            drop(tx);
            Err(e)
        }
    }
}

/// Runs `handler.apply` for `op` on `branch` behind the barrier.
pub async fn call<H: Handler>(
    db: &Db,
    handler: &H,
    branch: &BranchRef,
    op: Op,
    payload: &H::Payload,
) -> Result<Verdict, StoreError> {
    match enter(db, branch, op).await? {
        Gate::Closed(verdict) => Ok(verdict),
        Gate::Open(mut tx) => {
            let result = handler.apply(&mut tx, branch, op, payload).await;
            finish(tx, result).await
        }
        Gate::NullCompensation(mut tx) => {
            let result = handler
                .null_compensation(&mut tx, branch, op, payload)
                .await;
            finish(tx, result).await.map(|verdict| match verdict {
                Verdict::Applied => Verdict::NullCompensation,
                other => other,
            })
        }
    }
}

/// One branch of a batch: the op and its decoded payload.
#[derive(Debug)]
pub struct Item<'a, P> {
    pub branch: &'a BranchRef,
    pub op: Op,
    pub payload: &'a P,
}

/// Why a batch did nothing: every item must be run on its own ([`call`]), where each gets its
/// own verdict or error.
#[derive(Debug, thiserror::Error)]
pub enum BatchStopped {
    /// An item was rejected: a Try or Action refused by the business rules (a bug for a
    /// second-phase op, reported by its own call). Its index is in the items as given.
    #[error("item {0} was rejected")]
    Rejected(usize),
    /// The handler refused to lock the batch's rows ([`Handler::lock_batch`]).
    #[error("the batch's rows could not be locked")]
    LockRefused,
    /// An item needs a rollback of its own (see [`call`]).
    #[error("item {0} must be rolled back on its own")]
    RolledBack(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs the ops of several branches in **one** local transaction: steps 1 and 2 for every
/// item, then the handler's [`Handler::lock_batch`] for those that run, then step 3 for each,
/// and one commit for all; each item's verdict is the one [`call`] would give. One commit
/// instead of one per branch is the point: under load, many transactions try, confirm or
/// cancel at the same participant in the same millisecond. The barrier rows of all items go in
/// one statement. Any mix of ops, also a Try and its
/// Cancel: each item sees the rows the items before it wrote, as if they had run one after the
/// other in (gid, branch) order.
///
/// All or nothing: an item whose business change fails (a database error, a rejection) rolls
/// the whole batch back and this answers [`BatchStopped`]; nothing of the batch took effect, and
/// the caller runs the items one by one (or a rejected Try on its own and the rest as a batch
/// again). The verdicts, in the items' order, hold only once the batch committed.
///
/// Items are taken in (gid, branch) order, so two batches that share branches lock their
/// barrier rows in the same order.
pub async fn call_batch<H: Handler>(
    db: &Db,
    handler: &H,
    items: &[Item<'_, H::Payload>],
) -> Result<Vec<Verdict>, BatchStopped> {
    let key = |i: usize| (items[i].branch.gid, &items[i].branch.branch_id);
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| key(a).cmp(&key(b)));
    let mut verdicts = vec![Verdict::Duplicate; items.len()];
    let mut tx = db.begin().await?;
    // Steps 1 and 2 for every item first: barrier rows before business rows, as a lone call
    // takes them, so a lone call and a batch never wait on each other in a cycle. Distinct
    // branches (the rule) write all their rows in one statement; a branch twice in the batch
    // (its Try and its Cancel) must see the rows of the items before it, so then one by one.
    let distinct = order.windows(2).all(|w| key(w[0]) != key(w[1]));
    let inserted = if distinct {
        let ops: Vec<(&BranchRef, Op)> = order
            .iter()
            .map(|&i| (items[i].branch, items[i].op))
            .collect();
        insert_rows(&mut tx, &ops).await?
    } else {
        Vec::new()
    };
    let mut passes = Vec::with_capacity(items.len());
    for (k, &i) in order.iter().enumerate() {
        let Item { branch, op, .. } = items[i];
        let passed = match inserted.get(k) {
            Some(&inserted) => decide(&mut tx, branch, op, inserted).await?,
            None => pass(&mut tx, branch, op).await?,
        };
        match passed {
            Pass::Closed(verdict) => verdicts[i] = verdict,
            Pass::Wrote(_) => return Err(BatchStopped::RolledBack(i)),
            Pass::Open => passes.push((i, Verdict::Applied)),
            Pass::NullCompensation => passes.push((i, Verdict::NullCompensation)),
        }
    }
    // Then the business rows of the items that run, all at once in one order.
    let payloads: Vec<&H::Payload> = passes.iter().map(|(i, _)| items[*i].payload).collect();
    match handler.lock_batch(&mut tx, &payloads).await {
        Ok(()) => {}
        Err(OpError::Store(e)) => return Err(e.into()),
        Err(OpError::Rejected(_)) => return Err(BatchStopped::LockRefused),
    }
    // Step 3: the null compensations, then the ops that take effect, together. The two never
    // share a branch (a Try or Action after its null compensation hangs), and a null
    // compensation only records its own branch, so running them first changes nothing.
    let mut applying = Vec::with_capacity(passes.len());
    for (i, verdict) in passes {
        let Item {
            branch,
            op,
            payload,
        } = items[i];
        if verdict != Verdict::NullCompensation {
            applying.push(i);
            continue;
        }
        match handler
            .null_compensation(&mut tx, branch, op, payload)
            .await
        {
            Ok(()) => verdicts[i] = verdict,
            // Dropping the transaction rolls every item back.
            Err(OpError::Rejected(_)) => return Err(BatchStopped::Rejected(i)),
            Err(OpError::Store(e)) => return Err(e.into()),
        }
    }
    let batch: Vec<Item<'_, H::Payload>> = applying
        .iter()
        .map(|&i| Item {
            branch: items[i].branch,
            op: items[i].op,
            payload: items[i].payload,
        })
        .collect();
    match handler.apply_batch(&mut tx, &batch).await {
        Ok(()) => {
            for &i in &applying {
                verdicts[i] = Verdict::Applied;
            }
        }
        Err((k, OpError::Rejected(_))) => return Err(BatchStopped::Rejected(applying[k])),
        Err((_, OpError::Store(e))) => return Err(e.into()),
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(verdicts)
}

/// Locks the rows of `table` whose `id` is one of `ids`, in byte order of the ids (the order
/// a lone op that changes two rows takes them in), on PostgreSQL; SQLite's one writer needs no
/// row locks. For [`Handler::lock_batch`]; `table` is the handler's own, never input.
pub async fn lock_in_id_order(
    conn: &mut AnyConnection,
    table: &'static str,
    ids: impl IntoIterator<Item = &str>,
) -> Result<(), StoreError> {
    if conn.backend_name() != "PostgreSQL" {
        return Ok(());
    }
    let mut ids: Vec<&str> = ids
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let Some(&last) = ids.last() else {
        return Ok(());
    };
    // As many placeholders as the next power of two (the last id repeated): a handful of
    // statement texts, which each connection prepares once, instead of one per batch size.
    ids.resize(ids.len().next_power_of_two(), last);
    let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    // Locks are taken as the sorted rows come out; "C" sorts by bytes, as Rust's `str` does.
    let sql = format!(
        "SELECT id FROM {table} WHERE id IN ({}) ORDER BY id COLLATE \"C\" FOR UPDATE",
        marks.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for id in ids {
        query = query.bind(id);
    }
    query.execute(conn).await?;
    Ok(())
}

/// Deletes the barrier rows of branches **settled here** before `before_ms` (Unix ms): a
/// branch whose Confirm, Cancel or Compensate took effect (or left its null-compensation
/// marker) before then loses all its rows; returns how many.
///
/// A branch still waiting for its second phase keeps its rows however old they are: the
/// coordinator retries a Cancel for as long as it takes, and a Cancel that found its Try's row
/// gone would be taken for a null compensation and leave the money frozen for good. The price:
/// a Saga Action that is never compensated (its Saga succeeded) keeps its one row, since only the
/// coordinator knows that no Compensate can come any more.
pub async fn purge(db: &Db, before_ms: i64) -> Result<u64, StoreError> {
    let mut writer = db.single().await?;
    let r = sqlx::query(
        // Every row of a branch settled before the cutoff is older than it (the settling row
        // comes last), so the created_at index narrows the scan.
        "DELETE FROM tcc_barrier WHERE created_at < $1 AND EXISTS (SELECT 1 FROM tcc_barrier settled \
         WHERE settled.gid = tcc_barrier.gid AND settled.branch_id = tcc_barrier.branch_id \
         AND settled.op IN ('confirm', 'cancel', 'compensate') AND settled.created_at < $1)",
    )
    .bind(before_ms)
    .execute(&mut *writer)
    .await?;
    drop(writer);
    Ok(r.rows_affected())
}

/// Purges rows older than `retention` every `interval`, until the task is aborted.
pub fn spawn_purger(
    db: Db,
    retention: Duration,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let before = store::now_ms()
                .saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
            match purge(&db, before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "purged old barrier rows"),
                Err(e) => tracing::warn!(error = %e, "barrier purge failed; will try again"),
            }
        }
    })
}

/// The shortest retention accepted: a settled branch's rows must outlive any duplicate of its
/// last op still on its way (a retry whose answer was lost, a restarted coordinator's resend).
pub const MIN_RETENTION_HOURS: u64 = 24;

/// When barrier rows are purged; embed in a service's config with `#[serde(flatten)]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PurgeConfig {
    /// Rows of branches settled longer ago than this are deleted (default: 7 days; at least
    /// [`MIN_RETENTION_HOURS`]).
    pub barrier_retention_hours: u64,
    /// How often to look (default: hourly).
    pub barrier_purge_interval_secs: u64,
}

impl Default for PurgeConfig {
    fn default() -> Self {
        PurgeConfig {
            barrier_retention_hours: 24 * 7,
            barrier_purge_interval_secs: 3600,
        }
    }
}

/// A barrier retention under [`MIN_RETENTION_HOURS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "barrier_retention_hours must be between {MIN_RETENTION_HOURS} and {max} (got {0}): a \
     branch's barrier rows must outlive every duplicate of its last op",
    max = host::retention::MAX_RETENTION_HOURS
)]
pub struct RetentionOutOfRange(pub u64);

impl PurgeConfig {
    /// Refuses a retention under [`MIN_RETENTION_HOURS`].
    pub fn validate(&self) -> Result<(), RetentionOutOfRange> {
        // Too long overflowed once into a cutoff in the future (every settled row purged): a
        // century is "keep it all".
        if !(MIN_RETENTION_HOURS..=host::retention::MAX_RETENTION_HOURS)
            .contains(&self.barrier_retention_hours)
        {
            return Err(RetentionOutOfRange(self.barrier_retention_hours));
        }
        Ok(())
    }

    /// Starts the purger; it stops when `stop` resolves.
    pub fn spawn(&self, db: Db, stop: impl std::future::Future<Output = ()> + Send + 'static) {
        let purger = spawn_purger(
            db,
            Duration::from_secs(self.barrier_retention_hours.saturating_mul(3600)),
            Duration::from_secs(self.barrier_purge_interval_secs.max(1)),
        );
        tokio::spawn(async move {
            stop.await;
            purger.abort();
        });
    }
}

#[cfg(test)]
mod retention_tests {
    use super::*;

    #[test]
    fn a_retention_under_a_day_is_refused() {
        let mut c = PurgeConfig::default();
        assert!(c.validate().is_ok());
        c.barrier_retention_hours = 23;
        assert!(c.validate().unwrap_err().to_string().contains("between 24"));
        c.barrier_retention_hours = 0;
        assert!(c.validate().is_err());
        c.barrier_retention_hours = u64::MAX;
        assert!(
            c.validate().is_err(),
            "overflows into a cutoff in the future"
        );
    }
}
