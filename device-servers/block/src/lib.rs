//! A disk image, shared by the disk servers. Data moves between the image
//! and guest RAM with one pread/pwrite per guest buffer, no bounce copy.

use std::os::fd::{AsRawFd, OwnedFd};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Why an image operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// A guest buffer that is not all in one piece of guest RAM.
    #[error("buffer outside guest RAM")]
    OutsideRam,
    /// The host's I/O failed (errno).
    #[error("I/O error (errno {0})")]
    Io(i32),
}

impl ImageError {
    /// The last OS error, as an I/O failure.
    pub fn last_os_error() -> ImageError {
        ImageError::Io(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// An open image file or block device.
pub struct Image {
    fd: OwnedFd,
}

impl Image {
    pub fn new(fd: OwnedFd) -> Image {
        Image { fd }
    }

    /// Moves `len` bytes between guest RAM at `addr` and the image at
    /// `offset`: into the guest if `to_guest`, else out of it.
    pub fn transfer(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
        offset: u64,
        to_guest: bool,
    ) -> Result<(), ImageError> {
        if len == 0 {
            return Ok(());
        }
        // One region only: a buffer that straddles the PCI hole is refused.
        let slice = mem.get_slice(addr, len).map_err(|_| ImageError::OutsideRam)?;
        let guard = slice.ptr_guard_mut();
        let ptr = guard.as_ptr();
        let mut done = 0usize;
        while done < len {
            // SAFETY: `ptr..ptr+len` is mapped guest RAM (checked by
            // get_slice); the guest may change it concurrently, which only
            // changes the bytes that move.
            let n = unsafe {
                let p = ptr.add(done).cast();
                let off = (offset + done as u64) as libc::off_t;
                if to_guest {
                    libc::pread(self.fd.as_raw_fd(), p, len - done, off)
                } else {
                    libc::pwrite(self.fd.as_raw_fd(), p, len - done, off)
                }
            };
            match n {
                n if n > 0 => done += n as usize,
                // Reading past the end of a file that shrank: zeros.
                0 if to_guest => {
                    // SAFETY: as above.
                    unsafe { std::ptr::write_bytes(ptr.add(done), 0, len - done) };
                    done = len;
                }
                _ => match ImageError::last_os_error() {
                    ImageError::Io(libc::EINTR) => {}
                    e => return Err(e),
                },
            }
        }
        Ok(())
    }

    /// Punches a hole (`discard`) or zeroes the range, by fallocate where
    /// the backend can and by writing zeros where not.
    pub fn clear(&self, offset: u64, len: u64, discard: bool) -> Result<(), ImageError> {
        let fd = self.fd.as_raw_fd();
        let mode = if discard {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        // SAFETY: fallocate on our own fd.
        if unsafe { libc::fallocate(fd, mode, offset as libc::off_t, len as libc::off_t) } == 0 {
            return Ok(());
        }
        if discard {
            return Err(ImageError::last_os_error());
        }
        let zeros = vec![0u8; 64 << 10];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            // SAFETY: writes from our own buffer.
            let w = unsafe { libc::pwrite(fd, zeros.as_ptr().cast(), n, (offset + done) as libc::off_t) };
            if w <= 0 {
                return Err(ImageError::last_os_error());
            }
            done += w as u64;
        }
        Ok(())
    }

    /// Everything written so far reaches the disk (fdatasync).
    pub fn flush(&self) -> Result<(), ImageError> {
        // SAFETY: fdatasync on our own fd.
        if unsafe { libc::fdatasync(self.fd.as_raw_fd()) } != 0 {
            return Err(ImageError::last_os_error());
        }
        Ok(())
    }
}
