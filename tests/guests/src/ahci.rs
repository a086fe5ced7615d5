//! `ahci`: a small AHCI driver of our own, run against the first AHCI
//! function on bus 0: IDENTIFY, a pattern written through a multi-entry
//! PRDT and read back through another, NCQ with four commands in flight,
//! ATAPI reads of a CD (its ISO 9660 volume descriptor), a write to the
//! CD refused with the right sense, hostile commands each refused with
//! the port still working after them, all with MSI interrupts. Each step
//! prints one line the host test checks; then the guest idles so that the
//! test can read the server's counters.

use core::ptr::{addr_of_mut, read_volatile, write_volatile};

use crate::io::{halt, idle, print, print_dec, print_hex};
use crate::virtio::{self, cfg_read32, cfg_write32, mmio_r, mmio_w, OUTSIDE_RAM};

/// The LBA the pattern goes to; the host test reads it back there.
pub const PATTERN_LBA: u64 = 100;
const PATTERN_LEN: usize = 4096;

const PX_CLB: u64 = 0x00;
const PX_FB: u64 = 0x08;
const PX_IS: u64 = 0x10;
const PX_IE: u64 = 0x14;
const PX_CMD: u64 = 0x18;
const PX_TFD: u64 = 0x20;
const PX_SIG: u64 = 0x24;
const PX_SERR: u64 = 0x30;
const PX_SACT: u64 = 0x34;
const PX_CI: u64 = 0x38;
const IS_TFES: u32 = 1 << 30;

#[repr(C, align(1024))]
struct CommandList([u32; 8 * 32]);
#[repr(C, align(256))]
struct Received([u8; 256]);
/// A command table: FIS, packet, then 8 PRDT entries.
#[repr(C, align(128))]
#[derive(Clone, Copy)]
struct Table([u8; 0x80 + 16 * 8]);
#[repr(C, align(4096))]
struct Page([u8; PATTERN_LEN]);

static mut LISTS: [CommandList; 2] = [CommandList([0; 256]), CommandList([0; 256])];
static mut RECEIVED: [Received; 2] = [Received([0; 256]), Received([0; 256])];
static mut TABLES: [[Table; 32]; 2] = [[Table([0; 0x100]); 32]; 2];
static mut DATA: Page = Page([0; PATTERN_LEN]);
static mut BACK: Page = Page([0; PATTERN_LEN]);
static mut NCQ: [Page; 4] =
    [Page([0; PATTERN_LEN]), Page([0; PATTERN_LEN]), Page([0; PATTERN_LEN]), Page([0; PATTERN_LEN])];

/// Port `area`'s command list.
fn list(area: usize) -> u64 {
    addr_of_mut!(LISTS) as u64 + 1024 * area as u64
}

/// The NCQ test's `s`th buffer.
fn ncq(s: usize) -> *mut Page {
    (addr_of_mut!(NCQ) as u64 + (PATTERN_LEN * s) as u64) as *mut Page
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7) + 3) as u8 ^ (i >> 8) as u8
}

struct Port {
    base: u64,
    /// Which of our two command lists it uses.
    area: usize,
}

impl Port {
    fn r(&self, reg: u64) -> u32 {
        // SAFETY: a register of our HBA's port.
        unsafe { mmio_r::<u32>(self.base + reg) }
    }

    fn w(&self, reg: u64, v: u32) {
        // SAFETY: as r.
        unsafe { mmio_w::<u32>(self.base + reg, v) }
    }

    /// Stops the port, points it at our structures, clears its errors and
    /// starts it again (what a driver's error handling does too).
    fn restart(&self) {
        self.w(PX_CMD, self.r(PX_CMD) & !0x11);
        while self.r(PX_CMD) & (1 << 15 | 1 << 14) != 0 {}
        self.w(PX_CLB, list(self.area) as u32);
        self.w(PX_CLB + 4, 0);
        self.w(PX_FB, (addr_of_mut!(RECEIVED) as u64 + 256 * self.area as u64) as u32);
        self.w(PX_FB + 4, 0);
        self.w(PX_SERR, u32::MAX);
        self.w(PX_IS, u32::MAX);
        // Interrupts for D2H, PIO setup, Set Device Bits and task file errors.
        self.w(PX_IE, 1 | 2 | 8 | IS_TFES);
        self.w(PX_CMD, self.r(PX_CMD) | 0x10);
        self.w(PX_CMD, self.r(PX_CMD) | 0x01);
    }

