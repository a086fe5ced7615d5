//! For device models' in-process tests: the driver's side of a chain.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;

const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// A chain of (addr, len, device-writable) at descriptor table index
/// `first` onward, linked in order; the last descriptor ends it.
pub fn chain(first: u16, descs: &[(u64, u32, bool)]) -> Vec<RawDescriptor> {
    descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, writable))| {
            let last = i + 1 == descs.len();
            let flags = if writable { WRITE } else { 0 } | if last { 0 } else { NEXT };
            RawDescriptor::from(Descriptor::new(addr, len, flags, first + i as u16 + 1))
        })
        .collect()
}
