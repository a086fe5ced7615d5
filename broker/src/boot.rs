//! Kernel loading, the job bhyveload does for bhyve: put the kernel, its
//! command line, an initrd and the boot structures into guest RAM, and say
//! where and how the BSP starts.
//!
//! Low memory map:
//!   0x0500  boot GDT (kernel::boot::GDT)
//!   0x6000  PVH hvm_start_info, memory map at 0x6040, module list at 0x6800
//!   0x7000  Linux boot_params (zero page)
//!   0x8ff0  boot stack top (64-bit entry)
//!   0x9000  identity page tables (64-bit entry)
//!   0x20000 kernel command line
//!   1 MiB   the kernel; the initrd goes at the top of low RAM

use std::fs::File;
use std::path::Path;

use capvm_ipc::memmap::LOW_RAM_END;
use capvm_ipc::{BootState, EntryMode, MemoryRegion};
use capvm_kernel::boot::{identity_page_tables, GDT, GDT_ADDR};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, screen_info};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::config::BootConfig;

const PVH_INFO_ADDR: u64 = 0x6000;
const PVH_MEMMAP_ADDR: u64 = 0x6040;
const PVH_MODLIST_ADDR: u64 = 0x6800;
const ZERO_PAGE_ADDR: u64 = 0x7000;
const BOOT_STACK_TOP: u64 = 0x8ff0;
const CMDLINE_ADDR: u64 = 0x20000;
/// x86 Linux's COMMAND_LINE_SIZE.
const CMDLINE_MAX: usize = 2048;
const HIMEM_START: u64 = 0x10_0000;
/// The end of conventional memory, where the EBDA would start.
const EBDA_START: u64 = 0x9_fc00;
const HIGH_RAM_START: u64 = 1 << 32;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Offset of the 64-bit entry point in a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// screen_info's VIDEO_TYPE_VLFB: a VESA linear framebuffer, which
/// Linux's sysfb hands to simplefb or simpledrm.
const VIDEO_TYPE_VLFB: u8 = 0x23;
/// screen_info's capability: `ext_lfb_base` holds the base's high half.
const VIDEO_CAPABILITY_64BIT_BASE: u32 = 1 << 1;

/// A display's framebuffer, started in its preferred mode (32 bits per
/// pixel, XRGB) so a kernel can draw on it from its first lines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Framebuffer {
    pub addr: u64,
    pub size: u64,
    pub width: u32,
    pub height: u32,
}

impl Framebuffer {
    /// As the boot parameters describe it, as a BIOS's VESA mode would.
    fn screen_info(&self) -> screen_info {
        screen_info {
            orig_video_isVGA: VIDEO_TYPE_VLFB,
            lfb_width: self.width as u16,
            lfb_height: self.height as u16,
            lfb_depth: 32,
            lfb_base: self.addr as u32,
            ext_lfb_base: (self.addr >> 32) as u32,
            capabilities: if self.addr >> 32 != 0 { VIDEO_CAPABILITY_64BIT_BASE } else { 0 },
            // A VESA framebuffer's size is in 64 KiB units.
            lfb_size: (self.size >> 16) as u32,
            lfb_linelength: (self.width * 4) as u16,
            red_size: 8,
            red_pos: 16,
            green_size: 8,
            green_pos: 8,
            blue_size: 8,
            blue_pos: 0,
            ..Default::default()
        }
    }
}

