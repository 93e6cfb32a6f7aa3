//! Helpers shared by the coordinator's test files: the coordinator binary under test and
//! requests to it.
#![allow(dead_code)]
use proto::v1 as pb;
use proto::v1::coordinator_client::CoordinatorClient;
use std::time::Duration;
use testkit::scripted::Scripted;
use testkit::{free_port, Service, ServiceSpec, TestDb};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const ADMIN: &str = "coordinator-test-admin-token";

/// The coordinator's gRPC client as an operator holds it: the operator's certificate, and the
/// admin token on every call (Get, List and Retry need both).
pub type OperatorClient = CoordinatorClient<InterceptedService<Channel, Operator>>;

#[derive(Debug, Clone, Copy)]
pub struct Operator;

impl tonic::service::Interceptor for Operator {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {ADMIN}").parse().expect("an ASCII token"),
        );
        Ok(req)
    }
}

pub struct Coord {
    pub service: Service,
    /// As order-svc calls it (its certificate): Execute.
    pub client: CoordinatorClient<Channel>,
    /// As an operator calls it: Get, List, Retry.
    pub operator: OperatorClient,
    pub http_url: String,
    pub grpc_url: String,
}

pub async fn coordinator(
    db: &TestDb,
    dir: &std::path::Path,
    name: &str,
    extra: &[(&str, &str)],
) -> Coord {
    let (spec, http, grpc) = coordinator_spec(db, dir, name, extra);
    let service = Service::start(spec).await.unwrap_or_else(|e| panic!("{e}"));
    let grpc_url = format!("http://127.0.0.1:{grpc}");
    // Certificates of the test process's CA: order-svc's, and an operator's.
    let channel = |role: &str| channel_as(&grpc_url, role);
    Coord {
        service,
        client: CoordinatorClient::new(channel("order")),
        operator: CoordinatorClient::with_interceptor(channel("operator"), Operator),
        http_url: format!("http://127.0.0.1:{http}"),
        grpc_url: format!("http://127.0.0.1:{grpc}"),
    }
}

/// The coordinator binary's spec as the tests run it, on free ports (HTTP, gRPC).
pub fn coordinator_spec(
    db: &TestDb,
    dir: &std::path::Path,
    name: &str,
    extra: &[(&str, &str)],
) -> (ServiceSpec, u16, u16) {
    let (http, grpc) = (free_port(), free_port());
    let mut spec = ServiceSpec::new(name, env!("CARGO_BIN_EXE_coordinator"), dir)
        .env("COORDINATOR_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("COORDINATOR_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("COORDINATOR_DATABASE_URL", db.url())
        .env("COORDINATOR_DATA_DIR", dir.join("data"))
        .env("COORDINATOR_ADMIN_TOKEN", ADMIN)
        .env("COORDINATOR_TLS__DIR", testkit::pki_dir())
        .env("COORDINATOR_LEASE_MS", "3000")
        .env("COORDINATOR_RECOVERY_INTERVAL_MS", "50")
        .env("COORDINATOR_RETRY_INITIAL_MS", "20")
        .env("COORDINATOR_RETRY_MAX_MS", "200")
        .env("COORDINATOR_NODE_LEASE_MS", "1000")
        .env("RUST_LOG", "warn")
        .env("LOG_FORMAT", "json")
        .ready_url(format!("http://127.0.0.1:{http}/readyz"));
    for (k, v) in extra {
        spec = spec.env(*k, *v);
    }
    (spec, http, grpc)
}

pub fn branches(parts: &[&Scripted]) -> Vec<pb::BranchSpec> {
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| pb::BranchSpec {
            branch_id: format!("b{i}"),
            participant: p.url(),
            payload: vec![i as u8],
            depends_on: vec![],
            retriable: false,
        })
        .collect()
}

pub fn tcc(key: &str, parts: &[&Scripted]) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        mode: pb::Mode::Tcc as i32,
        idempotency_key: key.into(),
        branches: branches(parts),
        timeout_ms: 10_000,
        branch_timeout_ms: 1_000,
        wait_ms: 10_000,
        concurrent: false,
    }
}

/// A channel to the coordinator at `grpc_url` with the certificate of `role` (of the test
/// process's CA).
pub fn channel_as(grpc_url: &str, role: &str) -> Channel {
    trust::endpoint(grpc_url, Some(&testkit::trust(role)), Some("coordinator"))
        .unwrap()
        .timeout(Duration::from_secs(30))
        .connect_lazy()
}

impl Coord {
    pub async fn execute(
        &self,
        req: pb::ExecuteRequest,
    ) -> Result<pb::ExecuteResponse, tonic::Status> {
        self.client
            .clone()
            .execute(req)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn get(&self, gid: u64) -> pb::GlobalTransaction {
        self.operator
            .clone()
            .get(pb::GetRequest { gid })
            .await
            .unwrap()
            .into_inner()
    }

    /// The transaction as the HTTP API shows it (with every branch's timeline).
    pub async fn detail(&self, gid: u64) -> serde_json::Value {
        reqwest::Client::new()
            .get(format!("{}/api/v1/transactions/{gid}", self.http_url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn wait_terminal(&self, gid: u64, timeout: Duration) -> pb::GlobalTransaction {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(t) = self.operator.clone().get(pb::GetRequest { gid }).await {
                let t = t.into_inner();
                if matches!(t.status(), pb::Status::Succeeded | pb::Status::Failed) {
                    return t;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "gid {gid} not terminal: {t:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn list_all(&self) -> Vec<pb::GlobalTransaction> {
        self.operator
            .clone()
            .list(pb::ListRequest {
                status: 0,
                limit: 500,
                before_gid: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .transactions
    }
}

pub async fn three() -> (Scripted, Scripted, Scripted) {
    (
        Scripted::start().await,
        Scripted::start().await,
        Scripted::start().await,
    )
}
