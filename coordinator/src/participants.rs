//! The participants as the coordinator reaches them: one reused gRPC channel per address, and
//! one branch call with its own timeout, answered as a [`CallResult`] plus the [`Attempt`] the
//! timeline records.

use crate::log::{self, Attempt, Stored};
use crate::machine::{CallResult, Op};
use crate::metrics::CoordinatorMetrics;
use proto::v1::participant_client::ParticipantClient;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use telemetry::grpc::TracePropagation;
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
/// certificates.
#[derive(Debug, Default)]
pub struct Clients {
    map: RwLock<HashMap<String, Client>>,
    tls: Option<trust::Trust>,
    /// Which role each known address must prove (its name in the allow-list).
    known: Known,
}

impl Clients {
    pub fn new(tls: Option<trust::Trust>, known: Known) -> Clients {
        Clients {
            map: RwLock::default(),
            tls,
            known,
        }
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
        let request = proto::v1::BranchRequest {
            gid: stored.gid.as_u64(),
            branch_id: branch.branch_id.clone(),
            op: op.to_wire() as i32,
            payload: branch.payload.clone(),
        };
        let timeout = Duration::from_millis(stored.branch_timeout_ms.max(1) as u64);
        let owner = owner.to_owned();
        let metrics = metrics.clone();
        let span = tracing::info_span!("branch", branch = %branch.branch_id, op = op.as_str());
        async move {
            let started_at = store::now_ms();
            let t = Instant::now();
            let result = match client {
                Err(e) => CallResult::Error(e.to_string()),
                Ok(mut client) => {
                    let mut req = tonic::Request::new(request);
                    // The participant learns the deadline; our own timer below fires first, so
                    // a timeout always reads the same in the timeline.
                    req.set_timeout(timeout + Duration::from_millis(50));
                    match tokio::time::timeout(timeout, client.branch(req)).await {
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
                        Ok(Ok(resp)) => {
                            let resp = resp.into_inner();
                            match resp.outcome() {
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
                            }
                        }
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
