//! capvm-ahci: one AHCI controller in its own process. It holds its
//! drives' image fds (read-only for a CD or `ro`), guest RAM (command
//! lists, tables and data buffers live there), its exit ring, its MSI and
//! INTx# eventfds, and nothing else. Started by the broker with its
//! control socket at fd 3.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use capvm_ahci::hba::{CommandError, Drive, Hba, Kick, Stats as HbaStats};
use capvm_ahci::layout::{self, ABAR, INTX_PIN, MAX_PORTS, MSI_CAP};
use capvm_block::Image;
use capvm_ipc::ring::{ring_eventfd, ExitRing, Op};
use capvm_ipc::stats::{Counter, CountersByKind};
use capvm_ipc::{Channel, DeviceBackend, DeviceConfig, ToBroker, PROTO_VERSION};
use capvm_pci::server::{ServerError, Started, Wake};
use capvm_pci::{ConfigSpace, Identity, COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, INTERRUPT_LINE};
use vm_memory::GuestMemoryMmap;

fn main() {
    capvm_ipc::child_main("capvm-ahci", run);
}

/// What the guest made the controller do.
struct Counters {
    config_accesses: Counter,
    mmio_accesses: Counter,
    commands: Counter,
    ncq_commands: Counter,
    packet_commands: Counter,
    errors: Counter,
    errors_by_kind: CountersByKind,
    bytes_read: Counter,
    bytes_written: Counter,
    interrupts: Counter,
    intx_interrupts: Counter,
}

impl HbaStats for Counters {
    fn command(&self, ncq: bool, packet: bool) {
        self.commands.inc();
        if ncq {
            self.ncq_commands.inc();
        }
        if packet {
            self.packet_commands.inc();
        }
    }
    fn error(&self, e: CommandError) {
        self.errors.inc();
        self.errors_by_kind.inc(e.counter());
    }
    fn bytes(&self, to_guest: bool, n: u64) {
        if to_guest { &self.bytes_read } else { &self.bytes_written }.add(n);
    }
}

/// The PCI function: config space, the HBA behind BAR5, its interrupts.
struct Controller {
    config: ConfigSpace,
    hba: Hba,
    msi: OwnedFd,
    intx: Option<OwnedFd>,
    /// We raised INTx# and KVM has not lowered it yet.
    intx_up: bool,
    mem: GuestMemoryMmap,
    counters: Counters,
}

fn run(channel: &Channel) -> Result<(), ServerError> {
    let mut started = capvm_pci::server::start(channel)?;
    let DeviceBackend::Ahci(drives) = &started.config.backend else {
        return Err(ServerError::Protocol("capvm-ahci was started for another device".into()));
    };
    let drives = drives.clone();
    check_layout(&started.config, drives.len())?;
    let stats = &mut started.stats;
    let counters = Counters {
        config_accesses: stats.counter("config_accesses"),
        mmio_accesses: stats.counter("mmio_accesses"),
        commands: stats.counter("commands"),
        ncq_commands: stats.counter("ncq_commands"),
        packet_commands: stats.counter("packet_commands"),
        errors: stats.counter("command_errors"),
        errors_by_kind: CountersByKind::new(stats, "", CommandError::KINDS.map(CommandError::counter)),
        bytes_read: stats.counter("bytes_read"),
        bytes_written: stats.counter("bytes_written"),
        interrupts: stats.counter("interrupts"),
        intx_interrupts: stats.counter("intx_interrupts"),
    };
    let disks: Vec<(i32, bool)> =
        started.backend.iter().zip(&drives).map(|(fd, d)| (fd.as_raw_fd(), d.disk.read_only)).collect();
    let (grants, syscalls) = capvm_policy::roles::disks_backend(&disks);
    started.confine(channel, grants, syscalls, Vec::new())?;

    let Started { config, ring, mem, interrupts, intx, resample, backend, .. } = started;
    let [msi]: [OwnedFd; 1] =
        interrupts.try_into().map_err(|_| ServerError::Protocol("AHCI has exactly one MSI vector".into()))?;
    let drives = backend.into_iter().zip(drives).map(|(fd, d)| Drive::new(Image::new(fd), d)).collect();
    let mut controller = Controller::new(&config, Hba::new(drives), msi, intx, mem, counters);
    channel.send(&ToBroker::Ready { version: PROTO_VERSION }, &[])?;
    serve(channel, &ring, resample.as_ref(), &mut controller)
}

/// The function the broker laid out must be the one this server answers.
fn check_layout(cfg: &DeviceConfig, ports: usize) -> Result<(), ServerError> {
    let f = &cfg.function;
    let expected = layout::function(f.slot, f.func, f.bars.first().map_or(0, |b| b.addr), f.msi.map_or(0, |m| m.gsi));
    if *f != expected || f.intx_gsi.is_none() {
        return Err(ServerError::Protocol(format!("{f:?} is not an AHCI layout")));
    }
    if ports == 0 || ports > MAX_PORTS {
        return Err(ServerError::Protocol(format!("{ports} ports: an AHCI controller has 1 to {MAX_PORTS}")));
    }
    Ok(())
}

