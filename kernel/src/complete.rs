//! Completing instructions the host's KVM instruction emulator refuses.
//!
//! On a paging-based host (kvm_pvm) guest CPL0 code runs in KVM's
//! emulator, which fails on some instructions every current kernel uses
//! (docs/kvm-pvm.md). The runner then hands the bytes at RIP here; an
//! instruction whose effect we can be certain of is carried out on the
//! vCPU's registers and memory, RIP moves past it, and the vCPU runs on.
//!
//! The engine is pure over [`Machine`] (registers, flags, linear memory),
//! so each completion is tested in-process against the host CPU running
//! the same instruction. On a VT-x/AMD-V host none of this runs: the
//! hardware executes these instructions itself.

use iced_x86::{
    Code, CpuidFeature, Decoder, DecoderOptions, Encoder, EncodingKind, FlowControl, Instruction,
    InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register,
};

use crate::native::{self, NativeCpu};

mod simd;
pub use simd::Batch;

/// RFLAGS bits.
const CF: u64 = 1 << 0;
const PF: u64 = 1 << 2;
const AF: u64 = 1 << 4;
const ZF: u64 = 1 << 6;
const SF: u64 = 1 << 7;
const OF: u64 = 1 << 11;
const AC: u64 = 1 << 18;
const ARITHMETIC: u64 = CF | PF | AF | ZF | SF | OF;

/// The instructions this engine completes, as the stats page counts them
/// (`completed_<kind>`).
pub const KINDS: [&str; 20] = [
    "int3",
    "int",
    "fwait",
    "clac",
    "stac",
    "popcnt",
    "lzcnt",
    "tzcnt",
    "xsave",
    "xsavec",
    "xrstor",
    "cmpxchg16b",
    "ldmxcsr",
    "stmxcsr",
    "fldcw",
    "lsl",
    "lar",
    "simd",
    "after_simd",
    "page_fault",
];

/// The standard-format XSAVE area KVM_GET_XSAVE and KVM_SET_XSAVE use.
pub const XSAVE_AREA: usize = 4096;
/// Where the XSAVE header starts, and the legacy region's fields.
const HEADER: usize = 512;
/// The x87 control word (FCW) and MXCSR in the legacy region.
const FCW: usize = 0;
const MXCSR: usize = 24;
const MXCSR_MASK: usize = 28;
/// What MXCSR_MASK means when the area says 0 (SDM vol. 1, 11.6.6).
const DEFAULT_MXCSR_MASK: u32 = 0xffbf;
const X87_STATE: [std::ops::Range<usize>; 2] = [0..24, 32..160];
const SSE_STATE: std::ops::Range<usize> = 160..416;
/// #UD, #NM, #GP.
const UD: u8 = 6;
const NM: u8 = 7;
const GP: u8 = 13;
/// The XSAVE header's XSTATE_BV, and the rest of the header (XCOMP_BV and
/// reserved bytes, which XRSTOR of a standard area wants zero).
const XSTATE_BV: usize = HEADER;
const HEADER_REST: std::ops::Range<usize> = HEADER + 8..HEADER + 64;
/// CR0.EM, CR0.TS, CR4.OSFXSR, CR4.OSXSAVE.
const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXSAVE: u64 = 1 << 18;
/// The x87 status word's exception summary (a pending x87 exception).
const FSW: usize = 2;
const FSW_ES: u16 = 1 << 7;

/// What became of a refused instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Carried out; the name counts it on the stats page ("popcnt").
    Completed(&'static str),
    /// A refused SIMD instruction and the run after it (`simd::run`),
    /// counted as `simd` and `after_simd`.
    Batch(Batch),
    /// Not an instruction this engine completes: the mnemonic, for the
    /// one line that stops the VM.
    Unsupported(String),
    /// The bytes do not decode (cut short, or not an instruction).
    Undecodable,
    /// A memory operand did not translate and no #PF could be raised
    /// (`Machine::inject_page_fault` said no): the VM stops with the address.
    Fault { linear: u64, write: bool },
}

/// The vCPU state a completion reads and changes.
pub trait Machine {
    /// 16, 32 or 64: the code size at RIP.
    fn bitness(&self) -> u32;
    fn rip(&self) -> u64;
    fn set_rip(&mut self, rip: u64);
    fn rflags(&self) -> u64;
    fn set_rflags(&mut self, rflags: u64);
    /// A full 64-bit general-purpose register (RAX..R15, RIP).
    fn gpr64(&self, reg: Register) -> u64;
    fn set_gpr64(&mut self, reg: Register, value: u64);
    /// The base of a segment register (FS and GS in 64-bit mode).
    fn segment_base(&self, seg: Register) -> u64;
    /// Reads linear guest memory; false if an address does not translate.
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> bool;
    /// Reads instruction bytes (a fetch: no-execute pages refuse it).
    fn fetch(&mut self, linear: u64, buf: &mut [u8]) -> bool {
        self.read(linear, buf)
    }
    /// Injects an exception vector (< 32) or a software interrupt, with
    /// an error code for the exceptions that have one.
    fn inject(&mut self, vector: u8, error_code: Option<u32>);
    /// Writes linear guest memory; false if an address does not translate
    /// or is not writable (nothing is written then).
    fn write(&mut self, linear: u64, buf: &[u8]) -> bool;
    /// XCR0, and the vCPU's extended state as a standard-format XSAVE area
    /// of XSAVE_AREA bytes (None where the host cannot give them).
    fn xcr0(&mut self) -> Option<u64>;
    fn xsave_area(&mut self) -> Option<Vec<u8>>;
    /// The extended state to load when the completion is committed.
    fn set_xsave_area(&mut self, area: Vec<u8>);
    /// Atomically (as other vCPUs see guest RAM) compares the 16 bytes at
    /// `linear` with `expected` and, if equal, stores `new`. Returns the
    /// value found; None if the address does not translate writable.
    fn cmpxchg16(&mut self, linear: u64, expected: u128, new: u128) -> Option<u128>;
    /// CR0 and CR4 (which SIMD instructions may run, and what they raise).
    fn control_registers(&self) -> (u64, u64);
    /// Where instructions run natively (`simd`); None where there is none.
    fn native(&mut self) -> Option<&mut NativeCpu>;
    /// Raises the #PF an access to `linear` takes (CR2 and the error code
    /// as the CPU sets them) instead of the completion: registers, RIP and
    /// the XSAVE state stay as they were. False where it cannot.
    fn inject_page_fault(&mut self, linear: u64, write: bool) -> bool;
    /// The descriptor tables and the CPL, for LSL and LAR.
    fn descriptor_tables(&self) -> DescriptorTables;
}

/// Where the vCPU's descriptors are, and its privilege level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DescriptorTables {
    /// The GDT's linear base and limit (its last byte's offset).
    pub gdt: (u64, u32),
    /// The LDT's, when one is loaded.
    pub ldt: Option<(u64, u32)>,
    pub cpl: u8,
    /// IA-32e mode (EFER.LMA): which system descriptor types exist.
    pub long_mode: bool,
}

/// Offset and size of XSAVE state component `i` (2-62) in the standard
/// format, as CPUID leaf 0xD enumerates it (the guest sees the host's leaf
/// on a paging-based host; KVM's area uses the same layout).
fn component(i: u32) -> std::ops::Range<usize> {
    let c = std::arch::x86_64::__cpuid_count(0xd, i);
    c.ebx as usize..(c.ebx as usize + c.eax as usize)
}

/// XCOMP_BV's bit 63: the area is in the compacted format.
const COMPACTED: u64 = 1 << 63;

/// Where each component of `xcomp` (2-62) sits in a compacted area: in
/// order from byte 576, each aligned to 64 where CPUID says so.
fn compacted_offsets(xcomp: u64) -> Vec<(u32, usize)> {
    let mut at = HEADER + 64;
    let mut out = Vec::new();
    for i in 2..63 {
        if xcomp & (1 << i) == 0 {
            continue;
        }
        let c = std::arch::x86_64::__cpuid_count(0xd, i);
        if c.ecx & 2 != 0 {
            at = at.next_multiple_of(64);
        }
        out.push((i, at));
        at += c.eax as usize;
    }
    out
}

/// The byte ranges of component `i` in memory: the standard layout, or
/// the compacted one for `xcomp` (x87 and SSE sit in the legacy region
/// either way). None for a component a compacted area does not hold.
fn memory_ranges(i: u32, xcomp: Option<u64>) -> Option<Vec<std::ops::Range<usize>>> {
    match (i, xcomp) {
        (0, _) => Some(X87_STATE.to_vec()),
        (1, _) => Some(vec![SSE_STATE]),
        (i, None) => Some(vec![component(i)]),
        (i, Some(xcomp)) => {
            let (_, at) = compacted_offsets(xcomp).into_iter().find(|&(c, _)| c == i)?;
            Some(std::iter::once(at..at + component(i).len()).collect())
        }
    }
}

/// Every component of `rfbm`: (bit, byte ranges in the standard area).
fn ranges(rfbm: u64) -> Vec<(u32, Vec<std::ops::Range<usize>>)> {
    (0..63)
        .filter(|i| rfbm & (1 << i) != 0)
        .filter_map(|i| Some((i, memory_ranges(i, None)?)))
        .filter(|(_, r)| r.iter().all(|r| r.end <= XSAVE_AREA && r.start < r.end))
        .collect()
}

/// The little-endian u64 and u32 at `at` (0 past the end: callers size
/// their buffers).
fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map_or(0, u64::from_le_bytes)
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).and_then(|s| s.try_into().ok()).map_or(0, u32::from_le_bytes)
}

/// The linear address of memory operand `n`, as the CPU computes it.
fn memory_address(m: &impl Machine, insn: &Instruction, n: u32) -> Result<u64, Outcome> {
    insn.virtual_address(n, 0, |reg, _, _| Some(register_for_address(m, reg))).ok_or(Outcome::Undecodable)
}

/// Writes each (offset, bytes) at `linear + offset`, stopping at a fault.
fn write_all<B: AsRef<[u8]>>(m: &mut impl Machine, linear: u64, writes: &[(usize, B)]) -> Result<(), Outcome> {
    for (offset, bytes) in writes {
        let at = linear + *offset as u64;
        if !m.write(at, bytes.as_ref()) {
            return Err(Outcome::Fault { linear: at, write: true });
        }
    }
    Ok(())
}

