//! virtio-blk commands: `blk-rw N [idle|intx]`, `blk-ro`, `blk-fuzz`, and the
//! benchmark `blk-bench read|write SIZE DEPTH COUNT`.

use core::ptr::{addr_of_mut, read_volatile, write_volatile};

use crate::io::{halt, idle, print, print_dec, print_hex};
use crate::virtio::{self, cfg_read32, cfg_write32, Desc, Device, DESC_NEXT, DESC_WRITE, OUTSIDE_RAM, QSIZE};

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const S_OK: u8 = 0;
/// The sector the pattern goes to; the host test reads it back there.
pub const PATTERN_SECTOR: u64 = 16;

#[repr(C, align(4096))]
struct Page([u8; 4096]);
static mut HEADER: [u32; 4] = [0; 4];
static mut DATA: Page = Page([0; 4096]);
static mut BACK: Page = Page([0; 4096]);
static mut STATUS: u8 = 0;

fn addr<T>(p: *mut T) -> u64 {
    p as u64
}

fn open() -> Device {
    open_with(true)
}

/// The disk, interrupting through MSI-X or else INTx#.
fn open_with(msix: bool) -> Device {
    let Some(slot) = virtio::find(0x1af4, 0x1042) else {
        print(b"blk: no virtio-blk function on bus 0\n");
        halt()
    };
    virtio::enable_interrupts();
    let mut dev = Device::probe(slot, msix);
    if !msix {
        let (pin, line) = virtio::route_intx(&dev);
        print(b"blk: INTx# pin ");
        print_dec(pin as u64);
        print(b" line ");
        print_dec(line as u64);
        print(b"\n");
    }
    if !dev.init(F_RO | F_FLUSH, 1) {
        print(b"blk: device refused our features\n");
        halt()
    }
    dev
}

fn header(kind: u32, sector: u64) {
    // SAFETY: our statics; the device reads them only while we wait.
    unsafe {
        write_volatile(addr_of_mut!(HEADER), [kind, 0, sector as u32, (sector >> 32) as u32]);
        write_volatile(addr_of_mut!(STATUS), 0xff);
    }
}

fn status() -> u8 {
    // SAFETY: the device has returned the chain.
    unsafe { read_volatile(addr_of_mut!(STATUS)) }
}

/// One well-formed request: header, optional data buffer, status.
/// Returns (status, used length).
fn request(dev: &mut Device, kind: u32, sector: u64, buf: u64, len: u32) -> (u8, u32) {
    header(kind, sector);
    let to_guest = matches!(kind, T_IN | T_GET_ID);
    dev.set_desc(0, 0, Desc { addr: addr(addr_of_mut!(HEADER)), len: 16, flags: DESC_NEXT, next: 1 });
    let status_desc = Desc { addr: addr(addr_of_mut!(STATUS)), len: 1, flags: DESC_WRITE, next: 0 };
    if len > 0 {
        let flags = DESC_NEXT | if to_guest { DESC_WRITE } else { 0 };
        dev.set_desc(0, 1, Desc { addr: buf, len, flags, next: 2 });
        dev.set_desc(0, 2, status_desc);
    } else {
        dev.set_desc(0, 1, status_desc);
    }
    let used = dev.submit(0, 0, true);
    (status(), used)
}

fn pattern(i: usize, round: u64) -> u8 {
    (i as u64 * 7 + round + 0x5a) as u8
}

