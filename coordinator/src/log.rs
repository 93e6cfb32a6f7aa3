//! The coordinator's durable log: global transactions, their branches, and every call attempt.
//!
//! Writes that authorise side effects are fenced by the claim: every claim takes a new `epoch`,
//! and a driver writes only while `owner` and `epoch` are still those of its claim and the
//! status is still the one it last made durable. A driver whose lease lapsed and was claimed
//! again (by another instance, or by this one) cannot overwrite the new driver's decisions,
//! and no status ever changes other than by the state machine's table from what is stored.
//! Leases are timed after the writer queue (SQLite admits one writer at a time), so a claim
//! never commits already expired.

use crate::machine::{Branch, First, Mode, Op, Rollback, Second, Status, Txn};
use ids::Gid;
use sqlx::Row;
use std::collections::HashSet;
use store::{Db, StoreError};

/// A branch as requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBranch {
    pub branch_id: String,
    pub participant: String,
    pub payload: Vec<u8>,
    pub depends_on: Vec<usize>,
    pub retriable: bool,
}

/// A global transaction to record.
#[derive(Debug, Clone)]
pub struct NewTxn {
    pub gid: Gid,
    pub mode: Mode,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
    pub concurrent: bool,
    pub branch_timeout_ms: i64,
    pub deadline_at: i64,
    pub branches: Vec<NewBranch>,
    /// The trace the request came in (32 hex digits), for the console's link to it.
    pub trace_id: Option<String>,
}

/// A recorded global transaction with what the driver needs.
#[derive(Debug, Clone)]
pub struct Stored {
    pub gid: Gid,
    pub txn: Txn,
    pub idempotency_key: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub deadline_at: i64,
    pub next_attempt_at: i64,
    pub attempts: i64,
    pub branch_timeout_ms: i64,
    pub owner: Option<String>,
    /// The claim's fencing token (see the module docs).
    pub epoch: i64,
    /// Until when (Unix ms) the claim holds.
    pub lease_until: i64,
    pub branches: Vec<StoredBranch>,
}

