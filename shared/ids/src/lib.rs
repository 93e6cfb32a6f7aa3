//! Snowflake ids for global transactions.
//!
//! Every global transaction needs an id that is unique across coordinator instances, sortable by
//! creation time, and cheap to make without asking a database. A Snowflake id packs, from the most
//! significant bit down:
//!
//! | bits | field |
//! |---|---|
//! | 1 | always 0, so the id fits an `i64` (`BIGINT`) |
//! | 41 | milliseconds since [`EPOCH_MS`] (about 69 years) |
//! | 10 | node id, unique per coordinator instance (0..=1023) |
//! | 12 | sequence within the millisecond (0..=4095) |
//!
//! The generator never hands out the same id twice in one process, also when the wall clock steps
//! back: a small step back is absorbed by counting on from the last millisecond used (ids stay
//! strictly increasing), a step back larger than the configured tolerance is refused with
//! [`IdError::ClockMovedBackwards`] rather than risk a duplicate. When the 4,096 ids of one
//! millisecond are used up the generator waits for the next millisecond.
//!
//! Across restarts the last millisecond used is not in memory any more: a process restarted with
//! a clock behind its predecessor's would make the same ids again. So every service that keeps
//! its ids reads its high-water mark back from its own storage at start-up (the largest id it
//! ever stored: every id is stored before anyone sees it) and hands it to
//! [`Snowflake::resume_after`]; [`Snowflake::behind_ms`] then says how long to wait (or, past a
//! limit, to refuse to start) until the clock has passed it.
//!
//! [`Gid`] serialises as a decimal *string* so that JavaScript clients (53-bit numbers) never
//! round it.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// 2026-01-01T00:00:00Z in Unix milliseconds: the zero of the timestamp field.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
/// Bits of the node id field.
pub const NODE_BITS: u32 = 10;
/// Bits of the sequence field.
pub const SEQUENCE_BITS: u32 = 12;
/// Bits of the timestamp field.
pub const TIMESTAMP_BITS: u32 = 41;
/// Largest node id.
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;
/// Largest sequence number within one millisecond.
pub const MAX_SEQUENCE: u64 = (1 << SEQUENCE_BITS) - 1;
const MAX_TIMESTAMP: u64 = (1 << TIMESTAMP_BITS) - 1;
/// Default tolerance for a clock that steps back, in milliseconds.
pub const DEFAULT_MAX_BACKWARD_MS: u64 = 1_000;

/// Errors of id generation and parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("node id {0} is out of range (0..={MAX_NODE})")]
    NodeOutOfRange(u32),
    #[error("the clock reads {now_ms} ms, before the Snowflake epoch {EPOCH_MS} ms")]
    ClockBeforeEpoch { now_ms: u64 },
    #[error("the clock moved backwards by {behind_ms} ms (tolerance {tolerance_ms} ms); refusing to risk a duplicate id")]
    ClockMovedBackwards { behind_ms: u64, tolerance_ms: u64 },
    #[error("the 41-bit timestamp field is exhausted")]
    TimestampOverflow,
    #[error("not a valid global transaction id: {0:?}")]
    Parse(String),
    #[error("the clock is {behind_ms} ms behind the largest id already stored (limit {limit_ms} ms); refusing to start rather than risk a duplicate id")]
    BehindHighWater { behind_ms: u64, limit_ms: u64 },
}

/// A source of wall-clock time in Unix milliseconds. Injected so tests can step it back.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The system wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A global transaction id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Gid(u64);

/// The fields of a [`Gid`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GidParts {
    /// Unix milliseconds at which the id was made.
    pub unix_ms: u64,
    pub node: u16,
    pub sequence: u16,
}

impl Gid {
    /// Wraps a raw value; fails when the sign bit is set (never produced by the generator, and
    /// not storable in a `BIGINT`).
    pub fn from_u64(raw: u64) -> Result<Self, IdError> {
        if raw > i64::MAX as u64 {
            return Err(IdError::Parse(raw.to_string()));
        }
        Ok(Gid(raw))
    }

    /// From a database `BIGINT`.
    pub fn from_i64(raw: i64) -> Result<Self, IdError> {
        u64::try_from(raw)
            .map(Gid)
            .map_err(|_| IdError::Parse(raw.to_string()))
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// For a database `BIGINT`; lossless because the top bit is always 0.
    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }

    /// The smallest id the generator can make at or after `unix_ms`: a lower bound on the ids
    /// of everything created since, for range scans by time over an id index.
    pub fn first_at(unix_ms: u64) -> Gid {
        Gid(unix_ms
            .saturating_sub(EPOCH_MS)
            .min((1 << TIMESTAMP_BITS) - 1)
            << (NODE_BITS + SEQUENCE_BITS))
    }

    /// Splits the id into creation time, node and sequence.
    pub fn parts(self) -> GidParts {
        GidParts {
            unix_ms: (self.0 >> (NODE_BITS + SEQUENCE_BITS)) + EPOCH_MS,
            node: ((self.0 >> SEQUENCE_BITS) & u64::from(MAX_NODE)) as u16,
            sequence: (self.0 & MAX_SEQUENCE) as u16,
        }
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Gid {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.trim();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError::Parse(s.to_owned()));
        }
        let raw: u64 = digits.parse().map_err(|_| IdError::Parse(s.to_owned()))?;
        Gid::from_u64(raw).map_err(|_| IdError::Parse(s.to_owned()))
    }
}

impl serde::Serialize for Gid {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Gid {
    /// Accepts the canonical decimal string, and also a JSON integer from lenient clients.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Gid;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a global transaction id as a decimal string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Gid, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Gid, E> {
                Gid::from_u64(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Gid, E> {
                Gid::from_i64(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A thread-safe Snowflake generator for one node. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Snowflake {
    node: u64,
    max_backward_ms: u64,
    clock: Arc<dyn Clock>,
    /// `(milliseconds since EPOCH_MS) << 12 | sequence` of the last id handed out.
    last: Arc<AtomicU64>,
}

impl fmt::Debug for Snowflake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snowflake")
            .field("node", &self.node)
            .field("max_backward_ms", &self.max_backward_ms)
            .finish_non_exhaustive()
    }
}

impl Snowflake {
    /// A generator on the system clock.
    pub fn new(node: u16) -> Result<Self, IdError> {
        Self::with_clock(node, Arc::new(SystemClock))
    }

    /// A generator on the given clock.
    pub fn with_clock(node: u16, clock: Arc<dyn Clock>) -> Result<Self, IdError> {
        if node > MAX_NODE {
            return Err(IdError::NodeOutOfRange(u32::from(node)));
        }
        Ok(Snowflake {
            node: u64::from(node),
            max_backward_ms: DEFAULT_MAX_BACKWARD_MS,
            clock,
            last: Arc::new(AtomicU64::new(0)),
        })
    }

    /// How far the clock may step back before [`Snowflake::next_id`] fails instead of counting on
    /// from the last millisecond it used.
    pub fn with_max_backward_ms(mut self, ms: u64) -> Self {
        self.max_backward_ms = ms;
        self
    }

    pub fn node(&self) -> u16 {
        self.node as u16
    }

    /// Never hands out an id at or below the time and sequence of `high_water` (an id read back
    /// from storage; from any node: that is only more careful).
    pub fn resume_after(self, high_water: Gid) -> Self {
        let raw = high_water.as_u64();
        let packed = ((raw >> (NODE_BITS + SEQUENCE_BITS)) << SEQUENCE_BITS) | (raw & MAX_SEQUENCE);
        self.last.fetch_max(packed, Ordering::AcqRel);
        self
    }

    /// How many milliseconds the clock is behind the last id used or resumed after (0 when it is
    /// past it). A start-up waits this long before making ids, or refuses to start when it is
    /// over `limit_ms` ([`IdError::BehindHighWater`]).
    pub fn behind_ms(&self, limit_ms: u64) -> Result<u64, IdError> {
        let now = self.clock.now_ms().saturating_sub(EPOCH_MS);
        let last_ms = self.last.load(Ordering::Acquire) >> SEQUENCE_BITS;
        let behind_ms = last_ms.saturating_sub(now);
        if behind_ms > limit_ms {
            return Err(IdError::BehindHighWater {
                behind_ms,
                limit_ms,
            });
        }
        Ok(behind_ms)
    }

    /// The next id: unique for this generator and strictly greater than every id it made before.
    pub fn next_id(&self) -> Result<Gid, IdError> {
        loop {
            let now_ms = self.clock.now_ms();
            let now = now_ms
                .checked_sub(EPOCH_MS)
                .ok_or(IdError::ClockBeforeEpoch { now_ms })?;
            if now > MAX_TIMESTAMP {
                return Err(IdError::TimestampOverflow);
            }
            let last = self.last.load(Ordering::Acquire);
            let last_ms = last >> SEQUENCE_BITS;
            let next = if now > last_ms {
                now << SEQUENCE_BITS
            } else {
                let behind_ms = last_ms - now;
                if behind_ms > self.max_backward_ms {
                    return Err(IdError::ClockMovedBackwards {
                        behind_ms,
                        tolerance_ms: self.max_backward_ms,
                    });
                }
                if last & MAX_SEQUENCE == MAX_SEQUENCE {
                    // This millisecond is used up: wait for the clock to pass it.
                    std::thread::yield_now();
                    continue;
                }
                last + 1
            };
            if self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let ms = next >> SEQUENCE_BITS;
                let seq = next & MAX_SEQUENCE;
                return Ok(Gid((ms << (NODE_BITS + SEQUENCE_BITS))
                    | (self.node << SEQUENCE_BITS)
                    | seq));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicU64;

    /// A clock the test sets by hand; it can also advance by one millisecond every `tick_every`
    /// reads so that waiting loops terminate.
    struct ManualClock {
        ms: AtomicU64,
        reads: AtomicU64,
        tick_every: u64,
    }

    impl ManualClock {
        fn at(ms: u64) -> Arc<Self> {
            Self::ticking(ms, 0)
        }
        fn ticking(ms: u64, tick_every: u64) -> Arc<Self> {
            Arc::new(ManualClock {
                ms: AtomicU64::new(ms),
                reads: AtomicU64::new(0),
                tick_every,
            })
        }
        fn set(&self, ms: u64) {
            self.ms.store(ms, Ordering::SeqCst);
        }
    }

    #[test]
    fn first_at_bounds_every_id_made_from_that_millisecond_on() {
        let at = EPOCH_MS + 86_400_000;
        let g = Snowflake::with_clock(MAX_NODE, ManualClock::at(at)).unwrap();
        let made = g.next_id().unwrap();
        assert!(Gid::first_at(at) <= made);
        assert!(Gid::first_at(at + 1) > made);
        assert_eq!(Gid::first_at(at).parts().unix_ms, at);
        assert_eq!(Gid::first_at(0).as_u64(), 0, "before the epoch: every id");
    }

    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            let n = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
            if self.tick_every > 0 && n.is_multiple_of(self.tick_every) {
                self.ms.fetch_add(1, Ordering::SeqCst);
            }
            self.ms.load(Ordering::SeqCst)
        }
    }

    const T0: u64 = EPOCH_MS + 1_000_000;

    #[test]
    fn ids_decode_to_the_time_node_and_sequence_they_were_made_with() {
        let clock = ManualClock::at(T0);
        let gen = Snowflake::with_clock(777, clock).unwrap();
        let a = gen.next_id().unwrap();
        let b = gen.next_id().unwrap();
        assert_eq!(
            a.parts(),
            GidParts {
                unix_ms: T0,
                node: 777,
                sequence: 0
            }
        );
        assert_eq!(b.parts().sequence, 1);
        assert!(a.as_i64() > 0);
    }

    #[test]
    fn a_node_id_above_1023_is_refused() {
        assert_eq!(
            Snowflake::new(1024).unwrap_err(),
            IdError::NodeOutOfRange(1024)
        );
        assert!(Snowflake::new(1023).is_ok());
    }

    #[test]
    fn ids_from_many_threads_are_unique_and_increase_within_each_thread() {
        let gen = Snowflake::new(1).unwrap();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let gen = gen.clone();
                std::thread::spawn(move || {
                    let ids: Vec<Gid> = (0..50_000).map(|_| gen.next_id().unwrap()).collect();
                    assert!(ids.windows(2).all(|w| w[0] < w[1]));
                    ids
                })
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(all.insert(id), "duplicate id {id}");
            }
        }
        assert_eq!(all.len(), 400_000);
    }

