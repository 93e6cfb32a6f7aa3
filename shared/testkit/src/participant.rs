//! A participant service binary under test: spawned on free ports with a fresh database, called
//! over gRPC like the coordinator does, inspected over its admin HTTP API.

use crate::process::{free_port, Service, ServiceSpec};
use crate::TestDb;
use proto::v1::participant_client::ParticipantClient;
use proto::v1::{BranchRequest, BranchResponse, Op};
use std::path::Path;
use std::time::Duration;
use tonic::transport::Channel;

/// The admin token the test processes are started with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A running participant binary; derefs to its [`Api`].
#[derive(Debug)]
pub struct ParticipantProcess {
    pub service: Service,
    pub api: Api,
}

impl std::ops::Deref for ParticipantProcess {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// How tests talk to a participant: gRPC like the coordinator, HTTP like an operator. Cheap to
/// clone; keeps working across restarts of the process (same ports).
#[derive(Debug, Clone)]
pub struct Api {
    pub grpc_url: String,
    pub http_url: String,
    client: ParticipantClient<Channel>,
    http: reqwest::Client,
    unanswered: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl ParticipantProcess {
    /// Spawns `program` with `<env_prefix>DATABASE_URL` set to `db`, its data folder in `dir`,
    /// free ports, and [`ADMIN_TOKEN`]; waits for `/readyz`.
    pub async fn start(
        name: &str,
        program: &Path,
        env_prefix: &str,
        db: &TestDb,
        dir: &Path,
    ) -> ParticipantProcess {
        let (http_port, grpc_port) = (free_port(), free_port());
        let var = |k: &str| format!("{env_prefix}{k}");
        let spec = ServiceSpec::new(name, program, dir)
            .env(var("HTTP_ADDR"), format!("127.0.0.1:{http_port}"))
            .env(var("GRPC_ADDR"), format!("127.0.0.1:{grpc_port}"))
            .env(var("DATABASE_URL"), db.url())
            .env(var("DATA_DIR"), dir.join("data"))
            .env(var("ADMIN_TOKEN"), ADMIN_TOKEN)
            .env(var("TLS__DIR"), crate::pki_dir())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .ready_url(format!("http://127.0.0.1:{http_port}/readyz"));
        let service = Service::start(spec).await.unwrap_or_else(|e| panic!("{e}"));
        let grpc_url = format!("http://127.0.0.1:{grpc_port}");
        ParticipantProcess {
            service,
            api: Api {
                http_url: format!("http://127.0.0.1:{http_port}"),
                client: ParticipantClient::new(channel(&grpc_url, Duration::from_secs(10))),
                grpc_url,
                http: reqwest::Client::new(),
                unanswered: Default::default(),
            },
        }
    }
}

/// A channel to the participant as the coordinator calls it (with its certificate), each call
/// given up after `timeout`.
fn channel(grpc_url: &str, timeout: Duration) -> Channel {
    trust::endpoint(grpc_url, Some(&crate::trust("coordinator")), None)
        .expect("valid URL")
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .connect_lazy()
}

impl Api {
    /// The same API on a connection of its own whose calls wait up to `timeout` (10 s by
    /// default): for a test whose claim is about every answer, where a call given up by the
    /// caller would be an unknown outcome of the test's making, not of the service's.
    pub fn with_timeout(&self, timeout: Duration) -> Api {
        Api {
            grpc_url: self.grpc_url.clone(),
            http_url: self.http_url.clone(),
            client: ParticipantClient::new(channel(&self.grpc_url, timeout)),
            http: self.http.clone(),
            unanswered: self.unanswered.clone(),
        }
    }

