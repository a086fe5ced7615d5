//! The virtio devices of one VM as the broker prepares them: open the
//! backend, lay the PCI function out (BAR address, MSI GSIs), and make the
//! eventfds the runner and the server share.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use capvm_ipc::ring::ExitRing;
use capvm_ipc::{memmap, DeviceBackend, DeviceRoute, PciFds, PciFunction, RouteFds, StartDeviceFds};
use capvm_virtio::layout;

use crate::config::ServedConfig;
use crate::devices::fbuf::DisplayHost;
use crate::devices::Opened;
use crate::vm::{eventfd, VmError};

/// One virtio function: its layout, backend and the fds both sides get.
pub struct ServedHost {
    /// "virtio-blk (0:2.0)".
    pub name: String,
    /// Its registry row's name, "virtio-blk".
    pub emulation: &'static str,
    /// The executable that serves it.
    pub server: &'static str,
    pub function: PciFunction,
    pub backend: DeviceBackend,
    pub backend_fds: Vec<OwnedFd>,
    ring: OwnedFd,
    doorbell: OwnedFd,
    notify: Vec<OwnedFd>,
    interrupts: Vec<OwnedFd>,
    /// INTx#: the trigger and resample eventfds of its irqfd.
    intx: Option<[OwnedFd; 2]>,
    /// A display's framebuffer and VNC server's part.
    pub display: Option<DisplayHost>,
    /// Its server reaches guest RAM.
    pub dma: bool,
}

/// Hands out BAR addresses and MSI GSIs in order.
pub struct Allocator {
    next_bar: u64,
    next_gsi: u32,
}

impl Default for Allocator {
    fn default() -> Self {
        Allocator { next_bar: memmap::PCI_MMIO32.0, next_gsi: memmap::FIRST_MSI_GSI }
    }
}

impl Allocator {
    /// A memory BAR of `size` bytes (a power of two), naturally aligned.
    pub fn bar(&mut self, size: u64) -> Result<u64, VmError> {
        let addr = self.next_bar.next_multiple_of(size);
        if addr + size > memmap::PCI_MMIO32.1 {
            return Err(VmError::BarWindowFull);
        }
        self.next_bar = addr + size;
        Ok(addr)
    }

    /// `count` consecutive GSIs for MSI or MSI-X vectors; the first.
    pub fn gsis(&mut self, count: u32) -> u32 {
        let first = self.next_gsi;
        self.next_gsi += count;
        first
    }

    /// A virtio function with `queues` queues.
    pub fn virtio(&mut self, slot: u8, func: u8, queues: usize) -> Result<PciFunction, VmError> {
        let bar = self.bar(layout::BAR_SIZE)?;
        Ok(layout::function(slot, func, queues, bar, self.gsis(layout::vectors(queues).into())))
    }
}

impl ServedHost {
    fn new(
        name: String,
        emulation: &'static str,
        server: &'static str,
        function: PciFunction,
        opened: Opened,
        dma: bool,
        vcpus: u32,
    ) -> Result<ServedHost, VmError> {
        let Opened { backend, fds: backend_fds, display } = opened;
        let vectors = function.msix.map_or(0, |m| m.vectors) + u16::from(function.msi.is_some());
        Ok(ServedHost {
            name,
            emulation,
            server,
            backend,
            backend_fds,
            ring: ExitRing::create(vcpus)?,
            doorbell: eventfd()?,
            notify: function.notify.iter().map(|_| eventfd()).collect::<Result<_, _>>()?,
            interrupts: (0..vectors).map(|_| eventfd()).collect::<Result<_, _>>()?,
            intx: match function.intx_gsi {
                Some(_) => Some([eventfd()?, eventfd()?]),
                None => None,
            },
            function,
            display,
            dma,
        })
    }

    /// The server's fds.
    pub fn server_fds<'a>(&'a self, ram: BorrowedFd<'a>, stats: BorrowedFd<'a>) -> StartDeviceFds<BorrowedFd<'a>> {
        StartDeviceFds {
            ring: self.ring.as_fd(),
            doorbell: self.doorbell.as_fd(),
            ram,
            stats,
            pci: self.pci_fds(),
            backend: self.backend_fds.iter().map(|f| f.as_fd()).collect(),
        }
    }

    /// The runner's fds for this device.
    pub fn route_fds(&self) -> RouteFds<BorrowedFd<'_>> {
        RouteFds {
            ring: self.ring.as_fd(),
            doorbell: self.doorbell.as_fd(),
            irqs: Vec::new(),
            pci: Some(self.pci_fds()),
            memory: self.display.as_ref().map(|d| d.vram.as_fd()),
        }
    }

    /// The eventfds both sides hold.
    fn pci_fds(&self) -> PciFds<BorrowedFd<'_>> {
        PciFds {
            notify: self.notify.iter().map(OwnedFd::as_fd).collect(),
            interrupts: self.interrupts.iter().map(OwnedFd::as_fd).collect(),
            intx: self.intx.as_ref().map(|[t, r]| [t.as_fd(), r.as_fd()]),
        }
    }

    /// A display's framebuffer, as a kernel's boot parameters describe it.
    pub fn framebuffer(&self) -> Option<crate::boot::Framebuffer> {
        let d = self.display.as_ref()?;
        let vram = self.function.bars.iter().find(|b| b.index == capvm_fbuf::layout::VRAM_BAR)?;
        Some(crate::boot::Framebuffer { addr: vram.addr, size: vram.size, width: d.width, height: d.height })
    }

    /// A display starts in its preferred mode rather than off.
    pub fn start_in_preferred_mode(&mut self) {
        if let DeviceBackend::Fbuf(o) = &mut self.backend {
            o.preferred_mode_at_start = true;
        }
    }

    pub fn route(&self) -> DeviceRoute {
        DeviceRoute { name: self.name.clone(), pio: Vec::new(), irq_gsis: Vec::new(), pci: Some(self.function.clone()) }
    }
}

/// Opens a served device's host resources and lays its function out.
pub fn open(d: &ServedConfig, alloc: &mut Allocator, vcpus: u32) -> Result<ServedHost, VmError> {
    let opened = d.device.open().map_err(|source| VmError::Device { at: d.at(), source })?;
    let function = (d.served.layout)(d.slot, d.func, d.device.as_ref(), alloc)?;
    ServedHost::new(d.name(), d.emulation, d.served.server, function, opened, d.device.needs_guest_ram(), vcpus)
}
