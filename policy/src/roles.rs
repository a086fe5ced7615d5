//! The manifests of each role. The fd numbers are those the process holds
//! when it enters its sandbox; the broker's `--print-policy` shows the same
//! manifests with the numbers a default start gives.

use crate::{Args, BrokerPath, Confinement, FdGrant, Ioctl, Manifest, Right, SyscallRule};

use Right::*;

/// What every sandboxed capvm process needs: its own memory, its threads'
/// synchronisation, time, and talking over the fds it holds.
fn common() -> Vec<SyscallRule> {
    let r = |name, args, why| SyscallRule { name, args, why };
    vec![
        r("read", Args::FdWith(&[Read]), "read from fds that hold CAP_READ"),
        r("write", Args::FdWith(&[Write]), "write to fds that hold CAP_WRITE (eventfds, output)"),
        r("recvmsg", Args::FdWith(&[Read]), "control messages from the broker"),
        r("sendmsg", Args::FdWith(&[Write]), "control messages and audit records to the broker"),
        r("poll", Args::Any, "wait for fds it holds"),
        r("ppoll", Args::Any, "wait for fds it holds"),
        r("close", Args::Any, "drop an fd"),
        r("futex", Args::Any, "locks, and the exit ring's wake-ups"),
        r("mmap", Args::NoExec, "heap and thread stacks; never executable"),
        r("mprotect", Args::NoExec, "guard pages; never executable"),
        r("munmap", Args::Any, "free memory"),
        r("mremap", Args::Any, "glibc's realloc moves large buffers (a VNC update) with it; protections stay"),
        r("madvise", Args::Any, "return freed memory"),
        r("brk", Args::Any, "heap"),
        r("rt_sigreturn", Args::Any, "return from signal handlers (the runner's vCPU kick)"),
        r("restart_syscall", Args::Any, "the kernel restarts a poll a signal or debugger interrupted"),
        r("rt_sigprocmask", Args::Any, "thread start-up masks signals"),
        r("sigaltstack", Args::Any, "Rust's stack-overflow guard"),
        r("sched_yield", Args::Any, "spin-wait back-off"),
        r("nanosleep", Args::Any, "back-off"),
        r("clock_nanosleep", Args::Any, "back-off"),
        r("clock_gettime", Args::Any, "time (when the vDSO is not used)"),
        r("getrandom", Args::Any, "hash map seeds"),
        r("gettid", Args::Any, "thread identity"),
        r("getcpu", Args::Any, "the exit ring spins only while its peer runs on another CPU (vDSO or rseq first)"),
        r("getpid", Args::Any, "process identity"),
        r("exit", Args::Any, "thread exit"),
        r("exit_group", Args::Any, "process exit"),
    ]
}

/// The fd count just above the highest fd held (or reserved), and no core
/// dumps (guest memory stays in RAM).
fn rlimits(fds: &[FdGrant]) -> Vec<(&'static str, u64)> {
    let max = fds.iter().map(|f| f.fd).max().unwrap_or(2) as u64;
    vec![("RLIMIT_NOFILE", max + 1), ("RLIMIT_CORE", 0)]
}

/// stderr and the control socket, which every child keeps.
pub fn base_fds() -> Vec<FdGrant> {
    vec![
        FdGrant::new(2, "stderr (diagnostics)", &[Write]),
        FdGrant::new(3, "control socket to the broker", &[Read, Write, Event]),
    ]
}

