//! Entering the sandbox, in the child, while it is still single-threaded and
//! before it reads any guest-controlled byte:
//!
//! 1. close every fd the manifest does not list;
//! 2. new user, mount, ipc, uts and net namespaces (the pid namespace was
//!    made by the broker's clone), uid/gid 0 inside mapped to nobody;
//! 3. pivot_root into an empty read-only tmpfs;
//! 4. rlimits: the fd count just above what it holds, no core dumps;
//! 5. no capabilities (bounding, ambient, effective, permitted, inheritable);
//! 6. Landlock: no filesystem access, no TCP, signals and abstract unix
//!    sockets scoped to the sandbox (also sets no_new_privs);
//! 7. seccomp: the manifest's filter; anything else is a user notification
//!    (SECCOMP_RET_USER_NOTIF): the calling thread waits while the broker,
//!    which holds the filter's listener, records the call from what the
//!    kernel tells it and answers EPERM (log mode) or kills the child. The
//!    child sends the listener with its sandbox report and keeps no copy,
//!    so nothing it does afterwards (a signal handler, a closed channel, a
//!    flood) changes what is recorded.

use std::ffi::CString;
use std::os::fd::{BorrowedFd, RawFd};

use capvm_ipc::{Channel, FdReport, SandboxReport, ToBroker};
use landlock::{Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetStatus, Scope, ABI};

use crate::{Manifest, NAMESPACES};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox: {what}: {err}")]
    Os { what: &'static str, err: std::io::Error },
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("sandbox: applying seccomp: {0}")]
    Apply(#[from] seccompiler::Error),
    #[error("sandbox: sending the report and the seccomp listener: {0}")]
    Report(#[from] capvm_ipc::ChannelError),
}

fn os(what: &'static str) -> SandboxError {
    SandboxError::Os { what, err: std::io::Error::last_os_error() }
}

fn check(rc: libc::c_long, what: &'static str) -> Result<(), SandboxError> {
    if rc < 0 {
        Err(os(what))
    } else {
        Ok(())
    }
}

/// How many times (2 ms apart: 10 s) a child retries sending its listener
/// while too many fds of its user are in flight.
const IN_FLIGHT_RETRIES: u32 = 5000;

/// The uid and gid a child runs as outside its user namespace.
pub const NOBODY: u32 = 65534;

/// Confines the calling process as `m` says and sends the broker its
/// sandbox report with the seccomp listener on `channel`. Must run
/// single-threaded.
pub fn enter(m: &Manifest, channel: &Channel) -> Result<(), SandboxError> {
    let start = std::time::Instant::now();
    close_unlisted(&m.fd_numbers())?;
    enter_namespaces()?;
    pivot_to_empty_root()?;
    set_rlimits(m)?;
    set_capabilities(0)?;
    let landlock = restrict_landlock(Scope::from_all(ABI::V6), &[]);
    // Landlock sets it too, but not when Landlock is missing.
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as _, "no_new_privs")?;
    let main = crate::seccomp::manifest_filter(m)?;
    let clone3 = crate::seccomp::clone3_filter()?;
    seccompiler::apply_filter(&clone3)?;
    let listener = apply_with_listener(&main)?;
    let mut r = report(m, landlock);
    r.enter_us = start.elapsed().as_micros() as u64;
    let msg = ToBroker::Sandboxed(r);
    // SAFETY: the kernel just made this fd for us; it stays open until the
    // close below. (Not an OwnedFd: debug builds check an fd they adopt
    // with fcntl, which the filter now refuses.)
    let fd = unsafe { BorrowedFd::borrow_raw(listener) };
    // An fd in a unix socket counts against its sender's user until the
    // peer takes it, and the kernel refuses more in flight than the
    // sender's RLIMIT_NOFILE (ETOOMANYREFS). Every child is the same user
    // and holds a small limit, and the broker reads once all are started:
    // wait for it a while (seen in CI with nine children).
    let mut sent = channel.send(&msg, &[fd]);
    for _ in 0..IN_FLIGHT_RETRIES {
        if !matches!(&sent, Err(capvm_ipc::ChannelError::Io(e)) if *e as i32 == libc::ETOOMANYREFS) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        sent = channel.send(&msg, &[fd]);
    }
    // The listener is the broker's now; this process keeps no copy.
    // SAFETY: closes the fd made above, once.
    unsafe { libc::close(listener) };
    Ok(sent?)
}

