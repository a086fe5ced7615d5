//! The test hook behind `-o sandbox.test_violation=ROLE:OP`: a sandboxed
//! child attempts one forbidden operation, so tests (and operators) can see
//! that it is denied and audited. It runs in the child after `enforce::enter`.

/// The operations, as named on the command line.
pub const OPS: [&str; 8] = ["open", "socket", "connect", "execve", "ptrace", "kill", "mmap-exec", "pwrite"];
/// Plus "ioctl", which needs an fd with or without CAP_IOCTL: see `attempt`.
pub const IOCTL_OP: &str = "ioctl";
/// Lies a compromised child could tell the broker on its control channel,
/// which the broker must not believe: a lifecycle event from a device
/// server (a forged "reboot"), a second sandbox report, a "viewer
/// connected" (fbuf's `wait`) from anyone but the VNC server, a late
/// device server from anyone but the runner; bytes that are no message.
pub const LIES: [&str; 5] = ["forge-event", "resend-report", "viewer-connected", "report-late", "garbage"];
/// Ways a compromised child could try to escape its own audit, each ending
/// in the forbidden `socket(AF_INET, SOCK_STREAM, 0)`: ignore SIGSYS (the
/// old reporting path), close its control channel first, or make so many
/// forbidden calls that the audit log would fill the disk. The kernel
/// reports every one to the broker regardless.
pub const EVASIONS: [&str; 3] = ["ignore-sigsys", "close-channel", "flood-violations"];
/// How many forbidden calls "flood-violations" makes.
pub const FLOOD: usize = 1000;

/// Tells the broker lie `op` on the control channel (fd 3).
fn lie(op: &str) {
    use capvm_ipc::{SandboxReport, ToBroker, VmEvent};
    // SAFETY: fd 3 is the child's control socket for its whole life; the
    // ManuallyDrop keeps this second handle from closing it.
    let channel = std::mem::ManuallyDrop::new(unsafe { capvm_ipc::Channel::from_raw_fd(capvm_ipc::CHILD_CONTROL_FD) });
    let report = || SandboxReport {
        role: "lie".into(),
        allowed_syscalls: 0,
        namespaces: Vec::new(),
        landlock: "none".into(),
        fds: Vec::new(),
        enter_us: 0,
    };
    match op {
        "forge-event" => drop(channel.send(&ToBroker::Event(VmEvent::Reboot), &[])),
        "resend-report" => drop(channel.send(&ToBroker::Sandboxed(report()), &[])),
        "viewer-connected" => drop(channel.send(&ToBroker::ViewerConnected, &[])),
        "garbage" => {
            // write(2), which the filter allows on the control socket (send
            // would be sendto, which it does not).
            // SAFETY: a plain write of a local buffer to the control socket.
            unsafe { libc::write(capvm_ipc::CHILD_CONTROL_FD, b"\xff\xfe not a message".as_ptr().cast(), 18) };
        }
        "report-late" => {
            drop(channel.send(&ToBroker::Late { device: "virtio-blk".into(), vcpu: 0, waited_ms: 1 }, &[]))
        }
        _ => {}
    }
}

/// Tries evasion `op` (EVASIONS), then the forbidden socket call.
fn evade(op: &str) {
    // SAFETY: plain syscalls; closing fd 3 loses this child its channel,
    // which is the point (the broker must still hear of what follows).
    unsafe {
        match op {
            "ignore-sigsys" => drop(libc::signal(libc::SIGSYS, libc::SIG_IGN)),
            "close-channel" => drop(libc::close(capvm_ipc::CHILD_CONTROL_FD)),
            _ => {}
        }
        let tries = if op == "flood-violations" { FLOOD } else { 1 };
        for _ in 0..tries {
            libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        }
    }
}

/// Attempts `op`; returns what the syscall returned (in log mode: -1 with
/// EPERM). `ro_fd` is an fd without CAP_WRITE, `ioctl_fd` one whose allowed
/// ioctls do not include the one tried.
pub fn attempt(op: &str, ro_fd: i32, ioctl_fd: i32, broker_pid: u32) -> Option<i64> {
    // SAFETY: each call is a plain syscall with valid pointers; its effect,
    // were it allowed, is exactly what the test wants to see refused.
    let rc = unsafe {
        match op {
            "open" => libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY) as i64,
            "socket" => libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64,
            "connect" => {
                // socket() itself is refused first; connect on the control
                // socket is refused as well.
                let addr = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: 9u16.to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be() },
                    sin_zero: [0; 8],
                };
                libc::connect(3, (&addr as *const libc::sockaddr_in).cast(), size_of_val(&addr) as u32) as i64
            }
            "execve" => {
                let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr()) as i64
            }
            "ptrace" => libc::ptrace(libc::PTRACE_ATTACH, broker_pid as libc::pid_t, 0, 0),
            "kill" => libc::kill(broker_pid as libc::pid_t, libc::SIGKILL) as i64,
            "mmap-exec" => {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if p == libc::MAP_FAILED {
                    -1
                } else {
                    p as i64
                }
            }
            "pwrite" => {
                // pwritev: the write the disk servers are given.
                let iov = libc::iovec { iov_base: c"x".as_ptr() as *mut libc::c_void, iov_len: 1 };
                libc::pwritev(ro_fd, &iov, 1, 0) as i64
            }
            // TIOCSTI would push input into a terminal; KVM_CREATE_VM a new VM.
            "ioctl" => libc::ioctl(ioctl_fd, libc::TIOCSTI, c"x".as_ptr()) as i64,
            _ => return None,
        }
    };
    Some(rc)
}

/// Runs the hook if the broker sent this child one.
pub fn run_hook(cfg: &capvm_ipc::SandboxConfig, ro_fd: i32, ioctl_fd: i32) {
    match cfg.test_violation.as_deref() {
        Some(op) if LIES.contains(&op) => lie(op),
        Some(op) if EVASIONS.contains(&op) => evade(op),
        Some(op) => drop(attempt(op, ro_fd, ioctl_fd, cfg.broker_pid)),
        None => {}
    }
}
