//! The real kernel behind [`crate::host`]: [`RealHost`] (mounts, hostname, loopback, boot
//! timer, exit-status port, the instance's network in `net`, the random number generator's
//! reseed in `rng`, switching root in `root`) and [`RealOs`] (signals, `posix_spawn`,
//! `waitpid`, `kill`, files).
//!
//! This is the only module allowed `unsafe` (the crate denies it elsewhere). Every block does
//! one libc call or one raw-pointer operation and says why it is sound.

#![allow(unsafe_code)]

mod machine;
mod net;
mod process;
mod rng;
mod root;

use std::ffi::{CString, c_char, c_int};
use std::io;

pub use machine::RealHost;
pub use process::RealOs;

/// Turns a libc `-1`-and-errno result into an `io::Result`.
fn check(ret: c_int) -> io::Result<c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cstring(s: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"))
}

/// A NULL-terminated array of C strings (`argv`, `envp`) and the strings it points into.
struct CStringArray {
    _strings: Vec<CString>,
    ptrs: Vec<*mut c_char>,
}

impl CStringArray {
    fn new<S: Into<Vec<u8>>>(items: impl ExactSizeIterator<Item = S>) -> io::Result<Self> {
        let mut strings = Vec::with_capacity(items.len());
        for item in items {
            strings.push(cstring(item)?);
        }
        // The pointers stay valid: the CStrings' heap buffers never move while `strings` lives.
        let mut ptrs: Vec<*mut c_char> = strings.iter().map(|s| s.as_ptr().cast_mut()).collect();
        ptrs.push(std::ptr::null_mut());
        Ok(Self {
            _strings: strings,
            ptrs,
        })
    }

    fn as_ptr(&self) -> *const *mut c_char {
        self.ptrs.as_ptr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_string_arrays_are_null_terminated_and_refuse_nul() {
        let a = CStringArray::new(["a", "bc"].into_iter()).unwrap();
        assert_eq!(a.ptrs.len(), 3);
        assert!(a.ptrs[2].is_null());
        assert!(CStringArray::new(["a\0b"].into_iter()).is_err());
        assert!(check(-1).is_err());
        assert_eq!(check(3).unwrap(), 3);
    }
}