/// Boot ROM sizes: whole 4 KiB pages, as bhyve asks (Debian's
/// OVMF_CODE_4M.fd is not whole 64 KiB blocks), at most 16 MiB with the
/// variable store (it sits below 4 GiB, above the LAPIC).
const ROM_BLOCK: u64 = 4 << 10;
const ROM_MAX: u64 = 16 << 20;
/// The top of the ROM that also sits below 1 MiB, as RAM: the legacy BIOS
/// area SeaBIOS runs from and writes during POST. QEMU aliases only the
/// top 128 KiB there, but SeaBIOS's 256 KiB build has code below 0xE0000
/// that it copies down itself through the i440FX's shadow registers; capvm's
/// host bridge has none ("Unable to unlock ram"), so the copy is made here.
const BIOS_SHADOW: u64 = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {what} {path}: {err}")]
    Open { what: &'static str, path: String, err: std::io::Error },
    #[error("boot.kernel {0}: not an ELF64 kernel or a bzImage")]
    UnknownFormat(String),
    #[error("boot.kernel {path}: {err:?}")]
    Load { path: String, err: loader::Error },
    #[error("boot.cmdline is {0} bytes; Linux takes at most {max}", max = CMDLINE_MAX - 1)]
    CmdlineTooLong(usize),
    #[error("boot.initrd {path} ({size} bytes) does not fit in guest RAM below the kernel's limit; give more memory")]
    InitrdTooBig { path: String, size: u64 },
    #[error("-l bootrom: {path} is {size} bytes; a boot ROM is whole 4 KiB pages, at most 16 MiB")]
    RomSize { path: String, size: u64 },
    #[error("-l bootrom: the variable store {path} is {size} bytes; it must be whole 4 KiB blocks and fit beside the ROM in 16 MiB")]
    VarsSize { path: String, size: u64 },
    #[error("-l bootrom: the variable store {path} is in use by {holder}")]
    VarsLocked { path: String, holder: String },
    #[error("writing boot structures to guest RAM: {0}")]
    Memory(String),
}

/// Splits `size` bytes of RAM around the 32-bit PCI hole; each region's
/// memfd offset follows the previous one.
pub fn memory_regions(size: u64) -> Vec<MemoryRegion> {
    let low = size.min(LOW_RAM_END);
    let mut regions = vec![MemoryRegion { guest_addr: 0, size: low, offset: 0, read_only: false }];
    if size > low {
        regions.push(MemoryRegion { guest_addr: HIGH_RAM_START, size: size - low, offset: low, read_only: false });
    }
    regions
}

fn e820(regions: &[MemoryRegion]) -> Vec<(u64, u64, u32)> {
    let mut map = vec![(0, EBDA_START, E820_RAM), (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED)];
    for r in regions {
        if r.guest_addr == 0 {
            map.push((HIMEM_START, r.size - HIMEM_START, E820_RAM));
        } else {
            map.push((r.guest_addr, r.size, E820_RAM));
        }
    }
    map
}

fn mem_err(e: impl std::fmt::Debug) -> BootError {
    BootError::Memory(format!("{e:?}"))
}

/// What goes into guest memory before the vCPUs start.
pub enum Image<'a> {
    Kernel(&'a BootConfig),
    Rom(Rom),
}

/// A boot ROM, read and checked.
pub struct Rom {
    pub bytes: Vec<u8>,
}

impl Rom {
    pub fn read(path: &Path) -> Result<Rom, BootError> {
        let shown = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|err| BootError::Open { what: "-l bootrom", path: shown.clone(), err })?;
        let size = bytes.len() as u64;
        if size == 0 || !size.is_multiple_of(ROM_BLOCK) || size > ROM_MAX {
            return Err(BootError::RomSize { path: shown, size });
        }
        Ok(Rom { bytes })
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Its region: just below 4 GiB, backed by the RAM memfd past `ram`
    /// bytes, read-only.
    pub fn region(&self, ram: u64) -> MemoryRegion {
        MemoryRegion { guest_addr: (1 << 32) - self.size(), size: self.size(), offset: ram, read_only: true }
    }

    /// Puts the ROM into its region and its top 256 KiB below 1 MiB in RAM;
    /// the vCPUs start in the reset state, at its reset vector.
    pub fn load(&self, mem: &GuestMemoryMmap) -> Result<BootState, BootError> {
        mem.write_slice(&self.bytes, GuestAddress((1 << 32) - self.size())).map_err(mem_err)?;
        let shadow = self.size().min(BIOS_SHADOW) as usize;
        let top = &self.bytes[self.bytes.len() - shadow..];
        mem.write_slice(top, GuestAddress(HIMEM_START - shadow as u64)).map_err(mem_err)?;
        Ok(BootState { mode: EntryMode::Reset, entry: 0, rsp: 0, rsi: 0, rbx: 0 })
    }
}

/// The firmware's variable store (`-l bootrom,ROM,VARFILE`): a file the
/// runner maps as a flash just below the ROM. Opened read-write and locked
/// like a disk image, so two VMs cannot both write one.
pub struct VarStore {
    pub file: File,
    pub size: u64,
}

