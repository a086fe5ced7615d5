//! A virtio device server's life: take the StartDevice message and its
//! fds, map guest RAM, build the device, enter the sandbox, then serve
//! these events until the broker says stop:
//! - exit-ring requests (config space and BAR registers, from the runner);
//! - queue notifies, straight from KVM through ioeventfds;
//! - INTx# resamples (KVM lowered the line at the guest's EOI);
//! - the backend (a tap's packets), if the device has one.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use capvm_ipc::ring::{ExitRing, Op};
use capvm_ipc::stats::{Counter, Stats};
use capvm_ipc::{
    Channel, ChannelError, DeviceConfig, FdLayoutError, PciFds, RingError, StartDeviceFds, ToBroker, ToChild,
    PROTO_VERSION,
};
use capvm_policy::roles::PciDeviceFds;
use capvm_policy::{FdGrant, SyscallRule};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::layout;
use crate::transport::{Device, Transport, TransportStats};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error(transparent)]
    Fds(#[from] FdLayoutError),
    #[error(transparent)]
    Ram(#[from] capvm_ipc::shm::MapGuestRamError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("stats page: {0}")]
    Stats(#[source] nix::Error),
    #[error("entering the sandbox: {0}")]
    Sandbox(#[from] capvm_policy::enforce::SandboxError),
    #[error("poll: {0}")]
    Poll(#[source] nix::Error),
}

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
    let (cfg, fds) = match channel.recv()? {
        (ToChild::StartDevice(cfg), fds) => (cfg, fds),
        (other, _) => return Err(ServerError::Protocol(format!("expected StartDevice, got {other:?}"))),
    };
    let queues = cfg.function.notify.len();
    let vectors = cfg.function.msix.map_or(0, |m| m.vectors as usize);
    if queues > layout::MAX_QUEUES || vectors != layout::vectors(queues) as usize {
        return Err(ServerError::Protocol(format!(
            "{queues} queues with {vectors} MSI-X vectors is not a virtio layout"
        )));
    }
    let StartDeviceFds {
        ring: ring_fd,
        doorbell,
        ram,
        stats: stats_fd,
        pci: PciFds { notify, interrupts: irqs, intx },
        backend: backend_fds,
    } = StartDeviceFds::unflatten(&cfg.function, cfg.backend.fd_count(), fds)?;
    let (intx, resample) = match intx {
        Some([trigger, resample]) => (Some(trigger), Some(resample)),
        None => (None, None),
    };

    let ring = ExitRing::attach(ring_fd.as_fd(), doorbell)?;
    drop(ring_fd);
    let ram_fd = ram.as_raw_fd();
    let mem = capvm_ipc::shm::map_guest_ram(File::from(ram), &cfg.memory)?;
    let mut stats = Stats::attach(stats_fd.as_fd()).map_err(ServerError::Stats)?;
    drop(stats_fd);
    let counters = TransportStats {
        config_accesses: stats.counter("config_accesses"),
        mmio_accesses: stats.counter("mmio_accesses"),
        notify_exits: stats.counter("notify_exits"),
        interrupts: stats.counter("interrupts"),
        intx_interrupts: stats.counter("intx_interrupts"),
    };
    let notifies = stats.counter("ioeventfd_notifies");
    let (device, sandbox) = make(Setup { config: &cfg, backend_fds, stats: &mut stats })?;

    // Hostile-test hook target: the backend fd (a read-only disk has
    // neither CAP_WRITE nor CAP_IOCTL).
    let hook_fd = sandbox.fds.first().map_or(ring.doorbell().as_raw_fd(), |g| g.fd);
    let manifest = capvm_policy::roles::pci_device(
        &cfg.name,
        &PciDeviceFds {
            doorbell: ring.doorbell().as_raw_fd(),
            ram: ram_fd,
            notify: notify.iter().map(|f| f.as_raw_fd()).collect(),
            interrupts: irqs.iter().map(|f| f.as_raw_fd()).collect(),
            intx: intx.as_ref().zip(resample.as_ref()).map(|(t, r)| (t.as_raw_fd(), r.as_raw_fd())),
        },
        sandbox.fds.clone(),
        sandbox.syscalls,
    );
    let report = capvm_policy::enforce::enter(&manifest, (&cfg.sandbox).into())?;
    channel.send(&ToBroker::Sandboxed(report), &[])?;
    capvm_policy::hostile::run_hook(&cfg.sandbox, hook_fd, hook_fd);
    let mut transport = Transport::new(device, &cfg.function, irqs, intx, counters);
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
