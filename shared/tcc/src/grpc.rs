//! `tcc.v1.Participant` over gRPC for any [`Handler`]: decode, barrier, map the verdict to the
//! wire, count it.
//!
//! | what happened | Try / Action | Confirm / Cancel / Compensate |
//! |---|---|---|
//! | applied, duplicate, null compensation | SUCCESS | SUCCESS |
//! | business rejection, malformed payload | FAILURE + code | INVALID_ARGUMENT |
//! | Try after its Cancel (hanging) | FAILURE `cancelled` | — |
//! | transient database trouble (after local retries) | UNAVAILABLE | UNAVAILABLE |
//! | any other database error | INTERNAL | INTERNAL |
//!
//! `Branches` answers each item of a batch with exactly what `Branch` would have answered it
//! (an error as the item's own status), and refuses the whole batch only when it is malformed
//! (INVALID_ARGUMENT) or a fault is armed for one of its ops (FAILED_PRECONDITION: the caller
//! sends each item through `Branch`, where the fault plays).

use crate::barrier::{self, Verdict};
use crate::{BranchRef, Handler, Op};
use ids::Gid;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use proto::v1::{
    BranchBatchRequest, BranchBatchResponse, BranchRequest, BranchResponse, BranchResult,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Db, StoreError};
use tonic::{Request, Response, Status};
use tracing::Instrument;

type OpLabels = [(&'static str, &'static str); 1];
type CallLabels = [(&'static str, &'static str); 2];

/// Branch call metrics: calls by op and verdict, latency by op.
#[derive(Debug, Clone)]
pub struct BranchMetrics {
    calls: Family<CallLabels, Counter>,
    latency: Family<OpLabels, Histogram, fn() -> Histogram>,
    faults: Family<CallLabels, Counter>,
}

impl BranchMetrics {
    /// Registers `tcc_branch_calls_total{op,outcome}` and `tcc_branch_seconds{op}`.
    pub fn new(registry: &mut Registry) -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        let latency =
            Family::<OpLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
            });
        registry.register(
            "tcc_branch_calls",
            "Branch calls by op and outcome (applied, duplicate, null_compensation, hanging, rejected, invalid, error, injected: a FAILURE a fault made)",
            calls.clone(),
        );
        registry.register(
            "tcc_branch_seconds",
            "Branch call latency by op",
            latency.clone(),
        );
        let faults = Family::<CallLabels, Counter>::default();
        registry.register(
            "tcc_faults_injected",
            "Calls a fault armed through the admin API took, by op and kind",
            faults.clone(),
        );
        BranchMetrics {
            calls,
            latency,
            faults,
        }
    }

    /// A call a fault took.
    pub fn fault(&self, op: Op, kind: &'static str) {
        self.faults
            .get_or_create(&[("op", op.as_str()), ("kind", kind)])
            .inc();
    }

    fn record(&self, op: Op, outcome: &'static str, elapsed: Duration) {
        self.calls
            .get_or_create(&[("op", op.as_str()), ("outcome", outcome)])
            .inc();
        self.latency
            .get_or_create(&[("op", op.as_str())])
            .observe(elapsed.as_secs_f64());
    }
}

/// The gRPC participant server for one handler.
#[derive(Debug)]
pub struct ParticipantService<H> {
    db: Db,
    handler: Arc<H>,
    metrics: BranchMetrics,
    /// Where branch calls run, counted so a graceful shutdown waits for them.
    in_flight: host::serve::InFlight,
    /// Faults armed through the admin API (none in production).
    faults: Arc<crate::fault::Faults>,
}

impl<H> Clone for ParticipantService<H> {
    fn clone(&self) -> Self {
        ParticipantService {
            db: self.db.clone(),
            handler: self.handler.clone(),
            metrics: self.metrics.clone(),
            in_flight: self.in_flight.clone(),
            faults: self.faults.clone(),
        }
    }
}

impl<H: Handler> ParticipantService<H> {
    pub fn new(db: Db, handler: Arc<H>, metrics: BranchMetrics) -> Self {
        ParticipantService {
            db,
            handler,
            metrics,
            in_flight: host::serve::InFlight::default(),
            faults: Arc::new(crate::fault::Faults::new(true)),
        }
    }

