//! capvm-vcpu-runner: creates the VM, maps guest RAM, runs one thread per
//! vCPU and routes PIO exits to device servers through their exit rings.
//!
//! Started by the broker with its control socket at fd 3; everything else
//! (/dev/kvm, RAM, rings, eventfds) arrives in the `StartRunner` message.

mod memory;
mod pci;
mod platform;
mod router;
mod runner;

use capvm_vcpu_runner::{flash, fwcfg, rtc};

use capvm_ipc::{ToBroker, ToChild};

fn main() {
    let channel = capvm_ipc::child_channel();
    let code = match runner::start(&channel) {
        Ok(never) => match never {},
        Err(e) => {
            // The broker prints it, once, with our role and pid.
            if channel.send(&ToBroker::Fatal(e.to_string()), &[]).is_err() {
                eprintln!("capvm-vcpu-runner: {e}");
            }
            4
        }
    };
    std::process::exit(code);
}

/// Waits for the one start message. Anything else is a broker bug.
fn receive_start(
    channel: &capvm_ipc::Channel,
) -> Result<(capvm_ipc::RunnerConfig, Vec<std::os::fd::OwnedFd>), runner::RunnerError> {
    match channel.recv()? {
        (ToChild::StartRunner(cfg), fds) => Ok((cfg, fds)),
        (other, _) => Err(runner::RunnerError::Protocol(format!("expected StartRunner, got {other:?}"))),
    }
}
