//! Each jailed instance's cgroup: created with its memory, CPU and pids limits before herd-vmm
//! starts (herd-vmm joins it itself, before it allocates anything), removed once the instance
//! has ended. Works on a cgroup v2 host and on a v1 host (one directory per controller).
//!
//! The groups live under the agent's own cgroup (read from `/proc/self/cgroup`), in
//! `<group>/<instance id>`, so an agent run by a service manager stays inside what it was
//! delegated; `<group>` is named after the agent's state directory, so agents sharing a
//! cgroup never sweep each other's instances. On v2 the agent first moves itself into a
//! `herd-agent` leaf, as the v2 rule "no processes in a group that distributes controllers"
//! asks.

use std::io;
use std::path::{Path, PathBuf};

const AGENT_LEAF: &str = "herd-agent";
const CPU_PERIOD_US: u64 = 100_000;

/// Errors setting up or using cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("no usable cgroup hierarchy under {0}: neither v2 nor v1 with memory, cpu and pids")]
    NoHierarchy(PathBuf),
    #[error("cannot write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create {0}")]
    Create(PathBuf, #[source] io::Error),
}

/// The limits of one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Guest memory plus the VMM's allowance; swap is not allowed on top.
    pub memory_bytes: u64,
    /// CPU time per 100 ms period, in microseconds (100 000 per vCPU).
    pub cpu_quota_us: u64,
    /// Processes and threads (herd-vmm's two processes, its vCPU threads, KVM's workers).
    pub pids: u32,
}

impl Limits {
    /// The limits for a VM of `vcpus` and `memory_mib`, allowing `overhead_mib` for herd-vmm
    /// and the kernel's memory for the VM (page tables, KVM's structures).
    pub fn for_vm(vcpus: u8, memory_mib: u32, overhead_mib: u32) -> Self {
        Self {
            memory_bytes: (u64::from(memory_mib) + u64::from(overhead_mib)) << 20,
            cpu_quota_us: u64::from(vcpus) * CPU_PERIOD_US,
            pids: u32::from(vcpus) + 8,
        }
    }
}

/// Where the instances' groups are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v2: `group/<id>`, `group` under the agent's own cgroup.
    V2 { group: PathBuf },
    /// cgroup v1: `<group>/<id>` in the memory, cpu and pids hierarchies.
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
    },
}

impl Cgroups {
    /// Finds the hierarchy under `mount` (normally `/sys/fs/cgroup`) from the agent's own
    /// `/proc/self/cgroup` text, and creates `group` for the instances (v2: after moving the
    /// agent to its leaf, with the controllers enabled).
    pub fn detect(mount: &Path, self_cgroup: &str, group: &str) -> Result<Self, CgroupError> {
        let own = |controller: &str| -> Option<PathBuf> {
            self_cgroup.lines().find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                let hit = names.split(',').any(|n| n == controller);
                hit.then(|| PathBuf::from(path.trim_start_matches('/')))
            })
        };
        if mount.join("cgroup.controllers").is_file() {
            let base = mount.join(own("").unwrap_or_default());
            let group = base.join(group);
            prepare_v2(&base, &group)?;
            return Ok(Self::V2 { group });
        }
        let dir = |c: &str| {
            let root = mount.join(c);
            root.join("cgroup.procs")
                .is_file()
                .then(|| root.join(own(c).unwrap_or_default()).join(group))
        };
        match (dir("memory"), dir("cpu"), dir("pids")) {
            (Some(memory), Some(cpu), Some(pids)) => {
                for d in [&memory, &cpu, &pids] {
                    create_dir(d)?;
                }
                Ok(Self::V1 { memory, cpu, pids })
            }
            _ => Err(CgroupError::NoHierarchy(mount.to_owned())),
        }
    }

    /// Creates the group of instance `id` with `limits`; returns its directories, for
    /// `herd-vmm --jail-cgroup`.
    pub fn create(&self, id: &str, limits: &Limits) -> Result<Vec<PathBuf>, CgroupError> {
        let quota = limits.cpu_quota_us.to_string();
        let (memory, pids) = (limits.memory_bytes.to_string(), limits.pids.to_string());
        match self {
            Self::V2 { group } => {
                let dir = group.join(id);
                create_dir(&dir)?;
                write(&dir, "memory.max", &memory)?;
                write_if_present(&dir, "memory.swap.max", "0")?;
                write(&dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
                write(&dir, "pids.max", &pids)?;
                Ok(vec![dir])
            }
            Self::V1 {
                memory: m,
                cpu: c,
                pids: p,
            } => {
                let dirs = [m.join(id), c.join(id), p.join(id)];
                for d in &dirs {
                    create_dir(d)?;
                }
                write(&dirs[0], "memory.limit_in_bytes", &memory)?;
                // Present only with swap accounting; then swap may not add to the limit.
                write_if_present(&dirs[0], "memory.memsw.limit_in_bytes", &memory)?;
                write(&dirs[1], "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                write(&dirs[1], "cpu.cfs_quota_us", &quota)?;
                write(&dirs[2], "pids.max", &pids)?;
                Ok(dirs.to_vec())
            }
        }
    }

    /// The directories instance `id`'s group has (whether or not they exist).
    pub fn dirs(&self, id: &str) -> Vec<PathBuf> {
        match self {
            Self::V2 { group } => vec![group.join(id)],
            Self::V1 { memory, cpu, pids } => vec![memory.join(id), cpu.join(id), pids.join(id)],
        }
    }

    /// Removes instance `id`'s group. A group still holding a process that is exiting
    /// cannot be removed yet (`EBUSY`): asked again a few times, briefly.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        for dir in self.dirs(id) {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if tries < 50
                            && e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) =>
                    {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// The agent's group of instance groups: one directory on v2, one per controller on v1.
    fn groups(&self) -> Vec<PathBuf> {
        match self {
            Self::V2 { group } => vec![group.clone()],
            Self::V1 { memory, cpu, pids } => vec![memory.clone(), cpu.clone(), pids.clone()],
        }
    }

    /// Removes the agent's group of instance groups if no instance group is left in it (an
    /// agent stopping with instances running leaves it for the next agent).
    pub fn remove_group_if_empty(&self) {
        for group in self.groups() {
            // rmdir fails on a group with child groups, which is what keeps them.
            let _ = std::fs::remove_dir(group);
        }
    }

    /// Groups of instances not in `live` (left by a crash): removed.
    pub fn sweep(&self, live: &dyn Fn(&str) -> bool) {
        let mut stale = std::collections::BTreeSet::new();
        for parent in self.groups() {
            for entry in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.path().is_dir() && !live(&name) {
                    stale.insert(name);
                }
            }
        }
        for id in stale {
            if let Err(e) = self.remove(&id) {
                tracing::warn!(instance = id, error = %e, "cannot remove a stale cgroup");
            }
        }
    }
}

