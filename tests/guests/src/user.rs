//! Dropping to CPL3 with IOPL 3, so port I/O still works and the code runs
//! natively even where guest CPL0 is emulated. There is no way back: user
//! code ends the VM itself (reset, or a port the test expects).

/// User code and data selectors (GDT entries 3 and 4, RPL 3).
const USER_CS: u64 = 0x18 | 3;
const USER_SS: u64 = 0x20 | 3;
const RFLAGS_IOPL3: u64 = 3 << 12;

#[repr(C, align(16))]
struct Stack([u8; 65536]);
static mut USER_STACK: Stack = Stack([0; 65536]);

/// A 64-bit TSS followed by an all-zero I/O permission bitmap (every port
/// allowed) and the terminating 0xff byte.
#[repr(C, packed)]
struct Tss {
    _reserved0: u32,
    rsp: [u64; 3],
    _reserved1: u64,
    ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    iomap_base: u16,
    iomap: [u8; 8192],
    iomap_end: u8,
}
const TSS_IOMAP_BASE: u16 = 104;
static mut TSS: Tss = Tss {
    _reserved0: 0,
    rsp: [0; 3],
    _reserved1: 0,
    ist: [0; 7],
    _reserved2: 0,
    _reserved3: 0,
    iomap_base: TSS_IOMAP_BASE,
    iomap: [0; 8192],
    iomap_end: 0xff,
};
const SEL_TSS: u16 = 0x28;

extern "C" {
    static mut gdt_tss: [u64; 2];
}

/// Installs the TSS (so the I/O bitmap allows every port at CPL3 too).
fn load_tss() {
    // SAFETY: fills the GDT's reserved TSS slot and loads it, once.
    unsafe {
        let base = core::ptr::addr_of!(TSS) as u64;
        let limit = (core::mem::size_of::<Tss>() - 1) as u64;
        let low = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89u64 << 40) // present, 64-bit available TSS
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        let slot = core::ptr::addr_of_mut!(gdt_tss) as *mut u64;
        core::ptr::write_volatile(slot, low);
        core::ptr::write_volatile(slot.add(1), base >> 32);
        core::arch::asm!("ltr {0:x}", in(reg) SEL_TSS);
    }
}

pub fn enter(f: extern "C" fn() -> !) -> ! {
    load_tss();
    // SAFETY: the identity map is user-accessible and the GDT has DPL 3
    // segments; iretq switches stack and privilege together.
    unsafe {
        let top = core::ptr::addr_of_mut!(USER_STACK).cast::<u8>().add(65536 - 16) as u64;
        core::arch::asm!(
            // IOPL 3 in RFLAGS first (popfq at CPL0), then the same flags in
            // the iretq frame.
            "pushfq",
            "or qword ptr [rsp], {iopl}",
            "popfq",
            "push {ss}",
            "push {sp}",
            "pushfq",
            "push {cs}",
            "push {ip}",
            "iretq",
            ss = in(reg) USER_SS,
            sp = in(reg) top,
            iopl = const RFLAGS_IOPL3,
            cs = in(reg) USER_CS,
            ip = in(reg) f as usize as u64,
            options(noreturn)
        )
    }
}
