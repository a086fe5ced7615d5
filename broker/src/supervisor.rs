//! The broker's loop while the VM runs: child messages, child deaths,
//! operator signals; and the orderly stop that leaves nothing behind.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use capvm_ipc::{ChannelError, ToBroker, ToChild, VmEvent, PROTO_VERSION};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

use crate::spawn::Child;

/// bhyve's exit statuses.
/// The audit log keeps at most this many violation records of one child
/// (a child that floods its channel cannot fill the host's disk).
pub const MAX_VIOLATION_RECORDS: usize = 64;

pub const EXIT_REBOOT: i32 = 0;
pub const EXIT_POWEROFF: i32 = 1;
pub const EXIT_HALT: i32 = 2;
pub const EXIT_TRIPLE_FAULT: i32 = 3;
pub const EXIT_ERROR: i32 = 4;

/// How long children get to exit after `Shutdown` before SIGKILL. A vCPU
/// spinning in emulated guest CPL0 code never leaves KVM_RUN, so the runner
/// may not exit by itself at all.
const STOP_GRACE: Duration = Duration::from_millis(200);

/// The signals the broker takes through its signalfd.
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

pub struct Supervisor {
    pub children: Vec<Child>,
    pub signals: SignalFd,
    audit: crate::audit::AuditLog,
    /// Late-server reports logged (capped like violation records).
    late_reports: usize,
    /// sandbox.violations=log: forbidden calls fail with EPERM.
    log_only: bool,
    control: Option<crate::control::ControlSocket>,
    name: String,
    /// fbuf's `wait` was released (a VNC server may say so once).
    viewer_connected: bool,
    /// The broker's own sandbox, once entered (`confine`).
    own_sandbox: Option<capvm_ipc::SandboxReport>,
}

impl Supervisor {
    pub fn new(
        children: Vec<Child>,
        signals: SignalFd,
        cfg: &crate::config::VmConfig,
        control: Option<crate::control::ControlSocket>,
    ) -> Supervisor {
        Supervisor {
            children,
            signals,
            audit: crate::audit::AuditLog::new(&cfg.name, &cfg.sandbox.audit_log),
            late_reports: 0,
            log_only: cfg.sandbox.log_only,
            control,
            name: cfg.name.clone(),
            viewer_connected: false,
            own_sandbox: None,
        }
    }

    /// Confines the broker (crate::confine) to what supervising these
    /// children needs; call once every child is started.
    pub fn confine(&mut self, cfg: &crate::config::VmConfig) -> Result<(), capvm_policy::enforce::SandboxError> {
        use std::os::fd::AsRawFd;
        let fds = capvm_policy::roles::BrokerFds {
            signalfd: self.signals.as_fd().as_raw_fd(),
            control: self.control.as_ref().map_or(-1, |c| c.listener.as_raw_fd()),
            channels: self.children.iter().map(|c| (c.channel.as_fd().as_raw_fd(), c.role.clone())).collect(),
            stats: self.children.iter().filter_map(|c| Some((c.stats.as_ref()?.as_raw_fd(), c.role.clone()))).collect(),
            children: self.children.iter().map(|c| c.pid.as_raw() as u32).collect(),
            paths: crate::confine::paths(cfg),
        };
        self.own_sandbox = Some(crate::confine::enter(&fds, cfg)?);
        Ok(())
    }

    /// Runs until the VM ends; returns the exit status after every child is gone.
    pub fn run(mut self) -> i32 {
        let status = self.wait_for_end();
        self.stop_children();
        status
    }

    /// Stops the children of a start-up that failed half way.
    pub fn run_stopped(mut self) {
        self.stop_children();
    }