/// `blk-rw N [idle|intx]`: N rounds of write pattern, flush, read back,
/// compare; `intx` leaves MSI-X off, so every completion is an INTx#.
pub fn rw(rounds: u64, stay: bool, msix: bool) -> ! {
    let mut dev = open_with(msix);
    let data = addr_of_mut!(DATA) as *mut u8;
    let back = addr_of_mut!(BACK) as *mut u8;
    for round in 0..rounds {
        for i in 0..4096 {
            // SAFETY: i < 4096, our static page.
            unsafe { write_volatile(data.add(i), pattern(i, round)) };
        }
        let steps = [(T_OUT, data as u64), (T_FLUSH, 0), (T_IN, back as u64)];
        for (kind, buf) in steps {
            let len = if buf == 0 { 0 } else { 4096 };
            let (s, _) = request(&mut dev, kind, PATTERN_SECTOR, buf, len);
            if s != S_OK {
                print(b"blk: request type ");
                print_dec(kind as u64);
                print(b" failed with status ");
                print_dec(s as u64);
                print(b"\n");
                halt()
            }
        }
        for i in 0..4096 {
            // SAFETY: i < 4096.
            if unsafe { read_volatile(back.add(i)) } != pattern(i, round) {
                print(b"blk: read-back mismatch at byte ");
                print_dec(i as u64);
                print(b"\n");
                halt()
            }
        }
    }
    let (s, n) = request(&mut dev, T_GET_ID, 0, back as u64, 20);
    print(b"blk: id ");
    for i in 0..n.saturating_sub(1).min(20) as usize {
        // SAFETY: i < 20.
        let c = unsafe { read_volatile(back.add(i)) };
        if c == 0 {
            break;
        }
        crate::io::outb(0x3f8, c);
    }
    print(b" status ");
    print_dec(s as u64);
    print(b"\nblk: ");
    print_dec(rounds);
    print(b" rounds of write, flush, read-back ok; interrupts ");
    print_dec(virtio::irqs());
    print(b", spurious ");
    print_dec(virtio::spurious_irqs());
    print(b"\nblk done\n");
    if stay {
        idle()
    }
    halt()
}

/// `blk-ro`: the device says read-only, and a write fails.
pub fn ro() -> ! {
    let mut dev = open();
    print(b"blk: read-only feature ");
    print_dec((dev.features & F_RO != 0) as u64);
    let data = addr_of_mut!(DATA) as u64;
    let (w, _) = request(&mut dev, T_OUT, 0, data, 512);
    let (r, _) = request(&mut dev, T_IN, 0, data, 512);
    print(b"\nblk: write status ");
    print_dec(w as u64);
    print(b", read status ");
    print_dec(r as u64);
    print(b"\n");
    halt()
}

