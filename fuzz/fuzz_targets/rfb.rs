//! One VNC viewer's bytes through the RFB state machine, in pieces as the
//! network delivers them, with updates answered in between; with and
//! without VNC Authentication.
#![no_main]

use capvm_fuzz::Input;
use capvm_vnc::rfb::Client;
use capvm_vnc::screen::Screen;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let password = (input.u8() & 1 == 1).then_some("secret");
    let mut screen = Screen::blank(200, 100);
    for (i, b) in screen.pixels.iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    let mut c = Client::new("fuzz", password, &screen);
    while !input.done() && c.closed.is_none() {
        let n = usize::from(input.u8());
        c.receive(input.bytes(n), &screen);
        c.update(&screen);
        c.output.clear();
        c.input_events.clear();
    }
});
