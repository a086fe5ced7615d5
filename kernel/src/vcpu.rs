//! One vCPU: boot registers, the run loop's decoded exits, and the state the
//! runner inspects (MP state, IF, where an emulation failure happened).

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_segment, Msrs, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use iced_x86::Register;

use crate::boot::{BootRegs, EntryMode, GDT, GDT_ADDR, PML4_ADDR, SEL_CODE32, SEL_CODE64, SEL_DATA, SEL_TSS};
use crate::native::NativeCpu;
use crate::paging::{self, Access, Miss, Paging};
use crate::{complete, Context, Result};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;
const RFLAGS_IF: u64 = 1 << 9;
const RFLAGS_AC: u64 = 1 << 18;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default type write-back.
const MTRR_DEF_TYPE_WB_ENABLED: u64 = (1 << 11) | 6;

/// Why KVM_RUN returned, decoded. Data slices point into the kvm_run page.
#[derive(Debug)]
pub enum Exit<'a> {
    IoIn(u16, &'a mut [u8]),
    IoOut(u16, &'a [u8]),
    MmioRead(u64, &'a mut [u8]),
    MmioWrite(u64, &'a [u8]),
    /// Triple fault or other shutdown condition.
    Shutdown,
    /// KVM_EXIT_INTERNAL_ERROR with its suberror (1 = emulation failure).
    InternalError(u32),
    /// A signal interrupted KVM_RUN (a kick from the runner).
    Interrupted,
    /// KVM_EXIT_SYSTEM_EVENT (reset or shutdown requested through PSCI-like paths).
    SystemEvent(u32),
    /// Hlt reaching user space (only without the in-kernel irqchip).
    Hlt,
    /// An exit we do not handle; the name is for the error message.
    Unhandled(String),
}

pub struct Vcpu {
    id: u32,
    fd: VcpuFd,
    /// KVM's XSAVE area fits `kvm_xsave` (4096 bytes; XSAVE2 says so):
    /// KVM_SET_XSAVE reads exactly that much then.
    xsave_fits: bool,
    /// Where refused SIMD instructions run (an emulated host only).
    native: Option<NativeCpu>,
}

impl Vcpu {
    pub(crate) fn new(id: u32, fd: VcpuFd, xsave_fits: bool, native: Option<NativeCpu>) -> Vcpu {
        Vcpu { id, fd, xsave_fits, native }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// It has a page where refused SIMD instructions run (an emulated host).
    pub fn runs_natively(&self) -> bool {
        self.native.is_some()
    }

    /// The vCPU fd number, for the sandbox manifest.
    pub fn raw_fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }

    /// LINT0 as ExtINT and LINT1 as NMI, as firmware leaves them, so the
    /// legacy PIC reaches the BSP before the guest sets up its IOAPIC.
    pub(crate) fn setup_lapic(&self) -> Result<()> {
        let mut lapic = self.fd.get_lapic().context("KVM_GET_LAPIC")?;
        for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
            let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                lapic.regs[reg + i] = *b as _;
            }
        }
        self.fd.set_lapic(&lapic).context("KVM_SET_LAPIC")
    }

    pub(crate) fn setup_msrs(&self) -> Result<()> {
        let msrs = Msrs::from_entries(&[
            kvm_msr_entry { index: MSR_IA32_MISC_ENABLE, data: MSR_IA32_MISC_ENABLE_FAST_STRING, ..Default::default() },
            kvm_msr_entry { index: MSR_MTRR_DEF_TYPE, data: MTRR_DEF_TYPE_WB_ENABLED, ..Default::default() },
        ])
        .expect("two MSR entries fit");
        self.fd.set_msrs(&msrs).context("KVM_SET_MSRS")?;
        Ok(())
    }

    /// Puts the vCPU at the kernel's entry point in the given mode. The boot
    /// GDT (and, for 64-bit entry, the page tables) must already be in memory.
    pub fn set_boot_state(&self, boot: &BootRegs) -> Result<()> {
        let mut sregs = self.fd.get_sregs().context("KVM_GET_SREGS")?;
        let long = boot.mode == EntryMode::Long64;
        let seg = |selector: u16, type_: u8, l: u8, db: u8| kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_,
            present: 1,
            dpl: 0,
            db,
            s: 1,
            l,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.cs = if long { seg(SEL_CODE64, 0xb, 1, 0) } else { seg(SEL_CODE32, 0xb, 0, 1) };
        let data = seg(SEL_DATA, 0x3, 0, 1);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        sregs.tr = kvm_segment { limit: 0x67, s: 0, g: 0, db: 0, ..seg(SEL_TSS, 0xb, 0, 0) };
        sregs.gdt.base = GDT_ADDR;
        sregs.gdt.limit = (size_of_val(&GDT) - 1) as u16;
        sregs.idt.base = 0;
        sregs.idt.limit = 0;
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
        sregs.cr4 = 0;
        sregs.efer = 0;
        if long {
            sregs.cr0 |= X86_CR0_PG;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        self.fd.set_sregs(&sregs).context("KVM_SET_SREGS")?;

        let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
        self.fd.set_fpu(&fpu).context("KVM_SET_FPU")?;

        let mut regs = self.fd.get_regs().context("KVM_GET_REGS")?;
        regs.rflags = RFLAGS_RESERVED;
        regs.rip = boot.entry;
        regs.rsp = boot.rsp;
        regs.rbp = boot.rsp;
        regs.rsi = boot.rsi;
        regs.rbx = boot.rbx;
        self.fd.set_regs(&regs).context("KVM_SET_REGS")
    }

    /// Runs the vCPU until the next exit.
    pub fn run(&mut self) -> Result<Exit<'_>> {
        // Kept as a pointer: `exit` below borrows the fd for its data slices.
        let run_page: *const kvm_bindings::kvm_run = self.fd.get_kvm_run();
        let exit = match self.fd.run() {
            Ok(e) => e,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => return Ok(Exit::Interrupted),
            Err(e) => return Err(crate::KvmError { what: "KVM_RUN", source: e }),
        };
        Ok(match exit {
            VcpuExit::IoIn(port, data) => Exit::IoIn(port, data),
            VcpuExit::IoOut(port, data) => Exit::IoOut(port, data),
            VcpuExit::MmioRead(addr, data) => Exit::MmioRead(addr, data),
            VcpuExit::MmioWrite(addr, data) => Exit::MmioWrite(addr, data),
            VcpuExit::Shutdown => Exit::Shutdown,
            VcpuExit::Hlt => Exit::Hlt,
            VcpuExit::Intr => Exit::Interrupted,
            VcpuExit::SystemEvent(kind, _) => Exit::SystemEvent(kind),
            VcpuExit::InternalError => {
                // SAFETY: the kvm_run page is mapped for the vCPU's life, and
                // with exit_reason KVM_EXIT_INTERNAL_ERROR the `internal`
                // member of the union is the one KVM filled.
                let suberror = unsafe { (*run_page).__bindgen_anon_1.internal.suberror };
                Exit::InternalError(suberror)
            }
            other => Exit::Unhandled(format!("{other:?}")),
        })
    }

    /// Whether the vCPU is parked for good unless an NMI or INIT comes: halted
    /// with interrupts disabled, or an AP that was never started.
    pub fn is_stopped(&self) -> Result<bool> {
        let mp = self.fd.get_mp_state().context("KVM_GET_MP_STATE")?.mp_state;
        if mp == KVM_MP_STATE_UNINITIALIZED || mp == KVM_MP_STATE_INIT_RECEIVED {
            return Ok(true);
        }
        if mp != KVM_MP_STATE_HALTED {
            return Ok(false);
        }
        let regs = self.fd.get_regs().context("KVM_GET_REGS")?;
        Ok(regs.rflags & RFLAGS_IF == 0)
    }

    /// RIP and CPL, for reporting where the guest stopped.
    pub fn where_am_i(&self) -> Result<(u64, u8)> {
        let regs = self.fd.get_regs().context("KVM_GET_REGS")?;
        let sregs = self.fd.get_sregs().context("KVM_GET_SREGS")?;
        Ok((regs.rip, sregs.ss.dpl))
    }

    /// Where an emulation failure (or another internal error) left the
    /// vCPU: its registers, read once, and up to 15 bytes at RIP (as many
    /// as translate to RAM).
    pub fn refused_at(&self, ram: &impl PhysicalMemory) -> Result<RefusedAt> {
        let regs = self.fd.get_regs().context("KVM_GET_REGS")?;
        let sregs = self.fd.get_sregs().context("KVM_GET_SREGS")?;
        // Page by page: an instruction may cross into a page mapped elsewhere.
        let mut bytes = Vec::with_capacity(15);
        let mut linear = sregs.cs.base.wrapping_add(regs.rip);
        // The bytes as they are, whatever the page's rights: what the
        // emulator was given.
        let paging = Paging { cpl: 0, ac: true, ..paging(&regs, &sregs) };
        while bytes.len() < 15 {
            let mut piece = vec![0u8; (15 - bytes.len()).min(4096 - (linear & 0xfff) as usize)];
            match paging::translate(ram, &paging, linear, Access::Read) {
                Ok(phys) if ram.read(phys, &mut piece) => bytes.extend(&piece),
                _ => break,
            }
            linear = linear.wrapping_add(piece.len() as u64);
        }
        Ok(RefusedAt { regs, sregs, rip: regs.rip, cpl: sregs.ss.dpl, bytes })
    }

    /// Completes the instruction KVM's instruction emulator refused
    /// (`complete::complete`) where `at` says it stands. Registers change
    /// only when the instruction was completed.
    pub fn complete_refused(&mut self, at: &RefusedAt, ram: &impl PhysicalMemory) -> Result<complete::Outcome> {
        let mut native = self.native.take();
        let outcome = self.complete_with(at, ram, native.as_mut());
        self.native = native;
        outcome
    }

    fn complete_with(
        &self,
        at: &RefusedAt,
        ram: &impl PhysicalMemory,
        native: Option<&mut NativeCpu>,
    ) -> Result<complete::Outcome> {
        let (regs, sregs) = (at.regs, at.sregs);
        let mut m = VcpuMachine {
            vcpu: self,
            regs,
            sregs,
            ram,
            inject: None,
            xsave: None,
            native,
            page_fault: None,
            miss: Default::default(),
        };
        let outcome = complete::complete(&mut m, &at.bytes);
        if matches!(outcome, complete::Outcome::Completed(_) | complete::Outcome::Batch(_)) {
            if let Some(cr2) = m.page_fault {
                let mut sregs = m.sregs;
                sregs.cr2 = cr2;
                self.fd.set_sregs(&sregs).context("KVM_SET_SREGS")?;
            } else if let Some(area) = &m.xsave {
                let mut x = kvm_bindings::kvm_xsave::default();
                for (word, bytes) in x.region.iter_mut().zip(area.chunks_exact(4)) {
                    *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                }
                // SAFETY: only when KVM's area is the 4096 bytes of
                // kvm_xsave (xsave_fits), so KVM reads nothing past it.
                unsafe { self.fd.set_xsave(&x) }.context("KVM_SET_XSAVE")?;
            }
            if m.page_fault.is_none() {
                self.fd.set_regs(&m.regs).context("KVM_SET_REGS")?;
            }
            if let Some((vector, error_code)) = m.inject {
                let mut events = self.fd.get_vcpu_events().context("KVM_GET_VCPU_EVENTS")?;
                if vector < 32 {
                    // An exception: #BP for int3 is a trap (RIP already
                    // past it), #GP a fault (RIP still on the instruction).
                    events.exception.injected = 1;
                    events.exception.nr = vector;
                    events.exception.has_error_code = u8::from(error_code.is_some());
                    events.exception.error_code = error_code.unwrap_or(0);
                } else {
                    events.interrupt.injected = 1;
                    events.interrupt.nr = vector;
                    events.interrupt.soft = 1;
                }
                self.fd.set_vcpu_events(&events).context("KVM_SET_VCPU_EVENTS")?;
            }
        }
        Ok(outcome)
    }
}

/// The vCPU as an internal error left it (`Vcpu::refused_at`).
pub struct RefusedAt {
    regs: kvm_bindings::kvm_regs,
    sregs: kvm_bindings::kvm_sregs,
    pub rip: u64,
    /// SS.DPL.
    pub cpl: u8,
    pub bytes: Vec<u8>,
}

/// Guest-physical memory as the runner maps it.
pub trait PhysicalMemory {
    /// Fills `buf` from `gpa`; false if it is not all RAM.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool;
    /// Writes `buf` at `gpa`; false (nothing written) if it is not all
    /// writable RAM (ROM is not).
    fn write(&self, gpa: u64, buf: &[u8]) -> bool;
    /// The host address of `len` bytes at `gpa` for an atomic write, if
    /// they are all writable RAM in one mapping.
    fn writable_address(&self, gpa: u64, len: usize) -> Option<*mut u8>;
}

/// A vCPU's registers as a completion sees them, read once and written
/// back once; memory through a walk of the guest's page tables (`paging`)
/// in the runner's RAM mapping.
struct VcpuMachine<'a, M> {
    vcpu: &'a Vcpu,
    regs: kvm_bindings::kvm_regs,
    sregs: kvm_bindings::kvm_sregs,
    ram: &'a M,
    inject: Option<(u8, Option<u32>)>,
    xsave: Option<Vec<u8>>,
    native: Option<&'a mut NativeCpu>,
    /// A #PF replaces the completion: CR2 to set, nothing else committed.
    page_fault: Option<u64>,
    /// Why the last access that did not translate failed, and where:
    /// the #PF (or #GP) a fault of this completion raises.
    miss: std::cell::Cell<Option<(u64, Miss)>>,
}

