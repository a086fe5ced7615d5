//! Where an AHCI function keeps its registers, so that the broker, the
//! vCPU runner and the server agree from these constants alone.

use capvm_ipc::{memmap, BarKind, BarSpec, MsiSpec, PciFunction};

/// The ABAR is BAR5 (AHCI 1.3.1, 2.1.11).
pub const ABAR: u8 = 5;
/// Generic host control (0x100) and 32 ports of 0x80 bytes, rounded up
/// to a power of two.
pub const ABAR_SIZE: u64 = 0x2000;
/// Ports per controller (CAP.NP is 5 bits).
pub const MAX_PORTS: usize = 32;
/// The MSI capability, the function's first (right after the header).
pub const MSI_CAP: u16 = 0x40;
/// INTA#.
pub const INTX_PIN: u8 = 1;

/// The function the broker describes to the runner and the server.
pub fn function(slot: u8, func: u8, abar: u64, msi_gsi: u32) -> PciFunction {
    PciFunction {
        slot,
        func,
        bars: vec![BarSpec { index: ABAR, kind: BarKind::Mem32, size: ABAR_SIZE, addr: abar }],
        notify: Vec::new(),
        msix: None,
        msi: Some(MsiSpec { cap_offset: MSI_CAP, gsi: msi_gsi }),
        intx_gsi: Some(memmap::pci_intx_gsi(slot, INTX_PIN)),
        memory_bar: None,
    }
}
