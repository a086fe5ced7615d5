//! The virtio-blk device model (virtio 1.x, section 5.2) over a raw image
//! file or block device.
//!
//! Every request is checked before the disk is touched: a chain must be a
//! readable 16-byte header, data buffers of the right direction inside
//! guest RAM, and a writable status byte last. Anything else is answered
//! with VIRTIO_BLK_S_IOERR (or UNSUPP for an unknown type) when there is a
//! status byte to write, and returned to the driver in any case.

use std::os::fd::OwnedFd;

use capvm_block::Image;

use capvm_ipc::stats::{Counter, CountersByKind, Stats};
use capvm_ipc::BlkOptions;
use capvm_virtio::Device;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::request::{gather, le32, le64, split_front, BlkRequestError, Request, Segment, S_OK};
use BlkRequestError::*;

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

/// Bytes of one DISCARD / WRITE_ZEROES segment.
const SEGMENT_LEN: u32 = 16;
const MAX_SEGMENTS: u32 = 64;
const ID_LEN: usize = 20;
/// Largest data transfer of one request (the driver splits bigger ones).
const MAX_REQUEST: u64 = 4 << 20;
/// Most bytes requests join for in one host call. Joining pays for small
/// requests (one system call for many); large ones gain nothing, and 32
/// joined 1 MiB writes ran slower than 32 calls (docs/benchmarks.md).
const MAX_JOINED: u64 = 1 << 20;

pub struct Blk {
    disk: Image,
    opts: BlkOptions,
    requests: Counter,
    errors: Counter,
    /// One per [`BlkRequestError`] kind, by its counter name.
    errors_by_kind: CountersByKind,
    bytes_read: Counter,
    bytes_written: Counter,
    /// Requests whose data moved in one host call with the one before.
    requests_merged: Counter,
}

impl Blk {
    pub fn new(disk: OwnedFd, opts: BlkOptions, stats: &mut Stats) -> Blk {
        Blk {
            disk: Image::new(disk),
            opts,
            requests: stats.counter("requests"),
            errors: stats.counter("request_errors"),
            errors_by_kind: CountersByKind::new(
                stats,
                "",
                [BadFraming, OutOfRange, ReadOnly, Unsupported(0), Io(0)].map(BlkRequestError::counter),
            ),
            bytes_read: stats.counter("bytes_read"),
            bytes_written: stats.counter("bytes_written"),
            requests_merged: stats.counter("requests_merged"),
        }
    }

    fn count_error(&self, e: BlkRequestError) {
        self.errors.inc();
        self.errors_by_kind.inc(e.counter());
    }

    fn discard_enabled(&self) -> bool {
        !self.opts.read_only && !self.opts.no_delete && self.opts.can_discard
    }

    fn capacity_sectors(&self) -> u64 {
        self.opts.size / SECTOR
    }

    /// Checks a request before anything moves, and says what it asks for.
    /// Its readable part is the header, then data for OUT, DISCARD and
    /// WRITE_ZEROES; its writable part, less the status byte, is data for
    /// IN and GET_ID.
    fn check(&self, mem: &GuestMemoryMmap, req: Request) -> Result<Work, BlkRequestError> {
        let (header_segs, data_in) = split_front(&req.readable, 16).ok_or(BadFraming)?;
        let mut header = [0u8; 16];
        gather(mem, &header_segs, &mut header)?;
        let kind = le32(&header, 0);
        let sector = le64(&header, 8);
        let to_guest = matches!(kind, T_IN | T_GET_ID);
        // Data goes one way only: an IN with readable data, or an OUT with
        // writable bytes besides the status, is malformed.
        if to_guest && !data_in.is_empty() || !to_guest && !req.writable.is_empty() {
            return Err(BadFraming);
        }
        let data = if to_guest { req.writable } else { data_in };
        if !matches!(kind, T_IN | T_OUT) {
            return Ok(Work::Other { kind, data });
        }
        if kind == T_OUT && self.opts.read_only {
            return Err(ReadOnly);
        }
        let len: u64 = data.iter().map(|s| s.len).sum();
        if !len.is_multiple_of(SECTOR) {
            return Err(BadFraming);
        }
        let end = sector.checked_add(len / SECTOR).ok_or(OutOfRange)?;
        if end > self.capacity_sectors() || len > MAX_REQUEST {
            return Err(OutOfRange);
        }
        // Every buffer is in guest RAM, so that a request that joins others
        // in one host call cannot make them fail.
        if data.iter().any(|s| mem.get_slice(s.addr, s.len as usize).is_err()) {
            return Err(BadFraming);
        }
        Ok(Work::Move(Transfer { to_guest, offset: sector * SECTOR, len, data }))
    }