    fn wait_for_end(&mut self) -> i32 {
        loop {
            let watched: Vec<usize> = (0..self.children.len()).filter(|&i| self.children[i].connected).collect();
            let listening: Vec<usize> =
                (0..self.children.len()).filter(|&i| self.children[i].listener.is_some()).collect();
            let mut pfds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
            pfds.extend(watched.iter().map(|&i| PollFd::new(self.children[i].channel.as_fd(), PollFlags::POLLIN)));
            let first_listener = pfds.len();
            pfds.extend(listening.iter().filter_map(|&i| {
                self.children[i].listener.as_ref().map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
            }));
            let mut clients = 0;
            let first_control = pfds.len();
            if let Some(c) = &self.control {
                pfds.push(PollFd::new(c.listener.as_fd(), PollFlags::POLLIN));
                pfds.extend(c.clients.iter().map(|cl| PollFd::new(cl.stream.as_fd(), PollFlags::POLLIN)));
                clients = c.clients.len();
            }
            // With clients waiting, wake up now and then to drop the silent ones.
            let timeout = if clients > 0 { PollTimeout::from(1000u16) } else { PollTimeout::NONE };
            if let Err(e) = poll(&mut pfds, timeout) {
                if e != nix::Error::EINTR {
                    eprintln!("capvm: poll: {e}");
                    return EXIT_ERROR;
                }
            }
            let revents: Vec<PollFlags> = pfds.iter().map(|p| p.revents().unwrap_or(PollFlags::empty())).collect();
            let ready: Vec<bool> = revents.iter().map(|r| !r.is_empty()).collect();
            drop(pfds);
            // What the kernel reports first: a forbidden call is recorded
            // before whatever the child said or did next.
            for (k, &i) in listening.iter().enumerate() {
                let r = revents[first_listener + k];
                if r.contains(PollFlags::POLLIN) {
                    if let Some(status) = self.on_notification(i) {
                        return status;
                    }
                } else if !r.is_empty() {
                    // Every task under the filter is gone.
                    self.children[i].listener = None;
                }
            }
            // Messages next: a child that reports and then dies is reported once, by its message.
            for (k, &i) in watched.iter().enumerate() {
                if ready[k + 1] {
                    if let Some(status) = self.on_message(i) {
                        return status;
                    }
                }
            }
            if ready[0] {
                if let Some(status) = self.on_signal() {
                    return status;
                }
            }
            if let Some(c) = &mut self.control {
                let first_client = first_control + 1;
                // Highest index first: answering a client removes it.
                for k in (0..clients).rev() {
                    if ready[first_client + k] {
                        if let crate::control::Request::Destroy =
                            c.on_readable(k, &self.children, self.own_sandbox.as_ref(), &self.name)
                        {
                            eprintln!("capvm: destroyed by capvmctl");
                            return EXIT_POWEROFF;
                        }
                    }
                }
                c.expire();
                if ready[first_control] {
                    c.accept();
                }
            }
        }
    }

    fn on_message(&mut self, i: usize) -> Option<i32> {
        let child = &mut self.children[i];
        let (msg, fds) = match child.channel.recv::<ToBroker>() {
            Ok(m) => m,
            Err(ChannelError::Closed) => {
                // Its exit status comes through SIGCHLD.
                child.connected = false;
                return None;
            }
            Err(e) => {
                eprintln!("capvm: {} (pid {}) sent a bad message: {e}; stopping the VM", child.role, child.pid);
                return Some(EXIT_ERROR);
            }
        };
        self.handle_message(i, msg, fds)
    }

    /// Reads what a dead child sent before it died (a fatal error): its
    /// last words explain its death better than a status.
    fn drain_messages(&mut self, i: usize) -> Option<i32> {
        while self.children[i].connected {
            if let Some(status) = self.on_message(i) {
                return Some(status);
            }
        }
        None
    }

