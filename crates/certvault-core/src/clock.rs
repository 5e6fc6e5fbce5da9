//! Time is read through a [`Clock`], so lifecycle logic can be tested with a controlled clock.

use std::sync::Arc;

/// A source of the current time as Unix seconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Seconds since the Unix epoch.
    fn now(&self) -> i64;

    /// Milliseconds since the Unix epoch (audit records). A clock without sub-second
    /// resolution answers whole seconds.
    fn now_millis(&self) -> i64 {
        self.now().saturating_mul(1000)
    }

    /// Moves a test clock forward by `seconds` and answers the new time; `None` for a clock
    /// that cannot be moved (the wall clock).
    fn advance(&self, seconds: i64) -> Option<i64> {
        let _ = seconds;
        None
    }

    /// Whether this is a test clock (then [`Clock::advance`] works).
    fn is_test(&self) -> bool {
        false
    }
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        #[allow(clippy::disallowed_methods)]
        let now = std::time::SystemTime::now();
        match now.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(_) => 0,
        }
    }

    fn now_millis(&self) -> i64 {
        #[allow(clippy::disallowed_methods)]
        let now = std::time::SystemTime::now();
        match now.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(_) => 0,
        }
    }
}

/// A test clock: the wall clock plus an offset that only grows, moved through
/// [`Clock::advance`]. Time keeps flowing (tokens, TLS and timeouts keep working), and tests can
/// jump ahead by days or months.
#[derive(Debug, Default)]
pub struct TestClock {
    offset: std::sync::atomic::AtomicI64,
}

impl TestClock {
    /// A test clock at the wall-clock time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Seconds the clock is ahead of the wall clock.
    pub fn offset(&self) -> i64 {
        self.offset.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Clock for TestClock {
    fn now(&self) -> i64 {
        SystemClock.now().saturating_add(self.offset())
    }

    fn now_millis(&self) -> i64 {
        SystemClock
            .now_millis()
            .saturating_add(self.offset().saturating_mul(1000))
    }

    fn advance(&self, seconds: i64) -> Option<i64> {
        self.offset
            .fetch_add(seconds.max(0), std::sync::atomic::Ordering::SeqCst);
        Some(self.now())
    }

    fn is_test(&self) -> bool {
        true
    }
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn test_clock_moves_forward_only() {
        let c = TestClock::new();
        let t0 = c.now();
        let t1 = c.advance(86_400).unwrap();
        assert!(t1 >= t0 + 86_400);
        c.advance(-1000).unwrap();
        assert!(c.now() >= t1);
        assert!(c.is_test());
        assert!(SystemClock.advance(5).is_none());
    }
}
