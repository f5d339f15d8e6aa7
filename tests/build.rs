//! Builds the probe guest (`resources/probe`) with a nested `cargo build --target
//! x86_64-unknown-none` and writes both images: the PVH ELF and a bzImage made from it.
//! Their paths are exported as `HERD_PROBE_ELF` / `HERD_PROBE_BZIMAGE` and copied to
//! `<workspace>/target/herd-probe/probe.{elf,bzImage}`.

#[allow(dead_code)]
#[path = "src/image.rs"]
mod image;

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

const GUEST_TARGET: &str = "x86_64-unknown-none";

fn build_probe(workspace: &Path, target_dir: &Path) {
    let args = ["-p", "herd-probe", "--target", GUEST_TARGET];
    let status = herd_build_support::nested_cargo_build(workspace, target_dir, &args)
        .expect("run the nested cargo build of the probe guest");
    assert!(
        status.success(),
        "building herd-probe for {GUEST_TARGET} failed: {status}"
    );
}

fn write(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().expect("tests/ is inside the workspace");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let probe_src = workspace.join("resources/probe");
    for path in [
        probe_src.as_path(),
        Path::new("build.rs"),
        Path::new("src/image.rs"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.toml").display()
    );

    let target_dir = out.join("probe-target");
    build_probe(workspace, &target_dir);
    let built = target_dir.join(GUEST_TARGET).join("release/herd-probe");
    let elf = fs::read(&built).unwrap_or_else(|e| panic!("read {}: {e}", built.display()));
    let bz = image::probe_bzimage(&elf).unwrap_or_else(|e| panic!("{}: {e}", built.display()));

    let elf_path = out.join("probe.elf");
    let bz_path = out.join("probe.bzImage");
    write(&elf_path, &elf);
    write(&bz_path, &bz);
    let stable = workspace.join("target/herd-probe");
    fs::create_dir_all(&stable).unwrap_or_else(|e| panic!("mkdir {}: {e}", stable.display()));
    write(&stable.join("probe.elf"), &elf);
    write(&stable.join("probe.bzImage"), &bz);
    println!("cargo:rustc-env=HERD_PROBE_ELF={}", elf_path.display());
    println!("cargo:rustc-env=HERD_PROBE_BZIMAGE={}", bz_path.display());
}
