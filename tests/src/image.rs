//! Guest image plumbing for the probe: reading an ELF64 executable's header, program headers
//! and Xen PVH note, flattening its loadable segments, and wrapping the flat image in a Linux
//! bzImage (a setup sector carrying a boot-protocol 2.15 setup header, then the 64-bit code
//! whose entry is at offset 0x200). Shared by `build.rs` (which makes the images) and the
//! unit tests.

use std::fmt;

/// Where the probe is linked and a bzImage's protected-mode part is loaded.
pub const LOAD_ADDR: u64 = 0x10_0000;
/// `XEN_ELFNOTE_PHYS32_ENTRY`.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Setup sectors after the boot sector (the header spills past the first 512 bytes).
pub const SETUP_SECTS: u8 = 1;
/// Bytes before the protected-mode part of our bzImage.
pub const SETUP_LEN: usize = (SETUP_SECTS as usize + 1) * 512;

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;

/// What is wrong with an input image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageError(pub String);

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ImageError {}

fn err<T>(what: impl Into<String>) -> Result<T, ImageError> {
    Err(ImageError(what.into()))
}

fn field<const N: usize>(b: &[u8], off: u64) -> Result<[u8; N], ImageError> {
    let start = usize::try_from(off).map_err(|_| ImageError("offset overflow".into()))?;
    match b.get(start..).and_then(|s| s.get(..N)) {
        Some(s) => Ok(s.try_into().expect("slice of length N")),
        None => err(format!("file too short for {N} bytes at {off:#x}")),
    }
}

fn u16_at(b: &[u8], off: u64) -> Result<u16, ImageError> {
    field(b, off).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], off: u64) -> Result<u32, ImageError> {
    field(b, off).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], off: u64) -> Result<u64, ImageError> {
    field(b, off).map(u64::from_le_bytes)
}

/// One `PT_LOAD` program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Physical load address.
    pub paddr: u64,
    /// Offset of the file bytes.
    pub offset: u64,
    /// Bytes in the file.
    pub filesz: u64,
    /// Bytes in memory (the rest is zero).
    pub memsz: u64,
}

/// The parts of an ELF64 executable that loaders use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elf {
    /// `e_entry`.
    pub entry: u64,
    /// The loadable segments, in file order.
    pub loads: Vec<Segment>,
    /// The `XEN_ELFNOTE_PHYS32_ENTRY` address, if a PT_NOTE segment has one.
    pub pvh_entry: Option<u32>,
}

impl Elf {
    /// Reads the ELF header and program headers of a little-endian x86-64 executable.
    pub fn parse(b: &[u8]) -> Result<Elf, ImageError> {
        if b.get(..4) != Some(b"\x7fELF") || b.get(4) != Some(&2) || b.get(5) != Some(&1) {
            return err("not a little-endian ELF64 file");
        }
        if u16_at(b, 16)? != ET_EXEC || u16_at(b, 18)? != EM_X86_64 {
            return err("not an x86-64 static executable (ET_EXEC)");
        }
        let phoff = u64_at(b, 32)?;
        let phentsize = u64::from(u16_at(b, 54)?);
        if phentsize < 56 {
            return err("program header entries too small");
        }
        let mut elf = Elf {
            entry: u64_at(b, 24)?,
            loads: Vec::new(),
            pvh_entry: None,
        };
        for i in 0..u64::from(u16_at(b, 56)?) {
            let ph = phoff + i * phentsize;
            let seg = Segment {
                offset: u64_at(b, ph + 8)?,
                paddr: u64_at(b, ph + 24)?,
                filesz: u64_at(b, ph + 32)?,
                memsz: u64_at(b, ph + 40)?,
            };
            match u32_at(b, ph)? {
                PT_LOAD if seg.memsz > 0 => elf.loads.push(seg),
                PT_NOTE => elf.pvh_entry = elf.pvh_entry.or(pvh_note(b, &seg)?),
                _ => {}
            }
        }
        Ok(elf)
    }

