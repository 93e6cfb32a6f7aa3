//! What every measurement shares: the closed-loop driver and latency percentiles.

use futures::future::join_all;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Calls `op(i)` for every `i` in `range` (stopping early at `deadline`, if any) from
/// `concurrency` workers, each sending its next call when the previous one is answered (closed
/// loop); returns the latencies in microseconds.
pub async fn closed_loop<F, Fut>(
    concurrency: u64,
    range: std::ops::Range<u64>,
    deadline: Option<Instant>,
    op: F,
) -> Histogram<u64>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let next = AtomicU64::new(range.start);
    let workers = (0..concurrency.max(1)).map(|_| async {
        let mut hist =
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= range.end || deadline.is_some_and(|d| Instant::now() >= d) {
                return hist;
            }
            let t = Instant::now();
            op(i).await;
            hist.saturating_record(t.elapsed().as_micros() as u64);
        }
    });
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    for h in join_all(workers).await {
        all.add(&h).expect("same bounds");
    }
    all
}

/// Latency percentiles of a run, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// p50, p90, p99 and max of a histogram in microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            self.p50, self.p90, self.p99, self.max
        )
    }
}