/// What a page walk needs of the vCPU (`paging`).
fn paging(regs: &kvm_bindings::kvm_regs, sregs: &kvm_bindings::kvm_sregs) -> Paging {
    Paging {
        cr0: sregs.cr0,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
        cpl: sregs.ss.dpl,
        ac: regs.rflags & RFLAGS_AC != 0,
    }
}

/// Where KVM keeps a 64-bit general-purpose register (or RIP).
fn gpr(r: &mut kvm_bindings::kvm_regs, reg: Register) -> Option<&mut u64> {
    Some(match reg {
        Register::RAX => &mut r.rax,
        Register::RCX => &mut r.rcx,
        Register::RDX => &mut r.rdx,
        Register::RBX => &mut r.rbx,
        Register::RSP => &mut r.rsp,
        Register::RBP => &mut r.rbp,
        Register::RSI => &mut r.rsi,
        Register::RDI => &mut r.rdi,
        Register::R8 => &mut r.r8,
        Register::R9 => &mut r.r9,
        Register::R10 => &mut r.r10,
        Register::R11 => &mut r.r11,
        Register::R12 => &mut r.r12,
        Register::R13 => &mut r.r13,
        Register::R14 => &mut r.r14,
        Register::R15 => &mut r.r15,
        Register::RIP => &mut r.rip,
        _ => return None,
    })
}

