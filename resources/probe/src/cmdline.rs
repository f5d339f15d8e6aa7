//! The probe's command-line words: `exit=N`,
//! `probe.end=exit|reboot|halt|triple-fault|echo|control|panic|serve`
//! and `probe.fault=ud2|div0|int|gp|pf` (the exception `triple-fault` raises); the virtio
//! devices herd-vmm announces (`virtio_mmio.device=4K@0x..:N`), `probe.rng=N` (read N bytes
//! from the entropy device) and `probe.rng.hostile=outside|loop` (send a hostile request);
//! `probe.net.tx=N` (send N frames), `probe.net.rx=N` (wait for N frames) and the other
//! `probe.net.*` words (see `virtio::net`);
//! `probe.blk.*` (write, discard, zeroes, flush, read, repeat and the throughput workloads:
//! see `virtio::blk`);
//! `probe.vsock.listen=`, `probe.vsock.connect=`, `probe.vsock.sink=` and
//! `probe.vsock.source=` (see `virtio::vsock`);
//! `probe.end=serve` with `probe.serve.port=P` (see `serve`); `probe.report=off` (no report);
//! `probe.mem.touch=all` (write every page of RAM).
//!
//! Words are separated by ASCII whitespace; the last occurrence of a word wins; words we do not
//! understand (and values we cannot parse) are ignored.

use crate::serve::ServeOptions;
use crate::virtio::blk::BlkOptions;
use crate::virtio::net::NetOptions;
use crate::virtio::vsock::VsockOptions;
use crate::virtio::{Hostile, MAX_DEVICES, parse_device, parse_device_irq};

/// How the probe ends after its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// One-byte `out` of the exit code to port 0xf4.
    Exit,
    /// Write 0xfe to port 0x64 (i8042 CPU reset).
    Reboot,
    /// `cli; hlt` forever.
    Halt,
    /// Load an empty IDT and raise an exception.
    TripleFault,
    /// Read a line from COM1, print it, then end as `Exit`.
    Echo,
    /// Wait for a line on the control port (COM2), print it, then end as `Exit`.
    Control,
    /// Panic (to test the panic path: `probe: panic ...`, exit status 99).
    Panic,
    /// Stay up answering health checks on vsock until told to stop, then end as `Exit`.
    Serve,
}

/// The exception raised (with an empty IDT) for `probe.end=triple-fault`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `ud2`: invalid opcode.
    Ud2,
    /// `div` by zero.
    Div0,
    /// A software interrupt (`int 0x80`); on PVM hosts an emulation failure, not a fault.
    Int,
    /// A load from a non-canonical address (#GP).
    Gp,
    /// A load from an unmapped address (#PF).
    Pf,
}

/// What the command line asks of the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Exit status for `End::Exit`/`End::Echo` (and printed in the `done` line).
    pub exit: u8,
    /// How to end.
    pub end: End,
    /// The exception for `End::TripleFault`.
    pub fault: Fault,
    /// Bytes to read from the entropy device (0: none).
    pub rng: u32,
    /// How the entropy request is built.
    pub rng_hostile: Hostile,
    /// What to do with the network device.
    pub net: NetOptions,
    /// Base addresses of the announced virtio-mmio windows, in order.
    pub virtio: [u64; MAX_DEVICES],
    /// Their interrupt lines (IOAPIC pins), 0 where the word named none.
    pub virtio_irqs: [u32; MAX_DEVICES],
    /// How many of `virtio` are set.
    pub virtio_count: usize,
    /// What to do with block devices.
    pub blk: BlkOptions,
    /// What to do with the vsock device.
    pub vsock: VsockOptions,
    /// How `End::Serve` serves (the command line's port, then the instance's environment).
    pub serve: ServeOptions,
    /// `probe.report=off`: print nothing and skip the checks behind the report (summing the
    /// initrd costs milliseconds of emulated CPU on PVM), so a launch-rate benchmark times
    /// herd, not the probe's report.
    pub quiet: bool,
    /// `probe.mem.touch=all`: write every page of RAM below 3 GiB after the report, so the
    /// host backs all of guest memory (the memory-limit tests).
    pub touch_all: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            exit: 0,
            end: End::Exit,
            fault: Fault::Ud2,
            rng: 0,
            rng_hostile: Hostile::No,
            net: NetOptions::default(),
            virtio: [0; MAX_DEVICES],
            virtio_irqs: [0; MAX_DEVICES],
            virtio_count: 0,
            blk: BlkOptions::default(),
            vsock: VsockOptions::default(),
            serve: ServeOptions::default(),
            quiet: false,
            touch_all: false,
        }
    }
}

