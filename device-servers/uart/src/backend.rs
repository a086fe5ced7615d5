//! The host side of a COM port: where guest output goes, where input comes from.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::rc::Rc;

use capvm_ipc::UartBackendKind;
use nix::sys::socket::{accept4, SockFlag};

/// Where the UART's transmitter writes. For a socket backend with no client
/// connected, output is dropped (as a serial line with nothing attached).
pub struct Output {
    /// Shared with the input side for a socket client (no dup: the sandbox
    /// knows the client by one fd number).
    fd: Option<Rc<OwnedFd>>,
    /// For sockets a failed write means the client left; for stdio and ttys
    /// the error is reported.
    disconnect_on_error: bool,
}

impl io::Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(fd) = &self.fd else { return Ok(buf.len()) };
        match nix::unistd::write(&**fd, buf) {
            Ok(n) => Ok(n),
            Err(_) if self.disconnect_on_error => {
                self.fd = None;
                Ok(buf.len())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The backend's input side.
pub enum Input {
    /// Reads from this fd (stdin or the tty).
    Stream(OwnedFd),
    /// A listening socket and, when one is connected, its client.
    Socket { listener: OwnedFd, client: Option<Rc<OwnedFd>> },
}

impl Input {
    /// The fd to poll for input (or for a new client).
    pub fn poll_fd(&self) -> BorrowedFd<'_> {
        match self {
            Input::Stream(fd) => fd.as_fd(),
            Input::Socket { client: Some(c), .. } => c.as_fd(),
            Input::Socket { listener, .. } => listener.as_fd(),
        }
    }
}

/// What a readable input produced.
pub enum Readable {
    Bytes(usize),
    /// A socket client connected: here is its fd for output.
    Connected(Rc<OwnedFd>),
    /// The input closed; for a socket, the client left.
    Closed,
}

impl Input {
    pub fn on_readable(&mut self, buf: &mut [u8]) -> io::Result<Readable> {
        match self {
            Input::Stream(fd) => match nix::unistd::read(&*fd, buf) {
                Ok(0) => Ok(Readable::Closed),
                Ok(n) => Ok(Readable::Bytes(n)),
                Err(nix::Error::EAGAIN | nix::Error::EINTR) => Ok(Readable::Bytes(0)),
                Err(e) => Err(e.into()),
            },
            Input::Socket { listener, client: c @ None } => {
                let raw = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
                // SAFETY: accept4 just returned this fd and nothing else owns it.
                let fd = Rc::new(unsafe { OwnedFd::from_raw_fd(raw) });
                *c = Some(fd.clone());
                Ok(Readable::Connected(fd))
            }
            Input::Socket { client: Some(c), .. } => match nix::unistd::read(&**c, buf) {
                Ok(0) | Err(_) => {
                    if let Input::Socket { client, .. } = self {
                        *client = None;
                    }
                    Ok(Readable::Closed)
                }
                Ok(n) => Ok(Readable::Bytes(n)),
            },
        }
    }
}

/// Splits the backend fds the broker sent into input and output.
pub fn from_fds(kind: UartBackendKind, mut fds: Vec<OwnedFd>) -> io::Result<(Input, Output)> {
    let missing = || io::Error::new(io::ErrorKind::InvalidInput, "backend fd missing");
    match kind {
        UartBackendKind::Stdio => {
            if fds.len() != 2 {
                return Err(missing());
            }
            let out = fds.pop().ok_or_else(missing)?;
            let input = fds.pop().ok_or_else(missing)?;
            Ok((Input::Stream(input), Output { fd: Some(Rc::new(out)), disconnect_on_error: false }))
        }
        UartBackendKind::Tty => {
            let fd = fds.pop().ok_or_else(missing)?;
            let out = fd.try_clone()?;
            Ok((Input::Stream(fd), Output { fd: Some(Rc::new(out)), disconnect_on_error: false }))
        }
        UartBackendKind::Socket => {
            let listener = fds.pop().ok_or_else(missing)?;
            Ok((Input::Socket { listener, client: None }, Output { fd: None, disconnect_on_error: true }))
        }
    }
}

impl Output {
    pub fn connect(&mut self, fd: Rc<OwnedFd>) {
        self.fd = Some(fd);
    }
    pub fn disconnect(&mut self) {
        self.fd = None;
    }
}

/// The backend's fds as the sandbox manifest names them.
pub fn manifest_fds(kind: UartBackendKind, input: &Input, output: &Output) -> capvm_policy::roles::UartBackendFds {
    use capvm_policy::roles::UartBackendFds;
    let out = output.fd.as_ref().map_or(-1, |f| f.as_raw_fd());
    match input {
        Input::Stream(fd) if kind == UartBackendKind::Tty => UartBackendFds::Tty { input: fd.as_raw_fd(), output: out },
        Input::Stream(fd) => UartBackendFds::Stdio { input: fd.as_raw_fd(), output: out },
        Input::Socket { listener, .. } => UartBackendFds::Socket { listener: listener.as_raw_fd() },
    }
}
