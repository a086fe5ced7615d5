//! What each capvm process may do, said once and enforced from the same
//! words.
//!
//! A [`Manifest`] lists, for one role (vcpu-runner, uart, ...):
//! - the fds it keeps, each with Capsicum-named rights ([`Right`]) and, for
//!   `CAP_IOCTL`, the exact ioctl commands;
//! - the syscalls it may make, each with why and with argument filters
//!   (fd rights are bound to fd numbers through seccomp, since Linux cannot
//!   attach rights to an fd);
//! - its namespaces and resource limits.
//!
//! [`seccomp`] turns a manifest into BPF; [`enforce`] applies everything in
//! the child before it reads any guest-controlled byte. On FreeBSD the same
//! manifest maps one to one onto cap_enter, cap_rights_limit and
//! cap_ioctls_limit; that backend is not written yet, and the `capsicum`
//! crate cannot be built on the Linux machines this project runs on.

pub mod enforce;
pub mod hostile;
pub mod roles;
pub mod seccomp;

use std::fmt;

/// A Capsicum right, as `cap_rights_limit(2)` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Right {
    Read,
    Write,
    Seek,
    Fsync,
    Mmap,
    Event,
    Accept,
    Ioctl,
}

impl Right {
    pub fn capsicum_name(self) -> &'static str {
        match self {
            Right::Read => "CAP_READ",
            Right::Write => "CAP_WRITE",
            Right::Seek => "CAP_SEEK",
            Right::Fsync => "CAP_FSYNC",
            Right::Mmap => "CAP_MMAP",
            Right::Event => "CAP_EVENT",
            Right::Accept => "CAP_ACCEPT",
            Right::Ioctl => "CAP_IOCTL",
        }
    }
}

/// An ioctl command an fd with `CAP_IOCTL` may receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ioctl {
    pub name: &'static str,
    pub cmd: u64,
}

/// One fd the process keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdGrant {
    pub fd: i32,
    /// What it is, for people: "guest RAM", "COM1 input (stdin)".
    pub what: String,
    pub rights: Vec<Right>,
    pub ioctls: Vec<Ioctl>,
    /// Not held at start: the number a later fd (an accepted client) gets.
    pub reserved: bool,
}

impl FdGrant {
    pub fn new(fd: i32, what: impl Into<String>, rights: &[Right]) -> FdGrant {
        FdGrant { fd, what: what.into(), rights: rights.to_vec(), ioctls: Vec::new(), reserved: false }
    }

    pub fn has(&self, r: Right) -> bool {
        self.rights.contains(&r)
    }
}

/// How a syscall's arguments are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Args {
    /// Any arguments.
    Any,
    /// The fd in argument 0 must hold every one of these rights.
    FdWith(&'static [Right]),
    /// mmap/mprotect: never PROT_EXEC; mmap only anonymous or on a `CAP_MMAP` fd.
    NoExec,
    /// clone: only threads (CLONE_THREAD set).
    ThreadsOnly,
    /// ioctl: only the commands listed on the fd in argument 0.
    IoctlList,
    /// Each listed argument must be one of its values (prctl options, its
    /// own pid; the broker's kill: its children's pids and SIGKILL).
    ArgsIn(Vec<(u8, Vec<u64>)>),
}

/// One allowed syscall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallRule {
    /// The x86_64 name, as in `man 2`.
    pub name: &'static str,
    pub args: Args,
    /// Why this role needs it.
    pub why: &'static str,
}

/// Linux namespaces every sandboxed child gets anew.
pub const NAMESPACES: [&str; 6] = ["user", "mount", "pid", "ipc", "uts", "net"];

/// How a process is confined besides its seccomp filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confinement {
    /// A child: new namespaces, an empty root, no filesystem at all.
    Child,
    /// The broker, once its children are started: it keeps its namespaces
    /// (it made the children's), and Landlock lets it reach only these
    /// paths, (path, what for).
    Broker { paths: Vec<(BrokerPath, String)> },
}

/// What the broker may still do under a path once confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerPath {
    /// Remove the sockets it created there (its control socket, COM sockets).
    RemoveFiles,
    /// Create and append to files there (the audit log).
    AppendFiles,
}