impl VarStore {
    pub fn open(path: &Path, rom: &Rom) -> Result<VarStore, BootError> {
        let shown = path.display().to_string();
        let open_err = |err| BootError::Open { what: "-l bootrom variable store", path: shown.clone(), err };
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let size = meta.len();
        if !meta.is_file() || size == 0 || !size.is_multiple_of(4096) || size + rom.size() > ROM_MAX {
            return Err(BootError::VarsSize { path: shown, size });
        }
        crate::devices::image_lock::lock(&file, false)
            .map_err(|holder| BootError::VarsLocked { path: shown.clone(), holder })?;
        Ok(VarStore { file, size })
    }

    /// Where the flash sits: right below the ROM, as bhyve places it.
    pub fn spec(&self, rom: &Rom) -> capvm_ipc::FlashSpec {
        capvm_ipc::FlashSpec { guest_addr: (1 << 32) - rom.size() - self.size, size: self.size }
    }
}

/// Loads the kernel, its command line and initrd, and the ACPI tables for
/// `cpus` vCPUs, and says where to start. A kernel booted with a zero
/// page (64-bit entry) is told of `framebuffer` in its screen_info; a PVH
/// kernel has nowhere to be told.
pub fn load(
    mem: &GuestMemoryMmap,
    regions: &[MemoryRegion],
    cfg: &BootConfig,
    cpus: u32,
    i8042: bool,
    framebuffer: Option<Framebuffer>,
) -> Result<BootState, BootError> {
    let kpath = cfg.kernel.display().to_string();
    let mut kernel =
        File::open(&cfg.kernel).map_err(|err| BootError::Open { what: "boot.kernel", path: kpath.clone(), err })?;
    use loader::bzimage::Error as BzError;
    use loader::elf::Error as ElfError;
    let (result, bzimage) = match Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => (r, false),
        // Not an ELF at all (too short counts): maybe a bzImage.
        Err(loader::Error::Elf(ElfError::InvalidElfMagicNumber | ElfError::ReadElfHeader)) => {
            match BzImage::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START))) {
                Ok(r) => (r, true),
                Err(loader::Error::Bzimage(
                    BzError::InvalidBzImage | BzError::ReadBzImageHeader | BzError::SeekBzImageHeader,
                )) => return Err(BootError::UnknownFormat(kpath)),
                Err(err) => return Err(BootError::Load { path: kpath, err }),
            }
        }
        Err(err) => return Err(BootError::Load { path: kpath, err }),
    };

    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + 8 * i as u64)).map_err(mem_err)?;
    }
    let ram_top = regions.iter().map(|r| r.guest_addr + r.size).max().unwrap_or(0);
    for (addr, table) in crate::acpi::tables(&crate::acpi::Platform { cpus, ram_top, i8042 }) {
        mem.write_slice(&table, GuestAddress(addr)).map_err(mem_err)?;
    }

    if cfg.cmdline.len() >= CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong(cfg.cmdline.len()));
    }
    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(mem_err)?;
    if !cfg.cmdline.is_empty() {
        cmdline.insert_str(&cfg.cmdline).map_err(mem_err)?;
    }
    loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline).map_err(mem_err)?;

    let initrd_max = match &result.setup_header {
        Some(h) if h.initrd_addr_max != 0 => h.initrd_addr_max as u64 + 1,
        _ => LOW_RAM_END,
    };
    let initrd = match &cfg.initrd {
        Some(p) => Some(load_initrd(mem, regions[0].size.min(initrd_max), p, result.kernel_end)?),
        None => None,
    };

    match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) if !bzimage => {
            write_pvh_info(mem, regions, initrd)?;
            Ok(BootState { mode: EntryMode::Pvh32, entry: entry.0, rsp: 0, rsi: 0, rbx: PVH_INFO_ADDR })
        }
        _ => {
            for (addr, entry) in identity_page_tables() {
                mem.write_obj(entry, GuestAddress(addr)).map_err(mem_err)?;
            }
            write_zero_page(mem, regions, &result, cfg.cmdline.len(), initrd, framebuffer)?;
            let entry = if bzimage { result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET } else { result.kernel_load.0 };
            Ok(BootState { mode: EntryMode::Long64, entry, rsp: BOOT_STACK_TOP, rsi: ZERO_PAGE_ADDR, rbx: 0 })
        }
    }
}

