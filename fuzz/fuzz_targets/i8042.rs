//! The PS/2 controller, keyboard and mouse as a guest drives them (reads
//! and writes of ports 0x60 and 0x64) with viewer input in between.
#![no_main]

use capvm_fuzz::Input;
use capvm_ps2::i8042::I8042;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut c = I8042::default();
    while !input.done() {
        let port = if input.u8() & 1 == 0 { 0x60 } else { 0x64 };
        match input.u8() % 4 {
            0 => {
                let _ = c.read(port);
            }
            1 => {
                let _ = c.write(port, input.u8());
            }
            2 => {
                let _ = c.key(input.u8(), input.u8() & 1 == 1);
            }
            _ => {
                let (dx, dy, wheel) = (input.u32() as i32, input.u32() as i32, i32::from(input.u8() as i8));
                let _ = c.motion(dx, dy, wheel, input.u8());
            }
        }
    }
});
