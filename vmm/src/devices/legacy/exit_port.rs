//! The exit-status port: a one-byte write of `N` to port 0xf4 ends the VM, and herd-vmm exits
//! with status `N`. This is how a guest reports the result of the program it ran.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::stop::{StopReason, StopRequester};

/// I/O port of the exit-status device.
pub const EXIT_PORT: u64 = 0xf4;

/// The exit-status port device.
pub struct ExitPort {
    stop: Arc<dyn StopRequester>,
}

impl ExitPort {
    /// A port that stops the VM through `stop`.
    pub fn new(stop: Arc<dyn StopRequester>) -> Self {
        Self { stop }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Only the documented access counts; wider writes would make the status ambiguous.
        if offset == 0 && data.len() == 1 {
            self.stop.request_stop(StopReason::GuestExitStatus(data[0]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stop::tests::StopLog;

    #[test]
    fn one_byte_write_stops_the_vm_with_that_status() {
        let log = Arc::new(StopLog::default());
        let mut port = ExitPort::new(log.clone());
        port.write(0, &[42]);
        assert_eq!(
            *log.0.lock().unwrap(),
            vec![StopReason::GuestExitStatus(42)]
        );
    }

    #[test]
    fn wider_writes_are_ignored() {
        let log = Arc::new(StopLog::default());
        let mut port = ExitPort::new(log.clone());
        port.write(0, &[1, 0]);
        assert!(log.0.lock().unwrap().is_empty());
    }
}
