//! virtio-net command `net`: send one frame, then print the first frame
//! that arrives with our EtherType, in hex, and power off. The host test
//! compares both with the bytes it expects (tests/tests/virtio_net.rs).

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

pub fn run() -> ! {
    let Some(slot) = virtio::find(0x1af4, 0x1041) else {
        print(b"net: no virtio-net function on bus 0\n");
        halt()
    };
    virtio::enable_interrupts();
    let mut dev = Device::probe(slot);
    if !dev.init(F_MAC | F_MRG_RXBUF, 2) || dev.features & F_MRG_RXBUF == 0 {
        print(b"net: device refused our features\n");
        halt()
    }
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
