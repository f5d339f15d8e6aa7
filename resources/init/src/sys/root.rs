//! Switching to the image's root filesystem ([`crate::host::Host::switch_root`]): wait for
//! the block device node, mount it read-only at `/newroot`, move the kernel filesystems into
//! it, then make it `/` the way util-linux's `switch_root` does (`MS_MOVE` onto `/`, `chroot`).
//! The initramfs is not deleted: it is small once the app lives on the disk.

use std::io;
use std::path::Path;
use std::ptr;
use std::time::{Duration, Instant};

use herd_proto::Rootfs;

use super::{check, cstring};
use crate::host::{DEVICE_WAIT_MS, HostError, NEWROOT, SWITCHED_MOUNTS};

/// Does the whole switch; errors name the step that failed.
pub fn switch_root(rootfs: &Rootfs) -> Result<(), HostError> {
    let fail = |step: String| {
        move |source| HostError::SwitchRoot {
            device: rootfs.device.clone(),
            fstype: rootfs.fstype.name(),
            step,
            source,
        }
    };
    wait_for(&rootfs.device, Duration::from_millis(DEVICE_WAIT_MS))
        .map_err(fail(format!("find {}", rootfs.device)))?;
    let fstype = rootfs.fstype.name();
    mount(Some(&rootfs.device), NEWROOT, Some(fstype), libc::MS_RDONLY)
        .map_err(fail(format!("mount it read-only on {NEWROOT}")))?;
    for from in SWITCHED_MOUNTS {
        let to = format!("{NEWROOT}{from}");
        mount(Some(from), &to, None, libc::MS_MOVE)
            .map_err(fail(format!("move {from} to {to}")))?;
    }
    std::env::set_current_dir(NEWROOT).map_err(fail(format!("enter {NEWROOT}")))?;
    mount(Some("."), "/", None, libc::MS_MOVE).map_err(fail(format!("move {NEWROOT} to /")))?;
    let dot = cstring(".").expect("no NUL");
    // SAFETY: `dot` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::chroot(dot.as_ptr()) }).map_err(fail("chroot into it".into()))?;
    std::env::set_current_dir("/").map_err(fail("enter the new /".into()))
}

/// Waits until `path` exists (devtmpfs creates block device nodes as drivers probe).
fn wait_for(path: &str, timeout: Duration) -> io::Result<()> {
    let start = Instant::now();
    while !Path::new(path).exists() {
        if start.elapsed() >= timeout {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target)?;
    let fstype = fstype.map(cstring).transpose()?;
    let ptr_of = |s: &Option<std::ffi::CString>| s.as_ref().map_or(ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call; no data.
    let ret = unsafe {
        libc::mount(
            ptr_of(&source),
            target.as_ptr(),
            ptr_of(&fstype),
            flags,
            ptr::null(),
        )
    };
    check(ret).map(drop)
}
