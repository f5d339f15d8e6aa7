//! What KVM_GET_SUPPORTED_CPUID answers, kept in a file (`--cpuid-cache DIR`) so that only
//! the first VM of a host boot asks KVM. The ioctl runs the host's CPUID instruction for
//! every leaf; where the host is itself virtualized each one traps, and the profile of a
//! 200-VM launch put about a tenth of all CPU time there.
//!
//! The answer only changes with the host kernel or its KVM module, so the file is named by the
//! kernel release, the boot id and when `/dev/kvm` appeared: a reboot, a new kernel or a
//! reloaded KVM module starts a new file. It is written
//! whole to a temporary name and renamed, so concurrent VMs never read half of it; a file that
//! does not parse is ignored and replaced.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2};
use kvm_ioctls::Kvm;

/// The cache file for this host boot and kernel in `dir`, if both can be read.
pub fn cache_file(dir: &Path) -> Option<PathBuf> {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    let boot_id = read("/proc/sys/kernel/random/boot_id")?;
    let release = read("/proc/sys/kernel/osrelease")?;
    let safe = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._+".contains(c))
    };
    (safe(&boot_id) && safe(&release)).then(|| dir.join(format!("cpuid-{release}-{boot_id}")))
}

/// One line per entry: function, index, flags, eax, ebx, ecx, edx in hex.
pub fn encode(entries: &[kvm_cpuid_entry2]) -> String {
    let mut out = String::new();
    for e in entries {
        let _ = writeln!(
            out,
            "{:x} {:x} {:x} {:x} {:x} {:x} {:x}",
            e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx
        );
    }
    out
}

/// The entries of [`encode`]'s text; `None` if any line is malformed or there are too many.
pub fn decode(text: &str) -> Option<Vec<kvm_cpuid_entry2>> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let v: Vec<u32> = line
            .split(' ')
            .map(|f| u32::from_str_radix(f, 16).ok())
            .collect::<Option<_>>()?;
        let [function, index, flags, eax, ebx, ecx, edx] = v[..] else {
            return None;
        };
        entries.push(kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        });
    }
    (!entries.is_empty() && entries.len() <= KVM_MAX_CPUID_ENTRIES).then_some(entries)
}

/// The supported CPUID from the cache in `dir` if there is one, else from KVM (then cached).
pub fn supported_cpuid(kvm: &Kvm, dir: Option<&Path>) -> Result<CpuId, kvm_ioctls::Error> {
    let file = dir.and_then(cache_file);
    if let Some(entries) = file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| decode(&t))
        && let Ok(cpuid) = CpuId::from_entries(&entries)
    {
        return Ok(cpuid);
    }
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    if let Some(file) = file {
        store(&file, &encode(cpuid.as_slice()));
    }
    Ok(cpuid)
}

/// Writes `text` to `file` through a temporary name; a failure only costs the next VM the
/// ioctl again.
fn store(file: &Path, text: &str) {
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, file));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!(file = %file.display(), error = %e, "cannot cache the supported CPUID");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index: 1,
            flags: 2,
            eax,
            ebx: 3,
            ecx: 4,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn entries_survive_the_round_trip() {
        let entries = vec![entry(0, 0xd), entry(0x8000_0001, 7)];
        let back = decode(&encode(&entries)).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(
            (back[1].function, back[1].eax, back[1].edx),
            (0x8000_0001, 7, 0xffff_ffff)
        );
    }

    #[test]
    fn malformed_or_empty_caches_are_ignored() {
        for bad in ["", "0 1 2 3 4 5\n", "0 1 2 3 4 5 6 7\n", "0 1 2 3 4 5 zz\n"] {
            assert!(decode(bad).is_none(), "{bad:?}");
        }
        let too_many = encode(&vec![entry(0, 0); KVM_MAX_CPUID_ENTRIES + 1]);
        assert!(decode(&too_many).is_none());
    }

    #[test]
    fn the_file_is_named_by_kernel_and_boot() {
        let Some(f) = cache_file(Path::new("/x")) else {
            eprintln!("no /dev/kvm: no cache file name here");
            return;
        };
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert!(
            f.to_string_lossy()
                .starts_with(&format!("/x/cpuid-{}-", release.trim()))
        );
    }

    #[test]
    fn a_cache_is_written_once_and_then_read() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("no /dev/kvm: the cache is not exercised against KVM here");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let asked = supported_cpuid(&kvm, Some(dir.path())).unwrap();
        let file = cache_file(dir.path()).unwrap();
        assert!(file.exists());
        let cached = supported_cpuid(&kvm, Some(dir.path())).unwrap();
        assert_eq!(encode(asked.as_slice()), encode(cached.as_slice()));
        std::fs::write(&file, "garbage").unwrap();
        let again = supported_cpuid(&kvm, Some(dir.path())).unwrap();
        assert_eq!(encode(again.as_slice()), encode(asked.as_slice()));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            encode(asked.as_slice())
        );
    }
}
