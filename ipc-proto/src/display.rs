//! The display (`-s N,fbuf,...`) as its three processes share it:
//!
//! - the framebuffer (VRAM): a sealed memfd the runner maps into the guest
//!   at the display's BAR 0 and the VNC server maps read-only;
//! - the display state page: the mode the guest set through the display's
//!   registers, written by the fbuf server (which holds neither VRAM nor
//!   guest RAM) and read by the VNC server. A sequence count around each
//!   update lets the reader take a consistent copy without a lock.
//!
//! The VNC server treats what it reads here as untrusted (the guest
//! chose it, and the fbuf server may be compromised): [`Mode::checked`]
//! keeps it inside VRAM.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::shm::{SharedPage, PAGE};

/// VRAM: room for the largest mode (3840x2160 at 32 bits per pixel) and a
/// power of two, as a BAR must be.
pub const VRAM_SIZE: u64 = VRAM_LEN as u64;
const VRAM_LEN: usize = 32 << 20;
/// The modes a display may be given on the command line and set by the guest.
pub const MIN_SIZE: (u32, u32) = (640, 480);
pub const MAX_SIZE: (u32, u32) = (3840, 2160);

/// A mode as the guest set it: `width` x `height` pixels of 32 bits
/// (XRGB, little-endian: blue in the lowest byte), rows `stride` bytes
/// apart, starting `offset` bytes into VRAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub width: u32,
    pub height: u32,
    pub stride: u32,
    pub offset: u32,
}

impl Mode {
    /// The mode if it is one a viewer can be shown: a size within the
    /// limits, 4 bytes a pixel, every row inside VRAM.
    pub fn checked(self) -> Option<Mode> {
        let (w, h) = (self.width, self.height);
        if !(1..=MAX_SIZE.0).contains(&w) || !(1..=MAX_SIZE.1).contains(&h) || self.stride < w * 4 {
            return None;
        }
        let end = self.offset as u64 + (h as u64 - 1) * self.stride as u64 + w as u64 * 4;
        (end <= VRAM_SIZE).then_some(self)
    }
}

#[repr(C, align(8))]
struct State {
    /// Odd while the writer is in the middle of an update.
    seq: AtomicU32,
    /// 0: the display is off (the guest has not enabled a mode).
    enabled: AtomicU32,
    width: AtomicU32,
    height: AtomicU32,
    stride: AtomicU32,
    offset: AtomicU32,
}

const _: () = assert!(size_of::<State>() <= PAGE);

/// Creates the state page (a sealed memfd): the display starts off.
pub fn create_state() -> Result<OwnedFd, nix::Error> {
    crate::shm::sealed_memfd("capvm-display", PAGE as u64)
}

/// Creates VRAM (a sealed memfd, zeros: black).
pub fn create_vram() -> Result<OwnedFd, nix::Error> {
    crate::shm::sealed_memfd("capvm-vram", VRAM_SIZE)
}

/// One side's view of the state page.
pub struct DisplayState {
    page: SharedPage,
}

impl DisplayState {
    /// The writer's view.
    pub fn attach(fd: BorrowedFd) -> Result<DisplayState, nix::Error> {
        Ok(DisplayState { page: SharedPage::new(fd)? })
    }

    /// A reader's view: mapped read-only, so it can only [`Self::mode`].
    pub fn attach_read_only(fd: BorrowedFd) -> Result<DisplayState, nix::Error> {
        Ok(DisplayState { page: SharedPage::map(fd, false)? })
    }

    fn state(&self) -> &State {
        // SAFETY: State fits the page at 0, is aligned, and is all atomics.
        unsafe { self.page.at::<State>(0) }
    }

    /// The writer (the fbuf server, single-threaded): the new mode, or off.
    pub fn publish(&self, mode: Option<Mode>) {
        let s = self.state();
        s.seq.fetch_add(1, Ordering::AcqRel);
        let m = mode.unwrap_or(Mode { width: 0, height: 0, stride: 0, offset: 0 });
        s.enabled.store(mode.is_some() as u32, Ordering::Relaxed);
        s.width.store(m.width, Ordering::Relaxed);
        s.height.store(m.height, Ordering::Relaxed);
        s.stride.store(m.stride, Ordering::Relaxed);
        s.offset.store(m.offset, Ordering::Relaxed);
        s.seq.fetch_add(1, Ordering::AcqRel);
    }

