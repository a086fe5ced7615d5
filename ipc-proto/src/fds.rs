//! Which fds travel with each start message, in which order, written once.
//!
//! Each layout is generic over what an fd is: `BorrowedFd` where the broker
//! sends, `OwnedFd` where a child receives, and the fd number (`i32`) where
//! `--print-policy` predicts what a child will hold. [`flatten`] gives the
//! wire order; `unflatten` takes a received list apart by the message's
//! own shape and refuses one fd too many or too few.
//!
//! [`flatten`]: StartDeviceFds::flatten

use crate::{DeviceBackend, DeviceRoute, PciFunction, UartBackendKind};

/// A start message came with fds that do not match its shape.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FdLayoutError {
    #[error("{message} is missing its {what} fd")]
    Missing { message: &'static str, what: &'static str },
    #[error("{message} carried {extra} fd(s) more than its shape needs")]
    Extra { message: &'static str, extra: usize },
}

/// Takes named fds off a received list, in order.
struct Take<I> {
    fds: I,
    message: &'static str,
}

impl<F, I: Iterator<Item = F>> Take<I> {
    fn one(&mut self, what: &'static str) -> Result<F, FdLayoutError> {
        self.fds.next().ok_or(FdLayoutError::Missing { message: self.message, what })
    }

    fn many(&mut self, n: usize, what: &'static str) -> Result<Vec<F>, FdLayoutError> {
        (0..n).map(|_| self.one(what)).collect()
    }

    /// The list must end here.
    fn end(mut self) -> Result<(), FdLayoutError> {
        match self.fds.by_ref().count() {
            0 => Ok(()),
            extra => Err(FdLayoutError::Extra { message: self.message, extra }),
        }
    }
}

/// The eventfds of a PCI function that both the runner and its server hold.
#[derive(Debug, Clone, PartialEq)]
pub struct PciFds<F> {
    /// One per `function.notify`: KVM signals it on a queue-notify write.
    pub notify: Vec<F>,
    /// One per MSI-X vector, or one for MSI: the server writes it, KVM
    /// raises the GSI.
    pub interrupts: Vec<F>,
    /// INTx#: trigger and resample of a resample irqfd, if the function has a pin.
    pub intx: Option<[F; 2]>,
}

impl<F> PciFds<F> {
    fn take(t: &mut Take<impl Iterator<Item = F>>, function: &PciFunction) -> Result<Self, FdLayoutError> {
        let vectors = function.msix.map_or(0, |m| m.vectors as usize) + function.msi.is_some() as usize;
        Ok(PciFds {
            notify: t.many(function.notify.len(), "queue notify")?,
            interrupts: t.many(vectors, "MSI interrupt")?,
            intx: match function.intx_gsi {
                Some(_) => Some([t.one("INTx trigger")?, t.one("INTx resample")?]),
                None => None,
            },
        })
    }

    fn flatten_into(self, out: &mut Vec<F>) {
        out.extend(self.notify);
        out.extend(self.interrupts);
        out.extend(self.intx.into_iter().flatten());
    }
}

/// `StartUart`'s fds.
#[derive(Debug, Clone, PartialEq)]
pub struct StartUartFds<F> {
    pub ring: F,
    pub doorbell: F,
    /// The interrupt eventfd, an irqfd on the port's GSI.
    pub irq: F,
    /// Stdio: input, output. Tty: the tty. Socket: the listening socket.
    pub backend: Vec<F>,
}

impl UartBackendKind {
    pub fn fd_count(self) -> usize {
        match self {
            UartBackendKind::Stdio => 2,
            UartBackendKind::Tty | UartBackendKind::Socket => 1,
        }
    }
}

impl<F> StartUartFds<F> {
    pub fn flatten(self) -> Vec<F> {
        let mut v = vec![self.ring, self.doorbell, self.irq];
        v.extend(self.backend);
        v
    }

