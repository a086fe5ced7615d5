//! `capvm --print-policy`: every child's manifest for a configuration,
//! without starting anything. The fd numbers are those the children will
//! hold: the allocation below replays their start-up (received fds take the
//! lowest free numbers, in message order; then what each child opens and
//! closes before it enters its sandbox). The integration test
//! `print_policy_matches_the_running_vm` holds this model to the truth.

use std::collections::BTreeSet;

use capvm_ipc::{DeviceRoute, StartDeviceFds, StartPs2Fds, StartRunnerFds, StartUartFds, StartVncFds, UartBackendKind};
use capvm_policy::roles::{self, RunnerFds, UartBackendFds};
use capvm_policy::Manifest;

use crate::config::{ComBackend, VmConfig};
use crate::served::Allocator;
use crate::vm::VmError;

/// The kernel's fd allocator: the lowest free number.
struct Fds(BTreeSet<i32>);

impl Fds {
    /// A child right after exec: /dev/null on 0 and 1, stderr, control socket.
    fn child() -> Fds {
        Fds((0..=3).collect())
    }
    fn alloc(&mut self) -> i32 {
        let n = (0..).find(|n| !self.0.contains(n)).expect("a free fd");
        self.0.insert(n);
        n
    }
    fn free(&mut self, fd: i32) {
        self.0.remove(&fd);
    }
    /// The numbers the fds of a start message land on, in wire order.
    fn received(&mut self) -> impl Iterator<Item = i32> + '_ {
        std::iter::from_fn(|| Some(self.alloc()))
    }
}