    /// Takes its faults from `faults` (the service's, armed through its admin API).
    pub fn with_faults(mut self, faults: Arc<crate::fault::Faults>) -> Self {
        self.faults = faults;
        self
    }

    /// Runs branch calls as `in_flight`'s work (the service's, which its shutdown waits for).
    pub fn detached_on(mut self, in_flight: host::serve::InFlight) -> Self {
        self.in_flight = in_flight;
        self
    }

    /// Runs `work` to its end in a task of its own, in the current span. When the caller gives
    /// up (a timeout), tonic drops the call's future, and a local transaction must not be
    /// abandoned half-way, not even by a shutdown (which waits for the service's in-flight
    /// work).
    async fn detached<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, Status>> + Send + 'static,
    ) -> Result<T, Status> {
        self.in_flight
            .spawn(work.instrument(tracing::Span::current()))
            .await
            .map_err(|e| Status::internal(format!("the branch call panicked: {e}")))?
    }

    /// The tonic service to add to a server.
    pub fn into_server(self) -> proto::v1::participant_server::ParticipantServer<Self> {
        proto::v1::participant_server::ParticipantServer::new(self)
    }

    /// Handles one call; everything but the tonic wrapping, for in-process use and tests.
    pub async fn handle(&self, req: BranchRequest) -> Result<BranchResponse, Status> {
        let started = Instant::now();
        let op = match Op::from_wire(req.op) {
            Some(op) => op,
            None => return Err(Status::invalid_argument(format!("unknown op {}", req.op))),
        };
        let result = self.handle_op(op, req).await;
        self.metrics.record(op, label(&result), started.elapsed());
        result.map(|(resp, _)| resp)
    }

    async fn handle_op(
        &self,
        op: Op,
        req: BranchRequest,
    ) -> Result<(BranchResponse, &'static str), Status> {
        // A fault plays before anything else: a delayed call reaches the barrier late, as one
        // stuck in the network would.
        let (then, kind) = self.faults.apply(op).await;
        if let Some(kind) = kind {
            self.metrics.fault(op, kind);
        }
        match then {
            crate::fault::Then::Proceed => {}
            crate::fault::Then::Fail(code) => {
                return Ok((
                    BranchResponse::failure(code, "refused by a fault armed through the admin API"),
                    "injected",
                ))
            }
            crate::fault::Then::Error => {
                return Err(Status::unavailable(
                    "unavailable by a fault armed through the admin API",
                ))
            }
        }
        let (branch, payload) = match self.parse(op, req)? {
            Parsed::Payload(branch, payload) => (branch, payload),
            Parsed::Rejected(response) => return Ok((response, "invalid")),
        };
        let verdict = self
            .call_with_local_retries(&branch, op, &payload)
            .await
            .map_err(|e| database_status(&branch, op, e))?;
        respond(&branch, op, verdict)
    }

    /// Checks a request's gid and branch id and decodes its payload.
    fn parse(&self, op: Op, req: BranchRequest) -> Result<Parsed<H::Payload>, Status> {
        let gid = Gid::from_u64(req.gid).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if req.gid == 0 {
            return Err(Status::invalid_argument("gid must not be 0"));
        }
        if req.branch_id.is_empty() || req.branch_id.len() > 64 {
            return Err(Status::invalid_argument("branch_id must be 1 to 64 bytes"));
        }
        let branch = BranchRef {
            gid,
            branch_id: req.branch_id,
        };
        match self.handler.decode(&req.payload) {
            Ok(p) => Ok(Parsed::Payload(branch, p)),
            Err(rejection) if op.may_be_rejected() => {
                tracing::info!(%gid, branch = %branch.branch_id, %op, code = %rejection.code, "payload rejected");
                Ok(Parsed::Rejected(BranchResponse::failure(
                    rejection.code,
                    rejection.message,
                )))
            }
            Err(rejection) => Err(Status::invalid_argument(rejection.to_string())),
        }
    }

    /// Handles a batch of calls; everything but the tonic wrapping.
    ///
    /// Malformed items get their own INVALID_ARGUMENT (a Try's or Action's undecodable payload
    /// its FAILURE, as alone); the others run in one local transaction
    /// ([`barrier::call_batch`]). A rejected Try or Action is taken out and runs on its own,
    /// where it gets its refusal, and the rest run as a batch again, twice at most; when the
    /// transaction still does not commit (a conflict, a database error, an item that needs its
    /// own rollback), each item runs on its own as [`Self::handle`] would run it. So every item
    /// gets the answer a lone call would have got.
    pub async fn handle_batch(
        &self,
        req: BranchBatchRequest,
    ) -> Result<BranchBatchResponse, Status> {
        let started = Instant::now();
        if req.branches.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "a batch has at most {MAX_BATCH} branches, not {}",
                req.branches.len()
            )));
        }
        let mut ops = Vec::with_capacity(req.branches.len());
        for r in &req.branches {
            match Op::from_wire(r.op) {
                Some(op) => ops.push(op),
                None => return Err(Status::invalid_argument(format!("unknown op {}", r.op))),
            }
        }
        if self.faults.armed_for_any(&ops) {
            return Err(Status::failed_precondition(
                "faults are armed on this participant: send each branch on its own",
            ));
        }
        let mut results: Vec<Option<Result<BranchResponse, Status>>> = vec![None; ops.len()];
        let mut parsed = Vec::with_capacity(ops.len());
        for (i, (op, r)) in ops.iter().zip(req.branches).enumerate() {
            match self.parse(*op, r) {
                Ok(Parsed::Payload(branch, payload)) => parsed.push((i, *op, branch, payload)),
                // A Try's or Action's payload that does not decode: its FAILURE, as alone.
                Ok(Parsed::Rejected(response)) => {
                    self.metrics.record(*op, "invalid", started.elapsed());
                    results[i] = Some(Ok(response));
                }
                Err(status) => {
                    self.metrics.record(*op, "invalid", started.elapsed());
                    results[i] = Some(Err(status));
                }
            }
        }
        // The items still to commit as a batch, by their place in `parsed`.
        let mut pending: Vec<usize> = (0..parsed.len()).collect();
        let mut on_their_own: Vec<usize> = Vec::new();
        for round in 0.. {
            if pending.is_empty() {
                break;
            }
            let items: Vec<_> = pending
                .iter()
                .map(|&k| {
                    let (_, op, branch, payload) = &parsed[k];
                    barrier::Item {
                        branch,
                        op: *op,
                        payload,
                    }
                })
                .collect();
            match barrier::call_batch(&self.db, self.handler.as_ref(), &items).await {
                Ok(verdicts) => {
                    for (&k, verdict) in pending.iter().zip(verdicts) {
                        let (i, op, branch, _) = &parsed[k];
                        let result = respond(branch, *op, verdict);
                        self.metrics.record(*op, label(&result), started.elapsed());
                        results[*i] = Some(result.map(|(response, _)| response));
                    }
                    break;
                }
                // A refused Try (no money, no stock) rolled the batch back: it gets its refusal
                // on its own, the rest commit without it.
                Err(barrier::BatchStopped::Rejected(j))
                    if round < REJECTED_PER_BATCH && parsed[pending[j]].1.may_be_rejected() =>
                {
                    on_their_own.push(pending.remove(j));
                }
                Err(stopped) => {
                    tracing::info!(branches = items.len(), why = %stopped, "batch not committed; each branch on its own");
                    on_their_own.append(&mut pending);
                }
            }
        }
        if !on_their_own.is_empty() {
            on_their_own.sort_unstable();
            let alone: Vec<futures::future::BoxFuture<'_, _>> = on_their_own
                .iter()
                .map(|&k| {
                    let (_, op, branch, payload) = &parsed[k];
                    Box::pin(self.alone(branch, *op, payload, started)) as _
                })
                .collect();
            use futures::stream::StreamExt;
            let alone: Vec<_> = futures::stream::iter(alone)
                .buffered(FALLBACK_AT_ONCE)
                .collect()
                .await;
            for (&k, result) in on_their_own.iter().zip(alone) {
                results[parsed[k].0] = Some(result);
            }
        }
        Ok(BranchBatchResponse {
            results: results
                .into_iter()
                .map(|r| BranchResult::from_call(r.expect("every item answered")))
                .collect(),
        })
    }

    /// One item of a batch that did not commit, on its own.
    async fn alone(
        &self,
        branch: &BranchRef,
        op: Op,
        payload: &H::Payload,
        started: Instant,
    ) -> Result<BranchResponse, Status> {
        let result = match self.call_with_local_retries(branch, op, payload).await {
            Ok(verdict) => respond(branch, op, verdict),
            Err(e) => Err(database_status(branch, op, e)),
        };
        self.metrics.record(op, label(&result), started.elapsed());
        result.map(|(response, _)| response)
    }

    /// Conflicts (deadlock, serialization failure, SQLite busy) are retried here a few times
    /// before the coordinator has to.
    async fn call_with_local_retries(
        &self,
        branch: &BranchRef,
        op: Op,
        payload: &H::Payload,
    ) -> Result<Verdict, StoreError> {
        let policy = retry::Backoff {
            initial: Duration::from_millis(5),
            multiplier: 2.0,
            max_delay: Duration::from_millis(100),
            max_attempts: Some(4),
            max_elapsed: Some(Duration::from_secs(2)),
        };
        retry::retry(
            &policy,
            |e: &StoreError| match e {
                StoreError::Conflict(_) => retry::Decision::Retry,
                _ => retry::Decision::Stop,
            },
            |_| barrier::call(&self.db, self.handler.as_ref(), branch, op, payload),
        )
        .await
        .map_err(|e| e.error)
    }
}