    #[test]
    fn a_small_step_back_of_the_clock_keeps_ids_unique_and_increasing() {
        let clock = ManualClock::at(T0);
        let gen = Snowflake::with_clock(3, clock.clone()).unwrap();
        let before: Vec<Gid> = (0..10).map(|_| gen.next_id().unwrap()).collect();
        clock.set(T0 - 500); // NTP steps the clock back half a second
        let after: Vec<Gid> = (0..10).map(|_| gen.next_id().unwrap()).collect();
        let all: Vec<Gid> = before.iter().chain(after.iter()).copied().collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        // Still counting on from the millisecond it used last, not from the earlier wall time.
        assert_eq!(after[0].parts().unix_ms, T0);
        assert_eq!(after[0].parts().sequence, 10);
    }

    #[test]
    fn a_large_step_back_of_the_clock_is_refused_rather_than_risking_a_duplicate() {
        let clock = ManualClock::at(T0);
        let gen = Snowflake::with_clock(3, clock.clone())
            .unwrap()
            .with_max_backward_ms(100);
        let last = gen.next_id().unwrap();
        clock.set(T0 - 5_000);
        assert_eq!(
            gen.next_id().unwrap_err(),
            IdError::ClockMovedBackwards {
                behind_ms: 5_000,
                tolerance_ms: 100
            }
        );
        clock.set(T0 + 1);
        assert!(gen.next_id().unwrap() > last);
    }

