//! Scripted participants: a real `tcc.v1.Participant` gRPC server on loopback whose answers a
//! test scripts per op (succeed, reject, fail transiently, delay, hang), and which records
//! every call and applies the sub-transaction barrier in memory, so a test can check that each
//! op took effect exactly once and in the right order.

use proto::v1::participant_server::{Participant, ParticipantServer};
use proto::v1::{BranchRequest, BranchResponse, Op};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How one call is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behavior {
    /// Take effect (behind the barrier) and answer SUCCESS.
    Succeed,
    /// Answer FAILURE with this code (a business rejection; no effect).
    Reject(&'static str),
    /// Answer gRPC UNAVAILABLE (no effect).
    Unavailable,
    /// Wait, then behave as `Succeed` (the call "arrives" after the delay).
    Delay(Duration),
    /// Never answer.
    Hang,
    /// Answer UNAVAILABLE to the first call of this op for each gid, then succeed.
    UnavailableOncePerGid,
    /// Reach the barrier only once the call that undoes this one (the Cancel of a Try, the
    /// Compensate of an Action) has arrived for the same branch: a request stuck in the network
    /// until after its undo, whatever the timing. The caller gets no answer meanwhile.
    AfterUndo,
}

/// What the barrier made of a call that reached the business layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Applied,
    Duplicate,
    NullCompensation,
    Hanging,
}

/// One received call.
#[derive(Debug, Clone)]
pub struct Call {
    pub gid: u64,
    pub branch_id: String,
    pub op: Op,
    pub at: Instant,
    /// `None` when the call was answered without reaching the barrier (rejected, unavailable,
    /// hung).
    pub effect: Option<Effect>,
}

#[derive(Debug, Default)]
struct State {
    script: HashMap<Op, VecDeque<Behavior>>,
    calls: Vec<Call>,
    /// The barrier's rows: (gid, branch, op) → the op that inserted it.
    barrier: HashMap<(u64, String, Op), Op>,
    applied: HashSet<(u64, String, Op)>,
}

/// A scripted participant server. Dropping it stops the server.
#[derive(Debug)]
pub struct Scripted {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

#[derive(Debug, Clone)]
struct Service {
    state: Arc<Mutex<State>>,
}

/// The op that undoes `op` (Cancel for Try, Compensate for Action).
fn undoing(op: Op) -> Option<Op> {
    match op {
        Op::Try => Some(Op::Cancel),
        Op::Action => Some(Op::Compensate),
        _ => None,
    }
}

fn undone_by(op: Op) -> Option<Op> {
    match op {
        Op::Cancel => Some(Op::Try),
        Op::Compensate => Some(Op::Action),
        _ => None,
    }
}

impl State {
    /// docs/design.md §2's barrier, in memory.
    fn barrier(&mut self, gid: u64, branch: &str, op: Op) -> Effect {
        let key = |o: Op| (gid, branch.to_owned(), o);
        let null = match undone_by(op) {
            Some(origin) => {
                if let std::collections::hash_map::Entry::Vacant(e) =
                    self.barrier.entry(key(origin))
                {
                    e.insert(op);
                    true
                } else {
                    false
                }
            }
            None => false,
        };
        if let Some(inserted_by) = self.barrier.get(&key(op)) {
            return if *inserted_by != op {
                Effect::Hanging
            } else {
                Effect::Duplicate
            };
        }
        self.barrier.insert(key(op), op);
        if null {
            return Effect::NullCompensation;
        }
        self.applied.insert(key(op));
        Effect::Applied
    }
}

#[tonic::async_trait]
impl Participant for Service {
    /// A batch whose ops have no script (every call succeeds) goes through the barrier item by
    /// item, each recorded as a call; one with a scripted op is refused as a participant with
    /// faults armed refuses it, so each of its calls plays its script through `branch`.
    async fn branches(
        &self,
        request: tonic::Request<proto::v1::BranchBatchRequest>,
    ) -> Result<tonic::Response<proto::v1::BranchBatchResponse>, tonic::Status> {
        let req = request.into_inner();
        // Malformed as the real participant says (tcc::grpc): too many items.
        if req.branches.len() > 256 {
            return Err(tonic::Status::invalid_argument(
                "a batch has at most 256 branches",
            ));
        }
        let mut s = self.state.lock().unwrap();
        if req
            .branches
            .iter()
            .any(|b| s.script.get(&b.op()).is_some_and(|q| !q.is_empty()))
        {
            return Err(tonic::Status::failed_precondition(
                "scripted ops: send each on its own",
            ));
        }
        let mut results = Vec::with_capacity(req.branches.len());
        for b in &req.branches {
            let op = b.op();
            let effect = s.barrier(b.gid, &b.branch_id, op);
            s.calls.push(Call {
                gid: b.gid,
                branch_id: b.branch_id.clone(),
                op,
                at: Instant::now(),
                effect: Some(effect),
            });
            results.push(proto::v1::BranchResult::from_call(Ok(match effect {
                Effect::Hanging => BranchResponse::failure("cancelled", "arrived after its undo"),
                _ => BranchResponse::success(),
            })));
        }
        Ok(tonic::Response::new(proto::v1::BranchBatchResponse {
            results,
        }))
    }

