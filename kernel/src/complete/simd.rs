//! Refused SIMD instructions, run on the host CPU (`native`), and the
//! code that follows them.
//!
//! A kernel's SIMD code comes in runs: a crypto round is dozens of vector
//! instructions with a few integer ones and a loop branch between them.
//! The emulator refuses each vector instruction, and an emulation-failure
//! exit with its ioctls costs some 70 µs here, while one instruction run
//! natively costs a few. So after the refused instruction the runner goes
//! on along the guest's code, one instruction at a time: SIMD ones as the
//! first, plain integer ones the same way, near jumps it follows itself.
//! It gives the vCPU back before the first instruction it does not take
//! (one that would fault, another class, a 32-bit mode, single-stepping),
//! after `MAX_PLAIN_STREAK` instructions in a row without SIMD (the
//! emulator runs integer code faster than a trip through the trampoline),
//! or after `MAX_RUN`, which bounds how long an interrupt waits.

use iced_x86::ConditionCode;

use super::*;

/// At most this many instructions in one run.
const MAX_RUN: u32 = 256;
/// A run ends after this many instructions in a row that are not SIMD.
const MAX_PLAIN_STREAK: u32 = 12;
/// RFLAGS.TF: a single-stepping guest gets its #DB after each instruction.
const TF: u64 = 1 << 8;

/// What one run did: SIMD instructions run, and other instructions run or
/// branches followed after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub simd: u32,
    pub plain: u32,
}

/// Whether `insn` belongs to the instruction sets that run natively: SIMD
/// (MMX to AVX2, with AES, SHA, CLMUL, GFNI) and the bit-manipulation
/// extensions crypto code uses. Some(true) when it uses SIMD state, and
/// whether the host CPU has every set it needs (it raises #UD otherwise,
/// as the guest, which sees the host's CPUID, would expect).
pub(super) fn simd_features(insn: &Instruction) -> Option<(bool, bool)> {
    use CpuidFeature as F;
    let (mut simd, mut host) = (false, true);
    for &f in insn.cpuid_features() {
        let (state, has) = match f {
            F::MMX => (true, is_x86_feature_detected!("mmx")),
            F::SSE | F::SSE2 => (true, true),
            F::SSE3 => (true, is_x86_feature_detected!("sse3")),
            F::SSSE3 => (true, is_x86_feature_detected!("ssse3")),
            F::SSE4_1 => (true, is_x86_feature_detected!("sse4.1")),
            F::SSE4_2 => (true, is_x86_feature_detected!("sse4.2")),
            F::AVX => (true, is_x86_feature_detected!("avx")),
            F::AVX2 => (true, is_x86_feature_detected!("avx2")),
            F::FMA => (true, is_x86_feature_detected!("fma")),
            F::F16C => (true, is_x86_feature_detected!("f16c")),
            F::AES => (true, is_x86_feature_detected!("aes")),
            F::PCLMULQDQ => (true, is_x86_feature_detected!("pclmulqdq")),
            F::VAES => (true, is_x86_feature_detected!("vaes")),
            F::VPCLMULQDQ => (true, is_x86_feature_detected!("vpclmulqdq")),
            F::SHA => (true, is_x86_feature_detected!("sha")),
            F::GFNI => (true, is_x86_feature_detected!("gfni")),
            F::BMI1 => (false, is_x86_feature_detected!("bmi1")),
            F::BMI2 => (false, is_x86_feature_detected!("bmi2")),
            F::ADX => (false, is_x86_feature_detected!("adx")),
            _ => return None,
        };
        simd |= state;
        host &= has;
    }
    Some((simd, host))
}

