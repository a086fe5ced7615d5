//! capvm-vnc: a display's VNC server, in the tightest sandbox capvm has:
//! the listening socket the broker bound, the viewers it accepts (at most
//! `roles::VNC_MAX_CLIENTS`), the framebuffer and the display state page
//! mapped read-only. It cannot reach guest RAM, the exit rings or any host
//! resource; a viewer that misbehaves is closed and the others go on.
//! Started by the broker with its control socket at fd 3.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use capvm_ipc::display::{DisplayState, Vram};
use capvm_ipc::input::InputEvent;
use capvm_ipc::stats::{Counter, CountersByKind, Stats};
use capvm_ipc::{Channel, ChannelError, StartVncFds, ToBroker, ToChild, VncConfig, PROTO_VERSION};
use capvm_policy::roles::VNC_MAX_CLIENTS;
use capvm_vnc::keys;
use capvm_vnc::rfb::{Client, Closed, Input as ViewerInput};
use capvm_vnc::screen::{Refresh, Screen};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{accept4, SockFlag};

/// How often a viewer waiting for a change has the picture compared.
const REFRESH: Duration = Duration::from_millis(30);
/// The longest between comparisons of a still picture.
const STILL_REFRESH: Duration = Duration::from_secs(1);
/// A viewer that has not finished its handshake by then is closed.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// A viewer that lets this much output pile up is too slow to keep.
const MAX_BACKLOG: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
enum VncError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Fds(#[from] capvm_ipc::FdLayoutError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}: {1}")]
    Os(&'static str, #[source] nix::Error),
    #[error("entering the sandbox: {0}")]
    Sandbox(#[from] capvm_policy::enforce::SandboxError),
}

fn main() {
    capvm_ipc::child_main("capvm-vnc", run);
}

struct Counters {
    viewers: Counter,
    closed: CountersByKind,
    timed_out: Counter,
    too_slow: Counter,
    refused_full: Counter,
    updates_bytes: Counter,
    /// Updates with pixels, by encoding.
    updates: CountersByKind,
    key_events: Counter,
    unmapped_keys: Counter,
    pointer_events: Counter,
    dropped_input: Counter,
}

/// A viewer's socket, closed with a plain close(2) (std's OwnedFd checks
/// with fcntl that the fd is open before closing it in debug builds, a
/// syscall this sandbox does not allow).
struct Socket(RawFd);

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd stays open until this Socket is dropped.
        unsafe { BorrowedFd::borrow_raw(self.0) }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(self.0) };
    }
}

struct Viewer {
    fd: Socket,
    client: Client,
    since: Instant,
    /// It hung up, or its socket failed.
    gone: bool,
}

fn run(channel: &Channel) -> Result<(), VncError> {
    let (cfg, fds) = match channel.recv()? {
        (ToChild::StartVnc(cfg), fds) => (cfg, fds),
        (other, _) => return Err(VncError::Protocol(format!("expected StartVnc, got {other:?}"))),
    };
    let StartVncFds { listener, vram: vram_fd, state: state_fd, input, stats: stats_fd } = StartVncFds::unflatten(fds)?;
    // Mapped read-only, then closed: the fds are not kept.
    let vram = Vram::map_read_only(vram_fd.as_fd()).map_err(|e| VncError::Os("map the framebuffer", e))?;
    let state = DisplayState::attach_read_only(state_fd.as_fd()).map_err(|e| VncError::Os("map the state page", e))?;
    let mut stats = Stats::attach(stats_fd.as_fd()).map_err(|e| VncError::Os("stats page", e))?;
    drop((vram_fd, state_fd, stats_fd));
    let counters = Counters {
        viewers: stats.counter("viewers"),
        closed: CountersByKind::new(&mut stats, "", Closed::KINDS),
        timed_out: stats.counter("closed_handshake_timeout"),
        too_slow: stats.counter("closed_too_slow"),
        refused_full: stats.counter("refused_server_full"),
        updates_bytes: stats.counter("update_bytes"),
        updates: CountersByKind::new(&mut stats, "updates_", capvm_vnc::encode::NAMES),
        key_events: stats.counter("key_events"),
        unmapped_keys: stats.counter("unmapped_keys"),
        pointer_events: stats.counter("pointer_events"),
        dropped_input: stats.counter("dropped_input"),
    };
    let manifest = capvm_policy::roles::vnc(&cfg.name, listener.as_raw_fd(), input.as_raw_fd());
    capvm_policy::enforce::enter(&manifest, channel)?;
    capvm_policy::hostile::run_hook(&cfg.sandbox, listener.as_raw_fd(), listener.as_raw_fd());
    channel.send(&ToBroker::Ready { version: PROTO_VERSION }, &[])?;
    serve(channel, &cfg, &listener, &vram, &state, &Input::new(input), &counters)
}

