//! The test guest. One binary, whose behaviour the kernel command line picks
//! (`-o boot.cmdline=...`), so capvm and QEMU run the very same bytes.
//!
//! Commands: `hello` (default: greet, print CPUID leaf 1 ECX, halt),
//! `reboot`, `reboot-kbd`, `poweroff`, `halt`, `idle` (stay up, asleep),
//! `triple-fault`,
//! `cmpxchg16b` (an instruction kvm_pvm's emulator cannot run; the runner
//! completes it), `xsaves` (one it neither runs nor completes), `refused N`
//! and `simd N` (rounds of refused instructions, checked), `fbuf`,
//! `fbuf-anim` and `fbuf-still` (the display; fbuf.rs),
//! `unknown-port` (read port 0x1234), `clock` (RTC and PM timer), `spin` (loop at CPL0 forever),
//! `echo` (echo COM1 input until 'q', then power off), `initrd` (print the
//! PVH module count and the first module's first 8 bytes), `pio-loop N PORT`
//! (N port writes from user mode, then reset: the exit benchmark),
//! `blk-rw N [idle|intx]`, `blk-ro`, `blk-fuzz`, `blk-bench read|write SIZE
//! DEPTH COUNT [hold]` (our own virtio-blk driver, see blk.rs), `net`, `net-fuzz`, `net-bench tx|rx
//! SIZE COUNT` (our own virtio-net driver, see net.rs). The benchmarks print `bench: go` and
//! `bench: end` around their user-mode loop.

#![no_std]
#![no_main]

mod ahci;
mod blk;
mod entry;
mod fbuf;
mod io;
mod net;
mod user;
mod virtio;

use core::ptr::{addr_of, read_volatile};

use io::print;

/// The parts of Xen's hvm_start_info we read.
#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
}

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

fn cmdline(start_info: *const StartInfo) -> &'static [u8] {
    // SAFETY: the loader put hvm_start_info at EBX and a NUL-terminated
    // command line at cmdline_paddr; both are identity-mapped.
    unsafe {
        if start_info.is_null() || (*start_info).magic != XEN_HVM_START_MAGIC {
            return b"";
        }
        let p = (*start_info).cmdline_paddr as *const u8;
        if p.is_null() {
            return b"";
        }
        let mut n = 0;
        while *p.add(n) != 0 && n < 4096 {
            n += 1;
        }
        core::slice::from_raw_parts(p, n)
    }
}

/// The words of the command line.
fn words(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ').filter(|w| !w.is_empty())
}

/// The first word of the command line.
fn command(line: &[u8]) -> &[u8] {
    words(line).next().unwrap_or(b"hello")
}

/// The command's arguments: the words after the first.
fn args(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    words(line).skip(1)
}

