//! Port I/O, COM1 and the ways a guest ends a VM run.

use core::arch::asm;

pub fn outb(port: u16, v: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) }
}

pub fn outw(port: u16, v: u16) {
    // SAFETY: as outb.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack)) }
}

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as outb.
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack)) }
    v
}

const COM1: u16 = 0x3f8;
const LSR: u16 = 5;
const LSR_DR: u8 = 0x01;
const LSR_THRE: u8 = 0x20;

/// Waits for a byte on COM1 (polling: no interrupts at this stage).
pub fn getc() -> u8 {
    while inb(COM1 + LSR) & LSR_DR == 0 {}
    inb(COM1)
}

/// Writes bytes to COM1, waiting for the transmit holding register.
pub fn print(s: &[u8]) {
    for &b in s {
        if b == b'\n' {
            put(b'\r');
        }
        put(b);
    }
}

fn put(b: u8) {
    let mut tries = 0;
    while inb(COM1 + LSR) & LSR_THRE == 0 && tries < 1000 {
        tries += 1;
    }
    outb(COM1, b);
}

/// Prints `v` as 0x and 16 hex digits, a byte at a time: guest CPL0 code is
/// emulated on some hosts, so it stays away from SSE (no buffer to zero).
pub fn print_hex(v: u64) {
    print(b"0x");
    for i in 0..16 {
        let nib = ((v >> (60 - 4 * i)) & 0xf) as u8;
        put(if nib < 10 { b'0' + nib } else { b'a' + nib - 10 });
    }
}

/// Reset through the PCI reset control register (0xcf9): bhyve exit 0.
pub fn reset_cf9() -> ! {
    outb(0xcf9, 0x6);
    halt()
}

/// Reset through the i8042 keyboard controller's pulse-reset command.
pub fn reset_i8042() -> ! {
    outb(0x64, 0xfe);
    halt()
}

/// ACPI S5 through PM1a_CNT (bhyve's port 0x404, SLP_TYP 5): exit 1.
pub fn poweroff() -> ! {
    outw(0x404, (5 << 10) | (1 << 13));
    halt()
}

/// Halt with interrupts off, forever: exit 2.
pub fn halt() -> ! {
    loop {
        // SAFETY: stops this CPU; nothing after it relies on memory state.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Triple fault: an empty IDT, then an exception: exit 3.
pub fn triple_fault() -> ! {
    let idt: [u16; 5] = [0; 5];
    // SAFETY: deliberately makes every exception a triple fault.
    unsafe {
        asm!("lidt [{}]", in(reg) &idt, options(nostack));
        asm!("xor edx, edx", "xor eax, eax", "xor ecx, ecx", "div ecx", options(nomem, nostack));
    }
    halt()
}

pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: as outb.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack)) }
}

pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as outb.
    unsafe { asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack)) }
    v
}

/// Prints `v` in decimal.
pub fn print_dec(mut v: u64) {
    // A static, not a local array: zeroing a local may compile to SSE.
    static mut DIGITS: [u8; 20] = [0; 20];
    let digits = core::ptr::addr_of_mut!(DIGITS) as *mut u8;
    let mut n = 0;
    loop {
        // SAFETY: n < 20 (u64 has at most 20 digits); volatile keeps the
        // compiler from turning this into SSE stores.
        unsafe { core::ptr::write_volatile(digits.add(n), b'0' + (v % 10) as u8) };
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while n > 0 {
        n -= 1;
        // SAFETY: n < 20.
        put(unsafe { core::ptr::read_volatile(digits.add(n)) });
    }
}

/// Waits for interrupts forever, with them enabled: the VM stays up until
/// the host stops it.
pub fn idle() -> ! {
    loop {
        // SAFETY: sti;hlt sleeps until the next interrupt.
        unsafe { asm!("sti", "hlt", options(nomem, nostack)) }
    }
}
