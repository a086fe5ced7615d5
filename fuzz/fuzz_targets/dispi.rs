//! The display's DISPI registers as a guest writes them: any index, any
//! value; every mode it enables must fit the VRAM.
#![no_main]

use capvm_fbuf::dispi::{Change, Dispi};
use capvm_fuzz::Input;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut d = Dispi::default();
    while !input.done() {
        let index = input.u16();
        if input.u8() & 1 == 0 {
            let _ = d.read(index);
        } else if let Change::Mode(Some(mode)) = d.write(index, input.u16()) {
            assert!(mode.checked().is_some(), "{mode:?}");
        }
    }
});