    /// Fills `slot`'s header and table. `prdt`: (address, bytes).
    fn prepare(&self, slot: usize, fis: [u8; 20], packet: Option<[u8; 12]>, prdt: &[(u64, u32)], write: bool) {
        // SAFETY: our own statics; the HBA reads them only after PxCI.
        unsafe {
            let t = (addr_of_mut!(TABLES) as u64 + (32 * self.area + slot) as u64 * 0x100) as *mut Table;
            let b = t as *mut u8;
            for i in 0..0x100 {
                write_volatile(b.add(i), 0);
            }
            for (i, x) in fis.iter().enumerate() {
                write_volatile(b.add(i), *x);
            }
            if let Some(p) = packet {
                for (i, x) in p.iter().enumerate() {
                    write_volatile(b.add(0x40 + i), *x);
                }
            }
            for (i, &(a, n)) in prdt.iter().enumerate() {
                let e = b.add(0x80 + 16 * i) as *mut u32;
                write_volatile(e, a as u32);
                write_volatile(e.add(1), (a >> 32) as u32);
                write_volatile(e.add(3), n - 1);
            }
            let dw0 = 5 | (packet.is_some() as u32) << 5 | (write as u32) << 6 | (prdt.len() as u32) << 16;
            let h = list(self.area) as *mut u32;
            write_volatile(h.add(8 * slot), dw0);
            write_volatile(h.add(8 * slot + 1), 0);
            write_volatile(h.add(8 * slot + 2), t as u32);
            write_volatile(h.add(8 * slot + 3), 0);
        }
    }

    /// Issues the prepared slots in `mask` and sleeps until they finish or
    /// the port reports an error. Returns whether all went well.
    fn run(&self, mask: u32, ncq: bool) -> bool {
        if ncq {
            self.w(PX_SACT, mask);
        }
        self.w(PX_CI, mask);
        loop {
            let busy = self.r(PX_CI) & mask != 0 || ncq && self.r(PX_SACT) & mask != 0;
            if self.r(PX_IS) & IS_TFES != 0 {
                self.w(PX_IS, u32::MAX);
                return false;
            }
            if !busy {
                self.w(PX_IS, u32::MAX);
                return true;
            }
            // SAFETY: waits for the port's MSI (interrupts off around the check).
            unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) }
        }
    }

    /// One command in slot 0.
    fn command(&self, fis: [u8; 20], packet: Option<[u8; 12]>, prdt: &[(u64, u32)], write: bool) -> bool {
        self.prepare(0, fis, packet, prdt, write);
        let ok = self.run(1, false);
        if !ok {
            self.restart();
        }
        ok
    }
}

/// A Register - Host to Device FIS.
fn fis(command: u8, features: u16, lba: u64, count: u16) -> [u8; 20] {
    let l = lba.to_le_bytes();
    let (f, c) = (features.to_le_bytes(), count.to_le_bytes());
    [0x27, 0x80, command, f[0], l[0], l[1], l[2], 0x40, l[3], l[4], l[5], f[1], c[0], c[1], 0, 0, 0, 0, 0, 0]
}

/// Byte `i` of a buffer the HBA wrote.
fn byte(p: *mut Page, i: usize) -> u8 {
    // SAFETY: our static, written by the HBA before the command completed.
    unsafe { read_volatile((p as *const u8).add(i)) }
}

fn word(p: *mut Page, i: usize) -> u16 {
    u16::from_le_bytes([byte(p, 2 * i), byte(p, 2 * i + 1)])
}

fn page(p: *mut Page) -> u64 {
    p as u64
}