impl Controller {
    fn new(
        cfg: &DeviceConfig,
        hba: Hba,
        msi: OwnedFd,
        intx: Option<OwnedFd>,
        mem: GuestMemoryMmap,
        counters: Counters,
    ) -> Controller {
        // Intel's ICH9 AHCI function, as QEMU shows it: drivers match the
        // class (01.06.01), some quirk tables the id.
        let mut config = ConfigSpace::new(&Identity {
            vendor: 0x8086,
            device: 0x2922,
            revision: 2,
            class: [0x01, 0x06, 0x01],
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
        });
        for bar in &cfg.function.bars {
            config.add_bar(bar);
        }
        if let (Some(gsi), Some(_)) = (cfg.function.intx_gsi, &intx) {
            config.set_interrupt_pin(INTX_PIN);
            config.put(INTERRUPT_LINE, &[gsi as u8]);
        }
        // MSI, one vector, 64-bit addresses: the driver may write the
        // enable bit, the address and the data.
        let mut cap = [0u8; 16];
        cap[0] = 0x05;
        cap[2] = 0x80;
        let mut writable = [0u8; 16];
        writable[2] = 0x01;
        writable[4..14].copy_from_slice(&[0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let at = config.add_capability(&cap, &writable);
        assert_eq!(at, MSI_CAP as usize, "the MSI capability sits where layout says");
        Controller { config, hba, msi, intx, intx_up: false, mem, counters }
    }

    fn msi_enabled(&self) -> bool {
        self.config.u16_at(MSI_CAP as usize + 2) & 1 != 0
    }

    /// Sends an MSI, or raises INTx#, if the HBA wants an interrupt. An
    /// MSI goes out for each event; INTx# is a level held until the
    /// driver clears the status bits and KVM lowers it at the EOI.
    fn interrupt(&mut self, event: bool) {
        if !self.hba.interrupt_pending() {
            return;
        }
        if self.msi_enabled() {
            if event {
                self.counters.interrupts.inc();
                ring_eventfd(self.msi.as_fd());
            }
        } else if let (false, Some(fd)) = (self.intx_up, &self.intx) {
            if self.config.command() & COMMAND_INTX_DISABLE == 0 {
                self.intx_up = true;
                self.counters.intx_interrupts.inc();
                ring_eventfd(fd.as_fd());
            }
        }
    }

    /// KVM lowered INTx# at the guest's EOI: raise it again if the HBA
    /// still has status bits set.
    fn intx_resample(&mut self) {
        self.intx_up = false;
        self.interrupt(false);
    }

    /// Runs port `n`'s commands, if the function may master the bus.
    fn run_port(&mut self, n: usize) {
        if self.config.command() & COMMAND_BUS_MASTER == 0 {
            return;
        }
        self.hba.run_port(n, &self.mem, &self.counters);
        self.interrupt(true);
    }
}

fn serve(
    channel: &Channel,
    ring: &ExitRing,
    resample: Option<&OwnedFd>,
    c: &mut Controller,
) -> Result<(), ServerError> {
    let mut buf = [0u8; 8];
    let extra: Vec<_> = resample.iter().map(|f| f.as_fd()).collect();
    capvm_pci::server::serve(channel, ring, &extra, |wake| {
        match wake {
            Wake::Extra(_) => {
                if let Some(fd) = resample {
                    let _ = nix::unistd::read(fd, &mut buf);
                }
                c.intx_resample();
            }
            Wake::Ring => {
                // Commands run after the vCPU that issued them has its answer.
                let mut kicks = Vec::new();
                ring.serve_polling(|_, req| match req.op {
                    Op::ConfigRead => {
                        c.counters.config_accesses.inc();
                        c.config.read(req.addr, req.size)
                    }
                    Op::ConfigWrite => {
                        c.counters.config_accesses.inc();
                        c.config.write(req.addr, req.size, req.data);
                        kicks.push(Kick::Interrupts);
                        0
                    }
                    Op::MmioRead if req.region == ABAR => {
                        c.counters.mmio_accesses.inc();
                        c.hba.read(req.addr, req.size)
                    }
                    Op::MmioWrite if req.region == ABAR => {
                        c.counters.mmio_accesses.inc();
                        kicks.push(c.hba.write(req.addr, req.size, req.data, Some(&c.mem)));
                        0
                    }
                    _ => u64::MAX,
                });
                for kick in kicks {
                    match kick {
                        Kick::Port(n) => c.run_port(n),
                        Kick::Interrupts => c.interrupt(false),
                        Kick::None => {}
                    }
                }
            }
        }
        Ok(())
    })
}
