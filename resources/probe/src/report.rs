//! The report: one `probe: ...` line per fact, in the exact form the end-to-end tests parse
//! (hex with `0x`, lowercase, unpadded; ranges end-exclusive).

use crate::bootinfo::{MemRegion, Protocol, Region};
use crate::mptable::MpError;
use crate::out::Sink;

const PREFIX: &[u8] = b"probe: ";

fn start(s: &mut impl Sink, what: &[u8]) {
    s.put_bytes(PREFIX);
    s.put_bytes(what);
}

/// `probe: boot=pvh` / `probe: boot=linux64`.
pub fn boot(s: &mut impl Sink, proto: Protocol) {
    start(s, b"boot=");
    s.put_bytes(proto.name());
    s.put(b'\n');
}

/// `probe: cmdline=<verbatim>`.
pub fn cmdline(s: &mut impl Sink, line: &[u8]) {
    start(s, b"cmdline=");
    s.put_bytes(line);
    s.put(b'\n');
}

/// `probe: e820 start=0x.. end=0x.. type=N`.
pub fn e820(s: &mut impl Sink, r: &MemRegion) {
    start(s, b"e820 start=");
    s.put_hex(r.start);
    s.put_bytes(b" end=");
    s.put_hex(r.end);
    s.put_bytes(b" type=");
    s.put_dec(u64::from(r.kind));
    s.put(b'\n');
}

/// `probe: initrd addr=0x.. size=0x.. sum=0x..`, `probe: initrd none`, or (the initrd is not
/// in readable memory) `probe: initrd addr=0x.. size=0x.. unreadable`.
pub fn initrd(s: &mut impl Sink, initrd: Option<Region>, sum: Option<u32>) {
    start(s, b"initrd ");
    let Some(r) = initrd else {
        s.put_bytes(b"none\n");
        return;
    };
    s.put_bytes(b"addr=");
    s.put_hex(r.addr);
    s.put_bytes(b" size=");
    s.put_hex(r.size);
    match sum {
        Some(sum) => {
            s.put_bytes(b" sum=");
            s.put_hex(u64::from(sum));
        }
        None => s.put_bytes(b" unreadable"),
    }
    s.put(b'\n');
}

/// Largest file whose content is printed.
pub const MAX_SHOWN_FILE: usize = 1024;

/// `probe: file <name> size=0x.. sum=0x..`, then `probe: file-content <name> <bytes>` when the
/// file is small and one line of printable text.
pub fn file(s: &mut impl Sink, name: &[u8], data: &[u8], sum: u32) {
    start(s, b"file ");
    s.put_bytes(name);
    s.put_bytes(b" size=");
    s.put_hex(data.len() as u64);
    s.put_bytes(b" sum=");
    s.put_hex(u64::from(sum));
    s.put(b'\n');
    let text = data.strip_suffix(b"\n").unwrap_or(data);
    if text.len() <= MAX_SHOWN_FILE && text.iter().all(|b| (0x20..0x7f).contains(b)) {
        start(s, b"file-content ");
        s.put_bytes(name);
        s.put(b' ');
        s.put_bytes(text);
        s.put(b'\n');
    }
}

/// `probe: cpus=N` or `probe: cpus=error <why>`.
pub fn cpus(s: &mut impl Sink, cpus: Result<u32, MpError>) {
    start(s, b"cpus=");
    match cpus {
        Ok(n) => s.put_dec(u64::from(n)),
        Err(e) => {
            s.put_bytes(b"error ");
            s.put_bytes(e.as_str().as_bytes());
        }
    }
    s.put(b'\n');
}

/// `probe: memcheck top=0x.. ok|fail`, or `probe: memcheck none` without RAM in the map.
pub fn memcheck(s: &mut impl Sink, result: Option<(u64, bool)>) {
    start(s, b"memcheck ");
    match result {
        Some((top, ok)) => {
            s.put_bytes(b"top=");
            s.put_hex(top);
            s.put_bytes(if ok { b" ok\n" } else { b" fail\n" });
        }
        None => s.put_bytes(b"none\n"),
    }
}

