//! virtio-net commands. `net`: send one frame, then print the first frame
//! that arrives with our EtherType, in hex, and power off. The host test
//! compares both with the bytes it expects (tests/tests/virtio_net.rs).
//! `net-fuzz`: hostile chains both ways first (see `fuzz`).
//! `net-bench tx|rx SIZE COUNT`: the packet-rate benchmark (bench/vs-qemu).

use core::ptr::{addr_of_mut, read_volatile, write_volatile};

use crate::io::{halt, poweroff, print, print_dec};
use crate::virtio::{self, Desc, Device, DESC_INDIRECT, DESC_NEXT, DESC_WRITE, OUTSIDE_RAM, QSIZE};

const F_MAC: u64 = 1 << 5;
const F_MRG_RXBUF: u64 = 1 << 15;
const RXQ: usize = 0;
const TXQ: usize = 1;
/// virtio 1.x's virtio_net_hdr; num_buffers at 10.
const HDR: usize = 12;
const RX_BUFS: usize = 8;
/// Small on purpose: a 1000-byte frame needs two (mergeable RX buffers).
const RX_BUF_LEN: usize = 512;
/// IEEE's local experimental EtherType: nothing else on the tap uses it.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const TX_PAYLOAD: usize = 100;
const TX_LEN: usize = HDR + 14 + TX_PAYLOAD;

#[repr(C, align(4096))]
struct Buffers([[u8; RX_BUF_LEN]; RX_BUFS]);
static mut RX: Buffers = Buffers([[0; RX_BUF_LEN]; RX_BUFS]);
static mut TX: [u8; TX_LEN] = [0; TX_LEN];
const FRAME_LEN: usize = RX_BUF_LEN * RX_BUFS;
static mut FRAME: [u8; FRAME_LEN] = [0; FRAME_LEN];

fn rx_byte(buf: usize, i: usize) -> u8 {
    // SAFETY: our static buffers, after the device returned them.
    unsafe { read_volatile(addr_of_mut!(RX.0[buf % RX_BUFS][i % RX_BUF_LEN])) }
}

fn post(dev: &mut Device, buf: u16) {
    // SAFETY: taking the address of our static buffer.
    let addr = unsafe { addr_of_mut!(RX.0[buf as usize]) } as u64;
    dev.set_desc(RXQ, buf, Desc { addr, len: RX_BUF_LEN as u32, flags: DESC_WRITE, next: 0 });
    dev.offer(RXQ, buf);
}

fn print_hex_bytes(bytes: impl Iterator<Item = u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        print(&[DIGITS[(b >> 4) as usize], DIGITS[(b & 15) as usize]]);
    }
}

/// The NIC on bus 0, brought up with RX and TX queues, `wanted` features
/// and mergeable RX buffers (which both commands rely on).
fn open(wanted: u64) -> Device {
    let Some(slot) = virtio::find(0x1af4, 0x1041) else {
        print(b"net: no virtio-net function on bus 0\n");
        halt()
    };
    let mut dev = Device::probe(slot, true);
    if !dev.init(wanted | F_MRG_RXBUF, 2) || dev.features & F_MRG_RXBUF == 0 {
        print(b"net: device refused our features\n");
        halt()
    }
    dev
}

/// The device's MAC, from its configuration.
fn mac(dev: &Device) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = dev.config8(i as u64);
    }
    mac
}

/// Writes the test's frame to the TX buffer: the virtio-net header, then
/// broadcast from `mac`, our EtherType, and payload bytes 3i+first.
fn fill_tx(mac: [u8; 6], first: u8) -> u64 {
    let tx = addr_of_mut!(TX) as *mut u8;
    for i in 0..TX_LEN {
        let b = match i {
            _ if i < HDR => 0,
            _ if i < HDR + 6 => 0xff,
            _ if i < HDR + 12 => mac[i - HDR - 6],
            _ if i < HDR + 14 => ETHERTYPE[i - HDR - 12],
            _ => ((i - HDR - 14) * 3) as u8 + first,
        };
        // SAFETY: i < TX_LEN, our static TX buffer, not in flight.
        unsafe { write_volatile(tx.add(i), b) };
    }
    tx as u64
}

/// Posts the RX buffers and sends the test's frame.
fn post_all_and_send(dev: &mut Device, mac: [u8; 6]) {
    for b in 0..RX_BUFS as u16 {
        post(dev, b);
    }
    dev.kick(RXQ);
    let tx = fill_tx(mac, 1);
    dev.set_desc(TXQ, 0, Desc { addr: tx, len: TX_LEN as u32, flags: 0, next: 0 });
    dev.submit(TXQ, 0, true);
    print(b"net: sent ");
    print_dec((TX_LEN - HDR) as u64);
    print(b" bytes\n");
}

