//! The 8250 UARTs, polled: COM1 (0x3f8, the console) and COM2 (0x2f8, herd-vmm's control
//! port). Wait for LSR "THR empty" before each byte out, LSR "data ready" before each byte
//! in. No initialisation: herd-vmm's UARTs work as is, and every register access is a VM exit.

use crate::hw::{inb, outb};
use crate::out::Sink;

const LSR_OFFSET: u16 = 5;
const LSR_DATA_READY: u8 = 0x01;
const LSR_THR_EMPTY: u8 = 0x20;

/// A polled UART at an I/O base.
#[derive(Debug, Clone, Copy)]
pub struct Uart(u16);

/// The console.
pub const COM1: Uart = Uart(0x3f8);
/// herd-vmm's control port.
pub const COM2: Uart = Uart(0x2f8);

/// The console's type (kept for readability at call sites).
pub type Com1 = Uart;

impl Sink for Uart {
    fn put(&mut self, b: u8) {
        while inb(self.0 + LSR_OFFSET) & LSR_THR_EMPTY == 0 {}
        outb(self.0, b);
    }
}

impl Uart {
    /// Waits for and returns one received byte.
    pub fn get(&mut self) -> u8 {
        while inb(self.0 + LSR_OFFSET) & LSR_DATA_READY == 0 {}
        inb(self.0)
    }

    /// One received byte if there is one (never waits).
    pub fn try_get(&mut self) -> Option<u8> {
        let ready = inb(self.0 + LSR_OFFSET) & LSR_DATA_READY != 0;
        ready.then(|| inb(self.0))
    }

    /// Reads up to `\n` (not stored; a `\r` before it is dropped); bytes beyond `buf` are
    /// read and discarded. Returns the length stored.
    pub fn read_line(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        loop {
            match self.get() {
                b'\n' => break,
                b => {
                    if let Some(slot) = buf.get_mut(n) {
                        *slot = b;
                        n += 1;
                    }
                }
            }
        }
        if n > 0 && buf[n - 1] == b'\r' {
            n -= 1;
        }
        n
    }
}