    #[test]
    fn an_exhausted_millisecond_waits_for_the_next_one_instead_of_wrapping() {
        // The clock advances one millisecond every 10,000 reads, so 4,096 ids fill T0 and the
        // 4,097th must come from a later millisecond.
        let clock = ManualClock::ticking(T0, 10_000);
        let gen = Snowflake::with_clock(5, clock).unwrap();
        let ids: Vec<Gid> = (0..=MAX_SEQUENCE + 1)
            .map(|_| gen.next_id().unwrap())
            .collect();
        let last = ids.last().unwrap().parts();
        assert_eq!(ids[MAX_SEQUENCE as usize].parts().sequence, 4095);
        assert!(last.unix_ms > T0);
        assert_eq!(last.sequence, 0);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_generator_restarted_with_its_clock_behind_never_repeats_an_id_of_its_predecessor() {
        let t0 = EPOCH_MS + 50_000;
        let before = Snowflake::with_clock(3, ManualClock::at(t0)).unwrap();
        let first: Vec<Gid> = (0..3).map(|_| before.next_id().unwrap()).collect();
        // A restart whose clock stepped back to the predecessor's first reading makes exactly
        // the same three ids when nothing tells it where its predecessor stopped.
        let naive = Snowflake::with_clock(3, ManualClock::at(t0)).unwrap();
        let repeated: Vec<Gid> = (0..3).map(|_| naive.next_id().unwrap()).collect();
        assert_eq!(repeated, first, "the failure this guards against");
        // Resumed after the largest id stored, with its clock 400 ms behind it: it says how
        // long to wait, refuses past a limit, and counts on above the mark.
        let after = Snowflake::with_clock(3, ManualClock::at(t0 - 400))
            .unwrap()
            .resume_after(*first.iter().max().unwrap());
        assert_eq!(after.behind_ms(1_000), Ok(400));
        assert_eq!(
            after.behind_ms(100),
            Err(IdError::BehindHighWater {
                behind_ms: 400,
                limit_ms: 100
            })
        );
        for _ in 0..10 {
            let id = after.next_id().unwrap();
            assert!(
                id > *first.iter().max().unwrap(),
                "{id} repeats or precedes"
            );
        }
    }

    #[test]
    fn a_clock_before_the_epoch_is_an_error() {
        let gen = Snowflake::with_clock(0, ManualClock::at(EPOCH_MS - 1)).unwrap();
        assert!(matches!(
            gen.next_id(),
            Err(IdError::ClockBeforeEpoch { .. })
        ));
    }

    #[test]
    fn a_gid_serialises_as_a_decimal_string_and_parses_back() {
        let gen = Snowflake::new(9).unwrap();
        let id = gen.next_id().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", id.as_u64()));
        assert_eq!(serde_json::from_str::<Gid>(&json).unwrap(), id);
        assert_eq!(id.to_string().parse::<Gid>().unwrap(), id);
        // Lenient clients may send a number.
        assert_eq!(
            serde_json::from_str::<Gid>(&id.as_u64().to_string()).unwrap(),
            id
        );
    }

    #[test]
    fn malformed_gids_are_rejected_with_a_parse_error() {
        for bad in [
            "",
            "abc",
            "-1",
            "1.5",
            "+7",
            "99999999999999999999",
            "9223372036854775808",
        ] {
            assert!(
                matches!(bad.parse::<Gid>(), Err(IdError::Parse(_))),
                "{bad:?} parsed"
            );
        }
        assert!(Gid::from_i64(-5).is_err());
        assert!(serde_json::from_str::<Gid>("\"12x\"").is_err());
    }
}