    async fn branch(
        &self,
        request: tonic::Request<BranchRequest>,
    ) -> Result<tonic::Response<BranchResponse>, tonic::Status> {
        let req = request.into_inner();
        let op = req.op();
        let behavior = {
            let mut s = self.state.lock().unwrap();
            let queue = s.script.entry(op).or_default();
            // The last behavior of a script repeats.
            if queue.len() > 1 {
                queue.pop_front()
            } else {
                queue.front().cloned()
            }
            .map(|b| match b {
                Behavior::UnavailableOncePerGid => {
                    let seen_before = s
                        .calls
                        .iter()
                        .any(|c| c.gid == req.gid && c.op == op && c.branch_id == req.branch_id);
                    if seen_before {
                        Behavior::Succeed
                    } else {
                        Behavior::Unavailable
                    }
                }
                other => other,
            })
            .unwrap_or(Behavior::Succeed)
        };
        let record = |effect: Option<Effect>| {
            self.state.lock().unwrap().calls.push(Call {
                gid: req.gid,
                branch_id: req.branch_id.clone(),
                op,
                at: Instant::now(),
                effect,
            });
        };
        match behavior {
            Behavior::Reject(code) => {
                record(None);
                return Ok(tonic::Response::new(BranchResponse::failure(
                    code,
                    "scripted rejection",
                )));
            }
            Behavior::Unavailable => {
                record(None);
                return Err(tonic::Status::unavailable("scripted outage"));
            }
            Behavior::Hang => {
                record(None);
                std::future::pending::<()>().await;
            }
            Behavior::Delay(_) | Behavior::AfterUndo => record(None),
            // Resolved to Unavailable or Succeed above.
            Behavior::Succeed | Behavior::UnavailableOncePerGid => {}
        }
        let effect = match behavior {
            // A delayed call reaches the business layer later even if the caller gives up
            // meanwhile, like a request stuck in the network: it runs in its own task, which
            // the caller's cancellation does not stop.
            Behavior::Delay(_) | Behavior::AfterUndo => {
                let state = self.state.clone();
                let (gid, branch) = (req.gid, req.branch_id.clone());
                tokio::spawn(async move {
                    match behavior {
                        Behavior::Delay(d) => tokio::time::sleep(d).await,
                        _ => {
                            let undo = undoing(op);
                            while !state.lock().unwrap().calls.iter().any(|c| {
                                c.gid == gid && c.branch_id == branch && Some(c.op) == undo
                            }) {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                        }
                    }
                    let mut s = state.lock().unwrap();
                    let effect = s.barrier(gid, &branch, op);
                    // Complete the arrival record with what the barrier made of the call.
                    if let Some(c) = s.calls.iter_mut().rev().find(|c| {
                        c.gid == gid && c.branch_id == branch && c.op == op && c.effect.is_none()
                    }) {
                        c.effect = Some(effect);
                    }
                    effect
                })
                .await
                .map_err(|e| tonic::Status::internal(e.to_string()))?
            }
            _ => {
                let effect = self
                    .state
                    .lock()
                    .unwrap()
                    .barrier(req.gid, &req.branch_id, op);
                record(Some(effect));
                effect
            }
        };
        Ok(tonic::Response::new(match effect {
            Effect::Hanging => BranchResponse::failure("cancelled", "arrived after its undo"),
            _ => BranchResponse::success(),
        }))
    }
}

impl Scripted {
    /// Starts a scripted participant on a free loopback port; every op succeeds until scripted.
    pub async fn start() -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = Service {
            state: state.clone(),
        };
        // Mutual TLS with the test process's CA (crate::pki_dir), as a real participant.
        let mut server = tonic::transport::Server::builder()
            .tls_config(crate::trust("inventory").server_config())
            .expect("TLS for a scripted participant");
        tokio::spawn(
            server
                .add_service(ParticipantServer::new(service))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Scripted {
            addr,
            state,
            _stop: stop,
        }
    }

    /// The URL to give the coordinator.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Scripts the next calls of `op`, one behavior per call; the last one repeats.
    pub fn on(&self, op: Op, behaviors: impl IntoIterator<Item = Behavior>) {
        self.state
            .lock()
            .unwrap()
            .script
            .insert(op, behaviors.into_iter().collect());
    }

    /// Every call received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Calls of `op` for `gid`.
    pub fn calls_of(&self, gid: u64, op: Op) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.gid == gid && c.op == op)
            .collect()
    }

    /// Whether `op` took effect for (gid, branch).
    pub fn applied(&self, gid: u64, branch_id: &str, op: Op) -> bool {
        self.state
            .lock()
            .unwrap()
            .applied
            .contains(&(gid, branch_id.to_owned(), op))
    }

    /// Waits until at least `n` calls of `op` have arrived.
    pub async fn wait_for(&self, op: Op, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.calls().iter().filter(|c| c.op == op).count() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// Waits until a call of `op` for `gid` has reached the barrier (its effect is known).
    pub async fn wait_for_effect(&self, gid: u64, op: Op, timeout: Duration) -> Option<Effect> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(effect) = self.calls_of(gid, op).iter().find_map(|c| c.effect) {
                return Some(effect);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    /// Checks the end state of a transaction: for TCC, a succeeded one had Try and Confirm take
    /// effect once on `branch_id` and no Cancel; a failed one no Confirm, and any applied Try
    /// was cancelled. Panics with the calls when not.
    pub fn assert_settled(&self, gid: u64, branch_id: &str, succeeded: bool) {
        let applied = |op| self.applied(gid, branch_id, op);
        let ok = if succeeded {
            applied(Op::Try) && applied(Op::Confirm) && !applied(Op::Cancel)
        } else {
            !applied(Op::Confirm) && (!applied(Op::Try) || applied(Op::Cancel))
        };
        assert!(
            ok,
            "gid {gid} branch {branch_id} expected {}: calls {:?}",
            if succeeded { "confirmed" } else { "cancelled" },
            self.calls()
                .into_iter()
                .filter(|c| c.gid == gid)
                .collect::<Vec<_>>()
        );
    }
}
