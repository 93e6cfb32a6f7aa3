//! A gRPC participant for the propagation tests: it answers the trace id its handler sees (as
//! a FAILURE's message), behind the server-side trace layer.

use proto::v1::participant_client::ParticipantClient;
use proto::v1::participant_server::{Participant, ParticipantServer};
use proto::v1::{BranchRequest, BranchResponse, Op};

struct Echo;

#[tonic::async_trait]
impl Participant for Echo {
    async fn branches(
        &self,
        _request: tonic::Request<proto::v1::BranchBatchRequest>,
    ) -> Result<tonic::Response<proto::v1::BranchBatchResponse>, tonic::Status> {
        // One call at a time, as a participant that predates batches: the coordinator then
        // sends each branch through `branch`.
        Err(tonic::Status::unimplemented("no batches here"))
    }

    async fn branch(
        &self,
        _request: tonic::Request<BranchRequest>,
    ) -> Result<tonic::Response<BranchResponse>, tonic::Status> {
        // An event inside the server span (without an exporter, filtered out of the span).
        tracing::info!(answer = "trace", "answering");
        Ok(tonic::Response::new(BranchResponse::failure(
            "trace",
            telemetry::current_trace_id().unwrap_or_default(),
        )))
    }
}

/// The echoing server, on a loopback port, until [`EchoServer::stop`].
pub struct EchoServer {
    pub addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl EchoServer {
    pub async fn start() -> EchoServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(telemetry::grpc::TraceLayer)
                .add_service(ParticipantServer::new(Echo))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        EchoServer { addr, stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// The trace id the echoing server's handler saw for a call made from the current span (with
/// the client-side propagation).
pub async fn trace_id_seen_by(addr: std::net::SocketAddr) -> String {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    ParticipantClient::with_interceptor(channel, telemetry::grpc::TracePropagation)
        .branch(BranchRequest {
            gid: 1,
            branch_id: "payment".into(),
            op: Op::Try as i32,
            payload: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .message
}