/// How far the pointer moved along one axis (positions are 0-65535; a
/// viewer may jump across the whole range).
fn delta(now: u16, last: u16) -> i16 {
    (now as i32 - last as i32).clamp(i16::MIN.into(), i16::MAX.into()) as i16
}

/// Where viewers' keys and motion go: the i8042 server.
struct Input {
    socket: OwnedFd,
    /// The pointer's last position (viewers report it absolute; a PS/2
    /// mouse moves by deltas).
    last: std::cell::Cell<Option<(u16, u16)>>,
}

impl Input {
    fn new(socket: OwnedFd) -> Input {
        Input { socket, last: std::cell::Cell::new(None) }
    }

    fn send(&self, e: InputEvent, counters: &Counters) {
        // A full socket (the guest is not reading) drops the event.
        match nix::unistd::write(&self.socket, &e.encode()) {
            Ok(_) => {}
            Err(_) => counters.dropped_input.inc(),
        }
    }

    fn forward(&self, e: ViewerInput, counters: &Counters) {
        match e {
            ViewerInput::Key { down, keysym } => match keys::qnum(keysym) {
                Some(qnum) => {
                    counters.key_events.inc();
                    self.send(InputEvent::Key { qnum, down }, counters);
                }
                None => counters.unmapped_keys.inc(),
            },
            ViewerInput::ExtendedKey { down, keysym, keycode } => {
                match keys::from_keycode(keycode).or_else(|| keys::qnum(keysym)) {
                    Some(qnum) => {
                        counters.key_events.inc();
                        self.send(InputEvent::Key { qnum, down }, counters);
                    }
                    None => counters.unmapped_keys.inc(),
                }
            }
            ViewerInput::Pointer { buttons, x, y } => {
                counters.pointer_events.inc();
                let (dx, dy) = match self.last.replace(Some((x, y))) {
                    Some((lx, ly)) => (delta(x, lx), delta(y, ly)),
                    None => (0, 0),
                };
                let (buttons, wheel) = keys::buttons(buttons);
                self.send(InputEvent::Mouse { dx, dy, wheel, buttons }, counters);
            }
        }
    }
}

