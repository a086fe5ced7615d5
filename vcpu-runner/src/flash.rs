//! The firmware's variable store (`-l bootrom,ROM,VARFILE`): a NOR flash
//! just below the boot ROM that speaks the basic Intel command set (CFI
//! "command set 0001") as QEMU's pflash and bhyve's bootrom do, so that
//! EDK II's flash driver (OVMF's QemuFlash) finds it writable and keeps its
//! variables there: read array, read status, clear status, byte program,
//! block erase, read identifier.
//!
//! Every access exits (the flash is no KVM memory slot): in status mode a
//! read must not see the array. The VARFILE is mapped shared, so a byte the
//! firmware programs is in the host's page cache, and the file, when the
//! write returns, whatever happens to the VM afterwards.

use std::fs::File;
use std::sync::{Mutex, MutexGuard, PoisonError};

use capvm_ipc::stats::Counter;
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, VolatileMemory};

/// The erase block: 4 KiB, what OVMF's flash layout and QEMU's pc pflash use.
pub const BLOCK: u64 = 4096;
/// Status register: ready (SR.7). Operations finish before the write that
/// starts them returns, so the flash is never busy.
const READY: u8 = 0x80;
/// SR.5 and SR.4: an erase setup followed by something other than confirm.
const SEQUENCE_ERROR: u8 = 0x30;
/// Read identifier: Intel's manufacturer code and a 28F-series device code.
const MANUFACTURER: u8 = 0x89;
const DEVICE: u8 = 0x18;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ReadArray,
    ReadStatus,
    ReadId,
    /// The next write is data (0x10 or 0x40 seen).
    Program,
    /// The next write should be 0xd0 at the block to erase (0x20 seen).
    EraseSetup,
}

pub struct FlashCounters {
    pub bytes_programmed: Counter,
    pub blocks_erased: Counter,
    /// Commands the command set lacks (the flash went back to reading its array).
    pub unknown_commands: Counter,
}

/// Shared by the vCPU threads: the command state is behind a lock, the
/// range is not (every MMIO exit asks `owns`).
pub struct Flash {
    base: u64,
    store: MmapRegion,
    state: Mutex<State>,
    counters: FlashCounters,
}

struct State {
    mode: Mode,
    status: u8,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot map the variable store: {0}")]
pub struct FlashError(String);

impl Flash {
    /// Maps `size` bytes of `file` (read-write, shared) at guest `base`
    /// and closes the file: the mapping is all the runner keeps.
    pub fn map(file: File, base: u64, size: u64, counters: FlashCounters) -> Result<Flash, FlashError> {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let len = std::num::NonZeroUsize::new(size as usize).ok_or(FlashError("it is empty".into()))?;
        // SAFETY: a new shared mapping of a file we own; nothing else in
        // this process aliases it.
        let addr = unsafe {
            nix::sys::mman::mmap(
                None,
                len,
                nix::sys::mman::ProtFlags::from_bits_truncate(prot),
                nix::sys::mman::MapFlags::MAP_SHARED,
                &file,
                0,
            )
        }
        .map_err(|e| FlashError(e.to_string()))?;
        drop(file);
        // SAFETY: `len` bytes mapped above, never unmapped (the store lives
        // as long as the VM).
        let store = unsafe { MmapRegion::build_raw(addr.as_ptr().cast(), len.get(), prot, libc::MAP_SHARED) }
            .map_err(|e| FlashError(e.to_string()))?;
        Ok(Flash { base, store, state: Mutex::new(State { mode: Mode::ReadArray, status: READY }), counters })
    }

    pub fn owns(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.store.len() as u64
    }

