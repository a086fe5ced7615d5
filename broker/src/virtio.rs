//! The virtio devices of one VM as the broker prepares them: open the
//! backend, lay the PCI function out (BAR address, MSI GSIs), and make the
//! eventfds the runner and the server share.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

use capvm_ipc::ring::ExitRing;
use capvm_ipc::{memmap, BlkOptions, DeviceRoute, NetOptions, PciFunction, VirtioBackend};
use capvm_virtio::layout;

use crate::config::{DiskConfig, NicConfig};
use crate::vm::{eventfd, VmError};

/// GSIs 0-23 are the IOAPIC's pins; MSI routes take the ones above.
const FIRST_MSI_GSI: u32 = 24;

/// One virtio function: its layout, backend and the fds both sides get.
pub struct VirtioHost {
    /// "virtio-blk (0:2.0)".
    pub name: String,
    /// The executable that serves it.
    pub server: &'static str,
    pub function: PciFunction,
    pub backend: VirtioBackend,
    pub backend_fds: Vec<OwnedFd>,
    ring: OwnedFd,
    doorbell: OwnedFd,
    notify: Vec<OwnedFd>,
    interrupts: Vec<OwnedFd>,
    /// INTx#: the trigger and resample eventfds of its irqfd.
    intx: Option<[OwnedFd; 2]>,
}

/// Hands out BAR addresses and MSI GSIs in order.
pub struct Allocator {
    next_bar: u64,
    next_gsi: u32,
}

impl Default for Allocator {
    fn default() -> Self {
        Allocator { next_bar: memmap::PCI_MMIO32.0, next_gsi: FIRST_MSI_GSI }
    }
}

impl Allocator {
    fn function(&mut self, slot: u8, func: u8, queues: usize) -> Result<PciFunction, VmError> {
        let addr = self.next_bar.next_multiple_of(layout::BAR_SIZE);
        if addr + layout::BAR_SIZE > memmap::PCI_MMIO32.1 {
            return Err(VmError("too many PCI devices for the 32-bit BAR window".into()));
        }
        self.next_bar = addr + layout::BAR_SIZE;
        let f = layout::function(slot, func, queues, addr, self.next_gsi);
        self.next_gsi += layout::vectors(queues) as u32;
        Ok(f)
    }
}

impl VirtioHost {
    fn new(
        name: String,
        server: &'static str,
        function: PciFunction,
        backend: VirtioBackend,
        backend_fds: Vec<OwnedFd>,
        vcpus: u32,
    ) -> Result<VirtioHost, VmError> {
        let vectors = function.msix.map_or(0, |m| m.vectors);
        Ok(VirtioHost {
            name,
            server,
            backend,
            backend_fds,
            ring: ExitRing::create(vcpus).map_err(|e| VmError(e.to_string()))?,
            doorbell: eventfd()?,
            notify: function.notify.iter().map(|_| eventfd()).collect::<Result<_, _>>()?,
            interrupts: (0..vectors).map(|_| eventfd()).collect::<Result<_, _>>()?,
            intx: match function.intx_gsi {
                Some(_) => Some([eventfd()?, eventfd()?]),
                None => None,
            },
            function,
        })
    }

    /// The server's fds after its stats page: ring, doorbell, RAM, stats,
    /// notifies, interrupts, INTx trigger and resample, backend
    /// (StartVirtio's order).
    pub fn server_fds<'a>(&'a self, ram: BorrowedFd<'a>, stats: BorrowedFd<'a>) -> Vec<BorrowedFd<'a>> {
        let mut v = vec![self.ring.as_fd(), self.doorbell.as_fd(), ram, stats];
        v.extend(self.interrupt_fds());
        v.extend(self.backend_fds.iter().map(|f| f.as_fd()));
        v
    }

    /// The runner's fds for this device (DeviceRoute's order).
    pub fn runner_fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut v = vec![self.ring.as_fd(), self.doorbell.as_fd()];
        v.extend(self.interrupt_fds());
        v
    }

    /// Notifies, MSI-X interrupts, INTx trigger and resample: the eventfds
    /// both sides hold, in the order both expect.
    fn interrupt_fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.notify.iter().chain(&self.interrupts).chain(self.intx.iter().flatten()).map(|f| f.as_fd())
    }

    pub fn route(&self) -> DeviceRoute {
        DeviceRoute { name: self.name.clone(), pio: Vec::new(), irq_gsi: None, pci: Some(self.function.clone()) }
    }
}