/// Puts the initrd page-aligned at the top of `limit`, above the kernel.
fn load_initrd(mem: &GuestMemoryMmap, limit: u64, path: &Path, kernel_end: u64) -> Result<(u64, u64), BootError> {
    let shown = path.display().to_string();
    let data = std::fs::read(path).map_err(|err| BootError::Open { what: "boot.initrd", path: shown.clone(), err })?;
    let size = data.len() as u64;
    let addr = limit.checked_sub(size).map(|a| a & !0xfff).filter(|&a| a >= kernel_end.max(HIMEM_START));
    let Some(addr) = addr else {
        return Err(BootError::InitrdTooBig { path: shown, size });
    };
    mem.write_slice(&data, GuestAddress(addr)).map_err(mem_err)?;
    Ok((addr, size))
}

fn write_pvh_info(
    mem: &GuestMemoryMmap,
    regions: &[MemoryRegion],
    initrd: Option<(u64, u64)>,
) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = e820(regions)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry { addr, size, type_, reserved: 0 })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        rsdp_paddr: crate::acpi::RSDP_ADDR,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> =
        initrd.iter().map(|&(paddr, size)| hvm_modlist_entry { paddr, size, ..Default::default() }).collect();
    if !modules.is_empty() {
        info.nr_modules = modules.len() as u32;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_ADDR));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem).map_err(mem_err)
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    regions: &[MemoryRegion],
    result: &KernelLoaderResult,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    framebuffer: Option<Framebuffer>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(fb) = framebuffer {
        params.screen_info = fb.screen_info();
    }
    if let Some(hdr) = result.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32 + 1;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820(regions);
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry { addr: *addr, size: *size, r#type: *type_ };
    }
    params.e820_entries = map.len() as u8;
    params.acpi_rsdp_addr = crate::acpi::RSDP_ADDR;
    let bp = BootParams::new(&params, GuestAddress(ZERO_PAGE_ADDR));
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem).map_err(mem_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framebuffer_is_a_vesa_linear_framebuffer_in_screen_info() {
        let fb = Framebuffer { addr: 0xc000_0000, size: 32 << 20, width: 800, height: 600 };
        let si = fb.screen_info();
        let (isvga, w, h, depth, base, size, line) = (
            si.orig_video_isVGA,
            si.lfb_width,
            si.lfb_height,
            si.lfb_depth,
            si.lfb_base,
            si.lfb_size,
            si.lfb_linelength,
        );
        assert_eq!((isvga, w, h, depth, base, line), (0x23, 800, 600, 32, 0xc000_0000, 3200));
        assert_eq!(size, 512, "in 64 KiB units");
        // XRGB8888, which Linux's sysfb matches as "x8r8g8b8".
        let rgbx = [si.red_size, si.red_pos, si.green_size, si.green_pos, si.blue_size, si.blue_pos, si.rsvd_size];
        assert_eq!(rgbx, [8, 16, 8, 8, 8, 0, 0]);
        let (ext, caps) = (si.ext_lfb_base, si.capabilities);
        assert_eq!((ext, caps), (0, 0));
        let high = Framebuffer { addr: 0x1_2000_0000, ..fb }.screen_info();
        let (base, ext, caps) = (high.lfb_base, high.ext_lfb_base, high.capabilities);
        assert_eq!((base, ext, caps), (0x2000_0000, 1, 2));
    }

    #[test]
    fn memory_regions_split_around_the_pci_hole() {
        assert_eq!(
            memory_regions(64 << 20),
            vec![MemoryRegion { guest_addr: 0, size: 64 << 20, offset: 0, read_only: false }]
        );
        let r = memory_regions(4 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[1],
            MemoryRegion { guest_addr: 1 << 32, size: (4 << 30) - LOW_RAM_END, offset: LOW_RAM_END, read_only: false }
        );
    }

    #[test]
    fn e820_reserves_the_bios_area_and_covers_all_ram() {
        let map = e820(&memory_regions(64 << 20));
        let ram: u64 = map.iter().filter(|e| e.2 == E820_RAM).map(|e| e.1).sum();
        assert_eq!(ram, (64 << 20) - (HIMEM_START - EBDA_START));
        assert!(map.contains(&(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED)));
    }
}
