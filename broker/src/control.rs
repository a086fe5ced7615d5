//! The VM's control socket, `$CAPVM_RUNTIME_DIR/<name>.sock` (default
//! `/run/capvm`), which `capvmctl` talks to: one request line, one answer,
//! then the broker closes the connection. The directory is root's alone
//! (0700); the socket is removed when the VM ends.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::MsgFlags;
use serde::{Deserialize, Serialize};

use crate::console::SocketPath;
use crate::spawn::Child;

pub const DEFAULT_RUNTIME_DIR: &str = "/run/capvm";

pub fn runtime_dir() -> PathBuf {
    std::env::var_os("CAPVM_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR))
}

pub fn socket_path(name: &str) -> PathBuf {
    runtime_dir().join(format!("{name}.sock"))
}

pub struct ControlSocket {
    pub listener: UnixListener,
    _path: SocketPath,
    /// Connections whose request has not arrived whole yet. They are
    /// polled with the children, so a silent client delays nothing.
    pub clients: Vec<Client>,
    /// The display's framebuffer and state page, for `capvmctl --screenshot`.
    pub display: Option<DisplayFds>,
}

/// What a screenshot needs: VRAM, the state page (both handed to capvmctl,
/// which maps them read-only) and the size shown while no mode is set.
pub struct DisplayFds {
    pub vram: OwnedFd,
    pub state: OwnedFd,
    pub blank: (u32, u32),
}

/// A capvmctl connection waiting for its one-line request.
pub struct Client {
    pub stream: UnixStream,
    since: Instant,
    request: Vec<u8>,
}

/// How long a client may take to send its request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request line.
const MAX_REQUEST: usize = 64;

/// The control socket could not be set up or reached.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the runtime directory {dir}: {source}")]
    RuntimeDir { dir: PathBuf, source: std::io::Error },
    #[error("a VM named {name} is already running ({path})")]
    AlreadyRunning { name: String, path: PathBuf },
    #[error("cannot create the control socket {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("no VM named {name} answers at {path}: {source}")]
    NoAnswer { name: String, path: PathBuf, source: std::io::Error },
}

/// What a request asks the supervisor to do.
pub enum Request {
    Answered,
    Destroy,
}

impl ControlSocket {
    /// Binds the VM's socket; a live VM of the same name is an error, a stale
    /// socket left by a crash is replaced.
    pub fn bind(name: &str) -> Result<ControlSocket, ControlError> {
        let dir = runtime_dir();
        std::fs::create_dir_all(&dir).map_err(|source| ControlError::RuntimeDir { dir: dir.clone(), source })?;
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let path = socket_path(name);
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                return Err(ControlError::AlreadyRunning { name: name.to_string(), path });
            }
            let _ = std::fs::remove_file(&path);
        }
        let bind = |path: &PathBuf| -> std::io::Result<UnixListener> {
            let listener = UnixListener::bind(path)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        };
        let listener = bind(&path).map_err(|source| ControlError::Bind { path: path.clone(), source })?;
        Ok(ControlSocket { listener, _path: SocketPath(path), clients: Vec::new(), display: None })
    }

    /// Takes every pending connection; each waits, non-blocking, for its
    /// request among the supervisor's poll fds.
    pub fn accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_ok() {
                self.clients.push(Client { stream, since: Instant::now(), request: Vec::new() });
            }
        }
    }

    /// Drops the clients that sent nothing whole in time.
    pub fn expire(&mut self) {
        self.clients.retain(|c| c.since.elapsed() < CLIENT_TIMEOUT);
    }

    /// Client `k` can be read: once its request line is whole (or it hung
    /// up, or sent too much), answers it and lets it go.
    pub fn on_readable(
        &mut self,
        k: usize,
        children: &[Child],
        own: Option<&capvm_ipc::SandboxReport>,
        vm: &str,
    ) -> Request {
        let Some(c) = self.clients.get_mut(k) else { return Request::Answered };
        let mut buf = [0u8; MAX_REQUEST];
        let done = match c.stream.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                c.request.extend_from_slice(&buf[..n]);
                c.request.contains(&b'\n') || c.request.len() >= MAX_REQUEST
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(_) => true,
        };
        if !done {
            return Request::Answered;
        }
        let mut c = self.clients.swap_remove(k);
        let line = String::from_utf8_lossy(&c.request[..c.request.len().min(MAX_REQUEST)]).into_owned();
        // A client that does not read its answer costs at most this.
        let _ = c.stream.set_nonblocking(false);
        let _ = c.stream.set_write_timeout(Some(Duration::from_millis(200)));
        if line.trim() == "screenshot" {
            self.send_display(&mut c.stream);
            return Request::Answered;
        }
        let (answer, request) = answer(&line, children, own, vm);
        let _ = c.stream.write_all(answer.as_bytes());
        request
    }

    /// `screenshot`: the display's size line with VRAM and the state page
    /// attached (SCM_RIGHTS); capvmctl reads the picture itself.
    fn send_display(&self, stream: &mut UnixStream) {
        let Some(d) = &self.display else {
            let _ = stream.write_all(b"error: this VM has no display (add -s N,fbuf)\n");
            return;
        };
        let line = format!("display {} {}\n", d.blank.0, d.blank.1);
        let fds = [d.vram.as_raw_fd(), d.state.as_raw_fd()];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        let iov = [std::io::IoSlice::new(line.as_bytes())];
        let _ = nix::sys::socket::sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None);
    }
}

