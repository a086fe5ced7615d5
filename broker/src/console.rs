//! The broker's terminal and socket paths: put back as they were on exit.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

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
