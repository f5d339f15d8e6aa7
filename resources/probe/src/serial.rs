//! COM1 (8250 UART at port 0x3f8), polled: wait for LSR "THR empty" before each byte out,
//! LSR "data ready" before each byte in. No initialisation: herd-vmm's UART works as is, and
//! every register access is a VM exit.

use crate::hw::{inb, outb};
use crate::out::Sink;

const BASE: u16 = 0x3f8;
const LSR: u16 = BASE + 5;
const LSR_DATA_READY: u8 = 0x01;
const LSR_THR_EMPTY: u8 = 0x20;

/// The first serial port.
#[derive(Debug, Clone, Copy)]
pub struct Com1;

impl Sink for Com1 {
    fn put(&mut self, b: u8) {
        while inb(LSR) & LSR_THR_EMPTY == 0 {}
        outb(BASE, b);
    }
}

impl Com1 {
    /// Waits for and returns one received byte.
    pub fn get(&mut self) -> u8 {
        while inb(LSR) & LSR_DATA_READY == 0 {}
        inb(BASE)
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