/// `blk-fuzz`: hostile chains, random chains, config-space garbage and
/// BAR moves; the device must answer each and keep working.
pub fn fuzz() -> ! {
    let mut dev = open();
    let hdr = addr(addr_of_mut!(HEADER));
    let st = addr(addr_of_mut!(STATUS));
    let data = addr_of_mut!(DATA) as u64;
    let wild = OUTSIDE_RAM;
    let d = |addr, len, flags, next| Desc { addr, len, flags, next };
    let status_desc = d(st, 1, DESC_WRITE, 0);
    // Each case: its descriptors from index 0, and the request type.
    let cases: [(&[Desc], u32, &[u8]); 10] = [
        (&[d(wild, 16, DESC_NEXT, 1), status_desc], T_IN, b"header outside RAM"),
        (&[d(hdr, 8, DESC_NEXT, 1), status_desc], T_IN, b"short header"),
        (&[d(hdr, 16, DESC_NEXT, 1), d(wild, 512, DESC_WRITE | DESC_NEXT, 2), status_desc], T_IN, b"data outside RAM"),
        (&[d(hdr, 16, DESC_NEXT, 1), d(data, 100, DESC_WRITE | DESC_NEXT, 2), status_desc], T_IN, b"partial sector"),
        (&[d(hdr, 16, DESC_NEXT, 1), d(data, 512, DESC_NEXT, 2), status_desc], T_IN, b"IN into a read-only buffer"),
        (&[d(hdr, 16, DESC_NEXT, 1), status_desc], 99, b"unknown type"),
        (&[d(hdr, 16, DESC_NEXT, 1), d(data, 512, DESC_WRITE | DESC_NEXT, 0)], T_IN, b"loop"),
        (&[d(hdr, 16, 0, 0)], T_IN, b"no status byte"),
        (&[d(hdr, 16, DESC_NEXT, 1), d(st, 1, 0, 0)], T_IN, b"read-only status"),
        (&[d(hdr, 16, DESC_NEXT, 1), d(data, 15, 4 | DESC_NEXT, 2), status_desc], T_IN, b"bad indirect table"),
    ];
    let mut answered = 0;
    for (descs, kind, what) in cases {
        header(kind, 0);
        for (i, desc) in descs.iter().enumerate() {
            dev.set_desc(0, i as u16, *desc);
        }
        let used = dev.submit(0, 0, true);
        let s = status();
        // An error status where there is a status byte; else nothing written.
        if (s != 0xff && s != S_OK) || (s == 0xff && used == 0) {
            answered += 1;
        } else {
            print(b"fuzz: not refused: ");
            print(what);
            print(b"\n");
        }
    }
    // A head past the table: the device cannot return it.
    dev.submit(0, QSIZE + 100, false);
    dev.forget_one(0);

    let returned = dev.submit_random_chains(0, 0x5eed_cafe_f00d_d00d, 64);
    // Config space: read-only registers stay as they are.
    let id = cfg_read32(dev.slot, 0);
    cfg_write32(dev.slot, 0, 0xffff_ffff);
    cfg_write32(dev.slot, 8, 0);
    let config_ok = cfg_read32(dev.slot, 0) == id;

    // BAR moves: onto RAM and onto the LAPIC are refused, a free spot works.
    let old = dev.bar;
    // Sizing with decoding on: all-ones reads back the 16 KiB size mask,
    // and the runner must not map (or trip over) that address.
    dev.move_bar(u64::MAX);
    let mut bar_ok = cfg_read32(dev.slot, 0x10) == 0xffff_c004 && cfg_read32(dev.slot, 0x14) == 0xffff_ffff;
    for bad in [0u64, 0xfee0_0000] {
        dev.move_bar(bad);
        // SAFETY: the old BAR address, no longer decoded: reads float high.
        bar_ok &= unsafe { virtio::mmio_r::<u32>(old) } == 0xffff_ffff;
    }
    // Into the 64-bit window (from 4 GiB for this guest) and back to the
    // 32-bit one: the registers and the notify ioeventfds follow.
    for to in [1u64 << 32, 0xc010_0000] {
        dev.move_bar(to);
        let (s, _) = request(&mut dev, T_OUT, PATTERN_SECTOR, data, 512);
        bar_ok &= s == S_OK && dev.status() & 4 != 0;
    }
    // SAFETY: as above, for the addresses we left.
    bar_ok &= unsafe { virtio::mmio_r::<u32>(old) } == 0xffff_ffff;
    bar_ok &= unsafe { virtio::mmio_r::<u32>(1 << 32) } == 0xffff_ffff;
    // After all that, a read must still bring back what was written.
    let (s, _) = request(&mut dev, T_IN, PATTERN_SECTOR, data, 512);
    let works = s == S_OK;

    print(b"fuzz: ");
    print_dec(answered);
    print(b" of 10 hostile chains refused, ");
    print_dec(returned);
    print(b" random chains returned; config space ");
    print(if config_ok { b"ok" } else { b"CHANGED" });
    print(b"; BAR moves ");
    print(if bar_ok { b"ok" } else { b"WRONG" });
    print(b"\nfuzz: device at ");
    print_hex(dev.bar);
    print(if works { b" still works\n" as &[u8] } else { b" FAILS\n" });
    halt()
}

/// Guest RAM the benchmark's buffers start at (64 MiB; the guest needs
/// 64 MiB + depth × (size + 8 KiB)).
const BENCH_BUFFERS: u64 = 0x400_0000;

struct Bench {
    dev: core::mem::MaybeUninit<Device>,
    write: bool,
    size: u64,
    depth: u64,
    count: u64,
    sectors: u64,
    /// Spin after `bench: end` instead of resetting, so the host can read
    /// the device's counters.
    hold: bool,
}
static mut BENCH: Bench =
    Bench { dev: core::mem::MaybeUninit::uninit(), write: false, size: 0, depth: 0, count: 0, sectors: 0, hold: false };

