//! The test hook behind `-o sandbox.test_violation=ROLE:OP`: a sandboxed
//! child attempts one forbidden operation, so tests (and operators) can see
//! that it is denied and audited. It runs in the child after `enforce::enter`.

/// The operations, as named on the command line.
pub const OPS: [&str; 8] = ["open", "socket", "connect", "execve", "ptrace", "kill", "mmap-exec", "pwrite"];
/// Plus "ioctl", which needs an fd with or without CAP_IOCTL: see `attempt`.
pub const IOCTL_OP: &str = "ioctl";
/// Lies a compromised child could tell the broker on its control channel,
/// which the broker must not believe: a lifecycle event from a device
/// server (a forged "reboot"), a second sandbox report, a flood of
/// violation records meant to fill the host's disk with the audit log, a
/// "viewer connected" (fbuf's `wait`) from anyone but the VNC server.
pub const LIES: [&str; 5] = ["forge-event", "resend-report", "flood-violations", "viewer-connected", "report-late"];
/// How many violation records "flood-violations" sends.
pub const FLOOD: usize = 1000;

/// Tells the broker lie `op` on the control channel (fd 3).
fn lie(op: &str) {
    use capvm_ipc::{SandboxReport, ToBroker, ViolationRecord, VmEvent};
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
        "report-late" => {
            drop(channel.send(&ToBroker::Late { device: "virtio-blk".into(), vcpu: 0, waited_ms: 1 }, &[]))
        }
        "flood-violations" => {
            let v = ViolationRecord { nr: libc::SYS_getpid as u64, args: [0; 6], ip: 0, killed: false };
            for _ in 0..FLOOD {
                if channel.send(&ToBroker::Violation(v), &[]).is_err() {
                    break;
                }
            }
        }
        _ => {}
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
            "pwrite" => libc::pwrite(ro_fd, b"x".as_ptr().cast(), 1, 0) as i64,
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
        Some(op) => drop(attempt(op, ro_fd, ioctl_fd, cfg.broker_pid)),
        None => {}
    }
}
