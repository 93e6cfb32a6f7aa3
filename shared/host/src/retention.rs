//! Retention: what a service keeps only for a while (answered idempotency keys, the details of
//! ended transactions), purged by a background task in rounds, so no table grows forever.
//!
//! The rule each purge keeps is its own (see the service's purge function); what is shared is
//! the setting, its floor, and the loop: look every `interval`, delete in batches until a round
//! finds nothing, never stop the service over a failed round.

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::time::Duration;

/// How long ended work is kept and how often to look; embed in a service's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Kept at least this long after it ended (at least [`MIN_RETENTION_HOURS`]).
    pub hours: u64,
    /// How often the purge looks.
    pub purge_interval_secs: u64,
}

/// The shortest retention accepted: an operator reads yesterday's failures, and a client may
/// retry a request for as long as its token lives (at most a day).
pub const MIN_RETENTION_HOURS: u64 = 24;

/// The longest: a century, "keep it all" for any deployment (and far from where hours in
/// milliseconds overflow, which would put the cutoff in the future and purge everything).
pub const MAX_RETENTION_HOURS: u64 = 100 * 366 * 24;

impl Retention {
    pub fn days(days: u64) -> Retention {
        Retention {
            hours: days * 24,
            purge_interval_secs: 3600,
        }
    }

    /// Refuses a retention outside [`MIN_RETENTION_HOURS`]..=[`MAX_RETENTION_HOURS`], naming
    /// the setting.
    pub fn validate(&self, setting: &str) -> Result<(), crate::ConfigError> {
        if !(MIN_RETENTION_HOURS..=MAX_RETENTION_HOURS).contains(&self.hours) {
            return Err(crate::ConfigError(format!(
                "{setting}.hours must be between {MIN_RETENTION_HOURS} and {MAX_RETENTION_HOURS} \
                 (got {})",
                self.hours
            )));
        }
        Ok(())
    }

    /// Everything that ended before this instant (Unix ms) may go; never later than a day ago,
    /// whatever the setting (an unvalidated huge one keeps everything instead of nothing).
    pub fn cutoff_ms(&self) -> i64 {
        let hours = self.hours.clamp(MIN_RETENTION_HOURS, MAX_RETENTION_HOURS);
        store::now_ms().saturating_sub((hours * 3_600_000) as i64)
    }

    /// Runs `round(cutoff_ms)` every `purge_interval_secs` (the first a minute after start),
    /// again at once while a round removes something, until `stop` resolves. `what` names it
    /// in the log.
    pub fn spawn<F, Fut, E>(
        self,
        what: &'static str,
        round: F,
        stop: impl Future<Output = ()> + Send + 'static,
    ) where
        F: Fn(i64) -> Fut + Send + 'static,
        Fut: Future<Output = Result<u64, E>> + Send,
        E: std::fmt::Display,
    {
        let every = Duration::from_secs(self.purge_interval_secs.max(1));
        let purger = tokio::spawn(async move {
            tokio::time::sleep(every.min(Duration::from_secs(60))).await;
            loop {
                let mut total = 0;
                loop {
                    match round(self.cutoff_ms()).await {
                        Ok(0) => break,
                        Ok(n) => total += n,
                        Err(e) => {
                            tracing::warn!(what, error = %e, "purge failed; will try again");
                            break;
                        }
                    }
                }
                if total > 0 {
                    tracing::info!(what, rows = total, "purged");
                }
                tokio::time::sleep(every).await;
            }
        });
        tokio::spawn(async move {
            stop.await;
            purger.abort();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_under_a_day_is_refused_naming_the_setting() {
        assert!(Retention::days(1).validate("retention").is_ok());
        let short = Retention {
            hours: 23,
            purge_interval_secs: 1,
        };
        let e = short
            .validate("idempotency_retention")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("idempotency_retention.hours must be between 24"),
            "{e}"
        );
    }

    /// A retention meant as "forever" (u64::MAX hours) once overflowed into a cutoff in the
    /// future: every ended key purged, so a retry became a second order.
    #[test]
    fn a_huge_retention_is_refused_and_never_puts_the_cutoff_in_the_future() {
        let now = store::now_ms();
        for hours in [
            u64::MAX,
            i64::MAX as u64,
            2_600_000_000_000,
            MAX_RETENTION_HOURS + 1,
        ] {
            let forever = Retention {
                hours,
                purge_interval_secs: 3600,
            };
            assert!(forever.validate("retention").is_err(), "{hours}");
            assert!(forever.cutoff_ms() < now - 24 * 3_600_000, "{hours}");
        }
        let century = Retention {
            hours: MAX_RETENTION_HOURS,
            purge_interval_secs: 3600,
        };
        assert!(century.validate("retention").is_ok());
        assert!(century.cutoff_ms() < now);
        let day = Retention::days(1);
        assert!((now - 24 * 3_600_000 - day.cutoff_ms()).abs() < 60_000);
    }
}
