//! The firmware's variable store (a CFI flash) as a guest drives it: reads
//! and command writes of any size anywhere in its range, on a memfd.
#![no_main]

use std::sync::OnceLock;

use capvm_fuzz::{memfd_disk, Input};
use capvm_ipc::stats::Counter;
use capvm_vcpu_runner::flash::{Flash, FlashCounters};

const BASE: u64 = 0xffc0_0000;
const SIZE: u64 = 0x2_0000;

/// One store for the process: the runner maps it once for its life (and
/// never unmaps it), so a new one per input would exhaust the mappings.
fn flash() -> &'static Flash {
    static FLASH: OnceLock<Flash> = OnceLock::new();
    FLASH.get_or_init(|| {
        let counters = FlashCounters {
            bytes_programmed: Counter::none(),
            blocks_erased: Counter::none(),
            unknown_commands: Counter::none(),
        };
        let file = std::fs::File::from(memfd_disk(SIZE));
        Flash::map(file, BASE, SIZE, counters).expect("map the store")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flash = flash();
    // Back to reading the array, whatever the last input left.
    flash.write(BASE, 1, 0xff);
    while !input.done() {
        // Mostly the first blocks, where the commands go.
        let addr = BASE + u64::from(input.u16()) % SIZE;
        let size = input.size();
        if !flash.owns(addr) {
            continue;
        }
        if input.u8() & 1 == 0 {
            let _ = flash.read(addr, size);
        } else {
            flash.write(addr, size, input.u64());
        }
    }
});
