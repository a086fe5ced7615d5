//! The guest's page tables, walked as the CPU walks them for one access.
//!
//! Completions (`complete`) read and write guest memory by linear address.
//! KVM_TRANSLATE only says whether a page is mapped: it answers `writeable`
//! for every page and knows nothing of the access, so a completed store to
//! a read-only page, or a kernel load from a user page under SMAP, would go
//! through where the CPU raises #PF. This walk applies the CPU's rules (SDM
//! vol. 3, 4.6), gives the #PF error code it would, and sets the accessed
//! and dirty bits as it does. It reads the tables through the runner's own
//! mapping of guest RAM: no ioctl.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::vcpu::PhysicalMemory;

const CR0_PG: u64 = 1 << 31;
const CR0_WP: u64 = 1 << 16;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const CR4_SMEP: u64 = 1 << 20;
const CR4_SMAP: u64 = 1 << 21;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// Entry bits.
const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;
/// Bits 51:12 of an entry: the next table or the page.
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// #PF error code bits.
pub const PF_PRESENT: u32 = 1 << 0;
pub const PF_WRITE: u32 = 1 << 1;
pub const PF_USER: u32 = 1 << 2;
pub const PF_FETCH: u32 = 1 << 4;

/// The vCPU state a walk depends on.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// The current privilege level: 3 makes every access a user access.
    pub cpl: u8,
    /// RFLAGS.AC: at CPL < 3 with SMAP, allows data accesses to user pages.
    pub ac: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Fetch,
}

/// Why an address does not translate for an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The CPU raises #PF with this error code (CR2 = the address).
    PageFault(u32),
    /// Not canonical in 64-bit mode: the CPU raises #GP(0), not #PF.
    NonCanonical,
    /// A page table lies outside RAM (the CPU would read MMIO).
    TableNotRam,
}

/// One entry read during the walk: where it is and how wide (for the
/// accessed and dirty bits).
#[derive(Clone, Copy)]
struct Entry {
    gpa: u64,
    wide: bool,
}

