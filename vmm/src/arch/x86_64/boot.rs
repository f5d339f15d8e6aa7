//! Puts a kernel, its initrd and command line into guest memory and writes what its boot
//! protocol needs to find them: the PVH start info or the Linux zero page, plus the GDT and
//! (for the 64-bit protocol) identity page tables.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{CMDLINE_ADDR, GDT_ADDR, HIMEM_ADDR, PAGE_SIZE, PVH_INFO_ADDR, ZERO_PAGE_ADDR};
use super::memory_map::{E820Entry, e820_map, low_ram_end};
use super::paging::{self, PagingError};
use super::regs::{BootEntry, gdt_for};

/// Errors loading a kernel or initrd, or writing boot structures.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot read the kernel image")]
    ReadKernel(#[source] std::io::Error),
    #[error("the kernel image is neither an ELF vmlinux nor a bzImage")]
    NotAKernel,
    #[error("the kernel image is not loadable")]
    BadKernel(#[source] linux_loader::loader::Error),
    #[error(
        "the kernel needs memory up to {end:#x}, beyond the guest's RAM below the MMIO hole at {limit:#x}"
    )]
    KernelTooLarge { end: u64, limit: u64 },
    #[error("cannot read the initrd")]
    ReadInitrd(#[source] std::io::Error),
    #[error(
        "the initrd ({size} bytes) does not fit in guest memory between the kernel end {kernel_end:#x} and {limit:#x}"
    )]
    InitrdTooLarge {
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("cannot write {0} to guest memory")]
    Write(&'static str, #[source] vm_memory::GuestMemoryError),
    #[error(transparent)]
    Paging(#[from] PagingError),
}

/// Where a loaded kernel is entered and what its header said.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub entry: BootEntry,
    /// First byte past what the kernel occupies (for a bzImage: its `init_size` footprint).
    pub end: u64,
    /// The bzImage setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
}

/// An initrd placed in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub addr: u64,
    pub size: u64,
}

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
/// A bzImage's 64-bit entry point sits this far into its protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `type_of_loader` for a boot loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Loads an ELF vmlinux or a bzImage from `file`.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    file: &mut File,
    mem_bytes: u64,
) -> Result<LoadedKernel, BootError> {
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|_| BootError::NotAKernel)?;
    file.seek(SeekFrom::Start(0))
        .map_err(BootError::ReadKernel)?;
    let himem = Some(GuestAddress(HIMEM_ADDR));
    let kernel = if magic == ELF_MAGIC {
        let result = Elf::load(mem, None, file, himem).map_err(BootError::BadKernel)?;
        from_elf(result)
    } else {
        let result = BzImage::load(mem, None, file, himem).map_err(|e| match e {
            linux_loader::loader::Error::Bzimage(
                linux_loader::loader::bzimage::Error::InvalidBzImage,
            ) => BootError::NotAKernel,
            other => BootError::BadKernel(other),
        })?;
        from_bzimage(result)
    };
    let limit = low_ram_end(mem_bytes);
    if kernel.end > limit {
        return Err(BootError::KernelTooLarge {
            end: kernel.end,
            limit,
        });
    }
    Ok(kernel)
}

fn from_elf(result: KernelLoaderResult) -> LoadedKernel {
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => BootEntry::Pvh { entry: addr.0 },
        _ => BootEntry::Linux64 {
            entry: result.kernel_load.0,
        },
    };
    LoadedKernel {
        entry,
        end: result.kernel_end,
        setup_header: None,
    }
}

fn from_bzimage(result: KernelLoaderResult) -> LoadedKernel {
    let load = result.kernel_load.0;
    let hdr = result.setup_header;
    // The decompressor works in place and needs `init_size` bytes from the load address.
    let init_size = hdr.map_or(0, |h| u64::from(h.init_size));
    LoadedKernel {
        entry: BootEntry::Linux64 {
            entry: load + BZIMAGE_64BIT_ENTRY_OFFSET,
        },
        end: result.kernel_end.max(load + init_size),
        setup_header: hdr,
    }
}

/// Where each part of a (possibly multi-part) initrd goes: parts are concatenated, each starting
/// 4-byte aligned as Linux requires of concatenated cpio archives, and the whole placed
/// page-aligned as high as it fits below the MMIO hole and the kernel's `initrd_addr_max`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitrdPlan {
    /// Guest address of each part.
    pub parts: Vec<u64>,
    /// The whole initrd as the guest is told about it.
    pub initrd: LoadedInitrd,
}