/// v2: moves the agent into its own leaf, then lets `base` and the instances' `group` hand
/// memory, cpu and pids down.
fn prepare_v2(base: &Path, group: &Path) -> Result<(), CgroupError> {
    let leaf = base.join(AGENT_LEAF);
    create_dir(&leaf)?;
    write(&leaf, "cgroup.procs", "0")?;
    create_dir(group)?;
    for dir in [base, group] {
        write(dir, "cgroup.subtree_control", "+memory +cpu +pids")?;
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(CgroupError::Create(dir.to_owned(), e)),
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|source| CgroupError::Write {
        path,
        value: value.to_owned(),
        source,
    })
}

fn write_if_present(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    if dir.join(file).exists() {
        write(dir, file, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

    /// A fake v1 mount: controller directories with their `cgroup.procs`.
    fn fake_v1(root: &Path) {
        for c in V1_CONTROLLERS {
            std::fs::create_dir_all(root.join(c).join("agents/a1")).unwrap();
            std::fs::write(root.join(c).join("cgroup.procs"), "").unwrap();
        }
    }

    #[test]
    fn v1_groups_go_under_the_agents_own_group_per_controller_with_the_limits() {
        let mount = tempfile::tempdir().unwrap();
        fake_v1(mount.path());
        let own = "4:memory:/agents/a1\n3:cpu,cpuacct:/agents/a1\n8:pids:/agents/a1\n0::/\n";
        let cgroups = Cgroups::detect(mount.path(), own, "herd-1").unwrap();
        let limits = Limits::for_vm(2, 64, 32);
        let dirs = cgroups.create("web-1", &limits).unwrap();
        let expect = |c: &str| mount.path().join(c).join("agents/a1/herd-1/web-1");
        assert_eq!(dirs, [expect("memory"), expect("cpu"), expect("pids")]);
        let read = |d: &Path, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(
            read(&dirs[0], "memory.limit_in_bytes"),
            (96u64 << 20).to_string()
        );
        assert!(!dirs[0].join("memory.memsw.limit_in_bytes").exists());
        assert_eq!(read(&dirs[1], "cpu.cfs_quota_us"), "200000");
        assert_eq!(read(&dirs[1], "cpu.cfs_period_us"), "100000");
        assert_eq!(read(&dirs[2], "pids.max"), "10");
    }

    #[test]
    fn v2_moves_the_agent_to_a_leaf_and_enables_controllers_for_the_instances() {
        let mount = tempfile::tempdir().unwrap();
        std::fs::write(mount.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        std::fs::create_dir_all(mount.path().join("system.slice/herd.service")).unwrap();
        let base = mount.path().join("system.slice/herd.service");
        let own = "0::/system.slice/herd.service\n";
        let cgroups = Cgroups::detect(mount.path(), own, "herd-1").unwrap();
        let group = base.join("herd-1");
        assert_eq!(
            cgroups,
            Cgroups::V2 {
                group: group.clone()
            }
        );
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(base.join("herd-agent/cgroup.procs")), "0");
        assert_eq!(
            read(base.join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        let dirs = cgroups
            .create("web-1", &Limits::for_vm(1, 128, 32))
            .unwrap();
        assert_eq!(dirs, [group.join("web-1")]);
        assert_eq!(
            read(group.join("cgroup.subtree_control")),
            "+memory +cpu +pids"
        );
        assert_eq!(read(dirs[0].join("cpu.max")), "100000 100000");
        assert_eq!(read(dirs[0].join("memory.max")), (160u64 << 20).to_string());
    }

    #[test]
    fn a_host_without_the_controllers_is_refused_and_stale_groups_are_swept() {
        let mount = tempfile::tempdir().unwrap();
        let err = Cgroups::detect(mount.path(), "0::/\n", "herd-1").unwrap_err();
        assert!(matches!(err, CgroupError::NoHierarchy(_)));
        fake_v1(mount.path());
        let cgroups = Cgroups::detect(mount.path(), "0::/\n", "herd-1").unwrap();
        for id in ["live-1", "dead-1"] {
            for dir in cgroups.dirs(id) {
                std::fs::create_dir_all(dir).unwrap();
            }
        }
        cgroups.sweep(&|id| id == "live-1");
        assert!(cgroups.dirs("live-1").iter().all(|d| d.exists()));
        assert!(cgroups.dirs("dead-1").iter().all(|d| !d.exists()));
        // The agent's group stays while an instance's group is in it, and goes after.
        let group = mount.path().join("memory/herd-1");
        cgroups.remove_group_if_empty();
        assert!(group.exists());
        cgroups.sweep(&|_| false);
        cgroups.remove_group_if_empty();
        assert!(!group.exists());
    }
}
