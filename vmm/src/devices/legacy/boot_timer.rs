//! Firecracker-compatible boot timer: when the guest writes the byte 123 at MMIO 0xc000_0000,
//! log how long the boot took, wall-clock and VMM CPU time, measured from the start of
//! building the VM. Benchmarks and users compare boots across VMMs with this line.

use std::time::{Duration, Instant};

use crate::bus::BusDevice;
use crate::logging::RateLimit;
use crate::sys::time::process_cpu_time;

/// MMIO window of the boot timer.
pub const BOOT_TIMER_LEN: u64 = 0x1000;
/// The byte a guest writes when it considers itself booted.
pub const BOOT_COMPLETE_MAGIC: u8 = 123;

/// When building the VM started, by wall clock and by process CPU time.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    pub wall: Instant,
    pub cpu: Duration,
}

impl BootClock {
    /// Reads both clocks now.
    pub fn now() -> Self {
        Self {
            wall: Instant::now(),
            cpu: process_cpu_time(),
        }
    }
}

/// Formats the line in Firecracker's wording.
pub fn boot_time_line(wall: Duration, cpu: Duration) -> String {
    let (us, cpu_us) = (wall.as_micros(), cpu.as_micros());
    format!(
        "Guest-boot-time = {us} us {} ms, {cpu_us} CPU us {} CPU ms",
        us / 1000,
        cpu_us / 1000
    )
}

/// The boot-timer device.
#[derive(Debug)]
pub struct BootTimer {
    start: BootClock,
    limit: RateLimit,
}

impl BootTimer {
    /// A timer measuring from `start`.
    pub fn new(start: BootClock) -> Self {
        Self {
            start,
            limit: RateLimit::new(5),
        }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_COMPLETE_MAGIC) {
            return;
        }
        let wall = self.start.wall.elapsed();
        let cpu = process_cpu_time().saturating_sub(self.start.cpu);
        if self.limit.allow() {
            tracing::info!("{}", boot_time_line(wall, cpu));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_matches_firecracker_format() {
        let line = boot_time_line(Duration::from_micros(12_345), Duration::from_micros(2_600));
        assert_eq!(
            line,
            "Guest-boot-time = 12345 us 12 ms, 2600 CPU us 2 CPU ms"
        );
    }

    #[test]
    fn other_bytes_and_offsets_are_ignored() {
        let mut timer = BootTimer::new(BootClock::now());
        timer.write(0, &[122]);
        timer.write(4, &[BOOT_COMPLETE_MAGIC]);
        timer.write(0, &[BOOT_COMPLETE_MAGIC]);
    }
}