    /// Copies the loadable segments into one zero-filled image that starts at `base` and
    /// ends with the highest segment's memory end (so it includes `.bss`/stack space).
    pub fn flatten(&self, file: &[u8], base: u64) -> Result<Vec<u8>, ImageError> {
        let mut end = base;
        for s in &self.loads {
            if s.paddr < base || s.filesz > s.memsz {
                return err(format!(
                    "segment at {:#x} below {base:#x} or bad sizes",
                    s.paddr
                ));
            }
            end = end.max(s.paddr + s.memsz);
        }
        let mut flat = vec![0u8; usize::try_from(end - base).expect("image fits in memory")];
        for s in &self.loads {
            let src = file
                .get(s.offset as usize..)
                .and_then(|f| f.get(..s.filesz as usize))
                .ok_or_else(|| ImageError("segment runs past end of file".into()))?;
            let at = (s.paddr - base) as usize;
            flat[at..at + src.len()].copy_from_slice(src);
        }
        Ok(flat)
    }
}

/// Looks for a `"Xen"` note of type `XEN_ELFNOTE_PHYS32_ENTRY` in a PT_NOTE segment.
fn pvh_note(b: &[u8], seg: &Segment) -> Result<Option<u32>, ImageError> {
    let align4 = |n: u64| (n + 3) & !3;
    let mut off = seg.offset;
    let end = seg.offset + seg.filesz;
    while off + 12 <= end {
        let namesz = u64::from(u32_at(b, off)?);
        let descsz = u64::from(u32_at(b, off + 4)?);
        let kind = u32_at(b, off + 8)?;
        let name = off + 12;
        let desc = name + align4(namesz);
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && namesz == 4 && field::<4>(b, name)? == *b"Xen\0" {
            if descsz < 4 {
                return err("PVH note descriptor shorter than 4 bytes");
            }
            return u32_at(b, desc).map(Some);
        }
        off = desc + align4(descsz);
    }
    Ok(None)
}

/// Setup-header offsets in a bzImage file (Linux `Documentation/arch/x86/boot.rst`).
pub mod hdr {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const SYSSIZE: usize = 0x1f4;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// End of the setup header (version 2.15).
    pub const END: usize = 0x26c;
}

/// `loadflags.LOADED_HIGH`: the protected-mode code goes to 0x100000.
pub const LOADED_HIGH: u8 = 0x01;
/// `xloadflags.XLF_KERNEL_64`: there is a 64-bit entry at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 0x01;
/// Boot protocol version we claim.
pub const BOOT_PROTOCOL: u16 = 0x020f;
/// Longest command line (without NUL) the probe reads, as herd-vmm allows.
pub const CMDLINE_SIZE: u32 = 4095;
/// Highest address the initrd may occupy (Linux's usual limit).
pub const INITRD_ADDR_MAX: u32 = 0x7fff_ffff;
/// Alignment we ask for (Linux's usual `CONFIG_PHYSICAL_ALIGN`); we are not relocatable.
pub const KERNEL_ALIGNMENT: u32 = 0x20_0000;

