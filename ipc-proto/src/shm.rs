//! Sealed memfds: shared memory whose size neither side can change.

use std::os::fd::OwnedFd;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

/// A memfd of `size` bytes, sealed against grow, shrink and further sealing,
/// so a peer that maps it can never be made to fault past its end.
pub fn sealed_memfd(name: &str, size: u64) -> Result<OwnedFd, nix::Error> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    nix::unistd::ftruncate(&fd, size as libc::off_t)?;
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL),
    )?;
    Ok(fd)
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