/// The guest-physical address of `linear` for `access`, as the CPU would
/// translate it, setting the accessed bits of the entries used (and the
/// dirty bit of the page for a write).
pub fn translate(mem: &impl PhysicalMemory, p: &Paging, linear: u64, access: Access) -> Result<u64, Miss> {
    if p.cr0 & CR0_PG == 0 {
        return Ok(linear & 0xffff_ffff);
    }
    let long = p.efer & EFER_LMA != 0;
    let pae = p.cr4 & CR4_PAE != 0;
    let nx = p.efer & EFER_NXE != 0 && pae;
    // Bits 63:48 (or 63:57) copy bit 47 (or 56).
    if long {
        let bits = if p.cr4 & CR4_LA57 != 0 { 57 } else { 48 };
        if ((linear as i64) << (64 - bits) >> (64 - bits)) as u64 != linear {
            return Err(Miss::NonCanonical);
        }
    }
    let linear = if long { linear } else { linear & 0xffff_ffff };
    let user = p.cpl == 3;
    let fault_code = |present: bool| {
        let mut code = if present { PF_PRESENT } else { 0 };
        if access == Access::Write {
            code |= PF_WRITE;
        }
        if user {
            code |= PF_USER;
        }
        if access == Access::Fetch && (nx || p.cr4 & CR4_SMEP != 0) {
            code |= PF_FETCH;
        }
        code
    };

    // (index shift, index bits, entry size) per level, top first.
    let levels: &[(u32, u32, bool)] = match (long, pae, p.cr4 & CR4_LA57 != 0) {
        (true, _, true) => &[(48, 9, true), (39, 9, true), (30, 9, true), (21, 9, true), (12, 9, true)],
        (true, _, false) => &[(39, 9, true), (30, 9, true), (21, 9, true), (12, 9, true)],
        (false, true, _) => &[(30, 2, true), (21, 9, true), (12, 9, true)],
        (false, false, _) => &[(22, 10, false), (12, 10, false)],
    };
    let mut table = match (long, pae) {
        (false, true) => p.cr3 & 0xffff_ffe0,
        _ => p.cr3 & ADDRESS,
    };
    let (mut writable, mut user_page, mut no_exec) = (true, true, false);
    let mut used = [Entry { gpa: 0, wide: true }; 5];
    let mut n = 0;
    let mut page = None;
    for (level, &(shift, bits, wide)) in levels.iter().enumerate() {
        let index = (linear >> shift) & ((1 << bits) - 1);
        let size = if wide { 8 } else { 4 };
        let gpa = table + index * size;
        let entry = read_entry(mem, gpa, wide).ok_or(Miss::TableNotRam)?;
        if entry & P == 0 {
            return Err(Miss::PageFault(fault_code(false)));
        }
        // PAE's four PDPTEs carry no access rights (and no accessed bit:
        // bit 5 is reserved there).
        let pdpte = !long && pae && level == 0;
        if !pdpte {
            used[n] = Entry { gpa, wide };
            n += 1;
            writable &= entry & RW != 0;
            user_page &= entry & US != 0;
            no_exec |= nx && entry & XD != 0;
        }
        let last = level == levels.len() - 1;
        // A large page: a 1 GiB PDPTE or a 2 MiB PDE (4 MiB with 32-bit
        // tables and CR4.PSE).
        let large = !last && !pdpte && entry & PS != 0 && (wide && shift <= 30 || !wide && p.cr4 & CR4_PSE != 0);
        if last || large {
            let offset_mask = (1u64 << shift) - 1;
            let base = if wide {
                entry & ADDRESS & !offset_mask
            } else if large {
                // PSE-36: bits 20:13 of the entry are bits 39:32 of the page.
                (entry & 0xffc0_0000) | ((entry >> 13) & 0xff) << 32
            } else {
                entry & 0xffff_f000
            };
            page = Some(base | (linear & offset_mask));
            break;
        }
        table = if wide { entry & ADDRESS } else { entry & 0xffff_f000 };
    }
    let Some(phys) = page else { return Err(Miss::TableNotRam) };

    // The kernel on a user page: SMEP refuses fetches, SMAP data unless AC.
    let kernel_on_user_page = user_page && !user;
    let refused = match access {
        _ if user && !user_page => true,
        Access::Write if !writable && (user || p.cr0 & CR0_WP != 0) => true,
        Access::Fetch => no_exec || kernel_on_user_page && p.cr4 & CR4_SMEP != 0,
        Access::Read | Access::Write => kernel_on_user_page && p.cr4 & CR4_SMAP != 0 && !p.ac,
    };
    if refused {
        return Err(Miss::PageFault(fault_code(true)));
    }
    // As the CPU: accessed on every entry used, dirty on the page written.
    for (i, e) in used[..n].iter().enumerate() {
        let dirty = i + 1 == n && access == Access::Write;
        set_bits(mem, *e, if dirty { A | D } else { A });
    }
    Ok(phys)
}

fn read_entry(mem: &impl PhysicalMemory, gpa: u64, wide: bool) -> Option<u64> {
    if wide {
        let mut b = [0u8; 8];
        mem.read(gpa, &mut b).then(|| u64::from_le_bytes(b))
    } else {
        let mut b = [0u8; 4];
        mem.read(gpa, &mut b).then(|| u64::from(u32::from_le_bytes(b)))
    }
}

