//! What the fuzz targets share: reading operations out of the fuzzer's
//! bytes, guest RAM seeded from them, a disk image in memory.

use std::os::fd::{FromRawFd, OwnedFd};

use capvm_ipc::stats::Counter;
use capvm_ipc::PciFunction;
use capvm_virtio::layout::{self, COMMON, COMMON_LEN, DEVICE, ISR, MSIX_PBA, MSIX_TABLE, NOTIFY};
use capvm_virtio::transport::{Device, Transport, TransportStats};
use vm_memory::{Bytes as _, GuestAddress, GuestMemoryMmap};

/// The fuzzer's bytes, taken from the front; past the end everything is 0
/// and `done` says so.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input(data)
    }
    pub fn done(&self) -> bool {
        self.0.is_empty()
    }
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    /// An access size as a vCPU makes them: 1, 2, 4 or 8.
    pub fn size(&mut self) -> u8 {
        1 << (self.u8() % 4)
    }
}

/// `size` bytes of guest RAM at 0, the first of them from the input (the
/// guest's descriptor tables, rings, command lists: anything).
pub fn guest_ram(input: &mut Input, size: usize) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).expect("guest RAM");
    let n = usize::from(input.u16()) % size;
    let seed = input.bytes(n);
    mem.write_slice(seed, GuestAddress(0)).expect("within RAM");
    mem
}

/// A disk image of `size` bytes in a memfd (no file system in the loop).
pub fn memfd_disk(size: u64) -> OwnedFd {
    // SAFETY: memfd_create with a static name; the fd is checked, then owned.
    let fd = unsafe { libc::memfd_create(c"capvm-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: the fd just made.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on our own memfd.
    assert_eq!(unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), size as i64) }, 0);
    fd
}

/// A non-blocking eventfd (an irqfd or notify fd nobody reads).
pub fn eventfd() -> OwnedFd {
    // SAFETY: eventfd with flags; the result is checked, then owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd");
    // SAFETY: the fd just made.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `device` behind its virtio-pci transport as `function` lays it out,
/// every MSI-X vector and INTx# an eventfd, counters counting nothing.
pub fn transport<D: Device>(device: D, function: &PciFunction) -> Transport<D> {
    let vectors = function.msix.as_ref().map_or(0, |m| m.vectors);
    let counters = TransportStats {
        config_accesses: Counter::none(),
        mmio_accesses: Counter::none(),
        notify_exits: Counter::none(),
        interrupts: Counter::none(),
        intx_interrupts: Counter::none(),
    };
    Transport::new(device, function, (0..vectors).map(|_| eventfd()).collect(), Some(eventfd()), counters)
}

/// A BAR offset for operation byte `op`: most land where the registers
/// are (common configuration, ISR, device configuration, notify, MSI-X),
/// the rest anywhere in the BAR.
pub fn virtio_bar_offset(op: u8, input: &mut Input) -> u64 {
    match op >> 4 {
        0..=4 => COMMON + u64::from(input.u8()) % COMMON_LEN,
        5 => ISR,
        6..=7 => DEVICE + u64::from(input.u8()),
        8 => NOTIFY + u64::from(input.u8() % 4) * 4,
        9 => MSIX_TABLE + u64::from(input.u8()),
        10 => MSIX_PBA,
        _ => u64::from(input.u16()) % layout::BAR_SIZE,
    }
}