    pub fn unflatten(backend: UartBackendKind, fds: impl IntoIterator<Item = F>) -> Result<Self, FdLayoutError> {
        let mut t = Take { fds: fds.into_iter(), message: "StartUart" };
        let s = Self::take(&mut t, backend)?;
        t.end()?;
        Ok(s)
    }

    /// As `unflatten`, from a list that may go on (fd numbers to come).
    pub fn take_from(backend: UartBackendKind, fds: impl Iterator<Item = F>) -> Result<Self, FdLayoutError> {
        Self::take(&mut Take { fds, message: "StartUart" }, backend)
    }

    fn take(t: &mut Take<impl Iterator<Item = F>>, backend: UartBackendKind) -> Result<Self, FdLayoutError> {
        Ok(StartUartFds {
            ring: t.one("exit ring")?,
            doorbell: t.one("doorbell")?,
            irq: t.one("interrupt")?,
            backend: t.many(backend.fd_count(), "backend")?,
        })
    }
}

/// `StartDevice`'s fds.
#[derive(Debug, Clone, PartialEq)]
pub struct StartDeviceFds<F> {
    pub ring: F,
    pub doorbell: F,
    pub ram: F,
    pub stats: F,
    pub pci: PciFds<F>,
    /// Blk: the image. Net: the tap. AHCI: each port's image.
    pub backend: Vec<F>,
}

impl DeviceBackend {
    pub fn fd_count(&self) -> usize {
        match self {
            DeviceBackend::Blk(_) | DeviceBackend::Net(_) => 1,
            DeviceBackend::Fbuf(o) => 1 + usize::from(o.rom_size.is_some()),
            DeviceBackend::Ahci(drives) => drives.len(),
        }
    }
}

impl<F> StartDeviceFds<F> {
    pub fn flatten(self) -> Vec<F> {
        let mut v = vec![self.ring, self.doorbell, self.ram, self.stats];
        self.pci.flatten_into(&mut v);
        v.extend(self.backend);
        v
    }

    pub fn unflatten(
        function: &PciFunction,
        backend_fds: usize,
        fds: impl IntoIterator<Item = F>,
    ) -> Result<Self, FdLayoutError> {
        let mut t = Take { fds: fds.into_iter(), message: "StartDevice" };
        let s = Self::take(&mut t, function, backend_fds)?;
        t.end()?;
        Ok(s)
    }

    /// As `unflatten`, from a list that may go on (fd numbers to come).
    pub fn take_from(
        function: &PciFunction,
        backend_fds: usize,
        fds: impl Iterator<Item = F>,
    ) -> Result<Self, FdLayoutError> {
        Self::take(&mut Take { fds, message: "StartDevice" }, function, backend_fds)
    }

    fn take(
        t: &mut Take<impl Iterator<Item = F>>,
        function: &PciFunction,
        backend_fds: usize,
    ) -> Result<Self, FdLayoutError> {
        Ok(StartDeviceFds {
            ring: t.one("exit ring")?,
            doorbell: t.one("doorbell")?,
            ram: t.one("guest RAM")?,
            stats: t.one("stats page")?,
            pci: PciFds::take(t, function)?,
            backend: t.many(backend_fds, "backend")?,
        })
    }
}

/// The runner's fds for one [`DeviceRoute`].
#[derive(Debug, Clone, PartialEq)]
pub struct RouteFds<F> {
    pub ring: F,
    pub doorbell: F,
    /// One per `irq_gsis` entry.
    pub irqs: Vec<F>,
    /// If the route is a PCI function.
    pub pci: Option<PciFds<F>>,
    /// The memory behind the function's `memory_bar`, if it has one.
    pub memory: Option<F>,
}

/// `StartVnc`'s fds.
#[derive(Debug, Clone, PartialEq)]
pub struct StartVncFds<F> {
    /// The listening TCP socket the broker bound.
    pub listener: F,
    /// VRAM (mapped read-only, then closed).
    pub vram: F,
    /// The display state page (mapped, then closed).
    pub state: F,
    /// Where viewers' keys and motion go: the i8042 server (crate::input).
    pub input: F,
    pub stats: F,
}