/// `blk-bench read|write SIZE DEPTH COUNT`: COUNT sequential requests of
/// SIZE bytes with DEPTH in flight, from user mode (natively, where CPL0 is
/// emulated), polling the used ring with interrupts off. Prints `bench: go`
/// and `bench: end` around the requests (the host times the two lines),
/// then resets (or with `hold`, spins in user mode until the host stops
/// the VM).
pub fn bench(write: bool, size: u64, depth: u64, count: u64, hold: bool) -> ! {
    let depth = depth.clamp(1, QSIZE as u64 / 2);
    if size == 0 || !size.is_multiple_of(512) || size > 1 << 24 {
        print(b"blk-bench: SIZE must be a multiple of 512 up to 16 MiB\n");
        halt()
    }
    let dev = open();
    // Capacity in sectors: the first 8 bytes of the device configuration.
    let sectors = (0..8).fold(0u64, |c, i| c | (dev.config8(i) as u64) << (8 * i));
    if sectors < size / 512 {
        print(b"blk-bench: the disk is smaller than one request\n");
        halt()
    }
    // SAFETY: set once at CPL0, read by the user-mode loop only.
    unsafe { BENCH = Bench { dev: core::mem::MaybeUninit::new(dev), write, size, depth, count, sectors, hold } };
    crate::user::enter(bench_loop)
}

/// Request k's data buffer; its header sits just below, its status byte
/// just after, so every request is two descriptors: reads are
/// [header][data+status], writes [header+data][status] (virtio 1.x lets
/// the driver frame a request as it likes).
fn bench_data(k: u64, size: u64) -> u64 {
    BENCH_BUFFERS + 4096 + k * (size + 8192).next_multiple_of(4096)
}

extern "C" fn bench_loop() -> ! {
    // SAFETY: initialised by `bench` before entering user mode.
    let b = unsafe { &mut *addr_of_mut!(BENCH) };
    // SAFETY: as above.
    let dev = unsafe { b.dev.assume_init_mut() };
    let span = b.size / 512;
    let mut next_sector = 0u64;
    // Writes the header and clears the status of request k; returns its head.
    let mut prepare = |dev: &mut Device, k: u64| -> u16 {
        let data = bench_data(k, b.size);
        let kind = if b.write { T_OUT } else { T_IN };
        // SAFETY: our buffers in guest RAM, not in flight.
        unsafe {
            write_volatile((data - 16) as *mut [u32; 4], [kind, 0, next_sector as u32, (next_sector >> 32) as u32]);
            write_volatile((data + b.size) as *mut u8, 0xff);
        }
        next_sector = if next_sector + 2 * span > b.sectors { 0 } else { next_sector + span };
        let head = 2 * k as u16;
        let (first, second) = if b.write {
            (
                Desc { addr: data - 16, len: 16 + b.size as u32, flags: DESC_NEXT, next: head + 1 },
                Desc { addr: data + b.size, len: 1, flags: DESC_WRITE, next: 0 },
            )
        } else {
            (
                Desc { addr: data - 16, len: 16, flags: DESC_NEXT, next: head + 1 },
                Desc { addr: data, len: b.size as u32 + 1, flags: DESC_WRITE, next: 0 },
            )
        };
        dev.set_desc(0, head, first);
        dev.set_desc(0, head + 1, second);
        head
    };
    print(b"bench: go\n");
    let mut submitted = 0;
    for k in 0..b.depth.min(b.count) {
        let head = prepare(dev, k);
        dev.offer(0, head);
        submitted += 1;
    }
    dev.kick(0);
    let (mut done, mut used_pos) = (0u64, 0u16);
    while done < b.count {
        let mut offered = false;
        while dev.used_idx(0) != used_pos {
            let (head, _) = dev.used_at(0, used_pos);
            used_pos = used_pos.wrapping_add(1);
            done += 1;
            let k = head as u64 / 2;
            // SAFETY: the device returned the request.
            if unsafe { read_volatile((bench_data(k, b.size) + b.size) as *const u8) } != S_OK {
                print(b"blk-bench: a request failed\n");
                crate::io::reset_cf9()
            }
            if submitted < b.count {
                let head = prepare(dev, k);
                dev.offer(0, head);
                submitted += 1;
                offered = true;
            }
        }
        if offered {
            dev.kick(0);
        }
    }
    print(b"bench: end\n");
    if b.hold {
        // User mode cannot halt: spin until the host stops the VM.
        loop {
            core::hint::spin_loop();
        }
    }
    crate::io::reset_cf9()
}
