//! Starting child processes: clone into a new pid namespace and exec a fresh
//! binary (its own ASLR layout, nothing of the broker's memory), as the
//! unprivileged user nobody, with only stdin/stdout on /dev/null, stderr,
//! and its control socket at fd 3. The child confines itself further
//! (capvm_policy::enforce) before it reads any guest-controlled byte.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use capvm_ipc::{Channel, CHILD_CONTROL_FD};
use capvm_policy::enforce::NOBODY;
use nix::unistd::Pid;

/// A child that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot find {0} (set CAPVM_LIBEXEC_DIR or install it beside capvm)")]
    NotFound(PathBuf),
    #[error("cannot create a control socket: {0}")]
    ControlSocket(#[source] capvm_ipc::ChannelError),
    #[error("cannot open {what}: {source}")]
    Open { what: String, source: std::io::Error },
    #[error("pipe: {0}")]
    Pipe(#[source] nix::Error),
    #[error(
        "cannot start the {role} in a new pid namespace: {source} (as a user, capvm needs unprivileged user \
         namespaces: sysctl kernel.unprivileged_userns_clone=1)"
    )]
    NotRoot { role: String, source: std::io::Error },
    #[error("cannot map the {role}'s user namespace ({what}): {source}")]
    IdMap { role: String, what: &'static str, source: std::io::Error },
    #[error("cannot start the {role}: clone: {source}")]
    Clone { role: String, source: std::io::Error },
    #[error("cannot start {path}: {source}")]
    Exec { path: PathBuf, source: std::io::Error },
}

/// A running child of the broker.
pub struct Child {
    /// "vcpu-runner", "uart server (com1)", ...
    pub role: String,
    pub pid: Pid,
    pub channel: Channel,
    /// Still to be reaped.
    pub alive: bool,
    /// Its control socket has not hung up.
    pub connected: bool,
    /// What it reported on entering its sandbox.
    pub sandbox: Option<capvm_ipc::SandboxReport>,
    /// Forbidden syscalls it attempted, as audited.
    pub violations: Vec<crate::audit::AuditRecord>,
    /// Its stats page (capvmctl --get-stats), if it keeps one.
    pub stats: Option<OwnedFd>,
    /// It said Ready: no sandbox report is believed after that.
    pub ready: bool,
    /// Forbidden calls beyond what the audit log keeps of one child
    /// (`supervisor::MAX_VIOLATION_RECORDS`), counted.
    pub violations_dropped: u64,
    /// Its seccomp filter's user-notification listener, sent with its
    /// sandbox report: how the kernel tells us of its forbidden calls.
    pub listener: Option<OwnedFd>,
}

impl Child {
    /// Only the vCPU runner sees the guest reset, power off or fault.
    pub fn may_send_events(&self) -> bool {
        self.role == "vcpu-runner"
    }
}

/// Where the child binaries live: `$CAPVM_LIBEXEC_DIR`, else beside `capvm`.
pub fn libexec_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAPVM_LIBEXEC_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_else(|| PathBuf::from("."))
}

fn cstr(b: &[u8]) -> CString {
    CString::new(b).expect("no NUL in paths")
}

