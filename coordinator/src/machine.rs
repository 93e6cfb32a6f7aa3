//! The global transaction state machine: pure data and one transition function.
//!
//! [`Txn::step`] takes an event (a call's result, the deadline, a restart) and returns the
//! effects to carry out, in order: [`Effect::Persist`] (the new status must be durable before
//! anything after it happens), then the branch calls. The driver executes effects and feeds the
//! calls' results back as events; nothing here does I/O, so every transition is unit-tested.
//!
//! TCC: every Try at once; all SUCCESS → `Confirming` and every Confirm; any FAILURE, error or
//! timeout → `Cancelling` and every Cancel (a Cancel for a Try that never arrived is a null
//! compensation at the participant). Confirm and Cancel are retried until they succeed.
//!
//! Saga: Actions in dependency order (by default each branch depends on the one before it);
//! a transient error is retried; a FAILURE (or the deadline) → `Cancelling`, and **every**
//! branch is compensated, one at a time in reverse order. Which Actions ran is not known for
//! sure: Actions go out without a commit each, so after a crash (or a lost write) the log may say
//! `not_started` of one that took effect. A Compensate whose Action never arrived is a null
//! compensation at the participant (it succeeds, and its barrier row makes a late Action do
//! nothing), so compensating everything is always safe and never misses an effect.
//!
//! A Saga's *retriable* branches (steps that cannot fail for a business reason: a release, a
//! status change) come after its point of no return. They are sent only once every other
//! branch's Action has succeeded, and only after that decision is durable (`Confirming`, as a
//! TCC commit is); from then on they are retried until they succeed, past the deadline, and
//! nothing is ever compensated (nor are they when the Saga rolls back before that point: none
//! was sent). Without this, a step that took effect but whose answer was lost could be
//! compensated at the deadline after the world had moved on (a refund's money spent by the
//! buyer), and the compensation would fail for ever.
//!
//! A second phase with nothing left to do ends at once (`Failed` / `Succeeded`): no status is
//! ever left without a way forward.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tcc,
    Saga,
}

/// Status of a global transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Tries (TCC) or Actions (Saga) under way.
    Prepared,
    /// TCC commit decided: Confirms until all succeed.
    Confirming,
    /// Rollback decided: Cancels (TCC) or Compensates (Saga) until all succeed.
    Cancelling,
    Succeeded,
    Failed,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Prepared,
        Status::Confirming,
        Status::Cancelling,
        Status::Succeeded,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Prepared => "prepared",
            Status::Confirming => "confirming",
            Status::Cancelling => "cancelling",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed)
    }

    /// The only status changes there are.
    fn may_become(self, to: Status, mode: Mode) -> bool {
        matches!(
            (self, to, mode),
            (Status::Prepared, Status::Confirming, _)
                | (Status::Prepared, Status::Cancelling, _)
                | (Status::Prepared, Status::Succeeded, Mode::Saga)
                | (Status::Confirming, Status::Succeeded, _)
                | (Status::Cancelling, Status::Failed, _)
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A branch call: the project's one [`tcc::Op`].
pub use tcc::Op;

/// How the first phase (Try / Action) of a branch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    NotStarted,
    /// Sent; no answer yet (after a restart: unknown).
    InFlight,
    Succeeded,
    /// Answered FAILURE.
    Rejected,
    /// A transport error or timeout: the outcome is unknown.
    Errored,
}

/// How the second phase (Confirm / Cancel / Compensate) of a branch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Second {
    NotNeeded,
    Pending,
    Done,
}

impl First {
    pub fn as_str(self) -> &'static str {
        match self {
            First::NotStarted => "not_started",
            First::InFlight => "in_flight",
            First::Succeeded => "succeeded",
            First::Rejected => "rejected",
            First::Errored => "errored",
        }
    }
    pub fn parse(s: &str) -> Option<First> {
        [
            First::NotStarted,
            First::InFlight,
            First::Succeeded,
            First::Rejected,
            First::Errored,
        ]
        .into_iter()
        .find(|f| f.as_str() == s)
    }
}

impl Second {
    pub fn as_str(self) -> &'static str {
        match self {
            Second::NotNeeded => "not_needed",
            Second::Pending => "pending",
            Second::Done => "done",
        }
    }
    pub fn parse(s: &str) -> Option<Second> {
        [Second::NotNeeded, Second::Pending, Second::Done]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    pub first: First,
    pub second: Second,
    /// Saga: indices of branches whose Action must succeed first.
    pub depends_on: Vec<usize>,
    /// Saga: after the point of no return, retried until it succeeds, never compensated.
    pub retriable: bool,
}

