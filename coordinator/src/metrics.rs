//! The coordinator's metrics: transactions by mode and outcome, branch call latency, retries,
//! recovery lag.

use crate::machine::{Mode, Op, Status};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

type Labels2 = [(&'static str, &'static str); 2];
type Labels1 = [(&'static str, &'static str); 1];
/// A participant's configured name (or `other`, bounded by the configuration) and the phase.
type BatchLabels = [(&'static str, String); 2];

#[derive(Debug, Clone)]
pub struct CoordinatorMetrics {
    started: Family<Labels1, Counter>,
    finished: Family<Labels2, Counter>,
    calls: Family<Labels2, Histogram, fn() -> Histogram>,
    retries: Counter,
    lag: Gauge,
    batches: Family<BatchLabels, Histogram, fn() -> Histogram>,
}

fn mode(m: Mode) -> &'static str {
    crate::log::mode_str(m)
}

impl CoordinatorMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = CoordinatorMetrics {
            started: Family::default(),
            finished: Family::default(),
            calls: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
            }),
            retries: Counter::default(),
            lag: Gauge::default(),
            batches: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1.0, 2.0, 9))
            }),
        };
        registry.register(
            "coordinator_transactions_started",
            "Global transactions started, by mode",
            m.started.clone(),
        );
        registry.register(
            "coordinator_transactions_finished",
            "Global transactions that reached a terminal status, by mode and outcome",
            m.finished.clone(),
        );
        registry.register(
            "coordinator_branch_call_seconds",
            "Branch call latency by op and outcome",
            m.calls.clone(),
        );
        registry.register(
            "coordinator_retries",
            "Driving rounds that left work for a later retry",
            m.retries.clone(),
        );
        registry.register(
            "coordinator_recovery_lag_milliseconds",
            "How long the oldest due, unclaimed transaction has waited",
            m.lag.clone(),
        );
        registry.register(
            "coordinator_batch_branches",
            "Branches per send to a participant, by phase: first (Tries, Actions) or second (1: a call on its own)",
            m.batches.clone(),
        );
        m
    }

    /// A send of `branches` calls of `phase` (`first`, `second`) to `participant`.
    pub fn batch(&self, participant: &str, phase: &'static str, branches: usize) {
        self.batches
            .get_or_create(&[
                ("participant", participant.to_owned()),
                ("phase", phase.to_owned()),
            ])
            .observe(branches as f64);
    }

    pub fn started(&self, m: Mode) {
        self.started.get_or_create(&[("mode", mode(m))]).inc();
    }

    pub fn finished(&self, m: Mode, status: Status) {
        self.finished
            .get_or_create(&[("mode", mode(m)), ("outcome", status.as_str())])
            .inc();
    }

    pub fn branch_call(&self, op: Op, outcome: &'static str, elapsed: Duration) {
        self.calls
            .get_or_create(&[("op", op.as_str()), ("outcome", outcome)])
            .observe(elapsed.as_secs_f64());
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    pub fn recovery_lag(&self, ms: i64) {
        self.lag.set(ms);
    }
}
