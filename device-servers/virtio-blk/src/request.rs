//! A virtio-blk request as the guest framed it, and why one fails.
//!
//! Everything here reads guest-controlled descriptors: nothing panics,
//! every shortfall is an error value.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Why a request failed. Each is counted on the stats page under its
/// [`counter`](BlkRequestError::counter) name, and answered with its
/// [`status`](BlkRequestError::status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlkRequestError {
    /// The chain is not a header, data one way, and a status byte.
    #[error("bad framing")]
    BadFraming,
    /// Sectors past the end of the disk, or a request larger than allowed.
    #[error("out of range")]
    OutOfRange,
    /// A write, WRITE_ZEROES or DISCARD to a read-only disk.
    #[error("read-only disk")]
    ReadOnly,
    /// A request type this disk does not offer.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// The host's I/O failed (errno).
    #[error("I/O error (errno {0})")]
    Io(i32),
}

impl BlkRequestError {
    /// VIRTIO_BLK_S_* for the driver.
    pub fn status(self) -> u8 {
        match self {
            BlkRequestError::Unsupported(_) => S_UNSUPP,
            _ => S_IOERR,
        }
    }

    /// The stats page counter it adds to.
    pub fn counter(self) -> &'static str {
        match self {
            BlkRequestError::BadFraming => "errors_bad_framing",
            BlkRequestError::OutOfRange => "errors_out_of_range",
            BlkRequestError::ReadOnly => "errors_read_only",
            BlkRequestError::Unsupported(_) => "errors_unsupported",
            BlkRequestError::Io(_) => "errors_io",
        }
    }
}

impl From<capvm_block::ImageError> for BlkRequestError {
    fn from(e: capvm_block::ImageError) -> Self {
        match e {
            capvm_block::ImageError::OutsideRam => BlkRequestError::BadFraming,
            capvm_block::ImageError::Io(errno) => BlkRequestError::Io(errno),
        }
    }
}

/// A run of guest memory a request names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u64,
}

/// A chain seen as the specification frames it (virtio 1.x 2.7.4: no
/// assumption about how the driver split it into descriptors): readable
/// bytes first, then writable bytes whose last byte is the status.
#[derive(Debug, PartialEq)]
pub struct Request {
    pub readable: Vec<Segment>,
    /// The writable bytes before the status byte.
    pub writable: Vec<Segment>,
    pub status: GuestAddress,
}

impl Request {
    /// None for a chain with a readable descriptor after a writable one,
    /// or without a writable byte for the status.
    pub fn parse(descs: &[Descriptor]) -> Option<Request> {
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

/// The little-endian u32 at `at` (0 past the end: callers check lengths).
pub fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map_or(0, u32::from_le_bytes)
}

/// The little-endian u64 at `at` (0 past the end: callers check lengths).
pub fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes)
}

/// The first `n` bytes of `segs`, and the rest; None if there are fewer.
pub fn split_front(segs: &[Segment], n: u64) -> Option<(Vec<Segment>, Vec<Segment>)> {
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
pub fn gather(mem: &GuestMemoryMmap, segs: &[Segment], out: &mut [u8]) -> Result<(), BlkRequestError> {
    let mut at = 0;
    for s in segs {
        let end = at + s.len as usize;
        let dst = out.get_mut(at..end).ok_or(BlkRequestError::BadFraming)?;
        mem.read_slice(dst, s.addr).map_err(|_| BlkRequestError::BadFraming)?;
        at = end;
    }
    if at == out.len() {
        Ok(())
    } else {
        Err(BlkRequestError::BadFraming)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn little_endian_fields_past_the_end_read_as_zero() {
        let b = [1, 0, 0, 0, 2, 0, 0, 0, 3];
        assert_eq!((le32(&b, 0), le32(&b, 4), le32(&b, 6)), (1, 2, 0));
        assert_eq!((le64(&b, 0), le64(&b, 2)), (0x2_0000_0001, 0));
    }
}
