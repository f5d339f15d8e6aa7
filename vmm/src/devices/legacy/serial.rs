//! The 8250 UARTs (vm-superio): COM1 on ports 0x3f8-0x3ff is the console; COM2 on
//! 0x2f8-0x2ff is the control port herd-vmm sends requests to the guest on. Output goes to a writer (stdout or the
//! console log); input bytes are queued by the event loop; interrupts go to IRQ 4 through an
//! eventfd registered as a KVM irqfd, so raising one never needs the vCPU thread.

use std::collections::VecDeque;
use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::Trigger;
use vm_superio::serial::{NoEvents, Serial, SerialState};
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

/// A UART as a bus device.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, NoEvents, ConsoleWriter>,
    /// Host input beyond what the 64-byte receive FIFO holds, moved in as the guest reads.
    backlog: VecDeque<u8>,
    error_log: RateLimit,
}

/// vm-superio's receive FIFO size (not exported).
const FIFO_SIZE: usize = 64;

/// Most bytes of host input kept waiting for the guest to read them.
pub const BACKLOG_MAX: usize = 16 * 1024;

/// A UART's registers and unread input, for snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub input: Vec<u8>,
}

impl SerialDevice {
    /// A UART writing to `out` and interrupting through `irq`.
    pub fn new(irq: EventFd, out: ConsoleWriter) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), out),
            backlog: VecDeque::new(),
            error_log: RateLimit::new(1),
        }
    }

    /// A UART continuing from `saved` (unread input included).
    pub fn from_snapshot(irq: EventFd, out: ConsoleWriter, saved: &SerialSnapshot) -> Self {
        let fifo = saved.input.len().min(FIFO_SIZE);
        let state = SerialState {
            baud_divisor_low: saved.baud_divisor_low,
            baud_divisor_high: saved.baud_divisor_high,
            interrupt_enable: saved.interrupt_enable,
            interrupt_identification: saved.interrupt_identification,
            line_control: saved.line_control,
            line_status: saved.line_status,
            modem_control: saved.modem_control,
            modem_status: saved.modem_status,
            scratch: saved.scratch,
            in_buffer: saved.input[..fifo].to_vec(),
        };
        let uart = Serial::from_state(&state, IrqTrigger(irq), NoEvents, out)
            .expect("a FIFO of at most its size is a valid state");
        Self {
            uart,
            backlog: saved.input[fifo..].iter().copied().collect(),
            error_log: RateLimit::new(1),
        }
    }

    /// The registers and unread input (FIFO first, then the backlog).
    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.uart.state();
        let mut input = s.in_buffer;
        input.extend(self.backlog.iter());
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            input,
        }
    }

    /// Queues `bytes` for the guest whatever their length: what does not fit in the FIFO now
    /// waits and moves in as the guest reads (up to [`BACKLOG_MAX`]; the rest is dropped).
    /// Returns how many bytes were taken.
    pub fn queue_all(&mut self, bytes: &[u8]) -> usize {
        let room = BACKLOG_MAX.saturating_sub(self.backlog.len());
        let taken = bytes.len().min(room);
        self.backlog.extend(&bytes[..taken]);
        self.top_up();
        taken
    }

    fn top_up(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        let n = self.uart.fifo_capacity().min(self.backlog.len());
        let chunk: Vec<u8> = self.backlog.drain(..n).collect();
        self.queue_input(&chunk);
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
            self.top_up();
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

    fn read_all(dev: &mut SerialDevice) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            let mut lsr = [0u8];
            dev.read(LSR, &mut lsr);
            if lsr[0] & 1 == 0 {
                return got;
            }
            let mut b = [0u8];
            dev.read(THR, &mut b);
            got.push(b[0]);
        }
    }

    #[test]
    fn a_line_longer_than_the_fifo_arrives_whole_as_the_guest_reads() {
        let mut dev = SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(io_sink()));
        let line: Vec<u8> = (0..300).map(|i| b'a' + (i % 26) as u8).collect();
        assert_eq!(dev.queue_all(&line), 300);
        assert_eq!(read_all(&mut dev), line);
    }

    #[test]
    fn a_line_queued_behind_a_waiting_one_arrives_after_it_whole() {
        let mut dev = SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(io_sink()));
        let first: Vec<u8> = [vec![b'r'; 100], b"\n".to_vec()].concat();
        dev.queue_all(&first);
        dev.queue_all(b"stop\n");
        assert_eq!(read_all(&mut dev), [first, b"stop\n".to_vec()].concat());
    }

    #[test]
    fn a_snapshot_keeps_registers_and_unread_input() {
        let mut dev = SerialDevice::new(EventFd::new(EFD_NONBLOCK).unwrap(), Box::new(io_sink()));
        dev.write(IER, &[0x1]);
        let line = vec![b'x'; 100];
        dev.queue_all(&line);
        let mut first = [0u8];
        dev.read(THR, &mut first);
        let saved = dev.snapshot();
        assert_eq!(saved.interrupt_enable, 1);
        assert_eq!(saved.input.len(), 99);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut restored = SerialDevice::from_snapshot(irq, Box::new(io_sink()), &saved);
        assert_eq!(restored.snapshot(), saved);
        assert_eq!(read_all(&mut restored), vec![b'x'; 99]);
    }

    fn io_sink() -> std::io::Sink {
        std::io::sink()
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