#[no_mangle]
extern "C" fn guest_main(start_info: *const StartInfo) -> ! {
    let line = cmdline(start_info);
    let cmd = command(line);
    print(b"capvm test guest: ");
    print(cmd);
    print(b"\n");
    match cmd {
        b"hello" => {
            print(b"Hello from a capvm guest\n");
            print(b"cpuid.1.ecx=");
            io::print_hex(io::cpuid(1, 0).2 as u64);
            print(b"\n");
            io::halt()
        }
        b"reboot" => io::reset_cf9(),
        b"reboot-kbd" => io::reset_i8042(),
        b"poweroff" => io::poweroff(),
        b"halt" => io::halt(),
        b"idle" => {
            print(b"idling\n");
            io::idle()
        }
        b"triple-fault" => io::triple_fault(),
        b"cmpxchg16b" => {
            // Not a local `[0; 2]`: zeroing that compiles to SSE, which
            // kvm_pvm's emulator cannot run either.
            // SAFETY: only this path touches the static, once.
            let target = unsafe { core::ptr::addr_of_mut!(CMPXCHG16B_TARGET.0) };
            // SAFETY: a 16-byte aligned target on our stack.
            unsafe {
                core::arch::asm!(
                    "xchg {b}, rbx",
                    "lock cmpxchg16b [{t}]",
                    "xchg {b}, rbx",
                    t = in(reg) target,
                    b = inout(reg) 1u64 => _,
                    inout("rax") 0u64 => _, inout("rdx") 0u64 => _,
                    in("rcx") 1u64,
                );
            }
            // SAFETY: as above; the instruction is done.
            let [lo, hi] = unsafe { core::ptr::read_volatile(target) };
            print(b"cmpxchg16b ran, memory ");
            io::print_hex(hi);
            print(b":");
            io::print_hex(lo);
            print(b"\n");
            io::halt()
        }
        b"xsaves" => {
            // SAFETY: only this path touches the static, once.
            let area = unsafe { core::ptr::addr_of_mut!(XSAVES_AREA.0) };
            // SAFETY: a 64-byte aligned area large enough for any state;
            // on a host that cannot run it, the VM stops here.
            unsafe {
                core::arch::asm!("xsaves [{a}]", a = in(reg) area, in("eax") u32::MAX, in("edx") u32::MAX);
            }
            print(b"xsaves ran\n");
            io::halt()
        }
        b"unknown-port" => {
            let v = io::inb(0x1234);
            print(b"port 0x1234 read ");
            io::print_hex(v as u64);
            print(b"\n");
            io::halt()
        }
        b"echo" => {
            print(b"echo ready\n");
            loop {
                let c = io::getc();
                if c == b'q' {
                    print(b"\nbye\n");
                    io::poweroff();
                }
                io::outb(0x3f8, c);
            }
        }
        b"initrd" => {
            // SAFETY: the loader wrote hvm_start_info and the module list.
            unsafe {
                let n = (*start_info).nr_modules;
                print(b"modules=");
                io::print_hex(n as u64);
                print(b"\n");
                if n > 0 {
                    let entry = (*start_info).modlist_paddr as *const u64;
                    let data = *entry as *const u8;
                    print(b"initrd starts with ");
                    for i in 0..8 {
                        io::outb(0x3f8, *data.add(i));
                    }
                    print(b"\n");
                }
            }
            io::halt()
        }
        b"pio-loop" => {
            // pio-loop COUNT PORT: COUNT byte writes to PORT from CPL3 (IOPL 3),
            // then reset. Guest CPL0 is emulated on some hosts, so the hot
            // loop runs in user mode, natively.
            let mut words = args(line);
            // SAFETY: single-threaded guest; set before the switch to user mode.
            unsafe {
                LOOP_COUNT = words.next().and_then(parse_num).unwrap_or(0);
                LOOP_PORT = words.next().and_then(parse_num).unwrap_or(0x3ff) as u16;
            }
            user::enter(pio_loop)
        }
        b"blk-rw" => {
            let mut words = args(line);
            let rounds = words.next().and_then(parse_num).unwrap_or(1);
            let mode = words.next();
            blk::rw(rounds, mode == Some(b"idle"), mode != Some(b"intx"))
        }
        b"blk-bench" => {
            let mut words = args(line);
            let write = matches!(words.next(), Some(b"write"));
            let mut num = || words.next().and_then(parse_num).unwrap_or(1);
            let (size, depth, count) = (num(), num(), num());
            let hold = matches!(words.next(), Some(b"hold"));
            blk::bench(write, size, depth, count, hold)
        }
        b"blk-ro" => blk::ro(),
        b"blk-fuzz" => blk::fuzz(),
        b"ahci" => ahci::run(),
        b"fbuf" => user::enter(fbuf::run),
        b"fbuf-anim" => user::enter(fbuf::animate),
        b"fbuf-still" => fbuf::still(),
        b"net" => net::run(),
        b"net-fuzz" => net::fuzz(),
        b"net-bench" => {
            let mut words = args(line);
            let tx = matches!(words.next(), Some(b"tx"));
            let mut num = || words.next().and_then(parse_num).unwrap_or(0);
            let (size, count) = (num(), num());
            net::bench(tx, size, count)
        }
        b"clock" => clock(),
        b"refused" => refused(args(line).next().and_then(parse_num).unwrap_or(1)),
        b"simd" => simd(args(line).next().and_then(parse_num).unwrap_or(1)),
        b"spin" => loop {
            core::hint::spin_loop();
        },
        _ => {
            print(b"unknown command\n");
            io::halt()
        }
    }
}