/// The KVM ioctls a vCPU runner still needs once the VM is built.
pub fn vcpu_ioctls() -> Vec<Ioctl> {
    // _IO(KVMIO, n) and _IOR/_IOW(KVMIO, n, struct) as in linux/kvm.h.
    vec![
        Ioctl { name: "KVM_RUN", cmd: 0xae80 },
        Ioctl { name: "KVM_GET_REGS", cmd: 0x8090_ae81 },
        Ioctl { name: "KVM_GET_SREGS", cmd: 0x8138_ae83 },
        Ioctl { name: "KVM_GET_MP_STATE", cmd: 0x8004_ae98 },
        // Completing an int3, int n or fwait the host's emulator refused.
        Ioctl { name: "KVM_SET_REGS", cmd: 0x4090_ae82 },
        Ioctl { name: "KVM_GET_VCPU_EVENTS", cmd: 0x8040_ae9f },
        Ioctl { name: "KVM_SET_VCPU_EVENTS", cmd: 0x4040_aea0 },
        // Completing xsave, xsaveopt and xrstor: XCR0 and the extended state.
        Ioctl { name: "KVM_GET_XCRS", cmd: 0x8188_aea6 },
        Ioctl { name: "KVM_GET_XSAVE", cmd: 0x9000_aea4 },
        Ioctl { name: "KVM_SET_XSAVE", cmd: 0x5000_aea5 },
        // A #PF for a completion's memory operand: CR2 before the exception.
        Ioctl { name: "KVM_SET_SREGS", cmd: 0x4138_ae84 },
    ]
}

/// The fds a vCPU runner holds when it enters its sandbox.
pub struct RunnerFds {
    pub kvm: i32,
    pub vm: i32,
    pub vcpus: Vec<i32>,
    /// (fd, device name) of each exit ring's doorbell.
    pub doorbells: Vec<(i32, String)>,
    pub ram: i32,
    /// The vCPU threads' copy of the control socket.
    pub control_dup: i32,
    /// Interrupt eventfds registered with KVM, kept for later unregistering.
    pub irqfds: Vec<i32>,
    /// Queue-notify eventfds, moved (KVM_IOEVENTFD) when the guest moves a BAR.
    pub notify: Vec<i32>,
    /// The VM has PCI functions: BAR moves and MSI-X routes need VM ioctls.
    pub pci: bool,
    /// It maps the firmware's variable store (-l bootrom,ROM,VARFILE).
    pub flash: bool,
    /// The devices whose BAR memory (a framebuffer) it maps into the guest.
    pub memory_bars: Vec<String>,
    /// It runs refused guest SIMD instructions natively (an emulated host:
    /// capvm_kernel::native), in pages of its own.
    pub native_pages: bool,
}

/// The VM ioctls a runner with PCI functions keeps: moving queue-notify
/// ioeventfds with their BAR, and MSI-X table writes becoming GSI routes.
pub fn vm_ioctls() -> Vec<Ioctl> {
    vec![Ioctl { name: "KVM_IOEVENTFD", cmd: 0x4040_ae79 }, Ioctl { name: "KVM_SET_GSI_ROUTING", cmd: 0x4008_ae6a }]
}

