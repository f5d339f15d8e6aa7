//! End-to-end: the guest console in a size-capped log (`--console-log-max-bytes`). The probe
//! guest reports a long command line and a few 1 KiB text files from its initrd, several caps'
//! worth of output, and the rotated log must keep the end of it.

use std::path::Path;

use herd_tests::vm::{TestVm, kvm_available};

const CAP: u64 = 4096;

/// A newc cpio archive of regular files (what the probe reads `herd/` files from).
fn newc(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entry = |name: &str, mode: u32, data: &[u8]| {
        let namesize = name.len() + 1;
        let mode = mode as usize;
        let fields = [0, mode, 0, 0, 1, 0, data.len(), 0, 0, 0, 0, namesize, 0];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
    };
    for (name, data) in files {
        entry(name, 0o100644, data);
    }
    entry("TRAILER!!!", 0, &[]);
    out
}

/// Eight files of 1000 printable bytes each, different per file so order shows.
fn text_files() -> Vec<(String, Vec<u8>)> {
    (0..8u8)
        .map(|i| {
            let text = (0..1000u32).map(|j| b'a' + ((j + u32::from(i)) % 26) as u8);
            (format!("herd/text{i}"), text.collect())
        })
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn capped_console_log_rotates_and_keeps_the_end_of_the_output_in_order() {
    if !kvm_available("capped_console_log_rotates_and_keeps_the_end_of_the_output_in_order") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("text.cpio");
    std::fs::write(&initrd, newc(&text_files())).unwrap();
    let cmdline = format!("exit=6 pad={}", "0123456789".repeat(200));
    let vm = || {
        TestVm::probe_pvh()
            .args(["--initrd".as_ref(), initrd.as_os_str()])
            .cmdline(&cmdline)
    };
    // The whole output, on stdout, to compare the log with.
    let reference = vm().run();
    assert_eq!(reference.code(), 6, "{reference:#?}");
    let full = format!("{}\n", reference.stdout);
    assert!(
        full.len() as u64 > 2 * CAP,
        "output should rotate more than once: {} bytes",
        full.len()
    );

    let log = dir.path().join("console.log");
    let rotated = dir.path().join("console.log.1");
    let capped = vm()
        .args(["--console-log".as_ref(), log.as_os_str()])
        .args(["--console-log-max-bytes", &CAP.to_string()])
        .run();
    assert_eq!(capped.code(), 6, "{capped:#?}");
    let (older, newer) = (read(&rotated), read(&log));
    assert!(older.len() as u64 <= CAP && newer.len() as u64 <= CAP);
    assert!(
        !older.is_empty() && !newer.is_empty(),
        "{older:?} {newer:?}"
    );
    let kept = older + &newer;
    assert!(
        full.ends_with(&kept),
        "PATH.1 then PATH should be the end of the output:\n{kept}"
    );
    assert!(kept.ends_with("probe: done exit=6\n"), "{kept}");
}

#[test]
fn a_rotated_log_left_by_an_earlier_run_is_removed_at_start() {
    if !kvm_available("a_rotated_log_left_by_an_earlier_run_is_removed_at_start") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    let rotated = dir.path().join("console.log.1");
    std::fs::write(&rotated, "an earlier VM's output\n").unwrap();
    let vm = TestVm::probe_pvh()
        .args(["--console-log".as_ref(), log.as_os_str()])
        .args(["--console-log-max-bytes", "1048576"])
        .cmdline("exit=2")
        .run();
    assert_eq!(vm.code(), 2, "{vm:#?}");
    assert!(!rotated.exists(), "stale PATH.1 should be gone");
    let text = read(&log);
    assert!(
        text.starts_with("probe: boot=pvh\n") && text.ends_with("probe: done exit=2\n"),
        "{text}"
    );
}
