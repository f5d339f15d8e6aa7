//! A herd-vmm process's memory from `/proc/PID/smaps`, split into the guest's RAM and the
//! VMM's own share, as RSS (what `ps` shows) and PSS (pages shared between instances divided
//! among them: what an instance really costs the host), plus the host's `MemAvailable`.
//!
//! Guest RAM is found by its size: the address-adjacent mappings that together are exactly
//! the guest's memory (guests under 3 GiB have one RAM region). herd-vmm also names it
//! `[anon:herd-guest-ram]` where the kernel allows, for people reading smaps.

use anyhow::Context;
use serde::Serialize;

/// One process's memory, in KiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessMemory {
    pub guest_rss_kib: u64,
    pub guest_pss_kib: u64,
    pub vmm_rss_kib: u64,
    pub vmm_pss_kib: u64,
}

/// The whole process's RSS and PSS, in KiB (for a process with no guest, like the agent).
pub fn rss_pss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("smaps_rollup of {pid}"))?;
    Ok((field_kib(&rollup, "Rss:"), field_kib(&rollup, "Pss:")))
}

fn field_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Reads `pid`'s smaps; `guest_kib` is the guest's RAM size, for kernels that do not name it.
pub fn process_memory(pid: u32, guest_kib: u64) -> anyhow::Result<ProcessMemory> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("smaps of {pid}"))?;
    Ok(split_smaps(&smaps, guest_kib))
}

/// One mapping of smaps: its address range and resident sizes.
#[derive(Debug, Default)]
struct Mapping {
    start: u64,
    end: u64,
    rss_kib: u64,
    pss_kib: u64,
}

fn mappings(smaps: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((s, e)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            let (Ok(start), Ok(end)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16))
            else {
                continue;
            };
            out.push(Mapping {
                start,
                end,
                ..Mapping::default()
            });
        } else if let Some(m) = out.last_mut() {
            match first {
                "Rss:" => m.rss_kib = field_kib(line, "Rss:"),
                "Pss:" => m.pss_kib = field_kib(line, "Pss:"),
                _ => {}
            }
        }
    }
    out
}

/// The mappings that make up guest RAM: the first run of address-adjacent mappings that
/// together are exactly the guest's size. herd-vmm maps guest RAM in one piece, which
/// `--map-boot-files` splits into anonymous and file-backed mappings side by side.
fn guest_run(maps: &[Mapping], guest_kib: u64) -> std::ops::Range<usize> {
    for i in 0..maps.len() {
        let mut total = 0;
        for j in i..maps.len() {
            if j > i && maps[j].start != maps[j - 1].end {
                break;
            }
            total += (maps[j].end - maps[j].start) / 1024;
            if total == guest_kib {
                return i..j + 1;
            }
            if total > guest_kib {
                break;
            }
        }
    }
    0..0
}

/// The pure part of [`process_memory`].
pub fn split_smaps(smaps: &str, guest_kib: u64) -> ProcessMemory {
    let maps = mappings(smaps);
    let guest = guest_run(&maps, guest_kib);
    let mut out = ProcessMemory::default();
    for (i, m) in maps.iter().enumerate() {
        if guest.contains(&i) {
            out.guest_rss_kib += m.rss_kib;
            out.guest_pss_kib += m.pss_kib;
        } else {
            out.vmm_rss_kib += m.rss_kib;
            out.vmm_pss_kib += m.pss_kib;
        }
    }
    out
}

/// Host memory in use apart from caches, in KiB: `MemTotal - MemFree - Buffers - Cached -
/// SReclaimable` (what `free` calls used). Unlike `MemAvailable` it does not move with the
/// page cache, which the agent's logs and database also fill.
pub fn host_used_kib() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let f = |k| field_kib(&meminfo, k);
    Ok((f("MemTotal:") - f("MemFree:"))
        .saturating_sub(f("Buffers:") + f("Cached:") + f("SReclaimable:")))
}

/// The host's `MemAvailable`, in KiB.
pub fn mem_available_kib() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    Ok(field_kib(&meminfo, "MemAvailable:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary, a 2 MiB thread stack right below guest RAM (adjacent!), and a 64 MiB
    /// guest split into anonymous / file (an initrd) / anonymous pieces.
    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234 /usr/bin/herd-vmm
Rss:                1024 kB
Pss:                 100 kB
7effffe00000-7f0000000000 rw-p 00000000 00:00 0
Rss:                  16 kB
Pss:                  16 kB
7f0000000000-7f0003f00000 rw-p 00000000 00:00 0 [anon:herd-guest-ram]
Rss:                 200 kB
Pss:                 200 kB
7f0003f00000-7f0003f80000 rw-p 00000000 08:01 99 /var/lib/herd/blobs/initrd
Rss:                 512 kB
Pss:                  64 kB
7f0003f80000-7f0004000000 rw-p 00000000 00:00 0
Rss:                  12 kB
Pss:                  12 kB
";

    #[test]
    fn guest_ram_is_the_adjacent_run_of_exactly_the_guests_size() {
        let m = split_smaps(SMAPS, 64 * 1024);
        assert_eq!((m.guest_rss_kib, m.guest_pss_kib), (724, 276));
        assert_eq!((m.vmm_rss_kib, m.vmm_pss_kib), (1040, 116));
        let none = split_smaps(SMAPS, 128 * 1024);
        assert_eq!(none.guest_rss_kib, 0, "no run of that size");
    }
}
