//! The engine: accepts global transactions, drives them with the state machine, and recovers
//! unfinished ones.
//!
//! Driving one transaction: load it, feed the state machine `Resume` (or `Deadline`), carry out
//! the effects — `Persist` is a fenced checkpoint of the log, `Call` a branch call with its own
//! timeout — and feed each answer back, until no call is outstanding. What is left (a Confirm
//! that failed, say) is written back with a backoff delay and the claim released; the recovery
//! loop picks it up when it is due, on this instance or another.
//!
//! Commits per happy TCC transaction: 3 (record, decision, outcome), each shared with other
//! transactions' under load (group commit, see `Recorder` and `Committer`); the attempts of
//! each phase are written with the checkpoint that ends it.
//!
//! One drive per transaction: a drive holds a claim (owner, epoch) that every write checks, and
//! renews it before sending calls that could outlive it; this process never claims a
//! transaction it is still driving.

use crate::log::{self, Attempt, Checkpoint, NewTxn, Stored};
use crate::machine::{CallResult, Effect, Event, Op, Rollback, Status, Txn};
use crate::metrics::CoordinatorMetrics;
use crate::participants;
use crate::ready;
use crate::request;
pub use crate::request::{BranchRequest, ExecuteRequest};
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use ids::Gid;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Db, StoreError};
use tokio::sync::watch;
use tracing::Instrument;

/// Where the coordinator can be made to SIGKILL itself, for crash tests and the labs: at start
/// (`COORDINATOR_FAILPOINT=after_decision`) or at run time (`PUT
/// /api/v1/admin/failpoints/{point}`); refused in production (see [`host::failpoint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crash {
    /// The transaction is recorded; no participant was called yet.
    AfterInsert,
    /// The decision is durable; no second-phase call was sent yet.
    AfterDecision,
}

impl host::failpoint::Point for Crash {
    const ALL: &'static [Crash] = &[Crash::AfterInsert, Crash::AfterDecision];

    fn name(self) -> &'static str {
        match self {
            Crash::AfterInsert => "after_insert",
            Crash::AfterDecision => "after_decision",
        }
    }
}

/// A caller listening for a transaction's decision: its channel leaves the map with its last
/// listener, however the listening ends.
struct Listener<'a> {
    waiters: &'a Mutex<HashMap<Gid, watch::Sender<Decision>>>,
    gid: Gid,
    rx: Option<watch::Receiver<Decision>>,
}

impl Listener<'_> {
    fn receiver(&mut self) -> &mut watch::Receiver<Decision> {
        self.rx.as_mut().expect("listening until dropped")
    }
}

impl Drop for Listener<'_> {
    fn drop(&mut self) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.rx.take());
        if waiters
            .get(&self.gid)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            waiters.remove(&self.gid);
        }
    }
}

/// How often a replay waiting for a decision looks at the log when no wake-up comes (the
/// transaction may be driven by another instance).
const REPLAY_POLL: Duration = Duration::from_millis(200);

/// Limits and timings of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub node_id: u16,
    /// How long a claim on a transaction holds without being renewed.
    pub lease: Duration,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub default_branch_timeout: Duration,
    pub max_branches: usize,
    pub max_payload_bytes: usize,
    /// Delay before a transaction with work left is driven again.
    pub backoff: retry::Backoff,
    pub recovery_interval: Duration,
    pub recovery_batch: i64,
    pub max_wait: Duration,
    /// How far the clock may be behind the largest gid in the log at start-up: waited out when
    /// below, refused when above (see [`ids::Snowflake::resume_after`]).
    pub max_clock_behind: Duration,
    /// A node id lease not renewed for this long is free (see [`store::node`]).
    pub node_lease: Duration,
    /// The participants transactions may name.
    pub participants: participants::Known,
    /// The coordinator's certificates, to call participants over mutual TLS (`None`: plaintext,
    /// dev only).
    pub participants_tls: Option<trust::Trust>,
    /// Branch calls (Try, Confirm, Cancel, …) or batches of them in flight to one participant
    /// at once; what is ready while they are goes in one batch. 0: no batching.
    pub branch_calls_in_flight: usize,
    /// Checkpoints (or groups of them) being written at once; the checkpoints of other
    /// transactions that are ready meanwhile are written together, in one local transaction
    /// (group commit). 0: each in a transaction of its own, at once.
    pub checkpoints_in_flight: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            node_id: 0,
            lease: Duration::from_secs(15),
            default_timeout: Duration::from_secs(10),
            max_timeout: Duration::from_secs(24 * 3600),
            default_branch_timeout: Duration::from_secs(3),
            max_branches: 16,
            max_payload_bytes: 64 * 1024,
            backoff: retry::Backoff::forever(Duration::from_millis(100), Duration::from_secs(30)),
            recovery_interval: Duration::from_millis(200),
            recovery_batch: 100,
            max_wait: Duration::from_secs(60),
            max_clock_behind: Duration::from_secs(10),
            node_lease: Duration::from_secs(3),
            participants: participants::Known::default(),
            participants_tls: None,
            branch_calls_in_flight: 1,
            checkpoints_in_flight: 1,
        }
    }
}

