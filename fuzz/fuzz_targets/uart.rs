//! The 16550A as a guest drives it through the exit ring (byte accesses to
//! its eight registers, and wider or stray ones), with host input arriving
//! in between: the uart server's own dispatch on vm-superio's model.
#![no_main]

use capvm_fuzz::Input;
use capvm_ipc::ring::{Op, Request};
use vm_superio::{Serial, Trigger};

/// The interrupt line: nothing to raise in a fuzz run.
struct NoIrq;

impl Trigger for NoIrq {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        Ok(())
    }
}

const BASE: u16 = 0x3f8;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut serial = Serial::new(NoIrq, std::io::sink());
    while !input.done() {
        let kind = input.u8();
        if kind % 8 == 7 {
            // Host input, as much as the receive FIFO takes.
            let n = usize::from(input.u8() % 80).min(serial.fifo_capacity());
            let _ = serial.enqueue_raw_bytes(input.bytes(n));
            continue;
        }
        let op = [Op::PioRead, Op::PioWrite, Op::MmioRead, Op::ConfigWrite][usize::from(kind % 4)];
        // Mostly the eight registers, sometimes a stray port.
        let addr = if kind & 0x80 == 0 { u64::from(BASE) + u64::from(input.u8() % 8) } else { input.u64() };
        let size = if kind & 0x40 == 0 { 1 } else { input.u8() };
        let req = Request { op, region: 0, addr, size, data: input.u64() };
        let value = capvm_uart::registers::access(&mut serial, BASE, req);
        if req.size != 1 || !(u64::from(BASE)..u64::from(BASE) + 8).contains(&req.addr) {
            assert_eq!(value, u64::MAX, "a stray access floats high");
        } else if req.op == Op::PioRead {
            assert!(value <= 0xff, "a register is a byte");
        }
    }
});
