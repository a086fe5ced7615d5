//! The runner's completion of an instruction KVM's emulator refused, as a
//! hostile guest could set it up: any bytes at RIP, in 16-, 32- or 64-bit
//! code, at any CPL, with any registers, flags, SIMD state and memory
//! (within what KVM lets a vCPU hold: a valid XCR0 and MXCSR). What
//! passes `complete::simd`'s checks runs on this process's CPU, as it does
//! in the runner: an instruction that faults, jumps or touches memory
//! other than its operand copy there is a crash here.
#![no_main]

use std::cell::Cell;

use capvm_fuzz::Input;
use capvm_kernel::complete::{self, DescriptorTables, Machine, XSAVE_AREA};
use capvm_kernel::native::{host_xcr0, NativeCpu};
use iced_x86::Register;

/// The guest's linear memory: two pages, code first.
const MEM: u64 = 0x10_0000;
const MEM_LEN: usize = 2 * 4096;

thread_local! {
    /// One NativeCpu for the whole run (mapping pages each time is slow).
    static NATIVE: Cell<Option<NativeCpu>> = Cell::new(NativeCpu::new().ok());
}

struct Guest {
    bitness: u32,
    gpr: [u64; 16],
    rip: u64,
    rflags: u64,
    mem: Vec<u8>,
    xcr0: u64,
    area: Vec<u8>,
    cr0: u64,
    cr4: u64,
    native: Option<NativeCpu>,
    can_fault: bool,
    tables: DescriptorTables,
}

impl Guest {
    fn at(&self, linear: u64, len: usize) -> Option<std::ops::Range<usize>> {
        let at = usize::try_from(linear.checked_sub(MEM)?).ok()?;
        (at.checked_add(len)? <= MEM_LEN).then_some(at..at + len)
    }
}

impl Machine for Guest {
    fn bitness(&self) -> u32 {
        self.bitness
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
        self.gpr.get(reg.number()).copied().unwrap_or(0)
    }
    fn set_gpr64(&mut self, reg: Register, value: u64) {
        if let Some(r) = self.gpr.get_mut(reg.number()) {
            *r = value;
        }
    }
    fn segment_base(&self, _: Register) -> u64 {
        0
    }
    fn read(&mut self, linear: u64, buf: &mut [u8]) -> bool {
        let Some(r) = self.at(linear, buf.len()) else { return false };
        buf.copy_from_slice(&self.mem[r]);
        true
    }
    fn inject(&mut self, _: u8, _: Option<u32>) {}
    fn write(&mut self, linear: u64, buf: &[u8]) -> bool {
        let Some(r) = self.at(linear, buf.len()) else { return false };
        self.mem[r].copy_from_slice(buf);
        true
    }
    fn xcr0(&mut self) -> Option<u64> {
        Some(self.xcr0)
    }
    fn xsave_area(&mut self) -> Option<Vec<u8>> {
        Some(self.area.clone())
    }
    fn set_xsave_area(&mut self, area: Vec<u8>) {
        assert_eq!(area.len(), XSAVE_AREA, "an area of another size");
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
        self.native.as_mut()
    }
    fn inject_page_fault(&mut self, _: u64, _: bool) -> bool {
        self.can_fault
    }
    fn descriptor_tables(&self) -> DescriptorTables {
        self.tables
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let insn = input.bytes(15).to_vec();
    let bitness = [16, 32, 64][usize::from(input.u8() % 3)];
    let cpl = input.u8() % 4;
    // Registers point into the guest's memory or anywhere.
    let mut gpr = [0u64; 16];
    for r in &mut gpr {
        *r = if input.u8() & 1 == 0 { MEM + u64::from(input.u16()) % MEM_LEN as u64 } else { input.u64() };
    }
    // Defined RFLAGS bits only, bit 1 set (a vCPU holds nothing else).
    let rflags = u64::from(input.u32()) & 0x3f_7fd5 | 2;
    let bits = input.u8();
    // PE, PG, ET, NE; EM, TS, MP and WP as the input says.
    let cr0 = 0x8000_0031 | u64::from(bits & 0xf) << 1 & 0xe | u64::from(bits >> 4 & 1) << 16;
    let bits = input.u8();
    // OSFXSR, OSXMMEXCPT, OSXSAVE, SMEP, SMAP as the input says; PAE.
    let cr4 = 1 << 5
        | u64::from(bits & 1) << 9
        | u64::from(bits >> 1 & 1) << 10
        | u64::from(bits >> 2 & 1) << 18
        | u64::from(bits >> 3 & 1) << 20
        | u64::from(bits >> 4 & 1) << 21;
    // A valid XCR0, as KVM holds a vCPU to: x87+SSE, +AVX, or the host's.
    let xcr0 = [0b11, 0b111 & host_xcr0(), host_xcr0()][usize::from(input.u8() % 3)];
    // A standard-format area as KVM_GET_XSAVE gives it: any register
    // contents, a valid MXCSR, XSTATE_BV within XCR0, the rest zero.
    let mut area = vec![0u8; XSAVE_AREA];
    area[..2].copy_from_slice(&input.u16().to_le_bytes());
    area[24..28].copy_from_slice(&(input.u32() & 0xffbf).to_le_bytes());
    let regs = input.bytes(64);
    area[160..160 + regs.len()].copy_from_slice(regs);
    area[512..520].copy_from_slice(&(u64::from(input.u8()) & xcr0).to_le_bytes());
    let can_fault = input.u8() & 1 == 0;
    let tables =
        DescriptorTables { gdt: (MEM + 0x1000, u32::from(input.u16())), ldt: None, cpl, long_mode: bitness == 64 };
    // Code at RIP (a run reads on past the first instruction), the rest of
    // memory from what is left of the input.
    let mut mem = vec![0u8; MEM_LEN];
    mem[..insn.len()].copy_from_slice(&insn);
    let rest = input.bytes(MEM_LEN - 16);
    mem[16..16 + rest.len()].copy_from_slice(rest);
    let mut guest =
        Guest { bitness, gpr, rip: MEM, rflags, mem, xcr0, area, cr0, cr4, native: NATIVE.take(), can_fault, tables };
    let _ = complete::complete(&mut guest, &insn);
    NATIVE.set(guest.native.take());
});
