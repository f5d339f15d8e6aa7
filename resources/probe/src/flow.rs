//! The report flow, over any memory and output: read the handoff, print every fact, return
//! what the command line asks for (for `probe.end=serve` with the `PROBE_*` variables of the
//! image's and instance's `env`). The guest runs it on real memory and COM1; host tests run
//! it on a fake machine.

use crate::bootinfo::{self, BootError, Handoff, Protocol};
use crate::bytes::byte_sum;
use crate::cmdline::{self, End, Options};
use crate::mem::{MapChecked, PhysMem};
use crate::mptable;
use crate::newc;
use crate::out::Sink;
use crate::report;

/// Longest command line we read (herd-vmm allows 4095 bytes plus the NUL).
pub const CMDLINE_MAX: usize = 4096;

/// Prints the report from `boot=` to `memcheck`, reading the boot information at `info`.
/// `memcheck(addr)` checks the 8 bytes at `addr` (the last ones of the highest RAM entry).
pub fn report<M: PhysMem>(
    s: &mut impl Sink,
    mem: &M,
    proto: Protocol,
    info: u64,
    memcheck: impl FnOnce(u64) -> bool,
) -> Result<Options, BootError> {
    let handoff = match proto {
        Protocol::Pvh => bootinfo::from_pvh(mem, info),
        Protocol::Linux64 => bootinfo::from_zero_page(mem, info),
    };
    let handoff = handoff.inspect_err(|_| report::boot(s, proto))?;
    let mem = MapChecked::new(mem, handoff.memmap);
    let line = match handoff.cmdline {
        0 => &[][..],
        addr => cmdline::until_nul(mem.slice_upto(addr, CMDLINE_MAX)),
    };
    let mut opts = cmdline::parse(line);
    let initrd = handoff
        .initrd
        .and_then(|r| mem.slice(r.addr, usize::try_from(r.size).ok()?));
    if opts.quiet {
        if opts.end == End::Serve {
            let (image, instance) = herd_files(initrd, |_| {});
            opts.serve.apply_env(image, instance);
        }
        return Ok(opts);
    }
    report::boot(s, proto);
    report::cmdline(s, line);
    for r in handoff.memmap.iter() {
        report::e820(s, &r);
    }
    report::initrd(s, handoff.initrd, initrd.map(byte_sum));
    let (image, instance) = herd_files(initrd, |f| report::file(s, f.name, f.data, f.sum()));
    if opts.end == End::Serve {
        opts.serve.apply_env(image, instance);
    }
    report::cpus(s, mptable::cpus(&mem));
    report::memcheck(s, check_top(&handoff, memcheck));
    Ok(opts)
}

/// `herd/image.json` and `herd/instance.json` from the initrd, calling `each` on every
/// `herd/` file on the way.
fn herd_files<'a>(
    initrd: Option<&'a [u8]>,
    mut each: impl FnMut(&newc::FileEntry<'a>),
) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
    let (mut image, mut instance) = (None, None);
    for f in initrd
        .into_iter()
        .flat_map(newc::files)
        .filter(|f| f.name.starts_with(b"herd/"))
    {
        each(&f);
        match f.name {
            b"herd/image.json" => image = Some(f.data),
            b"herd/instance.json" => instance = Some(f.data),
            _ => {}
        }
    }
    (image, instance)
}

