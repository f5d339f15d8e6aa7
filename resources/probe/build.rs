//! Adds the linker script and link arguments, only for the real guest build
//! (`--target x86_64-unknown-none`); host builds are ordinary executables.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link.ld");
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-none") {
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    // A static executable at fixed physical addresses: the 32-bit PVH entry uses absolute
    // addresses, so the default static-PIE link is turned off (the last -pie/--no-pie wins).
    for arg in [
        format!("-T{dir}/link.ld"),
        "--no-pie".to_string(),
        "-zmax-page-size=4096".to_string(),
        "--build-id=none".to_string(),
        "--gc-sections".to_string(),
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