impl Stored {
    /// The state [`insert`] wrote for `new`, owned by `owner` until `lease_until`: what a fresh
    /// read would return.
    pub fn recorded(new: &NewTxn, owner: &str, lease_until: i64) -> Stored {
        let now = store::now_ms();
        Stored {
            gid: new.gid,
            txn: Txn {
                mode: new.mode,
                status: Status::Prepared,
                branches: new
                    .branches
                    .iter()
                    .map(|b| Branch::new(b.depends_on.clone()).retriable(b.retriable))
                    .collect(),
                reason: None,
            },
            idempotency_key: new.idempotency_key.clone(),
            created_at: now,
            updated_at: now,
            deadline_at: new.deadline_at,
            next_attempt_at: now,
            attempts: 0,
            branch_timeout_ms: new.branch_timeout_ms,
            owner: Some(owner.to_owned()),
            epoch: FIRST_EPOCH,
            lease_until,
            branches: new
                .branches
                .iter()
                .map(|b| StoredBranch {
                    branch_id: b.branch_id.clone(),
                    participant: b.participant.clone(),
                    payload: b.payload.clone(),
                    attempts: 0,
                    last_error: None,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoredBranch {
    pub branch_id: String,
    pub participant: String,
    pub payload: Vec<u8>,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// How one call ended, as the timeline shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A business rejection (FAILURE).
    Failure,
    /// A transport error, a timeout or ONGOING: unknown.
    Error,
    /// Still unanswered when the decision came; the drive stopped waiting for it.
    Abandoned,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Success,
        Outcome::Failure,
        Outcome::Error,
        Outcome::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Error => "error",
            Outcome::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// One call, for the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub idx: i64,
    pub op: Op,
    pub started_at: i64,
    pub duration_us: i64,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub owner: String,
}

pub fn mode_str(mode: Mode) -> &'static str {
    match mode {
        Mode::Tcc => "tcc",
        Mode::Saga => "saga",
    }
}

fn parse_mode(s: &str) -> Result<Mode, StoreError> {
    mode_named(s).ok_or_else(|| corrupt("mode", s))
}

/// The mode [`mode_str`] spells `s`.
pub fn mode_named(s: &str) -> Option<Mode> {
    [Mode::Tcc, Mode::Saga]
        .into_iter()
        .find(|m| mode_str(*m) == s)
}

/// The `reason` column holds the typed [`Rollback`] as JSON; words from before it was typed
/// read back as [`Rollback::Described`].
fn encode_reason(r: &Rollback) -> String {
    serde_json::to_string(r).unwrap_or_else(|_| r.to_string())
}

fn decode_reason(text: String) -> Rollback {
    serde_json::from_str(&text).unwrap_or(Rollback::Described { text })
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("unknown {what} {value:?} in the log"))
}

/// A gid as the log stores it (a `BIGINT`); a negative one is corruption, not a transaction.
fn stored_gid(raw: i64) -> Result<Gid, StoreError> {
    Gid::from_i64(raw).map_err(|_| corrupt("gid", &raw.to_string()))
}

/// `n` rows of `cols` placeholders each, numbered from `$1`, formatted by `row`.
fn rows(n: usize, cols: usize, row: impl Fn(&[String]) -> String) -> String {
    rows_from(1, n, cols, row)
}

/// `n` rows of `cols` placeholders each, numbered from `$first`, formatted by `row`.
fn rows_from(first: usize, n: usize, cols: usize, row: impl Fn(&[String]) -> String) -> String {
    (0..n)
        .map(|r| {
            let p: Vec<String> = (0..cols)
                .map(|c| format!("${}", first + r * cols + c))
                .collect();
            row(&p)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What one [`purge_ended`] round removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Transactions whose branches and timeline were deleted.
    pub transactions: u64,
    /// Of those, the ones deleted entirely (no idempotency key).
    pub removed: u64,
}

/// Deletes, for up to `batch` transactions that **ended** (succeeded or failed) before
/// `before_ms`, their branches and timeline; a transaction without an idempotency key goes
/// entirely. Returns what it removed.
///
/// A transaction that has not ended keeps everything however old: recovery drives it from
/// these rows, for as long as it takes. A keyed transaction keeps its one row (status, reason,
/// key and request hash): a late replay of its key (order-svc taking over an interrupted
/// request, days later) must get the same answer and never start the order again. The row with
/// the largest gid stays too: the id generator resumes above it after a restart.
pub async fn purge_ended(db: &Db, before_ms: i64, batch: i64) -> Result<Purged, StoreError> {
    let ended: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT gid, idempotency_key FROM global_txns WHERE status IN ('succeeded', 'failed') \
         AND updated_at < $1 AND (EXISTS (SELECT 1 FROM branches b WHERE b.gid = global_txns.gid) \
         OR (idempotency_key IS NULL AND gid < (SELECT MAX(gid) FROM global_txns))) ORDER BY gid LIMIT $2",
    )
    .bind(before_ms)
    .bind(batch.max(1))
    .fetch_all(db.pool())
    .await?;
    if ended.is_empty() {
        return Ok(Purged::default());
    }
    let list = rows(ended.len(), 1, |p| p[0].clone());
    let mut tx = db.begin().await?;
    for sql in [
        format!("DELETE FROM attempts WHERE gid IN ({list})"),
        format!("DELETE FROM branches WHERE gid IN ({list})"),
    ] {
        let mut q = sqlx::query(&sql);
        for (gid, _) in &ended {
            q = q.bind(gid);
        }
        q.execute(&mut *tx).await?;
    }
    let unkeyed: Vec<i64> = ended
        .iter()
        .filter(|(_, key)| key.is_none())
        .map(|(gid, _)| *gid)
        .collect();
    let mut removed = 0;
    if !unkeyed.is_empty() {
        let sql = format!(
            "DELETE FROM global_txns WHERE gid IN ({}) AND idempotency_key IS NULL \
             AND status IN ('succeeded', 'failed') AND gid < (SELECT MAX(gid) FROM global_txns)",
            rows(unkeyed.len(), 1, |p| p[0].clone())
        );
        let mut q = sqlx::query(&sql);
        for gid in &unkeyed {
            q = q.bind(gid);
        }
        removed = q.execute(&mut *tx).await?.rows_affected();
    }
    tx.commit().await?;
    Ok(Purged {
        transactions: ended.len() as u64,
        removed,
    })
}

/// The epoch of the claim a new transaction is recorded with.
pub const FIRST_EPOCH: i64 = 1;

/// Records a new transaction, owned by `owner` for `lease_ms` with [`FIRST_EPOCH`]; returns
/// until when the claim holds. A unique violation means the idempotency key (or the gid) is
/// taken.
pub async fn insert(db: &Db, new: &NewTxn, owner: &str, lease_ms: i64) -> Result<i64, StoreError> {
    match insert_group(db, &[new], owner, lease_ms).await {
        Ok(mut recorded) => recorded.pop().unwrap_or(Err(StoreError::NotFound)),
        Err(GroupFailed::RolledBack(e) | GroupFailed::Unknown(e)) => Err(e),
    }
}

/// The most new transactions one [`insert_group`] records.
pub const MAX_INSERT_GROUP: usize = 64;

/// [`insert`] for several new transactions in **one** local transaction (group commit): one
/// statement for their rows, in idempotency-key order (two groups racing for keys wait for
/// each other in one order, never in a cycle), and one for the branches of those recorded. A
/// member whose idempotency key (or gid) is taken records nothing and gets
/// [`StoreError::UniqueViolation`], as alone; the others are not held back by it. A database
/// error fails the whole group, none of it written: the caller may record each alone.
pub async fn insert_group(
    db: &Db,
    group: &[&NewTxn],
    owner: &str,
    lease_ms: i64,
) -> Result<Vec<Result<i64, StoreError>>, GroupFailed> {
    let mut order: Vec<usize> = (0..group.len()).collect();
    order.sort_by(|&a, &b| {
        (&group[a].idempotency_key, group[a].gid).cmp(&(&group[b].idempotency_key, group[b].gid))
    });
    let mut tx = db.begin().await.map_err(GroupFailed::RolledBack)?;
    // After the writer queue: the lease counts from when this write can commit.
    let now = store::now_ms();
    let recorded = insert_rows(&mut tx, group, &order, owner, now, now + lease_ms)
        .await
        .map_err(GroupFailed::RolledBack)?;
    tx.commit()
        .await
        .map_err(|e| GroupFailed::Unknown(e.into()))?;
    Ok(group
        .iter()
        .map(|n| {
            if recorded.contains(&n.gid.as_i64()) {
                Ok(now + lease_ms)
            } else {
                Err(StoreError::UniqueViolation { constraint: None })
            }
        })
        .collect())
}

/// The statements of [`insert_group`]: the gids recorded.
async fn insert_rows(
    tx: &mut store::WriteTx,
    group: &[&NewTxn],
    order: &[usize],
    owner: &str,
    now: i64,
    lease_until: i64,
) -> Result<HashSet<i64>, StoreError> {
    // `$1`…`$4` are shared by every row: status, owner, lease, epoch.
    let sql = format!(
        "INSERT INTO global_txns (gid, mode, status, idempotency_key, request_hash, reason, concurrent, branch_timeout_ms, \
         created_at, updated_at, deadline_at, next_attempt_at, attempts, owner, lease_until, epoch, trace_id) \
         VALUES {} ON CONFLICT DO NOTHING RETURNING gid",
        rows_from(5, order.len(), 9, |p| format!(
            "({}, {}, $1, {}, {}, NULL, {}, {}, {}, {}, {}, {}, 0, $2, $3, $4, {})",
            p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[6], p[7], p[6], p[8]
        ))
    );
    let mut insert = sqlx::query_scalar::<_, i64>(&sql)
        .bind(Status::Prepared.as_str())
        .bind(owner)
        .bind(lease_until)
        .bind(FIRST_EPOCH);
    for &i in order {
        let new = group[i];
        insert = insert
            .bind(new.gid.as_i64())
            .bind(mode_str(new.mode))
            .bind(new.idempotency_key.clone())
            .bind(&new.request_hash)
            .bind(i64::from(new.concurrent))
            .bind(new.branch_timeout_ms)
            .bind(now)
            .bind(new.deadline_at)
            .bind(new.trace_id.clone());
    }
    let recorded: HashSet<i64> = insert.fetch_all(&mut **tx).await?.into_iter().collect();
    // One statement for all branches: each statement is a round trip and an executor run.
    let branches: Vec<(&NewTxn, usize, &NewBranch)> = order
        .iter()
        .map(|&i| group[i])
        .filter(|new| recorded.contains(&new.gid.as_i64()))
        .flat_map(|new| {
            new.branches
                .iter()
                .enumerate()
                .map(move |(idx, b)| (new, idx, b))
        })
        .collect();
    if branches.is_empty() {
        return Ok(recorded);
    }
    let sql = format!(
        "INSERT INTO branches (gid, idx, branch_id, participant, payload, depends_on, phase1, phase2, retriable, attempts, last_error) \
         VALUES {}",
        rows_from(3, branches.len(), 7, |p| format!(
            "({}, {}, {}, {}, {}, {}, $1, $2, {}, 0, NULL)",
            p[0], p[1], p[2], p[3], p[4], p[5], p[6]
        ))
    );
    let mut insert = sqlx::query(&sql)
        .bind(First::NotStarted.as_str())
        .bind(Second::NotNeeded.as_str());
    for (new, idx, b) in branches {
        insert = insert
            .bind(new.gid.as_i64())
            .bind(idx as i64)
            .bind(&b.branch_id)
            .bind(&b.participant)
            .bind(b.payload.as_slice())
            .bind(
                b.depends_on
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .bind(i64::from(b.retriable));
    }
    insert.execute(&mut **tx).await?;
    Ok(recorded)
}

/// The transaction recorded under an idempotency key: (gid, request hash).
pub async fn find_by_key(db: &Db, key: &str) -> Result<Option<(Gid, String)>, StoreError> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT gid, request_hash FROM global_txns WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(db.pool())
            .await?;
    row.map(|(gid, hash)| Ok((stored_gid(gid)?, hash)))
        .transpose()
}

/// The largest gid ever recorded: the Snowflake generator's high-water mark at start-up
/// (`store::node::snowflake`), so a restart with a clock behind its predecessor's never hands
/// out a gid again.
pub const MAX_GID: &str = "SELECT CAST(MAX(gid) AS BIGINT) FROM global_txns";

/// Status and rollback reason of a transaction.
pub async fn status_of(
    db: &Db,
    gid: Gid,
) -> Result<Option<(Status, Option<Rollback>)>, StoreError> {
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT status, reason FROM global_txns WHERE gid = $1")
            .bind(gid.as_i64())
            .fetch_optional(db.pool())
            .await?;
    row.map(|(s, r)| {
        Ok((
            Status::parse(&s).ok_or_else(|| corrupt("status", &s))?,
            r.map(decode_reason),
        ))
    })
    .transpose()
}

/// Loads a transaction with its branches.
pub async fn load(db: &Db, gid: Gid) -> Result<Option<Stored>, StoreError> {
    Ok(load_many(db, &[gid]).await?.pop())
}

/// Loads transactions with their branches, in two queries whatever their number, in the
/// order of `gids` (those that do not exist are left out).
pub async fn load_many(db: &Db, gids: &[Gid]) -> Result<Vec<Stored>, StoreError> {
    if gids.is_empty() {
        return Ok(Vec::new());
    }
    let list = rows(gids.len(), 1, |p| p[0].clone());
    let txn_sql = format!(
        "SELECT gid, mode, status, idempotency_key, reason, concurrent, branch_timeout_ms, created_at, updated_at, \
         deadline_at, next_attempt_at, attempts, owner, epoch, lease_until FROM global_txns WHERE gid IN ({list})"
    );
    let branch_sql = format!(
        "SELECT gid, branch_id, participant, payload, depends_on, phase1, phase2, retriable, attempts, last_error FROM branches \
         WHERE gid IN ({list}) ORDER BY gid, idx"
    );
    let mut txns = sqlx::query(&txn_sql);
    let mut branch_rows = sqlx::query(&branch_sql);
    for gid in gids {
        txns = txns.bind(gid.as_i64());
        branch_rows = branch_rows.bind(gid.as_i64());
    }
    let txns = txns.fetch_all(db.pool()).await?;
    let mut by_gid: std::collections::HashMap<Gid, (Vec<Branch>, Vec<StoredBranch>)> =
        std::collections::HashMap::new();
    for r in branch_rows.fetch_all(db.pool()).await? {
        let deps: String = r.try_get("depends_on")?;
        let phase1: String = r.try_get("phase1")?;
        let phase2: String = r.try_get("phase2")?;
        let (states, branches) = by_gid.entry(stored_gid(r.try_get("gid")?)?).or_default();
        states.push(Branch {
            first: First::parse(&phase1).ok_or_else(|| corrupt("phase1", &phase1))?,
            second: Second::parse(&phase2).ok_or_else(|| corrupt("phase2", &phase2))?,
            depends_on: deps
                .split(',')
                .filter(|s| !s.is_empty())
                .filter_map(|s| s.parse().ok())
                .collect(),
            retriable: r.try_get::<i64, _>("retriable")? != 0,
        });
        branches.push(StoredBranch {
            branch_id: r.try_get("branch_id")?,
            participant: r.try_get("participant")?,
            payload: r.try_get("payload")?,
            attempts: r.try_get("attempts")?,
            last_error: r.try_get("last_error")?,
        });
    }
    let mut loaded: std::collections::HashMap<Gid, Stored> = std::collections::HashMap::new();
    for row in txns {
        let gid = stored_gid(row.try_get("gid")?)?;
        let status: String = row.try_get("status")?;
        let (states, branches) = by_gid.remove(&gid).unwrap_or_default();
        loaded.insert(
            gid,
            Stored {
                gid,
                txn: Txn {
                    mode: parse_mode(row.try_get("mode")?)?,
                    status: Status::parse(&status).ok_or_else(|| corrupt("status", &status))?,
                    branches: states,
                    reason: row
                        .try_get::<Option<String>, _>("reason")?
                        .map(decode_reason),
                },
                idempotency_key: row.try_get("idempotency_key")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                deadline_at: row.try_get("deadline_at")?,
                next_attempt_at: row.try_get("next_attempt_at")?,
                attempts: row.try_get("attempts")?,
                branch_timeout_ms: row.try_get("branch_timeout_ms")?,
                owner: row.try_get("owner")?,
                epoch: row.try_get("epoch")?,
                lease_until: row.try_get("lease_until")?,
                branches,
            },
        );
    }
    Ok(gids.iter().filter_map(|g| loaded.remove(g)).collect())
}

/// What a driver writes back.
#[derive(Debug)]
pub struct Checkpoint<'a> {
    pub gid: Gid,
    pub owner: &'a str,
    /// The epoch of the claim this driver holds.
    pub epoch: i64,
    /// The status this driver last made durable: the write happens only if it is still stored.
    pub from: Status,
    pub txn: &'a Txn,
    pub branches: &'a [StoredBranch],
    pub new_attempts: &'a [Attempt],
    /// `Some(t)`: give the transaction up until `t` (next round); `None`: keep driving it.
    pub release_until: Option<i64>,
    pub lease_ms: i64,
}

/// Writes the transaction's state and the buffered attempts in one local transaction, only if
/// the claim (`owner`, `epoch`) still holds and the stored status is `from`. Returns until when
/// the claim now holds (0 when released), or `None` when the transaction was claimed again (by
/// another instance or this one) or changed under it.
pub async fn checkpoint(db: &Db, c: Checkpoint<'_>) -> Result<Option<i64>, StoreError> {
    match checkpoint_group(db, std::slice::from_ref(&c)).await {
        Ok(written) => Ok(written.into_iter().next().flatten()),
        Err(GroupFailed::RolledBack(e) | GroupFailed::Unknown(e)) => Err(e),
    }
}

/// Why a group commit wrote nothing, or may have.
#[derive(Debug, thiserror::Error)]
pub enum GroupFailed {
    /// A statement failed: the transaction rolled back, nothing of the group was written.
    #[error(transparent)]
    RolledBack(StoreError),
    /// The commit itself failed (a connection lost during COMMIT): the group may or may not be
    /// written.
    #[error("the group's commit may not have happened: {0}")]
    Unknown(StoreError),
}

/// The most checkpoints one group commit carries.
pub const MAX_GROUP: usize = 64;

/// [`checkpoint`] for several transactions in **one** local transaction (group commit): every
/// member's fenced status write first, in one statement; then the branches and attempts of the
/// members whose fence held, in one statement each: four statements whatever the group's size.
/// A member whose claim or status moved writes nothing at all (`None`), as alone; the others
/// are not held back by it. A database error fails the whole group, none of it written: the
/// caller may write each alone.
pub async fn checkpoint_group(
    db: &Db,
    group: &[Checkpoint<'_>],
) -> Result<Vec<Option<i64>>, GroupFailed> {
    let (tx, written) = write_group(db, group)
        .await
        .map_err(GroupFailed::RolledBack)?;
    if let Some(tx) = tx {
        tx.commit()
            .await
            .map_err(|e| GroupFailed::Unknown(e.into()))?;
    }
    Ok(written)
}

/// The statements of [`checkpoint_group`], uncommitted (`None`: nothing to commit, rolled
/// back).
async fn write_group(
    db: &Db,
    group: &[Checkpoint<'_>],
) -> Result<(Option<store::WriteTx>, Vec<Option<i64>>), StoreError> {
    let mut order: Vec<usize> = (0..group.len()).collect();
    order.sort_by_key(|&i| group[i].gid);
    if order.windows(2).any(|w| group[w[0]].gid == group[w[1]].gid) {
        // One fenced write per transaction and group: a second would be judged by the first's
        // fence. Never formed by the engine (one drive per transaction); written each alone.
        return Err(StoreError::Unavailable(
            "a group holds two checkpoints of one transaction".into(),
        ));
    }
    let mut written = vec![None; group.len()];
    let mut tx = db.begin().await?;
    // After the writer queue: the lease counts from when this write can commit.
    let now = store::now_ms();
    // Every member's fenced status write in one UPDATE … FROM (VALUES …); the members whose
    // fence held come back. The rows are listed in gid order, but the order they are locked in
    // is the plan's: two instances' groups sharing transactions (a lapsed claim's and its new
    // owner's) may deadlock, and PostgreSQL then rolls one back, which is written each alone.
    // Each row's fence is judged on its latest committed version, as alone.
    let sql = format!(
        "UPDATE global_txns SET status = v.column2, reason = v.column3, updated_at = $1, owner = v.column4, \
         lease_until = v.column5, next_attempt_at = v.column6, attempts = global_txns.attempts + v.column7 \
         FROM (VALUES {}) AS v WHERE global_txns.gid = v.column1 AND global_txns.owner = v.column8 \
         AND global_txns.epoch = v.column9 AND global_txns.status = v.column10 RETURNING global_txns.gid",
        rows_from(2, group.len(), 10, |p| format!("({})", p.join(", ")))
    );
    // The claim a member's write leaves: (owner, lease_until, next_attempt_at, round).
    fn claim<'a>(c: &Checkpoint<'a>, now: i64) -> (Option<&'a str>, i64, i64, i64) {
        match c.release_until {
            Some(at) => (None, 0, at, 1),
            None => (Some(c.owner), now + c.lease_ms, now, 0),
        }
    }
    let mut update = sqlx::query_scalar::<_, i64>(&sql).bind(now);
    for &i in &order {
        let c = &group[i];
        let (owner, lease_until, next_attempt_at, round) = claim(c, now);
        update = update
            .bind(c.gid.as_i64())
            .bind(c.txn.status.as_str())
            .bind(c.txn.reason.as_ref().map(encode_reason))
            .bind(owner)
            .bind(lease_until)
            .bind(next_attempt_at)
            .bind(round)
            .bind(c.owner)
            .bind(c.epoch)
            .bind(c.from.as_str());
    }
    let held_gids: HashSet<i64> = update.fetch_all(&mut *tx).await?.into_iter().collect();
    for &i in &order {
        if held_gids.contains(&group[i].gid.as_i64()) {
            written[i] = Some(claim(&group[i], now).1);
        }
    }
    let held: Vec<&Checkpoint<'_>> = order
        .iter()
        .filter(|&&i| written[i].is_some())
        .map(|&i| &group[i])
        .collect();
    if held.is_empty() {
        tx.rollback().await?;
        return Ok((None, written));
    }
    // All branches in one UPDATE … FROM (VALUES …) (PostgreSQL, SQLite ≥ 3.33; VALUES columns
    // are column1… in both), and all new attempts in one INSERT.
    let branches: usize = held.iter().map(|c| c.branches.len()).sum();
    if branches > 0 {
        let sql = format!(
            "UPDATE branches SET phase1 = v.column3, phase2 = v.column4, attempts = v.column5, last_error = v.column6 \
             FROM (VALUES {}) AS v WHERE branches.gid = v.column1 AND branches.idx = v.column2",
            rows(branches, 6, |p| format!(
                "({}, {}, {}, {}, {}, {})",
                p[0], p[1], p[2], p[3], p[4], p[5]
            ))
        );
        let mut update = sqlx::query(&sql);
        for c in &held {
            for (idx, (state, b)) in c.txn.branches.iter().zip(c.branches).enumerate() {
                update = update
                    .bind(c.gid.as_i64())
                    .bind(idx as i64)
                    .bind(state.first.as_str())
                    .bind(state.second.as_str())
                    .bind(b.attempts)
                    .bind(b.last_error.clone());
            }
        }
        update.execute(&mut *tx).await?;
    }
    let attempts: usize = held.iter().map(|c| c.new_attempts.len()).sum();
    if attempts > 0 {
        let sql = format!(
            "INSERT INTO attempts (id, gid, idx, op, started_at, duration_us, outcome, error, owner) VALUES {}",
            rows(attempts, 9, |p| format!("({})", p.join(", ")))
        );
        let mut insert = sqlx::query(&sql);
        for c in &held {
            for a in c.new_attempts {
                insert = insert
                    .bind(store::random_id())
                    .bind(c.gid.as_i64())
                    .bind(a.idx)
                    .bind(a.op.as_str())
                    .bind(a.started_at)
                    .bind(a.duration_us)
                    .bind(a.outcome.as_str())
                    .bind(a.error.clone())
                    .bind(&a.owner);
            }
        }
        insert.execute(&mut *tx).await?;
    }
    Ok((Some(tx), written))
}

/// A won claim: the transaction and the claim's fencing token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub gid: Gid,
    pub epoch: i64,
}

/// Claims up to `limit` unfinished transactions that are due and not leased (or leased by a
/// dead earlier incarnation of this node, `stale_owner_prefix`), for `lease_ms`, skipping those
/// `busy` says this process is still driving. Each claim is a conditional update that takes a
/// new epoch, so two claims of one transaction never share a fencing token.
pub async fn claim_due(
    db: &Db,
    owner: &str,
    stale_owner_prefix: &str,
    lease_ms: i64,
    limit: i64,
    busy: impl Fn(Gid) -> bool,
) -> Result<Vec<Claim>, StoreError> {
    let now = store::now_ms();
    let candidates: Vec<i64> = sqlx::query_scalar(
        "SELECT gid FROM global_txns WHERE status IN ('prepared', 'confirming', 'cancelling') AND next_attempt_at <= $1 \
         AND (lease_until < $1 OR (owner LIKE $2 AND owner <> $3)) ORDER BY next_attempt_at LIMIT $4",
    )
    .bind(now)
    .bind(format!("{stale_owner_prefix}%"))
    .bind(owner)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    let mut claimed = Vec::with_capacity(candidates.len());
    let candidates = candidates
        .into_iter()
        .map(stored_gid)
        .collect::<Result<Vec<_>, _>>()?;
    for gid in candidates.into_iter().filter(|gid| !busy(*gid)) {
        // One statement, its own transaction.
        let mut writer = db.single().await?;
        // After the writer queue: a claim never commits with a lease that already ran out.
        let now = store::now_ms();
        let epoch: Option<i64> = sqlx::query_scalar(
            "UPDATE global_txns SET owner = $1, lease_until = $2, epoch = epoch + 1 WHERE gid = $3 \
             AND status IN ('prepared', 'confirming', 'cancelling') \
             AND (lease_until < $4 OR (owner LIKE $5 AND owner <> $1)) RETURNING epoch",
        )
        .bind(owner)
        .bind(now + lease_ms)
        .bind(gid.as_i64())
        .bind(now)
        .bind(format!("{stale_owner_prefix}%"))
        .fetch_optional(&mut *writer)
        .await?;
        drop(writer);
        if let Some(epoch) = epoch {
            claimed.push(Claim { gid, epoch });
        }
    }
    Ok(claimed)
}

/// Makes an unfinished transaction due now; returns its status (None: no such transaction).
pub async fn retry_now(db: &Db, gid: Gid) -> Result<Option<Status>, StoreError> {
    let mut writer = db.single().await?;
    sqlx::query(
        "UPDATE global_txns SET next_attempt_at = $1 WHERE gid = $2 AND status IN ('prepared', 'confirming', 'cancelling')",
    )
    .bind(store::now_ms())
    .bind(gid.as_i64())
    .execute(&mut *writer)
    .await?;
    drop(writer);
    Ok(status_of(db, gid).await?.map(|(s, _)| s))
}

/// One line of a listing.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = TransactionSummary)]
pub struct Summary {
    #[schema(value_type = String, example = "7284019283746521")]
    pub gid: Gid,
    /// `tcc` or `saga`.
    pub mode: String,
    /// `prepared`, `confirming`, `cancelling`, `succeeded` or `failed`.
    pub status: String,
    /// Why it was rolled back, in words.
    pub reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub attempts: i64,
    pub next_attempt_at: i64,
}

/// What a listing selects; every field but the page size is optional.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<Status>,
    pub mode: Option<Mode>,
    /// Created at or after (Unix ms).
    pub created_from: Option<i64>,
    /// Created before (Unix ms).
    pub created_to: Option<i64>,
    /// A gid, an idempotency key, or the part of a key after a `:` (order-svc's keys are
    /// `order:<order id>` and `refund:<refund id>`, so an order id finds its transactions). Case
    /// sensitive on PostgreSQL, not for ASCII on SQLite (`LIKE`).
    pub search: Option<String>,
    /// Only gids below this one (the next page).
    pub before: Option<Gid>,
    pub limit: i64,
}

/// A value bound into a query built from a [`Filter`].
enum Bound {
    Int(i64),
    Text(String),
}

/// Transactions newest first, as `filter` selects them.
pub async fn list(db: &Db, filter: &Filter) -> Result<Vec<Summary>, StoreError> {
    type Row = (i64, String, String, Option<String>, i64, i64, i64, i64);
    let mut binds = vec![Bound::Int(filter.before.map_or(i64::MAX, Gid::as_i64))];
    let mut sql = String::from(
        "SELECT gid, mode, status, reason, created_at, updated_at, attempts, next_attempt_at FROM global_txns \
         WHERE gid < $1",
    );
    let next = |binds: &mut Vec<Bound>, value: Bound| {
        binds.push(value);
        format!("${}", binds.len())
    };
    if let Some(status) = filter.status {
        let p = next(&mut binds, Bound::Text(status.as_str().into()));
        sql += &format!(" AND status = {p}");
    }
    if let Some(mode) = filter.mode {
        let p = next(&mut binds, Bound::Text(mode_str(mode).into()));
        sql += &format!(" AND mode = {p}");
    }
    if let Some(from) = filter.created_from {
        // The gid bound lets the primary key narrow the scan; created_at is the exact test.
        // A gid is made before its row is written (a queue, a pool, a clock step between), so
        // the bound starts well before `from`.
        let g = next(
            &mut binds,
            Bound::Int(Gid::first_at(from.saturating_sub(GID_SLACK_MS).max(0) as u64).as_i64()),
        );
        let p = next(&mut binds, Bound::Int(from));
        sql += &format!(" AND gid >= {g} AND created_at >= {p}");
    }
    if let Some(to) = filter.created_to {
        let p = next(&mut binds, Bound::Int(to));
        sql += &format!(" AND created_at < {p}");
    }
    if let Some(text) = filter
        .search
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let key = next(&mut binds, Bound::Text(text.into()));
        let escaped: String = text
            .chars()
            .flat_map(|c| match c {
                '\\' | '%' | '_' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        let suffix = next(&mut binds, Bound::Text(format!("%:{escaped}")));
        let by_gid = match text.parse::<Gid>() {
            Ok(gid) => {
                let p = next(&mut binds, Bound::Int(gid.as_i64()));
                format!("gid = {p} OR ")
            }
            Err(_) => String::new(),
        };
        sql += &format!(
            " AND ({by_gid}idempotency_key = {key} OR idempotency_key LIKE {suffix} ESCAPE '\\')"
        );
    }
    let p = next(&mut binds, Bound::Int(filter.limit));
    sql += &format!(" ORDER BY gid DESC LIMIT {p}");
    let mut query = sqlx::query_as::<_, Row>(&sql);
    for b in binds {
        query = match b {
            Bound::Int(v) => query.bind(v),
            Bound::Text(v) => query.bind(v),
        };
    }
    query
        .fetch_all(db.pool())
        .await?
        .into_iter()
        .map(
            |(gid, mode, status, reason, created_at, updated_at, attempts, next_attempt_at)| {
                Ok(Summary {
                    gid: stored_gid(gid)?,
                    mode,
                    status,
                    reason: reason.map(|r| decode_reason(r).to_string()),
                    created_at,
                    updated_at,
                    attempts,
                    next_attempt_at,
                })
            },
        )
        .collect()
}

/// The trace a transaction was started in, when one was recorded.
pub async fn trace_id(db: &Db, gid: Gid) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar::<_, Option<String>>("SELECT trace_id FROM global_txns WHERE gid = $1")
            .bind(gid.as_i64())
            .fetch_optional(db.pool())
            .await?
            .flatten(),
    )
}

/// The log's recent activity, for the console's live numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Recent {
    /// How far back (ms) the numbers look.
    pub window_ms: i64,
    /// Transactions created in the window.
    pub started: i64,
    /// Of those, how many have ended (succeeded or failed).
    pub ended: i64,
    /// Branch call latency per participant over the answered calls of the window.
    pub latency: Vec<Latency>,
    /// See [`recovery_lag_ms`].
    pub recovery_lag_ms: i64,
}

