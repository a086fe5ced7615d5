//! The broker's own sandbox. Once every child is started the broker only
//! supervises: it reads its children's messages and seccomp listeners,
//! its signalfd and capvmctl's requests, kills and reaps children, appends
//! to the audit log and removes the sockets it made. So it gives up the
//! rest, as bhyve enters capability mode once set-up is done: Landlock
//! leaves it those paths alone, as root it keeps CAP_KILL only, and a
//! seccomp filter (`capvm_policy::roles::broker`) allows those calls. A
//! child that lies to the broker, or a bug in its parsing, meets a process
//! that can no longer open, start, connect or map anything.

use std::path::Path;

use capvm_ipc::SandboxReport;
use capvm_policy::enforce::SandboxError;
use capvm_policy::roles::BrokerFds;
use capvm_policy::BrokerPath;

use crate::config::{ComBackend, VmConfig};

/// What Landlock leaves the broker of the filesystem for `cfg`.
pub fn paths(cfg: &VmConfig) -> Vec<(BrokerPath, String)> {
    let mut v = vec![(BrokerPath::RemoveFiles, crate::control::runtime_dir().display().to_string())];
    for com in &cfg.coms {
        if let ComBackend::Socket(p) = &com.backend {
            v.extend(dir(p).map(|d| (BrokerPath::RemoveFiles, d.display().to_string())));
        }
    }
    v.extend(dir(&cfg.sandbox.audit_log).map(|d| (BrokerPath::AppendFiles, d.display().to_string())));
    v
}

/// The directory a path is in ("." for a bare file name).
fn dir(p: &Path) -> Option<&Path> {
    p.parent().map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d })
}

/// Enters the broker's sandbox with what it holds (`fds`), then runs the
/// test hook if it names the broker.
pub fn enter(fds: &BrokerFds, cfg: &VmConfig) -> Result<SandboxReport, SandboxError> {
    let report = capvm_policy::enforce::enter_broker(&capvm_policy::roles::broker(fds), cfg.sandbox.log_only)?;
    if let Some(t) = cfg.sandbox.test_violation.as_ref().filter(|t| t.role == "broker") {
        let rc = capvm_policy::hostile::attempt(&t.op, -1, -1, std::process::id());
        // Reached only when the call did not kill the broker: Landlock or
        // log mode refused it.
        let err = std::io::Error::last_os_error();
        eprintln!("capvm: sandbox.test_violation=broker:{}: returned {} ({err})", t.op, rc.unwrap_or(0));
    }
    Ok(report)
}
