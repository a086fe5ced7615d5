//! Running one guest instruction on the host CPU.
//!
//! Guest kernels run SIMD code at CPL0 (the random pool's BLAKE2s, the
//! built-in crypto), and a paging-based host's instruction emulator refuses
//! nearly all of it. Rather than emulate hundreds of SSE and AVX
//! instructions, the runner executes the refused one itself, in user mode,
//! with the guest's general-purpose registers, arithmetic flags and SIMD
//! state loaded, and its memory operand rewritten to point at a copy of the
//! guest's bytes. `complete::simd` decides which instructions may go here
//! (only ones that compute on registers and one memory operand, never
//! control flow, stack or system state) and raises the exceptions the CPU
//! would; this module is the mechanism.
//!
//! The instruction lives in a 4 KiB page mapped twice from one memfd:
//! read-write (where it is written) and read-execute (where it runs), so no
//! page is ever writable and executable at once and the sandbox needs no
//! mprotect or executable mmap. The operand copy sits in the page after
//! the code, within reach of a RIP-relative displacement. One `NativeCpu`
//! per vCPU thread; none at all on a VT-x/AMD-V host.

use std::io;

/// The standard-format XSAVE area size both states use (KVM's kvm_xsave).
pub const AREA: usize = 4096;
/// Where the memory operand copy starts (the data page, 64-aligned).
const PAGE: usize = 4096;
/// The largest memory operand an instruction may have (a ZMM register).
pub const MAX_OPERAND: usize = 64;
/// The XSAVE components a native instruction may use: x87, SSE, AVX and
/// AVX-512's opmask and ZMM registers. Never PKRU, AMX's tiles or
/// supervisor state. Their standard-format area ends at 2688 bytes on
/// the CPUs we know, within AREA.
pub const SIMD_COMPONENTS: u64 = 0xe7;

/// What the trampoline loads before the instruction and stores after it.
/// Field offsets are the trampoline's (checked by a test).
#[repr(C, align(64))]
pub struct Context {
    /// The guest's state as a standard-format XSAVE area, its header
    /// sanitised so XRSTOR in user mode accepts it (`complete::simd`).
    pub guest: [u8; AREA],
    /// The runner's own state (the components in `mask`), saved across
    /// the instruction.
    host: [u8; AREA],
    /// RAX..R15 in encoding order (RSP's slot is neither loaded nor
    /// stored: the instruction must not name it).
    pub gprs: [u64; 16],
    /// RFLAGS to load (only arithmetic flags and bit 1) and as left.
    pub rflags: u64,
    /// The XSAVE components to load and store (within the host's XCR0 and
    /// [`SIMD_COMPONENTS`]).
    pub mask: u64,
    /// The address of the instruction (the code page).
    code: u64,
}

impl Context {
    pub fn new() -> Box<Context> {
        Box::new(Context { guest: [0; AREA], host: [0; AREA], gprs: [0; 16], rflags: 2, mask: 0, code: 0 })
    }
}

// The trampoline: saves the runner's callee-saved registers and the
// extended state components in the mask (only those: the instruction
// touches no other, and a host's whole state, AMX tiles and all, can be
// far larger than AREA), loads the guest's, calls the code page (the
// instruction, then `ret`), stores the guest's registers, flags and state
// back, and restores the runner's. RDI points at a Context throughout (kept on the stack while
// the guest's RDI is loaded).
std::arch::global_asm!(
    ".pushsection .text.capvm_native_step,\"ax\",@progbits",
    ".p2align 4",
    "capvm_native_step:",
    "push rbx",
    "push rbp",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "push rdi",
    "mov eax, [rdi + 8328]",
    "mov edx, [rdi + 8332]",
    "xsave64 [rdi + 4096]",
    "xrstor64 [rdi]",
    "push qword ptr [rdi + 8336]",
    "push qword ptr [rdi + 8320]",
    "popfq",
    "mov rax, [rdi + 8192]",
    "mov rcx, [rdi + 8200]",
    "mov rdx, [rdi + 8208]",
    "mov rbx, [rdi + 8216]",
    "mov rbp, [rdi + 8232]",
    "mov rsi, [rdi + 8240]",
    "mov r8, [rdi + 8256]",
    "mov r9, [rdi + 8264]",
    "mov r10, [rdi + 8272]",
    "mov r11, [rdi + 8280]",
    "mov r12, [rdi + 8288]",
    "mov r13, [rdi + 8296]",
    "mov r14, [rdi + 8304]",
    "mov r15, [rdi + 8312]",
    "mov rdi, [rdi + 8248]",
    "call qword ptr [rsp]",
    "pushfq",
    // Stack: flags, code address, Context pointer.
    "xchg rdi, [rsp + 16]",
    "mov [rdi + 8192], rax",
    "mov [rdi + 8200], rcx",
    "mov [rdi + 8208], rdx",
    "mov [rdi + 8216], rbx",
    "mov [rdi + 8232], rbp",
    "mov [rdi + 8240], rsi",
    "mov [rdi + 8256], r8",
    "mov [rdi + 8264], r9",
    "mov [rdi + 8272], r10",
    "mov [rdi + 8280], r11",
    "mov [rdi + 8288], r12",
    "mov [rdi + 8296], r13",
    "mov [rdi + 8304], r14",
    "mov [rdi + 8312], r15",
    "pop rax",
    "mov [rdi + 8320], rax",
    "pop rax",
    "pop rax",
    "mov [rdi + 8248], rax",
    "mov eax, [rdi + 8328]",
    "mov edx, [rdi + 8332]",
    "xsave64 [rdi]",
    "xrstor64 [rdi + 4096]",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbp",
    "pop rbx",
    "ret",
    ".popsection",
);

