//! The participants as the coordinator reaches them: one reused gRPC channel per address, and
//! one branch call with its own timeout, answered as a [`CallResult`] plus the [`Attempt`] the
//! timeline records. The calls to one participant, Tries and second-phase calls alike, are
//! batched by what is ready (see `Batcher`): a call alone when nothing else is on its way there.

use crate::log::{self, Attempt, Stored};
use crate::machine::{CallResult, Op};
use crate::metrics::CoordinatorMetrics;
use crate::ready;
use futures::FutureExt;
use proto::v1::participant_client::ParticipantClient;
use proto::v1::{BranchBatchRequest, BranchRequest, BranchResponse};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use telemetry::grpc::TracePropagation;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

type Client = ParticipantClient<InterceptedService<Channel, TracePropagation>>;

/// The participants this coordinator may call, by name. A transaction naming any other
/// address is refused before it is stored, so no client can make the coordinator call a host
/// of its choosing. Empty: any address (dev only: production refuses to start without it).
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Address (without a trailing `/`) → name.
    by_addr: BTreeMap<String, String>,
}

impl Known {
    /// From the configuration's `name → address` map; every address must be callable.
    pub fn new(by_name: &BTreeMap<String, String>) -> Result<Known, BadParticipant> {
        let mut by_addr = BTreeMap::new();
        for (name, addr) in by_name {
            endpoint(addr)?;
            by_addr.insert(addr.trim_end_matches('/').to_owned(), name.clone());
        }
        Ok(Known { by_addr })
    }

    /// The role the participant at `addr` must prove over TLS: its configured name, when that
    /// is a role (`payment`); `None` (check the URL's host) otherwise.
    pub fn role_of(&self, addr: &str) -> Option<&'static str> {
        let name = self.by_addr.get(addr.trim_end_matches('/'))?;
        trust::ROLES.iter().copied().find(|r| r == name)
    }

    /// The configured name of the participant at `addr`, if it has one.
    pub fn name_of(&self, addr: &str) -> Option<&str> {
        self.by_addr
            .get(addr.trim_end_matches('/'))
            .map(String::as_str)
    }

    /// Whether any address is accepted (nothing configured).
    pub fn is_open(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// `addr` is one of the configured participants (or nothing is configured).
    pub fn check(&self, addr: &str) -> Result<(), String> {
        if self.is_open() || self.by_addr.contains_key(addr.trim_end_matches('/')) {
            return Ok(());
        }
        let names: std::collections::BTreeSet<&str> =
            self.by_addr.values().map(String::as_str).collect();
        Err(format!(
            "is not one this coordinator knows (it knows {})",
            names.into_iter().collect::<Vec<_>>().join(", ")
        ))
    }
}

/// The most channels kept: bounded even when any address is accepted (dev).
const MAX_CHANNELS: usize = 1_024;

/// One reused channel per participant address, over mutual TLS when the coordinator has
/// certificates; branch calls batched per address (see `Batcher`).
#[derive(Debug, Default)]
pub struct Clients {
    map: RwLock<HashMap<String, Client>>,
    tls: Option<trust::Trust>,
    /// Which role each known address must prove (its name in the allow-list).
    known: Known,
    /// Branch calls (or batches) in flight to one participant before what comes next is
    /// batched; 0: every call on its own.
    in_flight: usize,
    /// One batcher per address and phase (see [`Phase`]).
    batchers: Mutex<HashMap<(String, Phase), Batcher>>,
}

impl Clients {
    /// `in_flight`: see [`crate::engine::EngineConfig::branch_calls_in_flight`].
    pub fn new(tls: Option<trust::Trust>, known: Known, in_flight: usize) -> Clients {
        Clients {
            map: RwLock::default(),
            tls,
            known,
            in_flight,
            batchers: Mutex::default(),
        }
    }

    /// The batcher of the calls of `phase` to `addr`, started on first use.
    fn batcher(
        self: &Arc<Self>,
        addr: &str,
        phase: Phase,
        metrics: &CoordinatorMetrics,
    ) -> Batcher {
        let mut batchers = self.batchers.lock().unwrap_or_else(|e| e.into_inner());
        let key = (addr.to_owned(), phase);
        if let Some(b) = batchers.get(&key) {
            if !b.queue.is_closed() {
                return b.clone();
            }
        }
        if batchers.len() >= MAX_CHANNELS {
            // As for channels: dropped senders end their dispatchers once their queues drain.
            batchers.clear();
        }
        // A label per configured participant; "other" for addresses a dev setup accepts.
        let name = self.known.name_of(addr).unwrap_or("other").to_owned();
        let b = Batcher::start(self.in_flight.max(1), metrics.clone(), name, phase);
        batchers.insert(key, b.clone());
        b
    }

