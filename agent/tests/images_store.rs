//! End-to-end tests of the store commands through the real binary: `save`/`load` round trips
//! and tampered archives, corrupt blobs, `images`, `image inspect`, `image rm`, leftovers of
//! interrupted builds, concurrent builds, and the help text.

mod image_env;

use image_env::Env;

#[test]
fn save_and_load_round_trip_keeps_the_digest() {
    let env = Env::new();
    let digest = env
        .build(&["--binary", "/usr/bin/true", "--version", "1"])
        .ok()
        .digest();
    let tar = env.path("true.tar");
    assert_eq!(
        env.herd(&["save", "true:1", "-o", tar.to_str().unwrap()])
            .ok()
            .digest(),
        digest
    );
    let other = Env::new();
    assert_eq!(
        other.herd(&["load", tar.to_str().unwrap()]).ok().digest(),
        digest
    );
    assert_eq!(other.inspect("true")["digest"], digest.as_str());
    let again = other.path("again.tar");
    other
        .herd(&[
            "--home",
            other.home.path().to_str().unwrap(),
            "save",
            &digest[7..15],
            "-o",
            again.to_str().unwrap(),
        ])
        .ok();
    assert_eq!(
        std::fs::read(&tar).unwrap(),
        std::fs::read(&again).unwrap(),
        "saved tarballs are identical"
    );
    let listing = tar_listing(&std::fs::read(&tar).unwrap());
    assert_eq!(listing[..2], ["blobs/", "blobs/sha256/"]);
    assert_eq!(listing[listing.len() - 2..], ["index.json", "oci-layout"]);
    assert_eq!(listing.len(), 8);
}

