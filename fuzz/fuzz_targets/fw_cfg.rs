//! fw_cfg as firmware (or a hostile guest) drives it: selector and data
//! port accesses of any size, and DMA descriptors at any address, read from
//! guest RAM that the input fills (control, length, address: anything).
#![no_main]

use capvm_fuzz::{guest_ram, Input};
use capvm_ipc::FwCfgItems;
use capvm_vcpu_runner::fwcfg::{FwCfg, DATA, DMA, DMA_LOW, SELECTOR};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mem = guest_ram(&mut input, 0x1_0000);
    let items = FwCfgItems {
        items: vec![(0x19 + 0x100, vec![1, 2, 3])],
        files: vec![("etc/a".into(), vec![7; 300]), ("bootorder".into(), b"/pci@i0cf8/*@3\n\0".to_vec())],
    };
    let mut f = FwCfg::new(&items, mem);
    while !input.done() {
        let port = match input.u8() % 5 {
            0 => SELECTOR,
            1 => DATA,
            2 => DMA,
            3 => DMA_LOW,
            _ => DMA + u16::from(input.u8() % 8),
        };
        let size = input.size();
        if input.u8() & 1 == 0 {
            let _ = f.read(port, size);
        } else {
            f.write(port, size, input.u64());
        }
    }
});