impl<M: PhysicalMemory> VcpuMachine<'_, M> {
    /// The guest-physical address of `linear` for `access`, as the CPU
    /// would translate it (`paging`); a miss is kept for the fault.
    fn translate(&self, linear: u64, access: Access) -> Option<u64> {
        match paging::translate(self.ram, &paging(&self.regs, &self.sregs), linear, access) {
            Ok(phys) => {
                self.miss.set(None);
                Some(phys)
            }
            Err(miss) => {
                self.miss.set(Some((linear, miss)));
                None
            }
        }
    }

    /// `len` bytes at `linear`, page by page (an access may cross into a
    /// page mapped elsewhere): guest-physical address and the part of the
    /// buffer each covers. None if a page does not translate for
    /// `access`, before anything is touched.
    fn pages(&self, linear: u64, len: usize, access: Access) -> Option<Vec<(u64, std::ops::Range<usize>)>> {
        let mut pieces = Vec::new();
        let mut done = 0;
        while done < len {
            let at = linear.wrapping_add(done as u64);
            let in_page = (4096 - (at & 0xfff) as usize).min(len - done);
            pieces.push((self.translate(at, access)?, done..done + in_page));
            done += in_page;
        }
        Some(pieces)
    }

    /// Fills `buf` from `linear`, every page translated for `access`.
    fn copy_in(&self, linear: u64, buf: &mut [u8], access: Access) -> bool {
        let Some(pages) = self.pages(linear, buf.len(), access) else { return false };
        pages.into_iter().all(|(phys, r)| self.ram.read(phys, &mut buf[r]))
    }
}