    /// The command state; a vCPU thread that panicked holding it took the
    /// process down.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A guest read of `size` bytes at `addr`.
    pub fn read(&self, addr: u64, size: u8) -> u64 {
        let offset = addr - self.base;
        let state = self.state();
        let mut bytes = [0u8; 8];
        for (i, b) in bytes.iter_mut().enumerate().take(size.min(8) as usize) {
            *b = match state.mode {
                Mode::ReadStatus | Mode::Program | Mode::EraseSetup => state.status,
                Mode::ReadId => match offset + i as u64 {
                    0 => MANUFACTURER,
                    1 => DEVICE,
                    _ => 0,
                },
                Mode::ReadArray => self.byte(offset + i as u64),
            };
        }
        u64::from_le_bytes(bytes)
    }

    /// A guest write of `size` bytes at `addr`: data after a program
    /// command, else a command in its low byte.
    pub fn write(&self, addr: u64, size: u8, value: u64) {
        let offset = addr - self.base;
        let mut state = self.state();
        if state.mode == Mode::Program {
            let bytes = value.to_le_bytes();
            let n = (size.min(8) as u64).min(self.store.len() as u64 - offset) as usize;
            // In range by owns() and the min above.
            let _ = self.store.as_volatile_slice().write_slice(&bytes[..n], offset as usize);
            self.counters.bytes_programmed.add(n as u64);
            state.mode = Mode::ReadStatus;
            return;
        }
        let command = value as u8;
        if state.mode == Mode::EraseSetup {
            if command == 0xd0 {
                self.erase(offset - offset % BLOCK);
            } else {
                state.status |= SEQUENCE_ERROR;
            }
            state.mode = Mode::ReadStatus;
            return;
        }
        state.mode = match command {
            0xff | 0x00 => Mode::ReadArray,
            0x70 => Mode::ReadStatus,
            0x90 => Mode::ReadId,
            0x10 | 0x40 => Mode::Program,
            0x20 => Mode::EraseSetup,
            0x50 => {
                state.status = READY;
                Mode::ReadArray
            }
            _ => {
                self.counters.unknown_commands.inc();
                Mode::ReadArray
            }
        };
    }

    fn byte(&self, offset: u64) -> u8 {
        let mut b = [0xffu8];
        let _ = self.store.as_volatile_slice().read_slice(&mut b, offset as usize);
        b[0]
    }

