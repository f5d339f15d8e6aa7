//! Reading the dynamic-linking facts of an ELF64 file ourselves: `PT_INTERP` and the dynamic
//! section's `DT_NEEDED`, `DT_SONAME`, `DT_RPATH` and `DT_RUNPATH` (strings found through the
//! `PT_LOAD` segment that maps `DT_STRTAB`). That is all `herd build` needs to bundle a
//! binary's loader and libraries (see `ldso`), so it needs no ELF crate. Only 64-bit
//! little-endian files are accepted: guests are x86-64.

/// `e_machine` of x86-64, the only guest architecture.
pub const EM_X86_64: u16 = 62;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_LOAD: u32 = 1;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_SONAME: u64 = 14;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
/// What is wrong with an ELF file.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("{0} is not an ELF file")]
    NotElf(String),
    #[error("{0} is not a 64-bit little-endian ELF file (guests are x86-64)")]
    NotElf64(String),
    #[error("{0} is built for ELF machine {1}, not x86-64 ({EM_X86_64})")]
    Machine(String, u16),
    #[error("{0} is malformed: {1}")]
    Malformed(String, &'static str),
}

/// The dynamic-linking facts of one ELF64 file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfInfo {
    /// `e_type`: 2 executable, 3 shared object or PIE.
    pub kind: u16,
    /// `e_machine`.
    pub machine: u16,
    /// `PT_INTERP`: the dynamic loader the kernel starts.
    pub interp: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_SONAME`.
    pub soname: Option<String>,
    /// `DT_RPATH` entries.
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` entries; `Some` (even empty) disables `DT_RPATH`.
    pub runpath: Option<Vec<String>>,
}

fn int<const N: usize>(b: &[u8], off: u64) -> Option<[u8; N]> {
    let start = usize::try_from(off).ok()?;
    b.get(start..start.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], off: u64) -> Option<u16> {
    int(b, off).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], off: u64) -> Option<u32> {
    int(b, off).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], off: u64) -> Option<u64> {
    int(b, off).map(u64::from_le_bytes)
}

/// One program header: (type, file offset, virtual address, size in file).
type Phdr = (u32, u64, u64, u64);

fn program_headers(b: &[u8]) -> Option<Vec<Phdr>> {
    let (phoff, phentsize, phnum) = (u64_at(b, 0x20)?, u16_at(b, 0x36)?, u16_at(b, 0x38)?);
    if phnum > 0 && phentsize < 56 {
        return None;
    }
    (0..u64::from(phnum))
        .map(|i| {
            let at = phoff.checked_add(i * u64::from(phentsize))?;
            Some((
                u32_at(b, at)?,
                u64_at(b, at + 8)?,
                u64_at(b, at + 16)?,
                u64_at(b, at + 32)?,
            ))
        })
        .collect()
}

fn c_string(b: &[u8], off: u64, end: u64) -> Option<String> {
    let bytes = b.get(usize::try_from(off).ok()?..usize::try_from(end).ok()?)?;
    let len = bytes.iter().position(|&c| c == 0)?;
    String::from_utf8(bytes[..len].to_vec()).ok()
}

fn segment(b: &[u8], offset: u64, size: u64) -> Option<(u64, u64)> {
    let end = offset.checked_add(size)?;
    (end <= b.len() as u64).then_some((offset, end))
}