/// The vCPU runner: the VM and vCPU fds, one doorbell per device, guest RAM.
/// `own_pid` is its pid as it sees it (1: it is its pid namespace's init).
pub fn vcpu_runner(f: &RunnerFds, own_pid: u32) -> Manifest {
    let (kvm, vm, vcpus, doorbells) = (f.kvm, f.vm, &f.vcpus, &f.doorbells);
    let mut fds = base_fds();
    fds.push(FdGrant::new(kvm, "/dev/kvm", &[]));
    if f.pci {
        let mut g = FdGrant::new(vm, "KVM VM", &[Ioctl]);
        g.ioctls = vm_ioctls();
        if !f.memory_bars.is_empty() {
            // A framebuffer's memory slot follows its BAR when the guest moves it.
            g.ioctls.push(Ioctl { name: "KVM_SET_USER_MEMORY_REGION", cmd: 0x4020_ae46 });
        }
        fds.push(g);
    } else {
        fds.push(FdGrant::new(vm, "KVM VM", &[]));
    }
    for (i, &fd) in vcpus.iter().enumerate() {
        let mut g = FdGrant::new(fd, format!("KVM vCPU {i}"), &[Ioctl]);
        g.ioctls = vcpu_ioctls();
        fds.push(g);
    }
    for (fd, dev) in doorbells {
        fds.push(FdGrant::new(*fd, format!("{dev} exit-ring doorbell (eventfd)"), &[Write]));
    }
    fds.push(FdGrant::new(f.ram, "guest RAM (sealed memfd, mapped)", &[]));
    fds.push(FdGrant::new(f.control_dup, "control socket (vCPU threads' copy)", &[Write]));
    for &fd in &f.irqfds {
        fds.push(FdGrant::new(fd, "irqfd (registered with KVM)", &[]));
    }
    for &fd in &f.notify {
        fds.push(FdGrant::new(fd, "queue notify (ioeventfd, moves with its BAR)", &[]));
    }

    let mut syscalls = common();
    let r = |name, args, why| SyscallRule { name, args, why };
    syscalls.extend([
        r("ioctl", Args::IoctlList, "run vCPUs and read their state"),
        r("clone", Args::ThreadsOnly, "one thread per vCPU"),
        r(
            "rt_sigaction",
            Args::ArgsIn(vec![(0, vec![32, 33])]),
            "glibc sets up its internal thread signals at the first thread",
        ),
        r("rseq", Args::Any, "glibc registers each new thread"),
        r("sched_getaffinity", Args::Any, "Rust's thread start-up reads its own stack bounds through glibc"),
        r("set_robust_list", Args::Any, "glibc registers each new thread"),
        r("prctl", Args::ArgsIn(vec![(0, vec![libc::PR_SET_NAME as u64])]), "name vCPU threads"),
        r("tgkill", Args::ArgsIn(vec![(0, vec![own_pid as u64])]), "kick its own vCPU threads out of KVM_RUN"),
    ]);
    let rlimits = rlimits(&fds);
    let mut mappings: Vec<String> = f
        .memory_bars
        .iter()
        .map(|d| format!("{d}'s framebuffer memory (read-write, shared; the guest's BAR)"))
        .collect();
    if f.flash {
        mappings.push("the firmware variable store VARFILE (read-write, shared)".into());
    }
    if f.native_pages {
        mappings.push(
            "per vCPU, a code page written through one mapping and run through another (read-execute; \
             a memfd mapped twice, fd closed): refused guest SIMD instructions run there, one at a time"
                .into(),
        );
    }
    Manifest { role: "vcpu-runner".into(), fds, syscalls, rlimits, mappings, confinement: Confinement::Child }
}

/// Where a UART's bytes go, as fds.
pub enum UartBackendFds {
    Stdio {
        input: i32,
        output: i32,
    },
    /// The tty, opened once, and its duplicate for output.
    Tty {
        input: i32,
        output: i32,
    },
    /// The listening socket; the accepted client takes the next free fd.
    Socket {
        listener: i32,
    },
}

/// A UART server: its doorbell, its interrupt eventfd, its backend.
pub fn uart(name: &str, doorbell: i32, irq: i32, backend: &UartBackendFds) -> Manifest {
    let mut fds = base_fds();
    fds.push(FdGrant::new(doorbell, "exit-ring doorbell (eventfd)", &[Read, Event]));
    fds.push(FdGrant::new(irq, format!("{name} interrupt (irqfd)"), &[Write]));
    match *backend {
        UartBackendFds::Stdio { input, output } => {
            fds.push(FdGrant::new(input, format!("{name} input (stdin)"), &[Read, Event]));
            fds.push(FdGrant::new(output, format!("{name} output (stdout)"), &[Write]));
        }
        UartBackendFds::Tty { input, output } => {
            fds.push(FdGrant::new(input, format!("{name} tty (input)"), &[Read, Event]));
            fds.push(FdGrant::new(output, format!("{name} tty (output)"), &[Write]));
        }
        UartBackendFds::Socket { listener } => {
            fds.push(FdGrant::new(listener, format!("{name} listening socket"), &[Accept, Event]));
            let client = first_free(&fds);
            let mut g = FdGrant::new(client, format!("{name} socket client (when connected)"), &[Read, Write, Event]);
            g.reserved = true;
            fds.push(g);
        }
    }
    let mut syscalls = common();
    if matches!(backend, UartBackendFds::Socket { .. }) {
        syscalls.push(SyscallRule {
            name: "accept4",
            args: Args::FdWith(&[Accept]),
            why: "take the next socket client",
        });
    }
    let rlimits = rlimits(&fds);
    Manifest {
        role: format!("uart ({name})"),
        fds,
        syscalls,
        rlimits,
        mappings: vec![],
        confinement: Confinement::Child,
    }
}

