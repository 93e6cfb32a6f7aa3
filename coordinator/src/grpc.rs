//! `tcc.v1.Coordinator` over gRPC.

use crate::engine::{BranchRequest, Engine, EngineError, ExecuteRequest};
use crate::log;
use crate::machine::{Mode, Status};
use crate::view::{self, rollback_to_pb, status_to_pb};
use ids::Gid;
use proto::v1 as pb;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status as GrpcStatus};

/// The gRPC API over an [`Engine`].
#[derive(Debug, Clone)]
pub struct CoordinatorService {
    engine: Arc<Engine>,
    /// Get, List and Retry are operator calls: they need it, as over HTTP.
    admin: host::AdminToken,
}

/// Over mutual TLS, the role the caller's certificate proved must be `role`: Execute is
/// order-svc's call, reads and retries an operator's (who also shows the admin token). Without
/// TLS (dev) there is no role to check.
fn require_role<T>(request: &Request<T>, role: &str) -> Result<(), GrpcStatus> {
    match request.extensions().get::<trust::CallerRole>() {
        Some(trust::CallerRole(proved)) if *proved != role => Err(GrpcStatus::permission_denied(
            format!("this call is for the {role} role, not {proved}"),
        )),
        _ => Ok(()),
    }
}

impl CoordinatorService {
    pub fn new(engine: Arc<Engine>, admin: host::AdminToken) -> Self {
        CoordinatorService { engine, admin }
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
            EngineError::Store(s) if s.is_transient() => {
                tracing::warn!(error = %e, "coordinator database unavailable");
                GrpcStatus::unavailable("the coordinator's database did not answer; retry")
            }
            EngineError::NodeLost => GrpcStatus::unavailable(e.to_string()),
            EngineError::Store(_) | EngineError::Id(_) | EngineError::Node(_) => {
                tracing::error!(error = %e, "coordinator error");
                GrpcStatus::internal("the coordinator failed (see its log)")
            }
        }
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

fn gid_of(raw: u64) -> Result<Gid, GrpcStatus> {
    Gid::from_u64(raw)
        .ok()
        .filter(|g| g.as_u64() > 0)
        .ok_or_else(|| GrpcStatus::invalid_argument("gid must be between 1 and 2^63-1"))
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, GrpcStatus> {
        require_role(&request, "order")?;
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
                    retriable: b.retriable,
                })
                .collect(),
            timeout: ms(r.timeout_ms),
            branch_timeout: ms(r.branch_timeout_ms),
            wait: Duration::from_millis(r.wait_ms),
            concurrent: r.concurrent,
        };
        let out = self.engine.execute(req).await?;
        Ok(Response::new(pb::ExecuteResponse {
            gid: out.gid.as_u64(),
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
        require_role(&request, "operator")?;
        self.admin.check_grpc(request.metadata())?;
        let gid = gid_of(request.into_inner().gid)?;
        Ok(Response::new(
            view::transaction(self.engine.db(), gid).await?,
        ))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, GrpcStatus> {
        require_role(&request, "operator")?;
        self.admin.check_grpc(request.metadata())?;
        let r = request.into_inner();
        let status = status_from_pb(r.status)?;
        let limit = i64::from(r.limit.clamp(1, 500));
        let before = if r.before_gid == 0 {
            None
        } else {
            Some(gid_of(r.before_gid)?)
        };
        let filter = log::Filter {
            status,
            before,
            limit,
            ..log::Filter::default()
        };
        let rows = log::list(self.engine.db(), &filter)
            .await
            .map_err(EngineError::from)?;
        let next = if rows.len() as i64 == limit {
            rows.last().map_or(0, |s| s.gid.as_u64())
        } else {
            0
        };
        let gids: Vec<Gid> = rows.iter().map(|s| s.gid).collect();
        let transactions = view::transactions(self.engine.db(), &gids).await?;
        Ok(Response::new(pb::ListResponse {
            transactions,
            next_before_gid: next,
        }))
    }

    async fn retry(
        &self,
        request: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::RetryResponse>, GrpcStatus> {
        require_role(&request, "operator")?;
        self.admin.check_grpc(request.metadata())?;
        let gid = gid_of(request.into_inner().gid)?;
        let status = self.engine.retry_now(gid).await?;
        Ok(Response::new(pb::RetryResponse {
            status: status_to_pb(status) as i32,
        }))
    }
}