/// Parses the words the probe understands out of `cmdline`.
pub fn parse(cmdline: &[u8]) -> Options {
    let mut opts = Options::default();
    for word in cmdline.split(|b| b.is_ascii_whitespace()) {
        let eq = word.iter().position(|&b| b == b'=').unwrap_or(word.len());
        let value = word.get(eq + 1..).unwrap_or_default();
        if let Some(key) = word[..eq].strip_prefix(b"probe.blk.") {
            opts.blk.word(key, value);
            continue;
        }
        if let Some(key) = word[..eq].strip_prefix(b"probe.net.") {
            opts.net.word(key, value);
            continue;
        }
        if let Some(key) = word[..eq].strip_prefix(b"probe.vsock.") {
            opts.vsock.word(key, value);
            continue;
        }
        if let Some(key) = word[..eq].strip_prefix(b"probe.serve.") {
            opts.serve.word(key, value);
            continue;
        }
        if eq == word.len() {
            continue;
        }
        match &word[..eq] {
            b"exit" => opts.exit = parse_u8(value).unwrap_or(opts.exit),
            b"probe.end" => opts.end = parse_end(value).unwrap_or(opts.end),
            b"probe.fault" => opts.fault = parse_fault(value).unwrap_or(opts.fault),
            b"probe.rng" => opts.rng = parse_u32(value).unwrap_or(opts.rng),
            b"probe.rng.hostile" => opts.rng_hostile = parse_hostile(value),
            b"virtio_mmio.device" => add_device(&mut opts, value),
            b"probe.report" => opts.quiet = value == b"off",
            b"probe.mem.touch" => opts.touch_all = value == b"all",
            _ => {}
        }
    }
    opts
}

fn parse_end(v: &[u8]) -> Option<End> {
    Some(match v {
        b"exit" => End::Exit,
        b"reboot" => End::Reboot,
        b"halt" => End::Halt,
        b"triple-fault" => End::TripleFault,
        b"echo" => End::Echo,
        b"control" => End::Control,
        b"panic" => End::Panic,
        b"serve" => End::Serve,
        _ => return None,
    })
}

fn add_device(opts: &mut Options, value: &[u8]) {
    if let (Some(base), Some(slot)) = (parse_device(value), opts.virtio.get_mut(opts.virtio_count))
    {
        *slot = base;
        opts.virtio_irqs[opts.virtio_count] = parse_device_irq(value).unwrap_or(0);
        opts.virtio_count += 1;
    }
}

fn parse_hostile(v: &[u8]) -> Hostile {
    match v {
        b"outside" => Hostile::Outside,
        b"loop" => Hostile::Loop,
        _ => Hostile::No,
    }
}

/// Parses a decimal number below 2^32.
pub(crate) fn parse_u32(v: &[u8]) -> Option<u32> {
    if v.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &c in v {
        n = n * 10 + u64::from((c as char).to_digit(10)?);
        if n > u64::from(u32::MAX) {
            return None;
        }
    }
    Some(n as u32)
}

fn parse_fault(v: &[u8]) -> Option<Fault> {
    Some(match v {
        b"ud2" => Fault::Ud2,
        b"div0" => Fault::Div0,
        b"int" => Fault::Int,
        b"gp" => Fault::Gp,
        b"pf" => Fault::Pf,
        _ => return None,
    })
}