/// What Execute answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecuteOutcome {
    pub gid: Gid,
    pub status: Status,
    /// Why it is rolled back, with the id of the branch that caused it.
    pub reason: Option<(Rollback, Option<String>)>,
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request is malformed; nothing was stored.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The idempotency key was used for a different request.
    #[error("idempotency key {0:?} was already used for a different request")]
    KeyReused(String),
    #[error("no transaction {0}")]
    NotFound(Gid),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Id(#[from] ids::IdError),
    #[error(transparent)]
    Node(#[from] store::node::NodeError),
    /// This instance no longer holds its node id: it makes no gids until it is restarted.
    #[error("this coordinator lost its node id lease; it accepts no new transactions")]
    NodeLost,
}

/// What an Execute waiting for its transaction learns: the status and, if rolled back, why.
type Decision = (Status, Option<Rollback>);

/// The transaction manager.
pub struct Engine {
    db: Db,
    ids: ids::Snowflake,
    /// The node id of `ids`, leased so no live instance shares it.
    node: store::node::NodeLease,
    config: EngineConfig,
    owner: String,
    clients: Arc<participants::Clients>,
    waiters: Mutex<HashMap<Gid, watch::Sender<Decision>>>,
    /// The transactions this process is driving right now.
    driving: Arc<Mutex<HashSet<Gid>>>,
    keys: moka::future::Cache<String, (Gid, String)>,
    metrics: CoordinatorMetrics,
    failpoints: Arc<host::Failpoints<Crash>>,
    /// Where checkpoints queue for a group commit (`None`: each written alone).
    committer: Option<Committer>,
    /// Where new transactions queue to be recorded together (`None`: each alone).
    recorder: Option<Recorder>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine on `db`: its node id leased (and renewed until `stop`), its gids resuming
    /// above the largest gid in the log (waiting, within `max_clock_behind`, for a clock that is
    /// behind it).
    pub async fn new(
        db: Db,
        config: EngineConfig,
        metrics: CoordinatorMetrics,
        failpoints: Arc<host::Failpoints<Crash>>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<Arc<Engine>, EngineError> {
        let owner = format!(
            "{}:{}",
            config.node_id,
            hex::encode(rand::random::<[u8; 4]>())
        );
        let (ids, node) = store::node::snowflake(
            &db,
            store::node::IdSource {
                node: config.node_id,
                owner: &owner,
                stale: config.node_lease,
                high_water_sql: log::MAX_GID,
                max_clock_behind: config.max_clock_behind,
            },
            stop,
        )
        .await?;
        let clients = Arc::new(participants::Clients::new(
            config.participants_tls.clone(),
            config.participants.clone(),
            config.branch_calls_in_flight,
        ));
        let committer = (config.checkpoints_in_flight > 0)
            .then(|| Committer::start(db.clone(), config.checkpoints_in_flight));
        let recorder = (config.checkpoints_in_flight > 0).then(|| {
            Recorder::start(
                db.clone(),
                owner.clone(),
                lease_ms(config.lease),
                config.checkpoints_in_flight,
            )
        });
        Ok(Arc::new(Engine {
            db,
            ids,
            node,
            owner,
            config,
            clients,
            waiters: Mutex::new(HashMap::new()),
            driving: Arc::default(),
            keys: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            committer,
            recorder,
            metrics,
            failpoints,
        }))
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The participants transactions may name.
    pub fn participants(&self) -> &participants::Known {
        &self.config.participants
    }

    /// The caps of the `n` waits from round `first` on (each wait is drawn up to its cap).
    pub fn backoff_caps(&self, first: u32, n: u32) -> Vec<Duration> {
        (first..first + n)
            .map(|r| self.config.backoff.cap(r))
            .collect()
    }

    /// The process SIGKILLs itself here when the point is armed, so crash recovery can be
    /// tested at exact points.
    fn failpoint(&self, at: Crash) {
        self.failpoints.hit(at);
    }

    /// Validates and records a transaction, starts driving it, and waits up to `wait` for the
    /// decision.
    pub async fn execute(
        self: &Arc<Self>,
        req: ExecuteRequest,
    ) -> Result<ExecuteOutcome, EngineError> {
        if self.node.is_lost() {
            return Err(EngineError::NodeLost);
        }
        let new = request::validate(&self.config, &self.ids, &req)?;
        let wait = req.wait.min(self.config.max_wait);
        if let Some(key) = &new.idempotency_key {
            if let Some((gid, hash)) = self.keys.get(key).await {
                return self.replay(gid, &hash, &new, &req, wait).await;
            }
        }
        if let Err(refused) = request::check_participants(&self.config, &req) {
            // The key's transaction, recorded when its participants were on the list (a
            // participant moved or left since): its answer, not a refusal.
            if let Some(key) = &new.idempotency_key {
                if let Some((gid, hash)) = log::find_by_key(&self.db, key).await? {
                    self.keys.insert(key.clone(), (gid, hash.clone())).await;
                    return self.replay(gid, &hash, &new, &req, wait).await;
                }
            }
            return Err(refused);
        }
        let mut rx = self.subscribe(new.gid);
        let (new, recorded) = match &self.recorder {
            Some(recorder) => recorder.record(new).await?,
            None => {
                let recorded = log::insert(&self.db, &new, &self.owner, self.lease_ms()).await;
                (new, recorded)
            }
        };
        let lease_until = match recorded {
            Ok(lease_until) => lease_until,
            Err(StoreError::UniqueViolation { .. }) if new.idempotency_key.is_some() => {
                drop(rx);
                let key = new.idempotency_key.clone().unwrap_or_default();
                let (gid, hash) = log::find_by_key(&self.db, &key)
                    .await?
                    .ok_or_else(|| EngineError::Store(StoreError::NotFound))?;
                self.keys.insert(key, (gid, hash.clone())).await;
                return self.replay(gid, &hash, &new, &req, wait).await;
            }
            Err(e) => {
                drop(rx);
                return Err(e.into());
            }
        };
        if let Some(key) = &new.idempotency_key {
            self.keys
                .insert(key.clone(), (new.gid, new.request_hash.clone()))
                .await;
        }
        self.metrics.started(new.mode);
        self.failpoint(Crash::AfterInsert);
        let engine = self.clone();
        let gid = new.gid;
        // The driver starts from what was just written instead of reading it back.
        let stored = Stored::recorded(&new, &self.owner, lease_until);
        // Driving continues the caller's trace, so one order is one trace across the services.
        let caller = tracing::Span::current();
        tokio::spawn(async move { engine.drive_stored(stored).await }.instrument(caller));
        let (status, reason) = if wait.is_zero() {
            (Status::Prepared, None)
        } else {
            let rx = rx.receiver();
            let _ = tokio::time::timeout(wait, rx.wait_for(|(s, _)| *s != Status::Prepared)).await;
            let current = rx.borrow().clone();
            current
        };
        drop(rx);
        Ok(ExecuteOutcome {
            gid,
            status,
            reason: reason.map(|r| with_branch_id(r, &new)),
            replayed: false,
        })
    }

    async fn replay(
        &self,
        gid: Gid,
        hash: &str,
        new: &NewTxn,
        req: &ExecuteRequest,
        wait: Duration,
    ) -> Result<ExecuteOutcome, EngineError> {
        let same = hash == new.request_hash
            || (!hash.starts_with(request::HASH_VERSION)
                && hash == request::legacy_request_hash(&self.config, req, new));
        if !same {
            return Err(EngineError::KeyReused(
                new.idempotency_key.clone().unwrap_or_default(),
            ));
        }
        // Listening before reading: a decision this instance makes after the read wakes the
        // wait at once; one made by another instance is seen by the slower poll.
        let mut rx = self.subscribe(gid);
        let deadline = Instant::now() + wait;
        let answer = loop {
            let (status, reason) = match log::status_of(&self.db, gid).await {
                Ok(Some(found)) => found,
                Ok(None) => break Err(EngineError::NotFound(gid)),
                Err(e) => break Err(e.into()),
            };
            let now = Instant::now();
            if status != Status::Prepared || now >= deadline {
                // A replay's request is the recorded one (same hash): same branches.
                break Ok(ExecuteOutcome {
                    gid,
                    status,
                    reason: reason.map(|r| with_branch_id(r, new)),
                    replayed: true,
                });
            }
            let nap = REPLAY_POLL.min(deadline - now);
            // Woken, or the nap is over; a closed channel (cannot happen while we listen)
            // must not turn this into a busy loop.
            if let Ok(Err(_)) = tokio::time::timeout(nap, rx.receiver().changed()).await {
                tokio::time::sleep(nap).await;
            }
        };
        drop(rx);
        answer
    }

    /// Listens for `gid`'s decision on this instance until the listener is dropped (also when
    /// the caller's future is, a client gone); every caller waiting on one gid shares its
    /// channel.
    fn subscribe(&self, gid: Gid) -> Listener<'_> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        let rx = match waiters.get(&gid) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel((Status::Prepared, None));
                waiters.insert(gid, tx);
                rx
            }
        };
        Listener {
            waiters: &self.waiters,
            gid,
            rx: Some(rx),
        }
    }

    fn notify(&self, gid: Gid, status: Status, reason: &Option<Rollback>) {
        if let Some(tx) = self
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&gid)
        {
            let _ = tx.send((status, reason.clone()));
        }
    }

    fn lease_ms(&self) -> i64 {
        lease_ms(self.config.lease)
    }

    /// Drives one transaction this instance claimed (as read from the log) until nothing is
    /// outstanding.
    async fn drive(self: Arc<Self>, claim: log::Claim) {
        match log::load(&self.db, claim.gid).await {
            // Claimed again since (by another instance): not ours to drive.
            Ok(Some(stored)) if stored.epoch != claim.epoch => {}
            Ok(Some(stored)) => self.drive_stored(stored).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(gid = %claim.gid, error = %e, "cannot load; recovery will pick it up")
            }
        }
    }

    async fn drive_stored(self: Arc<Self>, stored: Stored) {
        let gid = stored.gid;
        let Some(_driving) = Driving::enter(&self.driving, gid) else {
            // Never two drives of one transaction in one process.
            return;
        };
        let span = tracing::info_span!("drive", gid = %gid);
        if let Err(e) = self.clone().drive_inner(stored).instrument(span).await {
            tracing::warn!(gid = %gid, error = %e, "driving failed; recovery will pick it up");
        }
    }

    async fn drive_inner(self: Arc<Self>, stored: Stored) -> Result<(), StoreError> {
        if stored.owner.as_deref() != Some(self.owner.as_str()) || stored.txn.status.is_terminal() {
            return Ok(());
        }
        let mut run = Run {
            engine: &self,
            durable: stored.txn.status,
            lease_until: stored.lease_until,
            stored,
            attempts: Vec::new(),
            first_in_flight: Vec::new(),
        };
        let first_event = if run.stored.txn.status == Status::Prepared
            && store::now_ms() >= run.stored.deadline_at
        {
            Event::Deadline
        } else {
            Event::Resume
        };
        let mut first_calls = FuturesUnordered::new();
        let mut second_calls = FuturesUnordered::new();
        let effects = run.stored.txn.step(first_event);
        if !run
            .apply(effects, &mut first_calls, &mut second_calls)
            .await?
        {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis((run.stored.deadline_at - store::now_ms()).max(0) as u64);
        loop {
            if first_calls.is_empty() && second_calls.is_empty() {
                break;
            }
            let prepared = run.stored.txn.status == Status::Prepared;
            let (event, attempt) = tokio::select! {
                Some((idx, result, attempt)) = first_calls.next(), if !first_calls.is_empty() => {
                    (Event::First { branch: idx, result }, Some(attempt))
                }
                Some((idx, result, attempt)) = second_calls.next(), if !second_calls.is_empty() => {
                    (Event::Second { branch: idx, result }, Some(attempt))
                }
                _ = tokio::time::sleep_until(deadline), if prepared => (Event::Deadline, None),
            };
            if let Some(attempt) = attempt {
                run.record(attempt);
            }
            let effects = run.stored.txn.step(event);
            if prepared && run.stored.txn.status != Status::Prepared && !first_calls.is_empty() {
                // Decided just now: Tries still in flight are abandoned (the barrier absorbs
                // them if they arrive after their Cancel); the timeline still shows each of
                // them. Answers already in are recorded as what they are, not as abandoned.
                // (A Saga's retriable Actions go out after its decision, and are awaited.)
                while let Some(Some((_, _, attempt))) = first_calls.next().now_or_never() {
                    run.record(attempt);
                }
                first_calls = FuturesUnordered::new();
                run.abandon_first_calls();
            }
            if !run
                .apply(effects, &mut first_calls, &mut second_calls)
                .await?
            {
                return Ok(());
            }
        }
        run.finish().await
    }

    /// Claims due transactions and drives each; returns how many were claimed.
    pub async fn recover_once(self: &Arc<Self>) -> Result<usize, StoreError> {
        if !self.node.is_held() {
            // Another instance may hold this node id now (this one was paused or cut off):
            // claiming its transactions would take them from under it.
            return Ok(0);
        }
        let prefix = format!("{}:", self.config.node_id);
        let driving = self.driving.clone();
        let claimed = log::claim_due(
            &self.db,
            &self.owner,
            &prefix,
            self.lease_ms(),
            self.config.recovery_batch,
            |gid| Driving::busy(&driving, gid),
        )
        .await?;
        for claim in &claimed {
            let engine = self.clone();
            let claim = *claim;
            tokio::spawn(async move { engine.drive(claim).await });
        }
        if !claimed.is_empty() {
            tracing::info!(count = claimed.len(), "recovering transactions");
        }
        Ok(claimed.len())
    }

    /// Runs [`Engine::recover_once`] every `recovery_interval` until `stop` resolves.
    pub fn spawn_recovery(
        self: &Arc<Self>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let engine = self.clone();
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                if let Err(e) = engine.recover_once().await {
                    tracing::warn!(error = %e, "recovery round failed");
                }
                if let Ok(lag) = log::recovery_lag_ms(&engine.db).await {
                    engine.metrics.recovery_lag(lag);
                }
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(engine.config.recovery_interval) => {}
                }
            }
        });
    }

    /// Operator action: make an unfinished transaction due now.
    pub async fn retry_now(&self, gid: Gid) -> Result<Status, EngineError> {
        log::retry_now(&self.db, gid)
            .await?
            .ok_or(EngineError::NotFound(gid))
    }
}

type CallFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = (usize, CallResult, Attempt)> + Send>>;

/// A transaction this process is driving; leaving the set when dropped.
struct Driving {
    set: Arc<Mutex<HashSet<Gid>>>,
    gid: Gid,
}

impl Driving {
    fn enter(set: &Arc<Mutex<HashSet<Gid>>>, gid: Gid) -> Option<Driving> {
        set.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(gid)
            .then(|| Driving {
                set: set.clone(),
                gid,
            })
    }

    fn busy(set: &Mutex<HashSet<Gid>>, gid: Gid) -> bool {
        set.lock().unwrap_or_else(|e| e.into_inner()).contains(&gid)
    }
}

impl Drop for Driving {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.gid);
    }
}

/// The state of one drive.
struct Run<'e> {
    engine: &'e Arc<Engine>,
    stored: Stored,
    /// The status the log holds (what the next checkpoint expects to replace).
    durable: Status,
    /// Until when (Unix ms) the claim holds, as last written.
    lease_until: i64,
    attempts: Vec<Attempt>,
    /// First-phase calls sent and not answered yet: (branch, op, sent at, clock).
    first_in_flight: Vec<(usize, Op, i64, Instant)>,
}

impl Run<'_> {
    fn record(&mut self, attempt: Attempt) {
        if matches!(attempt.op, Op::Try | Op::Action) {
            self.first_in_flight
                .retain(|(idx, ..)| *idx as i64 != attempt.idx);
        }
        let b = &mut self.stored.branches[attempt.idx as usize];
        b.attempts += 1;
        b.last_error = attempt.error.clone();
        self.attempts.push(attempt);
    }

    /// Carries out effects; false when this instance lost the transaction to another.
    async fn apply(
        &mut self,
        effects: Vec<Effect>,
        first: &mut FuturesUnordered<CallFuture>,
        second: &mut FuturesUnordered<CallFuture>,
    ) -> Result<bool, StoreError> {
        for effect in effects {
            match effect {
                Effect::Persist => {
                    // A terminal status is written with the claim released: one commit.
                    let release = self.stored.txn.status.is_terminal().then(store::now_ms);
                    if !self.checkpoint(release).await? {
                        return Ok(false);
                    }
                    let status = self.stored.txn.status;
                    self.engine
                        .notify(self.stored.gid, status, &self.stored.txn.reason);
                    if status.is_terminal() {
                        self.engine.metrics.finished(self.stored.txn.mode, status);
                    }
                    if matches!(status, Status::Confirming | Status::Cancelling) {
                        self.engine.failpoint(Crash::AfterDecision);
                    }
                }
                Effect::Call { branch, op } => {
                    if !self.renew_lease_if_short().await? {
                        return Ok(false);
                    }
                    let fut: CallFuture = Box::pin(self.engine.clients.call(
                        &self.stored,
                        branch,
                        op,
                        &self.engine.owner,
                        &self.engine.metrics,
                    ));
                    if matches!(op, Op::Try | Op::Action) {
                        self.first_in_flight
                            .push((branch, op, store::now_ms(), Instant::now()));
                        first.push(fut);
                    } else {
                        second.push(fut);
                    }
                }
                // Nothing to do now: a drive that ends short of a terminal status is written back
                // with a backoff delay (see `finish`).
                Effect::RetryLater => {}
            }
        }
        Ok(true)
    }

    /// The decision came before these first-phase calls answered: each goes into the timeline
    /// as abandoned (what it did at the participant, if it arrives, the barrier decides).
    fn abandon_first_calls(&mut self) {
        for (idx, op, started_at, t) in std::mem::take(&mut self.first_in_flight) {
            // Only the timeline: the branch's attempt count and last error stay what the
            // answered calls made them.
            self.attempts.push(Attempt {
                idx: idx as i64,
                op,
                started_at,
                duration_us: t.elapsed().as_micros() as i64,
                outcome: log::Outcome::Abandoned,
                error: Some("the decision came before its answer".into()),
                owner: self.engine.owner.clone(),
            });
        }
    }

    /// A call may take up to the branch timeout: when the claim would run out before that, it
    /// is renewed first (a checkpoint), so no call outlives the claim it was sent under.
    async fn renew_lease_if_short(&mut self) -> Result<bool, StoreError> {
        const MARGIN_MS: i64 = 200;
        if store::now_ms() + self.stored.branch_timeout_ms + MARGIN_MS < self.lease_until {
            return Ok(true);
        }
        self.checkpoint(None).await
    }

    async fn checkpoint(&mut self, release_until: Option<i64>) -> Result<bool, StoreError> {
        let attempts = std::mem::take(&mut self.attempts);
        let written = match &self.engine.committer {
            Some(committer) => {
                committer
                    .write(Pending {
                        gid: self.stored.gid,
                        owner: self.engine.owner.clone(),
                        epoch: self.stored.epoch,
                        from: self.durable,
                        txn: self.stored.txn.clone(),
                        // What the log writes of them: not their payloads.
                        branches: self
                            .stored
                            .branches
                            .iter()
                            .map(|b| log::StoredBranch {
                                branch_id: String::new(),
                                participant: String::new(),
                                payload: Vec::new(),
                                attempts: b.attempts,
                                last_error: b.last_error.clone(),
                            })
                            .collect(),
                        new_attempts: attempts,
                        release_until,
                        lease_ms: self.engine.lease_ms(),
                    })
                    .await?
            }
            None => {
                log::checkpoint(
                    &self.engine.db,
                    Checkpoint {
                        gid: self.stored.gid,
                        owner: &self.engine.owner,
                        epoch: self.stored.epoch,
                        from: self.durable,
                        txn: &self.stored.txn,
                        branches: &self.stored.branches,
                        new_attempts: &attempts,
                        release_until,
                        lease_ms: self.engine.lease_ms(),
                    },
                )
                .await?
            }
        };
        match written {
            Some(lease_until) => {
                self.durable = self.stored.txn.status;
                self.lease_until = lease_until;
                Ok(true)
            }
            None => {
                tracing::warn!(
                    gid = %self.stored.gid,
                    "the claim on this transaction was taken over; stopping"
                );
                Ok(false)
            }
        }
    }

    /// Writes back what is left: nothing for a terminal transaction (beyond buffered attempts),
    /// or a backoff delay and a released claim.
    async fn finish(mut self) -> Result<(), StoreError> {
        let txn: &Txn = &self.stored.txn;
        if txn.status.is_terminal() {
            // The terminal checkpoint already released the claim.
            return Ok(());
        }
        let round = self.stored.attempts as u32 + 1;
        let delay = self.engine.config.backoff.delay(round);
        self.engine.metrics.retry();
        tracing::info!(
            gid = %self.stored.gid,
            status = %self.stored.txn.status,
            delay_ms = delay.as_millis() as u64,
            "work left; retrying later"
        );
        self.checkpoint(Some(store::now_ms() + delay.as_millis() as i64))
            .await?;
        Ok(())
    }
}

