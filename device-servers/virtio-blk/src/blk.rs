//! The virtio-blk device model (virtio 1.x, section 5.2) over a raw image
//! file or block device.
//!
//! Every request is checked before the disk is touched: a chain must be a
//! readable 16-byte header, data buffers of the right direction inside
//! guest RAM, and a writable status byte last. Anything else is answered
//! with VIRTIO_BLK_S_IOERR (or UNSUPP for an unknown type) when there is a
//! status byte to write, and returned to the driver in any case.

use std::os::fd::{AsRawFd, OwnedFd};

use capvm_ipc::stats::{Counter, Stats};
use capvm_ipc::BlkOptions;
use capvm_virtio::Device;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const VIRTIO_ID_BLOCK: u16 = 2;
const QUEUE_SIZE: u16 = 256;
const SECTOR: u64 = 512;

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_TOPOLOGY: u64 = 1 << 10;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// Bytes of one DISCARD / WRITE_ZEROES segment.
const SEGMENT_LEN: u32 = 16;
const MAX_SEGMENTS: u32 = 64;
const ID_LEN: usize = 20;
/// Largest data transfer of one request (the driver splits bigger ones).
const MAX_REQUEST: u64 = 4 << 20;

pub struct Blk {
    disk: OwnedFd,
    opts: BlkOptions,
    requests: Counter,
    errors: Counter,
    bytes_read: Counter,
    bytes_written: Counter,
}

/// Why a request failed: the status the driver gets.
struct Failed(u8);

impl Blk {
    pub fn new(disk: OwnedFd, opts: BlkOptions, stats: &mut Stats) -> Blk {
        Blk {
            disk,
            opts,
            requests: stats.counter("requests"),
            errors: stats.counter("request_errors"),
            bytes_read: stats.counter("bytes_read"),
            bytes_written: stats.counter("bytes_written"),
        }
    }

    fn discard_enabled(&self) -> bool {
        !self.opts.read_only && !self.opts.no_delete && self.opts.can_discard
    }

    fn capacity_sectors(&self) -> u64 {
        self.opts.size / SECTOR
    }

    /// Runs one request given its readable part (header, then data for
    /// OUT/DISCARD/WRITE_ZEROES) and its writable part less the status
    /// byte (data for IN/GET_ID). Returns how many bytes went to the guest.
    fn execute(&self, mem: &GuestMemoryMmap, readable: &[Segment], writable: &[Segment]) -> Result<u32, Failed> {
        let (header_segs, data_in) = split_front(readable, 16).ok_or(Failed(S_IOERR))?;
        let mut header = [0u8; 16];
        gather(mem, &header_segs, &mut header)?;
        let kind = le32(&header, 0);
        let sector = le64(&header, 8);
        let to_guest = matches!(kind, T_IN | T_GET_ID);
        // Data goes one way only: an IN with readable data, or an OUT with
        // writable bytes besides the status, is malformed.
        if to_guest && !data_in.is_empty() || !to_guest && !writable.is_empty() {
            return Err(Failed(S_IOERR));
        }
        let data = if to_guest { writable } else { &data_in[..] };
        let total: u64 = data.iter().map(|s| s.len).sum();
        match kind {
            T_IN | T_OUT => {
                if kind == T_OUT && self.opts.read_only {
                    return Err(Failed(S_IOERR));
                }
                if !total.is_multiple_of(SECTOR) || total > MAX_REQUEST {
                    return Err(Failed(S_IOERR));
                }
                let end = sector.checked_add(total / SECTOR).ok_or(Failed(S_IOERR))?;
                if end > self.capacity_sectors() {
                    return Err(Failed(S_IOERR));
                }
                let mut offset = sector * SECTOR;
                for seg in data {
                    self.transfer(mem, seg, offset, kind == T_IN)?;
                    offset += seg.len;
                }
                if kind == T_IN {
                    self.bytes_read.add(total);
                    Ok(total as u32)
                } else {
                    self.bytes_written.add(total);
                    Ok(0)
                }
            }
            T_FLUSH => {
                if !self.opts.read_only {
                    // SAFETY: fdatasync on our own fd.
                    if unsafe { libc::fdatasync(self.disk.as_raw_fd()) } != 0 {
                        return Err(Failed(S_IOERR));
                    }
                }
                Ok(0)
            }
            T_GET_ID => {
                let mut id = [0u8; ID_LEN];
                let serial = self.opts.serial.as_bytes();
                let n = serial.len().min(ID_LEN);
                id[..n].copy_from_slice(&serial[..n]);
                let (front, _) = split_front(data, total.min(ID_LEN as u64)).ok_or(Failed(S_IOERR))?;
                let mut at = 0;
                for seg in &front {
                    mem.write_slice(&id[at..at + seg.len as usize], seg.addr).map_err(|_| Failed(S_IOERR))?;
                    at += seg.len as usize;
                }
                Ok(at as u32)
            }
            T_DISCARD if !self.discard_enabled() => Err(Failed(S_UNSUPP)),
            T_WRITE_ZEROES if self.opts.read_only => Err(Failed(S_IOERR)),
            T_DISCARD | T_WRITE_ZEROES => {
                if !total.is_multiple_of(SEGMENT_LEN as u64)
                    || total == 0
                    || total > (SEGMENT_LEN * MAX_SEGMENTS) as u64
                {
                    return Err(Failed(S_IOERR));
                }
                let mut ranges = vec![0u8; total as usize];
                gather(mem, data, &mut ranges)?;
                for seg in ranges.chunks_exact(SEGMENT_LEN as usize) {
                    let start = le64(seg, 0);
                    let count = le32(seg, 8) as u64;
                    let end =
                        start.checked_add(count).filter(|&e| e <= self.capacity_sectors()).ok_or(Failed(S_IOERR))?;
                    self.clear(start * SECTOR, (end - start) * SECTOR, kind == T_DISCARD)?;
                }
                Ok(0)
            }
            _ => Err(Failed(S_UNSUPP)),
        }
    }