    /// Moves the data of reads (or writes) that continue one another, in
    /// one host call; a result for each. When the call fails, which
    /// request it failed for is unknown: each then goes again alone, for
    /// its own status.
    fn move_data(&self, mem: &GuestMemoryMmap, run: &[&Transfer]) -> Vec<Result<u32, BlkRequestError>> {
        let first = run[0];
        let buffers: Vec<_> = run.iter().flat_map(|t| &t.data).map(|s| (s.addr, s.len as usize)).collect();
        match self.disk.transfer(mem, &buffers, first.offset, first.to_guest) {
            Ok(()) => {
                self.requests_merged.add(run.len() as u64 - 1);
                run.iter().map(|t| Ok(self.moved(t))).collect()
            }
            Err(_) if run.len() > 1 => run.iter().flat_map(|&t| self.move_data(mem, &[t])).collect(),
            Err(e) => vec![Err(e.into())],
        }
    }

    /// Counts a transfer that is done; returns the bytes it gave the guest.
    fn moved(&self, t: &Transfer) -> u32 {
        if t.to_guest {
            self.bytes_read.add(t.len);
            t.len as u32
        } else {
            self.bytes_written.add(t.len);
            0
        }
    }

    /// Runs a request that moves no sector data (FLUSH, GET_ID, DISCARD,
    /// WRITE_ZEROES, or a type we do not know) given its data segments.
    /// Returns how many bytes went to the guest.
    fn execute(&self, mem: &GuestMemoryMmap, kind: u32, data: &[Segment]) -> Result<u32, BlkRequestError> {
        let total: u64 = data.iter().map(|s| s.len).sum();
        match kind {
            T_FLUSH => {
                if !self.opts.read_only {
                    self.disk.flush()?;
                }
                Ok(0)
            }
            T_GET_ID => {
                let mut id = [0u8; ID_LEN];
                let serial = self.opts.serial.as_bytes();
                let n = serial.len().min(ID_LEN);
                id[..n].copy_from_slice(&serial[..n]);
                let (front, _) = split_front(data, total.min(ID_LEN as u64)).ok_or(BadFraming)?;
                let mut at = 0;
                for seg in &front {
                    mem.write_slice(&id[at..at + seg.len as usize], seg.addr).map_err(|_| BadFraming)?;
                    at += seg.len as usize;
                }
                Ok(at as u32)
            }
            T_DISCARD if !self.discard_enabled() => Err(Unsupported(kind)),
            T_WRITE_ZEROES if self.opts.read_only => Err(ReadOnly),
            T_DISCARD | T_WRITE_ZEROES => {
                if !total.is_multiple_of(SEGMENT_LEN as u64)
                    || total == 0
                    || total > (SEGMENT_LEN * MAX_SEGMENTS) as u64
                {
                    return Err(BadFraming);
                }
                let mut ranges = vec![0u8; total as usize];
                gather(mem, data, &mut ranges)?;
                for seg in ranges.chunks_exact(SEGMENT_LEN as usize) {
                    let start = le64(seg, 0);
                    let count = le32(seg, 8) as u64;
                    let end = start.checked_add(count).filter(|&e| e <= self.capacity_sectors()).ok_or(OutOfRange)?;
                    self.disk.clear(start * SECTOR, (end - start) * SECTOR, kind == T_DISCARD)?;
                }
                Ok(0)
            }
            _ => Err(Unsupported(kind)),
        }
    }