/// Plans the placement of initrd parts of `sizes` bytes.
pub fn plan_initrd(
    sizes: &[u64],
    kernel: &LoadedKernel,
    mem_bytes: u64,
) -> Result<InitrdPlan, BootError> {
    let mut offsets = Vec::with_capacity(sizes.len());
    let mut size = 0u64;
    for part in sizes {
        size = size.next_multiple_of(4);
        offsets.push(size);
        size = size.saturating_add(*part);
    }
    let mut limit = low_ram_end(mem_bytes);
    if let Some(hdr) = kernel.setup_header.filter(|h| h.initrd_addr_max != 0) {
        limit = limit.min(u64::from(hdr.initrd_addr_max) + 1);
    }
    let kernel_end = kernel.end.next_multiple_of(PAGE_SIZE);
    let too_large = BootError::InitrdTooLarge {
        size,
        kernel_end,
        limit,
    };
    let addr = match limit.checked_sub(size) {
        Some(top) if top & !(PAGE_SIZE - 1) >= kernel_end => top & !(PAGE_SIZE - 1),
        _ => return Err(too_large),
    };
    Ok(InitrdPlan {
        parts: offsets.into_iter().map(|o| addr + o).collect(),
        initrd: LoadedInitrd { addr, size },
    })
}

/// Copies `size` bytes of `file` to guest address `addr` (one planned part).
pub fn load_initrd_part(
    mem: &GuestMemoryMmap,
    file: &mut File,
    addr: u64,
    size: u64,
) -> Result<(), BootError> {
    let len = usize::try_from(size).map_err(|_| {
        BootError::ReadInitrd(std::io::Error::other(
            "initrd larger than the address space",
        ))
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, len)
        .map_err(|e| BootError::ReadInitrd(std::io::Error::other(e)))
}

/// Writes the command line, GDT and the protocol's boot structures.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    initrd: Option<LoadedInitrd>,
    cmdline: &str,
    mem_bytes: u64,
) -> Result<(), BootError> {
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    mem.write_slice(&line, GuestAddress(CMDLINE_ADDR))
        .map_err(|e| BootError::Write("the command line", e))?;
    let gdt: Vec<u8> = gdt_for(kernel.entry)
        .iter()
        .flat_map(|d| d.to_le_bytes())
        .collect();
    mem.write_slice(&gdt, GuestAddress(GDT_ADDR))
        .map_err(|e| BootError::Write("the GDT", e))?;
    let map = e820_map(mem_bytes);
    match kernel.entry {
        BootEntry::Pvh { .. } => write_pvh_start_info(mem, initrd, &map),
        BootEntry::Linux64 { .. } => {
            paging::write(mem)?;
            let params = zero_page(kernel.setup_header, initrd, cmdline.len(), &map);
            mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
                .map_err(|e| BootError::Write("the zero page", e))
        }
    }
}

