//! The state machine against random histories, checked against what money and stock need
//! rather than against a copy of its own table.
//!
//! A small driver plays the engine: it sends the calls the machine asks for, answers them in a
//! random order with random outcomes, lets the deadline pass, crashes (back to the last
//! `Persist`, calls in flight forgotten but possibly applied) and resumes. After every step:
//! - a second-phase call goes out only when its decision is durable (the last `Persist` holds
//!   the current status);
//! - one transaction never sends both a Confirm and a Cancel;
//! - `succeeded` means every branch was confirmed (TCC) or every Action succeeded (Saga);
//! - `failed` means every branch whose first phase may have taken effect was undone.
//!
//! And in the end, once every call succeeds, every history reaches a terminal status.
use coordinator::machine::{CallResult, Effect, Event, First, Mode, Op, Status, Txn};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    /// Answer the outstanding call at this index (modulo) with outcome 0 success, 1 failure,
    /// 2 error.
    Answer(usize, u8),
    Deadline,
    /// The process dies and restarts from its log; then Resume, or Deadline if `past`.
    Crash {
        past: bool,
    },
    /// A retry round after a backoff (only when nothing is outstanding).
    Retry,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..8, 0u8..3).prop_map(|(i, o)| Step::Answer(i, o)),
        1 => Just(Step::Deadline),
        1 => any::<bool>().prop_map(|past| Step::Crash { past }),
        2 => Just(Step::Retry),
    ]
}

struct World {
    txn: Txn,
    durable: Txn,
    outstanding: Vec<(usize, Op)>,
    maybe_applied: Vec<bool>,
    undone: Vec<bool>,
    confirmed: Vec<bool>,
    sent_confirm: bool,
    sent_cancel: bool,
}

impl World {
    /// `retriable`: how many of the last branches are after the point of no return (Saga).
    fn new(mode: Mode, n: usize, concurrent: bool, retriable: usize) -> World {
        let mut txn = Txn::new(mode, vec![vec![]; n], concurrent);
        for b in txn.branches.iter_mut().rev().take(retriable) {
            b.retriable = true;
        }
        World {
            durable: txn.clone(),
            txn,
            outstanding: Vec::new(),
            maybe_applied: vec![false; n],
            undone: vec![false; n],
            confirmed: vec![false; n],
            sent_confirm: false,
            sent_cancel: false,
        }
    }

    fn feed(&mut self, event: Event) -> Result<(), TestCaseError> {
        let was_prepared = self.txn.status == Status::Prepared;
        let effects = self.txn.step(event);
        for effect in effects {
            match effect {
                Effect::Persist => self.durable = self.txn.clone(),
                Effect::Call { branch, op } => {
                    if self.txn.branches[branch].retriable {
                        prop_assert_eq!(op, Op::Action, "a retriable branch is never undone");
                        prop_assert_eq!(
                            self.durable.status,
                            Status::Confirming,
                            "a retriable Action sent before the point of no return was durable"
                        );
                    }
                    match op {
                        Op::Try | Op::Action => self.maybe_applied[branch] = true,
                        other => {
                            prop_assert_eq!(
                                self.durable.status,
                                self.txn.status,
                                "{:?} sent before its decision was durable",
                                other
                            );
                            if other == Op::Confirm {
                                self.sent_confirm = true;
                            } else {
                                self.sent_cancel = true;
                            }
                        }
                    }
                    self.outstanding.push((branch, op));
                }
                Effect::RetryLater => {}
            }
        }
        if was_prepared && self.txn.status != Status::Prepared {
            // Decided: the engine abandons first-phase calls still in flight (they may still
            // arrive: `maybe_applied` already says so); a Saga's retriable Actions go out after.
            self.outstanding.retain(|(b, op)| {
                !matches!(op, Op::Try | Op::Action) || self.txn.branches[*b].retriable
            });
        }
        self.check()
    }

