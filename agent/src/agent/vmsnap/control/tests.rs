use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt as _;
use tokio::net::UnixListener;

use super::*;

/// A fake herd-vmm control socket: answers each request line with `answer(action)` (`None`:
/// no answer, the connection stays open) and records every request as it arrived, with the
/// number of the connection it came on.
fn fake_vmm(
    path: &Path,
    answer: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> Arc<Mutex<Vec<(usize, String)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = UnixListener::bind(path).unwrap();
    let (log, answer) = (seen.clone(), Arc::new(answer));
    tokio::spawn(async move {
        let mut conn = 0;
        while let Ok((stream, _)) = listener.accept().await {
            conn += 1;
            let (log, answer) = (log.clone(), answer.clone());
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                while stream.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                    let request: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let action = request["action"].as_str().unwrap().to_owned();
                    log.lock().unwrap().push((conn, line.trim().to_owned()));
                    line.clear();
                    if let Some(reply) = answer(&action) {
                        stream.get_mut().write_all(reply.as_bytes()).await.unwrap();
                    }
                }
            });
        }
    });
    seen
}

fn honest(action: &str) -> Option<String> {
    Some(match action {
        "pause" => "{\"ok\":true,\"state\":\"paused\"}\n".to_owned(),
        "snapshot" => "{\"ok\":true,\"state\":\"paused\",\"bytes\":8192}\n".to_owned(),
        _ => "{\"ok\":true,\"state\":\"running\"}\n".to_owned(),
    })
}

fn requests(seen: &Mutex<Vec<(usize, String)>>) -> Vec<(usize, String)> {
    seen.lock().unwrap().clone()
}

const LONG: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "current_thread")]
async fn pause_snapshot_resume_go_in_order_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let seen = fake_vmm(&socket, honest);
    let taken = take(&socket, "/snapshot", LONG).await;
    assert_eq!(taken.snapshot.unwrap(), 8192);
    taken.paused.resumed.unwrap();
    assert_eq!(
        requests(&seen),
        [
            (1, r#"{"action":"pause"}"#.to_owned()),
            (1, r#"{"action":"snapshot","dir":"/snapshot"}"#.to_owned()),
            (1, r#"{"action":"resume"}"#.to_owned()),
        ]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_snapshot_still_resumes_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let seen = fake_vmm(&socket, |a| match a {
        "snapshot" => Some("{\"ok\":false,\"error\":\"disk full: no space\"}\n".into()),
        other => honest(other),
    });
    let taken = take(&socket, "/s", LONG).await;
    let err = taken.snapshot.unwrap_err();
    assert!(
        matches!(&err, ControlError::Refused { action: "snapshot", error } if error == "disk full: no space"),
        "{err:?}"
    );
    taken.paused.resumed.unwrap();
    let actions: Vec<String> = requests(&seen).into_iter().map(|r| r.1).collect();
    assert_eq!(actions.last().unwrap(), r#"{"action":"resume"}"#);
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_pause_leaves_the_running_vm_alone() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let seen = fake_vmm(&socket, |a| match a {
        "pause" => Some("{\"ok\":false,\"error\":\"busy\"}\n".into()),
        other => honest(other),
    });
    let taken = take(&socket, "/s", LONG).await;
    assert!(matches!(
        taken.snapshot,
        Err(ControlError::Refused {
            action: "pause",
            ..
        })
    ));
    taken.paused.resumed.unwrap();
    assert_eq!(requests(&seen).len(), 1, "nothing after the refused pause");
}

#[tokio::test(flavor = "current_thread")]
async fn after_a_timeout_or_a_bad_reply_the_vm_is_resumed_on_a_new_connection() {
    let dir = tempfile::tempdir().unwrap();
    // The snapshot is never answered.
    let socket = dir.path().join("slow.sock");
    let seen = fake_vmm(&socket, |a| (a != "snapshot").then(|| honest(a)).flatten());
    let taken = take(&socket, "/s", Duration::from_millis(50)).await;
    assert!(matches!(
        taken.snapshot,
        Err(ControlError::Timeout("snapshot", _))
    ));
    taken.paused.resumed.unwrap();
    assert_eq!(
        requests(&seen).last().unwrap(),
        &(2, r#"{"action":"resume"}"#.to_owned())
    );
    // A reply with a field the protocol does not have, or a line without end.
    for (name, reply) in [
        (
            "odd.sock",
            "{\"ok\":true,\"state\":\"paused\",\"extra\":1}\n".to_owned(),
        ),
        ("long.sock", "x".repeat(MAX_REPLY as usize + 10)),
        (
            "state.sock",
            "{\"ok\":true,\"state\":\"running\"}\n".to_owned(),
        ),
    ] {
        let socket = dir.path().join(name);
        let bad = reply.clone();
        let seen = fake_vmm(&socket, move |a| match a {
            "pause" => Some(bad.clone()),
            other => honest(other),
        });
        let taken = take(&socket, "/s", LONG).await;
        let err = taken.snapshot.unwrap_err();
        let expected = match name {
            "odd.sock" => matches!(err, ControlError::BadReply("pause", _)),
            "long.sock" => matches!(err, ControlError::TooLong("pause")),
            _ => matches!(
                err,
                ControlError::WrongState {
                    action: "pause",
                    state: VmState::Running
                }
            ),
        };
        assert!(expected, "{name}: {err:?}");
        taken.paused.resumed.unwrap();
        assert_eq!(requests(&seen).last().unwrap().0, 2, "{name}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn only_a_socket_is_connected_to() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.sock");
    let seen = fake_vmm(&real, honest);
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let taken = take(&link, "/s", LONG).await;
    assert!(matches!(taken.snapshot, Err(ControlError::NotASocket(_))));
    let missing = take(&dir.path().join("missing"), "/s", LONG).await;
    assert!(matches!(missing.snapshot, Err(ControlError::Connect(..))));
    assert!(requests(&seen).is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn a_vm_left_paused_is_resumed_and_a_running_one_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    for (state, resumed) in [("paused", true), ("running", false)] {
        let socket = dir.path().join(format!("{state}.sock"));
        let status = format!("{{\"ok\":true,\"state\":\"{state}\"}}\n");
        let seen = fake_vmm(&socket, move |a| match a {
            "status" => Some(status.clone()),
            other => honest(other),
        });
        assert_eq!(resume_if_paused(&socket).await.unwrap(), resumed, "{state}");
        let actions: Vec<String> = requests(&seen).into_iter().map(|r| r.1).collect();
        let mut want = vec![r#"{"action":"status"}"#.to_owned()];
        if resumed {
            want.push(r#"{"action":"resume"}"#.to_owned());
        }
        assert_eq!(actions, want, "{state}");
    }
}
