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

pub fn enter(f: extern "C" fn() -> !) -> ! {
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