impl Branch {
    pub fn new(depends_on: Vec<usize>) -> Branch {
        Branch {
            first: First::NotStarted,
            second: Second::NotNeeded,
            depends_on,
            retriable: false,
        }
    }

    /// The same branch, retriable (see the module docs).
    pub fn retriable(self, retriable: bool) -> Branch {
        Branch { retriable, ..self }
    }
}

/// The result of one branch call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    Success,
    /// Business rejection (Try / Action only).
    Failure {
        code: String,
        message: String,
    },
    /// Transport error, timeout, or ONGOING: outcome unknown, try again later.
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The transaction was just recorded, or is picked up again after a restart or a retry
    /// delay: (re)issue whatever is outstanding.
    Resume,
    /// A call of the first phase (Try / Action) answered.
    First { branch: usize, result: CallResult },
    /// A call of the second phase (Confirm / Cancel / Compensate) answered.
    Second { branch: usize, result: CallResult },
    /// The global deadline passed.
    Deadline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Make the current status (and branch states) durable before the effects after it.
    Persist,
    /// Call `op` on a branch.
    Call { branch: usize, op: Op },
    /// Something is left to do; come back after a backoff delay.
    RetryLater,
}

/// The dependencies branches really have: a Saga runs branches without declared dependencies
/// in the given order (each after the one before it) unless it is `concurrent`.
pub fn effective_dependencies(
    mode: Mode,
    concurrent: bool,
    declared: Vec<Vec<usize>>,
) -> Vec<Vec<usize>> {
    declared
        .into_iter()
        .enumerate()
        .map(|(i, deps)| match (mode, concurrent) {
            (Mode::Saga, false) if i > 0 && deps.is_empty() => vec![i - 1],
            _ => deps,
        })
        .collect()
}

/// Why a transaction is rolled back: typed from here to the log, the gRPC answer and the order
/// API's reason codes (nobody parses the words).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rollback {
    /// A branch answered FAILURE to its Try or Action (a business rejection).
    Rejected {
        branch: usize,
        code: String,
        message: String,
    },
    /// A branch's Try errored or timed out: its outcome is unknown.
    Errored { branch: usize, error: String },
    /// The global deadline passed before every branch was prepared.
    Deadline,
    /// A reason recorded as words only, before reasons were typed.
    Described { text: String },
}

impl Rollback {
    /// The branch whose answer caused it, if one did.
    pub fn branch(&self) -> Option<usize> {
        match self {
            Rollback::Rejected { branch, .. } | Rollback::Errored { branch, .. } => Some(*branch),
            Rollback::Deadline | Rollback::Described { .. } => None,
        }
    }
}

impl fmt::Display for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rollback::Rejected {
                branch,
                code,
                message,
            } => write!(
                f,
                "branch {branch} rejected its first phase: {code}: {message}"
            ),
            Rollback::Errored { branch, error } => {
                write!(f, "branch {branch} did not answer its try: {error}")
            }
            Rollback::Deadline => {
                f.write_str("the global deadline passed before every branch was prepared")
            }
            Rollback::Described { text } => f.write_str(text),
        }
    }
}

/// A global transaction's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Txn {
    pub mode: Mode,
    pub status: Status,
    pub branches: Vec<Branch>,
    /// Why it is being rolled back.
    pub reason: Option<Rollback>,
}

impl Txn {
    /// A new transaction (dependencies as [`effective_dependencies`] makes them).
    pub fn new(mode: Mode, depends_on: Vec<Vec<usize>>, concurrent: bool) -> Txn {
        let branches = effective_dependencies(mode, concurrent, depends_on)
            .into_iter()
            .map(Branch::new)
            .collect();
        Txn {
            mode,
            status: Status::Prepared,
            branches,
            reason: None,
        }
    }

    fn set_status(&mut self, to: Status) {
        assert!(
            self.status.may_become(to, self.mode),
            "illegal transition {} -> {to} ({:?})",
            self.status,
            self.mode
        );
        self.status = to;
    }