/// Waits for the first frame with our EtherType, re-posting every buffer
/// the device returns, and prints it in hex. Returns how many chains came
/// back empty (dropped frames) on the way.
fn receive_ours(dev: &mut Device) -> u64 {
    let mut seen: u16 = 0;
    let mut empty = 0;
    loop {
        dev.wait_used(RXQ, seen.wrapping_add(1));
        let (head, used) = dev.used_at(RXQ, seen);
        if used == 0 {
            // A dropped frame: the chain comes back empty.
            seen = seen.wrapping_add(1);
            empty += 1;
            if (head as usize) < RX_BUFS {
                post(dev, head as u16);
                dev.kick(RXQ);
            }
            continue;
        }
        let buffers = u16::from_le_bytes([rx_byte(head as usize, 10), rx_byte(head as usize, 11)]).max(1);
        dev.wait_used(RXQ, seen.wrapping_add(buffers));
        let mut len = 0usize;
        for k in 0..buffers {
            let (head, used) = dev.used_at(RXQ, seen.wrapping_add(k));
            let skip = if k == 0 { HDR } else { 0 };
            for i in skip..(used as usize).min(RX_BUF_LEN) {
                // SAFETY: our static frame buffer, large enough for all buffers.
                unsafe { write_volatile(addr_of_mut!(FRAME[len % FRAME_LEN]), rx_byte(head as usize, i)) };
                len += 1;
            }
            post(dev, head as u16);
        }
        seen = seen.wrapping_add(buffers);
        dev.kick(RXQ);
        // SAFETY: as above.
        let frame = |i: usize| unsafe { read_volatile(addr_of_mut!(FRAME[i % FRAME_LEN])) };
        if len < 14 || [frame(12), frame(13)] != ETHERTYPE {
            continue; // not the test's frame
        }
        print(b"net: received ");
        print_dec(len as u64);
        print(b" bytes in ");
        print_dec(buffers as u64);
        print(b" buffers: ");
        print_hex_bytes((0..len).map(frame));
        print(b"\n");
        return empty;
    }
}

pub fn run() -> ! {
    virtio::enable_interrupts();
    let mut dev = open(F_MAC);
    let mac = mac(&dev);
    print(b"net: mac ");
    print_hex_bytes(mac.iter().copied());
    print(b"\n");
    post_all_and_send(&mut dev, mac);
    receive_ours(&mut dev);
    poweroff()
}

/// `net-fuzz`: hostile and random TX chains, then hostile RX chains ahead
/// of good buffers. The device must return every chain, send nothing of
/// a hostile one (those carry payload 3i+0xe0, which the host would see
/// before the good frame), drop a frame rather than fill a hostile RX
/// chain, and then move one frame each way exactly as `net` does.
pub fn fuzz() -> ! {
    virtio::enable_interrupts();
    let mut dev = open(F_MAC);
    let mac = mac(&dev);
    let d = |addr, len, flags, next| Desc { addr, len, flags, next };
    let tx = fill_tx(mac, 0xe0);
    let len = TX_LEN as u32;
    let hdr = HDR as u64;
    let tx_cases: [&[Desc]; 7] = [
        &[d(tx, len, DESC_WRITE, 0)],
        &[d(tx, HDR as u32 + 10, 0, 0)],
        &[d(tx, HDR as u32 + 70_000, 0, 0)],
        &[d(OUTSIDE_RAM, len, 0, 0)],
        &[d(tx, HDR as u32, DESC_NEXT, 1), d(tx + hdr, len - HDR as u32, DESC_NEXT, 0)],
        &[d(tx, 15, DESC_INDIRECT, 0)],
        &[d(tx, HDR as u32, DESC_NEXT, 1), d(tx + hdr, len - HDR as u32, DESC_WRITE, 0)],
    ];
    let before = dev.used_idx(TXQ);
    for descs in tx_cases {
        for (i, desc) in descs.iter().enumerate() {
            dev.set_desc(TXQ, i as u16, *desc);
        }
        dev.submit(TXQ, 0, true);
    }
    let returned = dev.used_idx(TXQ).wrapping_sub(before) as u64;
    // A head past the table: the device cannot return it.
    dev.submit(TXQ, QSIZE + 100, false);
    dev.forget_one(TXQ);
    let random = dev.submit_random_chains(TXQ, 0x0dd_ba11_5eed, 64);
    print(b"net-fuzz: ");
    print_dec(returned);
    print(b" of 7 hostile TX chains returned, ");
    print_dec(random);
    print(b" random TX chains returned\n");

    // RX: hostile chains (descriptors from RX_BUFS up) go first, so each
    // of the host's first frames meets one.
    let spare = tx;
    let first = RX_BUFS as u16;
    let rx_cases: [Desc; 6] = [
        d(spare, 512, 0, 0),
        d(OUTSIDE_RAM, 512, DESC_WRITE, 0),
        d(spare, 512, DESC_WRITE | DESC_NEXT, 0), // next: itself (fixed below)
        d(spare, 15, DESC_INDIRECT, 0),
        d(spare, 4, DESC_WRITE, 0),
        d(spare, 512, DESC_WRITE | DESC_NEXT, QSIZE + 100),
    ];
    for (i, c) in rx_cases.iter().enumerate() {
        let at = first + i as u16;
        let c = if c.flags == DESC_WRITE | DESC_NEXT && c.next == 0 { Desc { next: at, ..*c } } else { *c };
        dev.set_desc(RXQ, at, c);
        dev.offer(RXQ, at);
    }
    post_all_and_send(&mut dev, mac);
    let empty = receive_ours(&mut dev);
    print(b"net-fuzz: ");
    print_dec(empty);
    print(b" RX chains returned empty (6 were hostile)\n");
    poweroff()
}

