//! What every measurement shares: the closed-loop driver and latency percentiles.

use futures::future::join_all;
use hdrhistogram::Histogram;
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

/// p50, p90, p99 and max of a histogram in microseconds, as milliseconds.
pub fn latency_ms(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |us: u64| us as f64 / 1000.0;
    serde_json::json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "max": ms(h.max()),
    })
}