    /// One branch call, as the coordinator makes it.
    pub async fn call(
        &self,
        gid: u64,
        branch_id: &str,
        op: Op,
        payload: &[u8],
    ) -> Result<BranchResponse, tonic::Status> {
        self.client
            .clone()
            .branch(BranchRequest {
                gid,
                branch_id: branch_id.into(),
                op: op as i32,
                payload: payload.to_vec(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Second-phase calls of several branches in one `Branches` call, as the coordinator
    /// batches them: `(gid, branch_id, op, payload)` each; one answer per item, in order.
    pub async fn batch(
        &self,
        items: &[(u64, &str, Op, &[u8])],
    ) -> Result<Vec<Result<BranchResponse, tonic::Status>>, tonic::Status> {
        let branches = items
            .iter()
            .map(|(gid, branch_id, op, payload)| BranchRequest {
                gid: *gid,
                branch_id: (*branch_id).into(),
                op: *op as i32,
                payload: payload.to_vec(),
            })
            .collect();
        let answer = self
            .client
            .clone()
            .branches(proto::v1::BranchBatchRequest { branches })
            .await?
            .into_inner();
        Ok(answer
            .results
            .into_iter()
            .map(proto::v1::BranchResult::into_call)
            .collect())
    }

    /// Like [`ParticipantProcess::call`], retrying transport errors (the process may be down
    /// or restarting) until an answer comes or `patience` runs out.
    pub async fn call_until_answered(
        &self,
        gid: u64,
        branch_id: &str,
        op: Op,
        payload: &[u8],
        patience: Duration,
    ) -> BranchResponse {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match self.call(gid, branch_id, op, payload).await {
                Ok(r) => return r,
                Err(status)
                    if proto::is_transient(&status) && std::time::Instant::now() < deadline =>
                {
                    self.unanswered
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => panic!("gid {gid} {op:?}: {status}"),
            }
        }
    }

    /// How many calls [`Api::call_until_answered`] had to send again (across clones).
    pub fn unanswered(&self) -> u64 {
        self.unanswered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `GET <admin path>` as JSON, asserting 2xx.
    pub async fn admin_get(&self, path: &str) -> serde_json::Value {
        self.admin(reqwest::Method::GET, path, None).await
    }

    /// An admin request with an optional JSON body, asserting 2xx.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let (status, json) = self.admin_raw(method.clone(), path, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {json}");
        json
    }

    /// An admin request; returns the status and the JSON body whatever the status.
    pub async fn admin_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.http_url))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.expect("admin request sent");
        let status = res.status();
        let json = res.json().await.unwrap_or(serde_json::Value::Null);
        (status, json)
    }
}

/// Streams `first` then `second` (e.g. Try then Confirm) for every gid in `1..=count` from six
/// concurrent workers, and SIGKILLs and restarts the process `crashes` times while the stream is
/// under way. Every call is sent until it is answered, and every answer must be SUCCESS: calls
/// the crash swallowed are replayed, and the participant must make the replays harmless.
/// Returns how many calls had to be replayed.
pub async fn stream_with_crashes<F>(
    p: &mut ParticipantProcess,
    count: u64,
    branch_id: &str,
    ops: [Op; 2],
    payload: F,
    crashes: u32,
) -> u64
where
    F: Fn(u64) -> Vec<u8> + Send + Sync + 'static,
{
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    const WORKERS: u64 = 6;
    let done = Arc::new(AtomicU64::new(0));
    let payload = Arc::new(payload);
    let before = p.unanswered();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (api, done, payload, branch_id) = (
                p.api.clone(),
                done.clone(),
                payload.clone(),
                branch_id.to_owned(),
            );
            tokio::spawn(async move {
                for gid in (1..=count).filter(|g| g % WORKERS == w) {
                    for op in ops {
                        let r = api
                            .call_until_answered(
                                gid,
                                &branch_id,
                                op,
                                &payload(gid),
                                Duration::from_secs(60),
                            )
                            .await;
                        assert_eq!(
                            r.outcome(),
                            proto::v1::Outcome::Success,
                            "gid {gid} {op:?}: {} {}",
                            r.code,
                            r.message
                        );
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for crash in 1..=u64::from(crashes) {
        while done.load(Ordering::SeqCst) < count * crash / (u64::from(crashes) + 1) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        p.service.kill();
        assert!(
            done.load(Ordering::SeqCst) < count,
            "the crash must land mid-stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        p.service.restart().await.unwrap_or_else(|e| panic!("{e}"));
    }
    for w in workers {
        w.await.expect("stream worker");
    }
    p.unanswered() - before
}