    /// The reader: the current mode, None if the display is off, or the
    /// writer is mid-update for longer than a few tries (read again later).
    pub fn mode(&self) -> Option<Mode> {
        let s = self.state();
        for _ in 0..100 {
            let before = s.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let m = Mode {
                width: s.width.load(Ordering::Relaxed),
                height: s.height.load(Ordering::Relaxed),
                stride: s.stride.load(Ordering::Relaxed),
                offset: s.offset.load(Ordering::Relaxed),
            };
            let enabled = s.enabled.load(Ordering::Relaxed) != 0;
            std::sync::atomic::fence(Ordering::Acquire);
            if s.seq.load(Ordering::Relaxed) == before {
                return enabled.then_some(m);
            }
        }
        None
    }
}

/// VRAM mapped read-only (the VNC server's view; the runner maps it
/// read-write for the guest).
pub struct Vram {
    base: NonNull<u8>,
}

// SAFETY: shared memory read only through volatile copies.
unsafe impl Send for Vram {}

impl Vram {
    pub fn map_read_only(fd: BorrowedFd) -> Result<Vram, nix::Error> {
        // SAFETY: a fresh shared read-only mapping of the whole memfd.
        let p =
            unsafe { libc::mmap(std::ptr::null_mut(), VRAM_LEN, libc::PROT_READ, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            return Err(nix::Error::last());
        }
        Ok(Vram { base: NonNull::new(p.cast()).expect("mmap returned null") })
    }

    /// Copies row `y` of `mode` (`mode.width` pixels) into `out`. The guest
    /// writes VRAM while we read it: a torn pixel is redrawn next time.
    pub fn copy_row(&self, mode: &Mode, y: u32, out: &mut [u8]) {
        let start = mode.offset as usize + y as usize * mode.stride as usize;
        let len = (mode.width as usize * 4).min(out.len());
        if start + len > VRAM_LEN {
            return;
        }
        // SAFETY: `len` bytes at `start` are inside the mapping (checked
        // above), which lives as long as self; vm-memory's volatile copy
        // (word-sized where aligned) because another process writes it.
        // Nothing writes through the slice: the mapping is read-only.
        let row = unsafe { vm_memory::volatile_memory::VolatileSlice::new(self.base.as_ptr().add(start), len) };
        row.copy_to(&mut out[..len]);
    }
}

impl Drop for Vram {
    fn drop(&mut self) {
        // SAFETY: unmaps our own mapping.
        unsafe { libc::munmap(self.base.as_ptr().cast(), VRAM_LEN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn the_reader_sees_what_the_writer_published() {
        let fd = create_state().unwrap();
        let writer = DisplayState::attach(fd.as_fd()).unwrap();
        let reader = DisplayState::attach_read_only(fd.as_fd()).unwrap();
        assert_eq!(reader.mode(), None, "off until the guest sets a mode");
        let m = Mode { width: 800, height: 600, stride: 3200, offset: 0 };
        writer.publish(Some(m));
        assert_eq!(reader.mode(), Some(m));
        writer.publish(None);
        assert_eq!(reader.mode(), None);
    }

    #[test]
    fn modes_outside_vram_are_refused() {
        let ok = Mode { width: 3840, height: 2160, stride: 3840 * 4, offset: 0 };
        assert_eq!(ok.checked(), Some(ok));
        for bad in [
            Mode { width: 0, ..ok },
            Mode { height: 0, ..ok },
            Mode { width: 4000, stride: 16000, ..ok },
            Mode { stride: 100, ..ok },
            Mode { offset: (32 << 20) - 4096, ..ok },
            Mode { stride: u32::MAX, ..ok },
        ] {
            assert_eq!(bad.checked(), None, "{bad:?}");
        }
    }

    #[test]
    fn vram_rows_are_read_through_the_read_only_mapping() {
        let fd = create_vram().unwrap();
        let m = Mode { width: 2, height: 2, stride: 16, offset: 32 };
        nix::sys::uio::pwrite(&fd, &[1, 2, 3, 4, 5, 6, 7, 8], 48).unwrap();
        let vram = Vram::map_read_only(fd.as_fd()).unwrap();
        let mut row = [0u8; 8];
        vram.copy_row(&m, 1, &mut row);
        assert_eq!(row, [1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