/// The fds every PCI device server (virtio, AHCI) holds besides its backend's.
pub struct PciDeviceFds {
    pub doorbell: i32,
    /// None for a server without DMA (the display's registers).
    pub ram: Option<i32>,
    /// One per queue: KVM signals it when the guest writes the queue's
    /// notify register.
    pub notify: Vec<i32>,
    /// One per MSI-X vector (or one for MSI): bound to its GSI by the runner.
    pub interrupts: Vec<i32>,
    /// INTx#: the trigger (written to assert the line) and the resample
    /// eventfd (KVM signals it at the guest's EOI), if the function has one.
    pub intx: Option<(i32, i32)>,
}

/// A PCI device server: its exit-ring doorbell, guest RAM (where the
/// virtqueues or command lists live), the queue-notify and interrupt
/// eventfds, and the backend `backend` lists (disks, a tap) with the
/// syscalls its data path needs.
pub fn pci_device(name: &str, f: &PciDeviceFds, backend: Vec<FdGrant>, backend_syscalls: Vec<SyscallRule>) -> Manifest {
    let mut fds = base_fds();
    fds.push(FdGrant::new(f.doorbell, "exit-ring doorbell (eventfd)", &[Read, Event]));
    if let Some(ram) = f.ram {
        fds.push(FdGrant::new(ram, "guest RAM (sealed memfd, mapped)", &[Mmap]));
    }
    for (q, &fd) in f.notify.iter().enumerate() {
        fds.push(FdGrant::new(fd, format!("queue {q} notify (ioeventfd)"), &[Read, Event]));
    }
    for (v, &fd) in f.interrupts.iter().enumerate() {
        fds.push(FdGrant::new(fd, format!("MSI/MSI-X vector {v} (irqfd)"), &[Write]));
    }
    if let Some((trigger, resample)) = f.intx {
        fds.push(FdGrant::new(trigger, "INTx# (irqfd, level)", &[Write]));
        fds.push(FdGrant::new(resample, "INTx# resample (eventfd, signalled at EOI)", &[Read, Event]));
    }
    fds.extend(backend);
    let mut syscalls = common();
    syscalls.extend(backend_syscalls);
    let rlimits = rlimits(&fds);
    Manifest { role: name.to_string(), fds, syscalls, rlimits, mappings: vec![], confinement: Confinement::Child }
}

/// A virtio-blk server's disk, with the rights its mode needs: preadv needs
/// CAP_READ|CAP_SEEK, pwritev CAP_WRITE|CAP_SEEK; a read-only disk gets no
/// CAP_WRITE, and no syscall that writes, at all.
pub fn virtio_blk_backend(disk: i32, read_only: bool) -> (Vec<FdGrant>, Vec<SyscallRule>) {
    let r = |name, args, why| SyscallRule { name, args, why };
    let mut syscalls = vec![r("preadv", Args::FdWith(&[Read, Seek]), "read sectors into guest buffers")];
    if read_only {
        return (vec![FdGrant::new(disk, "disk (opened read-only)", &[Read, Seek])], syscalls);
    }
    syscalls.extend([
        r("pwritev", Args::FdWith(&[Write, Seek]), "write sectors from guest buffers"),
        r("fdatasync", Args::FdWith(&[Fsync]), "FLUSH"),
        r("fallocate", Args::FdWith(&[Write]), "DISCARD and WRITE_ZEROES"),
    ]);
    (vec![FdGrant::new(disk, "disk", &[Read, Write, Seek, Fsync])], syscalls)
}

/// Several disks in one server (an AHCI controller's ports): each with
/// its own rights, the syscalls once.
pub fn disks_backend(disks: &[(i32, bool)]) -> (Vec<FdGrant>, Vec<SyscallRule>) {
    let mut grants = Vec::new();
    let mut syscalls: Vec<SyscallRule> = Vec::new();
    for &(fd, read_only) in disks {
        let (g, s) = virtio_blk_backend(fd, read_only);
        grants.extend(g);
        for rule in s {
            if !syscalls.iter().any(|r| r.name == rule.name) {
                syscalls.push(rule);
            }
        }
    }
    (grants, syscalls)
}