    fn get(&self, addr: &str) -> Result<Client, BadParticipant> {
        if let Some(c) = self.map.read().unwrap_or_else(|e| e.into_inner()).get(addr) {
            return Ok(c.clone());
        }
        let channel = connect(addr, self.tls.as_ref(), self.known.role_of(addr))?.connect_lazy();
        let client = ParticipantClient::with_interceptor(channel, TracePropagation);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CHANNELS {
            // Rare and harmless: channels are made again on demand.
            map.clear();
        }
        map.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// Drops the cached channel to `addr`, so the next call connects afresh.
    fn forget(&self, addr: &str) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(addr);
    }

    /// Calls `op` on branch `idx` of `stored`, with the branch timeout; the future answers
    /// with the result and the attempt for the timeline (made by `owner`).
    pub fn call(
        self: &Arc<Self>,
        stored: &Stored,
        idx: usize,
        op: Op,
        owner: &str,
        metrics: &CoordinatorMetrics,
    ) -> impl std::future::Future<Output = (usize, CallResult, Attempt)> + Send + 'static {
        let branch = &stored.branches[idx];
        let client = self.get(&branch.participant);
        let (clients, addr) = (self.clone(), branch.participant.clone());
        let request = BranchRequest {
            gid: stored.gid.as_u64(),
            branch_id: branch.branch_id.clone(),
            op: op.to_wire() as i32,
            payload: branch.payload.clone(),
        };
        let timeout = Duration::from_millis(stored.branch_timeout_ms.max(1) as u64);
        let owner = owner.to_owned();
        let metrics = metrics.clone();
        let span = tracing::info_span!("branch", branch = %branch.branch_id, op = op.as_str());
        // Every call goes through the participant's batcher for its phase: alone when nothing
        // else is on its way there, together with what is ready otherwise (a refused Try gets
        // its own refusal, docs/design.md §2.5).
        let phase = if op.may_be_rejected() {
            Phase::First
        } else {
            Phase::Second
        };
        let batcher =
            (self.in_flight > 0).then(|| self.batcher(&branch.participant, phase, &metrics));
        async move {
            let started_at = store::now_ms();
            let t = Instant::now();
            let result = match client {
                Err(e) => CallResult::Error(e.to_string()),
                Ok(client) => {
                    let answer = match batcher {
                        Some(batcher) => batcher.submit(client, request, timeout).boxed(),
                        None => send(client, request, timeout).boxed(),
                    };
                    // Our own timer fires before the participant's deadline, so a timeout
                    // always reads the same in the timeline.
                    match tokio::time::timeout(timeout, answer).await {
                        Err(_) => CallResult::Error(format!(
                            "no answer within {} ms",
                            timeout.as_millis()
                        )),
                        Ok(Err(status)) => {
                            if status.code() == tonic::Code::Unavailable {
                                // The transport failed: start the next call from a fresh
                                // channel rather than trusting this one to reconnect.
                                clients.forget(&addr);
                            }
                            CallResult::Error(format!("{:?}: {}", status.code(), status.message()))
                        }
                        Ok(Ok(resp)) => match resp.outcome() {
                            proto::v1::Outcome::Success => CallResult::Success,
                            proto::v1::Outcome::Failure => CallResult::Failure {
                                code: resp.code,
                                message: resp.message,
                            },
                            proto::v1::Outcome::Ongoing => {
                                CallResult::Error(format!("ongoing: {}", resp.message))
                            }
                            proto::v1::Outcome::Unspecified => {
                                CallResult::Error("no outcome in the answer".into())
                            }
                        },
                    }
                }
            };
            let elapsed = t.elapsed();
            let (outcome, error) = match &result {
                CallResult::Success => (log::Outcome::Success, None),
                CallResult::Failure { code, message } => {
                    (log::Outcome::Failure, Some(format!("{code}: {message}")))
                }
                CallResult::Error(e) => (log::Outcome::Error, Some(e.clone())),
            };
            metrics.branch_call(op, outcome.as_str(), elapsed);
            let attempt = Attempt {
                idx: idx as i64,
                op,
                started_at,
                duration_us: elapsed.as_micros() as i64,
                outcome,
                error,
                owner,
            };
            (idx, result, attempt)
        }
        .instrument(span)
    }
}