/// ORs `bits` into an entry atomically: another vCPU may be changing it.
/// An entry in ROM keeps its bits, as the CPU's write there is dropped.
fn set_bits(mem: &impl PhysicalMemory, e: Entry, bits: u64) {
    let Some(ptr) = mem.writable_address(e.gpa, if e.wide { 8 } else { 4 }) else { return };
    // SAFETY: `ptr` is guest RAM mapped for the runner's life, and entries
    // are naturally aligned (table pages are, and the index scales by the
    // entry's size); guest RAM is only ever accessed atomically or by copy.
    unsafe {
        if e.wide {
            let entry = AtomicU64::from_ptr(ptr.cast());
            if entry.load(Ordering::Relaxed) & bits != bits {
                entry.fetch_or(bits, Ordering::SeqCst);
            }
        } else {
            let entry = AtomicU32::from_ptr(ptr.cast());
            if u64::from(entry.load(Ordering::Relaxed)) & bits != bits {
                entry.fetch_or(bits as u32, Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// 1 MiB of guest RAM at 0.
    struct Ram(RefCell<Vec<u8>>);

    impl PhysicalMemory for Ram {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
            let ram = self.0.borrow();
            let Some(src) = ram.get(gpa as usize..gpa as usize + buf.len()) else { return false };
            buf.copy_from_slice(src);
            true
        }
        fn write(&self, gpa: u64, buf: &[u8]) -> bool {
            let mut ram = self.0.borrow_mut();
            let Some(dst) = ram.get_mut(gpa as usize..gpa as usize + buf.len()) else { return false };
            dst.copy_from_slice(buf);
            true
        }
        fn writable_address(&self, gpa: u64, len: usize) -> Option<*mut u8> {
            let mut ram = self.0.borrow_mut();
            ram.get_mut(gpa as usize..gpa as usize + len).map(|s| s.as_mut_ptr())
        }
    }

    impl Ram {
        fn new() -> Ram {
            Ram(RefCell::new(vec![0; 1 << 20]))
        }
        fn set(&self, gpa: u64, entry: u64) {
            self.write(gpa, &entry.to_le_bytes());
        }
        fn set32(&self, gpa: u64, entry: u32) {
            self.write(gpa, &entry.to_le_bytes());
        }
        fn get(&self, gpa: u64) -> u64 {
            let mut b = [0u8; 8];
            self.read(gpa, &mut b);
            u64::from_le_bytes(b)
        }
    }

    const LONG: Paging = Paging {
        cr0: CR0_PG | CR0_WP | 1,
        cr3: 0x1000,
        cr4: CR4_PAE | CR4_SMEP | CR4_SMAP,
        efer: EFER_LMA | EFER_NXE | 1 << 8,
        cpl: 0,
        ac: false,
    };
    /// The kernel's half: 0xffff_8880_0000_0000 (PML4 index 273).
    const KERNEL: u64 = 0xffff_8880_0000_0000;

    /// Four-level tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD),
    /// 0x4000 (PT), mapping KERNEL + 0x5000 to 0x9000 with `leaf` bits,
    /// KERNEL + 2 MiB as a 2 MiB page at 0x20_0000 and KERNEL + 1 GiB as a
    /// 1 GiB page at 0x4000_0000, every upper entry with `upper` bits.
    fn long_tables(upper: u64, leaf: u64) -> Ram {
        let ram = Ram::new();
        ram.set(0x1000 + 273 * 8, 0x2000 | upper);
        ram.set(0x2000, 0x3000 | upper);
        ram.set(0x2000 + 8, 0x4000_0000 | PS | upper);
        ram.set(0x3000, 0x4000 | upper);
        ram.set(0x3000 + 8, 0x20_0000 | PS | upper);
        ram.set(0x4000 + 5 * 8, 0x9000 | leaf);
        ram
    }

    #[test]
    fn four_level_pages_of_each_size_translate_and_get_their_accessed_and_dirty_bits() {
        let ram = long_tables(P | RW, P | RW);
        assert_eq!(translate(&ram, &LONG, KERNEL + 0x5123, Access::Read), Ok(0x9123));
        assert_eq!(ram.get(0x4000 + 5 * 8), 0x9000 | P | RW | A, "accessed, not dirty");
        assert_eq!(translate(&ram, &LONG, KERNEL + 0x5123, Access::Write), Ok(0x9123));
        assert_eq!(ram.get(0x4000 + 5 * 8), 0x9000 | P | RW | A | D);
        assert_eq!(ram.get(0x1000 + 273 * 8) & A, A);
        assert_eq!(translate(&ram, &LONG, KERNEL + 0x20_0000 + 0x12_3456, Access::Read), Ok(0x32_3456));
        assert_eq!(translate(&ram, &LONG, KERNEL + 0x4000_0000 + 0x1234_5678, Access::Write), Ok(0x5234_5678));
        assert_eq!(ram.get(0x2000 + 8) & D, D, "the 1 GiB page is dirty");
        // Nothing there: not present, the access in the error code.
        assert_eq!(translate(&ram, &LONG, KERNEL + 0x6000, Access::Write), Err(Miss::PageFault(PF_WRITE)));
        assert_eq!(translate(&ram, &LONG, 0x1000, Access::Read), Err(Miss::PageFault(0)));
        assert_eq!(translate(&ram, &LONG, 0x0000_8000_0000_0000, Access::Read), Err(Miss::NonCanonical));
        // Paging off: the address is the physical one.
        let off = Paging { cr0: 1, ..LONG };
        assert_eq!(translate(&ram, &off, 0x1234_5678, Access::Write), Ok(0x1234_5678));
    }

    #[test]
    fn access_rights_fault_as_the_cpu_does() {
        let pf = |code| Err(Miss::PageFault(PF_PRESENT | code));
        // A read-only kernel page: writes fault with CR0.WP, not without.
        let ram = long_tables(P | RW, P);
        assert_eq!(translate(&ram, &LONG, KERNEL + 0x5000, Access::Write), pf(PF_WRITE));
        assert_eq!(ram.get(0x4000 + 5 * 8) & (A | D), 0, "a faulting access sets nothing");
        let no_wp = Paging { cr0: LONG.cr0 & !CR0_WP, ..LONG };
        assert_eq!(translate(&ram, &no_wp, KERNEL + 0x5000, Access::Write), Ok(0x9000));
        // Read-only anywhere on the way makes the page read-only.
        let ram = long_tables(P, P | RW);
        assert_eq!(translate(&ram, &LONG, KERNEL + 0x5000, Access::Write), pf(PF_WRITE));
        // A kernel page from user mode.
        let user = Paging { cpl: 3, ..LONG };
        let ram = long_tables(P | RW | US, P | RW);
        assert_eq!(translate(&ram, &user, KERNEL + 0x5000, Access::Read), pf(PF_USER));
        // A user page from the kernel: SMAP refuses data unless AC is set,
        // SMEP refuses fetches; the user itself may.
        let ram = long_tables(P | RW | US, P | RW | US);
        assert_eq!(translate(&ram, &LONG, KERNEL + 0x5000, Access::Read), pf(0));
        assert_eq!(translate(&ram, &Paging { ac: true, ..LONG }, KERNEL + 0x5000, Access::Write), Ok(0x9000));
        assert_eq!(translate(&ram, &LONG, KERNEL + 0x5000, Access::Fetch), pf(PF_FETCH));
        assert_eq!(translate(&ram, &user, KERNEL + 0x5000, Access::Write), Ok(0x9000));
        // No-execute, only with EFER.NXE.
        let ram = long_tables(P | RW, P | RW | XD);
        assert_eq!(translate(&ram, &LONG, KERNEL + 0x5000, Access::Fetch), pf(PF_FETCH));
        assert_eq!(translate(&ram, &LONG, KERNEL + 0x5000, Access::Read), Ok(0x9000));
    }

    #[test]
    fn thirty_two_bit_tables_translate_with_and_without_pae() {
        // PAE: a PDPTE (no rights), a PD with a 2 MiB page and a PT.
        let ram = Ram::new();
        ram.set(0x1000 + 3 * 8, 0x2000 | P);
        ram.set(0x2000 + 8, 0x4000 | P | RW);
        ram.set(0x4000 + 7 * 8, 0x8000 | P | RW);
        ram.set(0x2000 + 2 * 8, 0x60_0000 | P | PS);
        let pae = Paging { cr0: CR0_PG | CR0_WP | 1, cr3: 0x1000, cr4: CR4_PAE, efer: 0, cpl: 0, ac: false };
        assert_eq!(translate(&ram, &pae, 0xc020_7abc, Access::Write), Ok(0x8abc));
        assert_eq!(translate(&ram, &pae, 0xc041_2345, Access::Read), Ok(0x61_2345));
        assert_eq!(translate(&ram, &pae, 0xc041_2345, Access::Write), Err(Miss::PageFault(PF_PRESENT | PF_WRITE)));
        // Two levels of 4-byte entries, a 4 MiB page with CR4.PSE.
        let ram = Ram::new();
        ram.set32(0x1000 + 0x300 * 4, 0x2000 | (P | RW) as u32);
        ram.set32(0x2000 + 5 * 4, 0x7000 | (P | RW) as u32);
        ram.set32(0x1000 + 0x301 * 4, 0x0080_0000 | (P | PS) as u32);
        let flat = Paging { cr0: CR0_PG | 1, cr3: 0x1000, cr4: CR4_PSE, efer: 0, cpl: 0, ac: false };
        assert_eq!(translate(&ram, &flat, 0xc000_5123, Access::Write), Ok(0x7123));
        assert_eq!(translate(&ram, &flat, 0xc040_0010, Access::Read), Ok(0x80_0010));
        assert_eq!(translate(&ram, &flat, 0xc080_0000, Access::Read), Err(Miss::PageFault(0)));
    }
}