/// A virtio-net server's tap: read and write frames, poll for them. No
/// ioctl: it cannot re-attach the tap, change its offloads or its name.
pub fn virtio_net_backend(tap: i32) -> (Vec<FdGrant>, Vec<SyscallRule>) {
    let syscalls = vec![SyscallRule {
        name: "writev",
        args: Args::FdWith(&[Write]),
        why: "send a frame: a header, then the payload from guest RAM",
    }];
    (vec![FdGrant::new(tap, "tap", &[Read, Write, Event])], syscalls)
}

/// The i8042 server (PS/2 keyboard and mouse): its exit ring's doorbell,
/// IRQ 1's and IRQ 12's eventfds, the read end of the display's input
/// socket; no guest RAM, nothing of the host.
pub fn ps2(doorbell: i32, keyboard_irq: i32, mouse_irq: i32, input: i32) -> Manifest {
    let mut fds = base_fds();
    fds.push(FdGrant::new(doorbell, "exit-ring doorbell (eventfd)", &[Read, Event]));
    fds.push(FdGrant::new(keyboard_irq, "keyboard interrupt, IRQ 1 (irqfd)", &[Write]));
    fds.push(FdGrant::new(mouse_irq, "mouse interrupt, IRQ 12 (irqfd)", &[Write]));
    fds.push(FdGrant::new(input, "viewers' keys and motion (from the VNC server)", &[Read, Event]));
    let syscalls = common();
    let rlimits = rlimits(&fds);
    Manifest { role: "i8042".into(), fds, syscalls, rlimits, mappings: vec![], confinement: Confinement::Child }
}

/// How many viewers a VNC server serves at once (its reserved fds, and so
/// its RLIMIT_NOFILE, bound it).
pub const VNC_MAX_CLIENTS: usize = 8;

/// A display's VNC server, the one process that parses bytes from the
/// network: its listening socket, the viewers it accepts, the write end of
/// the i8042 server's input socket, the framebuffer and the display state
/// page mapped read-only (their fds closed), and no other fd: no guest
/// RAM, no exit ring, nothing of the host.
pub fn vnc(name: &str, listener: i32, input: i32) -> Manifest {
    let mut fds = base_fds();
    fds.push(FdGrant::new(listener, "VNC listening socket", &[Accept, Event]));
    fds.push(FdGrant::new(input, "keys and motion to the i8042 server", &[Write]));
    for i in 0..VNC_MAX_CLIENTS {
        let mut g = FdGrant::new(first_free(&fds), format!("viewer {i} (when connected)"), &[Read, Write, Event]);
        g.reserved = true;
        fds.push(g);
    }
    let mut syscalls = common();
    syscalls.push(SyscallRule { name: "accept4", args: Args::FdWith(&[Accept]), why: "take the next viewer" });
    let rlimits = rlimits(&fds);
    let mappings =
        vec![format!("{name}'s framebuffer (read-only)"), format!("{name}'s display state page (read-only)")];
    Manifest { role: format!("vnc ({name})"), fds, syscalls, rlimits, mappings, confinement: Confinement::Child }
}

/// What the broker holds once it has started its children. An fd number
/// below zero is one not known before the VM runs (`--print-policy`).
pub struct BrokerFds {
    pub signalfd: i32,
    /// The control socket capvmctl connects to.
    pub control: i32,
    /// (fd, role) of each child's channel.
    pub channels: Vec<(i32, String)>,
    /// (fd, role) of each child's stats page, mapped read-only to answer
    /// capvmctl --get-stats.
    pub stats: Vec<(i32, String)>,
    /// Its children's pids: the only processes it may signal.
    pub children: Vec<u32>,
    /// What Landlock leaves it of the filesystem.
    pub paths: Vec<(BrokerPath, String)>,
}

