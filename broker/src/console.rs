//! The broker's terminal and socket paths: put back as they were on exit.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use capvm_ipc::UartBackendKind;
use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};

use crate::config::{ComBackend, ComPort};

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

/// Raw mode on a terminal a COM port uses (stdin, or a tty path), so every
/// byte reaches the guest unchanged; restored when dropped, as bhyve does.
pub struct RawTerminal {
    fd: OwnedFd,
    saved: Termios,
}

impl RawTerminal {
    /// None if `fd` is not a terminal (a pipe, a file): nothing to do.
    pub fn enter(fd: BorrowedFd) -> Option<RawTerminal> {
        let saved = tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { fd: fd.try_clone_to_owned().ok()?, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = tcsetattr(self.fd.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// A unix socket path capvm created; removed when dropped.
pub struct SocketPath(pub PathBuf);

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A COM port's backend could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("-l {com}: {what}: {source}")]
pub struct ComError {
    pub com: &'static str,
    pub what: String,
    pub source: std::io::Error,
}

/// What a COM port's backend holds open in the broker.
pub struct ComHost {
    pub kind: UartBackendKind,
    pub fds: Vec<OwnedFd>,
    socket: Option<SocketPath>,
}

impl ComHost {
    /// Lets go of the backend's fds (the uart server holds them), keeping
    /// the socket path to remove when the VM ends.
    pub fn into_socket_path(self) -> Option<SocketPath> {
        self.socket
    }

    /// Opens what `-l comN,...` names: stdio (dup'ed), a tty, or a socket to listen on.
    pub fn open(com: &ComPort) -> Result<ComHost, ComError> {
        let err = |what: &str, source: std::io::Error| ComError { com: com.name, what: what.to_string(), source };
        let nix_err = |what: &str, e: nix::Error| err(what, e.into());
        let dup = |fd: BorrowedFd| fd.try_clone_to_owned().map_err(|e| err("cannot dup stdio", e));
        match &com.backend {
            ComBackend::Stdio => Ok(ComHost {
                kind: UartBackendKind::Stdio,
                fds: vec![dup(std::io::stdin().as_fd())?, dup(std::io::stdout().as_fd())?],
                socket: None,
            }),
            ComBackend::Tty(path) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
                    .open(path)
                    .map_err(|e| err(&format!("cannot open {}", path.display()), e))?;
                Ok(ComHost { kind: UartBackendKind::Tty, fds: vec![f.into()], socket: None })
            }
            ComBackend::Socket(path) => {
                let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
                    .map_err(|e| nix_err("cannot create a socket", e))?;
                let addr = UnixAddr::new(path).map_err(|e| nix_err(&path.display().to_string(), e))?;
                bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)
                    .map_err(|e| nix_err(&format!("cannot listen on {}", path.display()), e))?;
                let guard = SocketPath(path.clone());
                listen(&fd, Backlog::MAXCONN)
                    .map_err(|e| nix_err(&format!("cannot listen on {}", path.display()), e))?;
                Ok(ComHost { kind: UartBackendKind::Socket, fds: vec![fd], socket: Some(guard) })
            }
        }
    }
}