/// Decodes the instruction at RIP from `bytes` and completes it.
pub fn complete(m: &mut impl Machine, bytes: &[u8]) -> Outcome {
    let mut decoder = Decoder::with_ip(m.bitness(), bytes, m.rip(), DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Outcome::Undecodable;
    }
    let done = match insn.mnemonic() {
        Mnemonic::Int3 => {
            m.set_rip(insn.next_ip());
            m.inject(3, None);
            Ok("int3")
        }
        Mnemonic::Int => {
            m.set_rip(insn.next_ip());
            m.inject(insn.immediate8(), None);
            Ok("int")
        }
        // Waits for a pending unmasked x87 exception: kernels run with x87
        // exceptions masked, so there is none (a wrong guess loses a #MF).
        Mnemonic::Wait => {
            m.set_rip(insn.next_ip());
            Ok("fwait")
        }
        Mnemonic::Clac | Mnemonic::Stac => {
            let stac = insn.mnemonic() == Mnemonic::Stac;
            m.set_rflags(m.rflags() & !AC | if stac { AC } else { 0 });
            m.set_rip(insn.next_ip());
            Ok(if stac { "stac" } else { "clac" })
        }
        Mnemonic::Xsavec | Mnemonic::Xsavec64 => xsavec(m, &insn),
        Mnemonic::Xsave | Mnemonic::Xsave64 | Mnemonic::Xsaveopt | Mnemonic::Xsaveopt64 => xsave(m, &insn),
        Mnemonic::Xrstor | Mnemonic::Xrstor64 => xrstor(m, &insn),
        Mnemonic::Cmpxchg16b => cmpxchg16b(m, &insn),
        Mnemonic::Ldmxcsr | Mnemonic::Vldmxcsr => ldmxcsr(m, &insn),
        Mnemonic::Stmxcsr | Mnemonic::Vstmxcsr => stmxcsr(m, &insn),
        Mnemonic::Fldcw => fldcw(m, &insn),
        Mnemonic::Popcnt | Mnemonic::Lzcnt | Mnemonic::Tzcnt => count_bits(m, &insn),
        Mnemonic::Lsl | Mnemonic::Lar => limit_or_rights(m, &insn),
        _ if simd::simd_features(&insn).is_some() => match simd::run(m, &insn) {
            Ok(batch) if batch.simd + batch.plain > 1 => return Outcome::Batch(batch),
            done => done.map(|_| "simd"),
        },
        other => Err(Outcome::Unsupported(format!("{other:?}").to_lowercase())),
    };
    match done {
        Ok(kind) => Outcome::Completed(kind),
        // The guest takes the #PF the CPU would have raised; RIP stays on
        // the instruction and nothing else of the completion is kept.
        Err(Outcome::Fault { linear, write }) if m.inject_page_fault(linear, write) => Outcome::Completed("page_fault"),
        Err(outcome) => outcome,
    }
}

/// LDMXCSR m32 (the kernel's kernel_fpu_begin sets the default MXCSR
/// with it): the SSE control word into the vCPU's state, #GP(0) for a
/// reserved bit (outside MXCSR_MASK) as the CPU does. KVM_SET_XSAVE takes
/// MXCSR only with the SSE (or x87) bit in XSTATE_BV, which it sets.
fn ldmxcsr(m: &mut impl Machine, insn: &Instruction) -> Result<&'static str, Outcome> {
    let linear = memory_address(m, insn, 0)?;
    let mut value = [0u8; 4];
    if !m.read(linear, &mut value) {
        return Err(Outcome::Fault { linear, write: false });
    }
    let mut area = m.xsave_area().ok_or_else(|| Outcome::Unsupported("ldmxcsr (no KVM_GET_XSAVE)".into()))?;
    let mask = match le32(&area, MXCSR_MASK) {
        0 => DEFAULT_MXCSR_MASK,
        mask => mask,
    };
    if u32::from_le_bytes(value) & !mask != 0 {
        m.inject(GP, Some(0));
        return Ok("ldmxcsr");
    }
    area[MXCSR..MXCSR + 4].copy_from_slice(&value);
    let bv = le64(&area, HEADER) | 0b10;
    area[HEADER..HEADER + 8].copy_from_slice(&bv.to_le_bytes());
    m.set_xsave_area(area);
    m.set_rip(insn.next_ip());
    Ok("ldmxcsr")
}

/// FLDCW m16 (firmware's FPU set-up, OVMF's first instructions): the x87
/// control word into the vCPU's state, with the x87 bit in XSTATE_BV so
/// KVM_SET_XSAVE takes it. (FNSTCW, FNINIT and FNSTSW the host's
/// emulator runs itself.) Unmasking an exception that is pending would
/// raise #MF at the next x87 instruction; KVM keeps FSW as it was.
fn fldcw(m: &mut impl Machine, insn: &Instruction) -> Result<&'static str, Outcome> {
    let linear = memory_address(m, insn, 0)?;
    let mut value = [0u8; 2];
    if !m.read(linear, &mut value) {
        return Err(Outcome::Fault { linear, write: false });
    }
    let mut area = m.xsave_area().ok_or_else(|| Outcome::Unsupported("fldcw (no KVM_GET_XSAVE)".into()))?;
    // As the CPU keeps it: bit 6 reads as one, bits 7 and 13-15 as zero.
    let fcw = u16::from_le_bytes(value) & 0x1f3f | 0x0040;
    area[FCW..FCW + 2].copy_from_slice(&fcw.to_le_bytes());
    let bv = le64(&area, HEADER) | 0b01;
    area[HEADER..HEADER + 8].copy_from_slice(&bv.to_le_bytes());
    m.set_xsave_area(area);
    m.set_rip(insn.next_ip());
    Ok("fldcw")
}

/// STMXCSR m32: the SSE control word from the vCPU's state into memory.
fn stmxcsr(m: &mut impl Machine, insn: &Instruction) -> Result<&'static str, Outcome> {
    let linear = memory_address(m, insn, 0)?;
    let area = m.xsave_area().ok_or_else(|| Outcome::Unsupported("stmxcsr (no KVM_GET_XSAVE)".into()))?;
    write_all(m, linear, &[(0, &area[MXCSR..MXCSR + 4])])?;
    m.set_rip(insn.next_ip());
    Ok("stmxcsr")
}

/// The XSAVE family's operands: the area's linear address, RFBM
/// (XCR0 & EDX:EAX) and XCR0; None after injecting #GP for a misaligned
/// area.
fn xsave_operands(m: &mut impl Machine, insn: &Instruction) -> Result<Option<(u64, u64, u64)>, Outcome> {
    let linear = memory_address(m, insn, 0)?;
    let xcr0 = m.xcr0().ok_or_else(|| Outcome::Unsupported("xsave (no XCR0)".into()))?;
    if linear % 64 != 0 {
        m.inject(GP, Some(0));
        return Ok(None);
    }
    let requested = (m.gpr64(Register::RDX) << 32) | (m.gpr64(Register::RAX) & 0xffff_ffff);
    Ok(Some((linear, xcr0 & requested, xcr0)))
}

/// XSAVE and XSAVEOPT (standard format; XSAVEOPT may always write what it
/// was asked to, which is what this does): the components of RFBM from
/// the vCPU's state into memory, and their XSTATE_BV bits.
fn xsave(m: &mut impl Machine, insn: &Instruction) -> Result<&'static str, Outcome> {
    let Some((linear, rfbm, _)) = xsave_operands(m, insn)? else { return Ok("xsave") };
    let area = m.xsave_area().ok_or_else(|| Outcome::Unsupported("xsave (no KVM_GET_XSAVE)".into()))?;
    let mut mem = vec![0u8; HEADER + 64];
    if !m.read(linear, &mut mem) {
        return Err(Outcome::Fault { linear, write: false });
    }
    let mut writes: Vec<(usize, &[u8])> = Vec::new();
    for (_, rs) in ranges(rfbm) {
        writes.extend(rs.into_iter().map(|r| (r.start, &area[r])));
    }
    if rfbm & 0b110 != 0 {
        writes.push((MXCSR, &area[MXCSR..MXCSR_MASK + 4]));
    }
    let bv = ((le64(&mem, HEADER) & !rfbm) | (le64(&area, HEADER) & rfbm)).to_le_bytes();
    writes.push((HEADER, &bv));
    write_all(m, linear, &writes)?;
    m.set_rip(insn.next_ip());
    Ok("xsave")
}

/// XSAVEC: the compacted format. Only the requested components that are
/// not in their initial state (XINUSE, which KVM's area tells by its
/// XSTATE_BV) are written, each at its compacted place, MXCSR with SSE;
/// the header says XSTATE_BV = XINUSE & RFBM and
/// XCOMP_BV = RFBM with the compacted bit.
fn xsavec(m: &mut impl Machine, insn: &Instruction) -> Result<&'static str, Outcome> {
    let Some((linear, rfbm, _)) = xsave_operands(m, insn)? else { return Ok("xsavec") };
    let area = m.xsave_area().ok_or_else(|| Outcome::Unsupported("xsavec (no KVM_GET_XSAVE)".into()))?;
    let written = rfbm & le64(&area, HEADER);
    let mut writes: Vec<(usize, Vec<u8>)> = Vec::new();
    for (i, standard) in ranges(written) {
        let Some(place) = memory_ranges(i, Some(rfbm)) else { continue };
        for (from, to) in standard.into_iter().zip(place) {
            writes.push((to.start, area[from].to_vec()));
        }
    }
    // MXCSR belongs to the SSE component in the compacted format.
    if written & 0b10 != 0 {
        writes.push((MXCSR, area[MXCSR..MXCSR + 4].to_vec()));
    }
    // XSTATE_BV and XCOMP_BV; the CPU leaves the rest of the header alone.
    let mut header = [0u8; 16];
    header[0..8].copy_from_slice(&written.to_le_bytes());
    header[8..16].copy_from_slice(&(rfbm | COMPACTED).to_le_bytes());
    writes.push((HEADER, header.to_vec()));
    write_all(m, linear, &writes)?;
    m.set_rip(insn.next_ip());
    Ok("xsavec")
}

/// XRSTOR, standard or compacted format: for each component of RFBM, its
/// state from memory where XSTATE_BV says it is there, else its initial
/// state; #GP for a header or MXCSR the CPU would refuse.
fn xrstor(m: &mut impl Machine, insn: &Instruction) -> Result<&'static str, Outcome> {
    let Some((linear, rfbm, xcr0)) = xsave_operands(m, insn)? else { return Ok("xrstor") };
    // The legacy region and the header first: the header says the format,
    // and so how much more there is to read.
    let mut mem = vec![0u8; XSAVE_AREA];
    if !m.read(linear, &mut mem[..HEADER + 64]) {
        return Err(Outcome::Fault { linear, write: false });
    }
    let (bv, comp) = (le64(&mem, HEADER), le64(&mem, HEADER + 8));
    let compacted = comp & COMPACTED != 0;
    let xcomp = compacted.then_some(comp & !COMPACTED);
    let end = match xcomp {
        Some(xcomp) => compacted_offsets(xcomp).last().map_or(0, |&(i, at)| at + component(i).len()),
        None => ranges(rfbm).iter().flat_map(|(_, rs)| rs.iter().map(|r| r.end)).max().unwrap_or(0),
    };
    let end = end.clamp(HEADER + 64, XSAVE_AREA);
    if !m.read(linear + (HEADER + 64) as u64, &mut mem[HEADER + 64..end]) {
        return Err(Outcome::Fault { linear: linear + (HEADER + 64) as u64, write: false });
    }
    let mut area = m.xsave_area().ok_or_else(|| Outcome::Unsupported("xrstor (no KVM_GET_XSAVE)".into()))?;
    let mask = match le32(&area, MXCSR_MASK) {
        0 => 0xffbf,
        mask => mask,
    };
    let mxcsr = le32(&mem, MXCSR);
    let bad_header = bv & !xcr0 != 0
        || match xcomp {
            None => comp != 0,
            Some(xcomp) => xcomp & !xcr0 != 0 || bv & !xcomp != 0,
        }
        || mem[HEADER + 16..HEADER + 64].iter().any(|&b| b != 0);
    // The standard format loads MXCSR with SSE or AVX requested; the
    // compacted one with the SSE component it holds, else initializes it.
    let loads_mxcsr = if compacted { rfbm & bv & 0b10 != 0 } else { rfbm & 0b110 != 0 };
    if bad_header || (loads_mxcsr && mxcsr & !mask != 0) {
        m.inject(GP, Some(0));
        return Ok("xrstor");
    }
    for (i, rs) in ranges(rfbm) {
        let place = memory_ranges(i, xcomp);
        let from_memory = bv & (1 << i) != 0 && place.is_some();
        for (k, r) in rs.into_iter().enumerate() {
            match place.as_ref().and_then(|p| p.get(k)).filter(|_| from_memory) {
                Some(src) if src.end <= XSAVE_AREA => area[r].copy_from_slice(&mem[src.clone()]),
                _ => area[r].fill(0),
            }
        }
        if i == 0 && !from_memory {
            // x87 initial state: FCW 0x037f, everything else 0.
            area[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        }
    }
    if loads_mxcsr {
        area[MXCSR..MXCSR + 4].copy_from_slice(&mxcsr.to_le_bytes());
    } else if compacted && rfbm & 0b10 != 0 {
        area[MXCSR..MXCSR + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
    }
    let area_bv = (le64(&area, HEADER) & !rfbm) | (bv & rfbm);
    area[HEADER..HEADER + 8].copy_from_slice(&area_bv.to_le_bytes());
    m.set_xsave_area(area);
    m.set_rip(insn.next_ip());
    Ok("xrstor")
}

/// (LOCK) CMPXCHG16B m128: RDX:RAX against memory; equal: ZF and RCX:RBX
/// stored, else ZF clear and RDX:RAX loaded; #GP(0) if not 16-aligned.
/// One atomic operation on the runner's mapping of guest RAM, so other
/// vCPUs see it as the CPU would have done it.
fn cmpxchg16b(m: &mut impl Machine, insn: &Instruction) -> Result<&'static str, Outcome> {
    let linear = memory_address(m, insn, 0)?;
    if linear % 16 != 0 {
        m.inject(GP, Some(0));
        return Ok("cmpxchg16b");
    }
    let pair = |hi: Register, lo: Register| u128::from(m.gpr64(hi)) << 64 | u128::from(m.gpr64(lo));
    let (expected, new) = (pair(Register::RDX, Register::RAX), pair(Register::RCX, Register::RBX));
    let found = m.cmpxchg16(linear, expected, new).ok_or(Outcome::Fault { linear, write: true })?;
    let zf = if found == expected { ZF } else { 0 };
    if found != expected {
        #[allow(clippy::cast_possible_truncation, reason = "the two halves of a u128")]
        let (hi, lo) = ((found >> 64) as u64, found as u64);
        m.set_gpr64(Register::RDX, hi);
        m.set_gpr64(Register::RAX, lo);
    }
    m.set_rflags(m.rflags() & !ZF | zf);
    m.set_rip(insn.next_ip());
    Ok("cmpxchg16b")
}