/// The most branches one batch may carry.
pub const MAX_BATCH: usize = 256;

/// How many items of a batch that did not commit run at once, each on its own: a few, not the
/// whole batch against the connection pool.
const FALLBACK_AT_ONCE: usize = 4;

/// How many refused Tries a batch sets apart (each on its own) before it gives up and runs
/// every item on its own. Each round finds one refusal and costs a rollback of the items
/// before it: two rounds cover a batch with one refusal (the usual case), and bound the work
/// a batch with many refusals (a SKU sold out) does again to about twice its own.
const REJECTED_PER_BATCH: usize = 2;

/// A request's branch and payload, or the FAILURE a Try's malformed payload gets.
enum Parsed<P> {
    Payload(BranchRef, P),
    Rejected(BranchResponse),
}

/// The wire answer to a verdict, and its metrics label.
fn respond(
    branch: &BranchRef,
    op: Op,
    verdict: Verdict,
) -> Result<(BranchResponse, &'static str), Status> {
    tracing::debug!(gid = %branch.gid, branch = %branch.branch_id, %op, verdict = verdict.as_str(), "branch call");
    let label = verdict.as_str();
    let response = match verdict {
        Verdict::Applied | Verdict::Duplicate | Verdict::NullCompensation => {
            BranchResponse::success()
        }
        Verdict::Hanging => BranchResponse::failure(
            "cancelled",
            format!("the {op} arrived after its undo; nothing was done"),
        ),
        Verdict::Rejected(r) if op.may_be_rejected() => BranchResponse::failure(r.code, r.message),
        Verdict::Rejected(r) => return Err(Status::invalid_argument(r.to_string())),
    };
    Ok((response, label))
}

