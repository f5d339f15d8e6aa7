//! CPU time of a running herd-vmm from /proc: its main thread (the event loop, where device
//! work runs) and the whole process (plus the vCPU threads, which on PVM include emulating the
//! guest's driver). The device benchmarks difference these over many requests, because /proc
//! counts in 10 ms clock ticks.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::stats::summarize;

/// CPU times of a herd-vmm in microseconds, and the wall time from spawn to the sample.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub main_us: f64,
    pub total_us: f64,
    pub wall_us: f64,
}

/// Spawns `cmd` (a herd-vmm whose guest halts when done, or `ip netns exec` of one: it execs in
/// place, so the pid is herd-vmm's) and reads its stdout until `done(line)` says the guest's
/// work is over (an error aborts); then samples its CPU time and kills it, whatever happened.
pub fn sample_until(
    mut cmd: Command,
    mut done: impl FnMut(&str) -> anyhow::Result<bool>,
) -> anyhow::Result<Sample> {
    let start = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let pid = child.id();
    let out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut finished = Ok(false);
    for line in out.lines() {
        finished = line.map_err(anyhow::Error::from).and_then(|l| done(&l));
        if !matches!(finished, Ok(false)) {
            break;
        }
    }
    let wall_us = start.elapsed().as_secs_f64() * 1e6;
    let cpu = cpu_us(pid);
    child.kill()?;
    child.wait()?;
    if !finished? {
        bail!("the guest never finished its work");
    }
    let (main_us, total_us) = cpu?;
    Ok(Sample {
        main_us,
        total_us,
        wall_us,
    })
}

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
