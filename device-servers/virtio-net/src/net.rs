//! The virtio-net device model (virtio 1.x, section 5.1) over a tap.
//!
//! The broker opened the tap with IFF_VNET_HDR and a 12-byte header, which
//! is exactly virtio 1.x's `virtio_net_hdr`, so frames cross in one piece:
//! - TX: each chain is written to the tap with one writev, the payload
//!   straight from guest RAM. The guest's header is replaced by zeros: it
//!   negotiated no offload, so it may not ask the host to checksum or
//!   segment anything.
//! - RX: a frame is read from the tap once, then copied into one chain, or
//!   into as many as it needs with VIRTIO_NET_F_MRG_RXBUF. A frame waits
//!   (and the tap is not polled) while the guest has no buffers for it.
//!
//! Offloads: none (no CSUM, GSO or TSO in either direction).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use capvm_ipc::stats::{Counter, CountersByKind, Stats};
use capvm_ipc::NetOptions;
use capvm_virtio::Device;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryMmap};

const VIRTIO_ID_NET: u16 = 1;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;

const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_STATUS: u64 = 1 << 16;
const S_LINK_UP: u16 = 1;

/// `struct virtio_net_hdr` of virtio 1.x (with num_buffers).
const HEADER_LEN: usize = capvm_virtio::layout::NET_HEADER_LEN;
/// Where num_buffers sits in the header.
const NUM_BUFFERS: usize = 10;
/// Largest frame a tap hands over: a 64 KiB MTU, Ethernet and VLAN headers.
const MAX_FRAME: usize = 65535 + 14 + 4;
/// Frames moved per wake-up before the loop looks at other events.
const BURST: usize = 64;

pub struct Net {
    tap: OwnedFd,
    opts: NetOptions,
    active: bool,
    mergeable: bool,
    /// A frame read from the tap that no RX buffer has taken yet.
    pending: Option<usize>,
    /// The RX queue ran dry: stop reading the tap until the guest adds buffers.
    rx_blocked: bool,
    frame: Vec<u8>,
    stats: NetStats,
}

struct NetStats {
    rx_frames: Counter,
    rx_bytes: Counter,
    rx_dropped: Counter,
    tx_frames: Counter,
    tx_bytes: Counter,
    tx_errors: Counter,
    /// One per [`NetTxError`] kind, by its counter name.
    tx_errors_by_kind: CountersByKind,
}

/// Why a TX chain was not sent. Each kind has its counter beside
/// `tx_errors` on the stats page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NetTxError {
    /// Broken, device-writable, outside RAM, or not header plus an Ethernet frame.
    #[error("bad framing")]
    BadFraming,
    /// Longer than the largest frame a tap takes.
    #[error("frame too long")]
    TooLong,
    /// The tap refused it (errno).
    #[error("tap write failed (errno {0})")]
    Io(i32),
}

impl NetTxError {
    fn counter(self) -> &'static str {
        match self {
            NetTxError::BadFraming => "tx_errors_bad_framing",
            NetTxError::TooLong => "tx_errors_too_long",
            NetTxError::Io(_) => "tx_errors_io",
        }
    }
}

/// What became of one frame offered to the RX queue.
enum Rx {
    Delivered,
    /// The guest has not posted enough buffers; try again after a notify.
    NoBuffers,
    /// The guest's buffers could not hold it (bad chains): returned empty.
    Dropped,
}

impl Net {
    pub fn new(tap: OwnedFd, opts: NetOptions, stats: &mut Stats) -> Net {
        Net {
            tap,
            opts,
            active: false,
            mergeable: false,
            pending: None,
            rx_blocked: false,
            frame: vec![0; HEADER_LEN + MAX_FRAME],
            stats: NetStats {
                rx_frames: stats.counter("rx_frames"),
                rx_bytes: stats.counter("rx_bytes"),
                rx_dropped: stats.counter("rx_dropped"),
                tx_frames: stats.counter("tx_frames"),
                tx_bytes: stats.counter("tx_bytes"),
                tx_errors: stats.counter("tx_errors"),
                tx_errors_by_kind: CountersByKind::new(
                    stats,
                    "",
                    [NetTxError::BadFraming, NetTxError::TooLong, NetTxError::Io(0)].map(NetTxError::counter),
                ),
            },
        }
    }