/// Branch call latency at one participant.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    pub participant: String,
    pub calls: usize,
    pub p50_us: i64,
    pub p99_us: i64,
}

/// At most this many calls go into [`recent`]'s percentiles (the newest first).
const RECENT_CALLS: i64 = 50_000;

/// How long before its row's `created_at` a transaction's gid may have been made.
const GID_SLACK_MS: i64 = 5 * 60_000;

/// What the log shows of the last `window_ms`: rates and per-participant latency, read from
/// every instance's writes (not only this process's), over index ranges (transactions by gid,
/// which grows with creation time; calls by their start), so a console refresh stays cheap on
/// a long log. The latency covers every call of the window, an old transaction's included.
pub async fn recent(db: &Db, window_ms: i64) -> Result<Recent, StoreError> {
    let since = store::now_ms() - window_ms;
    let floor = Gid::first_at((since - GID_SLACK_MS).max(0) as u64).as_i64();
    let (started, ended): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COUNT(*) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN status IN ('succeeded', 'failed') THEN 1 ELSE 0 END), 0) AS BIGINT) \
         FROM global_txns WHERE gid >= $1 AND created_at >= $2",
    )
    .bind(floor)
    .bind(since)
    .fetch_one(db.pool())
    .await?;
    let calls: Vec<(String, i64)> = sqlx::query_as(
        "SELECT b.participant, a.duration_us FROM attempts a \
         JOIN branches b ON b.gid = a.gid AND b.idx = a.idx \
         WHERE a.started_at >= $1 AND a.outcome <> 'abandoned' \
         ORDER BY a.started_at DESC LIMIT $2",
    )
    .bind(since)
    .bind(RECENT_CALLS)
    .fetch_all(db.pool())
    .await?;
    let mut by_participant: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (participant, us) in calls {
        by_participant.entry(participant).or_default().push(us);
    }
    let latency = by_participant
        .into_iter()
        .map(|(participant, mut us)| {
            us.sort_unstable();
            Latency {
                participant,
                calls: us.len(),
                p50_us: percentile(&us, 50),
                p99_us: percentile(&us, 99),
            }
        })
        .collect();
    Ok(Recent {
        window_ms,
        started,
        ended,
        latency,
        recovery_lag_ms: recovery_lag_ms(db).await?,
    })
}