/// Runs `memcheck` on the last 8 bytes of the highest RAM entry; returns (its end, ok).
fn check_top(handoff: &Handoff<'_>, memcheck: impl FnOnce(u64) -> bool) -> Option<(u64, bool)> {
    let top = handoff.memmap.highest_ram()?;
    let addr = (top.end - 8) & !7;
    Some((top.end, addr >= top.start && memcheck(addr)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::Flat;
    use std::string::String;
    use std::vec::Vec;

    /// Like herd-vmm's machine, 2 MiB of it: e820, command line, MP table, initrd.
    fn machine(initrd: &[u8]) -> Flat {
        let mut mem = Flat::new(0, 0x20_0000);
        let mut e820 = Vec::new();
        for (start, size, kind) in [(0u64, 0x9fc00u64, 1u32), (0x9fc00, 0x60400, 2)] {
            e820.extend_from_slice(&start.to_le_bytes());
            e820.extend_from_slice(&size.to_le_bytes());
            e820.extend_from_slice(&kind.to_le_bytes());
        }
        e820.extend_from_slice(&0x10_0000u64.to_le_bytes());
        e820.extend_from_slice(&0x10_0000u64.to_le_bytes());
        e820.extend_from_slice(&1u32.to_le_bytes());
        mem.put(0x7000 + 0x1e8, &[3]);
        mem.put(0x7000 + 0x2d0, &e820);
        mem.put(0x7000 + 0x228, &0x20000u32.to_le_bytes());
        mem.put(0x20000, b"console=ttyS0 exit=7 probe.end=halt\0junk");
        mem.put(0x7000 + 0x218, &0x1f_f000u32.to_le_bytes());
        mem.put(0x7000 + 0x21c, &(initrd.len() as u32).to_le_bytes());
        mem.put(0x1f_f000, initrd);
        // Floating pointer + table with one CPU (checksums fixed below).
        let mut fp = b"_MP_".to_vec();
        fp.extend_from_slice(&0x9fc10u32.to_le_bytes());
        fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
        fp[10] = fp.iter().fold(0u8, |a, &b| a.wrapping_sub(b));
        let mut t = b"PCMP".to_vec();
        t.resize(44, 0);
        t.extend_from_slice(&[0, 0, 0x14, 3]);
        t.resize(64, 0);
        t[4] = 64;
        t[34] = 1;
        t[7] = t.iter().fold(0u8, |a, &b| a.wrapping_sub(b));
        mem.put(0x9fc00, &fp);
        mem.put(0x9fc10, &t);
        mem
    }

    #[test]
    fn full_report_from_a_zero_page() {
        let mem = machine(&[1, 2, 3, 250]);
        let mut out = Vec::new();
        let mut checked = 0;
        let opts = report(&mut out, &mem, Protocol::Linux64, 0x7000, |a| {
            checked = a;
            true
        })
        .unwrap();
        assert_eq!(checked, 0x1f_fff8);
        assert_eq!(opts.exit, 7);
        assert_eq!(opts.end, cmdline::End::Halt);
        let want = "probe: boot=linux64\n\
            probe: cmdline=console=ttyS0 exit=7 probe.end=halt\n\
            probe: e820 start=0x0 end=0x9fc00 type=1\n\
            probe: e820 start=0x9fc00 end=0x100000 type=2\n\
            probe: e820 start=0x100000 end=0x200000 type=1\n\
            probe: initrd addr=0x1ff000 size=0x4 sum=0x100\n\
            probe: cpus=1\n\
            probe: memcheck top=0x200000 ok\n";
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn initrd_outside_memory_and_failed_memcheck() {
        let mut mem = machine(&[]);
        mem.put(0x7000 + 0x218, &0x30_0000u32.to_le_bytes());
        mem.put(0x7000 + 0x21c, &0x10u32.to_le_bytes());
        let mut out = Vec::new();
        report(&mut out, &mem, Protocol::Linux64, 0x7000, |_| false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("probe: initrd addr=0x300000 size=0x10 unreadable\n"));
        assert!(text.ends_with("probe: memcheck top=0x200000 fail\n"));
    }

    /// A newc archive of regular files.
    fn newc(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in files.iter().chain([&("TRAILER!!!", &b""[..])]) {
            // ino, mode, uid, gid, nlink, mtime, filesize, ..., namesize, check.
            let mut fields = [0usize; 13];
            (fields[1], fields[4], fields[6]) = (0o100644, 1, data.len());
            fields[11] = name.len() + 1;
            out.extend_from_slice(b"070701");
            for f in fields {
                out.extend_from_slice(std::format!("{f:08x}").as_bytes());
            }
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            out.resize(out.len().next_multiple_of(4), 0);
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(4), 0);
        }
        out
    }

    #[test]
    fn serving_takes_probe_variables_from_the_image_and_instance_env() {
        let image =
            br#"{"entrypoint":["/x"],"env":{"PROBE_HEALTH":"fail","PROBE_EXIT_AFTER":"4"}}"#;
        let instance = br#"{"instance_id":"i","hostname":"h","env":{"PROBE_HEALTH":"ok"}}"#;
        let initrd = newc(&[("herd/instance.json", instance), ("herd/image.json", image)]);
        let mut mem = machine(&initrd);
        mem.put(0x20000, b"probe.end=serve probe.serve.port=7\0");
        let opts = report(&mut Vec::new(), &mem, Protocol::Linux64, 0x7000, |_| true).unwrap();
        let want = crate::serve::ServeOptions {
            port: 7,
            health: crate::serve::Health::Ok,
            exit_after: Some(4),
            instance_id: crate::serve::InstanceId::new(b"i").unwrap(),
        };
        assert_eq!(
            opts.serve, want,
            "the instance wins whatever the archive order"
        );
        mem.put(0x20000, b"probe.end=exit\0");
        let opts = report(&mut Vec::new(), &mem, Protocol::Linux64, 0x7000, |_| true).unwrap();
        assert_eq!(
            opts.serve,
            Default::default(),
            "read only for probe.end=serve"
        );
    }

    #[test]
    fn report_off_prints_nothing_and_still_reads_the_serve_env() {
        let instance = br#"{"instance_id":"i","hostname":"h","env":{"PROBE_HEALTH":"fail"}}"#;
        let mut mem = machine(&newc(&[("herd/instance.json", instance)]));
        mem.put(0x20000, b"probe.end=serve probe.report=off\0");
        let mut out = Vec::new();
        let memcheck = |_| panic!("no memcheck when quiet");
        let opts = report(&mut out, &mem, Protocol::Linux64, 0x7000, memcheck).unwrap();
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        assert_eq!(opts.serve.health, crate::serve::Health::Fail);
    }

    #[test]
    fn bad_start_info_is_an_error_after_the_boot_line() {
        let mem = machine(&[]);
        let mut out = Vec::new();
        let res = report(&mut out, &mem, Protocol::Pvh, 0x6000, |_| true);
        assert_eq!(res.unwrap_err(), BootError::BadMagic);
        assert_eq!(out, b"probe: boot=pvh\n");
    }
}