    fn config_bytes(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0..6].copy_from_slice(&self.opts.mac);
        c[6..8].copy_from_slice(&S_LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.opts.mtu.to_le_bytes());
        c
    }

    /// Sends every chain the guest queued for TX.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let sent = capvm_virtio::chain::whole(chain)
                .ok_or(NetTxError::BadFraming)
                .and_then(|descs| self.write_frame(mem, &descs));
            match sent {
                Ok(n) => {
                    self.stats.tx_frames.inc();
                    self.stats.tx_bytes.add(n as u64);
                }
                Err(e) => {
                    self.stats.tx_errors.inc();
                    self.stats.tx_errors_by_kind.inc(e.counter());
                }
            }
            // TX buffers are only read: the used length is 0.
            if queue.add_used(mem, head, 0).is_ok() {
                used = true;
            }
        }
        used
    }

    /// Writes one TX chain (header + frame, all device-readable) to the tap.
    fn write_frame(&self, mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Result<usize, NetTxError> {
        if descs.iter().any(|d| d.is_write_only()) {
            return Err(NetTxError::BadFraming);
        }
        let total: u64 = descs.iter().map(|d| d.len() as u64).sum();
        if total < (HEADER_LEN + 14) as u64 {
            return Err(NetTxError::BadFraming);
        }
        if total > (HEADER_LEN + MAX_FRAME) as u64 {
            return Err(NetTxError::TooLong);
        }
        // The payload, skipping the guest's header.
        let mut slices = Vec::with_capacity(descs.len());
        let mut skip = HEADER_LEN as u64;
        for d in descs {
            let len = d.len() as u64;
            if len <= skip {
                skip -= len;
                continue;
            }
            let addr = d.addr().checked_add(skip).ok_or(NetTxError::BadFraming)?;
            // One region only: a buffer across the PCI hole is refused.
            slices.push(mem.get_slice(addr, (len - skip) as usize).map_err(|_| NetTxError::BadFraming)?);
            skip = 0;
        }
        let header = [0u8; HEADER_LEN];
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard()).collect();
        let mut iov = vec![libc::iovec { iov_base: header.as_ptr() as *mut _, iov_len: HEADER_LEN }];
        iov.extend(
            slices.iter().zip(&guards).map(|(s, g)| libc::iovec { iov_base: g.as_ptr() as *mut _, iov_len: s.len() }),
        );
        // SAFETY: every iovec points into guest RAM mapped for `mem`'s
        // lifetime (bounds checked by get_slice) or at `header`.
        let n = unsafe { libc::writev(self.tap.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
        if n < 0 {
            return Err(NetTxError::Io(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)));
        }
        Ok(n as usize - HEADER_LEN)
    }

    /// Moves frames from the tap into RX buffers until either runs out.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        for _ in 0..BURST {
            let len = match self.pending.take() {
                Some(len) => len,
                None => match self.read_frame() {
                    Some(len) => len,
                    None => break,
                },
            };
            match self.deliver(queue, mem, len) {
                Rx::Delivered => {
                    used = true;
                    self.stats.rx_frames.inc();
                    self.stats.rx_bytes.add((len - HEADER_LEN) as u64);
                }
                Rx::Dropped => {
                    used = true;
                    self.stats.rx_dropped.inc();
                }
                Rx::NoBuffers => {
                    self.pending = Some(len);
                    self.rx_blocked = true;
                    break;
                }
            }
        }
        used
    }

    /// Reads one frame (with its header) from the tap into `self.frame`.
    fn read_frame(&mut self) -> Option<usize> {
        loop {
            // SAFETY: reads into our own buffer.
            let n = unsafe { libc::read(self.tap.as_raw_fd(), self.frame.as_mut_ptr().cast(), self.frame.len()) };
            if n > HEADER_LEN as isize {
                return Some(n as usize);
            }
            if n >= 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue; // a runt (nothing to deliver), or interrupted
            }
            return None; // EAGAIN: the tap is empty
        }
    }

    /// Copies `self.frame[..len]` into the next RX chain(s).
    fn deliver(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap, len: usize) -> Rx {
        // Take chains until their bytes hold the frame. A chain that is
        // broken, has a device-readable descriptor or one outside RAM, or
        // cannot hold the header (5.1.6.3.1) ends the search: the frame
        // is dropped and every chain taken goes back empty. Checking
        // first means a frame is never half-written.
        let mut chains: Vec<(u16, Vec<Descriptor>)> = Vec::new();
        let mut room = 0usize;
        let mut broken = false;
        while room < len && (self.mergeable || chains.is_empty()) {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                for _ in &chains {
                    queue.go_to_previous_position();
                }
                return Rx::NoBuffers;
            };
            let head = chain.head_index();
            let writable_ram = |d: &Descriptor| d.is_write_only() && mem.check_range(d.addr(), d.len() as usize);
            let descs = capvm_virtio::chain::whole(chain).filter(|d| d.iter().all(writable_ram));
            let bytes = descs.as_ref().map_or(0, |d| d.iter().map(|d| d.len() as usize).sum());
            match descs {
                Some(descs) if bytes >= HEADER_LEN => {
                    room += bytes;
                    chains.push((head, descs));
                }
                _ => {
                    chains.push((head, Vec::new()));
                    broken = true;
                    break;
                }
            }
        }
        self.frame[NUM_BUFFERS..HEADER_LEN].copy_from_slice(&(chains.len() as u16).to_le_bytes());
        let mut at = 0usize;
        let mut ok = !broken && room >= len;
        for (head, descs) in &chains {
            let mut written = 0u32;
            for d in descs {
                if !ok || at == len {
                    break;
                }
                let n = (d.len() as usize).min(len - at);
                if mem.write_slice(&self.frame[at..at + n], d.addr()).is_err() {
                    ok = false;
                    break;
                }
                at += n;
                written += n as u32;
            }
            let _ = queue.add_used(mem, *head, if ok { written } else { 0 });
        }
        if ok {
            Rx::Delivered
        } else {
            Rx::Dropped
        }
    }
}