    /// What a child says is checked against what its role may say: a
    /// device server that sends a lifecycle event, a second sandbox report
    /// or one after Ready, a report without its seccomp listener, is lying
    /// (compromised), and the VM stops. (Forbidden system calls come from
    /// the kernel, through `on_notification`, not from the child.)
    fn handle_message(&mut self, i: usize, msg: ToBroker, fds: Vec<std::os::fd::OwnedFd>) -> Option<i32> {
        let child = &mut self.children[i];
        let lie = |what: &str| {
            eprintln!("capvm: {} (pid {}) {what}; stopping the VM", child.role, child.pid);
            Some(EXIT_ERROR)
        };
        match msg {
            ToBroker::Event(_) if !child.may_send_events() => {
                return lie("sent a lifecycle event, which only the vCPU runner may send")
            }
            ToBroker::Sandboxed(_) if child.sandbox.is_some() || child.ready => {
                return lie("sent a second sandbox report")
            }
            ToBroker::Ready { .. } if child.ready => return lie("said it was ready twice"),
            ToBroker::Late { .. } if !child.may_send_events() => {
                return lie("reported a late device server, which only the vCPU runner may report")
            }
            ToBroker::ViewerConnected if !child.role.starts_with("vnc (") || self.viewer_connected => {
                return lie("said a viewer connected, which only a display's VNC server may say, once")
            }
            _ => {}
        }
        match msg {
            ToBroker::Ready { version } if version == PROTO_VERSION => {
                child.ready = true;
                None
            }
            ToBroker::Ready { version } => {
                eprintln!(
                    "capvm: {} (pid {}) speaks protocol {version}, the broker {PROTO_VERSION}: mixed capvm builds",
                    child.role, child.pid
                );
                Some(EXIT_ERROR)
            }
            ToBroker::Fatal(msg) => {
                eprintln!("capvm: {} (pid {}): {msg}", child.role, child.pid);
                Some(EXIT_ERROR)
            }
            ToBroker::Event(event) => Some(event_status(&event)),
            ToBroker::Sandboxed(report) => {
                // Its seccomp listener comes with it, and only then.
                let mut fds = fds.into_iter();
                let (Some(listener), None) = (fds.next(), fds.next()) else {
                    return lie("sent its sandbox report without its seccomp listener (or with more)");
                };
                child.sandbox = Some(report);
                child.listener = Some(listener);
                None
            }
            // fbuf's `wait`: the first viewer is in; the vCPUs may run.
            ToBroker::ViewerConnected => {
                self.viewer_connected = true;
                let runner = self.children.iter().find(|c| c.may_send_events());
                if runner.is_none_or(|r| r.channel.send(&ToChild::Go, &[]).is_err()) {
                    eprintln!("capvm: cannot tell the vCPU runner to start");
                    return Some(EXIT_ERROR);
                }
                None
            }
            // A vCPU waits on a server past exit_ring.report: name it; the
            // runner stops the VM at exit_ring.deadline.
            ToBroker::Late { device, vcpu, waited_ms } => {
                if self.late_reports < MAX_VIOLATION_RECORDS {
                    self.late_reports += 1;
                    eprintln!(
                        "capvm: device server {device} has not answered vCPU {vcpu} for {:.1} s (exit_ring.report)",
                        waited_ms as f64 / 1000.0
                    );
                    self.audit.note_late(&device, vcpu, waited_ms);
                }
                None
            }
        }
    }

    /// The kernel reports a forbidden system call of child `i` through the
    /// seccomp listener the child handed over: record it (up to a limit per
    /// child, the rest counted), then answer EPERM (log mode) or kill the
    /// child and stop the VM. Nothing the child does can alter or suppress
    /// the report: the calling thread waits in the kernel until we answer.
    fn on_notification(&mut self, i: usize) -> Option<i32> {
        let log_only = self.log_only;
        let child = &mut self.children[i];
        let listener = child.listener.as_ref()?;
        let notif = match crate::seccomp_notify::receive(listener) {
            Ok(Some(n)) => n,
            // The calling thread died before we read it.
            Ok(None) => return None,
            Err(e) => {
                eprintln!("capvm: {} (pid {}): reading its seccomp listener: {e}", child.role, child.pid);
                child.listener = None;
                return None;
            }
        };
        let v = notif.record(!log_only);
        if child.violations.len() >= MAX_VIOLATION_RECORDS && log_only {
            if child.violations_dropped == 0 {
                eprintln!(
                    "capvm: {} (pid {}) made more than {MAX_VIOLATION_RECORDS} forbidden system calls; \
                     the rest are counted, not logged",
                    child.role, child.pid
                );
            }
            child.violations_dropped += 1;
        } else {
            let record = self.audit.record(&child.role, child.pid.as_raw() as u32, &v);
            child.violations.push(record);
            let line = crate::audit::describe(&v);
            if log_only {
                eprintln!(
                    "capvm: {} (pid {}): forbidden system call {line} denied with EPERM (sandbox.violations=log)",
                    child.role, child.pid
                );
            } else {
                eprintln!(
                    "capvm: {} (pid {}) made a forbidden system call, {line}; stopping the VM (sandbox.violations=kill)",
                    child.role, child.pid
                );
            }
        }
        if log_only {
            notif.deny(listener);
            None
        } else {
            let _ = kill(child.pid, Signal::SIGKILL);
            Some(EXIT_ERROR)
        }
    }

