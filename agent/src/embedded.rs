//! The herd-init binary built into `herd` (by build.rs), so `herd build` needs no other file.
//! (Placeholder until build.rs embeds the real binary.)

/// The static herd-init binary to put at `/init` in images.
pub fn herd_init() -> &'static [u8] {
    &[]
}