extern "sysv64" {
    fn capvm_native_step(ctx: *mut Context);
}

/// A code page (written through one mapping, run through another) and the
/// operand page after it.
pub struct NativeCpu {
    /// The read-write view of the code page.
    writer: *mut u8,
    /// Two pages: the code (read-execute) and the operand (read-write).
    base: *mut u8,
}

// SAFETY: the mappings belong to this value alone; it moves with its vCPU
// thread and is used by one thread at a time (&mut self).
unsafe impl Send for NativeCpu {}

impl NativeCpu {
    /// Maps the pages. Fails where the host has no XSAVE enabled, or its
    /// [`SIMD_COMPONENTS`] need a larger area than `AREA`.
    pub fn new() -> io::Result<NativeCpu> {
        let osxsave = std::arch::x86_64::__cpuid(1).ecx & (1 << 27) != 0;
        if !osxsave {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "the host has no XSAVE enabled"));
        }
        let size = standard_size(host_xcr0() & SIMD_COMPONENTS);
        if size > AREA {
            let why = format!("the host CPU's x87/SSE/AVX/AVX-512 state takes {size} bytes, over {AREA}");
            return Err(io::Error::new(io::ErrorKind::Unsupported, why));
        }
        // SAFETY: plain system calls on fds and mappings created here;
        // every result is checked, and what was made is undone on error.
        unsafe {
            let fd = libc::memfd_create(c"capvm-native".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
            let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
            if libc::ftruncate(raw, 2 * PAGE as libc::off_t) != 0 {
                return Err(io::Error::last_os_error());
            }
            let map = |addr: *mut libc::c_void, len: usize, prot: i32, flags: i32, offset: usize| {
                let p = libc::mmap(addr, len, prot, flags, raw, offset as libc::off_t);
                if p == libc::MAP_FAILED {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(p)
                }
            };
            let writer = map(std::ptr::null_mut(), PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, 0)?;
            let base =
                match map(std::ptr::null_mut(), 2 * PAGE, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, 0) {
                    Ok(p) => p,
                    Err(e) => {
                        libc::munmap(writer, PAGE);
                        return Err(e);
                    }
                };
            let cpu = NativeCpu { writer: writer.cast(), base: base.cast() };
            // The code page becomes read-execute in place (MAP_FIXED over
            // our own mapping: the operand page stays read-write).
            map(base, PAGE, libc::PROT_READ | libc::PROT_EXEC, libc::MAP_SHARED | libc::MAP_FIXED, 0)?;
            Ok(cpu)
        }
    }

    /// Where the memory operand copy lives: RIP-relative operands of the
    /// rewritten instruction point here.
    pub fn operand_address(&self) -> u64 {
        self.base as u64 + PAGE as u64
    }

    /// Where the instruction will run (for encoding RIP-relative operands).
    pub fn code_address(&self) -> u64 {
        self.base as u64
    }

    /// The operand copy.
    pub fn operand(&mut self) -> &mut [u8; MAX_OPERAND] {
        // SAFETY: the data page is ours, read-write, and 4096 bytes.
        unsafe { &mut *self.base.add(PAGE).cast::<[u8; MAX_OPERAND]>() }
    }

    /// Runs `insn` (encoded for `code_address()`) with `ctx` loaded and
    /// stores the result in `ctx`.
    ///
    /// # Safety
    ///
    /// `insn` must be one instruction that cannot fault, jump, touch the
    /// stack or memory other than the operand copy, or change anything but
    /// the general-purpose registers other than RSP, the arithmetic flags
    /// and the XSAVE components in `ctx.mask`; `ctx.guest` must be an area
    /// XRSTOR accepts for that mask. `complete::simd` checks all of it.
    pub unsafe fn run(&mut self, insn: &[u8], ctx: &mut Context) {
        assert!(insn.len() < 16, "one instruction");
        // SAFETY: the writer view is ours and PAGE bytes.
        let page = unsafe { std::slice::from_raw_parts_mut(self.writer, PAGE) };
        page[..insn.len()].copy_from_slice(insn);
        page[insn.len()] = 0xc3; // ret
        ctx.code = self.code_address();
        // SAFETY: the caller vouches for the instruction; the trampoline
        // restores every register and the extended state the ABI asks.
        unsafe { capvm_native_step(ctx) };
    }
}

