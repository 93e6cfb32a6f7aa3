//! Retries with exponential backoff and full jitter.
//!
//! Confirm and Cancel must eventually succeed, so the coordinator retries them until they do;
//! clients retry transient gRPC errors. Retrying in lockstep makes a struggling service worse, so
//! every delay is drawn uniformly from `[0, cap(attempt)]` ("full jitter", which spreads retries
//! best), where `cap(attempt) = min(max_delay, initial · multiplier^attempt)`.
//!
//! The policy is plain data ([`Backoff`]) so the coordinator can compute a delay, persist it as
//! `next_attempt_at`, and sleep in a different process after a crash; [`retry`] is the in-process
//! loop for callers that just want the call to go through. What is worth retrying is the caller's
//! decision, made by a classifier returning [`Decision`].

use rand::Rng;
use std::fmt;
use std::future::Future;
use std::time::Duration;

/// A backoff policy: how long to wait before each retry, and when to give up.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Cap of the first retry's delay.
    pub initial: Duration,
    /// Growth of the cap per attempt (2.0 doubles it).
    pub multiplier: f64,
    /// Largest delay ever waited.
    pub max_delay: Duration,
    /// Give up after this many attempts in all (the first call included); `None`: never.
    pub max_attempts: Option<u32>,
    /// Give up when the next wait would end later than this after the first call; `None`: never.
    pub max_elapsed: Option<Duration>,
}

impl Default for Backoff {
    /// 50 ms doubling up to 5 s, at most 10 attempts, at most 30 s in all.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            multiplier: 2.0,
            max_delay: Duration::from_secs(5),
            max_attempts: Some(10),
            max_elapsed: Some(Duration::from_secs(30)),
        }
    }
}

impl Backoff {
    /// A policy that never gives up (for Confirm and Cancel, which must eventually go through).
    pub fn forever(initial: Duration, max_delay: Duration) -> Self {
        Backoff {
            initial,
            multiplier: 2.0,
            max_delay,
            max_attempts: None,
            max_elapsed: None,
        }
    }

    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    pub fn with_max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = Some(d);
        self
    }

    /// The largest delay after the `failures`-th failure (1-based):
    /// `min(max_delay, initial · multiplier^(failures-1))`.
    pub fn cap(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        if !secs.is_finite() || secs >= self.max_delay.as_secs_f64() {
            self.max_delay
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// A full-jitter delay after the `failures`-th failure, drawn from `rng`.
    pub fn delay_with<R: Rng + ?Sized>(&self, failures: u32, rng: &mut R) -> Duration {
        let cap = self.cap(failures);
        if cap.is_zero() {
            return cap;
        }
        Duration::from_nanos(rng.random_range(0..=cap.as_nanos().min(u64::MAX as u128) as u64))
    }

    /// A full-jitter delay after the `failures`-th failure.
    pub fn delay(&self, failures: u32) -> Duration {
        self.delay_with(failures, &mut rand::rng())
    }

    /// Whether another attempt is allowed after `attempts` attempts, `elapsed` since the first,
    /// when the next wait would be `next_delay`.
    pub fn allows(
        &self,
        attempts: u32,
        elapsed: Duration,
        next_delay: Duration,
    ) -> Result<(), GaveUp> {
        if self.max_attempts.is_some_and(|max| attempts >= max) {
            return Err(GaveUp::Attempts);
        }
        if self
            .max_elapsed
            .is_some_and(|max| elapsed.saturating_add(next_delay) > max)
        {
            return Err(GaveUp::Elapsed);
        }
        Ok(())
    }
}

/// What to do with a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Transient: retry after the policy's delay.
    Retry,
    /// Transient, and the other side said when to come back: retry after this long (capped by
    /// the policy's `max_delay`).
    RetryAfter(Duration),
    /// Permanent: retrying would give the same answer.
    Stop,
}

/// Why [`retry`] gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// The classifier said the error is permanent.
    NotRetryable,
    /// `max_attempts` reached.
    Attempts,
    /// `max_elapsed` would be exceeded.
    Elapsed,
}

