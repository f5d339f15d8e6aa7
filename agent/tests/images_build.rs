//! End-to-end tests of `herd build` through the real binary: reproducible digests, a
//! dynamically linked binary bundled with its loader and libraries, a compiled program with a
//! private `$ORIGIN` library, `--dir` trees, and every bad input refused with a clear message,
//! the right exit status and nothing left in the store. No guest kernel is needed (see
//! `image_env`).

mod image_env;

use std::path::PathBuf;
use std::process::Command;

use herd::image::elf::ElfInfo;
use image_env::Env;

#[test]
fn same_inputs_give_the_same_digest_and_rebuilding_changes_nothing() {
    let env = Env::new();
    let args = [
        "--binary",
        "/usr/bin/true",
        "--name",
        "t",
        "--version",
        "1.0",
        "--env",
        "A=1",
        "--arg",
        "-x",
        "--port",
        "8080",
    ];
    let first = env.build(&args).ok().digest();
    let snapshot = env.snapshot();
    assert_eq!(env.build(&args).ok().digest(), first);
    assert_eq!(
        env.snapshot(),
        snapshot,
        "a second identical build leaves the store byte for byte"
    );
    let other = Env::new();
    assert_eq!(
        other.build(&args).ok().digest(),
        first,
        "another store, same digest"
    );
    let mut changed = args.to_vec();
    changed[7] = "A=2";
    assert_ne!(
        env.build(&changed).ok().digest(),
        first,
        "env is part of the identity"
    );
}

#[test]
fn dynamic_binary_is_bundled_with_its_interpreter_and_libraries() {
    let env = Env::new();
    let digest = env
        .build(&[
            "--binary",
            "/usr/bin/true",
            "--version",
            "1",
            "--health-http",
            "8080/healthz",
            "--port",
            "8080",
        ])
        .ok()
        .digest();
    let doc = env.inspect("true:1");
    assert_eq!(doc["digest"], digest.as_str());
    assert_eq!(
        doc["config"]["entrypoint"],
        serde_json::json!(["/app/true"])
    );
    assert_eq!(
        doc["config"]["healthcheck"]["http"],
        serde_json::json!({"port": 8080, "path": "/healthz"})
    );
    let cpio = env.initramfs("true:1");
    assert_eq!(
        cpio.file("/app/true"),
        std::fs::read("/usr/bin/true").unwrap()
    );
    assert_eq!(cpio.file("/init"), b"fake herd-init");
    assert_eq!(cpio.resolve("/init").unwrap().mode, 0o100755);
    let runtime: serde_json::Value = serde_json::from_slice(cpio.file("/herd/image.json")).unwrap();
    assert_eq!(
        runtime,
        serde_json::json!({"entrypoint": ["/app/true"], "args": [], "env": {}, "workdir": "/"})
    );
    let console = cpio.resolve("/dev/console").unwrap();
    assert_eq!((console.mode, console.rdev), (0o020600, (5, 1)));
    for dir in ["/proc", "/sys", "/tmp", "/run"] {
        assert_eq!(
            cpio.resolve(dir).unwrap().mode & 0o170000,
            0o040000,
            "{dir}"
        );
    }
    let info = ElfInfo::parse("true", &std::fs::read("/usr/bin/true").unwrap()).unwrap();
    let interp = info.interp.expect("/usr/bin/true is dynamically linked");
    assert_eq!(
        cpio.file(&interp),
        std::fs::read(&interp).unwrap(),
        "interpreter at its PT_INTERP path"
    );
    for lib in &info.needed {
        let in_image = [
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib",
            "/usr/lib",
            "/lib64",
            "/usr/lib64",
        ]
        .iter()
        .find_map(|d| cpio.resolve(&format!("{d}/{lib}")));
        assert!(in_image.is_some(), "{lib} is not in the image");
    }
    for entry in cpio.0.values() {
        assert_eq!(entry.uid_gid_mtime, (0, 0, 0), "fixed owners and mtime");
    }
}