/// Integer instructions a run may take: they compute on general-purpose
/// registers, flags and at most one memory operand, cannot fault on
/// registers (no division), and touch neither the stack nor system state.
/// setcc and cmovcc are admitted by their condition code.
fn plain(insn: &Instruction) -> bool {
    use Mnemonic as M;
    let admitted = matches!(
        insn.mnemonic(),
        M::Mov
            | M::Movzx
            | M::Movsx
            | M::Movsxd
            | M::Add
            | M::Adc
            | M::Sub
            | M::Sbb
            | M::And
            | M::Or
            | M::Xor
            | M::Not
            | M::Neg
            | M::Inc
            | M::Dec
            | M::Cmp
            | M::Test
            | M::Shl
            | M::Shr
            | M::Sar
            | M::Rol
            | M::Ror
            | M::Shld
            | M::Shrd
            | M::Bswap
            | M::Imul
            | M::Mul
            | M::Lea
            | M::Nop
            | M::Cbw
            | M::Cwde
            | M::Cdqe
            | M::Cwd
            | M::Cdq
            | M::Cqo
    ) || (insn.condition_code() != ConditionCode::None && insn.flow_control() == FlowControl::Next);
    // Only base x86-64 ones: a newer set the host may lack (CMPccXADD has
    // a condition code too) would be #UD in the runner.
    let base = insn.cpuid_features().iter().all(|f| {
        use CpuidFeature as F;
        matches!(
            f,
            F::INTEL8086 | F::INTEL186 | F::INTEL286 | F::INTEL386 | F::INTEL486 | F::X64 | F::CMOV | F::MULTIBYTENOP
        )
    });
    // Lock makes an instruction atomic, which a copy of its operand is not.
    admitted && base && !insn.has_lock_prefix()
}

/// Legacy SSE instructions with a 16-byte memory operand raise #GP when it
/// is not 16-aligned, but for the unaligned moves and the string compares;
/// VEX ones only for the explicitly aligned moves (SDM vol. 2, 2.4-2.5).
fn needs_alignment(insn: &Instruction) -> Option<u64> {
    use Mnemonic as M;
    match insn.mnemonic() {
        M::Movaps | M::Movapd | M::Movdqa | M::Movntps | M::Movntpd | M::Movntdq | M::Movntdqa => Some(16),
        M::Vmovaps | M::Vmovapd | M::Vmovdqa | M::Vmovntps | M::Vmovntpd | M::Vmovntdq | M::Vmovntdqa => {
            Some(insn.memory_size().size() as u64)
        }
        M::Movups | M::Movupd | M::Movdqu | M::Lddqu | M::Pcmpestri | M::Pcmpestrm | M::Pcmpistri | M::Pcmpistrm => {
            None
        }
        _ if insn.encoding() == EncodingKind::Legacy && insn.memory_size().size() == 16 => Some(16),
        _ => None,
    }
}

/// Whether condition `cc` holds for `flags` (SDM vol. 1, appendix B).
fn condition_holds(cc: ConditionCode, flags: u64) -> bool {
    use ConditionCode as C;
    let (cf, zf, sf, of, pf) = (flags & CF != 0, flags & ZF != 0, flags & SF != 0, flags & OF != 0, flags & PF != 0);
    match cc {
        C::o => of,
        C::no => !of,
        C::b => cf,
        C::ae => !cf,
        C::e => zf,
        C::ne => !zf,
        C::be => cf || zf,
        C::a => !cf && !zf,
        C::s => sf,
        C::ns => !sf,
        C::p => pf,
        C::np => !pf,
        C::l => sf != of,
        C::ge => sf == of,
        C::le => zf || sf != of,
        C::g => !zf && sf == of,
        C::None => true,
    }
}

/// Runs the refused SIMD instruction `first` natively, then what follows
/// it as far as a run may go. Err only for `first` (nothing done).
pub(super) fn run(m: &mut impl Machine, first: &Instruction) -> Result<Batch, Outcome> {
    let mut state = State::start(m)?;
    let mut batch = Batch { simd: 1, plain: 0 };
    match state.step(m, first, true) {
        Err(e) => return Err(e),
        // Raised: nothing ran, nothing to write back.
        Ok(false) => return Ok(batch),
        Ok(true) => {}
    }
    let mut streak = 0;
    while batch.simd + batch.plain < MAX_RUN && streak < MAX_PLAIN_STREAK && m.bitness() == 64 && m.rflags() & TF == 0 {
        let Some(insn) = fetch(m) else { break };
        let simd = simd_features(&insn).is_some();
        let taken = if insn.is_jcc_short_or_near() {
            let target = if condition_holds(insn.condition_code(), m.rflags()) {
                insn.near_branch_target()
            } else {
                insn.next_ip()
            };
            m.set_rip(target);
            true
        } else if insn.is_jmp_short_or_near() {
            m.set_rip(insn.near_branch_target());
            true
        } else if simd || plain(&insn) {
            // Anything that would fault, or is not certain, waits for the
            // emulator to refuse it again: it is then the first of a run.
            matches!(state.step(m, &insn, false), Ok(true))
        } else {
            false
        };
        if !taken {
            break;
        }
        if simd {
            batch.simd += 1;
            streak = 0;
        } else {
            batch.plain += 1;
            streak += 1;
        }
    }
    state.finish(m);
    Ok(batch)
}

