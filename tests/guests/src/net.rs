//! virtio-net commands. `net`: send one frame, then print the first frame
//! that arrives with our EtherType, in hex, and power off. The host test
//! compares both with the bytes it expects (tests/tests/virtio_net.rs).
//! `net-bench tx|rx SIZE COUNT`: the packet-rate benchmark (bench/vs-qemu).

use core::ptr::{addr_of_mut, read_volatile, write_volatile};

use crate::io::{halt, poweroff, print, print_dec};
use crate::virtio::{self, Desc, Device, DESC_WRITE};

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
    let mut dev = Device::probe(slot);
    if !dev.init(wanted | F_MRG_RXBUF, 2) || dev.features & F_MRG_RXBUF == 0 {
        print(b"net: device refused our features\n");
        halt()
    }
    dev
}

pub fn run() -> ! {
    virtio::enable_interrupts();
    let mut dev = open(F_MAC);
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        *b = dev.config8(i as u64);
    }
    print(b"net: mac ");
    print_hex_bytes(mac.iter().copied());
    print(b"\n");

    for b in 0..RX_BUFS as u16 {
        post(&mut dev, b);
    }
    dev.kick(RXQ);

    // Broadcast from our MAC, then payload bytes 3i+1.
    // SAFETY: our static TX buffer, read by the device only while we wait.
    unsafe {
        let tx = addr_of_mut!(TX) as *mut u8;
        for i in 0..TX_LEN {
            let b = match i {
                _ if i < HDR => 0,
                _ if i < HDR + 6 => 0xff,
                _ if i < HDR + 12 => mac[i - HDR - 6],
                _ if i < HDR + 14 => ETHERTYPE[i - HDR - 12],
                _ => ((i - HDR - 14) * 3 + 1) as u8,
            };
            write_volatile(tx.add(i), b);
        }
        let addr = tx as u64;
        dev.set_desc(TXQ, 0, Desc { addr, len: TX_LEN as u32, flags: 0, next: 0 });
    }
    dev.submit(TXQ, 0, true);
    print(b"net: sent ");
    print_dec((TX_LEN - HDR) as u64);
    print(b" bytes\n");

    let mut seen: u16 = 0;
    loop {
        dev.wait_used(RXQ, seen.wrapping_add(1));
        let (head, _) = dev.used_at(RXQ, seen);
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
            post(&mut dev, head as u16);
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
        poweroff()
    }
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