/// Wraps `flat` (the image loaded at [`LOAD_ADDR`], 64-bit entry at offset 0x200) in a
/// bzImage: boot sector + one setup sector holding the setup header, then `flat`.
pub fn bzimage(flat: &[u8]) -> Result<Vec<u8>, ImageError> {
    if flat.len() < 0x201 {
        return err("image too small to have an entry at offset 0x200");
    }
    let len = u32::try_from(flat.len()).map_err(|_| ImageError("image over 4 GiB".into()))?;
    let mut out = vec![0u8; SETUP_LEN];
    let mut put = |off: usize, bytes: &[u8]| out[off..off + bytes.len()].copy_from_slice(bytes);
    put(hdr::SETUP_SECTS, &[SETUP_SECTS]);
    put(hdr::SYSSIZE, &len.div_ceil(16).to_le_bytes());
    put(hdr::BOOT_FLAG, &0xaa55u16.to_le_bytes());
    // Real-mode entry: jump over the header to `hlt; jmp .` (we have no 16-bit path).
    put(hdr::JUMP, &[0xeb, (hdr::END - (hdr::JUMP + 2)) as u8]);
    put(hdr::END, &[0xf4, 0xeb, 0xfd]);
    put(hdr::HEADER, b"HdrS");
    put(hdr::VERSION, &BOOT_PROTOCOL.to_le_bytes());
    put(hdr::LOADFLAGS, &[LOADED_HIGH]);
    put(hdr::CODE32_START, &(LOAD_ADDR as u32).to_le_bytes());
    put(hdr::INITRD_ADDR_MAX, &INITRD_ADDR_MAX.to_le_bytes());
    put(hdr::KERNEL_ALIGNMENT, &KERNEL_ALIGNMENT.to_le_bytes());
    put(hdr::RELOCATABLE_KERNEL, &[0]);
    put(hdr::XLOADFLAGS, &XLF_KERNEL_64.to_le_bytes());
    put(hdr::CMDLINE_SIZE, &CMDLINE_SIZE.to_le_bytes());
    put(hdr::PREF_ADDRESS, &LOAD_ADDR.to_le_bytes());
    put(hdr::INIT_SIZE, &len.next_multiple_of(4096).to_le_bytes());
    out.extend_from_slice(flat);
    Ok(out)
}

