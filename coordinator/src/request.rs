//! What a client asks for: the request types, their validation into the transaction to record
//! (nothing invalid is stored, no participant called), and the hash that tells a replay from
//! another request under the same idempotency key.

use crate::engine::{EngineConfig, EngineError};
use crate::log::{self, NewBranch, NewTxn};
use crate::machine::Mode;
use crate::participants;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::Duration;

/// A branch as a client asks for it.
#[derive(Debug, Clone)]
pub struct BranchRequest {
    pub branch_id: String,
    pub participant: String,
    pub payload: Vec<u8>,
    pub depends_on: Vec<String>,
    /// Saga: after the point of no return ([`crate::machine`]).
    pub retriable: bool,
}

/// A global transaction as a client asks for it.
#[derive(Debug, Clone)]
pub struct ExecuteRequest {
    pub mode: Option<Mode>,
    pub idempotency_key: String,
    pub branches: Vec<BranchRequest>,
    pub timeout: Option<Duration>,
    pub branch_timeout: Option<Duration>,
    pub wait: Duration,
    pub concurrent: bool,
}

/// Every branch names a participant this coordinator is configured to call (see
/// [`crate::participants::Known`]). Checked for new transactions only: a replay answers with
/// what was recorded, whatever the list says now.
pub fn check_participants(config: &EngineConfig, req: &ExecuteRequest) -> Result<(), EngineError> {
    for b in &req.branches {
        config.participants.check(&b.participant).map_err(|why| {
            EngineError::Invalid(format!("branch {:?}: participant {why}", b.branch_id))
        })?;
    }
    Ok(())
}