/// The answer to one request line, and what it asks of the supervisor.
fn answer(line: &str, children: &[Child], own: Option<&capvm_ipc::SandboxReport>, vm: &str) -> (String, Request) {
    match line.trim() {
        "status" => (format!("{vm} {}\n", std::process::id()), Request::Answered),
        "destroy" => ("destroying\n".to_string(), Request::Destroy),
        "audit json" => (audit_json(children, own), Request::Answered),
        "stats" => (stats_text(children), Request::Answered),
        other => (format!("error: unknown request '{other}'\n"), Request::Answered),
    }
}

/// Every child's counters from its stats page, one `ROLE: NAME VALUE`
/// line each (bhyvectl --get-stats).
fn stats_text(children: &[Child]) -> String {
    let mut s = String::new();
    for c in children {
        let Some(fd) = &c.stats else { continue };
        match capvm_ipc::stats::read(fd) {
            Ok(counters) => {
                for (name, value) in counters {
                    s += &format!("{}: {name} {value}\n", c.role);
                }
            }
            Err(e) => s += &format!("{}: stats page unreadable: {e}\n", c.role),
        }
    }
    s
}

/// One process in `capvmctl --audit --json`. The broker fills in what it
/// was told and decided; capvmctl adds what /proc shows (`observe`), so
/// the audit shows what is, not only what was asked for, and the broker,
/// confined, needs no /proc.
#[derive(Serialize, Deserialize)]
pub struct AuditEntry {
    pub role: String,
    pub pid: u32,
    /// What /proc says: "filter", "strict", "none".
    #[serde(default)]
    pub seccomp: String,
    /// Microseconds the process took to enter its sandbox.
    pub sandbox_enter_us: Option<u64>,
    pub allowed_syscalls: Option<u32>,
    /// Namespaces it does not share with the broker.
    #[serde(default)]
    pub namespaces: Vec<String>,
    pub landlock: String,
    /// Effective capabilities, as /proc shows them.
    #[serde(default)]
    pub capabilities: String,
    pub fds: Vec<FdEntry>,
    #[serde(default)]
    pub open_fds: Vec<i32>,
    pub violations: Vec<crate::audit::AuditRecord>,
    /// Records beyond the audit log's limit per child, counted only.
    pub violations_dropped: u64,
}

#[derive(Serialize, Deserialize)]
pub struct FdEntry {
    pub fd: i32,
    pub what: String,
    pub rights: Vec<String>,
    pub ioctls: Vec<String>,
}