    /// Writes a finished request's status and returns its chain; false if
    /// the head cannot be returned (the driver broke its own queue).
    fn complete(
        &self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        p: &Pending,
        result: Result<u32, BlkRequestError>,
    ) -> bool {
        let mut len = 0;
        if let Some(status_at) = p.status {
            let (status, written) = match result {
                Ok(n) => (S_OK, n),
                Err(e) => (e.status(), 0),
            };
            len = if mem.write_obj(status, status_at).is_ok() { written + 1 } else { written };
        }
        if let Err(e) = result {
            self.count_error(e);
        }
        queue.add_used(mem, p.head, len).is_ok()
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
        // Everything the driver has made available is checked first, so
        // that reads or writes that continue one another move together.
        let mut pending = Vec::new();
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            self.requests.inc();
            let head = chain.head_index();
            pending.push(match capvm_virtio::chain::whole(chain).as_deref().and_then(Request::parse) {
                // A broken chain (a loop, a runaway next, a bad indirect
                // table) has no status byte we could trust: returned with
                // length 0.
                None => Pending { head, status: None, work: Work::Refused(BadFraming) },
                Some(req) => {
                    let status = Some(req.status);
                    Pending { head, status, work: self.check(mem, req).unwrap_or_else(Work::Refused) }
                }
            });
        }
        // Then each runs in queue order: a FLUSH after the writes before it.
        let mut used = false;
        let mut at = 0;
        while at < pending.len() {
            let results = match &pending[at].work {
                Work::Move(_) => self.move_data(mem, &continuing(&pending[at..])),
                Work::Other { kind, data } => vec![self.execute(mem, *kind, data)],
                Work::Refused(e) => vec![Err(*e)],
            };
            for (p, &result) in pending[at..].iter().zip(&results) {
                used |= self.complete(queue, mem, p, result);
            }
            at += results.len();
        }
        used
    }
}

/// A checked read or write: where on the disk, and the guest's buffers.
struct Transfer {
    to_guest: bool,
    offset: u64,
    len: u64,
    data: Vec<Segment>,
}

/// What a checked request asks for.
enum Work {
    /// Sector data to move; it may join its neighbours in one host call.
    Move(Transfer),
    /// Anything else, run on its own.
    Other { kind: u32, data: Vec<Segment> },
    /// Refused before it reached the disk.
    Refused(BlkRequestError),
}

/// A request taken off the queue, waiting for its turn.
struct Pending {
    head: u16,
    /// Where its status byte goes; None for a broken chain.
    status: Option<GuestAddress>,
    work: Work,
}

/// The transfers at the front of `pending` that move in one host call:
/// the first, and those after it in the same direction that each start
/// where the one before ends, within UIO_MAXIOV buffers and MAX_JOINED
/// bytes in all.
fn continuing(pending: &[Pending]) -> Vec<&Transfer> {
    let mut run: Vec<&Transfer> = Vec::new();
    let (mut buffers, mut bytes) = (0, 0);
    for p in pending {
        let Work::Move(t) = &p.work else { break };
        if let Some(last) = run.last() {
            let joins = t.to_guest == last.to_guest && t.offset == last.offset + last.len;
            if !joins || buffers + t.data.len() > libc::UIO_MAXIOV as usize || bytes + t.len > MAX_JOINED {
                break;
            }
        }
        buffers += t.data.len();
        bytes += t.len;
        run.push(t);
    }
    run
}