fn split_path_list(s: String) -> Vec<String> {
    s.split(':')
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Reads the dynamic section: the string table is addressed virtually, through `PT_LOAD`.
fn dynamic(b: &[u8], phdrs: &[Phdr], dyn_off: u64, dyn_end: u64, info: &mut ElfInfo) -> Option<()> {
    let mut entries = Vec::new();
    let mut at = dyn_off;
    while at + 16 <= dyn_end {
        let (tag, val) = (u64_at(b, at)?, u64_at(b, at + 8)?);
        if tag == 0 {
            break;
        }
        entries.push((tag, val));
        at += 16;
    }
    let find = |t: u64| entries.iter().find(|e| e.0 == t).map(|e| e.1);
    let Some(strtab) = find(DT_STRTAB) else {
        return entries
            .iter()
            .all(|e| ![DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH].contains(&e.0))
            .then_some(());
    };
    let strsz = find(DT_STRSZ)?;
    let &(_, poff, pvaddr, pfilesz) = phdrs
        .iter()
        .find(|p| p.0 == PT_LOAD && p.2 <= strtab && strtab < p.2.saturating_add(p.3))?;
    let str_off = poff.checked_add(strtab - pvaddr)?;
    let str_end = str_off.checked_add(strsz)?.min(poff.checked_add(pfilesz)?);
    let string = |off: u64| c_string(b, str_off.checked_add(off)?, str_end);
    for &(tag, val) in &entries {
        match tag {
            DT_NEEDED => info.needed.push(string(val)?),
            DT_SONAME => info.soname = Some(string(val)?),
            DT_RPATH => info.rpath.extend(split_path_list(string(val)?)),
            DT_RUNPATH => info
                .runpath
                .get_or_insert_with(Vec::new)
                .extend(split_path_list(string(val)?)),
            _ => {}
        }
    }
    Some(())
}

impl ElfInfo {
    /// Parses an ELF64 little-endian file; `name` is only used in errors.
    pub fn parse(name: &str, b: &[u8]) -> Result<Self, ElfError> {
        if !b.starts_with(b"\x7fELF") {
            return Err(ElfError::NotElf(name.to_owned()));
        }
        if b.get(4..6) != Some(&[2, 1]) {
            return Err(ElfError::NotElf64(name.to_owned()));
        }
        let malformed = |why| ElfError::Malformed(name.to_owned(), why);
        let (kind, machine) = u16_at(b, 16)
            .zip(u16_at(b, 18))
            .ok_or_else(|| malformed("truncated header"))?;
        let phdrs = program_headers(b).ok_or_else(|| malformed("program headers out of bounds"))?;
        let mut info = ElfInfo {
            kind,
            machine,
            ..Self::default()
        };
        for &(ptype, offset, _, filesz) in &phdrs {
            let (start, end) =
                segment(b, offset, filesz).ok_or_else(|| malformed("segment out of bounds"))?;
            match ptype {
                PT_INTERP => {
                    let interp =
                        c_string(b, start, end).ok_or_else(|| malformed("bad PT_INTERP"))?;
                    info.interp = Some(interp);
                }
                PT_DYNAMIC => dynamic(b, &phdrs, start, end, &mut info)
                    .ok_or_else(|| malformed("bad dynamic section"))?,
                _ => {}
            }
        }
        Ok(info)
    }

    /// Checks this is an x86-64 executable (`ET_EXEC` or `ET_DYN`).
    pub fn check_executable(&self, name: &str) -> Result<(), ElfError> {
        if self.machine != EM_X86_64 {
            return Err(ElfError::Machine(name.to_owned(), self.machine));
        }
        if !matches!(self.kind, 2 | 3) {
            return Err(ElfError::Malformed(
                name.to_owned(),
                "not an executable (e_type is not EXEC or DYN)",
            ));
        }
        Ok(())
    }
}

/// Test support: writes minimal ELF64 files with chosen dynamic facts.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Writes a minimal ELF64 shared object / executable with the given dynamic facts.
    pub fn elf(
        machine: u16,
        interp: Option<&str>,
        needed: &[&str],
        soname: Option<&str>,
        rpath: Option<&str>,
        runpath: Option<&str>,
    ) -> Vec<u8> {
        const BASE: u64 = 0x40_0000;
        let phnum = 3u64;
        let mut tail = Vec::new();
        let interp_off = 64 + phnum * 56;
        tail.extend(interp.unwrap_or("").as_bytes());
        tail.push(0);
        let strtab_off = interp_off + tail.len() as u64;
        let mut strtab = vec![0u8];
        let mut add = |s: &str| {
            let at = strtab.len() as u64;
            strtab.extend(s.as_bytes());
            strtab.push(0);
            at
        };
        let mut dynamic = Vec::new();
        for n in needed {
            dynamic.push((DT_NEEDED, add(n)));
        }
        for (tag, v) in [
            (DT_SONAME, soname),
            (DT_RPATH, rpath),
            (DT_RUNPATH, runpath),
        ] {
            if let Some(v) = v {
                dynamic.push((tag, add(v)));
            }
        }
        dynamic.push((DT_STRTAB, BASE + strtab_off));
        dynamic.push((DT_STRSZ, strtab.len() as u64));
        dynamic.push((0, 0));
        tail.extend(&strtab);
        while !(interp_off + tail.len() as u64).is_multiple_of(8) {
            tail.push(0);
        }
        let dyn_off = interp_off + tail.len() as u64;
        for (t, v) in &dynamic {
            tail.extend(t.to_le_bytes());
            tail.extend(v.to_le_bytes());
        }
        let total = interp_off + tail.len() as u64;
        let mut b = Vec::new();
        b.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        b.extend(3u16.to_le_bytes());
        b.extend(machine.to_le_bytes());
        b.extend(1u32.to_le_bytes());
        b.extend(0u64.to_le_bytes()); // entry
        b.extend(64u64.to_le_bytes()); // phoff
        b.extend(0u64.to_le_bytes()); // shoff
        b.extend(0u32.to_le_bytes());
        b.extend([64, 0, 56, 0]);
        b.extend((phnum as u16).to_le_bytes());
        b.extend([0; 6]);
        let (interp_type, interp_len) = match interp {
            Some(i) => (PT_INTERP, i.len() as u64 + 1),
            None => (6 /* PT_PHDR, ignored */, 0),
        };
        for (ptype, off, size) in [
            (PT_LOAD, 0, total),
            (interp_type, interp_off, interp_len),
            (PT_DYNAMIC, dyn_off, dynamic.len() as u64 * 16),
        ] {
            b.extend(ptype.to_le_bytes());
            b.extend(4u32.to_le_bytes());
            for v in [off, BASE + off, BASE + off, size, size, 8] {
                b.extend(v.to_le_bytes());
            }
        }
        b.extend(tail);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::testing::elf;
    use super::*;

    #[test]
    fn parses_real_system_binaries() {
        let ls = std::fs::read("/bin/ls").unwrap();
        let info = ElfInfo::parse("/bin/ls", &ls).unwrap();
        info.check_executable("/bin/ls").unwrap();
        assert!(
            info.interp.as_deref().unwrap().contains("ld-linux"),
            "{info:?}"
        );
        assert!(info.needed.iter().any(|n| n == "libc.so.6"), "{info:?}");
    }

    #[test]
    fn rejects_what_is_not_an_x86_64_elf64() {
        assert!(matches!(
            ElfInfo::parse("x", b"#!/bin/sh\n"),
            Err(ElfError::NotElf(_))
        ));
        assert!(matches!(
            ElfInfo::parse("x", b"\x7fELF\x01\x01\x01"),
            Err(ElfError::NotElf64(_))
        ));
        let mut good = elf(EM_X86_64, Some("/ld.so"), &["libc.so"], None, None, None);
        assert!(matches!(
            ElfInfo::parse("x", &good[..40]),
            Err(ElfError::Malformed(..))
        ));
        let len = good.len();
        good.truncate(len - 20);
        assert!(matches!(
            ElfInfo::parse("x", &good),
            Err(ElfError::Malformed(..))
        ));
        let arm = ElfInfo::parse("x", &elf(183, None, &[], None, None, None)).unwrap();
        assert!(matches!(
            arm.check_executable("x"),
            Err(ElfError::Machine(_, 183))
        ));
    }

    #[test]
    fn parses_every_dynamic_fact() {
        let b = elf(
            EM_X86_64,
            Some("/lib/ld.so"),
            &["liba.so", "libb.so"],
            Some("libme.so.1"),
            Some("/r1:/r2"),
            Some(""),
        );
        let info = ElfInfo::parse("x", &b).unwrap();
        assert_eq!(info.interp.as_deref(), Some("/lib/ld.so"));
        assert_eq!(info.needed, ["liba.so", "libb.so"]);
        assert_eq!(info.soname.as_deref(), Some("libme.so.1"));
        assert_eq!(info.rpath, ["/r1", "/r2"]);
        assert_eq!(info.runpath, Some(vec![]));
    }
}
