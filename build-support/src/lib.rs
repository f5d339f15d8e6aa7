//! Build scripts of herd that compile a guest-side binary for another target (the probe guest
//! for `x86_64-unknown-none`, herd-init for `x86_64-unknown-linux-musl`) run a nested
//! `cargo build`. The outer build's environment (flags, wrappers such as clippy-driver, the
//! target directory) must not leak into it; this crate owns that rule so the build scripts
//! cannot drift apart.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

/// Whether an environment variable of the outer build would leak into a nested one.
pub fn leaks(name: &str) -> bool {
    const EXACT: [&str; 14] = [
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
    ];
    EXACT.contains(&name)
        || name.starts_with("CARGO_TARGET_")
        || name.starts_with("CARGO_PROFILE_")
        || name.starts_with("CARGO_CFG_")
        || name.starts_with("__CARGO")
}

/// Runs `cargo build --release <args> --target-dir <target_dir>` in `workspace` with a clean
/// environment. Its output goes to stderr: a build script's stdout is for `cargo:` lines.
pub fn nested_cargo_build<S: AsRef<OsStr>>(
    workspace: &Path,
    target_dir: &Path,
    args: &[S],
) -> io::Result<ExitStatus> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release"])
        .args(args)
        .arg("--target-dir")
        .arg(target_dir);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(leaks) {
            cmd.env_remove(name);
        }
    }
    let stderr = io::stderr().as_fd().try_clone_to_owned()?;
    cmd.stdout(Stdio::from(stderr));
    cmd.status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_build_settings_leak_but_ordinary_variables_do_not() {
        for name in [
            "RUSTFLAGS",
            "CARGO_TARGET_DIR",
            "CARGO_PROFILE_RELEASE_LTO",
            "__CARGO_FIX_PLZ",
            "CLIPPY_ARGS",
        ] {
            assert!(leaks(name), "{name}");
        }
        for name in ["PATH", "HOME", "CARGO", "CARGO_HOME", "RUSTUP_TOOLCHAIN"] {
            assert!(!leaks(name), "{name}");
        }
    }
}