/// The ioctls the broker keeps, on whichever fd: the seccomp listeners'
/// (read a child's forbidden call, answer it), a socket's non-blocking
/// flag, and the terminal modes it restores on exit.
pub fn broker_ioctls() -> Vec<Ioctl> {
    vec![
        Ioctl { name: "SECCOMP_IOCTL_NOTIF_RECV", cmd: libc::SECCOMP_IOCTL_NOTIF_RECV },
        Ioctl { name: "SECCOMP_IOCTL_NOTIF_SEND", cmd: libc::SECCOMP_IOCTL_NOTIF_SEND },
        Ioctl { name: "FIONBIO", cmd: libc::FIONBIO },
        Ioctl { name: "TCGETS", cmd: libc::TCGETS },
        Ioctl { name: "TCSETS", cmd: libc::TCSETS },
    ]
}

/// The broker once its children run: it supervises (their channels and
/// seccomp listeners, its signalfd, the control socket) and does nothing
/// else: no process, file, socket or mapping of code is made any more.
pub fn broker(b: &BrokerFds) -> Manifest {
    let mut fds = vec![
        FdGrant::new(2, "stderr (diagnostics)", &[Write]),
        FdGrant::new(b.signalfd, "signalfd (SIGCHLD, SIGTERM, SIGINT, SIGHUP)", &[Read, Event]),
        FdGrant::new(b.control, "control socket (capvmctl)", &[Accept, Event]),
    ];
    for (fd, role) in &b.channels {
        fds.push(FdGrant::new(*fd, format!("{role}'s channel"), &[Read, Write, Event]));
    }
    for (fd, role) in &b.stats {
        fds.push(FdGrant::new(*fd, format!("{role}'s stats page"), &[Mmap]));
    }
    let mut later = |what: &str, rights: &[Right]| {
        let mut g = FdGrant::new(-1, what, rights);
        g.reserved = true;
        fds.push(g);
    };
    later("each child's seccomp listener (with its report)", &[Ioctl, Event]);
    later("capvmctl clients (when connected)", &[Read, Write, Event]);
    let r = |name, args, why| SyscallRule { name, args, why };
    let pids = b.children.iter().map(|&p| u64::from(p)).collect();
    let syscalls = vec![
        r("read", Args::Any, "children's messages, signals, capvmctl requests"),
        r("recvmsg", Args::Any, "children's messages, with a seccomp listener"),
        r("recvfrom", Args::Any, "capvmctl requests (std's socket read)"),
        r("write", Args::Any, "stderr, capvmctl answers"),
        r("writev", Args::Any, "stderr"),
        r("sendmsg", Args::Any, "messages to children; a display's fds to capvmctl --screenshot"),
        r("sendto", Args::Any, "capvmctl answers"),
        r("poll", Args::Any, "wait for children, signals and clients"),
        r("ppoll", Args::Any, "wait for children, signals and clients"),
        r("accept4", Args::FdWith(&[Accept]), "take a capvmctl client"),
        r("close", Args::Any, "drop a client or a listener"),
        r(
            "ioctl",
            Args::ArgsIn(vec![(1, broker_ioctls().iter().map(|i| i.cmd).collect())]),
            "seccomp listeners (NOTIF_RECV, NOTIF_SEND), FIONBIO, TCGETS/TCSETS",
        ),
        r(
            "fcntl",
            Args::ArgsIn(vec![(
                1,
                [libc::F_GETFD, libc::F_SETFD, libc::F_GETFL, libc::F_SETFL].map(|c| c as u64).to_vec(),
            )]),
            "fd flags (no locks, no duplicates)",
        ),
        r(
            "setsockopt",
            Args::ArgsIn(vec![(1, vec![libc::SOL_SOCKET as u64]), (2, vec![libc::SO_SNDTIMEO as u64])]),
            "a send timeout for capvmctl answers",
        ),
        r("kill", Args::ArgsIn(vec![(0, pids), (1, vec![libc::SIGKILL as u64])]), "SIGKILL its children, no one else"),
        r("wait4", Args::Any, "reap its children"),
        r("openat", Args::Any, "append to the audit log (Landlock allows nothing else)"),
        r("newfstatat", Args::Any, "does the audit log's directory exist"),
        r("statx", Args::Any, "does the audit log's directory exist"),
        r("fstat", Args::Any, "file sizes (std)"),
        r("unlink", Args::Any, "remove its control and COM sockets (Landlock: only there)"),
        r("mmap", Args::NoExec, "heap, and the children's stats pages read; never executable"),
        r("mprotect", Args::NoExec, "guard pages; never executable"),
        r("munmap", Args::Any, "free memory"),
        r("mremap", Args::Any, "realloc"),
        r("madvise", Args::Any, "return freed memory"),
        r("brk", Args::Any, "heap"),
        r("futex", Args::Any, "std's locks (stderr)"),
        r("rt_sigreturn", Args::Any, "return from a signal handler"),
        r("rt_sigprocmask", Args::Any, "signals stay blocked (the signalfd takes them)"),
        r("restart_syscall", Args::Any, "the kernel restarts an interrupted poll"),
        r("nanosleep", Args::Any, "waiting for children to exit"),
        r("clock_nanosleep", Args::Any, "waiting for children to exit"),
        r("clock_gettime", Args::Any, "time (when the vDSO is not used)"),
        r("getrandom", Args::Any, "hash map seeds"),
        r("getpid", Args::Any, "capvmctl status"),
        r("sigaltstack", Args::Any, "std's exit path frees the main thread's signal stack"),
        r("exit_group", Args::Any, "the VM's exit status"),
    ];
    Manifest {
        role: "broker".into(),
        fds,
        syscalls,
        rlimits: Vec::new(),
        mappings: vec!["each child's stats page (read-only, while answering --get-stats)".into()],
        confinement: Confinement::Broker { paths: b.paths.clone() },
    }
}

