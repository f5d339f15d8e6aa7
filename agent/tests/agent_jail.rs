//! End-to-end: the agent jails every instance by default. Each instance's herd-vmm runs as
//! its own unprivileged uid, under seccomp, in its own namespaces with its directory as `/`,
//! inside a cgroup with the service's limits, and the cgroup goes when the instance does.

mod common;

use std::path::{Path, PathBuf};

use common::{Agent, HALT, pid_of, service};
use serde_json::json;

/// The jailed process: the only child of the herd-vmm the agent started (which forks it
/// after opening its inputs, so it may take a moment to appear).
fn jailed_child(pid: i32) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
        let children: Vec<i32> = (children.unwrap_or_default().split_whitespace())
            .map(|c| c.parse().unwrap())
            .collect();
        match children[..] {
            [child] => return child,
            [] if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            _ => panic!("herd-vmm {pid} should have one jailed child: {children:?}"),
        }
    }
}

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line[field.len()..].trim().to_owned()
}

/// `pid`'s memory cgroup directory and the name of its limit file (v1 or v2).
fn memory_cgroup(pid: i32) -> (PathBuf, &'static str) {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let field = |line: &str| line.splitn(3, ':').nth(2).unwrap().to_owned();
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let path = field(own.lines().find(|l| l.starts_with("0::")).unwrap());
        return (PathBuf::from(format!("/sys/fs/cgroup{path}")), "memory.max");
    }
    let line = own
        .lines()
        .find(|l| l.split(':').nth(1) == Some("memory"))
        .unwrap();
    let dir = PathBuf::from(format!("/sys/fs/cgroup/memory{}", field(line)));
    (dir, "memory.limit_in_bytes")
}

#[test]
fn instances_run_jailed_each_as_its_own_user_in_a_cgroup_that_goes_with_them() {
    let Some(agent) = Agent::new("agent jail tests") else {
        return;
    };
    let image = agent.probe_image("1", HALT);
    let mut spec = service("web", &image, 2);
    spec["network"] = json!("none");
    spec["memory_mib"] = json!(96);
    let (status, created) = agent.api("POST", "/v1/services", Some(&spec));
    assert_eq!(status, 201, "{created}");
    agent.wait_for("2 instances", || agent.running("web").len() == 2);
    let mut uids = Vec::new();
    let mut cgroups = Vec::new();
    for instance in agent.running("web") {
        let id = instance["id"].as_str().unwrap().to_owned();
        let child = jailed_child(pid_of(&instance));
        let uid: u32 = status_field(child, "Uid:")
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(uid >= 3_000_000, "jailed as uid {uid}");
        uids.push(uid);
        // The filters go on once the VM is built, before the guest first runs.
        agent.wait_for("the VM to be built", || {
            status_field(child, "Seccomp:") == "2"
        });
        assert_eq!(status_field(child, "NoNewPrivs:"), "1");
        assert_eq!(status_field(child, "CapEff:"), "0000000000000000");
        // Its `/` is its own instance directory: its console log, archive and socket.
        let root: Vec<String> = std::fs::read_dir(format!("/proc/{child}/root"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(root.iter().any(|f| f == "vsock.sock"), "{root:?}");
        assert!(!root.iter().any(|f| f == "etc" || f == "proc"), "{root:?}");
        let (dir, limit) = memory_cgroup(child);
        assert!(dir.ends_with(&id), "{dir:?} is the instance's own group");
        let bytes: u64 = std::fs::read_to_string(dir.join(limit))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            bytes,
            (96 + 32) << 20,
            "guest memory plus the default allowance"
        );
        cgroups.push(dir);
    }
    uids.dedup();
    assert_eq!(uids.len(), 2, "each instance has its own uid");
    let (status, _) = agent.api("DELETE", "/v1/services/web", None);
    assert!(status < 300);
    agent.wait_for("the instances and their cgroups to go", || {
        agent.running("web").is_empty() && cgroups.iter().all(|d| !d.exists())
    });
}
