//! Every message a child or the broker can receive, decoded from arbitrary
//! bytes: an error, never a panic or a huge allocation.
#![no_main]

use capvm_ipc::{ToBroker, ToChild};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = capvm_ipc::channel::decode::<ToBroker>(data);
    let _ = capvm_ipc::channel::decode::<ToChild>(data);
    let _ = capvm_ipc::input::InputEvent::decode(data);
});
