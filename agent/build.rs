//! Builds `herd-init` (`resources/init`), the guest's PID 1, as a static binary with a nested
//! `cargo build --release --target x86_64-unknown-linux-musl`, so that `herd` carries it
//! (`herd::embedded::herd_init()`) and `herd build` needs no other file. The binary is written
//! to `$OUT_DIR/herd-init` and copied to `<workspace>/target/herd-init/herd-init` for
//! inspection. The build fails if the result is not static (has an ELF interpreter).

use std::env;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const INIT_TARGET: &str = "x86_64-unknown-linux-musl";
/// ELF program header type of the interpreter path: present in dynamically linked programs.
const PT_INTERP: u32 = 3;

fn build_init(workspace: &Path, target_dir: &Path) {
    let args = [
        "-p",
        "herd-init",
        "--bin",
        "herd-init",
        "--target",
        INIT_TARGET,
    ];
    let status = herd_build_support::nested_cargo_build(workspace, target_dir, &args)
        .expect("run the nested cargo build of herd-init");
    assert!(
        status.success(),
        "building herd-init for {INIT_TARGET} failed: {status} \
         (is the target installed? rustup target add {INIT_TARGET})"
    );
}

/// Whether an ELF64 little-endian image has a `PT_INTERP` program header.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert!(
        elf.len() > 64 && elf.starts_with(b"\x7fELF\x02\x01"),
        "herd-init is not an ELF64 LE file"
    );
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == PT_INTERP)
}

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().expect("agent/ is inside the workspace");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    for path in ["resources/init", "proto", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let target_dir = out.join("init-target");
    build_init(workspace, &target_dir);
    let built = target_dir.join(INIT_TARGET).join("release/herd-init");
    let bin = fs::read(&built).unwrap_or_else(|e| panic!("read {}: {e}", built.display()));
    assert!(
        !has_interpreter(&bin),
        "{} is dynamically linked",
        built.display()
    );

    write_executable(&out.join("herd-init"), &bin);
    let stable = workspace.join("target/herd-init");
    fs::create_dir_all(&stable).unwrap_or_else(|e| panic!("mkdir {}: {e}", stable.display()));
    write_executable(&stable.join("herd-init"), &bin);
}

fn write_executable(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