pub fn spawn(binary: &str, role: String) -> Result<Child, SpawnError> {
    let exe = libexec_dir().join(binary);
    if !exe.exists() {
        return Err(SpawnError::NotFound(exe));
    }
    let (ours, theirs) = Channel::pair().map_err(SpawnError::ControlSocket)?;
    let theirs = OwnedFd::from(theirs);
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|source| SpawnError::Open { what: "/dev/null".into(), source })?;
    // A close-on-exec pipe: EOF means exec worked, 4 bytes are its errno.
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;
    // Run as a user, the child waits on this pipe until the broker has
    // written its user namespace's id maps.
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;

    // Opened as the broker: the child execs the fd, so it needs no search
    // permission on the directories above (a checkout under /root, say).
    let exe_file =
        std::fs::File::open(&exe).map_err(|source| SpawnError::Open { what: exe.display().to_string(), source })?;
    // Everything the child needs is prepared before clone: after it, only
    // async-signal-safe calls.
    let argv0 = cstr(binary.as_bytes());
    let argv = [argv0.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    let (sock, null, errw, exe_fd) = (theirs.as_raw_fd(), devnull.as_raw_fd(), err_w.as_raw_fd(), exe_file.as_raw_fd());
    // SAFETY: geteuid and getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let as_root = uid == 0;
    // Root starts the child in a new pid namespace and drops it to nobody;
    // a user cannot make a pid namespace alone, but can with a user
    // namespace of the child's own, which then owns it.
    let flags = libc::CLONE_NEWPID | if as_root { 0 } else { libc::CLONE_NEWUSER };
    let go = if as_root { (-1, -1) } else { (go_r.as_raw_fd(), go_w.as_raw_fd()) };

    // SAFETY: clone without CLONE_VM behaves like fork; the child only makes
    // raw syscalls on memory prepared above, then execs or _exits.
    let pid = unsafe { libc::syscall(libc::SYS_clone, (flags | libc::SIGCHLD) as libc::c_ulong, 0, 0, 0, 0) };
    if pid == 0 {
        // SAFETY: see above; we are the child.
        unsafe { child_exec(sock, null, errw, exe_fd, go, as_root, &argv, &envp) };
    }
    if pid < 0 {
        let source = std::io::Error::last_os_error();
        return Err(if source.raw_os_error() == Some(libc::EPERM) {
            SpawnError::NotRoot { role, source }
        } else {
            SpawnError::Clone { role, source }
        });
    }
    drop(theirs);
    drop(err_w);
    drop(go_r);
    if !as_root {
        // The child's ids are the user's own, inside as outside.
        let map = |what: &'static str, data: String| {
            std::fs::write(format!("/proc/{pid}/{what}"), data).map_err(|source| SpawnError::IdMap {
                role: role.clone(),
                what,
                source,
            })
        };
        let mapped = map("setgroups", "deny".into())
            .and_then(|()| map("uid_map", format!("{uid} {uid} 1")))
            .and_then(|()| map("gid_map", format!("{gid} {gid} 1")));
        if let Err(e) = mapped {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
            return Err(e);
        }
    }
    // Closing it lets the child go on.
    drop(go_w);
    let mut buf = [0u8; 4];
    if let Ok(4) = nix::unistd::read(&err_r, &mut buf) {
        let errno = i32::from_ne_bytes(buf);
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
        return Err(SpawnError::Exec { path: exe, source: std::io::Error::from_raw_os_error(errno) });
    }
    Ok(Child {
        role,
        pid: Pid::from_raw(pid as i32),
        channel: ours,
        alive: true,
        connected: true,
        sandbox: None,
        violations: Vec::new(),
        stats: None,
        ready: false,
        violations_dropped: 0,
        listener: None,
    })
}

/// The child's side of spawn: never returns.
///
/// # Safety
/// Only to be called in a freshly cloned child of a single-threaded parent.
#[allow(clippy::too_many_arguments, reason = "raw fds prepared before clone, nothing allocated after")]
unsafe fn child_exec(
    sock: i32,
    null: i32,
    errw: i32,
    exe_fd: i32,
    go: (i32, i32),
    as_root: bool,
    argv: &[*const libc::c_char; 2],
    envp: &[*const libc::c_char; 1],
) -> ! {
    // SAFETY: the caller guarantees a fresh child of a single-threaded
    // parent: only raw syscalls on memory the parent prepared, then exec.
    unsafe {
        let fail = |errw: i32| -> ! {
            let errno = *libc::__errno_location();
            libc::write(errw, (&errno as *const i32).cast(), 4);
            libc::_exit(127);
        };
        if go.0 >= 0 {
            // Wait for the broker's id maps: EOF once it closes its end
            // (this copy of the write end first).
            libc::close(go.1);
            let mut b = 0u8;
            while libc::read(go.0, (&mut b as *mut u8).cast(), 1) < 0 && *libc::__errno_location() == libc::EINTR {}
        }
        if libc::dup2(null, 0) < 0 || libc::dup2(null, 1) < 0 {
            fail(errw);
        }
        if sock == CHILD_CONTROL_FD {
            // dup2 onto itself would keep close-on-exec set.
            if libc::fcntl(sock, libc::F_SETFD, 0) < 0 {
                fail(errw);
            }
        } else if libc::dup2(sock, CHILD_CONTROL_FD) < 0 {
            fail(errw);
        }
        // Nothing else the broker holds leaks into the child (errw and exe_fd
        // are close-on-exec; they must stay open until the exec).
        let (lo, hi) = (errw.min(exe_fd), errw.max(exe_fd));
        for (from, to) in [(CHILD_CONTROL_FD + 1, lo - 1), (lo + 1, hi - 1), (hi + 1, i32::MAX)] {
            if from <= to {
                libc::syscall(libc::SYS_close_range, from as u32, to as u32, 0);
            }
        }
        if as_root {
            // Children run as nobody: no file, process or key of root's is theirs.
            if libc::setgroups(0, std::ptr::null()) < 0
                || libc::setresgid(NOBODY, NOBODY, NOBODY) < 0
                || libc::setresuid(NOBODY, NOBODY, NOBODY) < 0
            {
                fail(errw);
            }
        }
        // After the uid change, which clears it: die with the broker.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::syscall(libc::SYS_execveat, exe_fd, c"".as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH);
        fail(errw)
    }
}