    fn on_signal(&mut self) -> Option<i32> {
        let info = match self.signals.read_signal() {
            Ok(Some(info)) => info,
            _ => return None,
        };
        let signo = info.ssi_signo as i32;
        if signo != libc::SIGCHLD {
            let name = Signal::try_from(signo).map(|s| s.as_str()).unwrap_or("signal");
            eprintln!("capvm: received {name}; stopping the VM");
            return Some(EXIT_POWEROFF);
        }
        // SIGCHLD coalesces: reap everything that has exited.
        let mut status = None;
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) => {
                    let Some(pid) = ws.pid() else { break };
                    if let Some(i) = self.children.iter().position(|c| c.pid == pid) {
                        self.children[i].alive = false;
                        if let Some(s) = self.drain_messages(i) {
                            return Some(s);
                        }
                        let child = &self.children[i];
                        eprintln!("capvm: {} (pid {pid}) {}; stopping the VM", child.role, describe(&ws));
                        status = Some(EXIT_ERROR);
                    }
                }
            }
        }
        status
    }

    /// Asks every child to exit, waits a little, then SIGKILLs the rest and
    /// reaps them all.
    fn stop_children(&mut self) {
        for c in self.children.iter().filter(|c| c.alive && c.connected) {
            let _ = c.channel.send(&ToChild::Shutdown, &[]);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while self.children.iter().any(|c| c.alive) && Instant::now() < deadline {
            self.reap_nohang();
            std::thread::sleep(Duration::from_millis(2));
        }
        for c in self.children.iter_mut().filter(|c| c.alive) {
            let _ = kill(c.pid, Signal::SIGKILL);
            let _ = waitpid(c.pid, None);
            c.alive = false;
        }
    }

    fn reap_nohang(&mut self) {
        for c in self.children.iter_mut().filter(|c| c.alive) {
            if !matches!(waitpid(c.pid, Some(WaitPidFlag::WNOHANG)), Ok(WaitStatus::StillAlive)) {
                c.alive = false;
            }
        }
    }
}

/// The exit status for an event, with a line on stderr for the bad ones.
fn event_status(event: &VmEvent) -> i32 {
    match event {
        VmEvent::Reboot => EXIT_REBOOT,
        VmEvent::PowerOff => EXIT_POWEROFF,
        VmEvent::Halt => EXIT_HALT,
        VmEvent::TripleFault { vcpu, rip, cpl } => {
            eprintln!("capvm: the guest triple-faulted (vCPU {vcpu} at RIP {rip:#x}, CPL {cpl})");
            EXIT_TRIPLE_FAULT
        }
        VmEvent::InternalError(r) => {
            let bytes: Vec<String> = r.bytes.iter().map(|b| format!("{b:02x}")).collect();
            let bytes = if bytes.is_empty() { "(RIP does not translate)".to_string() } else { bytes.join(" ") };
            let what = if r.suberror == 1 {
                "emulation failure: the host's KVM cannot execute this instruction"
            } else {
                "KVM internal error"
            };
            let tried = if r.tried.is_empty() { String::new() } else { format!("; {}", r.tried) };
            eprintln!(
                "capvm: vCPU {} stopped at RIP {:#x} (CPL {}), instruction bytes {bytes}: {what} (suberror {}){tried}",
                r.vcpu, r.rip, r.cpl, r.suberror
            );
            EXIT_ERROR
        }
        VmEvent::UnhandledIo { vcpu, port, write } => {
            let dir = if *write { "wrote" } else { "read" };
            eprintln!("capvm: vCPU {vcpu} {dir} I/O port {port:#x}, which nothing emulates (-e makes this fatal)");
            EXIT_ERROR
        }
    }
}

fn describe(ws: &WaitStatus) -> String {
    match ws {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "was killed by signal {} ({}){}",
                *sig as i32,
                sig.as_str(),
                if *core { ", core dumped" } else { "" }
            )
        }
        other => format!("changed state: {other:?}"),
    }
}
