//! `capvm --print-policy`: every child's manifest for a configuration,
//! without starting anything. The fd numbers are those the children will
//! hold: the allocation below replays their start-up (received fds take the
//! lowest free numbers, in message order; then what each child opens and
//! closes before it enters its sandbox). The integration test
//! `print_policy_matches_the_running_vm` holds this model to the truth.

use std::collections::BTreeSet;

use capvm_policy::roles::{self, RunnerFds, UartBackendFds};
use capvm_policy::{FdGrant, Manifest, SyscallRule};
use capvm_virtio::layout::{self, BLK_QUEUES, NET_QUEUES};

use crate::config::{ComBackend, VmConfig};

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
}

pub fn manifests(cfg: &VmConfig) -> Vec<Manifest> {
    let mut out = Vec::new();
    for com in &cfg.coms {
        // StartUart carries: ring, doorbell, irq, backend fds.
        let mut fds = Fds::child();
        let (ring, doorbell, irq) = (fds.alloc(), fds.alloc(), fds.alloc());
        let backend = match &com.backend {
            ComBackend::Stdio => UartBackendFds::Stdio { input: fds.alloc(), output: fds.alloc() },
            ComBackend::Tty(_) => {
                let input = fds.alloc();
                fds.free(ring); // the ring's memfd is closed once mapped
                UartBackendFds::Tty { input, output: fds.alloc() }
            }
            ComBackend::Socket(_) => UartBackendFds::Socket { listener: fds.alloc() },
        };
        out.push(roles::uart(com.name, doorbell, irq, &backend));
    }

    // StartVirtio carries: ring, doorbell, RAM, stats, one notify per
    // queue, one interrupt per vector, INTx# trigger and resample, the
    // backend (disk or tap). Ring and
    // stats are mapped, then closed.
    let virtio = virtio_devices(cfg);
    for (name, queues, backend) in &virtio {
        let mut fds = Fds::child();
        let (ring, doorbell, ram, stats) = (fds.alloc(), fds.alloc(), fds.alloc(), fds.alloc());
        let notify = (0..*queues).map(|_| fds.alloc()).collect();
        let interrupts = (0..layout::vectors(*queues)).map(|_| fds.alloc()).collect();
        let intx = Some((fds.alloc(), fds.alloc()));
        let (grants, syscalls) = backend(fds.alloc());
        fds.free(ring);
        fds.free(stats);
        let f = roles::VirtioFds { doorbell, ram, notify, interrupts, intx };
        out.push(roles::virtio_device(name, &f, grants, syscalls));
    }

    // StartRunner carries: kvm, RAM, stats, then ring, doorbell, irq per
    // COM port and ring, doorbell, notifies, interrupts per virtio device.
    let mut fds = Fds::child();
    let (kvm, ram, stats) = (fds.alloc(), fds.alloc(), fds.alloc());
    let devices: Vec<(i32, i32, i32)> = cfg.coms.iter().map(|_| (fds.alloc(), fds.alloc(), fds.alloc())).collect();
    let mut virtio_rings = Vec::new();
    let mut virtio_doorbells = Vec::new();
    let (mut notify, mut msix) = (Vec::new(), Vec::new());
    for (name, queues, _) in &virtio {
        virtio_rings.push(fds.alloc());
        virtio_doorbells.push((fds.alloc(), name.clone()));
        notify.extend((0..*queues).map(|_| fds.alloc()));
        msix.extend((0..layout::vectors(*queues)).map(|_| fds.alloc()));
        msix.extend([fds.alloc(), fds.alloc()]); // INTx# trigger and resample
    }
    let vm = fds.alloc();
    fds.free(stats); // mapped, then closed
    for ring in devices.iter().map(|d| d.0).chain(virtio_rings) {
        fds.free(ring); // mapped, then closed
    }
    let vcpus = (0..cfg.cpus).map(|_| fds.alloc()).collect();
    let control_dup = fds.alloc();
    let runner = RunnerFds {
        kvm,
        vm,
        vcpus,
        doorbells: cfg
            .coms
            .iter()
            .zip(&devices)
            .map(|(c, d)| (d.1, c.name.to_string()))
            .chain(virtio_doorbells)
            .collect(),
        ram,
        control_dup,
        irqfds: devices.iter().map(|d| d.2).chain(msix).collect(),
        pci: !notify.is_empty(),
        notify,
    };
    // The runner is its pid namespace's init: it sees itself as pid 1.
    out.push(roles::vcpu_runner(&runner, 1));
    out
}

/// A virtio backend's grants and syscalls, given the fd it lands on.
type BackendPolicy = Box<dyn Fn(i32) -> (Vec<FdGrant>, Vec<SyscallRule>)>;

/// The virtio devices in the broker's start order (disks, then NICs):
/// name, queue count, backend policy.
fn virtio_devices(cfg: &VmConfig) -> Vec<(String, usize, BackendPolicy)> {
    let mut v: Vec<(String, usize, BackendPolicy)> = Vec::new();
    for d in &cfg.disks {
        let ro = d.read_only;
        v.push((d.name(), BLK_QUEUES, Box::new(move |fd| roles::virtio_blk_backend(fd, ro))));
    }
    for n in &cfg.nics {
        v.push((n.name(), NET_QUEUES, Box::new(roles::virtio_net_backend)));
    }
    v
}

pub fn print(cfg: &VmConfig) -> String {
    let mut s = format!(
        "# capvm sandbox policy for VM {} (violations: {})\n# the broker itself is not sandboxed: it opens every host resource\n",
        cfg.name,
        if cfg.sandbox.log_only { "log, EPERM" } else { "kill" }
    );
    for m in manifests(cfg) {
        s += "\n";
        s += &m.to_string();
    }
    s
}