/// Opens a disk as its options say and describes it.
pub fn disk(d: &DiskConfig, alloc: &mut Allocator, vcpus: u32) -> Result<VirtioHost, VmError> {
    let at = format!("-s {}:{},virtio-blk", d.slot, d.func);
    let mut flags = libc::O_CLOEXEC;
    if d.nocache {
        flags |= libc::O_DIRECT;
    }
    if d.sync {
        flags |= libc::O_SYNC;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(!d.read_only)
        .custom_flags(flags)
        .open(&d.path)
        .map_err(|e| VmError(format!("{at}: cannot open {}: {e}", d.path.display())))?;
    let meta = file.metadata().map_err(|e| VmError(format!("{at}: {}: {e}", d.path.display())))?;
    let (size, can_discard) = if meta.file_type().is_block_device() {
        let size =
            file.seek(SeekFrom::End(0)).map_err(|e| VmError(format!("{at}: size of {}: {e}", d.path.display())))?;
        (size, false)
    } else if meta.is_file() {
        (meta.len(), true)
    } else {
        return Err(VmError(format!("{at}: {} is neither a file nor a block device", d.path.display())));
    };
    if size < 512 {
        return Err(VmError(format!("{at}: {} holds less than one sector", d.path.display())));
    }
    let opts = BlkOptions {
        read_only: d.read_only,
        sector_size: d.sector_size,
        physical_sector_size: d.physical_sector_size,
        size,
        no_delete: d.no_delete,
        can_discard,
        serial: d.serial.chars().take(20).collect(),
    };
    let function = alloc.function(d.slot, d.func, layout::BLK_QUEUES)?;
    VirtioHost::new(d.name(), "capvm-virtio-blk", function, VirtioBackend::Blk(opts), vec![file.into()], vcpus)
}

/// Opens (or creates) a NIC's tap and describes the NIC.
pub fn nic(n: &NicConfig, alloc: &mut Allocator, vcpus: u32) -> Result<VirtioHost, VmError> {
    let tap =
        open_tap(&n.tap).map_err(|e| VmError(format!("-s {}:{},virtio-net: tap {}: {e}", n.slot, n.func, n.tap)))?;
    let function = alloc.function(n.slot, n.func, layout::NET_QUEUES)?;
    let opts = NetOptions { mac: n.mac, mtu: n.mtu };
    VirtioHost::new(n.name(), "capvm-virtio-net", function, VirtioBackend::Net(opts), vec![tap], vcpus)
}

/// Attaches to the tap `name` in the broker's network namespace, creating
/// it if it does not exist (a tap capvm creates goes away with the VM).
/// Frames carry virtio 1.x's 12-byte header, so the server moves them
/// unchanged; the fd is non-blocking for the server's poll loop.
fn open_tap(name: &str) -> Result<OwnedFd, String> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .map_err(|e| format!("cannot open /dev/net/tun: {e}"))?;
    // struct ifreq: the name, then the flags (a short) in the union.
    let mut ifr = [0u8; 40];
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tun);
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `ifr` is sized for.
    if unsafe { libc::ioctl(fd, libc::TUNSETIFF, ifr.as_mut_ptr()) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EBUSY) => "in use by another process".into(),
            Some(libc::EINVAL) => format!("exists and is not a tap ({e})"),
            Some(libc::EPERM) => format!("not allowed to attach ({e}): run capvm as root or give the tap to this user"),
            _ => e.to_string(),
        });
    }
    let header: libc::c_int = layout::NET_HEADER_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int.
    if unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &header) } != 0 {
        return Err(format!("cannot set its virtio header size: {}", std::io::Error::last_os_error()));
    }
    Ok(File::into(tun))
}