/// The nearest-rank percentile of sorted values (0 for none).
pub fn percentile(sorted: &[i64], p: usize) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// Every attempt of a transaction, oldest first.
pub async fn timeline(db: &Db, gid: Gid) -> Result<Vec<Attempt>, StoreError> {
    Ok(timelines(db, &[gid])
        .await?
        .remove(&gid)
        .unwrap_or_default())
}

/// Every attempt of each of `gids`, oldest first, in one query.
pub async fn timelines(
    db: &Db,
    gids: &[Gid],
) -> Result<std::collections::HashMap<Gid, Vec<Attempt>>, StoreError> {
    let mut by_gid: std::collections::HashMap<Gid, Vec<Attempt>> = std::collections::HashMap::new();
    if gids.is_empty() {
        return Ok(by_gid);
    }
    type Row = (i64, i64, String, i64, i64, String, Option<String>, String);
    let sql = format!(
        "SELECT gid, idx, op, started_at, duration_us, outcome, error, owner FROM attempts \
         WHERE gid IN ({}) ORDER BY gid, started_at, idx",
        rows(gids.len(), 1, |p| p[0].clone())
    );
    let mut query = sqlx::query_as::<_, Row>(&sql);
    for gid in gids {
        query = query.bind(gid.as_i64());
    }
    for (gid, idx, op, started_at, duration_us, outcome, error, owner) in
        query.fetch_all(db.pool()).await?
    {
        by_gid.entry(stored_gid(gid)?).or_default().push(attempt(
            idx,
            &op,
            started_at,
            duration_us,
            &outcome,
            error,
            owner,
        )?);
    }
    Ok(by_gid)
}