/// Compiles a program with a private library found through `$ORIGIN/../lib`.
fn compile_app_with_private_lib(env: &Env) -> Option<PathBuf> {
    let root = env.path("opt/app");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("lib")).unwrap();
    std::fs::write(
        env.path("greet.c"),
        "const char *greet(void) { return \"hi\"; }\n",
    )
    .unwrap();
    std::fs::write(env.path("app.c"), "#include <stdio.h>\nconst char *greet(void);\nint main(void) { puts(greet()); return 0; }\n").unwrap();
    let cc = |args: &[&str]| {
        Command::new("cc")
            .args(args)
            .current_dir(env.work.path())
            .status()
            .is_ok_and(|s| s.success())
    };
    let lib = root.join("lib/libgreet.so");
    let app = root.join("bin/app");
    if !cc(&["-shared", "-fPIC", "-o", lib.to_str()?, "greet.c"]) {
        eprintln!("skipping: no working C compiler (cc)");
        return None;
    }
    let libdir = format!("-L{}", root.join("lib").display());
    assert!(cc(&[
        "-o",
        app.to_str()?,
        "app.c",
        &libdir,
        "-lgreet",
        "-Wl,-rpath,$ORIGIN/../lib"
    ]));
    Some(app)
}

#[test]
fn private_library_is_found_through_origin_and_a_missing_one_is_named() {
    let env = Env::new();
    let Some(app) = compile_app_with_private_lib(&env) else {
        return;
    };
    let lib = env.path("opt/app/lib/libgreet.so");
    env.build(&["--binary", app.to_str().unwrap(), "--version", "1"])
        .ok();
    let cpio = env.initramfs("app:1");
    // In the guest the app is /app/app, so $ORIGIN/../lib is /lib.
    assert_eq!(cpio.file("/lib/libgreet.so"), std::fs::read(&lib).unwrap());
    assert!(cpio.resolve("/app/app").is_some());

    std::fs::remove_file(&lib).unwrap();
    let snapshot = env.snapshot();
    let needed_by = format!(
        "needed by {}",
        std::fs::canonicalize(&app).unwrap().display()
    );
    let run = env
        .build(&["--binary", app.to_str().unwrap(), "--version", "2"])
        .fails(66, "library libgreet.so");
    assert!(run.stderr.contains(&needed_by), "{run:#?}");
    assert!(
        run.stderr
            .starts_with("herd: error: cannot build app:2: app binary"),
        "{run:#?}"
    );
    assert_eq!(env.snapshot(), snapshot, "nothing left in the store");
}

