//! Faults a student can switch on: the next N calls of one op on this participant are delayed,
//! hang until released, fail with a business FAILURE, or error as unavailable.
//!
//! The cases a course is about — a null compensation, a hanging Try, a Confirm retried until it
//! gets through — need a call to arrive late, never, or wrong at one exact op. Killing processes
//! from outside is too coarse for that, so each participant takes faults through its admin API
//! (`PUT /admin/faults/{op}`), applied before the barrier sees the call: a delayed Try reaches
//! the barrier after its Cancel, exactly as one stuck in the network would. Production mode
//! refuses them, like the failpoints.
//!
//! A fault never changes what the barrier decides: `delay` and `hang` only make a call arrive
//! later, `fail` and `error` answer without touching the database (no effect, like a call that
//! was refused or lost). `fail` applies to Try and Action only: the other ops must not answer
//! FAILURE (docs/design.md §2).

use crate::Op;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// The longest a hung call waits for its release: then it is a lost call (UNAVAILABLE, no
/// effect). A call released a day later would reach a barrier whose rows the purge may have
/// deleted by then (docs/design.md §8.1) and take effect with no Cancel to come.
pub const MAX_HANG: Duration = Duration::from_secs(600);

/// What happens to a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Fault {
    /// Arrives `ms` milliseconds late, then runs normally.
    Delay { ms: u64 },
    /// Arrives only once released (`POST /admin/faults/release`) or cleared, then runs
    /// normally; not released within [`MAX_HANG`] (or when the service stops), it is lost:
    /// UNAVAILABLE, no effect. The caller's timeout usually gives up first.
    Hang,
    /// Answers FAILURE with this code, doing nothing (Try and Action only).
    Fail {
        #[serde(default = "default_code")]
        code: String,
    },
    /// Answers gRPC UNAVAILABLE, doing nothing.
    Error,
}

fn default_code() -> String {
    "injected_failure".into()
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Delay { .. } => "delay",
            Fault::Hang => "hang",
            Fault::Fail { .. } => "fail",
            Fault::Error => "error",
        }
    }
}

/// A fault armed for the next `remaining` calls of `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Armed {
    pub op: &'static str,
    #[serde(flatten)]
    pub fault: Fault,
    pub remaining: u32,
}

/// Why a fault cannot be armed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("faults are refused in production mode")]
    Production,
    #[error("{0} cannot fail: only try and action may answer FAILURE (the others must succeed)")]
    CannotFail(Op),
    #[error("times must be 1 to 10000")]
    Times,
    #[error("delay ms must be 1 to 600000 (10 minutes)")]
    Delay,
    #[error("the failure code must be 1 to 64 characters of [a-z0-9_]")]
    Code,
}

/// What a faulted call does once [`Faults::apply`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    /// Run normally (no fault, or after a delay or a hang).
    Proceed,
    /// Answer FAILURE with this code, without effect.
    Fail(String),
    /// Answer UNAVAILABLE, without effect.
    Error,
}

/// The faults armed on one participant.
#[derive(Debug)]
pub struct Faults {
    production: bool,
    armed: Mutex<Vec<(Op, Fault, u32)>>,
    released: Notify,
    /// Set when the service stops: a call still delayed or hung is lost, not run.
    stopping: AtomicBool,
    stopped: Notify,
    /// Calls a fault took, by (op, kind): for `/metrics` and the list.
    injected: Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
}

impl Faults {
    pub fn new(production: bool) -> Faults {
        Faults {
            production,
            armed: Mutex::new(Vec::new()),
            released: Notify::new(),
            stopping: AtomicBool::new(false),
            stopped: Notify::new(),
            injected: Mutex::default(),
        }
    }

    /// Arms `fault` for the next `times` calls of `op` (after those already armed for it).
    pub fn arm(&self, op: Op, fault: Fault, times: u32) -> Result<(), FaultError> {
        if self.production {
            return Err(FaultError::Production);
        }
        if !(1..=10_000).contains(&times) {
            return Err(FaultError::Times);
        }
        match &fault {
            Fault::Delay { ms } if !(1..=600_000).contains(ms) => return Err(FaultError::Delay),
            Fault::Fail { .. } if !op.may_be_rejected() => return Err(FaultError::CannotFail(op)),
            Fault::Fail { code }
                if code.is_empty()
                    || code.len() > 64
                    || !code
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
            {
                return Err(FaultError::Code)
            }
            _ => {}
        }
        tracing::warn!(%op, kind = fault.kind(), times, "fault armed");
        self.lock().push((op, fault, times));
        Ok(())
    }

    /// What is armed, in the order it will be taken.
    pub fn list(&self) -> Vec<Armed> {
        self.lock()
            .iter()
            .map(|(op, fault, remaining)| Armed {
                op: op.as_str(),
                fault: fault.clone(),
                remaining: *remaining,
            })
            .collect()
    }

    /// Calls taken by a fault so far: ((op, kind), count).
    pub fn injected(&self) -> Vec<((&'static str, &'static str), u64)> {
        self.injected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Disarms everything and lets every hung call go on.
    pub fn clear(&self) {
        self.lock().clear();
        self.release();
    }

    /// Lets every hung call go on.
    pub fn release(&self) {
        self.released.notify_waiters();
    }

    /// The service is stopping: every call still delayed or hung is lost (UNAVAILABLE, no
    /// effect) instead of starting its work while the service's connections go away.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stopped.notify_waiters();
    }