/// POPCNT, LZCNT, TZCNT r, r/m (16, 32 or 64 bits).
fn count_bits(m: &mut impl Machine, insn: &Instruction) -> Result<&'static str, Outcome> {
    let (width, kind) = match insn.code() {
        Code::Popcnt_r16_rm16 => (16, "popcnt"),
        Code::Popcnt_r32_rm32 => (32, "popcnt"),
        Code::Popcnt_r64_rm64 => (64, "popcnt"),
        Code::Lzcnt_r16_rm16 => (16, "lzcnt"),
        Code::Lzcnt_r32_rm32 => (32, "lzcnt"),
        Code::Lzcnt_r64_rm64 => (64, "lzcnt"),
        Code::Tzcnt_r16_rm16 => (16, "tzcnt"),
        Code::Tzcnt_r32_rm32 => (32, "tzcnt"),
        Code::Tzcnt_r64_rm64 => (64, "tzcnt"),
        other => return Err(Outcome::Unsupported(format!("{other:?}").to_lowercase())),
    };
    let mask = if width == 64 { u64::MAX } else { (1u64 << width) - 1 };
    let src = operand_value(m, insn, 1, width)? & mask;
    let (result, flags) = match kind {
        // ZF if the source is 0; CF, OF, SF, AF, PF cleared.
        "popcnt" => (u64::from(src.count_ones()), if src == 0 { ZF } else { 0 }),
        // CF if the source is 0 (the result is then the width), ZF if the
        // result is 0; OF, SF, AF, PF are undefined: left cleared.
        "lzcnt" => {
            let n = u64::from(src.leading_zeros()) - (64 - width);
            (n, if src == 0 { CF } else { 0 } | if n == 0 { ZF } else { 0 })
        }
        _ => {
            let n = if src == 0 { width } else { u64::from(src.trailing_zeros()) };
            (n, if src == 0 { CF } else { 0 } | if n == 0 { ZF } else { 0 })
        }
    };
    write_register(m, insn.op0_register(), width, result);
    m.set_rflags(m.rflags() & !ARITHMETIC | flags);
    m.set_rip(insn.next_ip());
    Ok(kind)
}

/// LSL and LAR: a descriptor's segment limit (bytes, granularity
/// applied) or access rights, with ZF set, if the selector names a
/// descriptor this CPL may see; else ZF clear and the destination kept.
/// Linux reads its getcpu segment with `lsl` (in the NMI backtrace an RCU
/// stall triggers, for one), and the emulator refuses it.
fn limit_or_rights(m: &mut impl Machine, insn: &Instruction) -> Result<&'static str, Outcome> {
    let (width, kind) = match insn.code() {
        Code::Lsl_r16_rm16 => (16, "lsl"),
        Code::Lsl_r32_r32m16 => (32, "lsl"),
        Code::Lsl_r64_r64m16 => (64, "lsl"),
        Code::Lar_r16_rm16 => (16, "lar"),
        Code::Lar_r32_r32m16 => (32, "lar"),
        Code::Lar_r64_r64m16 => (64, "lar"),
        other => return Err(Outcome::Unsupported(format!("{other:?}").to_lowercase())),
    };
    // The selector: a 16-bit memory operand, or a register's low 16 bits.
    let selector = operand_value(m, insn, 1, 16)? as u16;
    let tables = m.descriptor_tables();
    let seen = match descriptor(m, &tables, selector)? {
        Some(d) if descriptor_visible(d, selector, &tables, kind == "lar") => Some(d),
        _ => None,
    };
    let flags = match seen {
        Some(d) => {
            // LAR: the descriptor's second dword, bits 8-23 (19:16, which
            // the SDM leaves undefined, hold the limit's top on the CPU).
            let value = if kind == "lar" { d >> 32 & 0x00ff_ff00 } else { segment_limit(d) };
            write_register(m, insn.op0_register(), width, value);
            m.rflags() | ZF
        }
        None => m.rflags() & !ZF,
    };
    m.set_rflags(flags);
    m.set_rip(insn.next_ip());
    Ok(kind)
}

/// The 8-byte descriptor `selector` names; None for the null selector, a
/// selector past its table's limit or into a missing LDT.
fn descriptor(m: &mut impl Machine, t: &DescriptorTables, selector: u16) -> Result<Option<u64>, Outcome> {
    let index = u64::from(selector & !7);
    let table = match (selector & 4 != 0, t.ldt) {
        (true, Some(ldt)) => ldt,
        (true, None) => return Ok(None),
        (false, _) if index == 0 => return Ok(None),
        (false, _) => t.gdt,
    };
    if index + 7 > u64::from(table.1) {
        return Ok(None);
    }
    let linear = table.0.wrapping_add(index);
    let mut d = [0u8; 8];
    if !m.read(linear, &mut d) {
        return Err(Outcome::Fault { linear, write: false });
    }
    Ok(Some(u64::from_le_bytes(d)))
}

/// Whether LSL (or LAR) may report this descriptor: code and data
/// segments, and the system types that have a limit (LAR: and call
/// gates); DPL at least CPL and RPL, but for conforming code.
fn descriptor_visible(d: u64, selector: u16, t: &DescriptorTables, lar: bool) -> bool {
    let (system, kind, dpl) = (d >> 44 & 1 == 0, d >> 40 & 0xf, (d >> 45 & 3) as u8);
    let kind_ok = match (system, t.long_mode) {
        (false, _) => true,
        // LDT, 64-bit TSS available and busy; LAR also 64-bit call gates.
        (true, true) => matches!(kind, 2 | 9 | 0xb) || lar && kind == 0xc,
        // 16- and 32-bit TSS, LDT; LAR also call and task gates.
        (true, false) => matches!(kind, 1 | 2 | 3 | 9 | 0xb) || lar && matches!(kind, 4 | 5 | 0xc),
    };
    let conforming_code = !system && kind & 0b1100 == 0b1100;
    kind_ok && (conforming_code || dpl >= t.cpl && dpl >= (selector & 3) as u8)
}

/// A descriptor's limit in bytes: 20 bits, in 4 KiB units when G is set.
fn segment_limit(d: u64) -> u64 {
    let raw = d & 0xffff | (d >> 48 & 0xf) << 16;
    if d >> 55 & 1 != 0 {
        raw << 12 | 0xfff
    } else {
        raw
    }
}

/// The value of operand `n` (a register or memory), `width` bits.
fn operand_value(m: &mut impl Machine, insn: &Instruction, n: u32, width: u64) -> Result<u64, Outcome> {
    match insn.op_kind(n) {
        OpKind::Register => Ok(read_register(m, insn.op_register(n))),
        OpKind::Memory => {
            let linear = memory_address(m, insn, n)?;
            let mut buf = [0u8; 8];
            let len = (width / 8) as usize;
            if !m.read(linear, &mut buf[..len]) {
                return Err(Outcome::Fault { linear, write: false });
            }
            Ok(u64::from_le_bytes(buf))
        }
        _ => Err(Outcome::Undecodable),
    }
}

/// A register's value as an address computation needs it.
fn register_for_address(m: &impl Machine, reg: Register) -> u64 {
    if reg.is_segment_register() {
        // Flat segments but FS and GS in 64-bit mode; in other modes the
        // descriptor bases (flat in every kernel capvm boots).
        return m.segment_base(reg);
    }
    read_register(m, reg)
}

/// A general-purpose register of any width.
fn read_register(m: &impl Machine, reg: Register) -> u64 {
    let full = m.gpr64(reg.full_register());
    match reg.size() {
        8 => full,
        4 => full & 0xffff_ffff,
        2 => full & 0xffff,
        // AH, CH, DH, BH: bits 8-15.
        _ if matches!(reg, Register::AH | Register::CH | Register::DH | Register::BH) => (full >> 8) & 0xff,
        _ => full & 0xff,
    }
}

