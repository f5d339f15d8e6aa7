//! The host's entropy: `getrandom(2)` from the kernel's CSPRNG, which virtio-rng hands to the
//! guest. Never blocks once the host's pool is initialised (always true by the time a VMM runs).

use std::io;

/// Fills `buf` with random bytes from the host kernel.
pub fn fill(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of exactly `rest.len()` bytes, and
        // getrandom writes at most that many bytes into it.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_the_whole_buffer_with_varied_bytes() {
        let mut buf = vec![0u8; 4096];
        fill(&mut buf).unwrap();
        let mut seen = [false; 256];
        buf.iter().for_each(|&b| seen[usize::from(b)] = true);
        assert!(seen.iter().filter(|&&s| s).count() > 200);
        fill(&mut []).unwrap();
    }
}