/// The metrics label of an answer.
fn label(result: &Result<(BranchResponse, &'static str), Status>) -> &'static str {
    match result {
        Ok((_, verdict)) => verdict,
        Err(status) if status.code() == tonic::Code::InvalidArgument => "invalid",
        Err(_) => "error",
    }
}

/// The status a database error answers with: its kind; the text (hosts, SQL) stays in this
/// log.
fn database_status(branch: &BranchRef, op: Op, e: StoreError) -> Status {
    tracing::warn!(gid = %branch.gid, branch = %branch.branch_id, %op, error = %e, "branch call failed");
    if e.is_transient() {
        Status::unavailable("the participant's database did not answer")
    } else {
        Status::internal("the participant failed on its database (see its log)")
    }
}

#[tonic::async_trait]
impl<H: Handler> proto::v1::participant_server::Participant for ParticipantService<H> {
    async fn branch(
        &self,
        request: Request<BranchRequest>,
    ) -> Result<Response<BranchResponse>, Status> {
        let this = self.clone();
        self.detached(async move { this.handle(request.into_inner()).await })
            .await
            .map(Response::new)
    }

    async fn branches(
        &self,
        request: Request<BranchBatchRequest>,
    ) -> Result<Response<BranchBatchResponse>, Status> {
        let this = self.clone();
        self.detached(async move { this.handle_batch(request.into_inner()).await })
            .await
            .map(Response::new)
    }
}
