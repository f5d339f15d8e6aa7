//! What herd's fuzz targets share (the targets are in `fuzz_targets/`, one per parser of
//! untrusted input): the byte format of the binary inputs ([`bytes`]) and a hostile driver's
//! virtqueues in guest memory ([`virtq`]). `examples/write_seeds.rs` encodes the committed
//! seeds of the binary targets with the same code the targets decode them with.

pub mod bytes;
pub mod virtq;
