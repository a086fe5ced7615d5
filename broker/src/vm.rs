//! Building one VM: open the host resources, load the kernel, start the
//! children and hand each its fds, then supervise.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use capvm_ipc::ring::ExitRing;
use capvm_ipc::{
    shm, DeviceConfig, DeviceRoute, PioRange, Ps2Config, RouteFds, RunnerConfig, SandboxConfig, StartPs2Fds,
    StartRunnerFds, StartUartFds, StartVncFds, ToChild, UartBackendKind, UartConfig, VncConfig,
};
use capvm_kernel::HostKvm;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::SigmaskHow;
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::boot;
use crate::config::{Boot, ComPort, FwCfgData, VmConfig};
use crate::console::{ComHost, RawTerminal};
use crate::devices::Kind;
use crate::served::ServedHost;
use crate::spawn::{spawn, Child};
use crate::supervisor::{handled_signals, Supervisor};

/// A start-up failure: one line, already saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM loaded, and may this user use it?)")]
    Kvm(#[source] std::io::Error),
    #[error("cannot create {size} bytes of guest RAM: {source}")]
    Ram { size: u64, source: nix::Error },
    #[error(transparent)]
    MapRam(#[from] shm::MapGuestRamError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error(transparent)]
    Spawn(#[from] crate::spawn::SpawnError),
    #[error(transparent)]
    Fds(#[from] capvm_ipc::FdLayoutError),
    #[error(transparent)]
    Ring(#[from] capvm_ipc::RingError),
    /// A device's host resource (its image, its tap).
    #[error("{at}: {source}")]
    Device { at: String, source: crate::devices::DeviceError },
    #[error(transparent)]
    Com(#[from] crate::console::ComError),
    #[error("too many PCI devices for the 32-bit BAR window")]
    BarWindowFull,
    #[error("cannot start the {role}: {source}")]
    Start { role: String, source: capvm_ipc::ChannelError },
    #[error("cannot confine the broker: {0}")]
    Confine(#[source] capvm_policy::enforce::SandboxError),
    /// A host call that should not fail did (out of fds, memory).
    #[error("{what}: {source}")]
    Os { what: &'static str, source: std::io::Error },
}

pub fn eventfd() -> Result<OwnedFd, VmError> {
    EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map(OwnedFd::from)
        .map_err(|e| VmError::Os { what: "cannot create an eventfd", source: e.into() })
}

/// The fds shared between the runner and one platform device's server.
struct DeviceWires {
    ring: OwnedFd,
    doorbell: OwnedFd,
    /// One per interrupt line.
    irqs: Vec<OwnedFd>,
}

impl DeviceWires {
    fn new(vcpus: u32, lines: usize) -> Result<DeviceWires, VmError> {
        let ring = ExitRing::create(vcpus)?;
        Ok(DeviceWires { ring, doorbell: eventfd()?, irqs: (0..lines).map(|_| eventfd()).collect::<Result<_, _>>()? })
    }

    /// The runner's side: ring, doorbell, an irqfd on each line's GSI.
    fn route_fds(&self) -> RouteFds<BorrowedFd<'_>> {
        RouteFds {
            ring: self.ring.as_fd(),
            doorbell: self.doorbell.as_fd(),
            irqs: self.irqs.iter().map(|f| f.as_fd()).collect(),
            pci: None,
            memory: None,
        }
    }
}

/// The i8042 server's part (a VM with a display: its viewers are where
/// keys and motion come from): its wires and the read end of the input
/// socket the display's VNC server writes.
struct Ps2Host {
    wires: DeviceWires,
    input: OwnedFd,
}

impl Ps2Host {
    fn route(&self) -> DeviceRoute {
        DeviceRoute {
            name: PS2_NAME.to_string(),
            pio: vec![PioRange { base: 0x60, len: 1 }, PioRange { base: 0x64, len: 1 }],
            irq_gsis: PS2_IRQS.to_vec(),
            pci: None,
        }
    }
}

/// How the i8042 server is named, and its lines: the keyboard's, the mouse's.
pub const PS2_NAME: &str = "i8042";
pub const PS2_IRQS: [u32; 2] = [1, 12];

/// Runs the VM to its end; returns bhyve's exit status.
pub fn run(cfg: &VmConfig) -> Result<i32, VmError> {
    let host = HostKvm::detect();
    let kvm: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/kvm")
        .map_err(VmError::Kvm)?
        .into();

    let mut control = crate::control::ControlSocket::bind(&cfg.name)?;

    // Guest RAM: a sealed memfd; the broker maps it only to load the kernel
    // or the boot ROM (which lives in the same memfd, past the RAM).
    let image = match &cfg.boot {
        Boot::Kernel(k) => boot::Image::Kernel(k),
        Boot::Firmware { rom, .. } => boot::Image::Rom(boot::Rom::read(rom)?),
    };
    let rom = match &image {
        boot::Image::Rom(rom) => Some(rom),
        boot::Image::Kernel(_) => None,
    };
    let vars = match (&cfg.boot, rom) {
        (Boot::Firmware { vars: Some(path), .. }, Some(rom)) => Some(boot::VarStore::open(path, rom)?),
        _ => None,
    };
    let flash = vars.as_ref().zip(rom).map(|(v, rom)| (v.spec(rom), &v.file));
    let memfd_size = cfg.memory + rom.map_or(0, boot::Rom::size);
    let ram =
        shm::sealed_memfd("capvm-guest-ram", memfd_size).map_err(|source| VmError::Ram { size: cfg.memory, source })?;
    let mut regions = boot::memory_regions(cfg.memory);
    regions.extend(rom.map(|r| r.region(cfg.memory)));
    // Devices are laid out before the kernel is loaded: its boot
    // parameters name the display's framebuffer.
    let mut alloc = crate::served::Allocator::default();
    let mut served: Vec<ServedHost> =
        cfg.served.iter().map(|d| crate::served::open(d, &mut alloc, cfg.cpus)).collect::<Result<_, _>>()?;
    let framebuffer = served.iter().find_map(ServedHost::framebuffer);
    let boot_state = {
        let file = File::from(ram.try_clone().map_err(|source| VmError::Os { what: "dup the RAM fd", source })?);
        let mem = shm::map_guest_ram(file, &regions)?;
        match &image {
            boot::Image::Kernel(k) => boot::load(&mem, &regions, k, cfg.cpus, cfg.has_display(), framebuffer)?,
            boot::Image::Rom(rom) => rom.load(&mem)?,
        }
    };
    // A kernel told of the framebuffer finds the display in that mode, as
    // a BIOS would have left it.
    if boot_state.mode == capvm_ipc::EntryMode::Long64 && framebuffer.is_some() {
        served.iter_mut().for_each(ServedHost::start_in_preferred_mode);
    }

    // What firmware reads through fw_cfg; the user's files (-f) are read now.
    let fw_cfg = match &cfg.boot {
        Boot::Firmware { files, .. } => {
            let mut user = Vec::new();
            for f in files {
                let data = match &f.data {
                    FwCfgData::String(s) => s.as_bytes().to_vec(),
                    FwCfgData::File(p) => std::fs::read(p).map_err(|err| boot::BootError::Open {
                        what: "-f",
                        path: p.display().to_string(),
                        err,
                    })?,
                };
                user.push((f.name.clone(), data));
            }
            let boot_order = cfg.served.iter().flat_map(|d| d.device.boot_order(d.slot, d.func)).collect();
            Some(crate::fwcfg::items(cfg.cpus, &regions, boot_order, user, cfg.has_display()))
        }
        Boot::Kernel(_) => None,
    };

    let coms: Vec<(ComPort, ComHost, DeviceWires)> = cfg
        .coms
        .iter()
        .map(|c| Ok((c.clone(), ComHost::open(c)?, DeviceWires::new(cfg.cpus, 1)?)))
        .collect::<Result<_, VmError>>()?;

    // A display: capvmctl --screenshot reads it; the i8042 reads its viewers.
    let display = served.iter().find_map(|d| d.display.as_ref());
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|source| VmError::Os { what: "dup", source });
    let mut ps2 = None;
    if let Some(d) = display {
        control.display =
            Some(crate::control::DisplayFds { vram: dup(&d.vram)?, state: dup(&d.state)?, blank: (d.width, d.height) });
        ps2 = Some(Ps2Host { wires: DeviceWires::new(cfg.cpus, PS2_IRQS.len())?, input: dup(&d.input_rx)? });
    }

    // From here on SIGCHLD/SIGTERM/SIGINT/SIGHUP arrive through the signalfd.
    let signals = handled_signals();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)
        .map_err(|e| VmError::Os { what: "sigprocmask", source: e.into() })?;
    let signalfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| VmError::Os { what: "signalfd", source: e.into() })?;
    let _raw: Vec<RawTerminal> = coms
        .iter()
        .filter(|(_, host, _)| host.kind != UartBackendKind::Socket)
        .filter_map(|(_, host, _)| RawTerminal::enter(host.fds[0].as_fd()))
        .collect();

    let mut children: Vec<Child> = Vec::new();
    let started = start_children(
        cfg,
        kvm,
        ram,
        regions,
        boot_state,
        fw_cfg,
        flash,
        host,
        &coms,
        ps2.as_ref(),
        &served,
        &mut children,
    );
    let mut supervisor = Supervisor::new(children, signalfd, cfg, Some(control));
    if let Err(e) = started {
        // Stop whatever did start, then report.
        supervisor.run_stopped();
        return Err(e);
    }
    // The children hold their images, taps, rings and RAM now; the broker
    // keeps no copy (its COM socket paths stay, to be removed at the end).
    let _com_sockets: Vec<_> = coms.into_iter().map(|(_, host, _)| host.into_socket_path()).collect();
    drop((served, ps2, vars));
    if let Err(e) = supervisor.confine(cfg) {
        supervisor.run_stopped();
        return Err(VmError::Confine(e));
    }
    Ok(supervisor.run())
}

/// How a child of `role` ("uart", "vcpu-runner", an emulation's name)
/// confines itself: the test hook's operation only reaches the role it names.
fn sandbox_config(cfg: &VmConfig, role: &str) -> SandboxConfig {
    SandboxConfig {
        test_violation: cfg.sandbox.test_violation.as_ref().filter(|t| t.role == role).map(|t| t.op.clone()),
        broker_pid: std::process::id(),
    }
}

#[allow(clippy::too_many_arguments)]
fn start_children(
    cfg: &VmConfig,
    kvm: OwnedFd,
    ram: OwnedFd,
    regions: Vec<capvm_ipc::MemoryRegion>,
    boot: capvm_ipc::BootState,
    fw_cfg: Option<capvm_ipc::FwCfgItems>,
    flash: Option<(capvm_ipc::FlashSpec, &File)>,
    host: HostKvm,
    coms: &[(ComPort, ComHost, DeviceWires)],
    ps2: Option<&Ps2Host>,
    served: &[ServedHost],
    children: &mut Vec<Child>,
) -> Result<(), VmError> {
    let stats_page =
        || capvm_ipc::stats::create().map_err(|e| VmError::Os { what: "cannot create a stats page", source: e.into() });
    let send_err = |role: &str, source: capvm_ipc::ChannelError| VmError::Start { role: role.to_string(), source };
    for (com, backend, wires) in coms {
        let child = spawn("capvm-uart", format!("uart server ({})", com.name))?;
        let fds = StartUartFds {
            ring: wires.ring.as_fd(),
            doorbell: wires.doorbell.as_fd(),
            irq: wires.irqs[0].as_fd(),
            backend: backend.fds.iter().map(|f| f.as_fd()).collect(),
        };
        let start = ToChild::StartUart(UartConfig {
            name: com.name.to_string(),
            port_base: com.port_base,
            backend: backend.kind,
            sandbox: sandbox_config(cfg, "uart"),
        });
        let sent = child.channel.send(&start, &fds.flatten());
        let role = child.role.clone();
        children.push(child);
        sent.map_err(|e| send_err(&role, e))?;
    }

    for dev in served {
        let mut child = spawn(dev.server, dev.name.clone())?;
        let stats = stats_page()?;
        let start = ToChild::StartDevice(DeviceConfig {
            name: dev.name.clone(),
            // RAM only: a device cannot DMA into the boot ROM. A server
            // without DMA (a display's registers) gets none.
            memory: regions.iter().filter(|r| !r.read_only && dev.dma).copied().collect(),
            function: dev.function.clone(),
            backend: dev.backend.clone(),
            sandbox: sandbox_config(cfg, dev.emulation),
        });
        let sent = child.channel.send(&start, &dev.server_fds(ram.as_fd(), stats.as_fd()).flatten());
        child.stats = Some(stats);
        let role = child.role.clone();
        children.push(child);
        sent.map_err(|e| send_err(&role, e))?;
    }

    if let Some(p) = ps2 {
        let mut child = spawn("capvm-ps2", PS2_NAME.to_string())?;
        let stats = stats_page()?;
        let fds = StartPs2Fds {
            ring: p.wires.ring.as_fd(),
            doorbell: p.wires.doorbell.as_fd(),
            keyboard_irq: p.wires.irqs[0].as_fd(),
            mouse_irq: p.wires.irqs[1].as_fd(),
            input: p.input.as_fd(),
            stats: stats.as_fd(),
        };
        let start = ToChild::StartPs2(Ps2Config { sandbox: sandbox_config(cfg, "i8042") });
        let sent = child.channel.send(&start, &fds.flatten());
        child.stats = Some(stats);
        let role = child.role.clone();
        children.push(child);
        sent.map_err(|e| send_err(&role, e))?;
    }

    // Each display's VNC server: the socket bound, VRAM and the state page.
    for (dev, display) in served.iter().filter_map(|d| Some((d, d.display.as_ref()?))) {
        let child = spawn("capvm-vnc", format!("vnc ({})", dev.name))?;
        let stats = stats_page()?;
        let fds = StartVncFds {
            listener: display.listener.as_fd(),
            vram: display.vram.as_fd(),
            state: display.state.as_fd(),
            input: display.input_tx.as_fd(),
            stats: stats.as_fd(),
        };
        let start = ToChild::StartVnc(VncConfig {
            name: dev.name.clone(),
            width: display.width,
            height: display.height,
            password: display.password.clone(),
            wait: display.wait,
            sandbox: sandbox_config(cfg, "vnc"),
        });
        let sent = child.channel.send(&start, &fds.flatten());
        let mut child = child;
        child.stats = Some(stats);
        let role = child.role.clone();
        children.push(child);
        sent.map_err(|e| send_err(&role, e))?;
    }

    let mut child = spawn("capvm-vcpu-runner", "vcpu-runner".to_string())?;
    let mut devices: Vec<DeviceRoute> = coms
        .iter()
        .map(|(com, _, _)| DeviceRoute {
            name: com.name.to_string(),
            pio: vec![PioRange { base: com.port_base, len: 8 }],
            irq_gsis: vec![com.irq],
            pci: None,
        })
        .collect();
    devices.extend(ps2.map(Ps2Host::route));
    devices.extend(served.iter().map(ServedHost::route));
    let bridges = cfg
        .slots
        .iter()
        .filter_map(|s| {
            let Kind::Bridge(kind) = s.emulation.kind else { return None };
            Some((s.slot, s.func, kind))
        })
        .collect();
    let config = RunnerConfig {
        vcpus: cfg.cpus,
        memory: regions,
        boot,
        hide_unemulated_cpuid: host == HostKvm::Emulated,
        devices,
        bridges,
        strict_io: cfg.strict_io,
        wire_memory: cfg.wired,
        fw_cfg,
        hold_vcpus: served.iter().any(|d| d.display.as_ref().is_some_and(|d| d.wait)),
        flash: flash.map(|(spec, _)| spec),
        ring_deadlines: cfg.ring_deadlines,
        sandbox: sandbox_config(cfg, "vcpu-runner"),
    };
    let stats = stats_page()?;
    let mut devices: Vec<RouteFds<BorrowedFd>> = coms.iter().map(|(_, _, w)| w.route_fds()).collect();
    devices.extend(ps2.map(|p| p.wires.route_fds()));
    devices.extend(served.iter().map(ServedHost::route_fds));
    let fds = StartRunnerFds {
        kvm: kvm.as_fd(),
        ram: ram.as_fd(),
        stats: stats.as_fd(),
        devices,
        flash: flash.map(|(_, file)| file.as_fd()),
    };
    let sent = child.channel.send(&ToChild::StartRunner(config), &fds.flatten());
    child.stats = Some(stats);
    children.push(child);
    sent.map_err(|e| send_err("vcpu-runner", e))
}
