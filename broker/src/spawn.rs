//! Starting child processes: fork and exec a fresh binary (its own ASLR
//! layout), with only stdio and its control socket at fd 3.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use capvm_ipc::{Channel, CHILD_CONTROL_FD};
use nix::unistd::Pid;

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
}

/// Where the child binaries live: `$CAPVM_LIBEXEC_DIR`, else beside `capvm`.
pub fn libexec_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAPVM_LIBEXEC_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn spawn(binary: &str, role: String) -> Result<Child, String> {
    let exe = libexec_dir().join(binary);
    if !exe.exists() {
        return Err(format!(
            "cannot find {} (set CAPVM_LIBEXEC_DIR or install it beside capvm)",
            exe.display()
        ));
    }
    let (ours, theirs) = Channel::pair().map_err(|e| format!("cannot create a control socket: {e}"))?;
    let theirs = OwnedFd::from(theirs);
    let theirs_raw = theirs.as_raw_fd();
    let parent = std::process::id() as libc::pid_t;
    let mut cmd = Command::new(&exe);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit()).env_clear();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if theirs_raw == CHILD_CONTROL_FD {
                // dup2 onto itself would keep close-on-exec set.
                if libc::fcntl(theirs_raw, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_raw, CHILD_CONTROL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Nothing else the broker holds may leak into the child.
            libc::syscall(libc::SYS_close_range, CHILD_CONTROL_FD + 1, u32::MAX, 0);
            // Die with the broker, whatever kills it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(4);
            }
            // The terminal's signals are the broker's to handle.
            libc::setpgid(0, 0);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    drop(theirs);
    Ok(Child { role, pid: Pid::from_raw(child.id() as i32), channel: ours, alive: true, connected: true })
}