    /// Applies an event; returns the effects to carry out, in order.
    pub fn step(&mut self, event: Event) -> Vec<Effect> {
        match (self.mode, event) {
            (_, Event::Resume) => self.resume(),
            (_, Event::Deadline) => {
                if self.status == Status::Prepared {
                    self.roll_back(Rollback::Deadline)
                } else {
                    Vec::new()
                }
            }
            (Mode::Tcc, Event::First { branch, result }) => self.tcc_try_answered(branch, result),
            (Mode::Saga, Event::First { branch, result }) => {
                self.saga_action_answered(branch, result)
            }
            (_, Event::Second { branch, result }) => self.second_answered(branch, result),
        }
    }

    fn first_op(&self) -> Op {
        match self.mode {
            Mode::Tcc => Op::Try,
            Mode::Saga => Op::Action,
        }
    }

    fn second_op(&self) -> Op {
        match (self.mode, self.status) {
            (Mode::Tcc, Status::Confirming) => Op::Confirm,
            (Mode::Tcc, _) => Op::Cancel,
            (Mode::Saga, _) => Op::Compensate,
        }
    }

    fn resume(&mut self) -> Vec<Effect> {
        match self.status {
            Status::Prepared => {
                if let Some(effects) = self.past_no_return() {
                    return effects;
                }
                let runnable: Vec<usize> = (0..self.branches.len())
                    .filter(|&i| self.runnable(i))
                    .collect();
                self.send_first(runnable)
            }
            Status::Confirming if self.mode == Mode::Saga => self.saga_forward(|_| true),
            Status::Confirming | Status::Cancelling => {
                if self.mode == Mode::Saga && self.status == Status::Cancelling {
                    // A log written before every Saga branch was compensated may say a branch
                    // needs none although its Action ran: undo it too (null compensation if not).
                    for b in self.branches.iter_mut().filter(|b| !b.retriable) {
                        if b.second == Second::NotNeeded {
                            b.second = Second::Pending;
                        }
                    }
                }
                if self.branches.iter().any(|b| b.second == Second::Pending) {
                    self.second_calls()
                } else {
                    // Decided, with nothing (left) to confirm or undo: the end.
                    self.finish_second_phase();
                    vec![Effect::Persist]
                }
            }
            Status::Succeeded | Status::Failed => Vec::new(),
        }
    }

    /// Marks `branches` in flight and sends their first-phase call.
    fn send_first(&mut self, branches: Vec<usize>) -> Vec<Effect> {
        let op = self.first_op();
        branches
            .into_iter()
            .map(|branch| {
                self.branches[branch].first = First::InFlight;
                Effect::Call { branch, op }
            })
            .collect()
    }

    /// The second phase is complete: `Succeeded` after Confirms, `Failed` after Cancels or
    /// Compensates.
    fn finish_second_phase(&mut self) {
        let to = if self.status == Status::Confirming {
            Status::Succeeded
        } else {
            Status::Failed
        };
        self.set_status(to);
    }

    /// Whether the first phase of `i` should be (re)sent now.
    fn runnable(&self, i: usize) -> bool {
        let b = &self.branches[i];
        match self.mode {
            // After a restart an in-flight or errored Try is sent again: the barrier makes a
            // duplicate harmless.
            Mode::Tcc => matches!(
                b.first,
                First::NotStarted | First::InFlight | First::Errored
            ),
            Mode::Saga => {
                matches!(
                    b.first,
                    First::NotStarted | First::InFlight | First::Errored
                ) && (!b.retriable || self.status == Status::Confirming)
                    && b.depends_on
                        .iter()
                        .all(|&d| self.branches[d].first == First::Succeeded)
            }
        }
    }

    /// The second-phase calls to send now: all pending ones (TCC), or the last pending one in
    /// branch order (Saga compensates in reverse, one at a time).
    fn second_calls(&mut self) -> Vec<Effect> {
        let op = self.second_op();
        let mut pending =
            (0..self.branches.len()).filter(|&i| self.branches[i].second == Second::Pending);
        match self.mode {
            Mode::Tcc => pending.map(|branch| Effect::Call { branch, op }).collect(),
            Mode::Saga => pending
                .next_back()
                .map(|branch| Effect::Call { branch, op })
                .into_iter()
                .collect(),
        }
    }