impl Drop for NativeCpu {
    fn drop(&mut self) {
        // SAFETY: the two mappings made in new(), unmapped once.
        unsafe {
            libc::munmap(self.writer.cast(), PAGE);
            libc::munmap(self.base.cast(), 2 * PAGE);
        }
    }
}

/// Where the standard-format XSAVE area of `components` ends: the legacy
/// region and header (576 bytes), then each component at the offset
/// CPUID leaf 0xD gives it.
pub fn standard_size(components: u64) -> usize {
    (2..63)
        .filter(|i| components >> i & 1 != 0)
        .map(|i| {
            let leaf = std::arch::x86_64::__cpuid_count(0xd, i);
            (leaf.ebx + leaf.eax) as usize
        })
        .fold(576, usize::max)
}

/// The host's XCR0 (the components user-mode XSAVE/XRSTOR may name).
pub fn host_xcr0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0; NativeCpu::new checked XSAVE
    // (and the kernel sets OSXSAVE wherever XSAVE is used).
    unsafe { std::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    u64::from(hi) << 32 | u64::from(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trampoline_offsets_are_the_context_layout() {
        let c = Context::new();
        let at = |p: *const u8| p as usize - (&*c as *const Context as usize);
        assert_eq!(at(c.host.as_ptr()), 4096);
        assert_eq!(at(c.gprs.as_ptr().cast()), 8192);
        assert_eq!(at((&c.rflags as *const u64).cast()), 8320);
        assert_eq!(at((&c.mask as *const u64).cast()), 8328);
        assert_eq!(at((&c.code as *const u64).cast()), 8336);
    }

    #[test]
    fn an_instruction_runs_with_the_loaded_registers_and_leaves_the_runner_state_alone() {
        let mut cpu = NativeCpu::new().unwrap();
        let mut ctx = Context::new();
        ctx.mask = 0b11 & host_xcr0();
        // XSTATE_BV 0: x87 and SSE in their initial state, MXCSR as given.
        ctx.guest[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        ctx.gprs[1] = 0x1234_5678; // RCX
        ctx.gprs[7] = 0xdead_beef; // RDI, loaded last
        let before = f64::from(std::hint::black_box(3u8)).sqrt();
        // movd xmm15, ecx (the Debian kernel's stop); then add rdi, rcx.
        // SAFETY: register-only instructions; the area's header is zero.
        unsafe { cpu.run(&[0x66, 0x44, 0x0f, 0x6e, 0xf9], &mut ctx) };
        assert_eq!(&ctx.guest[160 + 15 * 16..160 + 15 * 16 + 4], &0x1234_5678u32.to_le_bytes());
        // SAFETY: as above.
        unsafe { cpu.run(&[0x48, 0x01, 0xcf], &mut ctx) };
        assert_eq!(ctx.gprs[7], 0xdead_beef + 0x1234_5678);
        assert_eq!(ctx.rflags & 0xc1, 0, "no carry, not zero, not negative");
        assert_eq!(f64::from(std::hint::black_box(3u8)).sqrt(), before);
    }
}
