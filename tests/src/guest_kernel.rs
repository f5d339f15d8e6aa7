//! Where tests find what `scripts/test.sh` builds outside cargo: our guest kernel
//! (`guest-kernel/build.sh`, cached) and the demo initramfs. Each comes from an environment
//! variable the script exports, or else from asking the script, which never builds here.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The last line a workspace script prints on success, as a path.
fn script_output(script: &str, args: &[&str]) -> Option<PathBuf> {
    let out = Command::new(workspace().join(script))
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
}

/// The cached kernel directory (`vmlinux`, `bzImage`): `$HERD_KERNEL_DIR`, or what
/// guest-kernel/build.sh built.
pub fn kernel_dir() -> Option<PathBuf> {
    std::env::var_os("HERD_KERNEL_DIR")
        .map(PathBuf::from)
        .or_else(|| script_output("guest-kernel/build.sh", &["--print-dir"]))
}

/// The demo initramfs: `$HERD_DEMO_INITRD`, or built (quickly) from the cached kernel.
pub fn demo_initrd() -> Option<PathBuf> {
    std::env::var_os("HERD_DEMO_INITRD")
        .map(PathBuf::from)
        .or_else(|| script_output("resources/demo/build-initramfs.sh", &[]))
}
