//! Logging set-up and the rate limiter that keeps a guest from flooding our logs: anything a
//! guest can trigger repeatedly goes through a [`RateLimit`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::EnvFilter;

/// Installs the stderr logger at `level` (overridden by `HERD_LOG` if set).
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_env("HERD_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr(std::io::stderr()))
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .try_init();
}

/// stderr for log lines, dropping what cannot be written: when whoever reads our stderr goes
/// away, tracing would report the failed write with `eprintln!`, which panics on a closed
/// stderr and would take a vCPU thread (and the VM) with it.
struct LossyStderr(std::io::Stderr);

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// Allows at most `per_second` events in each wall-clock second and drops the rest, so a guest
/// hammering a register costs us a counter update, not a log line.
#[derive(Debug)]
pub struct RateLimit {
    per_second: u64,
    /// Upper 32 bits: the second; lower 32 bits: events seen in it.
    window: AtomicU64,
}

impl RateLimit {
    /// A limiter for `per_second` events a second.
    pub const fn new(per_second: u64) -> Self {
        Self {
            per_second,
            window: AtomicU64::new(0),
        }
    }

    fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            & 0xffff_ffff
    }

    /// Whether one more event may be logged now.
    pub fn allow(&self) -> bool {
        self.allow_at(Self::now_secs())
    }

    fn allow_at(&self, secs: u64) -> bool {
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (window_secs, count) = (current >> 32, current & 0xffff_ffff);
            let next = if window_secs == secs {
                (secs << 32) | (count + 1).min(0xffff_ffff)
            } else {
                (secs << 32) | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return (next & 0xffff_ffff) <= self.per_second,
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_n_per_second_then_resets_next_second() {
        let limit = RateLimit::new(3);
        let allowed = (0..10).filter(|_| limit.allow_at(100)).count();
        assert_eq!(allowed, 3);
        assert!(limit.allow_at(101));
    }
}
