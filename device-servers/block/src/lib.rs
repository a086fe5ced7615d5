//! A disk image, shared by the disk servers. Data moves between the image
//! and guest RAM with preadv/pwritev straight on guest buffers, no bounce
//! copy.

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

    /// Moves data between the image, from `offset` on, and the guest RAM
    /// `buffers` (address, length) in order: into the guest if
    /// `to_guest`, else out of it. One preadv/pwritev moves them all (up
    /// to UIO_MAXIOV buffers a call), so a scattered request, or several
    /// requests that continue one another, cost one system call. Every
    /// buffer is checked before anything moves.
    pub fn transfer(
        &self,
        mem: &GuestMemoryMmap,
        buffers: &[(GuestAddress, usize)],
        offset: u64,
        to_guest: bool,
    ) -> Result<(), ImageError> {
        let mut iovs = Vec::with_capacity(buffers.len());
        for &(addr, len) in buffers.iter().filter(|b| b.1 > 0) {
            // One region only: a buffer that straddles the PCI hole is refused.
            let slice = mem.get_slice(addr, len).map_err(|_| ImageError::OutsideRam)?;
            iovs.push(libc::iovec { iov_base: slice.ptr_guard_mut().as_ptr().cast(), iov_len: len });
        }
        let fd = self.fd.as_raw_fd();
        let (mut first, mut at) = (0, offset);
        while first < iovs.len() {
            let chunk = &iovs[first..iovs.len().min(first + libc::UIO_MAXIOV as usize)];
            // SAFETY: every iovec is mapped guest RAM (checked by
            // get_slice above; the mapping lives as long as `mem`); the
            // guest may change it concurrently, which only changes the
            // bytes that move.
            let n = unsafe {
                if to_guest {
                    libc::preadv(fd, chunk.as_ptr(), chunk.len() as i32, at as libc::off_t)
                } else {
                    libc::pwritev(fd, chunk.as_ptr(), chunk.len() as i32, at as libc::off_t)
                }
            };
            match n {
                n if n > 0 => {
                    at += n as u64;
                    first = consume(&mut iovs, first, n as usize);
                }
                // Reading past the end of a file that shrank: zeros.
                0 if to_guest => {
                    for iov in &iovs[first..] {
                        // SAFETY: as above.
                        unsafe { std::ptr::write_bytes(iov.iov_base.cast::<u8>(), 0, iov.iov_len) };
                    }
                    break;
                }
                0 => return Err(ImageError::Io(libc::EIO)),
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
            // pwritev, as for data: the servers' one way to write.
            let iov = libc::iovec { iov_base: zeros.as_ptr() as *mut libc::c_void, iov_len: n };
            // SAFETY: writes from our own buffer.
            let w = unsafe { libc::pwritev(fd, &iov, 1, (offset + done) as libc::off_t) };
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

/// Drops the first `n` bytes of `iovs[first..]` (a short transfer's
/// progress); returns the index of the first buffer with bytes left.
fn consume(iovs: &mut [libc::iovec], mut first: usize, mut n: usize) -> usize {
    while let Some(iov) = iovs.get_mut(first).filter(|_| n > 0) {
        let take = n.min(iov.iov_len);
        iov.iov_base = iov.iov_base.wrapping_byte_add(take);
        iov.iov_len -= take;
        n -= take;
        if iov.iov_len == 0 {
            first += 1;
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;

    use vm_memory::Bytes;

    use super::*;

    fn image(bytes: &[u8]) -> (Image, std::path::PathBuf) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("capvm-image-test-{}-{n}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let fd = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        (Image::new(fd.into()), path)
    }

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn scattered_buffers_move_in_order_even_past_uio_maxiov() {
        // 1500 buffers of 8 bytes, every other 16 bytes of RAM: two calls.
        let data: Vec<u8> = (0..12_000u32).map(|i| (i * 13 + i / 256) as u8).collect();
        let (img, path) = image(&data);
        let mem = ram();
        let bufs: Vec<_> = (0..1500u64).map(|i| (GuestAddress(i * 16), 8)).collect();
        img.transfer(&mem, &bufs, 0, true).unwrap();
        for (i, chunk) in data.chunks(8).enumerate() {
            let mut got = [0u8; 8];
            mem.read_slice(&mut got, GuestAddress(i as u64 * 16)).unwrap();
            assert_eq!(&got, chunk, "buffer {i}");
        }
        // And back out, shifted by 4 bytes into the image.
        img.transfer(&mem, &bufs, 4, false).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[4..12_004], &data[..], "written back in order");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn reads_past_the_end_are_zeros_and_a_bad_buffer_moves_nothing() {
        let (img, path) = image(&[0xab; 100]);
        let mem = ram();
        mem.write_slice(&[0x55; 300], GuestAddress(0x1000)).unwrap();
        img.transfer(&mem, &[(GuestAddress(0x1000), 60), (GuestAddress(0x1100), 100)], 0, true).unwrap();
        let mut got = [0u8; 100];
        mem.read_slice(&mut got, GuestAddress(0x1100)).unwrap();
        assert!(got[..40].iter().all(|&b| b == 0xab) && got[40..].iter().all(|&b| b == 0), "{got:?}");
        // The second buffer runs off the end of RAM: the first is not written either.
        let bad = [(GuestAddress(0x1000), 16), (GuestAddress(0x10_0000 - 8), 16)];
        assert_eq!(img.transfer(&mem, &bad, 0, false), Err(ImageError::OutsideRam));
        assert_eq!(std::fs::read(&path).unwrap(), vec![0xab; 100]);
        std::fs::remove_file(path).unwrap();
    }
}