impl<F> StartVncFds<F> {
    pub fn flatten(self) -> Vec<F> {
        vec![self.listener, self.vram, self.state, self.input, self.stats]
    }

    pub fn unflatten(fds: impl IntoIterator<Item = F>) -> Result<Self, FdLayoutError> {
        let mut t = Take { fds: fds.into_iter(), message: "StartVnc" };
        let s = StartVncFds {
            listener: t.one("listening socket")?,
            vram: t.one("VRAM")?,
            state: t.one("display state")?,
            input: t.one("input socket")?,
            stats: t.one("stats page")?,
        };
        t.end()?;
        Ok(s)
    }
}

/// `StartPs2`'s fds.
#[derive(Debug, Clone, PartialEq)]
pub struct StartPs2Fds<F> {
    pub ring: F,
    pub doorbell: F,
    /// IRQ 1's eventfd (an irqfd in the runner).
    pub keyboard_irq: F,
    /// IRQ 12's.
    pub mouse_irq: F,
    /// The read end of the VNC server's input socket.
    pub input: F,
    pub stats: F,
}

impl<F> StartPs2Fds<F> {
    pub fn flatten(self) -> Vec<F> {
        vec![self.ring, self.doorbell, self.keyboard_irq, self.mouse_irq, self.input, self.stats]
    }

    pub fn unflatten(fds: impl IntoIterator<Item = F>) -> Result<Self, FdLayoutError> {
        let mut t = Take { fds: fds.into_iter(), message: "StartPs2" };
        let s = StartPs2Fds {
            ring: t.one("exit ring")?,
            doorbell: t.one("doorbell")?,
            keyboard_irq: t.one("keyboard interrupt")?,
            mouse_irq: t.one("mouse interrupt")?,
            input: t.one("input socket")?,
            stats: t.one("stats page")?,
        };
        t.end()?;
        Ok(s)
    }
}

/// `StartRunner`'s fds.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRunnerFds<F> {
    pub kvm: F,
    pub ram: F,
    pub stats: F,
    /// One per `RunnerConfig::devices`, in order.
    pub devices: Vec<RouteFds<F>>,
    /// The variable store's file, if `RunnerConfig::flash`.
    pub flash: Option<F>,
}

impl<F> StartRunnerFds<F> {
    pub fn flatten(self) -> Vec<F> {
        let mut v = vec![self.kvm, self.ram, self.stats];
        for d in self.devices {
            v.extend([d.ring, d.doorbell]);
            v.extend(d.irqs);
            if let Some(pci) = d.pci {
                pci.flatten_into(&mut v);
            }
            v.extend(d.memory);
        }
        v.extend(self.flash);
        v
    }

    pub fn unflatten(
        routes: &[DeviceRoute],
        flash: bool,
        fds: impl IntoIterator<Item = F>,
    ) -> Result<Self, FdLayoutError> {
        let mut t = Take { fds: fds.into_iter(), message: "StartRunner" };
        let s = Self::take(&mut t, routes, flash)?;
        t.end()?;
        Ok(s)
    }

    /// As `unflatten`, from a list that may go on (fd numbers to come).
    pub fn take_from(routes: &[DeviceRoute], flash: bool, fds: impl Iterator<Item = F>) -> Result<Self, FdLayoutError> {
        Self::take(&mut Take { fds, message: "StartRunner" }, routes, flash)
    }