fn cmos_read(reg: u8) -> u8 {
    io::outb(0x70, reg);
    io::inb(0x71)
}

fn cmos_write(reg: u8, v: u8) {
    io::outb(0x70, reg);
    io::outb(0x71, v);
}

/// Prints the RTC's date and time as YYYY-MM-DD hh:mm:ss (BCD, 24-hour:
/// the power-on mode), once UIP is clear.
fn print_rtc() {
    while cmos_read(0x0a) & 0x80 != 0 {}
    let fields: [(u8, &[u8]); 7] =
        [(0x32, b""), (0x09, b"-"), (0x08, b"-"), (0x07, b" "), (0x04, b":"), (0x02, b":"), (0x00, b"")];
    for (reg, sep) in fields {
        let v = cmos_read(reg);
        print(&[b'0' + (v >> 4), b'0' + (v & 0xf)]);
        print(sep);
    }
    print(b"\n");
}

/// `simd N`: N rounds, at CPL0, of SSE code such as a kernel's crypto
/// runs (the emulator refuses it; the runner runs it natively): two 64-bit
/// values into XMM registers, a lane-wise add (paddd), a byte reversal
/// (pshufb with a mask in memory), an xor with memory (pxor), back to a
/// register, ptest, and a store (movdqu). Each result is checked against
/// the same computed with integer code (the guest is built without SSE).
/// Prints how many rounds were right between `bench: go` and `bench: end`.
fn simd(rounds: u64) -> ! {
    #[repr(C, align(16))]
    struct Block([u8; 16]);
    // pshufb: the low eight bytes reversed, the high eight zeroed.
    let reverse = Block([7, 6, 5, 4, 3, 2, 1, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80]);
    let key = Block([0x5a, 0x17, 0xc3, 0x88, 0x01, 0xfe, 0x42, 0x99, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut stored = Block([0; 16]);
    let mut right = 0;
    print(b"bench: go\n");
    for i in 0..rounds {
        let x = 0x0123_4567_89ab_cdefu64.rotate_left(i as u32);
        let y = 0xfedc_ba98_7654_3210u64 ^ i;
        let (out, zero): (u64, u64);
        // SAFETY: XMM0 and XMM1 are ours (the guest is built without SSE,
        // so the compiler keeps nothing there); reads of two locals and a
        // store to a third; CR4.OSFXSR is set by the entry code.
        unsafe {
            core::arch::asm!(
                "movq xmm0, {x}",
                "movq xmm1, {y}",
                "paddd xmm0, xmm1",
                "pshufb xmm0, [{rev}]",
                "pxor xmm0, [{key}]",
                "movq {out}, xmm0",
                "ptest xmm0, xmm0",
                "setz {z:l}",
                "movzx {z:e}, {z:l}",
                "movdqu [{st}], xmm0",
                x = in(reg) x,
                y = in(reg) y,
                rev = in(reg) reverse.0.as_ptr(),
                key = in(reg) key.0.as_ptr(),
                st = in(reg) stored.0.as_mut_ptr(),
                out = out(reg) out,
                z = out(reg) zero,
                options(nostack),
            );
        }
        let lanes = |v: u64| (v as u32, (v >> 32) as u32);
        let ((xl, xh), (yl, yh)) = (lanes(x), lanes(y));
        let sum = u64::from(xl.wrapping_add(yl)) | u64::from(xh.wrapping_add(yh)) << 32;
        let want = sum.swap_bytes() ^ u64::from_le_bytes([0x5a, 0x17, 0xc3, 0x88, 0x01, 0xfe, 0x42, 0x99]);
        let mut low = [0u8; 8];
        low.copy_from_slice(&stored.0[..8]);
        if out == want && u64::from_le_bytes(low) == want && stored.0[8..] == [0; 8] && zero == u64::from(want == 0) {
            right += 1;
        }
    }
    print(b"bench: end\n");
    // Last, a load from above the identity map (5 GiB): the CPU raises #PF
    // with CR2 at the address; the handler records CR2 and the error code
    // and steps over the 4-byte pxor.
    virtio::set_gate(14, pf_entry as *const () as u64);
    virtio::load_idt();
    // SAFETY: the load faults (the handler skips it); XMM0 is ours.
    unsafe { core::arch::asm!("pxor xmm0, [rax]", in("rax") 0x2_0000_0010u64, options(nostack)) };
    print(b"simd: ");
    io::print_dec(right);
    print(b" of ");
    io::print_dec(rounds);
    print(b" rounds right\nsimd: #PF at ");
    // SAFETY: written once by the handler above.
    let (cr2, code) = unsafe { (read_volatile(addr_of!(pf_cr2)), read_volatile(addr_of!(pf_code))) };
    io::print_hex(cr2);
    print(b" error ");
    io::print_dec(code);
    print(b", handled\n");
    io::idle()
}

extern "C" {
    fn pf_entry();
}
/// What the #PF handler saw.
#[no_mangle]
static mut pf_cr2: u64 = 0;
#[no_mangle]
static mut pf_code: u64 = u64::MAX;

core::arch::global_asm!(
    r#"
    .section .text
    .global pf_entry
pf_entry:
    push %rax
    mov 8(%rsp), %rax           /* the error code */
    mov %rax, pf_code(%rip)
    mov %cr2, %rax
    mov %rax, pf_cr2(%rip)
    addq $4, 16(%rsp)           /* RIP past the pxor */
    pop %rax
    add $8, %rsp                /* drop the error code */
    iretq
"#,
    options(att_syntax)
);

/// `refused N`: N rounds, at CPL0, of the instructions kvm_pvm's emulator
/// refuses and the runner completes: popcnt and tzcnt on a register and on
/// memory, stac and clac, lsl of the code segment and of a selector past
/// the GDT; each result checked against what it must be
/// (computed without those instructions). Prints how many rounds were
/// right between `bench: go` and `bench: end`, then idles. (No lzcnt: the
/// emulator runs it as bsr without an exit, so no VMM can correct it;
/// docs/kvm-pvm.md.)
fn refused(rounds: u64) -> ! {
    let mut right = 0;
    print(b"bench: go\n");
    for i in 0..rounds {
        let x = 0x0123_4567_89ab_cde0u64.rotate_left(i as u32) >> (i % 17);
        let (pop_r, tz_r, pop_m, tz_m, ac_set, ac_clear): (u64, u64, u64, u64, u64, u64);
        // SAFETY: register arithmetic, reads of a local, and RFLAGS.AC
        // (no effect at CPL0 without SMAP enforcement on our own data).
        unsafe {
            core::arch::asm!(
                "popcnt {a}, {x}",
                "tzcnt {c}, {x}",
                "popcnt {d}, qword ptr [{p}]",
                "tzcnt {f}, qword ptr [{p}]",
                x = in(reg) x,
                p = in(reg) &x,
                a = out(reg) pop_r,
                c = out(reg) tz_r,
                d = out(reg) pop_m,
                f = out(reg) tz_m,
                options(nostack, readonly),
            );
            core::arch::asm!("stac", "pushfq", "pop {s}", "clac", "pushfq", "pop {c}", s = out(reg) ac_set, c = out(reg) ac_clear);
        }
        let (limit, seen, kept, past): (u64, u8, u64, u8);
        // SAFETY: lsl reads the GDT; 0x08 is the 64-bit code segment (a
        // 4 GiB limit), 0x48 lies past the GDT's end (ZF clear, kept).
        unsafe {
            core::arch::asm!(
                "lsl {l}, {cs:e}",
                "setz {v}",
                "lsl {k}, {far:e}",
                "setz {p}",
                cs = in(reg) 0x08u64,
                far = in(reg) 0x48u64,
                l = out(reg) limit,
                v = out(reg_byte) seen,
                k = inout(reg) x => kept,
                p = out(reg_byte) past,
                options(nostack, readonly),
            );
        }
        let lsl_right = (limit, seen, kept, past) == (0xffff_ffff, 1, x, 0);
        let ac = 1 << 18;
        // tzcnt of 0 is 64 (bsf would leave its destination alone).
        let (pop, tz) = (x.count_ones() as u64, if x == 0 { 64 } else { x.trailing_zeros() as u64 });
        if (pop_r, tz_r, pop_m, tz_m) == (pop, tz, pop, tz) && ac_set & ac != 0 && ac_clear & ac == 0 && lsl_right {
            right += 1;
        }
    }
    print(b"bench: end\n");
    print(b"refused: ");
    io::print_dec(right);
    print(b" of ");
    io::print_dec(rounds);
    print(b" rounds right\n");
    io::idle()
}

/// `clock`: the RTC's time, the PM timer advancing, and a time set by the
/// guest that keeps running.
fn clock() -> ! {
    let pm_before = io::inl(0x408);
    print(b"clock: rtc ");
    print_rtc();
    print(b"clock: pm timer advanced ");
    io::print_dec(io::inl(0x408).wrapping_sub(pm_before) as u64);
    print(b" ticks\n");
    // SET, 2031-02-28 23:59:58, then let it run.
    cmos_write(0x0b, 0x82);
    for (reg, v) in [(0x32, 0x20), (0x09, 0x31), (0x08, 0x02), (0x07, 0x28), (0x04, 0x23), (0x02, 0x59), (0x00, 0x58)] {
        cmos_write(reg, v);
    }
    cmos_write(0x0b, 0x02);
    print(b"clock: set ");
    print_rtc();
    io::halt()
}

static mut LOOP_COUNT: u64 = 0;
static mut LOOP_PORT: u16 = 0;

extern "C" fn pio_loop() -> ! {
    // SAFETY: written once at CPL0 before entering user mode.
    let (n, port) = unsafe { (LOOP_COUNT, LOOP_PORT) };
    print(b"bench: go\n");
    for i in 0..n {
        io::outb(port, i as u8);
    }
    print(b"bench: end\npio-loop done\n");
    io::reset_cf9()
}

/// Decimal or 0x-prefixed hex.
fn parse_num(w: &[u8]) -> Option<u64> {
    let (digits, radix) = match w {
        [b'0', b'x', rest @ ..] => (rest, 16),
        _ => (w, 10),
    };
    let mut v: u64 = 0;
    for &d in digits {
        let x = (d as char).to_digit(radix)? as u64;
        v = v.checked_mul(radix as u64)?.checked_add(x)?;
    }
    Some(v)
}

#[repr(C, align(16))]
struct Aligned16([u64; 2]);
static mut CMPXCHG16B_TARGET: Aligned16 = Aligned16([0; 2]);

/// Where `xsaves` saves to.
#[repr(C, align(64))]
struct Aligned64([u8; 4096]);
static mut XSAVES_AREA: Aligned64 = Aligned64([0; 4096]);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    print(b"guest panic\n");
    io::halt()
}

/// Some of the precompiled core (built with unwinding) names the unwinder's
/// personality routine even though this binary aborts on panic; it is never
/// called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
