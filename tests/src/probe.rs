//! Where the probe guest images built by `build.rs` are.
//!
//! Both images hold the same code, linked at 0x100000: the ELF boots through PVH (its Xen
//! `PHYS32_ENTRY` note names 0x100000), the bzImage through the 64-bit Linux boot protocol
//! (entry 0x100200). See `resources/probe` for what the probe prints and its command line.

use std::path::Path;

/// The probe as a static ELF with a PVH note.
pub fn pvh_elf() -> &'static Path {
    Path::new(env!("HERD_PROBE_ELF"))
}

/// The probe as a bzImage (64-bit Linux boot protocol).
pub fn bzimage() -> &'static Path {
    Path::new(env!("HERD_PROBE_BZIMAGE"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Elf, LOAD_ADDR};
    use linux_loader::loader::{
        BzImage, Elf as ElfLoader, KernelLoader, KernelLoaderResult, PvhBootCapability,
    };
    use std::fs::File;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    type Mem = GuestMemoryMmap<()>;

    fn memory() -> Mem {
        Mem::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    fn load<L: KernelLoader>(path: &Path, mem: &Mem) -> KernelLoaderResult {
        let mut f = File::open(path).unwrap();
        L::load(mem, None, &mut f, Some(GuestAddress(LOAD_ADDR))).unwrap()
    }

    #[test]
    fn elf_is_static_with_pvh_note() {
        let file = std::fs::read(pvh_elf()).unwrap();
        let elf = Elf::parse(&file).unwrap();
        assert_eq!(elf.pvh_entry, Some(0x10_0000));
        assert_eq!(elf.entry, 0x10_0200);
        assert_eq!(elf.loads[0].paddr, 0x10_0000);
    }

    #[test]
    fn linux_loader_finds_the_pvh_entry() {
        let mem = memory();
        let res = load::<ElfLoader>(pvh_elf(), &mem);
        let want = PvhBootCapability::PvhEntryPresent(GuestAddress(0x10_0000));
        assert_eq!(res.pvh_boot_cap, want);
        assert_eq!(res.kernel_load, GuestAddress(0x10_0200));
        assert!(res.kernel_end > 0x10_0200);
    }

    #[test]
    fn linux_loader_accepts_the_bzimage() {
        let mem = memory();
        let res = load::<BzImage>(bzimage(), &mem);
        assert_eq!(res.kernel_load, GuestAddress(0x10_0000));
        let hdr = res.setup_header.expect("bzImage has a setup header");
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ hdr.xloadflags } & 1, 1);
        // The same code is at 0x100200 whichever image was loaded.
        let mem2 = memory();
        load::<ElfLoader>(pvh_elf(), &mem2);
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        mem.read_slice(&mut a, GuestAddress(0x10_0200)).unwrap();
        mem2.read_slice(&mut b, GuestAddress(0x10_0200)).unwrap();
        assert_eq!(a, b);
    }
}
