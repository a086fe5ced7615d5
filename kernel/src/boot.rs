//! The platform state at the first guest instruction: one GDT for both entry
//! modes, the identity page tables for 64-bit entry, and the registers.

/// Where the broker puts the boot GDT in guest memory.
pub const GDT_ADDR: u64 = 0x500;
/// Where the boot page tables start (PML4, PDPT, then PDs for 4 GiB).
pub const PML4_ADDR: u64 = 0x9000;
/// The 4 GiB identity map needs a PML4, a PDPT and four page directories.
pub const PAGE_TABLE_PAGES: u64 = 6;

pub const SEL_CODE64: u16 = 0x08;
pub const SEL_CODE32: u16 = 0x10;
pub const SEL_DATA: u16 = 0x18;
pub const SEL_TSS: u16 = 0x20;

/// Flat descriptors: null, 64-bit code, 32-bit code, data, TSS.
pub const GDT: [u64; 5] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// A GDT descriptor from its flags (access byte and G/DB/L nibble), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The 4 GiB identity map with 2 MiB pages, as (guest address, entry) pairs
/// to be written as little-endian u64s.
pub fn identity_page_tables() -> Vec<(u64, u64)> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    let pdpt = PML4_ADDR + 0x1000;
    let pd = PML4_ADDR + 0x2000;
    let mut out = vec![(PML4_ADDR, pdpt | PRESENT_RW)];
    for g in 0..4u64 {
        out.push((pdpt + g * 8, (pd + g * 0x1000) | PRESENT_RW));
        for i in 0..512u64 {
            let addr = (g << 30) | (i << 21);
            out.push((pd + g * 0x1000 + i * 8, addr | PRESENT_RW | HUGE));
        }
    }
    out
}

/// How the guest is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh32,
    /// 64-bit long mode on the identity map, RSI = boot_params.
    Long64,
}

/// Registers at the first instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootRegs {
    pub mode: EntryMode,
    pub entry: u64,
    pub rsp: u64,
    pub rsi: u64,
    pub rbx: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entry_matches_known_descriptors() {
        // The well-known flat 64-bit code and data descriptors.
        assert_eq!(GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(GDT[3], 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn identity_page_tables_map_4gib_with_2mib_pages() {
        let t = identity_page_tables();
        assert_eq!(t.len(), 1 + 4 + 4 * 512);
        let last = t.last().unwrap();
        assert_eq!(last.1 & !0xfff, (4u64 << 30) - (2 << 20));
        assert!(t.iter().all(|(a, _)| *a >= PML4_ADDR && *a < PML4_ADDR + PAGE_TABLE_PAGES * 0x1000));
    }
}
