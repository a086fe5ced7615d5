//! One register access from the exit ring, as the guest made it: the
//! UART's eight byte-wide registers at its port base; anything else reads
//! as all ones and writes nothing.

use std::io::Write;

use capvm_ipc::ring::{Op, Request};
use vm_superio::{Serial, Trigger};

/// Answers `req` against the UART at `base`.
pub fn access<T: Trigger, W: Write>(
    serial: &mut Serial<T, vm_superio::serial::NoEvents, W>,
    base: u16,
    req: Request,
) -> u64 {
    let offset = req.addr.wrapping_sub(u64::from(base));
    // Registers are bytes; a wider or out-of-range access floats high.
    if offset >= 8 || req.size != 1 {
        return u64::MAX;
    }
    match req.op {
        Op::PioRead => u64::from(serial.read(offset as u8)),
        Op::PioWrite => {
            // A failing host output is the host's problem, not the guest's.
            let _ = serial.write(offset as u8, req.data as u8);
            0
        }
        _ => u64::MAX,
    }
}