    fn roll_back(&mut self, reason: Rollback) -> Vec<Effect> {
        self.set_status(Status::Cancelling);
        self.reason = Some(reason);
        // Every branch is undone: a Try or Action may have arrived even if no answer did (or
        // the log does not know it was sent); the barrier turns the others into null
        // compensations. Except a Saga's retriable branches: none was ever sent, as they go
        // out only once the decision not to roll back is durable.
        for b in self.branches.iter_mut().filter(|b| !b.retriable) {
            b.second = Second::Pending;
        }
        let mut effects = vec![Effect::Persist];
        effects.extend(self.second_calls());
        effects
    }

    fn tcc_try_answered(&mut self, branch: usize, result: CallResult) -> Vec<Effect> {
        if self.status != Status::Prepared {
            // Decided already; a late answer changes nothing.
            return Vec::new();
        }
        match result {
            CallResult::Success => {
                self.branches[branch].first = First::Succeeded;
                if self.branches.iter().all(|b| b.first == First::Succeeded) {
                    self.set_status(Status::Confirming);
                    for b in &mut self.branches {
                        b.second = Second::Pending;
                    }
                    let mut effects = vec![Effect::Persist];
                    effects.extend(self.second_calls());
                    effects
                } else {
                    Vec::new()
                }
            }
            CallResult::Failure { code, message } => {
                self.branches[branch].first = First::Rejected;
                self.roll_back(Rollback::Rejected {
                    branch,
                    code,
                    message,
                })
            }
            CallResult::Error(error) => {
                self.branches[branch].first = First::Errored;
                self.roll_back(Rollback::Errored { branch, error })
            }
        }
    }

    /// A Saga whose every branch but the retriable ones succeeded is past its point of no
    /// return: the decision is made durable before any retriable Action goes out.
    fn past_no_return(&mut self) -> Option<Vec<Effect>> {
        let reached = self.mode == Mode::Saga
            && self.status == Status::Prepared
            && self.branches.iter().any(|b| b.retriable)
            && self
                .branches
                .iter()
                .all(|b| b.retriable || b.first == First::Succeeded);
        if !reached {
            return None;
        }
        self.set_status(Status::Confirming);
        let mut effects = vec![Effect::Persist];
        effects.extend(self.saga_forward(|_| true));
        Some(effects)
    }

    /// Past the point of no return: the end once every Action succeeded, else the retriable
    /// Actions that may go now (those whose first phase `send` selects).
    fn saga_forward(&mut self, send: impl Fn(First) -> bool) -> Vec<Effect> {
        if self.branches.iter().all(|b| b.first == First::Succeeded) {
            self.set_status(Status::Succeeded);
            return vec![Effect::Persist];
        }
        let next: Vec<usize> = (0..self.branches.len())
            .filter(|&i| send(self.branches[i].first) && self.runnable(i))
            .collect();
        self.send_first(next)
    }

    fn saga_action_answered(&mut self, branch: usize, result: CallResult) -> Vec<Effect> {
        if self.status == Status::Confirming {
            return self.retriable_action_answered(branch, result);
        }
        if self.status != Status::Prepared {
            return Vec::new();
        }
        match result {
            CallResult::Success => {
                self.branches[branch].first = First::Succeeded;
                if self.branches.iter().all(|b| b.first == First::Succeeded) {
                    self.set_status(Status::Succeeded);
                    return vec![Effect::Persist];
                }
                if let Some(effects) = self.past_no_return() {
                    return effects;
                }
                let next: Vec<usize> = (0..self.branches.len())
                    .filter(|&i| self.branches[i].first == First::NotStarted && self.runnable(i))
                    .collect();
                self.send_first(next)
            }
            CallResult::Failure { code, message } => {
                self.branches[branch].first = First::Rejected;
                self.roll_back(Rollback::Rejected {
                    branch,
                    code,
                    message,
                })
            }
            CallResult::Error(_) => {
                self.branches[branch].first = First::Errored;
                vec![Effect::RetryLater]
            }
        }
    }

    /// An Action past the point of no return answered: it must eventually succeed, so a
    /// FAILURE (a participant bug, or a fault switched on) is retried like an error, for an
    /// operator to see and fix.
    fn retriable_action_answered(&mut self, branch: usize, result: CallResult) -> Vec<Effect> {
        if self.branches[branch].first == First::Succeeded {
            return Vec::new();
        }
        match result {
            CallResult::Success => {
                self.branches[branch].first = First::Succeeded;
                self.saga_forward(|first| first == First::NotStarted)
            }
            CallResult::Failure { .. } | CallResult::Error(_) => {
                self.branches[branch].first = First::Errored;
                vec![Effect::RetryLater]
            }
        }
    }

