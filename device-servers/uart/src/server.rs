//! The event loop: exit-ring requests, backend input, broker messages.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use capvm_ipc::ring::ExitRing;
use capvm_ipc::{Channel, ChannelError, FdLayoutError, RingError, StartUartFds, ToBroker, ToChild, PROTO_VERSION};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vm_superio::{Serial, Trigger};

use crate::backend::{self, Readable};

#[derive(Debug, thiserror::Error)]
pub enum UartError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error(transparent)]
    Fds(#[from] FdLayoutError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("entering the sandbox: {0}")]
    Sandbox(#[from] capvm_policy::enforce::SandboxError),
}

/// The UART's interrupt line: an eventfd the vCPU runner bound to a GSI.
struct IrqLine(OwnedFd);

impl Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        nix::unistd::write(&self.0, &1u64.to_ne_bytes())?;
        Ok(())
    }
}

pub fn run(channel: &Channel) -> Result<(), UartError> {
    let (cfg, fds) = match channel.recv()? {
        (ToChild::StartUart(cfg), fds) => (cfg, fds),
        (other, _) => return Err(UartError::Protocol(format!("expected StartUart, got {other:?}"))),
    };
    let StartUartFds { ring: ring_fd, doorbell, irq, backend } = StartUartFds::unflatten(cfg.backend, fds)?;
    let ring = ExitRing::attach(ring_fd.as_fd(), doorbell)?;
    // The mapping stays; the memfd itself is not needed any more.
    drop(ring_fd);
    let (mut input, output) = backend::from_fds(cfg.backend, backend).map_err(|e| UartError::Io("backend", e))?;
    let manifest = capvm_policy::roles::uart(
        &cfg.name,
        ring.doorbell().as_raw_fd(),
        irq.as_raw_fd(),
        &backend::manifest_fds(cfg.backend, &input, &output),
    );
    capvm_policy::enforce::enter(&manifest, channel)?;
    // Hostile-test hook: the doorbell has neither CAP_WRITE nor CAP_IOCTL.
    let doorbell = ring.doorbell().as_raw_fd();
    capvm_policy::hostile::run_hook(&cfg.sandbox, doorbell, doorbell);
    let mut serial = Serial::new(IrqLine(irq), output);
    channel.send(&ToBroker::Ready { version: PROTO_VERSION }, &[])?;

    let base = cfg.port_base;
    let mut input_open = true;
    let mut buf = [0u8; 64];
    loop {
        // Only listen to the backend while the receive FIFO has room, so
        // input waits in the host buffer instead of being dropped.
        let want_input = input_open && serial.fifo_capacity() > 0;
        let mut pfds =
            vec![PollFd::new(ring.doorbell(), PollFlags::POLLIN), PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
        if want_input {
            pfds.push(PollFd::new(input.poll_fd(), PollFlags::POLLIN));
        }
        match poll(&mut pfds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(UartError::Io("poll", e.into())),
        }
        let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
        let (ring_ready, ctl_ready) = (ready(&pfds[0]), ready(&pfds[1]));
        let input_ready = want_input && ready(&pfds[2]);
        drop(pfds);

        if ring_ready {
            ring.serve_polling(|_, req| crate::registers::access(&mut serial, base, req));
        }
        if input_ready {
            let room = serial.fifo_capacity().min(buf.len());
            match input.on_readable(&mut buf[..room]) {
                Ok(Readable::Bytes(n)) if n > 0 => {
                    let _ = serial.enqueue_raw_bytes(&buf[..n]);
                }
                Ok(Readable::Bytes(_)) => {}
                Ok(Readable::Connected(fd)) => serial.writer_mut().connect(fd),
                Ok(Readable::Closed) => {
                    if matches!(input, backend::Input::Stream(_)) {
                        input_open = false;
                    } else {
                        serial.writer_mut().disconnect();
                    }
                }
                Err(e) => return Err(UartError::Io("backend input", e)),
            }
        }
        if ctl_ready {
            match channel.recv::<ToChild>() {
                Ok((ToChild::Shutdown, _)) | Err(ChannelError::Closed) => return Ok(()),
                Ok((other, _)) => return Err(UartError::Protocol(format!("unexpected {other:?}"))),
                Err(e) => return Err(e.into()),
            }
        }
    }
}