/// The lowest fd number not in `fds`: where the kernel puts the next new fd.
fn first_free(fds: &[FdGrant]) -> i32 {
    (0..).find(|n| !fds.iter().any(|f| f.fd == *n)).expect("a free fd number")
}

/// A runner's fds for tests: kvm 4, VM 5, vCPUs 6 and 7, doorbell 8, RAM 9, control copy 10, irqfd 11.
#[cfg(test)]
pub fn test_runner_fds() -> RunnerFds {
    RunnerFds {
        kvm: 4,
        vm: 5,
        vcpus: vec![6, 7],
        doorbells: vec![(8, "com1".into())],
        ram: 9,
        control_dup: 10,
        irqfds: vec![11],
        notify: vec![],
        pci: false,
        flash: false,
        memory_bars: vec![],
        native_pages: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uart_socket_manifest_reserves_the_client_fd() {
        let m = uart("com1", 4, 5, &UartBackendFds::Socket { listener: 6 });
        // 0 and 1 are closed in the child, so the client lands on 0.
        let client = m.fds.iter().find(|f| f.what.contains("client")).unwrap();
        assert_eq!(client.fd, 0);
        assert!(m.syscalls.iter().any(|s| s.name == "accept4"));
    }

    #[test]
    fn runner_manifest_lists_vcpu_ioctls_and_no_write_on_kvm() {
        let m = vcpu_runner(&test_runner_fds(), 1);
        let vcpu = m.fds.iter().find(|f| f.fd == 7).unwrap();
        assert!(vcpu.ioctls.iter().any(|i| i.name == "KVM_RUN"));
        assert!(!m.fds.iter().find(|f| f.fd == 4).unwrap().has(Write));
        assert_eq!(m.rlimits[0], ("RLIMIT_NOFILE", 12));
    }

    #[test]
    fn every_syscall_name_is_a_real_x86_64_syscall() {
        let m = vcpu_runner(&test_runner_fds(), 1);
        let u = uart("com1", 4, 5, &UartBackendFds::Socket { listener: 6 });
        for s in m.syscalls.iter().chain(&u.syscalls) {
            assert!(s.name.parse::<syscalls::Sysno>().is_ok(), "{}", s.name);
        }
    }
}