    fn second_answered(&mut self, branch: usize, result: CallResult) -> Vec<Effect> {
        if !matches!(self.status, Status::Confirming | Status::Cancelling)
            || self.branches[branch].second != Second::Pending
        {
            return Vec::new();
        }
        match result {
            CallResult::Success => {
                self.branches[branch].second = Second::Done;
                if self.branches.iter().all(|b| b.second != Second::Pending) {
                    self.finish_second_phase();
                    vec![Effect::Persist]
                } else if self.mode == Mode::Saga {
                    self.second_calls()
                } else {
                    Vec::new()
                }
            }
            // Second-phase ops must eventually succeed: a FAILURE here is a participant bug or
            // a broken request; keep retrying so an operator can see and fix it.
            CallResult::Failure { .. } | CallResult::Error(_) => vec![Effect::RetryLater],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcc(n: usize) -> Txn {
        Txn::new(Mode::Tcc, vec![vec![]; n], false)
    }

    fn calls(effects: &[Effect]) -> Vec<(usize, Op)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Call { branch, op } => Some((*branch, *op)),
                _ => None,
            })
            .collect()
    }

    fn ok(branch: usize) -> Event {
        Event::First {
            branch,
            result: CallResult::Success,
        }
    }

    fn ok2(branch: usize) -> Event {
        Event::Second {
            branch,
            result: CallResult::Success,
        }
    }

    fn rejected(branch: usize) -> Event {
        Event::First {
            branch,
            result: CallResult::Failure {
                code: "insufficient_funds".into(),
                message: "short".into(),
            },
        }
    }

    fn errored() -> CallResult {
        CallResult::Error("deadline exceeded".into())
    }

    #[test]
    fn a_new_tcc_transaction_tries_every_branch_at_once() {
        let mut t = tcc(3);
        assert_eq!(
            calls(&t.step(Event::Resume)),
            vec![(0, Op::Try), (1, Op::Try), (2, Op::Try)]
        );
        assert!(t.branches.iter().all(|b| b.first == First::InFlight));
        assert_eq!(t.status, Status::Prepared);
    }

    #[test]
    fn the_last_successful_try_persists_the_commit_decision_before_any_confirm() {
        let mut t = tcc(3);
        t.step(Event::Resume);
        assert!(t.step(ok(0)).is_empty());
        assert!(t.step(ok(2)).is_empty());
        let effects = t.step(ok(1));
        assert_eq!(effects[0], Effect::Persist);
        assert_eq!(
            calls(&effects),
            vec![(0, Op::Confirm), (1, Op::Confirm), (2, Op::Confirm)]
        );
        assert_eq!(t.status, Status::Confirming);
    }

    #[test]
    fn every_confirm_succeeding_ends_the_transaction_succeeded() {
        let mut t = tcc(2);
        t.step(Event::Resume);
        t.step(ok(0));
        t.step(ok(1));
        assert!(t.step(ok2(1)).is_empty());
        assert_eq!(t.step(ok2(0)), vec![Effect::Persist]);
        assert_eq!(t.status, Status::Succeeded);
        assert!(t.branches.iter().all(|b| b.second == Second::Done));
    }

    #[test]
    fn one_rejected_try_cancels_every_branch_including_unanswered_ones() {
        let mut t = tcc(3);
        t.step(Event::Resume);
        t.step(ok(0));
        let effects = t.step(rejected(1));
        assert_eq!(effects[0], Effect::Persist);
        assert_eq!(
            calls(&effects),
            vec![(0, Op::Cancel), (1, Op::Cancel), (2, Op::Cancel)]
        );
        assert_eq!(t.status, Status::Cancelling);
        assert_eq!(
            t.reason,
            Some(Rollback::Rejected {
                branch: 1,
                code: "insufficient_funds".into(),
                message: "short".into()
            })
        );
    }

    #[test]
    fn a_try_that_errors_or_times_out_cancels_the_transaction_too() {
        let mut t = tcc(2);
        t.step(Event::Resume);
        let effects = t.step(Event::First {
            branch: 0,
            result: errored(),
        });
        assert_eq!(t.status, Status::Cancelling);
        assert_eq!(calls(&effects), vec![(0, Op::Cancel), (1, Op::Cancel)]);
    }

    #[test]
    fn a_late_try_answer_after_the_decision_changes_nothing() {
        let mut t = tcc(2);
        t.step(Event::Resume);
        t.step(rejected(0));
        let before = t.clone();
        assert!(t.step(ok(1)).is_empty());
        assert!(t.step(rejected(1)).is_empty());
        assert_eq!(t, before);
    }

    #[test]
    fn a_failing_confirm_is_retried_later_and_only_pending_ones_are_resent() {
        let mut t = tcc(3);
        t.step(Event::Resume);
        (0..3).for_each(|i| {
            t.step(ok(i));
        });
        t.step(ok2(0));
        assert_eq!(
            t.step(Event::Second {
                branch: 1,
                result: errored()
            }),
            vec![Effect::RetryLater]
        );
        assert_eq!(t.status, Status::Confirming);
        assert_eq!(t.branches[1].second, Second::Pending, "still to confirm");
        assert_eq!(
            calls(&t.step(Event::Resume)),
            vec![(1, Op::Confirm), (2, Op::Confirm)]
        );
    }

    #[test]
    fn every_cancel_succeeding_ends_the_transaction_failed() {
        let mut t = tcc(2);
        t.step(Event::Resume);
        t.step(rejected(0));
        t.step(ok2(0));
        assert_eq!(t.step(ok2(1)), vec![Effect::Persist]);
        assert_eq!(t.status, Status::Failed);
    }

    #[test]
    fn a_duplicate_second_phase_answer_changes_nothing() {
        let mut t = tcc(2);
        t.step(Event::Resume);
        t.step(rejected(0));
        t.step(ok2(0));
        let before = t.clone();
        assert!(t.step(ok2(0)).is_empty());
        assert_eq!(t, before);
    }

    #[test]
    fn the_deadline_aborts_a_prepared_transaction_and_nothing_else() {
        let mut t = tcc(2);
        t.step(Event::Resume);
        t.step(ok(0));
        let effects = t.step(Event::Deadline);
        assert_eq!(t.status, Status::Cancelling);
        assert_eq!(calls(&effects), vec![(0, Op::Cancel), (1, Op::Cancel)]);

        let mut c = tcc(1);
        c.step(Event::Resume);
        c.step(ok(0));
        assert!(c.step(Event::Deadline).is_empty());
        assert_eq!(c.status, Status::Confirming);
    }

    #[test]
    fn resuming_a_prepared_tcc_after_a_restart_resends_unfinished_tries_only() {
        let mut t = tcc(3);
        t.step(Event::Resume);
        t.step(ok(1));
        // Restart: branch states as persisted (in flight = unknown).
        assert_eq!(
            calls(&t.step(Event::Resume)),
            vec![(0, Op::Try), (2, Op::Try)]
        );
    }

    #[test]
    fn resuming_a_terminal_transaction_does_nothing() {
        let mut t = tcc(1);
        t.step(Event::Resume);
        t.step(ok(0));
        t.step(ok2(0));
        assert!(t.step(Event::Resume).is_empty());
        assert!(t.step(Event::Deadline).is_empty());
    }

    fn saga(n: usize) -> Txn {
        Txn::new(Mode::Saga, vec![vec![]; n], false)
    }

    /// A refund's shape: 0 first; 1 and 2 after it (may fail); 3 and 4 retriable after both.
    fn refund_like() -> Txn {
        let mut t = Txn::new(
            Mode::Saga,
            vec![vec![], vec![0], vec![0], vec![1, 2], vec![1, 2]],
            false,
        );
        t.branches[3].retriable = true;
        t.branches[4].retriable = true;
        t
    }

    #[test]
    fn retriable_steps_start_only_after_the_point_of_no_return_is_durable() {
        let mut t = refund_like();
        assert_eq!(calls(&t.step(Event::Resume)), vec![(0, Op::Action)]);
        assert_eq!(
            calls(&t.step(ok(0))),
            vec![(1, Op::Action), (2, Op::Action)]
        );
        assert!(t.step(ok(1)).is_empty());
        let effects = t.step(ok(2));
        assert_eq!(effects[0], Effect::Persist, "the decision is durable first");
        assert_eq!(t.status, Status::Confirming);
        assert_eq!(calls(&effects), vec![(3, Op::Action), (4, Op::Action)]);
        assert!(t.step(ok(3)).is_empty());
        assert_eq!(t.step(ok(4)), vec![Effect::Persist]);
        assert_eq!(t.status, Status::Succeeded);
        assert!(t.branches.iter().all(|b| b.second == Second::NotNeeded));
    }

    #[test]
    fn past_the_point_of_no_return_nothing_is_compensated_whatever_comes() {
        let mut t = refund_like();
        for e in [Event::Resume, ok(0), ok(1), ok(2)] {
            t.step(e);
        }
        assert_eq!(t.status, Status::Confirming);
        // The deadline, a rejection (a fault switched on), an error: retried, never undone.
        assert!(t.step(Event::Deadline).is_empty());
        assert_eq!(t.step(rejected(3)), vec![Effect::RetryLater]);
        assert_eq!(
            t.step(Event::First {
                branch: 4,
                result: errored()
            }),
            vec![Effect::RetryLater]
        );
        assert_eq!(t.status, Status::Confirming);
        assert_eq!(
            calls(&t.step(Event::Resume)),
            vec![(3, Op::Action), (4, Op::Action)]
        );
        assert!(t.step(ok(3)).is_empty());
        assert_eq!(t.step(ok(4)), vec![Effect::Persist]);
        assert_eq!(t.status, Status::Succeeded);
    }

    #[test]
    fn before_the_point_of_no_return_a_failure_compensates_everything_and_no_retriable_step_ran() {
        let mut t = refund_like();
        for e in [Event::Resume, ok(0), ok(1)] {
            t.step(e);
        }
        let effects = t.step(rejected(2));
        assert_eq!(t.status, Status::Cancelling);
        // The retriable steps never ran and are not undone: the last one that may have is.
        assert_eq!(calls(&effects), vec![(2, Op::Compensate)]);
        assert!(t.branches[3..].iter().all(|b| b.first == First::NotStarted));
        // The deadline before the point of no return aborts as for any Saga.
        let mut t = refund_like();
        for e in [Event::Resume, ok(0), ok(1)] {
            t.step(e);
        }
        t.step(Event::Deadline);
        assert_eq!(t.status, Status::Cancelling);
    }

    #[test]
    fn a_saga_recovered_past_its_point_of_no_return_sends_the_retriable_steps_again() {
        let mut t = refund_like();
        t.status = Status::Confirming;
        for b in &mut t.branches[..3] {
            b.first = First::Succeeded;
        }
        t.branches[3].first = First::InFlight;
        assert_eq!(
            calls(&t.step(Event::Resume)),
            vec![(3, Op::Action), (4, Op::Action)]
        );
        // Only retriable steps left, none run yet, recorded before the decision was made.
        let mut only = saga(2);
        only.branches.iter_mut().for_each(|b| b.retriable = true);
        only.branches[1].depends_on = vec![0];
        let effects = only.step(Event::Resume);
        assert_eq!(effects[0], Effect::Persist);
        assert_eq!(calls(&effects), vec![(0, Op::Action)]);
        assert_eq!(only.status, Status::Confirming);
    }

    #[test]
    fn a_saga_runs_its_actions_in_order_and_succeeds_without_a_second_phase() {
        let mut t = saga(3);
        assert_eq!(calls(&t.step(Event::Resume)), vec![(0, Op::Action)]);
        assert_eq!(calls(&t.step(ok(0))), vec![(1, Op::Action)]);
        assert_eq!(calls(&t.step(ok(1))), vec![(2, Op::Action)]);
        assert_eq!(t.step(ok(2)), vec![Effect::Persist]);
        assert_eq!(t.status, Status::Succeeded);
    }

    #[test]
    fn a_concurrent_saga_starts_independent_actions_together_and_waits_for_dependencies() {
        let mut t = Txn::new(Mode::Saga, vec![vec![], vec![], vec![0, 1]], true);
        assert_eq!(
            calls(&t.step(Event::Resume)),
            vec![(0, Op::Action), (1, Op::Action)]
        );
        assert!(calls(&t.step(ok(1))).is_empty());
        assert_eq!(calls(&t.step(ok(0))), vec![(2, Op::Action)]);
    }

    #[test]
    fn a_saga_failure_compensates_every_step_in_reverse_order() {
        let mut t = saga(4);
        t.step(Event::Resume);
        t.step(ok(0));
        t.step(ok(1));
        let effects = t.step(rejected(2));
        assert_eq!(effects[0], Effect::Persist);
        assert_eq!(t.status, Status::Cancelling);
        // Branch 3 never started: its Compensate is a null compensation, harmless.
        assert_eq!(calls(&effects), vec![(3, Op::Compensate)]);
        assert_eq!(calls(&t.step(ok2(3))), vec![(2, Op::Compensate)]);
        assert_eq!(calls(&t.step(ok2(2))), vec![(1, Op::Compensate)]);
        assert_eq!(calls(&t.step(ok2(1))), vec![(0, Op::Compensate)]);
        assert_eq!(t.step(ok2(0)), vec![Effect::Persist]);
        assert_eq!(t.status, Status::Failed);
    }

    #[test]
    fn a_saga_action_error_is_retried_not_compensated() {
        let mut t = saga(2);
        t.step(Event::Resume);
        assert_eq!(
            t.step(Event::First {
                branch: 0,
                result: errored()
            }),
            vec![Effect::RetryLater]
        );
        assert_eq!(t.status, Status::Prepared);
        assert_eq!(calls(&t.step(Event::Resume)), vec![(0, Op::Action)]);
    }

    #[test]
    fn a_saga_recovered_past_its_deadline_compensates_every_step_whatever_the_log_says() {
        // After a crash the log may say nothing ran although step 0's Action took effect.
        let mut t = saga(3);
        let effects = t.step(Event::Deadline);
        assert_eq!(t.status, Status::Cancelling);
        assert_eq!(effects[0], Effect::Persist);
        assert_eq!(calls(&effects), vec![(2, Op::Compensate)]);
        assert_eq!(calls(&t.step(ok2(2))), vec![(1, Op::Compensate)]);
        assert_eq!(calls(&t.step(ok2(1))), vec![(0, Op::Compensate)]);
        assert_eq!(t.step(ok2(0)), vec![Effect::Persist]);
        assert_eq!(t.status, Status::Failed);
    }

    #[test]
    fn a_saga_logged_cancelling_with_nothing_pending_is_compensated_not_closed() {
        // What the previous version wrote after a crash: cancelling, no branch marked for undo.
        let mut t = saga(2);
        t.status = Status::Cancelling;
        assert_eq!(calls(&t.step(Event::Resume)), vec![(1, Op::Compensate)]);
        assert_eq!(calls(&t.step(ok2(1))), vec![(0, Op::Compensate)]);
        assert_eq!(t.step(ok2(0)), vec![Effect::Persist]);
        assert_eq!(t.status, Status::Failed);
    }

    #[test]
    fn a_decided_transaction_with_nothing_pending_is_finished_by_the_next_resume() {
        let mut c = tcc(2);
        c.status = Status::Confirming;
        c.branches.iter_mut().for_each(|b| b.second = Second::Done);
        assert_eq!(c.step(Event::Resume), vec![Effect::Persist]);
        assert_eq!(c.status, Status::Succeeded);
        let mut t = saga(2);
        t.status = Status::Cancelling;
        t.branches.iter_mut().for_each(|b| b.second = Second::Done);
        assert_eq!(t.step(Event::Resume), vec![Effect::Persist]);
        assert_eq!(t.status, Status::Failed);
    }

    #[test]
    fn only_the_designed_status_changes_are_allowed() {
        let allowed: Vec<(Status, Status, Mode)> = vec![
            (Status::Prepared, Status::Confirming, Mode::Tcc),
            // A Saga past its point of no return (retriable branches).
            (Status::Prepared, Status::Confirming, Mode::Saga),
            (Status::Prepared, Status::Cancelling, Mode::Tcc),
            (Status::Prepared, Status::Cancelling, Mode::Saga),
            (Status::Prepared, Status::Succeeded, Mode::Saga),
            (Status::Confirming, Status::Succeeded, Mode::Tcc),
            (Status::Confirming, Status::Succeeded, Mode::Saga),
            (Status::Cancelling, Status::Failed, Mode::Tcc),
            (Status::Cancelling, Status::Failed, Mode::Saga),
        ];
        for from in Status::ALL {
            for to in Status::ALL {
                for mode in [Mode::Tcc, Mode::Saga] {
                    assert_eq!(
                        from.may_become(to, mode),
                        allowed.contains(&(from, to, mode)),
                        "{from} -> {to} {mode:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        for op in Op::ALL {
            assert_eq!(Op::parse(op.as_str()), Some(op));
            assert_eq!(Op::from_wire(op.to_wire() as i32), Some(op));
        }
        assert_eq!(First::parse("errored"), Some(First::Errored));
        assert_eq!(Second::parse("pending"), Some(Second::Pending));
    }
}
