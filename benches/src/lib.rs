//! Shared benchmark plumbing: percentiles, a monotonic clock comparable with herd-vmm's debug
//! timestamps, and a small SVG writer for distributions.

pub mod agent;
pub mod proc_cpu;
pub mod procmem;
pub mod stats;
pub mod svg;
pub mod sys;