/// The Linux zero page for the 64-bit boot protocol.
pub fn zero_page(
    header: Option<setup_header>,
    initrd: Option<LoadedInitrd>,
    cmdline_len: usize,
    map: &[E820Entry],
) -> boot_params {
    let mut params = boot_params {
        hdr: header.unwrap_or_default(),
        ..Default::default()
    };
    let hdr = &mut params.hdr;
    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    hdr.cmdline_size = cmdline_len as u32;
    if hdr.kernel_alignment == 0 {
        hdr.kernel_alignment = 0x100_0000;
    }
    if let Some(initrd) = initrd {
        hdr.ramdisk_image = initrd.addr as u32;
        hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_image = (initrd.addr >> 32) as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    for (slot, e) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.start,
            size: e.len,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    params
}

/// Writes `hvm_start_info` at `PVH_INFO_ADDR`, followed by its memory map and module list.
fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<LoadedInitrd>,
    map: &[E820Entry],
) -> Result<(), BootError> {
    let write_err = |e| BootError::Write("the PVH start info", e);
    let memmap_addr = PVH_INFO_ADDR + std::mem::size_of::<hvm_start_info>() as u64;
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (i, e) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.start,
            size: e.len,
            type_: e.kind,
            reserved: 0,
        };
        mem.write_obj(entry, GuestAddress(memmap_addr + i as u64 * entry_size))
            .map_err(write_err)?;
    }
    let modlist_addr = memmap_addr + map.len() as u64 * entry_size;
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: memmap_addr,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr,
            size: initrd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(modlist_addr))
            .map_err(write_err)?;
        info.nr_modules = 1;
        info.modlist_paddr = modlist_addr;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_ADDR))
        .map_err(write_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MEM: u64 = 64 << 20;

    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f
    }

    fn kernel_at(end: u64) -> LoadedKernel {
        LoadedKernel {
            entry: BootEntry::Pvh { entry: 0x100000 },
            end,
            setup_header: None,
        }
    }

    #[test]
    fn file_that_is_neither_elf_nor_bzimage_is_not_a_kernel() {
        let err = load_kernel(&guest(), &mut file_with(&[0x55; 4096]), MEM).unwrap_err();
        assert!(matches!(err, BootError::NotAKernel), "{err}");
        let err = load_kernel(&guest(), &mut file_with(b"ab"), MEM).unwrap_err();
        assert!(matches!(err, BootError::NotAKernel), "{err}");
    }

    fn load_initrd(
        mem: &GuestMemoryMmap,
        file: &mut File,
        kernel: &LoadedKernel,
        mem_bytes: u64,
    ) -> Result<LoadedInitrd, BootError> {
        let plan = plan_initrd(&[file.metadata().unwrap().len()], kernel, mem_bytes)?;
        load_initrd_part(mem, file, plan.parts[0], plan.initrd.size)?;
        Ok(plan.initrd)
    }

    #[test]
    fn initrd_parts_are_concatenated_4_byte_aligned() {
        let plan = plan_initrd(&[10, 3, 8], &kernel_at(0x200000), MEM).unwrap();
        let a = plan.initrd.addr;
        assert_eq!(plan.parts, vec![a, a + 12, a + 16]);
        assert_eq!(plan.initrd.size, 24);
        assert_eq!(a % PAGE_SIZE, 0);
        assert!(a + 24 <= MEM);
    }

    #[test]
    fn initrd_goes_page_aligned_to_the_top_of_low_memory() {
        let mem = guest();
        let data = vec![7u8; 10_000];
        let initrd = load_initrd(&mem, &mut file_with(&data), &kernel_at(0x200000), MEM).unwrap();
        assert_eq!(initrd.size, 10_000);
        assert_eq!(initrd.addr % PAGE_SIZE, 0);
        assert!(
            initrd.addr + initrd.size <= MEM && initrd.addr + initrd.size > MEM - PAGE_SIZE * 2
        );
        let mut back = vec![0u8; 10_000];
        mem.read_slice(&mut back, GuestAddress(initrd.addr))
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn initrd_that_would_overlap_the_kernel_is_refused() {
        let mem = guest();
        let data = vec![0u8; 4 << 20];
        let err = load_initrd(
            &mem,
            &mut file_with(&data),
            &kernel_at(MEM - (2 << 20)),
            MEM,
        )
        .unwrap_err();
        assert!(
            matches!(err, BootError::InitrdTooLarge { size, .. } if size == 4 << 20),
            "{err}"
        );
    }

    #[test]
    fn zero_page_points_at_cmdline_initrd_and_carries_the_e820_map() {
        let map = e820_map(MEM);
        let initrd = LoadedInitrd {
            addr: 0x300_0000,
            size: 0x1234,
        };
        let p = zero_page(None, Some(initrd), 17, &map);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ p.hdr.cmdline_size }, 17);
        assert_eq!(
            ({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size }),
            (0x300_0000, 0x1234)
        );
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!(p.e820_entries as usize, map.len());
        assert_eq!({ p.e820_table[2].addr }, HIMEM_ADDR);
    }

    #[test]
    fn pvh_start_info_lists_memory_map_cmdline_and_initrd_module() {
        let mem = guest();
        let kernel = kernel_at(0x200000);
        let initrd = LoadedInitrd {
            addr: 0x300_0000,
            size: 0x1234,
        };
        write_boot_info(&mem, &kernel, Some(initrd), "console=ttyS0", MEM).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!((info.magic, info.version), (XEN_HVM_START_MAGIC, 1));
        assert_eq!(info.memmap_entries, 3);
        let last: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(info.memmap_paddr + 48)).unwrap();
        assert_eq!(
            (last.addr, last.addr + last.size, last.type_),
            (HIMEM_ADDR, MEM, 1)
        );
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 0x1234));
        let mut line = [0u8; 14];
        mem.read_slice(&mut line, GuestAddress(info.cmdline_paddr))
            .unwrap();
        assert_eq!(&line, b"console=ttyS0\0");
    }
}
