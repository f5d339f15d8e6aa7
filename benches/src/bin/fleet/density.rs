//! Density: idle instances started through the agent in steps until the count asked for is
//! reached or the host's memory budget is used up, with what each step costs: each
//! instance's RSS and PSS split into the VMM's share and the guest's, the host memory used
//! per instance (which also counts what the host kernel holds for each VM: page tables,
//! KVM's structures, thread stacks), and the agent's own memory and CPU.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use herd_benches::agent::{api, instances, wait};
use herd_benches::proc_cpu::cpu_us;
use herd_benches::procmem::{host_used_kib, mem_available_kib, process_memory, rss_pss_kib};
use serde::Serialize;
use serde_json::json;

/// What to run.
pub struct Plan {
    pub max: usize,
    pub step: usize,
    pub memory_mib: u64,
    pub network: String,
    /// Host memory (KiB) that must stay available: the budget is what is above it.
    pub reserve_kib: u64,
    /// How long the fleet is watched, idle, at each step to measure CPU.
    pub idle_window: Duration,
}

/// The fleet at one step, memory in KiB (means per instance unless named otherwise).
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub instances: usize,
    pub vmm_rss_kib: f64,
    pub vmm_pss_kib: f64,
    pub guest_rss_kib: f64,
    pub guest_pss_kib: f64,
    /// Host memory in use (not counting caches) added since the start, per instance: the
    /// processes and what the kernel holds for each VM.
    pub host_kib: f64,
    /// The same for this step's instances alone: its added host memory over its added
    /// instances (immune to an earlier phase's memory still being freed at the start).
    pub host_marginal_kib: f64,
    pub agent_rss_kib: u64,
    pub agent_pss_kib: u64,
    /// The agent's CPU over the idle window, in % of one core.
    pub agent_cpu_pct: f64,
    /// All the instances' herd-vmm CPU over the idle window, in % of one core.
    pub instances_cpu_pct: f64,
    /// Scale request to every new instance's boot signal, in ms.
    pub scale_ms: f64,
}

/// Runs `plan` against the agent at `socket` (its pid `agent_pid`) with `image`.
pub fn run(socket: &Path, agent_pid: u32, image: &str, plan: &Plan) -> anyhow::Result<Vec<Step>> {
    // Let an earlier phase's VMs finish going away before the baseline.
    std::thread::sleep(Duration::from_secs(2));
    let (start_available, start_used) = (mem_available_kib()?, host_used_kib()?);
    let budget = start_available.saturating_sub(plan.reserve_kib);
    let spec = json!({"name": "idle", "image": image, "replicas": 0, "network": plan.network,
        "memory_mib": plan.memory_mib, "stop_timeout_ms": 100});
    api(socket, "POST", "/v1/services", Some(&spec))?;
    let mut steps = Vec::new();
    let mut count = 0;
    while count < plan.max {
        let spent = start_available.saturating_sub(mem_available_kib()?);
        if spent >= budget {
            eprintln!("density: the memory budget is used at {count} instances");
            break;
        }
        count = (count + plan.step).min(plan.max);
        let scale_ms = scale_to(socket, count)?;
        let step = measure(
            socket,
            agent_pid,
            count,
            start_used,
            plan,
            scale_ms,
            steps.last(),
        )?;
        eprintln!(
            "density: {count:>4} instances  VMM PSS {:>6.0} KiB  guest PSS {:>6.0} KiB  host {:>6.0} KiB each ({:>6.0} for the last step's)  agent {:>6} KiB {:.1}% CPU  instances {:.1}% CPU",
            step.vmm_pss_kib,
            step.guest_pss_kib,
            step.host_kib,
            step.host_marginal_kib,
            step.agent_rss_kib,
            step.agent_cpu_pct,
            step.instances_cpu_pct
        );
        steps.push(step);
    }
    Ok(steps)
}

/// Scales `idle` to `count` and waits until all have booted; ms taken.
fn scale_to(socket: &Path, count: usize) -> anyhow::Result<f64> {
    let t = Instant::now();
    api(
        socket,
        "POST",
        "/v1/services/idle/scale",
        Some(&json!({"replicas": count})),
    )?;
    wait(Duration::from_secs(600), || {
        std::thread::sleep(Duration::from_millis(50));
        let all = instances(socket, "idle")?;
        let booted = all
            .iter()
            .filter(|i| i["status"] != "exited" && i["boot_time_ms"].is_u64())
            .count();
        Ok(booted >= count)
    })
    .with_context(|| format!("{count} idle instances booting"))?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn pids(socket: &Path) -> anyhow::Result<Vec<u32>> {
    Ok(instances(socket, "idle")?
        .iter()
        .filter(|i| i["status"] != "exited")
        .filter_map(|i| i["pid"].as_u64().map(|p| p as u32))
        .collect())
}

fn measure(
    socket: &Path,
    agent_pid: u32,
    count: usize,
    start_used: u64,
    plan: &Plan,
    scale_ms: f64,
    previous: Option<&Step>,
) -> anyhow::Result<Step> {
    let pids = pids(socket)?;
    // Let the just-booted instances settle before their idle cost is counted.
    std::thread::sleep(Duration::from_millis(500));
    let cpu = |pids: &[u32]| -> f64 {
        pids.iter()
            .filter_map(|p| cpu_us(*p).ok())
            .map(|c| c.1)
            .sum()
    };
    let (agent_before, fleet_before, t) = (cpu_us(agent_pid)?.1, cpu(&pids), Instant::now());
    std::thread::sleep(plan.idle_window);
    let window_us = t.elapsed().as_secs_f64() * 1e6;
    let agent_cpu_pct = (cpu_us(agent_pid)?.1 - agent_before) / window_us * 100.0;
    let instances_cpu_pct = (cpu(&pids) - fleet_before) / window_us * 100.0;
    let guest_kib = plan.memory_mib * 1024;
    let mut sum = [0u64; 4];
    for pid in &pids {
        let m = process_memory(*pid, guest_kib)?;
        for (s, v) in sum.iter_mut().zip([
            m.vmm_rss_kib,
            m.vmm_pss_kib,
            m.guest_rss_kib,
            m.guest_pss_kib,
        ]) {
            *s += v;
        }
    }
    let n = pids.len().max(1) as f64;
    let (agent_rss_kib, agent_pss_kib) = rss_pss_kib(agent_pid)?;
    let spent = host_used_kib()?.saturating_sub(start_used) as f64;
    let (before_count, before_spent) =
        previous.map_or((0, 0.0), |p| (p.instances, p.host_kib * p.instances as f64));
    Ok(Step {
        instances: count,
        vmm_rss_kib: sum[0] as f64 / n,
        vmm_pss_kib: sum[1] as f64 / n,
        guest_rss_kib: sum[2] as f64 / n,
        guest_pss_kib: sum[3] as f64 / n,
        host_kib: spent / count as f64,
        host_marginal_kib: (spent - before_spent) / (count - before_count) as f64,
        agent_rss_kib,
        agent_pss_kib,
        agent_cpu_pct,
        instances_cpu_pct,
        scale_ms,
    })
}
