//! One rule for a descriptor chain, for every device: it is whole only if
//! it ends where the driver said it ends.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

/// The chain's descriptors, or None when the driver broke it. The
/// iterator stops silently at a loop (after queue-size descriptors), at a
/// `next` past the table, at a descriptor table outside RAM and at a bad
/// indirect table; in each case the last descriptor it yielded still says
/// NEXT (or it yielded none). A device must not act on such a chain: a
/// loop would otherwise look like one buffer repeated queue-size times.
pub fn whole<M>(chain: DescriptorChain<M>) -> Option<Vec<Descriptor>>
where
    M: std::ops::Deref,
    M::Target: GuestMemory,
{
    let descs: Vec<Descriptor> = chain.collect();
    match descs.last() {
        Some(last) if !last.has_next() => Some(descs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const TABLE: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const NEXT: u16 = 1;
    const INDIRECT: u16 = 4;

    /// A chain from head 0 over `descs` (addr, len, flags, next), in a queue of 8.
    fn chain(descs: &[(u64, u32, u16, u16)]) -> Option<Vec<Descriptor>> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            mem.write_obj(d, GuestAddress(TABLE + 16 * i as u64)).unwrap();
        }
        // The avail ring offers head 0 once.
        mem.write_obj([0u16, 1, 0], GuestAddress(AVAIL)).unwrap();
        let mut q = Queue::new(8).unwrap();
        q.set_desc_table_address(Some(TABLE as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        whole(q.pop_descriptor_chain(&mem).expect("head 0 offered"))
    }

    #[test]
    fn a_chain_that_ends_is_whole() {
        let descs = chain(&[(0x4000, 16, NEXT, 1), (0x5000, 1, 2, 0)]).unwrap();
        assert_eq!(descs.len(), 2);
        assert_eq!(descs[1].addr().0, 0x5000);
    }

    #[test]
    fn loops_runaway_nexts_and_bad_indirect_tables_are_not() {
        assert!(chain(&[(0x4000, 16, NEXT, 0)]).is_none(), "a self-loop");
        assert!(chain(&[(0x4000, 16, NEXT, 1), (0x5000, 16, NEXT, 0)]).is_none(), "a two-step loop");
        assert!(chain(&[(0x4000, 16, NEXT, 200)]).is_none(), "next past the table");
        assert!(chain(&[(0x4000, 15, INDIRECT, 0)]).is_none(), "indirect table of 15 bytes");
        assert!(chain(&[(1 << 40, 32, INDIRECT, 0)]).is_none(), "indirect table outside RAM");
    }
}