#[test]
fn directory_builds_keep_the_tree_and_check_the_entrypoint() {
    use std::os::unix::fs::{PermissionsExt as _, symlink};
    let env = Env::new();
    let dir = env.path("rootfs");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::write(dir.join("bin/app"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(dir.join("bin/app"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(dir.join("etc/app.conf"), "x=1\n").unwrap();
    symlink("bin/app", dir.join("start")).unwrap();
    let d = dir.to_str().unwrap();
    let digest = env
        .build(&[
            "--dir",
            d,
            "--entrypoint",
            "/start",
            "--name",
            "web",
            "--version",
            "2",
            "--workdir",
            "/etc",
        ])
        .ok()
        .digest();
    let cpio = env.initramfs("web:2");
    assert_eq!(cpio.file("/start"), b"#!/bin/sh\necho hi\n");
    assert_eq!(cpio.resolve("/bin/app").unwrap().mode, 0o100750);
    assert_eq!(cpio.file("/etc/app.conf"), b"x=1\n");
    let runtime: serde_json::Value = serde_json::from_slice(cpio.file("/herd/image.json")).unwrap();
    assert_eq!(runtime["workdir"], "/etc");
    assert_eq!(
        env.inspect(&digest[7..20])["refs"],
        serde_json::json!(["web:2"])
    );

    let snapshot = env.snapshot();
    env.build(&[
        "--dir",
        d,
        "--entrypoint",
        "/bin/nope",
        "--name",
        "web",
        "--version",
        "3",
    ])
    .fails(66, "entrypoint /bin/nope is not a file in");
    env.build(&[
        "--dir",
        d,
        "--entrypoint",
        "/etc/app.conf",
        "--name",
        "web",
        "--version",
        "3",
    ])
    .fails(65, "entrypoint /etc/app.conf is not executable");
    std::fs::copy("/usr/bin/true", dir.join("bin/true")).unwrap();
    env.build(&[
        "--dir",
        d,
        "--entrypoint",
        "/bin/true",
        "--name",
        "web",
        "--version",
        "3",
    ])
    .fails(66, "ELF interpreter");
    env.build(&["--dir", d, "--entrypoint", "/start", "--version", "3"])
        .fails(64, "--name");
    assert_eq!(env.snapshot(), snapshot);
}

#[test]
fn bad_inputs_are_refused_clearly_and_leave_the_store_as_it_was() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = Env::new();
    env.build(&["--binary", "/usr/bin/true", "--version", "1"])
        .ok();
    let snapshot = env.snapshot();
    let script = env.path("script");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (script, kernel, init) = (
        script.to_str().unwrap(),
        env.path("kernel"),
        env.path("init"),
    );
    let (kernel, init) = (kernel.to_str().unwrap(), init.to_str().unwrap());
    let t = ["--binary", "/usr/bin/true", "--version", "1"];
    // (arguments after `build --kernel K --init I`, exit status, message)
    let builds: &[(&[&str], i32, &str)] = &[
        (
            &["--binary", "/nonexistent/app", "--version", "1"],
            66,
            "cannot read app binary /nonexistent/app",
        ),
        (
            &["--binary", script, "--version", "1"],
            65,
            "is not an ELF file",
        ),
        (
            &[&t[..], &["--env", "NOEQUALS"]].concat(),
            64,
            "is not KEY=VALUE",
        ),
        (
            &[&t[..], &["--env", "1X=y"]].concat(),
            64,
            "not a valid environment variable name",
        ),
        (&[&t[..], &["--vcpus", "33"]].concat(), 64, "--vcpus"),
        (&[&t[..], &["--memory", "16"]].concat(), 64, "--memory"),
        (
            &[&t[..], &["--health-http", "80"]].concat(),
            64,
            "PORT/PATH",
        ),
        (
            &[&t[..], &["--health-http", "80/", "--health-tcp", "81"]].concat(),
            64,
            "cannot be used with",
        ),
        (
            &["--binary", "/usr/bin/true", "--version", "no/slash"],
            65,
            "invalid image version",
        ),
        (
            &[&t[..], &["--name", "Upper"]].concat(),
            65,
            "invalid image name",
        ),
        (&["--version", "1"], 64, "--binary"),
        (
            &[&t[..], &["--dir", "/tmp", "--entrypoint", "/x"]].concat(),
            64,
            "cannot be used with",
        ),
        (
            &[&t[..], &["--cmdline", "a\nb"]].concat(),
            65,
            "kernel command line",
        ),
    ];
    for (args, code, message) in builds {
        env.herd(&[&["build", "--kernel", kernel, "--init", init][..], args].concat())
            .fails(*code, message);
    }
    let others: &[(&[&str], i32, &str)] = &[
        (
            &["build", "--kernel", script, "--init", init],
            65,
            "is neither an ELF vmlinux nor a bzImage",
        ),
        (
            &["build", "--kernel", "/nonexistent/vmlinux", "--init", init],
            66,
            "cannot read kernel",
        ),
        (
            &["build", "--kernel", kernel, "--init", "/nonexistent/init"],
            66,
            "cannot read herd-init",
        ),
        (&["build"], 66, "guest-kernel/build.sh"),
    ];
    for (args, code, message) in others {
        env.herd(&[args, &t[..]].concat()).fails(*code, message);
    }
    for cmd in [
        &["image", "inspect"][..],
        &["image", "rm"],
        &["save", "-o", "/tmp/never.tar"],
    ] {
        env.herd(&[cmd, &["nope:1"]].concat())
            .fails(66, "no image \"nope:1\" in the store");
        env.herd(&[cmd, &["sha256:12"]].concat())
            .fails(64, "invalid image reference");
    }
    env.herd(&["image", "inspect", "ffff"])
        .fails(66, "no image");
    assert_eq!(env.snapshot(), snapshot);
}

#[test]
fn example_apps_build_twice_to_the_same_digest() {
    let target = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    for app in ["hello", "http"] {
        let bin = target.join(app);
        assert!(
            bin.is_file(),
            "{} missing: cargo build --workspace --bins first",
            bin.display()
        );
        let args = [
            "--binary",
            bin.to_str().unwrap(),
            "--name",
            app,
            "--version",
            "1.0",
            "--port",
            "8080",
        ];
        let first = Env::new().build(&args).ok().digest();
        let second = Env::new().build(&args).ok().digest();
        assert_eq!(first, second, "{app} is reproducible");
    }
}
