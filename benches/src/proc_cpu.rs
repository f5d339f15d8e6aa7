//! CPU time of a running herd-vmm from /proc: its main thread (the event loop, where device
//! work runs) and the whole process (plus the vCPU threads, which on PVM include emulating the
//! guest's driver). The device benchmarks difference these over many requests, because /proc
//! counts in 10 ms clock ticks.

use anyhow::Context;

use crate::stats::summarize;

/// utime + stime (fields 14 and 15) of a /proc stat line, in microseconds.
pub fn stat_cpu_us(stat: &str) -> anyhow::Result<f64> {
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 * 10_000.0)
}

/// (main thread, whole process) CPU microseconds of `pid`.
pub fn cpu_us(pid: u32) -> anyhow::Result<(f64, f64)> {
    let main = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat"))?;
    let total = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok((stat_cpu_us(&main)?, stat_cpu_us(&total)?))
}

/// Prints the three per-unit costs every device benchmark reports.
pub fn report_costs(unit: &str, main: &[f64], total: &[f64], wall: &[f64]) -> anyhow::Result<()> {
    let rows = [
        (format!("event-loop (device) CPU per {unit}"), main),
        (
            format!("whole herd-vmm CPU per {unit} (incl. PVM emulation)"),
            total,
        ),
        (format!("wall time per {unit}"), wall),
    ];
    for (what, xs) in rows {
        let s = summarize(xs).context("no runs")?;
        println!(
            "{what}: median {:.1} us (min {:.1}, max {:.1})",
            s.p50, s.min, s.max
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_ticks_become_microseconds() {
        let line = "42 (herd-vmm) S 1 42 42 0 -1 4194304 100 0 0 0 7 3 0 0 20 0 3 0";
        assert_eq!(stat_cpu_us(line).unwrap(), 100_000.0);
        assert!(cpu_us(std::process::id()).is_ok());
    }
}