/// Installs `filter` with a user-notification listener (seccompiler's
/// apply_filter takes no flags) and returns the listener.
fn apply_with_listener(filter: &seccompiler::BpfProgram) -> Result<RawFd, SandboxError> {
    let fd = install(filter, libc::SECCOMP_FILTER_FLAG_NEW_LISTENER, "seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER)")?;
    #[allow(clippy::cast_possible_truncation, reason = "an fd number")]
    Ok(fd as RawFd)
}

/// Confines the broker once every child is started (`roles::broker`):
/// Landlock leaves it the manifest's paths only, no TCP and no abstract
/// sockets; as root it keeps CAP_KILL alone (its children run as nobody);
/// then no_new_privs and its seccomp filter, which the kernel logs when it
/// refuses a call (nobody else could audit the broker). Must run
/// single-threaded; returns the audit's view of it.
pub fn enter_broker(m: &Manifest, log_only: bool) -> Result<SandboxReport, SandboxError> {
    let start = std::time::Instant::now();
    let paths = match &m.confinement {
        crate::Confinement::Broker { paths } => paths.as_slice(),
        crate::Confinement::Child => &[],
    };
    let landlock = restrict_landlock(Scope::AbstractUnixSocket.into(), paths);
    // SAFETY: geteuid cannot fail.
    let keep = if unsafe { libc::geteuid() } == 0 { 1 << CAP_KILL } else { 0 };
    set_capabilities(keep)?;
    // SAFETY: prctl with integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as _, "no_new_privs")?;
    let filter = crate::seccomp::broker_filter(m, log_only)?;
    install(&filter, libc::SECCOMP_FILTER_FLAG_LOG, "seccomp(SECCOMP_FILTER_FLAG_LOG)")?;
    let mut r = report(m, landlock);
    r.namespaces = Vec::new();
    r.enter_us = start.elapsed().as_micros() as u64;
    Ok(r)
}

/// CAP_KILL's number (linux/capability.h).
const CAP_KILL: u32 = 5;

/// seccomp(SECCOMP_SET_MODE_FILTER, flags, filter); no_new_privs is set.
fn install(filter: &seccompiler::BpfProgram, flags: libc::c_ulong, what: &'static str) -> Result<i64, SandboxError> {
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(|_| SandboxError::Os {
            what: "seccomp filter",
            err: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?,
        filter: filter.as_ptr().cast_mut().cast(),
    };
    // SAFETY: SECCOMP_SET_MODE_FILTER with a program that lives across the
    // call (the kernel copies it); no_new_privs is set.
    let rc = unsafe {
        libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, flags, &prog as *const libc::sock_fprog)
    };
    check(rc, what)?;
    Ok(rc)
}

/// The audit view of a manifest as entered.
pub fn report(m: &Manifest, landlock: String) -> SandboxReport {
    SandboxReport {
        enter_us: 0,
        role: m.role.clone(),
        allowed_syscalls: crate::seccomp::allowed_count(m) as u32,
        namespaces: NAMESPACES.iter().map(|s| s.to_string()).collect(),
        landlock,
        fds: {
            let mut fds = m.fds.clone();
            fds.sort_by_key(|g| g.fd);
            fds
        }
        .iter()
        .map(|g| FdReport {
            fd: g.fd,
            what: g.what.clone(),
            rights: g.rights.iter().map(|r| r.capsicum_name().to_string()).collect(),
            ioctls: g.ioctls.iter().map(|i| i.name.to_string()).collect(),
        })
        .collect(),
    }
}

fn close_unlisted(keep: &[i32]) -> Result<(), SandboxError> {
    let mut next = 0u32;
    for &fd in keep {
        if fd as u32 > next {
            // SAFETY: closes fds this process does not use any more.
            check(unsafe { libc::syscall(libc::SYS_close_range, next, fd as u32 - 1, 0) }, "close_range")?;
        }
        next = fd as u32 + 1;
    }
    // SAFETY: as above.
    check(unsafe { libc::syscall(libc::SYS_close_range, next, u32::MAX, 0) }, "close_range")
}

fn write_file(path: &str, data: &str) -> Result<(), SandboxError> {
    std::fs::write(path, data).map_err(|err| SandboxError::Os { what: "writing /proc/self id maps", err })
}

