//! The wire between capvm's processes.
//!
//! Two transports, for two kinds of traffic:
//! - [`channel`]: typed control messages (bincode 2) over unix seqpacket
//!   sockets, with file descriptors passed alongside (SCM_RIGHTS). Rare and
//!   structured: start-up, lifecycle events, shutdown.
//! - [`ring`]: the exit ring, a shared-memory page through which a vCPU
//!   thread hands a PIO/MMIO access to a device server and waits for the
//!   answer. Frequent and tiny: one cache line per request.
//!
//! - [`stats`]: a page of named counters each child keeps and the broker
//!   reads (`capvmctl --get-stats`) without asking.
//!
//! Everything a peer sends is untrusted: every decode error is an error value.

// The ring reads what a hostile peer wrote: a narrowing cast here must say
// why it cannot cut a value.
#![warn(clippy::cast_possible_truncation)]

pub mod channel;
pub mod display;
pub mod fds;
pub mod input;
pub mod memmap;
pub mod messages;
pub mod ring;
pub mod shm;
pub mod stats;

pub use channel::{Channel, ChannelError};
pub use fds::{
    FdLayoutError, PciFds, RouteFds, StartDeviceFds, StartPs2Fds, StartRunnerFds, StartUartFds, StartVncFds,
};
pub use messages::*;
pub use ring::{ExitRing, RingError};

/// The fd number at which every child finds its control socket after exec.
pub const CHILD_CONTROL_FD: std::os::fd::RawFd = 3;

/// A child's `main`: runs `run` on its control channel; an error goes to
/// the broker as Fatal (which prints it once, with the child's role and
/// pid), or to stderr if the broker is gone, and the child exits with 4.
pub fn child_main<E: std::fmt::Display>(name: &str, run: impl FnOnce(&Channel) -> Result<(), E>) {
    let channel = child_channel();
    if let Err(e) = run(&channel) {
        if channel.send(&ToBroker::Fatal(e.to_string()), &[]).is_err() {
            eprintln!("{name}: {e}");
        }
        std::process::exit(4);
    }
}

/// A child's end of its control socket, taken over once at start-up.
pub fn child_channel() -> Channel {
    // SAFETY: the broker dup2()s the child's socket to CHILD_CONTROL_FD
    // before exec and nothing else in the child owns that fd number.
    unsafe { Channel::from_raw_fd(CHILD_CONTROL_FD) }
}
