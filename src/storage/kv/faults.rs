//! Seeded fault injection for the local KV ("buggify", after FoundationDB's simulation testing):
//! one [`Faults`] handle installed on a memory or embedded database makes its commits fail the way
//! FoundationDB's do under load, decided by a seeded generator so a run repeats bit for bit.
//!
//! Compiled only for the crate's tests (`cfg(test)`), not behind a cargo feature: the only user is
//! the ingest simulation (`actors::simulation`), which drives actor internals that are themselves
//! test-only, and a production binary must not be able to carry a fault hook at all.
//!
//! What a commit can be made to do (each with its own rate, in parts per thousand):
//! - fail with `not_committed` (a conflict) or `transaction_too_old` before anything is applied;
//! - fail with `commit_unknown_result` before it is applied, or AFTER it really was applied (the
//!   case idempotent transaction bodies exist for);
//! - take longer: a delay in (paused) tokio time before the commit runs.
//!
//! While a handle is installed, commits also run inline instead of on a blocking thread and the
//! retry loop draws its jitter from the handle, so nothing a simulation observes depends on thread
//! scheduling or on an unseeded generator.

use std::time::Duration;

use parking_lot::Mutex;

use super::error::KvError;

/// A small seeded generator (splitmix64): deterministic, no dependency, good enough to pick faults.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

/// How often each fault strikes a commit, in parts per thousand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultRates {
    /// `not_committed` before applying.
    pub conflict: u32,
    /// `transaction_too_old` before applying.
    pub too_old: u32,
    /// `commit_unknown_result` before applying (nothing was written).
    pub unknown_before: u32,
    /// `commit_unknown_result` after the commit was applied and made durable.
    pub unknown_after: u32,
    /// A delay before the commit.
    pub slow: u32,
    /// The longest such delay.
    pub slow_max: Duration,
}

/// How many faults of each kind were injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FaultCounts {
    /// Commits seen while a rate was set.
    pub commits: u64,
    /// `not_committed` injected.
    pub conflict: u64,
    /// `transaction_too_old` injected.
    pub too_old: u64,
    /// `commit_unknown_result` injected before applying.
    pub unknown_before: u64,
    /// `commit_unknown_result` injected after applying.
    pub unknown_after: u64,
    /// Delayed commits.
    pub slow: u64,
}

#[derive(Debug)]
struct State {
    rng: SimRng,
    rates: FaultRates,
    counts: FaultCounts,
}

/// The fault handle of one database: rates that a simulation changes as it goes, one generator.
#[derive(Debug)]
pub struct Faults {
    state: Mutex<State>,
}

impl Faults {
    /// A handle seeded with `seed`, injecting nothing until [`set_rates`](Self::set_rates).
    pub fn new(seed: u64) -> Self {
        Self {
            state: Mutex::new(State {
                rng: SimRng::new(seed),
                rates: FaultRates::default(),
                counts: FaultCounts::default(),
            }),
        }
    }

    /// Replaces the rates (all zero stops injecting).
    pub fn set_rates(&self, rates: FaultRates) {
        self.state.lock().rates = rates;
    }

    /// What was injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.state.lock().counts
    }

    /// The delay to put before a commit, if this one is slow.
    pub(super) fn commit_delay(&self) -> Option<Duration> {
        let mut st = self.state.lock();
        let (slow, max) = (st.rates.slow, st.rates.slow_max);
        if slow == 0 || !st.rng.chance(slow) {
            return None;
        }
        st.counts.slow += 1;
        let micros = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
        Some(Duration::from_micros(1 + st.rng.below(micros)))
    }

    /// The error a commit fails with before anything is applied, if it is struck.
    pub(super) fn before_commit(&self) -> Option<KvError> {
        let mut st = self.state.lock();
        let rates = st.rates;
        if rates == FaultRates::default() {
            return None;
        }
        st.counts.commits += 1;
        if st.rng.chance(rates.conflict) {
            st.counts.conflict += 1;
            return Some(KvError::NotCommitted);
        }
        if st.rng.chance(rates.too_old) {
            st.counts.too_old += 1;
            return Some(KvError::TransactionTooOld { lifetime_ms: 5_000 });
        }
        if st.rng.chance(rates.unknown_before) {
            st.counts.unknown_before += 1;
            return Some(KvError::CommitUnknownResult);
        }
        None
    }

    /// Whether a commit that was applied reports `commit_unknown_result` anyway.
    pub(super) fn after_commit(&self) -> bool {
        let mut st = self.state.lock();
        let rate = st.rates.unknown_after;
        if rate == 0 || !st.rng.chance(rate) {
            return false;
        }
        st.counts.unknown_after += 1;
        true
    }

    /// A jitter in `0..=max_micros` for the retry loop's backoff.
    pub(super) fn jitter_micros(&self, max_micros: u64) -> u64 {
        self.state.lock().rng.below(max_micros.saturating_add(1))
    }
}
