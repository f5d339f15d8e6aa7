//! The kernel's random number generator after a restore: clones restored from one snapshot
//! start with the same pool and generator state, so each must mix in fresh bytes from the
//! host and reseed before anything draws from it again. Writing to `/dev/urandom` mixes bytes
//! in without crediting them; `RNDADDENTROPY` mixes and credits them; `RNDRESEEDCRNG` makes
//! the generator reseed from the pool now instead of at its next scheduled reseed, up to a
//! minute later. Both ioctls need `CAP_SYS_ADMIN`, which PID 1 has. `linux/random.h`'s request numbers are not in the `libc` crate: built here from the
//! `_IOC` encoding.

use std::ffi::{c_int, c_ulong};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;

use super::check;
use crate::identity::ENTROPY_BYTES;

const RANDOM_DEVICE: &str = "/dev/urandom";

/// `_IOC(dir, type, nr, size)` on x86 and most architectures.
const fn ioc(dir: c_ulong, kind: u8, nr: u8, size: usize) -> c_ulong {
    (dir << 30) | ((size as c_ulong) << 16) | ((kind as c_ulong) << 8) | nr as c_ulong
}
const IOC_NONE: c_ulong = 0;
const IOC_WRITE: c_ulong = 1;
/// `_IOW('R', 0x03, int[2])`: its argument is `struct rand_pool_info`.
const RNDADDENTROPY: c_ulong = ioc(IOC_WRITE, b'R', 0x03, size_of::<[c_int; 2]>());
/// `_IO('R', 0x07)`.
const RNDRESEEDCRNG: c_ulong = ioc(IOC_NONE, b'R', 0x07, 0);

/// `struct rand_pool_info` with its flexible `buf` sized for our entropy.
#[repr(C)]
struct RandPoolInfo {
    /// Bits credited.
    entropy_count: c_int,
    /// Bytes in `buf`.
    buf_size: c_int,
    buf: [u8; ENTROPY_BYTES],
}

/// Mixes `entropy` in (write, then `RNDADDENTROPY` crediting all its bits) and reseeds;
/// the error names the step that failed.
pub fn reseed(entropy: &[u8; ENTROPY_BYTES]) -> Result<(), (&'static str, io::Error)> {
    let mut dev = OpenOptions::new()
        .write(true)
        .open(RANDOM_DEVICE)
        .map_err(|e| ("open /dev/urandom", e))?;
    // Mixed in even if the ioctls below are refused.
    dev.write_all(entropy)
        .map_err(|e| ("write to /dev/urandom", e))?;
    add_entropy(&dev, entropy).map_err(|e| ("credit it (RNDADDENTROPY)", e))?;
    reseed_now(&dev).map_err(|e| ("reseed (RNDRESEEDCRNG)", e))
}

fn add_entropy(dev: &File, entropy: &[u8; ENTROPY_BYTES]) -> io::Result<()> {
    let info = RandPoolInfo {
        entropy_count: (8 * ENTROPY_BYTES) as c_int,
        buf_size: ENTROPY_BYTES as c_int,
        buf: *entropy,
    };
    // SAFETY: RNDADDENTROPY reads a rand_pool_info header and then `buf_size` bytes after
    // it; `info` is that header followed by exactly that many bytes, valid across the call,
    // and the kernel does not write to it.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY as _, &info) }).map(drop)
}

fn reseed_now(dev: &File) -> io::Result<()> {
    // SAFETY: RNDRESEEDCRNG takes no argument and touches no memory of ours.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG as _) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_and_layout_match_linux_random_h() {
        // The values <linux/random.h> expands to on x86-64.
        assert_eq!(RNDADDENTROPY, 0x4008_5203);
        assert_eq!(RNDRESEEDCRNG, 0x5207);
        assert_eq!(std::mem::offset_of!(RandPoolInfo, buf), 8);
        assert_eq!(size_of::<RandPoolInfo>(), 8 + ENTROPY_BYTES);
    }
}
