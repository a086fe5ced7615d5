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

use capvm_ipc::stats::{Counter, Stats};
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
            let sent = capvm_virtio::chain::whole(chain).ok_or(()).and_then(|descs| self.write_frame(mem, &descs));
            match sent {
                Ok(n) => {
                    self.stats.tx_frames.inc();
                    self.stats.tx_bytes.add(n as u64);
                }
                Err(()) => self.stats.tx_errors.inc(),
            }
            // TX buffers are only read: the used length is 0.
            if queue.add_used(mem, head, 0).is_ok() {
                used = true;
            }
        }
        used
    }

    /// Writes one TX chain (header + frame, all device-readable) to the tap.
    fn write_frame(&self, mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Result<usize, ()> {
        if descs.iter().any(|d| d.is_write_only()) {
            return Err(());
        }
        let total: u64 = descs.iter().map(|d| d.len() as u64).sum();
        if total < (HEADER_LEN + 14) as u64 || total > (HEADER_LEN + MAX_FRAME) as u64 {
            return Err(());
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
            let addr = d.addr().checked_add(skip).ok_or(())?;
            // One region only: a buffer across the PCI hole is refused.
            slices.push(mem.get_slice(addr, (len - skip) as usize).map_err(|_| ())?);
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
            return Err(());
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