    fn take(t: &mut Take<impl Iterator<Item = F>>, routes: &[DeviceRoute], flash: bool) -> Result<Self, FdLayoutError> {
        let (kvm, ram, stats) = (t.one("/dev/kvm")?, t.one("guest RAM")?, t.one("stats page")?);
        let mut devices = Vec::with_capacity(routes.len());
        for r in routes {
            devices.push(RouteFds {
                ring: t.one("exit ring")?,
                doorbell: t.one("doorbell")?,
                irqs: r.irq_gsis.iter().map(|_| t.one("interrupt")).collect::<Result<_, _>>()?,
                pci: match &r.pci {
                    Some(f) => Some(PciFds::take(t, f)?),
                    None => None,
                },
                memory: match r.pci.as_ref().and_then(|f| f.memory_bar) {
                    Some(_) => Some(t.one("BAR memory")?),
                    None => None,
                },
            });
        }
        let flash = if flash { Some(t.one("variable store")?) } else { None };
        Ok(StartRunnerFds { kvm, ram, stats, devices, flash })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BarKind, BarSpec, MsixSpec, NotifySpec};

    fn function(queues: u64, intx: bool) -> PciFunction {
        PciFunction {
            slot: 3,
            func: 0,
            bars: vec![BarSpec { index: 0, kind: BarKind::Mem64, size: 0x4000, addr: 0xc000_0000 }],
            notify: (0..queues).map(|q| NotifySpec { bar: 0, offset: 0x2000 + 4 * q }).collect(),
            msix: Some(MsixSpec { bar: 0, table_offset: 0x3000, pba_offset: 0x3800, vectors: 3, first_gsi: 24 }),
            msi: None,
            intx_gsi: intx.then_some(19),
            memory_bar: None,
        }
    }

    #[test]
    fn virtio_fds_round_trip_in_wire_order() {
        let f = function(2, true);
        let wire: Vec<u32> = (0..12).collect();
        let fds = StartDeviceFds::unflatten(&f, 1, wire.clone()).unwrap();
        assert_eq!((fds.ring, fds.doorbell, fds.ram, fds.stats), (0, 1, 2, 3));
        assert_eq!(fds.pci.notify, [4, 5]);
        assert_eq!(fds.pci.interrupts, [6, 7, 8]);
        assert_eq!(fds.pci.intx, Some([9, 10]));
        assert_eq!(fds.backend, [11]);
        assert_eq!(fds.flatten(), wire);
    }

    #[test]
    fn a_missing_or_extra_fd_is_named() {
        let f = function(2, false);
        let e = StartDeviceFds::unflatten(&f, 1, 0..9).unwrap_err();
        assert_eq!(e, FdLayoutError::Missing { message: "StartDevice", what: "backend" });
        let e = StartDeviceFds::unflatten(&f, 1, 0..12).unwrap_err();
        assert_eq!(e, FdLayoutError::Extra { message: "StartDevice", extra: 2 });
        let e = StartUartFds::unflatten(UartBackendKind::Stdio, 0..4).unwrap_err();
        assert!(e.to_string().contains("backend"), "{e}");
    }

    #[test]
    fn runner_fds_follow_each_route() {
        let routes = [
            DeviceRoute { name: "com1".into(), pio: vec![], irq_gsis: vec![4], pci: None },
            DeviceRoute { name: "blk".into(), pio: vec![], irq_gsis: vec![], pci: Some(function(1, true)) },
        ];
        // kvm, ram, stats; com1: ring, doorbell, irq; blk: ring, doorbell, 1 notify, 3 MSI-X, 2 INTx.
        let fds = StartRunnerFds::unflatten(&routes, false, 0..14).unwrap();
        assert_eq!(fds.devices[0].irqs, [5]);
        assert!(fds.devices[0].pci.is_none());
        let blk = fds.devices[1].pci.as_ref().unwrap();
        assert_eq!((fds.devices[1].ring, blk.notify[0], blk.intx), (6, 8, Some([12, 13])));
        assert_eq!(fds.flatten(), (0..14).collect::<Vec<_>>());
        assert!(StartRunnerFds::take_from(&routes, false, 4..).is_ok(), "an open-ended list of fd numbers");
        // The variable store's file comes last.
        let fds = StartRunnerFds::unflatten(&routes, true, 0..15).unwrap();
        assert_eq!(fds.flash, Some(14));
        assert_eq!(fds.flatten(), (0..15).collect::<Vec<_>>());
    }
}