impl<M: PhysicalMemory> complete::Machine for VcpuMachine<'_, M> {
    fn bitness(&self) -> u32 {
        match (self.sregs.cs.l, self.sregs.cs.db) {
            (1, _) => 64,
            (_, 1) => 32,
            _ => 16,
        }
    }
    fn rip(&self) -> u64 {
        self.regs.rip
    }
    fn set_rip(&mut self, rip: u64) {
        self.regs.rip = rip;
    }
    fn rflags(&self) -> u64 {
        self.regs.rflags
    }
    fn set_rflags(&mut self, rflags: u64) {
        self.regs.rflags = rflags;
    }
    fn gpr64(&self, reg: Register) -> u64 {
        let mut regs = self.regs;
        gpr(&mut regs, reg).map_or(0, |v| *v)
    }
    fn set_gpr64(&mut self, reg: Register, value: u64) {
        if reg != Register::RIP {
            if let Some(slot) = gpr(&mut self.regs, reg) {
                *slot = value;
            }
        }
    }
    fn segment_base(&self, seg: Register) -> u64 {
        let s = &self.sregs;
        match seg {
            Register::ES => s.es.base,
            Register::CS => s.cs.base,
            Register::SS => s.ss.base,
            Register::DS => s.ds.base,
            Register::FS => s.fs.base,
            Register::GS => s.gs.base,
            _ => 0,
        }
    }
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> bool {
        self.copy_in(linear, buf, Access::Read)
    }
    fn fetch(&mut self, linear: u64, buf: &mut [u8]) -> bool {
        self.copy_in(linear, buf, Access::Fetch)
    }
    fn write(&mut self, linear: u64, buf: &[u8]) -> bool {
        // Every page translated first, so a fault writes nothing.
        let Some(pages) = self.pages(linear, buf.len(), Access::Write) else { return false };
        pages.into_iter().all(|(phys, r)| self.ram.write(phys, &buf[r]))
    }
    fn inject(&mut self, vector: u8, error_code: Option<u32>) {
        self.inject = Some((vector, error_code));
    }
    fn xcr0(&mut self) -> Option<u64> {
        let xcrs = self.vcpu.fd.get_xcrs().ok()?;
        xcrs.xcrs.iter().take(xcrs.nr_xcrs as usize).find(|x| x.xcr == 0).map(|x| x.value)
    }
    fn xsave_area(&mut self) -> Option<Vec<u8>> {
        if !self.vcpu.xsave_fits {
            return None;
        }
        let x = self.vcpu.fd.get_xsave().ok()?;
        Some(x.region.iter().flat_map(|w| w.to_le_bytes()).collect())
    }
    fn set_xsave_area(&mut self, area: Vec<u8>) {
        self.xsave = Some(area);
    }
    fn control_registers(&self) -> (u64, u64) {
        (self.sregs.cr0, self.sregs.cr4)
    }
    fn native(&mut self) -> Option<&mut NativeCpu> {
        self.native.as_deref_mut()
    }
    fn descriptor_tables(&self) -> complete::DescriptorTables {
        let (s, ldt) = (&self.sregs, &self.sregs.ldt);
        complete::DescriptorTables {
            gdt: (s.gdt.base, u32::from(s.gdt.limit)),
            ldt: (ldt.present != 0 && ldt.unusable == 0).then_some((ldt.base, ldt.limit)),
            cpl: s.ss.dpl,
            long_mode: s.efer & EFER_LMA != 0,
        }
    }
    fn inject_page_fault(&mut self, linear: u64, _write: bool) -> bool {
        // What the walk found for the access that failed: its first byte
        // that does not translate is `linear` or the start of the next page.
        // An address that translates but is not RAM (MMIO, a hole) raises
        // nothing.
        match self.miss.take() {
            Some((at, Miss::PageFault(code))) if at == linear || at == (linear | 0xfff) + 1 => {
                self.page_fault = Some(at);
                self.inject = Some((14, Some(code)));
                true
            }
            Some((at, Miss::NonCanonical)) if at == linear => {
                // #GP(0), CR2 as it was.
                self.page_fault = Some(self.sregs.cr2);
                self.inject = Some((13, Some(0)));
                true
            }
            _ => false,
        }
    }
    fn cmpxchg16(&mut self, linear: u64, expected: u128, new: u128) -> Option<u128> {
        // 16-aligned (checked by the caller), so within one page.
        let phys = self.translate(linear, Access::Write)?;
        let ptr = self.ram.writable_address(phys, 16)?;
        #[allow(clippy::cast_possible_truncation, reason = "the two halves of a u128")]
        let (mut lo, mut hi) = (expected as u64, (expected >> 64) as u64);
        // SAFETY: `ptr` points at 16 bytes of guest RAM, mapped for the
        // runner's life and 16-aligned (guest-physical alignment is the
        // host's: regions are page-aligned); rbx is saved and restored
        // around the instruction, which LLVM reserves.
        unsafe {
            std::arch::asm!(
                "xchg {b}, rbx",
                "lock cmpxchg16b [{p}]",
                "xchg {b}, rbx",
                p = in(reg) ptr,
                b = inout(reg) new as u64 => _,
                inout("rax") lo,
                inout("rdx") hi,
                in("rcx") (new >> 64) as u64,
            );
        }
        Some(u128::from(hi) << 64 | u128::from(lo))
    }
}

#[cfg(test)]
mod tests {
    /// The numbers capvm_policy::roles::vcpu_ioctls allows for completions.
    #[test]
    fn xsave_ioctl_numbers_match_the_runner_manifest() {
        use kvm_bindings::{kvm_xcrs, kvm_xsave};
        let ior = |nr: u64, size: usize| (2u64 << 30) | ((size as u64) << 16) | (0xae << 8) | nr;
        let iow = |nr: u64, size: usize| (1u64 << 30) | ((size as u64) << 16) | (0xae << 8) | nr;
        assert_eq!(ior(0xa6, size_of::<kvm_xcrs>()), 0x8188_aea6, "KVM_GET_XCRS");
        assert_eq!(ior(0xa4, size_of::<kvm_xsave>()), 0x9000_aea4, "KVM_GET_XSAVE");
        assert_eq!(iow(0xa5, size_of::<kvm_xsave>()), 0x5000_aea5, "KVM_SET_XSAVE");
        assert_eq!(iow(0x84, size_of::<kvm_bindings::kvm_sregs>()), 0x4138_ae84, "KVM_SET_SREGS");
    }
}
