//! The platform map every process agrees on, written once: where RAM ends
//! below 4 GiB, where PCI BARs may live, where ECAM and the interrupt
//! controllers sit, the platform's I/O ports and its GSIs. The broker lays
//! devices out from it and describes it in ACPI; the vCPU runner answers
//! the platform ports and checks every BAR move and MSI route against it.

// ---- memory ----

/// RAM below 4 GiB ends here; the rest of RAM starts at 4 GiB.
pub const LOW_RAM_END: u64 = 0xc000_0000;
/// The 32-bit window for memory BARs (the broker places them here).
pub const PCI_MMIO32: (u64, u64) = (0xc000_0000, 0xe000_0000);
/// The rest of the 32-bit hole, above ECAM and below the IOAPIC: firmware
/// places BARs itself, and SeaBIOS allocates downwards from 0xfec00000.
pub const PCI_MMIO32_HIGH: (u64, u64) = (ECAM_BASE + ECAM_SIZE, IOAPIC_ADDR);
/// PCI Express enhanced configuration (ECAM) for bus 0 only: 1 MiB.
pub const ECAM_BASE: u64 = 0xe000_0000;
pub const ECAM_SIZE: u64 = 1 << 20;
/// The in-kernel IOAPIC's registers.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APICs' registers, and the window MSI writes go to.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
pub const MSI_WINDOW: (u64, u64) = (LAPIC_ADDR, 0x10_0000);
/// Fixed platform MMIO that no BAR may cover: IOAPIC, HPET, LAPIC, and the
/// top 2 MiB (firmware's traditional home).
pub const PLATFORM_HOLES: [(u64, u64); 3] =
    [(IOAPIC_ADDR, 0xfed0_0000 - IOAPIC_ADDR), MSI_WINDOW, (0xffe0_0000, 0x20_0000)];

// ---- I/O ports the runner answers itself ----

/// ACPI PM1a event block (status, enable) and control block, at bhyve's ports.
pub const PM1A_EVT_BLK: u16 = 0x400;
pub const PM1A_CNT_BLK: u16 = 0x404;
/// The 32-bit ACPI PM timer.
pub const PM_TMR_BLK: u16 = 0x408;
/// SLP_TYP for S5 in PM1a_CNT (bhyve's \_S5): SLP_EN with it powers off.
pub const SLP_TYP_S5: u8 = 5;
/// The reset control register, and what the FADT's reset register writes
/// there: RST_CPU (bit 2) and SYS_RST (bit 1).
pub const RESET_PORT: u16 = 0xcf9;
pub const RESET_VALUE: u8 = 6;
/// The RTC and its CMOS RAM (index, data), and the CMOS byte that holds
/// the century (the FADT names it).
pub const RTC_INDEX: u16 = 0x70;
pub const RTC_DATA: u16 = 0x71;
pub const CMOS_CENTURY: u8 = 0x32;
/// PCI configuration mechanism #1.
pub const PCI_CONFIG_ADDRESS: u16 = 0xcf8;
pub const PCI_CONFIG_DATA: u16 = 0xcfc;

// ---- interrupts ----

/// The SCI's ISA IRQ (level, active high; no event ever fires).
pub const SCI_IRQ: u8 = 9;
/// GSIs 0-23 are the IOAPIC's pins; MSI routes take the ones above.
pub const FIRST_MSI_GSI: u32 = 24;
/// The 64-bit BAR window ends here (1 TiB: inside every host's physical
/// address width).
pub const PCI_MMIO64_END: u64 = 1 << 40;

/// Where the 64-bit BAR window starts for a guest with `ram_top` (the end
/// of RAM above 4 GiB, or 4 GiB): the next 1 GiB boundary.
pub fn pci_mmio64_start(ram_top: u64) -> u64 {
    ram_top.max(1 << 32).next_multiple_of(1 << 30)
}

/// The IOAPIC pins PCI INTx# lines are wired to: 16-23, above the ISA IRQs.
pub const PCI_INTX_GSIS: std::ops::Range<u32> = 16..24;

/// The GSI of `slot`'s interrupt pin `pin` (1 = INTA# .. 4 = INTD#): the
/// usual swizzle, so neighbouring slots spread over the eight pins. The
/// DSDT's _PRT says the same to the guest.
pub fn pci_intx_gsi(slot: u8, pin: u8) -> u32 {
    let lines = PCI_INTX_GSIS.end - PCI_INTX_GSIS.start;
    PCI_INTX_GSIS.start + (slot as u32 + pin.saturating_sub(1) as u32) % lines
}

/// Whether `[addr, addr + size)` is a place a BAR may be: inside one of the
/// BAR windows and clear of RAM, ECAM and the platform holes.
pub fn bar_fits(addr: u64, size: u64, ram: &[(u64, u64)]) -> bool {
    let Some(end) = addr.checked_add(size) else { return false };
    let overlaps = |(a, len): (u64, u64)| addr < a + len && a < end;
    let in_window = (addr >= PCI_MMIO32.0 && end <= PCI_MMIO32.1)
        || (addr >= PCI_MMIO32_HIGH.0 && end <= PCI_MMIO32_HIGH.1)
        || (addr >= pci_mmio64_start(ram.iter().map(|(a, l)| a + l).max().unwrap_or(0)) && end <= PCI_MMIO64_END);
    in_window
        && size > 0
        && !ram.iter().any(|&r| overlaps(r))
        && !overlaps((ECAM_BASE, ECAM_SIZE))
        && !PLATFORM_HOLES.iter().any(|&h| overlaps(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fit_only_in_the_windows_and_clear_of_ram() {
        let ram = [(0, 64 << 20)];
        assert!(bar_fits(0xc000_0000, 0x4000, &ram));
        assert!(bar_fits(1 << 32, 0x4000, &ram));
        assert!(!bar_fits(0, 0x4000, &ram));
        assert!(!bar_fits(0xdfff_f000, 0x4000, &ram), "crosses into ECAM");
        assert!(!bar_fits(0xfee0_0000, 0x1000, &ram));
        assert!(bar_fits(0xfebf_e000, 0x2000, &ram), "where SeaBIOS puts a BAR");
        assert!(!bar_fits(0xfebf_e000, 0x4000, &ram), "crosses into the IOAPIC");
        assert!(!bar_fits(0xe000_0000, 0x1000, &ram), "ECAM");
        assert!(!bar_fits(u64::MAX - 10, 0x4000, &ram));
        let big = [(0, LOW_RAM_END), (1 << 32, 2 << 30)];
        assert!(!bar_fits(1 << 32, 0x4000, &big), "RAM above 4 GiB");
        assert!(bar_fits(pci_mmio64_start(6 << 30), 0x4000, &big));
    }

    #[test]
    fn intx_lines_swizzle_over_ioapic_pins_16_to_23() {
        assert_eq!(pci_intx_gsi(0, 1), 16);
        assert_eq!(pci_intx_gsi(3, 1), 19);
        assert_eq!(pci_intx_gsi(3, 2), 20);
        assert_eq!(pci_intx_gsi(7, 2), 16);
        assert_eq!(pci_intx_gsi(31, 4), 18);
    }
}
