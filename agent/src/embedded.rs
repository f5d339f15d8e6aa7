//! The herd-init binary built into `herd`, so `herd build` needs no other file: `build.rs`
//! builds `resources/init` as a static `x86_64-unknown-linux-musl` executable into `OUT_DIR`
//! (a copy for inspection is at `target/herd-init/herd-init`).

/// The static herd-init binary to put at `/init` in images (mode 0755).
pub fn herd_init() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/herd-init"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_init_is_a_static_elf_executable() {
        let bin = super::herd_init();
        assert!(
            bin.starts_with(b"\x7fELF\x02\x01"),
            "an ELF64 little-endian file"
        );
        // e_type: ET_EXEC (static) or ET_DYN (static-pie); build.rs refused an interpreter.
        assert!(matches!(u16::from_le_bytes([bin[16], bin[17]]), 2 | 3));
        // e_machine: x86-64.
        assert_eq!(u16::from_le_bytes([bin[18], bin[19]]), 62);
    }
}