/// A checkpoint waiting for its group commit: what [`Checkpoint`] borrows, owned.
struct Pending {
    gid: Gid,
    owner: String,
    epoch: i64,
    from: Status,
    txn: Txn,
    branches: Vec<log::StoredBranch>,
    new_attempts: Vec<Attempt>,
    release_until: Option<i64>,
    lease_ms: i64,
}

impl Pending {
    fn checkpoint(&self) -> Checkpoint<'_> {
        Checkpoint {
            gid: self.gid,
            owner: &self.owner,
            epoch: self.epoch,
            from: self.from,
            txn: &self.txn,
            branches: &self.branches,
            new_attempts: &self.new_attempts,
            release_until: self.release_until,
            lease_ms: self.lease_ms,
        }
    }
}

type Written = Result<Option<i64>, StoreError>;

/// Group commit of checkpoints: up to `in_flight` local transactions write checkpoints at
/// once, and the checkpoints of other transactions that are ready meanwhile go together in the
/// next one ([`log::checkpoint_group`]). Nothing waits for a group to fill: a lone checkpoint
/// is written at once. A group the database fails is written again one checkpoint at a time,
/// so each drive learns its own outcome.
#[derive(Clone)]
struct Committer(ready::Grouped<Pending, Written>);

impl Committer {
    fn start(db: Db, in_flight: usize) -> Committer {
        Committer(ready::Grouped::start(
            in_flight,
            ready::Cap::items(log::MAX_GROUP),
            move |group| {
                let db = db.clone();
                async move { commit(&db, group).await }
            },
        ))
    }