/// One `Branch` call, the participant told the deadline (a little after the caller's own).
async fn send(
    mut client: Client,
    request: BranchRequest,
    timeout: Duration,
) -> Result<BranchResponse, tonic::Status> {
    let mut req = tonic::Request::new(request);
    let deadline = timeout + Duration::from_millis(50);
    req.set_timeout(deadline);
    match tokio::time::timeout(deadline, client.branch(req)).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer in time")),
    }
}

/// How long a send holds its slot at most: a participant slow to answer delays the next batch
/// to it by this much, never by its calls' whole timeout.
const SLOT_HOLD: Duration = Duration::from_millis(100);

/// Sends still unanswered per slot, at most: a participant that stopped answering gets a
/// bounded number of sends (each up to its calls' timeout), not a new one every
/// [`SLOT_HOLD`].
const OUTSTANDING_PER_SLOT: usize = 8;

/// The most branches one batch carries (the participant's limit).
const MAX_BATCH: usize = tcc::grpc::MAX_BATCH;

/// A batch stops growing past this many payload bytes: well under the 4 MiB a gRPC message
/// may have (a payload is at most 64 KiB).
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Which of a participant's two batchers a call waits in. Tries (and Actions) never queue
/// behind Confirms and Cancels: a second-phase batch held up on the participant (a lock, a
/// slow database) would hold up the Tries in it past their timeout, and a Try that times out
/// rolls its transaction back, where a late Confirm is only retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Phase {
    First,
    Second,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::First => "first",
            Phase::Second => "second",
        }
    }
}

/// A branch call waiting for its turn.
struct Queued {
    client: Client,
    request: BranchRequest,
    timeout: Duration,
    /// The caller's span: the call belongs to its transaction's trace.
    span: tracing::Span,
    reply: oneshot::Sender<Result<BranchResponse, tonic::Status>>,
}

/// Batches the branch calls of one phase to one participant: up to `in_flight` calls or
/// batches are on their way at once (each for [`SLOT_HOLD`] at most, and never more than
/// [`OUTSTANDING_PER_SLOT`] per slot unanswered), and what arrives meanwhile goes in the next
/// batch, as one `Branches` call. Nothing waits for a batch to fill: at low load every call
/// goes alone and at once, as before batching; under load, the participant tries or confirms
/// many branches with one commit. A participant that refuses a batch (faults armed, or one
/// that predates batching or batched Tries) gets each call on its own.
#[derive(Clone)]
struct Batcher {
    queue: mpsc::UnboundedSender<Queued>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl Batcher {
    fn start(
        in_flight: usize,
        metrics: CoordinatorMetrics,
        participant: String,
        phase: Phase,
    ) -> Batcher {
        let (queue, mut rx) = mpsc::unbounded_channel::<Queued>();
        let slots = Arc::new(Semaphore::new(in_flight));
        let outstanding = Arc::new(Semaphore::new(in_flight * OUTSTANDING_PER_SLOT));
        let cap = ready::Cap {
            items: MAX_BATCH,
            size: MAX_BATCH_BYTES,
            size_of: |q: &Queued| q.request.payload.len(),
        };
        tokio::spawn(async move {
            // Waiting for a slot is where a batch grows.
            let turn = || async {
                let sending = outstanding.clone().acquire_owned().await?;
                let slot = slots.clone().acquire_owned().await?;
                Ok::<_, tokio::sync::AcquireError>((sending, slot))
            };
            while let Some((mut batch, (sending, slot))) = ready::next(&mut rx, turn, &cap).await {
                // A caller that gave up (its timeout) is not called for.
                batch.retain(|q| !q.reply.is_closed());
                if batch.is_empty() {
                    continue;
                }
                metrics.batch(&participant, phase.label(), batch.len());
                tokio::spawn(async move {
                    let sent = dispatch(batch);
                    tokio::pin!(sent);
                    tokio::select! {
                        _ = &mut sent => return,
                        _ = tokio::time::sleep(SLOT_HOLD) => {}
                    }
                    drop(slot);
                    sent.await;
                    drop(sending);
                });
            }
        });
        Batcher { queue }
    }

    /// Queues one call; answers as `Branch` would.
    async fn submit(
        self,
        client: Client,
        request: BranchRequest,
        timeout: Duration,
    ) -> Result<BranchResponse, tonic::Status> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            client,
            request,
            timeout,
            span: tracing::Span::current(),
            reply,
        };
        if self.queue.send(queued).is_err() {
            return Err(tonic::Status::unavailable("the coordinator is stopping"));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(tonic::Status::cancelled("the call was dropped unsent")))
    }
}

