//! The driver against a fake register window that answers like herd-vmm's transport and
//! completes requests by writing the used ring itself.

use core::cell::RefCell;
use std::vec::Vec;

use super::*;

#[derive(Default)]
struct Fake {
    status: u32,
    used_addr: u64,
    written: u32,
    isr: u32,
    log: Vec<(u32, u32)>,
}

struct FakeRegs(RefCell<Fake>);

impl Regs for &FakeRegs {
    fn read(&self, offset: u32) -> u32 {
        let f = self.0.borrow();
        match offset {
            reg::MAGIC => MAGIC,
            reg::VERSION => 2,
            reg::DEVICE_ID => DEVICE_RNG,
            reg::DEVICE_FEATURES => 1,
            reg::QUEUE_NUM_MAX => 256,
            reg::INTERRUPT_STATUS => f.isr,
            reg::STATUS => f.status,
            _ => 0,
        }
    }

    fn write(&self, offset: u32, value: u32) {
        let mut f = self.0.borrow_mut();
        f.log.push((offset, value));
        match offset {
            reg::STATUS => f.status = value | (f.status & NEEDS_RESET),
            reg::QUEUE_DEVICE_LOW => f.used_addr = u64::from(value),
            0x0a4 => f.used_addr |= u64::from(value) << 32,
            reg::INTERRUPT_ACK => f.isr &= !value,
            reg::QUEUE_NOTIFY => {
                let p = f.used_addr as *mut u32;
                // SAFETY: the used ring the driver gave us lives in the test's
                // Virtq, which outlives this call; the first element is at +4 (id) and +8
                // (len), idx at +2.
                unsafe { p.wrapping_add(1).write_volatile(0) };
                // SAFETY: as above.
                unsafe { p.wrapping_add(2).write_volatile(f.written) };
                // SAFETY: as above.
                unsafe { (p as *mut u16).wrapping_add(1).write_volatile(1) };
                f.isr = 1;
            }
            _ => {}
        }
    }
}

#[test]
fn device_words_give_the_window_base() {
    assert_eq!(parse_device(b"4K@0xc0001000:5"), Some(0xc000_1000));
    assert_eq!(parse_device(b"4K@0xC0002000"), Some(0xc000_2000));
    assert_eq!(parse_device(b"4K@c0001000:5"), None);
    assert_eq!(parse_device(b"0xc0001000:5"), None);
    assert_eq!(parse_device(b"4K@0x:5"), None);
}

#[test]
fn entropy_request_negotiates_sets_up_the_queue_and_reads_the_used_length() {
    let fake = FakeRegs(RefCell::new(Fake {
        written: 64,
        ..Fake::default()
    }));
    let dev = Device::probe(&fake).unwrap();
    assert_eq!(dev.id, DEVICE_RNG);
    let mut q = Virtq::default();
    let n = read_entropy(&dev, &mut q, 0x10_0000, 64, Hostile::No).unwrap();
    assert_eq!(n, 64);
    let f = fake.0.borrow();
    assert_eq!(f.status, 0b1111);
    assert!(f.log.contains(&(reg::DRIVER_FEATURES, 1)));
    assert!(f.log.contains(&(reg::QUEUE_NUM, QUEUE_SIZE as u32)));
    assert_eq!(f.isr, 0, "interrupt acknowledged");
}

#[test]
fn refused_features_and_needs_reset_are_errors() {
    let fake = FakeRegs(RefCell::new(Fake::default()));
    let dev = Device::probe(&fake).unwrap();
    fake.0.borrow_mut().status = NEEDS_RESET;
    assert_eq!(dev.driver_ok(), Err("device-needs-reset"));
    assert_eq!(distinct(&[1, 2, 2, 3]), 3);
    assert_eq!(distinct(&[]), 0);
}