/// Where the benchmark's frames live (64 MiB up; one 2 KiB buffer per
/// descriptor).
const BENCH_BUFFERS: u64 = 0x400_0000;
const BENCH_BUF_LEN: u64 = 2048;
/// Frames in flight on either queue.
const BENCH_DEPTH: u16 = 32;

struct Bench {
    dev: core::mem::MaybeUninit<Device>,
    tx: bool,
    count: u64,
}
static mut BENCH: Bench = Bench { dev: core::mem::MaybeUninit::uninit(), tx: false, count: 0 };

/// `net-bench tx|rx SIZE COUNT`: sends COUNT frames of SIZE bytes (our
/// EtherType, to a unicast MAC nobody has), or receives COUNT frames, with
/// 32 buffers in flight, from user mode, polling the used rings. Prints
/// `bench: go` (rx: at the first frame) and `bench: end`, then resets.
pub fn bench(tx: bool, size: u64, count: u64) -> ! {
    if !(60..=1514).contains(&size) {
        print(b"net-bench: SIZE must be 60-1514\n");
        halt()
    }
    let mut dev = open(0);
    for k in 0..BENCH_DEPTH as u64 {
        let buf = BENCH_BUFFERS + k * BENCH_BUF_LEN;
        if tx {
            // The virtio-net header (all zero: no offloads), then the frame:
            // to 02::01 from 02::02, our EtherType, zeros.
            let head = [0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, ETHERTYPE[0], ETHERTYPE[1]];
            for i in 0..HDR as u64 + size {
                let byte = i.checked_sub(HDR as u64).and_then(|j| head.get(j as usize)).copied().unwrap_or(0);
                // SAFETY: guest RAM set aside for the benchmark.
                unsafe { write_volatile((buf + i) as *mut u8, byte) };
            }
            dev.set_desc(TXQ, k as u16, Desc { addr: buf, len: (HDR as u64 + size) as u32, flags: 0, next: 0 });
        } else {
            dev.set_desc(RXQ, k as u16, Desc { addr: buf, len: BENCH_BUF_LEN as u32, flags: DESC_WRITE, next: 0 });
        }
    }
    // SAFETY: set once at CPL0, read by the user-mode loop only.
    unsafe { BENCH = Bench { dev: core::mem::MaybeUninit::new(dev), tx, count } };
    crate::user::enter(bench_loop)
}

extern "C" fn bench_loop() -> ! {
    // SAFETY: initialised by `bench` before entering user mode.
    let b = unsafe { &mut *addr_of_mut!(BENCH) };
    // SAFETY: as above.
    let dev = unsafe { b.dev.assume_init_mut() };
    let q = if b.tx { TXQ } else { RXQ };
    let mut offered = 0u64;
    for k in 0..BENCH_DEPTH.min(b.count as u16) {
        dev.offer(q, k);
        offered += 1;
    }
    if b.tx {
        print(b"bench: go\n");
    }
    dev.kick(q);
    let (mut done, mut used_pos) = (0u64, 0u16);
    while done < b.count {
        let mut more = false;
        while dev.used_idx(q) != used_pos {
            if done == 0 && !b.tx {
                print(b"bench: go\n");
            }
            let (head, _) = dev.used_at(q, used_pos);
            used_pos = used_pos.wrapping_add(1);
            done += 1;
            // RX buffers go back at once (the count of frames received is
            // what matters); TX chains only while frames remain to send.
            if !b.tx || offered < b.count {
                dev.offer(q, head as u16);
                offered += 1;
                more = true;
            }
        }
        if more {
            dev.kick(q);
        }
    }
    print(b"bench: end\n");
    crate::io::reset_cf9()
}
