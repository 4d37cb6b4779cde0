//! One backoff for every retry loop in aib: exponential, capped, with full jitter from an
//! injectable random source, and [`retry_while`] that retries only what a predicate allows.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! use aib_core::retry::{Backoff, retry_while};
//! use aib_core::Error;
//! use std::time::Duration;
//!
//! let mut calls = 0;
//! let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).with_rng(|| 0.5);
//! let r: Result<u32, Error> = retry_while(backoff, 5, Error::is_retryable, || {
//!     calls += 1;
//!     let n = calls;
//!     async move {
//!         if n < 3 { Err(Error::Throttled { backend: "demo", retry_after: None }) } else { Ok(n) }
//!     }
//! })
//! .await;
//! assert_eq!(r.unwrap(), 3);
//! # });
//! ```

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

type Rng = Box<dyn FnMut() -> f64 + Send + Sync>;

/// Exponential backoff: `initial`, then ×`base` each time up to `max`; with jitter, each
/// delay is drawn uniformly from `[0, delay]` ("full jitter"), so many clients retrying at
/// once spread out.
pub struct Backoff {
    initial: Duration,
    max: Duration,
    base: f64,
    next: Duration,
    rng: Option<Rng>,
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backoff")
            .field("initial", &self.initial)
            .field("max", &self.max)
            .field("base", &self.base)
            .field("jitter", &self.rng.is_some())
            .finish()
    }
}

impl Clone for Backoff {
    /// A clone starts over with its own random source (an injected one is not shared).
    fn clone(&self) -> Self {
        let b = Backoff { initial: self.initial, max: self.max, base: self.base, next: self.initial, rng: None };
        if self.rng.is_some() { b.with_jitter() } else { b }
    }
}

impl Backoff {
    /// Doubling from `initial` up to `max`, with full jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max: max.max(initial), base: 2.0, next: initial, rng: None }.with_jitter()
    }

    /// The same delay every time, no jitter (polling).
    pub fn fixed(delay: Duration) -> Self {
        Backoff { initial: delay, max: delay, base: 1.0, next: delay, rng: None }
    }

    /// Multiplies the delay by `base` (at least 1) after each attempt.
    #[must_use]
    pub fn with_base(mut self, base: f64) -> Self {
        self.base = if base.is_finite() { base.max(1.0) } else { 2.0 };
        self
    }

    /// No jitter: the delays are exactly `initial`, `initial × base`, … (tests, polling).
    #[must_use]
    pub fn without_jitter(mut self) -> Self {
        self.rng = None;
        self
    }

    /// Full jitter from a seeded generator of this process.
    #[must_use]
    pub fn with_jitter(mut self) -> Self {
        let mut state = RandomState::new().build_hasher().finish() | 1;
        self.rng = Some(Box::new(move || {
            // xorshift64*: plenty for spreading retries.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }));
        self
    }

    /// Jitter drawn from `rng`, which returns values in `[0, 1)` (deterministic tests).
    #[must_use]
    pub fn with_rng(mut self, rng: impl FnMut() -> f64 + Send + Sync + 'static) -> Self {
        self.rng = Some(Box::new(rng));
        self
    }

    /// The delay before the next attempt; advances the backoff.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.next.min(self.max);
        self.next = Duration::try_from_secs_f64(self.next.as_secs_f64() * self.base).unwrap_or(self.max).min(self.max);
        match &mut self.rng {
            Some(rng) => cap.mul_f64(rng().clamp(0.0, 1.0)),
            None => cap,
        }
    }

    /// Starts over at `initial`.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Calls `f` until it succeeds, fails with an error `retry` refuses, or has been called
/// `max_attempts` times (at least once), sleeping [`Backoff::next_delay`] in between.
pub async fn retry_while<T, E, F, Fut>(mut backoff: Backoff, max_attempts: u32, retry: impl Fn(&E) -> bool, mut f: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if attempt < max_attempts && retry(&e) => {
                attempt += 1;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500)).without_jitter();
        let d: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_within_the_delay_and_uses_the_injected_rng() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1)).with_rng(|| 0.25);
        assert_eq!(b.next_delay(), Duration::from_millis(25));
        assert_eq!(b.next_delay(), Duration::from_millis(50));
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_what_the_predicate_allows_is_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<(), Error> = retry_while(Backoff::fixed(Duration::from_secs(1)), 5, Error::is_retryable, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(Error::PermissionDenied { backend: "x", source: "403".into() }) }
        })
        .await;
        assert!(matches!(r, Err(Error::PermissionDenied { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicU32::new(0);
        let r: Result<(), Error> = retry_while(Backoff::fixed(Duration::from_secs(1)), 4, Error::is_retryable, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(Error::Throttled { backend: "x", retry_after: None }) }
        })
        .await;
        assert!(matches!(r, Err(Error::Throttled { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 4, "stops after max_attempts");
    }
}
