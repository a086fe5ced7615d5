//! Guest RAM as vm-memory sees it: one mapping per region of the RAM memfd.
//! The broker maps it to load the kernel, the runner to hand it to KVM.

use std::fs::File;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// Maps `(guest address, size, memfd offset)` regions of `ram`, shared.
pub fn map_memfd(ram: File, regions: impl IntoIterator<Item = (u64, u64, u64)>) -> Result<GuestMemoryMmap, String> {
    let file = Arc::new(ram);
    GuestMemoryMmap::from_ranges_with_files(
        regions
            .into_iter()
            .map(|(addr, size, offset)| (GuestAddress(addr), size as usize, Some(FileOffset::from_arc(file.clone(), offset)))),
    )
    .map_err(|e| format!("cannot map guest RAM: {e}"))
}