/// Writes a destination register as the CPU does: a 32-bit write clears
/// bits 32-63, a 16-bit write keeps them.
fn write_register(m: &mut impl Machine, reg: Register, width: u64, value: u64) {
    let full = reg.full_register();
    let old = m.gpr64(full);
    let new = match width {
        64 => value,
        32 => value & 0xffff_ffff,
        _ => old & !0xffff | value & 0xffff,
    };
    m.set_gpr64(full, new);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Registers, flags, two pages of memory at MEM, XCR0 and an XSAVE area.
    #[derive(Debug, Clone, PartialEq)]
    struct Fake {
        gpr: [u64; 16],
        rip: u64,
        rflags: u64,
        mem: Vec<u8>,
        injected: Vec<(u8, Option<u32>)>,
        xcr0: u64,
        area: Vec<u8>,
        cr0: u64,
        cr4: u64,
        native: Native,
        /// CR2 as a #PF sets it; whether the machine can raise one.
        cr2: u64,
        can_fault: bool,
        tables: DescriptorTables,
    }

    /// A NativeCpu for the Fake (every Fake gets its own pages; states
    /// compare equal whatever they hold).
    struct Native(Option<NativeCpu>);

    impl std::fmt::Debug for Native {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("NativeCpu")
        }
    }

    impl Clone for Native {
        fn clone(&self) -> Native {
            Native(NativeCpu::new().ok())
        }
    }

    impl PartialEq for Native {
        fn eq(&self, _: &Native) -> bool {
            true
        }
    }

    const MEM: u64 = 0x10_0000;

    impl Fake {
        fn new() -> Fake {
            Fake {
                gpr: [0; 16],
                rip: 0x1000,
                rflags: 0x2,
                mem: vec![0; 2 * XSAVE_AREA],
                injected: Vec::new(),
                xcr0: 0b111,
                area: vec![0; XSAVE_AREA],
                cr0: 0x8000_0033,
                cr4: CR4_OSFXSR | CR4_OSXSAVE | 1 << 10,
                native: Native(NativeCpu::new().ok()),
                cr2: 0,
                can_fault: true,
                tables: DescriptorTables { gdt: (MEM, 0x7f), ldt: None, cpl: 0, long_mode: true },
            }
        }
        fn index(reg: Register) -> usize {
            reg.number()
        }
    }

    impl Machine for Fake {
        fn bitness(&self) -> u32 {
            64
        }
        fn rip(&self) -> u64 {
            self.rip
        }
        fn set_rip(&mut self, rip: u64) {
            self.rip = rip;
        }
        fn rflags(&self) -> u64 {
            self.rflags
        }
        fn set_rflags(&mut self, rflags: u64) {
            self.rflags = rflags;
        }
        fn gpr64(&self, reg: Register) -> u64 {
            if reg == Register::RIP {
                return self.rip;
            }
            self.gpr[Fake::index(reg)]
        }
        fn set_gpr64(&mut self, reg: Register, value: u64) {
            self.gpr[Fake::index(reg)] = value;
        }
        fn segment_base(&self, _: Register) -> u64 {
            0
        }
        fn read(&mut self, linear: u64, buf: &mut [u8]) -> bool {
            let Some(at) = linear.checked_sub(MEM).map(|a| a as usize) else { return false };
            match self.mem.get(at..at + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
        fn inject(&mut self, vector: u8, error_code: Option<u32>) {
            self.injected.push((vector, error_code));
        }
        fn write(&mut self, linear: u64, buf: &[u8]) -> bool {
            let Some(at) = linear.checked_sub(MEM).map(|a| a as usize) else { return false };
            match self.mem.get_mut(at..at + buf.len()) {
                Some(dst) => {
                    dst.copy_from_slice(buf);
                    true
                }
                None => false,
            }
        }
        fn xcr0(&mut self) -> Option<u64> {
            Some(self.xcr0)
        }
        fn xsave_area(&mut self) -> Option<Vec<u8>> {
            Some(self.area.clone())
        }
        fn set_xsave_area(&mut self, area: Vec<u8>) {
            self.area = area;
        }
        fn cmpxchg16(&mut self, linear: u64, expected: u128, new: u128) -> Option<u128> {
            let mut buf = [0u8; 16];
            if !self.read(linear, &mut buf) {
                return None;
            }
            let found = u128::from_le_bytes(buf);
            if found == expected {
                self.write(linear, &new.to_le_bytes());
            }
            Some(found)
        }
        fn control_registers(&self) -> (u64, u64) {
            (self.cr0, self.cr4)
        }
        fn native(&mut self) -> Option<&mut NativeCpu> {
            self.native.0.as_mut()
        }
        fn inject_page_fault(&mut self, linear: u64, write: bool) -> bool {
            if self.can_fault {
                // Outside the Fake's memory nothing is present.
                self.cr2 = linear;
                self.injected.push((14, Some(u32::from(write) << 1)));
            }
            self.can_fault
        }
        fn descriptor_tables(&self) -> DescriptorTables {
            self.tables
        }
    }

    /// What the host CPU says: the destination and flags after `insn dst,
    /// src` on registers of the width the modifier names ("" 64, ":e" 32,
    /// ":x" 16 bits).
    macro_rules! native {
        ($insn:literal, $width:literal, $src:expr, $dst:expr) => {{
            let mut dst: u64 = $dst;
            let flags: u64;
            // SAFETY: a register-only instruction and pushfq/pop.
            unsafe {
                std::arch::asm!(
                    concat!($insn, " {d", $width, "}, {s", $width, "}"),
                    "pushfq",
                    "pop {f}",
                    d = inout(reg) dst,
                    s = in(reg) $src,
                    f = out(reg) flags,
                );
            }
            (dst, flags)
        }};
    }

    fn values() -> Vec<u64> {
        let mut v = vec![0, 1, 2, 3, 0x80, 0x8000, 0x8000_0000, 1 << 63, u64::MAX, 0xffff, 0xffff_ffff, 0x1_0000];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(x);
            v.push(x >> (x % 64));
        }
        v
    }

    /// Runs `bytes` (op rax, rbx) on the fake with RBX = src, RAX = dst.
    fn emulate(bytes: &[u8], src: u64, dst: u64) -> (u64, u64, Outcome) {
        let mut f = Fake::new();
        f.gpr[0] = dst;
        f.gpr[3] = src;
        f.rflags = 0x2 | ARITHMETIC;
        let outcome = complete(&mut f, bytes);
        assert_eq!(f.rip, 0x1000 + bytes.len() as u64, "RIP moves past the instruction");
        (f.gpr[0], f.rflags, outcome)
    }

    #[test]
    fn popcnt_lzcnt_tzcnt_match_the_host_cpu_at_every_width() {
        // popcnt/lzcnt/tzcnt rax, rbx at 64, 32 and 16 bits.
        let defined = |kind: &str| if kind == "popcnt" { ARITHMETIC } else { CF | ZF };
        for src in values() {
            let dst = 0x1234_5678_9abc_def0;
            let cases: [(&[u8], &str, (u64, u64)); 9] = [
                (&[0xf3, 0x48, 0x0f, 0xb8, 0xc3], "popcnt", native!("popcnt", "", src, dst)),
                (&[0xf3, 0x48, 0x0f, 0xbd, 0xc3], "lzcnt", native!("lzcnt", "", src, dst)),
                (&[0xf3, 0x48, 0x0f, 0xbc, 0xc3], "tzcnt", native!("tzcnt", "", src, dst)),
                (&[0xf3, 0x0f, 0xb8, 0xc3], "popcnt", native!("popcnt", ":e", src, dst)),
                (&[0xf3, 0x0f, 0xbd, 0xc3], "lzcnt", native!("lzcnt", ":e", src, dst)),
                (&[0xf3, 0x0f, 0xbc, 0xc3], "tzcnt", native!("tzcnt", ":e", src, dst)),
                (&[0x66, 0xf3, 0x0f, 0xb8, 0xc3], "popcnt", native!("popcnt", ":x", src, dst)),
                (&[0x66, 0xf3, 0x0f, 0xbd, 0xc3], "lzcnt", native!("lzcnt", ":x", src, dst)),
                (&[0x66, 0xf3, 0x0f, 0xbc, 0xc3], "tzcnt", native!("tzcnt", ":x", src, dst)),
            ];
            for (bytes, kind, (want, want_flags)) in cases {
                let (got, flags, outcome) = emulate(bytes, src, dst);
                assert_eq!(outcome, Outcome::Completed(kind));
                assert_eq!(got, want, "{kind} {bytes:02x?} of {src:#x}");
                let d = defined(kind);
                assert_eq!(flags & d, want_flags & d, "{kind} {bytes:02x?} flags of {src:#x}");
            }
        }
    }

    /// Linux's GDT (arch/x86/include/asm/segment.h, 64-bit) as far as a
    /// user process can probe it: kernel CS and DS, user CS32, DS and CS,
    /// the TSS (DPL 0), and the getcpu segment with `limit` (CPU and node).
    fn linux_gdt(f: &mut Fake, cpunode: u64) {
        let entries: [(usize, u64); 7] = [
            (2, 0x00af_9b00_0000_ffff),
            (3, 0x00cf_9300_0000_ffff),
            (4, 0x00cf_fb00_0000_ffff),
            (5, 0x00cf_f300_0000_ffff),
            (6, 0x00af_fb00_0000_ffff),
            (8, 0x0000_8b00_0000_4087),
            (15, 0x0040_f500_0000_0000 | cpunode & 0xffff | (cpunode >> 16 & 0xf) << 48),
        ];
        for (i, d) in entries {
            f.mem[8 * i..8 * i + 8].copy_from_slice(&d.to_le_bytes());
        }
    }

    /// `lsl`/`lar rax, ebx` on the host, from user mode: RAX and ZF.
    fn host_descriptor(lar: bool, selector: u64) -> (u64, bool) {
        let (mut value, zf): (u64, u8);
        value = 0x5a5a;
        // SAFETY: register-only instructions that fault on nothing.
        unsafe {
            if lar {
                std::arch::asm!("lar {v}, {s:e}", "setz {z}", v = inout(reg) value, s = in(reg) selector, z = out(reg_byte) zf);
            } else {
                std::arch::asm!("lsl {v}, {s:e}", "setz {z}", v = inout(reg) value, s = in(reg) selector, z = out(reg_byte) zf);
            }
        }
        (value, zf != 0)
    }

    #[test]
    fn lsl_and_lar_match_the_host_cpu_on_linuxs_gdt() {
        // The host's getcpu segment limit is whatever CPU ran this; the
        // fake's GDT gets the same, the rest is Linux's fixed layout.
        let (cpunode, ok) = host_descriptor(false, 0x7b);
        assert!(ok, "the host kernel is Linux with its getcpu segment");
        // Null, kernel CS/DS (DPL 0: invisible at CPL 3), user segments
        // with RPL 3 and 0, the TSS, getcpu, past the GDT, an LDT selector.
        for selector in [0u64, 3, 0x10, 0x18, 0x23, 0x2b, 0x33, 0x28, 0x40, 0x7b, 0x78, 0x83, 0xfff8, 0x7, 0x2f] {
            for lar in [false, true] {
                let (want, want_zf) = host_descriptor(lar, selector);
                let mut f = Fake::new();
                f.tables.cpl = 3;
                linux_gdt(&mut f, cpunode);
                f.gpr[0] = 0x5a5a;
                f.gpr[3] = selector;
                // lsl/lar rax, ebx
                let bytes: &[u8] = if lar { &[0x48, 0x0f, 0x02, 0xc3] } else { &[0x48, 0x0f, 0x03, 0xc3] };
                let kind = if lar { "lar" } else { "lsl" };
                assert_eq!(complete(&mut f, bytes), Outcome::Completed(kind));
                assert_eq!(f.rip, 0x1000 + 4);
                assert_eq!(f.rflags & ZF != 0, want_zf, "{kind} {selector:#x}: ZF");
                // The host's accessed bits are the CPU's to set: LAR's type
                // is compared without bit 8.
                let mask = if lar { !0x100 } else { u64::MAX };
                assert_eq!(f.gpr[0] & mask, want & mask, "{kind} {selector:#x}");
            }
        }
    }

    #[test]
    fn lsl_at_cpl0_sees_every_segment_and_widths_write_as_the_cpu_does() {
        let mut f = Fake::new();
        linux_gdt(&mut f, 0x1003);
        // lsl eax, [rbx] with the selector in memory (kernel CS: G, all ones).
        f.mem[0x100..0x102].copy_from_slice(&0x10u16.to_le_bytes());
        f.gpr[3] = MEM + 0x100;
        f.gpr[0] = u64::MAX;
        assert_eq!(complete(&mut f, &[0x0f, 0x03, 0x03]), Outcome::Completed("lsl"));
        assert_eq!((f.gpr[0], f.rflags & ZF), (0xffff_ffff, ZF), "32 bits clear the top half");
        // lsl ax, bx on the getcpu segment: 16 bits keep the rest.
        let mut f = Fake::new();
        linux_gdt(&mut f, 0x1003);
        f.gpr[0] = 0xaaaa_bbbb_cccc_dddd;
        f.gpr[3] = 0x7b;
        assert_eq!(complete(&mut f, &[0x66, 0x0f, 0x03, 0xc3]), Outcome::Completed("lsl"));
        assert_eq!(f.gpr[0], 0xaaaa_bbbb_cccc_1003);
        // The TSS at CPL 0: a 64-bit TSS has a limit; past the GDT, none.
        let mut f = Fake::new();
        linux_gdt(&mut f, 0);
        f.gpr[3] = 0x40;
        assert_eq!(complete(&mut f, &[0x48, 0x0f, 0x03, 0xc3]), Outcome::Completed("lsl"));
        assert_eq!((f.gpr[0], f.rflags & ZF), (0x4087, ZF));
        f.gpr[3] = 0x80;
        f.rip = 0x1000;
        complete(&mut f, &[0x48, 0x0f, 0x03, 0xc3]);
        assert_eq!((f.gpr[0], f.rflags & ZF), (0x4087, 0), "kept, ZF clear");
        // A GDT that does not translate: the guest takes the #PF.
        let mut f = Fake::new();
        f.tables.gdt = (0x4000_0000, 0x7f);
        f.gpr[3] = 0x10;
        assert_eq!(complete(&mut f, &[0x48, 0x0f, 0x03, 0xc3]), Outcome::Completed("page_fault"));
        assert_eq!((f.cr2, f.rip), (0x4000_0010, 0x1000));
    }

    #[test]
    fn a_memory_operand_is_read_through_the_address_the_cpu_would_use() {
        // popcnt rax, [rbx + rcx*8 + 0x10]; lzcnt eax, [rip + 0x20] (RIP-relative).
        let mut f = Fake::new();
        f.gpr[3] = MEM;
        f.gpr[1] = 2;
        f.mem[0x20..0x28].copy_from_slice(&0xf0f0u64.to_le_bytes());
        assert_eq!(complete(&mut f, &[0xf3, 0x48, 0x0f, 0xb8, 0x44, 0xcb, 0x10]), Outcome::Completed("popcnt"));
        assert_eq!(f.gpr[0], 8);
        // lzcnt eax, [rip + 0x40]: 8 bytes, so the operand is at RIP + 8 + 0x40.
        let mut f = Fake::new();
        f.rip = MEM;
        let bytes = [0xf3, 0x0f, 0xbd, 0x05, 0x40, 0x00, 0x00, 0x00];
        let at = (8 + 0x40) as usize;
        f.mem[at..at + 4].copy_from_slice(&0x0000_ffffu32.to_le_bytes());
        f.gpr[0] = u64::MAX;
        assert_eq!(complete(&mut f, &bytes), Outcome::Completed("lzcnt"));
        assert_eq!(f.gpr[0], 16, "a 32-bit result clears the upper half");
        // An address that does not translate is a #PF (CR2, a read of a
        // page not present), and nothing else moves.
        let mut f = Fake::new();
        f.gpr[3] = 0xdead_0000;
        let before = f.clone();
        assert_eq!(complete(&mut f, &[0xf3, 0x48, 0x0f, 0xb8, 0x03]), Outcome::Completed("page_fault"));
        assert_eq!((f.cr2, &f.injected[..]), (0xdead_0000, &[(14, Some(0))][..]));
        assert_eq!((f.rip, f.gpr, f.rflags), (before.rip, before.gpr, before.rflags));
        // A machine that cannot raise one stops with the address.
        let mut f = before.clone();
        f.can_fault = false;
        assert_eq!(
            complete(&mut f, &[0xf3, 0x48, 0x0f, 0xb8, 0x03]),
            Outcome::Fault { linear: 0xdead_0000, write: false }
        );
        assert_eq!(f.injected, []);
    }

    #[test]
    fn clac_stac_int3_int_and_fwait_do_what_the_cpu_does() {
        let mut f = Fake::new();
        assert_eq!(complete(&mut f, &[0x0f, 0x01, 0xcb]), Outcome::Completed("stac"));
        assert_eq!((f.rflags & AC, f.rip), (AC, 0x1003));
        assert_eq!(complete(&mut f, &[0x0f, 0x01, 0xca]), Outcome::Completed("clac"));
        assert_eq!((f.rflags & AC, f.rip), (0, 0x1006));
        assert_eq!(complete(&mut f, &[0xcc]), Outcome::Completed("int3"));
        assert_eq!(complete(&mut f, &[0xcd, 0x80]), Outcome::Completed("int"));
        assert_eq!(complete(&mut f, &[0x9b]), Outcome::Completed("fwait"));
        assert_eq!((f.injected.as_slice(), f.rip), (&[(3, None), (0x80, None)][..], 0x1006 + 1 + 2 + 1));
    }

    #[test]
    fn anything_else_is_named_and_left_alone() {
        let mut f = Fake::new();
        let before = f.clone();
        assert_eq!(complete(&mut f, &[0xeb, 0x38]), Outcome::Unsupported("jmp".into()));
        assert_eq!(complete(&mut f, &[0x0f, 0xc7, 0x1f]), Outcome::Unsupported("xrstors".into()));
        assert_eq!(complete(&mut f, &[0x0f, 0xc7, 0x2f]), Outcome::Unsupported("xsaves".into()));
        assert_eq!(complete(&mut f, &[0x0f]), Outcome::Undecodable);
        assert_eq!(f, before);
    }

    /// A 64-byte aligned XSAVE area for native instructions.
    #[repr(C, align(64))]
    struct Area([u8; XSAVE_AREA]);

    // The thread's own state is saved and restored for these components
    // only: the whole of it (AMX tiles and all) can outgrow XSAVE_AREA.
    use crate::native::{host_xcr0, SIMD_COMPONENTS};

    /// Native XSAVE of the SIMD state into `full` and of `rfbm` into
    /// `partial`, back to back (nothing runs between them).
    fn native_xsave(full: &mut Area, partial: &mut Area, rfbm: u64) {
        let needed = native::standard_size(host_xcr0() & SIMD_COMPONENTS);
        assert!(needed <= XSAVE_AREA, "this host's SIMD state needs {needed} bytes");
        // SAFETY: both areas are 64-byte aligned and XSAVE_AREA long,
        // enough for SIMD_COMPONENTS (checked above).
        unsafe {
            std::arch::asm!(
                "xsave64 [{full}]",
                "mov eax, {lo:e}",
                "mov edx, {hi:e}",
                "xsave64 [{partial}]",
                full = in(reg) full.0.as_mut_ptr(),
                partial = in(reg) partial.0.as_mut_ptr(),
                lo = in(reg) rfbm & 0xffff_ffff,
                hi = in(reg) rfbm >> 32,
                inout("eax") SIMD_COMPONENTS as u32 => _,
                inout("edx") 0u32 => _,
            );
        }
    }

    /// Native: saves the thread's state (`before`), restores `src` with
    /// `rfbm`, saves the result (`after`) and puts `before` back, in one asm
    /// block so nothing else runs with the borrowed state.
    fn native_xrstor(src: &Area, rfbm: u64) -> (Area, Area) {
        let (mut before, mut after) = (Area([0; XSAVE_AREA]), Area([0; XSAVE_AREA]));
        // SAFETY: 64-byte aligned areas of XSAVE_AREA bytes; the thread's
        // state is restored from `before` before the block ends.
        unsafe {
            std::arch::asm!(
                "mov eax, {all}",
                "xor edx, edx",
                "xsave64 [{before}]",
                "mov eax, {lo:e}",
                "mov edx, {hi:e}",
                "xrstor64 [{src}]",
                "mov eax, {all}",
                "xor edx, edx",
                "xsave64 [{after}]",
                "xrstor64 [{before}]",
                all = const SIMD_COMPONENTS,
                before = in(reg) before.0.as_mut_ptr(),
                after = in(reg) after.0.as_mut_ptr(),
                src = in(reg) src.0.as_ptr(),
                lo = in(reg) rfbm & 0xffff_ffff,
                hi = in(reg) rfbm >> 32,
                out("eax") _,
                out("edx") _,
            );
        }
        (before, after)
    }

    /// Puts the engine's memory at MEM: `bytes` there, the rest as is.
    fn with_area(f: &mut Fake, bytes: &[u8]) {
        f.mem[..bytes.len()].copy_from_slice(bytes);
    }

    const XSAVE_RBX: [u8; 4] = [0x48, 0x0f, 0xae, 0x23]; // xsave64 [rbx]
    const XRSTOR_RBX: [u8; 4] = [0x48, 0x0f, 0xae, 0x2b]; // xrstor64 [rbx]

    #[test]
    fn xsave_writes_what_the_host_cpu_writes_for_each_requested_component() {
        if !std::arch::is_x86_feature_detected!("xsave") {
            return eprintln!("host without XSAVE: nothing to compare with");
        }
        let xcr0 = host_xcr0() & 0b111;
        for rfbm in [0b001, 0b010, 0b100, 0b011, 0b110, 0b111] {
            let rfbm = rfbm & xcr0;
            let (mut full, mut native) = (Area([0; XSAVE_AREA]), Area([0xab; XSAVE_AREA]));
            native.0[HEADER..HEADER + 64].fill(0);
            let prefill = native.0;
            native_xsave(&mut full, &mut native, rfbm);
            let mut f = Fake::new();
            f.xcr0 = host_xcr0();
            f.area = full.0.to_vec();
            f.gpr[3] = MEM;
            f.gpr[0] = rfbm;
            with_area(&mut f, &prefill);
            assert_eq!(complete(&mut f, &XSAVE_RBX), Outcome::Completed("xsave"));
            let upto = ranges(rfbm).iter().flat_map(|(_, r)| r.iter().map(|r| r.end)).max().unwrap_or(0).max(576);
            for (i, (got, want)) in f.mem[..upto].iter().zip(&native.0[..upto]).enumerate() {
                assert_eq!(got, want, "rfbm {rfbm:#b}: byte {i:#x} differs from what the CPU wrote");
            }
        }
    }

    #[test]
    fn xrstor_loads_what_the_host_cpu_loads_and_refuses_what_it_refuses() {
        if !std::arch::is_x86_feature_detected!("xsave") {
            return eprintln!("host without XSAVE: nothing to compare with");
        }
        let xcr0 = host_xcr0() & 0b111;
        // A source area: XMM and YMM-high bytes of our own, x87 as saved.
        let (mut full, mut src) = (Area([0; XSAVE_AREA]), Area([0; XSAVE_AREA]));
        native_xsave(&mut full, &mut src, xcr0);
        src.0 = full.0;
        for (i, b) in src.0[SSE_STATE].iter_mut().enumerate() {
            *b = i as u8 ^ 0x5a;
        }
        if xcr0 & 0b100 != 0 {
            for (i, b) in src.0[component(2)].iter_mut().enumerate() {
                *b = i as u8 ^ 0xc3;
            }
        }
        for (rfbm, bv) in [(0b010, 0b010), (0b110, 0b110), (0b111, 0b011), (0b010, 0b000)] {
            let (rfbm, bv) = (rfbm & xcr0, bv & xcr0);
            src.0[HEADER..HEADER + 8].copy_from_slice(&bv.to_le_bytes());
            let (before, after) = native_xrstor(&src, rfbm);
            let mut f = Fake::new();
            f.xcr0 = host_xcr0();
            f.area = before.0.to_vec();
            f.gpr[3] = MEM;
            f.gpr[0] = rfbm;
            with_area(&mut f, &src.0);
            assert_eq!(complete(&mut f, &XRSTOR_RBX), Outcome::Completed("xrstor"));
            assert!(f.injected.is_empty());
            for (i, rs) in ranges(rfbm) {
                for r in rs {
                    assert_eq!(&f.area[r.clone()], &after.0[r.clone()], "rfbm {rfbm:#b} bv {bv:#b}: component {i}");
                }
            }
            assert_eq!(f.area[MXCSR..MXCSR + 4], after.0[MXCSR..MXCSR + 4], "MXCSR");
        }
        // What the CPU refuses: a misaligned area, XSTATE_BV beyond XCR0,
        // a non-zero reserved header byte, MXCSR reserved bits.
        let mut bad_bv = src.0;
        bad_bv[HEADER..HEADER + 8].copy_from_slice(&(1u64 << 9).to_le_bytes());
        let mut bad_reserved = src.0;
        bad_reserved[HEADER..HEADER + 8].fill(0);
        bad_reserved[HEADER + 20] = 1;
        let mut bad_mxcsr = src.0;
        bad_mxcsr[HEADER..HEADER + 8].fill(0);
        bad_mxcsr[MXCSR..MXCSR + 4].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
        for (what, area, at) in [
            ("bv", bad_bv, MEM),
            ("reserved", bad_reserved, MEM),
            ("mxcsr", bad_mxcsr, MEM),
            ("aligned", src.0, MEM + 8),
        ] {
            let mut f = Fake::new();
            f.xcr0 = 0b111;
            f.area = full.0.to_vec();
            f.gpr[3] = at;
            f.gpr[0] = 0b011;
            with_area(&mut f, &area);
            let before = (f.area.clone(), f.rip);
            assert_eq!(complete(&mut f, &XRSTOR_RBX), Outcome::Completed("xrstor"), "{what}");
            assert_eq!(f.injected, [(GP, Some(0))], "{what}: #GP(0)");
            assert_eq!((f.area.clone(), f.rip), before, "{what}: nothing loaded, RIP on the instruction");
        }
    }

    const XSAVEC_RBX: [u8; 4] = [0x48, 0x0f, 0xc7, 0x23]; // xsavec64 [rbx]

    /// Native: save the thread's state, load `src` (standard, everything),
    /// then `xsavec` it with `rfbm` into `out`, and put the state back.
    fn native_xsavec_of(src: &Area, rfbm: u64, out: &mut Area) {
        let mut keep = Area([0; XSAVE_AREA]);
        // SAFETY: 64-byte aligned areas of XSAVE_AREA bytes; the thread's
        // state is restored from `keep` before the block ends.
        unsafe {
            std::arch::asm!(
                "mov eax, {all}",
                "xor edx, edx",
                "xsave64 [{keep}]",
                "xrstor64 [{src}]",
                "mov eax, {lo:e}",
                "mov edx, {hi:e}",
                "xsavec64 [{out}]",
                "mov eax, {all}",
                "xor edx, edx",
                "xrstor64 [{keep}]",
                all = const SIMD_COMPONENTS,
                keep = in(reg) keep.0.as_mut_ptr(),
                src = in(reg) src.0.as_ptr(),
                out = in(reg) out.0.as_mut_ptr(),
                lo = in(reg) rfbm & 0xffff_ffff,
                hi = in(reg) rfbm >> 32,
                out("eax") _,
                out("edx") _,
            );
        }
    }

    /// A standard area of the host's current state with XMM and YMM-high
    /// bytes of our own, every component present.
    fn distinctive_state(xcr0: u64) -> Area {
        let (mut full, mut unused) = (Area([0; XSAVE_AREA]), Area([0; XSAVE_AREA]));
        native_xsave(&mut full, &mut unused, xcr0);
        for (i, b) in full.0[SSE_STATE].iter_mut().enumerate() {
            *b = i as u8 ^ 0x5a;
        }
        if xcr0 & 0b100 != 0 {
            for (i, b) in full.0[component(2)].iter_mut().enumerate() {
                *b = i as u8 ^ 0xc3;
            }
        }
        // x87 away from its initial state too (53-bit precision), so the
        // CPU's XINUSE and the area's XSTATE_BV agree on every component.
        full.0[0..2].copy_from_slice(&0x027fu16.to_le_bytes());
        full.0[HEADER..HEADER + 8].copy_from_slice(&xcr0.to_le_bytes());
        full
    }

    #[test]
    fn xsavec_and_compacted_xrstor_match_the_host_cpu() {
        if !std::arch::is_x86_feature_detected!("xsavec") {
            return eprintln!("host without XSAVEC: nothing to compare with");
        }
        let xcr0 = host_xcr0() & 0b111;
        let state = distinctive_state(xcr0);
        for rfbm in [0b011, 0b110, 0b111, 0b100] {
            let rfbm = rfbm & xcr0;
            // xsavec: the engine, given the same state as KVM's area, writes
            // what the CPU writes (prefilled bytes it skips stay as they were).
            let mut native = Area([0xab; XSAVE_AREA]);
            native_xsavec_of(&state, rfbm, &mut native);
            let mut f = Fake::new();
            f.xcr0 = host_xcr0();
            f.area = state.0.to_vec();
            f.gpr[3] = MEM;
            f.gpr[0] = rfbm;
            with_area(&mut f, &[0xab; XSAVE_AREA]);
            assert_eq!(complete(&mut f, &XSAVEC_RBX), Outcome::Completed("xsavec"));
            let end = compacted_offsets(rfbm).last().map_or(576, |&(i, at)| at + component(i).len());
            for i in (0..24).chain(32..end) {
                assert_eq!(f.mem[i], native.0[i], "xsavec rfbm {rfbm:#b}: byte {i:#x}");
            }
            assert_eq!(f.mem[MXCSR..MXCSR + 4], native.0[MXCSR..MXCSR + 4], "xsavec rfbm {rfbm:#b}: MXCSR");

            // xrstor of that compacted area: what the CPU loads. (The
            // reserved header bytes xsavec left alone must be zero first,
            // or the CPU raises #GP.)
            native.0[HEADER + 16..HEADER + 64].fill(0);
            let (before, after) = native_xrstor(&native, xcr0);
            let mut f = Fake::new();
            f.xcr0 = host_xcr0();
            f.area = before.0.to_vec();
            f.gpr[3] = MEM;
            f.gpr[0] = xcr0;
            with_area(&mut f, &native.0);
            assert_eq!(complete(&mut f, &XRSTOR_RBX), Outcome::Completed("xrstor"));
            assert!(f.injected.is_empty(), "rfbm {rfbm:#b}: {:?}", f.injected);
            for (i, rs) in ranges(xcr0) {
                for r in rs {
                    assert_eq!(
                        &f.area[r.clone()],
                        &after.0[r.clone()],
                        "xrstor of xsavec rfbm {rfbm:#b}: component {i}"
                    );
                }
            }
            assert_eq!(f.area[MXCSR..MXCSR + 4], after.0[MXCSR..MXCSR + 4], "xrstor rfbm {rfbm:#b}: MXCSR");
        }
    }

    /// 16 bytes aligned as cmpxchg16b needs.
    #[repr(C, align(16))]
    struct Pair(u128);

    #[test]
    fn cmpxchg16b_matches_the_host_cpu_when_equal_and_when_not() {
        // lock cmpxchg16b [rdi]
        let bytes = [0xf0, 0x48, 0x0f, 0xc7, 0x0f];
        for (mem, expected) in [(5u128 << 64 | 7, 5u128 << 64 | 7), (5 << 64 | 7, 5 << 64 | 8), (u128::MAX, 0)] {
            let new = 0x1111_2222_3333_4444_5555_6666_7777_8888u128;
            let mut cell = Pair(mem);
            let (mut rax, mut rdx) = (expected as u64, (expected >> 64) as u64);
            let flags: u64;
            // SAFETY: a 16-byte aligned local; rbx is saved and restored
            // around the instruction (LLVM reserves it).
            unsafe {
                std::arch::asm!(
                    "xchg {b}, rbx",
                    "lock cmpxchg16b [{p}]",
                    "pushfq",
                    "pop {f}",
                    "xchg {b}, rbx",
                    p = in(reg) &mut cell.0,
                    b = inout(reg) new as u64 => _,
                    f = out(reg) flags,
                    inout("rax") rax,
                    inout("rdx") rdx,
                    in("rcx") (new >> 64) as u64,
                );
            }
            let mut f = Fake::new();
            f.mem[0..16].copy_from_slice(&mem.to_le_bytes());
            f.gpr[7] = MEM; // RDI
            f.gpr[0] = expected as u64;
            f.gpr[2] = (expected >> 64) as u64;
            f.gpr[1] = (new >> 64) as u64;
            f.gpr[3] = new as u64;
            assert_eq!(complete(&mut f, &bytes), Outcome::Completed("cmpxchg16b"));
            assert_eq!(u128::from_le_bytes(f.mem[0..16].try_into().unwrap()), cell.0, "memory");
            assert_eq!((f.gpr[0], f.gpr[2]), (rax, rdx), "RDX:RAX");
            assert_eq!(f.rflags & ZF, flags & ZF, "ZF");
        }
        // Misaligned: #GP(0), nothing moves.
        let mut f = Fake::new();
        f.gpr[7] = MEM + 8;
        assert_eq!(complete(&mut f, &bytes), Outcome::Completed("cmpxchg16b"));
        assert_eq!((f.injected.as_slice(), f.rip), (&[(GP, Some(0))][..], 0x1000));
    }

    #[test]
    fn ldmxcsr_and_stmxcsr_match_the_host_cpu_and_refuse_reserved_bits() {
        // ldmxcsr [rbx+4]; stmxcsr [rbx+8]
        let (ld, st) = ([0x0f, 0xae, 0x53, 0x04], [0x0f, 0xae, 0x5b, 0x08]);
        let mut native_mask = Area([0; XSAVE_AREA]);
        // SAFETY: fxsave into a 512-byte area of our own, 16-byte aligned.
        unsafe { std::arch::asm!("fxsave64 [{}]", in(reg) native_mask.0.as_mut_ptr()) };
        let host_mask = le32(&native_mask.0, MXCSR_MASK);
        for value in [0x1f80u32, 0x1fbf, 0x9fc0, 0x7f80] {
            let mut f = Fake::new();
            f.area[MXCSR_MASK..MXCSR_MASK + 4].copy_from_slice(&host_mask.to_le_bytes());
            f.gpr[3] = MEM;
            f.mem[4..8].copy_from_slice(&value.to_le_bytes());
            assert_eq!(complete(&mut f, &ld), Outcome::Completed("ldmxcsr"));
            if value & !host_mask != 0 {
                assert_eq!((f.injected.as_slice(), f.rip), (&[(GP, Some(0))][..], 0x1000), "{value:#x}");
                continue;
            }
            // The host CPU loads and stores the same value.
            let mut back = 0u32;
            let mut saved = 0u32;
            // SAFETY: saves MXCSR, loads the test value, reads it back and
            // restores it: nothing else runs SSE code in between.
            unsafe {
                std::arch::asm!(
                    "stmxcsr [{s}]",
                    "ldmxcsr [{v}]",
                    "stmxcsr [{b}]",
                    "ldmxcsr [{s}]",
                    s = in(reg) &mut saved,
                    v = in(reg) &value,
                    b = in(reg) &mut back,
                );
            }
            assert_eq!(le32(&f.area, MXCSR), back, "{value:#x}");
            assert_ne!(le64(&f.area, HEADER) & 0b10, 0, "SSE in XSTATE_BV, or KVM_SET_XSAVE ignores MXCSR");
            let rip = f.rip;
            assert_eq!(complete(&mut f, &st), Outcome::Completed("stmxcsr"));
            assert_eq!(le32(&f.mem, 8), back);
            assert_eq!(f.rip, rip + 4);
        }
    }

    #[test]
    fn fldcw_loads_what_the_host_cpu_loads() {
        // fldcw [rbx+6]
        let ld = [0xd9, 0x6b, 0x06];
        for value in [0x037fu16, 0x027f, 0x0f7f, 0x1f3f, 0xffff, 0] {
            let mut f = Fake::new();
            f.gpr[3] = MEM;
            f.mem[6..8].copy_from_slice(&value.to_le_bytes());
            assert_eq!(complete(&mut f, &ld), Outcome::Completed("fldcw"));
            assert_eq!(f.rip, 0x1000 + 3);
            let (mut saved, mut back) = (0u16, 0u16);
            // SAFETY: saves FCW, loads the test value (all exceptions
            // masked in each), reads it back and restores it.
            unsafe {
                std::arch::asm!(
                    "fnstcw [{s}]",
                    "fldcw [{v}]",
                    "fnstcw [{b}]",
                    "fldcw [{s}]",
                    s = in(reg) &mut saved,
                    v = in(reg) &value,
                    b = in(reg) &mut back,
                );
            }
            assert_eq!(u16::from_le_bytes([f.area[FCW], f.area[FCW + 1]]), back, "{value:#x}");
            assert_ne!(le64(&f.area, HEADER) & 0b01, 0, "x87 in XSTATE_BV, or KVM_SET_XSAVE ignores FCW");
        }
    }

    /// The host CPU running `$insn` itself from the XSAVE state `$area`,
    /// RSI pointing at `$mem`, RCX and RDX as given: (state, RCX, RDX, flags).
    macro_rules! reference {
        ($insn:literal, $area:expr, $mem:expr, $rcx:expr, $rdx:expr) => {{
            let mut area = Area($area.0);
            let (mut rcx, mut rdx): (u64, u64) = ($rcx, $rdx);
            let flags: u64;
            let mask = host_xcr0() & 0b111;
            // SAFETY: XRSTOR of an area XSAVE wrote (the state's MXCSR and
            // FCW are defaults), one instruction on registers and `$mem`,
            // XSAVE back; every register it may change is an operand or
            // clobbered by the ABI.
            unsafe {
                std::arch::asm!(
                    "xrstor64 [rdi]",
                    "mov rdx, r8",
                    "push r11",
                    "popfq",
                    $insn,
                    "pushfq",
                    "pop r9",
                    "mov r8, rdx",
                    "mov eax, r10d",
                    "xor edx, edx",
                    "xsave64 [rdi]",
                    in("rdi") area.0.as_mut_ptr(),
                    in("rsi") $mem.0.as_mut_ptr(),
                    inout("rcx") rcx,
                    inout("r8") rdx,
                    in("r10") mask,
                    in("eax") mask as u32,
                    in("edx") 0,
                    lateout("r9") flags,
                    in("r11") 0x2 | ARITHMETIC,
                    clobber_abi("sysv64"),
                );
            }
            (area, rcx, rdx, flags)
        }};
    }

    /// The SSE and AVX state of an area as the CPU would load it (a
    /// component whose XSTATE_BV bit is clear is in its initial state).
    fn vector_state(area: &[u8]) -> (Vec<u8>, Vec<u8>, u32) {
        let bv = le64(area, XSTATE_BV);
        let get = |bit: u64, r: std::ops::Range<usize>| if bv & bit != 0 { area[r].to_vec() } else { vec![0; r.len()] };
        (get(0b10, SSE_STATE), get(0b100, component(2)), le32(area, MXCSR))
    }

    fn simd_state() -> Area {
        let mut state = distinctive_state(host_xcr0() & 0b111);
        state.0[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        state
    }

    /// 64 bytes, aligned as the guest's are (MEM), so alignment rules
    /// apply alike.
    #[repr(align(64))]
    struct Memory([u8; 64]);

    fn simd_memory() -> Memory {
        Memory(std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x6b))
    }

    /// The engine running `bytes` on a Fake with the same state, RSI = MEM.
    fn completed(bytes: &[u8], state: &Area, mem: &Memory, rcx: u64, rdx: u64) -> Fake {
        let mut f = Fake::new();
        f.area = state.0.to_vec();
        f.xcr0 = host_xcr0() & 0b111;
        f.mem[..64].copy_from_slice(&mem.0);
        f.gpr[Register::RCX.number()] = rcx;
        f.gpr[Register::RDX.number()] = rdx;
        f.gpr[Register::RSI.number()] = MEM;
        f.rflags = 0x2 | ARITHMETIC;
        assert_eq!(complete(&mut f, bytes), Outcome::Completed("simd"), "{bytes:02x?}");
        assert!(f.injected.is_empty(), "{:?}", f.injected);
        assert_eq!(f.rip, 0x1000 + bytes.len() as u64);
        f
    }

    macro_rules! simd_matches_the_host {
        ($insn:literal, $bytes:expr) => {{
            // RCX is also an index (8 * 2 + 16 stays within the 64 bytes).
            let (state, mut mem, rcx, rdx) = (simd_state(), simd_memory(), 8u64, 0x0fed_cba9_8765_4321u64);
            let f = completed(&$bytes, &state, &mem, rcx, rdx);
            let (want, want_rcx, want_rdx, want_flags) = reference!($insn, state, mem, rcx, rdx);
            assert_eq!(vector_state(&f.area), vector_state(&want.0), $insn);
            assert_eq!(&f.mem[..64], &mem.0[..], $insn);
            assert_eq!(f.gpr[Register::RCX.number()], want_rcx, $insn);
            assert_eq!(f.gpr[Register::RDX.number()], want_rdx, $insn);
            assert_eq!(f.gpr[Register::RSI.number()], MEM, $insn);
            assert_eq!(f.rflags & ARITHMETIC, want_flags & ARITHMETIC, $insn);
        }};
    }

    #[test]
    fn simd_instructions_run_natively_give_what_the_host_cpu_gives() {
        if NativeCpu::new().is_err() || !is_x86_feature_detected!("avx2") {
            eprintln!("skipped: the host CPU lacks XSAVE or AVX2");
            return;
        }
        simd_matches_the_host!("movd xmm15, ecx", [0x66, 0x44, 0x0f, 0x6e, 0xf9]);
        simd_matches_the_host!("pshufb xmm3, [rsi]", [0x66, 0x0f, 0x38, 0x00, 0x1e]);
        simd_matches_the_host!("paddd xmm1, xmm2", [0x66, 0x0f, 0xfe, 0xca]);
        simd_matches_the_host!("ptest xmm1, [rsi]", [0x66, 0x0f, 0x38, 0x17, 0x0e]);
        simd_matches_the_host!("pcmpistri xmm2, [rsi+3], 0x0c", [0x66, 0x0f, 0x3a, 0x63, 0x56, 0x03, 0x0c]);
        simd_matches_the_host!("movdqu [rsi+16], xmm4", [0xf3, 0x0f, 0x7f, 0x66, 0x10]);
        simd_matches_the_host!("vpxor ymm5, ymm6, [rsi]", [0xc5, 0xcd, 0xef, 0x2e]);
        simd_matches_the_host!("vpshufb ymm9, ymm10, ymm11", [0xc4, 0x42, 0x2d, 0x00, 0xcb]);
        simd_matches_the_host!("pextrd [rsi+4], xmm5, 2", [0x66, 0x0f, 0x3a, 0x16, 0x6e, 0x04, 0x02]);
        simd_matches_the_host!("crc32 ecx, dword ptr [rsi]", [0xf2, 0x0f, 0x38, 0xf1, 0x0e]);
        simd_matches_the_host!("pxor xmm0, [rsi+rcx*2+16]", [0x66, 0x0f, 0xef, 0x44, 0x4e, 0x10]);
        if is_x86_feature_detected!("aes") {
            simd_matches_the_host!("aesenc xmm7, xmm8", [0x66, 0x41, 0x0f, 0x38, 0xdc, 0xf8]);
        }
        if is_x86_feature_detected!("sha") {
            simd_matches_the_host!("sha256rnds2 xmm1, xmm2, xmm0", [0x0f, 0x38, 0xcb, 0xca]);
        }
        if is_x86_feature_detected!("bmi1") {
            simd_matches_the_host!("andn rcx, rdx, [rsi]", [0xc4, 0xe2, 0xe8, 0xf2, 0x0e]);
        }
    }

    #[test]
    fn simd_raises_what_the_cpu_raises_and_refuses_what_it_cannot_be_sure_of() {
        let Ok(_) = NativeCpu::new() else { return };
        let state = simd_state();
        let fresh = || {
            let mut f = Fake::new();
            f.area = state.0.to_vec();
            f.xcr0 = host_xcr0() & 0b111;
            f.gpr[Register::RSI.number()] = MEM;
            f
        };
        // movdqa from an address that is not 16-aligned: #GP(0), nothing runs.
        let movdqa = [0x66, 0x0f, 0x6f, 0x46, 0x08];
        let mut f = fresh();
        let before = f.clone();
        assert_eq!(complete(&mut f, &movdqa), Outcome::Completed("simd"));
        assert_eq!(f.injected, [(GP, Some(0))]);
        assert_eq!((f.rip, &f.area), (before.rip, &before.area));
        // SSE with CR4.OSFXSR clear, AVX without AVX state in XCR0: #UD.
        let mut f = fresh();
        f.cr4 &= !CR4_OSFXSR;
        assert_eq!(complete(&mut f, &[0x66, 0x0f, 0xfe, 0xca]), Outcome::Completed("simd"));
        assert_eq!(f.injected, [(UD, None)]);
        let mut f = fresh();
        f.xcr0 = 0b11;
        assert_eq!(complete(&mut f, &[0xc5, 0xcd, 0xef, 0x2e]), Outcome::Completed("simd"));
        assert_eq!(f.injected, [(UD, None)]);
        // CR0.TS: #NM.
        let mut f = fresh();
        f.cr0 |= CR0_TS;
        assert_eq!(complete(&mut f, &[0x66, 0x0f, 0xfe, 0xca]), Outcome::Completed("simd"));
        assert_eq!(f.injected, [(NM, None)]);
        // Unmasked SIMD exceptions, RSP as an operand: not run, named.
        let mut f = fresh();
        f.area[MXCSR..MXCSR + 4].copy_from_slice(&0x1f00u32.to_le_bytes());
        assert!(
            matches!(complete(&mut f, &[0x66, 0x0f, 0xfe, 0xca]), Outcome::Unsupported(w) if w.contains("unmasked"))
        );
        let mut f = fresh();
        assert!(
            matches!(complete(&mut f, &[0x66, 0x48, 0x0f, 0x6e, 0xc4]), Outcome::Unsupported(w) if w.contains("rsp"))
        );
        // AVX-512 is not run natively, even with its state in XCR0 (guests
        // on an AVX-512 host see it in CPUID, docs/kvm-pvm.md): named,
        // nothing changed. vpaddd zmm0, zmm1, zmm2.
        let mut f = fresh();
        f.xcr0 = host_xcr0() & SIMD_COMPONENTS;
        let before = f.clone();
        let vpaddd = [0x62, 0xf1, 0x75, 0x48, 0xfe, 0xc2];
        assert!(matches!(complete(&mut f, &vpaddd), Outcome::Unsupported(w) if w.starts_with("vpaddd")));
        assert_eq!(f, before);
        // A memory operand that does not translate: a #PF, nothing changed;
        // for a store the error code says "write".
        let mut f = fresh();
        f.gpr[Register::RSI.number()] = 0x4000_0000;
        let before = f.clone();
        assert_eq!(complete(&mut f, &[0x66, 0x0f, 0x38, 0x00, 0x1e]), Outcome::Completed("page_fault"));
        assert_eq!((f.cr2, &f.injected[..]), (0x4000_0000, &[(14, Some(0))][..]));
        assert_eq!((f.rip, &f.area, &f.gpr), (before.rip, &before.area, &before.gpr));
        let mut f = fresh();
        f.gpr[Register::RSI.number()] = MEM + 2 * XSAVE_AREA as u64 - 8;
        let before = f.clone();
        assert_eq!(complete(&mut f, &[0xf3, 0x0f, 0x7f, 0x66, 0x10]), Outcome::Completed("page_fault"));
        assert_eq!((f.cr2, &f.injected[..]), (MEM + 2 * XSAVE_AREA as u64 + 8, &[(14, Some(2))][..]));
        assert_eq!((f.rip, &f.area, &f.mem), (before.rip, &before.area, &before.mem));
    }

    // A run as a kernel's crypto code has them: SIMD with integer
    // instructions and a loop branch between, RSI pointing at 64 bytes.
    // `capvm_test_run` loads a `RunState` (RAX..R15 but RSP, XMM0-2, and
    // the arithmetic flags), runs the code between the two labels on the
    // host CPU and stores it back; the same bytes are the Fake's code.
    std::arch::global_asm!(
        ".pushsection .text.capvm_test_run,\"ax\",@progbits",
        ".global capvm_test_run, capvm_test_run_start, capvm_test_run_end",
        "capvm_test_run:",
        "push rbx",
        "push rbp",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "push rdi",
        "movdqu xmm0, [rdi + 128]",
        "movdqu xmm1, [rdi + 144]",
        "movdqu xmm2, [rdi + 160]",
        "push qword ptr [rdi + 176]",
        "popfq",
        "mov rax, [rdi]",
        "mov rcx, [rdi + 8]",
        "mov rdx, [rdi + 16]",
        "mov rbx, [rdi + 24]",
        "mov rbp, [rdi + 40]",
        "mov rsi, [rdi + 48]",
        "mov r8, [rdi + 64]",
        "mov r9, [rdi + 72]",
        "mov r10, [rdi + 80]",
        "mov r11, [rdi + 88]",
        "mov r12, [rdi + 96]",
        "mov r13, [rdi + 104]",
        "mov r14, [rdi + 112]",
        "mov r15, [rdi + 120]",
        "mov rdi, [rdi + 56]",
        "capvm_test_run_start:",
        "movdqu xmm0, [rsi]",
        "mov ecx, 5",
        "2:",
        "paddd xmm0, xmm1",
        "pshufb xmm0, xmm2",
        "add rax, rcx",
        "imul rbx, rax, 7",
        "pxor xmm1, xmm0",
        "movq rdx, xmm1",
        "xor rdx, rax",
        "mov [rsi + 32 + rcx * 4], edx",
        "dec ecx",
        "jnz 2b",
        "movdqu [rsi + 16], xmm0",
        "lea rdi, [rax + rbx * 2 + 5]",
        "lea r10, [rip + capvm_test_run_start]",
        "sub r10, rdi",
        "test rdx, rdx",
        "setz r8b",
        "cmovs r9, rbx",
        "nop dword ptr [rax + rax * 1 + 0]",
        "jmp 3f",
        "ud2",
        "3:",
        "capvm_test_run_end:",
        "pushfq",
        "xchg rdi, [rsp + 8]",
        "mov [rdi], rax",
        "mov [rdi + 8], rcx",
        "mov [rdi + 16], rdx",
        "mov [rdi + 24], rbx",
        "mov [rdi + 40], rbp",
        "mov [rdi + 48], rsi",
        "mov [rdi + 64], r8",
        "mov [rdi + 72], r9",
        "mov [rdi + 80], r10",
        "mov [rdi + 88], r11",
        "mov [rdi + 96], r12",
        "mov [rdi + 104], r13",
        "mov [rdi + 112], r14",
        "mov [rdi + 120], r15",
        "pop rax",
        "mov [rdi + 176], rax",
        "pop rax",
        "mov [rdi + 56], rax",
        "movdqu [rdi + 128], xmm0",
        "movdqu [rdi + 144], xmm1",
        "movdqu [rdi + 160], xmm2",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbp",
        "pop rbx",
        "ret",
        ".popsection",
    );

    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct RunState {
        gprs: [u64; 16],
        xmm: [[u8; 16]; 3],
        rflags: u64,
    }

    extern "sysv64" {
        fn capvm_test_run(state: *mut RunState);
        static capvm_test_run_start: u8;
        static capvm_test_run_end: u8;
    }

    /// The run's code bytes, and where the Fake keeps its code and data.
    fn run_code() -> &'static [u8] {
        // SAFETY: two labels in one section of this test's text, in order.
        unsafe {
            let start = &raw const capvm_test_run_start;
            let end = &raw const capvm_test_run_end;
            std::slice::from_raw_parts(start, end as usize - start as usize)
        }
    }
    const RUN_CODE: u64 = MEM + 0x100;
    const RUN_DATA: u64 = MEM + 0x800;

    /// A Fake holding `code` at RUN_CODE (then `hlt`, which no run takes)
    /// and `state`, with RSI at RUN_DATA.
    fn run_fake(code: &[u8], state: &RunState, data: &Memory) -> Fake {
        let mut f = Fake::new();
        let at = (RUN_CODE - MEM) as usize;
        f.mem[at..at + code.len()].copy_from_slice(code);
        f.mem[at + code.len()] = 0xf4;
        let at = (RUN_DATA - MEM) as usize;
        f.mem[at..at + 64].copy_from_slice(&data.0);
        f.rip = RUN_CODE;
        f.xcr0 = host_xcr0() & 0b111;
        f.area = simd_state().0.to_vec();
        for (i, x) in state.xmm.iter().enumerate() {
            f.area[SSE_STATE.start + 16 * i..][..16].copy_from_slice(x);
        }
        f.gpr = state.gprs;
        f.gpr[Register::RSI.number()] = RUN_DATA;
        f.rflags = state.rflags;
        f
    }

    #[test]
    fn a_run_after_a_refused_simd_instruction_gives_what_the_host_cpu_gives() {
        if NativeCpu::new().is_err() || !is_x86_feature_detected!("ssse3") {
            eprintln!("skipped: the host CPU lacks XSAVE or SSSE3");
            return;
        }
        let code = run_code();
        let mut data = simd_memory();
        let mut state = RunState {
            gprs: std::array::from_fn(|i| 0x0123_4567_89ab_cdefu64.rotate_left(7 * i as u32)),
            xmm: std::array::from_fn(|i| std::array::from_fn(|j| (17 * i + 5 * j) as u8 & 0x8f)),
            rflags: 0x2 | CF | OF,
        };
        let mut f = run_fake(code, &state, &data);
        let outcome = complete(&mut f, &code[..15]);

        // On the host CPU, RSI at the same bytes.
        state.gprs[Register::RSI.number()] = data.0.as_mut_ptr() as u64;
        let host_code = code.as_ptr() as u64;
        // SAFETY: the run touches its registers and the 64 bytes at RSI.
        unsafe { capvm_test_run(&mut state) };

        // Five rounds of 4 SIMD and 6 other instructions, a load and a
        // store around them, and 9 instructions after: hlt ends the run.
        assert_eq!(outcome, Outcome::Batch(Batch { simd: 22, plain: 1 + 30 + 8 }));
        assert!(f.injected.is_empty(), "{:?}", f.injected);
        assert_eq!(f.rip, RUN_CODE + code.len() as u64);
        let at = (RUN_DATA - MEM) as usize;
        assert_eq!(&f.mem[at..at + 64], &data.0[..]);
        for (i, x) in state.xmm.iter().enumerate() {
            assert_eq!(&f.area[SSE_STATE.start + 16 * i..][..16], x, "xmm{i}");
        }
        assert_eq!(f.rflags & ARITHMETIC, state.rflags & ARITHMETIC);
        for r in simd::GPRS.into_iter().filter(|&r| r != Register::RSP) {
            let want = match r {
                Register::RSI => RUN_DATA,
                // The RIP-relative lea: where the code is, minus RDI.
                Register::R10 => state.gprs[r.number()].wrapping_sub(host_code).wrapping_add(RUN_CODE),
                _ => state.gprs[r.number()],
            };
            assert_eq!(f.gpr[r.number()], want, "{r:?}");
        }
    }

    #[test]
    fn a_run_ends_where_the_emulator_should_take_over() {
        let Ok(_) = NativeCpu::new() else { return };
        let state = RunState { gprs: [0; 16], xmm: [[0; 16]; 3], rflags: 2 };
        let data = simd_memory();
        let pxor = [0x66, 0x0f, 0xef, 0xc1]; // pxor xmm0, xmm1
        let inc = [0x48, 0xff, 0xc0]; // inc rax
        let movdqa_off = [0x66, 0x0f, 0x6f, 0x46, 0x08]; // movdqa xmm0, [rsi+8]: #GP
        let push = [0x50]; // push rax: the stack is the emulator's
        let ends_after = |code: Vec<u8>, simd: u32, plain: u32| {
            let mut f = run_fake(&code, &state, &data);
            let outcome = complete(&mut f, &code);
            let want =
                if simd + plain > 1 { Outcome::Batch(Batch { simd, plain }) } else { Outcome::Completed("simd") };
            assert_eq!(outcome, want, "{code:02x?}");
            assert!(f.injected.is_empty(), "nothing raised: the emulator meets it again");
            f
        };
        // Twenty integer instructions after SIMD: the run stops after twelve.
        let f = ends_after([&pxor[..], &inc.repeat(20)].concat(), 1, 12);
        assert_eq!((f.rip, f.gpr[0]), (RUN_CODE + 4 + 12 * 3, 12));
        // Before an instruction that would fault, and one it does not take.
        let f = ends_after([&pxor[..], &inc, &movdqa_off].concat(), 1, 1);
        assert_eq!(f.rip, RUN_CODE + 7);
        let f = ends_after([&pxor[..], &pxor, &push].concat(), 2, 0);
        assert_eq!(f.rip, RUN_CODE + 8);
        // A locked instruction is atomic; a copy of its operand is not.
        let lock_add = [0xf0, 0x01, 0x06]; // lock add [rsi], eax
        let f = ends_after([&pxor[..], &inc, &lock_add].concat(), 1, 1);
        assert_eq!(f.rip, RUN_CODE + 7);
        // ldmxcsr could set reserved bits (#GP on this CPU) or unmask
        // exceptions the run's next instructions would raise here: it is
        // completed alone, with its checks (found by the completion fuzz
        // target: a SIGSEGV in the runner).
        let ldmxcsr = [0x0f, 0xae, 0x16]; // ldmxcsr [rsi]
        let f = ends_after([&pxor[..], &inc, &ldmxcsr].concat(), 1, 1);
        assert_eq!(f.rip, RUN_CODE + 7);
        // A single-stepping guest gets its #DB after the refused one.
        let mut f = run_fake(&[&pxor[..], &pxor].concat(), &state, &data);
        f.rflags |= 1 << 8;
        assert_eq!(complete(&mut f, &pxor), Outcome::Completed("simd"));
        assert_eq!(f.rip, RUN_CODE + 4);
    }
}