fn tar_listing(bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[test]
fn a_flipped_byte_in_a_saved_image_is_refused_and_the_store_is_unchanged() {
    let env = Env::new();
    env.build(&["--binary", "/usr/bin/true", "--version", "1"])
        .ok();
    let tar = env.path("true.tar");
    env.herd(&["save", "true", "-o", tar.to_str().unwrap()])
        .ok();
    let bytes = std::fs::read(&tar).unwrap();
    let other = Env::new();
    other
        .build(&[
            "--binary",
            "/usr/bin/true",
            "--name",
            "other",
            "--version",
            "1",
        ])
        .ok();
    let snapshot = other.snapshot();
    let bad = other.path("bad.tar");
    // A byte in the middle of the initramfs, the largest blob: a digest mismatch naming it.
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 1;
    std::fs::write(&bad, &flipped).unwrap();
    other
        .herd(&["load", bad.to_str().unwrap()])
        .fails(65, "digest mismatch: blob sha256:");
    assert_eq!(other.snapshot(), snapshot);
    // Anywhere else too: headers, padding, index.json, the end of the archive.
    for at in (0..bytes.len())
        .step_by(bytes.len() / 40)
        .chain([bytes.len() - 1, 148, 155])
    {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x10;
        std::fs::write(&bad, &flipped).unwrap();
        let run = other.herd(&["load", bad.to_str().unwrap()]);
        assert_eq!(run.code, 65, "flipped byte at {at}: {run:#?}");
    }
    let mut truncated = bytes.clone();
    truncated.truncate(bytes.len() - 2048);
    std::fs::write(&bad, &truncated).unwrap();
    assert_eq!(other.herd(&["load", bad.to_str().unwrap()]).code, 65);
    assert_eq!(other.snapshot(), snapshot);
    other
        .herd(&["load", env.path("missing.tar").to_str().unwrap()])
        .fails(66, "cannot read image archive");
}

#[test]
fn a_corrupt_blob_in_the_store_is_refused_by_name() {
    let env = Env::new();
    env.build(&["--binary", "/usr/bin/true", "--version", "1"])
        .ok();
    let doc = env.inspect("true:1");
    let initramfs = doc["initramfs"]["path"].as_str().unwrap();
    let mut bytes = std::fs::read(initramfs).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(initramfs, &bytes).unwrap();
    let digest = doc["initramfs"]["digest"].as_str().unwrap();
    env.herd(&["image", "inspect", "true:1"])
        .fails(65, &format!("digest mismatch: blob {digest}"));
    env.herd(&["save", "true:1", "-o", env.path("x.tar").to_str().unwrap()])
        .fails(65, "digest mismatch");
    assert!(!env.path("x.tar").exists());
}

#[test]
fn images_inspect_and_rm_behave() {
    let env = Env::new();
    let v1 = env
        .build(&["--binary", "/usr/bin/true", "--version", "1.0"])
        .ok()
        .digest();
    let v2 = env
        .build(&[
            "--binary",
            "/usr/bin/true",
            "--version",
            "2.0",
            "--arg",
            "x",
        ])
        .ok()
        .digest();
    let other = env
        .build(&[
            "--binary",
            "/usr/bin/true",
            "--name",
            "alpha",
            "--version",
            "1",
        ])
        .ok()
        .digest();
    let table = env.herd(&["images"]).ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("DIGEST") && lines[0].ends_with("SIZE"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("alpha ") && lines[1].contains(&other[7..19]),
        "{table}"
    );
    assert!(
        lines[2].starts_with("true ") && lines[2].contains("2.0") && lines[2].contains(&v2[7..19]),
        "{table}"
    );
    assert!(
        lines[3].contains("1.0") && lines[3].contains(&v1[7..19]) && lines[3].ends_with("MiB"),
        "{table}"
    );
    assert_eq!(env.herd(&["images", "-q"]).ok().stdout.lines().count(), 3);
    assert_eq!(
        env.inspect("true")["digest"],
        v2.as_str(),
        "a bare name is the newest"
    );
    assert_eq!(env.inspect(&v1[..13])["config"]["version"], "1.0");

    let blobs = |env: &Env| {
        std::fs::read_dir(env.store().join("blobs/sha256"))
            .unwrap()
            .count()
    };
    let before = blobs(&env);
    let rm = env.herd(&["image", "rm", "true:2.0"]).ok().stdout;
    assert!(rm.contains("untagged: true:2.0"), "{rm}");
    // Its manifest, config and initramfs (args differ) go; the kernel is shared.
    assert_eq!(rm.matches("deleted: sha256:").count(), 3, "{rm}");
    assert_eq!(blobs(&env), before - 3);
    assert_eq!(env.inspect("true")["digest"], v1.as_str());
    env.herd(&["image", "rm", "true"]).ok();
    env.herd(&["image", "rm", &other[7..20]]).ok();
    assert_eq!(env.herd(&["images"]).ok().stdout.lines().count(), 1);
    assert_eq!(blobs(&env), 0);
}

#[test]
fn temp_files_of_an_interrupted_build_are_ignored_then_cleaned() {
    let env = Env::new();
    env.build(&["--binary", "/usr/bin/true", "--version", "1"])
        .ok();
    let stale = env.store().join("blobs/sha256/.tmp-interrupted");
    std::fs::write(&stale, b"half a blob").unwrap();
    assert_eq!(env.herd(&["images", "-q"]).ok().stdout.lines().count(), 1);
    env.herd(&["image", "inspect", "true"]).ok();
    env.build(&["--binary", "/usr/bin/true", "--version", "2"])
        .ok();
    assert!(!stale.exists());
}

#[test]
fn concurrent_builds_all_land_in_the_store() {
    let env = Env::new();
    std::thread::scope(|s| {
        for v in 0..6 {
            let env = &env;
            s.spawn(move || {
                env.build(&[
                    "--binary",
                    "/usr/bin/true",
                    "--version",
                    &v.to_string(),
                    "--arg",
                    &v.to_string(),
                ])
                .ok()
            });
        }
    });
    let listed = env.herd(&["images", "-q"]).ok().stdout;
    assert_eq!(
        listed
            .lines()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        6,
        "{listed}"
    );
    for v in 0..6 {
        env.herd(&["image", "inspect", &format!("true:{v}")]).ok();
    }
}

#[test]
fn help_documents_exit_statuses_and_usage_errors_exit_64() {
    let env = Env::new();
    let help = env.herd(&["--help"]).ok().stdout;
    for needle in [
        "64", "65", "66", "70", "build", "images", "image", "save", "load", "run",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    assert_eq!(env.herd(&["frobnicate"]).code, 64);
    assert_eq!(env.herd(&["save", "x"]).code, 64, "missing -o");
}
