//! A virtio device server's life: take the StartDevice message and its
//! fds, map guest RAM, build the device, enter the sandbox, then serve
//! these events until the broker says stop:
//! - exit-ring requests (config space and BAR registers, from the runner);
//! - queue notifies, straight from KVM through ioeventfds;
//! - INTx# resamples (KVM lowered the line at the guest's EOI);
//! - the backend (a tap's packets), if the device has one.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use capvm_ipc::ring::{ExitRing, Op};
use capvm_ipc::stats::{Counter, Stats};
use capvm_ipc::{Channel, ChannelError, DeviceConfig, ToBroker, ToChild, PROTO_VERSION};
use capvm_pci::server::Started;
use capvm_policy::{FdGrant, SyscallRule};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::layout;
use crate::transport::{Device, Transport, TransportStats};

pub use capvm_pci::server::ServerError;

/// What a device model needs to be confined: its backend fds with their
/// rights, and the syscalls its data path makes beyond the common ones.
pub struct DeviceSandbox {
    pub fds: Vec<FdGrant>,
    pub syscalls: Vec<SyscallRule>,
}

/// A device that also waits on a host fd (a tap).
pub trait Backend: Device {
    fn backend_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// The backend fd is ready. Returns the queues that used buffers.
    fn on_backend(&mut self, _queues: &mut [virtio_queue::Queue], _mem: &vm_memory::GuestMemoryMmap) -> Vec<usize> {
        Vec::new()
    }
}

/// Everything `make` gets to build its device from.
pub struct Setup<'a> {
    pub config: &'a DeviceConfig,
    /// The backend's fds, in the order the broker sent them.
    pub backend_fds: Vec<OwnedFd>,
    pub stats: &'a mut Stats,
}

/// Runs a device server on the control channel; `make` builds the device.
pub fn run<D: Backend>(
    channel: &Channel,
    make: impl FnOnce(Setup) -> Result<(D, DeviceSandbox), ServerError>,
) -> Result<(), ServerError> {
    let mut started = capvm_pci::server::start(channel)?;
    let function = &started.config.function;
    let queues = function.notify.len();
    let vectors = function.msix.map_or(0, |m| m.vectors as usize);
    if queues > layout::MAX_QUEUES || vectors != layout::vectors(queues) as usize || function.msi.is_some() {
        return Err(ServerError::Protocol(format!(
            "{queues} queues with {vectors} MSI-X vectors is not a virtio layout"
        )));
    }
    let stats = &mut started.stats;
    let counters = TransportStats {
        config_accesses: stats.counter("config_accesses"),
        mmio_accesses: stats.counter("mmio_accesses"),
        notify_exits: stats.counter("notify_exits"),
        interrupts: stats.counter("interrupts"),
        intx_interrupts: stats.counter("intx_interrupts"),
    };
    let notifies = stats.counter("ioeventfd_notifies");
    let backend_fds = std::mem::take(&mut started.backend);
    let (device, sandbox) = make(Setup { config: &started.config, backend_fds, stats: &mut started.stats })?;
    started.confine(channel, sandbox.fds, sandbox.syscalls, Vec::new())?;
    let Started { config, ring, mem, notify, interrupts, intx, resample, .. } = started;
    let mut transport = Transport::new(device, &config.function, interrupts, intx, counters);
    transport.set_memory(mem);
    channel.send(&ToBroker::Ready { version: PROTO_VERSION }, &[])?;
    serve(channel, &ring, &notify, resample.as_ref(), &mut transport, &notifies)
}

fn serve<D: Backend>(
    channel: &Channel,
    ring: &ExitRing,
    notify: &[OwnedFd],
    resample: Option<&OwnedFd>,
    transport: &mut Transport<D>,
    notifies: &Counter,
) -> Result<(), ServerError> {
    let mut buf = [0u8; 8];
    // poll's slots: doorbell, control, notifies, then the INTx resample
    // eventfd and the backend if there are any.
    let resample_at = 2 + notify.len();
    let backend_at = resample_at + resample.is_some() as usize;
    loop {
        let ready: Vec<bool> = {
            let mut pfds =
                vec![PollFd::new(ring.doorbell(), PollFlags::POLLIN), PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
            pfds.extend(notify.iter().map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN)));
            pfds.extend(resample.map(|f| PollFd::new(f.as_fd(), PollFlags::POLLIN)));
            if let Some(fd) = transport.device.backend_fd() {
                pfds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            match poll(&mut pfds, PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(ServerError::Poll(e)),
            }
            pfds.iter().map(|p| p.revents().is_some_and(|r| !r.is_empty())).collect()
        };
        let backend_ready = ready.get(backend_at).copied().unwrap_or(false);
        if let (Some(fd), true) = (resample, ready.get(resample_at).copied().unwrap_or(false)) {
            let _ = nix::unistd::read(fd, &mut buf);
            transport.intx_resample();
        }

        if ready[0] {
            // Notifies that came as register writes (BAR not yet mapped
            // with ioeventfds) are run after the vCPU has its answer.
            let mut kicked = Vec::new();
            ring.serve_polling(|_, req| match req.op {
                Op::ConfigRead => transport.config_read(req.addr, req.size),
                Op::ConfigWrite => {
                    transport.config_write(req.addr, req.size, req.data);
                    0
                }
                Op::MmioRead if req.region == layout::BAR => transport.bar_read(req.addr, req.size),
                Op::MmioWrite if req.region == layout::BAR => {
                    kicked.extend(transport.bar_write(req.addr, req.size, req.data));
                    0
                }
                _ => u64::MAX,
            });
            for q in kicked {
                transport.notify(q);
            }
        }
        for (q, fd) in notify.iter().enumerate() {
            if ready[2 + q] {
                let _ = nix::unistd::read(fd, &mut buf);
                notifies.inc();
                transport.notify(q);
            }
        }
        if backend_ready && transport.driver_ok() {
            let used = {
                let (device, queues, mem) = transport.queues_mut();
                match mem {
                    Some(mem) => device.on_backend(queues, mem),
                    None => Vec::new(),
                }
            };
            for q in used {
                transport.signal_queue(q);
            }
        }
        if ready[1] {
            match channel.recv::<ToChild>() {
                Ok((ToChild::Shutdown, _)) | Err(ChannelError::Closed) => return Ok(()),
                Ok((other, _)) => return Err(ServerError::Protocol(format!("unexpected {other:?}"))),
                Err(e) => return Err(e.into()),
            }
        }
    }
}
