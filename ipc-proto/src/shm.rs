//! Sealed memfds: shared memory whose size neither side can change.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

/// A memfd of `size` bytes, sealed against grow, shrink and further sealing,
/// so a peer that maps it can never be made to fault past its end.
pub fn sealed_memfd(name: &str, size: u64) -> Result<OwnedFd, nix::Error> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    nix::unistd::ftruncate(&fd, size as libc::off_t)?;
    fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL))?;
    Ok(fd)
}

/// A memfd holding `bytes`, sealed against any change: read-only data
/// handed to another process (a display's option ROM).
pub fn sealed_copy(name: &str, bytes: &[u8]) -> Result<OwnedFd, nix::Error> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let mut written = 0;
    while written < bytes.len() {
        written += nix::unistd::write(&fd, &bytes[written..])?;
    }
    let seals = SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL;
    fcntl(&fd, FcntlArg::F_ADD_SEALS(seals))?;
    Ok(fd)
}

/// Maps every region of the guest-RAM memfd, shared: how the broker (to
/// load the kernel), the vCPU runner (to hand it to KVM) and the device
/// servers (to reach virtqueues) see guest memory.
#[allow(clippy::cast_possible_truncation, reason = "capvm runs on x86_64 only: usize is 64 bits")]
pub fn map_guest_ram(
    ram: std::fs::File,
    regions: &[crate::MemoryRegion],
) -> Result<vm_memory::GuestMemoryMmap, MapGuestRamError> {
    use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};
    let file = std::sync::Arc::new(ram);
    GuestMemoryMmap::from_ranges_with_files(
        regions
            .iter()
            .map(|r| (GuestAddress(r.guest_addr), r.size as usize, Some(FileOffset::from_arc(file.clone(), r.offset)))),
    )
    .map_err(MapGuestRamError)
}

/// Guest RAM could not be mapped (address space, or the memfd's size).
#[derive(Debug, thiserror::Error)]
#[error("cannot map guest RAM: {0}")]
pub struct MapGuestRamError(#[source] pub vm_memory::mmap::FromRangesError);

/// One page of a shared memfd, mapped read-write and unmapped on drop.
pub(crate) struct SharedPage {
    base: NonNull<u8>,
}

pub(crate) const PAGE: usize = 4096;

// SAFETY: the page is shared memory that users access only through atomics.
unsafe impl Send for SharedPage {}
// SAFETY: as above.
unsafe impl Sync for SharedPage {}

impl SharedPage {
    pub(crate) fn new(fd: BorrowedFd) -> Result<SharedPage, nix::Error> {
        Self::map(fd, true)
    }

    /// `writable`: false for a reader whose peer writes (atomics are only
    /// loaded through it).
    pub(crate) fn map(fd: BorrowedFd, writable: bool) -> Result<SharedPage, nix::Error> {
        let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a fresh shared mapping of a page of the memfd; no aliasing Rust refs.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), PAGE, prot, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(nix::Error::last());
        }
        Ok(SharedPage { base: NonNull::new(p.cast()).expect("mmap returned null") })
    }

    /// A reference to the `T` at `offset`.
    ///
    /// # Safety
    /// `T` must fit in the page at `offset`, be aligned there, and be made
    /// of atomics (the peer writes behind our back).
    pub(crate) unsafe fn at<T>(&self, offset: usize) -> &T {
        debug_assert!(offset + size_of::<T>() <= PAGE);
        // SAFETY: the caller's contract.
        unsafe { &*(self.base.as_ptr().add(offset) as *const T) }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: unmaps our own mapping.
        unsafe { libc::munmap(self.base.as_ptr().cast(), PAGE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_memfd_cannot_be_resized_or_resealed() {
        let fd = sealed_memfd("t", 8192).unwrap();
        assert_eq!(nix::sys::stat::fstat(&fd).unwrap().st_size, 8192);
        assert!(nix::unistd::ftruncate(&fd, 4096).is_err());
        assert!(nix::unistd::ftruncate(&fd, 1 << 20).is_err());
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS).unwrap();
        assert!(SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SEAL));
    }
}