/// Everything one process may hold and do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// "vcpu-runner", "uart".
    pub role: String,
    pub fds: Vec<FdGrant>,
    pub syscalls: Vec<SyscallRule>,
    /// (resource, limit): RLIMIT_NOFILE and RLIMIT_CORE.
    pub rlimits: Vec<(&'static str, u64)>,
    /// Host memory it keeps mapped after closing the fd it came from: a
    /// right the fd list alone would not show.
    pub mappings: Vec<String>,
    pub confinement: Confinement,
}

impl Manifest {
    /// The fd numbers the process holds at start, sorted.
    pub fn fd_numbers(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.fds.iter().filter(|f| !f.reserved).map(|f| f.fd).collect();
        v.sort_unstable();
        v
    }
}

/// A syscall number's name on x86_64, or "syscall_N".
pub fn syscall_name(nr: u64) -> String {
    syscalls::Sysno::new(nr as usize).map(|s| s.name().to_string()).unwrap_or_else(|| format!("syscall_{nr}"))
}

impl fmt::Display for Manifest {
    /// The review format of `capvm --print-policy`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "role {}", self.role)?;
        let otherwise = match &self.confinement {
            Confinement::Child => {
                writeln!(f, "  namespaces: {} (all new)", NAMESPACES.join(", "))?;
                writeln!(f, "  root: empty read-only tmpfs; landlock: no filesystem access, no TCP, signals and abstract sockets scoped")?;
                writeln!(f, "  capabilities: none; no_new_privs")?;
                let limits: Vec<String> = self.rlimits.iter().map(|(n, v)| format!("{n}={v}")).collect();
                writeln!(f, "  rlimits: {}", limits.join(", "))?;
                "the kernel reports to the broker, which audits it"
            }
            Confinement::Broker { paths } => {
                writeln!(f, "  confined once every child is started: it starts, opens and connects nothing more")?;
                writeln!(f, "  namespaces: the host's (it made the children's); uid: whoever ran capvm")?;
                writeln!(f, "  landlock: no TCP, abstract sockets scoped, the filesystem only here:")?;
                for (path, why) in paths {
                    let what = match path {
                        BrokerPath::RemoveFiles => "remove files",
                        BrokerPath::AppendFiles => "create and append files",
                    };
                    writeln!(f, "    {what} under {why}")?;
                }
                writeln!(f, "  capabilities: CAP_KILL only (as root: its children run as nobody); no_new_privs")?;
                "kills the broker, and so the VM (sandbox.violations=log: fails with EPERM); the kernel logs it"
            }
        };
        writeln!(f, "  fds:")?;
        for g in &self.fds {
            let rights: Vec<&str> = g.rights.iter().map(|r| r.capsicum_name()).collect();
            let rights = if rights.is_empty() { "(none)".to_string() } else { rights.join("|") };
            // Negative: a number known only once the VM runs.
            let fd = if g.fd < 0 { "-".to_string() } else { g.fd.to_string() };
            writeln!(f, "    {fd:>3}  {:<34} {rights}", g.what)?;
            if !g.ioctls.is_empty() {
                let names: Vec<&str> = g.ioctls.iter().map(|i| i.name).collect();
                writeln!(f, "         ioctls: {}", names.join(" "))?;
            }
        }
        for m in &self.mappings {
            writeln!(f, "  mapped, fd closed: {m}")?;
        }
        writeln!(f, "  syscalls ({}; anything else {otherwise}):", self.syscalls.len())?;
        for s in &self.syscalls {
            let args = match &s.args {
                Args::Any => String::new(),
                Args::FdWith(r) => {
                    format!(" [fd with {}]", r.iter().map(|r| r.capsicum_name()).collect::<Vec<_>>().join("|"))
                }
                Args::NoExec => " [no PROT_EXEC]".into(),
                Args::ThreadsOnly => " [threads only]".into(),
                Args::IoctlList => " [listed commands only]".into(),
                Args::ArgsIn(each) => {
                    let each: Vec<String> = each
                        .iter()
                        .map(|(i, v)| match v.as_slice() {
                            [] => format!("arg{i} known at start"),
                            v => format!("arg{i} in {v:?}"),
                        })
                        .collect();
                    format!(" [{}]", each.join(", "))
                }
            };
            writeln!(f, "    {:<16}{args:<28} {}", s.name, s.why)?;
        }
        Ok(())
    }
}