/// `probe: control=<line>` (a request read from the control port).
pub fn control(s: &mut impl Sink, line: &[u8]) {
    start(s, b"control=");
    s.put_bytes(line);
    s.put(b'\n');
}

/// `probe: echo=<line>`.
pub fn echo(s: &mut impl Sink, line: &[u8]) {
    start(s, b"echo=");
    s.put_bytes(line);
    s.put(b'\n');
}

/// `probe: rng bytes=N distinct=D` or `probe: rng error <why>`.
pub fn rng(s: &mut impl Sink, result: Result<(u32, u32), &str>) {
    start(s, b"rng ");
    match result {
        Ok((n, distinct)) => {
            s.put_bytes(b"bytes=");
            s.put_dec(u64::from(n));
            s.put_bytes(b" distinct=");
            s.put_dec(u64::from(distinct));
        }
        Err(why) => {
            s.put_bytes(b"error ");
            s.put_bytes(why.as_bytes());
        }
    }
    s.put(b'\n');
}

/// `probe: done exit=N`.
pub fn done(s: &mut impl Sink, exit: u8) {
    start(s, b"done exit=");
    s.put_dec(u64::from(exit));
    s.put(b'\n');
}

/// `probe: panic <what>` (the caller may add more before the newline).
pub fn panic_start(s: &mut impl Sink, what: &[u8]) {
    start(s, b"panic ");
    s.put_bytes(what);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn lines() {
        assert_eq!(text(|s| boot(s, Protocol::Pvh)), "probe: boot=pvh\n");
        assert_eq!(
            text(|s| boot(s, Protocol::Linux64)),
            "probe: boot=linux64\n"
        );
        assert_eq!(
            text(|s| cmdline(s, b"exit=7 x")),
            "probe: cmdline=exit=7 x\n"
        );
        let r = MemRegion {
            start: 0x9fc00,
            end: 0x100000,
            kind: 2,
        };
        let want = "probe: e820 start=0x9fc00 end=0x100000 type=2\n";
        assert_eq!(text(|s| e820(s, &r)), want);
        assert_eq!(text(|s| cpus(s, Ok(2))), "probe: cpus=2\n");
        let want = "probe: cpus=error config-table-checksum\n";
        assert_eq!(text(|s| cpus(s, Err(MpError::TableChecksum))), want);
        let want = "probe: memcheck top=0x8000000 ok\n";
        assert_eq!(text(|s| memcheck(s, Some((0x800_0000, true)))), want);
        let want = "probe: memcheck top=0x8000000 fail\n";
        assert_eq!(text(|s| memcheck(s, Some((0x800_0000, false)))), want);
        assert_eq!(text(|s| echo(s, b"hi there")), "probe: echo=hi there\n");
        assert_eq!(text(|s| done(s, 7)), "probe: done exit=7\n");
        let want = "probe: rng bytes=4096 distinct=256\n";
        assert_eq!(text(|s| rng(s, Ok((4096, 256)))), want);
        assert_eq!(
            text(|s| rng(s, Err("timeout"))),
            "probe: rng error timeout\n"
        );
    }

    #[test]
    fn initrd_lines() {
        assert_eq!(text(|s| initrd(s, None, None)), "probe: initrd none\n");
        let r = Region {
            addr: 0x7ff_f000,
            size: 0x10,
        };
        let want = "probe: initrd addr=0x7fff000 size=0x10 sum=0xabc\n";
        assert_eq!(text(|s| initrd(s, Some(r), Some(0xabc))), want);
        let want = "probe: initrd addr=0x7fff000 size=0x10 unreadable\n";
        assert_eq!(text(|s| initrd(s, Some(r), None)), want);
    }
}