/// Sends one batch: a lone call as `Branch`, several as `Branches`, each caller answered.
async fn dispatch(mut batch: Vec<Queued>) {
    if batch.len() == 1 {
        let q = batch.pop().expect("one call");
        let answer = send(q.client, q.request, q.timeout)
            .instrument(q.span)
            .await;
        let _ = q.reply.send(answer);
        return;
    }
    // One span for the batch, in the first caller's trace and linked from the others'.
    let span = tracing::info_span!(parent: &batch[0].span, "branch_batch", branches = batch.len());
    for q in &batch[1..] {
        span.follows_from(&q.span);
    }
    let timeout = batch.iter().map(|q| q.timeout).max().unwrap_or_default();
    let mut client = batch[0].client.clone();
    let mut req = tonic::Request::new(BranchBatchRequest {
        branches: batch.iter().map(|q| q.request.clone()).collect(),
    });
    req.set_timeout(timeout + Duration::from_millis(50));
    let answer = tokio::time::timeout(timeout + Duration::from_millis(50), client.branches(req))
        .instrument(span)
        .await;
    match answer {
        Ok(Ok(resp)) if resp.get_ref().results.len() == batch.len() => {
            for (q, result) in batch.into_iter().zip(resp.into_inner().results) {
                let _ = q.reply.send(result.into_call());
            }
        }
        Ok(Ok(resp)) => {
            let status = tonic::Status::internal(format!(
                "the participant answered {} results for {} branches",
                resp.get_ref().results.len(),
                batch.len()
            ));
            for q in batch {
                let _ = q.reply.send(Err(status.clone()));
            }
        }
        Ok(Err(status))
            if matches!(
                status.code(),
                tonic::Code::FailedPrecondition
                    | tonic::Code::Unimplemented
                    | tonic::Code::InvalidArgument
            ) =>
        {
            // Each on its own, at once: what a batch could not carry (faults armed, no
            // `Branches` at all, or one from before Tries were batched, which refuses a batch
            // with a Try as malformed; a batch this side built is never malformed otherwise).
            futures::future::join_all(batch.into_iter().map(|q| async move {
                let answer = send(q.client, q.request, q.timeout)
                    .instrument(q.span)
                    .await;
                let _ = q.reply.send(answer);
            }))
            .await;
        }
        Ok(Err(status)) => {
            for q in batch {
                let _ = q.reply.send(Err(status.clone()));
            }
        }
        // Every caller's own timer has fired by now.
        Err(_) => {}
    }
}

/// A participant address that cannot be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("participant {addr:?} {why}")]
pub struct BadParticipant {
    pub addr: String,
    pub why: String,
}

/// A participant endpoint with connect timeout and HTTP/2 keepalive, over mutual TLS with
/// `tls`.
fn connect(
    addr: &str,
    tls: Option<&trust::Trust>,
    role: Option<&str>,
) -> Result<Endpoint, BadParticipant> {
    endpoint(addr)?;
    let e = trust::endpoint(addr, tls, role).map_err(|e| BadParticipant {
        addr: addr.to_owned(),
        why: format!("cannot be dialled over TLS: {e}"),
    })?;
    Ok(settings(e))
}

fn settings(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
}

/// Checks that `addr` is a participant URL that can be dialled; the endpoint, plaintext.
pub fn endpoint(addr: &str) -> Result<Endpoint, BadParticipant> {
    let bad = |why: String| BadParticipant {
        addr: addr.to_owned(),
        why,
    };
    if !(addr.starts_with("http://") || addr.starts_with("https://")) {
        return Err(bad("must be an http:// or https:// URL".into()));
    }
    let endpoint =
        Endpoint::from_shared(addr.to_owned()).map_err(|e| bad(format!("is not a URL: {e}")))?;
    if endpoint.uri().host().is_none_or(str::is_empty) {
        return Err(bad("has no host".into()));
    }
    Ok(settings(endpoint))
}
