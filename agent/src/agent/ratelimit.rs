//! A cap on log lines for things a client can make happen as often as it likes (a refused
//! connection costs the peer one `connect`): at most N lines a second, the rest counted and
//! reported on the next line that is logged, so a flood neither fills the disk nor goes
//! unnoticed. Time is passed in, so the rule is unit-tested without sleeping.

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(1);

/// At most `per_second` events logged in each one-second window.
#[derive(Debug)]
pub struct LogLimit {
    per_second: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Whether to log an event happening at `now`: `Some(n)`, with the `n` events suppressed
    /// since the last one logged (to report with it), or `None` (counted as suppressed).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if expired {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.per_second {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_a_second_are_logged_and_the_rest_counted_on_the_next_logged_line() {
        let mut limit = LogLimit::new(3);
        let t0 = Instant::now();
        let first: Vec<Option<u64>> = (0..10).map(|_| limit.admit(t0)).collect();
        assert_eq!(&first[..3], &[Some(0), Some(0), Some(0)]);
        assert!(first[3..].iter().all(Option::is_none));
        // Still the same second.
        assert_eq!(limit.admit(t0 + Duration::from_millis(999)), None);
        // The next second: logged again, reporting the 8 that were not.
        assert_eq!(limit.admit(t0 + WINDOW), Some(8));
        assert_eq!(limit.admit(t0 + WINDOW), Some(0));
    }

    #[test]
    fn a_quiet_limiter_logs_everything() {
        let mut limit = LogLimit::new(1);
        let t0 = Instant::now();
        for i in 0..5 {
            assert_eq!(limit.admit(t0 + WINDOW * i), Some(0));
        }
    }
}