    /// Takes the fault armed for this call of `op`, if any, and plays it: waits out a delay or
    /// a hang, and says what the call does next, with the fault's kind (`None`: no fault).
    pub async fn apply(&self, op: Op) -> (Then, Option<&'static str>) {
        // Listening before taking: a release (or a stop) right after the take still reaches
        // this call.
        let released = self.released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        let stopped = self.stopped.notified();
        tokio::pin!(stopped);
        stopped.as_mut().enable();
        let Some(fault) = self.take(op) else {
            return (Then::Proceed, None);
        };
        let kind = fault.kind();
        *self
            .injected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((op.as_str(), fault.kind()))
            .or_default() += 1;
        tracing::warn!(%op, kind, "fault injected");
        let lost = || {
            tracing::warn!(%op, kind, "a faulted call was lost (the service stopped, or no release came)");
            Then::Error
        };
        let then = match fault {
            Fault::Delay { ms } => tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => Then::Proceed,
                _ = &mut stopped => lost(),
            },
            Fault::Hang => tokio::select! {
                _ = &mut released => Then::Proceed,
                _ = tokio::time::sleep(MAX_HANG) => lost(),
                _ = &mut stopped => lost(),
            },
            Fault::Fail { code } => Then::Fail(code),
            Fault::Error => Then::Error,
        };
        let then = if then == Then::Proceed && self.stopping.load(Ordering::SeqCst) {
            lost()
        } else {
            then
        };
        (then, Some(kind))
    }

    /// Whether a fault is armed for any of `ops` (a batch of such calls must run them one by
    /// one); one look at the list for the whole batch.
    pub fn armed_for_any(&self, ops: &[Op]) -> bool {
        let armed = self.lock();
        !armed.is_empty() && ops.iter().any(|op| armed.iter().any(|(o, _, _)| o == op))
    }

    fn take(&self, op: Op) -> Option<Fault> {
        let mut armed = self.lock();
        let i = armed.iter().position(|(o, _, _)| *o == op)?;
        let fault = armed[i].1.clone();
        armed[i].2 -= 1;
        if armed[i].2 == 0 {
            armed.remove(i);
        }
        Some(fault)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Op, Fault, u32)>> {
        self.armed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fault_takes_exactly_the_next_n_calls_of_its_op_and_no_other() {
        let f = Faults::new(false);
        f.arm(Op::Try, Fault::Error, 2).unwrap();
        f.arm(
            Op::Try,
            Fault::Fail {
                code: "no_luck".into(),
            },
            1,
        )
        .unwrap();
        assert_eq!(f.apply(Op::Confirm).await, (Then::Proceed, None));
        assert_eq!(f.apply(Op::Try).await.0, Then::Error);
        assert_eq!(f.apply(Op::Try).await.0, Then::Error);
        assert_eq!(f.apply(Op::Try).await.0, Then::Fail("no_luck".into()));
        assert_eq!(f.apply(Op::Try).await, (Then::Proceed, None));
        assert!(f.list().is_empty());
        assert_eq!(f.injected(), [(("try", "error"), 2), (("try", "fail"), 1)]);
    }

    #[tokio::test]
    async fn a_hung_call_goes_on_once_released() {
        let f = std::sync::Arc::new(Faults::new(false));
        f.arm(Op::Cancel, Fault::Hang, 1).unwrap();
        let hung = tokio::spawn({
            let f = f.clone();
            async move { f.apply(Op::Cancel).await.0 }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!hung.is_finished(), "it hangs until released");
        f.release();
        let then = tokio::time::timeout(Duration::from_secs(2), hung)
            .await
            .expect("released")
            .unwrap();
        assert_eq!(then, Then::Proceed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hang_never_released_and_a_delay_cut_by_a_stop_are_lost_calls_not_late_ones() {
        let f = std::sync::Arc::new(Faults::new(false));
        f.arm(Op::Try, Fault::Hang, 1).unwrap();
        // Forgotten for longer than the maximum: lost (no effect), never run a day later.
        let then = f.apply(Op::Try).await;
        assert_eq!(then, (Then::Error, Some("hang")));
        f.arm(Op::Try, Fault::Delay { ms: 60_000 }, 1).unwrap();
        let delayed = tokio::spawn({
            let f = f.clone();
            async move { f.apply(Op::Try).await.0 }
        });
        tokio::task::yield_now().await;
        f.stop();
        assert_eq!(delayed.await.unwrap(), Then::Error);
    }

    #[test]
    fn production_bad_input_and_a_failing_confirm_are_refused() {
        assert_eq!(
            Faults::new(true).arm(Op::Try, Fault::Error, 1),
            Err(FaultError::Production)
        );
        let f = Faults::new(false);
        assert_eq!(
            f.arm(Op::Confirm, Fault::Fail { code: "x".into() }, 1),
            Err(FaultError::CannotFail(Op::Confirm))
        );
        assert_eq!(f.arm(Op::Try, Fault::Error, 0), Err(FaultError::Times));
        assert_eq!(
            f.arm(Op::Try, Fault::Delay { ms: 0 }, 1),
            Err(FaultError::Delay)
        );
        assert_eq!(
            f.arm(
                Op::Try,
                Fault::Fail {
                    code: "Bad Code".into()
                },
                1
            ),
            Err(FaultError::Code)
        );
        assert!(f.list().is_empty());
    }
}