/// Parses a decimal (or `0x` hex) number that fits in a byte.
fn parse_u8(v: &[u8]) -> Option<u8> {
    let (digits, radix) = match v.strip_prefix(b"0x") {
        Some(h) => (h, 16),
        None => (v, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n: u32 = 0;
    for &c in digits {
        let d = (c as char).to_digit(radix)?;
        n = n * radix + d;
        if n > 255 {
            return None;
        }
    }
    Some(n as u8)
}

/// The command line as stored in guest memory: the bytes before the first NUL (all of `mem`
/// if there is none).
pub fn until_nul(mem: &[u8]) -> &[u8] {
    let len = mem.iter().position(|&b| b == 0).unwrap_or(mem.len());
    &mem[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        assert_eq!(parse(b""), Options::default());
        assert_eq!(parse(b"console=ttyS0 quiet"), Options::default());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(parse(b"exit=7").exit, 7);
        assert_eq!(parse(b"a exit=255 b").exit, 255);
        assert_eq!(parse(b"exit=0x2a").exit, 42);
        assert_eq!(parse(b"exit=256").exit, 0);
        assert_eq!(parse(b"exit=").exit, 0);
        assert_eq!(parse(b"exit=-1").exit, 0);
        assert_eq!(parse(b"exit=7x").exit, 0);
        assert_eq!(parse(b"exit=3 exit=4").exit, 4);
        assert_eq!(parse(b"myexit=3").exit, 0);
        assert_eq!(parse(b"\texit=9\n").exit, 9);
    }

    #[test]
    fn endings() {
        assert_eq!(parse(b"probe.end=reboot").end, End::Reboot);
        assert_eq!(parse(b"probe.end=halt").end, End::Halt);
        assert_eq!(parse(b"probe.end=triple-fault").end, End::TripleFault);
        let want = Options {
            exit: 3,
            end: End::Echo,
            ..Options::default()
        };
        assert_eq!(parse(b"probe.end=echo exit=3"), want);
        assert_eq!(parse(b"probe.end=panic").end, End::Panic);
        let o = parse(b"probe.end=serve probe.serve.port=6000");
        assert_eq!((o.end, o.serve.port), (End::Serve, 6000));
        assert_eq!(parse(b"probe.end=serve").serve.port, 5000);
        assert_eq!(parse(b"probe.end=bogus").end, End::Exit);
        assert_eq!(parse(b"probe.end=halt probe.end=exit").end, End::Exit);
        assert!(parse(b"probe.end=halt probe.report=off").quiet);
        assert!(!parse(b"probe.end=halt probe.report=on").quiet);
        assert!(parse(b"probe.mem.touch=all").touch_all);
        assert!(!parse(b"probe.mem.touch=none").touch_all);
    }

    #[test]
    fn faults() {
        assert_eq!(parse(b"probe.fault=gp").fault, Fault::Gp);
        assert_eq!(parse(b"probe.fault=pf").fault, Fault::Pf);
        assert_eq!(parse(b"probe.fault=div0").fault, Fault::Div0);
        assert_eq!(parse(b"probe.fault=int").fault, Fault::Int);
        assert_eq!(parse(b"probe.fault=nope").fault, Fault::Ud2);
    }

    #[test]
    fn virtio_devices_and_rng_words() {
        let o = parse(
            b"virtio_mmio.device=4K@0xc0001000:5 probe.rng=4096 \
              virtio_mmio.device=4K@0xc0002000:6 virtio_mmio.device=bogus",
        );
        assert_eq!(o.virtio_count, 2);
        assert_eq!(&o.virtio[..2], &[0xc000_1000, 0xc000_2000]);
        assert_eq!(&o.virtio_irqs[..2], &[5, 6], "their interrupt lines");
        assert_eq!((o.rng, o.rng_hostile), (4096, Hostile::No));
        assert_eq!(parse(b"probe.rng.hostile=loop").rng_hostile, Hostile::Loop);
        assert_eq!(
            parse(b"probe.rng.hostile=outside").rng_hostile,
            Hostile::Outside
        );
        assert_eq!(parse(b"probe.rng=x1").rng, 0);
        let o = parse(b"probe.net.tx=3 probe.net.rx=2 probe.net.offload");
        assert_eq!((o.net.tx, o.net.rx, o.net.offload), (3, 2, true));
        let many = b"virtio_mmio.device=4K@0x1000 virtio_mmio.device=4K@0x1000 \
            virtio_mmio.device=4K@0x1000 virtio_mmio.device=4K@0x1000 virtio_mmio.device=4K@0x1000";
        assert_eq!(parse(many).virtio_count, MAX_DEVICES);
        assert_eq!(parse(many).virtio_irqs, [0; MAX_DEVICES], "no line named");
    }

    #[test]
    fn vsock_bulk_words_reach_the_vsock_options() {
        let o = parse(b"probe.vsock.sink=6000:discard probe.vsock.source=6001:42");
        assert_eq!(o.vsock.sink, Some((6000, false)));
        assert_eq!(o.vsock.source, Some((6001, 42)));
        assert!(o.vsock.any());
    }

    #[test]
    fn nul_terminated() {
        assert_eq!(until_nul(b"exit=1\0junk"), b"exit=1");
        assert_eq!(until_nul(b"no nul"), b"no nul");
        assert_eq!(until_nul(b"\0"), b"");
    }
}