/// The instruction at RIP, from guest memory (None if it does not all
/// translate or decode).
fn fetch(m: &mut impl Machine) -> Option<Instruction> {
    let linear = m.segment_base(Register::CS).wrapping_add(m.rip());
    let mut bytes = [0u8; 15];
    // All 15 bytes, or as many as the page holds (the next may not map).
    let in_page = (4096 - (linear & 0xfff) as usize).min(15);
    let len = if m.fetch(linear, &mut bytes) {
        15
    } else if m.fetch(linear, &mut bytes[..in_page]) {
        in_page
    } else {
        return None;
    };
    let insn = Decoder::with_ip(64, &bytes[..len], m.rip(), DecoderOptions::NONE).decode();
    (!insn.is_invalid()).then_some(insn)
}

/// The guest's extended state over a run, read once and written back
/// once, with what stays fixed during it.
struct State {
    /// The vCPU's XSAVE area (standard format) as read; XSTATE_BV and the
    /// rest of the header are restored from it at the end.
    area: Vec<u8>,
    ctx: Box<native::Context>,
    cr0: u64,
    cr4: u64,
    xcr0: u64,
    /// MXCSR masks every SIMD exception and no x87 exception is pending
    /// (else an instruction might fault on the host).
    mxcsr_masked: bool,
    x87_pending: bool,
    ran: bool,
}

impl State {
    fn start(m: &mut impl Machine) -> Result<State, Outcome> {
        let (cr0, cr4) = m.control_registers();
        // VEX needs AVX in XCR0; legacy SSE state is there whatever it says.
        let xcr0 = m.xcr0().unwrap_or(1);
        let Some(area) = m.xsave_area() else { return Err(Outcome::Unsupported("simd (no XSAVE area)".into())) };
        let host_xcr0 = native::host_xcr0();
        let mut ctx = native::Context::new();
        ctx.mask = host_xcr0 & 0b11 | host_xcr0 & xcr0 & 0xe4;
        ctx.guest.copy_from_slice(&area);
        let xstate_bv = le64(&area, XSTATE_BV);
        ctx.guest[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&(xstate_bv & ctx.mask).to_le_bytes());
        ctx.guest[HEADER_REST].fill(0);
        Ok(State {
            mxcsr_masked: le32(&area, MXCSR) & 0x1f80 == 0x1f80,
            x87_pending: u16::from_le_bytes([area[FSW], area[FSW + 1]]) & FSW_ES != 0,
            area,
            ctx,
            cr0,
            cr4,
            xcr0,
            ran: false,
        })
    }