    fn answer(&mut self, i: usize, outcome: u8) -> Result<(), TestCaseError> {
        if self.outstanding.is_empty() {
            return Ok(());
        }
        let (branch, op) = self.outstanding.remove(i % self.outstanding.len());
        let first = matches!(op, Op::Try | Op::Action);
        let result = match outcome {
            0 => CallResult::Success,
            1 if first => CallResult::Failure {
                code: "rejected".into(),
                message: "no".into(),
            },
            _ => CallResult::Error("unavailable".into()),
        };
        if result == CallResult::Success {
            match op {
                Op::Confirm => self.confirmed[branch] = true,
                Op::Cancel | Op::Compensate => self.undone[branch] = true,
                _ => {}
            }
        }
        let event = if first {
            Event::First { branch, result }
        } else {
            Event::Second { branch, result }
        };
        self.feed(event)
    }

    fn check(&self) -> Result<(), TestCaseError> {
        prop_assert!(
            !(self.sent_confirm && self.sent_cancel),
            "both Confirm and Cancel sent"
        );
        match (self.txn.mode, self.txn.status) {
            (Mode::Tcc, Status::Succeeded) => {
                prop_assert!(self.confirmed.iter().all(|c| *c), "succeeded unconfirmed")
            }
            (Mode::Saga, Status::Succeeded) => prop_assert!(
                self.txn
                    .branches
                    .iter()
                    .all(|b| b.first == First::Succeeded),
                "saga succeeded with a step not done"
            ),
            (_, Status::Failed) => {
                for (b, applied) in self.maybe_applied.iter().enumerate() {
                    prop_assert!(
                        !applied || self.undone[b],
                        "failed, but branch {} may have taken effect and was never undone",
                        b
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn run(
    mode: Mode,
    n: usize,
    concurrent: bool,
    retriable: usize,
    steps: Vec<Step>,
) -> Result<(), TestCaseError> {
    let mut w = World::new(mode, n, concurrent, retriable);
    w.feed(Event::Resume)?;
    for step in steps {
        match step {
            Step::Answer(i, o) => w.answer(i, o)?,
            Step::Deadline => w.feed(Event::Deadline)?,
            Step::Crash { past } => {
                w.txn = w.durable.clone();
                w.outstanding.clear();
                let first = if past && w.txn.status == Status::Prepared {
                    Event::Deadline
                } else {
                    Event::Resume
                };
                w.feed(first)?;
            }
            Step::Retry => {
                if w.outstanding.is_empty() {
                    w.feed(Event::Resume)?;
                }
            }
        }
    }
    // Liveness: from here every call succeeds; the transaction must end.
    for _ in 0..200 {
        if w.txn.status.is_terminal() {
            break;
        }
        if w.outstanding.is_empty() {
            w.feed(Event::Resume)?;
        } else {
            w.answer(0, 0)?;
        }
    }
    prop_assert!(w.txn.status.is_terminal(), "stuck in {}", w.txn.status);
    prop_assert_eq!(w.durable.status, w.txn.status, "the end is durable");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_tcc_histories_keep_money_and_stock_safe_and_end(
        n in 1usize..5,
        steps in prop::collection::vec(step_strategy(), 0..60),
    ) {
        run(Mode::Tcc, n, false, 0, steps)?;
    }

    #[test]
    fn random_saga_histories_undo_everything_that_may_have_run_and_end(
        n in 1usize..5,
        concurrent in any::<bool>(),
        steps in prop::collection::vec(step_strategy(), 0..60),
    ) {
        run(Mode::Saga, n, concurrent, 0, steps)?;
    }

    #[test]
    fn random_saga_histories_with_retriable_steps_never_undo_past_the_point_of_no_return_and_end(
        n in 1usize..6,
        retriable in 1usize..4,
        concurrent in any::<bool>(),
        steps in prop::collection::vec(step_strategy(), 0..60),
    ) {
        run(Mode::Saga, n, concurrent, retriable.min(n), steps)?;
    }
}
