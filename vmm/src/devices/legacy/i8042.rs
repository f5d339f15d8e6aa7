//! Just enough of the i8042 keyboard controller for a guest to reset the machine: `reboot=k`
//! makes Linux write the pulse-reset command 0xfe to the command port.
//!
//! Reads answer "no data, input buffer empty" at once, so a kernel polling the status port
//! before the reset command does not spin through its retry loop.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::stop::{StopReason, StopRequester};

/// First port of the controller (data port 0x60); the command/status port is 0x64.
pub const I8042_BASE: u64 = 0x60;
/// Ports 0x60 to 0x64.
pub const I8042_LEN: u64 = 5;
const STATUS_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 controller.
pub struct I8042 {
    stop: Arc<dyn StopRequester>,
}

impl I8042 {
    /// A controller whose reset command stops the VM through `stop`.
    pub fn new(stop: Arc<dyn StopRequester>) -> Self {
        Self { stop }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty; the data port has nothing.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == STATUS_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.stop.request_stop(StopReason::GuestReset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stop::tests::StopLog;

    #[test]
    fn reset_command_on_port_0x64_resets_the_vm() {
        let log = Arc::new(StopLog::default());
        let mut dev = I8042::new(log.clone());
        dev.write(0, &[CMD_RESET_CPU]); // data port: not a command
        dev.write(STATUS_OFFSET, &[0xd1]); // another command
        assert!(log.0.lock().unwrap().is_empty());
        dev.write(STATUS_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(*log.0.lock().unwrap(), vec![StopReason::GuestReset]);
    }

    #[test]
    fn status_reads_say_buffers_empty() {
        let mut dev = I8042::new(Arc::new(StopLog::default()));
        let mut b = [0xffu8];
        dev.read(STATUS_OFFSET, &mut b);
        assert_eq!(b, [0]);
    }
}
