//! PCI configuration space as a guest reaches it: reads and writes of any
//! size at any offset, BAR sizing included.
#![no_main]

use capvm_fuzz::Input;
use capvm_ipc::{BarKind, BarSpec};
use capvm_pci::config::{ConfigSpace, Identity};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut c = ConfigSpace::new(&Identity {
        vendor: 0x1af4,
        device: 0x1042,
        revision: 1,
        class: [1, 0x80, 0],
        subsystem_vendor: 0x1af4,
        subsystem: 0x40,
    });
    c.add_bar(&BarSpec { index: 0, kind: BarKind::Mem32, size: 0x4000, addr: 0xc000_0000 });
    c.add_bar(&BarSpec { index: 2, kind: BarKind::Mem64, size: 1 << 20, addr: 0x1_0000_0000 });
    c.set_interrupt_pin(1);
    c.add_capability(&[0x11, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[0, 0, 0, 0xc0]);
    while !input.done() {
        // Any offset and size the exit ring carries: the space checks them.
        let (write, offset, size) = (input.u8() & 1 == 1, u64::from(input.u16()) % 4200, input.size());
        if write {
            c.write(offset, size, input.u64());
        } else {
            let _ = c.read(offset, size);
        }
    }
});