pub fn run() -> ! {
    let Some(slot) = (0..32u8).find(|&s| cfg_read32(s, 0x08) >> 8 == 0x01_0601) else {
        print(b"ahci: no AHCI function on bus 0\n");
        halt()
    };
    virtio::enable_interrupts();
    // Memory decoding and bus mastering; MSI to vector 0x40 of CPU 0.
    cfg_write32(slot, 0x04, (cfg_read32(slot, 0x04) & 0xffff) | 0x6);
    let msi = (cfg_read32(slot, 0x34) & 0xff) as u8;
    cfg_write32(slot, msi + 4, 0xfee0_0000);
    cfg_write32(slot, msi + 8, 0);
    cfg_write32(slot, msi + 12, virtio::VECTOR_QUEUE as u32);
    cfg_write32(slot, msi, cfg_read32(slot, msi) | 1 << 16);
    let abar = (cfg_read32(slot, 0x24) & !0xf) as u64;
    // SAFETY: the HBA's generic host control registers.
    let (cap, pi, vs) = unsafe {
        mmio_w::<u32>(abar + 4, 1 << 31 | 1);
        while mmio_r::<u32>(abar + 4) & 1 != 0 {}
        mmio_w::<u32>(abar + 4, 1 << 31 | 1 << 1);
        (mmio_r::<u32>(abar), mmio_r::<u32>(abar + 0xc), mmio_r::<u32>(abar + 0x10))
    };
    print(b"ahci: controller ports=");
    print_dec(pi.count_ones() as u64);
    print(b" version=");
    print_hex(vs as u64);
    print(b" ncq=");
    print_dec((cap >> 30 & 1) as u64);
    print(b"\n");
    let mut hostile_port = None;
    for n in 0..pi.count_ones().min(2) as u64 {
        let port = Port { base: abar + 0x100 + 0x80 * n, area: n as usize };
        port.restart();
        let sig = port.r(PX_SIG);
        print(b"ahci: port ");
        print_dec(n);
        print(b" sig=");
        print_hex(sig as u64);
        if sig == 0xeb14_0101 {
            cd(&port);
        } else {
            disk(&port);
            hostile_port = Some(port);
        }
    }
    if let Some(port) = hostile_port {
        hostile(&port);
    }
    print(b"ahci: msi interrupts ");
    print_dec(virtio::irqs());
    print(b"\nahci: done\n");
    // Stay up: the host test reads the server's counters.
    idle()
}

fn disk(port: &Port) {
    let back = addr_of_mut!(BACK);
    if !port.command(fis(0xec, 0, 0, 0), None, &[(page(back), 512)], false) {
        print(b" IDENTIFY failed\n");
        return;
    }
    let sectors = (0..4).fold(0u64, |a, i| a | (word(back, 100 + i) as u64) << (16 * i));
    print(b" model=");
    for i in 27..47 {
        let w = word(back, i).to_be_bytes();
        print(&w);
    }
    print(b" sectors=");
    print_dec(sectors);
    print(b" trim=");
    print_dec(word(back, 169) as u64 & 1);
    print(b"\n");

    // The pattern, written from three PRDT entries and read back into two.
    let data = addr_of_mut!(DATA);
    for i in 0..PATTERN_LEN {
        // SAFETY: our static.
        unsafe { write_volatile((data as *mut u8).add(i), pattern(i)) };
    }
    let sectors_n = (PATTERN_LEN / 512) as u16;
    let w = port.command(
        fis(0x35, 0, PATTERN_LBA, sectors_n),
        None,
        &[(page(data), 512), (page(data) + 512, 1536), (page(data) + 2048, 2048)],
        true,
    );
    let r = port.command(
        fis(0x25, 0, PATTERN_LBA, sectors_n),
        None,
        &[(page(back), 1024), (page(back) + 1024, 3072)],
        false,
    );
    let same = (0..PATTERN_LEN).all(|i| byte(back, i) == pattern(i));
    print(if w && r && same { b"ahci: rw ok\n" as &[u8] } else { b"ahci: rw FAILED\n" });

    // NCQ: four reads in flight, each of one 512-byte sector of the pattern.
    for s in 0..4 {
        let buf = ncq(s);
        let mut f = fis(0x60, 1, PATTERN_LBA + s as u64, (s as u16) << 3);
        f[7] = 0x40;
        port.prepare(s, f, None, &[(page(buf), 512)], false);
    }
    let ok = port.run(0xf, true);
    let right = (0..4).all(|s| (0..512).all(|i| byte(ncq(s), i) == pattern(512 * s + i)));
    print(if ok && right { b"ahci: ncq 4 slots ok\n" as &[u8] } else { b"ahci: ncq FAILED\n" });
}

