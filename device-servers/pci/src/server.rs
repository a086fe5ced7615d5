//! A PCI device server's start-up, the same for every kind: take the
//! `StartDevice` message and its fds apart, attach the exit ring, map
//! guest RAM and the stats page, then enter the sandbox with the manifest
//! of a PCI device server plus the backend's own rights.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use capvm_ipc::ring::ExitRing;
use capvm_ipc::stats::Stats;
use capvm_ipc::{Channel, ChannelError, DeviceConfig, PciFds, StartDeviceFds, ToChild};
use capvm_policy::roles::PciDeviceFds;
use capvm_policy::{FdGrant, SyscallRule};
use vm_memory::GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Ring(#[from] capvm_ipc::RingError),
    #[error(transparent)]
    Fds(#[from] capvm_ipc::FdLayoutError),
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

/// A started server, not yet confined.
pub struct Started {
    pub config: DeviceConfig,
    pub ring: ExitRing,
    pub mem: GuestMemoryMmap,
    /// The RAM memfd's number (the mapping holds it open); None for a
    /// server that reaches no guest memory (its `memory` is empty).
    ram_fd: Option<i32>,
    pub stats: Stats,
    /// Queue-notify eventfds (virtio), one per `function.notify`.
    pub notify: Vec<OwnedFd>,
    /// MSI-X vectors' or the MSI vector's irqfds.
    pub interrupts: Vec<OwnedFd>,
    /// INTx#: the trigger and the resample eventfd.
    pub intx: Option<OwnedFd>,
    pub resample: Option<OwnedFd>,
    /// The backend's fds (images, a tap), in the order the broker sent them.
    pub backend: Vec<OwnedFd>,
}

/// Receives `StartDevice` and sets up what it names.
pub fn start(channel: &Channel) -> Result<Started, ServerError> {
    let (config, fds) = match channel.recv()? {
        (ToChild::StartDevice(cfg), fds) => (cfg, fds),
        (other, _) => return Err(ServerError::Protocol(format!("expected StartDevice, got {other:?}"))),
    };
    let StartDeviceFds { ring: ring_fd, doorbell, ram, stats: stats_fd, pci, backend } =
        StartDeviceFds::unflatten(&config.function, config.backend.fd_count(), fds)?;
    let PciFds { notify, interrupts, intx } = pci;
    let (intx, resample) = match intx {
        Some([trigger, resample]) => (Some(trigger), Some(resample)),
        None => (None, None),
    };
    let ring = ExitRing::attach(ring_fd.as_fd(), doorbell)?;
    drop(ring_fd);
    let (mem, ram_fd) = if config.memory.is_empty() {
        // No DMA: the RAM fd is closed before the sandbox.
        (GuestMemoryMmap::new(), None)
    } else {
        let fd = ram.as_raw_fd();
        (capvm_ipc::shm::map_guest_ram(File::from(ram), &config.memory)?, Some(fd))
    };
    let stats = Stats::attach(stats_fd.as_fd()).map_err(ServerError::Stats)?;
    drop(stats_fd);
    Ok(Started { config, ring, mem, ram_fd, stats, notify, interrupts, intx, resample, backend })
}

impl Started {
    /// Enters the sandbox: the fds a PCI device server holds plus
    /// `backend`'s, `syscalls` beyond the common ones, and the `mappings`
    /// it keeps without an fd. Reports to the
    /// broker, then runs the hostile-test hook if this role is its target
    /// (against the first backend fd: a read-only disk has neither
    /// CAP_WRITE nor CAP_IOCTL).
    pub fn confine(
        &self,
        channel: &Channel,
        backend: Vec<FdGrant>,
        syscalls: Vec<SyscallRule>,
        mappings: Vec<String>,
    ) -> Result<(), ServerError> {
        let raw = |fds: &[OwnedFd]| fds.iter().map(|f| f.as_raw_fd()).collect();
        let hook_fd = backend.first().map_or(self.ring.doorbell().as_raw_fd(), |g| g.fd);
        let mut manifest = capvm_policy::roles::pci_device(
            &self.config.name,
            &PciDeviceFds {
                doorbell: self.ring.doorbell().as_raw_fd(),
                ram: self.ram_fd,
                notify: raw(&self.notify),
                interrupts: raw(&self.interrupts),
                intx: self.intx.as_ref().zip(self.resample.as_ref()).map(|(t, r)| (t.as_raw_fd(), r.as_raw_fd())),
            },
            backend,
            syscalls,
        );
        manifest.mappings = mappings;
        capvm_policy::enforce::enter(&manifest, channel)?;
        capvm_policy::hostile::run_hook(&self.config.sandbox, hook_fd, hook_fd);
        Ok(())
    }
}

/// What woke a server's loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// `extra[i]` is readable.
    Extra(usize),
    /// The exit ring's doorbell rang.
    Ring,
}

/// A PCI server's wait loop: its exit ring's doorbell, the broker's
/// channel and `extra` fds (an INTx# resample eventfd). Each wake-up calls
/// `on` for every ready extra fd in order, then for the ring; the loop ends
/// when the broker says Shutdown or hangs up.
pub fn serve(
    channel: &Channel,
    ring: &ExitRing,
    extra: &[BorrowedFd],
    mut on: impl FnMut(Wake) -> Result<(), ServerError>,
) -> Result<(), ServerError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let ready: Vec<bool> = {
            let mut pfds =
                vec![PollFd::new(ring.doorbell(), PollFlags::POLLIN), PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
            pfds.extend(extra.iter().map(|f| PollFd::new(*f, PollFlags::POLLIN)));
            match poll(&mut pfds, PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(ServerError::Poll(e)),
            }
            pfds.iter().map(|p| p.revents().is_some_and(|r| !r.is_empty())).collect()
        };
        for i in (0..extra.len()).filter(|&i| ready[2 + i]) {
            on(Wake::Extra(i))?;
        }
        if ready[0] {
            on(Wake::Ring)?;
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
