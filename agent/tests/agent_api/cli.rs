//! The `herd` client commands through the real binary against the fake agent: tables by
//! default, the agent's JSON with `--json`, specs from flags and files, API errors as one line
//! with the field, and the exit statuses.

use herd::agent::types::Request;
use serde_json::Value;

use super::fake::{self, Agent};

struct Run {
    status: i32,
    stdout: String,
    stderr: String,
}

/// Runs `herd ARGS --socket <agent's>` without blocking the runtime the agent is served on.
async fn herd(agent: &Agent, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(args)
        .arg("--socket")
        .arg(&agent.socket)
        .env_remove("HERD_SOCKET")
        .output()
        .await
        .unwrap();
    Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn listings_print_aligned_tables_or_the_agents_json() {
    let agent = Agent::start().await;
    let ls = herd(&agent, &["service", "ls"]).await;
    assert_eq!(ls.status, 0, "{}", ls.stderr);
    let lines: Vec<&str> = ls.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", ls.stdout);
    let header = [
        "NAME",
        "IMAGE",
        "GEN",
        "RUNNING/REPLICAS",
        "HEALTHY",
        "STATE",
    ];
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), header);
    assert!(
        lines[1].starts_with("web   hello:1@abababababab  2    2/2"),
        "{}",
        ls.stdout
    );
    assert!(
        lines[1].ends_with("rolling out from gen 1, starts from a snapshot"),
        "{}",
        ls.stdout
    );
    let ps = herd(&agent, &["ps"]).await;
    assert_eq!(ps.status, 0, "{}", ps.stderr);
    let rows: Vec<Vec<&str>> = ps
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "ID", "SERVICE", "GEN", "STATUS", "ADDRESS", "UPTIME", "BOOT(ms)", "START"
        ]
    );
    assert_eq!(
        rows[1],
        [
            "web-000002a1",
            "web",
            "2",
            "healthy",
            "172.31.0.2/24",
            "3m07s",
            "31",
            "boot"
        ]
    );
    assert_eq!(
        rows[2],
        [
            "web-000001b7",
            "web",
            "1",
            "exited(unhealthy,143)",
            "-",
            "900ms",
            "-",
            "snapshot"
        ]
    );
    let json = herd(&agent, &["ps", "--service", "web", "--json"]).await;
    let listed: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(listed, serde_json::to_value(fake::instances()).unwrap());
    assert_eq!(
        agent.seen().last(),
        Some(&Request::ListInstances {
            service: Some("web".into())
        })
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn specs_come_from_flags_or_files_and_update_keeps_what_is_not_given() {
    let agent = Agent::start().await;
    let create = herd(
        &agent,
        &[
            "service",
            "create",
            "--name",
            "api",
            "--image",
            "api:2",
            "--replicas",
            "3",
            "--env",
            "A=1",
            "--health-http",
            "8080:/healthz",
            "--snapshot-starts",
        ],
    )
    .await;
    assert_eq!(create.status, 0, "{}", create.stderr);
    assert!(create.stdout.contains("api:2@"), "{}", create.stdout);
    let Some(Request::CreateService(spec)) = agent.seen().last().cloned() else {
        panic!("{:?}", agent.seen());
    };
    assert_eq!((spec.name.as_str(), spec.replicas), ("api", 3));
    assert!(spec.snapshot_starts);
    assert_eq!(spec.env.get("A").map(String::as_str), Some("1"));
    let probe = serde_json::to_value(&spec.health_check).unwrap();
    assert_eq!(
        probe["http"],
        serde_json::json!({"port": 8080, "path": "/healthz"})
    );
    // Update with flags: the current spec (GET) with only --replicas and --env changed.
    let update = herd(
        &agent,
        &[
            "service",
            "update",
            "--name",
            "web",
            "--replicas",
            "4",
            "--env",
            "B=2",
            "--snapshot-starts=false",
        ],
    )
    .await;
    assert_eq!(update.status, 0, "{}", update.stderr);
    let Some(Request::UpdateService(spec)) = agent.seen().last().cloned() else {
        panic!("{:?}", agent.seen());
    };
    let mut expected = fake::web_spec();
    expected.replicas = 4;
    expected.env.insert("B".into(), "2".into());
    expected.snapshot_starts = false;
    assert_eq!(spec, expected);
    // A file.
    let file = agent.dir.path().join("spec.json");
    std::fs::write(&file, r#"{"name":"db","image":"db:1","replicas":1}"#).unwrap();
    let from_file = herd(
        &agent,
        &["service", "create", "-f", file.to_str().unwrap(), "--json"],
    )
    .await;
    assert_eq!(from_file.status, 0, "{}", from_file.stderr);
    let created: Value = serde_json::from_str(&from_file.stdout).unwrap();
    assert_eq!(created["spec"]["name"], "db");
    let rm = herd(&agent, &["service", "rm", "web"]).await;
    assert_eq!(
        (rm.status, rm.stdout.as_str()),
        (0, "web\n"),
        "{}",
        rm.stderr
    );
    assert_eq!(
        agent.seen().last(),
        Some(&Request::DeleteService { name: "web".into() })
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn errors_print_one_line_with_the_field_and_exit_non_zero() {
    let agent = Agent::start().await;
    let before = agent.seen().len();
    // Checked before sending: the agent never sees it.
    let local = herd(
        &agent,
        &["service", "create", "--name", "Web", "--image", "x"],
    )
    .await;
    assert_eq!(local.status, 65, "{}", local.stderr);
    assert!(
        local.stderr.starts_with("herd: error: "),
        "{}",
        local.stderr
    );
    assert!(
        local.stderr.trim_end().ends_with("(field name)"),
        "{}",
        local.stderr
    );
    let file = agent.dir.path().join("bad.json");
    std::fs::write(&file, r#"{"name":"a","image":"i","replica":3}"#).unwrap();
    let bad_file = herd(&agent, &["service", "create", "-f", file.to_str().unwrap()]).await;
    assert_eq!(bad_file.status, 65, "{}", bad_file.stderr);
    assert!(
        bad_file.stderr.contains("(field replica)"),
        "{}",
        bad_file.stderr
    );
    assert_eq!(agent.seen().len(), before);
    // Refused by the agent.
    let missing = herd(&agent, &["service", "scale", "nope", "2"]).await;
    assert_eq!(missing.status, 66, "{}", missing.stderr);
    assert_eq!(
        missing.stderr,
        "herd: error: service \"nope\" does not exist\n"
    );
    let exists = herd(
        &agent,
        &["service", "create", "--name", "web", "--image", "x"],
    )
    .await;
    assert_eq!(exists.status, 65, "{}", exists.stderr);
    let usage = herd(&agent, &["service", "create", "--name", "web"]).await;
    assert_eq!(usage.status, 64, "{}", usage.stderr);
    let killed = herd(&agent, &["kill", "web-000002a1"]).await;
    assert_eq!(
        (killed.status, killed.stdout.as_str()),
        (0, "web-000002a1\n")
    );
    let dir = agent.dir.path().to_owned();
    agent.stop().await.unwrap();
    let no_agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["ps", "--socket"])
        .arg(dir.join("none.sock"))
        .output()
        .await
        .unwrap();
    assert_eq!(no_agent.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&no_agent.stderr);
    assert!(stderr.contains("is `herd agent` running?"), "{stderr}");
}