    /// Runs `insn` (SIMD or plain): Ok(true) when it ran, Ok(false) when
    /// the `first` one raised what the CPU would raise first (#UD, #NM,
    /// #GP for alignment; RIP stays). Err when it was not run: not
    /// admitted, not certain, or a fault that is not the first's.
    fn step(&mut self, m: &mut impl Machine, insn: &Instruction, first: bool) -> Result<bool, Outcome> {
        let unsupported = |why: &str| Err(Outcome::Unsupported(format!("{:?} {why}", insn.mnemonic()).to_lowercase()));
        // ldmxcsr may set reserved bits (#GP on this CPU) or unmask
        // exceptions that later instructions would raise here: the run
        // ends, and complete::ldmxcsr takes it alone, with its checks.
        if matches!(insn.mnemonic(), Mnemonic::Ldmxcsr | Mnemonic::Vldmxcsr) {
            return unsupported("loads MXCSR");
        }
        let simd = simd_features(insn);
        let (uses_state, host_has) = simd.unwrap_or((false, true));
        let vex = matches!(insn.encoding(), EncodingKind::VEX | EncodingKind::EVEX);
        if simd.is_some() {
            if !host_has || (uses_state && !vex && (self.cr0 & CR0_EM != 0 || self.cr4 & CR4_OSFXSR == 0)) {
                return raise(m, first, UD, None);
            }
            if vex && (self.cr4 & CR4_OSXSAVE == 0 || self.xcr0 & 0b110 != 0b110) {
                return raise(m, first, UD, None);
            }
            if uses_state && self.cr0 & CR0_TS != 0 {
                return raise(m, first, NM, None);
            }
        }
        // The operands: general-purpose registers but RSP, vector registers
        // for SIMD, at most one plain memory operand (no string forms, no VSIB).
        let mut memory = None;
        for n in 0..insn.op_count() {
            match insn.op_kind(n) {
                OpKind::Register if insn.op_register(n).full_register() == Register::RSP => {
                    return unsupported("names rsp")
                }
                OpKind::Register if simd.is_none() && !insn.op_register(n).is_gpr() => {
                    return unsupported("names a register that is not general-purpose")
                }
                OpKind::Register
                | OpKind::Immediate8
                | OpKind::Immediate8_2nd
                | OpKind::Immediate16
                | OpKind::Immediate32 => {}
                OpKind::Immediate8to16
                | OpKind::Immediate8to32
                | OpKind::Immediate8to64
                | OpKind::Immediate32to64
                | OpKind::Immediate64
                    if simd.is_none() => {}
                OpKind::Memory if !insn.memory_index().is_vector_register() => memory = Some(n),
                _ => return unsupported("has an operand that is not a register or plain memory"),
            }
        }
        if insn.flow_control() != FlowControl::Next {
            return unsupported("changes control flow");
        }
        if uses_state && !self.mxcsr_masked {
            return unsupported("with unmasked SIMD exceptions");
        }
        if insn.cpuid_features().contains(&CpuidFeature::MMX) && self.x87_pending {
            return unsupported("with an x87 exception pending");
        }
        let mut native_insn = *insn;
        match insn.mnemonic() {
            // A multi-byte nop names memory it never touches.
            Mnemonic::Nop => {
                m.set_rip(insn.next_ip());
                return Ok(true);
            }
            // lea computes an address and touches nothing: it runs as it
            // is, but for a RIP-relative one, whose value is known here.
            Mnemonic::Lea if insn.is_ip_rel_memory_operand() => {
                let reg = insn.op0_register();
                write_register(m, reg, reg.size() as u64 * 8, insn.ip_rel_memory_address());
                m.set_rip(insn.next_ip());
                return Ok(true);
            }
            Mnemonic::Lea => memory = None,
            _ => {}
        }

        // The memory operand's bytes, and whether they are written back.
        let mut operand = [0u8; native::MAX_OPERAND];
        let mut write_back = None;
        if let Some(n) = memory {
            let size = insn.memory_size().size();
            if size == 0 || size > native::MAX_OPERAND {
                return unsupported("has a memory operand of an unexpected size");
            }
            let linear = memory_address(m, insn, n)?;
            if simd.is_some() && needs_alignment(insn).is_some_and(|align| linear % align != 0) {
                return raise(m, first, GP, Some(0));
            }
            let access = InstructionInfoFactory::new().info(insn).op_access(n);
            let writes =
                matches!(access, OpAccess::Write | OpAccess::ReadWrite | OpAccess::CondWrite | OpAccess::ReadCondWrite);
            // Read even a store's bytes: a partial store writes the rest back
            // unchanged. A page fault says what the instruction does.
            if !m.read(linear, &mut operand[..size]) {
                return Err(Outcome::Fault { linear, write: writes });
            }
            if writes {
                write_back = Some((linear, size));
            }
        }
        for (i, slot) in self.ctx.gprs.iter_mut().enumerate() {
            *slot = m.gpr64(GPRS[i]);
        }
        self.ctx.rflags = m.rflags() & ARITHMETIC | 2;
        let Some(cpu) = m.native() else { return unsupported("(no native page)") };
        if memory.is_some() {
            native_insn.set_memory_base(Register::RIP);
            native_insn.set_memory_index(Register::None);
            native_insn.set_memory_index_scale(1);
            native_insn.set_memory_displacement64(cpu.operand_address());
            native_insn.set_memory_displ_size(8);
            native_insn.set_segment_prefix(Register::None);
        }
        let mut encoder = Encoder::new(64);
        if encoder.encode(&native_insn, cpu.code_address()).is_err() {
            return unsupported("does not encode for 64-bit mode");
        }
        let code = encoder.take_buffer();

        cpu.operand()[..].copy_from_slice(&operand);
        // A store that then faults must leave the state as it was.
        let before = write_back.map(|_| self.ctx.guest);
        // SAFETY: simd_features, plain and the operand checks above admit
        // only instructions on registers and the one operand copy, with no
        // control flow and no division; #UD, #NM and alignment #GP were
        // raised instead of running; SIMD exceptions are masked in MXCSR
        // and none is pending for x87; the area's header is one XRSTOR
        // accepts for the mask (start sanitised it; XSAVE keeps it so).
        unsafe { cpu.run(&code, &mut self.ctx) };
        operand.copy_from_slice(&cpu.operand()[..]);

        if let Some((linear, size)) = write_back {
            if !m.write(linear, &operand[..size]) {
                if let Some(before) = before {
                    self.ctx.guest = before;
                }
                return Err(Outcome::Fault { linear, write: true });
            }
        }
        self.ran = true;
        for (i, &value) in self.ctx.gprs.iter().enumerate() {
            if GPRS[i] != Register::RSP {
                m.set_gpr64(GPRS[i], value);
            }
        }
        m.set_rflags(m.rflags() & !ARITHMETIC | self.ctx.rflags & ARITHMETIC);
        m.set_rip(insn.next_ip());
        Ok(true)
    }