fn entry(role: &str, pid: u32, report: Option<&capvm_ipc::SandboxReport>) -> AuditEntry {
    AuditEntry {
        role: role.to_string(),
        pid,
        seccomp: String::new(),
        sandbox_enter_us: report.map(|r| r.enter_us),
        allowed_syscalls: report.map(|r| r.allowed_syscalls),
        namespaces: Vec::new(),
        landlock: report.map_or("not yet reported", |r| &r.landlock).to_string(),
        capabilities: String::new(),
        fds: report
            .map(|r| {
                r.fds
                    .iter()
                    .map(|f| FdEntry {
                        fd: f.fd,
                        what: f.what.clone(),
                        rights: f.rights.clone(),
                        ioctls: f.ioctls.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        open_fds: Vec::new(),
        violations: Vec::new(),
        violations_dropped: 0,
    }
}

/// The broker's answer to `audit json`: itself, then every live child.
fn audit_json(children: &[Child], own: Option<&capvm_ipc::SandboxReport>) -> String {
    let mut entries = vec![entry("broker", std::process::id(), own)];
    for c in children.iter().filter(|c| c.alive) {
        let mut e = entry(&c.role, c.pid.as_raw() as u32, c.sandbox.as_ref());
        e.violations = c.violations.clone();
        e.violations_dropped = c.violations_dropped;
        entries.push(e);
    }
    match serde_json::to_string(&entries) {
        Ok(json) => json + "\n",
        Err(e) => format!("error: cannot encode the audit: {e}\n"),
    }
}

/// Adds to each entry what /proc shows of it; namespaces are those it
/// does not share with the broker (the first entry).
pub fn observe(entries: &mut [AuditEntry]) {
    const NAMESPACES: [&str; 6] = ["user", "mnt", "pid", "ipc", "uts", "net"];
    let links = |pid: u32| NAMESPACES.map(|ns| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok());
    let Some(broker) = entries.first().map(|e| e.pid) else { return };
    let broker_links = links(broker);
    for e in entries.iter_mut() {
        let status = std::fs::read_to_string(format!("/proc/{}/status", e.pid)).unwrap_or_default();
        let field =
            |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string()).unwrap_or_default();
        e.seccomp = match field("Seccomp:").as_str() {
            "2" => "filter",
            "1" => "strict",
            "0" => "none",
            _ => "unknown",
        }
        .to_string();
        e.capabilities = field("CapEff:");
        e.namespaces = if e.pid == broker {
            Vec::new()
        } else {
            let own = links(e.pid);
            (0..NAMESPACES.len())
                .filter(|&i| own[i].is_some() && own[i] != broker_links[i])
                .map(|i| NAMESPACES[i].to_string())
                .collect()
        };
        e.open_fds = std::fs::read_dir(format!("/proc/{}/fd", e.pid))
            .map(|d| d.flatten().filter_map(|f| f.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        e.open_fds.sort_unstable();
    }
}

/// The audit for people.
pub fn audit_text(entries: &[AuditEntry]) -> String {
    let mut out = String::new();
    for (i, e) in entries.iter().enumerate() {
        if i == 0 {
            out += &format!("{}  pid {}: confined once its children started\n", e.role, e.pid);
            match e.allowed_syscalls {
                Some(n) => out += &format!("  seccomp: {} ({n} syscalls allowed, anything else kills it)\n", e.seccomp),
                None => out += &format!("  seccomp: {} (not confined yet)\n", e.seccomp),
            }
            out += &format!("  landlock: {}; effective capabilities: {}\n", e.landlock, e.capabilities);
            continue;
        }
        out += &format!("\n{}  pid {}\n", e.role, e.pid);
        match e.allowed_syscalls {
            Some(n) => {
                out +=
                    &format!("  seccomp: {} ({n} syscalls allowed, anything else reported by the kernel)\n", e.seccomp);
                out += &format!("  namespaces (new): {}\n", e.namespaces.join(", "));
                out += &format!("  landlock: {}; effective capabilities: {}\n", e.landlock, e.capabilities);
                out += &format!("  sandbox entered in {} µs\n", e.sandbox_enter_us.unwrap_or(0));
                out += "  fds:\n";
                for f in &e.fds {
                    let rights = if f.rights.is_empty() { "(none)".to_string() } else { f.rights.join("|") };
                    out += &format!("    {:>3}  {:<40} {rights}\n", f.fd, f.what);
                    if !f.ioctls.is_empty() {
                        out += &format!("         ioctls: {}\n", f.ioctls.join(" "));
                    }
                }
                let open: Vec<String> = e.open_fds.iter().map(|f| f.to_string()).collect();
                out += &format!("  open fds now: {}\n", open.join(" "));
            }
            None => out += "  sandbox: not yet entered\n",
        }
        out += &format!("  violations: {}", e.violations.len());
        if e.violations_dropped > 0 {
            out += &format!(" (and {} more, not logged)", e.violations_dropped);
        }
        out += "\n";
        for v in &e.violations {
            out += &format!("    {}\n", v.to_json());
        }
    }
    out
}

/// `capvmctl --audit [--json]`: the broker's audit of VM `name`, with what
/// /proc shows added.
pub fn audit(name: &str, json: bool) -> Result<String, ControlError> {
    let answer = request(name, "audit json")?;
    let mut entries: Vec<AuditEntry> = match serde_json::from_str(&answer) {
        Ok(e) => e,
        Err(_) => return Ok(answer),
    };
    observe(&mut entries);
    Ok(if json {
        serde_json::to_string(&entries).map(|j| j + "\n").unwrap_or_else(|e| format!("error: {e}\n"))
    } else {
        audit_text(&entries)
    })
}

/// `capvmctl`'s side: one request to one VM.
pub fn request(name: &str, what: &str) -> Result<String, ControlError> {
    let path = socket_path(name);
    ask(&path, what).map_err(|source| ControlError::NoAnswer { name: name.to_string(), path, source })
}

/// `capvmctl --screenshot`'s side: the display's blank size, its VRAM and
/// its state page.
pub fn display(name: &str) -> Result<(String, Vec<OwnedFd>), ControlError> {
    let path = socket_path(name);
    let no_answer = |source| ControlError::NoAnswer { name: name.to_string(), path: path.clone(), source };
    let mut s = UnixStream::connect(&path).map_err(no_answer)?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(no_answer)?;
    s.write_all(b"screenshot\n").map_err(no_answer)?;
    let mut buf = [0u8; 256];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 2]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = nix::sys::socket::recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| no_answer(e.into()))?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(|e| no_answer(e.into()))? {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: fds the kernel just installed for us.
            fds.extend(raw.into_iter().map(|f| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(f) }));
        }
    }
    let n = msg.bytes;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), fds))
}

pub fn ask(path: &Path, what: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{what}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_audit_is_json_and_names_the_broker() {
        let v: serde_json::Value = serde_json::from_str(&audit_json(&[], None)).unwrap();
        assert_eq!(v[0]["role"], "broker");
        assert_eq!(v[0]["pid"], std::process::id());
        assert!(v[0]["allowed_syscalls"].is_null() && v[0]["violations"].as_array().is_some_and(Vec::is_empty));
    }
}
