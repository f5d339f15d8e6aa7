//! Facts about the host that bound what a VM may ask for.

/// Physical memory of this host in MiB, from /proc/meminfo (`u64::MAX` if unreadable, so that
/// KVM's own allocation failure reports the problem instead).
pub fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_mem_total_mib(&s))
        .unwrap_or(u64::MAX)
}

fn parse_mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_mib() {
        let text = "MemFree: 10 kB\nMemTotal:       24576000 kB\n";
        assert_eq!(parse_mem_total_mib(text), Some(24000));
        assert_eq!(parse_mem_total_mib("nothing"), None);
        assert!(memory_mib() > 0);
    }
}