/// Counts by status (for metrics and the audit).
pub async fn counts(db: &Db) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT status, CAST(COUNT(*) AS BIGINT) FROM global_txns GROUP BY status")
            .fetch_all(db.pool())
            .await?,
    )
}

/// Milliseconds the oldest due, unclaimed transaction has been waiting (recovery lag).
pub async fn recovery_lag_ms(db: &Db) -> Result<i64, StoreError> {
    let now = store::now_ms();
    let oldest: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(MIN(next_attempt_at) AS BIGINT) FROM global_txns \
         WHERE status IN ('prepared', 'confirming', 'cancelling') AND lease_until < $1",
    )
    .bind(now)
    .fetch_one(db.pool())
    .await?;
    Ok(oldest.map(|t| (now - t).max(0)).unwrap_or(0))
}

#[cfg(test)]
mod placeholder_tests {
    use super::*;

    #[test]
    fn rows_number_their_placeholders_on_from_the_first() {
        assert_eq!(
            rows_from(2, 2, 3, |p| format!("({})", p.join(", "))),
            "($2, $3, $4), ($5, $6, $7)"
        );
        assert_eq!(
            rows(1, 2, |p| format!("({}, 0)", p.join(", "))),
            "($1, $2, 0)"
        );
    }
}

/// Where a page of a timeline ends: the oldest attempt shown (its start and its id, unique).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineCursor {
    pub started_at: i64,
    pub id: i64,
}