/// Makes both probe images from the linked ELF: checks the entry points, returns the bzImage.
pub fn probe_bzimage(elf_file: &[u8]) -> Result<Vec<u8>, ImageError> {
    let elf = Elf::parse(elf_file)?;
    if elf.pvh_entry != Some(LOAD_ADDR as u32) {
        return err(format!(
            "PVH note entry is {:x?}, want {LOAD_ADDR:#x}",
            elf.pvh_entry
        ));
    }
    if elf.entry != LOAD_ADDR + 0x200 {
        return err(format!(
            "e_entry is {:#x}, want {:#x}",
            elf.entry,
            LOAD_ADDR + 0x200
        ));
    }
    if elf.loads.iter().map(|s| s.paddr).min() != Some(LOAD_ADDR) {
        return err(format!("lowest segment is not at {LOAD_ADDR:#x}"));
    }
    bzimage(&elf.flatten(elf_file, LOAD_ADDR)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_of(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u32_of(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn bzimage_header_fields() {
        let flat: Vec<u8> = (0..0x1234u32).map(|i| i as u8).collect();
        let bz = bzimage(&flat).unwrap();
        assert_eq!(bz.len(), 1024 + flat.len());
        assert_eq!(bz[hdr::SETUP_SECTS], 1);
        assert_eq!(u16_of(&bz, hdr::BOOT_FLAG), 0xaa55);
        assert_eq!(&bz[hdr::HEADER..hdr::HEADER + 4], b"HdrS");
        assert_eq!(u16_of(&bz, hdr::VERSION), 0x020f);
        assert_eq!(bz[hdr::LOADFLAGS] & LOADED_HIGH, LOADED_HIGH);
        assert_eq!(u32_of(&bz, hdr::CODE32_START), 0x10_0000);
        assert_eq!(u16_of(&bz, hdr::XLOADFLAGS), XLF_KERNEL_64);
        assert_eq!(u32_of(&bz, hdr::CMDLINE_SIZE), 4095);
        assert_eq!(u32_of(&bz, hdr::INITRD_ADDR_MAX), 0x7fff_ffff);
        assert_eq!(u32_of(&bz, hdr::KERNEL_ALIGNMENT), 0x20_0000);
        assert_eq!(u32_of(&bz, hdr::SYSSIZE), 0x124);
        assert_eq!(u32_of(&bz, hdr::INIT_SIZE), 0x2000);
        // The jump at 0x200 lands on the hlt after the header.
        assert_eq!(0x202 + usize::from(bz[hdr::JUMP + 1]), hdr::END);
        assert_eq!(bz[hdr::END], 0xf4);
        // The protected-mode part starts after the setup sectors; its 0x200 is the entry.
        assert_eq!(&bz[SETUP_LEN..], &flat[..]);
        assert_eq!(bz[SETUP_LEN + 0x200], flat[0x200]);
    }

    #[test]
    fn bzimage_rejects_tiny_images() {
        assert!(bzimage(&[0; 0x200]).is_err());
    }

    /// A hand-made ELF: header, two program headers (PT_LOAD, PT_NOTE), note, code.
    fn tiny_elf(note_type: u32) -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[24..32].copy_from_slice(&0x100200u64.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        let ph = |f: &mut Vec<u8>, at: usize, kind: u32, vals: [u64; 4]| {
            f[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            f[at + 8..at + 16].copy_from_slice(&vals[0].to_le_bytes());
            f[at + 24..at + 32].copy_from_slice(&vals[1].to_le_bytes());
            f[at + 32..at + 40].copy_from_slice(&vals[2].to_le_bytes());
            f[at + 40..at + 48].copy_from_slice(&vals[3].to_le_bytes());
        };
        ph(&mut f, 64, PT_LOAD, [0x1000, 0x100000, 0x300, 0x2000]);
        ph(&mut f, 120, PT_NOTE, [0x180, 0, 0x2c, 0x2c]);
        // A foreign note first, then the Xen one.
        let mut notes = Vec::new();
        for v in [4u32, 4, 1] {
            notes.extend_from_slice(&v.to_le_bytes());
        }
        notes.extend_from_slice(b"GNU\0abcd");
        for v in [4u32, 4, note_type] {
            notes.extend_from_slice(&v.to_le_bytes());
        }
        notes.extend_from_slice(b"Xen\0");
        notes.extend_from_slice(&0x100000u32.to_le_bytes());
        f[0x180..0x180 + notes.len()].copy_from_slice(&notes);
        f.resize(0x1300, 0);
        for (i, b) in f[0x1000..0x1300].iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        f
    }

    #[test]
    fn parses_elf_and_pvh_note() {
        let f = tiny_elf(XEN_ELFNOTE_PHYS32_ENTRY);
        let elf = Elf::parse(&f).unwrap();
        assert_eq!(elf.entry, 0x100200);
        assert_eq!(elf.pvh_entry, Some(0x100000));
        let want = Segment {
            paddr: 0x100000,
            offset: 0x1000,
            filesz: 0x300,
            memsz: 0x2000,
        };
        assert_eq!(elf.loads, vec![want]);
        assert_eq!(Elf::parse(&tiny_elf(17)).unwrap().pvh_entry, None);
    }

    #[test]
    fn flattens_with_zeroed_tail() {
        let f = tiny_elf(XEN_ELFNOTE_PHYS32_ENTRY);
        let flat = Elf::parse(&f).unwrap().flatten(&f, LOAD_ADDR).unwrap();
        assert_eq!(flat.len(), 0x2000);
        assert_eq!(&flat[..0x300], &f[0x1000..0x1300]);
        assert!(flat[0x300..].iter().all(|&b| b == 0));
        let bz = probe_bzimage(&f).unwrap();
        assert_eq!(bz.len(), SETUP_LEN + 0x2000);
    }

    #[test]
    fn rejects_bad_elves() {
        assert!(Elf::parse(b"\x7fELF").is_err());
        let mut f = tiny_elf(XEN_ELFNOTE_PHYS32_ENTRY);
        f[16] = 3; // ET_DYN
        assert!(Elf::parse(&f).is_err());
        let f = tiny_elf(17);
        assert!(probe_bzimage(&f).is_err());
        let mut f = tiny_elf(XEN_ELFNOTE_PHYS32_ENTRY);
        f.truncate(0x1100);
        let elf = Elf::parse(&f).unwrap();
        assert!(elf.flatten(&f, LOAD_ADDR).is_err());
    }
}