/// The last error of a retry loop that gave up.
#[derive(Debug)]
pub struct RetryError<E> {
    pub error: E,
    pub attempts: u32,
    pub gave_up: GaveUp,
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.gave_up {
            GaveUp::NotRetryable => "not retryable",
            GaveUp::Attempts => "attempts exhausted",
            GaveUp::Elapsed => "time budget exhausted",
        };
        write!(
            f,
            "{} (after {} attempts, {why})",
            self.error, self.attempts
        )
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RetryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Calls `op` until it succeeds, the classifier calls an error permanent, or the policy gives up.
/// `op` receives the 1-based attempt number.
pub async fn retry<T, E, F, Fut, C>(
    policy: &Backoff,
    classify: C,
    mut op: F,
) -> Result<T, RetryError<E>>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    C: Fn(&E) -> Decision,
{
    let started = tokio::time::Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let error = match op(attempts).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let delay = match classify(&error) {
            Decision::Stop => {
                return Err(RetryError {
                    error,
                    attempts,
                    gave_up: GaveUp::NotRetryable,
                })
            }
            Decision::Retry => policy.delay(attempts),
            Decision::RetryAfter(d) => d.min(policy.max_delay),
        };
        if let Err(gave_up) = policy.allows(attempts, started.elapsed(), delay) {
            return Err(RetryError {
                error,
                attempts,
                gave_up,
            });
        }
        tracing::debug!(
            attempt = attempts,
            delay_ms = delay.as_millis() as u64,
            "retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, PartialEq)]
    enum TestError {
        Transient,
        Permanent,
    }

    fn classify(e: &TestError) -> Decision {
        match e {
            TestError::Transient => Decision::Retry,
            TestError::Permanent => Decision::Stop,
        }
    }

    fn policy() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(1),
            max_attempts: Some(6),
            max_elapsed: None,
        }
    }

    #[test]
    fn the_cap_doubles_per_failure_until_max_delay() {
        let p = policy();
        let caps: Vec<u64> = (1..=6).map(|n| p.cap(n).as_millis() as u64).collect();
        assert_eq!(caps, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.cap(10_000), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_delays_stay_within_the_cap_and_spread_over_it() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..2_000).map(|_| p.delay_with(3, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        let low = delays
            .iter()
            .filter(|d| **d < Duration::from_millis(100))
            .count();
        let high = delays
            .iter()
            .filter(|d| **d > Duration::from_millis(300))
            .count();
        // Uniform over [0, 400 ms]: about a quarter in each end.
        assert!((350..650).contains(&low), "low quarter had {low}");
        assert!((350..650).contains(&high), "high quarter had {high}");
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let p = policy();
        let a: Vec<_> = (1..5)
            .map(|n| p.delay_with(n, &mut StdRng::seed_from_u64(1)))
            .collect();
        let b: Vec<_> = (1..5)
            .map(|n| p.delay_with(n, &mut StdRng::seed_from_u64(1)))
            .collect();
        assert_eq!(a, b);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_the_call_succeeds() {
        let calls = AtomicU32::new(0);
        let out = retry(&policy(), classify, |attempt| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if attempt < 4 {
                    Err(TestError::Transient)
                } else {
                    Ok(attempt)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(out, 4);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_stops_at_once() {
        let err = retry(&policy(), classify, |_| async {
            Err::<(), _>(TestError::Permanent)
        })
        .await
        .unwrap_err();
        assert_eq!(err.attempts, 1);
        assert_eq!(err.gave_up, GaveUp::NotRetryable);
        assert_eq!(err.error, TestError::Permanent);
    }

    #[tokio::test(start_paused = true)]
    async fn the_attempt_cap_is_respected_and_the_waits_fit_the_caps() {
        let started = tokio::time::Instant::now();
        let err = retry(&policy(), classify, |_| async {
            Err::<(), _>(TestError::Transient)
        })
        .await
        .unwrap_err();
        assert_eq!(err.attempts, 6);
        assert_eq!(err.gave_up, GaveUp::Attempts);
        // Five waits, each at most its cap: 100+200+400+800+1000 ms.
        assert!(started.elapsed() <= Duration::from_millis(2_500));
    }

    #[tokio::test(start_paused = true)]
    async fn the_elapsed_cap_stops_before_a_wait_that_would_overrun_it() {
        let p = Backoff {
            max_attempts: None,
            max_elapsed: Some(Duration::from_secs(10)),
            ..policy()
        };
        let started = tokio::time::Instant::now();
        let err = retry(
            &p,
            |_: &TestError| Decision::RetryAfter(Duration::from_secs(3)),
            |_| async { Err::<(), _>(TestError::Transient) },
        )
        .await
        .unwrap_err();
        // RetryAfter is capped by max_delay (1 s): waits of 1 s until 10 s would be passed.
        assert_eq!(err.gave_up, GaveUp::Elapsed);
        assert_eq!(err.attempts, 11);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[test]
    fn a_policy_that_never_gives_up_allows_any_attempt_count() {
        let p = Backoff::forever(Duration::from_millis(10), Duration::from_secs(60));
        assert!(p
            .allows(1_000_000, Duration::from_secs(86_400), p.cap(50))
            .is_ok());
        assert_eq!(p.cap(50), Duration::from_secs(60));
    }
}