    /// Moves one buffer between guest RAM and the disk, without a copy.
    fn transfer(&self, mem: &GuestMemoryMmap, seg: &Segment, offset: u64, to_guest: bool) -> Result<(), Failed> {
        let len = seg.len as usize;
        if len == 0 {
            return Ok(());
        }
        // One region only: a buffer that straddles the PCI hole is refused.
        let slice = mem.get_slice(seg.addr, len).map_err(|_| Failed(S_IOERR))?;
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
                    libc::pread(self.disk.as_raw_fd(), p, len - done, off)
                } else {
                    libc::pwrite(self.disk.as_raw_fd(), p, len - done, off)
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
                _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
                _ => return Err(Failed(S_IOERR)),
            }
        }
        Ok(())
    }

    /// DISCARD punches a hole; WRITE_ZEROES zeroes the range, by
    /// fallocate where the backend can and by writing zeros where not.
    fn clear(&self, offset: u64, len: u64, discard: bool) -> Result<(), Failed> {
        let fd = self.disk.as_raw_fd();
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
            return Err(Failed(S_IOERR));
        }
        let zeros = vec![0u8; 64 << 10];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            // SAFETY: writes from our own buffer.
            let w = unsafe { libc::pwrite(fd, zeros.as_ptr().cast(), n, (offset + done) as libc::off_t) };
            if w <= 0 {
                return Err(Failed(S_IOERR));
            }
            done += w as u64;
        }
        Ok(())
    }

    /// virtio_blk_config, as far as the features we offer describe it.
    fn config_bytes(&self) -> [u8; 60] {
        let mut c = [0u8; 60];
        c[0..8].copy_from_slice(&self.capacity_sectors().to_le_bytes());
        c[12..16].copy_from_slice(&(QUEUE_SIZE as u32 - 2).to_le_bytes());
        c[20..24].copy_from_slice(&self.opts.sector_size.to_le_bytes());
        let per_physical = (self.opts.physical_sector_size / self.opts.sector_size.max(1)).max(1);
        c[24] = per_physical.trailing_zeros() as u8;
        c[34..36].copy_from_slice(&1u16.to_le_bytes());
        let max_sectors = (u32::MAX as u64 / SECTOR) as u32;
        c[36..40].copy_from_slice(&max_sectors.to_le_bytes());
        c[40..44].copy_from_slice(&MAX_SEGMENTS.to_le_bytes());
        c[44..48].copy_from_slice(&(self.opts.sector_size / SECTOR as u32).max(1).to_le_bytes());
        c[48..52].copy_from_slice(&max_sectors.to_le_bytes());
        c[52..56].copy_from_slice(&MAX_SEGMENTS.to_le_bytes());
        c
    }
}

impl Device for Blk {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK
    }

    fn class(&self) -> [u8; 3] {
        // Mass storage, other.
        [0x01, 0x80, 0x00]
    }

    fn features(&self) -> u64 {
        let mut f = F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_TOPOLOGY;
        if self.opts.read_only {
            f |= F_RO;
        } else {
            f |= F_WRITE_ZEROES;
        }
        if self.discard_enabled() {
            f |= F_DISCARD;
        }
        f
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; capvm_virtio::layout::BLK_QUEUES]
    }

    fn config(&self) -> Vec<u8> {
        self.config_bytes().to_vec()
    }

    fn activate(&mut self, _features: u64) {}

    fn reset(&mut self) {}

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(queue) = queues.get_mut(index) else { return false };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            self.requests.inc();
            // A broken chain (a loop, a runaway next, a bad indirect table)
            // has no status byte we could trust: returned with length 0.
            let (status, len) = match capvm_virtio::chain::whole(chain).as_deref().and_then(Request::parse) {
                None => (S_IOERR, 0),
                Some(req) => {
                    let (status, written) = match self.execute(mem, &req.readable, &req.writable) {
                        Ok(n) => (S_OK, n),
                        Err(Failed(s)) => (s, 0),
                    };
                    let len = if mem.write_obj(status, req.status).is_ok() { written + 1 } else { written };
                    (status, len)
                }
            };
            if status != S_OK {
                self.errors.inc();
            }
            // A head the table does not have cannot be returned; the driver
            // broke its own queue.
            if queue.add_used(mem, head, len).is_ok() {
                used = true;
            }
        }
        used
    }
}

