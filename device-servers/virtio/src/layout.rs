//! Where a virtio function keeps its registers: everything in one 64-bit
//! memory BAR, one page-aligned block per structure, so the broker, the
//! vCPU runner and the server agree on it from these constants alone.

use capvm_ipc::{memmap, BarKind, BarSpec, MsixSpec, NotifySpec, PciFunction};

pub const BAR: u8 = 0;
pub const BAR_SIZE: u64 = 0x4000;
pub const COMMON: u64 = 0x0000;
pub const COMMON_LEN: u64 = 0x38;
pub const ISR: u64 = 0x0800;
pub const ISR_LEN: u64 = 4;
pub const DEVICE: u64 = 0x1000;
pub const DEVICE_LEN: u64 = 0x100;
pub const NOTIFY: u64 = 0x2000;
/// Bytes between two queues' notify registers (notify_off_multiplier).
pub const NOTIFY_MULTIPLIER: u64 = 4;
pub const MSIX_TABLE: u64 = 0x3000;
pub const MSIX_PBA: u64 = 0x3800;
/// At most this many queues (their notify registers fill 0x2000-0x2fff).
pub const MAX_QUEUES: usize = 256;

/// virtio-blk's queues (one request queue): the broker lays the function
/// out for this many and the server offers this many.
pub const BLK_QUEUES: usize = 1;
/// virtio-net's queues: one receive, one transmit (no multiqueue, no
/// control queue).
pub const NET_QUEUES: usize = 2;
/// virtio 1.x's `virtio_net_hdr` before every frame; the broker sets the
/// tap's header to this size so frames cross unchanged.
pub const NET_HEADER_LEN: usize = 12;

/// Every virtio function's legacy interrupt is INTA#.
pub const INTX_PIN: u8 = 1;

/// One MSI-X vector per queue plus one for configuration changes.
pub fn vectors(queues: usize) -> u16 {
    queues as u16 + 1
}

/// The function the broker describes to the runner and the server.
pub fn function(slot: u8, func: u8, queues: usize, bar_addr: u64, first_gsi: u32) -> PciFunction {
    assert!(queues <= MAX_QUEUES);
    PciFunction {
        slot,
        func,
        bars: vec![BarSpec { index: BAR, kind: BarKind::Mem64, size: BAR_SIZE, addr: bar_addr }],
        notify: (0..queues as u64).map(|q| NotifySpec { bar: BAR, offset: NOTIFY + q * NOTIFY_MULTIPLIER }).collect(),
        msix: Some(MsixSpec {
            bar: BAR,
            table_offset: MSIX_TABLE,
            pba_offset: MSIX_PBA,
            vectors: vectors(queues),
            first_gsi,
        }),
        msi: None,
        intx_gsi: Some(memmap::pci_intx_gsi(slot, INTX_PIN)),
        memory_bar: None,
    }
}