impl capvm_virtio::server::Backend for Blk {}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::request::{S_IOERR, S_UNSUPP};

    const HEADER: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;
    const SECTORS: u64 = 64;
    const QUEUE: u16 = 64;

    /// A disk of SECTORS sectors on a temp file, guest RAM, a queue of 64
    /// the test drives as a driver would, and the stats page.
    struct Rig {
        mem: GuestMemoryMmap,
        blk: Blk,
        stats: OwnedFd,
        path: std::path::PathBuf,
        next_desc: u16,
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn rig(read_only: bool, no_delete: bool) -> Rig {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("capvm-blk-test-{}-{n}.img", std::process::id()));
        std::fs::write(&path, vec![0xee; (SECTORS * SECTOR) as usize]).unwrap();
        let disk = std::fs::OpenOptions::new().read(true).write(!read_only).open(&path).unwrap();
        let stats = capvm_ipc::stats::create().unwrap();
        let mut page = Stats::attach(stats.as_fd()).unwrap();
        let opts = BlkOptions {
            read_only,
            sector_size: 512,
            physical_sector_size: 512,
            size: SECTORS * SECTOR,
            no_delete,
            can_discard: true,
            serial: "SERIAL-0123456789-ABCDEF".into(),
        };
        let blk = Blk::new(disk.into(), opts, &mut page);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        Rig { mem, blk, stats, path, next_desc: 0 }
    }

    impl Rig {
        /// Offers `chains` of (addr, len, device-writable) at once, as a
        /// driver with many requests in flight does, and lets the device
        /// run once; returns the used elements (id, len) it added.
        fn offer(&mut self, chains: &[Vec<(u64, u32, bool)>]) -> Vec<(u32, u32)> {
            let mock = MockSplitQueue::new(&self.mem, QUEUE);
            let first = self.next_desc;
            let mut descs = Vec::new();
            for chain in chains {
                descs.extend(capvm_virtio::test_utils::chain(first + descs.len() as u16, chain));
            }
            mock.add_desc_chains(&descs, first).unwrap();
            self.next_desc += descs.len() as u16;
            let mut q: Queue = mock.create_queue().unwrap();
            // The device has already taken what came before.
            let done = mock.used().idx().load();
            q.set_next_avail(done);
            q.set_next_used(done);
            assert!(self.blk.process_queue(0, std::slice::from_mut(&mut q), &self.mem));
            assert_eq!(mock.used().idx().load(), done + chains.len() as u16, "every chain returned");
            let used = |i: usize| mock.used().ring().ref_at((done as usize + i) % QUEUE as usize).unwrap().load();
            (0..chains.len()).map(|i| (used(i).id(), used(i).len())).collect()
        }

        /// Offers one chain and lets the device run; returns the used
        /// length and the status byte.
        fn submit(&mut self, descs: &[(u64, u32, bool)]) -> (u32, u8) {
            self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            let first = self.next_desc;
            let used = self.offer(&[descs.to_vec()]);
            assert_eq!(used[0].0, first as u32, "the head is returned");
            (used[0].1, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
        }

        fn header(&self, at: u64, kind: u32, sector: u64) {
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&h, GuestAddress(at)).unwrap();
        }

        /// Offers the requests `(kind, sector, data address, data length)`
        /// at once; returns each one's status byte.
        fn submit_all(&mut self, requests: &[(u32, u64, u64, u32)]) -> Vec<u8> {
            let mut chains = Vec::new();
            for (i, &(kind, sector, data, len)) in requests.iter().enumerate() {
                let (header, status) = (HEADER + 16 * i as u64, STATUS + i as u64);
                self.header(header, kind, sector);
                self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
                chains.push(vec![(header, 16, false), (data, len, kind == T_IN), (status, 1, true)]);
            }
            self.offer(&chains);
            (0..requests.len()).map(|i| self.mem.read_obj(GuestAddress(STATUS + i as u64)).unwrap()).collect()
        }

        /// A request of `kind` at `sector` with `len` bytes of data.
        fn request(&mut self, kind: u32, sector: u64, len: u32) -> (u32, u8) {
            self.header(HEADER, kind, sector);
            let to_guest = matches!(kind, T_IN | T_GET_ID);
            self.submit(&[(HEADER, 16, false), (DATA, len, to_guest), (STATUS, 1, true)])
        }

        fn counter(&self, name: &str) -> u64 {
            capvm_ipc::stats::read(&self.stats).unwrap().into_iter().find(|(n, _)| n == name).map_or(0, |(_, v)| v)
        }

        fn image(&self) -> Vec<u8> {
            std::fs::read(&self.path).unwrap()
        }
    }

    #[test]
    fn blk_write_then_read_moves_the_bytes_through_the_image() {
        let mut r = rig(false, false);
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        r.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
        assert_eq!(r.request(T_OUT, 3, 1024), (1, S_OK));
        assert_eq!(&r.image()[3 * 512..5 * 512], &pattern[..]);
        r.mem.write_slice(&[0u8; 1024], GuestAddress(DATA)).unwrap();
        assert_eq!(r.request(T_IN, 3, 1024), (1025, S_OK), "data plus the status byte");
        let mut back = vec![0u8; 1024];
        r.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert_eq!(back, pattern);
        assert_eq!(r.request(T_FLUSH, 0, 0).1, S_OK);
        assert_eq!((r.counter("requests"), r.counter("request_errors")), (3, 0));
        assert_eq!((r.counter("bytes_written"), r.counter("bytes_read")), (1024, 1024));
    }

    #[test]
    fn blk_requests_past_the_end_fail_out_of_range_and_touch_nothing() {
        let mut r = rig(false, false);
        let before = r.image();
        assert_eq!(r.request(T_OUT, SECTORS - 1, 1024), (1, S_IOERR));
        assert_eq!(r.request(T_IN, u64::MAX, 512), (1, S_IOERR), "sector + count overflows");
        assert_eq!(r.image(), before);
        assert_eq!(r.counter("errors_out_of_range"), 2);
    }

    #[test]
    fn blk_read_only_disk_refuses_writes_zeroes_and_discard() {
        let mut r = rig(true, false);
        let before = r.image();
        assert_eq!(r.request(T_OUT, 0, 512), (1, S_IOERR));
        assert_eq!(r.request(T_WRITE_ZEROES, 0, 16), (1, S_IOERR));
        assert_eq!(r.request(T_DISCARD, 0, 16), (1, S_UNSUPP));
        assert_eq!(r.image(), before);
        assert_eq!((r.counter("errors_read_only"), r.counter("errors_unsupported")), (2, 1));
        assert_eq!(r.blk.features() & F_RO, F_RO);
    }

    #[test]
    fn blk_bad_framing_is_an_error_status_and_the_chain_comes_back() {
        let mut r = rig(false, false);
        r.header(HEADER, T_IN, 0);
        // Header too short; data the wrong way (an IN with readable data);
        // a sector count that is not whole.
        assert_eq!(r.submit(&[(HEADER, 8, false), (STATUS, 1, true)]), (1, S_IOERR));
        assert_eq!(r.submit(&[(HEADER, 16, false), (DATA, 512, false), (STATUS, 1, true)]), (1, S_IOERR));
        assert_eq!(r.request(T_OUT, 0, 100), (1, S_IOERR));
        // No writable byte for the status at all: returned with length 0.
        assert_eq!(r.submit(&[(HEADER, 16, false)]), (0, 0xff));
        // A buffer outside guest RAM.
        assert_eq!(r.submit(&[(HEADER, 16, false), (1 << 40, 512, true), (STATUS, 1, true)]), (1, S_IOERR));
        assert_eq!(r.counter("errors_bad_framing"), 5);
        assert_eq!(r.request(99, 0, 0).1, S_UNSUPP);
        assert_eq!(r.counter("request_errors"), 6);
    }

    #[test]
    fn blk_get_id_discard_and_write_zeroes_do_what_the_spec_says() {
        let mut r = rig(false, false);
        assert_eq!(r.request(T_GET_ID, 0, 20), (21, S_OK));
        let mut id = [0u8; 20];
        r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"SERIAL-0123456789-AB", "cut to 20 bytes");
        // WRITE_ZEROES of sectors 2-3, one 16-byte segment.
        let mut seg = [0u8; 16];
        seg[0..8].copy_from_slice(&2u64.to_le_bytes());
        seg[8..12].copy_from_slice(&2u32.to_le_bytes());
        r.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
        assert_eq!(r.request(T_WRITE_ZEROES, 0, 16), (1, S_OK));
        let img = r.image();
        assert!(img[1024..2048].iter().all(|&b| b == 0) && img[..1024].iter().all(|&b| b == 0xee));
        assert_eq!(r.request(T_DISCARD, 0, 16), (1, S_OK));
        // A segment that runs past the end.
        seg[0..8].copy_from_slice(&(SECTORS - 1).to_le_bytes());
        r.mem.write_slice(&seg, GuestAddress(DATA)).unwrap();
        assert_eq!(r.request(T_DISCARD, 0, 16), (1, S_IOERR));
        let mut nodelete = rig(false, true);
        assert_eq!(nodelete.request(T_DISCARD, 0, 16), (1, S_UNSUPP));
        assert_eq!(nodelete.blk.features() & F_DISCARD, 0);
    }

    #[test]
    fn blk_reads_and_writes_that_continue_one_another_move_together_in_queue_order() {
        let mut r = rig(false, false);
        let block = |i: u64| -> Vec<u8> { (0..512u64).map(|b| (b * 3 + i * 41) as u8).collect() };
        for i in 0..4 {
            r.mem.write_slice(&block(i), GuestAddress(DATA + i * 0x1000)).unwrap();
        }
        // Sectors 8, 9, 10 and then 20: the first three in one call.
        let writes: Vec<_> = [8, 9, 10, 20].iter().zip(0..).map(|(&s, i)| (T_OUT, s, DATA + i * 0x1000, 512)).collect();
        assert_eq!(r.submit_all(&writes), vec![S_OK; 4]);
        assert_eq!(r.counter("requests_merged"), 2);
        let img = r.image();
        for (i, sector) in [8usize, 9, 10, 20].into_iter().enumerate() {
            assert_eq!(img[sector * 512..][..512], block(i as u64)[..], "sector {sector}");
        }
        // A write, a read of it in the same batch (the read sees it), a
        // FLUSH, then three reads of which the middle one's buffer is not
        // guest RAM: it fails alone and the two around it do not join.
        r.mem.write_slice(&block(9), GuestAddress(DATA + 0x8000)).unwrap();
        let mixed = [
            (T_OUT, 30, DATA + 0x8000, 512),
            (T_IN, 30, DATA + 0x9000, 512),
            (T_FLUSH, 0, DATA, 0),
            (T_IN, 8, DATA + 0xa000, 512),
            (T_IN, 9, 1 << 40, 512),
            (T_IN, 10, DATA + 0xb000, 512),
        ];
        assert_eq!(r.submit_all(&mixed), vec![S_OK, S_OK, S_OK, S_OK, S_IOERR, S_OK]);
        let read = |r: &Rig, at: u64| {
            let mut b = vec![0u8; 512];
            r.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
            b
        };
        assert_eq!(read(&r, DATA + 0x9000), block(9), "the read after the write sees it");
        assert_eq!((read(&r, DATA + 0xa000), read(&r, DATA + 0xb000)), (block(0), block(2)));
        assert_eq!(r.counter("requests_merged"), 2, "nothing joined across the FLUSH or the bad buffer");
        assert_eq!(r.counter("errors_bad_framing"), 1);
    }

    #[test]
    fn blk_a_failed_joint_call_gives_each_request_its_own_status() {
        let mut r = rig(false, false);
        // The disk fd is read-only under a writable disk: every pwritev fails.
        r.blk.disk = Image::new(std::fs::File::open(&r.path).unwrap().into());
        let writes: Vec<_> = (0..3).map(|i| (T_OUT, i, DATA + i * 0x1000, 512)).collect();
        assert_eq!(r.submit_all(&writes), vec![S_IOERR; 3]);
        assert_eq!((r.counter("errors_io"), r.counter("requests_merged")), (3, 0));
        assert_eq!(r.image(), vec![0xee; (SECTORS * SECTOR) as usize]);
    }
}