    /// The extended state back to the vCPU, if anything ran: the
    /// components the run held, as XSAVE left them, the rest as they were.
    fn finish(self, m: &mut impl Machine) {
        if !self.ran {
            return;
        }
        let State { mut area, ctx, .. } = self;
        let xstate_bv = le64(&area, XSTATE_BV);
        let new_bv = le64(&ctx.guest, XSTATE_BV);
        let header = area[HEADER_REST].to_vec();
        area.copy_from_slice(&ctx.guest);
        area[XSTATE_BV..XSTATE_BV + 8].copy_from_slice(&(xstate_bv & !ctx.mask | new_bv & ctx.mask).to_le_bytes());
        area[HEADER_REST].copy_from_slice(&header);
        m.set_xsave_area(area);
    }
}

/// The general-purpose registers in encoding order (`native::Context`).
pub(super) const GPRS: [Register; 16] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RBX,
    Register::RSP,
    Register::RBP,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

/// What the CPU raises before running the `first` instruction (RIP stays
/// on it); an instruction later in a run is left to the emulator instead.
fn raise(m: &mut impl Machine, first: bool, vector: u8, error_code: Option<u32>) -> Result<bool, Outcome> {
    if !first {
        return Err(Outcome::Unsupported("would fault".into()));
    }
    m.inject(vector, error_code);
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_hold_where_the_host_cpus_setcc_says_they_do() {
        let Ok(mut cpu) = NativeCpu::new() else { return };
        let mut ctx = native::Context::new();
        ctx.mask = native::host_xcr0() & 0b11;
        ctx.guest[MXCSR..MXCSR + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
        for cc in 0..16u8 {
            // setcc al: 0f 90+cc c0.
            let setcc = [0x0f, 0x90 + cc, 0xc0];
            let insn = Decoder::with_ip(64, &setcc, 0, DecoderOptions::NONE).decode();
            for bits in 0..32u64 {
                let flags = [CF, PF, ZF, SF, OF].iter().enumerate().fold(2, |f, (i, b)| f | ((bits >> i & 1) * b));
                ctx.rflags = flags;
                ctx.gprs[0] = 0;
                // SAFETY: a register-only instruction; the header is zero.
                unsafe { cpu.run(&setcc, &mut ctx) };
                assert_eq!(
                    condition_holds(insn.condition_code(), flags),
                    ctx.gprs[0] == 1,
                    "{:?} flags {flags:#x}",
                    insn.condition_code()
                );
            }
        }
    }
}
