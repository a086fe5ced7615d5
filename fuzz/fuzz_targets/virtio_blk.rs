//! A virtio-blk disk behind its virtio-pci transport, as a hostile guest
//! drives it: register reads and writes (common configuration, ISR,
//! device configuration, notify, MSI-X table) and PCI configuration space
//! in any order, and queue notifies over guest RAM whose descriptor
//! tables, rings and requests come from the input.
#![no_main]

use std::sync::OnceLock;

use capvm_fuzz::{guest_ram, memfd_disk, transport, virtio_bar_offset, Input};
use capvm_ipc::BlkOptions;
use capvm_virtio::layout;
use capvm_virtio_blk::blk::Blk;

const SECTORS: u64 = 64;

fn disk() -> &'static std::os::fd::OwnedFd {
    static DISK: OnceLock<std::os::fd::OwnedFd> = OnceLock::new();
    DISK.get_or_init(|| memfd_disk(SECTORS * 512))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let read_only = input.u8() & 1 == 1;
    let opts = BlkOptions {
        read_only,
        sector_size: 512,
        physical_sector_size: 512,
        size: SECTORS * 512,
        no_delete: false,
        can_discard: true,
        serial: "FUZZ".into(),
    };
    let stats_fd = capvm_ipc::stats::create().expect("stats page");
    let mut stats = capvm_ipc::stats::Stats::attach(std::os::fd::AsFd::as_fd(&stats_fd)).expect("stats page");
    let blk = Blk::new(disk().try_clone().expect("dup"), opts, &mut stats);
    let mut t = transport(blk, &layout::function(4, 0, layout::BLK_QUEUES, 0xc000_0000, 24));
    t.set_memory(guest_ram(&mut input, 0x1_0000));
    while !input.done() {
        let op = input.u8();
        let offset = virtio_bar_offset(op, &mut input);
        let size = input.size();
        match op % 6 {
            0 | 1 => drop(t.bar_write(offset, size, input.u64())),
            2 => drop(t.bar_read(offset, size)),
            3 => t.config_write(u64::from(input.u16()) % 4096, size, input.u64()),
            4 => drop(t.config_read(u64::from(input.u16()) % 4096, size)),
            _ => t.notify(usize::from(input.u8() % 2)),
        }
    }
});
