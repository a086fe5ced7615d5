//! The CMOS/RTC as a guest drives it: index selections and data reads and
//! writes in any order, at host times the input picks.
#![no_main]

use capvm_fuzz::Input;
use capvm_vcpu_runner::rtc::Rtc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut rtc = Rtc::with_memory(0x8000_0000, 1 << 32, 2);
    while !input.done() {
        let now = input.u32() as i64;
        match input.u8() % 3 {
            0 => rtc.select(input.u8()),
            1 => {
                let _ = rtc.read(now);
            }
            _ => rtc.write(input.u8(), now),
        }
    }
});