impl Device for Net {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_NET
    }

    fn class(&self) -> [u8; 3] {
        // Network controller, Ethernet.
        [0x02, 0x00, 0x00]
    }

    fn features(&self) -> u64 {
        F_MAC | F_MTU | F_MRG_RXBUF | F_STATUS
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; capvm_virtio::layout::NET_QUEUES]
    }

    fn config(&self) -> Vec<u8> {
        self.config_bytes().to_vec()
    }

    fn activate(&mut self, features: u64) {
        self.active = true;
        self.mergeable = features & F_MRG_RXBUF != 0;
        self.rx_blocked = false;
    }

    fn reset(&mut self) {
        self.active = false;
        self.pending = None;
        self.rx_blocked = false;
    }

    fn process_queue(&mut self, index: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        match (index, queues) {
            // New RX buffers: deliver what waited for them.
            (RX, [rx, ..]) => {
                self.rx_blocked = false;
                self.receive(rx, mem)
            }
            (TX, [_, tx, ..]) => self.transmit(tx, mem),
            _ => false,
        }
    }
}

impl capvm_virtio::server::Backend for Net {
    fn backend_fd(&self) -> Option<BorrowedFd<'_>> {
        (self.active && !self.rx_blocked).then(|| self.tap.as_fd())
    }

    fn on_backend(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> Vec<usize> {
        let Some(rx) = queues.get_mut(RX) else { return Vec::new() };
        if !rx.ready() {
            // No RX queue yet: frames wait in the tap until its first notify.
            self.rx_blocked = true;
            return Vec::new();
        }
        if self.receive(rx, mem) {
            vec![RX]
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, FromRawFd};

    use capvm_virtio::server::Backend;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    use super::*;

    /// Where each queue's rings live, and where buffers start.
    const RINGS: [u64; 2] = [0x0, 0x8000];
    const BUF: u64 = 0x1_0000;

    /// A NIC on one end of a datagram socketpair (a tap hands over one
    /// frame a read, as a datagram does); the test holds the other end.
    struct Rig {
        /// Leaked: the driver's view of the queues borrows it for the test's life.
        mem: &'static GuestMemoryMmap,
        mocks: [MockSplitQueue<'static, GuestMemoryMmap>; 2],
        net: Net,
        peer: OwnedFd,
        queues: Vec<Queue>,
        next_desc: [u16; 2],
        stats: OwnedFd,
    }

    fn rig(mergeable: bool) -> Rig {
        let mut sv = [0i32; 2];
        // SAFETY: socketpair writes two fds into `sv`.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0, sv.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: both fds are new and ours alone.
        let (tap, peer) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
        let stats = capvm_ipc::stats::create().unwrap();
        let mut page = Stats::attach(stats.as_fd()).unwrap();
        let mut net = Net::new(tap, NetOptions { mac: [2, 0, 0, 0, 0, 1], mtu: 1500 }, &mut page);
        let mem: &'static GuestMemoryMmap =
            Box::leak(Box::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()));
        let mocks = RINGS.map(|at| MockSplitQueue::create(mem, GuestAddress(at), 16));
        let queues = mocks.iter().map(|m| m.create_queue().unwrap()).collect();
        net.activate(if mergeable { F_MRG_RXBUF } else { 0 });
        Rig { mem, mocks, net, peer, queues, next_desc: [0; 2], stats }
    }

    impl Rig {
        /// Offers a chain of (addr, len, device-writable) on queue `q`.
        fn offer(&mut self, q: usize, descs: &[(u64, u32, bool)]) {
            let first = self.next_desc[q];
            self.mocks[q].add_desc_chains(&capvm_virtio::test_utils::chain(first, descs), first).unwrap();
            self.next_desc[q] += descs.len() as u16;
        }

        /// The used ring of `q`: (head, len) of each returned chain.
        fn used(&self, q: usize) -> Vec<(u32, u32)> {
            let m = &self.mocks[q];
            (0..m.used().idx().load() as usize)
                .map(|i| m.used().ring().ref_at(i).unwrap().load())
                .map(|e| (e.id(), e.len()))
                .collect()
        }

        fn notify(&mut self, q: usize) -> bool {
            self.net.process_queue(q, &mut self.queues, self.mem)
        }

        fn counter(&self, name: &str) -> u64 {
            capvm_ipc::stats::read(&self.stats).unwrap().into_iter().find(|(n, _)| n == name).map_or(0, |(_, v)| v)
        }

        fn peer_send(&self, frame: &[u8]) {
            // SAFETY: sends from our own buffer.
            let n = unsafe { libc::send(self.peer.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            assert_eq!(n, frame.len() as isize);
        }

        fn peer_recv(&self) -> Option<Vec<u8>> {
            let mut buf = vec![0u8; 70000];
            // SAFETY: reads into our own buffer.
            let n = unsafe { libc::recv(self.peer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            (n >= 0).then(|| buf[..n as usize].to_vec())
        }
    }

    fn frame(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 + 1) as u8).collect()
    }

    #[test]
    fn net_tx_sends_the_frame_with_a_zeroed_header_from_split_buffers() {
        let mut r = rig(true);
        let f = frame(100);
        // The guest's header says "checksum this" (byte 0 = 1): it
        // negotiated no offload, so the host sees zeros.
        let mut hdr = [0u8; HEADER_LEN];
        hdr[0] = 1;
        r.mem.write_slice(&hdr, GuestAddress(BUF)).unwrap();
        r.mem.write_slice(&f[..40], GuestAddress(BUF + 0x100)).unwrap();
        r.mem.write_slice(&f[40..], GuestAddress(BUF + 0x200)).unwrap();
        r.offer(TX, &[(BUF, HEADER_LEN as u32, false), (BUF + 0x100, 40, false), (BUF + 0x200, 60, false)]);
        assert!(r.notify(TX));
        let got = r.peer_recv().expect("a frame on the tap");
        assert_eq!(&got[..HEADER_LEN], &[0u8; HEADER_LEN]);
        assert_eq!(&got[HEADER_LEN..], &f[..]);
        assert_eq!(r.used(TX), [(0, 0)]);
        assert_eq!((r.counter("tx_frames"), r.counter("tx_bytes")), (1, 100));
    }

    #[test]
    fn net_tx_refuses_hostile_chains_and_returns_each() {
        let mut r = rig(true);
        r.offer(TX, &[(BUF, 12, false), (BUF + 0x100, 60, true)]); // a writable descriptor
        r.offer(TX, &[(BUF, 12 + 13, false)]); // shorter than an Ethernet header
        r.offer(TX, &[(BUF, 12, false), (1 << 40, 60, false)]); // outside RAM
        r.offer(TX, &[(BUF, 12, false), (BUF, 0x1_0000, false), (BUF, 0x1_0000, false)]); // over 64 KiB
        assert!(r.notify(TX));
        assert_eq!(r.used(TX).len(), 4, "every chain comes back");
        assert!(r.peer_recv().is_none(), "nothing reached the tap");
        assert_eq!((r.counter("tx_errors"), r.counter("tx_errors_bad_framing")), (4, 3));
        assert_eq!(r.counter("tx_errors_too_long"), 1);
    }

    #[test]
    fn net_rx_delivers_a_frame_whole_or_across_mergeable_buffers() {
        let mut r = rig(true);
        let mut small = vec![0u8; HEADER_LEN];
        small.extend(frame(60));
        r.peer_send(&small);
        r.offer(RX, &[(BUF, 2048, true)]);
        assert!(r.net.on_backend(&mut r.queues, r.mem) == vec![RX]);
        assert_eq!(r.used(RX), [(0, 72)]);
        let mut got = vec![0u8; 72];
        r.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
        assert_eq!(u16::from_le_bytes([got[NUM_BUFFERS], got[NUM_BUFFERS + 1]]), 1);
        assert_eq!(&got[HEADER_LEN..], &small[HEADER_LEN..]);

        // 3000 bytes over two 2048-byte buffers: num_buffers says 2.
        let mut big = vec![0u8; HEADER_LEN];
        big.extend(frame(3000 - HEADER_LEN));
        r.peer_send(&big);
        r.offer(RX, &[(BUF + 0x1000, 2048, true)]);
        r.offer(RX, &[(BUF + 0x2000, 2048, true)]);
        assert_eq!(r.net.on_backend(&mut r.queues, r.mem), vec![RX]);
        assert_eq!(&r.used(RX)[1..], [(1, 2048), (2, 3000 - 2048)]);
        let mut got = vec![0u8; 3000];
        r.mem.read_slice(&mut got[..2048], GuestAddress(BUF + 0x1000)).unwrap();
        r.mem.read_slice(&mut got[2048..], GuestAddress(BUF + 0x2000)).unwrap();
        assert_eq!(u16::from_le_bytes([got[NUM_BUFFERS], got[NUM_BUFFERS + 1]]), 2);
        assert_eq!(&got[HEADER_LEN..], &big[HEADER_LEN..]);
        assert_eq!((r.counter("rx_frames"), r.counter("rx_bytes")), (2, 60 + 3000 - HEADER_LEN as u64));
    }

    #[test]
    fn net_rx_waits_for_buffers_then_delivers_and_drops_into_bad_ones() {
        let mut r = rig(true);
        let mut f = vec![0u8; HEADER_LEN];
        f.extend(frame(60));
        r.peer_send(&f);
        // No buffer yet: the frame waits and the tap is not polled.
        assert!(r.net.on_backend(&mut r.queues, r.mem).is_empty());
        assert!(r.net.backend_fd().is_none(), "the tap rests while RX is dry");
        r.offer(RX, &[(BUF, 2048, true)]);
        assert!(r.notify(RX), "the notify delivers what waited");
        assert_eq!(r.used(RX), [(0, 72)]);
        assert!(r.net.backend_fd().is_some());

        // A device-readable buffer, then one too small for the header:
        // each frame is dropped, each chain returned empty.
        r.peer_send(&f);
        r.offer(RX, &[(BUF, 2048, false)]);
        r.peer_send(&f);
        r.offer(RX, &[(BUF, 4, true)]);
        r.net.on_backend(&mut r.queues, r.mem);
        assert_eq!(&r.used(RX)[1..], [(1, 0), (2, 0)]);
        assert_eq!((r.counter("rx_frames"), r.counter("rx_dropped")), (1, 2));
    }

    #[test]
    fn net_without_mergeable_buffers_never_splits_a_frame() {
        let mut r = rig(false);
        let mut big = vec![0u8; HEADER_LEN];
        big.extend(frame(3000));
        r.peer_send(&big);
        r.offer(RX, &[(BUF, 2048, true)]);
        r.offer(RX, &[(BUF + 0x1000, 2048, true)]);
        r.net.on_backend(&mut r.queues, r.mem);
        assert_eq!(r.used(RX)[0], (0, 0), "one chain that cannot hold it: dropped");
        assert_eq!(r.counter("rx_dropped"), 1);
    }
}