/// Checks a request and turns it into the transaction to record (a new gid from `ids`).
pub fn validate(
    config: &EngineConfig,
    ids: &ids::Snowflake,
    req: &ExecuteRequest,
) -> Result<NewTxn, EngineError> {
    let invalid = |m: String| Err(EngineError::Invalid(m));
    let Some(mode) = req.mode else {
        return invalid("mode must be TCC or SAGA".into());
    };
    if req.branches.is_empty() {
        return invalid("a transaction needs at least one branch".into());
    }
    if req.branches.len() > config.max_branches {
        return invalid(format!("at most {} branches", config.max_branches));
    }
    if req.idempotency_key.len() > 200 {
        return invalid("idempotency_key is longer than 200 bytes".into());
    }
    let timeout = req.timeout.unwrap_or(config.default_timeout);
    if timeout > config.max_timeout {
        return invalid(format!(
            "timeout_ms is above {} ms",
            config.max_timeout.as_millis()
        ));
    }
    // The default never outlives half a claim (see below); an explicit value must not.
    let branch_timeout = req
        .branch_timeout
        .unwrap_or_else(|| config.default_branch_timeout.min(config.lease / 2));
    if branch_timeout > timeout {
        return invalid("branch_timeout_ms must not exceed timeout_ms".into());
    }
    if branch_timeout * 2 > config.lease {
        // A call must end well within the claim on the transaction, or another instance
        // could take it over while the call is still running.
        return invalid(format!(
            "branch_timeout_ms must be at most half the lease ({} ms)",
            config.lease.as_millis()
        ));
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut branches = Vec::with_capacity(req.branches.len());
    for (i, b) in req.branches.iter().enumerate() {
        if b.branch_id.is_empty() || b.branch_id.len() > 64 {
            return invalid(format!("branch {i}: branch_id must be 1 to 64 bytes"));
        }
        if index.insert(b.branch_id.as_str(), i).is_some() {
            return invalid(format!("branch_id {:?} appears twice", b.branch_id));
        }
        participants::endpoint(&b.participant)
            .map_err(|e| EngineError::Invalid(format!("branch {:?}: {e}", b.branch_id)))?;
        if b.payload.len() > config.max_payload_bytes {
            return invalid(format!(
                "branch {:?}: payload of {} bytes is over the limit of {}",
                b.branch_id,
                b.payload.len(),
                config.max_payload_bytes
            ));
        }
        if mode == Mode::Tcc && !b.depends_on.is_empty() {
            return invalid(format!(
                "branch {:?}: depends_on is for SAGA only",
                b.branch_id
            ));
        }
        if mode == Mode::Tcc && b.retriable {
            return invalid(format!(
                "branch {:?}: retriable is for SAGA only",
                b.branch_id
            ));
        }
        let mut deps = Vec::with_capacity(b.depends_on.len());
        for d in &b.depends_on {
            match index.get(d.as_str()) {
                Some(&j) if j < i => deps.push(j),
                _ => {
                    return invalid(format!(
                        "branch {:?} depends on {d:?}, which is not an earlier branch",
                        b.branch_id
                    ))
                }
            }
        }
        branches.push(NewBranch {
            branch_id: b.branch_id.clone(),
            participant: b.participant.clone(),
            payload: b.payload.clone(),
            depends_on: deps,
            retriable: b.retriable,
        });
    }
    let effective = crate::machine::effective_dependencies(
        mode,
        req.concurrent,
        branches.iter().map(|b| b.depends_on.clone()).collect(),
    );
    for (b, deps) in branches.iter_mut().zip(effective) {
        b.depends_on = deps;
    }
    // A step before the point of no return cannot wait for one after it: that one starts only
    // once every step before it succeeded.
    for b in branches.iter().filter(|b| !b.retriable) {
        if let Some(&d) = b.depends_on.iter().find(|&&d| branches[d].retriable) {
            return invalid(format!(
                "branch {:?} is not retriable but depends on {:?}, which is (a Saga's retriable \
                 branches come after all the others; set concurrent or depends_on)",
                b.branch_id, branches[d].branch_id
            ));
        }
    }
    let request_hash = request_hash(mode, req);
    Ok(NewTxn {
        gid: ids.next_id()?,
        mode,
        idempotency_key: Some(req.idempotency_key.clone()).filter(|k| !k.is_empty()),
        request_hash,
        concurrent: req.concurrent,
        branch_timeout_ms: branch_timeout.as_millis() as i64,
        deadline_at: store::now_ms() + timeout.as_millis() as i64,
        branches,
        trace_id: telemetry::current_trace_id(),
    })
}

/// Marks hashes made by [`request_hash`]; a stored hash without it was made by the previous
/// rule ([`Engine::legacy_request_hash`]).
pub const HASH_VERSION: &str = "v2:";

/// The hash that tells a replay from another request under the same idempotency key: of what
/// the caller sent, and nothing this instance adds (its default timeouts, the lease that clamps
/// them), so a key interrupted by a restart with another configuration still replays.
pub fn request_hash(mode: Mode, req: &ExecuteRequest) -> String {
    let mut h = Sha256::new();
    let field = |h: &mut Sha256, bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(&mut h, log::mode_str(mode).as_bytes());
    h.update([u8::from(req.concurrent)]);
    for sent in [req.timeout, req.branch_timeout] {
        // 0: not sent (the instance's default applies).
        h.update((sent.map_or(0, |d| d.as_millis() as u64)).to_be_bytes());
    }
    h.update((req.branches.len() as u64).to_be_bytes());
    for b in &req.branches {
        field(&mut h, b.branch_id.as_bytes());
        field(&mut h, b.participant.as_bytes());
        field(&mut h, &b.payload);
        h.update((b.depends_on.len() as u64).to_be_bytes());
        for d in &b.depends_on {
            field(&mut h, d.as_bytes());
        }
    }
    // Hashed only when set, so keys recorded before retriable branches existed still replay.
    if req.branches.iter().any(|b| b.retriable) {
        field(&mut h, b"retriable");
        for b in &req.branches {
            h.update([u8::from(b.retriable)]);
        }
    }
    format!("{HASH_VERSION}{}", hex::encode(h.finalize()))
}

/// The hash a key recorded before [`HASH_VERSION`] carries: over the timeouts as `config`
/// resolves them, and the branches with their effective dependencies. Keys in flight across
/// the upgrade still replay (unless the defaults changed with it).
pub fn legacy_request_hash(config: &EngineConfig, req: &ExecuteRequest, new: &NewTxn) -> String {
    let timeout = req.timeout.unwrap_or(config.default_timeout);
    let branch_timeout = req
        .branch_timeout
        .unwrap_or_else(|| config.default_branch_timeout.min(config.lease / 2));
    let mut h = Sha256::new();
    h.update(log::mode_str(new.mode).as_bytes());
    h.update([u8::from(new.concurrent)]);
    h.update((timeout.as_millis() as u64).to_be_bytes());
    h.update((branch_timeout.as_millis() as u64).to_be_bytes());
    for b in &new.branches {
        for field in [b.branch_id.as_bytes(), b.participant.as_bytes(), &b.payload] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field);
        }
        h.update((b.depends_on.len() as u64).to_be_bytes());
        for d in &b.depends_on {
            h.update((*d as u64).to_be_bytes());
        }
    }
    hex::encode(h.finalize())
}
