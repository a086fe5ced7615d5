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

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

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
pub const KINDS: [&str; 8] = ["int3", "int", "fwait", "clac", "stac", "popcnt", "lzcnt", "tzcnt"];

/// What became of a refused instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Carried out; the name counts it on the stats page ("popcnt").
    Completed(&'static str),
    /// Not an instruction this engine completes: the mnemonic, for the
    /// one line that stops the VM.
    Unsupported(String),
    /// The bytes do not decode (cut short, or not an instruction).
    Undecodable,
    /// A memory operand did not translate (the guest would take a #PF;
    /// not injected yet: the VM stops with the address).
    Fault(u64),
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
    /// Injects an exception vector (< 32) or a software interrupt.
    fn inject(&mut self, vector: u8);
}

/// Decodes the instruction at RIP from `bytes` and completes it.
pub fn complete(m: &mut impl Machine, bytes: &[u8]) -> Outcome {
    let mut decoder = Decoder::with_ip(m.bitness(), bytes, m.rip(), DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Outcome::Undecodable;
    }
    let kind = match insn.mnemonic() {
        Mnemonic::Int3 => {
            m.set_rip(insn.next_ip());
            m.inject(3);
            "int3"
        }
        Mnemonic::Int => {
            m.set_rip(insn.next_ip());
            m.inject(insn.immediate8());
            "int"
        }
        // Waits for a pending unmasked x87 exception: kernels run with x87
        // exceptions masked, so there is none (a wrong guess loses a #MF).
        Mnemonic::Wait => {
            m.set_rip(insn.next_ip());
            "fwait"
        }
        Mnemonic::Clac | Mnemonic::Stac => {
            let ac = if insn.mnemonic() == Mnemonic::Stac { AC } else { 0 };
            m.set_rflags(m.rflags() & !AC | ac);
            m.set_rip(insn.next_ip());
            if ac != 0 {
                "stac"
            } else {
                "clac"
            }
        }
        Mnemonic::Popcnt | Mnemonic::Lzcnt | Mnemonic::Tzcnt => match count_bits(m, &insn) {
            Ok(kind) => kind,
            Err(outcome) => return outcome,
        },
        other => return Outcome::Unsupported(format!("{other:?}").to_lowercase()),
    };
    Outcome::Completed(kind)
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

/// The value of operand `n` (a register or memory), `width` bits.
fn operand_value(m: &mut impl Machine, insn: &Instruction, n: u32, width: u64) -> Result<u64, Outcome> {
    match insn.op_kind(n) {
        OpKind::Register => Ok(read_register(m, insn.op_register(n))),
        OpKind::Memory => {
            let linear = insn
                .virtual_address(n, 0, |reg, _, _| Some(register_for_address(m, reg)))
                .ok_or(Outcome::Undecodable)?;
            let mut buf = [0u8; 8];
            let len = (width / 8) as usize;
            if !m.read(linear, &mut buf[..len]) {
                return Err(Outcome::Fault(linear));
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

    /// Registers, flags and a page of memory at MEM.
    #[derive(Debug, Clone, PartialEq)]
    struct Fake {
        gpr: [u64; 16],
        rip: u64,
        rflags: u64,
        mem: Vec<u8>,
        injected: Vec<u8>,
    }

    const MEM: u64 = 0x10_0000;

    impl Fake {
        fn new() -> Fake {
            Fake { gpr: [0; 16], rip: 0x1000, rflags: 0x2, mem: vec![0; 4096], injected: Vec::new() }
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
        fn inject(&mut self, vector: u8) {
            self.injected.push(vector);
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
        // An address that does not translate is a fault, and nothing moves.
        let mut f = Fake::new();
        f.gpr[3] = 0xdead_0000;
        let before = f.clone();
        assert_eq!(complete(&mut f, &[0xf3, 0x48, 0x0f, 0xb8, 0x03]), Outcome::Fault(0xdead_0000));
        assert_eq!(f, before);
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
        assert_eq!((f.injected.as_slice(), f.rip), (&[3, 0x80][..], 0x1006 + 1 + 2 + 1));
    }

    #[test]
    fn anything_else_is_named_and_left_alone() {
        let mut f = Fake::new();
        let before = f.clone();
        assert_eq!(complete(&mut f, &[0xeb, 0x38]), Outcome::Unsupported("jmp".into()));
        assert_eq!(complete(&mut f, &[0x48, 0x0f, 0xae, 0x2f]), Outcome::Unsupported("xrstor64".into()));
        assert_eq!(complete(&mut f, &[0x0f]), Outcome::Undecodable);
        assert_eq!(f, before);
    }
}