fn serve(
    channel: &Channel,
    cfg: &VncConfig,
    listener: &OwnedFd,
    vram: &Vram,
    state: &DisplayState,
    input: &Input,
    counters: &Counters,
) -> Result<(), VncError> {
    let blank = (cfg.width, cfg.height);
    let mut screen = Screen::blank(blank.0, blank.1);
    let mut viewers: Vec<Viewer> = Vec::new();
    let mut last_refresh = Instant::now().checked_sub(REFRESH).unwrap_or_else(Instant::now);
    // How often the picture is compared while a viewer waits: every 30 ms
    // while it changes, backing off to once a second while it stays still
    // (as QEMU's server does); viewer input brings it back at once.
    let mut refresh = REFRESH;
    let mut buf = vec![0u8; 64 << 10];
    // fbuf's `wait`: the broker holds the vCPUs until a viewer is in.
    let mut waiting_for_viewer = cfg.wait;
    loop {
        let waiting = viewers.iter().any(|v| v.client.wants_update());
        let timeout = if waiting { refresh.saturating_sub(last_refresh.elapsed()) } else { Duration::from_secs(1) };
        let (control, accept, ready) = {
            let mut pfds = vec![PollFd::new(channel.as_fd(), PollFlags::POLLIN)];
            let full = viewers.len() >= VNC_MAX_CLIENTS;
            pfds.push(PollFd::new(listener.as_fd(), if full { PollFlags::empty() } else { PollFlags::POLLIN }));
            for v in &viewers {
                let mut events = PollFlags::POLLIN;
                if !v.client.output.is_empty() {
                    events |= PollFlags::POLLOUT;
                }
                pfds.push(PollFd::new(v.fd.as_fd(), events));
            }
            let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::NONE);
            match poll(&mut pfds, ms) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(VncError::Os("poll", e)),
            }
            let r: Vec<PollFlags> = pfds.iter().map(|p| p.revents().unwrap_or(PollFlags::empty())).collect();
            (r[0], r[1], r[2..].to_vec())
        };
        if !control.is_empty() {
            match channel.recv::<ToChild>() {
                Ok((ToChild::Shutdown, _)) | Err(ChannelError::Closed) => return Ok(()),
                Ok((other, _)) => return Err(VncError::Protocol(format!("unexpected {other:?}"))),
                Err(e) => return Err(e.into()),
            }
        }
        // Viewers: what they sent, then what they are owed.
        for (v, revents) in viewers.iter_mut().zip(&ready) {
            if revents.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                match nix::unistd::read(&v.fd, &mut buf) {
                    Ok(0) => v.gone = true,
                    Ok(n) => v.client.receive(&buf[..n], &screen),
                    Err(Errno::EAGAIN | Errno::EINTR) => {}
                    Err(_) => v.gone = true,
                }
                for e in v.client.input_events.drain(..) {
                    input.forward(e, counters);
                    refresh = REFRESH;
                }
            }
        }
        if accept.contains(PollFlags::POLLIN) {
            match accept4(listener.as_raw_fd(), SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => {
                    let fd = Socket(fd);
                    counters.viewers.inc();
                    let client = Client::new(&cfg.name, cfg.password.as_deref(), &screen);
                    viewers.push(Viewer { fd, client, since: Instant::now(), gone: false });
                }
                Err(Errno::EMFILE) => counters.refused_full.inc(),
                Err(_) => {}
            }
        }
        if viewers.iter().any(|v| v.client.wants_update()) && last_refresh.elapsed() >= refresh {
            last_refresh = Instant::now();
            let changed = screen.refresh(state.mode(), vram, blank);
            refresh = match &changed {
                Refresh::Tiles(t) if t.is_empty() => (refresh * 2).min(STILL_REFRESH),
                _ => REFRESH,
            };
            for v in &mut viewers {
                match &changed {
                    Refresh::Resized => v.client.changed(&screen, None),
                    Refresh::Tiles(t) => v.client.changed(&screen, Some(t)),
                }
            }
        }
        if waiting_for_viewer && viewers.iter().any(|v| v.client.ready()) {
            waiting_for_viewer = false;
            channel.send(&ToBroker::ViewerConnected, &[])?;
        }
        for v in &mut viewers {
            if let Some(encoding) = v.client.update(&screen) {
                counters.updates.inc(encoding);
            }
            if !v.client.output.is_empty() {
                match nix::unistd::write(&v.fd, &v.client.output) {
                    Ok(n) => {
                        counters.updates_bytes.add(n as u64);
                        v.client.output.drain(..n);
                    }
                    Err(Errno::EAGAIN | Errno::EINTR) => {}
                    Err(_) => v.gone = true,
                }
            }
        }
        viewers.retain(|v| {
            if let Some(why) = v.client.closed {
                counters.closed.inc(why.counter());
                return false;
            }
            if v.gone {
                return false;
            }
            if !v.client.ready() && v.since.elapsed() > HANDSHAKE {
                counters.timed_out.inc();
                return false;
            }
            if v.client.output.len() > MAX_BACKLOG {
                counters.too_slow.inc();
                return false;
            }
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::delta;

    #[test]
    fn pointer_deltas_saturate() {
        assert_eq!(delta(110, 100), 10);
        assert_eq!(delta(95, 100), -5);
        // Found by the fuzzing viewer: a jump across the range overflowed.
        assert_eq!(delta(65535, 0), i16::MAX);
        assert_eq!(delta(0, 65535), i16::MIN);
    }
}
