//! Shared benchmark plumbing: percentiles, a monotonic clock comparable with herd-vmm's debug
//! timestamps, and a small SVG writer for distributions.

pub mod proc_cpu;
pub mod stats;
pub mod svg;
pub mod sys;