    async fn write(&self, pending: Pending) -> Written {
        self.0.submit(pending).await.unwrap_or_else(|| {
            Err(StoreError::Unavailable(
                "the coordinator is stopping".into(),
            ))
        })
    }
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

/// What recording a new transaction gave: the transaction back, and until when its claim
/// holds (or why it was not recorded).
type Recorded = (NewTxn, Result<i64, StoreError>);

/// Group commit of new transactions, as [`Committer`] for checkpoints: the transactions
/// submitted while a group is being recorded are recorded together in the next one
/// ([`log::insert_group`]), with the same slots setting.
#[derive(Clone)]
struct Recorder(ready::Grouped<NewTxn, Recorded>);

impl Recorder {
    fn start(db: Db, owner: String, lease_ms: i64, in_flight: usize) -> Recorder {
        let cap = ready::Cap {
            items: log::MAX_INSERT_GROUP,
            // Branch rows bind 7 values each: well under SQLite's 32,766.
            size: 256,
            size_of: |(new, _): &ready::Member<NewTxn, Recorded>| new.branches.len(),
        };
        let owner: Arc<str> = owner.into();
        Recorder(ready::Grouped::start(in_flight, cap, move |group| {
            let (db, owner) = (db.clone(), owner.clone());
            async move { record(&db, &owner, lease_ms, group).await }
        }))
    }

