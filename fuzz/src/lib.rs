//! What herd's fuzz targets share (the targets are in `fuzz_targets/`, one per parser of
//! untrusted input): the byte format of the binary inputs ([`bytes`]) and a hostile driver's
//! virtqueues in guest memory ([`virtq`]).

pub mod bytes;
pub mod virtq;