fn enter_namespaces() -> Result<(), SandboxError> {
    // SAFETY: geteuid and getegid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
    // SAFETY: unshare with constant flags; the process is single-threaded.
    check(unsafe { libc::unshare(flags) } as _, "unshare (user, mount, ipc, uts, net namespaces)")?;
    // Root inside, our own (unprivileged) ids outside.
    write_file("/proc/self/setgroups", "deny")?;
    write_file("/proc/self/uid_map", &format!("0 {uid} 1"))?;
    write_file("/proc/self/gid_map", &format!("0 {gid} 1"))?;
    Ok(())
}

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
    what: &'static str,
) -> Result<(), SandboxError> {
    let c = |s: &str| CString::new(s).expect("no NUL in mount arguments");
    let (src, target, fstype, data) = (c(src), c(target), c(fstype), c(data));
    // SAFETY: valid NUL-terminated strings for the duration of the call.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) };
    check(rc as _, what)
}

fn pivot_to_empty_root() -> Result<(), SandboxError> {
    mount("none", "/", "", libc::MS_REC | libc::MS_PRIVATE, "", "making / private")?;
    // Any directory serves as the mount point: the mount is private to us.
    mount(
        "capvm-empty",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "size=4k,mode=0555",
        "mounting the empty root",
    )?;
    // SAFETY: plain path syscalls on NUL-terminated strings.
    unsafe {
        check(libc::chdir(c"/tmp".as_ptr()) as _, "chdir")?;
        // pivot_root(".", "."): the old root ends up on top, then detach it.
        check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()), "pivot_root")?;
        check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH) as _, "detaching the old root")?;
        check(libc::chdir(c"/".as_ptr()) as _, "chdir /")?;
    }
    mount(
        "none",
        "/",
        "",
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
        "making the root read-only",
    )
}

fn set_rlimits(m: &Manifest) -> Result<(), SandboxError> {
    for (name, value) in &m.rlimits {
        let resource = match *name {
            "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
            "RLIMIT_CORE" => libc::RLIMIT_CORE,
            _ => continue,
        };
        let lim = libc::rlimit { rlim_cur: *value, rlim_max: *value };
        // SAFETY: setrlimit with a valid struct.
        check(unsafe { libc::setrlimit(resource, &lim) } as _, "setrlimit")?;
    }
    Ok(())
}

/// Empties the bounding and ambient sets and keeps only the capabilities
/// in `keep` (a mask of the first 32) effective and permitted.
fn set_capabilities(keep: u32) -> Result<(), SandboxError> {
    // SAFETY: prctl/capset with plain integers and a zeroed capability set.
    unsafe {
        for cap in 0..64 {
            // EINVAL past the kernel's last capability: that is the end.
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && *libc::__errno_location() == libc::EINVAL {
                break;
            }
        }
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Default, Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
        let mut header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        let mut data = [Data::default(); 2];
        data[0].effective = keep;
        data[0].permitted = keep;
        check(libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()), "capset")
    }
}

/// Landlock: no filesystem access but what `paths` grant (a child gets
/// none), no TCP, and the IPC `scopes` confined to this domain. The
/// broker's signals are not scoped: its children were started before it
/// confined itself, outside its domain, and it must be able to kill them
/// (seccomp lets it kill nothing else).
fn restrict_landlock(scopes: landlock::BitFlags<Scope>, paths: &[(crate::BrokerPath, String)]) -> String {
    use landlock::{PathBeneath, PathFd, RulesetCreatedAttr};
    let abi = ABI::V6;
    let mut missing = Vec::new();
    let result = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(scopes))
        .and_then(|r| r.create())
        .and_then(|mut r| {
            for (what, path) in paths {
                let access = match what {
                    crate::BrokerPath::RemoveFiles => AccessFs::RemoveFile.into(),
                    crate::BrokerPath::AppendFiles => AccessFs::MakeReg | AccessFs::WriteFile,
                };
                match PathFd::new(path) {
                    Ok(fd) => r = r.add_rule(PathBeneath::new(fd, access))?,
                    Err(_) => missing.push(path.as_str()),
                }
            }
            r.restrict_self()
        });
    let status = match result.map(|s| s.ruleset) {
        Ok(RulesetStatus::FullyEnforced) => "enforced".to_string(),
        Ok(RulesetStatus::PartiallyEnforced) => "partially enforced (older kernel ABI)".into(),
        Ok(RulesetStatus::NotEnforced) => "not supported by this kernel".into(),
        Err(e) => format!("failed: {e}"),
    };
    if missing.is_empty() {
        status
    } else {
        format!("{status} ({} missing: no access)", missing.join(", "))
    }
}