pub fn manifests(cfg: &VmConfig) -> Result<Vec<Manifest>, VmError> {
    let mut out = Vec::new();
    for com in &cfg.coms {
        let mut fds = Fds::child();
        let kind = match com.backend {
            ComBackend::Stdio => UartBackendKind::Stdio,
            ComBackend::Tty(_) => UartBackendKind::Tty,
            ComBackend::Socket(_) => UartBackendKind::Socket,
        };
        let start = StartUartFds::take_from(kind, fds.received())?;
        let backend = match (kind, start.backend.as_slice()) {
            (UartBackendKind::Stdio, &[input, output]) => UartBackendFds::Stdio { input, output },
            (UartBackendKind::Tty, &[input]) => {
                fds.free(start.ring); // the ring's memfd is closed once mapped
                UartBackendFds::Tty { input, output: fds.alloc() }
            }
            (_, &[listener, ..]) => UartBackendFds::Socket { listener },
            (_, []) => unreachable!("take_from gives every backend its fds"),
        };
        out.push(roles::uart(com.name, start.doorbell, start.irq, &backend));
    }

    // Each server maps its ring and stats page, then closes them.
    let mut alloc = Allocator::default();
    let mut has_display = false;
    let mut routes = Vec::new();
    for d in &cfg.served {
        let function = (d.served.layout)(d.slot, d.func, d.device.as_ref(), &mut alloc)?;
        let mut fds = Fds::child();
        let start = StartDeviceFds::take_from(&function, d.device.backend_fd_count(), fds.received())?;
        fds.free(start.ring);
        fds.free(start.stats);
        let (grants, syscalls) = d.device.backend_policy(&start.backend);
        let ram = if d.device.needs_guest_ram() {
            Some(start.ram)
        } else {
            fds.free(start.ram);
            None
        };
        let f = roles::PciDeviceFds {
            doorbell: start.doorbell,
            ram,
            notify: start.pci.notify,
            interrupts: start.pci.interrupts,
            intx: start.pci.intx.map(|[t, r]| (t, r)),
        };
        out.push(roles::pci_device(&d.name(), &f, grants, syscalls));
        // A display's VNC server: listener, VRAM, state page, stats page;
        // all but the listener mapped and closed.
        if d.device.as_any().is::<crate::devices::fbuf::FbufConfig>() {
            let mut vnc = Fds::child();
            let start = StartVncFds::unflatten(vnc.received().take(5))?;
            out.push(roles::vnc(&d.name(), start.listener, start.input));
            has_display = true;
        }
        routes.push(DeviceRoute { name: d.name(), pio: Vec::new(), irq_gsis: Vec::new(), pci: Some(function) });
    }

    // The runner: what StartRunner brings, then the VM fd; stats page and
    // rings are mapped and closed; then one fd per vCPU and a dup of its
    // control socket.
    // With a display, the i8042 server: ring and stats page mapped and closed.
    if has_display {
        let mut ps2 = Fds::child();
        let start = StartPs2Fds::unflatten(ps2.received().take(6))?;
        out.push(roles::ps2(start.doorbell, start.keyboard_irq, start.mouse_irq, start.input));
    }

    let mut all_routes: Vec<DeviceRoute> = cfg
        .coms
        .iter()
        .map(|c| DeviceRoute { name: c.name.into(), pio: Vec::new(), irq_gsis: vec![c.irq], pci: None })
        .collect();
    if has_display {
        let name = crate::vm::PS2_NAME.into();
        all_routes.push(DeviceRoute { name, pio: Vec::new(), irq_gsis: crate::vm::PS2_IRQS.to_vec(), pci: None });
    }
    all_routes.extend(routes);
    let mut fds = Fds::child();
    let has_flash = matches!(cfg.boot, crate::config::Boot::Firmware { vars: Some(_), .. });
    let start = StartRunnerFds::take_from(&all_routes, has_flash, fds.received())?;
    let vm = fds.alloc();
    fds.free(start.stats);
    // The variable store is mapped and its fd closed before the sandbox.
    if let Some(flash) = start.flash {
        fds.free(flash);
    }
    let mut irqfds = Vec::new();
    let mut notify = Vec::new();
    for d in &start.devices {
        fds.free(d.ring);
        // BAR memory is mapped and its fd closed before the sandbox.
        if let Some(m) = d.memory {
            fds.free(m);
        }
        irqfds.extend(&d.irqs);
        if let Some(pci) = &d.pci {
            notify.extend(&pci.notify);
            irqfds.extend(&pci.interrupts);
            irqfds.extend(pci.intx.iter().flatten());
        }
    }
    let vcpus = (0..cfg.cpus).map(|_| fds.alloc()).collect();
    let control_dup = fds.alloc();
    let runner = RunnerFds {
        kvm: start.kvm,
        vm,
        vcpus,
        doorbells: start.devices.iter().zip(&all_routes).map(|(d, r)| (d.doorbell, r.name.clone())).collect(),
        ram: start.ram,
        control_dup,
        irqfds,
        pci: all_routes.iter().any(|r| r.pci.is_some()),
        notify,
        flash: has_flash,
        memory_bars: all_routes
            .iter()
            .filter(|r| r.pci.as_ref().is_some_and(|f| f.memory_bar.is_some()))
            .map(|r| r.name.clone())
            .collect(),
        native_pages: capvm_kernel::HostKvm::detect() == capvm_kernel::HostKvm::Emulated,
    };
    // The runner is its pid namespace's init: it sees itself as pid 1.
    out.push(roles::vcpu_runner(&runner, 1));
    Ok(out)
}

pub fn print(cfg: &VmConfig) -> String {
    let mut s = format!(
        "# capvm sandbox policy for VM {} (violations: {})\n# the broker opens every host resource, starts the children, then confines itself (role broker, last)\n",
        cfg.name,
        if cfg.sandbox.log_only { "log, EPERM" } else { "kill" }
    );
    match manifests(cfg) {
        Ok(manifests) => {
            for m in &manifests {
                s += "\n";
                s += &m.to_string();
            }
            s += "\n";
            s += &broker(cfg, &manifests).to_string();
        }
        Err(e) => s += &format!("\n# cannot lay the children's fds out: {e}\n"),
    }
    s
}

/// The broker's manifest: its fd numbers and its children's pids are
/// known only once the VM runs.
fn broker(cfg: &VmConfig, children: &[Manifest]) -> Manifest {
    roles::broker(&roles::BrokerFds {
        signalfd: -1,
        control: -1,
        channels: children.iter().map(|m| (-1, m.role.clone())).collect(),
        stats: vec![(-1, "each server".into())],
        children: Vec::new(),
        paths: crate::confine::paths(cfg),
    })
}
