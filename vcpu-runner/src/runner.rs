//! Start-up and the vCPU threads.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use capvm_ipc::ring::ExitRing;
use capvm_ipc::stats::{CountersByKind, Stats};
use capvm_ipc::{
    memmap, BridgeKind, Channel, ChannelError, InternalErrorReport, RingDeadlines, RingError, StartRunnerFds, ToBroker,
    ToChild, VmEvent,
};
use capvm_kernel::boot::{BootRegs, EntryMode};
use capvm_kernel::complete::Outcome;
use capvm_kernel::vm::EventFd;
use capvm_kernel::{Exit, HostKvm, KvmError, RefusedAt, Vcpu, Vm};

use crate::flash::{Flash, FlashCounters};
use crate::fwcfg::FwCfg;
use crate::memory::GuestRam;
use crate::pci::{self, PciBus, ServedFunction};
use crate::platform::Platform;
use crate::router::{Device, ExitCounters, Routed, Router};

/// How often the runner looks for vCPUs halted with interrupts off.
const HALT_CHECK_PERIOD_MS: u16 = 50;
/// KVM_SYSTEM_EVENT types (linux/kvm.h).
const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error(transparent)]
    Fds(#[from] capvm_ipc::FdLayoutError),
    #[error(transparent)]
    Ram(#[from] capvm_ipc::shm::MapGuestRamError),
    #[error("{0}")]
    Memory(String),
    #[error("entering the sandbox: {0}")]
    Sandbox(#[from] capvm_policy::enforce::SandboxError),
    #[error("{what}: {source}")]
    Os { what: &'static str, source: std::io::Error },
    #[error("{0}")]
    Config(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

pub enum Never {}

/// Per-vCPU state the halt watchdog reads.
#[derive(Default)]
struct VcpuStatus {
    /// Exits other than kicks; a vCPU whose count does not move gets kicked.
    exits: AtomicU64,
    /// Halted with IF=0, or an AP never started, at the last kick.
    stopped: AtomicBool,
}

struct Shared {
    router: Router,
    ram: GuestRam,
    channel: Channel,
    status: Vec<VcpuStatus>,
    reported: AtomicBool,
}

impl Shared {
    /// Sends the first terminal event; later ones lose the race and are dropped.
    fn report(&self, msg: ToBroker) {
        if !self.reported.swap(true, Ordering::SeqCst) {
            let _ = self.channel.send(&msg, &[]);
        }
    }
}

pub fn start(channel: &Channel) -> Result<Never, RunnerError> {
    let (cfg, fds) = crate::receive_start(channel)?;
    let StartRunnerFds { kvm, ram: ram_fd, stats: stats_fd, devices: device_fds, flash: flash_fd } =
        StartRunnerFds::unflatten(&cfg.devices, cfg.flash.is_some(), fds)?;
    let host = if cfg.hide_unemulated_cpuid { HostKvm::Emulated } else { HostKvm::HardwareAssisted };
    let mut vm = Vm::create(kvm, host)?;
    if cfg.vcpus == 0 || cfg.vcpus as usize > vm.max_vcpus() {
        return Err(RunnerError::Config(format!(
            "-c {}: this host's KVM runs at most {} vCPUs",
            cfg.vcpus,
            vm.max_vcpus()
        )));
    }
    let ram = GuestRam::map(&vm, ram_fd, &cfg.memory, cfg.wire_memory)?;
    let mut stats =
        Stats::attach(stats_fd.as_fd()).map_err(|e| RunnerError::Os { what: "stats page", source: e.into() })?;
    drop(stats_fd);
    let exits = ExitCounters {
        pio: stats.counter("pio_exits"),
        mmio: stats.counter("mmio_exits"),
        completed: CountersByKind::new(&mut stats, "completed_", capvm_kernel::complete::KINDS),
        simd_runs: stats.counter("simd_runs"),
        emulation_retries: stats.counter("emulation_retries"),
        late_answers: stats.counter("late_answers"),
    };
    // The variable store is mapped now and its fd closed: the sandbox
    // leaves the runner no file but what it had.
    let flash = match (cfg.flash, flash_fd) {
        (Some(spec), Some(fd)) => {
            let counters = FlashCounters {
                bytes_programmed: stats.counter("flash_bytes_programmed"),
                blocks_erased: stats.counter("flash_blocks_erased"),
                unknown_commands: stats.counter("flash_unknown_commands"),
            };
            let flash = Flash::map(File::from(fd), spec.guest_addr, spec.size, counters)
                .map_err(|e| RunnerError::Config(e.to_string()))?;
            Some(flash)
        }
        _ => None,
    };

    let mut devices = Vec::new();
    let mut served = Vec::new();
    let mut notify_fds = Vec::new();
    for (d, wires) in cfg.devices.iter().zip(device_fds) {
        let ring = ExitRing::attach(wires.ring.as_fd(), wires.doorbell)?;
        if ring.slots() < cfg.vcpus {
            return Err(RunnerError::Protocol(format!("{}'s exit ring has fewer slots than vCPUs", d.name)));
        }
        for (&gsi, irq) in d.irq_gsis.iter().zip(wires.irqs) {
            vm.register_irqfd(irq, gsi)?;
        }
        if let (Some(layout), Some(pci_fds)) = (&d.pci, wires.pci) {
            let mut notify = Vec::new();
            for fd in pci_fds.notify {
                notify_fds.push(fd.as_raw_fd());
                // SAFETY: an eventfd the broker sent us, now owned by EventFd.
                notify.push(unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) });
            }
            let first_gsi = layout.msix.map(|m| m.first_gsi).or(layout.msi.map(|m| m.gsi));
            for (gsi, fd) in first_gsi.into_iter().flat_map(|g| g..).zip(pci_fds.interrupts) {
                vm.register_irqfd(fd, gsi)?;
            }
            if let (Some(gsi), Some([trigger, resample])) = (layout.intx_gsi, pci_fds.intx) {
                if !memmap::PCI_INTX_GSIS.contains(&gsi) {
                    return Err(RunnerError::Protocol(format!("{}: INTx# on GSI {gsi}, not a PCI pin", d.name)));
                }
                vm.register_irqfd_with_resample(trigger, resample, gsi)?;
            }
            // A memory BAR (a framebuffer): mapped now, its fd closed; the
            // KVM slot follows the BAR (pci::PciBus::remap).
            let memory = match (layout.memory_bar, wires.memory) {
                (Some(index), Some(fd)) => {
                    let size = layout.bars.iter().find(|b| b.index == index).map_or(0, |b| b.size);
                    let host_addr = map_bar_memory(fd, size)?;
                    Some(pci::BarMemory { host_addr, slot: BAR_MEMORY_SLOTS + served.len() as u32 })
                }
                _ => None,
            };
            served.push(ServedFunction { layout: layout.clone(), device: devices.len(), notify, memory });
        }
        devices.push(Device { name: d.name.clone(), pio: d.pio.clone(), ring });
    }
    let bridges = cfg
        .bridges
        .iter()
        .map(|&(slot, func, kind)| {
            let b = match kind {
                BridgeKind::HostBridge => pci::HOSTBRIDGE,
                BridgeKind::AmdHostBridge => pci::AMD_HOSTBRIDGE,
                BridgeKind::Lpc => pci::LPC,
            };
            (slot, func, b)
        })
        .collect();
    let ram_ranges = cfg.memory.iter().map(|r| (r.guest_addr, r.size)).collect();
    let counters = pci::PciCounters {
        rejected_bars: stats.counter("bar_moves_rejected"),
        routing_errors: stats.counter("pci_routing_errors"),
    };
    let pci = PciBus::new(bridges, served, ram_ranges, counters);
    pci.map_as_found(&vm, &devices);

    let mut vcpus = Vec::new();
    for id in 0..cfg.vcpus {
        vcpus.push(vm.create_vcpu(id)?);
    }
    let b = &cfg.boot;
    let mode = match b.mode {
        capvm_ipc::EntryMode::Pvh32 => Some(EntryMode::Pvh32),
        capvm_ipc::EntryMode::Long64 => Some(EntryMode::Long64),
        // KVM creates vCPUs in the reset state: the BSP runs the ROM's
        // reset vector, the APs wait for INIT and SIPI.
        capvm_ipc::EntryMode::Reset => None,
    };
    if let Some(mode) = mode {
        vcpus[0].set_boot_state(&BootRegs { mode, entry: b.entry, rsp: b.rsp, rsi: b.rsi, rbx: b.rbx })?;
    }

    // Where low RAM ends, and how much there is above 4 GiB.
    let ram_end = |high: bool| {
        let ends = cfg.memory.iter().filter(|r| !r.read_only && (r.guest_addr >= 1 << 32) == high);
        ends.map(|r| r.guest_addr + r.size).max().unwrap_or(0)
    };
    let mut platform = Platform::new(ram_end(false), ram_end(true).saturating_sub(1 << 32), cfg.vcpus);
    platform.i8042_served = cfg.devices.iter().any(|d| d.pio.iter().any(|r| r.contains(crate::platform::I8042_DATA)));
    install_kick_handler();
    let control = channel_dup(channel)?;
    enter_sandbox(channel, &cfg.sandbox, &runner_fds(&vm, &vcpus, &ram, &devices, &control, notify_fds, &cfg))?;
    if cfg.hold_vcpus {
        // fbuf's `wait`: nothing runs until the first viewer is in.
        match channel.recv::<ToChild>() {
            Ok((ToChild::Go, _)) => {}
            Ok((ToChild::Shutdown, _)) | Err(ChannelError::Closed) => std::process::exit(0),
            Ok((other, _)) => return Err(RunnerError::Protocol(format!("expected Go, got {other:?}"))),
            Err(e) => return Err(e.into()),
        }
    }
    let shared = Arc::new(Shared {
        router: Router {
            vm,
            platform,
            pci,
            devices,
            strict_io: cfg.strict_io,
            exits,
            fw_cfg: cfg.fw_cfg.as_ref().map(|items| std::sync::Mutex::new(FwCfg::new(items, ram.memory()))),
            flash,
        },
        ram,
        channel: Channel::from_fd(control),
        status: (0..cfg.vcpus).map(|_| VcpuStatus::default()).collect(),
        reported: AtomicBool::new(false),
    });
    let mut threads = Vec::new();
    for vcpu in vcpus {
        let shared = shared.clone();
        let t = std::thread::Builder::new()
            .name(format!("vcpu{}", vcpu.id()))
            .spawn(move || vcpu_loop(vcpu, &shared))
            .map_err(|source| RunnerError::Os { what: "cannot start a vCPU thread", source })?;
        threads.push(t);
    }
    supervise(channel, &shared, &threads, cfg.ring_deadlines)
}

/// What the runner holds once set up, as its manifest names it.
fn runner_fds(
    vm: &Vm,
    vcpus: &[Vcpu],
    ram: &GuestRam,
    devices: &[Device],
    control_dup: &OwnedFd,
    notify: Vec<i32>,
    cfg: &capvm_ipc::RunnerConfig,
) -> capvm_policy::roles::RunnerFds {
    let (kvm_fd, vm_fd) = vm.raw_fds();
    capvm_policy::roles::RunnerFds {
        kvm: kvm_fd,
        vm: vm_fd,
        vcpus: vcpus.iter().map(|v| v.raw_fd()).collect(),
        doorbells: devices.iter().map(|d| (d.ring.doorbell().as_raw_fd(), d.name.clone())).collect(),
        ram: ram.fd(),
        control_dup: control_dup.as_raw_fd(),
        irqfds: vm.eventfd_numbers(),
        pci: cfg.devices.iter().any(|d| d.pci.is_some()),
        notify,
        flash: cfg.flash.is_some(),
        memory_bars: cfg
            .devices
            .iter()
            .filter(|d| d.pci.as_ref().is_some_and(|f| f.memory_bar.is_some()))
            .map(|d| d.name.clone())
            .collect(),
        native_pages: vcpus.iter().any(Vcpu::runs_natively),
    }
}

/// KVM memory slots for BAR memory start here, above guest RAM's and the ROM's.
const BAR_MEMORY_SLOTS: u32 = 32;

/// Maps a BAR's memfd read-write, shared, for the runner's life, and
/// closes it; the host address.
fn map_bar_memory(fd: OwnedFd, size: u64) -> Result<u64, RunnerError> {
    let len = std::num::NonZeroUsize::new(size as usize)
        .ok_or_else(|| RunnerError::Protocol("a memory BAR of size 0".into()))?;
    let prot = nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE;
    // SAFETY: a new shared mapping of a memfd the broker sized (sealed) to
    // the BAR; never unmapped, so KVM's slot never outlives it.
    let addr = unsafe { nix::sys::mman::mmap(None, len, prot, nix::sys::mman::MapFlags::MAP_SHARED, &fd, 0) }
        .map_err(|e| RunnerError::Os { what: "map BAR memory", source: e.into() })?;
    Ok(addr.as_ptr() as u64)
}

/// Confines this process before any vCPU runs (single-threaded still).
fn enter_sandbox(
    channel: &Channel,
    sandbox: &capvm_ipc::SandboxConfig,
    fds: &capvm_policy::roles::RunnerFds,
) -> Result<(), RunnerError> {
    let kvm_fd = fds.kvm;
    let manifest = capvm_policy::roles::vcpu_runner(fds, std::process::id());
    capvm_policy::enforce::enter(&manifest, channel)?;
    // Hostile-test hook: the kvm fd has neither CAP_WRITE nor CAP_IOCTL.
    capvm_policy::hostile::run_hook(sandbox, kvm_fd, kvm_fd);
    // As every child: the sandbox report, then Ready (after which the
    // broker believes no report).
    channel.send(&ToBroker::Ready { version: capvm_ipc::PROTO_VERSION }, &[])?;
    Ok(())
}

fn channel_dup(channel: &Channel) -> Result<OwnedFd, RunnerError> {
    channel.as_fd().try_clone_to_owned().map_err(|source| RunnerError::Os { what: "dup the control socket", source })
}

/// The main thread: answers the broker and watches for an all-halted VM.
fn supervise(
    channel: &Channel,
    shared: &Shared,
    threads: &[std::thread::JoinHandle<Never>],
    deadlines: RingDeadlines,
) -> Result<Never, RunnerError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::unix::thread::JoinHandleExt;

    let mut last_exits: Vec<u64> = vec![u64::MAX; threads.len()];
    // Looks in a row that found each vCPU without an exit.
    let mut quiet: Vec<u32> = vec![0; threads.len()];
    let mut late = Vec::new();
    loop {
        let mut pfd = [PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut pfd, PollTimeout::from(HALT_CHECK_PERIOD_MS)).unwrap_or(0);
        if ready > 0 {
            match channel.recv::<ToChild>() {
                Ok((ToChild::Shutdown, _)) | Err(ChannelError::Closed) => std::process::exit(0),
                Ok((other, _)) => return Err(RunnerError::Protocol(format!("unexpected {other:?}"))),
                Err(e) => return Err(e.into()),
            }
        }
        for (i, t) in threads.iter().enumerate() {
            let exits = shared.status[i].exits.load(Ordering::Relaxed);
            if exits != last_exits[i] {
                quiet[i] = 0;
            } else {
                // Quiet since the last look: kick it out of KVM_RUN so it
                // reports its MP state. A vCPU busy in emulated CPL0 code
                // may not come out; it is then not halted either. One that
                // stays quiet (an idle guest, asleep with interrupts on) is
                // kicked ever less often, down to once a second: each kick
                // costs a KVM_RUN round trip.
                quiet[i] = quiet[i].saturating_add(1);
                // Every look for eight, then every 2nd, 4th... (1 s at most).
                let period = (1u32 << (quiet[i] / 8).min(5)).min(MAX_KICK_PERIODS);
                if quiet[i].is_multiple_of(period) {
                    // SAFETY: the thread is alive (vCPU threads never return).
                    unsafe { libc::pthread_kill(t.as_pthread_t(), KICK_SIGNAL) };
                }
            }
            last_exits[i] = exits;
        }
        if shared.status.iter().all(|s| s.stopped.load(Ordering::Relaxed)) {
            shared.report(ToBroker::Event(VmEvent::Halt));
        }
        watch_rings(shared, deadlines, &mut late);
    }
}

/// The exit rings' watchdog: a server that leaves a vCPU waiting past
/// `exit_ring.report` is named to the broker (once a wait), past
/// `exit_ring.deadline` the VM stops naming it; a server that scribbled an
/// unexpected state into a slot stops it at once. `late` holds the
/// (device, vCPU) waits already reported.
fn watch_rings(shared: &Shared, deadlines: RingDeadlines, late: &mut Vec<(usize, u32)>) {
    let ms = |d: Duration| d.as_millis() as u64;
    for (d, device) in shared.router.devices.iter().enumerate() {
        if let Some(state) = device.ring.bad_state() {
            shared.report(ToBroker::Fatal(format!(
                "device server {} left the state {state:#x} in its exit ring (neither a request nor an answer); stopping the VM",
                device.name
            )));
        }
        for vcpu in 0..device.ring.slots() {
            let Some(waited) = device.ring.waiting(vcpu) else {
                late.retain(|&k| k != (d, vcpu));
                continue;
            };
            if deadlines.stop_ms != 0 && ms(waited) >= deadlines.stop_ms {
                shared.report(ToBroker::Fatal(format!(
                    "device server {} did not answer vCPU {vcpu} within {:.1} s (exit_ring.deadline); stopping the VM",
                    device.name,
                    deadlines.stop_ms as f64 / 1000.0
                )));
            } else if deadlines.report_ms != 0 && ms(waited) >= deadlines.report_ms && !late.contains(&(d, vcpu)) {
                late.push((d, vcpu));
                shared.router.exits.late_answers.inc();
                let _ = shared
                    .channel
                    .send(&ToBroker::Late { device: device.name.clone(), vcpu, waited_ms: ms(waited) }, &[]);
            }
        }
    }
}

const KICK_SIGNAL: libc::c_int = libc::SIGUSR1;
/// A quiet vCPU is kicked at least every this many watchdog periods (1 s).
const MAX_KICK_PERIODS: u32 = 20;

extern "C" fn on_kick(_: libc::c_int) {}

/// A no-op handler without SA_RESTART: its only job is to make KVM_RUN
/// return EINTR in the vCPU thread it is sent to.
fn install_kick_handler() {
    // SAFETY: installs an async-signal-safe no-op handler.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(KICK_SIGNAL, &sa, std::ptr::null_mut());
    }
}

/// How many times in a row a vCPU runs again into an emulation failure at
/// the same RIP with the same bytes before the VM stops: another vCPU's
/// code patching (an int3 put in and taken out again) can change the bytes
/// between the failure and our look, but a real failure repeats.
const MAX_RETRIES: u32 = 3;

/// One vCPU's view of the instructions the host's emulator refuses.
#[derive(Default)]
struct Refused {
    /// RIP and bytes of the last failure not completed, and how often.
    last: Option<(u64, Vec<u8>)>,
    retries: u32,
}

impl Refused {
    /// Completes the instruction at the failure (what the emulator of a
    /// paging-based host cannot run at CPL0: capvm_kernel::complete::KINDS),
    /// or runs the vCPU again a few times
    /// when the bytes there are not an instruction we complete (code
    /// patching). Err: the VM stops; what was tried, for its last line.
    fn complete(&mut self, vcpu: &mut Vcpu, ram: &GuestRam, exits: &ExitCounters, r: &RefusedAt) -> Result<(), String> {
        match vcpu.complete_refused(r, ram) {
            Ok(Outcome::Completed(kind)) => {
                exits.completed.inc(kind);
                if kind == "simd" {
                    exits.simd_runs.inc();
                }
            }
            Ok(Outcome::Batch(b)) => {
                exits.completed.add("simd", b.simd.into());
                exits.completed.add("after_simd", b.plain.into());
                exits.simd_runs.inc();
            }
            Ok(outcome @ (Outcome::Unsupported(_) | Outcome::Undecodable)) => {
                let here = (r.rip, r.bytes.clone());
                if self.last.as_ref() == Some(&here) {
                    self.retries += 1;
                } else {
                    self.last = Some(here);
                    self.retries = 1;
                }
                exits.emulation_retries.inc();
                if self.retries <= MAX_RETRIES {
                    return Ok(());
                }
                return Err(match outcome {
                    Outcome::Unsupported(what) => format!("{what} is not completed; ran again {MAX_RETRIES} times"),
                    _ => format!("the bytes do not decode; ran again {MAX_RETRIES} times"),
                });
            }
            Ok(Outcome::Fault { linear, write: false }) => {
                return Err(format!("its memory operand at {linear:#x} is not guest RAM"));
            }
            Ok(Outcome::Fault { linear, write: true }) => {
                return Err(format!("its store to {linear:#x} is not to writable guest RAM (ROM, MMIO or a hole)"));
            }
            Err(e) => return Err(format!("completing it failed: {e}")),
        }
        // Completed: a later failure starts its own count.
        self.last = None;
        self.retries = 0;
        Ok(())
    }
}

fn vcpu_loop(mut vcpu: Vcpu, shared: &Shared) -> Never {
    let id = vcpu.id();
    let mut refused = Refused::default();
    let status = &shared.status[id as usize];
    let msg = loop {
        let exit = match vcpu.run() {
            Ok(e) => e,
            Err(e) => break ToBroker::Fatal(format!("vCPU {id}: {e}")),
        };
        if !matches!(exit, Exit::Interrupted) {
            status.exits.fetch_add(1, Ordering::Relaxed);
            status.stopped.store(false, Ordering::Relaxed);
        }
        let routed = match exit {
            Exit::IoOut(port, data) => {
                let (size, v) = written_value(data);
                shared.router.pio(id, port, size, Some(v))
            }
            Exit::IoIn(port, data) => {
                let r = shared.router.pio(id, port, access_size(data), None);
                if let Routed::Continue(v) = r {
                    fill_read(data, v);
                }
                r
            }
            Exit::MmioRead(addr, data) => {
                fill_read(data, shared.router.mmio(id, addr, access_size(data), None));
                Routed::Continue(0)
            }
            Exit::MmioWrite(addr, data) => {
                let (size, v) = written_value(data);
                shared.router.mmio(id, addr, size, Some(v));
                Routed::Continue(0)
            }
            Exit::Interrupted => {
                let stopped = vcpu.is_stopped().unwrap_or(false);
                status.stopped.store(stopped, Ordering::Relaxed);
                Routed::Continue(0)
            }
            Exit::Shutdown => {
                let (rip, cpl) = vcpu.where_am_i().unwrap_or((0, 0));
                Routed::Stop(VmEvent::TripleFault { vcpu: id, rip, cpl })
            }
            Exit::Hlt => Routed::Stop(VmEvent::Halt),
            Exit::SystemEvent(KVM_SYSTEM_EVENT_RESET) => Routed::Stop(VmEvent::Reboot),
            Exit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN) => Routed::Stop(VmEvent::PowerOff),
            Exit::SystemEvent(kind) => break ToBroker::Fatal(format!("vCPU {id}: system event {kind}")),
            Exit::InternalError(suberror) => {
                let at = vcpu.refused_at(&shared.ram);
                let mut report = InternalErrorReport {
                    vcpu: id,
                    suberror,
                    rip: at.as_ref().map_or(0, |a| a.rip),
                    cpl: at.as_ref().map_or(0, |a| a.cpl),
                    bytes: at.as_ref().map(|a| a.bytes.clone()).unwrap_or_default(),
                    tried: String::new(),
                };
                match at {
                    Ok(at) if suberror == EMULATION_FAILURE => {
                        match refused.complete(&mut vcpu, &shared.ram, &shared.router.exits, &at) {
                            Ok(()) => Routed::Continue(0),
                            Err(tried) => {
                                report.tried = tried;
                                Routed::Stop(VmEvent::InternalError(report))
                            }
                        }
                    }
                    _ => Routed::Stop(VmEvent::InternalError(report)),
                }
            }
            Exit::Unhandled(what) => break ToBroker::Fatal(format!("vCPU {id}: unhandled exit {what}")),
        };
        if let Routed::Stop(event) = routed {
            break ToBroker::Event(event);
        }
    };
    shared.report(msg);
    // The broker stops the VM; this vCPU never runs again.
    loop {
        std::thread::park();
    }
}

/// An access's width in bytes as the ring carries it (at most 8).
fn access_size(data: &[u8]) -> u8 {
    data.len().min(8) as u8
}

/// The width and little-endian value of a guest write.
fn written_value(data: &[u8]) -> (u8, u64) {
    let n = access_size(data) as usize;
    let mut v = [0u8; 8];
    v[..n].copy_from_slice(&data[..n]);
    (n as u8, u64::from_le_bytes(v))
}

/// Hands a read's answer back to the guest, as wide as it asked.
fn fill_read(data: &mut [u8], v: u64) {
    let n = access_size(data) as usize;
    data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
}

/// KVM_INTERNAL_ERROR_EMULATION.
const EMULATION_FAILURE: u32 = 1;