impl capvm_virtio::server::Backend for Blk {}

/// A run of guest memory a request names.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Segment {
    addr: GuestAddress,
    len: u64,
}

/// A chain seen as the specification frames it (virtio 1.x 2.7.4: no
/// assumption about how the driver split it into descriptors): readable
/// bytes first, then writable bytes whose last byte is the status.
#[derive(Debug, PartialEq)]
struct Request {
    readable: Vec<Segment>,
    /// The writable bytes before the status byte.
    writable: Vec<Segment>,
    status: GuestAddress,
}

impl Request {
    /// None for a chain with a readable descriptor after a writable one,
    /// or without a writable byte for the status.
    fn parse(descs: &[Descriptor]) -> Option<Request> {
        let first_writable = descs.iter().position(|d| d.is_write_only()).unwrap_or(descs.len());
        if descs[first_writable..].iter().any(|d| !d.is_write_only()) {
            return None;
        }
        let seg = |d: &Descriptor| Segment { addr: d.addr(), len: d.len() as u64 };
        let readable: Vec<Segment> = descs[..first_writable].iter().map(seg).filter(|s| s.len > 0).collect();
        let mut writable: Vec<Segment> = descs[first_writable..].iter().map(seg).filter(|s| s.len > 0).collect();
        let last = writable.last_mut()?;
        last.len -= 1;
        let status = GuestAddress(last.addr.0.checked_add(last.len)?);
        if last.len == 0 {
            writable.pop();
        }
        Some(Request { readable, writable, status })
    }
}

/// The first `n` bytes of `segs`, and the rest; None if there are fewer.
/// The little-endian u32 at `at` (0 past the end: callers check lengths).
fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map_or(0, u32::from_le_bytes)
}

/// The little-endian u64 at `at` (0 past the end: callers check lengths).
fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes)
}

fn split_front(segs: &[Segment], n: u64) -> Option<(Vec<Segment>, Vec<Segment>)> {
    let (mut front, mut rest, mut left) = (Vec::new(), Vec::new(), n);
    for s in segs {
        if left == 0 {
            rest.push(*s);
        } else if s.len <= left {
            front.push(*s);
            left -= s.len;
        } else {
            front.push(Segment { addr: s.addr, len: left });
            rest.push(Segment { addr: GuestAddress(s.addr.0.checked_add(left)?), len: s.len - left });
            left = 0;
        }
    }
    (left == 0).then_some((front, rest))
}

/// Copies `segs` (exactly `out.len()` bytes) out of guest memory.
fn gather(mem: &GuestMemoryMmap, segs: &[Segment], out: &mut [u8]) -> Result<(), Failed> {
    let mut at = 0;
    for s in segs {
        let end = at + s.len as usize;
        mem.read_slice(out.get_mut(at..end).ok_or(Failed(S_IOERR))?, s.addr).map_err(|_| Failed(S_IOERR))?;
        at = end;
    }
    if at == out.len() {
        Ok(())
    } else {
        Err(Failed(S_IOERR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::split::Descriptor;

    const W: u16 = 2; // VRING_DESC_F_WRITE

    #[test]
    fn request_framing_ignores_how_the_driver_split_it() {
        // Header, data, status in one writable descriptor of 513 bytes.
        let descs = [Descriptor::new(0x1000, 16, 0, 0), Descriptor::new(0x2000, 513, W, 0)];
        let r = Request::parse(&descs).unwrap();
        assert_eq!(r.writable, vec![Segment { addr: GuestAddress(0x2000), len: 512 }]);
        assert_eq!(r.status, GuestAddress(0x2200));
        // Header and data in one readable descriptor.
        let (h, rest) = split_front(&[Segment { addr: GuestAddress(0x1000), len: 528 }], 16).unwrap();
        assert_eq!(h, vec![Segment { addr: GuestAddress(0x1000), len: 16 }]);
        assert_eq!(rest, vec![Segment { addr: GuestAddress(0x1010), len: 512 }]);
    }

    #[test]
    fn malformed_chains_have_no_request() {
        // Readable after writable; no writable byte at all; nothing.
        assert!(Request::parse(&[Descriptor::new(0, 1, W, 0), Descriptor::new(0, 16, 0, 0)]).is_none());
        assert!(Request::parse(&[Descriptor::new(0, 16, 0, 0)]).is_none());
        assert!(Request::parse(&[]).is_none());
        assert!(Request::parse(&[Descriptor::new(u64::MAX, 2, W, 0)]).is_none());
        assert!(split_front(&[Segment { addr: GuestAddress(0), len: 8 }], 16).is_none());
    }
}
