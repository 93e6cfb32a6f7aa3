//! Per-user rate limiting of `POST /api/v1/orders`: a token bucket per user (`per_second`
//! tokens a second, at most `burst` saved up), checked once the request's key has been looked
//! up and before anything costly. One user sending faster gets 429 with `Retry-After` and costs
//! the platform one read, not a transaction; every other user is unaffected.
//!
//! What counts: a new key, and a retry that would wait for or take over a request in progress
//! (a retry storm on one key is still a storm). A retry whose answer is stored is answered from
//! it, never refused: a client that retries after a 429 or a lost response must get its answer.
//! The buckets of users who went quiet are dropped now and then, so memory follows the active
//! users. The buckets are per instance: N order-svc instances allow N times the rate.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use host::{ConfigError, Problem};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

/// `ORDER_API__RATE_LIMIT__PER_SECOND` and `…__BURST`; `per_second = 0` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitConfig {
    /// Orders a second one user may place, sustained.
    pub per_second: u32,
    /// Orders one user may place at once after being quiet.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_second: 10,
            burst: 20,
        }
    }
}

/// How many checks between two sweeps of quiet users' buckets.
const SWEEP_EVERY: u64 = 4_096;

/// The buckets of every active user.
#[derive(Debug)]
pub struct OrderLimiter {
    buckets: Option<DefaultKeyedRateLimiter<String>>,
    checks: AtomicU64,
}

impl OrderLimiter {
    pub fn new(config: RateLimitConfig) -> Result<OrderLimiter, ConfigError> {
        let buckets = match NonZeroU32::new(config.per_second) {
            None => None,
            Some(per_second) => {
                let burst = NonZeroU32::new(config.burst)
                    .ok_or_else(|| ConfigError("api.rate_limit.burst must be at least 1".into()))?;
                Some(RateLimiter::keyed(
                    Quota::per_second(per_second).allow_burst(burst),
                ))
            }
        };
        Ok(OrderLimiter {
            buckets,
            checks: AtomicU64::new(0),
        })
    }

    /// Takes a token from `user`'s bucket, or answers 429 with when to come back.
    pub fn check(&self, user: &str) -> Result<(), Problem> {
        let Some(buckets) = &self.buckets else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            buckets.retain_recent();
            buckets.shrink_to_fit();
        }
        buckets.check_key(&user.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Problem::too_many_requests(
                "too many orders from this user; retry after the time in Retry-After",
                wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_past_the_burst_is_told_when_to_come_back_and_others_are_not_slowed() {
        let limiter = OrderLimiter::new(RateLimitConfig {
            per_second: 1,
            burst: 3,
        })
        .unwrap();
        for _ in 0..3 {
            limiter.check("alice").unwrap();
        }
        let refused = limiter.check("alice").unwrap_err();
        assert_eq!(refused.body().status, 429);
        assert_eq!(refused.body().retry_after, Some(1));
        limiter.check("bob").unwrap();
    }

    #[test]
    fn zero_per_second_turns_it_off_and_a_zero_burst_is_refused() {
        let off = OrderLimiter::new(RateLimitConfig {
            per_second: 0,
            burst: 0,
        })
        .unwrap();
        for _ in 0..1_000 {
            off.check("alice").unwrap();
        }
        assert!(OrderLimiter::new(RateLimitConfig {
            per_second: 5,
            burst: 0
        })
        .is_err());
    }
}
