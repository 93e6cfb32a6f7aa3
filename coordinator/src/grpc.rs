//! `tcc.v1.Coordinator` over gRPC.

use crate::engine::{BranchRequest, Engine, EngineError, ExecuteRequest};
use crate::log;
use crate::machine::{First, Mode, Rollback, Second, Status};
use proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status as GrpcStatus};

/// The gRPC API over an [`Engine`].
#[derive(Debug, Clone)]
pub struct CoordinatorService {
    engine: Arc<Engine>,
}

impl CoordinatorService {
    pub fn new(engine: Arc<Engine>) -> Self {
        CoordinatorService { engine }
    }

    pub fn into_server(self) -> pb::coordinator_server::CoordinatorServer<Self> {
        pb::coordinator_server::CoordinatorServer::new(self)
    }
}

impl From<EngineError> for GrpcStatus {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::Invalid(m) => GrpcStatus::invalid_argument(m.clone()),
            EngineError::KeyReused(_) => GrpcStatus::already_exists(e.to_string()),
            EngineError::NotFound(_) => GrpcStatus::not_found(e.to_string()),
            EngineError::Store(s) if s.is_transient() => GrpcStatus::unavailable(e.to_string()),
            EngineError::NodeLost => GrpcStatus::unavailable(e.to_string()),
            EngineError::Store(_) | EngineError::Id(_) | EngineError::Node(_) => {
                tracing::error!(error = %e, "coordinator error");
                GrpcStatus::internal(e.to_string())
            }
        }
    }
}

pub fn status_to_pb(s: Status) -> pb::Status {
    match s {
        Status::Prepared => pb::Status::Prepared,
        Status::Confirming => pb::Status::Confirming,
        Status::Cancelling => pb::Status::Cancelling,
        Status::Succeeded => pb::Status::Succeeded,
        Status::Failed => pb::Status::Failed,
    }
}

fn status_from_pb(s: i32) -> Result<Option<Status>, GrpcStatus> {
    Ok(
        match pb::Status::try_from(s)
            .map_err(|_| GrpcStatus::invalid_argument(format!("unknown status {s}")))?
        {
            pb::Status::Unspecified => None,
            pb::Status::Prepared => Some(Status::Prepared),
            pb::Status::Confirming => Some(Status::Confirming),
            pb::Status::Cancelling => Some(Status::Cancelling),
            pb::Status::Succeeded => Some(Status::Succeeded),
            pb::Status::Failed => Some(Status::Failed),
        },
    )
}

fn op_to_pb(op: &str) -> pb::Op {
    proto::v1::Op::from_str_name(&format!("OP_{}", op.to_uppercase()))
        .unwrap_or(pb::Op::Unspecified)
}

fn gid_of(raw: u64) -> Result<i64, GrpcStatus> {
    i64::try_from(raw)
        .ok()
        .filter(|g| *g > 0)
        .ok_or_else(|| GrpcStatus::invalid_argument("gid must be between 1 and 2^63-1"))
}

/// A transaction with its branches and timeline, as the API shows it.
pub async fn transaction(engine: &Engine, gid: i64) -> Result<pb::GlobalTransaction, EngineError> {
    let stored = log::load(engine.db(), gid)
        .await?
        .ok_or(EngineError::NotFound(gid))?;
    let timeline = log::timeline(engine.db(), gid).await?;
    let mode = stored.txn.mode;
    let status = stored.txn.status;
    let branches = stored
        .branches
        .iter()
        .zip(&stored.txn.branches)
        .enumerate()
        .map(|(idx, (b, state))| {
            let current_op = match (mode, status, state.second) {
                (Mode::Tcc, _, Second::NotNeeded) => "try",
                (Mode::Tcc, Status::Confirming | Status::Succeeded, _) => "confirm",
                (Mode::Tcc, _, _) => "cancel",
                (Mode::Saga, _, Second::NotNeeded) => "action",
                (Mode::Saga, _, _) => "compensate",
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
                op: op_to_pb(current_op) as i32,
                status: branch_status.to_owned(),
                attempts: b.attempts as u32,
                last_error: b.last_error.clone().unwrap_or_default(),
                timeline: timeline
                    .iter()
                    .filter(|a| a.idx == idx as i64)
                    .map(|a| pb::Attempt {
                        op: op_to_pb(a.op.as_str()) as i32,
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
    Ok(pb::GlobalTransaction {
        gid: gid as u64,
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
    })
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

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, GrpcStatus> {
        let r = request.into_inner();
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        let req = ExecuteRequest {
            mode: match pb::Mode::try_from(r.mode) {
                Ok(pb::Mode::Tcc) => Some(Mode::Tcc),
                Ok(pb::Mode::Saga) => Some(Mode::Saga),
                _ => None,
            },
            idempotency_key: r.idempotency_key,
            branches: r
                .branches
                .into_iter()
                .map(|b| BranchRequest {
                    branch_id: b.branch_id,
                    participant: b.participant,
                    payload: b.payload,
                    depends_on: b.depends_on,
                })
                .collect(),
            timeout: ms(r.timeout_ms),
            branch_timeout: ms(r.branch_timeout_ms),
            wait: Duration::from_millis(r.wait_ms),
            concurrent: r.concurrent,
        };
        let out = self.engine.execute(req).await?;
        Ok(Response::new(pb::ExecuteResponse {
            gid: out.gid as u64,
            status: status_to_pb(out.status) as i32,
            reason: out
                .reason
                .as_ref()
                .map(|(r, _)| r.to_string())
                .unwrap_or_default(),
            replayed: out.replayed,
            rollback: out.reason.map(|(r, id)| rollback_to_pb(r, id)),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GlobalTransaction>, GrpcStatus> {
        let gid = gid_of(request.into_inner().gid)?;
        Ok(Response::new(transaction(&self.engine, gid).await?))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, GrpcStatus> {
        let r = request.into_inner();
        let status = status_from_pb(r.status)?;
        let limit = i64::from(r.limit.clamp(1, 500));
        let before = if r.before_gid == 0 {
            i64::MAX
        } else {
            gid_of(r.before_gid)?
        };
        let rows = log::list(self.engine.db(), status, before, limit)
            .await
            .map_err(EngineError::from)?;
        let next = if rows.len() as i64 == limit {
            rows.last().and_then(|s| s.gid.parse().ok()).unwrap_or(0)
        } else {
            0
        };
        let mut transactions = Vec::with_capacity(rows.len());
        for s in rows {
            let gid: i64 = s.gid.parse().unwrap_or_default();
            transactions.push(transaction(&self.engine, gid).await?);
        }
        Ok(Response::new(pb::ListResponse {
            transactions,
            next_before_gid: next,
        }))
    }

    async fn retry(
        &self,
        request: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::RetryResponse>, GrpcStatus> {
        let gid = gid_of(request.into_inner().gid)?;
        let status = self.engine.retry_now(gid).await?;
        Ok(Response::new(pb::RetryResponse {
            status: status_to_pb(status) as i32,
        }))
    }
}
