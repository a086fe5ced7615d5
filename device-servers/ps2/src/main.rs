//! capvm-ps2: the i8042 keyboard controller with a PS/2 keyboard and
//! mouse, in its own process. It holds its exit ring (ports 0x60 and
//! 0x64), IRQ 1's and IRQ 12's eventfds, and the read end of the socket
//! on which the display's VNC server sends viewers' keys and motion;
//! nothing else. Started by the broker with its control socket at fd 3.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use capvm_ipc::input::{InputEvent, RECORD};
use capvm_ipc::ring::{ring_eventfd, ExitRing, Op};
use capvm_ipc::stats::{Counter, Stats};
use capvm_ipc::{Channel, ChannelError, StartPs2Fds, ToBroker, ToChild, PROTO_VERSION};
use capvm_ps2::i8042::{Irqs, I8042};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

#[derive(Debug, thiserror::Error)]
enum Ps2Error {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Fds(#[from] capvm_ipc::FdLayoutError),
    #[error(transparent)]
    Ring(#[from] capvm_ipc::RingError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}: {1}")]
    Os(&'static str, #[source] nix::Error),
    #[error("entering the sandbox: {0}")]
    Sandbox(#[from] capvm_policy::enforce::SandboxError),
}

fn main() {
    capvm_ipc::child_main("capvm-ps2", run);
}

struct Counters {
    port_accesses: Counter,
    keys: Counter,
    motions: Counter,
    bad_records: Counter,
    dropped_bytes: Counter,
}

fn run(channel: &Channel) -> Result<(), Ps2Error> {
    let (cfg, fds) = match channel.recv()? {
        (ToChild::StartPs2(cfg), fds) => (cfg, fds),
        (other, _) => return Err(Ps2Error::Protocol(format!("expected StartPs2, got {other:?}"))),
    };
    let StartPs2Fds { ring: ring_fd, doorbell, keyboard_irq, mouse_irq, input, stats: stats_fd } =
        StartPs2Fds::unflatten(fds)?;
    // The ring and the stats page are mapped; their fds are not kept.
    let ring = ExitRing::attach(ring_fd.as_fd(), doorbell)?;
    drop(ring_fd);
    let mut stats = Stats::attach(stats_fd.as_fd()).map_err(|e| Ps2Error::Os("stats page", e))?;
    drop(stats_fd);
    let counters = Counters {
        port_accesses: stats.counter("port_accesses"),
        keys: stats.counter("key_events"),
        motions: stats.counter("motion_events"),
        bad_records: stats.counter("bad_input_records"),
        dropped_bytes: stats.counter("dropped_bytes"),
    };
    let manifest = capvm_policy::roles::ps2(
        ring.doorbell().as_raw_fd(),
        keyboard_irq.as_raw_fd(),
        mouse_irq.as_raw_fd(),
        input.as_raw_fd(),
    );
    capvm_policy::enforce::enter(&manifest, channel)?;
    capvm_policy::hostile::run_hook(&cfg.sandbox, input.as_raw_fd(), input.as_raw_fd());
    channel.send(&ToBroker::Ready { version: PROTO_VERSION }, &[])?;
    serve(channel, &ring, [&keyboard_irq, &mouse_irq], &input, &counters)
}

fn pulse(irqs: Irqs, lines: [&OwnedFd; 2]) {
    if irqs.keyboard {
        ring_eventfd(lines[0].as_fd());
    }
    if irqs.mouse {
        ring_eventfd(lines[1].as_fd());
    }
}

fn serve(
    channel: &Channel,
    ring: &ExitRing,
    lines: [&OwnedFd; 2],
    input: &OwnedFd,
    counters: &Counters,
) -> Result<(), Ps2Error> {
    let mut c = I8042::default();
    let mut record = [0u8; 64];
    // Until the VNC server hangs up (then the guest keeps its devices).
    let mut input_open = true;
    loop {
        let ready: Vec<bool> = {
            let mut pfds =
                vec![PollFd::new(ring.doorbell(), PollFlags::POLLIN), PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
            if input_open {
                pfds.push(PollFd::new(input.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut pfds, PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(Ps2Error::Os("poll", e)),
            }
            pfds.iter().map(|p| p.revents().is_some_and(|r| !r.is_empty())).collect()
        };
        if ready[0] {
            let mut irqs = Irqs::default();
            ring.serve_polling(|_, req| {
                counters.port_accesses.inc();
                let port = req.addr as u16;
                match (req.op, req.size) {
                    (Op::PioRead, 1) => {
                        let (v, i) = c.read(port);
                        irqs.keyboard |= i.keyboard;
                        irqs.mouse |= i.mouse;
                        v as u64
                    }
                    (Op::PioWrite, 1) => {
                        let i = c.write(port, req.data as u8);
                        irqs.keyboard |= i.keyboard;
                        irqs.mouse |= i.mouse;
                        0
                    }
                    _ => u64::MAX,
                }
            });
            pulse(irqs, lines);
        }
        if ready.get(2) == Some(&true) {
            // Whole records only; a peer that hung up leaves us serving the ports.
            loop {
                match nix::unistd::read(input, &mut record) {
                    Ok(0) | Err(nix::Error::ECONNRESET) => {
                        input_open = false;
                        break;
                    }
                    Err(_) => break,
                    Ok(n) => match InputEvent::decode(&record[..n.min(RECORD + 1)]) {
                        Some(InputEvent::Key { qnum, down }) => {
                            counters.keys.inc();
                            pulse(c.key(qnum, down), lines);
                        }
                        Some(InputEvent::Mouse { dx, dy, wheel, buttons }) => {
                            counters.motions.inc();
                            pulse(c.motion(dx.into(), dy.into(), wheel.into(), buttons), lines);
                        }
                        None => counters.bad_records.inc(),
                    },
                }
            }
            counters.dropped_bytes.add(std::mem::take(&mut c.dropped));
        }
        if ready[1] {
            match channel.recv::<ToChild>() {
                Ok((ToChild::Shutdown, _)) | Err(ChannelError::Closed) => return Ok(()),
                Ok((other, _)) => return Err(Ps2Error::Protocol(format!("unexpected {other:?}"))),
                Err(e) => return Err(e.into()),
            }
        }
    }
}
