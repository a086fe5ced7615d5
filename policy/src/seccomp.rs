//! A manifest's syscall list as seccomp BPF (seccompiler).
//!
//! Two filters: the manifest's (allowed syscalls with their argument checks;
//! anything else a user notification the broker answers, see `enforce`),
//! and a tiny one that answers
//! `clone3` with ENOSYS, because seccomp cannot look into clone3's flags and
//! glibc then falls back to `clone`, whose flags we can check. Of stacked
//! filters the kernel takes the strictest answer, so ENOSYS wins over the
//! first filter's "allow" for clone3 only.

use std::collections::BTreeMap;
use std::str::FromStr;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::{Args, Manifest};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("manifest names unknown syscall '{0}'")]
    UnknownSyscall(&'static str),
    #[error("seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("seccomp filter: {0}")]
    Compile(#[from] seccompiler::Error),
}

fn nr(name: &'static str) -> Result<i64, SeccompError> {
    syscalls::Sysno::from_str(name).map(|s| s.id() as i64).map_err(|_| SeccompError::UnknownSyscall(name))
}

fn rule(conds: Vec<Cond>) -> Result<SeccompRule, SeccompError> {
    Ok(SeccompRule::new(conds)?)
}

fn eq32(arg: u8, v: u64) -> Result<Cond, SeccompError> {
    Ok(Cond::new(arg, Len::Dword, Op::Eq, v)?)
}

fn no_exec(arg: u8) -> Result<Cond, SeccompError> {
    Ok(Cond::new(arg, Len::Dword, Op::MaskedEq(libc::PROT_EXEC as u64), 0)?)
}

/// The rules for one syscall; `None` when no fd qualifies (not allowed at all).
fn rules_for(m: &Manifest, args: &Args) -> Result<Option<Vec<SeccompRule>>, SeccompError> {
    let rules = match args {
        // An empty rule list matches unconditionally.
        Args::Any => return Ok(Some(Vec::new())),
        Args::FdWith(rights) => m
            .fds
            .iter()
            .filter(|g| g.fd >= 0 && rights.iter().all(|r| g.has(*r)))
            .map(|g| rule(vec![eq32(0, g.fd as u64)?]))
            .collect::<Result<Vec<_>, _>>()?,
        Args::NoExec => {
            // mmap(addr, len, prot, flags, fd, off): anonymous (fd -1) or a CAP_MMAP fd.
            let mut v = vec![rule(vec![no_exec(2)?, eq32(4, u32::MAX as u64)?])?];
            for g in m.fds.iter().filter(|g| g.fd >= 0 && g.has(crate::Right::Mmap)) {
                v.push(rule(vec![no_exec(2)?, eq32(4, g.fd as u64)?])?);
            }
            v
        }
        Args::ThreadsOnly => {
            let t = libc::CLONE_THREAD as u64;
            vec![rule(vec![Cond::new(0, Len::Qword, Op::MaskedEq(t), t)?])?]
        }
        Args::IoctlList => {
            let mut v = Vec::new();
            for g in &m.fds {
                for io in &g.ioctls {
                    v.push(rule(vec![eq32(0, g.fd as u64)?, eq32(1, io.cmd)?])?);
                }
            }
            v
        }
        Args::ArgsIn(each) => {
            // A rule is an AND of conditions: one rule per combination of values.
            let mut combos: Vec<Vec<Cond>> = vec![Vec::new()];
            for (arg, values) in each {
                let mut next = Vec::new();
                for c in &combos {
                    for &v in values {
                        let mut c = c.clone();
                        c.push(eq32(*arg, v)?);
                        next.push(c);
                    }
                }
                combos = next;
            }
            combos.into_iter().map(rule).collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(if rules.is_empty() { None } else { Some(rules) })
}

/// The manifest's syscalls as seccompiler rules.
fn rule_map(m: &Manifest) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for s in &m.syscalls {
        // mprotect(addr, len, prot) has no fd: only the prot check applies.
        let rules = match (s.name, &s.args) {
            ("mprotect", Args::NoExec) => Some(vec![rule(vec![no_exec(2)?])?]),
            _ => rules_for(m, &s.args)?,
        };
        if let Some(rules) = rules {
            map.entry(nr(s.name)?).or_default().extend(rules);
        }
    }
    Ok(map)
}

/// The broker's filter: anything it does not list kills it (and with it
/// the VM: its children die with it), or in log mode fails with EPERM.
/// Nobody else can audit the broker, so it is installed with
/// SECCOMP_FILTER_FLAG_LOG and the kernel logs the call.
pub fn broker_filter(m: &Manifest, log_only: bool) -> Result<BpfProgram, SeccompError> {
    let mismatch = if log_only { SeccompAction::Errno(libc::EPERM as u32) } else { SeccompAction::KillProcess };
    let filter = SeccompFilter::new(rule_map(m)?, mismatch, SeccompAction::Allow, TargetArch::x86_64)?;
    Ok(filter.try_into()?)
}

/// A child's filter: listed syscalls allowed as their rules say,
/// everything else a user notification (the broker answers it).
pub fn manifest_filter(m: &Manifest) -> Result<BpfProgram, SeccompError> {
    let mut map = rule_map(m)?;
    // clone3 passes this filter so that the ENOSYS filter decides it.
    map.insert(nr("clone3")?, Vec::new());
    let filter = SeccompFilter::new(map, SeccompAction::Trap, SeccompAction::Allow, TargetArch::x86_64)?;
    let mut program: BpfProgram = filter.try_into()?;
    // seccompiler has no user-notification action: its "trap" returns
    // become SECCOMP_RET_USER_NOTIF (the kernel asks the broker, `enforce`).
    for insn in &mut program {
        if insn.code == RET_K && insn.k == libc::SECCOMP_RET_TRAP {
            insn.k = libc::SECCOMP_RET_USER_NOTIF;
        }
    }
    Ok(program)
}

/// BPF_RET | BPF_K: return a constant.
const RET_K: u16 = 0x06;

/// clone3 gets ENOSYS; everything else is left to the manifest filter.
pub fn clone3_filter() -> Result<BpfProgram, SeccompError> {
    let mut map = BTreeMap::new();
    map.insert(nr("clone3")?, Vec::new());
    let filter =
        SeccompFilter::new(map, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), TargetArch::x86_64)?;
    Ok(filter.try_into()?)
}

/// How many syscalls a manifest actually allows (those with a qualifying fd).
pub fn allowed_count(m: &Manifest) -> usize {
    m.syscalls.iter().filter(|s| s.name == "mprotect" || matches!(rules_for(m, &s.args), Ok(Some(_)))).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles;

    #[test]
    fn what_is_not_allowed_goes_to_the_broker_not_to_a_signal_handler() {
        let m = roles::vcpu_runner(&roles::test_runner_fds(), 1);
        let program = manifest_filter(&m).unwrap();
        let returns: Vec<u32> = program.iter().filter(|i| i.code == RET_K).map(|i| i.k).collect();
        assert!(returns.contains(&libc::SECCOMP_RET_USER_NOTIF), "{returns:x?}");
        assert!(!returns.contains(&libc::SECCOMP_RET_TRAP), "{returns:x?}");
    }

    #[test]
    fn filters_build_for_every_role_shape() {
        let r = roles::vcpu_runner(&roles::test_runner_fds(), 1);
        assert!(manifest_filter(&r).unwrap().len() > 20);
        for b in [
            roles::UartBackendFds::Stdio { input: 6, output: 7 },
            roles::UartBackendFds::Tty { input: 6, output: 7 },
            roles::UartBackendFds::Socket { listener: 6 },
        ] {
            let u = roles::uart("com1", 4, 5, &b);
            assert!(manifest_filter(&u).unwrap().len() > 20);
        }
        assert!(!clone3_filter().unwrap().is_empty());
    }

    #[test]
    fn the_broker_may_kill_only_its_children_and_only_with_sigkill() {
        let fds = |children| roles::BrokerFds {
            signalfd: 4,
            control: 5,
            channels: vec![(6, "uart (com1)".into())],
            stats: vec![(7, "uart (com1)".into())],
            children,
            paths: Vec::new(),
        };
        let b = roles::broker(&fds(vec![100, 101]));
        let kill = b.syscalls.iter().find(|s| s.name == "kill").unwrap();
        // One rule per child, each also requiring SIGKILL.
        assert_eq!(rules_for(&b, &kill.args).unwrap().unwrap().len(), 2);
        // Before its children are known it may kill no one.
        let none = roles::broker(&fds(Vec::new()));
        let kill_none = none.syscalls.iter().find(|s| s.name == "kill").unwrap();
        assert!(rules_for(&none, &kill_none.args).unwrap().is_none());
        let returns = |p: BpfProgram| p.iter().filter(|i| i.code == RET_K).map(|i| i.k).collect::<Vec<u32>>();
        assert!(returns(broker_filter(&b, false).unwrap()).contains(&libc::SECCOMP_RET_KILL_PROCESS));
        let log = returns(broker_filter(&b, true).unwrap());
        assert!(log.contains(&(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32)), "{log:x?}");
        assert!(!log.contains(&libc::SECCOMP_RET_USER_NOTIF), "nobody answers the broker's notifications");
    }

    #[test]
    fn syscalls_without_a_qualifying_fd_are_not_allowed() {
        // A uart on stdio has no CAP_ACCEPT fd, and no accept4 rule at all.
        let u = roles::uart("com1", 4, 5, &roles::UartBackendFds::Stdio { input: 6, output: 7 });
        let n = allowed_count(&u);
        assert_eq!(n, u.syscalls.len());
        assert!(!u.syscalls.iter().any(|s| s.name == "accept4"));
    }
}