/// A 12-byte ATAPI packet with `op`, an LBA and a transfer length.
fn packet(op: u8, lba: u32, len: u16, alloc: u16) -> [u8; 12] {
    let l = lba.to_be_bytes();
    let n = len.to_be_bytes();
    let a = alloc.to_be_bytes();
    match op {
        0x03 => [op, 0, 0, 0, a[1], 0, 0, 0, 0, 0, 0, 0],
        0x25 => [op, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        _ => [op, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0, 0, 0],
    }
}

fn cd(port: &Port) {
    let back = addr_of_mut!(BACK);
    let ok = port.command(fis(0xa1, 0, 0, 0), None, &[(page(back), 512)], false);
    print(b" identify-packet=");
    print_hex(if ok { word(back, 0) as u64 } else { 0 });
    // READ CAPACITY, then READ(10) of block 16: ISO 9660's primary volume
    // descriptor ("\x01CD001").
    let atapi = fis(0xa0, 1, 0xfffe << 8, 0);
    let ok = port.command(atapi, Some(packet(0x25, 0, 0, 0)), &[(page(back), 8)], false);
    let blocks = u32::from_be_bytes([byte(back, 0), byte(back, 1), byte(back, 2), byte(back, 3)]) as u64 + 1;
    print(b" blocks=");
    print_dec(if ok { blocks } else { 0 });
    let ok = port.command(atapi, Some(packet(0x28, 16, 1, 0)), &[(page(back), 2048)], false);
    print(b" pvd=");
    if ok {
        for i in 1..6 {
            print(&[byte(back, i)]);
        }
    } else {
        print(b"FAILED");
    }
    print(b"\n");
    // A write to the CD: CHECK CONDITION, then REQUEST SENSE says why.
    let data = addr_of_mut!(DATA);
    let refused = !port.command(atapi, Some(packet(0x2a, 16, 1, 0)), &[(page(data), 2048)], true);
    port.command(atapi, Some(packet(0x03, 0, 0, 18)), &[(page(back), 18)], false);
    print(b"ahci: cd write ");
    print(if refused { b"refused" as &[u8] } else { b"ACCEPTED" });
    print(b" sense=");
    print_hex(byte(back, 2) as u64 & 0xf);
    print(b"/");
    print_hex(byte(back, 12) as u64);
    print(b"\n");
}

/// Hostile commands: each must fail with a task-file error, and the port
/// must work after them.
fn hostile(port: &Port) {
    let back = addr_of_mut!(BACK);
    let read = fis(0x25, 0, 0, 1);
    let mut refused = 0;
    let mut tried = 0;
    let mut expect_refused = |ok: bool| {
        tried += 1;
        refused += !ok as u64;
    };
    // Data buffer outside RAM.
    expect_refused(port.command(read, None, &[(OUTSIDE_RAM, 512)], false));
    // PRDT too short for the transfer.
    expect_refused(port.command(fis(0x25, 0, 0, 8), None, &[(page(back), 512)], false));
    // An LBA past the end.
    expect_refused(port.command(fis(0x25, 0, 1 << 40, 1), None, &[(page(back), 512)], false));
    // Not a Register - Host to Device FIS.
    let mut bad = read;
    bad[0] = 0x39;
    expect_refused(port.command(bad, None, &[(page(back), 512)], false));
    // A command nobody implements.
    expect_refused(port.command(fis(0xb0, 0, 0, 0), None, &[(page(back), 512)], false));
    // The command table outside RAM.
    port.prepare(0, read, None, &[(page(back), 512)], false);
    // SAFETY: our command list.
    unsafe { write_volatile((list(port.area) as *mut u32).add(2), OUTSIDE_RAM as u32 | 0x80) };
    // SAFETY: as above.
    unsafe { write_volatile((list(port.area) as *mut u32).add(3), (OUTSIDE_RAM >> 32) as u32) };
    let ok = port.run(1, false);
    if !ok {
        port.restart();
    }
    expect_refused(ok);
    let tfd = port.r(PX_TFD);
    let works = port.command(fis(0x25, 0, PATTERN_LBA, 1), None, &[(page(back), 512)], false)
        && (0..512).all(|i| byte(back, i) == pattern(i));
    print(b"ahci: hostile ");
    print_dec(refused);
    print(b" of ");
    print_dec(tried);
    print(b" refused, tfd ");
    print_hex(tfd as u64);
    print(if works { b", port still works\n" as &[u8] } else { b", port FAILS\n" });
}
