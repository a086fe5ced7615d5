//! Where the display keeps its registers, so that the broker, the runner
//! and the server agree from these constants alone.

use capvm_ipc::display::VRAM_SIZE;
use capvm_ipc::{BarKind, BarSpec, PciFunction, ROM_BAR};

/// QEMU's bochs-display: the ids its drivers (and its option ROM) match.
pub const VENDOR: u16 = 0x1234;
pub const DEVICE: u16 = 0x1111;

/// BAR 0: the framebuffer.
pub const VRAM_BAR: u8 = 0;
/// BAR 2: EDID, DISPI and extended registers.
pub const MMIO_BAR: u8 = 2;
pub const MMIO_SIZE: u64 = 0x1000;
pub const EDID_OFFSET: u64 = 0x000;
pub const EDID_SIZE: u64 = 0x400;
pub const DISPI_OFFSET: u64 = 0x500;
pub const DISPI_SIZE: u64 = 0x100;
pub const EXT_OFFSET: u64 = 0x600;
pub const EXT_SIZE: u64 = 0x100;
/// The expansion ROM, if the display has one: room for a VGA BIOS,
/// which lives in the 64 KiB at 0xc0000.
pub const ROM_SIZE: u64 = 0x10000;

/// The function the broker describes to the runner and the server.
pub fn function(slot: u8, func: u8, vram: u64, mmio: u64, rom: Option<u64>) -> PciFunction {
    let mut bars = vec![
        BarSpec { index: VRAM_BAR, kind: BarKind::Mem32, size: VRAM_SIZE, addr: vram },
        BarSpec { index: MMIO_BAR, kind: BarKind::Mem32, size: MMIO_SIZE, addr: mmio },
    ];
    bars.extend(rom.map(|addr| BarSpec { index: ROM_BAR, kind: BarKind::Mem32, size: ROM_SIZE, addr }));
    PciFunction {
        slot,
        func,
        bars,
        notify: Vec::new(),
        msix: None,
        msi: None,
        intx_gsi: None,
        memory_bar: Some(VRAM_BAR),
    }
}
