//! Launch rate: N microVMs started at once, timed until every guest has signalled boot
//! complete (the boot-timer write herd-vmm logs as `Guest-boot-time`). Two ways in: herd-vmm
//! alone (this benchmark spawns the processes, as Firecracker's launch test does) and through
//! the agent (one service of N replicas created with one request).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use herd_benches::agent::{api, instances, unix_ms, wait};
use herd_benches::sys::monotonic_ns;
use serde::Serialize;
use serde_json::json;

/// One launch of `count` microVMs at once.
#[derive(Debug, Clone, Serialize)]
pub struct Launch {
    pub via: &'static str,
    pub count: usize,
    /// First spawn (or the API request) to the last guest's boot signal.
    pub wall_ms: f64,
    pub vms_per_s: f64,
    pub vms_per_s_per_core: f64,
    /// Each VM: its spawn (agent: the API request) to its own boot signal.
    pub boot_ms: Vec<f64>,
    /// Each VM: herd-vmm's own `Guest-boot-time` (process start to boot signal).
    pub reported_boot_ms: Vec<f64>,
}

impl Launch {
    fn new(via: &'static str, wall_ms: f64, boot_ms: Vec<f64>, reported: Vec<f64>) -> Self {
        let count = boot_ms.len();
        let vms_per_s = count as f64 / (wall_ms / 1000.0);
        Launch {
            via,
            count,
            wall_ms,
            vms_per_s,
            vms_per_s_per_core: vms_per_s / cores() as f64,
            boot_ms,
            reported_boot_ms: reported,
        }
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `Guest-boot-time = N us` from a herd-vmm log line, in ms.
fn reported_ms(line: &str) -> Option<f64> {
    let rest = line.split_once("Guest-boot-time = ")?.1;
    let us: f64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(us / 1000.0)
}

/// Kills the launched herd-vmm processes however the launch ends.
struct Launched(Vec<Child>);

impl Drop for Launched {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// Spawns `count` herd-vmm processes booting the probe guest `kernel` with `cmdline` (which
/// should halt it once booted) as fast as it can, and waits for every boot signal.
/// With `cpuid_cache`, herd-vmm gets `--cpuid-cache` as the agent gives it.
pub fn direct(
    vmm: &Path,
    kernel: &Path,
    cmdline: &str,
    count: usize,
    memory_mib: u64,
    cpuid_cache: Option<&Path>,
) -> anyhow::Result<Launch> {
    let (tx, rx) = mpsc::channel::<(usize, u128, Option<f64>)>();
    let mut launched = Launched(Vec::with_capacity(count));
    let mut spawned_at = Vec::with_capacity(count);
    let first = monotonic_ns();
    for i in 0..count {
        spawned_at.push(monotonic_ns());
        let mut cmd = Command::new(vmm);
        if let Some(dir) = cpuid_cache {
            cmd.arg("--cpuid-cache").arg(dir);
        }
        let mut child = cmd
            .arg("--kernel")
            .arg(kernel)
            .args(["--memory", &memory_mib.to_string()])
            .args(["--cmdline", cmdline])
            .env("HERD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", vmm.display()))?;
        let stderr = child.stderr.take().context("stderr is piped")?;
        launched.0.push(child);
        let tx = tx.clone();
        // A reader per VM, so each boot signal is timed as it is written, not when a single
        // reader gets round to it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(ms) = reported_ms(&line) {
                    let _ = tx.send((i, monotonic_ns(), Some(ms)));
                    return;
                }
            }
            let _ = tx.send((i, monotonic_ns(), None));
        });
    }
    let (mut boot, mut reported) = (vec![f64::NAN; count], vec![f64::NAN; count]);
    let mut last = first;
    for _ in 0..count {
        let (i, at, ms) = rx
            .recv_timeout(Duration::from_secs(120))
            .context("a guest never signalled boot")?;
        let ms = ms.with_context(|| format!("herd-vmm {i} ended before its guest booted"))?;
        boot[i] = (at - spawned_at[i]) as f64 / 1e6;
        reported[i] = ms;
        last = last.max(at);
    }
    drop(launched);
    Ok(Launch::new(
        "herd-vmm",
        (last - first) as f64 / 1e6,
        boot,
        reported,
    ))
}

/// Creates service `name` with `count` replicas of `image` in one request and waits until
/// every instance has signalled boot; then deletes the service and waits for its instances
/// to end.
pub fn agent(
    socket: &Path,
    image: &str,
    name: &str,
    count: usize,
    network: &str,
    memory_mib: u64,
) -> anyhow::Result<Launch> {
    let spec = json!({"name": name, "image": image, "replicas": count, "network": network,
        "memory_mib": memory_mib, "stop_timeout_ms": 100});
    let asked = unix_ms();
    api(socket, "POST", "/v1/services", Some(&spec))?;
    let mut booted = Vec::new();
    wait(Duration::from_secs(300), || {
        let all = instances(socket, name)?;
        if let Some(bad) = all.iter().find(|i| i["status"] == "exited") {
            bail!("instance {} ended during the launch: {bad}", bad["id"]);
        }
        booted = all
            .iter()
            .filter_map(|i| Some((i["started_at_ms"].as_u64()?, i["boot_time_ms"].as_u64()?)))
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        Ok(booted.len() == count)
    })
    .with_context(|| format!("{count} instances of {name} booting"))?;
    let done: Vec<f64> = booted
        .iter()
        .map(|(start, boot)| (start + boot).saturating_sub(asked) as f64)
        .collect();
    let reported = booted.iter().map(|(_, boot)| *boot as f64).collect();
    let wall = done.iter().copied().fold(0.0, f64::max);
    api(socket, "DELETE", &format!("/v1/services/{name}"), None)?;
    wait(Duration::from_secs(300), || {
        let all = instances(socket, name).unwrap_or_default();
        Ok(all.iter().all(|i| i["status"] == "exited"))
    })
    .with_context(|| format!("{name}'s instances stopping"))?;
    Ok(Launch::new("agent", wall, done, reported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_time_is_read_from_herd_vmms_line() {
        let line = " INFO Guest-boot-time = 2902 us 2 ms, 2768 CPU us 2 CPU ms";
        assert_eq!(reported_ms(line), Some(2.902));
        assert_eq!(reported_ms(" INFO something else"), None);
    }
}