    async fn record(&self, new: NewTxn) -> Result<Recorded, StoreError> {
        self.0
            .submit(new)
            .await
            .ok_or_else(|| StoreError::Unavailable("the coordinator is stopping".into()))
    }
}

/// Records one group of new transactions, answering each member ([`answer_group`]). A
/// commit that failed may have happened: its caller answers "unavailable", and a transaction
/// that was recorded all the same is Prepared and owned with a lease, which recovery rolls
/// back once the lease runs out.
async fn record(db: &Db, owner: &str, lease_ms: i64, group: Vec<ready::Member<NewTxn, Recorded>>) {
    let news: Vec<&NewTxn> = group.iter().map(|(new, _)| new).collect();
    let result = log::insert_group(db, &news, owner, lease_ms).await;
    drop(news);
    answer_group(
        "recording a group",
        group,
        result,
        |new, r| (new, r),
        |new| async move {
            let r = log::insert(db, &new, owner, lease_ms).await;
            (new, r)
        },
    )
    .await;
}

/// Writes one group of checkpoints, answering each member ([`answer_group`]). A commit that
/// failed is never written a second time (a renewal would record its attempts twice): each
/// drive stops, and recovery takes its transaction up again.
async fn commit(db: &Db, group: Vec<ready::Member<Pending, Written>>) {
    let checkpoints: Vec<Checkpoint<'_>> = group.iter().map(|(p, _)| p.checkpoint()).collect();
    let result = log::checkpoint_group(db, &checkpoints)
        .await
        .map(|written| written.into_iter().map(Ok).collect());
    drop(checkpoints);
    answer_group(
        "group commit",
        group,
        result,
        |_, w| w,
        |p| async move { log::checkpoint(db, p.checkpoint()).await },
    )
    .await;
}

/// Answers each member of a group from how its write ended, the same for every kind of
/// group: written, each gets its own outcome; rolled back (nothing written), a group of
/// several is written again, each member `alone` and all at once, so one member's trouble is
/// its own and the others go on, and a lone member gets its own error, as written alone; a
/// commit that failed may have happened, so it is every member's failure, as "unavailable".
async fn answer_group<T, V, R, Alone>(
    what: &str,
    group: Vec<ready::Member<T, R>>,
    result: Result<Vec<Result<V, StoreError>>, log::GroupFailed>,
    reply: impl Fn(T, Result<V, StoreError>) -> R,
    alone: impl Fn(T) -> Alone,
) where
    Alone: std::future::Future<Output = R>,
{
    match result {
        Ok(outcomes) => {
            for ((item, sender), outcome) in group.into_iter().zip(outcomes) {
                let _ = sender.send(reply(item, outcome));
            }
        }
        Err(log::GroupFailed::RolledBack(e)) if group.len() > 1 => {
            tracing::info!(members = group.len(), error = %e, "{what} failed; each alone");
            let alone = &alone;
            futures::future::join_all(group.into_iter().map(|(item, sender)| async move {
                let _ = sender.send(alone(item).await);
            }))
            .await;
        }
        Err(log::GroupFailed::RolledBack(e)) => {
            if let Some((item, sender)) = group.into_iter().next() {
                let _ = sender.send(reply(item, Err(e)));
            }
        }
        Err(unknown @ log::GroupFailed::Unknown(_)) => {
            let why = unknown.to_string();
            for (item, sender) in group {
                let _ = sender.send(reply(item, Err(StoreError::Unavailable(why.clone()))));
            }
        }
    }
}

/// A rollback reason with the id of the branch it names.
fn with_branch_id(r: Rollback, new: &NewTxn) -> (Rollback, Option<String>) {
    let id = r
        .branch()
        .and_then(|i| new.branches.get(i))
        .map(|b| b.branch_id.clone());
    (r, id)
}