impl std::fmt::Display for TimelineCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.started_at, self.id)
    }
}

impl std::str::FromStr for TimelineCursor {
    type Err = ();

    /// What [`Display`](std::fmt::Display) writes: two runs of 1 to 19 digits (no sign, no
    /// space; an attempt's id is a random non-negative i64), so that every cursor the API
    /// documents parses and nothing else does. A number beyond i64 is read as i64::MAX: every
    /// attempt is older than such a cursor, so its page is the newest, as it should be.
    fn from_str(s: &str) -> Result<Self, ()> {
        let number = |part: &str| -> Result<i64, ()> {
            if (1..=19).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit()) {
                // 19 digits always fit a u64.
                let n = part.parse::<u64>().map_err(|_| ())?;
                Ok(i64::try_from(n).unwrap_or(i64::MAX))
            } else {
                Err(())
            }
        };
        let (at, id) = s.split_once('.').ok_or(())?;
        Ok(TimelineCursor {
            started_at: number(at)?,
            id: number(id)?,
        })
    }
}

/// One page of a transaction's timeline, newest first from `before` (exclusive; `None`: the
/// newest), at most `limit` attempts, returned oldest first; with the transaction's attempt
/// count and the cursor of the next (older) page, if there is one.
pub async fn timeline_page(
    db: &Db,
    gid: Gid,
    before: Option<TimelineCursor>,
    limit: i64,
) -> Result<(Vec<Attempt>, i64, Option<TimelineCursor>), StoreError> {
    type Row = (i64, i64, String, i64, i64, String, Option<String>, String);
    let before = before.unwrap_or(TimelineCursor {
        started_at: i64::MAX,
        id: i64::MAX,
    });
    // The count in the same statement as the page: one snapshot, so a round of attempts
    // committed meanwhile is in both or in neither (a page and a total read apart could
    // disagree, and a reader paging back would look for attempts that are not there).
    let mut total = None;
    let mut rows: Vec<(i64, Row)> = sqlx::query_as::<
        _,
        (
            i64,
            i64,
            i64,
            String,
            i64,
            i64,
            String,
            Option<String>,
            String,
            i64,
        ),
    >(
        "SELECT id, gid, idx, op, started_at, duration_us, outcome, error, owner, \
         (SELECT CAST(COUNT(*) AS BIGINT) FROM attempts WHERE gid = $1) FROM attempts \
         WHERE gid = $1 AND (started_at < $2 OR (started_at = $2 AND id < $3)) \
         ORDER BY started_at DESC, id DESC LIMIT $4",
    )
    .bind(gid.as_i64())
    .bind(before.started_at)
    .bind(before.id)
    .bind(limit + 1)
    .fetch_all(db.pool())
    .await?
    .into_iter()
    .map(|(id, gid, idx, op, at, us, outcome, error, owner, count)| {
        total = Some(count);
        (id, (gid, idx, op, at, us, outcome, error, owner))
    })
    .collect();
    let more = rows.len() as i64 > limit;
    rows.truncate(limit.max(0) as usize);
    let next = more
        .then(|| rows.last())
        .flatten()
        .map(|(id, r)| TimelineCursor {
            started_at: r.3,
            id: *id,
        });
    // An empty page (no attempts yet, or a cursor past the oldest) counts them on its own.
    let total: i64 = match total {
        Some(n) => n,
        None => {
            sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM attempts WHERE gid = $1")
                .bind(gid.as_i64())
                .fetch_one(db.pool())
                .await?
        }
    };
    let mut page = Vec::with_capacity(rows.len());
    for (_, (_, idx, op, started_at, duration_us, outcome, error, owner)) in rows.into_iter().rev()
    {
        page.push(attempt(
            idx,
            &op,
            started_at,
            duration_us,
            &outcome,
            error,
            owner,
        )?);
    }
    Ok((page, total, next))
}

/// An attempt from its stored columns (`op` and `outcome` as the log spells them).
fn attempt(
    idx: i64,
    op: &str,
    started_at: i64,
    duration_us: i64,
    outcome: &str,
    error: Option<String>,
    owner: String,
) -> Result<Attempt, StoreError> {
    Ok(Attempt {
        idx,
        op: Op::parse(op).ok_or_else(|| corrupt("op", op))?,
        started_at,
        duration_us,
        outcome: Outcome::parse(outcome).ok_or_else(|| corrupt("outcome", outcome))?,
        error,
        owner,
    })
}