    fn erase(&self, start: u64) {
        let len = BLOCK.min(self.store.len() as u64 - start) as usize;
        if self.store.as_volatile_slice().write_slice(&[0xff; BLOCK as usize][..len], start as usize).is_ok() {
            self.counters.blocks_erased.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::{AsFd, OwnedFd};

    const BASE: u64 = 0xffbe_0000;

    /// A flash over a temporary file holding `contents`, and its stats page.
    fn flash(contents: &[u8]) -> (Flash, File, OwnedFd) {
        let mut file = tempfile();
        file.write_all(contents).unwrap();
        let page = capvm_ipc::stats::create().unwrap();
        let mut stats = capvm_ipc::stats::Stats::attach(page.as_fd()).unwrap();
        let counters = FlashCounters {
            bytes_programmed: stats.counter("flash_bytes_programmed"),
            blocks_erased: stats.counter("flash_blocks_erased"),
            unknown_commands: stats.counter("flash_unknown_commands"),
        };
        let f = Flash::map(file.try_clone().unwrap(), BASE, contents.len() as u64, counters).unwrap();
        (f, file, page)
    }

    fn stat(page: &OwnedFd, name: &str) -> u64 {
        capvm_ipc::stats::read(page).unwrap().into_iter().find(|(n, _)| n == name).unwrap().1
    }

    fn tempfile() -> File {
        let path =
            std::env::temp_dir().join(format!("capvm-flash-{}-{:?}", std::process::id(), std::thread::current().id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(path).unwrap();
        f
    }

    fn file_bytes(file: &mut File) -> Vec<u8> {
        let mut v = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn reads_the_array_then_status_as_ovmf_probes_it() {
        let mut contents = vec![0u8; 2 * BLOCK as usize];
        contents[..4].copy_from_slice(b"_FVH");
        let (f, _, _) = flash(&contents);
        assert!(f.owns(BASE) && f.owns(BASE + 2 * BLOCK - 1) && !f.owns(BASE + 2 * BLOCK) && !f.owns(BASE - 1));
        assert_eq!(f.read(BASE, 4), u32::from_le_bytes(*b"_FVH") as u64);
        // OVMF's probe: clear status reads back the array (not the command,
        // as RAM would), read status reads READY.
        f.write(BASE, 1, 0x50);
        assert_eq!(f.read(BASE, 1), b'_' as u64);
        f.write(BASE, 1, 0x70);
        assert_eq!(f.read(BASE, 1), READY as u64);
        assert_eq!(f.read(BASE + 1, 1), READY as u64, "status stays until another command");
        f.write(BASE, 1, 0xff);
        assert_eq!(f.read(BASE + 1, 1), b'F' as u64);
        f.write(BASE, 1, 0x90);
        assert_eq!(f.read(BASE, 2), (DEVICE as u64) << 8 | MANUFACTURER as u64);
        f.write(BASE, 1, 0xff);
        // A read past the end of the store floats high.
        assert_eq!(f.read(BASE + 2 * BLOCK - 2, 4), 0xffff_0000);
    }

    #[test]
    fn programs_and_erases_reach_the_file() {
        let (f, mut file, page) = flash(&[0x11u8; 3 * BLOCK as usize]);
        // EDK II writes byte by byte: program, data, ..., read array.
        for (i, b) in b"capvm".iter().enumerate() {
            f.write(BASE + 10 + i as u64, 1, 0x10);
            f.write(BASE + 10 + i as u64, 1, *b as u64);
            assert_eq!(f.read(BASE, 1), READY as u64, "status after a program");
        }
        f.write(BASE + 14, 1, 0xff);
        assert_eq!(f.read(BASE + 10, 4), u32::from_le_bytes(*b"capv") as u64);
        // Erase the middle block by an address inside it.
        f.write(BASE + BLOCK + 100, 1, 0x20);
        f.write(BASE + BLOCK + 100, 1, 0xd0);
        assert_eq!(f.read(BASE, 1), READY as u64);
        f.write(BASE, 1, 0xff);
        let bytes = file_bytes(&mut file);
        assert_eq!(&bytes[10..15], b"capvm");
        assert!(bytes[BLOCK as usize..2 * BLOCK as usize].iter().all(|&b| b == 0xff));
        assert!(bytes[2 * BLOCK as usize..].iter().all(|&b| b == 0x11));
        assert_eq!((stat(&page, "flash_bytes_programmed"), stat(&page, "flash_blocks_erased")), (5, 1));
    }

    #[test]
    fn bad_sequences_change_nothing_and_say_so() {
        let (f, mut file, page) = flash(&[0x22u8; BLOCK as usize]);
        // Erase setup without confirm: sequence error, nothing erased.
        f.write(BASE, 1, 0x20);
        f.write(BASE, 1, 0x55);
        assert_eq!(f.read(BASE, 1), (READY | SEQUENCE_ERROR) as u64);
        f.write(BASE, 1, 0x50);
        f.write(BASE, 1, 0x70);
        assert_eq!(f.read(BASE, 1), READY as u64, "clear status clears it");
        // An unknown command: back to the array, counted.
        f.write(BASE, 1, 0xe8);
        assert_eq!(f.read(BASE, 1), 0x22);
        assert_eq!(stat(&page, "flash_unknown_commands"), 1);
        // A program of 8 bytes at the last 2 stores only those 2.
        f.write(BASE + BLOCK - 2, 1, 0x40);
        f.write(BASE + BLOCK - 2, 8, u64::MAX);
        assert_eq!(file_bytes(&mut file).len(), BLOCK as usize, "the file does not grow");
        assert!(file_bytes(&mut file)[..BLOCK as usize - 2].iter().all(|&b| b == 0x22));
    }
}
