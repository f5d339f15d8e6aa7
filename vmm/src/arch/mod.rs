//! Architecture-specific machine layout and boot set-up. herd-vmm runs x86-64 guests only.

pub mod x86_64;
