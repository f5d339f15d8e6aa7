//! The 8250 UARTs (vm-superio): COM1 on ports 0x3f8-0x3ff is the console; COM2 on
//! 0x2f8-0x2ff is the control port herd-vmm sends requests to the guest on. Output goes to a writer (stdout or the
//! console log); input bytes are queued by the event loop; interrupts go to IRQ 4 through an
//! eventfd registered as a KVM irqfd, so raising one never needs the vCPU thread.

use std::io::Write;

use vm_superio::Trigger;
use vm_superio::serial::{NoEvents, Serial};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::logging::RateLimit;

/// First port of COM1.
pub const COM1_BASE: u64 = 0x3f8;
/// First port of COM2, herd-vmm's control port.
pub const COM2_BASE: u64 = 0x2f8;
/// COM1 has eight registers.
pub const COM1_LEN: u64 = 8;

/// Raises the UART's interrupt line by signalling its irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The console output sink.
pub type ConsoleWriter = Box<dyn Write + Send>;

/// COM1 as a bus device.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, ConsoleWriter>,
    error_log: RateLimit,
}

impl SerialDevice {
    /// A UART writing to `out` and interrupting through `irq`.
    pub fn new(irq: EventFd, out: ConsoleWriter) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), out),
            error_log: RateLimit::new(1),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the receive FIFO.
    pub fn queue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                if self.error_log.allow() {
                    tracing::warn!(device = "serial", "dropping console input: {e}");
                }
                0
            }
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Flushes console output.
    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < COM1_LEN {
            data[0] = self.uart.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= COM1_LEN {
            return;
        }
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            // A closed stdout must not stop the guest; say so now and then.
            if self.error_log.allow() {
                tracing::warn!(device = "serial", "console output failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;

    #[test]
    fn bytes_written_to_thr_reach_the_console() {
        let sink = Sink::default();
        let mut dev =
            SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(sink.clone()));
        for b in b"hi\n" {
            dev.write(THR, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn queued_input_is_readable_and_raises_the_interrupt() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(Sink::default()));
        dev.write(IER, &[0x1]); // enable received-data interrupt
        assert_eq!(dev.queue_input(b"ok"), 2);
        assert_eq!(irq.read().unwrap(), 1);
        let mut lsr = [0u8];
        dev.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut b = [0u8];
        dev.read(THR, &mut b);
        assert_eq!(b, [b'o']);
    }

    #[test]
    fn wide_or_out_of_range_accesses_are_ignored() {
        let sink = Sink::default();
        let mut dev =
            SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(sink.clone()));
        dev.write(THR, b"ab");
        let mut two = [0u8; 2];
        dev.read(THR, &mut two);
        assert_eq!(two, [0xff, 0xff]);
        assert!(sink.0.lock().unwrap().is_empty());
    }
}
